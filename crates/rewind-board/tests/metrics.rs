//! `GET /metrics` served over a real listener, on a checkpoint store (SQLite, and PostgreSQL
//! from `REWIND_TEST_POSTGRES`) that runs are driven into by the runtime's own API: scraped
//! between drive slices and during a live drive, parsed with a Prometheus text parser, and
//! checked against the store and against `rewind status`'s own view (`RunView`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use rewind_board::AppState;
use rewind_exec::{Registry, Vars};
use rewind_model::{Plan, RestorePoint, RunId, TargetSet, TargetsFormat, Workflow};
use rewind_runtime::{DriveOptions, Lease, Mode, Observer, Progress, RunSpec, RunView};
use rewind_scheduler::Priority;
use rewind_store::{DrillRecord, SqlStore, Store};
use rewind_testkit::{PgSchema, SqliteDb, postgres_url};

/// Three steps: one run-scope, two per target, `restore` drawing from pool `db` (2 slots).
/// `RESTORE` is the restore step's action.
const WORKFLOW: &str = r#"
name = "WF"
target_kind = "site"

[defaults]
retries = 3
backoff = { initial = "1s", max = "1s", factor = 1.0, jitter = false }

[resources]
db = 2

[[steps]]
id = "prep"
scope = "run"
estimate = "1m"
action = { kind = "command", program = "true" }

[[steps]]
id = "restore"
scope = "target"
needs = ["prep"]
resource = "db"
estimate = "10m"
action = RESTORE

[[steps]]
id = "verify"
scope = "target"
needs = ["restore"]
estimate = "2m"
action = { kind = "command", program = "true" }
"#;

const TRUE: &str = r#"{ kind = "command", program = "true" }"#;

fn targets(n: usize) -> String {
    let mut s = String::from("id,kind\n");
    for i in 1..=n {
        s.push_str(&format!("00000000-0000-4000-8000-{i:012},site\n"));
    }
    s
}

struct Input {
    workflow: String,
    targets: String,
    mode: Mode,
}

impl Input {
    fn new(name: &str, restore: &str, sites: usize, mode: Mode) -> Self {
        Self {
            workflow: WORKFLOW.replace("WF", name).replace("RESTORE", restore),
            targets: targets(sites),
            mode,
        }
    }

    fn plan(&self) -> Plan {
        let wf = Workflow::parse("w.toml", &self.workflow).unwrap();
        let t = TargetSet::parse("t.csv", &self.targets, TargetsFormat::Csv).unwrap();
        let rp: RestorePoint = "2022-04-05T07:33:00Z".parse().unwrap();
        Plan::build(wf, t, rp).unwrap()
    }

    async fn create(&self, store: &SqlStore, vars: &Vars) -> RunId {
        let spec = RunSpec {
            workflow_file: "w.toml".into(),
            workflow_text: self.workflow.clone(),
            targets_file: "t.csv".into(),
            targets_text: self.targets.clone(),
            workdir: "/tmp".into(),
            cwd: "/tmp".into(),
            mode: self.mode,
            max_running: None,
            priority: Priority::CriticalPath,
            vars: vars.clone(),
            waves: Vec::new(),
            halt_rate: 1.0,
        };
        rewind_runtime::create_run(store, &self.plan(), &spec, &Registry::builtin()).await.unwrap()
    }
}

/// Stops a drive after `turns` turns (none: never).
struct StopAfter(Option<usize>);

impl Observer for StopAfter {
    fn progress(&mut self, _: &Progress) {}
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
    fn stop_requested(&mut self) -> bool {
        let Some(n) = &mut self.0 else { return false };
        *n = n.saturating_sub(1);
        *n == 0
    }
}

async fn drive(
    store: &SqlStore,
    id: RunId,
    turns: Option<usize>,
    vars: Vars,
) -> rewind_runtime::Summary {
    let (lease, _) = Lease::acquire(store, id).await.unwrap();
    let opts = DriveOptions {
        registry: Registry::builtin(),
        observer: &mut StopAfter(turns),
        signals: false,
        progress_every: Duration::ZERO,
        tick: Duration::from_millis(50),
        vars,
    };
    rewind_runtime::drive(store, lease, opts).await.unwrap()
}

/// Serves the board's router on 127.0.0.1:0 over its own store connection.
async fn serve(url: &str) -> SocketAddr {
    let store = rewind_store::open(url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(rewind_board::serve(listener, AppState::new(store), std::future::pending()));
    addr
}

/// `GET path` over HTTP/1.0: the content type and the body (a status other than 200 fails).
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{raw}");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap();
    (content_type, body.to_owned())
}

/// A parsed scrape.
struct Metrics(Scrape);

impl Metrics {
    async fn scrape(addr: SocketAddr) -> Self {
        let (content_type, body) = get(addr, "/metrics", None).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Self(Scrape::parse(lines).unwrap())
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.0.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    fn value(s: &prometheus_parse::Sample) -> f64 {
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{} is not a number: {other:?}", s.metric),
        }
    }

    /// The one sample of `name` with `labels`.
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        Self::value(found[0])
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(Self::value).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

/// Everything a scrape must say of run `id`, checked against the store and `RunView`.
async fn check_run(m: &Metrics, store: &SqlStore, id: RunId) -> f64 {
    let run = id.to_string();
    let r = &[("run_id", run.as_str())];
    let view = RunView::load(store, id).await.unwrap();
    // Instances by step and state: every instance once, each count as the store says.
    assert_eq!(m.sum("rewind_instances", r) as usize, view.plan.len());
    let counts = view.counts();
    for st in rewind_model::InstanceState::ALL {
        let state = st.as_str();
        assert_eq!(
            m.sum("rewind_instances", &[("run_id", &run), ("state", state)]) as usize,
            counts.get(*st),
            "{state}"
        );
    }
    // Targets as `rewind status` shows them.
    let targets = view.targets();
    for state in ["pending", "running", "succeeded", "failed", "blocked", "cancelled"] {
        let n = targets.iter().filter(|t| t.state == state).count();
        assert_eq!(m.one("rewind_targets", &[("run_id", &run), ("state", state)]) as usize, n);
    }
    let restored = m.one("rewind_targets_restored", r);
    assert_eq!(restored as usize, targets.iter().filter(|t| t.state == "succeeded").count());
    let ratio = m.one("rewind_run_restored_ratio", r);
    assert!((ratio - restored / targets.len() as f64).abs() < 1e-9);
    // Pools: busy = running instances of the pool's steps, within capacity.
    let busy = m.one("rewind_pool_busy", &[("run_id", &run), ("pool", "db")]);
    assert_eq!(m.one("rewind_pool_capacity", &[("run_id", &run), ("pool", "db")]), 2.0);
    assert_eq!(
        busy,
        m.one("rewind_instances", &[("run_id", &run), ("step", "restore"), ("state", "running")])
    );
    assert!(busy <= 2.0);
    // Attempts: the histogram counts every attempt that ended, buckets monotone; retries are
    // the attempts beyond each instance's first.
    let ended = view.attempts.iter().filter(|a| a.outcome.is_some()).count();
    let mut counted = 0.0;
    for s in m.matching("rewind_attempt_duration_seconds", r) {
        let Value::Histogram(buckets) = &s.value else { panic!("{s:?}") };
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
        assert!(sorted.windows(2).all(|w| w[0].count <= w[1].count), "{sorted:?}");
        let inf = sorted.last().unwrap();
        assert!(inf.less_than.is_infinite());
        let labels: Vec<(&str, &str)> =
            s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(m.one("rewind_attempt_duration_seconds_count", &labels), inf.count);
        counted += inf.count;
    }
    assert_eq!(counted as usize, ended);
    let retries = view.attempts.iter().filter(|a| a.attempt > 1).count();
    assert_eq!(m.sum("rewind_attempt_retries_total", r) as usize, retries);
    // Times: started from the record; the last progress at or after it.
    let started = m.one("rewind_run_started_timestamp_seconds", r);
    assert_eq!(started, view.record.spec.started_unix_ms as f64 / 1000.0);
    assert!(m.one("rewind_run_last_progress_timestamp_seconds", r) >= started);
    restored
}

fn shown_state(m: &Metrics, run: RunId) -> String {
    let run = run.to_string();
    let labels = [("run_id", run.as_str())];
    let found: Vec<_> = m.matching("rewind_run_info", &labels).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].labels.get("state").unwrap().to_owned()
}

/// A simulated run with failures, driven a few turns at a time; scraped between the slices
/// (nobody drives it then: `interrupted`) and at the end.
async fn sliced_simulated_run(url: &str) {
    let store = rewind_store::open(url).await.unwrap();
    let addr = serve(url).await;
    let input = Input::new("sliced", TRUE, 8, Mode::Simulated { seed: 7, fail_rate: 0.3 });
    let id = input.create(&store, &Vars::from_process()).await;

    let m = Metrics::scrape(addr).await;
    assert_eq!(shown_state(&m, id), "interrupted");
    assert_eq!(check_run(&m, &store, id).await, 0.0);
    assert_eq!(m.one("rewind_runs", &[("state", "interrupted")]), 1.0);

    let mut restored = 0.0;
    let mut slices = 0;
    loop {
        drive(&store, id, Some(3), Vars::from_process()).await;
        let state = store.run(id).await.unwrap().unwrap().state;
        let m = Metrics::scrape(addr).await;
        let now = check_run(&m, &store, id).await;
        assert!(now >= restored, "restored targets went down: {restored} then {now}");
        restored = now;
        slices += 1;
        if state.is_ended() {
            assert_eq!(shown_state(&m, id), state.as_str());
            assert!(m.has("rewind_run_finished_timestamp_seconds", &[("run_id", &id.to_string())]));
            break;
        }
        assert_eq!(shown_state(&m, id), "interrupted");
        assert!(slices < 500, "the run never ended");
    }
    assert!(slices > 2, "the run ended in {slices} slice(s): nothing was scraped mid-run");
    // Some attempts failed and were retried (fail rate 0.3, seed 7).
    assert!(Metrics::scrape(addr).await.sum("rewind_attempt_retries_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliced_simulated_run_on_sqlite() {
    let db = SqliteDb::new();
    sliced_simulated_run(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliced_simulated_run_on_postgres() {
    let Some(base) = postgres_url("sliced_simulated_run_on_postgres") else { return };
    let schema = PgSchema::create(&base).await;
    sliced_simulated_run(&schema.url).await;
    schema.drop_schema().await;
}

/// A real run whose restores wait for a gate file: scraped while it is driven (two restores
/// hold the pool's two slots, the run is `running`), then after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_real_run() {
    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let addr = serve(&db.url).await;
    let gate = db.dir.path().join("gate");
    let restore = r#"{ kind = "command", program = "/bin/sh", args = ["-c", "while [ ! -e \"$0\" ]; do sleep 0.02; done", "${GATE}"] }"#;
    let input = Input::new("live", restore, 5, Mode::Real);
    let vars = Vars::from_process().with("GATE", &gate.display().to_string());
    let id = input.create(&store, &vars).await;
    let run = id.to_string();
    let driver = {
        let store = rewind_store::open(&db.url).await.unwrap();
        tokio::spawn(async move { drive(&store, id, None, vars).await })
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = Metrics::scrape(addr).await;
        let running = m.sum(
            "rewind_instances",
            &[("run_id", &run), ("step", "restore"), ("state", "running")],
        );
        if running == 2.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "two restores never ran at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shown_state(&m, id), "running");
    assert_eq!(m.one("rewind_runs", &[("state", "running")]), 1.0);
    assert_eq!(m.one("rewind_pool_busy", &[("run_id", &run), ("pool", "db")]), 2.0);
    assert_eq!(m.one("rewind_targets_restored", &[("run_id", &run)]), 0.0);
    assert_eq!(m.one("rewind_targets", &[("run_id", &run), ("state", "running")]), 2.0);
    assert_eq!(m.one("rewind_targets", &[("run_id", &run), ("state", "pending")]), 3.0);
    assert_eq!(
        m.one("rewind_instances", &[("run_id", &run), ("step", "prep"), ("state", "succeeded")]),
        1.0
    );
    // `prep` completed: that is the last progress, after the start and not in the future.
    let progress = m.one("rewind_run_last_progress_timestamp_seconds", &[("run_id", &run)]);
    let started = m.one("rewind_run_started_timestamp_seconds", &[("run_id", &run)]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(progress >= started && progress <= now.as_secs_f64() + 1.0, "{started} {progress}");
    check_run(&m, &store, id).await;

    std::fs::write(&gate, "").unwrap();
    let summary = driver.await.unwrap();
    assert_eq!(summary.ended, rewind_runtime::Ended::Succeeded);
    let m = Metrics::scrape(addr).await;
    assert_eq!(shown_state(&m, id), "succeeded");
    assert_eq!(check_run(&m, &store, id).await, 5.0);
    assert_eq!(m.one("rewind_run_restored_ratio", &[("run_id", &run)]), 1.0);
    assert_eq!(m.one("rewind_pool_busy", &[("run_id", &run), ("pool", "db")]), 0.0);
    assert!(m.one("rewind_run_last_progress_timestamp_seconds", &[("run_id", &run)]) >= progress);
    let restores = m.one(
        "rewind_attempt_duration_seconds_count",
        &[("run_id", &run), ("step", "restore"), ("outcome", "succeeded")],
    );
    assert_eq!(restores, 5.0);
}

/// Per-run series for unfinished runs and the newest finished run of each workflow only;
/// `rewind_runs` counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_shown_per_workflow_newest_only() {
    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let addr = serve(&db.url).await;
    let sim = Mode::Simulated { seed: 1, fail_rate: 0.0 };
    let a = Input::new("alpha", TRUE, 2, sim);
    let mut alpha = Vec::new();
    for _ in 0..3 {
        let id = a.create(&store, &Vars::from_process()).await;
        drive(&store, id, None, Vars::from_process()).await;
        alpha.push(id);
    }
    let beta = Input::new("beta", TRUE, 2, sim).create(&store, &Vars::from_process()).await;

    let m = Metrics::scrape(addr).await;
    assert_eq!(m.one("rewind_runs", &[("state", "succeeded")]), 3.0);
    assert_eq!(m.one("rewind_runs", &[("state", "interrupted")]), 1.0);
    let shown: Vec<String> = m
        .matching("rewind_run_info", &[])
        .map(|s| s.labels.get("run_id").unwrap().to_owned())
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown.contains(&alpha[2].to_string()) && shown.contains(&beta.to_string()));
    for old in &alpha[..2] {
        assert!(!m.has("rewind_instances", &[("run_id", &old.to_string())]));
    }
    assert_eq!(check_run(&m, &store, alpha[2]).await, 2.0);
    // A second scrape serves the finished run from the cache: the same numbers.
    let again = Metrics::scrape(addr).await;
    assert_eq!(check_run(&again, &store, alpha[2]).await, 2.0);
}

fn drill_record(
    name: &str,
    at_ms: i64,
    passed: bool,
    rto: Option<f64>,
    rpo: Option<f64>,
) -> DrillRecord {
    let result = rewind_drill::DrillResult {
        drill: name.into(),
        drill_id: format!("{name}-{at_ms}"),
        run_id: None,
        mode: "isolated".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        restore_point: None,
        seed: None,
        passed,
        rto_s: rto,
        rto_objective_s: 3600.0,
        rpo_s: rpo,
        rpo_objective_s: Some(300.0),
        targets: Vec::new(),
        objectives: Vec::new(),
        cleanup: Vec::new(),
        failures: Vec::new(),
        wall_s: 1.0,
        scheduled: None,
    };
    DrillRecord {
        id: result.drill_id.clone(),
        name: name.into(),
        run_id: None,
        started_at: result.started_at.clone(),
        started_unix_ms: at_ms,
        passed,
        rto_s: rto,
        rpo_s: rpo,
        result: serde_json::to_string(&result).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_after_they_are_recorded() {
    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let addr = serve(&db.url).await;
    let m = Metrics::scrape(addr).await;
    assert!(!m.has("rewind_drill_last_run_timestamp_seconds", &[]));

    store
        .record_drill(&drill_record("weekly", 1_000_000, true, Some(120.0), Some(30.0)))
        .await
        .unwrap();
    store.record_drill(&drill_record("weekly", 2_000_000, false, None, Some(900.0))).await.unwrap();
    store
        .record_drill(&drill_record("nightly", 1_500_000, true, Some(10.0), Some(5.0)))
        .await
        .unwrap();

    let m = Metrics::scrape(addr).await;
    let w = &[("drill", "weekly")];
    assert_eq!(m.one("rewind_drill_last_run_timestamp_seconds", w), 2000.0);
    assert_eq!(m.one("rewind_drill_last_success_timestamp_seconds", w), 1000.0);
    assert_eq!(m.one("rewind_drill_passed", w), 0.0);
    assert!(!m.has("rewind_drill_rto_seconds", w), "the last run restored nothing");
    assert_eq!(m.one("rewind_drill_rto_objective_seconds", w), 3600.0);
    assert_eq!(m.one("rewind_drill_rpo_seconds", w), 900.0);
    assert_eq!(m.one("rewind_drill_rpo_objective_seconds", w), 300.0);
    let n = &[("drill", "nightly")];
    assert_eq!(m.one("rewind_drill_passed", n), 1.0);
    assert_eq!(m.one("rewind_drill_rto_seconds", n), 10.0);
    assert_eq!(m.one("rewind_drill_last_success_timestamp_seconds", n), 1500.0);
}

/// OpenMetrics when the scraper asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_on_request() {
    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let addr = serve(&db.url).await;
    Input::new("om", TRUE, 1, Mode::Simulated { seed: 1, fail_rate: 0.0 })
        .create(&store, &Vars::from_process())
        .await;
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (content_type, body) = get(addr, "/metrics", Some(accept)).await;
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE rewind_attempt_retries counter\n"), "{body}");
    assert!(body.contains("rewind_runs{state=\"interrupted\"} 1\n"), "{body}");
}

/// The checked-in alert rules load in Prometheus's own checker, and a scrape passes its lint.
/// Skipped (with a note) where `promtool` is not installed (Debian: `apt-get install
/// prometheus`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_checks_the_rules_and_a_scrape() {
    let promtool = std::process::Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        eprintln!("note: promtool is not installed; skipping the rules and lint checks");
        return;
    }
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/alerts.yml");
    let out =
        std::process::Command::new("promtool").args(["check", "rules", rules]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/alerts.test.yml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let addr = serve(&db.url).await;
    let id = Input::new("lint", TRUE, 3, Mode::Simulated { seed: 3, fail_rate: 0.3 })
        .create(&store, &Vars::from_process())
        .await;
    drive(&store, id, None, Vars::from_process()).await;
    store
        .record_drill(&drill_record("weekly", 1_000_000, true, Some(120.0), Some(30.0)))
        .await
        .unwrap();
    let (_, body) = get(addr, "/metrics", None).await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{body}"
    );
}

/// The server's read of a changed run (`RunView::refresh`: instance states first, then only the
/// instances that changed and their attempts) is the same as reading the run in full, after
/// every slice of a simulated run with failures and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_read_is_a_full_read() {
    let db = SqliteDb::new();
    let store = rewind_store::open(&db.url).await.unwrap();
    let input = Input::new("refresh", TRUE, 8, Mode::Simulated { seed: 7, fail_rate: 0.3 });
    let id = input.create(&store, &Vars::from_process()).await;
    let mut prev = RunView::load(&store, id).await.unwrap();
    let mut slices = 0;
    loop {
        drive(&store, id, Some(3), Vars::from_process()).await;
        let rec = store.run(id).await.unwrap().unwrap();
        let ended = rec.state.is_ended();
        let refreshed = RunView::refresh(&prev, &store, rec).await.unwrap();
        let full = RunView::load(&store, id).await.unwrap();
        assert_eq!(refreshed.instances, full.instances, "slice {slices}");
        assert_eq!(refreshed.attempts, full.attempts, "slice {slices}");
        assert_eq!(refreshed.record.state, full.record.state);
        prev = refreshed;
        slices += 1;
        if ended {
            break;
        }
        assert!(slices < 500, "the run never ended");
    }
    assert!(slices > 3, "the run ended in {slices} slice(s)");
    assert!(prev.attempts.iter().any(|a| a.attempt > 1), "no retry was read");
}
