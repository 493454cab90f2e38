//! `rewind plan --workflow W --targets T --restore-point TS [--json]`: a dry run that touches
//! nothing.

use std::path::PathBuf;

use anyhow::Result;
use rewind_model::PlanSummary;

use crate::exit::Exit;
use crate::inputs;
use crate::output::{human_s, thousands};

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
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<Exit> {
    let plan = inputs::plan(&args.workflow, &args.targets, &args.restore_point)?;
    let summary = plan.summary();
    let slices = slices(&plan, &args.workflow)?;
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        if let (Some(map), false) = (value.as_object_mut(), slices.is_empty()) {
            map.insert("slices".into(), serde_json::Value::from(slices));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render(&summary));
        if !slices.is_empty() {
            println!(
                "\ntenant slices (planned read-only from the catalogs this machine reaches now)"
            );
            for l in &slices {
                println!("  {l}");
            }
        }
    }
    Ok(Exit::Ok)
}

/// The tenant slices of the workflow's `copy` and `compare` steps ([`crate::cmd::dry_run::slices`]).
fn slices(plan: &rewind_model::Plan, workflow: &std::path::Path) -> Result<Vec<String>> {
    let has_slices = plan.workflow().steps.iter().any(|s| {
        matches!(s.action, rewind_model::Action::Copy(_) | rewind_model::Action::Compare(_))
    });
    if !has_slices {
        return Ok(Vec::new());
    }
    let workdir = workflow
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let workdir = std::path::absolute(workdir)?;
    let cwd = std::env::current_dir()?;
    let rt = crate::store::runtime()?;
    let (registry, vars) = (crate::registry::registry(), rewind_exec::Vars::from_process());
    let make = crate::cmd::dry_run::Attempts::new(plan, &registry, &vars, &workdir, &cwd);
    Ok(crate::cmd::dry_run::slices(plan, &make, &rt, false)?.lines)
}

/// Left-aligned columns, two spaces apart; columns listed in `right` are right-aligned.
fn table(rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if right.contains(&c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn render(s: &PlanSummary) -> String {
    let mut out = String::new();
    let groups: Vec<String> =
        s.targets.groups.iter().map(|(a, n)| format!("{n} {a} groups")).collect();
    out.push_str(&format!(
        "plan: workflow `{}` over {} `{}` targets from {}{}\n",
        s.workflow,
        thousands(s.targets.count),
        s.targets.kind,
        s.targets.file,
        if groups.is_empty() { String::new() } else { format!(" ({})", groups.join(", ")) }
    ));
    out.push_str(&format!("restore point  {}\n", s.restore_point));
    out.push_str(&format!("fingerprint    {}\n", s.fingerprint));
    out.push_str(&format!(
        "instances      {} ({} to run, {} skipped by `when`) over {} steps\n\n",
        thousands(s.instances),
        thousands(s.runnable),
        thousands(s.skipped),
        s.steps.len()
    ));

    out.push_str("steps\n");
    let mut rows = vec![vec![
        "STEP".into(),
        "SCOPE".into(),
        "INSTANCES".into(),
        "SKIPPED".into(),
        "POOL".into(),
        "ESTIMATE".into(),
        "NEEDS".into(),
    ]];
    for st in &s.steps {
        rows.push(vec![
            st.step.clone(),
            st.scope.clone(),
            thousands(st.instances),
            thousands(st.skipped),
            st.resource.clone().unwrap_or_else(|| "-".into()),
            human_s(st.estimate_s),
            if st.needs.is_empty() { "-".into() } else { st.needs.join(", ") },
        ]);
    }
    out.push_str(&table(&rows, &[2, 3, 5]));

    if !s.resources.is_empty() {
        out.push_str("\nresource pools\n");
        let mut rows = vec![vec![
            "POOL".into(),
            "CAPACITY".into(),
            "INSTANCES".into(),
            "WORK".into(),
            "WORK/CAPACITY".into(),
        ]];
        for p in &s.resources {
            rows.push(vec![
                p.name.clone(),
                p.capacity.to_string(),
                thousands(p.instances),
                human_s(p.work_s),
                human_s(p.bound_s),
            ]);
        }
        out.push_str(&table(&rows, &[1, 2, 3, 4]));
    }

    out.push_str(&format!("\ncritical path  {}\n", human_s(s.critical_path_s)));
    let rows: Vec<Vec<String>> = s
        .critical_path
        .iter()
        .map(|c| vec![format!("+{}", human_s(c.start_s)), c.key.clone(), human_s(c.estimate_s)])
        .collect();
    out.push_str(&table(&rows, &[0, 2]));

    let bound = if s.bound_by == "critical_path" {
        "set by the critical path".to_owned()
    } else {
        format!("set by {}", s.bound_by.replace(':', " "))
    };
    out.push_str(&format!("\nlower bound by estimates  {} ({bound})\n", human_s(s.lower_bound_s)));

    out.push_str("\nwhat each store receives (by the connection each action writes to)\n");
    let mut rows = vec![vec![
        "STORE".into(),
        "STEPS".into(),
        "INSTANCES".into(),
        "TARGETS".into(),
        "ACTIONS".into(),
    ]];
    for st in &s.stores {
        rows.push(vec![
            st.store.clone(),
            st.steps.len().to_string(),
            thousands(st.instances),
            thousands(st.targets),
            st.actions.join("; "),
        ]);
    }
    out.push_str(&table(&rows, &[1, 2, 3]));
    out
}
