//! Every process rewind starts for a run or its preflight: a leader in a process group of its
//! own, registered with the watchdog that stops it if rewind dies.
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
//! it never waits for any child (`waitpid(-1)`). A [`Group`] dropped before its leader ended (the
//! attempt's future was dropped) sends SIGKILL to the group at once, leader not yet reaped.
//!
//! **The watchdog.** One per rewind process: a tiny `/bin/sh` script ([`WATCHDOG`]), started on
//! first use, in a process group of its own (so a Ctrl-C meant for rewind does not reach it), its
//! stdin a pipe whose only write end rewind keeps. A keeper thread writes `+ PGID` when a group
//! starts and `- PGID` once its leader was reaped:
//!
//! - the write end is close-on-exec (std makes every pipe with `O_CLOEXEC`), so no other child
//!   holds it; it closes exactly when rewind dies, by any signal, SIGKILL included (the kernel
//!   closes a dead process's files), or exits;
//! - on end of file the watchdog sends SIGTERM to every group still registered, waits a second,
//!   and sends SIGKILL to those; with none registered it just exits;
//! - it ignores SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1 and SIGUSR2;
//! - if it dies (someone killed it), the keeper's next write fails: the keeper starts another and
//!   registers every live group with it again.
//!
//! A group is registered before its leader can have been reaped, and unregistered only after:
//! so a registered id is always the step's group, but for the moment between the reap and the
//! `-` line. An id could then name another group only if, in that moment, rewind died and the
//! kernel handed the same pid to a new process that made itself a group leader: with pids
//! handed out in sequence, that needs the whole pid range to wrap within microseconds. (One
//! watchdog per attempt, inside the step's group, would close even that gap, at the price of a
//! second process per attempt: about 0.3 ms of every dependency hop on this machine.)
//!
//! What the watchdog cannot catch: a process that left the group (`setsid`, `setpgid`), and a step
//! that rewind died before registering (microseconds after its start). `rewind resume` looks for
//! those by their environment (`REWIND_RUN_ID`, `REWIND_INSTANCE`) before it starts an instance
//! again (rewind-runtime's `orphans.rs`).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The watchdog, run as `/bin/sh -c WATCHDOG rewind-watchdog`, its stdin the keeper's pipe. It
/// reads `+ PGID` and `- PGID` lines; ids are numbers rewind writes, never text from a step. See
/// the module documentation.
pub const WATCHDOG: &str = r#"trap '' HUP INT QUIT TERM PIPE ALRM USR1 USR2
groups=' '
while read -r op pg; do
  case "$op" in
    +) groups="$groups$pg " ;;
    -) case "$groups" in *" $pg "*) groups="${groups%%" $pg "*} ${groups#*" $pg "}" ;; esac ;;
  esac
done
[ "$groups" = ' ' ] && exit 0
for pg in $groups; do kill -s TERM -- "-$pg" 2>/dev/null; done
sleep 1
for pg in $groups; do kill -s KILL -- "-$pg" 2>/dev/null; done
exit 0
"#;

/// How often [`Group::terminate`] looks at the leader while it waits for it to exit.
const POLL: Duration = Duration::from_millis(10);

/// Why a group could not be started.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The program itself could not start (missing, not executable): another attempt will not
    /// help.
    Program(io::Error),
    /// The watchdog could not start (the program was stopped again): perhaps a passing
    /// shortage.
    Watchdog(String),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Program(e) => write!(f, "{e}"),
            Self::Watchdog(e) => write!(
                f,
                "the watchdog (/bin/sh, which stops the steps if rewind dies) could not start: {e}; the step was stopped"
            ),
        }
    }
}

/// A started leader in its own process group, registered with the watchdog.
#[derive(Debug)]
pub(crate) struct Group {
    child: Child,
    pgid: Pid,
    /// The leader's status once reaped: from then on the group is never signalled.
    reaped: Option<ExitStatus>,
}

impl Group {
    /// Starts `cmd` as the leader of a new process group and registers the group with the
    /// watchdog.
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Self, SpawnError> {
        let keeper = keeper().map_err(|e| SpawnError::Watchdog(e.clone()))?;
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn().map_err(SpawnError::Program)?;
        let Some(pgid) = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw) else {
            // Not reachable: a child that was never polled is not reaped. Dropping it kills it.
            return Err(SpawnError::Program(io::Error::other("the process has no id")));
        };
        keeper.send(Line::Add(pgid.as_raw()));
        Ok(Self { child, pgid, reaped: None })
    }

    /// The leader, to take its pipes.
    pub(crate) fn leader(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the leader to exit by itself, reaps it and unregisters the group.
    ///
    /// Cancel-safe (for `select!`): nothing happens unless the leader has exited.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let status = self.child.wait().await?;
        self.reaped(status);
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
        self.reaped(status);
        Ok(status)
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.reaped = Some(status);
        if let Ok(k) = keeper() {
            k.send(Line::Remove(self.pgid.as_raw()));
        }
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
}

impl Drop for Group {
    /// A group dropped before its leader was reaped (the attempt's future was dropped: rewind is
    /// going away) is killed now, while its id is still the step's.
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            if let Ok(k) = keeper() {
                k.send(Line::Remove(self.pgid.as_raw()));
            }
        }
    }
}

/// A line for the watchdog.
#[derive(Clone, Copy, Debug)]
enum Line {
    Add(i32),
    Remove(i32),
}

/// The sending side of the keeper thread, which owns the watchdog.
struct Keeper {
    tx: Sender<Line>,
}

impl Keeper {
    /// Queues a line (never blocks: the channel is unbounded).
    fn send(&self, line: Line) {
        // The keeper thread never ends, so its receiver never goes away.
        let _ = self.tx.send(line);
    }
}

/// Starts the watchdog now if it is not running yet (it blocks while `/bin/sh` starts: call it
/// off the async threads), rather than at the first step; or says why it cannot start.
pub fn ready_watchdog() -> Result<(), String> {
    keeper().map(drop).map_err(Clone::clone)
}

/// The process's keeper, started (with its first watchdog) on first use; or why the watchdog
/// cannot start.
fn keeper() -> Result<&'static Keeper, &'static String> {
    static KEEPER: OnceLock<Result<Keeper, String>> = OnceLock::new();
    KEEPER
        .get_or_init(|| {
            let watchdog = keeper_watchdog().map_err(|e| e.to_string())?;
            let (tx, rx) = channel();
            std::thread::Builder::new()
                .name("rewind-watchdog".into())
                .spawn(move || keep(watchdog, &rx))
                .map_err(|e| format!("cannot start its keeper thread: {e}"))?;
            Ok(Keeper { tx })
        })
        .as_ref()
}

/// The keeper thread: writes each line to the watchdog; if the watchdog died, starts another and
/// registers every live group with it again.
fn keep(mut watchdog: (std::process::Child, ChildStdin), rx: &Receiver<Line>) {
    let mut live = BTreeSet::new();
    while let Ok(line) = rx.recv() {
        let text = match line {
            Line::Add(pg) => {
                live.insert(pg);
                format!("+ {pg}\n")
            }
            Line::Remove(pg) => {
                live.remove(&pg);
                format!("- {pg}\n")
            }
        };
        if watchdog.1.write_all(text.as_bytes()).is_err() {
            let _ = watchdog.0.wait();
            // A new one, told about every group still running. (If none can start, the next
            // line tries again; steps keep running either way, and `resume` checks for them.)
            if let Ok(w) = keeper_watchdog() {
                watchdog = w;
                let all: String = live.iter().map(|pg| format!("+ {pg}\n")).collect();
                let _ = watchdog.1.write_all(all.as_bytes());
            }
        }
        // Reap a watchdog that exited, so none lingers as a zombie.
        let _ = watchdog.0.try_wait();
    }
}

/// The pid of the keeper's watchdog (0 before the first).
static WATCHDOG_PID: AtomicU32 = AtomicU32::new(0);

fn start_watchdog() -> io::Result<(std::process::Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let mut w = std::process::Command::new("/bin/sh");
    w.arg("-c")
        .arg(WATCHDOG)
        .arg("rewind-watchdog")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        // Not a step process: `rewind resume` looks for those by these variables.
        .env_remove("REWIND_RUN_ID")
        .env_remove("REWIND_INSTANCE")
        .process_group(0);
    let mut process = w.spawn()?;
    let stdin = process.stdin.take().ok_or_else(|| io::Error::other("no stdin pipe"))?;
    Ok((process, stdin))
}

/// Starts the keeper's watchdog and returns its pid.
fn keeper_watchdog() -> io::Result<(std::process::Child, ChildStdin)> {
    let w = start_watchdog()?;
    WATCHDOG_PID.store(w.0.id(), Ordering::Relaxed);
    Ok(w)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A process in a group of its own, as a step leader is.
    fn leader() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap()
    }

    /// Waits (up to 20 s) for `child` to end; its signal.
    fn ended(child: &mut std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        for _ in 0..2000 {
            if let Some(s) = child.try_wait().unwrap() {
                return s.signal();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn when_its_pipe_closes_the_watchdog_stops_the_groups_still_registered() {
        let (mut a, mut b) = (leader(), leader());
        let (mut watchdog, mut pipe) = start_watchdog().unwrap();
        writeln!(pipe, "+ {}\n+ {}\n- {}", a.id(), b.id(), b.id()).unwrap();
        drop(pipe); // as when rewind dies
        assert_eq!(ended(&mut a), Some(Signal::SIGTERM as i32), "a was registered");
        assert!(watchdog.wait().unwrap().success());
        assert_eq!(b.try_wait().unwrap(), None, "b was unregistered: left alone");
        b.kill().unwrap();
        b.wait().unwrap();
        // Nothing registered: it exits without signalling anything.
        let (mut watchdog, pipe) = start_watchdog().unwrap();
        drop(pipe);
        assert!(watchdog.wait().unwrap().success());
    }

    #[test]
    fn a_group_that_ignores_sigterm_gets_sigkill() {
        use std::os::unix::process::CommandExt;
        let mut stubborn = std::process::Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .process_group(0)
            .spawn()
            .unwrap();
        let (mut watchdog, mut pipe) = start_watchdog().unwrap();
        writeln!(pipe, "+ {}", stubborn.id()).unwrap();
        drop(pipe);
        assert_eq!(ended(&mut stubborn), Some(Signal::SIGKILL as i32));
        assert!(watchdog.wait().unwrap().success());
    }

    /// The keeper replaces a watchdog that was killed, and tells the new one every live group.
    #[tokio::test]
    async fn a_killed_watchdog_is_replaced() {
        let mut first = Command::new("sleep");
        first.arg("30");
        let mut g1 = Group::spawn(&mut first).unwrap();
        let watchdog = || WATCHDOG_PID.load(Ordering::Relaxed);
        let old = watchdog();
        assert!(old > 0);
        let old_pid = Pid::from_raw(i32::try_from(old).unwrap());
        nix::sys::signal::kill(old_pid, Signal::SIGKILL).unwrap();
        // The next line fails to reach it; a new one takes over.
        let mut second = Command::new("sleep");
        second.arg("30");
        let mut g2 = Group::spawn(&mut second).unwrap();
        let mut now = old;
        for _ in 0..2000 {
            now = watchdog();
            if now != old {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(now, old, "a new watchdog took over");
        // (The replay of both groups to it is what `keep` writes first; it is alive to read it.)
        let alive = std::fs::read_to_string(format!("/proc/{now}/stat")).unwrap();
        assert!(!alive.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'));
        g1.terminate(Duration::from_secs(1)).await.unwrap();
        g2.terminate(Duration::from_secs(1)).await.unwrap();
    }
}
