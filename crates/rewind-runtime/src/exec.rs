//! The executor side of the drive loop: real attempts on tokio tasks, or virtual ones on a
//! simulated clock. Both report through the same [`Event`]s, so the loop does not know which.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rewind_exec::{Attempt, Outcome, Registry, Report, Stop, StopHandle};
use rewind_model::InstanceId;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;

use crate::RuntimeError;

/// Something the loop must react to.
#[derive(Debug)]
pub(crate) enum Event {
    /// An attempt ended.
    Done { id: InstanceId, attempt: u32, report: Report },
    /// A retry time was reached.
    Wake,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// Time to look at the cancel flag and renew the lease.
    Tick,
}

/// SIGINT and SIGTERM, when the caller wants them handled.
pub(crate) struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
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
    pub(crate) async fn recv(&mut self) -> &'static str {
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
            _ = int => "SIGINT",
            _ = term => "SIGTERM",
        }
    }

    /// A signal already delivered, if any.
    pub(crate) fn try_recv(&mut self) -> Option<&'static str> {
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

    pub(crate) fn start(&mut self, id: InstanceId, attempt: u32, a: Attempt) {
        let idx = id.index() as u32;
        let fut = self.registry.run(a, self.stop_signal.clone());
        let handle = self.set.spawn(async move { (idx, attempt, fut.await) });
        self.tasks.insert(handle.id(), (idx, attempt));
    }

    fn event(
        &mut self,
        joined: Result<(tokio::task::Id, (u32, u32, Report)), tokio::task::JoinError>,
    ) -> Event {
        match joined {
            Ok((tid, (id, attempt, report))) => {
                self.tasks.remove(&tid);
                Event::Done { id: InstanceId::new(id as usize), attempt, report }
            }
            Err(e) => {
                let (id, attempt) = self.tasks.remove(&e.id()).unwrap_or((0, 0));
                let report = Report::failed(format!("the executor task failed: {e}"), true);
                Event::Done { id: InstanceId::new(id as usize), attempt, report }
            }
        }
    }

    fn ready(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(j) = self.set.try_join_next_with_id() {
            out.push(self.event(j));
        }
        out
    }

    async fn wait(&mut self, wake: Option<Duration>, signals: &mut Signals) -> Vec<Event> {
        let sleep = wake.map(|w| w.saturating_sub(self.now()));
        tokio::select! {
            Some(j) = self.set.join_next_with_id(), if !self.set.is_empty() => {
                let mut out = vec![self.event(j)];
                out.extend(self.ready());
                out
            }
            () = async { match sleep { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => vec![Event::Wake],
            s = signals.recv() => vec![Event::Signal(s)],
            _ = self.tick.tick() => vec![Event::Tick],
        }
    }

    fn now(&self) -> Duration {
        SystemTime::now().duration_since(self.origin).unwrap_or(Duration::ZERO)
    }
}

/// Either kind of execution.
pub(crate) enum Exec {
    Sim(SimExec),
    Real(RealExec),
}

impl Exec {
    pub(crate) fn now(&self) -> Duration {
        match self {
            Self::Sim(s) => s.now,
            Self::Real(r) => r.now(),
        }
    }

    pub(crate) fn running(&self) -> usize {
        match self {
            Self::Sim(s) => s.heap.len(),
            Self::Real(r) => r.set.len(),
        }
    }

    /// Events available without waiting.
    pub(crate) fn ready(&mut self) -> Vec<Event> {
        match self {
            Self::Sim(s) => s.pop_due(),
            Self::Real(r) => r.ready(),
        }
    }

    /// Waits for the next events: an attempt end, `wake`, a signal, or a tick. A simulation
    /// does not wait: its clock jumps.
    pub(crate) async fn wait(
        &mut self,
        wake: Option<Duration>,
        signals: &mut Signals,
    ) -> Vec<Event> {
        match self {
            Self::Sim(s) => match signals.try_recv() {
                Some(sig) => vec![Event::Signal(sig)],
                None => s.advance(wake),
            },
            Self::Real(r) => r.wait(wake, signals).await,
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
        }
    }
}
