//! `SqlStore::worker_attempts_held`: the attempts each worker incarnation holds, as `status` and
//! the API show them. SQLite always; PostgreSQL when `REWIND_TEST_POSTGRES` is set.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use rewind_dispatch::{AttemptKey, NewDispatch, WorkerSpec};
use rewind_model::RunId;
use rewind_store::{NewInstance, NewRun, SqlStore, Store};
use rewind_testkit::{PgSchema, SqliteDb, postgres_url};

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 1_000;

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
        seed: 1,
        fail_rate: 0.0,
        max_running: None,
        priority: "critical-path".into(),
        instances: 1,
        targets: 0,
        lower_bound_s: 0.0,
        created_at: "2026-11-24T10:00:00Z".into(),
        started_unix_ms: T0,
        waves: vec![],
        halt_rate: 1.0,
        started_by: None,
        dispatch: rewind_store::Dispatch::Workers,
    }
}

fn spec(name: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        host: format!("host-{name}"),
        queues: vec!["q".into()],
        slots: 4,
    }
}

/// Claimed attempts count for their holder's incarnation until they are reported, handed back
/// or rescued; queued ones count for nobody.
async fn counts_claimed_attempts_per_incarnation(store: &SqlStore) {
    assert!(store.worker_attempts_held().await.unwrap().is_empty(), "no dispatch yet");
    let run = RunId::from_uuid(uuid::Uuid::new_v4());
    let mut none = std::iter::empty::<NewInstance>();
    store.create_run(&new_run(run), &mut none, &[]).await.unwrap();
    let rec = store.run(run).await.unwrap().unwrap();
    let expected = rec
        .owner
        .map(|owner| rewind_store::Holding { owner, heartbeat_unix_ms: rec.heartbeat_unix_ms });
    assert!(store.claim(run, "coordinator", expected.as_ref(), T0).await.unwrap());
    let fence = store.lease_epoch(run, "coordinator").await.unwrap().unwrap();
    let items: Vec<NewDispatch> = (0..6)
        .map(|idx| NewDispatch { idx, attempt: 1, queue: "q".into(), payload: "{}".into() })
        .collect();
    assert_eq!(store.dispatch_enqueue(fence, &items, T0).await.unwrap(), 6);
    let a = store.worker_register(&spec("a"), T0).await.unwrap();
    let b = store.worker_register(&spec("b"), T0).await.unwrap();
    let queues = vec!["q".to_owned()];
    let by_a = store.dispatch_claim(&a, &queues, 3, T0, LEASE).await.unwrap();
    let by_b = store.dispatch_claim(&b, &queues, 2, T0, LEASE).await.unwrap();
    assert_eq!((by_a.len(), by_b.len()), (3, 2));
    assert_eq!(
        store.worker_attempts_held().await.unwrap(),
        [("a".to_owned(), 1, 3), ("b".to_owned(), 1, 2)],
        "one queued attempt is held by nobody"
    );
    // A reports one, hands one back; B's lease ends and the rescuer takes its two.
    let key: AttemptKey = by_a[0].key;
    store.dispatch_complete(&a, key, by_a[0].epoch, "{}", T0).await.unwrap();
    assert!(store.dispatch_hand_back(&a, by_a[1].key, by_a[1].epoch).await.unwrap());
    store.worker_heartbeat(&a, T0 + LEASE / 2, LEASE).await.unwrap();
    assert_eq!(store.dispatch_rescue(T0 + LEASE + 1).await.unwrap().len(), 2);
    assert_eq!(store.worker_attempts_held().await.unwrap(), [("a".to_owned(), 1, 1)]);
    // A registers again: the old incarnation still holds its attempt (until the rescuer), the
    // new one holds none.
    let a2 = store.worker_register(&spec("a"), T0 + 2).await.unwrap();
    assert_eq!(a2.incarnation, 2);
    assert_eq!(store.worker_attempts_held().await.unwrap(), [("a".to_owned(), 1, 1)]);
}

#[tokio::test]
async fn sqlite_counts_attempts_held() {
    let db = SqliteDb::new();
    let store = SqlStore::open(&db.url).await.unwrap();
    counts_claimed_attempts_per_incarnation(&store).await;
}

#[tokio::test]
async fn postgres_counts_attempts_held() {
    let Some(base) = postgres_url("postgres_counts_attempts_held") else { return };
    let schema = PgSchema::create(&base).await;
    let store = SqlStore::open(&schema.url).await.unwrap();
    counts_claimed_attempts_per_incarnation(&store).await;
    store.close().await;
    schema.drop_schema().await;
}
