//! The issue tracker of `examples/tenant-schema/` restored through the binary with
//! `examples/tenant-restore.toml` (a `copy` that names only `root = "sites"`), on PostgreSQL and
//! on MariaDB: three tenants deleted from "live" come back equal to "backup", every other
//! tenant and the audit log are untouched, sequences are past the restored keys, a second run
//! changes nothing, and a copy whose transaction committed just before a `kill -9` runs again
//! on `resume` and yields the same rows.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::{Connection, Executor, Row};
use support::{Env, RP, StoreHold, TableLock, stderr, stdout, wait_for};

/// Sites in the example data; the tenants deleted are 2, 7 and the last (which holds the
/// highest keys, so a restore that did not advance sequences would collide).
const SITES: usize = 12;
const DELETED: [usize; 3] = [2, 7, SITES];

/// Every table of the tenant's slice, parents first.
const TABLES: &[&str] =
    &["sites", "users", "projects", "issues", "comments", "attachments", "attachment_views"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Postgres,
    Mariadb,
}

/// A database of one engine, reached by the test over sqlx and by the loaders' command-line
/// clients, as a user would load the example.
struct Db {
    engine: Engine,
    url: String,
    name: String,
}

impl Db {
    fn load(&self) {
        let schema = match self.engine {
            Engine::Postgres => repo("examples/tenant-schema/postgres.sql"),
            Engine::Mariadb => repo("examples/tenant-schema/mariadb.sql"),
        };
        let out = match self.engine {
            Engine::Postgres => Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1", "-v", &format!("sites={SITES}"), "-d"])
                .arg(&self.url)
                .arg("-f")
                .arg(&schema)
                .output()
                .unwrap(),
            Engine::Mariadb => Command::new("mariadb")
                .args(["-h127.0.0.1", "-uroot", &format!("--init-command=SET @sites = {SITES}")])
                .arg(&self.name)
                .stdin(std::fs::File::open(&schema).unwrap())
                .output()
                .unwrap(),
        };
        assert!(out.status.success(), "loading {}: {}", schema.display(), stderr(&out));
    }

    async fn exec(&self, sql: &str) {
        match self.engine {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))).await.unwrap();
                c.close().await.unwrap();
            }
            Engine::Mariadb => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }

    async fn strings(&self, sql: &str) -> Vec<String> {
        match self.engine {
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                rows.iter().map(|r| r.get::<Option<String>, _>(0).unwrap_or_default()).collect()
            }
            Engine::Mariadb => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                rows.iter().map(|r| r.get::<Option<String>, _>(0).unwrap_or_default()).collect()
            }
        }
    }

    /// Each table's content, as one digest per table (order-independent).
    async fn digests(&self, tables: &[&str]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for t in tables {
            let sql = match self.engine {
                Engine::Postgres => format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {t} t"
                ),
                Engine::Mariadb => format!("SELECT CAST(COUNT(*) AS CHAR) FROM {t}"),
            };
            let mut v = self.strings(&sql).await.remove(0);
            if self.engine == Engine::Mariadb {
                // CHECKSUM TABLE reads every column of every row (live checksum of InnoDB).
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("CHECKSUM TABLE {t} EXTENDED")))
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                let sum: Option<i64> = row.try_get(1).unwrap();
                v.push_str(&format!(":{}", sum.unwrap_or_default()));
            }
            out.insert((*t).to_owned(), v);
        }
        out
    }

    /// The ids of the example's sites, site 1 first.
    async fn site_ids(&self) -> Vec<String> {
        let sql = match self.engine {
            Engine::Postgres => "SELECT id::text FROM sites ORDER BY created_at",
            Engine::Mariadb => "SELECT CAST(id AS CHAR) FROM sites ORDER BY created_at",
        };
        self.strings(sql).await
    }

    /// Deletes the tenants' rows as the incident did (every table of the slice), then moves
    /// the key generators back to the largest key left, as a store rebuilt from what remained
    /// would have them.
    async fn delete_tenants(&self, ids: &[String]) {
        let list = ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
        let projects = format!("SELECT id FROM projects WHERE site_id IN ({list})");
        let issues = format!("SELECT id FROM issues WHERE project_id IN ({projects})");
        let comments = format!("SELECT id FROM comments WHERE issue_id IN ({issues})");
        let deletes = [
            format!("DELETE FROM attachment_views WHERE comment_id IN ({comments})"),
            format!("DELETE FROM attachments WHERE comment_id IN ({comments})"),
            format!("DELETE FROM comments WHERE issue_id IN ({issues})"),
            format!("DELETE FROM issues WHERE project_id IN ({projects})"),
            format!("DELETE FROM projects WHERE site_id IN ({list})"),
            format!("DELETE FROM users WHERE site_id IN ({list})"),
            format!("DELETE FROM sites WHERE id IN ({list})"),
        ];
        let sql = match self.engine {
            Engine::Postgres => {
                let mut s = String::from("BEGIN; SET LOCAL session_replication_role = replica;\n");
                for d in &deletes {
                    // MySQL cannot read the table it deletes from in a subquery; PostgreSQL
                    // can, and both run the same statements.
                    s.push_str(d);
                    s.push_str(";\n");
                }
                s.push_str("COMMIT;\n");
                for (t, col) in
                    [("users", "id"), ("projects", "id"), ("issues", "id"), ("comments", "id")]
                {
                    s.push_str(&format!(
                        "SELECT setval(pg_get_serial_sequence('{t}', '{col}'), (SELECT max({col}) FROM {t}));\n"
                    ));
                }
                s
            }
            Engine::Mariadb => {
                let mut s = String::from(
                    "SET foreign_key_checks = 0; SET @rewind_restore = 1; START TRANSACTION;\n",
                );
                for d in &deletes {
                    s.push_str(d);
                    s.push_str(";\n");
                }
                s.push_str("COMMIT; SET foreign_key_checks = 1; SET @rewind_restore = NULL;\n");
                for t in ["users", "projects", "issues", "comments"] {
                    s.push_str(&format!("ALTER TABLE {t} AUTO_INCREMENT = 1;\n"));
                }
                s
            }
        };
        self.exec(&sql).await;
    }

    async fn count_sites(&self, ids: &[String]) -> usize {
        let list = ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
        let sql = match self.engine {
            Engine::Postgres => format!("SELECT count(*)::text FROM sites WHERE id IN ({list})"),
            Engine::Mariadb => {
                format!("SELECT CAST(COUNT(*) AS CHAR) FROM sites WHERE id IN ({list})")
            }
        };
        self.strings(&sql).await[0].parse().unwrap()
    }

    /// Inserts a new row in each table with a generated key: fails on a key collision.
    async fn insert_new_rows(&self, site: &str) {
        let sql = match self.engine {
            Engine::Postgres => format!(
                "INSERT INTO users (site_id, email) VALUES ('{site}', 'new@example');
                 INSERT INTO projects (site_id, key) VALUES ('{site}', 'NEW');
                 INSERT INTO issues (project_id, title, opened) SELECT max(id), 'new', now() FROM projects;
                 INSERT INTO comments (issue_id, body, created_at) SELECT max(id), 'new', now() FROM issues;"
            ),
            Engine::Mariadb => format!(
                "INSERT INTO users (site_id, email) VALUES ('{site}', 'new@example');
                 INSERT INTO projects (site_id, `key`) VALUES ('{site}', 'NEW');
                 INSERT INTO issues (project_id, title, opened) SELECT MAX(id), 'new', NOW() FROM projects;
                 INSERT INTO comments (issue_id, body, created_at) SELECT MAX(id), 'new', NOW() FROM issues;"
            ),
        };
        self.exec(&sql).await;
    }
}

/// A backup and a live database of `engine`, both loaded with the example; dropped at the end.
struct Pair {
    backup: Db,
    live: Db,
    drop: Vec<Box<dyn FnOnce() + Send>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in self.drop.drain(..) {
            d();
        }
    }
}

fn pair(engine: Engine, test: &str) -> Option<Pair> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut drops: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    let mut dbs = Vec::new();
    for _ in 0..2 {
        match engine {
            Engine::Postgres => {
                let base = rewind_testkit::postgres_url(test)?;
                let d = rt.block_on(rewind_testkit::PgDatabase::create(&base));
                dbs.push(Db { engine, url: d.url.clone(), name: d.name.clone() });
                drops.push(Box::new(move || {
                    tokio::runtime::Runtime::new().unwrap().block_on(d.drop_database());
                }));
            }
            Engine::Mariadb => {
                let base = rewind_testkit::mariadb_url(test)?;
                let d = rt.block_on(rewind_testkit::MyDb::create(&base));
                dbs.push(Db { engine, url: d.url.clone(), name: d.name.clone() });
                drops.push(Box::new(move || {
                    tokio::runtime::Runtime::new().unwrap().block_on(d.drop_database());
                }));
            }
        }
    }
    let live = dbs.pop().unwrap();
    let backup = dbs.pop().unwrap();
    backup.load();
    live.load();
    Some(Pair { backup, live, drop: drops })
}

fn run_args<'a>(w: &'a str, t: &'a str) -> Vec<&'a str> {
    vec!["run", "--workflow", w, "--targets", t, "--restore-point", RP, "--confirm", "3"]
}

fn rewind(env: &Env, p: &Pair, args: &[&str]) -> std::process::Output {
    env.cmd(args)
        .env("TRACKER_BACKUP_URL", &p.backup.url)
        .env("TRACKER_LIVE_URL", &p.live.url)
        .output()
        .unwrap()
}

/// Instance key → attempts, for the `copy` step.
fn copy_attempts(report: &serde_json::Value) -> BTreeMap<String, u64> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "tracker.copy")
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["attempts"].as_u64().unwrap()))
        .collect()
}

fn restore_deleted_tenants(engine: Engine, test: &str) {
    let Some(p) = pair(engine, test) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::sqlite();
    let ids = rt.block_on(p.backup.site_ids());
    assert_eq!(ids.len(), SITES);
    let deleted: Vec<String> = DELETED.iter().map(|n| ids[n - 1].clone()).collect();
    let backup = rt.block_on(p.backup.digests(TABLES));
    let audit_before = rt.block_on(p.live.digests(&["audit_log"]));
    rt.block_on(p.live.delete_tenants(&deleted));
    assert_ne!(rt.block_on(p.live.digests(TABLES)), backup, "the tenants are gone from live");
    assert_eq!(rt.block_on(p.live.count_sites(&deleted)), 0);

    let targets =
        format!("id,kind\n{}", deleted.iter().map(|d| format!("{d},site\n")).collect::<String>());
    let t = env.write("targets.csv", &targets, false);
    let w = repo("examples/tenant-restore.toml");
    let (w, t) = (w.to_str().unwrap(), t.to_str().unwrap());

    // `plan` shows the discovered slice, read from the catalog.
    let o = rewind(&env, &p, &["plan", "--workflow", w, "--targets", t, "--restore-point", RP]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(plan.contains("planned read-only from `backup`"), "{plan}");
    for table in TABLES {
        assert!(plan.contains(table), "{table} in {plan}");
    }
    assert!(!plan.contains("audit_log"), "the audit log is not tenant data: {plan}");

    let o = rewind(&env, &p, &run_args(w, t));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert_eq!(rt.block_on(p.live.digests(TABLES)), backup, "live equals the backup again");
    assert_eq!(rt.block_on(p.live.digests(&["audit_log"])), audit_before, "no audit entry");
    let report = env.report(&run);
    assert!(copy_attempts(&report).values().all(|a| *a == 1), "{report}");

    // The same run again: the same rows.
    let o = rewind(&env, &p, &run_args(w, t));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(rt.block_on(p.live.digests(TABLES)), backup);
    assert_eq!(rt.block_on(p.live.digests(&["audit_log"])), audit_before);

    // The copies' transactions commit, then rewind is killed before it records them: `resume`
    // copies again, over rows already restored.
    rt.block_on(p.live.delete_tenants(&deleted));
    let lock = TableLock::take(&p.live.url, "sites");
    let mut child = env
        .cmd(&run_args(w, t))
        .env("TRACKER_BACKUP_URL", &p.backup.url)
        .env("TRACKER_LIVE_URL", &p.live.url)
        .stdout(std::fs::File::create(env.path("run.out")).unwrap())
        .stderr(std::fs::File::create(env.path("run.err")).unwrap())
        .spawn()
        .unwrap();
    let run = env.run_id_of("run");
    wait_for("three copies running", || {
        let r = env.report(&run);
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["step"] == "tracker.copy" && s["state"] == "running")
            .count()
            == 3
    });
    // Hold rewind's checkpoint store so that no outcome can be recorded, then let the copies
    // through.
    let store = StoreHold::take(&env);
    lock.release();
    wait_for("the copies committed", || rt.block_on(p.live.count_sites(&deleted)) == 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    store.release();
    let o = rewind(&env, &p, &["resume", &run]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let attempts = copy_attempts(&env.report(&run));
    assert_eq!(attempts.len(), 3);
    assert!(attempts.values().all(|a| *a == 2), "each copy ran again: {attempts:?}");
    assert_eq!(rt.block_on(p.live.digests(TABLES)), backup, "the same rows after the resume");
    assert_eq!(rt.block_on(p.live.digests(&["audit_log"])), audit_before);

    // New rows take keys past the restored ones.
    rt.block_on(p.live.insert_new_rows(&deleted[0]));
}

#[test]
fn deleted_tenants_come_back_on_postgres() {
    restore_deleted_tenants(Engine::Postgres, "deleted_tenants_come_back_on_postgres");
}

#[test]
fn deleted_tenants_come_back_on_mariadb() {
    restore_deleted_tenants(Engine::Mariadb, "deleted_tenants_come_back_on_mariadb");
}

/// A slice that cannot be planned from a catalog this machine reads (a typo in `root`) is
/// refused before the run exists: exit 2, naming the step, its line and the table; no
/// checkpoint store, nothing copied. (SQLite files: no server needed.)
#[test]
fn a_root_the_catalog_does_not_have_is_refused_before_the_run() {
    let env = Env::sqlite();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for name in ["backup.db", "live.db"] {
        let url = format!("sqlite://{}?mode=rwc", env.path(name).display());
        rt.block_on(async {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            c.execute(
                "CREATE TABLE sites (id TEXT PRIMARY KEY); \
                 CREATE TABLE projects (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites (id))",
            )
            .await
            .unwrap();
            c.close().await.unwrap();
        });
    }
    let text = std::fs::read_to_string(repo("examples/tenant-restore.toml"))
        .unwrap()
        .replace("root = \"sites\", tenant", "root = \"sitez\", tenant");
    let w = env.write("typo.toml", &text, false);
    let t = env.write("targets.csv", "id,kind\n00000000-0000-4000-8000-00000000000a,site\n", false);
    let (w, t) = (w.to_str().unwrap(), t.to_str().unwrap());
    let o = env
        .cmd(&["run", "--workflow", w, "--targets", t, "--restore-point", RP])
        .env("TRACKER_BACKUP_URL", format!("sqlite://{}", env.path("backup.db").display()))
        .env("TRACKER_LIVE_URL", format!("sqlite://{}", env.path("live.db").display()))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    // The step's line is its `[[steps]]` header's, the line before its id.
    let line = text.lines().position(|l| l.contains("id = \"tracker.copy\"")).unwrap();
    let err = stderr(&o);
    assert!(
        err.contains(&format!("step `tracker.copy` (line {line})"))
            && err.contains("the root table `sitez` does not exist")
            && err.contains("nothing was run"),
        "{err}"
    );
    assert!(!env.path("rewind.db").exists(), "no run was created");
}
