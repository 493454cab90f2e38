//! rewind's executors: what a step's action does.
//!
//! One trait, [`Executor`]; built-ins in their own modules: [`command`], [`sql`], [`slice`]
//! (`copy` and `compare`), [`audit`]. An executor gets an [`Attempt`] (everything its templates
//! may read, owned) and a [`Stop`] signal, and returns a [`Report`]. [`Registry::run`] dispatches
//! by action kind and applies what holds for every executor: a template that cannot render fails
//! the attempt permanently, an output whose `restore_point` differs from the run's fails it
//! permanently ("restore point mismatch"), and the passwords of URLs quoted in its error and
//! output tails are redacted before anyone stores or prints them. Every process started for a
//! run or its preflight goes through `group.rs`: a process group of its own, stopped before its
//! leader is reaped, and a watchdog in it that stops it when rewind dies.
//!
//! **Invariant:** executors know nothing of the scheduler, the store or other instances; they
//! do not depend on rewind-scheduler or rewind-store.

pub mod audit;
mod cancel;
pub mod command;
mod connect;
mod decode;
pub mod describe;
pub mod discover;
mod group;
mod params;
pub mod pitr;
pub mod preflight;
pub mod readonly;
pub mod slice;
pub mod sql;
mod tail;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rewind_model::{
    Action, Connection, ConnectionName, Fill, InstanceKey, Placeholder, Ref, RestorePoint, RunId,
    StepId, Target, Template, UrlTemplate, redact_text, redact_url,
};
use serde_json::Value;

pub use connect::Pools;
pub use group::ready_watchdog;
pub use tail::{TAIL_BYTES, Tail};

/// Maps a connection URL a workflow names to one sqlx understands, or says it is not its kind
/// (`None`). Installed in a [`Registry`]; the binary installs one for `sandbox://` URLs.
pub type Resolver = Arc<dyn Fn(&str) -> Option<Result<String, String>> + Send + Sync>;

/// The environment `${VAR}` references read: rewind's own process environment, plus fixed
/// values (`REWIND_EXE`, the running rewind binary).
#[derive(Clone, Debug, Default)]
pub struct Vars {
    fixed: BTreeMap<String, String>,
}

impl Vars {
    /// The process environment, with `REWIND_EXE` set to the running binary.
    pub fn from_process() -> Self {
        let mut v = Self::default();
        if let Ok(exe) = std::env::current_exe() {
            v.fixed.insert("REWIND_EXE".to_owned(), exe.display().to_string());
        }
        v
    }

    /// With `name` set to `value`, whatever the environment says.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.fixed.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Result<String, String> {
        match self.fixed.get(name) {
            Some(v) => Ok(v.clone()),
            None => {
                std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))
            }
        }
    }

    /// The names in `names` that have no value.
    pub fn missing<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
        names.into_iter().filter(|n| self.get(n).is_err()).collect()
    }

    /// The fixed values, for a child process's environment.
    pub fn fixed(&self) -> impl Iterator<Item = (&String, &String)> {
        self.fixed.iter()
    }
}

/// Everything one attempt of one instance may read. Owned, so it can move into a task.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The run.
    pub run_id: RunId,
    /// The run's restore point.
    pub restore_point: RestorePoint,
    /// The instance.
    pub key: InstanceKey,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Stable across attempts and resumes of this instance.
    pub idempotency_key: String,
    /// The target, for target-scope instances.
    pub target: Option<Target>,
    /// The group value, for group-scope instances.
    pub group_value: Option<String>,
    /// Outputs of the dependencies the templates read (`None`: skipped by `when`).
    pub needs: BTreeMap<StepId, Option<Arc<Value>>>,
    /// Folder of the workflow file: relative programs resolve against it.
    pub workdir: PathBuf,
    /// Working directory for processes.
    pub cwd: PathBuf,
    /// Longest the attempt may run.
    pub timeout: Duration,
    /// What to do.
    pub action: Arc<Action>,
    /// The workflow's `[connections]`.
    pub connections: Arc<Vec<Connection>>,
    /// What `${VAR}` reads.
    pub vars: Arc<Vars>,
    /// Connection URL resolvers (set by [`Registry::run`]).
    pub resolvers: Resolvers,
}

/// The resolvers of a [`Registry`], in the order added.
#[derive(Clone, Default)]
pub struct Resolvers(pub Vec<Resolver>);

impl Resolvers {
    /// What the first resolver that knows `url`'s kind maps it to (`None`: none does), asked on
    /// a blocking thread.
    pub async fn resolve_blocking(&self, url: String) -> Option<Result<String, String>> {
        if self.0.is_empty() {
            return None;
        }
        let resolvers = self.0.clone();
        let ask = move || resolvers.iter().find_map(|resolve| resolve(&url));
        tokio::task::spawn_blocking(ask)
            .await
            .unwrap_or_else(|e| Some(Err(format!("the connection URL resolver failed: {e}"))))
    }
}

impl std::fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolver(s)", self.0.len())
    }
}

impl Attempt {
    /// The value of one placeholder, or why it has none.
    pub fn value(&self, p: &Placeholder) -> Result<String, String> {
        let target =
            || self.target.as_ref().ok_or_else(|| format!("`{{{{{p}}}}}` has no target here"));
        Ok(match p {
            Placeholder::RunId => self.run_id.to_string(),
            Placeholder::RestorePoint => self.restore_point.to_string(),
            Placeholder::TargetId => target()?.id.to_string(),
            Placeholder::TargetKind => target()?.kind.clone(),
            Placeholder::TargetAttr(a) => target()?
                .attrs
                .get(a)
                .map(ToString::to_string)
                .ok_or_else(|| format!("target has no attribute `{a}`"))?,
            Placeholder::GroupValue => self
                .group_value
                .clone()
                .ok_or_else(|| "`{{group.value}}` has no group here".to_owned())?,
            Placeholder::StepId => self.key.step.to_string(),
            Placeholder::Attempt => self.attempt.to_string(),
            Placeholder::Needs { step, key } => match self.needs.get(step) {
                None => return Err(format!("`{{{{{p}}}}}`: no output of `{step}` was provided")),
                Some(None) => {
                    return Err(format!(
                        "`{{{{{p}}}}}`: `{step}` was skipped by its `when`; it has no output"
                    ));
                }
                Some(Some(out)) => match out.get(key) {
                    None => {
                        return Err(format!(
                            "`{{{{{p}}}}}`: the output of `{step}` has no key `{key}`"
                        ));
                    }
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) => String::new(),
                    Some(other) => other.to_string(),
                },
            },
        })
    }

    /// Renders a template for this attempt.
    pub fn render(&self, t: &Template) -> Result<String, String> {
        t.render(|r| match r {
            Ref::Placeholder(p) => self.value(p),
            Ref::Env(name) => self.vars.get(name),
        })
    }

    /// Renders a connection URL template for this attempt: each placeholder's value encoded
    /// for its URL component, or refused (a host that is not a host name, say); `${VAR}`s
    /// spliced as they are.
    pub fn render_url(&self, t: &UrlTemplate) -> Result<String, String> {
        t.render(|r| match r {
            Ref::Placeholder(p) => self.value(p).map(Fill::Value),
            Ref::Env(name) => self.vars.get(name).map(Fill::Value),
        })
        .map_err(|e| e.to_string())
    }

    /// The sqlx URL of connection `name` for this attempt: its template rendered, then mapped by
    /// the first resolver that knows its kind. Resolvers may read files (the binary's
    /// `sandbox://` one does): they run on tokio's blocking threads.
    pub async fn connection_url(&self, name: &ConnectionName) -> Result<String, String> {
        let conn = self
            .connections
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| format!("the workflow declares no connection `{name}`"))?;
        let url = self.render_url(&conn.url).map_err(|e| format!("connection `{name}`: {e}"))?;
        match self.resolvers.resolve_blocking(url.clone()).await {
            Some(r) => r.map_err(|e| {
                format!("connection `{name}` ({}): {}", redact_url(&url), redact_text(&e))
            }),
            None => Ok(url),
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// Failed; `retryable: false` when another attempt cannot help.
    Failed {
        /// Whether the retry policy applies.
        retryable: bool,
    },
    /// Stopped on request.
    Cancelled,
}

/// What an attempt produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The instance's output (a JSON object), on success.
    pub output: Option<Value>,
    /// What went wrong.
    pub error: Option<String>,
    /// Process exit code, for commands.
    pub exit_code: Option<i32>,
    /// Last [`TAIL_BYTES`] of stdout.
    pub stdout_tail: String,
    /// Last [`TAIL_BYTES`] of stderr.
    pub stderr_tail: String,
}

impl Report {
    /// Success with an output.
    pub fn succeeded(output: Value) -> Self {
        Self {
            outcome: Outcome::Succeeded,
            output: Some(output),
            error: None,
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        }
    }

    /// A failure before anything ran.
    pub fn failed(error: impl Into<String>, retryable: bool) -> Self {
        Self {
            outcome: Outcome::Failed { retryable },
            output: None,
            error: Some(error.into()),
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        }
    }
}

/// Asks running attempts to stop (cancel, second Ctrl-C). Cloneable; `stop()` reaches all.
#[derive(Clone, Debug)]
pub struct Stop {
    rx: tokio::sync::watch::Receiver<bool>,
}

/// The sending side of [`Stop`].
#[derive(Debug)]
pub struct StopHandle {
    tx: tokio::sync::watch::Sender<bool>,
}

impl StopHandle {
    /// A new handle and its signal.
    pub fn new() -> (Self, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Self { tx }, Stop { rx })
    }

    /// Stops every attempt holding the signal.
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

impl Stop {
    /// Resolves once a stop is requested (at once if it already was).
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Executes one kind of action.
pub trait Executor: Send + Sync {
    /// The action kind it runs (`command`).
    fn kind(&self) -> &'static str;

    /// Runs one attempt.
    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report>;
}

/// The executors available to a run, by action kind, and the connection URL resolvers.
#[derive(Clone, Default)]
pub struct Registry {
    executors: BTreeMap<&'static str, Arc<dyn Executor>>,
    resolvers: Resolvers,
    pools: Pools,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.executors.keys()).finish()
    }
}

impl Registry {
    /// The built-in executors: `command`, `sql`, `copy`, `compare`, `audit`, `pitr`.
    pub fn builtin() -> Self {
        let pools = Pools::default();
        let mut r = Self::default();
        r.add(Arc::new(command::CommandExecutor));
        r.add(Arc::new(sql::SqlExecutor::new(pools.clone())));
        r.add(Arc::new(slice::CopyExecutor::new(pools.clone())));
        r.add(Arc::new(slice::CompareExecutor::new(pools.clone())));
        r.add(Arc::new(audit::AuditExecutor));
        r.add(Arc::new(pitr::PitrExecutor));
        r.pools = pools;
        r
    }

    /// The connection pools the built-in SQL executors share; read-only paths
    /// ([`readonly`]: the preflight, schema discovery) use them too.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Adds a connection URL resolver (tried in the order added).
    pub fn add_resolver(&mut self, r: Resolver) {
        self.resolvers.0.push(r);
    }

    /// The connection URL resolvers, in the order added.
    pub fn resolvers(&self) -> &Resolvers {
        &self.resolvers
    }

    /// Adds (or replaces) the executor of its kind.
    pub fn add(&mut self, e: Arc<dyn Executor>) {
        self.executors.insert(e.kind(), e);
    }

    /// Whether some executor runs `kind`.
    pub fn supports(&self, kind: &str) -> bool {
        self.executors.contains_key(kind)
    }

    /// The supported kinds.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.executors.keys().copied().collect()
    }

    /// Runs one attempt with the executor of its action kind, then enforces the restore-point
    /// pin on its output.
    pub fn run(&self, mut attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        attempt.resolvers.clone_from(&self.resolvers);
        let kind = attempt.action.kind();
        let Some(executor) = self.executors.get(kind).cloned() else {
            return Box::pin(async move {
                Report::failed(format!("no executor for action kind `{kind}`"), false)
            });
        };
        let restore_point = attempt.restore_point;
        Box::pin(async move {
            let mut report = executor.execute(attempt, stop).await;
            // What an attempt reports is stored and shown by `status`, `report` and `log` for
            // as long as the run is kept: no password of a URL it quotes goes with it.
            report.error = report.error.map(|e| redact_text(&e));
            report.stdout_tail = redact_text(&report.stdout_tail);
            report.stderr_tail = redact_text(&report.stderr_tail);
            if report.outcome == Outcome::Succeeded
                && let Err(e) = check_pin(report.output.as_ref(), restore_point)
            {
                report.outcome = Outcome::Failed { retryable: false };
                report.error = Some(e);
            }
            report
        })
    }
}

/// DESIGN.md: an output key `restore_point` that differs from the run's restore point fails the
/// instance permanently: no store of a run may land on another point in time. Instants are
/// compared, not strings (`07:33:00Z` equals `07:33:00.000Z`).
pub fn check_pin(output: Option<&Value>, run: RestorePoint) -> Result<(), String> {
    let Some(reported) = output.and_then(|o| o.get("restore_point")) else { return Ok(()) };
    let same =
        reported.as_str().and_then(|s| s.parse::<RestorePoint>().ok()).is_some_and(|rp| rp == run);
    if same {
        Ok(())
    } else {
        Err(format!(
            "restore point mismatch: the step reported {reported}, but the run is pinned to {run}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_compares_instants() {
        let rp: RestorePoint = "2022-04-05T07:33:00Z".parse().unwrap_or_else(|e| panic!("{e}"));
        let ok = serde_json::json!({"restore_point": "2022-04-05T07:33:00.000Z", "rows": 3});
        assert!(check_pin(Some(&ok), rp).is_ok());
        assert!(
            check_pin(Some(&serde_json::json!({"rows": 3})), rp).is_ok(),
            "no claim, nothing to check"
        );
        assert!(check_pin(None, rp).is_ok());
        let early = serde_json::json!({"restore_point": "2022-04-05T07:28:00Z"});
        let e = check_pin(Some(&early), rp).unwrap_err();
        assert_eq!(
            e,
            "restore point mismatch: the step reported \"2022-04-05T07:28:00Z\", but the run is pinned to 2022-04-05T07:33:00Z"
        );
        assert!(check_pin(Some(&serde_json::json!({"restore_point": 5})), rp).is_err());
    }
}
