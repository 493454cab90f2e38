//! Read-only paths: the statements a `[preflight]`, `rewind plan` and `rewind run --dry-run` send
//! to a database. Whatever the text says, they cannot write:
//!
//! - each statement is one statement ([`rewind_model::sql::single_statement`] under the
//!   connection's dialect), refused before it is sent otherwise;
//! - it runs in a read-only transaction. PostgreSQL: `BEGIN READ ONLY` on a pooled connection,
//!   ended by `ROLLBACK` (the server refuses any write: `SELECT … INTO`, `setval`, a data-modifying
//!   `WITH`, a volatile function that writes). SQLite: a connection from a pool of its own,
//!   opened read-only (`mode=ro`) and with `PRAGMA query_only = ON`, never handed to a writer.
//!   MySQL/MariaDB (when `mysql://` connections land): `START TRANSACTION READ ONLY` (see
//!   [`begin_statement`]);
//! - a write attempt is [`ReadOnlyError::Write`], a refusal carrying the database's reason
//!   ("cannot execute … in a read-only transaction", "attempt to write a readonly database").
//!
//! A [`ReadOnly`] session that is dropped before [`ReadOnly::end`] (an error, a timeout) closes
//! its connection instead of returning it to the pool: no connection goes back in an unknown
//! state.
//!
//! What a read-only transaction cannot stop: a function that reaches outside the transaction
//! (`dblink`, an untrusted-language function opening its own connection). Grant the preflight's
//! database user no such function.

use rewind_model::sql::{Dialect, SqlTextError, shorten, single_statement};
use serde_json::{Map, Value};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AssertSqlSafe, Executor as _};

use crate::Pools;
use crate::cancel::{Sessions, Tracked};
use crate::connect::{Kind, kind, redact};
use crate::sql::row_json;

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

/// The statement that starts a read-only transaction on a database of `kind`. (MySQL and
/// MariaDB: `START TRANSACTION READ ONLY`; their error for a write is SQLSTATE 25006 too.)
pub(crate) fn begin_statement(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "BEGIN READ ONLY",
        // The connection itself is read-only; the transaction gives several statements one
        // snapshot.
        Kind::Sqlite => "BEGIN",
    }
}

/// The lexical rules of a database of `kind`.
pub(crate) fn dialect(kind: Kind) -> Dialect {
    match kind {
        Kind::Postgres => Dialect::Postgres,
        Kind::Sqlite => Dialect::Sqlite,
    }
}

/// Whether `e` is the database refusing a write in a read-only transaction or connection:
/// SQLSTATE 25006 (`read_only_sql_transaction`: PostgreSQL, MySQL), or SQLite's
/// `SQLITE_READONLY` (8, and its extended codes).
fn is_write_refusal(kind: Kind, e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    let Some(code) = db.code() else { return false };
    match kind {
        Kind::Postgres => code == "25006",
        Kind::Sqlite => code.parse::<i32>().is_ok_and(|c| c & 0xff == 8),
    }
}

/// A read-only transaction on one connection: every statement of a `[preflight]`, `plan` or
/// `--dry-run` goes through one. Several statements in one session share a snapshot.
pub struct ReadOnly {
    /// `None` once ended.
    conn: Option<Tracked<PoolConnection<Any>>>,
    kind: Kind,
}

impl std::fmt::Debug for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnly").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl ReadOnly {
    /// Starts a read-only transaction on the database `url` names (a sqlx URL: resolved,
    /// `sqlite:` or `postgres:`).
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
        let conn = pools.acquire_read_only(url).await.map_err(ReadOnlyError::Failed)?;
        let conn = sessions.pooled(conn, url).await.map_err(ReadOnlyError::Failed)?;
        let mut session = Self { conn: Some(conn), kind };
        let begin = begin_statement(kind);
        if let Some(c) = session.conn.as_mut() {
            (&mut **c)
                .execute(begin)
                .await
                .map_err(|e| ReadOnlyError::Failed(format!("{begin} on {}: {e}", redact(url))))?;
        }
        Ok(session)
    }

    /// Runs one statement, `params` bound as text (`$1`/`?`), and returns its rows as JSON
    /// objects (integers, floats, text, booleans or null by column name). Text that is not
    /// exactly one statement is refused before it is sent.
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
        let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for p in params {
            q = q.bind(p.clone());
        }
        match q.fetch_all(&mut ***conn).await {
            Ok(rows) => Ok(rows.iter().map(row_json).collect()),
            Err(e) if is_write_refusal(self.kind, &e) => Err(ReadOnlyError::Write {
                sql: shorten(sql),
                reason: e
                    .as_database_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            }),
            Err(e) => Err(ReadOnlyError::Failed(format!("the query `{}`: {e}", shorten(sql)))),
        }
    }

    /// Ends the transaction (`ROLLBACK`: there is nothing to keep) and gives the connection
    /// back to its pool. A connection whose `ROLLBACK` fails is closed instead.
    pub async fn end(mut self) -> Result<(), ReadOnlyError> {
        let Some(mut conn) = self.conn.take() else { return Ok(()) };
        match (&mut **conn).execute("ROLLBACK").await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(c) = conn.into_inner() {
                    let _ = c.close().await;
                }
                Err(ReadOnlyError::Failed(format!("ROLLBACK of a read-only transaction: {e}")))
            }
        }
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
