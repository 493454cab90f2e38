//! The protocol as a pure state machine over an in-memory table: the specification the SQL
//! implementation in `rewind-store` is compared with, and what the property tests explore.
//!
//! [`Table`] holds what the database holds: the run leases' epochs, the dispatch rows, the
//! workers and the stale outcomes. Each method is one statement or transaction of the SQL
//! implementation, with the same answer. Time is an argument (`now`, Unix ms); so is the lease
//! period (`lease_ms`), so a caller may vary it.

use std::collections::BTreeMap;

use crate::{
    AttemptKey, Beat, Claimed, Completion, DispatchRow, DispatchState, Fence, Fenced, Finished,
    NewDispatch, Rescued, RunId, Session, StaleOutcome, WorkerReport, WorkerRow, WorkerSpec,
};

/// A run's lease as the dispatch protocol sees it: who holds it and at which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLease {
    /// The coordinator (`host:pid:nonce`).
    pub owner: String,
    /// Bumped by every take-over.
    pub epoch: i64,
}

/// The dispatch tables, in memory.
#[derive(Clone, Debug, Default)]
pub struct Table {
    leases: BTreeMap<RunId, RunLease>,
    rows: BTreeMap<AttemptKey, DispatchRow>,
    workers: BTreeMap<String, WorkerRow>,
    stale: Vec<StaleOutcome>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `owner` takes the run (a coordinator starting or taking over): the run lease's epoch is
    /// bumped, fencing every earlier holder. (The store's `claim` decides *whether* a process
    /// may take a run; this is what taking it does to the epoch.)
    pub fn take_run(&mut self, run: RunId, owner: &str) -> Fence {
        let lease =
            self.leases.entry(run).or_insert_with(|| RunLease { owner: String::new(), epoch: 0 });
        lease.epoch += 1;
        lease.owner = owner.to_owned();
        Fence { run, epoch: lease.epoch }
    }

    fn check(&self, fence: Fence) -> Result<(), Fenced> {
        match self.leases.get(&fence.run) {
            Some(l) if l.epoch == fence.epoch => Ok(()),
            _ => Err(Fenced { run: fence.run, epoch: fence.epoch }),
        }
    }

    /// The coordinator dispatches attempts of its run; an attempt already dispatched is left
    /// as it is. Returns how many rows were written.
    pub fn enqueue(
        &mut self,
        fence: Fence,
        items: &[NewDispatch],
        now: i64,
    ) -> Result<u64, Fenced> {
        self.check(fence)?;
        let mut n = 0;
        for it in items {
            let key = AttemptKey { run: fence.run, idx: it.idx, attempt: it.attempt };
            self.rows.entry(key).or_insert_with(|| {
                n += 1;
                DispatchRow {
                    key,
                    queue: it.queue.clone(),
                    state: DispatchState::Queued,
                    epoch: 0,
                    worker: None,
                    incarnation: None,
                    lease_until_ms: None,
                    enqueued_unix_ms: now,
                    payload: it.payload.clone(),
                    outcome: None,
                }
            });
        }
        Ok(n)
    }

    /// A worker process registers: its name's next incarnation. The row of an earlier process
    /// of that name is replaced; that process's session is no longer current (its heartbeats
    /// answer [`Beat::Superseded`], its claims take nothing).
    pub fn register(&mut self, spec: &WorkerSpec, now: i64) -> Session {
        let incarnation = self.workers.get(&spec.name).map_or(1, |w| w.incarnation + 1);
        self.workers.insert(
            spec.name.clone(),
            WorkerRow {
                name: spec.name.clone(),
                incarnation,
                host: spec.host.clone(),
                queues: spec.queues.clone(),
                slots: spec.slots,
                started_unix_ms: now,
                heartbeat_unix_ms: now,
                stopping: false,
            },
        );
        Session { name: spec.name.clone(), incarnation }
    }

    fn current(&self, s: &Session) -> Option<&WorkerRow> {
        self.workers.get(&s.name).filter(|w| w.incarnation == s.incarnation)
    }

    fn holds(row: &DispatchRow, s: &Session) -> bool {
        row.state == DispatchState::Claimed
            && row.worker.as_deref() == Some(s.name.as_str())
            && row.incarnation == Some(s.incarnation)
    }

    /// Up to `n` queued attempts of `queues`, oldest first (enqueue time, then key), become
    /// claimed by the session at their next epoch with a lease until `now + lease_ms`. A
    /// session that is not current or is stopping claims nothing.
    pub fn claim(
        &mut self,
        s: &Session,
        queues: &[String],
        n: u32,
        now: i64,
        lease_ms: i64,
    ) -> Vec<Claimed> {
        if self.current(s).is_none_or(|w| w.stopping) {
            return Vec::new();
        }
        let mut picked: Vec<(i64, AttemptKey)> = self
            .rows
            .values()
            .filter(|r| r.state == DispatchState::Queued && queues.contains(&r.queue))
            .map(|r| (r.enqueued_unix_ms, r.key))
            .collect();
        picked.sort();
        picked.truncate(n as usize);
        let mut out = Vec::with_capacity(picked.len());
        for (_, key) in picked {
            if let Some(r) = self.rows.get_mut(&key) {
                r.state = DispatchState::Claimed;
                r.epoch += 1;
                r.worker = Some(s.name.clone());
                r.incarnation = Some(s.incarnation);
                r.lease_until_ms = Some(now + lease_ms);
                out.push(Claimed { key, epoch: r.epoch, payload: r.payload.clone() });
            }
        }
        out
    }

    /// The session's heartbeat: its worker row's heartbeat, and every lease it holds that has
    /// not yet expired extended to `now + lease_ms`. An expired lease is not revived: it is the
    /// rescuer's, and the worker must stop that attempt.
    pub fn heartbeat(&mut self, s: &Session, now: i64, lease_ms: i64) -> Beat {
        match self.workers.get_mut(&s.name) {
            Some(w) if w.incarnation == s.incarnation => w.heartbeat_unix_ms = now,
            _ => return Beat::Superseded,
        }
        let mut held = Vec::new();
        for r in self.rows.values_mut() {
            if Self::holds(r, s) && r.lease_until_ms.is_some_and(|l| l >= now) {
                r.lease_until_ms = Some(now + lease_ms);
                held.push((r.key, r.epoch));
            }
        }
        Beat::Held(held)
    }

    /// The session reports an attempt's outcome, fenced by the epoch of its claim: accepted
    /// only if the session holds the attempt at exactly that epoch; otherwise recorded as
    /// stale, the attempt untouched.
    pub fn complete(
        &mut self,
        s: &Session,
        key: AttemptKey,
        epoch: i64,
        outcome: &str,
        now: i64,
    ) -> Completion {
        match self.rows.get_mut(&key) {
            Some(r) if Self::holds(r, s) && r.epoch == epoch => {
                r.state = DispatchState::Done;
                r.outcome = Some(outcome.to_owned());
                return Completion::Accepted;
            }
            Some(r)
                if r.state == DispatchState::Done
                    && r.worker.as_deref() == Some(s.name.as_str())
                    && r.incarnation == Some(s.incarnation)
                    && r.epoch == epoch =>
            {
                return Completion::AlreadyRecorded;
            }
            _ => {}
        }
        let current = self.rows.get(&key).map(|r| (r.state, r.epoch));
        self.stale.push(StaleOutcome {
            key,
            epoch,
            worker: s.name.clone(),
            incarnation: s.incarnation,
            outcome: outcome.to_owned(),
            at_unix_ms: now,
        });
        Completion::Stale { current }
    }

    /// A batch of reports of the session: each as [`Table::complete`], in order (the SQL does
    /// it in one transaction).
    pub fn complete_many(
        &mut self,
        s: &Session,
        reports: &[WorkerReport],
        now: i64,
    ) -> Vec<Completion> {
        reports.iter().map(|r| self.complete(s, r.key, r.epoch, &r.outcome, now)).collect()
    }

    /// The session hands an attempt it holds back (a worker draining on SIGTERM before it
    /// started it): queued again at the next epoch, for any worker. False if it did not hold
    /// it at that epoch.
    pub fn hand_back(&mut self, s: &Session, key: AttemptKey, epoch: i64) -> bool {
        match self.rows.get_mut(&key) {
            Some(r) if Self::holds(r, s) && r.epoch == epoch => {
                r.state = DispatchState::Queued;
                r.epoch += 1;
                r.worker = None;
                r.incarnation = None;
                r.lease_until_ms = None;
                true
            }
            _ => false,
        }
    }

    /// The session stops claiming (SIGTERM). False if it is not current.
    pub fn stop(&mut self, s: &Session) -> bool {
        match self.workers.get_mut(&s.name) {
            Some(w) if w.incarnation == s.incarnation => {
                w.stopping = true;
                true
            }
            _ => false,
        }
    }

    /// The rescuer: every claimed attempt whose lease ended before `now` becomes lost at its
    /// next epoch. Nothing else is touched: a done attempt never (River #1302).
    pub fn rescue(&mut self, now: i64) -> Vec<Rescued> {
        let mut out = Vec::new();
        for r in self.rows.values_mut() {
            if r.state == DispatchState::Claimed && r.lease_until_ms.is_some_and(|l| l < now) {
                r.state = DispatchState::Lost;
                r.epoch += 1;
                out.push(Rescued { key: r.key, epoch: r.epoch, worker: r.worker.clone() });
            }
        }
        out
    }

    /// The run's attempts that ended (done or lost), by key: what the coordinator records.
    pub fn finished(&self, run: RunId) -> Vec<Finished> {
        self.rows
            .values()
            .filter(|r| r.key.run == run && r.state.is_terminal())
            .map(|r| Finished {
                key: r.key,
                state: r.state,
                epoch: r.epoch,
                worker: r.worker.clone(),
                outcome: r.outcome.clone(),
            })
            .collect()
    }

    /// The coordinator forgets ended attempts it recorded (rows not ended are kept). Returns
    /// how many rows went.
    pub fn forget(&mut self, fence: Fence, keys: &[AttemptKey]) -> Result<u64, Fenced> {
        self.check(fence)?;
        let mut n = 0;
        for k in keys {
            if k.run == fence.run && self.rows.get(k).is_some_and(|r| r.state.is_terminal()) {
                self.rows.remove(k);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The coordinator reads its run's ended attempts and forgets them at once: exactly
    /// [`Table::finished`] then [`Table::forget`] of what it returned (the SQL is one fenced
    /// `DELETE … RETURNING`). Nothing is read or removed if the fence is stale.
    pub fn take_finished(&mut self, fence: Fence) -> Result<Vec<Finished>, Fenced> {
        self.check(fence)?;
        let ended = self.finished(fence.run);
        let keys: Vec<AttemptKey> = ended.iter().map(|f| f.key).collect();
        self.forget(fence, &keys)?;
        Ok(ended)
    }

    /// The coordinator withdraws attempts of its run that no worker claimed: their queued rows
    /// go (claimed and ended rows are kept: a worker runs or ran them; keys of other runs are
    /// ignored). Returns how many went.
    pub fn withdraw(&mut self, fence: Fence, keys: &[AttemptKey]) -> Result<u64, Fenced> {
        self.check(fence)?;
        let mut n = 0;
        for k in keys {
            if k.run == fence.run
                && self.rows.get(k).is_some_and(|r| r.state == DispatchState::Queued)
            {
                self.rows.remove(k);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The run leases.
    pub fn leases(&self) -> &BTreeMap<RunId, RunLease> {
        &self.leases
    }

    /// Every dispatch row, by key.
    pub fn rows(&self) -> impl Iterator<Item = &DispatchRow> {
        self.rows.values()
    }

    /// One dispatch row.
    pub fn row(&self, key: &AttemptKey) -> Option<&DispatchRow> {
        self.rows.get(key)
    }

    /// Every worker, by name.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerRow> {
        self.workers.values()
    }

    /// The stale outcomes, in arrival order.
    pub fn stale(&self) -> &[StaleOutcome] {
        &self.stale
    }
}
