//! End to end through the real `rewind` binary: `sandbox init` → `sandbox incident` → a restore
//! done by this test code (the `sandbox pitr` command, then plain copies of each deleted site's
//! rows into the live stores, as a `copy` step would do) → `sandbox verify`. On SQLite always,
//! and on PostgreSQL when `REWIND_TEST_POSTGRES` is set. Then the ways verify must fail, and the
//! input that must be refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection as _;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn rewind(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_rewind")).args(args).output().expect("run rewind");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> Out {
    let o = rewind(args);
    assert_eq!(o.code, 0, "rewind {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Which backing a test runs on; `None` when PostgreSQL is asked for but not configured.
fn backing(postgres: bool) -> Option<Option<String>> {
    if !postgres {
        return Some(None);
    }
    match std::env::var("REWIND_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(Some(url)),
        _ => {
            eprintln!("note: REWIND_TEST_POSTGRES is not set; skipping the PostgreSQL variant");
            None
        }
    }
}

struct Deleted {
    id: String,
    region: String,
    shard: String,
    products: Vec<String>,
}

/// A sandbox after its incident, in its own temporary directory (and, on PostgreSQL, its own
/// schemas, dropped when the test ends).
struct Sandbox {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    work: PathBuf,
    postgres: Option<(String, String)>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let Some((url, prefix)) = self.postgres.clone() else { return };
        rt().block_on(rewind_testkit::drop_schemas_with_prefix(&url, &prefix));
    }
}

impl Sandbox {
    fn new(postgres: Option<String>, sites: u32, delete: u32) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let d = dir.to_str().unwrap().to_owned();
        let d = d.as_str();
        let sites = sites.to_string();
        let mut args =
            vec!["sandbox", "init", d, "--sites", &sites, "--shards", "2", "--seed", "7"];
        if let Some(url) = &postgres {
            args.extend(["--postgres", url.as_str()]);
        }
        let mut sb = Self { _tmp: tmp, dir, work, postgres: None };
        let init = rewind(&args);
        if let Some(url) = &postgres {
            let prefix = sb.manifest()["backend"]["schema_prefix"].as_str().map(str::to_owned);
            sb.postgres = prefix.map(|p| (url.clone(), p));
        }
        assert_eq!(init.code, 0, "init: {}{}", init.stdout, init.stderr);
        assert!(init.stdout.contains("restorable"), "{}", init.stdout);
        let o = ok(&["sandbox", "incident", d, "--delete", &delete.to_string()]);
        assert!(o.stdout.contains(&format!("deleted {delete} sites")), "{}", o.stdout);
        sb
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn manifest(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("sandbox.json")).unwrap())
            .unwrap()
    }

    /// Five minutes before the first deletion.
    fn restore_point(&self) -> String {
        let at = self.manifest()["incident"]["at"].as_str().unwrap().to_owned();
        let t = humantime::parse_rfc3339(&at).unwrap() - Duration::from_secs(300);
        humantime::format_rfc3339_seconds(t).to_string()
    }

    fn deleted(&self) -> Vec<Deleted> {
        let file = self.work.join("deleted.csv");
        ok(&["sandbox", "sites", self.d(), "--deleted", "--out", file.to_str().unwrap()]);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,kind,region,shard,products"));
        lines
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                assert_eq!(c[1], "site");
                Deleted {
                    id: c[0].into(),
                    region: c[2].into(),
                    shard: c[3].into(),
                    products: c[4].split(';').map(str::to_owned).collect(),
                }
            })
            .collect()
    }

    /// Which deleted sites each store holds.
    fn stores_of(&self, sites: &[Deleted]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in sites {
            let mut stores: Vec<String> = ["catalog", "contacts", "media", "flags", "apps"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            stores.push(format!("identity-{}", s.region));
            for p in &s.products {
                stores.push(format!("{p}-{}", s.shard));
            }
            for st in stores {
                out.entry(st).or_default().push(s.id.clone());
            }
        }
        out
    }

    /// The restore: for every store holding a deleted site, `sandbox pitr` to the restore point
    /// (or the instant in `other_point` for that store), then copy each deleted site's rows from
    /// the scratch copy into the live store.
    fn restore(&self, rp: &str, other_point: Option<(&str, &str)>) {
        self.restore_batch(rp, other_point, usize::MAX);
    }

    /// [`Sandbox::restore`] of the first `batch` deleted sites only.
    fn restore_batch(&self, rp: &str, other_point: Option<(&str, &str)>, batch: usize) {
        let mut deleted = self.deleted();
        deleted.truncate(batch);
        assert!(!deleted.is_empty());
        let manifest = self.manifest();
        for (store, sites) in self.stores_of(&deleted) {
            let at = match other_point {
                Some((s, t)) if s == store => t,
                _ => rp,
            };
            let out = match (&self.postgres, store.as_str()) {
                (Some((_, prefix)), s) if s != "media" => {
                    format!("{prefix}_scratch_{}", store.replace('-', "_"))
                }
                (_, "media") => self.work.join("media-scratch").display().to_string(),
                _ => self.work.join(format!("{store}.sqlite")).display().to_string(),
            };
            let o =
                ok(&["sandbox", "pitr", self.d(), "--store", &store, "--at", at, "--out", &out]);
            let report: Value = serde_json::from_str(o.stdout.lines().last().unwrap()).unwrap();
            assert_eq!(report["restore_point"], at, "{}", o.stdout);
            assert_eq!(report["store"], store.as_str());
            let location = manifest["stores"][&store]["location"].as_str().unwrap().to_owned();
            match (&self.postgres, store.as_str()) {
                (_, "media") => copy_media(Path::new(&out), &self.dir.join(&location), &sites),
                (Some((url, _)), _) => rt().block_on(copy_pg(url, &location, &out, &sites)),
                (None, _) => {
                    let live = self.dir.join(&location);
                    rt().block_on(copy_sqlite(&live, Path::new(&out), &sites, &report));
                }
            }
        }
    }

    fn verify(&self, rp: &str) -> Out {
        rewind(&["sandbox", "verify", self.d(), "--restore-point", rp])
    }

    /// Runs one SQL statement against a live store.
    fn exec(&self, store: &str, sql_sqlite: &str, sql_pg_table: &str) {
        let location = self.manifest()["stores"][store]["location"].as_str().unwrap().to_owned();
        rt().block_on(async {
            match &self.postgres {
                None => {
                    let opts = sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(self.dir.join(&location));
                    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                    let n = sqlx::query(sqlx::AssertSqlSafe(sql_sqlite.to_owned()))
                        .execute(&mut c)
                        .await
                        .unwrap();
                    assert_eq!(n.rows_affected(), 1, "{sql_sqlite}");
                }
                Some((url, _)) => {
                    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                    let sql = sql_pg_table.replace("{schema}", &location);
                    let n = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .execute(&mut c)
                        .await
                        .unwrap();
                    assert_eq!(n.rows_affected(), 1, "{sql}");
                }
            }
        });
    }

    /// An id of a row of `site` in `table` of a live store.
    fn some_row(&self, store: &str, table: &str, site: &str) -> String {
        let location = self.manifest()["stores"][store]["location"].as_str().unwrap().to_owned();
        rt().block_on(async {
            match &self.postgres {
                None => {
                    let opts = sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(self.dir.join(&location));
                    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                    let sql = format!("SELECT id FROM \"{table}\" WHERE site_id = ? ORDER BY id LIMIT 1");
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(site).fetch_one(&mut c).await.unwrap()
                }
                Some((url, _)) => {
                    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                    let sql = format!(
                        "SELECT id FROM \"{location}\".\"{table}\" WHERE site_id = $1 ORDER BY id LIMIT 1"
                    );
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(site).fetch_one(&mut c).await.unwrap()
                }
            }
        })
    }
}

async fn copy_sqlite(live: &Path, scratch: &Path, sites: &[String], report: &Value) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(live);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("ATTACH DATABASE ? AS scratch")
        .bind(scratch.to_str().unwrap())
        .execute(&mut c)
        .await
        .unwrap();
    // Every table but `rewind_meta`, which describes the copy and is no store table.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM scratch.sqlite_master WHERE type = 'table' AND name <> 'rewind_meta'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(!tables.is_empty());
    let pinned: String =
        sqlx::query_scalar("SELECT value FROM scratch.rewind_meta WHERE key = 'restore_point'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(report["restore_point"], pinned.as_str());
    let marks = vec!["?"; sites.len()].join(", ");
    for t in tables {
        // The scratch copy holds what pitr said it holds.
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM scratch.\"{t}\""
        )))
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(report["rows"][&t], n, "{t}");
        for sql in [
            format!("DELETE FROM main.\"{t}\" WHERE site_id IN ({marks})"),
            format!(
                "INSERT INTO main.\"{t}\" SELECT * FROM scratch.\"{t}\" WHERE site_id IN ({marks})"
            ),
        ] {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in sites {
                q = q.bind(s);
            }
            q.execute(&mut c).await.unwrap();
        }
    }
    sqlx::query("DETACH DATABASE scratch").execute(&mut c).await.unwrap();
}

async fn copy_pg(url: &str, live: &str, scratch: &str, sites: &[String]) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name <> 'rewind_meta'",
    )
    .bind(scratch)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(!tables.is_empty(), "scratch schema {scratch} has no tables");
    for t in tables {
        for sql in [
            format!("DELETE FROM \"{live}\".\"{t}\" WHERE site_id = ANY($1)"),
            format!(
                "INSERT INTO \"{live}\".\"{t}\" SELECT * FROM \"{scratch}\".\"{t}\" WHERE site_id = ANY($1)"
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sites).execute(&mut c).await.unwrap();
        }
    }
}

fn copy_media(scratch: &Path, live: &Path, sites: &[String]) {
    for site in sites {
        let src = scratch.join("objects").join(site);
        if !src.is_dir() {
            continue;
        }
        let dst = live.join("objects").join(site);
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            let obj: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            let sha = obj["sha256"].as_str().unwrap();
            let rel = Path::new("blobs").join(&sha[..2]).join(sha);
            std::fs::create_dir_all(live.join(&rel).parent().unwrap()).unwrap();
            std::fs::copy(scratch.join(&rel), live.join(&rel)).unwrap();
            std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
        }
    }
}

// ---------------------------------------------------------------- the behaviours

fn restore_then_verify_passes(postgres: bool) {
    let Some(pg) = backing(postgres) else { return };
    let sb = Sandbox::new(pg, 12, 4);
    let rp = sb.restore_point();
    // Before the restore the deleted sites are missing everywhere.
    let before = sb.verify(&rp);
    assert_eq!(before.code, 1, "{}", before.stdout);
    assert!(before.stdout.contains("FAILED") && before.stdout.contains("(restored)"));
    sb.restore(&rp, None);
    let after = sb.verify(&rp);
    assert_eq!(after.code, 0, "{}\n{}", after.stdout, after.stderr);
    assert!(after.stdout.contains("verify: ok"), "{}", after.stdout);
    // Restoring again is idempotent.
    sb.restore(&rp, None);
    assert_eq!(sb.verify(&rp).code, 0);
}

fn missing_row_of_a_restored_site_fails(postgres: bool) {
    let Some(pg) = backing(postgres) else { return };
    let sb = Sandbox::new(pg, 12, 4);
    let rp = sb.restore_point();
    sb.restore(&rp, None);
    let site = sb.deleted().remove(0).id;
    let id = sb.some_row("contacts", "contacts", &site);
    sb.exec(
        "contacts",
        &format!("DELETE FROM contacts WHERE id = '{id}'"),
        &format!("DELETE FROM \"{{schema}}\".contacts WHERE id = '{id}'"),
    );
    let v = sb.verify(&rp);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let line = v.stdout.lines().find(|l| l.contains(&site)).expect("a problem line names the site");
    assert!(line.contains("contacts") && line.contains("(restored)"), "{line}");
    assert!(line.contains("rows, expected"), "{line}");
    assert_eq!(
        v.stdout.lines().filter(|l| l.contains("(restored)") || l.contains("(untouched)")).count(),
        1
    );
}

fn changed_row_of_an_untouched_site_fails(postgres: bool) {
    let Some(pg) = backing(postgres) else { return };
    let sb = Sandbox::new(pg, 12, 4);
    let rp = sb.restore_point();
    sb.restore(&rp, None);
    let deleted: Vec<String> = sb.deleted().into_iter().map(|d| d.id).collect();
    let m = sb.manifest();
    let other = m["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .find(|id| !deleted.contains(id))
        .unwrap();
    let id = sb.some_row("flags", "flags", &other);
    sb.exec(
        "flags",
        &format!("UPDATE flags SET enabled = 1 - enabled WHERE id = '{id}'"),
        &format!("UPDATE \"{{schema}}\".flags SET enabled = 1 - enabled WHERE id = '{id}'"),
    );
    let v = sb.verify(&rp);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let line =
        v.stdout.lines().find(|l| l.contains(&other)).expect("a problem line names the site");
    assert!(line.contains("flags") && line.contains("(untouched)"), "{line}");
    assert!(line.contains("content differs"), "{line}");
    assert!(line.contains("matches no state"), "{line}");
}

fn store_restored_to_another_point_fails(postgres: bool) {
    let Some(pg) = backing(postgres) else { return };
    let sb = Sandbox::new(pg, 12, 4);
    let rp = sb.restore_point();
    let deleted = sb.deleted();
    let victim = deleted.iter().find(|d| d.products.contains(&"tracker".to_owned())).unwrap();
    let store = format!("tracker-{}", victim.shard);
    // The oldest restorable instant (plus a day): weeks of this site's writes away.
    let window = sb.manifest()["now"].as_str().map(|n| {
        let t = humantime::parse_rfc3339(n).unwrap() - Duration::from_secs(29 * 86_400);
        humantime::format_rfc3339_seconds(t).to_string()
    });
    let other = window.unwrap();
    sb.restore(&rp, Some((&store, &other)));
    let v = sb.verify(&rp);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let problems: Vec<&str> = v.stdout.lines().filter(|l| l.contains("(restored)")).collect();
    assert!(!problems.is_empty(), "{}", v.stdout);
    for p in &problems {
        assert!(p.trim_start().starts_with(&format!("{store} ")), "only {store} is wrong: {p}");
        assert!(p.contains("the live data is the site's state from"), "{p}");
    }
    let table_line = v.stdout.lines().find(|l| l.trim_start().starts_with(&store)).unwrap();
    assert!(table_line.contains("FAILED"), "{table_line}");
    assert!(v.stdout.contains(&format!("expected the state at the restore point {rp}")));
}

#[test]
fn sqlite_a_restore_point_on_a_write_instant_includes_that_write() {
    let sb = Sandbox::new(None, 10, 4);
    let first = sb.manifest()["incident"]["at"].as_str().unwrap().to_owned();
    let first = humantime::parse_rfc3339(&first).unwrap();
    // The restore point is exactly the instant of a deleted site's last write before the
    // incident: pitr must hold that write, and verify must expect it.
    let deleted: Vec<String> = sb.deleted().into_iter().map(|d| d.id).collect();
    let ledger = std::fs::read_to_string(sb.dir.join("ledger.jsonl")).unwrap();
    let (t, store, site) = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| deleted.iter().any(|d| l["site"] == d.as_str()))
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_owned();
            (s("t"), s("store"), s("site"))
        })
        .rfind(|(t, _, _)| humantime::parse_rfc3339(t).unwrap() < first)
        .unwrap();
    sb.restore(&t, None);
    let v = sb.verify(&t);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // A millisecond earlier, that write is one the restore should not have brought back.
    let t = humantime::parse_rfc3339(&t).unwrap();
    let earlier = humantime::format_rfc3339_millis(t - Duration::from_millis(1)).to_string();
    let v = sb.verify(&earlier);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let line = v.stdout.lines().find(|l| l.contains(&site)).expect("a problem names the site");
    assert!(line.trim_start().starts_with(&format!("{store} ")), "{line}");
    assert!(line.contains("(restored)"), "{line}");
}

#[test]
fn sqlite_a_partial_batch_verifies_against_its_targets_file() {
    let sb = Sandbox::new(None, 10, 4);
    let rp = sb.restore_point();
    sb.restore_batch(&rp, None, 2);
    let all = sb.deleted();
    let file = sb.work.join("batch.csv");
    let mut text = String::from("id,kind,region,shard,products\n");
    for d in &all[..2] {
        text.push_str(&format!(
            "{},site,{},{},{}\n",
            d.id,
            d.region,
            d.shard,
            d.products.join(";")
        ));
    }
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();
    let v = rewind(&["sandbox", "verify", sb.d(), "--restore-point", &rp, "--sites", f]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert!(v.stdout.contains("2 restored sites, 8 other sites"), "{}", v.stdout);
    // Against every deleted site, the two not yet restored are missing.
    let v = sb.verify(&rp);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains(&all[3].id) && !v.stdout.contains(&all[0].id), "{}", v.stdout);
}

#[test]
fn sqlite_restore_through_pitr_and_copies_verifies() {
    restore_then_verify_passes(false);
}

#[test]
fn postgres_restore_through_pitr_and_copies_verifies() {
    restore_then_verify_passes(true);
}

#[test]
fn sqlite_verify_fails_when_a_restored_site_misses_a_row() {
    missing_row_of_a_restored_site_fails(false);
}

#[test]
fn postgres_verify_fails_when_a_restored_site_misses_a_row() {
    missing_row_of_a_restored_site_fails(true);
}

#[test]
fn sqlite_verify_fails_when_an_untouched_site_changed() {
    changed_row_of_an_untouched_site_fails(false);
}

#[test]
fn postgres_verify_fails_when_an_untouched_site_changed() {
    changed_row_of_an_untouched_site_fails(true);
}

#[test]
fn sqlite_verify_fails_when_one_store_is_at_another_point_in_time() {
    store_restored_to_another_point_fails(false);
}

#[test]
fn postgres_verify_fails_when_one_store_is_at_another_point_in_time() {
    store_restored_to_another_point_fails(true);
}

// ---------------------------------------------------------------- refused input: exit 2

fn refused(args: &[&str], expect: &str) -> Out {
    let o = rewind(args);
    assert_eq!(o.code, 2, "rewind {args:?}: expected exit 2\n{}\n{}", o.stdout, o.stderr);
    assert!(o.stderr.contains(expect), "rewind {args:?}: stderr lacks {expect:?}:\n{}", o.stderr);
    o
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_written() {
    let sb = Sandbox::new(None, 6, 2);
    let d = sb.d();
    let out = sb.work.join("x.sqlite");
    let o = out.to_str().unwrap();
    let rp = sb.restore_point();

    refused(
        &["sandbox", "pitr", d, "--store", "tracker-s99", "--at", &rp, "--out", o],
        "unknown store `tracker-s99`",
    );
    refused(
        &[
            "sandbox",
            "pitr",
            d,
            "--store",
            "tracker-s01",
            "--at",
            "2022-02-01T00:00:00Z",
            "--out",
            o,
        ],
        "outside the retention window",
    );
    refused(
        &[
            "sandbox",
            "pitr",
            d,
            "--store",
            "tracker-s01",
            "--at",
            "2022-05-01T00:00:00Z",
            "--out",
            o,
        ],
        "in the sandbox's future",
    );
    refused(
        &["sandbox", "pitr", d, "--store", "tracker-s01", "--at", "yesterday", "--out", o],
        "RFC 3339",
    );
    let live = sb.dir.join("stores").join("tracker-s01.sqlite");
    refused(
        &[
            "sandbox",
            "pitr",
            d,
            "--store",
            "tracker-s01",
            "--at",
            &rp,
            "--out",
            live.to_str().unwrap(),
        ],
        "must never overwrite",
    );
    // However it is spelled.
    let sneaky = sb.work.join("..").join("sb").join("backup").join("flags").join("journal");
    let sneaky = sneaky.join("x.sqlite");
    refused(
        &["sandbox", "pitr", d, "--store", "flags", "--at", &rp, "--out", sneaky.to_str().unwrap()],
        "must never overwrite",
    );
    assert!(!sneaky.exists(), "nothing written");
    let ledger = sb.dir.join("ledger.jsonl");
    let before = std::fs::read(&ledger).unwrap();
    refused(
        &["sandbox", "sites", d, "--deleted", "--out", ledger.to_str().unwrap()],
        "must never overwrite",
    );
    assert_eq!(std::fs::read(&ledger).unwrap(), before);
    assert!(!out.exists(), "nothing written");
    let precious = sb.work.join("precious.db");
    std::fs::write(&precious, "not a scratch copy").unwrap();
    let p = precious.to_str().unwrap();
    refused(
        &["sandbox", "pitr", d, "--store", "tracker-s01", "--at", &rp, "--out", p],
        "is not a scratch copy made by `rewind sandbox pitr`",
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "not a scratch copy");
    // Nor does it replace what sits where it would build its copy before renaming it.
    let partial = sb.work.join("y.sqlite.partial");
    std::fs::write(&partial, "not a scratch copy either").unwrap();
    let y = sb.work.join("y.sqlite");
    refused(
        &[
            "sandbox",
            "pitr",
            d,
            "--store",
            "tracker-s01",
            "--at",
            &rp,
            "--out",
            y.to_str().unwrap(),
        ],
        "y.sqlite.partial` (where pitr builds its copy before renaming it) exists and is not a \
         scratch copy",
    );
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), "not a scratch copy either");
    assert!(!y.exists(), "nothing written");
    let media_partial = sb.work.join("m.partial");
    std::fs::create_dir(&media_partial).unwrap();
    std::fs::write(media_partial.join("keep.txt"), "keep").unwrap();
    let m_out = sb.work.join("m");
    refused(
        &["sandbox", "pitr", d, "--store", "media", "--at", &rp, "--out", m_out.to_str().unwrap()],
        "m.partial` (where pitr builds its copy before renaming it) exists",
    );
    assert_eq!(std::fs::read_to_string(media_partial.join("keep.txt")).unwrap(), "keep");
    assert!(!m_out.exists(), "nothing written");
    refused(
        &[
            "sandbox",
            "pitr",
            d,
            "--store",
            "media",
            "--at",
            &rp,
            "--out",
            sb.work.to_str().unwrap(),
        ],
        "is not a scratch copy",
    );

    let missing = sb.work.join("no-such-sandbox");
    let m = missing.to_str().unwrap();
    refused(
        &["sandbox", "pitr", m, "--store", "catalog", "--at", &rp, "--out", o],
        "does not exist",
    );
    refused(&["sandbox", "verify", m, "--restore-point", &rp], "does not exist");
    refused(&["sandbox", "incident", m, "--delete", "1"], "does not exist");
    refused(&["sandbox", "sites", m, "--deleted"], "does not exist");
    refused(&["sandbox", "init", d, "--sites", "3"], "already exists");
    refused(&["sandbox", "init", m, "--sites", "3", "--retention", "soon"], "--retention `soon`");
    assert!(!missing.exists(), "nothing written");
    refused(&["sandbox", "incident", d, "--delete", "1"], "already had its incident");

    // verify: the restore point must precede the deletions; only deleted sites can be restored.
    let after = sb.manifest()["incident"]["last"].as_str().unwrap().to_owned();
    refused(
        &["sandbox", "verify", d, "--restore-point", &after],
        "is not before the deletion of site",
    );
    let m = sb.manifest();
    let untouched = m["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .find(|id| !sb.deleted().iter().any(|d| &d.id == id))
        .unwrap();
    let file = sb.work.join("wrong.csv");
    std::fs::write(
        &file,
        format!("id,kind,region,shard,products\n{untouched},site,us-east,s01,tracker\n"),
    )
    .unwrap();
    refused(
        &["sandbox", "verify", d, "--restore-point", &rp, "--sites", file.to_str().unwrap()],
        "was not deleted by the incident",
    );
}

#[test]
fn postgres_pitr_never_replaces_a_schema_it_did_not_make() {
    let Some(Some(url)) = backing(true) else { return };
    let sb = Sandbox::new(Some(url.clone()), 6, 2);
    let prefix = sb.postgres.clone().unwrap().1;
    let rp = sb.restore_point();
    let live = format!("{prefix}_flags");
    refused(
        &["sandbox", "pitr", sb.d(), "--store", "flags", "--at", &rp, "--out", &live],
        "is a live store's schema",
    );
    // Someone else's schema where pitr would build its copy (`<out>_partial`).
    let keep = format!("{prefix}_keep_partial");
    let sql = |c: String, sql: String| {
        rt().block_on(async {
            let mut conn = sqlx::PgConnection::connect(&c).await.unwrap();
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_optional(&mut conn)
                .await
                .unwrap()
        })
    };
    for s in [
        format!("CREATE SCHEMA \"{keep}\""),
        format!("CREATE TABLE \"{keep}\".t (x BIGINT)"),
        format!("INSERT INTO \"{keep}\".t VALUES (1)"),
    ] {
        sql(url.clone(), s);
    }
    let out = format!("{prefix}_keep");
    refused(
        &["sandbox", "pitr", sb.d(), "--store", "flags", "--at", &rp, "--out", &out],
        &format!("`{keep}` (where pitr builds its copy before renaming it) exists"),
    );
    assert_eq!(sql(url.clone(), format!("SELECT count(*) FROM \"{keep}\".t")), Some(1));
    let made = format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{out}'");
    assert_eq!(sql(url.clone(), made), Some(0), "nothing written");
}

#[test]
fn corrupted_backups_are_refused_naming_the_file_and_line() {
    let sb = Sandbox::new(None, 6, 2);
    let rp = sb.restore_point();
    let journal = sb.dir.join("backup").join("flags").join("journal");
    let mut segments: Vec<PathBuf> =
        std::fs::read_dir(&journal).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let last = segments.last().unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines.len() > 1, "the last flags segment has entries before the restore point");
    lines[0] = lines[0].replacen("\"row\":[\"", "\"row\":[\"x", 1).replacen(
        "\"op\":\"del\"",
        "\"op\":\"put\"",
        1,
    );
    assert_ne!(lines[0], text.lines().next().unwrap());
    std::fs::write(last, lines.join("\n") + "\n").unwrap();
    let out = sb.work.join("flags.sqlite");
    let o = out.to_str().unwrap();
    let pitr = ["sandbox", "pitr", sb.d(), "--store", "flags", "--at", &rp, "--out", o];
    let e = refused(&pitr, "fails its chain hash");
    let name = last.file_name().unwrap().to_str().unwrap();
    assert!(e.stderr.contains(&format!("{name}:1:")), "{}", e.stderr);
    assert!(!out.exists());

    // Bytes that are not text are the file's corruption too, not a system failure.
    let mut garbage = b"\xff\xfe not a journal line\n".to_vec();
    garbage.extend_from_slice(text.as_bytes());
    std::fs::write(last, garbage).unwrap();
    let e = refused(&pitr, "unreadable line");
    assert!(e.stderr.contains(&format!("{name}:1:")), "{}", e.stderr);

    // A truncated journal is caught too.
    std::fs::write(last, "").unwrap();
    refused(&pitr, "truncated");

    // So is a snapshot the manifest lists but the backups lost.
    std::fs::write(last, &text).unwrap();
    let snapshots = sb.dir.join("backup").join("flags").join("snapshots");
    std::fs::remove_dir_all(&snapshots).unwrap();
    refused(&pitr, "the snapshot listed in sandbox.json is missing");
    assert!(!out.exists());

    // And verify's ledger: damaged bytes name the line; a lost ledger is a damaged sandbox.
    let ledger = sb.dir.join("ledger.jsonl");
    let mut bytes = b"\xff\n".to_vec();
    bytes.extend_from_slice(&std::fs::read(&ledger).unwrap());
    std::fs::write(&ledger, bytes).unwrap();
    let verify = ["sandbox", "verify", sb.d(), "--restore-point", &rp];
    let e = refused(&verify, "unreadable line");
    assert!(e.stderr.contains("ledger.jsonl:1:"), "{}", e.stderr);
    std::fs::remove_file(&ledger).unwrap();
    refused(&verify, "the ledger (verify's record of every write) is missing");
}

#[test]
fn deleted_sites_targets_file_is_what_plan_reads() {
    let sb = Sandbox::new(None, 8, 3);
    let file = sb.work.join("deleted.csv");
    ok(&["sandbox", "sites", sb.d(), "--deleted", "--out", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        assert!(["us-east", "eu-west", "ap-southeast"].contains(&c[2]), "{line}");
        assert!(c[3] == "s01" || c[3] == "s02", "{line}");
        assert!(["tracker", "wiki", "tracker;wiki"].contains(&c[4]), "{line}");
    }
    let workflow = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/restore-2.toml");
    let rp = sb.restore_point();
    let o = ok(&[
        "plan",
        "--workflow",
        workflow,
        "--targets",
        file.to_str().unwrap(),
        "--restore-point",
        &rp,
    ]);
    assert!(o.stdout.contains("over 3 `site` targets"), "{}", o.stdout);
}
