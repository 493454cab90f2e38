//! Synthetic targets for benchmarks and capacity planning: as many sites as asked, carrying every
//! attribute a workflow's scopes, `when`s and templates read. Deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{AttrName, TargetId};
use crate::targets::{AttrValue, Target, TargetSet};
use crate::workflow::{Scope, Workflow};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Number of targets.
    pub targets: usize,
    /// Distinct values of every grouping attribute (shards), unless `groups_of` says otherwise.
    pub groups: usize,
    /// Distinct values of particular grouping attributes (`region` = 3).
    pub groups_of: BTreeMap<AttrName, usize>,
    /// Seed of the generator.
    pub seed: u64,
}

impl SyntheticSpec {
    /// `targets` targets, every grouping attribute over `groups` values.
    pub fn new(targets: usize, groups: usize, seed: u64) -> Self {
        Self { targets, groups, groups_of: BTreeMap::new(), seed }
    }
}

/// splitmix64: tiny, fast, and good enough to spread attributes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

impl TargetSet {
    /// Targets of `workflow`'s kind. Grouping attributes get one of `spec.groups` values
    /// (`s01`, `s02`, ...; or as many as `spec.groups_of` gives the attribute); attributes tested by `when` get a non-empty random subset of the values
    /// the workflow tests for (a list when several); any other attribute a template reads gets a
    /// per-target value.
    pub fn synthetic(workflow: &Workflow, spec: &SyntheticSpec) -> Self {
        let mut grouping: BTreeSet<AttrName> = BTreeSet::new();
        for s in &workflow.steps {
            if let Scope::Group(a) = &s.scope {
                grouping.insert(a.clone());
            }
        }
        let mut tested: BTreeMap<AttrName, BTreeSet<String>> = BTreeMap::new();
        for s in &workflow.steps {
            for c in &s.when {
                if !grouping.contains(&c.attr) {
                    tested.entry(c.attr.clone()).or_default().insert(c.value.clone());
                }
            }
        }
        let other: BTreeSet<AttrName> = workflow
            .attribute_uses()
            .into_iter()
            .map(|u| u.attr)
            .filter(|a| !grouping.contains(a) && !tested.contains_key(a))
            .collect();
        let count = |a: &AttrName| spec.groups_of.get(a).copied().unwrap_or(spec.groups).max(1);
        let mut rng = Rng(spec.seed ^ 0x5EED_2022_0405_0738);
        let targets = (0..spec.targets)
            .map(|i| {
                let bytes = [rng.next().to_le_bytes(), rng.next().to_le_bytes()].concat();
                let mut raw = [0u8; 16];
                raw.copy_from_slice(&bytes);
                let id = TargetId::from_uuid(uuid::Builder::from_random_bytes(raw).into_uuid());
                let mut attrs = BTreeMap::new();
                for a in &grouping {
                    let n = count(a);
                    let width = n.to_string().len().max(2);
                    let g = rng.below(n) + 1;
                    attrs.insert(a.clone(), AttrValue::One(format!("s{g:0width$}")));
                }
                for (a, values) in &tested {
                    let values: Vec<&String> = values.iter().collect();
                    // Each value with probability 3/4, at least one.
                    let mut chosen: Vec<String> =
                        values.iter().filter(|_| rng.below(4) != 0).map(|v| (*v).clone()).collect();
                    if chosen.is_empty() {
                        chosen.push(values[rng.below(values.len())].clone());
                    }
                    let v = if chosen.len() == 1 {
                        AttrValue::One(chosen.remove(0))
                    } else {
                        AttrValue::List(chosen)
                    };
                    attrs.insert(a.clone(), v);
                }
                for a in &other {
                    attrs.insert(a.clone(), AttrValue::One(format!("{a}-{}", i + 1)));
                }
                let line = u32::try_from(i + 2).unwrap_or(u32::MAX);
                Target { id, kind: workflow.target_kind.to_string(), attrs, line }
            })
            .collect();
        Self::from_targets("<synthetic>", targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Plan;

    const WF: &str = r#"
name = "w"
target_kind = "site"
[[steps]]
id = "db"
scope = "group:shard"
estimate = "1h"
action = { kind = "command", program = "x" }
[[steps]]
id = "copy"
needs = ["db"]
when = { products = "tracker" }
estimate = "1m"
action = { kind = "command", program = "x", args = ["{{target.attr.url}}"] }
[[steps]]
id = "wiki"
when = { products = "wiki" }
estimate = "1m"
action = { kind = "command", program = "x" }
"#;

    #[test]
    fn synthetic_targets_satisfy_the_workflow_and_repeat_for_a_seed() {
        let wf = Workflow::parse("w.toml", WF).unwrap();
        let spec = SyntheticSpec::new(500, 7, 42);
        let a = TargetSet::synthetic(&wf, &spec);
        assert_eq!(a.len(), 500);
        a.check(&wf).unwrap();
        let b = TargetSet::synthetic(&wf, &spec);
        assert_eq!(a.targets(), b.targets(), "same seed, same targets");
        let c = TargetSet::synthetic(&wf, &SyntheticSpec { seed: 43, ..spec.clone() });
        assert_ne!(a.targets(), c.targets());
        let plan = Plan::build(wf, a, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap();
        assert_eq!(plan.groups().len(), 7);
        let shard = AttrName::new("shard").unwrap_or_else(|e| panic!("{e}"));
        let mut three = SyntheticSpec::new(500, 7, 42);
        three.groups_of.insert(shard.clone(), 3);
        let t = TargetSet::synthetic(plan.workflow(), &three);
        let shards: BTreeSet<String> =
            t.targets().iter().map(|x| x.attrs[&shard].to_string()).collect();
        assert_eq!(shards.into_iter().collect::<Vec<_>>(), ["s01", "s02", "s03"]);
        let skipped = plan.instances().iter().filter(|i| i.skipped).count();
        assert!(skipped > 0 && skipped < 500, "some targets lack a product: {skipped}");
    }
}
