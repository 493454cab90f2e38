//! The environment a real run needs.

use rewind_exec::Vars;
use rewind_model::Workflow;

use crate::RuntimeError;

/// Refuses a real run whose workflow reads `${VAR}`s that `vars` does not set.
pub(crate) fn check(workflow: &Workflow, vars: &Vars) -> Result<(), RuntimeError> {
    let wanted = workflow.env_vars();
    let missing: Vec<String> = vars.missing(&wanted).into_iter().cloned().collect();
    if missing.is_empty() { Ok(()) } else { Err(RuntimeError::MissingEnv { vars: missing }) }
}
