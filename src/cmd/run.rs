//! `rewind run`, `rewind resume` and `rewind retry`: create or continue a run and drive it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rewind_exec::Vars;
use rewind_runtime::{DriveOptions, Ended, Lease, Mode, RunSpec, RuntimeError, Summary};
use rewind_scheduler::Priority;
use rewind_store::{NewEvent, SqlStore, Store};

use crate::exit::{Exit, refused};
use crate::observer::Display;
use crate::output::{human, thousands};
use crate::{inputs, store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file (TOML).
    #[arg(long)]
    workflow: PathBuf,
    /// The targets file (.csv or .jsonl).
    #[arg(long)]
    targets: PathBuf,
    /// The instant every store is restored to, RFC 3339 UTC (2022-04-05T07:33:00Z).
    #[arg(long)]
    restore_point: String,
    /// Do not execute actions: each attempt takes its step's estimate in virtual time.
    #[arg(long)]
    simulate: bool,
    /// Seed of simulated failures and retry jitter.
    #[arg(long, requires = "simulate", default_value_t = 1)]
    seed: u64,
    /// Probability that a simulated attempt fails (0 to 1).
    #[arg(long, requires = "simulate", default_value_t = 0.0)]
    fail_rate: f64,
    /// Most instances running at once across all pools (default: only the pools limit).
    #[arg(long, value_name = "N")]
    max_parallel: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct RunIdArgs {
    /// The run's id (printed by `rewind run`; see `rewind status`).
    run_id: String,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// `rewind run`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(refused(format!(
            "rewind: --fail-rate {} must be between 0 and 1",
            args.fail_rate
        )));
    }
    if args.max_parallel == Some(0) {
        return Err(refused("rewind: --max-parallel must be at least 1"));
    }
    let plan = inputs::plan(&args.workflow, &args.targets, &args.restore_point)?;
    let workflow_text = std::fs::read_to_string(&args.workflow)?;
    let targets_text = std::fs::read_to_string(&args.targets)?;
    let workdir = absolute(
        args.workflow.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
    )?;
    let spec = RunSpec {
        workflow_file: args.workflow.display().to_string(),
        workflow_text,
        targets_file: args.targets.display().to_string(),
        targets_text,
        workdir,
        cwd: std::env::current_dir()?,
        mode: if args.simulate {
            Mode::Simulated { seed: args.seed, fail_rate: args.fail_rate }
        } else {
            Mode::Real
        },
        max_running: args.max_parallel,
        priority: Priority::CriticalPath,
        vars: Vars::from_process(),
    };
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let registry = crate::registry::registry();
        let id =
            rewind_runtime::create_run(&store, &plan, &spec, &registry).await.map_err(refuse)?;
        drop(plan);
        let mut out = std::io::stdout().lock();
        writeln!(out, "run {id}")?;
        out.flush()?;
        drop(out);
        let (lease, _) = Lease::acquire(&store, id).await.map_err(refuse)?;
        drive(&store, lease).await
    })
}

/// `rewind resume RUN_ID`
pub fn resume(db: &str, args: &RunIdArgs) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        let (lease, record) = Lease::acquire(&store, id).await.map_err(refuse)?;
        if record.state != "running" {
            lease.release(&store).await?;
            return ended_already(&record.state, id, "resume");
        }
        drive(&store, lease).await
    })
}

/// `rewind retry RUN_ID`
pub fn retry(db: &str, args: &RunIdArgs) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        let (lease, record) = Lease::acquire(&store, id).await.map_err(refuse)?;
        if record.state == "cancelled" {
            lease.release(&store).await?;
            return Err(refused(format!("rewind: run {id} was cancelled; a cancelled run cannot be retried")));
        }
        let event = NewEvent {
            at_s: record.clock_s,
            wall: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind: "operator.retry".into(),
            key: None,
            detail: Some(serde_json::json!({"user": rewind_runtime::username(), "host": rewind_runtime::hostname()}).to_string()),
        };
        let reset = store.reset_failed(id, &event).await?;
        eprintln!("rewind: run {id}: {reset} failed or blocked instance(s) reset to pending");
        drive(&store, lease).await
    })
}

fn ended_already(state: &str, id: rewind_model::RunId, verb: &str) -> Result<Exit> {
    let hint = match state {
        "failed" => " (rewind retry runs its failed and blocked instances again)",
        _ => "",
    };
    println!("run {id} already ended: {state}; nothing to {verb}{hint}");
    Ok(match state {
        "succeeded" => Exit::Ok,
        "cancelled" => Exit::Cancelled,
        _ => Exit::Failed,
    })
}

/// Busy runs, unsupported actions and unreadable snapshots are refusals (exit 2).
pub(crate) fn refuse(e: RuntimeError) -> anyhow::Error {
    match e {
        RuntimeError::Busy { .. }
        | RuntimeError::Unsupported { .. }
        | RuntimeError::MissingEnv { .. }
        | RuntimeError::NoSuchRun(_) => refused(format!("rewind: {e}")),
        RuntimeError::Store(ref s) if s.is_locked() => refused(format!("rewind: {e}")),
        other => anyhow::Error::new(other),
    }
}

async fn drive(store: &SqlStore, lease: Lease) -> Result<Exit> {
    let summary = drive_with(store, lease, Vars::from_process()).await?;
    print_summary(&summary);
    Ok(exit_of(&summary))
}

/// Drives a run with live progress on stderr.
pub(crate) async fn drive_with(store: &SqlStore, lease: Lease, vars: Vars) -> Result<Summary> {
    let mut display = Display::new();
    let opts = DriveOptions {
        registry: crate::registry::registry(),
        observer: &mut display,
        signals: true,
        progress_every: Duration::from_millis(200),
        tick: Duration::from_secs(1),
        vars,
    };
    let result = rewind_runtime::drive(store, lease, opts).await;
    display.finish();
    result.map_err(refuse)
}

/// The exit code of a drive.
pub(crate) fn exit_of(summary: &Summary) -> Exit {
    match summary.ended {
        Ended::Succeeded => Exit::Ok,
        Ended::Failed => Exit::Failed,
        Ended::Cancelled => Exit::Cancelled,
        Ended::Interrupted(sig) => Exit::Interrupted(if sig == "SIGTERM" { 143 } else { 130 }),
    }
}

pub(crate) fn print_summary(s: &Summary) {
    let c = &s.counts;
    let state = match s.ended {
        Ended::Succeeded => "succeeded".to_owned(),
        Ended::Failed => "failed".to_owned(),
        Ended::Cancelled => "cancelled".to_owned(),
        Ended::Interrupted(sig) => {
            format!("interrupted by {sig}; resume with: rewind resume {}", s.run)
        }
    };
    println!("state       {state}");
    println!(
        "instances   {} succeeded, {} failed, {} blocked, {} skipped, {} cancelled, {} pending (of {})",
        thousands(c.succeeded),
        thousands(c.failed),
        thousands(c.blocked),
        thousands(c.skipped),
        thousands(c.cancelled),
        thousands(c.pending + c.running),
        thousands(c.total())
    );
    let pct =
        if s.targets == 0 { 100.0 } else { 100.0 * s.restored_targets as f64 / s.targets as f64 };
    println!(
        "targets     {}/{} restored ({pct:.1}%)",
        thousands(s.restored_targets),
        thousands(s.targets)
    );
    if s.simulated {
        let lb = s.lower_bound.as_secs_f64();
        let ratio =
            if lb > 0.0 { format!(", {:.3}x", s.clock.as_secs_f64() / lb) } else { String::new() };
        println!(
            "makespan    {} simulated (lower bound {}{ratio})",
            human(s.clock),
            human(s.lower_bound)
        );
    } else {
        println!(
            "makespan    {} (lower bound by estimates {})",
            human(s.clock),
            human(s.lower_bound)
        );
    }
    println!(
        "wall        {:.2}s, {} checkpoints",
        s.wall.as_secs_f64(),
        thousands(s.commits as usize)
    );
}
