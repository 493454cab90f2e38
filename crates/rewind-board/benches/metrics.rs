//! What one `/metrics` scrape costs on the 883-site simulated restore-2 (27,529 instances), on a
//! SQLite checkpoint store: a run stopped half way (unfinished, so every scrape reads its
//! instance states and attempts), through the library and over HTTP; the first scrape (the
//! plan rebuilt from the stored snapshot); a finished run (served from the cache).
//!
//! `cargo bench -p rewind-board --bench metrics`; figures in docs/benchmarks.md.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rewind_board::AppState;
use rewind_board::metrics::{Cache, encode};
use rewind_exec::{Registry, Vars};
use rewind_model::{Plan, RunId, TargetSet, TargetsFormat, Workflow};
use rewind_runtime::{DriveOptions, Lease, Mode, Observer, Progress, RunSpec};
use rewind_scheduler::Priority;
use rewind_store::{SqlStore, Store};

fn read(path: &str) -> String {
    let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Stops a drive once this share of its instances has finished.
struct StopAt(f64, bool);

impl Observer for StopAt {
    fn progress(&mut self, p: &Progress) {
        self.1 = p.counts.finished() as f64 >= self.0 * p.counts.total() as f64;
    }
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
    fn stop_requested(&mut self) -> bool {
        self.1
    }
}

/// A restore-2 run over the 883 example sites, driven until `share` of its instances finished
/// (above 1: to its end), with a 2% failure rate so attempts are retried.
async fn run(store: &SqlStore, share: f64) -> RunId {
    let (workflow, targets) = (read("workflows/restore-2.toml"), read("examples/sites-883.csv"));
    let wf = Workflow::parse("restore-2.toml", &workflow).unwrap();
    let t = TargetSet::parse("sites-883.csv", &targets, TargetsFormat::Csv).unwrap();
    let plan = Plan::build(wf, t, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap();
    assert_eq!(plan.len(), 27_529);
    let spec = RunSpec {
        workflow_file: "restore-2.toml".into(),
        workflow_text: workflow,
        targets_file: "sites-883.csv".into(),
        targets_text: targets,
        workdir: "/tmp".into(),
        cwd: "/tmp".into(),
        mode: Mode::Simulated { seed: 1, fail_rate: 0.02 },
        max_running: None,
        priority: Priority::CriticalPath,
        vars: Vars::from_process(),
        waves: Vec::new(),
        halt_rate: 1.0,
    };
    let id = rewind_runtime::create_run(store, &plan, &spec, &Registry::builtin()).await.unwrap();
    let (lease, _) = Lease::acquire(store, id).await.unwrap();
    let opts = DriveOptions {
        registry: Registry::builtin(),
        observer: &mut StopAt(share, false),
        signals: false,
        progress_every: Duration::ZERO,
        tick: Duration::from_secs(3600),
        vars: Vars::from_process(),
    };
    rewind_runtime::drive(store, lease, opts).await.unwrap();
    id
}

async fn http_get(addr: SocketAddr) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.0 200") || raw.starts_with(b"HTTP/1.1 200"));
    raw.len()
}

fn metrics(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let (store, half, done) = rt.block_on(async {
        let store = rewind_store::open(&url).await.unwrap();
        let half = run(&store, 0.5).await;
        let done = run(&store, 2.0).await;
        (store, half, done)
    });
    let (attempts, rows) = rt.block_on(async {
        (store.attempts(half).await.unwrap().len(), store.instance_states(half).await.unwrap())
    });
    let finished = rows.iter().filter(|r| r.state.is_terminal()).count();
    eprintln!("half-way run: {finished} of {} instances finished, {attempts} attempts", rows.len());

    let cache = Cache::default();
    let (body, _) =
        rt.block_on(async { encode(&cache.collect(&store).await.unwrap(), false) }).unwrap();
    eprintln!("one scrape: {} bytes, {} lines", body.len(), body.lines().count());

    let mut g = c.benchmark_group("metrics/restore-2-883");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("scrape (unfinished + finished run)", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(encode(&cache.collect(&store).await.unwrap(), false).unwrap())
            })
        })
    });
    g.bench_function("first scrape (plans rebuilt)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let cold = Cache::default();
                black_box(encode(&cold.collect(&store).await.unwrap(), false).unwrap())
            })
        })
    });
    g.bench_function("store.instance_states (unfinished run)", |b| {
        b.iter(|| rt.block_on(async { black_box(store.instance_states(half).await.unwrap()) }))
    });
    g.bench_function("store.attempts (unfinished run)", |b| {
        b.iter(|| rt.block_on(async { black_box(store.attempts(half).await.unwrap()) }))
    });
    let addr = rt.block_on(async {
        let served = rewind_store::open(&url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(rewind_board::serve(listener, AppState::new(served), std::future::pending()));
        addr
    });
    g.bench_function("GET /metrics over HTTP", |b| b.iter(|| rt.block_on(http_get(addr))));
    g.finish();
    let _ = done;
}

criterion_group!(benches, metrics);
criterion_main!(benches);
