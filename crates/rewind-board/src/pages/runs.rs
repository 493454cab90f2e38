//! `/`: every run, newest first: state, % restored, ETA, who started it, when, the workflow.

use axum::extract::State as AxState;
use maud::{Markup, html};

use super::run::short;
use super::{Page, PageError, layout, percent, secs};
use crate::AppState;
use crate::api::RunRow;

pub(super) async fn page(AxState(st): AxState<AppState>) -> Result<Markup, PageError> {
    // The rows `GET /api/v1/runs` and the `runs` event carry, so the script updates what it
    // was rendered from.
    let mut rows = st.run_rows().await?;
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(layout(
        "Runs",
        Page::Runs,
        html! {
            h1 { "Runs" }
            @if rows.is_empty() {
                p.empty { "No run in this checkpoint store yet (" code { "rewind run …" } ")." }
            }
            table.runs hidden[rows.is_empty()] {
                thead { tr { th { "workflow" } th { "state" } th { "restored" } th { "targets" } th { "ETA" } th { "started by" } th { "created" } th { "run" } } }
                tbody #runs {
                    @for r in &rows { (row(r)) }
                }
            }
        },
    ))
}

fn row(r: &RunRow) -> Markup {
    let id = &r.run_id;
    let p = r.percent_restored;
    html! {
        tr data-run=(id) {
            td { a href=(format!("/runs/{id}")) { b { (r.workflow) } } @if r.simulated { " " span.badge.sim { "simulated" } } }
            td { span class=(format!("badge {}", r.state)) { (r.state) } }
            td.pct { span.meter { span.fill style=(format!("width:{p:.1}%")) {} } " " span.v { (percent(p)) } }
            td.num { (r.targets_restored) " / " (r.targets_total) }
            td.num.eta { (eta(r)) }
            td.by { (r.started_by.as_deref().unwrap_or("—")) }
            td { (r.created_at) }
            td { a href=(format!("/runs/{id}")) { code { (short(id)) } } }
        }
    }
}

/// `done` for an ended run, the time left for a running one, `—` when unknown.
pub(super) fn eta(r: &RunRow) -> String {
    match (r.state, r.eta_s) {
        ("succeeded", _) => "done".to_owned(),
        ("running", Some(s)) => secs(s),
        _ => "—".to_owned(),
    }
}
