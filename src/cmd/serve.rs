//! `rewind serve [--listen ADDR] [--drills DIR] [--token-file F] [--db URL]` (DESIGN.md): the
//! HTTP server (rewind-board: the board, `/api/v1/`, server-sent events, `/metrics`) on
//! `--listen`, and with `--drills DIR` the drill files' schedules, in one process.
//!
//! The server reads the store and never drives a run. A non-loopback `--listen` needs
//! `--token-file` (refused otherwise, exit 2); with a token every request carries it. One line
//! on stdout names the URL served. SIGTERM/SIGINT stop both: the server ends its event streams
//! and lets open requests finish; a running drill is let finish.
//!
//! With `--drills DIR`, at start every `DIR/*.toml` drill (and the workflow it names) is read and checked: any error
//! refuses the whole server (exit 2), every error located. Then, until SIGTERM or SIGINT: sleep
//! until the next due time, run the due drills one after the other (each exactly as `rewind
//! drill run FILE` runs it, the file read afresh, its traces exported with `--otlp-endpoint`),
//! record each with its slot and lateness, and log a line per start and end to stderr. Every
//! stderr line (the server's own errors included) goes through `telemetry`, so `--log-format
//! json` makes it a JSON object; the stdout line stays as it is. A signal ends a sleep at once; a running drill is let
//! finish, its cleanup included, then the server exits 0.

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
    /// Where to serve HTTP. An address other than loopback needs --token-file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// A file holding the bearer token (one line) every request must carry as
    /// `Authorization: Bearer TOKEN`; also enables `POST /api/v1/runs/{id}/cancel`.
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
}

impl Args {
    /// With `--drills`: the scheduled drills drive runs (their traces are exported as `drill
    /// run`'s are).
    pub fn drives(&self) -> bool {
        self.drills.is_some()
    }
}

/// The token in `path`: its one line, trimmed; an empty, unreadable or world-readable file is
/// refused, naming it.
fn read_token(path: &Path) -> Result<String> {
    let name = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| refused(format!("rewind serve: --token-file {name}: cannot read it: {e}")))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(refused(format!(
                "rewind serve: --token-file {name} is readable by every user of this machine; \
                 `chmod 600 {name}` (or 640) and start again"
            )));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| refused(format!("rewind serve: --token-file {name}: cannot read it: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(refused(format!(
            "rewind serve: --token-file {name} is empty; put the token on its one line"
        )));
    }
    if token.lines().count() > 1 || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(refused(format!(
            "rewind serve: --token-file {name}: the token is one line without spaces"
        )));
    }
    // An HTTP header carries visible ASCII: another character could never be sent as a bearer.
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(refused(format!(
            "rewind serve: --token-file {name}: the token must be visible ASCII (it is sent in an \
             HTTP header); e.g. `openssl rand -hex 32`"
        )));
    }
    Ok(token.to_owned())
}

/// The addresses `--listen` names; refused when one is not loopback and no token is given.
async fn listen_addrs(listen: &str, token: bool) -> Result<Vec<std::net::SocketAddr>> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| {
            refused(format!(
                "rewind serve: --listen {listen}: not an address (HOST:PORT, e.g. 127.0.0.1:8080): {e}"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(refused(format!("rewind serve: --listen {listen}: names no address")));
    }
    if !token && let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(refused(format!(
            "rewind serve: --listen {listen} ({a}) is reachable from other machines, and without \
             a token anyone who reaches it reads every run; give --token-file F (a file holding a \
             bearer token, mode 600), or listen on loopback (127.0.0.1:PORT)"
        )));
    }
    Ok(addrs)
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

/// The drill schedules of `--drills DIR`, read and checked.
struct Schedules {
    dir: PathBuf,
    scheduled: Vec<(PathBuf, String, rewind_model::Schedule)>,
    paths: BTreeMap<String, PathBuf>,
}

fn schedules(dir: &Path) -> Result<Schedules> {
    let drills = load_dir(dir)?;
    let mut scheduled = Vec::new();
    for (path, drill) in &drills {
        match &drill.schedule {
            Some(s) => scheduled.push((path.clone(), drill.name.clone(), s.clone())),
            None => crate::telemetry::info(
                None,
                &format!(
                    "rewind serve: {}: drill `{}` has no `schedule`; run it with `rewind drill run`",
                    path.display(),
                    drill.name
                ),
            ),
        }
    }
    if scheduled.is_empty() {
        return Err(refused(format!(
            "rewind serve: no drill file in {} has a `schedule`; nothing to schedule (leave --drills out to serve HTTP only)",
            dir.display()
        )));
    }
    let paths = scheduled.iter().map(|(p, n, _)| (n.clone(), p.clone())).collect();
    Ok(Schedules { dir: dir.to_owned(), scheduled, paths })
}

/// `rewind serve`
pub fn run(db: &str, args: &Args) -> Result<Exit> {
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let schedules = args.drills.as_deref().map(schedules).transpose()?;
    store::runtime()?.block_on(async {
        let addrs = listen_addrs(&args.listen, token.is_some()).await?;
        let store = store::open(db).await?;
        let listener = tokio::net::TcpListener::bind(&addrs[..]).await.map_err(|e| {
            refused(format!("rewind serve: --listen {}: cannot listen there: {e}", args.listen))
        })?;
        let local = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let io = |e: std::io::Error| anyhow::anyhow!("installing signal handlers: {e}");
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            crate::telemetry::info(
                None,
                &format!("rewind serve: {name}: stopping (a running drill is let finish)"),
            );
            let _ = tx.send(true);
        });
        let mut state = rewind_board::AppState::new(store.clone())
            .with_log(|line| crate::telemetry::warn(None, line));
        if let Some(t) = token {
            state = state.with_token(t);
        }
        let mut stop = rx.clone();
        let http = tokio::spawn(rewind_board::serve(listener, state, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let host =
            if local.ip().is_unspecified() { "localhost".to_owned() } else { local.to_string() };
        let host =
            if local.ip().is_unspecified() { format!("{host}:{}", local.port()) } else { host };
        println!("serving http://{host}/");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if let Some(sch) = &schedules {
            run_schedules(&store, sch, rx).await?;
        }
        let served = http.await.map_err(|e| anyhow::anyhow!("the HTTP server stopped: {e}"))?;
        served.map_err(|e| anyhow::anyhow!("the HTTP server failed: {e}"))?;
        Ok(Exit::Ok)
    })
}

/// Runs the drill schedules until `stop` (or until no schedule has a time ahead).
async fn run_schedules(
    store: &rewind_store::SqlStore,
    sch: &Schedules,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut last: BTreeMap<String, SystemTime> = BTreeMap::new();
    for rec in store.drills(None).await.map_err(|e| refused(format!("rewind: {e}")))? {
        let at = UNIX_EPOCH + Duration::from_millis(rec.started_unix_ms.max(0).cast_unsigned());
        let e = last.entry(rec.name).or_insert(at);
        *e = (*e).max(at);
    }
    let mut planner = Planner::new(
        sch.scheduled.iter().map(|(_, n, s)| (n.as_str(), s)),
        &last,
        SystemTime::now(),
    )
    .map_err(|e| refused(format!("rewind serve: {e}")))?;
    crate::telemetry::info(
        None,
        &format!(
            "rewind serve: {} scheduled drill(s) from {}: {}; next due {}",
            sch.scheduled.len(),
            sch.dir.display(),
            planner.drills().collect::<Vec<_>>().join(", "),
            planner.next_wake().map_or_else(|| "never".to_owned(), rfc3339)
        ),
    );
    let paths = &sch.paths;
    let stopped = rewind_drill::serve::serve(
        &mut planner,
        &WallClock,
        |due: Due| async move { run_due(store, paths, due).await },
        stop,
    )
    .await;
    if stopped == Stopped::NothingAhead {
        crate::telemetry::warn(
            None,
            "rewind serve: no schedule has a time ahead; the server keeps serving HTTP",
        );
    }
    Ok(())
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
    crate::telemetry::info(
        None,
        &format!("rewind serve: start drill `{}` for {}{late}", due.drill, rfc3339(due.slot)),
    );
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
    let (passed, how) = match ended {
        Ok(Exit::Ok) => (true, "passed".to_owned()),
        Ok(Exit::Failed) => {
            (false, "FAILED (an objective missed or a validation failed)".to_owned())
        }
        Ok(other) => (false, format!("ended {other:?}")),
        Err(e) => (false, format!("not run or not recorded: {e:#}")),
    };
    let line = format!(
        "rewind serve: end drill `{}`: {how} in {:.1}s",
        due.drill,
        clock.elapsed().as_secs_f64()
    );
    if passed {
        crate::telemetry::info(None, &line);
    } else {
        crate::telemetry::warn(None, &line);
    }
    started
}
