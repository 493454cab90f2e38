//! `/runs/{id}`: one run. Its header (state, % restored, ETA, instances by state), the
//! "% restored over time" curve, the per-target grid, the Gantt of steps and pools, failures with
//! their stderr tails, waves, and a link to the audit log.

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::response::Html;
use maud::{Markup, html};
use rewind_runtime::{RunView, TargetView, shown_state};
use rewind_scheduler::State;

use super::{Live, Page, PageError, chart, layout_live, parse_run_id, percent, secs, share};
use crate::AppState;

/// Instance states, in the order the header counts them.
pub(super) const INSTANCE_STATES: [State; 7] = [
    State::Succeeded,
    State::Running,
    State::Pending,
    State::Failed,
    State::Blocked,
    State::Skipped,
    State::Cancelled,
];

/// Target states, in the order the grid's legend shows them.
pub(super) const TARGET_STATES: [&str; 6] =
    ["succeeded", "running", "pending", "failed", "blocked", "cancelled"];

/// Failures shown in full on the run page; the rest are counted, and each has its target page.
const FAILURES_SHOWN: usize = 25;

pub(super) async fn page(
    AxState(st): AxState<AppState>,
    Path(id): Path<String>,
) -> Result<Html<Bytes>, PageError> {
    let run = parse_run_id(&id)?;
    Ok(Html(st.rendered.page(&st, run, render).await?))
}

/// The page of `view`.
pub(super) fn render(view: &RunView) -> Markup {
    let rec = &view.record;
    let id = rec.spec.id.to_string();
    let targets = view.targets();
    let counts = view.counts();
    let restored = targets.iter().filter(|t| t.state == "succeeded").count();
    let ended = rec.state.is_ended();
    let clock = view.makespan_s();
    let times: Vec<f64> = targets.iter().filter_map(|t| t.finished_offset_s).collect();
    let bars = chart::step_bars(view);
    let pools: Vec<(String, u32)> =
        view.plan.workflow().resources.iter().map(|p| (p.name.to_string(), p.capacity)).collect();
    let live = Live { run: Some(id.clone()), follow: !ended };
    let title = format!("{} {}", rec.spec.workflow, short(&id));
    layout_live(
        &title,
        Page::Other,
        &live,
        html! {
            (header(view, &id, restored, targets.len(), clock))
            div.counts {
                @for s in INSTANCE_STATES {
                    span.count { i class=(format!("dot {s}")) {} (s) " " b id=(format!("n-{s}")) { (counts.get(s)) } }
                }
                span.count { "instances " b { (view.instances.len()) } }
            }
            section.card {
                h2 { "% restored over time" }
                (chart::restored_curve(&times, targets.len(), clock))
            }
            section.card {
                h2 { "Targets " small { "(" (targets.len()) "; click one for its instances)" } }
                (grid(view, &id, &targets))
            }
            section.card #steps {
                h2 { "Steps and pools" small { " (one bar per step: first start to last end)" } }
                (chart::gantt(&bars, &pools, clock))
            }
            (failures(view, &id))
            (waves(view, &targets))
            section.card {
                h2 { "Audit log" }
                p { a href=(format!("/runs/{id}/events")) { "Every event of this run" } ", oldest first, paginated." }
            }
        },
    )
}

/// The first 8 characters of an id.
pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn header(view: &RunView, id: &str, restored: usize, total: usize, clock: f64) -> Markup {
    let rec = &view.record;
    let ended = rec.state.is_ended();
    let shown = shown_state(rec);
    let eta = match view.eta() {
        _ if ended => "done".to_owned(),
        (Some(d), _) if d < std::time::Duration::MAX && shown == "running" => secs(d.as_secs_f64()),
        _ => "—".to_owned(),
    };
    html! {
        div.head {
            h1 {
                (rec.spec.workflow) " "
                span #state class=(format!("badge {shown}")) { (shown) }
                @if rec.spec.simulated { " " span.badge.sim { "simulated" } }
            }
            p.meta {
                "run " code { (id) }
                " · restore point " b { (rec.spec.restore_point) }
                " · created " (rec.spec.created_at)
                @if let Some(by) = &rec.spec.started_by { " by " b { (by) } }
                " · lower bound " (secs(rec.spec.lower_bound_s))
                @if let Some(r) = &rec.reason { " · " (r) }
            }
        }
        div.stats {
            div.stat.big { div.v #pct { (percent(share(restored, total))) } div.l { "restored" } }
            div.stat { div.v #restored { (restored) " / " (total) } div.l { "targets restored" } }
            div.stat { div.v #eta { (eta) } div.l { "ETA" } }
            div.stat {
                div.v #clock { (secs(clock)) }
                div.l #clock-label { @if ended { "makespan" } @else { "elapsed" } }
            }
        }
    }
}

fn grid(view: &RunView, id: &str, targets: &[TargetView]) -> Markup {
    let mut by_state = [0usize; TARGET_STATES.len()];
    for t in targets {
        if let Some(i) = TARGET_STATES.iter().position(|s| *s == t.state) {
            by_state[i] += 1;
        }
    }
    let files = view.plan.targets().targets();
    html! {
        div.legend {
            @for (i, s) in TARGET_STATES.iter().enumerate() {
                span.lg { i class=(format!("c {s}")) {} (s) " " b id=(format!("t-{s}")) { (by_state[i]) } }
            }
        }
        div #grid .grid {
            @for (i, t) in targets.iter().enumerate() {
                @let name = files.get(i).and_then(|f| f.attrs.iter().find(|(k, _)| k.as_str() == "name")).map(|(_, v)| v.to_string());
                a class=(format!("c {}", t.state))
                    href=(format!("/runs/{id}/targets/{}", t.id))
                    title=(format!("{} · {}{}", t.state, t.id, name.map(|n| format!(" · {n}")).unwrap_or_default()))
                    data-at=[t.finished_offset_s] {}
            }
        }
    }
}

fn failures(view: &RunView, id: &str) -> Markup {
    let failed = view.failures();
    if failed.is_empty() {
        return html! {};
    }
    html! {
        section.card #failures {
            h2 { "Failures " small { "(" (failed.len()) ")" } }
            @for (inst, last) in failed.iter().take(FAILURES_SHOWN) {
                div.failure {
                    div.fhead {
                        @if let Some(t) = &inst.target {
                            a href=(format!("/runs/{id}/targets/{t}")) { code { (inst.key) } }
                        } @else {
                            code { (inst.key) }
                        }
                        " · " (inst.attempts) " attempt(s)"
                        @if let Some(code) = last.and_then(|a| a.exit_code) { " · exit " (code) }
                    }
                    @if let Some(e) = inst.error.as_deref().or(last.and_then(|a| a.error.as_deref())) {
                        p.error { (e) }
                    }
                    @if let Some(tail) = last.and_then(|a| a.stderr_tail.as_deref()).filter(|t| !t.is_empty()) {
                        pre.tail { (tail) }
                    }
                }
            }
            @if failed.len() > FAILURES_SHOWN {
                p.more { (failed.len() - FAILURES_SHOWN) " more: each is on its target's page, and in " code { "rewind status " (id) } }
            }
        }
    }
}

fn waves(view: &RunView, targets: &[TargetView]) -> Markup {
    let rec = &view.record;
    if rec.spec.waves.is_empty() {
        return html! {};
    }
    // (wave, first target, last target, restored, state)
    let mut rows = Vec::new();
    let mut from = 0usize;
    for (i, end) in rec.spec.waves.iter().enumerate() {
        let end = (*end as usize).clamp(from, targets.len().max(from));
        let done = targets
            .get(from..end)
            .map_or(0, |ts| ts.iter().filter(|t| t.state == "succeeded").count());
        let wave = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let state = if wave < rec.wave {
            "passed".to_owned()
        } else if wave == rec.wave {
            rec.state.to_string()
        } else {
            "held".to_owned()
        };
        rows.push((wave, from, end, done, state));
        from = end;
    }
    html! {
        section.card #waves {
            h2 { "Waves" }
            table {
                thead { tr { th { "wave" } th { "targets" } th { "restored" } th { "state" } } }
                tbody {
                    @for (wave, from, end, done, state) in &rows {
                        tr {
                            td { (wave) }
                            td { (from + 1) "–" (end) " (" (end - from) ")" }
                            td { (done) " / " (end - from) }
                            td { span class=(format!("badge {state}")) { (state) } }
                        }
                    }
                }
            }
        }
    }
}
