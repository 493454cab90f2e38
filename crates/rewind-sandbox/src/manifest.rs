//! The sandbox's manifest, `DIR/sandbox.json`: its clock, backing, sites, stores with their
//! backup positions, and the incident. Written atomically (temporary file, then rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_model::TargetId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::schema::{Store, StoreKind};
use crate::time::{SimTime, duration_text};

/// Version of the on-disk format.
pub const FORMAT: u32 = 1;

/// Where the relational stores live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file per store under `DIR/stores/` (WAL mode).
    Sqlite,
    /// One schema per store, `<schema_prefix>_<store>`, on a PostgreSQL server.
    Postgres {
        /// Connection URL.
        url: String,
        /// Prefix of this sandbox's schema names (unique per sandbox).
        schema_prefix: String,
    },
    /// Database servers the sandbox started itself (`init --clusters`): catalog, contacts,
    /// tracker and wiki on PostgreSQL clusters, identity on MariaDB, one database per store;
    /// media, flags and apps as with [`Backend::Sqlite`].
    Clusters {
        /// The servers, their ports, data directories, stores and backups.
        servers: Vec<crate::clusters::Server>,
    },
}

impl Backend {
    /// The server holding `store`, in a clusters sandbox.
    pub fn server_of(&self, store: &str) -> Option<&crate::clusters::Server> {
        match self {
            Backend::Clusters { servers } => {
                servers.iter().find(|s| s.stores.iter().any(|n| n == store))
            }
            _ => None,
        }
    }
}

/// One tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// The site id.
    pub id: TargetId,
    /// Its URL.
    pub url: String,
    /// The region holding its identity data.
    pub region: String,
    /// The product database shard holding its tracker and wiki rows (`s01`, ...).
    pub shard: String,
    /// `tracker`, `wiki` or both.
    pub products: Vec<String>,
}

impl Site {
    /// True when the site has `product`.
    pub fn has(&self, product: &str) -> bool {
        self.products.iter().any(|p| p == product)
    }

    /// Every store holding some of the site's data, in deletion order (catalog last).
    pub fn stores(&self) -> Vec<Store> {
        let mut out = Vec::new();
        for kind in StoreKind::ALL {
            match kind {
                StoreKind::Tracker | StoreKind::Wiki => {
                    if self.has(kind.name()) {
                        out.push(Store::product(kind, &self.shard));
                    }
                }
                StoreKind::Identity => out.push(Store::identity(&self.region)),
                k => out.push(Store::single(k)),
            }
        }
        out
    }
}

/// A full snapshot kept in the backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The instant it captures: every write stamped at or before it.
    pub at: SimTime,
    /// The last journal sequence number it includes.
    pub seq: u64,
    /// File name under the store's `snapshots/` directory.
    pub file: String,
}

/// A store's backup position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreState {
    /// SQLite file (relative to DIR), PostgreSQL schema, or media directory (relative to DIR).
    pub location: String,
    /// Sequence number of the last journal entry.
    pub seq: u64,
    /// Chain hash after the last journal entry.
    pub chain: String,
    /// Time of the last write.
    pub last_write: Option<SimTime>,
    /// Retained snapshots, oldest first.
    pub snapshots: Vec<SnapshotRef>,
}

/// One site deleted by the incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// The site.
    pub site: TargetId,
    /// When its rows were deleted from every store.
    pub at: SimTime,
}

/// The mistaken script's run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// When the first site was deleted.
    pub at: SimTime,
    /// When the last site was deleted.
    pub last: SimTime,
    /// Deleted sites in deletion order.
    pub deleted: Vec<Deletion>,
    /// A clusters sandbox's recommended restore point: the middle of a second before the first
    /// deletion in which no server committed anything, so that every backup restores it exactly
    /// (MariaDB binlogs have one-second resolution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<SimTime>,
}

/// `DIR/sandbox.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// Unique id of this sandbox.
    pub id: String,
    /// The seed everything was generated from.
    pub seed: u64,
    /// Where the relational stores live.
    pub backend: Backend,
    /// Product database shards per product.
    pub shards: u32,
    /// How far back any instant can be restored.
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Interval between full snapshots.
    #[serde(with = "duration_text")]
    pub snapshot_every: Duration,
    /// When the simulated history starts.
    pub started: SimTime,
    /// The sandbox clock: the time of the latest simulated activity.
    pub now: SimTime,
    /// Every site ever created, in creation order.
    pub sites: Vec<Site>,
    /// Every store by name.
    pub stores: BTreeMap<String, StoreState>,
    /// The incident, once it happened.
    pub incident: Option<Incident>,
}

/// Paths of a sandbox directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The sandbox directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    /// `DIR/sandbox.json`
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }

    /// `DIR/ledger.jsonl`: per write, the row count and digest of the written site's table.
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger.jsonl")
    }

    /// `DIR/stores/`
    pub fn stores(&self) -> PathBuf {
        self.dir.join("stores")
    }

    /// The SQLite file of a relational store, relative to DIR.
    pub fn sqlite_rel(store: &Store) -> String {
        format!("stores/{}.sqlite", store.name())
    }

    /// The live media store, `DIR/stores/media`.
    pub fn media(&self) -> PathBuf {
        self.stores().join("media")
    }

    /// A store's backups, `DIR/backup/<store>/`.
    pub fn backup(&self, store: &str) -> PathBuf {
        self.dir.join("backup").join(store)
    }

    /// Every media version ever written, content-addressed: `DIR/backup/media/blobs/`.
    pub fn backup_blobs(&self) -> PathBuf {
        self.backup("media").join("blobs")
    }
}

/// The ways `p` may be spelled: absolute, and with its directory resolved (`..`, symbolic
/// links) when that directory exists.
fn spellings(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![std::path::absolute(p).unwrap_or_else(|_| p.to_owned())];
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let (Ok(dir), Some(name)) = (std::fs::canonicalize(parent), p.file_name()) {
        out.push(dir.join(name));
    }
    out
}

/// Refuses `out` (the value of `flag`) when it is the sandbox's manifest or ledger, or inside
/// its live stores or backups, however it is spelled: a file a command writes must never
/// overwrite them.
pub fn refuse_own_path(dir: &Path, flag: &str, out: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    let outs = spellings(out);
    for own in [layout.stores(), layout.dir.join("backup"), layout.manifest(), layout.ledger()] {
        if spellings(&own).iter().any(|o| outs.iter().any(|p| p.starts_with(o))) {
            return Err(Error::refused(format!(
                "{flag} `{}` is inside the sandbox's live stores or backups (`{}`): it must \
                 never overwrite them",
                out.display(),
                own.display()
            )));
        }
    }
    Ok(())
}

/// `aa/aabbcc...`: the relative path of a content-addressed blob.
pub fn blob_rel(sha: &str) -> PathBuf {
    let prefix = sha.get(..2).unwrap_or("00");
    PathBuf::from(prefix).join(sha)
}

impl Manifest {
    /// Reads the manifest of a sandbox directory. A missing directory or manifest is refused.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::refused(format!(
                "sandbox directory `{}` does not exist (create one with `rewind sandbox init {}`)",
                dir.display(),
                dir.display()
            )));
        }
        let path = Layout::new(dir).manifest();
        if !path.is_file() {
            return Err(Error::refused(format!(
                "`{}` is not a sandbox: it has no sandbox.json (create one with `rewind sandbox \
                 init`)",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::corrupt(&path, Some(e.line() as u64), format!("not a sandbox manifest: {e}"))
        })?;
        if m.format != FORMAT {
            return Err(Error::corrupt(
                &path,
                None,
                format!("format {} is not supported (expected {FORMAT})", m.format),
            ));
        }
        Ok(m)
    }

    /// Writes the manifest atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Layout::new(dir).manifest();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        std::fs::write(&tmp, text).at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)
    }

    /// Every store of the sandbox.
    pub fn all_stores(&self) -> Vec<Store> {
        Store::all(self.shards)
    }

    /// The store named `name`, or a refusal listing the valid names.
    pub fn store(&self, name: &str) -> Result<Store> {
        let all = self.all_stores();
        if let Some(s) = all.iter().find(|s| s.name() == name) {
            return Ok(s.clone());
        }
        let names: Vec<&str> = all.iter().map(Store::name).collect();
        Err(Error::refused(format!(
            "unknown store `{name}`: this sandbox has {}",
            names.join(", ")
        )))
    }

    /// The store's state (every store of [`Manifest::all_stores`] has one).
    pub fn state(&self, store: &Store) -> Result<&StoreState> {
        self.stores.get(store.name()).ok_or_else(|| Error::Corrupt {
            path: PathBuf::from("sandbox.json"),
            line: None,
            msg: format!("store `{store}` is missing from the manifest"),
        })
    }

    /// The site with this id.
    pub fn site(&self, id: &TargetId) -> Option<&Site> {
        self.sites.iter().find(|s| &s.id == id)
    }

    /// The earliest instant that can be restored: the retention window's start, or the oldest
    /// retained snapshot if later.
    pub fn window_start(&self) -> SimTime {
        let by_retention = self.now.minus(self.retention);
        let oldest = self
            .stores
            .values()
            .filter_map(|s| s.snapshots.first().map(|r| r.at))
            .max()
            .unwrap_or(self.now);
        by_retention.max(oldest)
    }
}
