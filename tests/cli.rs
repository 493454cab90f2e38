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
