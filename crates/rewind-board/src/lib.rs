//! `rewind serve`'s HTTP side: the operator board (server-rendered pages), the JSON API under
//! `/api/v1/`, server-sent events and `/metrics`. It reads the checkpoint store (SQLite or
//! PostgreSQL) while runs are driven by other processes; it never drives a run. It writes
//! nothing, but for `POST /api/v1/runs/{id}/cancel` (a cancel request, as `rewind cancel`
//! makes), which exists only when a bearer token is configured.
//!
//! Each room is a module with its own routes, merged here: `api` (JSON, the status feed, events,
//! server-sent events), `metrics` (Prometheus exposition), `pages` (the board). With a token,
//! every route asks for `Authorization: Bearer TOKEN`, or for reading, the session cookie a
//! browser gets from `/login` (`auth`).

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use rewind_store::SqlStore;
use tokio::sync::watch;

pub mod api;
mod auth;
pub mod metrics;
pub mod pages;

pub use api::ApiError;

/// What every handler shares: the store it reads, the token if any, the caches and pollers.
#[derive(Clone)]
pub struct AppState {
    /// The checkpoint store, opened by the caller.
    pub store: Arc<SqlStore>,
    /// The bearer token every request must carry, when one is configured.
    token: Option<Arc<str>>,
    /// Plans and computed run data, per run id.
    cache: Arc<api::Cache>,
    /// The server-sent-events pollers.
    feeds: Arc<api::Feeds>,
    /// Rendered run pages.
    rendered: Arc<pages::Rendered>,
    /// Set when the server shuts down: event streams end so the shutdown is not held up.
    stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
    /// Where the server's own lines go (a poller that cannot read the store); stderr by default.
    log: Log,
}

/// A sink for the server's log lines (each one line, no newline).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

impl AppState {
    /// A state reading `store`, with no token (read-only, no auth).
    pub fn new(store: SqlStore) -> Self {
        let (stop_tx, stop) = watch::channel(false);
        Self {
            store: Arc::new(store),
            token: None,
            cache: Arc::default(),
            feeds: Arc::default(),
            rendered: Arc::default(),
            stop,
            stop_tx: Arc::new(stop_tx),
            log: Arc::new(|line| eprintln!("{line}")),
        }
    }

    /// Sends the server's log lines to `log` instead of stderr (`rewind serve` formats them as
    /// its `--log-format` says).
    pub fn with_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Arc::new(log);
        self
    }

    /// Writes one log line.
    pub(crate) fn log(&self, line: &str) {
        (self.log)(line);
    }

    /// Requires `Authorization: Bearer token` on every request, and enables the write
    /// endpoint (cancel).
    pub fn with_token(mut self, token: impl Into<Arc<str>>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Ends every event stream (call it when the server starts shutting down: a graceful
    /// shutdown waits for open connections).
    pub fn shutdown(&self) {
        self.stop_tx.send_replace(true);
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(metrics::routes())
        .merge(pages::routes())
        .merge(auth::routes())
        .layer(middleware::from_fn_with_state(state.clone(), auth::check))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes; then event streams end and
/// open requests are let finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let s = state.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            s.shutdown();
        })
        .await
}
