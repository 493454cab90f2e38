//! `kind = "pitr"`: a scratch database instance recovered to exactly the run's restore point, a
//! thin adapter onto `rewind-pitr`.
//!
//! The instance belongs to the run and the instance key (its owner in the scratch registry), so
//! a retry or a resume reuses an instance that reached the restore point and replaces one that
//! did not. Paths are templates: a value from a target, a group or an output must be one path
//! component (no `/`, not `.` or `..`, not empty), so `{{group.value}}` cannot walk out of the
//! directory the workflow names; a relative path is read against the workflow file's folder.
//! The output's `restore_point` is the run's, reported only because `rewind-pitr` proved the
//! instance stopped there (the run's pin then holds it to that).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use rewind_model::{Action, PitrAction, PitrMethod, Placeholder, Ref, Template};
use rewind_pitr::{Owner, Registry, Request, Source};
use serde_json::json;

use crate::{Attempt, Executor, Outcome, Report, Stop};

/// Runs `pitr` actions.
#[derive(Clone, Debug, Default)]
pub struct PitrExecutor;

impl Executor for PitrExecutor {
    fn kind(&self) -> &'static str {
        "pitr"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        Box::pin(run(attempt, stop))
    }
}

/// The request an attempt makes (also what `--dry-run` shows).
pub fn request(a: &Attempt) -> Result<Request, String> {
    let Action::Pitr(p) = &*a.action else {
        return Err("the pitr executor got another kind of action".into());
    };
    let path = |t: &Template| -> Result<PathBuf, String> {
        let s = render_component(a, t)?;
        let p = Path::new(&s);
        Ok(if p.is_relative() { a.workdir.join(p) } else { p.to_path_buf() })
    };
    let source = match &p.method {
        PitrMethod::Archive { base_backup, wal_archive } => {
            Source::Archive { base_backup: path(base_backup)?, wal_archive: path(wal_archive)? }
        }
        PitrMethod::Pgbackrest { stanza, config } => {
            Source::Pgbackrest { stanza: render_component(a, stanza)?, config: path(config)? }
        }
        PitrMethod::Binlog { base_backup, binlogs } => {
            Source::Binlog { base_backup: path(base_backup)?, binlogs: path(binlogs)? }
        }
    };
    let PitrAction { into, run_as, .. } = p;
    // The run's variables first (`rewind demo --clusters` keeps its registry under its
    // directory without touching its own environment), then the environment's default.
    let registry = match a.vars.get("REWIND_SCRATCH_REGISTRY") {
        Ok(d) if !d.is_empty() => Registry::at(d),
        _ => Registry::default_location().map_err(|e| e.to_string())?,
    };
    Ok(Request {
        source,
        into: path(into)?,
        target: a.restore_point.system_time(),
        owner: Owner { run: a.run_id.to_string(), instance: a.key.to_string() },
        run_as: run_as.clone(),
        tool_env: vec![
            ("REWIND_RUN_ID".into(), a.run_id.to_string()),
            ("REWIND_INSTANCE".into(), a.key.to_string()),
            ("REWIND_RESTORE_POINT".into(), a.restore_point.to_string()),
        ],
        registry,
    })
}

/// Renders `t`, each value from a target, a group or an output required to be one path
/// component; `${VAR}`s (the operator's environment) are taken as they are.
fn render_component(a: &Attempt, t: &Template) -> Result<String, String> {
    t.render(|r| match r {
        Ref::Placeholder(p) => {
            let v = a.value(p)?;
            let from_run = matches!(p, Placeholder::RunId);
            if v.is_empty() || v == "." || v == ".." || v.contains(['/', '\0', '\n']) {
                return Err(format!(
                    "`{{{{{p}}}}}` is {v:?}, which is not one path component (no `/`, not `.` or `..`, not empty){}",
                    if from_run { "" } else { ": a value from a target, a group or an output cannot choose where files go" }
                ));
            }
            Ok(v)
        }
        Ref::Env(name) => a.vars.get(name),
    })
    .map_err(|e| format!("`{}`: {e}", t.as_str()))
}

async fn run(a: Attempt, mut stop: Stop) -> Report {
    let req = match request(&a) {
        Ok(r) => r,
        Err(e) => return Report::failed(e, false),
    };
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let timeout = a.timeout;
    // Stopping (cancel, timeout) goes through `recover`'s own stop, so the half-recovered
    // server is stopped before the attempt ends.
    let stopped = async move {
        tokio::select! {
            () = stop.requested() => {}
            () = tokio::time::sleep(timeout) => flag.store(true, Ordering::SeqCst),
        }
    };
    match rewind_pitr::recover(&req, stopped).await {
        Ok(rec) => {
            let output = json!({
                "engine": req.source.engine().as_str(),
                "method": req.source.method(),
                "host": rec.host,
                "port": rec.port,
                "url": rec.url,
                "data_dir": rec.data_dir,
                "restore_point": a.restore_point.to_string(),
                "recovered_to": rewind_pitr::time::rfc3339(rec.recovered_to),
                "replayed_bytes": rec.replayed_bytes,
                "recovery_s": rec.recovery_s,
                "reused": rec.reused,
                "evidence": rec.evidence,
            });
            Report::succeeded(output)
        }
        Err(rewind_pitr::Error::Stopped) if timed_out.load(Ordering::SeqCst) => Report::failed(
            format!(
                "timed out after {}; the half-recovered instance was stopped",
                humantime::format_duration(timeout)
            ),
            true,
        ),
        Err(rewind_pitr::Error::Stopped) => Report {
            outcome: Outcome::Cancelled,
            ..Report::failed("stopped; the half-recovered instance was stopped", false)
        },
        Err(e) => Report::failed(e.to_string(), e.is_transient()),
    }
}
