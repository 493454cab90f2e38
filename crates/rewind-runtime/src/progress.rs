//! Progress of a run, for whoever displays it.

use std::time::{Duration, SystemTime};

use rewind_model::{AttemptOutcome, InstanceId, InstanceKey, Plan, RunId};
use rewind_scheduler::{Counts, Scheduler, State};

/// A snapshot of a run's progress, taken after a durable commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Offset reached (virtual for simulations).
    pub clock: Duration,
    /// Instances per state.
    pub counts: Counts,
    /// Targets fully restored.
    pub restored_targets: usize,
    /// All targets.
    pub targets: usize,
    /// Estimated time left: by estimates until an attempt has succeeded, then by the estimates
    /// scaled by how long attempts have really taken (see [`EtaBasis`]).
    pub eta: Option<Duration>,
    /// What `eta` is based on.
    pub eta_basis: EtaBasis,
    /// Virtual-time simulation.
    pub simulated: bool,
}

impl Progress {
    /// Share of targets restored, 0–100.
    pub fn percent_restored(&self) -> f64 {
        if self.targets == 0 {
            100.0
        } else {
            100.0 * self.restored_targets as f64 / self.targets as f64
        }
    }
}

/// Receives progress. Implementations decide how often to show it.
pub trait Observer: Send {
    /// Called after each durable commit (at most every few hundred milliseconds of wall time, and
    /// once at the end).
    fn progress(&mut self, p: &Progress);
    /// An attempt failed (`retry_in`: when the next attempt is due, if any).
    fn failure(&mut self, key: &str, attempt: u32, error: &str, retry_in: Option<Duration>);
    /// Something the operator should read (interruptions, cancels, take-overs).
    fn note(&mut self, message: &str);
    /// Asked after every turn: `true` stops the run as a first SIGINT would (nothing new
    /// starts, running actions finish, the run stays resumable). For embedders and benchmarks.
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// Asked after every turn of a drive whose attempts run on workers: `true` hands the run
    /// off at once (`rewind coordinate` stopping): what happened is committed, the attempts on
    /// workers run on (the next driver adopts them), and the drive ends interrupted. A drive of
    /// local attempts ignores it.
    fn hand_off_requested(&mut self) -> bool {
        false
    }
    /// A drive begins: told once, before any attempt of this drive ends. For tracing.
    fn drive_started(&mut self, _drive: &DriveStart<'_>) {}
    /// An attempt ended (it is in the batch the next commit makes durable). Every attempt that
    /// ends during the drive is told once, including those its previous orchestrator left open
    /// (ended as interrupted at the start). For tracing.
    fn attempt_ended(&mut self, _attempt: &AttemptEnd<'_>) {}
}

/// What a drive is about, for [`Observer::drive_started`].
#[derive(Clone, Copy, Debug)]
pub struct DriveStart<'a> {
    /// The run.
    pub run: RunId,
    /// The workflow's `name`.
    pub workflow: &'a str,
    /// Virtual-time simulation: the run's clock is the simulated one.
    pub simulated: bool,
    /// The run had attempts before this drive (`resume`, `retry`, a take-over).
    pub resumed: bool,
    /// The run's clock when this drive began.
    pub clock: Duration,
    /// The wall instant a real run's clock counts from (the run's creation).
    pub origin: SystemTime,
}

/// How one attempt ended, for [`Observer::attempt_ended`].
#[derive(Clone, Copy, Debug)]
pub struct AttemptEnd<'a> {
    /// The instance (its step and subject).
    pub key: &'a InstanceKey,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The resource pool its step draws from.
    pub pool: Option<&'a str>,
    /// When it started, on the run's clock (virtual for simulations).
    pub started: Duration,
    /// When it ended, on the run's clock.
    pub ended: Duration,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// A command's exit code.
    pub exit_code: Option<i32>,
    /// What went wrong.
    pub error: Option<&'a str>,
}

/// An observer that shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn progress(&mut self, _: &Progress) {}
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
}

/// What an ETA is based on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EtaBasis {
    /// The workflow's estimates alone: nothing has finished yet (or a simulation, whose clock
    /// is the estimates).
    #[default]
    Estimates,
    /// The estimates scaled by observed / estimated durations of finished instances: per step
    /// when the step has finished instances, else over every finished instance.
    Observed,
}

impl EtaBasis {
    /// `by estimates` or `by observed durations`.
    pub fn words(self) -> &'static str {
        match self {
            Self::Estimates => "by estimates",
            Self::Observed => "by observed durations",
        }
    }
}

/// Real durations of succeeded attempts against their estimates, per step and overall: what
/// a real run's ETA learns from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    /// Per step: (observed, estimated) of its succeeded attempts.
    per_step: Vec<(Duration, Duration)>,
    observed: Duration,
    estimated: Duration,
}

impl Observed {
    pub(crate) fn new(steps: usize) -> Self {
        Self { per_step: vec![(Duration::ZERO, Duration::ZERO); steps], ..Self::default() }
    }

    /// An attempt of step `step` estimated at `estimated` succeeded after `took`.
    pub(crate) fn add(&mut self, step: usize, took: Duration, estimated: Duration) {
        if let Some(s) = self.per_step.get_mut(step) {
            s.0 += took;
            s.1 += estimated;
        }
        self.observed += took;
        self.estimated += estimated;
    }

    /// Observed / estimated over every finished instance, once one with an estimate finished.
    fn overall(&self) -> Option<f64> {
        ratio(self.observed, self.estimated)
    }

    /// The factor for the estimates of `step`: its own when it has finished instances, else
    /// the overall one.
    fn factor(&self, step: usize, overall: f64) -> f64 {
        self.per_step.get(step).and_then(|&(o, e)| ratio(o, e)).unwrap_or(overall)
    }
}

fn ratio(observed: Duration, estimated: Duration) -> Option<f64> {
    let r = observed.as_secs_f64() / estimated.as_secs_f64();
    (estimated > Duration::ZERO && r.is_finite()).then_some(r)
}

/// Time left: the longer of the longest remaining path among unfinished instances and, per pool,
/// its unfinished work over its capacity. By the estimates until an instance with an estimate
/// has succeeded (`observed` empty); then every unfinished instance's estimate is scaled by its
/// step's observed / estimated ratio (the overall one for a step with nothing finished yet), and
/// the path and the pools' work recomputed with the scaled durations.
pub(crate) fn eta(
    plan: &Plan,
    sched: &Scheduler<'_>,
    observed: Option<&Observed>,
) -> (Option<Duration>, EtaBasis) {
    let pools = &plan.workflow().resources;
    let open = |id: InstanceId| matches!(sched.state(id), State::Pending | State::Running);
    let Some((observed, overall)) = observed.and_then(|o| Some((o, o.overall()?))) else {
        let mut work = vec![Duration::ZERO; pools.len()];
        let mut path = Duration::ZERO;
        let mut any = false;
        for i in 0..plan.len() {
            let id = InstanceId::new(i);
            if !open(id) {
                continue;
            }
            any = true;
            path = path.max(plan.rank(id));
            if let Some(p) = plan.pool_of(id) {
                work[p] += plan.estimate(id);
            }
        }
        if !any {
            return (Some(Duration::ZERO), EtaBasis::Estimates);
        }
        let pool =
            pools.iter().zip(&work).map(|(p, w)| *w / p.capacity).max().unwrap_or(Duration::ZERO);
        return (Some(path.max(pool)), EtaBasis::Estimates);
    };
    let factors: Vec<f64> =
        (0..plan.workflow().steps.len()).map(|s| observed.factor(s, overall)).collect();
    // Instances are numbered so that every edge goes forward: one backward pass.
    let mut rank = vec![0.0f64; plan.len()];
    let mut work = vec![0.0f64; pools.len()];
    let mut path = 0.0f64;
    for i in (0..plan.len()).rev() {
        let id = InstanceId::new(i);
        if !open(id) {
            continue;
        }
        let est = plan.estimate(id).as_secs_f64() * factors[plan.instance(id).step as usize];
        let tail = plan.dependents(id).map(|d| rank[d.index()]).fold(0.0, f64::max);
        rank[i] = est + tail;
        path = path.max(rank[i]);
        if let Some(p) = plan.pool_of(id) {
            work[p] += est;
        }
    }
    let pool =
        pools.iter().zip(&work).map(|(p, w)| w / f64::from(p.capacity.max(1))).fold(0.0, f64::max);
    let left = path.max(pool);
    let left =
        if left.is_finite() { Duration::from_secs_f64(left.max(0.0)) } else { Duration::MAX };
    (Some(left), EtaBasis::Observed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic in a test is a failed test
mod tests {
    use rewind_model::{InstanceKey, TargetSet, TargetsFormat, Workflow};
    use rewind_scheduler::{Config, Outcome};

    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn plan() -> Plan {
        let step = |id: &str, scope: &str, needs: &str, est: &str| {
            format!(
                "[[steps]]\nid = \"{id}\"\nscope = \"{scope}\"\nneeds = [{needs}]\nestimate = \"{est}\"\naction = {{ kind = \"command\", program = \"x\" }}\n"
            )
        };
        let text = [
            "name = \"w\"\ntarget_kind = \"site\"\n".to_owned(),
            step("a", "run", "", "1h"),
            step("b", "target", "\"a\"", "1h"),
            step("c", "run", "\"b\"", "10h"),
        ]
        .concat();
        let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
        let csv = "id,kind\n00000000-0000-4000-8000-000000000001,site\n00000000-0000-4000-8000-000000000002,site\n";
        let targets = TargetSet::parse("t.csv", csv, TargetsFormat::Csv).unwrap();
        Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap()
    }

    fn id(p: &Plan, key: &str) -> InstanceId {
        p.find(&key.parse::<InstanceKey>().unwrap()).unwrap()
    }

    /// Issue 15: a real run's first progress line said `ETA 1d` from production estimates while
    /// the sandbox restores in seconds. Once something finished, the ETA learns from it.
    #[test]
    fn the_eta_learns_from_observed_durations_per_step_then_overall() {
        let p = plan();
        let mut s = Scheduler::new(&p, Config::default());
        let mut seen = Observed::new(3);
        assert_eq!(eta(&p, &s, Some(&seen)), (Some(12 * H), EtaBasis::Estimates), "nothing ran");
        let a = s.poll(Duration::ZERO);
        s.on_outcome(a[0].id, Outcome::Succeeded, Duration::from_secs(36));
        seen.add(0, Duration::from_secs(36), H);
        // a took 1% of its estimate; b and c have no finished instance: 1% overall.
        let (left, basis) = eta(&p, &s, Some(&seen));
        assert_eq!(basis, EtaBasis::Observed);
        assert_eq!(left.unwrap().as_secs(), 11 * 36);
        assert_eq!(eta(&p, &s, None), (Some(11 * H), EtaBasis::Estimates), "a simulation");

        // One b took half its estimate: the other b is scaled by its own step (0.5), c by the
        // overall ratio ((36 s + 30 min) / 2 h).
        let bs = s.poll(Duration::from_secs(36));
        assert_eq!(bs.len(), 2);
        let b1 = id(&p, "b/00000000-0000-4000-8000-000000000001");
        s.on_outcome(b1, Outcome::Succeeded, Duration::from_secs(1836));
        seen.add(1, H / 2, H);
        let overall = (36.0 + 1800.0) / 7200.0;
        let want = 1800.0 + 10.0 * 3600.0 * overall;
        let (left, basis) = eta(&p, &s, Some(&seen));
        assert_eq!(basis, EtaBasis::Observed);
        assert!((left.unwrap().as_secs_f64() - want).abs() < 1e-6, "{left:?} vs {want}");
    }
}
