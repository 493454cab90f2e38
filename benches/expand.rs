//! Plan expansion: `restore-2` over the 883 example sites (the incident), and a 30-step workflow
//! over 100,000 synthetic targets (3,000,000 instances).
//!
//! `cargo bench --bench expand`. Peak memory of the 3 M case: see docs/benchmarks.md (measured
//! with `/usr/bin/time -v rewind plan ...` on the same inputs).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rewind_model::{Plan, RestorePoint, SyntheticSpec, TargetSet, TargetsFormat, Workflow};

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn restore_point() -> RestorePoint {
    "2022-04-05T07:33:00Z".parse().unwrap_or_else(|e| panic!("{e}"))
}

fn expand(c: &mut Criterion) {
    let restore_2 = Workflow::parse("restore-2.toml", &read("workflows/restore-2.toml"))
        .unwrap_or_else(|d| panic!("{d}"));
    let sites =
        TargetSet::parse("sites-883.csv", &read("examples/sites-883.csv"), TargetsFormat::Csv)
            .unwrap_or_else(|d| panic!("{d}"));

    let mut g = c.benchmark_group("expand");
    g.bench_function("restore-2/883-sites", |b| {
        b.iter_batched(
            || (restore_2.clone(), sites.clone()),
            |(w, t)| black_box(Plan::build(w, t, restore_point()).map(|p| p.len())),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("restore-2/883-sites/summary", |b| {
        let plan = Plan::build(restore_2.clone(), sites.clone(), restore_point())
            .unwrap_or_else(|d| panic!("{d}"));
        b.iter(|| black_box(plan.summary()))
    });
    g.finish();

    let synthetic = Workflow::parse("synthetic-30.toml", &read("benches/synthetic-30.toml"))
        .unwrap_or_else(|d| panic!("{d}"));
    let targets = TargetSet::synthetic(&synthetic, &SyntheticSpec::new(100_000, 24, 1));
    let mut g = c.benchmark_group("expand-3M");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("synthetic-30-steps/100000-targets", |b| {
        b.iter_batched(
            || (synthetic.clone(), targets.clone()),
            |(w, t)| black_box(Plan::build(w, t, restore_point()).map(|p| p.len())),
            BatchSize::PerIteration,
        )
    });
    let big = TargetSet::synthetic(&restore_2, &SyntheticSpec::new(100_000, 24, 1));
    g.bench_function("restore-2/100000-targets", |b| {
        b.iter_batched(
            || (restore_2.clone(), big.clone()),
            |(w, t)| black_box(Plan::build(w, t, restore_point()).map(|p| p.len())),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, expand);
criterion_main!(benches);
