//! DR drills (DESIGN.md "Drills"): what `rewind drill run` does around the run it creates.
//!
//! - [`select`]: the candidates, from the drill's selector (a command printing CSV or JSON Lines
//!   targets, or one read-only query), and the sample ([`sample`]: seeded random, least recently
//!   drilled from history, or an explicit list);
//! - [`probe`]: the source's newest recoverable instant and its clock, asked of the `[rpo]`
//!   command, and the restore point it implies ([`restore_point`]);
//! - [`score`]: the achieved RTO and RPO against the objectives, with by how much each passed or
//!   missed, and the [`DrillResult`] that history keeps;
//! - [`report`]: the result as Markdown, JSON or JUnit XML, and the history's trend;
//! - [`schedule`]: when drills are due (a sans-I/O planner), and [`serve`]: the loop of
//!   `rewind serve --drills DIR` around it, with the clock and the drill run passed in.
//!
//! The CLI creates and drives the run (a normal run, its own id) and records the result in the
//! checkpoint store. This crate reads no clock: callers pass the times in.

mod expand;
pub mod report;
mod result;
pub mod schedule;
mod select;
pub mod serve;

pub use expand::{expand, per_target, run_command};
pub use result::{
    CleanupStep, DrillResult, Measured, ObjectiveResult, Scheduled, TargetResult, score,
};
pub use schedule::{Due, Planner, ScheduleError};
pub use select::{
    NEW_ID, Recoverable, SelectError, assign_new_ids, candidates, probe, remaining, restore_point,
    sample,
};
