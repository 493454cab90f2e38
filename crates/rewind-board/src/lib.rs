//! `rewind serve`'s HTTP side: the operator board (server-rendered pages), the JSON API under
//! `/api/v1/`, server-sent events and `/metrics`. It reads the checkpoint store (SQLite or
//! PostgreSQL) while runs are driven by other processes; it never drives a run and never writes.
//!
//! Each room is a module with its own routes, merged here: `api` (JSON, the status feed, events),
//! `metrics` (Prometheus exposition), `pages` (the board).

use std::sync::Arc;

use axum::Router;
use rewind_store::SqlStore;

pub mod api;
pub mod metrics;
pub mod pages;

/// What every handler shares: the store it reads.
#[derive(Clone)]
pub struct AppState {
    /// The checkpoint store, opened by the caller.
    pub store: Arc<SqlStore>,
}

impl AppState {
    /// A state reading `store`.
    pub fn new(store: SqlStore) -> Self {
        Self { store: Arc::new(store) }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(metrics::routes())
        .merge(pages::routes())
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
