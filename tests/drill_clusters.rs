//! The shipped clusters drill (drills/nightly-clusters.toml with workflows/drill-clusters.toml)
//! on a small `--clusters` sandbox: `sandbox recoverable` reads, from every server's archive, the
//! newest instant all of them recover to exactly; the drill recovers the servers its 5 sampled
//! live sites live on into scratch instances pinned there, validates the sites on them, and
//! passes (exit 0). Afterwards no scratch instance of its run is listed, no server process it
//! started runs, and the live sandbox is as it was.
//!
//! Skipped, saying so, only when a tool the sandbox starts is not installed (CI installs them).

#![allow(clippy::unwrap_used)] // a panic is a failed test

mod support;

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;
use support::clusters::{Stop, missing_tool, processes_under};
use support::{Env, stderr, stdout};

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o))
}

fn instant(v: &Value) -> rewind_model::RestorePoint {
    v.as_str().unwrap_or_else(|| panic!("not an instant: {v}")).parse().unwrap()
}

#[test]
fn the_clusters_drill_passes_and_leaves_nothing_running() {
    if let Some(tool) = missing_tool() {
        eprintln!(
            "note: {tool} is not installed; skipping the clusters drill (apt-get install -y \
             postgresql pgbackrest mariadb-server mariadb-backup)"
        );
        return;
    }
    let env = Env::sqlite();
    // The servers run as `postgres` / `mysql`: the test's folder must be reachable by them.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sandbox = env.path("sb");
    let registry = env.path("scratch-registry");
    let _stop = Stop { registry: registry.clone(), sandbox: sandbox.clone() };
    let sb = sandbox.to_str().unwrap();
    // Real time: the sandbox's clock is the wall clock, not the tests' fixed 2022 one.
    let rewind = |args: &[&str]| {
        env.cmd(args)
            .env_remove("REWIND_NOW")
            .env("SANDBOX", &sandbox)
            .env("REWIND_SCRATCH_REGISTRY", &registry)
            .output()
            .unwrap()
    };

    // Small: 12 sites on one shard (four servers), 2 s of real-time writes.
    let o = rewind(&[
        "sandbox",
        "init",
        sb,
        "--clusters",
        "--sites",
        "12",
        "--shards",
        "1",
        "--live",
        "2s",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // What the archives reach: every server reaches something, the common instant is no later
    // than any server's own, and no later than the sandbox clock (the end of its history).
    let o = rewind(&["sandbox", "recoverable", sb]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let rec: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let (newest, now) = (instant(&rec["newest"]), instant(&rec["now"]));
    let servers = rec["servers"].as_object().unwrap();
    let names: Vec<&str> = servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["identity", "platform", "tracker-s01", "wiki-s01"], "{rec}");
    for (name, own) in servers {
        assert!(instant(own) >= newest, "{name} reaches {own}, before the common {newest}");
    }
    let rpo = now.system_time().duration_since(newest.system_time()).unwrap();
    assert!(rpo.as_secs_f64() < 10.0, "the history's end is sealed into every archive: {rec}");
    let live_before = stdout(&rewind(&["sandbox", "sites", sb, "--live"]));

    // The shipped drill, as shipped.
    let drill = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("drills/nightly-clusters.toml");
    let o = rewind(&["drill", "run", drill.to_str().unwrap(), "--json", "--seed", "7"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(r["drill"], "nightly-clusters");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["failures"], Value::Array(vec![]));
    assert_eq!(instant(&r["restore_point"]), newest, "latest is what the archives reach");
    assert_eq!(r["rpo_s"].as_f64(), Some(rpo.as_secs_f64()), "{r:#}");
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5);
    assert!(targets.iter().all(|t| t["restored"] == true), "{r:#}");
    let cleanup = r["cleanup"].as_array().unwrap();
    assert_eq!(cleanup.len(), 1);
    assert_eq!(cleanup[0]["ok"], true, "{r:#}");
    let run = r["run_id"].as_str().unwrap();
    assert!(cleanup[0]["command"].as_str().unwrap().ends_with(&format!("scratch drop {run}")));

    // Each server the sample lives on was recovered once, and each site audited at the restore
    // point (the audit fails unless every pitr step proved its instance there).
    let report = env.report(run);
    let steps = report["steps"].as_array().unwrap();
    let keys = |prefix: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|s| s["key"].as_str().unwrap().starts_with(prefix))
            .inspect(|s| assert_eq!(s["state"], "succeeded", "{s}"))
            .map(|s| s["key"].as_str().unwrap())
            .collect()
    };
    let pitr: Vec<&str> = ["platform.pitr", "identity.pitr", "tracker.pitr", "wiki.pitr"]
        .iter()
        .flat_map(|p| keys(p))
        .collect();
    assert_eq!(
        pitr,
        ["platform.pitr", "identity.pitr", "tracker.pitr/shard=s01", "wiki.pitr/shard=s01"]
    );
    assert_eq!(keys("audit.restore_point/").len(), 5);

    // Nothing of its run is left: none listed, no server process, no scratch directory.
    let o = rewind(&["scratch", "list", run]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), format!("no scratch instances of run {run}"));
    let instances = sandbox.join("instances");
    let left = processes_under(&instances);
    assert!(left.is_empty(), "scratch servers left running:\n{}", left.join("\n"));
    let run_dir = instances.join(run);
    assert!(
        std::fs::read_dir(&run_dir).map_or(true, |mut d| d.next().is_none()),
        "{} is not empty",
        run_dir.display()
    );

    // The live system was not written: the same live sites, every store as the ledger says.
    assert_eq!(stdout(&rewind(&["sandbox", "sites", sb, "--live"])), live_before);
    let rp = newest.to_string();
    let o = rewind(&["sandbox", "verify", sb, "--restore-point", &rp]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("nothing else changed"), "{}", text(&o));

    // Stopped, the sandbox leaves no process at all.
    let o = rewind(&["sandbox", "stop", sb]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let left = processes_under(env.dir.path());
    assert!(left.is_empty(), "processes left running:\n{}", left.join("\n"));
}

/// On a sandbox without servers the clusters drill is refused by its `[rpo]` probe before
/// anything runs (exit 2), rather than failing in its `pitr` steps.
#[test]
fn the_clusters_drill_is_refused_on_a_sandbox_without_servers() {
    let env = Env::sqlite();
    let sandbox = env.path("sb");
    let sb = sandbox.to_str().unwrap();
    let rewind = |args: &[&str]| env.cmd(args).env("SANDBOX", &sandbox).output().unwrap();
    let o = rewind(&["sandbox", "init", sb, "--sites", "8", "--shards", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let drill = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("drills/nightly-clusters.toml");
    let o = rewind(&["drill", "run", drill.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("[rpo]") && err.contains("has no database servers"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!stdout(&o).contains("run "), "{}", text(&o));
    assert!(!sandbox.join("instances").exists(), "no scratch instance was started");
}
