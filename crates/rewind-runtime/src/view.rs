//! A stored run read back: its plan (rebuilt from the snapshot), instances and attempts, and the
//! per-target and per-instance views that `status` and `report` print.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rewind_model::RunState;
use rewind_model::{Plan, RestorePoint, Subject, TargetSet, TargetsFormat, Workflow};
use rewind_scheduler::{Config, Counts, Restored, Scheduler, State};
use rewind_store::{AttemptRecord, InstanceRecord, RunRecord, Store, StoreError};
use serde::Serialize;

use crate::RuntimeError;
use crate::lease::{is_stale, store_now_ms};
use crate::progress::{EtaBasis, Observed, eta};
use rewind_model::RunId;

/// Rebuilds a run's plan from its stored snapshot and checks it is the plan the run was created
/// with (same fingerprint).
pub fn load_plan(rec: &RunRecord) -> Result<Plan, RuntimeError> {
    let run = rec.spec.id;
    let snapshot = |message: String| RuntimeError::Snapshot { run, message };
    // Held to the rules of the release that stored it: a run must still load after an upgrade.
    let (wf, _) = Workflow::parse_snapshot(&rec.spec.workflow_file, &rec.spec.workflow_text)
        .map_err(|d| snapshot(d.to_string()))?;
    let format =
        TargetsFormat::from_file_name(&rec.spec.targets_file).unwrap_or(TargetsFormat::Csv);
    let targets = TargetSet::parse(&rec.spec.targets_file, &rec.spec.targets_text, format)
        .map_err(|d| snapshot(d.to_string()))?;
    let rp: RestorePoint = rec
        .spec
        .restore_point
        .parse()
        .map_err(|e: rewind_model::RestorePointError| snapshot(e.to_string()))?;
    let plan = Plan::build(wf, targets, rp).map_err(|d| snapshot(d.to_string()))?;
    plan.check_fingerprint(&rec.spec.fingerprint).map_err(snapshot)?;
    Ok(plan)
}

/// Whether a live process drives the run (its owner's heartbeat is fresh).
pub fn is_driven(r: &RunRecord) -> bool {
    driven_by(r.owner.as_deref(), r.heartbeat_unix_ms)
}

/// Whether `owner`, whose last heartbeat was at `heartbeat_unix_ms`, is a live driver: the one
/// rule behind [`is_driven`], for readers that hold a run's lease columns without its record.
pub fn driven_by(owner: Option<&str>, heartbeat_unix_ms: Option<i64>) -> bool {
    owner.is_some_and(|o| !is_stale(o, heartbeat_unix_ms, store_now_ms()))
}

/// The state shown for a run stored in `state`: `interrupted` for `running` with no live driver.
pub fn shown(state: RunState, driven: bool) -> &'static str {
    if state == RunState::Running && !driven { "interrupted" } else { state.as_str() }
}

/// The state to show for a run: `interrupted` for a `running` run that no live process drives,
/// else its stored state.
pub fn shown_state(r: &RunRecord) -> &'static str {
    shown(r.state, is_driven(r))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// One instance, as `status --json` and the report show it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    /// Instance key.
    pub key: String,
    /// Step id.
    pub step: String,
    /// Target UUID, for target scope.
    pub target: Option<String>,
    /// Group value, for group scope.
    pub group: Option<String>,
    /// State.
    pub state: State,
    /// Pool.
    pub resource: Option<String>,
    /// Attempts started.
    pub attempts: u32,
    /// Per attempt: `[start, end]` offsets in seconds (end is the run's clock while running).
    pub intervals: Vec<[f64; 2]>,
    /// Step ids it needs.
    pub needs: Vec<String>,
}

/// One target's progress.
#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    /// Target UUID.
    pub id: String,
    /// `succeeded`, `running`, `pending`, `failed`, `blocked` or `cancelled`.
    pub state: &'static str,
    /// When its last instance finished, once restored.
    pub finished_offset_s: Option<f64>,
    /// Target-scope instances done (succeeded or skipped).
    #[serde(skip)]
    pub done: usize,
    /// Target-scope instances in all.
    #[serde(skip)]
    pub total: usize,
    /// The first failed instance, if any.
    #[serde(skip)]
    pub failed_key: Option<String>,
}

/// What a set of instances has been through.
#[derive(Clone, Default)]
struct Tally {
    failed: bool,
    blocked: bool,
    cancelled: bool,
    running: bool,
    done: usize,
    /// The latest end among them.
    last: f64,
    failed_key: Option<String>,
}

impl Tally {
    fn add(&mut self, st: State, finished_s: Option<f64>) {
        match st {
            State::Failed => self.failed = true,
            State::Blocked => self.blocked = true,
            State::Cancelled => self.cancelled = true,
            State::Running => self.running = true,
            State::Succeeded | State::Skipped => self.done += 1,
            State::Pending => {}
        }
        if let Some(f) = finished_s {
            self.last = self.last.max(f);
        }
    }
}

/// One attempt of an instance.
pub type AttemptView = AttemptRecord;

/// A stored run with everything needed to explain it.
#[derive(Debug)]
pub struct RunView {
    /// The run.
    pub record: RunRecord,
    /// Its plan (shared: a plan is immutable per run, so a server caches it).
    pub plan: Arc<Plan>,
    /// Its instances, by index.
    pub instances: Vec<InstanceRecord>,
    /// Its attempts, by instance and attempt.
    pub attempts: Vec<AttemptRecord>,
}

impl RunView {
    /// Reads a run back.
    pub async fn load<S: Store>(store: &S, id: RunId) -> Result<Self, RuntimeError> {
        let record = store.run(id).await?.ok_or(RuntimeError::NoSuchRun(id))?;
        let plan = Arc::new(load_plan(&record)?);
        Self::load_with(store, record, plan).await
    }

    /// Reads a run's instances and attempts back, with its record and plan already at hand
    /// (`plan` must be `load_plan(&record)`, for example from a cache by run id).
    pub async fn load_with<S: Store>(
        store: &S,
        record: RunRecord,
        plan: Arc<Plan>,
    ) -> Result<Self, RuntimeError> {
        let id = record.spec.id;
        let instances = store.instances(id).await?;
        let attempts = store.attempts(id).await?;
        if instances.len() != plan.len() {
            return Err(StoreError::Corrupt {
                what: "instances",
                value: format!("{} rows for {} instances", instances.len(), plan.len()),
            }
            .into());
        }
        Ok(Self { record, plan, instances, attempts })
    }

    /// The run as of now, given `prev`, an earlier read of it, and its record as of now: the
    /// instance states are read (a light read), and only the instances whose state, attempts,
    /// failures, retry time or finish time changed are read again, with their attempts; the
    /// rest, and the plan, are `prev`'s. (An attempt row is written only with a change of its
    /// instance's state; an instance blocked again after a retry has a new finish time.) A
    /// change to more than a quarter of the instances is read in full.
    pub async fn refresh<S: Store>(
        prev: &Self,
        store: &S,
        record: RunRecord,
    ) -> Result<Self, RuntimeError> {
        let id = record.spec.id;
        let plan = prev.plan.clone();
        let rows = store.instance_states(id).await?;
        if rows.len() != prev.instances.len() {
            return Self::load_with(store, record, plan).await;
        }
        let changed: Vec<u32> = rows
            .iter()
            .zip(&prev.instances)
            .filter(|(r, p)| {
                r.idx != p.idx
                    || r.state != p.state
                    || r.attempts != p.attempts
                    || r.failures != p.failures
                    || r.retry_at_s != p.retry_at_s
                    || r.finished_s != p.finished_s
            })
            .map(|(r, _)| r.idx)
            .collect();
        if changed.len() > prev.instances.len() / 4 {
            return Self::load_with(store, record, plan).await;
        }
        let mut instances = prev.instances.clone();
        let mut attempts = prev.attempts.clone();
        if !changed.is_empty() {
            for i in store.instances_at(id, &changed).await? {
                let Some(slot) = instances.get_mut(i.idx as usize) else {
                    return Self::load_with(store, record, plan).await;
                };
                *slot = i;
            }
            attempts.retain(|a| changed.binary_search(&a.idx).is_err());
            attempts.extend(store.attempts_at(id, &changed).await?);
            attempts.sort_by_key(|a| (a.idx, a.attempt));
        }
        Ok(Self { record, plan, instances, attempts })
    }

    /// State of one instance row.
    pub fn state(&self, i: usize) -> State {
        self.instances[i].state
    }

    /// Instances per state.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for i in 0..self.instances.len() {
            c.add(self.state(i));
        }
        c
    }

    /// Whether a live process drives the run.
    pub fn is_driven(&self) -> bool {
        is_driven(&self.record)
    }

    /// Time left and what it is based on, by the same rule as a driven run's progress: the
    /// scheduler restored from the recorded states and, for a real run, the estimates scaled by
    /// the observed durations of the attempts that succeeded.
    pub fn eta(&self) -> (Option<Duration>, EtaBasis) {
        let restored = self.instances.iter().map(|r| Restored {
            state: r.state,
            attempts: r.attempts,
            failures: r.failures,
            retry_at: r.retry_at_s.map(secs),
        });
        let sched =
            Scheduler::restore(&self.plan, Config::default(), restored, secs(self.record.clock_s));
        if self.record.spec.simulated {
            return eta(&self.plan, &sched, None);
        }
        let mut observed = Observed::new(self.plan.workflow().steps.len());
        for a in &self.attempts {
            let (Some(end), Some(rewind_model::AttemptOutcome::Succeeded)) = (a.ended_s, a.outcome)
            else {
                continue;
            };
            let id = rewind_model::InstanceId::new(a.idx as usize);
            if a.idx as usize >= self.plan.len() {
                continue;
            }
            let step = self.plan.instance(id).step as usize;
            observed.add(step, secs(end - a.started_s), self.plan.estimate(id));
        }
        eta(&self.plan, &sched, Some(&observed))
    }

    /// The makespan so far (the run's clock) or at its end.
    pub fn makespan_s(&self) -> f64 {
        self.record.finished_s.unwrap_or(self.record.clock_s)
    }

    /// Per target, in targets-file order. A target is restored when its own instances (target
    /// scope, not skipped by `when`) all succeeded; a target with none follows the whole run
    /// (restored only when every instance succeeded or was skipped).
    pub fn targets(&self) -> Vec<TargetView> {
        let targets = self.plan.targets().targets();
        let mut views: Vec<TargetView> = targets
            .iter()
            .map(|t| TargetView {
                id: t.id.to_string(),
                state: "pending",
                finished_offset_s: None,
                done: 0,
                total: 0,
                failed_key: None,
            })
            .collect();
        let mut own = vec![0usize; targets.len()];
        let mut tally = vec![Tally::default(); targets.len()];
        let mut run = Tally::default();
        for (i, row) in self.instances.iter().enumerate() {
            let st = self.state(i);
            run.add(st, row.finished_s);
            if run.failed_key.is_none() && st == State::Failed {
                run.failed_key = Some(row.key.clone());
            }
            let Subject::Target(t) = self.plan.instances()[i].subject else { continue };
            let t = t as usize;
            let v = &mut views[t];
            v.total += 1;
            own[t] += usize::from(!self.plan.instances()[i].skipped);
            if st.satisfies() {
                v.done += 1;
            }
            if st == State::Failed && v.failed_key.is_none() {
                v.failed_key = Some(row.key.clone());
            }
            tally[t].add(st, row.finished_s);
        }
        for (t, v) in views.iter_mut().enumerate() {
            let (tl, total, done) = if own[t] == 0 {
                if v.failed_key.is_none() {
                    v.failed_key.clone_from(&run.failed_key);
                }
                (&run, self.instances.len(), run.done)
            } else {
                (&tally[t], v.total, v.done)
            };
            v.state = if tl.failed {
                "failed"
            } else if tl.blocked {
                "blocked"
            } else if tl.cancelled {
                "cancelled"
            } else if done == total {
                v.finished_offset_s = Some(tl.last);
                "succeeded"
            } else if tl.running || done > 0 {
                "running"
            } else {
                "pending"
            };
        }
        views
    }

    /// Per instance, with per-attempt intervals.
    pub fn steps(&self) -> Vec<InstanceView> {
        let mut intervals: HashMap<u32, Vec<[f64; 2]>> = HashMap::new();
        for a in &self.attempts {
            intervals
                .entry(a.idx)
                .or_default()
                .push([a.started_s, a.ended_s.unwrap_or(self.record.clock_s)]);
        }
        self.instances
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let step = &self.plan.workflow().steps[self.plan.instances()[i].step as usize];
                InstanceView {
                    key: row.key.clone(),
                    step: row.step.clone(),
                    target: row.target.clone(),
                    group: row.group.clone(),
                    state: row.state,
                    resource: step.resource.as_ref().map(ToString::to_string),
                    attempts: row.attempts,
                    intervals: intervals.remove(&row.idx).unwrap_or_default(),
                    needs: step.needs.iter().map(ToString::to_string).collect(),
                }
            })
            .collect()
    }

    /// Failed instances with their last attempt.
    pub fn failures(&self) -> Vec<(&InstanceRecord, Option<&AttemptRecord>)> {
        let mut last: HashMap<u32, &AttemptRecord> = HashMap::new();
        for a in &self.attempts {
            last.insert(a.idx, a);
        }
        self.instances
            .iter()
            .enumerate()
            .filter(|(i, _)| self.state(*i) == State::Failed)
            .map(|(_, r)| (r, last.get(&r.idx).copied()))
            .collect()
    }
}
