//! How a coordinator hands attempts to workers on other hosts, and how an attempt's outcome is
//! accepted exactly once (issue 17): the claim / heartbeat / complete / rescue protocol and its
//! fences, as values and as a sans-I/O model ([`model::Table`]).
//!
//! The model is the specification: `rewind-store` implements the same operations in SQL
//! (`SqlStore::dispatch_*`), and its tests replay random operation sequences against both and
//! compare every answer and the final tables. `tests/dispatch_model.rs` explores random
//! interleavings of workers, a rescuer and a coordinator against the model and checks the
//! protocol's invariants after every step.
//!
//! The protocol, in short (ARCHITECTURE.md, "Dispatch to workers", says which test proves what):
//! - A coordinator holds a run's lease at an *epoch* ([`Fence`]); every dispatch write it makes
//!   (enqueue, forget) is refused ([`Fenced`]) once another coordinator took the run over.
//! - An attempt to run elsewhere is a row ([`DispatchRow`]): `queued`, then `claimed` by one
//!   worker *incarnation* ([`Session`]) with a lease until a time, then `done` (an outcome was
//!   accepted) or `lost` (its lease expired and the rescuer took it away). Every claim, hand-back
//!   and rescue bumps the row's epoch.
//! - An outcome is accepted only from the incarnation that holds the row, at the epoch it
//!   claimed it at ([`Completion`]); anything else is recorded as a [`StaleOutcome`] and never
//!   changes the row.
//! - A worker name restarted after a crash is a new incarnation: it neither extends nor
//!   completes the leases of the process that died.
//!
//! **Invariant:** this crate does no I/O and reads no clock: times are arguments, in Unix
//! milliseconds.

pub mod model;

use std::fmt;
use std::str::FromStr;

pub use rewind_model::RunId;

/// One attempt of one instance of a run: what a dispatch row is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    /// The run.
    pub run: RunId,
    /// The instance's index in the plan.
    pub idx: u32,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.run, self.idx, self.attempt)
    }
}

/// Where a dispatched attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DispatchState {
    /// Waiting for a worker of its queue.
    Queued,
    /// Held by one worker incarnation until its lease ends.
    Claimed,
    /// Its outcome was accepted (terminal).
    Done,
    /// Its lease expired and the rescuer took it away (terminal): the coordinator ends the
    /// attempt as interrupted and dispatches the next one.
    Lost,
}

impl DispatchState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Claimed => "claimed",
            Self::Done => "done",
            Self::Lost => "lost",
        }
    }

    /// Done or lost: the row changes no more, only the coordinator forgets it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Lost)
    }
}

impl fmt::Display for DispatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored dispatch state that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dispatch state {0:?} (expected queued, claimed, done or lost)")]
pub struct UnknownState(pub String);

impl FromStr for DispatchState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        Ok(match s {
            "queued" => Self::Queued,
            "claimed" => Self::Claimed,
            "done" => Self::Done,
            "lost" => Self::Lost,
            _ => return Err(UnknownState(s.to_owned())),
        })
    }
}

/// A coordinator's hold on a run: the run lease's epoch when it took the run. Every dispatch
/// write of the coordinator carries it and is refused once the epoch moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The run.
    pub run: RunId,
    /// The run lease's epoch the coordinator holds.
    pub epoch: i64,
}

/// A coordinator's write refused: another coordinator took the run over (or nobody holds it
/// at that epoch). The coordinator must stop driving the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("run {run}: the coordinator's lease at epoch {epoch} was taken over; it must stop")]
pub struct Fenced {
    /// The run.
    pub run: RunId,
    /// The epoch the write carried.
    pub epoch: i64,
}

/// A worker process as it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Its name (unique among live workers; reused after a restart).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// How many attempts it runs at once.
    pub slots: u32,
}

/// One registered worker process: its name and the incarnation registering gave it. Every
/// operation of a worker is by session, so a restarted worker (same name, next incarnation)
/// inherits nothing of the process that died.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session {
    /// The worker's name.
    pub name: String,
    /// 1 for the name's first registration, then one more at each.
    pub incarnation: i64,
}

/// An attempt to dispatch (its run is the coordinator's [`Fence`]'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDispatch {
    /// The instance's index in the plan.
    pub idx: u32,
    /// The attempt number.
    pub attempt: u32,
    /// The queue whose workers may claim it.
    pub queue: String,
    /// What the worker needs to run it (JSON, stored as given).
    pub payload: String,
}

/// An attempt a worker claimed: it runs it and reports its outcome at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// Which attempt.
    pub key: AttemptKey,
    /// The epoch of this claim: the fence its outcome must carry.
    pub epoch: i64,
    /// What to run.
    pub payload: String,
}

/// One outcome a worker reports, at the epoch of its claim: an element of a batch of reports
/// (`Table::complete_many`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    /// Which attempt.
    pub key: AttemptKey,
    /// The epoch of the claim the outcome is of.
    pub epoch: i64,
    /// The outcome (JSON, stored as given).
    pub outcome: String,
}

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Beat {
    /// The session is current; these (attempt, epoch) are the leases it still holds, now
    /// extended. An attempt the worker runs that is not listed was taken away: stop it.
    Held(Vec<(AttemptKey, i64)>),
    /// Another process registered under the same name since: this one must stop everything.
    Superseded,
}

/// What became of a reported outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Recorded: the attempt is done with this outcome.
    Accepted,
    /// The same session already reported this attempt at this epoch and it was accepted (a
    /// retried report): nothing changed.
    AlreadyRecorded,
    /// Refused and recorded as stale: the session does not hold the attempt at that epoch (it
    /// was rescued, handed back or never claimed by it). `current` is the row as it is now
    /// (state, epoch), if it still exists.
    Stale {
        /// The row's state and epoch.
        current: Option<(DispatchState, i64)>,
    },
}

/// An attempt the rescuer took away from a worker whose lease expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescued {
    /// Which attempt.
    pub key: AttemptKey,
    /// Its new epoch.
    pub epoch: i64,
    /// The worker that held it.
    pub worker: Option<String>,
}

/// A dispatched attempt that ended (done or lost), for the coordinator to record and forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Which attempt.
    pub key: AttemptKey,
    /// `Done` or `Lost`.
    pub state: DispatchState,
    /// Its epoch.
    pub epoch: i64,
    /// The worker that held it last.
    pub worker: Option<String>,
    /// The accepted outcome (done only).
    pub outcome: Option<String>,
}

/// A whole dispatch row, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchRow {
    /// Which attempt.
    pub key: AttemptKey,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: DispatchState,
    /// Bumped at every claim, hand-back and rescue.
    pub epoch: i64,
    /// The worker that holds (or last held) it.
    pub worker: Option<String>,
    /// That worker's incarnation.
    pub incarnation: Option<i64>,
    /// When its lease ends (or ended), Unix ms.
    pub lease_until_ms: Option<i64>,
    /// When it was enqueued, Unix ms (claims take the oldest first).
    pub enqueued_unix_ms: i64,
    /// What to run.
    pub payload: String,
    /// The accepted outcome.
    pub outcome: Option<String>,
}

/// A registered worker, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    /// Its name.
    pub name: String,
    /// Its current incarnation.
    pub incarnation: i64,
    /// Its host.
    pub host: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Its slots.
    pub slots: u32,
    /// When this incarnation registered, Unix ms.
    pub started_unix_ms: i64,
    /// Its last heartbeat, Unix ms.
    pub heartbeat_unix_ms: i64,
    /// It was asked to stop (SIGTERM): it claims nothing more.
    pub stopping: bool,
}

/// An outcome that was refused, kept for the record (never changes an attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleOutcome {
    /// Which attempt it was for.
    pub key: AttemptKey,
    /// The epoch it carried.
    pub epoch: i64,
    /// The worker that sent it.
    pub worker: String,
    /// Its incarnation.
    pub incarnation: i64,
    /// The outcome.
    pub outcome: String,
    /// When it arrived, Unix ms.
    pub at_unix_ms: i64,
}
