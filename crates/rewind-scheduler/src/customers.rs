//! The `customers` policy: earliest latest-start first, with deadlines that make sites come back
//! one after another while the run still ends near its lower bound.
//!
//! Computed once per plan, in a few linear passes (no clock, no I/O), so a push stays one heap
//! insertion and a simulated run stays reproducible bit for bit:
//!
//! 1. **Target order.** Targets are put in the order they should come back: grouped by the
//!    values of the *gating* attributes (an attribute whose group-scope steps wait for target-scope
//!    instances, like a shard restore that starts once every site of the shard has its ID maps;
//!    the heaviest such attribute first), then in file order. Sites that share a gate are then
//!    neighbours, so a gate opens as soon as its own sites are ready, not when all are.
//! 2. **Due times.** Target `t` is due at `max(its own earliest finish, max over pools p of
//!    (work of p for the targets up to t in that order) / capacity of p)`: when it would be
//!    back if targets went one after another at the pools' throughput (pool contention, not only
//!    path length), never before its own critical path. Group-scope work is shared among the
//!    group's members. The run's end is due at the lower bound on the makespan.
//! 3. **Latest starts.** One backwards pass: an instance's deadline is the earliest of its own
//!    target's due time (the lower bound for run- and group-scope instances) and its dependents'
//!    latest starts; its latest start is that minus its estimate.
//!
//! Ready instances start earliest latest-start first, ties to earlier targets in that order. So
//! what the makespan hangs on (the long pre-started restores, whose latest start is the lower
//! bound minus their remaining path) goes first when it must, and otherwise the sites closest to
//! their due time, that is closest to done in the order, advance first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use rewind_model::{AttrName, InstanceId, Plan, Subject};

use crate::{Config, Outcome, Priority, Scheduler};

/// Per instance: `(primary, secondary)` heap keys, greatest first.
pub(crate) fn keys(plan: &Plan) -> Vec<(u64, u32)> {
    let s = schedule(plan);
    to_keys(plan, &s.latest_start, &s.order)
}

fn to_keys(plan: &Plan, latest_start: &[i64], order: &[u32]) -> Vec<(u64, u32)> {
    let pos = positions(order);
    (0..plan.len())
        .map(|i| {
            let id = InstanceId::new(i);
            let first = match plan.instance(id).subject {
                Subject::Run => 0,
                Subject::Target(t) => pos[t as usize] + 1,
                Subject::Group(g) => plan.groups()[g as usize]
                    .members
                    .iter()
                    .map(|&m| pos[m as usize] + 1)
                    .min()
                    .unwrap_or(0),
            };
            // Greatest first: the earliest latest start has the greatest primary key.
            let primary =
                (i128::from(i64::MAX) - i128::from(latest_start[i])).clamp(0, i128::from(u64::MAX));
            (primary as u64, u32::MAX - first)
        })
        .collect()
}

/// A trial run on estimates (no failures) with the given keys, or under critical-path when
/// `keys` is `None`: its makespan and the area under its restored curve up to `horizon`.
fn trial(plan: &Plan, keys: Option<Vec<(u64, u32)>>, horizon: Duration) -> (Duration, f64) {
    let mut s = match keys {
        Some(k) => Scheduler::with_keys(plan, k),
        None => {
            Scheduler::new(plan, Config { priority: Priority::CriticalPath, ..Config::default() })
        }
    };
    let mut now = Duration::ZERO;
    let mut running = BinaryHeap::new();
    loop {
        for d in s.poll(now) {
            running.push(Reverse((now + plan.estimate(d.id), d.id)));
        }
        s.changes.clear();
        let Some(Reverse((t, id))) = running.pop() else { break };
        now = t;
        s.on_outcome(id, Outcome::Succeeded, now);
    }
    let area = s
        .restored_at
        .iter()
        .map(|f| f.map_or(0.0, |f| horizon.saturating_sub(f).as_secs_f64()))
        .sum();
    (now, area)
}

/// What the policy derives from a plan (public for tests and reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Per instance: its latest start, in nanoseconds from the start of the run (may be negative
    /// when a deadline cannot be met).
    pub latest_start: Vec<i64>,
    /// Targets (by index) in the order they are meant to come back.
    pub order: Vec<u32>,
}

fn positions(order: &[u32]) -> Vec<u32> {
    let mut pos = vec![0u32; order.len()];
    for (p, &t) in order.iter().enumerate() {
        pos[t as usize] = p as u32;
    }
    pos
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Each target's earliest possible finish: the longest chain of estimates ending at one of its
/// own instances (target scope, not skipped), pools unlimited, from the start of the run. A
/// target without instances of its own is restored with the whole run: the plan's critical path.
/// This is the "ideal" of the area-under-the-curve measure.
pub fn earliest_finish(plan: &Plan) -> Vec<Duration> {
    let n = plan.len();
    let mut ef = vec![Duration::ZERO; n];
    let mut run_end = Duration::ZERO;
    let mut target = vec![None::<Duration>; plan.targets().len()];
    // Instances are numbered in topological order: dependencies come first.
    for i in 0..n {
        let id = InstanceId::new(i);
        let inst = plan.instance(id);
        if inst.skipped {
            continue;
        }
        let start = plan.dependencies(id).map(|d| ef[d.index()]).max().unwrap_or_default();
        ef[i] = start + plan.estimate(id);
        run_end = run_end.max(ef[i]);
        if let Subject::Target(t) = inst.subject {
            let e = &mut target[t as usize];
            *e = Some(e.map_or(ef[i], |x| x.max(ef[i])));
        }
    }
    target.into_iter().map(|e| e.unwrap_or(run_end)).collect()
}

/// The policy's target order, due times and latest starts for `plan`.
pub fn schedule(plan: &Plan) -> Schedule {
    let n = plan.len();
    let n_targets = plan.targets().len();
    let groups = plan.groups();

    // 1. Gating attributes, heaviest first.
    let mut weight: HashMap<&AttrName, Duration> = HashMap::new();
    for i in 0..n {
        let id = InstanceId::new(i);
        if let Subject::Group(g) = plan.instance(id).subject
            && plan.dependencies(id).any(|d| matches!(plan.instance(d).subject, Subject::Target(_)))
        {
            *weight.entry(&groups[g as usize].attr).or_default() += plan.estimate(id);
        }
    }
    let mut gating: Vec<(&AttrName, Duration)> = weight.into_iter().collect();
    gating.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    // Per gating attribute, per target: the first group (by index) holding it.
    let mut key: Vec<Vec<u32>> = vec![vec![u32::MAX; gating.len()]; n_targets];
    for (g, group) in groups.iter().enumerate() {
        if let Some(a) = gating.iter().position(|(attr, _)| **attr == group.attr) {
            for &m in &group.members {
                let k = &mut key[m as usize][a];
                *k = (*k).min(g as u32);
            }
        }
    }
    let mut order: Vec<u32> = (0..n_targets as u32).collect();
    order.sort_by(|&a, &b| key[a as usize].cmp(&key[b as usize]).then(a.cmp(&b)));

    // 2. Due times: cumulative pool work in that order, never before the target's own earliest
    // finish.
    let pools = &plan.workflow().resources;
    let mut work = vec![vec![0f64; pools.len()]; n_targets];
    for i in 0..n {
        let id = InstanceId::new(i);
        let Some(p) = plan.pool_of(id) else { continue };
        let est = plan.estimate(id).as_secs_f64();
        match plan.instance(id).subject {
            Subject::Run => {}
            Subject::Target(t) => work[t as usize][p] += est,
            Subject::Group(g) => {
                let members = &groups[g as usize].members;
                for &m in members {
                    work[m as usize][p] += est / members.len() as f64;
                }
            }
        }
    }
    let ef = earliest_finish(plan);
    let lb = nanos(plan.lower_bound().makespan);
    let mut due = vec![lb; n_targets];
    let mut cum = vec![0f64; pools.len()];
    for &t in &order {
        let t = t as usize;
        let mut d = nanos(ef[t]);
        for (p, pool) in pools.iter().enumerate() {
            cum[p] += work[t][p];
            let at = cum[p] / f64::from(pool.capacity.max(1));
            d = d.max(nanos(Duration::from_secs_f64(at)));
        }
        due[t] = d.min(lb.max(nanos(ef[t])));
    }

    // 3. Latest starts; 4. the makespan kept (see the module's documentation).
    let ls = latest_starts(plan, &due, lb);
    let fine = |m: Duration, reference: Duration| m.as_secs_f64() <= KEEP * reference.as_secs_f64();
    let horizon = plan.lower_bound().makespan;
    let (m, area) = trial(plan, Some(to_keys(plan, &ls, &order)), horizon);
    if fine(m, horizon) {
        return Schedule { latest_start: ls, order };
    }
    let (reference, _) = trial(plan, None, horizon);
    if fine(m, reference) {
        return Schedule { latest_start: ls, order };
    }
    // Pull the due times towards the lower bound (0: every target due at the lower bound, that
    // is longest remaining path first) until the makespan holds; of those that hold, the one
    // with the greatest area under the curve; if none does, the shortest makespan.
    let mut best = (false, m, area, ls);
    for alpha in [0.75, 0.5, 0.25, 0.0] {
        let pulled: Vec<i64> = due.iter().map(|&d| lb - ((lb - d) as f64 * alpha) as i64).collect();
        let ls = latest_starts(plan, &pulled, lb);
        let (m, area) = trial(plan, Some(to_keys(plan, &ls, &order)), horizon);
        let ok = fine(m, reference);
        let better = match (ok, best.0) {
            (true, false) => true,
            (true, true) => area > best.2,
            (false, false) => m < best.1,
            (false, true) => false,
        };
        if better {
            best = (ok, m, area, ls);
        }
    }
    Schedule { latest_start: best.3, order }
}

/// The makespan a schedule may reach, relative to the lower bound or to critical-path's.
const KEEP: f64 = 1.03;

/// Latest starts, one backwards pass (edges go from lower to higher ids).
fn latest_starts(plan: &Plan, due: &[i64], lb: i64) -> Vec<i64> {
    let n = plan.len();
    let mut latest_start = vec![0i64; n];
    for i in (0..n).rev() {
        let id = InstanceId::new(i);
        let own = match plan.instance(id).subject {
            Subject::Target(t) => due[t as usize],
            _ => lb,
        };
        let deadline = plan.dependents(id).map(|d| latest_start[d.index()]).fold(own, i64::min);
        latest_start[i] = deadline.saturating_sub(nanos(plan.estimate(id)));
    }
    latest_start
}
