//! MariaDB `binlog` recovery on real servers: a source with binlogs, a `mariadb-backup`, rows
//! committed in distinct seconds around it, and scratch instances recovered between them.
//!
//! Skips (saying why) only when a tool is missing; CI installs them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_pitr::source::mariadb::SourceServer;
use rewind_pitr::{Error, Owner, Recovered, Registry, Request, Source, proc, recover};

fn tools_missing() -> Option<String> {
    let mariadbd = std::env::var_os("REWIND_MARIADBD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mariadbd"));
    if !mariadbd.exists() && which("mariadbd").is_none() {
        return Some("mariadbd".into());
    }
    ["mariadb-install-db", "mariadb-backup", "mariadb-binlog", "mariadb", "setsid"]
        .into_iter()
        .find(|t| which(t).is_none())
        .map(str::to_string)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.exists())
}

macro_rules! need_tools {
    () => {
        if let Some(t) = tools_missing() {
            eprintln!(
                "skipped: `{t}` is not installed (apt-get install mariadb-server mariadb-backup)"
            );
            return;
        }
    };
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after the epoch").as_secs()
}

fn at(sec: u64, millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(sec * 1000 + millis)
}

/// Sleeps past the next whole second, so the second after the last activity stays quiet;
/// returns that quiet second.
async fn quiet_second() -> u64 {
    let now = SystemTime::now();
    let s = secs(now);
    let wake = at(s + 2, 50);
    tokio::time::sleep(wake.duration_since(now).expect("future")).await;
    s + 1
}

/// A source with rows 1 and 2 before its backup and rows 3..=5 after, each in its own second
/// with a quiet second before it.
struct Fixture {
    root: tempfile::TempDir,
    src: SourceServer,
    backup: PathBuf,
    /// The binlog second of each row's commit (the statement's own `UNIX_TIMESTAMP()`).
    stamp: Vec<u64>,
    /// A second without commits before each row (index = row - 1).
    quiet: Vec<u64>,
}

impl Fixture {
    async fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let port = proc::free_port().expect("port");
        let src =
            SourceServer::install(&root.path().join("src"), None, port).await.expect("install");
        src.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, stamp BIGINT)")
            .await
            .expect("schema");
        let mut f =
            Self { backup: root.path().join("backup"), root, src, stamp: vec![], quiet: vec![] };
        f.row(1).await;
        f.row(2).await;
        f.quiet.push(quiet_second().await); // before the backup: nothing between it and row 2
        f.src.base_backup(&f.backup).await.expect("backup");
        f.quiet.pop();
        f.row(3).await;
        f.row(4).await;
        f.row(5).await;
        f
    }

    async fn row(&mut self, id: u32) {
        self.quiet.push(quiet_second().await);
        self.src
            .sql(&format!("INSERT INTO app.t VALUES ({id}, UNIX_TIMESTAMP())"))
            .await
            .expect("insert");
        let s = self
            .src
            .sql(&format!("SELECT stamp FROM app.t WHERE id = {id}"))
            .await
            .expect("select");
        self.stamp.push(s.trim().parse().expect("a stamp"));
    }

    fn request(&self, name: &str, run: &str, target: SystemTime) -> Request {
        Request {
            source: Source::Binlog {
                base_backup: self.backup.clone(),
                binlogs: self.src.binlog_dir(),
            },
            // Deep enough that `into/run/mariadbd.sock` passes the 107 bytes a socket path may
            // have: the sockets go to a private directory of their own.
            into: self
                .root
                .path()
                .join("scratch")
                .join("a-directory-deep-enough-that-a-socket-in-it-would-not-fit-a-socket-path")
                .join(name),
            target,
            owner: Owner { run: run.into(), instance: format!("pitr.identity/{name}") },
            run_as: None,
            tool_env: vec![("REWIND_RUN_ID".into(), run.into())],
            registry: self.registry(),
        }
    }

    fn registry(&self) -> Registry {
        Registry::at(self.root.path().join("registry"))
    }
}

/// Kills the run's scratch servers if the test ends early (a failed assertion).
struct KillOnDrop(Registry, &'static str);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for l in self.0.list(Some(self.1)).unwrap_or_default() {
            if let Some(pid) = l.pid {
                let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

async fn ids(rec: &Recovered) -> Vec<u32> {
    let out = proc::Tool::new("mariadb")
        .args([
            "--no-defaults".to_string(),
            "--host=127.0.0.1".into(),
            format!("--port={}", rec.port),
            "--user=root".into(),
            "--batch".into(),
            "--skip-column-names".into(),
            "--execute=SELECT id FROM app.t ORDER BY id".into(),
        ])
        .run(Duration::from_secs(60))
        .await
        .expect("query the scratch instance over TCP with the backup's grants");
    out.stdout.lines().map(|l| l.trim().parse().expect("an id")).collect()
}

fn pid_of(rec: &Recovered) -> u32 {
    let run = rec.data_dir.parent().expect("into").join("run/mariadbd.pid");
    let pid: u32 = std::fs::read_to_string(&run).expect("pid file").trim().parse().expect("pid");
    assert!(proc::server_alive(pid, &rec.data_dir), "the scratch server {pid} runs");
    pid
}

/// Whether `pid` is a process that has not exited (a zombie waiting for init to reap it has).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

fn refused(r: Result<Recovered, Error>, want: &str) -> String {
    match r {
        Err(Error::Permanent(m)) => {
            assert!(m.contains(want), "expected `{want}` in: {m}");
            m
        }
        other => panic!("expected a permanent failure with `{want}`, got {other:?}"),
    }
}

/// Asserts nothing of `run` runs and nothing was written for it.
fn nothing_left(f: &Fixture, run: &str, into: &Path) {
    let listed = f.registry().list(Some(run)).expect("list");
    assert!(listed.iter().all(|l| l.pid.is_none()), "no server left: {listed:?}");
    assert!(!into.join("data").exists(), "no data directory left in {}", into.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_recovery_to_a_quiet_second_reuse_replace_and_drop() {
    need_tools!();
    let mut f = Fixture::new().await;
    let _guard = KillOnDrop(f.registry(), "run-1");
    f.src.flush_logs().await.expect("flush"); // a second binlog file: the replay spans two

    // Between rows 3 and 4: rows 1..=3, recovered to row 3's second.
    let target = at(f.quiet[3], 500);
    let req = f.request("s1", "run-1", target);
    let rec = recover(&req, std::future::pending()).await.expect("recover");
    assert_eq!(ids(&rec).await, vec![1, 2, 3]);
    assert_eq!(rec.recovered_to, at(f.stamp[2], 0), "{:?}", rec.evidence);
    assert!(rec.replayed_bytes > 0 && !rec.reused);
    assert_eq!(rec.url, format!("mysql://root@127.0.0.1:{}/", rec.port));
    assert!(
        rec.evidence.iter().any(|e| e.starts_with("last applied commit")),
        "{:?}",
        rec.evidence
    );
    assert!(rec.evidence.iter().any(|e| e.starts_with("next commit")), "{:?}", rec.evidence);
    let pid = pid_of(&rec);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains("REWIND_"),
        "REWIND_* must not reach the server"
    );
    let sid = |p: u32| -> String {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).expect("stat");
        let after = stat.rsplit_once(')').expect("comm").1.to_string();
        after.split_whitespace().nth(3).expect("session").to_string()
    };
    assert_ne!(sid(pid), sid(std::process::id()), "the server is detached from rewind");

    // Again: the same instance, reused; stopped by hand, started again on its port.
    let again = recover(&req, std::future::pending()).await.expect("reuse");
    assert!(again.reused && again.port == rec.port);
    assert_eq!(pid_of(&again), pid);
    let entry = f.registry().list(Some("run-1")).expect("list").remove(0).entry;
    entry.stop_server().await.expect("stop");
    let restarted = recover(&req, std::future::pending()).await.expect("restart");
    assert!(restarted.reused);
    assert_eq!(ids(&restarted).await, vec![1, 2, 3]);

    // Stopped while replaying: left `recovering`, its server stopped; the next attempt
    // replaces it.
    let half = f.request("s3", "run-1", target);
    let sock = rewind_pitr::mariadb::outside_socket_dir(&half.into).join("replay.sock");
    let replaying = async {
        while !sock.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let r = recover(&half, replaying).await;
    assert!(matches!(r, Err(Error::Stopped)), "{r:?}");
    let marker = rewind_pitr::scratch::read_marker(&half.into).expect("marker").expect("kept");
    assert_eq!(marker.state, rewind_pitr::State::Recovering);
    assert!(marker.server_pid().is_none(), "the half-recovered server is stopped");
    let replaced = recover(&half, std::future::pending()).await.expect("replace a half one");
    assert!(!replaced.reused);
    assert_eq!(ids(&replaced).await, vec![1, 2, 3]);

    // Between the backup and row 3: nothing replayed, the backup's rows.
    let early = f.request("s2", "run-1", at(f.quiet[2], 500));
    let rec2 = recover(&early, std::future::pending()).await.expect("recover (no replay)");
    assert_eq!(ids(&rec2).await, vec![1, 2]);
    assert_eq!(rec2.replayed_bytes, 0);

    // Another instant for s1: replaced (rows 1..=4).
    let later = f.request("s1", "run-1", at(f.quiet[4], 500));
    let rec3 = recover(&later, std::future::pending()).await.expect("replace");
    assert!(!rec3.reused);
    assert_eq!(ids(&rec3).await, vec![1, 2, 3, 4]);
    assert_eq!(rec3.recovered_to, at(f.stamp[3], 0));
    assert!(!proc::server_alive(pid, &rec.data_dir), "the replaced server is stopped");
    let pids = [pid_of(&rec3), pid_of(&rec2), pid_of(&replaced)];

    // Dropping the run: no process, no directory, nothing listed.
    let dropped = f.registry().drop_run("run-1").await.expect("drop");
    assert_eq!(dropped.len(), 3);
    for (p, r) in pids.iter().zip([&rec3, &rec2, &replaced]) {
        assert!(!proc::server_alive(*p, &r.data_dir));
        assert!(!running(*p), "server {p} is gone");
    }
    assert!(!req.into.exists() && !early.into.exists() && !half.into.exists());
    for into in [&req.into, &early.into, &half.into] {
        let outside = rewind_pitr::mariadb::outside_socket_dir(into);
        assert!(!outside.exists(), "{} removed with the instance", outside.display());
    }
    assert!(f.registry().list(Some("run-1")).expect("list").is_empty());
    f.src.stop().await.expect("stop the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_refusals_leave_nothing_running() {
    need_tools!();
    let f = Fixture::new().await;
    let _guard = KillOnDrop(f.registry(), "run-2");

    // Inside row 4's second: its commit could be on either side.
    let req = f.request("amb", "run-2", at(f.stamp[3], 500));
    let m = refused(recover(&req, std::future::pending()).await, "inside the second");
    assert!(m.contains("nearest seconds without commits"), "{m}");
    nothing_left(&f, "run-2", &req.into);

    // After the last binlog event: nothing proves what came after it.
    let req = f.request("late", "run-2", at(f.stamp[4] + 1, 500));
    refused(recover(&req, std::future::pending()).await, "binlogs end at");
    nothing_left(&f, "run-2", &req.into);

    // Between rows 1 and 2: before the backup's end.
    let req = f.request("old", "run-2", at(f.quiet[1], 500));
    refused(recover(&req, std::future::pending()).await, "before the backup's end");
    nothing_left(&f, "run-2", &req.into);

    // `reach` reads the same binlogs: the newest instant is the end of the quiet second
    // before row 5 (row 5's second has its commit, and no event is stamped after it), and a
    // recovery there has rows 1..=4.
    let source = f.request("reach", "run-2", at(f.quiet[3], 500)).source;
    let r = rewind_pitr::reach::reach(&source, None).await.expect("reach");
    assert_eq!(r.newest_commit, Some(at(f.stamp[4], 0)), "{r:#?}");
    assert_eq!(r.newest(), Some(at(f.quiet[4], 999)), "{r:#?}");
    assert_eq!(r.newest_at_or_before(Some(at(f.stamp[3], 500))), Some(at(f.quiet[3], 999)));
    assert_eq!(r.newest_at_or_before(Some(at(f.quiet[1], 500))), None, "before the backup");
    let req = f.request("reach", "run-2", at(f.quiet[4], 999));
    let rec = recover(&req, std::future::pending()).await.expect("recovered to its reach");
    assert_eq!(ids(&rec).await, vec![1, 2, 3, 4]);
    f.registry().drop_run("run-2").await.expect("drop");
    nothing_left(&f, "run-2", &req.into);

    // A missing backup, missing binlogs, a gap in the binlogs.
    let mut req = f.request("nob", "run-2", at(f.quiet[3], 500));
    req.source =
        Source::Binlog { base_backup: f.root.path().join("nope"), binlogs: f.src.binlog_dir() };
    refused(recover(&req, std::future::pending()).await, "nope");
    req.source =
        Source::Binlog { base_backup: f.backup.clone(), binlogs: f.root.path().join("nobin") };
    refused(recover(&req, std::future::pending()).await, "nobin");
    f.src.flush_logs().await.expect("flush");
    f.src.flush_logs().await.expect("flush");
    let gap = f.root.path().join("gapped");
    std::fs::create_dir(&gap).expect("mkdir");
    for n in [1, 3] {
        let name = format!("binlog.{n:06}");
        std::fs::copy(f.src.binlog_dir().join(&name), gap.join(&name)).expect("copy binlog");
    }
    req.source = Source::Binlog { base_backup: f.backup.clone(), binlogs: gap };
    refused(recover(&req, std::future::pending()).await, "binlog.000002");
    nothing_left(&f, "run-2", &req.into);
}
