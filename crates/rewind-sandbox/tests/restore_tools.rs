//! The sandbox-side tools of restore workflows, through the library: scratch copies by tag that
//! describe themselves, `sandbox://` connection URLs, media restore and check, the outbox,
//! dropping scratch copies, and the data-loss summary. SQLite always; PostgreSQL too when
//! `REWIND_TEST_POSTGRES` is set (each sandbox has its own schema prefix, dropped at the end).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_model::{RestorePoint, TargetId};
use rewind_sandbox::{
    Backend, IncidentOptions, InitOptions, Manifest, OutboxRequest, PitrOptions, PitrOut,
    ScratchTag, SimTime, VerifyOptions, check_media, check_media_as, claimed, data_loss,
    drop_scratch, drop_tenant, incident, init, new_site_ids, outbox, pitr, resolve_url,
    restore_media, restore_media_as, verify,
};
use sha2::{Digest as _, Sha256};
use sqlx::Connection as _;

/// A sandbox after its incident (12 sites, 2 shards, 4 deleted) in its own directory and, on
/// PostgreSQL, its own schemas, dropped when it goes out of scope.
struct Sb {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pg: Option<(String, String)>,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let Some((url, prefix)) = self.pg.clone() else { return };
        // Its own thread and runtime: the test's runtime cannot block inside itself.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(rewind_testkit::drop_schemas_with_prefix(&url, &prefix));
        });
        let _ = cleanup.join();
    }
}

/// `None` (with a note) when PostgreSQL is asked for and `REWIND_TEST_POSTGRES` is not set.
async fn sandbox(postgres: bool) -> Option<Sb> {
    let url = match (postgres, std::env::var("REWIND_TEST_POSTGRES")) {
        (false, _) => None,
        (true, Ok(url)) if !url.is_empty() => Some(url),
        (true, _) => {
            eprintln!("note: REWIND_TEST_POSTGRES is not set; skipping the PostgreSQL variant");
            return None;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let mut o = InitOptions::new(&dir, 12);
    o.shards = 2;
    o.seed = 11;
    o.postgres = url.clone();
    let init_result = init(&o).await;
    let mut sb = Sb { _tmp: tmp, dir, pg: None };
    if let (Some(url), Ok(m)) = (&url, Manifest::load(&sb.dir))
        && let Backend::Postgres { schema_prefix, .. } = m.backend
    {
        sb.pg = Some((url.clone(), schema_prefix));
    }
    init_result.unwrap();
    let inc = IncidentOptions {
        delete: 4,
        at: None,
        over: Duration::from_secs(23 * 60),
        then: Duration::from_secs(15 * 60),
    };
    incident(&sb.dir, &inc).await.unwrap();
    Some(sb)
}

impl Sb {
    fn manifest(&self) -> Manifest {
        Manifest::load(&self.dir).unwrap()
    }

    /// Five minutes before the first deletion.
    fn restore_point(&self) -> RestorePoint {
        let at = self.manifest().incident.unwrap().at;
        at.minus(Duration::from_secs(300)).to_restore_point()
    }

    fn deleted(&self) -> Vec<TargetId> {
        self.manifest().incident.unwrap().deleted.iter().map(|d| d.site).collect()
    }

    async fn pitr(&self, store: &str, tag: &ScratchTag) -> rewind_sandbox::PitrReport {
        let o = PitrOptions {
            store: store.into(),
            at: self.restore_point(),
            out: PitrOut::Scratch(tag.clone()),
        };
        pitr(&self.dir, &o).await.unwrap()
    }

    fn url(&self, query: &str) -> String {
        resolve_url(&format!("sandbox://{}?{query}", self.dir.display())).unwrap().unwrap()
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn tag(s: &str) -> ScratchTag {
    s.parse().unwrap()
}

/// Every file under `dir` with the SHA-256 of its content (but SQLite's shared-memory index
/// and empty write-ahead logs, which come and go with connections).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.display().to_string();
            let content = if p.is_dir() { Vec::new() } else { std::fs::read(&p).unwrap() };
            if p.is_dir() {
                todo.push(p);
            } else if !(name.ends_with("-shm") || name.ends_with("-wal") && content.is_empty()) {
                out.insert(p, sha_hex(&content));
            }
        }
    }
    out
}

/// `rewind_meta` of a scratch copy, through a connection URL.
async fn meta_of(url: &str) -> BTreeMap<String, String> {
    let rows: Vec<(String, String)> = if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as("SELECT key, value FROM rewind_meta").fetch_all(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as("SELECT key, value FROM rewind_meta").fetch_all(&mut c).await.unwrap()
    };
    rows.into_iter().collect()
}

/// Rows of `table` (unqualified: the URL selects the store) for `site`, and in all.
async fn count(url: &str, table: &str, site: &str) -> (i64, i64) {
    let one = format!("SELECT count(*) FROM {table} WHERE site_id = ");
    let all = format!("SELECT count(*) FROM {table}");
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let a = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{one}?")))
            .bind(site)
            .fetch_one(&mut c)
            .await
            .unwrap();
        (a, sqlx::query_scalar(sqlx::AssertSqlSafe(all)).fetch_one(&mut c).await.unwrap())
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let a = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{one}$1")))
            .bind(site)
            .fetch_one(&mut c)
            .await
            .unwrap();
        (a, sqlx::query_scalar(sqlx::AssertSqlSafe(all)).fetch_one(&mut c).await.unwrap())
    }
}

async fn verify_problems(sb: &Sb) -> usize {
    let o = VerifyOptions::new(sb.restore_point());
    verify(&sb.dir, &o).await.unwrap().problems.len()
}

// ---------------------------------------------------------------------------------------------
// Scratch copies by tag, and their URLs

async fn scratch_copies_describe_themselves(postgres: bool) {
    let Some(sb) = sandbox(postgres).await else { return };
    let live_before = tree(&sb.dir.join("stores"));
    let problems_before = verify_problems(&sb).await;
    let t = tag("0190f3a2-7c4e-7d1a-9b2e-3f4a5b6c7d8e");
    let rp = sb.restore_point();
    for store in ["catalog", "tracker-s01", "media"] {
        let r = sb.pitr(store, &t).await;
        assert_eq!(r.restore_point, rp);
        let want = [
            ("restore_point".to_owned(), rp.to_string()),
            ("snapshot".to_owned(), r.snapshot.to_string()),
            ("store".to_owned(), store.to_owned()),
        ]
        .into_iter()
        .collect::<BTreeMap<_, _>>();
        if store == "media" {
            let root = sb.dir.join("scratch").join(t.as_str()).join("media");
            assert_eq!(r.out, root.display().to_string());
            let text = std::fs::read_to_string(root.join("rewind-meta.json")).unwrap();
            let got: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
            assert_eq!(got, want);
            continue;
        }
        match &sb.pg {
            None => {
                let file = sb.dir.join(format!("scratch/{t}/{store}.sqlite"));
                assert_eq!(r.out, file.display().to_string());
                assert_eq!(r.out_kind, "sqlite");
            }
            Some((_, prefix)) => {
                let hash = sha_hex(t.as_str().as_bytes());
                let schema = format!("{prefix}_x{}_{}", &hash[..8], store.replace('-', "_"));
                assert_eq!(r.out, schema);
                assert_eq!(r.out_kind, "postgres");
            }
        }
        let url = sb.url(&format!("scratch={t}&store={store}"));
        assert_eq!(meta_of(&url).await, want, "{url}");
    }
    // Re-running with the same tag replaces the copy.
    let url = sb.url(&format!("scratch={t}&store=catalog"));
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM licences").execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM licences").execute(&mut c).await.unwrap();
    }
    assert_eq!(count(&url, "licences", "x").await.1, 0);
    let r = sb.pitr("catalog", &t).await;
    assert_eq!(count(&url, "licences", "x").await.1 as u64, r.rows["licences"]);
    assert!(r.rows["licences"] > 0);

    // `--out` copies describe themselves too.
    let out = match &sb.pg {
        None => sb.dir.join("elsewhere.sqlite").display().to_string(),
        Some((_, prefix)) => format!("{prefix}_by_hand"),
    };
    let o = PitrOptions { store: "flags".into(), at: rp, out: PitrOut::Path(out.clone()) };
    let r = pitr(&sb.dir, &o).await.unwrap();
    let url = match &sb.pg {
        None => format!("sqlite://{out}"),
        Some((server, _)) => format!("{server}?options[search_path]={out}"),
    };
    assert_eq!(meta_of(&url).await["snapshot"], r.snapshot.to_string());

    // The live stores did not change, and verify sees exactly what it saw.
    assert_eq!(tree(&sb.dir.join("stores")), live_before);
    assert_eq!(verify_problems(&sb).await, problems_before);
    assert!(problems_before > 0, "the deleted sites are still deleted");
}

#[tokio::test]
async fn sqlite_scratch_copies_by_tag_describe_themselves_and_touch_nothing_live() {
    scratch_copies_describe_themselves(false).await;
}

#[tokio::test]
async fn postgres_scratch_copies_by_tag_describe_themselves_and_touch_nothing_live() {
    scratch_copies_describe_themselves(true).await;
}

async fn urls_reach_the_right_tables(postgres: bool) {
    let Some(sb) = sandbox(postgres).await else { return };
    let m = sb.manifest();
    let untouched = m.sites.iter().find(|s| !sb.deleted().contains(&s.id)).unwrap();
    let site = untouched.id.to_string();
    let deleted = sb.deleted()[0].to_string();
    let t = tag("run-1");
    sb.pitr("catalog", &t).await;

    // The live store: the site's row of `sites`, and none of a deleted site's.
    let live = sb.url("store=catalog");
    assert_eq!(count(&live, "sites", &site).await.0, 1);
    assert_eq!(count(&live, "sites", &deleted).await.0, 0);
    match &sb.pg {
        None => {
            let file = sb.dir.join("stores/catalog.sqlite");
            assert_eq!(live, format!("sqlite://{}", file.display()));
        }
        Some((server, prefix)) => {
            assert_eq!(live, format!("{server}?options[search_path]={prefix}_catalog"));
        }
    }
    // The scratch copy at the restore point holds the deleted site, and describes itself.
    let scratch = sb.url(&format!("store=catalog&scratch={t}"));
    assert_eq!(count(&scratch, "sites", &deleted).await.0, 1);
    assert_eq!(meta_of(&scratch).await["store"], "catalog");
    // Another store's URL reaches that store's tables.
    let region = &untouched.region;
    let identity = sb.url(&format!("store=identity-{region}"));
    assert!(count(&identity, "users", &site).await.0 > 0);
    // Values are percent-decoded (a connection URL template encodes what it renders).
    let encoded: String = region.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(sb.url(&format!("st%6Fre=identity-{encoded}")), identity);

    // A relative DIR is relative to the working directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let rel = format!("{up}{}", sb.dir.display().to_string().trim_start_matches('/'));
    let via_rel = resolve_url(&format!("sandbox://{rel}?store=catalog")).unwrap().unwrap();
    assert_eq!(count(&via_rel, "sites", &site).await.0, 1);

    // What is refused, and what the message says.
    let err = |q: &str| {
        let url = format!("sandbox://{}?{q}", sb.dir.display());
        let e = resolve_url(&url).unwrap().unwrap_err();
        assert!(e.is_refusal(), "{e}");
        e.to_string()
    };
    let e = err("store=tracker-s09");
    assert!(e.contains("unknown store `tracker-s09`") && e.contains("wiki-s02"), "{e}");
    assert!(err("store=media").contains("no SQL URL"));
    assert!(err("store=catalog&scratch=a/b").contains("--scratch `a/b`"));
    let missing = resolve_url("sandbox:///nonexistent/sandbox?store=catalog").unwrap();
    assert!(missing.unwrap_err().to_string().contains("does not exist"));
}

#[tokio::test]
async fn sqlite_sandbox_urls_reach_the_live_store_and_the_scratch_copy() {
    urls_reach_the_right_tables(false).await;
}

#[tokio::test]
async fn postgres_sandbox_urls_reach_the_live_store_and_the_scratch_copy() {
    urls_reach_the_right_tables(true).await;
}

// ---------------------------------------------------------------------------------------------
// drop-scratch

async fn drop_removes_only_scratch_copies(postgres: bool) {
    let Some(sb) = sandbox(postgres).await else { return };
    let (a, b) = (tag("a"), tag("b"));
    for store in ["flags", "media", "apps"] {
        sb.pitr(store, &a).await;
    }
    sb.pitr("flags", &b).await;
    let live_before = tree(&sb.dir.join("stores"));

    let r = drop_scratch(&sb.dir, &a, Some("flags")).await.unwrap();
    assert_eq!(r.stores, ["flags"]);
    let flags_a = sb.url(&format!("scratch={a}&store=flags"));
    let apps_a = sb.url(&format!("scratch={a}&store=apps"));
    let flags_b = sb.url(&format!("scratch={b}&store=flags"));
    assert_eq!(meta_of(&apps_a).await["store"], "apps");
    assert_eq!(meta_of(&flags_b).await["store"], "flags");
    if flags_a.starts_with("sqlite:") {
        assert!(sqlx::SqliteConnection::connect(&flags_a).await.is_err(), "gone, not re-created");
    } else {
        let mut c = sqlx::PgConnection::connect(&flags_a).await.unwrap();
        assert!(sqlx::query("SELECT 1 FROM rewind_meta").fetch_one(&mut c).await.is_err());
    }

    // Something at a scratch location that pitr did not make is never removed.
    let stranger = sb.dir.join("scratch/a/media.partial");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("precious"), "not a scratch copy").unwrap();
    let e = drop_scratch(&sb.dir, &a, None).await.unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("media.partial"), "{e}");
    assert_eq!(meta_of(&apps_a).await["store"], "apps", "nothing removed");
    assert!(sb.dir.join("scratch/a/media/rewind-meta.json").exists(), "nothing removed");
    std::fs::remove_dir_all(&stranger).unwrap();

    let r = drop_scratch(&sb.dir, &a, None).await.unwrap();
    assert_eq!(r.stores, ["media", "apps"]);
    assert!(!sb.dir.join("scratch/a").exists());
    let again = drop_scratch(&sb.dir, &a, None).await.unwrap();
    assert!(again.stores.is_empty() && again.removed.is_empty(), "{again:?}");
    assert_eq!(meta_of(&flags_b).await["store"], "flags", "another tag is untouched");
    assert_eq!(tree(&sb.dir.join("stores")), live_before);
    let e = drop_scratch(&sb.dir, &a, Some("nope")).await.unwrap_err();
    assert!(e.to_string().contains("unknown store `nope`"), "{e}");
}

#[tokio::test]
async fn sqlite_drop_scratch_removes_only_the_tags_copies() {
    drop_removes_only_scratch_copies(false).await;
}

#[tokio::test]
async fn postgres_drop_scratch_removes_only_the_tags_copies() {
    drop_removes_only_scratch_copies(true).await;
}

// ---------------------------------------------------------------------------------------------
// Media restore and check

fn objects_of(dir: &Path, site: &TargetId) -> Vec<String> {
    let d = dir.join("stores/media/objects").join(site.to_string());
    let mut names: Vec<String> = match std::fs::read_dir(&d) {
        Ok(entries) => {
            entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        }
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn media_restore_is_checked_idempotent_and_recovers_from_a_crash() {
    let sb = sandbox(false).await.unwrap();
    let t = tag("media-run");
    let deleted = sb.deleted();
    let untouched = sb.manifest().sites.iter().find(|s| !deleted.contains(&s.id)).unwrap().id;
    let unknown: TargetId = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
    let staging = sb.dir.join("stores/media/.staging");

    // Refused before anything is written: a missing scratch, an unknown site, a tag pitr did
    // not make.
    let e = restore_media(&sb.dir, &t, &deleted[0]).unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("no scratch copies"), "{e}");
    assert!(check_media(&sb.dir, &t, &deleted[0]).unwrap_err().is_refusal());
    let fake = tag("fake");
    std::fs::create_dir_all(sb.dir.join("scratch/fake/media/objects")).unwrap();
    let e = restore_media(&sb.dir, &fake, &deleted[0]).unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("not a media copy made by"), "{e}");
    sb.pitr("media", &t).await;
    let e = restore_media(&sb.dir, &t, &unknown).unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("no such site"), "{e}");
    assert!(!staging.exists(), "nothing written");

    let scratch_objects = |site: &TargetId| {
        let d = sb.dir.join(format!("scratch/{t}/media/objects/{site}"));
        std::fs::read_dir(d).map(|e| e.count()).unwrap_or(0) as u64
    };
    let site = *deleted.iter().find(|s| scratch_objects(s) > 0).expect("a deleted site with media");
    let before = check_media(&sb.dir, &t, &site).unwrap();
    assert!(!before.matching && before.differences[0].contains("missing from the live store"));
    assert_eq!(before.restore_point, sb.restore_point());

    let r = restore_media(&sb.dir, &t, &site).unwrap();
    assert_eq!((r.objects, r.restore_point), (scratch_objects(&site), sb.restore_point()));
    assert!(r.blobs_copied > 0 && r.bytes > 0, "{r:?}");
    let ok = check_media(&sb.dir, &t, &site).unwrap();
    assert!(ok.matching && ok.differences.is_empty() && ok.objects == r.objects, "{ok:?}");
    let restored = objects_of(&sb.dir, &site);

    // Again: nothing left to copy, same result.
    let again = restore_media(&sb.dir, &t, &site).unwrap();
    assert_eq!((again.objects, again.blobs_copied, again.bytes), (r.objects, 0, 0));
    assert_eq!(objects_of(&sb.dir, &site), restored);

    // An object the scratch copy does not have, or a changed one, is a difference, and a
    // restore removes or replaces it.
    let live_site = sb.dir.join("stores/media/objects").join(site.to_string());
    std::fs::write(live_site.join("stray.json"), "{}").unwrap();
    let first = live_site.join(&restored[0]);
    std::fs::write(&first, "{\"changed\":true}").unwrap();
    let bad = check_media(&sb.dir, &t, &site).unwrap();
    assert!(!bad.matching);
    let text = bad.differences.join("\n");
    assert!(text.contains("stray.json is in the live store but not in the scratch"), "{text}");
    assert!(text.contains(&format!("{} differs", restored[0])), "{text}");

    // A crash after the old folder was moved out and before the new one was moved in: the
    // site's folder is gone, half-built leftovers lie in the staging area.
    std::fs::create_dir_all(staging.join(format!("{site}.new"))).unwrap();
    std::fs::write(staging.join(format!("{site}.new/junk.json")), "{}").unwrap();
    std::fs::rename(&live_site, staging.join(format!("{site}.old"))).unwrap();
    restore_media(&sb.dir, &t, &site).unwrap();
    assert_eq!(objects_of(&sb.dir, &site), restored);
    assert!(check_media(&sb.dir, &t, &site).unwrap().matching);

    // A missing blob is a difference; a restore copies it back.
    let obj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(live_site.join(&restored[0])).unwrap())
            .unwrap();
    let sha = obj["sha256"].as_str().unwrap();
    let blob = sb.dir.join("stores/media/blobs").join(&sha[..2]).join(sha);
    std::fs::remove_file(&blob).unwrap();
    let bad = check_media(&sb.dir, &t, &site).unwrap();
    assert!(bad.differences[0].contains("is missing"), "{:?}", bad.differences);
    assert!(restore_media(&sb.dir, &t, &site).unwrap().blobs_copied >= 1);
    assert!(check_media(&sb.dir, &t, &site).unwrap().matching);

    // A site with no objects at the restore point ends with none. (An untouched site restored
    // to the scratch copy's instant also ends at the scratch's objects.)
    let r = restore_media(&sb.dir, &t, &untouched).unwrap();
    assert_eq!(r.objects as usize, objects_of(&sb.dir, &untouched).len());
    if let Some(empty) = deleted.iter().find(|s| scratch_objects(s) == 0) {
        std::fs::create_dir_all(sb.dir.join(format!("stores/media/objects/{empty}"))).unwrap();
        std::fs::write(sb.dir.join(format!("stores/media/objects/{empty}/x.json")), "{}").unwrap();
        assert_eq!(restore_media(&sb.dir, &t, empty).unwrap().objects, 0);
        assert!(!sb.dir.join(format!("stores/media/objects/{empty}")).exists());
        assert!(check_media(&sb.dir, &t, empty).unwrap().matching);
    }
}

// ---------------------------------------------------------------------------------------------
// The outbox

/// Runs a future on a runtime of its own (a plain thread's).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn request(site: TargetId, text: &str, key: Option<&str>) -> OutboxRequest {
    OutboxRequest {
        system: "customer-comms".into(),
        site: Some(site),
        request: text.into(),
        key: key.map(str::to_owned),
        at: std::time::SystemTime::now(),
    }
}

#[tokio::test]
async fn the_outbox_queues_each_key_once_even_under_concurrent_appends() {
    let sb = sandbox(false).await.unwrap();
    let site = sb.deleted()[0];
    let file = sb.dir.join("outbox/customer-comms.jsonl");
    let lines = || -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };

    // Refused, nothing written.
    let unknown: TargetId = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap();
    assert!(outbox(&sb.dir, &request(unknown, "hello", None)).await.unwrap_err().is_refusal());
    let mut bad = request(site, "hello", None);
    bad.system = "Billing".into();
    let e = outbox(&sb.dir, &bad).await.unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("`Billing`"), "{e}");
    assert!(outbox(&sb.dir, &request(site, " ", None)).await.unwrap_err().is_refusal());
    assert!(!sb.dir.join("outbox").exists());

    // One key, many attempts at once: queued exactly once.
    let dir = sb.dir.clone();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                block_on(outbox(&dir, &request(site, "your site is back", Some("run-1/notify"))))
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.queued).count(), 1);
    let l = lines();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["key"], "run-1/notify");
    assert_eq!(l[0]["site"], site.to_string());
    assert_eq!(l[0]["system"], "customer-comms");
    assert_eq!(l[0]["request"], "your site is back");
    assert!(l[0]["at"].as_str().unwrap().parse::<RestorePoint>().is_ok());

    // Many keys at once: every line whole, none lost, none twice.
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let text = format!("request {w}-{i} with \"quotes\"; and a newline\n");
                    assert!(block_on(outbox(&dir, &request(site, &text, None))).unwrap().queued);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let l = lines();
    assert_eq!(l.len(), 101);
    let keys: std::collections::BTreeSet<&str> =
        l.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 101);
    // Without an idempotency key, the same request is the same key.
    let same = request(site, "request 0-0 with \"quotes\"; and a newline\n", None);
    assert!(!outbox(&sb.dir, &same).await.unwrap().queued);

    // A line cut short by a crash is dropped, and the file stays valid JSON Lines.
    use std::io::Write as _;
    let mut f = std::fs::File::options().append(true).open(&file).unwrap();
    f.write_all(b"{\"system\":\"customer-comms\",\"si").unwrap();
    drop(f);
    assert!(outbox(&sb.dir, &request(site, "after the crash", None)).await.unwrap().queued);
    let l = lines();
    assert_eq!(l.len(), 102);
    assert_eq!(l[101]["request"], "after the crash");
}

// ---------------------------------------------------------------------------------------------
// New sites: the catalog's claim, media restored as one, the outbox, drop-tenant

/// Runs statements on a store through its URL (one string parameter, `$1` or `?`).
async fn exec(url: &str, statements: &[(&str, Option<&str>)]) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        for (sql, p) in statements {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql.replace("$1", "?")));
            let q = match p {
                Some(v) => q.bind(*v),
                None => q,
            };
            q.execute(&mut c).await.unwrap();
        }
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        for (sql, p) in statements {
            let q = sqlx::query(sqlx::AssertSqlSafe((*sql).to_owned()));
            let q = match p {
                Some(v) => q.bind(*v),
                None => q,
            };
            q.execute(&mut c).await.unwrap();
        }
    }
}

/// What `copy … as` writes on the destination when it restores a tenant as `new`: its claim.
async fn claim(url: &str, new: &str) {
    exec(
        url,
        &[
            (
                "CREATE TABLE IF NOT EXISTS rewind_key_map (new_tenant text NOT NULL, tbl text \
                 NOT NULL, old_key text NOT NULL, new_key text NOT NULL, PRIMARY KEY \
                 (new_tenant, tbl, old_key))",
                None,
            ),
            ("INSERT INTO rewind_key_map VALUES ($1, '', '', '')", Some(new)),
        ],
    )
    .await;
}

async fn new_sites_are_claimed_restored_and_dropped(postgres: bool) {
    let Some(sb) = sandbox(postgres).await else { return };
    let t = tag("as-new-1");
    sb.pitr("media", &t).await;
    let old = sb
        .deleted()
        .into_iter()
        .find(|d| sb.dir.join(format!("scratch/as-new-1/media/objects/{d}")).is_dir())
        .expect("a deleted site with media");
    let new = new_site_ids(&sb.manifest(), 3);
    assert_eq!(new.len(), 3);
    let known: Vec<TargetId> = sb.manifest().sites.iter().map(|s| s.id).collect();
    assert!(new.iter().all(|n| !known.contains(n)) && new[0] != new[1]);
    let (new, stranger) = (new[0], new[1]);
    let catalog = sb.url("store=catalog");
    let contacts = sb.url("store=contacts");

    // Not claimed yet: no media restore as it, no outbox request about it.
    assert!(!claimed(&sb.dir, &new).await.unwrap());
    let e = restore_media_as(&sb.dir, &t, &old, &new).await.unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("no restore as new claimed it"), "{e}");
    assert!(outbox(&sb.dir, &request(new, "allocate", None)).await.unwrap_err().is_refusal());
    let e = restore_media_as(&sb.dir, &t, &old, &known[0]).await.unwrap_err();
    assert!(e.to_string().contains("is a site of the sandbox"), "{e}");

    claim(&catalog, &new.to_string()).await;
    assert!(claimed(&sb.dir, &new).await.unwrap());
    assert!(outbox(&sb.dir, &request(new, "allocate", None)).await.unwrap().queued);
    let r = restore_media_as(&sb.dir, &t, &old, &new).await.unwrap();
    assert!(r.objects > 0 && r.blobs_copied > 0, "{r:?}");
    assert_eq!(r.restored_as, Some(new));
    let again = restore_media_as(&sb.dir, &t, &old, &new).await.unwrap();
    assert_eq!((again.objects, again.blobs_copied), (r.objects, 0), "blobs are there now");
    let c = check_media_as(&sb.dir, &t, &old, &new).unwrap();
    assert!(c.matching, "{c:?}");
    assert!(!check_media(&sb.dir, &t, &old).unwrap().matching, "the old site is still deleted");
    // A new object's id is copy-as's id of the old one.
    let names: Vec<String> = std::fs::read_dir(sb.dir.join(format!("stores/media/objects/{new}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let old_names: Vec<String> =
        std::fs::read_dir(sb.dir.join(format!("scratch/as-new-1/media/objects/{old}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    let derived = |n: &String| {
        let id = uuid::Uuid::parse_str(n.trim_end_matches(".json")).unwrap();
        format!("{}.json", rewind_slice::remap::new_uuid_of(&new.to_string(), "objects", id))
    };
    let mut want: Vec<String> = old_names.iter().map(derived).collect();
    let mut got = names.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // Tampering with one object is seen.
    let first = sb.dir.join(format!("stores/media/objects/{new}/{}", names[0]));
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, text.replace("\"version\":", "\"version\":1")).unwrap();
    assert!(!check_media_as(&sb.dir, &t, &old, &new).unwrap().matching);

    // A row of the new site elsewhere, and a stranger's data without a claim.
    let row = "INSERT INTO contacts VALUES ('0b7c0f55-1f0e-4c1e-9b8e-3f7d1f2a9c10', $1, 'A B', \
               'a@b.example', 'admin', '2022-04-05T07:30:00Z')";
    exec(&contacts, &[(row, Some(&new.to_string()))]).await;
    let row2 = row.replace("0b7c0f55", "0b7c0f56");
    exec(&contacts, &[(&row2, Some(&stranger.to_string()))]).await;
    let e = drop_tenant(&sb.dir, &stranger).await.unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("no claim"), "{e}");
    assert_eq!(count(&contacts, "contacts", &stranger.to_string()).await.0, 1, "not removed");
    for site in [known[0], old] {
        let e = drop_tenant(&sb.dir, &site).await.unwrap_err();
        assert!(e.is_refusal() && e.to_string().contains("is a site of the sandbox"), "{e}");
    }

    let r = drop_tenant(&sb.dir, &new).await.unwrap();
    assert_eq!(r.stores, ["catalog", "contacts", "media"]);
    assert!(r.objects > 0 && r.blobs > 0, "the contents only its objects used go too");
    let removed: Vec<(&str, &str, u64)> =
        r.removed.iter().map(|x| (x.store.as_str(), x.table.as_str(), x.rows)).collect();
    assert_eq!(removed, [("contacts", "contacts", 1), ("catalog", "rewind_key_map", 1)]);
    assert!(!sb.dir.join(format!("stores/media/objects/{new}")).exists());
    assert!(!claimed(&sb.dir, &new).await.unwrap());
    assert_eq!(count(&contacts, "contacts", &new.to_string()).await.0, 0);
    // Idempotent.
    let r = drop_tenant(&sb.dir, &new).await.unwrap();
    assert!(r.stores.is_empty() && r.removed.is_empty() && r.objects == 0);
}

#[tokio::test]
async fn sqlite_new_sites_are_claimed_restored_and_dropped() {
    new_sites_are_claimed_restored_and_dropped(false).await;
}

#[tokio::test]
async fn postgres_new_sites_are_claimed_restored_and_dropped() {
    new_sites_are_claimed_restored_and_dropped(true).await;
}

// ---------------------------------------------------------------------------------------------
// Data loss

#[tokio::test]
async fn data_loss_counts_deleted_sites_writes_between_the_restore_point_and_their_deletion() {
    let sb = sandbox(false).await.unwrap();
    let m = sb.manifest();
    let inc = m.incident.clone().unwrap();
    let deleted_at: BTreeMap<String, SimTime> =
        inc.deleted.iter().map(|d| (d.site.to_string(), d.at)).collect();
    let ledger: Vec<serde_json::Value> = std::fs::read_to_string(sb.dir.join("ledger.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A restore point a day before the incident loses the deleted sites' writes of that day.
    let rp = inc.at.minus(Duration::from_secs(86_400));
    let mut want: BTreeMap<String, (u64, SimTime, SimTime)> = BTreeMap::new();
    for l in &ledger {
        let t = SimTime::parse(l["t"].as_str().unwrap()).unwrap();
        let Some(&del) = deleted_at.get(l["site"].as_str().unwrap()) else { continue };
        if t > rp && t < del {
            let e = want.entry(l["store"].as_str().unwrap().to_owned()).or_insert((0, t, t));
            e.0 += 1;
            e.1 = e.1.min(t);
            e.2 = e.2.max(t);
        }
    }
    assert!(!want.is_empty(), "the deleted sites wrote in the day before the incident");
    let loss = data_loss(&sb.dir, rp.to_restore_point()).unwrap();
    let names: Vec<String> = m.all_stores().iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(loss.iter().map(|l| l.store.clone()).collect::<Vec<_>>(), names);
    for l in &loss {
        match want.get(&l.store) {
            Some((n, first, last)) => {
                assert_eq!(l.lost_writes, *n, "{l:?}");
                assert_eq!(l.first_lost, Some(first.to_restore_point()));
                assert_eq!(l.last_lost, Some(last.to_restore_point()));
            }
            None => assert_eq!((l.lost_writes, l.first_lost, l.last_lost), (0, None, None)),
        }
    }
    // A restore point on a lost write's instant keeps that write.
    let (store, (n, first, _)) = want.iter().next().unwrap();
    let at_first = data_loss(&sb.dir, first.to_restore_point()).unwrap();
    let l = at_first.iter().find(|l| &l.store == store).unwrap();
    assert!(l.lost_writes < *n && l.first_lost.is_none_or(|f| f > first.to_restore_point()));

    // A restore point at or after a deletion does not bring the site back: refused.
    let e = data_loss(&sb.dir, inc.last.to_restore_point()).unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("not before the deletion"), "{e}");
    let e = data_loss(&sb.dir, m.now.plus_ms(1).to_restore_point()).unwrap_err();
    assert!(e.is_refusal() && e.to_string().contains("future"), "{e}");
}
