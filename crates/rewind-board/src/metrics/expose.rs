//! The exposition: one scrape's samples as a `prometheus-client` registry, encoded as the
//! Prometheus text format (0.0.4) or OpenMetrics.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rewind_model::InstanceState;

use super::sample::{DURATION_BUCKETS, DrillSample, RUN_STATES, RunSample, Shape, TARGET_STATES};

/// One run as exposed: what its record says, and, when its plan could be read, its sample.
#[derive(Debug)]
pub struct RunEntry {
    /// Run id.
    pub run_id: String,
    /// Workflow name.
    pub workflow: String,
    /// Shown state (`interrupted` for a running run nobody drives).
    pub state: &'static str,
    /// Virtual-time simulation.
    pub simulated: bool,
    /// When it started, Unix seconds.
    pub started_s: f64,
    /// When it finished, Unix seconds.
    pub finished_s: Option<f64>,
    /// Last instance completion, Unix seconds (the start when none yet).
    pub last_progress_s: f64,
    /// Its plan's shape and its measure (none when its stored snapshot could not be read).
    pub measured: Option<(Arc<Shape>, Arc<RunSample>)>,
}

/// What one scrape exposes.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Every run of the store, per shown state ([`RUN_STATES`] order).
    pub runs_by_state: [u64; 6],
    /// The runs shown one by one (the cardinality rule's).
    pub runs: Vec<RunEntry>,
    /// Runs whose stored snapshot could not be read back into a plan.
    pub unreadable: u64,
    /// Per drill.
    pub drills: Vec<DrillSample>,
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn buckets() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Registers a family and hands it back to be filled.
fn family<M>(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, M>
where
    M: Default
        + prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric,
    M: std::fmt::Debug + Send + Sync + Clone + 'static,
{
    let f = Family::<Labels, M>::default();
    reg.register(name, help, f.clone());
    f
}

fn run(id: &str) -> Labels {
    vec![("run_id", id.to_owned())]
}

fn with(mut l: Labels, k: &'static str, v: &str) -> Labels {
    l.push((k, v.to_owned()));
    l
}

impl Scrape {
    /// The registry of every metric (named with the `rewind_` prefix).
    pub fn registry(&self) -> Registry {
        let mut reg = Registry::with_prefix("rewind");
        let runs = family::<Gauge>(
            &mut reg,
            "runs",
            "Runs in the checkpoint store by shown state (interrupted: running with no live driver).",
        );
        for (state, n) in RUN_STATES.iter().zip(self.runs_by_state) {
            runs.get_or_create(&vec![("state", (*state).to_owned())]).set(n as i64);
        }
        let unreadable = family::<Gauge>(
            &mut reg,
            "runs_unreadable",
            "Runs shown whose stored snapshot could not be read back into a plan (their per-run metrics are missing).",
        );
        unreadable.get_or_create(&Vec::new()).set(self.unreadable as i64);

        let info = family::<Gauge>(
            &mut reg,
            "run_info",
            "1 per run shown: unfinished runs, and the latest finished run of each workflow.",
        );
        let started = family::<FloatGauge>(
            &mut reg,
            "run_started_timestamp_seconds",
            "When the run started, Unix seconds.",
        );
        let finished = family::<FloatGauge>(
            &mut reg,
            "run_finished_timestamp_seconds",
            "When the run finished, Unix seconds (finished runs only).",
        );
        let progress = family::<FloatGauge>(
            &mut reg,
            "run_last_progress_timestamp_seconds",
            "Wall time of the run's last instance completion (its start until one completes), Unix seconds; a simulated run's is its virtual clock from its start.",
        );
        let instances = family::<Gauge>(&mut reg, "instances", "Step instances by step and state.");
        let targets = family::<Gauge>(
            &mut reg,
            "targets",
            "Targets by state (as `rewind status` shows them).",
        );
        let restored = family::<Gauge>(
            &mut reg,
            "targets_restored",
            "Targets restored: every instance of the target succeeded (or was skipped).",
        );
        let ratio = family::<FloatGauge>(
            &mut reg,
            "run_restored_ratio",
            "Targets restored over targets, 0 to 1.",
        );
        let busy =
            family::<Gauge>(&mut reg, "pool_busy", "Running instances drawing from the pool.");
        let capacity = family::<Gauge>(
            &mut reg,
            "pool_capacity",
            "The pool's capacity: at most this many of its instances run at once.",
        );
        let retries = family::<Counter>(
            &mut reg,
            "attempt_retries",
            "Attempts beyond each instance's first, by step.",
        );
        let durations: Histograms = Family::new_with_constructor(buckets);
        reg.register("attempt_duration_seconds", "Duration of the run's attempts that ended, by step and outcome (a simulated run's are virtual).", durations.clone());

        for r in &self.runs {
            let id = run(&r.run_id);
            let mut l = id.clone();
            l.push(("workflow", r.workflow.clone()));
            l.push(("state", r.state.to_owned()));
            l.push(("simulated", r.simulated.to_string()));
            info.get_or_create(&l).set(1);
            started.get_or_create(&id).set(r.started_s);
            if let Some(f) = r.finished_s {
                finished.get_or_create(&id).set(f);
            }
            progress.get_or_create(&id).set(r.last_progress_s);
            let Some((shape, s)) = &r.measured else { continue };
            for (step, counts) in shape.steps.iter().zip(&s.instances) {
                let l = with(id.clone(), "step", step);
                for (st, n) in InstanceState::ALL.iter().zip(counts) {
                    instances.get_or_create(&with(l.clone(), "state", st.as_str())).set(*n as i64);
                }
            }
            for (st, n) in TARGET_STATES.iter().zip(s.targets) {
                targets.get_or_create(&with(id.clone(), "state", st)).set(n as i64);
            }
            restored.get_or_create(&id).set(s.restored() as i64);
            ratio.get_or_create(&id).set(s.restored_ratio());
            for ((pool, cap), n) in shape.pools.iter().zip(&s.pool_busy) {
                let l = with(id.clone(), "pool", pool);
                busy.get_or_create(&l).set(*n as i64);
                capacity.get_or_create(&l).set(i64::from(*cap));
            }
            for (step, n) in shape.steps.iter().zip(&s.retries) {
                retries.get_or_create(&with(id.clone(), "step", step)).inc_by(*n);
            }
            for ((step, outcome), values) in &s.durations {
                let Some(name) = shape.steps.get(*step as usize) else { continue };
                let l = with(with(id.clone(), "step", name), "outcome", outcome.as_str());
                let h = durations.get_or_create(&l);
                for v in values {
                    h.observe(*v);
                }
            }
        }

        let last_success = family::<FloatGauge>(
            &mut reg,
            "drill_last_success_timestamp_seconds",
            "Start of the drill's latest run that passed, Unix seconds.",
        );
        let last_run = family::<FloatGauge>(
            &mut reg,
            "drill_last_run_timestamp_seconds",
            "Start of the drill's latest run, Unix seconds.",
        );
        let passed = family::<Gauge>(
            &mut reg,
            "drill_passed",
            "1 if the drill's latest run passed (every objective met, every target restored and validated), else 0.",
        );
        let rto = family::<FloatGauge>(
            &mut reg,
            "drill_rto_seconds",
            "Recovery time the drill's latest run achieved (absent when not every target was restored).",
        );
        let rto_obj = family::<FloatGauge>(
            &mut reg,
            "drill_rto_objective_seconds",
            "The drill's recovery time objective, as of its latest run.",
        );
        let rpo = family::<FloatGauge>(
            &mut reg,
            "drill_rpo_seconds",
            "Recovery point the drill's latest run achieved: the age of the newest recoverable instant at its start (absent when not measured).",
        );
        let rpo_obj = family::<FloatGauge>(
            &mut reg,
            "drill_rpo_objective_seconds",
            "The drill's recovery point objective, as of its latest run (absent when it has none).",
        );
        for d in &self.drills {
            let l = vec![("drill", d.name.clone())];
            last_run.get_or_create(&l).set(d.last_run_s);
            if let Some(s) = d.last_success_s {
                last_success.get_or_create(&l).set(s);
            }
            passed.get_or_create(&l).set(i64::from(d.passed));
            for (g, v) in [
                (&rto, d.rto_s),
                (&rto_obj, d.rto_objective_s),
                (&rpo, d.rpo_s),
                (&rpo_obj, d.rpo_objective_s),
            ] {
                if let Some(v) = v {
                    g.get_or_create(&l).set(v);
                }
            }
        }
        reg
    }
}
