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
use crate::schema::{ColType, Store, StoreKind, Table};
use crate::time::SimTime;
use crate::value::Val;

/// `rewind sandbox verify`.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The restore point the restored sites must be at.
    pub restore_point: RestorePoint,
    /// The sites that were restored (default: every deleted site).
    pub sites: Option<Vec<TargetId>>,
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
    /// Live rows read.
    pub rows: u64,
    /// Media contents hashed (media store only).
    pub blobs: u64,
}

impl StoreCheck {
    /// True when nothing is wrong in this store.
    pub fn ok(&self) -> bool {
        self.restored_bad == 0 && self.others_bad == 0
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
    rows: u64,
    digest: String,
}

/// (store, site) → chronological (instant, table, digest after the write).
type History = BTreeMap<(String, String), Vec<(SimTime, usize, SliceDigest)>>;

fn read_ledger(path: &Path, stores: &BTreeMap<String, Store>) -> Result<History> {
    let f = open_own(path, "the ledger (verify's record of every write)")?;
    let mut out: History = BTreeMap::new();
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
        out.entry((e.store, e.site)).or_default().push((e.t, t, d));
    }
    Ok(out)
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
    fn new() -> Self {
        Self { slices: BTreeMap::new(), rows: 0, blobs: 0, problems: Vec::new() }
    }

    /// Adds a row of table `t` (of `n`) to its site's slice.
    fn add(&mut self, t: usize, n: usize, table: &Table, vals: &[Val]) {
        let site = vals.get(1).map(ToString::to_string).unwrap_or_default();
        slice_entry(&mut self.slices, &site, n)[t].add(row_hash(table.name, vals));
        self.rows += 1;
    }
}

async fn read_sqlite_store(path: &Path, kind: StoreKind) -> Result<LiveStore> {
    let mut live = LiveStore::new();
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

async fn read_pg_store(url: &str, schema: &str, kind: StoreKind) -> Result<LiveStore> {
    let mut live = LiveStore::new();
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
) -> Result<LiveStore> {
    let Some(server) = server else { return Ok(LiveStore::new()) };
    let database = crate::clusters::Server::database(store);
    let url = server.url(&database);
    match server.engine {
        crate::clusters::ServerEngine::Postgres => read_pg_store(&url, "public", kind).await,
        crate::clusters::ServerEngine::Mariadb => read_mysql_store(&url, &database, kind).await,
    }
}

async fn read_mysql_store(url: &str, database: &str, kind: StoreKind) -> Result<LiveStore> {
    let mut live = LiveStore::new();
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
fn read_media_store(root: &Path) -> Result<LiveStore> {
    let mut live = LiveStore::new();
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
        None => deleted.keys().copied().collect(),
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
    for s in &restored {
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
    let known: BTreeSet<String> = m.sites.iter().map(|s| s.id.to_string()).collect();
    let restored_txt: BTreeSet<String> = restored.iter().map(ToString::to_string).collect();
    let deleted_txt: BTreeSet<String> = deleted.keys().map(ToString::to_string).collect();
    let role = |site: &str| {
        if restored_txt.contains(site) {
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
    let history = read_ledger(&layout.ledger(), &by_name)?;
    let empty = Vec::new();

    let mut report = VerifyReport {
        ok: false,
        restore_point: opts.restore_point,
        restored_sites: restored.len(),
        other_sites: m.sites.len().saturating_sub(restored.len()),
        stores: Vec::new(),
        problems: Vec::new(),
    };
    for store in &stores {
        let kind = store.kind;
        let n = kind.tables().len();
        let server = m.backend.server_of(store.name());
        let live = match (&m.backend, kind) {
            (_, StoreKind::Media) => read_media_store(&layout.media())?,
            (Backend::Clusters { .. }, _) if server.is_some() => {
                read_server_store(server, store, kind).await?
            }
            (Backend::Sqlite | Backend::Clusters { .. }, _) => {
                read_sqlite_store(&layout.dir.join(Layout::sqlite_rel(store)), kind).await?
            }
            (Backend::Postgres { url, schema_prefix }, _) => {
                read_pg_store(url, &format!("{schema_prefix}_{}", store.ident()), kind).await?
            }
        };
        let mut check = StoreCheck {
            store: store.name().to_owned(),
            rows: live.rows,
            blobs: live.blobs,
            ..StoreCheck::default()
        };
        // Every site with data in the ledger or in the live store.
        let mut sites: BTreeSet<String> = live.slices.keys().cloned().collect();
        sites.extend(
            history.keys().filter(|(s, _)| s == store.name()).map(|(_, site)| site.clone()),
        );
        let mut bad_sites: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (site, msg) in &live.problems {
            bad_sites.entry(site.clone()).or_default().push(msg.clone());
        }
        for site in &sites {
            let r = role(site);
            let h = history.get(&(store.name().to_owned(), site.clone())).unwrap_or(&empty);
            let want_at = if r == Role::Restored { rp } else { m.now };
            let want = state_at(h, n, want_at);
            let got =
                live.slices.get(site).cloned().unwrap_or_else(|| vec![SliceDigest::default(); n]);
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
                _ => check.others += 1,
            }
        }
        for (site, details) in bad_sites {
            let r = role(&site);
            match r {
                Role::Restored => check.restored_bad += 1,
                _ => check.others_bad += 1,
            }
            report.problems.push(Problem {
                store: store.name().to_owned(),
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
}
