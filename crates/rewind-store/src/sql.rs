//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver. The SQL is
//! common to both (`$N` parameters, `ON CONFLICT`, `UPDATE ... FROM (VALUES ...)`); only the
//! migrations differ in column types.

mod coord;
mod dispatch;
pub use coord::{DispatchedAttempt, LeaseRow};
pub use dispatch::{DONE_CHANNEL, DispatchListener, NOTIFY_CHANNEL};

use std::collections::BTreeMap;
use std::sync::Once;
use std::time::Duration;

use rewind_model::{
    AttemptOutcome, EventKind, InstanceState, RunId, RunState, redact_text, redact_url,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection as _, Row};

use crate::{
    AttemptRecord, Batch, DrillRecord, EventRecord, Holder, Holding, InstanceRecord, InstanceRow,
    InstanceUpdate, NewEvent, NewInstance, NewRun, Result, RunMarker, RunRecord, Store, StoreError,
};

/// Most bind parameters in one statement: under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_BINDS: usize = 30_000;

static DRIVERS: Once = Once::new();

/// Which database a store is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file, WAL mode.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A checkpoint store on SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// How long the first connection to a PostgreSQL server may take before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl SqlStore {
    /// Opens (creating a SQLite file if missing) and migrates the store at `url`, waiting up to
    /// 5 seconds for a lock held by another process.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, Duration::from_secs(5)).await
    }

    /// Like [`SqlStore::open`], with the time to wait for a lock.
    pub async fn open_with(url: &str, busy_timeout: Duration) -> Result<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (backend, connect_url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let sep = if rest.contains('?') { '&' } else { '?' };
            let url =
                if rest.contains("mode=") { url.to_owned() } else { format!("{url}{sep}mode=rwc") };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::BadUrl(redact_url(url)));
        };
        let open_err = |e: sqlx::Error| StoreError::Open {
            url: redact_url(url),
            message: redact_text(&e.to_string()),
            source: Some(e),
        };
        if backend == Backend::Postgres {
            // A direct first connection: a refused connection, an unknown host or database, a
            // failed authentication is reported now and in the server's words, where the pool
            // would retry until its acquire timeout and say only that it timed out.
            match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(&connect_url)).await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                }
                Ok(Err(e)) => return Err(open_err(e)),
                Err(_) => {
                    return Err(StoreError::Open {
                        url: redact_url(url),
                        message: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                        source: None,
                    });
                }
            }
        }
        let busy_ms = busy_timeout.as_millis();
        let mut options = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(busy_timeout.max(Duration::from_secs(5)));
        if backend == Backend::Sqlite {
            options = options.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // A number formatted here, not user input.
                    conn.execute(AssertSqlSafe(format!("PRAGMA busy_timeout = {busy_ms}"))).await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // Large runs (millions of instances) make a large file: keep its hot pages
                    // in memory (a 64 MiB cache, where the default is 2 MiB) and map up to
                    // 256 MiB of it, instead of re-reading pages through syscalls.
                    conn.execute("PRAGMA cache_size = -65536").await?;
                    conn.execute("PRAGMA mmap_size = 268435456").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&connect_url).await.map_err(open_err)?;
        migrate(&pool, backend).await.map_err(open_err)?;
        Ok(Self { pool, backend })
    }

    /// The error of a failed insert into `target_locks` (its transaction already dropped): a
    /// unique violation means another process locked some of `targets` since this one checked,
    /// so say which, as [`StoreError::Held`].
    async fn lock_failed(
        &self,
        e: sqlx::Error,
        targets: &[String],
        except: Option<&str>,
    ) -> StoreError {
        if !matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) {
            return q("lock targets")(e);
        }
        let held = async {
            let mut conn = self.pool.acquire().await.map_err(q("read locks"))?;
            holders(&mut conn, targets, except).await
        };
        match held.await {
            Ok(h) => StoreError::Held(h),
            Err(e) => e,
        }
    }

    /// A transaction that will write: on SQLite it takes the write lock at `BEGIN IMMEDIATE`
    /// (waiting for the busy timeout), so a transaction that reads before it writes never finds
    /// its snapshot stale at its first write (`SQLITE_BUSY_SNAPSHOT`, which no wait can cure).
    async fn begin_write(&self, what: &'static str) -> Result<sqlx::Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(q(what))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Brings the schema up to date. Two processes opening a new store at once must not both create
/// it: PostgreSQL's migrator holds an advisory lock; on SQLite (whose migrator takes no lock) the
/// migrations run inside one `BEGIN IMMEDIATE` transaction, so the second process waits for the
/// first and then finds the schema current.
async fn migrate(pool: &AnyPool, backend: Backend) -> std::result::Result<(), sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::migrate!("./migrations/sqlite").run_direct(None, &mut *tx, false).await?;
            tx.commit().await
        }
        Backend::Postgres => Ok(sqlx::migrate!("./migrations/postgres").run(pool).await?),
    }
}

fn event_records(rows: &[AnyRow]) -> Result<Vec<EventRecord>> {
    rows.iter()
        .map(|row| {
            Ok(EventRecord {
                seq: row.try_get("seq").map_err(q("seq"))?,
                event: NewEvent {
                    at_s: row.try_get("at_s").map_err(q("at_s"))?,
                    wall: row.try_get("wall").map_err(q("wall"))?,
                    kind: parse_name::<EventKind>(row, "kind")?,
                    key: row.try_get("key").map_err(q("key"))?,
                    detail: row.try_get("detail").map_err(q("detail"))?,
                },
            })
        })
        .collect()
}

/// A stored name read back as the model's enum; anything else is corrupt, never a default.
fn parse_name<T: std::str::FromStr>(row: &AnyRow, col: &'static str) -> Result<T> {
    let text: String = row.try_get(col).map_err(q(col))?;
    text.parse().map_err(|_| StoreError::Corrupt { what: col, value: text })
}

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

fn u32_of(row: &AnyRow, col: &'static str) -> Result<u32> {
    let v: i64 = row.try_get(col).map_err(q(col))?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt { what: col, value: v.to_string() })
}

fn drill_record(row: &AnyRow) -> Result<DrillRecord> {
    let get_s = |c: &'static str| -> Result<String> { row.try_get(c).map_err(q(c)) };
    let get_f = |c: &'static str| -> Result<Option<f64>> { row.try_get(c).map_err(q(c)) };
    Ok(DrillRecord {
        id: get_s("id")?,
        name: get_s("name")?,
        run_id: row.try_get("run_id").map_err(q("run_id"))?,
        started_at: get_s("started_at")?,
        started_unix_ms: row.try_get("started_unix_ms").map_err(q("started_unix_ms"))?,
        passed: row.try_get::<i64, _>("passed").map_err(q("passed"))? != 0,
        rto_s: get_f("rto_s")?,
        rpo_s: get_f("rpo_s")?,
        result: get_s("result")?,
    })
}

fn run_record(row: &AnyRow) -> Result<RunRecord> {
    let id: String = row.try_get("id").map_err(q("runs.id"))?;
    let id: RunId =
        id.parse().map_err(|_| StoreError::Corrupt { what: "runs.id", value: id.clone() })?;
    let get_s = |c: &'static str| -> Result<String> { row.try_get(c).map_err(q(c)) };
    let get_i = |c: &'static str| -> Result<i64> { row.try_get(c).map_err(q(c)) };
    let get_f = |c: &'static str| -> Result<f64> { row.try_get(c).map_err(q(c)) };
    let spec = NewRun {
        id,
        workflow: get_s("workflow")?,
        workflow_file: get_s("workflow_file")?,
        workflow_text: get_s("workflow_text")?,
        targets_file: get_s("targets_file")?,
        targets_text: get_s("targets_text")?,
        workdir: get_s("workdir")?,
        cwd: get_s("cwd")?,
        restore_point: get_s("restore_point")?,
        fingerprint: get_s("fingerprint")?,
        simulated: get_i("simulated")? != 0,
        seed: get_i("seed")?.cast_unsigned(),
        fail_rate: get_f("fail_rate")?,
        max_running: opt_u32(row.try_get("max_running").map_err(q("max_running"))?),
        priority: get_s("priority")?,
        instances: get_i("instances")?.cast_unsigned(),
        targets: get_i("targets")?.cast_unsigned(),
        lower_bound_s: get_f("lower_bound_s")?,
        created_at: get_s("created_at")?,
        started_unix_ms: get_i("started_unix_ms")?,
        waves: {
            let text = get_s("waves")?;
            text.split(',')
                .filter(|w| !w.is_empty())
                .map(|w| {
                    w.parse().map_err(|_| StoreError::Corrupt {
                        what: "runs.waves",
                        value: text.clone(),
                    })
                })
                .collect::<Result<Vec<u32>>>()?
        },
        halt_rate: get_f("halt_rate")?,
        started_by: row.try_get("started_by").map_err(q("started_by"))?,
        dispatch: {
            let text = get_s("dispatch")?;
            text.parse().map_err(|_| StoreError::Corrupt { what: "runs.dispatch", value: text })?
        },
    };
    Ok(RunRecord {
        spec,
        state: parse_name::<RunState>(row, "state")?,
        wave: u32_of(row, "wave")?,
        clock_s: get_f("clock_s")?,
        finished_s: row.try_get("finished_s").map_err(q("finished_s"))?,
        reason: row.try_get("reason").map_err(q("reason"))?,
        cancel_requested: get_i("cancel_requested")? != 0,
        owner: row.try_get("owner").map_err(q("owner"))?,
        heartbeat_unix_ms: row.try_get("heartbeat_unix_ms").map_err(q("heartbeat_unix_ms"))?,
    })
}

impl Backend {
    /// `(p, p, ...), (...)`: `rows` tuples of `cols` parameters, numbered from 1 in textual order.
    /// PostgreSQL wants `$N`; SQLite takes `?` (sqlx resolves SQLite's `$N` names in quadratic
    /// time, 20× slower on a 5,000-row statement). Only placeholders are formatted into SQL here,
    /// never values.
    fn values(self, rows: usize, cols: usize) -> String {
        let mut out = String::with_capacity(rows * cols * 6);
        for r in 0..rows {
            out.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..cols {
                if c > 0 {
                    out.push_str(", ");
                }
                out.push_str(&self.param(r * cols + c + 1));
            }
            out.push(')');
        }
        out
    }

    /// Whether statements binding a nullable `f64` may be cached (see [`MAX_BINDS`]): yes on
    /// SQLite, whose parameters are untyped; no on PostgreSQL (sqlx#4284).
    fn caches(self) -> bool {
        self == Self::Sqlite
    }

    /// The `n`th parameter (1-based) in textual order.
    fn param(self, n: usize) -> String {
        match self {
            Self::Sqlite => "?".to_owned(),
            Self::Postgres => format!("${n}"),
        }
    }
}

/// On PostgreSQL, statements that bind a nullable `f64` are not cached: sqlx 0.9's `Any`
/// driver declares a NULL `f64` as `float4` (transact-rs/sqlx#4284), so a cached PostgreSQL
/// statement first run with NULL then fails on a value ("incorrect binary data format"). Bulk
/// statements vary in row count anyway, so caching them would only fill the cache.
///
/// Rows per statement for `binds` parameters each.
fn chunk(binds: usize) -> usize {
    (MAX_BINDS / binds).max(1)
}

/// Below this many rows, a bulk statement has the exact number of rows it writes.
const EXACT_BELOW: usize = 8;

/// The largest power of two not above `n` (`n` ≥ 1).
fn floor_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Splits `rows` (of `binds` parameters each) into the bulk statements that write them. On
/// SQLite, where statements are cached by their text, the statements take few shapes: a run of
/// the largest power-of-two size under [`MAX_BINDS`], then the rest by powers of two down to
/// [`EXACT_BELOW`] rows, then the last few rows exactly. So a commit reuses statements prepared
/// by earlier ones instead of parsing and planning a statement of thousands of parameters each
/// time (a tenth of a simulation's time went there), and the cache holds about twenty shapes per
/// table. On PostgreSQL, nothing is cached: the fewest statements.
fn statements<T>(backend: Backend, rows: &[T], binds: usize) -> Vec<&[T]> {
    let mut rest = rows;
    shapes(backend, rows.len(), binds)
        .into_iter()
        .map(|n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
        .collect()
}

/// The row counts of [`statements`].
fn shapes(backend: Backend, len: usize, binds: usize) -> Vec<usize> {
    let max = chunk(binds);
    let big = if backend.caches() { floor_pow2(max) } else { max };
    let mut out = Vec::new();
    let mut rest = len;
    while rest > 0 {
        let n = match rest {
            n if n >= big => big,
            n if n < EXACT_BELOW || !backend.caches() => n,
            n => floor_pow2(n),
        };
        out.push(n);
        rest -= n;
    }
    out
}

/// The instance columns a reader gets, for one run (`$1`).
const INSTANCES_SELECT: &str = "SELECT idx, key, step, target, grp, state, attempts, failures, \
     retry_at_s, finished_s, output, error FROM instances WHERE run_id = $1";

/// The attempt columns a reader gets, for one run (`$1`).
const ATTEMPTS_SELECT: &str = "SELECT idx, attempt, started_s, ended_s, outcome, exit_code, \
     error, stdout_tail, stderr_tail FROM attempts WHERE run_id = $1";

/// Indexes per `IN (…)` list of `instances_at`/`attempts_at`.
const AT_MOST_IDXS: usize = 500;

/// `1, 2, 3`: instance indexes written into a statement (numbers, never text from a user).
fn idx_list(idxs: &[u32]) -> String {
    idxs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

fn instance_records(rows: &[sqlx::any::AnyRow]) -> Result<Vec<InstanceRecord>> {
    rows.iter()
        .map(|row| {
            Ok(InstanceRecord {
                idx: u32_of(row, "idx")?,
                key: row.try_get("key").map_err(q("key"))?,
                step: row.try_get("step").map_err(q("step"))?,
                target: row.try_get("target").map_err(q("target"))?,
                group: row.try_get("grp").map_err(q("grp"))?,
                state: parse_name::<InstanceState>(row, "state")?,
                attempts: u32_of(row, "attempts")?,
                failures: u32_of(row, "failures")?,
                retry_at_s: row.try_get("retry_at_s").map_err(q("retry_at_s"))?,
                finished_s: row.try_get("finished_s").map_err(q("finished_s"))?,
                output: row.try_get("output").map_err(q("output"))?,
                error: row.try_get("error").map_err(q("error"))?,
            })
        })
        .collect()
}

fn attempt_records(rows: &[sqlx::any::AnyRow]) -> Result<Vec<AttemptRecord>> {
    rows.iter()
        .map(|row| {
            let exit: Option<i64> = row.try_get("exit_code").map_err(q("exit_code"))?;
            Ok(AttemptRecord {
                idx: u32_of(row, "idx")?,
                attempt: u32_of(row, "attempt")?,
                started_s: row.try_get("started_s").map_err(q("started_s"))?,
                ended_s: row.try_get("ended_s").map_err(q("ended_s"))?,
                outcome: row
                    .try_get::<Option<String>, _>("outcome")
                    .map_err(q("outcome"))?
                    .map(|o| {
                        o.parse::<AttemptOutcome>()
                            .map_err(|_| StoreError::Corrupt { what: "attempts.outcome", value: o })
                    })
                    .transpose()?,
                exit_code: exit.and_then(|e| i32::try_from(e).ok()),
                error: row.try_get("error").map_err(q("error"))?,
                stdout_tail: row.try_get("stdout_tail").map_err(q("stdout_tail"))?,
                stderr_tail: row.try_get("stderr_tail").map_err(q("stderr_tail"))?,
            })
        })
        .collect()
}

/// A run's row with its lease: `runs` holds what is written once or rarely (the workflow and
/// targets texts among it, hundreds of kilobytes for a large workflow), `run_leases` the few
/// columns every checkpoint writes. SQLite rewrites a whole row on any update, overflow pages
/// included: with the clock in `runs`, a commit of a 2,000-step workflow's run cost 0.35 ms
/// more than the same commit on the small row (migration 0005).
const RUN_SELECT: &str = "SELECT runs.*, run_leases.owner, run_leases.heartbeat_unix_ms, \
     run_leases.clock_s FROM runs JOIN run_leases ON run_leases.run_id = runs.id";

impl Store for SqlStore {
    async fn create_run(
        &self,
        run: &NewRun,
        instances: &mut (dyn Iterator<Item = NewInstance> + Send),
        events: &[NewEvent],
    ) -> Result<()> {
        let mut tx = self.begin_write("begin run creation").await?;
        sqlx::query(
            "INSERT INTO runs (id, workflow, workflow_file, workflow_text, targets_file, targets_text, workdir, cwd, \
             restore_point, fingerprint, simulated, seed, fail_rate, max_running, priority, instances, targets, \
             lower_bound_s, state, created_at, started_unix_ms, waves, halt_rate, started_by, dispatch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'running', $19, $20, $21, $22, $23, $24)",
        )
        .bind(run.id.to_string())
        .bind(&run.workflow)
        .bind(&run.workflow_file)
        .bind(&run.workflow_text)
        .bind(&run.targets_file)
        .bind(&run.targets_text)
        .bind(&run.workdir)
        .bind(&run.cwd)
        .bind(&run.restore_point)
        .bind(&run.fingerprint)
        .bind(i64::from(run.simulated))
        .bind(run.seed.cast_signed())
        .bind(run.fail_rate)
        .bind(run.max_running.map(i64::from))
        .bind(&run.priority)
        .bind(run.instances.cast_signed())
        .bind(run.targets.cast_signed())
        .bind(run.lower_bound_s)
        .bind(&run.created_at)
        .bind(run.started_unix_ms)
        .bind(run.waves.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .bind(run.halt_rate)
        .bind(run.started_by.clone())
        .bind(run.dispatch.as_str())
        .execute(&mut *tx)
        .await
        .map_err(q("insert run"))?;
        let id = run.id.to_string();
        sqlx::query("INSERT INTO run_leases (run_id) VALUES ($1)")
            .bind(id.clone())
            .execute(&mut *tx)
            .await
            .map_err(q("insert run lease"))?;
        let per = floor_pow2(chunk(7));
        // A real run's targets, to lock.
        let mut targets: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut chunk: Vec<NewInstance> = (&mut *instances).take(per).collect();
            if chunk.is_empty() {
                break;
            }
            if !run.simulated {
                for t in chunk.iter().filter_map(|i| i.target.as_ref()) {
                    if seen.insert(t.clone()) {
                        targets.push(t.clone());
                    }
                }
            }
            for n in shapes(self.backend, chunk.len(), 7) {
                let rows: Vec<NewInstance> = chunk.drain(..n).collect();
                let sql = format!(
                    "INSERT INTO instances (run_id, idx, key, step, target, grp, state) VALUES {}",
                    self.backend.values(rows.len(), 7)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(self.backend.caches());
                for i in rows {
                    query = query
                        .bind(id.clone())
                        .bind(i64::from(i.idx))
                        .bind(i.key)
                        .bind(i.step)
                        .bind(i.target)
                        .bind(i.group)
                        .bind(i.state.as_str());
                }
                query.execute(&mut *tx).await.map_err(q("insert instances"))?;
            }
        }
        if !targets.is_empty() {
            let held = holders(&mut tx, &targets, None).await?;
            if !held.is_empty() {
                return Err(StoreError::Held(held));
            }
            for rows in targets.chunks(chunk(2)) {
                let sql = format!(
                    "INSERT INTO target_locks (target, run_id) VALUES {}",
                    self.backend.values(rows.len(), 2)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
                for t in rows {
                    query = query.bind(t.clone()).bind(id.clone());
                }
                if let Err(e) = query.execute(&mut *tx).await {
                    drop(tx);
                    return Err(self.lock_failed(e, &targets, None).await);
                }
            }
        }
        insert_events(self.backend, &mut tx, &id, events).await?;
        tx.commit().await.map_err(q("commit run creation"))
    }

    async fn run(&self, id: RunId) -> Result<Option<RunRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("{RUN_SELECT} WHERE runs.id = $1")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read run"))?;
        row.as_ref().map(run_record).transpose()
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{RUN_SELECT} ORDER BY runs.created_at DESC, runs.id DESC"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(q("list runs"))?;
        rows.iter().map(run_record).collect()
    }

    async fn instances(&self, id: RunId) -> Result<Vec<InstanceRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!("{INSTANCES_SELECT} ORDER BY idx")))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(q("read instances"))?;
        instance_records(&rows)
    }

    async fn instances_at(&self, id: RunId, idxs: &[u32]) -> Result<Vec<InstanceRecord>> {
        let mut out = Vec::with_capacity(idxs.len());
        for chunk in idxs.chunks(AT_MOST_IDXS) {
            let sql = format!("{INSTANCES_SELECT} AND idx IN ({}) ORDER BY idx", idx_list(chunk));
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(q("read instances"))?;
            out.extend(instance_records(&rows)?);
        }
        Ok(out)
    }

    async fn instance_states(&self, id: RunId) -> Result<Vec<InstanceRow>> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(
            "SELECT idx, state, attempts, failures, retry_at_s, finished_s, output FROM instances \
             WHERE run_id = $1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(q("read instance states"))? {
            out.push(InstanceRow {
                idx: u32_of(&row, "idx")?,
                state: parse_name::<InstanceState>(&row, "state")?,
                attempts: u32_of(&row, "attempts")?,
                failures: u32_of(&row, "failures")?,
                retry_at_s: row.try_get("retry_at_s").map_err(q("retry_at_s"))?,
                finished_s: row.try_get("finished_s").map_err(q("finished_s"))?,
                output: row.try_get("output").map_err(q("output"))?,
            });
        }
        Ok(out)
    }

    async fn attempts(&self, id: RunId) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!("{ATTEMPTS_SELECT} ORDER BY idx, attempt")))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(q("read attempts"))?;
        attempt_records(&rows)
    }

    async fn attempts_at(&self, id: RunId, idxs: &[u32]) -> Result<Vec<AttemptRecord>> {
        let mut out = Vec::new();
        for chunk in idxs.chunks(AT_MOST_IDXS) {
            let sql =
                format!("{ATTEMPTS_SELECT} AND idx IN ({}) ORDER BY idx, attempt", idx_list(chunk));
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(q("read attempts"))?;
            out.extend(attempt_records(&rows)?);
        }
        Ok(out)
    }

    async fn events(&self, id: RunId) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, at_s, wall, kind, key, detail FROM events WHERE run_id = $1 ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(q("read events"))?;
        event_records(&rows)
    }

    async fn events_after(&self, id: RunId, after: i64, limit: u32) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, at_s, wall, kind, key, detail FROM events WHERE run_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(q("read events"))?;
        event_records(&rows)
    }

    async fn run_marker(&self, id: RunId) -> Result<Option<RunMarker>> {
        let row = sqlx::query(
            "SELECT runs.state, run_leases.clock_s, runs.finished_s, run_leases.owner, \
             run_leases.heartbeat_unix_ms, runs.cancel_requested, \
             (SELECT MAX(seq) FROM events WHERE run_id = $1) AS last_seq \
             FROM runs JOIN run_leases ON run_leases.run_id = runs.id WHERE runs.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(q("read run marker"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(RunMarker {
            state: parse_name::<RunState>(&row, "state")?,
            clock_s: row.try_get("clock_s").map_err(q("clock_s"))?,
            finished_s: row.try_get("finished_s").map_err(q("finished_s"))?,
            owner: row.try_get("owner").map_err(q("owner"))?,
            heartbeat_unix_ms: row.try_get("heartbeat_unix_ms").map_err(q("heartbeat_unix_ms"))?,
            cancel_requested: row
                .try_get::<i64, _>("cancel_requested")
                .map_err(q("cancel_requested"))?
                != 0,
            last_seq: row
                .try_get::<Option<i64>, _>("last_seq")
                .map_err(q("last_seq"))?
                .unwrap_or(0),
        }))
    }

    async fn commit(&self, id: RunId, owner: &str, batch: &Batch) -> Result<()> {
        let run_id = id.to_string();
        // Last update per instance and per attempt wins within a batch.
        let instances: Vec<&InstanceUpdate> = batch
            .instances
            .iter()
            .map(|u| (u.idx, u))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let attempts: Vec<&AttemptRecord> = batch
            .attempts
            .iter()
            .map(|a| ((a.idx, a.attempt), a))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let mut tx = self.begin_write("begin commit").await?;
        if self.backend == Backend::Sqlite
            && batch.wave.is_none()
            && batch.end.is_none()
            && instances.len() < EXACT_BELOW
            && attempts.len() < EXACT_BELOW
            && batch.events.len() < EXACT_BELOW
        {
            // A real run's turn writes a few rows: every statement in one text, sent to SQLite's
            // worker thread at once (sqlx binds the `?`s across its statements in order), so the
            // commit is three round trips (begin, the statements, commit) instead of six.
            let mut sql = String::from(
                "UPDATE run_leases SET clock_s = ?, heartbeat_unix_ms = ? WHERE run_id = ? AND owner = ?",
            );
            let mut query_sql = |part: Option<String>| {
                if let Some(part) = part {
                    sql.push_str(";\n");
                    sql.push_str(&part);
                }
            };
            query_sql(
                (!instances.is_empty()).then(|| instances_sql(self.backend, instances.len())),
            );
            query_sql((!attempts.is_empty()).then(|| attempts_sql(self.backend, attempts.len())));
            query_sql(
                (!batch.events.is_empty()).then(|| events_sql(self.backend, batch.events.len())),
            );
            let mut query = sqlx::query(AssertSqlSafe(sql))
                .bind(batch.clock_s)
                .bind(batch.heartbeat_unix_ms)
                .bind(run_id.clone())
                .bind(owner.to_owned());
            if !instances.is_empty() {
                query = bind_instances(query, &instances).bind(run_id.clone());
            }
            query = bind_attempts(query, &run_id, &attempts);
            query = bind_events(query, &run_id, &batch.events);
            let mut results = sqlx::Executor::fetch_many(&mut *tx, query);
            // The lease first: a process that lost the run writes nothing (the transaction is
            // dropped, so neither do the statements after this one).
            let mut lease = None;
            while let Some(step) = futures::TryStreamExt::try_next(&mut results)
                .await
                .map_err(q("write checkpoint"))?
            {
                if let sqlx::Either::Left(done) = step {
                    lease.get_or_insert(done.rows_affected());
                }
            }
            drop(results);
            if lease != Some(1) {
                return Err(StoreError::LeaseLost { run: id, owner: owner.to_owned() });
            }
            return tx.commit().await.map_err(q("commit checkpoint"));
        }
        // The lease first: a process that lost the run writes nothing.
        let done = sqlx::query(
            "UPDATE run_leases SET clock_s = $1, heartbeat_unix_ms = $2 WHERE run_id = $3 AND owner = $4",
        )
        .persistent(self.backend.caches())
        .bind(batch.clock_s)
        .bind(batch.heartbeat_unix_ms)
        .bind(run_id.clone())
        .bind(owner.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(q("update run"))?;
        if done.rows_affected() != 1 {
            return Err(StoreError::LeaseLost { run: id, owner: owner.to_owned() });
        }
        if let Some(end) = &batch.end {
            sqlx::query("UPDATE runs SET state = $1, finished_s = $2, reason = $3 WHERE id = $4")
                .bind(end.state.as_str())
                .bind(end.finished_s)
                .bind(end.reason.clone())
                .bind(run_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(q("end run"))?;
        }
        if let Some(wave) = batch.wave {
            sqlx::query("UPDATE runs SET wave = $1 WHERE id = $2")
                .bind(i64::from(wave))
                .bind(run_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(q("open wave"))?;
        }
        if batch.end.as_ref().is_some_and(|e| !e.state.holds_targets()) {
            sqlx::query("DELETE FROM target_locks WHERE run_id = $1")
                .bind(run_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(q("release target locks"))?;
        }
        for rows in statements(self.backend, &instances, 8) {
            let query = sqlx::query(AssertSqlSafe(instances_sql(self.backend, rows.len())))
                .persistent(self.backend.caches());
            bind_instances(query, rows)
                .bind(run_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(q("update instances"))?;
        }
        for rows in statements(self.backend, &attempts, 10) {
            let query = sqlx::query(AssertSqlSafe(attempts_sql(self.backend, rows.len())))
                .persistent(self.backend.caches());
            bind_attempts(query, &run_id, rows)
                .execute(&mut *tx)
                .await
                .map_err(q("write attempts"))?;
        }
        insert_events(self.backend, &mut tx, &run_id, &batch.events).await?;
        tx.commit().await.map_err(q("commit checkpoint"))
    }

    async fn claim(
        &self,
        id: RunId,
        owner: &str,
        expected: Option<&Holding>,
        now_unix_ms: i64,
    ) -> Result<bool> {
        let done = match expected {
            Some(h) => sqlx::query(
                "UPDATE run_leases SET owner = $1, heartbeat_unix_ms = $2, epoch = epoch + 1 \
                 WHERE run_id = $3 AND owner = $4 AND heartbeat_unix_ms IS NOT DISTINCT FROM $5",
            )
            .bind(owner.to_owned())
            .bind(now_unix_ms)
            .bind(id.to_string())
            .bind(h.owner.clone())
            .bind(h.heartbeat_unix_ms),
            None => sqlx::query(
                "UPDATE run_leases SET owner = $1, heartbeat_unix_ms = $2, epoch = epoch + 1 \
                 WHERE run_id = $3 AND owner IS NULL",
            )
            .bind(owner.to_owned())
            .bind(now_unix_ms)
            .bind(id.to_string()),
        }
        .persistent(self.backend.caches())
        .execute(&self.pool)
        .await
        .map_err(q("claim run"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn clock_unix_ms(&self) -> Result<i64> {
        match self.backend {
            // `clock_timestamp()`, not `now()`: the instant of the statement, not of a
            // transaction's start.
            Backend::Postgres => sqlx::query_scalar(
                "SELECT CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)",
            )
            .persistent(true)
            .fetch_one(&self.pool)
            .await
            .map_err(q("read the database's clock")),
            Backend::Sqlite => Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        }
    }

    async fn release(&self, id: RunId, owner: &str) -> Result<()> {
        sqlx::query("UPDATE run_leases SET owner = NULL WHERE run_id = $1 AND owner = $2")
            .bind(id.to_string())
            .bind(owner.to_owned())
            .execute(&self.pool)
            .await
            .map_err(q("release run"))?;
        Ok(())
    }

    async fn request_cancel(&self, id: RunId, event: &NewEvent) -> Result<()> {
        let run_id = id.to_string();
        let mut tx = self.begin_write("begin cancel").await?;
        sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1")
            .bind(run_id.clone())
            .execute(&mut *tx)
            .await
            .map_err(q("request cancel"))?;
        insert_events(self.backend, &mut tx, &run_id, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(q("commit cancel"))
    }

    async fn cancel_requested(&self, id: RunId) -> Result<bool> {
        let v: Option<i64> = sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read cancel flag"))?;
        Ok(v.unwrap_or(0) != 0)
    }

    async fn reset_failed(&self, id: RunId, event: &NewEvent) -> Result<u64> {
        let run_id = id.to_string();
        // It reads, then writes: the write lock first (see `begin_write`).
        let mut tx = self.begin_write("begin retry").await?;
        let row = sqlx::query("SELECT simulated, state FROM runs WHERE id = $1")
            .bind(run_id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("read run"))?;
        let Some(row) = row else {
            return Err(StoreError::Refused { run: id, why: "does not exist".into() });
        };
        let state = parse_name::<RunState>(&row, "state")?;
        if !state.can_retry() {
            return Err(StoreError::Refused {
                run: id,
                why: format!("{state}: a finished run is never run again; nothing was changed"),
            });
        }
        let simulated: i64 = row.try_get("simulated").map_err(q("runs.simulated"))?;
        if simulated == 0 {
            // A failed run released its targets: take them again, unless another run has.
            let targets: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT target FROM instances WHERE run_id = $1 AND target IS NOT NULL",
            )
            .bind(run_id.clone())
            .fetch_all(&mut *tx)
            .await
            .map_err(q("read targets"))?;
            let held = holders(&mut tx, &targets, Some(&run_id)).await?;
            if !held.is_empty() {
                return Err(StoreError::Held(held));
            }
            // The targets it does not hold yet. No `ON CONFLICT DO NOTHING`: a run that locked
            // one since the check above must make this fail, not be skipped.
            let locked = sqlx::query(
                "INSERT INTO target_locks (target, run_id) \
                 SELECT DISTINCT i.target, i.run_id FROM instances i WHERE i.run_id = $1 AND i.target IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM target_locks l WHERE l.target = i.target AND l.run_id = $1)",
            )
            .bind(run_id.clone())
            .execute(&mut *tx)
            .await;
            if let Err(e) = locked {
                drop(tx);
                return Err(self.lock_failed(e, &targets, Some(&run_id)).await);
            }
        }
        let done = sqlx::query(
            "UPDATE instances SET state = 'pending', failures = 0, retry_at_s = NULL, finished_s = NULL, error = NULL \
             WHERE run_id = $1 AND state IN ('failed', 'blocked')",
        )
        .bind(run_id.clone())
        .execute(&mut *tx)
        .await
        .map_err(q("reset failed instances"))?;
        sqlx::query(
            "UPDATE runs SET state = 'running', finished_s = NULL, reason = NULL WHERE id = $1",
        )
        .bind(run_id.clone())
        .execute(&mut *tx)
        .await
        .map_err(q("reopen run"))?;
        insert_events(self.backend, &mut tx, &run_id, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(q("commit retry"))?;
        Ok(done.rows_affected())
    }

    async fn accept_wave(&self, id: RunId, wave: u32, event: &NewEvent) -> Result<()> {
        let run_id = id.to_string();
        let mut tx = self.begin_write("begin resume").await?;
        let done = sqlx::query(
            "UPDATE runs SET state = 'running', finished_s = NULL, reason = NULL, wave = $1 \
             WHERE id = $2 AND state = 'halted'",
        )
        .bind(i64::from(wave))
        .bind(run_id.clone())
        .execute(&mut *tx)
        .await
        .map_err(q("reopen run"))?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Refused {
                run: id,
                why: "is not halted: only a halted run continues with its failures accepted".into(),
            });
        }
        insert_events(self.backend, &mut tx, &run_id, std::slice::from_ref(event)).await?;
        tx.commit().await.map_err(q("commit resume"))
    }

    async fn record_drill(&self, d: &DrillRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO drills (id, name, run_id, started_at, started_unix_ms, passed, rto_s, rpo_s, result) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.run_id.as_deref())
        .bind(&d.started_at)
        .bind(d.started_unix_ms)
        .bind(i64::from(d.passed))
        .bind(d.rto_s)
        .bind(d.rpo_s)
        .bind(&d.result)
        .execute(&self.pool)
        .await
        .map_err(q("record drill"))?;
        Ok(())
    }

    async fn drills(&self, name: Option<&str>) -> Result<Vec<DrillRecord>> {
        let rows = match name {
            Some(n) => {
                sqlx::query("SELECT * FROM drills WHERE name = $1 ORDER BY started_unix_ms, id")
                    .bind(n.to_owned())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM drills ORDER BY started_unix_ms, id")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(q("list drills"))?;
        rows.iter().map(drill_record).collect()
    }

    async fn drill(&self, id: &str) -> Result<Option<DrillRecord>> {
        let row = sqlx::query("SELECT * FROM drills WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read drill"))?;
        row.as_ref().map(drill_record).transpose()
    }

    async fn holders(&self, targets: &[String]) -> Result<Vec<Holder>> {
        let mut conn = self.pool.acquire().await.map_err(q("read locks"))?;
        holders(&mut conn, targets, None).await
    }
}

/// The locks on `targets` held by runs other than `except`, by target.
async fn holders(
    conn: &mut sqlx::AnyConnection,
    targets: &[String],
    except: Option<&str>,
) -> Result<Vec<Holder>> {
    let mut out = Vec::new();
    for rows in targets.chunks(500) {
        let list = (1..=rows.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT target, run_id FROM target_locks WHERE target IN ({list}) AND run_id <> ${}",
            rows.len() + 1
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for t in rows {
            query = query.bind(t.clone());
        }
        let found = query
            .bind(except.unwrap_or("").to_owned())
            .fetch_all(&mut *conn)
            .await
            .map_err(q("read locks"))?;
        for row in found {
            out.push(Holder {
                target: row.try_get("target").map_err(q("target_locks.target"))?,
                run: row.try_get("run_id").map_err(q("target_locks.run_id"))?,
            });
        }
    }
    out.sort_by(|a, b| (&a.run, &a.target).cmp(&(&b.run, &b.target)));
    Ok(out)
}

async fn insert_events(
    backend: Backend,
    tx: &mut sqlx::Transaction<'_, Any>,
    run_id: &str,
    events: &[NewEvent],
) -> Result<()> {
    for rows in statements(backend, events, 6) {
        let query = sqlx::query(AssertSqlSafe(events_sql(backend, rows.len())))
            .persistent(backend.caches());
        bind_events(query, run_id, rows).execute(&mut **tx).await.map_err(q("append events"))?;
    }
    Ok(())
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// Updates `rows` instances (8 parameters each, then the run id).
fn instances_sql(backend: Backend, rows: usize) -> String {
    format!(
        "UPDATE instances SET state = v.column2, attempts = v.column3, failures = v.column4, \
         retry_at_s = v.column5, finished_s = v.column6, output = COALESCE(v.column7, instances.output), \
         error = v.column8 FROM (VALUES {}) AS v WHERE instances.run_id = {} AND instances.idx = v.column1",
        backend.values(rows, 8),
        backend.param(rows * 8 + 1)
    )
}

/// The parameters of [`instances_sql`] but the run id.
fn bind_instances<'q>(mut query: AnyQuery<'q>, rows: &[&InstanceUpdate]) -> AnyQuery<'q> {
    for u in rows {
        query = query
            .bind(i64::from(u.idx))
            .bind(u.state.as_str())
            .bind(i64::from(u.attempts))
            .bind(i64::from(u.failures))
            .bind(u.retry_at_s)
            .bind(u.finished_s)
            .bind(u.output.clone())
            .bind(u.error.clone());
    }
    query
}

/// Inserts or replaces `rows` attempts (10 parameters each).
fn attempts_sql(backend: Backend, rows: usize) -> String {
    format!(
        "INSERT INTO attempts (run_id, idx, attempt, started_s, ended_s, outcome, exit_code, error, \
         stdout_tail, stderr_tail) VALUES {} \
         ON CONFLICT (run_id, idx, attempt) DO UPDATE SET started_s = excluded.started_s, \
         ended_s = excluded.ended_s, outcome = excluded.outcome, exit_code = excluded.exit_code, \
         error = excluded.error, stdout_tail = excluded.stdout_tail, stderr_tail = excluded.stderr_tail",
        backend.values(rows, 10)
    )
}

fn bind_attempts<'q>(
    mut query: AnyQuery<'q>,
    run_id: &str,
    rows: &[&AttemptRecord],
) -> AnyQuery<'q> {
    for a in rows {
        query = query
            .bind(run_id.to_owned())
            .bind(i64::from(a.idx))
            .bind(i64::from(a.attempt))
            .bind(a.started_s)
            .bind(a.ended_s)
            .bind(a.outcome.map(AttemptOutcome::as_str))
            .bind(a.exit_code.map(i64::from))
            .bind(a.error.clone())
            .bind(a.stdout_tail.clone())
            .bind(a.stderr_tail.clone());
    }
    query
}

/// Appends `rows` events (6 parameters each).
fn events_sql(backend: Backend, rows: usize) -> String {
    format!(
        "INSERT INTO events (run_id, at_s, wall, kind, key, detail) VALUES {}",
        backend.values(rows, 6)
    )
}

fn bind_events<'q>(mut query: AnyQuery<'q>, run_id: &str, rows: &[NewEvent]) -> AnyQuery<'q> {
    for e in rows {
        query = query
            .bind(run_id.to_owned())
            .bind(e.at_s)
            .bind(e.wall.clone())
            .bind(e.kind.as_str())
            .bind(e.key.clone())
            .bind(e.detail.clone());
    }
    query
}

#[cfg(test)]
mod tests {
    #[test]
    fn bulk_statements_take_few_shapes_on_sqlite() {
        use super::{Backend, shapes};
        // 8 binds a row: at most 3,750 rows a statement, 2,048 on SQLite.
        assert_eq!(shapes(Backend::Sqlite, 5000, 8), vec![2048, 2048, 512, 256, 128, 8]);
        assert_eq!(shapes(Backend::Sqlite, 7, 8), vec![7]);
        assert_eq!(shapes(Backend::Sqlite, 13, 8), vec![8, 5]);
        assert_eq!(shapes(Backend::Sqlite, 0, 8), Vec::<usize>::new());
        assert_eq!(shapes(Backend::Postgres, 5000, 8), vec![3750, 1250]);
        assert_eq!(shapes(Backend::Postgres, 13, 8), vec![13]);
    }

    #[test]
    fn value_lists_per_backend() {
        use super::Backend;
        assert_eq!(Backend::Postgres.values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(Backend::Sqlite.values(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Backend::Postgres.param(7), "$7");
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        let e = tokio::runtime::Runtime::new()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(super::SqlStore::open("mysql://u:s3cr@tPW@h/db"))
            .err()
            .unwrap_or_else(|| panic!("a mysql:// store is refused"));
        let shown = e.to_string();
        assert!(shown.contains("mysql://u:***@h/db") && !shown.contains("tPW"), "{shown}");
    }
}
