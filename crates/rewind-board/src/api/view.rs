//! What the API serves about one run, computed once per change of the run and cached: the
//! plan per run id (immutable), and per run the numbers, targets and instances as of the run's
//! [`Key`] (state, clock, latest event).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_model::{Plan, RunId, RunState};
use rewind_runtime::{RunView, driven_by, is_driven, load_plan, shown_state};
use rewind_scheduler::State;
use rewind_store::{RunMarker, RunRecord, Store};
use serde::Serialize;

use crate::AppState;
use crate::api::ApiError;

/// What identifies one version of a run's data. A run that does not hold its targets any more
/// (succeeded, failed, cancelled) changes only by a retry, which changes its state: its latest
/// event is not compared, so the runs list need not read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Key {
    state: RunState,
    clock: u64,
    finished: Option<u64>,
    last_seq: i64,
    /// Whether a live process drives the run (a run whose driver died shows `interrupted`
    /// while nothing else about it changes).
    driven: bool,
}

impl Key {
    pub(crate) fn of(r: &RunRecord, seq: i64) -> Self {
        Self {
            state: r.state,
            clock: r.clock_s.to_bits(),
            finished: r.finished_s.map(f64::to_bits),
            last_seq: if r.state.holds_targets() { seq } else { -1 },
            driven: is_driven(r),
        }
    }

    pub(crate) fn of_marker(m: &RunMarker) -> Self {
        Self {
            state: m.state,
            clock: m.clock_s.to_bits(),
            finished: m.finished_s.map(f64::to_bits),
            last_seq: if m.state.holds_targets() { m.last_seq } else { -1 },
            driven: driven_by(m.owner.as_deref(), m.heartbeat_unix_ms),
        }
    }
}

/// One row of `GET /api/v1/runs`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRow {
    /// The run's id.
    pub run_id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Its state as `status` shows it (`interrupted`: running with no live driver).
    pub state: &'static str,
    /// Virtual-time simulation.
    pub simulated: bool,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Its restore point, RFC 3339.
    pub restore_point: String,
    /// `user@host` that created it (none for runs stored before it was recorded).
    pub started_by: Option<String>,
    /// The live process driving it, if any.
    pub driven_by: Option<String>,
    /// Its targets.
    pub targets_total: usize,
    /// Its targets restored.
    pub targets_restored: usize,
    /// `targets_restored / targets_total`, 0–100.
    pub percent_restored: f64,
    /// Time left, seconds, by the run's own ETA rule (none when unknown).
    pub eta_s: Option<f64>,
}

/// `waves` of a staged run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waves {
    /// The cumulative target count at the end of each wave.
    pub boundaries: Vec<u32>,
    /// The last open wave, 1-based.
    pub open: u32,
}

/// `GET /api/v1/runs/{id}` without `failures`: what the `progress` event carries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// The list row.
    #[serde(flatten)]
    pub row: RunRow,
    /// Its instances.
    pub instances_total: usize,
    /// Instances per state (every state named, zeros included).
    pub instances_by_state: BTreeMap<&'static str, usize>,
    /// Lower bound on the makespan, seconds (by estimates for a real run).
    pub lower_bound_s: f64,
    /// The run's clock, seconds from its start.
    pub clock_s: f64,
    /// When it ended, seconds from its start.
    pub finished_s: Option<f64>,
    /// Why it ended as it did, when that needs saying.
    pub reason: Option<String>,
    /// Its waves, for a staged run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
}

/// A failed instance, with its last attempt's error and stderr tail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    /// Instance key.
    pub instance: String,
    /// Step id.
    pub step: String,
    /// Target id, for target scope.
    pub target: Option<String>,
    /// Attempts started.
    pub attempt: u32,
    /// The error.
    pub error: Option<String>,
    /// The last attempt's stderr tail.
    pub stderr_tail: Option<String>,
}

/// One target of `GET /api/v1/runs/{id}/targets`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetRow {
    /// Target id.
    pub target: String,
    /// `restored`, `running`, `pending`, `failed`, `blocked` or `cancelled`.
    pub state: &'static str,
    /// When it was restored, seconds on the run's clock.
    pub restored_at_s: Option<f64>,
    /// Its own instances (target scope).
    pub instances_total: usize,
    /// Those succeeded or skipped.
    pub instances_done: usize,
    /// 0 once restored; the run's time left while it may still be restored (an upper bound:
    /// it is restored by the time the run ends); none when it failed, was blocked or cancelled.
    pub eta_s: Option<f64>,
}

/// One instance of `GET /api/v1/runs/{id}/instances`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceRow {
    /// Instance key.
    pub key: String,
    /// Step id.
    pub step: String,
    /// Target id (target scope).
    pub target: Option<String>,
    /// Group value (group scope).
    pub group: Option<String>,
    /// State.
    pub state: &'static str,
    /// Attempts started.
    pub attempts: u32,
    /// When its first attempt started, seconds on the run's clock.
    pub started_s: Option<f64>,
    /// When it reached a terminal state.
    pub finished_s: Option<f64>,
    /// Its step's pool.
    pub pool: Option<String>,
    /// Its last error.
    pub error: Option<String>,
}

/// A run's data as of one [`Key`].
#[derive(Debug)]
pub struct Computed {
    pub(crate) key: Key,
    /// Targets restored.
    pub targets_restored: usize,
    /// Targets.
    pub targets_total: usize,
    /// Time left, seconds.
    pub eta_s: Option<f64>,
    /// Instances per state.
    pub by_state: BTreeMap<&'static str, usize>,
    /// Failed instances.
    pub failures: Vec<Failure>,
    /// Per target, in targets-file order.
    pub targets: Vec<TargetRow>,
    /// Per instance, by index.
    pub instances: Vec<InstanceRow>,
}

/// The restored percentage, 0–100 (100 for a run without targets, as `status` says).
fn percent(restored: usize, total: usize) -> f64 {
    if total == 0 { 100.0 } else { 100.0 * restored as f64 / total as f64 }
}

impl Computed {
    fn build(v: &RunView, key: Key) -> Self {
        let (eta, _) = v.eta();
        let eta_s = eta.filter(|d| *d < Duration::MAX).map(|d| d.as_secs_f64());
        let counts = v.counts();
        let by_state = State::ALL.iter().map(|s| (s.as_str(), counts.get(*s))).collect();
        let targets: Vec<TargetRow> = v
            .targets()
            .into_iter()
            .map(|t| {
                let state = if t.state == "succeeded" { "restored" } else { t.state };
                TargetRow {
                    eta_s: match state {
                        "restored" => Some(0.0),
                        "running" | "pending" => eta_s,
                        _ => None,
                    },
                    target: t.id,
                    state,
                    restored_at_s: t.finished_offset_s,
                    instances_total: t.total,
                    instances_done: t.done,
                }
            })
            .collect();
        let targets_restored = targets.iter().filter(|t| t.state == "restored").count();
        let failures = v
            .failures()
            .into_iter()
            .map(|(row, last)| Failure {
                instance: row.key.clone(),
                step: row.step.clone(),
                target: row.target.clone(),
                attempt: row.attempts,
                error: row.error.clone(),
                stderr_tail: last.and_then(|a| a.stderr_tail.clone()),
            })
            .collect();
        let mut first_start: HashMap<u32, f64> = HashMap::new();
        for a in &v.attempts {
            first_start.entry(a.idx).or_insert(a.started_s);
        }
        let steps = &v.plan.workflow().steps;
        let instances = v
            .instances
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let step = steps.get(v.plan.instances()[i].step as usize);
                InstanceRow {
                    key: row.key.clone(),
                    step: row.step.clone(),
                    target: row.target.clone(),
                    group: row.group.clone(),
                    state: row.state.as_str(),
                    attempts: row.attempts,
                    started_s: first_start.get(&row.idx).copied(),
                    finished_s: row.finished_s,
                    pool: step.and_then(|s| s.resource.as_ref()).map(ToString::to_string),
                    error: row.error.clone(),
                }
            })
            .collect();
        Self {
            key,
            targets_total: targets.len(),
            targets_restored,
            eta_s,
            by_state,
            failures,
            targets,
            instances,
        }
    }

    /// The list row, with the state and driver as `record` says now.
    pub fn row(&self, r: &RunRecord) -> RunRow {
        self.figures().row(r)
    }

    /// What a runs-list row needs of this data.
    fn figures(&self) -> Figures {
        Figures {
            key: self.key,
            targets_total: self.targets_total,
            targets_restored: self.targets_restored,
            eta_s: self.eta_s,
        }
    }
}

/// What a runs-list row needs of a run's data, kept per run beside the bounded cache of whole
/// reads: listing many runs does not read each again while it has not changed.
#[derive(Clone, Copy, Debug)]
struct Figures {
    key: Key,
    targets_total: usize,
    targets_restored: usize,
    eta_s: Option<f64>,
}

impl Figures {
    fn row(&self, r: &RunRecord) -> RunRow {
        RunRow {
            run_id: r.spec.id.to_string(),
            workflow: r.spec.workflow.clone(),
            state: shown_state(r),
            simulated: r.spec.simulated,
            created_at: r.spec.created_at.clone(),
            restore_point: r.spec.restore_point.clone(),
            started_by: r.spec.started_by.clone(),
            driven_by: if is_driven(r) { r.owner.clone() } else { None },
            targets_total: self.targets_total,
            targets_restored: self.targets_restored,
            percent_restored: percent(self.targets_restored, self.targets_total),
            eta_s: if r.state.holds_targets() { self.eta_s } else { Some(0.0) }
                .filter(|_| r.state != RunState::Failed && r.state != RunState::Cancelled),
        }
    }
}

impl Computed {
    /// The summary, as `record` says now.
    pub fn summary(&self, r: &RunRecord) -> RunSummary {
        RunSummary {
            row: self.row(r),
            instances_total: self.instances.len(),
            instances_by_state: self.by_state.clone(),
            lower_bound_s: r.spec.lower_bound_s,
            clock_s: r.finished_s.unwrap_or(r.clock_s),
            finished_s: r.finished_s,
            reason: r.reason.clone(),
            waves: (!r.spec.waves.is_empty())
                .then(|| Waves { boundaries: r.spec.waves.clone(), open: r.wave }),
        }
    }
}

/// Runs whose read the cache keeps at most.
const KEPT: usize = 32;

/// One run's latest computed data and the read it was computed from; its lock is held while it
/// is computed.
type Slot = Arc<tokio::sync::Mutex<Option<(Arc<Computed>, Arc<RunView>)>>>;

/// The plans and computed data, per run id.
#[derive(Default)]
pub(crate) struct Cache {
    plans: Mutex<HashMap<RunId, Arc<Plan>>>,
    computed: Mutex<HashMap<RunId, Slot>>,
    rows: Mutex<HashMap<RunId, Figures>>,
}

impl AppState {
    /// The run's plan, built once per run id.
    pub(crate) async fn plan(&self, r: &RunRecord) -> Result<Arc<Plan>, ApiError> {
        let id = r.spec.id;
        if let Some(p) = self.cache.plans.lock().map_err(poisoned)?.get(&id) {
            return Ok(p.clone());
        }
        let rec = r.clone();
        let plan = tokio::task::spawn_blocking(move || load_plan(&rec))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let plan = Arc::new(plan);
        self.cache.plans.lock().map_err(poisoned)?.insert(id, plan.clone());
        Ok(plan)
    }

    /// The run's data as of `key`, and the read of the run it was computed from (read from the
    /// store unless the cache has it: after a change, only the instances that changed are read
    /// again, `RunView::refresh`); concurrent callers for one run wait for one computation.
    pub(crate) async fn computed_view(
        &self,
        r: &RunRecord,
        key: Key,
    ) -> Result<(Arc<Computed>, Arc<RunView>), ApiError> {
        let slot = self.slot(r.spec.id)?;
        let mut slot = slot.lock().await;
        self.compute(&mut slot, r, key).await
    }

    /// Run `id`'s slot (at most [`KEPT`] runs are kept: a read of a 27,529-instance run is a few
    /// megabytes).
    fn slot(&self, id: RunId) -> Result<Slot, ApiError> {
        let mut all = self.cache.computed.lock().map_err(poisoned)?;
        if all.len() >= KEPT && !all.contains_key(&id) {
            all.clear();
            self.cache.plans.lock().map_err(poisoned)?.clear();
        }
        Ok(all.entry(id).or_default().clone())
    }

    /// The data of `r` as of `key`, from `slot` when it holds that version.
    async fn compute(
        &self,
        slot: &mut Option<(Arc<Computed>, Arc<RunView>)>,
        r: &RunRecord,
        key: Key,
    ) -> Result<(Arc<Computed>, Arc<RunView>), ApiError> {
        if let Some((c, v)) = slot.as_ref().filter(|(c, _)| c.key == key) {
            return Ok((c.clone(), v.clone()));
        }
        let view = match slot.as_ref() {
            Some((_, prev)) => RunView::refresh(prev, &*self.store, r.clone()).await,
            None => RunView::load_with(&*self.store, r.clone(), self.plan(r).await?).await,
        }
        .map_err(ApiError::from)?;
        let view = Arc::new(view);
        let v = view.clone();
        let c = tokio::task::spawn_blocking(move || Arc::new(Computed::build(&v, key)))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        *slot = Some((c.clone(), view.clone()));
        Ok((c, view))
    }

    /// The run's data as of `key` (see [`AppState::computed_view`]).
    pub(crate) async fn computed(
        &self,
        r: &RunRecord,
        key: Key,
    ) -> Result<Arc<Computed>, ApiError> {
        Ok(self.computed_view(r, key).await?.0)
    }

    /// Run `id` as of now: its record, its version, its data and the read of it the data comes
    /// from (the pages render from the same read). The marker and the record are read once the
    /// run's slot is held, so a request that waited for another never stores an older version
    /// over a newer one.
    async fn now(
        &self,
        id: RunId,
    ) -> Result<(RunRecord, Key, Arc<Computed>, Arc<RunView>), ApiError> {
        // An unknown run takes no slot (and evicts none).
        self.store.run_marker(id).await?.ok_or_else(|| no_run(id))?;
        let slot = self.slot(id)?;
        let mut slot = slot.lock().await;
        let marker = self.store.run_marker(id).await?.ok_or_else(|| no_run(id))?;
        // Read after the marker: at least as new as it; a commit in between is seen next time.
        let rec = self.store.run(id).await?.ok_or_else(|| no_run(id))?;
        let key = Key::of_marker(&marker);
        let (c, v) = self.compute(&mut slot, &rec, key).await?;
        Ok((rec, key, c, v))
    }

    /// Run `id`'s version of now and the read of it the API's data comes from.
    pub(crate) async fn run_view(&self, id: RunId) -> Result<(Key, Arc<RunView>), ApiError> {
        let (_, key, _, view) = self.now(id).await?;
        Ok((key, view))
    }

    /// One run's record and data, as of now; `NotFound` for an unknown run.
    pub async fn run_data(&self, id: RunId) -> Result<(RunRecord, Arc<Computed>), ApiError> {
        let (rec, _, c, _) = self.now(id).await?;
        Ok((rec, c))
    }

    /// Every run's row, newest first.
    pub async fn run_rows(&self) -> Result<Vec<RunRow>, ApiError> {
        let runs = self.store.runs().await?;
        let mut rows = Vec::with_capacity(runs.len());
        for r in runs {
            let seq = if r.state.holds_targets() {
                match self.store.run_marker(r.spec.id).await? {
                    Some(m) => m.last_seq,
                    None => continue,
                }
            } else {
                -1
            };
            let key = Key::of(&r, seq);
            let kept = self.cache.rows.lock().map_err(poisoned)?.get(&r.spec.id).copied();
            let figures = match kept.filter(|f| f.key == key) {
                Some(f) => f,
                None => {
                    let f = self.computed(&r, key).await?.figures();
                    self.cache.rows.lock().map_err(poisoned)?.insert(r.spec.id, f);
                    f
                }
            };
            rows.push(figures.row(&r));
        }
        Ok(rows)
    }
}

pub(crate) fn no_run(id: RunId) -> ApiError {
    ApiError::NotFound(format!("no run {id} in this checkpoint store"))
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> ApiError {
    ApiError::Internal("a cache lock was poisoned".into())
}

/// Wall time, RFC 3339 UTC, of an offset on a run's clock.
pub(crate) fn wall_of(r: &RunRecord, offset_s: f64) -> String {
    let ms = r.spec.started_unix_ms.max(0).cast_unsigned();
    let at = UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_secs_f64(offset_s.max(0.0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Now, RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
