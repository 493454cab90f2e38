//! rewind's scheduler: a sans-I/O state machine over a [`Plan`].
//!
//! It is fed instance outcomes and the current time (an offset from the start of the run) and
//! answers which instances to start ([`Scheduler::poll`]), when to wake up for a retry
//! ([`Scheduler::next_wakeup`]), and what became blocked. Every state change is also queued as a
//! [`Change`] for the caller to checkpoint ([`Scheduler::take_changes`]).
//!
//! Priority is the longest remaining path (the plan's rank), ties to earlier targets, so long
//! restores are pre-started and sites finish progressively. Resource pools are never exceeded. A
//! failure blocks only its dependents. Retry delays come from backon's exponential backoff, with
//! jitter seeded from the run's seed and the instance key, so a schedule is reproducible.
//!
//! **Invariant:** no I/O, no clock, no sleeping, no threads. Real runs and virtual-time
//! simulation drive this same code, so a simulated schedule is the real schedule. It must not
//! depend on tokio, sqlx or any executor.

pub mod customers;
mod state;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rewind_model::{InstanceId, Plan, Subject};

pub use state::{Counts, State};

/// Which ready instance goes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// For the customers (the default): earliest latest-start first. Each target is due when it
    /// would be back if targets were restored one after another (group by group) at the pools'
    /// throughput, never before its own critical path; the run's end is due at the lower bound.
    /// An instance's latest start is the earliest deadline among its target's due time and its
    /// dependents' latest starts, minus its estimate (see [`customers`]).
    #[default]
    Customers,
    /// Longest remaining path first, ties to earlier targets.
    CriticalPath,
    /// In the order instances became ready: a baseline to measure what priorities buy.
    Fifo,
}

impl Priority {
    /// Every policy, the default first.
    pub const ALL: [Self; 3] = [Self::Customers, Self::CriticalPath, Self::Fifo];

    /// Its name, as on the command line and in the checkpoint store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::CriticalPath => "critical-path",
            Self::Fifo => "fifo",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            format!("unknown policy {s:?}: expected customers, critical-path or fifo")
        })
    }
}

/// Scheduler settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The run's seed: retry jitter derives from it and the instance key.
    pub seed: u64,
    /// Ready-queue order.
    pub priority: Priority,
    /// Most instances running at once, across all pools (`None`: no limit beyond the pools).
    pub max_running: Option<usize>,
}

/// Start attempt `attempt` (1-based) of instance `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The instance.
    pub id: InstanceId,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The action succeeded.
    Succeeded,
    /// The action failed. `retryable: false` fails the instance at once (for example a restore
    /// point mismatch); otherwise the step's retry policy decides.
    Failed {
        /// Whether another attempt may help.
        retryable: bool,
    },
    /// The action was stopped because the run is being cancelled.
    Cancelled,
    /// The orchestrator is shutting down (a signal): the attempt does not count; the instance is
    /// pending again and runs on resume.
    Interrupted,
}

/// A state change, for the checkpoint log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Attempt `attempt` started.
    Started {
        /// Instance.
        id: InstanceId,
        /// Attempt number.
        attempt: u32,
        /// When.
        at: Duration,
    },
    /// The instance succeeded.
    Succeeded {
        /// Instance.
        id: InstanceId,
        /// When.
        at: Duration,
    },
    /// An attempt failed; the next one starts no earlier than `retry_at`.
    RetryScheduled {
        /// Instance.
        id: InstanceId,
        /// The attempt that failed.
        attempt: u32,
        /// When it failed.
        at: Duration,
        /// When the next attempt may start.
        retry_at: Duration,
    },
    /// The instance failed permanently.
    Failed {
        /// Instance.
        id: InstanceId,
        /// When.
        at: Duration,
    },
    /// A dependency failed, so the instance will not run.
    Blocked {
        /// Instance.
        id: InstanceId,
        /// The failed instance upstream.
        by: InstanceId,
        /// When.
        at: Duration,
    },
    /// Cancelled.
    Cancelled {
        /// Instance.
        id: InstanceId,
        /// When.
        at: Duration,
    },
    /// An interrupted attempt: the instance is pending again.
    Interrupted {
        /// Instance.
        id: InstanceId,
        /// When.
        at: Duration,
    },
}

impl Change {
    /// The instance the change is about.
    pub fn id(&self) -> InstanceId {
        match *self {
            Self::Started { id, .. }
            | Self::Succeeded { id, .. }
            | Self::RetryScheduled { id, .. }
            | Self::Failed { id, .. }
            | Self::Blocked { id, .. }
            | Self::Cancelled { id, .. }
            | Self::Interrupted { id, .. } => id,
        }
    }

    /// The state the instance is in after the change.
    pub fn state(&self) -> State {
        match self {
            Self::Started { .. } => State::Running,
            Self::Succeeded { .. } => State::Succeeded,
            Self::RetryScheduled { .. } | Self::Interrupted { .. } => State::Pending,
            Self::Failed { .. } => State::Failed,
            Self::Blocked { .. } => State::Blocked,
            Self::Cancelled { .. } => State::Cancelled,
        }
    }
}

/// What is known durably about one instance when a run is resumed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restored {
    /// Its recorded state (`running` means the orchestrator died during an attempt).
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// Failed attempts so far (counted against `retries`).
    pub failures: u32,
    /// For a pending instance with failed attempts: when its next attempt may start (as
    /// recorded when the retry was scheduled; `None` means at once).
    pub retry_at: Option<Duration>,
}

/// A heap entry: the greatest is started first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    primary: u64,
    secondary: u32,
    id: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.primary
            .cmp(&other.primary)
            .then(self.secondary.cmp(&other.secondary))
            .then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The scheduler of one run.
#[derive(Debug)]
pub struct Scheduler<'p> {
    plan: &'p Plan,
    config: Config,
    state: Vec<State>,
    attempts: Vec<u32>,
    failures: Vec<u32>,
    /// Dependencies not yet satisfied.
    missing: Vec<u32>,
    /// Ready queues: index 0 for instances without a pool, `p + 1` for pool `p`.
    ready: Vec<BinaryHeap<Entry>>,
    capacity: Vec<u32>,
    used: Vec<u32>,
    retries: BinaryHeap<Reverse<(Duration, u32)>>,
    fifo_seq: u64,
    counts: Counts,
    cancelling: bool,
    changes: Vec<Change>,
    /// Per target: target-scope instances not yet terminal, and whether one ended badly.
    target_open: Vec<u32>,
    target_bad: Vec<bool>,
    /// Per target: its own instances (target scope, not skipped by `when`). A target with none
    /// has nothing of its own to restore: it is restored when the whole run is (every instance
    /// succeeded or skipped), never at its start.
    target_own: Vec<u32>,
    /// Targets with own instances that are restored.
    restored_targets: usize,
    /// Targets without own instances.
    runlevel_targets: usize,
    /// Every instance succeeded or was skipped (the run-level targets are restored).
    run_restored: bool,
    /// When each target was restored (by this scheduler; `None` for targets restored before a
    /// resume, or not restored).
    restored_at: Vec<Option<Duration>>,
    /// The time of the call being handled.
    clock: Duration,
    /// Staged waves, if the run has them.
    gate: Option<Gate>,
    /// Per instance, under [`Priority::Customers`]: its heap keys, computed once from the plan.
    keys: Vec<(u64, u32)>,
}

/// Staged waves: which wave each instance belongs to and which waves are open.
///
/// A target-scope instance belongs to its target's wave; any instance also belongs to the
/// latest wave of anything it depends on, so a fan-in after every target runs in the last wave.
/// Instances that depend on no target (run-scope restores pre-started for everyone) belong to
/// no wave (0) and are never held. An instance of wave `w` starts only once wave `w` is open.
#[derive(Clone, Debug)]
struct Gate {
    /// Per instance: its wave, 1-based; 0 for none.
    wave: Vec<u16>,
    /// Waves up to this one are open.
    open: u16,
    /// Number of waves.
    waves: u16,
    /// Per wave (index `w`): instances of wave `w` not yet terminal.
    unfinished: Vec<u32>,
    /// Per wave: ready instances held until the wave opens.
    held: Vec<Vec<u32>>,
    /// Per target: its wave.
    target_wave: Vec<u16>,
}

/// A wave whose instances have all ended: what the run decides before opening the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaveEnd {
    /// The wave, 1-based.
    pub wave: u16,
    /// How many waves there are.
    pub waves: u16,
    /// Its targets.
    pub targets: u32,
    /// Its targets with a failed, blocked or cancelled instance.
    pub failed: u32,
}

impl WaveEnd {
    /// Failed targets over targets, 0 to 1.
    pub fn failure_rate(&self) -> f64 {
        if self.targets == 0 { 0.0 } else { f64::from(self.failed) / f64::from(self.targets) }
    }
}

impl<'p> Scheduler<'p> {
    /// A scheduler for a fresh run: every instance pending, except those skipped by `when`.
    pub fn new(plan: &'p Plan, config: Config) -> Self {
        let n = plan.len();
        let restored = (0..n).map(|i| {
            let skipped = plan.instances()[i].skipped;
            Restored {
                state: if skipped { State::Skipped } else { State::Pending },
                attempts: 0,
                failures: 0,
                retry_at: None,
            }
        });
        Self::restore(plan, config, restored, Duration::ZERO)
    }

    /// A scheduler resuming a run from what the checkpoint store recorded. Instances recorded as
    /// running are pending again (at-least-once). Pending instances below a failed or blocked one
    /// become blocked (a crash may have come between the failure and its cascade), and those with
    /// failed attempts wait until their recorded retry time.
    pub fn restore(
        plan: &'p Plan,
        config: Config,
        rows: impl IntoIterator<Item = Restored>,
        now: Duration,
    ) -> Self {
        let keys = match config.priority {
            Priority::Customers => customers::keys(plan),
            _ => Vec::new(),
        };
        Self::restore_with_keys(plan, config, rows, now, keys)
    }

    /// A fresh scheduler with the given customers keys (for the policy's own trial runs).
    fn with_keys(plan: &'p Plan, keys: Vec<(u64, u32)>) -> Self {
        let config = Config { priority: Priority::Customers, ..Config::default() };
        let rows = (0..plan.len()).map(|i| Restored {
            state: if plan.instances()[i].skipped { State::Skipped } else { State::Pending },
            attempts: 0,
            failures: 0,
            retry_at: None,
        });
        Self::restore_with_keys(plan, config, rows, Duration::ZERO, keys)
    }

    fn restore_with_keys(
        plan: &'p Plan,
        config: Config,
        rows: impl IntoIterator<Item = Restored>,
        now: Duration,
        keys: Vec<(u64, u32)>,
    ) -> Self {
        let n = plan.len();
        let pools = plan.workflow().resources.len();
        let mut s = Self {
            plan,
            config,
            state: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            failures: Vec::with_capacity(n),
            missing: vec![0; n],
            ready: (0..=pools).map(|_| BinaryHeap::new()).collect(),
            capacity: plan.workflow().resources.iter().map(|p| p.capacity).collect(),
            used: vec![0; pools],
            retries: BinaryHeap::new(),
            fifo_seq: 0,
            counts: Counts::default(),
            cancelling: false,
            changes: Vec::new(),
            target_open: vec![0; plan.targets().len()],
            target_bad: vec![false; plan.targets().len()],
            target_own: vec![0; plan.targets().len()],
            restored_targets: 0,
            runlevel_targets: 0,
            run_restored: false,
            restored_at: vec![None; plan.targets().len()],
            clock: now,
            gate: None,
            keys,
        };
        let mut retry_at = Vec::with_capacity(n);
        for r in rows.into_iter().take(n) {
            let st = if r.state == State::Running { State::Pending } else { r.state };
            s.state.push(st);
            s.attempts.push(r.attempts);
            s.failures.push(r.failures);
            retry_at.push(r.retry_at);
        }
        // Rows missing from the store are pending.
        while s.state.len() < n {
            s.state.push(State::Pending);
            s.attempts.push(0);
            s.failures.push(0);
            retry_at.push(None);
        }
        for i in 0..n {
            s.counts.add(s.state[i]);
            if let Subject::Target(t) = plan.instances()[i].subject {
                let t = t as usize;
                s.target_own[t] += u32::from(!plan.instances()[i].skipped);
                if s.state[i].is_terminal() {
                    s.target_bad[t] |= !s.state[i].satisfies();
                } else {
                    s.target_open[t] += 1;
                }
            }
        }
        s.restored_targets = (0..s.target_open.len())
            .filter(|&t| s.target_own[t] > 0 && s.target_open[t] == 0 && !s.target_bad[t])
            .count();
        s.runlevel_targets = s.target_own.iter().filter(|&&o| o == 0).count();
        s.run_restored = s.all_satisfied();
        for i in 0..n {
            let id = InstanceId::new(i);
            s.missing[i] =
                plan.dependencies(id).filter(|d| !s.state[d.index()].satisfies()).count() as u32;
        }
        // Cascade failures that were recorded without their blocked dependents.
        for i in 0..n {
            if matches!(s.state[i], State::Failed | State::Blocked) {
                s.block_dependents(InstanceId::new(i), now);
            }
        }
        for (i, retry_at) in retry_at.into_iter().enumerate() {
            if s.state[i] != State::Pending || s.missing[i] > 0 {
                continue;
            }
            let id = InstanceId::new(i);
            match retry_at {
                Some(at) if s.failures[i] > 0 && at > now => {
                    s.retries.push(Reverse((at, i as u32)))
                }
                _ => s.push_ready(id),
            }
        }
        s
    }

    /// Like [`Scheduler::restore`], for a run staged in waves: `boundaries` are the cumulative
    /// target counts at the end of each wave (targets in plan order), `open` the last wave
    /// already open (at least 1).
    pub fn restore_staged(
        plan: &'p Plan,
        config: Config,
        rows: impl IntoIterator<Item = Restored>,
        now: Duration,
        boundaries: &[u32],
        open: u16,
    ) -> Self {
        let mut s = Self::restore(plan, config, rows, now);
        if boundaries.len() < 2 {
            return s;
        }
        let waves = u16::try_from(boundaries.len()).unwrap_or(u16::MAX);
        let n_targets = plan.targets().len();
        let mut target_wave = vec![waves; n_targets];
        let mut w = 0usize;
        for (t, tw) in target_wave.iter_mut().enumerate() {
            while w + 1 < boundaries.len() && t as u32 >= boundaries[w] {
                w += 1;
            }
            *tw = (w + 1) as u16;
        }
        let n = plan.len();
        let mut wave = vec![0u16; n];
        // Instances are numbered in topological order: dependencies come first.
        for i in 0..n {
            let id = InstanceId::new(i);
            let own = match plan.instance(id).subject {
                Subject::Target(t) => target_wave[t as usize],
                _ => 0,
            };
            wave[i] = plan.dependencies(id).map(|d| wave[d.index()]).fold(own, u16::max);
        }
        let mut unfinished = vec![0u32; usize::from(waves) + 1];
        for i in 0..n {
            if !s.state[i].is_terminal() {
                unfinished[usize::from(wave[i])] += 1;
            }
        }
        let mut gate = Gate {
            wave,
            open: open.clamp(1, waves),
            waves,
            unfinished,
            held: vec![Vec::new(); usize::from(waves) + 1],
            target_wave,
        };
        // Hold what is ready but not yet open.
        for q in &mut s.ready {
            let entries: Vec<Entry> = std::mem::take(q).into_vec();
            for e in entries {
                let w = gate.wave[e.id as usize];
                if w > gate.open {
                    gate.held[usize::from(w)].push(e.id);
                } else {
                    q.push(e);
                }
            }
        }
        s.gate = Some(gate);
        s
    }

    /// The last open wave and the number of waves, for a staged run.
    pub fn waves(&self) -> Option<(u16, u16)> {
        self.gate.as_ref().map(|g| (g.open, g.waves))
    }

    /// The open wave, once every instance of it (and of the waves before it) has ended, while a
    /// later wave is still closed: the moment to judge it and open the next, or halt.
    pub fn wave_ended(&self) -> Option<WaveEnd> {
        let g = self.gate.as_ref()?;
        if g.open >= g.waves || g.unfinished[1..=usize::from(g.open)].iter().any(|&u| u > 0) {
            return None;
        }
        let (mut targets, mut failed) = (0u32, 0u32);
        for (t, &w) in g.target_wave.iter().enumerate() {
            if w == g.open {
                targets += 1;
                failed += u32::from(self.target_bad[t]);
            }
        }
        Some(WaveEnd { wave: g.open, waves: g.waves, targets, failed })
    }

    /// Opens the next wave: its held instances become ready. Returns the wave opened.
    pub fn open_next_wave(&mut self) -> Option<u16> {
        let g = self.gate.as_mut()?;
        if g.open >= g.waves {
            return None;
        }
        g.open += 1;
        let held = std::mem::take(&mut g.held[usize::from(g.open)]);
        let open = g.open;
        for i in held {
            if self.state[i as usize] == State::Pending {
                self.push_ready(InstanceId::new(i as usize));
            }
        }
        Some(open)
    }

    /// The plan being scheduled.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    /// The state of one instance.
    pub fn state(&self, id: InstanceId) -> State {
        self.state[id.index()]
    }

    /// Attempts started for one instance.
    pub fn attempts(&self, id: InstanceId) -> u32 {
        self.attempts[id.index()]
    }

    /// Failed attempts of one instance.
    pub fn failures(&self, id: InstanceId) -> u32 {
        self.failures[id.index()]
    }

    /// Instances per state.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Targets restored: those whose own instances (target scope, not skipped) all succeeded,
    /// and, once every instance of the run succeeded or was skipped, those with none.
    pub fn restored_targets(&self) -> usize {
        self.restored_targets + if self.run_restored { self.runlevel_targets } else { 0 }
    }

    /// Every instance succeeded or was skipped.
    fn all_satisfied(&self) -> bool {
        let c = &self.counts;
        c.succeeded + c.skipped == c.total()
    }

    /// When target `t` (by index) was restored during this scheduler's life.
    pub fn target_restored_at(&self, t: usize) -> Option<Duration> {
        self.restored_at[t]
    }

    /// Whether target `t` (by index) is restored (see [`Scheduler::restored_targets`]).
    pub fn target_restored(&self, t: usize) -> bool {
        if self.target_own[t] == 0 {
            self.run_restored
        } else {
            self.target_open[t] == 0 && !self.target_bad[t]
        }
    }

    /// True when no instance is pending or running.
    pub fn is_finished(&self) -> bool {
        self.counts.pending == 0 && self.counts.running == 0
    }

    /// True once [`Scheduler::cancel`] was called.
    pub fn is_cancelling(&self) -> bool {
        self.cancelling
    }

    /// The earliest time a waiting retry becomes due, if any.
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    /// Changes since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The instances to start now, best first, within pool capacities and `max_running`.
    pub fn poll(&mut self, now: Duration) -> Vec<Dispatch> {
        self.clock = now;
        let mut out = Vec::new();
        if self.cancelling {
            return out;
        }
        while let Some(&Reverse((at, i))) = self.retries.peek() {
            if at > now {
                break;
            }
            self.retries.pop();
            if self.state[i as usize] == State::Pending {
                self.push_ready(InstanceId::new(i as usize));
            }
        }
        loop {
            if self.config.max_running.is_some_and(|m| self.counts.running >= m) {
                break;
            }
            let mut best: Option<(usize, Entry)> = None;
            for (q, heap) in self.ready.iter().enumerate() {
                if q > 0 && self.used[q - 1] >= self.capacity[q - 1] {
                    continue;
                }
                if let Some(&top) = heap.peek()
                    && best.is_none_or(|(_, b)| top > b)
                {
                    best = Some((q, top));
                }
            }
            let Some((q, entry)) = best else { break };
            self.ready[q].pop();
            // An entry of an instance adopted since it was made ready ([`Scheduler::adopt`]).
            if self.state[entry.id as usize] != State::Pending {
                continue;
            }
            if q > 0 {
                self.used[q - 1] += 1;
            }
            let id = InstanceId::new(entry.id as usize);
            let i = id.index();
            self.set(id, State::Running);
            self.attempts[i] += 1;
            let attempt = self.attempts[i];
            self.changes.push(Change::Started { id, attempt, at: now });
            out.push(Dispatch { id, attempt });
        }
        out
    }

    /// Adopts an attempt the run's previous driver left running and that still runs elsewhere
    /// (on a worker): the restored instance, pending again, is running at its recorded attempt,
    /// with its pool slot taken, and its outcome is awaited like any start's. Records no change
    /// (the store says running already). False, and nothing changes, unless `id` is pending with
    /// its dependencies satisfied and the run is not cancelling.
    pub fn adopt(&mut self, id: InstanceId) -> bool {
        let i = id.index();
        if self.cancelling || self.state[i] != State::Pending || self.missing[i] > 0 {
            return false;
        }
        if let Some(p) = self.plan.pool_of(id) {
            self.used[p] += 1;
        }
        self.set(id, State::Running);
        true
    }

    /// Records how the running attempt of `id` ended, at `now`.
    ///
    /// # Panics
    /// In debug builds, if `id` is not running: the caller reported an outcome twice.
    pub fn on_outcome(&mut self, id: InstanceId, outcome: Outcome, now: Duration) {
        self.clock = now;
        let i = id.index();
        debug_assert_eq!(self.state[i], State::Running, "outcome for {id} which is not running");
        if self.state[i] != State::Running {
            return;
        }
        if let Some(p) = self.plan.pool_of(id) {
            self.used[p] -= 1;
        }
        match outcome {
            Outcome::Succeeded => {
                self.set(id, State::Succeeded);
                self.changes.push(Change::Succeeded { id, at: now });
                for d in self.plan.dependents(id) {
                    let j = d.index();
                    self.missing[j] -= 1;
                    if self.missing[j] == 0 && self.state[j] == State::Pending && !self.cancelling {
                        self.push_ready(d);
                    }
                }
            }
            Outcome::Failed { retryable } => {
                self.failures[i] += 1;
                let policy = self.plan.step_of(id).policy;
                if retryable && !self.cancelling && self.failures[i] <= policy.retries {
                    let retry_at = now + self.retry_delay(id, self.failures[i]);
                    self.set(id, State::Pending);
                    self.retries.push(Reverse((retry_at, i as u32)));
                    self.changes.push(Change::RetryScheduled {
                        id,
                        attempt: self.attempts[i],
                        at: now,
                        retry_at,
                    });
                } else {
                    self.set(id, State::Failed);
                    self.changes.push(Change::Failed { id, at: now });
                    self.block_dependents(id, now);
                }
            }
            Outcome::Cancelled => {
                self.set(id, State::Cancelled);
                self.changes.push(Change::Cancelled { id, at: now });
            }
            Outcome::Interrupted => {
                self.set(id, State::Pending);
                self.changes.push(Change::Interrupted { id, at: now });
                if !self.cancelling {
                    self.push_ready(id);
                }
            }
        }
    }

    /// Stops the run: nothing new starts, every pending instance is cancelled. Running attempts
    /// keep their state until their outcomes arrive.
    pub fn cancel(&mut self, now: Duration) {
        self.clock = now;
        self.cancelling = true;
        for q in &mut self.ready {
            q.clear();
        }
        self.retries.clear();
        for i in 0..self.state.len() {
            if self.state[i] == State::Pending {
                let id = InstanceId::new(i);
                self.set(id, State::Cancelled);
                self.changes.push(Change::Cancelled { id, at: now });
            }
        }
    }

    /// The delay before attempt `failures + 1` of `id`: backon's exponential backoff from the
    /// step's policy, jittered with a seed from the run's seed and the instance key.
    pub fn retry_delay(&self, id: InstanceId, failures: u32) -> Duration {
        let b = self.plan.step_of(id).policy.backoff;
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(b.initial)
            .with_max_delay(b.max)
            .with_factor(b.factor)
            .without_max_times();
        if b.jitter {
            let key = self.plan.key(id).to_string();
            builder = builder.with_jitter().with_jitter_seed(mix(self.config.seed, &key));
        }
        builder.build().nth(failures.saturating_sub(1) as usize).unwrap_or(b.max)
    }

    fn push_ready(&mut self, id: InstanceId) {
        if let Some(g) = &mut self.gate {
            let w = g.wave[id.index()];
            if w > g.open {
                g.held[usize::from(w)].push(id.index() as u32);
                return;
            }
        }
        let entry = match self.config.priority {
            Priority::CriticalPath => Entry {
                primary: u64::try_from(self.plan.rank(id).as_nanos()).unwrap_or(u64::MAX),
                secondary: u32::MAX - self.plan.target_order(id),
                id: id.index() as u32,
            },
            Priority::Customers => {
                let (primary, secondary) = self.keys[id.index()];
                Entry { primary, secondary, id: id.index() as u32 }
            }
            Priority::Fifo => {
                self.fifo_seq += 1;
                Entry { primary: u64::MAX - self.fifo_seq, secondary: 0, id: id.index() as u32 }
            }
        };
        let q = self.plan.pool_of(id).map_or(0, |p| p + 1);
        self.ready[q].push(entry);
    }

    fn set(&mut self, id: InstanceId, to: State) {
        let i = id.index();
        let from = self.state[i];
        debug_assert!(
            from.can_become(to),
            "{}: {from} → {to} is not a transition",
            self.plan.key(id)
        );
        self.state[i] = to;
        self.counts.shift(from, to);
        if let Some(g) = &mut self.gate
            && !from.is_terminal()
            && to.is_terminal()
        {
            g.unfinished[usize::from(g.wave[i])] -= 1;
        }
        if let Subject::Target(t) = self.plan.instance(id).subject {
            let t = t as usize;
            // The scheduler never reopens a terminal instance (`retry` does, in the store).
            if !from.is_terminal() && to.is_terminal() {
                self.target_open[t] -= 1;
                if !to.satisfies() {
                    self.target_bad[t] = true;
                } else if self.target_open[t] == 0 && !self.target_bad[t] {
                    self.restored_targets += 1;
                    self.restored_at[t] = Some(self.clock);
                }
            }
        }
        if !self.run_restored && to.satisfies() && self.all_satisfied() {
            self.run_restored = true;
            for t in 0..self.target_own.len() {
                if self.target_own[t] == 0 {
                    self.restored_at[t] = Some(self.clock);
                }
            }
        }
    }

    /// Blocks every pending instance downstream of `failed`.
    fn block_dependents(&mut self, failed: InstanceId, now: Duration) {
        let mut stack: Vec<InstanceId> = self.plan.dependents(failed).collect();
        while let Some(d) = stack.pop() {
            if self.state[d.index()] != State::Pending {
                continue;
            }
            self.set(d, State::Blocked);
            self.changes.push(Change::Blocked { id: d, by: failed, at: now });
            stack.extend(self.plan.dependents(d));
        }
    }
}

/// FNV-1a of `key`, mixed with `seed`: a stable per-instance seed.
fn mix(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A uniform number in `[0, 1)` from `seed`, `key` and `attempt`: the simulation's failure draw.
pub fn uniform(seed: u64, key: &str, attempt: u32) -> f64 {
    let mut z = mix(seed, key) ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
