//! `sql` steps and preflights on PostgreSQL (a schema per test) and MariaDB (a database per
//! test): typed outputs, typed parameters, errors that quote the database, MySQL cancellation on
//! timeout and MySQL read-only sessions. Skipped (with a note) when `REWIND_TEST_POSTGRES` /
//! `REWIND_TEST_MARIADB` are unset.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rewind_exec::readonly::{self, ReadOnlyError};
use rewind_exec::{Attempt, Outcome, Registry, Report, StopHandle, Vars};
use rewind_model::{AttrValue, InstanceKey, RunId, SubjectKey, Target, Workflow};
use rewind_testkit::{MyDb, PgSchema, mariadb_url, postgres_url};
use serde_json::{Value, json};
use sqlx::Connection;

const SITE: &str = "00000000-0000-4000-8000-00000000000a";

/// A workflow with connection `db` (`${DB}`) and one step whose action is `action` (TOML keys
/// of a `[steps.action]` table).
fn workflow(action: &str) -> Workflow {
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n[connections]\ndb = \"${{DB}}\"\n\
         [[steps]]\nid = \"s\"\nestimate = \"1m\"\n[steps.action]\nkind = \"sql\"\nconnection = \"db\"\n{action}\n"
    );
    Workflow::parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"))
}

fn attempt(wf: &Workflow, url: &str) -> Attempt {
    let mut attrs = BTreeMap::new();
    attrs.insert("n".parse().unwrap(), AttrValue::One("9007199254740993".into()));
    attrs.insert("bad".parse().unwrap(), AttrValue::One("abc".into()));
    Attempt {
        run_id: RunId::from_uuid(uuid::Uuid::new_v4()),
        restore_point: "2022-04-05T07:33:00Z".parse().unwrap(),
        key: InstanceKey {
            step: wf.steps[0].id.clone(),
            subject: SubjectKey::Target(SITE.parse().unwrap()),
        },
        attempt: 1,
        idempotency_key: "k".into(),
        target: Some(Target { id: SITE.parse().unwrap(), kind: "site".into(), attrs, line: 2 }),
        group_value: None,
        needs: BTreeMap::new(),
        workdir: ".".into(),
        cwd: ".".into(),
        timeout: Duration::from_secs(30),
        action: Arc::new(wf.steps[0].action.clone()),
        connections: Arc::new(wf.connections.clone()),
        vars: Arc::new(Vars::default().with("DB", url)),
        resolvers: rewind_exec::Resolvers::default(),
    }
}

async fn run(url: &str, action: &str) -> Report {
    run_with(url, action, Duration::from_secs(30)).await
}

async fn run_with(url: &str, action: &str, timeout: Duration) -> Report {
    let wf = workflow(action);
    let mut a = attempt(&wf, url);
    a.timeout = timeout;
    let (_h, stop) = StopHandle::new();
    Registry::builtin().run(a, stop).await
}

fn output(r: Report) -> Value {
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    r.output.unwrap()
}

async fn pg_exec(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

async fn my_exec(url: &str, sql: &str) {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

const PG_TYPES: &str = r#"sql = '''
SELECT true AS b, 7::int2 AS i2, 70000::int4 AS i4, 9007199254740993::int8 AS i8,
       1.5::float4 AS f4, 2.25::float8 AS f8, 'NaN'::float8 AS fnan,
       12345678901234567890.123450::numeric AS num, (-0.05)::numeric(6,3) AS neg,
       E'tab\there "q" \\ ü' AS t, 'v'::varchar AS vc, 'ab'::char(3) AS bp, 'nm'::name AS nm,
       '00000000-0000-4000-8000-00000000000A'::uuid AS u,
       '2024-03-01'::date AS d, '13:45:00.5'::time AS tm,
       '2024-03-01 13:45:00.25'::timestamp AS ts, '2024-03-01 13:45:00+01'::timestamptz AS tz,
       '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
       '{"a": [1, null]}'::json AS j, '{"b": true}'::jsonb AS jb, '\xdeadbeef'::bytea AS by,
       ARRAY[1, NULL, 3]::int4[] AS arr, ARRAY[['a', 'b'], ['c', NULL]]::text[] AS arr2,
       ARRAY['2024-03-01 13:45:00+01']::timestamptz[] AS tzarr, ARRAY[1.50]::numeric[] AS narr,
       '{}'::int8[] AS empty,
       '192.168.0.1'::inet AS ip, '10.0.0.0/8'::cidr AS net, '::1'::inet AS ip6,
       '2001:db8::/32'::cidr AS net6, 'happy'::mood AS m, ARRAY['sad']::mood[] AS ms,
       NULL::int4 AS nul
'''"#;

#[tokio::test]
async fn postgres_outputs_become_json_of_their_types() {
    let Some(base) = postgres_url("postgres_outputs_become_json_of_their_types") else { return };
    let s = PgSchema::create(&base).await;
    pg_exec(&s.url, "CREATE TYPE mood AS ENUM ('happy', 'sad')").await;
    let out = output(run(&s.url, PG_TYPES).await);
    let want = json!({
        "b": true, "i2": 7, "i4": 70000, "i8": 9007199254740993_i64, "f4": 1.5, "f8": 2.25,
        "fnan": "NaN", "num": "12345678901234567890.123450", "neg": "-0.050",
        "t": "tab\there \"q\" \\ ü", "vc": "v", "bp": "ab ", "nm": "nm",
        "u": SITE, "d": "2024-03-01", "tm": "13:45:00.500",
        "ts": "2024-03-01T13:45:00.250", "tz": "2024-03-01T12:45:00Z",
        "iv": "1 year 2 mons 3 days 04:05:06.789",
        "j": {"a": [1, null]}, "jb": {"b": true}, "by": "\\xdeadbeef",
        "arr": [1, null, 3], "arr2": [["a", "b"], ["c", null]],
        "tzarr": ["2024-03-01T12:45:00Z"], "narr": ["1.50"], "empty": [],
        "ip": "192.168.0.1", "net": "10.0.0.0/8", "ip6": "::1", "net6": "2001:db8::/32",
        "m": "happy", "ms": ["sad"], "nul": null, "rows_affected": 0
    });
    assert_eq!(out, want);

    // A type rewind does not turn into JSON: permanent, naming the column and its type.
    let r = run(&s.url, "sql = \"SELECT 1 AS one, point(1, 2) AS p\"").await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("column `p` is of type `POINT`") && e.contains("CAST(p AS TEXT)"), "{e}");
    s.drop_schema().await;
}

#[tokio::test]
async fn postgres_parameters_are_bound_with_their_types() {
    let Some(base) = postgres_url("postgres_parameters_are_bound_with_their_types") else { return };
    let s = PgSchema::create(&base).await;
    pg_exec(
        &s.url,
        "CREATE TABLE items (id uuid PRIMARY KEY, n bigint NOT NULL, at timestamptz, doc jsonb, \
         ok bool, m numeric)",
    )
    .await;
    let insert = r#"statements = [
  { sql = "INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6)", params = ["{{target.id}}", "{{target.attr.n}}", "2024-03-01 13:45:00+01", "{\"k\": 1}", "yes", "12.50"] },
  { sql = "SELECT id, n, at, doc, ok, m FROM items WHERE id = $1 AND n = $2", params = ["{{target.id}}", "{{target.attr.n}}"] },
]"#;
    let out = output(run(&s.url, insert).await);
    assert_eq!(
        out,
        json!({"id": SITE, "n": 9007199254740993_i64, "at": "2024-03-01T12:45:00Z",
               "doc": {"k": 1}, "ok": true, "m": "12.50", "rows_affected": 1})
    );

    // A value that is not of its parameter's type: permanent, naming the parameter.
    let r = run(
        &s.url,
        r#"sql = "SELECT n FROM items WHERE n = $1 AND id = $2"
params = ["{{target.attr.n}}", "{{target.attr.bad}}"]"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    assert_eq!(r.error.as_deref(), Some(r#"$2 (= "abc") is not a uuid"#));

    // A database error quotes the database and its SQLSTATE, never a line of its source.
    let r = run(&s.url, "sql = \"SELECT nope FROM items\"").await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("column \"nope\" does not exist") && e.contains("[SQLSTATE 42703]"), "{e}");
    assert!(!e.contains("line"), "{e}");
    let r = run(
        &s.url,
        r#"sql = "INSERT INTO items (id, n) VALUES ($1, 1)"
params = ["{{target.id}}"]"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("[SQLSTATE 23505]") && e.contains("already exists"), "detail: {e}");

    // A preflight binds the same way.
    let rows = readonly::query(
        Registry::builtin().pools(),
        &s.url,
        "SELECT 'site' AS kind, n FROM items WHERE id = $1",
        &[SITE.to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(rows[0]["n"], json!(9007199254740993_i64));
    let e = readonly::query(
        Registry::builtin().pools(),
        &s.url,
        "SELECT n FROM items WHERE id = $1",
        &["abc".to_owned()],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains(r#"$1 (= "abc") is not a uuid"#), "{e}");
    s.drop_schema().await;
}

#[tokio::test]
async fn mysql_sql_steps_run_with_typed_outputs_and_string_parameters() {
    let Some(base) = mariadb_url("mysql_sql_steps_run_with_typed_outputs_and_string_parameters")
    else {
        return;
    };
    let db = MyDb::create(&base).await;
    my_exec(
        &db.url,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, u BIGINT UNSIGNED, ti TINYINT, f FLOAT, d DOUBLE, \
           dec_ DECIMAL(30,10), dt DATE, tm TIME, dtt DATETIME(3), ts TIMESTAMP NULL, y YEAR, \
           j JSON, tx TEXT, vb VARCHAR(10) COLLATE utf8mb4_bin, e ENUM('a','b'), st SET('x','y'), \
           bl BLOB, bn VARBINARY(4), bt BIT(8), nul INT); \
         INSERT INTO t VALUES (9007199254740993, 18446744073709551615, -5, 1.5, 2.25, \
           12345678901234567890.1234567890, '2024-03-01', '-838:59:59', '2024-03-01 13:45:00.250', \
           '2024-03-01 12:45:00', 2024, '{\"a\": [1, null]}', 'tab\\there ü', 'bin', 'b', 'x,y', \
           x'DEADBEEF', x'0001', b'101', NULL)",
    )
    .await;
    let out = output(
        run(
            &db.url,
            r#"statements = [
  { sql = "UPDATE t SET ti = ti + 1 WHERE id = ?", params = ["{{target.attr.n}}"] },
  { sql = "SELECT * FROM t WHERE id = ?", params = ["{{target.attr.n}}"] },
]"#,
        )
        .await,
    );
    assert_eq!(
        out,
        json!({
            "id": 9007199254740993_i64, "u": 18446744073709551615_u64, "ti": -4, "f": 1.5,
            "d": 2.25, "dec_": "12345678901234567890.1234567890", "dt": "2024-03-01",
            "tm": "-838:59:59", "dtt": "2024-03-01T13:45:00.250", "ts": "2024-03-01T12:45:00Z",
            "y": 2024, "j": "{\"a\": [1, null]}", "tx": "tab\there ü", "vb": "bin", "e": "b",
            "st": "x,y", "bl": "\\xdeadbeef", "bn": "\\x0001", "bt": 5, "nul": null,
            "rows_affected": 1
        }),
        "MariaDB's JSON is LONGTEXT: a string"
    );
    // A database error: the server's message and codes.
    let r = run(&db.url, "sql = \"SELECT nope FROM t\"").await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    let e = r.error.unwrap();
    assert!(
        e.contains("Unknown column 'nope'") && e.contains("[MySQL 1054, SQLSTATE 42S22]"),
        "{e}"
    );
    db.drop_database().await;
}

/// Connections whose statement text holds `tag`, other than the asker's.
async fn mysql_running(url: &str, tag: &str) -> i64 {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE ID <> CONNECTION_ID() AND INFO LIKE CONCAT('%', ?, '%')",
    )
    .bind(tag)
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

#[tokio::test]
async fn mysql_sql_timeout_kills_the_statement_on_the_server() {
    let Some(base) = mariadb_url("mysql_sql_timeout_kills_the_statement_on_the_server") else {
        return;
    };
    let db = MyDb::create(&base).await;
    let tag = format!("rewind-test-{}", uuid::Uuid::new_v4());
    let action = format!("sql = \"SELECT SLEEP(30) AS slept /* {tag} */\"");
    let started = std::time::Instant::now();
    let r = run_with(&db.url, &action, Duration::from_secs(1)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: true }, "{r:?}");
    assert_eq!(r.error.as_deref(), Some("timed out after 1s"));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(mysql_running(&db.url, &tag).await, 0, "the timed-out statement still runs");
    db.drop_database().await;
}

#[tokio::test]
async fn mysql_read_only_sessions_and_preflights_cannot_write() {
    let Some(base) = mariadb_url("mysql_read_only_sessions_and_preflights_cannot_write") else {
        return;
    };
    let db = MyDb::create(&base).await;
    let url = db.url.clone();
    my_exec(
        &url,
        "CREATE TABLE sites (id BIGINT PRIMARY KEY, kind TEXT NOT NULL, state TEXT); \
         INSERT INTO sites VALUES (1, 'site', 'deleted'), (9007199254740993, 'site', 'active')",
    )
    .await;
    let reg = Registry::builtin();
    let pools = reg.pools();
    for write in [
        "DELETE FROM sites",
        "UPDATE sites SET state = 'x'",
        "INSERT INTO sites VALUES (4, 'site', NULL)",
        "CREATE TABLE newtable (x INT)",
        "DROP TABLE sites",
    ] {
        match readonly::query(pools, &url, write, &[]).await {
            Err(e @ ReadOnlyError::Write { .. }) => {
                assert!(e.to_string().contains("READ ONLY transaction"), "{e}");
                assert!(e.to_string().contains("SQLSTATE 25006"), "{e}");
            }
            other => panic!("{write}: expected a refused write, got {other:?}"),
        }
    }
    // Integers compare right when bound as strings, past 2^53 too.
    let rows = readonly::query(
        pools,
        &url,
        "SELECT kind, state FROM sites WHERE id = ?",
        &["9007199254740993".to_owned()],
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "active");
    match readonly::query(pools, &url, "SELECT 1; DELETE FROM sites", &[]).await {
        Err(e @ ReadOnlyError::NotOneStatement { .. }) => assert!(e.is_refusal()),
        other => panic!("{other:?}"),
    }

    // The preflight, through a workflow.
    let wf = Workflow::parse(
        "w.toml",
        "name = \"w\"\ntarget_kind = \"site\"\n[connections]\ndb = \"${DB}\"\n\
         [preflight]\nstate = \"deleted\"\n\
         action = { kind = \"sql\", connection = \"db\", sql = \"SELECT kind, state FROM sites WHERE id = ?\", params = [\"{{target.attr.n}}\"] }\n\
         [[steps]]\nid = \"s\"\nestimate = \"1m\"\naction = { kind = \"sql\", connection = \"db\", sql = \"SELECT 1\" }\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let a = attempt(&wf, &url);
    let ctx = rewind_exec::preflight::Context {
        restore_point: a.restore_point,
        workdir: ".".into(),
        cwd: ".".into(),
        connections: Arc::new(wf.connections.clone()),
        vars: Arc::new(Vars::default().with("DB", &url)),
    };
    let found = rewind_exec::preflight::resolve(
        &reg,
        wf.preflight.as_ref().unwrap(),
        &[a.target.clone().unwrap()],
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(found[SITE].state.as_deref(), Some("active"));

    // The pool's writers are not left read-only.
    for _ in 0..10 {
        readonly::query(pools, &url, "SELECT 1 AS one", &[]).await.unwrap();
    }
    let r = output(run(&url, "sql = \"UPDATE sites SET state = 'written' WHERE id = 1\"").await);
    assert_eq!(r["rows_affected"], 1);
    db.drop_database().await;
}

#[tokio::test]
async fn sqlite_integers_compare_with_string_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let out = output(
        run(
            &url,
            r#"statements = [
  { sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB, r REAL)" },
  { sql = "INSERT INTO t VALUES (9007199254740993, x'00ff', 0.5)" },
  { sql = "SELECT id, b, r, NULL AS n FROM t WHERE id = ?", params = ["{{target.attr.n}}"] },
]"#,
        )
        .await,
    );
    assert_eq!(
        out,
        json!({"id": 9007199254740993_i64, "b": "\\x00ff", "r": 0.5, "n": null, "rows_affected": 1})
    );
}
