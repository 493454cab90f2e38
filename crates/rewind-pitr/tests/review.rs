//! Adversarial inputs found in review: what `recover` must refuse before it writes or removes
//! anything.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use rewind_pitr::{Error, Owner, Registry, Request, Source, recover};

const OWNER: &str = "pitr.tracker/shard=s03";

fn request(source: Source, into: &Path, registry: &Path) -> Request {
    Request {
        source,
        into: into.to_path_buf(),
        target: UNIX_EPOCH + Duration::from_secs(1_649_143_980),
        owner: Owner { run: "run-a".into(), instance: OWNER.into() },
        run_as: None,
        tool_env: Vec::new(),
        registry: Registry::at(registry),
    }
}

fn permanent(r: Result<rewind_pitr::Recovered, Error>) -> String {
    match r {
        Err(Error::Permanent(m)) => m,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// A plain base backup whose label the pre-check reads, started before the target.
fn base_backup(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("backup_label"),
        "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2022-04-05 07:00:00 UTC\nLABEL: x\n",
    )
    .unwrap();
}

/// A marker of `run-a`'s instance in `into`, as a failed attempt leaves it.
fn failed_marker(into: &Path, source: &Source) {
    std::fs::create_dir_all(into).unwrap();
    let entry = serde_json::json!({
        "owner": {"run": "run-a", "instance": OWNER},
        "engine": "postgres",
        "source": source,
        "into": into, "port": 1, "user": "postgres", "target": "2022-04-05T07:00:00Z",
        "state": "failed", "recovered": null, "error": "boom", "updated": "2022-04-05T07:40:00Z"
    });
    std::fs::write(into.join("rewind-scratch.json"), entry.to_string()).unwrap();
}

#[tokio::test]
async fn into_the_wal_archive_itself_is_refused_and_nothing_is_written_there() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    base_backup(&base);
    // An empty archive (nothing archived yet): `into` naming it passes the emptiness test.
    let wal = tmp.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    let source = Source::Archive { base_backup: base, wal_archive: wal.clone() };
    let msg = permanent(recover(&request(source, &wal, &tmp.path().join("reg")), never()).await);
    assert!(msg.contains("overlaps the WAL archive"), "{msg}");
    assert_eq!(std::fs::read_dir(&wal).unwrap().count(), 0, "nothing written into the archive");
    assert!(!tmp.path().join("reg").exists(), "nothing registered");
}

#[tokio::test]
async fn into_inside_the_base_backup_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    base_backup(&base);
    let wal = tmp.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    let into = base.join("scratch");
    let source = Source::Archive { base_backup: base.clone(), wal_archive: wal };
    let msg = permanent(recover(&request(source, &into, &tmp.path().join("reg")), never()).await);
    assert!(msg.contains("overlaps the base backup"), "{msg}");
    assert!(!into.exists(), "nothing created inside the backup");
}

#[tokio::test]
async fn a_backup_inside_the_owners_old_scratch_directory_is_refused_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let into = tmp.path().join("scratch");
    let binlogs = into.join("binlog");
    let backup = into.join("full");
    let source = Source::Binlog { base_backup: backup.clone(), binlogs: binlogs.clone() };
    failed_marker(&into, &source);
    std::fs::create_dir_all(&binlogs).unwrap();
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::write(binlogs.join("binlog.000001"), "precious").unwrap();
    let msg = permanent(recover(&request(source, &into, &tmp.path().join("reg")), never()).await);
    assert!(msg.contains("overlaps the base backup"), "{msg}");
    assert_eq!(std::fs::read_to_string(binlogs.join("binlog.000001")).unwrap(), "precious");
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn an_into_that_is_a_symbolic_link_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("big-disk/scratch");
    let into = tmp.path().join("scratch");
    let source = Source::Archive {
        base_backup: tmp.path().join("no-such-backup"),
        wal_archive: tmp.path().join("no-such-archive"),
    };
    // The owner's failed instance, reached through the operator's link.
    failed_marker(&real, &source);
    std::os::unix::fs::symlink(&real, &into).unwrap();
    let msg = permanent(recover(&request(source, &into, &tmp.path().join("reg")), never()).await);
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(into.symlink_metadata().unwrap().file_type().is_symlink(), "the link is kept");
    assert!(real.join("rewind-scratch.json").exists());
}

#[tokio::test]
async fn a_plain_backup_with_tablespaces_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    base_backup(&base);
    std::fs::create_dir_all(base.join("pg_tblspc")).unwrap();
    let ts = tmp.path().join("base-ts");
    std::fs::create_dir_all(&ts).unwrap();
    std::os::unix::fs::symlink(&ts, base.join("pg_tblspc/16384")).unwrap();
    let wal = tmp.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    let into = tmp.path().join("scratch");
    let source = Source::Archive { base_backup: base, wal_archive: wal };
    let msg = permanent(recover(&request(source, &into, &tmp.path().join("reg")), never()).await);
    assert!(msg.contains("tablespaces"), "{msg}");
    assert!(!into.exists());
}
