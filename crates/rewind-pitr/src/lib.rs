//! Scratch database instances recovered to an exact point in time, proven there.
//!
//! A [`Request`] names where the backups are ([`Source`]: a PostgreSQL base backup plus its WAL
//! archive, a pgBackRest stanza, or a mariadb-backup directory plus its binlogs), the scratch
//! directory (`into`), the instant, and who owns the instance (a run and one of its instances).
//! [`recover`] checks the instant against what the backups cover, restores the base backup into
//! `into`, replays the log up to the instant on a server bound to 127.0.0.1 on a free port with
//! archiving off, and judges from the engine's own evidence whether it stopped exactly there.
//!
//! Every scratch instance is recorded twice before anything is started: a marker in its own
//! directory ([`scratch::MARKER`]) and an entry in the registry ([`scratch::Registry`]) that
//! `rewind scratch list` / `drop` read. A second [`recover`] of the same owner reuses an instance
//! that reached the instant and replaces one that did not (killed mid-recovery, failed, another
//! instant).
//!
//! This crate knows nothing of runs beyond the owner's two names; rewind's `pitr` executor is a
//! thin adapter onto it.

mod binlog;
pub mod mariadb;
pub mod pg;
pub mod proc;
pub mod reach;
pub mod scratch;
pub mod source;
pub mod time;

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use scratch::{Entry, Registry, State};

/// The database engine of a scratch instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL (this machine's `pg_ctl`, `postgres`).
    Postgres,
    /// MariaDB (this machine's `mariadbd`, `mariadb-backup`, `mariadb-binlog`).
    Mariadb,
}

impl Engine {
    /// As written in workflows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mariadb => "mariadb",
        }
    }

    /// The unprivileged user a server runs as when rewind runs as root.
    pub fn default_user(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mariadb => "mysql",
        }
    }
}

/// Where the backups are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Source {
    /// A `pg_basebackup` directory (plain, or `base.tar[.gz]` + `pg_wal.tar[.gz]`) and the
    /// directory an `archive_command` copies WAL segments into.
    Archive {
        /// The base backup directory.
        base_backup: PathBuf,
        /// The WAL archive directory.
        wal_archive: PathBuf,
    },
    /// A pgBackRest stanza: its backups and archive, read through `pgbackrest --config`.
    Pgbackrest {
        /// The stanza name.
        stanza: String,
        /// The pgBackRest configuration file.
        config: PathBuf,
    },
    /// A `mariadb-backup --backup` directory (prepared or not) and the directory holding the
    /// server's binlog files.
    Binlog {
        /// The backup directory.
        base_backup: PathBuf,
        /// The binlog directory.
        binlogs: PathBuf,
    },
}

impl Source {
    /// The engine the method restores.
    pub fn engine(&self) -> Engine {
        match self {
            Self::Archive { .. } | Self::Pgbackrest { .. } => Engine::Postgres,
            Self::Binlog { .. } => Engine::Mariadb,
        }
    }

    /// The method as written in workflows.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Archive { .. } => "archive",
            Self::Pgbackrest { .. } => "pgbackrest",
            Self::Binlog { .. } => "binlog",
        }
    }
}

/// Who a scratch instance belongs to: a run and one of its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The run id.
    pub run: String,
    /// The instance key within the run (`pitr.tracker/shard=s03`).
    pub instance: String,
}

/// One recovery to do.
#[derive(Clone, Debug)]
pub struct Request {
    /// The backups.
    pub source: Source,
    /// The scratch directory: created if absent; if present it must be empty or a scratch
    /// instance of the same owner (never anything else: nothing rewind did not make is removed).
    pub into: PathBuf,
    /// The instant to recover to.
    pub target: SystemTime,
    /// Who the instance belongs to.
    pub owner: Owner,
    /// The OS user the server runs as. `None`: [`Engine::default_user`] when running as root,
    /// else the current user. A user other than the current one needs root.
    pub run_as: Option<String>,
    /// Extra environment for every tool run for the recovery (not the server itself): rewind
    /// sets `REWIND_RUN_ID` / `REWIND_INSTANCE` so that `resume` finds a tool that outlived it.
    pub tool_env: Vec<(String, String)>,
    /// Where the registry is.
    pub registry: Registry,
}

/// A scratch instance at the instant asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovered {
    /// Always `127.0.0.1`.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// A connection URL to the instance's default database, without a password.
    pub url: String,
    /// The server's data directory (inside `into`).
    pub data_dir: PathBuf,
    /// The commit time of the last transaction replayed, or the closest evidence the engine
    /// gives (the base backup's end when no transaction was replayed after it).
    pub recovered_to: SystemTime,
    /// What proves the instance stopped at the instant, in the engine's words.
    pub evidence: Vec<String>,
    /// Bytes of WAL / binlog replayed after the base backup.
    pub replayed_bytes: u64,
    /// Seconds from the start of the recovery to the instance accepting connections at the
    /// instant (of the recovery that made it, also when reused).
    pub recovery_s: f64,
    /// An instance a previous attempt recovered, reused.
    pub reused: bool,
}

/// Why a recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot succeed as it stands: a missing backup or archive, an instant the
    /// backups do not cover, an instance that did not stop at the instant, a directory that is
    /// not rewind's. Retrying does not help.
    #[error("{0}")]
    Permanent(String),
    /// May succeed if tried again (no free port, a server slow to start, an I/O error).
    #[error("{0}")]
    Transient(String),
    /// Stopped by [`recover`]'s caller.
    #[error("stopped")]
    Stopped,
}

impl Error {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        Self::Transient(format!("{what}: {e}"))
    }
}

/// Recovers `req.source` to `req.target` into `req.into`, or reuses the owner's instance that is
/// already there. `stop` resolving stops the recovery: the half-recovered server is stopped and
/// left for the next attempt to replace.
pub async fn recover(
    req: &Request,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<Recovered, Error> {
    scratch::recover(req, stop).await
}
