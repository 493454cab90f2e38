//! Creating a run: the snapshot of its inputs and every instance, written atomically.

use std::path::PathBuf;

use rewind_exec::{Registry, Vars};
use rewind_model::{EventKind, InstanceState, Plan, RunId, Subject};
use rewind_scheduler::Priority;
use rewind_store::{Dispatch, NewEvent, NewInstance, NewRun, Store};
use serde_json::json;

use crate::RuntimeError;
use crate::lease::{identity, now_unix_ms};

/// How attempts are executed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// For real, by the executors of the process that drives the run.
    Real,
    /// For real, by `rewind worker` processes (`run --dispatch workers`, PostgreSQL only);
    /// stored with the run, so `resume` and `rewind coordinate` drive it the same way.
    Dispatched,
    /// In virtual time: each attempt takes its step's estimate and fails with probability
    /// `fail_rate`, drawn from `seed` and the instance key (reproducible).
    Simulated {
        /// Seed of failures and retry jitter.
        seed: u64,
        /// Probability that an attempt fails.
        fail_rate: f64,
    },
}

/// Everything a run is created from besides its plan.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The workflow file as given.
    pub workflow_file: String,
    /// Its text.
    pub workflow_text: String,
    /// The targets file as given.
    pub targets_file: String,
    /// Its text.
    pub targets_text: String,
    /// Absolute folder of the workflow file.
    pub workdir: PathBuf,
    /// Absolute working directory for commands.
    pub cwd: PathBuf,
    /// Real or simulated.
    pub mode: Mode,
    /// Cap on running instances.
    pub max_running: Option<u32>,
    /// Ready-queue order.
    pub priority: Priority,
    /// What `${VAR}` reads (checked here for a real run; never stored).
    pub vars: Vars,
    /// Staged waves: cumulative target counts at the end of each wave (empty: one wave).
    pub waves: Vec<u32>,
    /// A wave whose share of failed targets exceeds this halts the run.
    pub halt_rate: f64,
}

/// The name of a priority, as stored.
pub(crate) fn priority_name(p: Priority) -> &'static str {
    p.name()
}

/// Writes a new run of `plan`: its snapshot and every instance (pending, or skipped by `when`),
/// in one transaction. Refuses a real run whose actions this build cannot execute.
pub async fn create_run<S: Store>(
    store: &S,
    plan: &Plan,
    spec: &RunSpec,
    registry: &Registry,
) -> Result<RunId, RuntimeError> {
    if matches!(spec.mode, Mode::Real | Mode::Dispatched) {
        crate::env::check(plan.workflow(), &spec.vars)?;
        for step in &plan.workflow().steps {
            let kind = step.action.kind();
            if !registry.supports(kind) {
                return Err(RuntimeError::Unsupported {
                    step: step.id.to_string(),
                    kind: kind.to_owned(),
                    available: registry.kinds().join(", "),
                });
            }
        }
    }
    let uuid = uuid::Uuid::now_v7();
    let id = RunId::from_uuid(uuid);
    let (simulated, seed, fail_rate) = match spec.mode {
        Mode::Real | Mode::Dispatched => (false, uuid.as_u64_pair().1, 0.0),
        Mode::Simulated { seed, fail_rate } => (true, seed, fail_rate),
    };
    let now = now_unix_ms();
    let created_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let lb = plan.lower_bound();
    let who = identity().await;
    let run = NewRun {
        id,
        workflow: plan.workflow().name.clone(),
        workflow_file: spec.workflow_file.clone(),
        workflow_text: spec.workflow_text.clone(),
        targets_file: spec.targets_file.clone(),
        targets_text: spec.targets_text.clone(),
        workdir: spec.workdir.display().to_string(),
        cwd: spec.cwd.display().to_string(),
        restore_point: plan.restore_point().to_string(),
        fingerprint: plan.fingerprint().to_string(),
        simulated,
        seed,
        fail_rate,
        max_running: spec.max_running,
        priority: priority_name(spec.priority).to_owned(),
        instances: plan.len() as u64,
        targets: plan.targets().len() as u64,
        lower_bound_s: lb.makespan.as_secs_f64(),
        created_at: created_at.clone(),
        started_unix_ms: now,
        waves: spec.waves.clone(),
        halt_rate: spec.halt_rate,
        started_by: Some(format!("{}@{}", who.user, who.host)),
        dispatch: if spec.mode == Mode::Dispatched { Dispatch::Workers } else { Dispatch::Local },
    };
    let targets = plan.targets().targets();
    let mut instances = plan.ids().map(|i| {
        let inst = plan.instance(i);
        NewInstance {
            idx: i.index() as u32,
            key: plan.key(i).to_string(),
            step: plan.step_of(i).id.to_string(),
            target: match inst.subject {
                Subject::Target(t) => Some(targets[t as usize].id.to_string()),
                _ => None,
            },
            group: plan.group_of(i).map(|g| g.value.clone()),
            state: if inst.skipped { InstanceState::Skipped } else { InstanceState::Pending },
        }
    });
    let event = NewEvent {
        at_s: 0.0,
        wall: created_at,
        kind: EventKind::RunCreated,
        key: None,
        detail: Some(
            json!({
                "workflow": spec.workflow_file,
                "targets": spec.targets_file,
                "target_count": targets.len(),
                "instances": plan.len(),
                "restore_point": plan.restore_point().to_string(),
                "fingerprint": plan.fingerprint().to_string(),
                "simulated": simulated,
                "seed": seed,
                "fail_rate": fail_rate,
                "waves": spec.waves,
                "halt_on_failure_rate": spec.halt_rate,
                "user": who.user,
                "host": who.host,
            })
            .to_string(),
        ),
    };
    store.create_run(&run, &mut instances, &[event]).await?;
    Ok(id)
}
