//! Sampling, and the reports' shape.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeMap;

use rewind_drill::report::{junit, markdown, trend};
use rewind_drill::{CleanupStep, DrillResult, ObjectiveResult, Scheduled, TargetResult, sample};
use rewind_model::{Drill, TargetSet, TargetsFormat};

fn drill(select: &str) -> Drill {
    let text = format!(
        "name = \"d\"\nworkflow = \"w.toml\"\nrestore_point = \"1h\"\n[select]\nkind = \"command\"\nprogram = \"x\"\n{select}\n[objectives]\nrto = \"1m\"\n"
    );
    Drill::parse("d.toml", &text).unwrap()
}

fn candidates(n: usize) -> TargetSet {
    let mut text = "id,kind\n".to_owned();
    for i in 0..n {
        text.push_str(&format!("00000000-0000-4000-8000-{i:012}\n"));
    }
    let text = text.replace('\n', ",site\n").replacen("id,kind,site\n", "id,kind\n", 1);
    TargetSet::parse("c.csv", &text, TargetsFormat::Csv).unwrap()
}

fn ids(v: &[rewind_model::Target]) -> Vec<String> {
    v.iter().map(|t| t.id.to_string()[24..].trim_start_matches('0').to_owned()).collect()
}

#[test]
fn random_samples_are_seeded_distinct_and_in_range() {
    let c = candidates(50);
    let d = drill("sample = 5\nstrategy = \"random\"\nseed = 7");
    let a = sample(&d, c.targets(), 7, &BTreeMap::new()).unwrap();
    let b = sample(&d, c.targets(), 7, &BTreeMap::new()).unwrap();
    let other = sample(&d, c.targets(), 8, &BTreeMap::new()).unwrap();
    assert_eq!(a, b);
    assert_ne!(ids(&a), ids(&other));
    let mut u = ids(&a);
    u.dedup();
    assert_eq!(u.len(), 5);
    // Too few candidates: refused, saying how many.
    let e = sample(&d, candidates(3).targets(), 7, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("returned 3 tenant(s); the drill samples 5"), "{e}");
}

#[test]
fn least_recently_drilled_takes_the_never_drilled_then_the_oldest() {
    let c = candidates(4);
    let d = drill("sample = 2\nstrategy = \"least-recently-drilled\"\nwithin = \"7d\"");
    let id = |i: usize| c.targets()[i].id.to_string();
    let history = BTreeMap::from([(id(0), 50), (id(1), 10), (id(3), 30)]);
    let s = sample(&d, c.targets(), 0, &history).unwrap();
    assert_eq!(s.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(), vec![id(2), id(1)]);
}

#[test]
fn a_list_must_name_candidates() {
    let c = candidates(3);
    let id = c.targets()[2].id.to_string();
    let d = drill(&format!("strategy = \"list\"\nids = [\"{id}\"]"));
    assert_eq!(sample(&d, c.targets(), 0, &BTreeMap::new()).unwrap()[0].id.to_string(), id);
    let d = drill("strategy = \"list\"\nids = [\"00000000-0000-4000-8000-999999999999\"]");
    let e = sample(&d, c.targets(), 0, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("is not among the 3 tenants"), "{e}");
}

fn result() -> DrillResult {
    DrillResult {
        drill: "nightly <&> \"x\"".into(),
        drill_id: "d1".into(),
        run_id: Some("r1".into()),
        mode: "isolated".into(),
        started_at: "2026-01-01T05:00:00Z".into(),
        restore_point: Some("2022-04-05T07:38:00Z".into()),
        seed: Some(1),
        passed: false,
        rto_s: Some(3.5),
        rto_objective_s: 1.0,
        rpo_s: Some(0.0),
        rpo_objective_s: Some(900.0),
        targets: vec![
            TargetResult {
                id: "t1".into(),
                new_id: None,
                restored: true,
                restored_s: Some(3.0),
                failure: None,
            },
            TargetResult {
                id: "t2".into(),
                new_id: None,
                restored: false,
                restored_s: None,
                failure: Some("step `v` failed: <no row>".into()),
            },
        ],
        objectives: vec![
            ObjectiveResult {
                name: "rto".into(),
                objective_s: 1.0,
                achieved_s: Some(3.5),
                passed: false,
                message: "rto 3.5s: missed by 2.5s".into(),
            },
            ObjectiveResult {
                name: "rpo".into(),
                objective_s: 900.0,
                achieved_s: Some(0.0),
                passed: true,
                message: "met".into(),
            },
        ],
        cleanup: vec![CleanupStep { command: "drop".into(), ok: true, said: "{}".into() }],
        failures: vec!["rto 3.5s: missed by 2.5s".into()],
        wall_s: 3.6,
        scheduled: Some(Scheduled {
            due_at: "2026-01-01T05:00:00Z".into(),
            late: true,
            late_s: Some(7200.0),
        }),
    }
}

/// A tiny well-formedness check: one root, every tag closed in order, attributes quoted, no
/// bare `&` or `<` in text.
fn well_formed(xml: &str) -> Result<usize, String> {
    let body =
        xml.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n").ok_or("no declaration")?;
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    let mut elements = 0;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        if text.contains('>')
            || text
                .replace("&amp;", "")
                .replace("&lt;", "")
                .replace("&gt;", "")
                .replace("&quot;", "")
                .replace("&apos;", "")
                .contains('&')
        {
            return Err(format!("bad text {text:?}"));
        }
        let end = rest[i..].find('>').ok_or("unclosed tag")? + i;
        let tag = &rest[i + 1..end];
        if tag.matches('"').count() % 2 != 0 || tag.contains('<') {
            return Err(format!("bad tag {tag:?}"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name) {
                return Err(format!("</{name}> closes nothing open"));
            }
        } else {
            elements += 1;
            if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or("").to_owned());
            }
            if stack.is_empty() && elements > 1 && rest[end + 1..].trim().contains('<') {
                return Err("more than one root".into());
            }
        }
        rest = &rest[end + 1..];
    }
    if stack.is_empty() && rest.trim().is_empty() {
        Ok(elements)
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

#[test]
fn junit_is_well_formed_with_a_case_per_objective_and_target() {
    let xml = junit(&result());
    well_formed(&xml).map_err(|e| format!("{e}\n{xml}")).unwrap();
    assert!(xml.contains("tests=\"5\" failures=\"2\""), "{xml}");
    assert!(xml.contains("<testsuite name=\"nightly &lt;&amp;&gt; &quot;x&quot;\""), "{xml}");
    assert!(xml.contains("<failure message=\"rto 3.5s: missed by 2.5s\">"), "{xml}");
    assert!(xml.contains("step `v` failed: &lt;no row&gt;"), "{xml}");
    assert!(well_formed("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a><b></a></b>").is_err());
}

#[test]
fn markdown_and_trend() {
    let md = markdown(&result());
    assert!(md.starts_with("# Drill `nightly <&> \"x\"`: FAILED"), "{md}");
    assert!(md.contains("| `t2` | no: step `v` failed: <no row> | - |"), "{md}");
    assert!(md.contains("| scheduled | 2026-01-01T05:00:00Z (late by 7200s) |"), "{md}");
    assert_eq!(
        trend(&[Some(4.0), None, Some(3.0)]),
        "4.0s → 3.0s (-25%), min 3.0s, max 4.0s over 2 drills"
    );
    assert_eq!(trend(&[None]), "-");
}

#[test]
fn as_new_ids_are_fresh_unique_and_never_a_live_tenants() {
    let c = candidates(20);
    let d = drill("sample = 5\nstrategy = \"random\"\nseed = 3");
    let mut s = sample(&d, c.targets(), 3, &BTreeMap::new()).unwrap();
    rewind_drill::assign_new_ids(&mut s, c.targets()).unwrap();
    let live: Vec<String> = c.targets().iter().map(|t| t.id.to_string()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for t in &s {
        let n = t.attrs.iter().find(|(k, _)| k.as_str() == "new_id").unwrap().1.to_string();
        assert!(uuid::Uuid::parse_str(&n).is_ok(), "{n}");
        assert!(!live.contains(&n), "{n} is a live tenant's id");
        assert!(seen.insert(n));
    }

    // A selector's own new_id is kept when fresh, refused when it is a live tenant's or repeated.
    let given = |new_ids: &[&str]| {
        let mut text = "id,kind,new_id\n".to_owned();
        for (i, n) in new_ids.iter().enumerate() {
            text.push_str(&format!("00000000-0000-4000-8000-{i:012},site,{n}\n"));
        }
        TargetSet::parse("g.csv", &text, TargetsFormat::Csv).unwrap().targets().to_vec()
    };
    let mut ok = given(&["11111111-1111-4111-8111-111111111111"]);
    rewind_drill::assign_new_ids(&mut ok, c.targets()).unwrap();
    assert_eq!(
        ok[0].attrs.iter().find(|(k, _)| k.as_str() == "new_id").unwrap().1.to_string(),
        "11111111-1111-4111-8111-111111111111"
    );
    let mut live_one = given(&["00000000-0000-4000-8000-000000000007"]);
    let e = rewind_drill::assign_new_ids(&mut live_one, c.targets()).unwrap_err().to_string();
    assert!(e.contains("live tenant"), "{e}");
    let mut twice =
        given(&["11111111-1111-4111-8111-111111111111", "11111111-1111-4111-8111-111111111111"]);
    let e = rewind_drill::assign_new_ids(&mut twice, c.targets()).unwrap_err().to_string();
    assert!(e.contains("another sampled tenant"), "{e}");
}
