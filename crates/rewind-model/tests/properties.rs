//! Properties over random inputs: random valid workflows expand to acyclic plans whose ranks hold
//! along every edge; no input, however mangled, makes parsing or expansion panic.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use rewind_model::{Plan, RestorePoint, TargetSet, TargetsFormat, Workflow};

#[derive(Debug, Clone)]
struct GenStep {
    scope: u8,
    estimate_s: u32,
    needs: Vec<Index>,
    when: Option<u8>,
    pool: Option<u8>,
}

#[derive(Debug, Clone)]
struct GenTarget {
    a: u8,
    b: Vec<u8>,
    p: bool,
}

fn arb_step() -> impl Strategy<Value = GenStep> {
    (
        0u8..4,
        0u32..600,
        prop::collection::vec(any::<Index>(), 0..4),
        prop::option::of(0u8..3),
        prop::option::of(0u8..2),
    )
        .prop_map(|(scope, estimate_s, needs, when, pool)| GenStep {
            scope,
            estimate_s,
            needs,
            when,
            pool,
        })
}

fn arb_target() -> impl Strategy<Value = GenTarget> {
    (0u8..3, prop::collection::vec(0u8..3, 1..3), any::<bool>()).prop_map(|(a, b, p)| GenTarget {
        a,
        b,
        p,
    })
}

/// A valid workflow: every step needs only earlier steps, so there is no cycle.
fn workflow_text(steps: &[GenStep]) -> String {
    let mut out =
        String::from("name = \"prop\"\ntarget_kind = \"site\"\n[resources]\np0 = 1\np1 = 3\n");
    for (i, s) in steps.iter().enumerate() {
        let scope = ["run", "target", "group:a", "group:b"][s.scope as usize];
        let mut needs: Vec<usize> =
            if i == 0 { Vec::new() } else { s.needs.iter().map(|x| x.index(i)).collect() };
        needs.sort_unstable();
        needs.dedup();
        let needs: Vec<String> = needs.iter().map(|n| format!("\"s{n}\"")).collect();
        out.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nscope = \"{scope}\"\nneeds = [{}]\nestimate = \"{}s\"\naction = {{ kind = \"command\", program = \"x\" }}\n",
            needs.join(", "),
            s.estimate_s
        ));
        if let (Some(w), 1) = (s.when, s.scope) {
            out.push_str(&format!("when = {{ p = \"{}\" }}\n", ["yes", "no", "other"][w as usize]));
        }
        if let Some(p) = s.pool {
            out.push_str(&format!("resource = \"p{p}\"\n"));
        }
    }
    out
}

fn targets_text(targets: &[GenTarget]) -> String {
    let mut out = String::from("id,kind,a,b,p\n");
    for (i, t) in targets.iter().enumerate() {
        let b: Vec<String> = t.b.iter().map(|v| format!("b{v}")).collect();
        out.push_str(&format!(
            "00000000-0000-4000-8000-{i:012},site,a{},{},{}\n",
            t.a,
            b.join(";"),
            if t.p { "yes" } else { "no" }
        ));
    }
    out
}

fn rp() -> RestorePoint {
    "2022-04-05T07:33:00Z".parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_valid_workflows_expand_to_acyclic_plans_with_consistent_ranks(
        steps in prop::collection::vec(arb_step(), 1..12),
        targets in prop::collection::vec(arb_target(), 1..10),
    ) {
        let wf = Workflow::parse("w.toml", &workflow_text(&steps)).map_err(|d| TestCaseError::fail(d.to_string()))?;
        let ts = TargetSet::parse("t.csv", &targets_text(&targets), TargetsFormat::Csv).map_err(|d| TestCaseError::fail(d.to_string()))?;
        let plan = Plan::build(wf, ts, rp()).map_err(|d| TestCaseError::fail(d.to_string()))?;

        prop_assert!(!petgraph::algo::is_cyclic_directed(plan.graph()));
        let mut expected = 0;
        for (i, s) in plan.workflow().steps.iter().enumerate() {
            let n = plan.instances_of_step(i).len();
            expected += n;
            match s.scope {
                rewind_model::Scope::Run => prop_assert_eq!(n, 1),
                rewind_model::Scope::Target => prop_assert_eq!(n, targets.len()),
                rewind_model::Scope::Group(_) => prop_assert!((1..=3).contains(&n)),
            }
        }
        prop_assert_eq!(plan.len(), expected);

        for a in plan.ids() {
            if plan.instance(a).skipped {
                prop_assert_eq!(plan.dependencies(a).count() + plan.dependents(a).count(), 0);
                continue;
            }
            for b in plan.dependents(a) {
                prop_assert!(a < b, "edges go forward in id order");
                prop_assert!(!plan.instance(b).skipped);
                prop_assert!(plan.rank(a) >= plan.estimate(a) + plan.rank(b), "rank({}) < estimate + rank({})", plan.key(a), plan.key(b));
            }
            prop_assert!(plan.rank(a) >= plan.estimate(a));
        }

        let lb = plan.lower_bound();
        let max_rank = plan.ids().map(|i| plan.rank(i)).max().unwrap_or(Duration::ZERO);
        prop_assert_eq!(lb.critical_path, max_rank);
        prop_assert!(lb.makespan >= lb.critical_path);
        for (_, _, bound) in &lb.pools {
            prop_assert!(lb.makespan >= *bound);
        }
        let path = plan.critical_path();
        let total: Duration = path.iter().map(|&i| plan.estimate(i)).sum();
        prop_assert_eq!(total, lb.critical_path, "the critical path adds up to its length");
        for w in path.windows(2) {
            prop_assert!(plan.dependents(w[0]).any(|d| d == w[1]), "the critical path follows edges");
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Workflow::parse("w.toml", &text);
        let _ = TargetSet::parse("t.csv", &text, TargetsFormat::Csv);
        let _ = TargetSet::parse("t.jsonl", &text, TargetsFormat::JsonLines);
        let _ = text.parse::<RestorePoint>();
    }

    #[test]
    fn mutated_workflows_and_targets_never_panic(
        edits in prop::collection::vec((any::<Index>(), 0u8..3, prop::sample::select(&[
            "[", "]", "{", "}", "\"", "=", ".", ",", "\n", "#", "{{", "}}", "[[steps]]", "needs", "group:", "0", "-1",
            "estimate = \"1x\"", "scope = \"run\"", "é", ";", "\0",
        ][..])), 1..6),
        which in 0usize..2,
    ) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let file = ["restore-2.toml", "restore-1.toml"][which];
        let mut text = std::fs::read_to_string(format!("{root}/workflows/{file}")).unwrap();
        let mut targets = std::fs::read_to_string(format!("{root}/examples/sites-883.csv")).unwrap();
        targets.truncate(targets.char_indices().nth(3000).map_or(targets.len(), |(i, _)| i));
        for (at, op, piece) in &edits {
            for s in [&mut text, &mut targets] {
                let mut pos = at.index(s.len() + 1);
                while !s.is_char_boundary(pos) { pos -= 1; }
                match op {
                    0 => s.insert_str(pos, piece),
                    1 => { let end = (pos + piece.len()).min(s.len()); let end = (end..=s.len()).find(|&e| s.is_char_boundary(e)).unwrap_or(s.len()); s.replace_range(pos..end, ""); }
                    _ => { let end = (pos..=s.len()).find(|&e| e > pos && s.is_char_boundary(e)).unwrap_or(s.len()); s.replace_range(pos..end, piece); }
                }
            }
        }
        if let Ok(wf) = Workflow::parse(file, &text)
            && let Ok(ts) = TargetSet::parse("t.csv", &targets, TargetsFormat::Csv)
                && let Ok(plan) = Plan::build(wf, ts, rp()) {
                    let _ = plan.summary();
                }
    }
}
