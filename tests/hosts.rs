//! Workers on separate hosts (issue 17): each `rewind worker` runs in a network namespace and a
//! UTS namespace of its own (its own hostname), made by the test, and reaches the checkpoint
//! store over a bridge: a PostgreSQL cluster the test starts and binds on the bridge's address
//! only. The coordinator (`rewind run --dispatch workers`) runs in the root namespace;
//! `Host::spawn` (tests/support/lab.rs) starts any `rewind` command on a host (a coordinator too).
//!
//! Two hosts finish a run; kill -9 of a worker mid-attempt; a worker partitioned (its link on
//! the bridge down) past its lease whose late outcome is refused; one partitioned past what its
//! store operations wait, which stops its attempts and carries on once plugged back in; SIGTERM
//! drain.
//!
//! Every test asserts through the store: the `workers` table shows each host, every instance has
//! exactly one succeeded attempt, the attempt counts, and `stale_outcomes`. The steps report the
//! host they ran on as their output, so the store also says where each instance ran.
//!
//! Needs root, `ip` (iproute2), `unshare` (util-linux), `runuser` and PostgreSQL's server
//! programs. Without them the tests fail when `REWIND_TEST_POSTGRES` is set (CI sets it) and are
//! skipped, saying why, otherwise.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

#[path = "support/lab.rs"]
mod lab;
mod support;

use std::collections::BTreeMap;

use lab::{Lab, Proc, wait_up_to};
use rewind_model::{AttemptOutcome, InstanceState, RunId};
use rewind_store::{SqlStore, Store};
use support::*;

/// The step of these tests. `step.sh LEDGER MODE`: logs its start and end to LEDGER with its pid
/// and the host it runs on (`start|end INSTANCE ATTEMPT KEY PID HOST`); MODE `gate` waits for the
/// file `$GATE` first. Its output names the host, so the store records where it ran.
const HOST_STEP_SH: &str = r#"#!/bin/sh
ledger="$1"; mode="${2:-ok}"; host=$(hostname)
echo "start $REWIND_INSTANCE $REWIND_ATTEMPT $REWIND_IDEMPOTENCY_KEY $$ $host" >> "$ledger"
case "$mode" in
  gate) while [ ! -e "$GATE" ]; do sleep 0.02; done ;;
esac
echo "end $REWIND_INSTANCE $REWIND_ATTEMPT $REWIND_IDEMPOTENCY_KEY $$ $host" >> "$ledger"
printf '{"restore_point":"%s","host":"%s"}\n' "$REWIND_RESTORE_POINT" "$host"
"#;

/// `run … --dispatch workers` of workflow `w` over targets `t`.
fn run_args<'a>(w: &'a str, t: &'a str) -> [&'a str; 9] {
    ["run", "--workflow", w, "--targets", t, "--restore-point", RP, "--dispatch", "workers"]
}

/// A workflow of `modes.len()` steps per site (`s0`, `s1`, … each needing the one before), step
/// `i` running `step.sh ledger modes[i]`; and `sites` targets.
fn workflow(env: &Env, sites: usize, modes: &[&str]) -> (String, String) {
    env.write("step.sh", HOST_STEP_SH, true);
    let mut wf = String::from(
        "name = \"hosts\"\ntarget_kind = \"site\"\n\n[defaults]\ntimeout = \"2m\"\nretries = 0\n",
    );
    for (i, mode) in modes.iter().enumerate() {
        let needs = if i == 0 { String::new() } else { format!("needs = [\"s{}\"]\n", i - 1) };
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\n{needs}estimate = \"1s\"\naction = {{ kind = \"command\", program = \"./step.sh\", args = [\"ledger\", \"{mode}\"], env = {{ GATE = \"gate\" }} }}\n"
        ));
    }
    let w = env.write("hosts.toml", &wf, false);
    let t = env.write("sites.csv", &targets_csv(&vec!["ok"; sites]), false);
    (w.display().to_string(), t.display().to_string())
}

/// One line of the ledger `step.sh` writes.
#[derive(Debug)]
struct Line {
    what: String,
    attempt: u32,
    pid: i32,
    host: String,
}

/// The ledger, line by line.
fn ledger(env: &Env) -> Vec<Line> {
    env.read("ledger")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Line {
                what: (*f.first()?).to_owned(),
                attempt: f.get(2)?.parse().ok()?,
                pid: f.get(4)?.parse().ok()?,
                host: (*f.get(5)?).to_owned(),
            })
        })
        .collect()
}

/// Steps started on `host` so far.
fn starts_on(env: &Env, host: &str) -> usize {
    ledger(env).iter().filter(|l| l.what == "start" && l.host == host).count()
}

// ---------------------------------------------------------------------------------------------
// Reading the store.
// ---------------------------------------------------------------------------------------------

/// The lab's store, on a runtime of its own.
struct Db {
    rt: tokio::runtime::Runtime,
    store: SqlStore,
}

/// One instance as the store has it: its key, state, attempts (with outcomes) and the host its
/// output names.
#[derive(Debug)]
struct Ran {
    key: String,
    state: InstanceState,
    attempts: Vec<Option<AttemptOutcome>>,
    host: Option<String>,
}

impl Db {
    fn open(url: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt.block_on(SqlStore::open(url)).unwrap();
        Self { rt, store }
    }

    /// (name, host, stopping) of every registered worker.
    fn workers(&self) -> Vec<(String, String, bool)> {
        let rows = self.rt.block_on(self.store.workers()).unwrap();
        rows.into_iter().map(|w| (w.name, w.host, w.stopping)).collect()
    }

    /// (worker, attempt, instance index) of every refused outcome.
    fn stale(&self) -> Vec<(String, u32, u32)> {
        let rows = self.rt.block_on(self.store.stale_outcomes()).unwrap();
        rows.into_iter().map(|s| (s.worker, s.key.attempt, s.key.idx)).collect()
    }

    fn instances(&self, run: &str) -> Vec<Ran> {
        let id: RunId = run.parse().unwrap();
        let instances = self.rt.block_on(self.store.instances(id)).unwrap();
        let attempts = self.rt.block_on(self.store.attempts(id)).unwrap();
        instances
            .into_iter()
            .map(|i| {
                let host = i.output.as_deref().and_then(|o| {
                    let v: serde_json::Value = serde_json::from_str(o).ok()?;
                    v["host"].as_str().map(str::to_owned)
                });
                let mut mine: Vec<_> = attempts.iter().filter(|a| a.idx == i.idx).collect();
                mine.sort_by_key(|a| a.attempt);
                Ran {
                    key: i.key,
                    state: i.state,
                    attempts: mine.into_iter().map(|a| a.outcome).collect(),
                    host,
                }
            })
            .collect()
    }
}

/// Every instance succeeded, with exactly one succeeded attempt.
fn assert_each_succeeded_once(ran: &[Ran], instances: usize) {
    assert_eq!(ran.len(), instances, "{ran:#?}");
    for r in ran {
        assert_eq!(r.state, InstanceState::Succeeded, "{r:?}");
        let ok = r.attempts.iter().filter(|a| **a == Some(AttemptOutcome::Succeeded)).count();
        assert_eq!(ok, 1, "{}: one succeeded attempt: {r:?}", r.key);
    }
}

/// Both workers are registered with their hosts' names.
fn assert_workers_on(store: &Db, expect: &[(&str, &str)]) {
    let workers = store.workers();
    for (name, host) in expect {
        assert!(
            workers.iter().any(|(n, h, _)| n == name && h == host),
            "worker {name} on {host}: {workers:?}"
        );
    }
}

/// The run exits 0 and its state is `succeeded`.
fn assert_run_succeeded(env: &Env, run: &mut Proc) -> String {
    let code = wait_exit(&mut run.0);
    assert_eq!(code, 0, "run: {}", env.read("run.err"));
    let id = env.run_id_of("run");
    assert_eq!(env.status(&id)["state"], "succeeded");
    id
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// Two workers on two hosts finish a run; each host ran some of it.
#[test]
fn two_workers_on_two_hosts_finish_a_run() {
    let Some(lab) = Lab::new("two_workers_on_two_hosts_finish_a_run") else { return };
    let env = &lab.env;
    let (host_a, host_b) = (lab.host("host-a"), lab.host("host-b"));
    // `s0` waits for the gate: each worker's 3 slots fill, so each host runs 3 of the 6.
    let (w, t) = workflow(env, 6, &["gate", "ok"]);
    let mut run = lab.local(&run_args(&w, &t), "run");
    let _a = host_a.worker(env, "a", &[]);
    wait_for("worker a to fill its slots", || starts_on(env, "host-a") == 3);
    let _b = host_b.worker(env, "b", &[]);
    wait_for("worker b to take the rest", || starts_on(env, "host-b") == 3);
    // `status RUN --json` shows each worker on its host, holding its three attempts (the
    // all-runs form stays the array of runs it always was).
    let o = env.rewind(&["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = runs[0]["run_id"].as_str().unwrap_or_else(|| panic!("{runs}")).to_owned();
    let o = env.rewind(&["status", &id, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shown: Vec<_> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (w["name"].clone(), w["host"].clone(), w["state"].clone(), w["attempts_held"].clone())
        })
        .collect();
    let json = |v: &str| serde_json::Value::from(v);
    assert_eq!(
        shown,
        [
            (json("a"), json("host-a"), json("live"), 3.into()),
            (json("b"), json("host-b"), json("live"), 3.into())
        ],
        "{status}"
    );
    env.write("gate", "", false);
    let id = assert_run_succeeded(env, &mut run);

    let store = Db::open(&lab.env.db);
    assert_workers_on(&store, &[("a", "host-a"), ("b", "host-b")]);
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 12);
    assert!(ran.iter().all(|r| r.attempts.len() == 1), "one attempt each: {ran:#?}");
    let mut by_host = BTreeMap::new();
    for r in ran.iter().filter(|r| r.key.starts_with("s0/")) {
        *by_host.entry(r.host.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    assert_eq!(by_host, BTreeMap::from([("host-a".into(), 3), ("host-b".into(), 3)]));
    assert!(ran.iter().all(|r| matches!(r.host.as_deref(), Some("host-a" | "host-b"))));
    assert!(store.stale().is_empty(), "{:?}", store.stale());
}

/// kill -9 of the worker on host A mid-attempt: its attempts run again on host B after their
/// lease, none succeeded twice. The coordinator runs on a third host.
#[test]
fn a_killed_workers_attempts_run_again_on_another_host() {
    let Some(lab) = Lab::new("a_killed_workers_attempts_run_again_on_another_host") else {
        return;
    };
    let env = &lab.env;
    let (host_a, host_b, host_c) = (lab.host("host-a"), lab.host("host-b"), lab.host("host-c"));
    let (w, t) = workflow(env, 3, &["gate"]);
    let mut run = host_c.spawn(env, &run_args(&w, &t), "run");
    let mut a = host_a.worker(env, "a", &[]);
    wait_for("worker a to start all three", || starts_on(env, "host-a") == 3);
    let first: Vec<i32> = ledger(env).iter().map(|l| l.pid).collect();
    a.kill9();
    // Its step processes die with it (the watchdog): none may reach its end.
    wait_for("worker a's step processes to die", || first.iter().all(|&p| !is_alive(p)));
    let _b = host_b.worker(env, "b", &[]);
    wait_for("worker b to run the rescued attempts", || starts_on(env, "host-b") == 3);
    env.write("gate", "", false);
    let id = assert_run_succeeded(env, &mut run);
    let by = env.status(&id)["started_by"].as_str().unwrap_or_default().to_owned();
    assert!(by.ends_with("@host-c"), "the run was started on host-c: {by}");

    let store = Db::open(&lab.env.db);
    assert_workers_on(&store, &[("a", "host-a"), ("b", "host-b")]);
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 3);
    for r in &ran {
        assert_eq!(
            r.attempts,
            [Some(AttemptOutcome::Interrupted), Some(AttemptOutcome::Succeeded)],
            "{r:?}"
        );
        assert_eq!(r.host.as_deref(), Some("host-b"), "{r:?}");
    }
    let ends: Vec<_> = ledger(env).into_iter().filter(|l| l.what == "end").collect();
    assert!(ends.iter().all(|l| l.host == "host-b" && l.attempt == 2), "{ends:?}");
    assert!(store.stale().is_empty(), "a killed worker reports nothing: {:?}", store.stale());
}

/// A worker cut off from the database while it runs an attempt, for longer than the lease, then
/// plugged back in: the attempt is rescued and runs again on host B, and A's late outcome is
/// refused (recorded in `stale_outcomes`); the instance succeeded once.
#[test]
fn a_partitioned_workers_late_outcome_is_refused() {
    let Some(lab) = Lab::new("a_partitioned_workers_late_outcome_is_refused") else { return };
    let env = &lab.env;
    let (host_a, host_b) = (lab.host("host-a"), lab.host("host-b"));
    let (w, t) = workflow(env, 1, &["gate"]);
    let mut run = lab.local(&run_args(&w, &t), "run");
    // A's store operations wait out the partition (rather than fail after 5 s and stop its
    // attempts, whose reports then never arrive): its report reaches the store once it is back.
    let a = host_a.spawn_with(
        env,
        &["worker", "--name", "a"],
        "a",
        &[("REWIND_DB_BUSY_TIMEOUT", "60s")],
    );
    wait_for("worker a to start the attempt", || starts_on(env, "host-a") == 1);
    host_a.cut();
    // B starts only now, so the attempt reaches it only through the rescuer: A's lease must end.
    let _b = host_b.worker(env, "b", &[]);
    wait_for("worker b to run the rescued attempt", || starts_on(env, "host-b") == 1);
    // Both steps end: B's is the one recorded; A's outcome cannot reach the store yet.
    env.write("gate", "", false);
    let id = assert_run_succeeded(env, &mut run);
    wait_for("worker a's step to end", || {
        ledger(env).iter().any(|l| l.what == "end" && l.host == "host-a")
    });
    let store = Db::open(&lab.env.db);
    assert!(store.stale().is_empty(), "{:?}", store.stale());
    host_a.reconnect();
    // Its connections carry on where they hung (TCP retransmits, backing off meanwhile).
    let long = std::time::Duration::from_secs(90);
    wait_up_to("worker a's late report", long, || !store.stale().is_empty());

    let stale = store.stale();
    assert_eq!(stale, [("a".to_owned(), 1, 0)], "A's attempt 1 was refused");
    assert!(env.read("a.err").contains("report refused as stale"), "{}", env.read("a.err"));
    assert!(is_alive(a.pid()), "worker a carries on after the partition: {}", env.read("a.err"));
    assert_workers_on(&store, &[("a", "host-a"), ("b", "host-b")]);
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 1);
    assert_eq!(
        ran[0].attempts,
        [Some(AttemptOutcome::Interrupted), Some(AttemptOutcome::Succeeded)],
        "{ran:?}"
    );
    assert_eq!(ran[0].host.as_deref(), Some("host-b"), "B's outcome is the one recorded");
}

/// A worker cut off for longer than its store operations wait (5 s, the default): once its
/// leases have passed since its last good heartbeat it stops their attempts (B runs them by
/// then). Plugged back in, it carries on: it runs the attempt B hands back, and the run
/// succeeds with one succeeded attempt. (The report of the attempt it stopped is delivered late,
/// and refused, or not at all, as the partition's timing has it.)
#[test]
fn a_worker_cut_off_past_its_leases_stops_its_attempts_and_carries_on() {
    let Some(lab) = Lab::new("a_worker_cut_off_past_its_leases_stops_its_attempts") else {
        return;
    };
    let env = &lab.env;
    let (host_a, host_b) = (lab.host("host-a"), lab.host("host-b"));
    let (w, t) = workflow(env, 1, &["gate"]);
    let mut run = lab.local(&run_args(&w, &t), "run");
    let a = host_a.worker(env, "a", &[]);
    wait_for("worker a to start the attempt", || starts_on(env, "host-a") == 1);
    let first = ledger(env)[0].pid;
    host_a.cut();
    let mut b = host_b.worker(env, "b", &["--grace", "100ms"]);
    wait_for("worker b to run the rescued attempt", || starts_on(env, "host-b") == 1);
    let long = std::time::Duration::from_secs(90);
    wait_up_to("worker a to stop its attempt", long, || {
        env.read("a.err").contains("the leases have passed: stopping the attempts")
    });
    wait_for("worker a's step process to stop", || !is_alive(first));
    host_a.reconnect();
    // A heartbeats again, then B hands its attempt back: A claims and runs it.
    let store = Db::open(&lab.env.db);
    wait_up_to("worker a's heartbeat", long, || {
        let now = rewind_runtime::now_unix_ms();
        let rows = store.rt.block_on(store.store.workers()).unwrap();
        rows.iter().any(|w| w.name == "a" && now - w.heartbeat_unix_ms < 500)
    });
    b.sigterm();
    assert_eq!(wait_exit(&mut b.0), 0, "worker b: {}", env.read("b.err"));
    wait_up_to("worker a to run the handed-back attempt", long, || starts_on(env, "host-a") == 2);
    env.write("gate", "", false);
    let id = assert_run_succeeded(env, &mut run);

    assert!(is_alive(a.pid()), "worker a carries on: {}", env.read("a.err"));
    let stale = store.stale();
    assert!(stale.iter().all(|s| *s == ("a".to_owned(), 1, 0)), "only A's stopped one: {stale:?}");
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 1);
    // Attempt 1 (A's, cut off) was rescued; attempt 2 went to B, back, then to A.
    assert_eq!(
        ran[0].attempts,
        [Some(AttemptOutcome::Interrupted), Some(AttemptOutcome::Succeeded)],
        "{ran:?}"
    );
    assert_eq!(ran[0].host.as_deref(), Some("host-a"), "{ran:?}");
    let lines: Vec<_> = ledger(env).into_iter().map(|l| (l.what, l.attempt, l.host)).collect();
    let at = |w: &str, n: u32, h: &str| (w.to_owned(), n, h.to_owned());
    assert_eq!(
        lines,
        [
            at("start", 1, "host-a"),
            at("start", 2, "host-b"),
            at("start", 2, "host-a"),
            at("end", 2, "host-a")
        ],
        "A's first attempt and B's were stopped before their end"
    );
}

/// SIGTERM to the worker on host A while it runs attempts: it claims nothing more, finishes
/// them and exits 0; the rest of the run completes on host B.
#[test]
fn a_sigtermed_worker_finishes_and_the_run_completes_on_another_host() {
    let Some(lab) = Lab::new("a_sigtermed_worker_finishes_and_the_run_completes") else {
        return;
    };
    let env = &lab.env;
    let (host_a, host_b) = (lab.host("host-a"), lab.host("host-b"));
    let (w, t) = workflow(env, 2, &["gate", "ok"]);
    let mut run = lab.local(&run_args(&w, &t), "run");
    let mut a = host_a.worker(env, "a", &["--grace", "60s"]);
    wait_for("worker a to start both", || starts_on(env, "host-a") == 2);
    let _b = host_b.worker(env, "b", &[]);
    a.sigterm();
    wait_for("worker a to stop claiming", || env.read("a.err").contains("claiming nothing more"));
    env.write("gate", "", false);
    assert_eq!(wait_exit(&mut a.0), 0, "worker a: {}", env.read("a.err"));
    let said = env.read("a.err");
    assert!(said.contains("2 report(s) accepted, 0 stale, 0 handed back"), "{said}");
    let id = assert_run_succeeded(env, &mut run);

    let store = Db::open(&lab.env.db);
    let workers = store.workers();
    assert!(workers.contains(&("a".into(), "host-a".into(), true)), "{workers:?}");
    assert!(workers.contains(&("b".into(), "host-b".into(), false)), "{workers:?}");
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 4);
    for r in &ran {
        assert_eq!(r.attempts.len(), 1, "{r:?}");
        let on = if r.key.starts_with("s0/") { "host-a" } else { "host-b" };
        assert_eq!(r.host.as_deref(), Some(on), "{r:?}");
    }
    assert!(store.stale().is_empty(), "{:?}", store.stale());
}

/// kill -9 of the coordinator (`rewind run` on host C) while workers on hosts A and B run its
/// attempts: the standby `rewind coordinate` on host D, which cannot see C's processes and judges
/// C's heartbeat on the database's clock, takes the run over, adopts the attempts running on the
/// workers (they are not run again) and finishes it; every instance succeeded exactly once.
#[test]
fn a_killed_coordinator_is_taken_over_by_a_standby_on_another_host() {
    let Some(lab) = Lab::new("a_killed_coordinator_is_taken_over_by_a_standby_on_another_host")
    else {
        return;
    };
    let env = &lab.env;
    let hosts = ["host-a", "host-b", "host-c", "host-d"].map(|h| lab.host(h));
    let [host_a, host_b, host_c, host_d] = &hosts;
    let (w, t) = workflow(env, 6, &["gate", "ok"]);
    let mut run = host_c.spawn(env, &run_args(&w, &t), "run");
    let _a = host_a.worker(env, "a", &[]);
    let _b = host_b.worker(env, "b", &[]);
    wait_for("both workers to fill their slots", || {
        starts_on(env, "host-a") == 3 && starts_on(env, "host-b") == 3
    });
    let _standby = host_d.spawn(env, &["coordinate", "--name", "standby-d"], "standby");
    let id = env.run_id_of("run");
    run.kill9();
    wait_for("the standby on host D to take the run over", || {
        env.read("standby.err").contains(&format!("took run {id}"))
    });
    env.write("gate", "", false);
    wait_for("the standby to finish the run", || {
        env.read("standby.err").contains(&format!("run {id} ended state succeeded"))
    });
    assert_eq!(env.status(&id)["state"], "succeeded", "{}", env.read("standby.err"));
    let took = env.read("standby.err");
    assert!(took.contains("from dead owner host-c:"), "C's process, judged dead: {took}");

    let store = Db::open(&lab.env.db);
    assert_workers_on(&store, &[("a", "host-a"), ("b", "host-b")]);
    let ran = store.instances(&id);
    assert_each_succeeded_once(&ran, 12);
    // The six attempts running on A and B at the kill were adopted, not run again.
    assert!(ran.iter().all(|r| r.attempts.len() == 1), "one attempt each: {ran:#?}");
    let starts = ledger(env).into_iter().filter(|l| l.what == "start").count();
    assert_eq!(starts, 12, "each step started once: {}", env.read("ledger"));
    assert!(store.stale().is_empty(), "{:?}", store.stale());
}
