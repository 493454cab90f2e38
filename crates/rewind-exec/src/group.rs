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
//! - if it dies (someone killed it), the keeper sees it within a second (it checks between
//!   lines), or at its next write, starts another and registers every live group with it again;
//!   if the very first cannot start, the step is refused and the next step tries again.
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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
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
        let keeper = keeper().map_err(SpawnError::Watchdog)?;
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

/// How often the keeper checks, between lines, that its watchdog is alive.
const CHECK: Duration = Duration::from_secs(1);

/// The sending side of a keeper thread, which owns a watchdog, and that watchdog's pid.
#[derive(Clone)]
struct Keeper {
    tx: Sender<Line>,
    /// The current watchdog's pid, as the keeper thread last set it (read by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pid: Arc<AtomicU32>,
}

impl Keeper {
    /// Starts a watchdog (with `start`) and the thread that keeps it; an error if the first
    /// watchdog cannot start. The thread ends when every `Keeper` for it is dropped: the
    /// watchdog's pipe then closes, as when rewind dies.
    fn start(start: fn() -> io::Result<Watchdog>) -> Result<Self, String> {
        let watchdog = start().map_err(|e| e.to_string())?;
        let pid = Arc::new(AtomicU32::new(watchdog.0.id()));
        let (tx, rx) = channel();
        let shown = Arc::clone(&pid);
        std::thread::Builder::new()
            .name("rewind-watchdog".into())
            .spawn(move || keep(watchdog, start, &rx, &shown))
            .map_err(|e| format!("cannot start its keeper thread: {e}"))?;
        Ok(Self { tx, pid })
    }

    /// Queues a line (never blocks: the channel is unbounded).
    fn send(&self, line: Line) {
        // The keeper thread ends only once every sender is gone.
        let _ = self.tx.send(line);
    }
}

/// A watchdog process and the write end of its pipe.
type Watchdog = (std::process::Child, ChildStdin);

/// Starts the watchdog now if it is not running yet (it blocks while `/bin/sh` starts: call it
/// off the async threads), rather than at the first step; or says why it cannot start.
pub fn ready_watchdog() -> Result<(), String> {
    keeper().map(drop)
}

/// The process's keeper, started (with its first watchdog) on first use; or why the watchdog
/// cannot start now (the next call tries again).
fn keeper() -> Result<Keeper, String> {
    static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);
    let mut k = KEEPER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = &*k {
        return Ok(k.clone());
    }
    let started = Keeper::start(start_watchdog)?;
    *k = Some(started.clone());
    Ok(started)
}

/// The keeper thread: writes each line to the watchdog, and checks every [`CHECK`] that it is
/// alive; if it died, starts another and registers every live group with it again. Returns
/// when every sender is gone (dropping the pipe's write end).
fn keep(
    first: Watchdog,
    start: fn() -> io::Result<Watchdog>,
    rx: &Receiver<Line>,
    pid: &AtomicU32,
) {
    let mut watchdog = Some(first);
    let mut live = BTreeSet::new();
    loop {
        let text = match rx.recv_timeout(CHECK) {
            Ok(Line::Add(pg)) => {
                live.insert(pg);
                Some(format!("+ {pg}\n"))
            }
            Ok(Line::Remove(pg)) => {
                live.remove(&pg);
                Some(format!("- {pg}\n"))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Alive, and told the line: nothing else to do. (`try_wait` reaps a watchdog that died,
        // so none lingers as a zombie.)
        let alive = watchdog.as_mut().is_some_and(|w| {
            matches!(w.0.try_wait(), Ok(None))
                && text.as_ref().is_none_or(|t| w.1.write_all(t.as_bytes()).is_ok())
        });
        if alive {
            continue;
        }
        if let Some(mut dead) = watchdog.take() {
            drop(dead.1);
            let _ = dead.0.kill();
            let _ = dead.0.wait();
        }
        // A new one, told about every group still running. (If none can start, the next line or
        // check tries again; steps keep running either way, and `resume` checks for them.)
        if let Ok(mut w) = start() {
            let all: String = live.iter().map(|pg| format!("+ {pg}\n")).collect();
            if w.1.write_all(all.as_bytes()).is_ok() {
                pid.store(w.0.id(), Ordering::Relaxed);
                watchdog = Some(w);
            }
        }
    }
}

fn start_watchdog() -> io::Result<Watchdog> {
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
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Registered only once its trap is set: a loaded machine may not have run it yet.
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        let (mut watchdog, mut pipe) = start_watchdog().unwrap();
        writeln!(pipe, "+ {}", stubborn.id()).unwrap();
        drop(pipe);
        assert_eq!(ended(&mut stubborn), Some(Signal::SIGKILL as i32));
        assert!(watchdog.wait().unwrap().success());
    }

    /// The keeper replaces a watchdog that was killed, whether or not a line is due, and tells
    /// the new one every live group: when the keeper goes (as rewind would), the new watchdog
    /// stops them all. (A keeper of the test's own, so no other test's steps are touched.)
    #[test]
    fn a_killed_watchdog_is_replaced_and_told_every_live_group() {
        let keeper = Keeper::start(start_watchdog).unwrap();
        let (mut a, mut b) = (leader(), leader());
        let pg = |c: &std::process::Child| i32::try_from(c.id()).unwrap();
        keeper.send(Line::Add(pg(&a)));
        keeper.send(Line::Add(pg(&b)));
        let watchdog = || keeper.pid.load(Ordering::Relaxed);
        let replaced = |old: u32| {
            for _ in 0..1000 {
                if watchdog() != old {
                    return watchdog();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("watchdog {old} was not replaced");
        };
        // Killed with no line due: the periodic check replaces it.
        let first = watchdog();
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(first).unwrap()), Signal::SIGKILL)
            .unwrap();
        let second = replaced(first);
        // Killed again, then a line: the failed write replaces it too.
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(second).unwrap()), Signal::SIGKILL)
            .unwrap();
        let mut c = leader();
        keeper.send(Line::Add(pg(&c)));
        keeper.send(Line::Remove(pg(&c)));
        let third = replaced(second);
        assert_ne!(third, first);
        drop(keeper);
        assert_eq!(ended(&mut a), Some(Signal::SIGTERM as i32), "a was replayed");
        assert_eq!(ended(&mut b), Some(Signal::SIGTERM as i32), "b was replayed");
        assert_eq!(c.try_wait().unwrap(), None, "c was unregistered: left alone");
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
