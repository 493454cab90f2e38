//! Stopping an attempt's statements on the server, not only in rewind: when a `sql`, `copy` or
//! `compare` attempt times out or is stopped, what it sent must not go on running after the
//! attempt is recorded as timed out (or cancelled). The same holds for the `[preflight]`'s
//! read-only queries when the preflight times out.
//!
//! An attempt registers every connection it uses in its [`Sessions`] ([`Sessions::pooled`],
//! [`Sessions::direct`]), which asks a PostgreSQL connection for its backend pid
//! (`SELECT pg_backend_pid()`) right after it is acquired; a connection leaves the list when the
//! attempt lets it go. On a timeout or a stop ([`first`], which [`crate::sql::bounded`] and the
//! preflight use), [`Sessions::cancel`]:
//!
//! 1. marks the attempt cancelled: a pooled connection it still holds is closed when dropped,
//!    never returned to the pool mid-statement or mid-transaction ([`Tracked`]);
//! 2. once the attempt's future is dropped, sends `pg_cancel_backend(pid)` for each connection
//!    from a separate short-lived connection, and polls `pg_stat_activity` until the backend
//!    runs no statement ([`GRACE`] at most); a backend still busy then (one blocked writing to a
//!    client that is gone cannot take a cancel) is ended with `pg_terminate_backend` and
//!    waited for likewise.
//!
//! Only then is the timed-out report returned. MySQL and MariaDB the same way: the connection's
//! id (`SELECT CONNECTION_ID()`) when it is acquired; on a timeout or a stop `KILL QUERY <id>`
//! from another connection, `information_schema.PROCESSLIST` polled until the connection runs
//! nothing, `KILL <id>` as the last resort ([`Backend`]).
//!
//! SQLite runs in rewind's process: there is no server to ask. A timed-out attempt's
//! connection is closed instead of returned to its pool; a statement that is inside one long
//! SQLite step finishes that step on sqlx's worker thread, and its transaction is rolled back
//! when the connection closes (or, if rewind dies, by SQLite's journal when the file is next
//! opened). Nothing of it outlives rewind.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Connection as _, MySql, MySqlConnection, Postgres, Sqlite};

use rewind_slice::error::describe;

use crate::connect::{redact, split_search_path};

/// Longest a cancel waits for a statement to end before it ends the backend, and then for the
/// backend to go.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// How often `pg_stat_activity` is asked while waiting.
const POLL: Duration = Duration::from_millis(25);

/// A server-side session that can be told to stop its statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A PostgreSQL backend: the server's URL and the backend's pid.
    Postgres {
        /// The server, for the connection that cancels (its `search_path` option dropped).
        server: String,
        /// `pg_backend_pid()`.
        pid: i32,
    },
    /// A MySQL/MariaDB connection: the URL and its `CONNECTION_ID()`.
    Mysql {
        /// The URL, for the connection that kills the statement.
        url: String,
        /// `CONNECTION_ID()`.
        id: u64,
    },
}

#[derive(Default)]
struct Inner {
    /// The connections in use, by token.
    live: Vec<(u64, Backend)>,
    next: u64,
    cancelled: bool,
}

/// The server-side sessions one attempt is using. Cloneable; clones share the list.
#[derive(Clone, Default)]
pub(crate) struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

/// What a connection does when the attempt holding it was cancelled, before it is dropped.
pub(crate) trait Retire {
    /// Makes sure the connection serves nothing else once dropped.
    fn retire(&mut self);
}

impl<DB: sqlx::Database> Retire for PoolConnection<DB> {
    fn retire(&mut self) {
        self.close_on_drop();
    }
}

/// A pooled connection that can tell which server-side session it is.
pub(crate) trait Identify: Retire + Send {
    /// The session [`stop`] can reach, asked of the connection; `None` for SQLite.
    fn backend<'a>(
        &'a mut self,
        url: &'a str,
    ) -> impl std::future::Future<Output = Result<Option<Backend>, String>> + Send + 'a;
}

impl Identify for PoolConnection<Postgres> {
    async fn backend(&mut self, url: &str) -> Result<Option<Backend>, String> {
        Ok(Some(Backend::Postgres {
            server: split_search_path(url).0,
            pid: pg_pid(self, url).await?,
        }))
    }
}

impl Identify for PoolConnection<MySql> {
    async fn backend(&mut self, url: &str) -> Result<Option<Backend>, String> {
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut **self)
            .await
            .map_err(|e| format!("{}: CONNECTION_ID(): {}", redact(url), describe(&e)))?;
        Ok(Some(Backend::Mysql { url: url.to_owned(), id }))
    }
}

impl Identify for PoolConnection<Sqlite> {
    async fn backend(&mut self, _url: &str) -> Result<Option<Backend>, String> {
        Ok(None)
    }
}

async fn pg_pid(conn: &mut PgConnection, url: &str) -> Result<i32, String> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .map_err(|e| format!("{}: pg_backend_pid(): {}", redact(url), describe(&e)))
}

impl Retire for PgConnection {
    /// A connection of its own: dropping it closes it.
    fn retire(&mut self) {}
}

/// A connection registered in an attempt's [`Sessions`]: derefs to it; leaves the list when
/// dropped, or, when the attempt was cancelled, is retired ([`Retire`]) instead.
pub(crate) struct Tracked<C: Retire> {
    conn: Option<C>,
    token: Option<u64>,
    sessions: Sessions,
}

impl<C: Retire> std::ops::Deref for Tracked<C> {
    type Target = C;

    fn deref(&self) -> &C {
        // Present until `into_inner` or drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("a tracked connection is present"))
    }
}

impl<C: Retire> std::ops::DerefMut for Tracked<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().unwrap_or_else(|| unreachable!("a tracked connection is present"))
    }
}

impl<C: Retire> Tracked<C> {
    /// The connection, out of the list (for a `close()` that consumes it).
    pub(crate) fn into_inner(mut self) -> Option<C> {
        self.untrack();
        self.conn.take()
    }

    fn untrack(&mut self) {
        if let Some(token) = self.token.take() {
            self.sessions.lock().live.retain(|(t, _)| *t != token);
        }
    }
}

impl<C: Retire> Drop for Tracked<C> {
    fn drop(&mut self) {
        let cancelled = self.sessions.lock().cancelled;
        if cancelled {
            if let Some(c) = self.conn.as_mut() {
                c.retire();
            }
        } else {
            self.untrack();
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned list is still the list.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, backend: Option<Backend>) -> Option<u64> {
        let backend = backend?;
        let mut inner = self.lock();
        inner.next += 1;
        let token = inner.next;
        inner.live.push((token, backend));
        Some(token)
    }

    /// Registers a pooled connection to `url`, with its server-side session
    /// ([`Identify::backend`]).
    pub(crate) async fn pooled<C: Identify>(
        &self,
        mut conn: C,
        url: &str,
    ) -> Result<Tracked<C>, String> {
        let backend = conn.backend(url).await?;
        Ok(Tracked { conn: Some(conn), token: self.add(backend), sessions: self.clone() })
    }

    /// Marks the attempt cancelled and takes the list of sessions still in use: from now on a
    /// tracked connection is retired when dropped. Call it before dropping the attempt's work,
    /// then [`stop`] the sessions.
    pub(crate) fn cancel(&self) -> Vec<Backend> {
        let mut inner = self.lock();
        inner.cancelled = true;
        inner.live.drain(..).map(|(_, b)| b).collect()
    }
}

/// Runs `work` until it ends, or until `until` does first: then the attempt is cancelled
/// ([`Sessions::cancel`]), `work` dropped, and its statements stopped on the server and waited
/// for ([`stop`]) before this returns what `until` said and what could not be stopped.
pub(crate) async fn first<T, R>(
    sessions: &Sessions,
    work: impl std::future::Future<Output = T>,
    until: impl std::future::Future<Output = R>,
) -> Result<T, (R, Vec<String>)> {
    let mut work = Box::pin(work);
    let why = tokio::select! {
        r = &mut work => return Ok(r),
        why = until => why,
    };
    let running = sessions.cancel();
    drop(work);
    Err((why, stop(running).await))
}

/// Stops what each backend runs and waits until it ran nothing (see the module documentation).
/// Returns what could not be done, one line each; empty when every statement ended.
pub(crate) async fn stop(backends: Vec<Backend>) -> Vec<String> {
    let mut problems = Vec::new();
    for b in backends {
        if let Err(e) = stop_one(&b).await {
            problems.push(e);
        }
    }
    problems
}

async fn stop_one(b: &Backend) -> Result<(), String> {
    match b {
        Backend::Postgres { server, pid } => {
            let what = || format!("backend {pid} on {}", redact(server));
            let mut c = tokio::time::timeout(GRACE, PgConnection::connect(server))
                .await
                .map_err(|_| {
                    format!("cannot cancel the statement of {}: no connection in {GRACE:?}", what())
                })?
                .map_err(|e| format!("cannot cancel the statement of {}: {e}", what()))?;
            let r = stop_pg(&mut c, *pid).await.map_err(|e| format!("{}: {e}", what()));
            let _ = c.close().await;
            r
        }
        Backend::Mysql { url, id } => {
            let what = || format!("connection {id} on {}", redact(url));
            let mut c = tokio::time::timeout(GRACE, MySqlConnection::connect(url))
                .await
                .map_err(|_| {
                    format!("cannot cancel the statement of {}: no connection in {GRACE:?}", what())
                })?
                .map_err(|e| {
                    format!("cannot cancel the statement of {}: {}", what(), describe(&e))
                })?;
            let r = stop_mysql(&mut c, *id).await.map_err(|e| format!("{}: {e}", what()));
            let _ = c.close().await;
            r
        }
    }
}

/// `KILL QUERY`, wait; `KILL`, wait. (`KILL` takes no placeholder: the id is a number.)
async fn stop_mysql(c: &mut MySqlConnection, id: u64) -> Result<(), String> {
    let db = |e: sqlx::Error| describe(&e);
    kill(c, format!("KILL QUERY {id}")).await.map_err(db)?;
    if wait_mysql(c, id, false).await.map_err(db)? {
        return Ok(());
    }
    kill(c, format!("KILL {id}")).await.map_err(db)?;
    if wait_mysql(c, id, true).await.map_err(db)? {
        return Ok(());
    }
    Err(format!("its statement still runs {GRACE:?} after KILL QUERY and KILL"))
}

/// Runs a `KILL`; a connection that already ended cannot be killed (MySQL 1094, unknown
/// thread id), and that is what was wanted.
async fn kill(c: &mut MySqlConnection, sql: String) -> Result<(), sqlx::Error> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await {
        Err(sqlx::Error::Database(d))
            if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| m.number() == 1094) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Polls `information_schema.PROCESSLIST` until connection `id` runs no statement (`gone`:
/// until it no longer exists; a connection being killed, `Killed`, still runs), for [`GRACE`] at most; whether it got there.
async fn wait_mysql(c: &mut MySqlConnection, id: u64, gone: bool) -> Result<bool, sqlx::Error> {
    let sql = if gone {
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?"
    } else {
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? \
         AND COMMAND <> 'Sleep'"
    };
    let deadline = tokio::time::Instant::now() + GRACE;
    loop {
        let busy: i64 = sqlx::query_scalar(sql).bind(id).fetch_one(&mut *c).await?;
        if busy == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `pg_cancel_backend`, wait; `pg_terminate_backend`, wait.
async fn stop_pg(c: &mut PgConnection, pid: i32) -> Result<(), String> {
    let db = |e: sqlx::Error| describe(&e);
    sqlx::query("SELECT pg_cancel_backend($1)").bind(pid).execute(&mut *c).await.map_err(db)?;
    if wait_pg(c, pid, false).await.map_err(db)? {
        return Ok(());
    }
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut *c).await.map_err(db)?;
    if wait_pg(c, pid, true).await.map_err(db)? {
        return Ok(());
    }
    Err(format!(
        "its statement still runs {GRACE:?} after pg_cancel_backend and pg_terminate_backend"
    ))
}

/// Polls until the backend runs no statement (`gone`: until it no longer exists), for [`GRACE`]
/// at most; whether it got there.
async fn wait_pg(c: &mut PgConnection, pid: i32, gone: bool) -> Result<bool, sqlx::Error> {
    let sql = if gone {
        "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1"
    } else {
        "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 \
         AND state IN ('active', 'fastpath function call')"
    };
    let deadline = tokio::time::Instant::now() + GRACE;
    loop {
        // A snapshot of the statistics is kept per transaction: each ask is its own.
        let busy: i64 = sqlx::query_scalar(sql).bind(pid).fetch_one(&mut *c).await?;
        if busy == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}
