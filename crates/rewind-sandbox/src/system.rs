//! The multi-tenant system itself: creates the stores, generates activity over simulated time,
//! runs the incident, and, as it writes, keeps the backups (snapshots, journal) and the ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_model::TargetId;
use serde::Serialize;

use crate::backup::{JournalWriter, Op, genesis, write_snapshot};
use crate::error::{Error, IoContext, Result};
use crate::generate;
use crate::live::{self, Batch, Db, SqliteMode, empty_batch};
use crate::manifest::{
    Backend, Deletion, FORMAT, Incident, Layout, Manifest, Site, SnapshotRef, StoreState,
};
use crate::media::MediaDir;
use crate::model::{Model, Write};
use crate::rng::Rng;
use crate::schema::{Store, StoreKind};
use crate::time::SimTime;
use crate::value::Row;

/// Writes buffered in memory before they are flushed to the live databases.
const FLUSH_EVERY: usize = 20_000;

/// `rewind sandbox init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The sandbox directory (must not exist, or be empty).
    pub dir: PathBuf,
    /// Number of sites.
    pub sites: u32,
    /// Product database shards per product.
    pub shards: u32,
    /// PostgreSQL URL for the relational stores; SQLite files when `None`.
    pub postgres: Option<String>,
    /// Keep the relational stores on database servers the sandbox starts itself
    /// ([`crate::clusters`]); the history's end (`now`) is then the wall clock, and its last
    /// part is written in real time after the servers' base backups.
    pub clusters: bool,
    /// With `clusters`: how long the real-time part of the history lasts.
    pub live: Duration,
    /// Seed of everything generated.
    pub seed: u64,
    /// The sandbox clock at the end of the generated history.
    pub now: SimTime,
    /// Retention window of the backups.
    pub retention: Duration,
    /// Length of the generated history (at least the retention window, so that every instant
    /// of the window can be restored).
    pub history: Duration,
    /// Interval between full snapshots.
    pub snapshot_every: Duration,
}

impl InitOptions {
    /// Defaults: 4 shards, seed 1, now = 2022-04-05T07:38:00Z (the incident's start), 30 days
    /// of retention, 31 days of history, weekly full snapshots.
    pub fn new(dir: &Path, sites: u32) -> Self {
        Self {
            dir: dir.to_owned(),
            sites,
            shards: 4,
            postgres: None,
            clusters: false,
            live: Duration::from_secs(8),
            seed: 1,
            now: SimTime::from_unix_ms(1_649_144_280_000),
            retention: Duration::from_secs(30 * 86_400),
            history: Duration::from_secs(31 * 86_400),
            snapshot_every: Duration::from_secs(7 * 86_400),
        }
    }
}

/// What `init` or `incident` did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Sites in the sandbox.
    pub sites: usize,
    /// Stores in the sandbox.
    pub stores: usize,
    /// First instant simulated by this command.
    pub from: SimTime,
    /// The sandbox clock afterwards.
    pub now: SimTime,
    /// Writes made (journal entries).
    pub writes: u64,
    /// Live rows afterwards, all stores.
    pub rows: u64,
    /// Oldest restorable instant afterwards.
    pub window_start: SimTime,
}

/// `rewind sandbox incident`.
#[derive(Clone, Debug)]
pub struct IncidentOptions {
    /// Sites to delete.
    pub delete: u32,
    /// When the first site is deleted (default: the sandbox clock).
    pub at: Option<SimTime>,
    /// Time over which the deletions are spread (the real one took 23 minutes).
    pub over: Duration,
    /// Activity simulated after the last deletion.
    pub then: Duration,
}

/// What the incident did.
#[derive(Clone, Debug, Serialize)]
pub struct IncidentSummary {
    /// The run of the simulation.
    #[serde(flatten)]
    pub run: RunSummary,
    /// Deleted sites in order.
    pub deleted: Vec<Deletion>,
    /// A clusters sandbox's recommended restore point ([`Incident::restore_point`]).
    pub restore_point: Option<SimTime>,
}

#[derive(Serialize)]
struct LedgerLine<'a> {
    t: SimTime,
    store: &'a str,
    site: &'a str,
    table: &'a str,
    /// The written row's id: with `op`, what `verify --remapped` replays to know which rows a
    /// site had in a table at an instant.
    id: &'a str,
    op: Op,
    rows: u64,
    digest: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Activity(usize),
    Delete(usize),
}

struct Engine {
    layout: Layout,
    manifest: Manifest,
    model: Model,
    dbs: BTreeMap<String, Db>,
    media: MediaDir,
    backup_media: MediaDir,
    journals: BTreeMap<String, JournalWriter>,
    pending: BTreeMap<String, Batch>,
    pending_writes: usize,
    ledger: BufWriter<File>,
    ledger_path: PathBuf,
    writes: u64,
    deleted: BTreeSet<usize>,
    stores: Vec<Store>,
    /// Writes are stamped with the wall clock and committed one event at a time, each event
    /// waiting for its instant (a clusters sandbox's real-time part).
    realtime: bool,
    /// The last instant stamped (the ledger never goes back in time).
    last_stamp: SimTime,
}

/// The wall clock, to the millisecond.
pub(crate) fn wall_now() -> SimTime {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    SimTime::from_unix_ms(ms)
}

/// Sleeps until the wall clock reaches `t`.
async fn sleep_until(t: SimTime) {
    let wait = t.unix_ms() - wall_now().unix_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
    }
}

fn schema_name(prefix: &str, store: &Store) -> String {
    format!("{prefix}_{}", store.ident())
}

/// Connects to the relational stores of `stores` (media has none), by name.
pub(crate) async fn connect(
    layout: &Layout,
    backend: &Backend,
    stores: &[Store],
) -> Result<BTreeMap<String, Db>> {
    let mut dbs = BTreeMap::new();
    let pool = match backend {
        Backend::Postgres { url, .. } => Some(live::pg_pool(url).await?),
        Backend::Sqlite | Backend::Clusters { .. } => None,
    };
    for s in stores.iter().filter(|s| s.kind != StoreKind::Media) {
        if let Some(server) = backend.server_of(s.name()) {
            let database = crate::clusters::Server::database(s);
            let url = server.url(&database);
            let db = match server.engine {
                crate::clusters::ServerEngine::Postgres => {
                    Db::Postgres { pool: live::pg_pool(&url).await?, schema: "public".into() }
                }
                crate::clusters::ServerEngine::Mariadb => {
                    Db::Mysql { pool: live::mysql_pool(&url).await?, database }
                }
            };
            dbs.insert(s.name().to_owned(), db);
            continue;
        }
        let db = match (backend, &pool) {
            (Backend::Postgres { schema_prefix, .. }, Some(pool)) => {
                Db::Postgres { pool: pool.clone(), schema: schema_name(schema_prefix, s) }
            }
            _ => {
                live::open_sqlite(&layout.dir.join(Layout::sqlite_rel(s)), SqliteMode::Live).await?
            }
        };
        dbs.insert(s.name().to_owned(), db);
    }
    Ok(dbs)
}

/// Per-site activity rates (writes bursts per day), fixed by the seed.
fn site_rates(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = Rng::derive(seed, "rates");
    (0..n).map(|_| 1.0 + 5.0 * rng.unit()).collect()
}

/// Poisson arrivals of each site's activity in `(from, to]`, whole seconds.
fn activity_events(
    rng: &mut Rng,
    rates: &[f64],
    from: SimTime,
    to: SimTime,
    skip: &BTreeSet<usize>,
    out: &mut Vec<(SimTime, u64, Event)>,
) {
    for (i, rate) in rates.iter().enumerate() {
        let mean_ms = 86_400_000.0 / rate;
        let mut t = from.unix_ms() as f64;
        loop {
            t += rng.exp(mean_ms).max(1000.0);
            let ts = SimTime::from_unix_ms((t as i64) / 1000 * 1000);
            if ts > to {
                break;
            }
            if ts > from && !skip.contains(&i) {
                out.push((ts, rng.next_u64(), Event::Activity(i)));
            }
        }
    }
}

/// The incident's deletions: `victims` one after another, evenly over `over` from `at`; and the
/// last one's instant.
fn deletions(
    victims: &[usize],
    at: SimTime,
    over: Duration,
) -> (Vec<(SimTime, u64, Event)>, SimTime) {
    let over_ms = i64::try_from(over.as_millis()).unwrap_or(i64::MAX);
    let k = victims.len() as i64;
    let mut events = Vec::new();
    let mut last = at;
    for (i, &v) in victims.iter().enumerate() {
        let offset = if k > 1 { over_ms.saturating_mul(i as i64) / (k - 1) } else { 0 };
        let ts = at.plus_ms(offset);
        last = last.max(ts);
        events.push((ts, i as u64, Event::Delete(v)));
    }
    (events, last)
}

/// One activity every `every` in `(from, to]`, each for a random site not in `skip`.
fn heartbeat(
    rng: &mut Rng,
    sites: usize,
    from: SimTime,
    to: SimTime,
    every: Duration,
    skip: &BTreeSet<usize>,
    out: &mut Vec<(SimTime, u64, Event)>,
) {
    let candidates: Vec<usize> = (0..sites).filter(|i| !skip.contains(i)).collect();
    if candidates.is_empty() {
        return;
    }
    let mut t = from.plus(every);
    while t <= to {
        if let Some(&i) = rng.pick(&candidates) {
            out.push((t, rng.next_u64(), Event::Activity(i)));
        }
        t = t.plus(every);
    }
}

impl Engine {
    async fn create(opts: &InitOptions, backend: Backend, id: String) -> Result<Self> {
        let layout = Layout::new(&opts.dir);
        let stores = Store::all(opts.shards);
        for d in [layout.stores(), layout.dir.join("backup")] {
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let dbs = connect(&layout, &backend, &stores).await?;
        for s in &stores {
            if let Some(db) = dbs.get(s.name()) {
                // A server's store is a database the servers were given (clusters).
                if backend.server_of(s.name()).is_none() {
                    db.create_schema(None).await?;
                }
                db.create_tables(s.kind).await?;
                db.create_indexes(s.kind).await?;
            }
        }
        let media = MediaDir::new(&layout.media());
        media.create()?;
        let backup_media = MediaDir::new(&layout.backup("media"));
        backup_media.create()?;
        let mut journals = BTreeMap::new();
        let mut states = BTreeMap::new();
        for s in &stores {
            let dir = layout.backup(s.name());
            std::fs::create_dir_all(dir.join("snapshots")).at(&dir)?;
            let chain = genesis(s.name());
            journals.insert(s.name().to_owned(), JournalWriter::new(&dir, 0, chain.clone())?);
            let location = match (&backend, s.kind) {
                (_, StoreKind::Media) => "stores/media".to_owned(),
                (Backend::Clusters { .. }, _) => match backend.server_of(s.name()) {
                    Some(server) => {
                        format!("{}/{}", server.name, crate::clusters::Server::database(s))
                    }
                    None => Layout::sqlite_rel(s),
                },
                (Backend::Sqlite, _) => Layout::sqlite_rel(s),
                (Backend::Postgres { schema_prefix, .. }, _) => schema_name(schema_prefix, s),
            };
            states.insert(
                s.name().to_owned(),
                StoreState { location, seq: 0, chain, last_write: None, snapshots: Vec::new() },
            );
        }
        let started = opts.now.minus(opts.history);
        let manifest = Manifest {
            format: FORMAT,
            id,
            seed: opts.seed,
            backend,
            shards: opts.shards,
            retention: opts.retention,
            snapshot_every: opts.snapshot_every,
            started,
            now: started,
            sites: Vec::new(),
            stores: states,
            incident: None,
        };
        let ledger_path = layout.ledger();
        let f = File::create(&ledger_path).at(&ledger_path)?;
        Ok(Self {
            model: Model::new(&stores),
            layout,
            manifest,
            dbs,
            media,
            backup_media,
            journals,
            pending: BTreeMap::new(),
            pending_writes: 0,
            ledger: BufWriter::with_capacity(1 << 16, f),
            ledger_path,
            writes: 0,
            deleted: BTreeSet::new(),
            stores,
            realtime: false,
            last_stamp: SimTime::MIN,
        })
    }

    async fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let layout = Layout::new(dir);
        let stores = manifest.all_stores();
        let dbs = connect(&layout, &manifest.backend, &stores).await?;
        let media = MediaDir::new(&layout.media());
        let backup_media = MediaDir::new(&layout.backup("media"));
        let mut model = Model::new(&stores);
        let mut journals = BTreeMap::new();
        for s in &stores {
            let rows: Vec<(usize, Row)> = match dbs.get(s.name()) {
                Some(db) => {
                    let mut out = Vec::new();
                    for (t, table) in s.kind.tables().iter().enumerate() {
                        out.extend(db.read_all(table).await?.into_iter().map(|r| (t, r)));
                    }
                    out
                }
                None => media.read_all()?.into_iter().map(|r| (0, r)).collect(),
            };
            for (t, row) in rows {
                let w = Write {
                    store: s.clone(),
                    table: t,
                    id: row[0].to_string(),
                    site: row[1].to_string(),
                    row: Some(row),
                    blob: None,
                };
                model.apply(&w);
            }
            let state = manifest.state(s)?;
            let jw = JournalWriter::new(&layout.backup(s.name()), state.seq, state.chain.clone())?;
            journals.insert(s.name().to_owned(), jw);
        }
        let deleted: BTreeSet<usize> = match &manifest.incident {
            Some(inc) => inc
                .deleted
                .iter()
                .filter_map(|d| manifest.sites.iter().position(|s| s.id == d.site))
                .collect(),
            None => BTreeSet::new(),
        };
        let ledger_path = layout.ledger();
        let f = File::options().append(true).open(&ledger_path).at(&ledger_path)?;
        Ok(Self {
            layout,
            manifest,
            model,
            dbs,
            media,
            backup_media,
            journals,
            pending: BTreeMap::new(),
            pending_writes: 0,
            ledger: BufWriter::with_capacity(1 << 16, f),
            ledger_path,
            writes: 0,
            deleted,
            stores,
            realtime: false,
            last_stamp: SimTime::MIN,
        })
    }

    fn apply(&mut self, ts: SimTime, w: Write) -> Result<()> {
        let applied = self.model.apply(&w);
        let name = w.store.name().to_owned();
        let table = w.store.kind.tables()[w.table].name;
        let op = if w.row.is_some() { Op::Put } else { Op::Del };
        if let Some(j) = self.journals.get_mut(&name) {
            j.append(ts, op, table, &w.site, &w.id, w.row.as_ref())?;
        }
        let line = LedgerLine {
            t: ts,
            store: &name,
            site: &w.site,
            table,
            id: &w.id,
            op,
            rows: applied.digest.rows,
            digest: applied.digest.hex(),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        self.ledger.write_all(text.as_bytes()).at(&self.ledger_path)?;
        if w.store.kind == StoreKind::Media {
            match &w.row {
                Some(row) => {
                    if let (Some(blob), Some(sha)) =
                        (&w.blob, row.get(crate::media::SHA_COL).and_then(|v| v.as_text()))
                    {
                        self.backup_media.put_blob(sha, blob)?;
                        self.media.put_blob(sha, blob)?;
                    }
                    self.media.put(row)?;
                }
                None => self.media.delete(&w.site, &w.id)?,
            }
            if let Some(sha) = applied.released_blob {
                self.media.remove_blob(&sha)?;
            }
        } else {
            let kind = w.store.kind;
            let batch = self.pending.entry(name.clone()).or_insert_with(|| empty_batch(kind));
            batch[w.table].insert(w.id, w.row);
            self.pending_writes += 1;
        }
        if let Some(st) = self.manifest.stores.get_mut(&name) {
            st.last_write = Some(ts);
        }
        self.writes += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        for (name, batch) in std::mem::take(&mut self.pending) {
            let Some(db) = self.dbs.get(&name) else { continue };
            let kind = self
                .stores
                .iter()
                .find(|s| s.name() == name)
                .map_or(StoreKind::Catalog, |s| s.kind);
            db.write(kind, &batch).await?;
        }
        self.pending_writes = 0;
        Ok(())
    }

    /// Takes a full snapshot of every store at `at` (all writes stamped at or before it).
    async fn snapshot(&mut self, at: SimTime) -> Result<()> {
        self.flush().await?;
        for s in self.stores.clone() {
            let mut tables: Vec<(&crate::schema::Table, Vec<Row>)> = Vec::new();
            match self.dbs.get(s.name()) {
                Some(db) => {
                    for table in s.kind.tables() {
                        tables.push((table, db.read_all(table).await?));
                    }
                }
                None => tables.push((&s.kind.tables()[0], self.media.read_all()?)),
            }
            let Some(j) = self.journals.get_mut(s.name()) else { continue };
            j.rotate()?;
            let file = format!("{}.jsonl", at.compact());
            let path = self.layout.backup(s.name()).join("snapshots").join(&file);
            write_snapshot(&path, s.name(), at, j.seq, &j.chain, &tables)?;
            if let Some(st) = self.manifest.stores.get_mut(s.name()) {
                st.snapshots.push(SnapshotRef { at, seq: j.seq, file });
            }
        }
        self.prune(at)
    }

    /// Drops snapshots and journal segments no instant of the retention window needs.
    fn prune(&mut self, clock: SimTime) -> Result<()> {
        let horizon = clock.minus(self.manifest.retention);
        for (name, st) in &mut self.manifest.stores {
            let Some(base) = st.snapshots.iter().rposition(|s| s.at <= horizon) else { continue };
            let dir = self.layout.backup(name);
            for old in st.snapshots.drain(..base) {
                let p = dir.join("snapshots").join(&old.file);
                std::fs::remove_file(&p).at(&p)?;
            }
            let base_seq = st.snapshots.first().map_or(0, |s| s.seq);
            let jdir = dir.join("journal");
            let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(&jdir)
                .at(&jdir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let first = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
                    Some((first, p))
                })
                .collect();
            segs.sort();
            for i in 0..segs.len().saturating_sub(1) {
                if segs[i + 1].0 <= base_seq + 1 {
                    std::fs::remove_file(&segs[i].1).at(&segs[i].1)?;
                }
            }
        }
        Ok(())
    }

    fn next_snapshot(&self) -> Option<SimTime> {
        self.manifest
            .stores
            .values()
            .filter_map(|s| s.snapshots.last().map(|r| r.at))
            .max()
            .map(|t| t.plus(self.manifest.snapshot_every))
    }

    /// Takes every snapshot due strictly before `t` (or at or before it with `inclusive`).
    async fn snapshots_until(&mut self, t: SimTime, inclusive: bool) -> Result<()> {
        while let Some(next) = self.next_snapshot() {
            if next < t || (inclusive && next == t) {
                self.snapshot(next).await?;
            } else {
                break;
            }
        }
        Ok(())
    }

    async fn simulate(
        &mut self,
        mut events: Vec<(SimTime, u64, Event)>,
        end: SimTime,
        rng: &mut Rng,
    ) -> Result<Vec<Deletion>> {
        events.sort();
        let mut deletions = Vec::new();
        for (ts, _, ev) in events {
            let ts = if self.realtime {
                sleep_until(ts).await;
                let stamp = wall_now().max(self.last_stamp);
                self.last_stamp = stamp;
                stamp
            } else {
                ts
            };
            self.snapshots_until(ts, false).await?;
            let writes = match ev {
                Event::Activity(i) => {
                    if self.deleted.contains(&i) {
                        continue;
                    }
                    generate::activity(rng, &self.model, &self.manifest.sites[i], ts)
                }
                Event::Delete(i) => {
                    self.deleted.insert(i);
                    let site = &self.manifest.sites[i];
                    deletions.push(Deletion { site: site.id, at: ts });
                    generate::delete_site(&self.model, site)
                }
            };
            for w in writes {
                self.apply(ts, w)?;
            }
            if self.pending_writes >= FLUSH_EVERY || self.realtime {
                self.flush().await?;
            }
        }
        let end = if self.realtime { end.max(wall_now()).max(self.last_stamp) } else { end };
        self.snapshots_until(end, true).await?;
        self.manifest.now = end;
        Ok(deletions)
    }

    /// Keeps one whole wall-clock second free of writes and returns its middle: a restore
    /// point every backup reaches exactly (binlogs stamp events to the second; a PostgreSQL
    /// time target lands between two commits).
    async fn quiet_second(&mut self) -> Result<SimTime> {
        self.flush().await?;
        let now = wall_now().max(self.last_stamp).unix_ms();
        let mut second = (now / 1000 + 1) * 1000;
        if second - now < 200 {
            second += 1000;
        }
        sleep_until(SimTime::from_unix_ms(second + 1300)).await;
        Ok(SimTime::from_unix_ms(second + 500))
    }

    fn servers(&self) -> Vec<crate::clusters::Server> {
        match &self.manifest.backend {
            Backend::Clusters { servers } => servers.clone(),
            _ => Vec::new(),
        }
    }

    async fn finish(mut self, from: SimTime) -> Result<RunSummary> {
        self.flush().await?;
        self.prune(self.manifest.now)?;
        for (name, j) in &mut self.journals {
            j.rotate()?;
            if let Some(st) = self.manifest.stores.get_mut(name) {
                st.seq = j.seq;
                st.chain = j.chain.clone();
            }
        }
        self.ledger.flush().at(&self.ledger_path)?;
        self.manifest.save(&self.layout.dir)?;
        for db in self.dbs.values() {
            db.close().await;
        }
        Ok(RunSummary {
            sites: self.manifest.sites.len(),
            stores: self.stores.len(),
            from,
            now: self.manifest.now,
            writes: self.writes,
            rows: self.model.total_rows(),
            window_start: self.manifest.window_start(),
        })
    }
}

fn check_dir_for_init(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !dir.is_dir() || !empty {
            return Err(Error::refused(format!(
                "`{}` already exists and is not an empty directory: init needs a new directory",
                dir.display()
            )));
        }
    } else {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(Error::refused(format!(
                "cannot create sandbox `{}`: its parent directory `{}` does not exist",
                dir.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

/// Creates a sandbox: stores, sites, backups and a generated history ending at `opts.now`.
pub async fn init(opts: &InitOptions) -> Result<RunSummary> {
    if opts.sites == 0 || opts.sites > 1_000_000 {
        return Err(Error::refused(format!("--sites {}: give 1 to 1000000 sites", opts.sites)));
    }
    if opts.shards == 0 || opts.shards > 99 {
        return Err(Error::refused(format!("--shards {}: give 1 to 99 shards", opts.shards)));
    }
    if opts.retention < Duration::from_secs(3600) {
        return Err(Error::refused("--retention: give at least 1h"));
    }
    if opts.snapshot_every < Duration::from_secs(60) {
        return Err(Error::refused("--snapshot-every: give at least 1m"));
    }
    if opts.history < opts.retention {
        return Err(Error::refused(format!(
            "--history {} is shorter than --retention {}: the window could not be restored",
            humantime::format_duration(opts.history),
            humantime::format_duration(opts.retention)
        )));
    }
    let started = opts.now.minus(opts.history);
    if started < SimTime::MIN || opts.now > SimTime::MAX {
        return Err(Error::refused(format!(
            "--history {} before --now {} is outside the instants the sandbox can write ({} to \
             {}): give a shorter --history or a later --now",
            humantime::format_duration(opts.history),
            opts.now,
            SimTime::MIN,
            SimTime::MAX
        )));
    }
    check_dir_for_init(&opts.dir)?;
    let id = format!("rw{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    if opts.clusters {
        return init_clusters(opts, id).await;
    }
    let backend = match &opts.postgres {
        None => Backend::Sqlite,
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Error::refused(format!(
                    "--postgres `{}`: expected a postgres:// URL",
                    rewind_model::redact_url(url)
                )));
            }
            // Reachability is checked before anything is written.
            live::pg_pool(url).await?.close().await;
            Backend::Postgres { url: url.clone(), schema_prefix: id.clone() }
        }
    };
    std::fs::create_dir_all(&opts.dir).at(&opts.dir)?;
    let mut e = Engine::create(opts, backend, id).await?;
    let start = history(&mut e, opts).await?;
    e.finish(start).await
}

/// `init --clusters`: starts the servers, writes the generated history onto them, takes their
/// base backups, then writes in real time for `opts.live`. A failure stops every server it
/// started.
async fn init_clusters(opts: &InitOptions, id: String) -> Result<RunSummary> {
    use std::os::unix::fs::PermissionsExt as _;
    if opts.postgres.is_some() {
        return Err(Error::refused(
            "--clusters and --postgres exclude each other: --clusters starts its own servers",
        ));
    }
    crate::clusters::check_tools()?;
    let dir = std::path::absolute(&opts.dir).at(&opts.dir)?;
    if let Some(parent) = dir.parent() {
        crate::clusters::check_reachable(parent)?;
    }
    std::fs::create_dir_all(&dir).at(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).at(&dir)?;
    let root = nix::unistd::Uid::effective().is_root();
    let mut servers = crate::clusters::plan(&dir, opts.shards, root);
    let result = init_on_servers(opts, &dir, id, &mut servers).await;
    if result.is_err() {
        let _ = crate::clusters::stop_all(&servers).await;
    }
    result
}

async fn init_on_servers(
    opts: &InitOptions,
    dir: &Path,
    id: String,
    servers: &mut [crate::clusters::Server],
) -> Result<RunSummary> {
    crate::clusters::create_all(dir, servers).await?;
    for s in servers.iter() {
        crate::clusters::create_databases(s).await?;
    }
    let mut opts = opts.clone();
    opts.dir = dir.to_owned();
    opts.now = wall_now();
    let backend = Backend::Clusters { servers: servers.to_vec() };
    let mut e = Engine::create(&opts, backend, id).await?;
    // Recorded at once, so that `sandbox stop` finds the servers whatever happens next.
    e.manifest.save(dir)?;
    let start = history(&mut e, &opts).await?;
    e.flush().await?;
    crate::clusters::base_backups(servers).await?;
    // The recent history, in real time: some site writes every 50 ms.
    e.realtime = true;
    e.last_stamp = e.manifest.now;
    let from = wall_now().max(e.manifest.now);
    let to = from.plus(opts.live);
    let mut ev_rng = Rng::derive(opts.seed, "live");
    let mut events = Vec::new();
    let none = BTreeSet::new();
    heartbeat(
        &mut ev_rng,
        e.manifest.sites.len(),
        from,
        to,
        Duration::from_millis(50),
        &none,
        &mut events,
    );
    let mut write_rng = Rng::derive(opts.seed, "live-writes");
    e.simulate(events, to, &mut write_rng).await?;
    // The history ends with a second in which nothing commits, then every server commits a
    // marker and archives its log: the archives reach the end of the history (`recoverable`),
    // in a second that a binlog restore point can be in.
    e.quiet_second().await?;
    crate::clusters::seal(servers).await?;
    e.manifest.now = wall_now().max(e.last_stamp);
    e.finish(start).await
}

/// Creates the sites and writes the generated history up to `opts.now`; returns its start.
async fn history(e: &mut Engine, opts: &InitOptions) -> Result<SimTime> {
    let start = e.manifest.started;

    let mut site_rng = Rng::derive(opts.seed, "sites");
    let mut data_rng = Rng::derive(opts.seed, "data");
    for _ in 0..opts.sites {
        let site = generate::site(&mut site_rng, opts.shards);
        let writes = generate::create_site(&mut data_rng, &site, start);
        e.manifest.sites.push(site);
        for w in writes {
            e.apply(start, w)?;
        }
        if e.pending_writes >= FLUSH_EVERY {
            e.flush().await?;
        }
    }
    e.snapshot(start).await?;

    let mut ev_rng = Rng::derive(opts.seed, "activity");
    let rates = site_rates(opts.seed, opts.sites as usize);
    let mut events = Vec::new();
    let none = BTreeSet::new();
    activity_events(&mut ev_rng, &rates, start, opts.now, &none, &mut events);
    // Business hours before the incident: some site writes every minute.
    let busy_from = opts.now.minus(Duration::from_secs(2 * 3600)).max(start);
    heartbeat(
        &mut ev_rng,
        rates.len(),
        busy_from,
        opts.now,
        Duration::from_secs(60),
        &none,
        &mut events,
    );
    let mut write_rng = Rng::derive(opts.seed, "writes");
    e.simulate(events, opts.now, &mut write_rng).await?;
    Ok(start)
}

/// Runs the mistaken script: deletes `opts.delete` sites from every store, one after another,
/// while the other sites keep being written to.
pub async fn incident(dir: &Path, opts: &IncidentOptions) -> Result<IncidentSummary> {
    let manifest = Manifest::load(dir)?;
    if let Some(inc) = &manifest.incident {
        return Err(Error::refused(format!(
            "sandbox `{}` already had its incident at {} ({} sites deleted); create a new sandbox \
             for another",
            dir.display(),
            inc.at,
            inc.deleted.len()
        )));
    }
    let at = opts.at.unwrap_or(manifest.now);
    if at < manifest.now {
        return Err(Error::refused(format!(
            "--at {at} is before the sandbox clock ({}): the incident cannot rewrite history",
            manifest.now
        )));
    }
    if at.plus(opts.over).plus(opts.then) > SimTime::MAX {
        return Err(Error::refused(format!(
            "--at {at} plus --over {} and --then {} ends after {}, the last instant the sandbox \
             can write",
            humantime::format_duration(opts.over),
            humantime::format_duration(opts.then),
            SimTime::MAX
        )));
    }
    let n = manifest.sites.len();
    if opts.delete == 0 || opts.delete as usize > n {
        return Err(Error::refused(format!(
            "--delete {}: the sandbox has {n} sites; give 1 to {n}",
            opts.delete
        )));
    }
    if let Backend::Clusters { servers } = &manifest.backend {
        crate::clusters::require_running(servers)?;
        if opts.at.is_some() {
            return Err(Error::refused(
                "--at: a sandbox on database servers has its incident now, in real time",
            ));
        }
        return incident_realtime(dir, opts).await;
    }
    let mut e = Engine::open(dir).await?;
    let from = e.manifest.now;
    let seed = e.manifest.seed;
    let victims = victims(seed, n, opts.delete);
    let (mut events, last) = deletions(&victims, at, opts.over);
    let end = last.plus(opts.then);
    let mut ev_rng = Rng::derive(seed, "incident-activity");
    let rates = site_rates(seed, n);
    activity_events(&mut ev_rng, &rates, from, end, &e.deleted, &mut events);
    let victim_set: BTreeSet<usize> =
        victims.iter().copied().chain(e.deleted.iter().copied()).collect();
    // Busy hours: some untouched site writes every minute in the two hours before the incident,
    // and every 20 seconds from its start on.
    let busy_from = at.minus(Duration::from_secs(2 * 3600)).max(from);
    heartbeat(&mut ev_rng, n, busy_from, at, Duration::from_secs(60), &victim_set, &mut events);
    heartbeat(&mut ev_rng, n, at, end, Duration::from_secs(20), &victim_set, &mut events);
    let mut write_rng = Rng::derive(seed, "incident-writes");
    let deleted = e.simulate(events, end, &mut write_rng).await?;
    e.manifest.incident =
        Some(Incident { at, last, deleted: deleted.clone(), restore_point: None });
    let run = e.finish(from).await?;
    Ok(IncidentSummary { run, deleted, restore_point: None })
}

/// The incident's victims, in deletion order, chosen by the seed.
fn victims(seed: u64, n: usize, delete: u32) -> Vec<usize> {
    let mut pick_rng = Rng::derive(seed, "incident");
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = pick_rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order.into_iter().take(delete as usize).collect()
}

/// The incident on a clusters sandbox, in real time: two seconds of writes, a quiet second
/// (the recommended restore point in its middle), then the deletions spread over `opts.over`
/// while other sites keep writing, and `opts.then` more; finally another quiet second, and every
/// server commits a marker and archives its log, so the restore point, and the end of the
/// incident, are reachable from the backups.
async fn incident_realtime(dir: &Path, opts: &IncidentOptions) -> Result<IncidentSummary> {
    let mut e = Engine::open(dir).await?;
    e.realtime = true;
    e.last_stamp = e.manifest.now;
    let from = e.manifest.now;
    let seed = e.manifest.seed;
    let n = e.manifest.sites.len();
    let victims = victims(seed, n, opts.delete);
    let victim_set: BTreeSet<usize> =
        victims.iter().copied().chain(e.deleted.iter().copied()).collect();
    let every = Duration::from_millis(100);
    let mut ev_rng = Rng::derive(seed, "incident-activity");
    let mut write_rng = Rng::derive(seed, "incident-writes");

    let before = wall_now().max(from);
    let mut events = Vec::new();
    let until = before.plus(Duration::from_secs(2));
    heartbeat(&mut ev_rng, n, before, until, every, &victim_set, &mut events);
    e.simulate(events, until, &mut write_rng).await?;
    let restore_point = e.quiet_second().await?;

    let at = wall_now().max(e.last_stamp).plus_ms(100);
    let (mut events, last) = deletions(&victims, at, opts.over);
    let end = last.plus(opts.then);
    heartbeat(&mut ev_rng, n, at.minus(every), end, every, &victim_set, &mut events);
    let deleted = e.simulate(events, end, &mut write_rng).await?;
    // As at the end of `init`: a quiet second, then the seal, so the archives reach the end of
    // the incident too (a binlog pins no instant in a second of the busy `then` part).
    e.quiet_second().await?;
    crate::clusters::seal(&e.servers()).await?;
    e.manifest.now = wall_now().max(e.last_stamp);
    let first = deleted.first().map_or(at, |d| d.at);
    let last = deleted.last().map_or(at, |d| d.at);
    e.manifest.incident = Some(Incident {
        at: first,
        last,
        deleted: deleted.clone(),
        restore_point: Some(restore_point),
    });
    let run = e.finish(from).await?;
    Ok(IncidentSummary { run, deleted, restore_point: Some(restore_point) })
}

/// The sites of a sandbox, optionally only those the incident deleted (in deletion order).
pub fn sites(dir: &Path, deleted_only: bool) -> Result<Vec<(Site, Option<SimTime>)>> {
    let m = Manifest::load(dir)?;
    let deletions: BTreeMap<TargetId, SimTime> =
        m.incident.iter().flat_map(|i| i.deleted.iter().map(|d| (d.site, d.at))).collect();
    if deleted_only {
        let Some(inc) = &m.incident else {
            return Err(Error::refused(format!(
                "sandbox `{}` has had no incident yet: no site is deleted (run `rewind sandbox \
                 incident`)",
                dir.display()
            )));
        };
        return Ok(inc
            .deleted
            .iter()
            .filter_map(|d| m.site(&d.site).map(|s| (s.clone(), Some(d.at))))
            .collect());
    }
    Ok(m.sites.iter().map(|s| (s.clone(), deletions.get(&s.id).copied())).collect())
}
