//! Durable runs, as users drive them: `run`, `status`, `resume`, `retry`, `cancel`, `report`,
//! through the real binary, with real processes and a ledger the steps write.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::collections::BTreeMap;

use support::*;

/// a → b (pool of 2, behaviour from the target's `mode`) → c, then a run-scope `done`.
fn chain(env: &Env, modes: &[&str], defaults: &str) -> (String, String) {
    env.write("step.sh", STEP_SH, true);
    let wf = format!(
        r#"name = "chain"
target_kind = "site"

[defaults]
timeout = "1m"
retries = 0
backoff = {{ initial = "100ms", max = "1s", factor = 2.0, jitter = false }}
{defaults}

[resources]
slots = 2

[[steps]]
id = "a"
estimate = "1m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "ok"] }}

[[steps]]
id = "b"
needs = ["a"]
resource = "slots"
estimate = "10m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "{{{{target.attr.mode}}}}"], env = {{ GATE = "gate", FIXED = "fixed" }} }}

[[steps]]
id = "c"
needs = ["b"]
estimate = "1m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "ok"] }}

[[steps]]
id = "done"
scope = "run"
needs = ["c"]
estimate = "1m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "ok"] }}
"#
    );
    let w = env.write("chain.toml", &wf, false);
    let t = env.write("sites.csv", &targets_csv(modes), false);
    (w.display().to_string(), t.display().to_string())
}

fn run_args<'a>(w: &'a str, t: &'a str) -> Vec<&'a str> {
    vec!["run", "--workflow", w, "--targets", t, "--restore-point", RP]
}

fn starts(ledger: &[Entry], instance: &str) -> Vec<Entry> {
    ledger.iter().filter(|e| e.what == "start" && e.instance == instance).cloned().collect()
}

fn ends(ledger: &[Entry], instance: &str) -> usize {
    ledger.iter().filter(|e| e.what == "end" && e.instance == instance).count()
}

/// Instance key → state, from the report.
fn states(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn kill_9_then_resume_never_reruns_a_succeeded_instance() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["gate", "gate", "gate", "gate"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    // Two `b` attempts are running (the pool holds two), blocked on the gate.
    wait_for("two b attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.instance.starts_with("b/")).count()
            == 2
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Their watchdogs stop the steps' process groups (tests/orphans.rs); stop whatever is left
    // at once, as a crash of the machine would.
    for e in env.ledger().iter().filter(|e| e.what == "start") {
        kill_group(e.pid.unwrap());
    }
    let before = states(&env.report(&run));
    let durable_done: Vec<&String> =
        before.iter().filter(|(_, s)| *s == "succeeded").map(|(k, _)| k).collect();
    // The two gated `b`s, and possibly an `a` whose success was not yet durable at the kill.
    let was_running: Vec<&String> =
        before.iter().filter(|(_, s)| *s == "running").map(|(k, _)| k).collect();
    assert_eq!(was_running.iter().filter(|k| k.starts_with("b/")).count(), 2, "{before:?}");
    assert_eq!(env.status(&run)["shown_state"], "interrupted", "no live driver");
    // Who started it: `user@host` of the process that created the run.
    let by = env.status(&run)["started_by"].as_str().unwrap().to_owned();
    assert!(by.split_once('@').is_some_and(|(u, h)| !u.is_empty() && !h.is_empty()), "{by}");

    env.write("gate", "", false);
    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let note = format!(
        "{} attempt(s) were running when the previous orchestrator stopped",
        was_running.len()
    );
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));

    let ledger = env.ledger();
    for key in &durable_done {
        assert_eq!(
            starts(&ledger, key).len(),
            1,
            "{key} succeeded before the kill and must not run again"
        );
    }
    for key in &was_running {
        let s = starts(&ledger, key);
        assert_eq!(s.len(), 2, "{key} was running at the kill: it runs again");
        assert_eq!(s[0].key, s[1].key, "same idempotency key across the resume");
        assert_eq!((s[0].attempt, s[1].attempt), (1, 2));
        assert!(ends(&ledger, key) >= 1);
    }
    let after = env.report(&run);
    assert_eq!(after["state"], "succeeded");
    assert!(states(&after).values().all(|s| s == "succeeded"));
    for s in after["steps"].as_array().unwrap() {
        if was_running.contains(&&s["key"].as_str().unwrap().to_owned()) {
            assert_eq!(s["attempts"], 2);
            assert_eq!(s["intervals"].as_array().unwrap().len(), 2);
        }
    }
    // Every other instance ran to completion exactly once.
    for key in before.keys().filter(|k| !was_running.contains(k)) {
        assert_eq!(ends(&ledger, key), 1, "{key}");
    }
}

#[test]
fn sigint_lets_running_actions_finish_and_leaves_the_run_resumable() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["gate", "gate", "gate"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    wait_for("two b attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.instance.starts_with("b/")).count()
            == 2
    });
    // Which two `b`s hold the pool depends on which `a`s finished first.
    let started: Vec<String> = env
        .ledger()
        .into_iter()
        .filter(|e| e.what == "start" && e.instance.starts_with("b/"))
        .map(|e| e.instance)
        .collect();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    wait_for("the interrupt note", || env.read("run.err").contains("SIGINT: no new steps start"));
    assert!(child.try_wait().unwrap().is_none(), "rewind waits for its running actions");
    env.write("gate", "", false);
    assert_eq!(wait_exit(&mut child), 130);
    assert!(env.read("run.out").contains("interrupted by SIGINT; resume with: rewind resume"));
    let ledger = env.ledger();
    assert_eq!(
        ledger.iter().filter(|e| e.what == "end" && e.instance.starts_with("b/")).count(),
        2,
        "the two finished"
    );
    let third = (1..=3).map(|n| format!("b/{}", site(n))).find(|k| !started.contains(k)).unwrap();
    assert!(starts(&ledger, &third).is_empty(), "nothing new started after the signal: {ledger:?}");
    assert_eq!(env.status(&run)["shown_state"], "interrupted");
    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.report(&run)["counts"]["succeeded"], 3 * 3 + 1);
}

#[test]
fn a_failing_target_blocks_only_its_dependents_and_retry_finishes_it() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["ok", "fail", "ok"], "");
    let o = env.rewind(&run_args(&w, &t));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert!(
        stderr(&o).contains(&format!(
            "failed: b/{} attempt 1: exit status 7: boom: shard is read-only; no retries left",
            site(2)
        )),
        "{}",
        stderr(&o)
    );
    let st = states(&env.report(&run));
    assert_eq!(st[&format!("b/{}", site(2))], "failed");
    assert_eq!(st[&format!("c/{}", site(2))], "blocked");
    assert_eq!(st["done"], "blocked", "the fan-in waits for every target");
    for n in [1, 3] {
        assert_eq!(st[&format!("c/{}", site(n))], "succeeded", "other targets carry on");
    }
    let status = env.status(&run);
    assert_eq!(status["state"], "failed");
    assert_eq!(status["restored_targets"], 2);
    let f = &status["failures"][0];
    assert_eq!(f["key"], format!("b/{}", site(2)));
    assert_eq!(f["exit_code"], 7);
    assert!(f["stderr_tail"].as_str().unwrap().ends_with("boom: shard is read-only\n"));
    let human = stdout(&env.rewind(&["status", &run]));
    assert!(
        human.contains(&format!(
            "b/{} after 1 attempt(s): exit status 7: boom: shard is read-only",
            site(2)
        )),
        "{human}"
    );
    assert!(human.contains("    | boom: shard is read-only"), "{human}");
    let report_md = stdout(&env.rewind(&["report", &run]));
    assert!(report_md.contains("## Failures (1)"), "{report_md}");

    // Fix the store, retry: only the failed and blocked instances run.
    env.write("fixed", "", false);
    let o = env.rewind(&["retry", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 failed or blocked instance(s) reset to pending"),
        "{}",
        stderr(&o)
    );
    let ledger = env.ledger();
    assert_eq!(
        starts(&ledger, &format!("b/{}", site(2))).iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        starts(&ledger, &format!("b/{}", site(1))).len(),
        1,
        "succeeded instances are not re-run"
    );
    assert_eq!(env.report(&run)["state"], "succeeded");
}

#[test]
fn retries_follow_the_backoff_policy() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["flaky"], "");
    let text = std::fs::read_to_string(&w).unwrap().replace("retries = 0", "retries = 3");
    std::fs::write(&w, text).unwrap();
    let o = env.rewind(&run_args(&w, &t));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    let report = env.report(&run);
    let b = report["steps"].as_array().unwrap().iter().find(|s| s["step"] == "b").unwrap();
    assert_eq!(b["attempts"], 3);
    let iv: Vec<[f64; 2]> = serde_json::from_value(b["intervals"].clone()).unwrap();
    // backoff: initial 100ms, factor 2, no jitter: the second attempt waits >= 0.1 s after the
    // first ended, the third >= 0.2 s after the second.
    assert!(iv[1][0] - iv[0][1] >= 0.1, "{iv:?}");
    assert!(iv[2][0] - iv[1][1] >= 0.2, "{iv:?}");
    assert!(
        stderr(&o).contains("attempt 1: exit status 1: flaky attempt 1; retrying in 0.1s"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_restore_point_mismatch_fails_at_once_despite_retries() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["early"], "");
    let text = std::fs::read_to_string(&w).unwrap().replace("retries = 0", "retries = 5");
    std::fs::write(&w, text).unwrap();
    let o = env.rewind(&run_args(&w, &t));
    assert_eq!(o.status.code(), Some(1));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    let f = &env.status(&run)["failures"][0];
    assert_eq!(f["attempts"], 1, "no retry");
    assert_eq!(
        f["error"],
        "restore point mismatch: the step reported \"2022-04-05T07:28:00Z\", but the run is pinned to 2022-04-05T07:33:00Z"
    );
}

#[test]
fn cancel_stops_running_actions_and_leaves_a_consistent_record() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["hang", "hang", "hang"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    wait_for("two b attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.instance.starts_with("b/")).count()
            == 2
    });
    let o = env.rewind(&["cancel", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("run {run} cancelled"));
    assert_eq!(wait_exit(&mut child), 3);
    for e in env.ledger().iter().filter(|e| e.instance.starts_with("b/")) {
        assert!(!is_alive(e.pid.unwrap()), "the action's process is stopped");
    }
    let report = env.report(&run);
    assert_eq!(report["state"], "cancelled");
    let c = &report["counts"];
    assert_eq!((c["pending"].as_u64(), c["running"].as_u64()), (Some(0), Some(0)));
    assert_eq!(c["succeeded"], 3, "the a steps");
    assert_eq!(c["cancelled"], 3 + 3 + 1);
    for s in report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "b" && s["attempts"] == 1)
    {
        let iv = &s["intervals"][0];
        assert!(iv[1].as_f64().unwrap() >= iv[0].as_f64().unwrap(), "the attempt is closed");
    }
    let status = stdout(&env.rewind(&["status", &run]));
    assert!(
        status.contains("state          cancelled (cancelled by an operator (rewind cancel))"),
        "{status}"
    );
    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(2), "a cancelled run is not resumed");
    assert!(
        stderr(&o).contains("was cancelled: a cancelled run cannot be resumed"),
        "{}",
        stderr(&o)
    );
    let o = env.rewind(&["retry", &run]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("a cancelled run cannot be retried"));
}

#[test]
fn cancel_of_a_crashed_run_is_written_by_the_canceller() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["gate", "gate"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    wait_for("b attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.instance.starts_with("b/")).count()
            == 2
    });
    child.kill().unwrap();
    child.wait().unwrap();
    for e in env.ledger().iter().filter(|e| e.what == "start") {
        kill_group(e.pid.unwrap());
    }
    let o = env.rewind(&["cancel", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("run {run} cancelled (5 instances cancelled)")),
        "{}",
        stdout(&o)
    );
    let report = env.report(&run);
    assert_eq!(report["state"], "cancelled");
    assert_eq!(report["counts"]["running"], 0);
}

#[test]
fn resume_is_refused_while_another_process_drives_the_run() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["gate"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    wait_for("b attempt", || env.ledger().iter().any(|e| e.instance.starts_with("b/")));
    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&format!("run {run} is being driven by ")), "{}", stderr(&o));
    env.write("gate", "", false);
    assert_eq!(wait_exit(&mut child), 0);
}

#[test]
fn a_missing_or_locked_database_is_refused_and_nothing_is_written() {
    let env = Env::sqlite();
    let (w, t) = chain(&env, &["ok"], "");
    let mut args = vec!["--db", "sqlite:///no/such/folder/rewind.db"];
    args.extend(run_args(&w, &t));
    let o = env.rewind(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot open checkpoint store sqlite:///no/such/folder/rewind.db"),
        "{}",
        stderr(&o)
    );

    // Another process holds the write lock.
    assert_eq!(env.rewind(&["status"]).status.code(), Some(0)); // creates the store
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lock = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&env.db).await.unwrap();
        sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut c).await.unwrap();
        c
    });
    let o = env.cmd(&run_args(&w, &t)).env("REWIND_DB_BUSY_TIMEOUT", "200ms").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("database is locked"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "no run id was printed");
    rt.block_on(sqlx::raw_sql("ROLLBACK").execute(&mut lock)).unwrap();
    assert!(stdout(&env.rewind(&["status"])).starts_with("no runs in the checkpoint store at "));
    assert!(env.ledger().is_empty(), "no step ran");
}

#[test]
fn simulations_are_reproducible_for_a_seed() {
    let env = Env::sqlite();
    let root = env!("CARGO_MANIFEST_DIR");
    let w = format!("{root}/workflows/restore-2.toml");
    let t = env.write(
        "sites.csv",
        &std::fs::read_to_string(format!("{root}/examples/sites-883.csv"))
            .unwrap()
            .lines()
            .take(120)
            .collect::<Vec<_>>()
            .join("\n"),
        false,
    );
    let t = t.display().to_string();
    let sim = |seed: &str| {
        let mut args = run_args(&w, &t);
        args.extend(["--simulate", "--seed", seed, "--fail-rate", "0.05"]);
        let o = env.rewind(&args);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
        let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
        let mut r = env.report(&run);
        r.as_object_mut().unwrap().remove("run_id");
        r
    };
    let a = sim("7");
    let b = sim("7");
    assert_eq!(a, b, "same seed, same schedule, to the interval");
    assert!(
        a["steps"].as_array().unwrap().iter().any(|s| s["attempts"].as_u64().unwrap() > 1),
        "some attempts failed and were retried"
    );
    let c = sim("8");
    assert_ne!(a["steps"], c["steps"]);
    assert_eq!(a["simulated"], true);
}

#[test]
fn run_and_resume_on_postgres() {
    let Some(env) = Env::postgres("run_and_resume_on_postgres") else { return };
    let (w, t) = chain(&env, &["gate", "gate", "ok"], "");
    let mut child = env.spawn(&run_args(&w, &t), "run");
    let run = env.run_id_of("run");
    wait_for("two b attempts", || {
        env.ledger().iter().filter(|e| e.what == "start" && e.instance.starts_with("b/")).count()
            == 2
    });
    child.kill().unwrap();
    child.wait().unwrap();
    for e in env.ledger().iter().filter(|e| e.what == "start") {
        kill_group(e.pid.unwrap());
    }
    env.write("gate", "", false);
    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.report(&run)["state"], "succeeded");
    let o = env.rewind(&[
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
        "--simulate",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_real_run_needing_unset_environment_is_refused() {
    let env = Env::sqlite();
    let w = env.write(
        "sql.toml",
        r#"name = "sql"
target_kind = "site"
[connections]
catalog = "sqlite://${CATALOG_DIR}/catalog.db"
[[steps]]
id = "catalog.activate"
estimate = "1m"
action = { kind = "sql", connection = "catalog", sql = "UPDATE sites SET status = 'active' WHERE id = ?", params = ["{{target.id}}"] }
"#,
        false,
    );
    let t = env.write("sites.csv", &targets_csv(&["ok"]), false);
    let (w, t) = (w.display().to_string(), t.display().to_string());
    let o = env.cmd(&run_args(&w, &t)).env_remove("CATALOG_DIR").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .contains("the workflow reads environment variables that are not set: CATALOG_DIR"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&env.rewind(&["status"])).starts_with("no runs in the checkpoint store at "));
    // A simulation executes nothing, so it needs no environment.
    let mut args = run_args(&w, &t);
    args.push("--simulate");
    assert_eq!(env.cmd(&args).env_remove("CATALOG_DIR").output().unwrap().status.code(), Some(0));
}

/// Finished is finished (issue 11): `retry` and `resume` of a succeeded run are refused with exit
/// 2 and change nothing: no event, no new makespan, no state change. On SQLite and PostgreSQL.
#[test]
fn a_succeeded_run_is_never_run_again() {
    let check = |env: Env| {
        let (w, t) = chain(&env, &["ok", "ok"], "");
        let o = env.rewind(&run_args(&w, &t));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
        let before = (env.report(&run), stdout(&env.rewind(&["log", &run, "--json"])));
        for verb in ["retry", "resume"] {
            let o = env.rewind(&[verb, &run]);
            assert_eq!(o.status.code(), Some(2), "{verb}: {}{}", stdout(&o), stderr(&o));
            let err = stderr(&o);
            assert!(
                err.contains(&format!("run {run} succeeded: a finished run is never run again")),
                "{err}"
            );
            assert!(err.contains("nothing was changed"), "{err}");
        }
        let after = (env.report(&run), stdout(&env.rewind(&["log", &run, "--json"])));
        assert_eq!(before, after, "the record is exactly as it was");
        assert_eq!(env.status(&run)["driven_by"], serde_json::Value::Null);
    };
    check(Env::sqlite());
    if let Some(env) = Env::postgres("a_succeeded_run_is_never_run_again") {
        check(env);
    }
}

/// A run with no target-scope steps reports its targets by its own outcome: all restored when
/// it succeeds, none when it fails (issue 11: "5/5 restored (100.0%)" for a failed run).
#[test]
fn targets_of_a_run_without_target_steps_follow_the_run() {
    let env = Env::sqlite();
    env.write("step.sh", STEP_SH, true);
    let wf = |mode: &str| {
        format!(
            r#"name = "shards"
target_kind = "site"
[defaults]
retries = 0
[[steps]]
id = "shard"
scope = "group:mode"
estimate = "1m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "{mode}"] }}
"#
        )
    };
    let t = env.write("sites.csv", &targets_csv(&["x", "x", "y", "y", "y"]), false);
    let t = t.display().to_string();
    for (mode, code, restored) in
        [("fail", 1, "0/5 restored (0.0%)"), ("ok", 0, "5/5 restored (100.0%)")]
    {
        let w = env.write(&format!("{mode}.toml"), &wf(mode), false).display().to_string();
        let o = env.rewind(&run_args(&w, &t));
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("targets     {restored}")), "{}", stdout(&o));
        let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
        let report = env.report(&run);
        let want = if code == 0 { "succeeded" } else { "failed" };
        for target in report["targets"].as_array().unwrap() {
            assert_eq!(target["state"], want, "{report}");
        }
    }
}

/// A run stored by an earlier release (whose rules accepted a literal password in a connection
/// URL and a `program` built from a target attribute) still loads after an upgrade: `status`,
/// `report`, `log` and `cancel` work. A real resume of the run whose program comes from its
/// targets is refused, writing nothing; the one with only the password resumes.
#[test]
fn a_run_stored_by_an_earlier_release_still_loads() {
    let env = Env::sqlite();
    env.write("step.sh", STEP_SH, true);
    let old_with = |program: &str, url: &str| {
        format!(
            r#"name = "old"
target_kind = "site"
[connections]
legacy = "{url}"
[defaults]
retries = 0
[[steps]]
id = "a"
estimate = "1m"
action = {{ kind = "command", program = "{program}", args = ["ledger", "ok"] }}
"#
        )
    };
    let old = |program: &str| old_with(program, "postgres://rewind:hunter2@db.example/tracker");
    let targets = targets_csv(&["ok", "ok"]);
    // Today's `check` refuses both texts...
    for program in ["./step.sh", "{{target.attr.mode}}"] {
        let w = env.write("old.toml", &old(program), false);
        let o = env.rewind(&["check", w.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    // ...but runs an earlier release created from them are in the store: made here the way it
    // made them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let create = |text: String| {
        let (wf, relaxed) = rewind_model::Workflow::parse_snapshot("old.toml", &text).unwrap();
        assert!(!relaxed.is_empty());
        let t = rewind_model::TargetSet::parse("t.csv", &targets, rewind_model::TargetsFormat::Csv)
            .unwrap();
        let plan = rewind_model::Plan::build(wf, t, RP.parse().unwrap()).unwrap();
        let spec = rewind_runtime::RunSpec {
            workflow_file: "old.toml".into(),
            workflow_text: text,
            targets_file: "t.csv".into(),
            targets_text: targets.clone(),
            workdir: env.dir.path().to_path_buf(),
            cwd: env.dir.path().to_path_buf(),
            mode: rewind_runtime::Mode::Real,
            max_running: None,
            priority: rewind_scheduler::Priority::CriticalPath,
            vars: rewind_exec::Vars::from_process(),
            waves: Vec::new(),
            halt_rate: 1.0,
        };
        rt.block_on(async {
            let store = rewind_store::SqlStore::open(&env.db).await.unwrap();
            let registry = rewind_exec::Registry::builtin();
            let id = rewind_runtime::create_run(&store, &plan, &spec, &registry).await.unwrap();
            store.close().await;
            id.to_string()
        })
    };
    let unsafe_run = create(old("{{target.attr.mode}}"));
    let before = env.report(&unsafe_run);
    assert_eq!(env.status(&unsafe_run)["state"], "running");
    let o = env.rewind(&["log", &unsafe_run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for verb in ["resume", "retry"] {
        let o = env.rewind(&[verb, &unsafe_run]);
        assert_eq!(o.status.code(), Some(2), "{verb}: {}", stderr(&o));
        assert!(stderr(&o).contains("was created by an earlier rewind and cannot be run by this one: step `a` builds its `program` from a placeholder"), "{}", stderr(&o));
    }
    assert_eq!(env.report(&unsafe_run), before, "the refused resume wrote nothing");
    assert!(env.ledger().is_empty(), "nothing ran");
    let o = env.rewind(&["cancel", &unsafe_run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.status(&unsafe_run)["state"], "cancelled");

    // rewind 0.1 also let an output make a whole URL: the run loads, and is not run.
    let whole_url = create(old_with("./step.sh", "{{target.attr.db}}"));
    assert_eq!(env.status(&whole_url)["state"], "running");
    let o = env.rewind(&["resume", &whole_url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "connection `legacy` takes its scheme or a query parameter's name from a placeholder"
        ),
        "{}",
        stderr(&o)
    );
    assert!(env.ledger().is_empty(), "nothing ran");
    let o = env.rewind(&["cancel", &whole_url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let password_only = create(old("./step.sh"));
    let o = env.rewind(&["resume", &password_only]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.status(&password_only)["state"], "succeeded");
}

/// Issue 15: a real run's first progress line said `ETA 1d` from production estimates while
/// the steps take seconds. Until something finished the ETA is by estimates, and says so; from
/// the first finished instance on it learns from observed durations (a line at once), and the
/// estimate-based lower bound is labelled as such wherever a real run's is shown.
#[test]
fn a_real_runs_eta_learns_from_observed_durations() {
    let env = Env::sqlite();
    let w = env.write(
        "slow-estimates.toml",
        r#"name = "slow-estimates"
target_kind = "site"
[[steps]]
id = "first"
scope = "run"
estimate = "1d"
action = { kind = "command", program = "sleep", args = ["0.3"] }
[[steps]]
id = "second"
scope = "run"
needs = ["first"]
estimate = "1d"
action = { kind = "command", program = "sleep", args = ["1"] }
"#,
        false,
    );
    let t = env.write("sites.csv", &targets_csv(&["ok"]), false);
    let (w, t) = (w.display().to_string(), t.display().to_string());
    let o = env.rewind(&run_args(&w, &t));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" instances done")).collect();
    assert!(lines[0].contains("0/2 instances done") && lines[0].ends_with("ETA 2d by estimates"));
    // Only run-scope steps: the target is restored with the run, never at its start.
    assert!(lines[0].contains("] 0/1 targets restored (0.0%)"), "{err}");
    let after = lines.iter().find(|l| !l.contains(" 0/2 instances done")).unwrap();
    assert!(after.contains("1/2 instances done"), "a line as soon as one finished: {err}");
    assert!(after.contains("by observed durations"), "{err}");
    assert!(!after.contains("ETA 1d") && !after.contains("ETA 2d"), "{err}");
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert!(stdout(&o).contains("(lower bound by estimates 2d)"), "{}", stdout(&o));
    let status = stdout(&env.rewind(&["status", &run]));
    assert!(status.contains("(lower bound by estimates 2d)"), "{status}");
    let report = stdout(&env.rewind(&["report", &run]));
    assert!(report.contains("(lower bound by estimates 2d)"), "{report}");
}

#[test]
fn the_last_progress_line_is_printed_once() {
    let env = Env::sqlite();
    let w = env.write(
        "two.toml",
        r#"name = "two"
target_kind = "site"
[[steps]]
id = "a"
estimate = "1m"
action = { kind = "command", program = "true" }
"#,
        false,
    );
    let t = env.write("sites.csv", &targets_csv(&["one", "two"]), false);
    let (w, t) = (w.display().to_string(), t.display().to_string());
    for sim in [false, true] {
        let mut args = run_args(&w, &t);
        if sim {
            args.push("--simulate");
        }
        let o = env.rewind(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let err = stderr(&o);
        let done: Vec<&str> = err.lines().filter(|l| l.contains("2/2 instances done")).collect();
        assert_eq!(done.len(), 1, "simulated: {sim}: {err}");
    }
}
