//! The registered workers as `status`, `status --json`, the JSON API and the board show them:
//! name, host, queues, slots, last heartbeat, attempts held and a state: `live`, `stopping`
//! (draining after SIGTERM) or `gone` (no heartbeat for three lease periods). One rule for all
//! of them, here.

use std::time::Duration;

use rewind_dispatch::WorkerRow;
use rewind_store::SqlStore;
use serde::Serialize;

use crate::RuntimeError;

/// How many lease periods without a heartbeat make a worker `gone`.
pub const GONE_AFTER_LEASES: i64 = 3;

/// A worker's state as shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Heartbeating, claiming.
    Live,
    /// Heartbeating, claiming nothing more (SIGTERM: it drains, then exits).
    Stopping,
    /// No heartbeat for [`GONE_AFTER_LEASES`] lease periods: killed, cut off or exited.
    Gone,
}

impl WorkerState {
    /// The state of `w` at `now_ms` (Unix ms) with leases of `lease`.
    pub fn of(w: &WorkerRow, now_ms: i64, lease: Duration) -> Self {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        if now_ms - w.heartbeat_unix_ms > lease_ms.saturating_mul(GONE_AFTER_LEASES) {
            Self::Gone
        } else if w.stopping {
            Self::Stopping
        } else {
            Self::Live
        }
    }

    /// `live`, `stopping` or `gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Stopping => "stopping",
            Self::Gone => "gone",
        }
    }
}

/// One worker as shown (`GET /api/v1/workers`, `status --json`'s `workers`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerView {
    /// Its name (`--name`, default `host:pid`).
    pub name: String,
    /// The incarnation of that name now registered (a restart under the name is the next).
    pub incarnation: i64,
    /// The host it runs on.
    pub host: String,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Most attempts it runs at once.
    pub slots: u32,
    /// `live`, `stopping` or `gone`.
    pub state: WorkerState,
    /// Attempts this incarnation holds now (claimed, not yet reported).
    pub attempts_held: u64,
    /// When this incarnation registered, Unix ms.
    pub started_unix_ms: i64,
    /// Its last heartbeat, Unix ms.
    pub heartbeat_unix_ms: i64,
    /// Seconds since its last heartbeat (0 when the heartbeat is ahead of this host's clock).
    pub heartbeat_age_s: f64,
}

/// `rows` with the attempts each holds (`held`: worker, incarnation, count, as
/// [`SqlStore::worker_attempts_held`] answers) and their state at `now_ms`, by name.
pub fn worker_views(
    rows: Vec<WorkerRow>,
    held: &[(String, i64, u64)],
    now_ms: i64,
    lease: Duration,
) -> Vec<WorkerView> {
    let mut out: Vec<WorkerView> = rows
        .into_iter()
        .map(|w| {
            let state = WorkerState::of(&w, now_ms, lease);
            let attempts_held = held
                .iter()
                .find(|(name, inc, _)| *name == w.name && *inc == w.incarnation)
                .map_or(0, |h| h.2);
            let age_ms = (now_ms - w.heartbeat_unix_ms).max(0);
            WorkerView {
                state,
                attempts_held,
                heartbeat_age_s: age_ms as f64 / 1000.0,
                name: w.name,
                incarnation: w.incarnation,
                host: w.host,
                queues: w.queues,
                slots: w.slots,
                started_unix_ms: w.started_unix_ms,
                heartbeat_unix_ms: w.heartbeat_unix_ms,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The registered workers of `store` as shown now, with this process's lease period
/// ([`crate::dispatch_lease`]).
pub async fn workers_shown(store: &SqlStore) -> Result<Vec<WorkerView>, RuntimeError> {
    let rows = store.workers().await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let held = store.worker_attempts_held().await?;
    // Heartbeats are the workers' readings of the store's clock: judged on it, not this host's.
    crate::lease::sync_clock(store).await?;
    Ok(worker_views(rows, &held, crate::lease::store_now_ms(), crate::dispatch_lease()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const NOW: i64 = 1_700_000_000_000;

    fn row(name: &str, incarnation: i64, heartbeat_ago_ms: i64, stopping: bool) -> WorkerRow {
        WorkerRow {
            name: name.into(),
            incarnation,
            host: format!("{name}-host"),
            queues: vec!["default".into()],
            slots: 4,
            started_unix_ms: NOW - 60_000,
            heartbeat_unix_ms: NOW - heartbeat_ago_ms,
            stopping,
        }
    }

    #[test]
    fn a_worker_is_gone_after_three_leases_without_a_heartbeat_whatever_it_said() {
        let at = |ago, stopping| WorkerState::of(&row("w", 1, ago, stopping), NOW, LEASE);
        assert_eq!(at(0, false), WorkerState::Live);
        assert_eq!(at(90_000, false), WorkerState::Live, "exactly three leases: still live");
        assert_eq!(at(90_001, false), WorkerState::Gone);
        assert_eq!(at(1_000, true), WorkerState::Stopping);
        assert_eq!(at(90_001, true), WorkerState::Gone, "a draining worker that died is gone");
        assert_eq!(at(-5_000, false), WorkerState::Live, "a clock ahead is not gone");
    }

    #[test]
    fn attempts_held_count_only_for_the_current_incarnation() {
        let rows = vec![row("b", 1, 0, false), row("a", 2, 0, false), row("c", 1, 100_000, false)];
        let held = [("a".to_owned(), 1, 5), ("a".to_owned(), 2, 2), ("c".to_owned(), 1, 1)];
        let v = worker_views(rows, &held, NOW, LEASE);
        let names: Vec<_> = v.iter().map(|w| (w.name.as_str(), w.attempts_held, w.state)).collect();
        assert_eq!(
            names,
            [("a", 2, WorkerState::Live), ("b", 0, WorkerState::Live), ("c", 1, WorkerState::Gone)]
        );
        let json = serde_json::to_value(&v[2]).unwrap();
        assert_eq!(json["state"], "gone");
        assert_eq!(json["heartbeat_age_s"], 100.0);
        assert_eq!(json["queues"], serde_json::json!(["default"]));
    }
}
