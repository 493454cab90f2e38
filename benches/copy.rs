//! The `copy` executor on PostgreSQL against the floor a DBA would reach by hand: the same
//! tenant's rows, `COPY (SELECT … WHERE site_id = '…') TO STDOUT` piped into `COPY … FROM STDIN`
//! on a second connection, after the same `DELETE` of the tenant's live rows, in one
//! transaction. Both end in the same live rows; rows per second are compared.
//!
//! Needs PostgreSQL: `REWIND_BENCH_POSTGRES` (or `REWIND_TEST_POSTGRES`) is the server URL; a
//! fresh schema pair is made and dropped. Rows per tenant: `REWIND_BENCH_COPY_ROWS` (100,000).
//!
//! `REWIND_BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/test cargo bench --bench copy`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;
use rewind_exec::{Attempt, Outcome, Registry, StopHandle, Vars};
use rewind_model::{InstanceKey, RunId, SubjectKey, Target, Workflow};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TENANT: &str = "00000000-0000-4000-8000-00000000000a";
const OTHER: &str = "00000000-0000-4000-8000-00000000000b";
const RP: &str = "2022-04-05T07:33:00Z";

fn url() -> Option<String> {
    ["REWIND_BENCH_POSTGRES", "REWIND_TEST_POSTGRES"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn with_path(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options[search_path]={schema}")
}

async fn exec(c: &mut PgConnection, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await.unwrap_or_else(|e| panic!("{e}"));
}

/// Source `<p>_src` (the tenant's and another tenant's rows, and `rewind_meta`) and live
/// `<p>_dst` (the other tenant's rows only).
async fn setup(base: &str, prefix: &str, rows: u64) {
    let mut c = PgConnection::connect(base).await.unwrap_or_else(|e| panic!("{e}"));
    for s in ["src", "dst"] {
        exec(
            &mut c,
            format!(
                "CREATE SCHEMA {prefix}_{s};
                 CREATE TABLE {prefix}_{s}.issues (id TEXT PRIMARY KEY, site_id TEXT NOT NULL,
                   title TEXT NOT NULL, body TEXT, number BIGINT NOT NULL, created TEXT NOT NULL);
                 CREATE INDEX ON {prefix}_{s}.issues (site_id);"
            ),
        )
        .await;
    }
    let fill = |schema: String, tenant: &str| {
        format!(
            "INSERT INTO {schema}.issues
             SELECT '{tenant}-' || g, '{tenant}', 'Issue number ' || g || ' of the tracker',
                    repeat('body text ', 8 + g % 16), g, '2022-04-01T00:00:00Z'
             FROM generate_series(1, {rows}) g"
        )
    };
    exec(&mut c, fill(format!("{prefix}_src"), TENANT)).await;
    exec(&mut c, fill(format!("{prefix}_src"), OTHER)).await;
    exec(&mut c, fill(format!("{prefix}_dst"), OTHER)).await;
    exec(
        &mut c,
        format!(
            "CREATE TABLE {prefix}_src.rewind_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO {prefix}_src.rewind_meta VALUES ('restore_point', '{RP}');
             ANALYZE {prefix}_src.issues; ANALYZE {prefix}_dst.issues;"
        ),
    )
    .await;
}

async fn teardown(base: &str, prefix: &str) {
    if let Ok(mut c) = PgConnection::connect(base).await {
        for s in ["src", "dst"] {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {prefix}_{s} CASCADE")))
                .execute(&mut c)
                .await;
        }
    }
}

fn attempt(wf: &Workflow, vars: &Vars) -> Attempt {
    Attempt {
        run_id: RunId::from_uuid(uuid::Uuid::new_v4()),
        restore_point: RP.parse().unwrap_or_else(|e| panic!("{e}")),
        key: InstanceKey {
            step: wf.steps[0].id.clone(),
            subject: SubjectKey::Target(TENANT.parse().unwrap_or_else(|e| panic!("{e}"))),
        },
        attempt: 1,
        idempotency_key: "k".into(),
        target: Some(Target {
            id: TENANT.parse().unwrap_or_else(|e| panic!("{e}")),
            kind: "site".into(),
            attrs: BTreeMap::new(),
            line: 2,
        }),
        group_value: None,
        needs: BTreeMap::new(),
        workdir: ".".into(),
        cwd: ".".into(),
        timeout: Duration::from_secs(600),
        action: Arc::new(wf.steps[0].action.clone()),
        connections: Arc::new(wf.connections.clone()),
        vars: Arc::new(vars.clone()),
        resolvers: rewind_exec::Resolvers::default(),
    }
}

/// The hand-made floor: delete, then one COPY stream from the source into the live table.
async fn plain_copy(src: &str, dst: &str) -> u64 {
    let mut s = PgConnection::connect(src).await.unwrap_or_else(|e| panic!("{e}"));
    let mut d = PgConnection::connect(dst).await.unwrap_or_else(|e| panic!("{e}"));
    let mut tx = d.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("DELETE FROM issues WHERE site_id = $1")
        .bind(TENANT)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cols = "id, site_id, title, body, number, created";
    let mut sink = tx
        .copy_in_raw(&format!("COPY issues ({cols}) FROM STDIN"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stream = s
        .copy_out_raw(&format!(
            "COPY (SELECT {cols} FROM issues WHERE site_id = '{TENANT}') TO STDOUT"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    while let Some(chunk) = stream.try_next().await.unwrap_or_else(|e| panic!("{e}")) {
        sink.send(chunk).await.unwrap_or_else(|e| panic!("{e}"));
    }
    drop(stream);
    let n = sink.finish().await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    n
}

fn bench(c: &mut Criterion) {
    let Some(base) = url() else {
        eprintln!("copy bench: set REWIND_BENCH_POSTGRES (or REWIND_TEST_POSTGRES); skipped");
        return;
    };
    let rows: u64 = std::env::var("REWIND_BENCH_COPY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("rwbench_{}", std::process::id());
    rt.block_on(setup(&base, &prefix, rows));
    let (src, dst) =
        (with_path(&base, &format!("{prefix}_src")), with_path(&base, &format!("{prefix}_dst")));

    let wf = Workflow::parse(
        "copy.toml",
        r#"name = "copy"
target_kind = "site"
[connections]
src = "${SRC}"
dst = "${DST}"
[[steps]]
id = "issues.copy"
estimate = "1m"
action = { kind = "copy", from = "src", to = "dst", tables = ["issues"], tenant_column = "site_id", tenant = "{{target.id}}", source_restore_point = "SELECT value FROM rewind_meta WHERE key = 'restore_point'" }
"#,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let vars = Vars::default().with("SRC", &src).with("DST", &dst);
    let registry = Registry::builtin();

    let mut g = c.benchmark_group(format!("copy-pg-{rows}"));
    g.sample_size(10).throughput(Throughput::Elements(rows));
    g.bench_function("rewind-copy", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (_h, stop) = StopHandle::new();
                let r = registry.run(attempt(&wf, &vars), stop).await;
                assert!(matches!(r.outcome, Outcome::Succeeded), "{:?}", r.error);
            });
        });
    });
    g.bench_function("plain-copy-pipe", |b| {
        b.iter(|| assert_eq!(rt.block_on(plain_copy(&src, &dst)), rows));
    });
    g.finish();
    rt.block_on(teardown(&base, &prefix));
}

criterion_group!(benches, bench);
criterion_main!(benches);
