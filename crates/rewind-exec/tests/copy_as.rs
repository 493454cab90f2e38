//! `copy` and `compare` with `as` (restore as a new tenant) through the executors: PostgreSQL
//! schemas when `REWIND_TEST_POSTGRES` is set, MariaDB databases when `REWIND_TEST_MARIADB`
//! is, SQLite files always.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rewind_exec::{Attempt, Outcome, Registry, Report, StopHandle, Vars};
use rewind_model::{AttrValue, InstanceKey, RunId, SubjectKey, Target, Workflow};
use rewind_testkit::{MyDb, PgSchema, mariadb_url, postgres_url};
use sqlx::Connection;

const OLD: &str = "00000000-0000-4000-8000-00000000000a";
const OTHER: &str = "00000000-0000-4000-8000-00000000000b";
const NEW: &str = "00000000-0000-4000-8000-0000000000ff";
const RP: &str = "2022-04-05T07:33:00Z";

const STEPS: &str = r#"
[[steps]]
id = "tracker.copy"
estimate = "1m"
action = { kind = "copy", from = "scratch", to = "live", root = "sites", tenant = "{{target.id}}", as = "{{target.attr.new_id}}" }

[[steps]]
id = "tracker.compare"
estimate = "1m"
action = { kind = "compare", from = "scratch", to = "live", root = "sites", tenant = "{{target.id}}", as = "{{target.attr.new_id}}" }
"#;

fn workflow() -> Workflow {
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n[connections]\nlive = \"${{LIVE}}\"\nscratch = \"${{SCRATCH}}\"\n{STEPS}"
    );
    Workflow::parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"))
}

fn attempt(wf: &Workflow, step: usize, new_id: &str, live: &str, scratch: &str) -> Attempt {
    let mut attrs = BTreeMap::new();
    attrs.insert("new_id".parse().unwrap(), AttrValue::One(new_id.into()));
    Attempt {
        run_id: RunId::from_uuid(uuid::Uuid::new_v4()),
        restore_point: RP.parse().unwrap(),
        key: InstanceKey {
            step: wf.steps[step].id.clone(),
            subject: SubjectKey::Target(OLD.parse().unwrap()),
        },
        attempt: 1,
        idempotency_key: "k".into(),
        target: Some(Target { id: OLD.parse().unwrap(), kind: "site".into(), attrs, line: 2 }),
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

async fn run(a: Attempt) -> Report {
    let (_h, stop) = StopHandle::new();
    Registry::builtin().run(a, stop).await
}

const PG_SCHEMA: &str = "
CREATE TABLE sites (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (id bigserial PRIMARY KEY, site_id uuid NOT NULL REFERENCES sites(id), name text);
CREATE TABLE issues (id uuid PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects(id),
  parent_id uuid REFERENCES issues(id), title text);
";

fn pg_rows() -> String {
    format!(
        "INSERT INTO sites VALUES ('{OLD}', 'a'), ('{OTHER}', 'b');
         INSERT INTO projects VALUES (1, '{OLD}', 'pa'), (2, '{OTHER}', 'pb');
         INSERT INTO issues VALUES ('10000000-0000-4000-8000-000000000001', 1, NULL, 'one'),
           ('10000000-0000-4000-8000-000000000002', 1, '10000000-0000-4000-8000-000000000001', 'two'),
           ('10000000-0000-4000-8000-000000000003', 2, NULL, 'other');
         SELECT setval(pg_get_serial_sequence('projects', 'id'), 2);"
    )
}

async fn pg_exec(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
}

async fn pg_rows_of(url: &str, sql: &str) -> Vec<String> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(&mut c).await.unwrap()
}

#[tokio::test]
async fn postgres_copy_as_a_new_tenant_then_compare() {
    let Some(base) = postgres_url("postgres_copy_as_a_new_tenant_then_compare") else { return };
    let (live, scratch) = (PgSchema::create(&base).await, PgSchema::create(&base).await);
    for url in [&live.url, &scratch.url] {
        pg_exec(url, PG_SCHEMA).await;
        pg_exec(url, &pg_rows()).await;
    }
    let wf = workflow();
    let all = "SELECT t::text FROM (SELECT * FROM issues ORDER BY id) t";
    let before = pg_rows_of(&live.url, all).await;

    let r = run(attempt(&wf, 0, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!((out["rows"].as_u64(), out["as"].as_str()), (Some(4), Some(NEW)));
    let after = pg_rows_of(&live.url, all).await;
    assert_eq!(after.len(), 5);
    assert!(before.iter().all(|r| after.contains(r)), "old rows untouched");
    let parents = pg_rows_of(
        &live.url,
        &format!(
            "SELECT p.title FROM issues i JOIN issues p ON p.id = i.parent_id \
             JOIN projects pr ON pr.id = p.project_id WHERE pr.site_id = '{NEW}'"
        ),
    )
    .await;
    assert_eq!(parents, ["one"]);

    let r = run(attempt(&wf, 1, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["matching"], true);
    // Again: the same rows.
    let r = run(attempt(&wf, 0, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(pg_rows_of(&live.url, all).await, after);

    // `as` the tenant itself is refused.
    let r = run(attempt(&wf, 0, OLD, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert!(r.error.as_deref().unwrap().contains("itself"), "{r:?}");
    live.drop_schema().await;
    scratch.drop_schema().await;
}

async fn sqlite_exec(url: &str, sql: &str) {
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.unwrap();
}

#[tokio::test]
async fn sqlite_copy_as_a_new_tenant_then_compare() {
    let dir = tempfile::tempdir().unwrap();
    let live = format!("sqlite://{}?mode=rwc", dir.path().join("live.db").display());
    let scratch = format!("sqlite://{}?mode=rwc", dir.path().join("scratch.db").display());
    for url in [&live, &scratch] {
        sqlite_exec(
            url,
            &format!(
                "CREATE TABLE sites (id TEXT PRIMARY KEY, name TEXT NOT NULL);
                 CREATE TABLE projects (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id), name TEXT);
                 CREATE TABLE issues (id UUID PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
                   parent_id UUID REFERENCES issues(id), title TEXT);
                 INSERT INTO sites VALUES ('{OLD}', 'a'), ('{OTHER}', 'b');
                 INSERT INTO projects VALUES (1, '{OLD}', 'pa'), (2, '{OTHER}', 'pb');
                 INSERT INTO issues VALUES ('10000000-0000-4000-8000-000000000001', 1, NULL, 'one'),
                   ('10000000-0000-4000-8000-000000000002', 1, '10000000-0000-4000-8000-000000000001', 'two'),
                   ('10000000-0000-4000-8000-000000000003', 2, NULL, 'other');"
            ),
        )
        .await;
    }
    let wf = workflow();
    let r = run(attempt(&wf, 0, NEW, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["rows"], 4);
    let r = run(attempt(&wf, 1, NEW, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["matching"], true);
    let r = run(attempt(&wf, 0, OLD, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert!(r.error.as_deref().unwrap().contains("itself"), "{r:?}");
}

async fn my_exec(url: &str, sql: &str) {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_owned()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

async fn my_rows_of(url: &str, sql: &str) -> Vec<String> {
    let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(&mut c).await.unwrap()
}

#[tokio::test]
async fn mariadb_copy_as_a_new_tenant_then_compare() {
    let Some(base) = mariadb_url("mariadb_copy_as_a_new_tenant_then_compare") else { return };
    let (live, scratch) = (MyDb::create(&base).await, MyDb::create(&base).await);
    for url in [&live.url, &scratch.url] {
        my_exec(
            url,
            &format!(
                "CREATE TABLE sites (id UUID PRIMARY KEY, name VARCHAR(20) NOT NULL);
                 CREATE TABLE projects (id BIGINT AUTO_INCREMENT PRIMARY KEY, site_id UUID NOT NULL,
                   name VARCHAR(20), FOREIGN KEY (site_id) REFERENCES sites (id));
                 CREATE TABLE issues (id CHAR(36) PRIMARY KEY, project_id BIGINT NOT NULL,
                   parent_id CHAR(36), title VARCHAR(20), FOREIGN KEY (project_id) REFERENCES projects (id),
                   FOREIGN KEY (parent_id) REFERENCES issues (id));
                 INSERT INTO sites VALUES ('{OLD}', 'a'), ('{OTHER}', 'b');
                 INSERT INTO projects VALUES (1, '{OLD}', 'pa'), (2, '{OTHER}', 'pb');
                 INSERT INTO issues VALUES ('10000000-0000-4000-8000-000000000001', 1, NULL, 'one'),
                   ('10000000-0000-4000-8000-000000000002', 1, '10000000-0000-4000-8000-000000000001', 'two'),
                   ('10000000-0000-4000-8000-000000000003', 2, NULL, 'other')"
            ),
        )
        .await;
    }
    let wf = workflow();
    let all = "SELECT CONCAT_WS('|', id, project_id, COALESCE(parent_id, '-'), title) FROM issues ORDER BY id";
    let before = my_rows_of(&live.url, all).await;
    let r = run(attempt(&wf, 0, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["rows"], 4);
    let after = my_rows_of(&live.url, all).await;
    assert_eq!(after.len(), 5);
    assert!(before.iter().all(|r| after.contains(r)), "old rows untouched");
    let parents = my_rows_of(
        &live.url,
        &format!(
            "SELECT p.title FROM issues i JOIN issues p ON p.id = i.parent_id \
             JOIN projects pr ON pr.id = p.project_id WHERE pr.site_id = '{NEW}'"
        ),
    )
    .await;
    assert_eq!(parents, ["one"]);
    let r = run(attempt(&wf, 1, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["matching"], true);
    let r = run(attempt(&wf, 0, NEW, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(my_rows_of(&live.url, all).await, after);
    let r = run(attempt(&wf, 0, OLD, &live.url, &scratch.url)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert!(r.error.as_deref().unwrap().contains("itself"), "{r:?}");
    live.drop_database().await;
    scratch.drop_database().await;
}

/// A workflow of `copy` then `compare` as a new tenant, on a slice of `tables` by `site_id`
/// under the root `sites`, with `references` (a TOML array, or empty: none).
fn declared_workflow(references: &str) -> Workflow {
    let references =
        if references.is_empty() { String::new() } else { format!(", references = {references}") };
    let action = |kind: &str| {
        format!(
            r#"{{ kind = "{kind}", from = "scratch", to = "live", root = "sites", tables = ["projects", "issues"], tenant_column = "site_id", tenant = "{{{{target.id}}}}", as = "{{{{target.attr.new_id}}}}"{references} }}"#
        )
    };
    let text = format!(
        "name = \"t\"\ntarget_kind = \"site\"\n[connections]\nlive = \"${{LIVE}}\"\nscratch = \"${{SCRATCH}}\"\n\
         [[steps]]\nid = \"tracker.copy\"\nestimate = \"1m\"\naction = {}\n\
         [[steps]]\nid = \"tracker.compare\"\nestimate = \"1m\"\naction = {}\n",
        action("copy"),
        action("compare")
    );
    Workflow::parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"))
}

/// Every row of every table of a SQLite file, as text.
async fn sqlite_dump(url: &str) -> Vec<String> {
    use sqlx::Row;
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{t}\"")))
            .fetch_all(&mut c)
            .await
            .unwrap();
        for r in rows {
            let cells: Vec<String> = (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap().unwrap_or_default())
                .collect();
            out.push(format!("{t}: {}", cells.join("|")));
        }
    }
    out.sort();
    out
}

/// The reference-less tracker (text uuid keys, a `site_id` everywhere), but for `notes`,
/// whose key to `issues` is a catalog FOREIGN KEY.
fn declared_schema() -> String {
    format!(
        "CREATE TABLE sites (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, name TEXT NOT NULL);
         CREATE TABLE projects (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, name TEXT);
         CREATE TABLE issues (id TEXT PRIMARY KEY, site_id TEXT NOT NULL, project_id TEXT NOT NULL, title TEXT);
         CREATE TABLE notes (id TEXT PRIMARY KEY, issue_id TEXT NOT NULL REFERENCES issues(id), body TEXT);
         INSERT INTO sites VALUES ('{OLD}', '{OLD}', 'a'), ('{OTHER}', '{OTHER}', 'b');
         INSERT INTO projects VALUES ('20000000-0000-4000-8000-000000000001', '{OLD}', 'pa'),
           ('20000000-0000-4000-8000-000000000002', '{OTHER}', 'pb');
         INSERT INTO issues VALUES
           ('10000000-0000-4000-8000-000000000001', '{OLD}', '20000000-0000-4000-8000-000000000001', 'one'),
           ('10000000-0000-4000-8000-000000000002', '{OLD}', '20000000-0000-4000-8000-000000000001', 'two'),
           ('10000000-0000-4000-8000-000000000003', '{OTHER}', '20000000-0000-4000-8000-000000000002', 'other');"
    )
}

#[tokio::test]
async fn sqlite_declared_references_follow_through_copy_and_compare_as() {
    let dir = tempfile::tempdir().unwrap();
    let live = format!("sqlite://{}?mode=rwc", dir.path().join("live.db").display());
    let scratch = format!("sqlite://{}?mode=rwc", dir.path().join("scratch.db").display());
    for url in [&live, &scratch] {
        sqlite_exec(url, &declared_schema()).await;
    }
    let wf = declared_workflow(r#"["issues(project_id) -> projects(id)"]"#);

    // `plan` and `--dry-run` show the declared reference and what `as` changes.
    let a = attempt(&wf, 0, NEW, &live, &scratch);
    let ends = rewind_exec::discover::slice_ends(&a).unwrap().unwrap();
    let (rewind_model::Action::Copy(s) | rewind_model::Action::Compare(s)) = &*a.action else {
        panic!()
    };
    let shown = rewind_exec::discover::discover(&ends, s).await;
    assert_eq!(shown.unplannable, None);
    let text = shown.lines.join("\n");
    for line in [
        "  as {{target.attr.new_id}}:",
        "    the new tenant id: sites.id, sites.site_id, projects.site_id, issues.site_id",
        "    keys remapped: projects.id (text holding uuids, derived), issues.id (text holding uuids, derived)",
        "    following their parent: issues.project_id -> projects.id (declared)",
    ] {
        assert!(shown.lines.iter().any(|l| l == line), "{line:?} in\n{text}");
    }

    let r = run(attempt(&wf, 0, NEW, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["rows"], 4);
    let mut c = sqlx::SqliteConnection::connect(&live).await.unwrap();
    let count = async |c: &mut sqlx::SqliteConnection, sql: &str| -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(c).await.unwrap()
    };
    let followed = format!(
        "SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id AND p.site_id = '{NEW}' \
         WHERE i.site_id = '{NEW}'"
    );
    assert_eq!(count(&mut c, &followed).await, 2, "both new issues point at the new project");
    let root = format!("SELECT count(*) FROM sites WHERE id = '{NEW}' AND site_id = '{NEW}'");
    assert_eq!(count(&mut c, &root).await, 1);
    let r = run(attempt(&wf, 1, NEW, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output.as_ref().unwrap()["matching"], true);

    // A restored reference pointed back at the old project: the compare fails, naming issues.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE issues SET project_id = '20000000-0000-4000-8000-000000000001' \
         WHERE id = (SELECT min(id) FROM issues WHERE site_id = '{NEW}')"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let r = run(attempt(&wf, 1, NEW, &live, &scratch)).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("the restored slice differs: issues:"), "{r:?}");
    drop(c);

    // A reference the catalog cannot have, or has already, is refused before anything is
    // written, naming it as written; the compare refuses it alike.
    let before = sqlite_dump(&live).await;
    for (references, needle) in [
        (
            r#"["issues(project_id) -> project(id)"]"#,
            "the reference `issues(project_id) -> project(id)` names a table `project` that does not exist",
        ),
        (
            r#"["issues(projectid) -> projects(id)"]"#,
            "the reference `issues(projectid) -> projects(id)` names a column `issues`.`projectid` that does not exist",
        ),
        (
            r#"["issues(project_id) -> projects(id)", "notes( issue_id )->issues(id)"]"#,
            "the reference `notes(issue_id) -> issues(id)` is declared already: the catalog has it as the foreign key `fk0`",
        ),
    ] {
        let wf = declared_workflow(references);
        for step in [0, 1] {
            let r =
                run(attempt(&wf, step, "00000000-0000-4000-8000-0000000000ee", &live, &scratch))
                    .await;
            assert_eq!(r.outcome, Outcome::Failed { retryable: false }, "{r:?}");
            let e = r.error.as_deref().unwrap();
            assert!(e.contains("the slice cannot be planned from `scratch`"), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        assert_eq!(sqlite_dump(&live).await, before, "nothing was written");
    }
}
