//! One conformance suite, run against every backend: SQLite always, PostgreSQL when
//! `REWIND_TEST_POSTGRES` is set (CI sets it).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use rewind_model::RunId;
use rewind_store::{
    AttemptRecord, Batch, Holder, InstanceUpdate, NewEvent, NewInstance, NewRun, RunEnd, SqlStore,
    Store, StoreError,
};
use rewind_testkit::{PgSchema, SqliteDb, postgres_url};

fn run_id() -> RunId {
    RunId::from_uuid(uuid::Uuid::new_v4())
}

fn new_run(id: RunId) -> NewRun {
    NewRun {
        id,
        workflow: "w".into(),
        workflow_file: "w.toml".into(),
        workflow_text: "name = \"w\"".into(),
        targets_file: "t.csv".into(),
        targets_text: "id,kind\n".into(),
        workdir: "/tmp".into(),
        cwd: "/tmp".into(),
        restore_point: "2022-04-05T07:33:00Z".into(),
        fingerprint: "sha256:00".into(),
        simulated: true,
        seed: u64::MAX - 5,
        fail_rate: 0.25,
        max_running: Some(7),
        priority: "critical-path".into(),
        instances: 3,
        targets: 2,
        lower_bound_s: 120.5,
        created_at: "2026-11-24T10:00:00Z".into(),
        started_unix_ms: 1_700_000_000_000,
        waves: vec![1, 2],
        halt_rate: 0.25,
    }
}

fn instances(n: u32) -> Vec<NewInstance> {
    (0..n)
        .map(|i| NewInstance {
            idx: i,
            key: format!("s/{i}"),
            step: "s".into(),
            target: Some(format!("t{i}")),
            group: None,
            state: if i == 2 { "skipped" } else { "pending" },
        })
        .collect()
}

fn event(kind: &str, at_s: f64) -> NewEvent {
    NewEvent {
        at_s,
        wall: "2026-11-24T10:00:00Z".into(),
        kind: kind.into(),
        key: None,
        detail: Some("{\"by\":\"test\"}".into()),
    }
}

fn update(idx: u32, state: &'static str, attempts: u32) -> InstanceUpdate {
    InstanceUpdate {
        idx,
        state,
        attempts,
        failures: 0,
        retry_at_s: None,
        finished_s: None,
        output: None,
        error: None,
    }
}

async fn suite(store: &SqlStore) {
    creates_and_reads_back(store).await;
    commits_batches_in_one_transaction(store).await;
    lease_is_compare_and_set(store).await;
    cancel_and_retry_are_logged(store).await;
    large_runs_are_chunked(store).await;
    live_real_runs_hold_their_targets(store).await;
}

async fn live_real_runs_hold_their_targets(store: &SqlStore) {
    let real = |id| NewRun { simulated: false, ..new_run(id) };
    let targets = |from: u32, n: u32| {
        (0..n).map(move |i| NewInstance {
            idx: i,
            key: format!("s/{i}"),
            step: "s".into(),
            target: Some(format!("lock-{}", from + i)),
            group: None,
            state: "pending",
        })
    };
    let (a, b, c) = (run_id(), run_id(), run_id());
    store.create_run(&real(a), &mut targets(0, 3), &[]).await.unwrap();
    // Overlapping targets: refused, nothing written, the holder named.
    let e = store.create_run(&real(b), &mut targets(2, 3), &[event("run.created", 0.0)]).await;
    let Err(StoreError::Held(held)) = e else { panic!("expected Held, got {e:?}") };
    assert_eq!(held, vec![Holder { target: "lock-2".into(), run: a.to_string() }]);
    assert!(held_message_names(&StoreError::Held(held), a));
    assert_eq!(store.run(b).await.unwrap(), None, "nothing of the refused run is written");
    // A simulated run touches nothing and holds nothing.
    store.create_run(&new_run(c), &mut targets(0, 3), &[]).await.unwrap();
    // A halted run keeps its targets; a failed one releases them.
    assert!(store.claim(a, "me", None, 1).await.unwrap());
    let end = |state| Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 1,
        end: Some(RunEnd { state, finished_s: 1.0, reason: None }),
        ..Batch::default()
    };
    store.commit(a, "me", &end("halted")).await.unwrap();
    assert_eq!(store.holders(&["lock-0".into(), "lock-9".into()]).await.unwrap().len(), 1);
    store.commit(a, "me", &end("failed")).await.unwrap();
    assert!(store.holders(&["lock-0".into()]).await.unwrap().is_empty());
    store.create_run(&real(b), &mut targets(2, 3), &[]).await.unwrap();
    // Retrying the failed run needs its targets back: refused while b holds lock-2.
    let e = store.reset_failed(a, &event("operator.retry", 2.0)).await;
    assert!(
        matches!(e, Err(StoreError::Held(ref h)) if h.len() == 1 && h[0].run == b.to_string()),
        "{e:?}"
    );
    assert_eq!(
        store.run(a).await.unwrap().unwrap().state,
        "failed",
        "the refused retry wrote nothing"
    );
    assert!(store.claim(b, "me", None, 1).await.unwrap());
    store.commit(b, "me", &end("cancelled")).await.unwrap();
    store.reset_failed(a, &event("operator.retry", 2.0)).await.unwrap();
    assert_eq!(store.holders(&["lock-1".into()]).await.unwrap()[0].run, a.to_string());
    // A halted run accepted past its failures opens the next wave.
    store.commit(a, "me", &end("halted")).await.unwrap();
    store.accept_wave(a, 2, &event("operator.resume", 3.0)).await.unwrap();
    let run = store.run(a).await.unwrap().unwrap();
    assert_eq!((run.state.as_str(), run.wave, run.finished_s), ("running", 2, None));
    store.commit(a, "me", &end("succeeded")).await.unwrap();
    assert!(
        store
            .holders(&["lock-0".into(), "lock-1".into(), "lock-2".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

fn held_message_names(e: &StoreError, run: RunId) -> bool {
    let text = e.to_string();
    text.contains("1 target is already held by a live run")
        && text.contains(&format!("run {run} holds lock-2"))
}

/// The database itself refuses to change a run's restore point, whatever writes to it.
async fn restore_points_never_change(store: &SqlStore, url: &str) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(1).into_iter(), &[]).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let e = sqlx::query("UPDATE runs SET restore_point = '2022-04-05T08:00:00Z' WHERE id = $1")
        .bind(id.to_string())
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("restore point never changes"), "{e}");
    pool.close().await;
    assert_eq!(store.run(id).await.unwrap().unwrap().spec.restore_point, "2022-04-05T07:33:00Z");
}

async fn creates_and_reads_back(store: &SqlStore) {
    let id = run_id();
    let spec = new_run(id);
    store
        .create_run(&spec, &mut instances(3).into_iter(), &[event("run.created", 0.0)])
        .await
        .unwrap();
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.spec, spec, "every field round-trips, the u64 seed included");
    assert_eq!(run.state, "running");
    assert!(!run.cancel_requested);
    assert_eq!(run.owner, None);
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2].key.as_str(), rows[2].state.as_str(), rows[2].target.as_deref()),
        ("s/2", "skipped", Some("t2"))
    );
    assert_eq!(store.events(id).await.unwrap()[0].event.kind, "run.created");
    assert!(store.runs().await.unwrap().iter().any(|r| r.spec.id == id));
    assert_eq!(store.run(run_id()).await.unwrap(), None);
}

async fn commits_batches_in_one_transaction(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(3).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let started = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 2,
        instances: vec![update(0, "running", 1), update(1, "running", 1)],
        attempts: vec![AttemptRecord {
            idx: 0,
            attempt: 1,
            started_s: 1.0,
            ended_s: None,
            outcome: None,
            exit_code: None,
            error: None,
            stdout_tail: None,
            stderr_tail: None,
        }],
        events: vec![event("instance.started", 1.0)],
        end: None,
        wave: None,
    };
    store.commit(id, "me", &started).await.unwrap();
    let mut done = update(0, "succeeded", 1);
    done.output = Some("{\"restore_point\":\"2022-04-05T07:33:00Z\"}".into());
    done.finished_s = Some(3.0);
    let mut failed = update(1, "failed", 1);
    failed.error = Some("exit status 3".into());
    // The same instance twice in one batch: the last update wins.
    let ended = Batch {
        clock_s: 3.0,
        heartbeat_unix_ms: 4,
        instances: vec![update(0, "running", 1), done, failed],
        attempts: vec![AttemptRecord {
            idx: 0,
            attempt: 1,
            started_s: 1.0,
            ended_s: Some(3.0),
            outcome: Some("succeeded".into()),
            exit_code: Some(0),
            error: None,
            stdout_tail: Some("ok\n".into()),
            stderr_tail: Some(String::new()),
        }],
        events: vec![event("instance.succeeded", 3.0), event("instance.failed", 3.0)],
        end: Some(RunEnd { state: "failed", finished_s: 3.0, reason: Some("1 failed".into()) }),
        wave: None,
    };
    store.commit(id, "me", &ended).await.unwrap();
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows[0].state, "succeeded");
    assert_eq!(rows[0].output.as_deref(), Some("{\"restore_point\":\"2022-04-05T07:33:00Z\"}"));
    assert_eq!(rows[0].finished_s, Some(3.0));
    assert_eq!(
        (rows[1].state.as_str(), rows[1].error.as_deref()),
        ("failed", Some("exit status 3"))
    );
    // A later update without output keeps the stored output.
    store
        .commit(
            id,
            "me",
            &Batch {
                clock_s: 4.0,
                heartbeat_unix_ms: 5,
                instances: vec![update(0, "succeeded", 1)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    assert!(store.instances(id).await.unwrap()[0].output.is_some());
    let attempts = store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].ended_s, attempts[0].outcome.as_deref(), attempts[0].exit_code),
        (Some(3.0), Some("succeeded"), Some(0))
    );
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!((run.state.as_str(), run.finished_s, run.clock_s), ("failed", Some(3.0), 4.0));
    assert_eq!(run.heartbeat_unix_ms, Some(5));
    let kinds: Vec<String> =
        store.events(id).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, ["instance.started", "instance.succeeded", "instance.failed"]);
}

async fn lease_is_compare_and_set(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(1).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "a", None, 1).await.unwrap());
    assert!(!store.claim(id, "b", None, 2).await.unwrap(), "held by a");
    assert!(!store.claim(id, "b", Some("c"), 2).await.unwrap(), "not held by c");
    // A process that lost the lease writes nothing.
    assert!(store.claim(id, "b", Some("a"), 3).await.unwrap(), "b takes over a's stale lease");
    let batch = Batch {
        clock_s: 9.0,
        heartbeat_unix_ms: 9,
        instances: vec![update(0, "running", 1)],
        ..Batch::default()
    };
    let err = store.commit(id, "a", &batch).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert_eq!(store.instances(id).await.unwrap()[0].state, "pending");
    assert_eq!(store.run(id).await.unwrap().unwrap().clock_s, 0.0);
    store.release(id, "a").await.unwrap();
    assert_eq!(
        store.run(id).await.unwrap().unwrap().owner.as_deref(),
        Some("b"),
        "only the owner releases"
    );
    store.release(id, "b").await.unwrap();
    assert_eq!(store.run(id).await.unwrap().unwrap().owner, None);
}

async fn cancel_and_retry_are_logged(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(3).into_iter(), &[]).await.unwrap();
    assert!(!store.cancel_requested(id).await.unwrap());
    store.request_cancel(id, &event("operator.cancel", 1.0)).await.unwrap();
    assert!(store.cancel_requested(id).await.unwrap());
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let mut f = update(0, "failed", 3);
    f.failures = 3;
    f.error = Some("boom".into());
    f.finished_s = Some(2.0);
    let batch = Batch {
        clock_s: 2.0,
        heartbeat_unix_ms: 2,
        instances: vec![f, update(1, "blocked", 0)],
        end: Some(RunEnd { state: "failed", finished_s: 2.0, reason: None }),
        ..Batch::default()
    };
    store.commit(id, "me", &batch).await.unwrap();
    let reset = store.reset_failed(id, &event("operator.retry", 5.0)).await.unwrap();
    assert_eq!(reset, 2);
    let rows = store.instances(id).await.unwrap();
    for r in &rows[..2] {
        assert_eq!(
            (r.state.as_str(), r.failures, r.error.as_deref(), r.finished_s),
            ("pending", 0, None, None)
        );
    }
    assert_eq!(rows[0].attempts, 3, "attempt numbers continue after a retry");
    assert_eq!(rows[2].state, "skipped");
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!((run.state.as_str(), run.finished_s), ("running", None));
    let kinds: Vec<String> =
        store.events(id).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, ["operator.cancel", "operator.retry"]);
}

async fn large_runs_are_chunked(store: &SqlStore) {
    let id = run_id();
    let n = 12_000;
    store.create_run(&new_run(id), &mut instances(n).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let batch = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 1,
        instances: (0..n).map(|i| update(i, "running", 1)).collect(),
        attempts: (0..n)
            .map(|i| AttemptRecord {
                idx: i,
                attempt: 1,
                started_s: 1.0,
                ended_s: None,
                outcome: None,
                exit_code: None,
                error: None,
                stdout_tail: None,
                stderr_tail: None,
            })
            .collect(),
        events: (0..n).map(|i| event("instance.started", f64::from(i))).collect(),
        end: None,
        wave: None,
    };
    store.commit(id, "me", &batch).await.unwrap();
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows.len(), n as usize);
    assert!(rows.iter().all(|r| r.state == "running"));
    assert_eq!(store.attempts(id).await.unwrap().len(), n as usize);
    assert_eq!(store.events(id).await.unwrap().len(), n as usize);
}

#[tokio::test]
async fn sqlite_conforms() {
    let db = SqliteDb::new();
    let store = SqlStore::open(&db.url).await.unwrap();
    suite(&store).await;
    restore_points_never_change(&store, &db.url).await;
    // The file was created, in WAL mode.
    assert!(db.path().exists());
    assert!(db.dir.path().join("rewind.db-wal").exists());
}

#[tokio::test]
async fn postgres_conforms() {
    let Some(base) = postgres_url("postgres_conforms") else { return };
    let schema = PgSchema::create(&base).await;
    let store = SqlStore::open(&schema.url).await.unwrap();
    suite(&store).await;
    restore_points_never_change(&store, &schema.url).await;
    store.close().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_missing_folder_is_a_clear_error() {
    let err = SqlStore::open("sqlite:///no/such/folder/rewind.db").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot open checkpoint store sqlite:///no/such/folder/rewind.db:"),
        "{text}"
    );
    let err = SqlStore::open("mysql://x").await.unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)), "{err}");
}

#[tokio::test]
async fn a_locked_database_fails_cleanly_and_writes_nothing() {
    let db = SqliteDb::new();
    let store = SqlStore::open_with(&db.url, Duration::from_millis(200)).await.unwrap();
    // Another process holds the write lock.
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut other).await.unwrap();
    let id = run_id();
    let err = store
        .create_run(&new_run(id), &mut instances(5).into_iter(), &[event("run.created", 0.0)])
        .await
        .unwrap_err();
    assert!(err.is_locked(), "{err}");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(store.run(id).await.unwrap(), None, "no half-written run");
    assert!(store.instances(id).await.unwrap().is_empty());
}
