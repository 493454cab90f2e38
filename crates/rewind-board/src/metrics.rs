//! `GET /metrics`: Prometheus exposition (text format 0.0.4, or OpenMetrics when the scraper
//! asks for it), computed from the checkpoint store on each scrape. The store is the truth: the
//! server keeps no counter of its own, so what a scrape says is what `rewind status` would.
//!
//! Cardinality rule: per-run series exist for every run that has not finished (running,
//! interrupted or halted) and for the most recently created finished run of each workflow;
//! `rewind_runs{state}` counts every run. A run's parsed plan is cached by run id (a run's plan
//! never changes); a finished run's measure is cached until its record changes (`retry`
//! reopens it). Names, labels and meanings: `docs/metrics.md`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rewind_model::{RunId, RunState};
use rewind_store::{RunRecord, SqlStore, Store, StoreError};

use crate::AppState;

mod expose;
pub mod sample;

pub use expose::{RunEntry, Scrape};
use sample::{DrillSample, RUN_STATES, RunSample, Shape, wall_s};

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// This module's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape)).layer(Extension(Arc::new(Cache::default())))
}

/// What a scrape reuses from the previous ones.
#[derive(Debug, Default)]
pub struct Cache {
    /// Per run id, its plan's shape (immutable), or why it could not be read.
    shapes: Mutex<HashMap<RunId, Result<Arc<Shape>, String>>>,
    /// Per finished run id, its measure and the record it was measured at.
    finished: Mutex<HashMap<RunId, (Stamp, Arc<RunSample>)>>,
}

/// What of a run's record changes whenever its rows do, once it has ended.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stamp {
    state: RunState,
    clock_s: u64,
    finished_s: Option<u64>,
    heartbeat: Option<i64>,
}

impl Stamp {
    fn of(r: &RunRecord) -> Self {
        Self {
            state: r.state,
            clock_s: r.clock_s.to_bits(),
            finished_s: r.finished_s.map(f64::to_bits),
            heartbeat: r.heartbeat_unix_ms,
        }
    }
}

/// Succeeded, failed or cancelled: nothing runs it again except an operator's `retry`.
fn finished(state: RunState) -> bool {
    matches!(state, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
}

/// The runs shown one by one, newest first: every unfinished run, and the newest finished run
/// of each workflow. `runs` is newest first, as the store lists them.
pub fn shown(runs: &[RunRecord]) -> Vec<&RunRecord> {
    let mut seen: HashSet<&str> = HashSet::new();
    runs.iter().filter(|r| !finished(r.state) || seen.insert(r.spec.workflow.as_str())).collect()
}

impl Cache {
    fn shape(&self, rec: &RunRecord) -> Result<Arc<Shape>, String> {
        let id = rec.spec.id;
        if let Some(s) = lock(&self.shapes).get(&id) {
            return s.clone();
        }
        let shape = rewind_runtime::load_plan(rec)
            .map(|plan| Arc::new(Shape::of(&plan)))
            .map_err(|e| e.to_string());
        lock(&self.shapes).insert(id, shape.clone());
        shape
    }

    async fn measure(
        &self,
        store: &SqlStore,
        rec: &RunRecord,
        shape: &Shape,
    ) -> Result<Arc<RunSample>, StoreError> {
        let id = rec.spec.id;
        let stamp = Stamp::of(rec);
        let done = finished(rec.state);
        if done
            && let Some((s, sample)) = lock(&self.finished).get(&id)
            && *s == stamp
        {
            return Ok(sample.clone());
        }
        // Two reads on two of the pool's connections at once.
        let (rows, attempts) = tokio::try_join!(store.instance_states(id), store.attempts(id))?;
        let sample = Arc::new(RunSample::measure(shape, &rows, &attempts));
        if done {
            lock(&self.finished).insert(id, (stamp, sample.clone()));
        }
        Ok(sample)
    }

    /// Forgets runs no longer shown.
    fn retain(&self, keep: &HashSet<RunId>) {
        lock(&self.shapes).retain(|id, _| keep.contains(id));
        lock(&self.finished).retain(|id, _| keep.contains(id));
    }

    /// Reads what one scrape exposes from `store`.
    pub async fn collect(&self, store: &SqlStore) -> Result<Scrape, StoreError> {
        let runs = store.runs().await?;
        let mut scrape = Scrape::default();
        for r in &runs {
            let state = rewind_runtime::shown_state(r);
            if let Some(i) = RUN_STATES.iter().position(|s| *s == state) {
                scrape.runs_by_state[i] += 1;
            }
        }
        let shown = shown(&runs);
        self.retain(&shown.iter().map(|r| r.spec.id).collect());
        for rec in shown {
            let measured = match self.shape(rec) {
                Ok(shape) => {
                    let sample = self.measure(store, rec, &shape).await?;
                    Some((shape, sample))
                }
                Err(_) => {
                    scrape.unreadable += 1;
                    None
                }
            };
            let last = measured.as_ref().and_then(|(_, s)| s.last_completion_s).unwrap_or(0.0);
            scrape.runs.push(RunEntry {
                run_id: rec.spec.id.to_string(),
                workflow: rec.spec.workflow.clone(),
                state: rewind_runtime::shown_state(rec),
                simulated: rec.spec.simulated,
                started_s: wall_s(rec, 0.0),
                finished_s: rec.finished_s.filter(|_| finished(rec.state)).map(|f| wall_s(rec, f)),
                last_progress_s: wall_s(rec, last),
                measured,
            });
        }
        scrape.drills = DrillSample::of(&store.drills(None).await?);
        Ok(scrape)
    }
}

/// A poisoned lock still holds a usable cache: a panic elsewhere cannot corrupt a map insert.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the scraper asked for OpenMetrics (`Accept: application/openmetrics-text`).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Encodes a scrape: OpenMetrics or the Prometheus text format, with its content type.
pub fn encode(
    scrape: &Scrape,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let reg = scrape.registry();
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok((out, OPENMETRICS))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?;
        Ok((out, PROMETHEUS_TEXT))
    }
}

async fn scrape(
    State(state): State<AppState>,
    Extension(cache): Extension<Arc<Cache>>,
    headers: HeaderMap,
) -> Response {
    let scrape = match cache.collect(&state.store).await {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("rewind: reading the checkpoint store for /metrics: {e}\n"),
            )
                .into_response();
        }
    };
    match encode(&scrape, wants_openmetrics(&headers)) {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rewind: encoding /metrics: {e}\n"))
            .into_response(),
    }
}
