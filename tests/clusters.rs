//! `rewind demo --clusters` on real servers: the sandbox starts PostgreSQL clusters and a MariaDB
//! server, archives them continuously, deletes sites in real time, and restore-2-clusters brings
//! them back through `pitr` scratch instances; the sandbox's own verifier judges the result, and
//! no process of the demo (source server or scratch instance) is left running.
//!
//! Skipped, saying so, only when a tool the sandbox starts is not installed (CI installs them).

#![allow(clippy::unwrap_used)] // a panic is a failed test

mod support;

use support::clusters::{Stop, missing_tool, processes_under};
use support::{Env, stderr, stdout};

/// The value after `label` on the line that starts with it.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
        .trim()
}

#[test]
fn demo_on_real_servers_passes_verify_and_leaves_no_server_running() {
    if let Some(tool) = missing_tool() {
        eprintln!(
            "note: {tool} is not installed; skipping the --clusters demo (apt-get install -y \
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
    let dir = env.path("demo");
    let _stop = Stop { registry: dir.join("scratch-registry"), sandbox: dir.join("sandbox") };
    let d = dir.to_str().unwrap();
    // Real time: the restore point is now, not the tests' fixed 2022 clock.
    let o = env
        .cmd(&["demo", "--clusters", "--dir", d, "--sites", "40", "--delete", "12"])
        .env_remove("REWIND_NOW")
        .env_remove("REWIND_SCRATCH_REGISTRY")
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(field(&out, "sites restored"), "12/12 (100.0%)", "{out}");
    assert_eq!(field(&out, "verify  "), "PASS", "{out}");
    assert!(out.contains("verify: ok: every restored site is at the restore point"), "{out}");

    // Each server was recovered by a pitr step, which reported its time and bytes replayed.
    for server in ["platform", "identity", "tracker-s01", "tracker-s02", "wiki-s01", "wiki-s02"] {
        let line = out
            .lines()
            .find(|l| {
                l.trim_start().starts_with(&format!("{server} ")) && l.contains("recovered in")
            })
            .unwrap_or_else(|| panic!("no recovery line for {server} in:\n{out}"));
        assert!(line.contains("bytes of"), "{line}");
    }
    // The restore point is the sandbox's recommendation, recorded in its manifest.
    let m = rewind_sandbox::Manifest::load(&dir.join("sandbox")).unwrap();
    let rp = m.incident.as_ref().and_then(|i| i.restore_point).expect("a recommended point");
    assert!(field(&out, "restore point  ").starts_with(&rp.to_string()[..19]), "{out}");

    // Nothing of the demo runs any more: no source server, no scratch instance.
    let left = processes_under(&dir);
    assert!(
        left.is_empty(),
        "processes left running under {}:\n{}",
        dir.display(),
        left.join("\n")
    );
    assert!(
        std::fs::read_dir(dir.join("sandbox/instances")).map_or(true, |mut d| d
            .all(|run| std::fs::read_dir(run.unwrap().path()).unwrap().next().is_none())),
        "the run's scratch instances were removed"
    );
}
