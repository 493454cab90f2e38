//! PostgreSQL slices against the server at `REWIND_TEST_POSTGRES`: every test makes its own
//! databases (a "backup" and a "live"), and drops them also when it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rewind_slice::plan::RootKey;
use rewind_slice::{Schema, SliceError, SlicePlan, SliceTable, Via, pg};
use rewind_testkit::{PgDatabase, PgSchema, postgres_url};
use sqlx::{Connection, PgConnection};

// ---------------------------------------------------------------------------------------------
// Harness

/// Runs `body` with two fresh databases (backup, live) and drops them afterwards, whatever
/// happened.
async fn with_two<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(base) = postgres_url(test) else { return };
    let backup = PgDatabase::create(&base).await;
    let live = PgDatabase::create(&base).await;
    let outcome = AssertUnwindSafe(body(backup.url.clone(), live.url.clone())).catch_unwind().await;
    backup.drop_database().await;
    live.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` with two fresh schemas (backup, live) of one database, their URLs setting the
/// search path, and drops them afterwards, whatever happened.
async fn with_two_schemas<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(base) = postgres_url(test) else { return };
    let backup = PgSchema::create(&base).await;
    let live = PgSchema::create(&base).await;
    let outcome = AssertUnwindSafe(body(backup.url.clone(), live.url.clone())).catch_unwind().await;
    backup.drop_schema().await;
    live.drop_schema().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A plan as `plan::plan` makes it: `tables` in insert order, each with the constraints of its
/// vias (the root's via is its key); paths follow the first via.
fn plan_of(
    schema: &Schema,
    root: &str,
    tables: &[(&str, &[&str])],
    set_after: &[(&str, &str)],
    deferred: &[(&str, &str)],
) -> SlicePlan {
    let root_table = &schema.tables[root];
    let key = root_table.primary_key[0].clone();
    let mut planned: Vec<SliceTable> = Vec::new();
    for (name, vias) in tables {
        let t = &schema.tables[*name];
        let via: Vec<Via> = if *name == root {
            vec![Via::Root { column: key.clone() }]
        } else {
            vias.iter()
                .map(|c| {
                    let fk = t.foreign_keys.iter().find(|f| f.name == *c).expect("constraint");
                    Via::Parent {
                        constraint: fk.name.clone(),
                        columns: fk.columns.clone(),
                        parent: fk.parent.clone(),
                        parent_columns: fk.parent_columns.clone(),
                        nullable: fk.columns.iter().any(|c| t.column(c).expect("col").nullable),
                        declared: false,
                    }
                })
                .collect()
        };
        let path = match via.first() {
            Some(Via::Parent { parent, .. }) => {
                let mut p = vec![name.to_string()];
                p.extend(planned.iter().find(|s| &s.name == parent).expect("parent").path.clone());
                p
            }
            _ => vec![name.to_string()],
        };
        planned.push(SliceTable {
            name: name.to_string(),
            columns: t.columns.clone(),
            primary_key: t.primary_key.clone(),
            via,
            path,
            set_after: set_after
                .iter()
                .filter(|(t, _)| t == name)
                .map(|(_, c)| c.to_string())
                .collect(),
            triggers: t.triggers.clone(),
        });
    }
    SlicePlan {
        engine: schema.engine,
        root: Some(RootKey {
            table: root.to_owned(),
            column: key.clone(),
            data_type: root_table.column(&key).expect("key").data_type.clone(),
        }),
        tables: planned,
        deferred: deferred.iter().map(|(t, c)| (t.to_string(), c.to_string())).collect(),
        tenant_column: None,
        references: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The realistic schema

const SCHEMA: &str = r#"
CREATE TABLE sites (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, email text NOT NULL);
CREATE TABLE projects (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites,
    owner_id bigint REFERENCES users,
    name text NOT NULL,
    slug text GENERATED ALWAYS AS (lower(name) || '-' || id::text) STORED
);
CREATE TYPE version_state AS ENUM ('open', 'released');
CREATE TABLE versions (
    project_id bigint NOT NULL REFERENCES projects,
    num int NOT NULL,
    label text,
    states version_state[],
    -- A type without binary send/receive (as some extension types): this table goes in text.
    acl aclitem[],
    PRIMARY KEY (project_id, num)
);
CREATE TABLE issues (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES projects,
    parent_id bigint REFERENCES issues,
    title text NOT NULL
);
CREATE TABLE issue_versions (
    issue_id bigint NOT NULL REFERENCES issues,
    num int NOT NULL,
    project_id bigint NOT NULL,
    PRIMARY KEY (issue_id, num),
    CONSTRAINT issue_versions_version_fkey FOREIGN KEY (project_id, num)
        REFERENCES versions (project_id, num)
);
CREATE TABLE comments (
    id bigserial PRIMARY KEY,
    issue_id bigint NOT NULL REFERENCES issues,
    body text NOT NULL,
    body_len int GENERATED ALWAYS AS (length(body)) STORED,
    tags text[], nums int[], doc jsonb, raw json, blob bytea,
    at timestamptz, local timestamp, day date, amount numeric(30,10), ratio float8,
    flag boolean, ref uuid, note text
);
CREATE TABLE audit (id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (tbl, op) VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER projects_audit AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER issues_audit AFTER INSERT OR UPDATE OR DELETE ON issues
    FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER comments_audit AFTER INSERT OR UPDATE OR DELETE ON comments
    FOR EACH ROW EXECUTE FUNCTION audit_row();
INSERT INTO users (id, email) VALUES (1, 'a@x'), (2, 'b@x'), (3, 'c@x');
"#;

/// One tenant's rows (`$1` = k): 1 site, 2 projects, 4 versions, 6 issues (2 sub-tasks),
/// 6 issue versions, 12 comments with every type (every fifth comment's optional cells NULL).
const TENANT: [&str; 6] = [
    "INSERT INTO sites (id, name) VALUES \
       (('00000000-0000-4000-8000-' || lpad($1::text, 12, '0'))::uuid, 'site ' || $1)",
    "INSERT INTO projects (id, site_id, owner_id, name) OVERRIDING SYSTEM VALUE \
       SELECT $1 * 10 + j, ('00000000-0000-4000-8000-' || lpad($1::text, 12, '0'))::uuid, \
              CASE WHEN j = 1 THEN 1 + $1 % 3 END, 'Project ' || j \
       FROM generate_series(1, 2) j",
    "INSERT INTO versions (project_id, num, label, states, acl) \
       SELECT $1 * 10 + j, v, 'v' || v, ARRAY['open', 'released']::version_state[], \
              ARRAY['postgres=r/postgres', '=w/postgres']::aclitem[] \
       FROM generate_series(1, 2) j, generate_series(1, 2) v",
    "INSERT INTO issues (id, project_id, parent_id, title) \
       SELECT $1 * 100 + j * 10 + i, $1 * 10 + j, \
              CASE WHEN i = 3 THEN $1 * 100 + j * 10 + 1 END, 'issue ' || i \
       FROM generate_series(1, 2) j, generate_series(1, 3) i ORDER BY i",
    "INSERT INTO issue_versions (issue_id, num, project_id) \
       SELECT $1 * 100 + j * 10 + i, 1 + i % 2, $1 * 10 + j \
       FROM generate_series(1, 2) j, generate_series(1, 3) i",
    r#"INSERT INTO comments (id, issue_id, body, tags, nums, doc, raw, blob, at, local, day,
                             amount, ratio, flag, ref, note)
       SELECT n, $1 * 100 + j * 10 + i,
              E'tab\there\nnew "double" ''single'' back\\slash ünïcødé ✓ \u00e9 ' || n,
              CASE WHEN n % 5 <> 0 THEN ARRAY['a', NULL, 'c,d "q"', n::text] END,
              CASE WHEN n % 5 <> 0 THEN ARRAY[1, NULL, n::int] END,
              CASE WHEN n % 5 <> 0 THEN jsonb_build_object('k', n, 'nested', jsonb_build_array(1, 'x', NULL, 1.50)) END,
              CASE WHEN n % 5 <> 0 THEN '{"b": 1,   "a": [1, 2], "b": 2}'::json END,
              CASE WHEN n % 5 <> 0 THEN '\x00ff00'::bytea || int4send(n::int) END,
              CASE WHEN n % 5 <> 0 THEN timestamptz '2024-03-10 01:59:59.123456+05:30' + n * interval '1 hour' END,
              CASE WHEN n % 5 <> 0 THEN timestamp '1999-12-31 23:59:59.999999' END,
              CASE WHEN n % 5 <> 0 THEN date '2000-02-29' + n::int END,
              CASE WHEN n % 5 <> 0 THEN 12345678901234567890.0123456789 - n END,
              CASE n % 3 WHEN 0 THEN 0.1::float8 + 0.2::float8 WHEN 1 THEN 1e308 ELSE -2.5e-300 END,
              CASE WHEN n % 5 <> 0 THEN n % 2 = 0 END,
              CASE WHEN n % 5 <> 0 THEN md5(n::text)::uuid END,
              CASE WHEN n % 2 = 0 THEN 'note' END
       FROM generate_series(1, 2) j, generate_series(1, 3) i, generate_series(1, 2) c,
            LATERAL (SELECT $1 * 1000 + j * 100 + i * 10 + c AS n) x"#,
];

const SEQUENCED: [&str; 4] = ["users", "projects", "issues", "comments"];

/// Tenants 0..6 exist in the backup.
const TENANTS: i64 = 6;
/// Deleted from live and restored: the last three, whose rows hold the largest ids.
const RESTORED: [i64; 3] = [3, 4, 5];

fn site(k: i64) -> String {
    format!("00000000-0000-4000-8000-{k:012}")
}

async fn load(conn: &mut PgConnection, tenants: impl Iterator<Item = i64>) {
    exec(conn, SCHEMA).await;
    for k in tenants {
        for sql in TENANT {
            sqlx::query(sql)
                .bind(k)
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    set_sequences(conn).await;
}

/// Each sequence to the largest id in its table, as an application's inserts would leave it.
async fn set_sequences(conn: &mut PgConnection) {
    for t in SEQUENCED {
        exec(
            conn,
            &format!("SELECT setval(pg_get_serial_sequence('{t}', 'id'), max(id)) FROM {t}"),
        )
        .await;
    }
}

/// Deletes tenant `k`'s rows, children first.
async fn delete_tenant(conn: &mut PgConnection, k: i64) {
    let s = site(k);
    exec(
        conn,
        &format!(
            "DELETE FROM comments WHERE issue_id IN (SELECT id FROM issues WHERE project_id IN \
               (SELECT id FROM projects WHERE site_id = '{s}'));
             DELETE FROM issue_versions WHERE project_id IN (SELECT id FROM projects WHERE site_id = '{s}');
             DELETE FROM issues WHERE project_id IN (SELECT id FROM projects WHERE site_id = '{s}');
             DELETE FROM versions WHERE project_id IN (SELECT id FROM projects WHERE site_id = '{s}');
             DELETE FROM projects WHERE site_id = '{s}';
             DELETE FROM sites WHERE id = '{s}';"
        ),
    )
    .await;
}

/// The plan `plan::plan` makes for [`SCHEMA`] with `root = "sites"`.
fn sites_plan(schema: &Schema) -> SlicePlan {
    plan_of(
        schema,
        "sites",
        &[
            ("sites", &[]),
            ("projects", &["projects_site_id_fkey"]),
            ("versions", &["versions_project_id_fkey"]),
            ("issues", &["issues_project_id_fkey"]),
            ("issue_versions", &["issue_versions_version_fkey"]),
            ("comments", &["comments_issue_id_fkey"]),
        ],
        &[],
        &[],
    )
}

/// Backup with every tenant; live without the [`RESTORED`] ones, its sequences set to what is
/// left (a live database rebuilt without them: the restored ids are ahead of its sequences).
async fn backup_and_live(backup_url: &str, live_url: &str) -> (PgConnection, PgConnection) {
    let mut backup = connect(backup_url).await;
    let mut live = connect(live_url).await;
    load(&mut backup, 0..TENANTS).await;
    load(&mut live, 0..TENANTS).await;
    for k in RESTORED {
        delete_tenant(&mut live, k).await;
    }
    set_sequences(&mut live).await;
    (backup, live)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn the_catalog_gives_tables_keys_references_sequences_and_triggers() {
    with_two("pg catalog", |url, _| async move {
        let mut conn = connect(&url).await;
        exec(&mut conn, SCHEMA).await;
        let schema = pg::schema(&mut conn).await.expect("schema");
        let names: Vec<&str> = schema.tables.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "audit",
                "comments",
                "issue_versions",
                "issues",
                "projects",
                "sites",
                "users",
                "versions"
            ]
        );
        let projects = &schema.tables["projects"];
        let id = projects.column("id").expect("id");
        assert_eq!(id.data_type, "bigint");
        assert!(!id.nullable);
        assert_eq!(id.sequence.as_deref(), Some("public.projects_id_seq"));
        let slug = projects.column("slug").expect("slug");
        assert!(slug.generated && slug.nullable && slug.sequence.is_none());
        assert_eq!(projects.triggers, ["projects_audit"]);
        assert_eq!(schema.tables["sites"].column("id").expect("id").data_type, "uuid");
        assert_eq!(schema.tables["versions"].primary_key, ["project_id", "num"]);
        let iv = &schema.tables["issue_versions"];
        let fk =
            iv.foreign_keys.iter().find(|f| f.name == "issue_versions_version_fkey").expect("fk");
        assert_eq!(fk.columns, ["project_id", "num"]);
        assert_eq!(fk.parent, "versions");
        assert_eq!(fk.parent_columns, ["project_id", "num"]);
        assert!(!fk.deferrable);
        let issues = &schema.tables["issues"];
        assert!(
            issues.foreign_keys.iter().any(|f| f.parent == "issues" && f.columns == ["parent_id"])
        );
        assert_eq!(
            issues.column("id").expect("id").sequence.as_deref(),
            Some("public.issues_id_seq")
        );
        let c = &schema.tables["comments"];
        assert_eq!(c.column("amount").expect("amount").data_type, "numeric(30,10)");
        assert_eq!(c.column("at").expect("at").data_type, "timestamp with time zone");
        assert_eq!(c.column("tags").expect("tags").data_type, "text[]");
        assert!(schema.tables["sites"].triggers.is_empty());
    })
    .await;
}

#[tokio::test]
async fn three_tenants_are_restored_exactly_and_again() {
    with_two("pg restore", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        let mut before = Vec::new();
        for k in 0..TENANTS {
            before.push(pg::digest(&mut live, &plan, &site(k)).await.expect("digest"));
        }
        let audit = scalar_i64(&mut live, "SELECT count(*) FROM audit").await;
        let max_audit = scalar_i64(&mut live, "SELECT max(id) FROM audit").await;

        for k in RESTORED {
            let report = pg::copy(&mut backup, &mut live, &plan, &site(k)).await.expect("copy");
            let inserted: Vec<(&str, u64)> =
                report.tables.iter().map(|t| (t.table.as_str(), t.inserted)).collect();
            assert_eq!(
                inserted,
                [
                    ("sites", 1),
                    ("projects", 2),
                    ("versions", 4),
                    ("issues", 6),
                    ("issue_versions", 6),
                    ("comments", 12)
                ]
            );
            assert!(report.tables.iter().all(|t| t.deleted == 0), "{report:?}");
        }
        for k in 0..TENANTS {
            let now = pg::digest(&mut live, &plan, &site(k)).await.expect("digest");
            let expected = if RESTORED.contains(&k) {
                pg::digest(&mut backup, &plan, &site(k)).await.expect("digest")
            } else {
                before[k as usize].clone()
            };
            assert_eq!(now, expected, "tenant {k}");
            assert!(now.tables.iter().all(|t| t.rows > 0), "tenant {k}: {now:?}");
        }
        assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM audit").await, audit);
        assert_eq!(scalar_i64(&mut live, "SELECT max(id) FROM audit").await, max_audit);
        // Byte-identical cells, compared on the server across the two databases' dumps.
        let dump = "SELECT string_agg(c::text, '|' ORDER BY id) FROM comments c";
        let b: String = sqlx::query_scalar(dump).fetch_one(&mut backup).await.expect("dump");
        let l: String = sqlx::query_scalar(dump).fetch_one(&mut live).await.expect("dump");
        assert_eq!(b, l);

        // The sequences went past the restored ids: new rows insert without a collision.
        let k = RESTORED[2];
        let project = scalar_i64(
            &mut live,
            &format!(
                "INSERT INTO projects (site_id, name) VALUES ('{}', 'New') RETURNING id",
                site(k)
            ),
        )
        .await;
        assert!(project > k * 10 + 2, "projects' sequence was not advanced: {project}");
        let issue = scalar_i64(
            &mut live,
            &format!(
                "INSERT INTO issues (project_id, title) VALUES ({project}, 'new') RETURNING id"
            ),
        )
        .await;
        assert!(issue > k * 100 + 23, "issues' sequence was not advanced: {issue}");
        let comment = scalar_i64(
            &mut live,
            &format!("INSERT INTO comments (issue_id, body) VALUES ({issue}, 'new') RETURNING id"),
        )
        .await;
        assert!(comment > k * 1000 + 232, "comments' sequence was not advanced: {comment}");

        // Again: the new rows go, the backup's rows are back, the sequences do not go back.
        let report = pg::copy(&mut backup, &mut live, &plan, &site(k)).await.expect("copy again");
        let deleted: Vec<u64> = report.tables.iter().map(|t| t.deleted).collect();
        assert_eq!(deleted, [1, 3, 4, 7, 6, 13]);
        for k in RESTORED {
            pg::copy(&mut backup, &mut live, &plan, &site(k)).await.expect("copy again");
            assert_eq!(
                pg::digest(&mut live, &plan, &site(k)).await.expect("digest"),
                pg::digest(&mut backup, &plan, &site(k)).await.expect("digest")
            );
        }
        let next = scalar_i64(
            &mut live,
            &format!(
                "INSERT INTO projects (site_id, name) VALUES ('{}', 'Next') RETURNING id",
                site(k)
            ),
        )
        .await;
        assert!(next > project, "projects' sequence went back: {next} after {project}");
    })
    .await;
}

#[tokio::test]
async fn a_tenant_id_that_is_not_a_key_is_a_permanent_error() {
    with_two("pg bad tenant", |backup_url, live_url| async move {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        exec(&mut backup, SCHEMA).await;
        exec(&mut live, SCHEMA).await;
        exec(&mut backup, "CREATE TABLE accounts (id bigint PRIMARY KEY)").await;
        exec(&mut live, "CREATE TABLE accounts (id bigint PRIMARY KEY)").await;
        let schema = pg::schema(&mut backup).await.expect("schema");
        let plan = sites_plan(&schema);
        for bad in ["not-a-uuid", "", "00000000-0000-4000-8000-00000000000g"] {
            let e = pg::copy(&mut backup, &mut live, &plan, bad).await.expect_err("bad tenant");
            assert!(
                matches!(&e, SliceError::BadTenant { data_type, .. } if data_type == "uuid"),
                "{e:?}"
            );
            assert!(!e.is_transient());
            assert!(e.to_string().contains("`sites`.`id`"), "{e}");
            let e = pg::digest(&mut live, &plan, bad).await.expect_err("bad tenant");
            assert!(matches!(e, SliceError::BadTenant { .. }), "{e:?}");
        }
        let accounts = plan_of(&schema, "accounts", &[("accounts", &[])], &[], &[]);
        for bad in ["99999999999999999999", "1.5", "x"] {
            let e = pg::copy(&mut backup, &mut live, &accounts, bad).await.expect_err("bad tenant");
            assert!(
                matches!(&e, SliceError::BadTenant { data_type, .. } if data_type == "bigint"),
                "{e:?}"
            );
        }
        // The connections are usable afterwards (the transactions were ended).
        exec(&mut backup, "INSERT INTO accounts VALUES (42)").await;
        pg::copy(&mut backup, &mut live, &accounts, "42").await.expect("a good id copies");
        assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM accounts WHERE id = 42").await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_column_missing_on_one_side_is_refused_and_nothing_is_written() {
    with_two("pg missing column", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        exec(&mut live, "ALTER TABLE comments DROP COLUMN note").await;
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("`comments`.`note`"), "{e}");
        assert!(e.to_string().contains("destination"), "{e}");
        assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM projects").await, 6);
        exec(&mut live, "ALTER TABLE comments ADD COLUMN note bigint").await;
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        assert!(e.to_string().contains("`note` is `bigint` in the destination"), "{e}");
        exec(
            &mut live,
            "ALTER TABLE comments DROP COLUMN note; ALTER TABLE comments ADD COLUMN note text",
        )
        .await;
        exec(&mut live, "ALTER TABLE issues ADD COLUMN extra int").await;
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        assert!(e.to_string().contains("`issues`.`extra` exists in the destination"), "{e}");
        exec(&mut live, "ALTER TABLE issues DROP COLUMN extra").await;
        pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect("copy once the sides agree");
    })
    .await;
}

#[tokio::test]
async fn a_reference_to_a_row_live_does_not_have_is_refused_and_nothing_is_written() {
    with_two("pg dangling", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        // Tenant 3's first project is owned by user 1 (1 + 3 % 3); live lost that user.
        exec(&mut live, "UPDATE projects SET owner_id = NULL WHERE owner_id = 1; DELETE FROM users WHERE id = 1").await;
        let before = pg::digest(&mut live, &plan, &site(3)).await.expect("digest");
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        let text = e.to_string();
        assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
        assert!(text.contains("`projects`") && text.contains("`users`"), "{text}");
        assert!(text.contains("projects_owner_id_fkey") && text.contains(": 1 rows"), "{text}");
        assert_eq!(pg::digest(&mut live, &plan, &site(3)).await.expect("digest"), before);
        assert!(before.tables.iter().all(|t| t.rows == 0));
        // A reference between planned tables that no via decides is checked too: a sub-task of
        // tenant 3 whose parent task is tenant 2's, which live lost.
        exec(&mut live, "INSERT INTO users (id, email) VALUES (1, 'a@x')").await;
        exec(&mut backup, "UPDATE issues SET parent_id = 211 WHERE id = 313").await;
        exec(
            &mut live,
            "DELETE FROM comments WHERE issue_id = 211; DELETE FROM issue_versions WHERE issue_id = 211;
             UPDATE issues SET parent_id = NULL WHERE parent_id = 211; DELETE FROM issues WHERE id = 211",
        )
        .await;
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("issues_parent_id_fkey") && text.contains(": 1 rows"), "{text}");
        assert!(!text.contains("users"), "{text}");
        assert_eq!(pg::digest(&mut live, &plan, &site(3)).await.expect("digest"), before);
        exec(&mut backup, "UPDATE issues SET parent_id = 311 WHERE id = 313").await;
        pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect("copy once the parent is there");
        // A row of a table the plan leaves out that references a deleted row is refused too.
        let partial = plan_of(
            &pg::schema(&mut backup).await.expect("schema"),
            "sites",
            &[("sites", &[]), ("projects", &["projects_site_id_fkey"]), ("versions", &["versions_project_id_fkey"])],
            &[],
            &[],
        );
        exec(&mut backup, "UPDATE projects SET owner_id = NULL").await;
        exec(&mut backup, "DELETE FROM comments WHERE issue_id IN (SELECT id FROM issues WHERE project_id = 1);
                           DELETE FROM issue_versions WHERE project_id = 1;
                           DELETE FROM issues WHERE project_id = 1;
                           DELETE FROM versions WHERE project_id = 1;
                           DELETE FROM projects WHERE id = 1").await;
        let e = pg::copy(&mut backup, &mut live, &partial, &site(0)).await.expect_err("refused");
        assert!(e.to_string().contains("which the plan leaves out"), "{e}");
        assert!(e.to_string().contains("`issues`"), "{e}");
        assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM projects WHERE id = 1").await, 1);
    })
    .await;
}

const CYCLES: &str = r#"
CREATE TABLE orgs (id bigint PRIMARY KEY, name text);
CREATE TABLE teams (
    id bigint PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES orgs,
    lead_id bigint
);
CREATE TABLE members (id bigint PRIMARY KEY, team_id bigint NOT NULL REFERENCES teams);
ALTER TABLE teams ADD CONSTRAINT teams_lead_fkey FOREIGN KEY (lead_id) REFERENCES members
    DEFERRABLE INITIALLY IMMEDIATE;
CREATE TABLE boards (
    id bigserial PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES orgs,
    default_col bigint
);
CREATE TABLE cols (id bigint PRIMARY KEY, board_id bigint NOT NULL REFERENCES boards, name text);
ALTER TABLE boards ADD CONSTRAINT boards_default_col_fkey FOREIGN KEY (default_col) REFERENCES cols;
"#;

async fn load_cycles(conn: &mut PgConnection, orgs: &[i64]) {
    exec(conn, CYCLES).await;
    for k in orgs {
        exec(
            conn,
            &format!(
                "BEGIN;
                 SET CONSTRAINTS teams_lead_fkey DEFERRED;
                 INSERT INTO orgs VALUES ({k}, 'org {k}');
                 INSERT INTO teams VALUES ({k}0, {k}, {k}01), ({k}1, {k}, NULL);
                 INSERT INTO members VALUES ({k}01, {k}0), ({k}02, {k}0), ({k}11, {k}1);
                 INSERT INTO boards (id, org_id) VALUES ({k}, {k});
                 INSERT INTO cols VALUES ({k}1, {k}, 'todo'), ({k}2, {k}, 'done');
                 UPDATE boards SET default_col = {k}2 WHERE id = {k};
                 COMMIT;"
            ),
        )
        .await;
    }
}

fn cycles_plan(schema: &Schema) -> SlicePlan {
    plan_of(
        schema,
        "orgs",
        &[
            ("orgs", &[]),
            ("teams", &["teams_org_id_fkey"]),
            ("boards", &["boards_org_id_fkey"]),
            ("members", &["members_team_id_fkey"]),
            ("cols", &["cols_board_id_fkey"]),
        ],
        &[("boards", "default_col")],
        &[("teams", "teams_lead_fkey")],
    )
}

#[tokio::test]
async fn reference_cycles_copy_in_checked_mode_and_in_replica_mode() {
    let Some(base) = postgres_url("pg cycles") else { return };
    let role = format!("rewind_test_{}", uuid_like());
    let mut admin = connect(&base).await;
    exec(&mut admin, &format!("CREATE ROLE {role} LOGIN")).await;
    let outcome = AssertUnwindSafe(with_two("pg cycles", |backup_url, live_url| {
        let role = role.clone();
        async move {
            let mut backup = connect(&backup_url).await;
            let mut live = connect(&live_url).await;
            load_cycles(&mut backup, &[1, 2, 3]).await;
            load_cycles(&mut live, &[1, 2, 3]).await;
            for conn in [&mut backup, &mut live] {
                exec(
                    conn,
                    &format!(
                        "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};
                         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};"
                    ),
                )
                .await;
            }
            // Live lost org 2's board and its columns.
            exec(
                &mut live,
                "UPDATE boards SET default_col = NULL WHERE id = 2; DELETE FROM cols WHERE board_id = 2;
                 DELETE FROM boards WHERE id = 2;",
            )
            .await;
            let plan = cycles_plan(&pg::schema(&mut backup).await.expect("schema"));
            let as_role = |url: &str| url.replacen("postgres@", &format!("{role}@"), 1);
            let mut role_src = connect(&as_role(&backup_url)).await;
            let mut role_dst = connect(&as_role(&live_url)).await;
            // The role may not skip triggers: the copies below run in checked mode.
            let denied = sqlx::raw_sql("SET session_replication_role = replica").execute(&mut role_dst).await;
            let code = denied.expect_err("not a superuser").as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("42501"));
            for k in ["1", "2", "3"] {
                let report = pg::copy(&mut role_src, &mut role_dst, &plan, k).await.expect("checked copy");
                assert_eq!(report.tables.iter().map(|t| t.inserted).sum::<u64>(), 1 + 2 + 1 + 3 + 2);
                assert_eq!(
                    pg::digest(&mut live, &plan, k).await.expect("digest"),
                    pg::digest(&mut backup, &plan, k).await.expect("digest"),
                    "org {k}"
                );
            }
            assert_eq!(scalar_i64(&mut live, "SELECT default_col FROM boards WHERE id = 2").await, 22);
            // A new board after the restore takes an id past the restored ones.
            let board = scalar_i64(&mut live, "INSERT INTO boards (org_id) VALUES (1) RETURNING id").await;
            assert!(board > 3, "{board}");
            exec(&mut live, &format!("DELETE FROM boards WHERE id = {board}")).await;
            // Checked mode runs the server's delete actions: a key from a table the plan leaves
            // out with ON DELETE CASCADE would delete its rows. Refused, nothing written.
            exec(
                &mut live,
                &format!(
                    "CREATE TABLE badges (id bigint PRIMARY KEY,
                         member_id bigint REFERENCES members ON DELETE CASCADE);
                     INSERT INTO badges VALUES (1, 101);
                     GRANT ALL ON badges TO {role};"
                ),
            )
            .await;
            let e = pg::copy(&mut role_src, &mut role_dst, &plan, "1").await.expect_err("refused");
            assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("badges_member_id_fkey") && text.contains("ON DELETE CASCADE"), "{text}");
            assert!(text.contains("`badges` → `members`"), "{text}");
            assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM badges").await, 1);
            // Checked mode refuses a plan whose tables have user triggers: they would fire.
            let mut with_trigger = plan.clone();
            with_trigger.tables[1].triggers = vec!["teams_audit".to_owned()];
            let e = pg::copy(&mut role_src, &mut role_dst, &with_trigger, "1").await.expect_err("refused");
            assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
            assert!(e.to_string().contains("`teams` (teams_audit)"), "{e}");
            assert!(e.to_string().contains("GRANT SET ON PARAMETER session_replication_role"), "{e}");
            // A superuser copies the same plan in replica mode.
            for k in ["1", "2", "3"] {
                pg::copy(&mut backup, &mut live, &plan, k).await.expect("replica copy");
                assert_eq!(
                    pg::digest(&mut live, &plan, k).await.expect("digest"),
                    pg::digest(&mut backup, &plan, k).await.expect("digest")
                );
            }
            // Replica mode runs no delete action, and member 101 is put back: the badge stays.
            assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM badges WHERE member_id = 101").await, 1);
            let _ = role_src.close().await;
            let _ = role_dst.close().await;
        }
    }))
    .catch_unwind()
    .await;
    exec(&mut admin, &format!("DROP ROLE {role}")).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn the_destinations_sequences_advance_when_both_sides_are_schemas_of_one_database() {
    with_two_schemas("pg schemas", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        // An older backup: its sequences are behind the largest ids live will hold.
        for t in SEQUENCED {
            exec(&mut backup, &format!("SELECT setval(pg_get_serial_sequence('{t}', 'id'), 1)"))
                .await;
        }
        let backup_sequences = last_values(&mut backup).await;
        let schema = pg::schema(&mut backup).await.expect("schema");
        // The catalog names the backup's sequences, qualified by the backup's schema.
        let seq = schema.tables["projects"].column("id").expect("id").sequence.clone();
        assert!(seq.as_deref().is_some_and(|s| s.ends_with(".projects_id_seq")), "{seq:?}");
        let plan = sites_plan(&schema);
        for k in RESTORED {
            pg::copy(&mut backup, &mut live, &plan, &site(k)).await.expect("copy");
            assert_eq!(
                pg::digest(&mut live, &plan, &site(k)).await.expect("digest"),
                pg::digest(&mut backup, &plan, &site(k)).await.expect("digest")
            );
        }
        let k = RESTORED[2];
        let project = scalar_i64(
            &mut live,
            &format!(
                "INSERT INTO projects (site_id, name) VALUES ('{}', 'New') RETURNING id",
                site(k)
            ),
        )
        .await;
        assert!(project > k * 10 + 2, "live's projects sequence was not advanced: {project}");
        let issue = scalar_i64(
            &mut live,
            &format!("INSERT INTO issues (project_id, title) VALUES ({project}, 'n') RETURNING id"),
        )
        .await;
        assert!(issue > k * 100 + 23, "live's issues sequence was not advanced: {issue}");
        assert_eq!(
            last_values(&mut backup).await,
            backup_sequences,
            "the backup's sequences moved"
        );
    })
    .await;
}

/// `last_value` of each [`SEQUENCED`] table's sequence on the connection's search path.
async fn last_values(conn: &mut PgConnection) -> Vec<i64> {
    let mut out = Vec::new();
    for t in SEQUENCED {
        out.push(scalar_i64(conn, &format!("SELECT last_value FROM {t}_id_seq")).await);
    }
    out
}

const SHORT_KEYS: &str = r#"
CREATE TABLE orgs (id varchar(4) PRIMARY KEY, name text NOT NULL);
CREATE TABLE teams (id bigint PRIMARY KEY, org_id varchar(4) NOT NULL REFERENCES orgs, name text);
CREATE TABLE ledgers (id numeric(10,2) PRIMARY KEY, name text NOT NULL);
INSERT INTO orgs VALUES ('acme', 'Acme'), ('beta', 'Beta');
INSERT INTO teams VALUES (1, 'acme', 'live'), (2, 'beta', 'live');
INSERT INTO ledgers VALUES (1.50, 'live'), (1.56, 'live');
"#;

#[tokio::test]
async fn a_tenant_id_longer_than_the_key_never_selects_the_tenant_it_would_truncate_to() {
    with_two("pg key modifier", |backup_url, live_url| async move {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        exec(&mut backup, SHORT_KEYS).await;
        exec(&mut live, SHORT_KEYS).await;
        exec(&mut backup, "UPDATE teams SET name = 'backup'; UPDATE ledgers SET name = 'backup'")
            .await;
        let schema = pg::schema(&mut backup).await.expect("schema");
        let plan =
            plan_of(&schema, "orgs", &[("orgs", &[]), ("teams", &["teams_org_id_fkey"])], &[], &[]);
        let teams = "SELECT count(*) FROM teams WHERE name = 'live'";
        for bad in ["acme-eu", "acmeX", "beta "] {
            let e = pg::copy(&mut backup, &mut live, &plan, bad).await.expect_err("bad tenant");
            assert!(
                matches!(&e, SliceError::BadTenant { data_type, .. }
                    if data_type == "character varying(4)"),
                "{bad}: {e:?}"
            );
            let e = pg::digest(&mut live, &plan, bad).await.expect_err("bad tenant");
            assert!(matches!(e, SliceError::BadTenant { .. }), "{e:?}");
            assert_eq!(scalar_i64(&mut live, teams).await, 2, "{bad} touched another tenant");
        }
        pg::copy(&mut backup, &mut live, &plan, "acme").await.expect("a fitting id copies");
        assert_eq!(scalar_i64(&mut live, teams).await, 1);
        // numeric(10,2): 1.5 is the key 1.50; 1.555 would round to 1.56, another tenant.
        let ledgers = plan_of(&schema, "ledgers", &[("ledgers", &[])], &[], &[]);
        let e = pg::copy(&mut backup, &mut live, &ledgers, "1.555").await.expect_err("bad");
        assert!(matches!(e, SliceError::BadTenant { .. }), "{e:?}");
        let live_ledgers = "SELECT count(*) FROM ledgers WHERE name = 'live'";
        assert_eq!(scalar_i64(&mut live, live_ledgers).await, 2);
        pg::copy(&mut backup, &mut live, &ledgers, "1.5").await.expect("1.5 is 1.50");
        assert_eq!(
            scalar_i64(&mut live, "SELECT count(*) FROM ledgers WHERE id = 1.56 AND name = 'live'")
                .await,
            1
        );
        assert_eq!(scalar_i64(&mut live, live_ledgers).await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_tenant_the_source_does_not_have_is_refused_and_nothing_is_deleted() {
    with_two("pg empty source", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        // A tenant newer than the backup: live has it, the backup does not.
        delete_tenant(&mut backup, 1).await;
        let before = pg::digest(&mut live, &plan, &site(1)).await.expect("digest");
        assert!(before.tables.iter().all(|t| t.rows > 0));
        for k in [1, 99] {
            let e = pg::copy(&mut backup, &mut live, &plan, &site(k)).await.expect_err("refused");
            assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("the source has no `sites` row with id"), "{text}");
            assert!(text.contains(&site(k)) && text.contains("nothing was deleted"), "{text}");
        }
        assert_eq!(pg::digest(&mut live, &plan, &site(1)).await.expect("digest"), before);
    })
    .await;
}

#[tokio::test]
async fn rows_outside_the_slice_are_checked_before_and_after_and_only_for_the_tenant() {
    with_two("pg outside rows", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        // A table the plan leaves out, with a reference that was broken before the copy (a
        // NOT VALID key) and one to tenant 0's issue 11, which the copy of tenant 0 restores.
        exec(
            &mut live,
            "CREATE TABLE links (id int PRIMARY KEY, issue_id bigint);
             INSERT INTO links VALUES (1, 999999), (2, 11);
             ALTER TABLE links ADD CONSTRAINT links_issue_fkey FOREIGN KEY (issue_id)
                 REFERENCES issues NOT VALID;",
        )
        .await;
        pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect("an old violation elsewhere");
        pg::copy(&mut backup, &mut live, &plan, &site(0)).await.expect("issue 11 is put back");
        // Tenant 2's issue 211 is a sub-task of tenant 3's issue 311, which the backup lacks:
        // restoring tenant 3 would delete 311 under it.
        exec(&mut live, "UPDATE issues SET parent_id = 311 WHERE id = 211").await;
        exec(
            &mut backup,
            "UPDATE issues SET parent_id = NULL WHERE id = 313; DELETE FROM comments WHERE issue_id = 311;
             DELETE FROM issue_versions WHERE issue_id = 311; DELETE FROM issues WHERE id = 311;",
        )
        .await;
        let before = pg::digest(&mut live, &plan, &site(3)).await.expect("digest");
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        let text = e.to_string();
        assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
        assert!(text.contains("rows of `issues` outside the tenant's slice"), "{text}");
        assert!(text.contains("issues_parent_id_fkey") && text.contains(": 1 rows"), "{text}");
        assert_eq!(pg::digest(&mut live, &plan, &site(3)).await.expect("digest"), before);
        // A link to the issue the copy would drop is refused the same way.
        exec(&mut live, "UPDATE issues SET parent_id = NULL WHERE id = 211; UPDATE links SET issue_id = 311 WHERE id = 2").await;
        let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
        assert!(e.to_string().contains("rows of `links`, which the plan leaves out,"), "{e}");
        assert!(e.to_string().contains("links_issue_fkey"), "{e}");
        exec(&mut live, "DELETE FROM links WHERE id = 2").await;
        pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect("nothing references 311");
    })
    .await;
}

const TEXTS: &str = r#"
CREATE TABLE accts (
    id bigint PRIMARY KEY, day date, at timestamptz, f float8, span interval, blob bytea,
    cash money,
    -- No binary I/O: this table is copied in text.
    acl aclitem
);
INSERT INTO accts VALUES (1, '2024-03-10', '2024-03-10 01:02:03.456+05:30', 0.1::float8 + 0.2::float8,
    '1 year 2 days 03:04:05.5', '\x00ff5c', 12.34, 'postgres=r/postgres');
"#;

#[tokio::test]
async fn text_does_not_depend_on_the_sessions_settings() {
    with_two("pg text settings", |backup_url, live_url| async move {
        let mut backup = connect(&backup_url).await;
        let mut live = connect(&live_url).await;
        exec(&mut backup, TEXTS).await;
        exec(&mut live, TEXTS).await;
        exec(&mut live, "DELETE FROM accts").await;
        let plan = plan_of(&pg::schema(&mut backup).await.expect("schema"), "accts", &[("accts", &[])], &[], &[]);
        let expected = pg::digest(&mut backup, &plan, "1").await.expect("digest");
        // What a user's `sql` step may leave on a pooled connection.
        exec(
            &mut backup,
            "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; SET extra_float_digits = -3;
             SET IntervalStyle = 'sql_standard'; SET bytea_output = 'escape'",
        )
        .await;
        exec(&mut live, "SET DateStyle = 'SQL, MDY'; SET TimeZone = 'America/New_York'").await;
        assert_eq!(pg::digest(&mut backup, &plan, "1").await.expect("digest"), expected);
        pg::copy(&mut backup, &mut live, &plan, "1").await.expect("copy");
        assert_eq!(pg::digest(&mut live, &plan, "1").await.expect("digest"), expected);
        exec(&mut live, "SET DateStyle = 'German'; SET extra_float_digits = 0; SET bytea_output = 'escape'").await;
        assert_eq!(pg::digest(&mut live, &plan, "1").await.expect("digest"), expected);
        // The session's own settings are back after the transactions.
        let style: String = sqlx::query_scalar("SHOW DateStyle").fetch_one(&mut live).await.expect("show");
        assert_eq!(style, "German, DMY");
        let mut fresh = connect(&live_url).await;
        let same = "SELECT count(*) FROM accts WHERE day = '2024-03-10' AND f = 0.1::float8 + 0.2::float8                     AND at = '2024-03-10 01:02:03.456+05:30' AND span = '1 year 2 days 03:04:05.5'";
        assert_eq!(scalar_i64(&mut fresh, same).await, 1);
    })
    .await;
}

#[tokio::test]
async fn triggers_enabled_always_or_replica_are_refused_in_replica_mode() {
    with_two("pg replica triggers", |backup_url, live_url| async move {
        let (mut backup, mut live) = backup_and_live(&backup_url, &live_url).await;
        let plan = sites_plan(&pg::schema(&mut backup).await.expect("schema"));
        let audit = scalar_i64(&mut live, "SELECT count(*) FROM audit").await;
        for how in ["ALWAYS", "REPLICA"] {
            exec(&mut live, &format!("ALTER TABLE comments ENABLE {how} TRIGGER comments_audit"))
                .await;
            let e = pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect_err("refused");
            assert!(matches!(e, SliceError::Refused(_)), "{e:?}");
            assert!(e.to_string().contains("`comments` (comments_audit)"), "{e}");
            assert!(e.to_string().contains("ALWAYS or REPLICA"), "{e}");
            assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM audit").await, audit);
        }
        exec(&mut live, "ALTER TABLE comments ENABLE TRIGGER comments_audit").await;
        pg::copy(&mut backup, &mut live, &plan, &site(3)).await.expect("an ordinary trigger");
        assert_eq!(scalar_i64(&mut live, "SELECT count(*) FROM audit").await, audit);
    })
    .await;
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{:x}_{}", nanos, std::process::id())
}
