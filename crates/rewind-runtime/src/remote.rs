//! Execution by workers (issue 17): the coordinator side (`run --dispatch workers`) and the
//! wire format both sides share.
//!
//! Starting an attempt writes a `dispatch` row (after the attempt's start is durable, like a local
//! start); its end comes back as a `done` row (the worker's report) or a `lost` one (its lease
//! expired: the attempt ends interrupted and runs again). The coordinator reads the ended rows
//! when a worker's batch of reports wakes it (`LISTEN` on `rewind_store::DONE_CHANNEL`), or at the
//! latest every [`POLL_FALLBACK`] ([`POLL`] without a `LISTEN` connection); it runs the rescuer
//! every quarter lease. Ended rows are forgotten (one fenced statement) once the outcomes they
//! carried are committed: a coordinator that dies before leaves them to the next one, which
//! adopts them. The coordinator's dispatch
//! writes carry its run-lease epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rewind_dispatch::{AttemptKey, DispatchState, Fence, NewDispatch};
use rewind_exec::{Attempt, Outcome, Report};
use rewind_model::{InstanceId, RunId, StepId, Template};
use rewind_store::SqlStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RuntimeError;
use crate::exec::{Event, Signals};
use crate::lease::store_now_ms;

/// The queue of steps without `queue`.
pub const DEFAULT_QUEUE: &str = "default";

/// How often the coordinator looks for ended attempts without a `LISTEN` connection...
const POLL: Duration = Duration::from_millis(50);
/// ...and with one (woken by the workers' `NOTIFY` otherwise).
const POLL_FALLBACK: Duration = Duration::from_millis(500);
/// How often it looks whether each queue it waits on has a live worker.
const WORKER_CHECK: Duration = Duration::from_secs(2);

/// The lease of a claimed attempt: `REWIND_LEASE_MS` (milliseconds, for tests), else 30 s.
pub fn dispatch_lease() -> Duration {
    std::env::var("REWIND_LEASE_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(Duration::from_secs(30), Duration::from_millis)
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a worker needs besides the run's stored snapshot to run an attempt exactly as the
/// coordinator would: the outputs of the dependencies its templates read.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// Per dependency step: its instance's output (`None`: skipped by `when`).
    pub needs: BTreeMap<StepId, Option<Value>>,
}

/// An attempt's report as a worker sends it (`dispatch.outcome`).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireReport {
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: String,
    /// For `failed`: whether the retry policy applies.
    #[serde(default)]
    pub retryable: bool,
    /// The output, on success.
    #[serde(default)]
    pub output: Option<Value>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// Exit code, for commands.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Tail of stdout.
    #[serde(default)]
    pub stdout_tail: String,
    /// Tail of stderr.
    #[serde(default)]
    pub stderr_tail: String,
}

impl WireReport {
    /// The wire form of a report.
    pub fn of(r: &Report) -> Self {
        let (outcome, retryable) = match r.outcome {
            Outcome::Succeeded => ("succeeded", false),
            Outcome::Failed { retryable } => ("failed", retryable),
            Outcome::Cancelled => ("cancelled", false),
        };
        Self {
            outcome: outcome.to_owned(),
            retryable,
            output: r.output.clone(),
            error: r.error.clone(),
            exit_code: r.exit_code,
            stdout_tail: r.stdout_tail.clone(),
            stderr_tail: r.stderr_tail.clone(),
        }
    }

    /// Back to a report; an unreadable one is a failed attempt that may be retried.
    pub fn parse(text: Option<&str>) -> Report {
        let Some(w) = text.and_then(|t| serde_json::from_str::<Self>(t).ok()) else {
            return Report::failed(
                format!("the worker's report cannot be read: {}", text.unwrap_or("(none)")),
                true,
            );
        };
        let outcome = match w.outcome.as_str() {
            "succeeded" => Outcome::Succeeded,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed { retryable: w.retryable },
        };
        Report {
            outcome,
            output: w.output,
            error: w.error,
            exit_code: w.exit_code,
            stdout_tail: w.stdout_tail,
            stderr_tail: w.stderr_tail,
        }
    }
}

/// The payload of an attempt built by the coordinator.
pub(crate) fn payload_of(a: &Attempt) -> String {
    let needs = a.needs.iter().map(|(k, v)| (k.clone(), v.as_deref().cloned())).collect();
    serde_json::to_string(&Payload { needs }).unwrap_or_else(|_| "{\"needs\":{}}".to_owned())
}

/// The coordinator's executor: attempts run on workers.
pub(crate) struct RemoteExec {
    origin: SystemTime,
    store: SqlStore,
    fence: Fence,
    lease: Duration,
    /// Instance → (attempt, queue) of attempts dispatched and not ended.
    inflight: HashMap<u32, (u32, String)>,
    pending: Vec<NewDispatch>,
    ready: Vec<Event>,
    poll: tokio::time::Interval,
    tick: tokio::time::Interval,
    last_worker_check: Option<Instant>,
    /// Queues already said to have no live worker (said again once served, then not).
    unserved: BTreeSet<String>,
    /// Attempts this drive stopped waiting for: withdrawn if no worker claimed them yet.
    abandoned: Vec<AttemptKey>,
    /// Ended rows read: forgotten once the outcomes they carried are committed
    /// ([`RemoteExec::forget_ended`]), so a coordinator that dies before that commit leaves them
    /// for the next one to adopt.
    ended: Vec<AttemptKey>,
    /// Ended rows whose outcomes are committed: forgotten by the next [`RemoteExec::flush`].
    durable: Vec<AttemptKey>,
    /// Wake-ups when workers report attempts (PostgreSQL `LISTEN`; `None`: polling only).
    listener: Option<rewind_store::DispatchListener>,
    /// When the rescuer last ran (it runs every quarter lease).
    last_rescue: Option<Instant>,
}

impl RemoteExec {
    pub(crate) async fn new(
        store: SqlStore,
        run: RunId,
        owner: &str,
        started_unix_ms: i64,
        tick: Duration,
    ) -> Result<Self, RuntimeError> {
        let fence = store.lease_epoch(run, owner).await?.ok_or_else(|| {
            RuntimeError::Internal(format!("run {run}: its lease is not held by {owner}"))
        })?;
        let listener = store.listen(rewind_store::DONE_CHANNEL).await.ok();
        let mut poll = tokio::time::interval(if listener.is_some() { POLL_FALLBACK } else { POLL });
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            origin: UNIX_EPOCH + Duration::from_millis(u64::try_from(started_unix_ms).unwrap_or(0)),
            store,
            fence,
            lease: dispatch_lease(),
            inflight: HashMap::new(),
            pending: Vec::new(),
            ready: Vec::new(),
            poll,
            tick,
            last_worker_check: None,
            unserved: BTreeSet::new(),
            abandoned: Vec::new(),
            ended: Vec::new(),
            durable: Vec::new(),
            listener,
            last_rescue: None,
        })
    }

    /// Dispatches an attempt (written by [`RemoteExec::flush`]). A queue template that cannot be
    /// rendered ends the attempt failed at once.
    pub(crate) fn start(
        &mut self,
        id: InstanceId,
        attempt: u32,
        a: &Attempt,
        queue: Option<&Template>,
    ) {
        let idx = id.index() as u32;
        let queue = match queue.map(|q| a.render(q)) {
            None => DEFAULT_QUEUE.to_owned(),
            Some(Ok(q)) if !q.trim().is_empty() && !q.chars().any(char::is_control) => q,
            Some(Ok(q)) => {
                let report = Report::failed(
                    format!("`queue` renders to {q:?}, which is not a queue name"),
                    false,
                );
                self.ready.push(Event::Done { id, attempt, report });
                return;
            }
            Some(Err(e)) => {
                let report = Report::failed(format!("`queue`: {e}"), false);
                self.ready.push(Event::Done { id, attempt, report });
                return;
            }
        };
        self.pending.push(NewDispatch {
            idx,
            attempt,
            queue: queue.clone(),
            payload: payload_of(a),
        });
        self.inflight.insert(idx, (attempt, queue));
    }

    /// Waits for an attempt a previous coordinator of the run dispatched (its row is stored).
    pub(crate) fn adopt(&mut self, idx: u32, attempt: u32, queue: String) {
        self.inflight.insert(idx, (attempt, queue));
    }

    /// Writes the attempts started since the last flush, fenced by the run lease's epoch.
    /// With them, in the same transaction, it forgets the ended rows whose outcomes are
    /// committed ([`RemoteExec::forget_ended`]).
    pub(crate) async fn flush(&mut self) -> Result<(), RuntimeError> {
        if self.pending.is_empty() && self.durable.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.pending);
        let mut forget = std::mem::take(&mut self.durable);
        forget.sort_unstable();
        forget.dedup();
        self.store.dispatch_flush(self.fence, &forget, &items, store_now_ms()).await?;
        Ok(())
    }

    pub(crate) fn running(&self) -> usize {
        self.inflight.len() + self.ready.len()
    }

    pub(crate) fn ready(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.ready)
    }

    pub(crate) fn now(&self) -> Duration {
        SystemTime::now().duration_since(self.origin).unwrap_or(Duration::ZERO)
    }

    pub(crate) async fn wait(
        &mut self,
        wake: Option<Duration>,
        signals: &mut Signals,
    ) -> Result<Vec<Event>, RuntimeError> {
        self.flush().await?;
        let ready = self.ready();
        if !ready.is_empty() {
            return Ok(ready);
        }
        let sleep = wake.map(|w| w.saturating_sub(self.now()));
        let sleep = async {
            match sleep {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let run = self.fence.run.to_string();
        loop {
            let waiting = !self.inflight.is_empty();
            let listening = waiting && self.listener.is_some();
            tokio::select! {
                _ = self.poll.tick(), if waiting => return self.poll_once().await,
                woke = async { match &mut self.listener { Some(l) => l.recv().await, None => std::future::pending().await } }, if listening => {
                    match woke {
                        // Another run's reports: not this drive's business.
                        Ok(of) if of != run => continue,
                        Ok(_) => return self.poll_once().await,
                        // The listener reconnects at its next call; whatever was missed
                        // meanwhile is read now.
                        Err(_) => return self.poll_once().await,
                    }
                }
                () = &mut sleep => return Ok(vec![Event::Wake]),
                s = signals.recv() => return Ok(vec![Event::Signal(s)]),
                _ = self.tick.tick() => return Ok(vec![Event::Tick]),
            }
        }
    }

    /// Rescues expired leases (every quarter lease), then reads the run's ended attempts: each
    /// of this drive's ends (`done`: the worker's report; `lost`: interrupted, it runs again);
    /// every ended row is forgotten after the next commit ([`RemoteExec::forget_ended`]).
    async fn poll_once(&mut self) -> Result<Vec<Event>, RuntimeError> {
        let now = store_now_ms();
        if self.last_rescue.is_none_or(|t| t.elapsed() >= self.lease / 4) {
            self.last_rescue = Some(Instant::now());
            self.store.dispatch_rescue(now).await?;
        }
        let finished = self.store.dispatch_finished(self.fence.run).await?;
        let mut out = Vec::new();
        for f in finished {
            self.ended.push(f.key);
            if self.inflight.get(&f.key.idx).map(|(a, _)| *a) != Some(f.key.attempt) {
                continue;
            }
            self.inflight.remove(&f.key.idx);
            let report = match f.state {
                DispatchState::Done => WireReport::parse(f.outcome.as_deref()),
                _ => Report {
                    outcome: Outcome::Cancelled,
                    ..Report::failed(
                        format!(
                            "worker {} stopped renewing its lease on this attempt; it runs again",
                            f.worker.as_deref().unwrap_or("?")
                        ),
                        true,
                    )
                },
            };
            out.push(Event::Done {
                id: InstanceId::new(f.key.idx as usize),
                attempt: f.key.attempt,
                report,
            });
        }
        if !self.inflight.is_empty()
            && self.last_worker_check.is_none_or(|t| t.elapsed() >= WORKER_CHECK)
        {
            self.last_worker_check = Some(Instant::now());
            out.extend(self.check_workers(now).await?);
        }
        Ok(out)
    }

    /// The ended rows read so far may be forgotten: called once what they carried is committed.
    /// They go with the next [`RemoteExec::flush`] (the start of the next turn's attempts, in
    /// the same transaction), or at once when `now` (the drive ends).
    pub(crate) async fn forget_ended(&mut self, now: bool) -> Result<(), RuntimeError> {
        self.durable.append(&mut self.ended);
        if now { self.flush().await } else { Ok(()) }
    }

    /// A note for each queue this drive waits on that no live worker serves (once, until it is
    /// served again).
    async fn check_workers(&mut self, now: i64) -> Result<Vec<Event>, RuntimeError> {
        let workers = self.store.workers().await?;
        let live = |w: &&rewind_dispatch::WorkerRow| {
            crate::WorkerState::of(w, now, self.lease) == crate::WorkerState::Live
        };
        let waiting: BTreeSet<&String> = self.inflight.values().map(|(_, q)| q).collect();
        let mut out = Vec::new();
        for q in waiting {
            let served = workers.iter().filter(live).any(|w| w.queues.contains(q));
            if served {
                self.unserved.remove(q);
            } else if self.unserved.insert(q.clone()) {
                out.push(Event::Note(format!(
                    "queue {q}: no live worker (start one: rewind worker --db URL --queue {q})"
                )));
            }
        }
        Ok(out)
    }

    /// Withdraws `attempts` (instance, attempt) of the run that no worker claimed yet, and those
    /// [`RemoteExec::stop_all`] stopped waiting for: a queued row of an attempt that is over
    /// must never run. (A claimed one runs on; its report is forgotten.)
    pub(crate) async fn withdraw(&mut self, attempts: &[(u32, u32)]) -> Result<(), RuntimeError> {
        let run = self.fence.run;
        let mut keys = std::mem::take(&mut self.abandoned);
        keys.extend(attempts.iter().map(|&(idx, attempt)| AttemptKey { run, idx, attempt }));
        if !keys.is_empty() {
            self.store.dispatch_withdraw(self.fence, &keys).await?;
        }
        Ok(())
    }

    /// Stops waiting for every dispatched attempt: they end now as stopped (a worker may still
    /// be running them; its report is then forgotten).
    pub(crate) fn stop_all(&mut self) -> Vec<Event> {
        let mut out = self.ready();
        let run = self.fence.run;
        self.abandoned.extend(self.inflight.iter().map(|(&idx, &(attempt, _))| AttemptKey {
            run,
            idx,
            attempt,
        }));
        out.extend(self.inflight.drain().map(|(idx, (attempt, _))| Event::Done {
            id: InstanceId::new(idx as usize),
            attempt,
            report: Report {
                outcome: Outcome::Cancelled,
                ..Report::failed("stopped (a worker may still be running it)", false)
            },
        }));
        out
    }
}
