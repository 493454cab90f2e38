//! The safety rails a real run passes before anything is written (README "Safety rails"):
//! restore-point bounds, blast radius, and the catalog preflight. Each refusal is exit 2 with a
//! message naming what is wrong; run locks are taken by the store when the run is created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;
use rewind_exec::{Registry, Vars};
use rewind_model::{Found, Plan, judge, restore_point_bounds};

use crate::exit::refused;
use crate::output::{count, every};

/// The environment variable that sets the clock restore-point bounds are judged against, for
/// drills and replays against a system whose clock is not the wall clock (the sandbox's history
/// is April 2022).
pub const NOW_VAR: &str = "REWIND_NOW";

/// The instant restore points are judged against: `REWIND_NOW` if set, else the wall clock.
pub fn now() -> Result<(SystemTime, bool)> {
    match std::env::var(NOW_VAR) {
        Ok(raw) => humantime::parse_rfc3339(raw.trim()).map(|t| (t, true)).map_err(|e| {
            refused(format!("rewind: {NOW_VAR}={raw:?} is not an RFC 3339 UTC time: {e}"))
        }),
        Err(_) => Ok((SystemTime::now(), false)),
    }
}

/// Refuses a restore point in the future, or older than the workflow's retention.
pub fn check_restore_point(plan: &Plan) -> Result<()> {
    let (now, overridden) = now()?;
    restore_point_bounds(plan.restore_point(), now, plan.workflow().retention).map_err(|e| {
        let clock = if overridden { format!(" ({NOW_VAR} sets the clock)") } else { String::new() };
        refused(format!("rewind: --restore-point: {e}{clock}; nothing was written"))
    })
}

/// Refuses a run over more than `max` targets unless `confirm` is their exact count; a
/// `confirm` that is not the count is refused whatever the size.
pub fn check_blast_radius(
    plan: &Plan,
    workflow_file: &Path,
    targets_file: &Path,
    max: u32,
    confirm: Option<u32>,
) -> Result<()> {
    let n = plan.targets().len();
    let file = targets_file.display();
    match confirm {
        Some(c) if c as usize != n => Err(refused(format!(
            "rewind: --confirm {c} does not match the {} in `{file}`; nothing was written",
            count(n, "target")
        ))),
        Some(_) => Ok(()),
        None if n > max as usize => Err(refused(format!(
            "rewind: this run restores {} (`{file}`), more than --max-targets {max}.\n\
             Look at what each store will receive first:\n  rewind plan --workflow {} --targets {file} --restore-point {}\n\
             then confirm the exact count with --confirm {n}. Nothing was written.",
            count(n, "target"),
            workflow_file.display(),
            plan.restore_point(),
        ))),
        None => Ok(()),
    }
}

/// Runs the workflow's `[preflight]` resolver (if it declares one) and refuses the run if any
/// target is unknown, of another kind, or not in the expected state. Says what it checked.
pub async fn preflight(
    plan: &Plan,
    registry: &Registry,
    workdir: &Path,
    cwd: PathBuf,
    vars: &Vars,
) -> Result<Option<String>> {
    let wf = plan.workflow();
    let Some(pf) = &wf.preflight else { return Ok(None) };
    let ctx = rewind_exec::preflight::Context {
        restore_point: plan.restore_point(),
        workdir: workdir.to_path_buf(),
        cwd,
        connections: Arc::new(wf.connections.clone()),
        vars: Arc::new(vars.clone()),
    };
    let targets = plan.targets().targets();
    let found: BTreeMap<String, Found> =
        rewind_exec::preflight::resolve(registry, pf, targets, &ctx).await.map_err(|e| {
            refused(format!(
                "rewind: preflight ([preflight], line {}): {e}; nothing was written",
                pf.line
            ))
        })?;
    let problems = judge(targets, &found, wf.target_kind.as_str(), pf.state.as_deref());
    if problems.is_empty() {
        let n = targets.len();
        let (is, s) = if n == 1 { ("is a", "") } else { ("are", "s") };
        let what = match &pf.state {
            Some(st) => format!("{}{s} in state `{st}`", wf.target_kind),
            None => format!("{}{s}", wf.target_kind),
        };
        return Ok(Some(format!(
            "{} {is} {what} (preflight, line {})",
            every(n, "target"),
            pf.line
        )));
    }
    let want = match &pf.state {
        Some(s) => format!("{} in state `{s}`", wf.target_kind),
        None => wf.target_kind.to_string(),
    };
    Err(refused(format!(
        "rewind: preflight refused the run: every target must be an existing {want}\n  {}\nnothing was written",
        problems.join("\n  ")
    )))
}
