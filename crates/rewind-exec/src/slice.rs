//! `kind = "copy"` and `kind = "compare"`: one tenant's slice of a store, between a source (the
//! copy a point-in-time restore made, or a backup) and a destination (the live store). A thin
//! adapter onto `rewind-slice`, which knows the databases; this module knows attempts.
//!
//! **Plan.** The slice is planned from the *source's* catalog ([`rewind_slice::plan`]): with
//! `root`, every table that reaches the root through foreign keys; without, `tables` by
//! `tenant_column`. A source's catalog is read once per process and kept ([`Catalogs`]),
//! forgotten when a copy or compare on it fails for good (its schema may have changed).
//!
//! **copy** replaces the tenant's rows in one destination transaction: deletes children first,
//! inserts parents first, user triggers not fired, references checked, sequences advanced
//! (see each engine in `rewind-slice`). Re-running it (a retry, a resume after a crash) yields
//! the same rows and never touches another tenant. Before writing anything, the source's restore
//! point (from `source_restore_point`) must be the run's.
//!
//! **compare** checks that the slice has the same rows in both: per table, the row count and an
//! order-independent digest of the rows.
//!
//! Connections come from the process's pools ([`Pools`]): one per server, reused across
//! attempts. A timeout or a stop cancels the attempt's statements on the server before the
//! attempt ends ([`crate::cancel`]); a connection whose work failed or was cancelled is closed,
//! never handed to another attempt.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use rewind_model::{Action, RestorePoint, SliceAction};
use rewind_slice::remap::NewTenant;
use rewind_slice::{Schema, SliceDigest, SliceError, SlicePlan};
use serde_json::{Map, Value, json};
use sqlx::AssertSqlSafe;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnectOptions;

use crate::cancel::{Identify, Sessions, Tracked};
use crate::connect::{Kind, kind, redact};
use crate::sql::bounded;
use crate::{Attempt, Executor, Outcome, Pools, Report, Stop};

/// Source catalogs read by this process, by source URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Catalogs {
    inner: Arc<Mutex<HashMap<String, Arc<Schema>>>>,
}

impl Catalogs {
    fn get(&self, url: &str) -> Option<Arc<Schema>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).get(url).cloned()
    }

    fn put(&self, url: &str, schema: Arc<Schema>) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).insert(url.to_owned(), schema);
    }

    fn forget(&self, url: &str) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).remove(url);
    }
}

/// Runs `copy` actions.
#[derive(Clone, Debug, Default)]
pub struct CopyExecutor {
    pools: Pools,
    catalogs: Catalogs,
}

impl CopyExecutor {
    /// An executor sharing `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools, catalogs: Catalogs::default() }
    }
}

/// Runs `compare` actions.
#[derive(Clone, Debug, Default)]
pub struct CompareExecutor {
    pools: Pools,
    catalogs: Catalogs,
}

impl CompareExecutor {
    /// An executor sharing `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools, catalogs: Catalogs::default() }
    }
}

impl Executor for CopyExecutor {
    fn kind(&self) -> &'static str {
        "copy"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        let (pools, catalogs) = (self.pools.clone(), self.catalogs.clone());
        Box::pin(run(attempt, stop, pools, catalogs, Mode::Copy))
    }
}

impl Executor for CompareExecutor {
    fn kind(&self) -> &'static str {
        "compare"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        let (pools, catalogs) = (self.pools.clone(), self.catalogs.clone());
        Box::pin(run(attempt, stop, pools, catalogs, Mode::Compare))
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

/// A slice error as an attempt's report: transient ones are retried, the rest fail for good.
fn failed(e: SliceError) -> Report {
    let transient = e.is_transient();
    Report::failed(e.to_string(), transient)
}

async fn run(a: Attempt, mut stop: Stop, pools: Pools, catalogs: Catalogs, mode: Mode) -> Report {
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
    let engine = match slice_kind(s, what, kind(&from), kind(&to)) {
        Ok(k) => k,
        Err(e) => return permanent(e),
    };
    let as_tenant = match s.as_tenant.as_ref().map(|t| a.render(t)).transpose() {
        Ok(t) => t,
        Err(e) => return permanent(e),
    };
    if let Some(Err(e)) = as_tenant.as_ref().map(|new| refuse_as(&tenant, new)) {
        return permanent(e);
    }
    let sessions = Sessions::default();
    let work = async {
        let restore_point = match &s.source_restore_point {
            Some(q) => Some(
                source_restore_point(&pools, &sessions, engine, &from, q, a.restore_point).await?,
            ),
            None => None,
        };
        let (schema, plan) = planned(&pools, &catalogs, &sessions, engine, &from, s).await?;
        let remap = match &as_tenant {
            Some(_) => Some(rewind_slice::remap::plan(&schema, &plan).map_err(|e| {
                permanent(format!("the slice cannot be restored as a new tenant: {e}"))
            })?),
            None => None,
        };
        let new = as_tenant
            .as_deref()
            .zip(remap.as_ref())
            .map(|(id, remap)| rewind_slice::remap::NewTenant { id, remap });
        let ends = Ends { engine, from: &from, to: &to };
        let tables = match mode {
            Mode::Copy => copy(&pools, &sessions, ends, &plan, &tenant, new).await,
            Mode::Compare => compare(&pools, &sessions, ends, s, &plan, &tenant, new).await,
        };
        if tables.as_ref().is_err_and(|r| matches!(r.outcome, Outcome::Failed { retryable: false }))
        {
            catalogs.forget(&from);
        }
        Ok((restore_point, tables?))
    };
    match bounded(&a, &mut stop, &sessions, work).await {
        Ok((restore_point, tables)) => {
            let rows: u64 =
                tables.values().map(|t| t.get("rows").and_then(Value::as_u64).unwrap_or(0)).sum();
            let mut out = Map::new();
            out.insert("tenant".into(), Value::from(tenant));
            if let Some(new) = as_tenant {
                out.insert("as".into(), Value::from(new));
            }
            out.insert("rows".into(), Value::from(rows));
            out.insert("tables".into(), Value::Object(tables.into_iter().collect()));
            if mode == Mode::Compare {
                out.insert("matching".into(), Value::Bool(true));
            }
            if let Some(rp) = restore_point {
                out.insert("restore_point".into(), Value::from(rp));
            }
            Report::succeeded(Value::Object(out))
        }
        Err(r) => r,
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
        (Ok(f), Ok(t)) if f == t => Ok(f),
        (Ok(_), Ok(_)) => Err(format!(
            "`{}` and `{}` are different kinds of database; a {what} runs between two SQLite, two PostgreSQL or two MariaDB/MySQL stores",
            s.from, s.to
        )),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// A restore as a new tenant (`as`) is refused when the new id is empty, is the tenant's own
/// (also in another spelling of the same uuid: `{…}`, upper case, no hyphens, which a text key
/// would store as a second tenant beside the first), or is a uuid not written in its canonical
/// form (lowercase, hyphenated), which other checks comparing text would not recognise.
fn refuse_as(tenant: &str, new: &str) -> Result<(), String> {
    if new.trim().is_empty() {
        return Err(format!(
            "`as` is empty for the tenant {tenant:?}: a restore as a new tenant needs the new \
             id (is the target's attribute set?); nothing was written"
        ));
    }
    let same_uuid = match (uuid::Uuid::parse_str(tenant.trim()), uuid::Uuid::parse_str(new.trim()))
    {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if new == tenant || same_uuid {
        return Err(format!(
            "`as` {new:?} is the tenant {tenant:?} itself: a restore as a new tenant needs another id; nothing was written"
        ));
    }
    if let Ok(u) = uuid::Uuid::parse_str(new.trim())
        && new != u.hyphenated().to_string()
    {
        return Err(format!(
            "`as` {new:?} is a uuid not in its canonical form: write it as {:?} (lowercase, \
             hyphenated), the form every check and key derivation compares; nothing was written",
            u.hyphenated().to_string()
        ));
    }
    Ok(())
}

/// The engine and both ends of a `copy` or `compare`.
#[derive(Clone, Copy)]
struct Ends<'a> {
    engine: Kind,
    from: &'a str,
    to: &'a str,
}

/// What the workflow asks of the planner.
pub(crate) fn request(s: &SliceAction) -> rewind_slice::Request {
    rewind_slice::Request {
        root: s.root.clone(),
        tables: s.tables.clone(),
        tenant_column: s.tenant_column.clone(),
        exclude: s.exclude.clone(),
        references: s
            .references
            .iter()
            .map(|r| rewind_slice::plan::Reference {
                child: r.child.clone(),
                columns: r.columns.clone(),
                parent: r.parent.clone(),
                parent_columns: r.parent_columns.clone(),
            })
            .collect(),
    }
}

/// The file a SQLite URL names (no I/O).
pub(crate) fn sqlite_file(url: &str) -> Result<std::path::PathBuf, String> {
    SqliteConnectOptions::from_str(url)
        .map(|o| o.get_filename().to_path_buf())
        .map_err(|e| format!("{}: {e}", redact(url)))
}

/// A tracked pooled connection to `url`.
async fn tracked<C: Identify>(
    sessions: &Sessions,
    conn: Result<C, String>,
    url: &str,
) -> Result<Tracked<C>, Report> {
    let conn = conn.map_err(retryable)?;
    sessions.pooled(conn, url).await.map_err(retryable)
}

/// Closes a connection whose work failed instead of handing it to the next attempt (a failed
/// copy may have left it anywhere in a transaction).
fn close_if_failed<T, DB: sqlx::Database>(
    r: &Result<T, SliceError>,
    conns: &mut [&mut PoolConnection<DB>],
) {
    if r.is_err() {
        for c in conns {
            c.close_on_drop();
        }
    }
}

/// The slice plan of `s`, from the source's catalog (read once per process per source).
async fn planned(
    pools: &Pools,
    catalogs: &Catalogs,
    sessions: &Sessions,
    engine: Kind,
    from: &str,
    s: &SliceAction,
) -> Result<(Arc<Schema>, SlicePlan), Report> {
    let schema = match catalogs.get(from) {
        Some(schema) => schema,
        None => {
            let schema = Arc::new(read_catalog(pools, sessions, engine, from).await?);
            catalogs.put(from, schema.clone());
            schema
        }
    };
    let plan = rewind_slice::plan::plan(&schema, &request(s))
        .map_err(|e| permanent(format!("the slice cannot be planned from `{}`: {e}", s.from)))?;
    Ok((schema, plan))
}

async fn read_catalog(
    pools: &Pools,
    sessions: &Sessions,
    engine: Kind,
    url: &str,
) -> Result<Schema, Report> {
    let context = |e: SliceError| {
        let transient = e.is_transient();
        Report::failed(format!("reading the catalog of {}: {e}", redact(url)), transient)
    };
    match engine {
        Kind::Postgres => {
            let mut c = tracked(sessions, pools.pg(url).await, url).await?;
            let r = rewind_slice::pg::schema(&mut c).await;
            close_if_failed(&r, &mut [&mut *c]);
            r.map_err(context)
        }
        Kind::Mysql => {
            let mut c = tracked(sessions, pools.mysql(url).await, url).await?;
            let r = rewind_slice::mysql::schema(&mut c).await;
            close_if_failed(&r, &mut [&mut *c]);
            r.map_err(context)
        }
        Kind::Sqlite => {
            let file = sqlite_file(url).map_err(permanent)?;
            if !tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
                return Err(permanent(format!("the source {} does not exist", file.display())));
            }
            let mut c = pools.sqlite_read_only(url).await.map_err(retryable)?;
            let r = rewind_slice::sqlite::schema(&mut c, "main").await;
            close_if_failed(&r, &mut [&mut c]);
            r.map_err(context)
        }
    }
}

/// The restore point the source reached; refuses (permanently) a source at another point, so
/// nothing of it is ever written to a live store.
async fn source_restore_point(
    pools: &Pools,
    sessions: &Sessions,
    engine: Kind,
    from: &str,
    query: &str,
    run: RestorePoint,
) -> Result<String, Report> {
    let said = |e: sqlx::Error| {
        Report::failed(
            format!("source_restore_point: {}", rewind_slice::error::describe(&e)),
            rewind_slice::error::is_transient(&e),
        )
    };
    let reached: Option<String> = match engine {
        Kind::Postgres => {
            let mut c = tracked(sessions, pools.pg(from).await, from).await?;
            sqlx::query_scalar(AssertSqlSafe(query.to_owned()))
                .fetch_optional(&mut **c)
                .await
                .map_err(said)?
        }
        Kind::Mysql => {
            let mut c = tracked(sessions, pools.mysql(from).await, from).await?;
            sqlx::query_scalar(AssertSqlSafe(query.to_owned()))
                .fetch_optional(&mut **c)
                .await
                .map_err(said)?
        }
        Kind::Sqlite => {
            let mut c = pools.sqlite_read_only(from).await.map_err(retryable)?;
            sqlx::query_scalar(AssertSqlSafe(query.to_owned()))
                .fetch_optional(&mut *c)
                .await
                .map_err(said)?
        }
    };
    let Some(reached) = reached else {
        return Err(permanent(
            "source_restore_point: the query returned no row; the source does not say which point it reached",
        ));
    };
    match reached.parse::<RestorePoint>() {
        Ok(rp) if rp == run => Ok(reached),
        Ok(_) | Err(_) => Err(permanent(format!(
            "restore point mismatch: the source reached {reached:?}, but the run is pinned to {run}; nothing was copied"
        ))),
    }
}

/// Copies the slice; per table, the rows inserted and deleted.
async fn copy(
    pools: &Pools,
    sessions: &Sessions,
    Ends { engine, from, to }: Ends<'_>,
    plan: &SlicePlan,
    tenant: &str,
    new: Option<NewTenant<'_>>,
) -> Result<BTreeMap<String, Value>, Report> {
    let report = match engine {
        Kind::Postgres => {
            // At most a few copy streams per process hold two connections each.
            let _turn = pools.copy_turn().await;
            let mut src = tracked(sessions, pools.pg(from).await, from).await?;
            let mut dst = tracked(sessions, pools.pg(to).await, to).await?;
            let r = match new {
                Some(n) => rewind_slice::pg::copy_as(&mut src, &mut dst, plan, tenant, n).await,
                None => rewind_slice::pg::copy(&mut src, &mut dst, plan, tenant).await,
            };
            close_if_failed(&r, &mut [&mut *src, &mut *dst]);
            r
        }
        Kind::Mysql => {
            let mut src = tracked(sessions, pools.mysql(from).await, from).await?;
            let mut dst = tracked(sessions, pools.mysql(to).await, to).await?;
            let r = match new {
                Some(n) => rewind_slice::mysql::copy_as(&mut src, &mut dst, plan, tenant, n).await,
                None => rewind_slice::mysql::copy(&mut src, &mut dst, plan, tenant).await,
            };
            close_if_failed(&r, &mut [&mut *src, &mut *dst]);
            r
        }
        Kind::Sqlite => {
            let file = sqlite_file(from).map_err(permanent)?;
            let mut dst = tracked(sessions, pools.sqlite(to).await, to).await?;
            let r = match new {
                Some(n) => rewind_slice::sqlite::copy_as(&mut dst, &file, plan, tenant, n).await,
                None => rewind_slice::sqlite::copy(&mut dst, &file, plan, tenant).await,
            };
            close_if_failed(&r, &mut [&mut *dst]);
            r
        }
    };
    let report = report.map_err(failed)?;
    Ok(report
        .tables
        .into_iter()
        .map(|t| (t.table, json!({ "rows": t.inserted, "deleted": t.deleted })))
        .collect())
}

/// The digest of the slice on one connection.
async fn digest(
    pools: &Pools,
    sessions: &Sessions,
    engine: Kind,
    url: &str,
    plan: &SlicePlan,
    tenant: &str,
) -> Result<SliceDigest, Report> {
    let r = match engine {
        Kind::Postgres => {
            let mut c = tracked(sessions, pools.pg(url).await, url).await?;
            let r = rewind_slice::pg::digest(&mut c, plan, tenant).await;
            close_if_failed(&r, &mut [&mut *c]);
            r
        }
        Kind::Mysql => {
            let mut c = tracked(sessions, pools.mysql(url).await, url).await?;
            let r = rewind_slice::mysql::digest(&mut c, plan, tenant).await;
            close_if_failed(&r, &mut [&mut *c]);
            r
        }
        Kind::Sqlite => {
            let mut c = tracked(sessions, pools.sqlite(url).await, url).await?;
            let r = rewind_slice::sqlite::digest(&mut c, plan, tenant).await;
            close_if_failed(&r, &mut [&mut *c]);
            r
        }
    };
    r.map_err(failed)
}

/// Per table: the rows and digest of the slice on the source and on the destination; fails
/// (permanently) naming every table that differs. One connection at a time: a compare never
/// holds one pooled connection while it waits for another.
///
/// With `new` (restore as a new tenant): the source's slice as restored as the new tenant
/// (keys replaced through the destination's key map and the uuid rule) against the new
/// tenant's slice on the destination.
async fn compare(
    pools: &Pools,
    sessions: &Sessions,
    Ends { engine, from, to }: Ends<'_>,
    s: &SliceAction,
    plan: &SlicePlan,
    tenant: &str,
    new: Option<NewTenant<'_>>,
) -> Result<BTreeMap<String, Value>, Report> {
    let (source, live) = match new {
        None => (
            digest(pools, sessions, engine, from, plan, tenant).await?,
            digest(pools, sessions, engine, to, plan, tenant).await?,
        ),
        Some(n) => {
            let source = match engine {
                Kind::Postgres => {
                    let maps = {
                        let mut c = tracked(sessions, pools.pg(to).await, to).await?;
                        let r = rewind_slice::pg::key_maps(&mut c, n.id).await;
                        close_if_failed(&r, &mut [&mut *c]);
                        r.map_err(failed)?
                    };
                    let mut c = tracked(sessions, pools.pg(from).await, from).await?;
                    let r = rewind_slice::pg::digest_as(&mut c, plan, tenant, n, &maps).await;
                    close_if_failed(&r, &mut [&mut *c]);
                    r.map_err(failed)?
                }
                Kind::Sqlite => {
                    let maps = {
                        let mut c = tracked(sessions, pools.sqlite(to).await, to).await?;
                        let r = rewind_slice::sqlite::key_maps(&mut c, n.id).await;
                        close_if_failed(&r, &mut [&mut *c]);
                        r.map_err(failed)?
                    };
                    let mut c = tracked(sessions, pools.sqlite(from).await, from).await?;
                    let r = rewind_slice::sqlite::digest_as(&mut c, plan, tenant, n, &maps).await;
                    close_if_failed(&r, &mut [&mut *c]);
                    r.map_err(failed)?
                }
                Kind::Mysql => {
                    let maps = {
                        let mut c = tracked(sessions, pools.mysql(to).await, to).await?;
                        let r = rewind_slice::mysql::key_maps(&mut c, n.id).await;
                        close_if_failed(&r, &mut [&mut *c]);
                        r.map_err(failed)?
                    };
                    let mut c = tracked(sessions, pools.mysql(from).await, from).await?;
                    let r = rewind_slice::mysql::digest_as(&mut c, plan, tenant, n, &maps).await;
                    close_if_failed(&r, &mut [&mut *c]);
                    r.map_err(failed)?
                }
            };
            (source, digest(pools, sessions, engine, to, plan, n.id).await?)
        }
    };
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (l, src) in live.tables.iter().zip(&source.tables) {
        if (l.rows, &l.digest) != (src.rows, &src.digest) {
            problems.push(format!(
                "{}: {} rows (digest {}) in `{}`, {} rows (digest {}) in `{}`",
                l.table, l.rows, l.digest, s.to, src.rows, src.digest, s.from
            ));
        }
        out.insert(l.table.clone(), json!({ "rows": l.rows, "digest": l.digest }));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(permanent(format!("the restored slice differs: {}", problems.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::refuse_as;

    #[test]
    fn as_must_be_another_tenant_in_canonical_form() {
        let t = "7d1c52a4-3b8e-4f0a-9e27-c4a1d0b57e39";
        assert!(refuse_as(t, "0b7c0f55-1f0e-4c1e-9b8e-3f7d1f2a9c10").is_ok());
        assert!(refuse_as("42", "43").is_ok(), "non-uuid ids are compared as written");
        for bad in [
            "",
            "  ",
            t,
            "7D1C52A4-3B8E-4F0A-9E27-C4A1D0B57E39",
            "{7d1c52a4-3b8e-4f0a-9e27-c4a1d0b57e39}",
            "7d1c52a43b8e4f0a9e27c4a1d0b57e39",
        ] {
            assert!(refuse_as(t, bad).is_err(), "{bad:?} must be refused");
        }
        let e = refuse_as(t, "0B7C0F55-1F0E-4C1E-9B8E-3F7D1F2A9C10").unwrap_err();
        assert!(e.contains("canonical"), "{e}");
    }
}
