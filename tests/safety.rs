//! The safety rails (README "Safety rails"), through the real binary: the catalog preflight,
//! blast-radius confirmation, restore-point bounds, run locks, dry runs, staged waves with an
//! automatic halt, and the audit log. Every refusal: exit 2, a message naming what is wrong,
//! and nothing written (no checkpoint store, no step started).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::process::Output;

use serde_json::Value;
use support::*;

/// A SQLite "catalog" of entities (id, kind, state), the preflight's source of truth.
fn catalog(env: &Env, rows: &[(String, &str, &str)]) -> String {
    let path = env.path("catalog.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TABLE entities (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for (id, kind, state) in rows {
            sqlx::query("INSERT INTO entities VALUES ($1, $2, $3)")
                .bind(id.clone())
                .bind(kind.to_string())
                .bind(state.to_string())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
    path.display().to_string()
}

/// A workflow: `restore` (the step script, by the target's `mode`), then `mark` (a `sql`
/// statement on the catalog), with a `[preflight]` query on the catalog when `preflight`.
fn workflow(env: &Env, top: &str, preflight: bool) -> String {
    env.write("step.sh", STEP_SH, true);
    let pf = if preflight {
        r#"[preflight]
state = "deleted"
action = { kind = "sql", connection = "catalog", sql = "SELECT kind, state FROM entities WHERE id = ?", params = ["{{target.id}}"] }
"#
    } else {
        ""
    };
    let wf = format!(
        r#"name = "rails"
target_kind = "site"
{top}

[defaults]
timeout = "1m"
retries = 0
backoff = {{ initial = "100ms", max = "1s", factor = 2.0, jitter = false }}

[connections]
catalog = "sqlite://${{CATALOG}}"

{pf}
[[steps]]
id = "restore"
estimate = "1m"
action = {{ kind = "command", program = "./step.sh", args = ["ledger", "{{{{target.attr.mode}}}}"], env = {{ GATE = "gate", FIXED = "fixed" }} }}

[[steps]]
id = "mark"
needs = ["restore"]
estimate = "1m"
action = {{ kind = "sql", connection = "catalog", sql = "UPDATE entities SET state = 'active' WHERE id = ?", params = ["{{{{target.id}}}}"] }}
"#
    );
    env.write("rails.toml", &wf, false).display().to_string()
}

fn targets(env: &Env, name: &str, modes: &[&str]) -> String {
    env.write(name, &targets_csv(modes), false).display().to_string()
}

/// `rewind ARGS` with the catalog's path in `CATALOG`.
fn rewind(env: &Env, catalog: &str, args: &[&str]) -> Output {
    env.cmd(args).env("CATALOG", catalog).output().unwrap()
}

fn run<'a>(w: &'a str, t: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--workflow", w, "--targets", t, "--restore-point", RP];
    v.extend_from_slice(more);
    v
}

/// Nothing was written: no checkpoint store was even created, and no step started.
fn nothing_written(env: &Env) {
    assert!(!env.path("rewind.db").exists(), "a refused run created the checkpoint store");
    assert!(env.ledger().is_empty(), "a refused run started steps: {:?}", env.ledger());
}

fn refused(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected a refusal (exit 2): {err}{}", stdout(o));
    assert!(stdout(o).is_empty(), "a refusal prints no run: {}", stdout(o));
    err
}

fn deleted_sites(n: usize) -> Vec<(String, &'static str, &'static str)> {
    (1..=n).map(|i| (site(i), "site", "deleted")).collect()
}

#[test]
fn preflight_refuses_ids_of_the_wrong_kind_or_state_naming_them() {
    let env = Env::sqlite();
    let mut rows = deleted_sites(3);
    rows.extend([(site(4), "app", "installed"), (site(5), "app", "installed")]);
    rows.extend([(site(6), "app", "installed"), (site(7), "site", "active")]);
    let cat = catalog(&env, &rows);
    let w = workflow(&env, "", true);
    let t = targets(&env, "mixed.csv", &["ok"; 8]);
    let err = refused(&rewind(&env, &cat, &run(&w, &t, &[])));
    assert!(
        err.contains(&format!(
            "3 targets are apps, not sites: {}, {}, {}",
            site(4),
            site(5),
            site(6)
        )),
        "{err}"
    );
    assert!(err.contains(&format!("1 target is `active`, not `deleted`: {}", site(7))), "{err}");
    assert!(
        err.contains(&format!(
            "1 target does not exist (unknown to the preflight resolver): {}",
            site(8)
        )),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    nothing_written(&env);

    // The same workflow over the deleted sites only: the preflight passes and the run restores.
    let t = targets(&env, "deleted.csv", &["ok"; 3]);
    let o = rewind(&env, &cat, &run(&w, &t, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("all 3 targets are sites in state `deleted`"), "{}", stderr(&o));
    // ...and a second restore of the same sites is refused: they are active now.
    let err = refused(&rewind(&env, &cat, &run(&w, &t, &[])));
    assert!(err.contains("3 targets are `active`, not `deleted`"), "{err}");

    // Counts read as words: one target, both targets.
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(2));
    let w = workflow(&env, "", true);
    for (n, said) in [
        (1, "the target is a site in state `deleted`"),
        (2, "both targets are sites in state `deleted`"),
    ] {
        let t = targets(&env, &format!("t{n}.csv"), &vec!["ok"; n]);
        let o = rewind(&env, &cat, &run(&w, &t, &["--dry-run"]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).contains(said), "{}", stderr(&o));
        let err = refused(&rewind(&env, &cat, &run(&w, &t, &["--dry-run", "--confirm", "9"])));
        let want = if n == 1 {
            "does not match the 1 target in"
        } else {
            "does not match the 2 targets in"
        };
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn a_preflight_that_cannot_answer_refuses_the_run() {
    let env = Env::sqlite();
    let w = workflow(&env, "", true);
    let t = targets(&env, "t.csv", &["ok"; 2]);
    // The catalog has no `entities` table: the query fails, and the run is refused.
    let empty = env.path("empty.db");
    std::fs::write(&empty, "").unwrap();
    let err = refused(&rewind(&env, empty.to_str().unwrap(), &run(&w, &t, &[])));
    assert!(err.contains("preflight ([preflight], line"), "{err}");
    assert!(err.contains("no such table: entities"), "{err}");
    nothing_written(&env);
}

#[test]
fn a_large_run_needs_the_exact_target_count_confirmed() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(60));
    let w = workflow(&env, "", false);
    let t = targets(&env, "sixty.csv", &["ok"; 60]);
    let err = refused(&rewind(&env, &cat, &run(&w, &t, &[])));
    assert!(err.contains("this run restores 60 targets"), "{err}");
    assert!(err.contains("more than --max-targets 50"), "{err}");
    assert!(err.contains(&format!("rewind plan --workflow {w} --targets {t}")), "{err}");
    assert!(err.contains("--confirm 60"), "{err}");
    nothing_written(&env);
    let err = refused(&rewind(&env, &cat, &run(&w, &t, &["--confirm", "59"])));
    assert!(err.contains("--confirm 59 does not match the 60 targets"), "{err}");
    nothing_written(&env);
    // A lower limit applies to smaller runs too.
    let five = targets(&env, "five.csv", &["ok"; 5]);
    let err = refused(&rewind(&env, &cat, &run(&w, &five, &["--max-targets", "4"])));
    assert!(err.contains("more than --max-targets 4"), "{err}");
    nothing_written(&env);
    // A simulation touches no store: no confirmation needed.
    let o = rewind(&env, &cat, &run(&w, &t, &["--simulate"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(env.ledger().is_empty());
    let o = rewind(&env, &cat, &run(&w, &t, &["--confirm", "60"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.ledger().iter().filter(|e| e.what == "end").count(), 60);
}

#[test]
fn restore_points_in_the_future_or_beyond_retention_are_refused() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(2));
    let t = targets(&env, "t.csv", &["ok"; 2]);
    let w = workflow(&env, "", false);
    let o = env
        .cmd(&run(&w, &t, &[]))
        .env("CATALOG", &cat)
        .env("REWIND_NOW", "2022-04-05T07:00:00Z")
        .output()
        .unwrap();
    let err = refused(&o);
    assert!(err.contains("restore point 2022-04-05T07:33:00Z is in the future"), "{err}");
    assert!(err.contains("REWIND_NOW sets the clock"), "{err}");
    nothing_written(&env);
    // Against the wall clock, 2022 is far beyond the default retention of 30 days.
    let o = env.cmd(&run(&w, &t, &[])).env("CATALOG", &cat).env_remove("REWIND_NOW").output();
    let err = refused(&o.unwrap());
    assert!(err.contains("beyond the workflow's retention of 30 days"), "{err}");
    nothing_written(&env);
    // A workflow's own retention: one hour, and the restore point is a day old.
    let w = workflow(&env, "retention = \"1h\"", false);
    let err = refused(&rewind(&env, &cat, &run(&w, &t, &[])));
    assert!(err.contains("is 1 day old, beyond the workflow's retention of 1 hour"), "{err}");
    nothing_written(&env);
    // Garbage in REWIND_NOW is refused, not ignored.
    let mut c = env.cmd(&run(&w, &t, &[]));
    let o = c.env("CATALOG", &cat).env("REWIND_NOW", "yesterday").output().unwrap();
    let err = refused(&o);
    assert!(err.contains("REWIND_NOW=\"yesterday\" is not an RFC 3339"), "{err}");
    nothing_written(&env);
}

#[test]
fn two_live_runs_cannot_hold_the_same_target() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(3));
    let w = workflow(&env, "", false);
    let first = targets(&env, "first.csv", &["gate", "gate"]);
    let mut a = env
        .cmd(&run(&w, &first, &[]))
        .env("CATALOG", &cat)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first run's steps", || env.ledger().len() >= 2);
    let runs = env.rewind(&["status", "--json"]);
    let holder: Value = serde_json::from_slice(&runs.stdout).unwrap();
    let holder = holder[0]["run_id"].as_str().unwrap().to_owned();
    // Sites 2 and 3: site 2 is held by the live first run.
    let second = env.write(
        "second.csv",
        &format!("id,kind,mode\n{},site,ok\n{},site,ok\n", site(2), site(3)),
        false,
    );
    let err = refused(&rewind(&env, &cat, &run(&w, second.to_str().unwrap(), &[])));
    assert!(err.contains("1 target is already held by a live run"), "{err}");
    assert!(err.contains(&format!("run {holder} holds {}", site(2))), "{err}");
    let runs: Value = serde_json::from_slice(&env.rewind(&["status", "--json"]).stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "the refused run was not written: {runs}");
    // The first run ends: its targets are free again.
    std::fs::write(env.path("gate"), "").unwrap();
    assert_eq!(wait_exit(&mut a), 0);
    let o = rewind(&env, &cat, &run(&w, second.to_str().unwrap(), &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_dry_run_prints_every_command_and_statement_and_writes_nothing() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(2));
    let w = workflow(&env, "", true);
    let t = targets(&env, "t.csv", &["ok", "fail"]);
    let o = rewind(&env, &cat, &run(&w, &t, &["--dry-run"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("dry run of rails over 2 sites"), "{out}");
    for n in 1..=2 {
        assert!(out.contains(&format!("restore/{}", site(n))), "{out}");
        assert!(out.contains(&format!("mark/{}", site(n))), "{out}");
        // The bound parameter, listed apart from the statement.
        assert!(out.contains(&format!("= '{}'", site(n))), "{out}");
    }
    assert!(out.contains("step.sh ledger ok"), "{out}");
    assert!(out.contains("step.sh ledger fail"), "{out}");
    assert!(out.contains("UPDATE entities SET state = 'active' WHERE id = ?"), "{out}");
    assert!(out.contains(&format!("sqlite://{cat}")), "{out}");
    nothing_written(&env);
    // The catalog is untouched: both sites are still deleted.
    let o = rewind(&env, &cat, &run(&w, &t, &["--dry-run"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A template that cannot resolve is a refusal naming the instance.
    let o = env.cmd(&run(&w, &t, &["--dry-run"])).env_remove("CATALOG").output().unwrap();
    let err = refused(&o);
    assert!(err.contains("CATALOG"), "{err}");
    nothing_written(&env);
}

/// One bad site in the first wave of `--waves 2,100%`: the run halts after wave 1 (exit 1,
/// state `halted`, the reason in `status`), no site of wave 2 starts, and `resume` after the
/// fix runs the failed site again and completes the run. The audit log has it all.
fn waves_halt_then_resume_after_the_fix(env: &Env) {
    let cat = catalog(env, &deleted_sites(6));
    let w = workflow(env, "", true);
    let t = targets(env, "t.csv", &["ok", "fail", "ok", "ok", "ok", "ok"]);
    let o = rewind(env, &cat, &run(&w, &t, &["--waves", "2,100%"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let id = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert!(stdout(&o).contains("state       halted: halted after wave 1 of 2"), "{}", stdout(&o));
    let s = env.status(&id);
    assert_eq!(s["state"], "halted", "{s}");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("halted after wave 1 of 2: 1 of its 2 targets failed (50.0%, more than the 5.0% allowed)"),
        "{reason}"
    );
    let started: Vec<String> =
        env.ledger().iter().filter(|e| e.what == "start").map(|e| e.instance.clone()).collect();
    for n in 1..=2 {
        assert!(started.contains(&format!("restore/{}", site(n))), "{started:?}");
    }
    for n in 3..=6 {
        assert!(
            !started.iter().any(|k| k.ends_with(&site(n))),
            "site {n} of wave 2 started in a halted run: {started:?}"
        );
    }
    // A halted run still holds its targets (the preflight would refuse site 1 first: it is
    // active again, so ask with a workflow that has none).
    let text = std::fs::read_to_string(&w).unwrap();
    let (head, tail) = text.split_once("[preflight]").unwrap();
    let no_pf = env.write(
        "no-preflight.toml",
        &format!("{head}{}", &tail[tail.find("[[steps]]").unwrap()..]),
        false,
    );
    let again =
        refused(&rewind(env, &cat, &run(no_pf.to_str().unwrap(), &t, &["--waves", "2,100%"])));
    assert!(again.contains(&format!("run {id} holds")), "{again}");

    // The operator fixes the site and resumes: its step runs again, then wave 2.
    std::fs::write(env.path("fixed"), "").unwrap();
    let o = env.cmd(&["resume", &id]).env("CATALOG", &cat).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let s = env.status(&id);
    assert_eq!(s["state"], "succeeded", "{s}");
    let report = env.report(&id);
    assert_eq!(report["counts"]["succeeded"], 12, "{report}");

    let o = env.rewind(&["log", &id, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log: Value = serde_json::from_slice(&o.stdout).unwrap();
    let events = log["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in [
        "run.created",
        "run.started",
        "instance.failed",
        "run.halting",
        "run.halted",
        "operator.resume",
        "run.resumed",
        "wave.passed",
        "wave.opened",
        "run.finished",
    ] {
        assert!(kinds.contains(&k), "{k} missing from the audit log: {kinds:?}");
    }
    for e in events.iter().filter(|e| {
        e["kind"].as_str().is_some_and(|k| k.starts_with("operator.") || k == "run.created")
    }) {
        assert!(e["user"].as_str().is_some_and(|u| !u.is_empty()), "{e}");
        assert!(e["host"].as_str().is_some_and(|h| !h.is_empty()), "{e}");
        assert!(e["wall"].as_str().is_some_and(|w| w.starts_with("20")), "{e}");
    }
    let text = stdout(&env.rewind(&["log", &id]));
    assert!(text.contains("operator.resume") && text.contains(" by "), "{text}");
}

#[test]
fn waves_halt_then_resume_after_the_fix_sqlite() {
    waves_halt_then_resume_after_the_fix(&Env::sqlite());
}

#[test]
fn waves_halt_then_resume_after_the_fix_postgres() {
    let Some(env) = Env::postgres("waves_halt_then_resume_after_the_fix_postgres") else { return };
    waves_halt_then_resume_after_the_fix(&env);
}

#[test]
fn a_halted_run_can_continue_past_accepted_failures() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(4));
    let w = workflow(&env, "", false);
    let t = targets(&env, "t.csv", &["fail", "ok", "ok", "ok"]);
    let o = rewind(&env, &cat, &run(&w, &t, &["--waves", "1,100%"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let id = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert_eq!(env.status(&id)["state"], "halted");
    let o = env.cmd(&["resume", &id, "--accept-failures"]).env("CATALOG", &cat).output();
    let o = o.unwrap();
    assert_eq!(o.status.code(), Some(1), "the run ends failed: {}", stderr(&o));
    let report = env.report(&id);
    assert_eq!(report["state"], "failed");
    assert_eq!(report["counts"]["failed"], 1, "{report}");
    assert_eq!(report["counts"]["succeeded"], 6, "wave 2 ran: {report}");
    // --accept-failures is for halted runs only.
    let err = refused(&env.rewind(&["resume", &id, "--accept-failures"]));
    assert!(err.contains("--accept-failures continues a halted run"), "{err}");
    // The failed run released its targets; a retry takes them back.
    let o = env.cmd(&["retry", &id]).env("CATALOG", &cat).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "still failing without the fix: {}", stderr(&o));
}

#[test]
fn bad_waves_and_rates_are_refused() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(4));
    let w = workflow(&env, "", false);
    let t = targets(&env, "t.csv", &["ok"; 4]);
    for (args, msg) in [
        (vec!["--waves", "1,2"], "the last wave reaches 2 of the 4 targets"),
        (vec!["--waves", "3,1,100%"], "wave 2 (1) is smaller than an earlier wave (3)"),
        (vec!["--waves", "1,x"], "wave 2 (\"x\") is not a number"),
        (vec!["--waves", "1,100%", "--halt-on-failure-rate", "150%"], "is not a rate between 0%"),
    ] {
        let err = refused(&rewind(&env, &cat, &run(&w, &t, &args)));
        assert!(err.contains(msg), "{args:?}: {err}");
        nothing_written(&env);
    }
}

#[test]
fn cancelling_a_halted_run_ends_it_and_frees_its_targets() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(3));
    let w = workflow(&env, "", false);
    let t = targets(&env, "t.csv", &["fail", "ok", "ok"]);
    let o = rewind(&env, &cat, &run(&w, &t, &["--waves", "1,100%"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let id = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert_eq!(env.status(&id)["state"], "halted");
    let o = env.rewind(&["cancel", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = env.status(&id);
    assert_eq!(s["state"], "cancelled", "{s}");
    let log: Value = serde_json::from_slice(&env.rewind(&["log", &id, "--json"]).stdout).unwrap();
    let cancel = log["events"].as_array().unwrap().iter().find(|e| e["kind"] == "operator.cancel");
    assert!(cancel.is_some_and(|e| e["user"].is_string() && e["host"].is_string()), "{log}");
    // Its targets are free: the same sites run again, fixed this time.
    std::fs::write(env.path("fixed"), "").unwrap();
    let o = rewind(&env, &cat, &run(&w, &t, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The rails workflow with its `[preflight]` `sql` action replaced: connection `catalog` at
/// `url`, the preflight's `sql = <sql_toml>` (a TOML string) and `params`.
fn workflow_with_preflight(env: &Env, url: &str, sql_toml: &str, params: &str) -> String {
    let w = workflow(env, "", true);
    let text = std::fs::read_to_string(&w).unwrap();
    let (head, tail) = text.split_once("[preflight]").unwrap();
    let steps = &tail[tail.find("[[steps]]").unwrap()..];
    let head = head.replace("catalog = \"sqlite://${CATALOG}\"", &format!("catalog = \"{url}\""));
    let pf = format!(
        "[preflight]\nstate = \"deleted\"\naction = {{ kind = \"sql\", connection = \"catalog\", sql = {sql_toml}, params = [{params}] }}\n"
    );
    env.write("rails.toml", &format!("{head}{pf}{steps}"), false).display().to_string()
}

fn count(url: &str, sql: &str) -> i64 {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        n
    })
}

/// Issue 11, why 1: `SELECT …; DELETE FROM …` passed `check` (its first word is SELECT), and
/// `run --dry-run` deleted every row while saying nothing was written. A preflight query is one
/// statement: `check`, `run --dry-run` and `run` refuse it, located, and the table is intact.
#[test]
fn a_preflight_of_two_statements_is_refused_and_deletes_nothing() {
    let env = Env::sqlite();
    let cat = catalog(&env, &deleted_sites(2));
    let sql = "SELECT 'site' AS kind, 'deleted' AS state; DELETE FROM entities";
    let w = workflow_with_preflight(&env, "sqlite://${CATALOG}", &format!("\"{sql}\""), "");
    let text = std::fs::read_to_string(&w).unwrap();
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("DELETE FROM entities").map(|c| (i + 1, c + 1)))
        .unwrap();
    let t = targets(&env, "t.csv", &["ok"; 2]);
    for args in [vec!["check", w.as_str()], run(&w, &t, &["--dry-run"]), run(&w, &t, &[])] {
        let err = refused(&rewind(&env, &cat, &args));
        assert!(
            err.contains(&format!(
                "{w}:{line}:{col}: error[invalid-value]: [preflight] query `{}…`: it holds more than one statement: `DELETE FROM entities` follows",
                &sql[..60]
            )),
            "{args:?}: {err}"
        );
        nothing_written(&env);
        let url = format!("sqlite://{cat}");
        assert_eq!(count(&url, "SELECT COUNT(*) FROM entities"), 2, "{args:?} deleted rows");
    }
}

/// A PostgreSQL catalog (`entities`, a sequence `s`) in a fresh schema; its URL.
fn pg_catalog(schema: &rewind_testkit::PgSchema, rows: &[(String, &str, &str)]) -> String {
    let mut sql = String::from(
        "CREATE TABLE entities (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL); CREATE SEQUENCE s;",
    );
    for (id, kind, state) in rows {
        sql.push_str(&format!("INSERT INTO entities VALUES ('{id}', '{kind}', '{state}');"));
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&schema.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    });
    schema.url.clone()
}

/// Issue 11, why 1 on PostgreSQL: `SELECT … INTO newtable` created a table and `SELECT setval(…)`
/// moved a sequence during `--dry-run`. The preflight runs in a read-only transaction: both are
/// refused (exit 2, naming the `[preflight]`, the query and the database's reason) under
/// `--dry-run` and a real `run`, before any run is created, and nothing is written.
#[test]
fn a_preflight_that_writes_on_postgres_is_refused_and_writes_nothing() {
    let Some(base) = rewind_testkit::postgres_url("a_preflight_that_writes_on_postgres") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(rewind_testkit::PgSchema::create(&base));
    let url = pg_catalog(&schema, &deleted_sites(2));
    let env = Env::sqlite();
    let t = targets(&env, "t.csv", &["ok"; 2]);
    let newtable = format!(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = 'newtable'",
        schema.name
    );
    let moved = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM s";
    let cases = [
        (
            "SELECT kind, state INTO newtable FROM entities",
            "",
            "cannot execute SELECT INTO in a read-only transaction",
        ),
        (
            "SELECT kind, state, setval('s', 100) AS moved FROM entities WHERE id = $1",
            "\"{{target.id}}\"",
            "cannot execute setval() in a read-only transaction",
        ),
    ];
    for (sql, params, reason) in cases {
        let w = workflow_with_preflight(&env, "${CATALOG_URL}", &format!("\"{sql}\""), params);
        let o = env.cmd(&["check", &w]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "one statement passes check: {}", stderr(&o));
        for more in [&["--dry-run"][..], &[]] {
            let o = env.cmd(&run(&w, &t, more)).env("CATALOG_URL", &url).output().unwrap();
            let err = refused(&o);
            assert!(err.contains("rewind: preflight ([preflight], line"), "{more:?}: {err}");
            let shown = if sql.len() > 60 { format!("{}…", &sql[..60]) } else { sql.to_owned() };
            assert!(
                err.contains(&format!("the query `{shown}` tried to write")),
                "{more:?}: {err}"
            );
            assert!(err.contains(reason), "{more:?}: {err}");
            assert!(err.contains("nothing was written"), "{more:?}: {err}");
            nothing_written(&env);
            assert_eq!(count(&url, &newtable), 0, "{more:?}: SELECT INTO created a table");
            assert_eq!(count(&url, moved), 0, "{more:?}: the sequence moved");
        }
    }
    rt.block_on(schema.drop_schema());
}

/// A `[preflight]` query that outlives the preflight's `timeout` is stopped on the server before
/// rewind refuses the run: once rewind has exited, no query of it is running (issue 11, why 5,
/// for the read-only path).
#[test]
fn a_preflight_that_times_out_leaves_no_query_running_on_postgres() {
    let Some(base) = rewind_testkit::postgres_url("a_preflight_that_times_out_leaves_no_query")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(rewind_testkit::PgSchema::create(&base));
    let url = pg_catalog(&schema, &deleted_sites(2));
    let env = Env::sqlite();
    let t = targets(&env, "t.csv", &["ok"; 2]);
    let tag = format!("rewind-test-{}", uuid::Uuid::new_v4());
    let sql = format!(
        "\"SELECT kind, state, pg_sleep(30) AS slept FROM entities WHERE id = $1 /* {tag} */\""
    );
    let w = workflow_with_preflight(&env, "${CATALOG_URL}", &sql, "\"{{target.id}}\"");
    let text = std::fs::read_to_string(&w).unwrap();
    std::fs::write(&w, text.replace("[preflight]\n", "[preflight]\ntimeout = \"1s\"\n")).unwrap();
    let o = env.cmd(&run(&w, &t, &["--dry-run"])).env("CATALOG_URL", &url).output().unwrap();
    let err = refused(&o);
    assert!(err.contains("the preflight took longer than 1s"), "{err}");
    nothing_written(&env);
    let active = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'active' \
         AND pid <> pg_backend_pid() AND position('{tag}' in query) > 0"
    );
    // The question holds the tag too; `position` of a literal in its own text is excluded by pid.
    assert_eq!(count(&base, &active), 0, "the preflight's query still runs after rewind exited");
    rt.block_on(schema.drop_schema());
}
