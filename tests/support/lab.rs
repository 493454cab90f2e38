//! A lab of hosts for tests of `rewind` across machines (tests/hosts.rs): a bridge in the root
//! network namespace, a scratch PostgreSQL cluster (this machine's `initdb`/`pg_ctl`, run as
//! `postgres`) listening only on the bridge's address and trusting its subnet, and hosts, each a
//! network namespace with a veth pair onto the bridge, whose processes run in a UTS namespace of
//! their own with the host's name. [`Host::spawn`] starts any `rewind` command on a host.
//!
//! Names (links, namespaces, subnet) are unique per test process and lab, so tests run in
//! parallel. Every resource has its own guard, dropped also when the test panics: processes are
//! killed, namespaces and links deleted, the cluster stopped. What a test process killed with
//! SIGKILL left behind (no `Drop` ran) is swept by the next lab (`sweep`).
//!
//! Include it with `#[path = "support/lab.rs"] mod lab;` beside `mod support;`.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::support::Env;

/// The lease of dispatched attempts (`REWIND_LEASE_MS`) of the processes started on hosts: a
/// lost worker's attempts are rescued after it.
pub const LEASE_MS: &str = "1000";

/// Distinguishes the labs of one test process (names are `<pid>x<counter>`).
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a setup command; panics with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a teardown command, ignoring failure (the resource may be gone already).
pub fn sh_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn on_path(p: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}

/// What the lab needs and this machine lacks, if anything.
pub fn missing() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| {
                l.split_whitespace().nth(1).unwrap_or_default().to_owned() // effective uid
            })
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!("root (network namespaces; running as uid {uid})"));
    }
    for p in ["ip", "unshare", "runuser", "hostname"] {
        if !on_path(p) {
            return Some(format!("`{p}` (apt-get install -y iproute2 util-linux hostname)"));
        }
    }
    let bin = rewind_pitr::pg::bindir(None);
    for p in ["initdb", "pg_ctl"] {
        if !bin.join(p).is_file() {
            return Some(format!("{} (apt-get install -y postgresql)", bin.join(p).display()));
        }
    }
    None
}

/// The environment variable naming the lab (`<pid>x<n>`) of every process a lab starts (and
/// their children, the steps): [`sweep`] finds a dead test process's leftovers by it.
pub const LAB_VAR: &str = "REWIND_TEST_LAB";

/// Where the clusters' folders are made (in the temporary folder): `<this><pid>-<random>`.
const CLUSTER_DIR: &str = "rewind-hosts-pg-";

/// Removes what the labs of test processes no longer running left behind (a test process killed
/// with SIGKILL runs no `Drop`): their namespaces, bridges and links, and their clusters (stopped,
/// their folders removed). Each name carries the pid of the process that made it.
fn sweep() {
    let dead = |name: &str, prefix: &str, sep: char| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split(sep).next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_some_and(|pid| !crate::support::is_alive(pid))
    };
    // Processes first (workers, coordinators, their steps): they hold namespaces and connections.
    for e in std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        let Ok(environ) = std::fs::read(e.path().join("environ")) else { continue };
        let lab = environ.split(|b| *b == 0).find_map(|v| {
            let v = std::str::from_utf8(v).ok()?;
            v.strip_prefix(LAB_VAR)?.strip_prefix('=').map(str::to_owned)
        });
        if lab.is_some_and(|lab| dead(&lab, "", 'x')) {
            sh_quiet("kill", &["-KILL", &e.file_name().to_string_lossy()]);
        }
    }
    for line in sh("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name, "rwh", 'x') {
            sh_quiet("ip", &["netns", "del", name]);
        }
    }
    for line in sh("ip", &["-o", "link", "show"]).lines() {
        // `12: rwv123x0h0@if11: <BROADCAST,…`
        let name =
            line.split(": ").nth(1).unwrap_or_default().split('@').next().unwrap_or_default();
        if dead(name, "rwb", 'x') || dead(name, "rwv", 'x') {
            sh_quiet("ip", &["link", "del", name]);
        }
    }
    let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in dirs.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if dead(&name, CLUSTER_DIR, '-') {
            let data = e.path().join("data");
            if data.join("postmaster.pid").exists() {
                let bin = rewind_pitr::pg::bindir(None);
                let d = data.display().to_string();
                let args = Cluster::pg_ctl(&bin, &["-D", &d, "-m", "immediate", "-w", "stop"]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sh_quiet("runuser", &args);
            }
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A bridge in the root namespace with the first address of its /24; deleted on drop.
struct Bridge {
    name: String,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        sh_quiet("ip", &["link", "del", &self.name]);
    }
}

/// A scratch PostgreSQL cluster listening only on the bridge's address, trusting its subnet;
/// stopped (immediately) and removed on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    /// Removed after the server stopped (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn pg_ctl(bin: &Path, args: &[&str]) -> Vec<String> {
        let mut a = vec!["-u".to_owned(), "postgres".into(), "--".into()];
        a.push(bin.join("pg_ctl").display().to_string());
        a.extend(args.iter().map(|s| (*s).to_owned()));
        a
    }

    fn start(ip: &str, subnet: &str) -> Self {
        let bin = rewind_pitr::pg::bindir(None);
        let prefix = format!("{CLUSTER_DIR}{}-", std::process::id());
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            // The server runs as `postgres`: it must reach its data directory.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let data = dir.path().join("data");
        let d = data.display().to_string();
        sh("install", &["-d", "-o", "postgres", "-g", "postgres", "-m", "0700", &d]);
        let initdb = bin.join("initdb").display().to_string();
        sh(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &initdb,
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "\n# rewind tests/hosts.rs\nlisten_addresses = '{ip}'\nport = 5432\n\
             unix_socket_directories = '{d}'\nfsync = off\nshared_buffers = 16MB\n\
             max_connections = 60\n"
        ));
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\nhost all all {subnet} trust\n"),
        )
        .unwrap();
        // Constructed before it starts: a start that fails half-way is still stopped.
        let cluster = Self { bin, data, _dir: dir };
        let log = cluster.data.join("server.log").display().to_string();
        let args = Self::pg_ctl(&cluster.bin, &["-D", &d, "-l", &log, "-w", "-t", "60", "start"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("runuser", &args);
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.data.display().to_string();
        let args = Self::pg_ctl(&self.bin, &["-D", &d, "-m", "immediate", "-w", "stop"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh_quiet("runuser", &args);
    }
}

/// A bridge, a PostgreSQL cluster bound on it, and the test's folder using that store.
/// Hosts are made with [`Lab::host`].
pub struct Lab {
    /// The test's folder; `env.db` is the cluster.
    pub env: Env,
    /// Names of this lab's links and namespaces start with `rw?<id>`.
    id: String,
    /// The first three octets of the subnet.
    net: String,
    hosts: AtomicU32,
    // Dropped in this order: the server first, then the bridge.
    _cluster: Cluster,
    bridge: Bridge,
}

impl Lab {
    /// The lab, or `None` (said on stderr) when this machine cannot make one and
    /// `REWIND_TEST_POSTGRES` is unset; panics when it is set (CI must run these tests).
    pub fn new(test: &str) -> Option<Self> {
        if let Some(what) = missing() {
            let required = std::env::var("REWIND_TEST_POSTGRES").is_ok_and(|u| !u.is_empty());
            assert!(!required, "{test}: REWIND_TEST_POSTGRES is set but this test needs {what}");
            eprintln!("note: {test}: skipped: needs {what}");
            return None;
        }
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            sweep();
        }
        let id = format!("{pid}x{n}");
        let net = free_subnet(pid, n);
        let bridge = Bridge { name: format!("rwb{id}") };
        sh("ip", &["link", "add", &bridge.name, "type", "bridge"]);
        let ip = format!("{net}.1");
        sh("ip", &["addr", "add", &format!("{ip}/24"), "dev", &bridge.name]);
        sh("ip", &["link", "set", &bridge.name, "up"]);
        let cluster = Cluster::start(&ip, &format!("{net}.0/24"));
        let env = Env::with_db(&format!("postgres://postgres@{ip}:5432/postgres"));
        Some(Self { env, id, net, hosts: AtomicU32::new(0), _cluster: cluster, bridge })
    }

    /// Starts any `rewind` command in the root namespace (this machine's hostname), with the
    /// lab's store and the test's folder, stdout and stderr to `<log>.out` / `<log>.err` there.
    pub fn local(&self, args: &[&str], log: &str) -> Proc {
        let mut c = self.env.cmd(args);
        c.env("REWIND_LEASE_MS", LEASE_MS).env(LAB_VAR, &self.id);
        let out = std::fs::File::create(self.env.path(&format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(self.env.path(&format!("{log}.err"))).unwrap();
        Proc(c.stdout(out).stderr(err).spawn().unwrap())
    }

    /// A new host named `hostname`: a network namespace with a veth pair onto the bridge (the
    /// next address of the subnet). Processes started on it run in a UTS namespace of their own
    /// with that hostname.
    pub fn host(&self, hostname: &str) -> Host {
        let i = self.hosts.fetch_add(1, Ordering::Relaxed);
        let ns = format!("rwh{}h{i}", self.id);
        let host = Host {
            lab: self.id.clone(),
            veth: format!("rwv{}h{i}", self.id),
            ns,
            hostname: hostname.to_owned(),
            ip: format!("{}.{}", self.net, i + 2),
        };
        let peer = format!("rwp{}h{i}", self.id);
        sh("ip", &["netns", "add", &host.ns]);
        sh("ip", &["link", "add", &host.veth, "type", "veth", "peer", "name", &peer]);
        sh("ip", &["link", "set", &peer, "netns", &host.ns]);
        sh("ip", &["link", "set", &host.veth, "master", &self.bridge.name]);
        sh("ip", &["link", "set", &host.veth, "up"]);
        let in_ns = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &host.ns, "ip"];
            a.extend_from_slice(args);
            sh("ip", &a);
        };
        in_ns(&["addr", "add", &format!("{}/24", host.ip), "dev", &peer]);
        in_ns(&["link", "set", &peer, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        host
    }
}

/// A /24 of 10.0.0.0/8 that no interface of the root namespace uses (other tests' bridges),
/// starting from one derived from the process and lab.
fn free_subnet(pid: u32, n: u32) -> String {
    let used = sh("ip", &["-o", "-4", "addr", "show"]);
    let start = (pid % 150) * 256 + n * 37;
    (0..150 * 256)
        .map(|k| {
            let v = (start + k) % (150 * 256);
            format!("10.{}.{}", 100 + v / 256, v % 256)
        })
        .find(|net| !used.contains(&format!(" {net}.")))
        .expect("a free /24 in 10.100.0.0/16 .. 10.249.0.0/16")
}

/// A host: a network namespace plugged into the lab's bridge; deleted (with its link) on drop.
pub struct Host {
    /// The lab's id (`<pid>x<n>`), in [`LAB_VAR`] of every process started here.
    lab: String,
    ns: String,
    /// The root namespace's end of its link (on the bridge).
    veth: String,
    hostname: String,
    ip: String,
}

impl Host {
    /// Starts any `rewind` command on this host (in its network namespace, in a UTS namespace
    /// with its hostname), with the lab's store and the test's folder (see [`Env::cmd`]), stdout
    /// and stderr to `<log>.out` / `<log>.err` there. The process is the returned guard's (`ip
    /// netns exec`, `unshare` and `sh` all exec).
    pub fn spawn(&self, env: &Env, args: &[&str], log: &str) -> Proc {
        self.spawn_with(env, args, log, &[])
    }

    /// [`Host::spawn`] with more environment variables.
    pub fn spawn_with(&self, env: &Env, args: &[&str], log: &str, vars: &[(&str, &str)]) -> Proc {
        let rewind = env!("CARGO_BIN_EXE_rewind");
        // The environment `env.cmd` gives a local `rewind`.
        let local = env.cmd(&[]);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "unshare", "--uts", "--", "sh", "-c"])
            .arg("hostname \"$0\" && exec \"$@\"")
            .arg(&self.hostname)
            .arg(rewind)
            .args(args)
            .current_dir(env.dir.path())
            .env("REWIND_LEASE_MS", LEASE_MS)
            .env(LAB_VAR, &self.lab);
        for (k, v) in local.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.envs(vars.iter().copied());
        let out = std::fs::File::create(env.path(&format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(env.path(&format!("{log}.err"))).unwrap();
        Proc(cmd.stdout(out).stderr(err).spawn().unwrap())
    }

    /// `rewind worker --name NAME --slots 3 EXTRA…` on this host; logs `NAME.out` / `NAME.err`.
    pub fn worker(&self, env: &Env, name: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["worker", "--name", name, "--slots", "3"];
        args.extend_from_slice(extra);
        self.spawn(env, &args, name)
    }

    /// Cuts this host off the network (its link on the bridge goes down): its connections hang.
    pub fn cut(&self) {
        sh("ip", &["link", "set", &self.veth, "down"]);
    }

    /// Plugs it back in: its connections carry on.
    pub fn reconnect(&self) {
        sh("ip", &["link", "set", &self.veth, "up"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        sh_quiet("ip", &["link", "del", &self.veth]);
        sh_quiet("ip", &["netns", "del", &self.ns]);
    }
}

/// A process killed (SIGKILL) when the test ends, however it ends.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }

    pub fn sigterm(&self) {
        sh("kill", &["-TERM", &self.pid().to_string()]);
    }

    pub fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` every 10 ms for up to `limit`; panics naming `what` if it never holds. For what
/// waits on a partition: a worker cut off learns it only as its store operations time out (5 s
/// each, one after another), which may take longer than [`crate::support::wait_for`] allows.
pub fn wait_up_to(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
