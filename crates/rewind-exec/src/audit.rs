//! `kind = "audit"`: the consistency audit. Every dependency that reported a `restore_point`
//! must have reported the run's, and every dependency in `require` must have reported one
//! (unless `when` skipped it). The incident's lesson: stores restored to different points in time
//! were found only by a later audit; here a site cannot be activated until the audit passes.

use futures::future::BoxFuture;
use rewind_model::{Action, RestorePoint};
use serde_json::{Map, Value, json};

use crate::{Attempt, Executor, Outcome, Report, Stop};

/// Runs `audit` actions. No I/O: it reads the outputs of the step's dependencies.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditExecutor;

impl Executor for AuditExecutor {
    fn kind(&self) -> &'static str {
        "audit"
    }

    fn execute(&self, attempt: Attempt, _stop: Stop) -> BoxFuture<'static, Report> {
        Box::pin(async move { audit(&attempt) })
    }
}

fn audit(a: &Attempt) -> Report {
    let Action::Audit(action) = &*a.action else {
        return Report::failed("the audit executor got another kind of action", false);
    };
    let mut stores = Map::new();
    let mut problems = Vec::new();
    for (step, out) in &a.needs {
        let Some(out) = out else { continue }; // skipped by `when`
        match out.get("restore_point") {
            Some(v) => match v.as_str().and_then(|s| s.parse::<RestorePoint>().ok()) {
                Some(rp) if rp == a.restore_point => {
                    stores.insert(step.to_string(), v.clone());
                }
                _ => problems.push(format!("`{step}` reached {v}")),
            },
            None if action.require.contains(step) => {
                problems.push(format!("`{step}` reported no restore point"))
            }
            None => {}
        }
    }
    for r in &action.require {
        if !a.needs.contains_key(r) {
            problems.push(format!("no output of `{r}` was provided"));
        }
    }
    if !problems.is_empty() {
        return Report::failed(
            format!(
                "restore points differ: the run is pinned to {}, but {}",
                a.restore_point,
                problems.join(", ")
            ),
            false,
        );
    }
    Report {
        outcome: Outcome::Succeeded,
        output: Some(json!({
            "restore_point": a.restore_point.to_string(),
            "checked": stores.len(),
            "stores": Value::Object(stores),
        })),
        error: None,
        exit_code: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}
