//! The loop of `rewind serve --drills DIR` around the [`Planner`]: sleep until the next due time,
//! run what is due, one drill after the other, until asked to stop.
//!
//! The clock and the drill run are passed in ([`Clock`], the `run` callback), so the binary runs
//! real drills on the wall clock and a test runs fakes in tokio's paused time, through the same
//! loop. Stopping (SIGTERM, SIGINT in the binary) ends a sleep at once; a drill that is running
//! is let finish (its cleanup included), and no further drill starts.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::schedule::{Due, Planner};

/// The time, and sleeping until a time.
pub trait Clock {
    /// Now.
    fn now(&self) -> SystemTime;
    /// Resolves at `until` (at once when it has passed).
    fn sleep_until(&self, until: SystemTime) -> impl Future<Output = ()> + Send;
}

/// The longest single sleep: the wall clock may jump (a suspended host, a corrected clock), so
/// the loop looks again at least this often.
pub const MAX_NAP: Duration = Duration::from_secs(60);

/// Why the loop returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (the watch turned true).
    Asked,
    /// No drill has a slot ahead: nothing will ever be due.
    NothingAhead,
}

/// Runs `planner`'s drills until `stop` turns true. `run` runs one due drill to its end and
/// returns when it actually started. Drills run one at a time (the oldest slot first, its
/// lateness measured when it starts), so a drill never overlaps itself (nor any other).
pub async fn serve<C, F, Fut>(
    planner: &mut Planner,
    clock: &C,
    mut run: F,
    mut stop: watch::Receiver<bool>,
) -> Stopped
where
    C: Clock,
    F: FnMut(Due) -> Fut,
    Fut: Future<Output = SystemTime>,
{
    loop {
        while let Some(due) = planner.next_due(clock.now()) {
            let name = due.drill.clone();
            let started = run(due).await;
            planner.finished(&name, started);
            if *stop.borrow() {
                return Stopped::Asked;
            }
        }
        if *stop.borrow() {
            return Stopped::Asked;
        }
        let now = clock.now();
        let Some(wake) = planner.next_wake() else { return Stopped::NothingAhead };
        let until = wake.min(now + MAX_NAP);
        tokio::select! {
            () = clock.sleep_until(until) => {}
            asked = stop.wait_for(|s| *s) => {
                if asked.is_ok() {
                    return Stopped::Asked;
                }
                // Nobody can ask any more: sleep on.
                clock.sleep_until(until).await;
            }
        }
    }
}
