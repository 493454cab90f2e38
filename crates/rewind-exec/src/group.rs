//! Every process rewind starts for a run or its preflight: a leader in a process group of its
//! own, and a watchdog in that group that stops the group if rewind dies.
//!
//! **Stopping a group.** [`Group::terminate`] sends SIGTERM to the group, watches for the
//! leader's exit *without reaping it* (`waitid` with `WNOWAIT`), sends SIGKILL to the group
//! (whatever ignored SIGTERM), and only then reaps the leader. A group's id is its leader's pid,
//! and Linux hands a pid out again only once nothing uses it as a pid, a process group id or a
//! session id: while the leader is alive or an unreaped zombie, the id cannot name another
//! group. (Signalling the group *after* reaping the leader, as rewind once did, could reach a
//! group that a recycled pid had since founded.) Nothing reaps the leader behind our back:
//! tokio 1.54 reaps a child only when its `wait` future is polled (through a pidfd, or on
//! SIGCHLD, with `waitpid` on that pid), or, once the `Child` is dropped, from its orphan queue;
//! it never waits for any child (`waitpid(-1)`).
//!
//! **The watchdog.** Right after the leader starts, rewind starts a tiny `/bin/sh` script
//! ([`WATCHDOG`]) *inside the leader's group* (setpgid to the leader's pid, which is possible
//! because the leader is not reaped yet), its stdin a pipe whose only write end rewind keeps:
//!
//! - the write end is close-on-exec (std makes every pipe with `O_CLOEXEC`), so no other child
//!   holds it; it closes exactly when rewind closes it or rewind dies, by any signal, SIGKILL
//!   included (the kernel closes a dead process's files);
//! - when the attempt ends, rewind writes `done` (and closes): the watchdog reads it and exits.
//!   Bytes written before a close are read before the end of file, so once `done` is written the
//!   watchdog never signals anything, however late it reads;
//! - on end of file without `done` (rewind died, or dropped the attempt unfinished), it sends
//!   SIGTERM to the group, waits a second, and sends SIGKILL to the group, itself included;
//! - it ignores SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1 and SIGUSR2, so
//!   rewind's own SIGTERM to the group (a timeout, a cancel) or a step's `kill 0` does not end
//!   it early; a SIGKILL to the group ends it with everything else;
//! - it is a member of the group it signals, so while it runs the group's id cannot be reused:
//!   whatever it signals is the step's group, even after the leader was reaped (by rewind, when
//!   the step ended just before rewind died, or by init, after rewind died). This is why `done`
//!   may follow the reap of a leader that exited on its own.
//!
//! What a watchdog cannot catch: a process that left the group (`setsid`, `setpgid`), and a step
//! whose watchdog never started because rewind died in between. `rewind resume` looks for those
//! by their environment (`REWIND_RUN_ID`, `REWIND_INSTANCE`) before it starts an instance again
//! (rewind-runtime's `orphans.rs`).
//!
//! rewind ignores SIGPIPE (as every Rust program does), so writing `done` to a watchdog that was
//! killed is an `EPIPE` error, and ignored.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin, Command};

/// The watchdog, run as `/bin/sh -c WATCHDOG rewind-watchdog PGID` with `PGID` the group it
/// guards (an argument, never spliced into the text). See the module documentation.
pub const WATCHDOG: &str = r#"trap '' HUP INT QUIT TERM PIPE ALRM USR1 USR2
read -r word || word=
[ "$word" = done ] && exit 0
kill -s TERM -- "-$1" 2>/dev/null
sleep 1
kill -s KILL -- "-$1"
"#;

/// How often [`Group::terminate`] looks at the leader while it waits for it to exit.
const POLL: Duration = Duration::from_millis(10);

/// Why a group could not be started.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The program itself could not start (missing, not executable): another attempt will not
    /// help.
    Program(io::Error),
    /// Its watchdog could not start (the program was stopped again): perhaps a passing shortage.
    Watchdog(io::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Program(e) => write!(f, "{e}"),
            Self::Watchdog(e) => write!(
                f,
                "its watchdog (/bin/sh, which stops the step if rewind dies) could not start: {e}; the step was stopped"
            ),
        }
    }
}

/// A started leader in its own process group, with its watchdog.
#[derive(Debug)]
pub(crate) struct Group {
    child: Child,
    pgid: Pid,
    watchdog: Option<Watchdog>,
    /// The leader's status once reaped: from then on the group is never signalled.
    reaped: Option<ExitStatus>,
}

#[derive(Debug)]
struct Watchdog {
    process: Child,
    stdin: ChildStdin,
}

impl Group {
    /// Starts `cmd` as the leader of a new process group (killed if the `Group` is dropped
    /// before it ended), then its watchdog inside that group.
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Self, SpawnError> {
        cmd.process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(SpawnError::Program)?;
        let Some(pgid) = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw) else {
            // Not reachable: a child that was never polled is not reaped. Dropping it kills it.
            return Err(SpawnError::Program(io::Error::other("the process has no id")));
        };
        match watchdog(pgid) {
            Ok(w) => Ok(Self { child, pgid, watchdog: Some(w), reaped: None }),
            Err(e) => {
                // The leader is not reaped: its group id is still its own.
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.start_kill();
                Err(SpawnError::Watchdog(e))
            }
        }
    }

    /// The leader, to take its pipes.
    pub(crate) fn leader(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the leader to exit by itself, reaps it and dismisses the watchdog.
    ///
    /// Cancel-safe (for `select!`): nothing happens unless the leader has exited.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let status = self.child.wait().await?;
        self.reaped = Some(status);
        self.dismiss();
        Ok(status)
    }

    /// Stops the group: SIGTERM, then SIGKILL once the leader has exited or after `grace`,
    /// always before the leader is reaped (see the module documentation). Returns the leader's
    /// status.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.leader_exited()? && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        // Still alive or an unreaped zombie: the group id is the step's.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let status = self.child.wait().await?;
        self.reaped = Some(status);
        // The watchdog was in the group: it is gone too.
        self.dismiss();
        Ok(status)
    }

    /// Whether the leader has exited (it stays a zombie: this does not reap it).
    fn leader_exited(&self) -> io::Result<bool> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        loop {
            return match waitid(Id::Pid(self.pgid), flags) {
                Ok(WaitStatus::StillAlive) => Ok(false),
                Ok(_) => Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => Err(io::Error::from(e)),
            };
        }
    }

    /// Tells the watchdog the attempt is over and lets it go (it exits at once; a task reaps
    /// it).
    fn dismiss(&mut self) {
        let Some(Watchdog { mut process, stdin }) = self.watchdog.take() else { return };
        // Five bytes into an empty pipe: never blocks (and the pipe is non-blocking anyway).
        let _ = nix::unistd::write(&stdin, b"done\n");
        drop(stdin);
        tokio::spawn(async move {
            let _ = process.wait().await;
        });
    }
}

/// Starts the watchdog of group `pgid`, inside it.
fn watchdog(pgid: Pid) -> io::Result<Watchdog> {
    let mut w = Command::new("/bin/sh");
    w.arg("-c")
        .arg(WATCHDOG)
        .arg("rewind-watchdog")
        .arg(pgid.as_raw().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        // Not a step process: `rewind resume` looks for those by these variables.
        .env_remove("REWIND_RUN_ID")
        .env_remove("REWIND_INSTANCE")
        .process_group(pgid.as_raw())
        .kill_on_drop(false);
    let mut process = w.spawn()?;
    let stdin = process.stdin.take().ok_or_else(|| io::Error::other("no stdin pipe"))?;
    Ok(Watchdog { process, stdin })
}
