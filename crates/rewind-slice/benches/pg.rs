//! `pg::copy` against the floor of the same rows moved by plain `COPY (SELECT …) TO STDOUT`
//! piped into `COPY … FROM STDIN`, on the server at `REWIND_BENCH_POSTGRES`, over TCP and over
//! the Unix socket (`?host=/var/run/postgresql`, or `REWIND_BENCH_SOCKET`):
//!
//! 1. one tenant of 1,000,000 rows over 6 tables, 3 rounds alternating copy and floor, and the
//!    process's peak RSS before and after;
//! 2. 200 tenants of ~500 rows copied one after another over the same two connections, against
//!    the sum of their floors.
//!
//! The floor runs in one destination transaction with `session_replication_role = replica`
//! (no foreign-key triggers), without deletes or checks: pure data movement. The destination
//! holds none of the tenants' rows before each timed run (emptied by `TRUNCATE`, not timed);
//! `copy` still runs its deletes, reference checks and sequence updates.
//!
//! `cargo bench -p rewind-slice --bench pg`

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rewind_slice::plan::RootKey;
use rewind_slice::sql::{Dialect, Scope, selector};
use rewind_slice::{Schema, SlicePlan, SliceTable, Via, pg};
use rewind_testkit::PgDatabase;
use sqlx::{Connection, PgConnection};

const SCHEMA: &str = r#"
CREATE TABLE sites (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites, name text NOT NULL);
CREATE INDEX ON projects (site_id);
CREATE TABLE versions (
    id bigserial PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects,
    label text, released date);
CREATE INDEX ON versions (project_id);
CREATE TABLE issues (
    id bigserial PRIMARY KEY, project_id bigint NOT NULL REFERENCES projects,
    parent_id bigint REFERENCES issues, title text NOT NULL, created timestamptz NOT NULL,
    data jsonb);
CREATE INDEX ON issues (project_id);
CREATE TABLE comments (
    id bigserial PRIMARY KEY, issue_id bigint NOT NULL REFERENCES issues,
    body text NOT NULL, created timestamptz NOT NULL);
CREATE INDEX ON comments (issue_id);
CREATE TABLE attachments (
    id bigserial PRIMARY KEY, issue_id bigint NOT NULL REFERENCES issues,
    name text, blob bytea);
CREATE INDEX ON attachments (issue_id);
"#;

const TABLES: [&str; 6] = ["sites", "projects", "versions", "issues", "comments", "attachments"];

/// A tenant's shape: projects, versions (in all), issues per project, comments and
/// attachments per issue.
#[derive(Clone, Copy)]
struct Shape {
    projects: i64,
    versions: i64,
    issues: i64,
    comments: i64,
    attachments: i64,
}

impl Shape {
    fn rows(self) -> i64 {
        let issues = self.projects * self.issues;
        1 + self.projects + self.versions + issues * (1 + self.comments + self.attachments)
    }
}

/// 1 + 100 + 899 + 99,900 × 10 = 1,000,000 rows.
const BIG: Shape = Shape { projects: 100, versions: 899, issues: 999, comments: 7, attachments: 2 };
/// 1 + 2 + 3 + 62 × 8 = 502 rows.
const SMALL: Shape = Shape { projects: 2, versions: 3, issues: 31, comments: 5, attachments: 2 };
const SMALL_TENANTS: i64 = 200;

fn site(k: i64) -> String {
    format!("00000000-0000-4000-8000-{k:012}")
}

/// Tenant `k`'s rows; ids are `k`-based so tenants of one shape never collide.
async fn load_tenant(conn: &mut PgConnection, k: i64, s: Shape) -> Result<(), sqlx::Error> {
    let statements = [
        "INSERT INTO sites VALUES ($1::uuid, 'site')",
        "INSERT INTO projects (id, site_id, name) OVERRIDING SYSTEM VALUE \
           SELECT $2 * $3 + p, $1::uuid, 'project ' || p FROM generate_series(1, $3) p",
        "INSERT INTO versions (id, project_id, label, released) \
           SELECT $2 * $4 + v, $2 * $3 + 1 + v % $3, 'v' || v, date '2020-01-01' + v::int \
           FROM generate_series(1, $4) v",
        "INSERT INTO issues (id, project_id, parent_id, title, created, data) \
           SELECT i, $2 * $3 + 1 + (i - 1 - ($2 * $3) * $5) / $5, \
                  CASE WHEN i % 4 = 0 THEN i - 1 END, 'issue number ' || i, \
                  timestamptz '2024-01-01 00:00+00' + i * interval '1 minute', \
                  jsonb_build_object('n', i, 'tags', jsonb_build_array('a', 'b')) \
           FROM generate_series($2 * $3 * $5 + 1, ($2 + 1) * $3 * $5) i",
        "INSERT INTO comments (id, issue_id, body, created) \
           SELECT (i - 1) * $6 + c, i, \
                  'a comment of some length, as people write them: ' || i || '/' || c, \
                  timestamptz '2024-01-01 00:00+00' + c * interval '1 second' \
           FROM generate_series($2 * $3 * $5 + 1, ($2 + 1) * $3 * $5) i, generate_series(1, $6) c",
        "INSERT INTO attachments (id, issue_id, name, blob) \
           SELECT (i - 1) * $7 + a, i, 'file' || a || '.bin', \
                  decode(md5(i::text) || md5(a::text), 'hex') \
           FROM generate_series($2 * $3 * $5 + 1, ($2 + 1) * $3 * $5) i, generate_series(1, $7) a",
    ];
    for sql in statements {
        sqlx::query(sql)
            .bind(site(k))
            .bind(k)
            .bind(s.projects)
            .bind(s.versions)
            .bind(s.issues)
            .bind(s.comments)
            .bind(s.attachments)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The plan `plan::plan` makes for [`SCHEMA`] with `root = "sites"`.
fn plan(schema: &Schema) -> SlicePlan {
    let parents = [
        ("sites", None),
        ("projects", Some(("site_id", "sites"))),
        ("versions", Some(("project_id", "projects"))),
        ("issues", Some(("project_id", "projects"))),
        ("comments", Some(("issue_id", "issues"))),
        ("attachments", Some(("issue_id", "issues"))),
    ];
    let mut tables: Vec<SliceTable> = Vec::new();
    for (name, parent) in parents {
        let t = &schema.tables[name];
        let (via, path) = match parent {
            None => (vec![Via::Root { column: "id".to_owned() }], vec![name.to_owned()]),
            Some((column, parent)) => {
                let fk = t.foreign_keys.iter().find(|f| f.columns == [column]).expect("fk");
                let mut path = vec![name.to_owned()];
                path.extend(tables.iter().find(|p| p.name == parent).expect("parent").path.clone());
                let via = Via::Parent {
                    constraint: fk.name.clone(),
                    columns: fk.columns.clone(),
                    parent: parent.to_owned(),
                    parent_columns: fk.parent_columns.clone(),
                    nullable: false,
                    declared: false,
                };
                (vec![via], path)
            }
        };
        tables.push(SliceTable {
            name: name.to_owned(),
            columns: t.columns.clone(),
            primary_key: t.primary_key.clone(),
            via,
            path,
            set_after: Vec::new(),
            triggers: t.triggers.clone(),
        });
    }
    SlicePlan {
        engine: schema.engine,
        root: Some(RootKey {
            table: "sites".to_owned(),
            column: "id".to_owned(),
            data_type: "uuid".to_owned(),
        }),
        tables,
        deferred: Vec::new(),
        tenant_column: None,
        references: Vec::new(),
    }
}

/// The floor: each table's rows by plain `COPY … TO STDOUT` into `COPY … FROM STDIN`, in one
/// destination transaction, chunked as `pg::copy` chunks.
async fn floor(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<u64, sqlx::Error> {
    let literal = format!("'{tenant}'::uuid");
    let scope = Scope { dialect: Dialect::Ansi, qualifier: "", tenant: &literal };
    sqlx::raw_sql("BEGIN; SET LOCAL session_replication_role = replica").execute(&mut *dst).await?;
    let mut rows = 0;
    for t in &plan.tables {
        let cols = Dialect::Ansi.list(t.copied().map(|c| c.name.as_str()));
        let out = format!(
            "COPY (SELECT {cols} FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
            scope.table(&t.name),
            selector(plan, t, scope)
        );
        let into = format!("COPY {} ({cols}) FROM STDIN (FORMAT binary)", scope.table(&t.name));
        let mut sink = dst.copy_in_raw(&into).await?;
        let mut stream = src.copy_out_raw(&out).await?;
        let mut buf = Vec::with_capacity(320 * 1024);
        while let Some(data) = stream.try_next().await? {
            buf.extend_from_slice(&data);
            if buf.len() >= 256 * 1024 {
                sink.send(buf.as_slice()).await?;
                buf.clear();
            }
        }
        drop(stream);
        if !buf.is_empty() {
            sink.send(buf.as_slice()).await?;
        }
        rows += sink.finish().await?;
    }
    sqlx::raw_sql("COMMIT").execute(&mut *dst).await?;
    Ok(rows)
}

async fn empty(dst: &mut PgConnection) {
    let sql = format!("TRUNCATE {} CASCADE", TABLES.join(", "));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *dst).await.expect("truncate");
}

async fn timed_copy(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    k: i64,
) -> Duration {
    let start = Instant::now();
    let report = pg::copy(src, dst, plan, &site(k)).await.expect("copy");
    let elapsed = start.elapsed();
    assert!(report.tables.iter().map(|t| t.inserted).sum::<u64>() > 0);
    elapsed
}

async fn timed_floor(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    plan: &SlicePlan,
    k: i64,
) -> Duration {
    let start = Instant::now();
    let rows = floor(src, dst, plan, &site(k)).await.expect("floor");
    let elapsed = start.elapsed();
    assert!(rows > 0);
    elapsed
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, in MB.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or("?".to_owned(), |kb| format!("{:.1} MB", kb / 1024.0))
    };
    format!("peak RSS (VmHWM) {}, RSS {}", field("VmHWM:"), field("VmRSS:"))
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

async fn big(transport: &str, src_url: &str, dst_url: &str) {
    let mut src = PgConnection::connect(src_url).await.expect("source");
    let mut dst = PgConnection::connect(dst_url).await.expect("destination");
    let plan = plan(&pg::schema(&mut src).await.expect("schema"));
    println!("[1] one tenant of {} rows over 6 tables, {transport}", BIG.rows());
    println!("    before: {}", memory());
    let (mut copies, mut floors) = (Duration::ZERO, Duration::ZERO);
    for round in 1..=3 {
        empty(&mut dst).await;
        let c = timed_copy(&mut src, &mut dst, &plan, 0).await;
        empty(&mut dst).await;
        let f = timed_floor(&mut src, &mut dst, &plan, 0).await;
        println!(
            "    round {round}: copy {}  floor {}  floor/copy {:.2}",
            secs(c),
            secs(f),
            f.as_secs_f64() / c.as_secs_f64()
        );
        copies += c;
        floors += f;
    }
    println!(
        "    total: copy {}  floor {}  floor/copy {:.2}",
        secs(copies),
        secs(floors),
        floors.as_secs_f64() / copies.as_secs_f64()
    );
    let again = timed_copy(&mut src, &mut dst, &plan, 0).await;
    println!("    copy over the tenant present (delete 1M + insert 1M): {}", secs(again));
    println!("    after: {}", memory());
}

async fn many(transport: &str, src_url: &str, dst_url: &str) {
    let mut src = PgConnection::connect(src_url).await.expect("source");
    let mut dst = PgConnection::connect(dst_url).await.expect("destination");
    let plan = plan(&pg::schema(&mut src).await.expect("schema"));
    println!(
        "[2] {SMALL_TENANTS} tenants of {} rows, one after another, same connections, {transport}",
        SMALL.rows()
    );
    empty(&mut dst).await;
    let mut copies = Duration::ZERO;
    for k in 0..SMALL_TENANTS {
        copies += timed_copy(&mut src, &mut dst, &plan, k).await;
    }
    empty(&mut dst).await;
    let mut floors = Duration::ZERO;
    for k in 0..SMALL_TENANTS {
        floors += timed_floor(&mut src, &mut dst, &plan, k).await;
    }
    println!(
        "    copies {} ({:.1} ms/tenant)  sum of floors {} ({:.1} ms/tenant)  copy/floor {:.2}",
        secs(copies),
        copies.as_secs_f64() * 1000.0 / SMALL_TENANTS as f64,
        secs(floors),
        floors.as_secs_f64() * 1000.0 / SMALL_TENANTS as f64,
        copies.as_secs_f64() / floors.as_secs_f64()
    );
}

/// `url` reaching the same database over the Unix socket in `dir`.
fn over_socket(url: &str, dir: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}host={dir}")
}

async fn setup(base: &str, tenants: &[(i64, Shape)]) -> (PgDatabase, PgDatabase) {
    let src = PgDatabase::create(base).await;
    let dst = PgDatabase::create(base).await;
    for db in [&src, &dst] {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await.expect("schema");
        if std::ptr::eq(db, &src) {
            for (k, shape) in tenants {
                load_tenant(&mut conn, *k, *shape).await.expect("load");
            }
            sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await.expect("analyze");
        }
        let _ = conn.close().await;
    }
    (src, dst)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Ok(base) = std::env::var("REWIND_BENCH_POSTGRES") else {
        eprintln!("note: REWIND_BENCH_POSTGRES is unset; skipping the PostgreSQL benchmark");
        return;
    };
    let socket =
        std::env::var("REWIND_BENCH_SOCKET").unwrap_or_else(|_| "/var/run/postgresql".to_owned());
    let start = Instant::now();
    let (src, dst) = setup(&base, &[(0, BIG)]).await;
    println!("loaded 1 tenant of {} rows in {}", BIG.rows(), secs(start.elapsed()));
    big("TCP", &src.url, &dst.url).await;
    big("Unix socket", &over_socket(&src.url, &socket), &over_socket(&dst.url, &socket)).await;
    src.drop_database().await;
    dst.drop_database().await;

    let small: Vec<(i64, Shape)> = (0..SMALL_TENANTS).map(|k| (k, SMALL)).collect();
    let (src, dst) = setup(&base, &small).await;
    many("TCP", &src.url, &dst.url).await;
    many("Unix socket", &over_socket(&src.url, &socket), &over_socket(&dst.url, &socket)).await;
    src.drop_database().await;
    dst.drop_database().await;
}
