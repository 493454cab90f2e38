//! One conformance suite, run against every backend: SQLite always, PostgreSQL when
//! `REWIND_TEST_POSTGRES` is set (CI sets it).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use rewind_model::{AttemptOutcome, EventKind, InstanceState as I, RunId, RunState};
use rewind_store::{
    AttemptRecord, Batch, DrillRecord, Holder, Holding, InstanceUpdate, NewEvent, NewInstance,
    NewRun, RunEnd, SqlStore, Store, StoreError,
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
        started_by: Some("ops@host-1".to_owned()),
        dispatch: rewind_store::Dispatch::Local,
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
            state: if i == 2 { I::Skipped } else { I::Pending },
        })
        .collect()
}

fn event(kind: EventKind, at_s: f64) -> NewEvent {
    NewEvent {
        at_s,
        wall: "2026-11-24T10:00:00Z".into(),
        kind,
        key: None,
        detail: Some("{\"by\":\"test\"}".into()),
    }
}

fn update(idx: u32, state: I, attempts: u32) -> InstanceUpdate {
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
    every_name_the_model_declares_is_stored(store).await;
    a_takeover_is_fenced_by_the_heartbeat_it_read(store).await;
    finished_runs_are_never_reopened(store).await;
    creates_and_reads_back(store).await;
    commits_batches_in_one_transaction(store).await;
    lease_is_compare_and_set(store).await;
    cancel_and_retry_are_logged(store).await;
    large_runs_are_chunked(store).await;
    live_real_runs_hold_their_targets(store).await;
    drills_are_kept_in_order_and_read_back(store).await;
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
            state: I::Pending,
        })
    };
    let (a, b, c) = (run_id(), run_id(), run_id());
    store.create_run(&real(a), &mut targets(0, 3), &[]).await.unwrap();
    // Overlapping targets: refused, nothing written, the holder named.
    let e =
        store.create_run(&real(b), &mut targets(2, 3), &[event(EventKind::RunCreated, 0.0)]).await;
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
    store.commit(a, "me", &end(RunState::Halted)).await.unwrap();
    assert_eq!(store.holders(&["lock-0".into(), "lock-9".into()]).await.unwrap().len(), 1);
    store.commit(a, "me", &end(RunState::Failed)).await.unwrap();
    assert!(store.holders(&["lock-0".into()]).await.unwrap().is_empty());
    store.create_run(&real(b), &mut targets(2, 3), &[]).await.unwrap();
    // Retrying the failed run needs its targets back: refused while b holds lock-2.
    let e = store.reset_failed(a, &event(EventKind::OperatorRetry, 2.0)).await;
    assert!(
        matches!(e, Err(StoreError::Held(ref h)) if h.len() == 1 && h[0].run == b.to_string()),
        "{e:?}"
    );
    assert_eq!(
        store.run(a).await.unwrap().unwrap().state,
        RunState::Failed,
        "the refused retry wrote nothing"
    );
    assert!(store.claim(b, "me", None, 1).await.unwrap());
    store.commit(b, "me", &end(RunState::Cancelled)).await.unwrap();
    store.reset_failed(a, &event(EventKind::OperatorRetry, 2.0)).await.unwrap();
    assert_eq!(store.holders(&["lock-1".into()]).await.unwrap()[0].run, a.to_string());
    // A halted run accepted past its failures opens the next wave.
    store.commit(a, "me", &end(RunState::Halted)).await.unwrap();
    store.accept_wave(a, 2, &event(EventKind::OperatorResume, 3.0)).await.unwrap();
    let run = store.run(a).await.unwrap().unwrap();
    assert_eq!((run.state, run.wave, run.finished_s), (RunState::Running, 2, None));
    store.commit(a, "me", &end(RunState::Succeeded)).await.unwrap();
    assert!(
        store
            .holders(&["lock-0".into(), "lock-1".into(), "lock-2".into()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Every state, outcome and event kind of the model is accepted by the schema and reads back as
/// itself (the CHECK constraints and triggers of migration 0003 list the model's names).
async fn every_name_the_model_declares_is_stored(store: &SqlStore) {
    let id = run_id();
    let n = I::ALL.len() as u32;
    store.create_run(&new_run(id), &mut instances(n).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let batch = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 1,
        instances: I::ALL.iter().enumerate().map(|(i, s)| update(i as u32, *s, 1)).collect(),
        attempts: AttemptOutcome::ALL
            .iter()
            .map(Some)
            .chain([None])
            .enumerate()
            .map(|(i, o)| AttemptRecord {
                idx: 0,
                attempt: i as u32 + 1,
                started_s: 0.0,
                ended_s: None,
                outcome: o.copied(),
                exit_code: None,
                error: None,
                stdout_tail: None,
                stderr_tail: None,
            })
            .collect(),
        events: EventKind::ALL.iter().map(|k| event(*k, 1.0)).collect(),
        ..Batch::default()
    };
    store.commit(id, "me", &batch).await.unwrap();
    let states: Vec<I> = store.instances(id).await.unwrap().iter().map(|r| r.state).collect();
    assert_eq!(states, I::ALL);
    let outcomes: Vec<_> = store.attempts(id).await.unwrap().iter().map(|a| a.outcome).collect();
    let expected: Vec<_> = AttemptOutcome::ALL.iter().map(|o| Some(*o)).chain([None]).collect();
    assert_eq!(outcomes, expected);
    let kinds: Vec<_> = store.events(id).await.unwrap().iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, EventKind::ALL);
    for state in [RunState::Halted, RunState::Running, RunState::Failed] {
        let end = Batch {
            clock_s: 2.0,
            heartbeat_unix_ms: 2,
            end: Some(RunEnd { state, finished_s: 2.0, reason: None }),
            ..Batch::default()
        };
        store.commit(id, "me", &end).await.unwrap();
        assert_eq!(store.run(id).await.unwrap().unwrap().state, state);
    }
}

/// Anything else written behind the store's back is refused by the database itself.
async fn unknown_names_are_refused_by_the_schema(store: &SqlStore, url: &str) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(1).into_iter(), &[]).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    for sql in [
        "UPDATE runs SET state = 'done' WHERE id = $1",
        "UPDATE instances SET state = 'Done' WHERE run_id = $1",
        "INSERT INTO attempts (run_id, idx, attempt, started_s, outcome) VALUES ($1, 0, 1, 0, 'ok')",
        "INSERT INTO events (run_id, at_s, wall, kind) VALUES ($1, 0, 'now', 'run.exploded')",
    ] {
        let e = sqlx::query(sql).bind(id.to_string()).execute(&pool).await;
        assert!(e.is_err(), "{sql} must be refused");
    }
    pool.close().await;
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Running);
    assert_eq!(store.instances(id).await.unwrap()[0].state, I::Pending);
    assert!(
        store.attempts(id).await.unwrap().is_empty() && store.events(id).await.unwrap().is_empty()
    );
}

/// A takeover compares the heartbeat it judged stale: the owner heartbeating in between keeps
/// its run, even though its name still matches (issue 11: the claim compared only the owner).
async fn a_takeover_is_fenced_by_the_heartbeat_it_read(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(1).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "a", None, 1_000).await.unwrap());
    // b reads the run and judges a's heartbeat (1,000) stale...
    let read = store.run(id).await.unwrap().unwrap();
    let seen =
        Holding { owner: read.owner.clone().unwrap(), heartbeat_unix_ms: read.heartbeat_unix_ms };
    // ...a commits (heartbeats) meanwhile...
    let beat = Batch { clock_s: 1.0, heartbeat_unix_ms: 9_000, ..Batch::default() };
    store.commit(id, "a", &beat).await.unwrap();
    // ...so b's takeover fails, and a still holds the run.
    assert!(!store.claim(id, "b", Some(&seen), 10_000).await.unwrap());
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!((run.owner.as_deref(), run.heartbeat_unix_ms), (Some("a"), Some(9_000)));
    store.commit(id, "a", &beat).await.unwrap();
    // Judged on what it is now, the takeover goes through, and a can no longer write.
    let now = Holding { owner: "a".into(), heartbeat_unix_ms: Some(9_000) };
    assert!(store.claim(id, "b", Some(&now), 100_000).await.unwrap());
    let e = store.commit(id, "a", &beat).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
}

/// Finished is finished: a succeeded or cancelled run is never reopened, and a refused retry
/// writes nothing (no state change, no event).
async fn finished_runs_are_never_reopened(store: &SqlStore) {
    for state in [RunState::Succeeded, RunState::Cancelled] {
        let id = run_id();
        store.create_run(&new_run(id), &mut instances(2).into_iter(), &[]).await.unwrap();
        assert!(store.claim(id, "me", None, 1).await.unwrap());
        let end = Batch {
            clock_s: 8.0,
            heartbeat_unix_ms: 1,
            instances: vec![update(0, I::Succeeded, 1), update(1, I::Failed, 1)],
            end: Some(RunEnd { state, finished_s: 8.0, reason: None }),
            ..Batch::default()
        };
        store.commit(id, "me", &end).await.unwrap();
        let before = (store.run(id).await.unwrap(), store.instances(id).await.unwrap());
        let e = store.reset_failed(id, &event(EventKind::OperatorRetry, 9.0)).await.unwrap_err();
        assert!(matches!(e, StoreError::Refused { .. }), "{e}");
        assert!(e.to_string().contains(state.as_str()), "{e}");
        let e = store.accept_wave(id, 2, &event(EventKind::OperatorResume, 9.0)).await.unwrap_err();
        assert!(matches!(e, StoreError::Refused { .. }), "{e}");
        assert_eq!((store.run(id).await.unwrap(), store.instances(id).await.unwrap()), before);
        assert!(store.events(id).await.unwrap().is_empty(), "no operator event was logged");
    }
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
        .create_run(&spec, &mut instances(3).into_iter(), &[event(EventKind::RunCreated, 0.0)])
        .await
        .unwrap();
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.spec, spec, "every field round-trips, the u64 seed included");
    assert_eq!(run.state, RunState::Running);
    assert!(!run.cancel_requested);
    assert_eq!(run.owner, None);
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2].key.as_str(), rows[2].state, rows[2].target.as_deref()),
        ("s/2", I::Skipped, Some("t2"))
    );
    assert_eq!(store.events(id).await.unwrap()[0].event.kind, EventKind::RunCreated);
    assert!(store.runs().await.unwrap().iter().any(|r| r.spec.id == id));
    assert_eq!(store.run(run_id()).await.unwrap(), None);

    // A page of the events after a sequence number, and the marker a poller compares.
    let before = store.run_marker(id).await.unwrap().unwrap();
    let first = store.events(id).await.unwrap()[0].seq;
    assert_eq!((before.state, before.last_seq), (RunState::Running, first));
    let batch = Batch {
        clock_s: 2.0,
        heartbeat_unix_ms: 1,
        events: vec![event(EventKind::RunStarted, 1.0), event(EventKind::WaveOpened, 2.0)],
        ..Batch::default()
    };
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    store.commit(id, "me", &batch).await.unwrap();
    let page = store.events_after(id, first, 1).await.unwrap();
    assert_eq!(page.len(), 1, "the limit holds");
    assert_eq!(page[0].event.at_s, 1.0);
    let rest = store.events_after(id, page[0].seq, 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.event.at_s).collect::<Vec<_>>(), [2.0]);
    let after = store.run_marker(id).await.unwrap().unwrap();
    assert_eq!(
        (after.clock_s, after.last_seq, after.owner.as_deref()),
        (2.0, rest[0].seq, Some("me"))
    );
    assert_ne!(after, before);
    assert_eq!(store.run_marker(run_id()).await.unwrap(), None);
}

async fn commits_batches_in_one_transaction(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(3).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let started = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 2,
        instances: vec![update(0, I::Running, 1), update(1, I::Running, 1)],
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
        events: vec![event(EventKind::InstanceStarted, 1.0)],
        end: None,
        wave: None,
    };
    store.commit(id, "me", &started).await.unwrap();
    let mut done = update(0, I::Succeeded, 1);
    done.output = Some("{\"restore_point\":\"2022-04-05T07:33:00Z\"}".into());
    done.finished_s = Some(3.0);
    let mut failed = update(1, I::Failed, 1);
    failed.error = Some("exit status 3".into());
    // The same instance twice in one batch: the last update wins.
    let ended = Batch {
        clock_s: 3.0,
        heartbeat_unix_ms: 4,
        instances: vec![update(0, I::Running, 1), done, failed],
        attempts: vec![AttemptRecord {
            idx: 0,
            attempt: 1,
            started_s: 1.0,
            ended_s: Some(3.0),
            outcome: Some(AttemptOutcome::Succeeded),
            exit_code: Some(0),
            error: None,
            stdout_tail: Some("ok\n".into()),
            stderr_tail: Some(String::new()),
        }],
        events: vec![
            event(EventKind::InstanceSucceeded, 3.0),
            event(EventKind::InstanceFailed, 3.0),
        ],
        end: Some(RunEnd {
            state: RunState::Failed,
            finished_s: 3.0,
            reason: Some("1 failed".into()),
        }),
        wave: None,
    };
    store.commit(id, "me", &ended).await.unwrap();
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows[0].state, I::Succeeded);
    assert_eq!(rows[0].output.as_deref(), Some("{\"restore_point\":\"2022-04-05T07:33:00Z\"}"));
    assert_eq!(rows[0].finished_s, Some(3.0));
    assert_eq!((rows[1].state, rows[1].error.as_deref()), (I::Failed, Some("exit status 3")));
    // A later update without output keeps the stored output.
    store
        .commit(
            id,
            "me",
            &Batch {
                clock_s: 4.0,
                heartbeat_unix_ms: 5,
                instances: vec![update(0, I::Succeeded, 1)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    assert!(store.instances(id).await.unwrap()[0].output.is_some());
    let attempts = store.attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].ended_s, attempts[0].outcome, attempts[0].exit_code),
        (Some(3.0), Some(AttemptOutcome::Succeeded), Some(0))
    );
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!((run.state, run.finished_s, run.clock_s), (RunState::Failed, Some(3.0), 4.0));
    assert_eq!(run.heartbeat_unix_ms, Some(5));
    let kinds: Vec<EventKind> =
        store.events(id).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::InstanceStarted, EventKind::InstanceSucceeded, EventKind::InstanceFailed]
    );
}

async fn lease_is_compare_and_set(store: &SqlStore) {
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(1).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "a", None, 1).await.unwrap());
    assert!(!store.claim(id, "b", None, 2).await.unwrap(), "held by a");
    let held = |owner: &str, hb| Holding { owner: owner.into(), heartbeat_unix_ms: hb };
    assert!(!store.claim(id, "b", Some(&held("c", Some(1))), 2).await.unwrap(), "not held by c");
    // A process that lost the lease writes nothing.
    assert!(
        store.claim(id, "b", Some(&held("a", Some(1))), 3).await.unwrap(),
        "b takes over a's stale lease"
    );
    let batch = Batch {
        clock_s: 9.0,
        heartbeat_unix_ms: 9,
        instances: vec![update(0, I::Running, 1)],
        ..Batch::default()
    };
    let err = store.commit(id, "a", &batch).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert_eq!(store.instances(id).await.unwrap()[0].state, I::Pending);
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
    store.request_cancel(id, &event(EventKind::OperatorCancel, 1.0)).await.unwrap();
    assert!(store.cancel_requested(id).await.unwrap());
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let mut f = update(0, I::Failed, 3);
    f.failures = 3;
    f.error = Some("boom".into());
    f.finished_s = Some(2.0);
    let batch = Batch {
        clock_s: 2.0,
        heartbeat_unix_ms: 2,
        instances: vec![f, update(1, I::Blocked, 0)],
        end: Some(RunEnd { state: RunState::Failed, finished_s: 2.0, reason: None }),
        ..Batch::default()
    };
    store.commit(id, "me", &batch).await.unwrap();
    let reset = store.reset_failed(id, &event(EventKind::OperatorRetry, 5.0)).await.unwrap();
    assert_eq!(reset, 2);
    let rows = store.instances(id).await.unwrap();
    for r in &rows[..2] {
        assert_eq!(
            (r.state, r.failures, r.error.as_deref(), r.finished_s),
            (I::Pending, 0, None, None)
        );
    }
    assert_eq!(rows[0].attempts, 3, "attempt numbers continue after a retry");
    assert_eq!(rows[2].state, I::Skipped);
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!((run.state, run.finished_s), (RunState::Running, None));
    let kinds: Vec<EventKind> =
        store.events(id).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, [EventKind::OperatorCancel, EventKind::OperatorRetry]);
}

async fn large_runs_are_chunked(store: &SqlStore) {
    let id = run_id();
    let n = 12_000;
    store.create_run(&new_run(id), &mut instances(n).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let batch = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 1,
        instances: (0..n).map(|i| update(i, I::Running, 1)).collect(),
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
        events: (0..n).map(|i| event(EventKind::InstanceStarted, f64::from(i))).collect(),
        end: None,
        wave: None,
    };
    store.commit(id, "me", &batch).await.unwrap();
    let rows = store.instances(id).await.unwrap();
    assert_eq!(rows.len(), n as usize);
    assert!(rows.iter().all(|r| r.state == I::Running));
    assert_eq!(store.attempts(id).await.unwrap().len(), n as usize);
    assert_eq!(store.events(id).await.unwrap().len(), n as usize);
}

fn drill(id: &str, name: &str, at: i64, passed: bool) -> DrillRecord {
    DrillRecord {
        id: id.into(),
        name: name.into(),
        run_id: passed.then(|| run_id().to_string()),
        started_at: "2026-11-24T10:00:00Z".into(),
        started_unix_ms: at,
        passed,
        rto_s: passed.then_some(12.25),
        rpo_s: Some(60.5),
        result: "{\"drill\":\"x\",\"failures\":[\"rto: missed by 1s\"]}".into(),
    }
}

async fn drills_are_kept_in_order_and_read_back(store: &SqlStore) {
    let later = drill("d-2", "nightly", 2_000, false);
    let first = drill("d-1", "nightly", 1_000, true);
    let other = drill("d-3", "weekly", 1_500, true);
    for d in [&later, &first, &other] {
        store.record_drill(d).await.unwrap();
    }
    // Written once: the same id again is refused, and changes nothing.
    assert!(store.record_drill(&drill("d-1", "nightly", 9, false)).await.is_err());
    assert_eq!(store.drills(Some("nightly")).await.unwrap(), vec![first.clone(), later.clone()]);
    assert_eq!(store.drills(None).await.unwrap(), vec![first.clone(), other, later.clone()]);
    assert_eq!(store.drills(Some("none")).await.unwrap(), vec![]);
    assert_eq!(store.drill("d-2").await.unwrap(), Some(later));
    assert_eq!(store.drill("d-9").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_conforms() {
    let db = SqliteDb::new();
    let store = SqlStore::open(&db.url).await.unwrap();
    suite(&store).await;
    restore_points_never_change(&store, &db.url).await;
    unknown_names_are_refused_by_the_schema(&store, &db.url).await;
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
    unknown_names_are_refused_by_the_schema(&store, &schema.url).await;
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
        .create_run(
            &new_run(id),
            &mut instances(5).into_iter(),
            &[event(EventKind::RunCreated, 0.0)],
        )
        .await
        .unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert!(!StoreError::BadUrl("x".into()).is_locked());
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(store.run(id).await.unwrap(), None, "no half-written run");
    assert!(store.instances(id).await.unwrap().is_empty());
}

/// Two commands opening a new store at once: both get a migrated store (issue 11: "duplicate
/// column name: waves" / "table runs already exists").
async fn a_new_store_opened_by_many_at_once(url: &str) {
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { SqlStore::open_with(&url, Duration::from_secs(30)).await })
        })
        .collect();
    for o in opens {
        let store = o.await.unwrap().unwrap_or_else(|e| panic!("a concurrent open failed: {e}"));
        assert!(store.runs().await.unwrap().is_empty());
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_new_store_opened_concurrently() {
    for _ in 0..5 {
        let db = SqliteDb::new();
        a_new_store_opened_by_many_at_once(&db.url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_new_store_opened_concurrently() {
    let Some(base) = postgres_url("postgres_new_store_opened_concurrently") else { return };
    for _ in 0..3 {
        let schema = PgSchema::create(&base).await;
        a_new_store_opened_by_many_at_once(&schema.url).await;
        schema.drop_schema().await;
    }
}

/// A transaction that reads before it writes takes the write lock first (`BEGIN IMMEDIATE`):
/// with a deferred one, another writer committing between its read and its write fails it at
/// once with SQLITE_BUSY_SNAPSHOT, which no busy timeout cures (issue 11: `reset_failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retry_waits_for_another_writer_instead_of_failing() {
    let db = SqliteDb::new();
    let store = SqlStore::open_with(&db.url, Duration::from_secs(20)).await.unwrap();
    let id = run_id();
    store.create_run(&new_run(id), &mut instances(2).into_iter(), &[]).await.unwrap();
    assert!(store.claim(id, "me", None, 1).await.unwrap());
    let end = Batch {
        clock_s: 1.0,
        heartbeat_unix_ms: 1,
        instances: vec![update(0, I::Failed, 1)],
        end: Some(RunEnd { state: RunState::Failed, finished_s: 1.0, reason: None }),
        ..Batch::default()
    };
    store.commit(id, "me", &end).await.unwrap();
    // Another process is writing.
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    sqlx::query("UPDATE run_leases SET clock_s = 2.0 WHERE run_id = ?1")
        .bind(id.to_string())
        .execute(&mut other)
        .await
        .unwrap();
    let retry = {
        let store = store.clone();
        tokio::spawn(
            async move { store.reset_failed(id, &event(EventKind::OperatorRetry, 3.0)).await },
        )
    };
    // Give the retry time to reach its first statement; the outcome must not depend on it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let reset = retry.await.unwrap().unwrap_or_else(|e| panic!("the retry failed: {e}"));
    assert_eq!(reset, 1);
    assert_eq!(store.run(id).await.unwrap().unwrap().state, RunState::Running);
}

/// A lock error is judged by the database's code, not its text (issue 11): a PostgreSQL
/// `lock_not_available` (55P03) is one, whatever its words; an error that merely says
/// "database is locked" is not.
#[tokio::test]
async fn lock_errors_are_recognised_by_their_code() {
    let db = SqliteDb::new();
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("{}?mode=rwc", db.url))
            .await
            .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (x INTEGER); CREATE TRIGGER liar BEFORE INSERT ON t \
         BEGIN SELECT RAISE(ABORT, 'database is locked'); END;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let e = sqlx::query("INSERT INTO t VALUES (1)").execute(&mut conn).await.unwrap_err();
    assert!(e.to_string().contains("database is locked"), "{e}");
    let e = StoreError::Query { what: "test", source: e };
    assert!(!e.is_locked(), "a trigger's message is not a lock");

    let Some(base) = postgres_url("lock_errors_are_recognised_by_their_code") else { return };
    let schema = PgSchema::create(&base).await;
    let mut a = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url).await.unwrap();
    let mut b = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (x INT)").execute(&mut a).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").execute(&mut a).await.unwrap();
    let e = sqlx::raw_sql("SET lock_timeout = '100ms'; SELECT * FROM t")
        .execute(&mut b)
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("locked"), "its words say nothing of `locked`: {e}");
    let e = StoreError::Query { what: "test", source: e };
    assert!(e.is_locked(), "55P03 is a lock: {e}");
    sqlx::raw_sql("ROLLBACK").execute(&mut a).await.unwrap();
    drop((a, b));
    schema.drop_schema().await;
}

/// A store made by the release before migration 0005 (lease and clock in `runs`) opens with its
/// runs' owner, heartbeat and clock intact, and the owner goes on committing.
async fn upgrades_keep_the_lease(url: &str, dir: &str) {
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(dir)).await.unwrap();
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version < 5).cloned().collect();
    migrator.set_locking(false);
    assert_eq!(migrator.migrations.len(), 4);
    let id = run_id();
    {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
        migrator.run_direct(None, &mut conn, false).await.unwrap();
        sqlx::query(
            "INSERT INTO runs (id, workflow, workflow_file, workflow_text, targets_file, targets_text, \
             workdir, cwd, restore_point, fingerprint, simulated, seed, fail_rate, priority, instances, \
             targets, lower_bound_s, state, created_at, started_unix_ms, clock_s, owner, heartbeat_unix_ms) \
             VALUES ($1, 'w', 'w.toml', 'name = \"w\"', 't.csv', 'id,kind', '/tmp', '/tmp', \
             '2022-04-05T07:33:00Z', 'sha256:00', 1, 1, 0, 'fifo', 0, 0, 0, 'running', \
             '2026-11-24T10:00:00Z', 1, 12.5, 'host:1:abc', 1700000000123)",
        )
        .bind(id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        <sqlx::AnyConnection as sqlx::Connection>::close(conn).await.unwrap();
    }
    let store = SqlStore::open(url).await.unwrap();
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.owner.as_deref(), Some("host:1:abc"));
    assert_eq!(run.heartbeat_unix_ms, Some(1_700_000_000_123));
    assert!((run.clock_s - 12.5).abs() < f64::EPSILON);
    let batch = Batch { clock_s: 13.0, heartbeat_unix_ms: 1_700_000_000_200, ..Batch::default() };
    store.commit(id, "host:1:abc", &batch).await.unwrap();
    assert!(matches!(store.commit(id, "other", &batch).await, Err(StoreError::LeaseLost { .. })));
    let run = store.run(id).await.unwrap().unwrap();
    assert!((run.clock_s - 13.0).abs() < f64::EPSILON);
    assert_eq!(store.runs().await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn sqlite_upgrade_keeps_the_lease() {
    let db = SqliteDb::new();
    // The file must exist before a plain connection opens it.
    std::fs::File::create(db.path()).unwrap();
    upgrades_keep_the_lease(&db.url, concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .await;
}

#[tokio::test]
async fn postgres_upgrade_keeps_the_lease() {
    let Some(base) = postgres_url("postgres_upgrade_keeps_the_lease") else { return };
    let schema = PgSchema::create(&base).await;
    upgrades_keep_the_lease(
        &schema.url,
        concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"),
    )
    .await;
    schema.drop_schema().await;
}
