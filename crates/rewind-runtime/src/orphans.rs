//! No instance starts again while a process of its interrupted attempt still runs on this host.
//!
//! An instance that was running when the orchestrator died runs again on resume (at least
//! once). Each step's process group has a watchdog that stops it within about a second of
//! rewind's death (rewind-exec's `group.rs`); this is the check behind it, for what a watchdog
//! cannot catch: a process that left its group (`setsid`, `setpgid`), or a step whose watchdog
//! never started because rewind died in between. Before the drive loop starts anything, [`settle`]
//! looks for processes of the run's interrupted instances, by the environment every step
//! process gets (`REWIND_RUN_ID`, `REWIND_INSTANCE`, inherited by whatever it starts) in
//! `/proc/*/environ` (readable for processes of the same user, or every process as root). It
//! waits up to [`WAIT`] for them to exit (their watchdogs may be at work), then sends SIGTERM, and
//! after [`GRACE`] SIGKILL; what survives even that (an uninterruptible process) is an error: the
//! instances do not start. Each process is reported through the observer and as an
//! `instance.orphan_stopped` event in the run's log.
//!
//! Whom it signals: each process found, and the process group of each, unless that group is
//! rewind's own, or is led by a live process that is not one of those found (a group that a
//! step's process joined but does not own). A group led by a found process, or whose leader is
//! gone while a found process is in it, holds what the step started (a group id is its founder's
//! pid; its members are born into it, or move into it themselves, within the session): children
//! that cleared their environment go with it. Pids are read again right
//! before each signal, so a process that exited in between is not signalled; a pid or group id
//! is reused only after the process and every member of its group are gone, so the window in
//! which a signal could reach a recycled id is the few microseconds between a read and a
//! signal. Only this host is searched: processes a previous orchestrator left on another host
//! are not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp};
use rewind_model::{EventKind, RunId};
use rewind_store::NewEvent;
use serde_json::json;

use crate::RuntimeError;
use crate::progress::Observer;

/// How long to wait for them to exit on their own before signalling them.
pub const WAIT: Duration = Duration::from_secs(3);
/// Between SIGTERM and SIGKILL (as for a step's timeout).
pub const GRACE: Duration = rewind_exec::command::GRACE;
/// How long a SIGKILLed process may take to go.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often /proc is read again while waiting.
const POLL: Duration = Duration::from_millis(100);

/// A running process of an interrupted attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Orphan {
    pid: i32,
    pgid: i32,
    instance: String,
}

/// Makes sure no process of `instances` (keys of the run's interrupted instances) still runs on
/// this host: waits for them, then stops them. Returns the `instance.orphan_stopped` events to
/// commit (at `at_s`); an error if some survived SIGKILL.
pub(crate) async fn settle(
    run: RunId,
    instances: BTreeSet<String>,
    at_s: f64,
    observer: &mut dyn Observer,
) -> Result<Vec<NewEvent>, RuntimeError> {
    let run = run.to_string();
    let scan_all = move || scan(&run, &instances);
    let mut left = blocking(scan_all.clone()).await;
    // A process on its way out (signalled, its memory already released) no longer shows its
    // environment, though its /proc entry still says it runs: once found, a process is followed
    // by its pid until /proc says it is gone or a zombie.
    let look = move |before: Vec<Orphan>| {
        let scan_all = scan_all.clone();
        move || still_there(scan_all(), &before)
    };
    if left.is_empty() {
        return Ok(Vec::new());
    }
    observer.note(&format!(
        "{} process(es) of interrupted attempts still run on this host ({}); waiting up to {} for them to exit before their instances start again",
        left.len(),
        list(&left),
        humantime::format_duration(WAIT)
    ));
    // Every process seen, and the last signal it was sent (`None`: it exited on its own).
    let mut seen: BTreeMap<i32, (Orphan, Option<&'static str>)> =
        left.iter().map(|o| (o.pid, (o.clone(), None))).collect();
    let phases = [(None, WAIT), (Some(Signal::SIGTERM), GRACE), (Some(Signal::SIGKILL), KILL_WAIT)];
    for (sig, wait) in phases {
        if let Some(sig) = sig {
            // Read again right before signalling: only what is still there is signalled.
            let look = look(left.clone());
            left = blocking(move || {
                let now = look();
                signal(&now, sig);
                now
            })
            .await;
            for o in &left {
                seen.entry(o.pid).or_insert_with(|| (o.clone(), None)).1 = Some(sig.as_str());
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            left = blocking(look(left.clone())).await;
            for o in &left {
                seen.entry(o.pid).or_insert_with(|| (o.clone(), None));
            }
        }
        if left.is_empty() {
            break;
        }
    }
    let mut events = Vec::with_capacity(seen.len());
    for (o, by) in seen.values().filter(|(o, _)| !left.contains(o)) {
        observer.note(&match by {
            Some(sig) => format!(
                "process {} of interrupted attempt {} was still running: stopped it with {sig}",
                o.pid, o.instance
            ),
            None => format!("process {} of interrupted attempt {} exited", o.pid, o.instance),
        });
        events.push(NewEvent {
            at_s,
            wall: String::new(),
            kind: EventKind::InstanceOrphanStopped,
            key: Some(o.instance.clone()),
            detail: Some(
                json!({"pid": o.pid, "instance": o.instance, "signal": by.unwrap_or("none, it exited")})
                    .to_string(),
            ),
        });
    }
    if left.is_empty() { Ok(events) } else { Err(RuntimeError::Orphans { processes: list(&left) }) }
}

/// `pid 12 (b/…), pid 13 (c/…)`
fn list(orphans: &[Orphan]) -> String {
    orphans.iter().map(|o| format!("pid {} ({})", o.pid, o.instance)).collect::<Vec<_>>().join(", ")
}

/// Runs `f` on a blocking thread (it reads /proc).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Processes (not zombies, not this one) whose environment names `run` and one of `instances`.
fn scan(run: &str, instances: &BTreeSet<String>) -> Vec<Orphan> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Unreadable (another user's process) or gone: not ours to judge.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let (mut of_run, mut instance) = (false, None);
        for var in environ.split(|b| *b == 0) {
            if let Some(v) = var.strip_prefix(b"REWIND_RUN_ID=") {
                of_run = v == run.as_bytes();
            } else if let Some(v) = var.strip_prefix(b"REWIND_INSTANCE=") {
                instance = std::str::from_utf8(v).ok();
            }
        }
        let Some(instance) = instance.filter(|i| of_run && instances.contains(*i)) else {
            continue;
        };
        if let Some((state, pgid)) = stat(pid)
            && state != 'Z'
        {
            out.push(Orphan { pid, pgid, instance: instance.to_owned() });
        }
    }
    out
}

/// `found` (a fresh scan), plus each process of `before` that the scan no longer finds but whose
/// /proc entry still says it runs in the same process group (an exiting process whose
/// environment is already unreadable).
fn still_there(mut found: Vec<Orphan>, before: &[Orphan]) -> Vec<Orphan> {
    for o in before {
        if found.iter().any(|f| f.pid == o.pid) {
            continue;
        }
        if let Some((state, pgid)) = stat(o.pid)
            && state != 'Z'
            && state != 'X'
            && pgid == o.pgid
        {
            found.push(o.clone());
        }
    }
    found
}

/// A process's state letter and process group, from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    Some((state, f.next()?.parse().ok()?))
}

/// Sends `sig` to each process, and to each one's process group unless that group is rewind's
/// own or is led by a live process that is not one of them (see the module documentation).
fn signal(orphans: &[Orphan], sig: Signal) {
    let own = getpgrp().as_raw();
    let pids: BTreeSet<i32> = orphans.iter().map(|o| o.pid).collect();
    let groups: BTreeSet<i32> = orphans.iter().map(|o| o.pgid).collect();
    for &g in &groups {
        let led_by_another = !pids.contains(&g) && stat(g).is_some_and(|(s, _)| s != 'Z');
        if g > 1 && g != own && !led_by_another {
            let _ = killpg(Pid::from_raw(g), sig);
        }
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_reads_state_and_group_past_an_odd_command_name() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x) Z 9 9 (y");
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("30").spawn().unwrap();
        let got = stat(i32::try_from(child.id()).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        let (state, pgid) = got.unwrap();
        assert_ne!(state, 'Z');
        assert_eq!(pgid, getpgrp().as_raw());
    }

    #[test]
    fn scan_finds_a_process_by_run_and_instance_only() {
        let run = RunId::from_uuid(uuid::Uuid::new_v4()).to_string();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("REWIND_RUN_ID", &run)
            .env("REWIND_INSTANCE", "b/x")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let ours: BTreeSet<String> = ["b/x".to_owned()].into();
        let others: BTreeSet<String> = ["b/y".to_owned()].into();
        // Until the child has exec'd, /proc/PID/environ is still the test's own environment:
        // ask again for a while (a loaded machine may take some time to get there).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = scan(&run, &ours);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = scan(&run, &ours);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.iter().map(|o| o.pid).collect::<Vec<_>>(), vec![pid]);
        assert_eq!(found[0].instance, "b/x");
        assert!(scan(&run, &others).is_empty(), "another instance of the run");
        assert!(scan(&RunId::from_uuid(uuid::Uuid::new_v4()).to_string(), &ours).is_empty());
    }
}
