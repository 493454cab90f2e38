//! Running a workflow's `[preflight]` resolver: what each target ID really is (its kind and
//! state), asked of the system before a real run is created. It only reads.
//!
//! A `sql` preflight runs its query once per target (at most [`CONCURRENT`] at once), with the
//! target's templates bound as parameters: no row means the ID is unknown; otherwise the row's
//! `kind` and `state` columns. A `command` preflight runs once, gets the target IDs on stdin,
//! one per line, and prints one JSON object per ID it knows:
//! `{"id": "...", "kind": "site", "state": "deleted"}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use rewind_model::{
    Action, Connection, Found, InstanceKey, Preflight, RestorePoint, RunId, StepId, SubjectKey,
    Target,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::group::Group;
use crate::{Attempt, Outcome, Registry, StopHandle, Vars};

/// Most preflight queries in flight at once.
pub const CONCURRENT: usize = 8;

/// What a preflight needs besides the preflight itself.
#[derive(Clone, Debug)]
pub struct Context {
    /// The run's restore point (`{{run.restore_point}}`).
    pub restore_point: RestorePoint,
    /// Folder of the workflow file (relative programs).
    pub workdir: PathBuf,
    /// Working directory of the command.
    pub cwd: PathBuf,
    /// The workflow's `[connections]`.
    pub connections: Arc<Vec<Connection>>,
    /// What `${VAR}` reads.
    pub vars: Arc<Vars>,
}

/// Asks the preflight resolver about every target. Returns what it said, by target ID; an ID
/// it does not know is absent. An error means the resolver itself failed (it could not be
/// reached, timed out, or answered nonsense): nothing can be judged.
pub async fn resolve(
    registry: &Registry,
    pf: &Preflight,
    targets: &[Target],
    ctx: &Context,
) -> Result<BTreeMap<String, Found>, String> {
    let work = async {
        match &pf.action {
            Action::Sql(_) => by_query(registry, pf, targets, ctx).await,
            Action::Command(_) => by_command(pf, targets, ctx).await,
            other => Err(format!("a preflight cannot be a `{}` action", other.kind())),
        }
    };
    tokio::time::timeout(pf.timeout, work).await.unwrap_or_else(|_| {
        Err(format!("the preflight took longer than {}", humantime::format_duration(pf.timeout)))
    })
}

fn attempt(pf: &Preflight, target: Option<&Target>, ctx: &Context) -> Result<Attempt, String> {
    let step = StepId::new("preflight").map_err(|e| e.to_string())?;
    Ok(Attempt {
        run_id: RunId::NIL,
        restore_point: ctx.restore_point,
        key: InstanceKey {
            step,
            subject: target.map_or(SubjectKey::Run, |t| SubjectKey::Target(t.id)),
        },
        attempt: 1,
        idempotency_key: String::new(),
        target: target.cloned(),
        group_value: None,
        needs: BTreeMap::new(),
        workdir: ctx.workdir.clone(),
        cwd: ctx.cwd.clone(),
        timeout: pf.timeout,
        action: Arc::new(pf.action.clone()),
        connections: ctx.connections.clone(),
        vars: ctx.vars.clone(),
        resolvers: crate::Resolvers::default(),
    })
}

async fn by_query(
    registry: &Registry,
    pf: &Preflight,
    targets: &[Target],
    ctx: &Context,
) -> Result<BTreeMap<String, Found>, String> {
    let asks = targets.iter().map(|t| {
        let a = attempt(pf, Some(t), ctx);
        async move {
            let (_handle, stop) = StopHandle::new();
            let report = registry.run(a?, stop).await;
            if report.outcome != Outcome::Succeeded {
                return Err(format!(
                    "the preflight query failed for target {}: {}",
                    t.id,
                    report.error.unwrap_or_else(|| "no reason given".to_owned())
                ));
            }
            let out = report.output.unwrap_or(Value::Null);
            found(&out, false)
                .map(|f| f.map(|f| (t.id.to_string(), f)))
                .map_err(|e| format!("the preflight query for target {} returned {out}: {e}", t.id))
        }
    });
    futures::stream::iter(asks)
        .buffer_unordered(CONCURRENT)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await
}

/// The kind and state in a row or a JSON line; `None` when there is no `kind` (no row). With
/// `need_kind`, a missing `kind` is an error.
fn found(v: &Value, need_kind: bool) -> Result<Option<Found>, String> {
    let text = |key: &str| match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` is {other}, not a string")),
    };
    match text("kind")? {
        Some(kind) => Ok(Some(Found { kind, state: text("state")? })),
        None if need_kind => Err("it has no `kind`".to_owned()),
        None => Ok(None),
    }
}

async fn by_command(
    pf: &Preflight,
    targets: &[Target],
    ctx: &Context,
) -> Result<BTreeMap<String, Found>, String> {
    let Action::Command(cmd) = &pf.action else {
        return Err("the preflight is not a command".to_owned());
    };
    let a = attempt(pf, None, ctx)?;
    let program = a.render(&cmd.program)?;
    let args = cmd.args.iter().map(|t| a.render(t)).collect::<Result<Vec<_>, _>>()?;
    let path = crate::command::resolve(&ctx.workdir, &program);
    let mut c = tokio::process::Command::new(&path);
    c.args(&args)
        .env("REWIND_STEP", "preflight")
        .env("REWIND_RESTORE_POINT", ctx.restore_point.to_string())
        .current_dir(&ctx.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, t) in &cmd.env {
        c.env(k, a.render(t)?);
    }
    for (k, v) in ctx.vars.fixed() {
        c.env(k, v);
    }
    // Its own process group, with a watchdog, like every step: stopped if rewind dies.
    let mut group = Group::spawn(&mut c)
        .map_err(|e| format!("cannot start the preflight `{}`: {e}", path.display()))?;
    let mut input = String::with_capacity(targets.len() * 37);
    for t in targets {
        input.push_str(&t.id.to_string());
        input.push('\n');
    }
    let leader = group.leader();
    let pipes = (leader.stdin.take(), leader.stdout.take(), leader.stderr.take());
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) = pipes else {
        return Err("the preflight's stdio are not pipes".to_owned());
    };
    // Write while the child's output is read, so neither side can fill a pipe and wait.
    let write = async move {
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ((), read_out, read_err) =
        tokio::join!(write, stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    let status = match (read_out, read_err) {
        (Ok(_), Ok(_)) => group.wait().await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
    .map_err(|e| format!("the preflight `{}`: {e}", path.display()))?;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let tail: String = stderr.trim_end().lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("the preflight `{}` failed ({status}): {tail}", path.display()));
    }
    let stdout = String::from_utf8_lossy(&out);
    let mut found_ids = BTreeMap::new();
    for (n, line) in stdout.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            format!(
                "the preflight `{}` printed line {} that is not {{\"id\", \"kind\", \"state\"}}: {why}: {line}",
                path.display(),
                n + 1
            )
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let Some(Value::String(id)) = v.get("id") else { return Err(bad("no string `id`")) };
        let f = found(&v, true).map_err(|e| bad(&e))?.ok_or_else(|| bad("no `kind`"))?;
        found_ids.insert(id.to_ascii_lowercase(), f);
    }
    Ok(found_ids)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_or_line_gives_kind_and_state() {
        let f = found(&json!({"kind": "app", "state": "installed", "rows_affected": 0}), false);
        assert_eq!(f.unwrap(), Some(Found { kind: "app".into(), state: Some("installed".into()) }));
        assert_eq!(found(&json!({"rows_affected": 0}), false).unwrap(), None);
        assert!(found(&json!({"id": "x"}), true).is_err());
        assert!(found(&json!({"kind": 3}), false).unwrap_err().contains("`kind` is 3"));
        assert_eq!(found(&json!({"kind": "site"}), false).unwrap().unwrap().state, None);
    }
}
