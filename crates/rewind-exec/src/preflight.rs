//! Running a workflow's `[preflight]` resolver: what each target ID really is (its kind and
//! state), asked of the system before a real run is created. It only reads.
//!
//! A `sql` preflight runs its query once per target (at most [`CONCURRENT`] at once), with the
//! target's templates bound as parameters: no row means the ID is unknown; otherwise the row's
//! `kind` and `state` columns. It runs read-only ([`crate::readonly`]): one statement, in a
//! read-only transaction; a query that tries to write is refused ("refused for target …: the
//! query `…` tried to write, …") and writes nothing. A `command` preflight runs once, gets the target IDs on stdin,
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
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cancel::{self, Sessions};
use crate::group::Group;
use crate::readonly::{ReadOnly, ReadOnlyError};
use crate::{Attempt, Pools, Registry, Vars};

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
    let sessions = Sessions::default();
    let work = async {
        match &pf.action {
            Action::Sql(_) => by_query(registry, pf, targets, ctx, &sessions).await,
            Action::Command(_) => by_command(pf, targets, ctx).await,
            other => Err(format!("a preflight cannot be a `{}` action", other.kind())),
        }
    };
    // On a timeout, the queries still running are stopped on the server before this returns.
    cancel::first(&sessions, work, tokio::time::sleep(pf.timeout)).await.unwrap_or_else(
        |((), problems)| {
            let mut e = format!(
                "the preflight took longer than {}",
                humantime::format_duration(pf.timeout)
            );
            for p in problems {
                e.push_str("; ");
                e.push_str(&p);
            }
            Err(e)
        },
    )
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
    sessions: &Sessions,
) -> Result<BTreeMap<String, Found>, String> {
    let asks = targets.iter().map(|t| {
        let a = attempt(pf, Some(t), ctx);
        async move {
            let mut a = a?;
            a.resolvers.clone_from(registry.resolvers());
            let out = ask(registry.pools(), sessions, &a).await.map_err(|e| match e {
                Ask::Refused(e) => format!("refused for target {}: {e}", t.id),
                Ask::Failed(e) => format!("the preflight query failed for target {}: {e}", t.id),
            })?;
            let out = Value::Object(out);
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

/// Why a preflight query gave no answer.
enum Ask {
    /// The query is not a read ([`ReadOnlyError::is_refusal`]).
    Refused(ReadOnlyError),
    /// It could not run (unreachable database, wrong SQL, a template without a value).
    Failed(String),
}

impl From<ReadOnlyError> for Ask {
    fn from(e: ReadOnlyError) -> Self {
        if e.is_refusal() { Self::Refused(e) } else { Self::Failed(e.to_string()) }
    }
}

/// Runs a `sql` preflight's statements for one target in one read-only session
/// ([`crate::readonly`]): the first row of the last statement, or an empty object (no row).
async fn ask(pools: &Pools, sessions: &Sessions, a: &Attempt) -> Result<Map<String, Value>, Ask> {
    let Action::Sql(action) = &*a.action else {
        return Err(Ask::Failed("the preflight is not a sql action".to_owned()));
    };
    let url = a.connection_url(&action.connection).await.map_err(Ask::Failed)?;
    let mut statements = Vec::with_capacity(action.statements.len());
    for st in &action.statements {
        let params = st.params.iter().map(|p| a.render(p)).collect::<Result<Vec<_>, _>>();
        statements.push((st.sql.as_str(), params.map_err(Ask::Failed)?));
    }
    let mut session = ReadOnly::begin_in(pools, &url, sessions).await?;
    let mut last = Map::new();
    for (sql, params) in statements {
        last = session.fetch_all(sql, &params).await?.into_iter().next().unwrap_or_default();
    }
    session.end().await?;
    Ok(last)
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
        let stderr = rewind_model::redact_text(&stderr);
        let mut last: Vec<&str> = stderr.trim_end().lines().rev().take(5).collect();
        last.reverse();
        let tail = last.join(" | ");
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
