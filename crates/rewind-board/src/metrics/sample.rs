//! What one scrape measures, computed from store rows without I/O: a run's [`Shape`] (from its
//! plan, immutable, cached by run id), its [`RunSample`] (from its instance states and attempts)
//! and the drills' [`DrillSample`]s.

use std::collections::BTreeMap;

use rewind_model::{AttemptOutcome, InstanceState, Plan, Subject};
use rewind_store::{AttemptRecord, DrillRecord, InstanceRow, RunRecord};

/// A target's state as `status` shows it, in the order they are exposed.
pub const TARGET_STATES: [&str; 6] =
    ["pending", "running", "succeeded", "failed", "blocked", "cancelled"];

/// A run's shown states (`rewind_runs{state}`), in the order they are exposed.
pub const RUN_STATES: [&str; 6] =
    ["running", "interrupted", "halted", "succeeded", "failed", "cancelled"];

/// What the metrics need of a run's plan: per instance its step, target and whether `when`
/// skipped it; the steps' names and pools; the pools' capacities.
#[derive(Debug)]
pub struct Shape {
    /// Step names, in workflow order.
    pub steps: Vec<String>,
    /// Per step, its pool's index in `pools`.
    pub step_pool: Vec<Option<usize>>,
    /// Pools: name and capacity, in workflow order.
    pub pools: Vec<(String, u32)>,
    /// Per instance: step index.
    pub inst_step: Vec<u32>,
    /// Per instance: target index, for target scope.
    pub inst_target: Vec<Option<u32>>,
    /// Per instance: skipped by `when`.
    pub inst_skipped: Vec<bool>,
    /// Number of targets.
    pub targets: usize,
}

impl Shape {
    /// The shape of `plan`.
    pub fn of(plan: &Plan) -> Self {
        let wf = plan.workflow();
        let pools: Vec<(String, u32)> =
            wf.resources.iter().map(|p| (p.name.to_string(), p.capacity)).collect();
        let step_pool = wf
            .steps
            .iter()
            .map(|s| {
                s.resource.as_ref().and_then(|r| wf.resources.iter().position(|p| &p.name == r))
            })
            .collect();
        let n = plan.len();
        let (mut inst_step, mut inst_target, mut inst_skipped) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for i in plan.instances() {
            inst_step.push(i.step);
            inst_target.push(match i.subject {
                Subject::Target(t) => Some(t),
                _ => None,
            });
            inst_skipped.push(i.skipped);
        }
        Self {
            steps: wf.steps.iter().map(|s| s.id.to_string()).collect(),
            step_pool,
            pools,
            inst_step,
            inst_target,
            inst_skipped,
            targets: plan.targets().targets().len(),
        }
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.inst_step.len()
    }

    /// Whether the plan has no instance.
    pub fn is_empty(&self) -> bool {
        self.inst_step.is_empty()
    }
}

/// The histogram's bucket bounds, seconds: from a quick statement to a multi-hour restore.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0, 43200.0,
];

/// One run, measured.
#[derive(Debug, Default, PartialEq)]
pub struct RunSample {
    /// Per step (index), instances per state ([`InstanceState::ALL`] order).
    pub instances: Vec<[u64; 7]>,
    /// Targets per state ([`TARGET_STATES`] order).
    pub targets: [u64; 6],
    /// Number of targets.
    pub target_count: u64,
    /// Per pool (index), running instances.
    pub pool_busy: Vec<u64>,
    /// Per step (index), attempts beyond each instance's first.
    pub retries: Vec<u64>,
    /// Per (step index, outcome), the durations of the attempts that ended, seconds.
    pub durations: BTreeMap<(u32, AttemptOutcome), Vec<f64>>,
    /// Run offset of the last instance completion (an attempt that succeeded, or the last
    /// attempt of an instance that failed for good), seconds.
    pub last_completion_s: Option<f64>,
}

/// Which index of [`TARGET_STATES`] a name has.
fn target_slot(name: &str) -> usize {
    TARGET_STATES.iter().position(|s| *s == name).unwrap_or(0)
}

/// What a set of instances has been through (the rule of `RunView::targets`).
#[derive(Clone, Copy, Default)]
struct Tally {
    failed: bool,
    blocked: bool,
    cancelled: bool,
    running: bool,
    done: usize,
    total: usize,
    own: usize,
}

impl Tally {
    fn add(&mut self, st: InstanceState) {
        match st {
            InstanceState::Failed => self.failed = true,
            InstanceState::Blocked => self.blocked = true,
            InstanceState::Cancelled => self.cancelled = true,
            InstanceState::Running => self.running = true,
            InstanceState::Succeeded | InstanceState::Skipped => self.done += 1,
            InstanceState::Pending => {}
        }
        self.total += 1;
    }

    fn state(&self) -> &'static str {
        if self.failed {
            "failed"
        } else if self.blocked {
            "blocked"
        } else if self.cancelled {
            "cancelled"
        } else if self.done == self.total {
            "succeeded"
        } else if self.running || self.done > 0 {
            "running"
        } else {
            "pending"
        }
    }
}

impl RunSample {
    /// Measures a run of `shape` from its instance rows (by index, one per instance) and its
    /// attempts (by instance and attempt). Rows beyond the plan are ignored.
    pub fn measure(shape: &Shape, rows: &[InstanceRow], attempts: &[AttemptRecord]) -> Self {
        let mut instances = vec![[0u64; 7]; shape.steps.len()];
        let mut pool_busy = vec![0u64; shape.pools.len()];
        let mut per_target = vec![Tally::default(); shape.targets];
        let mut run = Tally::default();
        let mut state_of = vec![InstanceState::Pending; shape.len()];
        for row in rows {
            let i = row.idx as usize;
            let Some(&step) = shape.inst_step.get(i) else { continue };
            let st = row.state;
            state_of[i] = st;
            let slot = InstanceState::ALL.iter().position(|s| *s == st).unwrap_or(0);
            instances[step as usize][slot] += 1;
            if st == InstanceState::Running
                && let Some(p) = shape.step_pool[step as usize]
            {
                pool_busy[p] += 1;
            }
            run.add(st);
            if let Some(t) = shape.inst_target[i] {
                let tally = &mut per_target[t as usize];
                tally.add(st);
                tally.own += usize::from(!shape.inst_skipped[i]);
            }
        }
        let mut targets = [0u64; 6];
        for t in &per_target {
            // A target with no instance of its own follows the whole run.
            let state = if t.own == 0 { run.state() } else { t.state() };
            targets[target_slot(state)] += 1;
        }

        let mut retries = vec![0u64; shape.steps.len()];
        let mut durations: BTreeMap<(u32, AttemptOutcome), Vec<f64>> = BTreeMap::new();
        let mut last_completion_s: Option<f64> = None;
        for (k, a) in attempts.iter().enumerate() {
            let i = a.idx as usize;
            let Some(&step) = shape.inst_step.get(i) else { continue };
            if a.attempt > 1 {
                retries[step as usize] += 1;
            }
            let (Some(end), Some(outcome)) = (a.ended_s, a.outcome) else { continue };
            durations.entry((step, outcome)).or_default().push((end - a.started_s).max(0.0));
            let last_of_instance = attempts.get(k + 1).is_none_or(|b| b.idx != a.idx);
            let completes = outcome == AttemptOutcome::Succeeded
                || (outcome == AttemptOutcome::Failed
                    && last_of_instance
                    && state_of[i] == InstanceState::Failed);
            if completes {
                last_completion_s = Some(last_completion_s.map_or(end, |l| l.max(end)));
            }
        }
        Self {
            instances,
            targets,
            target_count: shape.targets as u64,
            pool_busy,
            retries,
            durations,
            last_completion_s,
        }
    }

    /// Targets restored.
    pub fn restored(&self) -> u64 {
        self.targets[target_slot("succeeded")]
    }

    /// Targets restored over targets, 0 to 1 (1 for a run without targets, as `status` says
    /// 100%).
    pub fn restored_ratio(&self) -> f64 {
        if self.target_count == 0 { 1.0 } else { self.restored() as f64 / self.target_count as f64 }
    }
}

/// Wall time of a run offset, Unix seconds: offsets count from the run's `started_unix_ms`
/// (a simulated run's offsets are its virtual clock).
pub fn wall_s(run: &RunRecord, offset_s: f64) -> f64 {
    run.spec.started_unix_ms as f64 / 1000.0 + offset_s
}

/// One drill's history, reduced to what the metrics show.
#[derive(Debug, Default, PartialEq)]
pub struct DrillSample {
    /// The drill's name.
    pub name: String,
    /// Start of its last run, Unix seconds.
    pub last_run_s: f64,
    /// Start of its last run that passed, Unix seconds.
    pub last_success_s: Option<f64>,
    /// Whether the last run passed.
    pub passed: bool,
    /// The last run's achieved RTO, seconds.
    pub rto_s: Option<f64>,
    /// The last run's achieved RPO, seconds.
    pub rpo_s: Option<f64>,
    /// The last run's RTO objective, seconds (when its record could be read).
    pub rto_objective_s: Option<f64>,
    /// The last run's RPO objective, seconds (when it has one).
    pub rpo_objective_s: Option<f64>,
}

impl DrillSample {
    /// Per drill name, in name order, from history (any order; the store gives it oldest
    /// first).
    pub fn of(history: &[DrillRecord]) -> Vec<Self> {
        let mut sorted: Vec<&DrillRecord> = history.iter().collect();
        sorted.sort_by_key(|d| d.started_unix_ms);
        let mut by_name: BTreeMap<&str, DrillSample> = BTreeMap::new();
        for d in sorted {
            let s = by_name.entry(&d.name).or_default();
            let at = d.started_unix_ms as f64 / 1000.0;
            // The record is the drill's owner's (rewind-drill); one it cannot read has no
            // objectives here, and the scrape goes on.
            let result = serde_json::from_str::<rewind_drill::DrillResult>(&d.result).ok();
            *s = DrillSample {
                name: d.name.clone(),
                last_run_s: at,
                last_success_s: if d.passed { Some(at) } else { s.last_success_s },
                passed: d.passed,
                rto_s: d.rto_s,
                rpo_s: d.rpo_s,
                rto_objective_s: result.as_ref().map(|r| r.rto_objective_s),
                rpo_objective_s: result.and_then(|r| r.rpo_objective_s),
            };
        }
        by_name.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn shape() -> Shape {
        // Steps: `prep` (run scope), `restore` (targets, pool db), `verify` (targets).
        // Two targets; target 1's `verify` is skipped.
        Shape {
            steps: vec!["prep".into(), "restore".into(), "verify".into()],
            step_pool: vec![None, Some(0), None],
            pools: vec![("db".into(), 2)],
            inst_step: vec![0, 1, 1, 2, 2],
            inst_target: vec![None, Some(0), Some(1), Some(0), Some(1)],
            inst_skipped: vec![false, false, false, false, true],
            targets: 2,
        }
    }

    fn row(idx: u32, state: InstanceState) -> InstanceRow {
        InstanceRow {
            idx,
            state,
            attempts: 0,
            failures: 0,
            retry_at_s: None,
            finished_s: None,
            output: None,
        }
    }

    fn attempt(
        idx: u32,
        attempt: u32,
        span: (f64, Option<f64>),
        outcome: Option<AttemptOutcome>,
    ) -> AttemptRecord {
        AttemptRecord {
            idx,
            attempt,
            started_s: span.0,
            ended_s: span.1,
            outcome,
            exit_code: None,
            error: None,
            stdout_tail: None,
            stderr_tail: None,
        }
    }

    use InstanceState::*;

    #[test]
    fn counts_targets_pools_and_completions() {
        let rows = [
            row(0, Succeeded),
            row(1, Succeeded),
            row(2, Running),
            row(3, Succeeded),
            row(4, Skipped),
        ];
        let attempts = [
            attempt(0, 1, (0.0, Some(2.0)), Some(AttemptOutcome::Succeeded)),
            attempt(1, 1, (2.0, Some(3.0)), Some(AttemptOutcome::Failed)),
            attempt(1, 2, (4.0, Some(9.0)), Some(AttemptOutcome::Succeeded)),
            attempt(2, 1, (2.0, None), None),
            attempt(3, 1, (9.0, Some(9.5)), Some(AttemptOutcome::Succeeded)),
        ];
        let s = RunSample::measure(&shape(), &rows, &attempts);
        assert_eq!(s.instances[1], [0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(s.targets, [0, 1, 1, 0, 0, 0]);
        assert_eq!(s.restored(), 1);
        assert!((s.restored_ratio() - 0.5).abs() < 1e-9);
        assert_eq!(s.pool_busy, vec![1]);
        assert_eq!(s.retries, vec![0, 1, 0]);
        assert_eq!(s.durations[&(1, AttemptOutcome::Failed)], vec![1.0]);
        assert_eq!(s.durations[&(1, AttemptOutcome::Succeeded)], vec![5.0]);
        assert_eq!(s.last_completion_s, Some(9.5));
    }

    #[test]
    fn a_retried_failure_is_no_completion_but_a_final_one_is() {
        let rows =
            [row(0, Running), row(1, Failed), row(2, Blocked), row(3, Blocked), row(4, Skipped)];
        let attempts = [
            attempt(0, 1, (0.0, Some(7.0)), Some(AttemptOutcome::Failed)),
            attempt(0, 2, (8.0, None), None),
            attempt(1, 1, (0.0, Some(3.0)), Some(AttemptOutcome::Failed)),
        ];
        let s = RunSample::measure(&shape(), &rows, &attempts);
        assert_eq!(s.last_completion_s, Some(3.0));
        assert_eq!(s.targets[target_slot("failed")], 1);
        assert_eq!(s.targets[target_slot("blocked")], 1);
    }

    #[test]
    fn a_target_with_no_instance_of_its_own_follows_the_run() {
        let mut sh = shape();
        sh.inst_skipped = vec![false, true, true, true, true];
        let rows =
            [row(0, Running), row(1, Skipped), row(2, Skipped), row(3, Skipped), row(4, Skipped)];
        let s = RunSample::measure(&sh, &rows, &[]);
        assert_eq!(s.targets[target_slot("running")], 2);
        let rows =
            [row(0, Succeeded), row(1, Skipped), row(2, Skipped), row(3, Skipped), row(4, Skipped)];
        assert_eq!(RunSample::measure(&sh, &rows, &[]).restored(), 2);
    }

    fn drill(name: &str, at_ms: i64, passed: bool, rto: Option<f64>) -> DrillRecord {
        DrillRecord {
            id: format!("{name}-{at_ms}"),
            name: name.into(),
            run_id: None,
            started_at: String::new(),
            started_unix_ms: at_ms,
            passed,
            rto_s: rto,
            rpo_s: None,
            result: "not json".into(),
        }
    }

    #[test]
    fn drills_keep_the_last_run_and_the_last_success() {
        let s = DrillSample::of(&[
            drill("a", 1_000, true, Some(5.0)),
            drill("b", 1_500, false, None),
            drill("a", 2_000, false, None),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "a");
        assert_eq!(s[0].last_run_s, 2.0);
        assert_eq!(s[0].last_success_s, Some(1.0));
        assert!(!s[0].passed);
        assert_eq!(s[0].rto_s, None);
        // An unreadable record has no objectives, and nothing fails.
        assert_eq!(s[0].rto_objective_s, None);
        assert_eq!(s[1].last_success_s, None);
    }
}
