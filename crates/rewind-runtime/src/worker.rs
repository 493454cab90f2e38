//! `rewind worker`: claims dispatched attempts of any run from its queues, runs them with the
//! same executors as a local run, heartbeats their leases and reports their outcomes (fenced by
//! the claim's epoch: a late report is recorded as stale and ignored).
//!
//! Reports go in batches: every attempt that ended by the time the worker turns to report is in
//! one transaction (one `UPDATE … FROM (VALUES …)`), and batches are at least [`REPORT_GAP`]
//! apart, so a worker makes at most 1 / [`REPORT_GAP`] notifying commits a second however many
//! attempts end (PostgreSQL's `NOTIFY` serialises notifying commits on a global lock).
//! Whether each run is still live (running, no cancel requested) is read once per batch of
//! claims and every [`LIVENESS`] for the runs it holds attempts of, in one statement each: an
//! attempt of a run that was cancelled or ended is not started, or is stopped and reported
//! cancelled.
//!
//! On SIGTERM or SIGINT it claims nothing more, lets running attempts finish within a grace
//! period, hands the rest back (queued again for another worker) and returns.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rewind_dispatch::{AttemptKey, Beat, Claimed, Completion, Session, WorkerReport, WorkerSpec};
use rewind_exec::{Outcome, Registry, Report, StopHandle, Vars};
use rewind_model::{InstanceId, Plan, RunId};
use rewind_store::{SqlStore, Store};
use tokio::task::JoinSet;

use crate::RuntimeError;
use crate::drive::Inputs;
use crate::exec::Signals;
use crate::lease::{hostname, store_now_ms};
use crate::remote::{Payload, WireReport, ms};
use crate::view::load_plan;

/// How often a worker with free slots looks for queued attempts when it has no `LISTEN`
/// connection...
const CLAIM_POLL: Duration = Duration::from_millis(100);
/// ...and when it has one (woken by `NOTIFY` otherwise).
const CLAIM_FALLBACK: Duration = Duration::from_secs(1);
/// The least time between two batches of reports (each a notifying commit on PostgreSQL):
/// at most 500 a second per worker. Under load a batch holds every report that ended meanwhile.
pub const REPORT_GAP: Duration = Duration::from_millis(2);
/// How often a worker holding attempts reads whether their runs are still live (a cancel
/// reaches its running attempts within about this long), unless its heartbeat is more often.
pub const LIVENESS: Duration = Duration::from_secs(1);

/// How a worker runs.
pub struct WorkerOptions {
    /// Its name (unique among live workers; a restart under the same name supersedes).
    pub name: String,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Most attempts it runs at once.
    pub slots: u32,
    /// The lease of each claimed attempt; heartbeats every third of it.
    pub lease: Duration,
    /// How long running attempts may take to finish after SIGTERM before they are handed back.
    pub grace: Duration,
    /// Executors.
    pub registry: Registry,
    /// What `${VAR}` reads (the worker's environment).
    pub vars: Vars,
    /// Handle SIGINT and SIGTERM.
    pub signals: bool,
}

/// What a worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Reports accepted.
    pub reported: u64,
    /// Reports refused as stale (the attempt was rescued or handed back meanwhile).
    pub stale: u64,
    /// Attempts handed back at shutdown.
    pub handed_back: u64,
}

/// A run's plan and per-step inputs, loaded once per run.
struct RunCtx {
    plan: Plan,
    inputs: Inputs,
}

/// Runs a worker until SIGTERM/SIGINT (then drains) or until another process registers its name.
pub async fn work(
    store: &SqlStore,
    url: &str,
    opts: WorkerOptions,
    note: &mut dyn FnMut(&str),
) -> Result<WorkerSummary, RuntimeError> {
    let listener = match rewind_store::DispatchListener::connect(url).await {
        Ok(l) => Some(l),
        Err(e) => {
            note(&format!("cannot LISTEN for new attempts ({e}); polling every {CLAIM_POLL:?}"));
            None
        }
    };
    if let Ok(Err(e)) = tokio::task::spawn_blocking(rewind_exec::ready_watchdog).await {
        note(&format!("the watchdog cannot start ({e}): steps fail until it can"));
    }
    let spec = WorkerSpec {
        name: opts.name.clone(),
        host: hostname(),
        queues: opts.queues.clone(),
        slots: opts.slots,
    };
    crate::lease::sync_clock(store).await?;
    let session = store.worker_register(&spec, store_now_ms()).await?;
    note(&format!(
        "worker {} (incarnation {}) serves queue(s) {} with {} slot(s)",
        session.name,
        session.incarnation,
        opts.queues.join(", "),
        opts.slots
    ));
    let mut w = Worker {
        store,
        session,
        lease_ms: ms(opts.lease),
        runs: HashMap::new(),
        set: JoinSet::new(),
        held: HashMap::new(),
        outbox: Vec::new(),
        last_report: None,
        summary: WorkerSummary::default(),
        listener,
        opts,
    };
    w.run(note).await
}

struct Worker<'s> {
    store: &'s SqlStore,
    session: Session,
    lease_ms: i64,
    runs: HashMap<RunId, Arc<RunCtx>>,
    set: JoinSet<(AttemptKey, i64, Report)>,
    /// Attempts running: their claim epoch and stop handle.
    held: HashMap<AttemptKey, (i64, StopHandle)>,
    /// Attempts ended and not yet reported.
    outbox: Vec<(AttemptKey, i64, Report)>,
    /// When the last batch of reports was sent.
    last_report: Option<tokio::time::Instant>,
    summary: WorkerSummary,
    listener: Option<rewind_store::DispatchListener>,
    opts: WorkerOptions,
}

impl Worker<'_> {
    async fn run(&mut self, note: &mut dyn FnMut(&str)) -> Result<WorkerSummary, RuntimeError> {
        let mut signals = Signals::new(self.opts.signals)?;
        let every = if self.listener.is_some() { CLAIM_FALLBACK } else { CLAIM_POLL };
        let mut claim = tokio::time::interval(every);
        // Claim at once: at start, after a wake-up, a finished attempt or a full batch.
        let mut claim_now = true;
        claim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat_every =
            Duration::from_millis(u64::try_from(self.lease_ms / 3).unwrap_or(1).max(1));
        let mut beat = tokio::time::interval(beat_every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness = tokio::time::interval(LIVENESS.min(beat_every));
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut last_beat = store_now_ms();
        loop {
            if deadline.is_some() && self.set.is_empty() {
                if !self.outbox.is_empty() {
                    self.send_reports(note).await;
                }
                break;
            }
            let free = (self.opts.slots as usize).saturating_sub(self.set.len());
            if claim_now && deadline.is_none() && free > 0 {
                let n = u32::try_from(free).unwrap_or(u32::MAX);
                let claimed = self
                    .store
                    .dispatch_claim(
                        &self.session,
                        &self.opts.queues,
                        n,
                        store_now_ms(),
                        self.lease_ms,
                    )
                    .await;
                let claimed = claimed.unwrap_or_else(|e| {
                    note(&format!("claim: {e}; trying again"));
                    Vec::new()
                });
                // A full batch: more may be queued.
                claim_now = !claimed.is_empty() && claimed.len() == free;
                self.start_batch(claimed).await;
                if !self.outbox.is_empty() {
                    self.send_reports(note).await;
                }
                continue;
            }
            let until = deadline;
            let listening = self.listener.is_some();
            tokio::select! {
                _ = claim.tick() => claim_now = true,
                woke = async { match &mut self.listener { Some(l) => l.recv().await, None => std::future::pending().await } }, if listening => {
                    if let Err(e) = woke {
                        note(&format!("LISTEN: {e}; reconnecting (polling every {CLAIM_FALLBACK:?} meanwhile)"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    claim_now = true;
                }
                Some(joined) = self.set.join_next(), if !self.set.is_empty() => {
                    self.ended(joined, note);
                    self.send_reports(note).await;
                    claim_now = true;
                }
                _ = liveness.tick(), if !self.held.is_empty() => self.stop_dead_runs(note).await,
                _ = beat.tick() => {
                    let _ = crate::lease::sync_clock(self.store).await;
                    let now = store_now_ms();
                    match self.store.worker_heartbeat(&self.session, now, self.lease_ms).await {
                        Err(e) => {
                            // The leases this worker counted on end at the last good beat plus
                            // a lease: after that the rescuer may have given them away.
                            let passed = now > last_beat + self.lease_ms;
                            note(&format!("heartbeat: {e}{}", if passed { "; the leases have passed: stopping the attempts" } else { "" }));
                            if passed {
                                for (_, stop) in self.held.values() {
                                    stop.stop();
                                }
                            }
                        }
                        Ok(Beat::Held(held)) => {
                            last_beat = now;
                            if !self.outbox.is_empty() {
                                self.send_reports(note).await;
                            }
                            for (key, (epoch, stop)) in &self.held {
                                if !held.contains(&(*key, *epoch)) {
                                    note(&format!("attempt {key}: lease lost; stopping it"));
                                    stop.stop();
                                }
                            }
                        }
                        Ok(Beat::Superseded) => {
                            note("another process registered this worker's name; stopping");
                            for (_, stop) in self.held.values() {
                                stop.stop();
                            }
                            while self.set.join_next().await.is_some() {}
                            return Err(RuntimeError::Internal(format!(
                                "worker {}: superseded by another process of that name",
                                self.session.name
                            )));
                        }
                    }
                }
                s = signals.recv() => {
                    if deadline.is_none() {
                        self.store.worker_stop(&self.session).await?;
                        note(&format!(
                            "{}: claiming nothing more; {} running attempt(s) have {} to finish, then are handed back (send it again to hand them back now)",
                            s.name(),
                            self.set.len(),
                            humantime::format_duration(self.opts.grace)
                        ));
                        deadline = Some(tokio::time::Instant::now() + self.opts.grace);
                    } else {
                        deadline = Some(tokio::time::Instant::now());
                    }
                }
                () = async { match until { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.hand_back_all(note).await?;
                    break;
                }
            }
        }
        Ok(self.summary.clone())
    }

    /// Hands back every running attempt (queued again at its next epoch, so a report of it is
    /// stale), then stops them.
    async fn hand_back_all(&mut self, note: &mut dyn FnMut(&str)) -> Result<(), RuntimeError> {
        for (key, (epoch, stop)) in &self.held {
            if self.store.dispatch_hand_back(&self.session, *key, *epoch).await? {
                self.summary.handed_back += 1;
            }
            stop.stop();
        }
        if !self.held.is_empty() {
            note(&format!("handed back {} attempt(s)", self.held.len()));
        }
        self.held.clear();
        while self.set.join_next().await.is_some() {}
        Ok(())
    }

    async fn ctx(&mut self, run: RunId) -> Result<Arc<RunCtx>, RuntimeError> {
        if let Some(c) = self.runs.get(&run) {
            return Ok(c.clone());
        }
        let rec = self.store.run(run).await?.ok_or(RuntimeError::NoSuchRun(run))?;
        let plan = load_plan(&rec)?;
        let inputs = Inputs::new(&plan, &rec, self.opts.vars.clone());
        let ctx = Arc::new(RunCtx { plan, inputs });
        self.runs.insert(run, ctx.clone());
        Ok(ctx)
    }

    /// Starts a batch of claimed attempts, after reading once whether their runs are live: an
    /// attempt of a run cancelled or over is not run but reported cancelled.
    async fn start_batch(&mut self, claimed: Vec<Claimed>) {
        if claimed.is_empty() {
            return;
        }
        let runs: Vec<RunId> =
            claimed.iter().map(|c| c.key.run).collect::<BTreeSet<_>>().into_iter().collect();
        let live = self.store.live_runs(&runs).await;
        for c in claimed {
            match &live {
                Ok(live) if live.contains(&c.key.run) => self.start(c).await,
                Ok(_) => {
                    let report = Report {
                        outcome: Outcome::Cancelled,
                        ..Report::failed("the run is cancelled or over; not run", false)
                    };
                    self.refuse(c, report);
                }
                Err(e) => self.refuse(c, Report::failed(format!("worker: {e}"), true)),
            }
        }
    }

    /// An attempt claimed and not run: reported with `report` in the next batch.
    fn refuse(&mut self, c: Claimed, report: Report) {
        let (stop, _) = StopHandle::new();
        self.held.insert(c.key, (c.epoch, stop));
        self.outbox.push((c.key, c.epoch, report));
    }

    /// Starts a claimed attempt of a live run on its own task (or ends it at once when it
    /// cannot run).
    async fn start(&mut self, c: Claimed) {
        let key = c.key;
        let ctx = match self.ctx(key.run).await {
            Ok(ctx) => ctx,
            Err(e) => return self.refuse(c, Report::failed(format!("worker: {e}"), true)),
        };
        let payload: Payload = match serde_json::from_str(&c.payload) {
            Ok(p) => p,
            Err(e) => {
                let report = Report::failed(format!("worker: unreadable payload: {e}"), false);
                return self.refuse(c, report);
            }
        };
        if key.idx as usize >= ctx.plan.len() {
            let report =
                Report::failed(format!("worker: no instance {} in the run", key.idx), false);
            return self.refuse(c, report);
        }
        let (stop, stop_signal) = StopHandle::new();
        self.held.insert(key, (c.epoch, stop));
        let id = InstanceId::new(key.idx as usize);
        let attempt = ctx.inputs.remote_attempt(&ctx.plan, id, key.attempt, payload.needs);
        let kind = attempt.action.kind();
        let fut = self.opts.registry.run(attempt, stop_signal);
        let epoch = c.epoch;
        self.set.spawn(async move {
            let report = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(r) => r,
                Err(_) => Report::failed(
                    format!(
                        "the `{kind}` executor panicked; this is a bug in rewind (not retried)"
                    ),
                    false,
                ),
            };
            (key, epoch, report)
        });
    }

    /// An attempt's task ended: its report waits in the outbox.
    fn ended(
        &mut self,
        joined: Result<(AttemptKey, i64, Report), tokio::task::JoinError>,
        note: &mut dyn FnMut(&str),
    ) {
        match joined {
            Ok(ended) => self.outbox.push(ended),
            Err(e) => note(&format!("an attempt's task was lost: {e}")),
        }
    }

    /// Sends the outbox as one batch: at least [`REPORT_GAP`] after the last batch, with every
    /// attempt that ended meanwhile. A report of an attempt handed back is not sent.
    async fn send_reports(&mut self, note: &mut dyn FnMut(&str)) {
        if let Some(last) = self.last_report {
            let due = last + REPORT_GAP;
            if tokio::time::Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
        }
        while let Some(joined) = self.set.try_join_next() {
            self.ended(joined, note);
        }
        // An attempt stays held (its lease renewed by the heartbeat) until its report is
        // delivered: a report that did not go is sent again, with the next batch or at the next
        // heartbeat, never dropped while its lease is renewed (that would leave the attempt
        // claimed for as long as this worker lives).
        self.outbox.retain(|(key, _, _)| self.held.contains_key(key)); // handed back: not sent
        if self.outbox.is_empty() {
            return;
        }
        let batch: Vec<WorkerReport> = self
            .outbox
            .iter()
            .map(|(key, epoch, report)| WorkerReport {
                key: *key,
                epoch: *epoch,
                outcome: serde_json::to_string(&WireReport::of(report)).unwrap_or_else(|e| {
                    format!(
                        "{{\"outcome\":\"failed\",\"retryable\":true,\"error\":{:?}}}",
                        format!("the worker could not encode its report: {e}")
                    )
                }),
            })
            .collect();
        self.last_report = Some(tokio::time::Instant::now());
        match self.store.dispatch_complete_many(&self.session, &batch, store_now_ms()).await {
            Err(e) => note(&format!(
                "{} report(s) not delivered ({e}); sent again with the next batch or heartbeat",
                batch.len()
            )),
            Ok(answers) => {
                self.outbox.clear();
                for r in &batch {
                    self.held.remove(&r.key);
                }
                for (r, answer) in batch.iter().zip(answers) {
                    match answer {
                        Completion::Accepted | Completion::AlreadyRecorded => {
                            self.summary.reported += 1;
                        }
                        Completion::Stale { current } => {
                            self.summary.stale += 1;
                            let now = current
                                .map_or("gone".to_owned(), |(s, e)| format!("{s} at epoch {e}"));
                            note(&format!(
                                "attempt {}: report refused as stale (claimed at epoch {}; now {now})",
                                r.key, r.epoch
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Reads once whether the runs of the attempts held are live, and stops the attempts of
    /// those cancelled or over (their executors end them cancelled; the report goes as usual).
    async fn stop_dead_runs(&mut self, note: &mut dyn FnMut(&str)) {
        let runs: Vec<RunId> =
            self.held.keys().map(|k| k.run).collect::<BTreeSet<_>>().into_iter().collect();
        let live = match self.store.live_runs(&runs).await {
            Ok(live) => live,
            Err(e) => return note(&format!("reading whether runs are live: {e}")),
        };
        for run in runs.iter().filter(|r| !live.contains(r)) {
            let mut n = 0;
            for (_, stop) in self.held.iter().filter(|(k, _)| k.run == *run).map(|(_, v)| v) {
                stop.stop();
                n += 1;
            }
            // Said once per run: an executor may take a while to stop.
            if self.runs.remove(run).is_some() {
                note(&format!("run {run} is cancelled or over: stopping its {n} attempt(s)"));
            }
        }
    }
}
