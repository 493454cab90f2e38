//! `/runs/{id}/events?page=N`: a run's audit log (its append-only events), oldest first, a page
//! of [`PER_PAGE`] at a time.

use axum::extract::{Path, Query, State as AxState};
use maud::{Markup, html};
use rewind_model::RunId;
use serde::Deserialize;

use super::run::short;
use super::{Page, PageError, layout, parse_run_id, secs};
use crate::AppState;

/// Events per page.
pub(super) const PER_PAGE: usize = 200;

#[derive(Deserialize)]
pub(super) struct Paging {
    page: Option<usize>,
}

pub(super) async fn page(
    AxState(st): AxState<AppState>,
    Path(id): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Markup, PageError> {
    let run: RunId = parse_run_id(&id)?;
    let page = paging.page.unwrap_or(1);
    if page == 0 {
        return Err(PageError::BadRequest("`page` counts from 1".to_owned()));
    }
    let (view, events) = st.rendered.events(&st, run).await?;
    let rec = &view.record;
    let pages = events.len().div_ceil(PER_PAGE).max(1);
    if page > pages {
        return Err(PageError::NotFound(format!(
            "run {run}'s audit log has {pages} page(s) of {PER_PAGE}; there is no page {page}"
        )));
    }
    let shown = events.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE);
    // Oldest first: "newer" and "older" read as the log's direction, page 1 is the start.
    let nav = html! {
        p.pager {
            @if page > 1 { a href=(format!("?page={}", page - 1)) { "‹ earlier" } " · " }
            "page " (page) " of " (pages) " (" (events.len()) " events)"
            @if page < pages { " · " a href=(format!("?page={}", page + 1)) { "later ›" } }
        }
    };
    Ok(layout(
        &format!("audit log of {}", short(&id)),
        Page::Other,
        html! {
            p.crumbs { a href="/" { "Runs" } " › " a href=(format!("/runs/{id}")) { (rec.spec.workflow) " " (short(&id)) } " › audit log" }
            h1 { "Audit log" }
            (nav)
            table.events {
                thead { tr { th { "#" } th { "at" } th { "wall clock" } th { "event" } th { "instance" } th { "detail" } } }
                tbody {
                    @for e in shown {
                        tr {
                            td.num { (e.seq) }
                            td.num { (secs(e.event.at_s)) }
                            td { (e.event.wall) }
                            td { code { (e.event.kind.as_str()) } }
                            td { @if let Some(k) = &e.event.key { code { (k) } } }
                            td.detail { @if let Some(d) = &e.event.detail { (d) } }
                        }
                    }
                }
            }
            (nav)
        },
    ))
}
