//! Counts of instances per state. The instance lifecycle itself (its states and transition
//! table) is [`rewind_model::InstanceState`]: the model owns it, the scheduler drives it and the
//! store keeps it.

use serde::Serialize;

/// The state of one step instance (the model's [`rewind_model::InstanceState`]).
pub use rewind_model::InstanceState as State;

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
