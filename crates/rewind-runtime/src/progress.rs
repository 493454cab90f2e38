//! Progress of a run, for whoever displays it.

use std::time::Duration;

use rewind_model::{InstanceId, Plan};
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
    /// Estimated time left, from estimates scaled by how long attempts have really taken.
    pub eta: Option<Duration>,
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
}

/// An observer that shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn progress(&mut self, _: &Progress) {}
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
}

/// Time left: the longer of the longest remaining path among unfinished instances and, per pool,
/// its unfinished work over its capacity; scaled by `speed` (observed / estimated durations).
pub(crate) fn eta(plan: &Plan, sched: &Scheduler<'_>, speed: f64) -> Option<Duration> {
    let pools = &plan.workflow().resources;
    let mut work = vec![Duration::ZERO; pools.len()];
    let mut path = Duration::ZERO;
    let mut open = false;
    for i in 0..plan.len() {
        let id = InstanceId::new(i);
        if !matches!(sched.state(id), State::Pending | State::Running) {
            continue;
        }
        open = true;
        path = path.max(plan.rank(id));
        if let Some(p) = plan.pool_of(id) {
            work[p] += plan.estimate(id);
        }
    }
    if !open {
        return Some(Duration::ZERO);
    }
    let pool =
        pools.iter().zip(&work).map(|(p, w)| *w / p.capacity).max().unwrap_or(Duration::ZERO);
    let left = path.max(pool);
    Some(left.mul_f64(if speed.is_finite() && speed > 0.0 { speed } else { 1.0 }))
}
