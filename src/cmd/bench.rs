//! `rewind bench`: time-to-restore of a batch, simulated through the real scheduler and a real
//! (temporary) checkpoint store, for capacity planning ("what if we had 16 DB restore slots?").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use rewind_exec::{Registry, Vars};
use rewind_model::{
    AttrName, Plan, PoolName, RestorePoint, Scope, SyntheticSpec, TargetSet, Workflow,
};
use rewind_runtime::{DriveOptions, Lease, Mode, NoObserver, RunSpec};
use rewind_scheduler::Priority;
use rewind_store::SqlStore;
use serde::Serialize;

use crate::chart::{Series, restored_over_time};
use crate::exit::{Exit, refused};
use crate::observer::Display;
use crate::output::{human_s, thousands};
use crate::{inputs, store};

/// Regions of the synthetic sites unless `--regions` or `--groups region=K` says otherwise.
const DEFAULT_REGIONS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PolicyArg {
    /// Sites back one after another, the run's end near its lower bound (the default policy).
    Customers,
    /// Longest remaining path first.
    CriticalPath,
    /// Ready order, no priorities: the baseline.
    Fifo,
    /// All three, side by side.
    All,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workflow to simulate; give it more than once to compare workflows.
    #[arg(long = "workflow", required = true, value_name = "W")]
    workflows: Vec<PathBuf>,
    /// Number of synthetic sites.
    #[arg(long)]
    sites: usize,
    /// Distinct values of every grouping attribute but `region` (shards).
    #[arg(long, default_value_t = 24)]
    shards: usize,
    /// Distinct values of the `region` grouping attribute (the sandbox has 3).
    #[arg(long, default_value_t = DEFAULT_REGIONS)]
    regions: usize,
    /// Distinct values of one grouping attribute (repeatable), e.g. region=3.
    #[arg(long = "groups", value_name = "ATTR=K")]
    groups: Vec<String>,
    /// Override a pool's capacity (repeatable): what if we had 16 DB restore slots?
    #[arg(long = "capacity", value_name = "POOL=N")]
    capacities: Vec<String>,
    /// Seed of the synthetic sites, simulated failures and retry jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scheduling policy; by default all three, to show what each buys.
    #[arg(long, value_enum, default_value = "all")]
    policy: PolicyArg,
    /// Probability that a simulated attempt fails.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Restore point of the simulated runs.
    #[arg(long, default_value = "2022-04-05T07:33:00Z")]
    restore_point: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print Markdown tables (for docs/benchmarks.md).
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// Also draw the % of sites restored over time, as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// One simulated run of one workflow under one policy.
#[derive(Debug, Serialize)]
struct RunResult {
    policy: &'static str,
    makespan_s: f64,
    ratio: f64,
    restored: usize,
    failed: usize,
    blocked: usize,
    ttr_mean_s: Option<f64>,
    ttr_p50_s: Option<f64>,
    ttr_p95_s: Option<f64>,
    /// Area under the % restored curve up to the lower bound, over the same area for the ideal
    /// curve (every site back at its own earliest finish); `None` when the ideal area is zero.
    area_fraction: Option<f64>,
    /// % of sites restored at hour 0, 1, 2, ... up to the end of the run.
    restored_by_hour: Vec<f64>,
    wall_s: f64,
    instances_per_s: f64,
    peak_rss_bytes: Option<u64>,
    checkpoints: u64,
    #[serde(skip)]
    finish_s: Vec<f64>,
}

/// One workflow's bench.
#[derive(Debug, Serialize)]
struct BenchResult {
    workflow: String,
    file: String,
    sites: usize,
    shards: usize,
    /// Regions of the synthetic sites (`--regions`, or `--groups region=K`).
    regions: usize,
    groups: BTreeMap<String, usize>,
    seed: u64,
    fail_rate: f64,
    capacity: BTreeMap<String, u32>,
    instances: usize,
    runnable: usize,
    lower_bound_s: f64,
    bound_by: String,
    critical_path_s: f64,
    /// Mean of the sites' earliest possible restore times (own critical path, pools unlimited).
    ideal_mean_s: f64,
    runs: Vec<RunResult>,
}

#[derive(Debug, Serialize)]
struct Output {
    benches: Vec<BenchResult>,
}

fn parse_capacity(raw: &str) -> Result<(PoolName, u32)> {
    let bad = || {
        refused(format!(
            "rewind: --capacity {raw:?}: expected POOL=N with N at least 1, e.g. db_restore=16"
        ))
    };
    let (name, n) = raw.split_once('=').ok_or_else(bad)?;
    let name = PoolName::new(name.trim())
        .map_err(|e| refused(format!("rewind: --capacity {raw:?}: {e}")))?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok((name, n))
}

/// Peak resident set size of this process so far (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

pub fn run(args: &Args) -> Result<Exit> {
    if args.sites == 0 || args.shards == 0 || args.regions == 0 {
        return Err(refused("rewind: --sites, --shards and --regions must be at least 1"));
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err(refused(format!(
            "rewind: --fail-rate {} must be between 0 and 1",
            args.fail_rate
        )));
    }
    let rp: RestorePoint = inputs::restore_point(&args.restore_point)?;
    let caps = args.capacities.iter().map(|c| parse_capacity(c)).collect::<Result<Vec<_>>>()?;
    let policies: Vec<Priority> = match args.policy {
        PolicyArg::Customers => vec![Priority::Customers],
        PolicyArg::CriticalPath => vec![Priority::CriticalPath],
        PolicyArg::Fifo => vec![Priority::Fifo],
        PolicyArg::All => Priority::ALL.to_vec(),
    };

    // Read and check every input before simulating anything.
    let mut prepared = Vec::new();
    for path in &args.workflows {
        let text = std::fs::read_to_string(path).map_err(|e| {
            refused(format!("rewind: cannot read workflow `{}`: {e}", path.display()))
        })?;
        let original = inputs::workflow(path)?;
        let own: Vec<(PoolName, u32)> =
            caps.iter().filter(|(n, _)| original.pool(n).is_some()).cloned().collect();
        let text = if own.is_empty() {
            text
        } else {
            Workflow::with_capacities(&text, &own)
                .map_err(|e| refused(format!("rewind: {}: {e}", path.display())))?
        };
        let wf = Workflow::parse(&path.display().to_string(), &text)
            .map_err(|d| refused(inputs::render(&d, path)))?;
        prepared.push((path.clone(), text, wf));
    }
    for (name, _) in &caps {
        if !prepared.iter().any(|(_, _, wf)| wf.pool(name).is_some()) {
            return Err(refused(format!(
                "rewind: --capacity {name}=...: no workflow has a resource `{name}`"
            )));
        }
    }

    let mut spec = SyntheticSpec::new(args.sites, args.shards, args.seed);
    for raw in &args.groups {
        let bad = || {
            refused(format!(
                "rewind: --groups {raw:?}: expected ATTR=K with K at least 1, e.g. region=3"
            ))
        };
        let (attr, k) = raw.split_once('=').ok_or_else(bad)?;
        let attr = AttrName::new(attr.trim())
            .map_err(|e| refused(format!("rewind: --groups {raw:?}: {e}")))?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(bad());
        }
        if !prepared
            .iter()
            .any(|(_, _, wf)| wf.steps.iter().any(|s| s.scope == Scope::Group(attr.clone())))
        {
            return Err(refused(format!(
                "rewind: --groups {raw:?}: no workflow has a group:{attr} step"
            )));
        }
        spec.groups_of.insert(attr, k);
    }
    // `--shards` is not the number of regions: `region` has its own count (`--groups region=K`
    // still wins).
    let region = AttrName::new("region").map_err(|e| refused(format!("rewind: {e}")))?;
    let regions = *spec.groups_of.entry(region).or_insert(args.regions);

    let rt = store::runtime()?;
    let mut benches = Vec::new();
    for (path, text, wf) in prepared {
        let targets = TargetSet::synthetic(&wf, &spec);
        let targets_text = targets.to_csv();
        let capacity = wf.resources.iter().map(|p| (p.name.to_string(), p.capacity)).collect();
        let plan = Plan::build(wf, targets, rp).map_err(|d| refused(inputs::render(&d, &path)))?;
        let lb = plan.lower_bound();
        let summary = plan.summary();
        let ideal: Vec<f64> = rewind_scheduler::customers::earliest_finish(&plan)
            .iter()
            .map(Duration::as_secs_f64)
            .collect();
        let mut bench = BenchResult {
            workflow: plan.workflow().name.clone(),
            file: path.display().to_string(),
            sites: args.sites,
            shards: args.shards,
            regions,
            groups: plan.groups().iter().fold(BTreeMap::new(), |mut m, g| {
                *m.entry(g.attr.to_string()).or_default() += 1;
                m
            }),
            seed: args.seed,
            fail_rate: args.fail_rate,
            capacity,
            instances: plan.len(),
            runnable: summary.runnable,
            lower_bound_s: lb.makespan.as_secs_f64(),
            bound_by: summary.bound_by.clone(),
            critical_path_s: lb.critical_path.as_secs_f64(),
            ideal_mean_s: ideal.iter().sum::<f64>() / ideal.len().max(1) as f64,
            runs: Vec::new(),
        };
        for &policy in &policies {
            let spec = RunSpec {
                workflow_file: path.display().to_string(),
                workflow_text: text.clone(),
                targets_file: "synthetic.csv".into(),
                targets_text: targets_text.clone(),
                workdir: std::env::current_dir()?,
                cwd: std::env::current_dir()?,
                mode: Mode::Simulated { seed: args.seed, fail_rate: args.fail_rate },
                max_running: None,
                priority: policy,
                vars: Vars::from_process(),
                waves: Vec::new(),
                halt_rate: 1.0,
            };
            let name = policy.name();
            eprintln!(
                "bench: {} ({name}): {} instances over {} sites",
                bench.workflow,
                thousands(plan.len()),
                thousands(args.sites)
            );
            let mut run = rt.block_on(simulate(&plan, &spec, name, lb.makespan.as_secs_f64()))?;
            run.area_fraction = area_fraction(&run.finish_s, &ideal, lb.makespan.as_secs_f64());
            bench.runs.push(run);
        }
        benches.push(bench);
    }

    if let Some(svg) = &args.svg {
        let series: Vec<Series> = benches
            .iter()
            .flat_map(|b| {
                b.runs.iter().map(move |r| Series {
                    label: format!("{} ({})", b.workflow, r.policy),
                    points: curve(&r.finish_s, b.sites),
                })
            })
            .collect();
        let title = format!("Sites restored over time ({} sites)", thousands(args.sites));
        restored_over_time(svg, &title, &series)?;
    }
    let out = Output { benches };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if args.markdown {
        print!("{}", markdown(&out));
    } else {
        print!("{}", human(&out));
    }
    Ok(Exit::Ok)
}

/// The area under the % restored curve from 0 to `horizon` (the lower bound on the makespan),
/// over the same area for the ideal curve, in which every site is back at its own earliest
/// possible time. A site back at `f` adds `horizon - f` (nothing if after the horizon or never).
fn area_fraction(finish_s: &[f64], ideal_s: &[f64], horizon: f64) -> Option<f64> {
    let area = |v: &[f64]| v.iter().map(|f| (horizon - f).max(0.0)).sum::<f64>();
    let ideal = area(ideal_s);
    (ideal > 0.0).then(|| area(finish_s) / ideal)
}

/// The restored-over-time curve: a step at each site's restore time.
fn curve(finish_s: &[f64], sites: usize) -> Vec<(f64, f64)> {
    let mut pts = vec![(0.0, 0.0)];
    for (i, f) in finish_s.iter().enumerate() {
        let h = f / 3600.0;
        pts.push((h, 100.0 * i as f64 / sites as f64));
        pts.push((h, 100.0 * (i + 1) as f64 / sites as f64));
    }
    pts
}

async fn simulate(
    plan: &Plan,
    spec: &RunSpec,
    policy: &'static str,
    lower_bound_s: f64,
) -> Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let store = SqlStore::open(&url).await?;
    let id = rewind_runtime::create_run(&store, plan, spec, &Registry::builtin()).await?;
    let (lease, _) = Lease::acquire(&store, id).await?;
    let mut display = Display::new(None);
    let quiet = std::env::var_os("REWIND_BENCH_QUIET").is_some();
    let mut none = NoObserver;
    let observer: &mut dyn rewind_runtime::Observer = if quiet { &mut none } else { &mut display };
    let opts = DriveOptions {
        registry: Registry::builtin(),
        observer,
        signals: true,
        progress_every: Duration::from_millis(500),
        tick: Duration::from_secs(1),
        vars: Vars::from_process(),
    };
    let s = rewind_runtime::drive(&store, lease, opts).await?;
    display.finish_quietly();
    store.close().await;
    let mut finish_s: Vec<f64> =
        s.restored_at.iter().flatten().map(Duration::as_secs_f64).collect();
    finish_s.sort_by(f64::total_cmp);
    let makespan_s = s.clock.as_secs_f64();
    let hours = (makespan_s / 3600.0).ceil() as usize;
    let sites = s.targets.max(1) as f64;
    let mut restored_by_hour = Vec::with_capacity(hours + 1);
    let mut k = 0;
    for h in 0..=hours {
        while k < finish_s.len() && finish_s[k] <= (h * 3600) as f64 {
            k += 1;
        }
        restored_by_hour.push(100.0 * k as f64 / sites);
    }
    let mean = (!finish_s.is_empty()).then(|| finish_s.iter().sum::<f64>() / finish_s.len() as f64);
    let wall = s.wall.as_secs_f64();
    Ok(RunResult {
        policy,
        makespan_s,
        ratio: if lower_bound_s > 0.0 { makespan_s / lower_bound_s } else { 1.0 },
        restored: finish_s.len(),
        failed: s.counts.failed,
        blocked: s.counts.blocked,
        ttr_mean_s: mean,
        ttr_p50_s: percentile(&finish_s, 50.0),
        ttr_p95_s: percentile(&finish_s, 95.0),
        area_fraction: None,
        restored_by_hour,
        wall_s: wall,
        instances_per_s: if wall > 0.0 { plan.len() as f64 / wall } else { 0.0 },
        peak_rss_bytes: peak_rss(),
        checkpoints: s.commits,
        finish_s,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), human_s)
}

fn frac(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |f| format!("{f:.3}"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |b| format!("{} MiB", thousands((b / (1 << 20)) as usize)))
}

/// Hours to show in the % restored table: at most about 24 rows.
fn hour_rows(runs: &[RunResult]) -> Vec<usize> {
    let max = runs.iter().map(|r| r.restored_by_hour.len()).max().unwrap_or(1).saturating_sub(1);
    let step = max.div_ceil(24).max(1);
    let mut rows: Vec<usize> = (0..=max).step_by(step).collect();
    if rows.last() != Some(&max) {
        rows.push(max);
    }
    rows
}

fn pct_at(r: &RunResult, h: usize) -> f64 {
    r.restored_by_hour
        .get(h)
        .copied()
        .unwrap_or(100.0 * r.restored as f64 / r.finish_s.len().max(1) as f64)
}

fn human(out: &Output) -> String {
    let mut o = String::new();
    for b in &out.benches {
        let caps: Vec<String> = b.capacity.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let groups: Vec<String> = b.groups.iter().map(|(k, v)| format!("{v} {k}")).collect();
        o.push_str(&format!(
            "{} ({}) × {} synthetic sites ({}), seed {}\n",
            b.workflow,
            b.file,
            thousands(b.sites),
            groups.join(", "),
            b.seed
        ));
        o.push_str(&format!(
            "instances             {} ({} to run)\n",
            thousands(b.instances),
            thousands(b.runnable)
        ));
        o.push_str(&format!("pools                 {}\n", caps.join(", ")));
        o.push_str(&format!(
            "lower bound           {} ({}); critical path {}\n\n",
            human_s(b.lower_bound_s),
            b.bound_by.replace("pool:", "pool "),
            human_s(b.critical_path_s)
        ));
        let col = |f: &dyn Fn(&RunResult) -> String| -> String {
            b.runs.iter().map(|r| format!("{:>16}", f(r))).collect::<Vec<_>>().join("  ")
        };
        o.push_str(&format!("{:<22}{}\n", "", col(&|r| r.policy.to_owned())));
        o.push_str(&format!("{:<22}{}\n", "makespan", col(&|r| human_s(r.makespan_s))));
        o.push_str(&format!("{:<22}{}\n", "× lower bound", col(&|r| format!("{:.3}", r.ratio))));
        o.push_str(&format!("{:<22}{}\n", "site restore mean", col(&|r| opt(r.ttr_mean_s))));
        o.push_str(&format!("{:<22}{}\n", "site restore p50", col(&|r| opt(r.ttr_p50_s))));
        o.push_str(&format!("{:<22}{}\n", "site restore p95", col(&|r| opt(r.ttr_p95_s))));
        o.push_str(&format!("{:<22}{}\n", "area / ideal", col(&|r| frac(r.area_fraction))));
        o.push_str(&format!(
            "{:<22}{}\n",
            "sites restored",
            col(&|r| format!("{}/{}", thousands(r.restored), thousands(b.sites)))
        ));
        o.push_str(&format!("{:<22}{}\n", "engine wall", col(&|r| format!("{:.2}s", r.wall_s))));
        o.push_str(&format!(
            "{:<22}{}\n",
            "instances/s",
            col(&|r| thousands(r.instances_per_s as usize))
        ));
        o.push_str(&format!("{:<22}{}\n", "peak RSS", col(&|r| mib(r.peak_rss_bytes))));
        o.push_str("\n% sites restored\n");
        o.push_str(&format!("{:>8}  {}\n", "hour", col(&|r| r.policy.to_owned())));
        for h in hour_rows(&b.runs) {
            o.push_str(&format!("{h:>8}  {}\n", col(&|r| format!("{:.1}%", pct_at(r, h)))));
        }
        o.push('\n');
    }
    o.push_str(&speedups(out));
    o
}

fn markdown(out: &Output) -> String {
    let mut o = String::new();
    o.push_str("| workflow | policy | instances | makespan | × lower bound | mean site restore | p50 | p95 | area / ideal | engine wall | instances/s |\n");
    o.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for b in &out.benches {
        for r in &b.runs {
            o.push_str(&format!(
                "| `{}` | {} | {} | {} | {:.3} | {} | {} | {} | {} | {:.2} s | {} |\n",
                b.workflow,
                r.policy,
                thousands(b.instances),
                human_s(r.makespan_s),
                r.ratio,
                opt(r.ttr_mean_s),
                opt(r.ttr_p50_s),
                opt(r.ttr_p95_s),
                frac(r.area_fraction),
                r.wall_s,
                thousands(r.instances_per_s as usize)
            ));
        }
    }
    o.push_str(
        "\n| workflow | lower bound | set by | critical path (one site) | ideal mean site restore |\n|---|---:|---|---:|---:|\n",
    );
    for b in &out.benches {
        o.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            b.workflow,
            human_s(b.lower_bound_s),
            b.bound_by,
            human_s(b.critical_path_s),
            human_s(b.ideal_mean_s)
        ));
    }
    let shares = [10.0, 25.0, 50.0, 75.0, 90.0, 100.0];
    o.push_str("\nTime until a share of the sites is restored:\n\n| workflow | policy |");
    for p in shares {
        o.push_str(&format!(" {p:.0}% |"));
    }
    o.push_str("\n|---|---|");
    o.push_str(&"---:|".repeat(shares.len()));
    o.push('\n');
    for b in &out.benches {
        for r in &b.runs {
            o.push_str(&format!("| `{}` | {} |", b.workflow, r.policy));
            for p in shares {
                let need = ((p / 100.0) * b.sites as f64).ceil().max(1.0) as usize;
                o.push_str(&format!(" {} |", opt(r.finish_s.get(need - 1).copied())));
            }
            o.push('\n');
        }
    }
    o.push_str(&speedups(out));
    o
}

/// How the last workflow compares with the first, per policy: "makespan 7.70× longer" when the
/// last takes longer, "7.70× shorter" when it takes less, never a ratio below 1 called shorter.
fn speedups(out: &Output) -> String {
    let mut o = String::new();
    if let [first, .., last] = out.benches.as_slice() {
        o.push('\n');
        for (a, b) in first.runs.iter().zip(&last.runs) {
            let mean = match (b.ttr_mean_s, a.ttr_mean_s) {
                (Some(x), Some(y)) => compared(x, y),
                _ => "-".into(),
            };
            o.push_str(&format!(
                "{} vs {} ({}): makespan {}, mean site restore {mean}\n",
                last.workflow,
                first.workflow,
                a.policy,
                compared(b.makespan_s, a.makespan_s),
            ));
        }
    }
    o
}

/// `x` against `y` in words, the ratio always at least 1: `7.70× longer`, `7.70× shorter`, `the
/// same`; `-` when either is not positive.
fn compared(x: f64, y: f64) -> String {
    if !(x > 0.0 && y > 0.0) {
        return "-".into();
    }
    let (ratio, word) = if x >= y { (x / y, "longer") } else { (y / x, "shorter") };
    if format!("{ratio:.2}") == "1.00" { "the same".into() } else { format!("{ratio:.2}× {word}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_phrased_the_right_way_round() {
        // Issue 15: "restore-1 vs restore-2: makespan 0.13× shorter" when it was 7.7× longer.
        assert_eq!(compared(77.0, 10.0), "7.70× longer");
        assert_eq!(compared(10.0, 77.0), "7.70× shorter");
        assert_eq!(compared(10.0, 10.001), "the same");
        assert_eq!(compared(0.0, 10.0), "-");
        let run = |makespan_s: f64, mean: f64| RunResult {
            policy: "fifo",
            makespan_s,
            ratio: 1.0,
            restored: 1,
            failed: 0,
            blocked: 0,
            ttr_mean_s: Some(mean),
            ttr_p50_s: None,
            ttr_p95_s: None,
            restored_by_hour: Vec::new(),
            wall_s: 0.0,
            instances_per_s: 0.0,
            peak_rss_bytes: None,
            checkpoints: 0,
            finish_s: Vec::new(),
            area_fraction: None,
        };
        let bench = |workflow: &str, r: RunResult| BenchResult {
            workflow: workflow.into(),
            file: String::new(),
            sites: 1,
            shards: 1,
            regions: 1,
            groups: BTreeMap::new(),
            seed: 1,
            fail_rate: 0.0,
            capacity: BTreeMap::new(),
            instances: 1,
            runnable: 1,
            lower_bound_s: 1.0,
            bound_by: String::new(),
            critical_path_s: 1.0,
            ideal_mean_s: 1.0,
            runs: vec![r],
        };
        let out = Output {
            benches: vec![bench("restore-2", run(10.0, 4.0)), bench("restore-1", run(77.0, 40.0))],
        };
        assert_eq!(
            speedups(&out),
            "\nrestore-1 vs restore-2 (fifo): makespan 7.70× longer, mean site restore 10.00× longer\n"
        );
        let out = Output { benches: out.benches.into_iter().rev().collect() };
        assert_eq!(
            speedups(&out),
            "\nrestore-2 vs restore-1 (fifo): makespan 7.70× shorter, mean site restore 10.00× shorter\n"
        );
    }
}
