//! The drive loop: scheduler ⇄ executors ⇄ checkpoint store.
//!
//! Each turn: start what the scheduler says (a real action only once its start is durable);
//! wait for outcomes; feed them to the scheduler; then the next turn commits everything that
//! changed, the outcomes and the starts they released, in one transaction before it starts
//! anything (or before it waits, when nothing starts). Dependents are started by the next turn's
//! `poll`, so they never start before their dependencies' success is durable. A simulation has no side
//! effects to protect: its virtual instants are group-committed every few milliseconds of wall
//! time, so a 3-million-instance simulation is not one commit per virtual instant.
//!
//! [`Driver`] holds one drive's state; each step of a turn is a method: [`Driver::judge_waves`],
//! [`Driver::dispatch`], [`Driver::gather`], [`Driver::absorb`] (an attempt's end, a signal, a
//! tick), [`Driver::check_cancel`], [`Driver::commit`], and at the end [`Driver::finish`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rewind_exec::{Attempt, Outcome as ExecOutcome, Registry, Report, Resolvers, Vars};
use rewind_model::{
    Action, AttemptOutcome, EventKind, InstanceId, Placeholder, Plan, RunId, RunState,
};
use rewind_scheduler::{Change, Config, Counts, Outcome, Priority, Restored, Scheduler, State};
use rewind_store::{AttemptRecord, Batch, InstanceRow, InstanceUpdate, NewEvent, RunEnd, Store};
use serde_json::{Value, json};

use crate::RuntimeError;
use crate::exec::{Event, Exec, RealExec, Signal, Signals, SimExec};
use crate::lease::{Lease, identity, run_lease, store_now_ms, sync_clock};
use crate::progress::{AttemptEnd, DriveStart, Observed, Observer, Progress, eta};
use crate::view::load_plan;

/// A simulation commits at least this often (wall time)...
const SIM_COMMIT_EVERY: Duration = Duration::from_millis(25);
/// ...or once this many instance changes are waiting.
const SIM_COMMIT_CHANGES: usize = 10_000;

/// How to drive a run.
pub struct DriveOptions<'o> {
    /// Executors for real runs.
    pub registry: Registry,
    /// Where progress goes.
    pub observer: &'o mut dyn Observer,
    /// Handle SIGINT and SIGTERM: the first stops dispatching and lets running attempts finish;
    /// the second stops them (they run again on resume).
    pub signals: bool,
    /// Least wall time between progress reports.
    pub progress_every: Duration,
    /// How often a run looks at the cancel flag and renews its lease while it waits.
    pub tick: Duration,
    /// What `${VAR}` reads: the process environment, plus any fixed values.
    pub vars: Vars,
}

/// Why a drive stopped before its run ended. The run stays resumable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A signal (SIGINT or SIGTERM).
    Signal(Signal),
    /// The observer asked to stop ([`Observer::stop_requested`]).
    StopRequest,
    /// Nothing could start and nothing was running while instances were pending: a scheduler
    /// bug, stopped rather than spun on.
    Stall,
    /// Handed off ([`Observer::hand_off_requested`]): the attempts on workers run on, for the
    /// next driver to adopt.
    HandOff,
}

impl StopReason {
    /// What stopped it, for messages and the log (`SIGINT`, `stop request`, `stall`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Signal(s) => s.name(),
            Self::StopRequest => "stop request",
            Self::Stall => "stall",
            Self::HandOff => "hand-off",
        }
    }
}

/// How a drive ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every instance succeeded or was skipped.
    Succeeded,
    /// Some instances failed or are blocked.
    Failed,
    /// `rewind cancel` stopped it.
    Cancelled,
    /// The drive stopped before the run ended; the run is resumable.
    Interrupted(StopReason),
    /// A wave failed more often than the run allows: the run keeps its targets and waits for
    /// an operator (`rewind resume`).
    Halted,
}

/// The result of driving a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The run.
    pub run: RunId,
    /// How it ended.
    pub ended: Ended,
    /// Instances per state.
    pub counts: Counts,
    /// The run's clock at the end (virtual for simulations): its makespan when it finished.
    pub clock: Duration,
    /// Targets restored.
    pub restored_targets: usize,
    /// All targets.
    pub targets: usize,
    /// Virtual-time simulation.
    pub simulated: bool,
    /// Lower bound on the makespan.
    pub lower_bound: Duration,
    /// Wall time this drive took.
    pub wall: Duration,
    /// Durable commits made.
    pub commits: u64,
    /// Per target (file order): when this drive saw it restored (`None`: not restored, or
    /// restored before this drive began).
    pub restored_at: Vec<Option<Duration>>,
    /// Why the run halted, when it did.
    pub halt_reason: Option<String>,
}

/// Drives a run until it ends or is interrupted, then releases the lease.
pub async fn drive<S: Store>(
    store: &S,
    lease: Lease,
    opts: DriveOptions<'_>,
) -> Result<Summary, RuntimeError> {
    let result = drive_held(store, &lease, opts, None).await;
    let released = lease.release(store).await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// [`drive`], with attempts run by workers (`run --dispatch workers`): the store is `dispatch`
/// too (PostgreSQL), written through its dispatch protocol. A simulation runs as [`drive`] does.
pub async fn drive_dispatched(
    store: &rewind_store::SqlStore,
    lease: Lease,
    opts: DriveOptions<'_>,
) -> Result<Summary, RuntimeError> {
    let result = drive_held(store, &lease, opts, Some(store.clone())).await;
    let released = lease.release(store).await;
    let summary = result?;
    released?;
    Ok(summary)
}

async fn drive_held<S: Store>(
    store: &S,
    lease: &Lease,
    opts: DriveOptions<'_>,
    remote: Option<rewind_store::SqlStore>,
) -> Result<Summary, RuntimeError> {
    let wall0 = Instant::now();
    let id = lease.run;
    let rec = store.run(id).await?.ok_or(RuntimeError::NoSuchRun(id))?;
    let plan = load_plan(&rec)?;
    let rows = store.instance_states(id).await?;
    if rec.state != RunState::Running {
        return Ok(ended_already(&plan, &rec, &rows, wall0));
    }
    if !rec.spec.simulated {
        safe_to_run(id, &plan)?;
        crate::env::check(plan.workflow(), &opts.vars)?;
        for step in &plan.workflow().steps {
            let kind = step.action.kind();
            if !opts.registry.supports(kind) {
                return Err(RuntimeError::Unsupported {
                    step: step.id.to_string(),
                    kind: kind.to_owned(),
                    available: opts.registry.kinds().join(", "),
                });
            }
        }
    }
    let mut driver = Driver::new(store, lease, &plan, &rec, rows, opts, wall0)?;
    if let (Some(remote), false) = (remote, rec.spec.simulated) {
        let dispatched = remote.run_dispatched(id).await?;
        let mut r = crate::remote::RemoteExec::new(
            remote,
            id,
            &lease.owner,
            rec.spec.started_unix_ms,
            driver.tick,
        )
        .await?;
        // The attempts the previous coordinator left open whose dispatch row is queued, claimed
        // or done still run (or ran) on a worker: adopted, their outcome awaited. The others (no
        // row, or lost) run again as new attempts; a queued row of theirs must not run too.
        driver.adopt(&mut r, &dispatched);
        r.withdraw(&driver.open_attempts).await?;
        driver.exec = Exec::Remote(Box::new(r));
    }
    driver.run().await
}

/// Refuses a real run this release will not execute. Only a run stored by an earlier release can
/// be one (its snapshot loads under that release's rules, see [`load_plan`]): a `program` built
/// from a placeholder would start whatever the targets or an output name.
pub fn check_runnable(rec: &rewind_store::RunRecord) -> Result<(), RuntimeError> {
    if rec.spec.simulated {
        return Ok(());
    }
    safe_to_run(rec.spec.id, &load_plan(rec)?)
}

fn safe_to_run(run: RunId, plan: &Plan) -> Result<(), RuntimeError> {
    let wf = plan.workflow();
    let why = if let Some(step) = wf.templated_programs().first() {
        format!(
            "step `{step}` builds its `program` from a placeholder, so the targets or an output would name the program it runs"
        )
    } else if let Some(conn) = wf.templated_urls().first() {
        format!(
            "connection `{conn}` takes its scheme or a query parameter's name from a placeholder, so the targets or an output would choose the database a step writes to"
        )
    } else {
        return Ok(());
    };
    Err(RuntimeError::UnsafeSnapshot { run, why })
}

/// The summary of a run that is not running (ended, or halted): nothing to drive.
fn ended_already(
    plan: &Plan,
    rec: &rewind_store::RunRecord,
    rows: &[InstanceRow],
    wall0: Instant,
) -> Summary {
    let restored: Vec<Restored> = rows.iter().map(restored_row).collect();
    let mut counts = Counts::default();
    for r in &restored {
        counts.add(r.state);
    }
    let ended = match rec.state {
        RunState::Succeeded => Ended::Succeeded,
        RunState::Cancelled => Ended::Cancelled,
        RunState::Halted => Ended::Halted,
        RunState::Failed => Ended::Failed,
        // Not reached: the caller drives a running run.
        RunState::Running => Ended::Interrupted(StopReason::StopRequest),
    };
    let sched = Scheduler::restore(plan, Config::default(), restored, Duration::ZERO);
    Summary {
        run: rec.spec.id,
        ended,
        counts,
        clock: duration(rec.finished_s.unwrap_or(rec.clock_s)),
        restored_targets: sched.restored_targets(),
        targets: plan.targets().len(),
        simulated: rec.spec.simulated,
        lower_bound: duration(rec.spec.lower_bound_s),
        wall: wall0.elapsed(),
        commits: 0,
        restored_at: Vec::new(),
        halt_reason: rec.reason.clone().filter(|_| ended == Ended::Halted),
    }
}

fn restored_row(r: &InstanceRow) -> Restored {
    Restored {
        state: r.state,
        attempts: r.attempts,
        failures: r.failures,
        retry_at: r.retry_at_s.map(duration),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn duration(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

fn wall_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A stored priority; runs stored before the `customers` policy keep their critical path.
pub(crate) fn parse_priority(s: &str) -> Priority {
    s.parse().unwrap_or(Priority::CriticalPath)
}

/// What templates of each step read from dependencies, and the shared per-step data of attempts.
pub(crate) struct Inputs {
    run: RunId,
    workdir: std::path::PathBuf,
    cwd: std::path::PathBuf,
    actions: Vec<Arc<Action>>,
    connections: Arc<Vec<rewind_model::Connection>>,
    vars: Arc<Vars>,
    /// Per step: indices of the steps whose outputs its templates read.
    reads: Vec<Vec<usize>>,
    /// Steps whose outputs some template reads.
    read_steps: BTreeSet<usize>,
}

impl Inputs {
    pub(crate) fn new(plan: &Plan, rec: &rewind_store::RunRecord, vars: Vars) -> Self {
        let wf = plan.workflow();
        // The outputs each step reads: those its templates name, and for an audit, every
        // dependency's (with one instance per dependent).
        let reads: Vec<Vec<usize>> = wf
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v: Vec<usize> = match &s.action {
                    Action::Audit(_) => wf.need_indices(i).to_vec(),
                    _ => wf
                        .step_templates(s)
                        .iter()
                        .flat_map(|t| t.placeholders())
                        .filter_map(|p| match p {
                            Placeholder::Needs { step, .. } => wf.step_index(step),
                            _ => None,
                        })
                        .collect(),
                };
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let read_steps = reads.iter().flatten().copied().collect();
        Self {
            run: rec.spec.id,
            workdir: rec.spec.workdir.clone().into(),
            cwd: rec.spec.cwd.clone().into(),
            actions: wf.steps.iter().map(|s| Arc::new(s.action.clone())).collect(),
            connections: Arc::new(wf.connections.clone()),
            vars: Arc::new(vars),
            reads,
            read_steps,
        }
    }

    pub(crate) fn attempt(
        &self,
        plan: &Plan,
        id: InstanceId,
        attempt: u32,
        outputs: &HashMap<u32, Arc<Value>>,
    ) -> Attempt {
        let step = plan.instance(id).step as usize;
        let key = plan.key(id);
        let mut needs = std::collections::BTreeMap::new();
        for &x in &self.reads[step] {
            if let Some(dep) = plan.dependency_instance(id, x) {
                let out = if plan.instance(dep).skipped {
                    None
                } else {
                    Some(
                        outputs
                            .get(&(dep.index() as u32))
                            .cloned()
                            .unwrap_or_else(|| Arc::new(json!({}))),
                    )
                };
                needs.insert(plan.workflow().steps[x].id.clone(), out);
            }
        }
        let idempotency_key =
            uuid::Uuid::new_v5(self.run.as_uuid(), key.to_string().as_bytes()).to_string();
        Attempt {
            run_id: self.run,
            restore_point: plan.restore_point(),
            idempotency_key,
            key,
            attempt,
            target: plan.target_of(id).cloned(),
            group_value: plan.group_of(id).map(|g| g.value.clone()),
            needs,
            workdir: self.workdir.clone(),
            cwd: self.cwd.clone(),
            timeout: plan.step_of(id).policy.timeout,
            action: self.actions[step].clone(),
            connections: self.connections.clone(),
            vars: self.vars.clone(),
            resolvers: Resolvers::default(),
        }
    }
}

impl Inputs {
    /// The attempt a worker runs for a dispatched one: as [`Inputs::attempt`] on the
    /// coordinator, with the dependency outputs its payload carries.
    pub(crate) fn remote_attempt(
        &self,
        plan: &Plan,
        id: InstanceId,
        attempt: u32,
        needs: std::collections::BTreeMap<rewind_model::StepId, Option<Value>>,
    ) -> Attempt {
        let mut a = self.attempt(plan, id, attempt, &HashMap::new());
        a.needs = needs.into_iter().map(|(k, v)| (k, v.map(Arc::new))).collect();
        a
    }
}

/// Accumulates one group commit.
#[derive(Default)]
struct Batcher {
    batch: Batch,
    started: HashMap<u32, f64>,
}

impl Batcher {
    fn event(&mut self, at: Duration, kind: EventKind, key: Option<String>, detail: Option<Value>) {
        self.event_text(at, kind, key, detail.map(|d| d.to_string()));
    }

    /// An event whose detail is already JSON text: the hot path (two events per attempt) writes
    /// `{"attempt":N}` without building a JSON value.
    fn event_text(
        &mut self,
        at: Duration,
        kind: EventKind,
        key: Option<String>,
        detail: Option<String>,
    ) {
        self.batch.events.push(NewEvent { at_s: secs(at), wall: String::new(), kind, key, detail });
    }

    /// Records scheduler changes; `report` is the attempt report that caused them, if any.
    fn changes(
        &mut self,
        plan: &Plan,
        sched: &Scheduler<'_>,
        changes: Vec<Change>,
        report: Option<(InstanceId, &Report)>,
    ) {
        for c in changes {
            let id = c.id();
            let idx = id.index() as u32;
            let mine = report.filter(|(r, _)| *r == id).map(|(_, rep)| rep);
            let error = mine.and_then(|r| r.error.clone());
            let mut u = InstanceUpdate {
                idx,
                state: c.state(),
                attempts: sched.attempts(id),
                failures: sched.failures(id),
                retry_at_s: None,
                finished_s: None,
                output: None,
                error: None,
            };
            let key = plan.key(id).to_string();
            let attempt = sched.attempts(id);
            match c {
                Change::Started { attempt, at, .. } => {
                    self.started.insert(idx, secs(at));
                    self.batch.attempts.push(AttemptRecord {
                        idx,
                        attempt,
                        started_s: secs(at),
                        ended_s: None,
                        outcome: None,
                        exit_code: None,
                        error: None,
                        stdout_tail: None,
                        stderr_tail: None,
                    });
                    self.event_text(
                        at,
                        EventKind::InstanceStarted,
                        Some(key),
                        Some(format!("{{\"attempt\":{attempt}}}")),
                    );
                }
                Change::Succeeded { at, .. } => {
                    u.finished_s = Some(secs(at));
                    u.output = mine.and_then(|r| r.output.as_ref()).map(Value::to_string);
                    self.event_text(
                        at,
                        EventKind::InstanceSucceeded,
                        Some(key),
                        Some(format!("{{\"attempt\":{attempt}}}")),
                    );
                }
                Change::RetryScheduled { attempt, at, retry_at, .. } => {
                    u.retry_at_s = Some(secs(retry_at));
                    u.error.clone_from(&error);
                    let detail =
                        json!({"attempt": attempt, "error": error, "retry_at_s": secs(retry_at)});
                    self.event(at, EventKind::InstanceRetryScheduled, Some(key), Some(detail));
                }
                Change::Failed { at, .. } => {
                    u.finished_s = Some(secs(at));
                    u.error.clone_from(&error);
                    let detail = json!({"attempt": attempt, "error": error});
                    self.event(at, EventKind::InstanceFailed, Some(key), Some(detail));
                }
                Change::Blocked { by, at, .. } => {
                    let by = plan.key(by).to_string();
                    u.finished_s = Some(secs(at));
                    u.error = Some(format!("blocked: {by} failed"));
                    self.event(at, EventKind::InstanceBlocked, Some(key), Some(json!({"by": by})));
                }
                Change::Cancelled { at, .. } => {
                    u.finished_s = Some(secs(at));
                    self.event(at, EventKind::InstanceCancelled, Some(key), None);
                }
                Change::Interrupted { at, .. } => {
                    self.event_text(
                        at,
                        EventKind::InstanceInterrupted,
                        Some(key),
                        Some(format!("{{\"attempt\":{attempt}}}")),
                    );
                }
            }
            self.batch.instances.push(u);
        }
    }

    fn attempt_end(
        &mut self,
        id: InstanceId,
        attempt: u32,
        at: Duration,
        report: &Report,
        outcome: Outcome,
    ) {
        let idx = id.index() as u32;
        let started_s = self.started.remove(&idx).unwrap_or(secs(at));
        let outcome = match outcome {
            Outcome::Succeeded => AttemptOutcome::Succeeded,
            Outcome::Failed { .. } => AttemptOutcome::Failed,
            Outcome::Cancelled => AttemptOutcome::Cancelled,
            Outcome::Interrupted => AttemptOutcome::Interrupted,
        };
        let tail = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.batch.attempts.push(AttemptRecord {
            idx,
            attempt,
            started_s,
            ended_s: Some(secs(at)),
            outcome: Some(outcome),
            exit_code: report.exit_code,
            error: report.error.clone(),
            stdout_tail: tail(&report.stdout_tail),
            stderr_tail: tail(&report.stderr_tail),
        });
    }

    fn take(&mut self, clock: Duration) -> Batch {
        let wall = wall_now();
        let mut b = std::mem::take(&mut self.batch);
        for e in &mut b.events {
            e.wall.clone_from(&wall);
        }
        b.clock_s = secs(clock);
        b.heartbeat_unix_ms = store_now_ms();
        b
    }
}

/// Why no new instance starts: the drive is stopping, or the run is halting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    Stop(StopReason),
    Halt,
}

/// One drive of one run: the scheduler, the executors and the batch being prepared.
struct Driver<'p, 'o, S: Store> {
    store: &'p S,
    lease: &'p Lease,
    plan: &'p Plan,
    id: RunId,
    simulated: bool,
    lower_bound: Duration,
    halt_rate: f64,
    sched: Scheduler<'p>,
    inputs: Inputs,
    /// Outputs of succeeded instances whose step some template reads.
    outputs: HashMap<u32, Arc<Value>>,
    exec: Exec,
    signals: Signals,
    observer: &'o mut dyn Observer,
    progress_every: Duration,
    tick: Duration,
    batch: Batcher,
    commits: u64,
    /// Set when no new instance may start.
    draining: Option<Drain>,
    /// Running attempts were told to stop (a second signal, or a cancel).
    forced: bool,
    /// A forced stop of a run executed by workers: handed off at the next turn.
    hand_off_now: bool,
    /// Why the run is halting, once a wave failed too often.
    halted: Option<String>,
    /// Attempts whose orchestrator died (instance, attempt): ended as interrupted at start.
    open_attempts: Vec<(u32, u32)>,
    /// Attempts left open that still run on workers, adopted (instance, attempt).
    adopted: Vec<(u32, u32)>,
    resumed: bool,
    queue: VecDeque<Event>,
    wall0: Instant,
    last_commit: Instant,
    last_check: Instant,
    last_progress: Option<Instant>,
    /// Real durations of succeeded attempts, and their estimates, per step: what the ETA
    /// learns from (real runs only).
    observed: Observed,
    /// The wall instant a real run's clock counts from.
    origin: SystemTime,
}

impl<'p, 'o, S: Store> Driver<'p, 'o, S> {
    fn new(
        store: &'p S,
        lease: &'p Lease,
        plan: &'p Plan,
        rec: &rewind_store::RunRecord,
        rows: Vec<InstanceRow>,
        opts: DriveOptions<'o>,
        wall0: Instant,
    ) -> Result<Self, RuntimeError> {
        let simulated = rec.spec.simulated;
        let started_wall = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(rec.spec.started_unix_ms).unwrap_or(0));
        let now0 = if simulated {
            duration(rec.clock_s)
        } else {
            SystemTime::now().duration_since(started_wall).unwrap_or(Duration::ZERO)
        };
        let config = Config {
            seed: rec.spec.seed,
            priority: parse_priority(&rec.spec.priority),
            max_running: rec.spec.max_running.map(|m| m as usize),
        };
        let inputs = Inputs::new(plan, rec, opts.vars.clone());
        let mut outputs = HashMap::new();
        let mut open_attempts = Vec::new();
        for r in &rows {
            if r.state == State::Running {
                open_attempts.push((r.idx, r.attempts));
            }
            let step = plan.instance(InstanceId::new(r.idx as usize)).step as usize;
            if inputs.read_steps.contains(&step)
                && let Some(o) = r.output.as_deref().and_then(|o| serde_json::from_str(o).ok())
            {
                outputs.insert(r.idx, Arc::new(o));
            }
        }
        let resumed = rows.iter().any(|r| r.attempts > 0);
        let restored: Vec<Restored> = rows.iter().map(restored_row).collect();
        drop(rows);
        let wave = u16::try_from(rec.wave).unwrap_or(u16::MAX);
        let sched = Scheduler::restore_staged(plan, config, restored, now0, &rec.spec.waves, wave);
        let exec = if simulated {
            Exec::Sim(SimExec::new(now0, rec.spec.seed, rec.spec.fail_rate))
        } else {
            Exec::Real(RealExec::new(rec.spec.started_unix_ms, opts.registry.clone(), opts.tick))
        };
        Ok(Self {
            store,
            lease,
            plan,
            id: rec.spec.id,
            simulated,
            lower_bound: duration(rec.spec.lower_bound_s),
            halt_rate: rec.spec.halt_rate,
            sched,
            inputs,
            outputs,
            exec,
            signals: Signals::new(opts.signals)?,
            observer: opts.observer,
            progress_every: opts.progress_every,
            // Heartbeats (a commit each tick) at least three times per run lease.
            tick: opts.tick.min(run_lease() / 3).max(Duration::from_millis(10)),
            batch: Batcher::default(),
            commits: 0,
            draining: None,
            forced: false,
            hand_off_now: false,
            halted: None,
            open_attempts,
            adopted: Vec::new(),
            resumed,
            queue: VecDeque::new(),
            wall0,
            last_commit: Instant::now(),
            last_check: Instant::now(),
            last_progress: None,
            observed: Observed::new(plan.workflow().steps.len()),
            origin: started_wall,
        })
    }

    /// The loop, from the first commit to the summary.
    async fn run(mut self) -> Result<Summary, RuntimeError> {
        self.start().await?;
        loop {
            let now = self.exec.now();
            if self.draining.is_none() && self.observer.stop_requested() {
                self.queue.push_back(Event::Stop);
            }
            if matches!(self.exec, Exec::Remote(_))
                && (self.hand_off_now || self.observer.hand_off_requested())
            {
                return self.hand_off(now).await;
            }
            self.judge_waves(now);
            if self.queue.is_empty() && self.draining.is_none() && !self.sched.is_cancelling() {
                self.dispatch(now).await?;
            }
            if self.queue.is_empty()
                && self.exec.running() == 0
                && (self.sched.is_finished() || self.draining.is_some())
            {
                break;
            }
            if !self.gather(now).await? {
                break;
            }
            let now = self.exec.now();
            let mut check_cancel = self.last_check.elapsed() >= self.tick;
            while let Some(ev) = self.queue.pop_front() {
                check_cancel |= self.absorb(ev, now);
            }
            if check_cancel && self.check_cancel(now).await? {
                continue;
            }
            // A simulation's attempts have no side effects: it commits every few milliseconds of
            // wall time instead of every virtual instant (its scheduling is the same either way).
            if self.simulated {
                if self.batch.batch.instances.len() < SIM_COMMIT_CHANGES
                    && self.last_commit.elapsed() < SIM_COMMIT_EVERY
                {
                    continue;
                }
                self.commit(now).await?;
            } else if check_cancel {
                // A tick: renew the lease, even with nothing else to write, on the store's
                // clock as measured now.
                sync_clock(self.store).await?;
                self.commit(now).await?;
            }
            // Otherwise a real run's outcomes are not committed here but with the next turn's
            // starts, in one transaction: `dispatch` commits before it starts anything, `gather`
            // before it waits, `finish` at the end. So an outcome is still durable before any
            // dependent starts (its start is in the same commit), at one commit per hop, not two.
            // Progress tells what is durable: a real run's is reported after that commit
            // (`commit`), never of outcomes still in the batch.
            if self.simulated || self.batch.batch.is_empty() {
                self.report_progress(now, false);
            }
        }
        self.finish().await
    }

    /// Ends the attempts the previous orchestrator died in (they run again), logs the start or
    /// resume, and makes both durable before anything runs.
    async fn start(&mut self) -> Result<(), RuntimeError> {
        let now0 = self.exec.now();
        self.observer.drive_started(&DriveStart {
            run: self.id,
            workflow: &self.plan.workflow().name,
            simulated: self.simulated,
            resumed: self.resumed,
            clock: now0,
            origin: self.origin,
        });
        let attempts = if self.adopted.is_empty() && self.open_attempts.is_empty() {
            Vec::new()
        } else {
            self.store.attempts(self.id).await?
        };
        // An adopted attempt's end is recorded with its start.
        let adopted: std::collections::HashSet<&(u32, u32)> = self.adopted.iter().collect();
        for a in attempts.iter().filter(|a| adopted.contains(&(a.idx, a.attempt))) {
            self.batch.started.insert(a.idx, a.started_s);
        }
        if !self.open_attempts.is_empty() {
            let by_key: HashMap<(u32, u32), &AttemptRecord> =
                attempts.iter().map(|a| ((a.idx, a.attempt), a)).collect();
            for (idx, attempt) in self.open_attempts.clone() {
                let started_s = by_key.get(&(idx, attempt)).map_or(secs(now0), |a| a.started_s);
                self.batch.batch.attempts.push(AttemptRecord {
                    idx,
                    attempt,
                    started_s,
                    ended_s: Some(secs(now0)),
                    outcome: Some(AttemptOutcome::Interrupted),
                    exit_code: None,
                    error: Some(
                        "the orchestrator stopped during this attempt; it runs again".into(),
                    ),
                    stdout_tail: None,
                    stderr_tail: None,
                });
                let iid = InstanceId::new(idx as usize);
                self.tell_attempt(iid);
                self.batch.batch.instances.push(InstanceUpdate {
                    idx,
                    state: State::Pending,
                    attempts: self.sched.attempts(iid),
                    failures: self.sched.failures(iid),
                    retry_at_s: None,
                    finished_s: None,
                    output: None,
                    error: None,
                });
                self.batch.event(
                    now0,
                    EventKind::InstanceInterrupted,
                    Some(self.plan.key(iid).to_string()),
                    Some(json!({"attempt": attempt})),
                );
            }
            // None of them starts again while a process of its interrupted attempt still runs
            // on this host (orphans.rs).
            if !self.simulated {
                let keys = self
                    .open_attempts
                    .iter()
                    .map(|&(i, _)| self.plan.key(InstanceId::new(i as usize)).to_string())
                    .collect();
                let stopped =
                    crate::orphans::settle(self.id, keys, secs(now0), &mut *self.observer).await?;
                self.batch.batch.events.extend(stopped);
            }
        }
        let changes = self.sched.take_changes();
        self.batch.changes(self.plan, &self.sched, changes, None);
        let who = identity().await;
        let detail = json!({
            "owner": self.lease.owner,
            "took_over": self.lease.took_over,
            "user": who.user,
            "host": who.host,
            "interrupted_attempts": self.open_attempts.len(),
            "adopted_attempts": self.adopted.len(),
            "counts": self.sched.counts(),
        });
        if !self.simulated {
            // The watchdog that stops step processes if rewind dies: started here, off the async
            // threads, rather than by the first step.
            let ready = tokio::task::spawn_blocking(rewind_exec::ready_watchdog).await;
            if let Ok(Err(e)) = ready {
                self.observer.note(&format!(
                    "the watchdog cannot start ({e}): steps fail until it can (they are retried)"
                ));
            }
        }
        let kind = if self.resumed { EventKind::RunResumed } else { EventKind::RunStarted };
        self.batch.event(now0, kind, None, Some(detail));
        if let Some(prev) = &self.lease.took_over {
            self.observer
                .note(&format!("took the run over from {prev}, which is no longer running"));
        }
        if !self.open_attempts.is_empty() {
            self.observer.note(&format!(
                "{} attempt(s) were running when the previous orchestrator stopped; they run again with the same idempotency keys",
                self.open_attempts.len()
            ));
        }
        if !self.adopted.is_empty() {
            self.observer.note(&format!(
                "{} attempt(s) dispatched by the previous coordinator still run (or ran) on workers: adopted, not run again",
                self.adopted.len()
            ));
        }
        self.commit(now0).await
    }

    /// Staged waves: once the open wave has ended, judges it, then opens the next or halts.
    fn judge_waves(&mut self, now: Duration) {
        while self.draining.is_none()
            && !self.sched.is_cancelling()
            && let Some(w) = self.sched.wave_ended()
        {
            let rate = w.failure_rate();
            let detail = json!({
                "wave": w.wave, "waves": w.waves, "targets": w.targets, "failed": w.failed,
                "failure_rate": rate, "halt_on_failure_rate": self.halt_rate,
            });
            if rate > self.halt_rate {
                let id = self.id;
                let reason = format!(
                    "halted after wave {} of {}: {} of its {} targets failed ({:.1}%, more than the {:.1}% allowed); look at `rewind status {id}`, then `rewind resume {id}` runs the failed ones again and continues (`--accept-failures` continues without them)",
                    w.wave,
                    w.waves,
                    w.failed,
                    w.targets,
                    100.0 * rate,
                    100.0 * self.halt_rate
                );
                self.observer.note(&reason);
                self.batch.event(now, EventKind::RunHalting, None, Some(detail));
                self.halted = Some(reason);
                self.draining = Some(Drain::Halt);
            } else if let Some(next) = self.sched.open_next_wave() {
                self.observer.note(&format!(
                    "wave {} of {} done ({} of {} targets failed); wave {next} starts",
                    w.wave, w.waves, w.failed, w.targets
                ));
                self.batch.event(now, EventKind::WavePassed, None, Some(detail));
                self.batch.event(now, EventKind::WaveOpened, None, Some(json!({"wave": next})));
                self.batch.batch.wave = Some(u32::from(next));
            }
        }
    }

    /// Starts what the scheduler says. A real action has side effects: its start is durable
    /// before it begins, so after a crash the record says which attempts may have been under
    /// way.
    async fn dispatch(&mut self, now: Duration) -> Result<(), RuntimeError> {
        let dispatches = self.sched.poll(now);
        let changes = self.sched.take_changes();
        self.batch.changes(self.plan, &self.sched, changes, None);
        match &mut self.exec {
            Exec::Sim(s) => {
                for d in dispatches {
                    s.start(d.id, d.attempt, self.plan.estimate(d.id), || {
                        self.plan.key(d.id).to_string()
                    });
                }
            }
            Exec::Real(_) | Exec::Remote(_) => {
                if dispatches.is_empty() {
                    return Ok(());
                }
                self.commit(now).await?;
                for d in dispatches {
                    let attempt = self.inputs.attempt(self.plan, d.id, d.attempt, &self.outputs);
                    match &mut self.exec {
                        Exec::Real(r) => r.start(d.id, d.attempt, attempt),
                        Exec::Remote(r) => {
                            r.start(
                                d.id,
                                d.attempt,
                                &attempt,
                                self.plan.step_of(d.id).queue.as_ref(),
                            );
                        }
                        Exec::Sim(_) => {}
                    }
                }
                if let Exec::Remote(r) = &mut self.exec {
                    r.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// Fills the queue with what happened: attempt ends ready now, or else (after making what
    /// happened so far durable) the next end, retry time, signal or tick. `false` when the drive
    /// must stop: nothing runs, nothing is due, yet instances are pending.
    async fn gather(&mut self, now: Duration) -> Result<bool, RuntimeError> {
        if self.queue.is_empty() {
            let ready = self.exec.ready()?;
            self.queue.extend(ready);
        }
        if !self.queue.is_empty() {
            return Ok(true);
        }
        // Real waits can be long: make what happened so far durable first. (A simulation does
        // not wait; its clock jumps.)
        if !self.simulated && !self.batch.batch.is_empty() {
            self.commit(now).await?;
        }
        if self.exec.running() == 0
            && self.sched.next_wakeup().is_none()
            && !self.sched.is_finished()
        {
            // A scheduler bug: stop rather than spin; the run stays resumable.
            self.observer.note("no instance can start and none is running; stopping");
            self.draining = Some(Drain::Stop(StopReason::Stall));
            return Ok(false);
        }
        let events = self.exec.wait(self.sched.next_wakeup(), &mut self.signals).await?;
        self.queue.extend(events);
        Ok(true)
    }

    /// Handles one event. Returns whether the cancel flag is due a look.
    fn absorb(&mut self, ev: Event, now: Duration) -> bool {
        match ev {
            Event::Done { id, attempt, report } => self.attempt_ended(id, attempt, &report, now),
            Event::Wake => {}
            Event::Tick => return true,
            Event::Note(note) => self.observer.note(&note),
            Event::Signal(sig) => self.stop(StopReason::Signal(sig), now),
            Event::Stop => self.stop(StopReason::StopRequest, now),
        }
        false
    }

    /// An attempt's end: recorded, fed to the scheduler, its output kept if a template reads it.
    fn attempt_ended(&mut self, iid: InstanceId, attempt: u32, report: &Report, now: Duration) {
        let outcome = match report.outcome {
            ExecOutcome::Succeeded => Outcome::Succeeded,
            ExecOutcome::Failed { retryable } => Outcome::Failed { retryable },
            ExecOutcome::Cancelled if self.sched.is_cancelling() => Outcome::Cancelled,
            ExecOutcome::Cancelled => Outcome::Interrupted,
        };
        self.batch.attempt_end(iid, attempt, now, report, outcome);
        self.tell_attempt(iid);
        if let (Outcome::Succeeded, Some(out)) = (outcome, &report.output)
            && self.inputs.read_steps.contains(&(self.plan.instance(iid).step as usize))
        {
            self.outputs.insert(iid.index() as u32, Arc::new(out.clone()));
        }
        if !self.simulated && outcome == Outcome::Succeeded {
            let started = self.batch.batch.attempts.last().map_or(secs(now), |a| a.started_s);
            let step = self.plan.instance(iid).step as usize;
            self.observed.add(step, duration(secs(now) - started), self.plan.estimate(iid));
        }
        self.sched.on_outcome(iid, outcome, now);
        let changes = self.sched.take_changes();
        if let Outcome::Failed { .. } = outcome {
            let retry_in = changes.iter().find_map(|c| match c {
                Change::RetryScheduled { id, retry_at, .. } if *id == iid => {
                    Some(retry_at.saturating_sub(now))
                }
                _ => None,
            });
            let error = report.error.as_deref().unwrap_or("failed");
            self.observer.failure(&self.plan.key(iid).to_string(), attempt, error, retry_in);
        }
        self.batch.changes(self.plan, &self.sched, changes, Some((iid, report)));
    }

    /// Tells the observer of the attempt of `iid` that was just recorded (the batch's last).
    fn tell_attempt(&mut self, iid: InstanceId) {
        let Some(a) = self.batch.batch.attempts.last() else { return };
        let key = self.plan.key(iid);
        let pools = &self.plan.workflow().resources;
        let pool = self.plan.pool_of(iid).and_then(|p| pools.get(p)).map(|p| p.name.as_str());
        self.observer.attempt_ended(&AttemptEnd {
            key: &key,
            attempt: a.attempt,
            pool,
            started: duration(a.started_s),
            ended: duration(a.ended_s.unwrap_or(a.started_s)),
            outcome: a.outcome.unwrap_or(AttemptOutcome::Interrupted),
            exit_code: a.exit_code,
            error: a.error.as_deref(),
        });
    }

    /// A signal or a stop request: the first stops dispatching and lets running attempts
    /// finish; the next (or the first, with nothing running) stops them too.
    fn stop(&mut self, reason: StopReason, now: Duration) {
        let name = reason.name();
        if self.draining.is_none() && !self.simulated && self.exec.running() > 0 {
            self.draining = Some(Drain::Stop(reason));
            self.observer.note(&format!(
                "{name}: no new steps start; waiting for {} running action(s) to finish (send it again to stop them now)",
                self.exec.running()
            ));
        } else if matches!(self.exec, Exec::Remote(_)) && self.exec.running() > 0 {
            // Attempts on workers cannot be stopped from here, and closing them would let the
            // next driver start them again beside the ones still running: the run is handed off
            // instead (they stay open, for the next driver to adopt; `rewind cancel` stops them).
            self.draining = Some(Drain::Stop(reason));
            self.forced = true;
            self.hand_off_now = true;
            self.observer.note(&format!(
                "{name}: {} attempt(s) on workers run on; the next coordinator (rewind coordinate, or rewind resume) adopts them; rewind cancel stops them",
                self.exec.running()
            ));
        } else {
            self.draining = Some(Drain::Stop(reason));
            self.forced = true;
            let running = self.exec.running();
            self.observer.note(&if running == 0 {
                format!("{name}: stopping; the run is resumable")
            } else {
                format!("{name}: stopping {running} running action(s); they run again on resume")
            });
            let stopped = self.exec.stop_all();
            self.queue.extend(stopped);
        }
        self.batch.event(
            now,
            EventKind::RunInterrupting,
            None,
            Some(json!({"signal": name, "forced": self.forced})),
        );
    }

    /// Looks at the cancel flag (`rewind cancel`); when set, cancels everything pending and stops
    /// what runs. Returns whether it did.
    async fn check_cancel(&mut self, now: Duration) -> Result<bool, RuntimeError> {
        self.last_check = Instant::now();
        if self.sched.is_cancelling() || !self.store.cancel_requested(self.id).await? {
            return Ok(false);
        }
        self.observer.note("cancel requested: stopping");
        self.sched.cancel(now);
        let changes = self.sched.take_changes();
        self.batch.changes(self.plan, &self.sched, changes, None);
        self.batch.event(
            now,
            EventKind::RunCancelling,
            None,
            Some(json!({"running": self.exec.running()})),
        );
        let stopped = self.exec.stop_all();
        self.queue.extend(stopped);
        Ok(true)
    }

    /// Writes the batch in one transaction (renewing the lease).
    async fn commit(&mut self, clock: Duration) -> Result<(), RuntimeError> {
        let batch = self.batch.take(clock);
        self.store.commit(self.id, &self.lease.owner, &batch).await?;
        if let Exec::Remote(r) = &mut self.exec {
            // The outcomes read from ended dispatch rows are durable now.
            r.forget_ended(false).await?;
        }
        self.commits += 1;
        self.last_commit = Instant::now();
        if !self.simulated {
            // What it shows is durable now (see `run`).
            self.report_progress(clock, false);
        }
        Ok(())
    }

    fn report_progress(&mut self, now: Duration, last: bool) {
        if !last && self.last_progress.is_some_and(|t| t.elapsed() < self.progress_every) {
            return;
        }
        self.last_progress = Some(Instant::now());
        let observed = (!self.simulated).then_some(&self.observed);
        let p = progress(self.plan, &self.sched, now, self.simulated, observed);
        self.observer.progress(&p);
    }

    /// How the drive ended, written with the last commit.
    async fn finish(mut self) -> Result<Summary, RuntimeError> {
        if let Exec::Remote(r) = &mut self.exec {
            r.withdraw(&[]).await?;
        }
        let now = self.exec.now();
        // A cancel asked for while the run was halting wins: the operator wants it over.
        if self.halted.is_some()
            && !self.sched.is_cancelling()
            && self.store.cancel_requested(self.id).await?
        {
            self.sched.cancel(now);
            let changes = self.sched.take_changes();
            self.batch.changes(self.plan, &self.sched, changes, None);
            self.halted = None;
        }
        let counts = self.sched.counts();
        let ended = self.ended(&counts);
        let (state, reason) = match ended {
            Ended::Interrupted(reason) => {
                self.batch.event(
                    now,
                    EventKind::RunInterrupted,
                    None,
                    Some(json!({"signal": reason.name(), "counts": counts})),
                );
                (None, None)
            }
            Ended::Halted => (Some(RunState::Halted), self.halted.clone()),
            Ended::Succeeded => (Some(RunState::Succeeded), None),
            Ended::Cancelled => (
                Some(RunState::Cancelled),
                Some("cancelled by an operator (rewind cancel)".to_owned()),
            ),
            Ended::Failed => (
                Some(RunState::Failed),
                Some(format!("{} failed, {} blocked", counts.failed, counts.blocked)),
            ),
        };
        if let Some(state) = state {
            if state == RunState::Halted {
                let detail = json!({"reason": reason, "counts": counts});
                self.batch.event(now, EventKind::RunHalted, None, Some(detail));
            } else {
                let detail = json!({"state": state, "counts": counts, "clock_s": secs(now)});
                self.batch.event(now, EventKind::RunFinished, None, Some(detail));
            }
            self.batch.batch.end = Some(RunEnd { state, finished_s: secs(now), reason });
        }
        self.commit(now).await?;
        if let Exec::Remote(r) = &mut self.exec {
            // No next turn: the ended rows just recorded go now.
            r.forget_ended(true).await?;
        }
        self.report_progress(now, true);
        Ok(self.summary(ended, now))
    }

    fn summary(&self, ended: Ended, now: Duration) -> Summary {
        Summary {
            run: self.id,
            ended,
            counts: self.sched.counts(),
            clock: now,
            restored_targets: self.sched.restored_targets(),
            targets: self.plan.targets().len(),
            simulated: self.simulated,
            lower_bound: self.lower_bound,
            wall: self.wall0.elapsed(),
            commits: self.commits,
            restored_at: (0..self.plan.targets().len())
                .map(|t| self.sched.target_restored_at(t))
                .collect(),
            halt_reason: self.halted.clone().filter(|_| ended == Ended::Halted),
        }
    }

    /// Hands the run off ([`Observer::hand_off_requested`]): commits what happened and ends the
    /// drive interrupted, leaving the attempts on workers running and their dispatch rows as
    /// they are, for the next driver to adopt ([`Driver::adopt`]) rather than run again.
    async fn hand_off(mut self, now: Duration) -> Result<Summary, RuntimeError> {
        let running = self.exec.running();
        self.observer.note(&format!(
            "handing the run off: {running} attempt(s) on workers run on, for the next coordinator to adopt"
        ));
        let detail = json!({
            "signal": StopReason::HandOff.name(),
            "running": running,
            "counts": self.sched.counts(),
        });
        self.batch.event(now, EventKind::RunInterrupted, None, Some(detail));
        self.commit(now).await?;
        self.report_progress(now, true);
        Ok(self.summary(Ended::Interrupted(StopReason::HandOff), now))
    }

    /// Adopts the attempts the previous driver left open whose dispatch row (`dispatched`) is
    /// queued, claimed or done: they run, or ran, on a worker; the scheduler holds them running
    /// and `r` waits for their rows. [`Driver::open_attempts`] keeps the others (no row, or a
    /// lost one), which end interrupted and run again.
    fn adopt(
        &mut self,
        r: &mut crate::remote::RemoteExec,
        dispatched: &[rewind_store::DispatchedAttempt],
    ) {
        let rows: HashMap<(u32, u32), &rewind_store::DispatchedAttempt> =
            dispatched.iter().map(|d| ((d.key.idx, d.key.attempt), d)).collect();
        let mut again = Vec::new();
        for (idx, attempt) in std::mem::take(&mut self.open_attempts) {
            let live = rows
                .get(&(idx, attempt))
                .filter(|d| d.state != rewind_dispatch::DispatchState::Lost);
            match live {
                Some(d) if self.sched.adopt(InstanceId::new(idx as usize)) => {
                    r.adopt(idx, attempt, d.queue.clone());
                    self.adopted.push((idx, attempt));
                }
                _ => again.push((idx, attempt)),
            }
        }
        self.open_attempts = again;
    }

    fn ended(&self, counts: &Counts) -> Ended {
        // A halt with nothing left to run (a failure upstream of every target blocked them all)
        // is simply the end of a failed run.
        if self.halted.is_some() && !self.sched.is_cancelling() && !self.sched.is_finished() {
            Ended::Halted
        } else if self.sched.is_finished() {
            if self.sched.is_cancelling() {
                Ended::Cancelled
            } else if counts.failed + counts.blocked > 0 {
                Ended::Failed
            } else {
                Ended::Succeeded
            }
        } else {
            match self.draining {
                Some(Drain::Stop(reason)) => Ended::Interrupted(reason),
                // A halt that a stop overtook, or a loop that ended with nothing draining:
                // resumable either way.
                Some(Drain::Halt) | None => Ended::Interrupted(StopReason::StopRequest),
            }
        }
    }
}

fn progress(
    plan: &Plan,
    sched: &Scheduler<'_>,
    now: Duration,
    simulated: bool,
    observed: Option<&Observed>,
) -> Progress {
    let (eta, eta_basis) = eta(plan, sched, observed);
    Progress {
        clock: now,
        counts: sched.counts(),
        restored_targets: sched.restored_targets(),
        targets: plan.targets().len(),
        eta,
        eta_basis,
        simulated,
    }
}
