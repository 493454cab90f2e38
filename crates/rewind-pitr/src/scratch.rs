//! The lifecycle of scratch instances: the marker in each scratch directory, the registry that
//! lists them, reuse and replacement, `list` and `drop`.
//!
//! A scratch directory (`into`) holds [`MARKER`] (the [`Entry`], the truth about the instance),
//! `data/` (the server's data directory), `run/` (its sockets and, for MariaDB, pid file) and
//! [`LOG`] (the server's log, kept after a failure). The registry holds a copy of each entry at
//! `REGISTRY/RUN/HEX(instance).json`, so `list` and `drop` find every instance of a run. Both are
//! written (file synced, renamed into place, directory synced) before a server is started, so an
//! instance that runs is always listed, whatever happens to rewind after.
//!
//! Nothing is ever removed from a directory that does not hold a marker of the same owner.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::proc::{self, RunAs};
use crate::{Engine, Error, Owner, Recovered, Request, Source, mariadb, pg, time};

/// The marker file in a scratch directory.
pub const MARKER: &str = "rewind-scratch.json";
/// The server's log in a scratch directory.
pub const LOG: &str = "server.log";
/// The data directory in a scratch directory.
pub const DATA: &str = "data";
/// Sockets (and MariaDB's pid file) in a scratch directory.
pub const RUN: &str = "run";

/// Where a scratch instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being restored or recovered; a later attempt replaces it.
    Recovering,
    /// At the instant, proven.
    Ready,
    /// Did not reach the instant; its data directory is gone, its log kept.
    Failed,
}

impl State {
    /// As listed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recovering => "recovering",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// What is known about one scratch instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Whose it is.
    pub owner: Owner,
    /// Its engine.
    pub engine: Engine,
    /// Where its backups are.
    pub source: Source,
    /// The scratch directory.
    pub into: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The OS user the server runs as.
    pub user: String,
    /// The instant asked for, RFC 3339.
    pub target: String,
    /// Where it is in its life.
    pub state: State,
    /// What the recovery proved (ready instances).
    pub recovered: Option<Recovered>,
    /// Why it failed (failed instances).
    pub error: Option<String>,
    /// When the entry was last written, RFC 3339.
    pub updated: String,
}

impl Entry {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.into.join(DATA)
    }

    /// The server's pid, if its pid file names a live server of this data directory.
    pub fn server_pid(&self) -> Option<u32> {
        let file = match self.engine {
            Engine::Postgres => self.data_dir().join("postmaster.pid"),
            Engine::Mariadb => self.into.join(RUN).join("mariadbd.pid"),
        };
        let pid = proc::read_pid(&file)?;
        proc::server_alive(pid, &self.data_dir()).then_some(pid)
    }

    /// Removes what the instance keeps outside its scratch directory: a MariaDB server's socket
    /// directory when `into` is too deep for a socket path.
    pub fn remove_outside(&self) -> Result<(), Error> {
        if self.engine != Engine::Mariadb {
            return Ok(());
        }
        let dir = mariadb::outside_socket_dir(&self.into);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => remove_dir(&dir),
            _ => Ok(()),
        }
    }

    /// Stops the server if it runs: the one its pid file names, or, when it was stopped before
    /// it wrote one, whatever server runs in its data directory.
    pub async fn stop_server(&self) -> Result<(), Error> {
        let data = self.data_dir();
        let pids = match self.server_pid() {
            Some(pid) => vec![pid],
            None => proc::servers_in(&data),
        };
        let first = match self.engine {
            Engine::Postgres => Signal::SIGINT,
            Engine::Mariadb => Signal::SIGTERM,
        };
        for pid in pids {
            proc::stop_server(pid, &data, first, Duration::from_secs(60)).await?;
        }
        Ok(())
    }
}

/// Where scratch instances are listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    dir: PathBuf,
}

/// One instance as `scratch list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// The entry (from the scratch directory's marker when it is there, else the registry's copy).
    #[serde(flatten)]
    pub entry: Entry,
    /// The server's pid when it runs.
    pub pid: Option<u32>,
    /// Bytes under the scratch directory.
    pub size_bytes: u64,
    /// The scratch directory is gone (removed by hand).
    pub missing: bool,
}

impl Registry {
    /// The registry at `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `REWIND_SCRATCH_REGISTRY`, else `$XDG_STATE_HOME/rewind/scratch`, else
    /// `$HOME/.local/state/rewind/scratch`.
    pub fn default_location() -> Result<Self, Error> {
        if let Some(d) = std::env::var_os("REWIND_SCRATCH_REGISTRY").filter(|d| !d.is_empty()) {
            return Ok(Self::at(d));
        }
        if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return Ok(Self::at(PathBuf::from(d).join("rewind/scratch")));
        }
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => Ok(Self::at(PathBuf::from(h).join(".local/state/rewind/scratch"))),
            None => Err(Error::Permanent(
                "no scratch registry: set REWIND_SCRATCH_REGISTRY (or HOME)".into(),
            )),
        }
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, owner: &Owner) -> PathBuf {
        let hex: String = owner.instance.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(&owner.run).join(format!("{hex}.json"))
    }

    fn get(&self, owner: &Owner) -> Result<Option<Entry>, Error> {
        let p = self.path(owner);
        if p.exists() { read_json(&p).map(Some) } else { Ok(None) }
    }

    fn put(&self, e: &Entry) -> Result<(), Error> {
        write_json(&self.path(&e.owner), e)
    }

    fn remove(&self, owner: &Owner) -> Result<(), Error> {
        let p = self.path(owner);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {}", p.display()), e)),
        }
        if let Some(parent) = p.parent() {
            let _ = std::fs::remove_dir(parent); // only when empty
        }
        Ok(())
    }

    /// Every registered instance (of `run`, or all), each read from its own marker when there.
    pub fn list(&self, run: Option<&str>) -> Result<Vec<Listed>, Error> {
        let mut out = Vec::new();
        let runs: Vec<PathBuf> = match run {
            Some(r) => vec![self.dir.join(r)],
            None => match std::fs::read_dir(&self.dir) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(format!("cannot read {}", self.dir.display()), e)),
            },
        };
        for dir in runs {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
            };
            for f in rd {
                let f =
                    f.map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?.path();
                if f.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let reg: Entry = read_json(&f)?;
                let (entry, missing) = match read_marker(&reg.into) {
                    Ok(Some(m)) if m.owner == reg.owner => (m, false),
                    _ => (reg, true),
                };
                let pid = entry.server_pid();
                let size_bytes = dir_size(&entry.into);
                out.push(Listed { entry, pid, size_bytes, missing });
            }
        }
        out.sort_by(|a, b| {
            (&a.entry.owner.run, &a.entry.owner.instance)
                .cmp(&(&b.entry.owner.run, &b.entry.owner.instance))
        });
        Ok(out)
    }

    /// Stops and removes every instance of `run`: its server, its scratch directory (only if
    /// the marker there is this entry's owner's) and its registry entry. Returns what was dropped.
    pub async fn drop_run(&self, run: &str) -> Result<Vec<Entry>, Error> {
        let mut dropped = Vec::new();
        for l in self.list(Some(run))? {
            let e = l.entry;
            e.stop_server().await?;
            if !l.missing {
                remove_dir(&e.into)?;
            }
            e.remove_outside()?;
            self.remove(&e.owner)?;
            dropped.push(e);
        }
        Ok(dropped)
    }
}

/// Paths and settings an engine works with.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub req: &'a Request,
    pub user: RunAs,
    pub into: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl Ctx<'_> {
    /// A tool run as the server's user with the request's environment.
    pub fn tool(&self, program: &str) -> proc::Tool {
        proc::Tool::new(program).user(&self.user).envs(&self.req.tool_env)
    }

    /// The last lines of the server's log, for errors.
    pub fn log_tail(&self) -> String {
        std::fs::read_to_string(&self.log)
            .map(|s| proc::tail(&s, 2000).to_string())
            .unwrap_or_default()
    }
}

/// What an engine's pre-check found (what to restore).
pub(crate) enum Checked {
    Pg(pg::Plan),
    Maria(mariadb::Plan),
}

pub(crate) async fn recover(
    req: &Request,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<Recovered, Error> {
    let engine = req.source.engine();
    if !req.into.is_absolute() {
        return Err(Error::Permanent(format!(
            "`into` must be an absolute path: {}",
            req.into.display()
        )));
    }
    // Removing a link removes the link, not the instance behind it: refused, as rewind did not
    // make it.
    if std::fs::symlink_metadata(&req.into).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::Permanent(format!(
            "`into` {} is a symbolic link; name the directory it points to",
            req.into.display()
        )));
    }
    refuse_overlap(req)?;
    let user = RunAs::resolve(req.run_as.as_deref(), engine.default_user())?;
    let target = time::rfc3339(req.target);
    let mut ctx = Ctx {
        req,
        user,
        into: req.into.clone(),
        data_dir: req.into.join(DATA),
        run_dir: req.into.join(RUN),
        log: req.into.join(LOG),
        port: 0,
    };

    // The owner's instance elsewhere (its `into` came from a `${VAR}` that changed since): it
    // is replaced by this one, so it is stopped and removed rather than left running unlisted.
    if let Some(old) = req.registry.get(&req.owner)?
        && old.into != req.into
    {
        if let Ok(Some(m)) = read_marker(&old.into)
            && m.owner == req.owner
        {
            m.stop_server().await?;
            remove_dir(&old.into)?;
            m.remove_outside()?;
        }
        req.registry.remove(&req.owner)?;
    }

    // What is already there?
    match read_marker(&req.into)? {
        Some(m) if m.owner != req.owner => {
            return Err(Error::Permanent(format!(
                "{} is the scratch instance of run {} ({}); drop it first: rewind scratch drop {}",
                req.into.display(),
                m.owner.run,
                m.owner.instance,
                m.owner.run
            )));
        }
        Some(m) if m.state == State::Ready && m.target == target && m.source == req.source => {
            ctx.port = m.port;
            let mut rec = m.recovered.clone().ok_or_else(|| {
                Error::Permanent(format!(
                    "{}: a ready marker without its recovery",
                    req.into.display()
                ))
            })?;
            if m.server_pid().is_none() {
                let started = tokio::select! {
                    r = start(&ctx) => r,
                    () = stop => Err(Error::Stopped),
                };
                if let Err(e) = started {
                    m.stop_server().await.ok();
                    return Err(e);
                }
            }
            req.registry.put(&m)?;
            rec.reused = true;
            return Ok(rec);
        }
        Some(m) => {
            // Killed mid-recovery, failed, or another instant or source: replace it.
            m.stop_server().await?;
            remove_dir(&req.into)?;
            m.remove_outside()?;
        }
        None => {
            if dir_has_entries(&req.into)? {
                return Err(Error::Permanent(format!(
                    "{} exists, is not empty and is not a rewind scratch directory (no {MARKER}); nothing was removed",
                    req.into.display()
                )));
            }
        }
    }

    // Refuse what the backups cannot give before anything is written.
    let checked = match &req.source {
        Source::Archive { .. } | Source::Pgbackrest { .. } => Checked::Pg(pg::check(&ctx).await?),
        Source::Binlog { .. } => Checked::Maria(mariadb::check(&ctx).await?),
    };

    ctx.port = proc::free_port()?;
    let mut entry = Entry {
        owner: req.owner.clone(),
        engine,
        source: req.source.clone(),
        into: req.into.clone(),
        port: ctx.port,
        user: ctx.user.name.clone(),
        target,
        state: State::Recovering,
        recovered: None,
        error: None,
        updated: time::rfc3339(SystemTime::now()),
    };
    for d in [&ctx.into, &ctx.run_dir] {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
    }
    write_json(&req.into.join(MARKER), &entry)?;
    req.registry.put(&entry)?;
    ctx.user.own(&ctx.into)?;

    let started = Instant::now();
    let result = tokio::select! {
        r = restore(&ctx, checked) => r,
        () = stop => Err(Error::Stopped),
    };
    match result {
        Ok(mut rec) => {
            rec.recovery_s = started.elapsed().as_secs_f64();
            rec.reused = false;
            entry.state = State::Ready;
            entry.recovered = Some(rec.clone());
            entry.updated = time::rfc3339(SystemTime::now());
            write_json(&req.into.join(MARKER), &entry)?;
            req.registry.put(&entry)?;
            Ok(rec)
        }
        Err(Error::Stopped) => {
            // Left `recovering`: the next attempt replaces it.
            entry.stop_server().await.ok();
            Err(Error::Stopped)
        }
        Err(e) => {
            entry.stop_server().await.ok();
            entry.state = State::Failed;
            entry.error = Some(e.to_string());
            entry.updated = time::rfc3339(SystemTime::now());
            let data = entry.data_dir();
            if data.exists() {
                std::fs::remove_dir_all(&data).ok();
            }
            write_json(&req.into.join(MARKER), &entry).ok();
            req.registry.put(&entry).ok();
            Err(e)
        }
    }
}

/// Refuses an `into` that is, holds or lies inside one of the backups: a scratch directory is
/// replaced and removed whole, and its server writes into it.
fn refuse_overlap(req: &Request) -> Result<(), Error> {
    let paths: Vec<(&str, &Path)> = match &req.source {
        Source::Archive { base_backup, wal_archive } => {
            vec![("base backup", base_backup), ("WAL archive", wal_archive)]
        }
        Source::Pgbackrest { config, .. } => vec![("pgBackRest configuration", config)],
        Source::Binlog { base_backup, binlogs } => {
            vec![("base backup", base_backup), ("binlog directory", binlogs)]
        }
    };
    let into = resolved(&req.into);
    for (what, p) in paths {
        let p2 = resolved(p);
        if into.starts_with(&p2) || p2.starts_with(&into) {
            return Err(Error::Permanent(format!(
                "`into` {} overlaps the {what} {}: a scratch directory is replaced and removed whole, so it must be apart from the backups; nothing was written",
                req.into.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// `p` with its symbolic links resolved as far as it exists (the rest appended as written).
fn resolved(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = p;
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(c, |acc: PathBuf, n| acc.join(n));
        }
        match (cur.file_name(), cur.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                cur = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

async fn restore(ctx: &Ctx<'_>, checked: Checked) -> Result<Recovered, Error> {
    match checked {
        Checked::Pg(p) => pg::restore(ctx, p).await,
        Checked::Maria(p) => mariadb::restore(ctx, p).await,
    }
}

async fn start(ctx: &Ctx<'_>) -> Result<(), Error> {
    match ctx.req.source.engine() {
        Engine::Postgres => pg::start(ctx).await,
        Engine::Mariadb => mariadb::start(ctx).await,
    }
}

/// The marker in `into`, if there is one.
pub fn read_marker(into: &Path) -> Result<Option<Entry>, Error> {
    let p = into.join(MARKER);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Permanent(format!("{} is damaged: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", p.display()), e)),
    }
}

fn read_json(p: &Path) -> Result<Entry, Error> {
    let b = std::fs::read(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
    serde_json::from_slice(&b)
        .map_err(|e| Error::Permanent(format!("{} is damaged: {e}", p.display())))
}

/// Writes `value` as JSON to `path` durably: a synced temporary file renamed into place, the
/// directory synced.
fn write_json(path: &Path, value: &Entry) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Permanent(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))?;
    Ok(())
}

fn dir_has_entries(p: &Path) -> Result<bool, Error> {
    match std::fs::read_dir(p) {
        Ok(mut rd) => Ok(rd.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("cannot read {}", p.display()), e)),
    }
}

/// Removes a scratch directory (the caller checked its marker).
fn remove_dir(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", p.display()), e)),
    }
}

/// Bytes of the regular files under `p` (symbolic links not followed).
pub fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(p)
        .map(|rd| rd.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}
