//! The lifecycle of a step instance, as an explicit transition table.
//!
//! ```text
//!            dispatch                 success
//! pending ───────────► running ─────────────────► succeeded
//!   ▲  │                 │ │  failure, retries left
//!   │  │                 │ └──────────────────────► pending (retry at T)
//!   │  │                 │    failure, none left / permanent
//!   │  │                 └────────────────────────► failed ──► dependents: blocked
//!   │  │ a dependency failed                         (cancel: running ─► cancelled)
//!   │  └──────────────────────────────────────────► blocked
//!   │  cancel
//!   └─────────────────────────────────────────────► cancelled
//! skipped: decided at plan time by `when`; terminal from the start.
//! `rewind retry` resets failed and blocked to pending (outside the scheduler, in the store).
//! A running instance whose orchestrator died is pending again on resume (at-least-once).
//! ```

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The state of one step instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for dependencies, a pool slot, or a retry time.
    Pending,
    /// An attempt is under way.
    Running,
    /// Done.
    Succeeded,
    /// Failed permanently (retries exhausted, or a permanent error).
    Failed,
    /// A dependency failed; it will not run.
    Blocked,
    /// Skipped by the step's `when`.
    Skipped,
    /// Stopped by `rewind cancel`.
    Cancelled,
}

impl State {
    /// Every state, in report order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Blocked,
        Self::Skipped,
        Self::Cancelled,
    ];

    /// No further transition happens without an operator (`retry`).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// Whether dependents may start: succeeded, or skipped.
    pub fn satisfies(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }

    /// The state's name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Blocked => "blocked",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the lifecycle allows `self → to`. The scheduler asserts every transition it makes
    /// against this table (in debug builds) and its tests cover each allowed edge.
    pub fn can_become(self, to: Self) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Pending, Running | Blocked | Cancelled)
                | (Running, Succeeded | Failed | Pending | Cancelled)
                | (Failed | Blocked, Pending)
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown instance state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// How many instances are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Pending.
    pub pending: usize,
    /// Running.
    pub running: usize,
    /// Succeeded.
    pub succeeded: usize,
    /// Failed.
    pub failed: usize,
    /// Blocked.
    pub blocked: usize,
    /// Skipped.
    pub skipped: usize,
    /// Cancelled.
    pub cancelled: usize,
}

impl Counts {
    /// The count of one state.
    pub fn get(&self, s: State) -> usize {
        match s {
            State::Pending => self.pending,
            State::Running => self.running,
            State::Succeeded => self.succeeded,
            State::Failed => self.failed,
            State::Blocked => self.blocked,
            State::Skipped => self.skipped,
            State::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, s: State) -> &mut usize {
        match s {
            State::Pending => &mut self.pending,
            State::Running => &mut self.running,
            State::Succeeded => &mut self.succeeded,
            State::Failed => &mut self.failed,
            State::Blocked => &mut self.blocked,
            State::Skipped => &mut self.skipped,
            State::Cancelled => &mut self.cancelled,
        }
    }

    /// Adds one instance in state `s`.
    pub fn add(&mut self, s: State) {
        *self.slot(s) += 1;
    }

    /// Moves one instance from `from` to `to`.
    pub fn shift(&mut self, from: State, to: State) {
        let f = self.slot(from);
        *f = f.saturating_sub(1);
        *self.slot(to) += 1;
    }

    /// All instances.
    pub fn total(&self) -> usize {
        State::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Instances in a terminal state.
    pub fn finished(&self) -> usize {
        self.total() - self.pending - self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
        }
        assert!("done".parse::<State>().is_err());
    }

    #[test]
    fn terminal_states_only_leave_through_retry() {
        for from in State::ALL {
            for to in State::ALL {
                if from.is_terminal() && from.can_become(to) {
                    assert!(matches!(from, State::Failed | State::Blocked) && to == State::Pending);
                }
            }
        }
        assert!(!State::Skipped.can_become(State::Running));
        assert!(!State::Succeeded.can_become(State::Pending), "succeeded never runs again");
    }
}
