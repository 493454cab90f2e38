//! The board's pages, server-rendered from a store the `rewind` binary wrote: what they show
//! without JavaScript, that every value users wrote is escaped, and how they refuse bad paths.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

#[path = "support/board.rs"]
mod board;
mod support;

use board::Board;
use support::*;

const EVIL: &str = "<script>alert(1)</script>";
const EVIL_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

/// The first `n` sites of the example file.
fn sites(env: &Env, n: usize) -> String {
    let all =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sites-883.csv"))
            .unwrap();
    let text: String = all.lines().take(n + 1).map(|l| format!("{l}\n")).collect();
    env.write("sites.csv", &text, false).display().to_string()
}

fn restore_2() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/restore-2.toml")
}

/// `rewind run …` that must exit with `code`; its run id.
fn run(env: &Env, args: &[&str], code: i32) -> String {
    let o = env.rewind(args);
    assert_eq!(o.status.code(), Some(code), "{}{}", stdout(&o), stderr(&o));
    stdout(&o).lines().next().unwrap().strip_prefix("run ").unwrap().to_owned()
}

fn simulate(env: &Env, targets: &str, extra: &[&str], code: i32) -> String {
    let mut args = vec!["run", "--simulate", "--workflow", restore_2(), "--targets", targets];
    args.extend(["--restore-point", RP]);
    args.extend(extra);
    run(env, &args, code)
}

#[test]
fn what_users_wrote_is_escaped_on_every_page() {
    let env = Env::sqlite();
    env.write("evil.sh", &format!("#!/bin/sh\necho '{EVIL}' >&2\nexit 3\n"), true);
    let wf = env.write(
        "evil.toml",
        r#"name = "evil"
target_kind = "site"

[defaults]
retries = 0

[[steps]]
id = "restore"
estimate = "1s"
action = { kind = "command", program = "./evil.sh" }
"#,
        false,
    );
    let site = site(1);
    let t = env.write("t.csv", &format!("id,kind,name\n{site},site,{EVIL}\n"), false);
    let (w, t) = (wf.display().to_string(), t.display().to_string());
    let id = run(&env, &["run", "--workflow", &w, "--targets", &t, "--restore-point", RP], 1);
    let board = Board::start(&env.db);
    let run_page = board.page(&format!("/runs/{id}"));
    let target_page = board.page(&format!("/runs/{id}/targets/{site}"));
    let events = board.page(&format!("/runs/{id}/events"));
    // The stderr tail on the run page (failures) and the target page; the name in the grid's
    // hover title and on the target page.
    assert!(run_page.contains(&format!("<pre class=\"tail\">{EVIL_ESCAPED}")), "{run_page}");
    assert!(run_page.contains(&format!("{site} · {EVIL_ESCAPED}")), "{run_page}");
    assert!(target_page.contains(&format!("<td>{EVIL_ESCAPED}</td>")), "{target_page}");
    assert!(target_page.contains(&format!("<pre class=\"tail\">{EVIL_ESCAPED}")), "{target_page}");
    for (page, body) in [("run", &run_page), ("target", &target_page), ("events", &events)] {
        assert!(!body.contains("<script>alert"), "{page} page: {body}");
    }
    assert!(!board.page("/").contains("<script>alert"));
}

#[test]
fn a_simulated_restore_2_shows_every_target_step_pool_and_event() {
    let env = Env::sqlite();
    let targets = sites(&env, 20);
    let id = simulate(&env, &targets, &[], 0);
    let board = Board::start(&env.db);

    let list = board.page("/");
    assert!(list.contains(&format!("href=\"/runs/{id}\"")), "{list}");
    assert!(list.contains("100.0%"), "{list}");

    let page = board.page(&format!("/runs/{id}"));
    assert!(page.contains("<div class=\"v\" id=\"pct\">100.0%</div>"), "{page}");
    assert!(page.contains("20 / 20"), "{page}");
    assert_eq!(page.matches("class=\"c succeeded\" href=").count(), 20, "one cell per target");
    assert!(!page.contains("data-follow"), "an ended run follows no stream");
    // The Gantt: a lane per pool used, one row per step of the workflow.
    let wf = std::fs::read_to_string(restore_2()).unwrap();
    let steps = wf.matches("[[steps]]").count();
    assert_eq!(page.matches("class=\"steplab\"").count(), steps, "{page}");
    assert!(page.contains("pool db_restore · capacity 6"), "{page}");
    assert!(page.contains("<polyline class=\"curve\""), "{page}");
    assert!(!page.contains("id=\"failures\""), "no failures section without failures");

    // A site's instances, each succeeded.
    let site = targets_of(&targets)[3].clone();
    let t = board.page(&format!("/runs/{id}/targets/{site}"));
    assert!(t.contains("catalog.undelete"), "{t}");
    assert!(t.contains("badge succeeded"), "{t}");
    assert!(!t.contains("badge failed"), "{t}");

    // The audit log, a page at a time.
    let log = board.page(&format!("/runs/{id}/events"));
    let pages: usize = log
        .split("page 1 of ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(pages > 1, "{log}");
    assert!(log.contains("run.created"), "{log}");
    assert!(log.contains("?page=2"), "{log}");
    let last = board.page(&format!("/runs/{id}/events?page={pages}"));
    assert!(last.contains("run.finished"), "{last}");
    assert_eq!(board.get(&format!("/runs/{id}/events?page={}", pages + 1)).0, 404);
    assert_eq!(board.get(&format!("/runs/{id}/events?page=0")).0, 400);
}

fn targets_of(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect()
}

#[test]
fn failures_waves_and_drills_are_shown() {
    let env = Env::sqlite();
    let targets = sites(&env, 20);
    let id = simulate(&env, &targets, &["--fail-rate", "0.3", "--seed", "4"], 1);
    let board = Board::start(&env.db);
    let page = board.page(&format!("/runs/{id}"));
    assert!(page.contains("id=\"failures\""), "{page}");
    assert!(page.contains("class=\"c failed\"") || page.contains("class=\"c blocked\""), "{page}");
    assert!(page.contains("badge failed"), "{page}");
    // The page is rendered once per version of the run: after a retry this board (which holds
    // the page it rendered) shows what a board without a cache shows.
    assert_eq!(board.page(&format!("/runs/{id}")), page);
    let log = board.page(&format!("/runs/{id}/events"));
    let list = board.page("/api/v1/runs");
    let o = env.rewind(&["retry", &id]);
    assert!(o.status.code().is_some_and(|c| c == 0 || c == 1), "{}", stderr(&o));
    let again = board.page(&format!("/runs/{id}"));
    assert_ne!(again, page, "the retried run's page is rendered again");
    let fresh = Board::start(&env.db);
    assert_eq!(again, fresh.page(&format!("/runs/{id}")));
    // The audit log read again only from its last event on: the retry's events are there.
    let log_again = board.page(&format!("/runs/{id}/events"));
    assert_ne!(log_again, log);
    assert_eq!(log_again, fresh.page(&format!("/runs/{id}/events")));
    // The runs list's kept figures follow the change too.
    let list_again = board.page("/api/v1/runs");
    assert_ne!(list_again, list);
    assert_eq!(list_again, fresh.page("/api/v1/runs"));

    let staged = simulate(&env, &targets, &["--waves", "5,20"], 0);
    let page = board.page(&format!("/runs/{staged}"));
    assert!(page.contains("id=\"waves\""), "{page}");
    assert!(page.contains("<td>1–5 (5)</td>"), "{page}");
    assert!(page.contains("<td>6–20 (15)</td>"), "{page}");

    let drills = board.page("/drills");
    assert!(drills.contains("No drill has run"), "{drills}");
}

#[test]
fn bad_paths_are_refused_naming_what_is_wrong() {
    let env = Env::sqlite();
    let targets = sites(&env, 2);
    let id = simulate(&env, &targets, &[], 0);
    let board = Board::start(&env.db);
    let (code, body) = board.get("/runs/not-a-run");
    assert_eq!(code, 400);
    assert!(body.contains("`not-a-run` is not a run id"), "{body}");
    let other = "00000000-0000-4000-8000-000000000099";
    let (code, body) = board.get(&format!("/runs/{other}"));
    assert_eq!(code, 404);
    assert!(body.contains(other), "{body}");
    let (code, body) = board.get(&format!("/runs/{id}/targets/{other}"));
    assert_eq!(code, 404);
    assert!(body.contains(&format!("has no target `{other}`")), "{body}");
    let (code, _) = board.get("/assets/board.js");
    assert_eq!(code, 200);
}

/// The runs page lists the registered workers (escaped: a name is what its operator typed) with
/// their state, host, queues, slots and attempts held; without workers there is no section.
#[test]
fn the_runs_page_lists_workers() {
    let env = Env::sqlite();
    let board = Board::start(&env.db);
    assert!(!board.page("/").contains("id=\"workers\""), "no workers, no section");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = rewind_store::SqlStore::open(&env.db).await.unwrap();
        let now = rewind_runtime::now_unix_ms();
        for (name, at) in [(EVIL, now), ("w-old", 0)] {
            let spec = rewind_dispatch::WorkerSpec {
                name: name.into(),
                host: "db-east-1".into(),
                queues: vec!["us-east".into(), "default".into()],
                slots: 6,
            };
            store.worker_register(&spec, at).await.unwrap();
        }
        store.close().await;
    });
    let list = board.page("/");
    let section = list.split("id=\"workers\"").nth(1).unwrap_or_else(|| panic!("{list}"));
    assert!(section.contains(&format!("<code>{EVIL_ESCAPED}</code>")), "{section}");
    assert!(!list.contains("<script>alert"), "{list}");
    assert!(section.contains("<span class=\"badge live\">live</span>"), "{section}");
    assert!(section.contains("<tr data-worker=\"w-old\"><td><code>w-old</code></td><td><span class=\"badge gone\">gone</span></td><td>db-east-1</td><td>us-east, default</td><td class=\"num\">6</td><td class=\"num\">0</td>"), "{section}");
}
