//! Traces over OTLP (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`) and the format of the
//! stderr log lines (`--log-format text|json`).
//!
//! Nothing here starts unless asked: without an endpoint no exporter, thread or tracer exists,
//! and with text logs and no endpoint no `tracing` subscriber is installed (its macros then cost
//! a load and a branch).
//!
//! A drive's spans: one root span per drive (`rewind.run`, a `tracing` span exported by
//! `tracing-opentelemetry`, so the drive's log lines are its span events), and one child span per
//! attempt, built from the runtime's [`Observer::attempt_ended`] with the attempt's own start and
//! end. Every drive of a run shares one trace id, the run's UUID: a `resume` is a new root span in
//! the run's trace.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
    SpanData, SpanExporter,
};
use rewind_model::{AttemptOutcome, RunId, SubjectKey};
use rewind_runtime::{AttemptEnd, DriveStart, Ended, Observer, Progress, RuntimeError};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::exit::refused;

/// The standard variable naming the OTLP collector (the flag wins).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long one export may take (each batch, and the flush at exit), so a collector that is down
/// or slow never holds a run: its spans are dropped with a warning.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The format of the log lines on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain lines (a progress bar on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message, and run_id, step, target, … where
    /// they apply.
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);

/// The command being run, for the run span (`run`, `resume`, `retry`, `drill run`).
static COMMAND: OnceLock<&'static str> = OnceLock::new();

/// Log lines are JSON objects (`--log-format json`).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Where traces go: the flag, else the variable (an empty variable is unset), checked up front.
/// `None`: no tracing.
pub fn endpoint(flag: Option<&str>) -> Result<Option<String>> {
    let (name, raw) = match flag {
        Some(f) => ("--otlp-endpoint", f.to_owned()),
        None => match std::env::var(ENDPOINT_VAR) {
            Ok(v) if !v.trim().is_empty() => (ENDPOINT_VAR, v),
            _ => return Ok(None),
        },
    };
    let bad = |why: &str| {
        refused(format!(
            "rewind: {name} {raw:?} is not an OTLP/HTTP collector URL ({why}); give the collector's base URL, such as http://127.0.0.1:4318"
        ))
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "https is not supported: this build sends plain HTTP; run a local collector",
            ));
        }
        other => return Err(bad(&format!("the scheme is {other:?}, not http"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment has no place in it"));
    }
    // As the variable's specification says: the traces' path is added to the base URL.
    let base = url.as_str().trim_end_matches('/');
    Ok(Some(format!("{base}/v1/traces")))
}

/// Exports that failed, for the warning at exit.
#[derive(Debug, Default)]
struct Failures {
    spans: AtomicUsize,
    first: Mutex<Option<String>>,
}

/// The OTLP exporter, counting what it could not send.
#[derive(Debug)]
struct Counted {
    inner: opentelemetry_otlp::SpanExporter,
    failures: Arc<Failures>,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failures.spans.fetch_add(n, Ordering::Relaxed);
            if let Ok(mut first) = self.failures.first.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Trace ids: the run's own UUID once a drive knows its run, so every drive of a run (`run`,
/// then `resume`) lands in one trace.
#[derive(Debug, Default)]
struct RunTraceIds {
    run: Mutex<Option<TraceId>>,
    random: RandomIdGenerator,
}

impl IdGenerator for RunTraceIds {
    fn new_trace_id(&self) -> TraceId {
        match self.run.lock().ok().and_then(|r| *r) {
            Some(id) => id,
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.random.new_span_id()
    }
}

/// What [`init`] started; [`Telemetry::finish`] flushes it.
pub struct Telemetry {
    traces: Option<Traces>,
}

struct Traces {
    provider: SdkTracerProvider,
    failures: Arc<Failures>,
    ids: Arc<RunTraceIds>,
    endpoint: String,
}

static RUN_IDS: Mutex<Option<Arc<RunTraceIds>>> = Mutex::new(None);

/// Installs what the flags ask for. `endpoint` comes from [`endpoint`]; `command` names the
/// command in the run span.
pub fn init(
    format: LogFormat,
    endpoint: Option<String>,
    command: &'static str,
) -> Result<Telemetry> {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let _ = COMMAND.set(command);
    let traces = match endpoint {
        Some(url) => Some(traces(url)?),
        None => None,
    };
    if format == LogFormat::Text && traces.is_none() {
        return Ok(Telemetry { traces: None });
    }
    let logs = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let spans = traces.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.provider.tracer("rewind"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // Built when first needed (the first attempt's parent, or the end), after the drive
            // named it for its workflow: entering it does not build it.
            .with_context_activation(false)
    });
    // rewind's own lines only: the libraries' (sqlx, hyper) stay out of the log and the traces.
    let only_ours =
        tracing_subscriber::filter::Targets::new().with_target("rewind", tracing::Level::INFO);
    tracing_subscriber::registry().with(logs).with(spans).with(only_ours).try_init()?;
    Ok(Telemetry { traces })
}

fn traces(url: String) -> Result<Traces> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let failures = Arc::new(Failures::default());
    let exporter = Counted { inner: exporter, failures: Arc::clone(&failures) };
    let config = BatchConfigBuilder::default()
        // A large simulation ends thousands of attempts a second: room for them between exports.
        .with_max_queue_size(1 << 16)
        .with_max_export_batch_size(2048)
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(config).build();
    let ids = Arc::new(RunTraceIds::default());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_id_generator(SharedIds(Arc::clone(&ids)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("rewind")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    if let Ok(mut r) = RUN_IDS.lock() {
        *r = Some(Arc::clone(&ids));
    }
    Ok(Traces { provider, failures, ids, endpoint: url })
}

#[derive(Debug)]
struct SharedIds(Arc<RunTraceIds>);

impl IdGenerator for SharedIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}

impl Telemetry {
    /// Flushes the spans (bounded by the export timeout); a collector that could not take them
    /// is a warning on stderr, never a failed command.
    pub fn finish(self) {
        let Some(t) = self.traces else { return };
        let flushed = t.provider.shutdown_with_timeout(EXPORT_TIMEOUT + Duration::from_secs(1));
        let lost = t.failures.spans.load(Ordering::Relaxed);
        let first = t.failures.first.lock().ok().and_then(|f| f.clone());
        let why = match (lost, flushed) {
            (0, Ok(())) => return,
            (0, Err(e)) => format!("the last spans may be lost ({e})"),
            (n, _) => format!("{n} span(s) were not exported ({})", first.unwrap_or_default()),
        };
        warn(None, &format!("rewind: warning: traces to {}: {why}", t.endpoint));
        drop(t.ids);
    }
}

/// Traces are being exported.
pub fn tracing_on() -> bool {
    RUN_IDS.lock().is_ok_and(|r| r.is_some())
}

/// An observer that adds the drive's spans to another one's display.
pub struct Traced<'a> {
    inner: &'a mut dyn Observer,
    run: tracing::Span,
    drive: Option<Clock>,
}

/// Maps the run's clock onto wall time.
#[derive(Clone, Copy)]
struct Clock {
    simulated: bool,
    origin: SystemTime,
    clock0: Duration,
    wall0: SystemTime,
}

impl Clock {
    /// A real run's clock counts from its creation; a simulation's virtual clock is laid from the
    /// wall instant this drive began.
    fn at(&self, offset: Duration) -> SystemTime {
        if !self.simulated {
            return self.origin + offset;
        }
        match offset.checked_sub(self.clock0) {
            Some(after) => self.wall0 + after,
            None => self.wall0 - (self.clock0 - offset),
        }
    }
}

/// The root span of one drive of `run`, named for the command that drives it (run, resume,
/// retry, drill run).
pub fn run_span(run: RunId) -> tracing::Span {
    if let Ok(r) = RUN_IDS.lock()
        && let Some(ids) = r.as_ref()
        && let Ok(mut current) = ids.run.lock()
    {
        *current = Some(TraceId::from_bytes(*run.as_uuid().as_bytes()));
    }
    tracing::info_span!(
        target: "rewind",
        "rewind.run",
        otel.name = "rewind run",
        otel.kind = "internal",
        cicd.pipeline.run.id = %run,
        cicd.pipeline.name = tracing::field::Empty,
        rewind.command = COMMAND.get().copied().unwrap_or("run"),
        rewind.simulated = tracing::field::Empty,
        rewind.resumed = tracing::field::Empty,
        rewind.clock = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rewind.outcome = tracing::field::Empty,
        cicd.pipeline.result = tracing::field::Empty,
    )
}

/// Ends the run span with how the drive ended.
pub fn end_run_span(span: &tracing::Span, ended: Result<&Ended, &RuntimeError>) {
    let (outcome, result, status) = match ended {
        Ok(Ended::Succeeded) => ("succeeded", "success", Some("ok")),
        Ok(Ended::Failed) => ("failed", "failure", Some("error")),
        Ok(Ended::Halted) => ("halted", "failure", Some("error")),
        Ok(Ended::Cancelled) => ("cancelled", "cancellation", None),
        Ok(Ended::Interrupted(_)) => ("interrupted", "cancellation", None),
        Err(_) => ("error", "error", Some("error")),
    };
    span.record("rewind.outcome", outcome);
    span.record("cicd.pipeline.result", result);
    if let Some(status) = status {
        span.record("otel.status_code", status);
    }
    if let Err(e) = ended {
        span.record("otel.status_description", e.to_string().as_str());
    }
}

impl<'a> Traced<'a> {
    /// `inner` shows the progress; `run` is the drive's span ([`run_span`]).
    pub fn new(inner: &'a mut dyn Observer, run: tracing::Span) -> Self {
        Self { inner, run, drive: None }
    }
}

impl Observer for Traced<'_> {
    fn progress(&mut self, p: &Progress) {
        self.inner.progress(p);
    }

    fn failure(&mut self, key: &str, attempt: u32, error: &str, retry_in: Option<Duration>) {
        self.inner.failure(key, attempt, error, retry_in);
    }

    fn note(&mut self, message: &str) {
        self.inner.note(message);
    }

    fn stop_requested(&mut self) -> bool {
        self.inner.stop_requested()
    }

    fn drive_started(&mut self, d: &DriveStart<'_>) {
        self.run.record("cicd.pipeline.name", d.workflow);
        self.run.record("otel.name", format!("run {}", d.workflow).as_str());
        self.run.record("rewind.simulated", d.simulated);
        self.run.record("rewind.resumed", d.resumed);
        self.run.record("rewind.clock", if d.simulated { "simulated" } else { "wall" });
        self.drive = Some(Clock {
            simulated: d.simulated,
            origin: d.origin,
            clock0: d.clock,
            wall0: SystemTime::now(),
        });
        self.inner.drive_started(d);
    }

    fn attempt_ended(&mut self, a: &AttemptEnd<'_>) {
        self.inner.attempt_ended(a);
        if !tracing_on() {
            return;
        }
        let Some(clock) = self.drive else { return };
        let tracer = global::tracer("rewind");
        let parent = self.run.context();
        let step = a.key.step.as_str();
        let key = a.key.to_string();
        let result = match a.outcome {
            AttemptOutcome::Succeeded => "success",
            AttemptOutcome::Failed if a.error.is_some_and(|e| e.contains("timed out")) => "timeout",
            AttemptOutcome::Failed => "failure",
            AttemptOutcome::Cancelled | AttemptOutcome::Interrupted => "cancellation",
        };
        let run_id = self.run_id(&parent);
        let mut attrs = vec![
            KeyValue::new("cicd.pipeline.task.name", step.to_owned()),
            KeyValue::new("cicd.pipeline.task.run.id", format!("{key}#{}", a.attempt)),
            KeyValue::new("cicd.pipeline.task.run.result", result),
            KeyValue::new("rewind.step", step.to_owned()),
            KeyValue::new("rewind.instance.key", key.clone()),
            KeyValue::new("rewind.attempt", i64::from(a.attempt)),
            KeyValue::new("rewind.outcome", a.outcome.to_string()),
        ];
        if let Some(run) = run_id {
            attrs.push(KeyValue::new("cicd.pipeline.run.id", run));
        }
        match &a.key.subject {
            SubjectKey::Target(t) => attrs.push(KeyValue::new("rewind.target", t.to_string())),
            SubjectKey::Group { attr, value } => {
                attrs.push(KeyValue::new("rewind.group", format!("{attr}={value}")));
            }
            SubjectKey::Run => {}
        }
        if let Some(pool) = a.pool {
            attrs.push(KeyValue::new("rewind.pool", pool.to_owned()));
        }
        if let Some(code) = a.exit_code {
            attrs.push(KeyValue::new("rewind.exit_code", i64::from(code)));
        }
        let mut span = tracer
            .span_builder(format!("step {step}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(clock.at(a.started))
            .with_attributes(attrs)
            .start_with_context(&tracer, &parent);
        if a.outcome != AttemptOutcome::Succeeded {
            span.set_status(Status::error(a.error.unwrap_or(result).to_owned()));
        }
        span.end_with_timestamp(clock.at(a.ended).max(clock.at(a.started)));
    }
}

impl Traced<'_> {
    /// The run id of the drive's span, read back from its trace id (the run's UUID).
    fn run_id(&self, parent: &opentelemetry::Context) -> Option<String> {
        use opentelemetry::trace::TraceContextExt as _;
        let id = parent.span().span_context().trace_id();
        (id != TraceId::INVALID).then(|| uuid::Uuid::from_bytes(id.to_bytes()).to_string())
    }
}

/// Writes a log line: as is in text format (`print`), else as a JSON event. Every line is also
/// an event of the current span when traces are on.
fn emit(level: tracing::Level, run: Option<RunId>, text: &str, print: impl FnOnce(&str)) {
    let message = text.strip_prefix("rewind: ").unwrap_or(text);
    let run = run.map(|r| r.to_string());
    let run = run.as_deref();
    match level {
        tracing::Level::ERROR => tracing::error!(target: "rewind", run_id = run, "{message}"),
        tracing::Level::WARN => tracing::warn!(target: "rewind", run_id = run, "{message}"),
        _ => tracing::info!(target: "rewind", run_id = run, "{message}"),
    }
    if !json() {
        print(text);
    }
}

/// A line for the operator.
pub fn info(run: Option<RunId>, text: &str) {
    emit(tracing::Level::INFO, run, text, |t| eprintln!("{t}"));
}

/// A warning.
pub fn warn(run: Option<RunId>, text: &str) {
    emit(tracing::Level::WARN, run, text, |t| eprintln!("{t}"));
}

/// An error that ends the command.
pub fn error(text: &str) {
    emit(tracing::Level::ERROR, None, text, |t| eprintln!("{t}"));
}

/// A note of a drive (through the display, so a progress bar stays intact).
pub fn note(run: Option<RunId>, text: &str, print: impl FnOnce(&str)) {
    emit(tracing::Level::INFO, run, text, print);
}

/// A failed attempt.
pub fn failure(
    run: Option<RunId>,
    key: &str,
    attempt: u32,
    error: &str,
    retry_in: Option<Duration>,
    text: &str,
    print: impl FnOnce(&str),
) {
    let (step, subject) = key.split_once('/').map_or((key, None), |(s, t)| (s, Some(t)));
    let run = run.map(|r| r.to_string());
    let retry_in_s = retry_in.map(|d| d.as_secs_f64());
    tracing::warn!(
        target: "rewind",
        run_id = run.as_deref(),
        step,
        target = subject,
        instance = key,
        attempt,
        error,
        retry_in_s,
        "{text}"
    );
    if !json() {
        print(text);
    }
}

/// A progress line.
pub fn progress(run: Option<RunId>, p: &Progress, text: &str, print: impl FnOnce(&str)) {
    let run = run.map(|r| r.to_string());
    let c = &p.counts;
    tracing::info!(
        target: "rewind",
        run_id = run.as_deref(),
        clock_s = p.clock.as_secs_f64(),
        simulated = p.simulated,
        restored_targets = p.restored_targets,
        targets = p.targets,
        percent_restored = p.percent_restored(),
        instances_done = c.finished(),
        instances = c.total(),
        running = c.running,
        failed = c.failed,
        blocked = c.blocked,
        eta_s = p.eta.map(|e| e.as_secs_f64()),
        "{text}"
    );
    if !json() {
        print(text);
    }
}
