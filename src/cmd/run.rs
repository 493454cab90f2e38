//! `rewind run`, `rewind resume` and `rewind retry`: create or continue a run and drive it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rewind_exec::Vars;
use rewind_model::{EventKind, RunId, RunState};
use rewind_runtime::{
    DriveOptions, Ended, Lease, Mode, RunSpec, RuntimeError, Signal, StopReason, Summary,
};
use rewind_scheduler::Priority;
use rewind_store::{Batch, NewEvent, SqlStore, Store, StoreError};
use tracing::Instrument;

use crate::exit::{Exit, refused};
use crate::observer::Display;
use crate::output::{human, thousands};
use crate::{inputs, safety, store};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
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
    /// Which ready instance starts first: customers (sites back one after another, the run's end
    /// near its lower bound), critical-path (longest remaining path) or fifo (ready order).
    #[arg(long, value_name = "POLICY", default_value = "customers")]
    policy: Priority,
    /// A real run over more than N targets is refused unless --confirm gives their exact count.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_targets: u32,
    /// The exact number of targets: confirms a run over more than --max-targets.
    #[arg(long, value_name = "N")]
    confirm: Option<u32>,
    /// Staged waves, cumulative target counts or percentages (1,10,25%,100%): each wave runs to
    /// completion before the next starts.
    #[arg(long, value_name = "LIST")]
    waves: Option<String>,
    /// Halt the run when a wave's share of failed targets exceeds this (5%, or 0.05).
    #[arg(long, value_name = "RATE", requires = "waves")]
    halt_on_failure_rate: Option<String>,
    /// Print every command and statement the run would execute, with bound parameters
    /// listed separately; run nothing and write nothing.
    #[arg(long, conflicts_with = "simulate")]
    dry_run: bool,
    /// Who executes the attempts: local (this process) or workers (`rewind worker` processes
    /// on a PostgreSQL store).
    #[arg(long, value_name = "WHERE", default_value = "local")]
    dispatch: Dispatch,
}

/// `--dispatch`: where attempts execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dispatch {
    /// In this process.
    Local,
    /// On `rewind worker` processes (PostgreSQL store only).
    Workers,
}

impl Dispatch {
    /// As stored with a run.
    fn stored(self) -> rewind_store::Dispatch {
        match self {
            Self::Local => rewind_store::Dispatch::Local,
            Self::Workers => rewind_store::Dispatch::Workers,
        }
    }

    /// How a run stored with `d` executes.
    fn of(d: rewind_store::Dispatch) -> Self {
        match d {
            rewind_store::Dispatch::Local => Self::Local,
            rewind_store::Dispatch::Workers => Self::Workers,
        }
    }

    /// Refuses `workers` on a store other than PostgreSQL.
    fn check(self, db: &str) -> Result<()> {
        let pg = db.starts_with("postgres://") || db.starts_with("postgresql://");
        if self == Self::Workers && !pg {
            return Err(refused(format!(
                "rewind: --dispatch workers needs a PostgreSQL checkpoint store (workers on other hosts claim attempts from it), not {}; use --db postgres://... or --dispatch local",
                store::describe(db)
            )));
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct RunIdArgs {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The run's id (printed by `rewind run`; see `rewind status`).
    run_id: String,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The run's id (printed by `rewind run`; see `rewind status`).
    run_id: String,
    /// For a halted run: continue with the next wave, leaving the failed targets as they are
    /// (without it, a halted run's failed and blocked instances run again first).
    #[arg(long)]
    accept_failures: bool,
    /// Who executes the attempts: local (this process) or workers (`rewind worker` processes
    /// on a PostgreSQL store) [default: as the run was started; another is refused].
    #[arg(long, value_name = "WHERE")]
    dispatch: Option<Dispatch>,
}

/// The default `--halt-on-failure-rate`.
const HALT_RATE: f64 = 0.05;

/// `5%` or `0.05`, 0 to 1.
fn parse_rate(raw: &str) -> Result<f64> {
    let bad = || {
        refused(format!(
            "rewind: --halt-on-failure-rate {raw:?} is not a rate between 0% and 100% (5% or 0.05)"
        ))
    };
    let t = raw.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(bad()) }
}

pub(crate) fn operator_event(kind: EventKind, at_s: f64, extra: serde_json::Value) -> NewEvent {
    let mut detail = serde_json::json!({
        "user": rewind_runtime::username(),
        "host": rewind_runtime::hostname(),
    });
    if let (Some(d), serde_json::Value::Object(more)) = (detail.as_object_mut(), extra) {
        d.extend(more);
    }
    NewEvent {
        at_s,
        wall: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        kind,
        key: None,
        detail: Some(detail.to_string()),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// `rewind run`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    args.dispatch.check(db)?;
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(refused(format!(
            "rewind: --fail-rate {} must be between 0 and 1",
            args.fail_rate
        )));
    }
    if args.max_parallel == Some(0) {
        return Err(refused("rewind: --max-parallel must be at least 1"));
    }
    let waves = args
        .waves
        .as_deref()
        .map(|w| w.parse::<rewind_model::Waves>().map_err(|e| refused(format!("rewind: {e}"))))
        .transpose()?;
    let halt_rate = args.halt_on_failure_rate.as_deref().map_or(Ok(HALT_RATE), parse_rate)?;
    let plan = inputs::plan(&args.workflow, &args.targets, &args.restore_point)?;
    let workflow_text = std::fs::read_to_string(&args.workflow)?;
    let targets_text = std::fs::read_to_string(&args.targets)?;
    let workdir = absolute(
        args.workflow.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
    )?;
    let n_targets = u32::try_from(plan.targets().len()).unwrap_or(u32::MAX);
    let boundaries = match &waves {
        Some(w) => w.boundaries(n_targets).map_err(|e| refused(format!("rewind: {e}")))?,
        None => Vec::new(),
    };
    let registry = crate::registry::registry();
    let vars = Vars::from_process();
    let cwd = std::env::current_dir()?;
    let rt = store::runtime()?;
    let make = crate::cmd::dry_run::Attempts::new(&plan, &registry, &vars, &workdir, &cwd);
    let mut slices = None;
    // A simulation touches no store: the rails that protect stores do not apply to it.
    if !args.simulate {
        safety::check_restore_point(&plan)?;
        if !args.dry_run || args.confirm.is_some() {
            safety::check_blast_radius(
                &plan,
                &args.workflow,
                &args.targets,
                args.max_targets,
                args.confirm,
            )?;
        }
        let checked =
            rt.block_on(safety::preflight(&plan, &registry, &workdir, cwd.clone(), &vars))?;
        if let Some(said) = checked {
            crate::telemetry::info(None, &format!("rewind: {said}"));
        }
        // A slice a reachable catalog cannot plan (a typo in `root`) is refused before the run.
        let found = crate::cmd::dry_run::slices(&plan, &make, &rt, true)?;
        if let Some(why) = &found.unplannable {
            return Err(refused(why.clone()));
        }
        slices = Some(found);
    }
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        let slices = match slices {
            Some(s) => s,
            None => crate::cmd::dry_run::slices(&plan, &make, &rt, false)?,
        };
        crate::cmd::dry_run::print(&mut out, &plan, &make, &boundaries, &slices.lines)?;
        out.flush()?;
        return Ok(Exit::Ok);
    }
    let spec = RunSpec {
        workflow_file: args.workflow.display().to_string(),
        workflow_text,
        targets_file: args.targets.display().to_string(),
        targets_text,
        workdir,
        cwd,
        mode: if args.simulate {
            Mode::Simulated { seed: args.seed, fail_rate: args.fail_rate }
        } else if args.dispatch == Dispatch::Workers {
            Mode::Dispatched
        } else {
            Mode::Real
        },
        max_running: args.max_parallel,
        priority: args.policy,
        vars,
        waves: boundaries,
        halt_rate,
    };
    rt.block_on(async {
        let store = store::open(db).await?;
        let id =
            rewind_runtime::create_run(&store, &plan, &spec, &registry).await.map_err(refuse)?;
        drop(plan);
        let mut out = std::io::stdout().lock();
        writeln!(out, "run {id}")?;
        out.flush()?;
        drop(out);
        let (lease, _) = Lease::acquire(&store, id).await.map_err(refuse)?;
        drive(&store, lease, args.dispatch).await
    })
}

/// `rewind resume RUN_ID [--accept-failures]`
pub fn resume(db: &str, args: &ResumeArgs) -> Result<Exit> {
    if let Some(d) = args.dispatch {
        d.check(db)?;
    }
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        // Judged before the lease is taken: a refused resume writes nothing, not even a lease.
        let record = read_run(&store, id).await?;
        let dispatch = dispatch_of(&record, args.dispatch)?;
        if args.accept_failures && record.state != RunState::Halted {
            return Err(refused(format!(
                "rewind: --accept-failures continues a halted run; run {id} is {}; nothing was changed",
                record.state
            )));
        }
        refuse_unless_resumable(id, record.state, "resume")?;
        rewind_runtime::check_runnable(&record).map_err(refuse)?;
        let (lease, record) = Lease::acquire(&store, id).await.map_err(refuse)?;
        let operator = |extra| operator_event(EventKind::OperatorResume, record.clock_s, extra);
        let reopened = match record.state {
            RunState::Running => {
                let batch = Batch {
                    clock_s: record.clock_s,
                    heartbeat_unix_ms: rewind_runtime::now_unix_ms(),
                    events: vec![operator(serde_json::json!({}))],
                    ..Batch::default()
                };
                store.commit(id, &lease.owner, &batch).await
            }
            RunState::Halted if args.accept_failures => {
                let next = record.wave + 1;
                let event = operator(serde_json::json!({"accept_failures": true, "halted_wave": record.wave, "opens_wave": next}));
                store.accept_wave(id, next, &event).await.map(|()| {
                    crate::telemetry::info(Some(id), &format!("rewind: run {id}: the failures of wave {} are accepted; wave {next} starts", record.wave));
                })
            }
            RunState::Halted => {
                let event = operator(serde_json::json!({"accept_failures": false, "halted_wave": record.wave}));
                store.reset_failed(id, &event).await.map(|reset| {
                    crate::telemetry::info(Some(id), &format!(
                        "rewind: run {id}: {reset} failed or blocked instance(s) run again; wave {} is judged again when they end",
                        record.wave
                    ));
                })
            }
            // It ended between the read and the lease.
            other => Err(StoreError::Refused { run: id, why: format!("{other}; nothing was changed") }),
        };
        if let Err(e) = reopened {
            lease.release(&store).await?;
            return Err(refuse(e.into()));
        }
        drive(&store, lease, dispatch).await
    })
}

/// How a resumed run executes: as it was started (`runs.dispatch`). `--dispatch` naming
/// another mode is refused: a run's attempts would be in flight on workers that a local drive
/// never waits for, or run locally on the host of a resume that took a dead coordinator's run.
fn dispatch_of(record: &rewind_store::RunRecord, given: Option<Dispatch>) -> Result<Dispatch> {
    let stored = Dispatch::of(record.spec.dispatch);
    match given {
        Some(d) if d != stored && !record.spec.simulated => Err(refused(format!(
            "rewind: run {} executes with --dispatch {} (as it was started); --dispatch {} is refused; resume it without --dispatch; nothing was changed",
            record.spec.id,
            stored.stored(),
            d.stored()
        ))),
        Some(d) => Ok(d),
        None => Ok(stored),
    }
}

/// `rewind retry RUN_ID`
pub fn retry(db: &str, args: &RunIdArgs) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        let record = read_run(&store, id).await?;
        if !record.state.can_retry() {
            return Err(refused(ended_message(id, record.state, "retry")));
        }
        rewind_runtime::check_runnable(&record).map_err(refuse)?;
        let (lease, record) = Lease::acquire(&store, id).await.map_err(refuse)?;
        let event = operator_event(EventKind::OperatorRetry, record.clock_s, serde_json::json!({}));
        let reset = match store.reset_failed(id, &event).await {
            Ok(n) => n,
            Err(e) => {
                lease.release(&store).await?;
                return Err(refuse(e.into()));
            }
        };
        crate::telemetry::info(
            Some(id),
            &format!("rewind: run {id}: {reset} failed or blocked instance(s) reset to pending"),
        );
        drive(&store, lease, Dispatch::of(record.spec.dispatch)).await
    })
}

async fn read_run(store: &SqlStore, id: RunId) -> Result<rewind_store::RunRecord> {
    store
        .run(id)
        .await?
        .ok_or_else(|| refused(format!("rewind: no run {id} in this checkpoint store")))
}

/// `resume` continues a running (interrupted) or halted run; any other is refused.
fn refuse_unless_resumable(id: RunId, state: RunState, verb: &str) -> Result<()> {
    match state {
        RunState::Running | RunState::Halted => Ok(()),
        ended => Err(refused(ended_message(id, ended, verb))),
    }
}

/// Why `verb` (resume, retry) is refused for a run in `state`, and what would do instead.
fn ended_message(id: RunId, state: RunState, verb: &str) -> String {
    let why = match state {
        RunState::Succeeded => {
            "succeeded: a finished run is never run again (start a new run to restore again)"
                .to_owned()
        }
        RunState::Cancelled => {
            let done = if verb == "retry" { "retried" } else { "resumed" };
            format!("was cancelled: a cancelled run cannot be {done}")
        }
        RunState::Failed => {
            format!(
                "already ended: failed; `rewind retry {id}` runs its failed and blocked instances again"
            )
        }
        RunState::Running | RunState::Halted => format!("is {state}"),
    };
    format!("rewind: run {id} {why}; nothing was changed")
}

/// Busy runs, unsupported actions and unreadable snapshots are refusals (exit 2).
pub(crate) fn refuse(e: RuntimeError) -> anyhow::Error {
    match e {
        RuntimeError::Busy { .. }
        | RuntimeError::Unsupported { .. }
        | RuntimeError::MissingEnv { .. }
        | RuntimeError::Orphans { .. }
        | RuntimeError::UnsafeSnapshot { .. }
        | RuntimeError::NoSuchRun(_) => refused(format!("rewind: {e}")),
        RuntimeError::Store(ref s) if s.is_locked() => refused(format!("rewind: {e}")),
        RuntimeError::Store(StoreError::Held(_)) => {
            refused(format!("rewind: refused: {e}\nnothing was written"))
        }
        RuntimeError::Store(StoreError::Refused { .. }) => refused(format!("rewind: {e}")),
        ref f if f.is_fenced() => refused(format!(
            "rewind: fenced: {e}; this process stopped driving the run at once (another coordinator drives it now: see `rewind status`)"
        )),
        other => anyhow::Error::new(other),
    }
}

async fn drive(store: &SqlStore, lease: Lease, dispatch: Dispatch) -> Result<Exit> {
    let summary = match dispatch {
        Dispatch::Local => drive_with(store, lease, Vars::from_process()).await?,
        Dispatch::Workers => drive_inner(store, lease, Vars::from_process(), true, true).await?,
    };
    print_summary(&summary);
    Ok(exit_of(&summary))
}

/// Drives a run with live progress on stderr; SIGINT/SIGTERM interrupt it (resumable).
pub(crate) async fn drive_with(store: &SqlStore, lease: Lease, vars: Vars) -> Result<Summary> {
    drive_with_signals(store, lease, vars, true).await
}

/// Drives a run with live progress on stderr; `signals`: SIGINT/SIGTERM interrupt it (else the
/// caller handles them, and the run goes on to its end).
pub(crate) async fn drive_with_signals(
    store: &SqlStore,
    lease: Lease,
    vars: Vars,
    signals: bool,
) -> Result<Summary> {
    drive_inner(store, lease, vars, signals, false).await
}

async fn drive_inner(
    store: &SqlStore,
    lease: Lease,
    vars: Vars,
    signals: bool,
    workers: bool,
) -> Result<Summary> {
    let run = lease.run;
    let mut display = Display::new(Some(run));
    let span = crate::telemetry::run_span(run);
    let mut traced = crate::telemetry::Traced::new(&mut display, span.clone());
    let opts = DriveOptions {
        registry: crate::registry::registry(),
        observer: &mut traced,
        signals,
        progress_every: Duration::from_millis(200),
        tick: Duration::from_secs(1),
        vars,
    };
    let result = if workers {
        rewind_runtime::drive_dispatched(store, lease, opts).instrument(span.clone()).await
    } else {
        rewind_runtime::drive(store, lease, opts).instrument(span.clone()).await
    };
    drop(traced);
    span.in_scope(|| display.finish());
    crate::telemetry::end_run_span(&span, result.as_ref().map(|s| &s.ended));
    result.map_err(refuse)
}

/// The exit code of a drive.
pub(crate) fn exit_of(summary: &Summary) -> Exit {
    match summary.ended {
        Ended::Succeeded => Exit::Ok,
        Ended::Failed => Exit::Failed,
        Ended::Cancelled => Exit::Cancelled,
        Ended::Halted => Exit::Failed,
        Ended::Interrupted(StopReason::Signal(sig)) => Exit::Interrupted(sig.exit_code()),
        Ended::Interrupted(_) => Exit::Interrupted(Signal::Interrupt.exit_code()),
    }
}

pub(crate) fn print_summary(s: &Summary) {
    let c = &s.counts;
    let state = match s.ended {
        Ended::Succeeded => "succeeded".to_owned(),
        Ended::Failed => "failed".to_owned(),
        Ended::Cancelled => "cancelled".to_owned(),
        Ended::Interrupted(reason) => {
            format!("interrupted by {}; resume with: rewind resume {}", reason.name(), s.run)
        }
        Ended::Halted => {
            format!("halted: {}", s.halt_reason.as_deref().unwrap_or("a wave failed too often"))
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
