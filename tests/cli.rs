//! The command line as a newcomer meets it: where `--db` is offered and accepted, what `status`
//! says in an empty folder.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::process::{Command, Output};

fn rewind(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .current_dir(dir)
        .env_remove("REWIND_DB")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn db_is_offered_only_where_a_checkpoint_store_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let top = text(&rewind(dir.path(), &["--help"]));
    assert!(!top.contains("--db"), "{top}");
    for cmd in ["run", "status", "resume", "retry", "cancel", "report", "log"] {
        let help = text(&rewind(dir.path(), &[cmd, "--help"]));
        assert!(help.contains("--db <URL>") && help.contains("REWIND_DB"), "{cmd}: {help}");
    }
    for cmd in ["check", "plan", "bench", "demo", "sandbox"] {
        let help = text(&rewind(dir.path(), &[cmd, "--help"]));
        assert!(!help.contains("--db"), "{cmd}: {help}");
    }
    // DESIGN.md's global form still works, and a flag that would be ignored is refused.
    let url = format!("sqlite://{}/other.db", dir.path().display());
    for args in [vec!["--db", &url, "status"], vec!["status", "--db", &url]] {
        let o = rewind(dir.path(), &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("other.db"), "{}", text(&o));
    }
    let o = rewind(dir.path(), &["--db", &url, "check", "x.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--db does not apply to `check`"), "{}", text(&o));
    let o = rewind(dir.path(), &["--db", &url, "status", "--db", "sqlite://elsewhere.db"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--db is given twice"), "{}", text(&o));
}

#[test]
fn status_in_an_empty_folder_names_the_store_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let o = rewind(dir.path(), &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let want = format!(
        "no runs in the checkpoint store at {} (sqlite://rewind.db)",
        dir.path().join("rewind.db").display()
    );
    assert!(text(&o).starts_with(&want), "{}", text(&o));
}

/// `status RUN --json` has a `workers` array, each worker with the fields of
/// `GET /api/v1/workers`; `status --json` (all runs) stays an array of runs; the text form lists
/// the workers after the runs, and also when there are none.
#[test]
fn status_json_lists_the_runs_and_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/rewind.db", dir.path().display());
    let json = |o: &Output| -> serde_json::Value {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let empty = json(&rewind(dir.path(), &["--db", &url, "status", "--json"]));
    assert_eq!(empty, serde_json::json!([]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = rewind_store::SqlStore::open(&url).await.unwrap();
        let now = rewind_runtime::now_unix_ms();
        for (name, at) in [("w-live", now), ("w-stopping", now), ("w-gone", 0)] {
            let spec = rewind_dispatch::WorkerSpec {
                name: name.into(),
                host: format!("{name}.example"),
                queues: vec!["us-east".into()],
                slots: 2,
            };
            let session = store.worker_register(&spec, at).await.unwrap();
            if name == "w-stopping" {
                assert!(store.worker_stop(&session).await.unwrap());
            }
        }
        store.close().await;
    });
    // All runs: still an array (of none), whatever workers there are.
    assert_eq!(
        json(&rewind(dir.path(), &["--db", &url, "status", "--json"])),
        serde_json::json!([])
    );
    let o = rewind(dir.path(), &["--db", &url, "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    std::fs::write(
        dir.path().join("w.toml"),
        "name = \"one\"\ntarget_kind = \"site\"\n\n[[steps]]\nid = \"s\"\nestimate = \"1s\"\n\
         action = { kind = \"command\", program = \"true\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("t.csv"),
        "id,kind\n00000000-0000-4000-8000-000000000001,site\n",
    )
    .unwrap();
    let o = rewind(
        dir.path(),
        &[
            "--db",
            &url,
            "run",
            "--workflow",
            "w.toml",
            "--targets",
            "t.csv",
            "--restore-point",
            "2022-04-05T07:33:00Z",
            "--simulate",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let id = stdout.lines().next().and_then(|l| l.strip_prefix("run ")).unwrap().to_owned();
    let shown = json(&rewind(dir.path(), &["--db", &url, "status", &id, "--json"]));
    let workers: Vec<(&str, &str, &str, u64, u64)> = shown["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap();
            (
                s("name"),
                s("host"),
                s("state"),
                w["slots"].as_u64().unwrap(),
                w["attempts_held"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        workers,
        [
            ("w-gone", "w-gone.example", "gone", 2, 0),
            ("w-live", "w-live.example", "live", 2, 0),
            ("w-stopping", "w-stopping.example", "stopping", 2, 0)
        ]
    );
    assert_eq!(shown["workers"][1]["queues"], serde_json::json!(["us-east"]));
    assert_eq!(shown["run_id"], serde_json::json!(id));
    assert!(out.starts_with("no runs in the checkpoint store"), "{out}");
    for (name, state) in [("w-gone", "gone"), ("w-live", "live"), ("w-stopping", "stopping")] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..6], [state, &format!("{name}.example"), "us-east", "2", "0"], "{out}");
    }
}
