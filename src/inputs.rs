//! Reading the files a command names. Every problem becomes a [`Refused`] error that names the
//! file (and, through the model's diagnostics, the line, column, step and value).

use std::path::Path;

use anyhow::Result;
use rewind_model::{Diagnostics, Plan, RestorePoint, TargetSet, TargetsFormat, Workflow};

use crate::exit::refused;

/// Most diagnostics printed for one file; the rest are counted.
const SHOWN: usize = 50;

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| refused(format!("rewind: cannot read {what} `{}`: {e}", path.display())))
}

/// Renders diagnostics, at most [`SHOWN`] of them, and a count.
pub fn render(diags: &Diagnostics, file: &Path) -> String {
    let mut out = String::new();
    for d in diags.iter().take(SHOWN) {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    if diags.len() > SHOWN {
        out.push_str(&format!("... and {} more\n", diags.len() - SHOWN));
    }
    let n = diags.len();
    out.push_str(&format!(
        "rewind: {}: {n} error{}; nothing was run",
        file.display(),
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// Reads and validates a workflow file.
pub fn workflow(path: &Path) -> Result<Workflow> {
    let text = read(path, "workflow")?;
    Workflow::parse(&path.display().to_string(), &text).map_err(|d| refused(render(&d, path)))
}

/// Reads a targets file (format by extension).
pub fn targets(path: &Path) -> Result<TargetSet> {
    let name = path.display().to_string();
    let format = TargetsFormat::from_file_name(&name).ok_or_else(|| {
        refused(format!("rewind: targets file `{name}`: unknown format; name it *.csv or *.jsonl"))
    })?;
    let text = read(path, "targets file")?;
    TargetSet::parse(&name, &text, format).map_err(|d| refused(render(&d, path)))
}

/// Parses `--restore-point`.
pub fn restore_point(raw: &str) -> Result<RestorePoint> {
    raw.parse().map_err(|e| refused(format!("rewind: --restore-point: {e}")))
}

/// Reads both files and expands the plan.
pub fn plan(workflow_path: &Path, targets_path: &Path, restore_point_raw: &str) -> Result<Plan> {
    let restore_point = restore_point(restore_point_raw)?;
    let wf = workflow(workflow_path)?;
    let targets = targets(targets_path)?;
    Plan::build(wf, targets, restore_point).map_err(|d| refused(render(&d, targets_path)))
}
