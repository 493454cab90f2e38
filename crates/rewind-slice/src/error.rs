//! [`SliceError`], and the one place where a database error is described for a user and judged
//! transient (worth another attempt) or not. `rewind-exec` uses [`describe`] and
//! [`is_transient`] for every statement it runs, not only for slices.

use crate::plan::PlanError;

/// Why a copy, a digest or a catalog read failed.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// The slice cannot be planned from this catalog (unknown root, a cycle that cannot be
    /// broken, …): permanent.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A statement failed; `message` quotes the database ([`describe`]) and names the table or
    /// step; `transient` says whether another attempt can help ([`is_transient`]).
    #[error("{message}")]
    Database { message: String, transient: bool },
    /// The tenant id does not parse as the root key's type: permanent.
    #[error("tenant id {tenant:?} is not a valid `{data_type}` (the key `{table}`.`{column}`)")]
    BadTenant { tenant: String, table: String, column: String, data_type: String },
    /// Source and destination differ in a way a copy cannot bridge (a table or a column
    /// missing on one side, or of another type), or a restored row would reference a row that
    /// is not there: permanent. Nothing was written.
    #[error("{0}")]
    Refused(String),
}

impl SliceError {
    /// Whether another attempt can succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database { transient: true, .. })
    }

    /// A [`SliceError::Database`] for `e`, met while doing `context` ("delete from `issues`").
    pub fn database(context: &str, e: &sqlx::Error) -> Self {
        Self::Database {
            message: format!("{context}: {}", describe(e)),
            transient: is_transient(e),
        }
    }
}

/// `map_err` helper: a [`SliceError::Database`] naming `context`.
pub fn db(context: impl std::fmt::Display) -> impl FnOnce(sqlx::Error) -> SliceError {
    move |e| SliceError::database(&context.to_string(), &e)
}

/// A database error as a user reads it: the database's own message, its code
/// (`[SQLSTATE 23503]`, `[MySQL 1452, SQLSTATE 23000]`, `[SQLite 19]`) and PostgreSQL's detail
/// and hint. Never the server's source location (PostgreSQL reports the line of its own C
/// file, which a user reads as a line of theirs).
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            let mut out = d.message().to_owned();
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    out.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = pg.hint() {
                    out.push_str(&format!(" hint: {hint}"));
                }
                out.push_str(&format!(" [SQLSTATE {}]", pg.code()));
            } else if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                match my.code() {
                    Some(state) => {
                        out.push_str(&format!(" [MySQL {}, SQLSTATE {state}]", my.number()))
                    }
                    None => out.push_str(&format!(" [MySQL {}]", my.number())),
                }
            } else if let Some(code) = d.code() {
                out.push_str(&format!(" [SQLite {code}]"));
            }
            out
        }
        other => other.to_string(),
    }
}

/// Whether `e` may pass if the same work is tried again: the connection failed or timed out,
/// the server is starting or shutting down or out of connections, or the transaction lost a
/// serialization, deadlock or lock-wait race. Everything else (a constraint, a type, a
/// permission, a syntax error, a missing table) fails the same way every time.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Lock wait timeout, deadlock, too many connections, server shutdown, query
                // interrupted by shutdown.
                return matches!(my.number(), 1205 | 1213 | 1040 | 1053 | 1927 | 2006 | 2013);
            }
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
                // 40001 serialization, 40P01 deadlock, 55P03 lock not available, 53xxx
                // insufficient resources, 57P01-57P03 shutdown/crash/cannot connect now, 08xxx
                // connection. (57P04, the database was dropped, does not pass.)
                return code == "40001"
                    || code == "40P01"
                    || code == "55P03"
                    || code.starts_with("53")
                    || matches!(code.as_str(), "57P01" | "57P02" | "57P03")
                    || code.starts_with("08");
            }
            // SQLite: BUSY (5) and LOCKED (6), with their extended codes.
            code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}
