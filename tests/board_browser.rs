//! The board in a real browser: Debian's `chromium`, headless, driven over WebDriver
//! (`chromedriver`, by fantoccini). While a simulated run (paced to last several seconds of
//! wall time) and a real restore-2 on a sandbox are driven, the run page's "% restored" rises to
//! 100% by server-sent events alone (the page is never reloaded: a marker set in the page's
//! JavaScript survives), the grid turns green, a click on a site opens its instances, and
//! screenshots are saved: to `$REWIND_SCREENSHOTS` (e.g. `docs/board`) when set, else to a
//! temporary directory.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); `CHROMEDRIVER` names
//! another driver binary.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

#[path = "support/board.rs"]
mod board;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use board::Board;
use fantoccini::{Client, ClientBuilder, Locator};
use rewind_exec::{Registry, Vars};
use rewind_model::{Plan, TargetSet, TargetsFormat, Workflow};
use rewind_runtime::{DriveOptions, Lease, Mode, Observer, Progress, RunSpec};
use rewind_scheduler::Priority;
use serde_json::json;
use support::*;

/// `chromedriver` (and the chromium it starts) in a process group of its own, killed as a whole
/// when dropped, also when the test fails.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: install Debian's chromium and its driver \
             (apt-get install -y chromium chromium-driver), or set CHROMEDRIVER"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Self { child, port, _profile: tempfile::tempdir().unwrap() };
        wait_for("chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        d
    }

    async fn client(&self) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--window-size=1280,1700",
                         format!("--user-data-dir={}", self._profile.path().display())],
            }
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every chromium process it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Where screenshots go.
fn shots() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var("REWIND_SCREENSHOTS") {
        Ok(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            let p = if p.is_absolute() { p } else { Path::new(env!("CARGO_MANIFEST_DIR")).join(p) };
            std::fs::create_dir_all(&p).unwrap();
            (p, None)
        }
        _ => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_owned(), Some(t))
        }
    }
}

async fn screenshot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(name), png).unwrap();
}

/// Slows a simulation down: each turn of the driver (one virtual instant, or a few) takes at
/// least `per_turn` of wall time. (A simulation's turns are the same on every run of the same
/// plan and seed, so the run lasts about as long every time.)
struct Pacer {
    per_turn: Duration,
    turns: u32,
}

impl Observer for Pacer {
    fn progress(&mut self, _: &Progress) {}
    fn failure(&mut self, _: &str, _: u32, _: &str, _: Option<Duration>) {}
    fn note(&mut self, _: &str) {}
    fn stop_requested(&mut self) -> bool {
        self.turns += 1;
        std::thread::sleep(self.per_turn);
        false
    }
}

/// Creates a simulated restore-2 of the first `sites` example sites in `db` and drives it on a
/// thread of its own, each turn taking `per_turn`; sends the run id once it is created.
fn paced_simulation(
    db: String,
    sites: usize,
    per_turn: Duration,
) -> (String, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let root = env!("CARGO_MANIFEST_DIR");
            let workflow =
                std::fs::read_to_string(format!("{root}/workflows/restore-2.toml")).unwrap();
            let all = std::fs::read_to_string(format!("{root}/examples/sites-883.csv")).unwrap();
            let targets: String = all.lines().take(sites + 1).map(|l| format!("{l}\n")).collect();
            let wf = Workflow::parse("restore-2.toml", &workflow).unwrap();
            let ts = TargetSet::parse("sites.csv", &targets, TargetsFormat::Csv).unwrap();
            let plan = Plan::build(wf, ts, RP.parse().unwrap()).unwrap();
            let store = rewind_store::open(&db).await.unwrap();
            let spec = RunSpec {
                workflow_file: "restore-2.toml".into(),
                workflow_text: workflow,
                targets_file: "sites.csv".into(),
                targets_text: targets,
                workdir: root.into(),
                cwd: root.into(),
                mode: Mode::Simulated { seed: 1, fail_rate: 0.0 },
                max_running: None,
                priority: Priority::CriticalPath,
                vars: Vars::from_process(),
                waves: Vec::new(),
                halt_rate: 1.0,
            };
            let id = rewind_runtime::create_run(&store, &plan, &spec, &Registry::builtin())
                .await
                .unwrap();
            drop(plan);
            tx.send(id.to_string()).unwrap();
            // Leave the browser time to open the page before the first target is restored.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (lease, _) = Lease::acquire(&store, id).await.unwrap();
            let mut pacer = Pacer { per_turn, turns: 0 };
            let start = Instant::now();
            let opts = DriveOptions {
                registry: Registry::builtin(),
                observer: &mut pacer,
                signals: false,
                progress_every: Duration::ZERO,
                tick: Duration::from_millis(100),
                vars: Vars::from_process(),
            };
            rewind_runtime::drive(&store, lease, opts).await.unwrap();
            eprintln!("paced simulation: {} turns in {:?}", pacer.turns, start.elapsed());
        });
    });
    (rx.recv_timeout(Duration::from_secs(60)).unwrap(), handle)
}

/// Opens the run page and reads `#pct` until it says 100.0%, never reloading; returns every
/// value it showed, in order. Saves `live` mid-way (the first reading between 25% and 90%, or
/// the first after 3 s below 100%).
async fn follow_to_100(c: &Client, board: &Board, run: &str, dir: &Path, live: &str) -> Vec<f64> {
    c.goto(&board.url(&format!("/runs/{run}"))).await.unwrap();
    c.execute("window.__notReloaded = true;", vec![]).await.unwrap();
    let start = Instant::now();
    let mut seen: Vec<f64> = Vec::new();
    let mut shot = false;
    loop {
        let text = c.find(Locator::Id("pct")).await.unwrap().text().await.unwrap();
        let p: f64 = text.trim_end_matches('%').parse().unwrap();
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        if !shot && p > 0.0 && p < 100.0 && (p >= 25.0 || start.elapsed().as_secs() >= 3) {
            // The steps and failures are redrawn from the server within 2 s of a change.
            tokio::time::sleep(Duration::from_millis(2200)).await;
            screenshot(c, dir, live).await;
            shot = true;
        }
        if p >= 100.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "stuck at {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let same_page = c.execute("return window.__notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(same_page, json!(true), "the page was reloaded");
    seen
}

/// Every cell of the grid, and how many are green, once the `end` event has been applied.
async fn grid(c: &Client) -> (usize, usize) {
    let start = Instant::now();
    loop {
        let all = c.find_all(Locator::Css("#grid a.c")).await.unwrap().len();
        let green = c.find_all(Locator::Css("#grid a.c.succeeded")).await.unwrap().len();
        let eta = c.find(Locator::Id("eta")).await.unwrap().text().await.unwrap();
        if (all == green && eta == "done") || start.elapsed() > Duration::from_secs(10) {
            return (all, green);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sandbox after its incident, and the targets file of its deleted sites.
fn sandbox(env: &Env, sites: u32, delete: u32) -> (String, String, String) {
    let sb = env.path("sb").display().to_string();
    let ok = |args: &[&str]| {
        let o = env.rewind(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", stdout(&o), stderr(&o));
    };
    ok(&["sandbox", "init", &sb, "--sites", &sites.to_string(), "--shards", "2", "--seed", "7"]);
    ok(&["sandbox", "incident", &sb, "--delete", &delete.to_string()]);
    let deleted = env.path("deleted.csv").display().to_string();
    ok(&["sandbox", "sites", &sb, "--deleted", "--out", &deleted]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("sb/sandbox.json")).unwrap())
            .unwrap();
    let at = humantime::parse_rfc3339(manifest["incident"]["at"].as_str().unwrap()).unwrap();
    let rp = humantime::format_rfc3339_seconds(at - Duration::from_secs(300)).to_string();
    (sb, deleted, rp)
}

#[test]
fn the_board_follows_a_simulated_and_a_real_run_live_in_chromium() {
    let env = Env::sqlite();
    let board = Board::start(&env.db);
    let driver = Driver::start();
    let (dir, _keep) = shots();
    eprintln!("screenshots in {}", dir.display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = driver.client().await;

        // 1. A simulated restore-2 of 60 sites, paced to several seconds.
        let (sim, driving) = paced_simulation(env.db.clone(), 60, Duration::from_millis(40));
        let seen = follow_to_100(&c, &board, &sim, &dir, "run-live.png").await;
        eprintln!("simulated run: % restored seen {seen:?}");
        assert!(seen[0] < 100.0, "the page opened on a finished run: {seen:?}");
        assert!(seen.iter().any(|p| *p > 0.0 && *p < 100.0), "no rise seen: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "the share went down: {seen:?}");
        driving.join().unwrap();
        assert_eq!(grid(&c).await, (60, 60), "every cell green by the stream");
        screenshot(&c, &dir, "run-simulated.png").await;

        // A site's instances: click its cell.
        let cell = c.find(Locator::Css("#grid a.c:nth-child(7)")).await.unwrap();
        let site = cell.attr("href").await.unwrap().unwrap();
        let site = site.rsplit('/').next().unwrap().to_owned();
        cell.click().await.unwrap();
        c.wait().for_element(Locator::Css("table.instances")).await.unwrap();
        assert!(c.current_url().await.unwrap().as_str().ends_with(&format!("/targets/{site}")));
        let rows = c.find_all(Locator::Css("table.instances tbody tr")).await.unwrap();
        assert!(rows.len() > 20, "{} instance rows", rows.len());
        let text = c.find(Locator::Css("table.instances")).await.unwrap().text().await.unwrap();
        assert!(text.contains("catalog.undelete") && text.contains("succeeded"), "{text}");
        screenshot(&c, &dir, "target.png").await;

        // 2. A real restore-2 of 12 deleted sites on a sandbox, by the binary, 4 at a time.
        let (sb, deleted, rp) = sandbox(&env, 40, 12);
        let workflow = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/restore-2.toml");
        let mut cmd = env.cmd(&[
            "run",
            "--workflow",
            workflow,
            "--targets",
            &deleted,
            "--restore-point",
            &rp,
            "--confirm",
            "12",
            "--max-parallel",
            "4",
        ]);
        let out = std::fs::File::create(env.path("real.out")).unwrap();
        let mut real =
            cmd.env("SANDBOX", &sb).stdout(Stdio::from(out)).stderr(Stdio::null()).spawn().unwrap();
        let id = env.run_id_of("real");
        let seen = follow_to_100(&c, &board, &id, &dir, "run-real-live.png").await;
        eprintln!("real run: % restored seen {seen:?}");
        assert!(
            seen.iter().any(|p| *p < 100.0),
            "the real run ended before the page opened: {seen:?}"
        );
        assert_eq!(wait_exit(&mut real), 0, "{}", env.read("real.out"));
        assert_eq!(grid(&c).await, (12, 12));
        screenshot(&c, &dir, "run-real.png").await;

        // The runs list: both runs, done.
        c.set_window_size(1280, 420).await.unwrap();
        c.goto(&board.url("/")).await.unwrap();
        let rows = c.find_all(Locator::Css("#runs tr")).await.unwrap();
        assert_eq!(rows.len(), 2);
        screenshot(&c, &dir, "runs.png").await;
        c.close().await.unwrap();
    });
}
