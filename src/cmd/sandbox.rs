//! `rewind sandbox init | incident | pitr | verify | sites | restore-media | check-media | outbox |
//! drop-scratch | drop-tenant | ...`: the multi-tenant system restores run against (crate
//! `rewind-sandbox`). This module only parses, prints and maps errors to exit codes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use rewind_model::TargetId;
use rewind_sandbox::{
    AsNew, IncidentOptions, InitOptions, OutboxRequest, PitrOptions, PitrOut, ScratchTag, SimTime,
    VerifyOptions, VerifyReport,
};

use crate::exit::{Exit, refused};
use crate::inputs;
use crate::output::thousands;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Create a sandbox: stores, sites, backups and a simulated history ending at --now.
    Init(InitArgs),
    /// The mistaken script: delete sites from every store while other sites keep working.
    Incident(IncidentArgs),
    /// Restore one store (one shard) to an instant into a scratch copy; prints JSON.
    Pitr(PitrArgs),
    /// Check every restored site equals its state at the restore point, and nothing else changed.
    Verify(VerifyArgs),
    /// Write the targets file of the sandbox's sites (CSV or JSON Lines by extension).
    Sites(SitesArgs),
    /// Replace a site's live media objects with a scratch copy's (pitr --scratch); prints JSON.
    RestoreMedia(MediaSiteArgs),
    /// Compare a site's live media with a scratch copy's; exit 0 when they match, else 1.
    CheckMedia(MediaSiteArgs),
    /// Queue a request to a system outside the sandbox, once per idempotency key; prints JSON.
    Outbox(OutboxArgs),
    /// Remove the scratch copies pitr --scratch TAG made (of one store, or all); prints JSON.
    DropScratch(DropScratchArgs),
    /// Remove a new site a restore as new wrote (rows, media, key maps) from every store, for
    /// drill cleanup; refuses any site without the catalog's claim of it. Prints JSON.
    DropTenant(DropTenantArgs),
    /// What IDs are (site or app, and their state): IDs on stdin, one JSON line per known ID.
    /// A workflow's [preflight] resolver; it only reads.
    Resolve(ResolveArgs),
    /// The newest recoverable instant and the sandbox clock, as one JSON line: a DR drill's
    /// `[rpo]` probe. The newest journal entry of any store; on a `--clusters` sandbox, the newest
    /// instant every server's backups recover to exactly (read from its archive), with each
    /// server's own under `servers`. It only reads.
    Recoverable(RecoverableArgs),
    /// Stop every database server a `--clusters` sandbox started (prints their names).
    Stop(ResolveArgs),
    /// Start a stopped `--clusters` sandbox's database servers again.
    Start(ResolveArgs),
}

#[derive(Debug, clap::Args)]
struct ResolveArgs {
    /// The sandbox directory.
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RecoverableArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// Refuse a sandbox without database servers (made without `init --clusters`): for a probe
    /// whose drill restores the servers' backups.
    #[arg(long)]
    clusters: bool,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// The sandbox directory to create (must not exist, or be empty).
    dir: PathBuf,
    /// Number of sites (tenants).
    #[arg(long)]
    sites: u32,
    /// Product database shards per product (tracker-s01.., wiki-s01..).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Keep the relational stores as schemas on this PostgreSQL server instead of SQLite files.
    #[arg(long, value_name = "URL", conflicts_with = "clusters")]
    postgres: Option<String>,
    /// Start real database servers under DIR (PostgreSQL clusters for catalog, contacts and the
    /// product shards; MariaDB for identity), continuously archived; the history ends now, its
    /// last part written in real time after the base backups.
    #[arg(long)]
    clusters: bool,
    /// With --clusters: how long the real-time part of the history lasts.
    #[arg(long, default_value = "8s")]
    live: String,
    /// Seed of everything generated: the same seed makes the same sandbox.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The sandbox clock at the end of the history, RFC 3339 UTC.
    #[arg(long, default_value = "2022-04-05T07:38:00Z")]
    now: String,
    /// How far back any instant can be restored.
    #[arg(long, default_value = "30days")]
    retention: String,
    /// Length of the generated history (default: retention + 1 day).
    #[arg(long)]
    history: Option<String>,
    /// Interval between full snapshots.
    #[arg(long, default_value = "7days")]
    snapshot_every: String,
}

#[derive(Debug, clap::Args)]
struct IncidentArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// Number of sites to delete.
    #[arg(long)]
    delete: u32,
    /// When the first site is deleted, RFC 3339 UTC (default: the sandbox clock).
    #[arg(long)]
    at: Option<String>,
    /// Time over which the deletions are spread (default 23m; 6s, in real time, on a
    /// --clusters sandbox).
    #[arg(long)]
    over: Option<String>,
    /// Activity after the last deletion (default 15m; 3s on a --clusters sandbox).
    #[arg(long)]
    then: Option<String>,
}

#[derive(Debug, clap::Args)]
struct PitrArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The store to restore: catalog, contacts, identity-<region>, tracker-sNN, wiki-sNN, media,
    /// flags, apps.
    #[arg(long)]
    store: String,
    /// The instant to restore to, RFC 3339 UTC.
    #[arg(long)]
    at: String,
    /// The scratch copy: a SQLite file path, a PostgreSQL schema name (PostgreSQL-backed
    /// sandbox), or a directory (media).
    #[arg(long, required_unless_present = "scratch", conflicts_with = "scratch")]
    out: Option<String>,
    /// Put the copy where the convention for TAG says (DIR/scratch/TAG/STORE.sqlite,
    /// DIR/scratch/TAG/media/, or schema <prefix>_x<hash>_<store>); TAG is [A-Za-z0-9-]{1,40}.
    #[arg(long, value_name = "TAG")]
    scratch: Option<String>,
}

#[derive(Debug, clap::Args)]
struct MediaSiteArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The tag of the scratch copies (pitr --scratch TAG).
    #[arg(long, value_name = "TAG")]
    scratch: String,
    /// The site (UUID) whose media the scratch copy holds.
    #[arg(long, value_name = "ID")]
    site: String,
    /// Restore (check) the site's media as this new site: new object ids, the same content.
    #[arg(long = "as", value_name = "NEW")]
    as_new: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DropTenantArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The new site to remove (UUID): one a restore as new wrote and claimed in the catalog.
    #[arg(long, value_name = "ID")]
    site: String,
}

#[derive(Debug, clap::Args)]
struct OutboxArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The outside system: [a-z][a-z0-9-]* (billing, search, notifications, ...).
    #[arg(long, value_name = "NAME")]
    system: String,
    /// The site the request is about (UUID); omit it for a request about the whole batch.
    #[arg(long, value_name = "ID")]
    site: Option<String>,
    /// What the system must do.
    #[arg(long, value_name = "TEXT")]
    request: String,
}

#[derive(Debug, clap::Args)]
struct DropScratchArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The tag of the scratch copies (pitr --scratch TAG).
    #[arg(long, value_name = "TAG")]
    scratch: String,
    /// Only this store's copy (default: every store's).
    #[arg(long)]
    store: Option<String>,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// The instant restored sites must be at, RFC 3339 UTC.
    #[arg(long, visible_alias = "at")]
    restore_point: String,
    /// Targets file (.csv or .jsonl) of the sites that were restored in place (default: every
    /// deleted site; none with --remapped).
    #[arg(long)]
    sites: Option<PathBuf>,
    /// Targets file of sites restored as new sites (`sites --as-new`): each target's `new_id`
    /// must hold the target's state at the restore point, every id remapped.
    #[arg(long, value_name = "MAP")]
    remapped: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SitesArgs {
    /// The sandbox directory.
    dir: PathBuf,
    /// Only the sites the incident deleted, in deletion order.
    #[arg(long, conflicts_with = "live")]
    deleted: bool,
    /// The sandbox's sites the live catalog holds now (no deleted site): what its backups can
    /// restore, so what a DR drill samples from.
    #[arg(long)]
    live: bool,
    /// With --live: also the catalog's other sites, such as new sites a restore as new wrote
    /// (an as-new drill's cleanup check).
    #[arg(long, requires = "live")]
    with_new: bool,
    /// Write to this file (.csv or .jsonl) instead of printing CSV.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Give each site a `new_id` attribute: a fresh random id, no site's, to restore it as a
    /// new site (Restore 1); the file is also `verify --remapped`'s map.
    #[arg(long)]
    as_new: bool,
}

pub fn run(args: &Args) -> Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    match &args.command {
        Sub::Init(a) => rt.block_on(init(a)),
        Sub::Incident(a) => rt.block_on(incident(a)),
        Sub::Pitr(a) => rt.block_on(pitr(a)),
        Sub::Verify(a) => rt.block_on(verify(a)),
        Sub::Sites(a) => rt.block_on(sites(a)),
        Sub::RestoreMedia(a) => rt.block_on(restore_media(a)),
        Sub::CheckMedia(a) => check_media(a),
        Sub::Outbox(a) => rt.block_on(outbox(a)),
        Sub::DropScratch(a) => rt.block_on(drop_scratch(a)),
        Sub::DropTenant(a) => rt.block_on(drop_tenant(a)),
        Sub::Resolve(a) => rt.block_on(resolve(a)),
        Sub::Recoverable(a) => rt.block_on(recoverable(a)),
        Sub::Stop(a) => rt.block_on(stop(a)),
        Sub::Start(a) => rt.block_on(start(a)),
    }
}

async fn stop(a: &ResolveArgs) -> Result<Exit> {
    let stopped = rewind_sandbox::clusters::stop(&a.dir).await.map_err(lib_err)?;
    println!("{}", serde_json::json!({ "stopped": stopped }));
    Ok(Exit::Ok)
}

async fn start(a: &ResolveArgs) -> Result<Exit> {
    let started = rewind_sandbox::clusters::start(&a.dir).await.map_err(lib_err)?;
    println!("{}", serde_json::json!({ "started": started }));
    Ok(Exit::Ok)
}

/// The newest journal entry of any store; on a clusters sandbox, the newest instant every
/// server's backups recover to exactly (read from the archives), with each server's own.
async fn recoverable(a: &RecoverableArgs) -> Result<Exit> {
    let m = rewind_sandbox::Manifest::load(&a.dir).map_err(lib_err)?;
    let now = m.now.to_restore_point().to_string();
    let line = match rewind_sandbox::clusters::recoverable(&a.dir).await.map_err(lib_err)? {
        Some(r) => {
            let servers: serde_json::Map<String, serde_json::Value> = r
                .servers
                .iter()
                .map(|s| {
                    let t = s.newest.map(|t| t.to_restore_point().to_string());
                    (s.name.clone(), serde_json::json!(t))
                })
                .collect();
            serde_json::json!({
                "newest": r.newest.to_restore_point().to_string(),
                "now": now,
                "servers": servers,
            })
        }
        None if a.clusters => {
            return Err(refused(format!(
                "rewind: sandbox: {} has no database servers (it was made without `init \
                 --clusters`): --clusters reads what the servers' archives reach",
                a.dir.display()
            )));
        }
        None => {
            let newest = m.stores.values().filter_map(|s| s.last_write).max().unwrap_or(m.started);
            serde_json::json!({ "newest": newest.to_restore_point().to_string(), "now": now })
        }
    };
    println!("{line}");
    Ok(Exit::Ok)
}

async fn resolve(a: &ResolveArgs) -> Result<Exit> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| anyhow!("rewind: sandbox resolve: reading stdin: {e}"))?;
    let ids: Vec<String> =
        input.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let found = rewind_sandbox::tenants(&a.dir, &ids).await.map_err(lib_err)?;
    let mut out = std::io::stdout().lock();
    for t in found {
        writeln!(out, "{}", serde_json::to_string(&t)?)?;
    }
    Ok(Exit::Ok)
}

/// Sandbox errors: refusals (bad input, damaged backups) exit 2, the rest 1.
pub(crate) fn lib_err(e: rewind_sandbox::Error) -> anyhow::Error {
    if e.is_refusal() { refused(format!("rewind: sandbox: {e}")) } else { anyhow!("sandbox: {e}") }
}

fn duration(flag: &str, raw: &str) -> Result<Duration> {
    humantime::parse_duration(raw)
        .map_err(|e| refused(format!("rewind: sandbox: {flag} `{raw}`: {e} (e.g. 30days, 15m)")))
}

fn instant(flag: &str, raw: &str) -> Result<SimTime> {
    let rp = raw
        .parse::<rewind_model::RestorePoint>()
        .map_err(|e| refused(format!("rewind: sandbox: {flag}: {e}")))?;
    Ok(SimTime::from_restore_point(rp))
}

async fn init(a: &InitArgs) -> Result<Exit> {
    let mut o = InitOptions::new(&a.dir, a.sites);
    o.shards = a.shards;
    o.postgres = a.postgres.clone();
    o.seed = a.seed;
    o.now = instant("--now", &a.now)?;
    o.retention = duration("--retention", &a.retention)?;
    o.history = match &a.history {
        Some(h) => duration("--history", h)?,
        None => o.retention + Duration::from_secs(86_400),
    };
    o.snapshot_every = duration("--snapshot-every", &a.snapshot_every)?;
    o.clusters = a.clusters;
    o.live = duration("--live", &a.live)?;
    let s = rewind_sandbox::init(&o).await.map_err(lib_err)?;
    let backing = match &o.postgres {
        Some(url) => format!("PostgreSQL {}", rewind_model::redact_url(url)),
        None if o.clusters => "database servers".to_owned(),
        None => "SQLite".to_owned(),
    };
    println!(
        "sandbox {}: {} sites in {} stores ({backing}), seed {}",
        a.dir.display(),
        thousands(s.sites),
        s.stores,
        o.seed
    );
    println!("history        {} to {}", s.from, s.now);
    println!(
        "writes         {} (journaled), {} live rows",
        thousands(s.writes as usize),
        thousands(s.rows as usize)
    );
    println!("restorable     {} to {}", s.window_start, s.now);
    print_servers(&a.dir)?;
    Ok(Exit::Ok)
}

/// A clusters sandbox's servers, one line each.
pub(crate) fn print_servers(dir: &Path) -> Result<()> {
    let servers = rewind_sandbox::clusters::servers(dir).map_err(lib_err)?;
    for s in &servers {
        let backup = match &s.backup {
            rewind_sandbox::clusters::ServerBackup::Archive { .. } => "pg_basebackup + WAL archive",
            rewind_sandbox::clusters::ServerBackup::Pgbackrest { .. } => "pgBackRest",
            rewind_sandbox::clusters::ServerBackup::Binlog { .. } => "mariadb-backup + binlogs",
        };
        println!(
            "server         {:<11} {:<8} 127.0.0.1:{:<5} {backup:<27} {}",
            s.name,
            format!("{:?}", s.engine).to_lowercase(),
            s.port,
            s.stores.join(", ")
        );
    }
    if !servers.is_empty() {
        println!("stop them      rewind sandbox stop {}", dir.display());
    }
    Ok(())
}

async fn incident(a: &IncidentArgs) -> Result<Exit> {
    let at = a.at.as_deref().map(|t| instant("--at", t)).transpose()?;
    let realtime = !rewind_sandbox::clusters::servers(&a.dir).map_err(lib_err)?.is_empty();
    let (over, then) = if realtime { ("6s", "3s") } else { ("23m", "15m") };
    let o = IncidentOptions {
        delete: a.delete,
        at,
        over: duration("--over", a.over.as_deref().unwrap_or(over))?,
        then: duration("--then", a.then.as_deref().unwrap_or(then))?,
    };
    let s = rewind_sandbox::incident(&a.dir, &o).await.map_err(lib_err)?;
    let (first, last) = match (s.deleted.first(), s.deleted.last()) {
        (Some(f), Some(l)) => (f.at.to_string(), l.at.to_string()),
        _ => ("-".into(), "-".into()),
    };
    println!(
        "incident: deleted {} sites from every store, {first} to {last}",
        thousands(s.deleted.len())
    );
    println!(
        "activity       {} writes from {} to {} (other sites kept working)",
        thousands(s.run.writes as usize),
        s.run.from,
        s.run.now
    );
    println!("clock          {}", s.run.now);
    if let Some(rp) = s.restore_point {
        println!("restore point  {rp} (recommended: a quiet second before the first deletion)");
    }
    println!("targets        rewind sandbox sites {} --deleted --out deleted.csv", a.dir.display());
    Ok(Exit::Ok)
}

async fn pitr(a: &PitrArgs) -> Result<Exit> {
    let at =
        a.at.parse::<rewind_model::RestorePoint>()
            .map_err(|e| refused(format!("rewind: sandbox: --at: {e}")))?;
    let out = match (&a.out, &a.scratch) {
        (_, Some(tag)) => PitrOut::Scratch(scratch_tag(tag)?),
        (Some(out), None) => PitrOut::Path(out.clone()),
        (None, None) => return Err(refused("rewind: sandbox: pitr needs --out or --scratch")),
    };
    let o = PitrOptions { store: a.store.clone(), at, out };
    let r = rewind_sandbox::pitr(&a.dir, &o).await.map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(Exit::Ok)
}

fn target_ids(path: &Path) -> Result<Vec<TargetId>> {
    let set = inputs::targets(path)?;
    Ok(set.targets().iter().map(|t| t.id).collect())
}

/// The (old, new) pairs of a `sites --as-new` targets file: every target needs a `new_id`.
fn as_new_map(path: &Path) -> Result<Vec<AsNew>> {
    let set = inputs::targets(path)?;
    let mut out = Vec::new();
    for t in set.targets() {
        let new = t.attrs.iter().find(|(k, _)| k.as_str() == "new_id").map(|(_, v)| v.to_string());
        let Some(new) = new else {
            return Err(refused(format!(
                "rewind: sandbox: --remapped {}:{}: target {} has no `new_id` (make the map with \
                 `rewind sandbox sites --as-new`)",
                path.display(),
                t.line,
                t.id
            )));
        };
        let new = new.parse::<TargetId>().map_err(|e| {
            refused(format!(
                "rewind: sandbox: --remapped {}:{}: new_id `{new}`: {e}",
                path.display(),
                t.line
            ))
        })?;
        out.push(AsNew { old: t.id, new });
    }
    Ok(out)
}

async fn verify(a: &VerifyArgs) -> Result<Exit> {
    let restore_point = inputs::restore_point(&a.restore_point)?;
    let sites = a.sites.as_deref().map(target_ids).transpose()?;
    let as_new = a.remapped.as_deref().map(as_new_map).transpose()?.unwrap_or_default();
    let o = VerifyOptions { restore_point, sites, as_new };
    let r = rewind_sandbox::verify(&a.dir, &o).await.map_err(lib_err)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r));
    }
    if r.ok() {
        Ok(Exit::Ok)
    } else {
        Err(anyhow!(
            "verify failed: {} wrong site slice{} in {} store{}",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" },
            r.stores.iter().filter(|s| !s.ok()).count(),
            if r.stores.iter().filter(|s| !s.ok()).count() == 1 { "" } else { "s" }
        ))
    }
}

/// Wrong slices printed; `--json` has them all.
const SHOWN: usize = 50;

pub(crate) fn render(r: &VerifyReport) -> String {
    let as_new = r.as_new_sites > 0;
    let mut out = if as_new {
        format!(
            "verify: restore point {}, {} sites restored as new, {} restored in place, {} other \
             sites\n",
            r.restore_point, r.as_new_sites, r.restored_sites, r.other_sites
        )
    } else {
        format!(
            "verify: restore point {}, {} restored sites, {} other sites\n",
            r.restore_point, r.restored_sites, r.other_sites
        )
    };
    let ok_of = |n: usize, bad: usize| format!("{}/{n}", n - bad.min(n));
    let mut rows = vec![vec!["STORE".to_owned(), "RESTORED OK".to_owned()]];
    if as_new {
        rows[0].push("AS NEW OK".to_owned());
    }
    rows[0].extend(["OTHERS OK".to_owned(), "ROWS".to_owned(), "RESULT".to_owned()]);
    for s in &r.stores {
        let mut row = vec![s.store.clone(), ok_of(s.restored, s.restored_bad)];
        if as_new {
            row.push(ok_of(s.as_new, s.as_new_bad));
        }
        row.extend([
            ok_of(s.others, s.others_bad),
            thousands(s.rows as usize),
            if s.ok() { "ok".to_owned() } else { "FAILED".to_owned() },
        ]);
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if (1..cols - 1).contains(&c) {
                line.push_str(&format!(" {}{cell}", " ".repeat(pad)));
            } else {
                line.push_str(&format!(" {cell}{}", " ".repeat(pad)));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if r.ok() && as_new {
        out.push_str(
            "verify: ok: every site restored as new holds its old site's state at the restore \
             point, every id remapped; nothing else changed\n",
        );
    } else if r.ok() {
        out.push_str(
            "verify: ok: every restored site is at the restore point; nothing else changed\n",
        );
    } else {
        out.push_str("\nproblems\n");
        for p in r.problems.iter().take(SHOWN) {
            out.push_str(&format!(
                "  {}  site {} ({}): {}\n",
                p.store,
                p.site,
                p.role.as_str(),
                p.detail
            ));
        }
        if r.problems.len() > SHOWN {
            out.push_str(&format!(
                "  ... and {} more (--json lists them all)\n",
                r.problems.len() - SHOWN
            ));
        }
    }
    out
}

async fn sites(a: &SitesArgs) -> Result<Exit> {
    let sites: Vec<rewind_sandbox::Site> = if a.live {
        rewind_sandbox::live_sites(&a.dir, a.with_new).await.map_err(lib_err)?
    } else {
        let list = rewind_sandbox::sites(&a.dir, a.deleted).map_err(lib_err)?;
        list.into_iter().map(|(s, _)| s).collect()
    };
    let new_ids = if a.as_new {
        let m = rewind_sandbox::Manifest::load(&a.dir).map_err(lib_err)?;
        Some(rewind_sandbox::new_site_ids(&m, sites.len()))
    } else {
        None
    };
    let new_ids = new_ids.as_deref();
    match &a.out {
        None => print!("{}", rewind_sandbox::targets::csv_with(&sites, new_ids)),
        Some(path) => {
            rewind_sandbox::refuse_own_path(&a.dir, "--out", path).map_err(lib_err)?;
            let name = path.display().to_string();
            let text = match rewind_model::TargetsFormat::from_file_name(&name) {
                Some(rewind_model::TargetsFormat::Csv) => {
                    rewind_sandbox::targets::csv_with(&sites, new_ids)
                }
                Some(rewind_model::TargetsFormat::JsonLines) => {
                    rewind_sandbox::targets::jsonl_with(&sites, new_ids)
                }
                None => {
                    return Err(refused(format!(
                        "rewind: sandbox: --out `{name}`: unknown format; name it *.csv or *.jsonl"
                    )));
                }
            };
            std::fs::write(path, text)
                .map_err(|e| refused(format!("rewind: sandbox: cannot write `{name}`: {e}")))?;
            eprintln!("wrote {} sites to {name}", sites.len());
        }
    }
    Ok(Exit::Ok)
}

fn scratch_tag(raw: &str) -> Result<ScratchTag> {
    raw.parse::<ScratchTag>().map_err(lib_err)
}

fn site_id(raw: &str) -> Result<TargetId> {
    raw.parse::<TargetId>().map_err(|e| refused(format!("rewind: sandbox: --site: {e}")))
}

fn new_site_id(raw: Option<&str>) -> Result<Option<TargetId>> {
    raw.map(|r| r.parse::<TargetId>().map_err(|e| refused(format!("rewind: sandbox: --as: {e}"))))
        .transpose()
}

async fn restore_media(a: &MediaSiteArgs) -> Result<Exit> {
    let (tag, site) = (scratch_tag(&a.scratch)?, site_id(&a.site)?);
    let r = match new_site_id(a.as_new.as_deref())? {
        Some(new) => rewind_sandbox::restore_media_as(&a.dir, &tag, &site, &new).await,
        None => rewind_sandbox::restore_media(&a.dir, &tag, &site),
    }
    .map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(Exit::Ok)
}

fn check_media(a: &MediaSiteArgs) -> Result<Exit> {
    let (tag, site) = (scratch_tag(&a.scratch)?, site_id(&a.site)?);
    let new = new_site_id(a.as_new.as_deref())?;
    let r = match &new {
        Some(new) => rewind_sandbox::check_media_as(&a.dir, &tag, &site, new),
        None => rewind_sandbox::check_media(&a.dir, &tag, &site),
    }
    .map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    if r.matching {
        Ok(Exit::Ok)
    } else {
        let whose = match new {
            Some(n) => format!("new site {n}'s live media differs from site {site}'s in"),
            None => format!("site {site}'s live media differs from"),
        };
        Err(anyhow!("check-media: {whose} scratch {tag}: {}", r.differences.join("; ")))
    }
}

async fn outbox(a: &OutboxArgs) -> Result<Exit> {
    let req = OutboxRequest {
        system: a.system.clone(),
        site: a.site.as_deref().map(site_id).transpose()?,
        request: a.request.clone(),
        key: std::env::var("REWIND_IDEMPOTENCY_KEY").ok(),
        at: std::time::SystemTime::now(),
    };
    let r = rewind_sandbox::outbox(&a.dir, &req).await.map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(Exit::Ok)
}

async fn drop_scratch(a: &DropScratchArgs) -> Result<Exit> {
    let tag = scratch_tag(&a.scratch)?;
    let r =
        rewind_sandbox::drop_scratch(&a.dir, &tag, a.store.as_deref()).await.map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(Exit::Ok)
}

async fn drop_tenant(a: &DropTenantArgs) -> Result<Exit> {
    let site = site_id(&a.site)?;
    let r = rewind_sandbox::drop_tenant(&a.dir, &site).await.map_err(lib_err)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(Exit::Ok)
}
