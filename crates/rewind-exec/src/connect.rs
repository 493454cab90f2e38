//! Database connections for the SQL executors: one small pool per URL, made on first use and
//! shared by every attempt of a run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use rewind_model::redact_url as redact;
use rewind_model::{form_decode, redact_text};
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _};

/// How long a SQLite writer waits for another writer's lock.
pub(crate) const SQLITE_BUSY: Duration = Duration::from_secs(30);

/// How long the first connection to a PostgreSQL server may take before it is given up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

pub(crate) fn kind(url: &str) -> Result<Kind, String> {
    if url.starts_with("sqlite:") {
        Ok(Kind::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Kind::Postgres)
    } else {
        Err(format!("{} is not a sqlite:// or postgres:// URL", redact(url)))
    }
}

/// Connections a process's SQL executors hold open to one PostgreSQL server at most (pooled
/// statements) and, separately, the `copy` streams it runs at once against it (two connections
/// each). The sandbox puts every store in its own schema of one server, and a run reaches
/// dozens of stores: one pool per URL would exhaust the server's `max_connections`.
pub const PG_POOL_CONNECTIONS: u32 = 8;
/// See [`PG_POOL_CONNECTIONS`].
pub const PG_COPY_STREAMS: usize = 4;

/// Pools: one per SQLite URL; one per PostgreSQL server, whose connections are pointed at the
/// URL's schema (`options[search_path]=…`) each time they are handed out.
#[derive(Clone)]
pub struct Pools {
    inner: Arc<tokio::sync::Mutex<HashMap<String, AnyPool>>>,
    /// SQLite pools of read-only connections, by URL: never handed to a writer.
    read_only: Arc<tokio::sync::Mutex<HashMap<String, AnyPool>>>,
    copies: Arc<tokio::sync::Semaphore>,
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            read_only: Arc::default(),
            copies: Arc::new(tokio::sync::Semaphore::new(PG_COPY_STREAMS)),
        }
    }
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

/// A PostgreSQL URL split into the server part (the pool's key) and the `search_path` its
/// `options[search_path]=` query parameter asks for, decoded as sqlx decodes query values (a
/// rendered template percent-encodes them). A value that does not decode stays in the key, for
/// sqlx to refuse.
pub(crate) fn split_search_path(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut path = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        let decoded =
            pair.split_once('=').and_then(|(k, v)| Some((form_decode(k)?, form_decode(v)?)));
        match decoded {
            Some((k, v)) if k == "options[search_path]" => path = Some(v),
            _ => rest.push(pair),
        }
    }
    if path.is_none() {
        return (url.to_owned(), None);
    }
    let key = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    (key, path)
}

impl Pools {
    /// A connection for `url`, connecting the pool on first use. On PostgreSQL the connection
    /// comes from the server's pool with `search_path` set for this URL (or reset to the
    /// session's default when the URL names none).
    pub async fn acquire(&self, url: &str) -> Result<PoolConnection<Any>, String> {
        let kind = kind(url)?;
        let (key, search_path) = match kind {
            Kind::Sqlite => (url.to_owned(), None),
            Kind::Postgres => split_search_path(url),
        };
        let pool = self.pool(&key, kind).await?;
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            // A pool that cannot connect says only that it timed out: ask the server directly
            // why (refused, unknown host, authentication, no such database).
            Err(sqlx::Error::PoolTimedOut) if kind == Kind::Postgres => {
                probe(&key).await?;
                pool.acquire().await.map_err(|e| cannot_connect(url, &e))?
            }
            Err(e) => return Err(cannot_connect(url, &e)),
        };
        if kind == Kind::Postgres {
            let set = match &search_path {
                Some(p) => sqlx::query("SELECT set_config('search_path', $1, false)")
                    .bind(p.clone())
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                None => sqlx::query("RESET search_path").execute(&mut *conn).await.map(drop),
            };
            set.map_err(|e| format!("cannot set search_path on {}: {e}", redact(url)))?;
        }
        Ok(conn)
    }

    async fn pool(&self, key: &str, kind: Kind) -> Result<AnyPool, String> {
        sqlx::any::install_default_drivers();
        let mut map = self.inner.lock().await;
        if let Some(p) = map.get(key) {
            return Ok(p.clone());
        }
        let mut options = AnyPoolOptions::new().acquire_timeout(SQLITE_BUSY);
        options = match kind {
            Kind::Sqlite => options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    Ok(())
                })
            }),
            Kind::Postgres => options
                .max_connections(PG_POOL_CONNECTIONS)
                .idle_timeout(Some(Duration::from_secs(30))),
        };
        let pool = options.connect_lazy(key).map_err(|e| cannot_connect(key, &e))?;
        if kind == Kind::Postgres {
            // The first connection to a server is a direct one, so that a server that refuses
            // it or does not know the user or the database says so now, in its own words,
            // instead of the pool retrying until its acquire timeout.
            probe(key).await?;
        }
        map.insert(key.to_owned(), pool.clone());
        Ok(pool)
    }

    /// A connection for a read-only session on `url` ([`crate::readonly`]). On PostgreSQL, a
    /// connection of the server's pool, as [`Pools::acquire`] gives (the session makes its
    /// transaction read-only). On SQLite, a connection of a pool of its own, opened read-only
    /// (`mode=ro`) with `PRAGMA query_only = ON`: a writer never gets it.
    pub(crate) async fn acquire_read_only(&self, url: &str) -> Result<PoolConnection<Any>, String> {
        if kind(url)? != Kind::Sqlite {
            return self.acquire(url).await;
        }
        let pool = {
            let mut map = self.read_only.lock().await;
            match map.get(url) {
                Some(p) => p.clone(),
                None => {
                    sqlx::any::install_default_drivers();
                    let pool = AnyPoolOptions::new()
                        .acquire_timeout(SQLITE_BUSY)
                        .max_connections(4)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                use sqlx::Executor;
                                conn.execute("PRAGMA busy_timeout = 30000").await?;
                                conn.execute("PRAGMA query_only = ON").await?;
                                Ok(())
                            })
                        })
                        .connect_lazy(&sqlite_read_only_url(url))
                        .map_err(|e| format!("cannot open {} read-only: {e}", redact(url)))?;
                    map.insert(url.to_owned(), pool.clone());
                    pool
                }
            }
        };
        pool.acquire().await.map_err(|e| format!("cannot open {} read-only: {e}", redact(url)))
    }

    /// A turn to run a PostgreSQL `copy` stream (at most [`PG_COPY_STREAMS`] at once).
    pub(crate) async fn copy_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.copies.clone().acquire_owned().await.expect("copy semaphore closed")
    }
}

/// A SQLite URL that opens its file read-only: any `mode` it names replaced by `mode=ro`.
pub(crate) fn sqlite_read_only_url(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<&str> =
        query.split('&').filter(|p| !p.is_empty() && !p.starts_with("mode=")).collect();
    pairs.push("mode=ro");
    format!("{base}?{}", pairs.join("&"))
}

/// "cannot connect to URL: why", the URL's password and any in the error redacted.
fn cannot_connect(url: &str, e: &dyn std::fmt::Display) -> String {
    format!("cannot connect to {}: {}", redact(url), redact_text(&e.to_string()))
}

/// Connects to `url` once, directly, within [`CONNECT_TIMEOUT`]; the driver's error, redacted,
/// if it cannot.
pub(crate) async fn probe(url: &str) -> Result<(), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(cannot_connect(url, &e)),
        Err(_) => {
            Err(cannot_connect(url, &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))
        }
    }
}

/// `"name"`: an identifier quoted for SQL, an embedded `"` doubled. Every table and column name
/// spliced into SQL goes through it: names the workflow validated, and names read from the
/// catalogs (`pragma_table_info`, `information_schema.columns`), which may hold anything.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_sqlite_url_opens_read_only() {
        assert_eq!(sqlite_read_only_url("sqlite:///d/x.db"), "sqlite:///d/x.db?mode=ro");
        assert_eq!(
            sqlite_read_only_url("sqlite:///d/x.db?mode=rwc&cache=shared"),
            "sqlite:///d/x.db?cache=shared&mode=ro"
        );
    }

    #[test]
    fn identifiers_are_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote("sites"), r#""sites""#);
        assert_eq!(quote(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote("has space"), r#""has space""#);
        assert_eq!(quote(r#"""#), r#""""""#);
    }

    #[test]
    fn a_search_path_option_is_split_off_the_pool_key() {
        let url = "postgres://u@h/db?sslmode=disable&options[search_path]=rw1_catalog";
        assert_eq!(
            split_search_path(url),
            ("postgres://u@h/db?sslmode=disable".to_owned(), Some("rw1_catalog".to_owned()))
        );
        assert_eq!(
            split_search_path("postgres://u@h/db?options[search_path]=s"),
            ("postgres://u@h/db".to_owned(), Some("s".to_owned()))
        );
        let plain = "postgres://u@h/db?sslmode=disable";
        assert_eq!(split_search_path(plain), (plain.to_owned(), None));
        assert_eq!(split_search_path("postgres://u@h/db"), ("postgres://u@h/db".to_owned(), None));
    }

    #[test]
    fn a_search_path_is_decoded_as_sqlx_decodes_query_values() {
        assert_eq!(
            split_search_path("postgres://h/db?options%5Bsearch_path%5D=a%2Cb+c&x=%41"),
            ("postgres://h/db?x=%41".to_owned(), Some("a,b c".to_owned()))
        );
        let bad = "postgres://h/db?options[search_path]=%zz";
        assert_eq!(split_search_path(bad), (bad.to_owned(), None), "sqlx refuses it");
    }
}
