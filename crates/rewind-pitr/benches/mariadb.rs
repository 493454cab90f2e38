//! MariaDB PITR: rewind's `recover` against the same recovery run by hand, in one run.
//!
//! Opt-in (it builds a source of a few hundred MB): `REWIND_BENCH_MARIADB=1 cargo bench -p
//! rewind-pitr --bench mariadb`. `REWIND_BENCH_MB` (default 300) sizes the base, `REWIND_BENCH_
//! BINLOG_MB` (default 75) the binlog written after the backup, `REWIND_BENCH_DIR` the parent
//! of its working directory (default the system's temporary directory).
//!
//! The hand-run equivalent is what a user types: `cp -a` the backup, `mariadb-backup
//! --prepare`, `mariadbd --skip-networking --skip-grant-tables --skip-log-bin`, `mariadb-binlog
//! --start-position=POS --stop-datetime=… FILES | mariadb --binary-mode`, stop, start on a port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rewind_pitr::source::mariadb::SourceServer;
use rewind_pitr::{Owner, Registry, Request, Source, proc, recover};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::var_os("REWIND_BENCH_MARIADB").is_none() {
        println!(
            "mariadb bench skipped: set REWIND_BENCH_MARIADB=1 (builds a source of a few hundred MB)"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

fn sh(cmd: &mut Command) {
    let st = cmd.status().expect("run");
    assert!(st.success(), "{cmd:?}: {st}");
}

async fn bench() {
    let base_mb = env_u64("REWIND_BENCH_MB", 300);
    let binlog_mb = env_u64("REWIND_BENCH_BINLOG_MB", 75);
    let parent =
        std::env::var_os("REWIND_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::tempdir_in(parent).expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = proc::free_port().expect("port");
    let src = SourceServer::install(&root.path().join("src"), None, port).await.expect("install");

    // The base: ~1 KB rows.
    let t = Instant::now();
    src.sql("CREATE DATABASE app; CREATE TABLE app.base (id BIGINT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(1000)); CREATE TABLE app.hist (id BIGINT AUTO_INCREMENT PRIMARY KEY, n INT, pad VARCHAR(1000))").await.expect("schema");
    let rows = base_mb * 1000;
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(100_000);
        src.sql(&format!(
            "INSERT INTO app.base (pad) SELECT RPAD(MD5(seq), 1000, MD5(seq + 1)) FROM app.seq_1_to_{n}"
        ))
        .await
        .expect("load");
        done += n;
    }
    let backup = root.path().join("backup");
    src.base_backup(&backup).await.expect("backup");
    println!(
        "source: {base_mb} MB of rows loaded and backed up in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // After the backup: transactions of 100 rows (~100 KB of ROW events each).
    let t = Instant::now();
    let txns = binlog_mb * 10;
    let mut script = String::new();
    for i in 0..txns {
        script.push_str(&format!(
            "INSERT INTO app.hist (n, pad) SELECT {i}, RPAD(MD5(seq + {i}), 1000, 'x') FROM app.seq_1_to_100;\n"
        ));
    }
    src.sql(&script).await.expect("history");
    // A quiet second, the restore point in it, a commit after it, the binlog closed.
    let now = SystemTime::now();
    let s = now.duration_since(UNIX_EPOCH).expect("epoch").as_secs();
    tokio::time::sleep(
        (UNIX_EPOCH + Duration::from_millis((s + 2) * 1000 + 50))
            .duration_since(now)
            .expect("future"),
    )
    .await;
    let quiet = s + 1;
    let target = UNIX_EPOCH + Duration::from_millis(quiet * 1000 + 500);
    src.sql("INSERT INTO app.hist (n, pad) VALUES (-1, 'after the restore point')")
        .await
        .expect("after");
    src.flush_logs().await.expect("flush");
    println!("history: {txns} transactions written in {:.1}s", t.elapsed().as_secs_f64());

    // By hand.
    let hand_dir = root.path().join("hand");
    let (hand_s, hand_replay_s) = by_hand(&src, &backup, &hand_dir, quiet).await;

    // rewind.
    let registry = Registry::at(root.path().join("registry"));
    let req = Request {
        source: Source::Binlog { base_backup: backup.clone(), binlogs: src.binlog_dir() },
        into: root.path().join("scratch"),
        target,
        owner: Owner { run: "bench".into(), instance: "pitr.identity".into() },
        run_as: None,
        tool_env: vec![],
        registry: registry.clone(),
    };
    let t = Instant::now();
    let rec = recover(&req, std::future::pending()).await.expect("recover");
    let rewind_s = t.elapsed().as_secs_f64();
    let count = |port: u16| {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-uroot",
                "-N",
                "-B",
                "-e",
                "SELECT COUNT(*) FROM app.hist",
            ])
            .output()
            .expect("count");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (ours, theirs) = (count(rec.port), count(hand_port(&hand_dir)));
    assert_eq!(ours, theirs, "both recoveries hold the same rows");
    assert_eq!(ours, (txns * 100).to_string());
    let mb = rec.replayed_bytes as f64 / 1e6;
    println!("replayed: {mb:.1} MB of binlog ({} rows in app.hist on both)", ours);
    println!("by hand:  {hand_s:.2}s (replay {hand_replay_s:.2}s: {:.1} MB/s)", mb / hand_replay_s);
    println!(
        "rewind:   {rewind_s:.2}s ({:.1} MB/s of binlog over the whole recovery)",
        mb / rewind_s
    );
    println!("ratio:    {:.3}x (rewind / by hand)", rewind_s / hand_s);

    registry.drop_run("bench").await.expect("drop");
    stop_hand(&hand_dir);
}

fn hand_port(dir: &Path) -> u16 {
    std::fs::read_to_string(dir.join("port")).expect("port").trim().parse().expect("port")
}

async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(600), "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mariadbd(dir: &Path, extra: &[String]) {
    let data = dir.join("data");
    let mut c = Command::new("setsid");
    c.arg("-f").arg("/usr/sbin/mariadbd").args([
        "--no-defaults".to_string(),
        format!("--datadir={}", data.display()),
        format!("--socket={}", dir.join("s.sock").display()),
        format!("--pid-file={}", dir.join("m.pid").display()),
        format!("--log-error={}", dir.join("server.log").display()),
        "--user=mysql".into(),
        "--skip-log-bin".into(),
    ]);
    c.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    sh(&mut c);
}

fn hand_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("m.pid")).ok()?.trim().parse().ok()
}

fn stop_hand(dir: &Path) {
    if let Some(pid) = hand_pid(dir) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        while Path::new(&format!("/proc/{pid}/cwd")).exists()
            && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The recovery as a user runs it; returns (total, replay) seconds.
async fn by_hand(src: &SourceServer, backup: &Path, dir: &Path, quiet: u64) -> (f64, f64) {
    let t = Instant::now();
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    sh(Command::new("cp").arg("-a").arg(backup.join(".")).arg(dir.join("data")));
    sh(Command::new("chown").arg("-R").arg("mysql:mysql").arg(dir));
    sh(Command::new("runuser")
        .args(["-u", "mysql", "--", "mariadb-backup", "--prepare"])
        .arg(format!("--target-dir={}", dir.join("data").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null()));
    mariadbd(dir, &["--skip-networking".into(), "--skip-grant-tables".into()]);
    let sock = dir.join("s.sock");
    wait_for("the replay server", || std::os::unix::net::UnixStream::connect(&sock).is_ok()).await;
    let info = std::fs::read_to_string(backup.join("xtrabackup_binlog_info")).expect("binlog info");
    let mut f = info.split('\t');
    let (file, pos) = (f.next().expect("file").trim(), f.next().expect("pos").trim());
    let (_, first) = file.rsplit_once('.').expect("numbered");
    let first: u64 = first.parse().expect("number");
    let mut files: Vec<PathBuf> = std::fs::read_dir(src.binlog_dir())
        .expect("binlogs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .and_then(|x| x.parse::<u64>().ok())
                .is_some_and(|n| n >= first)
        })
        .collect();
    files.sort();
    let stop = chrono_like(quiet);
    let replay = Instant::now();
    let script = format!(
        "TZ=UTC mariadb-binlog --start-position={pos} --stop-datetime='{stop}' {} | mariadb --no-defaults --socket={} --binary-mode -uroot",
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
        sock.display()
    );
    sh(Command::new("bash").arg("-o").arg("pipefail").arg("-c").arg(script));
    let replay_s = replay.elapsed().as_secs_f64();
    stop_hand(dir);
    let port = proc::free_port().expect("port");
    std::fs::write(dir.join("port"), port.to_string()).expect("port file");
    mariadbd(dir, &[format!("--port={port}"), "--bind-address=127.0.0.1".into()]);
    wait_for("the server on its port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    (t.elapsed().as_secs_f64(), replay_s)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a second since the epoch.
fn chrono_like(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .expect("a valid second")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}
