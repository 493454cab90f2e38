//! SQLite: restore as a new tenant (`as`), on temporary files.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;

use rewind_slice::remap::{self, NewTenant, RemapPlan};
use rewind_slice::{Request, Schema, SliceDigest, SliceError, SlicePlan, sqlite};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// uuid keys (users, comments), integer keys (projects with AUTOINCREMENT, issues,
/// attachment_views), a self-reference, a composite key and foreign key, a text tenant key.
const SCHEMA: &str = "
CREATE TABLE sites (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE users (id UUID PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id), email TEXT NOT NULL);
CREATE TABLE projects (id INTEGER PRIMARY KEY AUTOINCREMENT, site_id TEXT NOT NULL REFERENCES sites(id),
  owner_id UUID REFERENCES users(id), name TEXT NOT NULL);
CREATE TABLE issues (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
  parent_id INTEGER REFERENCES issues(id), title TEXT NOT NULL);
CREATE TABLE comments (id UUID PRIMARY KEY, issue_id INTEGER NOT NULL REFERENCES issues(id), body TEXT);
CREATE TABLE attachments (comment_id UUID NOT NULL REFERENCES comments(id), seq INTEGER NOT NULL,
  name TEXT NOT NULL, PRIMARY KEY (comment_id, seq));
CREATE TABLE attachment_views (id INTEGER PRIMARY KEY, comment_id UUID NOT NULL, seq INTEGER NOT NULL,
  viewer_id UUID REFERENCES users(id), FOREIGN KEY (comment_id, seq) REFERENCES attachments(comment_id, seq));
";

const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const NEW: &str = "acme-restored";

fn uuid(kind: u32, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// The same rows for every file: tenant `k`'s ids derived from `k`.
fn rows() -> String {
    let mut sql = String::new();
    for (k, site) in TENANTS.iter().enumerate() {
        sql.push_str(&format!("INSERT INTO sites VALUES ('{site}', 'site {k}');\n"));
        for u in 0..2 {
            sql.push_str(&format!(
                "INSERT INTO users VALUES ('{}', '{site}', 'u{u}@{site}');\n",
                uuid(1, k * 10 + u)
            ));
        }
        for p in 0..2 {
            let project = k * 10 + p + 1;
            let owner = if p == 0 { format!("'{}'", uuid(1, k * 10)) } else { "NULL".into() };
            sql.push_str(&format!(
                "INSERT INTO projects VALUES ({project}, '{site}', {owner}, 'p{p}');\n"
            ));
            for i in 0..3 {
                let issue = project * 100 + i;
                let parent = if i > 0 { (project * 100).to_string() } else { "NULL".into() };
                sql.push_str(&format!(
                    "INSERT INTO issues VALUES ({issue}, {project}, {parent}, 'issue ''{i}');\n"
                ));
                let comment = uuid(2, issue);
                sql.push_str(&format!(
                    "INSERT INTO comments VALUES ('{comment}', {issue}, 'body {i}');\n"
                ));
                for s in 0..2 {
                    sql.push_str(&format!(
                        "INSERT INTO attachments VALUES ('{comment}', {s}, 'f{s}');\n\
                         INSERT INTO attachment_views (comment_id, seq, viewer_id) VALUES ('{comment}', {s}, '{}');\n",
                        uuid(1, k * 10 + 1)
                    ));
                }
            }
        }
    }
    sql
}

async fn open(path: &Path) -> SqliteConnection {
    let opts = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    SqliteConnection::connect_with(&opts).await.unwrap()
}

async fn exec(conn: &mut SqliteConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(conn: &mut SqliteConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every row of `table`, each cell `quote()`d, sorted.
async fn table_rows(conn: &mut SqliteConnection, schema: &Schema, table: &str) -> Vec<String> {
    let cells: Vec<String> =
        schema.tables[table].columns.iter().map(|c| format!("quote(\"{}\")", c.name)).collect();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM \"{table}\" ORDER BY 1",
        cells.join(" || ',' || ")
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

async fn all_rows(conn: &mut SqliteConnection, schema: &Schema) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for t in schema.tables.keys().filter(|t| *t != "rewind_key_map") {
        out.push(table_rows(conn, schema, t).await);
    }
    out
}

async fn digests(conn: &mut SqliteConnection, plan: &SlicePlan) -> Vec<SliceDigest> {
    let mut out = Vec::new();
    for t in TENANTS {
        out.push(sqlite::digest(conn, plan, t).await.unwrap());
    }
    out
}

struct Files {
    _dir: tempfile::TempDir,
    backup: std::path::PathBuf,
    live: SqliteConnection,
    schema: Schema,
    plan: SlicePlan,
    remap: RemapPlan,
}

async fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let mut b = open(&backup).await;
    exec(&mut b, SCHEMA).await;
    exec(&mut b, &rows()).await;
    let schema = sqlite::schema(&mut b, "main").await.unwrap();
    b.close().await.unwrap();
    let mut live = open(&dir.path().join("live.db")).await;
    exec(&mut live, SCHEMA).await;
    exec(&mut live, &rows()).await;
    let request = Request { root: Some("sites".into()), ..Request::default() };
    let plan = rewind_slice::plan::plan(&schema, &request).unwrap();
    let remap = remap::plan(&schema, &plan).unwrap();
    Files { _dir: dir, backup, live, schema, plan, remap }
}

#[tokio::test]
async fn a_tenant_restored_as_a_new_tenant_equals_the_old_one_modulo_the_map() {
    let Files { _dir, backup, mut live, schema, plan, remap } = files().await;
    let kinds: Vec<(&str, remap::KeyKind)> =
        remap.owners.iter().map(|o| (o.table.as_str(), o.kind)).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    let before = digests(&mut live, &plan).await;
    let whole_before = all_rows(&mut live, &schema).await;

    let new = NewTenant { id: NEW, remap: &remap };
    let report = sqlite::copy_as(&mut live, &backup, &plan, "acme", new).await.unwrap();
    let inserted: u64 = report.tables.iter().map(|t| t.inserted).sum();
    assert_eq!(inserted, 1 + 2 + 2 + 6 + 6 + 12 + 12, "{report:?}");
    assert_eq!(report.tables.iter().map(|t| t.deleted).sum::<u64>(), 0);

    // The old tenant and every other tenant are untouched; every old row is still there.
    assert_eq!(digests(&mut live, &plan).await, before);
    let whole_after = all_rows(&mut live, &schema).await;
    for (b, a) in whole_before.iter().zip(&whole_after) {
        assert!(b.iter().all(|r| a.contains(r)));
    }
    // The new tenant's slice is the old one's through the map.
    let maps = sqlite::key_maps(&mut live, NEW).await.unwrap();
    let mut b = open(&backup).await;
    let expected = sqlite::digest_as(&mut b, &plan, "acme", new, &maps).await.unwrap();
    let restored = sqlite::digest(&mut live, &plan, NEW).await.unwrap();
    assert_eq!(restored, expected);
    assert_eq!(restored.tables.iter().map(|t| t.rows).sum::<u64>(), inserted);

    // Keys: uuid by the rule, integers after every existing one, references inside the new
    // tenant, nothing dangling.
    let user = remap::new_uuid(NEW, "users", &uuid(1, 0));
    let q = |sql: &str| sql.replace("$NEW", &format!("'{NEW}'"));
    assert_eq!(
        scalar(
            &mut live,
            &q(&format!("SELECT count(*) FROM users WHERE id = '{user}' AND site_id = $NEW"))
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&mut live, &q("SELECT count(*) FROM projects WHERE site_id = $NEW AND id <= 22"))
            .await,
        0
    );
    assert_eq!(
        scalar(
            &mut live,
            &q("SELECT count(*) FROM issues i JOIN issues p ON p.id = i.parent_id \
            JOIN projects pp ON pp.id = p.project_id JOIN projects ip ON ip.id = i.project_id \
            WHERE ip.site_id = $NEW AND pp.site_id = $NEW")
        )
        .await,
        4
    );
    assert_eq!(
        scalar(
            &mut live,
            &q("SELECT count(*) FROM attachment_views v \
            JOIN attachments a ON a.comment_id = v.comment_id AND a.seq = v.seq \
            JOIN comments c ON c.id = a.comment_id JOIN issues i ON i.id = c.issue_id \
            JOIN projects p ON p.id = i.project_id JOIN users u ON u.id = v.viewer_id \
            WHERE p.site_id = $NEW AND u.site_id = $NEW")
        )
        .await,
        12
    );
    assert_eq!(scalar(&mut live, "SELECT count(*) FROM pragma_foreign_key_check").await, 0);
    assert_eq!(
        scalar(&mut live, "SELECT count(*) FROM rewind_key_map WHERE tbl <> ''").await,
        2 + 6 + 12
    );
    assert_eq!(scalar(&mut live, "SELECT count(*) FROM sqlite_temp_schema").await, 0);

    // Again: the same rows, the same keys.
    let again = sqlite::copy_as(&mut live, &backup, &plan, "acme", new).await.unwrap();
    assert_eq!(again.tables.iter().map(|t| t.deleted).sum::<u64>(), inserted);
    assert_eq!(all_rows(&mut live, &schema).await, whole_after);
    assert_eq!(digests(&mut live, &plan).await, before);

    // A change shows in the remap-aware digest.
    exec(&mut live, &q("UPDATE users SET email = 'x' WHERE site_id = $NEW AND email LIKE 'u0%'"))
        .await;
    assert_ne!(sqlite::digest(&mut live, &plan, NEW).await.unwrap(), expected);
}

#[tokio::test]
async fn refusals_name_what_cannot_be_restored_as_new_and_write_nothing() {
    let Files { _dir, backup, mut live, schema, plan, remap } = files().await;
    let before = all_rows(&mut live, &schema).await;
    let same = NewTenant { id: "acme", remap: &remap };
    let e = sqlite::copy_as(&mut live, &backup, &plan, "acme", same).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)) && e.to_string().contains("itself"), "{e}");
    assert_eq!(all_rows(&mut live, &schema).await, before);

    // A text key holding a value that is not a uuid: refused at the copy, naming it.
    let mut b = open(&backup).await;
    let labels =
        "CREATE TABLE labels (code TEXT PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id))";
    exec(&mut b, labels).await;
    exec(&mut b, "INSERT INTO labels VALUES ('bug', 'acme')").await;
    exec(&mut live, labels).await;
    let live_schema = sqlite::schema(&mut live, "main").await.unwrap();
    let before = all_rows(&mut live, &live_schema).await;
    let schema = sqlite::schema(&mut b, "main").await.unwrap();
    let request = Request { root: Some("sites".into()), ..Request::default() };
    let plan = rewind_slice::plan::plan(&schema, &request).unwrap();
    let remap = remap::plan(&schema, &plan).unwrap();
    let new = NewTenant { id: NEW, remap: &remap };
    let e = sqlite::copy_as(&mut live, &backup, &plan, "acme", new).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert!(e.to_string().contains("`labels`.`code`") && e.to_string().contains("\"bug\""), "{e}");
    assert_eq!(all_rows(&mut live, &live_schema).await, before, "nothing was written");

    // A key type that cannot be remapped.
    exec(&mut b, "DROP TABLE labels; CREATE TABLE tags (n REAL PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id))").await;
    let schema = sqlite::schema(&mut b, "main").await.unwrap();
    let plan = rewind_slice::plan::plan(&schema, &request).unwrap();
    let e = remap::plan(&schema, &plan).unwrap_err();
    assert!(e.to_string().contains("`tags`.`n` is `REAL`"), "{e}");
}

/// The sandbox's shape: every id a uuid stored as TEXT (one in upper case).
const TEXT_SCHEMA: &str = "
CREATE TABLE sites (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE docs (id TEXT PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id),
  parent_id TEXT REFERENCES docs(id), title TEXT NOT NULL);
INSERT INTO sites VALUES ('acme', 'a'), ('beta', 'b');
INSERT INTO docs VALUES ('A0000000-0000-4000-8000-000000000001', 'acme', NULL, 'root'),
  ('a0000000-0000-4000-8000-000000000002', 'acme', 'A0000000-0000-4000-8000-000000000001', 'child'),
  ('b0000000-0000-4000-8000-000000000001', 'beta', NULL, 'other');
";

#[tokio::test]
async fn text_uuid_keys_are_remapped_as_lowercase_uuids() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let mut b = open(&backup).await;
    exec(&mut b, TEXT_SCHEMA).await;
    let schema = sqlite::schema(&mut b, "main").await.unwrap();
    let mut live = open(&dir.path().join("live.db")).await;
    exec(&mut live, TEXT_SCHEMA).await;
    let request = Request { root: Some("sites".into()), ..Request::default() };
    let plan = rewind_slice::plan::plan(&schema, &request).unwrap();
    let remap = remap::plan(&schema, &plan).unwrap();
    assert_eq!(remap.owners.len(), 1);
    assert_eq!(
        (remap.owners[0].table.as_str(), remap.owners[0].kind),
        ("docs", remap::KeyKind::Uuid)
    );
    let before = all_rows(&mut live, &schema).await;
    let new = NewTenant { id: NEW, remap: &remap };
    for _ in 0..2 {
        let report = sqlite::copy_as(&mut live, &backup, &plan, "acme", new).await.unwrap();
        assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 3);
    }
    let root = remap::new_uuid(NEW, "docs", "a0000000-0000-4000-8000-000000000001");
    assert_eq!(root, root.to_lowercase());
    assert_eq!(
        scalar(
            &mut live,
            &format!(
                "SELECT count(*) FROM docs c JOIN docs p ON p.id = c.parent_id \
            WHERE p.id = '{root}' AND c.site_id = '{NEW}' AND p.title = 'root'"
            )
        )
        .await,
        1
    );
    let now = all_rows(&mut live, &schema).await;
    for (old, now) in before.iter().zip(&now) {
        assert!(old.iter().all(|r| now.contains(r)));
    }
    let maps = sqlite::key_maps(&mut live, NEW).await.unwrap();
    let expected = sqlite::digest_as(&mut b, &plan, "acme", new, &maps).await.unwrap();
    assert_eq!(sqlite::digest(&mut live, &plan, NEW).await.unwrap(), expected);
}

#[tokio::test]
async fn as_an_existing_tenant_is_refused_and_leaves_its_rows_untouched() {
    let Files { _dir, backup, mut live, schema, plan, remap } = files().await;
    let before = all_rows(&mut live, &schema).await;
    // `as` names "beta", which lives on the destination: its rows are not the copy's.
    let other = NewTenant { id: "beta", remap: &remap };
    let e = sqlite::copy_as(&mut live, &backup, &plan, "acme", other).await.unwrap_err();
    assert!(matches!(e, SliceError::Refused(_)), "{e}");
    assert!(e.to_string().contains("already has"), "{e}");
    assert_eq!(all_rows(&mut live, &schema).await, before);
    // A new tenant the copy made is replaced again, as before.
    let new = NewTenant { id: NEW, remap: &remap };
    for _ in 0..2 {
        sqlite::copy_as(&mut live, &backup, &plan, "acme", new).await.unwrap();
    }
    assert_eq!(
        digests(&mut live, &plan).await[1],
        sqlite::digest(&mut open(&backup).await, &plan, "beta").await.unwrap()
    );
}
