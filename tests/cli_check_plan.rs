//! `rewind check` and `rewind plan`, run as users run them: exit codes, output, JSON fields, and
//! that a refusal names the file and line and writes nothing.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `rewind` in `cwd` with a checkpoint store URL inside it, so a stray write would show.
fn rewind(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .current_dir(cwd)
        .env("REWIND_DB", format!("sqlite://{}/rewind.db", cwd.display()))
        .output()
        .expect("rewind runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &str) -> String {
    root().join(p).display().to_string()
}

const RP: &str = "2022-04-05T07:33:00Z";

/// Asserts exit code 2, an empty stdout, `needles` in stderr, and an untouched `dir`.
#[track_caller]
fn assert_refused(dir: &Path, o: &Output, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    assert!(stdout(o).is_empty(), "nothing on stdout when refused: {}", stdout(o));
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    let written: Vec<_> =
        std::fs::read_dir(dir).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert!(
        written.iter().all(|f| f.to_string_lossy().starts_with("input")),
        "nothing written: {written:?}"
    );
}

#[test]
fn check_accepts_the_shipped_workflows() {
    let dir = tempfile::tempdir().unwrap();
    for wf in ["workflows/restore-2.toml", "workflows/restore-1.toml"] {
        let o = rewind(dir.path(), &["check", &path(wf)]);
        assert_eq!(o.status.code(), Some(0), "{wf}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.starts_with(&format!("{}: ok\n", path(wf))), "{out}");
        assert!(out.contains("(restores `site` targets)"), "{out}");
        assert!(out.contains("critical path"), "{out}");
    }
}

#[test]
fn check_refuses_with_every_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("input.toml");
    std::fs::write(
        &wf,
        "name = \"x\"\ntarget_kind = \"site\"\n[[steps]]\nid = \"a\"\nestimate = \"1m\"\nretrys = 2\naction = { kind = \"command\", program = \"x\" }\n[[steps]]\nid = \"b\"\nneeds = [\"c\"]\nestimate = \"1m\"\naction = { kind = \"command\", program = \"x\" }\n",
    )
    .unwrap();
    let o = rewind(dir.path(), &["check", wf.to_str().unwrap()]);
    let file = wf.display().to_string();
    assert_refused(
        dir.path(),
        &o,
        &[
            &format!(
                "{file}:6:1: error[unknown-key]: step `a`: unknown key `retrys` in step (did you mean `retries`?)"
            ),
            &format!("{file}:10:10: error[unknown-need]: step `b`: needs unknown step `c`"),
            &format!("rewind: {file}: 2 errors; nothing was run"),
        ],
    );
}

#[test]
fn check_caps_a_flood_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("input.toml");
    let mut text = String::from("name = \"x\"\ntarget_kind = \"site\"\n");
    for i in 0..60 {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\nestimate = \"soon\"\naction = {{ kind = \"command\", program = \"x\" }}\n"));
    }
    std::fs::write(&wf, text).unwrap();
    let o = rewind(dir.path(), &["check", wf.to_str().unwrap()]);
    assert_refused(dir.path(), &o, &["... and 10 more", "60 errors; nothing was run"]);
    assert_eq!(stderr(&o).matches("error[invalid-duration]").count(), 50);
}

#[test]
fn check_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = rewind(dir.path(), &["check", "no/such/workflow.toml"]);
    assert_refused(dir.path(), &o, &["cannot read workflow `no/such/workflow.toml`"]);
}

#[test]
fn plan_previews_restore_2_over_883_sites_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = rewind(
        dir.path(),
        &[
            "plan",
            "--workflow",
            &path("workflows/restore-2.toml"),
            "--targets",
            &path("examples/sites-883.csv"),
            "--restore-point",
            RP,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "plan: workflow `restore-2` over 883 `site` targets",
        "restore point  2022-04-05T07:33:00Z",
        "fingerprint    sha256:",
        "tracker.db.pitr               group:shard",
        "resource pools",
        "critical path  ",
        "lower bound by estimates  3d (set by pool db_restore)",
        "what each store receives (by the connection each action writes to)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let stores = out.split("what each store receives").nth(1).unwrap();
    let names: Vec<&str> =
        stores.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    for not_a_store in ["validate", "licensing", "preflight", "audit", "report", "scratch"] {
        assert!(!names.contains(&not_a_store), "{not_a_store} is a step prefix: {stores}");
    }
    assert!(names.contains(&"catalog") && names.contains(&"identity"), "{stores}");
    assert!(stores.contains("(commands: not known)"), "{stores}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "plan writes nothing");
}

#[test]
fn plan_json_carries_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let o = rewind(
        dir.path(),
        &[
            "plan",
            "--workflow",
            &path("workflows/restore-2.toml"),
            "--targets",
            &path("examples/sites-883.csv"),
            "--restore-point",
            RP,
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["workflow"], "restore-2");
    assert_eq!(v["restore_point"], RP);
    assert!(v["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(v["targets"]["count"], 883);
    assert_eq!(v["targets"]["kind"], "site");
    assert_eq!(v["targets"]["groups"]["shard"], 24);
    let (instances, runnable, skipped) = (
        v["instances"].as_u64().unwrap(),
        v["runnable"].as_u64().unwrap(),
        v["skipped"].as_u64().unwrap(),
    );
    assert_eq!(instances, runnable + skipped);
    let steps = v["steps"].as_array().unwrap();
    assert!(steps.len() >= 30);
    let pitr = steps.iter().find(|s| s["step"] == "tracker.db.pitr").unwrap();
    assert_eq!(pitr["scope"], "group:shard");
    assert_eq!(pitr["instances"], 24);
    assert_eq!(pitr["resource"], "db_restore");
    assert_eq!(pitr["estimate_s"], 9.0 * 3600.0);
    assert_eq!(pitr["needs"], serde_json::json!(["preflight"]));
    assert!(pitr["action"].as_str().unwrap().starts_with("command "));
    let summed: u64 = steps
        .iter()
        .map(|s| s["instances"].as_u64().unwrap() + s["skipped"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, instances);
    let db = v["resources"].as_array().unwrap().iter().find(|p| p["name"] == "db_restore").unwrap();
    assert_eq!(db["capacity"], 6);
    assert_eq!(db["instances"], 48);
    assert_eq!(db["bound_s"], 48.0 * 9.0 * 3600.0 / 6.0);
    assert_eq!(v["lower_bound_s"], db["bound_s"]);
    assert_eq!(v["bound_by"], "pool:db_restore");
    let cp = v["critical_path"].as_array().unwrap();
    assert_eq!(cp[0]["key"], "preflight");
    let total: f64 = cp.iter().map(|c| c["estimate_s"].as_f64().unwrap()).sum();
    assert_eq!(total, v["critical_path_s"].as_f64().unwrap());
    let stores = v["stores"].as_array().unwrap();
    let catalog = stores.iter().find(|s| s["store"] == "catalog").unwrap();
    assert_eq!(catalog["targets"], 883);
    assert_eq!(catalog["kind"], "connection");
    // Issue 15: by connection, not by step-id prefix: licensing's copy writes to the catalog,
    // `preflight` and `audit.batch` are SQL on it; `validate.*` compare, writing nothing.
    let steps = |s: &serde_json::Value| -> Vec<String> {
        s["steps"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(
        steps(catalog),
        ["preflight", "catalog.undelete", "licensing.restore", "audit.batch"],
        "{catalog}"
    );
    let identity = stores.iter().find(|s| s["store"] == "identity").unwrap();
    assert_eq!(
        steps(identity),
        ["identity.users.restore", "identity.groups.restore", "identity.permissions.restore"]
    );
    let nothing = stores.iter().find(|s| s["kind"] == "nothing").unwrap();
    assert!(steps(nothing).contains(&"validate.catalog".to_owned()), "{nothing}");
    assert!(steps(nothing).contains(&"audit.restore_point".to_owned()), "{nothing}");
    let unknown = stores.iter().find(|s| s["kind"] == "unknown").unwrap();
    assert!(steps(unknown).contains(&"catalog.pitr".to_owned()), "{unknown}");
    for s in stores {
        let name = s["store"].as_str().unwrap();
        for prefix in ["validate", "licensing", "preflight", "audit", "report", "scratch"] {
            assert_ne!(name, prefix, "a step-id prefix is not a store: {s}");
        }
    }
}

#[test]
fn plan_refuses_an_app_id_among_the_sites() {
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("input.csv");
    let mut text = std::fs::read_to_string(root().join("examples/sites-883.csv")).unwrap();
    text.push_str("c0ffee00-0000-4000-8000-000000000001,app,us-east,s01,tracker\n");
    std::fs::write(&targets, text).unwrap();
    let o = rewind(
        dir.path(),
        &[
            "plan",
            "--workflow",
            &path("workflows/restore-2.toml"),
            "--targets",
            targets.to_str().unwrap(),
            "--restore-point",
            RP,
        ],
    );
    assert_refused(
        dir.path(),
        &o,
        &[&format!(
            "{}:885:1: error[wrong-kind]: target c0ffee00-0000-4000-8000-000000000001 is of kind `app`, but workflow `restore-2` restores `site` targets",
            targets.display()
        )],
    );
}

#[test]
fn plan_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let wf = path("workflows/restore-2.toml");
    let sites = path("examples/sites-883.csv");
    let o = rewind(
        dir.path(),
        &["plan", "--workflow", &wf, "--targets", &sites, "--restore-point", "2022-04-05 07:33"],
    );
    assert_refused(
        dir.path(),
        &o,
        &["--restore-point: restore point \"2022-04-05 07:33\" is not an RFC 3339 UTC time"],
    );
    let o = rewind(
        dir.path(),
        &[
            "plan",
            "--workflow",
            &wf,
            "--targets",
            &sites,
            "--restore-point",
            "2022-04-05T09:33:00+02:00",
        ],
    );
    assert_refused(dir.path(), &o, &["it must end in Z"]);
    let txt = dir.path().join("input.txt");
    std::fs::write(&txt, "x").unwrap();
    let o = rewind(
        dir.path(),
        &["plan", "--workflow", &wf, "--targets", txt.to_str().unwrap(), "--restore-point", RP],
    );
    assert_refused(dir.path(), &o, &["unknown format; name it *.csv or *.jsonl"]);
    let o = rewind(
        dir.path(),
        &["plan", "--workflow", &wf, "--targets", "missing.csv", "--restore-point", RP],
    );
    assert_refused(dir.path(), &o, &["cannot read targets file `missing.csv`"]);
    let o = rewind(dir.path(), &["plan", "--workflow", &wf, "--restore-point", RP]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2 too");
}

/// `rewind check W | head -1`: output into a closed pipe ends rewind quietly with 141, as a
/// shell reports a Unix tool killed by SIGPIPE; never a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let wf = root().join("workflows/restore-2.toml");
    let targets = root().join("examples/sites-883.csv");
    let plan = ["plan", "--workflow", wf.to_str().unwrap(), "--targets", targets.to_str().unwrap()];
    let mut plan = plan.to_vec();
    plan.extend(["--restore-point", "2022-04-05T07:33:00Z", "--json"]);
    // A run to read back, for `status`, `report` and `log`.
    let mut sim = plan.clone();
    sim[0] = "run";
    sim.pop();
    sim.push("--simulate");
    let o = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(&sim)
        .current_dir(dir.path())
        .env("REWIND_DB", format!("sqlite://{}/rewind.db", dir.path().display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = String::from_utf8_lossy(&o.stdout).lines().next().unwrap()[4..].to_owned();
    let run = run.as_str();
    for args in [
        vec!["check", wf.to_str().unwrap()],
        plan,
        vec!["status"],
        vec!["status", run, "--json"],
        vec!["log", run],
        vec!["log", run, "--json"],
        vec!["report", run, "--format", "json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(&args)
            .current_dir(dir.path())
            .env("REWIND_DB", format!("sqlite://{}/rewind.db", dir.path().display()))
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
    }
}
