//! `rewind worker`: executes dispatched attempts (`run --dispatch workers`) from the queues of a
//! PostgreSQL checkpoint store, until SIGTERM/SIGINT; then it drains and exits 0.

use std::time::Duration;

use anyhow::Result;
use rewind_exec::Vars;
use rewind_runtime::{DEFAULT_QUEUE, WorkerOptions};

use crate::exit::{Exit, refused};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// A queue to claim attempts from (repeat for several) [default: default].
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
    /// Most attempts run at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    slots: u32,
    /// The worker's name (unique among live workers) [default: host:pid].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// After SIGTERM/SIGINT, how long running attempts may take to finish before they are
    /// handed back to another worker.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    grace: humantime::Duration,
}

/// `rewind worker`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        return Err(refused(format!(
            "rewind: a worker needs a PostgreSQL checkpoint store (the one `run --dispatch workers` uses), not {}",
            store::describe(db)
        )));
    }
    if args.slots == 0 {
        return Err(refused("rewind: --slots must be at least 1"));
    }
    let mut queues = args.queues.clone();
    if queues.is_empty() {
        queues.push(DEFAULT_QUEUE.to_owned());
    }
    for q in &queues {
        if q.trim().is_empty() || q.chars().any(char::is_control) {
            return Err(refused(format!(
                "rewind: --queue {q:?} is not a queue name (one line, not empty)"
            )));
        }
    }
    queues.sort();
    queues.dedup();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", rewind_runtime::hostname(), std::process::id()));
    if name.trim().is_empty() {
        return Err(refused("rewind: --name is empty"));
    }
    let opts = WorkerOptions {
        name,
        queues,
        slots: args.slots,
        lease: rewind_runtime::dispatch_lease(),
        grace: Duration::from(args.grace),
        registry: crate::registry::registry(),
        vars: Vars::from_process(),
        signals: true,
    };
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let mut note = |s: &str| eprintln!("rewind worker: {s}");
        let summary = rewind_runtime::work(&store, db, opts, &mut note)
            .await
            .map_err(crate::cmd::run::refuse)?;
        eprintln!(
            "rewind worker: stopped: {} report(s) accepted, {} stale, {} handed back",
            summary.reported, summary.stale, summary.handed_back
        );
        Ok(Exit::Ok)
    })
}
