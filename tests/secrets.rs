//! Secrets and URL templates through the real binary (README "Safety rails": secrets, URL
//! templates, `program`): passwords never printed or stored, connect errors that keep their
//! cause, and template values that cannot change the shape of a connection URL.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::net::TcpListener;

use serde_json::Value;
use support::*;

/// A password with an `@`: drivers split the userinfo at the last `@`.
const PW: &str = "s3cr@tPW";

/// A port on 127.0.0.1 that nothing listens on (bound, noted, released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Asserts that no part of [`PW`] is in `text`.
#[track_caller]
fn no_password(what: &str, text: &str) {
    for part in ["s3cr", "tPW", PW] {
        assert!(!text.contains(part), "{what} shows part of the password ({part}):\n{text}");
    }
}

fn targets_jsonl(env: &Env, attrs: Value) -> String {
    let mut t = serde_json::json!({ "id": site(1), "kind": "site" });
    if let (Some(t), Some(a)) = (t.as_object_mut(), attrs.as_object()) {
        t.extend(a.clone());
    }
    env.write("targets.jsonl", &format!("{t}\n"), false).display().to_string()
}

/// `rewind run` of `workflow` over the one target; the run id and its exit code.
fn run(env: &Env, workflow: &str, targets: &str, more: &[(&str, &str)]) -> (String, i32) {
    let mut c =
        env.cmd(&["run", "--workflow", workflow, "--targets", targets, "--restore-point", RP]);
    for (k, v) in more {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let out = stdout(&o);
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("run "), "{out}{}", stderr(&o));
    (first[4..].to_owned(), o.status.code().unwrap_or(-1))
}

/// The error of each failed instance, by step.
fn errors(env: &Env, run: &str) -> std::collections::BTreeMap<String, (u64, String)> {
    let status = env.status(run);
    status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let key = f["key"].as_str().unwrap();
            let step = key.split('/').next().unwrap().to_owned();
            (step, (f["attempts"].as_u64().unwrap(), f["error"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// Connect errors keep their cause, and no part of a password

#[test]
fn a_refused_checkpoint_store_says_refused_and_hides_the_password() {
    let env = Env::sqlite();
    let url = format!("postgres://rewind:{PW}@127.0.0.1:{}/rewind", closed_port());
    let o = env.rewind(&["status", "--db", &url]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "the cause is kept: {err}");
    assert!(err.contains("postgres://rewind:***@127.0.0.1:"), "{err}");
    no_password("the refusal", &err);
}

/// A `sql` step on a server that refuses: the attempt's error, as `status`, `report` and `log`
/// show it from the checkpoint store, says so and holds no part of the password.
fn a_refused_step_connection_says_refused(env: &Env) {
    let port = closed_port();
    let wf = env.write(
        "refused.toml",
        &format!(
            r#"name = "refused"
target_kind = "site"

[defaults]
retries = 0

[connections]
tracker = "postgres://rewind:${{TRACKER_PASSWORD}}@127.0.0.1:{port}/tracker"

[[steps]]
id = "tracker.undelete"
estimate = "1m"
action = {{ kind = "sql", connection = "tracker", sql = "UPDATE sites SET deleted = false WHERE id = $1", params = ["{{{{target.id}}}}"] }}
"#
        ),
        false,
    );
    let targets = targets_jsonl(env, serde_json::json!({}));
    let (run_id, code) = run(env, wf.to_str().unwrap(), &targets, &[("TRACKER_PASSWORD", PW)]);
    assert_eq!(code, 1);
    let errs = errors(env, &run_id);
    let (_, e) = &errs["tracker.undelete"];
    assert!(e.to_lowercase().contains("connection refused"), "{e}");
    assert!(e.contains(&format!("postgres://rewind:***@127.0.0.1:{port}/tracker")), "{e}");
    for cmd in
        [vec!["status", &run_id], vec!["log", &run_id], vec!["report", &run_id, "--format", "md"]]
    {
        let o = env.rewind(&cmd);
        no_password(&cmd.join(" "), &format!("{}{}", stdout(&o), stderr(&o)));
    }
}

#[test]
fn a_refused_step_connection_says_refused_sqlite() {
    a_refused_step_connection_says_refused(&Env::sqlite());
}

#[test]
fn a_refused_step_connection_says_refused_postgres() {
    if let Some(env) = Env::postgres("refused_step_connection") {
        a_refused_step_connection_says_refused(&env);
    }
}

#[test]
fn a_dry_run_prints_no_password() {
    let env = Env::sqlite();
    let wf = env.write(
        "dry.toml",
        r#"name = "dry"
target_kind = "site"

[connections]
tracker = "postgres://rewind:${TRACKER_PASSWORD}@db.internal/tracker?application_name=rewind"

[[steps]]
id = "tracker.undelete"
estimate = "1m"
action = { kind = "sql", connection = "tracker", sql = "SELECT $1", params = ["{{target.id}}"] }

[[steps]]
id = "notify"
estimate = "1m"
action = { kind = "command", program = "notify", args = ["postgres://rewind:${TRACKER_PASSWORD}@db.internal/tracker", "${TRACKER_PASSWORD}", "--password=${TRACKER_PASSWORD}", "{\"token\": \"${TRACKER_PASSWORD}\"}"], env = { PGPASSWORD = "${TRACKER_PASSWORD}", API_TOKEN = "${TRACKER_PASSWORD}" } }
"#,
        false,
    );
    let targets = targets_jsonl(&env, serde_json::json!({}));
    let o = env
        .cmd(&[
            "run",
            "--workflow",
            wf.to_str().unwrap(),
            "--targets",
            &targets,
            "--restore-point",
            RP,
            "--dry-run",
        ])
        .env("TRACKER_PASSWORD", PW)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("sql      tracker  postgres://rewind:***@db.internal/tracker"), "{out}");
    assert!(out.contains("env PGPASSWORD=***\n") && out.contains("env API_TOKEN=***\n"), "{out}");
    assert!(out.contains("--password=***"), "{out}");
    no_password("the dry run", &out);
}

#[test]
fn check_refuses_a_literal_password_naming_the_connection() {
    let env = Env::sqlite();
    env.write(
        "literal.toml",
        &format!(
            "name = \"literal\"\ntarget_kind = \"site\"\n\n[connections]\ntracker = \"postgres://rewind:{PW}@db/tracker\"\n\n[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = {{ kind = \"sql\", connection = \"tracker\", sql = \"SELECT 1\" }}\n"
        ),
        false,
    );
    let o = env.rewind(&["check", "literal.toml"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("literal.toml:5:11: error[literal-secret]: connection `tracker`: the URL holds a literal password; write it as ${VAR}"),
        "{err}"
    );
    no_password("check", &err);
}

#[test]
fn check_refuses_a_program_named_by_a_target() {
    let env = Env::sqlite();
    env.write(
        "program.toml",
        "name = \"program\"\ntarget_kind = \"site\"\n\n[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = { kind = \"command\", program = \"{{target.attr.tool}}\" }\n",
        false,
    );
    let o = env.rewind(&["check", "program.toml"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("program.toml:7:"), "located: {err}");
    assert!(
        err.contains("step `a`: `program` must not be built from `{{target.attr.tool}}`: the program comes from the workflow, never from targets or outputs; pass values as `args`"),
        "{err}"
    );
}

// -------------------------------------------------------------------------------------------
// Template values cannot change the shape of a URL

/// `postgres://USER@HOST:PORT/DB` of `REWIND_TEST_POSTGRES`, as (scheme+user, host:port, db).
fn pg_parts() -> Option<(String, String, String)> {
    let url = std::env::var("REWIND_TEST_POSTGRES").ok().filter(|u| !u.is_empty())?;
    let (head, db) = url.rsplit_once('/')?;
    let (userinfo, hostport) = head.rsplit_once('@')?;
    let db = db.split('?').next()?.to_owned();
    Some((userinfo.to_owned(), hostport.to_owned(), db))
}

#[test]
fn target_values_cannot_reshape_a_postgres_url() {
    let Some((userinfo, hostport, db)) = pg_parts() else {
        eprintln!("note: REWIND_TEST_POSTGRES is not set; skipping");
        return;
    };
    let env = Env::sqlite();
    let closed = closed_port();
    let query = r#"{ kind = "sql", connection = "CONN", sql = "SELECT current_user::text AS who, current_setting('search_path') AS search_path, current_database()::text AS db" }"#;
    let step = |id: &str, conn: &str| {
        format!(
            "[[steps]]\nid = \"{id}\"\nestimate = \"1m\"\naction = {}\n\n",
            query.replace("CONN", conn)
        )
    };
    let wf = env.write(
        "shape.toml",
        &format!(
            r#"name = "shape"
target_kind = "site"

[defaults]
retries = 2
backoff = {{ initial = "10ms", max = "10ms", factor = 1.0, jitter = false }}

[connections]
by_db = "{userinfo}@{hostport}/{{{{target.attr.db}}}}"
by_host = "{userinfo}@{{{{target.attr.host}}}}/{db}"
by_user = "postgres://{{{{target.attr.user}}}}@{hostport}/{db}"
by_user_closed = "postgres://{{{{target.attr.user2}}}}@127.0.0.1:{closed}/{db}"

{}{}{}{}"#,
            step("by-db", "by_db"),
            step("by-host", "by_host"),
            step("by-user", "by_user"),
            step("by-user-closed", "by_user_closed"),
        ),
        false,
    );
    let user = userinfo.trim_start_matches("postgres://").trim_start_matches("postgresql://");
    let targets = targets_jsonl(
        &env,
        serde_json::json!({
            // Before: database `DB`, search_path `evil`.
            "db": format!("{db}?options=-csearch_path%3Devil"),
            // Before: database `other` on that server.
            "host": format!("{hostport}/other?x="),
            // Before: user `evil@127.0.0.1` with password `5432`.
            "user": "evil@127.0.0.1:5432",
            // Before: the real server as the real user, whatever port the workflow names.
            "user2": format!("{user}@{hostport}/{db}?x="),
        }),
    );
    let (run_id, code) = run(&env, wf.to_str().unwrap(), &targets, &[]);
    let errs = errors(&env, &run_id);
    assert_eq!(errs.len(), 4, "every step fails: {errs:?}\n{:#}", env.status(&run_id));
    assert_eq!(code, 1);

    // The database name is the whole value: no such database, search_path untouched.
    let (_, e) = &errs["by-db"];
    assert!(
        e.contains(&format!("database \"{db}?options=-csearch_path%3Devil\" does not exist")),
        "{e}"
    );
    // A host that is not a host name is refused, for good (no retry), naming the value.
    let (attempts, e) = &errs["by-host"];
    assert_eq!(*attempts, 1, "a refusal is permanent: {e}");
    assert!(
        e.contains(&format!(
            "connection `by_host`: `{{{{target.attr.host}}}}` = \"{hostport}/other?x=\" cannot be the host of this URL"
        )),
        "{e}"
    );
    // The user is the whole value; the host is the workflow's.
    let (_, e) = &errs["by-user"];
    assert!(e.contains("role \"evil@127.0.0.1:5432\" does not exist"), "{e}");
    let (_, e) = &errs["by-user-closed"];
    assert!(e.to_lowercase().contains("connection refused"), "port {closed} was used: {e}");
}

#[test]
fn an_output_cannot_turn_a_sqlite_path_into_options() {
    let env = Env::sqlite();
    let pwn = env.path("pwn");
    env.write(
        "emit.sh",
        &format!("#!/bin/sh\nprintf '{{\"url\":\"%s\"}}\\n' '{}?mode=rwc'\n", pwn.display()),
        true,
    );
    let wf = env.write(
        "emit.toml",
        r#"name = "emit"
target_kind = "site"

[defaults]
retries = 0

[connections]
emitted = "sqlite://{{needs.b.emit.url}}"

[[steps]]
id = "b.emit"
estimate = "1m"
action = { kind = "command", program = "./emit.sh" }

[[steps]]
id = "write"
needs = ["b.emit"]
estimate = "1m"
action = { kind = "sql", connection = "emitted", sql = "CREATE TABLE pwned (x INTEGER)" }
"#,
        false,
    );
    let targets = targets_jsonl(&env, serde_json::json!({}));
    let (run_id, code) = run(&env, wf.to_str().unwrap(), &targets, &[]);
    assert!(!pwn.exists(), "the output's `?mode=rwc` created {}", pwn.display());
    assert!(!env.path("pwn?mode=rwc").exists());
    let errs = errors(&env, &run_id);
    assert!(errs["write"].1.contains("unable to open database file"), "{errs:?}");
    assert_eq!(code, 1);
}
