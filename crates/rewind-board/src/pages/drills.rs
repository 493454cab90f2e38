//! `/drills`: drill history, newest first: each drill's achieved RTO and RPO against its
//! objectives, and whether it passed.

use axum::extract::State as AxState;
use maud::{Markup, html};
use rewind_store::{DrillRecord, Store};
use serde_json::Value;

use super::{Page, PageError, layout, secs};
use crate::AppState;

pub(super) async fn page(AxState(st): AxState<AppState>) -> Result<Markup, PageError> {
    let mut drills = st.store.drills(None).await?;
    drills.sort_by_key(|d| std::cmp::Reverse(d.started_unix_ms));
    Ok(layout(
        "Drills",
        Page::Drills,
        html! {
            h1 { "Drill history" }
            @if drills.is_empty() {
                p.empty { "No drill has run against this store yet (" code { "rewind drill run FILE" } ")." }
            } @else {
                table.drills {
                    thead { tr { th { "drill" } th { "started" } th { "result" } th { "RTO" } th { "RPO" } th { "targets" } th { "run" } } }
                    tbody { @for d in &drills { (row(d)) } }
                }
            }
        },
    ))
}

/// One drill: its result JSON gives the objectives (a result that does not parse still shows
/// what the record holds).
fn row(d: &DrillRecord) -> Markup {
    let result: Value = serde_json::from_str(&d.result).unwrap_or(Value::Null);
    let rto_obj = result.get("rto_objective_s").and_then(Value::as_f64);
    let rpo_obj = result.get("rpo_objective_s").and_then(Value::as_f64);
    let targets = result.get("targets").and_then(Value::as_array).map(Vec::len);
    let failures: Vec<&str> = result
        .get("failures")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let verdict = if d.passed { "passed" } else { "missed" };
    html! {
        tr {
            td { b { (d.name) } }
            td { (d.started_at) }
            td {
                span class=(format!("badge {}", if d.passed { "succeeded" } else { "failed" })) { (verdict) }
                @for f in &failures { div.error.small { (f) } }
            }
            td { (objective(d.rto_s, rto_obj)) }
            td { (objective(d.rpo_s, rpo_obj)) }
            td.num { @if let Some(n) = targets { (n) } }
            td { @if let Some(r) = &d.run_id { a href=(format!("/runs/{r}")) { code { (r.get(..8).unwrap_or(r)) } } } }
        }
    }
}

/// `12s / 30m` coloured by whether the achieved value met the objective.
fn objective(achieved: Option<f64>, objective: Option<f64>) -> Markup {
    let met = match (achieved, objective) {
        (Some(a), Some(o)) => Some(a <= o),
        _ => None,
    };
    html! {
        span class=(match met { Some(true) => "met", Some(false) => "missed", None => "" }) {
            (achieved.map_or_else(|| "—".to_owned(), secs))
        }
        @if let Some(o) = objective { span.obj { " / " (secs(o)) } }
    }
}
