//! `kind = "sql"`: statements against a named connection (PostgreSQL, MySQL/MariaDB, SQLite), in
//! one transaction. Template values are bound as parameters, never spliced into the SQL (the
//! workflow refuses `{{` in SQL text); on PostgreSQL with each parameter's type
//! ([`crate::params`]). The output is `rows_affected` (rows changed by all statements; queries
//! change none) plus the columns of the first row the last statement returned, if any, as JSON
//! values of their types ([`crate::decode`]). A timeout or a stop cancels the statement on the
//! server before the attempt ends ([`crate::cancel`]). A database error quotes the database
//! ([`rewind_slice::error::describe`]) and is retried only when another attempt can pass
//! ([`rewind_slice::error::is_transient`]).

use futures::TryStreamExt;
use futures::future::BoxFuture;
use rewind_model::Action;
use rewind_slice::error::{describe, is_transient};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, Database, Either};

use crate::cancel::{self, Sessions};
use crate::connect::{Kind, kind};
use crate::params::{BindError, pg_arguments};
use crate::{Attempt, Executor, Outcome, Pools, Report, Stop, decode};

/// Runs `sql` actions.
#[derive(Clone, Debug, Default)]
pub struct SqlExecutor {
    pools: Pools,
}

impl SqlExecutor {
    /// An executor sharing `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools }
    }
}

impl Executor for SqlExecutor {
    fn kind(&self) -> &'static str {
        "sql"
    }

    fn execute(&self, attempt: Attempt, stop: Stop) -> BoxFuture<'static, Report> {
        let pools = self.pools.clone();
        Box::pin(run(attempt, stop, pools))
    }
}

/// Whether a statement's affected-row count means rows changed. A query's does not: SQLite
/// reports the previous statement's changes for it, PostgreSQL the rows it selected.
fn changes_rows(sql: &str) -> bool {
    let first = sql.trim_start().split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    !["select", "values", "explain", "pragma", "show", "table"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
}

/// Runs `work` within the attempt's timeout, unless a stop comes first. On a timeout or a stop,
/// the statements `work` runs on the connections it registered in `sessions` are stopped on the
/// server, and waited for, before the timed-out (or cancelled) report is returned
/// ([`crate::cancel`]); its pooled connections are closed, not returned to their pools.
pub(crate) async fn bounded<T>(
    a: &Attempt,
    stop: &mut Stop,
    sessions: &Sessions,
    work: impl std::future::Future<Output = Result<T, Report>>,
) -> Result<T, Report> {
    let until = async {
        tokio::select! {
            () = tokio::time::sleep(a.timeout) => Report::failed(format!("timed out after {}", humantime::format_duration(a.timeout)), true),
            () = stop.requested() => Report { outcome: Outcome::Cancelled, ..Report::failed("stopped: the run is being cancelled", false) },
        }
    };
    match cancel::first(sessions, work, until).await {
        Ok(r) => r,
        Err((mut report, problems)) => {
            if !problems.is_empty() {
                // A statement that may still run on the server must not meet its own retry.
                let said = report.error.take().unwrap_or_default();
                report.error = Some(format!(
                    "{said}; {}; not retried: the statement may still be running on the server",
                    problems.join("; ")
                ));
                if let Outcome::Failed { retryable } = &mut report.outcome {
                    *retryable = false;
                }
            }
            Err(report)
        }
    }
}

/// Runs `$statements` (SQL text and string parameters) in one transaction on the tracked pooled
/// connection `$conn` (MySQL or SQLite: strings bound as they are), each row decoded by
/// `$decode`; the last statement's first row is the output.
macro_rules! in_transaction {
    ($conn:ident, $statements:ident, $decode:path) => {{
        let mut tx = sqlx::Connection::begin(&mut **$conn).await.map_err(db)?;
        let mut out = Output::default();
        let last = $statements.len().saturating_sub(1);
        for (i, (sql, params)) in $statements.into_iter().enumerate() {
            let q = params.into_iter().fold(query(&sql), |q, p| q.bind(p));
            out.drain(&mut *tx, q, &sql, i == last, $decode).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }};
}
async fn run(a: Attempt, mut stop: Stop, pools: Pools) -> Report {
    let Action::Sql(action) = &*a.action else {
        return Report::failed("the sql executor got another kind of action", false);
    };
    let url = match a.connection_url(&action.connection).await {
        Ok(u) => u,
        Err(e) => return Report::failed(e, false),
    };
    let mut statements = Vec::with_capacity(action.statements.len());
    for st in &action.statements {
        match st.params.iter().map(|p| a.render(p)).collect::<Result<Vec<_>, _>>() {
            Ok(params) => statements.push((st.sql.clone(), params)),
            Err(e) => return Report::failed(e, false),
        }
    }
    let sessions = Sessions::default();
    let work = async {
        let kind = kind(&url).map_err(|e| Report::failed(e, false))?;
        let cannot = |e: String| Report::failed(e, true);
        match kind {
            Kind::Postgres => {
                let conn = pools.pg(&url).await.map_err(cannot)?;
                let mut conn = sessions.pooled(conn, &url).await.map_err(cannot)?;
                run_pg(&mut conn, statements).await
            }
            Kind::Mysql => {
                let conn = pools.mysql(&url).await.map_err(cannot)?;
                let mut conn = sessions.pooled(conn, &url).await.map_err(cannot)?;
                in_transaction!(conn, statements, decode::mysql_row)
            }
            Kind::Sqlite => {
                let conn = pools.sqlite(&url).await.map_err(cannot)?;
                let mut conn = sessions.pooled(conn, &url).await.map_err(cannot)?;
                in_transaction!(conn, statements, decode::sqlite_row)
            }
        }
        .map(|o| (o.affected, o.first))
    };
    match bounded(&a, &mut stop, &sessions, work).await {
        Ok((affected, first)) => {
            let mut out = first.unwrap_or_default();
            out.insert("rows_affected".into(), Value::from(affected));
            Report {
                outcome: Outcome::Succeeded,
                output: Some(Value::Object(out)),
                error: None,
                exit_code: None,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            }
        }
        Err(r) => r,
    }
}

/// A database error as a failed report: the database's words, retried only when transient.
fn db(e: sqlx::Error) -> Report {
    Report::failed(describe(&e), is_transient(&e))
}

/// The workflow's own SQL text, checked to hold no templates.
fn query<DB: Database>(sql: &str) -> sqlx::query::Query<'static, DB, DB::Arguments> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
}

/// A statement result's count of changed rows, on every engine.
trait Changed {
    fn rows(&self) -> u64;
}

impl Changed for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl Changed for sqlx::mysql::MySqlQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl Changed for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// How a row of `DB` becomes JSON ([`crate::decode`]).
type RowJson<DB> = fn(&<DB as Database>::Row) -> Result<Map<String, Value>, String>;

/// What a `sql` step's statements produced so far.
#[derive(Default)]
struct Output {
    affected: u64,
    first: Option<Map<String, Value>>,
}

impl Output {
    /// Runs `q` to its end on `conn`: counts the rows it changed (if it is not a query) and,
    /// for the `last` statement, keeps its first row as JSON (`row`; a column that cannot be
    /// JSON fails the step for good).
    async fn drain<'c, DB, E>(
        &mut self,
        conn: E,
        q: sqlx::query::Query<'static, DB, DB::Arguments>,
        sql: &str,
        last: bool,
        row: RowJson<DB>,
    ) -> Result<(), Report>
    where
        DB: Database,
        E: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        DB::QueryResult: Changed,
    {
        let counts = changes_rows(sql);
        let mut results = conn.fetch_many(q);
        while let Some(item) = results.try_next().await.map_err(db)? {
            match item {
                Either::Left(done) if counts => {
                    self.affected += done.rows();
                }
                Either::Left(_) => {}
                Either::Right(r) if last && self.first.is_none() => {
                    self.first = Some(row(&r).map_err(|e| Report::failed(e, false))?);
                }
                Either::Right(_) => {}
            }
        }
        Ok(())
    }
}

/// A bind failure as a failed report: a value that does not convert is permanent; a statement
/// that cannot be prepared is the database's error.
pub(crate) fn bind_failed(e: BindError) -> Report {
    match e {
        BindError::Value(m) => Report::failed(m, false),
        BindError::Prepare(e) => db(e),
    }
}

/// The statements on PostgreSQL, in one transaction, each with its parameters typed.
async fn run_pg(
    conn: &mut sqlx::PgConnection,
    statements: Vec<(String, Vec<String>)>,
) -> Result<Output, Report> {
    let mut tx = sqlx::Connection::begin(conn).await.map_err(db)?;
    let mut out = Output::default();
    let last = statements.len().saturating_sub(1);
    for (i, (sql, params)) in statements.into_iter().enumerate() {
        let args = pg_arguments(&mut tx, &sql, &params).await.map_err(bind_failed)?;
        let q = sqlx::query_with(AssertSqlSafe(sql.clone()), args);
        out.drain(&mut *tx, q, &sql, i == last, decode::pg_row).await?;
    }
    tx.commit().await.map_err(db)?;
    Ok(out)
}
