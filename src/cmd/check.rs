//! `rewind check WORKFLOW`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::exit::Exit;
use crate::inputs;
use crate::output::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file (TOML).
    workflow: PathBuf,
}

pub fn run(args: &Args) -> Result<Exit> {
    let wf = inputs::workflow(&args.workflow)?;
    let mut scopes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &wf.steps {
        *scopes.entry(s.scope.to_string()).or_default() += 1;
    }
    let scopes: Vec<String> = scopes.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let pools: Vec<String> =
        wf.resources.iter().map(|p| format!("{}={}", p.name, p.capacity)).collect();
    let d = &wf.defaults;
    let (cp, path) = wf.step_critical_path();
    let path: Vec<&str> = path.iter().map(|s| s.as_str()).collect();

    println!("{}: ok", args.workflow.display());
    println!("workflow       {} (restores `{}` targets)", wf.name, wf.target_kind);
    println!("steps          {}: {}", wf.steps.len(), scopes.join(", "));
    println!(
        "resources      {}",
        if pools.is_empty() { "none".to_owned() } else { pools.join(", ") }
    );
    if !wf.connections.is_empty() {
        let names: Vec<&str> = wf.connections.iter().map(|c| c.name.as_str()).collect();
        println!("connections    {}", names.join(", "));
    }
    println!(
        "defaults       timeout {}, {} retries, backoff {} to {} x{}{}",
        human(d.timeout),
        d.retries,
        human(d.backoff.initial),
        human(d.backoff.max),
        d.backoff.factor,
        if d.backoff.jitter { " with jitter" } else { "" }
    );
    println!("critical path  {} for one target: {}", human(cp), path.join(" -> "));
    println!("retention      {} (older restore points are refused)", human(wf.retention));
    match &wf.preflight {
        Some(p) => println!(
            "preflight      {}: every target a {}{}",
            p.action.describe(),
            wf.target_kind,
            p.state.as_deref().map(|s| format!(", {s}")).unwrap_or_default()
        ),
        None => println!("preflight      none (targets are not checked against the system)"),
    }
    Ok(Exit::Ok)
}
