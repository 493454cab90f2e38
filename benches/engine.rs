//! The engine's own cost, with real checkpointing on SQLite (a fresh file per iteration):
//!
//! - `zero-30x883`: 883 targets × 30 zero-estimate steps (26,490 instances), simulated: durable
//!   completions per second.
//! - `chain-2000`: 2,000 run-scope steps in a chain, simulated: wall time per dependency hop.
//! - `resume-26490/first-dispatch`: from taking the lease of a 26,490-instance run to its first
//!   durable dispatch (load, rebuild the plan, restore the scheduler, commit the first starts).
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rewind_exec::{Registry, Vars};
use rewind_model::{Plan, RestorePoint, TargetSet, TargetsFormat, Workflow};
use rewind_runtime::{DriveOptions, Lease, Mode, NoObserver, Observer, Progress, RunSpec};
use rewind_scheduler::Priority;
use rewind_store::SqlStore;

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn rp() -> RestorePoint {
    "2022-04-05T07:33:00Z".parse().unwrap_or_else(|e| panic!("{e}"))
}

struct Input {
    workflow: String,
    targets: String,
}

impl Input {
    fn plan(&self) -> Plan {
        let wf = Workflow::parse("w.toml", &self.workflow).unwrap_or_else(|d| panic!("{d}"));
        let t = TargetSet::parse("t.csv", &self.targets, TargetsFormat::Csv)
            .unwrap_or_else(|d| panic!("{d}"));
        Plan::build(wf, t, rp()).unwrap_or_else(|d| panic!("{d}"))
    }

    fn spec(&self) -> RunSpec {
        RunSpec {
            workflow_file: "w.toml".into(),
            workflow_text: self.workflow.clone(),
            targets_file: "t.csv".into(),
            targets_text: self.targets.clone(),
            workdir: "/tmp".into(),
            cwd: "/tmp".into(),
            mode: Mode::Simulated { seed: 1, fail_rate: 0.0 },
            max_running: None,
            // The default policy, as `rewind run` drives.
            priority: Priority::default(),
            vars: Vars::from_process(),
            waves: Vec::new(),
            halt_rate: 1.0,
        }
    }
}

/// A fresh store with one created (not yet driven) run.
async fn created(input: &Input, dir: &tempfile::TempDir) -> (SqlStore, rewind_model::RunId) {
    let store = SqlStore::open(&format!("sqlite://{}/b.db", dir.path().display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = rewind_runtime::create_run(&store, &input.plan(), &input.spec(), &Registry::builtin())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (store, id)
}

async fn drive(
    store: &SqlStore,
    id: rewind_model::RunId,
    observer: &mut dyn Observer,
) -> rewind_runtime::Summary {
    let (lease, _) = Lease::acquire(store, id).await.unwrap_or_else(|e| panic!("{e}"));
    let opts = DriveOptions {
        registry: Registry::builtin(),
        observer,
        signals: false,
        progress_every: Duration::from_secs(3600),
        tick: Duration::from_secs(3600),
        vars: Vars::from_process(),
    };
    rewind_runtime::drive(store, lease, opts).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Records when the first durable turn happened, then asks the run to stop.
struct FirstDispatch(Option<Instant>);

impl Observer for FirstDispatch {
    fn progress(&mut self, _: &Progress) {
        self.0.get_or_insert_with(Instant::now);
    }
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
    fn stop_requested(&mut self) -> bool {
        self.0.is_some()
    }
}

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let zero =
        Input { workflow: read("benches/zero-30.toml"), targets: read("examples/sites-883.csv") };
    let mut chain = String::from("name = \"chain-2000\"\ntarget_kind = \"site\"\n");
    for i in 0..2000 {
        let needs = if i == 0 { String::new() } else { format!("needs = [\"s{:04}\"]\n", i - 1) };
        chain.push_str(&format!(
            "[[steps]]\nid = \"s{i:04}\"\nscope = \"run\"\n{needs}estimate = \"0s\"\naction = {{ kind = \"command\", program = \"true\" }}\n"
        ));
    }
    let chain = Input {
        workflow: chain,
        targets: "id,kind\n00000000-0000-4000-8000-000000000001,site\n".into(),
    };

    let mut g = c.benchmark_group("engine");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(26_490));
    g.bench_function("zero-30x883/create+drive", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            |dir| {
                rt.block_on(async {
                    let (store, id) = created(&zero, &dir).await;
                    let s = drive(&store, id, &mut NoObserver).await;
                    assert_eq!(s.counts.succeeded, 26_490);
                    store.close().await;
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("zero-30x883/drive", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
                let (store, id) = rt.block_on(created(&zero, &dir));
                (dir, store, id)
            },
            |(dir, store, id)| {
                rt.block_on(async {
                    black_box(drive(&store, id, &mut NoObserver).await);
                    store.close().await;
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Elements(2_000));
    g.bench_function("chain-2000/drive", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
                let (store, id) = rt.block_on(created(&chain, &dir));
                (dir, store, id)
            },
            |(dir, store, id)| {
                rt.block_on(async {
                    let s = drive(&store, id, &mut NoObserver).await;
                    assert_eq!(s.counts.succeeded, 2_000);
                    store.close().await;
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("resume-26490/first-dispatch", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
                rt.block_on(async {
                    let (store, id) = created(&zero, &dir).await;
                    // Drive a first turn and stop, so this is a resume of a run under way.
                    drive(&store, id, &mut FirstDispatch(None)).await;
                    let start = Instant::now();
                    let mut first = FirstDispatch(None);
                    drive(&store, id, &mut first).await;
                    total += first.0.map_or(Duration::ZERO, |t| t - start);
                    store.close().await;
                });
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
