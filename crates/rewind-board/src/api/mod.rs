//! The JSON API under `/api/v1/` (README "Serving the board and API"; docs/openapi.json is its
//! contract, checked by tests/api.rs): runs, one run, its targets, instances, events and status
//! feed (JSON or CSV), drills, workers, server-sent events (`sse`), and the one write, `cancel`,
//! which exists only when a token is configured.
//!
//! Errors are `{"error": "..."}`: 400 for a malformed id or query, 404 for an unknown run or
//! drill, 401 without the bearer token, 403 for a write without a token configured.

mod sse;
pub(crate) mod view;

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rewind_model::{EventKind, InstanceState, RunId};
use rewind_store::{DrillRecord, NewEvent, Store, StoreError};
use serde_json::{Value, json};

pub(crate) use sse::Feeds;
pub(crate) use view::Cache;
pub use view::{Computed, Failure, InstanceRow, RunRow, RunSummary, TargetRow, Waves};

use crate::AppState;

/// Default and largest page of `instances`.
const INSTANCES_LIMIT: (usize, usize) = (500, 5000);
/// Default and largest page of `events`.
const EVENTS_LIMIT: (u32, u32) = (1000, 10_000);

/// An API error: its status and message, answered as `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed id or query.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such run or drill.
    #[error("{0}")]
    NotFound(String),
    /// 401: the bearer token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: not allowed in this configuration.
    #[error("{0}")]
    Forbidden(String),
    /// 409: not allowed in the run's state.
    #[error("{0}")]
    Conflict(String),
    /// 500: the store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<rewind_runtime::RuntimeError> for ApiError {
    fn from(e: rewind_runtime::RuntimeError) -> Self {
        match e {
            rewind_runtime::RuntimeError::NoSuchRun(id) => view::no_run(id),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// This module's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(run))
        .route("/api/v1/runs/{id}/targets", get(targets))
        .route("/api/v1/runs/{id}/instances", get(instances))
        .route("/api/v1/runs/{id}/events", get(events))
        .route("/api/v1/runs/{id}/status-feed", get(status_feed))
        .route("/api/v1/runs/{id}/stream", get(sse::run_stream))
        .route("/api/v1/runs/{id}/cancel", post(cancel))
        .route("/api/v1/stream", get(sse::runs_stream))
        .route("/api/v1/drills", get(drills))
        .route("/api/v1/drills/{id}", get(drill))
        .route("/api/v1/workers", get(workers))
        .route("/api/{*rest}", axum::routing::any(unknown))
}

async fn unknown() -> ApiError {
    ApiError::NotFound("no such endpoint (see docs/openapi.json)".into())
}

pub(crate) fn run_id(raw: &str) -> ApiResult<RunId> {
    raw.parse().map_err(|e| ApiError::BadRequest(format!("{e}")))
}

/// The query parameters, each at most once and each one of `allowed`.
fn params(
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> ApiResult<BTreeMap<String, String>> {
    let Query(pairs) = q.map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            let ok = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter `{k}` (this endpoint takes: {ok})"
            )));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::BadRequest(format!("query parameter `{k}` given twice")));
        }
    }
    Ok(out)
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    p: &BTreeMap<String, String>,
    name: &str,
    default: T,
    max: Option<T>,
) -> ApiResult<T> {
    let Some(raw) = p.get(name) else { return Ok(default) };
    let n: T = raw.parse().map_err(|_| {
        ApiError::BadRequest(format!("`{name}={raw}` is not a non-negative whole number"))
    })?;
    if let Some(max) = max
        && n > max
    {
        return Err(ApiError::BadRequest(format!("`{name}={raw}`: at most {max}")));
    }
    Ok(n)
}

async fn runs(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    params(q, &[])?;
    Ok(Json(json!({ "runs": s.run_rows().await? })))
}

/// The registered workers (`rewind worker`): name, host, queues, slots, state (`live`,
/// `stopping`, `gone`), last heartbeat and attempts held.
async fn workers(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    params(q, &[])?;
    Ok(Json(json!({ "workers": rewind_runtime::workers_shown(&s.store).await? })))
}

async fn run(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    params(q, &[])?;
    let (rec, c) = s.run_data(run_id(&id)?).await?;
    let mut v = serde_json::to_value(c.summary(&rec)).map_err(internal)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("failures".into(), serde_json::to_value(&c.failures).map_err(internal)?);
    }
    Ok(Json(v))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn targets(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    params(q, &[])?;
    let (rec, c) = s.run_data(run_id(&id)?).await?;
    Ok(Json(json!({ "run_id": rec.spec.id.to_string(), "targets": c.targets })))
}

async fn instances(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["target", "step", "state", "limit", "offset"])?;
    let id = run_id(&id)?;
    let limit = number(&p, "limit", INSTANCES_LIMIT.0, Some(INSTANCES_LIMIT.1))?;
    let offset = number(&p, "offset", 0usize, None)?;
    let state = match p.get("state") {
        Some(st) => Some(st.parse::<InstanceState>().map_err(|_| {
            let names: Vec<&str> = InstanceState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("`state={st}`: one of {}", names.join(", ")))
        })?),
        None => None,
    };
    let (rec, c) = s.run_data(id).await?;
    let keep = |i: &&InstanceRow| {
        p.get("target").is_none_or(|t| i.target.as_ref() == Some(t))
            && p.get("step").is_none_or(|st| &i.step == st)
            && state.is_none_or(|st| i.state == st.as_str())
    };
    let total = c.instances.iter().filter(keep).count();
    let page: Vec<&InstanceRow> =
        c.instances.iter().filter(keep).skip(offset).take(limit).collect();
    Ok(Json(json!({
        "run_id": rec.spec.id.to_string(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "instances": page,
    })))
}

async fn events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["after", "limit"])?;
    let id = run_id(&id)?;
    let after = number(&p, "after", 0i64, None)?;
    if after < 0 {
        return Err(ApiError::BadRequest(format!("`after={after}` is negative")));
    }
    let limit = number(&p, "limit", EVENTS_LIMIT.0, Some(EVENTS_LIMIT.1))?;
    if s.store.run_marker(id).await?.is_none() {
        return Err(view::no_run(id));
    }
    let rows = s.store.events_after(id, after, limit).await?;
    let next = rows.last().map_or(after, |e| e.seq);
    let events: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            let detail =
                e.event.detail.map(|d| serde_json::from_str(&d).unwrap_or(Value::String(d)));
            json!({
                "seq": e.seq,
                "at_s": e.event.at_s,
                "wall": e.event.wall,
                "kind": e.event.kind.as_str(),
                "key": e.event.key,
                "detail": detail,
            })
        })
        .collect();
    Ok(Json(json!({ "run_id": id.to_string(), "events": events, "next_after": next })))
}

async fn status_feed(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Response> {
    let p = params(q, &["format"])?;
    let csv = match p.get("format").map(String::as_str) {
        Some("csv") => true,
        Some("json") => false,
        Some(f) => return Err(ApiError::BadRequest(format!("`format={f}`: csv or json"))),
        None => headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    let (rec, c) = s.run_data(run_id(&id)?).await?;
    let rows: Vec<Value> = c
        .targets
        .iter()
        .map(|t| {
            json!({
                "target": t.target,
                "state": t.state,
                "eta_s": t.eta_s,
                "restored_at": t.restored_at_s.map(|at| view::wall_of(&rec, at)),
            })
        })
        .collect();
    if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["target", "state", "eta_s", "restored_at"]).map_err(internal)?;
        for t in &c.targets {
            let eta = t.eta_s.map(|e| format!("{e:.0}")).unwrap_or_default();
            let at = t.restored_at_s.map(|at| view::wall_of(&rec, at)).unwrap_or_default();
            w.write_record([t.target.as_str(), t.state, &eta, &at]).map_err(internal)?;
        }
        let body = w.into_inner().map_err(internal)?;
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    let row = c.row(&rec);
    Ok(Json(json!({
        "run_id": row.run_id,
        "workflow": row.workflow,
        "state": row.state,
        "percent_restored": row.percent_restored,
        "eta_s": row.eta_s,
        "generated_at": view::now_rfc3339(),
        "targets": rows,
    }))
    .into_response())
}

async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if s.token.is_none() {
        return Err(ApiError::Forbidden(
            "this server is read-only: writes (cancel) need `rewind serve --token-file F`, and \
             the token as `Authorization: Bearer TOKEN`; or run `rewind cancel RUN_ID`"
                .into(),
        ));
    }
    params(q, &[])?;
    let id = run_id(&id)?;
    let rec = s.store.run(id).await?.ok_or_else(|| view::no_run(id))?;
    if !rec.state.holds_targets() {
        return Err(ApiError::Conflict(format!("run {id} already ended: {}", rec.state)));
    }
    let who = rewind_runtime::identity().await;
    let event = NewEvent {
        at_s: rec.clock_s,
        wall: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        kind: EventKind::OperatorCancel,
        key: None,
        detail: Some(
            json!({ "user": who.user, "host": who.host, "via": "rewind serve" }).to_string(),
        ),
    };
    s.store.request_cancel(id, &event).await?;
    let driven = rewind_runtime::is_driven(&rec);
    let note = if driven {
        format!("cancel requested; {} stops its running actions", rec.owner.unwrap_or_default())
    } else {
        format!(
            "cancel requested; no live process drives the run: `rewind cancel {id}` (or `rewind \
             resume {id}`) ends it"
        )
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "run_id": id.to_string(), "cancel_requested": true, "driven": driven, "note": note }),
        ),
    ))
}

fn drill_json(d: DrillRecord) -> Value {
    let result: Value = serde_json::from_str(&d.result).unwrap_or(Value::String(d.result));
    json!({
        "id": d.id,
        "name": d.name,
        "run_id": d.run_id,
        "started_at": d.started_at,
        "passed": d.passed,
        "rto_s": d.rto_s,
        "rpo_s": d.rpo_s,
        "rto_objective_s": result.get("rto_objective_s").cloned().unwrap_or(Value::Null),
        "rpo_objective_s": result.get("rpo_objective_s").cloned().unwrap_or(Value::Null),
        "objectives": result.get("objectives").cloned().unwrap_or_else(|| json!([])),
        "result": result,
    })
}

async fn drills(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["name"])?;
    let list = s.store.drills(p.get("name").map(String::as_str)).await?;
    Ok(Json(json!({ "drills": list.into_iter().map(drill_json).collect::<Vec<_>>() })))
}

async fn drill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    params(q, &[])?;
    // Stored in the hyphenated lower-case form: `ABC…`, `{…}` and `urn:uuid:…` name the same.
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|e| ApiError::BadRequest(format!("drill id {id:?} is not a UUID: {e}")))?
        .to_string();
    let d = s
        .store
        .drill(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no drill {id} in this checkpoint store")))?;
    Ok(Json(drill_json(d)))
}
