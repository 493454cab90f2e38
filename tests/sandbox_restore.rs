//! The sandbox-side tools a restore workflow runs, through the real `rewind` binary and with the
//! exact command lines and JSON a workflow relies on: `sandbox pitr --scratch RUN` for every
//! store holding a deleted site, tenant copies between the `sandbox://` URLs of the live stores
//! and of the run's scratch copies (as a `copy` step does), `sandbox restore-media` and
//! `check-media` per site, then `sandbox verify` passes, and `sandbox drop-scratch` removes the
//! run's copies without touching anything live. On SQLite always, on PostgreSQL when
//! `REWIND_TEST_POSTGRES` is set. Then the outbox, and the input that must be refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rewind_sandbox::{ColType, Manifest, Table, resolve_url};
use serde_json::Value;
use sqlx::Connection as _;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The last stdout line, as JSON (a `command` step's output).
    fn json(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn rewind_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.args(args).env_remove("REWIND_IDEMPOTENCY_KEY").env("REWIND_NOW", "2022-04-06T07:33:00Z");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run rewind");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn rewind(args: &[&str]) -> Out {
    rewind_env(args, &[])
}

fn ok(args: &[&str]) -> Out {
    let o = rewind(args);
    assert_eq!(o.code, 0, "rewind {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o
}

/// Exit 2, with `expect` in the message.
fn refused(args: &[&str], expect: &str) {
    let o = rewind(args);
    assert_eq!(o.code, 2, "rewind {args:?}: expected a refusal:\n{}\n{}", o.stdout, o.stderr);
    assert!(o.stderr.contains(expect), "rewind {args:?}: {:?} not in:\n{}", expect, o.stderr);
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// A sandbox after its incident (24 sites, 2 shards, 6 deleted), with its own directory and, on
/// PostgreSQL, its own schemas, dropped at the end.
struct Sandbox {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    postgres: Option<(String, String)>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let Some((url, prefix)) = self.postgres.clone() else { return };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let Ok(mut c) = sqlx::PgConnection::connect(&url).await else { return };
            let names: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace")
                .fetch_all(&mut c)
                .await
                .unwrap_or_default();
            for n in names.iter().filter(|n| n.starts_with(&format!("{prefix}_"))) {
                let sql = format!("DROP SCHEMA \"{n}\" CASCADE");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
            }
        });
    }
}

impl Sandbox {
    /// `None` (with a note) when PostgreSQL is asked for and not configured.
    fn new(postgres: bool) -> Option<Self> {
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
        let d = dir.to_str().unwrap().to_owned();
        let mut args = vec!["sandbox", "init", &d, "--sites", "24", "--shards", "2", "--seed", "3"];
        if let Some(url) = &url {
            args.extend(["--postgres", url.as_str()]);
        }
        let init = rewind(&args);
        let mut sb = Self { _tmp: tmp, dir, postgres: None };
        if let (Some(url), Ok(m)) = (&url, Manifest::load(&sb.dir))
            && let rewind_sandbox::Backend::Postgres { schema_prefix, .. } = m.backend
        {
            sb.postgres = Some((url.clone(), schema_prefix));
        }
        assert_eq!(init.code, 0, "{}{}", init.stdout, init.stderr);
        ok(&["sandbox", "incident", &d, "--delete", "6"]);
        Some(sb)
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn manifest(&self) -> Manifest {
        Manifest::load(&self.dir).unwrap()
    }

    /// Five minutes before the first deletion.
    fn restore_point(&self) -> String {
        let at = self.manifest().incident.unwrap().at;
        at.minus(Duration::from_secs(300)).to_string()
    }

    fn deleted(&self) -> Vec<rewind_sandbox::Site> {
        let m = self.manifest();
        let ids: Vec<_> = m.incident.as_ref().unwrap().deleted.iter().map(|d| d.site).collect();
        ids.iter().map(|id| m.site(id).unwrap().clone()).collect()
    }

    fn url(&self, query: &str) -> String {
        resolve_url(&format!("sandbox://{}?{query}", self.d())).unwrap().unwrap()
    }

    fn verify(&self, rp: &str) -> Out {
        rewind(&["sandbox", "verify", self.d(), "--restore-point", rp])
    }
}

// ---------------------------------------------------------------- a copy step, by URL

/// One value of a row, as a copy executor moves it.
enum V {
    I(i64),
    T(String),
}

/// Copies `site`'s slice of `table` from the scratch URL into the live URL: delete the live
/// slice, insert the scratch's, in one transaction. Tables are named unqualified: the URL
/// selects the store.
async fn copy_slice(scratch: &str, live: &str, table: &Table, site: &str) -> usize {
    let cols: Vec<String> = table.columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
    let t = table.name;
    if scratch.starts_with("sqlite:") {
        let mut from = sqlx::SqliteConnection::connect(scratch).await.unwrap();
        let sql = format!("SELECT {} FROM \"{t}\" WHERE site_id = ?", cols.join(", "));
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(site).fetch_all(&mut from).await;
        let rows: Vec<Vec<V>> = rows.unwrap().iter().map(|r| decode(r, table)).collect();
        let mut to = sqlx::SqliteConnection::connect(live).await.unwrap();
        let mut tx = to.begin().await.unwrap();
        let del = format!("DELETE FROM \"{t}\" WHERE site_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(del)).bind(site).execute(&mut *tx).await.unwrap();
        let marks = vec!["?"; cols.len()].join(", ");
        for row in &rows {
            let ins = format!("INSERT INTO \"{t}\" ({}) VALUES ({marks})", cols.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(ins));
            for v in row {
                q = match v {
                    V::I(i) => q.bind(*i),
                    V::T(s) => q.bind(s.clone()),
                };
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        rows.len()
    } else {
        let mut from = sqlx::PgConnection::connect(scratch).await.unwrap();
        let sql = format!("SELECT {} FROM \"{t}\" WHERE site_id = $1", cols.join(", "));
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(site).fetch_all(&mut from).await;
        let rows: Vec<Vec<V>> = rows.unwrap().iter().map(|r| decode(r, table)).collect();
        let mut to = sqlx::PgConnection::connect(live).await.unwrap();
        let mut tx = to.begin().await.unwrap();
        let del = format!("DELETE FROM \"{t}\" WHERE site_id = $1");
        sqlx::query(sqlx::AssertSqlSafe(del)).bind(site).execute(&mut *tx).await.unwrap();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        for row in &rows {
            let ins =
                format!("INSERT INTO \"{t}\" ({}) VALUES ({})", cols.join(", "), marks.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(ins));
            for v in row {
                q = match v {
                    V::I(i) => q.bind(*i),
                    V::T(s) => q.bind(s.clone()),
                };
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        rows.len()
    }
}

fn decode<R>(r: &R, table: &Table) -> Vec<V>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    (0..table.columns.len())
        .map(|i| match table.columns[i].1 {
            ColType::Int => V::I(r.try_get(i).unwrap()),
            ColType::Text => V::T(r.try_get(i).unwrap()),
        })
        .collect()
}

/// The scratch copy's own word on its restore point.
async fn scratch_point(url: &str) -> String {
    let sql = "SELECT value FROM rewind_meta WHERE key = 'restore_point'";
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

// ---------------------------------------------------------------- the restore, end to end

fn restore_by_convention_then_verify(postgres: bool) {
    let Some(sb) = Sandbox::new(postgres) else { return };
    let rp = sb.restore_point();
    let run = uuid::Uuid::new_v4().to_string();
    let deleted = sb.deleted();
    let mut stores = BTreeSet::new();
    for site in &deleted {
        stores.extend(site.stores().iter().map(|s| s.name().to_owned()));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(sb.verify(&rp).code, 1, "the deleted sites are missing before the restore");

    // The pre-started restores: one pitr per store, into the run's scratch copies.
    for store in &stores {
        let o = ok(&["sandbox", "pitr", sb.d(), "--store", store, "--at", &rp, "--scratch", &run]);
        let r = o.json();
        assert_eq!(
            (r["store"].as_str(), r["restore_point"].as_str()),
            (Some(&**store), Some(&*rp))
        );
    }
    // Re-running one (a retried or resumed step) replaces its copy.
    ok(&["sandbox", "pitr", sb.d(), "--store", "catalog", "--at", &rp, "--scratch", &run]);

    // Per site and store, the copies and the media restore.
    for site in &deleted {
        let id = site.id.to_string();
        for store in site.stores() {
            if store.name() == "media" {
                let o = ok(&["sandbox", "restore-media", sb.d(), "--scratch", &run, "--site", &id]);
                let r = o.json();
                let want = ["store", "site", "restore_point", "objects", "blobs_copied", "bytes"];
                assert_eq!(keys(&r), set(&want), "{}", o.stdout);
                assert_eq!(
                    (r["site"].as_str(), r["restore_point"].as_str()),
                    (Some(&*id), Some(&*rp))
                );
                let c = ok(&["sandbox", "check-media", sb.d(), "--scratch", &run, "--site", &id]);
                let c = c.json();
                assert_eq!(
                    keys(&c),
                    set(&["store", "site", "objects", "matching", "restore_point"])
                );
                assert_eq!((c["matching"].as_bool(), &c["objects"]), (Some(true), &r["objects"]));
                continue;
            }
            let scratch = sb.url(&format!("scratch={run}&store={}", store.name()));
            let live = sb.url(&format!("store={}", store.name()));
            rt.block_on(async {
                assert_eq!(scratch_point(&scratch).await, rp, "{scratch}");
                for table in store.kind.tables() {
                    copy_slice(&scratch, &live, table, &id).await;
                }
            });
        }
    }
    let v = sb.verify(&rp);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);

    // Cleanup: the run's copies go, nothing live changes.
    let o = ok(&["sandbox", "drop-scratch", sb.d(), "--scratch", &run]);
    let r = o.json();
    assert_eq!(keys(&r), set(&["scratch", "stores", "removed"]));
    let dropped: BTreeSet<String> =
        r["stores"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    assert_eq!(dropped, stores);
    assert!(!sb.dir.join("scratch").join(&run).exists());
    assert_eq!(
        ok(&["sandbox", "drop-scratch", sb.d(), "--scratch", &run]).json()["stores"],
        Value::Array(vec![])
    );
    if let Some((url, prefix)) = &sb.postgres {
        // Scratch schemas by tag are `<prefix>_x<hash>_<store>`; this run made the only ones.
        let left: i64 = rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
                .bind(format!("{prefix}\\_x%"))
                .fetch_one(&mut c)
                .await
                .unwrap()
        });
        assert_eq!(left, 0, "the run's scratch schemas are dropped");
    }
    assert_eq!(sb.verify(&rp).code, 0);
    let id = deleted[0].id.to_string();
    refused(
        &["sandbox", "check-media", sb.d(), "--scratch", &run, "--site", &id],
        "no scratch copies",
    );
}

#[test]
fn sqlite_restore_by_scratch_convention_urls_and_media_commands_verifies() {
    restore_by_convention_then_verify(false);
}

#[test]
fn postgres_restore_by_scratch_convention_urls_and_media_commands_verifies() {
    restore_by_convention_then_verify(true);
}

// ---------------------------------------------------------------- check-media failing, outbox, refusals

#[test]
fn check_media_names_the_difference_and_exits_1() {
    let sb = Sandbox::new(false).unwrap();
    let rp = sb.restore_point();
    ok(&["sandbox", "pitr", sb.d(), "--store", "media", "--at", &rp, "--scratch", "r1"]);
    // A deleted site with objects at the restore point, not restored yet.
    let site = sb
        .deleted()
        .into_iter()
        .map(|s| s.id.to_string())
        .find(|id| sb.dir.join(format!("scratch/r1/media/objects/{id}")).is_dir())
        .expect("a deleted site with media");
    let o = rewind(&["sandbox", "check-media", sb.d(), "--scratch", "r1", "--site", &site]);
    assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
    let r = o.json();
    assert_eq!(r["matching"], false);
    assert!(r["differences"][0].as_str().unwrap().contains("missing from the live store"), "{r}");
    assert!(o.stderr.contains("missing from the live store"), "{}", o.stderr);
}

#[test]
fn the_outbox_queues_a_request_once_per_idempotency_key() {
    let sb = Sandbox::new(false).unwrap();
    let site = sb.deleted()[0].id.to_string();
    let args = [
        "sandbox",
        "outbox",
        sb.d(),
        "--system",
        "billing",
        "--site",
        &site,
        "--request",
        "relink; don't `rm -rf` \"anything\"",
    ];
    let key = [("REWIND_IDEMPOTENCY_KEY", "run-1/billing.relink/site")];
    let first = rewind_env(&args, &key);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.json(),
        serde_json::json!({"system": "billing", "site": site, "queued": true})
    );
    let again = rewind_env(&args, &key);
    assert_eq!(again.json()["queued"], false);
    let text = std::fs::read_to_string(sb.dir.join("outbox/billing.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(keys(&lines[0]), set(&["system", "site", "request", "key", "at"]));
    assert_eq!(lines[0]["key"], "run-1/billing.relink/site");
    assert_eq!(lines[0]["request"], "relink; don't `rm -rf` \"anything\"");
    // Without a key, the same request is queued once too.
    let plain = [
        "sandbox",
        "outbox",
        sb.d(),
        "--system",
        "search",
        "--site",
        &site,
        "--request",
        "reindex",
    ];
    assert_eq!(rewind(&plain).json()["queued"], true);
    assert_eq!(rewind(&plain).json()["queued"], false);
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_written() {
    let sb = Sandbox::new(false).unwrap();
    let d = sb.d().to_owned();
    let d = d.as_str();
    let rp = sb.restore_point();
    let site = sb.deleted()[0].id.to_string();
    let unknown = "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b";
    let pitr = |extra: &[&'static str]| -> Vec<String> {
        let mut a = vec!["sandbox", "pitr", d, "--store", "flags", "--at", &rp];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect()
    };
    let refused_pitr = |extra: &[&'static str], expect: &str| {
        let a = pitr(extra);
        refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), expect);
    };
    refused_pitr(&["--out", "x.sqlite", "--scratch", "r1"], "cannot be used with");
    refused_pitr(&[], "--out");
    refused_pitr(&["--scratch", "bad/tag"], "--scratch `bad/tag`");
    refused_pitr(&["--scratch", "x12345678901234567890123456789012345678901"], "1 to 40 letters");
    assert!(!sb.dir.join("scratch").exists(), "nothing written");

    for cmd in ["restore-media", "check-media"] {
        refused(&["sandbox", cmd, d, "--scratch", "r1", "--site", &site], "no scratch copies");
        refused(&["sandbox", cmd, d, "--scratch", "r1", "--site", "not-a-uuid"], "not-a-uuid");
        refused(&["sandbox", cmd, d, "--scratch", "r_1", "--site", &site], "--scratch `r_1`");
    }
    std::fs::create_dir_all(sb.dir.join("scratch/hand/media/objects")).unwrap();
    refused(
        &["sandbox", "restore-media", d, "--scratch", "hand", "--site", &site],
        "not a media copy",
    );
    ok(&["sandbox", "pitr", d, "--store", "media", "--at", &rp, "--scratch", "r1"]);
    refused(&["sandbox", "restore-media", d, "--scratch", "r1", "--site", unknown], unknown);
    assert!(!sb.dir.join("stores/media/.staging").exists(), "nothing written");

    for (system, site, expect) in [
        ("Billing", site.as_str(), "--system `Billing`"),
        ("bill_ing", site.as_str(), "--system `bill_ing`"),
        ("billing", unknown, unknown),
        ("billing", "nope", "nope"),
    ] {
        let args = ["sandbox", "outbox", d, "--system", system, "--site", site, "--request", "x"];
        refused(&args, expect);
    }
    assert!(!sb.dir.join("outbox").exists(), "nothing written");

    refused(
        &["sandbox", "drop-scratch", d, "--scratch", "r1", "--store", "nope"],
        "unknown store `nope`",
    );
    refused(&["sandbox", "drop-scratch", d, "--scratch", "../r1"], "--scratch `../r1`");
    assert!(sb.dir.join("scratch/r1/media/rewind-meta.json").is_file(), "nothing removed");
}
