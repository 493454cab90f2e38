//! MariaDB/MySQL slices against the server at `REWIND_TEST_MARIADB`: catalog, copy and digest
//! on a realistic schema (uuid root, bigint AUTO_INCREMENT keys, a 4-level tree, a
//! self-reference, a composite key and foreign key, a table reached only through its parent,
//! an audit trigger, generated columns and every common column type with edge values).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rewind_slice::plan::RootKey;
use rewind_slice::{Engine, Schema, SliceError, SlicePlan, SliceTable, Via, mysql};
use rewind_testkit::{MyDb, mariadb_url};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection, Row};

const SCHEMA: &[&str] = &[
    "CREATE TABLE sites (id UUID PRIMARY KEY, name VARCHAR(100) NOT NULL)",
    "CREATE TABLE users (id BIGINT AUTO_INCREMENT PRIMARY KEY, login VARCHAR(50) NOT NULL)",
    "CREATE TABLE projects (id BIGINT AUTO_INCREMENT PRIMARY KEY, site_id UUID NOT NULL, \
       name VARCHAR(100) NOT NULL, \
       slug VARCHAR(110) AS (LOWER(REPLACE(name, ' ', '-'))) STORED, \
       CONSTRAINT fk_projects_site FOREIGN KEY (site_id) REFERENCES sites (id))",
    "CREATE TABLE labels (project_id BIGINT NOT NULL, code VARCHAR(20) NOT NULL, color CHAR(7), \
       PRIMARY KEY (project_id, code), \
       CONSTRAINT fk_labels_project FOREIGN KEY (project_id) REFERENCES projects (id))",
    "CREATE TABLE issues (id BIGINT AUTO_INCREMENT PRIMARY KEY, project_id BIGINT NOT NULL, \
       parent_id BIGINT NULL, assignee_id BIGINT NULL, title TEXT NOT NULL, \
       title_len INT AS (CHAR_LENGTH(title)) VIRTUAL, \
       CONSTRAINT fk_issues_project FOREIGN KEY (project_id) REFERENCES projects (id), \
       CONSTRAINT fk_issues_parent FOREIGN KEY (parent_id) REFERENCES issues (id), \
       CONSTRAINT fk_issues_assignee FOREIGN KEY (assignee_id) REFERENCES users (id))",
    "CREATE TABLE issue_labels (project_id BIGINT NOT NULL, code VARCHAR(20) NOT NULL, \
       issue_id BIGINT NOT NULL, PRIMARY KEY (project_id, code, issue_id), \
       CONSTRAINT fk_il_label FOREIGN KEY (project_id, code) REFERENCES labels (project_id, code), \
       CONSTRAINT fk_il_issue FOREIGN KEY (issue_id) REFERENCES issues (id))",
    "CREATE TABLE comments (id BIGINT AUTO_INCREMENT PRIMARY KEY, issue_id BIGINT NOT NULL, \
       body MEDIUMTEXT, CONSTRAINT fk_comments_issue FOREIGN KEY (issue_id) REFERENCES issues (id))",
    "CREATE TABLE field_values (id BIGINT AUTO_INCREMENT PRIMARY KEY, issue_id BIGINT NOT NULL, \
       i8 TINYINT, u64 BIGINT UNSIGNED, i64 BIGINT, f32 FLOAT, f64 DOUBLE, dec30 DECIMAL(30,10), \
       d DATE, t TIME(3), dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR, j JSON, \
       txt TEXT, vc VARCHAR(200), bin VARBINARY(64), bl BLOB, b5 BIT(5), e ENUM('low','high'), \
       s SET('a','b','c'), u UUID, \
       CONSTRAINT fk_fv_issue FOREIGN KEY (issue_id) REFERENCES issues (id))",
    "CREATE TABLE watchers (issue_id BIGINT NOT NULL, login VARCHAR(50), \
       CONSTRAINT fk_watchers_issue FOREIGN KEY (issue_id) REFERENCES issues (id))",
    "CREATE TABLE audit (id BIGINT AUTO_INCREMENT PRIMARY KEY, tbl VARCHAR(30), row_id BIGINT, \
       action VARCHAR(10))",
    "CREATE TRIGGER issues_ai AFTER INSERT ON issues FOR EACH ROW BEGIN \
       IF @rewind_restore IS NULL THEN \
         INSERT INTO audit (tbl, row_id, action) VALUES ('issues', NEW.id, 'insert'); \
       END IF; END",
    "CREATE TRIGGER issues_ad AFTER DELETE ON issues FOR EACH ROW BEGIN \
       IF @rewind_restore IS NULL THEN \
         INSERT INTO audit (tbl, row_id, action) VALUES ('issues', OLD.id, 'delete'); \
       END IF; END",
];

const TENANTS: usize = 5;

/// A backup and a live database with the same schema and rows; dropped at the end, also when
/// the test fails.
struct Pair {
    backup: MyDb,
    live: MyDb,
    sites: Vec<String>,
}

async fn with_pair(test: &str, f: impl AsyncFnOnce(&Pair)) {
    let Some(base) = mariadb_url(test) else { return };
    let backup = MyDb::create(&base).await;
    let live = MyDb::create(&base).await;
    let sites: Vec<String> = (0..TENANTS).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let pair = Pair { backup, live, sites };
    let outcome = AssertUnwindSafe(async {
        load(&pair.backup.url, &pair.sites).await;
        load(&pair.live.url, &pair.sites).await;
        f(&pair).await;
    })
    .catch_unwind()
    .await;
    pair.backup.drop_database().await;
    pair.live.drop_database().await;
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

/// Creates the schema and `sites.len()` tenants, interleaved so that their AUTO_INCREMENT
/// keys mix; the last tenant holds the largest keys.
async fn load(url: &str, sites: &[String]) {
    let mut c = connect(url).await;
    for sql in SCHEMA {
        exec(&mut c, sql).await;
    }
    for login in ["ann", "bob", "cyd"] {
        sqlx::query("INSERT INTO users (login) VALUES (?)")
            .bind(login)
            .execute(&mut c)
            .await
            .unwrap();
    }
    for (n, site) in sites.iter().enumerate() {
        sqlx::query("INSERT INTO sites (id, name) VALUES (?, ?)")
            .bind(site)
            .bind(format!("Site {n}"))
            .execute(&mut c)
            .await
            .unwrap();
    }
    for round in 0..2 {
        for (n, site) in sites.iter().enumerate() {
            load_project(&mut c, site, n, round).await;
        }
    }
    c.close().await.unwrap();
}

async fn insert_id(
    c: &mut MySqlConnection,
    q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
) -> i64 {
    let done = q.execute(&mut *c).await.unwrap();
    i64::try_from(done.last_insert_id()).unwrap()
}

async fn load_project(c: &mut MySqlConnection, site: &str, n: usize, round: usize) {
    let project = insert_id(
        c,
        sqlx::query("INSERT INTO projects (site_id, name) VALUES (?, ?)")
            .bind(site)
            .bind(format!("Project {n} {round}")),
    )
    .await;
    for code in ["bug", "feat"] {
        sqlx::query("INSERT INTO labels (project_id, code, color) VALUES (?, ?, ?)")
            .bind(project)
            .bind(code)
            .bind(if code == "bug" { Some("#ff0000") } else { None })
            .execute(&mut *c)
            .await
            .unwrap();
    }
    let mut issues = Vec::new();
    for i in 0..3 {
        let parent = if i == 2 { Some(issues[0]) } else { None };
        let assignee = if i == 1 { None } else { Some(1 + (n as i64 + i) % 3) };
        let issue = insert_id(
            c,
            sqlx::query(
                "INSERT INTO issues (project_id, parent_id, assignee_id, title) VALUES (?, ?, ?, ?)",
            )
            .bind(project)
            .bind(parent)
            .bind(assignee)
            .bind(format!("Issue {i} of tenant {n}, round {round} ✓")),
        )
        .await;
        issues.push(issue);
        for k in 0..2 {
            sqlx::query("INSERT INTO comments (issue_id, body) VALUES (?, ?)")
                .bind(issue)
                .bind(if k == 1 {
                    None
                } else {
                    Some(format!("comment {k}\ton {issue}\n'\"\\ 😀"))
                })
                .execute(&mut *c)
                .await
                .unwrap();
        }
    }
    for (issue, code) in [(issues[0], "bug"), (issues[0], "feat"), (issues[2], "bug")] {
        sqlx::query("INSERT INTO issue_labels (project_id, code, issue_id) VALUES (?, ?, ?)")
            .bind(project)
            .bind(code)
            .bind(issue)
            .execute(&mut *c)
            .await
            .unwrap();
    }
    for login in ["ann", "bob"] {
        sqlx::query("INSERT INTO watchers (issue_id, login) VALUES (?, ?)")
            .bind(issues[0])
            .bind(login)
            .execute(&mut *c)
            .await
            .unwrap();
    }
    load_fields(c, issues[0], n).await;
    sqlx::query("INSERT INTO field_values (issue_id) VALUES (?)")
        .bind(issues[1])
        .execute(&mut *c)
        .await
        .unwrap();
}

/// One row of edge values of every type.
async fn load_fields(c: &mut MySqlConnection, issue: i64, n: usize) {
    sqlx::query(
        "INSERT INTO field_values (issue_id, i8, u64, i64, f32, f64, dec30, d, t, dt, ts, y, j, \
           txt, vc, bin, bl, b5, e, s, u) \
         VALUES (?, -128, 18446744073709551615, -9223372036854775808, ?, ?, \
           '-12345678901234567890.0123456789', '2024-02-29', '-12:34:56.789', \
           '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155, \
           '{\"a\": [1, 2.5, \"x\"], \"b\": null}', ?, 'héllo wörld', ?, ?, b'10101', 'high', \
           'a,c', ?)",
    )
    .bind(issue)
    .bind(0.1f32)
    .bind(if n.is_multiple_of(2) { 0.1f64 + 0.2f64 } else { 1.797_693_134_862_315_7e308 })
    .bind("tab\there\nnewline 'single' \"double\" back\\slash 😀")
    .bind(vec![0u8, 0xff, 0, 1])
    .bind(vec![0u8, 0, 0xde, 0xad, 0xbe, 0xef, 0])
    .bind(
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{issue}/{n}").as_bytes())
            .to_string(),
    )
    .execute(&mut *c)
    .await
    .unwrap();
}

fn parent(constraint: &str, columns: &[&str], parent: &str, parent_columns: &[&str]) -> Via {
    Via::Parent {
        constraint: constraint.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        parent: parent.to_owned(),
        parent_columns: parent_columns.iter().map(|c| (*c).to_owned()).collect(),
        nullable: false,
        declared: false,
    }
}

/// The plan the planner makes for root `sites` (parents first; MySQL breaks nothing), its
/// columns read from `schema`.
fn sites_plan(schema: &Schema) -> SlicePlan {
    let table = |name: &str, via: Via, path: &[&str]| {
        let t = &schema.tables[name];
        SliceTable {
            name: name.to_owned(),
            columns: t.columns.clone(),
            primary_key: t.primary_key.clone(),
            via: vec![via],
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            set_after: Vec::new(),
            triggers: t.triggers.clone(),
        }
    };
    SlicePlan {
        engine: Engine::Mysql,
        root: Some(RootKey {
            table: "sites".to_owned(),
            column: "id".to_owned(),
            data_type: schema.tables["sites"].columns[0].data_type.clone(),
        }),
        tables: vec![
            table("sites", Via::Root { column: "id".to_owned() }, &["sites"]),
            table(
                "projects",
                parent("fk_projects_site", &["site_id"], "sites", &["id"]),
                &["projects", "sites"],
            ),
            table(
                "labels",
                parent("fk_labels_project", &["project_id"], "projects", &["id"]),
                &["labels", "projects", "sites"],
            ),
            table(
                "issues",
                parent("fk_issues_project", &["project_id"], "projects", &["id"]),
                &["issues", "projects", "sites"],
            ),
            table(
                "issue_labels",
                parent("fk_il_label", &["project_id", "code"], "labels", &["project_id", "code"]),
                &["issue_labels", "labels", "projects", "sites"],
            ),
            table(
                "comments",
                parent("fk_comments_issue", &["issue_id"], "issues", &["id"]),
                &["comments", "issues", "projects", "sites"],
            ),
            table(
                "field_values",
                parent("fk_fv_issue", &["issue_id"], "issues", &["id"]),
                &["field_values", "issues", "projects", "sites"],
            ),
            table(
                "watchers",
                parent("fk_watchers_issue", &["issue_id"], "issues", &["id"]),
                &["watchers", "issues", "projects", "sites"],
            ),
        ],
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    }
}

async fn plan_of(url: &str) -> SlicePlan {
    let mut c = connect(url).await;
    let schema = mysql::schema(&mut c).await.unwrap();
    c.close().await.unwrap();
    sites_plan(&schema)
}

async fn digest(url: &str, plan: &SlicePlan, tenant: &str) -> rewind_slice::SliceDigest {
    let mut c = connect(url).await;
    let d = mysql::digest(&mut c, plan, tenant).await.unwrap();
    c.close().await.unwrap();
    d
}

async fn copy(
    from: &str,
    to: &str,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<rewind_slice::CopyReport, SliceError> {
    let mut src = connect(from).await;
    let mut dst = connect(to).await;
    let out = mysql::copy(&mut src, &mut dst, plan, tenant).await;
    src.close().await.unwrap();
    dst.close().await.unwrap();
    out
}

/// Deletes a tenant's rows as a user would (the audit trigger records the issues' deletes).
async fn delete_tenant(url: &str, site: &str) {
    let mut c = connect(url).await;
    exec(&mut c, "SET foreign_key_checks = 0").await;
    for sql in [
        "DELETE x FROM field_values x JOIN issues i ON x.issue_id = i.id \
           JOIN projects p ON i.project_id = p.id WHERE p.site_id = ?",
        "DELETE x FROM watchers x JOIN issues i ON x.issue_id = i.id \
           JOIN projects p ON i.project_id = p.id WHERE p.site_id = ?",
        "DELETE x FROM comments x JOIN issues i ON x.issue_id = i.id \
           JOIN projects p ON i.project_id = p.id WHERE p.site_id = ?",
        "DELETE x FROM issue_labels x JOIN projects p ON x.project_id = p.id WHERE p.site_id = ?",
        "DELETE x FROM issues x JOIN projects p ON x.project_id = p.id WHERE p.site_id = ?",
        "DELETE x FROM labels x JOIN projects p ON x.project_id = p.id WHERE p.site_id = ?",
        "DELETE FROM projects WHERE site_id = ?",
        "DELETE FROM sites WHERE id = ?",
    ] {
        sqlx::query(sql).bind(site).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();
}

async fn scalar_i64(url: &str, sql: &'static str) -> i64 {
    let mut c = connect(url).await;
    let v: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
    c.close().await.unwrap();
    v
}

/// The audit table, whole: (rows, largest id).
async fn audit(url: &str) -> (i64, i64) {
    let mut c = connect(url).await;
    let row = sqlx::query("SELECT COUNT(*), CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM audit")
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn schema_reads_keys_generated_columns_and_triggers() {
    with_pair("schema_reads_keys_generated_columns_and_triggers", async |pair: &Pair| {
        let mut c = connect(&pair.live.url).await;
        let schema = mysql::schema(&mut c).await.unwrap();
        c.close().await.unwrap();
        assert_eq!(schema.engine, Engine::Mysql);
        let names: Vec<&str> = schema.tables.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "audit",
                "comments",
                "field_values",
                "issue_labels",
                "issues",
                "labels",
                "projects",
                "sites",
                "users",
                "watchers"
            ]
        );
        assert_eq!(schema.tables["sites"].columns[0].data_type, "uuid");
        assert_eq!(schema.tables["issues"].columns[0].data_type, "bigint(20)");
        assert_eq!(
            schema.tables["field_values"].column("u64").unwrap().data_type,
            "bigint(20) unsigned"
        );
        assert_eq!(schema.tables["field_values"].column("b5").unwrap().data_type, "bit(5)");
        let slug = schema.tables["projects"].column("slug").unwrap();
        let title_len = schema.tables["issues"].column("title_len").unwrap();
        assert!(slug.generated && title_len.generated);
        assert!(!schema.tables["issues"].column("title").unwrap().generated);
        assert!(!schema.tables["issues"].column("title").unwrap().nullable);
        assert!(schema.tables["issues"].column("parent_id").unwrap().nullable);
        assert_eq!(schema.tables["issue_labels"].primary_key, ["project_id", "code", "issue_id"]);
        assert_eq!(schema.tables["labels"].primary_key, ["project_id", "code"]);
        assert!(schema.tables["audit"].foreign_keys.is_empty());
        let il = &schema.tables["issue_labels"].foreign_keys;
        let label_fk = il.iter().find(|f| f.name == "fk_il_label").unwrap();
        assert_eq!(label_fk.columns, ["project_id", "code"]);
        assert_eq!(label_fk.parent, "labels");
        assert_eq!(label_fk.parent_columns, ["project_id", "code"]);
        assert!(!label_fk.deferrable);
        let mut issue_fks: Vec<(&str, &str)> = schema.tables["issues"]
            .foreign_keys
            .iter()
            .map(|f| (f.name.as_str(), f.parent.as_str()))
            .collect();
        issue_fks.sort();
        assert_eq!(
            issue_fks,
            [
                ("fk_issues_assignee", "users"),
                ("fk_issues_parent", "issues"),
                ("fk_issues_project", "projects")
            ]
        );
        assert_eq!(schema.tables["issues"].triggers, ["issues_ad", "issues_ai"]);
        assert!(schema.tables["comments"].triggers.is_empty());
        assert!(schema.tables.values().flat_map(|t| &t.columns).all(|c| c.sequence.is_none()));
    })
    .await;
}

#[tokio::test]
async fn copy_restores_deleted_tenants_exactly_and_again() {
    with_pair("copy_restores_deleted_tenants_exactly_and_again", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let restored = [&pair.sites[1], &pair.sites[3], &pair.sites[4]];
        let kept = [&pair.sites[0], &pair.sites[2]];
        let max_issue = scalar_i64(backup, "SELECT MAX(id) FROM issues").await;
        for site in restored {
            delete_tenant(live, site).await;
            assert!(digest(live, &plan, site).await.tables.iter().all(|t| t.rows == 0));
        }
        // The counters fall back below the deleted keys: a copy must move them up again.
        let mut c = connect(live).await;
        for table in ["projects", "issues", "comments", "field_values"] {
            exec(&mut c, &format!("ALTER TABLE {table} AUTO_INCREMENT = 1")).await;
        }
        c.close().await.unwrap();
        assert!(scalar_i64(live, "SELECT MAX(id) FROM issues").await < max_issue);
        let mut kept_before = Vec::new();
        for site in kept {
            kept_before.push(digest(live, &plan, site).await);
        }
        let audit_before = audit(live).await;

        for site in restored {
            let want = digest(backup, &plan, site).await;
            let report = copy(backup, live, &plan, site).await.unwrap();
            assert_eq!(digest(live, &plan, site).await, want, "tenant {site}");
            let inserted: Vec<(&str, u64)> =
                report.tables.iter().map(|t| (t.table.as_str(), t.inserted)).collect();
            let rows: Vec<(&str, u64)> =
                want.tables.iter().map(|t| (t.table.as_str(), t.rows)).collect();
            assert_eq!(inserted, rows);
            assert!(report.tables.iter().all(|t| t.deleted == 0));
            assert_eq!(want.tables[6].rows, 4, "field_values: 2 projects × (edge row + null row)");
        }
        for (site, before) in kept.iter().zip(&kept_before) {
            assert_eq!(&digest(live, &plan, site).await, before, "untouched tenant {site}");
        }
        assert_eq!(audit(live).await, audit_before, "the restore is not user activity");

        // Again: the same rows, each table's rows deleted and inserted.
        let site = restored[2];
        let want = digest(backup, &plan, site).await;
        let report = copy(backup, live, &plan, site).await.unwrap();
        assert!(report.tables.iter().all(|t| t.deleted == t.inserted && t.inserted > 0));
        assert_eq!(digest(live, &plan, site).await, want);
        assert_eq!(audit(live).await, audit_before);

        // AUTO_INCREMENT moved past the restored keys: a new row does not collide.
        let mut c = connect(live).await;
        let project: i64 = sqlx::query_scalar("SELECT MIN(id) FROM projects WHERE site_id = ?")
            .bind(site)
            .fetch_one(&mut c)
            .await
            .unwrap();
        let done = sqlx::query("INSERT INTO issues (project_id, title) VALUES (?, 'new')")
            .bind(project)
            .execute(&mut c)
            .await
            .unwrap();
        assert!(done.last_insert_id() > u64::try_from(max_issue).unwrap());
        sqlx::query("INSERT INTO comments (issue_id, body) VALUES (?, 'new')")
            .bind(done.last_insert_id())
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn edge_values_survive_a_copy_bit_for_bit() {
    with_pair("edge_values_survive_a_copy_bit_for_bit", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        // Tenant 0 has 0.1 + 0.2, tenant 1 the largest double.
        for site in &pair.sites[..2] {
            delete_tenant(live, site).await;
            copy(backup, live, &plan, site).await.unwrap();
        }
        let sql = "SELECT CAST(f.i8 AS CHAR), CAST(f.u64 AS CHAR), CAST(f.i64 AS CHAR), f.f32, f.f64, \
                     CAST(f.dec30 AS CHAR), CAST(f.d AS CHAR), CAST(f.t AS CHAR), \
                     CAST(f.dt AS CHAR), CAST(f.ts AS CHAR), CAST(f.y AS CHAR), CAST(f.j AS CHAR), \
                     f.txt, f.vc, HEX(f.bin), HEX(f.bl), CAST(f.b5 AS UNSIGNED), CAST(f.e AS CHAR), \
                     CAST(f.s AS CHAR), CAST(f.u AS CHAR) \
                   FROM field_values f JOIN issues i ON f.issue_id = i.id \
                   JOIN projects p ON i.project_id = p.id \
                   WHERE p.site_id = ? ORDER BY f.id";
        let read = |url: String, site: String| async move {
            let mut c = connect(&url).await;
            exec(&mut c, "SET time_zone = '+00:00'").await;
            let rows = sqlx::query(sql).bind(site).fetch_all(&mut c).await.unwrap();
            c.close().await.unwrap();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| match i {
                            3 => r.get::<Option<f32>, _>(i).map(|v| format!("{:?}", v.to_bits())),
                            4 => r.get::<Option<f64>, _>(i).map(|v| format!("{:?}", v.to_bits())),
                            16 => r.get::<Option<u64>, _>(i).map(|v| v.to_string()),
                            _ => r.get::<Option<String>, _>(i),
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        for (n, site) in pair.sites[..2].iter().enumerate() {
            let got = read(live.clone(), site.clone()).await;
            assert_eq!(got, read(backup.clone(), site.clone()).await);
            assert_eq!(got.len(), 4);
            let edge = &got[0];
            let double = if n == 0 { 0.1f64 + 0.2 } else { 1.797_693_134_862_315_7e308 };
            assert_eq!(edge[0].as_deref(), Some("-128"));
            assert_eq!(edge[1].as_deref(), Some("18446744073709551615"));
            assert_eq!(edge[2].as_deref(), Some("-9223372036854775808"));
            assert_eq!(edge[3], Some(format!("{:?}", 0.1f32.to_bits())));
            assert_eq!(edge[4], Some(format!("{:?}", double.to_bits())));
            assert_eq!(edge[5].as_deref(), Some("-12345678901234567890.0123456789"));
            assert_eq!(edge[7].as_deref(), Some("-12:34:56.789"));
            assert_eq!(edge[8].as_deref(), Some("2024-02-29 23:59:59.999999"));
            assert_eq!(edge[9].as_deref(), Some("2038-01-19 03:14:07.999999"));
            assert_eq!(edge[12].as_deref(), Some("tab\there\nnewline 'single' \"double\" back\\slash 😀"));
            assert_eq!(edge[14].as_deref(), Some("00FF0001"));
            assert_eq!(edge[15].as_deref(), Some("0000DEADBEEF00"));
            assert_eq!(edge[16].as_deref(), Some("21"));
            assert_eq!(edge[18].as_deref(), Some("a,c"));
            assert!(got[1].iter().all(Option::is_none), "the NULL row stays NULL: {:?}", got[1]);
        }
        // Generated columns were recomputed on the destination.
        let titles = scalar_i64(live, "SELECT COUNT(*) FROM issues WHERE title_len = CHAR_LENGTH(title)").await;
        assert_eq!(titles, scalar_i64(live, "SELECT COUNT(*) FROM issues").await);
    })
    .await;
}

#[tokio::test]
async fn concurrent_copies_into_one_database_finish() {
    with_pair("concurrent_copies_into_one_database_finish", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        for site in &pair.sites[1..] {
            delete_tenant(live, site).await;
        }
        for round in 0..3 {
            let copies = pair.sites[1..].iter().map(|site| copy(backup, live, &plan, site));
            for (site, outcome) in
                pair.sites[1..].iter().zip(futures::future::join_all(copies).await)
            {
                let report =
                    outcome.unwrap_or_else(|e| panic!("round {round}, tenant {site}: {e}"));
                assert!(report.tables.iter().all(|t| t.inserted > 0));
            }
        }
        for site in &pair.sites {
            assert_eq!(digest(live, &plan, site).await, digest(backup, &plan, site).await);
        }
    })
    .await;
}

#[tokio::test]
async fn a_tenant_id_of_the_wrong_type_is_refused_for_good() {
    with_pair("a_tenant_id_of_the_wrong_type_is_refused_for_good", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let err = copy(backup, live, &plan, "not-a-uuid").await.unwrap_err();
        assert!(
            matches!(&err, SliceError::BadTenant { column, data_type, .. }
            if column == "id" && data_type == "uuid"),
            "{err}"
        );
        assert!(!err.is_transient());
        let mut c = connect(live).await;
        assert!(matches!(
            mysql::digest(&mut c, &plan, "12").await,
            Err(SliceError::BadTenant { .. })
        ));

        // A bigint root: the id parses as an integer, or is refused.
        let schema = mysql::schema(&mut c).await.unwrap();
        let users = &schema.tables["users"];
        let by_user = SlicePlan {
            engine: Engine::Mysql,
            root: Some(RootKey {
                table: "users".to_owned(),
                column: "id".to_owned(),
                data_type: users.columns[0].data_type.clone(),
            }),
            tables: vec![SliceTable {
                name: "users".to_owned(),
                columns: users.columns.clone(),
                primary_key: users.primary_key.clone(),
                via: vec![Via::Root { column: "id".to_owned() }],
                path: vec!["users".to_owned()],
                set_after: Vec::new(),
                triggers: Vec::new(),
            }],
            deferred: Vec::new(),
            tenant_column: None,
            references: Vec::new(),
        };
        let err = mysql::digest(&mut c, &by_user, "2x").await.unwrap_err();
        assert!(matches!(&err, SliceError::BadTenant { tenant, .. } if tenant == "2x"), "{err}");
        assert!(err.to_string().contains("bigint(20)"), "{err}");
        let d = mysql::digest(&mut c, &by_user, "2").await.unwrap();
        assert_eq!(d.tables[0].rows, 1);
        c.close().await.unwrap();
    })
    .await;
}

async fn session(c: &mut MySqlConnection) -> (i64, String, Option<i64>) {
    let row = sqlx::query(
        "SELECT CAST(@@session.foreign_key_checks AS SIGNED), CAST(@@session.time_zone AS CHAR), \
           CAST(@rewind_restore AS SIGNED)",
    )
    .fetch_one(&mut *c)
    .await
    .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn a_missing_column_is_refused_and_the_session_is_restored() {
    with_pair("a_missing_column_is_refused_and_the_session_is_restored", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let mut src = connect(backup).await;
        let mut dst = connect(live).await;
        exec(&mut dst, "SET time_zone = '+02:00'").await;
        mysql::copy(&mut src, &mut dst, &plan, &pair.sites[0]).await.unwrap();
        assert_eq!(session(&mut dst).await, (1, "+02:00".to_owned(), None));

        exec(&mut dst, "ALTER TABLE comments DROP COLUMN body").await;
        let err = mysql::copy(&mut src, &mut dst, &plan, &pair.sites[0]).await.unwrap_err();
        assert!(matches!(err, SliceError::Refused(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("`comments`") && message.contains("`body`"), "{message}");
        assert!(!err.is_transient());
        assert_eq!(session(&mut dst).await, (1, "+02:00".to_owned(), None));
        src.close().await.unwrap();
        dst.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_dangling_reference_is_refused_and_nothing_is_written() {
    with_pair("a_dangling_reference_is_refused_and_nothing_is_written", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let site = &pair.sites[0];
        // Tenant 0's issues are assigned to users 1 and 3; live loses user 3 (not in the slice).
        let mut dst = connect(live).await;
        exec(&mut dst, "SET foreign_key_checks = 0").await;
        exec(&mut dst, "DELETE FROM users WHERE id = 3").await;
        exec(&mut dst, "SET foreign_key_checks = 1").await;
        exec(&mut dst, "DELETE FROM comments WHERE id = 1").await;
        let before = digest(live, &plan, site).await;

        exec(&mut dst, "SET time_zone = '+02:00'").await;
        let mut src = connect(backup).await;
        let err = mysql::copy(&mut src, &mut dst, &plan, site).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SliceError::Refused(_)), "{message}");
        assert!(
            message.contains("`issues`")
                && message.contains("`fk_issues_assignee`")
                && message.contains("`users`")
                && message.starts_with("2 "),
            "{message}"
        );
        assert_eq!(digest(live, &plan, site).await, before, "nothing written");
        assert_eq!(session(&mut dst).await, (1, "+02:00".to_owned(), None));
        src.close().await.unwrap();
        dst.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn large_slices_go_in_batches() {
    with_pair("large_slices_go_in_batches", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let site = &pair.sites[0];
        // 2,600 more comments on tenant 0's first issue (id 1), five of them 400 kB: more rows
        // than one INSERT (500) or one DELETE (2,000) takes, and more bytes than one INSERT.
        let mut c = connect(backup).await;
        exec(
            &mut c,
            "INSERT INTO comments (issue_id, body) \
             SELECT 1, IF(seq <= 5, REPEAT(CHAR(65 + seq), 400000), CONCAT('bulk ', seq)) \
             FROM seq_1_to_2600",
        )
        .await;
        c.close().await.unwrap();
        let want = digest(backup, &plan, site).await;
        assert_eq!(want.tables[5].table, "comments");
        assert_eq!(want.tables[5].rows, 2612);

        let mut src = connect(backup).await;
        let mut dst = connect(live).await;
        let before = statements(&mut dst).await;
        let first = mysql::copy(&mut src, &mut dst, &plan, site).await.unwrap();
        let after_first = statements(&mut dst).await;
        assert_eq!((first.tables[5].deleted, first.tables[5].inserted), (12, 2612));
        assert_eq!(digest(live, &plan, site).await, want);
        let again = mysql::copy(&mut src, &mut dst, &plan, site).await.unwrap();
        let after_again = statements(&mut dst).await;
        assert_eq!((again.tables[5].deleted, again.tables[5].inserted), (2612, 2612));
        assert_eq!(digest(live, &plan, site).await, want);
        // Inserts: one per other table (7), and the comments in 7: 12 small rows and 3 big
        // ones (over 1 MB), then 500 + 500 + 500 + 500 + 500 + 97.
        assert_eq!(after_first.0 - before.0, 14);
        // Deletes: one per table, by key or (watchers, without a key) by selector; the second
        // time the comments' 2,612 keys take two.
        assert_eq!(after_first.1 - before.1, 8);
        assert_eq!(after_again.1 - after_first.1, 9);
        src.close().await.unwrap();
        dst.close().await.unwrap();
        let watchers = &again.tables[7];
        assert_eq!(
            (watchers.table.as_str(), watchers.deleted, watchers.inserted),
            ("watchers", 4, 4)
        );
    })
    .await;
}

/// The session's (INSERT, DELETE) statement counts.
async fn statements(c: &mut MySqlConnection) -> (i64, i64) {
    let mut counts = (0, 0);
    for row in
        sqlx::query("SHOW SESSION STATUS WHERE Variable_name IN ('Com_insert', 'Com_delete')")
            .fetch_all(&mut *c)
            .await
            .unwrap()
    {
        let name: String = row.get(0);
        let value: String = row.get(1);
        let value: i64 = value.parse().unwrap();
        match name.as_str() {
            "Com_insert" => counts.0 = value,
            _ => counts.1 = value,
        }
    }
    counts
}

#[tokio::test]
async fn rows_the_plan_leaves_out_are_not_orphaned() {
    with_pair("rows_the_plan_leaves_out_are_not_orphaned", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let site = &pair.sites[0];
        // Live has an issue of tenant 0 the backup never had, and a table the plan does not
        // know (made after planning) pins it: the copy would delete the issue under the pin.
        let mut dst = connect(live).await;
        exec(
            &mut dst,
            "INSERT INTO issues (id, project_id, title) SELECT 9000, project_id, 'late' FROM issues WHERE id = 1",
        )
        .await;
        exec(
            &mut dst,
            "CREATE TABLE pins (id BIGINT PRIMARY KEY, issue_id BIGINT NOT NULL, \
             CONSTRAINT fk_pins_issue FOREIGN KEY (issue_id) REFERENCES issues (id))",
        )
        .await;
        exec(&mut dst, "INSERT INTO pins VALUES (1, 9000), (2, 1)").await;
        let before = digest(live, &plan, site).await;
        let mut src = connect(backup).await;
        let err = mysql::copy(&mut src, &mut dst, &plan, site).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SliceError::Refused(_)), "{message}");
        assert!(
            message.starts_with("1 row(s) of `pins`") && message.contains("`fk_pins_issue`"),
            "{message}"
        );
        assert_eq!(digest(live, &plan, site).await, before, "nothing written");
        // Without the late issue's pin, the copy goes through: pin 2's issue comes back.
        exec(&mut dst, "DELETE FROM pins WHERE id = 1").await;
        mysql::copy(&mut src, &mut dst, &plan, site).await.unwrap();
        src.close().await.unwrap();
        dst.close().await.unwrap();
    })
    .await;
}

/// A root `orgs_{tag}` keyed by `key_type` and its child `teams_{tag}`, with two teams per
/// tenant; `store` is the SQL that turns a tenant id into the key (`?`, or
/// `UNHEX(REPLACE(?, '-', ''))` for a uuid in `BINARY(16)`).
async fn load_orgs(url: &str, tag: &str, key_type: &str, store: &str, tenants: &[&str]) {
    let mut c = connect(url).await;
    exec(
        &mut c,
        &format!("CREATE TABLE orgs_{tag} (id {key_type} PRIMARY KEY, name VARCHAR(50) NOT NULL)"),
    )
    .await;
    exec(
        &mut c,
        &format!(
            "CREATE TABLE teams_{tag} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             org_id {key_type} NOT NULL, name VARCHAR(50), \
             CONSTRAINT fk_teams_{tag} FOREIGN KEY (org_id) REFERENCES orgs_{tag} (id))"
        ),
    )
    .await;
    for (n, tenant) in tenants.iter().enumerate() {
        let sql = format!("INSERT INTO orgs_{tag} (id, name) VALUES ({store}, ?)");
        sqlx::query(AssertSqlSafe(sql))
            .bind(*tenant)
            .bind(format!("Org {n}"))
            .execute(&mut c)
            .await
            .unwrap();
        for team in ["red", "blue"] {
            let sql = format!("INSERT INTO teams_{tag} (org_id, name) VALUES ({store}, ?)");
            sqlx::query(AssertSqlSafe(sql))
                .bind(*tenant)
                .bind(format!("{team} {n}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    c.close().await.unwrap();
}

/// Root `orgs_{tag}`, child `teams_{tag}`, as the planner makes it.
async fn orgs_plan(url: &str, tag: &str) -> SlicePlan {
    let mut c = connect(url).await;
    let schema = mysql::schema(&mut c).await.unwrap();
    c.close().await.unwrap();
    let (orgs, teams) = (format!("orgs_{tag}"), format!("teams_{tag}"));
    let table = |name: &str, via: Via, path: &[&str]| {
        let t = &schema.tables[name];
        SliceTable {
            name: name.to_owned(),
            columns: t.columns.clone(),
            primary_key: t.primary_key.clone(),
            via: vec![via],
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            set_after: Vec::new(),
            triggers: t.triggers.clone(),
        }
    };
    SlicePlan {
        engine: Engine::Mysql,
        root: Some(RootKey {
            table: orgs.clone(),
            column: "id".to_owned(),
            data_type: schema.tables[&orgs].columns[0].data_type.clone(),
        }),
        tables: vec![
            table(&orgs, Via::Root { column: "id".to_owned() }, &[&orgs]),
            table(
                &teams,
                parent(&format!("fk_teams_{tag}"), &["org_id"], &orgs, &["id"]),
                &[&teams, &orgs],
            ),
        ],
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    }
}

async fn delete_org(url: &str, tag: &str, store: &str, tenant: &str) {
    let mut c = connect(url).await;
    for sql in [
        format!("DELETE FROM teams_{tag} WHERE org_id = {store}"),
        format!("DELETE FROM orgs_{tag} WHERE id = {store}"),
    ] {
        sqlx::query(AssertSqlSafe(sql)).bind(tenant).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();
}

/// Restores the first of `tenants` into live after deleting it there: the slice equals the
/// backup's, the other tenant is unchanged, and a second copy deletes and inserts the same rows.
async fn restore_first_org(pair: &Pair, tag: &str, store: &str, tenants: &[&str]) -> SlicePlan {
    let (backup, live) = (&pair.backup.url, &pair.live.url);
    let plan = orgs_plan(live, tag).await;
    let other = digest(live, &plan, tenants[1]).await;
    assert_eq!(other.tables[1].rows, 2, "{tag}: the key matches its rows");
    delete_org(live, tag, store, tenants[0]).await;
    let want = digest(backup, &plan, tenants[0]).await;
    assert_eq!((want.tables[0].rows, want.tables[1].rows), (1, 2), "{tag}");
    let report =
        copy(backup, live, &plan, tenants[0]).await.unwrap_or_else(|e| panic!("{tag}: {e}"));
    let counts: Vec<(u64, u64)> = report.tables.iter().map(|t| (t.deleted, t.inserted)).collect();
    assert_eq!(counts, [(0, 1), (0, 2)], "{tag}");
    assert_eq!(digest(live, &plan, tenants[0]).await, want, "{tag}");
    let again = copy(backup, live, &plan, tenants[0]).await.unwrap();
    let counts: Vec<(u64, u64)> = again.tables.iter().map(|t| (t.deleted, t.inserted)).collect();
    assert_eq!(counts, [(1, 1), (2, 2)], "{tag}");
    assert_eq!(digest(live, &plan, tenants[1]).await, other, "{tag}: the other tenant");
    plan
}

/// Text keys compare by their column's collation, whatever the connection's is
/// (`utf8mb4_general_ci` by default on MariaDB 10.11): no "Illegal mix of collations".
#[tokio::test]
async fn text_keys_of_any_collation_are_copied() {
    with_pair("text_keys_of_any_collation_are_copied", async |pair: &Pair| {
        let tenants = ["Acme", "Globex"];
        for (tag, key_type) in [
            ("ci", "VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
            ("bin", "VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
            ("vb", "VARBINARY(36)"),
        ] {
            for url in [&pair.backup.url, &pair.live.url] {
                load_orgs(url, tag, key_type, "?", &tenants).await;
            }
            let plan = restore_first_org(pair, tag, "?", &tenants).await;
            // The key's collation decides: a case-insensitive key finds "ACME", a binary not.
            let upper = copy(&pair.backup.url, &pair.live.url, &plan, "ACME").await;
            if tag == "ci" {
                assert_eq!(upper.unwrap().tables[1].inserted, 2);
            } else {
                let err = upper.unwrap_err();
                assert!(matches!(err, SliceError::Refused(_)), "{tag}: {err}");
            }
        }
    })
    .await;
}

/// A uuid in `BINARY(16)` is matched by its 16 bytes; an id that cannot be one is refused.
#[tokio::test]
async fn binary_uuid_keys_are_copied() {
    with_pair("binary_uuid_keys_are_copied", async |pair: &Pair| {
        let store = "UNHEX(REPLACE(?, '-', ''))";
        let tenants = [pair.sites[0].as_str(), pair.sites[1].as_str()];
        for url in [&pair.backup.url, &pair.live.url] {
            load_orgs(url, "u", "BINARY(16)", store, &tenants).await;
        }
        let plan = restore_first_org(pair, "u", store, &tenants).await;
        assert_eq!(plan.root.as_ref().unwrap().data_type, "binary(16)");
        let err = copy(&pair.backup.url, &pair.live.url, &plan, "longer than sixteen bytes")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SliceError::BadTenant { data_type, .. } if data_type == "binary(16)")
        );
        assert!(!err.is_transient());
        // A uuid the source does not have: refused, with the key as the server holds it.
        let unknown = uuid::Uuid::new_v4();
        let err =
            copy(&pair.backup.url, &pair.live.url, &plan, &unknown.to_string()).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SliceError::Refused(_)), "{message}");
        assert!(message.contains(&unknown.simple().to_string().to_uppercase()), "{message}");
    })
    .await;
}

/// A copy from a source without the tenant's root row would only delete: refused first.
#[tokio::test]
async fn an_empty_source_slice_is_refused_and_nothing_is_deleted() {
    with_pair("an_empty_source_slice_is_refused_and_nothing_is_deleted", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let site = uuid::Uuid::new_v4().to_string();
        let mut c = connect(live).await;
        sqlx::query("INSERT INTO sites (id, name) VALUES (?, 'only live')")
            .bind(&site)
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO projects (site_id, name) VALUES (?, 'only live')")
            .bind(&site)
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        let before = digest(live, &plan, &site).await;
        assert_eq!((before.tables[0].rows, before.tables[1].rows), (1, 1));
        let err = copy(backup, live, &plan, &site).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the source has no `sites` row with `id` = {site}: nothing to restore; \
                 nothing was deleted"
            )
        );
        assert!(!err.is_transient());
        assert_eq!(digest(live, &plan, &site).await, before, "nothing deleted");
    })
    .await;
}

/// Triggers fire during a copy on MariaDB: one on a restored table that does not test
/// `@rewind_restore` refuses the copy; guarded, it lets the copy through untouched.
#[tokio::test]
async fn an_unguarded_trigger_refuses_the_copy() {
    with_pair("an_unguarded_trigger_refuses_the_copy", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let site = &pair.sites[0];
        delete_tenant(live, site).await;
        let before = digest(live, &plan, site).await;
        let mut c = connect(live).await;
        exec(
            &mut c,
            "CREATE TRIGGER comments_touch BEFORE INSERT ON comments FOR EACH ROW \
             SET NEW.body = CONCAT(COALESCE(NEW.body, ''), ' (edited)')",
        )
        .await;
        // On a table the copy does not write, a trigger is no concern.
        exec(
            &mut c,
            "CREATE TRIGGER audit_touch BEFORE INSERT ON audit FOR EACH ROW SET NEW.action = 'x'",
        )
        .await;
        let err = copy(backup, live, &plan, site).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SliceError::Refused(_)), "{message}");
        assert!(
            message.contains("`comments_touch` on `comments`")
                && !message.contains("audit_touch")
                && !message.contains("issues_ai")
                && message.contains("@rewind_restore IS NULL"),
            "{message}"
        );
        assert_eq!(digest(live, &plan, site).await, before, "nothing written");

        exec(&mut c, "DROP TRIGGER comments_touch").await;
        exec(
            &mut c,
            "CREATE TRIGGER comments_touch BEFORE INSERT ON comments FOR EACH ROW \
             IF @REWIND_RESTORE IS NULL THEN \
               SET NEW.body = CONCAT(COALESCE(NEW.body, ''), ' (edited)'); \
             END IF",
        )
        .await;
        c.close().await.unwrap();
        copy(backup, live, &plan, site).await.unwrap();
        assert_eq!(digest(live, &plan, site).await, digest(backup, &plan, site).await);
    })
    .await;
}

/// Another tenant's issue whose parent is this tenant's issue: a copy that deletes the parent
/// and does not insert it again is refused; one that inserts it again goes through.
#[tokio::test]
async fn other_tenants_rows_of_planned_tables_are_not_orphaned() {
    with_pair("other_tenants_rows_of_planned_tables_are_not_orphaned", async |pair: &Pair| {
        let (backup, live) = (&pair.backup.url, &pair.live.url);
        let plan = plan_of(live).await;
        let (site, other) = (&pair.sites[0], &pair.sites[1]);
        // Issues 1-3 are tenant 0's, 4-6 tenant 1's (first round). Live has an issue 9000 of
        // tenant 0 that the backup lacks; tenant 1's issue 5 hangs under it, its issue 4
        // under issue 1, which the backup has.
        let mut c = connect(live).await;
        exec(
            &mut c,
            "INSERT INTO issues (id, project_id, title) \
             SELECT 9000, project_id, 'late' FROM issues WHERE id = 1",
        )
        .await;
        exec(&mut c, "UPDATE issues SET parent_id = 9000 WHERE id = 5").await;
        exec(&mut c, "UPDATE issues SET parent_id = 1 WHERE id = 4").await;
        let before = (digest(live, &plan, site).await, digest(live, &plan, other).await);
        let err = copy(backup, live, &plan, site).await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SliceError::Refused(_)), "{message}");
        assert!(
            message.starts_with("1 row(s) of `issues` outside the tenant's slice")
                && message.contains("`fk_issues_parent`"),
            "{message}"
        );
        let after = (digest(live, &plan, site).await, digest(live, &plan, other).await);
        assert_eq!(after, before, "nothing written");

        exec(&mut c, "UPDATE issues SET parent_id = NULL WHERE id = 5").await;
        c.close().await.unwrap();
        copy(backup, live, &plan, site).await.unwrap();
        assert_eq!(digest(live, &plan, site).await, digest(backup, &plan, site).await);
        assert_eq!(scalar_i64(live, "SELECT parent_id FROM issues WHERE id = 4").await, 1);
    })
    .await;
}
