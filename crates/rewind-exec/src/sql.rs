//! `kind = "sql"`: statements against a named connection, in one transaction. Template values
//! are bound as text parameters, never spliced into the SQL (the workflow refuses `{{` in SQL
//! text). The output is `rows_affected` (rows changed by all statements; queries change none)
//! plus the columns of the first row the last statement returned, if any. A timeout or a stop
//! cancels the statement on the server before the attempt ends ([`crate::cancel`]).

use futures::TryStreamExt;
use futures::future::BoxFuture;
use rewind_model::Action;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Column, Either, Executor as _, Row};

use crate::cancel::{self, Sessions};
use crate::{Attempt, Executor, Outcome, Pools, Report, Stop};

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

/// A row's columns as JSON: integers, floats, text, booleans or null.
pub(crate) fn row_json(row: &AnyRow) -> Map<String, Value> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            v.map_or(Value::Null, Value::from)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            v.map_or(Value::Null, Value::from)
        } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            v.map_or(Value::Null, Value::from)
        } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
            v.map_or(Value::Null, Value::from)
        } else {
            Value::Null
        };
        out.insert(col.name().to_owned(), v);
    }
    out
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
        let conn = pools.acquire(&url).await.map_err(|e| Report::failed(e, true))?;
        let mut conn = sessions.pooled(conn, &url).await.map_err(|e| Report::failed(e, true))?;
        let db = |e: sqlx::Error| Report::failed(format!("{e}"), true);
        let mut tx = sqlx::Connection::begin(&mut **conn).await.map_err(db)?;
        let mut affected = 0u64;
        let mut first = None;
        let last = statements.len().saturating_sub(1);
        for (i, (sql, params)) in statements.into_iter().enumerate() {
            let counts = changes_rows(&sql);
            // The SQL is the workflow's own text, checked to hold no templates.
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for p in params {
                q = q.bind(p);
            }
            let mut results = (&mut *tx).fetch_many(q);
            while let Some(item) = results.try_next().await.map_err(db)? {
                match item {
                    Either::Left(done) if counts => affected += done.rows_affected(),
                    Either::Left(_) => {}
                    Either::Right(row) if i == last && first.is_none() => {
                        first = Some(row_json(&row))
                    }
                    Either::Right(_) => {}
                }
            }
        }
        tx.commit().await.map_err(db)?;
        Ok((affected, first))
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
