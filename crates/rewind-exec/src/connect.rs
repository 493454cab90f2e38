//! Database connections for the SQL executors: one small pool per URL, made on first use and
//! shared by every attempt of a run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// How long a SQLite writer waits for another writer's lock.
pub(crate) const SQLITE_BUSY: Duration = Duration::from_secs(30);

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

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

/// Pools by URL.
#[derive(Clone, Default)]
pub struct Pools {
    inner: Arc<tokio::sync::Mutex<HashMap<String, AnyPool>>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

impl Pools {
    /// The pool for `url`, connecting on first use.
    pub async fn get(&self, url: &str) -> Result<AnyPool, String> {
        sqlx::any::install_default_drivers();
        let mut map = self.inner.lock().await;
        if let Some(p) = map.get(url) {
            return Ok(p.clone());
        }
        let mut options = AnyPoolOptions::new().max_connections(4).acquire_timeout(SQLITE_BUSY);
        if kind(url)? == Kind::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
        map.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }
}

/// `"name"`: an identifier the workflow validated (`[A-Za-z_][A-Za-z0-9_]*`), quoted.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}
