//! `kind = "command"`: a program with an argument array, no shell (DESIGN.md "Step execution
//! contract").
//!
//! The process gets the run's environment (`REWIND_RUN_ID`, `REWIND_STEP`, `REWIND_INSTANCE`,
//! `REWIND_TARGET_ID`, `REWIND_RESTORE_POINT`, `REWIND_ATTEMPT`, `REWIND_IDEMPOTENCY_KEY`,
//! `REWIND_GROUP_VALUE` for group scopes, and `REWIND_EXE`, the running rewind binary) in its own process group, so a timeout or a cancel stops
//! everything it started: SIGTERM to the group, then SIGKILL after a grace period, before the
//! leader is reaped. A watchdog in the group stops it if rewind dies ([`crate::group`]). Exit 0 is
//! success; if the last stdout line is a JSON object, it is the output.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use rewind_model::Action;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::group::{Group, SpawnError};
use crate::{Attempt, Executor, Outcome, Report, Stop, Tail};

/// Time between SIGTERM and SIGKILL when a command must stop.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long to keep reading stdout and stderr after the process exited (a background child may
/// hold them open).
const DRAIN: Duration = Duration::from_secs(2);

/// Runs `command` actions.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommandExecutor;

impl Executor for CommandExecutor {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        Box::pin(run(attempt, stop))
    }
}

/// A program path with a `/` is relative to the workflow's folder; a bare name is looked up in
/// `PATH`.
pub fn resolve(workdir: &Path, program: &str) -> PathBuf {
    let p = Path::new(program);
    if program.contains('/') && p.is_relative() { workdir.join(p) } else { p.to_path_buf() }
}

/// Why the wait for the process ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exited,
    TimedOut,
    Stopped,
}

async fn run(a: Attempt, mut stop: Stop) -> Report {
    let Action::Command(cmd) = &*a.action else {
        return Report::failed("the command executor got another kind of action", false);
    };
    let rendered = (|| -> Result<_, String> {
        let program = a.render(&cmd.program)?;
        let args = cmd.args.iter().map(|t| a.render(t)).collect::<Result<Vec<_>, _>>()?;
        let env = cmd
            .env
            .iter()
            .map(|(k, t)| Ok((k.clone(), a.render(t)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok((program, args, env))
    })();
    let (program, args, env) = match rendered {
        Ok(r) => r,
        Err(e) => return Report::failed(e, false),
    };
    let path = resolve(&a.workdir, &program);
    let mut c = tokio::process::Command::new(&path);
    c.args(&args)
        .envs(env)
        .env("REWIND_RUN_ID", a.run_id.to_string())
        .env("REWIND_STEP", a.key.step.as_str())
        .env("REWIND_INSTANCE", a.key.to_string())
        .env("REWIND_RESTORE_POINT", a.restore_point.to_string())
        .env("REWIND_ATTEMPT", a.attempt.to_string())
        .env("REWIND_IDEMPOTENCY_KEY", &a.idempotency_key)
        .current_dir(&a.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in a.vars.fixed() {
        c.env(k, v);
    }
    if let Some(t) = &a.target {
        c.env("REWIND_TARGET_ID", t.id.to_string());
    }
    if let Some(g) = &a.group_value {
        c.env("REWIND_GROUP_VALUE", g);
    }
    let mut group = match Group::spawn(&mut c) {
        Ok(g) => g,
        Err(e @ SpawnError::Program(_)) => {
            return Report::failed(format!("cannot start `{}`: {e}", path.display()), false);
        }
        Err(e @ SpawnError::Watchdog(_)) => {
            return Report::failed(format!("cannot start `{}`: {e}", path.display()), true);
        }
    };
    // Each reader owns its tail and hands it back when its stream ends, or when told to stop.
    let (drained, drain) = watch::channel(false);
    let readers = [
        group.leader().stdout.take().map(|s| tokio::spawn(read_tail(s, drain.clone()))),
        group.leader().stderr.take().map(|s| tokio::spawn(read_tail(s, drain))),
    ];

    let (kind, status) = tokio::select! {
        status = group.wait() => (Kind::Exited, Some(status)),
        () = tokio::time::sleep(a.timeout) => (Kind::TimedOut, None),
        () = stop.requested() => (Kind::Stopped, None),
    };
    let status = match status {
        Some(s) => s,
        None => group.terminate(GRACE).await,
    };
    let deadline = tokio::time::Instant::now() + DRAIN;
    let [out, err] = readers;
    let out = collect(out, deadline, &drained).await;
    let err = collect(err, deadline, &drained).await;
    let mut report = Report {
        outcome: Outcome::Failed { retryable: true },
        output: None,
        error: None,
        exit_code: None,
        stdout_tail: out.text(),
        stderr_tail: err.text(),
    };
    let last_err = err.last_line().map(|l| format!(": {l}")).unwrap_or_default();
    match (kind, &status) {
        (_, Err(e)) => report.error = Some(format!("waiting for `{}` failed: {e}", path.display())),
        (Kind::Stopped, _) => {
            report.outcome = Outcome::Cancelled;
            report.error = Some("stopped: the run is being cancelled".into());
        }
        (Kind::TimedOut, _) => {
            report.error = Some(format!(
                "timed out after {}; its process group was stopped",
                humantime::format_duration(a.timeout)
            ));
        }
        (Kind::Exited, Ok(s)) => {
            report.exit_code = s.code();
            if s.success() {
                report.outcome = Outcome::Succeeded;
                report.output = out
                    .last_line()
                    .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                    .filter(serde_json::Value::is_object);
            } else if let Some(code) = s.code() {
                report.error = Some(format!("exit status {code}{last_err}"));
            } else {
                let sig = s.signal().unwrap_or(0);
                report.error = Some(format!("killed by signal {sig}{last_err}"));
            }
        }
    }
    report
}

/// The tail a reader hands back: at the end of its stream, or at `deadline` (a background child
/// may still hold the pipe), with what it read so far.
async fn collect(
    reader: Option<JoinHandle<Tail>>,
    deadline: tokio::time::Instant,
    drained: &watch::Sender<bool>,
) -> Tail {
    let Some(mut r) = reader else { return Tail::default() };
    let joined = match tokio::time::timeout_at(deadline, &mut r).await {
        Ok(j) => j,
        Err(_) => {
            let _ = drained.send(true);
            r.await
        }
    };
    joined.unwrap_or_default()
}

/// Reads `stream` to its end, or until `drain` says to stop, keeping its tail.
async fn read_tail(mut stream: impl AsyncRead + Unpin, mut drain: watch::Receiver<bool>) -> Tail {
    let mut tail = Tail::default();
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => tail.push(&buf[..n]),
            },
            _ = drain.wait_for(|d| *d) => break,
        }
    }
    tail.finish();
    tail
}
