//! `rewind serve --drills DIR [--db URL]` (DESIGN.md): runs the drill files' schedules.
//!
//! At start every `DIR/*.toml` drill (and the workflow it names) is read and checked: any error
//! refuses the whole server (exit 2), every error located. Then, until SIGTERM or SIGINT: sleep
//! until the next due time, run the due drills one after the other (each exactly as `rewind
//! drill run FILE` runs it, the file read afresh), record each with its slot and lateness, and
//! log a line per start and end to stderr. A signal ends a sleep at once; a running drill is let
//! finish, its cleanup included, then the server exits 0. The HTTP board is another issue's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rewind_drill::serve::{Clock, Stopped};
use rewind_drill::{Due, Planner, Scheduled};
use rewind_store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cmd::drill::{DrillOptions, load, run_file};
use crate::exit::{Exit, refused};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: store::Db,
    /// Run the schedules of the drill files in DIR (`*.toml`, each with `schedule`).
    #[arg(long, value_name = "DIR")]
    drills: Option<PathBuf>,
}

/// The wall clock, sleeping on tokio's timer.
struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep_until(&self, until: SystemTime) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(until.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The drill files of `dir`, sorted, each read and checked; every error at once.
fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, rewind_model::Drill)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        refused(format!("rewind: --drills {}: cannot read the directory: {e}", dir.display()))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut drills = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match load(&f) {
            Ok(l) => drills.push((f, l.drill)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        return Err(refused(format!(
            "{}\nrewind serve: {} drill file(s) in {} refused; nothing was started",
            errors.join("\n"),
            errors.len(),
            dir.display()
        )));
    }
    Ok(drills)
}

/// `rewind serve`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    let Some(dir) = &args.drills else {
        return Err(refused(
            "rewind serve: nothing to serve: give --drills DIR (the drill files whose schedules \
             to run)",
        ));
    };
    let drills = load_dir(dir)?;
    let mut scheduled = Vec::new();
    for (path, drill) in &drills {
        match &drill.schedule {
            Some(s) => scheduled.push((path.clone(), drill.name.clone(), s.clone())),
            None => eprintln!(
                "rewind serve: {}: drill `{}` has no `schedule`; run it with `rewind drill run`",
                path.display(),
                drill.name
            ),
        }
    }
    if scheduled.is_empty() {
        return Err(refused(format!(
            "rewind serve: no drill file in {} has a `schedule`; nothing to serve",
            dir.display()
        )));
    }
    let paths: BTreeMap<String, PathBuf> =
        scheduled.iter().map(|(p, n, _)| (n.clone(), p.clone())).collect();
    store::runtime()?.block_on(async {
        let store = store::open(db).await?;
        let mut last: BTreeMap<String, SystemTime> = BTreeMap::new();
        for rec in store.drills(None).await.map_err(|e| refused(format!("rewind: {e}")))? {
            let at = UNIX_EPOCH + Duration::from_millis(rec.started_unix_ms.max(0).cast_unsigned());
            let e = last.entry(rec.name).or_insert(at);
            *e = (*e).max(at);
        }
        let mut planner = Planner::new(
            scheduled.iter().map(|(_, n, s)| (n.as_str(), s)),
            &last,
            SystemTime::now(),
        )
        .map_err(|e| refused(format!("rewind serve: {e}")))?;
        let (tx, rx) = watch::channel(false);
        let io = |e: std::io::Error| anyhow::anyhow!("installing signal handlers: {e}");
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            eprintln!("rewind serve: {name}: stopping (a running drill is let finish)");
            let _ = tx.send(true);
        });
        eprintln!(
            "rewind serve: {} scheduled drill(s) from {}: {}; next due {}",
            scheduled.len(),
            dir.display(),
            planner.drills().collect::<Vec<_>>().join(", "),
            planner.next_wake().map_or_else(|| "never".to_owned(), rfc3339)
        );
        let store = &store;
        let paths = &paths;
        let stopped = rewind_drill::serve::serve(
            &mut planner,
            &WallClock,
            |due: Due| async move { run_due(store, paths, due).await },
            rx,
        )
        .await;
        if stopped == Stopped::NothingAhead {
            eprintln!("rewind serve: no schedule has a time ahead; stopping");
        }
        Ok(Exit::Ok)
    })
}

/// Runs one due drill as `drill run` does, with its slot recorded; logs its start and end.
async fn run_due(
    store: &rewind_store::SqlStore,
    paths: &BTreeMap<String, PathBuf>,
    due: Due,
) -> SystemTime {
    let started = SystemTime::now();
    let clock = Instant::now();
    let late = due.late.map_or_else(String::new, |l| {
        format!(", late by {}", humantime::format_duration(Duration::from_secs(l.as_secs())))
    });
    eprintln!("rewind serve: start drill `{}` for {}{late}", due.drill, rfc3339(due.slot));
    let opts = DrillOptions {
        seed: None,
        json: false,
        signals: false,
        scheduled: Some(Scheduled {
            due_at: rfc3339(due.slot),
            late: due.late.is_some(),
            late_s: due.late.map(|l| l.as_secs_f64()),
        }),
    };
    let ended = match paths.get(&due.drill) {
        Some(path) => run_file(store, path, &opts).await,
        None => Err(anyhow::anyhow!("no file for drill `{}`", due.drill)),
    };
    let how = match ended {
        Ok(Exit::Ok) => "passed".to_owned(),
        Ok(Exit::Failed) => "FAILED (an objective missed or a validation failed)".to_owned(),
        Ok(other) => format!("ended {other:?}"),
        Err(e) => format!("not run or not recorded: {e:#}"),
    };
    eprintln!(
        "rewind serve: end drill `{}`: {how} in {:.1}s",
        due.drill,
        clock.elapsed().as_secs_f64()
    );
    started
}
