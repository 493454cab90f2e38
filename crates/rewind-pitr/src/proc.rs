//! The tools a recovery runs (`pg_ctl`, `pgbackrest`, `mariadb-backup`, `mariadb-binlog`, …) and
//! the servers it stops.
//!
//! A tool runs in a process group of its own, as the server's user when that is not the current
//! one (`runuser -u USER --`, which needs root), with the request's `tool_env`, and is killed
//! (its whole group) when its future is dropped. Its stdout and stderr are kept whole (tools here
//! print little) for the error that names it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, Uid, User};

use crate::Error;

/// The OS user a server and its tools run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Whether it is another user than this process's (tools then go through `runuser`).
    pub switch: bool,
}

impl RunAs {
    /// `name`, or the engine's default when running as root, or the current user.
    pub fn resolve(name: Option<&str>, default_for_root: &str) -> Result<Self, Error> {
        let me = Uid::effective();
        let wanted = match name {
            Some(n) => n.to_string(),
            None if me.is_root() => default_for_root.to_string(),
            None => {
                let u = User::from_uid(me)
                    .map_err(|e| Error::Transient(format!("cannot look up uid {me}: {e}")))?
                    .ok_or_else(|| Error::Permanent(format!("uid {me} has no user name")))?;
                u.name
            }
        };
        let user = User::from_name(&wanted)
            .map_err(|e| Error::Transient(format!("cannot look up user `{wanted}`: {e}")))?
            .ok_or_else(|| {
                Error::Permanent(format!(
                    "user `{wanted}` does not exist on this host (the server runs as it: set `run_as`)"
                ))
            })?;
        if user.uid.is_root() {
            return Err(Error::Permanent(format!(
                "database servers refuse to run as root; `run_as` names `{wanted}` (uid 0)"
            )));
        }
        let switch = user.uid != me;
        if switch && !me.is_root() {
            return Err(Error::Permanent(format!(
                "the server would run as `{wanted}`, which needs root; rewind runs as uid {me}"
            )));
        }
        Ok(Self { name: wanted, uid: user.uid.as_raw(), gid: user.gid.as_raw(), switch })
    }

    /// Hands `path` (and everything under it) to the user, when it is another user.
    pub fn own(&self, path: &Path) -> Result<(), Error> {
        if !self.switch {
            return Ok(());
        }
        chown_tree(path, self.uid, self.gid)
            .map_err(|e| Error::io(format!("cannot hand {} to `{}`", path.display(), self.name), e))
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A tool to run.
#[derive(Debug)]
pub struct Tool {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    env_removed: Vec<String>,
    user: Option<RunAs>,
    cwd: Option<PathBuf>,
    stdin: Option<PathBuf>,
}

/// What a tool printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Tool {
    /// `program` (a name looked up in `PATH`, or a path).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            user: None,
            cwd: None,
            stdin: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Adds environment variables.
    pub fn envs(mut self, env: &[(String, String)]) -> Self {
        self.env.extend(env.iter().cloned());
        self
    }

    /// Removes a variable from the environment it inherits (a server started through it must
    /// not carry `REWIND_RUN_ID`: `resume` would take it for a tool that outlived its attempt).
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env_removed.push(key);
        self
    }

    /// Runs it as `user` (through `runuser` when that is another user).
    pub fn user(mut self, user: &RunAs) -> Self {
        self.user = Some(user.clone());
        self
    }

    /// Its working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Feeds it a file on stdin.
    pub fn stdin_file(mut self, f: impl Into<PathBuf>) -> Self {
        self.stdin = Some(f.into());
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// The `tokio` command it is, not started (its own process group, killed on drop).
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = match &self.user {
            Some(u) if u.switch => {
                let mut c = tokio::process::Command::new("runuser");
                c.arg("-u").arg(&u.name).arg("--").arg(&self.program);
                c
            }
            _ => tokio::process::Command::new(&self.program),
        };
        cmd.args(&self.args);
        for k in &self.env_removed {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.process_group(0).kill_on_drop(true);
        cmd
    }

    /// Runs it to the end, within `timeout`. A failure to start is transient (reported with the
    /// command line); the exit status is the caller's to judge.
    pub async fn output(&self, timeout: Duration) -> Result<Output, Error> {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        match &self.stdin {
            Some(f) => {
                let file = std::fs::File::open(f)
                    .map_err(|e| Error::io(format!("cannot open {}", f.display()), e))?;
                cmd.stdin(Stdio::from(file));
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        let child = cmd.spawn().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (is it installed? see README: apt-get install postgresql pgbackrest mariadb-server mariadb-backup)"
            } else {
                ""
            };
            Error::Permanent(format!("cannot start `{}`: {e}{hint}", self.display()))
        })?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let guard = GroupGuard(pgid);
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| Error::io(format!("`{}`", self.display()), e))?,
            Err(_) => {
                return Err(Error::Transient(format!(
                    "`{}` did not finish within {}s",
                    self.display(),
                    timeout.as_secs()
                )));
            }
        };
        std::mem::forget(guard);
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs it and requires exit 0; otherwise a transient error naming the command with the
    /// end of what it printed.
    pub async fn run(&self, timeout: Duration) -> Result<Output, Error> {
        self.run_judged(timeout, Error::Transient).await
    }

    /// Runs it and requires exit 0; otherwise `kind` (a permanent or transient error) naming
    /// the command with the end of what it printed.
    pub async fn run_judged(
        &self,
        timeout: Duration,
        kind: fn(String) -> Error,
    ) -> Result<Output, Error> {
        let out = self.output(timeout).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(kind(format!(
                "`{}` failed ({}): {}",
                self.display(),
                out.status,
                tail(&format!("{}{}", out.stderr, out.stdout), 1500)
            )))
        }
    }
}

/// Kills the group if the tool's future is dropped (stopped, timed out) before it ended.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = killpg(p, Signal::SIGKILL);
        }
    }
}

/// The last `max` bytes of `s` (on a char boundary), trimmed.
pub fn tail(s: &str, max: usize) -> &str {
    let s = s.trim();
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A free TCP port on 127.0.0.1 (bound and released: the caller retries if it is taken by the
/// time the server binds it).
pub fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::io("cannot find a free port", e))?;
    let port = l.local_addr().map_err(|e| Error::io("cannot find a free port", e))?.port();
    Ok(port)
}

/// Whether `pid` is alive and is a server whose working directory is `data_dir` (servers
/// `chdir` to their data directory; a recycled pid is not mistaken for the server).
pub fn server_alive(pid: u32, data_dir: &Path) -> bool {
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let want = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    cwd == want
}

/// What `path` holds from byte `from` on (lossy; empty when it cannot be read): a server's log
/// since a start.
pub fn read_from(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The pid on the first line of a pid file (`postmaster.pid`, `mariadbd.pid`), if readable.
pub fn read_pid(file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Creates `path` (and its parents) for `user`: mode 0755, so other users (the scratch
/// instances, which read backups) can read it; handed to `user` when that is another user.
pub fn mkdir_for(path: &Path, user: &RunAs) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("cannot chmod {}", path.display()), e))?;
    user.own(path)
}

/// Processes whose working directory is `dir` (a server and its children `chdir` there).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == want))
        .collect()
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The servers running in `dir`: processes there whose parent is not (a postmaster, not its
/// backends). What stops a server whose pid file was not written yet.
pub fn servers_in(dir: &Path) -> Vec<u32> {
    let all = processes_in(dir);
    all.iter().copied().filter(|p| parent_of(*p).is_none_or(|pp| !all.contains(&pp))).collect()
}

/// Stops the server `pid` running in `data_dir`: `first` (PostgreSQL: SIGINT, fast shutdown;
/// MariaDB: SIGTERM), then SIGKILL after `grace`; waits until it is gone.
pub async fn stop_server(
    pid: u32,
    data_dir: &Path,
    first: Signal,
    grace: Duration,
) -> Result<(), Error> {
    if !server_alive(pid, data_dir) {
        return Ok(());
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, first);
    let deadline = tokio::time::Instant::now() + grace;
    while server_alive(pid, data_dir) {
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(p, Signal::SIGKILL);
            // Children of a postmaster exit once it is gone.
            for _ in 0..100 {
                if !server_alive(pid, data_dir) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Err(Error::Transient(format!(
                "server pid {pid} in {} did not stop after SIGKILL",
                data_dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
