//! The drive loop: scheduler ⇄ executors ⇄ checkpoint store.
//!
//! Each turn: start what the scheduler says (a real action only once its start is durable);
//! wait for outcomes; feed them to the scheduler; commit everything that changed in one
//! transaction; only then start the next turn. Dependents are started by the next turn's `poll`,
//! so they never start before their dependencies' success is durable. A simulation has no side
//! effects to protect: its virtual instants are group-committed every few milliseconds of wall
//! time, so a 3-million-instance simulation is not one commit per virtual instant.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rewind_exec::{Attempt, Outcome as ExecOutcome, Registry, Report, Resolvers, Vars};
use rewind_model::{Action, InstanceId, Placeholder, Plan, RunId};
use rewind_scheduler::{Change, Config, Counts, Outcome, Priority, Restored, Scheduler, State};
use rewind_store::{
    AttemptRecord, Batch, InstanceUpdate, NewEvent, RunEnd, RunRecord, Store, StoreError,
};
use serde_json::{Value, json};

use crate::RuntimeError;
use crate::exec::{Event, Exec, RealExec, Signals, SimExec};
use crate::lease::{Lease, identity, now_unix_ms};
use crate::progress::{Observer, Progress, eta};
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

/// How a drive ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every instance succeeded or was skipped.
    Succeeded,
    /// Some instances failed or are blocked.
    Failed,
    /// `rewind cancel` stopped it.
    Cancelled,
    /// A signal stopped the process; the run is resumable.
    Interrupted(&'static str),
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
    let result = Driver::run(store, &lease, opts).await;
    let released = lease.release(store).await;
    let summary = result?;
    released?;
    Ok(summary)
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

pub(crate) fn parse_priority(s: &str) -> Priority {
    if s == "fifo" { Priority::Fifo } else { Priority::CriticalPath }
}

/// What templates of each step read from dependencies, and the shared per-step data of attempts.
struct Inputs {
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
    fn new(plan: &Plan, rec: &RunRecord, vars: Vars) -> Self {
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

    fn attempt(
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

/// Accumulates one group commit.
#[derive(Default)]
struct Batcher {
    batch: Batch,
    started: HashMap<u32, f64>,
}

impl Batcher {
    fn event(&mut self, at: Duration, kind: &str, key: Option<String>, detail: Option<String>) {
        self.batch.events.push(NewEvent {
            at_s: secs(at),
            wall: String::new(),
            kind: kind.to_owned(),
            key,
            detail,
        });
    }

    /// Records scheduler changes; `report` is the attempt report that caused them, if any.
    fn absorb(
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
                state: c.state().as_str(),
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
                    self.event(
                        at,
                        "instance.started",
                        Some(key),
                        Some(format!("{{\"attempt\":{attempt}}}")),
                    );
                }
                Change::Succeeded { at, .. } => {
                    u.finished_s = Some(secs(at));
                    u.output = mine.and_then(|r| r.output.as_ref()).map(Value::to_string);
                    self.event(
                        at,
                        "instance.succeeded",
                        Some(key),
                        Some(format!("{{\"attempt\":{attempt}}}")),
                    );
                }
                Change::RetryScheduled { attempt, at, retry_at, .. } => {
                    u.retry_at_s = Some(secs(retry_at));
                    u.error.clone_from(&error);
                    let detail =
                        json!({"attempt": attempt, "error": error, "retry_at_s": secs(retry_at)});
                    self.event(at, "instance.retry_scheduled", Some(key), Some(detail.to_string()));
                }
                Change::Failed { at, .. } => {
                    u.finished_s = Some(secs(at));
                    u.error.clone_from(&error);
                    self.event(
                        at,
                        "instance.failed",
                        Some(key),
                        Some(json!({"attempt": attempt, "error": error}).to_string()),
                    );
                }
                Change::Blocked { by, at, .. } => {
                    let by = plan.key(by).to_string();
                    u.finished_s = Some(secs(at));
                    u.error = Some(format!("blocked: {by} failed"));
                    self.event(
                        at,
                        "instance.blocked",
                        Some(key),
                        Some(json!({"by": by}).to_string()),
                    );
                }
                Change::Cancelled { at, .. } => {
                    u.finished_s = Some(secs(at));
                    self.event(at, "instance.cancelled", Some(key), None);
                }
                Change::Interrupted { at, .. } => {
                    self.event(
                        at,
                        "instance.interrupted",
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
        let name = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        };
        let tail = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.batch.attempts.push(AttemptRecord {
            idx,
            attempt,
            started_s,
            ended_s: Some(secs(at)),
            outcome: Some(name.to_owned()),
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
        b.heartbeat_unix_ms = now_unix_ms();
        b
    }
}

struct Driver;

impl Driver {
    async fn run<S: Store>(
        store: &S,
        lease: &Lease,
        opts: DriveOptions<'_>,
    ) -> Result<Summary, RuntimeError> {
        let wall0 = Instant::now();
        let id = lease.run;
        let rec = store.run(id).await?.ok_or(RuntimeError::NoSuchRun(id))?;
        let plan = load_plan(&rec)?;
        let simulated = rec.spec.simulated;
        let lower_bound = duration(rec.spec.lower_bound_s);
        let finished = |ended, counts, clock, restored| Summary {
            run: id,
            ended,
            counts,
            clock,
            restored_targets: restored,
            targets: plan.targets().len(),
            simulated,
            lower_bound,
            wall: wall0.elapsed(),
            commits: 0,
            restored_at: Vec::new(),
            halt_reason: None,
        };
        let rows = store.instance_states(id).await?;
        let mut restored = Vec::with_capacity(rows.len());
        let mut open_attempts = Vec::new();
        for r in &rows {
            let state: State = r.state.parse().map_err(|_| StoreError::Corrupt {
                what: "instances.state",
                value: r.state.to_owned(),
            })?;
            if state == State::Running {
                open_attempts.push((r.idx, r.attempts));
            }
            restored.push(Restored {
                state,
                attempts: r.attempts,
                failures: r.failures,
                retry_at: r.retry_at_s.map(duration),
            });
        }
        if rec.state != "running" {
            let counts = count(&restored);
            let ended = match rec.state.as_str() {
                "succeeded" => Ended::Succeeded,
                "cancelled" => Ended::Cancelled,
                "halted" => Ended::Halted,
                _ => Ended::Failed,
            };
            let restored_targets = count_restored(&plan, &restored);
            let mut summary = finished(
                ended,
                counts,
                duration(rec.finished_s.unwrap_or(rec.clock_s)),
                restored_targets,
            );
            summary.halt_reason = rec.reason.clone().filter(|_| ended == Ended::Halted);
            return Ok(summary);
        }
        if !simulated {
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
        let inputs = Inputs::new(&plan, &rec, opts.vars.clone());
        let mut outputs: HashMap<u32, Arc<Value>> = HashMap::new();
        for r in &rows {
            let step = plan.instance(InstanceId::new(r.idx as usize)).step as usize;
            if inputs.read_steps.contains(&step)
                && let Some(o) = r.output.as_deref().and_then(|o| serde_json::from_str(o).ok())
            {
                outputs.insert(r.idx, Arc::new(o));
            }
        }
        let resumed = rows.iter().any(|r| r.attempts > 0);
        drop(rows);
        let wave = u16::try_from(rec.wave).unwrap_or(u16::MAX);
        let mut sched =
            Scheduler::restore_staged(&plan, config, restored, now0, &rec.spec.waves, wave);
        let halt_rate = rec.spec.halt_rate;
        let mut halted: Option<String> = None;
        let mut b = Batcher::default();

        // Attempts the orchestrator died in: ended as interrupted; they run again.
        if !open_attempts.is_empty() {
            let attempts = store.attempts(id).await?;
            let by_key: HashMap<(u32, u32), &AttemptRecord> =
                attempts.iter().map(|a| ((a.idx, a.attempt), a)).collect();
            for &(idx, attempt) in &open_attempts {
                let started_s = by_key.get(&(idx, attempt)).map_or(secs(now0), |a| a.started_s);
                b.batch.attempts.push(AttemptRecord {
                    idx,
                    attempt,
                    started_s,
                    ended_s: Some(secs(now0)),
                    outcome: Some("interrupted".into()),
                    exit_code: None,
                    error: Some(
                        "the orchestrator stopped during this attempt; it runs again".into(),
                    ),
                    stdout_tail: None,
                    stderr_tail: None,
                });
                let iid = InstanceId::new(idx as usize);
                b.batch.instances.push(InstanceUpdate {
                    idx,
                    state: "pending",
                    attempts: sched.attempts(iid),
                    failures: sched.failures(iid),
                    retry_at_s: None,
                    finished_s: None,
                    output: None,
                    error: None,
                });
                b.event(
                    now0,
                    "instance.interrupted",
                    Some(plan.key(iid).to_string()),
                    Some(format!("{{\"attempt\":{attempt}}}")),
                );
            }
            // Issue 11: none of them starts again while a process of its interrupted attempt
            // still runs on this host (orphans.rs).
            if !simulated {
                let keys =
                    open_attempts.iter().map(|&(i, _)| plan.key(InstanceId::new(i as usize)));
                let keys = keys.map(|k| k.to_string()).collect();
                let stopped = crate::orphans::settle(id, keys, secs(now0), opts.observer).await?;
                b.batch.events.extend(stopped);
            }
        }
        let changes = sched.take_changes();
        b.absorb(&plan, &sched, changes, None);
        let detail = json!({
            "owner": lease.owner,
            "took_over": lease.took_over,
            "user": identity().await.user,
            "host": identity().await.host,
            "interrupted_attempts": open_attempts.len(),
            "counts": sched.counts(),
        });
        b.event(
            now0,
            if resumed { "run.resumed" } else { "run.started" },
            None,
            Some(detail.to_string()),
        );
        if let Some(prev) = &lease.took_over {
            opts.observer
                .note(&format!("took the run over from {prev}, which is no longer running"));
        }
        if !open_attempts.is_empty() {
            opts.observer.note(&format!(
                "{} attempt(s) were running when the previous orchestrator stopped; they run again with the same idempotency keys",
                open_attempts.len()
            ));
        }

        let mut exec = if simulated {
            Exec::Sim(SimExec::new(now0, rec.spec.seed, rec.spec.fail_rate))
        } else {
            Exec::Real(RealExec::new(rec.spec.started_unix_ms, opts.registry.clone(), opts.tick))
        };
        let mut signals = Signals::new(opts.signals)?;
        let mut commits = 0u64;
        let commit = async |b: &mut Batcher,
                            clock: Duration,
                            commits: &mut u64|
               -> Result<(), RuntimeError> {
            let batch = b.take(clock);
            store.commit(id, &lease.owner, &batch).await?;
            *commits += 1;
            Ok(())
        };
        commit(&mut b, now0, &mut commits).await?;

        let mut last_commit = Instant::now();
        let mut draining: Option<&'static str> = None;
        let mut forced = false;
        let mut last_check = Instant::now();
        let mut last_progress: Option<Instant> = None;
        let (mut observed, mut estimated) = (Duration::ZERO, Duration::ZERO);
        let mut queue: VecDeque<Event> = VecDeque::new();
        loop {
            let now = exec.now();
            if draining.is_none() && opts.observer.stop_requested() {
                queue.push_back(Event::Signal("stop request"));
            }
            // Staged waves: once the open wave has ended, judge it, then open the next or halt.
            while draining.is_none()
                && !sched.is_cancelling()
                && let Some(w) = sched.wave_ended()
            {
                let rate = w.failure_rate();
                let detail = json!({
                    "wave": w.wave, "waves": w.waves, "targets": w.targets, "failed": w.failed,
                    "failure_rate": rate, "halt_on_failure_rate": halt_rate,
                });
                if rate > halt_rate {
                    let reason = format!(
                        "halted after wave {} of {}: {} of its {} targets failed ({:.1}%, more than the {:.1}% allowed); look at `rewind status {id}`, then `rewind resume {id}` runs the failed ones again and continues (`--accept-failures` continues without them)",
                        w.wave,
                        w.waves,
                        w.failed,
                        w.targets,
                        100.0 * rate,
                        100.0 * halt_rate
                    );
                    opts.observer.note(&reason);
                    b.event(now, "run.halting", None, Some(detail.to_string()));
                    halted = Some(reason);
                    draining = Some("halt");
                } else if let Some(next) = sched.open_next_wave() {
                    opts.observer.note(&format!(
                        "wave {} of {} done ({} of {} targets failed); wave {next} starts",
                        w.wave, w.waves, w.failed, w.targets
                    ));
                    b.event(now, "wave.passed", None, Some(detail.to_string()));
                    b.event(now, "wave.opened", None, Some(json!({"wave": next}).to_string()));
                    b.batch.wave = Some(u32::from(next));
                }
            }
            if queue.is_empty() && draining.is_none() && !sched.is_cancelling() {
                let dispatches = sched.poll(now);
                let changes = sched.take_changes();
                b.absorb(&plan, &sched, changes, None);
                match &mut exec {
                    Exec::Sim(s) => {
                        for d in dispatches {
                            s.start(d.id, d.attempt, plan.estimate(d.id), || {
                                plan.key(d.id).to_string()
                            });
                        }
                    }
                    Exec::Real(r) => {
                        // A real action has side effects: its start is durable before it begins,
                        // so after a crash the record says which attempts may have been under way.
                        if !dispatches.is_empty() {
                            commit(&mut b, now, &mut commits).await?;
                        }
                        for d in dispatches {
                            r.start(
                                d.id,
                                d.attempt,
                                inputs.attempt(&plan, d.id, d.attempt, &outputs),
                            );
                        }
                    }
                }
            }
            if queue.is_empty()
                && exec.running() == 0
                && (sched.is_finished() || draining.is_some())
            {
                break;
            }
            if queue.is_empty() {
                queue.extend(exec.ready());
            }
            if queue.is_empty() {
                // Real waits can be long: make what happened so far durable first. (A
                // simulation does not wait; its clock jumps.)
                if !simulated && !b.batch.is_empty() {
                    commit(&mut b, now, &mut commits).await?;
                    last_commit = Instant::now();
                }
                if exec.running() == 0 && sched.next_wakeup().is_none() && !sched.is_finished() {
                    // Nothing runs, nothing is due, yet instances are pending: a scheduler bug.
                    // Stop rather than spin; the run stays resumable.
                    opts.observer.note("no instance can start and none is running; stopping");
                    draining = Some("stall");
                    break;
                }
                queue.extend(exec.wait(sched.next_wakeup(), &mut signals).await);
            }
            let now = exec.now();
            let mut check_cancel = last_check.elapsed() >= opts.tick;
            while let Some(ev) = queue.pop_front() {
                match ev {
                    Event::Done { id: iid, attempt, report } => {
                        let outcome = match report.outcome {
                            ExecOutcome::Succeeded => Outcome::Succeeded,
                            ExecOutcome::Failed { retryable } => Outcome::Failed { retryable },
                            ExecOutcome::Cancelled if sched.is_cancelling() => Outcome::Cancelled,
                            ExecOutcome::Cancelled => Outcome::Interrupted,
                        };
                        b.attempt_end(iid, attempt, now, &report, outcome);
                        if let (Outcome::Succeeded, Some(out)) = (outcome, &report.output)
                            && inputs.read_steps.contains(&(plan.instance(iid).step as usize))
                        {
                            outputs.insert(iid.index() as u32, Arc::new(out.clone()));
                        }
                        if !simulated && outcome == Outcome::Succeeded {
                            let started =
                                b.batch.attempts.last().map_or(secs(now), |a| a.started_s);
                            observed += duration(secs(now) - started);
                            estimated += plan.estimate(iid);
                        }
                        sched.on_outcome(iid, outcome, now);
                        let changes = sched.take_changes();
                        if let Outcome::Failed { .. } = outcome {
                            let retry_in = changes.iter().find_map(|c| match c {
                                Change::RetryScheduled { id, retry_at, .. } if *id == iid => {
                                    Some(retry_at.saturating_sub(now))
                                }
                                _ => None,
                            });
                            let error = report.error.as_deref().unwrap_or("failed");
                            opts.observer.failure(
                                &plan.key(iid).to_string(),
                                attempt,
                                error,
                                retry_in,
                            );
                        }
                        b.absorb(&plan, &sched, changes, Some((iid, &report)));
                    }
                    Event::Wake => {}
                    Event::Tick => check_cancel = true,
                    Event::Signal(sig) => {
                        if draining.is_none() && !simulated && exec.running() > 0 {
                            draining = Some(sig);
                            opts.observer.note(&format!(
                                "{sig}: no new steps start; waiting for {} running action(s) to finish (send it again to stop them now)",
                                exec.running()
                            ));
                        } else {
                            draining = Some(sig);
                            forced = true;
                            let running = exec.running();
                            opts.observer.note(&if running == 0 {
                                format!("{sig}: stopping; the run is resumable")
                            } else {
                                format!("{sig}: stopping {running} running action(s); they run again on resume")
                            });
                            queue.extend(exec.stop_all());
                        }
                        b.event(
                            now,
                            "run.interrupting",
                            None,
                            Some(json!({"signal": sig, "forced": forced}).to_string()),
                        );
                    }
                }
            }
            if check_cancel {
                last_check = Instant::now();
                if !sched.is_cancelling() && store.cancel_requested(id).await? {
                    opts.observer.note("cancel requested: stopping");
                    sched.cancel(now);
                    let changes = sched.take_changes();
                    b.absorb(&plan, &sched, changes, None);
                    b.event(
                        now,
                        "run.cancelling",
                        None,
                        Some(json!({"running": exec.running()}).to_string()),
                    );
                    queue.extend(exec.stop_all());
                    continue;
                }
            }
            // A simulation's attempts have no side effects: it commits every few milliseconds of
            // wall time instead of every virtual instant (its scheduling is the same either way).
            if !simulated
                || b.batch.instances.len() >= SIM_COMMIT_CHANGES
                || last_commit.elapsed() >= SIM_COMMIT_EVERY
            {
                commit(&mut b, now, &mut commits).await?;
                last_commit = Instant::now();
            } else {
                continue;
            }
            if last_progress.is_none_or(|t| t.elapsed() >= opts.progress_every) {
                last_progress = Some(Instant::now());
                let speed = if estimated.is_zero() {
                    1.0
                } else {
                    observed.as_secs_f64() / estimated.as_secs_f64()
                };
                opts.observer.progress(&progress(&plan, &sched, now, simulated, speed));
            }
        }

        let now = exec.now();
        // A cancel asked for while the run was halting wins: the operator wants it over.
        if halted.is_some() && !sched.is_cancelling() && store.cancel_requested(id).await? {
            sched.cancel(now);
            let changes = sched.take_changes();
            b.absorb(&plan, &sched, changes, None);
            halted = None;
        }
        let counts = sched.counts();
        // A halt with nothing left to run (a failure upstream of every target blocked them all)
        // is simply the end of a failed run.
        let ended = if halted.is_some() && !sched.is_cancelling() && !sched.is_finished() {
            Ended::Halted
        } else if sched.is_finished() {
            if sched.is_cancelling() {
                Ended::Cancelled
            } else if counts.failed + counts.blocked > 0 {
                Ended::Failed
            } else {
                Ended::Succeeded
            }
        } else {
            Ended::Interrupted(draining.unwrap_or("stop"))
        };
        match ended {
            Ended::Halted => {
                b.batch.end =
                    Some(RunEnd { state: "halted", finished_s: secs(now), reason: halted.clone() });
                b.event(
                    now,
                    "run.halted",
                    None,
                    Some(json!({"reason": halted, "counts": counts}).to_string()),
                );
            }
            Ended::Interrupted(sig) => {
                b.event(
                    now,
                    "run.interrupted",
                    None,
                    Some(json!({"signal": sig, "counts": counts}).to_string()),
                );
            }
            _ => {
                let (state, reason) = match ended {
                    Ended::Succeeded => ("succeeded", None),
                    Ended::Cancelled => {
                        ("cancelled", Some("cancelled by an operator (rewind cancel)".to_owned()))
                    }
                    _ => (
                        "failed",
                        Some(format!("{} failed, {} blocked", counts.failed, counts.blocked)),
                    ),
                };
                b.batch.end = Some(RunEnd { state, finished_s: secs(now), reason });
                b.event(
                    now,
                    "run.finished",
                    None,
                    Some(
                        json!({"state": state, "counts": counts, "clock_s": secs(now)}).to_string(),
                    ),
                );
            }
        }
        commit(&mut b, now, &mut commits).await?;
        opts.observer.progress(&progress(&plan, &sched, now, simulated, 1.0));
        let mut summary = finished(ended, counts, now, sched.restored_targets());
        summary.commits = commits;
        summary.halt_reason = halted.filter(|_| ended == Ended::Halted);
        summary.restored_at =
            (0..plan.targets().len()).map(|t| sched.target_restored_at(t)).collect();
        Ok(summary)
    }
}

fn progress(
    plan: &Plan,
    sched: &Scheduler<'_>,
    now: Duration,
    simulated: bool,
    speed: f64,
) -> Progress {
    Progress {
        clock: now,
        counts: sched.counts(),
        restored_targets: sched.restored_targets(),
        targets: plan.targets().len(),
        eta: eta(plan, sched, speed),
        simulated,
    }
}

fn count(rows: &[Restored]) -> Counts {
    let mut c = Counts::default();
    for r in rows {
        c.add(r.state);
    }
    c
}

fn count_restored(plan: &Plan, rows: &[Restored]) -> usize {
    let mut open = vec![false; plan.targets().len()];
    for (i, r) in rows.iter().enumerate() {
        if let rewind_model::Subject::Target(t) = plan.instances()[i].subject
            && !r.state.satisfies()
        {
            open[t as usize] = true;
        }
    }
    open.iter().filter(|o| !**o).count()
}
