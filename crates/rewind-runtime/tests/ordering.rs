//! The drive loop's ordering rules, asserted directly against a fake checkpoint store, with
//! tokio's paused clock (no wall-clock sleeps, no database, no processes):
//!
//! - a real action starts only once its attempt's start is committed (after a crash the record
//!   says which attempts may have been under way);
//! - an instance starts only once every dependency's success is committed (nothing depends on an
//!   outcome that a crash could still lose);
//! - every attempt's end is recorded for its own instance and attempt, a panicking executor
//!   included.
//!
//! The fake executor checks the first two rules at the moment it is called, by reading the fake
//! store: what it sees is exactly what was committed.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rewind_exec::{Attempt, Executor, Outcome, Registry, Report, Stop, Vars};
use rewind_model::{
    AttemptOutcome, EventKind, InstanceKey, InstanceState, Plan, RunId, RunState, TargetSet,
    TargetsFormat, Workflow,
};
use rewind_runtime::{DriveOptions, Ended, Lease, Mode, NoObserver, RunSpec, create_run, drive};
use rewind_scheduler::Priority;
use rewind_store::{
    AttemptRecord, Batch, DrillRecord, EventRecord, Holder, Holding, InstanceRecord, InstanceRow,
    NewEvent, NewInstance, NewRun, RunRecord, Store, StoreError,
};

/// One run, in memory.
#[derive(Clone, Debug)]
struct Stored {
    record: RunRecord,
    instances: Vec<InstanceRecord>,
    attempts: BTreeMap<(u32, u32), AttemptRecord>,
    events: Vec<NewEvent>,
}

/// A checkpoint store in memory that keeps every committed batch.
#[derive(Clone, Default)]
struct FakeStore {
    runs: Arc<Mutex<HashMap<RunId, Stored>>>,
    batches: Arc<Mutex<Vec<Batch>>>,
}

impl FakeStore {
    fn with<T>(&self, id: RunId, f: impl FnOnce(&mut Stored) -> T) -> T {
        let mut runs = self.runs.lock().unwrap();
        f(runs.get_mut(&id).unwrap())
    }

    fn instance(&self, id: RunId, key: &str) -> InstanceRecord {
        self.with(id, |r| r.instances.iter().find(|i| i.key == key).cloned().unwrap())
    }
}

impl Store for FakeStore {
    async fn create_run(
        &self,
        run: &NewRun,
        instances: &mut (dyn Iterator<Item = NewInstance> + Send),
        events: &[NewEvent],
    ) -> rewind_store::Result<()> {
        let instances = instances
            .map(|i| InstanceRecord {
                idx: i.idx,
                key: i.key,
                step: i.step,
                target: i.target,
                group: i.group,
                state: i.state,
                attempts: 0,
                failures: 0,
                retry_at_s: None,
                finished_s: None,
                output: None,
                error: None,
            })
            .collect();
        let record = RunRecord {
            spec: run.clone(),
            state: RunState::Running,
            wave: 1,
            clock_s: 0.0,
            finished_s: None,
            reason: None,
            cancel_requested: false,
            owner: None,
            heartbeat_unix_ms: None,
        };
        let stored =
            Stored { record, instances, attempts: BTreeMap::new(), events: events.to_vec() };
        self.runs.lock().unwrap().insert(run.id, stored);
        Ok(())
    }

    async fn run(&self, id: RunId) -> rewind_store::Result<Option<RunRecord>> {
        Ok(self.runs.lock().unwrap().get(&id).map(|r| r.record.clone()))
    }

    async fn runs(&self) -> rewind_store::Result<Vec<RunRecord>> {
        Ok(self.runs.lock().unwrap().values().map(|r| r.record.clone()).collect())
    }

    async fn instances(&self, id: RunId) -> rewind_store::Result<Vec<InstanceRecord>> {
        Ok(self.with(id, |r| r.instances.clone()))
    }

    async fn instance_states(&self, id: RunId) -> rewind_store::Result<Vec<InstanceRow>> {
        Ok(self.with(id, |r| {
            r.instances
                .iter()
                .map(|i| InstanceRow {
                    idx: i.idx,
                    state: i.state,
                    attempts: i.attempts,
                    failures: i.failures,
                    retry_at_s: i.retry_at_s,
                    finished_s: i.finished_s,
                    output: i.output.clone(),
                })
                .collect()
        }))
    }

    async fn attempts(&self, id: RunId) -> rewind_store::Result<Vec<AttemptRecord>> {
        Ok(self.with(id, |r| r.attempts.values().cloned().collect()))
    }

    async fn events(&self, id: RunId) -> rewind_store::Result<Vec<EventRecord>> {
        Ok(self.with(id, |r| {
            r.events
                .iter()
                .enumerate()
                .map(|(i, e)| EventRecord { seq: i as i64, event: e.clone() })
                .collect()
        }))
    }

    async fn commit(&self, id: RunId, owner: &str, batch: &Batch) -> rewind_store::Result<()> {
        // A real commit waits for the database: whatever was spawned meanwhile gets to run.
        tokio::task::yield_now().await;
        self.with(id, |r| {
            if r.record.owner.as_deref() != Some(owner) {
                return Err(StoreError::LeaseLost { run: id, owner: owner.to_owned() });
            }
            r.record.clock_s = batch.clock_s;
            r.record.heartbeat_unix_ms = Some(batch.heartbeat_unix_ms);
            if let Some(end) = &batch.end {
                r.record.state = end.state;
                r.record.finished_s = Some(end.finished_s);
                r.record.reason.clone_from(&end.reason);
            }
            for u in &batch.instances {
                let i = &mut r.instances[u.idx as usize];
                i.state = u.state;
                i.attempts = u.attempts;
                i.failures = u.failures;
                i.retry_at_s = u.retry_at_s;
                i.finished_s = u.finished_s;
                if u.output.is_some() {
                    i.output.clone_from(&u.output);
                }
                i.error.clone_from(&u.error);
            }
            for a in &batch.attempts {
                r.attempts.insert((a.idx, a.attempt), a.clone());
            }
            r.events.extend(batch.events.iter().cloned());
            Ok(())
        })?;
        self.batches.lock().unwrap().push(batch.clone());
        Ok(())
    }

    async fn claim(
        &self,
        id: RunId,
        owner: &str,
        expected: Option<&Holding>,
        now_unix_ms: i64,
    ) -> rewind_store::Result<bool> {
        Ok(self.with(id, |r| {
            let matches = match expected {
                None => r.record.owner.is_none(),
                Some(h) => {
                    r.record.owner.as_deref() == Some(h.owner.as_str())
                        && r.record.heartbeat_unix_ms == h.heartbeat_unix_ms
                }
            };
            if matches {
                r.record.owner = Some(owner.to_owned());
                r.record.heartbeat_unix_ms = Some(now_unix_ms);
            }
            matches
        }))
    }

    async fn release(&self, id: RunId, owner: &str) -> rewind_store::Result<()> {
        self.with(id, |r| {
            if r.record.owner.as_deref() == Some(owner) {
                r.record.owner = None;
            }
        });
        Ok(())
    }

    async fn request_cancel(&self, id: RunId, event: &NewEvent) -> rewind_store::Result<()> {
        self.with(id, |r| {
            r.record.cancel_requested = true;
            r.events.push(event.clone());
        });
        Ok(())
    }

    async fn cancel_requested(&self, id: RunId) -> rewind_store::Result<bool> {
        Ok(self.with(id, |r| r.record.cancel_requested))
    }

    async fn reset_failed(&self, _: RunId, _: &NewEvent) -> rewind_store::Result<u64> {
        unimplemented_here("reset_failed")
    }

    async fn accept_wave(&self, _: RunId, _: u32, _: &NewEvent) -> rewind_store::Result<()> {
        unimplemented_here("accept_wave")
    }

    async fn holders(&self, _: &[String]) -> rewind_store::Result<Vec<Holder>> {
        Ok(Vec::new())
    }

    async fn record_drill(&self, _: &DrillRecord) -> rewind_store::Result<()> {
        unimplemented_here("record_drill")
    }

    async fn drills(&self, _: Option<&str>) -> rewind_store::Result<Vec<DrillRecord>> {
        unimplemented_here("drills")
    }

    async fn drill(&self, _: &str) -> rewind_store::Result<Option<DrillRecord>> {
        unimplemented_here("drill")
    }
}

/// Operators' commands the drive loop never calls.
fn unimplemented_here<T>(what: &str) -> T {
    panic!("the drive loop called {what}, an operator's command")
}

/// What an attempt does, by instance key (default: succeed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    /// Fail retryably on the first attempt, then succeed.
    FailOnce,
    Panic,
}

/// The executor of every `command` step: checks the ordering rules against the store when it is
/// called, then takes a second of (paused) time.
struct Checking {
    store: FakeStore,
    plan: Arc<Plan>,
    run: Arc<Mutex<Option<RunId>>>,
    behaviour: HashMap<String, Behaviour>,
    violations: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<(String, u32)>>>,
}

impl Executor for Checking {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn execute(&self, a: Attempt, _stop: Stop) -> BoxFuture<'static, Report> {
        let key = a.key.to_string();
        let run = self.run.lock().unwrap().unwrap();
        let mut violations = Vec::new();
        // Rule 1: this attempt's start is durable.
        let row = self.store.instance(run, &key);
        let started = self.store.with(run, |r| r.attempts.get(&(row.idx, a.attempt)).cloned());
        if row.state != InstanceState::Running || row.attempts != a.attempt {
            violations.push(format!("{key} attempt {} started while stored as {row:?}", a.attempt));
        }
        if !started.is_some_and(|s| s.outcome.is_none() && s.ended_s.is_none()) {
            violations.push(format!(
                "{key} attempt {} started before its start was committed",
                a.attempt
            ));
        }
        // Rule 2: every dependency's success is durable.
        let id = self.plan.find(&key.parse::<InstanceKey>().unwrap()).unwrap();
        for dep in self.plan.dependencies(id) {
            let dep_key = self.plan.key(dep).to_string();
            let st = self.store.instance(run, &dep_key).state;
            if !st.satisfies() {
                violations.push(format!("{key} started while its dependency {dep_key} is {st}"));
            }
        }
        self.violations.lock().unwrap().extend(violations);
        self.calls.lock().unwrap().push((key.clone(), a.attempt));
        let behaviour = self.behaviour.get(&key).copied().unwrap_or(Behaviour::Succeed);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match behaviour {
                Behaviour::Panic => panic!("a bug in the executor of {key}"),
                Behaviour::FailOnce if a.attempt == 1 => Report::failed("transient", true),
                _ => Report {
                    outcome: Outcome::Succeeded,
                    output: Some(serde_json::json!({"key": key})),
                    error: None,
                    exit_code: Some(0),
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                },
            }
        })
    }
}

const WORKFLOW: &str = r#"name = "order"
target_kind = "site"
[defaults]
retries = 1
backoff = { initial = "2s", max = "2s", factor = 1.0, jitter = false }
[resources]
slots = 2
[[steps]]
id = "pre"
scope = "run"
estimate = "1m"
action = { kind = "command", program = "x" }
[[steps]]
id = "shard"
scope = "group:shard"
needs = ["pre"]
estimate = "1h"
action = { kind = "command", program = "x" }
[[steps]]
id = "a"
needs = ["shard"]
resource = "slots"
estimate = "1m"
action = { kind = "command", program = "x" }
[[steps]]
id = "b"
needs = ["a"]
estimate = "1m"
action = { kind = "command", program = "x" }
[[steps]]
id = "done"
scope = "run"
needs = ["b"]
estimate = "1m"
action = { kind = "command", program = "x" }
"#;

const TARGETS: &str = "id,kind,shard\n\
    00000000-0000-4000-8000-000000000001,site,s1\n\
    00000000-0000-4000-8000-000000000002,site,s1\n\
    00000000-0000-4000-8000-000000000003,site,s2\n";

const T3: &str = "00000000-0000-4000-8000-000000000003";

struct Harness {
    store: FakeStore,
    run: RunId,
    violations: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<(String, u32)>>>,
    registry: Registry,
}

async fn harness(behaviour: &[(&str, Behaviour)]) -> Harness {
    let wf = Workflow::parse("order.toml", WORKFLOW).unwrap();
    let targets = TargetSet::parse("t.csv", TARGETS, TargetsFormat::Csv).unwrap();
    let plan = Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap();
    let store = FakeStore::default();
    let run_cell = Arc::new(Mutex::new(None));
    let checking = Checking {
        store: store.clone(),
        plan: Arc::new(plan.clone()),
        run: run_cell.clone(),
        behaviour: behaviour.iter().map(|(k, b)| ((*k).to_owned(), *b)).collect(),
        violations: Arc::default(),
        calls: Arc::default(),
    };
    let (violations, calls) = (checking.violations.clone(), checking.calls.clone());
    let mut registry = Registry::default();
    registry.add(Arc::new(checking));
    let spec = RunSpec {
        workflow_file: "order.toml".into(),
        workflow_text: WORKFLOW.into(),
        targets_file: "t.csv".into(),
        targets_text: TARGETS.into(),
        workdir: "/".into(),
        cwd: "/".into(),
        mode: Mode::Real,
        max_running: None,
        priority: Priority::CriticalPath,
        vars: Vars::default(),
        waves: Vec::new(),
        halt_rate: 0.05,
    };
    let run = create_run(&store, &plan, &spec, &registry).await.unwrap();
    *run_cell.lock().unwrap() = Some(run);
    Harness { store, run, violations, calls, registry }
}

impl Harness {
    async fn drive(&self) -> rewind_runtime::Summary {
        let (lease, _) = Lease::acquire(&self.store, self.run).await.unwrap();
        let mut observer = NoObserver;
        let opts = DriveOptions {
            registry: self.registry.clone(),
            observer: &mut observer,
            signals: false,
            progress_every: Duration::from_secs(1),
            tick: Duration::from_secs(1),
            vars: Vars::default(),
        };
        drive(&self.store, lease, opts).await.unwrap()
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn starts_and_successes_are_durable_before_anything_depends_on_them() {
    let h = harness(&[(&format!("a/{T3}"), Behaviour::FailOnce)]).await;
    let summary = h.drive().await;
    assert_eq!(summary.ended, Ended::Succeeded);
    assert_eq!(h.violations(), Vec::<String>::new());
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1 + 2 + 3 + 1 + 3 + 1, "every instance once, the flaky one twice");
    assert!(calls.contains(&(format!("a/{T3}"), 2)), "{calls:?}");
    // Every started attempt has its end recorded, for its own instance.
    let attempts = h.store.with(h.run, |r| r.attempts.clone());
    assert_eq!(attempts.len(), calls.len());
    assert!(attempts.values().all(|a| a.ended_s.is_some() && a.outcome.is_some()));
    let idx = h.store.instance(h.run, &format!("a/{T3}")).idx;
    assert_eq!(attempts[&(idx, 1)].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(attempts[&(idx, 2)].outcome, Some(AttemptOutcome::Succeeded));
    // And no dependent's start is committed before its dependencies' successes: in a later
    // commit, or in the same one (the group commit of an outcome with the starts it released;
    // the executor is called only after that commit, which `violations` checks).
    let batches = h.store.batches.lock().unwrap().clone();
    let committed_in = |kind: EventKind, key: &str| {
        batches
            .iter()
            .position(|b| b.events.iter().any(|e| e.kind == kind && e.key.as_deref() == Some(key)))
            .unwrap_or_else(|| panic!("no {kind} of {key}"))
    };
    for t in ["00000000-0000-4000-8000-000000000001", T3] {
        let a_done = committed_in(EventKind::InstanceSucceeded, &format!("a/{t}"));
        let b_start = committed_in(EventKind::InstanceStarted, &format!("b/{t}"));
        assert!(a_done <= b_start, "a/{t} succeeded in batch {a_done}, b/{t} started in {b_start}");
    }
    assert_eq!(h.store.with(h.run, |r| r.record.state), RunState::Succeeded);
}

/// A panicking executor fails its own instance, permanently, and nothing else (issue 11: a task
/// error mapped to instance 0, and was retried).
#[tokio::test(start_paused = true)]
async fn a_panicking_executor_fails_its_own_attempt_only() {
    let h = harness(&[(&format!("b/{T3}"), Behaviour::Panic)]).await;
    let summary = h.drive().await;
    assert_eq!(summary.ended, Ended::Failed);
    assert_eq!(h.violations(), Vec::<String>::new());
    let row = h.store.instance(h.run, &format!("b/{T3}"));
    assert_eq!((row.state, row.attempts), (InstanceState::Failed, 1), "not retried: {row:?}");
    let error = row.error.unwrap();
    assert!(
        error.contains("the `command` executor panicked: a bug in the executor of b/"),
        "{error}"
    );
    let attempt = h.store.with(h.run, |r| r.attempts[&(row.idx, 1)].clone());
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Failed));
    // Everything else ran; only the fan-in after every target is blocked.
    let rows = h.store.with(h.run, |r| r.instances.clone());
    let other: Vec<_> =
        rows.iter().filter(|r| r.idx != row.idx).map(|r| (&r.key, r.state)).collect();
    for (key, state) in other {
        let want = if key == "done" { InstanceState::Blocked } else { InstanceState::Succeeded };
        assert_eq!(state, want, "{key}");
    }
    assert_eq!(summary.restored_targets, 2);
}

/// An attempt the previous orchestrator died in is ended as interrupted, durably, before it runs
/// again as the next attempt.
#[tokio::test(start_paused = true)]
async fn an_interrupted_attempt_is_closed_before_it_runs_again() {
    let h = harness(&[]).await;
    // As a crash leaves it: `pre` started (attempt 1 committed), never ended.
    let pre = h.store.instance(h.run, "pre").idx;
    h.store.with(h.run, |r| {
        r.instances[pre as usize].state = InstanceState::Running;
        r.instances[pre as usize].attempts = 1;
        r.attempts.insert(
            (pre, 1),
            AttemptRecord {
                idx: pre,
                attempt: 1,
                started_s: 0.0,
                ended_s: None,
                outcome: None,
                exit_code: None,
                error: None,
                stdout_tail: None,
                stderr_tail: None,
            },
        );
        r.record.owner = Some("elsewhere:1:dead".into());
        r.record.heartbeat_unix_ms = Some(0);
    });
    let summary = h.drive().await;
    assert_eq!(summary.ended, Ended::Succeeded);
    assert_eq!(h.violations(), Vec::<String>::new());
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&("pre".to_owned(), 2)), "attempt 2 runs: {calls:?}");
    let first = h.store.with(h.run, |r| r.attempts[&(pre, 1)].clone());
    assert_eq!(first.outcome, Some(AttemptOutcome::Interrupted));
    // The interruption was committed before attempt 2 was even dispatched.
    let batches = h.store.batches.lock().unwrap().clone();
    let closed = batches
        .iter()
        .position(|b| b.attempts.iter().any(|a| a.idx == pre && a.attempt == 1))
        .unwrap();
    let restarted = batches
        .iter()
        .position(|b| b.attempts.iter().any(|a| a.idx == pre && a.attempt == 2))
        .unwrap();
    assert!(closed < restarted);
}
