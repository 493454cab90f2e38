//! Plan expansion: a workflow over a set of targets becomes a DAG of step instances.
//!
//! Instances are numbered step by step in the workflow's topological order, so every edge goes
//! from a lower to a higher [`InstanceId`]; ranks are then one backwards pass. Node `i` of the
//! `petgraph` graph is instance `i`.
//!
//! Scope rules for `needs` (DESIGN.md): target→target the same target; target→group the group(s)
//! holding the target's value; anything→run the single instance; group→target every target of the
//! group; run→target and run→group every instance; group:a→group:b every b-group sharing a target
//! with the a-group. An instance skipped by `when` stays in the plan (state `skipped`) but out of
//! the graph: its dependents depend on its own dependencies instead, so it is satisfied at once
//! without reordering anything around it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::Diagnostics;
use crate::fingerprint::Fingerprint;
use crate::ids::{AttrName, InstanceKey, PoolName, SubjectKey};
use crate::targets::{Target, TargetSet};
use crate::time::RestorePoint;
use crate::workflow::{Scope, Step, Workflow};

/// Index of a step instance in its plan (and of its node in the plan's graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(u32);

impl InstanceId {
    /// The index as `usize`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The instance at `index`.
    ///
    /// # Panics
    /// If `index` does not fit in `u32`; plans are limited to `u32::MAX` instances.
    pub fn new(index: usize) -> Self {
        Self(u32::try_from(index).expect("plans hold at most u32::MAX instances"))
    }

    fn node(self) -> NodeIndex<u32> {
        NodeIndex::new(self.index())
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What an instance is about, by index into the plan's targets or groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The whole run.
    Run,
    /// Target at this index of [`Plan::targets`].
    Target(u32),
    /// Group at this index of [`Plan::groups`].
    Group(u32),
}

/// One step instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Index of its step in [`Workflow::steps`].
    pub step: u32,
    /// What it is about.
    pub subject: Subject,
    /// Skipped by the step's `when`; terminal from the start.
    pub skipped: bool,
}

/// The targets sharing one value of a grouping attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The grouping attribute.
    pub attr: AttrName,
    /// The shared value.
    pub value: String,
    /// Indices of member targets, in file order.
    pub members: Vec<u32>,
}

/// The best makespan any schedule could reach: the longer of the critical path and, for each
/// pool, its total work divided by its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerBound {
    /// The longest chain of estimates.
    pub critical_path: Duration,
    /// Per pool (in workflow order): total estimated work, and work / capacity.
    pub pools: Vec<(PoolName, Duration, Duration)>,
    /// The maximum of all of the above.
    pub makespan: Duration,
    /// The pool that sets the bound, or `None` when the critical path does.
    pub bound_by: Option<PoolName>,
}

/// Per grouping attribute: its groups (a contiguous range of [`Plan::groups`]) and, per target,
/// the groups it belongs to (compressed rows).
#[derive(Clone, Debug)]
struct AttrGroups {
    groups: Range<u32>,
    offsets: Vec<u32>,
    of_target: Vec<u32>,
}

impl AttrGroups {
    fn of(&self, target: u32) -> &[u32] {
        let t = target as usize;
        &self.of_target[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }
}

/// A workflow expanded over targets at a restore point.
#[derive(Clone, Debug)]
pub struct Plan {
    workflow: Workflow,
    targets: TargetSet,
    restore_point: RestorePoint,
    groups: Vec<Group>,
    by_attr: HashMap<AttrName, AttrGroups>,
    instances: Vec<Instance>,
    /// First instance of each step (by step index) and how many it has.
    step_range: Vec<Range<u32>>,
    step_pool: Vec<Option<u16>>,
    graph: DiGraph<(), (), u32>,
    rank: Vec<Duration>,
    target_index: HashMap<crate::TargetId, u32>,
    fingerprint: Fingerprint,
}

impl Plan {
    /// Checks `targets` against `workflow` and expands the plan.
    pub fn build(
        workflow: Workflow,
        targets: TargetSet,
        restore_point: RestorePoint,
    ) -> Result<Self, Diagnostics> {
        targets.check(&workflow)?;
        Ok(Self::expand(workflow, targets, restore_point))
    }

    fn expand(workflow: Workflow, targets: TargetSet, restore_point: RestorePoint) -> Self {
        let (groups, by_attr) = build_groups(&workflow, targets.targets());

        // Instances, step by step in topological order.
        let mut step_range = vec![0..0; workflow.steps.len()];
        let mut instances: Vec<Instance> = Vec::new();
        for &s in workflow.topological_order() {
            let step = &workflow.steps[s];
            let first = instances.len() as u32;
            let si = s as u32;
            match &step.scope {
                Scope::Run => {
                    instances.push(Instance { step: si, subject: Subject::Run, skipped: false })
                }
                Scope::Target => {
                    instances.extend(targets.targets().iter().enumerate().map(|(t, target)| {
                        Instance {
                            step: si,
                            subject: Subject::Target(t as u32),
                            skipped: !target.satisfies(&step.when),
                        }
                    }))
                }
                Scope::Group(a) => {
                    let range = by_attr.get(a).map_or(0..0, |g| g.groups.clone());
                    instances.extend(range.map(|g| Instance {
                        step: si,
                        subject: Subject::Group(g),
                        skipped: false,
                    }));
                }
            }
            step_range[s] = first..instances.len() as u32;
        }

        // Edges, with skipped instances contracted away.
        let n = instances.len();
        let mut graph = DiGraph::<(), (), u32>::with_capacity(n, n * 2);
        for _ in 0..n {
            graph.add_node(());
        }
        let mut bypass: HashMap<u32, Box<[u32]>> = HashMap::new();
        let mut deps: Vec<u32> = Vec::new();
        let mut direct: Vec<u32> = Vec::new();
        for (i, inst) in instances.iter().enumerate() {
            deps.clear();
            for &ns in workflow.need_indices(inst.step as usize) {
                direct.clear();
                dependencies(
                    inst,
                    &workflow.steps[ns].scope,
                    &step_range[ns],
                    &groups,
                    &by_attr,
                    &mut direct,
                );
                for &d in &direct {
                    match bypass.get(&d) {
                        Some(through) => deps.extend_from_slice(through),
                        None => deps.push(d),
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            if inst.skipped {
                bypass.insert(i as u32, deps.as_slice().into());
            } else {
                for &d in &deps {
                    graph.add_edge(NodeIndex::new(d as usize), NodeIndex::new(i), ());
                }
            }
        }

        // Longest remaining path, one backwards pass (edges go from lower to higher ids).
        let mut rank = vec![Duration::ZERO; n];
        for i in (0..n).rev() {
            if instances[i].skipped {
                continue;
            }
            let tail = graph
                .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
                .map(|s| rank[s.index()])
                .max()
                .unwrap_or(Duration::ZERO);
            rank[i] = workflow.steps[instances[i].step as usize].estimate + tail;
        }

        let step_pool = workflow
            .steps
            .iter()
            .map(|s| {
                s.resource.as_ref().and_then(|r| {
                    workflow
                        .resources
                        .iter()
                        .position(|p| &p.name == r)
                        .and_then(|p| u16::try_from(p).ok())
                })
            })
            .collect();
        let target_index =
            targets.targets().iter().enumerate().map(|(i, t)| (t.id, i as u32)).collect();
        let fingerprint = Fingerprint::current(&workflow, &targets, restore_point);
        Self {
            workflow,
            targets,
            restore_point,
            groups,
            by_attr,
            instances,
            step_range,
            step_pool,
            graph,
            rank,
            target_index,
            fingerprint,
        }
    }

    /// The workflow.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The targets, in file order.
    pub fn targets(&self) -> &TargetSet {
        &self.targets
    }

    /// The restore point.
    pub fn restore_point(&self) -> RestorePoint {
        self.restore_point
    }

    /// The groups of every grouping attribute.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The plan's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether this plan is the one a run stored `stored` for: its fingerprint computed with the
    /// stored fingerprint's own encoding version equals it. Says why not.
    pub fn check_fingerprint(&self, stored: &str) -> Result<(), String> {
        let stored: Fingerprint =
            stored.parse().map_err(|e: crate::FingerprintError| e.to_string())?;
        match Fingerprint::compute(
            stored.version(),
            &self.workflow,
            &self.targets,
            self.restore_point,
        ) {
            Some(f) if f == stored => Ok(()),
            Some(f) => Err(format!(
                "its fingerprint is now {f}, not {stored} (was it created by another version of rewind?)"
            )),
            None => Err(format!(
                "its fingerprint {stored} uses encoding version {}, which this rewind does not know (it knows up to {}); use the rewind that created it",
                stored.version(),
                Fingerprint::CURRENT
            )),
        }
    }

    /// Number of instances, skipped ones included.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// True when the plan has no instances.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// All instances, by id.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Every instance id.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = InstanceId> + use<> {
        (0..self.instances.len() as u32).map(InstanceId)
    }

    /// One instance.
    pub fn instance(&self, id: InstanceId) -> &Instance {
        &self.instances[id.index()]
    }

    /// The step an instance belongs to.
    pub fn step_of(&self, id: InstanceId) -> &Step {
        &self.workflow.steps[self.instances[id.index()].step as usize]
    }

    /// The instances of the step at `step` (index into [`Workflow::steps`]).
    pub fn instances_of_step(
        &self,
        step: usize,
    ) -> impl ExactSizeIterator<Item = InstanceId> + use<> {
        self.step_range[step].clone().map(InstanceId)
    }

    /// The dependency graph; node `i` is instance `i`. Skipped instances have no edges.
    pub fn graph(&self) -> &DiGraph<(), (), u32> {
        &self.graph
    }

    /// Instances that wait for `id`.
    pub fn dependents(&self, id: InstanceId) -> impl Iterator<Item = InstanceId> + '_ {
        self.graph
            .neighbors_directed(id.node(), Direction::Outgoing)
            .map(|n| InstanceId(n.index() as u32))
    }

    /// Instances `id` waits for.
    pub fn dependencies(&self, id: InstanceId) -> impl Iterator<Item = InstanceId> + '_ {
        self.graph
            .neighbors_directed(id.node(), Direction::Incoming)
            .map(|n| InstanceId(n.index() as u32))
    }

    /// Longest remaining path from the start of `id` to the end of the plan, by estimates.
    pub fn rank(&self, id: InstanceId) -> Duration {
        self.rank[id.index()]
    }

    /// The estimate of one attempt of `id` (zero when skipped).
    pub fn estimate(&self, id: InstanceId) -> Duration {
        if self.instances[id.index()].skipped { Duration::ZERO } else { self.step_of(id).estimate }
    }

    /// Index into [`Workflow::resources`] of the pool `id` draws from.
    pub fn pool_of(&self, id: InstanceId) -> Option<usize> {
        self.step_pool[self.instances[id.index()].step as usize].map(usize::from)
    }

    /// The earliest target an instance is about, for tie-breaking: run-scope instances come first
    /// (0), a target by its position + 1, a group by its first member's position + 1.
    pub fn target_order(&self, id: InstanceId) -> u32 {
        match self.instances[id.index()].subject {
            Subject::Run => 0,
            Subject::Target(t) => t + 1,
            Subject::Group(g) => self.groups[g as usize].members.first().map_or(0, |t| t + 1),
        }
    }

    /// The target of a target-scope instance.
    pub fn target_of(&self, id: InstanceId) -> Option<&Target> {
        match self.instances[id.index()].subject {
            Subject::Target(t) => self.targets.targets().get(t as usize),
            _ => None,
        }
    }

    /// The group of a group-scope instance.
    pub fn group_of(&self, id: InstanceId) -> Option<&Group> {
        match self.instances[id.index()].subject {
            Subject::Group(g) => self.groups.get(g as usize),
            _ => None,
        }
    }

    /// The targets an instance covers: one, a group's members, or (run scope) all.
    pub fn covered_targets(&self, id: InstanceId) -> Box<dyn Iterator<Item = u32> + '_> {
        match self.instances[id.index()].subject {
            Subject::Run => Box::new(0..self.targets.len() as u32),
            Subject::Target(t) => Box::new(std::iter::once(t)),
            Subject::Group(g) => Box::new(self.groups[g as usize].members.iter().copied()),
        }
    }

    /// The stable key of an instance (`STEP`, `STEP/<uuid>`, `STEP/<attr>=<value>`).
    pub fn key(&self, id: InstanceId) -> InstanceKey {
        let inst = &self.instances[id.index()];
        let step = self.workflow.steps[inst.step as usize].id.clone();
        let subject = match inst.subject {
            Subject::Run => SubjectKey::Run,
            Subject::Target(t) => SubjectKey::Target(self.targets.targets()[t as usize].id),
            Subject::Group(g) => {
                let g = &self.groups[g as usize];
                SubjectKey::Group { attr: g.attr.clone(), value: g.value.clone() }
            }
        };
        InstanceKey { step, subject }
    }

    /// The instance with this key.
    pub fn find(&self, key: &InstanceKey) -> Option<InstanceId> {
        let s = self.workflow.step_index(&key.step)?;
        let range = &self.step_range[s];
        let offset = match (&self.workflow.steps[s].scope, &key.subject) {
            (Scope::Run, SubjectKey::Run) => 0,
            (Scope::Target, SubjectKey::Target(t)) => *self.target_index.get(t)?,
            (Scope::Group(a), SubjectKey::Group { attr, value }) if a == attr => {
                let ag = self.by_attr.get(a)?;
                let g = ag.groups.clone().find(|&g| &self.groups[g as usize].value == value)?;
                g - ag.groups.start
            }
            _ => return None,
        };
        (offset < range.end - range.start).then(|| InstanceId(range.start + offset))
    }

    /// The instance of step `step` (index) that `id` reads `{{needs.STEP.KEY}}` from: the one
    /// dependency instance of that step, when there is exactly one.
    pub fn dependency_instance(&self, id: InstanceId, step: usize) -> Option<InstanceId> {
        let mut out = Vec::new();
        dependencies(
            &self.instances[id.index()],
            &self.workflow.steps[step].scope,
            &self.step_range[step],
            &self.groups,
            &self.by_attr,
            &mut out,
        );
        match out.as_slice() {
            [one] => Some(InstanceId(*one)),
            _ => None,
        }
    }

    /// The lower bound on the makespan.
    pub fn lower_bound(&self) -> LowerBound {
        let critical_path = self.rank.iter().copied().max().unwrap_or(Duration::ZERO);
        let mut work = vec![Duration::ZERO; self.workflow.resources.len()];
        for id in self.ids() {
            if let Some(p) = self.pool_of(id) {
                work[p] += self.estimate(id);
            }
        }
        let mut makespan = critical_path;
        let mut bound_by = None;
        let pools = self
            .workflow
            .resources
            .iter()
            .zip(work)
            .map(|(p, w)| {
                let bound = w / p.capacity;
                if bound > makespan {
                    makespan = bound;
                    bound_by = Some(p.name.clone());
                }
                (p.name.clone(), w, bound)
            })
            .collect();
        LowerBound { critical_path, pools, makespan, bound_by }
    }

    /// The longest chain of instances by estimates, first to last.
    pub fn critical_path(&self) -> Vec<InstanceId> {
        let Some(start) = (0..self.instances.len())
            .filter(|&i| !self.instances[i].skipped)
            .max_by(|&a, &b| self.rank[a].cmp(&self.rank[b]).then(b.cmp(&a)))
        else {
            return Vec::new();
        };
        let mut path = vec![InstanceId(start as u32)];
        let mut cur = path[0];
        while let Some(next) =
            self.dependents(cur).max_by(|a, b| self.rank(*a).cmp(&self.rank(*b)).then(b.cmp(a)))
        {
            path.push(next);
            cur = next;
        }
        path
    }
}

/// Groups of every attribute some step groups by, in order of first appearance among targets.
fn build_groups(
    workflow: &Workflow,
    targets: &[Target],
) -> (Vec<Group>, HashMap<AttrName, AttrGroups>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_attr = HashMap::new();
    for step in &workflow.steps {
        let Scope::Group(attr) = &step.scope else { continue };
        if by_attr.contains_key(attr) {
            continue;
        }
        let first = groups.len() as u32;
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut offsets = Vec::with_capacity(targets.len() + 1);
        let mut of_target = Vec::with_capacity(targets.len());
        offsets.push(0);
        for (t, target) in targets.iter().enumerate() {
            let start = of_target.len();
            for value in target.attrs.get(attr).map_or(&[][..], |v| v.values()) {
                if value.is_empty() {
                    continue;
                }
                let g = *index.entry(value.as_str()).or_insert_with(|| {
                    groups.push(Group {
                        attr: attr.clone(),
                        value: value.clone(),
                        members: Vec::new(),
                    });
                    (groups.len() - 1) as u32
                });
                if !of_target[start..].contains(&g) {
                    of_target.push(g);
                    groups[g as usize].members.push(t as u32);
                }
            }
            offsets.push(of_target.len() as u32);
        }
        let range = first..groups.len() as u32;
        by_attr.insert(attr.clone(), AttrGroups { groups: range, offsets, of_target });
    }
    (groups, by_attr)
}

/// Appends to `out` the instances of a step with scope `dep_scope` (instances `dep`) that
/// instance `inst` depends on.
fn dependencies(
    inst: &Instance,
    dep_scope: &Scope,
    dep: &Range<u32>,
    groups: &[Group],
    by_attr: &HashMap<AttrName, AttrGroups>,
    out: &mut Vec<u32>,
) {
    let group_offset =
        |attr: &AttrName, g: u32| by_attr.get(attr).map(|ag| dep.start + g - ag.groups.start);
    match (inst.subject, dep_scope) {
        (_, Scope::Run) => out.push(dep.start),
        (Subject::Target(t), Scope::Target) => out.push(dep.start + t),
        (Subject::Target(t), Scope::Group(a)) => {
            if let Some(ag) = by_attr.get(a) {
                out.extend(ag.of(t).iter().filter_map(|&g| group_offset(a, g)));
            }
        }
        (Subject::Group(g), Scope::Target) => {
            out.extend(groups[g as usize].members.iter().map(|&t| dep.start + t));
        }
        (Subject::Group(g), Scope::Group(a)) => {
            if let Some(ag) = by_attr.get(a) {
                let start = out.len();
                for &t in &groups[g as usize].members {
                    out.extend(ag.of(t).iter().filter_map(|&g2| group_offset(a, g2)));
                }
                out[start..].sort_unstable();
                let mut tail = out.split_off(start);
                tail.dedup();
                out.extend(tail);
            }
        }
        (Subject::Run, Scope::Target | Scope::Group(_)) => out.extend(dep.clone()),
    }
}
