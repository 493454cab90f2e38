//! MariaDB/MySQL: restore as a new tenant (`as`), against the server at `REWIND_TEST_MARIADB`.
//! Every test makes its own databases (a "backup" and a "live") and drops them afterwards.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rewind_slice::remap::{self, NewTenant, RemapPlan};
use rewind_slice::{Request, SliceDigest, SliceError, SlicePlan, mysql};
use rewind_testkit::{MyDb, mariadb_url};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

async fn with_two_databases(test: &str, body: impl AsyncFnOnce(String, String)) {
    let Some(base) = mariadb_url(test) else { return };
    let backup = MyDb::create(&base).await;
    let live = MyDb::create(&base).await;
    let outcome = AssertUnwindSafe(body(backup.url.clone(), live.url.clone())).catch_unwind().await;
    backup.drop_database().await;
    live.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn connect(url: &str) -> MySqlConnection {
    MySqlConnection::connect(url).await.expect("connect to MariaDB")
}

async fn exec(conn: &mut MySqlConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(conn: &mut MySqlConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// uuid keys (sites: `UUID`; users: `BINARY(16)`; comments: `CHAR(36)` text), integer
/// AUTO_INCREMENT keys (projects, issues unsigned, attachment_views), a self-reference
/// (issues.parent_id), a composite key and a composite foreign key (attachments,
/// attachment_views), nullable references (projects.owner_id, comments.author_id).
const SCHEMA: &[&str] = &[
    "CREATE TABLE sites (id UUID PRIMARY KEY, name VARCHAR(100) NOT NULL)",
    "CREATE TABLE users (id BINARY(16) PRIMARY KEY, site_id UUID NOT NULL, email VARCHAR(100) NOT NULL, \
       FOREIGN KEY (site_id) REFERENCES sites (id))",
    "CREATE TABLE projects (id BIGINT AUTO_INCREMENT PRIMARY KEY, site_id UUID NOT NULL, \
       owner_id BINARY(16) NULL, name VARCHAR(100) NOT NULL, \
       FOREIGN KEY (site_id) REFERENCES sites (id), FOREIGN KEY (owner_id) REFERENCES users (id))",
    "CREATE TABLE issues (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, project_id BIGINT NOT NULL, \
       parent_id BIGINT UNSIGNED NULL, title TEXT NOT NULL, \
       FOREIGN KEY (project_id) REFERENCES projects (id), FOREIGN KEY (parent_id) REFERENCES issues (id))",
    "CREATE TABLE comments (id CHAR(36) PRIMARY KEY, issue_id BIGINT UNSIGNED NOT NULL, \
       author_id BINARY(16) NULL, body TEXT, \
       FOREIGN KEY (issue_id) REFERENCES issues (id), FOREIGN KEY (author_id) REFERENCES users (id))",
    "CREATE TABLE attachments (comment_id CHAR(36) NOT NULL, seq INT NOT NULL, name VARCHAR(50) NOT NULL, \
       PRIMARY KEY (comment_id, seq), FOREIGN KEY (comment_id) REFERENCES comments (id))",
    "CREATE TABLE attachment_views (id INT AUTO_INCREMENT PRIMARY KEY, comment_id CHAR(36) NOT NULL, \
       seq INT NOT NULL, viewer_id BINARY(16) NULL, \
       FOREIGN KEY (comment_id, seq) REFERENCES attachments (comment_id, seq), \
       FOREIGN KEY (viewer_id) REFERENCES users (id))",
];

const TENANTS: [u32; 3] = [1, 2, 3];

fn id(name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
}

fn site(k: u32) -> String {
    id(&format!("site{k}")).to_string()
}

fn user(k: u32, u: u32) -> Vec<u8> {
    id(&format!("user{k}-{u}")).as_bytes().to_vec()
}

async fn run(conn: &mut MySqlConnection, sql: &str, binds: Vec<Bind>) {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
    for b in binds {
        q = match b {
            Bind::T(s) => q.bind(s),
            Bind::B(v) => q.bind(v),
            Bind::I(n) => q.bind(n),
            Bind::N => q.bind(None::<i64>),
        };
    }
    q.execute(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

enum Bind {
    T(String),
    B(Vec<u8>),
    I(i64),
    N,
}

/// The same rows on every side: ids derived from the tenant number.
async fn load(conn: &mut MySqlConnection) {
    use Bind::{B, I, N, T};
    for sql in SCHEMA {
        exec(conn, sql).await;
    }
    for k in TENANTS {
        let ki = i64::from(k);
        run(conn, "INSERT INTO sites VALUES (?, ?)", vec![T(site(k)), T(format!("site {k}"))])
            .await;
        for u in 1..=2 {
            let sql = "INSERT INTO users VALUES (?, ?, ?)";
            run(conn, sql, vec![B(user(k, u)), T(site(k)), T(format!("u{u}@{k}"))]).await;
        }
        for p in 1..=2 {
            let owner = if p == 1 { B(user(k, 1)) } else { N };
            let sql = "INSERT INTO projects VALUES (?, ?, ?, ?)";
            run(conn, sql, vec![I(ki * 10 + p), T(site(k)), owner, T(format!("p{p}"))]).await;
            for i in 1..=3 {
                let issue = ki * 100 + p * 10 + i;
                let parent = if i > 1 { I(ki * 100 + p * 10 + 1) } else { N };
                let sql = "INSERT INTO issues VALUES (?, ?, ?, ?)";
                run(conn, sql, vec![I(issue), I(ki * 10 + p), parent, T(format!("issue {i}"))])
                    .await;
                let comment = id(&format!("comment{issue}")).to_string();
                let author = if issue % 2 == 0 { B(user(k, 2)) } else { N };
                let sql = "INSERT INTO comments VALUES (?, ?, ?, ?)";
                run(
                    conn,
                    sql,
                    vec![T(comment.clone()), I(issue), author, T(format!("body '{issue}"))],
                )
                .await;
                for s in 1..=2 {
                    let sql = "INSERT INTO attachments VALUES (?, ?, ?)";
                    run(conn, sql, vec![T(comment.clone()), I(s), T(format!("file{s}"))]).await;
                    let sql = "INSERT INTO attachment_views VALUES (?, ?, ?, ?)";
                    let view = ki * 1000 + (p * 10 + i) * 2 + s;
                    run(conn, sql, vec![I(view), T(comment.clone()), I(s), B(user(k, 1))]).await;
                }
            }
        }
    }
}

async fn planned(conn: &mut MySqlConnection) -> (SlicePlan, RemapPlan) {
    let schema = mysql::schema(conn).await.expect("schema");
    let request = Request { root: Some("sites".into()), ..Request::default() };
    let plan = rewind_slice::plan::plan(&schema, &request).expect("plan");
    let remap = remap::plan(&schema, &plan).expect("remap plan");
    (plan, remap)
}

async fn digests(conn: &mut MySqlConnection, plan: &SlicePlan) -> Vec<SliceDigest> {
    let mut out = Vec::new();
    for k in TENANTS {
        out.push(mysql::digest(conn, plan, &site(k)).await.expect("digest"));
    }
    out
}

/// Every row of a table as text, sorted.
async fn table_rows(conn: &mut MySqlConnection, table: &str) -> Vec<String> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let list: Vec<String> =
        cols.iter().map(|c| format!("COALESCE(HEX(CAST(`{c}` AS BINARY)), 'NULL')")).collect();
    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT CONCAT_WS('|', {}) AS r FROM `{table}` ORDER BY r",
        list.join(", ")
    )))
    .fetch_all(&mut *conn)
    .await
    .expect("rows")
}

async fn all_rows(conn: &mut MySqlConnection, plan: &SlicePlan) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for t in &plan.tables {
        v.push(table_rows(conn, &t.name).await);
    }
    v
}

const NEW: &str = "5f0c2b8e-9a4d-4c1e-8b7a-0d3e6f1a2b3c";

#[tokio::test]
async fn a_tenant_restored_as_a_new_tenant_equals_the_old_one_modulo_the_map() {
    with_two_databases("mysql restore_as_new_tenant", async |backup_url, live_url| {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        load(&mut backup).await;
        load(&mut live).await;
        let (plan, remap) = planned(&mut backup).await;
        let owners: Vec<(&str, remap::KeyKind)> =
            remap.owners.iter().map(|o| (o.table.as_str(), o.kind)).collect();
        assert_eq!(owners.len(), 5, "{owners:?}");
        assert!(owners.contains(&("users", remap::KeyKind::Uuid)));
        assert!(owners.contains(&("comments", remap::KeyKind::Uuid)));
        assert!(owners.contains(&("issues", remap::KeyKind::Integer)));
        assert!(owners.contains(&("attachment_views", remap::KeyKind::Integer)));

        let old = site(1);
        let before = digests(&mut live, &plan).await;
        let backup_before = all_rows(&mut backup, &plan).await;
        let whole_before = all_rows(&mut live, &plan).await;

        let new = NewTenant { id: NEW, remap: &remap };
        let report =
            mysql::copy_as(&mut backup, &mut live, &plan, &old, new).await.expect("copy as");
        assert_eq!(report.tables.iter().map(|t| t.deleted).sum::<u64>(), 0);
        // 1 site, 2 users, 2 projects, 6 issues, 6 comments, 12 attachments, 12 views.
        assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 41, "{report:?}");

        // The old tenant and every other tenant are untouched, on both sides.
        assert_eq!(digests(&mut live, &plan).await, before);
        assert_eq!(all_rows(&mut backup, &plan).await, backup_before);
        // The new tenant's slice is the old one's through the map.
        let maps = mysql::key_maps(&mut live, NEW).await.expect("key maps");
        let expected = mysql::digest_as(&mut backup, &plan, &old, new, &maps).await.expect("as");
        let restored = mysql::digest(&mut live, &plan, NEW).await.expect("digest new");
        assert_eq!(restored, expected);
        assert_eq!(restored.tables.iter().map(|t| t.rows).sum::<u64>(), 41);
        assert_ne!(restored, before[0], "the keys changed");

        // Keys: uuid by the rule (binary and text), integers past every old one; every
        // reference inside the slice points into the new tenant's rows.
        let new_user = remap::new_uuid(NEW, "users", &uuid::Uuid::from_slice(&user(1, 1)).unwrap().to_string());
        let n = |sql: &str| sql.replace("$NEW", &format!("'{NEW}'"));
        assert_eq!(
            scalar_i64(&mut live, &n(&format!("SELECT COUNT(*) FROM users WHERE site_id = $NEW AND id = UNHEX(REPLACE('{new_user}', '-', ''))"))).await,
            1
        );
        let comment = id("comment111").to_string();
        let new_comment = remap::new_uuid(NEW, "comments", &comment);
        assert_eq!(
            scalar_i64(&mut live, &format!("SELECT COUNT(*) FROM attachments WHERE comment_id = '{new_comment}'")).await,
            2
        );
        assert_eq!(
            scalar_i64(&mut live, &n("SELECT COUNT(*) FROM projects WHERE site_id = $NEW AND id <= 32")).await,
            0,
            "new integer keys come after every existing one"
        );
        assert_eq!(
            scalar_i64(&mut live, &n("SELECT COUNT(*) FROM projects p JOIN users u ON u.id = p.owner_id WHERE p.site_id = $NEW AND u.site_id = $NEW")).await,
            1
        );
        assert_eq!(
            scalar_i64(&mut live, &n("SELECT COUNT(*) FROM issues i JOIN issues p ON p.id = i.parent_id \
                JOIN projects pp ON pp.id = p.project_id JOIN projects ip ON ip.id = i.project_id \
                WHERE ip.site_id = $NEW AND pp.site_id = $NEW")).await,
            4,
            "self-references follow to the new issues"
        );
        assert_eq!(
            scalar_i64(&mut live, &n("SELECT COUNT(*) FROM attachment_views v \
                JOIN attachments a ON a.comment_id = v.comment_id AND a.seq = v.seq \
                JOIN comments c ON c.id = a.comment_id JOIN issues i ON i.id = c.issue_id \
                JOIN projects p ON p.id = i.project_id JOIN users u ON u.id = v.viewer_id \
                WHERE p.site_id = $NEW AND u.site_id = $NEW")).await,
            12,
            "composite references follow to the new attachments"
        );
        assert_eq!(
            scalar_i64(&mut live, &format!("SELECT COUNT(*) FROM rewind_key_map WHERE new_tenant = '{NEW}' AND tbl <> ''")).await,
            2 + 6 + 12
        );
        // Nothing else changed: every table is its old rows plus the new tenant's.
        for (t, rows) in plan.tables.iter().zip(&whole_before) {
            let now = table_rows(&mut live, &t.name).await;
            assert!(rows.iter().all(|r| now.contains(r)), "{}", t.name);
        }

        // Again: the same rows, with the same keys.
        let snapshot = all_rows(&mut live, &plan).await;
        let again = mysql::copy_as(&mut backup, &mut live, &plan, &old, new).await.expect("again");
        assert_eq!(again.tables.iter().map(|t| t.deleted).sum::<u64>(), 41);
        assert_eq!(all_rows(&mut live, &plan).await, snapshot);
        assert_eq!(digests(&mut live, &plan).await, before);
        assert_eq!(mysql::digest(&mut live, &plan, NEW).await.expect("digest"), expected);

        // AUTO_INCREMENT moved past the new keys: the application's next insert fits.
        exec(&mut live, &n("INSERT INTO projects (site_id, name) VALUES ($NEW, 'next')")).await;
        assert_eq!(
            scalar_i64(&mut live, "SELECT COUNT(*) FROM projects WHERE name = 'next' AND id > (SELECT MAX(CAST(new_key AS SIGNED)) FROM rewind_key_map WHERE tbl = 'projects')").await,
            1
        );
        exec(&mut live, "DELETE FROM projects WHERE name = 'next'").await;

        // A change of the restored slice shows in the remap-aware digest.
        exec(&mut live, &n("UPDATE issues SET title = 'changed' WHERE id = (SELECT MIN(i.id) FROM issues i JOIN projects p ON p.id = i.project_id WHERE p.site_id = $NEW)")).await;
        assert_ne!(mysql::digest(&mut live, &plan, NEW).await.expect("digest"), expected);
    })
    .await;
}

#[tokio::test]
async fn refusals_name_what_cannot_be_restored_as_new_and_write_nothing() {
    with_two_databases("mysql restore_as_new_refusals", async |backup_url, live_url| {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        load(&mut backup).await;
        load(&mut live).await;
        let (plan, remap) = planned(&mut backup).await;
        let old = site(1);
        let before = all_rows(&mut live, &plan).await;

        // `as` the tenant itself, also written another way.
        let upper = old.to_uppercase();
        let same = NewTenant { id: &upper, remap: &remap };
        let e = mysql::copy_as(&mut backup, &mut live, &plan, &old, same).await.expect_err("same");
        assert!(matches!(e, SliceError::Refused(_)), "{e}");
        assert!(e.to_string().contains("itself"), "{e}");

        // A new id that is not the key's type.
        let bad = NewTenant { id: "acme", remap: &remap };
        let e = mysql::copy_as(&mut backup, &mut live, &plan, &old, bad).await.expect_err("bad");
        assert!(matches!(e, SliceError::BadTenant { .. }), "{e}");
        assert_eq!(
            scalar_i64(&mut live, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'rewind_key_map'").await,
            0
        );

        // A text key with a value that is not a uuid: refused naming it, nothing written.
        let issue: i64 = 111;
        exec(&mut backup, &format!("INSERT INTO comments VALUES ('not-a-uuid', {issue}, NULL, 'x')")).await;
        let new = NewTenant { id: NEW, remap: &remap };
        let e = mysql::copy_as(&mut backup, &mut live, &plan, &old, new).await.expect_err("text");
        assert!(matches!(e, SliceError::Refused(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("`comments`.`id`") && msg.contains("not-a-uuid"), "{e}");
        assert_eq!(all_rows(&mut live, &plan).await, before);
        assert_eq!(
            scalar_i64(&mut live, "SELECT COUNT(*) FROM rewind_key_map").await,
            0,
            "the key map is written in the copy's transaction only"
        );

        // A key type that cannot be remapped.
        exec(&mut backup, "CREATE TABLE tags (n DOUBLE PRIMARY KEY, site_id UUID NOT NULL, FOREIGN KEY (site_id) REFERENCES sites (id))").await;
        let schema = mysql::schema(&mut backup).await.expect("schema");
        let request = Request { root: Some("sites".into()), ..Request::default() };
        let plan = rewind_slice::plan::plan(&schema, &request).expect("plan");
        let e = remap::plan(&schema, &plan).expect_err("double key");
        assert!(e.to_string().contains("`tags`.`n`"), "{e}");
    })
    .await;
}

/// The sandbox's shape: ids as uuids in text columns (one in upper case), a self-reference.
const TEXT_SCHEMA: &[&str] = &[
    "CREATE TABLE sites (id CHAR(36) PRIMARY KEY, name VARCHAR(20) NOT NULL)",
    "CREATE TABLE docs (id VARCHAR(64) PRIMARY KEY, site_id CHAR(36) NOT NULL, parent_id VARCHAR(64), \
       title TEXT NOT NULL, FOREIGN KEY (site_id) REFERENCES sites (id), \
       FOREIGN KEY (parent_id) REFERENCES docs (id))",
    "INSERT INTO sites VALUES ('00000000-0000-4000-8000-000000000001', 'a'), \
       ('00000000-0000-4000-8000-000000000002', 'b')",
    "INSERT INTO docs VALUES ('A0000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000001', NULL, 'root'), \
       ('a0000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'A0000000-0000-4000-8000-000000000001', 'child'), \
       ('b0000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002', NULL, 'other')",
];

#[tokio::test]
async fn text_uuid_keys_are_remapped_as_lowercase_uuids() {
    with_two_databases("mysql text uuid keys", async |backup_url, live_url| {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        for sql in TEXT_SCHEMA {
            exec(&mut backup, sql).await;
            exec(&mut live, sql).await;
        }
        let (plan, remap) = planned(&mut backup).await;
        let owners: Vec<(&str, remap::KeyKind)> =
            remap.owners.iter().map(|o| (o.table.as_str(), o.kind)).collect();
        assert_eq!(owners, [("docs", remap::KeyKind::Uuid)]);
        let old = "00000000-0000-4000-8000-000000000001";
        let before = table_rows(&mut live, "docs").await;
        let new = NewTenant { id: NEW, remap: &remap };
        for _ in 0..2 {
            let report =
                mysql::copy_as(&mut backup, &mut live, &plan, old, new).await.expect("copy");
            assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 3);
        }
        let root = remap::new_uuid(NEW, "docs", "a0000000-0000-4000-8000-000000000001");
        assert_eq!(
            scalar_i64(
                &mut live,
                &format!(
                    "SELECT COUNT(*) FROM docs c JOIN docs p ON p.id = c.parent_id \
                WHERE BINARY p.id = '{root}' AND c.site_id = '{NEW}' AND p.title = 'root'"
                )
            )
            .await,
            1
        );
        let now = table_rows(&mut live, "docs").await;
        assert!(before.iter().all(|r| now.contains(r)));
        let maps = mysql::key_maps(&mut live, NEW).await.expect("maps");
        assert_eq!(
            mysql::digest(&mut live, &plan, NEW).await.expect("digest"),
            mysql::digest_as(&mut backup, &plan, old, new, &maps).await.expect("as")
        );
    })
    .await;
}

#[tokio::test]
async fn as_an_existing_tenant_is_refused_and_leaves_its_rows_untouched() {
    with_two_databases("mysql restore_as_existing_tenant", async |backup_url, live_url| {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        load(&mut backup).await;
        load(&mut live).await;
        let (plan, remap) = planned(&mut backup).await;
        let before = all_rows(&mut live, &plan).await;
        // `as` names tenant 2, which lives on the destination: its rows are not the copy's.
        let other_id = site(2);
        let other = NewTenant { id: &other_id, remap: &remap };
        let e = mysql::copy_as(&mut backup, &mut live, &plan, &site(1), other)
            .await
            .expect_err("as an existing tenant");
        assert!(matches!(e, SliceError::Refused(_)), "{e}");
        assert!(e.to_string().contains("already has"), "{e}");
        assert_eq!(all_rows(&mut live, &plan).await, before);
        // A new tenant the copy made is replaced again, as before.
        let digests_before = digests(&mut live, &plan).await;
        let new = NewTenant { id: NEW, remap: &remap };
        for _ in 0..2 {
            mysql::copy_as(&mut backup, &mut live, &plan, &site(1), new).await.expect("copy as");
        }
        assert_eq!(digests(&mut live, &plan).await, digests_before);
    })
    .await;
}
