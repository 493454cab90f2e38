//! Read-only paths (`rewind_exec::readonly`) against real databases: whatever a query says, it
//! writes nothing; a write attempt is a refusal with the database's reason; text that is not one
//! statement is never sent; and a pooled connection is not left read-only for the writers.
//! SQLite files always, PostgreSQL schemas when `REWIND_TEST_POSTGRES` is set.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use rewind_exec::Registry;
use rewind_exec::readonly::{self, ReadOnly, ReadOnlyError};
use rewind_testkit::{PgSchema, postgres_url};
use serde_json::json;
use sqlx::Connection;

async fn exec(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

async fn scalar(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let v: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut c).await.unwrap();
    c.close().await.unwrap();
    v
}

#[track_caller]
fn refused_write(
    r: Result<Vec<serde_json::Map<String, serde_json::Value>>, ReadOnlyError>,
    reason: &str,
) {
    match r {
        Err(e @ ReadOnlyError::Write { .. }) => {
            assert!(e.is_refusal());
            assert!(e.to_string().contains(reason), "{e}");
            assert!(e.to_string().contains("tried to write"), "{e}");
        }
        other => panic!("expected a refused write ({reason}), got {other:?}"),
    }
}

/// What holds on both engines: a query reads; two statements are not sent; the pool's writers
/// still write afterwards.
async fn reads_and_never_sends_two_statements(url: &str) {
    let reg = Registry::builtin();
    let pools = reg.pools();
    let rows = readonly::query(
        pools,
        url,
        "SELECT id, name FROM sites WHERE CAST(id AS TEXT) = $1",
        &["2".into()],
    )
    .await
    .unwrap();
    assert_eq!(rows, [json!({"id": 2, "name": "b"}).as_object().unwrap().clone()]);
    // Several statements in one session.
    let mut s = ReadOnly::begin(pools, url).await.unwrap();
    assert_eq!(s.fetch_all("SELECT COUNT(*) AS n FROM sites", &[]).await.unwrap()[0]["n"], 3);
    assert!(s.fetch_all("SELECT name FROM sites WHERE id = 9;", &[]).await.unwrap().is_empty());
    s.end().await.unwrap();

    let two = "SELECT 'site' AS kind, 'deleted' AS state; DELETE FROM sites";
    match readonly::query(pools, url, two, &[]).await {
        Err(e @ ReadOnlyError::NotOneStatement { .. }) => {
            assert!(e.is_refusal());
            assert!(e.to_string().contains("`DELETE FROM sites` follows"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(scalar(url, "SELECT COUNT(*) FROM sites").await, 3, "nothing was deleted");
    // A failing query is a failure, not a refusal.
    let e = readonly::query(pools, url, "SELECT nope FROM sites", &[]).await.unwrap_err();
    assert!(!e.is_refusal(), "{e}");

    // Writers on the same pools are not left read-only.
    for _ in 0..10 {
        readonly::query(pools, url, "SELECT 1 AS one", &[]).await.unwrap();
    }
    let wf = rewind_model::Workflow::parse(
        "w.toml",
        "name = \"w\"\ntarget_kind = \"site\"\n[connections]\ndb = \"${DB}\"\n[[steps]]\nid = \"s\"\nestimate = \"1m\"\n\
         action = { kind = \"sql\", connection = \"db\", sql = \"UPDATE sites SET name = 'written' WHERE id = 1\" }\n",
    )
    .unwrap();
    let (_h, stop) = rewind_exec::StopHandle::new();
    let a = rewind_exec::Attempt {
        run_id: rewind_model::RunId::NIL,
        restore_point: "2022-04-05T07:33:00Z".parse().unwrap(),
        key: rewind_model::InstanceKey {
            step: wf.steps[0].id.clone(),
            subject: rewind_model::SubjectKey::Run,
        },
        attempt: 1,
        idempotency_key: String::new(),
        target: None,
        group_value: None,
        needs: Default::default(),
        workdir: ".".into(),
        cwd: ".".into(),
        timeout: std::time::Duration::from_secs(30),
        action: std::sync::Arc::new(wf.steps[0].action.clone()),
        connections: std::sync::Arc::new(wf.connections.clone()),
        vars: std::sync::Arc::new(rewind_exec::Vars::default().with("DB", url)),
        resolvers: Default::default(),
    };
    let r = reg.run(a, stop).await;
    assert_eq!(r.outcome, rewind_exec::Outcome::Succeeded, "{r:?}");
    assert_eq!(scalar(url, "SELECT COUNT(*) FROM sites WHERE name = 'written'").await, 1);
}

const SITES: &str = "CREATE TABLE sites (id BIGINT PRIMARY KEY, name TEXT NOT NULL); \
                     INSERT INTO sites VALUES (1, 'a'), (2, 'b'), (3, 'c')";

#[tokio::test]
async fn sqlite_read_only_sessions_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    exec(&url, SITES).await;
    exec(&url, "PRAGMA journal_mode = WAL").await;
    let pools = Registry::builtin().pools().clone();
    for write in [
        "DELETE FROM sites",
        "UPDATE sites SET name = 'x'",
        "INSERT INTO sites VALUES (4, 'd')",
        "CREATE TABLE newtable (x)",
        "DROP TABLE sites",
    ] {
        refused_write(
            readonly::query(&pools, &url, write, &[]).await,
            "attempt to write a readonly database",
        );
    }
    // Even a URL that asks to create the file opens it read-only.
    refused_write(
        readonly::query(&pools, &url, "DELETE FROM sites", &[]).await,
        "attempt to write a readonly database",
    );
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM sites").await, 3);
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'newtable'").await, 0);
    reads_and_never_sends_two_statements(&url).await;
}

#[tokio::test]
async fn postgres_read_only_sessions_cannot_write() {
    let Some(base) = postgres_url("postgres_read_only_sessions_cannot_write") else { return };
    let schema = PgSchema::create(&base).await;
    let url = schema.url.clone();
    exec(&url, SITES).await;
    exec(
        &url,
        "CREATE SEQUENCE s; \
         CREATE FUNCTION bump() RETURNS bigint LANGUAGE sql VOLATILE AS \
           'INSERT INTO sites VALUES (99, ''bumped'') RETURNING id'",
    )
    .await;
    let pools = Registry::builtin().pools().clone();
    for (write, reason) in [
        (
            "SELECT id, name INTO newtable FROM sites",
            "cannot execute SELECT INTO in a read-only transaction",
        ),
        ("SELECT setval('s', 100)", "cannot execute setval() in a read-only transaction"),
        ("SELECT nextval('s')", "cannot execute nextval() in a read-only transaction"),
        (
            "WITH d AS (DELETE FROM sites RETURNING id) SELECT COUNT(*) AS n FROM d",
            "cannot execute SELECT in a read-only transaction",
        ),
        ("SELECT bump() AS id", "cannot execute INSERT in a read-only transaction"),
        ("DELETE FROM sites", "cannot execute DELETE in a read-only transaction"),
    ] {
        refused_write(readonly::query(&pools, &url, write, &[]).await, reason);
    }
    assert_eq!(scalar(&url, "SELECT COUNT(*) FROM sites").await, 3);
    let table = format!(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = 'newtable'",
        schema.name
    );
    assert_eq!(scalar(&url, &table).await, 0, "SELECT INTO created no table");
    assert_eq!(
        scalar(&url, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM s").await,
        0,
        "the sequence did not move"
    );
    reads_and_never_sends_two_statements(&url).await;
    schema.drop_schema().await;
}
