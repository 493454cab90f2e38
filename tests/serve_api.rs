//! `rewind serve`'s JSON API against docs/openapi.json: a real run in a real store (SQLite; and
//! PostgreSQL from REWIND_TEST_POSTGRES), the server on 127.0.0.1:0, every endpoint called and
//! each response validated against the schema the file gives for its path and status; every
//! path of the file served and every route in the file (workers registered as `rewind worker`
//! registers them: live, stopping, gone). Then the token (401), the refusal of a
//! non-loopback address without one (exit 2), the CSV status feed, and server-sent events while
//! a run is driven (the percentage rises, `end` arrives).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

const RP: &str = "2022-04-05T07:33:00Z";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rewind(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .current_dir(dir)
        .env_remove("REWIND_DB")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The first `n` sites of the shipped 883.
fn sites(dir: &Path, n: usize) -> PathBuf {
    let all = std::fs::read_to_string(root().join("examples/sites-883.csv")).unwrap();
    let some: Vec<&str> = all.lines().take(n + 1).collect();
    let p = dir.join("sites.csv");
    std::fs::write(&p, some.join("\n") + "\n").unwrap();
    p
}

/// A simulated restore-2 over 5 sites; its run id.
fn simulated_run(dir: &Path, db: &str) -> String {
    let t = sites(dir, 5);
    let w = root().join("workflows/restore-2.toml");
    let o = rewind(
        dir,
        &[
            "run",
            "--db",
            db,
            "--workflow",
            w.to_str().unwrap(),
            "--targets",
            t.to_str().unwrap(),
            "--restore-point",
            RP,
            "--simulate",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .strip_prefix("run ")
        .unwrap()
        .to_owned()
}

/// Registers three workers in the store at `db`, as `rewind worker` does: `w-live` (heartbeat
/// now), `w-stopping` (asked to stop), `w-gone` (no heartbeat since 1970).
fn register_workers(db: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = rewind_store::SqlStore::open(db).await.unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        for (name, at) in [("w-live", now), ("w-stopping", now), ("w-gone", 0)] {
            let spec = rewind_dispatch::WorkerSpec {
                name: name.into(),
                host: format!("{name}.example"),
                queues: vec!["default".into(), "us-east".into()],
                slots: 4,
            };
            let session = store.worker_register(&spec, at).await.unwrap();
            if name == "w-stopping" {
                assert!(store.worker_stop(&session).await.unwrap());
            }
        }
        store.close().await;
    });
}

/// A running `rewind serve`, stopped (SIGTERM) on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path, db: &str, extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--db", db, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(&args)
            .current_dir(dir)
            .env_remove("REWIND_DB")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("serving ").unwrap().trim_end_matches('/').to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Self { child, url }
    }

    fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// docs/openapi.json, and the validators of its responses.
struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Self {
        let text = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Self { doc }
    }

    fn paths(&self) -> BTreeSet<String> {
        self.doc["paths"].as_object().unwrap().keys().cloned().collect()
    }

    /// Validates `body` against the schema of `path` `method` `status` (`media`).
    fn check(&self, path: &str, method: &str, status: u16, media: &str, body: &Value) {
        let resp = &self.doc["paths"][path][method]["responses"][status.to_string()];
        assert!(resp.is_object(), "{method} {path}: status {status} is not in docs/openapi.json");
        let schema = &resp["content"][media]["schema"];
        assert!(schema.is_object(), "{method} {path} {status}: no {media} schema");
        // The response schema with the file's components beside it, so `#/components/...`
        // references resolve.
        let mut wrapped = schema.clone();
        wrapped["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        wrapped["components"] = self.doc["components"].clone();
        let v = jsonschema::validator_for(&wrapped).unwrap();
        let errors: Vec<String> =
            v.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{method} {path} {status}: {errors:#?}\n{body:#}");
    }
}

fn client(token: Option<&str>) -> reqwest::blocking::Client {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    reqwest::blocking::Client::builder().default_headers(h).build().unwrap()
}

/// GET `url`, its status and JSON body.
fn get(c: &reqwest::blocking::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

/// Calls every endpoint on a store holding `run` and checks each answer; returns the paths
/// called.
fn every_endpoint(spec: &Spec, s: &Server, run: &str) -> BTreeSet<String> {
    let c = client(None);
    let mut called = BTreeSet::new();
    let mut call = |path: &str, url: &str, status: u16| -> Value {
        let (got, body) = get(&c, &format!("{}{url}", s.url));
        assert_eq!(got, status, "GET {url}: {body}");
        spec.check(path, "get", status, "application/json", &body);
        called.insert(path.to_owned());
        body
    };
    let list = call("/api/v1/runs", "/api/v1/runs", 200);
    let row = list["runs"].as_array().unwrap().iter().find(|r| r["run_id"] == run).unwrap();
    assert_eq!(
        (row["state"].as_str(), row["percent_restored"].as_f64()),
        (Some("succeeded"), Some(100.0))
    );
    assert!(row["started_by"].as_str().unwrap().contains('@'), "{row}");

    let one = call("/api/v1/runs/{id}", &format!("/api/v1/runs/{run}"), 200);
    assert_eq!(one["targets_total"], 5);
    let total = one["instances_total"].as_u64().unwrap();
    assert_eq!(
        one["instances_by_state"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        total
    );
    call("/api/v1/runs/{id}", "/api/v1/runs/not-a-uuid", 400);
    call("/api/v1/runs/{id}", "/api/v1/runs/00000000-0000-4000-8000-000000000000", 404);

    let t = call("/api/v1/runs/{id}/targets", &format!("/api/v1/runs/{run}/targets"), 200);
    assert!(t["targets"].as_array().unwrap().iter().all(|t| t["state"] == "restored"), "{t}");

    let url = format!("/api/v1/runs/{run}/instances");
    let all = call("/api/v1/runs/{id}/instances", &url, 200);
    assert_eq!(all["total"].as_u64(), Some(total));
    let page = call("/api/v1/runs/{id}/instances", &format!("{url}?limit=3&offset=2"), 200);
    assert_eq!(page["instances"].as_array().unwrap().len(), 3);
    assert_eq!(page["instances"][0]["key"], all["instances"][2]["key"]);
    let target = t["targets"][0]["target"].as_str().unwrap();
    let mine =
        call("/api/v1/runs/{id}/instances", &format!("{url}?target={target}&state=succeeded"), 200);
    let n = mine["total"].as_u64().unwrap();
    assert!(n > 0 && n < total, "{n} of {total}");
    assert!(mine["instances"].as_array().unwrap().iter().all(|i| i["target"] == target));
    call("/api/v1/runs/{id}/instances", &format!("{url}?limit=5001"), 400);
    call("/api/v1/runs/{id}/instances", &format!("{url}?state=sleeping"), 400);
    call("/api/v1/runs/{id}/instances", &format!("{url}?colour=red"), 400);

    let ev = call("/api/v1/runs/{id}/events", &format!("/api/v1/runs/{run}/events?limit=2"), 200);
    assert_eq!(ev["events"][0]["kind"], "run.created");
    let next = ev["next_after"].as_u64().unwrap();
    let more =
        call("/api/v1/runs/{id}/events", &format!("/api/v1/runs/{run}/events?after={next}"), 200);
    assert!(more["events"][0]["seq"].as_u64().unwrap() > next);
    call("/api/v1/runs/{id}/events", &format!("/api/v1/runs/{run}/events?after=x"), 400);

    let feed =
        call("/api/v1/runs/{id}/status-feed", &format!("/api/v1/runs/{run}/status-feed"), 200);
    assert!(feed["targets"].as_array().unwrap().iter().all(|t| t["restored_at"].is_string()));
    let csv = c.get(format!("{}/api/v1/runs/{run}/status-feed?format=csv", s.url)).send().unwrap();
    assert_eq!(csv.status().as_u16(), 200);
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("target,state,eta_s,restored_at"));
    assert_eq!(lines.clone().count(), 5, "{csv}");
    assert!(lines.all(|l| l.split(',').nth(1) == Some("restored")), "{csv}");
    let by_accept = c
        .get(format!("{}/api/v1/runs/{run}/status-feed", s.url))
        .header("accept", "text/csv")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(by_accept.starts_with("target,state,eta_s,restored_at\n"), "{by_accept}");

    let workers = call("/api/v1/workers", "/api/v1/workers", 200);
    let shown: Vec<(&str, &str, &str, u64)> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let field = |k: &str| w[k].as_str().unwrap();
            (field("name"), field("host"), field("state"), w["attempts_held"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("w-gone", "w-gone.example", "gone", 0),
            ("w-live", "w-live.example", "live", 0),
            ("w-stopping", "w-stopping.example", "stopping", 0)
        ]
    );
    assert_eq!(workers["workers"][0]["queues"], json!(["default", "us-east"]));
    call("/api/v1/workers", "/api/v1/workers?state=live", 400);

    let drills = call("/api/v1/drills", "/api/v1/drills?name=nightly", 200);
    assert_eq!(drills["drills"], json!([]));
    call("/api/v1/drills/{id}", "/api/v1/drills/00000000-0000-4000-8000-000000000000", 404);
    call("/api/v1/drills/{id}", "/api/v1/drills/nope", 400);

    // Without a token, the one write is refused, saying why.
    let r = c.post(format!("{}/api/v1/runs/{run}/cancel", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("--token-file"), "{body}");
    spec.check("/api/v1/runs/{id}/cancel", "post", 403, "application/json", &body);
    called.insert("/api/v1/runs/{id}/cancel".to_owned());

    // Event streams: a finished run's gives progress, targets (all), end, and closes.
    let events = sse(&format!("{}/api/v1/runs/{run}/stream", s.url), None, |_| false);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["progress", "targets", "end"]);
    spec.check_event("RunSummary", &events[0].1);
    assert_eq!(events[1].1["targets"].as_array().unwrap().len(), 5);
    spec.check_event("TargetsEvent", &events[1].1);
    spec.check_event("EndEvent", &events[2].1);
    called.insert("/api/v1/runs/{id}/stream".to_owned());
    let runs = sse(&format!("{}/api/v1/stream", s.url), None, |(n, _)| n == "runs");
    spec.check_event("RunList", &runs.last().unwrap().1);
    called.insert("/api/v1/stream".to_owned());
    called
}

impl Spec {
    fn check_event(&self, name: &str, body: &Value) {
        let wrapped = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": self.doc["components"],
        });
        let v = jsonschema::validator_for(&wrapped).unwrap();
        let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}\n{body:#}");
    }
}

/// Reads the server-sent events of `url` until the stream closes or `stop` says so after an
/// event; `(event, data)` each.
fn sse(
    url: &str,
    token: Option<&str>,
    mut stop: impl FnMut(&(String, Value)) -> bool,
) -> Vec<(String, Value)> {
    let c = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut out = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data.push_str(d);
        } else if line.is_empty() && !name.is_empty() {
            out.push((
                std::mem::take(&mut name),
                serde_json::from_str(&std::mem::take(&mut data)).unwrap(),
            ));
            if stop(out.last().unwrap()) {
                break;
            }
        }
    }
    out
}

/// The paths `api::routes` declares, from its source.
fn routes() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("crates/rewind-board/src/api/mod.rs")).unwrap();
    src.lines()
        .filter_map(|l| l.trim().strip_prefix(".route(\""))
        .map(|l| l.split('"').next().unwrap().to_owned())
        .filter(|p| !p.contains("{*"))
        .collect()
}

#[test]
fn every_endpoint_answers_as_docs_openapi_json_says_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    let run = simulated_run(tmp.path(), &db);
    register_workers(&db);
    let spec = Spec::load();
    let s = Server::start(tmp.path(), &db, &[]);
    let called = every_endpoint(&spec, &s, &run);
    assert_eq!(called, spec.paths(), "every path of docs/openapi.json is served and checked");
    assert_eq!(routes(), spec.paths(), "every route is in docs/openapi.json");
    // Without a token, a request for another host name (DNS rebinding) is refused.
    let c = client(None);
    let r = c.get(format!("{}/api/v1/runs", s.url)).header("Host", "evil.example").send().unwrap();
    assert_eq!(r.status().as_u16(), 421);
    let r = c.get(format!("{}/api/v1/runs", s.url)).header("Host", "localhost:1").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn every_endpoint_answers_as_docs_openapi_json_says_on_postgres() {
    let Some(base) = rewind_testkit::postgres_url("serve_api_postgres") else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(rewind_testkit::PgSchema::create(&base));
    let tmp = tempfile::tempdir().unwrap();
    let run = simulated_run(tmp.path(), &schema.url);
    register_workers(&schema.url);
    let spec = Spec::load();
    let s = Server::start(tmp.path(), &schema.url, &[]);
    every_endpoint(&spec, &s, &run);
    assert_eq!(s.stop(), Some(0));
    rt.block_on(schema.drop_schema());
}

#[test]
fn a_token_is_required_when_configured_and_enables_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    let run = simulated_run(tmp.path(), &db);
    let spec = Spec::load();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Server::start(tmp.path(), &db, &["--token-file", token_file.to_str().unwrap()]);
    for c in [client(None), client(Some("wrong"))] {
        let (status, body) = get(&c, &format!("{}/api/v1/runs", s.url));
        assert_eq!(status, 401, "{body}");
        spec.check("/api/v1/runs", "get", 401, "application/json", &body);
    }
    let (status, _) = get(&client(Some("s3cret-token")), &format!("{}/api/v1/runs", s.url));
    assert_eq!(status, 200);
    // With a token the write exists: a finished run cannot be cancelled (409).
    let r = client(Some("s3cret-token"))
        .post(format!("{}/api/v1/runs/{run}/cancel", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    spec.check("/api/v1/runs/{id}/cancel", "post", 409, "application/json", &r.json().unwrap());
    // A browser: a page load goes to the login form; the right token there gives a session
    // cookie (not the token) that reads pages, the API and streams, and never writes.
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r =
        browser.get(format!("{}/runs/{run}", s.url)).header("Accept", "text/html").send().unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = browser.get(format!("{}/login", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap().contains("name=\"token\""));
    let r = browser
        .post(format!("{}/login", s.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = browser
        .post(format!("{}/login", s.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("s3cret-token"), "{set}");
    let session = set.split(';').next().unwrap().to_owned();
    for path in [format!("/runs/{run}"), "/api/v1/runs".to_owned(), "/metrics".to_owned()] {
        let r = browser.get(format!("{}{path}", s.url)).header("Cookie", &session).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let r = browser
        .post(format!("{}/api/v1/runs/{run}/cancel", s.url))
        .header("Cookie", &session)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the session cookie never writes");
    let r =
        browser.get(format!("{}/api/v1/runs", s.url)).header("Cookie", "rewind_session=00").send();
    assert_eq!(r.unwrap().status().as_u16(), 401);
    drop(s);

    // Files that cannot hold a token are refused, named.
    for (content, mode, says) in [
        ("", 0o600, "is empty"),
        ("t\n", 0o644, "readable by every user"),
        ("tökén\n", 0o600, "visible ASCII"),
    ] {
        std::fs::write(&token_file, content).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = rewind(
            tmp.path(),
            &[
                "serve",
                "--db",
                &db,
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                token_file.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(&token_file.display().to_string()) && text(&o).contains(says),
            "{}",
            text(&o)
        );
    }
    let missing = tmp.path().join("missing");
    let o = rewind(
        tmp.path(),
        &[
            "serve",
            "--db",
            &db,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot read it"), "{}", text(&o));
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    let o = rewind(tmp.path(), &["serve", "--db", &db, "--listen", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--token-file"), "{}", text(&o));
}

/// A real run of command steps (each a short sleep, one at a time) is driven while a client
/// reads its stream: the first `progress` arrives, the percentage rises to 100 and `end` comes.
#[test]
fn the_stream_follows_a_driven_run_to_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    let wf = tmp.path().join("slow.toml");
    std::fs::write(
        &wf,
        r#"name = "slow"
target_kind = "site"

[resources]
one = 1

[[steps]]
id = "restore"
resource = "one"
estimate = "1s"
action = { kind = "command", program = "sleep", args = ["0.4"] }
"#,
    )
    .unwrap();
    let t = sites(tmp.path(), 6);
    let mut driver = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args([
            "run",
            "--db",
            &db,
            "--workflow",
            wf.to_str().unwrap(),
            "--targets",
            t.to_str().unwrap(),
            "--restore-point",
            RP,
        ])
        .current_dir(tmp.path())
        .env_remove("REWIND_DB")
        // The restore point is old: the clock the safety rails read is set to just after it.
        .env("REWIND_NOW", "2022-04-05T09:00:00Z")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its stdout stays open (read to its end below): a closed pipe would stop the run.
    let mut out = BufReader::new(driver.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let run = first.trim().strip_prefix("run ").unwrap().to_owned();
    let rest = std::thread::spawn(move || std::io::read_to_string(out).unwrap());
    let s = Server::start(tmp.path(), &db, &[]);
    let events = sse(&format!("{}/api/v1/runs/{run}/stream", s.url), None, |_| false);
    let status = driver.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", rest.join().unwrap());
    let pct: Vec<f64> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, d)| d["percent_restored"].as_f64().unwrap())
        .collect();
    assert!(pct.len() >= 2, "several progress events: {pct:?}");
    assert!(pct[0] < 100.0, "{pct:?}");
    assert!(pct.windows(2).all(|w| w[0] <= w[1]), "it only rises: {pct:?}");
    assert_eq!(pct.last(), Some(&100.0));
    assert_eq!(events.last().unwrap().0, "end");
    // Later `targets` events list only the targets that changed.
    let later: usize = events
        .iter()
        .filter(|(n, _)| n == "targets")
        .skip(1)
        .map(|(_, d)| d["targets"].as_array().unwrap().len())
        .sum();
    assert!(later >= 1, "{events:?}");
    assert_eq!(s.stop(), Some(0));
}
