//! The sandbox on real database servers (`init --clusters`): PostgreSQL clusters from this
//! machine's `initdb` / `pg_ctl` (one per product database shard, `tracker-sNN` and `wiki-sNN`,
//! and `platform` for the catalog and contacts) and one MariaDB server (`identity`) for the
//! identity stores, all under `DIR/servers/`, bound to 127.0.0.1 on free ports, running as
//! `postgres` / `mysql` when the sandbox runs as root. Each is continuously archived under
//! `DIR/archive/`: the tracker shards by pgBackRest (stanza = the server's name), the wiki shards
//! and the platform by an `archive_command` into a WAL directory plus a `pg_basebackup`, MariaDB
//! by `mariadb-backup` plus its binlogs, written straight into the archive. (One method per kind
//! of shard, so that a workflow restores each with one group-scoped `pitr` step.)
//!
//! A store on a server is a database named after the store (`tracker_s01`, `identity_us_east`);
//! its tables are the same as everywhere else (PostgreSQL schema `public`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_pitr::pg::{conf_quote, sh_quote};
use rewind_pitr::proc::{RunAs, Tool};
use serde::{Deserialize, Serialize};

use crate::error::{DbContext, Error, IoContext, Result};
use crate::schema::{Store, StoreKind};
use crate::time::SimTime;

/// How long a server may take to start, stop, back up.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// A server's engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerEngine {
    /// A PostgreSQL cluster.
    Postgres,
    /// A MariaDB server.
    Mariadb,
}

/// How a server is backed up: the keys of a `pitr` step restoring it (rewind-pitr's own
/// description of a backup, so the sandbox records exactly what a `pitr` step takes).
pub type ServerBackup = rewind_pitr::Source;

/// One database server the sandbox started (`DIR/sandbox.json` → `backend.servers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// `platform`, `tracker-s01`, `wiki-s01`, …, `identity`.
    pub name: String,
    /// Its engine.
    pub engine: ServerEngine,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its data directory (absolute).
    pub data_dir: PathBuf,
    /// The OS user it runs as.
    pub user: String,
    /// The stores it holds, one database each.
    pub stores: Vec<String>,
    /// How it is backed up.
    pub backup: ServerBackup,
}

impl Server {
    /// `DIR/servers/<name>/` (absolute).
    pub fn home(&self) -> PathBuf {
        self.data_dir.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn run_dir(&self) -> PathBuf {
        self.home().join("run")
    }

    fn log(&self) -> PathBuf {
        self.home().join("server.log")
    }

    fn socket(&self) -> PathBuf {
        self.run_dir().join("mysqld.sock")
    }

    /// The connection URL of one of its databases (no password: trust / empty).
    pub fn url(&self, database: &str) -> String {
        match self.engine {
            ServerEngine::Postgres => {
                format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
            }
            ServerEngine::Mariadb => format!("mysql://root@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// The database of `store` on it: the store's name (`tracker-s01`, `identity-us-east`),
    /// so that a workflow names it from a target's attributes (`identity-{{target.attr.region}}`).
    pub fn database(store: &Store) -> String {
        store.name().to_owned()
    }

    fn user(&self) -> Result<RunAs> {
        RunAs::resolve(Some(&self.user), &self.user).map_err(|e| Error::refused(e.to_string()))
    }

    fn pg_tool(&self, bindir: &Path, program: &str) -> Result<Tool> {
        Ok(Tool::new(bindir.join(program)).user(&self.user()?))
    }
}

/// The servers of a sandbox with `shards` product shards, under `dir` (absolute).
pub fn plan(dir: &Path, shards: u32, root: bool) -> Vec<Server> {
    let archive = dir.join("archive");
    let pg_user = if root { "postgres" } else { "" };
    let my_user = if root { "mysql" } else { "" };
    let me = current_user();
    let pick = |u: &str| if u.is_empty() { me.clone() } else { u.to_owned() };
    let pg = |name: &str, stores: Vec<String>, pgbackrest: bool| Server {
        name: name.to_owned(),
        engine: ServerEngine::Postgres,
        port: 0,
        data_dir: dir.join("servers").join(name).join("data"),
        user: pick(pg_user),
        stores,
        backup: if pgbackrest {
            ServerBackup::Pgbackrest {
                stanza: name.to_owned(),
                config: archive.join("pgbackrest").join("pgbackrest.conf"),
            }
        } else {
            ServerBackup::Archive {
                base_backup: archive.join(name).join("base"),
                wal_archive: archive.join(name).join("wal"),
            }
        },
    };
    let mut out = vec![pg("platform", vec!["catalog".into(), "contacts".into()], false)];
    for i in 1..=shards {
        let tracker = format!("tracker-s{i:02}");
        let wiki = format!("wiki-s{i:02}");
        out.push(pg(&tracker, vec![tracker.clone()], true));
        out.push(pg(&wiki, vec![wiki.clone()], false));
    }
    out.push(Server {
        name: "identity".into(),
        engine: ServerEngine::Mariadb,
        port: 0,
        data_dir: dir.join("servers").join("identity").join("data"),
        user: pick(my_user),
        stores: crate::schema::REGIONS.iter().map(|r| format!("identity-{r}")).collect(),
        backup: ServerBackup::Binlog {
            base_backup: archive.join("identity").join("full"),
            binlogs: archive.join("identity").join("binlog"),
        },
    });
    out
}

fn current_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "postgres".into())
}

/// True for the stores a clusters sandbox keeps on a server.
pub fn on_server(kind: StoreKind) -> bool {
    matches!(
        kind,
        StoreKind::Catalog
            | StoreKind::Contacts
            | StoreKind::Tracker
            | StoreKind::Wiki
            | StoreKind::Identity
    )
}

/// This machine's PostgreSQL programs: `REWIND_PG_BINDIR`, `pg_config --bindir`, or the Debian
/// path of the newest installed major version.
pub fn pg_bindir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("REWIND_PG_BINDIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").is_file() {
            return Ok(d);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect())
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").is_file());
    found.sort();
    found.pop().ok_or_else(|| {
        Error::refused(
            "PostgreSQL's initdb is not installed (looked in REWIND_PG_BINDIR, `pg_config \
             --bindir`, /usr/lib/postgresql/*/bin): apt-get install -y postgresql",
        )
    })
}

/// Checks every program a clusters sandbox needs is installed, naming what is missing.
pub fn check_tools() -> Result<PathBuf> {
    let bindir = pg_bindir()?;
    let mut missing = Vec::new();
    for p in ["initdb", "pg_ctl", "pg_basebackup"] {
        if !bindir.join(p).is_file() {
            missing.push(bindir.join(p).display().to_string());
        }
    }
    for p in ["pgbackrest", "mariadb-install-db", "mariadb-backup", "mariadb", "runuser"] {
        if which(p).is_none() {
            missing.push(p.to_owned());
        }
    }
    if which("mariadbd").is_none() && !Path::new("/usr/sbin/mariadbd").is_file() {
        missing.push("mariadbd".to_owned());
    }
    if missing.is_empty() {
        Ok(bindir)
    } else {
        Err(Error::refused(format!(
            "--clusters needs {}: apt-get install -y postgresql pgbackrest mariadb-server \
             mariadb-backup",
            missing.join(", ")
        )))
    }
}

fn which(p: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|f| f.is_file())
}

fn mariadbd() -> PathBuf {
    which("mariadbd").unwrap_or_else(|| PathBuf::from("/usr/sbin/mariadbd"))
}

fn tool_err(e: rewind_pitr::Error) -> Error {
    Error::Server(e.to_string())
}

/// Every directory from `/` down to `dir` must be searchable by others (the servers run as
/// another user); refuses naming the first that is not.
pub fn check_reachable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut p = PathBuf::new();
    for c in dir.components() {
        p.push(c);
        if let Ok(meta) = std::fs::metadata(&p)
            && meta.permissions().mode() & 0o001 == 0
        {
            return Err(Error::refused(format!(
                "`{}` is not searchable by other users (mode {:o}): the database servers run as \
                 `postgres` / `mysql` and must reach the sandbox; chmod o+x it or choose another \
                 directory",
                p.display(),
                meta.permissions().mode() & 0o777
            )));
        }
    }
    Ok(())
}

/// Creates `path` for the server's user (readable by others: the scratch instances, other users,
/// read the backups; PostgreSQL tightens its data directory itself).
fn mkdir_for(path: &Path, user: &RunAs) -> Result<()> {
    rewind_pitr::proc::mkdir_for(path, user).map_err(tool_err)
}

fn mkdir_shared(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path).at(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).at(path)
}

/// Creates and starts every server (ports chosen here), with archiving on. On failure the
/// servers already started are left running: the caller stops them ([`stop_all`]).
pub async fn create_all(dir: &Path, servers: &mut [Server]) -> Result<()> {
    let bindir = check_tools()?;
    mkdir_shared(&dir.join("servers"))?;
    mkdir_shared(&dir.join("archive"))?;
    // One pgBackRest configuration for every stanza.
    let mut conf = String::new();
    // Each server's port is chosen right before it binds it (and again if it was taken).
    for s in servers.iter_mut() {
        match s.engine {
            ServerEngine::Postgres => create_pg(&bindir, s).await,
            ServerEngine::Mariadb => create_mariadb(s).await,
        }
        .map_err(|e| Error::Server(format!("creating server `{}`: {e}", s.name)))?;
    }
    let repo = dir.join("archive").join("pgbackrest");
    for s in servers.iter() {
        if let ServerBackup::Pgbackrest { stanza, .. } = &s.backup {
            if conf.is_empty() {
                let u = s.user()?;
                mkdir_shared(&repo)?;
                for d in ["repo", "log", "lock", "spool"] {
                    mkdir_for(&repo.join(d), &u)?;
                }
                conf.push_str(&format!(
                    "[global]\nrepo1-path={}\nlog-path={}\nlock-path={}\nspool-path={}\n\
                     start-fast=y\ncompress-type=none\nlog-level-console=warn\n\
                     log-level-file=info\nrepo1-retention-full=2\n",
                    repo.join("repo").display(),
                    repo.join("log").display(),
                    repo.join("lock").display(),
                    repo.join("spool").display(),
                ));
            }
            conf.push_str(&format!(
                "\n[{stanza}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
                s.data_dir.display(),
                s.port,
                s.run_dir().display()
            ));
        }
    }
    if !conf.is_empty() {
        let path = repo.join("pgbackrest.conf");
        std::fs::write(&path, conf).at(&path)?;
    }
    for s in servers.iter() {
        if let ServerBackup::Pgbackrest { stanza, config } = &s.backup {
            Tool::new("pgbackrest")
                .user(&s.user()?)
                .arg(format!("--config={}", config.display()))
                .arg(format!("--stanza={stanza}"))
                .arg("stanza-create")
                .run(TOOL_TIMEOUT)
                .await
                .map_err(|e| Error::Server(format!("creating stanza `{stanza}`: {e}")))?;
        }
    }
    Ok(())
}

/// How many free ports a server tries before giving up (another process may take the port
/// between the choice and the bind).
const PORT_TRIES: usize = 4;

fn port_taken(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.contains("Address already in use") || text.contains("could not bind")
}

async fn create_pg(bindir: &Path, s: &mut Server) -> Result<()> {
    let u = s.user()?;
    mkdir_for(&s.home(), &u)?;
    mkdir_for(&s.run_dir(), &u)?;
    mkdir_for(&s.data_dir, &u)?;
    s.pg_tool(bindir, "initdb")?
        .args(["-D"])
        .arg(&s.data_dir)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        // 1 MB WAL segments: a sandbox writes little, and every segment is archived whole.
        .arg("--wal-segsize=1")
        .run(TOOL_TIMEOUT)
        .await
        .map_err(tool_err)?;
    let archive_command = match &s.backup {
        ServerBackup::Archive { wal_archive, .. } => {
            mkdir_for(wal_archive, &u)?;
            if let Some(p) = wal_archive.parent() {
                mkdir_for(p, &u)?;
            }
            format!(
                "test ! -f {w}/%f && cp %p {w}/%f.part && mv {w}/%f.part {w}/%f",
                w = sh_quote(&wal_archive.to_string_lossy().replace('%', "%%"))
            )
        }
        ServerBackup::Pgbackrest { stanza, config } => {
            format!(
                "pgbackrest --config={} --stanza={stanza} archive-push %p",
                sh_quote(&config.to_string_lossy().replace('%', "%%"))
            )
        }
        ServerBackup::Binlog { .. } => String::new(),
    };
    let conf = format!(
        "\n# rewind sandbox\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = {}\nwal_level = replica\narchive_mode = on\n\
         archive_command = {}\nmax_wal_senders = 4\nshared_buffers = 16MB\nfsync = off\n\
         max_connections = 40\nlog_line_prefix = '%m [%p] '\n",
        conf_quote(&s.run_dir().to_string_lossy()),
        conf_quote(&archive_command)
    );
    let path = s.data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&path).at(&path)?;
    text.push_str(&conf);
    for attempt in 1..=PORT_TRIES {
        s.port = rewind_pitr::proc::free_port().map_err(tool_err)?;
        // The last `port` line wins.
        text.push_str(&format!("port = {}\n", s.port));
        std::fs::write(&path, &text).at(&path)?;
        match start_pg(bindir, s).await {
            Err(_) if attempt < PORT_TRIES && port_taken(&s.log()) => {
                let _ = std::fs::remove_file(s.log());
            }
            r => return r,
        }
    }
    Ok(())
}

async fn start_pg(bindir: &Path, s: &Server) -> Result<()> {
    s.pg_tool(bindir, "pg_ctl")?
        .arg("-D")
        .arg(&s.data_dir)
        .arg("-l")
        .arg(s.log())
        .args(["-w", "-t", "120", "start"])
        .run(TOOL_TIMEOUT)
        .await
        .map_err(tool_err)?;
    Ok(())
}

async fn create_mariadb(s: &mut Server) -> Result<()> {
    let u = s.user()?;
    mkdir_for(&s.home(), &u)?;
    mkdir_for(&s.run_dir(), &u)?;
    mkdir_for(&s.data_dir, &u)?;
    if let ServerBackup::Binlog { binlogs, .. } = &s.backup {
        if let Some(p) = binlogs.parent() {
            mkdir_shared(p)?;
        }
        mkdir_for(binlogs, &u)?;
    }
    Tool::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", s.data_dir.display()))
        .arg(format!("--user={}", s.user))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .run(TOOL_TIMEOUT)
        .await
        .map_err(tool_err)?;
    u.own(&s.data_dir).map_err(tool_err)?;
    for attempt in 1..=PORT_TRIES {
        s.port = rewind_pitr::proc::free_port().map_err(tool_err)?;
        match start_mariadb(s).await {
            Err(_) if attempt < PORT_TRIES && port_taken(&s.log()) => {
                let _ = std::fs::remove_file(s.log());
            }
            Err(e) => return Err(e),
            Ok(()) => break,
        }
    }
    // TCP connections as root from 127.0.0.1, no password (like the PostgreSQL clusters' trust).
    Tool::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", s.socket().display()))
        .args(["-uroot", "-e"])
        .arg(
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL PRIVILEGES ON *.* TO \
             'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;",
        )
        .run(TOOL_TIMEOUT)
        .await
        .map_err(tool_err)?;
    Ok(())
}

fn binlog_base(s: &Server) -> PathBuf {
    match &s.backup {
        ServerBackup::Binlog { binlogs, .. } => binlogs.join("mariadb-bin"),
        _ => s.data_dir.join("mariadb-bin"),
    }
}

async fn start_mariadb(s: &Server) -> Result<()> {
    let mut cmd = tokio::process::Command::new(mariadbd());
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", s.data_dir.display()))
        .arg(format!("--port={}", s.port))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", s.socket().display()))
        .arg(format!("--pid-file={}", s.run_dir().join("mariadbd.pid").display()))
        .arg(format!("--log-error={}", s.log().display()))
        .arg(format!("--log-bin={}", binlog_base(s).display()))
        .args([
            "--server-id=1",
            "--binlog-format=ROW",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=60",
        ]);
    if nix::unistd::Uid::effective().is_root() {
        cmd.arg(format!("--user={}", s.user));
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::refused(format!("cannot start `{}`: {e}", mariadbd().display())))?;
    for _ in 0..600 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Server(format!(
                "mariadbd of `{}` exited ({status}) while starting; {}: {}",
                s.name,
                s.log().display(),
                log_tail(&s.log())
            )));
        }
        if s.socket().exists() && ping_mariadb(s).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Server(format!(
        "mariadbd of `{}` did not accept connections within 60s; {}: {}",
        s.name,
        s.log().display(),
        log_tail(&s.log())
    )))
}

async fn ping_mariadb(s: &Server) -> bool {
    Tool::new("mariadb-admin")
        .arg("--no-defaults")
        .arg(format!("--socket={}", s.socket().display()))
        .args(["-uroot", "ping"])
        .run(Duration::from_secs(10))
        .await
        .is_ok()
}

fn log_tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    rewind_pitr::proc::tail(&text, 1500).to_owned()
}

/// Creates the databases of the server's stores (and `rewind_tick`, where the sandbox commits
/// the marker transactions that let a restore point be reached).
pub async fn create_databases(s: &Server) -> Result<()> {
    let mut names: Vec<String> = s.stores.clone();
    names.push("rewind_tick".into());
    match s.engine {
        ServerEngine::Postgres => {
            let pool = crate::live::pg_pool(&s.url("postgres")).await?;
            for n in &names {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{n}\"")))
                    .execute(&pool)
                    .await
                    .ctx(|| format!("creating database `{n}` on `{}`", s.name))?;
            }
            pool.close().await;
            let tick = crate::live::pg_pool(&s.url("rewind_tick")).await?;
            sqlx::query("CREATE TABLE tick (n BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL)")
                .execute(&tick)
                .await
                .ctx(|| format!("creating rewind_tick.tick on `{}`", s.name))?;
            tick.close().await;
        }
        ServerEngine::Mariadb => {
            let pool = crate::live::mysql_pool(&s.url("mysql")).await?;
            for n in &names {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE `{n}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )))
                .execute(&pool)
                .await
                .ctx(|| format!("creating database `{n}` on `{}`", s.name))?;
            }
            sqlx::query(
                "CREATE TABLE rewind_tick.tick (n BIGINT AUTO_INCREMENT PRIMARY KEY, at \
                 DATETIME(6) NOT NULL)",
            )
            .execute(&pool)
            .await
            .ctx(|| format!("creating rewind_tick.tick on `{}`", s.name))?;
            pool.close().await;
        }
    }
    Ok(())
}

/// Takes every server's base backup (after the bulk history, before the real-time part).
pub async fn base_backups(servers: &[Server]) -> Result<()> {
    let bindir = pg_bindir()?;
    for s in servers {
        base_backup(&bindir, s)
            .await
            .map_err(|e| Error::Server(format!("base backup of server `{}`: {e}", s.name)))?;
    }
    Ok(())
}

async fn base_backup(bindir: &Path, s: &Server) -> Result<()> {
    let u = s.user()?;
    match &s.backup {
        ServerBackup::Archive { base_backup, .. } => {
            mkdir_for(base_backup, &u)?;
            s.pg_tool(bindir, "pg_basebackup")?
                .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", "postgres"])
                .arg("-D")
                .arg(base_backup)
                .args(["-Fp", "-X", "stream", "--checkpoint=fast", "--no-sync"])
                .run(TOOL_TIMEOUT)
                .await
                .map_err(tool_err)?;
        }
        ServerBackup::Pgbackrest { stanza, config } => {
            Tool::new("pgbackrest")
                .user(&u)
                .arg(format!("--config={}", config.display()))
                .arg(format!("--stanza={stanza}"))
                .args(["--type=full", "backup"])
                .run(TOOL_TIMEOUT)
                .await
                .map_err(tool_err)?;
        }
        ServerBackup::Binlog { base_backup, .. } => {
            Tool::new("mariadb-backup")
                .arg("--backup")
                .arg(format!("--target-dir={}", base_backup.display()))
                .arg(format!("--socket={}", s.socket().display()))
                .arg("--user=root")
                .run(TOOL_TIMEOUT)
                .await
                .map_err(tool_err)?;
            // The scratch instance runs as the server's user and reads the backup.
            u.own(base_backup).map_err(tool_err)?;
        }
    }
    Ok(())
}

/// Commits a marker transaction on every server, then makes the log after it restorable:
/// PostgreSQL switches WAL and waits until the archiver has it; MariaDB closes its binlog.
/// A time target only fires on a commit after it, so a restore point before this is reachable.
pub async fn seal(servers: &[Server]) -> Result<()> {
    for s in servers {
        match s.engine {
            ServerEngine::Postgres => {
                let pool = crate::live::pg_pool(&s.url("rewind_tick")).await?;
                let ctx = || format!("sealing the WAL of `{}`", s.name);
                // This session commits synchronously: the marker must be in the WAL switched.
                let mut conn = pool.acquire().await.ctx(ctx)?;
                sqlx::query("SET synchronous_commit = on").execute(&mut *conn).await.ctx(ctx)?;
                sqlx::query("INSERT INTO tick (at) VALUES (clock_timestamp())")
                    .execute(&mut *conn)
                    .await
                    .ctx(ctx)?;
                let wal: String =
                    sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())::text")
                        .fetch_one(&mut *conn)
                        .await
                        .ctx(ctx)?;
                let mut archived = false;
                for _ in 0..1200 {
                    let last: Option<String> =
                        sqlx::query_scalar("SELECT last_archived_wal::text FROM pg_stat_archiver")
                            .fetch_one(&mut *conn)
                            .await
                            .ctx(ctx)?;
                    if last.is_some_and(|l| l.as_str() >= wal.as_str()) {
                        archived = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drop(conn);
                pool.close().await;
                if !archived {
                    return Err(Error::Server(format!(
                        "`{}` did not archive WAL segment {wal} within 120s; {}: {}",
                        s.name,
                        s.log().display(),
                        log_tail(&s.log())
                    )));
                }
            }
            ServerEngine::Mariadb => {
                let pool = crate::live::mysql_pool(&s.url("rewind_tick")).await?;
                let ctx = || format!("sealing the binlog of `{}`", s.name);
                sqlx::query("INSERT INTO tick (at) VALUES (NOW(6))")
                    .execute(&pool)
                    .await
                    .ctx(ctx)?;
                sqlx::query("FLUSH BINARY LOGS").execute(&pool).await.ctx(ctx)?;
                pool.close().await;
            }
        }
    }
    Ok(())
}

/// Whether the server is running (its pid file names a live process).
pub fn running_pid(s: &Server) -> Option<u32> {
    let pid_file = match s.engine {
        ServerEngine::Postgres => s.data_dir.join("postmaster.pid"),
        ServerEngine::Mariadb => s.run_dir().join("mariadbd.pid"),
    };
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    rewind_pitr::proc::server_alive(pid, &s.data_dir).then_some(pid)
}

/// Stops every server that is running; returns the names of those it stopped.
pub async fn stop_all(servers: &[Server]) -> Result<Vec<String>> {
    use nix::sys::signal::Signal;
    let mut stopped = Vec::new();
    let mut errors = Vec::new();
    for s in servers {
        let Some(pid) = running_pid(s) else { continue };
        let first = match s.engine {
            ServerEngine::Postgres => Signal::SIGINT,
            ServerEngine::Mariadb => Signal::SIGTERM,
        };
        match rewind_pitr::proc::stop_server(pid, &s.data_dir, first, Duration::from_secs(60)).await
        {
            Ok(()) => stopped.push(s.name.clone()),
            Err(e) => errors.push(format!("{}: {e}", s.name)),
        }
    }
    if errors.is_empty() {
        Ok(stopped)
    } else {
        Err(Error::Server(format!("stopping the sandbox's servers: {}", errors.join("; "))))
    }
}

/// Starts every stopped server again (`sandbox start`).
pub async fn start_all(servers: &[Server]) -> Result<Vec<String>> {
    let bindir = pg_bindir()?;
    let mut started = Vec::new();
    for s in servers {
        if running_pid(s).is_some() {
            continue;
        }
        match s.engine {
            ServerEngine::Postgres => start_pg(&bindir, s).await?,
            ServerEngine::Mariadb => start_mariadb(s).await?,
        }
        started.push(s.name.clone());
    }
    Ok(started)
}

/// The servers of the sandbox at `dir` (none unless it was made with `--clusters`).
pub fn servers(dir: &Path) -> Result<Vec<Server>> {
    Ok(match crate::manifest::Manifest::load(dir)?.backend {
        crate::manifest::Backend::Clusters { servers } => servers,
        _ => Vec::new(),
    })
}

/// How far one server's backups reach.
#[derive(Clone, Debug)]
pub struct ServerReach {
    /// The server's name.
    pub name: String,
    /// What its backups reach (read from them: `rewind_pitr::reach`).
    pub reach: rewind_pitr::reach::Reach,
    /// The newest instant a recovery of it alone can be pinned to, at or before the sandbox
    /// clock.
    pub newest: Option<SimTime>,
}

/// What a clusters sandbox's backups reach together (`sandbox recoverable`).
#[derive(Clone, Debug)]
pub struct Recoverable {
    /// The newest instant, at or before the sandbox clock, that every server's backups recover
    /// to exactly: a restore point for all of them at once.
    pub newest: SimTime,
    /// Each server's own.
    pub servers: Vec<ServerReach>,
}

/// The newest instant every server of the sandbox at `dir` can be recovered to exactly from its
/// backups (read from the archives themselves, not from the ledger): `None` for a sandbox
/// without servers. Refused, naming what each server reaches, when there is no such instant up
/// to the sandbox clock (a server whose newest commits are not archived yet).
pub async fn recoverable(dir: &Path) -> Result<Option<Recoverable>> {
    let m = crate::manifest::Manifest::load(dir)?;
    let crate::manifest::Backend::Clusters { servers } = &m.backend else { return Ok(None) };
    let bound = m.now.to_restore_point().system_time();
    let mut out = Vec::new();
    for s in servers {
        let reach = rewind_pitr::reach::reach(&s.backup, Some(&s.user)).await.map_err(|e| {
            Error::Server(format!("reading the backups of server `{}`: {e}", s.name))
        })?;
        let newest = reach.newest_at_or_before(Some(bound)).map(sim_time);
        out.push(ServerReach { name: s.name.clone(), reach, newest });
    }
    let reaches: Vec<&rewind_pitr::reach::Reach> = out.iter().map(|s| &s.reach).collect();
    match rewind_pitr::reach::newest_common(&reaches, Some(bound)) {
        Some(t) => Ok(Some(Recoverable { newest: sim_time(t), servers: out })),
        None => {
            let each: Vec<String> = out
                .iter()
                .map(|s| {
                    let r = &s.reach;
                    let at = |t: Option<std::time::SystemTime>, none: &str| {
                        t.map_or_else(|| none.to_owned(), |t| sim_time(t).to_string())
                    };
                    format!(
                        "{} reaches {} (backup ended by {}, newest archived commit {})",
                        s.name,
                        at(s.newest.map(|t| t.to_restore_point().system_time()), "nothing"),
                        at(r.from, "unknown"),
                        at(r.newest_commit, "none after the backup")
                    )
                })
                .collect();
            Err(Error::refused(format!(
                "no instant up to the sandbox clock {} is recoverable from every server's \
                 backups: {}; a time target needs an archived commit after it",
                m.now,
                each.join("; ")
            )))
        }
    }
}

fn sim_time(t: std::time::SystemTime) -> SimTime {
    SimTime::from_restore_point(rewind_model::RestorePoint::from_system_time(t))
}

/// `rewind sandbox stop DIR`: stops every server the sandbox started; the names of those that
/// were running.
pub async fn stop(dir: &Path) -> Result<Vec<String>> {
    stop_all(&servers(dir)?).await
}

/// `rewind sandbox start DIR`: starts its servers again; the names of those it started.
pub async fn start(dir: &Path) -> Result<Vec<String>> {
    start_all(&servers(dir)?).await
}

/// Refuses, naming them, when some of the sandbox's servers are not running.
pub fn require_running(servers: &[Server]) -> Result<()> {
    let down: Vec<&str> =
        servers.iter().filter(|s| running_pid(s).is_none()).map(|s| s.name.as_str()).collect();
    if down.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "the sandbox's database server(s) {} are not running: start them with `rewind sandbox \
         start DIR`",
        down.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relational_store_but_flags_and_apps_is_on_exactly_one_server() {
        let servers = plan(Path::new("/srv/sb"), 3, true);
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "platform",
                "tracker-s01",
                "wiki-s01",
                "tracker-s02",
                "wiki-s02",
                "tracker-s03",
                "wiki-s03",
                "identity"
            ]
        );
        for store in Store::all(3) {
            let holders = servers.iter().filter(|s| s.stores.iter().any(|n| n == store.name()));
            let want = usize::from(on_server(store.kind));
            assert_eq!(holders.count(), want, "{store}");
        }
        // One backup method per kind of server, so a workflow restores each with one step.
        for s in &servers {
            let method = match &s.backup {
                ServerBackup::Archive { .. } => "archive",
                ServerBackup::Pgbackrest { .. } => "pgbackrest",
                ServerBackup::Binlog { .. } => "binlog",
            };
            let want = match s.name.split('-').next() {
                Some("tracker") => "pgbackrest",
                Some("identity") => "binlog",
                _ => "archive",
            };
            assert_eq!(method, want, "{}", s.name);
            assert_eq!(
                s.user,
                if s.engine == ServerEngine::Mariadb { "mysql" } else { "postgres" }
            );
        }
    }
}
