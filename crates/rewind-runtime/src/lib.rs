//! rewind's runtime: the tokio driver of a run.
//!
//! [`create_run`] writes a run (a snapshot of its workflow and targets, every instance pending)
//! to the checkpoint store. [`drive`] then loads it, rebuilds the plan from the snapshot, feeds
//! the sans-I/O scheduler the recorded states, and loops: start what the scheduler says (through
//! the executors, or in virtual time when simulated), wait for outcomes, group-commit them, and
//! only then let the scheduler release dependents — so no instance is reported, or depended on,
//! before its success is durable. It reacts to SIGINT/SIGTERM (stop dispatching, let running
//! actions finish, leave the run resumable) and to `rewind cancel`.
//!
//! Real runs and simulations share the loop; only the executor side differs ([`Mode`]).
//!
//! **Invariant:** the runtime owns I/O and time; the scheduler and the model never see either.
//! It does not know clap or terminal output: progress goes to an [`Observer`].

mod create;
mod drive;
pub(crate) mod env;
mod exec;
mod lease;
mod offline;
mod orphans;
mod progress;
mod remote;
mod roster;
mod view;
mod worker;

use std::time::Duration;

use rewind_model::RunId;
use rewind_store::StoreError;

pub use create::{Mode, RunSpec, create_run};
pub use drive::{
    DriveOptions, Ended, StopReason, Summary, check_runnable, drive, drive_dispatched,
};
pub use exec::Signal;
pub use lease::{Identity, LEASE, Lease, hostname, identity, is_stale, me, now_unix_ms, username};
pub use offline::cancel_offline;
pub use progress::{AttemptEnd, DriveStart, EtaBasis, NoObserver, Observer, Progress};
pub use remote::{DEFAULT_QUEUE, Payload, WireReport, dispatch_lease};
pub use roster::{GONE_AFTER_LEASES, WorkerState, WorkerView, worker_views, workers_shown};
pub use view::{
    AttemptView, InstanceView, RunView, TargetView, driven_by, is_driven, load_plan, shown,
    shown_state,
};
pub use worker::{WorkerOptions, WorkerSummary, work};

/// Why the runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No run has this id.
    #[error("no run {0} in this checkpoint store")]
    NoSuchRun(RunId),
    /// A live process drives the run.
    #[error("run {run} is being driven by {owner}{}", heartbeat_age.map(|a| format!(" (last heartbeat {} ago)", humantime::format_duration(Duration::from_secs(a.as_secs())))).unwrap_or_default())]
    Busy {
        /// The run.
        run: RunId,
        /// Its owner, `host:pid:nonce`.
        owner: String,
        /// Age of the owner's last heartbeat.
        heartbeat_age: Option<Duration>,
    },
    /// The run's stored workflow or targets no longer expand to the plan it was created with.
    #[error("run {run}: the stored plan cannot be rebuilt: {message}")]
    Snapshot {
        /// The run.
        run: RunId,
        /// What went wrong.
        message: String,
    },
    /// A step's action has no executor in this build.
    #[error(
        "step `{step}` uses action kind `{kind}`, which this build cannot run (it can run: {available})"
    )]
    Unsupported {
        /// The step.
        step: String,
        /// Its action kind.
        kind: String,
        /// What is available.
        available: String,
    },
    /// The workflow reads environment variables that are not set.
    #[error("the workflow reads environment variables that are not set: {}", vars.join(", "))]
    MissingEnv {
        /// Their names.
        vars: Vec<String>,
    },
    /// A run stored by an earlier release holds what this one refuses to execute.
    #[error(
        "run {run} was created by an earlier rewind and cannot be run by this one: {why}; `rewind cancel {run}` ends it (its record stays), then start a new run from a corrected workflow"
    )]
    UnsafeSnapshot {
        /// The run.
        run: RunId,
        /// What is unsafe.
        why: String,
    },
    /// Something that cannot happen did (a bug): the drive stops; the run stays resumable.
    #[error("internal error: {0}")]
    Internal(String),
    /// Processes of interrupted attempts survived SIGKILL: their instances may not start again
    /// while they run.
    #[error(
        "processes of interrupted attempts still run on this host after SIGKILL: {processes}; their instances do not start again while they run (stop them, then resume)"
    )]
    Orphans {
        /// `pid N (instance)`, comma-separated.
        processes: String,
    },
    /// Operating-system trouble (signal handlers, working directory).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
