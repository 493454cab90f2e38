//! PostgreSQL point-in-time recovery on real servers: a source cluster written at known
//! instants, backed up, recovered by `rewind_pitr::recover` to a restore point between two
//! commits; refusals; reuse, restart, replacement and drop.
//!
//! Needs this machine's PostgreSQL binaries (and pgBackRest for its tests); a test whose tool is
//! absent says so and passes without running.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rewind_pitr::source::pg::{Archiving, BackupFormat, SourceCluster};
use rewind_pitr::{Error, Owner, Recovered, Registry, Request, Source, State, scratch, time};

fn have_postgres() -> bool {
    let ok = rewind_pitr::pg::bindir(None).join("pg_ctl").is_file();
    if !ok {
        eprintln!("skipped: no pg_ctl (install postgresql, or set REWIND_PG_BINDIR)");
    }
    ok
}

fn have_pgbackrest() -> bool {
    let ok = std::process::Command::new("pgbackrest")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: no pgbackrest (apt-get install pgbackrest)");
    }
    ok && have_postgres()
}

/// A test's own directory, reachable by the server's user.
fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// A source cluster with table `t`, rows committed at known instants around a base backup.
struct Scenario {
    src: SourceCluster,
    source: Source,
    /// (id, commit time) in commit order.
    commits: Vec<(i32, SystemTime)>,
    /// How many of `commits` were made before the base backup.
    before_backup: usize,
    dir: PathBuf,
    _cleanup: ScratchGuard,
}

/// Stops every scratch server under `dir/scratch` when the test ends, passed or not (they are
/// daemons: nothing else would stop them).
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let Ok(rd) = std::fs::read_dir(&self.0) else { return };
        for e in rd.filter_map(Result::ok) {
            let Ok(Some(m)) = scratch::read_marker(&e.path()) else { continue };
            let Some(pid) = m.server_pid() else { continue };
            let p = nix::unistd::Pid::from_raw(pid as i32);
            let _ = kill(p, Signal::SIGINT);
            for _ in 0..200 {
                if m.server_pid().is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(p, Signal::SIGKILL);
        }
    }
}

#[derive(Clone, Copy)]
enum Method {
    Archive(BackupFormat),
    Pgbackrest,
}

impl Scenario {
    /// Two commits, the base backup, three commits 1.1 s apart, the WAL switched and archived.
    async fn new(dir: &Path, method: Method) -> Self {
        // A free port can be taken by another server before ours binds it: try another.
        let mut attempt = 0;
        let src = loop {
            attempt += 1;
            let port = rewind_pitr::proc::free_port().expect("a free port");
            let archiving = match method {
                Method::Archive(_) => Archiving::Archive { wal_dir: dir.join("wal") },
                Method::Pgbackrest => {
                    Archiving::Pgbackrest { repo_dir: dir.join("repo"), stanza: "main".into() }
                }
            };
            let src_dir = dir.join(format!("src{attempt}"));
            match SourceCluster::init(&src_dir, None, port, archiving).await {
                Ok(src) => break src,
                Err(e) if attempt < 3 => {
                    eprintln!("source cluster on port {port} did not start, trying another: {e}");
                    let _ = std::fs::remove_dir_all(dir.join("wal"));
                    let _ = std::fs::remove_dir_all(dir.join("repo"));
                }
                Err(e) => panic!("source cluster: {e}"),
            }
        };
        src.sql("postgres", "CREATE TABLE t (id int PRIMARY KEY)").await.expect("create table");
        let mut s = Self {
            source: source_of(&src, dir, method),
            src,
            commits: Vec::new(),
            before_backup: 2,
            dir: dir.to_path_buf(),
            _cleanup: ScratchGuard(dir.join("scratch")),
        };
        for id in 1..=2 {
            s.commit(id).await;
        }
        match method {
            Method::Archive(format) => {
                s.src.base_backup(&dir.join("base"), format).await.expect("pg_basebackup");
            }
            Method::Pgbackrest => {
                s.src.pgbackrest_backup().await.expect("pgbackrest backup");
                // pgBackRest stamps whole seconds: the next commit starts past the backup's second.
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
        }
        for id in 3..=5 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            s.commit(id).await;
        }
        s.src.switch_wal_and_wait().await.expect("WAL archived");
        s
    }

    async fn commit(&mut self, id: i32) {
        self.src.sql("postgres", &format!("INSERT INTO t VALUES ({id})")).await.expect("insert");
        let at = self
            .src
            .sql(
                "postgres",
                &format!("SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE id = {id}"),
            )
            .await
            .expect("commit time");
        self.commits.push((id, time::parse_pg(&at).expect("a commit time in UTC")));
    }

    /// Halfway between commit `i` and `i + 1` (0-based).
    fn between(&self, i: usize) -> SystemTime {
        let (a, b) = (self.commits[i].1, self.commits[i + 1].1);
        a + b.duration_since(a).expect("commits in order") / 2
    }

    fn request(&self, run: &str, target: SystemTime) -> Request {
        Request {
            source: self.source.clone(),
            into: self.dir.join("scratch").join(run),
            target,
            owner: Owner { run: run.into(), instance: "pitr.tracker/shard=s01".into() },
            run_as: None,
            tool_env: vec![("REWIND_RUN_ID".into(), run.into())],
            registry: Registry::at(self.dir.join("registry")),
        }
    }
}

fn source_of(src: &SourceCluster, dir: &Path, method: Method) -> Source {
    match method {
        Method::Archive(_) => {
            Source::Archive { base_backup: dir.join("base"), wal_archive: dir.join("wal") }
        }
        Method::Pgbackrest => {
            Source::Pgbackrest { stanza: "main".into(), config: src.pgbackrest_conf() }
        }
    }
}

/// The ids in the scratch instance, over its URL (through psql, as a client would).
fn ids(rec: &Recovered) -> Vec<i32> {
    let psql = rewind_pitr::pg::bindir(None).join("psql");
    let out = std::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-q", "-d", &rec.url, "-c", "SELECT id FROM t ORDER BY id"])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {}: {}", rec.url, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().expect("an id")).collect()
}

fn marker_state(req: &Request) -> Option<State> {
    scratch::read_marker(&req.into).expect("marker readable").map(|m| m.state)
}

fn server_pid(req: &Request) -> Option<u32> {
    scratch::read_marker(&req.into).expect("marker readable").and_then(|m| m.server_pid())
}

async fn recover(req: &Request) -> Result<Recovered, Error> {
    rewind_pitr::recover(req, std::future::pending()).await
}

/// Recovers between commits 4 and 5 (both after the backup) and checks rows and evidence.
async fn recovers_between_commits(s: &Scenario, run: &str) -> (Request, Recovered) {
    let target = s.between(3);
    let req = s.request(run, target);
    let rec = recover(&req).await.expect("recovered");
    eprintln!("{run}: recovered in {:.2} s, evidence: {:#?}", rec.recovery_s, rec.evidence);
    assert_eq!(ids(&rec), vec![1, 2, 3, 4], "rows committed at or before the restore point");
    assert_eq!(
        rec.recovered_to, s.commits[3].1,
        "recovered to the last commit before it: {:#?}",
        rec.evidence
    );
    assert!(
        rec.evidence.iter().any(|e| e.contains("recovery stopping before commit")),
        "{:#?}",
        rec.evidence
    );
    assert!(rec.replayed_bytes > 0);
    assert!(!rec.reused);
    assert_eq!(marker_state(&req), Some(State::Ready));
    assert!(s.before_backup < 3);
    (req, rec)
}

/// `reach` reads the backups: the newest commit is the last one archived (the marker
/// `switch_wal_and_wait` commits), the newest instant just before it, and a recovery there has
/// every row (the last replayed commit is row 5's).
async fn recovers_to_its_reach(s: &Scenario, run: &str) {
    let r = rewind_pitr::reach::reach(&s.source, None).await.expect("reach");
    eprintln!("{run}: reach {r:#?}");
    let last = s.commits[4].1;
    let newest_commit = r.newest_commit.expect("a newest commit");
    assert!(newest_commit > last, "the marker commit after row 5: {r:#?}");
    let newest = r.newest().expect("a newest instant");
    assert!(newest < newest_commit && newest >= last, "{r:#?}");
    assert!(newest_commit.duration_since(newest).expect("before") <= Duration::from_millis(2));
    assert!(r.newest_at_or_before(Some(s.between(0))).is_none(), "before the backup's end");
    let req = s.request(run, newest);
    let rec = recover(&req).await.expect("recovered to the newest reachable instant");
    assert_eq!(ids(&rec), vec![1, 2, 3, 4, 5]);
    assert_eq!(rec.recovered_to, last, "{:#?}", rec.evidence);
    req.registry.drop_run(run).await.expect("dropped");
}

fn assert_permanent(r: Result<Recovered, Error>, needle: &str) -> String {
    match r {
        Err(Error::Permanent(m)) => {
            assert!(m.contains(needle), "expected `{needle}` in: {m}");
            m
        }
        other => panic!("expected a permanent failure with `{needle}`, got {other:?}"),
    }
}

#[tokio::test]
async fn archive_plain_recovers_is_reused_restarted_and_dropped() {
    if !have_postgres() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Archive(BackupFormat::Plain)).await;
    let (req, rec) = recovers_between_commits(&s, "run-plain").await;

    // Reuse: same owner, same instant: nothing restored again.
    let again = recover(&req).await.expect("reused");
    assert!(again.reused);
    assert_eq!((again.port, again.recovered_to), (rec.port, rec.recovered_to));

    // A killed server is started again.
    let pid = server_pid(&req).expect("the server runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    for _ in 0..100 {
        if server_pid(&req).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server_pid(&req), None, "killed");
    let restarted = recover(&req).await.expect("restarted");
    assert!(restarted.reused);
    assert_eq!(ids(&restarted), vec![1, 2, 3, 4]);

    // Drop: no process, no directory, no entry.
    let dropped = req.registry.drop_run("run-plain").await.expect("dropped");
    assert_eq!(dropped.len(), 1);
    assert!(!req.into.exists(), "scratch directory removed");
    assert!(req.registry.list(Some("run-plain")).expect("list").is_empty());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || !rewind_pitr::proc::server_alive(pid, &rec.data_dir)
    );
}

#[tokio::test]
async fn archive_tar_gz_recovers() {
    if !have_postgres() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Archive(BackupFormat::TarGz)).await;
    let (req, _) = recovers_between_commits(&s, "run-tar").await;
    req.registry.drop_run("run-tar").await.expect("dropped");
    assert!(!req.into.exists());
}

#[tokio::test]
async fn archive_refuses_what_the_backups_do_not_cover() {
    if !have_postgres() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Archive(BackupFormat::Plain)).await;

    // Before the base backup's end.
    let req = s.request("run-early", s.between(0));
    assert_permanent(recover(&req).await, "is before the base backup's end");
    assert!(!req.into.exists(), "the check writes nothing");

    // After the last archived commit.
    let req = s.request("run-late", SystemTime::now() + Duration::from_secs(3600));
    assert_permanent(recover(&req).await, "after the newest WAL in the archive");
    assert!(!req.into.exists(), "the check writes nothing");

    // A missing archive is named.
    let mut req = s.request("run-missing", s.between(3));
    req.source = Source::Archive {
        base_backup: dir.path().join("base"),
        wal_archive: dir.path().join("nowhere"),
    };
    assert_permanent(recover(&req).await, "nowhere");

    recovers_to_its_reach(&s, "run-reach").await;
}

#[tokio::test]
async fn pgbackrest_recovers_and_refuses() {
    if !have_pgbackrest() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Pgbackrest).await;
    let (req, _) = recovers_between_commits(&s, "run-br").await;
    req.registry.drop_run("run-br").await.expect("dropped");

    // No backup ended before the instant: refused, never a fallback to a later backup.
    let req = s.request("run-br-early", s.between(0));
    assert_permanent(recover(&req).await, "before the end of every backup");
    assert!(!req.into.exists(), "the check writes nothing");

    // After the last archived commit: PostgreSQL ends recovery early, rewind fails it.
    let req = s.request("run-br-late", SystemTime::now() + Duration::from_secs(3600));
    let msg = assert_permanent(
        recover(&req).await,
        "recovery ended before configured recovery target was reached",
    );
    assert!(msg.contains("FATAL"), "{msg}");
    assert_eq!(marker_state(&req), Some(State::Failed));
    assert_eq!(server_pid(&req), None, "no server left running");
    req.registry.drop_run("run-br-late").await.expect("dropped");

    // A missing stanza is pgBackRest's own message.
    let mut req = s.request("run-br-nostanza", s.between(3));
    req.source = Source::Pgbackrest { stanza: "nosuch".into(), config: s.src.pgbackrest_conf() };
    assert_permanent(recover(&req).await, "nosuch");

    recovers_to_its_reach(&s, "run-br-reach").await;
}

#[tokio::test]
async fn a_half_recovered_instance_is_replaced() {
    if !have_postgres() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Archive(BackupFormat::Plain)).await;
    let req = s.request("run-replace", s.between(3));

    // rewind killed mid-recovery: a running server, its marker still `recovering` (made here
    // from a finished recovery whose marker is set back).
    let old = recover(&req).await.expect("first recovery");
    let old_pid = server_pid(&req).expect("the server runs");
    let marker = req.into.join(scratch::MARKER);
    let mut entry = scratch::read_marker(&req.into).expect("marker").expect("a marker");
    entry.state = State::Recovering;
    entry.recovered = None;
    std::fs::write(&marker, serde_json::to_vec(&entry).expect("json")).expect("marker written");

    let rec = recover(&req).await.expect("replaced");
    assert!(!rec.reused);
    assert_eq!(ids(&rec), vec![1, 2, 3, 4]);
    assert_eq!(rec.recovered_to, old.recovered_to);
    assert_eq!(marker_state(&req), Some(State::Ready));
    assert!(
        !rewind_pitr::proc::server_alive(old_pid, &old.data_dir)
            || server_pid(&req) != Some(old_pid),
        "the old server was stopped"
    );
    let listed = req.registry.list(Some("run-replace")).expect("list");
    assert_eq!(listed.len(), 1, "one instance");
    assert!(listed[0].pid.is_some());
    req.registry.drop_run("run-replace").await.expect("dropped");
    assert!(!req.into.exists());
}

/// The files under `dir` with their sizes and contents' lengths, to see whether it changed.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("readable")
        .filter_map(Result::ok)
        .map(|e| {
            let m = e.metadata().expect("metadata");
            (e.file_name().to_string_lossy().into_owned(), if m.is_file() { m.len() } else { 0 })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_plain_backup_with_its_wal_directory_elsewhere_is_not_written_to() {
    if !have_postgres() {
        return;
    }
    let dir = workdir();
    let s = Scenario::new(dir.path(), Method::Archive(BackupFormat::Plain)).await;
    // As `pg_basebackup --waldir=DIR` lays it out: pg_wal a symbolic link to DIR.
    let waldir = dir.path().join("base-waldir");
    std::fs::rename(dir.path().join("base/pg_wal"), &waldir).expect("move pg_wal");
    std::os::unix::fs::symlink(&waldir, dir.path().join("base/pg_wal")).expect("link pg_wal");
    let before = listing(&waldir);
    let (req, rec) = recovers_between_commits(&s, "run-waldir").await;
    assert_eq!(listing(&waldir), before, "the backup's WAL directory is left as it was");
    assert!(
        !rec.data_dir.join("pg_wal").symlink_metadata().expect("pg_wal").file_type().is_symlink(),
        "the scratch instance has its own pg_wal"
    );
    Registry::at(dir.path().join("registry")).drop_run("run-waldir").await.expect("dropped");
    assert!(!req.into.exists());
    assert_eq!(listing(&waldir), before);
}
