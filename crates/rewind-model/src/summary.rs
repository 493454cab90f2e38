//! What `rewind plan` shows, as data: the binary prints it as text or JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Plan;
use crate::time::RestorePoint;
use crate::workflow::WritesTo;

/// A plan preview: everything a responder should see before anything runs.
#[derive(Clone, Debug, Serialize)]
pub struct PlanSummary {
    /// Workflow name.
    pub workflow: String,
    /// Restore point.
    pub restore_point: RestorePoint,
    /// Plan fingerprint.
    pub fingerprint: String,
    /// The targets.
    pub targets: TargetSummary,
    /// Instances in the plan, skipped ones included.
    pub instances: usize,
    /// Instances that will run.
    pub runnable: usize,
    /// Instances skipped by `when`.
    pub skipped: usize,
    /// Per step, in workflow order.
    pub steps: Vec<StepSummary>,
    /// Per resource pool.
    pub resources: Vec<PoolSummary>,
    /// The critical path, first to last.
    pub critical_path: Vec<CriticalStep>,
    /// Length of the critical path, seconds.
    pub critical_path_s: f64,
    /// Lower bound on the makespan, seconds.
    pub lower_bound_s: f64,
    /// What sets the lower bound: `critical_path` or `pool:<name>`.
    pub bound_by: String,
    /// Per store an action writes to (a `copy`'s `to`, a `sql`'s connection, a `pitr`'s scratch
    /// instance), then the commands (what they write to is not known) and the read-only steps:
    /// what each will receive.
    pub stores: Vec<StoreSummary>,
}

/// The targets of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct TargetSummary {
    /// How many.
    pub count: usize,
    /// Their kind.
    pub kind: String,
    /// The file they came from.
    pub file: String,
    /// Per grouping attribute: how many distinct groups.
    pub groups: BTreeMap<String, usize>,
}

/// One step of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    /// Step id.
    pub step: String,
    /// Scope.
    pub scope: String,
    /// Step ids it needs.
    pub needs: Vec<String>,
    /// Pool, if any.
    pub resource: Option<String>,
    /// Estimate of one attempt, seconds.
    pub estimate_s: f64,
    /// Instances that will run.
    pub instances: usize,
    /// Instances skipped by `when`.
    pub skipped: usize,
    /// What the action touches.
    pub action: String,
}

/// Load on one resource pool.
#[derive(Clone, Debug, Serialize)]
pub struct PoolSummary {
    /// Pool name.
    pub name: String,
    /// Slots.
    pub capacity: u32,
    /// Instances that draw from it.
    pub instances: usize,
    /// Their total estimated work, seconds.
    pub work_s: f64,
    /// Work divided by capacity: the least time the pool needs, seconds.
    pub bound_s: f64,
}

/// One instance on the critical path.
#[derive(Clone, Debug, Serialize)]
pub struct CriticalStep {
    /// Instance key.
    pub key: String,
    /// Step id.
    pub step: String,
    /// Offset from the start of the path, seconds.
    pub start_s: f64,
    /// Estimate, seconds.
    pub estimate_s: f64,
}

/// What one store will receive.
#[derive(Clone, Debug, Serialize)]
pub struct StoreSummary {
    /// The connection written to, `pitr scratch INTO`, `(commands: not known)` or `(nothing:
    /// reads and checks)`.
    pub store: String,
    /// `connection`, `scratch`, `unknown` (commands) or `nothing` (`compare`, `audit`).
    pub kind: String,
    /// Its steps.
    pub steps: Vec<String>,
    /// Instances that will run against it.
    pub instances: usize,
    /// Distinct targets those instances cover.
    pub targets: usize,
    /// The distinct actions (`command bin/undelete`, `sql on catalog`).
    pub actions: Vec<String>,
}

impl Plan {
    /// The preview `rewind plan` prints.
    pub fn summary(&self) -> PlanSummary {
        let wf = self.workflow();
        let n_steps = wf.steps.len();
        let mut runnable = vec![0usize; n_steps];
        let mut skipped = vec![0usize; n_steps];
        for inst in self.instances() {
            if inst.skipped {
                skipped[inst.step as usize] += 1;
            } else {
                runnable[inst.step as usize] += 1;
            }
        }
        let steps: Vec<StepSummary> = wf
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepSummary {
                step: s.id.to_string(),
                scope: s.scope.to_string(),
                needs: s.needs.iter().map(ToString::to_string).collect(),
                resource: s.resource.as_ref().map(ToString::to_string),
                estimate_s: s.estimate.as_secs_f64(),
                instances: runnable[i],
                skipped: skipped[i],
                action: s.action.describe(),
            })
            .collect();

        let lb = self.lower_bound();
        let resources = wf
            .resources
            .iter()
            .zip(&lb.pools)
            .map(|(pool, (_, work, bound))| PoolSummary {
                name: pool.name.to_string(),
                capacity: pool.capacity,
                instances: wf
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.resource.as_ref() == Some(&pool.name))
                    .map(|(i, _)| runnable[i])
                    .sum(),
                work_s: work.as_secs_f64(),
                bound_s: bound.as_secs_f64(),
            })
            .collect();

        let mut at = 0.0;
        let critical_path = self
            .critical_path()
            .into_iter()
            .map(|id| {
                let est = self.estimate(id).as_secs_f64();
                let c = CriticalStep {
                    key: self.key(id).to_string(),
                    step: self.step_of(id).id.to_string(),
                    start_s: at,
                    estimate_s: est,
                };
                at += est;
                c
            })
            .collect();

        // Stores in order of first step that writes to them; commands (whose writes rewind
        // cannot see) and read-only steps last.
        let mut order: Vec<WritesTo> = Vec::new();
        for s in &wf.steps {
            let w = s.action.writes_to();
            if !order.contains(&w) {
                order.push(w);
            }
        }
        order.sort_by_key(|w| matches!(w, WritesTo::Unknown | WritesTo::Nothing));
        order.sort_by_key(|w| matches!(w, WritesTo::Nothing));
        let n_targets = self.targets().len();
        let stores = order
            .into_iter()
            .map(|store| {
                let mut covered = vec![false; n_targets];
                let mut instances = 0;
                let mut step_ids = Vec::new();
                let mut actions: Vec<String> = Vec::new();
                for (i, s) in
                    wf.steps.iter().enumerate().filter(|(_, s)| s.action.writes_to() == store)
                {
                    step_ids.push(s.id.to_string());
                    let a = s.action.describe();
                    if !actions.contains(&a) {
                        actions.push(a);
                    }
                    for id in self.instances_of_step(i) {
                        if self.instance(id).skipped {
                            continue;
                        }
                        instances += 1;
                        for t in self.covered_targets(id) {
                            covered[t as usize] = true;
                        }
                    }
                }
                StoreSummary {
                    store: store.name(),
                    kind: store.kind().to_owned(),
                    steps: step_ids,
                    instances,
                    targets: covered.iter().filter(|c| **c).count(),
                    actions,
                }
            })
            .collect();

        let mut groups = BTreeMap::new();
        for g in self.groups() {
            *groups.entry(g.attr.to_string()).or_insert(0) += 1;
        }
        let total_skipped: usize = skipped.iter().sum();
        PlanSummary {
            workflow: wf.name.clone(),
            restore_point: self.restore_point(),
            fingerprint: self.fingerprint().to_string(),
            targets: TargetSummary {
                count: n_targets,
                kind: wf.target_kind.to_string(),
                file: self.targets().file().to_owned(),
                groups,
            },
            instances: self.len(),
            runnable: self.len() - total_skipped,
            skipped: total_skipped,
            steps,
            resources,
            critical_path,
            critical_path_s: lb.critical_path.as_secs_f64(),
            lower_bound_s: lb.makespan.as_secs_f64(),
            bound_by: lb
                .bound_by
                .map_or_else(|| "critical_path".to_owned(), |p| format!("pool:{p}")),
            stores,
        }
    }
}
