//! The executor side of the drive loop: real attempts on tokio tasks, or virtual ones on a
//! simulated clock. Both report through the same [`Event`]s, so the loop does not know which.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rewind_exec::{Attempt, Outcome, Registry, Report, Stop, StopHandle};
use rewind_model::InstanceId;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::RuntimeError;

/// A signal that stops a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The exit status of a process that stopped on it: 128 + its number (130, 143).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Something the loop must react to.
#[derive(Debug)]
pub(crate) enum Event {
    /// An attempt ended.
    Done { id: InstanceId, attempt: u32, report: Report },
    /// A retry time was reached.
    Wake,
    /// SIGINT or SIGTERM.
    Signal(Signal),
    /// The observer asked the drive to stop.
    Stop,
    /// Time to look at the cancel flag and renew the lease.
    Tick,
    /// Something the operator should know (workers: a queue without a live worker).
    Note(String),
}

/// SIGINT and SIGTERM, when the caller wants them handled.
pub(crate) struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(crate) fn new(enabled: bool) -> Result<Self, RuntimeError> {
        if !enabled {
            return Ok(Self { int: None, term: None });
        }
        let io = |source| RuntimeError::Io { what: "installing signal handlers", source };
        Ok(Self {
            int: Some(signal(SignalKind::interrupt()).map_err(io)?),
            term: Some(signal(SignalKind::terminate()).map_err(io)?),
        })
    }

    /// The next signal (never resolves when handling is off).
    pub(crate) async fn recv(&mut self) -> Signal {
        let Self { int, term } = self;
        let int = async {
            match int {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let term = async {
            match term {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int => Signal::Interrupt,
            _ = term => Signal::Terminate,
        }
    }

    /// A signal already delivered, if any.
    pub(crate) fn try_recv(&mut self) -> Option<Signal> {
        self.recv().now_or_never()
    }
}

/// A virtual attempt in flight: (end, start order, instance, attempt, fails).
type SimAttempt = (Duration, u64, u32, u32, bool);

/// Virtual-time attempts: each takes its estimate and fails with a seeded probability.
pub(crate) struct SimExec {
    now: Duration,
    seq: u64,
    heap: BinaryHeap<Reverse<SimAttempt>>,
    seed: u64,
    fail_rate: f64,
}

impl SimExec {
    pub(crate) fn new(now: Duration, seed: u64, fail_rate: f64) -> Self {
        Self { now, seq: 0, heap: BinaryHeap::new(), seed, fail_rate }
    }

    pub(crate) fn start(
        &mut self,
        id: InstanceId,
        attempt: u32,
        estimate: Duration,
        key: impl FnOnce() -> String,
    ) {
        let fails = self.fail_rate > 0.0
            && rewind_scheduler::uniform(self.seed, &key(), attempt) < self.fail_rate;
        self.seq += 1;
        self.heap.push(Reverse((self.now + estimate, self.seq, id.index() as u32, attempt, fails)));
    }

    fn pop_due(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(&Reverse((end, _, id, attempt, fails))) = self.heap.peek() {
            if end > self.now {
                break;
            }
            self.heap.pop();
            let report = if fails {
                Report::failed(format!("simulated failure (fail rate {})", self.fail_rate), true)
            } else {
                Report {
                    outcome: Outcome::Succeeded,
                    output: None,
                    error: None,
                    exit_code: None,
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                }
            };
            out.push(Event::Done { id: InstanceId::new(id as usize), attempt, report });
        }
        out
    }

    /// Jumps the clock to the next attempt end or `wake`, whichever is first.
    fn advance(&mut self, wake: Option<Duration>) -> Vec<Event> {
        let next = self.heap.peek().map(|Reverse((end, ..))| *end);
        match (next, wake) {
            (Some(n), Some(w)) if w < n => {
                self.now = self.now.max(w);
                vec![Event::Wake]
            }
            (Some(n), _) => {
                self.now = self.now.max(n);
                self.pop_due()
            }
            (None, Some(w)) => {
                self.now = self.now.max(w);
                vec![Event::Wake]
            }
            (None, None) => Vec::new(),
        }
    }

    /// Ends every attempt in flight now, as stopped.
    fn stop_all(&mut self) -> Vec<Event> {
        self.heap
            .drain()
            .map(|Reverse((_, _, id, attempt, _))| Event::Done {
                id: InstanceId::new(id as usize),
                attempt,
                report: Report { outcome: Outcome::Cancelled, ..Report::failed("stopped", false) },
            })
            .collect()
    }
}

/// Real attempts, each a tokio task running its executor.
pub(crate) struct RealExec {
    origin: SystemTime,
    set: JoinSet<(u32, u32, Report)>,
    tasks: HashMap<tokio::task::Id, (u32, u32)>,
    stop: StopHandle,
    stop_signal: Stop,
    registry: Registry,
    tick: tokio::time::Interval,
}

impl RealExec {
    pub(crate) fn new(started_unix_ms: i64, registry: Registry, tick: Duration) -> Self {
        let origin =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(started_unix_ms).unwrap_or(0));
        let (stop, stop_signal) = StopHandle::new();
        let mut tick = tokio::time::interval(tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            origin,
            set: JoinSet::new(),
            tasks: HashMap::new(),
            stop,
            stop_signal,
            registry,
            tick,
        }
    }

    /// Runs one attempt on its own task. A panic in the executor is caught at the task's
    /// boundary and becomes that attempt's permanent failure (a bug does not get better by
    /// running it again), so every task reports its own instance and attempt.
    pub(crate) fn start(&mut self, id: InstanceId, attempt: u32, a: Attempt) {
        let idx = id.index() as u32;
        let kind = a.action.kind();
        let fut = self.registry.run(a, self.stop_signal.clone());
        let handle = self.set.spawn(async move {
            let report = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(report) => report,
                Err(panic) => Report::failed(
                    format!(
                        "the `{kind}` executor panicked: {}; this is a bug in rewind (not retried)",
                        panic_message(panic.as_ref())
                    ),
                    false,
                ),
            };
            (idx, attempt, report)
        });
        self.tasks.insert(handle.id(), (idx, attempt));
    }

    fn event(
        &mut self,
        joined: Result<(tokio::task::Id, (u32, u32, Report)), tokio::task::JoinError>,
    ) -> Result<Event, RuntimeError> {
        match joined {
            Ok((tid, (id, attempt, report))) => {
                self.tasks.remove(&tid);
                Ok(Event::Done { id: InstanceId::new(id as usize), attempt, report })
            }
            // Panics are caught inside the task and nothing aborts these tasks, so this is a
            // task lost to the runtime itself (it is shutting down): its attempt is named if
            // known, and the drive stops; the run stays resumable.
            Err(e) => match self.tasks.remove(&e.id()) {
                Some((id, attempt)) => {
                    let report = Report::failed(format!("the executor task was lost: {e}"), true);
                    Ok(Event::Done { id: InstanceId::new(id as usize), attempt, report })
                }
                None => Err(RuntimeError::Internal(format!(
                    "an executor task ended without a known attempt: {e}"
                ))),
            },
        }
    }

    fn ready(&mut self) -> Result<Vec<Event>, RuntimeError> {
        let mut out = Vec::new();
        while let Some(j) = self.set.try_join_next_with_id() {
            out.push(self.event(j)?);
        }
        Ok(out)
    }

    async fn wait(
        &mut self,
        wake: Option<Duration>,
        signals: &mut Signals,
    ) -> Result<Vec<Event>, RuntimeError> {
        let sleep = wake.map(|w| w.saturating_sub(self.now()));
        Ok(tokio::select! {
            Some(j) = self.set.join_next_with_id(), if !self.set.is_empty() => {
                let mut out = vec![self.event(j)?];
                out.extend(self.ready()?);
                out
            }
            () = async { match sleep { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => vec![Event::Wake],
            s = signals.recv() => vec![Event::Signal(s)],
            _ = self.tick.tick() => vec![Event::Tick],
        })
    }

    fn now(&self) -> Duration {
        SystemTime::now().duration_since(self.origin).unwrap_or(Duration::ZERO)
    }
}

/// Either kind of execution.
pub(crate) enum Exec {
    Sim(SimExec),
    Real(RealExec),
    Remote(Box<crate::remote::RemoteExec>),
}

impl Exec {
    pub(crate) fn now(&self) -> Duration {
        match self {
            Self::Sim(s) => s.now,
            Self::Real(r) => r.now(),
            Self::Remote(r) => r.now(),
        }
    }

    pub(crate) fn running(&self) -> usize {
        match self {
            Self::Sim(s) => s.heap.len(),
            Self::Real(r) => r.set.len(),
            Self::Remote(r) => r.running(),
        }
    }

    /// Events available without waiting.
    pub(crate) fn ready(&mut self) -> Result<Vec<Event>, RuntimeError> {
        match self {
            Self::Sim(s) => Ok(s.pop_due()),
            Self::Real(r) => r.ready(),
            Self::Remote(r) => Ok(r.ready()),
        }
    }

    /// Waits for the next events: an attempt end, `wake`, a signal, or a tick. A simulation
    /// does not wait: its clock jumps.
    pub(crate) async fn wait(
        &mut self,
        wake: Option<Duration>,
        signals: &mut Signals,
    ) -> Result<Vec<Event>, RuntimeError> {
        match self {
            Self::Sim(s) => Ok(match signals.try_recv() {
                Some(sig) => vec![Event::Signal(sig)],
                None => s.advance(wake),
            }),
            Self::Real(r) => r.wait(wake, signals).await,
            Self::Remote(r) => r.wait(wake, signals).await,
        }
    }

    /// Asks every running attempt to stop. A simulation ends them at once (returned); real
    /// attempts report back through [`Exec::wait`].
    pub(crate) fn stop_all(&mut self) -> Vec<Event> {
        match self {
            Self::Sim(s) => s.stop_all(),
            Self::Real(r) => {
                r.stop.stop();
                Vec::new()
            }
            Self::Remote(r) => r.stop_all(),
        }
    }
}

/// The text of a caught panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
