//! For tests on a `--clusters` sandbox (real PostgreSQL clusters and a MariaDB server): whether
//! the tools are installed, the processes left under a folder, and a guard that drops scratch
//! instances and stops the sandbox's servers however the test ends.

use std::path::{Path, PathBuf};

/// The programs `--clusters` runs; the first missing one, if any.
pub fn missing_tool() -> Option<String> {
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
pub fn processes_under(dir: &Path) -> Vec<String> {
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

/// However the test ends: drops every scratch instance the registry lists and stops the
/// sandbox's servers.
pub struct Stop {
    /// The scratch registry.
    pub registry: PathBuf,
    /// The sandbox directory.
    pub sandbox: PathBuf,
}

impl Drop for Stop {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Runtime::new() else { return };
        rt.block_on(async {
            let registry = rewind_pitr::Registry::at(&self.registry);
            if let Ok(listed) = registry.list(None) {
                for l in listed {
                    let _ = registry.drop_run(&l.entry.owner.run).await;
                }
            }
            if self.sandbox.join("sandbox.json").exists() {
                let _ = rewind_sandbox::clusters::stop(&self.sandbox).await;
            }
        });
    }
}
