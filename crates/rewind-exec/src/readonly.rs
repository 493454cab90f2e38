//! Read-only paths: the statements a `[preflight]`, `rewind plan` and `rewind run --dry-run` send
//! to a database. Whatever the text says, they cannot write:
//!
//! - each statement is one statement ([`rewind_model::sql::single_statement`] under the
//!   connection's dialect), refused before it is sent otherwise;
//! - it runs in a read-only transaction. PostgreSQL: `BEGIN READ ONLY` on a pooled connection,
//!   ended by `ROLLBACK` (the server refuses any write: `SELECT … INTO`, `setval`, a data-modifying
//!   `WITH`, a volatile function that writes). SQLite: a connection from a pool of its own,
//!   opened read-only (`mode=ro`) and with `PRAGMA query_only = ON`, never handed to a writer.
//!   MySQL/MariaDB: `SET SESSION TRANSACTION READ ONLY` (which also refuses DDL, that would
//!   otherwise commit the transaction and run outside it), then `START TRANSACTION READ ONLY`,
//!   on a pooled connection; ended by `ROLLBACK` and `SET SESSION TRANSACTION READ WRITE`;
//! - a write attempt is [`ReadOnlyError::Write`], a refusal carrying the database's reason
//!   ("cannot execute … in a read-only transaction", "Cannot execute statement in a READ ONLY
//!   transaction", "attempt to write a readonly database").
//!
//! Parameters are bound as [`crate::sql`] binds them (typed on PostgreSQL, [`crate::params`]),
//! rows become JSON as its outputs do ([`crate::decode`]).
//!
//! A [`ReadOnly`] session that is dropped before [`ReadOnly::end`] (an error, a timeout) closes
//! its connection instead of returning it to the pool: no connection goes back in an unknown
//! state.
//!
//! What a read-only transaction cannot stop: a function that reaches outside the transaction
//! (`dblink`, an untrusted-language function opening its own connection). Grant the preflight's
//! database user no such function.

use rewind_model::sql::{Dialect, SqlTextError, shorten, single_statement};
use rewind_slice::error::describe;
use serde_json::{Map, Value};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor as _, MySql, Postgres, Sqlite};

use crate::Pools;
use crate::cancel::{Sessions, Tracked};
use crate::connect::{Kind, kind, redact};
use crate::decode;
use crate::params::{BindError, pg_arguments};

/// Why a read-only statement gave no rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadOnlyError {
    /// The text is not exactly one statement; nothing was sent.
    #[error("the query `{sql}` was not sent: {error}")]
    NotOneStatement {
        /// The statement, shortened.
        sql: String,
        /// What the lexer found.
        error: SqlTextError,
    },
    /// The statement tried to write, and the database refused it: nothing was written.
    #[error(
        "the query `{sql}` tried to write, and the database refused it in a read-only transaction: {reason}"
    )]
    Write {
        /// The statement, shortened.
        sql: String,
        /// The database's message.
        reason: String,
    },
    /// Anything else: the database could not be reached, the query is wrong.
    #[error("{0}")]
    Failed(String),
}

impl ReadOnlyError {
    /// Whether the statement was refused for what it is (more than one statement, a write),
    /// rather than failing for a reason another attempt might not meet.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::NotOneStatement { .. } | Self::Write { .. })
    }
}

/// The statements that start a read-only transaction on a database of `kind`.
pub(crate) fn begin_statements(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Postgres => &["BEGIN READ ONLY"],
        // The session too: a DDL statement would commit a read-only transaction and run
        // outside it; a read-only session refuses it (SQLSTATE 25006).
        Kind::Mysql => &["SET SESSION TRANSACTION READ ONLY", "START TRANSACTION READ ONLY"],
        // The connection itself is read-only; the transaction gives several statements one
        // snapshot.
        Kind::Sqlite => &["BEGIN"],
    }
}

/// The statements that end a read-only session, leaving its connection as a writer expects it.
fn end_statements(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Postgres | Kind::Sqlite => &["ROLLBACK"],
        Kind::Mysql => &["ROLLBACK", "SET SESSION TRANSACTION READ WRITE"],
    }
}

/// The lexical rules of a database of `kind`.
pub(crate) fn dialect(kind: Kind) -> Dialect {
    match kind {
        Kind::Postgres => Dialect::Postgres,
        Kind::Sqlite => Dialect::Sqlite,
        Kind::Mysql => Dialect::Mysql,
    }
}

/// Whether `e` is the database refusing a write in a read-only transaction or connection:
/// SQLSTATE 25006 (`read_only_sql_transaction`: PostgreSQL; MySQL/MariaDB error 1792), or
/// SQLite's `SQLITE_READONLY` (8, and its extended codes).
fn is_write_refusal(kind: Kind, e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    let Some(code) = db.code() else { return false };
    match kind {
        Kind::Postgres | Kind::Mysql => code == "25006",
        Kind::Sqlite => code.parse::<i32>().is_ok_and(|c| c & 0xff == 8),
    }
}

/// The connection of a read-only session, per engine.
enum Conn {
    Pg(Tracked<PoolConnection<Postgres>>),
    Mysql(Tracked<PoolConnection<MySql>>),
    Sqlite(Tracked<PoolConnection<Sqlite>>),
}

impl Conn {
    async fn execute(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            Self::Pg(c) => (&mut ***c).execute(sql).await.map(drop),
            Self::Mysql(c) => (&mut ***c).execute(sql).await.map(drop),
            Self::Sqlite(c) => (&mut ***c).execute(sql).await.map(drop),
        }
    }

    /// Closes the connection when dropped instead of returning it to its pool.
    fn close_on_drop(&mut self) {
        match self {
            Self::Pg(c) => c.close_on_drop(),
            Self::Mysql(c) => c.close_on_drop(),
            Self::Sqlite(c) => c.close_on_drop(),
        }
    }

    /// `sql`'s rows as JSON; `Err(Ok(why))`: a parameter or a column is refused (permanent).
    async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[String],
    ) -> Result<Vec<Map<String, Value>>, Result<String, sqlx::Error>> {
        let text = || AssertSqlSafe(sql.to_owned());
        let rows = |r: Result<Vec<Map<String, Value>>, String>| r.map_err(Ok);
        match self {
            Self::Pg(c) => {
                let args = pg_arguments(c, sql, params).await.map_err(|e| match e {
                    BindError::Value(m) => Ok(m),
                    BindError::Prepare(e) => Err(e),
                })?;
                let found =
                    sqlx::query_with(text(), args).fetch_all(&mut ***c).await.map_err(Err)?;
                rows(found.iter().map(decode::pg_row).collect())
            }
            Self::Mysql(c) => {
                let q = params.iter().fold(sqlx::query(text()), |q, p| q.bind(p.clone()));
                let found = q.fetch_all(&mut ***c).await.map_err(Err)?;
                rows(found.iter().map(decode::mysql_row).collect())
            }
            Self::Sqlite(c) => {
                let q = params.iter().fold(sqlx::query(text()), |q, p| q.bind(p.clone()));
                let found = q.fetch_all(&mut ***c).await.map_err(Err)?;
                rows(found.iter().map(decode::sqlite_row).collect())
            }
        }
    }

    /// The connection, out of the attempt's sessions, closed.
    async fn close(self) {
        match self {
            Self::Pg(c) => close(c).await,
            Self::Mysql(c) => close(c).await,
            Self::Sqlite(c) => close(c).await,
        }
    }
}

async fn close<DB: sqlx::Database>(c: Tracked<PoolConnection<DB>>) {
    if let Some(c) = c.into_inner() {
        let _ = c.close().await;
    }
}

/// A read-only transaction on one connection: every statement of a `[preflight]`, `plan` or
/// `--dry-run` goes through one. Several statements in one session share a snapshot.
pub struct ReadOnly {
    /// `None` once ended.
    conn: Option<Conn>,
    kind: Kind,
}

impl std::fmt::Debug for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnly").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl ReadOnly {
    /// Starts a read-only transaction on the database `url` names (a sqlx URL: resolved,
    /// `sqlite:`, `postgres:` or `mysql:`).
    pub async fn begin(pools: &Pools, url: &str) -> Result<Self, ReadOnlyError> {
        Self::begin_in(pools, url, &Sessions::default()).await
    }

    /// [`ReadOnly::begin`], its connection registered in `sessions` so that a timeout can stop
    /// its statement on the server ([`crate::cancel`]).
    pub(crate) async fn begin_in(
        pools: &Pools,
        url: &str,
        sessions: &Sessions,
    ) -> Result<Self, ReadOnlyError> {
        let kind = kind(url).map_err(ReadOnlyError::Failed)?;
        let conn = match kind {
            Kind::Postgres => Conn::Pg(
                sessions
                    .pooled(pools.pg(url).await.map_err(ReadOnlyError::Failed)?, url)
                    .await
                    .map_err(ReadOnlyError::Failed)?,
            ),
            Kind::Mysql => Conn::Mysql(
                sessions
                    .pooled(pools.mysql(url).await.map_err(ReadOnlyError::Failed)?, url)
                    .await
                    .map_err(ReadOnlyError::Failed)?,
            ),
            Kind::Sqlite => Conn::Sqlite(
                sessions
                    .pooled(pools.sqlite_read_only(url).await.map_err(ReadOnlyError::Failed)?, url)
                    .await
                    .map_err(ReadOnlyError::Failed)?,
            ),
        };
        let mut session = Self { conn: Some(conn), kind };
        for begin in begin_statements(kind) {
            if let Some(c) = session.conn.as_mut() {
                c.execute(begin).await.map_err(|e| {
                    ReadOnlyError::Failed(format!("{begin} on {}: {}", redact(url), describe(&e)))
                })?;
            }
        }
        Ok(session)
    }

    /// Runs one statement, `params` bound (`$1`/`?`; typed on PostgreSQL), and returns its rows
    /// as JSON objects by column name ([`crate::decode`]). Text that is not exactly one
    /// statement is refused before it is sent.
    pub async fn fetch_all(
        &mut self,
        sql: &str,
        params: &[String],
    ) -> Result<Vec<Map<String, Value>>, ReadOnlyError> {
        single_statement(sql, Some(dialect(self.kind)))
            .map_err(|error| ReadOnlyError::NotOneStatement { sql: shorten(sql), error })?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(ReadOnlyError::Failed("the read-only session has ended".to_owned()));
        };
        // The text is checked to be one statement and runs read-only; values are bound.
        match conn.fetch_all(sql, params).await {
            Ok(rows) => Ok(rows),
            Err(Ok(why)) => {
                Err(ReadOnlyError::Failed(format!("the query `{}`: {why}", shorten(sql))))
            }
            Err(Err(e)) if is_write_refusal(self.kind, &e) => {
                Err(ReadOnlyError::Write { sql: shorten(sql), reason: describe(&e) })
            }
            Err(Err(e)) => Err(ReadOnlyError::Failed(format!(
                "the query `{}`: {}",
                shorten(sql),
                describe(&e)
            ))),
        }
    }

    /// Ends the transaction (`ROLLBACK`: there is nothing to keep; MySQL: the session made
    /// read-write again) and gives the connection back to its pool. A connection that does not
    /// end cleanly is closed instead.
    pub async fn end(mut self) -> Result<(), ReadOnlyError> {
        let Some(mut conn) = self.conn.take() else { return Ok(()) };
        for end in end_statements(self.kind) {
            if let Err(e) = conn.execute(end).await {
                conn.close().await;
                return Err(ReadOnlyError::Failed(format!(
                    "{end} of a read-only transaction: {}",
                    describe(&e)
                )));
            }
        }
        Ok(())
    }
}

impl Drop for ReadOnly {
    /// A session dropped before [`ReadOnly::end`] may be mid-statement or mid-transaction: its
    /// connection is closed, never returned to the pool.
    fn drop(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            c.close_on_drop();
        }
    }
}

/// Runs one read-only statement on `url` in a session of its own ([`ReadOnly`]) and returns its
/// rows.
pub async fn query(
    pools: &Pools,
    url: &str,
    sql: &str,
    params: &[String],
) -> Result<Vec<Map<String, Value>>, ReadOnlyError> {
    let mut session = ReadOnly::begin(pools, url).await?;
    let rows = session.fetch_all(sql, params).await;
    // A failed statement leaves the transaction aborted; ROLLBACK ends it all the same.
    let ended = session.end().await;
    let rows = rows?;
    ended?;
    Ok(rows)
}
