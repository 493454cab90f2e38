//! What standby coordinators (`rewind coordinate`) read: the runs executed by workers with
//! their leases, and a run's dispatched attempts, which a coordinator that takes a run over
//! adopts instead of running them again.

use rewind_dispatch::{AttemptKey, DispatchState};
use rewind_model::RunId;
use sqlx::Row;

use super::{SqlStore, q};
use crate::{Result, StoreError};

/// A running run executed by workers, and who holds its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The run.
    pub run: RunId,
    /// Its lease's holder, `host:pid:nonce` (`None`: free).
    pub owner: Option<String>,
    /// The holder's last heartbeat (kept from the last holder when free; `None`: never held).
    pub heartbeat_unix_ms: Option<i64>,
    /// The lease's epoch (bumped by every claim of the run).
    pub epoch: i64,
    /// When the run was created, Unix milliseconds (its creator's clock).
    pub started_unix_ms: i64,
}

/// A dispatched attempt of one run, as a coordinator taking the run over finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchedAttempt {
    /// Run, instance and attempt.
    pub key: AttemptKey,
    /// Queued, claimed, done or lost.
    pub state: DispatchState,
    /// Its queue.
    pub queue: String,
}

impl SqlStore {
    /// The running, real runs whose attempts execute on workers (`dispatch = 'workers'`), with
    /// their leases: what `rewind coordinate` looks at. Halted runs wait for an operator and
    /// are not listed.
    pub async fn dispatched_runs(&self) -> Result<Vec<LeaseRow>> {
        let rows = sqlx::query(
            "SELECT runs.id, runs.started_unix_ms, run_leases.owner, run_leases.heartbeat_unix_ms, \
             run_leases.epoch FROM runs JOIN run_leases ON run_leases.run_id = runs.id \
             WHERE runs.state = 'running' AND runs.dispatch = 'workers' AND runs.simulated = 0 \
             ORDER BY runs.started_unix_ms, runs.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("read runs executed by workers"))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id").map_err(q("runs.id"))?;
                let run = id
                    .parse()
                    .map_err(|_| StoreError::Corrupt { what: "runs.id", value: id.clone() })?;
                Ok(LeaseRow {
                    run,
                    owner: row.try_get("owner").map_err(q("run_leases.owner"))?,
                    heartbeat_unix_ms: row
                        .try_get("heartbeat_unix_ms")
                        .map_err(q("run_leases.heartbeat_unix_ms"))?,
                    epoch: row.try_get("epoch").map_err(q("run_leases.epoch"))?,
                    started_unix_ms: row
                        .try_get("started_unix_ms")
                        .map_err(q("runs.started_unix_ms"))?,
                })
            })
            .collect()
    }

    /// The dispatch rows of one run (any state), by instance and attempt.
    pub async fn run_dispatched(&self, run: RunId) -> Result<Vec<DispatchedAttempt>> {
        let rows = sqlx::query(
            "SELECT idx, attempt, state, queue FROM dispatch WHERE run_id = $1 \
             ORDER BY idx, attempt",
        )
        .bind(run.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(q("read a run's dispatched attempts"))?;
        rows.iter()
            .map(|row| {
                Ok(DispatchedAttempt {
                    key: AttemptKey {
                        run,
                        idx: super::u32_of(row, "idx")?,
                        attempt: super::u32_of(row, "attempt")?,
                    },
                    state: super::parse_name::<DispatchState>(row, "state")?,
                    queue: row.try_get("queue").map_err(q("dispatch.queue"))?,
                })
            })
            .collect()
    }
}
