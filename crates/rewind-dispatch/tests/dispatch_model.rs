//! The dispatch protocol explored: random interleavings of several workers (claiming,
//! heartbeating, finishing attempts, reporting late, crashing, restarting under the same name,
//! partitioned from the database), a rescuer, and a coordinator that re-dispatches what ended
//! badly and is taken over by a standby, all on one model [`Table`] with a random clock and
//! lease period. After every step:
//! - at most one live lease per instance: no two workers believe, within their lease, that they
//!   run the same instance, and every such belief is the table's (claimed by that session at
//!   that epoch, lease until the time the worker counts on);
//! - at most one succeeded attempt per instance; an outcome is accepted only from the session
//!   that holds the attempt at the epoch of its claim (a ghost log of claims, hand-backs and
//!   rescues says which), so a late outcome from an old epoch is never accepted;
//! - no lost instance: an instance not yet succeeded always has a dispatched attempt, at most
//!   one not ended;
//! - an attempt of a crashed worker is held no longer than one lease period after the crash (a
//!   restarted worker of the same name extends nothing of it), and after the rescuer ran no
//!   claimed row's lease has expired.
//!
//! At the end every partition heals and every crashed worker restarts: within a bounded number
//! of rounds every instance succeeds. Then the regression cases, one per bug class of issue 17.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use rewind_dispatch::model::Table;
use rewind_dispatch::{
    AttemptKey, Beat, Completion, DispatchState, Fence, NewDispatch, RunId, Session, WorkerReport,
    WorkerSpec,
};

const T0: i64 = 1_700_000_000_000;
const QUEUES: [&str; 2] = ["us-east", "eu-west"];

fn run_id() -> RunId {
    RunId::from_uuid(uuid::Uuid::from_u128(0x0f1c_2a3e_0b4d_4e5f_8a9b_0c1d_2e3f_4a5b))
}

fn queue_of(idx: u32) -> String {
    QUEUES[idx as usize % QUEUES.len()].to_owned()
}

fn payload(idx: u32, attempt: u32) -> String {
    format!("{{\"idx\":{idx},\"attempt\":{attempt}}}")
}

const OK: &str = "{\"ok\":true}";
const FAILED: &str = "{\"ok\":false}";

#[derive(Clone, Debug)]
enum Op {
    /// The clock moves on by this many thousandths of the lease period.
    Tick(u16),
    Claim(usize, u32),
    Beat(usize),
    /// A worker ends one of the attempts it runs (`pick`), succeeded or not; its report is sent
    /// now or kept in flight (`delay`).
    Finish {
        w: usize,
        pick: usize,
        ok: bool,
        delay: bool,
    },
    /// The oldest report in flight from a worker arrives (unless it is partitioned).
    Deliver(usize),
    /// Every report in flight from a worker arrives as one batch (`Table::complete_many`, as
    /// `rewind worker` sends them), unless it is partitioned.
    DeliverAll(usize),
    /// A worker hands an attempt back (draining); `racing`: its step finished at that very
    /// moment and its report was sent too (both cross on the way).
    HandBack {
        w: usize,
        pick: usize,
        racing: bool,
    },
    Crash(usize),
    Restart(usize),
    Partition(usize),
    Heal(usize),
    Rescue,
    /// The coordinator records what ended and re-dispatches: `true` with `take_finished` (read
    /// and forget at once, as `rewind run --dispatch workers` does), `false` with `finished`
    /// then `forget`.
    Coordinate(bool),
    TakeOver,
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..4usize;
    prop_oneof![
        3 => (0u16..1600).prop_map(Op::Tick),
        3 => (w.clone(), 1u32..4).prop_map(|(w, n)| Op::Claim(w, n)),
        3 => w.clone().prop_map(Op::Beat),
        3 => (w.clone(), 0..4usize, proptest::bool::weighted(0.8), proptest::bool::weighted(0.2))
            .prop_map(|(w, pick, ok, delay)| Op::Finish { w, pick, ok, delay }),
        2 => w.clone().prop_map(Op::Deliver),
        1 => w.clone().prop_map(Op::DeliverAll),
        1 => (w.clone(), 0..4usize, proptest::bool::weighted(0.3))
            .prop_map(|(w, pick, racing)| Op::HandBack { w, pick, racing }),
        1 => w.clone().prop_map(Op::Crash),
        1 => w.clone().prop_map(Op::Restart),
        1 => w.clone().prop_map(Op::Partition),
        1 => w.prop_map(Op::Heal),
        2 => Just(Op::Rescue),
        2 => any::<bool>().prop_map(Op::Coordinate),
        1 => Just(Op::TakeOver),
    ]
}

/// A report on its way to the database.
#[derive(Clone, Debug)]
struct Report {
    session: Session,
    key: AttemptKey,
    epoch: i64,
    ok: bool,
}

#[derive(Debug)]
struct Worker {
    spec: WorkerSpec,
    /// `None` while the process is dead.
    session: Option<Session>,
    partitioned: bool,
    /// What it runs: attempt → (epoch, lease end it counts on).
    running: BTreeMap<AttemptKey, (i64, i64)>,
    in_flight: VecDeque<Report>,
}

#[derive(Debug, Default)]
struct Instance {
    /// Attempts dispatched so far.
    attempts: u32,
    /// Succeeded attempts the coordinator recorded.
    succeeded: u32,
}

struct World {
    now: i64,
    lease: i64,
    table: Table,
    fence: Fence,
    workers: Vec<Worker>,
    instances: Vec<Instance>,
    /// Ghost: who holds an attempt and at which epoch, from the table's own answers.
    holder: BTreeMap<AttemptKey, (Session, i64)>,
    /// Ghost: accepted succeeded outcomes per instance.
    successes: BTreeMap<u32, u32>,
    /// Sessions of crashed processes and when they died.
    dead: Vec<(Session, i64)>,
    log: Vec<String>,
}

impl World {
    fn new(workers: usize, instances: u32, lease: i64) -> Self {
        let mut table = Table::new();
        let fence = table.take_run(run_id(), "coordinator-1");
        let items: Vec<NewDispatch> = (0..instances)
            .map(|idx| NewDispatch {
                idx,
                attempt: 1,
                queue: queue_of(idx),
                payload: payload(idx, 1),
            })
            .collect();
        assert_eq!(table.enqueue(fence, &items, T0).unwrap(), u64::from(instances));
        let workers = (0..workers)
            .map(|i| {
                // w0 serves every queue, so every attempt can always be claimed by someone.
                let queues = if i == 0 {
                    QUEUES.iter().map(|q| (*q).to_owned()).collect()
                } else {
                    vec![QUEUES[i % QUEUES.len()].to_owned()]
                };
                let spec =
                    WorkerSpec { name: format!("w{i}"), host: format!("h{i}"), queues, slots: 4 };
                let session = Some(table.register(&spec, T0));
                Worker {
                    spec,
                    session,
                    partitioned: false,
                    running: BTreeMap::new(),
                    in_flight: VecDeque::new(),
                }
            })
            .collect();
        Self {
            now: T0,
            lease,
            table,
            fence,
            workers,
            instances: (0..instances).map(|_| Instance { attempts: 1, succeeded: 0 }).collect(),
            holder: BTreeMap::new(),
            successes: BTreeMap::new(),
            dead: Vec::new(),
            log: Vec::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        self.log.push(format!("t+{} {op:?}", self.now - T0));
        let nw = self.workers.len();
        match *op {
            Op::Tick(permille) => self.now += self.lease * i64::from(permille) / 1000,
            Op::Claim(w, n) => self.claim(w % nw, n),
            Op::Beat(w) => self.beat(w % nw),
            Op::Finish { w, pick, ok, delay } => {
                let w = &mut self.workers[w % nw];
                let Some(session) = w.session.clone() else { return };
                let Some(key) = w.running.keys().nth(pick % w.running.len().max(1)).copied() else {
                    return;
                };
                let (epoch, _) = w.running.remove(&key).unwrap();
                w.in_flight.push_back(Report { session, key, epoch, ok });
                if !delay {
                    let i = w.in_flight.len() - 1;
                    let r = w.in_flight.remove(i).unwrap();
                    if w.partitioned {
                        w.in_flight.push_back(r);
                    } else {
                        self.report(&r);
                    }
                }
            }
            Op::Deliver(w) => {
                let w = &mut self.workers[w % nw];
                if !w.partitioned
                    && let Some(r) = w.in_flight.pop_front()
                {
                    self.report(&r);
                }
            }
            Op::DeliverAll(w) => {
                let w = &mut self.workers[w % nw];
                if !w.partitioned {
                    // Reports of an earlier process of this worker (crashed, restarted) still in
                    // flight come from that process: each process's run of reports is its own
                    // batch, in order.
                    let pending: Vec<Report> = w.in_flight.drain(..).collect();
                    for batch in pending.chunk_by(|a, b| a.session == b.session) {
                        self.report_all(batch);
                    }
                }
            }
            Op::HandBack { w, pick, racing } => {
                let w = &mut self.workers[w % nw];
                let (Some(session), false) = (w.session.clone(), w.partitioned) else { return };
                let Some(key) = w.running.keys().nth(pick % w.running.len().max(1)).copied() else {
                    return;
                };
                let (epoch, _) = w.running.remove(&key).unwrap();
                assert!(
                    self.table.hand_back(&session, key, epoch),
                    "a held attempt is handed back"
                );
                self.holder.remove(&key);
                if racing {
                    w.in_flight.push_back(Report { session, key, epoch, ok: true });
                }
            }
            Op::Crash(w) => {
                let w = &mut self.workers[w % nw];
                if let Some(s) = w.session.take() {
                    self.dead.push((s, self.now));
                }
                // The process is gone; what it already sent may still arrive.
                w.running.clear();
            }
            Op::Restart(w) => {
                let w = &mut self.workers[w % nw];
                if w.session.is_none() {
                    w.partitioned = false;
                    w.session = Some(self.table.register(&w.spec, self.now));
                }
            }
            Op::Partition(w) => self.workers[w % nw].partitioned = true,
            Op::Heal(w) => self.workers[w % nw].partitioned = false,
            Op::Rescue => {
                for r in self.table.rescue(self.now) {
                    assert!(self.holder.remove(&r.key).is_some(), "rescued {} nobody held", r.key);
                }
                for row in self.table.rows() {
                    if row.state == DispatchState::Claimed {
                        assert!(
                            row.lease_until_ms.unwrap() >= self.now,
                            "{} still claimed after the rescuer ran, lease expired",
                            row.key
                        );
                    }
                }
            }
            Op::Coordinate(at_once) => self.coordinate(at_once),
            Op::TakeOver => {
                let old = self.fence;
                self.fence = self.table.take_run(run_id(), "coordinator-2");
                assert!(self.fence.epoch > old.epoch);
                let late = self.table.enqueue(old, &[], self.now);
                assert!(late.is_err(), "a write of the coordinator that was taken over is refused");
                assert!(self.table.forget(old, &[]).is_err());
                assert!(self.table.take_finished(old).is_err());
                assert!(self.table.withdraw(old, &[]).is_err());
            }
        }
        self.self_fence();
    }

    fn claim(&mut self, w: usize, n: u32) {
        let now = self.now;
        let lease = self.lease;
        let wk = &mut self.workers[w];
        let (Some(s), false) = (wk.session.clone(), wk.partitioned) else { return };
        for c in self.table.claim(&s, &wk.spec.queues, n, now, lease) {
            assert_eq!(c.payload, payload(c.key.idx, c.key.attempt));
            assert!(
                self.holder.insert(c.key, (s.clone(), c.epoch)).is_none(),
                "{} claimed while held",
                c.key
            );
            wk.running.insert(c.key, (c.epoch, now + lease));
        }
    }

    fn beat(&mut self, w: usize) {
        let now = self.now;
        let lease = self.lease;
        let wk = &mut self.workers[w];
        let (Some(s), false) = (wk.session.clone(), wk.partitioned) else { return };
        match self.table.heartbeat(&s, now, lease) {
            Beat::Superseded => {
                wk.session = None;
                wk.running.clear();
            }
            Beat::Held(held) => {
                for (key, epoch) in &held {
                    assert_eq!(
                        self.holder.get(key),
                        Some(&(s.clone(), *epoch)),
                        "{key} held by another"
                    );
                }
                // What it runs and is not listed was taken away: it stops it.
                wk.running.retain(|k, (epoch, until)| {
                    let listed = held.contains(&(*k, *epoch));
                    if listed {
                        *until = now + lease;
                    }
                    listed
                });
            }
        }
    }

    /// A worker stops what it runs once the lease it counts on has passed (its heartbeats did
    /// not get through): by then the rescuer may have given the attempt to another.
    fn self_fence(&mut self) {
        let now = self.now;
        for w in &mut self.workers {
            w.running.retain(|_, (_, until)| now <= *until);
        }
    }

    fn report(&mut self, r: &Report) {
        let outcome = if r.ok { OK } else { FAILED };
        let stale_at = self.table.stale().len();
        let answer = self.table.complete(&r.session, r.key, r.epoch, outcome, self.now);
        self.judge(r, answer, stale_at);
    }

    /// A batch of one worker's reports: each answer judged in order, as if sent one by one.
    fn report_all(&mut self, batch: &[Report]) {
        let Some(session) = batch.first().map(|r| r.session.clone()) else { return };
        assert!(batch.iter().all(|r| r.session == session), "one process's reports");
        let reports: Vec<WorkerReport> = batch
            .iter()
            .map(|r| WorkerReport {
                key: r.key,
                epoch: r.epoch,
                outcome: (if r.ok { OK } else { FAILED }).to_owned(),
            })
            .collect();
        let mut stale_at = self.table.stale().len();
        let answers = self.table.complete_many(&session, &reports, self.now);
        assert_eq!(answers.len(), batch.len());
        for (r, answer) in batch.iter().zip(answers) {
            let stale = matches!(answer, Completion::Stale { .. });
            self.judge(r, answer, stale_at);
            stale_at += usize::from(stale);
        }
    }

    /// The answer to one report, checked against the ghost holder log (which it updates);
    /// `stale_at`: where its entry in the stale outcomes must be if it was refused.
    fn judge(&mut self, r: &Report, answer: Completion, stale_at: usize) {
        let before = self.holder.get(&r.key).cloned();
        match answer {
            Completion::Accepted => {
                assert_eq!(
                    before,
                    Some((r.session.clone(), r.epoch)),
                    "{} accepted from {:?} at epoch {}: not its holder at that epoch",
                    r.key,
                    r.session,
                    r.epoch
                );
                self.holder.remove(&r.key);
                if r.ok {
                    let n = self.successes.entry(r.key.idx).or_default();
                    *n += 1;
                    assert!(*n <= 1, "instance {} has two succeeded attempts", r.key.idx);
                }
            }
            Completion::AlreadyRecorded => panic!("a report is sent once in this world"),
            Completion::Stale { .. } => {
                assert_ne!(
                    before,
                    Some((r.session.clone(), r.epoch)),
                    "the holder's report refused"
                );
                let last = &self.table.stale()[stale_at];
                assert_eq!(
                    (last.key, last.epoch),
                    (r.key, r.epoch),
                    "a refused report is recorded"
                );
            }
        }
    }

    fn coordinate(&mut self, at_once: bool) {
        let ended = if at_once {
            let ended = self.table.take_finished(self.fence).unwrap();
            assert!(self.table.finished(run_id()).is_empty(), "taken rows are forgotten");
            ended
        } else {
            self.table.finished(run_id())
        };
        let mut next = Vec::new();
        for f in &ended {
            let inst = &mut self.instances[f.key.idx as usize];
            assert_eq!(f.key.attempt, inst.attempts, "only the latest attempt is dispatched");
            if f.state == DispatchState::Done && f.outcome.as_deref() == Some(OK) {
                inst.succeeded += 1;
            } else {
                inst.attempts += 1;
                next.push(NewDispatch {
                    idx: f.key.idx,
                    attempt: inst.attempts,
                    queue: queue_of(f.key.idx),
                    payload: payload(f.key.idx, inst.attempts),
                });
            }
        }
        let n = self.table.enqueue(self.fence, &next, self.now).unwrap();
        assert_eq!(n, next.len() as u64);
        if !at_once {
            let keys: Vec<AttemptKey> = ended.iter().map(|f| f.key).collect();
            assert_eq!(self.table.forget(self.fence, &keys).unwrap(), keys.len() as u64);
        }
    }

    fn check(&self) {
        let mut believed: BTreeMap<u32, &str> = BTreeMap::new();
        for w in &self.workers {
            let Some(s) = &w.session else { continue };
            for (key, (epoch, until)) in &w.running {
                let row = self.table.row(key).unwrap();
                assert_eq!(
                    row.state,
                    DispatchState::Claimed,
                    "{key} runs on {} but is not claimed",
                    s.name
                );
                assert_eq!(
                    (row.worker.as_deref(), row.incarnation),
                    (Some(s.name.as_str()), Some(s.incarnation))
                );
                assert_eq!(row.epoch, *epoch);
                assert_eq!(row.lease_until_ms, Some(*until));
                if let Some(other) = believed.insert(key.idx, &w.spec.name) {
                    panic!(
                        "instance {} runs under two live leases: {other} and {}",
                        key.idx, w.spec.name
                    );
                }
            }
        }
        for (idx, inst) in self.instances.iter().enumerate() {
            let idx = idx as u32;
            assert!(inst.succeeded <= 1, "instance {idx} succeeded twice");
            let rows: Vec<_> = self.table.rows().filter(|r| r.key.idx == idx).collect();
            let open = rows.iter().filter(|r| !r.state.is_terminal()).count();
            assert!(open <= 1, "instance {idx} has {open} attempts dispatched at once");
            if inst.succeeded == 0 {
                assert!(
                    !rows.is_empty(),
                    "instance {idx} was lost: not succeeded, nothing dispatched"
                );
            }
        }
        // No orphan lease: a live lease of a live process is on an attempt it runs, or on one
        // whose report it has in flight; a lease nobody works under is left to expire.
        for row in self.table.rows() {
            if row.state != DispatchState::Claimed || row.lease_until_ms.unwrap() < self.now {
                continue;
            }
            let Some(w) = self.workers.iter().find(|w| {
                w.session.as_ref().is_some_and(|s| {
                    Some(s.name.as_str()) == row.worker.as_deref()
                        && Some(s.incarnation) == row.incarnation
                })
            }) else {
                continue; // a dead process's: bounded below
            };
            let works = w.running.get(&row.key).is_some_and(|(e, _)| *e == row.epoch)
                || w.in_flight.iter().any(|r| r.key == row.key && r.epoch == row.epoch);
            assert!(
                works,
                "{} leased to {} at epoch {} but nobody works on it",
                row.key, w.spec.name, row.epoch
            );
        }
        for (s, died) in &self.dead {
            for row in self.table.rows() {
                if row.state == DispatchState::Claimed
                    && row.worker.as_deref() == Some(s.name.as_str())
                    && row.incarnation == Some(s.incarnation)
                {
                    let until = row.lease_until_ms.unwrap();
                    assert!(
                        until <= died + self.lease,
                        "{} of {s:?}, dead at {died}, leased until {until}: past one lease period",
                        row.key
                    );
                }
            }
        }
    }

    /// Partitions heal, crashed workers restart, reports arrive; then the workers and the
    /// coordinator work on: every instance succeeds within a bounded number of rounds.
    fn drain(&mut self) {
        for w in 0..self.workers.len() {
            self.apply(&Op::Heal(w));
            self.apply(&Op::Restart(w));
            while !self.workers[w].in_flight.is_empty() {
                self.apply(&Op::Deliver(w));
                self.check();
            }
        }
        let rounds = 4 + 2 * self.instances.len();
        for _ in 0..rounds {
            if self.instances.iter().all(|i| i.succeeded == 1) {
                return;
            }
            self.apply(&Op::Coordinate(true));
            for w in 0..self.workers.len() {
                self.apply(&Op::Beat(w));
                self.apply(&Op::Claim(w, 16));
                while !self.workers[w].running.is_empty() {
                    self.apply(&Op::Finish { w, pick: 0, ok: true, delay: false });
                }
                self.check();
            }
            self.apply(&Op::Coordinate(true));
            self.apply(&Op::Tick(1500));
            self.apply(&Op::Rescue);
            self.check();
        }
        let left: Vec<usize> =
            (0..self.instances.len()).filter(|&i| self.instances[i].succeeded == 0).collect();
        assert!(left.is_empty(), "instances never succeeded: {left:?}");
    }
}

/// `PROPTEST_CASES` when set (scripts/fuzz), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn protocol_invariants_hold_under_random_interleavings(
        workers in 1usize..5,
        instances in 1u32..9,
        lease in 50i64..5_000,
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let mut world = World::new(workers, instances, lease);
        for op in &ops {
            world.apply(op);
            world.check();
        }
        world.drain();
        // Every succeeded instance has exactly one accepted success.
        for idx in 0..instances {
            prop_assert_eq!(world.successes.get(&idx).copied(), Some(1), "instance {}", idx);
        }
    }
}

// Regression cases: one per bug class of issue 17.

fn spec(name: &str) -> WorkerSpec {
    WorkerSpec { name: name.to_owned(), host: "h".into(), queues: vec!["q".into()], slots: 1 }
}

fn one_attempt(lease_holder: &str) -> (Table, Fence, Session, AttemptKey, i64) {
    let mut t = Table::new();
    let fence = t.take_run(run_id(), "c");
    let item = NewDispatch { idx: 0, attempt: 1, queue: "q".into(), payload: "{}".into() };
    t.enqueue(fence, &[item], T0).unwrap();
    let s = t.register(&spec(lease_holder), T0);
    let c = t.claim(&s, &["q".into()], 1, T0, 1_000);
    assert_eq!(c.len(), 1);
    (t, fence, s, c[0].key, c[0].epoch)
}

/// River #1302: the rescuer overwrote a job that completed between its read and its write.
/// Here the rescue of an expired lease whose outcome arrived first leaves the attempt done.
#[test]
fn rescuer_never_overwrites_a_completed_attempt() {
    let (mut t, _, s, key, epoch) = one_attempt("w");
    // The lease expired, but the outcome arrives before the rescuer runs: nobody else holds
    // the attempt, so it is accepted.
    assert_eq!(t.complete(&s, key, epoch, OK, T0 + 5_000), Completion::Accepted);
    assert_eq!(t.rescue(T0 + 5_001), vec![]);
    let row = t.row(&key).unwrap();
    assert_eq!(
        (row.state, row.epoch, row.outcome.as_deref()),
        (DispatchState::Done, epoch, Some(OK))
    );
    // The other order: rescued first, the outcome is then stale and changes nothing.
    let (mut t, _, s, key, epoch) = one_attempt("w");
    assert_eq!(t.rescue(T0 + 1_001).len(), 1);
    assert_eq!(
        t.complete(&s, key, epoch, OK, T0 + 1_002),
        Completion::Stale { current: Some((DispatchState::Lost, epoch + 1)) }
    );
    assert_eq!(t.row(&key).unwrap().outcome, None);
    assert_eq!(t.stale().len(), 1);
}

/// River #1258, Oban #429: a job stuck "running" for an hour after its worker crashed. Here an
/// attempt whose worker died is rescued by the first rescue after one lease period, not later.
#[test]
fn crashed_workers_attempt_is_rescued_within_one_lease_period() {
    let (mut t, _, _dead, key, epoch) = one_attempt("w");
    assert_eq!(t.rescue(T0 + 1_000), vec![], "not before the lease ends");
    let r = t.rescue(T0 + 1_001);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].key, r[0].epoch, r[0].worker.as_deref()), (key, epoch + 1, Some("w")));
    assert_eq!(t.row(&key).unwrap().state, DispatchState::Lost);
}

/// Oban #862: orphans were never rescued when a node name was reused, because the new node's
/// heartbeat kept the old node's work alive. Here a restarted worker of the same name is a new
/// incarnation: its heartbeat extends nothing of the dead process's, and its report of the
/// dead process's claim is refused.
#[test]
fn reused_worker_name_inherits_no_lease() {
    let (mut t, _, old, key, epoch) = one_attempt("w");
    let new = t.register(&spec("w"), T0 + 500);
    assert_eq!(new.incarnation, old.incarnation + 1);
    assert_eq!(t.heartbeat(&new, T0 + 900, 1_000), Beat::Held(vec![]));
    assert_eq!(t.row(&key).unwrap().lease_until_ms, Some(T0 + 1_000), "not extended");
    assert_eq!(
        t.complete(&new, key, epoch, OK, T0 + 950),
        Completion::Stale { current: Some((DispatchState::Claimed, epoch)) }
    );
    // The dead process's own session is superseded.
    assert_eq!(t.heartbeat(&old, T0 + 960, 1_000), Beat::Superseded);
    assert_eq!(t.rescue(T0 + 1_001).len(), 1);
}

/// A worker partitioned from the database past its lease: its attempt went to another worker,
/// and its late outcome is refused; the new holder's is accepted.
#[test]
fn late_outcome_of_a_partitioned_worker_is_refused() {
    let (mut t, fence, a, key, epoch) = one_attempt("a");
    assert_eq!(t.rescue(T0 + 2_000).len(), 1);
    let next = NewDispatch { idx: 0, attempt: 2, queue: "q".into(), payload: "{}".into() };
    t.forget(fence, &[key]).unwrap();
    t.enqueue(fence, &[next], T0 + 2_000).unwrap();
    let b = t.register(&spec("b"), T0 + 2_000);
    let c = t.claim(&b, &["q".into()], 1, T0 + 2_000, 1_000);
    assert_eq!(c.len(), 1);
    // a comes back and reports its attempt: the row is gone (forgotten), the report is stale.
    assert_eq!(t.heartbeat(&a, T0 + 2_100, 1_000), Beat::Held(vec![]));
    assert_eq!(t.complete(&a, key, epoch, OK, T0 + 2_100), Completion::Stale { current: None });
    // a cannot complete b's attempt either, even at b's epoch.
    assert!(matches!(
        t.complete(&a, c[0].key, c[0].epoch, OK, T0 + 2_100),
        Completion::Stale { .. }
    ));
    assert_eq!(t.complete(&b, c[0].key, c[0].epoch, OK, T0 + 2_200), Completion::Accepted);
    assert_eq!(t.complete(&b, c[0].key, c[0].epoch, OK, T0 + 2_300), Completion::AlreadyRecorded);
}

/// A handed-back attempt (SIGTERM drain) is claimable again at a new epoch; the old claim's
/// report is refused.
#[test]
fn handed_back_attempt_is_fenced() {
    let (mut t, _, s, key, epoch) = one_attempt("w");
    assert!(t.stop(&s));
    assert!(t.hand_back(&s, key, epoch));
    assert!(
        t.claim(&s, &["q".into()], 1, T0, 1_000).is_empty(),
        "a stopping worker claims nothing"
    );
    let other = t.register(&spec("v"), T0);
    let c = t.claim(&other, &["q".into()], 1, T0, 1_000);
    assert_eq!((c[0].key, c[0].epoch), (key, epoch + 2));
    assert!(matches!(t.complete(&s, key, epoch, OK, T0), Completion::Stale { .. }));
}

/// Coordinator fencing: once a standby took the run, the old coordinator's writes are refused.
#[test]
fn taken_over_coordinator_is_fenced() {
    let mut t = Table::new();
    let old = t.take_run(run_id(), "c1");
    let new = t.take_run(run_id(), "c2");
    assert_eq!(new.epoch, old.epoch + 1);
    let item = NewDispatch { idx: 0, attempt: 1, queue: "q".into(), payload: "{}".into() };
    assert!(t.enqueue(old, std::slice::from_ref(&item), T0).is_err());
    assert_eq!(t.rows().count(), 0);
    assert_eq!(t.enqueue(new, &[item], T0), Ok(1));
}
