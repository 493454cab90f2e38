//! `rewind cancel RUN_ID`: stop a run; running actions are asked to stop; the record stays
//! consistent.

use std::time::{Duration, Instant};

use anyhow::Result;
use rewind_model::{EventKind, RunState};
use rewind_runtime::{Lease, RuntimeError, cancel_offline, is_driven};
use rewind_store::Store;

use crate::cmd::run::operator_event;
use crate::exit::{Exit, refused};
use crate::output::thousands;
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The run to cancel.
    run_id: String,
    /// How long to wait for the process driving the run to stop its running actions.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub fn run(db: &str, args: &Args) -> Result<Exit> {
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let id = store::run_id(&args.run_id)?;
        let record = store.run(id).await?.ok_or_else(|| refused(format!("rewind: no run {id} in this checkpoint store")))?;
        if !record.state.holds_targets() {
            println!("run {id} already ended: {}; nothing to cancel", record.state);
            return Ok(Exit::Ok);
        }
        let event = operator_event(EventKind::OperatorCancel, record.clock_s, serde_json::json!({}));
        store.request_cancel(id, &event).await?;
        let driven = is_driven(&record);
        if !driven {
            // Nobody drives it: cancel it here.
            match Lease::acquire(&store, id).await {
                Ok((lease, _)) => {
                    let counts = cancel_offline(&store, lease, &mut crate::observer::Notes).await?;
                    println!("run {id} cancelled ({} instances cancelled)", thousands(counts.cancelled));
                    return Ok(Exit::Ok);
                }
                // A process picked it up meanwhile: it will see the request.
                Err(RuntimeError::Busy { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let owner = store.run(id).await?.and_then(|r| r.owner).unwrap_or_default();
        eprintln!("rewind: cancel requested; waiting for {owner} to stop its running actions");
        let deadline = Instant::now() + args.wait;
        loop {
            let r = store.run(id).await?.ok_or_else(|| refused(format!("rewind: run {id} disappeared")))?;
            if r.state == RunState::Halted {
                // It halted before it saw the request: nobody drives it now; cancel it here.
                if let Ok((lease, _)) = Lease::acquire(&store, id).await {
                    let counts = cancel_offline(&store, lease, &mut crate::observer::Notes).await?;
                    println!("run {id} cancelled ({} instances cancelled)", thousands(counts.cancelled));
                    return Ok(Exit::Ok);
                }
            } else if r.state != RunState::Running {
                println!("run {id} {}", r.state);
                return Ok(Exit::Ok);
            }
            if Instant::now() >= deadline {
                println!("run {id}: cancel requested; {owner} is still stopping it (see `rewind status {id}`)");
                return Ok(Exit::Ok);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
