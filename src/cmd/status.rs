//! `rewind status [RUN_ID] [--json]`: one run (counts by state, per-target table, failures with
//! stderr tails), or all runs.

use anyhow::Result;
use rewind_model::RunState;
use rewind_runtime::{RunView, shown_state};
use rewind_scheduler::State;
use rewind_store::Store;
use serde_json::json;

use crate::exit::Exit;
use crate::output::{human_s, thousands};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// A run id; every run when left out.
    run_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(db: &str, args: &Args) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        match &args.run_id {
            None => all(&store, db, args.json).await,
            Some(id) => {
                let id = store::run_id(id)?;
                let view = RunView::load(&store, id)
                    .await
                    .map_err(|e| crate::exit::refused(format!("rewind: {e}")))?;
                if args.json {
                    let workers = rewind_runtime::workers_shown(&store).await?;
                    one_json(&view, &workers)
                } else {
                    one(&view)
                }
                Ok(Exit::Ok)
            }
        }
    })
}

async fn all(store: &rewind_store::SqlStore, db: &str, json: bool) -> Result<Exit> {
    let runs = store.runs().await?;
    if json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "run_id": r.spec.id.to_string(),
                    "workflow": r.spec.workflow,
                    "state": r.state,
                    "driven_by": r.owner,
                    "started_by": r.spec.started_by,
                    "simulated": r.spec.simulated,
                    "created_at": r.spec.created_at,
                    "restore_point": r.spec.restore_point,
                    "targets": r.spec.targets,
                    "instances": r.spec.instances,
                    "clock_s": r.clock_s,
                })
            })
            .collect();
        // An array, as it always was: scripts index it. The workers are in the one-run form
        // (`status RUN --json`) and in `GET /api/v1/workers`.
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(Exit::Ok);
    }
    if runs.is_empty() {
        println!(
            "no runs in the checkpoint store at {} (another one: --db URL or REWIND_DB)",
            store::describe(db)
        );
        workers(store).await?;
        return Ok(Exit::Ok);
    }
    println!(
        "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>10}  {:>12}",
        "RUN", "WORKFLOW", "STATE", "CREATED", "TARGETS", "INSTANCES", "CLOCK"
    );
    for r in &runs {
        let clock = human_s(r.finished_s.unwrap_or(r.clock_s));
        println!(
            "{:<36}  {:<14}  {:<11}  {:<24}  {:>8}  {:>10}  {:>12}",
            r.spec.id,
            r.spec.workflow,
            shown_state(r),
            r.spec.created_at,
            thousands(r.spec.targets as usize),
            thousands(r.spec.instances as usize),
            if r.spec.simulated { format!("{clock} sim") } else { clock }
        );
    }
    workers(store).await?;
    Ok(Exit::Ok)
}

/// The registered workers (`rewind worker`), when there are any: name, state (`live`, a
/// heartbeat within three lease periods; `stopping`, draining after SIGTERM; `gone`), host,
/// queues, slots, attempts held, last heartbeat.
async fn workers(store: &rewind_store::SqlStore) -> Result<()> {
    let workers = rewind_runtime::workers_shown(store).await?;
    if workers.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:<24}  {:<9}  {:<20}  {:<20}  {:>5}  {:>4}  {:>14}",
        "WORKER", "STATE", "HOST", "QUEUES", "SLOTS", "HELD", "HEARTBEAT"
    );
    for w in &workers {
        println!(
            "{:<24}  {:<9}  {:<20}  {:<20}  {:>5}  {:>4}  {:>14}",
            w.name,
            w.state.as_str(),
            w.host,
            w.queues.join(","),
            w.slots,
            w.attempts_held,
            format!("{} ago", human_s(w.heartbeat_age_s))
        );
    }
    Ok(())
}

fn one(v: &RunView) {
    let r = &v.record;
    let c = v.counts();
    let targets = v.targets();
    let restored = targets.iter().filter(|t| t.state == "succeeded").count();
    println!("run            {}", r.spec.id);
    println!("workflow       {} ({})", r.spec.workflow, r.spec.workflow_file);
    println!("targets        {} from {}", thousands(targets.len()), r.spec.targets_file);
    println!("restore point  {}", r.spec.restore_point);
    println!(
        "state          {}{}",
        shown_state(r),
        r.reason.as_ref().map(|x| format!(" ({x})")).unwrap_or_default()
    );
    if let Some(who) = &r.spec.started_by {
        println!("started by     {who}");
    }
    match (&r.owner, shown_state(r)) {
        (Some(o), "running") => println!("driven by      {o}"),
        (_, "interrupted") => {
            println!("driven by      nobody: resume with `rewind resume {}`", r.spec.id)
        }
        _ => {}
    }
    if r.cancel_requested && r.state == RunState::Running {
        println!("cancel         requested");
    }
    let mode = if r.spec.simulated {
        format!("simulated (seed {}, fail rate {})", r.spec.seed, r.spec.fail_rate)
    } else {
        "real".into()
    };
    println!("mode           {mode}");
    // A real run's lower bound comes from the workflow's estimates, not from what it took.
    let by = if r.spec.simulated { "" } else { " by estimates" };
    println!(
        "clock          {} (lower bound{by} {})",
        human_s(v.makespan_s()),
        human_s(r.spec.lower_bound_s)
    );
    let pct =
        if targets.is_empty() { 100.0 } else { 100.0 * restored as f64 / targets.len() as f64 };
    println!(
        "restored       {}/{} targets ({pct:.1}%)",
        thousands(restored),
        thousands(targets.len())
    );
    let counts: Vec<String> =
        State::ALL.iter().map(|s| format!("{} {}", thousands(c.get(*s)), s)).collect();
    println!("instances      {}", counts.join(", "));

    println!("\ntargets");
    println!("  {:<36}  {:<10}  {:>9}  {:>12}  FAILED", "TARGET", "STATE", "DONE", "FINISHED");
    for t in &targets {
        println!(
            "  {:<36}  {:<10}  {:>9}  {:>12}  {}",
            t.id,
            t.state,
            format!("{}/{}", t.done, t.total),
            t.finished_offset_s.map(human_s).unwrap_or_else(|| "-".into()),
            t.failed_key.as_deref().unwrap_or("")
        );
    }
    let failures = v.failures();
    if !failures.is_empty() {
        println!("\nfailures");
        for (row, last) in failures {
            println!(
                "  {} after {} attempt(s): {}",
                row.key,
                row.attempts,
                row.error.as_deref().unwrap_or("failed")
            );
            if let Some(tail) =
                last.and_then(|a| a.stderr_tail.as_deref()).filter(|t| !t.trim().is_empty())
            {
                let lines: Vec<&str> = tail.lines().collect();
                for l in &lines[lines.len().saturating_sub(10)..] {
                    println!("    | {l}");
                }
            }
        }
    }
}

/// The one-run JSON; `workers`: every registered worker, as `GET /api/v1/workers` shows them
/// (whether the run's queues are served is the question this answers).
fn one_json(v: &RunView, workers: &[rewind_runtime::WorkerView]) {
    let r = &v.record;
    let failures: Vec<_> = v
        .failures()
        .into_iter()
        .map(|(row, last)| {
            json!({
                "key": row.key,
                "attempts": row.attempts,
                "error": row.error,
                "exit_code": last.and_then(|a| a.exit_code),
                "stdout_tail": last.and_then(|a| a.stdout_tail.clone()),
                "stderr_tail": last.and_then(|a| a.stderr_tail.clone()),
            })
        })
        .collect();
    let targets = v.targets();
    let restored = targets.iter().filter(|t| t.state == "succeeded").count();
    let out = json!({
        "run_id": r.spec.id.to_string(),
        "workflow": r.spec.workflow,
        "state": r.state,
        "shown_state": shown_state(r),
        "reason": r.reason,
        "driven_by": r.owner,
        "started_by": r.spec.started_by,
        "cancel_requested": r.cancel_requested,
        "simulated": r.spec.simulated,
        "restore_point": r.spec.restore_point,
        "clock_s": v.makespan_s(),
        "lower_bound_s": r.spec.lower_bound_s,
        "counts": v.counts(),
        "restored_targets": restored,
        "targets": targets,
        "failures": failures,
        "workers": workers,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
