//! `rewind coordinate`: a standby coordinator. It takes over the runs executed by workers
//! (`run --dispatch workers`) whose driver died, drives them as `resume --dispatch workers`
//! would, and on SIGTERM/SIGINT hands them off (leases released, the attempts on workers run
//! on for the next coordinator to adopt) and exits 0.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;
use rewind_exec::Vars;
use rewind_model::RunId;
use rewind_runtime::{CoordinateOptions, Observer, Progress};

use crate::exit::{Exit, refused};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: crate::store::Db,
    /// The coordinator's name, in its lease owner string (`host:pid:NAME.nonce`) and its
    /// messages [default: none].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// `rewind coordinate`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
        return Err(refused(format!(
            "rewind: a coordinator needs a PostgreSQL checkpoint store (the one `run --dispatch workers` and the workers use), not {}",
            store::describe(db)
        )));
    }
    if let Some(name) = &args.name {
        if name.trim().is_empty() {
            return Err(refused("rewind: --name is empty"));
        }
        rewind_runtime::set_owner_name(name);
    }
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let mut say = |s: &str| eprintln!("rewind coordinate: {s}");
        let mut observer = |run: RunId| -> Box<dyn Observer> { Box::new(Notes { run }) };
        let summary = rewind_runtime::coordinate(
            &store,
            CoordinateOptions {
                registry: crate::registry::registry(),
                vars: Vars::from_process(),
                signals: true,
                observer: &mut observer,
                say: &mut say,
                stop: Arc::new(AtomicBool::new(false)),
            },
        )
        .await
        .map_err(crate::cmd::run::refuse)?;
        eprintln!(
            "rewind coordinate: stopped: took {} run(s), drove {} to their end, handed {} off, {} taken over by another coordinator",
            summary.taken, summary.ended, summary.handed_off, summary.fenced
        );
        Ok(Exit::Ok)
    })
}

/// A driven run's notes and failures on stderr, prefixed with the run (several runs share the
/// terminal, so no progress line).
struct Notes {
    run: RunId,
}

impl Observer for Notes {
    fn progress(&mut self, _p: &Progress) {}

    fn failure(&mut self, key: &str, attempt: u32, error: &str, retry_in: Option<Duration>) {
        let retry = retry_in
            .map(|d| format!("; retried in {}", humantime::format_duration(d)))
            .unwrap_or_default();
        eprintln!(
            "rewind coordinate: run {}: {key} attempt {attempt} failed: {error}{retry}",
            self.run
        );
    }

    fn note(&mut self, message: &str) {
        eprintln!("rewind coordinate: run {}: {message}", self.run);
    }
}
