//! `kind = "copy"` and `kind = "compare"`: one tenant's slice of some tables, between a source
//! (the scratch copy a point-in-time restore made) and a destination (the live store).
//!
//! **copy** replaces the tenant's rows of every table in one destination transaction: delete the
//! slice, insert the source's slice. Re-running it (a retry, a resume after a crash) yields the
//! same rows and never touches another tenant. SQLite to SQLite attaches the source file to the
//! destination connection and copies with `INSERT ... SELECT`; PostgreSQL to PostgreSQL stages
//! the slice in a temporary table on the source (COPY takes no parameters, and values are never
//! spliced into SQL) and streams it with `COPY ... TO STDOUT` into `COPY ... FROM STDIN`. Before
//! writing anything, the source's restore point (from `source_restore_point`) must be the run's.
//!
//! **compare** checks that the slice has the same rows in both: per table, the row count and an
//! order-independent digest of the rows (a wrapping sum of each row's SHA-256).
//!
//! Table names come from the workflow, validated as identifiers; column names come from the
//! catalogs. Both are quoted ([`crate::connect::quote`], an embedded `"` doubled); the tenant is
//! always a bound parameter.
//!
//! A timeout or a stop cancels the attempt's statements on PostgreSQL before the attempt ends
//! ([`crate::cancel`]); SQLite runs in rewind's process (see there).

use std::collections::BTreeMap;
use std::str::FromStr;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use rewind_model::{Action, RestorePoint, SliceAction};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row};

use crate::cancel::Sessions;
use crate::connect::{Kind, SQLITE_BUSY, kind, quote, redact};
use crate::sql::bounded;
use crate::{Attempt, Executor, Outcome, Pools, Report, Stop};

/// Runs `copy` actions.
#[derive(Clone, Debug, Default)]
pub struct CopyExecutor {
    pools: Pools,
}

impl CopyExecutor {
    /// An executor sharing `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools }
    }
}

/// Runs `compare` actions.
#[derive(Clone, Debug, Default)]
pub struct CompareExecutor {
    pools: Pools,
}

impl CompareExecutor {
    /// An executor sharing `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools }
    }
}

impl Executor for CopyExecutor {
    fn kind(&self) -> &'static str {
        "copy"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        let pools = self.pools.clone();
        Box::pin(run(attempt, stop, pools, Mode::Copy))
    }
}

impl Executor for CompareExecutor {
    fn kind(&self) -> &'static str {
        "compare"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        let pools = self.pools.clone();
        Box::pin(run(attempt, stop, pools, Mode::Compare))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Copy,
    Compare,
}

fn retryable(e: impl std::fmt::Display) -> Report {
    Report::failed(e.to_string(), true)
}

fn permanent(e: impl std::fmt::Display) -> Report {
    Report::failed(e.to_string(), false)
}

fn succeeded(output: Value) -> Report {
    Report {
        outcome: Outcome::Succeeded,
        output: Some(output),
        error: None,
        exit_code: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}

async fn run(a: Attempt, mut stop: Stop, pools: Pools, mode: Mode) -> Report {
    let (Action::Copy(s) | Action::Compare(s)) = &*a.action else {
        return permanent("the copy executor got another kind of action");
    };
    let from = match a.connection_url(&s.from).await {
        Ok(u) => u,
        Err(e) => return permanent(e),
    };
    let to = match a.connection_url(&s.to).await {
        Ok(u) => u,
        Err(e) => return permanent(e),
    };
    let tenant = match a.render(&s.tenant) {
        Ok(t) => t,
        Err(e) => return permanent(e),
    };
    let what = if mode == Mode::Copy { "copy" } else { "compare" };
    let kinds = match slice_kind(s, what, kind(&from), kind(&to)) {
        Ok(k) => k,
        Err(e) => return permanent(e),
    };
    let sessions = Sessions::default();
    let work = async {
        let restore_point = match &s.source_restore_point {
            Some(q) => {
                Some(source_restore_point(&pools, &sessions, &from, q, a.restore_point).await?)
            }
            None => None,
        };
        let tables = match (mode, kinds) {
            (Mode::Copy, Kind::Sqlite | Kind::Mysql) => copy_sqlite(&from, &to, s, &tenant).await?,
            (Mode::Copy, Kind::Postgres) => {
                let _turn = pools.copy_turn().await;
                copy_postgres(&sessions, &from, &to, s, &tenant).await?
            }
            (Mode::Compare, _) => compare(&pools, &sessions, kinds, &from, &to, s, &tenant).await?,
        };
        Ok((restore_point, tables))
    };
    match bounded(&a, &mut stop, &sessions, work).await {
        Ok((restore_point, tables)) => {
            let rows: u64 =
                tables.values().map(|t| t.get("rows").and_then(Value::as_u64).unwrap_or(0)).sum();
            let mut out = Map::new();
            out.insert("tenant".into(), Value::from(tenant));
            out.insert("rows".into(), Value::from(rows));
            out.insert("tables".into(), Value::Object(tables.into_iter().collect()));
            if mode == Mode::Compare {
                out.insert("matching".into(), Value::Bool(true));
            }
            if let Some(rp) = restore_point {
                out.insert("restore_point".into(), Value::from(rp));
            }
            succeeded(Value::Object(out))
        }
        Err(r) => r,
    }
}

/// The restore point the source reached; refuses (permanently) a source at another point, so
/// nothing of it is ever written to a live store.
async fn source_restore_point(
    pools: &Pools,
    sessions: &Sessions,
    from: &str,
    query: &str,
    run: RestorePoint,
) -> Result<String, Report> {
    let conn = pools.any(from).await.map_err(retryable)?;
    let mut conn = sessions.pooled(conn, from).await.map_err(retryable)?;
    let row = sqlx::query(AssertSqlSafe(query.to_owned()))
        .fetch_optional(&mut **conn)
        .await
        .map_err(|e| retryable(format!("source_restore_point: {e}")))?;
    let Some(row) = row else {
        return Err(permanent(
            "source_restore_point: the query returned no row; the source does not say which point it reached",
        ));
    };
    let reached: String =
        row.try_get(0).map_err(|e| permanent(format!("source_restore_point: {e}")))?;
    match reached.parse::<RestorePoint>() {
        Ok(rp) if rp == run => Ok(reached),
        Ok(_) | Err(_) => Err(permanent(format!(
            "restore point mismatch: the source reached {reached:?}, but the run is pinned to {run}; nothing was copied"
        ))),
    }
}

/// The one kind of database both ends of a `copy` or `compare` (`what`) are, or why there is
/// none.
pub(crate) fn slice_kind(
    s: &SliceAction,
    what: &str,
    from: Result<Kind, String>,
    to: Result<Kind, String>,
) -> Result<Kind, String> {
    match (from, to) {
        // Until copy and compare are rebuilt on `rewind-slice`.
        (Ok(Kind::Mysql), _) | (_, Ok(Kind::Mysql)) => {
            Err(format!("a {what} between MySQL/MariaDB stores is not supported yet"))
        }
        (Ok(f), Ok(t)) if f == t => Ok(f),
        (Ok(_), Ok(_)) => Err(format!(
            "`{}` and `{}` are different kinds of database; a {what} needs two SQLite or two PostgreSQL stores",
            s.from, s.to
        )),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

// The statements a copy or compare issues, built in one place so that `rewind run --dry-run`
// ([`crate::describe`]) prints the very text executed. Table and column names are identifiers
// the workflow validated, quoted here; the tenant is always bound (`?1` / `$1`).

/// SQLite copy, on the destination: attach the source file (bound as `?1`).
pub(crate) const SQLITE_ATTACH: &str = "ATTACH DATABASE ?1 AS rw_source";
/// SQLite copy: the destination transaction.
pub(crate) const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";
/// SQLite copy: after the transaction.
pub(crate) const SQLITE_DETACH: &str = "DETACH DATABASE rw_source";
/// PostgreSQL copy: the source's snapshot transaction.
pub(crate) const PG_SOURCE_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";
/// PostgreSQL copy: the destination transaction.
pub(crate) const PG_DEST_BEGIN: &str = "BEGIN";
/// PostgreSQL copy, on the source: stream the staged slice out.
pub(crate) const PG_COPY_OUT: &str = "COPY rw_stage TO STDOUT";
/// PostgreSQL copy, on the source: drop the staged slice.
pub(crate) const PG_DROP_STAGE: &str = "DROP TABLE rw_stage";
/// Ends a transaction.
pub(crate) const COMMIT: &str = "COMMIT";

/// `"a", "b"`: a column list, quoted.
pub(crate) fn column_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

/// SQLite copy: delete the tenant's slice of `table` in the destination (tenant bound as `?1`).
pub(crate) fn sqlite_delete(table: &str, tenant_column: &str) -> String {
    format!("DELETE FROM main.{} WHERE {} = ?1", quote(table), quote(tenant_column))
}

/// SQLite copy: insert the source's slice of `table` (`cols`: a [`column_list`]; tenant bound
/// as `?1`).
pub(crate) fn sqlite_insert(table: &str, cols: &str, tenant_column: &str) -> String {
    let (table, tc) = (quote(table), quote(tenant_column));
    format!(
        "INSERT INTO main.{table} ({cols}) SELECT {cols} FROM rw_source.{table} WHERE {tc} = ?1"
    )
}

/// PostgreSQL copy, on the source: stage the tenant's slice of `table` (tenant bound as `$1`).
pub(crate) fn pg_stage(table: &str, cols: &str, tenant_column: &str) -> String {
    format!(
        "CREATE TEMP TABLE rw_stage ON COMMIT DROP AS SELECT {cols} FROM {} WHERE {} = $1",
        quote(table),
        quote(tenant_column)
    )
}

/// PostgreSQL copy, on the destination: delete the tenant's slice (tenant bound as `$1`).
pub(crate) fn pg_delete(table: &str, tenant_column: &str) -> String {
    format!("DELETE FROM {} WHERE {} = $1", quote(table), quote(tenant_column))
}

/// PostgreSQL copy, on the destination: receive the staged slice.
pub(crate) fn pg_copy_in(table: &str, cols: &str) -> String {
    format!("COPY {} ({cols}) FROM STDIN", quote(table))
}

/// Compare, on either side: the cells of the tenant's rows as text (`select`: a
/// [`digest_select`]; tenant bound as `$1`).
pub(crate) fn digest_sql(table: &str, select: &str, tenant_column: &str) -> String {
    format!("SELECT {select} FROM {} WHERE {} = $1", quote(table), quote(tenant_column))
}

/// `CAST("a" AS TEXT), CAST("b" AS TEXT)`: the select list of [`digest_sql`].
pub(crate) fn digest_select(cols: &[String]) -> String {
    cols.iter().map(|c| format!("CAST({} AS TEXT)", quote(c))).collect::<Vec<_>>().join(", ")
}

/// The file a SQLite URL names (no I/O).
pub(crate) fn sqlite_file(url: &str) -> Result<std::path::PathBuf, String> {
    SqliteConnectOptions::from_str(url)
        .map(|o| o.get_filename().to_path_buf())
        .map_err(|e| format!("{}: {e}", redact(url)))
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, Report> {
    SqliteConnectOptions::from_str(url)
        .map(|o| o.busy_timeout(SQLITE_BUSY))
        .map_err(|e| permanent(format!("{}: {e}", redact(url))))
}

async fn sqlite_columns(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, Report> {
    let rows = sqlx::query("SELECT name FROM pragma_table_info(?1, ?2) ORDER BY cid")
        .bind(table)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .map_err(retryable)?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(retryable)).collect()
}

/// The destination's columns, checked to be the source's too (by name).
fn same_columns(table: &str, dest: Vec<String>, source: &[String]) -> Result<Vec<String>, Report> {
    if dest.is_empty() {
        return Err(permanent(format!("table `{table}` does not exist in the destination")));
    }
    if source.is_empty() {
        return Err(permanent(format!("table `{table}` does not exist in the source")));
    }
    let (mut a, mut b) = (dest.clone(), source.to_vec());
    a.sort();
    b.sort();
    if a != b {
        return Err(permanent(format!(
            "table `{table}` has columns ({}) in the destination but ({}) in the source",
            dest.join(", "),
            source.join(", ")
        )));
    }
    Ok(dest)
}

async fn copy_sqlite(
    from: &str,
    to: &str,
    s: &SliceAction,
    tenant: &str,
) -> Result<BTreeMap<String, Value>, Report> {
    let source_file = sqlite_file(from).map_err(permanent)?;
    if !tokio::fs::metadata(&source_file).await.is_ok_and(|m| m.is_file()) {
        return Err(permanent(format!("the source {} does not exist", source_file.display())));
    }
    let mut conn = SqliteConnection::connect_with(&sqlite_options(to)?.create_if_missing(false))
        .await
        .map_err(|e| retryable(format!("cannot open {}: {e}", redact(to))))?;
    sqlx::query(SQLITE_ATTACH)
        .bind(source_file.display().to_string())
        .execute(&mut conn)
        .await
        .map_err(|e| retryable(format!("cannot attach {}: {e}", source_file.display())))?;
    let result = copy_attached(&mut conn, s, tenant).await;
    if result.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    let _ = sqlx::query(SQLITE_DETACH).execute(&mut conn).await;
    let _ = conn.close().await;
    result
}

async fn copy_attached(
    conn: &mut SqliteConnection,
    s: &SliceAction,
    tenant: &str,
) -> Result<BTreeMap<String, Value>, Report> {
    let mut plan = Vec::new();
    for t in &s.tables {
        let dest = sqlite_columns(conn, "main", t).await?;
        let src = sqlite_columns(conn, "rw_source", t).await?;
        plan.push((t, same_columns(t, dest, &src)?));
    }
    sqlx::query(SQLITE_BEGIN).execute(&mut *conn).await.map_err(retryable)?;
    let mut out = BTreeMap::new();
    let tc = &s.tenant_column;
    for (t, cols) in plan {
        let cols = column_list(&cols);
        // Identifiers validated by the workflow and quoted; the tenant is bound.
        sqlx::query(AssertSqlSafe(sqlite_delete(t, tc)))
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(|e| retryable(format!("{t}: {e}")))?;
        let done = sqlx::query(AssertSqlSafe(sqlite_insert(t, &cols, tc)))
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(|e| retryable(format!("{t}: {e}")))?;
        out.insert(t.clone(), json!({ "rows": done.rows_affected() }));
    }
    sqlx::query(COMMIT).execute(&mut *conn).await.map_err(retryable)?;
    Ok(out)
}

async fn pg_columns(conn: &mut PgConnection, table: &str) -> Result<Vec<String>, Report> {
    let rows = sqlx::query(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(retryable)?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(retryable)).collect()
}

async fn copy_postgres(
    sessions: &Sessions,
    from: &str,
    to: &str,
    s: &SliceAction,
    tenant: &str,
) -> Result<BTreeMap<String, Value>, Report> {
    let connect = |url: &str| {
        let url = url.to_owned();
        async move {
            PgConnection::connect(&url)
                .await
                .map_err(|e| retryable(format!("cannot connect to {}: {e}", redact(&url))))
        }
    };
    let mut src = sessions.direct(connect(from).await?, from).await.map_err(retryable)?;
    let mut dst = sessions.direct(connect(to).await?, to).await.map_err(retryable)?;
    let mut plan = Vec::new();
    for t in &s.tables {
        let dest = pg_columns(&mut dst, t).await?;
        let source = pg_columns(&mut src, t).await?;
        plan.push((t, same_columns(t, dest, &source)?));
    }
    let db = |t: &str| {
        let t = t.to_owned();
        move |e: sqlx::Error| retryable(format!("{t}: {e}"))
    };
    sqlx::query(PG_SOURCE_BEGIN).execute(&mut *src).await.map_err(retryable)?;
    sqlx::query(PG_DEST_BEGIN).execute(&mut *dst).await.map_err(retryable)?;
    let tc = &s.tenant_column;
    let mut out = BTreeMap::new();
    for (t, cols) in plan {
        let cols = column_list(&cols);
        sqlx::query(AssertSqlSafe(pg_stage(t, &cols, tc)))
            .bind(tenant)
            .execute(&mut *src)
            .await
            .map_err(db(t))?;
        sqlx::query(AssertSqlSafe(pg_delete(t, tc)))
            .bind(tenant)
            .execute(&mut *dst)
            .await
            .map_err(db(t))?;
        let mut sink = dst.copy_in_raw(&pg_copy_in(t, &cols)).await.map_err(db(t))?;
        let mut stream = src.copy_out_raw(PG_COPY_OUT).await.map_err(db(t))?;
        let mut failed = None;
        while let Some(chunk) = stream.try_next().await.map_err(db(t))? {
            if let Err(e) = sink.send(chunk).await {
                failed = Some(e);
                break;
            }
        }
        drop(stream);
        let rows = match failed {
            Some(e) => {
                let _ = sink.abort(e.to_string()).await;
                return Err(db(t)(e));
            }
            None => sink.finish().await.map_err(db(t))?,
        };
        sqlx::query(PG_DROP_STAGE).execute(&mut *src).await.map_err(db(t))?;
        out.insert(t.clone(), json!({ "rows": rows }));
    }
    sqlx::query(COMMIT).execute(&mut *dst).await.map_err(retryable)?;
    let _ = sqlx::query(COMMIT).execute(&mut *src).await;
    for c in [src.into_inner(), dst.into_inner()].into_iter().flatten() {
        let _ = c.close().await;
    }
    Ok(out)
}

/// Per table: the rows and digest of the slice on the source and on the destination; fails
/// (permanently) naming every table that differs.
async fn compare(
    pools: &Pools,
    sessions: &Sessions,
    kind: Kind,
    from: &str,
    to: &str,
    s: &SliceAction,
    tenant: &str,
) -> Result<BTreeMap<String, Value>, Report> {
    // One connection at a time: a compare never holds one pooled connection while it waits
    // for another, so concurrent compares cannot starve each other's pool.
    let mut dest_cols = Vec::new();
    {
        let dst = pools.any(to).await.map_err(retryable)?;
        let mut dst = sessions.pooled(dst, to).await.map_err(retryable)?;
        for t in &s.tables {
            dest_cols.push(columns(&mut dst, kind, t).await?);
        }
    }
    let mut plan = Vec::new();
    {
        let src = pools.any(from).await.map_err(retryable)?;
        let mut src = sessions.pooled(src, from).await.map_err(retryable)?;
        for (t, dest) in s.tables.iter().zip(dest_cols) {
            let cols = same_columns(t, dest, &columns(&mut src, kind, t).await?)?;
            let source = digest(&mut src, t, &cols, &s.tenant_column, tenant).await?;
            plan.push((t, cols, source));
        }
    }
    let dst = pools.any(to).await.map_err(retryable)?;
    let mut dst = sessions.pooled(dst, to).await.map_err(retryable)?;
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (t, cols, (n_src, d_src)) in plan {
        let (n_live, d_live) = digest(&mut dst, t, &cols, &s.tenant_column, tenant).await?;
        if (n_live, d_live) != (n_src, d_src) {
            problems.push(format!(
                "{t}: {n_live} rows (digest {d_live:032x}) in `{}`, {n_src} rows (digest {d_src:032x}) in `{}`",
                s.to, s.from
            ));
        }
        out.insert(t.clone(), json!({ "rows": n_live, "digest": format!("{d_live:032x}") }));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(permanent(format!("the restored slice differs: {}", problems.join("; "))))
    }
}

async fn columns(conn: &mut AnyConnection, kind: Kind, table: &str) -> Result<Vec<String>, Report> {
    let sql = match kind {
        Kind::Sqlite | Kind::Mysql => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
        Kind::Postgres => {
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
    };
    let rows =
        sqlx::query(sql).bind(table.to_owned()).fetch_all(&mut *conn).await.map_err(retryable)?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(retryable)).collect()
}

/// Row count and order-independent digest of one tenant's rows: the wrapping sum of the first
/// 16 bytes of each row's SHA-256 over its cells as text (NULL distinct from every text).
async fn digest(
    conn: &mut AnyConnection,
    table: &str,
    cols: &[String],
    tenant_column: &str,
    tenant: &str,
) -> Result<(u64, u128), Report> {
    let sql = digest_sql(table, &digest_select(cols), tenant_column);
    let mut rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.to_owned()).fetch(&mut *conn);
    let (mut n, mut sum) = (0u64, 0u128);
    while let Some(row) = rows.try_next().await.map_err(|e| retryable(format!("{table}: {e}")))? {
        let mut h = Sha256::new();
        for i in 0..cols.len() {
            let cell: Option<String> =
                row.try_get(i).map_err(|e| retryable(format!("{table}: {e}")))?;
            match cell {
                None => h.update([0u8]),
                Some(v) => {
                    h.update([1u8]);
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
            }
        }
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        sum = sum.wrapping_add(u128::from_le_bytes(first));
        n += 1;
    }
    Ok((n, sum))
}
