//! The `api` routes (filled in by issue 16's work).

use axum::Router;

use crate::AppState;

/// This module's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
