//! A PostgreSQL cluster as users run one: continuously archived, either by an
//! `archive_command` copying each WAL segment into a directory (with `pg_basebackup` for base
//! backups) or by pgBackRest (`archive-push`, `backup --type=full`). rewind's sandbox and tests
//! restore from it.
//!
//! The cluster is made with this machine's `initdb` and run with `pg_ctl`, as `user` (servers
//! refuse root), on `port` bound to 127.0.0.1 with its sockets under `dir/run`. Dropping it stops
//! its server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;
use crate::pg::{bindir, conf_quote, sh_quote};
use crate::proc::{RunAs, Tool, mkdir_for};

const TOOL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long `switch_wal_and_wait` waits for the archiver.
const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

/// How the cluster archives its WAL.
#[derive(Clone, Debug)]
pub enum Archiving {
    /// `archive_command` copies each segment into `wal_dir` (never over an existing file).
    Archive {
        /// The WAL archive directory.
        wal_dir: PathBuf,
    },
    /// pgBackRest's `archive-push` into the repository at `repo_dir`.
    Pgbackrest {
        /// The repository (`repo1-path`).
        repo_dir: PathBuf,
        /// The stanza name.
        stanza: String,
    },
}

/// The format of a `pg_basebackup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupFormat {
    /// A copy of the data directory (`-Fp`).
    Plain,
    /// `base.tar.gz` and `pg_wal.tar.gz` (`-Ft -z`).
    TarGz,
}

/// A running (or stopped) source cluster.
#[derive(Debug)]
pub struct SourceCluster {
    dir: PathBuf,
    data_dir: PathBuf,
    run_dir: PathBuf,
    log: PathBuf,
    port: u16,
    user: RunAs,
    bindir: PathBuf,
    archiving: Archiving,
}

impl SourceCluster {
    /// Makes a cluster in `dir/data` (initdb), configured to archive, and starts it. `user`:
    /// the OS user it runs as (`None`: `postgres` when running as root, else the current user);
    /// its superuser role has the same name.
    pub async fn init(
        dir: &Path,
        user: Option<&str>,
        port: u16,
        archiving: Archiving,
    ) -> Result<Self, Error> {
        let user = RunAs::resolve(user, "postgres")?;
        let bindir = bindir(None);
        let c = Self {
            dir: dir.to_path_buf(),
            data_dir: dir.join("data"),
            run_dir: dir.join("run"),
            log: dir.join("server.log"),
            port,
            user,
            bindir,
            archiving,
        };
        mkdir_for(&c.dir, &c.user)?;
        mkdir_for(&c.run_dir, &c.user)?;
        c.tool("initdb")
            .arg("-D")
            .arg(&c.data_dir)
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .run(TOOL_TIMEOUT)
            .await?;
        let archive_command = match &c.archiving {
            Archiving::Archive { wal_dir } => {
                mkdir_for(wal_dir, &c.user)?;
                let d = sh_quote(&wal_dir.to_string_lossy().replace('%', "%%"));
                format!("test ! -f {d}/%f && cp \"%p\" {d}/%f")
            }
            Archiving::Pgbackrest { repo_dir, stanza } => {
                mkdir_for(repo_dir, &c.user)?;
                let conf = c.pgbackrest_conf();
                let body = format!(
                    "[global]\nrepo1-path={}\nlog-path={}\nlock-path={}\nlog-level-console=warn\nlog-level-file=info\nstart-fast=y\ncompress-type=lz4\n\n[{stanza}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
                    repo_dir.display(),
                    c.dir.join("pgbackrest-log").display(),
                    c.dir.join("pgbackrest-lock").display(),
                    c.data_dir.display(),
                    c.port,
                    c.run_dir.display()
                );
                std::fs::write(&conf, body)
                    .map_err(|e| Error::io(format!("cannot write {}", conf.display()), e))?;
                c.user.own(&conf)?;
                format!(
                    "pgbackrest --config={} --stanza={stanza} archive-push \"%p\"",
                    sh_quote(&conf.to_string_lossy().replace('%', "%%"))
                )
            }
        };
        let settings = format!(
            "\n# Added by rewind's source cluster.\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = {}\nwal_level = replica\narchive_mode = on\narchive_command = {}\nmax_wal_senders = 4\ntimezone = 'UTC'\nlog_timezone = 'UTC'\nlc_messages = 'C'\n# Each commit's exact time, for tests that recover between two commits.\ntrack_commit_timestamp = on\n",
            c.port,
            conf_quote(&c.run_dir.to_string_lossy()),
            conf_quote(&archive_command),
        );
        let conf = c.data_dir.join("postgresql.conf");
        let mut body = std::fs::read_to_string(&conf)
            .map_err(|e| Error::io(format!("cannot read {}", conf.display()), e))?;
        body.push_str(&settings);
        std::fs::write(&conf, body)
            .map_err(|e| Error::io(format!("cannot write {}", conf.display()), e))?;
        c.start().await?;
        if let Archiving::Pgbackrest { .. } = &c.archiving {
            c.pgbackrest("stanza-create").run(TOOL_TIMEOUT).await?;
        }
        Ok(c)
    }

    fn tool(&self, program: &str) -> Tool {
        Tool::new(self.bindir.join(program)).user(&self.user).cwd(&self.dir)
    }

    fn pgbackrest(&self, command: &str) -> Tool {
        let Archiving::Pgbackrest { stanza, .. } = &self.archiving else {
            return Tool::new("false");
        };
        Tool::new("pgbackrest")
            .user(&self.user)
            .cwd(&self.dir)
            .arg(format!("--config={}", self.pgbackrest_conf().display()))
            .arg(format!("--stanza={stanza}"))
            .arg(command)
    }

    /// The pgBackRest configuration (pgBackRest archiving).
    pub fn pgbackrest_conf(&self) -> PathBuf {
        self.dir.join("pgbackrest.conf")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How it archives.
    pub fn archiving(&self) -> &Archiving {
        &self.archiving
    }

    /// A connection URL to database `db`, as its superuser, without a password.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", self.user.name, self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(&self) -> Result<(), Error> {
        self.tool("pg_ctl")
            .arg("start")
            .args(["-w", "-t", "300", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .run(TOOL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub async fn stop(&self) -> Result<(), Error> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        self.tool("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-t", "300", "-D"])
            .arg(&self.data_dir)
            .run(TOOL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Stops the server without a runtime (for `Drop`).
    pub fn stop_sync(&self) {
        if !self.data_dir.join("postmaster.pid").exists() {
            return;
        }
        let pg_ctl = self.bindir.join("pg_ctl");
        let mut cmd = if self.user.switch {
            let mut c = std::process::Command::new("runuser");
            c.arg("-u").arg(&self.user.name).arg("--").arg(pg_ctl);
            c
        } else {
            std::process::Command::new(pg_ctl)
        };
        cmd.current_dir(&self.dir)
            .args(["stop", "-m", "fast", "-w", "-t", "120", "-D"])
            .arg(&self.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let _ = cmd.status();
    }

    /// Runs `sql` in database `db` through psql; returns what it printed (unaligned, tuples
    /// only), trimmed.
    pub async fn sql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let out = self
            .tool("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.run_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.user.name)
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .run(TOOL_TIMEOUT)
            .await?;
        Ok(out.stdout.trim().to_string())
    }

    /// A `pg_basebackup` into `to` (created, handed to the server's user), WAL streamed
    /// alongside, checkpoint fast.
    pub async fn base_backup(&self, to: &Path, format: BackupFormat) -> Result<(), Error> {
        mkdir_for(to, &self.user)?;
        let mut t = self
            .tool("pg_basebackup")
            .arg("-D")
            .arg(to)
            .arg("-h")
            .arg(&self.run_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.user.name)
            .args(["-c", "fast", "-X", "stream", "--no-sync"]);
        if format == BackupFormat::TarGz {
            t = t.args(["-F", "t", "-z"]);
        }
        t.run(TOOL_TIMEOUT).await.map(|_| ())
    }

    /// A full pgBackRest backup (pgBackRest archiving); returns its label.
    pub async fn pgbackrest_backup(&self) -> Result<String, Error> {
        let Archiving::Pgbackrest { stanza, .. } = &self.archiving else {
            return Err(Error::Permanent(
                "this source cluster does not archive with pgBackRest".into(),
            ));
        };
        self.pgbackrest("backup").arg("--type=full").run(TOOL_TIMEOUT).await?;
        let out = self.pgbackrest("info").arg("--output=json").run(TOOL_TIMEOUT).await?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| Error::Permanent(format!("pgbackrest info: not JSON: {e}")))?;
        v.as_array()
            .and_then(|a| a.iter().find(|s| s["name"].as_str() == Some(stanza)))
            .and_then(|s| s["backup"].as_array())
            .and_then(|b| b.last())
            .and_then(|b| b["label"].as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Permanent(format!("pgbackrest info lists no backup of `{stanza}`"))
            })
    }

    /// Makes everything written so far recoverable to: a marker commit (a time target only
    /// fires on a commit after it), `pg_switch_wal()`, then waits until the archiver has archived
    /// that segment (`pg_stat_archiver.last_archived_wal`).
    pub async fn switch_wal_and_wait(&self) -> Result<(), Error> {
        self.sql("postgres", "SELECT txid_current()").await?;
        let seg = self.sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())").await?;
        let began = Instant::now();
        loop {
            let row = self
                .sql(
                    "postgres",
                    "SELECT coalesce(last_archived_wal, '') || '|' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                )
                .await?;
            let (archived, failed) = row.split_once('|').unwrap_or((&row, ""));
            let archived = archived.get(..24).unwrap_or("");
            if !archived.is_empty() && archived >= seg.as_str() {
                return Ok(());
            }
            if began.elapsed() > ARCHIVE_WAIT {
                return Err(Error::Transient(format!(
                    "WAL segment {seg} was not archived within {}s (last archived: `{archived}`, last failed: `{failed}`; see {})",
                    ARCHIVE_WAIT.as_secs(),
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SourceCluster {
    fn drop(&mut self) {
        self.stop_sync();
    }
}
