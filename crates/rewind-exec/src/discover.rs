//! A slice's plan read from a live catalog before a run: `rewind plan` and `rewind run
//! --dry-run` show, for each `copy` and `compare` and each pair of connections it reaches, the
//! tables of the tenant's slice, the path by which each reaches the root, the order, and the
//! `WHERE` that selects each table's rows.
//!
//! With `as` (restore as a new tenant), the plan is followed by what the copy changes: the
//! columns that become the new tenant id, the keys remapped and how, and the references that
//! follow their parent (declared ones marked `(declared)`).
//!
//! The run plans from the source (`from`); before the run the source often does not exist yet
//! (a point-in-time restore makes it), so the plan is read from the destination (`to`) instead,
//! and says so. Catalogs are read over read-only sessions: PostgreSQL
//! `default_transaction_read_only`, MySQL `SET SESSION TRANSACTION READ ONLY`, SQLite opened
//! read-only. Nothing is written.

use std::str::FromStr;
use std::time::Duration;

use rewind_model::{Action, SliceAction};
use rewind_slice::sql::{Dialect, Scope, selector};
use rewind_slice::{Schema, SliceError, SlicePlan};
use sqlx::Connection as _;

use crate::Attempt;
use crate::connect::{Kind, kind, redact};
use crate::describe::{SliceEnd, slice_end};
use crate::slice::request;

/// How long reading one catalog may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The two ends of an attempt's `copy` or `compare`, rendered and resolved as a dry run does:
/// the key under which a plan is shown once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceEnds {
    /// The step.
    pub step: String,
    from: SliceEnd,
    to: SliceEnd,
}

/// The ends of `a`'s slice action; `None` for other actions, an error when a URL cannot render.
pub fn slice_ends(a: &Attempt) -> Option<Result<SliceEnds, String>> {
    let (Action::Copy(s) | Action::Compare(s)) = &*a.action else { return None };
    let ends = || -> Result<SliceEnds, String> {
        Ok(SliceEnds {
            step: a.key.step.to_string(),
            from: slice_end(a, &s.from)?,
            to: slice_end(a, &s.to)?,
        })
    };
    Some(ends())
}

/// A slice as discovered before the run: what `plan` and `--dry-run` show, and, when the first
/// catalog that could be read already says the slice cannot be planned, why (the run refuses
/// it: an unknown root or table, a cycle that cannot be broken).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The step's block: a header line, then indented lines.
    pub lines: Vec<String>,
    /// `the slice cannot be planned from `live`'s catalog: …`; `None` when it plans, or when no
    /// catalog can be read before the run (a source a restore has yet to make).
    pub unplannable: Option<String>,
}

/// The slice `s` of `ends`, planned once from the first catalog that can be read: the
/// source's, else the destination's.
pub async fn discover(ends: &SliceEnds, s: &SliceAction) -> Discovery {
    let mut lines = vec![format!("{} ({}):", ends.step, s.extent())];
    let mut why_not = Vec::new();
    for (end, role) in [(&ends.from, "the source"), (&ends.to, "the destination")] {
        let Some(url) = end.url() else {
            why_not.push(format!("`{}` is not known before the run", end.name));
            continue;
        };
        match tokio::time::timeout(TIMEOUT, read_only_catalog(url)).await {
            Ok(Ok(schema)) => {
                let said = if role == "the source" {
                    format!("  planned read-only from `{}` ({})", end.name, redact(url))
                } else {
                    format!(
                        "  planned read-only from `{}` ({}); the run plans it from `{}` ({})",
                        end.name,
                        redact(url),
                        ends.from.name,
                        why_not.join("; ")
                    )
                };
                lines.push(said);
                return match rewind_slice::plan::plan(&schema, &request(s)) {
                    Ok(plan) => {
                        lines.extend(render(&plan, schema.engine));
                        let Some(new) = &s.as_tenant else {
                            return Discovery { lines, unplannable: None };
                        };
                        match rewind_slice::remap::plan(&schema, &plan) {
                            Ok(remap) => {
                                lines.push(format!("  as {}:", new.as_str()));
                                lines.extend(
                                    remap
                                        .describe(&schema, &plan)
                                        .iter()
                                        .map(|l| format!("    {l}")),
                                );
                                Discovery { lines, unplannable: None }
                            }
                            Err(e) => {
                                let e =
                                    format!("the slice cannot be restored as a new tenant: {e}");
                                lines.push(format!("  the run would fail: {e}"));
                                let why = format!("`{}`'s catalog says {e}", end.name);
                                Discovery { lines, unplannable: Some(why) }
                            }
                        }
                    }
                    Err(e) => {
                        lines.push(format!("  the run would fail: {e}"));
                        let why = format!(
                            "the slice cannot be planned from `{}`'s catalog: {e}",
                            end.name
                        );
                        Discovery { lines, unplannable: Some(why) }
                    }
                };
            }
            Ok(Err(e)) => why_not.push(format!("`{}`: {e}", end.name)),
            Err(_) => why_not.push(format!("`{}`: no answer within {TIMEOUT:?}", end.name)),
        }
    }
    lines.push(format!("  not planned: no catalog could be read ({})", why_not.join("; ")));
    Discovery { lines, unplannable: None }
}

/// `plan` as indented lines: its description, then each table's `WHERE`.
fn render(plan: &SlicePlan, engine: rewind_slice::Engine) -> Vec<String> {
    let dialect = Dialect::from(engine);
    let scope = Scope { dialect, qualifier: "", tenant: "<tenant>" };
    let mut lines: Vec<String> = plan.describe().into_iter().map(|l| format!("  {l}")).collect();
    lines.push("  rows selected:".to_owned());
    for t in &plan.tables {
        lines.push(format!("    {}: WHERE {}", dialect.quote(&t.name), selector(plan, t, scope)));
    }
    lines
}

/// The catalog at `url`, read over a read-only session.
async fn read_only_catalog(url: &str) -> Result<Schema, String> {
    let said = |e: SliceError| e.to_string();
    let connect = |e: sqlx::Error| format!("cannot connect: {}", rewind_slice::error::describe(&e));
    match kind(url)? {
        Kind::Postgres => {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| e.to_string())?
                .options([("default_transaction_read_only", "on")]);
            let mut c = sqlx::PgConnection::connect_with(&options).await.map_err(connect)?;
            let r = rewind_slice::pg::schema(&mut c).await.map_err(said);
            let _ = c.close().await;
            r
        }
        Kind::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(url).await.map_err(connect)?;
            sqlx::query("SET SESSION TRANSACTION READ ONLY")
                .execute(&mut c)
                .await
                .map_err(|e| rewind_slice::error::describe(&e))?;
            let r = rewind_slice::mysql::schema(&mut c).await.map_err(said);
            let _ = c.close().await;
            r
        }
        Kind::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(|e| e.to_string())?
                .read_only(true)
                .create_if_missing(false);
            let mut c = sqlx::SqliteConnection::connect_with(&options).await.map_err(connect)?;
            let r = rewind_slice::sqlite::schema(&mut c, "main").await.map_err(said);
            let _ = c.close().await;
            r
        }
    }
}
