//! Cancelling a run that no process drives (it crashed, or was interrupted): the canceller takes
//! the lease and writes the cancellation itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_model::{AttemptOutcome, EventKind, RunState};
use rewind_scheduler::{Counts, State};
use rewind_store::{AttemptRecord, Batch, InstanceUpdate, NewEvent, RunEnd, Store};
use serde_json::json;

use crate::RuntimeError;
use crate::lease::{Lease, now_unix_ms};
use crate::view::RunView;

/// Cancels every pending or running instance of the run held by `lease` and ends the run as
/// cancelled, in one commit. Returns the final counts.
pub async fn cancel_offline<S: Store>(store: &S, lease: Lease) -> Result<Counts, RuntimeError> {
    let result = cancel(store, &lease).await;
    let released = lease.release(store).await;
    let counts = result?;
    released?;
    Ok(counts)
}

async fn cancel<S: Store>(store: &S, lease: &Lease) -> Result<Counts, RuntimeError> {
    let view = RunView::load(store, lease.run).await?;
    if !view.record.state.holds_targets() {
        return Ok(view.counts());
    }
    let clock_s = if view.record.spec.simulated {
        view.record.clock_s
    } else {
        let started = UNIX_EPOCH
            + Duration::from_millis(u64::try_from(view.record.spec.started_unix_ms).unwrap_or(0));
        SystemTime::now().duration_since(started).unwrap_or(Duration::ZERO).as_secs_f64()
    };
    let wall = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let mut batch = Batch { clock_s, heartbeat_unix_ms: now_unix_ms(), ..Batch::default() };
    let mut counts = Counts::default();
    for (i, row) in view.instances.iter().enumerate() {
        let st = view.state(i);
        if !matches!(st, State::Pending | State::Running) {
            counts.add(st);
            continue;
        }
        counts.add(State::Cancelled);
        if st == State::Running
            && let Some(a) =
                view.attempts.iter().rev().find(|a| a.idx == row.idx && a.ended_s.is_none())
        {
            batch.attempts.push(AttemptRecord {
                ended_s: Some(clock_s),
                outcome: Some(AttemptOutcome::Cancelled),
                error: Some("cancelled while no orchestrator was running".into()),
                ..a.clone()
            });
        }
        batch.instances.push(InstanceUpdate {
            idx: row.idx,
            state: State::Cancelled,
            attempts: row.attempts,
            failures: row.failures,
            retry_at_s: None,
            finished_s: Some(clock_s),
            output: None,
            error: None,
        });
        batch.events.push(NewEvent {
            at_s: clock_s,
            wall: wall.clone(),
            kind: EventKind::InstanceCancelled,
            key: Some(row.key.clone()),
            detail: None,
        });
    }
    batch.events.push(NewEvent {
        at_s: clock_s,
        wall,
        kind: EventKind::RunFinished,
        key: None,
        detail: Some(
            json!({"state": RunState::Cancelled, "counts": counts, "clock_s": clock_s}).to_string(),
        ),
    });
    batch.end = Some(RunEnd {
        state: RunState::Cancelled,
        finished_s: clock_s,
        reason: Some(
            "cancelled by an operator (rewind cancel) while no process was driving it".into(),
        ),
    });
    store.commit(lease.run, &lease.owner, &batch).await?;
    Ok(counts)
}
