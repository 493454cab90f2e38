//! `rewind report RUN_ID --format md|json`: the run's record (DESIGN.md "Report JSON").

use std::collections::BTreeMap;

use anyhow::Result;
use rewind_model::RunState;
use rewind_runtime::{InstanceView, RunView, TargetView};
use rewind_scheduler::{Counts, State};
use serde::Serialize;

use crate::exit::{Exit, refused};
use crate::output::{human_s, thousands};
use crate::store;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Md,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The run.
    run_id: String,
    /// Markdown for people, JSON for scripts.
    #[arg(long, value_enum, default_value = "md")]
    format: Format,
}

/// The report's JSON, field for field as DESIGN.md specifies.
#[derive(Debug, Serialize)]
struct Report {
    run_id: String,
    workflow: String,
    restore_point: String,
    simulated: bool,
    state: RunState,
    makespan_s: f64,
    lower_bound_s: f64,
    counts: Counts,
    targets: Vec<TargetView>,
    steps: Vec<InstanceView>,
}

pub fn run(db: &str, args: &Args) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        let view = RunView::load(&store, id).await.map_err(|e| refused(format!("rewind: {e}")))?;
        let r = &view.record;
        let report = Report {
            run_id: r.spec.id.to_string(),
            workflow: r.spec.workflow.clone(),
            restore_point: r.spec.restore_point.clone(),
            simulated: r.spec.simulated,
            state: r.state,
            makespan_s: view.makespan_s(),
            lower_bound_s: r.spec.lower_bound_s,
            counts: view.counts(),
            targets: view.targets(),
            steps: view.steps(),
        };
        match args.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            Format::Md => print!("{}", markdown(&view, &report)),
        }
        Ok(Exit::Ok)
    })
}

/// Offset at which `share` of the targets were restored, if they were.
fn time_to(targets: &[TargetView], share: f64) -> Option<f64> {
    let mut done: Vec<f64> = targets.iter().filter_map(|t| t.finished_offset_s).collect();
    done.sort_by(f64::total_cmp);
    let need = ((targets.len() as f64) * share).ceil().max(1.0) as usize;
    done.get(need - 1).copied()
}

fn markdown(v: &RunView, rep: &Report) -> String {
    let r = &v.record;
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!("# rewind run {}\n", rep.run_id));
    line("| | |".into());
    line("|---|---|".into());
    line(format!("| workflow | `{}` (`{}`) |", rep.workflow, r.spec.workflow_file));
    line(format!("| targets | {} from `{}` |", thousands(rep.targets.len()), r.spec.targets_file));
    line(format!("| restore point | {} |", rep.restore_point));
    line(format!(
        "| state | {}{} |",
        rep.state,
        r.reason.as_ref().map(|x| format!(" ({x})")).unwrap_or_default()
    ));
    let mode = if rep.simulated {
        format!("simulated (seed {}, fail rate {})", r.spec.seed, r.spec.fail_rate)
    } else {
        "real".into()
    };
    line(format!("| mode | {mode} |"));
    line(format!("| created | {} |", r.spec.created_at));
    let ratio = if rep.simulated && rep.lower_bound_s > 0.0 {
        format!(", {:.3}×", rep.makespan_s / rep.lower_bound_s)
    } else {
        String::new()
    };
    let by = if rep.simulated { "" } else { " by estimates" };
    line(format!(
        "| makespan | {} (lower bound{by} {}{ratio}) |",
        human_s(rep.makespan_s),
        human_s(rep.lower_bound_s)
    ));
    line(format!("| fingerprint | `{}` |", r.spec.fingerprint));
    let restored = rep.targets.iter().filter(|t| t.state == "succeeded").count();
    let pct = if rep.targets.is_empty() {
        100.0
    } else {
        100.0 * restored as f64 / rep.targets.len() as f64
    };
    line(format!(
        "| restored | {}/{} targets ({pct:.1}%) |\n",
        thousands(restored),
        thousands(rep.targets.len())
    ));

    line("## Instances\n".into());
    line("| state | instances |".into());
    line("|---|---:|".into());
    for &s in State::ALL {
        line(format!("| {s} | {} |", thousands(rep.counts.get(s))));
    }

    line("\n## Time to restore\n".into());
    line("| targets restored | at |".into());
    line("|---:|---:|".into());
    for share in [0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
        let at = time_to(&rep.targets, share).map_or_else(|| "not reached".to_owned(), human_s);
        line(format!("| {:.0}% | {at} |", share * 100.0));
    }

    let failures = v.failures();
    if !failures.is_empty() {
        line(format!("\n## Failures ({})\n", failures.len()));
        for (row, last) in failures {
            line(format!(
                "- `{}` after {} attempt(s): {}",
                row.key,
                row.attempts,
                row.error.as_deref().unwrap_or("failed")
            ));
            if let Some(tail) =
                last.and_then(|a| a.stderr_tail.as_deref()).filter(|t| !t.trim().is_empty())
            {
                let lines: Vec<&str> = tail.lines().collect();
                line("  ```".into());
                for l in &lines[lines.len().saturating_sub(10)..] {
                    line(format!("  {l}"));
                }
                line("  ```".into());
            }
        }
    }

    line("\n## Steps\n".into());
    line("| step | scope | instances | succeeded | failed | blocked | skipped | mean attempt | estimate |".into());
    line("|---|---|---:|---:|---:|---:|---:|---:|---:|".into());
    #[derive(Default)]
    struct Row {
        n: usize,
        by: BTreeMap<String, usize>,
        time: f64,
        attempts: usize,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for s in &rep.steps {
        let row = rows.entry(s.step.as_str()).or_default();
        row.n += 1;
        *row.by.entry(s.state.as_str().to_owned()).or_default() += 1;
        for [a, b] in &s.intervals {
            row.time += b - a;
            row.attempts += 1;
        }
    }
    for step in &v.plan.workflow().steps {
        let Some(row) = rows.get(step.id.as_str()) else { continue };
        let get = |k: &str| thousands(row.by.get(k).copied().unwrap_or(0));
        let mean =
            if row.attempts == 0 { "-".into() } else { human_s(row.time / row.attempts as f64) };
        line(format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {mean} | {} |",
            step.id,
            step.scope,
            thousands(row.n),
            get("succeeded"),
            get("failed"),
            get("blocked"),
            get("skipped"),
            human_s(step.estimate.as_secs_f64())
        ));
    }
    o
}
