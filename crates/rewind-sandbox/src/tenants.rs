//! The sandbox's tenant registry: what an ID is (a site or an app installation) and what state
//! it is in, as a control plane knows it. Live sites come from the catalog (`sites.status`), app
//! installations from the apps store, and sites the incident deleted (no longer in the catalog)
//! from the sandbox's deletion record. It only reads. `rewind sandbox resolve` serves it to a
//! workflow's `[preflight]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::error::{DbContext, Error, Result};
use crate::manifest::{Backend, Layout, Manifest};
use crate::schema::{Store, StoreKind};

/// What the registry says of one ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The ID, as asked.
    pub id: String,
    /// `site` or `app`.
    pub kind: &'static str,
    /// A site: its catalog status (`active`, ...) or `deleted`. An app: `installed`.
    pub state: String,
}

/// Looks up `ids` (lower-cased) in the sandbox at `dir`. Unknown IDs are left out.
pub async fn tenants(dir: &Path, ids: &[String]) -> Result<Vec<Tenant>> {
    let m = Manifest::load(dir)?;
    let layout = Layout::new(dir);
    let wanted: BTreeSet<String> = ids.iter().map(|i| i.trim().to_ascii_lowercase()).collect();
    let mut found: BTreeMap<String, Tenant> = BTreeMap::new();
    let catalog = Store::single(StoreKind::Catalog);
    let apps = Store::single(StoreKind::Apps);
    for (id, status) in read(&m, &layout, &catalog, "sites", "status", &wanted).await? {
        found.insert(id.clone(), Tenant { id, kind: "site", state: status });
    }
    for (id, _) in read(&m, &layout, &apps, "installations", "app", &wanted).await? {
        found.entry(id.clone()).or_insert(Tenant {
            id,
            kind: "app",
            state: "installed".to_owned(),
        });
    }
    for d in m.incident.iter().flat_map(|i| &i.deleted) {
        let id = d.site.to_string();
        if wanted.contains(&id) {
            found.entry(id.clone()).or_insert(Tenant {
                id,
                kind: "site",
                state: "deleted".to_owned(),
            });
        }
    }
    Ok(ids.iter().filter_map(|i| found.get(&i.trim().to_ascii_lowercase())).cloned().collect())
}

/// `(id, column)` of the rows of a live store's `table` whose id is wanted. The table and
/// column names are the schema's own; the ids are compared in memory, never put into SQL.
async fn read(
    m: &Manifest,
    layout: &Layout,
    store: &Store,
    table: &str,
    column: &str,
    wanted: &BTreeSet<String>,
) -> Result<Vec<(String, String)>> {
    // A clusters sandbox keeps the catalog on a PostgreSQL server, in a database of its own.
    let on_server = m.backend.server_of(store.name()).map(|s| {
        let url = s.url(&crate::clusters::Server::database(store));
        (Backend::Postgres { url, schema_prefix: String::new() }, s.engine)
    });
    let backend = match &on_server {
        Some((_, crate::clusters::ServerEngine::Mariadb)) => {
            return Err(Error::refused(format!(
                "resolve: store `{store}` is on MariaDB, which the tenant registry does not read"
            )));
        }
        Some((b, _)) => b,
        None => &m.backend,
    };
    let rows = match backend {
        Backend::Sqlite | Backend::Clusters { .. } => {
            let path = layout.dir.join(Layout::sqlite_rel(store));
            let what = path.display().to_string();
            let mut conn = SqliteConnectOptions::new()
                .filename(&path)
                .read_only(true)
                .connect()
                .await
                .ctx(|| format!("resolve: opening `{what}` read-only"))?;
            let sql = format!("SELECT id, {column} FROM {table}");
            let out: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .ctx(|| format!("resolve: reading `{table}` of `{what}`"))?;
            conn.close().await.ctx(|| what.clone())?;
            out
        }
        Backend::Postgres { url, schema_prefix } => {
            let schema = if schema_prefix.is_empty() {
                "public".to_owned()
            } else {
                format!("{schema_prefix}_{}", store.ident())
            };
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| Error::refused(format!("{e}")))?;
            let mut conn =
                opts.connect().await.ctx(|| format!("resolve: connecting for `{schema}`"))?;
            let sql = format!("SELECT id, {column} FROM \"{schema}\".{table}");
            let out: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .ctx(|| format!("resolve: reading `{schema}.{table}`"))?;
            conn.close().await.ctx(|| schema.clone())?;
            out
        }
    };
    Ok(rows.into_iter().filter(|(id, _)| wanted.contains(&id.to_ascii_lowercase())).collect())
}
