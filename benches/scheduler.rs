//! Regression benches for the two halves of the engine:
//!
//! - `scheduler/*`: the sans-I/O scheduler alone, driven over a whole plan in virtual time (no
//!   store, no runtime): decisions per second, one decision = one dispatch plus its outcome.
//! - `store/commit-1000`: group commits of 1,000 instance completions (an instance update, an
//!   attempt row and two events each) to SQLite: checkpointed completions per second.
//!
//! `cargo bench --bench scheduler`

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rewind_model::{
    AttemptOutcome, EventKind, InstanceState, Plan, SyntheticSpec, TargetSet, Workflow,
};
use rewind_scheduler::{Config, Outcome, Priority, Scheduler};
use rewind_store::{
    AttemptRecord, Batch, InstanceUpdate, NewEvent, NewInstance, NewRun, SqlStore, Store,
};

fn plan(sites: usize) -> Plan {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/restore-2.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
    let wf = Workflow::parse("restore-2.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let mut spec = SyntheticSpec::new(sites, 24, 1);
    spec.groups_of.insert("region".parse().unwrap_or_else(|e| panic!("{e}")), 3);
    let targets = TargetSet::synthetic(&wf, &spec);
    Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|d| panic!("{d}"))
}

/// Runs the whole plan through the scheduler in virtual time; returns the makespan.
fn simulate(plan: &Plan, priority: Priority) -> Duration {
    let mut s = Scheduler::new(plan, Config { seed: 1, priority, max_running: None });
    let mut now = Duration::ZERO;
    let mut running = BinaryHeap::new();
    loop {
        for d in s.poll(now) {
            running.push(Reverse((now + plan.estimate(d.id), d.id)));
        }
        s.take_changes();
        let Some(Reverse((t, id))) = running.pop() else { break };
        now = t;
        s.on_outcome(id, Outcome::Succeeded, now);
    }
    now
}

fn scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    for sites in [883, 10_000] {
        let p = plan(sites);
        let runnable = p.instances().iter().filter(|i| !i.skipped).count() as u64;
        g.throughput(Throughput::Elements(runnable));
        g.bench_function(format!("restore-2/{sites}-sites/customers"), |b| {
            b.iter(|| black_box(simulate(&p, Priority::Customers)))
        });
        g.bench_function(format!("restore-2/{sites}-sites/critical-path"), |b| {
            b.iter(|| black_box(simulate(&p, Priority::CriticalPath)))
        });
        g.bench_function(format!("restore-2/{sites}-sites/fifo"), |b| {
            b.iter(|| black_box(simulate(&p, Priority::Fifo)))
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = rt
        .block_on(SqlStore::open(&format!("sqlite://{}/s.db", dir.path().display())))
        .unwrap_or_else(|e| panic!("{e}"));
    let n: u32 = 1_000;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(u64::from(n)));
    g.bench_function("commit-1000/sqlite", |b| {
        b.iter_batched(
            || {
                let id = rewind_model::RunId::from_uuid(uuid::Uuid::new_v4());
                let run = NewRun {
                    id,
                    workflow: "w".into(),
                    workflow_file: "w.toml".into(),
                    workflow_text: String::new(),
                    targets_file: "t.csv".into(),
                    targets_text: String::new(),
                    workdir: "/".into(),
                    cwd: "/".into(),
                    restore_point: "2022-04-05T07:33:00Z".into(),
                    fingerprint: String::new(),
                    simulated: true,
                    seed: 1,
                    fail_rate: 0.0,
                    max_running: None,
                    priority: "critical-path".into(),
                    waves: Vec::new(),
                    halt_rate: 0.05,
                    started_by: None,
                    dispatch: rewind_store::Dispatch::Local,
                    instances: u64::from(n),
                    targets: 1,
                    lower_bound_s: 0.0,
                    created_at: String::new(),
                    started_unix_ms: 0,
                };
                let instances: Vec<NewInstance> = (0..n)
                    .map(|i| NewInstance {
                        idx: i,
                        key: format!("s/{i}"),
                        step: "s".into(),
                        target: None,
                        group: None,
                        state: InstanceState::Pending,
                    })
                    .collect();
                rt.block_on(async {
                    store
                        .create_run(&run, &mut instances.into_iter(), &[])
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    store.claim(id, "bench", None, 0).await.unwrap_or_else(|e| panic!("{e}"));
                });
                let event = |i: u32, kind: EventKind| NewEvent {
                    at_s: 1.0,
                    wall: "2026-11-24T00:00:00Z".into(),
                    kind,
                    key: Some(format!("s/{i}")),
                    detail: Some("{\"attempt\":1}".into()),
                };
                let batch = Batch {
                    clock_s: 1.0,
                    heartbeat_unix_ms: 1,
                    instances: (0..n)
                        .map(|i| InstanceUpdate {
                            idx: i,
                            state: InstanceState::Succeeded,
                            attempts: 1,
                            failures: 0,
                            retry_at_s: None,
                            finished_s: Some(1.0),
                            output: None,
                            error: None,
                        })
                        .collect(),
                    attempts: (0..n)
                        .map(|i| AttemptRecord {
                            idx: i,
                            attempt: 1,
                            started_s: 0.0,
                            ended_s: Some(1.0),
                            outcome: Some(AttemptOutcome::Succeeded),
                            exit_code: Some(0),
                            error: None,
                            stdout_tail: None,
                            stderr_tail: None,
                        })
                        .collect(),
                    events: (0..n)
                        .flat_map(|i| {
                            [
                                event(i, EventKind::InstanceStarted),
                                event(i, EventKind::InstanceSucceeded),
                            ]
                        })
                        .collect(),
                    end: None,
                    wave: None,
                };
                (id, batch)
            },
            |(id, batch)| {
                rt.block_on(store.commit(id, "bench", &batch)).unwrap_or_else(|e| panic!("{e}"))
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, scheduler, store);
criterion_main!(benches);
