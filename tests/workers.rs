//! `run --dispatch workers` with real `rewind worker` processes on PostgreSQL (issue 17): the
//! coordinator dispatches, workers claim, run and report; a killed worker's attempts are rescued
//! after their lease and run elsewhere; a SIGTERM'd worker hands its attempts back and exits 0.
//! Each test has its own PostgreSQL schema; every instance must succeed exactly once (the
//! ledger the steps write).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::process::Child;

use support::*;

/// The lease of dispatched attempts in these tests: a killed worker's attempts are rescued
/// after it.
const LEASE_MS: &str = "1000";

/// A background process killed (SIGKILL) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `steps` per site, each depending on the one before; `mode` for all (see `STEP_SH`).
fn workflow(env: &Env, sites: usize, steps: usize, mode: &str) -> (String, String) {
    env.write("step.sh", STEP_SH, true);
    let mut wf = String::from(
        "name = \"spread\"\ntarget_kind = \"site\"\n\n[defaults]\ntimeout = \"2m\"\nretries = 0\n",
    );
    for i in 0..steps {
        let needs = if i == 0 { String::new() } else { format!("needs = [\"s{}\"]\n", i - 1) };
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\n{needs}estimate = \"1s\"\naction = {{ kind = \"command\", program = \"./step.sh\", args = [\"ledger\", \"{mode}\"], env = {{ GATE = \"gate\" }} }}\n"
        ));
    }
    let w = env.write("spread.toml", &wf, false);
    let modes = vec!["ok"; sites];
    let t = env.write("sites.csv", &targets_csv(&modes), false);
    (w.display().to_string(), t.display().to_string())
}

fn start_run(env: &Env, w: &str, t: &str) -> Guard {
    let args =
        ["run", "--workflow", w, "--targets", t, "--restore-point", RP, "--dispatch", "workers"];
    let mut c = env.cmd(&args);
    c.env("REWIND_LEASE_MS", LEASE_MS);
    let out = std::fs::File::create(env.path("run.out")).unwrap();
    let err = std::fs::File::create(env.path("run.err")).unwrap();
    Guard(c.stdout(out).stderr(err).spawn().unwrap())
}

fn start_worker(env: &Env, name: &str, extra: &[&str]) -> Guard {
    let mut args = vec!["worker", "--name", name, "--slots", "3"];
    args.extend_from_slice(extra);
    let mut c = env.cmd(&args);
    c.env("REWIND_LEASE_MS", LEASE_MS);
    let out = std::fs::File::create(env.path(&format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(env.path(&format!("{name}.err"))).unwrap();
    Guard(c.stdout(out).stderr(err).spawn().unwrap())
}

/// Ends per instance, from the ledger.
fn ends(env: &Env) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in env.ledger().into_iter().filter(|e| e.what == "end") {
        *m.entry(e.instance).or_insert(0) += 1;
    }
    m
}

/// The run exits 0 and every instance succeeded, its step ran to its end exactly once.
fn assert_succeeded_once(env: &Env, run: &mut Guard, instances: usize) {
    let code = wait_exit(&mut run.0);
    assert_eq!(code, 0, "run: {}", env.read("run.err"));
    let id = env.run_id_of("run");
    let status = env.status(&id);
    assert_eq!(status["state"], "succeeded", "{status}");
    let ends = ends(env);
    assert_eq!(ends.len(), instances, "{ends:?}");
    assert!(ends.values().all(|&n| n == 1), "an instance ran to its end twice: {ends:?}");
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn dispatch_workers_is_refused_on_sqlite() {
    let env = Env::sqlite();
    let (w, t) = workflow(&env, 1, 1, "ok");
    let o = env.rewind(&[
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
        "--dispatch",
        "workers",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs a PostgreSQL checkpoint store"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "no run was created: {}", stdout(&o));
    let o = env.rewind(&["worker"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs a PostgreSQL checkpoint store"), "{}", stderr(&o));
}

#[test]
fn two_workers_run_every_instance_once() {
    let Some(env) = Env::postgres("two_workers_run_every_instance_once") else { return };
    let (w, t) = workflow(&env, 8, 3, "ok");
    let mut run = start_run(&env, &w, &t);
    let _a = start_worker(&env, "a", &[]);
    let _b = start_worker(&env, "b", &[]);
    assert_succeeded_once(&env, &mut run, 24);
    let starts = env.ledger().iter().filter(|e| e.what == "start").count();
    assert_eq!(starts, 24, "no attempt ran twice");
    // `status` lists the workers.
    let o = env.rewind(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for name in ["a", "b"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{name} ")) && l.contains("live")),
            "{out}"
        );
    }
}

#[test]
fn a_run_without_a_live_worker_says_so() {
    let Some(env) = Env::postgres("a_run_without_a_live_worker_says_so") else { return };
    let (w, t) = workflow(&env, 1, 1, "ok");
    let mut run = start_run(&env, &w, &t);
    wait_for("the note about the queue", || {
        env.read("run.err").contains("queue default: no live worker")
    });
    let _a = start_worker(&env, "a", &[]);
    assert_succeeded_once(&env, &mut run, 1);
}

#[test]
fn a_killed_workers_attempts_are_rescued_and_run_elsewhere() {
    let Some(env) = Env::postgres("a_killed_workers_attempts_are_rescued") else { return };
    let (w, t) = workflow(&env, 3, 1, "gate");
    let mut run = start_run(&env, &w, &t);
    let mut a = start_worker(&env, "a", &[]);
    wait_for("worker a to start all three", || {
        env.ledger().iter().filter(|e| e.what == "start").count() == 3
    });
    let first: Vec<i32> = env.ledger().iter().filter_map(|e| e.pid).collect();
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    // Its step processes die with it (the watchdog); none may reach its end.
    wait_for("worker a's step processes to die", || first.iter().all(|&p| !pid_alive(p)));
    let _b = start_worker(&env, "b", &[]);
    wait_for("worker b to run the rescued attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.attempt == 2).count() == 3
    });
    env.write("gate", "", false);
    assert_succeeded_once(&env, &mut run, 3);
    assert!(env.ledger().iter().all(|e| e.what != "end" || e.attempt == 2), "{:?}", env.ledger());
}

#[test]
fn a_sigtermed_worker_hands_back_and_exits_0() {
    let Some(env) = Env::postgres("a_sigtermed_worker_hands_back") else { return };
    let (w, t) = workflow(&env, 2, 1, "gate");
    let mut run = start_run(&env, &w, &t);
    let mut a = start_worker(&env, "a", &["--grace", "300ms"]);
    wait_for("worker a to start both", || {
        env.ledger().iter().filter(|e| e.what == "start").count() == 2
    });
    let first: Vec<i32> = env.ledger().iter().filter_map(|e| e.pid).collect();
    let pid = a.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(wait_exit(&mut a.0), 0, "worker a: {}", env.read("a.err"));
    assert!(env.read("a.err").contains("handed back 2 attempt(s)"), "{}", env.read("a.err"));
    let status = stdout(&env.rewind(&["status"]));
    assert!(status.lines().any(|l| l.starts_with("a ") && l.contains("stopping")), "{status}");
    wait_for("worker a's step processes to stop", || first.iter().all(|&p| !pid_alive(p)));
    let _b = start_worker(&env, "b", &[]);
    wait_for("worker b to run the handed-back attempts", || {
        env.ledger().iter().filter(|e| e.what == "start").count() == 4
    });
    env.write("gate", "", false);
    assert_succeeded_once(&env, &mut run, 2);
}

/// A worker runs an attempt as a local run would: the outputs of dependencies reach its
/// templates, a failed attempt is retried (on whichever worker claims it), its queue is rendered
/// from the target.
#[test]
fn outputs_retries_and_queues_travel_through_workers() {
    let Some(env) = Env::postgres("outputs_retries_and_queues_travel") else { return };
    env.write("step.sh", STEP_SH, true);
    let wf = r#"name = "travel"
target_kind = "site"

[defaults]
timeout = "2m"
retries = 2
backoff = { initial = "50ms", max = "100ms", factor = 2.0, jitter = false }

[[steps]]
id = "a"
estimate = "1s"
queue = "q-{{target.attr.mode}}"
action = { kind = "command", program = "./step.sh", args = ["ledger", "ok"] }

[[steps]]
id = "b"
needs = ["a"]
estimate = "1s"
action = { kind = "command", program = "./step.sh", args = ["ledger", "flaky"] }

[[steps]]
id = "c"
needs = ["a"]
estimate = "1s"
action = { kind = "command", program = "/bin/sh", args = ["-c", "echo \"$0 {{needs.a.pid}}\" >> seen", "{{target.id}}"] }
"#;
    let w = env.write("travel.toml", wf, false).display().to_string();
    let t = env.write("sites.csv", &targets_csv(&["ok", "ok"]), false).display().to_string();
    let mut run = start_run(&env, &w, &t);
    // Steps `b` and `c` go to `default`; `a` to `q-ok`: both queues must be served.
    wait_for("the note about queue q-ok", || {
        env.read("run.err").contains("queue q-ok: no live worker")
    });
    let _a = start_worker(&env, "a", &["--queue", "q-ok"]);
    let _b = start_worker(&env, "b", &[]);
    assert_eq!(wait_exit(&mut run.0), 0, "run: {}", env.read("run.err"));
    let ledger = env.ledger();
    // `flaky` fails its first two attempts: the third succeeds.
    for n in 1..=2 {
        let b = format!("b/{}", site(n));
        let starts = ledger.iter().filter(|e| e.what == "start" && e.instance == b).count();
        assert_eq!(starts, 3, "{b}: {ledger:?}");
    }
    // `c` saw the pid `a` reported for its own site.
    let seen = env.read("seen");
    for n in 1..=2 {
        let a = format!("a/{}", site(n));
        let pid = ledger.iter().find(|e| e.what == "start" && e.instance == a).unwrap().pid;
        let line = format!("{} {}", site(n), pid.unwrap());
        assert!(seen.lines().any(|l| l == line), "{line:?} not in {seen:?}");
    }
}

/// The dispatch rows of the test's store: (instance, attempt, state).
fn dispatch_rows(env: &Env) -> Vec<(u32, u32, String)> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = rewind_store::SqlStore::open(&env.db).await.unwrap();
        let rows = store.dispatch_rows().await.unwrap();
        rows.into_iter().map(|r| (r.key.idx, r.key.attempt, r.state.to_string())).collect()
    })
}

/// The accepted outcomes of the test's dispatch rows (`None`: not reported yet).
fn dispatch_outcomes(env: &Env) -> Vec<Option<String>> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = rewind_store::SqlStore::open(&env.db).await.unwrap();
        store.dispatch_rows().await.unwrap().into_iter().map(|r| r.outcome).collect()
    })
}

/// A cancelled run withdraws the attempts no worker claimed: none runs afterwards.
#[test]
fn a_cancelled_run_withdraws_its_unclaimed_attempts() {
    let Some(env) = Env::postgres("a_cancelled_run_withdraws") else { return };
    let (w, t) = workflow(&env, 3, 1, "ok");
    let mut run = start_run(&env, &w, &t);
    wait_for("the attempts to be dispatched", || dispatch_rows(&env).len() == 3);
    let id = env.run_id_of("run");
    let o = env.rewind(&["cancel", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(wait_exit(&mut run.0), 3, "run: {}", env.read("run.err"));
    assert!(dispatch_rows(&env).is_empty(), "{:?}", dispatch_rows(&env));
}

/// A coordinator killed with attempts queued: `resume --dispatch workers` adopts them (their
/// rows are still queued: a worker runs them once, as their first attempt) instead of running
/// them again as new attempts.
#[test]
fn a_resumed_coordinator_adopts_the_dead_ones_queued_attempts() {
    let Some(env) = Env::postgres("a_resumed_coordinator_adopts") else { return };
    let (w, t) = workflow(&env, 3, 1, "ok");
    let mut run = start_run(&env, &w, &t);
    wait_for("the attempts to be dispatched", || dispatch_rows(&env).len() == 3);
    let id = env.run_id_of("run");
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let mut c = env.cmd(&["resume", &id, "--dispatch", "workers"]);
    c.env("REWIND_LEASE_MS", LEASE_MS);
    let out = std::fs::File::create(env.path("resume.out")).unwrap();
    let err = std::fs::File::create(env.path("resume.err")).unwrap();
    let mut resume = Guard(c.stdout(out).stderr(err).spawn().unwrap());
    wait_for("the resume to adopt the queued attempts", || {
        env.read("resume.err").contains("3 attempt(s) dispatched by the previous coordinator")
    });
    let rows = dispatch_rows(&env);
    assert!(rows.len() == 3 && rows.iter().all(|r| r.1 == 1), "{rows:?}");
    let _a = start_worker(&env, "a", &[]);
    assert_eq!(wait_exit(&mut resume.0), 0, "resume: {}", env.read("resume.err"));
    let ledger = env.ledger();
    assert_eq!(ledger.iter().filter(|e| e.what == "start").count(), 3, "{ledger:?}");
    assert!(ledger.iter().all(|e| e.attempt == 1), "{ledger:?}");
    assert_eq!(env.status(&id)["state"], "succeeded");
}

/// `rewind cancel` reaches attempts already running on a worker: the worker finds the run
/// cancelled (its liveness check, one statement for the runs it holds) and stops their
/// processes; the run ends cancelled, no step reaches its end, and the worker serves on.
#[test]
fn a_cancel_stops_the_attempts_running_on_workers() {
    let Some(env) = Env::postgres("a_cancel_stops_attempts_on_workers") else { return };
    let (w, t) = workflow(&env, 3, 1, "hang");
    let mut run = start_run(&env, &w, &t);
    let mut a = start_worker(&env, "a", &[]);
    wait_for("worker a to start all three", || {
        env.ledger().iter().filter(|e| e.what == "start").count() == 3
    });
    let pids: Vec<i32> = env.ledger().iter().filter_map(|e| e.pid).collect();
    assert_eq!(pids.len(), 3, "{:?}", env.ledger());
    assert!(pids.iter().all(|&p| pid_alive(p)));
    let id = env.run_id_of("run");
    let o = env.rewind(&["cancel", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(wait_exit(&mut run.0), 3, "run: {}", env.read("run.err"));
    assert_eq!(env.status(&id)["state"], "cancelled");
    // `wait_for`'s bound (20 s) is generous: the worker looks every second.
    wait_for("the step processes on worker a to be stopped", || {
        pids.iter().all(|&p| !pid_alive(p))
    });
    assert!(env.ledger().iter().all(|e| e.what != "end"), "{:?}", env.ledger());
    // Their reports say cancelled (nobody records them: the coordinator has ended).
    wait_for("worker a to report the three attempts", || {
        let outcomes = dispatch_outcomes(&env);
        outcomes.len() == 3 && outcomes.iter().all(Option::is_some)
    });
    for o in dispatch_outcomes(&env) {
        assert!(o.as_deref().unwrap().contains("\"outcome\":\"cancelled\""), "{o:?}");
    }
    assert!(a.0.try_wait().unwrap().is_none(), "worker a exited: {}", env.read("a.err"));
    assert!(env.read("a.err").contains("is cancelled or over: stopping"), "{}", env.read("a.err"));
}

/// Attempts of a run cancelled while they were queued (its coordinator dead, so nobody withdrew
/// them) are claimed but never started: the worker reads the run's liveness once for the batch
/// and reports them cancelled.
#[test]
fn a_worker_does_not_start_attempts_of_a_cancelled_run() {
    let Some(env) = Env::postgres("a_worker_does_not_start_cancelled") else { return };
    let (w, t) = workflow(&env, 3, 1, "ok");
    let mut run = start_run(&env, &w, &t);
    wait_for("the attempts to be dispatched", || dispatch_rows(&env).len() == 3);
    let id = env.run_id_of("run");
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let o = env.rewind(&["cancel", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.status(&id)["state"], "cancelled", "{}", stdout(&o));
    let _a = start_worker(&env, "a", &[]);
    wait_for("worker a to report the three attempts", || {
        let rows = dispatch_rows(&env);
        rows.len() == 3 && rows.iter().all(|r| r.2 == "done")
    });
    assert!(env.ledger().is_empty(), "a step ran: {:?}", env.ledger());
    for o in dispatch_outcomes(&env) {
        assert!(o.as_deref().unwrap().contains("\"outcome\":\"cancelled\""), "{o:?}");
    }
}

/// Runs SQL statements in the test's schema (its store's URL names it).
fn exec_sql(env: &Env, statements: &[&str]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db).await.unwrap();
        for s in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(s.to_string())).execute(&mut conn).await.unwrap();
        }
    });
}

/// A worker whose report batch fails once (the database refuses it; the worker lives on and so
/// does its heartbeat) sends it again: the attempt is not left claimed with its lease renewed
/// for ever (the run would never end), and it is not run again either.
#[test]
fn an_undelivered_report_is_sent_again() {
    let Some(env) = Env::postgres("an_undelivered_report_is_sent_again") else { return };
    // The store's tables, then a trigger refusing the first report to reach them.
    assert_eq!(env.rewind(&["status"]).status.code(), Some(0));
    exec_sql(
        &env,
        &[
            "CREATE SEQUENCE refuse_once",
            "CREATE FUNCTION refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.state = 'done' AND nextval('refuse_once') = 1 THEN \
             RAISE EXCEPTION 'injected: the first report is refused'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_once BEFORE UPDATE ON dispatch FOR EACH ROW \
             EXECUTE FUNCTION refuse_once()",
        ],
    );
    let (w, t) = workflow(&env, 2, 1, "ok");
    let mut run = start_run(&env, &w, &t);
    let _a = start_worker(&env, "a", &[]);
    assert_succeeded_once(&env, &mut run, 2);
    let err = env.read("a.err");
    assert!(err.contains("not delivered") && err.contains("sent again"), "{err}");
    let starts = env.ledger().iter().filter(|e| e.what == "start").count();
    assert_eq!(starts, 2, "delivered late, not run again: {err}");
}

/// A forced stop (a second SIGINT) of `run --dispatch workers` while attempts run on a worker
/// hands the run off: the attempts stay open and run on, and `resume` adopts them instead of
/// starting them again beside them.
#[test]
fn a_forced_stop_hands_the_attempts_on_workers_off() {
    let Some(env) = Env::postgres("a_forced_stop_hands_off") else { return };
    let (w, t) = workflow(&env, 2, 1, "gate");
    let mut run = start_run(&env, &w, &t);
    let _a = start_worker(&env, "a", &[]);
    wait_for("worker a to start both", || {
        env.ledger().iter().filter(|e| e.what == "start").count() == 2
    });
    let pid = run.0.id().to_string();
    let int = || {
        assert!(
            std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success()
        );
    };
    int();
    wait_for("the run to drain", || env.read("run.err").contains("send it again"));
    int();
    let code = wait_exit(&mut run.0);
    assert_ne!(code, 0, "{}", env.read("run.err"));
    let err = env.read("run.err");
    assert!(err.contains("attempt(s) on workers run on"), "{err}");
    let id = env.run_id_of("run");
    let mut resume = {
        let mut c = env.cmd(&["resume", &id]);
        c.env("REWIND_LEASE_MS", LEASE_MS);
        let out = std::fs::File::create(env.path("resume.out")).unwrap();
        let e = std::fs::File::create(env.path("resume.err")).unwrap();
        Guard(c.stdout(out).stderr(e).spawn().unwrap())
    };
    wait_for("the resume to adopt the attempts", || {
        env.read("resume.err").contains("adopted, not run again")
    });
    env.write("gate", "", false);
    assert_eq!(wait_exit(&mut resume.0), 0, "resume: {}", env.read("resume.err"));
    assert_eq!(env.status(&id)["state"], "succeeded");
    let starts = env.ledger().iter().filter(|e| e.what == "start").count();
    assert_eq!(starts, 2, "each step started once: {}", env.read("resume.err"));
    assert!(ends(&env).values().all(|&n| n == 1), "{:?}", ends(&env));
}
