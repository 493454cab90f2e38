//! PITR of a PostgreSQL cluster: `rewind_pitr::recover` against the same recovery run by hand
//! (copy the base backup, `recovery.signal` + `restore_command` + `recovery_target_time` in
//! postgresql.auto.conf, `pg_ctl start`, poll `pg_is_in_recovery()` until it turns false), from
//! one base backup and one WAL archive, alternating (ABBA) in one run.
//!
//! Opt in: `REWIND_BENCH_PITR=1 cargo bench -p rewind-pitr --bench pg`. Size:
//! `REWIND_BENCH_SCALE` (pgbench scale, default 60: about 0.9 GB), `REWIND_BENCH_WAL_MB` (WAL
//! written after the base backup, default 200), `REWIND_BENCH_ROUNDS` (ABBA quartets after one
//! uncounted warm-up by hand, default 2),
//! `REWIND_BENCH_DIR` (where to put it all; default a temporary directory).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rewind_pitr::source::pg::{Archiving, BackupFormat, SourceCluster};
use rewind_pitr::{Owner, Registry, Request, Source, time};

type Res<T> = Result<T, String>;

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::var("REWIND_BENCH_PITR").as_deref() != Ok("1") {
        println!(
            "pg PITR bench skipped: set REWIND_BENCH_PITR=1 (needs PostgreSQL, pgbench, ~3 GB of disk)"
        );
        return;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("pg PITR bench failed: {e}");
        std::process::exit(1);
    }
}

fn sh(cmd: &mut Command) -> Res<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

async fn run() -> Res<()> {
    let scale = env_num("REWIND_BENCH_SCALE", 60);
    let wal_mb = env_num("REWIND_BENCH_WAL_MB", 200);
    let rounds = env_num("REWIND_BENCH_ROUNDS", 2);
    let tmp;
    let dir: PathBuf = match std::env::var_os("REWIND_BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            d
        }
        None => {
            tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_path_buf()
        }
    };
    sh(Command::new("chmod").arg("0755").arg(&dir))?;
    let bin = rewind_pitr::pg::bindir(None);
    let port = rewind_pitr::proc::free_port().map_err(|e| e.to_string())?;
    let wal = dir.join("wal");
    let base = dir.join("base");
    let t0 = Instant::now();
    let src = SourceCluster::init(
        &dir.join("src"),
        None,
        port,
        Archiving::Archive { wal_dir: wal.clone() },
    )
    .await
    .map_err(|e| e.to_string())?;
    src.sql("postgres", "ALTER SYSTEM SET max_wal_size = '4GB'")
        .await
        .map_err(|e| e.to_string())?;
    src.sql("postgres", "SELECT pg_reload_conf()").await.map_err(|e| e.to_string())?;
    sh(as_postgres(&bin.join("pgbench")).args([
        "-i",
        "-q",
        "-s",
        &scale.to_string(),
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "postgres",
    ]))?;
    let db_bytes: u64 = src
        .sql("postgres", "SELECT pg_database_size('postgres')")
        .await
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|e| format!("size: {e}"))?;
    println!(
        "source: pgbench scale {scale}, database {:.0} MB (made in {:.0} s)",
        mb(db_bytes),
        t0.elapsed().as_secs_f64()
    );

    src.base_backup(&base, BackupFormat::Plain).await.map_err(|e| e.to_string())?;
    let lsn = |s: String| -> Res<u64> {
        s.parse::<f64>().map(|f| f as u64).map_err(|e| format!("lsn: {e}"))
    };
    let q_lsn = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')";
    let start = lsn(src.sql("postgres", q_lsn).await.map_err(|e| e.to_string())?)?;
    let accounts = scale * 100_000;
    let mut aid = 1;
    let mut commits = 0;
    while lsn(src.sql("postgres", q_lsn).await.map_err(|e| e.to_string())?)? - start
        < wal_mb * 1_048_576
    {
        let hi = (aid + 49_999).min(accounts);
        src.sql("postgres", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {aid} AND {hi}"))
            .await
            .map_err(|e| e.to_string())?;
        aid = if hi >= accounts { 1 } else { hi + 1 };
        commits += 1;
    }
    let target_s =
        src.sql("postgres", "SELECT clock_timestamp()").await.map_err(|e| e.to_string())?;
    let target = time::parse_pg(&target_s).ok_or_else(|| format!("time {target_s}"))?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    src.switch_wal_and_wait().await.map_err(|e| e.to_string())?;
    let wal_after = lsn(src.sql("postgres", q_lsn).await.map_err(|e| e.to_string())?)? - start;
    println!(
        "WAL after the base backup: {:.0} MB in {commits} commits; restore point {}",
        mb(wal_after),
        time::rfc3339(target)
    );
    src.stop().await.map_err(|e| e.to_string())?;

    let source = Source::Archive { base_backup: base.clone(), wal_archive: wal.clone() };
    let registry = Registry::at(dir.join("registry"));
    let mut rewind_s = Vec::new();
    let mut hand_s = Vec::new();
    let mut replay = Vec::new();
    // Warm-up, not counted: the first copy of the base backup reads it from disk.
    let s = by_hand(&bin, &base, &wal, &dir.join("hand-warmup"), target).await?;
    println!("warm-up by hand (not counted): {s:.2} s");
    let order: Vec<bool> = (0..rounds).flat_map(|_| [true, false, false, true]).collect();
    for (i, is_rewind) in order.into_iter().enumerate() {
        if is_rewind {
            let run = format!("bench-{i}");
            let req = Request {
                source: source.clone(),
                into: dir.join("scratch").join(&run),
                target,
                owner: Owner { run: run.clone(), instance: "pitr.bench".into() },
                run_as: None,
                tool_env: Vec::new(),
                registry: registry.clone(),
            };
            let began = Instant::now();
            let rec = rewind_pitr::recover(&req, std::future::pending())
                .await
                .map_err(|e| e.to_string())?;
            let s = began.elapsed().as_secs_f64();
            let redo = redo_elapsed(&rec.evidence);
            println!(
                "rewind {i}: {s:.2} s (replayed {:.0} MB, redo {:.2} s = {:.0} MB/s; recovered to {})",
                mb(rec.replayed_bytes),
                redo.unwrap_or(f64::NAN),
                redo.map(|r| mb(rec.replayed_bytes) / r).unwrap_or(f64::NAN),
                time::rfc3339(rec.recovered_to)
            );
            if let Some(r) = redo {
                replay.push(mb(rec.replayed_bytes) / r);
            }
            rewind_s.push(s);
            registry.drop_run(&run).await.map_err(|e| e.to_string())?;
        } else {
            let into = dir.join(format!("hand-{i}"));
            let s = by_hand(&bin, &base, &wal, &into, target).await?;
            println!("by hand {i}: {s:.2} s");
            hand_s.push(s);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    let (r, h) = (mean(&rewind_s), mean(&hand_s));
    let (rm, hm) = (median(&mut rewind_s), median(&mut hand_s));
    println!(
        "RESULT: rewind mean {r:.2} s (median {rm:.2}), by hand mean {h:.2} s (median {hm:.2}), ratio of means {:.3}x, of medians {:.3}x (goal <= 1.1x); WAL replay {:.0} MB/s; database {:.0} MB, WAL {:.0} MB",
        r / h,
        rm / hm,
        mean(&replay),
        mb(db_bytes),
        mb(wal_after)
    );
    Ok(())
}

/// `elapsed: X s` of the `redo done at` line.
fn redo_elapsed(evidence: &[String]) -> Option<f64> {
    let line = evidence.iter().find(|l| l.contains("redo done at"))?;
    let (_, rest) = line.rsplit_once("elapsed: ")?;
    rest.trim_end_matches(" s").trim().parse().ok()
}

/// The same recovery as a person would run it.
async fn by_hand(bin: &Path, base: &Path, wal: &Path, into: &Path, target: SystemTime) -> Res<f64> {
    let data = into.join("data");
    let began = Instant::now();
    std::fs::create_dir_all(into).map_err(|e| e.to_string())?;
    sh(Command::new("cp").arg("-a").arg(base).arg(&data))?;
    sh(Command::new("chmod").arg("0700").arg(&data))?;
    sh(Command::new("chown").arg("-R").arg("postgres:postgres").arg(into))?;
    let auto = data.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&format!(
        "restore_command = 'cp {}/%f \"%p\"'\nrecovery_target_time = '{}'\nrecovery_target_action = 'promote'\n",
        wal.display(),
        time::pg_target(target)
    ));
    std::fs::write(&auto, conf).map_err(|e| e.to_string())?;
    std::fs::write(data.join("recovery.signal"), "").map_err(|e| e.to_string())?;
    let port = rewind_pitr::proc::free_port().map_err(|e| e.to_string())?;
    sh(as_postgres(&bin.join("pg_ctl")).arg("start").arg("-W").arg("-D").arg(&data).arg("-l").arg(into.join("server.log")).arg("-o").arg(format!(
        "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c archive_mode=off",
        into.display()
    )))?;
    let q = |sql: &str| {
        Command::new(bin.join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(port.to_string())
            .args(["-c", sql])
            .output()
    };
    loop {
        if let Ok(o) = q("SELECT pg_is_in_recovery()")
            && o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim() == "f"
        {
            break;
        }
        if began.elapsed() > Duration::from_secs(3600) {
            return Err(format!(
                "by hand: no promotion; see {}",
                into.join("server.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = began.elapsed().as_secs_f64();
    sh(as_postgres(&bin.join("pg_ctl")).args(["stop", "-m", "fast", "-D"]).arg(&data))?;
    std::fs::remove_dir_all(into).map_err(|e| e.to_string())?;
    Ok(s)
}
