//! Plan expansion: every scope rule of DESIGN.md, `when` skipping, keys, ranks, the lower bound
//! and the fingerprint.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use rewind_model::{InstanceKey, Plan, RestorePoint, TargetSet, TargetsFormat, Workflow};

const T1: &str = "00000000-0000-4000-8000-000000000001";
const T2: &str = "00000000-0000-4000-8000-000000000002";
const T3: &str = "00000000-0000-4000-8000-000000000003";
const T4: &str = "00000000-0000-4000-8000-000000000004";

/// Four sites: shards s1,s1,s2,s2; regions eu,eu,us,us; T2 has no wiki.
fn sites() -> String {
    format!(
        "id,kind,shard,region,products\n{T1},site,s1,eu,tracker;wiki\n{T2},site,s1,eu,tracker\n{T3},site,s2,us,wiki\n{T4},site,s2,us,tracker;wiki\n"
    )
}

fn rp() -> RestorePoint {
    "2022-04-05T07:33:00Z".parse().unwrap()
}

fn plan_with(steps: &str, targets: &str) -> Plan {
    let text = format!("name = \"w\"\ntarget_kind = \"site\"\n[resources]\ndb = 2\n{steps}");
    let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let targets =
        TargetSet::parse("t.csv", targets, TargetsFormat::Csv).unwrap_or_else(|d| panic!("{d}"));
    Plan::build(wf, targets, rp()).unwrap_or_else(|d| panic!("{d}"))
}

fn plan(steps: &str) -> Plan {
    plan_with(steps, &sites())
}

/// `[[steps]]` with `id`, `scope`, `needs` and an estimate in minutes.
fn step(id: &str, scope: &str, needs: &[&str], minutes: u32) -> String {
    let needs: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[steps]]\nid = \"{id}\"\nscope = \"{scope}\"\nneeds = [{}]\nestimate = \"{minutes}m\"\naction = {{ kind = \"command\", program = \"x\" }}\n",
        needs.join(", ")
    )
}

fn id(plan: &Plan, key: &str) -> rewind_model::InstanceId {
    let k: InstanceKey = key.parse().unwrap();
    plan.find(&k).unwrap_or_else(|| panic!("no instance {key}"))
}

/// The keys `key` depends on, sorted.
fn deps(plan: &Plan, key: &str) -> Vec<String> {
    let mut out: Vec<String> =
        plan.dependencies(id(plan, key)).map(|d| plan.key(d).to_string()).collect();
    out.sort();
    out
}

fn keys(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

#[test]
fn instances_per_scope_and_their_keys() {
    let p = plan(
        &[
            step("pre", "run", &[], 1),
            step("site", "target", &[], 1),
            step("db", "group:shard", &[], 1),
        ]
        .concat(),
    );
    assert_eq!(p.len(), 1 + 4 + 2);
    let all: Vec<String> = p.ids().map(|i| p.key(i).to_string()).collect();
    assert_eq!(
        all,
        [
            "pre",
            &format!("site/{T1}"),
            &format!("site/{T2}"),
            &format!("site/{T3}"),
            &format!("site/{T4}"),
            "db/shard=s1",
            "db/shard=s2"
        ]
    );
    for i in p.ids() {
        assert_eq!(p.find(&p.key(i)), Some(i), "find(key) round-trips");
    }
    assert_eq!(p.find(&"db/shard=s9".parse().unwrap()), None);
    assert_eq!(p.find(&"db/region=eu".parse().unwrap()), None);
    assert_eq!(p.find(&format!("pre/{T1}").parse().unwrap()), None);
}

#[test]
fn target_needs_target_of_the_same_target() {
    let p = plan(&[step("a", "target", &[], 1), step("b", "target", &["a"], 1)].concat());
    assert_eq!(deps(&p, &format!("b/{T3}")), [format!("a/{T3}")]);
}

#[test]
fn target_needs_the_group_holding_its_value() {
    let p = plan(&[step("db", "group:shard", &[], 1), step("copy", "target", &["db"], 1)].concat());
    assert_eq!(deps(&p, &format!("copy/{T2}")), ["db/shard=s1"]);
    assert_eq!(deps(&p, &format!("copy/{T4}")), ["db/shard=s2"]);
}

#[test]
fn target_with_a_list_value_needs_every_group_it_belongs_to() {
    let targets = format!("id,kind,shard\n{T1},site,s1\n{T2},site,s1;s2\n");
    let p = plan_with(
        &[step("db", "group:shard", &[], 1), step("copy", "target", &["db"], 1)].concat(),
        &targets,
    );
    assert_eq!(deps(&p, &format!("copy/{T2}")), ["db/shard=s1", "db/shard=s2"]);
    assert_eq!(p.groups()[1].members, [1], "s2 holds only T2");
}

#[test]
fn anything_needs_the_single_run_instance() {
    let p = plan(
        &[
            step("pre", "run", &[], 1),
            step("t", "target", &["pre"], 1),
            step("g", "group:shard", &["pre"], 1),
            step("r", "run", &["pre"], 1),
        ]
        .concat(),
    );
    assert_eq!(deps(&p, &format!("t/{T1}")), ["pre"]);
    assert_eq!(deps(&p, "g/shard=s2"), ["pre"]);
    assert_eq!(deps(&p, "r"), ["pre"]);
}

#[test]
fn group_needs_every_target_of_the_group() {
    let p = plan(
        &[step("copy", "target", &[], 1), step("release", "group:shard", &["copy"], 1)].concat(),
    );
    assert_eq!(deps(&p, "release/shard=s1"), keys(&[&format!("copy/{T1}"), &format!("copy/{T2}")]));
    assert_eq!(deps(&p, "release/shard=s2"), keys(&[&format!("copy/{T3}"), &format!("copy/{T4}")]));
}

#[test]
fn run_needs_every_instance_fan_in() {
    let p = plan(
        &[
            step("t", "target", &[], 1),
            step("g", "group:region", &[], 1),
            step("audit", "run", &["t", "g"], 1),
        ]
        .concat(),
    );
    assert_eq!(
        deps(&p, "audit"),
        keys(&[
            &format!("t/{T1}"),
            &format!("t/{T2}"),
            &format!("t/{T3}"),
            &format!("t/{T4}"),
            "g/region=eu",
            "g/region=us"
        ])
    );
}

#[test]
fn group_needs_every_other_group_sharing_a_target() {
    let p = plan(
        &[step("db", "group:shard", &[], 1), step("idx", "group:region", &["db"], 1)].concat(),
    );
    // eu = {T1, T2} all on s1; us = {T3, T4} all on s2.
    assert_eq!(deps(&p, "idx/region=eu"), ["db/shard=s1"]);
    assert_eq!(deps(&p, "idx/region=us"), ["db/shard=s2"]);
    // Mixed: T2 moves to region us, so us spans s1 and s2.
    let targets =
        format!("id,kind,shard,region\n{T1},site,s1,eu\n{T2},site,s1,us\n{T3},site,s2,us\n");
    let p = plan_with(
        &[step("db", "group:shard", &[], 1), step("idx", "group:region", &["db"], 1)].concat(),
        &targets,
    );
    assert_eq!(deps(&p, "idx/region=us"), ["db/shard=s1", "db/shard=s2"]);
    assert_eq!(deps(&p, "idx/region=eu"), ["db/shard=s1"]);
}

#[test]
fn groups_follow_first_appearance_among_targets() {
    let targets = format!("id,kind,shard\n{T1},site,s9\n{T2},site,s1\n{T3},site,s9\n");
    let p = plan_with(&step("db", "group:shard", &[], 1), &targets);
    let values: Vec<&str> = p.groups().iter().map(|g| g.value.as_str()).collect();
    assert_eq!(values, ["s9", "s1"]);
    assert_eq!(p.groups()[0].members, [0, 2]);
}

const WHEN: &str = r#"
[[steps]]
id = "undelete"
estimate = "1m"
action = { kind = "command", program = "x" }

[[steps]]
id = "wiki.copy"
needs = ["undelete"]
when = { products = "wiki" }
estimate = "30m"
action = { kind = "command", program = "x" }

[[steps]]
id = "wiki.index"
needs = ["wiki.copy"]
when = { products = "wiki", region = "eu" }
estimate = "10m"
action = { kind = "command", program = "x" }

[[steps]]
id = "validate"
needs = ["wiki.index"]
estimate = "5m"
action = { kind = "command", program = "x" }

[[steps]]
id = "release"
scope = "group:shard"
needs = ["wiki.copy"]
estimate = "1m"
action = { kind = "command", program = "x" }
"#;

#[test]
fn when_skips_instances_and_their_dependents_wait_for_what_they_waited_for() {
    let p = plan(WHEN);
    let skipped: Vec<String> =
        p.ids().filter(|&i| p.instance(i).skipped).map(|i| p.key(i).to_string()).collect();
    // T2 has no wiki: both wiki steps skipped. T3, T4 are in region us: wiki.index skipped.
    assert_eq!(
        skipped,
        [
            format!("wiki.copy/{T2}"),
            format!("wiki.index/{T2}"),
            format!("wiki.index/{T3}"),
            format!("wiki.index/{T4}")
        ]
    );
    for i in p.ids().filter(|&i| p.instance(i).skipped) {
        assert_eq!(
            p.dependencies(i).count() + p.dependents(i).count(),
            0,
            "skipped instances are out of the graph"
        );
        assert_eq!(p.rank(i), Duration::ZERO);
    }
    // Through two skipped instances to the undelete of the same target.
    assert_eq!(deps(&p, &format!("validate/{T2}")), [format!("undelete/{T2}")]);
    // Through one.
    assert_eq!(deps(&p, &format!("validate/{T3}")), [format!("wiki.copy/{T3}")]);
    assert_eq!(deps(&p, &format!("validate/{T1}")), [format!("wiki.index/{T1}")]);
    // A group waits for its members' skipped instances' own dependencies.
    assert_eq!(
        deps(&p, "release/shard=s1"),
        keys(&[&format!("wiki.copy/{T1}"), &format!("undelete/{T2}")])
    );
    let s = p.summary();
    assert_eq!((s.instances, s.skipped, s.runnable), (4 * 4 + 2, 4, 14));
}

#[test]
fn ranks_are_the_longest_remaining_path() {
    let p = plan(
        &[
            step("pre", "run", &[], 5),
            step("db", "group:shard", &["pre"], 60),
            step("copy", "target", &["db", "pre"], 10),
            step("audit", "run", &["copy"], 1),
        ]
        .concat(),
    );
    let m = |n: u64| Duration::from_secs(60 * n);
    assert_eq!(p.rank(id(&p, "audit")), m(1));
    assert_eq!(p.rank(id(&p, &format!("copy/{T1}"))), m(11));
    assert_eq!(p.rank(id(&p, "db/shard=s2")), m(71));
    assert_eq!(p.rank(id(&p, "pre")), m(76));
    let path: Vec<String> = p.critical_path().into_iter().map(|i| p.key(i).to_string()).collect();
    assert_eq!(
        path,
        ["pre", "db/shard=s1", &format!("copy/{T1}"), "audit"],
        "ties go to the earliest target"
    );
    let lb = p.lower_bound();
    assert_eq!(lb.critical_path, m(76));
    assert_eq!(lb.makespan, m(76));
    assert_eq!(lb.bound_by, None);
}

#[test]
fn lower_bound_is_set_by_a_pool_when_its_work_exceeds_the_critical_path() {
    // Four 60-minute copies in a 2-slot pool: 120 minutes of pool time; critical path 61.
    let steps = format!(
        "{}[[steps]]\nid = \"copy\"\nneeds = [\"pre\"]\nresource = \"db\"\nestimate = \"1h\"\naction = {{ kind = \"command\", program = \"x\" }}\n",
        step("pre", "run", &[], 1)
    );
    let p = plan(&steps);
    let lb = p.lower_bound();
    assert_eq!(lb.critical_path, Duration::from_secs(61 * 60));
    assert_eq!(lb.pools[0].1, Duration::from_secs(4 * 3600));
    assert_eq!(lb.makespan, Duration::from_secs(2 * 3600));
    assert_eq!(lb.bound_by.as_ref().map(|p| p.as_str()), Some("db"));
    let s = p.summary();
    assert_eq!(s.bound_by, "pool:db");
    assert_eq!(s.lower_bound_s, 7200.0);
    assert_eq!(s.resources[0].instances, 4);
}

#[test]
fn fingerprint_is_stable_and_covers_every_input() {
    let base = step("a", "target", &[], 1);
    let fp = |steps: &str, targets: &str, rp: &str| {
        let text = format!("name = \"w\"\ntarget_kind = \"site\"\n{steps}");
        let wf = Workflow::parse("w.toml", &text).unwrap();
        let t = TargetSet::parse("t.csv", targets, TargetsFormat::Csv).unwrap();
        Plan::build(wf, t, rp.parse().unwrap()).unwrap().fingerprint()
    };
    let sites = sites();
    let rp = "2022-04-05T07:33:00Z";
    let f0 = fp(&base, &sites, rp);
    assert_eq!(f0, fp(&base, &sites, rp), "deterministic");
    assert_eq!(
        f0,
        fp(&format!("# a comment\n\n{base}"), &sites, rp),
        "layout and comments do not count"
    );
    assert_ne!(f0, fp(&step("a", "target", &[], 2), &sites, rp), "estimates count");
    assert_ne!(f0, fp(&base, &sites, "2022-04-05T07:34:00Z"), "the restore point counts");
    let mut lines: Vec<&str> = sites.lines().collect();
    lines.swap(1, 2);
    assert_ne!(f0, fp(&base, &lines.join("\n"), rp), "target order counts (it breaks ties)");
    assert!(f0.to_string().starts_with("sha256:") && f0.to_string().len() == 71);
}

/// A stored run's plan is rebuilt from its snapshot and checked against its fingerprint: a
/// fingerprint that changes for the same files makes every run made before the change
/// unloadable (no resume, retry, cancel or report). Pinned from a build before workflows had
/// `retention` and `[preflight]`; a default `retention` must not change it.
#[test]
fn fingerprints_of_runs_made_by_earlier_versions_do_not_change() {
    let fp = |extra: &str| {
        let text = format!(
            "name = \"fp\"\ntarget_kind = \"site\"\n{extra}\n[[steps]]\nid = \"a\"\nestimate = \"1m\"\naction = {{ kind = \"command\", program = \"true\", args = [\"{{{{target.id}}}}\"] }}\n"
        );
        let wf = Workflow::parse("fp.toml", &text).unwrap();
        let t = TargetSet::parse(
            "fp.csv",
            "id,kind\n00000000-0000-4000-8000-000000000001,site\n",
            TargetsFormat::Csv,
        )
        .unwrap();
        Plan::build(wf, t, "2022-04-05T07:33:00Z".parse().unwrap())
            .unwrap()
            .fingerprint()
            .to_string()
    };
    let pinned = "sha256:29d9ec8a3e16d390979d539582a84245385d420483d9b9d6f510dcbb41874c5b";
    assert_eq!(fp(""), pinned);
    assert_eq!(fp("retention = \"30d\""), pinned, "the default retention, written out");
    assert_ne!(fp("retention = \"7d\""), pinned, "another retention is another plan");
}

#[test]
fn restore_2_over_the_883_example_sites() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let wf = Workflow::parse(
        "restore-2.toml",
        &std::fs::read_to_string(format!("{root}/workflows/restore-2.toml")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(format!("{root}/examples/sites-883.csv")).unwrap();
    let targets = TargetSet::parse("sites-883.csv", &text, TargetsFormat::Csv).unwrap();
    let p = Plan::build(wf, targets, rp()).unwrap();
    let s = p.summary();
    assert_eq!(s.targets.count, 883);
    assert!(s.instances > 20_000, "{}", s.instances);
    // Shard restores are the long pole and are pre-started: right after the preflight.
    assert_eq!(s.critical_path[0].key, "preflight");
    assert!(
        s.critical_path[1].key.starts_with("tracker.db.pitr/shard=")
            || s.critical_path[1].key.starts_with("wiki.db.pitr/shard=")
    );
    assert_eq!(s.bound_by, "pool:db_restore");
}
