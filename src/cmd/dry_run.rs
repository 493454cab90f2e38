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
    registry: &Registry,
    vars: &Vars,
    workdir: &Path,
    cwd: &Path,
    waves: &[u32],
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
    let connections = Arc::new(wf.connections.clone());
    let vars = Arc::new(vars.clone());
    let actions: Vec<_> = wf.steps.iter().map(|s| Arc::new(s.action.clone())).collect();
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
        let attempt = Attempt {
            run_id: RunId::NIL,
            restore_point: plan.restore_point(),
            key: key.clone(),
            attempt: 1,
            idempotency_key: "<idempotency key>".to_owned(),
            target: plan.target_of(id).cloned(),
            group_value: plan.group_of(id).map(|g| g.value.clone()),
            needs: BTreeMap::new(),
            workdir: workdir.to_path_buf(),
            cwd: cwd.to_path_buf(),
            timeout: step.policy.timeout,
            action: actions[inst.step as usize].clone(),
            connections: connections.clone(),
            vars: vars.clone(),
            resolvers: registry.resolvers().clone(),
        };
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
