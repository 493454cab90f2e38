//! Opening the checkpoint store and reading run ids, for the commands that need them.

use std::time::Duration;

use anyhow::Result;
use rewind_model::RunId;
use rewind_store::SqlStore;

use crate::exit::refused;

/// The checkpoint store when neither `--db` nor `REWIND_DB` names one.
pub const DEFAULT_DB: &str = "sqlite://rewind.db";

/// `--db URL`, on the commands that read or write the checkpoint store.
#[derive(Debug, Default, clap::Args)]
pub struct Db {
    /// Checkpoint store: sqlite://PATH (created if missing) or postgres://...
    /// [env: REWIND_DB] [default: sqlite://rewind.db]
    #[arg(long = "db", value_name = "URL")]
    url: Option<String>,
}

impl Db {
    /// The store's URL: `--db` after the command, or before it (`rewind --db URL status`, as
    /// DESIGN.md's global flag), else `REWIND_DB`, else [`DEFAULT_DB`].
    pub fn url(&self, before: Option<&str>) -> Result<String> {
        match (self.url.as_deref(), before) {
            (Some(a), Some(b)) if a != b => Err(refused(format!(
                "rewind: --db is given twice, as {} and {}; give it once",
                rewind_model::redact_url(b),
                rewind_model::redact_url(a)
            ))),
            (Some(url), _) | (None, Some(url)) => Ok(url.to_owned()),
            (None, None) => Ok(std::env::var("REWIND_DB")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_DB.to_owned())),
        }
    }
}

/// Where a store URL points, for people: a SQLite file's absolute path, or the URL without its
/// password.
pub fn describe(url: &str) -> String {
    match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        Some(rest) => {
            let path = rest.split('?').next().unwrap_or(rest);
            let abs =
                std::path::absolute(path).map_or_else(|_| path.into(), |p| p.display().to_string());
            format!("{abs} ({url})")
        }
        None => rewind_model::redact_url(url),
    }
}

/// A tokio runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Opens (creating a SQLite file if missing) and migrates the store. Waits for another process's
/// lock up to `REWIND_DB_BUSY_TIMEOUT` (humantime, default 5s). Failure is a refusal (exit 2):
/// nothing was written.
pub async fn open(url: &str) -> Result<SqlStore> {
    let busy = match std::env::var("REWIND_DB_BUSY_TIMEOUT") {
        Ok(v) => humantime::parse_duration(&v)
            .map_err(|e| refused(format!("rewind: REWIND_DB_BUSY_TIMEOUT={v:?}: {e}")))?,
        Err(_) => Duration::from_secs(5),
    };
    SqlStore::open_with(url, busy).await.map_err(|e| refused(format!("rewind: {e}")))
}

/// Parses a run id argument.
pub fn run_id(raw: &str) -> Result<RunId> {
    raw.parse().map_err(|e| refused(format!("rewind: {e}")))
}
