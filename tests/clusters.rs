//! `rewind demo --clusters` on real servers: the sandbox starts PostgreSQL clusters and a MariaDB
//! server, archives them continuously, deletes sites in real time, and restore-2-clusters brings
//! them back through `pitr` scratch instances; the sandbox's own verifier judges the result, and
//! no process of the demo (source server or scratch instance) is left running.
//!
//! Skipped, saying so, only when a tool the sandbox starts is not installed (CI installs them).

#![allow(clippy::unwrap_used)] // a panic is a failed test

mod support;

use std::path::{Path, PathBuf};

use support::{Env, stderr, stdout};

/// The programs `--clusters` runs; the first missing one, if any.
fn missing_tool() -> Option<String> {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    let pg_bin = std::env::var_os("REWIND_PG_BINDIR").map(PathBuf::from).or_else(|| {
        std::fs::read_dir("/usr/lib/postgresql").ok()?.filter_map(|e| e.ok()).find_map(|e| {
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some(bin)
        })
    });
    if pg_bin.is_none() {
        return Some("initdb (PostgreSQL server binaries)".into());
    }
    for p in ["pgbackrest", "mariadb-install-db", "mariadb-backup", "mariadb", "runuser"] {
        if !on_path(p) {
            return Some(p.into());
        }
    }
    if !on_path("mariadbd") && !Path::new("/usr/sbin/mariadbd").is_file() {
        return Some("mariadbd".into());
    }
    None
}

/// Processes whose working directory is under `dir` (servers chdir to their data directory).
fn processes_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
            out.push(format!("{name}: {}", cmd.replace('\0', " ")));
        }
    }
    out
}

/// However the test ends: drops the demo's scratch instances and stops the sandbox's servers.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Runtime::new() else { return };
        rt.block_on(async {
            let registry = rewind_pitr::Registry::at(self.0.join("scratch-registry"));
            if let Ok(listed) = registry.list(None) {
                for l in listed {
                    let _ = registry.drop_run(&l.entry.owner.run).await;
                }
            }
            let sandbox = self.0.join("sandbox");
            if sandbox.join("sandbox.json").exists() {
                let _ = rewind_sandbox::clusters::stop(&sandbox).await;
            }
        });
    }
}

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
    let _stop = Stop(dir.clone());
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
