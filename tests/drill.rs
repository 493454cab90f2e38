//! `rewind drill run / history / report` on a sandbox: a drill that meets its objectives passes,
//! an impossible RTO and a failing validation fail it (exit 1, saying why), every drill leaves no
//! scratch copy behind, history lists them, the JUnit report is XML, bad files are refused (2).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rewind(sandbox: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .env("SANDBOX", sandbox)
        .env_remove("REWIND_DB")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn last_json(o: &Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The shipped drill, with `edit` applied and its workflow path made absolute.
fn drill_file(dir: &Path, name: &str, edit: &dyn Fn(String) -> String, workflow: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(root().join("drills/nightly-sample.toml")).unwrap();
    let text = shipped.replace(
        "\"../workflows/drill-isolated.toml\"",
        &format!("{:?}", workflow.display().to_string()),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// No scratch copy of `run` is left in the sandbox.
fn no_scratch_left(sandbox: &Path, result: &Value) {
    let run = result["run_id"].as_str().unwrap();
    let dir = sandbox.join("scratch").join(run);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch copies left behind: {left:?}");
}

#[test]
fn drills_pass_fail_clean_up_and_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let db = format!("sqlite://{}", tmp.path().join("rewind.db").display());
    let sb = sandbox.to_str().unwrap();
    let init = rewind(&sandbox, &["sandbox", "init", sb, "--sites", "20", "--shards", "2"]);
    assert!(init.status.success(), "{}", text(&init));
    let workflow = root().join("workflows/drill-isolated.toml");

    // Meets its objectives: exit 0, the JSON fields.
    let good = drill_file(tmp.path(), "good", &|t| t, &workflow);
    let o = rewind(
        &sandbox,
        &["drill", "run", good.to_str().unwrap(), "--json", "--db", &db, "--seed", "3"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = last_json(&o);
    assert_eq!(r["drill"], "nightly-sample");
    assert_eq!(r["passed"], true);
    assert_eq!(r["targets"].as_array().unwrap().len(), 5);
    assert!(r["rto_s"].as_f64().unwrap() > 0.0 && r["rto_objective_s"] == 60.0);
    assert_eq!((r["rpo_s"].as_f64(), r["rpo_objective_s"].as_f64()), (Some(0.0), Some(900.0)));
    assert_eq!(r["failures"], Value::Array(vec![]));
    no_scratch_left(&sandbox, &r);
    let passed_id = r["drill_id"].as_str().unwrap().to_owned();
    // The run is a normal run.
    let st = rewind(&sandbox, &["status", r["run_id"].as_str().unwrap(), "--db", &db]);
    assert!(st.status.success(), "{}", text(&st));

    // An RTO it cannot meet: exit 1, by how much.
    let fast =
        drill_file(tmp.path(), "fast", &|t| t.replace("rto = \"1m\"", "rto = \"1ms\""), &workflow);
    let o = rewind(&sandbox, &["drill", "run", fast.to_str().unwrap(), "--json", "--db", &db]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = last_json(&o);
    assert_eq!(r["passed"], false);
    let f = r["failures"][0].as_str().unwrap();
    assert!(f.contains("objective 0.0s: missed by"), "{f}");
    no_scratch_left(&sandbox, &r);

    // A validation that fails fails the drill, and it still cleans up.
    let wf = std::fs::read_to_string(&workflow)
        .unwrap()
        .replace("WHEN COUNT(*) = 1 THEN", "WHEN COUNT(*) = 2 THEN");
    let bad_wf = tmp.path().join("bad-validation.toml");
    std::fs::write(&bad_wf, wf).unwrap();
    let failing = drill_file(tmp.path(), "failing", &|t| t, &bad_wf);
    let o = rewind(&sandbox, &["drill", "run", failing.to_str().unwrap(), "--json", "--db", &db]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = last_json(&o);
    let all = r["failures"].to_string();
    assert!(all.contains("not every sampled target was restored and validated"), "{all}");
    assert!(all.contains("step `catalog.validate` for target"), "{all}");
    assert_eq!(r["rto_s"], Value::Null);
    no_scratch_left(&sandbox, &r);

    // History lists all three, oldest first, with the trend.
    let h = rewind(&sandbox, &["drill", "history", "nightly-sample", "--db", &db]);
    let out = String::from_utf8_lossy(&h.stdout);
    assert!(h.status.success(), "{}", text(&h));
    assert_eq!(out.lines().filter(|l| l.contains("nightly-sample ")).count(), 3, "{out}");
    assert!(out.contains("trend nightly-sample: rto "), "{out}");
    let h = rewind(&sandbox, &["drill", "history", "--json", "--db", &db]);
    let v = last_json(&h);
    assert_eq!(v["drills"].as_array().unwrap().len(), 3);
    assert_eq!(v["trend"]["nightly-sample"]["passed"], 1);

    // Reports: JUnit XML (a testcase per objective and target, the failures), Markdown, JSON.
    let last = v["drills"][2]["drill_id"].as_str().unwrap().to_owned();
    let j = rewind(&sandbox, &["drill", "report", &last, "--format", "junit", "--db", &db]);
    let xml = String::from_utf8_lossy(&j.stdout);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites"), "{xml}");
    assert!(xml.trim_end().ends_with("</testsuites>"), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 2 + 5 + 1, "{xml}");
    assert!(xml.contains("<failure message=\"rto not achieved"), "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), xml.matches("</testsuite>").count());
    let md = rewind(&sandbox, &["drill", "report", &passed_id, "--db", &db]);
    assert!(
        String::from_utf8_lossy(&md.stdout).starts_with("# Drill `nightly-sample`: PASSED"),
        "{}",
        text(&md)
    );
    let js = rewind(&sandbox, &["drill", "report", &passed_id, "--format", "json", "--db", &db]);
    let v: Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v["passed"], true);
    let none = rewind(&sandbox, &["drill", "report", "nope", "--db", &db]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}

#[test]
fn bad_drill_files_are_refused_with_located_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let workflow = root().join("workflows/drill-isolated.toml");
    let db = format!("sqlite://{}", tmp.path().join("rewind.db").display());
    let bad = drill_file(
        tmp.path(),
        "bad",
        &|t| {
            t.replace("sample = 5", "sampel = 5").replace("mode = \"isolated\"", "mode = \"live\"")
        },
        &workflow,
    );
    let o = rewind(tmp.path(), &["drill", "run", bad.to_str().unwrap(), "--db", &db]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let name = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{name}:15:8: error[invalid-value]: `mode` = \"live\" is not one of isolated, as-new"
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "error[unknown-key]: unknown key `sampel` in [select] (did you mean `sample`?)"
        ),
        "{err}"
    );
    assert!(err.contains("nothing was run"), "{err}");
    // A sandbox that is not there: the selector fails, the drill is refused before any run.
    let good = drill_file(tmp.path(), "good", &|t| t, &workflow);
    let o =
        rewind(&tmp.path().join("missing"), &["drill", "run", good.to_str().unwrap(), "--db", &db]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the [select] command"), "{}", text(&o));
}

/// `rewind serve --drills DIR`: a bad drill file refuses the server with its errors located; a
/// good directory is served until SIGTERM, which (no drill running) exits 0 at once.
#[test]
fn serve_refuses_bad_files_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("x.toml"), "name = \"x\"\nworkflow = 3\n").unwrap();
    let o = rewind(tmp.path(), &["serve", "--drills", bad.to_str().unwrap(), "--db", &db]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("x.toml:2:12: error[invalid-type]"), "{}", text(&o));

    let good = tmp.path().join("good");
    std::fs::create_dir(&good).unwrap();
    drill_file(&good, "nightly", &|t| t, &root().join("workflows/drill-isolated.toml"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["serve", "--drills", good.to_str().unwrap(), "--db", &db, "--listen", "127.0.0.1:0"])
        .env_remove("REWIND_DB")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("1 scheduled drill(s)") && first.contains("T05:00:00Z"), "{first}");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("SIGTERM: stopping"), "{rest}");
}

/// The shipped as-new drill: 5 live sites restored as new sites beside them (fresh ids, no live
/// site's), validated remap-aware, then removed; the live sites untouched and no new site left
/// (`sandbox verify` finds no row of an unknown site). A cleanup that forgets the new sites
/// fails the drill, naming each one left behind.
#[test]
fn as_new_drills_restore_beside_the_live_sites_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("sb");
    let db = format!("sqlite://{}", tmp.path().join("rewind.db").display());
    let sb = sandbox.to_str().unwrap();
    let init = rewind(&sandbox, &["sandbox", "init", sb, "--sites", "20", "--shards", "2"]);
    assert!(init.status.success(), "{}", text(&init));
    let live_sites = || {
        let o = rewind(&sandbox, &["sandbox", "sites", sb, "--live", "--with-new"]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
    };
    let before = live_sites();
    assert_eq!(before.len(), 20);
    let shipped = std::fs::read_to_string(root().join("drills/nightly-as-new.toml")).unwrap();
    let workflow = root().join("workflows/drill-as-new.toml");
    let shipped = shipped.replace(
        "\"../workflows/drill-as-new.toml\"",
        &format!("{:?}", workflow.display().to_string()),
    );
    let file = tmp.path().join("as-new.toml");
    std::fs::write(&file, &shipped).unwrap();

    let o = rewind(&sandbox, &["drill", "run", file.to_str().unwrap(), "--json", "--db", &db]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = last_json(&o);
    assert_eq!((r["mode"].as_str(), r["passed"].as_bool()), (Some("as-new"), Some(true)));
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5);
    let live_ids: Vec<&str> = before.iter().map(|l| l.split(',').next().unwrap()).collect();
    for t in targets {
        let new_id = t["new_id"].as_str().unwrap();
        assert!(!live_ids.contains(&new_id), "{new_id} is a live site's id");
        assert!(live_ids.contains(&t["id"].as_str().unwrap()));
        assert_eq!(t["restored"], true);
    }
    // One drop-tenant per new site, then the scratch copies.
    let cleanup = r["cleanup"].as_array().unwrap();
    assert_eq!(cleanup.len(), 6, "{cleanup:?}");
    assert!(cleanup.iter().all(|c| c["ok"] == true), "{cleanup:?}");
    no_scratch_left(&sandbox, &r);
    assert_eq!(live_sites(), before);
    // Every live site as it was, and no row of any other (new) site anywhere.
    let v = rewind(&sandbox, &["sandbox", "verify", sb, "--restore-point", "2022-04-05T07:38:00Z"]);
    assert!(v.status.success(), "{}", text(&v));

    // A cleanup that forgets the new sites: exit 1, each one left behind named.
    let forgetful = tmp.path().join("forgetful.toml");
    let text_without_drop: String =
        shipped.lines().filter(|l| !l.contains("drop-tenant")).collect::<Vec<_>>().join("\n");
    std::fs::write(&forgetful, text_without_drop).unwrap();
    let o = rewind(&sandbox, &["drill", "run", forgetful.to_str().unwrap(), "--json", "--db", &db]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = last_json(&o);
    let left: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .filter(|f| f.contains("the cleanup left the drill tenant"))
        .collect();
    assert_eq!(left.len(), 5, "{}", r["failures"]);
    assert_eq!(live_sites().len(), 25);
    // What a drill samples from: the sandbox's own sites only, never a drill's new ones.
    let own = rewind(&sandbox, &["sandbox", "sites", sb, "--live"]);
    assert_eq!(String::from_utf8_lossy(&own.stdout).lines().skip(1).count(), 20, "{}", text(&own));
    let v = rewind(&sandbox, &["sandbox", "verify", sb, "--restore-point", "2022-04-05T07:38:00Z"]);
    assert!(!v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("(unknown site)"), "{}", text(&v));
}
