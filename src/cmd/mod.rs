//! One module per command.

pub mod bench;
pub mod cancel;
pub mod check;
pub mod coordinate;
pub mod demo;
pub mod drill;
pub mod dry_run;
pub mod log;
pub mod plan;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod scratch;
pub mod serve;
pub mod status;
pub mod worker;
