//! Real restores end to end: `rewind demo`, and the real restore-2 workflow against a sandbox
//! killed with SIGKILL, given a failing store, or given hostile target attributes. The verdict is
//! always the sandbox's own verifier, which shares no code with the restore.

#![allow(clippy::unwrap_used)] // a panic is a failed test

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rewind_sandbox::Manifest;
use serde_json::Value;
use support::{Env, stderr, stdout};

fn workflow(name: &str) -> String {
    format!("{}/workflows/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pg_url() -> Option<String> {
    match std::env::var("REWIND_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("note: REWIND_TEST_POSTGRES is not set; skipping the PostgreSQL variant");
            None
        }
    }
}

/// Removes a sandbox (and its PostgreSQL schemas) at the end of a test.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.join("sandbox.json").exists()
            && let Ok(rt) = tokio::runtime::Runtime::new()
        {
            let _ = rt.block_on(rewind_sandbox::destroy(&self.0));
        }
    }
}

/// The value after `label` on the line that starts with it.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
        .trim()
}

fn demo(postgres: Option<&str>) {
    let env = Env::sqlite();
    let dir = env.path("demo");
    let sandbox = dir.join("sandbox");
    let _cleanup = Cleanup(sandbox.clone());
    let d = dir.to_str().unwrap();
    // From a folder that has no `workflows/`: the shipped restore-2 is built into rewind.
    let mut args = vec!["demo", "--dir", d, "--sites", "50", "--delete", "20", "--shards", "4"];
    let wf = workflow("restore-2.toml");
    assert!(!env.path("workflows").exists());
    if let Some(url) = postgres {
        args.extend(["--postgres", url]);
    }
    let o = env.rewind(&args);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("restore-2.toml")).unwrap(),
        std::fs::read_to_string(&wf).unwrap(),
        "the built-in workflow, written beside the run"
    );

    // The summary ends the output: time to restore, % restored, data loss per store, verdict.
    assert!(field(&out, "time to restore").contains("20 sites"), "{out}");
    assert_eq!(field(&out, "sites restored"), "20/20 (100.0%)");
    assert_eq!(field(&out, "verify  "), "PASS");
    let rp = field(&out, "restore point").split_whitespace().next().unwrap().to_owned();
    let m = Manifest::load(&sandbox).unwrap();
    for store in m.all_stores() {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(store.name())),
            "no data-loss line for {}:\n{out}",
            store.name()
        );
    }

    // The sandbox's verifier, run again on its own, agrees; and the run's record says the same.
    let v = env.rewind(&["sandbox", "verify", sandbox.to_str().unwrap(), "--restore-point", &rp]);
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
    let db = format!("sqlite://{}", dir.join("rewind.db").display());
    let run = out.lines().find_map(|l| l.strip_prefix("run ")).unwrap().trim().to_owned();
    let s = env.cmd(&["--db", &db, "status", &run, "--json"]).output().unwrap();
    let s: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(
        (s["state"].as_str(), s["restored_targets"].as_u64()),
        (Some("succeeded"), Some(20))
    );
    assert_eq!(s["restore_point"].as_str(), Some(&*rp));

    // A second demo replaces the first (its directory, and its schemas on PostgreSQL)...
    let first = Manifest::load(&sandbox).unwrap();
    let mut again = vec!["demo", "--dir", d, "--sites", "8", "--delete", "2", "--shards", "1"];
    again.extend(["--workflow", &wf]);
    if let Some(url) = postgres {
        again.extend(["--postgres", url]);
    }
    let o = env.rewind(&again);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("replaced the previous demo"), "{}", stderr(&o));
    let second = Manifest::load(&sandbox).unwrap();
    assert_eq!(second.sites.len(), 8);
    if let rewind_sandbox::Backend::Postgres { url, schema_prefix } = &first.backend
        && let rewind_sandbox::Backend::Postgres { schema_prefix: now, .. } = &second.backend
    {
        assert_ne!(schema_prefix, now);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let left: i64 = rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_namespace WHERE nspname LIKE $1")
                .bind(format!("{schema_prefix}\\_%"))
                .fetch_one(&mut c)
                .await
                .unwrap()
        });
        assert_eq!(left, 0, "the first demo's schemas are dropped");
    }

    // ...and refuses a directory it did not make.
    let other = env.path("not-a-demo");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let o = env.rewind(&["demo", "--dir", other.to_str().unwrap(), "--workflow", &wf]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("was not made by `rewind demo`"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");
}

#[test]
fn demo_on_sqlite_restores_the_deleted_sites_and_verify_passes() {
    demo(None);
}

#[test]
fn demo_on_postgres_restores_the_deleted_sites_and_verify_passes() {
    if let Some(url) = pg_url() {
        demo(Some(&url));
    }
}

// ---------------------------------------------------------------- restore-2 run by hand

/// A sandbox with deleted sites, a targets file of them, and a checkpoint store.
struct Incident {
    env: Env,
    dir: PathBuf,
    targets: PathBuf,
    rp: String,
    _cleanup: Cleanup,
}

impl Incident {
    fn new(sites: u32, delete: u32) -> Self {
        let env = Env::sqlite();
        let dir = env.path("sb");
        let cleanup = Cleanup(dir.clone());
        let d = dir.to_str().unwrap();
        let sites = sites.to_string();
        let delete = delete.to_string();
        let init = env.rewind(&["sandbox", "init", d, "--sites", &sites, "--shards", "2"]);
        assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
        let inc = env.rewind(&["sandbox", "incident", d, "--delete", &delete]);
        assert_eq!(inc.status.code(), Some(0), "{}", stderr(&inc));
        let targets = env.path("deleted.csv");
        let t =
            env.rewind(&["sandbox", "sites", d, "--deleted", "--out", targets.to_str().unwrap()]);
        assert_eq!(t.status.code(), Some(0), "{}", stderr(&t));
        let at = Manifest::load(&dir).unwrap().incident.unwrap().at;
        let rp = at.minus(Duration::from_secs(300)).to_string();
        Self { env, dir, targets, rp, _cleanup: cleanup }
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("SANDBOX", &self.dir);
        c
    }

    fn run_args(&self) -> Vec<String> {
        let wf = workflow("restore-2.toml");
        let t = self.targets.to_str().unwrap();
        ["run", "--workflow", &wf, "--targets", t, "--restore-point", &self.rp]
            .map(str::to_owned)
            .to_vec()
    }

    fn verify(&self, sites: Option<&Path>) -> (Output, Value) {
        let mut args = vec!["sandbox", "verify", self.d(), "--restore-point", &self.rp, "--json"];
        if let Some(s) = sites {
            args.extend(["--sites", s.to_str().unwrap()]);
        }
        let o = self.env.rewind(&args);
        let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o, v)
    }

    fn deleted(&self) -> Vec<String> {
        let m = Manifest::load(&self.dir).unwrap();
        m.incident.unwrap().deleted.iter().map(|d| d.site.to_string()).collect()
    }
}

/// Every process below `pid` (children, grandchildren), read from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|x| x.parse::<u32>().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A crash of the whole host, as far as this run can tell: rewind is frozen, every process it
/// started is killed, then rewind is killed with SIGKILL.
fn crash(child: &mut std::process::Child) {
    let pid = child.id();
    signal("-STOP", pid);
    for p in descendants(pid) {
        signal("-KILL", p);
    }
    signal("-KILL", pid);
    let _ = child.wait();
}

fn finished(status: &Value) -> u64 {
    let c = &status["counts"];
    ["succeeded", "failed", "skipped", "cancelled", "blocked"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn sigkill_at_several_points_then_resume_and_verify_passes() {
    let inc = Incident::new(40, 20);
    let args = inc.run_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // First kill: as soon as the run exists (the shard restores are starting).
    let out = std::fs::File::create(inc.env.path("run.out")).unwrap();
    let mut child = inc.cmd(&args).stdout(out).stderr(std::process::Stdio::null()).spawn().unwrap();
    let run = inc.env.run_id_of("run");
    let total = {
        let s = inc.env.status(&run);
        ["succeeded", "failed", "skipped", "cancelled", "blocked", "pending", "running"]
            .iter()
            .map(|k| s["counts"][k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    crash(&mut child);
    let mut kills = 1;

    // Then at about a quarter, a half and three quarters of the instances: mid-copy, mid-media,
    // mid-validation, wherever the run happens to be.
    for fraction in [0.25, 0.5, 0.75] {
        let mut child = inc
            .cmd(&["resume", &run])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let target = (total as f64 * fraction) as u64;
        let mut done = false;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert_eq!(st.code(), Some(0), "the resumed run ended before the kill");
                done = true;
                break;
            }
            let s = inc.env.status(&run);
            if finished(&s) >= target {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no progress: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
        if done {
            break;
        }
        crash(&mut child);
        kills += 1;
    }
    assert!(kills >= 3, "the run should have been killed at least three times, not {kills}");

    let o = inc.cmd(&["resume", &run]).output().unwrap();
    assert!(
        matches!(o.status.code(), Some(0)),
        "resume after {kills} kills: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let s = inc.env.status(&run);
    assert_eq!(s["state"].as_str(), Some("succeeded"), "{s}");
    assert_eq!(s["restored_targets"].as_u64(), Some(20));

    // No row lost, none duplicated, no other tenant touched: the independent verifier.
    let (v, report) = inc.verify(None);
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
    assert_eq!(report["ok"].as_bool(), Some(true));
    assert_eq!(report["restored_sites"].as_u64(), Some(20));
}

#[test]
fn a_failing_store_fails_only_its_site_and_every_other_site_is_restored() {
    let inc = Incident::new(30, 8);
    let deleted = inc.deleted();
    let bad = deleted[0].clone();

    // The contacts store refuses the bad site's rows, as a store out of space for one tenant
    // would; everything else about it works. (A constraint, not a trigger: a copy does not fire
    // the store's triggers.) SQLite adds a CHECK only by rebuilding the table.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let path = inc.dir.join("stores/contacts.sqlite");
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        let create: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'contacts'")
                .fetch_one(&mut c)
                .await
                .unwrap();
        let close = create.rfind(')').unwrap();
        let create = format!(
            "{}, CONSTRAINT tablespace_full_for_tenant CHECK (site_id <> '{bad}'))",
            &create[..close]
        );
        let rebuild = format!(
            "BEGIN; ALTER TABLE contacts RENAME TO contacts_before; {create}; \
             INSERT INTO contacts SELECT * FROM contacts_before; DROP TABLE contacts_before; COMMIT;"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(rebuild)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    });

    let args = inc.run_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = inc.cmd(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));

    let run = stdout(&o).lines().next().unwrap().strip_prefix("run ").unwrap().to_owned();
    let s = inc.env.status(&run);
    assert_eq!(s["state"].as_str(), Some("failed"));
    assert_eq!(s["restored_targets"].as_u64(), Some(deleted.len() as u64 - 1));
    let failures = s["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{s}");
    assert_eq!(failures[0]["key"].as_str(), Some(&*format!("contacts.restore/{bad}")));
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("tablespace_full_for_tenant") && error.contains("[SQLite"), "{error}");
    assert_eq!(failures[0]["attempts"].as_u64(), Some(1), "a constraint fails for good: no retry");
    let failed_targets: Vec<&str> = s["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"].as_str() != Some("succeeded"))
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed_targets, [bad.as_str()]);

    // Every other deleted site is back and verified; the only problems are the bad site's
    // (partly restored, so neither deleted nor restored), and no other tenant was touched.
    let others = inc.env.path("others.csv");
    let text = std::fs::read_to_string(&inc.targets).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&bad)).collect();
    std::fs::write(&others, kept.join("\n") + "\n").unwrap();
    let (v, report) = inc.verify(Some(&others));
    assert_eq!(v.status.code(), Some(1), "the bad site is half-restored: {}", stdout(&v));
    let sites: BTreeSet<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, BTreeSet::from([bad.as_str()]), "{report}");
    assert_eq!(report["restored_sites"].as_u64(), Some(deleted.len() as u64 - 1));
}

#[test]
fn hostile_attribute_values_reach_sql_and_commands_only_as_data() {
    let env = Env::sqlite();
    let hostile = [
        r#"x'; DROP TABLE notes; --"#,
        r#"$(touch pwned) `touch pwned2` ; rm -rf / && echo "quoted""#,
        "semi;colon -- comment /* block */ \\ backslash",
    ];
    // JSON Lines: in CSV a cell with `;` is a list (DESIGN.md), here every value is one string.
    let mut jsonl = String::new();
    for (i, h) in hostile.iter().enumerate() {
        let t = serde_json::json!({ "id": support::site(i + 1), "kind": "site", "note": h });
        jsonl.push_str(&format!("{t}\n"));
    }
    env.write("targets.jsonl", &jsonl, false);
    let db = env.path("notes.sqlite");
    std::fs::File::create(&db).unwrap();
    env.write(
        "hostile.toml",
        &format!(
            r#"name = "hostile"
target_kind = "site"

[connections]
notes = "sqlite://{}"

[[steps]]
id = "schema"
scope = "run"
estimate = "1m"
action = {{ kind = "sql", connection = "notes", sql = "CREATE TABLE IF NOT EXISTS notes (site TEXT PRIMARY KEY, note TEXT NOT NULL)" }}

[[steps]]
id = "insert"
needs = ["schema"]
estimate = "1m"
action = {{ kind = "sql", connection = "notes", statements = [
  {{ sql = "DELETE FROM notes WHERE site = $1", params = ["{{{{target.id}}}}"] }},
  {{ sql = "INSERT INTO notes (site, note) VALUES ($1, $2)", params = ["{{{{target.id}}}}", "{{{{target.attr.note}}}}"] }},
  {{ sql = "SELECT note FROM notes WHERE site = $1", params = ["{{{{target.id}}}}"] }},
] }}

[[steps]]
id = "echo"
estimate = "1m"
action = {{ kind = "command", program = "printf", args = ["%s", "{{{{target.attr.note}}}}"] }}
"#,
            db.display()
        ),
        false,
    );
    let o = env.rewind(&[
        "run",
        "--workflow",
        "hostile.toml",
        "--targets",
        "targets.jsonl",
        "--restore-point",
        support::RP,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();

    // The table survived and holds each value exactly; the shell never saw one.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<(String, String)> = rt.block_on(async {
        use sqlx::Connection;
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query_as("SELECT site, note FROM notes ORDER BY site")
            .fetch_all(&mut c)
            .await
            .unwrap()
    });
    let want: Vec<(String, String)> =
        hostile.iter().enumerate().map(|(i, h)| (support::site(i + 1), (*h).to_owned())).collect();
    assert_eq!(rows, want);
    assert!(!env.path("pwned").exists() && !env.path("pwned2").exists());

    // The outputs carry the values back verbatim: the final SELECT's first row, and the
    // command's stdout, as recorded in the run's checkpoint store.
    let store = env.path("rewind.db");
    type Pairs = Vec<(String, String)>;
    let (outputs, tails): (Pairs, Pairs) = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", store.display()))
            .await
            .unwrap();
        let outputs = sqlx::query_as(
            "SELECT target, output FROM instances WHERE run_id = ?1 AND step = 'insert' ORDER BY target",
        )
        .bind(&run)
        .fetch_all(&mut c)
        .await
        .unwrap();
        let tails = sqlx::query_as(
            "SELECT i.target, a.stdout_tail FROM instances i JOIN attempts a \
             ON a.run_id = i.run_id AND a.idx = i.idx \
             WHERE i.run_id = ?1 AND i.step = 'echo' ORDER BY i.target",
        )
        .bind(&run)
        .fetch_all(&mut c)
        .await
        .unwrap();
        (outputs, tails)
    });
    for (((site, output), (site2, tail)), (want_site, h)) in outputs.iter().zip(&tails).zip(&want) {
        assert_eq!((site, site2), (want_site, want_site));
        let output: Value = serde_json::from_str(output).unwrap();
        assert_eq!(output["note"].as_str(), Some(h.as_str()), "{output}");
        assert_eq!(tail, h);
    }
    assert_eq!((outputs.len(), tails.len()), (hostile.len(), hostile.len()));
}

/// Every file under `dir` and its bytes, but SQLite's WAL and its index: reading a WAL-mode
/// database (read-only) creates them empty, and changes no row.
fn contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with("-shm")
                && !p.to_string_lossy().ends_with("-wal")
            {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The incident's mistake, the other way round: an app's ID in a list of sites to restore.
/// restore-2's preflight asks the sandbox's tenant registry and refuses the run, naming the app,
/// before anything is written anywhere (no run, no scratch copy, no store changed).
#[test]
fn restore_2_refuses_an_app_id_slipped_into_its_sites_before_any_write() {
    let inc = Incident::new(16, 4);
    let apps = inc.dir.join("stores/apps.sqlite");
    let app: String = tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=ro", apps.display());
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let id = sqlx::query_scalar("SELECT id FROM installations ORDER BY id LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        id
    });
    // The app's ID in place of the second deleted site (its other columns kept).
    let text = std::fs::read_to_string(&inc.targets).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let rest = lines[2].split_once(',').unwrap().1.to_owned();
    lines[2] = format!("{app},{rest}");
    let slipped = inc.env.path("slipped.csv");
    std::fs::write(&slipped, lines.join("\n") + "\n").unwrap();
    let before = contents(&inc.dir);

    let wf = workflow("restore-2.toml");
    let t = slipped.to_str().unwrap();
    let o =
        inc.cmd(&["run", "--workflow", &wf, "--targets", t, "--restore-point", &inc.rp]).output();
    let o = o.unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}{}", stdout(&o));
    assert!(err.contains(&format!("1 target is an app, not a site: {app}")), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(!inc.env.path("rewind.db").exists(), "a run was written");
    let after = contents(&inc.dir);
    let changed: Vec<_> =
        after.iter().filter(|(p, b)| before.get(*p) != Some(*b)).map(|(p, _)| p).collect();
    assert!(
        before.len() == after.len() && changed.is_empty(),
        "the refused run changed the sandbox: {changed:?}"
    );

    // The real list passes the preflight; a dry run shows the restore and writes nothing.
    let mut args = inc.run_args();
    args.push("--dry-run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = inc.cmd(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("all 4 targets are sites in state `deleted`"), "{}", stderr(&o));
    let out = stdout(&o);
    let first = &inc.deleted()[0];
    assert!(out.contains(&format!("catalog.undelete/{first}")), "{}", &out[..2000.min(out.len())]);
    assert!(out.contains(&format!("tenant '{first}'")), "{}", &out[..2000.min(out.len())]);
    assert!(out.contains("# tenant slices, planned read-only"), "{}", &out[..2000.min(out.len())]);
    assert!(!inc.env.path("rewind.db").exists(), "a dry run wrote a run");
    let after = contents(&inc.dir);
    assert!(before == after, "a dry run changed the sandbox");
}
