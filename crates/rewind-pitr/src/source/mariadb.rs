//! A MariaDB source server with binlogs, started the way users start one: the sandbox's identity
//! stores, the tests and the benchmark write to it, back it up with `mariadb-backup` and recover
//! from it.
//!
//! Layout under its directory: `data/` (the data directory), `binlog/` (the binlogs: the
//! archive a recovery reads), `run/` (socket, pid file), `tmp/` (its temporary files),
//! `server.log`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Error;
use crate::mariadb::Launch;
use crate::proc::{self, RunAs, Tool};

/// The binlog files' base name (`binlog.000001`, …).
pub const BINLOG_BASE: &str = "binlog";

/// A running MariaDB server with binlogging on; stopped when dropped.
#[derive(Debug)]
pub struct SourceServer {
    dir: PathBuf,
    user: RunAs,
    port: u16,
    pid: Option<u32>,
}

impl SourceServer {
    /// Creates a server under `dir` (`mariadb-install-db --no-defaults
    /// --auth-root-authentication-method=normal`: root@localhost has an empty password) run as
    /// `user` (default: `mysql` when root, else the current user), and starts it on
    /// 127.0.0.1:`port` with `--log-bin=dir/binlog/binlog --server-id=1 --binlog-format=ROW`.
    /// `dir` must not exist or be empty; its parents must be reachable by the user.
    pub async fn install(dir: &Path, user: Option<&str>, port: u16) -> Result<Self, Error> {
        let user = RunAs::resolve(user, "mysql")?;
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Permanent(format!(
                "{} is not empty: a source server is installed into a new directory",
                dir.display()
            )));
        }
        let me = Self { dir: dir.to_path_buf(), user, port, pid: None };
        for d in [me.data_dir(), me.binlog_dir(), me.dir.join("run"), me.dir.join("tmp")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        }
        me.user.own(&me.dir)?;
        Tool::new("mariadb-install-db")
            .args([
                "--no-defaults".to_string(),
                "--auth-root-authentication-method=normal".into(),
                format!("--datadir={}", me.data_dir().display()),
                format!("--user={}", me.user.name),
                "--skip-test-db".into(),
                // Passed on to the bootstrap server: its temporary tables in a private directory.
                format!("--tmpdir={}", me.dir.join("tmp").display()),
            ])
            .run(Duration::from_secs(300))
            .await?;
        let mut me = me;
        me.start().await?;
        Ok(me)
    }

    /// Starts it (again) on its port.
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.pid.is_some() {
            return Ok(());
        }
        let data_dir = self.data_dir();
        let log = self.log();
        let launch = Launch {
            data_dir: &data_dir,
            socket: self.socket(),
            pid_file: self.dir.join("run/mariadbd.pid"),
            log: &log,
            user: &self.user,
            args: vec![
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".into(),
                format!("--tmpdir={}", self.dir.join("tmp").display()),
                format!("--log-bin={}", self.binlog_dir().join(BINLOG_BASE).display()),
                "--server-id=1".into(),
                "--binlog-format=ROW".into(),
            ],
        };
        self.pid = Some(launch.start(Some(self.port)).await?.keep());
        Ok(())
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where its binlogs are (what a recovery reads).
    pub fn binlog_dir(&self) -> PathBuf {
        self.dir.join("binlog")
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/mariadbd.sock")
    }

    /// Its log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL to database `db` as root (no password).
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with the `mariadb` client as root over its socket; returns what it printed
    /// (tab-separated, no column names).
    pub async fn sql(&self, sql: &str) -> Result<String, Error> {
        let out = Tool::new("mariadb")
            .args([
                "--no-defaults".to_string(),
                format!("--socket={}", self.socket().display()),
                "--user=root".into(),
                "--batch".into(),
                "--skip-column-names".into(),
                "--execute".into(),
                sql.into(),
            ])
            .run(Duration::from_secs(3600))
            .await?;
        Ok(out.stdout)
    }

    /// `mariadb-backup --backup --target-dir=to` (a new directory); returns its output.
    pub async fn base_backup(&self, to: &Path) -> Result<String, Error> {
        let out = Tool::new("mariadb-backup")
            .args([
                "--backup".to_string(),
                format!("--target-dir={}", to.display()),
                format!("--socket={}", self.socket().display()),
                "--user=root".into(),
            ])
            .run(Duration::from_secs(24 * 3600))
            .await?;
        Ok(out.stderr)
    }

    /// `FLUSH BINARY LOGS`: closes the current binlog and starts the next.
    pub async fn flush_logs(&self) -> Result<(), Error> {
        self.sql("FLUSH BINARY LOGS").await.map(|_| ())
    }

    /// Stops the server (SIGTERM, SIGKILL after a minute) and waits until it is gone.
    pub async fn stop(&mut self) -> Result<(), Error> {
        if let Some(pid) = self.pid.take() {
            proc::stop_server(pid, &self.data_dir(), Signal::SIGTERM, Duration::from_secs(60))
                .await?;
        }
        Ok(())
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let data_dir = self.data_dir();
        let p = Pid::from_raw(pid as i32);
        let _ = kill(p, Signal::SIGTERM);
        for i in 0..1200 {
            if !proc::server_alive(pid, &data_dir) {
                return;
            }
            if i == 600 {
                let _ = kill(p, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
