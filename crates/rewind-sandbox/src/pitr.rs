//! Point-in-time restore of one store into a scratch copy: the backup tool. Reads the latest full
//! snapshot at or before the instant, replays the journal through the instant (checking its
//! chain), and writes the result where `--out` says. Its cost grows with the store's data and the
//! writes since the snapshot, like a real restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rewind_model::RestorePoint;
use serde::Serialize;

use crate::backup::{Op, read_snapshot, replay, row_fits};
use crate::digest::sha256_hex;
use crate::error::{DbContext, Error, IoContext, Result};
use crate::live::{self, Db, SqliteMode, is_plain_ident};
use crate::manifest::{Backend, Layout, Manifest, blob_rel, refuse_own_path};
use crate::media::{MediaDir, SHA_COL};
use crate::schema::{Store, StoreKind};
use crate::scratch::{
    self, MAX_SCRATCH_SCHEMA, MEDIA_MARKER, META_FILE, Meta, PG_SCRATCH_COMMENT, SQLITE_SCRATCH_ID,
    ScratchTag, media_replaceable, pg_not_replaceable, sqlite_replaceable, with_suffix,
};
use crate::time::SimTime;
use crate::value::Row;

/// `rewind sandbox pitr`.
#[derive(Clone, Debug)]
pub struct PitrOptions {
    /// The store (shard) to restore: `tracker-s03`, `identity-eu-west`, `media`, ...
    pub store: String,
    /// The instant to restore to.
    pub at: RestorePoint,
    /// Where the scratch copy goes.
    pub out: PitrOut,
}

/// Where `pitr` puts its copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PitrOut {
    /// `--out`: a SQLite file path (SQLite-backed stores; its directory must exist), a schema
    /// name (PostgreSQL-backed stores) or a directory (media).
    Path(String),
    /// `--scratch TAG`: the conventional place of the tag's copy of the store,
    /// `DIR/scratch/TAG/<store>.sqlite`, `DIR/scratch/TAG/media/` or schema
    /// `<prefix>_x<first 8 hex of sha256(TAG)>_<store>` (parents created).
    Scratch(ScratchTag),
}

/// What a point-in-time restore reached. `restore_point` is the exact instant: the copy holds
/// every write stamped at or before it and none after.
#[derive(Clone, Debug, Serialize)]
pub struct PitrReport {
    /// The store restored.
    pub store: String,
    /// The instant reached.
    pub restore_point: RestorePoint,
    /// The full snapshot the restore started from.
    pub snapshot: SimTime,
    /// Time of the last journal entry applied (the snapshot's instant when none was).
    pub last_write: SimTime,
    /// Journal entries replayed on top of the snapshot.
    pub journal_entries: u64,
    /// Rows in the scratch copy, per table.
    pub rows: BTreeMap<String, u64>,
    /// Bytes of media content copied (media store only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What `out` is: `sqlite`, `postgres` (a schema on the sandbox's server) or `directory`.
    pub out_kind: &'static str,
    /// The scratch copy.
    pub out: String,
    /// Wall time of the restore.
    pub elapsed_s: f64,
    /// Snapshot rows read plus journal entries replayed, per second.
    pub rows_per_s: f64,
}

fn refuse_time(m: &Manifest, t: SimTime, rp: RestorePoint) -> Result<()> {
    let window = m.window_start();
    if t > m.now {
        return Err(Error::refused(format!(
            "--at {rp} is in the sandbox's future: its clock is at {}; restorable instants are \
             {window} to {}",
            m.now, m.now
        )));
    }
    if t < window {
        return Err(Error::refused(format!(
            "--at {rp} is outside the retention window ({}): restorable instants are {window} to \
             {}",
            humantime::format_duration(m.retention),
            m.now
        )));
    }
    Ok(())
}

fn check_out_path(layout: &Layout, out: &str) -> Result<PathBuf> {
    let path = PathBuf::from(out);
    if out.is_empty() {
        return Err(Error::refused("--out is empty"));
    }
    refuse_own_path(&layout.dir, "--out", &path)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::refused(format!(
            "--out `{out}`: directory `{}` does not exist",
            parent.display()
        )));
    }
    Ok(path)
}

/// The name of the copy being built: `--out` plus `.partial` (a file or directory) or
/// `_partial` (a schema). It is replaced only under the same rule as `--out` itself.
const PARTIAL_FILE: &str = ".partial";
const PARTIAL_SCHEMA: &str = "_partial";

/// `found` (the copy itself, or the copy being built beside it) exists and is not a scratch copy.
/// `label` says how the caller named the copy (`--out `x``, `--scratch TAG (`path`)`).
fn not_scratch(label: &str, out: &str, found: &str) -> Error {
    let what = if out == found {
        format!("{label} exists")
    } else {
        format!("{label}: `{found}` (where pitr builds its copy before renaming it) exists")
    };
    Error::refused(format!(
        "{what} and is not a scratch copy made by `rewind sandbox pitr`: remove it or choose \
         another --out or --scratch (pitr only ever replaces its own copies)"
    ))
}

/// Restores one store to an instant into a scratch copy.
pub async fn pitr(dir: &Path, opts: &PitrOptions) -> Result<PitrReport> {
    let started = Instant::now();
    let m = Manifest::load(dir)?;
    let layout = Layout::new(dir);
    let store = m.store(&opts.store)?;
    let t = SimTime::from_restore_point(opts.at);
    refuse_time(&m, t, opts.at)?;
    let state = m.state(&store)?;

    // Where the copy goes, checked before anything is read or written.
    enum Out {
        Sqlite(PathBuf),
        Postgres { url: String, schema: String },
        Media(PathBuf),
    }
    let scratch = match &opts.out {
        PitrOut::Path(_) => None,
        PitrOut::Scratch(tag) => Some(tag),
    };
    // The copy's path (SQLite, media) by convention or as given, and how to name it in errors.
    let path_of = |store: &Store| -> Result<(PathBuf, String, String)> {
        match &opts.out {
            PitrOut::Path(out) => {
                let p = check_out_path(&layout, out)?;
                Ok((p, out.clone(), format!("--out `{out}`")))
            }
            PitrOut::Scratch(tag) => {
                let p = if store.kind == StoreKind::Media {
                    scratch::media_path(dir, tag)
                } else {
                    scratch::sqlite_path(dir, tag, store)
                };
                refuse_own_path(&layout.dir, "--scratch", &p)?;
                let text = p.display().to_string();
                let label = format!("--scratch {tag} (`{text}`)");
                Ok((p, text, label))
            }
        }
    };
    if let Some(server) = m.backend.server_of(store.name()) {
        return Err(Error::refused(format!(
            "store `{store}` lives on the database server `{}` (port {}): the sandbox's own \
             backup tool does not restore it; restore that server's backups with a `pitr` step \
             (workflows/restore-2-clusters.toml)",
            server.name, server.port
        )));
    }
    let out = match (&m.backend, store.kind) {
        (_, StoreKind::Media) => {
            let (p, text, label) = path_of(&store)?;
            if p.is_file() {
                return Err(Error::refused(format!(
                    "{label} is a file: the media store restores into a directory"
                )));
            }
            for found in [p.clone(), with_suffix(&p, PARTIAL_FILE)] {
                if !media_replaceable(&found) {
                    return Err(not_scratch(&label, &text, &found.display().to_string()));
                }
            }
            Out::Media(p)
        }
        (Backend::Sqlite | Backend::Clusters { .. }, _) => {
            let (p, text, label) = path_of(&store)?;
            if p.is_dir() {
                return Err(Error::refused(format!(
                    "{label} is a directory: give the path of the SQLite file to create"
                )));
            }
            for found in [p.clone(), with_suffix(&p, PARTIAL_FILE)] {
                if !sqlite_replaceable(&found) {
                    return Err(not_scratch(&label, &text, &found.display().to_string()));
                }
            }
            Out::Sqlite(p)
        }
        (Backend::Postgres { url, schema_prefix }, _) => {
            let (schema, label) = match &opts.out {
                PitrOut::Path(out) => (out.clone(), format!("--out `{out}`")),
                PitrOut::Scratch(tag) => {
                    let s = scratch::schema(schema_prefix, tag, &store)?;
                    let label = format!("--scratch {tag} (schema `{s}`)");
                    (s, label)
                }
            };
            if !is_plain_ident(&schema)
                || schema.len() > MAX_SCRATCH_SCHEMA
                || schema.starts_with("pg_")
            {
                return Err(Error::refused(format!(
                    "{label}: for a PostgreSQL-backed store, give the name of the scratch \
                     schema to create: lowercase letters, digits and '_', at most \
                     {MAX_SCRATCH_SCHEMA} characters, not starting with pg_"
                )));
            }
            let live: Vec<String> =
                m.all_stores().iter().map(|s| format!("{schema_prefix}_{}", s.ident())).collect();
            if live.contains(&schema) || schema == "public" {
                return Err(Error::refused(format!(
                    "{label} is a live store's schema: a scratch copy must never overwrite it"
                )));
            }
            let names = [schema.clone(), format!("{schema}{PARTIAL_SCHEMA}")];
            let pool = live::pg_pool(url).await?;
            let blocking = pg_not_replaceable(&pool, &names).await;
            pool.close().await;
            if let Some(found) = blocking? {
                return Err(not_scratch(&label, &schema, &found));
            }
            Out::Postgres { url: url.clone(), schema }
        }
    };

    let Some(snap_ref) = state.snapshots.iter().rev().find(|s| s.at <= t) else {
        return Err(Error::refused(format!(
            "--at {}: no snapshot of `{store}` at or before it",
            opts.at
        )));
    };
    let snap_path = layout.backup(store.name()).join("snapshots").join(&snap_ref.file);
    let snap = read_snapshot(&snap_path, store.name(), store.kind)?;
    if snap.seq != snap_ref.seq || snap.at != snap_ref.at {
        return Err(Error::corrupt(
            &snap_path,
            Some(1),
            format!(
                "snapshot header says {} (entry {}), the manifest {} (entry {})",
                snap.at, snap.seq, snap_ref.at, snap_ref.seq
            ),
        ));
    }
    let snapshot_rows = snap.rows;
    let kind = store.kind;
    let mut tables: Vec<BTreeMap<String, Row>> = snap
        .tables
        .into_iter()
        .map(|rows| rows.into_iter().map(|r| (r[0].to_string(), r)).collect())
        .collect();
    let backup_dir = layout.backup(store.name());
    let end = replay(&backup_dir, snap.seq, &snap.chain, t, state.seq, |e| {
        let Some(ti) = kind.table_index(&e.table) else {
            return Err(format!("unknown table `{}` for store `{store}`", e.table));
        };
        match (e.op, e.row) {
            (Op::Put, Some(row)) => {
                if !row_fits(&kind.tables()[ti], &row)
                    || row[0].as_text() != Some(e.id.as_str())
                    || row[1].as_text() != Some(e.site.as_str())
                {
                    return Err(format!(
                        "the row does not have the columns of `{}` or its id and site",
                        e.table
                    ));
                }
                tables[ti].insert(e.id, row);
            }
            (Op::Del, None) => {
                tables[ti].remove(&e.id);
            }
            _ => return Err("a put needs a row and a delete has none".into()),
        }
        Ok(())
    })?;

    let mut rows = BTreeMap::new();
    for (table, content) in kind.tables().iter().zip(&tables) {
        rows.insert(table.name.to_owned(), content.len() as u64);
    }
    let meta = Meta {
        restore_point: opts.at.to_string(),
        store: store.name().to_owned(),
        snapshot: snap_ref.at.to_string(),
    };
    // By convention the tag's directory is created here, once everything has been checked.
    if let (Some(tag), Out::Sqlite(_) | Out::Media(_)) = (scratch, &out) {
        let tdir = scratch::tag_dir(dir, tag);
        std::fs::create_dir_all(&tdir).at(&tdir)?;
    }
    let mut bytes = None;
    let (out_kind, out_text) = match out {
        Out::Sqlite(path) => {
            write_sqlite(&path, &store, &tables, &meta).await?;
            ("sqlite", path.display().to_string())
        }
        Out::Postgres { url, schema } => {
            write_postgres(&url, &schema, &store, &tables, &meta).await?;
            ("postgres", schema)
        }
        Out::Media(path) => {
            bytes = Some(write_media(&layout, &path, &tables, &meta)?);
            ("directory", path.display().to_string())
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    Ok(PitrReport {
        store: store.name().to_owned(),
        restore_point: opts.at,
        snapshot: snap_ref.at,
        last_write: end.last_ts.unwrap_or(snap_ref.at),
        journal_entries: end.applied,
        rows,
        bytes,
        out_kind,
        out: out_text,
        elapsed_s: elapsed,
        rows_per_s: (snapshot_rows + end.applied) as f64 / elapsed.max(1e-9),
    })
}

async fn write_sqlite(
    path: &Path,
    store: &Store,
    tables: &[BTreeMap<String, Row>],
    meta: &Meta,
) -> Result<()> {
    let tmp = with_suffix(path, PARTIAL_FILE);
    for p in ["", "-journal", "-wal", "-shm"].map(|s| with_suffix(&tmp, s)) {
        if p.exists() {
            std::fs::remove_file(&p).at(&p)?;
        }
    }
    let db = live::open_sqlite(&tmp, SqliteMode::Scratch).await?;
    db.exec(&format!("PRAGMA application_id = {SQLITE_SCRATCH_ID}")).await?;
    db.create_tables(store.kind).await?;
    for (table, content) in store.kind.tables().iter().zip(tables) {
        db.load(table, content.values()).await?;
    }
    db.create_indexes(store.kind).await?;
    db.write_meta(&meta.rows()).await?;
    db.close().await;
    for p in [with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
        if p.exists() {
            std::fs::remove_file(&p).at(&p)?;
        }
    }
    std::fs::rename(&tmp, path).at(path)
}

async fn write_postgres(
    url: &str,
    schema: &str,
    store: &Store,
    tables: &[BTreeMap<String, Row>],
    meta: &Meta,
) -> Result<()> {
    let pool = live::pg_pool(url).await?;
    let tmp = format!("{schema}{PARTIAL_SCHEMA}");
    let ctx = || format!("preparing scratch schema `{tmp}`");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{tmp}\" CASCADE")))
        .execute(&pool)
        .await
        .ctx(ctx)?;
    let db = Db::Postgres { pool: pool.clone(), schema: tmp.clone() };
    db.create_schema(Some(PG_SCRATCH_COMMENT)).await?;
    db.create_tables(store.kind).await?;
    for (table, content) in store.kind.tables().iter().zip(tables) {
        db.load(table, content.values()).await?;
    }
    db.create_indexes(store.kind).await?;
    db.write_meta(&meta.rows()).await?;
    let ctx = || format!("renaming scratch schema `{tmp}` to `{schema}`");
    let mut tx = pool.begin().await.ctx(ctx)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
        .execute(&mut *tx)
        .await
        .ctx(ctx)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER SCHEMA \"{tmp}\" RENAME TO \"{schema}\"")))
        .execute(&mut *tx)
        .await
        .ctx(ctx)?;
    tx.commit().await.ctx(ctx)?;
    pool.close().await;
    Ok(())
}

fn write_media(
    layout: &Layout,
    path: &Path,
    tables: &[BTreeMap<String, Row>],
    meta: &Meta,
) -> Result<u64> {
    let tmp = with_suffix(path, PARTIAL_FILE);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    // The marker first: a copy interrupted at any later point is still known as pitr's own.
    std::fs::create_dir(&tmp).at(&tmp)?;
    let marker = tmp.join(MEDIA_MARKER);
    std::fs::write(&marker, "a scratch copy made by `rewind sandbox pitr`\n").at(&marker)?;
    let out = MediaDir::new(&tmp);
    out.create()?;
    let blobs = layout.backup_blobs();
    let mut bytes = 0;
    for row in tables.iter().flat_map(|t| t.values()) {
        let sha = row.get(SHA_COL).and_then(|v| v.as_text()).unwrap_or_default().to_owned();
        let src = blobs.join(blob_rel(&sha));
        let content = std::fs::read(&src).at(&src)?;
        if sha256_hex(&content) != sha {
            return Err(Error::corrupt(
                &src,
                None,
                "media version content does not match its hash",
            ));
        }
        out.put_blob(&sha, &content)?;
        bytes += content.len() as u64;
        out.put(row)?;
    }
    let meta_path = tmp.join(META_FILE);
    let text = serde_json::to_string(meta)
        .map_err(|e| Error::Io { path: meta_path.clone(), source: std::io::Error::other(e) })?;
    std::fs::write(&meta_path, text).at(&meta_path)?;
    if path.exists() {
        std::fs::remove_dir_all(path).at(path)?;
    }
    std::fs::rename(&tmp, path).at(path)?;
    Ok(bytes)
}
