//! The `command` executor against real processes.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rewind_exec::{Attempt, Outcome, Registry, StopHandle, TAIL_BYTES};
use rewind_model::{Action, AttrValue, InstanceKey, RunId, StepId, Target, Workflow};

const SITE: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";

/// The action of the only step of a workflow whose action is `action`.
fn action(action: &str) -> Arc<Action> {
    let text = format!(
        "name = \"w\"\ntarget_kind = \"site\"\n[[steps]]\nid = \"s\"\nneeds = []\nestimate = \"1m\"\naction = {action}\n"
    );
    let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    Arc::new(wf.steps[0].action.clone())
}

fn attempt(dir: &Path, action: Arc<Action>) -> Attempt {
    let mut attrs = BTreeMap::new();
    attrs.insert("shard".parse().unwrap(), AttrValue::One("s01; DROP TABLE sites; --".into()));
    Attempt {
        run_id: RunId::from_uuid(uuid::Uuid::new_v4()),
        restore_point: "2022-04-05T07:33:00Z".parse().unwrap(),
        key: InstanceKey {
            step: StepId::new("s").unwrap(),
            subject: rewind_model::SubjectKey::Target(SITE.parse().unwrap()),
        },
        attempt: 2,
        idempotency_key: "idem-123".into(),
        target: Some(Target { id: SITE.parse().unwrap(), kind: "site".into(), attrs, line: 2 }),
        group_value: None,
        needs: BTreeMap::new(),
        workdir: dir.to_path_buf(),
        cwd: dir.to_path_buf(),
        timeout: Duration::from_secs(30),
        action,
        connections: Arc::new(Vec::new()),
        vars: Arc::new(rewind_exec::Vars::from_process()),
        resolvers: rewind_exec::Resolvers::default(),
    }
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn run(a: Attempt) -> rewind_exec::Report {
    let (_handle, stop) = StopHandle::new();
    Registry::builtin().run(a, stop).await
}

#[tokio::test]
async fn success_with_json_output_env_and_literal_arguments() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "step",
        r#"echo "working on $1" >&2
printf 'arg2=%s\n' "$2"
printf '{"run":"%s","step":"%s","instance":"%s","target":"%s","rp":"%s","attempt":"%s","idem":"%s","extra":"%s","exe":"%s"}\n' \
  "$REWIND_RUN_ID" "$REWIND_STEP" "$REWIND_INSTANCE" "$REWIND_TARGET_ID" "$REWIND_RESTORE_POINT" "$REWIND_ATTEMPT" "$REWIND_IDEMPOTENCY_KEY" "$EXTRA" "$REWIND_EXE""#,
    );
    let a = attempt(
        dir.path(),
        action(
            r#"{ kind = "command", program = "./step", args = ["{{target.id}}", "$(touch pwned) {{target.attr.shard}}"], env = { EXTRA = "a{{attempt}}-${HOME}" } }"#,
        ),
    );
    let run_id = a.run_id.to_string();
    let r = run(a).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    let out = r.output.unwrap();
    assert_eq!(out["run"], run_id);
    assert_eq!(out["step"], "s");
    assert_eq!(out["instance"], format!("s/{SITE}"));
    assert_eq!(out["target"], SITE);
    assert_eq!(out["rp"], "2022-04-05T07:33:00Z");
    assert_eq!(out["attempt"], "2");
    assert_eq!(out["idem"], "idem-123");
    assert_eq!(
        out["extra"],
        format!("a2-{}", std::env::var("HOME").unwrap()),
        "${{VAR}} reads rewind's environment"
    );
    assert!(!out["exe"].as_str().unwrap().is_empty(), "REWIND_EXE is set");
    assert!(
        r.stdout_tail.contains("arg2=$(touch pwned) s01; DROP TABLE sites; --\n"),
        "no shell: {}",
        r.stdout_tail
    );
    assert!(!dir.path().join("pwned").exists());
    assert_eq!(r.stderr_tail, format!("working on {SITE}\n"));
}

#[tokio::test]
async fn a_non_zero_exit_is_a_retryable_failure_with_the_stderr_line() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "fail", "echo 'connecting' >&2\necho 'shard s01 is read-only' >&2\nexit 3");
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "./fail" }"#))).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: true });
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.error.as_deref(), Some("exit status 3: shard s01 is read-only"));
}

#[tokio::test]
async fn a_missing_program_fails_permanently() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "bin/nope" }"#))).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    let e = r.error.unwrap();
    assert!(
        e.starts_with(&format!("cannot start `{}`", dir.path().join("bin/nope").display())),
        "{e}"
    );
}

#[tokio::test]
async fn a_template_that_cannot_render_fails_permanently() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name = "w"
target_kind = "site"
[[steps]]
id = "db"
scope = "group:shard"
estimate = "1m"
action = { kind = "command", program = "true" }
[[steps]]
id = "s"
needs = ["db"]
estimate = "1m"
action = { kind = "command", program = "true", args = ["{{needs.db.scratch}}"] }
"#;
    let wf = Workflow::parse("w.toml", text).unwrap();
    let mut a = attempt(dir.path(), Arc::new(wf.steps[1].action.clone()));
    a.needs.insert(StepId::new("db").unwrap(), Some(Arc::new(serde_json::json!({"rows": 3}))));
    let r = run(a.clone()).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert_eq!(
        r.error.as_deref(),
        Some("`{{needs.db.scratch}}`: the output of `db` has no key `scratch`")
    );
    a.needs.insert(
        StepId::new("db").unwrap(),
        Some(Arc::new(serde_json::json!({"scratch": "/tmp/s01.db"}))),
    );
    assert_eq!(run(a).await.outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn a_restore_point_mismatch_fails_permanently() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "early", r#"echo '{"restore_point":"2022-04-05T07:28:00Z","rows":12}'"#);
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "./early" }"#))).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: false });
    assert!(r.error.unwrap().starts_with("restore point mismatch"));
}

/// Whether a process is alive: it exists and is not a zombie. Signals are delivered
/// asynchronously, so a killed process gets up to two seconds to go.
fn alive(pid: &str) -> bool {
    let stat = format!("/proc/{}/stat", pid.trim());
    let running = || {
        std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    };
    for _ in 0..200 {
        if !running() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[tokio::test]
async fn a_timeout_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    // The step starts a grandchild and waits; both must be gone after the timeout.
    script(dir.path(), "hang", "sleep 300 &\necho $! > grandchild.pid\necho $$ > child.pid\nwait");
    let mut a = attempt(dir.path(), action(r#"{ kind = "command", program = "./hang" }"#));
    a.timeout = Duration::from_millis(300);
    let r = run(a).await;
    assert_eq!(r.outcome, Outcome::Failed { retryable: true });
    assert_eq!(r.error.as_deref(), Some("timed out after 300ms; its process group was stopped"));
    for f in ["child.pid", "grandchild.pid"] {
        let pid = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(!alive(&pid), "{f} {pid} still alive");
    }
}

#[tokio::test]
async fn a_stop_request_cancels_the_attempt_and_its_group() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "hang", "sleep 300 &\necho $! > grandchild.pid\necho started\nwait");
    let a = attempt(dir.path(), action(r#"{ kind = "command", program = "./hang" }"#));
    let (handle, stop) = StopHandle::new();
    let task = tokio::spawn(Registry::builtin().run(a, stop));
    // Stop once the grandchild exists (its pid file is written), without sleeping on a guess.
    let pid_file = dir.path().join("grandchild.pid");
    let mut waited = 0;
    while std::fs::read_to_string(&pid_file).map(|s| s.trim().is_empty()).unwrap_or(true) {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
        assert!(waited < 2000, "the script never started");
    }
    handle.stop();
    let r = task.await.unwrap();
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(!alive(&std::fs::read_to_string(&pid_file).unwrap()));
}

#[tokio::test]
async fn tails_keep_the_last_4_kib() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "loud",
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
    );
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "./loud" }"#))).await;
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert!(r.stdout_tail.len() <= TAIL_BYTES && r.stdout_tail.ends_with("line 2999\n"));
    assert!(r.stderr_tail.len() <= TAIL_BYTES && r.stderr_tail.ends_with("err 2999\n"));
    assert_eq!(r.output, None, "the last line is not JSON");
}

/// Processes whose process group is `pgid` (zombies excluded), with their command lines.
fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[2].parse() == Ok(pgid) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// Polls `cond` every 10 ms for up to 20 s; panics naming `what` if it never holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a pid a script wrote, once it is there.
async fn pid_in(path: &Path) -> i32 {
    let mut pid = None;
    eventually(&format!("{}", path.display()), || {
        pid = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

/// SIGKILLs the process groups of the pid files a test's scripts wrote, when the test ends,
/// passed or not.
struct Reap(Vec<std::path::PathBuf>);

impl Drop for Reap {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse().ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Issue 11, "no kill of a reaped group": the leader exits on SIGTERM, a member of its group
/// ignores SIGTERM. The group gets its SIGKILL while the leader is an unreaped zombie (so the
/// group id is still the step's), and the member is dead once the attempt has ended.
#[tokio::test]
async fn a_member_ignoring_sigterm_dies_with_its_group_when_the_leader_exits_first() {
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(vec![dir.path().join("leader.pid"), dir.path().join("member.pid")]);
    script(
        dir.path(),
        "step",
        r#"sh -c 'trap "" TERM; echo $$ > member.pid.tmp; mv member.pid.tmp member.pid; while :; do sleep 0.05; done' &
trap 'exit 0' TERM
echo $$ > leader.pid
wait"#,
    );
    let a = attempt(dir.path(), action(r#"{ kind = "command", program = "./step" }"#));
    let (handle, stop) = StopHandle::new();
    let task = tokio::spawn(Registry::builtin().run(a, stop));
    let leader = pid_in(&dir.path().join("leader.pid")).await;
    let member = pid_in(&dir.path().join("member.pid")).await;
    handle.stop();
    let r = task.await.unwrap();
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(!alive(&leader.to_string()), "the leader exited on SIGTERM");
    assert!(!alive(&member.to_string()), "the member that ignored SIGTERM got the group's SIGKILL");
}

/// Issue 11, "no orphaned attempts": an attempt dropped before its end (as when rewind's runtime
/// goes away) leaves nothing of its process group running: its watchdog stops the group.
#[tokio::test]
async fn a_dropped_attempt_leaves_nothing_of_its_group_running() {
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(vec![dir.path().join("child.pid"), dir.path().join("grandchild.pid")]);
    script(dir.path(), "hang", "sleep 300 &\necho $! > grandchild.pid\necho $$ > child.pid\nwait");
    let a = attempt(dir.path(), action(r#"{ kind = "command", program = "./hang" }"#));
    let (_handle, stop) = StopHandle::new();
    let task = tokio::spawn(Registry::builtin().run(a, stop));
    let child = pid_in(&dir.path().join("child.pid")).await;
    let grandchild = pid_in(&dir.path().join("grandchild.pid")).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually("the group to be gone", || group_members(child).is_empty()).await;
    assert!(!alive(&grandchild.to_string()));
}

/// An attempt that ended leaves its group to itself: a background process the step left behind
/// keeps running (its business, as before); only groups whose leader has not ended are stopped
/// when rewind dies.
#[tokio::test]
async fn an_ended_attempt_leaves_its_background_processes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(vec![dir.path().join("child.pid"), dir.path().join("background.pid")]);
    script(
        dir.path(),
        "step",
        "sleep 300 >/dev/null 2>&1 &\necho $! > background.pid\necho $$ > child.pid",
    );
    let a = attempt(dir.path(), action(r#"{ kind = "command", program = "./step" }"#));
    let r = run(a).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let child = pid_in(&dir.path().join("child.pid")).await;
    let background = pid_in(&dir.path().join("background.pid")).await;
    assert_eq!(group_members(child), vec![(background, "sleep 300 ".to_owned())]);
}

/// The watchdog: this process's child whose command line names it.
fn watchdog_pid() -> Option<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (f.first() != Some(&"Z")
            && f.get(1) == Some(&me.as_str())
            && cmd.contains("rewind-watchdog"))
        .then_some(pid)
    })
}

/// A step cannot hold the watchdog's pipe open (it would keep the watchdog from seeing rewind
/// die): the write end rewind keeps is close-on-exec.
#[tokio::test]
async fn no_step_inherits_the_watchdog_pipe() {
    let dir = tempfile::tempdir().unwrap();
    // Any attempt starts the watchdog.
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "true" }"#))).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let mut watchdog = None;
    eventually("the watchdog", || {
        watchdog = watchdog_pid();
        watchdog.is_some()
    })
    .await;
    let pipe = std::fs::read_link(format!("/proc/{}/fd/0", watchdog.unwrap())).unwrap();
    assert!(pipe.to_string_lossy().starts_with("pipe:"), "{pipe:?}");
    script(dir.path(), "fds", r#"for f in /proc/$$/fd/*; do echo "$f $(readlink "$f")"; done"#);
    let r = run(attempt(dir.path(), action(r#"{ kind = "command", program = "./fds" }"#))).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert!(r.stdout_tail.contains("pipe:"), "the step's own stdout: {}", r.stdout_tail);
    assert!(
        !r.stdout_tail.lines().any(|l| l.split_whitespace().nth(1) == pipe.to_str()),
        "{pipe:?} leaked into {}",
        r.stdout_tail
    );
}
