//! The SQLite engine on a realistic schema: a uuid-as-text root `sites`, a 4-level tree
//! (sites → projects → issues → comments, comments reached only through issues), self-references
//! (sub-issues, threaded comments), a composite key and a composite foreign key
//! (labels, issue_labels), INTEGER PRIMARY KEY and AUTOINCREMENT keys, generated columns, audit
//! triggers, and awkward values. Plans are built by hand, as `plan::plan` will build them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_slice::plan::RootKey;
use rewind_slice::{Schema, SliceError, SlicePlan, SliceTable, Via, sqlite};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

const SCHEMA: &str = r#"
CREATE TABLE sites (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, score REAL);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL REFERENCES sites,
    name TEXT NOT NULL,
    budget REAL,
    slug TEXT GENERATED ALWAYS AS (lower(name)) VIRTUAL
);
CREATE TABLE issues (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    parent_id INTEGER REFERENCES issues(id),
    assignee_id INTEGER REFERENCES users(id),
    title TEXT NOT NULL,
    body TEXT,
    attachment BLOB,
    big INTEGER,
    ratio REAL,
    title_len INTEGER GENERATED ALWAYS AS (length(title)) STORED
);
CREATE TABLE labels (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    code TEXT NOT NULL,
    color TEXT,
    PRIMARY KEY (project_id, code)
) WITHOUT ROWID;
CREATE TABLE comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    issue_id INTEGER NOT NULL REFERENCES issues(id),
    reply_to INTEGER REFERENCES comments(id),
    body TEXT
);
CREATE TABLE issue_labels (
    issue_id INTEGER NOT NULL REFERENCES issues(id),
    project_id INTEGER NOT NULL,
    code TEXT NOT NULL,
    FOREIGN KEY (project_id, code) REFERENCES labels(project_id, code),
    PRIMARY KEY (issue_id, project_id, code)
);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT NOT NULL);
CREATE TRIGGER issues_audit AFTER INSERT ON issues
    BEGIN INSERT INTO audit (what) VALUES ('issue ' || NEW.id); END;
CREATE TRIGGER comments_audit AFTER DELETE ON comments
    BEGIN INSERT INTO audit (what) VALUES ('comment deleted ' || OLD.id); END;
"#;

const TENANTS: [&str; 5] = [
    "0b6f4e1a-6a0e-4c1c-9a57-000000000001",
    "0b6f4e1a-6a0e-4c1c-9a57-000000000002",
    "0b6f4e1a-6a0e-4c1c-9a57-000000000003",
    "0b6f4e1a-6a0e-4c1c-9a57-000000000004",
    "0b6f4e1a-6a0e-4c1c-9a57-000000000005",
];

/// Text that quoting, escaping or encoding would spoil.
const AWKWARD: &str = "tab\there\nnew line 'single' \"double\" back\\slash 🦀 ünï";

async fn open(path: &Path) -> SqliteConnection {
    let opts = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    SqliteConnection::connect_with(&opts).await.expect("open the SQLite file")
}

async fn exec(conn: &mut SqliteConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Fills the schema: per tenant 2 projects, 4 issues each (sub-issues whose parent has a larger
/// id), 2 labels per project, 2 comments per issue (the first a reply to the second).
async fn fill(conn: &mut SqliteConnection) {
    exec(conn, SCHEMA).await;
    // Sub-issues are written before their parents: the references are checked at COMMIT.
    exec(conn, "BEGIN; PRAGMA defer_foreign_keys = ON").await;
    exec(conn, "INSERT INTO users (id, email) VALUES (1, 'a@example.com'), (2, 'b@example.com')")
        .await;
    let mut issue = 1000_i64;
    for (t, site) in TENANTS.iter().enumerate() {
        sqlx::query("INSERT INTO sites (id, name, score) VALUES (?1, ?2, ?3)")
            .bind(*site)
            .bind(format!("Site {t} {AWKWARD}"))
            .bind(if t == 0 { None } else { Some(0.1 + 0.2) })
            .execute(&mut *conn)
            .await
            .unwrap();
        for p in 0..2 {
            let project: i64 = sqlx::query_scalar(
                "INSERT INTO projects (site_id, name, budget) VALUES (?1, ?2, ?3) RETURNING id",
            )
            .bind(*site)
            .bind(format!("Project {t}-{p}"))
            .bind(if p == 0 { 1e308 } else { -0.5 })
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            for code in ["bug", "feature"] {
                sqlx::query("INSERT INTO labels (project_id, code, color) VALUES (?1, ?2, ?3)")
                    .bind(project)
                    .bind(code)
                    .bind(if code == "bug" { None } else { Some("#00ff00") })
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
            // The parent issue gets the larger id: its children are inserted before it.
            let parent = issue + 3;
            for i in 0..4 {
                issue += 1;
                let parent_id = if issue == parent { None } else { Some(parent) };
                sqlx::query(
                    "INSERT INTO issues (id, project_id, parent_id, assignee_id, title, body, \
                     attachment, big, ratio) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .bind(issue)
                .bind(project)
                .bind(parent_id)
                .bind(if i % 2 == 0 { Some(1_i64) } else { None })
                .bind(format!("Issue {issue} {AWKWARD}"))
                .bind(if i == 1 { None } else { Some(AWKWARD) })
                .bind(vec![0u8, 255, 0, i as u8])
                .bind(if i == 2 { i64::MIN } else { i64::MAX - i64::from(i) })
                .bind(0.1 + 0.2)
                .execute(&mut *conn)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO issue_labels (issue_id, project_id, code) VALUES (?1, ?2, 'bug')",
                )
                .bind(issue)
                .bind(project)
                .execute(&mut *conn)
                .await
                .unwrap();
                let second: i64 = sqlx::query_scalar(
                    "INSERT INTO comments (issue_id, body) VALUES (?1, ?2) RETURNING id",
                )
                .bind(issue)
                .bind(AWKWARD)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO comments (issue_id, reply_to, body) VALUES (?1, ?2, NULL)",
                )
                .bind(issue)
                .bind(second)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }
        issue += 100;
    }
    exec(conn, "COMMIT").await;
}

/// The constraint name `sqlite::schema` gives `child`'s key on `columns`.
fn fk(schema: &Schema, child: &str, columns: &[&str]) -> Via {
    let key = schema.tables[child]
        .foreign_keys
        .iter()
        .find(|k| k.columns == columns)
        .unwrap_or_else(|| panic!("{child} has a foreign key on {columns:?}"));
    let nullable = columns.iter().any(|c| schema.tables[child].column(c).unwrap().nullable);
    Via::Parent {
        constraint: key.name.clone(),
        columns: key.columns.clone(),
        parent: key.parent.clone(),
        parent_columns: key.parent_columns.clone(),
        nullable,
        declared: false,
    }
}

fn table(schema: &Schema, name: &str, via: Vec<Via>, path: &[&str]) -> SliceTable {
    let t = &schema.tables[name];
    SliceTable {
        name: name.to_owned(),
        columns: t.columns.clone(),
        primary_key: t.primary_key.clone(),
        via,
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        set_after: Vec::new(),
        triggers: t.triggers.clone(),
    }
}

/// The plan `plan::plan` makes for root `sites`: parents first; SQLite breaks nothing.
fn sites_plan(schema: &Schema) -> SlicePlan {
    let root = Via::Root { column: "id".into() };
    SlicePlan {
        engine: rewind_slice::Engine::Sqlite,
        root: Some(RootKey {
            table: "sites".into(),
            column: "id".into(),
            data_type: "TEXT".into(),
        }),
        tables: vec![
            table(schema, "sites", vec![root], &["sites"]),
            table(
                schema,
                "projects",
                vec![fk(schema, "projects", &["site_id"])],
                &["projects", "sites"],
            ),
            table(
                schema,
                "issues",
                vec![fk(schema, "issues", &["project_id"])],
                &["issues", "projects", "sites"],
            ),
            table(
                schema,
                "labels",
                vec![fk(schema, "labels", &["project_id"])],
                &["labels", "projects", "sites"],
            ),
            table(
                schema,
                "comments",
                vec![fk(schema, "comments", &["issue_id"])],
                &["comments", "issues", "projects", "sites"],
            ),
            table(
                schema,
                "issue_labels",
                vec![fk(schema, "issue_labels", &["project_id", "code"])],
                &["issue_labels", "labels", "projects", "sites"],
            ),
        ],
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    }
}

/// A live file and its backup, and the catalog both share.
struct Fixture {
    _dir: tempfile::TempDir,
    live: PathBuf,
    backup: PathBuf,
    schema: Schema,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let backup = dir.path().join("backup.db");
    let mut conn = open(&live).await;
    fill(&mut conn).await;
    let schema = sqlite::schema(&mut conn, "main").await.unwrap();
    conn.close().await.unwrap();
    std::fs::copy(&live, &backup).unwrap();
    Fixture { _dir: dir, live, backup, schema }
}

/// A copy of `from` next to it, named `name`.
fn copy_file(from: &Path, name: &str) -> PathBuf {
    let to = from.with_file_name(name);
    std::fs::copy(from, &to).unwrap();
    to
}

async fn triggers(conn: &mut SqliteConnection) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

async fn audit(conn: &mut SqliteConnection) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT id, what FROM audit ORDER BY id").fetch_all(&mut *conn).await.unwrap()
}

async fn digests(conn: &mut SqliteConnection, plan: &SlicePlan) -> Vec<rewind_slice::SliceDigest> {
    let mut out = Vec::new();
    for t in TENANTS {
        out.push(sqlite::digest(conn, plan, t).await.unwrap());
    }
    out
}

#[tokio::test]
async fn schema_reads_keys_columns_and_triggers() {
    let f = fixture().await;
    let s = &f.schema;
    assert_eq!(s.engine, rewind_slice::Engine::Sqlite);
    let names: Vec<&str> = s.tables.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["audit", "comments", "issue_labels", "issues", "labels", "projects", "sites", "users"]
    );
    let projects = &s.tables["projects"];
    // `REFERENCES sites` without columns: the parent's primary key.
    assert_eq!(projects.foreign_keys[0].parent, "sites");
    assert_eq!(projects.foreign_keys[0].parent_columns, ["id"]);
    assert!(projects.column("slug").unwrap().generated);
    assert!(!projects.column("id").unwrap().nullable, "a rowid alias is never NULL");
    assert!(projects.columns.iter().all(|c| c.sequence.is_none()));
    let issues = &s.tables["issues"];
    assert!(issues.column("title_len").unwrap().generated, "a STORED generated column");
    assert!(!issues.column("title").unwrap().generated);
    assert_eq!(issues.column("big").unwrap().data_type, "INTEGER");
    assert!(issues.column("parent_id").unwrap().nullable);
    assert_eq!(issues.triggers, ["issues_audit"]);
    assert_eq!(s.tables["comments"].triggers, ["comments_audit"]);
    assert_eq!(s.tables["labels"].primary_key, ["project_id", "code"]);
    assert_eq!(s.tables["issue_labels"].primary_key, ["issue_id", "project_id", "code"]);
    let composite =
        s.tables["issue_labels"].foreign_keys.iter().find(|k| k.parent == "labels").unwrap();
    assert_eq!(composite.columns, ["project_id", "code"]);
    assert_eq!(composite.parent_columns, ["project_id", "code"]);
    assert!(composite.name.starts_with("fk"));
    let self_ref = issues.foreign_keys.iter().find(|k| k.parent == "issues").unwrap();
    assert_eq!(self_ref.columns, ["parent_id"]);
}

#[tokio::test]
async fn three_tenants_restored_from_backup() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let backup_bytes = std::fs::read(&f.backup).unwrap();
    let mut backup = open(&f.backup).await;
    // The backup holds a comment live never had: its AUTOINCREMENT id is past live's counter.
    exec(&mut backup, "INSERT INTO comments (issue_id, body) VALUES (1001, 'only in the backup')")
        .await;
    let newest: i64 =
        sqlx::query_scalar("SELECT max(id) FROM comments").fetch_one(&mut backup).await.unwrap();
    let want = digests(&mut backup, &plan).await;
    backup.close().await.unwrap();
    let backup_bytes_after_setup = std::fs::read(&f.backup).unwrap();
    assert_ne!(backup_bytes, backup_bytes_after_setup);

    let mut live = open(&f.live).await;
    // Tenants 0 and 2 lose everything, tenant 1 its comments and a project's name.
    for t in [TENANTS[0], TENANTS[2]] {
        for sql in [
            "DELETE FROM comments WHERE issue_id IN (SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id WHERE p.site_id = ?1)",
            "DELETE FROM issue_labels WHERE project_id IN (SELECT id FROM projects WHERE site_id = ?1)",
            "DELETE FROM issues WHERE project_id IN (SELECT id FROM projects WHERE site_id = ?1)",
            "DELETE FROM labels WHERE project_id IN (SELECT id FROM projects WHERE site_id = ?1)",
            "DELETE FROM projects WHERE site_id = ?1",
            "DELETE FROM sites WHERE id = ?1",
        ] {
            sqlx::query(sql).bind(t).execute(&mut live).await.unwrap();
        }
    }
    sqlx::query("DELETE FROM comments WHERE issue_id IN (SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id WHERE p.site_id = ?1)")
        .bind(TENANTS[1])
        .execute(&mut live)
        .await
        .unwrap();
    sqlx::query("UPDATE projects SET name = 'renamed' WHERE site_id = ?1")
        .bind(TENANTS[1])
        .execute(&mut live)
        .await
        .unwrap();
    let before = digests(&mut live, &plan).await;
    assert_ne!(before[0], want[0]);
    assert_ne!(before[1], want[1]);
    assert_eq!(before[3], want[3]);
    let audit_before = audit(&mut live).await;
    let triggers_before = triggers(&mut live).await;
    assert_eq!(triggers_before.len(), 2);

    for t in &TENANTS[..3] {
        let report = sqlite::copy(&mut live, &f.backup, &plan, t).await.unwrap();
        let order: Vec<&str> = report.tables.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(order, ["sites", "projects", "issues", "labels", "comments", "issue_labels"]);
        assert_eq!(report.tables[0].inserted, 1);
        assert_eq!(report.tables[2].inserted, 8);
    }
    let after = digests(&mut live, &plan).await;
    assert_eq!(after[..3], want[..3], "the three tenants equal the backup");
    assert_eq!(after[3..], before[3..], "the other tenants are unchanged");
    assert_eq!(audit(&mut live).await, audit_before, "the copy is not audited");
    assert_eq!(triggers(&mut live).await, triggers_before, "the triggers are back");
    // The digest covers the awkward values: a restored row reads back exactly.
    let (body, blob, big, ratio, len): (String, Vec<u8>, i64, f64, i64) = sqlx::query_as(
        "SELECT body, attachment, big, ratio, title_len FROM issues WHERE id = 1001",
    )
    .fetch_one(&mut live)
    .await
    .unwrap();
    assert_eq!(
        (body.as_str(), blob, big, ratio),
        (AWKWARD, vec![0u8, 255, 0, 0], i64::MAX, 0.1 + 0.2)
    );
    assert_eq!(len, format!("Issue 1001 {AWKWARD}").chars().count() as i64, "recomputed");
    let budget: f64 =
        sqlx::query_scalar("SELECT budget FROM projects WHERE site_id = ?1 ORDER BY id LIMIT 1")
            .bind(TENANTS[0])
            .fetch_one(&mut live)
            .await
            .unwrap();
    assert_eq!(budget, 1e308);

    // New rows take fresh keys: the AUTOINCREMENT counter moved past the restored comment.
    let comment: i64 = sqlx::query_scalar(
        "INSERT INTO comments (issue_id, body) VALUES (1001, 'new') RETURNING id",
    )
    .fetch_one(&mut live)
    .await
    .unwrap();
    assert_eq!(comment, newest + 1);
    let issue: i64 = sqlx::query_scalar(
        "INSERT INTO issues (project_id, title) SELECT id, 'new' FROM projects WHERE site_id = ?1 LIMIT 1 RETURNING id",
    )
    .bind(TENANTS[0])
    .fetch_one(&mut live)
    .await
    .unwrap();
    let top: i64 = sqlx::query_scalar("SELECT max(id) FROM issues WHERE id <> ?1")
        .bind(issue)
        .fetch_one(&mut live)
        .await
        .unwrap();
    assert!(issue > top);
    exec(&mut live, "DELETE FROM comments WHERE body = 'new'").await;
    sqlx::query("DELETE FROM issues WHERE id = ?1").bind(issue).execute(&mut live).await.unwrap();
    let audit_now = audit(&mut live).await;

    // Again: the same rows, every row deleted and inserted once more, still not audited.
    for (i, t) in TENANTS[..3].iter().enumerate() {
        let report = sqlite::copy(&mut live, &f.backup, &plan, t).await.unwrap();
        for r in &report.tables {
            assert_eq!(r.deleted, r.inserted, "tenant {i} table {}", r.table);
        }
    }
    assert_eq!(digests(&mut live, &plan).await[..3], want[..3]);
    assert_eq!(audit(&mut live).await, audit_now);
    assert_eq!(triggers(&mut live).await, triggers_before);
    live.close().await.unwrap();
    assert!(
        std::fs::read(&f.backup).unwrap() == backup_bytes_after_setup,
        "the source is untouched"
    );
}

#[tokio::test]
async fn bad_tenant_for_an_integer_root() {
    let f = fixture().await;
    let s = &f.schema;
    let plan = SlicePlan {
        engine: rewind_slice::Engine::Sqlite,
        root: Some(RootKey {
            table: "projects".into(),
            column: "id".into(),
            data_type: "INTEGER".into(),
        }),
        tables: vec![
            table(s, "projects", vec![Via::Root { column: "id".into() }], &["projects"]),
            table(s, "issues", vec![fk(s, "issues", &["project_id"])], &["issues", "projects"]),
        ],
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    };
    let mut live = open(&f.live).await;
    for bad in ["abc", "1.5", "", "99999999999999999999"] {
        let e = sqlite::copy(&mut live, &f.backup, &plan, bad).await.unwrap_err();
        assert!(matches!(e, SliceError::BadTenant { .. }), "{bad:?}: {e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("`projects`.`id`"), "{e}");
        assert!(matches!(
            sqlite::digest(&mut live, &plan, bad).await,
            Err(SliceError::BadTenant { .. })
        ));
    }
    // A good one copies (and the integer binds: text would not match an INTEGER key).
    let report = sqlite::copy(&mut live, &f.backup, &plan, "1").await.unwrap();
    assert_eq!((report.tables[0].deleted, report.tables[0].inserted), (1, 1));
    assert_eq!((report.tables[1].deleted, report.tables[1].inserted), (4, 4));
}

#[tokio::test]
async fn missing_column_is_refused() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let old = copy_file(&f.backup, "old.db");
    let mut conn = open(&old).await;
    exec(&mut conn, "ALTER TABLE comments DROP COLUMN body").await;
    conn.close().await.unwrap();
    let mut live = open(&f.live).await;
    let before = digests(&mut live, &plan).await;
    let e = sqlite::copy(&mut live, &old, &plan, TENANTS[0]).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert_eq!(e.to_string(), "column `comments`.`body` is missing in the source");
    assert_eq!(digests(&mut live, &plan).await, before);

    // Another declared type is refused too, naming both.
    let retyped = copy_file(&f.backup, "retyped.db");
    let mut conn = open(&retyped).await;
    exec(&mut conn, "ALTER TABLE labels RENAME TO labels_old; CREATE TABLE labels (project_id INTEGER NOT NULL, code TEXT NOT NULL, color BLOB, PRIMARY KEY (project_id, code)) WITHOUT ROWID").await;
    conn.close().await.unwrap();
    let e = sqlite::copy(&mut live, &retyped, &plan, TENANTS[0]).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "column `labels`.`color` is `BLOB` in the source and `TEXT` in the destination"
    );
    // A source that is not there is refused, and no empty file is made in its place.
    let nowhere = f.backup.with_file_name("nowhere.db");
    let e = sqlite::copy(&mut live, &nowhere, &plan, TENANTS[0]).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert!(!nowhere.exists());
}

/// A backup whose tenant-0 issue is assigned to a user live does not have.
async fn dangling_backup(f: &Fixture) -> PathBuf {
    let path = copy_file(&f.backup, "dangling.db");
    let mut conn = open(&path).await;
    exec(&mut conn, "INSERT INTO users (id, email) VALUES (77, 'gone@example.com'); UPDATE issues SET assignee_id = 77 WHERE id IN (1001, 1002)").await;
    conn.close().await.unwrap();
    path
}

async fn assert_dangling_refused(live: &mut SqliteConnection, source: &Path, plan: &SlicePlan) {
    let before = digests(live, plan).await;
    let triggers_before = triggers(live).await;
    let audit_before = audit(live).await;
    let e = sqlite::copy(live, source, plan, TENANTS[0]).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("2 row(s) of `issues` reference rows of `users`"), "{msg}");
    assert!(msg.contains("(assignee_id) -> `users` (id)"), "{msg}");
    assert!(!e.is_transient());
    assert_eq!(digests(live, plan).await, before, "nothing written");
    assert_eq!(triggers(live).await, triggers_before, "the triggers are back after a failed copy");
    assert_eq!(audit(live).await, audit_before);
    let attached: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pragma_database_list WHERE name = 'rw_source'")
            .fetch_one(&mut *live)
            .await
            .unwrap();
    assert_eq!(attached, 0, "the source is detached");
}

#[tokio::test]
async fn dangling_reference_is_refused_with_foreign_keys_on() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let source = dangling_backup(&f).await;
    let mut live = open(&f.live).await;
    assert_dangling_refused(&mut live, &source, &plan).await;
    // The connection is usable afterwards: the same copy from the good backup succeeds.
    sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap();
}

#[tokio::test]
async fn dangling_reference_is_refused_with_foreign_keys_off() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let source = dangling_backup(&f).await;
    let opts = SqliteConnectOptions::new().filename(&f.live).foreign_keys(false);
    let mut live = SqliteConnection::connect_with(&opts).await.unwrap();
    // A violation that was there before the copy is not the copy's doing: it does not refuse.
    exec(&mut live, "UPDATE issues SET assignee_id = 55 WHERE id = 1325").await;
    assert_dangling_refused(&mut live, &source, &plan).await;
    sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap();
}

#[tokio::test]
async fn a_locked_destination_is_transient() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let mut holder = open(&f.live).await;
    exec(&mut holder, "BEGIN IMMEDIATE; UPDATE users SET email = email").await;
    let opts =
        SqliteConnectOptions::new().filename(&f.live).busy_timeout(Duration::from_millis(100));
    let mut live = SqliteConnection::connect_with(&opts).await.unwrap();
    let e = sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("BEGIN IMMEDIATE"), "{e}");
    exec(&mut holder, "COMMIT").await;
    // The lock gone, the same call succeeds.
    sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap();
}

#[tokio::test]
async fn a_plan_for_another_engine_is_refused() {
    let f = fixture().await;
    let mut plan = sites_plan(&f.schema);
    plan.engine = rewind_slice::Engine::Postgres;
    let mut live = open(&f.live).await;
    let e = sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
}

#[tokio::test]
async fn the_digest_sees_types_bits_and_nulls() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let mut live = open(&f.live).await;
    // Each pair of values differs only in a float's last bits, in type, or in being NULL.
    for (column, a, b) in [
        ("ratio", "0.3", "0.1 + 0.2"),
        ("attachment", "X'31'", "'1'"),
        ("body", "NULL", "'NULL'"),
        ("attachment", "1", "1.0"),
    ] {
        let mut seen = Vec::new();
        for value in [a, b] {
            let set = format!("UPDATE issues SET {column} = {value} WHERE id = 1325");
            exec(&mut live, &set).await;
            seen.push(
                sqlite::digest(&mut live, &plan, TENANTS[3]).await.unwrap().tables[2].clone(),
            );
        }
        assert_eq!(seen[0].rows, seen[1].rows);
        assert_ne!(seen[0].digest, seen[1].digest, "{column}: {a} against {b}");
    }
}

/// A plan that leaves `comments`, `labels` and `issue_labels` out, restored from a backup that
/// lost issue 1001: live's comments on it would point at nothing.
async fn assert_orphaned_children_refused(live: &mut SqliteConnection, f: &Fixture) {
    let s = &f.schema;
    let plan =
        SlicePlan { tables: sites_plan(s).tables.into_iter().take(3).collect(), ..sites_plan(s) };
    let source = copy_file(&f.backup, "lost.db");
    let mut conn = open(&source).await;
    exec(
        &mut conn,
        "DELETE FROM comments WHERE issue_id = 1001; DELETE FROM issue_labels WHERE issue_id = 1001; \
         UPDATE issues SET parent_id = NULL WHERE parent_id = 1001; DELETE FROM issues WHERE id = 1001",
    )
    .await;
    conn.close().await.unwrap();
    let full = sites_plan(s);
    let before = sqlite::digest(live, &full, TENANTS[0]).await.unwrap();
    let e = sqlite::copy(live, &source, &plan, TENANTS[0]).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SliceError::Refused(_)), "{msg}");
    assert!(msg.contains("2 row(s) of `comments` reference rows of `issues`"), "{msg}");
    assert!(msg.contains("1 row(s) of `issue_labels` reference rows of `issues`"), "{msg}");
    assert_eq!(sqlite::digest(live, &full, TENANTS[0]).await.unwrap(), before, "nothing written");
}

#[tokio::test]
async fn children_outside_the_plan_are_not_orphaned() {
    let f = fixture().await;
    let mut live = open(&f.live).await;
    assert_orphaned_children_refused(&mut live, &f).await;
    let opts = SqliteConnectOptions::new().filename(&f.live).foreign_keys(false);
    let mut unchecked = SqliteConnection::connect_with(&opts).await.unwrap();
    assert_orphaned_children_refused(&mut unchecked, &f).await;
}

async fn foreign_keys_pragma(conn: &mut SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await.unwrap()
}

async fn pins_and_stars(conn: &mut SqliteConnection) -> (Vec<(i64, i64)>, Vec<(i64, Option<i64>)>) {
    let pins = sqlx::query_as("SELECT id, issue_id FROM pins ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let stars = sqlx::query_as("SELECT id, issue_id FROM stars ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    (pins, stars)
}

/// sqlx enforces foreign keys on SQLite connections: a copy turns that off for its
/// transaction, or deleting the tenant's issues would cascade into (and null) rows of tables
/// the plan leaves out. Those rows stay; a copy that leaves them dangling is refused.
#[tokio::test]
async fn on_delete_actions_do_not_reach_outside_the_slice() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let mut live = open(&f.live).await;
    assert_eq!(foreign_keys_pragma(&mut live).await, 1, "sqlx's default");
    exec(
        &mut live,
        "CREATE TABLE pins (id INTEGER PRIMARY KEY, \
           issue_id INTEGER NOT NULL REFERENCES issues(id) ON DELETE CASCADE); \
         CREATE TABLE stars (id INTEGER PRIMARY KEY, \
           issue_id INTEGER REFERENCES issues(id) ON DELETE SET NULL); \
         INSERT INTO pins VALUES (1, 1001), (2, 1325); INSERT INTO stars VALUES (1, 1001)",
    )
    .await;
    let outside = pins_and_stars(&mut live).await;
    // The issues come back: the rows that point at them are as they were.
    sqlite::copy(&mut live, &f.backup, &plan, TENANTS[0]).await.unwrap();
    assert_eq!(pins_and_stars(&mut live).await, outside, "no cascade, no SET NULL");
    assert_eq!(foreign_keys_pragma(&mut live).await, 1, "enforcement is back");

    // A backup without issue 1001: the pin and the star would point at nothing.
    let lost = copy_file(&f.backup, "lost.db");
    let mut conn = open(&lost).await;
    exec(
        &mut conn,
        "DELETE FROM comments WHERE issue_id = 1001; DELETE FROM issue_labels WHERE issue_id = 1001; \
         UPDATE issues SET parent_id = NULL WHERE parent_id = 1001; DELETE FROM issues WHERE id = 1001",
    )
    .await;
    conn.close().await.unwrap();
    let before = sqlite::digest(&mut live, &plan, TENANTS[0]).await.unwrap();
    let e = sqlite::copy(&mut live, &lost, &plan, TENANTS[0]).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SliceError::Refused(_)), "{msg}");
    assert!(msg.contains("1 row(s) of `pins` reference rows of `issues`"), "{msg}");
    assert!(msg.contains("1 row(s) of `stars` reference rows of `issues`"), "{msg}");
    assert_eq!(sqlite::digest(&mut live, &plan, TENANTS[0]).await.unwrap(), before);
    assert_eq!(pins_and_stars(&mut live).await, outside);
    assert_eq!(foreign_keys_pragma(&mut live).await, 1, "enforcement is back after a refusal");
    let e = sqlx::query("INSERT INTO pins VALUES (3, 424242)").execute(&mut live).await;
    assert!(e.is_err(), "the connection enforces foreign keys again");
    live.close().await.unwrap();
}

/// A copy from a source without the tenant's root row would only delete: refused first.
#[tokio::test]
async fn an_empty_source_slice_is_refused() {
    let f = fixture().await;
    let plan = sites_plan(&f.schema);
    let opts = SqliteConnectOptions::new().filename(&f.live).foreign_keys(false);
    let mut live = SqliteConnection::connect_with(&opts).await.unwrap();
    let site = "only-live";
    exec(
        &mut live,
        "INSERT INTO sites (id, name) VALUES ('only-live', 'new'); \
         INSERT INTO projects (site_id, name) VALUES ('only-live', 'new')",
    )
    .await;
    let before = sqlite::digest(&mut live, &plan, site).await.unwrap();
    assert_eq!((before.tables[0].rows, before.tables[1].rows), (1, 1));
    let e = sqlite::copy(&mut live, &f.backup, &plan, site).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "the source has no `sites` row with `id` = only-live: nothing to restore; nothing was deleted"
    );
    assert_eq!(sqlite::digest(&mut live, &plan, site).await.unwrap(), before, "nothing deleted");
    assert_eq!(foreign_keys_pragma(&mut live).await, 0, "left as it was");
}

/// A root key declared without a type (`id PRIMARY KEY`) holding integers: the tenant id is
/// bound as an integer, or it would match nothing.
#[tokio::test]
async fn an_untyped_integer_root_key_is_matched() {
    let dir = tempfile::tempdir().unwrap();
    let live_path = dir.path().join("live.db");
    let mut live = open(&live_path).await;
    exec(
        &mut live,
        "CREATE TABLE orgs (id PRIMARY KEY, name TEXT); \
         CREATE TABLE teams (id INTEGER PRIMARY KEY, org_id NOT NULL REFERENCES orgs(id), name TEXT); \
         INSERT INTO orgs VALUES (5, 'five'), (6, 'six'); \
         INSERT INTO teams (org_id, name) VALUES (5, 'a'), (5, 'b'), (6, 'c')",
    )
    .await;
    let schema = sqlite::schema(&mut live, "main").await.unwrap();
    live.close().await.unwrap();
    let backup = copy_file(&live_path, "backup.db");
    assert_eq!(schema.tables["orgs"].columns[0].data_type, "");
    let plan = SlicePlan {
        engine: rewind_slice::Engine::Sqlite,
        root: Some(RootKey { table: "orgs".into(), column: "id".into(), data_type: String::new() }),
        tables: vec![
            table(&schema, "orgs", vec![Via::Root { column: "id".into() }], &["orgs"]),
            table(&schema, "teams", vec![fk(&schema, "teams", &["org_id"])], &["teams", "orgs"]),
        ],
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    };
    let mut live = open(&live_path).await;
    exec(&mut live, "DELETE FROM teams WHERE org_id = 5; DELETE FROM orgs WHERE id = 5").await;
    let report = sqlite::copy(&mut live, &backup, &plan, "5").await.unwrap();
    let counts: Vec<(u64, u64)> = report.tables.iter().map(|t| (t.deleted, t.inserted)).collect();
    assert_eq!(counts, [(0, 1), (0, 2)]);
    let mut src = open(&backup).await;
    assert_eq!(
        sqlite::digest(&mut live, &plan, "5").await.unwrap(),
        sqlite::digest(&mut src, &plan, "5").await.unwrap()
    );
    // "05" is not how the integer is written: text, found nowhere, refused.
    let e = sqlite::copy(&mut live, &backup, &plan, "05").await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert_eq!(sqlite::digest(&mut live, &plan, "6").await.unwrap().tables[1].rows, 1);
}
