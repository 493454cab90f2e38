//! Issue 11, "no orphaned attempts", through the real binary: after `kill -9` of rewind (and
//! of rewind alone: the test never signals its children), none of its step processes outlives
//! it for long, and `resume` never starts an instance while a process of its interrupted
//! attempt still runs.
//!
//! The step script takes an exclusive lock per instance (`flock -n`) for as long as it, or
//! anything it started, runs; an attempt that cannot take it logs `overlap`. It logs `start` and
//! `end` with its instance, attempt and pid. Started with `HOLD` in its environment (rewind's
//! environment, which steps inherit), it runs until stopped; with `ESCAPE`, it also leaves a
//! process in a session of its own, out of reach of its process group's watchdog.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::process::{Child, Stdio};

use support::*;

const STEP: &str = r#"#!/bin/sh
log="$1"
mkdir -p locks
exec 9>"locks/$(printf %s "$REWIND_INSTANCE" | tr / _)"
if ! flock -n 9; then
  echo "overlap $REWIND_INSTANCE $REWIND_ATTEMPT $$" >> "$log"
  exit 1
fi
echo "start $REWIND_INSTANCE $REWIND_ATTEMPT $$" >> "$log"
trap 'echo "end $REWIND_INSTANCE $REWIND_ATTEMPT $$" >> "$log"' EXIT
trap 'exit 143' TERM
if [ -n "$ESCAPE" ]; then
  # The pid is written by the escaped process itself, once it is in its own session: written
  # from `$!`, the test could stop rewind (and the watchdog the group) before `setsid` ran.
  setsid sh -c 'echo $$ > escaped.pid.tmp && mv escaped.pid.tmp escaped.pid && exec sleep 60' \
    >/dev/null 2>&1 &
fi
if [ -n "$HOLD" ]; then
  while :; do sleep 0.05; done
fi
"#;

const WORKFLOW: &str = r#"name = "orphans"
target_kind = "site"

[defaults]
timeout = "5m"
retries = 0

[[steps]]
id = "s"
estimate = "1m"
action = { kind = "command", program = "./step.sh", args = ["log"] }
"#;

/// One line of the step log.
#[derive(Debug)]
struct Line {
    what: String,
    instance: String,
    attempt: u32,
    pid: i32,
}

fn log(env: &Env) -> Vec<Line> {
    env.read("log")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Line {
                what: f.first()?.to_string(),
                instance: f.get(1)?.to_string(),
                attempt: f.get(2)?.parse().ok()?,
                pid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// Processes (zombies aside) in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[2].parse() == Ok(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Whatever a test started, stopped when it ends, passed or failed: rewind, the step groups in
/// the log, the escaped process.
struct Cleanup<'e> {
    env: &'e Env,
    rewind: Option<Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(c) = &mut self.rewind {
            let _ = c.kill();
            let _ = c.wait();
        }
        for l in log(self.env) {
            kill_group(l.pid);
        }
        if let Ok(pid) = self.env.read("escaped.pid").trim().parse::<i32>() {
            kill_group(pid); // it leads its own group
        }
    }
}

/// `rewind run` in the background with `vars` in its environment (and so in its steps').
fn start(env: &Env, targets: usize, vars: &[(&str, &str)]) -> (Child, String) {
    env.write("step.sh", STEP, true);
    let w = env.write("orphans.toml", WORKFLOW, false);
    let modes = vec!["ok"; targets];
    let t = env.write("sites.csv", &targets_csv(&modes), false);
    let (w, t) = (w.display().to_string(), t.display().to_string());
    let out = std::fs::File::create(env.path("run.out")).unwrap();
    let err = std::fs::File::create(env.path("run.err")).unwrap();
    let mut cmd = env.cmd(&["run", "--workflow", &w, "--targets", &t, "--restore-point", RP]);
    cmd.envs(vars.iter().copied()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let child = cmd.spawn().unwrap();
    let run = env.run_id_of("run");
    (child, run)
}

/// SIGKILL to rewind alone.
fn kill_rewind(c: &mut Cleanup<'_>) {
    let mut child = c.rewind.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn after_kill_9_no_step_process_outlives_rewind_and_resume_never_overlaps_attempts() {
    let env = Env::sqlite();
    let (child, run) = start(&env, 3, &[("HOLD", "1")]);
    let mut c = Cleanup { env: &env, rewind: Some(child) };
    wait_for("three attempts to start", || {
        log(&env).iter().filter(|l| l.what == "start").count() == 3
    });
    let first: Vec<i32> = log(&env).iter().map(|l| l.pid).collect();
    kill_rewind(&mut c);
    // Each step's process group (the step, its `sleep`, its watchdog) goes away by itself.
    for &pid in &first {
        wait_for(&format!("step process group {pid} to be gone"), || group_members(pid).is_empty());
    }
    // What follows in the log comes from the resumed run.
    std::fs::write(env.path("log"), format!("{}resume\n", env.read("log"))).unwrap();

    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!stderr(&o).contains("still run on this host"), "{}", stderr(&o));
    let text = env.read("log");
    assert!(!text.contains("overlap"), "two attempts of one instance ran at once:\n{text}");
    // Per instance, every attempt's interval (its start to its end, or to the resume when it
    // was killed without an end, its process having been seen gone) is disjoint from the others.
    let lines: Vec<&str> = text.lines().collect();
    let resume_at = lines.iter().position(|l| *l == "resume").unwrap();
    for n in 1..=3 {
        let instance = format!("s/{}", site(n));
        let mut intervals = Vec::new();
        for attempt in 1..=2u32 {
            let at = |what: &str| {
                lines.iter().position(|l| l.starts_with(&format!("{what} {instance} {attempt} ")))
            };
            let start =
                at("start").unwrap_or_else(|| panic!("{instance} attempt {attempt}:\n{text}"));
            let end = at("end").unwrap_or(resume_at);
            assert!(attempt == 1 || end != resume_at, "attempt 2 of {instance} ended:\n{text}");
            intervals.push((start, end));
        }
        assert!(intervals[0].1 < intervals[1].0, "{instance}: {intervals:?}\n{text}");
    }
    assert_eq!(env.report(&run)["state"], "succeeded");
    drop(c);
}

#[test]
fn resume_stops_a_process_that_escaped_its_group_before_running_the_instance_again() {
    let env = Env::sqlite();
    let (child, run) = start(&env, 1, &[("HOLD", "1"), ("ESCAPE", "1")]);
    let mut c = Cleanup { env: &env, rewind: Some(child) };
    wait_for("the escaped process", || env.read("escaped.pid").trim().parse::<i32>().is_ok());
    let escaped: i32 = env.read("escaped.pid").trim().parse().unwrap();
    let step = log(&env)[0].pid;
    kill_rewind(&mut c);
    // The watchdog stops the step's group; the process in its own session survives that.
    wait_for("the step's process group to be gone", || group_members(step).is_empty());
    assert!(is_alive(escaped), "the escaped process is out of the group's reach");

    let o = env.rewind(&["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let instance = format!("s/{}", site(1));
    let note = format!(
        "process {escaped} of interrupted attempt {instance} was still running: stopped it with SIGTERM"
    );
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    assert!(!is_alive(escaped));
    let text = env.read("log");
    assert!(!text.contains("overlap"), "{text}");
    let second = log(&env)
        .into_iter()
        .find(|l| l.what == "start" && l.instance == instance && l.attempt == 2);
    assert!(second.is_some(), "the instance ran again:\n{text}");

    let o = env.rewind(&["log", &run]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("instance.orphan_stopped"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no instance.orphan_stopped in the log:\n{}", stdout(&o)));
    assert!(line.contains(&format!("pid={escaped}")), "{line}");
    assert!(line.contains("SIGTERM"), "{line}");
    assert_eq!(env.report(&run)["state"], "succeeded");
    drop(c);
}

/// `cancel` of a run nobody drives frees its targets: first it stops what its interrupted
/// attempts left running on this host, as `resume` would, so the next restore of the same sites
/// does not race them.
#[test]
fn cancel_of_a_killed_run_stops_what_its_attempts_left_running() {
    let env = Env::sqlite();
    let (child, run) = start(&env, 1, &[("HOLD", "1"), ("ESCAPE", "1")]);
    let mut c = Cleanup { env: &env, rewind: Some(child) };
    wait_for("the escaped process", || env.read("escaped.pid").trim().parse::<i32>().is_ok());
    let escaped: i32 = env.read("escaped.pid").trim().parse().unwrap();
    kill_rewind(&mut c);
    assert!(is_alive(escaped));

    let o = env.rewind(&["cancel", &run]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("cancelled"), "{}", stdout(&o));
    let instance = format!("s/{}", site(1));
    let note = format!(
        "process {escaped} of interrupted attempt {instance} was still running: stopped it with SIGTERM"
    );
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    assert!(!is_alive(escaped), "stopped before the run ended and its targets were freed");
    assert_eq!(env.report(&run)["state"], "cancelled");
    let o = env.rewind(&["log", &run]);
    assert!(stdout(&o).contains("instance.orphan_stopped"), "{}", stdout(&o));
    drop(c);
}
