//! `rewind log RUN_ID [--json]`: the run's audit log. Every state change (instances, waves, the
//! run) and every operator action (run, resume, retry, cancel) in order, with wall time, run
//! offset, and for operator actions the OS user and host that took them.

use std::io::Write;

use anyhow::Result;
use rewind_store::Store;
use serde_json::{Value, json};

use crate::exit::{Exit, refused};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The run.
    run_id: String,
    /// One JSON document: `{"run_id", "events": [{seq, wall, at_s, kind, key, user, host, detail}]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(db: &str, args: &Args) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        if store.run(id).await?.is_none() {
            return Err(refused(format!("rewind: no run {id} in this checkpoint store")));
        }
        let events = store.events(id).await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            let list: Vec<Value> = events
                .iter()
                .map(|e| {
                    let detail: Value = e
                        .event
                        .detail
                        .as_deref()
                        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::from(d)))
                        .unwrap_or(Value::Null);
                    json!({
                        "seq": e.seq,
                        "wall": e.event.wall,
                        "at_s": e.event.at_s,
                        "kind": e.event.kind,
                        "key": e.event.key,
                        "user": detail.get("user"),
                        "host": detail.get("host"),
                        "detail": detail,
                    })
                })
                .collect();
            serde_json::to_writer_pretty(
                &mut out,
                &json!({"run_id": id.to_string(), "events": list}),
            )?;
            writeln!(out)?;
            return Ok(Exit::Ok);
        }
        for e in &events {
            let ev = &e.event;
            let detail: Option<Value> =
                ev.detail.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let by = detail
                .as_ref()
                .and_then(|d| {
                    Some(format!("{}@{}", d.get("user")?.as_str()?, d.get("host")?.as_str()?))
                })
                .unwrap_or_default();
            let rest = detail
                .as_ref()
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "user" | "host"))
                        .map(|(k, v)| format!("{k}={}", compact(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| ev.detail.clone().unwrap_or_default());
            writeln!(
                out,
                "{:<24} {:>10}  {:<26} {}{}{}",
                ev.wall,
                format!("+{:.1}s", ev.at_s),
                ev.kind,
                ev.key.as_deref().map(|k| format!("{k} ")).unwrap_or_default(),
                if by.is_empty() { String::new() } else { format!("by {by} ") },
                rest
            )?;
        }
        Ok(Exit::Ok)
    })
}

/// A JSON value on one line, strings without quotes.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
