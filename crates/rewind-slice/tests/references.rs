//! Declared references (`Request::references`): a schema without FOREIGN KEY constraints, its
//! references logical, restored as a new tenant on SQLite (temporary files), PostgreSQL
//! (fresh schemas at `REWIND_TEST_POSTGRES`) and MariaDB (fresh databases at
//! `REWIND_TEST_MARIADB`). One scenario, run on each engine; the restored references are
//! checked with plain SQL joins.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures::FutureExt;
use rewind_slice::plan::Reference;
use rewind_slice::remap::{self, NewTenant, RemapPlan};
use rewind_slice::{CopyReport, Request, Schema, SliceDigest, SliceError, SlicePlan, Via};
use rewind_slice::{mysql, pg, sqlite};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection, PgConnection, Row, SqliteConnection};

/// Text uuid keys, a `site_id` holding the tenant in every table (the root's too), and no
/// foreign key: `issues.project_id`, `issues.parent_id` (nullable, a self-reference),
/// `comments.issue_id` and `attachments(issue_id, comment_id)` (composite) are references only
/// by name. `{key}` and `{text}` are the engine's types.
const SCHEMA: &str = "
CREATE TABLE sites (id {key} PRIMARY KEY, site_id {key} NOT NULL, name {text} NOT NULL);
CREATE TABLE projects (id {key} PRIMARY KEY, site_id {key} NOT NULL, name {text} NOT NULL);
CREATE TABLE issues (id {key} PRIMARY KEY, site_id {key} NOT NULL, project_id {key} NOT NULL,
  parent_id {key} NULL, title {text} NOT NULL);
CREATE TABLE comments (id {key} PRIMARY KEY, site_id {key} NOT NULL, issue_id {key} NOT NULL,
  body {text});
CREATE TABLE attachments (id {key} PRIMARY KEY, site_id {key} NOT NULL, issue_id {key} NOT NULL,
  comment_id {key} NOT NULL, name {text} NOT NULL);
";

const TABLES: [&str; 5] = ["sites", "projects", "issues", "comments", "attachments"];

const REFERENCES: [&str; 4] = [
    "issues(project_id) -> projects(id)",
    "issues(parent_id) -> issues(id)",
    "comments(issue_id) -> issues(id)",
    "attachments(issue_id, comment_id) -> comments(issue_id, id)",
];

/// Three tenants; the first is restored as [`NEW`], then as [`PLAIN`] without references.
const TENANTS: [&str; 3] = [
    "5a000000-0000-4000-8000-00000000000a",
    "5a000000-0000-4000-8000-00000000000b",
    "5a000000-0000-4000-8000-00000000000c",
];
const OLD: &str = TENANTS[0];
const NEW: &str = "5a000000-0000-4000-8000-0000000000ff";
const PLAIN: &str = "5a000000-0000-4000-8000-0000000000ee";

/// A key of kind `kind` (1 project, 2 issue, 3 comment, 4 attachment) for tenant `k`.
fn key(kind: u32, k: usize, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{:012x}", k * 1000 + n)
}

/// Per tenant: 2 projects, 3 issues each (the 2nd and 3rd children of the 1st), a comment per
/// issue and an attachment per comment; names differ within a tenant, repeat across tenants.
fn rows() -> String {
    let mut sql = String::new();
    for (k, site) in TENANTS.iter().enumerate() {
        sql.push_str(&format!("INSERT INTO sites VALUES ('{site}', '{site}', 'site {k}');\n"));
        for p in 0..2 {
            let project = key(1, k, p);
            sql.push_str(&format!(
                "INSERT INTO projects VALUES ('{project}', '{site}', 'project {p}');\n"
            ));
            for i in 0..3 {
                let issue = key(2, k, p * 10 + i);
                let parent =
                    if i > 0 { format!("'{}'", key(2, k, p * 10)) } else { "NULL".to_owned() };
                let comment = key(3, k, p * 10 + i);
                sql.push_str(&format!(
                    "INSERT INTO issues VALUES ('{issue}', '{site}', '{project}', {parent}, 'issue {p}.{i}');\n\
                     INSERT INTO comments VALUES ('{comment}', '{site}', '{issue}', 'comment on {p}.{i}');\n\
                     INSERT INTO attachments VALUES ('{}', '{site}', '{issue}', '{comment}', 'file {p}.{i}');\n",
                    key(4, k, p * 10 + i)
                ));
            }
        }
    }
    sql
}

// ---------------------------------------------------------------------------------------------
// One connection of any engine.

enum Conn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
    My(MySqlConnection),
}

impl Conn {
    async fn exec(&mut self, sql: &str) {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        let r = match self {
            Self::Sqlite(c) => q.execute(c).await.map(drop),
            Self::Pg(c) => q.execute(c).await.map(drop),
            Self::My(c) => q.execute(c).await.map(drop),
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn count(&mut self, sql: &str) -> i64 {
        macro_rules! q {
            () => {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
            };
        }
        let r = match self {
            Self::Sqlite(c) => q!().fetch_one(c).await,
            Self::Pg(c) => q!().fetch_one(c).await,
            Self::My(c) => q!().fetch_one(c).await,
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The rows of a query whose every column is text, sorted.
    async fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        macro_rules! q {
            () => {
                sqlx::query(AssertSqlSafe(sql.to_owned()))
            };
        }
        let fail = |e: sqlx::Error| -> ! { panic!("{sql}: {e}") };
        let mut out: Vec<Vec<Option<String>>> = match self {
            Self::Sqlite(c) => q!()
                .fetch_all(c)
                .await
                .unwrap_or_else(|e| fail(e))
                .iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap()).collect())
                .collect(),
            Self::Pg(c) => q!()
                .fetch_all(c)
                .await
                .unwrap_or_else(|e| fail(e))
                .iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap()).collect())
                .collect(),
            Self::My(c) => q!()
                .fetch_all(c)
                .await
                .unwrap_or_else(|e| fail(e))
                .iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap()).collect())
                .collect(),
        };
        out.sort();
        out
    }

    /// The one text value a query returns.
    async fn text(&mut self, sql: &str) -> String {
        let mut rows = self.rows(sql).await;
        assert_eq!(rows.len(), 1, "{sql}");
        rows.remove(0).remove(0).unwrap()
    }

    async fn schema(&mut self) -> Schema {
        match self {
            Self::Sqlite(c) => sqlite::schema(c, "main").await,
            Self::Pg(c) => pg::schema(c).await,
            Self::My(c) => mysql::schema(c).await,
        }
        .unwrap()
    }

    async fn digest(&mut self, plan: &SlicePlan, tenant: &str) -> SliceDigest {
        match self {
            Self::Sqlite(c) => sqlite::digest(c, plan, tenant).await,
            Self::Pg(c) => pg::digest(c, plan, tenant).await,
            Self::My(c) => mysql::digest(c, plan, tenant).await,
        }
        .unwrap()
    }

    async fn key_maps(&mut self, new: &str) -> BTreeMap<String, HashMap<String, String>> {
        match self {
            Self::Sqlite(c) => sqlite::key_maps(c, new).await,
            Self::Pg(c) => pg::key_maps(c, new).await,
            Self::My(c) => mysql::key_maps(c, new).await,
        }
        .unwrap()
    }

    async fn digest_as(
        &mut self,
        plan: &SlicePlan,
        tenant: &str,
        new: NewTenant<'_>,
        maps: &BTreeMap<String, HashMap<String, String>>,
    ) -> SliceDigest {
        match self {
            Self::Sqlite(c) => sqlite::digest_as(c, plan, tenant, new, maps).await,
            Self::Pg(c) => pg::digest_as(c, plan, tenant, new, maps).await,
            Self::My(c) => mysql::digest_as(c, plan, tenant, new, maps).await,
        }
        .unwrap()
    }
}

/// A backup and a live store of one engine, loaded alike.
struct Pair {
    backup: Conn,
    live: Conn,
    /// SQLite: the backup's file (a copy attaches it).
    backup_file: Option<PathBuf>,
}

impl Pair {
    async fn load(&mut self, key_type: &str, text_type: &str) {
        let ddl = SCHEMA.replace("{key}", key_type).replace("{text}", text_type);
        let rows = rows();
        for conn in [&mut self.backup, &mut self.live] {
            for statement in ddl.split(';').chain(rows.split(";\n")) {
                if !statement.trim().is_empty() {
                    conn.exec(statement).await;
                }
            }
        }
    }

    /// Copies `tenant`'s slice from backup to live, as `new` when given.
    async fn copy(
        &mut self,
        plan: &SlicePlan,
        tenant: &str,
        new: Option<NewTenant<'_>>,
    ) -> Result<CopyReport, SliceError> {
        match (&mut self.backup, &mut self.live, new) {
            (Conn::Sqlite(_), Conn::Sqlite(live), new) => {
                let file = self.backup_file.as_ref().unwrap();
                match new {
                    Some(n) => sqlite::copy_as(live, file, plan, tenant, n).await,
                    None => sqlite::copy(live, file, plan, tenant).await,
                }
            }
            (Conn::Pg(src), Conn::Pg(dst), Some(n)) => pg::copy_as(src, dst, plan, tenant, n).await,
            (Conn::Pg(src), Conn::Pg(dst), None) => pg::copy(src, dst, plan, tenant).await,
            (Conn::My(src), Conn::My(dst), Some(n)) => {
                mysql::copy_as(src, dst, plan, tenant, n).await
            }
            (Conn::My(src), Conn::My(dst), None) => mysql::copy(src, dst, plan, tenant).await,
            _ => unreachable!("one engine per pair"),
        }
    }

    /// Every row of every table, as text, sorted per table.
    async fn whole(&mut self) -> Vec<Vec<Vec<Option<String>>>> {
        let mut out = Vec::new();
        for t in TABLES {
            out.push(self.live.rows(&format!("SELECT * FROM {t}")).await);
        }
        out
    }
}

fn references() -> Vec<Reference> {
    REFERENCES
        .iter()
        .map(|r| {
            let (left, right) = r.split_once(" -> ").unwrap();
            let side = |s: &str| {
                let (table, cols) = s.trim_end_matches(')').split_once('(').unwrap();
                (table.to_owned(), cols.split(", ").map(str::to_owned).collect::<Vec<_>>())
            };
            let ((child, columns), (parent, parent_columns)) = (side(left), side(right));
            Reference { child, columns, parent, parent_columns }
        })
        .collect()
}

/// The slice: the root `sites`, the other tables by `site_id`, with or without the declared
/// references.
fn request(declared: bool) -> Request {
    Request {
        root: Some("sites".into()),
        tables: TABLES[1..].iter().map(|t| (*t).to_owned()).collect(),
        tenant_column: Some("site_id".into()),
        exclude: Vec::new(),
        references: if declared { references() } else { Vec::new() },
    }
}

fn planned(schema: &Schema, declared: bool) -> (SlicePlan, RemapPlan) {
    let plan = rewind_slice::plan::plan(schema, &request(declared)).unwrap();
    let remap = remap::plan(schema, &plan).unwrap();
    (plan, remap)
}

/// Joins that hold only when every reference of `tenant`'s slice points into that slice: per
/// reference, the rows whose parent is not a row of the same tenant.
async fn dangling(live: &mut Conn, tenant: &str) -> Vec<i64> {
    let t = format!("'{tenant}'");
    let checks = [
        format!(
            "SELECT count(*) FROM issues i WHERE i.site_id = {t} AND NOT EXISTS \
             (SELECT 1 FROM projects p WHERE p.id = i.project_id AND p.site_id = {t})"
        ),
        format!(
            "SELECT count(*) FROM issues i WHERE i.site_id = {t} AND i.parent_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM issues p WHERE p.id = i.parent_id AND p.site_id = {t})"
        ),
        format!(
            "SELECT count(*) FROM comments c WHERE c.site_id = {t} AND NOT EXISTS \
             (SELECT 1 FROM issues i WHERE i.id = c.issue_id AND i.site_id = {t})"
        ),
        format!(
            "SELECT count(*) FROM attachments a WHERE a.site_id = {t} AND NOT EXISTS \
             (SELECT 1 FROM comments c WHERE c.issue_id = a.issue_id AND c.id = a.comment_id \
              AND c.site_id = {t})"
        ),
    ];
    let mut out = Vec::new();
    for sql in checks {
        out.push(live.count(&sql).await);
    }
    out
}

/// `tenant`'s slice with every key replaced by what it points at, through joins that stay
/// inside the tenant: equal for two tenants exactly when their slices are equal modulo keys.
async fn shape(live: &mut Conn, tenant: &str) -> Vec<Vec<Vec<Option<String>>>> {
    let t = format!("'{tenant}'");
    vec![
        live.rows(&format!("SELECT name FROM sites WHERE id = {t} AND site_id = {t}")).await,
        live.rows(&format!("SELECT name FROM projects WHERE site_id = {t}")).await,
        live.rows(&format!(
            "SELECT p.name, i.title, pi.title FROM issues i \
             JOIN projects p ON p.id = i.project_id AND p.site_id = i.site_id \
             LEFT JOIN issues pi ON pi.id = i.parent_id AND pi.site_id = i.site_id \
             WHERE i.site_id = {t}"
        ))
        .await,
        live.rows(&format!(
            "SELECT i.title, c.body, a.name FROM attachments a \
             JOIN comments c ON c.issue_id = a.issue_id AND c.id = a.comment_id \
               AND c.site_id = a.site_id \
             JOIN issues i ON i.id = c.issue_id AND i.site_id = c.site_id \
             WHERE a.site_id = {t}"
        ))
        .await,
    ]
}

/// The rows of every table but `tenant`'s (by `site_id`, which every table has).
fn without(whole: &[Vec<Vec<Option<String>>>], tenant: &str) -> Vec<Vec<Vec<Option<String>>>> {
    whole
        .iter()
        .map(|rows| {
            rows.iter().filter(|r| r[1].as_deref() != Some(tenant)).cloned().collect::<Vec<_>>()
        })
        .collect()
}

/// The scenario, on a loaded pair.
async fn restore_as_with_declared_references(p: &mut Pair) {
    let schema = p.backup.schema().await;
    assert!(
        schema.tables.values().all(|t| t.foreign_keys.is_empty()),
        "the catalog has no foreign key"
    );
    let (plan, remap) = planned(&schema, true);
    let issues = plan.table("issues").unwrap();
    assert_eq!(issues.via, [Via::TenantColumn { column: "site_id".into() }]);
    let order: Vec<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(order, TABLES, "parents first, by the declared references");
    let owners: Vec<&str> = remap.owners.iter().map(|o| o.table.as_str()).collect();
    assert_eq!(owners, ["projects", "issues", "comments", "attachments"]);

    let before = p.whole().await;
    let mut others_before = Vec::new();
    for t in TENANTS {
        others_before.push(p.live.digest(&plan, t).await);
    }
    let new = NewTenant { id: NEW, remap: &remap };
    let report = p.copy(&plan, OLD, Some(new)).await.unwrap();
    assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 1 + 2 + 6 + 6 + 6);
    assert_eq!(report.tables.iter().map(|t| t.deleted).sum::<u64>(), 0);

    // The old tenant and the others are byte-identical.
    let after = p.whole().await;
    assert_eq!(without(&after, NEW), before);
    for (t, digest) in TENANTS.iter().zip(&others_before) {
        assert_eq!(&p.live.digest(&plan, t).await, digest, "{t}");
    }
    // Every reference of the new slice points into it; the root's `site_id` is the new id
    // too; the new slice is the old one modulo keys, and every key is new.
    assert_eq!(dangling(&mut p.live, NEW).await, [0, 0, 0, 0]);
    assert_eq!(dangling(&mut p.live, OLD).await, [0, 0, 0, 0]);
    assert_eq!(
        p.live
            .count(&format!("SELECT count(*) FROM sites WHERE id = '{NEW}' AND site_id = '{NEW}'"))
            .await,
        1
    );
    assert_eq!(
        p.live
            .count(&format!(
                "SELECT count(*) FROM issues WHERE site_id = '{NEW}' AND parent_id IS NOT NULL"
            ))
            .await,
        4
    );
    let old_shape = shape(&mut p.live, OLD).await;
    assert_eq!(old_shape.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 6, 6]);
    assert_eq!(shape(&mut p.live, NEW).await, old_shape);
    for t in &TABLES[1..] {
        let shared = p
            .live
            .count(&format!(
                "SELECT count(*) FROM {t} n JOIN {t} o ON o.id = n.id WHERE n.site_id = '{NEW}' AND o.site_id = '{OLD}'"
            ))
            .await;
        assert_eq!(shared, 0, "{t}: no key kept");
    }

    // `compare … as` passes: the source's slice through the map is the new tenant's slice.
    let maps = p.live.key_maps(NEW).await;
    let expected = p.backup.digest_as(&plan, OLD, new, &maps).await;
    assert_eq!(p.live.digest(&plan, NEW).await, expected);

    // A retry writes the same rows.
    let report = p.copy(&plan, OLD, Some(new)).await.unwrap();
    assert_eq!(report.tables.iter().map(|t| t.deleted).sum::<u64>(), 21);
    assert_eq!(p.whole().await, after);

    // A restored reference tampered with fails the compare.
    let old_project = key(1, 0, 0);
    let new_issue = p
        .live
        .text(&format!("SELECT id FROM issues WHERE site_id = '{NEW}' AND title = 'issue 0.1'"))
        .await;
    p.live
        .exec(&format!("UPDATE issues SET project_id = '{old_project}' WHERE id = '{new_issue}'"))
        .await;
    assert_eq!(dangling(&mut p.live, NEW).await, [1, 0, 0, 0]);
    assert_ne!(p.live.digest(&plan, NEW).await, expected);

    // Without the references, the same copy keeps every reference's old value: the new
    // tenant's issues point at the old tenant's projects (why `references` must be declared).
    let (plain, plain_remap) = planned(&schema, false);
    p.copy(&plain, OLD, Some(NewTenant { id: PLAIN, remap: &plain_remap })).await.unwrap();
    assert_eq!(dangling(&mut p.live, PLAIN).await, [6, 4, 6, 6]);
    let to_old = p
        .live
        .count(&format!(
            "SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id \
             WHERE i.site_id = '{PLAIN}' AND p.site_id = '{OLD}'"
        ))
        .await;
    assert_eq!(to_old, 6);
}

/// A declared reference is no constraint: a restored row whose reference points at no row is
/// copied as it is, as itself and as a new tenant (where its value, in no map, is kept); no
/// engine's own reference check (PostgreSQL's and MariaDB's read the destination's catalog,
/// SQLite's `pragma_foreign_key_check`) sees it.
async fn a_declared_reference_is_never_checked(p: &mut Pair) {
    let nowhere = "00000000-0000-4000-8000-00000000dead";
    p.backup
        .exec(&format!(
            "INSERT INTO issues VALUES ('{}', '{OLD}', '{nowhere}', NULL, 'orphan')",
            key(2, 0, 99)
        ))
        .await;
    let schema = p.backup.schema().await;
    let (plan, remap) = planned(&schema, true);
    let report = p.copy(&plan, OLD, None).await.unwrap();
    assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 22);
    let new = NewTenant { id: NEW, remap: &remap };
    p.copy(&plan, OLD, Some(new)).await.unwrap();
    for tenant in [OLD, NEW] {
        let orphans = format!(
            "SELECT count(*) FROM issues WHERE site_id = '{tenant}' AND project_id = '{nowhere}'"
        );
        assert_eq!(p.live.count(&orphans).await, 1, "{tenant}");
    }
    assert_eq!(dangling(&mut p.live, NEW).await, [1, 0, 0, 0]);
}

// ---------------------------------------------------------------------------------------------
// Per engine.

async fn on_sqlite(body: impl AsyncFnOnce(&mut Pair)) {
    let dir = tempfile::tempdir().unwrap();
    let open = async |name: &str| {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join(name))
            .create_if_missing(true);
        SqliteConnection::connect_with(&opts).await.unwrap()
    };
    let mut p = Pair {
        backup: Conn::Sqlite(open("backup.db").await),
        live: Conn::Sqlite(open("live.db").await),
        backup_file: Some(dir.path().join("backup.db")),
    };
    p.load("TEXT", "TEXT").await;
    body(&mut p).await;
}

async fn on_postgres(test: &str, body: impl AsyncFnOnce(&mut Pair)) {
    let Some(base) = rewind_testkit::postgres_url(test) else { return };
    let backup = rewind_testkit::PgSchema::create(&base).await;
    let live = rewind_testkit::PgSchema::create(&base).await;
    let outcome = AssertUnwindSafe(async {
        let mut p = Pair {
            backup: Conn::Pg(PgConnection::connect(&backup.url).await.unwrap()),
            live: Conn::Pg(PgConnection::connect(&live.url).await.unwrap()),
            backup_file: None,
        };
        p.load("text", "text").await;
        body(&mut p).await;
    })
    .catch_unwind()
    .await;
    backup.drop_schema().await;
    live.drop_schema().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn on_mariadb(test: &str, body: impl AsyncFnOnce(&mut Pair)) {
    let Some(base) = rewind_testkit::mariadb_url(test) else { return };
    let backup = rewind_testkit::MyDb::create(&base).await;
    let live = rewind_testkit::MyDb::create(&base).await;
    let outcome = AssertUnwindSafe(async {
        let mut p = Pair {
            backup: Conn::My(MySqlConnection::connect(&backup.url).await.unwrap()),
            live: Conn::My(MySqlConnection::connect(&live.url).await.unwrap()),
            backup_file: None,
        };
        p.load("VARCHAR(36)", "VARCHAR(100)").await;
        body(&mut p).await;
    })
    .catch_unwind()
    .await;
    backup.drop_database().await;
    live.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn sqlite_restores_as_a_new_tenant_through_declared_references() {
    on_sqlite(restore_as_with_declared_references).await;
}

#[tokio::test]
async fn postgres_restores_as_a_new_tenant_through_declared_references() {
    let test = "postgres_restores_as_a_new_tenant_through_declared_references";
    on_postgres(test, restore_as_with_declared_references).await;
}

#[tokio::test]
async fn mariadb_restores_as_a_new_tenant_through_declared_references() {
    let test = "mariadb_restores_as_a_new_tenant_through_declared_references";
    on_mariadb(test, restore_as_with_declared_references).await;
}

#[tokio::test]
async fn sqlite_never_checks_a_declared_reference() {
    on_sqlite(a_declared_reference_is_never_checked).await;
}

#[tokio::test]
async fn postgres_never_checks_a_declared_reference() {
    on_postgres(
        "postgres_never_checks_a_declared_reference",
        a_declared_reference_is_never_checked,
    )
    .await;
}

#[tokio::test]
async fn mariadb_never_checks_a_declared_reference() {
    on_mariadb("mariadb_never_checks_a_declared_reference", a_declared_reference_is_never_checked)
        .await;
}
