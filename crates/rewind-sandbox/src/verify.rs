//! Independent verification of a restore.
//!
//! Shares no code path with point-in-time restore (`pitr`) or with the writers of the stores:
//! it never reads the snapshots or the journal, and reads the live stores with its own queries
//! (SQLite files opened read-only) and its own walk of the media directory. Its truth is the
//! ledger, `DIR/ledger.jsonl`, which the system appends at every write: the row count and digest
//! of the written site's table right after the write. So "the state of site S in store X at
//! instant T" is the last ledger line for (X, S, table) stamped at or before T, for every table;
//! and "the current state of an untouched site" is its last ledger line.
//!
//! It checks, for every store: each restored site's slice equals its state at the restore point;
//! every other site's slice equals its state after the sandbox's last write (a deleted site that
//! was not restored must still be empty); no row belongs to an unknown site; every media object's
//! content is present and matches its SHA-256.
//!
//! Sites restored as new sites (`--remapped MAP`, [`VerifyOptions::as_new`]): each ledger line
//! also names the written row and whether it was put or deleted, so replaying the old site's
//! lines up to the restore point gives the ids it had in every table then. The new site's rows
//! are mapped back to those ids through the documented derivation of new ids
//! ([`crate::remapped`]) and must have the old site's ledger digest at the restore point, with
//! no extra, missing or dangling row; the old site itself is judged like any other site, by
//! its current state.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use rewind_model::{RestorePoint, TargetId};
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::digest::{SliceDigest, row_hash, sha256_hex};
use crate::error::{DbContext, Error, IoContext, Result, line_error, open_own};
use crate::manifest::{Backend, Layout, Manifest};
use crate::remapped::{RowProblem, TableIds, TableRows, map_back};
use crate::schema::{ColType, Store, StoreKind, Table};
use crate::time::SimTime;
use crate::value::Val;

/// `rewind sandbox verify`.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The restore point the restored sites must be at.
    pub restore_point: RestorePoint,
    /// The sites that were restored in place (default: every deleted site, or none when
    /// `as_new` is given).
    pub sites: Option<Vec<TargetId>>,
    /// Sites restored as new sites (`--remapped MAP`): each new site must hold its old site's
    /// state at the restore point, every id remapped; the old sites are judged as now.
    pub as_new: Vec<AsNew>,
}

impl VerifyOptions {
    /// The restored sites in place are every deleted site; none restored as new.
    pub fn new(restore_point: RestorePoint) -> Self {
        Self { restore_point, sites: None, as_new: Vec::new() }
    }
}

/// One site restored as a new site: the old site's id and the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AsNew {
    /// The site whose data was restored (a site of the sandbox).
    pub old: TargetId,
    /// The new site's id (no site of the sandbox).
    pub new: TargetId,
}

/// How a site is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A deleted site that was to be restored: must equal its state at the restore point.
    Restored,
    /// A site the incident did not touch: must equal its state after the last sandbox write.
    Untouched,
    /// A deleted site outside the restored set: must still be empty.
    StillDeleted,
    /// A new site a restore wrote (`--remapped`): must equal its old site's state at the
    /// restore point, modulo the ID map.
    RestoredAsNew,
    /// Rows whose `site_id` is no site of the sandbox.
    Unknown,
}

impl Role {
    /// How the role is printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Restored => "restored",
            Role::Untouched => "untouched",
            Role::StillDeleted => "deleted, not restored",
            Role::RestoredAsNew => "restored as new",
            Role::Unknown => "unknown site",
        }
    }
}

/// One store's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreCheck {
    /// The store.
    pub store: String,
    /// Restored sites checked in this store.
    pub restored: usize,
    /// Restored sites whose slice is wrong.
    pub restored_bad: usize,
    /// Other sites checked in this store.
    pub others: usize,
    /// Other sites whose slice is wrong.
    pub others_bad: usize,
    /// Sites restored as new checked in this store.
    pub as_new: usize,
    /// Sites restored as new whose slice is wrong.
    pub as_new_bad: usize,
    /// Live rows read.
    pub rows: u64,
    /// Media contents hashed (media store only).
    pub blobs: u64,
}

impl StoreCheck {
    /// True when nothing is wrong in this store.
    pub fn ok(&self) -> bool {
        self.restored_bad == 0 && self.others_bad == 0 && self.as_new_bad == 0
    }
}

/// One site's slice of one store that is wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The store.
    pub store: String,
    /// The site id as found in the rows.
    pub site: String,
    /// How the site is judged.
    pub role: Role,
    /// What differs, table by table, and when the live data matched the site's history.
    pub detail: String,
    /// A site restored as new: the site it was restored from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// A site restored as new: every extra, missing or dangling row (table and row id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowProblem>,
}

/// The verdict.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// True when every check holds (no problems).
    pub ok: bool,
    /// The restore point checked.
    pub restore_point: RestorePoint,
    /// Sites expected at the restore point.
    pub restored_sites: usize,
    /// Sites expected unchanged (including deleted sites not restored).
    pub other_sites: usize,
    /// New sites expected to hold their old site's state at the restore point (`--remapped`).
    pub as_new_sites: usize,
    /// Per store, in the sandbox's store order.
    pub stores: Vec<StoreCheck>,
    /// Every wrong slice.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when every check holds.
    pub fn ok(&self) -> bool {
        self.ok && self.problems.is_empty()
    }
}

#[derive(Deserialize)]
struct LedgerIn {
    t: SimTime,
    store: String,
    site: String,
    table: String,
    /// The written row (absent from the ledgers of older sandboxes).
    #[serde(default)]
    id: Option<String>,
    /// `put` or `del` (absent with `id`).
    #[serde(default)]
    op: Option<String>,
    rows: u64,
    digest: String,
}

/// (store, site) → chronological (instant, table, digest after the write).
type History = BTreeMap<(String, String), Vec<(SimTime, usize, SliceDigest)>>;

/// (store, site) → per table, the ids of the site's rows at an instant.
type RowIds = BTreeMap<(String, String), TableIds>;

/// Reads the ledger: every site's history of digests; and, for the sites of `replay`, the ids
/// of their rows in every table at `at`, by replaying the ledger's `put` and `del` lines up to
/// it. A ledger without row ids (an older sandbox's) cannot be replayed: refused when `replay`
/// is not empty.
fn read_ledger(
    path: &Path,
    stores: &BTreeMap<String, Store>,
    replay: &BTreeSet<String>,
    at: SimTime,
) -> Result<(History, RowIds)> {
    let f = open_own(path, "the ledger (verify's record of every write)")?;
    let mut out: History = BTreeMap::new();
    let mut ids: RowIds = BTreeMap::new();
    let mut prev = None;
    for (n, line) in BufReader::with_capacity(1 << 16, f).lines().enumerate() {
        let lineno = Some(n as u64 + 1);
        let line = line.map_err(|e| line_error(path, n as u64 + 1, e))?;
        let e: LedgerIn = serde_json::from_str(&line)
            .map_err(|err| Error::corrupt(path, lineno, format!("bad ledger line: {err}")))?;
        let Some(store) = stores.get(&e.store) else {
            return Err(Error::corrupt(path, lineno, format!("unknown store `{}`", e.store)));
        };
        let Some(t) = store.kind.table_index(&e.table) else {
            return Err(Error::corrupt(path, lineno, format!("unknown table `{}`", e.table)));
        };
        let Some(d) = SliceDigest::parse_hex(e.rows, &e.digest) else {
            return Err(Error::corrupt(path, lineno, "bad digest"));
        };
        if prev.is_some_and(|p| e.t < p) {
            return Err(Error::corrupt(path, lineno, "ledger goes back in time"));
        }
        prev = Some(e.t);
        if !replay.is_empty() && e.id.is_none() {
            return Err(Error::refused(format!(
                "`{}` line {}: the ledger does not name the rows it records (a sandbox made by \
                 an older rewind), so --remapped cannot know which rows a site had at the \
                 restore point; re-create the sandbox (`rewind sandbox init`) and run the \
                 incident and the restore again",
                path.display(),
                n + 1
            )));
        }
        if replay.contains(&e.site) && e.t <= at {
            let (Some(id), Some(op)) = (e.id, e.op.as_deref()) else {
                return Err(Error::corrupt(path, lineno, "a row id without its op"));
            };
            let sets = ids
                .entry((e.store.clone(), e.site.clone()))
                .or_insert_with(|| vec![BTreeSet::new(); store.kind.tables().len()]);
            match op {
                "put" => {
                    sets[t].insert(id);
                }
                "del" => {
                    sets[t].remove(&id);
                }
                other => {
                    return Err(Error::corrupt(path, lineno, format!("unknown op `{other}`")));
                }
            }
        }
        out.entry((e.store, e.site)).or_default().push((e.t, t, d));
    }
    Ok((out, ids))
}

/// Per table, the digest of a site's slice as of `at` (inclusive), from its history.
fn state_at(
    history: &[(SimTime, usize, SliceDigest)],
    ntables: usize,
    at: SimTime,
) -> Vec<SliceDigest> {
    let mut s = vec![SliceDigest::default(); ntables];
    for (t, table, d) in history {
        if *t > at {
            break;
        }
        s[*table] = *d;
    }
    s
}

/// The instants between which a site's history equals `live`, latest first.
fn matching_intervals(
    history: &[(SimTime, usize, SliceDigest)],
    live: &[SliceDigest],
    now: SimTime,
) -> Vec<(SimTime, SimTime)> {
    let mut s = vec![SliceDigest::default(); live.len()];
    let mut out = Vec::new();
    let mut i = 0;
    while i < history.len() {
        let t = history[i].0;
        while i < history.len() && history[i].0 == t {
            s[history[i].1] = history[i].2;
            i += 1;
        }
        if s == live {
            let until = history.get(i).map_or(now, |h| h.0);
            out.push((t, until));
        }
    }
    out.reverse();
    out
}

/// Live digests of one store: site → per table digest; plus row count and blobs hashed.
struct LiveStore {
    slices: BTreeMap<String, Vec<SliceDigest>>,
    rows: u64,
    blobs: u64,
    /// Problems found while reading (missing media content, unreadable rows).
    problems: Vec<(String, String)>,
    /// The sites whose rows are kept (sites restored as new, to be mapped back).
    keep: BTreeSet<String>,
    /// Their rows, per table.
    kept: BTreeMap<String, TableRows>,
}

fn slice_entry<'a>(
    slices: &'a mut BTreeMap<String, Vec<SliceDigest>>,
    site: &str,
    n: usize,
) -> &'a mut Vec<SliceDigest> {
    slices.entry(site.to_owned()).or_insert_with(|| vec![SliceDigest::default(); n])
}

fn select_sql(table: &Table, schema: Option<&str>) -> String {
    let cols: Vec<String> = table.columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
    match schema {
        Some(s) => format!("SELECT {} FROM \"{s}\".\"{}\"", cols.join(", "), table.name),
        None => format!("SELECT {} FROM \"{}\"", cols.join(", "), table.name),
    }
}

/// One row of `table` as read from a live store, in column order.
fn decode<R>(r: &R, table: &Table) -> std::result::Result<Vec<Val>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut vals = Vec::with_capacity(table.columns.len());
    for (i, (_, ty)) in table.columns.iter().enumerate() {
        vals.push(match ty {
            ColType::Int => Val::Int(r.try_get::<i64, _>(i)?),
            ColType::Text => Val::Text(r.try_get::<String, _>(i)?),
        });
    }
    Ok(vals)
}

impl LiveStore {
    fn new(keep: &BTreeSet<String>) -> Self {
        Self {
            slices: BTreeMap::new(),
            rows: 0,
            blobs: 0,
            problems: Vec::new(),
            keep: keep.clone(),
            kept: BTreeMap::new(),
        }
    }

    /// Adds a row of table `t` (of `n`) to its site's slice.
    fn add(&mut self, t: usize, n: usize, table: &Table, vals: &[Val]) {
        let site = vals.get(1).map(ToString::to_string).unwrap_or_default();
        slice_entry(&mut self.slices, &site, n)[t].add(row_hash(table.name, vals));
        self.rows += 1;
        if self.keep.contains(&site) {
            let rows = self.kept.entry(site).or_insert_with(|| vec![Vec::new(); n]);
            rows[t].push(vals.to_vec());
        }
    }
}

async fn read_sqlite_store(
    path: &Path,
    kind: StoreKind,
    keep: &BTreeSet<String>,
) -> Result<LiveStore> {
    let mut live = LiveStore::new(keep);
    if !path.is_file() {
        live.problems.push(("*".into(), format!("store file `{}` is missing", path.display())));
        return Ok(live);
    }
    let what = path.display().to_string();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .ctx(|| format!("verify: opening `{what}` read-only"))?;
    let n = kind.tables().len();
    for (ti, table) in kind.tables().iter().enumerate() {
        let ctx = || format!("verify: reading `{}` of `{what}`", table.name);
        let rows = sqlx::query(sqlx::AssertSqlSafe(select_sql(table, None)))
            .fetch_all(&mut conn)
            .await
            .ctx(ctx)?;
        for r in rows {
            live.add(ti, n, table, &decode(&r, table).ctx(ctx)?);
        }
    }
    conn.close().await.ctx(|| what.clone())?;
    Ok(live)
}

async fn read_pg_store(
    url: &str,
    schema: &str,
    kind: StoreKind,
    keep: &BTreeSet<String>,
) -> Result<LiveStore> {
    let mut live = LiveStore::new(keep);
    let opts = PgConnectOptions::from_str(url).map_err(|e| Error::refused(format!("{e}")))?;
    let mut conn = opts.connect().await.ctx(|| format!("verify: connecting for `{schema}`"))?;
    let n = kind.tables().len();
    for (ti, table) in kind.tables().iter().enumerate() {
        let ctx = || format!("verify: reading `{schema}.{}`", table.name);
        let rows = sqlx::query(sqlx::AssertSqlSafe(select_sql(table, Some(schema))))
            .fetch_all(&mut conn)
            .await
            .ctx(ctx)?;
        for r in rows {
            live.add(ti, n, table, &decode(&r, table).ctx(ctx)?);
        }
    }
    conn.close().await.ctx(|| schema.to_owned())?;
    Ok(live)
}

/// Reads a store a clusters sandbox keeps on a database server (its own database).
async fn read_server_store(
    server: Option<&crate::clusters::Server>,
    store: &Store,
    kind: StoreKind,
    keep: &BTreeSet<String>,
) -> Result<LiveStore> {
    let Some(server) = server else { return Ok(LiveStore::new(keep)) };
    let database = crate::clusters::Server::database(store);
    let url = server.url(&database);
    match server.engine {
        crate::clusters::ServerEngine::Postgres => read_pg_store(&url, "public", kind, keep).await,
        crate::clusters::ServerEngine::Mariadb => {
            read_mysql_store(&url, &database, kind, keep).await
        }
    }
}

async fn read_mysql_store(
    url: &str,
    database: &str,
    kind: StoreKind,
    keep: &BTreeSet<String>,
) -> Result<LiveStore> {
    let mut live = LiveStore::new(keep);
    let opts = MySqlConnectOptions::from_str(url).map_err(|e| Error::refused(format!("{e}")))?;
    let mut conn = opts.connect().await.ctx(|| format!("verify: connecting for `{database}`"))?;
    let n = kind.tables().len();
    for (ti, table) in kind.tables().iter().enumerate() {
        let ctx = || format!("verify: reading `{database}.{}`", table.name);
        let cols: Vec<String> = table.columns.iter().map(|(c, _)| format!("`{c}`")).collect();
        let sql = format!("SELECT {} FROM `{database}`.`{}`", cols.join(", "), table.name);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.ctx(ctx)?;
        for r in rows {
            live.add(ti, n, table, &decode(&r, table).ctx(ctx)?);
        }
    }
    conn.close().await.ctx(|| database.to_owned())?;
    Ok(live)
}

/// Reads `objects/<site>/<id>.json` and checks `blobs/<aa>/<sha>` of each.
fn read_media_store(root: &Path, keep: &BTreeSet<String>) -> Result<LiveStore> {
    let mut live = LiveStore::new(keep);
    let table = &StoreKind::Media.tables()[0];
    let objects = root.join("objects");
    if !objects.is_dir() {
        live.problems.push(("*".into(), format!("`{}` is missing", objects.display())));
        return Ok(live);
    }
    let mut site_dirs: Vec<_> = std::fs::read_dir(&objects)
        .at(&objects)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    site_dirs.sort();
    for dir in site_dirs {
        let dir_site = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).at(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).at(&file)?;
            let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text)
            {
                Ok(o) => o,
                Err(e) => {
                    live.problems
                        .push((dir_site.clone(), format!("`{}` unreadable: {e}", file.display())));
                    continue;
                }
            };
            let mut vals = Vec::with_capacity(table.columns.len());
            let mut bad = None;
            for (c, ty) in table.columns {
                match (obj.get(*c), ty) {
                    (Some(serde_json::Value::String(s)), ColType::Text) => {
                        vals.push(Val::Text(s.clone()))
                    }
                    (Some(serde_json::Value::Number(n)), ColType::Int) if n.as_i64().is_some() => {
                        vals.push(Val::Int(n.as_i64().unwrap_or_default()));
                    }
                    _ => {
                        bad = Some(format!("`{}`: field `{c}` missing or mistyped", file.display()))
                    }
                }
            }
            if let Some(b) = bad {
                live.problems.push((dir_site.clone(), b));
                continue;
            }
            let site = vals[1].to_string();
            if site != dir_site {
                live.problems.push((
                    dir_site.clone(),
                    format!("`{}` belongs to site {site}", file.display()),
                ));
            }
            let sha = vals[5].to_string();
            let size = vals[6].as_int().unwrap_or(-1);
            let blob = root.join("blobs").join(sha.get(..2).unwrap_or("")).join(&sha);
            match std::fs::read(&blob) {
                Ok(content) => {
                    live.blobs += 1;
                    if sha256_hex(&content) != sha || content.len() as i64 != size {
                        live.problems.push((
                            site.clone(),
                            format!(
                                "media object {}: content does not match its sha256/size",
                                vals[0]
                            ),
                        ));
                    }
                }
                Err(_) => live.problems.push((
                    site.clone(),
                    format!("media object {}: content {sha} is missing", vals[0]),
                )),
            }
            live.add(0, 1, table, &vals);
        }
    }
    Ok(live)
}

/// Verifies the sandbox's live stores against the restore point.
pub async fn verify(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
    let m = Manifest::load(dir)?;
    if let Backend::Clusters { servers } = &m.backend {
        crate::clusters::require_running(servers)?;
    }
    let layout = Layout::new(dir);
    let rp = SimTime::from_restore_point(opts.restore_point);
    if rp > m.now {
        return Err(Error::refused(format!(
            "--restore-point {} is in the sandbox's future (its clock is at {})",
            opts.restore_point, m.now
        )));
    }
    let deleted: BTreeMap<TargetId, SimTime> =
        m.incident.iter().flat_map(|i| i.deleted.iter().map(|d| (d.site, d.at))).collect();
    let restored: BTreeSet<TargetId> = match &opts.sites {
        None if opts.as_new.is_empty() => deleted.keys().copied().collect(),
        None => BTreeSet::new(),
        Some(list) => {
            for s in list {
                if !deleted.contains_key(s) {
                    return Err(Error::refused(format!(
                        "--sites: site {s} was not deleted by the incident: only deleted sites \
                         can be restored"
                    )));
                }
            }
            list.iter().copied().collect()
        }
    };
    let known: BTreeSet<String> = m.sites.iter().map(|s| s.id.to_string()).collect();
    check_as_new(&opts.as_new, &known)?;
    let from_old = restored.iter().chain(opts.as_new.iter().map(|a| &a.old));
    for s in from_old {
        if let Some(at) = deleted.get(s)
            && rp >= *at
        {
            return Err(Error::refused(format!(
                "--restore-point {} is not before the deletion of site {s} at {at}: at that \
                 instant its data was already gone",
                opts.restore_point
            )));
        }
    }
    let restored_txt: BTreeSet<String> = restored.iter().map(ToString::to_string).collect();
    let deleted_txt: BTreeSet<String> = deleted.keys().map(ToString::to_string).collect();
    // New site → old site.
    let as_new: BTreeMap<String, String> =
        opts.as_new.iter().map(|a| (a.new.to_string(), a.old.to_string())).collect();
    let role = |site: &str| {
        if as_new.contains_key(site) {
            Role::RestoredAsNew
        } else if restored_txt.contains(site) {
            Role::Restored
        } else if deleted_txt.contains(site) {
            Role::StillDeleted
        } else if known.contains(site) {
            Role::Untouched
        } else {
            Role::Unknown
        }
    };

    let stores: Vec<Store> = m.all_stores();
    let by_name: BTreeMap<String, Store> =
        stores.iter().map(|s| (s.name().to_owned(), s.clone())).collect();
    let replay: BTreeSet<String> = as_new.values().cloned().collect();
    let (history, ids) = read_ledger(&layout.ledger(), &by_name, &replay, rp)?;
    let keep: BTreeSet<String> = as_new.keys().cloned().collect();
    let empty = Vec::new();

    let mut report = VerifyReport {
        ok: false,
        restore_point: opts.restore_point,
        restored_sites: restored.len(),
        other_sites: m.sites.len().saturating_sub(restored.len()),
        as_new_sites: as_new.len(),
        stores: Vec::new(),
        problems: Vec::new(),
    };
    for store in &stores {
        let kind = store.kind;
        let n = kind.tables().len();
        let server = m.backend.server_of(store.name());
        let live = match (&m.backend, kind) {
            (_, StoreKind::Media) => read_media_store(&layout.media(), &keep)?,
            (Backend::Clusters { .. }, _) if server.is_some() => {
                read_server_store(server, store, kind, &keep).await?
            }
            (Backend::Sqlite | Backend::Clusters { .. }, _) => {
                let path = layout.dir.join(Layout::sqlite_rel(store));
                read_sqlite_store(&path, kind, &keep).await?
            }
            (Backend::Postgres { url, schema_prefix }, _) => {
                let schema = format!("{schema_prefix}_{}", store.ident());
                read_pg_store(url, &schema, kind, &keep).await?
            }
        };
        let mut check = StoreCheck {
            store: store.name().to_owned(),
            rows: live.rows,
            blobs: live.blobs,
            ..StoreCheck::default()
        };
        // Every site with data in the ledger or in the live store, and every new site whose old
        // site had data in this store.
        let mut sites: BTreeSet<String> = live.slices.keys().cloned().collect();
        sites.extend(
            history.keys().filter(|(s, _)| s == store.name()).map(|(_, site)| site.clone()),
        );
        sites.extend(
            as_new
                .iter()
                .filter(|(_, old)| history.contains_key(&(store.name().to_owned(), (*old).clone())))
                .map(|(new, _)| new.clone()),
        );
        let mut bad_sites: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut bad_rows: BTreeMap<String, Vec<RowProblem>> = BTreeMap::new();
        for (site, msg) in &live.problems {
            bad_sites.entry(site.clone()).or_default().push(msg.clone());
        }
        for site in &sites {
            let r = role(site);
            let got =
                live.slices.get(site).cloned().unwrap_or_else(|| vec![SliceDigest::default(); n]);
            if r == Role::RestoredAsNew {
                let old = &as_new[site];
                let key = (store.name().to_owned(), old.clone());
                let h = history.get(&key).unwrap_or(&empty);
                let want = state_at(h, n, rp);
                let no_ids = vec![BTreeSet::new(); n];
                let no_rows = vec![Vec::new(); n];
                let (mapped, rows) = map_back(
                    kind,
                    site,
                    old,
                    ids.get(&key).unwrap_or(&no_ids),
                    live.kept.get(site).unwrap_or(&no_rows),
                );
                if mapped != want || !rows.is_empty() {
                    let detail = as_new_detail(kind, old, &want, &got, &mapped, &rows, opts);
                    bad_sites.entry(site.clone()).or_default().push(detail);
                    bad_rows.entry(site.clone()).or_default().extend(rows);
                }
                continue;
            }
            let h = history.get(&(store.name().to_owned(), site.clone())).unwrap_or(&empty);
            let want_at = if r == Role::Restored { rp } else { m.now };
            let want = state_at(h, n, want_at);
            if want != got || r == Role::Unknown {
                let mut parts = Vec::new();
                for (t, table) in kind.tables().iter().enumerate() {
                    if want[t] == got[t] {
                        continue;
                    }
                    if want[t].rows == got[t].rows {
                        parts
                            .push(format!("{}: {} rows, content differs", table.name, got[t].rows));
                    } else {
                        parts.push(format!(
                            "{}: {} rows, expected {}",
                            table.name, got[t].rows, want[t].rows
                        ));
                    }
                }
                let expected = if r == Role::Restored {
                    format!("state at the restore point {}", opts.restore_point)
                } else {
                    format!("state after the last sandbox write ({})", m.now)
                };
                let mut detail = format!("{} (expected the {expected})", parts.join("; "));
                if r != Role::Unknown {
                    match matching_intervals(h, &got, m.now).first() {
                        Some((from, until)) => detail.push_str(&format!(
                            "; the live data is the site's state from {from} until {until}"
                        )),
                        None => detail
                            .push_str("; the live data matches no state in the site's history"),
                    }
                }
                bad_sites.entry(site.clone()).or_default().push(detail);
            }
        }
        for site in &sites {
            match role(site) {
                Role::Restored => check.restored += 1,
                Role::RestoredAsNew => check.as_new += 1,
                _ => check.others += 1,
            }
        }
        for (site, details) in bad_sites {
            let r = role(&site);
            match r {
                Role::Restored => check.restored_bad += 1,
                Role::RestoredAsNew => check.as_new_bad += 1,
                _ => check.others_bad += 1,
            }
            report.problems.push(Problem {
                store: store.name().to_owned(),
                restored_from: as_new.get(&site).cloned(),
                rows: bad_rows.remove(&site).unwrap_or_default(),
                site,
                role: r,
                detail: details.join("; "),
            });
        }
        report.stores.push(check);
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// Refuses a map whose new ids are sites of the sandbox (a restore as new must never have
/// written over a customer's site, and verify would judge it twice), appear twice, or whose old
/// sites are not sites of the sandbox.
fn check_as_new(list: &[AsNew], known: &BTreeSet<String>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for a in list {
        let (old, new) = (a.old.to_string(), a.new.to_string());
        if !known.contains(&old) {
            return Err(Error::refused(format!(
                "--remapped: site {old} (restored as {new}) is no site of the sandbox"
            )));
        }
        if known.contains(&new) {
            return Err(Error::refused(format!(
                "--remapped: new id {new} (for site {old}) is a site of the sandbox: a restore as \
                 new needs an id no site has (`rewind sandbox sites --as-new` makes them)"
            )));
        }
        if !seen.insert(new.clone()) {
            return Err(Error::refused(format!("--remapped: new id {new} is given twice")));
        }
    }
    Ok(())
}

/// Row problems a slice's detail names (the report's `rows` has them all).
const ROWS_SHOWN: usize = 5;

/// What is wrong with a site restored as new in one store.
fn as_new_detail(
    kind: StoreKind,
    old: &str,
    want: &[SliceDigest],
    got: &[SliceDigest],
    mapped: &[SliceDigest],
    rows: &[RowProblem],
    opts: &VerifyOptions,
) -> String {
    let mut parts = Vec::new();
    for (t, table) in kind.tables().iter().enumerate() {
        let row_faults = rows.iter().filter(|p| p.table == table.name).count();
        if want[t] == mapped[t] && row_faults == 0 {
            continue;
        }
        let mut part = if want[t].rows == got[t].rows {
            format!("{}: {} rows", table.name, got[t].rows)
        } else {
            format!("{}: {} rows, expected {}", table.name, got[t].rows, want[t].rows)
        };
        if row_faults == 0 {
            part.push_str(", content differs once the ids are mapped back");
        } else {
            part.push_str(&format!(", {row_faults} wrong"));
        }
        parts.push(part);
    }
    let mut detail = format!(
        "restored as new from site {old}: {} (expected site {old}'s state at the restore point \
         {}, every id remapped)",
        parts.join("; "),
        opts.restore_point
    );
    for p in rows.iter().take(ROWS_SHOWN) {
        detail.push_str("; ");
        detail.push_str(&p.detail);
    }
    if rows.len() > ROWS_SHOWN {
        detail.push_str(&format!(
            "; ... and {} more rows (--json lists them)",
            rows.len() - ROWS_SHOWN
        ));
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_gives_the_state_at_an_instant_and_where_live_data_sits() {
        let t = |s: &str| SimTime::parse(s).unwrap();
        let d = |rows, sum| SliceDigest { rows, sum };
        let h = vec![
            (t("2022-04-01T00:00:00Z"), 0, d(1, 10)),
            (t("2022-04-01T00:00:00Z"), 1, d(2, 20)),
            (t("2022-04-02T00:00:00Z"), 0, d(2, 30)),
            (t("2022-04-03T00:00:00Z"), 1, d(0, 0)),
        ];
        assert_eq!(state_at(&h, 2, t("2022-03-01T00:00:00Z")), vec![d(0, 0), d(0, 0)]);
        assert_eq!(state_at(&h, 2, t("2022-04-02T12:00:00Z")), vec![d(2, 30), d(2, 20)]);
        let now = t("2022-04-05T00:00:00Z");
        let m = matching_intervals(&h, &[d(1, 10), d(2, 20)], now);
        assert_eq!(m, vec![(t("2022-04-01T00:00:00Z"), t("2022-04-02T00:00:00Z"))]);
        assert_eq!(matching_intervals(&h, &[d(2, 30), d(0, 0)], now)[0].1, now);
    }

    fn ledger_file(lines: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (tmp, path)
    }

    fn line(t: &str, site: &str, table: &str, id: &str, op: &str, rows: u64) -> String {
        format!(
            r#"{{"t":"{t}","store":"tracker-s01","site":"{site}","table":"{table}","id":"{id}","op":"{op}","rows":{rows},"digest":"{:032x}"}}"#,
            rows
        )
    }

    #[test]
    fn replaying_the_ledger_gives_a_sites_row_ids_at_an_instant() {
        let stores: BTreeMap<String, Store> =
            Store::all(1).into_iter().map(|s| (s.name().to_owned(), s)).collect();
        let lines = [
            line("2022-04-01T00:00:00Z", "a", "issues", "i1", "put", 1),
            line("2022-04-01T00:00:00Z", "a", "issues", "i2", "put", 2),
            line("2022-04-01T00:00:00Z", "b", "issues", "j1", "put", 1),
            line("2022-04-02T00:00:00Z", "a", "comments", "c1", "put", 1),
            // An update: the same id again.
            line("2022-04-02T00:00:00Z", "a", "issues", "i1", "put", 2),
            line("2022-04-03T00:00:00Z", "a", "comments", "c1", "del", 0),
            line("2022-04-04T00:00:00Z", "a", "issues", "i3", "put", 3),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (_tmp, path) = ledger_file(&refs);
        let t = |s: &str| SimTime::parse(s).unwrap();
        let only_a = BTreeSet::from(["a".to_owned()]);
        let key = ("tracker-s01".to_owned(), "a".to_owned());
        let set = |ids: &[&str]| ids.iter().map(|i| (*i).to_owned()).collect::<BTreeSet<_>>();

        let (history, ids) =
            read_ledger(&path, &stores, &only_a, t("2022-04-02T12:00:00Z")).unwrap();
        assert_eq!(history.len(), 2, "every site's digests are read");
        let projects = StoreKind::Tracker.table_index("projects").unwrap();
        let issues = StoreKind::Tracker.table_index("issues").unwrap();
        let comments = StoreKind::Tracker.table_index("comments").unwrap();
        assert_eq!(ids[&key][issues], set(&["i1", "i2"]));
        assert_eq!(ids[&key][comments], set(&["c1"]));
        assert_eq!(ids[&key][projects], set(&[]));
        assert!(
            !ids.contains_key(&("tracker-s01".to_owned(), "b".to_owned())),
            "only replayed sites"
        );

        // At an instant, inclusive; after a delete.
        let (_, ids) = read_ledger(&path, &stores, &only_a, t("2022-04-03T00:00:00Z")).unwrap();
        assert_eq!(ids[&key][comments], set(&[]));
        let (_, ids) = read_ledger(&path, &stores, &only_a, t("2022-04-09T00:00:00Z")).unwrap();
        assert_eq!(ids[&key][issues], set(&["i1", "i2", "i3"]));

        // An older sandbox's ledger has no row ids: refused for a replay, fine without one.
        let old = r#"{"t":"2022-04-01T00:00:00Z","store":"tracker-s01","site":"a","table":"issues","rows":1,"digest":"00000000000000000000000000000001"}"#;
        let (_tmp2, path) = ledger_file(&[old]);
        let e = read_ledger(&path, &stores, &only_a, t("2022-04-09T00:00:00Z")).unwrap_err();
        assert!(e.is_refusal() && e.to_string().contains("re-create the sandbox"), "{e}");
        assert!(read_ledger(&path, &stores, &BTreeSet::new(), t("2022-04-09T00:00:00Z")).is_ok());
        // An unknown op is a damaged ledger.
        let bad = line("2022-04-01T00:00:00Z", "a", "issues", "i1", "upsert", 1);
        let (_tmp3, path) = ledger_file(&[&bad]);
        let e = read_ledger(&path, &stores, &only_a, t("2022-04-09T00:00:00Z")).unwrap_err();
        assert!(e.to_string().contains("unknown op `upsert`"), "{e}");
    }
}
