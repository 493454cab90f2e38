//! Drill files: what a valid one means, and every mistake located (file, line, key).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use rewind_model::{Drill, DrillMode, DrillPoint, ErrorKind, Selector, Strategy};

const GOOD: &str = r#"
name = "nightly-sample"
workflow = "../workflows/drill-isolated.toml"
mode = "isolated"
restore_point = "latest"
schedule = "0 5 * * *"
timezone = "UTC"

[select]
kind = "command"
program = "${REWIND_EXE}"
args = ["sandbox", "sites", "${SANDBOX}"]
sample = 5
strategy = "random"
seed = 7

[rpo]
program = "${REWIND_EXE}"
args = ["sandbox", "recoverable", "${SANDBOX}"]

[objectives]
rto = "2m"
rpo = "15m"

[cleanup]
keep = "0s"
commands = [{ program = "${REWIND_EXE}", args = ["sandbox", "drop-scratch", "${SANDBOX}", "--scratch", "{{run.id}}"] }]
"#;

/// The diagnostics of a bad file, as `line:kind` pairs and the full text.
fn errors(text: &str) -> (Vec<(u32, ErrorKind)>, String) {
    let d = Drill::parse("bad.toml", text).unwrap_err();
    (d.iter().map(|d| (d.location.line, d.kind)).collect(), d.to_string())
}

#[test]
fn a_full_drill_reads() {
    let d = Drill::parse("nightly.toml", GOOD).unwrap();
    assert_eq!(d.name, "nightly-sample");
    assert_eq!(d.workflow, "../workflows/drill-isolated.toml");
    assert_eq!(d.mode, DrillMode::Isolated);
    assert_eq!(d.restore_point, DrillPoint::Latest);
    assert_eq!(d.select.sample, 5);
    assert_eq!(d.select.strategy, Strategy::Random { seed: Some(7) });
    assert!(matches!(&d.select.selector, Selector::Command(c) if c.args[1] == "sites"));
    assert_eq!(d.objectives.rto, Duration::from_secs(120));
    assert_eq!(d.objectives.rpo, Some(Duration::from_secs(900)));
    assert_eq!(d.cleanup.commands.len(), 1);
    let s = d.schedule.unwrap();
    assert_eq!((s.cron.as_str(), s.timezone.as_str()), ("0 5 * * *", "UTC"));
}

#[test]
fn the_shipped_drill_reads() {
    let text = include_str!("../../../drills/nightly-sample.toml");
    let d = Drill::parse("drills/nightly-sample.toml", text).unwrap();
    assert_eq!(d.mode, DrillMode::Isolated);
    assert_eq!(d.select.sample, 5);
}

#[test]
fn other_strategies_sql_selectors_and_ages() {
    let text = r#"
name = "weekly"
workflow = "w.toml"
mode = "as-new"
restore_point = "1h"
[select]
kind = "sql"
connection = "postgres://rewind@db/${DB}"
sql = "SELECT id, kind, region FROM tenants WHERE status = 'live'"
sample = 3
strategy = "least-recently-drilled"
within = "7d"
[objectives]
rto = "2h"
"#;
    let d = Drill::parse("w.toml", text).unwrap();
    assert_eq!(d.mode, DrillMode::AsNew);
    assert_eq!(d.restore_point, DrillPoint::Age(Duration::from_secs(3600)));
    assert_eq!(
        d.select.strategy,
        Strategy::LeastRecentlyDrilled { within: Duration::from_secs(7 * 86400) }
    );
    assert!(matches!(d.select.selector, Selector::Sql { .. }));
    assert!(d.rpo_probe.is_none() && d.schedule.is_none());

    let list = text.replace(
        "sample = 3\nstrategy = \"least-recently-drilled\"\nwithin = \"7d\"",
        "strategy = \"list\"\nids = [\"a\", \"b\"]",
    );
    let d = Drill::parse("w.toml", &list).unwrap();
    assert_eq!(d.select.sample, 2);
}

#[test]
fn unknown_keys_are_located_with_a_suggestion() {
    let bad = GOOD
        .replace("sample = 5", "sampel = 5")
        .replace("rto = \"2m\"", "rto = \"2m\"\nrtp = \"1m\"");
    let (at, text) = errors(&bad);
    assert!(at.contains(&(13, ErrorKind::UnknownKey)), "{text}");
    assert!(text.contains("bad.toml:13:1: error[unknown-key]: unknown key `sampel` in [select] (did you mean `sample`?)"), "{text}");
    assert!(text.contains("unknown key `rtp` in [objectives] (did you mean `rto`?)"), "{text}");
    // `sample` is then missing: said too.
    assert!(text.contains("[select] needs `sample`"), "{text}");
}

#[test]
fn bad_values_are_located() {
    let cases: &[(&str, &str, u32, &str)] = &[
        (
            "mode = \"isolated\"",
            "mode = \"isolatd\"",
            4,
            "`mode` = \"isolatd\" is not one of isolated, as-new (did you mean `isolated`?)",
        ),
        (
            "restore_point = \"latest\"",
            "restore_point = \"yesterday\"",
            5,
            "neither \"latest\" nor an age",
        ),
        ("schedule = \"0 5 * * *\"", "schedule = \"0 25 * * *\"", 6, "is not a cron expression"),
        ("timezone = \"UTC\"", "timezone = \"Mars/Olympus\"", 7, "not UTC or a fixed offset"),
        ("sample = 5", "sample = 0", 13, "`sample` = 0 must be at least 1"),
        (
            "seed = 7",
            "within = \"7d\"",
            15,
            "`within` applies to strategy = \"least-recently-drilled\", not \"random\"",
        ),
        (
            "rto = \"2m\"",
            "rto = \"2 fortnights\"",
            22,
            "`rto` = \"2 fortnights\" is not a duration",
        ),
        ("rto = \"2m\"", "rto = 120", 22, "`rto` must be a string, not an integer"),
        ("name = \"nightly-sample\"", "name = \"Nightly Sample\"", 2, "must be [a-z0-9][a-z0-9-]*"),
    ];
    for (from, to, line, says) in cases {
        let (at, text) = errors(&GOOD.replace(from, to));
        assert!(at.iter().any(|(l, _)| l == line), "{to}: wanted line {line}: {text}");
        assert!(text.contains(says), "{to}: {text}");
        assert!(text.starts_with(&format!("bad.toml:{line}:")), "{to}: {text}");
    }
}

#[test]
fn missing_pieces_are_named() {
    let (_, text) = errors("name = \"x\"\n");
    for key in ["`workflow`", "`select`", "`objectives`"] {
        assert!(text.contains(key), "{key}: {text}");
    }
    let no_probe = GOOD.replace("[rpo]\nprogram = \"${REWIND_EXE}\"\nargs = [\"sandbox\", \"recoverable\", \"${SANDBOX}\"]\n", "");
    let (_, text) = errors(&no_probe);
    assert!(text.contains("needs `[rpo]`"), "{text}");
    let (at, text) = errors("name = \"x\"\nworkflow = [");
    assert_eq!(at[0].1, ErrorKind::Syntax, "{text}");
}
