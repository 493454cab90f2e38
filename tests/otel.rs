//! Traces and structured logs, through the real binary: `--otlp-endpoint` against an in-process
//! OTLP/HTTP collector (a plain HTTP server on 127.0.0.1 that decodes what it receives), and
//! `--log-format json` parsed line by line.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use support::*;

/// An OTLP/HTTP collector: accepts `POST /v1/traces` (protobuf) and keeps the spans.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (Arc::clone(&spans), Arc::clone(&paths));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (s, p) = (Arc::clone(&s), Arc::clone(&p));
                std::thread::spawn(move || serve(conn, &s, &p));
            }
        });
        Self { url, spans, paths }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// One connection: HTTP/1.1 requests with a Content-Length body, kept alive.
fn serve(conn: TcpStream, spans: &Mutex<Vec<Span>>, paths: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                spans.lock().unwrap().extend(ss.spans);
            }
        }
        paths.lock().unwrap().push(path);
        out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// a → b (per site; `fail` fails with exit 7) → c, then a run-scope `done`.
fn workflow(env: &Env, modes: &[&str]) -> (String, String) {
    env.write("step.sh", STEP_SH, true);
    let wf = r#"name = "chain"
target_kind = "site"

[defaults]
timeout = "1m"
retries = 0

[resources]
slots = 2

[[steps]]
id = "a"
estimate = "1m"
action = { kind = "command", program = "./step.sh", args = ["ledger", "ok"] }

[[steps]]
id = "b"
needs = ["a"]
resource = "slots"
estimate = "10m"
action = { kind = "command", program = "./step.sh", args = ["ledger", "{{target.attr.mode}}"], env = { FIXED = "fixed" } }

[[steps]]
id = "c"
needs = ["b"]
estimate = "1m"
action = { kind = "command", program = "./step.sh", args = ["ledger", "ok"] }

[[steps]]
id = "done"
scope = "run"
needs = ["c"]
estimate = "1m"
action = { kind = "command", program = "./step.sh", args = ["ledger", "ok"] }
"#;
    let w = env.write("chain.toml", wf, false);
    let t = env.write("sites.csv", &targets_csv(modes), false);
    (w.display().to_string(), t.display().to_string())
}

/// Instance key → attempts, from `report --format json`.
fn attempts(env: &Env, run: &str) -> BTreeMap<String, u64> {
    env.report(run)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["attempts"].as_u64().unwrap() > 0)
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["attempts"].as_u64().unwrap()))
        .collect()
}

/// The spans of one run: its drive spans and its attempt spans, checked for shape.
fn check_run(spans: &[Span], run: &str, workflow: &str, command: &str) -> (Vec<Span>, Vec<Span>) {
    let trace = uuid::Uuid::parse_str(run).unwrap().as_bytes().to_vec();
    let (roots, attempts): (Vec<Span>, Vec<Span>) = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .partition(|s| s.parent_span_id.is_empty());
    for r in &roots {
        assert_eq!(r.name, format!("run {workflow}"));
        assert_eq!(attr(r, "cicd.pipeline.run.id").as_deref(), Some(run));
        assert_eq!(attr(r, "cicd.pipeline.name").as_deref(), Some(workflow));
    }
    let last = roots.last().unwrap();
    assert_eq!(attr(last, "rewind.command").as_deref(), Some(command));
    for a in &attempts {
        assert!(
            roots.iter().any(|r| r.span_id == a.parent_span_id),
            "an attempt span's parent is a run span: {a:?}"
        );
        assert_eq!(attr(a, "cicd.pipeline.run.id").as_deref(), Some(run));
        let key = attr(a, "rewind.instance.key").unwrap();
        let step = key.split('/').next().unwrap();
        assert_eq!(a.name, format!("step {step}"));
        assert_eq!(attr(a, "cicd.pipeline.task.name").as_deref(), Some(step));
        assert_eq!(attr(a, "rewind.step").as_deref(), Some(step));
        let n = attr(a, "rewind.attempt").unwrap();
        assert_eq!(attr(a, "cicd.pipeline.task.run.id"), Some(format!("{key}#{n}")));
        assert!(a.end_time_unix_nano >= a.start_time_unix_nano);
        if let Some((_, target)) = key.split_once('/') {
            assert_eq!(attr(a, "rewind.target").as_deref(), Some(target));
        }
        if step == "b" {
            assert_eq!(attr(a, "rewind.pool").as_deref(), Some("slots"));
        }
        let code = a.status.as_ref().map_or(0, |s| s.code);
        match attr(a, "cicd.pipeline.task.run.result").unwrap().as_str() {
            "success" => {
                assert_eq!(attr(a, "rewind.outcome").as_deref(), Some("succeeded"));
                assert_ne!(code, StatusCode::Error as i32);
            }
            "failure" => {
                assert_eq!(attr(a, "rewind.outcome").as_deref(), Some("failed"));
                assert_eq!(code, StatusCode::Error as i32, "a failed attempt is an error: {a:?}");
            }
            other => panic!("unexpected result {other}"),
        }
    }
    (roots, attempts)
}

fn per_key(attempts: &[Span]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for a in attempts {
        *m.entry(attr(a, "rewind.instance.key").unwrap()).or_insert(0) += 1;
    }
    m
}

#[test]
fn a_real_run_and_its_retry_export_a_span_per_drive_and_per_attempt() {
    let env = Env::sqlite();
    let collector = Collector::start();
    let (w, t) = workflow(&env, &["ok", "fail", "ok"]);
    let o = env.rewind(&[
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
        "--otlp-endpoint",
        &collector.url,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning: traces"), "{}", stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();

    // The binary flushed before it exited: everything is here already.
    let spans = collector.spans();
    let (roots, attempts) = check_run(&spans, &run, "chain", "run");
    assert_eq!(roots.len(), 1);
    assert_eq!(attr(&roots[0], "rewind.outcome").as_deref(), Some("failed"));
    assert_eq!(roots[0].status.as_ref().unwrap().code, StatusCode::Error as i32);
    assert_eq!(per_key(&attempts), attempts_of(&env, &run));
    let failed: Vec<&Span> = attempts
        .iter()
        .filter(|a| attr(a, "cicd.pipeline.task.run.result").as_deref() == Some("failure"))
        .collect();
    assert_eq!(failed.len(), 1);
    let f = failed[0];
    assert_eq!(attr(f, "rewind.instance.key"), Some(format!("b/{}", site(2))));
    assert_eq!(attr(f, "rewind.exit_code").as_deref(), Some("7"));
    assert!(f.status.as_ref().unwrap().message.contains("exit status 7"), "{f:?}");
    assert!(collector.paths.lock().unwrap().iter().all(|p| p == "/v1/traces"));

    // The retry: a new drive span in the same trace, with the attempts it ran (through the
    // variable this time).
    env.write("fixed", "", false);
    let o = env.cmd(&["retry", &run]).env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url).output();
    let o = o.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let spans = collector.spans();
    let (roots, attempts) = check_run(&spans, &run, "chain", "retry");
    assert_eq!(roots.len(), 2, "one root span per drive");
    assert_eq!(attr(&roots[1], "rewind.resumed").as_deref(), Some("true"));
    assert_eq!(attr(&roots[1], "rewind.outcome").as_deref(), Some("succeeded"));
    assert_eq!(per_key(&attempts), attempts_of(&env, &run), "every attempt of the run, once");
    let second = attempts
        .iter()
        .find(|a| attr(a, "rewind.attempt").as_deref() == Some("2"))
        .expect("b's second attempt");
    assert_eq!(second.parent_span_id, roots[1].span_id);
}

fn attempts_of(env: &Env, run: &str) -> BTreeMap<String, u64> {
    attempts(env, run)
}

#[test]
fn a_simulated_run_exports_its_attempts_on_the_simulated_clock() {
    let env = Env::sqlite();
    let collector = Collector::start();
    let (w, t) = workflow(&env, &["ok"; 6]);
    let o = env.rewind(&[
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
        "--simulate",
        "--fail-rate",
        "0.3",
        "--seed",
        "7",
        "--otlp-endpoint",
        &collector.url,
    ]);
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    let spans = collector.spans();
    let (roots, attempts) = check_run(&spans, &run, "chain", "run");
    assert_eq!(roots.len(), 1);
    assert_eq!(attr(&roots[0], "rewind.simulated").as_deref(), Some("true"));
    assert_eq!(attr(&roots[0], "rewind.clock").as_deref(), Some("simulated"));
    assert_eq!(per_key(&attempts), attempts_of(&env, &run));
    let failures = attempts
        .iter()
        .filter(|a| attr(a, "cicd.pipeline.task.run.result").as_deref() == Some("failure"))
        .count();
    assert!(failures > 0, "seed 7 at 30% fails some attempts");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // A `b` attempt takes its estimate (10 minutes) on the simulated clock.
    let b = attempts.iter().find(|a| attr(a, "rewind.step").as_deref() == Some("b")).unwrap();
    assert_eq!(b.end_time_unix_nano - b.start_time_unix_nano, 600 * 1_000_000_000);
}

#[test]
fn a_dead_collector_warns_and_never_fails_the_run() {
    let env = Env::sqlite();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (w, t) = workflow(&env, &["ok", "ok"]);
    let o = env.rewind(&[
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("warning: traces to http://127.0.0.1:{port}/v1/traces")),
        "{err}"
    );
    assert!(err.contains("span(s) were not exported"), "{err}");
    assert!(stdout(&o).contains("state       succeeded"));
}

#[test]
fn a_bad_endpoint_is_refused_up_front_naming_where_it_came_from() {
    let env = Env::sqlite();
    let (w, t) = workflow(&env, &["ok"]);
    let args = ["run", "--workflow", &w, "--targets", &t, "--restore-point", RP];
    for bad in ["localhost:4318", "ftp://collector", "https://collector:4318", "http://"] {
        let mut a = args.to_vec();
        a.extend(["--otlp-endpoint", bad]);
        let o = env.rewind(&a);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("--otlp-endpoint {bad:?}")), "{}", stderr(&o));
    }
    let o = env.cmd(&args).env("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("OTEL_EXPORTER_OTLP_ENDPOINT \"not a url\""), "{}", stderr(&o));
    assert!(!env.path("ledger").exists(), "nothing ran");
    // The flag where nothing is driven is refused; the variable is ignored there.
    let o = env.rewind(&["status", "--otlp-endpoint", "http://127.0.0.1:4318"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--otlp-endpoint applies to"), "{}", stderr(&o));
    let o = env.cmd(&["status"]).env("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn json_logs_are_one_object_per_line_with_the_runs_fields() {
    let env = Env::sqlite();
    let (w, t) = workflow(&env, &["ok", "fail"]);
    let o = env.rewind(&[
        "--log-format",
        "json",
        "run",
        "--workflow",
        &w,
        "--targets",
        &t,
        "--restore-point",
        RP,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let run = stdout(&o).lines().next().unwrap()[4..].to_owned();
    assert!(stdout(&o).contains("state       failed"), "stdout does not change");
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(l["level"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
        assert_eq!(l["run_id"], run.as_str(), "{l}");
    }
    let failure = lines.iter().find(|l| l["level"] == "WARN").expect("the failure line");
    assert_eq!(failure["step"], "b");
    assert_eq!(failure["target"], site(2));
    assert_eq!(failure["instance"], format!("b/{}", site(2)));
    assert_eq!(failure["attempt"], 1);
    assert!(failure["error"].as_str().unwrap().contains("exit status 7"), "{failure}");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "INFO");
    assert_eq!(last["restored_targets"], 1);
    assert_eq!(last["targets"], 2);
    assert_eq!(last["failed"], 1);
    assert!(last["message"].as_str().unwrap().contains("1/2 targets restored"), "{last}");

    // A refusal is a JSON line too.
    let o = env.rewind(&["--log-format", "json", "status", "not-a-run-id"]);
    assert_eq!(o.status.code(), Some(2));
    let l: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(l["level"], "ERROR");
    assert!(!l["message"].as_str().unwrap().starts_with("rewind: "), "{l}");
}

/// `rewind serve --drills DIR --log-format json --otlp-endpoint URL`: every stderr line is a JSON
/// object (the scheduler's and the drill's own), the stdout line stays as it is, and a scheduled
/// drill's run is exported as `drill run`'s is, named for `serve`.
#[test]
fn serve_logs_json_and_exports_its_drills_traces() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sandbox = tmp.path().join("sb");
    let sb = sandbox.to_str().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("rewind.db").display());
    let rewind = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"));
        c.args(args).env("SANDBOX", &sandbox).env_remove("REWIND_DB");
        c
    };
    let init = rewind(&["sandbox", "init", sb, "--sites", "20", "--shards", "2"]).output().unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    // The shipped drill, due every second.
    let drills = tmp.path().join("drills");
    std::fs::create_dir(&drills).unwrap();
    let shipped = std::fs::read_to_string(root.join("drills/nightly-sample.toml")).unwrap();
    let workflow = root.join("workflows/drill-isolated.toml");
    let text = shipped
        .replace(
            "\"../workflows/drill-isolated.toml\"",
            &format!("{:?}", workflow.display().to_string()),
        )
        .replace("schedule = \"0 5 * * *\"", "schedule = \"* * * * * *\"");
    assert!(text.contains("* * * * * *"));
    std::fs::write(drills.join("often.toml"), text).unwrap();

    let collector = Collector::start();
    let mut child = rewind(&[
        "--log-format",
        "json",
        "--otlp-endpoint",
        &collector.url,
        "serve",
        "--drills",
        drills.to_str().unwrap(),
        "--db",
        &db,
        "--listen",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("serving http://127.0.0.1:"), "stdout does not change: {first}");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut lines: Vec<serde_json::Value> = Vec::new();
    // Up to the first drill's end.
    while !lines.iter().any(|l| l["message"].as_str().unwrap().contains("end drill")) {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve ended early: {lines:?}");
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    for line in rest.lines() {
        lines.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    assert_eq!(status.code(), Some(0), "{lines:?}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let said = |what: &str| lines.iter().any(|l| l["message"].as_str().unwrap().contains(what));
    assert!(said("1 scheduled drill(s)"), "{lines:?}");
    assert!(said("start drill `nightly-sample`"), "{lines:?}");
    assert!(said("end drill `nightly-sample`: passed"), "{lines:?}");
    assert!(said("SIGTERM: stopping"), "{lines:?}");
    // The drill's run: its progress lines carry its id, and its spans reached the collector.
    let run = lines
        .iter()
        .find_map(|l| l["run_id"].as_str())
        .expect("the drill's run logs its id")
        .to_owned();
    let spans = collector.spans();
    let trace = uuid::Uuid::parse_str(&run).unwrap().as_bytes().to_vec();
    let (roots, attempts): (Vec<&Span>, Vec<&Span>) =
        spans.iter().filter(|s| s.trace_id == trace).partition(|s| s.parent_span_id.is_empty());
    assert_eq!(roots.len(), 1, "{spans:?}");
    assert_eq!(roots[0].name, "run drill-isolated");
    assert_eq!(attr(roots[0], "rewind.command").as_deref(), Some("serve"));
    assert_eq!(attr(roots[0], "cicd.pipeline.run.id").as_deref(), Some(run.as_str()));
    assert!(!attempts.is_empty());
    assert!(attempts.iter().all(|a| a.parent_span_id == roots[0].span_id));
}
