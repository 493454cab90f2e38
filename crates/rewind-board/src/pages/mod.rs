//! The board: server-rendered HTML pages with a little progressive JavaScript.
//!
//! Every page is complete without JavaScript, rendered from the store at request time (maud
//! escapes every value it interpolates: target ids and attributes, errors and stderr tails come
//! from users). `assets/board.js`, embedded in the binary like `assets/board.css`, only applies
//! the server-sent events of `/api/v1/stream` and `/api/v1/runs/{id}/stream` to the DOM.
//!
//! Pages: `/` runs ([`runs`]), `/runs/{id}` one run ([`run`]), `/runs/{id}/targets/{target}` a
//! target's instances ([`target`]), `/runs/{id}/events` the audit log ([`events`]), `/drills`
//! drill history ([`drills`]). The SVG charts are drawn in [`chart`]; large runs are aggregated
//! here, server-side, so a page's weight follows the number of targets and steps, not instances.

mod chart;
mod drills;
mod events;
mod run;
mod runs;
mod target;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use rewind_model::RunId;
use rewind_runtime::{RunView, RuntimeError};
use rewind_store::{EventRecord, Store as _};

use crate::AppState;
use crate::api::view::Key;

/// The board's stylesheet.
pub const CSS: &str = include_str!("../../assets/board.css");
/// The board's script: server-sent events applied to the DOM.
pub const JS: &str = include_str!("../../assets/board.js");

/// This module's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(runs::page))
        .route("/runs/{id}", get(run::page))
        .route("/runs/{id}/targets/{target}", get(target::page))
        .route("/runs/{id}/events", get(events::page))
        .route("/drills", get(drills::page))
        .route("/assets/board.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/assets/board.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The request names something malformed (a run id that is no UUID, a page number of 0).
    #[error("{0}")]
    BadRequest(String),
    /// The run, target or page does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<RuntimeError> for PageError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NoSuchRun(_) => Self::NotFound(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<rewind_store::StoreError> for PageError {
    fn from(e: rewind_store::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::ApiError> for PageError {
    fn from(e: crate::ApiError) -> Self {
        match e {
            crate::ApiError::BadRequest(m) => Self::BadRequest(m),
            crate::ApiError::NotFound(m) => Self::NotFound(m),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "The store failed"),
        };
        let body = layout(
            title,
            Page::Other,
            html! {
                h1 { (title) }
                p.error { (self.to_string()) }
                p { a href="/" { "All runs" } }
            },
        );
        (status, body).into_response()
    }
}

/// `id` as a run id, or a 400 naming it.
pub(crate) fn parse_run_id(id: &str) -> Result<RunId, PageError> {
    id.parse::<RunId>()
        .map_err(|e| PageError::BadRequest(format!("`{id}` is not a run id (a UUID): {e}")))
}

/// What the pages read about a run, per run id, as of one version of the run
/// ([`crate::api::view::Key`]: state, clock, latest event): the API's read of that version
/// (`AppState::run_view`), its rendered run page, and its audit log.
/// Every open board re-fetches its run page while the run changes: one load and one render per
/// version serve them all, and a target page renders from the loaded run.
#[derive(Default)]
pub(crate) struct Rendered {
    runs: std::sync::Mutex<HashMap<RunId, RenderSlot>>,
}

/// One run's latest version; its lock is held while it loads or renders.
type RenderSlot = Arc<tokio::sync::Mutex<Option<Version>>>;

/// One version of a run, as the pages read it.
struct Version {
    key: Key,
    view: Arc<RunView>,
    page: Option<Bytes>,
    /// The run's events, read once and then only those after the last (the log only grows).
    events: Option<Arc<Vec<EventRecord>>>,
}

/// Runs kept at most (a loaded run of 883 sites, 27,529 instances, is a few MB).
const RUNS_KEPT: usize = 16;

impl Rendered {
    fn slot(&self, id: RunId) -> RenderSlot {
        let mut runs = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if runs.len() >= RUNS_KEPT && !runs.contains_key(&id) {
            runs.clear();
        }
        runs.entry(id).or_default().clone()
    }

    /// Run `id`'s current version, loaded unless the slot holds it; `f` reads it under the lock.
    async fn with<T>(
        &self,
        state: &AppState,
        id: RunId,
        f: impl AsyncFnOnce(&mut Version) -> Result<T, PageError>,
    ) -> Result<T, PageError> {
        // The API's read of the run's current version: one read per version for both.
        let (key, view) = state.run_view(id).await?;
        let slot = self.slot(id);
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|v| v.key != key) {
            let events = slot.take().and_then(|v| v.events);
            *slot = Some(Version { key, view, page: None, events });
        }
        let Some(version) = slot.as_mut() else {
            return Err(PageError::Internal("the run's version was not kept".to_owned()));
        };
        f(version).await
    }

    /// The loaded run `id`, as of now.
    pub(crate) async fn view(
        &self,
        state: &AppState,
        id: RunId,
    ) -> Result<Arc<RunView>, PageError> {
        self.with(state, id, async |v| Ok(v.view.clone())).await
    }

    /// The run page of `id`, rendered by `render` (off the async threads) once per version.
    pub(crate) async fn page(
        &self,
        state: &AppState,
        id: RunId,
        render: fn(&RunView) -> Markup,
    ) -> Result<Bytes, PageError> {
        self.with(state, id, async |v| {
            if let Some(page) = &v.page {
                return Ok(page.clone());
            }
            let view = v.view.clone();
            let page =
                tokio::task::spawn_blocking(move || Bytes::from(render(&view).into_string()))
                    .await
                    .map_err(|e| PageError::Internal(e.to_string()))?;
            v.page = Some(page.clone());
            Ok(page)
        })
        .await
    }

    /// The run's loaded record and its events, oldest first (only new events are read).
    pub(crate) async fn events(
        &self,
        state: &AppState,
        id: RunId,
    ) -> Result<(Arc<RunView>, Arc<Vec<EventRecord>>), PageError> {
        self.with(state, id, async |v| {
            let last = v.events.as_ref().and_then(|e| e.last()).map_or(i64::MIN, |e| e.seq);
            let fresh = state.store.events_after(id, last, u32::MAX).await?;
            if v.events.is_none() || !fresh.is_empty() {
                let mut all = v.events.as_ref().map_or_else(Vec::new, |e| e.as_ref().clone());
                all.extend(fresh);
                v.events = Some(Arc::new(all));
            }
            let events = v.events.clone().unwrap_or_default();
            Ok((v.view.clone(), events))
        })
        .await
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    Runs,
    Drills,
    Other,
}

/// What the script needs to know about a page, as `data-*` attributes of `body`.
#[derive(Default)]
pub(crate) struct Live {
    /// The run a run page shows.
    pub run: Option<String>,
    /// Whether to follow the page's event stream (the run has not ended).
    pub follow: bool,
}

/// A complete page: head, navigation, `main`.
pub(crate) fn layout(title: &str, current: Page, main: Markup) -> Markup {
    layout_live(title, current, &Live::default(), main)
}

/// A complete page whose script follows an event stream.
pub(crate) fn layout_live(title: &str, current: Page, live: &Live, main: Markup) -> Markup {
    let page = match current {
        Page::Runs => "runs",
        Page::Drills => "drills",
        Page::Other if live.run.is_some() => "run",
        Page::Other => "other",
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · rewind" }
                link rel="stylesheet" href="/assets/board.css";
            }
            body data-page=(page) data-run=[live.run.as_deref()] data-follow=[live.follow.then_some("1")] {
                header.top {
                    a.brand href="/" { "rewind" }
                    nav {
                        a.current[current == Page::Runs] href="/" { "Runs" }
                        a.current[current == Page::Drills] href="/drills" { "Drills" }
                    }
                    span #live .live hidden { "live" }
                }
                main { (main) }
                script src="/assets/board.js" defer {}
            }
        }
    }
}

/// Seconds as an operator reads them: `4.2s`, `3m 05s`, `2h 04m`, `1d 3h`.
pub(crate) fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".to_owned();
    }
    if s < 60.0 {
        return if s < 10.0 { format!("{s:.1}s") } else { format!("{s:.0}s") };
    }
    let t = s.round() as u64;
    let (d, h, m, sec) = (t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else {
        format!("{m}m {sec:02}s")
    }
}

/// A share, 0–100, with one decimal.
pub(crate) fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

/// Share of targets restored, 0–100 (100 for a run without targets).
pub(crate) fn share(restored: usize, total: usize) -> f64 {
    if total == 0 { 100.0 } else { 100.0 * restored as f64 / total as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_like_an_operator_says_them() {
        assert_eq!(secs(4.25), "4.2s");
        assert_eq!(secs(42.0), "42s");
        assert_eq!(secs(185.0), "3m 05s");
        assert_eq!(secs(7440.0), "2h 04m");
        assert_eq!(secs(97_200.0), "1d 3h");
        assert_eq!(secs(-1.0), "—");
        assert_eq!(secs(f64::NAN), "—");
    }

    #[test]
    fn a_malformed_run_id_is_a_bad_request_naming_it() {
        let Err(PageError::BadRequest(m)) = parse_run_id("nope") else { panic!("accepted") };
        assert!(m.contains("`nope` is not a run id"), "{m}");
    }
}
