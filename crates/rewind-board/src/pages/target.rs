//! `/runs/{id}/targets/{target}`: one target (site) of a run: its attributes and its instances,
//! each with its state, attempts, durations, error and the stderr tail of its last attempt.

use std::collections::HashMap;

use axum::extract::{Path, State as AxState};
use maud::{Markup, html};
use rewind_model::Subject;
use rewind_runtime::RunView;
use rewind_store::AttemptRecord;

use super::run::short;
use super::{Page, PageError, layout, parse_run_id, secs};
use crate::AppState;

pub(super) async fn page(
    AxState(st): AxState<AppState>,
    Path((id, target)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    let run = parse_run_id(&id)?;
    let view = st.rendered.view(&st, run).await?;
    render(&view, &target)
}

fn render(view: &RunView, target: &str) -> Result<Markup, PageError> {
    let id = view.record.spec.id.to_string();
    let files = view.plan.targets().targets();
    let Some(t) = files.iter().position(|t| t.id.to_string() == target) else {
        return Err(PageError::NotFound(format!("run {id} has no target `{target}`")));
    };
    let state = view.targets().get(t).map_or("pending", |v| v.state);
    let mut attempts: HashMap<u32, Vec<&AttemptRecord>> = HashMap::new();
    for a in &view.attempts {
        attempts.entry(a.idx).or_default().push(a);
    }
    let plan = view.plan.instances();
    let mine: Vec<usize> = (0..plan.len())
        .filter(|&i| matches!(plan[i].subject, Subject::Target(x) if x as usize == t))
        .collect();
    let clock = view.record.clock_s;
    Ok(layout(
        &format!("{target} in {}", short(&id)),
        Page::Other,
        html! {
            p.crumbs { a href="/" { "Runs" } " › " a href=(format!("/runs/{id}")) { (view.record.spec.workflow) " " (short(&id)) } " › target" }
            h1 { code { (target) } " " span class=(format!("badge {state}")) { (state) } }
            table.attrs {
                tbody {
                    tr { th { "kind" } td { (files[t].kind) } }
                    @for (k, v) in &files[t].attrs { tr { th { (k.as_str()) } td { (v.to_string()) } } }
                }
            }
            section.card {
                h2 { "Instances " small { "(" (mine.len()) ")" } }
                table.instances {
                    thead { tr { th { "step" } th { "state" } th { "attempts" } th { "started" } th { "ended" } th { "time" } th { "error" } } }
                    tbody {
                        @for &i in &mine {
                            @let row = &view.instances[i];
                            @let tries = attempts.get(&row.idx).map(Vec::as_slice).unwrap_or_default();
                            @let started = tries.first().map(|a| a.started_s);
                            @let ended = tries.last().and_then(|a| a.ended_s);
                            @let spent: f64 = tries.iter().map(|a| a.ended_s.unwrap_or(clock) - a.started_s).sum();
                            tr {
                                td { code { (row.step) } }
                                td { span class=(format!("badge {}", row.state)) { (row.state) } }
                                td.num { (row.attempts) }
                                td.num { (started.map(secs).unwrap_or_default()) }
                                td.num { (ended.map(secs).unwrap_or_default()) }
                                td.num { @if !tries.is_empty() { (secs(spent)) } }
                                td { @if let Some(e) = &row.error { span.error { (e) } } }
                            }
                            @if let Some(last) = tries.last().filter(|a| a.stderr_tail.as_deref().is_some_and(|s| !s.is_empty()) && a.outcome.is_some_and(|o| o.as_str() != "succeeded")) {
                                tr.tailrow { td colspan="7" {
                                    div.small { "stderr of attempt " (last.attempt) @if let Some(c) = last.exit_code { " (exit " (c) ")" } }
                                    pre.tail { (last.stderr_tail.as_deref().unwrap_or_default()) }
                                } }
                            }
                        }
                    }
                }
            }
        },
    ))
}
