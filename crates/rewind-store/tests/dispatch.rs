//! The dispatch protocol's SQL against its model (`rewind_dispatch::model::Table`): random
//! operation sequences (two runs, coordinators taken over, workers registering again under their
//! names, claims, heartbeats, reports at right and wrong epochs and from old incarnations,
//! hand-backs, rescues, forgets; and the batch forms: reports in batches that may repeat a key,
//! ended rows read and forgotten at once, withdrawals) are replayed on both; every answer and, after every step, the
//! whole tables must be equal. SQLite always; PostgreSQL when `REWIND_TEST_POSTGRES` is set.
//! Then, on PostgreSQL, concurrent workers claiming from one table (no attempt claimed twice),
//! and completions racing the rescuer (never both).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rewind_dispatch::model::Table;
use rewind_dispatch::{
    AttemptKey, Completion, DispatchState, Fence, Fenced, NewDispatch, Session, WorkerReport,
    WorkerSpec,
};
use rewind_model::RunId;
use rewind_store::{NewInstance, NewRun, SqlStore, Store, StoreError};
use rewind_testkit::{PgSchema, SqliteDb, postgres_url};
use sqlx::Connection as _;

const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 1_000;
const QUEUES: [&str; 2] = ["us-east", "eu-west"];

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

async fn create_run(store: &SqlStore) -> RunId {
    let id = RunId::from_uuid(uuid::Uuid::new_v4());
    let mut none = std::iter::empty::<NewInstance>();
    store.create_run(&new_run(id), &mut none, &[]).await.unwrap();
    id
}

/// A coordinator takes the run over, as `Store::claim` does, and reads its fence.
async fn take_over(store: &SqlStore, run: RunId, owner: &str, now: i64) -> Fence {
    let rec = store.run(run).await.unwrap().unwrap();
    let expected = rec
        .owner
        .map(|owner| rewind_store::Holding { owner, heartbeat_unix_ms: rec.heartbeat_unix_ms });
    assert!(store.claim(run, owner, expected.as_ref(), now).await.unwrap());
    store.lease_epoch(run, owner).await.unwrap().unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Tick(u16),
    Register(usize),
    /// `run`, how many, where their indexes start (a repeat hits existing keys), attempt.
    Enqueue {
        run: usize,
        n: u32,
        from: u32,
        attempt: u32,
        stale_fence: bool,
    },
    Claim {
        w: usize,
        queues: u8,
        n: u32,
    },
    Beat(usize),
    /// A report: by a session (`who` picks among every session ever), for a row (`pick`), at
    /// its epoch plus `delta`.
    Complete {
        who: usize,
        pick: usize,
        delta: i64,
        ok: bool,
    },
    /// A batch of reports by one session: each (`pick`, `delta`, `ok`) as in `Complete`
    /// (picks may repeat a row: a repeated key splits the batch's statement).
    CompleteMany {
        who: usize,
        reports: Vec<(usize, i64, bool)>,
    },
    HandBack {
        who: usize,
        pick: usize,
        delta: i64,
    },
    Stop(usize),
    Rescue,
    Finished(usize),
    Forget {
        run: usize,
        stale_fence: bool,
    },
    /// The coordinator withdraws rows (`picks`, of any run and state).
    Withdraw {
        run: usize,
        picks: Vec<usize>,
        stale_fence: bool,
    },
    TakeOver(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let w = 0..3usize;
    let run = 0..2usize;
    prop_oneof![
        // Ticks that land on a lease's last millisecond and the one after, as well as anywhere.
        3 => prop_oneof![
            Just(0u16), Just(1), Just(LEASE as u16 - 1), Just(LEASE as u16), Just(LEASE as u16 + 1),
            0u16..1500,
        ].prop_map(Step::Tick),
        1 => w.clone().prop_map(Step::Register),
        2 => (run.clone(), 1u32..5, 0u32..8, 1u32..3, proptest::bool::weighted(0.1))
            .prop_map(|(run, n, from, attempt, stale_fence)| Step::Enqueue { run, n, from, attempt, stale_fence }),
        3 => (w.clone(), 1u8..4, 1u32..4).prop_map(|(w, queues, n)| Step::Claim { w, queues, n }),
        2 => w.clone().prop_map(Step::Beat),
        4 => (0..8usize, 0..16usize, -1i64..=1, any::<bool>())
            .prop_map(|(who, pick, delta, ok)| Step::Complete { who, pick, delta, ok }),
        2 => (0..8usize, proptest::collection::vec((0..16usize, -1i64..=1, any::<bool>()), 0..6))
            .prop_map(|(who, reports)| Step::CompleteMany { who, reports }),
        1 => (0..8usize, 0..16usize, -1i64..=0).prop_map(|(who, pick, delta)| Step::HandBack { who, pick, delta }),
        1 => w.prop_map(Step::Stop),
        2 => Just(Step::Rescue),
        1 => run.clone().prop_map(Step::Finished),
        1 => (run.clone(), proptest::bool::weighted(0.2)).prop_map(|(run, stale_fence)| Step::Forget { run, stale_fence }),
        1 => (run.clone(), proptest::collection::vec(0..16usize, 0..5), proptest::bool::weighted(0.2))
            .prop_map(|(run, picks, stale_fence)| Step::Withdraw { run, picks, stale_fence }),
        1 => run.prop_map(Step::TakeOver),
    ]
}

fn spec(w: usize) -> WorkerSpec {
    let queues = match w {
        0 => QUEUES.iter().map(|q| (*q).to_owned()).collect(),
        _ => vec![QUEUES[w % 2].to_owned()],
    };
    WorkerSpec { name: format!("w{w}"), host: format!("host-{w}"), queues, slots: 2 + w as u32 }
}

fn fenced<T>(r: Result<T, StoreError>) -> Result<T, Fenced> {
    r.map_err(|e| match e {
        StoreError::Fenced(f) => f,
        e => panic!("store error: {e}"),
    })
}

/// One replay: the model and the store given the same steps.
struct Replay<'a> {
    store: &'a SqlStore,
    model: Table,
    now: i64,
    runs: Vec<RunId>,
    fences: Vec<Fence>,
    old_fences: Vec<Fence>,
    /// Current session of each worker name.
    current: BTreeMap<usize, Session>,
    /// Every session ever registered.
    sessions: Vec<Session>,
    takeovers: u32,
}

impl<'a> Replay<'a> {
    async fn new(store: &'a SqlStore) -> Self {
        let mut model = Table::new();
        let mut runs = Vec::new();
        let mut fences = Vec::new();
        for i in 0..2 {
            let run = create_run(store).await;
            let owner = format!("coordinator-{i}");
            let f = take_over(store, run, &owner, T0).await;
            assert_eq!(model.take_run(run, &owner), f);
            runs.push(run);
            fences.push(f);
        }
        Self {
            store,
            model,
            now: T0,
            runs,
            fences,
            old_fences: Vec::new(),
            current: BTreeMap::new(),
            sessions: Vec::new(),
            takeovers: 0,
        }
    }

    fn row_at(&self, pick: usize) -> Option<(AttemptKey, i64)> {
        let rows: Vec<_> = self.model.rows().collect();
        let r = rows.get(pick % rows.len().max(1))?;
        Some((r.key, r.epoch))
    }

    fn fence(&self, run: usize, stale_fence: bool) -> Fence {
        match (stale_fence, self.old_fences.last()) {
            (true, Some(f)) => *f,
            _ => self.fences[run],
        }
    }

    async fn apply(&mut self, step: &Step) {
        let (store, now) = (self.store, self.now);
        match step {
            Step::CompleteMany { who, reports } => {
                let Some(s) = self.sessions.get(who % self.sessions.len().max(1)).cloned() else {
                    return;
                };
                let batch: Vec<WorkerReport> = reports
                    .iter()
                    .filter_map(|&(pick, delta, ok)| {
                        let (key, epoch) = self.row_at(pick)?;
                        let outcome = if ok { "{\"ok\":true}" } else { "{\"ok\":false}" };
                        Some(WorkerReport { key, epoch: epoch + delta, outcome: outcome.into() })
                    })
                    .collect();
                let got = store.dispatch_complete_many(&s, &batch, now).await.unwrap();
                assert_eq!(got, self.model.complete_many(&s, &batch, now), "{batch:?}");
                return;
            }
            Step::Withdraw { run, picks, stale_fence } => {
                let fence = self.fence(*run, *stale_fence);
                let keys: Vec<AttemptKey> =
                    picks.iter().filter_map(|&p| self.row_at(p).map(|(k, _)| k)).collect();
                let got = fenced(store.dispatch_withdraw(fence, &keys).await);
                assert_eq!(got, self.model.withdraw(fence, &keys));
                return;
            }
            _ => {}
        }
        match *step {
            Step::Tick(ms) => self.now += i64::from(ms),
            Step::Register(w) => {
                let got = store.worker_register(&spec(w), now).await.unwrap();
                assert_eq!(got, self.model.register(&spec(w), now));
                self.current.insert(w, got.clone());
                self.sessions.push(got);
            }
            Step::Enqueue { run, n, from, attempt, stale_fence } => {
                let fence = match (stale_fence, self.old_fences.last()) {
                    (true, Some(f)) => *f,
                    _ => self.fences[run],
                };
                let items: Vec<NewDispatch> = (from..from + n)
                    .map(|idx| NewDispatch {
                        idx,
                        attempt,
                        queue: QUEUES[idx as usize % 2].to_owned(),
                        payload: format!("{{\"idx\":{idx},\"attempt\":{attempt},\"run\":{run}}}"),
                    })
                    .collect();
                let got = fenced(store.dispatch_enqueue(fence, &items, now).await);
                assert_eq!(got, self.model.enqueue(fence, &items, now));
            }
            Step::Claim { w, queues, n } => {
                let Some(s) = self.current.get(&w).cloned() else { return };
                let qs: Vec<String> = QUEUES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| queues & (1 << i) != 0)
                    .map(|(_, q)| (*q).to_owned())
                    .collect();
                let got = store.dispatch_claim(&s, &qs, n, now, LEASE).await.unwrap();
                assert_eq!(got, self.model.claim(&s, &qs, n, now, LEASE));
            }
            Step::Beat(w) => {
                let Some(s) = self.current.get(&w).cloned() else { return };
                let got = store.worker_heartbeat(&s, now, LEASE).await.unwrap();
                assert_eq!(got, self.model.heartbeat(&s, now, LEASE));
            }
            Step::Complete { who, pick, delta, ok } => {
                let (Some(s), Some((key, epoch))) = (
                    self.sessions.get(who % self.sessions.len().max(1)).cloned(),
                    self.row_at(pick),
                ) else {
                    return;
                };
                let outcome = if ok { "{\"ok\":true}" } else { "{\"ok\":false}" };
                let got =
                    store.dispatch_complete(&s, key, epoch + delta, outcome, now).await.unwrap();
                assert_eq!(got, self.model.complete(&s, key, epoch + delta, outcome, now));
            }
            Step::HandBack { who, pick, delta } => {
                let (Some(s), Some((key, epoch))) = (
                    self.sessions.get(who % self.sessions.len().max(1)).cloned(),
                    self.row_at(pick),
                ) else {
                    return;
                };
                let got = store.dispatch_hand_back(&s, key, epoch + delta).await.unwrap();
                assert_eq!(got, self.model.hand_back(&s, key, epoch + delta));
            }
            Step::Stop(w) => {
                let Some(s) = self.current.get(&w).cloned() else { return };
                assert_eq!(store.worker_stop(&s).await.unwrap(), self.model.stop(&s));
            }
            Step::Rescue => {
                assert_eq!(store.dispatch_rescue(now).await.unwrap(), self.model.rescue(now));
            }
            Step::Finished(run) => {
                let run = self.runs[run];
                assert_eq!(store.dispatch_finished(run).await.unwrap(), self.model.finished(run));
            }
            Step::Forget { run, stale_fence } => {
                let fence = match (stale_fence, self.old_fences.last()) {
                    (true, Some(f)) => *f,
                    _ => self.fences[run],
                };
                // Every ended row of the run, and one of the other run's (never removed).
                let mut keys: Vec<AttemptKey> =
                    self.model.finished(self.runs[run]).iter().map(|f| f.key).collect();
                keys.extend(self.model.rows().find(|r| r.key.run != fence.run).map(|r| r.key));
                keys.extend(self.model.rows().find(|r| !r.state.is_terminal()).map(|r| r.key));
                let got = fenced(store.dispatch_forget(fence, &keys).await);
                assert_eq!(got, self.model.forget(fence, &keys));
            }
            Step::CompleteMany { .. } | Step::Withdraw { .. } => {}
            Step::TakeOver(run) => {
                self.takeovers += 1;
                let owner = format!("standby-{}", self.takeovers);
                let f = take_over(store, self.runs[run], &owner, now).await;
                assert_eq!(self.model.take_run(self.runs[run], &owner), f);
                self.old_fences.push(self.fences[run]);
                self.fences[run] = f;
            }
        }
    }

    async fn compare_tables(&self, after: &Step) {
        let rows = self.store.dispatch_rows().await.unwrap();
        assert_eq!(
            rows,
            self.model.rows().cloned().collect::<Vec<_>>(),
            "dispatch after {after:?}"
        );
        let workers = self.store.workers().await.unwrap();
        assert_eq!(
            workers,
            self.model.workers().cloned().collect::<Vec<_>>(),
            "workers after {after:?}"
        );
        let stale = self.store.stale_outcomes().await.unwrap();
        assert_eq!(stale, self.model.stale(), "stale outcomes after {after:?}");
        for (run, f) in self.runs.iter().zip(&self.fences) {
            assert_eq!(self.model.leases()[run].epoch, f.epoch);
        }
    }
}

/// Empties the dispatch tables between cases (runs stay: each case makes its own).
async fn clear(url: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::raw_sql("DELETE FROM dispatch; DELETE FROM workers; DELETE FROM stale_outcomes;")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

fn replay_random_sequences(url: &str, cases: u32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(SqlStore::open(url)).unwrap();
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let steps = proptest::collection::vec(step(), 1..60);
    let outcome = runner.run(&steps, |steps| {
        rt.block_on(async {
            clear(url).await;
            let mut replay = Replay::new(&store).await;
            // Every worker registers once first, so most steps have someone to act.
            for w in 0..3 {
                replay.apply(&Step::Register(w)).await;
            }
            for s in &steps {
                replay.apply(s).await;
                replay.compare_tables(s).await;
            }
        });
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    rt.block_on(store.close());
}

#[test]
fn sqlite_dispatch_matches_the_model() {
    let db = SqliteDb::new();
    replay_random_sequences(&db.url, 96);
}

#[test]
fn postgres_dispatch_matches_the_model() {
    let Some(base) = postgres_url("postgres_dispatch_matches_the_model") else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = rt.block_on(PgSchema::create(&base));
    replay_random_sequences(&schema.url, 96);
    rt.block_on(schema.drop_schema());
}

/// Fills a fresh PostgreSQL schema with `n` queued attempts of one run.
async fn queued(schema: &PgSchema, n: u32) -> (SqlStore, RunId) {
    let store = SqlStore::open(&schema.url).await.unwrap();
    let run = create_run(&store).await;
    let fence = take_over(&store, run, "coordinator", T0).await;
    let items: Vec<NewDispatch> = (0..n)
        .map(|idx| NewDispatch { idx, attempt: 1, queue: "q".into(), payload: "{}".into() })
        .collect();
    assert_eq!(store.dispatch_enqueue(fence, &items, T0).await.unwrap(), u64::from(n));
    (store, run)
}

/// Several workers, each with its own pool (as separate processes would be), claim in batches
/// from one table at once until it is empty: every attempt is claimed exactly once, at epoch 1,
/// by the worker the table says holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_claims_never_claim_twice() {
    let Some(base) = postgres_url("postgres_concurrent_claims_never_claim_twice") else { return };
    let schema = PgSchema::create(&base).await;
    let (store, _) = queued(&schema, 600).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let url = schema.url.clone();
        tasks.push(tokio::spawn(async move {
            let store = SqlStore::open(&url).await.unwrap();
            let spec = WorkerSpec {
                name: format!("w{w}"),
                host: "h".into(),
                queues: vec!["q".into()],
                slots: 8,
            };
            let s = store.worker_register(&spec, T0).await.unwrap();
            let mut got = Vec::new();
            loop {
                let batch = store.dispatch_claim(&s, &["q".into()], 7, T0, LEASE).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|c| (c.key, c.epoch, s.name.clone())));
                tokio::task::yield_now().await;
            }
            store.close().await;
            got
        }));
    }
    let mut all = Vec::new();
    let mut workers_that_claimed = 0;
    for t in tasks {
        let got = t.await.unwrap();
        workers_that_claimed += usize::from(!got.is_empty());
        all.extend(got);
    }
    let keys: BTreeSet<AttemptKey> = all.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(all.len(), 600, "claims: {}", all.len());
    assert_eq!(keys.len(), 600, "an attempt was claimed twice");
    assert!(all.iter().all(|(_, epoch, _)| *epoch == 1));
    assert!(workers_that_claimed >= 2, "the claims did not interleave at all");
    let holders: BTreeMap<AttemptKey, String> = all.into_iter().map(|(k, _, w)| (k, w)).collect();
    for row in store.dispatch_rows().await.unwrap() {
        assert_eq!(row.state, DispatchState::Claimed);
        assert_eq!(row.worker.as_ref(), holders.get(&row.key));
    }
    store.close().await;
    schema.drop_schema().await;
}

/// River #1302 on a real server: workers report outcomes of attempts whose leases expired while
/// a rescuer rescues them, all at once. Every attempt ends exactly one way: done with its
/// report accepted, or lost with its report refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_completions_racing_the_rescuer_never_both_win() {
    let Some(base) = postgres_url("postgres_completions_racing_the_rescuer_never_both_win") else {
        return;
    };
    let schema = PgSchema::create(&base).await;
    let (store, _) = queued(&schema, 400).await;
    let spec =
        WorkerSpec { name: "w".into(), host: "h".into(), queues: vec!["q".into()], slots: 1 };
    let s = store.worker_register(&spec, T0).await.unwrap();
    let claimed = store.dispatch_claim(&s, &["q".into()], 400, T0, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 400);
    let late = T0 + LEASE + 1;
    let claimed = Arc::new(claimed);
    let mut reporters = Vec::new();
    for part in 0..3usize {
        let (url, claimed, s) = (schema.url.clone(), claimed.clone(), s.clone());
        reporters.push(tokio::spawn(async move {
            let store = SqlStore::open(&url).await.unwrap();
            let mut answers = Vec::new();
            for c in claimed.iter().skip(part).step_by(3) {
                let a = store.dispatch_complete(&s, c.key, c.epoch, "{}", late).await.unwrap();
                answers.push((c.key, a));
            }
            store.close().await;
            answers
        }));
    }
    // The rescuer runs until every report is in, then once more.
    let reporting = Arc::new(AtomicBool::new(true));
    let (url, still) = (schema.url.clone(), reporting.clone());
    let rescuer = tokio::spawn(async move {
        let store = SqlStore::open(&url).await.unwrap();
        let mut rescued = Vec::new();
        let mut last = false;
        while !last {
            last = !still.load(Ordering::SeqCst);
            rescued.extend(store.dispatch_rescue(late).await.unwrap().into_iter().map(|r| r.key));
            tokio::task::yield_now().await;
        }
        store.close().await;
        rescued
    });
    let mut answers = Vec::new();
    for r in reporters {
        answers.extend(r.await.unwrap());
    }
    reporting.store(false, Ordering::SeqCst);
    let mut accepted = BTreeSet::new();
    let mut refused = BTreeSet::new();
    {
        for (key, a) in answers {
            match a {
                Completion::Accepted => assert!(accepted.insert(key)),
                Completion::Stale { current: Some((DispatchState::Lost, _)) } => {
                    assert!(refused.insert(key));
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }
    let rescued: BTreeSet<AttemptKey> = rescuer.await.unwrap().into_iter().collect();
    assert_eq!(rescued, refused, "rescued exactly the attempts whose reports were refused");
    assert!(accepted.is_disjoint(&rescued));
    assert_eq!(accepted.len() + rescued.len(), 400);
    for row in store.dispatch_rows().await.unwrap() {
        let want =
            if accepted.contains(&row.key) { DispatchState::Done } else { DispatchState::Lost };
        assert_eq!(row.state, want, "{}", row.key);
    }
    assert_eq!(store.stale_outcomes().await.unwrap().len(), refused.len());
    store.close().await;
    schema.drop_schema().await;
}

/// A run's lease epoch moves with every take-over; a local run's own claim takes epoch 1.
#[tokio::test]
async fn sqlite_lease_epoch_follows_takeovers() {
    let db = SqliteDb::new();
    let store = SqlStore::open(&db.url).await.unwrap();
    let run = create_run(&store).await;
    assert_eq!(store.lease_epoch(run, "a").await.unwrap(), None);
    assert_eq!(take_over(&store, run, "a", T0).await, Fence { run, epoch: 1 });
    assert_eq!(take_over(&store, run, "b", T0 + 1).await, Fence { run, epoch: 2 });
    assert_eq!(store.lease_epoch(run, "a").await.unwrap(), None, "a no longer holds it");
    let item = NewDispatch { idx: 0, attempt: 1, queue: "q".into(), payload: "{}".into() };
    let e = store.dispatch_enqueue(Fence { run, epoch: 1 }, std::slice::from_ref(&item), T0).await;
    assert!(matches!(e, Err(StoreError::Fenced(Fenced { epoch: 1, .. }))), "{e:?}");
    assert!(store.dispatch_rows().await.unwrap().is_empty());
}

/// An enqueue that writes rows wakes a listener (once, at its commit); one that writes nothing
/// does not notify.
#[tokio::test]
async fn postgres_enqueue_notifies_listeners() {
    let Some(base) = postgres_url("postgres_enqueue_notifies_listeners") else { return };
    let schema = PgSchema::create(&base).await;
    let mut listener = rewind_store::DispatchListener::connect(&schema.url).await.unwrap();
    let (store, run) = queued(&schema, 3).await;
    // Other tests' runs notify on the same channel (one per database): only this run counts.
    loop {
        let woke = tokio::time::timeout(std::time::Duration::from_secs(30), listener.recv())
            .await
            .expect("a wake-up for the enqueue")
            .unwrap();
        if woke == run.to_string() {
            break;
        }
    }
    // The same rows again: nothing written, no notification; a new row: one.
    let fence = store.lease_epoch(run, "coordinator").await.unwrap().unwrap();
    let again = NewDispatch { idx: 0, attempt: 1, queue: "q".into(), payload: "{}".into() };
    assert_eq!(store.dispatch_enqueue(fence, &[again], T0).await.unwrap(), 0);
    let new = NewDispatch { idx: 9, attempt: 1, queue: "q".into(), payload: "{}".into() };
    assert_eq!(store.dispatch_enqueue(fence, &[new], T0).await.unwrap(), 1);
    let mut seen = 0;
    while let Ok(woke) =
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.recv()).await
    {
        seen += usize::from(woke.unwrap() == run.to_string());
    }
    assert_eq!(seen, 1, "one notification for the enqueue that wrote a row");
    drop(listener);
    schema.drop_schema().await;
}
