//! The `customers` policy against critical-path and FIFO on random workflows (random scopes,
//! needs, pools, capacities and estimates; random shards and regions), simulated in virtual time
//! with the scheduler alone. Deterministic: workflow `k` comes from seed `k`; no timing.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

use rewind_model::{Plan, TargetSet, TargetsFormat, Workflow};
use rewind_scheduler::{Config, Outcome, Priority, Scheduler, customers};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random workflow over random targets.
fn random_plan(seed: u64) -> Plan {
    let mut rng = Rng(seed);
    let pools = 1 + rng.below(3);
    let mut text = String::from("name = \"w\"\ntarget_kind = \"site\"\n[resources]\n");
    for p in 0..pools {
        writeln!(text, "p{p} = {}", 1 + rng.below(6)).unwrap();
    }
    let steps = 3 + rng.below(10) as usize;
    for i in 0..steps {
        let scope = match rng.below(10) {
            0 => "run",
            1 => "group:shard",
            2 => "group:region",
            _ => "target",
        };
        let mut needs: Vec<String> = Vec::new();
        if i > 0 {
            for _ in 0..rng.below(3) {
                needs.push(format!("\"s{}\"", rng.below(i as u64)));
            }
        }
        needs.sort();
        needs.dedup();
        let minutes = 1 + rng.below(600);
        write!(
            text,
            "[[steps]]\nid = \"s{i}\"\nscope = \"{scope}\"\nneeds = [{}]\nestimate = \"{minutes}m\"\n",
            needs.join(", ")
        )
        .unwrap();
        if rng.below(3) != 0 {
            writeln!(text, "resource = \"p{}\"", rng.below(pools)).unwrap();
        }
        text.push_str("action = { kind = \"command\", program = \"x\" }\n");
    }
    let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}\n{text}"));
    let targets = 5 + rng.below(60);
    let (shards, regions) = (1 + rng.below(8), 1 + rng.below(3));
    let mut csv = String::from("id,kind,shard,region\n");
    for t in 0..targets {
        writeln!(
            csv,
            "00000000-0000-4000-8000-{:012x},site,s{},r{}",
            t + 1,
            rng.below(shards),
            rng.below(regions)
        )
        .unwrap();
    }
    let targets = TargetSet::parse("t.csv", &csv, TargetsFormat::Csv).unwrap();
    Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap()
}

/// Makespan and each target's restore time, every attempt taking its estimate.
fn simulate(plan: &Plan, priority: Priority) -> (Duration, Vec<Duration>) {
    let mut s = Scheduler::new(plan, Config { seed: 1, priority, max_running: None });
    let mut now = Duration::ZERO;
    let mut running = BinaryHeap::new();
    loop {
        for d in s.poll(now) {
            running.push(Reverse((now + plan.estimate(d.id), d.id)));
        }
        let Some(Reverse((t, id))) = running.pop() else { break };
        now = t;
        s.on_outcome(id, Outcome::Succeeded, now);
    }
    assert!(s.is_finished());
    let restored = (0..plan.targets().len()).map(|t| s.target_restored_at(t).unwrap()).collect();
    (now, restored)
}

/// Area under the restored curve up to `horizon`, in site-seconds.
fn area(restored: &[Duration], horizon: Duration) -> f64 {
    restored.iter().map(|f| horizon.saturating_sub(*f).as_secs_f64()).sum()
}

#[test]
fn customers_keeps_the_curve_of_fifo_and_the_makespan_of_critical_path() {
    let mut report = String::new();
    let mut failures = Vec::new();
    for seed in 1..=20 {
        let plan = random_plan(seed);
        let horizon = plan.lower_bound().makespan;
        let ideal = area(&customers::earliest_finish(&plan), horizon);
        let (m_cu, r_cu) = simulate(&plan, Priority::Customers);
        let (m_cp, _) = simulate(&plan, Priority::CriticalPath);
        let (_, r_fi) = simulate(&plan, Priority::Fifo);
        let (a_cu, a_fi) = (area(&r_cu, horizon), area(&r_fi, horizon));
        let frac = |a: f64| if ideal > 0.0 { a / ideal } else { 1.0 };
        writeln!(
            report,
            "seed {seed:>2}: {} instances, makespan customers/critical-path {:.3}, area/ideal customers {:.3} fifo {:.3}",
            plan.len(),
            m_cu.as_secs_f64() / m_cp.as_secs_f64().max(f64::MIN_POSITIVE),
            frac(a_cu),
            frac(a_fi)
        )
        .unwrap();
        if a_cu < 0.98 * a_fi {
            failures.push(format!("seed {seed}: area {a_cu} below 98% of FIFO's {a_fi}"));
        }
        if m_cu.as_secs_f64() > 1.05 * m_cp.as_secs_f64() {
            failures.push(format!("seed {seed}: makespan {m_cu:?} above 1.05 × {m_cp:?}"));
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}
