//! MariaDB scratch instances: a `mariadb-backup` directory plus the server's binlogs (method
//! `binlog`).
//!
//! [`check`] reads the backup's binlog coordinates and the binlogs' event headers (in Rust,
//! [`crate::binlog`]) and decides, before anything is written, where the replay stops: at the
//! end of the last transaction group committed at or before the instant. Binlog timestamps are
//! whole seconds, so an instant inside a second that has commits is refused (those commits could
//! be on either side of it), and so is an instant the binlogs do not prove covered (no event
//! stamped after it), one before the backup's end, and a gap in the binlog files.
//!
//! [`restore`] copies the backup, prepares it, starts `mariadbd` on a private socket only (no
//! network, no grants, no binlog), pipes `mariadb-binlog --start-position --stop-position` into
//! the `mariadb` client, stops the server and starts it again on 127.0.0.1 and its port with the
//! backup's own grants, detached from rewind (it outlives rewind until `rewind scratch drop`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;

use crate::binlog::{self, Commit, Scan};
use crate::proc::{self, RunAs, Tool};
use crate::scratch::Ctx;
use crate::{Error, Recovered, Source, time};

/// The files `mariadb-backup --backup` writes the binlog coordinates of its consistent point
/// into (newer releases use the first name).
const BINLOG_INFO: [&str; 2] = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"];
/// The backup's own description (`end_time = 2024-01-01 12:00:00`, the server's local time).
const BACKUP_INFO: [&str; 2] = ["mariadb_backup_info", "xtrabackup_info"];
/// The pid file of a scratch server, in `run/` (what [`crate::scratch::Entry::server_pid`] reads).
pub(crate) const PID_FILE: &str = "mariadbd.pid";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a server may take to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(120);

/// A binlog position with its timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Point {
    /// The binlog file's name.
    pub file: String,
    /// The event's position.
    pub at: u64,
    /// Its timestamp, seconds since the epoch.
    pub time: u32,
}

impl Point {
    fn new(scan: &Scan, at: u64, time: u32) -> Self {
        Self { file: file_name(&scan.path), at, time }
    }

    fn show(&self) -> String {
        format!("{}:{} stamped {}", self.file, self.at, time::rfc3339(time::from_unix(self.time)))
    }
}

/// What the pre-check found: what to copy and which binlog bytes to replay.
#[derive(Debug)]
pub(crate) struct Plan(Box<Planned>);

#[derive(Debug)]
struct Planned {
    backup: PathBuf,
    /// The backup's consistent point: binlog file, position, GTID.
    start_file: String,
    start_pos: u64,
    gtid: String,
    /// When the backup ended, from its own description (whole seconds), if it says.
    backup_end: Option<SystemTime>,
    /// The binlog files to replay, from the backup's; empty when nothing is replayed.
    replay: Vec<PathBuf>,
    /// The last transaction at or before the instant, after the backup's position: the replay
    /// stops at its end.
    last: Option<(Point, u64)>,
    /// The last commit inside the backup (before its position).
    last_in_backup: Option<Point>,
    /// The first commit (or, failing one, event) stamped after the instant's second.
    next: (Point, &'static str),
    replayed_bytes: u64,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn second(s: i64) -> String {
    let t = if s >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    };
    time::rfc3339(t)
}

/// Checks the instant against what the backups cover; writes nothing.
pub(crate) async fn check(ctx: &Ctx<'_>) -> Result<Plan, Error> {
    let Source::Binlog { base_backup, binlogs } = &ctx.req.source else {
        return Err(Error::Permanent("mariadb: the method must be `binlog`".into()));
    };
    let (base_backup, binlogs, target) = (base_backup.clone(), binlogs.clone(), ctx.req.target);
    tokio::task::spawn_blocking(move || plan(&base_backup, &binlogs, target))
        .await
        .map_err(|e| Error::Transient(format!("mariadb: the pre-check did not finish: {e}")))?
}

/// The backup's consistent point, as `mariadb-backup` wrote it: `binlog.000002\t816\t0-1-3`.
fn read_binlog_info(backup: &Path) -> Result<(String, u64, String), Error> {
    for name in BINLOG_INFO {
        let p = backup.join(name);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot read {}", p.display()), e)),
        };
        let line = text.lines().next().unwrap_or("");
        let mut f = line.split('\t').map(str::trim);
        let (file, pos) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let gtid = f.next().unwrap_or("").to_string();
        let pos: u64 = pos.parse().map_err(|_| {
            Error::Permanent(format!(
                "{}: expected `FILE<TAB>POSITION[<TAB>GTID]`, found `{line}`",
                p.display()
            ))
        })?;
        if file.is_empty() {
            return Err(Error::Permanent(format!("{}: names no binlog file", p.display())));
        }
        return Ok((file.to_string(), pos, gtid));
    }
    Err(Error::Permanent(format!(
        "{} has no {} (not a mariadb-backup directory, or the server ran without binlogs: \
         a binlog replay needs the backup's binlog position)",
        backup.display(),
        BINLOG_INFO.join(" or ")
    )))
}

/// `end_time` of the backup's description, read in this machine's time zone (as the server
/// wrote it).
fn read_backup_end(backup: &Path) -> Option<SystemTime> {
    use chrono::TimeZone;
    for name in BACKUP_INFO {
        let Ok(text) = std::fs::read_to_string(backup.join(name)) else { continue };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            if k.trim() != "end_time" {
                continue;
            }
            let n = chrono::NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
            let t = chrono::Local.from_local_datetime(&n).latest()?;
            return Some(t.with_timezone(&chrono::Utc).into());
        }
    }
    None
}

/// A backup and the binlogs from its position on, read: its consistent point, its end, and
/// each binlog file's event headers.
pub(crate) struct Loaded {
    /// The backup's binlog file, position and GTID.
    pub start: (String, u64, String),
    /// When the backup ended, from its own description (whole seconds), if it says.
    pub backup_end: Option<SystemTime>,
    /// The binlog files from the backup's on, in order, without gaps; never empty.
    pub scans: Vec<Scan>,
}

/// Reads the backup's coordinates and the binlogs after them; refuses a missing backup, binlog
/// directory or binlog file, and a gap in the binlog files.
pub(crate) fn load(backup: &Path, binlogs: &Path) -> Result<Loaded, Error> {
    if !backup.is_dir() {
        return Err(Error::Permanent(format!(
            "mariadb: the base backup {} does not exist (or is not a directory)",
            backup.display()
        )));
    }
    if !binlogs.is_dir() {
        return Err(Error::Permanent(format!(
            "mariadb: the binlog directory {} does not exist (or is not a directory)",
            binlogs.display()
        )));
    }
    let (start_file, start_pos, gtid) = read_binlog_info(backup)?;
    let backup_end = read_backup_end(backup);
    let Some((base, first)) = binlog::split_name(&start_file) else {
        return Err(Error::Permanent(format!(
            "{}: `{start_file}` is not a binlog file name (BASE.NUMBER)",
            backup.display()
        )));
    };
    let all = binlog::files(binlogs, base)
        .map_err(|e| Error::io(format!("cannot read {}", binlogs.display()), e))?;
    let files: Vec<&(u64, PathBuf)> = all.iter().filter(|(n, _)| *n >= first).collect();
    match files.first() {
        Some((n, _)) if *n == first => {}
        _ => {
            return Err(Error::Permanent(format!(
                "the backup's binlog {start_file} (position {start_pos}) is not in {}: \
                 the binlogs from the backup on are needed",
                binlogs.display()
            )));
        }
    }
    for w in files.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            let width = start_file.len() - base.len() - 1;
            let missing: Vec<String> =
                (w[0].0 + 1..w[1].0).map(|n| format!("{base}.{n:0width$}")).collect();
            return Err(Error::Permanent(format!(
                "binlogs missing in {}: {} (between {} and {}); a replay cannot skip them",
                binlogs.display(),
                missing.join(", "),
                file_name(&w[0].1),
                file_name(&w[1].1)
            )));
        }
    }
    let mut scans = Vec::with_capacity(files.len());
    for (_, p) in &files {
        let s = binlog::scan(p)
            .map_err(|e| Error::Permanent(format!("cannot read binlog {}: {e}", p.display())))?;
        scans.push(s);
    }
    if start_pos > scans[0].len {
        return Err(Error::Permanent(format!(
            "the backup's position {start_file}:{start_pos} is past the end of that binlog \
             ({} bytes): the binlog is not the one the backup was taken against",
            scans[0].len
        )));
    }
    Ok(Loaded { start: (start_file, start_pos, gtid), backup_end, scans })
}

/// What the binlogs after a backup allow ([`crate::reach`]), by the rules [`decide`] applies:
/// an instant's second must come after every commit in the backup, after the first event of
/// the backup's binlog when that is before its position, and after the backup's end (asked
/// always: [`decide`] asks it only when no commit is replayed, so this may be a second later);
/// it must hold no commit after the backup's position, and an event must be stamped after it.
pub(crate) fn reach(l: &Loaded) -> crate::reach::BinlogReach {
    let start_pos = l.start.1;
    let first_scan = &l.scans[0];
    let mut first = l.backup_end.map_or(i64::MIN, |e| time::unix_floor(e) + 1);
    for c in first_scan.commits.iter().filter(|c| c.end <= start_pos) {
        first = first.max(i64::from(c.time) + 1);
    }
    if let Some((at, t)) = first_scan.first_event
        && at < start_pos
    {
        first = first.max(i64::from(t) + 1);
    }
    let after = l.scans.iter().enumerate().flat_map(|(i, s)| {
        s.commits.iter().filter(move |c| i > 0 || c.end > start_pos).map(|c| i64::from(c.time))
    });
    let busy: std::collections::BTreeSet<i64> = after.collect();
    let newest_commit =
        l.scans.iter().flat_map(|s| s.commits.iter().map(|c| c.time)).max().map(time::from_unix);
    let last_event = l.scans.last().and_then(|s| s.last_event).map(|(_, t)| i64::from(t));
    crate::reach::BinlogReach { first, busy, last_event, newest_commit }
}

fn plan(backup: &Path, binlogs: &Path, target: SystemTime) -> Result<Plan, Error> {
    let Loaded { start, backup_end, scans } = load(backup, binlogs)?;
    decide(backup, scans, start, backup_end, target)
}

/// The pre-check's judgement, on scanned binlogs.
fn decide(
    backup: &Path,
    scans: Vec<Scan>,
    (start_file, start_pos, gtid): (String, u64, String),
    backup_end: Option<SystemTime>,
    target: SystemTime,
) -> Result<Plan, Error> {
    let s = time::unix_floor(target);
    let shown = time::rfc3339(target);
    let first = &scans[0];
    // Inside the backup: nothing stamped in the instant's second or after it.
    let in_backup = first.commits.iter().filter(|c| c.end <= start_pos);
    if let Some(c) = in_backup.clone().find(|c| i64::from(c.time) >= s) {
        return Err(Error::Permanent(format!(
            "the restore point {shown} is before the backup's end: the backup {} holds the \
             commit at {} (its position is {start_file}:{start_pos}); use an older backup",
            backup.display(),
            Point::new(first, c.at, c.time).show()
        )));
    }
    // The binlogs before the backup's are not read (they may be gone): the first stamped event
    // of its binlog, written when that file was begun, bounds their commits. Begun in the
    // instant's second or after it, the file before it may hold commits after the instant,
    // and the backup holds them.
    if let Some((at, t)) = first.first_event
        && at < start_pos
        && i64::from(t) >= s
    {
        return Err(Error::Permanent(format!(
            "the restore point {shown} may be before the backup's end: the backup {} is at \
             {start_file}:{start_pos}, a binlog begun at {} (after the restore point), so \
             commits of the binlog before it, after the restore point, may be in the backup; \
             use an older backup",
            backup.display(),
            Point::new(first, at, t).show()
        )));
    }
    let last_in_backup = in_backup.clone().next_back().map(|c| Point::new(first, c.at, c.time));

    // After the backup's position: the last commit before the instant's second, the first one
    // at or after it.
    let mut last: Option<(usize, Commit)> = None;
    let mut next: Option<(usize, Commit)> = None;
    'files: for (i, scan) in scans.iter().enumerate() {
        for c in &scan.commits {
            if i == 0 && c.end <= start_pos {
                continue;
            }
            if i64::from(c.time) >= s {
                next = Some((i, *c));
                break 'files;
            }
            last = Some((i, *c));
        }
    }
    if let Some((i, c)) = next
        && i64::from(c.time) == s
    {
        let seconds: std::collections::BTreeSet<i64> =
            scans.iter().flat_map(|sc| sc.commits.iter().map(|c| i64::from(c.time))).collect();
        let mut before = s - 1;
        while seconds.contains(&before) {
            before -= 1;
        }
        let mut after = s + 1;
        while seconds.contains(&after) {
            after += 1;
        }
        return Err(Error::Permanent(format!(
            "the restore point {shown} is inside the second {} that has commits (the first at \
             {}); binlog times are whole seconds, so they could be on either side of it and \
             the instant is not guessed. The nearest seconds without commits: {} and {}",
            second(s),
            Point::new(&scans[i], c.at, c.time).show(),
            second(before),
            second(after)
        )));
    }
    let next = match next {
        Some((i, c)) => (Point::new(&scans[i], c.at, c.time), "commit"),
        None => {
            // No commit after the instant: some event must prove the binlogs go on past it.
            let lastf = &scans[scans.len() - 1];
            match lastf.last_event {
                Some((at, t)) if i64::from(t) > s => (Point::new(lastf, at, t), "event"),
                ev => {
                    let end = ev.map_or_else(
                        || format!("{} (no stamped event)", file_name(&lastf.path)),
                        |(at, t)| Point::new(lastf, at, t).show(),
                    );
                    return Err(Error::Permanent(format!(
                        "binlogs end at {end} before the restore point {shown}; cannot prove \
                         nothing was committed between (copy newer binlogs, or FLUSH BINARY \
                         LOGS on the source once the instant has passed)"
                    )));
                }
            }
        }
    };
    // The backup's own end, when no replayed commit proves its consistent point earlier.
    if last.is_none()
        && let Some(end) = backup_end
        && time::unix_floor(end) >= s
    {
        return Err(Error::Permanent(format!(
            "the restore point {shown} is not after the backup's end: {} says it ended at {} \
             (whole seconds) and no binlog commit after its position {start_file}:{start_pos} \
             proves its consistent point earlier; use an older backup",
            backup.display(),
            time::rfc3339(end)
        )));
    }
    let (replay, replayed_bytes, last) = match last {
        None => (Vec::new(), 0, None),
        Some((k, c)) => {
            let mut bytes = 0;
            for (i, scan) in scans.iter().enumerate().take(k + 1) {
                let from = if i == 0 { start_pos } else { 4 };
                let to = if i == k { c.end } else { scan.len };
                bytes += to.saturating_sub(from);
            }
            let replay = scans.iter().take(k + 1).map(|s| s.path.clone()).collect();
            (replay, bytes, Some((Point::new(&scans[k], c.at, c.time), c.end)))
        }
    };
    Ok(Plan(Box::new(Planned {
        backup: backup.to_path_buf(),
        start_file,
        start_pos,
        gtid,
        backup_end,
        replay,
        last,
        last_in_backup,
        next,
        replayed_bytes,
    })))
}

/// How a scratch server is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A private socket only, no grants: the binlog replay.
    Replay,
    /// 127.0.0.1 and its port, the backup's grants.
    Serve,
}

/// `REWIND_MARIADBD`, else `/usr/sbin/mariadbd` (Debian), else `mariadbd` on `PATH`.
pub(crate) fn mariadbd() -> PathBuf {
    if let Some(p) = std::env::var_os("REWIND_MARIADBD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/sbin/mariadbd");
    if debian.exists() { debian.to_path_buf() } else { PathBuf::from("mariadbd") }
}

/// One `mariadbd` to start, detached: it outlives rewind.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub data_dir: &'a Path,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub log: &'a Path,
    pub user: &'a RunAs,
    pub args: Vec<String>,
}

impl Launch<'_> {
    /// Starts the server in a session of its own (`setsid`, which `exec`s it in place: the
    /// child's pid is the server's), from its data directory, without rewind's `REWIND_*`
    /// environment, and waits until it accepts connections (its log says `ready for
    /// connections` and the socket or `port` answers). Returns its pid.
    ///
    /// The pid file is written at once (the server writes the same pid into it later, once it
    /// listens), so a recovery stopped while the server starts still finds and stops it.
    pub(crate) async fn start(&self, port: Option<u16>) -> Result<Running, Error> {
        let sock = self.socket.as_os_str().len();
        if sock > 107 {
            return Err(Error::Permanent(format!(
                "the socket path {} is {sock} bytes, more than a unix socket allows (107): \
                 use a shorter `into`",
                self.socket.display()
            )));
        }
        let log_from = std::fs::metadata(self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = std::process::Command::new("setsid");
        cmd.arg(mariadbd()).args([
            "--no-defaults".to_string(),
            format!("--datadir={}", self.data_dir.display()),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", self.pid_file.display()),
            format!("--log-error={}", self.log.display()),
            format!("--user={}", self.user.name),
        ]);
        cmd.args(&self.args).current_dir(self.data_dir);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REWIND_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child =
            cmd.spawn().map_err(|e| Error::Permanent(format!("cannot start `{cmd:?}`: {e}")))?;
        let pid = child.id();
        std::fs::write(&self.pid_file, format!("{pid}\n"))
            .map_err(|e| Error::io(format!("cannot write {}", self.pid_file.display()), e))?;
        self.user.own(&self.pid_file)?;
        // Not killed with rewind, but reaped while rewind lives.
        std::thread::spawn(move || child.wait());
        let running = Running { pid, data_dir: self.data_dir.to_path_buf(), armed: true };
        self.wait_ready(pid, log_from, port).await?;
        Ok(running)
    }

    async fn wait_ready(&self, pid: u32, log_from: u64, port: Option<u16>) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let log = proc::read_from(self.log, log_from);
            let alive = proc::server_alive(pid, self.data_dir);
            if alive && log.contains("ready for connections") && self.answers(port) {
                return Ok(());
            }
            if !alive || log.contains("[ERROR] Aborting") {
                let kind = if log.contains("Address already in use") {
                    Error::Transient
                } else {
                    Error::Permanent
                };
                return Err(kind(format!(
                    "mariadbd in {} did not start: {}",
                    self.data_dir.display(),
                    proc::tail(&log, 2000)
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Transient(format!(
                    "mariadbd in {} did not accept connections within {}s: {}",
                    self.data_dir.display(),
                    START_TIMEOUT.as_secs(),
                    proc::tail(&log, 2000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn answers(&self, port: Option<u16>) -> bool {
        match port {
            Some(p) => std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                Duration::from_secs(1),
            )
            .is_ok(),
            None => std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
        }
    }
}

/// A server started by [`Launch::start`]: killed (SIGKILL) when dropped unless [`Running::keep`]
/// was called. A recovery stopped or failed halfway leaves nothing worth a clean shutdown (its
/// instance is replaced), and `mariadbd` ignores SIGTERM while it starts.
#[derive(Debug)]
pub(crate) struct Running {
    pid: u32,
    data_dir: PathBuf,
    armed: bool,
}

impl Running {
    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Leaves it running (detached from rewind); returns its pid.
    pub(crate) fn keep(mut self) -> u32 {
        self.armed = false;
        self.pid
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed && proc::server_alive(self.pid, &self.data_dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                Signal::SIGKILL,
            );
        }
    }
}

/// The longest path a unix socket takes (`sun_path`, less its terminating NUL).
const SOCKET_MAX: usize = 107;

/// Where a scratch server's socket `name` goes: `run/` in its scratch directory, or, when that
/// path is too long for a unix socket (a deep `into`), a private directory of the server's user
/// in the system's temporary directory, named after the scratch directory
/// ([`outside_socket_dir`]), 0700, refused if anything else holds that name.
fn socket_path(ctx: &Ctx<'_>, name: &str) -> Result<PathBuf, Error> {
    let inside = ctx.run_dir.join(name);
    if inside.as_os_str().len() <= SOCKET_MAX {
        return Ok(inside);
    }
    let dir = outside_socket_dir(&ctx.into);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            if !m.is_dir() || m.uid() != ctx.user.uid || m.mode() & 0o077 != 0 {
                return Err(Error::Permanent(format!(
                    "{} (the socket directory of {}, whose own path is too long for a socket) exists and is not a private directory of `{}`",
                    dir.display(),
                    ctx.into.display(),
                    ctx.user.name
                )));
            }
        }
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            ctx.user.own(&dir)?;
        }
    }
    Ok(dir.join(name))
}

/// The private socket directory of the scratch instance in `into` when `into/run` is too deep
/// for a socket: `$TMPDIR/rewind-<64-bit FNV-1a of the path, hex>`. Removed with the instance.
pub fn outside_socket_dir(into: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in into.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("rewind-{h:016x}"))
}

fn launch<'a>(ctx: &'a Ctx<'_>, mode: Mode) -> Result<Launch<'a>, Error> {
    let mut args = vec![
        "--skip-log-bin".to_string(),
        "--skip-slave-start".to_string(),
        format!("--server-id={}", u32::from(ctx.port) + 100_000),
        format!("--tmpdir={}", ctx.run_dir.display()),
    ];
    let socket = match mode {
        Mode::Replay => {
            args.extend(["--skip-networking".into(), "--skip-grant-tables".into()]);
            socket_path(ctx, "replay.sock")?
        }
        Mode::Serve => {
            args.extend([format!("--port={}", ctx.port), "--bind-address=127.0.0.1".into()]);
            socket_path(ctx, "mariadbd.sock")?
        }
    };
    Ok(Launch {
        data_dir: &ctx.data_dir,
        socket,
        pid_file: ctx.run_dir.join(PID_FILE),
        log: &ctx.log,
        user: &ctx.user,
        args,
    })
}

/// Restores and recovers into `ctx.into`, judges where the server stopped.
pub(crate) async fn restore(ctx: &Ctx<'_>, Plan(plan): Plan) -> Result<Recovered, Error> {
    // The backup, copied and prepared as the server's user.
    std::fs::create_dir_all(&ctx.data_dir)
        .map_err(|e| Error::io(format!("cannot create {}", ctx.data_dir.display()), e))?;
    Tool::new("cp")
        .envs(&ctx.req.tool_env)
        .arg("-a")
        .arg("--reflink=auto")
        .arg(plan.backup.join("."))
        .arg(&ctx.data_dir)
        .run(Duration::from_secs(24 * 3600))
        .await?;
    ctx.user.own(&ctx.data_dir)?;
    let prepare = ctx
        .tool("mariadb-backup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", ctx.data_dir.display()));
    prepare.run_judged(Duration::from_secs(24 * 3600), Error::Permanent).await?;

    let mut evidence = vec![format!(
        "backup {} at {}:{}{}{}",
        plan.backup.display(),
        plan.start_file,
        plan.start_pos,
        if plan.gtid.is_empty() { String::new() } else { format!(" (GTID {})", plan.gtid) },
        plan.backup_end.map(|t| format!(", ended {}", time::rfc3339(t))).unwrap_or_default()
    )];
    if let Some((last, end)) = &plan.last {
        let server = launch(ctx, Mode::Replay)?.start(None).await?;
        replay(ctx, &plan, *end).await?;
        proc::stop_server(server.pid(), &ctx.data_dir, Signal::SIGTERM, STOP_GRACE).await?;
        let stamp = engine_stamp(ctx, &plan.replay[plan.replay.len() - 1], last.at, *end).await?;
        evidence.push(format!(
            "replayed {}:{} to {}:{} ({} bytes), mariadb client exit 0",
            plan.start_file, plan.start_pos, last.file, end, plan.replayed_bytes
        ));
        evidence.push(format!(
            "last applied commit {} <= restore point {} (mariadb-binlog: {stamp})",
            last.show(),
            time::rfc3339(ctx.req.target)
        ));
    } else {
        evidence.push(format!(
            "no commit after the backup's position at or before the restore point {}: nothing \
             replayed",
            time::rfc3339(ctx.req.target)
        ));
    }
    evidence.push(format!(
        "next {} {} > restore point {}",
        plan.next.1,
        plan.next.0.show(),
        time::rfc3339(ctx.req.target)
    ));
    let recovered_to = match (&plan.last, plan.backup_end, &plan.last_in_backup) {
        (Some((p, _)), _, _) => time::from_unix(p.time),
        (None, Some(end), _) => end,
        (None, None, Some(p)) => time::from_unix(p.time),
        (None, None, None) => std::fs::metadata(plan.backup.join(BINLOG_INFO[1]))
            .or_else(|_| std::fs::metadata(plan.backup.join(BINLOG_INFO[0])))
            .and_then(|m| m.modified())
            .map_err(|e| Error::io("cannot tell when the backup ended", e))?,
    };
    launch(ctx, Mode::Serve)?.start(Some(ctx.port)).await?.keep();
    Ok(Recovered {
        host: "127.0.0.1".into(),
        port: ctx.port,
        url: format!("mysql://root@127.0.0.1:{}/", ctx.port),
        data_dir: ctx.data_dir.clone(),
        recovered_to,
        evidence,
        replayed_bytes: plan.replayed_bytes,
        recovery_s: 0.0,
        reused: false,
    })
}

/// `mariadb-binlog --start-position=POS --stop-position=END FILES… | mariadb --binary-mode`,
/// onto the replay server's socket; both must exit 0.
async fn replay(ctx: &Ctx<'_>, plan: &Planned, end: u64) -> Result<(), Error> {
    let socket = socket_path(ctx, "replay.sock")?;
    let reader = Tool::new("mariadb-binlog")
        .envs(&ctx.req.tool_env)
        .envs(&[("TZ".into(), "UTC".into())])
        .arg(format!("--start-position={}", plan.start_pos))
        .arg(format!("--stop-position={end}"))
        .args(&plan.replay);
    let client = Tool::new("mariadb").envs(&ctx.req.tool_env).args([
        "--no-defaults".to_string(),
        format!("--socket={}", socket.display()),
        "--user=root".into(),
        "--binary-mode".into(),
        "--batch".into(),
    ]);
    let mut r = reader.command();
    r.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut reading = r
        .spawn()
        .map_err(|e| Error::Permanent(format!("cannot start `{}`: {e}", reader.display())))?;
    let pipe: Stdio = reading
        .stdout
        .take()
        .ok_or_else(|| Error::Transient("mariadb-binlog: no stdout".into()))?
        .try_into()
        .map_err(|e| Error::io("mariadb-binlog: cannot pipe its output", e))?;
    let mut c = client.command();
    c.stdin(pipe).stdout(Stdio::null()).stderr(Stdio::piped());
    let applying = c
        .spawn()
        .map_err(|e| Error::Permanent(format!("cannot start `{}`: {e}", client.display())))?;
    let (read, applied) = tokio::join!(reading.wait_with_output(), applying.wait_with_output());
    let read = read.map_err(|e| Error::io(format!("`{}`", reader.display()), e))?;
    let applied = applied.map_err(|e| Error::io(format!("`{}`", client.display()), e))?;
    if !applied.status.success() {
        return Err(Error::Permanent(format!(
            "the binlog replay failed: `{}` ({}): {}; fed by `{}`: {}; server log: {}",
            client.display(),
            applied.status,
            proc::tail(&String::from_utf8_lossy(&applied.stderr), 1500),
            reader.display(),
            proc::tail(&String::from_utf8_lossy(&read.stderr), 500),
            proc::tail(&ctx.log_tail(), 800)
        )));
    }
    if !read.status.success() {
        return Err(Error::Permanent(format!(
            "the binlog replay failed: `{}` ({}): {}",
            reader.display(),
            read.status,
            proc::tail(&String::from_utf8_lossy(&read.stderr), 1500)
        )));
    }
    Ok(())
}

/// The engine's own words for the event at `at..end` of `file`: `mariadb-binlog` prints its
/// header (`#261205 15:14:17 server id 1  end_log_pos 1026 … Xid = 98`); its end must be `end`.
async fn engine_stamp(ctx: &Ctx<'_>, file: &Path, at: u64, end: u64) -> Result<String, Error> {
    let out = Tool::new("mariadb-binlog")
        .envs(&ctx.req.tool_env)
        .envs(&[("TZ".into(), "UTC".into())])
        .arg(format!("--start-position={at}"))
        .arg(format!("--stop-position={end}"))
        .arg(file)
        .run(Duration::from_secs(600))
        .await?;
    let want = format!("end_log_pos {end} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with('#') && l.contains(&want))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .ok_or_else(|| {
            Error::Permanent(format!(
                "mariadb-binlog shows no event ending at {}:{end} where rewind read the last \
                 commit: {}",
                file.display(),
                proc::tail(&out.stdout, 1000)
            ))
        })
}

/// Starts a ready instance again on `ctx.port`.
pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<(), Error> {
    launch(ctx, Mode::Serve)?.start(Some(ctx.port)).await.map(|s| {
        s.keep();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(name: &str, len: u64, commits: &[(u64, u32)], last: Option<(u64, u32)>) -> Scan {
        Scan {
            path: PathBuf::from(format!("/b/{name}")),
            len,
            commits: commits.iter().map(|&(at, time)| Commit { at, end: at + 10, time }).collect(),
            first_event: commits.first().map(|&(at, time)| (at, time)).or(last),
            last_event: last,
            closed: false,
        }
    }

    fn at(secs: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    fn info() -> (String, u64, String) {
        ("binlog.000001".into(), 110, "0-1-3".into())
    }

    fn one() -> Vec<Scan> {
        vec![
            scan("binlog.000001", 200, &[(100, 1000), (150, 1003)], Some((150, 1003))),
            scan("binlog.000002", 300, &[(50, 1005), (100, 1005), (200, 1008)], Some((250, 1010))),
        ]
    }

    fn refused(r: Result<Plan, Error>) -> String {
        match r {
            Err(Error::Permanent(m)) => m,
            other => panic!("expected a permanent refusal, got {other:?}"),
        }
    }

    #[test]
    fn stops_after_the_last_commit_before_the_instant() {
        let p = decide(Path::new("/bk"), one(), info(), None, at(1006, 500)).expect("plan").0;
        let (last, end) = p.last.expect("a commit to replay");
        assert_eq!((last.file.as_str(), last.at, end), ("binlog.000002", 100, 110));
        assert_eq!(p.next.0.at, 200);
        assert_eq!(p.replay.len(), 2);
        assert_eq!(p.replayed_bytes, (200 - 110) + (110 - 4));
        assert_eq!(p.last_in_backup.map(|p| p.time), Some(1000));
    }

    #[test]
    fn nothing_to_replay_before_the_first_commit_after_the_backup() {
        let p = decide(Path::new("/bk"), one(), info(), Some(at(1001, 0)), at(1002, 0))
            .expect("plan")
            .0;
        assert!(p.last.is_none() && p.replay.is_empty() && p.replayed_bytes == 0);
        assert_eq!((p.next.0.time, p.next.1), (1003, "commit"));
    }

    #[test]
    fn a_backup_in_a_binlog_begun_after_the_instant_is_refused() {
        // The backup's binlog was begun (rotated) at 1004 and holds no commit before the
        // backup's position; its end is not known. Commits of the file before it (not in the
        // binlog directory) may fall between the instant and 1004, and are in the backup.
        let mut first = scan("binlog.000005", 300, &[(200, 1006)], Some((200, 1006)));
        first.first_event = Some((4, 1004));
        let info = ("binlog.000005".to_string(), 150, String::new());
        let m = refused(decide(
            Path::new("/bk"),
            vec![first.clone()],
            info.clone(),
            None,
            at(1002, 500),
        ));
        assert!(m.contains("before the backup's end"), "{m}");
        // Begun before the instant's second: every earlier commit is before it too.
        first.first_event = Some((4, 1001));
        let p = decide(Path::new("/bk"), vec![first], info, None, at(1002, 500)).expect("plan").0;
        assert!(p.last.is_none());
    }

    #[test]
    fn refusals() {
        let m = refused(decide(Path::new("/bk"), one(), info(), None, at(1005, 200)));
        assert!(m.contains("inside the second"), "{m}");
        assert!(m.contains("1970-01-01T00:16:44Z and 1970-01-01T00:16:46Z"), "{m}");
        let m = refused(decide(Path::new("/bk"), one(), info(), None, at(999, 0)));
        assert!(m.contains("before the backup's end"), "{m}");
        let m = refused(decide(Path::new("/bk"), one(), info(), None, at(1010, 100)));
        assert!(m.contains("binlogs end at binlog.000002:250"), "{m}");
        let m = refused(decide(Path::new("/bk"), one(), info(), Some(at(1002, 0)), at(1002, 400)));
        assert!(m.contains("not after the backup's end"), "{m}");
        // After the last commit but before a later stamped event: proven.
        let p = decide(Path::new("/bk"), one(), info(), None, at(1009, 500)).expect("plan").0;
        assert_eq!(p.next, (Point { file: "binlog.000002".into(), at: 250, time: 1010 }, "event"));
        assert_eq!(p.last.map(|(l, _)| l.time), Some(1008));
    }

    /// For every bound on a 100 ms grid: the instant `reach` gives is one the pre-check
    /// accepts, and the pre-check accepts no later instant at or before the bound.
    #[test]
    fn reach_agrees_with_the_pre_check() {
        let mut begun_late = scan("binlog.000005", 300, &[(200, 1006)], Some((200, 1006)));
        begun_late.first_event = Some((4, 1004));
        let cases = [
            (one(), info(), None),
            (one(), info(), Some(at(1001, 0))),
            (vec![begun_late], ("binlog.000005".to_string(), 150, String::new()), None),
        ];
        for (scans, start, backup_end) in cases {
            let loaded = Loaded { start: start.clone(), backup_end, scans: scans.clone() };
            let r = reach(&loaded).into_reach();
            let ok = |t: SystemTime| {
                decide(Path::new("/bk"), scans.clone(), start.clone(), backup_end, t).is_ok()
            };
            let grid = |from: u64, to: u64| (from..=to).step_by(100).map(|ms| at(0, ms));
            for b in (995_000..1_012_000).step_by(100) {
                let bound = at(0, b);
                match r.newest_at_or_before(Some(bound)) {
                    Some(t) => {
                        assert!(t <= bound, "{t:?} after the bound {bound:?}");
                        assert!(ok(t), "reach gave {t:?} (bound {b} ms), the pre-check refuses it");
                        let t_ms = u64::try_from(
                            t.duration_since(SystemTime::UNIX_EPOCH).expect("epoch").as_millis(),
                        )
                        .expect("ms");
                        for later in grid(t_ms.div_ceil(100) * 100, b).filter(|l| *l > t) {
                            assert!(!ok(later), "{later:?} is accepted and later than {t:?}");
                        }
                    }
                    None => {
                        for t in grid(995_000, b) {
                            assert!(!ok(t), "reach found nothing by {b} ms, {t:?} is accepted");
                        }
                    }
                }
            }
        }
    }
}
