//! A `pitr` step through the real binary: a PostgreSQL source archived and written at known
//! instants, a run whose `pitr` step is killed with SIGKILL mid-recovery and resumed, ending with
//! one scratch instance at the restore point that a dependent `sql` step reads through
//! `{{needs.restore.port}}`; `scratch list` shows it, `scratch drop` leaves no process and no
//! directory.
//!
//! Needs this machine's PostgreSQL binaries (`pg_config --bindir` or `REWIND_PG_BINDIR`); without
//! them the test says so and passes without running. CI installs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rewind_pitr::proc::{processes_in, servers_in};
use rewind_pitr::source::pg::{Archiving, BackupFormat, SourceCluster};
use rewind_pitr::{Registry, time};
use support::*;

/// Drops the run's scratch instances however the test ends.
struct DropScratch(Registry, String);

impl Drop for DropScratch {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Runtime::new() {
            let _ = rt.block_on(self.0.drop_run(&self.1));
        }
    }
}

#[test]
fn a_pitr_step_killed_mid_recovery_resumes_to_one_instance_at_the_restore_point() {
    if !rewind_pitr::pg::bindir(None).join("pg_ctl").is_file() {
        eprintln!("skipped: no pg_ctl (install postgresql, or set REWIND_PG_BINDIR)");
        return;
    }
    let env = Env::sqlite();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = env.dir.path().to_path_buf();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The source: two commits, a base backup, three commits 1.1 s apart, WAL archived.
    let (src, commits) = rt.block_on(async {
        let port = rewind_pitr::proc::free_port().unwrap();
        let src = SourceCluster::init(
            &dir.join("src"),
            None,
            port,
            Archiving::Archive { wal_dir: dir.join("wal") },
        )
        .await
        .expect("source cluster");
        src.sql("postgres", "CREATE TABLE t (id int PRIMARY KEY, note text)").await.unwrap();
        let mut commits: Vec<SystemTime> = Vec::new();
        for id in 1..=5 {
            if id == 3 {
                src.base_backup(&dir.join("base"), BackupFormat::Plain).await.expect("base backup");
            }
            if id >= 3 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            // Rows that make a few megabytes of WAL, so recovery takes a moment to replay.
            src.sql(
                "postgres",
                &format!(
                    "INSERT INTO t VALUES ({id}, repeat('x', 100)); \
                     INSERT INTO t SELECT g, md5(g::text) FROM generate_series({id} * 100000, {id} * 100000 + 40000) g"
                ),
            )
            .await
            .unwrap();
            let at = src
                .sql("postgres", &format!("SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE id = {id}"))
                .await
                .unwrap();
            commits.push(time::parse_pg(at.lines().last().unwrap()).expect("a commit time"));
        }
        src.switch_wal_and_wait().await.expect("WAL archived");
        (src, commits)
    });
    // Between the fourth and the fifth commit: rows 1-4 (and their batches) are in, 5 is not.
    let target = commits[3] + commits[4].duration_since(commits[3]).unwrap() / 2;
    let rp = time::rfc3339(target);

    let wf = r#"name = "pitr"
target_kind = "site"

[defaults]
timeout = "5m"
retries = 0

[connections]
scratch = "postgres://postgres@127.0.0.1:{{needs.restore.port}}/postgres"

[[steps]]
id = "restore"
scope = "run"
estimate = "10m"
action = { kind = "pitr", engine = "postgres", method = "archive", base_backup = "base", wal_archive = "wal", into = "scratch/a-directory-deep-enough-that-a-socket-in-it-would-not-fit-a-unix-socket-path/{{run.id}}" }

[[steps]]
id = "count"
scope = "run"
needs = ["restore"]
estimate = "1m"
action = { kind = "sql", connection = "scratch", sql = "SELECT count(*) AS n, max(id) FILTER (WHERE id < 100) AS last FROM t" }
"#;
    let w = env.write("pitr.toml", wf, false).display().to_string();
    let t = env.write("sites.csv", &targets_csv(&["ok"]), false).display().to_string();
    let registry = dir.join("registry");
    let cmd = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env_remove("REWIND_NOW").env("REWIND_SCRATCH_REGISTRY", &registry);
        c
    };

    // Start the run; SIGKILL rewind once the scratch server was started.
    let out = std::fs::File::create(env.path("run.out")).unwrap();
    let mut child = cmd(&["run", "--workflow", &w, "--targets", &t, "--restore-point", &rp])
        .stdout(out)
        .stderr(std::fs::File::create(env.path("run.err")).unwrap())
        .spawn()
        .unwrap();
    let run = env.run_id_of("run");
    let _cleanup = DropScratch(Registry::at(&registry), run.clone());
    let into = dir
        .join(
            "scratch/a-directory-deep-enough-that-a-socket-in-it-would-not-fit-a-unix-socket-path",
        )
        .join(&run);
    wait_for("the scratch server to start", || into.join("server.log").exists());
    child.kill().unwrap();
    child.wait().unwrap();

    let marker = rewind_pitr::scratch::read_marker(&into).unwrap().expect("a marker");
    eprintln!("killed with the instance {}", marker.state.as_str());

    let resumed = cmd(&["resume", &run]).output().unwrap();
    assert_eq!(resumed.status.code(), Some(0), "{}\n{}", stdout(&resumed), stderr(&resumed));

    // One server, at the restore point.
    let marker = rewind_pitr::scratch::read_marker(&into).unwrap().expect("a marker");
    assert_eq!(marker.state, rewind_pitr::State::Ready);
    let rec = marker.recovered.clone().unwrap();
    assert_eq!(rec.recovered_to, commits[3], "the last commit at or before the restore point");
    let data: PathBuf = into.join("data");
    let pid = marker.server_pid().expect("the server runs");
    let postmasters = servers_in(&data);
    assert_eq!(
        postmasters,
        vec![pid],
        "one server in {}: {:?}",
        data.display(),
        processes_in(&data)
    );

    // The dependent step read it through the output's port.
    let report = env.report(&run);
    assert_eq!(report["state"], "succeeded", "{report:#}");
    let rows = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&rec.url).await.expect("the scratch accepts TCP");
        let n: (i64, i32) =
            sqlx::query_as("SELECT count(*), max(id) FILTER (WHERE id < 100) FROM t")
                .fetch_one(&mut c)
                .await
                .unwrap();
        n
    });
    assert_eq!(rows, (4 + 4 * 40_001, 4), "rows 1-4 and their batches, not row 5");

    // Listed, then dropped: no process, no directory.
    let listed = cmd(&["scratch", "list", &run, "--json"]).output().unwrap();
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    let row: serde_json::Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    assert_eq!(row["state"], "ready");
    assert_eq!(row["restore_point"], rp);
    assert!(row["server"].as_str().unwrap().starts_with("running"), "{row}");
    let dropped = cmd(&["scratch", "drop", &run]).output().unwrap();
    assert_eq!(dropped.status.code(), Some(0), "{}", stderr(&dropped));
    assert!(processes_in(&data).is_empty(), "no server left");
    assert!(!into.exists(), "no directory left");
    let listed = cmd(&["scratch", "list", &run]).output().unwrap();
    assert!(stdout(&listed).contains("no scratch instances"), "{}", stdout(&listed));
    drop(src);
}
