//! Targets files: CSV and JSON Lines, and every line-numbered error.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use rewind_model::{AttrValue, ErrorKind as K, TargetSet, TargetsFormat, Workflow};

const A: &str = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
const B: &str = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
const APP: &str = "c0ffee00-0000-4000-8000-000000000001";

fn csv(text: &str) -> Result<TargetSet, rewind_model::Diagnostics> {
    TargetSet::parse("t.csv", text, TargetsFormat::Csv)
}

fn jsonl(text: &str) -> Result<TargetSet, rewind_model::Diagnostics> {
    TargetSet::parse("t.jsonl", text, TargetsFormat::JsonLines)
}

/// Asserts one diagnostic of `kind` on `line` whose message contains `needle`.
#[track_caller]
fn refused(result: Result<TargetSet, rewind_model::Diagnostics>, kind: K, line: u32, needle: &str) {
    let diags = result.expect_err("the targets should be refused");
    assert!(
        diags
            .iter()
            .any(|d| d.kind == kind && d.location.line == line && d.message.contains(needle)),
        "expected {kind:?} on line {line} containing {needle:?}; got:\n{diags}"
    );
}

fn workflow(steps: &str) -> Workflow {
    let text = format!("name = \"w\"\ntarget_kind = \"site\"\n{steps}");
    Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"))
}

const GROUPED: &str = r#"
[[steps]]
id = "db"
scope = "group:shard"
estimate = "1h"
action = { kind = "command", program = "x", args = ["{{group.value}}"] }

[[steps]]
id = "copy"
needs = ["db"]
when = { products = "tracker" }
estimate = "1m"
action = { kind = "command", program = "x", args = ["{{target.attr.region}}"] }
"#;

#[test]
fn csv_with_lists_comments_and_blank_lines() {
    let text = format!(
        "id,kind,shard,products\n# a comment\n{A},site,s1,tracker;wiki\n\n{B}, site , s2 ,wiki\n"
    );
    let set = csv(&text).unwrap();
    assert_eq!(set.len(), 2);
    let [a, b] = set.targets() else { panic!() };
    assert_eq!(a.id.to_string(), A);
    assert_eq!(a.line, 3);
    assert_eq!(b.line, 5);
    assert_eq!(b.kind, "site", "cells are trimmed");
    let products = |t: &rewind_model::Target| {
        t.attrs.iter().find(|(k, _)| k.as_str() == "products").unwrap().1.clone()
    };
    assert_eq!(products(a), AttrValue::List(vec!["tracker".into(), "wiki".into()]));
    assert_eq!(products(b), AttrValue::One("wiki".into()));
    assert!(
        products(a).matches("wiki")
            && products(b).matches("wiki")
            && !products(b).matches("tracker")
    );
}

#[test]
fn jsonl_with_scalars_and_arrays() {
    let text = format!(
        "{{\"id\":\"{A}\",\"kind\":\"site\",\"shard\":\"s1\",\"products\":[\"tracker\",\"wiki\"]}}\n\n{{\"id\":\"{B}\",\"kind\":\"site\",\"shard\":\"s2\",\"products\":\"wiki\"}}\n"
    );
    let set = jsonl(&text).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.targets()[1].line, 3);
}

#[test]
fn format_follows_the_extension() {
    assert_eq!(TargetsFormat::from_file_name("sites.csv"), Some(TargetsFormat::Csv));
    assert_eq!(TargetsFormat::from_file_name("a/b/SITES.CSV"), Some(TargetsFormat::Csv));
    assert_eq!(TargetsFormat::from_file_name("sites.jsonl"), Some(TargetsFormat::JsonLines));
    assert_eq!(TargetsFormat::from_file_name("sites.ndjson"), Some(TargetsFormat::JsonLines));
    assert_eq!(TargetsFormat::from_file_name("sites.json"), None);
    assert_eq!(TargetsFormat::from_file_name("sites"), None);
}

#[test]
fn bad_uuids_are_named_by_line() {
    refused(
        csv(&format!("id,kind\n{A},site\nsite-42,site\n")),
        K::InvalidTargetId,
        3,
        "target id \"site-42\" is not valid",
    );
    refused(
        jsonl(&format!(
            "{{\"id\":\"{A}\",\"kind\":\"site\"}}\n{{\"id\":\"nope\",\"kind\":\"site\"}}\n"
        )),
        K::InvalidTargetId,
        2,
        "\"nope\"",
    );
}

#[test]
fn duplicate_ids_name_both_lines() {
    refused(
        csv(&format!("id,kind\n{A},site\n{B},site\n{A},site\n")),
        K::DuplicateTarget,
        4,
        "first on line 2",
    );
    let upper = A.to_uppercase();
    refused(
        csv(&format!("id,kind\n{A},site\n{upper},site\n")),
        K::DuplicateTarget,
        3,
        "duplicate target id",
    );
}

#[test]
fn csv_structure_errors() {
    refused(
        csv(&format!("id,shard\n{A},s1\n")),
        K::MissingKey,
        1,
        "must name the columns `id` and `kind`",
    );
    refused(
        csv(&format!("id,kind,shard,shard\n{A},site,s1,s2\n")),
        K::Syntax,
        1,
        "column `shard` appears twice",
    );
    refused(csv(&format!("id,kind,shard\n{A},site,s1\n# note\n\n{B},site\n")), K::Syntax, 5, "");
    refused(csv(&format!("# targets\nid,shard\n{A},s1\n")), K::MissingKey, 2, "`id` and `kind`");
    refused(
        csv(&format!("id,kind,bad-name\n{A},site,x\n")),
        K::InvalidId,
        1,
        "attribute name \"bad-name\"",
    );
    refused(csv("id,kind\n"), K::NoTargets, 1, "lists no targets");
}

#[test]
fn jsonl_structure_errors() {
    refused(jsonl("{\"id\": 1}\n"), K::InvalidType, 1, "`id` must be a string");
    refused(jsonl(&format!("{{\"id\":\"{A}\"}}\n")), K::MissingKey, 1, "no `kind`");
    refused(
        jsonl(&format!("{{\"id\":\"{A}\",\"kind\":\"site\"}}\n[1]\n")),
        K::Syntax,
        2,
        "must be a JSON object",
    );
    refused(
        jsonl(&format!("{{\"id\":\"{A}\",\"kind\":\"site\"}}\n{{oops\n")),
        K::Syntax,
        2,
        "not JSON",
    );
    refused(
        jsonl(&format!("{{\"id\":\"{A}\",\"kind\":\"site\",\"shard\":3}}\n")),
        K::InvalidType,
        1,
        "`shard` must be a string or an array of strings",
    );
    refused(
        jsonl(&format!("{{\"id\":\"{A}\",\"kind\":\"site\",\"p\":[\"a\",1]}}\n")),
        K::InvalidType,
        1,
        "`p` must be",
    );
}

#[test]
fn a_target_of_another_kind_is_refused_with_its_real_kind() {
    // The incident: a list of app IDs handed to a site deletion. Here, to a site restore.
    let wf = workflow(GROUPED);
    let set = csv(&format!(
        "id,kind,shard,region,products\n{A},site,s1,eu,tracker\n{APP},app,s1,eu,tracker\n"
    ))
    .unwrap();
    let diags = set.check(&wf).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags}");
    let d = diags.iter().next().unwrap();
    assert_eq!((d.kind, d.location.line), (K::WrongKind, 3));
    assert_eq!(
        d.message,
        format!("target {APP} is of kind `app`, but workflow `w` restores `site` targets")
    );
}

#[test]
fn attributes_needed_by_scopes_whens_and_templates() {
    let wf = workflow(GROUPED);
    let check = |text: String| csv(&text).unwrap().check(&wf);
    let missing = |text: String, line: u32, needle: &str| {
        let diags = check(text).unwrap_err();
        assert!(
            diags.iter().any(|d| d.kind == K::MissingAttribute
                && d.location.line == line
                && d.message.contains(needle)),
            "{needle}: {diags}"
        );
    };
    missing(
        format!("id,kind,region,products\n{A},site,eu,tracker\n"),
        2,
        "has no attribute `shard`, which step `db` needs (scope group:shard)",
    );
    missing(
        format!("id,kind,shard,region\n{A},site,s1,eu\n"),
        2,
        "has no attribute `products`, which step `copy` needs (when products = \"tracker\")",
    );
    missing(
        format!("id,kind,shard,products\n{A},site,s1,wiki\n"),
        2,
        "has no attribute `region`, which step `copy` needs (template {{target.attr.region}})",
    );
    missing(
        format!("id,kind,shard,region,products\n{A},site,,eu,wiki\n"),
        2,
        "has an empty `shard`",
    );
    assert!(check(format!("id,kind,shard,region,products\n{A},site,s1,eu,wiki\n")).is_ok());
}

#[test]
fn a_group_output_read_by_a_target_needs_one_group_per_target() {
    let wf = workflow(
        r#"
[[steps]]
id = "db"
scope = "group:shard"
estimate = "1h"
action = { kind = "command", program = "x" }

[[steps]]
id = "copy"
needs = ["db"]
estimate = "1m"
action = { kind = "command", program = "x", args = ["{{needs.db.scratch}}"] }
"#,
    );
    let diags = csv(&format!("id,kind,shard\n{A},site,s1\n{B},site,s1;s2\n"))
        .unwrap()
        .check(&wf)
        .unwrap_err();
    let d = diags.iter().next().unwrap();
    assert_eq!((d.kind, d.location.line), (K::InvalidValue, 3), "{diags}");
    assert!(d.message.contains("has several `shard` values (s1;s2)"), "{d}");
}

#[test]
fn csv_round_trips_synthetic_targets() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../workflows/restore-2.toml"
    ))
    .unwrap();
    let wf = Workflow::parse("restore-2.toml", &text).unwrap();
    let set = TargetSet::synthetic(&wf, &rewind_model::SyntheticSpec::new(300, 12, 9));
    let csv_text = set.to_csv();
    assert!(csv_text.starts_with("id,kind,products,region,shard\n"), "{}", &csv_text[..60]);
    let back = csv(&csv_text).unwrap();
    assert_eq!(back.targets(), set.targets(), "same ids, kinds, attributes and lines");
    back.check(&wf).unwrap();
}
