//! The scratch lifecycle without a server: what `recover` refuses before it writes anything,
//! and what `list` and `drop_run` do with the registry and the markers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use rewind_pitr::{Error, Owner, Registry, Request, Source, recover};

fn request(into: &Path, registry: &Path, run: &str) -> Request {
    Request {
        source: Source::Archive {
            base_backup: into.with_file_name("no-such-backup"),
            wal_archive: into.with_file_name("no-such-archive"),
        },
        into: into.to_path_buf(),
        target: UNIX_EPOCH + Duration::from_secs(1_649_143_980),
        owner: Owner { run: run.into(), instance: "pitr.tracker/shard=s03".into() },
        run_as: None,
        tool_env: Vec::new(),
        registry: Registry::at(registry),
    }
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

fn permanent(r: Result<rewind_pitr::Recovered, Error>) -> String {
    match r {
        Err(Error::Permanent(m)) => m,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_directory_that_is_not_a_scratch_instance_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let into = tmp.path().join("scratch");
    std::fs::create_dir(&into).unwrap();
    std::fs::write(into.join("precious.txt"), "user data").unwrap();
    let msg = permanent(recover(&request(&into, &tmp.path().join("reg"), "run-a"), never()).await);
    assert!(msg.contains("is not a rewind scratch directory"), "{msg}");
    assert_eq!(std::fs::read_to_string(into.join("precious.txt")).unwrap(), "user data");
    assert!(!tmp.path().join("reg").exists(), "nothing registered");
}

#[tokio::test]
async fn a_missing_backup_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let into = tmp.path().join("scratch");
    let msg = permanent(recover(&request(&into, &tmp.path().join("reg"), "run-a"), never()).await);
    assert!(msg.contains("no-such-backup"), "{msg}");
    assert!(!into.exists(), "nothing created at {}", into.display());
    assert!(Registry::at(tmp.path().join("reg")).list(None).unwrap().is_empty());
}

#[tokio::test]
async fn another_owners_instance_is_refused_and_drop_removes_only_marked_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let into = tmp.path().join("scratch");
    // Another run's instance, as recover leaves a failed one: marker + registry entry.
    std::fs::create_dir_all(into.join("data")).unwrap();
    let entry = serde_json::json!({
        "owner": {"run": "run-b", "instance": "pitr.tracker/shard=s03"},
        "engine": "postgres",
        "source": {"method": "archive", "base_backup": "/b", "wal_archive": "/w"},
        "into": into, "port": 1, "user": "postgres", "target": "2022-04-05T07:33:00Z",
        "state": "failed", "recovered": null, "error": "boom", "updated": "2022-04-05T07:40:00Z"
    });
    std::fs::write(into.join("rewind-scratch.json"), entry.to_string()).unwrap();
    std::fs::create_dir_all(reg.join("run-b")).unwrap();
    let hex: String = "pitr.tracker/shard=s03".bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(reg.join("run-b").join(format!("{hex}.json")), entry.to_string()).unwrap();

    let msg = permanent(recover(&request(&into, &reg, "run-a"), never()).await);
    assert!(msg.contains("run run-b") && msg.contains("rewind scratch drop run-b"), "{msg}");

    let listed = Registry::at(&reg).list(Some("run-b")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].entry.error.as_deref(), Some("boom"));
    assert_eq!(listed[0].pid, None);
    assert!(!listed[0].missing);
    assert!(Registry::at(&reg).list(Some("run-a")).unwrap().is_empty());

    // A registry entry whose directory lost its marker is forgotten, the directory kept.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "x").unwrap();
    let mut stray = entry.clone();
    stray["owner"]["instance"] = "pitr.wiki".into();
    stray["into"] = serde_json::json!(other);
    let hex2: String = "pitr.wiki".bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(reg.join("run-b").join(format!("{hex2}.json")), stray.to_string()).unwrap();

    let dropped = Registry::at(&reg).drop_run("run-b").await.unwrap();
    assert_eq!(dropped.len(), 2);
    assert!(!into.exists(), "the marked directory is removed");
    assert!(other.join("keep.txt").exists(), "an unmarked directory is never removed");
    assert!(!reg.join("run-b").exists());
    assert!(Registry::at(&reg).drop_run("run-b").await.unwrap().is_empty(), "idempotent");
}

#[tokio::test]
async fn the_owners_instance_at_another_into_is_removed_not_left_unlisted() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let old = tmp.path().join("old-scratch");
    std::fs::create_dir_all(old.join("data")).unwrap();
    let entry = serde_json::json!({
        "owner": {"run": "run-a", "instance": "pitr.tracker/shard=s03"},
        "engine": "postgres",
        "source": {"method": "archive", "base_backup": "/b", "wal_archive": "/w"},
        "into": old, "port": 1, "user": "postgres", "target": "2022-04-05T07:33:00Z",
        "state": "failed", "recovered": null, "error": "boom", "updated": "2022-04-05T07:40:00Z"
    });
    std::fs::write(old.join("rewind-scratch.json"), entry.to_string()).unwrap();
    std::fs::create_dir_all(reg.join("run-a")).unwrap();
    let hex: String = "pitr.tracker/shard=s03".bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(reg.join("run-a").join(format!("{hex}.json")), entry.to_string()).unwrap();

    // The same owner, now with another `into` (and a backup that is not there).
    let new = tmp.path().join("new-scratch");
    let msg = permanent(recover(&request(&new, &reg, "run-a"), never()).await);
    assert!(msg.contains("no-such-backup"), "{msg}");
    assert!(!old.exists(), "the owner's previous instance is removed");
    assert!(Registry::at(&reg).list(Some("run-a")).unwrap().is_empty());
}
