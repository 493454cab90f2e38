//! `rewind demo`: the incident and its restore, end to end, on the embedded default. A sandbox
//! multi-tenant system is created, the mistaken script deletes sites from every store, and the
//! real restore-2 workflow brings them back to five minutes before the first deletion; the
//! sandbox's independent verifier then judges the result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rewind_exec::Vars;
use rewind_model::{Plan, RestorePoint, TargetSet, TargetsFormat, Workflow};
use rewind_runtime::{Lease, Mode, RunSpec, Summary};
use rewind_sandbox::{IncidentOptions, InitOptions, SimTime, VerifyOptions};
use rewind_scheduler::Priority;

use crate::cmd::run::{drive_with, exit_of, print_summary, refuse};
use crate::cmd::sandbox::lib_err;
use crate::exit::{Exit, refused};
use crate::output::{human, human_s, thousands};
use crate::safety;
use crate::{inputs, store};

/// Marks a directory the demo made, so a later demo may replace it.
const MARKER: &str = ".rewind-demo";
/// The shipped restore-2, built in: `rewind demo` runs from any directory.
const RESTORE_2: &str = include_str!("../../workflows/restore-2.toml");
/// The shipped restore-2-clusters (`--clusters`), built in.
const RESTORE_2_CLUSTERS: &str = include_str!("../../workflows/restore-2-clusters.toml");
/// The scratch-instance registry of a `--clusters` demo, inside the demo's directory.
const REGISTRY_DIR: &str = "scratch-registry";

/// The sandbox, inside the demo's directory (beside the targets and the checkpoint store).
const SANDBOX_DIR: &str = "sandbox";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sites in the sandbox.
    #[arg(long, default_value_t = 200)]
    sites: u32,
    /// Sites the mistaken script deletes.
    #[arg(long, default_value_t = 60)]
    delete: u32,
    /// Product database shards (default 8; 2 with --clusters, a tracker and a wiki server each).
    #[arg(long)]
    shards: Option<u32>,
    /// Where the sandbox, its scratch copies and the run's checkpoint store go (replaced if a
    /// previous demo made it).
    #[arg(long, default_value = "demo")]
    dir: PathBuf,
    /// Keep the sandbox's relational stores on this PostgreSQL server instead of SQLite files.
    #[arg(long, value_name = "URL", conflicts_with = "clusters")]
    postgres: Option<String>,
    /// Real point-in-time recovery: the sandbox's stores on PostgreSQL clusters and a MariaDB
    /// server it starts under DIR, continuously archived; the incident in real time; the
    /// restore by restore-2-clusters' `pitr` steps; every server stopped at the end.
    #[arg(long)]
    clusters: bool,
    /// Seed of the sandbox.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The restore workflow (default: the shipped restore-2, built into rewind, so the demo runs
    /// from any directory; it is written to DIR/restore-2.toml).
    #[arg(long)]
    workflow: Option<PathBuf>,
}

fn step(title: &str) {
    println!("\n== {title}");
}

pub fn run(args: &Args) -> Result<Exit> {
    if args.delete == 0 || args.delete > args.sites {
        return Err(refused(format!(
            "rewind: --delete {} must be between 1 and --sites ({})",
            args.delete, args.sites
        )));
    }
    let dir = std::path::absolute(&args.dir)?;
    let (workflow, workflow_text) = match &args.workflow {
        Some(w) => {
            let text = std::fs::read_to_string(w).map_err(|e| {
                refused(format!("rewind: cannot read workflow `{}`: {e}", w.display()))
            })?;
            (w.clone(), text)
        }
        None if args.clusters => {
            (dir.join("restore-2-clusters.toml"), RESTORE_2_CLUSTERS.to_owned())
        }
        None => (dir.join("restore-2.toml"), RESTORE_2.to_owned()),
    };
    // Read and validated once, before anything is written; the run keeps this very text.
    let wf = Workflow::parse(&workflow.display().to_string(), &workflow_text)
        .map_err(|d| refused(inputs::render(&d, &workflow)))?;
    let rt = store::runtime()?;
    rt.block_on(async {
        let result = demo(args, &dir, wf, workflow, workflow_text).await;
        if args.clusters {
            // However the demo ended: the run's scratch instances (the workflow's last step
            // drops them when it gets there), then every server the sandbox started.
            let sandbox = dir.join(SANDBOX_DIR);
            let dropped = drop_instances(&dir).await;
            let stopped = if sandbox.join("sandbox.json").exists() {
                rewind_sandbox::clusters::stop(&sandbox).await.map_err(lib_err)
            } else {
                Ok(Vec::new())
            };
            match (&dropped, &stopped) {
                (Ok(n), Ok(s)) => println!(
                    "\nstopped {} scratch instance(s) and the sandbox's servers ({})",
                    n,
                    if s.is_empty() { "none running".to_owned() } else { s.join(", ") }
                ),
                (Err(e), _) | (_, Err(e)) => eprintln!("rewind: demo: cleaning up: {e}"),
            }
            if result.is_ok() {
                dropped?;
                stopped?;
            }
        }
        result
    })
}

/// Stops and removes every scratch instance in a `--clusters` demo's registry; how many.
async fn drop_instances(dir: &Path) -> Result<usize> {
    let registry = rewind_pitr::Registry::at(dir.join(REGISTRY_DIR));
    let Ok(listed) = registry.list(None) else { return Ok(0) };
    let runs: std::collections::BTreeSet<String> =
        listed.iter().map(|l| l.entry.owner.run.clone()).collect();
    let mut n = 0;
    for run in runs {
        n += registry
            .drop_run(&run)
            .await
            .map_err(|e| anyhow::anyhow!("cannot drop run {run}'s scratch instances: {e}"))?
            .len();
    }
    Ok(n)
}

async fn demo(
    args: &Args,
    dir: &Path,
    wf: Workflow,
    workflow: PathBuf,
    workflow_text: String,
) -> Result<Exit> {
    let shards = args.shards.unwrap_or(if args.clusters { 2 } else { 8 });
    {
        let dir = dir.to_owned();
        prepare_dir(&dir).await?;
        // The marker first, so a demo interrupted at any point can be replaced by the next.
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(MARKER), "made by rewind demo\n")?;
        if args.workflow.is_none() {
            std::fs::write(&workflow, &workflow_text)?;
        }
        let sandbox = dir.join(SANDBOX_DIR);
        let started = Instant::now();
        step(&format!("sandbox: {} sites, {shards} shards, {}", args.sites, backing(args)));
        let mut init = InitOptions::new(&sandbox, args.sites);
        init.shards = shards;
        init.postgres.clone_from(&args.postgres);
        init.clusters = args.clusters;
        init.seed = args.seed;
        if args.clusters {
            // The servers run as `postgres` / `mysql`: they must reach the sandbox.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let summary = rewind_sandbox::init(&init).await.map_err(lib_err)?;
        println!(
            "{} stores, {} live rows, history to {}",
            summary.stores,
            thousands(summary.rows as usize),
            summary.now
        );
        crate::cmd::sandbox::print_servers(&sandbox)?;

        step(&format!("incident: the mistaken script deletes {} sites", args.delete));
        let (over, then) = if args.clusters {
            // In real time, while the servers archive.
            (Duration::from_secs(6), Duration::from_secs(3))
        } else {
            (Duration::from_secs(23 * 60), Duration::from_secs(15 * 60))
        };
        let opts = IncidentOptions { delete: args.delete, at: None, over, then };
        let incident = rewind_sandbox::incident(&sandbox, &opts).await.map_err(lib_err)?;
        let first =
            incident.deleted.first().map(|d| d.at).context("the incident deleted no site")?;
        let last = incident.deleted.last().map_or(first, |d| d.at);
        println!(
            "{} sites deleted from every store, {} to {}; other sites kept writing",
            incident.deleted.len(),
            first,
            last
        );
        let restore_point = match incident.restore_point {
            Some(rp) => {
                let rp = rp.to_restore_point();
                println!(
                    "restore point  {rp} (the sandbox's recommendation: a second before the \
                     first deletion in which no server committed, so every backup reaches it \
                     exactly)"
                );
                rp
            }
            None => {
                let rp = restore_point(first)?;
                println!("restore point  {rp} (5 minutes before the first deletion)");
                rp
            }
        };

        step("plan");
        let deleted = rewind_sandbox::sites(&sandbox, true).map_err(lib_err)?;
        let sites: Vec<_> = deleted.into_iter().map(|(s, _)| s).collect();
        let targets_file = dir.join("deleted.csv");
        let targets_text = rewind_sandbox::targets::csv(&sites);
        std::fs::write(&targets_file, &targets_text)?;
        let targets = TargetSet::parse(
            &targets_file.display().to_string(),
            &targets_text,
            TargetsFormat::Csv,
        )
        .map_err(|d| refused(inputs::render(&d, &targets_file)))?;
        let plan = Plan::build(wf, targets, restore_point)
            .map_err(|d| refused(inputs::render(&d, &targets_file)))?;
        let preview = plan.summary();
        println!(
            "{} sites, {} instances ({} to run) over {} steps; lower bound by estimates {} ({})",
            preview.targets.count,
            thousands(preview.instances),
            thousands(preview.runnable),
            preview.steps.len(),
            human_s(preview.lower_bound_s),
            preview.bound_by
        );

        step(&format!("restore ({}, for real against the sandbox)", plan.workflow().name));
        let db = format!("sqlite://{}", dir.join("rewind.db").display());
        let store = store::open(&db).await?;
        let mut vars = Vars::from_process().with("SANDBOX", &sandbox.display().to_string());
        if args.clusters {
            let registry = dir.join(REGISTRY_DIR);
            vars = vars.with("REWIND_SCRATCH_REGISTRY", &registry.display().to_string());
        }
        let registry = crate::registry::registry();
        let workdir = std::path::absolute(
            workflow.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
        )?;
        let cwd = std::env::current_dir()?;
        if let Some(said) =
            safety::preflight(&plan, &registry, &workdir, cwd.clone(), &vars).await?
        {
            println!("preflight      {said}");
        }
        let spec = RunSpec {
            workflow_file: workflow.display().to_string(),
            workflow_text,
            targets_file: targets_file.display().to_string(),
            targets_text,
            workdir,
            cwd,
            mode: Mode::Real,
            max_running: None,
            priority: Priority::default(),
            vars: vars.clone(),
            waves: Vec::new(),
            halt_rate: 1.0,
        };
        let id =
            rewind_runtime::create_run(&store, &plan, &spec, &registry).await.map_err(refuse)?;
        drop(plan);
        println!("run {id}");
        let (lease, _) = Lease::acquire(&store, id).await.map_err(refuse)?;
        let summary = drive_with(&store, lease, vars).await?;
        print_summary(&summary);

        step("verify (independent of the restore)");
        let report = rewind_sandbox::verify(&sandbox, &VerifyOptions::new(restore_point))
            .await
            .map_err(lib_err)?;
        let verified = report.ok();
        print!("{}", crate::cmd::sandbox::render(&report));

        step("summary");
        print_outcome(&summary, &sandbox, restore_point, verified, started.elapsed())?;
        if args.clusters {
            print_recoveries(&store, id, &sandbox).await?;
        }
        println!("\ninspect:  rewind --db {db} status {id}");
        println!("          rewind --db {db} report {id}");
        if summary.ended != rewind_runtime::Ended::Succeeded {
            println!("continue: SANDBOX={} rewind --db {db} resume {id}", sandbox.display());
        }
        let exit = exit_of(&summary);
        Ok(if exit == Exit::Ok && !verified { Exit::Failed } else { exit })
    }
}

/// Per scratch instance the run recovered: the stores it holds, how long the recovery took and
/// how many bytes of WAL / binlog it replayed (the `pitr` steps' outputs).
async fn print_recoveries(
    store: &rewind_store::SqlStore,
    id: rewind_model::RunId,
    sandbox: &Path,
) -> Result<()> {
    use rewind_store::Store as _;
    let servers = rewind_sandbox::clusters::servers(sandbox).map_err(lib_err)?;
    println!("point-in-time recoveries (scratch instances, from the pitr steps' outputs):");
    for i in store.instances(id).await? {
        let Some(out) = i.output.as_deref() else { continue };
        let Ok(out) = serde_json::from_str::<serde_json::Value>(out) else { continue };
        let (Some(secs), Some(bytes)) =
            (out["recovery_s"].as_f64(), out["replayed_bytes"].as_u64())
        else {
            continue;
        };
        let server = Path::new(out["data_dir"].as_str().unwrap_or_default())
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| i.key.clone());
        let engine = if out["url"].as_str().is_some_and(|u| u.starts_with("mysql:")) {
            "binlog"
        } else {
            "WAL"
        };
        let stores = servers
            .iter()
            .find(|s| s.name == server)
            .map(|s| s.stores.join(", "))
            .unwrap_or_default();
        println!(
            "  {server:<12} recovered in {secs:>5.2}s, {:>10} bytes of {engine} replayed, to {}  \
             ({stores})",
            thousands(bytes as usize),
            out["recovered_to"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn backing(args: &Args) -> String {
    match &args.postgres {
        Some(url) => format!("PostgreSQL ({})", rewind_model::redact_url(url)),
        None if args.clusters => {
            "PostgreSQL clusters and a MariaDB server, continuously archived".to_owned()
        }
        None => "SQLite".to_owned(),
    }
}

/// Five minutes before the first deletion (INCIDENT.md: the one fixed restore point).
fn restore_point(first_deletion: SimTime) -> Result<RestorePoint> {
    let rp = first_deletion.to_restore_point();
    let at = rp
        .system_time()
        .checked_sub(Duration::from_secs(300))
        .context("restore point before 1970")?;
    Ok(RestorePoint::from_system_time(at))
}

/// Refuses a directory the demo did not make; removes one it did.
async fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refused(format!("rewind: {}: {e}", dir.display()))),
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(());
            }
            if !dir.join(MARKER).exists() {
                return Err(refused(format!(
                    "rewind: {} exists and was not made by `rewind demo`; remove it or pass --dir",
                    dir.display()
                )));
            }
            // A --clusters demo's scratch instances first (they run from inside it), then the
            // sandbox (its servers, its PostgreSQL schemas outside the directory); a demo
            // interrupted before its sandbox was made has none.
            drop_instances(dir).await?;
            let sandbox = dir.join(SANDBOX_DIR);
            if sandbox.join("sandbox.json").exists() {
                rewind_sandbox::destroy(&sandbox).await.map_err(lib_err)?;
            }
            std::fs::remove_dir_all(dir).map_err(|e| {
                refused(format!(
                    "rewind: cannot remove the previous demo in {}: {e}",
                    dir.display()
                ))
            })?;
            eprintln!("rewind: replaced the previous demo in {}", dir.display());
            Ok(())
        }
    }
}

fn print_outcome(
    s: &Summary,
    dir: &Path,
    rp: RestorePoint,
    verified: bool,
    wall: Duration,
) -> Result<()> {
    let pct =
        if s.targets == 0 { 100.0 } else { 100.0 * s.restored_targets as f64 / s.targets as f64 };
    println!(
        "time to restore   {} ({} sites; demo total {})",
        human(s.clock),
        thousands(s.targets),
        human(wall)
    );
    println!(
        "sites restored    {}/{} ({pct:.1}%)",
        thousands(s.restored_targets),
        thousands(s.targets)
    );
    println!("restore point     {rp}");
    println!(
        "data lost         per store, the deleted sites' writes after the restore point (before their deletion):"
    );
    let losses = rewind_sandbox::data_loss(dir, rp).map_err(lib_err)?;
    for l in &losses {
        let window = match (l.first_lost, l.last_lost) {
            (Some(a), Some(b)) => {
                let n = l.lost_writes;
                format!(
                    "{} write{}, {a} to {b}",
                    thousands(n as usize),
                    if n == 1 { "" } else { "s" }
                )
            }
            _ => "nothing".to_owned(),
        };
        println!("  {:<22} {window}", l.store);
    }
    println!("verify            {}", if verified { "PASS" } else { "FAIL" });
    Ok(())
}
