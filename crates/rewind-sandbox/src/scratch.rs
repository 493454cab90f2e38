//! Scratch copies by convention. `pitr --scratch TAG` puts a store's copy where a workflow can
//! find it again from the tag alone (`DIR/scratch/TAG/<store>.sqlite`, `DIR/scratch/TAG/media/`,
//! or schema `<prefix>_x<hash of TAG>_<store>`); every copy describes itself (table
//! `rewind_meta`, or `rewind-meta.json` for media); `sandbox://` URLs name live stores and scratch
//! copies ([`resolve_url`]); and [`drop_scratch`] removes a tag's copies, never anything else.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rewind_model::{RestorePoint, percent_decode, redact_url};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::digest::hex;
use crate::error::{DbContext, Error, IoContext, Result};
use crate::live;
use crate::manifest::{Backend, Manifest, refuse_own_path};
use crate::schema::{Store, StoreKind};

/// `PRAGMA application_id` of a SQLite scratch copy ("rwnd").
pub(crate) const SQLITE_SCRATCH_ID: i64 = 0x7277_6e64;
/// The comment on a PostgreSQL scratch schema.
pub(crate) const PG_SCRATCH_COMMENT: &str = "rewind-sandbox scratch copy";
/// The file marking a media scratch copy.
pub(crate) const MEDIA_MARKER: &str = ".rewind-scratch";
/// The table describing a relational scratch copy: `key TEXT PRIMARY KEY, value TEXT NOT NULL`.
pub(crate) const META_TABLE: &str = "rewind_meta";
/// The file describing a media scratch copy: a JSON object with the keys of [`META_TABLE`].
pub(crate) const META_FILE: &str = "rewind-meta.json";
/// The longest scratch schema name: `_partial` must still fit PostgreSQL's 63 bytes.
pub(crate) const MAX_SCRATCH_SCHEMA: usize = 54;

/// The name of a set of scratch copies, usually a run id: `[A-Za-z0-9-]{1,40}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScratchTag(String);

impl ScratchTag {
    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `x` and the first 8 hex digits of the tag's SHA-256: the tag's part of a schema name
    /// (tags may hold capitals and `-`, which schema names here do not).
    fn schema_part(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("x{}", &hex(&digest)[..8])
    }
}

impl FromStr for ScratchTag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = (1..=40).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::refused(format!(
                "--scratch `{s}`: a scratch tag is 1 to 40 letters, digits or '-' (a run id such \
                 as 0190f3a2-7c4e-7d1a-9b2e-3f4a5b6c7d8e)"
            )))
        }
    }
}

impl fmt::Display for ScratchTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `DIR/scratch/TAG/`: the tag's SQLite and media copies.
pub(crate) fn tag_dir(dir: &Path, tag: &ScratchTag) -> PathBuf {
    dir.join("scratch").join(tag.as_str())
}

/// `DIR/scratch/TAG/<store>.sqlite`.
pub(crate) fn sqlite_path(dir: &Path, tag: &ScratchTag, store: &Store) -> PathBuf {
    tag_dir(dir, tag).join(format!("{}.sqlite", store.name()))
}

/// `DIR/scratch/TAG/media/`.
pub(crate) fn media_path(dir: &Path, tag: &ScratchTag) -> PathBuf {
    tag_dir(dir, tag).join("media")
}

/// `<prefix>_x<first 8 hex of sha256(TAG)>_<store with - as _>`. No live schema starts with
/// `<prefix>_x` (no store name starts with `x`), so a scratch schema never names a live one.
pub(crate) fn schema(prefix: &str, tag: &ScratchTag, store: &Store) -> Result<String> {
    let name = format!("{prefix}_{}_{}", tag.schema_part(), store.ident());
    if name.len() > MAX_SCRATCH_SCHEMA || !live::is_plain_ident(&name) {
        return Err(Error::refused(format!(
            "--scratch {tag}: the scratch schema of `{store}` would be `{name}`, longer than \
             {MAX_SCRATCH_SCHEMA} characters or not a plain name: this sandbox's schema prefix \
             `{prefix}` is too long for scratch copies by tag; use --out with a shorter schema name"
        )));
    }
    Ok(name)
}

/// What a scratch copy says of itself: the rows of `rewind_meta` / keys of `rewind-meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Meta {
    /// The instant restored, canonical RFC 3339 (as pitr prints it).
    pub restore_point: String,
    /// The store copied.
    pub store: String,
    /// The full snapshot the restore started from.
    pub snapshot: String,
}

impl Meta {
    pub(crate) fn rows(&self) -> [(&'static str, &str); 3] {
        [
            ("restore_point", &self.restore_point),
            ("store", &self.store),
            ("snapshot", &self.snapshot),
        ]
    }
}

/// Reads `rewind-meta.json` of a media scratch copy: what it restored and to which instant.
pub(crate) fn read_media_meta(root: &Path) -> Result<(Meta, RestorePoint)> {
    let path = root.join(META_FILE);
    let text = std::fs::read_to_string(&path).at(&path)?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&path, None, format!("not a scratch description: {e}")))?;
    let get = |k: &str| {
        map.get(k)
            .cloned()
            .ok_or_else(|| Error::corrupt(&path, None, format!("no `{k}` in the description")))
    };
    let meta = Meta {
        restore_point: get("restore_point")?,
        store: get("store")?,
        snapshot: get("snapshot")?,
    };
    let rp = meta.restore_point.parse::<RestorePoint>().map_err(|e| {
        Error::corrupt(&path, None, format!("`restore_point` is not an instant: {e}"))
    })?;
    Ok((meta, rp))
}

/// True when `path` does not exist, is an empty file, or is a SQLite scratch copy.
pub(crate) fn sqlite_replaceable(path: &Path) -> bool {
    use std::io::Read as _;
    match std::fs::metadata(path) {
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
        Ok(meta) if !meta.is_file() => return false,
        Ok(meta) if meta.len() == 0 => return true,
        Ok(_) => {}
    }
    // The database header itself, not a connection: a copy whose load was killed mid-
    // transaction has a hot journal, which a read-only connection cannot roll back (and this
    // check must not change a file that may not be ours). The application id, written by the
    // copy's first transaction, sits at offset 68 whatever later transactions did.
    let mut header = [0u8; 72];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    read.is_ok()
        && &header[..16] == b"SQLite format 3\0"
        && i64::from(u32::from_be_bytes([header[68], header[69], header[70], header[71]]))
            == SQLITE_SCRATCH_ID
}

/// True when `path` does not exist, is an empty directory, or is a media scratch copy.
pub(crate) fn media_replaceable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(meta) if !meta.is_dir() => false,
        Ok(_) => {
            path.join(MEDIA_MARKER).is_file()
                || std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
        }
    }
}

/// The first of `schemas` that exists and is not a scratch copy.
pub(crate) async fn pg_not_replaceable(
    pool: &sqlx::PgPool,
    schemas: &[String],
) -> Result<Option<String>> {
    for schema in schemas {
        if pg_exists(pool, schema).await?.is_some_and(|scratch| !scratch) {
            return Ok(Some(schema.clone()));
        }
    }
    Ok(None)
}

/// `None` when the schema does not exist; otherwise whether it is a scratch copy.
async fn pg_exists(pool: &sqlx::PgPool, schema: &str) -> Result<Option<bool>> {
    let found: Option<Option<String>> = sqlx::query_scalar(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await
    .ctx(|| format!("looking up schema `{schema}`"))?;
    Ok(found.map(|comment| comment.as_deref() == Some(PG_SCRATCH_COMMENT)))
}

/// `path` plus `suffix` (`x.sqlite` → `x.sqlite.partial`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------------------------
// sandbox:// URLs

/// The sqlx connection URL of a `sandbox://` URL, or `None` when `url` is not one (so a caller
/// can try its other forms).
///
/// - `sandbox://DIR?store=STORE`: the live store. SQLite: `sqlite://<absolute DIR>/stores/
///   STORE.sqlite`; PostgreSQL: the sandbox's server URL with `options[search_path]=<schema>`,
///   so unqualified table names are the store's.
/// - `sandbox://DIR?scratch=TAG&store=STORE`: the scratch copy `pitr --scratch TAG` makes of
///   STORE (`DIR/scratch/TAG/STORE.sqlite`, or schema `<prefix>_x<hash>_<store>`). Whether it
///   exists yet is not checked: connecting before the pitr step fails (a SQLite URL is not opened
///   with create-if-missing).
///
/// DIR is relative to the process's working directory, or absolute (`sandbox:///srv/demo?...`).
/// DIR and the parameters' values are percent-decoded (a connection URL template encodes the
/// values it renders into them); a malformed `%` escape, a `#`, a `+` or a second `?` is refused
/// as ambiguous, as are unknown or repeated parameters, an unknown store (the error lists the
/// known ones) and `media`, which is a directory of files with no SQL URL. The manifest
/// `DIR/sandbox.json` is read.
pub fn resolve_url(url: &str) -> Option<Result<String>> {
    let scheme = url.get(..8)?;
    if !scheme.eq_ignore_ascii_case("sandbox:") {
        return None;
    }
    Some(resolve(url, &url[8..]))
}

fn resolve(url: &str, rest: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::refused(format!(
            "connection URL `{}`: {why} (write sandbox://DIR?store=STORE for a live store, or \
             sandbox://DIR?scratch=TAG&store=STORE for a scratch copy; DIR relative to the \
             working directory, or sandbox:///absolute/dir)",
            redact_url(url)
        ))
    };
    let decode = |what: &str, raw: &str| {
        percent_decode(raw).ok_or_else(|| {
            bad(&format!("{what} `{raw}` holds a malformed `%` escape or is not UTF-8"))
        })
    };
    let rest = rest.strip_prefix("//").ok_or_else(|| bad("`sandbox:` must be followed by //"))?;
    if let Some(c) = rest.chars().find(|c| matches!(c, '#' | '+')) {
        return Err(bad(&format!(
            "`{c}` is ambiguous here (fragments and `+` are not supported; encode a `+` as %2B)"
        )));
    }
    let (dir, query) = rest.split_once('?').ok_or_else(|| bad("no ?store= parameter"))?;
    if dir.is_empty() {
        return Err(bad("no sandbox directory"));
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').ok_or_else(|| bad(&format!("parameter `{pair}`")))?;
        let k = decode("parameter", k)?;
        if !matches!(k.as_str(), "store" | "scratch") {
            return Err(bad(&format!("unknown parameter `{k}`")));
        }
        if v.is_empty() || v.contains(['?', '=']) {
            return Err(bad(&format!("parameter `{k}` has no value or an ambiguous one")));
        }
        let v = decode(&format!("the value of `{k}`"), v)?;
        if params.insert(k.clone(), v).is_some() {
            return Err(bad(&format!("parameter `{k}` is given twice")));
        }
    }
    let store_name = params.get("store").ok_or_else(|| bad("no store= parameter"))?;
    let tag = params.get("scratch").map(|t| t.parse::<ScratchTag>()).transpose()?;
    let dir = decode("the directory", dir)?;
    let dir = std::path::absolute(&dir).at(Path::new(&dir))?;
    let m = manifest_for_urls(&dir)?;
    let store = m.store(store_name)?;
    if store.kind == StoreKind::Media {
        return Err(Error::refused(format!(
            "connection URL `{}`: the `media` store is a directory of files, not a database: \
             it has no SQL URL (restore it with `rewind sandbox restore-media`, check it with \
             `rewind sandbox check-media`)",
            redact_url(url)
        )));
    }
    if let Some(server) = m.backend.server_of(store.name()) {
        if tag.is_some() {
            return Err(Error::refused(format!(
                "connection URL `{}`: store `{store}` lives on the database server `{}`; its \
                 scratch copy is a scratch instance a `pitr` step recovers (use that step's \
                 `port` output)",
                redact_url(url),
                server.name
            )));
        }
        return Ok(server.url(&crate::clusters::Server::database(&store)));
    }
    match (&m.backend, tag) {
        (Backend::Sqlite | Backend::Clusters { .. }, None) => {
            sqlite_url(&dir.join(&m.state(&store)?.location))
        }
        (Backend::Clusters { .. }, Some(tag)) => sqlite_url(&sqlite_path(&dir, &tag, &store)),
        (Backend::Sqlite, Some(tag)) => sqlite_url(&sqlite_path(&dir, &tag, &store)),
        (Backend::Postgres { url: server, .. }, None) => pg_url(server, &m.state(&store)?.location),
        (Backend::Postgres { url: server, schema_prefix }, Some(tag)) => {
            pg_url(server, &schema(schema_prefix, &tag, &store)?)
        }
    }
}

/// The manifest of `dir`, read again only when its file changed (length or modification time):
/// a run resolves a `sandbox://` URL for every attempt of every step that names a connection,
/// thousands of times per run, and parsing the manifest each time cost more than some steps.
fn manifest_for_urls(dir: &Path) -> Result<Arc<Manifest>> {
    type Cache = HashMap<PathBuf, (Option<(SystemTime, u64)>, Arc<Manifest>)>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let stamp = std::fs::metadata(crate::manifest::Layout::new(dir).manifest())
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some((seen, m)) = cache.get(dir)
        && stamp.is_some()
        && *seen == stamp
    {
        return Ok(m.clone());
    }
    let m = Arc::new(Manifest::load(dir)?);
    cache.insert(dir.to_path_buf(), (stamp, m.clone()));
    Ok(m)
}

/// `sqlite://` and the absolute path, with the characters sqlx would decode or split on encoded.
fn sqlite_url(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| {
        Error::refused(format!("`{}` is not UTF-8: it cannot be written in a URL", path.display()))
    })?;
    let mut out = String::from("sqlite://");
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The server URL with `options[search_path]=<schema>` appended (sqlx passes it to the server as
/// `-c search_path=<schema>`).
fn pg_url(server: &str, schema: &str) -> Result<String> {
    if server.contains('#') || !live::is_plain_ident(schema) {
        return Err(Error::refused(format!(
            "the sandbox's PostgreSQL URL `{}` (with a `#`) or schema `{schema}` cannot be \
             combined into a connection URL",
            redact_url(server)
        )));
    }
    let sep = if server.contains('?') { '&' } else { '?' };
    Ok(format!("{server}{sep}options[search_path]={schema}"))
}

// ---------------------------------------------------------------------------------------------
// drop-scratch

/// What [`drop_scratch`] removed.
#[derive(Clone, Debug, Serialize)]
pub struct DropReport {
    /// The tag.
    pub scratch: String,
    /// Stores whose scratch copy (or half-built copy) was removed.
    pub stores: Vec<String>,
    /// The files, directories and schemas removed.
    pub removed: Vec<String>,
}

/// One store's scratch copy, the copy pitr builds beside it, and their leftovers.
enum Copy {
    Sqlite { main: PathBuf, partial: PathBuf },
    Media { main: PathBuf, partial: PathBuf },
    Schemas(Vec<String>),
}

impl Copy {
    /// Everything to remove, in order (the copies, then journals they may have left).
    fn files(&self) -> Vec<PathBuf> {
        match self {
            Copy::Sqlite { main, partial } => {
                let mut out = vec![main.clone(), partial.clone()];
                for p in [main, partial] {
                    out.extend(["-journal", "-wal", "-shm"].map(|s| with_suffix(p, s)));
                }
                out
            }
            Copy::Media { main, partial } => vec![main.clone(), partial.clone()],
            Copy::Schemas(_) => Vec::new(),
        }
    }
}

/// Removes the scratch copies `pitr --scratch TAG` made: of `store`, or of every store. Refuses
/// (removing nothing) when something at a scratch location is not a copy pitr made. Removing
/// what is already gone is not an error: the report lists what this call removed.
pub async fn drop_scratch(dir: &Path, tag: &ScratchTag, store: Option<&str>) -> Result<DropReport> {
    let m = Manifest::load(dir)?;
    let stores = match store {
        Some(name) => vec![m.store(name)?],
        None => m.all_stores(),
    };
    let mut copies = Vec::new();
    for s in &stores {
        if m.backend.server_of(s.name()).is_some() {
            // No sandbox copy of a server's store exists: `pitr` steps make scratch instances.
            continue;
        }
        let copy = match (&m.backend, s.kind) {
            (_, StoreKind::Media) => {
                let main = media_path(dir, tag);
                Copy::Media { partial: with_suffix(&main, ".partial"), main }
            }
            (Backend::Sqlite | Backend::Clusters { .. }, _) => {
                let main = sqlite_path(dir, tag, s);
                Copy::Sqlite { partial: with_suffix(&main, ".partial"), main }
            }
            (Backend::Postgres { schema_prefix, .. }, _) => {
                let name = schema(schema_prefix, tag, s)?;
                Copy::Schemas(vec![format!("{name}_partial"), name])
            }
        };
        copies.push((s.clone(), copy));
    }
    let pool = match &m.backend {
        Backend::Postgres { url, .. }
            if copies.iter().any(|(_, c)| matches!(c, Copy::Schemas(_))) =>
        {
            Some(live::pg_pool(url).await?)
        }
        _ => None,
    };

    // Check everything before removing anything.
    let refuse = |what: &str| {
        Error::refused(format!(
            "--scratch {tag}: `{what}` is not a scratch copy made by `rewind sandbox pitr`: \
             drop-scratch removes nothing else (remove it by hand if it must go)"
        ))
    };
    for (_, copy) in &copies {
        match copy {
            Copy::Media { main, partial } => {
                for p in [main, partial] {
                    refuse_own_path(dir, "--scratch", p)?;
                    if !media_replaceable(p) {
                        return Err(refuse(&p.display().to_string()));
                    }
                }
            }
            Copy::Sqlite { main, partial } => {
                for p in [main, partial] {
                    refuse_own_path(dir, "--scratch", p)?;
                    if !sqlite_replaceable(p) {
                        return Err(refuse(&p.display().to_string()));
                    }
                }
            }
            Copy::Schemas(names) => {
                if let Some(pool) = &pool
                    && let Some(found) = pg_not_replaceable(pool, names).await?
                {
                    return Err(refuse(&found));
                }
            }
        }
    }

    let mut report =
        DropReport { scratch: tag.to_string(), stores: Vec::new(), removed: Vec::new() };
    for (s, copy) in &copies {
        let before = report.removed.len();
        for p in copy.files() {
            let gone =
                if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match gone {
                Ok(()) => report.removed.push(p.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { path: p, source: e }),
            }
        }
        if let (Copy::Schemas(names), Some(pool)) = (copy, &pool) {
            for name in names {
                if pg_exists(pool, name).await?.is_some() {
                    let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(pool)
                        .await
                        .ctx(|| format!("dropping scratch schema `{name}`"))?;
                    report.removed.push(name.clone());
                }
            }
        }
        if report.removed.len() > before {
            report.stores.push(s.name().to_owned());
        }
    }
    if let Some(pool) = pool {
        pool.close().await;
    }
    // The tag's directory goes once nothing else is in it.
    let tdir = tag_dir(dir, tag);
    if std::fs::read_dir(&tdir).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(&tdir).at(&tdir)?;
        report.removed.push(tdir.display().to_string());
    }
    Ok(report)
}

/// Removes a whole sandbox: every PostgreSQL schema it made (`<prefix>_…`, live stores and
/// scratch copies), then its directory. Refuses a directory that holds no sandbox manifest, so a
/// mistyped path removes nothing.
pub async fn destroy(dir: &Path) -> Result<()> {
    let m = Manifest::load(dir)?;
    if let Backend::Clusters { servers } = &m.backend {
        crate::clusters::stop_all(servers).await?;
    }
    if let Backend::Postgres { url, schema_prefix } = &m.backend {
        let pool = live::pg_pool(url).await?;
        let pattern = format!("{}\\_%", schema_prefix.replace('_', "\\_"));
        let names: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
                .bind(&pattern)
                .fetch_all(&pool)
                .await
                .ctx(|| "listing the sandbox's schemas".to_owned())?;
        for name in names {
            if !live::is_plain_ident(&name) {
                continue;
            }
            let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .ctx(|| format!("dropping schema `{name}`"))?;
        }
        pool.close().await;
    }
    std::fs::remove_dir_all(dir).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked_and_name_schemas_by_hash() {
        assert!("0190f3a2-7c4e-7d1a-9b2e-3f4a5b6c7d8e".parse::<ScratchTag>().is_ok());
        assert!("Run-7".parse::<ScratchTag>().is_ok());
        for bad in ["", "a b", "a/b", "..", "a_b", &"x".repeat(41)] {
            assert!(bad.parse::<ScratchTag>().is_err(), "{bad:?}");
        }
        let tag: ScratchTag = "run-1".parse().unwrap();
        let s = Store::identity("ap-southeast");
        let name = schema("rw0123456789ab", &tag, &s).unwrap();
        let hash = hex(&Sha256::digest(b"run-1"));
        assert_eq!(name, format!("rw0123456789ab_x{}_identity_ap_southeast", &hash[..8]));
        assert!(schema(&"p".repeat(30), &tag, &s).is_err());
    }

    #[test]
    fn sqlite_urls_encode_what_sqlx_would_decode() {
        assert_eq!(
            sqlite_url(Path::new("/a b/100%/x?#.sqlite")).unwrap(),
            "sqlite:///a b/100%25/x%3F%23.sqlite"
        );
        assert_eq!(
            pg_url("postgres://u@h/db", "rw1_catalog").unwrap(),
            "postgres://u@h/db?options[search_path]=rw1_catalog"
        );
        assert_eq!(
            pg_url("postgres://u@h/db?sslmode=disable", "rw1_catalog").unwrap(),
            "postgres://u@h/db?sslmode=disable&options[search_path]=rw1_catalog"
        );
    }

    #[test]
    fn only_sandbox_urls_are_resolved_and_ambiguous_ones_refused() {
        assert!(resolve_url("sqlite://x.db").is_none());
        assert!(resolve_url("postgres://h/db").is_none());
        assert!(resolve_url("sand").is_none());
        for bad in [
            "sandbox:demo?store=catalog",
            "sandbox://demo",
            "sandbox://?store=catalog",
            "sandbox://de%20mo?store=catalog",
            "sandbox://demo?store=catalog#x",
            "sandbox://demo?store=catalog&store=flags",
            "sandbox://demo?store=catalog&shard=1",
            "sandbox://demo?store=",
            "sandbox://demo?scratch=a&scratch=b&store=catalog",
            "sandbox://demo?scratch=a_b&store=catalog",
            "sandbox://demo?store=catalog?x=1",
            "sandbox://demo?store=cat%zzalog",
            "sandbox://demo?store=cat+alog",
        ] {
            let r = resolve_url(bad).expect("a sandbox URL");
            assert!(r.is_err(), "{bad}");
        }
    }
}
