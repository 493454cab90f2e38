//! The states of a run, an instance and an attempt, and the kinds of events in a run's log: one
//! enum each, named here once. The checkpoint store converts them to and from text at its
//! boundary (and its schema refuses any other text, with CHECK constraints); everything above the
//! store works with the enums, so an unknown value is an error where it is read, never a default.
//!
//! An instance's lifecycle, as a transition table ([`InstanceState::can_become`]):
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
//! `rewind retry` resets failed and blocked to pending (in the store).
//! A running instance whose orchestrator died is pending again on resume (at-least-once).
//! ```
//!
//! A run is `running` until it ends `succeeded`, `failed` or `cancelled`; a staged run may stop
//! `halted` (a wave failed too often) and run again on `resume`. `retry` reopens a `failed` or
//! `halted` run, or a `running` one that nobody drives; nothing reopens a `succeeded` or
//! `cancelled` run.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A name that is not one of an enum's values: what was read, and what it should have been.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// Which enum (`instance state`, `run state`, ...).
    pub what: &'static str,
    /// The text read.
    pub value: String,
    /// The names it accepts.
    pub expected: String,
}

/// Declares a fieldless enum with one stored name per value: `as_str`, `ALL`, `Display`,
/// `FromStr` (an [`UnknownName`] for anything else) and `Serialize` as the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name, as stored and printed.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so `{:<11}` in a table pads it like the text it is.
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        value: s.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// The state of one step instance.
    InstanceState, "instance state" {
        /// Waiting for dependencies, a pool slot, or a retry time.
        Pending = "pending",
        /// An attempt is under way.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Failed permanently (retries exhausted, or a permanent error).
        Failed = "failed",
        /// A dependency failed; it will not run.
        Blocked = "blocked",
        /// Skipped by the step's `when`.
        Skipped = "skipped",
        /// Stopped by `rewind cancel`.
        Cancelled = "cancelled",
    }
}

impl InstanceState {
    /// No further transition happens without an operator (`retry`).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// Whether dependents may start: succeeded, or skipped.
    pub fn satisfies(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }

    /// Whether the lifecycle allows `self → to`. The scheduler asserts every transition it makes
    /// against this table (in debug builds) and its tests cover each allowed edge.
    pub fn can_become(self, to: Self) -> bool {
        use InstanceState::*;
        matches!(
            (self, to),
            (Pending, Running | Blocked | Cancelled)
                | (Running, Succeeded | Failed | Pending | Cancelled)
                | (Failed | Blocked, Pending)
        )
    }
}

named_enum! {
    /// The state of a run.
    RunState, "run state" {
        /// Being driven, or interrupted and resumable.
        Running = "running",
        /// A wave failed more often than allowed: waiting for an operator (`resume`, `cancel`).
        Halted = "halted",
        /// Every instance succeeded or was skipped.
        Succeeded = "succeeded",
        /// Some instances failed or are blocked (`retry` runs them again).
        Failed = "failed",
        /// Stopped by `rewind cancel`.
        Cancelled = "cancelled",
    }
}

impl RunState {
    /// Whether the run has ended for good or for now (any state but `running`).
    pub fn is_ended(self) -> bool {
        self != Self::Running
    }

    /// Whether the run still holds its targets: running or halted.
    pub fn holds_targets(self) -> bool {
        matches!(self, Self::Running | Self::Halted)
    }

    /// Whether `rewind retry` may reopen it: a failed run, a halted one, or a running one
    /// (after a crash). A succeeded or cancelled run is finished: nothing runs it again.
    pub fn can_retry(self) -> bool {
        matches!(self, Self::Failed | Self::Running | Self::Halted)
    }
}

named_enum! {
    /// How an attempt ended (an attempt with no outcome is under way, or its orchestrator died).
    AttemptOutcome, "attempt outcome" {
        /// It succeeded.
        Succeeded = "succeeded",
        /// It failed (and may be retried).
        Failed = "failed",
        /// `rewind cancel` stopped it.
        Cancelled = "cancelled",
        /// The orchestrator stopped during it (a signal, a crash); it runs again.
        Interrupted = "interrupted",
    }
}

named_enum! {
    /// The kind of an entry in a run's append-only event log.
    EventKind, "event kind" {
        /// The run was created (inputs, counts, operator).
        RunCreated = "run.created",
        /// A process started driving a new run.
        RunStarted = "run.started",
        /// A process resumed driving a run.
        RunResumed = "run.resumed",
        /// A signal asked the driver to stop.
        RunInterrupting = "run.interrupting",
        /// The driver stopped; the run is resumable.
        RunInterrupted = "run.interrupted",
        /// A wave failed too often: no new instance starts.
        RunHalting = "run.halting",
        /// The run halted.
        RunHalted = "run.halted",
        /// `rewind cancel` was seen: running instances are being stopped.
        RunCancelling = "run.cancelling",
        /// The run ended (succeeded, failed or cancelled).
        RunFinished = "run.finished",
        /// A wave ended within its failure budget.
        WavePassed = "wave.passed",
        /// The next wave opened.
        WaveOpened = "wave.opened",
        /// An attempt started.
        InstanceStarted = "instance.started",
        /// An instance succeeded.
        InstanceSucceeded = "instance.succeeded",
        /// An attempt failed; another is scheduled.
        InstanceRetryScheduled = "instance.retry_scheduled",
        /// An instance failed for good.
        InstanceFailed = "instance.failed",
        /// An instance will not run: a dependency failed.
        InstanceBlocked = "instance.blocked",
        /// An instance was cancelled.
        InstanceCancelled = "instance.cancelled",
        /// An attempt was interrupted (its orchestrator stopped); it runs again.
        InstanceInterrupted = "instance.interrupted",
        /// A process of an earlier attempt was still alive when the run resumed, and was stopped
        /// before the instance ran again.
        InstanceOrphanStopped = "instance.orphan_stopped",
        /// An operator resumed the run.
        OperatorResume = "operator.resume",
        /// An operator retried the run's failures.
        OperatorRetry = "operator.retry",
        /// An operator cancelled the run.
        OperatorCancel = "operator.cancel",
    }
}

impl EventKind {
    /// Whether an operator caused it (it carries who and where).
    pub fn is_operator(self) -> bool {
        matches!(self, Self::OperatorResume | Self::OperatorRetry | Self::OperatorCancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>(), Ok(*s));
        }
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(*s));
        }
        for s in AttemptOutcome::ALL {
            assert_eq!(s.as_str().parse::<AttemptOutcome>(), Ok(*s));
        }
        for s in EventKind::ALL {
            assert_eq!(s.as_str().parse::<EventKind>(), Ok(*s));
        }
        let e = "done".parse::<InstanceState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown instance state \"done\" (expected one of: pending, running, succeeded, failed, blocked, skipped, cancelled)"
        );
        assert!("Running".parse::<RunState>().is_err(), "names are exact");
        assert_eq!(format!("[{:<12}]", EventKind::RunCreated), "[run.created ]");
    }

    #[test]
    fn terminal_states_only_leave_through_retry() {
        use InstanceState as S;
        for &from in S::ALL {
            for &to in S::ALL {
                if from.is_terminal() && from.can_become(to) {
                    assert!(matches!(from, S::Failed | S::Blocked) && to == S::Pending);
                }
            }
        }
        assert!(!S::Skipped.can_become(S::Running));
        assert!(!S::Succeeded.can_become(S::Pending), "succeeded never runs again");
    }

    #[test]
    fn finished_runs_stay_finished() {
        assert!(!RunState::Succeeded.can_retry());
        assert!(!RunState::Cancelled.can_retry());
        assert!(RunState::Failed.can_retry() && RunState::Running.can_retry());
        assert!(RunState::Halted.can_retry());
        assert!(RunState::Halted.holds_targets() && !RunState::Failed.holds_targets());
    }
}
