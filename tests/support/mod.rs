//! Shared helpers for tests that run the `rewind` binary against a fresh checkpoint store.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rewind_testkit::PgSchema;

pub mod clusters;

/// A test's own folder and checkpoint store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: String,
    pg: Option<PgSchema>,
}

impl Env {
    /// A SQLite store in a fresh folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("rewind.db").display());
        Self { dir, db, pg: None }
    }

    /// A fresh PostgreSQL schema, when `REWIND_TEST_POSTGRES` is set.
    pub fn postgres(test: &str) -> Option<Self> {
        let base = rewind_testkit::postgres_url(test)?;
        let schema = tokio::runtime::Runtime::new().unwrap().block_on(PgSchema::create(&base));
        Some(Self { dir: tempfile::tempdir().unwrap(), db: schema.url.clone(), pg: Some(schema) })
    }

    /// A fresh folder using the store at `db` (which the caller made and removes: a server it
    /// started, say).
    pub fn with_db(db: &str) -> Self {
        Self { dir: tempfile::tempdir().unwrap(), db: db.to_owned(), pg: None }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the test folder (executable when `exec`).
    pub fn write(&self, name: &str, text: &str, exec: bool) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        if exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        p
    }

    /// Commands run with `REWIND_NOW` = [`NOW`], a day after [`RP`]: the restore-point
    /// bounds judge the tests' 2022 restore points against the sandbox's 2022, not today.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rewind"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("REWIND_DB", &self.db)
            .env("REWIND_NOW", NOW)
            .env_remove("REWIND_DB_BUSY_TIMEOUT");
        c
    }

    pub fn rewind(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Starts `rewind` in the background, stdout and stderr to files in the test folder.
    pub fn spawn(&self, args: &[&str], name: &str) -> Child {
        let out = std::fs::File::create(self.path(&format!("{name}.out"))).unwrap();
        let err = std::fs::File::create(self.path(&format!("{name}.err"))).unwrap();
        self.cmd(args).stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().unwrap()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The run id a background `rewind run` printed first.
    pub fn run_id_of(&self, name: &str) -> String {
        wait_for("the run id", || {
            self.read(&format!("{name}.out")).lines().next().is_some_and(|l| l.starts_with("run "))
        });
        self.read(&format!("{name}.out")).lines().next().unwrap()[4..].to_owned()
    }

    /// `status RUN --json`
    pub fn status(&self, run: &str) -> serde_json::Value {
        let o = self.rewind(&["status", run, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `report RUN --format json`
    pub fn report(&self, run: &str) -> serde_json::Value {
        let o = self.rewind(&["report", run, "--format", "json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The ledger the step script writes: one entry per line.
    pub fn ledger(&self) -> Vec<Entry> {
        self.read("ledger").lines().filter_map(Entry::parse).collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(schema) = self.pg.take()
            && let Ok(rt) = tokio::runtime::Runtime::new()
        {
            rt.block_on(schema.drop_schema());
        }
    }
}

/// One ledger line: `start|end INSTANCE ATTEMPT IDEMPOTENCY_KEY [PID]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub what: String,
    pub instance: String,
    pub attempt: u32,
    pub key: String,
    pub pid: Option<i32>,
}

impl Entry {
    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split_whitespace();
        Some(Self {
            what: f.next()?.to_owned(),
            instance: f.next()?.to_owned(),
            attempt: f.next()?.parse().ok()?,
            key: f.next()?.to_owned(),
            pid: f.next().and_then(|p| p.parse().ok()),
        })
    }
}

/// The step script of the run tests. `step.sh LEDGER MODE`: logs its start (with its pid, which
/// is also its process group) and end to LEDGER; MODE `gate` waits for the file `$GATE`, `fail`
/// fails unless `$FIXED` exists, `flaky` fails its first two attempts, `early` reports another
/// restore point, `hang` never ends.
pub const STEP_SH: &str = r#"#!/bin/sh
ledger="$1"; mode="${2:-ok}"
echo "start $REWIND_INSTANCE $REWIND_ATTEMPT $REWIND_IDEMPOTENCY_KEY $$" >> "$ledger"
case "$mode" in
  gate) while [ ! -e "$GATE" ]; do sleep 0.02; done ;;
  hang) while true; do sleep 0.05; done ;;
  fail) if [ ! -e "$FIXED" ]; then echo "restoring $REWIND_TARGET_ID" >&2; echo "boom: shard is read-only" >&2; exit 7; fi ;;
  flaky) n=$(grep -c "^start $REWIND_INSTANCE " "$ledger"); if [ "$n" -lt 3 ]; then echo "flaky attempt $n" >&2; exit 1; fi ;;
  early) echo "end $REWIND_INSTANCE $REWIND_ATTEMPT $REWIND_IDEMPOTENCY_KEY" >> "$ledger"; echo '{"restore_point":"2022-04-05T07:28:00Z"}'; exit 0 ;;
esac
echo "end $REWIND_INSTANCE $REWIND_ATTEMPT $REWIND_IDEMPOTENCY_KEY" >> "$ledger"
printf '{"restore_point":"%s","pid":%s}\n' "$REWIND_RESTORE_POINT" "$$"
"#;

/// Sites `00000000-0000-4000-8000-00000000000N`, N = 1.., with attribute `mode`.
pub fn targets_csv(modes: &[&str]) -> String {
    let mut s = String::from("id,kind,mode\n");
    for (i, m) in modes.iter().enumerate() {
        s.push_str(&format!("{},site,{m}\n", site(i + 1)));
    }
    s
}

pub fn site(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

pub const RP: &str = "2022-04-05T07:33:00Z";

/// The clock restore-point bounds are judged against in tests (`REWIND_NOW`): a day after [`RP`].
pub const NOW: &str = "2022-04-06T07:33:00Z";

/// Polls `cond` every 10 ms for up to 20 s; panics naming `what` if it never holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a background `rewind` to exit, up to 30 s.
pub fn wait_exit(child: &mut Child) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "rewind did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Kills a process group (orphaned step processes after a `kill -9` of rewind).
pub fn kill_group(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

pub fn is_alive(pid: i32) -> bool {
    let stat = format!("/proc/{pid}/stat");
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A write lock on one table of a store, held on a thread of its own from [`TableLock::take`]
/// (which returns once it is held) to [`TableLock::release`]: a copy into the store waits for
/// it. The engine is the URL's: SQLite `BEGIN IMMEDIATE` (the whole file), PostgreSQL `LOCK
/// TABLE … IN ACCESS EXCLUSIVE MODE`, MariaDB/MySQL `LOCK TABLES … WRITE`.
pub struct TableLock {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl TableLock {
    pub fn take(url: &str, table: &str) -> Self {
        use sqlx::{Connection, Executor};
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let (url, table) = (url.to_owned(), table.to_owned());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                if url.starts_with("sqlite:") {
                    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                    c.execute("BEGIN IMMEDIATE").await.unwrap();
                    held.send(()).unwrap();
                    released.recv().unwrap();
                    c.execute("ROLLBACK").await.unwrap();
                } else if url.starts_with("postgres") {
                    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                    let lock = format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE");
                    c.execute(sqlx::AssertSqlSafe(lock)).await.unwrap();
                    held.send(()).unwrap();
                    released.recv().unwrap();
                    c.execute("COMMIT").await.unwrap();
                } else {
                    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                    let lock = format!("LOCK TABLES {table} WRITE");
                    c.execute(sqlx::AssertSqlSafe(lock)).await.unwrap();
                    held.send(()).unwrap();
                    released.recv().unwrap();
                    c.execute("UNLOCK TABLES").await.unwrap();
                }
            });
        });
        is_held.recv().unwrap();
        Self { release, thread }
    }

    /// Lets the waiting writers through; returns once the lock is gone.
    pub fn release(self) {
        self.release.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// The test folder's SQLite checkpoint store held by `BEGIN EXCLUSIVE` from [`StoreHold::take`]
/// to [`StoreHold::release`]: a running rewind can record nothing meanwhile (an attempt that
/// ends is not recorded as ended).
pub struct StoreHold {
    rt: tokio::runtime::Runtime,
    conn: sqlx::SqliteConnection,
}

impl StoreHold {
    pub fn take(env: &Env) -> Self {
        use sqlx::{Connection, Executor};
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("sqlite://{}", env.path("rewind.db").display());
        let conn = rt.block_on(async {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            c.execute("BEGIN EXCLUSIVE").await.unwrap();
            c
        });
        Self { rt, conn }
    }

    pub fn release(self) {
        use sqlx::{Connection, Executor};
        let Self { rt, mut conn } = self;
        rt.block_on(async move {
            conn.execute("ROLLBACK").await.unwrap();
            conn.close().await.unwrap();
        });
    }
}
