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
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Point-in-time, multi-store restore orchestrator.
#[derive(Debug, Parser)]
#[command(name = "rewind", version, about, long_about = None)]
struct Cli {
    /// The checkpoint store, given before the command (DESIGN.md's global `--db`); each command
    /// that uses a store takes `--db` itself and shows it in its help.
    #[arg(long, value_name = "URL", hide = true)]
    db: Option<String>,

    /// Export traces of `run`, `resume`, `retry`, `drill run` and the drills of `serve --drills`
    /// over OTLP/HTTP to this collector
    /// (its base URL, such as http://127.0.0.1:4318; spans go to /v1/traces)
    /// [env: OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long, value_name = "URL", global = true)]
    otlp_endpoint: Option<String>,

    /// The format of the log lines on stderr: text, or json (one object per line). stdout does
    /// not change.
    #[arg(long, value_name = "FORMAT", global = true, default_value = "text")]
    log_format: telemetry::LogFormat,

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
    /// DR drills: run one (select, restore, validate, clean up, score), its history, its report.
    Drill(cmd::drill::Args),
    /// Serve the board, the JSON API and metrics over HTTP; with `--drills DIR`, also run the
    /// drill files' schedules. Until SIGTERM/SIGINT.
    Serve(cmd::serve::Args),
    /// Scratch database instances of `pitr` steps: list them, drop a run's.
    Scratch(cmd::scratch::Args),
    /// Execute attempts of `run --dispatch workers` runs from a PostgreSQL store's queues,
    /// until SIGTERM/SIGINT (then drain).
    Worker(cmd::worker::Args),
    /// Stand by for runs executed by workers: take over any whose coordinator died and drive
    /// it, until SIGTERM/SIGINT (then hand the runs off).
    Coordinate(cmd::coordinate::Args),
}

fn main() -> ExitCode {
    exit::quiet_broken_pipe();
    let cli = Cli::parse();
    let telemetry = match start_telemetry(&cli) {
        Ok(t) => t,
        Err(e) => return exit::finish(Err(e)),
    };
    let code = exit::finish(dispatch(&cli));
    telemetry.finish();
    code
}

/// The log format, and traces for the commands that drive a run. `--otlp-endpoint` given to
/// another command is refused; the variable is then ignored.
fn start_telemetry(cli: &Cli) -> anyhow::Result<telemetry::Telemetry> {
    let drives = match &cli.command {
        Command::Run(_) => Some("run"),
        Command::Resume(_) => Some("resume"),
        Command::Retry(_) => Some("retry"),
        Command::Drill(args) if args.drives() => Some("drill run"),
        Command::Serve(args) if args.drives() => Some("serve"),
        _ => None,
    };
    let endpoint = match drives {
        Some(_) => telemetry::endpoint(cli.otlp_endpoint.as_deref())?,
        None if cli.otlp_endpoint.is_some() => {
            // The log format first, so the refusal is in it.
            telemetry::init(cli.log_format, None, "")?;
            return Err(exit::refused(
                "rewind: --otlp-endpoint applies to `run`, `resume`, `retry`, `drill run` and `serve --drills`, the commands that drive a run",
            ));
        }
        None => None,
    };
    telemetry::init(cli.log_format, endpoint, drives.unwrap_or(""))
}

fn dispatch(cli: &Cli) -> anyhow::Result<exit::Exit> {
    let before = cli.db.as_deref();
    let db = |arg: &store::Db| arg.url(before);
    if before.is_some()
        && let Some(name) = match &cli.command {
            Command::Check(_) => Some("check"),
            Command::Plan(_) => Some("plan"),
            Command::Bench(_) => Some("bench (it simulates in a temporary store)"),
            Command::Sandbox(_) => Some("sandbox"),
            Command::Demo(_) => Some("demo (its store is DIR/rewind.db)"),
            Command::Scratch(_) => Some("scratch (it reads the scratch registry)"),
            _ => None,
        }
    {
        return Err(exit::refused(format!(
            "rewind: --db does not apply to `{name}`: it uses no checkpoint store of yours"
        )));
    }
    match &cli.command {
        Command::Check(args) => cmd::check::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Run(args) => cmd::run::run(&db(&args.db)?, args),
        Command::Status(args) => cmd::status::run(&db(&args.db)?, args),
        Command::Resume(args) => cmd::run::resume(&db(&args.db)?, args),
        Command::Retry(args) => cmd::run::retry(&db(&args.db)?, args),
        Command::Cancel(args) => cmd::cancel::run(&db(&args.db)?, args),
        Command::Report(args) => cmd::report::run(&db(&args.db)?, args),
        Command::Log(args) => cmd::log::run(&db(&args.db)?, args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Scratch(args) => cmd::scratch::run(args),
        Command::Drill(args) => cmd::drill::run(before, args),
        Command::Serve(args) => cmd::serve::run(&db(&args.db)?, args),
        Command::Worker(args) => cmd::worker::run(&db(&args.db)?, args),
        Command::Coordinate(args) => cmd::coordinate::run(&db(&args.db)?, args),
    }
}
