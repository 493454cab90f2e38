//! `rewind drill run FILE [--json]`, `rewind drill history [NAME] [--json]` and `rewind drill
//! report ID --format md|json|junit` (DESIGN.md "Drills").
//!
//! `drill run` selects the targets, creates a normal run (its own id: `status`, `report` and `log`
//! show it), drives it in-process, cleans up whatever happened, scores the drill against its
//! objectives and records the result in the checkpoint store. Exit 0 passed, 1 an objective
//! missed or a validation failed, 2 refused (nothing was run).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rewind_drill::{CleanupStep, DrillResult, Measured, TargetResult};
use rewind_exec::Vars;
use rewind_model::{
    Drill, DrillMode, InstanceState, Plan, RestorePoint, Strategy, Target, TargetSet,
};
use rewind_runtime::{Ended, Lease, Mode, RunSpec};
use rewind_scheduler::Priority;
use rewind_store::{DrillRecord, SqlStore, Store};

use crate::cmd::run::{drive_with_signals, print_summary, refuse};
use crate::exit::{Exit, refused};
use crate::{inputs, safety, store};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

impl Args {
    /// `drill run`: the one that drives a run (and may export its traces).
    pub fn drives(&self) -> bool {
        matches!(self.command, Sub::Run(_))
    }
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Run a drill: select, restore (a normal run), validate, clean up, score; exit 0 passed,
    /// 1 missed or failed, 2 refused.
    Run(RunArgs),
    /// The drills recorded (of one name, or all), with the trend of RTO and RPO.
    History(HistoryArgs),
    /// One drill's record as Markdown, JSON or JUnit XML.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    db: store::Db,
    /// The drill file (TOML, usually in drills/).
    file: PathBuf,
    /// Print the result as one JSON object, the last stdout line.
    #[arg(long)]
    json: bool,
    /// The sampling seed of a random strategy (default: the drill's `seed`, else one derived
    /// from the time, recorded).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct HistoryArgs {
    #[command(flatten)]
    db: store::Db,
    /// Only this drill's records.
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    #[command(flatten)]
    db: store::Db,
    /// The drill's id (printed by `drill run`; see `drill history`).
    id: String,
    /// md, json or junit.
    #[arg(long, default_value = "md")]
    format: String,
}

/// `rewind drill ...`
pub fn run(before: Option<&str>, args: &Args) -> Result<Exit> {
    match &args.command {
        Sub::Run(a) => run_drill(&a.db.url(before)?, a),
        Sub::History(a) => history(&a.db.url(before)?, a),
        Sub::Report(a) => report(&a.db.url(before)?, a),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What was decided before the run: refusals stop here, nothing was run.
struct Prepared {
    plan: Plan,
    targets_text: String,
    seed: Option<u64>,
    rpo: Option<Duration>,
    restore_point: RestorePoint,
    candidates: usize,
}

fn run_drill(db: &str, args: &RunArgs) -> Result<Exit> {
    let opts = DrillOptions { seed: args.seed, json: args.json, signals: true, scheduled: None };
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        run_file(&store, &args.file, &opts).await
    })
}

/// How a drill is run: by `drill run`, or by `serve` for a schedule.
pub(crate) struct DrillOptions {
    /// The sampling seed of a random strategy, overriding the drill's.
    pub seed: Option<u64>,
    /// Print the result as JSON, the last stdout line.
    pub json: bool,
    /// SIGINT/SIGTERM interrupt the run (checkpointed for `resume`); `serve` lets it finish.
    pub signals: bool,
    /// The schedule's slot and lateness, recorded in the result.
    pub scheduled: Option<rewind_drill::Scheduled>,
}

/// A drill file and its workflow, read and checked: errors are refusals with their locations.
pub(crate) struct Loaded {
    pub drill: Drill,
    dir: PathBuf,
    workflow_path: PathBuf,
    workflow: rewind_model::Workflow,
    workflow_text: String,
}

/// Reads and checks a drill file and the workflow it names.
pub(crate) fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        refused(format!("rewind: cannot read drill file `{}`: {e}", path.display()))
    })?;
    let drill = Drill::parse(&path.display().to_string(), &text)
        .map_err(|d| refused(inputs::render(&d, path)))?;
    let dir = std::path::absolute(
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
    )?;
    let workflow_path = dir.join(&drill.workflow);
    let workflow = inputs::workflow(&workflow_path)?;
    let workflow_text = std::fs::read_to_string(&workflow_path)?;
    Ok(Loaded { drill, dir, workflow_path, workflow, workflow_text })
}

/// Runs one drill file (read afresh) against the store, prints and records its result: the
/// whole of `drill run`, and what `serve` does at each due time.
pub(crate) async fn run_file(store: &SqlStore, path: &Path, opts: &DrillOptions) -> Result<Exit> {
    let Loaded { drill, dir, workflow_path, workflow, workflow_text } = load(path)?;
    let workdir = workflow_path.parent().map_or_else(|| dir.clone(), Path::to_path_buf);
    let cwd = std::env::current_dir()?;
    let registry = crate::registry::registry();
    let vars = Vars::from_process();
    {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let drill_id = uuid::Uuid::new_v4().to_string();
        let history =
            store.drills(Some(&drill.name)).await.map_err(|e| refused(format!("rewind: {e}")))?;

        // Select, probe, plan: a refusal here runs nothing.
        let prep = async {
            let file = format!("{} [select]", path.display());
            let found = rewind_drill::candidates(&drill, &registry, &vars, &dir, &file).await?;
            let seed = match drill.select.strategy {
                Strategy::Random { seed } => {
                    Some(opts.seed.or(seed).unwrap_or(unix_ms(started_wall).cast_unsigned()))
                }
                _ => None,
            };
            let mut sampled = rewind_drill::sample(
                &drill,
                found.targets(),
                seed.unwrap_or(0),
                &last_drilled(&history),
            )?;
            if drill.mode == DrillMode::AsNew {
                rewind_drill::assign_new_ids(&mut sampled, found.targets())?;
            }
            let recoverable = rewind_drill::probe(&drill, &vars, &dir, started_wall).await?;
            let restore_point =
                rewind_drill::restore_point(&drill, recoverable.as_ref(), started_wall)?;
            let targets = TargetSet::from_targets(&file, sampled);
            let targets_text = targets.to_csv();
            let plan = Plan::build(workflow, targets, restore_point)
                .map_err(|d| rewind_drill::SelectError(d.to_string()))?;
            Ok::<_, rewind_drill::SelectError>(Prepared {
                plan,
                targets_text,
                seed,
                rpo: recoverable.map(|r| r.rpo()),
                restore_point,
                candidates: found.len(),
            })
        }
        .await
        .map_err(|e| refused(format!("rewind: drill `{}`: {e}; nothing was run", drill.name)))?;
        if let Some(said) =
            safety::preflight(&prep.plan, &registry, &workdir, cwd.clone(), &vars).await?
        {
            crate::telemetry::info(None, &format!("rewind: {said}"));
        }
        let n = prep.plan.targets().len();
        let strategy = match drill.select.strategy {
            Strategy::Random { .. } => format!("random, seed {}", prep.seed.unwrap_or(0)),
            Strategy::LeastRecentlyDrilled { within } => {
                format!("least recently drilled, within {}", humantime::format_duration(within))
            }
            Strategy::List { .. } => "listed".to_owned(),
        };
        println!(
            "drill       {} ({}), {n} of {} tenants ({strategy})",
            drill.name,
            drill.mode.name(),
            prep.candidates
        );
        println!(
            "restore     {}{}",
            prep.restore_point,
            prep.rpo
                .map_or_else(String::new, |r| format!(" (newest recoverable is {} old)", secs(r)))
        );
        let spec = RunSpec {
            workflow_file: workflow_path.display().to_string(),
            workflow_text,
            targets_file: format!("{} [select]", path.display()),
            targets_text: prep.targets_text.clone(),
            workdir,
            cwd,
            mode: Mode::Real,
            max_running: None,
            priority: Priority::default(),
            vars: vars.clone(),
            waves: Vec::new(),
            halt_rate: 1.0,
        };
        let run_id = rewind_runtime::create_run(store, &prep.plan, &spec, &registry)
            .await
            .map_err(refuse)?;
        println!("run {run_id}");
        std::io::stdout().flush()?;
        let run_started = started.elapsed();
        let driven = async {
            let (lease, _) = Lease::acquire(store, run_id).await.map_err(refuse)?;
            drive_with_signals(store, lease, vars.clone(), opts.signals).await
        }
        .await;
        let drive_end = started.elapsed();

        // Whatever happened: clean up, then score and record.
        let mut failures = Vec::new();
        let mut targets: Vec<TargetResult> = prep
            .plan
            .targets()
            .targets()
            .iter()
            .map(|t| TargetResult {
                id: t.id.to_string(),
                new_id: new_id(t),
                restored: false,
                restored_s: None,
                failure: None,
            })
            .collect();
        let mut all_restored = false;
        match &driven {
            Ok(summary) => {
                print_summary(summary);
                for (t, at) in targets.iter_mut().zip(&summary.restored_at) {
                    if let Some(at) = at {
                        t.restored = true;
                        t.restored_s = Some((run_started + *at).as_secs_f64());
                    }
                }
                all_restored = summary.ended == Ended::Succeeded
                    && summary.restored_targets == summary.targets;
                if summary.ended != Ended::Succeeded {
                    failures.push(
                        format!(
                            "run {run_id} ended {:?}: {} failed, {} blocked instance(s)",
                            summary.ended, summary.counts.failed, summary.counts.blocked
                        )
                        .to_lowercase(),
                    );
                }
            }
            Err(e) => failures.push(format!("run {run_id} could not be driven: {e:#}")),
        }
        failures.extend(instance_failures(store, run_id, &mut targets).await);
        let sampled = prep.plan.targets().targets();
        let cleanup = clean_up(&drill, &vars, &dir, &run_id.to_string(), sampled).await;
        failures.extend(
            cleanup
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("cleanup `{}` failed: {}", c.command, c.said)),
        );
        if drill.mode == DrillMode::AsNew {
            failures.extend(
                left_behind(&drill, &registry, &vars, &dir, path, &run_id.to_string(), sampled)
                    .await,
            );
        }
        let measured = Measured { rto: all_restored.then_some(drive_end), rpo: prep.rpo, failures };
        let (objectives, failures, passed) = rewind_drill::score(&drill.objectives, &measured);
        let result = DrillResult {
            drill: drill.name.clone(),
            drill_id: drill_id.clone(),
            run_id: Some(run_id.to_string()),
            mode: drill.mode.name().to_owned(),
            started_at: rfc3339(started_wall),
            restore_point: Some(prep.restore_point.to_string()),
            seed: prep.seed,
            passed,
            rto_s: measured.rto.map(|d| d.as_secs_f64()),
            rto_objective_s: drill.objectives.rto.as_secs_f64(),
            rpo_s: measured.rpo.map(|d| d.as_secs_f64()),
            rpo_objective_s: drill.objectives.rpo.map(|d| d.as_secs_f64()),
            targets,
            objectives,
            cleanup,
            failures,
            wall_s: started.elapsed().as_secs_f64(),
            scheduled: opts.scheduled.clone(),
        };
        store
            .record_drill(&DrillRecord {
                id: drill_id,
                name: drill.name.clone(),
                run_id: result.run_id.clone(),
                started_at: result.started_at.clone(),
                started_unix_ms: unix_ms(started_wall),
                passed,
                rto_s: result.rto_s,
                rpo_s: result.rpo_s,
                result: serde_json::to_string(&result)?,
            })
            .await?;
        print_result(&result, opts.json)?;
        driven?;
        Ok(if passed { Exit::Ok } else { Exit::Failed })
    }
}

/// The last time each target was drilled (restored), Unix ms, from a drill's history.
fn last_drilled(history: &[DrillRecord]) -> BTreeMap<String, i64> {
    let mut last = BTreeMap::new();
    for rec in history {
        let Ok(r) = serde_json::from_str::<DrillResult>(&rec.result) else { continue };
        for t in r.targets.iter().filter(|t| t.restored) {
            last.insert(t.id.clone(), rec.started_unix_ms);
        }
    }
    last
}

/// Every failed or blocked instance of the run, as a failure message, also noted on its target.
async fn instance_failures(
    store: &SqlStore,
    run_id: rewind_model::RunId,
    targets: &mut [TargetResult],
) -> Vec<String> {
    let Ok(instances) = store.instances(run_id).await else {
        return vec![format!("the instances of run {run_id} could not be read")];
    };
    let mut out = Vec::new();
    for i in instances.iter().filter(|i| i.state == InstanceState::Failed) {
        let on = i.target.as_deref().map_or_else(String::new, |t| format!(" for target {t}"));
        let msg = format!(
            "validation or restore step `{}`{on} failed: {}",
            i.step,
            i.error.as_deref().unwrap_or("no error recorded")
        );
        if let Some(t) = i.target.as_deref().and_then(|id| targets.iter_mut().find(|t| t.id == id))
            && t.failure.is_none()
        {
            t.failure = Some(msg.clone());
        }
        out.push(msg);
    }
    for t in targets.iter_mut().filter(|t| !t.restored && t.failure.is_none()) {
        t.failure = Some("not restored: an instance it needs failed or did not run".to_owned());
    }
    out
}

/// The id an `as-new` drill restored `t` as.
fn new_id(t: &Target) -> Option<String> {
    t.attrs.iter().find(|(k, _)| k.as_str() == rewind_drill::NEW_ID).map(|(_, v)| v.to_string())
}

/// After an `as-new` drill's cleanup: the tenants that remain (`[cleanup] remaining`, else
/// the selector asked again); every drill tenant among them is a failure (the cleanup left it
/// behind).
async fn left_behind(
    drill: &Drill,
    registry: &rewind_exec::Registry,
    vars: &Vars,
    dir: &Path,
    path: &Path,
    run_id: &str,
    sampled: &[Target],
) -> Vec<String> {
    let file = format!("{} [cleanup, remaining]", path.display());
    let live = match rewind_drill::remaining(drill, registry, vars, dir, &file, run_id).await {
        Ok(set) => set,
        Err(e) => {
            return vec![format!("cannot check that the cleanup removed the drill's tenants: {e}")];
        }
    };
    let live: std::collections::HashSet<String> =
        live.targets().iter().map(|t| t.id.to_string()).collect();
    sampled
        .iter()
        .filter_map(|t| new_id(t).map(|n| (t, n)))
        .filter(|(_, n)| live.contains(n))
        .map(|(t, n)| {
            format!("the cleanup left the drill tenant {n} (restored from {}) behind", t.id)
        })
        .collect()
}

/// Waits `keep`, then runs every cleanup command, whatever the drill's outcome: a command that
/// names a tenant (`{{target.…}}`) once per sampled tenant, the others once.
async fn clean_up(
    drill: &Drill,
    vars: &Vars,
    dir: &Path,
    run_id: &str,
    sampled: &[Target],
) -> Vec<CleanupStep> {
    if !drill.cleanup.keep.is_zero() {
        crate::telemetry::info(
            None,
            &format!(
                "rewind: keeping the restored copies for {} before cleanup",
                humantime::format_duration(drill.cleanup.keep)
            ),
        );
        tokio::time::sleep(drill.cleanup.keep).await;
    }
    let mut steps = Vec::new();
    for cmd in &drill.cleanup.commands {
        let each: Vec<Option<&Target>> = if rewind_drill::per_target(cmd) {
            sampled.iter().map(Some).collect()
        } else {
            vec![None]
        };
        for target in each {
            let shown = std::iter::once(&cmd.program)
                .chain(&cmd.args)
                .map(|a| {
                    rewind_drill::expand(a, vars, Some(run_id), target)
                        .unwrap_or_else(|_| a.clone())
                })
                .collect::<Vec<_>>()
                .join(" ");
            let (ok, said) = match rewind_drill::run_command(cmd, vars, dir, Some(run_id), target)
                .await
            {
                Ok(out) => {
                    (true, shorten(out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")))
                }
                Err(e) => (false, e),
            };
            steps.push(CleanupStep { command: shown, ok, said });
        }
    }
    steps
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

fn print_result(r: &DrillResult, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for o in &r.objectives {
        writeln!(out, "{:<11} {} {}", o.name, if o.passed { "ok  " } else { "MISS" }, o.message)?;
    }
    for c in &r.cleanup {
        writeln!(out, "cleanup     {} {}", if c.ok { "ok  " } else { "FAIL" }, c.command)?;
    }
    for f in &r.failures {
        writeln!(out, "failure     {f}")?;
    }
    writeln!(
        out,
        "drill {}   {}   {:.1}s",
        r.drill_id,
        if r.passed { "PASSED" } else { "FAILED" },
        r.wall_s
    )?;
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    }
    out.flush()?;
    Ok(())
}

fn history(db: &str, args: &HistoryArgs) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let records = store.drills(args.name.as_deref()).await?;
        let mut results = Vec::new();
        for r in &records {
            let parsed: DrillResult = serde_json::from_str(&r.result)
                .map_err(|e| anyhow::anyhow!("drill {}: its stored result cannot be read: {e}", r.id))?;
            results.push(parsed);
        }
        let mut names: Vec<&str> = results.iter().map(|r| r.drill.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let trend = |name: &str, f: &dyn Fn(&DrillResult) -> Option<f64>| {
            let v: Vec<Option<f64>> = results.iter().filter(|r| r.drill == name).map(f).collect();
            rewind_drill::report::trend(&v)
        };
        if args.json {
            let trends: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|n| {
                    (
                        (*n).to_owned(),
                        serde_json::json!({"rto": trend(n, &|r| r.rto_s), "rpo": trend(n, &|r| r.rpo_s),
                            "drills": results.iter().filter(|r| r.drill == *n).count(),
                            "passed": results.iter().filter(|r| r.drill == *n && r.passed).count()}),
                    )
                })
                .collect();
            println!("{}", serde_json::json!({"drills": results, "trend": trends}));
            return Ok(Exit::Ok);
        }
        if results.is_empty() {
            println!("no drills recorded{}", args.name.as_deref().map_or_else(String::new, |n| format!(" for `{n}`")));
            return Ok(Exit::Ok);
        }
        println!("{:<25} {:<20} {:<36} {:<6} {:>8} {:>9} {:>7}", "started", "drill", "id", "result", "rto", "rpo", "targets");
        for r in &results {
            let restored = r.targets.iter().filter(|t| t.restored).count();
            println!(
                "{:<25} {:<20} {:<36} {:<6} {:>8} {:>9} {:>7}",
                r.started_at,
                r.drill,
                r.drill_id,
                if r.passed { "pass" } else { "FAIL" },
                opt(r.rto_s),
                opt(r.rpo_s),
                format!("{restored}/{}", r.targets.len())
            );
        }
        for n in names {
            println!("trend {n}: rto {}; rpo {}", trend(n, &|r| r.rto_s), trend(n, &|r| r.rpo_s));
        }
        Ok(Exit::Ok)
    })
}

fn report(db: &str, args: &ReportArgs) -> Result<Exit> {
    let format = args.format.as_str();
    if !matches!(format, "md" | "json" | "junit") {
        return Err(refused(format!("rewind: --format {format:?}: expected md, json or junit")));
    }
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let rec = store.drill(&args.id).await?.ok_or_else(|| {
            refused(format!(
                "rewind: no drill {} in this checkpoint store (see `rewind drill history`)",
                args.id
            ))
        })?;
        let r: DrillResult = serde_json::from_str(&rec.result).map_err(|e| {
            anyhow::anyhow!("drill {}: its stored result cannot be read: {e}", rec.id)
        })?;
        let text = match format {
            "md" => rewind_drill::report::markdown(&r),
            "junit" => rewind_drill::report::junit(&r),
            _ => format!("{}\n", serde_json::to_string_pretty(&r)?),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(Exit::Ok)
    })
}

/// At most 200 characters of a command's last line.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(200).collect::<String>())
    }
}
