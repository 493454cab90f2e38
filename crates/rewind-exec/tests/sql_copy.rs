//! The `sql`, `copy`, `compare` and `audit` executors against real databases: SQLite files always,
//! PostgreSQL schemas when `REWIND_TEST_POSTGRES` is set.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rewind_exec::{Attempt, Outcome, Registry, Report, StopHandle, Vars};
use rewind_model::{AttrValue, InstanceKey, RunId, StepId, SubjectKey, Target, Workflow};
use rewind_testkit::{PgSchema, postgres_url};
use serde_json::{Value, json};
use sqlx::Connection;

const SITE_A: &str = "00000000-0000-4000-8000-00000000000a";
const SITE_B: &str = "00000000-0000-4000-8000-00000000000b";
const RP: &str = "2022-04-05T07:33:00Z";

/// A workflow whose connections are `live` and `scratch` (`${LIVE}`, `${SCRATCH}`), plus `steps`.
fn workflow(steps: &str) -> Workflow {
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n[connections]\nlive = \"${{LIVE}}\"\nscratch = \"${{SCRATCH}}\"\n{steps}"
    );
    Workflow::parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"))
}

fn attempt(wf: &Workflow, step: usize, site: &str, live: &str, scratch: &str) -> Attempt {
    let mut attrs = BTreeMap::new();
    attrs.insert("hostile".parse().unwrap(), AttrValue::One("x'); DROP TABLE issues; --".into()));
    Attempt {
        run_id: RunId::from_uuid(uuid::Uuid::new_v4()),
        restore_point: RP.parse().unwrap(),
        key: InstanceKey {
            step: wf.steps[step].id.clone(),
            subject: SubjectKey::Target(site.parse().unwrap()),
        },
        attempt: 1,
        idempotency_key: "k".into(),
        target: Some(Target { id: site.parse().unwrap(), kind: "site".into(), attrs, line: 2 }),
        group_value: None,
        needs: BTreeMap::new(),
        workdir: ".".into(),
        cwd: ".".into(),
        timeout: Duration::from_secs(30),
        action: Arc::new(wf.steps[step].action.clone()),
        connections: Arc::new(wf.connections.clone()),
        vars: Arc::new(Vars::default().with("LIVE", live).with("SCRATCH", scratch)),
        resolvers: rewind_exec::Resolvers::default(),
    }
}

async fn run(registry: &Registry, a: Attempt) -> Report {
    let (_h, stop) = StopHandle::new();
    registry.run(a, stop).await
}

const COPY: &str = r#"
[[steps]]
id = "tracker.copy"
estimate = "1m"
action = { kind = "copy", from = "scratch", to = "live", tables = ["projects", "issues"], tenant_column = "site_id", tenant = "{{target.id}}", source_restore_point = "SELECT value FROM rewind_meta WHERE key = 'restore_point'" }

[[steps]]
id = "tracker.compare"
estimate = "1m"
action = { kind = "compare", from = "scratch", to = "live", tables = ["projects", "issues"], tenant_column = "site_id", tenant = "{{target.id}}" }
"#;

/// `projects(id, site_id, key)`, `issues(id, site_id, title, number)`; the scratch also has
/// `rewind_meta`.
const SCHEMA: &[&str] = &[
    "CREATE TABLE projects (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, key TEXT NOT NULL)",
    "CREATE TABLE issues (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, title TEXT NOT NULL, number BIGINT NOT NULL)",
    "CREATE TABLE rewind_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

/// Live: site A has an old state (one project, one issue, one extra issue it did not have at the
/// restore point); site B has its own rows. Scratch: site A at the restore point (two issues)
/// and B's rows as they were (which a copy of A must not touch).
fn fixture(scratch_point: &str) -> Vec<(bool, String)> {
    let mut s: Vec<(bool, String)> = Vec::new();
    for live in [true, false] {
        for stmt in SCHEMA {
            s.push((live, (*stmt).to_owned()));
        }
    }
    let a = SITE_A;
    let b = SITE_B;
    s.extend([
        (true, format!("INSERT INTO projects VALUES ('p1', '{a}', 'OLD')")),
        (true, format!("INSERT INTO issues VALUES ('i1', '{a}', 'live title', 1)")),
        (
            true,
            format!(
                "INSERT INTO issues VALUES ('i9', '{a}', 'written after the restore point', 9)"
            ),
        ),
        (true, format!("INSERT INTO projects VALUES ('p2', '{b}', 'B')")),
        (true, format!("INSERT INTO issues VALUES ('i2', '{b}', 'b live', 2)")),
        (false, format!("INSERT INTO projects VALUES ('p1', '{a}', 'ABC')")),
        (false, format!("INSERT INTO issues VALUES ('i1', '{a}', 'it''s at T', 1)")),
        (false, format!("INSERT INTO issues VALUES ('i3', '{a}', 'second', 3)")),
        (false, format!("INSERT INTO issues VALUES ('i2', '{b}', 'b at T', 2)")),
        (false, format!("INSERT INTO rewind_meta VALUES ('restore_point', '{scratch_point}')")),
    ]);
    s
}

async fn rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let got = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(&mut c).await.unwrap();
    use sqlx::Row;
    got.iter().map(|r| (0..r.len()).map(|i| r.try_get::<String, _>(i).unwrap()).collect()).collect()
}

async fn exec(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
}

async fn copy_then_compare(live: &str, scratch: &str) {
    let wf = workflow(COPY);
    let reg = Registry::builtin();
    let copy = attempt(&wf, 0, SITE_A, live, scratch);
    let r = run(&reg, copy.clone()).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!(
        out["tables"],
        json!({"projects": {"rows": 1, "deleted": 1}, "issues": {"rows": 2, "deleted": 2}})
    );
    assert_eq!((out["rows"].as_u64(), out["restore_point"].as_str()), (Some(3), Some(RP)));
    let site_a = format!("SELECT id, title FROM issues WHERE site_id = '{SITE_A}' ORDER BY id");
    let expect = vec![
        vec!["i1".to_owned(), "it's at T".to_owned()],
        vec!["i3".to_owned(), "second".to_owned()],
    ];
    assert_eq!(rows(live, &site_a).await, expect, "the slice is the scratch's, the later row gone");
    let site_b = format!("SELECT id, title FROM issues WHERE site_id = '{SITE_B}'");
    assert_eq!(rows(live, &site_b).await, [["i2", "b live"]], "another tenant is untouched");
    // Idempotent: a second run (a retry, a resume) leaves the same rows.
    assert_eq!(run(&reg, copy).await.outcome, Outcome::Succeeded);
    assert_eq!(rows(live, &site_a).await, expect);

    let r = run(&reg, attempt(&wf, 1, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["matching"], true);
    assert_eq!(r.output.as_ref().unwrap()["tables"]["issues"]["rows"], 2);
    // One changed cell in the live slice is caught, naming the table.
    exec(live, &format!("UPDATE issues SET number = 4 WHERE id = 'i3' AND site_id = '{SITE_A}'"))
        .await;
    let r = run(&reg, attempt(&wf, 1, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    let e = r.error.unwrap();
    assert!(e.starts_with("the restored slice differs: issues: 2 rows (digest "), "{e}");
    assert!(!e.contains("projects"), "{e}");
}

async fn a_source_at_another_point_is_never_copied(live: &str, scratch: &str) {
    let wf = workflow(COPY);
    let before = rows(live, "SELECT id FROM issues ORDER BY id").await;
    let r = run(&Registry::builtin(), attempt(&wf, 0, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert_eq!(
        r.error.unwrap(),
        "restore point mismatch: the source reached \"2022-04-05T07:28:00Z\", but the run is pinned to 2022-04-05T07:33:00Z; nothing was copied"
    );
    assert_eq!(rows(live, "SELECT id FROM issues ORDER BY id").await, before);
}

async fn setup(live: &str, scratch: &str, point: &str) {
    for (is_live, sql) in fixture(point) {
        exec(if is_live { live } else { scratch }, &sql).await;
    }
}

fn sqlite_pair(dir: &std::path::Path) -> (String, String) {
    for f in ["live.sqlite", "scratch.sqlite"] {
        std::fs::File::create(dir.join(f)).unwrap();
    }
    (
        format!("sqlite://{}/live.sqlite", dir.display()),
        format!("sqlite://{}/scratch.sqlite", dir.display()),
    )
}

#[tokio::test]
async fn sqlite_copy_is_tenant_scoped_idempotent_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (live, scratch) = sqlite_pair(dir.path());
    setup(&live, &scratch, RP).await;
    copy_then_compare(&live, &scratch).await;
}

#[tokio::test]
async fn sqlite_copy_refuses_a_source_at_another_point() {
    let dir = tempfile::tempdir().unwrap();
    let (live, scratch) = sqlite_pair(dir.path());
    setup(&live, &scratch, "2022-04-05T07:28:00Z").await;
    a_source_at_another_point_is_never_copied(&live, &scratch).await;
}

#[tokio::test]
async fn sqlite_copy_refuses_different_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (live, scratch) = sqlite_pair(dir.path());
    setup(&live, &scratch, RP).await;
    exec(&scratch, "ALTER TABLE issues ADD COLUMN extra TEXT").await;
    let r = run(&Registry::builtin(), attempt(&workflow(COPY), 0, SITE_A, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    let error = r.error.unwrap();
    assert!(error.contains("column `issues`.`extra` is missing in the destination"), "{error}");
}

#[tokio::test]
async fn postgres_copy_streams_with_copy_and_is_tenant_scoped() {
    let Some(base) = postgres_url("postgres_copy_streams_with_copy_and_is_tenant_scoped") else {
        return;
    };
    let (live, scratch) = (PgSchema::create(&base).await, PgSchema::create(&base).await);
    setup(&live.url, &scratch.url, RP).await;
    copy_then_compare(&live.url, &scratch.url).await;
    live.drop_schema().await;
    scratch.drop_schema().await;
    let (live, scratch) = (PgSchema::create(&base).await, PgSchema::create(&base).await);
    setup(&live.url, &scratch.url, "2022-04-05T07:28:00Z").await;
    a_source_at_another_point_is_never_copied(&live.url, &scratch.url).await;
    live.drop_schema().await;
    scratch.drop_schema().await;
}

const SQL: &str = r#"
[[steps]]
id = "catalog.note"
estimate = "1m"
action = { kind = "sql", connection = "live", statements = [
  { sql = "INSERT INTO projects (id, site_id, key) VALUES ($1, $2, $3)", params = ["{{target.attr.hostile}}", "{{target.id}}", "k"] },
  { sql = "UPDATE projects SET key = $1 WHERE site_id = $2", params = ["K2", "{{target.id}}"] },
  { sql = "SELECT COUNT(*) AS projects, MAX(id) AS newest FROM projects WHERE site_id = $1", params = ["{{target.id}}"] },
] }
"#;

#[tokio::test]
async fn sql_binds_values_and_reports_rows_and_the_final_row() {
    let dir = tempfile::tempdir().unwrap();
    let (live, scratch) = sqlite_pair(dir.path());
    setup(&live, &scratch, RP).await;
    let r = run(&Registry::builtin(), attempt(&workflow(SQL), 0, SITE_B, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!(out["rows_affected"], 1 + 2, "one insert, two updated");
    assert_eq!(out["projects"], 2);
    assert_eq!(out["newest"], "x'); DROP TABLE issues; --", "a hostile value is data");
    assert_eq!(
        rows(&live, "SELECT id FROM issues").await.len(),
        3,
        "issues still exists, untouched"
    );
    // A failing statement rolls the transaction back; a constraint fails the same way every
    // time: not retried.
    let r = run(&Registry::builtin(), attempt(&workflow(SQL), 0, SITE_B, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    let e = r.error.unwrap();
    assert!(e.contains("UNIQUE constraint failed") && e.contains("[SQLite 1555]"), "{e}");
    let keys =
        rows(&live, &format!("SELECT key FROM projects WHERE site_id = '{SITE_B}' ORDER BY key"))
            .await;
    assert_eq!(keys, [["K2"], ["K2"]], "the first run's state, not half of the second");
}

#[tokio::test]
async fn unset_environment_and_unknown_connections_fail_permanently() {
    let wf = workflow(SQL);
    let mut a = attempt(&wf, 0, SITE_A, "x", "y");
    a.vars = Arc::new(Vars::default());
    let r = run(&Registry::builtin(), a).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert_eq!(r.error.unwrap(), "connection `live`: environment variable `LIVE` is not set");
}

const AUDIT: &str = r#"
[[steps]]
id = "catalog.copy"
estimate = "1m"
action = { kind = "command", program = "true" }

[[steps]]
id = "tracker.copy"
estimate = "1m"
action = { kind = "command", program = "true" }

[[steps]]
id = "wiki.copy"
estimate = "1m"
action = { kind = "command", program = "true" }

[[steps]]
id = "audit"
needs = ["catalog.copy", "tracker.copy", "wiki.copy"]
estimate = "1m"
action = { kind = "audit", require = ["catalog.copy", "wiki.copy"] }
"#;

fn audit(needs: &[(&str, Option<Value>)]) -> Report {
    let wf = workflow(AUDIT);
    let mut a = attempt(&wf, 3, SITE_A, "x", "y");
    for (step, out) in needs {
        a.needs.insert(StepId::new(step).unwrap(), out.clone().map(Arc::new));
    }
    futures::executor::block_on(run(&Registry::builtin(), a))
}

#[test]
fn the_audit_requires_one_restore_point_for_every_store() {
    let at = |rp: &str| Some(json!({ "restore_point": rp, "rows": 3 }));
    let ok = audit(&[
        ("catalog.copy", at(RP)),
        ("tracker.copy", at("2022-04-05T07:33:00.000Z")),
        ("wiki.copy", None),
    ]);
    assert_eq!(ok.outcome, Outcome::Succeeded, "{ok:?}");
    assert_eq!(ok.output.unwrap()["checked"], 2, "wiki was skipped by its `when`");
    let early = audit(&[
        ("catalog.copy", at(RP)),
        ("tracker.copy", at("2022-04-05T07:28:00Z")),
        ("wiki.copy", at(RP)),
    ]);
    assert_eq!(early.outcome, Outcome::Failed { retryable: false });
    assert_eq!(
        early.error.unwrap(),
        "restore points differ: the run is pinned to 2022-04-05T07:33:00Z, but `tracker.copy` reached \"2022-04-05T07:28:00Z\""
    );
    let silent = audit(&[
        ("catalog.copy", Some(json!({"rows": 3}))),
        ("tracker.copy", at(RP)),
        ("wiki.copy", at(RP)),
    ]);
    assert!(silent.error.unwrap().ends_with("`catalog.copy` reported no restore point"));
}

/// Issue 11, why 6: column names read from the catalogs were spliced into SQL inside `"` without
/// doubling an embedded `"`. A column named `we"ird` and one with a space copy and compare.
const ODD: &str = r#"
[[steps]]
id = "odd.copy"
estimate = "1m"
action = { kind = "copy", from = "scratch", to = "live", tables = ["odd"], tenant_column = "site_id", tenant = "{{target.id}}" }

[[steps]]
id = "odd.compare"
estimate = "1m"
action = { kind = "compare", from = "scratch", to = "live", tables = ["odd"], tenant_column = "site_id", tenant = "{{target.id}}" }
"#;

async fn odd_column_names_copy_and_compare(live: &str, scratch: &str) {
    let create = r#"CREATE TABLE odd (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, "we""ird" TEXT, "has space" TEXT)"#;
    exec(live, create).await;
    exec(scratch, create).await;
    exec(live, &format!("INSERT INTO odd VALUES ('o1', '{SITE_A}', 'old', 'old')")).await;
    exec(live, &format!("INSERT INTO odd VALUES ('o2', '{SITE_B}', 'b', 'b')")).await;
    for (id, site, weird, space) in
        [("o1", SITE_A, "a\"1", "a 1"), ("o3", SITE_A, "a\"3", "a 3"), ("o2", SITE_B, "B", "B")]
    {
        exec(scratch, &format!("INSERT INTO odd VALUES ('{id}', '{site}', '{weird}', '{space}')"))
            .await;
    }
    let wf = workflow(ODD);
    let reg = Registry::builtin();
    let r = run(&reg, attempt(&wf, 0, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.unwrap()["tables"], json!({"odd": {"rows": 2, "deleted": 1}}));
    let got =
        rows(live, r#"SELECT id, site_id, "we""ird", "has space" FROM odd ORDER BY id"#).await;
    assert_eq!(
        got,
        [["o1", SITE_A, "a\"1", "a 1"], ["o2", SITE_B, "b", "b"], ["o3", SITE_A, "a\"3", "a 3"],],
        "site A's rows are the scratch's; site B's untouched"
    );
    let r = run(&reg, attempt(&wf, 1, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["tables"]["odd"]["rows"], 2);
    // A change in the odd column is seen.
    exec(live, r#"UPDATE odd SET "we""ird" = 'changed' WHERE id = 'o3'"#).await;
    let r = run(&reg, attempt(&wf, 1, SITE_A, live, scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    assert!(r.error.unwrap().starts_with("the restored slice differs: odd: 2 rows"));
}

#[tokio::test]
async fn sqlite_copy_and_compare_quote_odd_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let (live, scratch) = sqlite_pair(dir.path());
    odd_column_names_copy_and_compare(&live, &scratch).await;
}

#[tokio::test]
async fn postgres_copy_and_compare_quote_odd_column_names() {
    let Some(base) = postgres_url("postgres_copy_and_compare_quote_odd_column_names") else {
        return;
    };
    let (live, scratch) = (PgSchema::create(&base).await, PgSchema::create(&base).await);
    odd_column_names_copy_and_compare(&live.url, &scratch.url).await;
    live.drop_schema().await;
    scratch.drop_schema().await;
}

/// Active statements on the server whose text holds `tag` (other than this question's own).
async fn active_with(base: &str, tag: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(base).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE state = 'active' AND pid <> pg_backend_pid() AND position($1 in query) > 0",
    )
    .bind(tag)
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

/// Issue 11, why 5: a `sql` step that timed out left its query running on the server after
/// rewind had recorded the timeout (and exited). The statement is cancelled on the server, and
/// has ended, by the time the attempt ends as timed out.
#[tokio::test]
async fn postgres_sql_timeout_cancels_the_statement_on_the_server() {
    let Some(base) = postgres_url("postgres_sql_timeout_cancels_the_statement_on_the_server")
    else {
        return;
    };
    let live = PgSchema::create(&base).await;
    let tag = format!("rewind-test-{}", uuid::Uuid::new_v4());
    let wf = workflow(&format!(
        "[[steps]]\nid = \"slow\"\nestimate = \"1m\"\n\
         action = {{ kind = \"sql\", connection = \"live\", sql = \"SELECT pg_sleep(30) AS slept /* {tag} */\" }}\n"
    ));
    let mut a = attempt(&wf, 0, SITE_A, &live.url, &live.url);
    a.timeout = Duration::from_secs(1);
    let r = run(&Registry::builtin(), a).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: true }, "{r:?}");
    assert_eq!(r.error.as_deref(), Some("timed out after 1s"));
    assert_eq!(active_with(&base, &tag).await, 0, "the timed-out statement still runs");
    live.drop_schema().await;
}

/// A `copy` on PostgreSQL stopped mid-stream (the destination's `COPY … FROM STDIN` running,
/// held by another transaction's uncommitted row with one of the slice's keys): once the attempt
/// has ended as cancelled, no statement of it runs on the server, and nothing of the slice was
/// committed. (A slow trigger would not do: the copy does not fire triggers.)
#[tokio::test]
async fn postgres_copy_stopped_mid_stream_leaves_no_statement_running() {
    let Some(base) = postgres_url("postgres_copy_stopped_mid_stream_leaves_no_statement_running")
    else {
        return;
    };
    let (live, scratch) = (PgSchema::create(&base).await, PgSchema::create(&base).await);
    let table = format!("stream_{}", uuid::Uuid::new_v4().simple());
    let create = format!("CREATE TABLE {table} (id INT PRIMARY KEY, site_id TEXT, pad TEXT)");
    exec(&scratch.url, &create).await;
    exec(
        &scratch.url,
        &format!(
            "INSERT INTO {table} SELECT g, '{SITE_A}', repeat('x', 100) FROM generate_series(1, 2000) g"
        ),
    )
    .await;
    exec(&live.url, &create).await;
    let mut blocker = sqlx::PgConnection::connect(&live.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO {table} VALUES (1000, '{SITE_B}', 'held')"
    )))
    .execute(&mut blocker)
    .await
    .unwrap();
    let wf = workflow(&format!(
        "[[steps]]\nid = \"stream.copy\"\nestimate = \"1m\"\n\
         action = {{ kind = \"copy\", from = \"scratch\", to = \"live\", tables = [\"{table}\"], tenant_column = \"site_id\", tenant = \"{{{{target.id}}}}\" }}\n"
    ));
    let a = attempt(&wf, 0, SITE_A, &live.url, &scratch.url);
    let (handle, stop) = StopHandle::new();
    let task = tokio::spawn(Registry::builtin().run(a, stop));
    let copy_in = format!("COPY \"{table}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while active_with(&base, &copy_in).await == 0 {
        assert!(!task.is_finished(), "the copy ended before it could be stopped");
        assert!(std::time::Instant::now() < deadline, "the copy never started streaming");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    let r = task.await.unwrap();
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:?}");
    assert_eq!(active_with(&base, &table).await, 0, "a statement of the stopped copy still runs");
    sqlx::raw_sql("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    let copied = rows(&live.url, &format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}")).await;
    assert_eq!(copied, [["0"]], "a stopped copy commits nothing");
    live.drop_schema().await;
    scratch.drop_schema().await;
}

/// A `sql` step's `SET` stays in its own session: the next attempt that gets the pooled
/// connection (here the only one the pool has made) sees the server's defaults, not
/// `session_replication_role = replica` (which would switch foreign keys off for it).
#[tokio::test]
async fn a_session_setting_does_not_reach_the_next_attempt() {
    let Some(base) = postgres_url("a_session_setting_does_not_reach_the_next_attempt") else {
        return;
    };
    let live = PgSchema::create(&base).await;
    let wf = workflow(
        r#"
[[steps]]
id = "set"
estimate = "1m"
action = { kind = "sql", connection = "live", statements = [{ sql = "SET session_replication_role = replica" }, { sql = "SET TimeZone = 'Asia/Kolkata'" }, { sql = "SELECT current_setting('session_replication_role') AS role, pg_backend_pid() AS pid" }] }

[[steps]]
id = "read"
estimate = "1m"
action = { kind = "sql", connection = "live", sql = "SELECT current_setting('session_replication_role') AS role, current_setting('TimeZone') AS tz, pg_backend_pid() AS pid" }
"#,
    );
    let registry = Registry::builtin();
    let set = run(&registry, attempt(&wf, 0, SITE_A, &live.url, &live.url)).await;
    assert_eq!(set.outcome, Outcome::Succeeded, "{set:?}");
    let set = set.output.unwrap();
    assert_eq!(set["role"], "replica");
    // The pool hands out idle connections; read until the first session comes back (its
    // reset runs as it returns to the pool).
    let mut read = Value::Null;
    for _ in 0..50 {
        let r = run(&registry, attempt(&wf, 1, SITE_A, &live.url, &live.url)).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        read = r.output.unwrap();
        if read["pid"] == set["pid"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read["pid"], set["pid"], "the same pooled session came back");
    assert_eq!(read["role"], "origin");
    assert_ne!(read["tz"], "Asia/Kolkata");
    live.drop_schema().await;
}
