//! Standby coordinators (`rewind coordinate`, issue 17) with real processes on PostgreSQL: a
//! killed `run --dispatch workers` is taken over by exactly one standby, which adopts the
//! attempts running on workers instead of running them again; so is a killed coordinator that
//! took over; a coordinator whose lease was taken stops at once (the epoch fence); SIGTERM hands
//! runs off; heartbeats are judged on the database's clock; `resume` remembers `--dispatch`.
//! Each test has its own PostgreSQL schema; every instance must succeed exactly once (the
//! ledger the steps write).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use rewind_store::Store;
use support::*;

/// The run lease and the attempts' lease in these tests (`REWIND_LEASE_MS`).
const LEASE_MS: &str = "1000";

/// A background process killed (SIGKILL) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// SIGKILL, and reaped (a zombie's pid would still look alive).
    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    fn signal(&self, sig: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }
}

/// Two steps per site, `s1` after `s0`; each waits for its own gate file (`gate0`, `gate1`).
fn workflow(env: &Env, sites: usize) -> (String, String) {
    env.write("step.sh", STEP_SH, true);
    let mut wf = String::from(
        "name = \"standby\"\ntarget_kind = \"site\"\n\n[defaults]\ntimeout = \"2m\"\nretries = 0\n",
    );
    for i in 0..2 {
        let needs = if i == 0 { String::new() } else { format!("needs = [\"s{}\"]\n", i - 1) };
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\n{needs}estimate = \"1s\"\naction = {{ kind = \"command\", program = \"./step.sh\", args = [\"ledger\", \"gate\"], env = {{ GATE = \"gate{i}\" }} }}\n"
        ));
    }
    let w = env.write("standby.toml", &wf, false);
    let t = env.write("sites.csv", &targets_csv(&vec!["ok"; sites]), false);
    (w.display().to_string(), t.display().to_string())
}

/// `rewind ARGS` in the background with the tests' lease, output to `NAME.out` / `NAME.err`.
fn start(env: &Env, name: &str, args: &[&str], extra: &[(&str, &str)]) -> Guard {
    let mut c = env.cmd(args);
    start_cmd(env, name, &mut c, extra)
}

fn start_cmd(env: &Env, name: &str, c: &mut Command, extra: &[(&str, &str)]) -> Guard {
    c.env("REWIND_LEASE_MS", LEASE_MS);
    for (k, v) in extra {
        c.env(k, v);
    }
    let out = std::fs::File::create(env.path(&format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(env.path(&format!("{name}.err"))).unwrap();
    Guard(c.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().unwrap())
}

fn start_run(env: &Env, w: &str, t: &str) -> Guard {
    let args =
        ["run", "--workflow", w, "--targets", t, "--restore-point", RP, "--dispatch", "workers"];
    start(env, "run", &args, &[])
}

fn start_worker(env: &Env, name: &str) -> Guard {
    start(env, name, &["worker", "--name", name, "--slots", "4"], &[])
}

fn start_standby(env: &Env, name: &str) -> Guard {
    start(env, name, &["coordinate", "--name", name], &[])
}

/// A standby on "another host": its own UTS namespace (`unshare --uts`) named `elsewhere`, so
/// it judges the run's owner by its heartbeat rather than by its pid; `REWIND_CLOCK_SKEW_MS`
/// sets its clock wrong. `None` (the test is skipped, saying so) without `unshare`'s rights.
fn start_standby_elsewhere(env: &Env, name: &str, skew_ms: &str) -> Option<Guard> {
    let can = Command::new("unshare")
        .args(["--uts", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        eprintln!("skipped: `unshare --uts` is not permitted here");
        return None;
    }
    let bin = env!("CARGO_BIN_EXE_rewind");
    let mut c = Command::new("unshare");
    c.args(["--uts", "sh", "-c", "hostname elsewhere && exec \"$0\" \"$@\""])
        .args([bin, "coordinate", "--name", name])
        .current_dir(env.dir.path())
        .env("REWIND_DB", &env.db)
        .env("REWIND_NOW", NOW);
    Some(start_cmd(env, name, &mut c, &[("REWIND_CLOCK_SKEW_MS", skew_ms)]))
}

/// Starts per instance (attempt numbers), from the ledger.
fn starts(env: &Env) -> BTreeMap<String, Vec<u32>> {
    let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in env.ledger().into_iter().filter(|e| e.what == "start") {
        m.entry(e.instance).or_default().push(e.attempt);
    }
    m
}

fn count(env: &Env, what: &str, step: &str) -> usize {
    env.ledger().iter().filter(|e| e.what == what && e.instance.starts_with(step)).count()
}

/// The run succeeded, and every instance ran exactly once, as its first attempt.
fn assert_each_ran_once(env: &Env, id: &str, instances: usize) {
    wait_for("the run to succeed", || env.status(id)["state"] == "succeeded");
    let starts = starts(env);
    assert_eq!(starts.len(), instances, "{starts:?}");
    assert!(starts.values().all(|a| a == &[1]), "an attempt ran again: {starts:?}");
    let ends = env.ledger().iter().filter(|e| e.what == "end").count();
    assert_eq!(ends, instances, "{:?}", env.ledger());
}

/// Lines of `NAME.err` saying it took run `id`.
fn takes(env: &Env, name: &str, id: &str) -> usize {
    env.read(&format!("{name}.err"))
        .lines()
        .filter(|l| l.contains(&format!("took run {id}")))
        .count()
}

/// The run's lease: (owner, heartbeat, epoch).
fn lease(env: &Env, id: &str) -> (Option<String>, Option<i64>, i64) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::PgPool::connect(&env.db).await.unwrap();
        let row: (Option<String>, Option<i64>, i64) = sqlx::query_as(
            "SELECT owner, heartbeat_unix_ms, epoch FROM run_leases WHERE run_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        row
    })
}

#[test]
fn coordinate_is_refused_on_sqlite() {
    let env = Env::sqlite();
    let o = env.rewind(&["coordinate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs a PostgreSQL checkpoint store"), "{}", stderr(&o));
    assert!(!env.path("rewind.db").exists(), "nothing was written");
}

/// `run --dispatch workers` killed -9 mid-run, two standbys: exactly one takes the run over
/// and adopts the attempts running on the workers; killed -9 in turn, the other takes over and
/// adopts the next step's. The run ends with every instance run once, as its first attempt.
#[test]
fn standbys_take_over_killed_coordinators_and_adopt_running_attempts() {
    let Some(env) = Env::postgres("standbys_take_over_killed_coordinators") else { return };
    let (w, t) = workflow(&env, 4);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    let _b = start_worker(&env, "b");
    let mut standby = [start_standby(&env, "c1"), start_standby(&env, "c2")];
    wait_for("the workers to run every s0", || count(&env, "start", "s0/") == 4);
    let epoch = lease(&env, &id).2;
    run.kill9();
    wait_for("a standby to take the run", || takes(&env, "c1", &id) + takes(&env, "c2", &id) > 0);
    let first = if takes(&env, "c1", &id) > 0 { 0 } else { 1 };
    let (owner, _, taken_at) = lease(&env, &id);
    assert!(owner.unwrap().contains(&format!(":c{}.", first + 1)), "the lease names the standby");
    assert_eq!(taken_at, epoch + 1, "one claim bumped the epoch once");
    env.write("gate0", "", false);
    wait_for("every s1 to start", || count(&env, "start", "s1/") == 4);
    assert_eq!(count(&env, "start", "s0/"), 4, "no s0 ran again: {:?}", env.ledger());
    standby[first].kill9();
    let other = 1 - first;
    let other_name = format!("c{}", other + 1);
    wait_for("the other standby to take the run", || takes(&env, &other_name, &id) > 0);
    env.write("gate1", "", false);
    assert_each_ran_once(&env, &id, 8);
    wait_for("the other standby to say the run ended", || {
        env.read(&format!("{other_name}.err")).contains(&format!("run {id} ended state succeeded"))
    });
    assert_eq!(takes(&env, &other_name, &id), 1, "{}", env.read(&format!("{other_name}.err")));
    let err = env.read(&format!("{other_name}.err"));
    assert!(err.contains("adopted, not run again"), "{err}");
    // Two standbys never both took it: each takeover is one claim (one epoch step).
    assert_eq!(lease(&env, &id).2, epoch + 2);
}

/// A coordinator whose run lease another process took (the epoch fence) stops driving at once:
/// `run` exits 2 saying it was fenced, and writes nothing more. Released, the run is taken by a
/// standby and ends with every instance run once.
#[test]
fn a_fenced_coordinator_stops_at_once_and_a_standby_finishes_the_run() {
    let Some(env) = Env::postgres("a_fenced_coordinator_stops_at_once") else { return };
    let (w, t) = workflow(&env, 3);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    wait_for("the worker to run every s0", || count(&env, "start", "s0/") == 3);
    let (owner, beat, epoch) = lease(&env, &id);
    let thief = "elsewhere:1:thief";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(rewind_store::SqlStore::open(&env.db)).unwrap();
    let run_id: rewind_model::RunId = id.parse().unwrap();
    // Take the lease from the live coordinator, as a standby that judged it dead would (the
    // compare-and-set retried until no heartbeat slips in between).
    wait_for("the lease to be taken", || {
        let (owner, beat, _) = lease(&env, &id);
        let held = rewind_store::Holding { owner: owner.unwrap(), heartbeat_unix_ms: beat };
        rt.block_on(store.claim(run_id, thief, Some(&held), beat.unwrap_or(0))).unwrap()
    });
    assert!(owner.is_some() && beat.is_some());
    assert_eq!(wait_exit(&mut run.0), 2, "run: {}", env.read("run.err"));
    let err = env.read("run.err");
    assert!(err.contains("fenced") && err.contains("stopped driving the run at once"), "{err}");
    // The fenced coordinator's dispatch writes are refused too.
    let old = rewind_dispatch::Fence { run: run_id, epoch };
    let refused = rt.block_on(store.dispatch_forget(old, &[]));
    assert!(matches!(refused, Err(rewind_store::StoreError::Fenced(_))), "{refused:?}");
    rt.block_on(store.release(run_id, thief)).unwrap();
    let _c = start_standby(&env, "c1");
    wait_for("the standby to take the released run", || takes(&env, "c1", &id) > 0);
    env.write("gate0", "", false);
    env.write("gate1", "", false);
    assert_each_ran_once(&env, &id, 6);
}

/// SIGTERM: the coordinator hands its run off (lease released, attempts left running on the
/// workers) and exits 0; the next standby adopts them.
#[test]
fn a_sigtermed_coordinator_hands_its_runs_off() {
    let Some(env) = Env::postgres("a_sigtermed_coordinator_hands_off") else { return };
    let (w, t) = workflow(&env, 3);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    let mut c1 = start_standby(&env, "c1");
    wait_for("the worker to run every s0", || count(&env, "start", "s0/") == 3);
    run.kill9();
    wait_for("c1 to take the run", || takes(&env, "c1", &id) > 0);
    c1.signal("-TERM");
    assert_eq!(wait_exit(&mut c1.0), 0, "c1: {}", env.read("c1.err"));
    let err = env.read("c1.err");
    assert!(err.contains(&format!("run {id}: handed off")), "{err}");
    assert_eq!(lease(&env, &id).0, None, "the lease is free");
    let _c2 = start_standby(&env, "c2");
    wait_for("c2 to take the run", || takes(&env, "c2", &id) > 0);
    env.write("gate0", "", false);
    env.write("gate1", "", false);
    assert_each_ran_once(&env, &id, 6);
    assert!(env.read("c2.err").contains("adopted, not run again"), "{}", env.read("c2.err"));
}

/// A standby on another host whose clock is an hour fast: on its own clock the live run's
/// heartbeats are an hour old; on the database's they are fresh, and it never takes the run.
#[test]
fn a_fast_clock_does_not_make_a_live_coordinator_look_dead() {
    let Some(env) = Env::postgres("a_fast_clock_does_not_make_a_live") else { return };
    let (w, t) = workflow(&env, 2);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    let Some(_c) = start_standby_elsewhere(&env, "fast", "3600000") else { return };
    wait_for("the standby to start", || env.read("fast.err").contains("watches runs"));
    // Three leases of the run's own heartbeats (on the database's clock) while the standby
    // looks every quarter lease.
    let (_, beat, _) = lease(&env, &id);
    wait_for("three leases of heartbeats", || lease(&env, &id).1 >= beat.map(|b| b + 3_000));
    env.write("gate0", "", false);
    env.write("gate1", "", false);
    assert_eq!(wait_exit(&mut run.0), 0, "run: {}", env.read("run.err"));
    assert_eq!(takes(&env, "fast", &id), 0, "{}", env.read("fast.err"));
}

/// A standby on another host whose clock is an hour slow: on its own clock the killed run's
/// last heartbeat is in the future; on the database's it is older than the lease, and it
/// takes the run over.
#[test]
fn a_slow_clock_does_not_make_a_dead_coordinator_look_alive() {
    let Some(env) = Env::postgres("a_slow_clock_does_not_make_a_dead") else { return };
    let (w, t) = workflow(&env, 2);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    let Some(_c) = start_standby_elsewhere(&env, "slow", "-3600000") else { return };
    wait_for("the worker to run every s0", || count(&env, "start", "s0/") == 2);
    run.kill9();
    wait_for("the slow standby to take the run", || takes(&env, "slow", &id) > 0);
    let err = env.read("slow.err");
    assert!(err.contains("after its last heartbeat"), "{err}");
    env.write("gate0", "", false);
    env.write("gate1", "", false);
    assert_each_ran_once(&env, &id, 4);
}

/// `resume` drives a run as it was started: without `--dispatch` it uses the stored mode,
/// and another `--dispatch` is refused (exit 2, nothing changed).
#[test]
fn resume_remembers_the_dispatch_mode() {
    let Some(env) = Env::postgres("resume_remembers_the_dispatch_mode") else { return };
    let (w, t) = workflow(&env, 2);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    wait_for("the worker to run every s0", || count(&env, "start", "s0/") == 2);
    run.kill9();
    let before = lease(&env, &id);
    let o = env.rewind(&["resume", &id, "--dispatch", "local"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("executes with --dispatch workers"), "{}", stderr(&o));
    assert_eq!(lease(&env, &id), before, "nothing was changed");
    let mut resume = start(&env, "resume", &["resume", &id], &[]);
    wait_for("the resume to adopt the running attempts", || {
        env.read("resume.err").contains("adopted, not run again")
    });
    env.write("gate0", "", false);
    env.write("gate1", "", false);
    assert_eq!(wait_exit(&mut resume.0), 0, "resume: {}", env.read("resume.err"));
    assert_each_ran_once(&env, &id, 4);
}

/// Attempts a worker finished while their coordinator was frozen (SIGSTOP, then killed -9):
/// their `done` rows were never read, and the standby adopts them with their outcomes: they do
/// not run again.
#[test]
fn attempts_done_while_the_coordinator_was_frozen_are_adopted_with_their_outcomes() {
    let Some(env) = Env::postgres("attempts_done_while_frozen_are_adopted") else { return };
    let (w, t) = workflow(&env, 2);
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let _a = start_worker(&env, "a");
    wait_for("the worker to run every s0", || count(&env, "start", "s0/") == 2);
    run.signal("-STOP");
    env.write("gate0", "", false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(rewind_store::SqlStore::open(&env.db)).unwrap();
    let run_id: rewind_model::RunId = id.parse().unwrap();
    wait_for("both s0 rows to be done", || {
        let rows = rt.block_on(store.run_dispatched(run_id)).unwrap();
        rows.len() == 2 && rows.iter().all(|r| r.state == rewind_dispatch::DispatchState::Done)
    });
    run.kill9();
    let _c = start_standby(&env, "c1");
    wait_for("the standby to take the run", || takes(&env, "c1", &id) > 0);
    wait_for("every s1 to start", || count(&env, "start", "s1/") == 2);
    env.write("gate1", "", false);
    assert_each_ran_once(&env, &id, 4);
    assert!(env.read("c1.err").contains("2 attempt(s) dispatched"), "{}", env.read("c1.err"));
}

/// Of the attempts a killed coordinator left open, only those whose dispatch row is missing (it
/// died before enqueuing them) or lost run again, as new attempts; a queued one is adopted.
#[test]
fn only_attempts_without_a_live_row_run_again_after_a_takeover() {
    let Some(env) = Env::postgres("only_attempts_without_a_live_row") else { return };
    env.write("step.sh", STEP_SH, true);
    let wf = "name = \"later\"\ntarget_kind = \"site\"\n\n[defaults]\ntimeout = \"2m\"\nretries = 0\n\n[[steps]]\nid = \"s0\"\nestimate = \"1s\"\nqueue = \"later\"\naction = { kind = \"command\", program = \"./step.sh\", args = [\"ledger\", \"ok\"] }\n";
    let w = env.write("later.toml", wf, false).display().to_string();
    let t = env.write("sites.csv", &targets_csv(&["ok"; 3]), false).display().to_string();
    let mut run = start_run(&env, &w, &t);
    let id = env.run_id_of("run");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(rewind_store::SqlStore::open(&env.db)).unwrap();
    let run_id: rewind_model::RunId = id.parse().unwrap();
    wait_for("three queued attempts", || {
        rt.block_on(store.run_dispatched(run_id)).unwrap().len() == 3
    });
    run.kill9();
    // Site 1's row never written (as if the coordinator died before enqueuing it), site 2's lost.
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&env.db).await.unwrap();
        for (sql, idx) in [
            ("DELETE FROM dispatch WHERE run_id = $1 AND idx = $2", 0_i64),
            ("UPDATE dispatch SET state = 'lost', epoch = epoch + 1 WHERE run_id = $1 AND idx = $2", 1),
        ] {
            let done = sqlx::query(sql).bind(&id).bind(idx).execute(&pool).await.unwrap();
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
        pool.close().await;
    });
    let _c = start_standby(&env, "c1");
    wait_for("the standby to take the run", || takes(&env, "c1", &id) > 0);
    let _a = start(&env, "a", &["worker", "--name", "a", "--queue", "later"], &[]);
    wait_for("the run to succeed", || env.status(&id)["state"] == "succeeded");
    let starts = starts(&env);
    let attempts: Vec<&Vec<u32>> = starts.values().collect();
    assert_eq!(attempts, [&vec![2], &vec![2], &vec![1]], "{starts:?}");
    let err = env.read("c1.err");
    assert!(err.contains("1 attempt(s) dispatched by the previous coordinator"), "{err}");
    assert!(
        err.contains("2 attempt(s) were running when the previous orchestrator stopped"),
        "{err}"
    );
}
