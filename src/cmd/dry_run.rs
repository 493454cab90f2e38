//! `rewind run --dry-run`: every template of every instance resolved, and the exact commands and
//! statements that would run printed (bound parameters listed separately). Nothing runs and
//! nothing is written: no run, no checkpoint store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use rewind_exec::{Attempt, Registry, Vars};
use rewind_model::{Plan, RunId, Scope};

use crate::exit::refused;
use crate::output::thousands;

/// Prints the dry run of `plan`. A template that cannot resolve is a refusal naming the
/// instance.
pub fn print(
    out: &mut dyn Write,
    plan: &Plan,
    make: &Attempts<'_>,
    waves: &[u32],
    slices: &[String],
) -> Result<()> {
    let wf = plan.workflow();
    let targets = plan.targets().targets();
    writeln!(
        out,
        "# dry run of {} over {} {}s, restore point {}: {} instances. Nothing runs; nothing is written.",
        wf.name,
        thousands(targets.len()),
        wf.target_kind,
        plan.restore_point(),
        thousands(plan.len())
    )?;
    writeln!(
        out,
        "# Values only known at run time show as <run id> and <needs.STEP.KEY>; each step runs as attempt 1."
    )?;
    if waves.len() > 1 {
        let list: Vec<String> = waves.iter().map(|w| w.to_string()).collect();
        writeln!(out, "# waves end after targets {} (in file order)", list.join(", "))?;
    }
    if !slices.is_empty() {
        writeln!(
            out,
            "#\n# tenant slices, planned read-only from the catalogs this machine reaches now:"
        )?;
        for l in slices {
            writeln!(out, "#   {l}")?;
        }
    }
    let mut text = String::new();
    for id in plan.ids() {
        let inst = plan.instance(id);
        let step = plan.step_of(id);
        let key = plan.key(id);
        let scope = match &step.scope {
            Scope::Run => "run".to_owned(),
            Scope::Target => "target".to_owned(),
            Scope::Group(a) => format!("group:{a}"),
        };
        writeln!(
            out,
            "\n{key}  ({scope}{})",
            step.resource.as_ref().map(|r| format!(", pool {r}")).unwrap_or_default()
        )?;
        if inst.skipped {
            writeln!(out, "         skipped by its `when`")?;
            continue;
        }
        let attempt = make.attempt(id);
        let calls = rewind_exec::describe::describe(&attempt).map_err(|e| {
            refused(format!(
                "rewind: --dry-run: {key} (step `{}`, line {}): {e}; nothing was run",
                step.id, step.line
            ))
        })?;
        text.clear();
        rewind_exec::describe::write(&calls, &mut text)?;
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Builds the attempt a dry run shows for an instance (attempt 1, run-time values as
/// placeholders).
pub struct Attempts<'a> {
    plan: &'a Plan,
    registry: &'a Registry,
    workdir: &'a Path,
    cwd: &'a Path,
    connections: Arc<Vec<rewind_model::Connection>>,
    vars: Arc<Vars>,
    actions: Vec<Arc<rewind_model::Action>>,
}

impl<'a> Attempts<'a> {
    pub fn new(
        plan: &'a Plan,
        registry: &'a Registry,
        vars: &Vars,
        workdir: &'a Path,
        cwd: &'a Path,
    ) -> Self {
        let wf = plan.workflow();
        Self {
            plan,
            registry,
            workdir,
            cwd,
            connections: Arc::new(wf.connections.clone()),
            vars: Arc::new(vars.clone()),
            actions: wf.steps.iter().map(|s| Arc::new(s.action.clone())).collect(),
        }
    }

    pub fn attempt(&self, id: rewind_model::InstanceId) -> Attempt {
        let plan = self.plan;
        let step = plan.step_of(id);
        Attempt {
            run_id: RunId::NIL,
            restore_point: plan.restore_point(),
            key: plan.key(id).clone(),
            attempt: 1,
            idempotency_key: "<idempotency key>".to_owned(),
            target: plan.target_of(id).cloned(),
            group_value: plan.group_of(id).map(|g| g.value.clone()),
            needs: BTreeMap::new(),
            workdir: self.workdir.to_path_buf(),
            cwd: self.cwd.to_path_buf(),
            timeout: step.policy.timeout,
            action: self.actions[plan.instance(id).step as usize].clone(),
            connections: self.connections.clone(),
            vars: self.vars.clone(),
            resolvers: self.registry.resolvers().clone(),
        }
    }
}

/// At most this many distinct pairs of connections are shown per step; the rest are counted.
const SLICES_SHOWN: usize = 8;

/// The tenant slices of a plan's `copy` and `compare` steps, as discovered before the run.
#[derive(Debug, Default)]
pub struct Slices {
    /// One block per step and pair of connections, for `plan` and `--dry-run`.
    pub lines: Vec<String>,
    /// The first slice a catalog says cannot be planned, as a refusal naming its step and line.
    pub unplannable: Option<String>,
}

/// The slices of the plan's `copy` and `compare` steps, each distinct pair of connections
/// planned once, read-only, from the catalogs this machine can reach
/// ([`rewind_exec::discover::discover`]). `every_pair`: discover the pairs beyond the
/// [`SLICES_SHOWN`] of a step too (a run checks them all; `plan` only counts them).
pub fn slices(
    plan: &Plan,
    make: &Attempts<'_>,
    rt: &tokio::runtime::Runtime,
    every_pair: bool,
) -> Result<Slices> {
    let mut out = Slices::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    let mut more: BTreeMap<String, usize> = BTreeMap::new();
    let mut unrendered = std::collections::BTreeSet::new();
    let mut bodies: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for id in plan.ids() {
        let step = plan.step_of(id);
        let (rewind_model::Action::Copy(s) | rewind_model::Action::Compare(s)) = &step.action
        else {
            continue;
        };
        if plan.instance(id).skipped {
            continue;
        }
        let ends = match rewind_exec::discover::slice_ends(&make.attempt(id)) {
            Some(Ok(ends)) => ends,
            Some(Err(e)) => {
                if unrendered.insert(step.id.to_string()) {
                    out.lines.push(format!("{}: not planned: {e}", step.id));
                }
                continue;
            }
            None => continue,
        };
        if !seen.insert(ends.clone()) {
            continue;
        }
        let count = shown.entry(ends.step.clone()).or_default();
        let show = *count < SLICES_SHOWN;
        if show {
            *count += 1;
        } else {
            *more.entry(ends.step.clone()).or_default() += 1;
            if !every_pair {
                continue;
            }
        }
        let found = rt.block_on(rewind_exec::discover::discover(&ends, s));
        if let (None, Some(why)) = (&out.unplannable, found.unplannable) {
            out.unplannable = Some(format!(
                "rewind: step `{}` (line {}): {why}; nothing was run",
                step.id, step.line
            ));
        }
        if !show {
            continue;
        }
        // A compare of the same slice as a copy before it: said once.
        let mut lines = found.lines;
        let body = lines.split_off(1.min(lines.len()));
        match bodies.get(&body) {
            Some(first) => lines.push(format!("  the same slice as {first}")),
            None => {
                bodies.insert(body.clone(), ends.step.clone());
                lines.extend(body);
            }
        }
        out.lines.extend(lines);
    }
    for (step, n) in more {
        out.lines.push(format!("{step}: {n} more pairs of connections, not planned here"));
    }
    Ok(out)
}
