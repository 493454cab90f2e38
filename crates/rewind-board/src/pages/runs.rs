//! `/`: every run, newest first: state, % restored, ETA, who started it, when, the workflow.

use axum::extract::State as AxState;
use maud::{Markup, html};
use rewind_model::RunState;
use rewind_runtime::RunView;
use rewind_store::{RunRecord, Store};

use super::run::short;
use super::{Page, PageError, layout, percent, share};
use crate::AppState;

/// What the list shows of one run.
struct Row {
    rec: RunRecord,
    restored: usize,
    total: usize,
}

pub(super) async fn page(AxState(st): AxState<AppState>) -> Result<Markup, PageError> {
    let mut rows = Vec::new();
    for rec in st.store.runs().await? {
        let total = usize::try_from(rec.spec.targets).unwrap_or(usize::MAX);
        // A succeeded run restored every target; others are counted from their instances.
        let restored = if rec.state == RunState::Succeeded {
            total
        } else {
            match RunView::load(st.store.as_ref(), rec.spec.id).await {
                Ok(v) => v.targets().iter().filter(|t| t.state == "succeeded").count(),
                Err(_) => 0,
            }
        };
        rows.push(Row { rec, restored, total });
    }
    rows.sort_by(|a, b| b.rec.spec.started_unix_ms.cmp(&a.rec.spec.started_unix_ms));
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

fn row(r: &Row) -> Markup {
    let id = r.rec.spec.id.to_string();
    let p = share(r.restored, r.total);
    html! {
        tr data-run=(id) {
            td { a href=(format!("/runs/{id}")) { b { (r.rec.spec.workflow) } } @if r.rec.spec.simulated { " " span.badge.sim { "simulated" } } }
            td { span class=(format!("badge {}", r.rec.state)) { (r.rec.state) } }
            td.pct { span.meter { span.fill style=(format!("width:{p:.1}%")) {} } " " span.v { (percent(p)) } }
            td.num { (r.restored) " / " (r.total) }
            td.num.eta { @if r.rec.state.is_ended() { "done" } @else { "—" } }
            td.by { "—" }
            td { (r.rec.spec.created_at) }
            td { a href=(format!("/runs/{id}")) { code { (short(&id)) } } }
        }
    }
}
