//! Database connections for the SQL executors: native sqlx pools, made on first use and shared
//! by every attempt of a run (and of every run the process drives): one per PostgreSQL server,
//! one per MySQL/MariaDB URL, one per SQLite file (and one of read-only connections per SQLite
//! file). No attempt opens a fresh connection of its own to run its statements.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use rewind_model::redact_url as redact;
use rewind_model::{form_decode, redact_text};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{
    Connection as _, MySql, MySqlConnection, MySqlPool, PgConnection, PgPool, Postgres, Sqlite,
    SqlitePool,
};

/// How long a SQLite writer waits for another writer's lock.
pub(crate) const SQLITE_BUSY: Duration = Duration::from_secs(30);

/// How long the first connection to a PostgreSQL or MySQL server may take before it is given up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    Mysql,
}

pub(crate) fn kind(url: &str) -> Result<Kind, String> {
    if url.starts_with("sqlite:") {
        Ok(Kind::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Kind::Postgres)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(Kind::Mysql)
    } else {
        Err(format!("{} is not a sqlite://, postgres:// or mysql:// URL", redact(url)))
    }
}

/// Connections a process's SQL executors hold open to one PostgreSQL server at most (pooled
/// statements) and, separately, the `copy` streams it runs at once against it (two connections
/// each). The sandbox puts every store in its own schema of one server, and a run reaches
/// dozens of stores: one pool per URL would exhaust the server's `max_connections`.
pub const PG_POOL_CONNECTIONS: u32 = 8;
/// See [`PG_POOL_CONNECTIONS`].
pub const PG_COPY_STREAMS: usize = 4;
/// Connections one MySQL/MariaDB pool (one per URL) holds open at most.
pub const MYSQL_POOL_CONNECTIONS: u32 = 8;
/// Connections one SQLite pool (one per file, and one read-only per file) holds open at most.
const SQLITE_POOL_CONNECTIONS: u32 = 4;
/// How long an unused PostgreSQL or MySQL connection stays open in its pool.
const IDLE: Duration = Duration::from_secs(30);

type Map<P> = Arc<tokio::sync::Mutex<HashMap<String, P>>>;

/// Pools: one per PostgreSQL server, whose connections are pointed at the URL's schema
/// (`options[search_path]=…`) each time they are handed out; one per MySQL/MariaDB URL; one per
/// SQLite URL, and one of read-only connections per SQLite URL.
#[derive(Clone)]
pub struct Pools {
    pg: Map<PgPool>,
    mysql: Map<MySqlPool>,
    sqlite: Map<SqlitePool>,
    /// SQLite pools of read-only connections, by URL: never handed to a writer.
    sqlite_read_only: Map<SqlitePool>,
    copies: Arc<tokio::sync::Semaphore>,
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            pg: Arc::default(),
            mysql: Arc::default(),
            sqlite: Arc::default(),
            sqlite_read_only: Arc::default(),
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

/// The pool `key` maps to in `map`, made by `make` (then probed by `probe`) on first use.
async fn pool_for<P: Clone, F>(
    map: &Map<P>,
    key: &str,
    make: impl FnOnce() -> Result<P, String>,
    probe: impl FnOnce() -> F,
) -> Result<P, String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let mut map = map.lock().await;
    if let Some(p) = map.get(key) {
        return Ok(p.clone());
    }
    let pool = make()?;
    // The first connection to a server is a direct one, so that a server that refuses it or
    // does not know the user or the database says so now, in its own words, instead of the
    // pool retrying until its acquire timeout.
    probe().await?;
    map.insert(key.to_owned(), pool.clone());
    Ok(pool)
}

/// A connection of `pool`; when the pool can only say that it timed out, `probe` asks the
/// server directly why (refused, unknown host, authentication, no such database).
async fn acquire_from<DB: sqlx::Database, F>(
    pool: &sqlx::Pool<DB>,
    url: &str,
    probe: impl FnOnce() -> F,
) -> Result<PoolConnection<DB>, String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    match pool.acquire().await {
        Ok(c) => Ok(c),
        Err(sqlx::Error::PoolTimedOut) => {
            probe().await?;
            pool.acquire().await.map_err(|e| cannot_connect(url, &e))
        }
        Err(e) => Err(cannot_connect(url, &e)),
    }
}

impl Pools {
    /// A connection of the PostgreSQL server `url` names, from the server's pool (made on first
    /// use), with `search_path` set for this URL (or reset to the session's default when the
    /// URL names none).
    pub(crate) async fn pg(&self, url: &str) -> Result<PoolConnection<Postgres>, String> {
        let (key, search_path) = split_search_path(url);
        let make = || {
            let options = PgConnectOptions::from_str(&key).map_err(|e| cannot_connect(&key, &e))?;
            Ok(PgPoolOptions::new()
                .acquire_timeout(SQLITE_BUSY)
                .max_connections(PG_POOL_CONNECTIONS)
                .idle_timeout(Some(IDLE))
                // What an attempt `SET` on its session (a `sql` step's `SET TimeZone`, or worse
                // `SET session_replication_role = replica`) does not reach the next attempt
                // that gets the connection. A connection that cannot be reset is closed.
                .after_release(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor as _;
                        conn.execute("RESET ALL").await.map(|_| true)
                    })
                })
                .connect_lazy_with(options))
        };
        let pool = pool_for(&self.pg, &key, make, || probe_pg(&key)).await?;
        let mut conn = acquire_from(&pool, url, || probe_pg(&key)).await?;
        let set = match &search_path {
            Some(p) => sqlx::query("SELECT set_config('search_path', $1, false)")
                .bind(p.clone())
                .execute(&mut *conn)
                .await
                .map(drop),
            None => sqlx::query("RESET search_path").execute(&mut *conn).await.map(drop),
        };
        set.map_err(|e| {
            format!(
                "cannot set search_path on {}: {}",
                redact(url),
                rewind_slice::error::describe(&e)
            )
        })?;
        Ok(conn)
    }

    /// A connection of the MySQL/MariaDB pool of `url` (made on first use).
    pub(crate) async fn mysql(&self, url: &str) -> Result<PoolConnection<MySql>, String> {
        let make = || {
            let options =
                MySqlConnectOptions::from_str(url).map_err(|e| cannot_connect(url, &e))?;
            Ok(MySqlPoolOptions::new()
                .acquire_timeout(SQLITE_BUSY)
                .max_connections(MYSQL_POOL_CONNECTIONS)
                .idle_timeout(Some(IDLE))
                .connect_lazy_with(options))
        };
        let pool = pool_for(&self.mysql, url, make, || probe_mysql(url)).await?;
        acquire_from(&pool, url, || probe_mysql(url)).await
    }

    /// A connection of the SQLite pool of `url` (made on first use); writers wait
    /// [`SQLITE_BUSY`] for each other's locks.
    pub(crate) async fn sqlite(&self, url: &str) -> Result<PoolConnection<Sqlite>, String> {
        let make = || sqlite_pool(url, false).map_err(|e| cannot_connect(url, &e));
        let pool = pool_for(&self.sqlite, url, make, || async { Ok(()) }).await?;
        pool.acquire().await.map_err(|e| cannot_connect(url, &e))
    }

    /// A connection for a read-only session on the SQLite file `url` names
    /// ([`crate::readonly`]): of a pool of its own, opened read-only (`mode=ro`) with
    /// `PRAGMA query_only = ON`, never handed to a writer. (PostgreSQL and MySQL sessions use
    /// their server's pool: the session makes its transaction read-only.)
    pub(crate) async fn sqlite_read_only(
        &self,
        url: &str,
    ) -> Result<PoolConnection<Sqlite>, String> {
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot open {} read-only: {}", redact(url), redact_text(&e.to_string()))
        };
        let make = || sqlite_pool(&sqlite_read_only_url(url), true).map_err(|e| cannot(&e));
        let pool = pool_for(&self.sqlite_read_only, url, make, || async { Ok(()) }).await?;
        pool.acquire().await.map_err(|e| cannot(&e))
    }

    /// A turn to run a PostgreSQL `copy` stream (at most [`PG_COPY_STREAMS`] at once).
    pub(crate) async fn copy_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.copies.clone().acquire_owned().await.expect("copy semaphore closed")
    }
}

/// A SQLite pool for `url`: `busy_timeout` [`SQLITE_BUSY`]; `read_only` adds
/// `PRAGMA query_only = ON` to every connection (the URL opens the file `mode=ro` too).
fn sqlite_pool(url: &str, read_only: bool) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .busy_timeout(SQLITE_BUSY)
        .pragma("query_only", if read_only { "ON" } else { "OFF" });
    Ok(SqlitePoolOptions::new()
        .acquire_timeout(SQLITE_BUSY)
        .max_connections(SQLITE_POOL_CONNECTIONS)
        .connect_lazy_with(options))
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

/// Connects to the PostgreSQL server `url` names once, directly, within [`CONNECT_TIMEOUT`];
/// the driver's error, redacted, if it cannot.
pub(crate) async fn probe_pg(url: &str) -> Result<(), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(cannot_connect(url, &rewind_slice::error::describe(&e))),
        Err(_) => Err(no_answer(url)),
    }
}

/// [`probe_pg`] for a MySQL/MariaDB server.
pub(crate) async fn probe_mysql(url: &str) -> Result<(), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(cannot_connect(url, &rewind_slice::error::describe(&e))),
        Err(_) => Err(no_answer(url)),
    }
}

fn no_answer(url: &str) -> String {
    cannot_connect(url, &format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
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
