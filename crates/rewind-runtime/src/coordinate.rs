//! Standby coordinators (`rewind coordinate`, issue 17): any number of processes watch a
//! PostgreSQL store for runs executed by workers whose run lease is free or whose holder is
//! dead, take each such run ([`Lease::acquire`], whose claim bumps the lease's epoch: every
//! write of the previous holder is refused from then on) and drive it exactly as
//! `resume --dispatch workers` would, several runs at once. Exactly one drives each run: the
//! claim is a compare-and-set on the holder and heartbeat it judged dead.
//!
//! A run executed locally is never taken: its steps run on the host that started it.
//!
//! Stopping (SIGTERM/SIGINT) hands every run off: what happened is committed, the attempts on
//! workers run on, the leases are released, and the next coordinator adopts those attempts.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rewind_exec::{Registry, Vars};
use rewind_model::RunId;
use rewind_store::SqlStore;

use crate::drive::{DriveOptions, Ended, StopReason, Summary, drive_dispatched};
use crate::exec::{Signal, Signals};
use crate::lease::{Lease, is_stale, run_lease, store_now_ms, sync_clock};
use crate::progress::{AttemptEnd, DriveStart, Observer, Progress};
use crate::{RuntimeError, remote};

/// A run this coordinator could not drive is looked at again after this many looks.
const PAUSE_LOOKS: u32 = 20;

/// How a coordinator runs.
pub struct CoordinateOptions<'o> {
    /// Executors (a drive checks that the run's actions exist, as `resume` does).
    pub registry: Registry,
    /// What `${VAR}` reads.
    pub vars: Vars,
    /// Handle SIGINT and SIGTERM: hand every run off and return.
    pub signals: bool,
    /// The observer of the drive of a run this coordinator takes.
    pub observer: &'o mut dyn FnMut(RunId) -> Box<dyn Observer>,
    /// What the coordinator does (a run taken, ended, handed off, fenced), one line each.
    pub say: &'o mut dyn FnMut(&str),
    /// Stop looking (embedders, tests): asked before each look; `true` hands every run off.
    pub stop: Arc<AtomicBool>,
}

/// What a coordinator did before it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinateSummary {
    /// Runs it took.
    pub taken: usize,
    /// Runs it drove to their end (succeeded, failed, cancelled or halted).
    pub ended: usize,
    /// Runs it handed off when it stopped.
    pub handed_off: usize,
    /// Runs another coordinator took from it (fenced).
    pub fenced: usize,
    /// The signal that stopped it, if one did.
    pub signal: Option<Signal>,
}

type DriveFuture<'a> = Pin<Box<dyn Future<Output = (RunId, Result<Summary, RuntimeError>)> + 'a>>;

/// Watches `store` and drives the runs executed by workers that no live process drives, until
/// a signal (with `opts.signals`) or `opts.stop`. Returns what it did; an error only when the
/// store cannot be read at the start.
pub async fn coordinate(
    store: &SqlStore,
    opts: CoordinateOptions<'_>,
) -> Result<CoordinateSummary, RuntimeError> {
    let CoordinateOptions { registry, vars, signals, observer, say, stop } = opts;
    let lease = run_lease();
    let every = (lease / 4).max(Duration::from_millis(20));
    sync_clock(store).await?;
    say(&format!(
        "coordinator {} watches runs executed by workers (run lease {} ms, a look every {} ms)",
        crate::lease::me(),
        lease.as_millis(),
        every.as_millis()
    ));
    let hand_off = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new(signals)?;
    let mut look = tokio::time::interval(every);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drives: FuturesUnordered<DriveFuture<'_>> = FuturesUnordered::new();
    let mut driving: HashSet<RunId> = HashSet::new();
    let mut paused: HashMap<RunId, Instant> = HashMap::new();
    let mut summary = CoordinateSummary::default();
    let mut stopping = false;
    loop {
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
            hand_off.store(true, Ordering::Relaxed);
            say(&format!("stop requested: handing {} run(s) off", driving.len()));
        }
        if stopping && drives.is_empty() {
            break;
        }
        tokio::select! {
            _ = look.tick(), if !stopping => {
                let found = match candidates(store, &driving, &mut paused).await {
                    Ok(found) => found,
                    Err(e) => {
                        say(&format!("cannot read the store: {e}; looking again in {} ms", every.as_millis()));
                        continue;
                    }
                };
                for (run, last_beat) in found {
                    let (lease, _) = match Lease::acquire(store, run).await {
                        Ok(taken) => taken,
                        // Another coordinator was faster, or the owner heartbeat in between.
                        Err(RuntimeError::Busy { .. }) => continue,
                        Err(e) => {
                            say(&format!("run {run}: cannot take it: {e}"));
                            paused.insert(run, Instant::now() + every * PAUSE_LOOKS);
                            continue;
                        }
                    };
                    let at = store_now_ms();
                    say(&match (&lease.took_over, last_beat) {
                        (Some(prev), Some(beat)) => format!(
                            "took run {run} at {at} (store clock) from dead owner {prev}, {} ms after its last heartbeat",
                            at - beat
                        ),
                        (Some(prev), None) => format!("took run {run} at {at} (store clock) from dead owner {prev}"),
                        (None, _) => format!("took run {run} at {at} (store clock); its lease was free"),
                    });
                    summary.taken += 1;
                    driving.insert(run);
                    let obs = HandOff { inner: observer(run), hand_off: hand_off.clone() };
                    let (registry, vars) = (registry.clone(), vars.clone());
                    drives.push(Box::pin(async move {
                        let mut obs = obs;
                        let opts = DriveOptions {
                            registry,
                            observer: &mut obs,
                            signals: false,
                            progress_every: Duration::from_secs(5),
                            tick: Duration::from_secs(1),
                            vars,
                        };
                        (run, drive_dispatched(store, lease, opts).await)
                    }));
                }
            }
            Some((run, result)) = drives.next(), if !drives.is_empty() => {
                driving.remove(&run);
                match result {
                    Ok(s) if s.ended == Ended::Interrupted(StopReason::HandOff) => {
                        summary.handed_off += 1;
                        say(&format!("run {run}: handed off; its lease is free for another coordinator"));
                    }
                    Ok(s) => {
                        let state = match s.ended {
                            Ended::Succeeded => "succeeded".to_owned(),
                            Ended::Failed => "failed".to_owned(),
                            Ended::Cancelled => "cancelled".to_owned(),
                            Ended::Halted => "halted".to_owned(),
                            Ended::Interrupted(reason) => format!("interrupted ({})", reason.name()),
                        };
                        if matches!(s.ended, Ended::Interrupted(_)) {
                            paused.insert(run, Instant::now() + every * PAUSE_LOOKS);
                        } else {
                            summary.ended += 1;
                        }
                        say(&format!("run {run} ended state {state}"));
                    }
                    Err(e) if e.is_fenced() => {
                        summary.fenced += 1;
                        say(&format!("run {run}: fenced: {e}; stopped driving it at once"));
                    }
                    Err(e) => {
                        paused.insert(run, Instant::now() + every * PAUSE_LOOKS);
                        say(&format!("run {run}: the drive failed: {e}; it is looked at again later"));
                    }
                }
            }
            sig = signals.recv(), if !stopping => {
                stopping = true;
                summary.signal = Some(sig);
                hand_off.store(true, Ordering::Relaxed);
                say(&format!("{}: handing {} run(s) off", sig.name(), driving.len()));
            }
        }
    }
    Ok(summary)
}

/// The runs to take now, with their holders' last heartbeat: executed by workers, not driven by
/// this process, not paused, and free, held by a dead owner (judged on the store's clock) or
/// still held by this process after a drive that failed. A
/// free run that was never held is left to its creator (`run` takes it right after creating it)
/// for a lease.
async fn candidates(
    store: &SqlStore,
    driving: &HashSet<RunId>,
    paused: &mut HashMap<RunId, Instant>,
) -> Result<Vec<(RunId, Option<i64>)>, RuntimeError> {
    sync_clock(store).await?;
    let rows = store.dispatched_runs().await?;
    let now = store_now_ms();
    let lease_ms = remote::ms(run_lease());
    paused.retain(|_, until| *until > Instant::now());
    let mut out = Vec::new();
    for row in rows {
        if driving.contains(&row.run) || paused.contains_key(&row.run) {
            continue;
        }
        let take = match &row.owner {
            None => row.heartbeat_unix_ms.is_some() || now - row.started_unix_ms > lease_ms,
            // Its own, not driven: a drive of it failed and could not release the lease (the
            // store was unreachable); no other process may take it while this one lives.
            Some(owner) if owner == crate::lease::me() => true,
            Some(owner) => is_stale(owner, row.heartbeat_unix_ms, now),
        };
        if take {
            out.push((row.run, row.heartbeat_unix_ms));
        }
    }
    Ok(out)
}

/// A drive's observer that also answers [`Observer::hand_off_requested`] from the
/// coordinator's flag.
struct HandOff {
    inner: Box<dyn Observer>,
    hand_off: Arc<AtomicBool>,
}

impl Observer for HandOff {
    fn progress(&mut self, p: &Progress) {
        self.inner.progress(p);
    }
    fn failure(&mut self, key: &str, attempt: u32, error: &str, retry_in: Option<Duration>) {
        self.inner.failure(key, attempt, error, retry_in);
    }
    fn note(&mut self, message: &str) {
        self.inner.note(message);
    }
    fn stop_requested(&mut self) -> bool {
        self.inner.stop_requested()
    }
    fn hand_off_requested(&mut self) -> bool {
        self.hand_off.load(Ordering::Relaxed) || self.inner.hand_off_requested()
    }
    fn drive_started(&mut self, drive: &DriveStart<'_>) {
        self.inner.drive_started(drive);
    }
    fn attempt_ended(&mut self, attempt: &AttemptEnd<'_>) {
        self.inner.attempt_ended(attempt);
    }
}
