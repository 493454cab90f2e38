//! rewind's pure core: typed IDs, workflow and targets parsing and validation, and plan expansion.
//!
//! This crate owns the meaning of the input files (DESIGN.md "Workflow file", "Targets file") and
//! turns a workflow and a set of targets into a [`Plan`]: a `petgraph` DAG of step instances with
//! critical-path ranks, a lower bound on the makespan and a stable fingerprint.
//!
//! **Invariant:** no I/O and no clocks. Parsers take the text and a file name for diagnostics;
//! nothing here reads a file, a database, an environment variable or the time. It must not depend
//! on tokio, sqlx, clap or any executor.

mod diag;
mod drill;
pub mod duration_serde;
mod fingerprint;
mod ids;
mod lifecycle;
mod plan;
mod safety;
mod secret;
pub mod sql;
mod summary;
mod synthetic;
mod targets;
mod template;
mod time;
mod workflow;

pub use diag::{Diagnostic, Diagnostics, ErrorKind, Location};
pub use drill::{
    Cleanup, CommandSpec, Drill, DrillMode, DrillPoint, Objectives, Schedule, Selection, Selector,
    Strategy,
};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use ids::{
    AttrName, ConnectionName, IdError, InstanceKey, PoolName, RunId, StepId, SubjectKey, TargetId,
    TargetKind,
};
pub use lifecycle::{AttemptOutcome, EventKind, InstanceState, RunState, UnknownName};
pub use plan::{Group, Instance, InstanceId, LowerBound, Plan, Subject};
pub use safety::{Found, WaveSize, Waves, judge, restore_point_bounds, spelled_out};
pub use secret::{REDACTED, is_secret_name, redact_text, redact_url};
pub use summary::{
    CriticalStep, PlanSummary, PoolSummary, StepSummary, StoreSummary, TargetSummary,
};
pub use synthetic::SyntheticSpec;
pub use targets::{AttrValue, Target, TargetSet, TargetsFormat};
pub use template::{
    Fill, Placeholder, Ref, Template, TemplateError, UrlPart, UrlRefusal, UrlRenderError,
    UrlTemplate, UrlTemplateError, form_decode, percent_decode, percent_encode,
};
pub use time::{RestorePoint, RestorePointError};
pub use workflow::{
    Action, AttributeUse, AuditAction, Backoff, CommandAction, Condition, Connection,
    DEFAULT_RETENTION, PitrAction, PitrMethod, Policy, Pool, Preflight, Reference, Scope,
    SliceAction, SqlAction, Statement, Step, Workflow, WritesTo,
};
