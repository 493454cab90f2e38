//! `rewind`, the command line: a point-in-time, multi-store restore orchestrator.
//!
//! Thin by design: it parses arguments, reads the files the user names, calls the library crates
//! and prints. It is the only crate that knows clap, terminal output and exit codes.

mod chart;
mod cmd;
mod exit;
mod inputs;
mod observer;
mod output;
mod registry;
mod safety;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Point-in-time, multi-store restore orchestrator.
#[derive(Debug, Parser)]
#[command(name = "rewind", version, about, long_about = None)]
struct Cli {
    /// Checkpoint store URL (sqlite://PATH or postgres://...).
    #[arg(long, global = true, env = "REWIND_DB", default_value = "sqlite://rewind.db")]
    db: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a workflow: exit 0 with a summary, or 2 with every located error.
    Check(cmd::check::Args),
    /// Dry run: expand a workflow over targets and show what would run. Touches nothing.
    Plan(cmd::plan::Args),
    /// Create a run and execute it; the first stdout line is `run <RUN_ID>`.
    Run(cmd::run::Args),
    /// One run (counts, per-target table, failures with stderr tails), or all runs.
    Status(cmd::status::Args),
    /// Continue a run after a crash, kill or interrupt; never re-runs a succeeded instance.
    Resume(cmd::run::ResumeArgs),
    /// Reset a run's failed and blocked instances, and continue it.
    Retry(cmd::run::RunIdArgs),
    /// Stop a run: running actions are asked to stop; the record stays consistent.
    Cancel(cmd::cancel::Args),
    /// The run's record, as Markdown or JSON.
    Report(cmd::report::Args),
    /// The run's audit log: every state change and operator action, with time, user and host.
    Log(cmd::log::Args),
    /// Time-to-restore of a batch of synthetic sites, simulated: capacity planning and policies.
    Bench(cmd::bench::Args),
    /// A multi-tenant system to restore: init, incident, pitr, verify, sites.
    Sandbox(cmd::sandbox::Args),
    /// The incident and its restore, end to end, on a sandbox: init, incident, plan, run, verify.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    exit::quiet_broken_pipe();
    let cli = Cli::parse();
    let db = cli.db.as_str();
    let result = match &cli.command {
        Command::Check(args) => cmd::check::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Run(args) => cmd::run::run(db, args),
        Command::Status(args) => cmd::status::run(db, args),
        Command::Resume(args) => cmd::run::resume(db, args),
        Command::Retry(args) => cmd::run::retry(db, args),
        Command::Cancel(args) => cmd::cancel::run(db, args),
        Command::Report(args) => cmd::report::run(db, args),
        Command::Log(args) => cmd::log::run(db, args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Demo(args) => cmd::demo::run(args),
    };
    exit::finish(result)
}
