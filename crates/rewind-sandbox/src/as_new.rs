//! Sites restored as new sites (Restore 1, and `as-new` drills): their ids, how the sandbox
//! knows one (its claim), and how a drill removes one again.
//!
//! A restore as a new site writes the site's data under an id no site has (`copy … as`,
//! [`crate::restore_media_as`]). `sites --as-new` hands out such ids ([`new_site_ids`]). Every
//! `copy … as` records the new tenant in the destination's `rewind_key_map` (the claim row
//! `(new_tenant, '', '', '')`), and the catalog's claim is what this module trusts: a tenant
//! claimed there was written by a restore as new ([`claimed`]), so the outbox takes requests
//! about it, media can be restored as it, and [`drop_tenant`] may remove it. A site of the
//! sandbox is never one, whatever the key maps say.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use rewind_model::TargetId;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::manifest::{Backend, Layout, Manifest};
use crate::media::{MediaDir, SHA_COL, parse_object};
use crate::schema::{Store, StoreKind};

/// The table in which `copy … as` records the tenants it wrote and the integer keys it mapped:
/// `(new_tenant, tbl, old_key, new_key)`; its claim of a new tenant has `tbl = ''`.
pub(crate) const KEY_MAP: &str = "rewind_key_map";

/// `n` ids for sites restored as new: random (v4) uuids, none a site of the sandbox, none
/// repeated.
pub fn new_site_ids(m: &Manifest, n: usize) -> Vec<TargetId> {
    let taken: BTreeSet<TargetId> = m.sites.iter().map(|s| s.id).collect();
    let mut out: Vec<TargetId> = Vec::with_capacity(n);
    while out.len() < n {
        let id = TargetId::from_uuid(uuid::Uuid::new_v4());
        if !taken.contains(&id) && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Connects to the catalog store (where the claims that count are).
async fn catalog(dir: &Path, m: &Manifest) -> Result<crate::live::Db> {
    if let Backend::Clusters { servers } = &m.backend {
        crate::clusters::require_running(servers)?;
    }
    let store = Store::single(StoreKind::Catalog);
    let mut dbs =
        crate::system::connect(&Layout::new(dir), &m.backend, std::slice::from_ref(&store)).await?;
    dbs.remove(store.name())
        .ok_or_else(|| Error::refused("the sandbox has no catalog store".to_owned()))
}

async fn claims_in(db: &crate::live::Db, site: &str) -> Result<u64> {
    if !db.has_table(KEY_MAP).await? {
        return Ok(0);
    }
    db.count_where(KEY_MAP, "new_tenant", site, Some("tbl")).await
}

/// True when `site` is no site of the sandbox and a restore as new claimed it in the catalog
/// (`rewind_key_map`, `tbl = ''`).
pub async fn claimed(dir: &Path, site: &TargetId) -> Result<bool> {
    let m = Manifest::load(dir)?;
    if m.site(site).is_some() {
        return Ok(false);
    }
    let db = catalog(dir, &m).await?;
    let n = claims_in(&db, &site.to_string()).await;
    db.close().await;
    Ok(n? > 0)
}

/// Refused unless `site` is a new site a restore as new claimed in the catalog: what `what`
/// (a command, for the message) may only do to such a site.
pub(crate) async fn require_claimed(dir: &Path, site: &TargetId, what: &str) -> Result<()> {
    let m = Manifest::load(dir)?;
    if m.site(site).is_some() {
        return Err(Error::refused(format!(
            "{what}: {site} is a site of the sandbox, not a new site a restore as new wrote"
        )));
    }
    if claimed(dir, site).await? {
        return Ok(());
    }
    Err(Error::refused(format!(
        "{what}: {site} is no site of the sandbox, and no restore as new claimed it in the \
         catalog's {KEY_MAP} (restore the site's catalog record as it first, with `copy … as`)"
    )))
}

/// One table's rows [`drop_tenant`] removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The store.
    pub store: String,
    /// The table (`rewind_key_map` for the tenant's key maps and claim).
    pub table: String,
    /// Rows removed.
    pub rows: u64,
}

/// What `drop-tenant` did.
#[derive(Clone, Debug, Serialize)]
pub struct DropTenantReport {
    /// The tenant.
    pub site: TargetId,
    /// Stores it removed something from (`media` for objects).
    pub stores: Vec<String>,
    /// Rows removed, per store and table.
    pub removed: Vec<Removed>,
    /// Media objects removed.
    pub objects: u64,
    /// Media contents removed (those no other object uses).
    pub blobs: u64,
}

/// Removes a tenant a restore as new wrote from every store: its rows (`site_id`), its media
/// objects and the contents only they used, and its `rewind_key_map` rows, the catalog's claim
/// last (so an interrupted drop can be run again). Refused, nothing removed, for a site of the
/// sandbox, for a new site that was activated (handed to its customer: Restore 1's sites), and
/// for a tenant that has data but no claim in the catalog: it must never remove a customer's
/// site. A tenant with neither claim nor data has nothing to drop (a second call).
pub async fn drop_tenant(dir: &Path, site: &TargetId) -> Result<DropTenantReport> {
    let m = Manifest::load(dir)?;
    if m.site(site).is_some() {
        return Err(Error::refused(format!(
            "drop-tenant: {site} is a site of the sandbox: drop-tenant removes only a new site \
             a restore as new wrote (one with a claim in the catalog's {KEY_MAP}); nothing \
             removed"
        )));
    }
    if crate::outbox::activated(dir, site)? {
        return Err(Error::refused(format!(
            "drop-tenant: {site} was restored as a new site and handed to its customer (routing \
             was asked to activate it): it is a customer's site now; nothing removed"
        )));
    }
    if let Backend::Clusters { servers } = &m.backend {
        crate::clusters::require_running(servers)?;
    }
    let layout = Layout::new(dir);
    let stores = m.all_stores();
    let dbs = crate::system::connect(&layout, &m.backend, &stores).await?;
    let result = drop_from(&layout, &stores, &dbs, site).await;
    for db in dbs.values() {
        db.close().await;
    }
    result
}

async fn drop_from(
    layout: &Layout,
    stores: &[Store],
    dbs: &std::collections::BTreeMap<String, crate::live::Db>,
    site: &TargetId,
) -> Result<DropTenantReport> {
    let id = site.to_string();
    let media = MediaDir::new(&layout.media());
    let mut report = DropTenantReport {
        site: *site,
        stores: Vec::new(),
        removed: Vec::new(),
        objects: 0,
        blobs: 0,
    };
    let catalog = dbs
        .get(StoreKind::Catalog.name())
        .ok_or_else(|| Error::refused("the sandbox has no catalog store".to_owned()))?;
    if claims_in(catalog, &id).await? == 0 {
        // No claim: a second call after a drop finds nothing; anything else is not ours.
        let mut found = Vec::new();
        for s in stores {
            let Some(db) = dbs.get(s.name()) else { continue };
            for t in s.kind.tables() {
                let n = db.count_where(t.name, "site_id", &id, None).await?;
                if n > 0 {
                    found.push(format!("{} {}.{}", n, s.name(), t.name));
                }
            }
        }
        let objects = media.site_files(&id)?.len();
        if objects > 0 {
            found.push(format!("{objects} media objects"));
        }
        if found.is_empty() {
            return Ok(report);
        }
        return Err(Error::refused(format!(
            "drop-tenant: {id} has data ({}) but no claim in the catalog's {KEY_MAP}: no restore \
             as new wrote it, so it is not drop-tenant's to remove; nothing removed",
            found.join(", ")
        )));
    }

    // Serialized with a restore of the site's media (restore-media's per-site lock).
    let staging = layout.media().join(".staging");
    std::fs::create_dir_all(&staging).at(&staging)?;
    let lock_path = staging.join(format!("{id}.lock"));
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path);
    let lock = lock.at(&lock_path)?;
    lock.lock().at(&lock_path)?;

    let mut touched: BTreeSet<String> = BTreeSet::new();
    let key_map = [(KEY_MAP, "new_tenant")];
    let catalog_store = Store::single(StoreKind::Catalog);
    // Every store but the catalog, then media, then the catalog with its claim.
    for s in stores.iter().filter(|s| s.kind != StoreKind::Catalog) {
        let Some(db) = dbs.get(s.name()) else { continue };
        let extra: &[(&str, &str)] = if db.has_table(KEY_MAP).await? { &key_map } else { &[] };
        for (table, rows) in db.delete_site(s.kind, &id, extra).await? {
            touched.insert(s.name().to_owned());
            report.removed.push(Removed { store: s.name().to_owned(), table, rows });
        }
    }
    let (objects, blobs) = drop_media(&media, &id)?;
    if objects > 0 {
        touched.insert("media".to_owned());
    }
    report.objects = objects;
    report.blobs = blobs;
    for (table, rows) in catalog.delete_site(StoreKind::Catalog, &id, &key_map).await? {
        touched.insert(catalog_store.name().to_owned());
        report.removed.push(Removed { store: catalog_store.name().to_owned(), table, rows });
    }
    let _ = lock.unlock();
    report.stores =
        stores.iter().map(|s| s.name().to_owned()).filter(|n| touched.contains(n)).collect();
    Ok(report)
}

/// Removes a site's media objects, then each content none of the remaining objects uses.
fn drop_media(media: &MediaDir, site: &str) -> Result<(u64, u64)> {
    let files = media.site_files(site)?;
    if files.is_empty() {
        return Ok((0, 0));
    }
    let dir = media.objects().join(site);
    let mut shas = BTreeSet::new();
    for (name, bytes) in &files {
        let path = dir.join(name);
        let text = String::from_utf8_lossy(bytes);
        if let Ok(row) = parse_object(&path, &text)
            && let Some(sha) = row.get(SHA_COL).and_then(|v| v.as_text())
        {
            shas.insert(sha.to_owned());
        }
    }
    std::fs::remove_dir_all(&dir).at(&dir)?;
    let still: BTreeSet<String> = media
        .read_all()?
        .iter()
        .filter_map(|r| r.get(SHA_COL).and_then(|v| v.as_text()).map(str::to_owned))
        .collect();
    let mut blobs = 0;
    for sha in shas.difference(&still) {
        media.remove_blob(sha)?;
        blobs += 1;
    }
    Ok((files.len() as u64, blobs))
}

/// The sites the live catalog holds now, in id order: the sandbox's sites that are not deleted
/// (what its backups can restore, so what a DR drill samples from: `sites --live`), and with
/// `with_new` also every other site of the catalog, such as a new site a restore as new wrote
/// (Restore 1's, or a drill's until its cleanup drops it: how a drill sees that its cleanup
/// left no new site behind, `sites --live --with-new`). Reads only.
pub async fn live_sites(dir: &Path, with_new: bool) -> Result<Vec<crate::manifest::Site>> {
    let m = Manifest::load(dir)?;
    let db = catalog(dir, &m).await?;
    let rows = db.read_all(&StoreKind::Catalog.tables()[0]).await;
    db.close().await;
    let text = |row: &[crate::value::Val], i: usize| {
        row.get(i).and_then(|v| v.as_text()).unwrap_or_default().to_owned()
    };
    let mut sites = Vec::new();
    for row in rows? {
        // sites: id, site_id, url, cloud_id, region, shard, products (`;`-joined), ...
        let id = text(&row, 0);
        let Ok(id) = id.parse::<TargetId>() else {
            return Err(Error::refused(format!(
                "the live catalog holds a site id {id:?} that is not a uuid"
            )));
        };
        let products = text(&row, 6);
        sites.push(crate::manifest::Site {
            id,
            url: text(&row, 2),
            region: text(&row, 4),
            shard: text(&row, 5),
            products: products.split(';').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        });
    }
    if !with_new {
        sites.retain(|s| m.site(&s.id).is_some());
    }
    sites.sort_by_key(|s| s.id);
    Ok(sites)
}
