//! `/`: every run, newest first: state, % restored, ETA, who started it, when, the workflow;
//! then the registered workers (`rewind worker`), when there are any.

use axum::extract::State as AxState;
use maud::{Markup, html};
use rewind_runtime::WorkerView;

use super::run::short;
use super::{Page, PageError, layout, percent, secs};
use crate::AppState;
use crate::api::RunRow;

pub(super) async fn page(AxState(st): AxState<AppState>) -> Result<Markup, PageError> {
    // The rows `GET /api/v1/runs` and the `runs` event carry, so the script updates what it
    // was rendered from.
    let mut rows = st.run_rows().await?;
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let workers = rewind_runtime::workers_shown(&st.store).await?;
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
            @if !workers.is_empty() { (workers_section(&workers)) }
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

/// The workers as `GET /api/v1/workers` shows them: state, host, queues, slots, attempts held,
/// last heartbeat.
fn workers_section(workers: &[WorkerView]) -> Markup {
    html! {
        section #workers {
            h2 { "Workers" }
            table.workers {
                thead { tr { th { "worker" } th { "state" } th { "host" } th { "queues" } th { "slots" } th { "attempts held" } th { "last heartbeat" } } }
                tbody {
                    @for w in workers {
                        tr data-worker=(w.name) {
                            td { code { (w.name) } }
                            td { span class=(format!("badge {}", w.state.as_str())) { (w.state.as_str()) } }
                            td { (w.host) }
                            td { (w.queues.join(", ")) }
                            td.num { (w.slots) }
                            td.num { (w.attempts_held) }
                            td.num { (secs(w.heartbeat_age_s)) " ago" }
                        }
                    }
                }
            }
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
