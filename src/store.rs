//! Opening the checkpoint store and reading run ids, for the commands that need them.

use std::time::Duration;

use anyhow::Result;
use rewind_model::RunId;
use rewind_store::SqlStore;

use crate::exit::refused;

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
