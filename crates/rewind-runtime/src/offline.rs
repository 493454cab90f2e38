//! Cancelling a run that no process drives (it crashed, or was interrupted): the canceller takes
//! the lease and writes the cancellation itself. Its targets are free again once it ends, so
//! first no process of an interrupted attempt may still run on this host (orphans.rs): a
//! restore of the same sites started next must not race the last one's leftovers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_model::{AttemptOutcome, EventKind, RunState};
use rewind_scheduler::{Counts, State};
use rewind_store::{AttemptRecord, Batch, InstanceUpdate, NewEvent, RunEnd, Store};
use serde_json::json;

use crate::RuntimeError;
use crate::lease::{Lease, store_now_ms};
use crate::progress::Observer;
use crate::view::RunView;

/// Cancels every pending or running instance of the run held by `lease` and ends the run as
/// cancelled, in one commit, once no process of its interrupted attempts runs on this host
/// (they are waited for, then stopped; `observer` is told). Returns the final counts; an error,
/// and nothing written, if a process survived SIGKILL.
pub async fn cancel_offline<S: Store>(
    store: &S,
    lease: Lease,
    observer: &mut dyn Observer,
) -> Result<Counts, RuntimeError> {
    let result = cancel(store, &lease, observer).await;
    let released = lease.release(store).await;
    let counts = result?;
    released?;
    Ok(counts)
}

async fn cancel<S: Store>(
    store: &S,
    lease: &Lease,
    observer: &mut dyn Observer,
) -> Result<Counts, RuntimeError> {
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
    let mut batch = Batch { clock_s, heartbeat_unix_ms: store_now_ms(), ..Batch::default() };
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
        wall: wall.clone(),
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
    if !view.record.spec.simulated {
        let running = view
            .instances
            .iter()
            .enumerate()
            .filter(|&(i, _)| view.state(i) == State::Running)
            .map(|(_, row)| row.key.clone())
            .collect();
        let stopped = crate::orphans::settle(lease.run, running, clock_s, observer).await?;
        batch.events.extend(stopped.into_iter().map(|e| NewEvent { wall: wall.clone(), ..e }));
    }
    store.commit(lease.run, &lease.owner, &batch).await?;
    Ok(counts)
}
