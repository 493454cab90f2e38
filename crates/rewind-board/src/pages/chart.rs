//! Inline SVG: the "% restored over time" curve and the Gantt of steps and pools.
//!
//! Both are drawn here, server-side, so a page shows them without JavaScript; the script redraws
//! the curve (with the same geometry) as targets are restored. The Gantt is aggregated per step,
//! one bar from the step's first start to its last end, so it weighs the same at 30 instances
//! and at 27,000.

use std::fmt::Write as _;

use maud::{Markup, PreEscaped, html};
use rewind_runtime::RunView;
use rewind_scheduler::State;

use super::secs;

/// Width of both charts' view boxes.
const W: f64 = 960.0;

/// The curve's plot area within its view box (the script uses the same numbers).
const CURVE_H: f64 = 220.0;
const CURVE_LEFT: f64 = 44.0;
const CURVE_RIGHT: f64 = 12.0;
const CURVE_TOP: f64 = 10.0;
const CURVE_BOTTOM: f64 = 24.0;

/// The "% restored over time" chart: a step curve of the share of targets restored against the
/// run's clock. `times`: when each restored target was restored (any order); `total`: targets;
/// `clock`: the run's clock (its makespan once ended).
pub(super) fn restored_curve(times: &[f64], total: usize, clock: f64) -> Markup {
    let mut times: Vec<f64> = times.iter().copied().filter(|t| t.is_finite()).collect();
    times.sort_by(f64::total_cmp);
    let xmax = times.last().copied().unwrap_or(0.0).max(clock).max(1e-9);
    let pw = W - CURVE_LEFT - CURVE_RIGHT;
    let ph = CURVE_H - CURVE_TOP - CURVE_BOTTOM;
    let x = |t: f64| CURVE_LEFT + pw * t / xmax;
    let y =
        |n: usize| CURVE_TOP + ph * (1.0 - if total == 0 { 1.0 } else { n as f64 / total as f64 });
    let mut pts = String::with_capacity(times.len() * 24);
    let _ = write!(pts, "{:.1},{:.1}", x(0.0), y(0));
    let mut i = 0;
    while i < times.len() {
        let t = times[i];
        let mut j = i;
        while j < times.len() && times[j] == t {
            j += 1;
        }
        let _ = write!(pts, " {:.1},{:.1} {:.1},{:.1}", x(t), y(i), x(t), y(j));
        i = j;
    }
    let _ = write!(pts, " {:.1},{:.1}", x(xmax), y(times.len()));
    let area = format!("{pts} {:.1},{:.1}", x(xmax), y(0));
    html! {
        svg #chart .chart viewBox=(format!("0 0 {W} {CURVE_H}")) role="img"
            aria-label="share of targets restored over the run's time"
            data-total=(total) data-clock=(clock) {
            @for p in [0usize, 25, 50, 75, 100] {
                @let yy = CURVE_TOP + ph * (1.0 - p as f64 / 100.0);
                line.gl x1=(CURVE_LEFT) x2=(W - CURVE_RIGHT) y1=(yy) y2=(yy) {}
                text.ylab x=(CURVE_LEFT - 6.0) y=(yy + 4.0) { (p) "%" }
            }
            @for k in 0..=4 {
                @let t = xmax * f64::from(k) / 4.0;
                text.xlab style=(anchor(k)) x=(x(t)) y=(CURVE_H - 6.0) { (secs(t)) }
            }
            polygon.area points=(area) {}
            polyline.curve points=(pts) {}
        }
    }
}

/// Time labels 0..=4: the first starts at its tick, the last ends at it, so neither is clipped.
fn anchor(k: u32) -> &'static str {
    match k {
        0 => "text-anchor:start",
        4 => "text-anchor:end",
        _ => "text-anchor:middle",
    }
}

/// One step's bar: its instances, and the span of their attempts.
#[derive(Clone, Debug, Default)]
pub(super) struct StepBar {
    pub step: String,
    pub pool: Option<String>,
    pub instances: usize,
    pub done: usize,
    pub running: usize,
    pub failed: usize,
    pub blocked: usize,
    pub attempts: usize,
    pub first: Option<f64>,
    pub last: Option<f64>,
}

impl StepBar {
    /// The state the bar is coloured by.
    fn state(&self) -> &'static str {
        if self.failed > 0 {
            "failed"
        } else if self.blocked > 0 {
            "blocked"
        } else if self.running > 0 || (self.done > 0 && self.done < self.instances) {
            "running"
        } else if self.done == self.instances {
            "succeeded"
        } else {
            "pending"
        }
    }
}

/// Per step, in workflow order: one pass over the instances and one over the attempts.
pub(super) fn step_bars(view: &RunView) -> Vec<StepBar> {
    let wf = view.plan.workflow();
    let mut bars: Vec<StepBar> = wf
        .steps
        .iter()
        .map(|s| StepBar {
            step: s.id.to_string(),
            pool: s.resource.as_ref().map(ToString::to_string),
            ..StepBar::default()
        })
        .collect();
    let plan = view.plan.instances();
    for (i, inst) in plan.iter().enumerate() {
        let Some(b) = bars.get_mut(inst.step as usize) else { continue };
        b.instances += 1;
        match view.state(i) {
            State::Succeeded | State::Skipped => b.done += 1,
            State::Running => b.running += 1,
            State::Failed => b.failed += 1,
            State::Blocked => b.blocked += 1,
            State::Pending | State::Cancelled => {}
        }
    }
    let clock = view.record.clock_s;
    for a in &view.attempts {
        let Some(inst) = plan.get(a.idx as usize) else { continue };
        let Some(b) = bars.get_mut(inst.step as usize) else { continue };
        b.attempts += 1;
        let end = a.ended_s.unwrap_or(clock);
        b.first = Some(b.first.map_or(a.started_s, |f| f.min(a.started_s)));
        b.last = Some(b.last.map_or(end, |l| l.max(end)));
    }
    bars
}

const GANTT_LABEL: f64 = 300.0;
const GANTT_ROW: f64 = 20.0;
const GANTT_LANE: f64 = 24.0;
const GANTT_AXIS: f64 = 22.0;

/// The Gantt: a lane per pool (in the workflow's order, then steps with no pool), a row per
/// step. `capacities`: each pool's name and capacity.
pub(super) fn gantt(bars: &[StepBar], capacities: &[(String, u32)], clock: f64) -> Markup {
    let mut lanes: Vec<(Option<&str>, Option<u32>, Vec<&StepBar>)> = capacities
        .iter()
        .map(|(name, cap)| (Some(name.as_str()), Some(*cap), Vec::new()))
        .collect();
    lanes.push((None, None, Vec::new()));
    for b in bars {
        let lane = match &b.pool {
            Some(p) => lanes.iter().position(|(n, _, _)| *n == Some(p.as_str())),
            None => None,
        }
        .unwrap_or(lanes.len() - 1);
        lanes[lane].2.push(b);
    }
    lanes.retain(|(_, _, rows)| !rows.is_empty());
    let xmax = bars.iter().filter_map(|b| b.last).fold(clock, f64::max).max(1e-9);
    let plot = W - GANTT_LABEL - 12.0;
    let x = |t: f64| GANTT_LABEL + plot * t / xmax;
    let height = GANTT_AXIS
        + lanes.iter().map(|(_, _, rows)| GANTT_LANE + GANTT_ROW * rows.len() as f64).sum::<f64>()
        + 4.0;
    let mut y = GANTT_AXIS;
    let mut body = String::new();
    for (name, cap, rows) in &lanes {
        let lane = match (name, cap) {
            (Some(n), Some(c)) => format!("pool {n} · capacity {c}"),
            _ => "no pool".to_owned(),
        };
        body.push_str(
            &html! {
                rect.lane x="0" y=(y) width=(W) height=(GANTT_LANE) {}
                text.lanelab x="6" y=(y + 16.0) { (lane) }
            }
            .into_string(),
        );
        y += GANTT_LANE;
        for b in rows {
            let detail = format!(
                "{}: {} instance(s), {} done, {} running, {} failed, {} blocked; {} attempt(s){}",
                b.step,
                b.instances,
                b.done,
                b.running,
                b.failed,
                b.blocked,
                b.attempts,
                match (b.first, b.last) {
                    (Some(f), Some(l)) =>
                        format!("; first start {}, last end {}", secs(f), secs(l)),
                    _ => String::new(),
                }
            );
            body.push_str(
                &html! {
                    g.row {
                        title { (detail) }
                        text.steplab x="14" y=(y + 14.0) { (b.step) }
                        text.stepn x=(GANTT_LABEL - 8.0) y=(y + 14.0) {
                            (b.done) "/" (b.instances)
                        }
                        @if let (Some(f), Some(l)) = (b.first, b.last) {
                            rect class=(format!("bar {}", b.state())) x=(format!("{:.1}", x(f)))
                                y=(y + 4.0) width=(format!("{:.1}", (x(l) - x(f)).max(1.5)))
                                height=(GANTT_ROW - 8.0) rx="2" {}
                        }
                    }
                }
                .into_string(),
            );
            y += GANTT_ROW;
        }
    }
    html! {
        svg #gantt .gantt viewBox=(format!("0 0 {W} {height:.0}")) role="img"
            aria-label="steps by pool: one bar per step from its first start to its last end" {
            @for k in (0..=4).filter(|k| *k == 0 || xmax > 1e-6) {
                @let t = xmax * f64::from(k) / 4.0;
                line.gl x1=(x(t)) x2=(x(t)) y1=(GANTT_AXIS - 4.0) y2=(height) {}
                text.xlab style=(anchor(k)) x=(x(t)) y="14" { (secs(t)) }
            }
            (PreEscaped(body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_steps_up_once_per_instant() {
        let svg = restored_curve(&[2.0, 1.0, 2.0], 4, 4.0).into_string();
        // (0,0%), then at t=1 from 0 to 1 target, at t=2 from 1 to 3, flat to the clock.
        let pts = svg.split("points=\"").nth(2).and_then(|s| s.split('"').next()).unwrap_or("");
        assert_eq!(pts.split(' ').count(), 1 + 2 + 2 + 1, "{pts}");
        assert!(svg.contains("data-total=\"4\""), "{svg}");
    }

    #[test]
    fn a_run_without_targets_is_all_restored() {
        let svg = restored_curve(&[], 0, 0.0).into_string();
        assert!(svg.contains("polyline"), "{svg}");
    }

    #[test]
    fn steps_sit_in_their_pools_lane() {
        let bar = |step: &str, pool: Option<&str>| StepBar {
            step: step.to_owned(),
            pool: pool.map(str::to_owned),
            instances: 2,
            done: 2,
            first: Some(0.0),
            last: Some(5.0),
            ..StepBar::default()
        };
        let bars = [bar("a", None), bar("b", Some("db")), bar("c", Some("db"))];
        let svg = gantt(&bars, &[("db".to_owned(), 4), ("api".to_owned(), 2)], 5.0).into_string();
        let db = svg.find("pool db · capacity 4").unwrap_or(usize::MAX);
        let none = svg.find("no pool").unwrap_or(usize::MAX);
        assert!(db < svg.find(">b<").unwrap_or(0) && svg.find(">c<").unwrap_or(0) < none, "{svg}");
        assert!(!svg.contains("pool api"), "an empty lane is left out: {svg}");
        assert_eq!(svg.matches("bar succeeded").count(), 3, "{svg}");
    }
}
