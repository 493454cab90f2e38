//! The dispatch protocol of issue 17 in SQL: each method is one operation of
//! `rewind_dispatch::model::Table`, with the same answer (`tests/dispatch.rs` replays random
//! sequences against both and compares). On PostgreSQL, claims lock the rows they take with
//! `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait for each other; every other
//! statement decides in its own `WHERE` (state, holder, epoch, lease) under the row lock, so a
//! rescue and a completion that race cannot both win. On SQLite the write lock serialises
//! everything.

use std::collections::{BTreeSet, HashMap, HashSet};

use rewind_dispatch::{
    AttemptKey, Beat, Claimed, Completion, DispatchRow, DispatchState, Fence, Fenced, Finished,
    NewDispatch, Rescued, Session, StaleOutcome, WorkerReport, WorkerRow, WorkerSpec,
};
use rewind_model::RunId;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Backend, SqlStore, chunk, q};
use crate::{Result, StoreError};

/// The channel [`SqlStore::dispatch_enqueue`] notifies on PostgreSQL (payload: the run id):
/// workers listen on it.
pub const NOTIFY_CHANNEL: &str = "rewind_dispatch";

/// The channel [`SqlStore::dispatch_complete_many`] notifies on PostgreSQL (payload: the run
/// id), once per run per batch of reports that accepted one of its attempts: coordinators listen
/// on it.
pub const DONE_CHANNEL: &str = "rewind_dispatch_done";

/// Wake-ups: a PostgreSQL `LISTEN` on [`NOTIFY_CHANNEL`] (workers) or [`DONE_CHANNEL`]
/// (coordinators).
pub struct DispatchListener(sqlx::postgres::PgListener);

impl DispatchListener {
    /// Listens on [`NOTIFY_CHANNEL`] of the PostgreSQL server at `url` (which must be one).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_to(url, NOTIFY_CHANNEL).await
    }

    /// Listens on `channel` of the PostgreSQL server at `url` (which must be one).
    pub async fn connect_to(url: &str, channel: &str) -> Result<Self> {
        let mut l = sqlx::postgres::PgListener::connect(url).await.map_err(q("listen: connect"))?;
        l.listen(channel).await.map_err(q("listen"))?;
        Ok(Self(l))
    }

    /// The next wake-up: the run whose attempts were enqueued or reported (an error when the
    /// connection failed; it reconnects on the next call).
    pub async fn recv(&mut self) -> Result<String> {
        self.0.recv().await.map(|n| n.payload().to_owned()).map_err(q("listen: receive"))
    }
}

/// The columns a [`DispatchRow`] is read from.
const ROW_COLUMNS: &str = "run_id, idx, attempt, queue, state, epoch, worker, incarnation, \
     lease_until_ms, enqueued_unix_ms, payload, outcome";

fn i64_of(n: u32) -> i64 {
    i64::from(n)
}

fn key_of(row: &AnyRow) -> Result<AttemptKey> {
    let run: String = row.try_get("run_id").map_err(q("dispatch.run_id"))?;
    let run: RunId =
        run.parse().map_err(|_| StoreError::Corrupt { what: "dispatch.run_id", value: run })?;
    Ok(AttemptKey { run, idx: super::u32_of(row, "idx")?, attempt: super::u32_of(row, "attempt")? })
}

fn state_of(row: &AnyRow) -> Result<DispatchState> {
    super::parse_name::<DispatchState>(row, "state")
}

fn get<'r, T>(row: &'r AnyRow, col: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(col).map_err(q(col))
}

fn dispatch_row(row: &AnyRow) -> Result<DispatchRow> {
    Ok(DispatchRow {
        key: key_of(row)?,
        queue: get(row, "queue")?,
        state: state_of(row)?,
        epoch: get(row, "epoch")?,
        worker: get(row, "worker")?,
        incarnation: get(row, "incarnation")?,
        lease_until_ms: get(row, "lease_until_ms")?,
        enqueued_unix_ms: get(row, "enqueued_unix_ms")?,
        payload: get(row, "payload")?,
        outcome: get(row, "outcome")?,
    })
}

/// Queues as stored in `workers.queues`: one per line.
fn join_queues(queues: &[String]) -> String {
    queues.join("\n")
}

fn split_queues(text: &str) -> Vec<String> {
    if text.is_empty() { Vec::new() } else { text.split('\n').map(str::to_owned).collect() }
}

/// `rows` rows of `cols` parameters, numbered from `first` (1-based): `($3, $4), ($5, $6)`.
/// Numbered on both backends (SQLite reads `$N` as the Nth argument too), so they mix with the
/// statement's own `$1`, `$2` (sqlx counts SQLite's bare `?` from 1 whatever precedes them).
fn values_from(first: usize, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + r * cols + c));
        }
        out.push(')');
    }
    out
}

/// `reports` cut where a key repeats one earlier in its segment: within a segment every key is
/// distinct, so one `UPDATE … FROM (VALUES …)` decides each report as its own statement would.
fn segments(reports: &[WorkerReport]) -> Vec<&[WorkerReport]> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut start = 0;
    for (i, r) in reports.iter().enumerate() {
        if !seen.insert(r.key) {
            out.push(&reports[start..i]);
            seen.clear();
            seen.insert(r.key);
            start = i;
        }
    }
    if start < reports.len() {
        out.push(&reports[start..]);
    }
    out
}

impl SqlStore {
    /// A listener on `channel` ([`NOTIFY_CHANNEL`] or [`DONE_CHANNEL`]) of this store's server:
    /// PostgreSQL only ([`StoreError::Query`] on SQLite, which has no `LISTEN`).
    pub async fn listen(&self, channel: &str) -> Result<DispatchListener> {
        if self.backend != Backend::Postgres {
            return Err(q("listen")(sqlx::Error::Configuration(
                "LISTEN needs PostgreSQL; this store is SQLite".into(),
            )));
        }
        let url = self.pool.connect_options().database_url.to_string();
        DispatchListener::connect_to(&url, channel).await
    }

    /// Of `runs`, those a worker may still run attempts of: running, and no cancel requested.
    /// One statement for them all (a worker asks once per batch of claims and per heartbeat).
    pub async fn live_runs(&self, runs: &[RunId]) -> Result<BTreeSet<RunId>> {
        let mut live = BTreeSet::new();
        for part in runs.chunks(chunk(1)) {
            let list: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id FROM runs WHERE id IN ({}) AND state = 'running' \
                 AND cancel_requested = 0",
                list.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for run in part {
                query = query.bind(run.to_string());
            }
            for row in query.fetch_all(&self.pool).await.map_err(q("read runs' liveness"))? {
                let id: String = get(&row, "id")?;
                live.insert(
                    id.parse().map_err(|_| StoreError::Corrupt { what: "runs.id", value: id })?,
                );
            }
        }
        Ok(live)
    }

    /// The epoch of the run lease `owner` holds, or `None` if it does not hold the run: the
    /// [`Fence`] of its dispatch writes. (Every [`crate::Store::claim`] that takes a run bumps
    /// it.)
    pub async fn lease_epoch(&self, run: RunId, owner: &str) -> Result<Option<Fence>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM run_leases WHERE run_id = $1 AND owner = $2")
                .bind(run.to_string())
                .bind(owner.to_owned())
                .fetch_optional(&self.pool)
                .await
                .map_err(q("read lease epoch"))?;
        Ok(epoch.map(|epoch| Fence { run, epoch }))
    }

    /// Inside a write transaction: the run lease is still at `fence`'s epoch, and (PostgreSQL)
    /// stays so until the transaction ends: a take-over waits for it.
    async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        fence: Fence,
    ) -> Result<()> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT epoch FROM run_leases WHERE run_id = $1 FOR SHARE",
            Backend::Sqlite => "SELECT epoch FROM run_leases WHERE run_id = $1",
        };
        let epoch: Option<i64> = sqlx::query_scalar(sql)
            .bind(fence.run.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(q("check lease epoch"))?;
        if epoch == Some(fence.epoch) {
            Ok(())
        } else {
            Err(StoreError::Fenced(Fenced { run: fence.run, epoch: fence.epoch }))
        }
    }

    /// The coordinator holding `fence` dispatches attempts of its run (queued, epoch 0,
    /// enqueued at `now`); an attempt already dispatched is left as it is. Returns how many
    /// rows were written; [`StoreError::Fenced`] (nothing written) if the run was taken over.
    pub async fn dispatch_enqueue(
        &self,
        fence: Fence,
        items: &[NewDispatch],
        now: i64,
    ) -> Result<u64> {
        self.dispatch_flush(fence, &[], items, now).await.map(|(_, written)| written)
    }

    /// The coordinator's one write per turn: [`SqlStore::dispatch_forget`] of `forget` (ended
    /// rows whose outcomes it has committed), then [`SqlStore::dispatch_enqueue`] of `items`, in
    /// one fenced transaction (one commit, not two). Returns (rows forgotten, rows written);
    /// [`StoreError::Fenced`] (nothing changed) if the run was taken over.
    pub async fn dispatch_flush(
        &self,
        fence: Fence,
        forget: &[AttemptKey],
        items: &[NewDispatch],
        now: i64,
    ) -> Result<(u64, u64)> {
        let mut tx = self.begin_write("begin enqueue").await?;
        self.check_fence(&mut tx, fence).await?;
        let gone = self
            .delete_in(&mut tx, fence, forget, "state IN ('done', 'lost')", "forget attempts")
            .await?;
        let run = fence.run.to_string();
        let mut written = 0;
        for rows in items.chunks(chunk(7)) {
            let sql = format!(
                "INSERT INTO dispatch (run_id, idx, attempt, queue, state, enqueued_unix_ms, payload) \
                 VALUES {} ON CONFLICT DO NOTHING",
                self.backend.values(rows.len(), 7)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for it in rows {
                query = query
                    .bind(run.clone())
                    .bind(i64_of(it.idx))
                    .bind(i64_of(it.attempt))
                    .bind(it.queue.clone())
                    .bind(DispatchState::Queued.as_str())
                    .bind(now)
                    .bind(it.payload.clone());
            }
            written +=
                query.execute(&mut *tx).await.map_err(q("enqueue attempts"))?.rows_affected();
        }
        // One wake-up per enqueue transaction, delivered at its commit (workers LISTEN on it;
        // they poll too, so a missed one only delays).
        if self.backend == Backend::Postgres && written > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(run.clone())
                .execute(&mut *tx)
                .await
                .map_err(q("notify workers"))?;
        }
        tx.commit().await.map_err(q("commit enqueue"))?;
        Ok((gone, written))
    }

    /// A worker process registers: its name's next incarnation (1 for a new name). The row of
    /// an earlier process of that name is replaced, and that process's session is no longer
    /// current.
    pub async fn worker_register(&self, spec: &WorkerSpec, now: i64) -> Result<Session> {
        let incarnation: i64 = sqlx::query_scalar(
            "INSERT INTO workers (name, incarnation, host, queues, slots, started_unix_ms, \
             heartbeat_unix_ms, stopping) VALUES ($1, 1, $2, $3, $4, $5, $6, 0) \
             ON CONFLICT (name) DO UPDATE SET incarnation = workers.incarnation + 1, \
             host = excluded.host, queues = excluded.queues, slots = excluded.slots, \
             started_unix_ms = excluded.started_unix_ms, \
             heartbeat_unix_ms = excluded.heartbeat_unix_ms, stopping = 0 \
             RETURNING incarnation",
        )
        .bind(spec.name.clone())
        .bind(spec.host.clone())
        .bind(join_queues(&spec.queues))
        .bind(i64_of(spec.slots))
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(q("register worker"))?;
        Ok(Session { name: spec.name.clone(), incarnation })
    }

    /// Up to `n` queued attempts of `queues`, oldest first, claimed by the session at their
    /// next epoch with a lease until `now + lease_ms`; nothing if the session is not current or
    /// is stopping. On PostgreSQL rows another worker is claiming are skipped, not waited for.
    pub async fn dispatch_claim(
        &self,
        s: &Session,
        queues: &[String],
        n: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        if queues.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (0..queues.len()).map(|i| format!("${}", i + 5)).collect();
        let pick = format!(
            "SELECT run_id, idx, attempt FROM dispatch \
             WHERE state = 'queued' AND queue IN ({}) \
             AND EXISTS (SELECT 1 FROM workers WHERE name = $1 AND incarnation = $2 AND stopping = 0) \
             ORDER BY enqueued_unix_ms, run_id, idx, attempt LIMIT $4",
            list.join(", ")
        );
        let set = "state = 'claimed', epoch = dispatch.epoch + 1, worker = $1, incarnation = $2, \
                   lease_until_ms = $3";
        let returning = "RETURNING dispatch.run_id, dispatch.idx, dispatch.attempt, \
                         dispatch.epoch, dispatch.payload, dispatch.enqueued_unix_ms";
        let sql = match self.backend {
            // A materialised CTE locks exactly the rows it picked; the UPDATE checks the state
            // again under the lock.
            Backend::Postgres => format!(
                "WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) \
                 UPDATE dispatch SET {set} FROM picked \
                 WHERE dispatch.run_id = picked.run_id AND dispatch.idx = picked.idx \
                 AND dispatch.attempt = picked.attempt AND dispatch.state = 'queued' {returning}"
            ),
            Backend::Sqlite => format!(
                "UPDATE dispatch SET {set} WHERE (run_id, idx, attempt) IN ({pick}) {returning}"
            ),
        };
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(s.name.clone())
            .bind(s.incarnation)
            .bind(now + lease_ms)
            .bind(i64_of(n));
        for queue in queues {
            query = query.bind(queue.clone());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(q("claim attempts"))?;
        let mut out = rows
            .iter()
            .map(|row| {
                let enqueued: i64 = get(row, "enqueued_unix_ms")?;
                Ok((
                    enqueued,
                    Claimed {
                        key: key_of(row)?,
                        epoch: get(row, "epoch")?,
                        payload: get(row, "payload")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|(enqueued, c)| (*enqueued, c.key));
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// The session's heartbeat: its worker row, and every lease it holds that has not expired
    /// extended to `now + lease_ms`. [`Beat::Superseded`] (nothing written) if another process
    /// registered under its name since.
    pub async fn worker_heartbeat(&self, s: &Session, now: i64, lease_ms: i64) -> Result<Beat> {
        let mut tx = self.begin_write("begin heartbeat").await?;
        let beat = sqlx::query(
            "UPDATE workers SET heartbeat_unix_ms = $1 WHERE name = $2 AND incarnation = $3",
        )
        .bind(now)
        .bind(s.name.clone())
        .bind(s.incarnation)
        .execute(&mut *tx)
        .await
        .map_err(q("heartbeat worker"))?;
        if beat.rows_affected() == 0 {
            return Ok(Beat::Superseded);
        }
        let rows = sqlx::query(
            "UPDATE dispatch SET lease_until_ms = $1 WHERE state = 'claimed' AND worker = $2 \
             AND incarnation = $3 AND lease_until_ms >= $4 RETURNING run_id, idx, attempt, epoch",
        )
        .bind(now + lease_ms)
        .bind(s.name.clone())
        .bind(s.incarnation)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(q("extend leases"))?;
        tx.commit().await.map_err(q("commit heartbeat"))?;
        let mut held = rows
            .iter()
            .map(|row| Ok((key_of(row)?, get(row, "epoch")?)))
            .collect::<Result<Vec<(AttemptKey, i64)>>>()?;
        held.sort();
        Ok(Beat::Held(held))
    }

    /// The session reports an attempt's outcome at the epoch of its claim: accepted only if it
    /// holds the attempt at exactly that epoch; otherwise recorded in `stale_outcomes`, the
    /// attempt untouched. A batch of one ([`SqlStore::dispatch_complete_many`]).
    pub async fn dispatch_complete(
        &self,
        s: &Session,
        key: AttemptKey,
        epoch: i64,
        outcome: &str,
        now: i64,
    ) -> Result<Completion> {
        let report = WorkerReport { key, epoch, outcome: outcome.to_owned() };
        let mut answers =
            self.dispatch_complete_many(s, std::slice::from_ref(&report), now).await?;
        answers.pop().ok_or_else(|| StoreError::Corrupt {
            what: "dispatch_complete_many",
            value: "no answer for a report".to_owned(),
        })
    }

    /// A batch of the session's reports: each decided as if sent alone, in order, in one transaction (`rewind_dispatch::model::Table::complete_many`).
    /// Accepted ones are one `UPDATE … FROM (VALUES …)` per run of distinct keys (a repeated key
    /// starts the next), refused ones are read in one statement and recorded in one `INSERT`.
    /// On PostgreSQL the same transaction notifies [`DONE_CHANNEL`] once per run that had a
    /// report accepted, so a batch makes at most one notifying commit whatever its size.
    pub async fn dispatch_complete_many(
        &self,
        s: &Session,
        reports: &[WorkerReport],
        now: i64,
    ) -> Result<Vec<Completion>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write("begin completions").await?;
        let mut answers = Vec::with_capacity(reports.len());
        let mut notify: BTreeSet<RunId> = BTreeSet::new();
        let mut stale: Vec<&WorkerReport> = Vec::new();
        for segment in segments(reports) {
            let mut accepted = HashSet::new();
            for part in segment.chunks(chunk(5)) {
                let sql = format!(
                    "WITH v (run_id, idx, attempt, epoch, outcome) AS (VALUES {}) \
                     UPDATE dispatch SET state = 'done', outcome = v.outcome FROM v \
                     WHERE dispatch.run_id = v.run_id AND dispatch.idx = v.idx \
                     AND dispatch.attempt = v.attempt AND dispatch.state = 'claimed' \
                     AND dispatch.worker = $1 AND dispatch.incarnation = $2 \
                     AND dispatch.epoch = v.epoch \
                     RETURNING dispatch.run_id, dispatch.idx, dispatch.attempt",
                    values_from(3, part.len(), 5)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(s.name.clone())
                    .bind(s.incarnation);
                for r in part {
                    query = query
                        .bind(r.key.run.to_string())
                        .bind(i64_of(r.key.idx))
                        .bind(i64_of(r.key.attempt))
                        .bind(r.epoch)
                        .bind(r.outcome.clone());
                }
                for row in query.fetch_all(&mut *tx).await.map_err(q("complete attempts"))? {
                    accepted.insert(key_of(&row)?);
                }
            }
            let refused: Vec<&WorkerReport> =
                segment.iter().filter(|r| !accepted.contains(&r.key)).collect();
            let mut current: HashMap<AttemptKey, (DispatchState, i64, bool)> = HashMap::new();
            for part in refused.chunks(chunk(3)) {
                let sql = format!(
                    "SELECT run_id, idx, attempt, state, epoch, worker, incarnation FROM dispatch \
                     WHERE (run_id, idx, attempt) IN (VALUES {})",
                    values_from(1, part.len(), 3)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
                for r in part {
                    query = query
                        .bind(r.key.run.to_string())
                        .bind(i64_of(r.key.idx))
                        .bind(i64_of(r.key.attempt));
                }
                for row in query.fetch_all(&mut *tx).await.map_err(q("read attempts"))? {
                    let worker: Option<String> = get(&row, "worker")?;
                    let incarnation: Option<i64> = get(&row, "incarnation")?;
                    let mine = worker.as_deref() == Some(s.name.as_str())
                        && incarnation == Some(s.incarnation);
                    current.insert(key_of(&row)?, (state_of(&row)?, get(&row, "epoch")?, mine));
                }
            }
            for r in segment {
                if accepted.contains(&r.key) {
                    notify.insert(r.key.run);
                    answers.push(Completion::Accepted);
                    continue;
                }
                match current.get(&r.key) {
                    Some(&(DispatchState::Done, at, true)) if at == r.epoch => {
                        answers.push(Completion::AlreadyRecorded);
                    }
                    row => {
                        answers
                            .push(Completion::Stale { current: row.map(|&(st, at, _)| (st, at)) });
                        stale.push(r);
                    }
                }
            }
        }
        for part in stale.chunks(chunk(8)) {
            let sql = format!(
                "INSERT INTO stale_outcomes (run_id, idx, attempt, epoch, worker, incarnation, \
                 outcome, at_unix_ms) VALUES {}",
                values_from(1, part.len(), 8)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for r in part {
                query = query
                    .bind(r.key.run.to_string())
                    .bind(i64_of(r.key.idx))
                    .bind(i64_of(r.key.attempt))
                    .bind(r.epoch)
                    .bind(s.name.clone())
                    .bind(s.incarnation)
                    .bind(r.outcome.clone())
                    .bind(now);
            }
            query.execute(&mut *tx).await.map_err(q("record stale outcomes"))?;
        }
        if self.backend == Backend::Postgres && !notify.is_empty() {
            let runs: Vec<RunId> = notify.into_iter().collect();
            for part in runs.chunks(chunk(1)) {
                let sql = format!(
                    "SELECT pg_notify($1, r) FROM (VALUES {}) AS v (r)",
                    values_from(2, part.len(), 1)
                );
                let mut query =
                    sqlx::query(AssertSqlSafe(sql)).persistent(false).bind(DONE_CHANNEL);
                for run in part {
                    query = query.bind(run.to_string());
                }
                query.execute(&mut *tx).await.map_err(q("notify coordinators"))?;
            }
        }
        tx.commit().await.map_err(q("commit completions"))?;
        Ok(answers)
    }

    /// The session hands an attempt it holds at `epoch` back: queued again at the next epoch.
    /// False if it did not hold it so.
    pub async fn dispatch_hand_back(
        &self,
        s: &Session,
        key: AttemptKey,
        epoch: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE dispatch SET state = 'queued', epoch = epoch + 1, worker = NULL, \
             incarnation = NULL, lease_until_ms = NULL WHERE run_id = $1 AND idx = $2 \
             AND attempt = $3 AND state = 'claimed' AND worker = $4 AND incarnation = $5 \
             AND epoch = $6",
        )
        .bind(key.run.to_string())
        .bind(i64_of(key.idx))
        .bind(i64_of(key.attempt))
        .bind(s.name.clone())
        .bind(s.incarnation)
        .bind(epoch)
        .execute(&self.pool)
        .await
        .map_err(q("hand attempt back"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The session claims nothing more (SIGTERM). False if it is not current.
    pub async fn worker_stop(&self, s: &Session) -> Result<bool> {
        let done =
            sqlx::query("UPDATE workers SET stopping = 1 WHERE name = $1 AND incarnation = $2")
                .bind(s.name.clone())
                .bind(s.incarnation)
                .execute(&self.pool)
                .await
                .map_err(q("stop worker"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The rescuer: every claimed attempt whose lease ended before `now` becomes lost at its
    /// next epoch, in one statement whose `WHERE` checks the state and the lease under the row
    /// lock: a done attempt is never touched (River #1302).
    pub async fn dispatch_rescue(&self, now: i64) -> Result<Vec<Rescued>> {
        let rows = sqlx::query(
            "UPDATE dispatch SET state = 'lost', epoch = epoch + 1 \
             WHERE state = 'claimed' AND lease_until_ms < $1 \
             RETURNING run_id, idx, attempt, epoch, worker",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(q("rescue attempts"))?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(Rescued {
                    key: key_of(row)?,
                    epoch: get(row, "epoch")?,
                    worker: get(row, "worker")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.key);
        Ok(out)
    }

    /// A run's dispatched attempts that ended (done or lost), by instance and attempt.
    pub async fn dispatch_finished(&self, run: RunId) -> Result<Vec<Finished>> {
        let rows = sqlx::query(
            "SELECT run_id, idx, attempt, state, epoch, worker, outcome FROM dispatch \
             WHERE run_id = $1 AND state IN ('done', 'lost') ORDER BY idx, attempt",
        )
        .bind(run.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(q("read ended attempts"))?;
        rows.iter()
            .map(|row| {
                Ok(Finished {
                    key: key_of(row)?,
                    state: state_of(row)?,
                    epoch: get(row, "epoch")?,
                    worker: get(row, "worker")?,
                    outcome: get(row, "outcome")?,
                })
            })
            .collect()
    }

    /// The coordinator holding `fence` forgets ended attempts of its run it recorded (rows not
    /// ended are kept). Returns how many rows went; [`StoreError::Fenced`] (nothing removed) if
    /// the run was taken over.
    pub async fn dispatch_forget(&self, fence: Fence, keys: &[AttemptKey]) -> Result<u64> {
        self.delete_keys(fence, keys, "state IN ('done', 'lost')", "forget attempts").await
    }

    /// The coordinator holding `fence` withdraws attempts of its run that no worker claimed:
    /// their queued rows go (claimed and ended rows are kept: a worker runs or ran them).
    /// Returns how many went; [`StoreError::Fenced`] (nothing removed) if the run was taken over.
    /// The `DELETE` judges the state under the row lock, so a concurrent claim wins or loses
    /// whole.
    pub async fn dispatch_withdraw(&self, fence: Fence, keys: &[AttemptKey]) -> Result<u64> {
        self.delete_keys(fence, keys, "state = 'queued'", "withdraw attempts").await
    }

    /// Deletes the rows of `keys` of the fence's run in state `which`, fenced, one statement
    /// per chunk of keys (keys of other runs are ignored).
    async fn delete_keys(
        &self,
        fence: Fence,
        keys: &[AttemptKey],
        which: &'static str,
        what: &'static str,
    ) -> Result<u64> {
        let mut tx = self.begin_write("begin delete attempts").await?;
        self.check_fence(&mut tx, fence).await?;
        let gone = self.delete_in(&mut tx, fence, keys, which, what).await?;
        tx.commit().await.map_err(q("commit delete attempts"))?;
        Ok(gone)
    }

    /// Inside a fenced write transaction: deletes the rows of `keys` (of the fence's run) in
    /// state `which`, a chunk of keys per statement.
    async fn delete_in(
        &self,
        tx: &mut sqlx::Transaction<'static, Any>,
        fence: Fence,
        keys: &[AttemptKey],
        which: &'static str,
        what: &'static str,
    ) -> Result<u64> {
        let mine: Vec<&AttemptKey> = keys.iter().filter(|k| k.run == fence.run).collect();
        let mut gone = 0;
        for part in mine.chunks(chunk(2)) {
            let values = values_from(2, part.len(), 2);
            let sql = match self.backend {
                // A join, not `IN (VALUES …)`: without statistics (a new table) PostgreSQL
                // plans that `IN` as a nested loop over every row of the run, seconds for a
                // thousand keys; the join hashes the keys (milliseconds).
                Backend::Postgres => format!(
                    "DELETE FROM dispatch USING (VALUES {values}) AS k (idx, attempt) \
                     WHERE dispatch.run_id = $1 AND dispatch.{which} \
                     AND dispatch.idx = k.idx AND dispatch.attempt = k.attempt"
                ),
                Backend::Sqlite => format!(
                    "DELETE FROM dispatch WHERE run_id = $1 AND {which} \
                     AND (idx, attempt) IN (VALUES {values})"
                ),
            };
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(false).bind(fence.run.to_string());
            for k in part {
                query = query.bind(i64_of(k.idx)).bind(i64_of(k.attempt));
            }
            gone += query.execute(&mut **tx).await.map_err(q(what))?.rows_affected();
        }
        Ok(gone)
    }

    /// Every dispatch row, by key.
    pub async fn dispatch_rows(&self) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {ROW_COLUMNS} FROM dispatch")))
            .fetch_all(&self.pool)
            .await
            .map_err(q("read dispatch"))?;
        let mut out = rows.iter().map(dispatch_row).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.key);
        Ok(out)
    }

    /// Every registered worker, by name.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let rows = sqlx::query(
            "SELECT name, incarnation, host, queues, slots, started_unix_ms, heartbeat_unix_ms, \
             stopping FROM workers",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read workers"))?;
        let mut out = rows
            .iter()
            .map(|row| {
                let queues: String = get(row, "queues")?;
                Ok(WorkerRow {
                    name: get(row, "name")?,
                    incarnation: get(row, "incarnation")?,
                    host: get(row, "host")?,
                    queues: split_queues(&queues),
                    slots: super::u32_of(row, "slots")?,
                    started_unix_ms: get(row, "started_unix_ms")?,
                    heartbeat_unix_ms: get(row, "heartbeat_unix_ms")?,
                    stopping: get::<i64>(row, "stopping")? != 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The refused outcomes, in arrival order.
    pub async fn stale_outcomes(&self) -> Result<Vec<StaleOutcome>> {
        let rows = sqlx::query(
            "SELECT run_id, idx, attempt, epoch, worker, incarnation, outcome, at_unix_ms \
             FROM stale_outcomes ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read stale outcomes"))?;
        rows.iter()
            .map(|row| {
                Ok(StaleOutcome {
                    key: key_of(row)?,
                    epoch: get(row, "epoch")?,
                    worker: get(row, "worker")?,
                    incarnation: get(row, "incarnation")?,
                    outcome: get(row, "outcome")?,
                    at_unix_ms: get(row, "at_unix_ms")?,
                })
            })
            .collect()
    }
}

impl SqlStore {
    /// The attempts each worker holds now (claimed, not yet reported, handed back or rescued):
    /// `(worker, incarnation, attempts)` for every incarnation holding at least one, by name.
    /// Counted in the database, so showing workers reads one row per worker, not every
    /// dispatched attempt.
    pub async fn worker_attempts_held(&self) -> Result<Vec<(String, i64, u64)>> {
        let rows = sqlx::query(
            "SELECT worker, incarnation, COUNT(*) AS held FROM dispatch \
             WHERE state = 'claimed' GROUP BY worker, incarnation ORDER BY worker, incarnation",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("count attempts held"))?;
        rows.iter()
            .map(|row| {
                let held: i64 = get(row, "held")?;
                Ok((
                    get(row, "worker")?,
                    get(row, "incarnation")?,
                    u64::try_from(held).unwrap_or_default(),
                ))
            })
            .collect()
    }
}
