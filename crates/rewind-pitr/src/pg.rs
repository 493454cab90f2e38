//! PostgreSQL scratch instances: a `pg_basebackup` directory plus its WAL archive (`archive`), or
//! a pgBackRest stanza (`pgbackrest`), recovered to a time target and proven there.
//!
//! [`check`] reads what the backups cover (the base backup's `backup_label` and the `.backup`
//! history file the source archived at its end; `pgbackrest info`) and refuses an instant they
//! cannot give, writing nothing. [`restore`] lays the base backup into the data directory, asks
//! for recovery to the instant (`recovery.signal`, `restore_command`, `recovery_target_time`,
//! `recovery_target_action = 'promote'`), starts the server with `pg_ctl` (it daemonizes: the
//! server outlives rewind and is stopped by `scratch drop`), and waits for the end of recovery in
//! the server's own log, never trusting `pg_ctl -w` (it returns at read-only connections). It then
//! judges from the log that recovery stopped before the first commit after the instant, with the
//! last replayed commit at or before it.
//!
//! The settings that keep a scratch instance apart from its source are given on the server's
//! command line, so they beat `postgresql.conf` and `postgresql.auto.conf`: its own port on
//! 127.0.0.1, its own socket directory, archiving off, UTC log times, English log messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::proc::{self, Tool};
use crate::scratch::Ctx;
use crate::{Error, Recovered, Source, time};

/// Long enough never to cut a restore short: the executor's timeout is the one that counts.
const LONG: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tools that only read a little (`tar` for a label, `pgbackrest info`, `pg_isready`).
const SHORT: Duration = Duration::from_secs(300);
/// How long a server may take to write its pid file after `pg_ctl start` returned.
const PID_FILE_GRACE: Duration = Duration::from_secs(30);

/// The directory of PostgreSQL's programs: `REWIND_PG_BINDIR`, else Debian's
/// `/usr/lib/postgresql/VERSION/bin` for the data's major version, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir(version: Option<&str>) -> PathBuf {
    if let Some(d) = std::env::var_os("REWIND_PG_BINDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(v) = version {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", v.trim()));
        if d.join("pg_ctl").is_file() {
            return d;
        }
    }
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("pg_ctl").is_file() {
            return d;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, d)| d).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn program(bindir: &Path, name: &str) -> String {
    bindir.join(name).to_string_lossy().into_owned()
}

/// What the pre-check found: what to restore, and where the base backup ends.
#[derive(Debug)]
pub(crate) struct Plan {
    base: Base,
    /// The base backup's end (the earliest instant it can be recovered to), when known.
    backup_end: Option<SystemTime>,
    /// What the check read, in the engine's words, for the evidence.
    notes: Vec<String>,
}

#[derive(Debug)]
enum Base {
    /// A plain-format `pg_basebackup` directory.
    Plain(PathBuf),
    /// A tar-format one: `base.tar[.gz]` and, with `-X stream`, `pg_wal.tar[.gz]`.
    Tar { base: PathBuf, wal: Option<PathBuf> },
    /// A pgBackRest backup set.
    Pgbackrest { stanza: String, config: PathBuf, label: String },
}

/// Checks the instant against what the backups cover; writes nothing.
pub(crate) async fn check(ctx: &Ctx<'_>) -> Result<Plan, Error> {
    // pg_ctl puts the data directory and log in double quotes on a shell command line.
    if let Some(c) =
        ['"', '$', '`', '\\'].into_iter().find(|c| ctx.into.to_string_lossy().contains(*c))
    {
        return Err(Error::Permanent(format!(
            "`into` {} contains `{c}`, which pg_ctl cannot pass to the server's shell command line; choose another directory",
            ctx.into.display()
        )));
    }
    match &ctx.req.source {
        Source::Archive { base_backup, wal_archive } => {
            check_archive(base_backup, wal_archive, ctx.req.target).await
        }
        Source::Pgbackrest { stanza, config } => check_pgbackrest(ctx, stanza, config).await,
        Source::Binlog { .. } => Err(Error::Permanent("pg: a binlog source is MariaDB's".into())),
    }
}

pub(crate) fn require_dir(p: &Path, what: &str) -> Result<(), Error> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Permanent(format!("the {what} {} is not a directory", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::Permanent(format!("the {what} {} does not exist", p.display())))
        }
        Err(e) => Err(Error::Permanent(format!("cannot read the {what} {}: {e}", p.display()))),
    }
}

async fn check_archive(base: &Path, wal: &Path, target: SystemTime) -> Result<Plan, Error> {
    require_dir(base, "base backup")?;
    require_dir(wal, "WAL archive")?;
    let (layout, label) = read_base(base).await?;
    let label_file = base.join("backup_label");
    let start_lsn = label_field(&label, "START WAL LOCATION").ok_or_else(|| {
        Error::Permanent(format!("{}: no START WAL LOCATION in its backup_label", base.display()))
    })?;
    let start_lsn = start_lsn.split_whitespace().next().unwrap_or_default().to_string();
    let start_time = label_field(&label, "START TIME").and_then(|s| parse_label_time(&s));
    let mut notes = vec![format!(
        "base backup {}: START WAL LOCATION {start_lsn}, START TIME {}",
        base.display(),
        start_time.map(time::rfc3339).unwrap_or_else(|| "unreadable".into())
    )];
    // STOP TIME is stamped in whole seconds: the backup ended before the next second, and only
    // an instant from then on is surely after its end.
    let history = backup_history(wal, &label, &start_lsn)?;
    let end = history.clone().and_then(|(file, stop)| Some((file, stop? + Duration::from_secs(1))));
    let backup_end = match (&end, history) {
        (Some((file, ended_by)), _) => {
            notes.push(format!(
                "backup ended before {} (STOP TIME in {file}, whole seconds)",
                time::rfc3339(*ended_by)
            ));
            Some(*ended_by)
        }
        (None, Some((file, None))) => {
            notes.push(format!(
                "the STOP TIME in {file} is not in UTC or a numeric offset (a time zone abbreviation names several zones): the backup's end is not known"
            ));
            None
        }
        (None, _) => {
            notes.push(format!(
                "no backup history file (*.backup with START WAL LOCATION {start_lsn}) in {}: the backup's end is not known, only its start",
                wal.display()
            ));
            None
        }
    };
    match (&end, start_time) {
        (Some((file, stop)), _) if target < *stop => {
            return Err(Error::Permanent(format!(
                "restore point {} is before the base backup's end at {} (STOP TIME in {} in {}, whole seconds): recovery from {} cannot stop before it; choose a later restore point or an older base backup",
                time::rfc3339(target),
                time::rfc3339(*stop),
                file,
                wal.display(),
                base.display()
            )));
        }
        (None, Some(start)) if target < start => {
            return Err(Error::Permanent(format!(
                "restore point {} is before the base backup's start at {} ({}): choose a later restore point or an older base backup",
                time::rfc3339(target),
                time::rfc3339(start),
                if layout.is_some() {
                    base.join("base.tar*").display().to_string()
                } else {
                    label_file.display().to_string()
                }
            )));
        }
        _ => {}
    }
    // A time target only fires on a commit after it: an archive whose every file was written
    // before the instant holds no such commit, and recovery would end before the target.
    if let Some((newest, at)) = newest_file(wal)?
        && target > at
    {
        return Err(Error::Permanent(format!(
            "restore point {} is after the newest WAL in the archive ({}, written at {}): the archive holds no commit after the restore point, so recovery cannot stop there; on the source, commit, switch WAL (SELECT pg_switch_wal()) and wait until it is archived",
            time::rfc3339(target),
            newest.display(),
            time::rfc3339(at)
        )));
    }
    let base = match layout {
        None => Base::Plain(base.to_path_buf()),
        Some((b, w)) => Base::Tar { base: b, wal: w },
    };
    Ok(Plan { base, backup_end, notes })
}

/// The label of a base backup, and its tar files when it is tar-format.
#[allow(clippy::type_complexity)]
pub(crate) async fn read_base(
    base: &Path,
) -> Result<(Option<(PathBuf, Option<PathBuf>)>, String), Error> {
    let label = base.join("backup_label");
    if label.is_file() {
        let text = std::fs::read_to_string(&label)
            .map_err(|e| Error::Permanent(format!("cannot read {}: {e}", label.display())))?;
        // Its tablespaces are links to directories of the backup's: the scratch server would
        // write into them.
        let tblspc = base.join("pg_tblspc");
        if let Ok(rd) = std::fs::read_dir(&tblspc) {
            let mut names: Vec<String> = rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !names.is_empty() {
                names.sort();
                return Err(Error::Permanent(format!(
                    "{} holds tablespaces ({}): base backups with tablespaces are not supported; take one without tablespaces or restore it by hand",
                    tblspc.display(),
                    names.join(", ")
                )));
            }
        }
        return Ok((None, text));
    }
    let mut base_tar = None;
    let mut wal_tar = None;
    let mut others = Vec::new();
    let rd = std::fs::read_dir(base)
        .map_err(|e| Error::Permanent(format!("cannot read {}: {e}", base.display())))?;
    for e in rd {
        let e = e.map_err(|e| Error::Permanent(format!("cannot read {}: {e}", base.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "base.tar" | "base.tar.gz" => base_tar = Some(e.path()),
            "pg_wal.tar" | "pg_wal.tar.gz" => wal_tar = Some(e.path()),
            n if n.contains(".tar") => others.push(name),
            _ => {}
        }
    }
    let Some(base_tar) = base_tar else {
        return Err(Error::Permanent(format!(
            "{} is not a pg_basebackup directory: no backup_label (plain format) and no base.tar or base.tar.gz (tar format)",
            base.display()
        )));
    };
    if !others.is_empty() {
        others.sort();
        return Err(Error::Permanent(format!(
            "{} holds tablespace archives ({}): base backups with tablespaces are not supported; take one without tablespaces or restore it by hand",
            base.display(),
            others.join(", ")
        )));
    }
    // backup_label is the first member pg_basebackup writes; --occurrence stops tar there.
    let out = Tool::new("tar")
        .arg("-xOf")
        .arg(&base_tar)
        .arg("--occurrence=1")
        .arg("backup_label")
        .output(SHORT)
        .await?;
    if !out.status.success() || out.stdout.trim().is_empty() {
        return Err(Error::Permanent(format!(
            "{}: cannot read backup_label from it (tar: {})",
            base_tar.display(),
            proc::tail(&out.stderr, 500)
        )));
    }
    Ok((Some((base_tar, wal_tar)), out.stdout))
}

/// `FIELD: value` from a backup label or history file.
pub(crate) fn label_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(field).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string())
    })
}

/// A time as `backup_label` and `.backup` files write it: `2024-05-01 10:00:00 UTC`, in the
/// source's `log_timezone` (an abbreviation or a numeric offset). Only UTC/GMT/Z and numeric
/// offsets are read: an abbreviation names several zones (`IST` is India's, Israel's and
/// Ireland's summer time, `CST` Chicago's, Shanghai's and Havana's), and a time read hours off
/// would move the backup's end.
pub(crate) fn parse_label_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Some(t) = time::parse_pg(s) {
        return Some(t);
    }
    if let Some(body) = s.strip_suffix(" GMT").or_else(|| s.strip_suffix(" Z")) {
        return time::parse_pg(&format!("{body} UTC"));
    }
    chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %#z").ok().map(Into::into)
}

/// The `.backup` history file the source archived at the end of this backup: its name and
/// STOP TIME (`None`: in a zone abbreviation, not read). Matched by START WAL LOCATION (and
/// LABEL when both have one).
#[allow(clippy::type_complexity)]
pub(crate) fn backup_history(
    wal: &Path,
    label: &str,
    start_lsn: &str,
) -> Result<Option<(String, Option<SystemTime>)>, Error> {
    let want_label = label_field(label, "LABEL");
    let rd = std::fs::read_dir(wal)
        .map_err(|e| Error::Permanent(format!("cannot read {}: {e}", wal.display())))?;
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".backup") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let Some(start) = label_field(&text, "START WAL LOCATION") else { continue };
        if start.split_whitespace().next() != Some(start_lsn) {
            continue;
        }
        if let (Some(a), Some(b)) = (&want_label, label_field(&text, "LABEL"))
            && *a != b
        {
            continue;
        }
        let Some(stop) = label_field(&text, "STOP TIME") else {
            return Err(Error::Permanent(format!("{}: no STOP TIME in it", e.path().display())));
        };
        return Ok(Some((name, parse_label_time(&stop))));
    }
    Ok(None)
}

/// The most recently written file in the archive, and when.
fn newest_file(dir: &Path) -> Result<Option<(PathBuf, SystemTime)>, Error> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::Permanent(format!("cannot read {}: {e}", dir.display())))?;
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    for e in rd.filter_map(Result::ok) {
        let Ok(m) = e.metadata() else { continue };
        let Ok(at) = m.modified() else { continue };
        if m.is_file() && newest.as_ref().is_none_or(|(_, t)| at > *t) {
            newest = Some((e.path(), at));
        }
    }
    Ok(newest)
}

/// `pgbackrest info`: the newest backup that ended before the instant (pgBackRest itself would
/// fall back to the newest backup of all with only a warning: pgbackrest#1582).
async fn check_pgbackrest(ctx: &Ctx<'_>, stanza: &str, config: &Path) -> Result<Plan, Error> {
    if !config.is_file() {
        return Err(Error::Permanent(format!(
            "the pgBackRest configuration {} does not exist",
            config.display()
        )));
    }
    let tool = ctx
        .tool("pgbackrest")
        .arg(format!("--config={}", config.display()))
        .arg(format!("--stanza={stanza}"))
        .args(["--output=json", "info"]);
    let out = tool.run_judged(SHORT, Error::Permanent).await?;
    choose_backup(&out.stdout, stanza, config, ctx.req.target)
}

fn choose_backup(
    json: &str,
    stanza: &str,
    config: &Path,
    target: SystemTime,
) -> Result<Plan, Error> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::Permanent(format!(
            "pgbackrest info printed what is not JSON ({e}): {}",
            proc::tail(json, 500)
        ))
    })?;
    let st = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"].as_str() == Some(stanza)))
        .ok_or_else(|| {
            Error::Permanent(format!(
                "pgbackrest info ({}) lists no stanza `{stanza}`",
                config.display()
            ))
        })?;
    let code = st["status"]["code"].as_i64().unwrap_or(-1);
    let backups = st["backup"].as_array().cloned().unwrap_or_default();
    if code != 0 && backups.is_empty() {
        return Err(Error::Permanent(format!(
            "pgBackRest stanza `{stanza}` ({}): {} (status {code})",
            config.display(),
            st["status"]["message"].as_str().unwrap_or("unknown status")
        )));
    }
    let t = |b: &serde_json::Value, k: &str| {
        b["timestamp"][k].as_u64().and_then(|s| u32::try_from(s).ok()).map(time::from_unix)
    };
    // pgBackRest stamps whole seconds: a backup stamped to stop in second S ended before S+1.
    let ended_by = |b: &serde_json::Value| t(b, "stop").map(|s| s + Duration::from_secs(1));
    let chosen = backups
        .iter()
        .filter(|b| ended_by(b).is_some_and(|e| e <= target))
        .max_by_key(|b| t(b, "stop"));
    let Some(b) = chosen else {
        let oldest = backups.iter().min_by_key(|b| t(b, "start"));
        let what = match oldest {
            Some(o) => format!(
                "the oldest, {}, ran from {} to {}",
                o["label"].as_str().unwrap_or("?"),
                t(o, "start").map(time::rfc3339).unwrap_or_default(),
                t(o, "stop").map(time::rfc3339).unwrap_or_default()
            ),
            None => "it has no backups".into(),
        };
        return Err(Error::Permanent(format!(
            "restore point {} is before the end of every backup of pgBackRest stanza `{stanza}` ({}): {what}; pgBackRest would fall back to a later backup (pgbackrest#1582), so rewind refuses",
            time::rfc3339(target),
            config.display()
        )));
    };
    let label = b["label"].as_str().unwrap_or_default().to_string();
    let stop = ended_by(b);
    let notes = vec![format!(
        "pgBackRest backup {label} ({}), {} to {}, WAL {} to {}",
        b["type"].as_str().unwrap_or("?"),
        t(b, "start").map(time::rfc3339).unwrap_or_default(),
        t(b, "stop").map(time::rfc3339).unwrap_or_default(),
        b["archive"]["start"].as_str().unwrap_or("?"),
        b["archive"]["stop"].as_str().unwrap_or("?"),
    )];
    Ok(Plan {
        base: Base::Pgbackrest { stanza: stanza.into(), config: config.into(), label },
        backup_end: stop,
        notes,
    })
}

/// Restores and recovers into `ctx.into`, judges where the server stopped.
pub(crate) async fn restore(ctx: &Ctx<'_>, plan: Plan) -> Result<Recovered, Error> {
    let data = &ctx.data_dir;
    std::fs::create_dir_all(data)
        .map_err(|e| Error::io(format!("cannot create {}", data.display()), e))?;
    set_mode(data, 0o700)?;
    ctx.user.own(data)?;
    match &plan.base {
        Base::Plain(src) => {
            // As rewind's user (it reads the backup), handed to the server's user after. Links
            // followed: a `pg_basebackup --waldir` backup's pg_wal is a link to a directory of
            // the backup's, which the scratch server would recycle and write its timeline into.
            Tool::new("cp")
                .envs(&ctx.req.tool_env)
                .arg("-a")
                .arg("--dereference")
                .arg("--")
                .arg(src.join("."))
                .arg(data)
                .run(LONG)
                .await?;
        }
        Base::Tar { base, wal } => {
            Tool::new("tar")
                .envs(&ctx.req.tool_env)
                .arg("-xf")
                .arg(base)
                .arg("-C")
                .arg(data)
                .run(LONG)
                .await?;
            if let Some(w) = wal {
                let pg_wal = data.join("pg_wal");
                std::fs::create_dir_all(&pg_wal)
                    .map_err(|e| Error::io(format!("cannot create {}", pg_wal.display()), e))?;
                Tool::new("tar")
                    .envs(&ctx.req.tool_env)
                    .arg("-xf")
                    .arg(w)
                    .arg("-C")
                    .arg(&pg_wal)
                    .run(LONG)
                    .await?;
            }
        }
        Base::Pgbackrest { stanza, config, label } => {
            let tool = ctx
                .tool("pgbackrest")
                .arg(format!("--config={}", config.display()))
                .arg(format!("--stanza={stanza}"))
                .arg(format!("--pg1-path={}", data.display()))
                .arg(format!("--set={label}"))
                .arg("--type=time")
                .arg(format!("--target={}", time::pg_target(ctx.req.target)))
                .arg("--target-action=promote")
                .arg("--archive-mode=off")
                .arg("restore");
            tool.run_judged(LONG, Error::Permanent).await?;
        }
    }
    set_mode(data, 0o700)?;
    prepare(ctx, &plan)?;
    ctx.user.own(&ctx.into)?;
    let version = std::fs::read_to_string(data.join("PG_VERSION")).ok();
    let bin = bindir(version.as_deref());

    start_server(ctx, &bin).await?;
    let log = wait_for(ctx, &bin, 0, Awaited::Promoted).await?;
    let judged = judge(&log, ctx.req.target, plan.backup_end).map_err(Error::Permanent)?;
    let state = controldata_state(ctx, &bin).await?;
    if state != "in production" {
        return Err(Error::Permanent(format!(
            "after recovery pg_controldata says `Database cluster state: {state}`, not `in production`"
        )));
    }
    wait_accepting(ctx, &bin).await?;
    let mut evidence = plan.notes;
    evidence.extend(judged.evidence);
    evidence.push(format!("pg_controldata: Database cluster state: {state}"));
    Ok(Recovered {
        host: "127.0.0.1".into(),
        port: ctx.port,
        url: url(ctx),
        data_dir: data.clone(),
        recovered_to: judged.recovered_to,
        evidence,
        replayed_bytes: judged.replayed_bytes,
        recovery_s: 0.0,
        reused: false,
    })
}

fn url(ctx: &Ctx<'_>) -> String {
    format!("postgres://{}@127.0.0.1:{}/postgres", ctx.user.name, ctx.port)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot chmod {}", p.display()), e))
}

fn remove_if_there(p: &Path) -> Result<(), Error> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", p.display()), e)),
    }
}

/// Single-quoted for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Single-quoted for postgresql.conf, whose strings take `\` as an escape and end at a newline.
pub fn conf_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The data directory made ready to recover: the source's leftovers removed, the files a Debian
/// layout keeps in /etc supplied, the recovery asked for (archive method; pgBackRest wrote its
/// own recovery settings).
fn prepare(ctx: &Ctx<'_>, plan: &Plan) -> Result<(), Error> {
    let data = &ctx.data_dir;
    for f in ["postmaster.pid", "postmaster.opts", "standby.signal"] {
        remove_if_there(&data.join(f))?;
    }
    if !data.join("PG_VERSION").is_file() {
        return Err(Error::Permanent(format!(
            "the restored {} has no PG_VERSION: the base backup is not a PostgreSQL data directory",
            data.display()
        )));
    }
    let write = |p: PathBuf, body: &str| {
        std::fs::write(&p, body).map_err(|e| Error::io(format!("cannot write {}", p.display()), e))
    };
    // A Debian cluster keeps postgresql.conf in /etc/postgresql, so its base backup has none and
    // the server would not start. Every setting a scratch instance needs is on its command line;
    // an empty file is enough.
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        write(
            conf,
            "# Written by rewind: the base backup had no postgresql.conf (its cluster keeps it\n# elsewhere). The scratch instance's settings are on its command line.\n",
        )?;
    }
    // The scratch instance authenticates with its own file (`hba_file` on the command line): it
    // listens on 127.0.0.1 only, and rewind's steps reach it by a URL without a password.
    write(
        ctx.into.join("pg_hba.conf"),
        "# Written by rewind for a scratch instance bound to 127.0.0.1.\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n",
    )?;
    if let Base::Plain(_) | Base::Tar { .. } = plan.base {
        let Source::Archive { wal_archive, .. } = &ctx.req.source else {
            return Err(Error::Permanent("pg: a base backup without its WAL archive".into()));
        };
        let dir = wal_archive.to_string_lossy().replace('%', "%%");
        let restore_command = format!("cp {}/%f \"%p\"", sh_quote(&dir));
        let settings = format!(
            "\n# Added by rewind: recovery of this scratch instance to {}.\nrestore_command = {}\nrecovery_target_time = {}\nrecovery_target_action = 'promote'\nrecovery_target_inclusive = on\nrecovery_target_timeline = 'latest'\n",
            time::rfc3339(ctx.req.target),
            conf_quote(&restore_command),
            conf_quote(&time::pg_target(ctx.req.target)),
        );
        let auto = data.join("postgresql.auto.conf");
        let mut body = std::fs::read_to_string(&auto).unwrap_or_default();
        body.push_str(&settings);
        write(auto, &body)?;
    }
    write(data.join("recovery.signal"), "")?;
    Ok(())
}

/// Settings given on the server's command line: they beat postgresql.conf and auto.conf.
fn server_options(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("data_directory", ctx.data_dir.to_string_lossy().into_owned()),
        ("port", ctx.port.to_string()),
        ("listen_addresses", "127.0.0.1".into()),
        // TCP on 127.0.0.1 only: a socket under a deep `into` would pass the 107 bytes a
        // socket path may have, and nothing of rewind's uses one.
        ("unix_socket_directories", String::new()),
        ("hba_file", ctx.into.join("pg_hba.conf").to_string_lossy().into_owned()),
        ("external_pid_file", String::new()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("ssl", "off".into()),
        ("lc_messages", "C".into()),
        ("log_timezone", "UTC".into()),
        ("timezone", "UTC".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_min_messages", "warning".into()),
        ("hot_standby", "on".into()),
    ]
}

/// `pg_ctl start` without waiting (pg_ctl -w returns at read-only connections, before the
/// target). pg_ctl detaches the server (its own session): it outlives rewind. The server gets
/// no REWIND_* variables: `resume` would take it for a tool that outlived its attempt.
async fn start_server(ctx: &Ctx<'_>, bin: &Path) -> Result<(), Error> {
    let opts: Vec<String> = server_options(ctx)
        .into_iter()
        .map(|(k, v)| format!("-c {}", sh_quote(&format!("{k}={v}"))))
        .collect();
    let mut tool = Tool::new(program(bin, "pg_ctl")).user(&ctx.user).cwd(&ctx.into);
    for (k, _) in &ctx.req.tool_env {
        tool = tool.env_remove(k.clone());
    }
    let tool = tool
        .env_remove("REWIND_RUN_ID")
        .env_remove("REWIND_INSTANCE")
        .arg("start")
        .arg("-W")
        .arg("-D")
        .arg(&ctx.data_dir)
        .arg("-l")
        .arg(&ctx.log)
        .arg("-o")
        .arg(opts.join(" "));
    tool.run(SHORT).await.map(|_| ())
}

#[derive(Clone, Copy, PartialEq)]
enum Awaited {
    /// Recovery ended and the server was promoted.
    Promoted,
    /// The server accepts connections (a restart).
    Accepting,
}

/// Waits for the server's log to say `what` (from byte `from` on), failing on a FATAL or PANIC
/// or when the server is gone. Returns the log from `from`.
async fn wait_for(ctx: &Ctx<'_>, bin: &Path, from: u64, what: Awaited) -> Result<String, Error> {
    let began = Instant::now();
    let mut seen_alive = false;
    loop {
        let log = proc::read_from(&ctx.log, from);
        if let Some(line) = log.lines().find(|l| is_server_fatal(l)) {
            let msg = format!(
                "PostgreSQL stopped: {}\n--- end of {}:\n{}",
                line.trim(),
                ctx.log.display(),
                proc::tail(&log, 2000)
            );
            return Err(
                if line.contains("could not bind")
                    || line.contains("could not create any TCP/IP sockets")
                    || line.contains("could not create listen socket")
                {
                    Error::Transient(msg)
                } else {
                    Error::Permanent(msg)
                },
            );
        }
        let done = match what {
            Awaited::Promoted => log.contains("database system is ready to accept connections"),
            Awaited::Accepting => {
                log.contains("database system is ready to accept connections")
                    || pg_isready(ctx, bin).await
            }
        };
        if done {
            return Ok(log);
        }
        match pid_of(&ctx.data_dir) {
            Some(pid) if proc::server_alive(pid, &ctx.data_dir) => seen_alive = true,
            _ if seen_alive || began.elapsed() > PID_FILE_GRACE => {
                return Err(Error::Transient(format!(
                    "the server of {} is not running (it exited{}); end of {}:\n{}",
                    ctx.data_dir.display(),
                    if seen_alive { " during recovery" } else { " before writing postmaster.pid" },
                    ctx.log.display(),
                    proc::tail(&log, 2000)
                )));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A FATAL or PANIC of the server itself (not one sent to a client that connected too early).
fn is_server_fatal(line: &str) -> bool {
    (line.contains("FATAL:") || line.contains("PANIC:"))
        && ![
            "the database system is starting up",
            "the database system is not yet accepting connections",
            "the database system is shutting down",
            "the database system is in recovery mode",
            "authentication failed",
            "no pg_hba.conf entry",
            "terminating connection",
        ]
        .iter()
        .any(|s| line.contains(s))
        && !((line.contains("FATAL:  role \"") || line.contains("FATAL:  database \""))
            && line.contains("does not exist"))
}

fn pid_of(data: &Path) -> Option<u32> {
    proc::read_pid(&data.join("postmaster.pid"))
}

async fn pg_isready(ctx: &Ctx<'_>, bin: &Path) -> bool {
    Tool::new(program(bin, "pg_isready"))
        .args(["-q", "-t", "2", "-h", "127.0.0.1", "-d", "postgres", "-U"])
        .arg(&ctx.user.name)
        .arg("-p")
        .arg(ctx.port.to_string())
        .output(SHORT)
        .await
        .is_ok_and(|o| o.status.success())
}

/// Waits until the promoted server accepts TCP connections.
async fn wait_accepting(ctx: &Ctx<'_>, bin: &Path) -> Result<(), Error> {
    loop {
        if pg_isready(ctx, bin).await {
            return Ok(());
        }
        match pid_of(&ctx.data_dir) {
            Some(pid) if proc::server_alive(pid, &ctx.data_dir) => {}
            _ => {
                return Err(Error::Transient(format!(
                    "the server of {} exited after promotion; end of {}:\n{}",
                    ctx.data_dir.display(),
                    ctx.log.display(),
                    ctx.log_tail()
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Database cluster state` as pg_controldata prints it.
async fn controldata_state(ctx: &Ctx<'_>, bin: &Path) -> Result<String, Error> {
    let out = ctx
        .tool(&program(bin, "pg_controldata"))
        .envs(&[("LC_ALL".into(), "C".into())])
        .arg(&ctx.data_dir)
        .run(SHORT)
        .await?;
    Ok(out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// Starts a ready instance again on `ctx.port`.
pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<(), Error> {
    let data = &ctx.data_dir;
    if !data.join("PG_VERSION").is_file() {
        return Err(Error::Permanent(format!(
            "{} is not a PostgreSQL data directory any more (no PG_VERSION)",
            data.display()
        )));
    }
    // A postmaster killed with -9 leaves its pid file and socket lock, and its children exit
    // once they notice. PostgreSQL judges those files itself (a live pid, a shared memory block
    // still in use), so wait until the old server's processes are gone; a pid that never
    // disappears (a zombie nobody reaps) gets its stale files removed.
    if let Some(pid) = pid_of(data)
        && !proc::server_alive(pid, data)
    {
        let began = Instant::now();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        while (proc_dir.exists() || !proc::processes_in(data).is_empty())
            && began.elapsed() < PID_FILE_GRACE
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if proc_dir.exists() {
            remove_if_there(&data.join("postmaster.pid"))?;
            remove_if_there(&ctx.run_dir.join(format!(".s.PGSQL.{}.lock", ctx.port)))?;
        }
    }
    let version = std::fs::read_to_string(data.join("PG_VERSION")).ok();
    let bin = bindir(version.as_deref());
    let from = std::fs::metadata(&ctx.log).map(|m| m.len()).unwrap_or(0);
    start_server(ctx, &bin).await?;
    wait_for(ctx, &bin, from, Awaited::Accepting).await?;
    wait_accepting(ctx, &bin).await
}

/// Where the log says recovery stopped.
#[derive(Debug, PartialEq)]
pub(crate) struct Judged {
    pub recovered_to: SystemTime,
    pub evidence: Vec<String>,
    pub replayed_bytes: u64,
}

/// `0/3000148` as a number.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().trim_end_matches(',').split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Judges from the server's log that recovery stopped exactly at `target`: stopped before the
/// first commit (or abort) after it, with the last replayed commit at or before it (or, none
/// replayed, the base backup ending at or before it).
pub(crate) fn judge(
    log: &str,
    target: SystemTime,
    backup_end: Option<SystemTime>,
) -> Result<Judged, String> {
    let find = |needle: &str| {
        log.lines().find(|l| l.contains(needle)).map(|l| {
            (
                l.trim().to_string(),
                l.split_once(needle).map(|(_, r)| r.trim().to_string()).unwrap_or_default(),
            )
        })
    };
    let tail = || proc::tail(log, 2000).to_string();
    let Some((stop_line, stop_rest)) = find("recovery stopping before ") else {
        return Err(format!(
            "recovery did not stop at the restore point {}: the server's log has no `recovery stopping before …` line (it ended recovery for another reason); log:\n{}",
            time::rfc3339(target),
            tail()
        ));
    };
    let t1 = stop_rest
        .rsplit_once(", time ")
        .and_then(|(_, t)| time::parse_pg(t))
        .ok_or_else(|| format!("cannot read the time in `{stop_line}`"))?;
    if t1 <= target {
        return Err(format!(
            "recovery stopped at a record of {}, not after the restore point {}: `{stop_line}`",
            time::rfc3339(t1),
            time::rfc3339(target)
        ));
    }
    let mut evidence = Vec::new();
    let start = find("redo starts at ");
    let done = find("redo done at ");
    let consistent = find("consistent recovery state reached");
    let stop = Some((stop_line.clone(), String::new()));
    for (line, _) in [&start, &consistent, &stop, &done].into_iter().flatten() {
        evidence.push(line.clone());
    }
    let recovered_to = match find("last completed transaction was at log time ") {
        Some((line, rest)) => {
            let t0 =
                time::parse_pg(&rest).ok_or_else(|| format!("cannot read the time in `{line}`"))?;
            if t0 > target {
                return Err(format!(
                    "recovery replayed a commit of {}, after the restore point {}: `{line}`",
                    time::rfc3339(t0),
                    time::rfc3339(target)
                ));
            }
            evidence.push(line);
            t0
        }
        None => match backup_end {
            Some(end) if end <= target => {
                evidence.push(format!(
                    "no transaction was replayed after the base backup: recovered to the backup's end, {}",
                    time::rfc3339(end)
                ));
                end
            }
            _ => {
                return Err(format!(
                    "recovery stopped (`{stop_line}`) with no transaction replayed, and the base backup's end is not known to be at or before the restore point {}: where the instance is cannot be proven",
                    time::rfc3339(target)
                ));
            }
        },
    };
    let replayed_bytes = match (&start, &done) {
        (Some((_, a)), Some((_, b))) => {
            let a = a.split_whitespace().next().and_then(parse_lsn);
            let b = b.split_whitespace().next().and_then(parse_lsn);
            match (a, b) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            }
        }
        _ => 0,
    };
    if let Some(l) = find("archive recovery complete") {
        evidence.push(l.0);
    }
    Ok(Judged { recovered_to, evidence, replayed_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2024-05-01 10:00:05.000 UTC [10] LOG:  starting point-in-time recovery to 2024-05-01 10:00:02.5+00
2024-05-01 10:00:05.010 UTC [10] LOG:  redo starts at 0/2000028
2024-05-01 10:00:05.020 UTC [10] LOG:  consistent recovery state reached at 0/2000100
2024-05-01 10:00:05.030 UTC [10] LOG:  recovery stopping before commit of transaction 740, time 2024-05-01 10:00:03.1+00
2024-05-01 10:00:05.031 UTC [10] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.01 s
2024-05-01 10:00:05.032 UTC [10] LOG:  last completed transaction was at log time 2024-05-01 10:00:02.000123+00
2024-05-01 10:00:05.040 UTC [10] LOG:  archive recovery complete
";

    fn at(s: &str) -> SystemTime {
        time::parse_pg(s).expect("a test time")
    }

    #[test]
    fn stopped_between_two_commits() {
        let j = judge(LOG, at("2024-05-01 10:00:02.5+00"), None).expect("judged exact");
        assert_eq!(j.recovered_to, at("2024-05-01 10:00:02.000123+00"));
        assert_eq!(j.replayed_bytes, 0x3000148 - 0x2000028);
        assert!(j.evidence.iter().any(|e| e.contains("recovery stopping before commit")));
    }

    #[test]
    fn a_stop_at_or_before_the_target_or_a_later_commit_is_refused() {
        let e =
            judge(LOG, at("2024-05-01 10:00:03.1+00"), None).expect_err("stopped at the target");
        assert!(e.contains("not after the restore point"), "{e}");
        let e = judge(LOG, at("2024-05-01 10:00:01+00"), None).expect_err("a later commit");
        assert!(e.contains("after the restore point"), "{e}");
    }

    #[test]
    fn no_stop_line_is_refused() {
        let log = LOG.replace("recovery stopping before", "something else");
        let e = judge(&log, at("2024-05-01 10:00:02.5+00"), None).expect_err("no stop");
        assert!(e.contains("no `recovery stopping before"), "{e}");
    }

    #[test]
    fn no_replayed_commit_needs_the_backup_end() {
        let log: String = LOG
            .lines()
            .filter(|l| !l.contains("last completed"))
            .map(|l| format!("{l}\n"))
            .collect();
        let target = at("2024-05-01 10:00:02.5+00");
        assert!(judge(&log, target, None).is_err());
        let end = at("2024-05-01 10:00:01+00");
        assert_eq!(judge(&log, target, Some(end)).expect("backup end").recovered_to, end);
    }

    #[test]
    fn label_times() {
        assert_eq!(parse_label_time("2024-05-01 10:00:00 UTC"), Some(at("2024-05-01 10:00:00+00")));
        assert_eq!(parse_label_time("2024-05-01 12:00:00 +02"), Some(at("2024-05-01 10:00:00+00")));
        assert_eq!(parse_label_time("2024-05-01 10:00:00 GMT"), Some(at("2024-05-01 10:00:00+00")));
        // Europe/Dublin's summer time is `IST`, as are India's and Israel's: `date` reads it as
        // India's, 4.5 hours early, and a backup's end read early lets an earlier target through.
        assert_eq!(parse_label_time("2024-05-01 10:00:00 IST"), None);
        assert_eq!(parse_label_time("2024-05-01 10:00:00 CST"), None);
    }

    #[test]
    fn an_unreadable_stop_time_leaves_the_backup_end_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2024-05-01 10:00:00 IST\nLABEL: x\n";
        std::fs::write(
            dir.path().join("000000010000000000000002.00000028.backup"),
            format!("{label}STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\nSTOP TIME: 2024-05-01 10:01:00 IST\n"),
        )
        .expect("write");
        let found = backup_history(dir.path(), label, "0/2000028").expect("not an error");
        let (file, stop) = found.expect("the history file");
        assert_eq!(file, "000000010000000000000002.00000028.backup");
        assert_eq!(stop, None);
    }

    #[test]
    fn pgbackrest_never_falls_back() {
        let json = r#"[{"name":"s","status":{"code":0,"message":"ok"},"backup":[
            {"label":"A","type":"full","timestamp":{"start":100,"stop":110},"archive":{"start":"x","stop":"y"}},
            {"label":"B","type":"full","timestamp":{"start":200,"stop":210},"archive":{"start":"x","stop":"y"}}]}]"#;
        let cfg = Path::new("/c.conf");
        let pick = |s: u32| match choose_backup(json, "s", cfg, time::from_unix(s)) {
            Ok(Plan { base: Base::Pgbackrest { label, .. }, .. }) => label,
            Ok(p) => panic!("not pgbackrest: {p:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(pick(300), "B");
        assert_eq!(pick(211), "B");
        assert_eq!(pick(210), "A");
        assert!(pick(110).starts_with("error: restore point"), "{}", pick(110));
        assert!(pick(110).contains("the oldest, A"), "{}", pick(110));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(conf_quote("cp 'x' \"%p\""), "'cp ''x'' \"%p\"'");
        // postgresql.conf reads a backslash as an escape and ends a value at a newline: a WAL
        // archive at `/backups/a\b` or with a newline in its name must reach `cp` as it is.
        assert_eq!(conf_quote(r"cp '/backups/a\b'"), r"'cp ''/backups/a\\b'''");
        assert_eq!(conf_quote("a\nb\rc"), r"'a\nb\rc'");
        assert_eq!(parse_lsn("1/0000010"), Some((1 << 32) | 0x10));
    }
}
