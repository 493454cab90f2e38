//! The plan fingerprint is a persisted identity: every run stores it, and every later command
//! (resume, retry, cancel, status, report) rebuilds the plan from the run's snapshot and refuses it
//! when the fingerprint differs. These are fingerprints that rewind 0.1 computed for real files
//! (`rewind plan --json`, before the encoding was written out by hand); if one changes, runs made
//! by that release can no longer be loaded. Do not re-pin them: keep the encoding (see
//! `src/fingerprint.rs` for how a field is added or a version bumped).

#![allow(clippy::unwrap_used)]

use rewind_model::{Fingerprint, Plan, TargetSet, TargetsFormat, Workflow};

const RP: &str = "2022-04-05T07:33:00Z";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn plan(workflow: &str, targets: &str) -> Plan {
    let wf = Workflow::parse(workflow, &fixture(workflow)).unwrap();
    let format = TargetsFormat::from_file_name(targets).unwrap();
    let t = TargetSet::parse(targets, &fixture(targets), format).unwrap();
    Plan::build(wf, t, RP.parse().unwrap()).unwrap()
}

/// File pairs and the fingerprints rewind 0.1 gave them.
const PINNED: &[(&str, &str, &str)] = &[
    (
        // The shipped restore-2 as of 0.1 (every action kind, connections, a preflight, a
        // default retention written out) over 20 of the example sites.
        "restore-2-0.1.toml",
        "sites-20.csv",
        "sha256:ee9e91dd67eb687eec28db043d75269510ee9a874debd036de217521a09aca6e",
    ),
    (
        // Every field with a value other than its default, list attributes, JSON Lines.
        "every-field.toml",
        "every-field.jsonl",
        "sha256:9aad4d32fbb727beb1033df95dfd7d06bb3d4bff6fb8be568c753308bcd51dab",
    ),
];

#[test]
fn fingerprints_of_rewind_0_1_are_unchanged() {
    for (workflow, targets, pinned) in PINNED {
        let p = plan(workflow, targets);
        assert_eq!(p.fingerprint().to_string(), *pinned, "{workflow} × {targets}");
        assert_eq!(p.fingerprint().version(), 1);
        assert_eq!(p.check_fingerprint(pinned), Ok(()), "a stored 0.1 fingerprint still loads");
    }
}

#[test]
fn a_stored_fingerprint_is_checked_with_its_own_version() {
    let p = plan("every-field.toml", "every-field.jsonl");
    let other = plan("restore-2-0.1.toml", "sites-20.csv").fingerprint().to_string();
    let e = p.check_fingerprint(&other).unwrap_err();
    assert!(e.contains("its fingerprint is now sha256:9aad4d32"), "{e}");
    let future = format!("v9:sha256:{}", "0".repeat(64));
    let e = p.check_fingerprint(&future).unwrap_err();
    assert!(e.contains("encoding version 9, which this rewind does not know"), "{e}");
    assert!(p.check_fingerprint("nonsense").unwrap_err().contains("not a plan fingerprint"));
    let compute = |v| {
        Fingerprint::compute(v, p.workflow(), p.targets(), p.restore_point()).map(|f| f.to_string())
    };
    assert_eq!(compute(1).as_deref(), Some(PINNED[1].2));
    assert_eq!(compute(0), None);
    assert_eq!(compute(Fingerprint::CURRENT + 1), None);
}

#[test]
fn a_queue_changes_the_fingerprint_only_when_set() {
    let text = fixture("every-field.toml");
    let with_queue = text.replacen("[[steps]]\n", "[[steps]]\nqueue = \"east\"\n", 1);
    assert_ne!(text, with_queue, "the fixture has a [[steps]] table");
    let fp = |wf: &str| {
        let wf = Workflow::parse("every-field.toml", wf).unwrap();
        let format = TargetsFormat::from_file_name("every-field.jsonl").unwrap();
        let t =
            TargetSet::parse("every-field.jsonl", &fixture("every-field.jsonl"), format).unwrap();
        Plan::build(wf, t, RP.parse().unwrap()).unwrap().fingerprint().to_string()
    };
    assert_ne!(fp(&text), fp(&with_queue));
}
