//! Server-sent events. One poller per run, shared by every client of that run: a
//! `tokio::sync::watch` created on the first subscriber and stopped when the last one leaves.
//! Every [`POLL`] it reads the run's marker (one row); only when that changed does it read the
//! run again (through the cache the JSON endpoints share), and after a read that took long (a
//! large run) it rests [`RELOAD_REST`] times as long before the next one. Likewise one poller for the runs list.
//!
//! `GET /api/v1/runs/{id}/stream`: `progress` (the run's summary, as `GET /api/v1/runs/{id}`
//! without `failures`), then `targets` (`{"targets": [{target, state, restored_at_s}]}`: every
//! target in the first, then those whose state changed), on connect and on every change;
//! `end` once the run is finished (succeeded, failed or cancelled), and the stream closes.
//! `GET /api/v1/stream`: `runs` (`{"runs": [...]}`, as `GET /api/v1/runs`) on connect and on
//! every change. Keep-alive comments every 15 seconds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::stream::{self, StreamExt};
use rewind_model::RunId;
use rewind_store::Store;
use serde_json::json;
use tokio::sync::watch;

use super::view::{Key, RunRow, RunSummary, TargetRow};
use super::{ApiError, ApiResult, run_id, view};
use crate::AppState;

/// How often a poller reads the store.
const POLL: Duration = Duration::from_millis(500);
/// After reading a changed run, a poller waits this many times as long as the read took before
/// it reads again.
const RELOAD_REST: u32 = 4;
/// How often the runs-list poller reads the store.
const POLL_LIST: Duration = Duration::from_secs(1);

/// One version of a run, as its stream shows it.
#[derive(Debug)]
struct Snapshot {
    summary: RunSummary,
    targets: Arc<Vec<TargetRow>>,
    finished: bool,
}

/// A poller, alive while a client holds it.
struct Feed<T> {
    rx: watch::Receiver<Option<Arc<T>>>,
    task: tokio::task::AbortHandle,
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The live pollers.
#[derive(Default)]
pub(crate) struct Feeds {
    runs: Mutex<HashMap<RunId, Weak<Feed<Snapshot>>>>,
    list: Mutex<Weak<Feed<Vec<RunRow>>>>,
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> ApiError {
    ApiError::Internal("a feed lock was poisoned".into())
}

impl AppState {
    fn run_feed(&self, id: RunId) -> ApiResult<Arc<Feed<Snapshot>>> {
        let mut feeds = self.feeds.runs.lock().map_err(poisoned)?;
        feeds.retain(|_, f| f.strong_count() > 0);
        if let Some(f) = feeds.get(&id).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(poll_run(self.clone(), id, tx)).abort_handle();
        let f = Arc::new(Feed { rx, task });
        feeds.insert(id, Arc::downgrade(&f));
        Ok(f)
    }

    fn list_feed(&self) -> ApiResult<Arc<Feed<Vec<RunRow>>>> {
        let mut list = self.feeds.list.lock().map_err(poisoned)?;
        if let Some(f) = list.upgrade() {
            return Ok(f);
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(poll_list(self.clone(), tx)).abort_handle();
        let f = Arc::new(Feed { rx, task });
        *list = Arc::downgrade(&f);
        Ok(f)
    }
}

/// Reads the run every [`POLL`]; publishes a snapshot when it changed; stops after a finished
/// one (or when the run is gone).
async fn poll_run(s: AppState, id: RunId, tx: watch::Sender<Option<Arc<Snapshot>>>) {
    let mut last: Option<(Key, &'static str, Option<String>)> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let marker = match s.store.run_marker(id).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                s.log(&format!("rewind serve: run {id}: {e}"));
                continue;
            }
        };
        // What the stream shows besides the data: the shown state and the driver, which change
        // with the heartbeat's age alone.
        let key = Key::of_marker(&marker);
        let driven = rewind_runtime::driven_by(marker.owner.as_deref(), marker.heartbeat_unix_ms);
        let shown = rewind_runtime::shown(marker.state, driven);
        let seen = (key, shown, marker.owner.clone().filter(|_| driven));
        if last.as_ref() == Some(&seen) {
            continue;
        }
        let reading = std::time::Instant::now();
        let snap = match s.run_data(id).await {
            Ok((rec, c)) => Snapshot {
                finished: !rec.state.holds_targets(),
                summary: c.summary(&rec),
                targets: Arc::new(c.targets.clone()),
            },
            Err(ApiError::NotFound(_)) => return,
            Err(e) => {
                s.log(&format!("rewind serve: run {id}: {e}"));
                continue;
            }
        };
        let finished = snap.finished;
        last = Some(seen);
        if tx.send(Some(Arc::new(snap))).is_err() || finished {
            return;
        }
        // A large run changing all the time would be re-read back to back: rest RELOAD_REST
        // times as long as the read took, so the poller takes at most a fifth of a core from
        // the process driving the run (and a 27,000-instance run updates about every 2 s).
        let took = reading.elapsed();
        if took * (RELOAD_REST + 1) > POLL {
            tokio::time::sleep(took * RELOAD_REST).await;
            tick.reset();
        }
    }
}

/// Reads the runs list every [`POLL_LIST`]; publishes it when it changed.
async fn poll_list(s: AppState, tx: watch::Sender<Option<Arc<Vec<RunRow>>>>) {
    let mut tick = tokio::time::interval(POLL_LIST);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<RunRow>> = None;
    loop {
        tick.tick().await;
        let reading = std::time::Instant::now();
        let rows = s.run_rows().await;
        let took = reading.elapsed();
        match rows {
            Ok(rows) if last.as_ref() != Some(&rows) => {
                last = Some(rows.clone());
                if tx.send(Some(Arc::new(rows))).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => s.log(&format!("rewind serve: runs list: {e}")),
        }
        if took * (RELOAD_REST + 1) > POLL_LIST {
            tokio::time::sleep(took * RELOAD_REST).await;
            tick.reset();
        }
    }
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// What one client of a run's stream has been sent.
struct Client {
    _feed: Arc<Feed<Snapshot>>,
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    last: Option<Arc<Snapshot>>,
    done: bool,
    stop: watch::Receiver<bool>,
}

/// The events for `snap`, given what was sent before.
fn events_for(snap: &Snapshot, sent: Option<&[TargetRow]>) -> Vec<Event> {
    let mut out = vec![event("progress", &snap.summary)];
    let changed: Vec<_> = snap
        .targets
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            sent.and_then(|s| s.get(*i))
                .is_none_or(|p| p.state != t.state || p.restored_at_s != t.restored_at_s)
        })
        .map(|(_, t)| json!({ "target": t.target, "state": t.state, "restored_at_s": t.restored_at_s }))
        .collect();
    if sent.is_none() || !changed.is_empty() {
        out.push(event("targets", &json!({ "targets": changed })));
    }
    if snap.finished {
        out.push(event(
            "end",
            &json!({ "run_id": snap.summary.row.run_id, "state": snap.summary.row.state }),
        ));
    }
    out
}

/// `GET /api/v1/runs/{id}/stream`
pub(crate) async fn run_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = run_id(&id)?;
    // An unknown run is a 404 now, not an empty stream.
    s.store.run_marker(id).await?.ok_or_else(|| view::no_run(id))?;
    let feed = s.run_feed(id)?;
    let client =
        Client { rx: feed.rx.clone(), _feed: feed, last: None, done: false, stop: s.stop.clone() };
    let events = stream::unfold(client, |mut c| async move {
        if c.done {
            return None;
        }
        let snap = loop {
            let current = c.rx.borrow_and_update().clone();
            if let Some(snap) = current
                && c.last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &snap))
            {
                break snap;
            }
            tokio::select! {
                r = c.rx.changed() => if r.is_err() { return None },
                _ = c.stop.wait_for(|s| *s) => return None,
            }
        };
        let out = events_for(&snap, c.last.as_ref().map(|l| l.targets.as_slice()));
        c.done = snap.finished;
        c.last = Some(snap);
        Some((stream::iter(out.into_iter().map(Ok)), c))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /api/v1/stream`
pub(crate) async fn runs_stream(
    State(s): State<AppState>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let feed = s.list_feed()?;
    let rx = feed.rx.clone();
    let stop = s.stop.clone();
    let events =
        stream::unfold((feed, rx, stop, false), |(feed, mut rx, mut stop, started)| async move {
            if started {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return None },
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
            let rows = loop {
                if let Some(rows) = rx.borrow_and_update().clone() {
                    break rows;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return None },
                    _ = stop.wait_for(|s| *s) => return None,
                }
            };
            let e = event("runs", &json!({ "runs": *rows }));
            Some((Ok(e), (feed, rx, stop, true)))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
