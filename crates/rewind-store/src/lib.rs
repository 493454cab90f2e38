//! rewind's checkpoint store: runs (with a snapshot of their workflow and targets), instances,
//! attempts and an append-only event log, on SQLite (embedded, WAL mode; the default) or
//! PostgreSQL.
//!
//! One trait, [`Store`]; one SQL implementation, [`SqlStore`], over sqlx's `Any` driver with a
//! migration set per backend. Queries are checked at run time (no live database at build time).
//! A run is driven by one process at a time: its `owner` column is a lease taken with
//! compare-and-set ([`Store::claim`]) and renewed by every commit; several workers sharing a run
//! would claim instances the same way.
//!
//! **Invariant:** only this crate knows sqlx and SQL. It stores what it is given: it knows
//! nothing of scheduling, executors or the clock (callers pass times in).

mod sql;

use std::future::Future;

use rewind_model::{AttemptOutcome, EventKind, InstanceState, RunId, RunState};

pub use sql::{
    Backend, DONE_CHANNEL, DispatchListener, DispatchedAttempt, LeaseRow, NOTIFY_CHANNEL, SqlStore,
};

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open checkpoint store {url}: {message}")]
    Open {
        /// URL as given (password removed).
        url: String,
        /// Why.
        message: String,
        /// The database error, when there is one.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// The URL names no supported backend.
    #[error("checkpoint store URL {0:?} is not sqlite://PATH or postgres://...")]
    BadUrl(String),
    /// A query failed.
    #[error("checkpoint store: {what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Another process took the run over: this one must stop writing.
    #[error("run {run} is no longer held by {owner}: another process took it over")]
    LeaseLost {
        /// The run.
        run: RunId,
        /// The owner that lost it.
        owner: String,
    },
    /// Live runs hold some of the targets (a target is restored by one live run at a time).
    #[error("{}", held_message(.0))]
    Held(Vec<Holder>),
    /// The operation is not allowed in the run's state (for example a retry of a run that
    /// succeeded): nothing was written.
    #[error("run {run} {why}")]
    Refused {
        /// The run.
        run: RunId,
        /// Why (`succeeded; a finished run is never run again`).
        why: String,
    },
    /// A coordinator's dispatch write refused: another coordinator took the run over since it
    /// read its lease epoch. Nothing was written; the coordinator must stop driving the run.
    #[error(transparent)]
    Fenced(#[from] rewind_dispatch::Fenced),
    /// A stored value cannot be read back.
    #[error("checkpoint store: corrupt value in {what}: {value:?}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// Who held a run's lease when it was read: what a takeover compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The owner, `host:pid:nonce`.
    pub owner: String,
    /// Its last heartbeat, Unix milliseconds.
    pub heartbeat_unix_ms: Option<i64>,
}

/// A target held by a live run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The target's id.
    pub target: String,
    /// The run that holds it.
    pub run: String,
}

fn held_message(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "another run took some of these targets at the same moment; look at `rewind status` and try again".to_owned();
    }
    let mut runs: Vec<(&str, Vec<&str>)> = Vec::new();
    for h in holders {
        match runs.iter_mut().find(|(r, _)| *r == h.run) {
            Some((_, ts)) => ts.push(&h.target),
            None => runs.push((&h.run, vec![&h.target])),
        }
    }
    let n = holders.len();
    let mut out = format!(
        "{n} target{} already held by a live run (a target is restored by one live run at a time):",
        if n == 1 { " is" } else { "s are" }
    );
    for (run, ts) in &runs {
        let listed: Vec<&str> = ts.iter().take(10).copied().collect();
        let more =
            if ts.len() > 10 { format!(" and {} more", ts.len() - 10) } else { String::new() };
        out.push_str(&format!("\n  run {run} holds {}{more}", listed.join(", ")));
    }
    out.push_str("\n  a run releases its targets when it finishes, fails or is cancelled (rewind cancel RUN_ID)");
    out
}

impl StoreError {
    /// True when the database was busy or locked by another process (SQLite `SQLITE_BUSY` or
    /// `SQLITE_LOCKED`, any extended code; PostgreSQL `55P03` lock_not_available), judged by
    /// the database's error code, not its message.
    pub fn is_locked(&self) -> bool {
        match self {
            Self::Query { source, .. } | Self::Open { source: Some(source), .. } => {
                is_lock_error(source)
            }
            _ => false,
        }
    }
}

/// Whether a database error says another connection holds a lock.
pub(crate) fn is_lock_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else { return false };
    let Some(code) = d.code() else { return false };
    if let Ok(n) = code.parse::<i32>() {
        // SQLite: the primary result code is the low byte of the extended one.
        matches!(n & 0xff, 5 | 6)
    } else {
        code == "55P03"
    }
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A run to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    /// Its id.
    pub id: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Workflow file as given.
    pub workflow_file: String,
    /// Workflow text (snapshot: a resume never re-reads the file).
    pub workflow_text: String,
    /// Targets file as given.
    pub targets_file: String,
    /// Targets text (snapshot).
    pub targets_text: String,
    /// Absolute folder of the workflow file: relative programs resolve against it.
    pub workdir: String,
    /// Absolute working directory of the `rewind run` that created the run.
    pub cwd: String,
    /// Restore point, RFC 3339.
    pub restore_point: String,
    /// Plan fingerprint.
    pub fingerprint: String,
    /// Virtual-time simulation.
    pub simulated: bool,
    /// Seed of jitter (and of simulated failures).
    pub seed: u64,
    /// Simulated failure probability per attempt.
    pub fail_rate: f64,
    /// Cap on running instances, if any.
    pub max_running: Option<u32>,
    /// Ready-queue policy (`critical-path` or `fifo`).
    pub priority: String,
    /// Number of instances.
    pub instances: u64,
    /// Number of targets.
    pub targets: u64,
    /// Lower bound on the makespan, seconds.
    pub lower_bound_s: f64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Origin of offsets, Unix milliseconds.
    pub started_unix_ms: i64,
    /// Staged waves: the cumulative target count at the end of each wave (empty: no waves).
    pub waves: Vec<u32>,
    /// A wave whose share of failed targets exceeds this halts the run (0 to 1).
    pub halt_rate: f64,
    /// Who started it, `user@host` (none for runs stored before this was recorded).
    pub started_by: Option<String>,
    /// Where its attempts execute (`resume` without `--dispatch` uses it).
    pub dispatch: Dispatch,
}

/// Where a run's attempts execute, stored with the run (`runs.dispatch`, migration 0008).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// In the process that drives the run.
    #[default]
    Local,
    /// On `rewind worker` processes (PostgreSQL only); any `rewind coordinate` may drive it.
    Workers,
}

impl Dispatch {
    /// The stored (and command-line) name: `local` or `workers`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Workers => "workers",
        }
    }
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "workers" => Ok(Self::Workers),
            other => Err(format!("{other:?} is not a dispatch mode (local or workers)")),
        }
    }
}

/// A stored run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// What it was created with.
    pub spec: NewRun,
    /// Its state.
    pub state: RunState,
    /// The last open wave, 1-based (staged runs).
    pub wave: u32,
    /// The latest offset recorded.
    pub clock_s: f64,
    /// When it ended.
    pub finished_s: Option<f64>,
    /// Why it ended the way it did, when that needs saying.
    pub reason: Option<String>,
    /// `rewind cancel` asked it to stop.
    pub cancel_requested: bool,
    /// The process driving it (`host:pid:nonce`), if any.
    pub owner: Option<String>,
    /// When the owner last committed, Unix milliseconds.
    pub heartbeat_unix_ms: Option<i64>,
}

/// An instance row to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInstance {
    /// Index in the plan.
    pub idx: u32,
    /// Instance key.
    pub key: String,
    /// Step id.
    pub step: String,
    /// Target UUID (target scope).
    pub target: Option<String>,
    /// Group value (group scope).
    pub group: Option<String>,
    /// Initial state (`pending` or `skipped`).
    pub state: InstanceState,
}

/// A stored instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    /// Index in the plan.
    pub idx: u32,
    /// Instance key.
    pub key: String,
    /// Step id.
    pub step: String,
    /// Target UUID (target scope).
    pub target: Option<String>,
    /// Group value (group scope).
    pub group: Option<String>,
    /// State.
    pub state: InstanceState,
    /// Attempts started.
    pub attempts: u32,
    /// Failed attempts.
    pub failures: u32,
    /// When a waiting retry may start.
    pub retry_at_s: Option<f64>,
    /// When it reached a terminal state.
    pub finished_s: Option<f64>,
    /// JSON output of its successful attempt.
    pub output: Option<String>,
    /// Last error.
    pub error: Option<String>,
}

/// What resuming a run needs of an instance: no keys or names, so millions load quickly.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRow {
    /// Index in the plan.
    pub idx: u32,
    /// State.
    pub state: InstanceState,
    /// Attempts started.
    pub attempts: u32,
    /// Failed attempts.
    pub failures: u32,
    /// When a waiting retry may start.
    pub retry_at_s: Option<f64>,
    /// When it reached a terminal state.
    pub finished_s: Option<f64>,
    /// JSON output.
    pub output: Option<String>,
}

/// A change to an instance row. `output` replaces the stored output only when set.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceUpdate {
    /// Index in the plan.
    pub idx: u32,
    /// New state.
    pub state: InstanceState,
    /// Attempts started.
    pub attempts: u32,
    /// Failed attempts.
    pub failures: u32,
    /// When a waiting retry may start.
    pub retry_at_s: Option<f64>,
    /// When it reached a terminal state.
    pub finished_s: Option<f64>,
    /// JSON output (on success).
    pub output: Option<String>,
    /// Last error (cleared when `None`).
    pub error: Option<String>,
}

/// One attempt (written when it starts, rewritten when it ends).
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// Instance index.
    pub idx: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Start offset.
    pub started_s: f64,
    /// End offset.
    pub ended_s: Option<f64>,
    /// How it ended; `None` while running (or when its orchestrator died).
    pub outcome: Option<AttemptOutcome>,
    /// Process exit code, for commands.
    pub exit_code: Option<i32>,
    /// Error message.
    pub error: Option<String>,
    /// Last 4 KiB of stdout.
    pub stdout_tail: Option<String>,
    /// Last 4 KiB of stderr.
    pub stderr_tail: Option<String>,
}

/// An event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Run offset.
    pub at_s: f64,
    /// Wall-clock time, RFC 3339.
    pub wall: String,
    /// What happened.
    pub kind: EventKind,
    /// Instance key, for instance events.
    pub key: Option<String>,
    /// JSON detail.
    pub detail: Option<String>,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// Global sequence number.
    pub seq: i64,
    /// The event.
    pub event: NewEvent,
}

/// A cheap summary of where a run is: two reads of it that compare equal saw the same run
/// (every commit advances the clock or appends an event; every end changes the state).
#[derive(Clone, Debug, PartialEq)]
pub struct RunMarker {
    /// Its state.
    pub state: RunState,
    /// Its clock.
    pub clock_s: f64,
    /// When it ended.
    pub finished_s: Option<f64>,
    /// The driving process, if any.
    pub owner: Option<String>,
    /// Its owner's last heartbeat.
    pub heartbeat_unix_ms: Option<i64>,
    /// `rewind cancel` asked it to stop.
    pub cancel_requested: bool,
    /// Its latest event's sequence number (0 when none).
    pub last_seq: i64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEnd {
    /// `succeeded`, `failed` or `cancelled`; or `halted` (a wave failed too often; the run
    /// keeps its targets and resumes).
    pub state: RunState,
    /// End offset.
    pub finished_s: f64,
    /// Why, when that needs saying.
    pub reason: Option<String>,
}

/// Everything one group commit writes, in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// The run's clock after this batch.
    pub clock_s: f64,
    /// Renewed lease, Unix milliseconds.
    pub heartbeat_unix_ms: i64,
    /// Instance rows.
    pub instances: Vec<InstanceUpdate>,
    /// Attempt rows (inserted or replaced).
    pub attempts: Vec<AttemptRecord>,
    /// Events.
    pub events: Vec<NewEvent>,
    /// Set when the run ends (or halts) with this batch.
    pub end: Option<RunEnd>,
    /// Set when a wave opens with this batch.
    pub wave: Option<u32>,
}

impl Batch {
    /// True when there is nothing but a clock and heartbeat to write.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.attempts.is_empty()
            && self.events.is_empty()
            && self.end.is_none()
            && self.wave.is_none()
    }
}

/// The checkpoint store.
pub trait Store: Send + Sync {
    /// Creates a run with all its instances and first events, atomically: on any error nothing
    /// is written. Instances are consumed in chunks, never all held at once. A real (not
    /// simulated) run takes a lock on each of its targets; if a live run holds any, nothing is
    /// written and the error is [`StoreError::Held`].
    fn create_run(
        &self,
        run: &NewRun,
        instances: &mut (dyn Iterator<Item = NewInstance> + Send),
        events: &[NewEvent],
    ) -> impl Future<Output = Result<()>> + Send;

    /// One run.
    fn run(&self, id: RunId) -> impl Future<Output = Result<Option<RunRecord>>> + Send;

    /// Every run, newest first.
    fn runs(&self) -> impl Future<Output = Result<Vec<RunRecord>>> + Send;

    /// A run's instances, by index.
    fn instances(&self, id: RunId) -> impl Future<Output = Result<Vec<InstanceRecord>>> + Send;

    /// A run's instance states, by index: what a resume needs, streamed from the database.
    fn instance_states(&self, id: RunId) -> impl Future<Output = Result<Vec<InstanceRow>>> + Send;

    /// A run's attempts, by instance and attempt.
    fn attempts(&self, id: RunId) -> impl Future<Output = Result<Vec<AttemptRecord>>> + Send;

    /// The instances of run `id` at indexes `idxs` (sorted, no repeats), by index: what a
    /// reader that holds the rest re-reads when those changed.
    fn instances_at(
        &self,
        id: RunId,
        idxs: &[u32],
    ) -> impl Future<Output = Result<Vec<InstanceRecord>>> + Send {
        async move {
            let all = self.instances(id).await?;
            Ok(all.into_iter().filter(|i| idxs.binary_search(&i.idx).is_ok()).collect())
        }
    }

    /// The attempts of the instances of run `id` at indexes `idxs` (sorted, no repeats), by
    /// instance and attempt.
    fn attempts_at(
        &self,
        id: RunId,
        idxs: &[u32],
    ) -> impl Future<Output = Result<Vec<AttemptRecord>>> + Send {
        async move {
            let all = self.attempts(id).await?;
            Ok(all.into_iter().filter(|a| idxs.binary_search(&a.idx).is_ok()).collect())
        }
    }

    /// A run's events, in order.
    fn events(&self, id: RunId) -> impl Future<Output = Result<Vec<EventRecord>>> + Send;

    /// Up to `limit` of a run's events with a sequence number above `after`, in order. (The
    /// default reads every event; [`SqlStore`] asks the database for the page.)
    fn events_after(
        &self,
        id: RunId,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<EventRecord>>> + Send {
        async move {
            let all = self.events(id).await?;
            Ok(all.into_iter().filter(|e| e.seq > after).take(limit as usize).collect())
        }
    }

    /// What changes whenever a run does: its state, clock, lease and latest event sequence
    /// number. `None` when there is no such run. (The default reads the run and its events;
    /// [`SqlStore`] reads one row.)
    fn run_marker(&self, id: RunId) -> impl Future<Output = Result<Option<RunMarker>>> + Send {
        async move {
            let Some(r) = self.run(id).await? else { return Ok(None) };
            let last_seq = self.events(id).await?.last().map_or(0, |e| e.seq);
            Ok(Some(RunMarker {
                state: r.state,
                clock_s: r.clock_s,
                finished_s: r.finished_s,
                owner: r.owner,
                heartbeat_unix_ms: r.heartbeat_unix_ms,
                cancel_requested: r.cancel_requested,
                last_seq,
            }))
        }
    }

    /// Writes a batch in one transaction and renews `owner`'s lease. Fails, writing nothing, if
    /// `owner` no longer holds the run. A batch that ends the run (other than `halted`)
    /// releases its target locks.
    fn commit(
        &self,
        id: RunId,
        owner: &str,
        batch: &Batch,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Takes the run's lease for `owner` if it is exactly as `expected` was read: no owner, or
    /// the same owner with the same heartbeat (compare-and-set on both, so an owner that
    /// heartbeats after it was judged stale keeps its run). Taking it bumps the lease's epoch,
    /// which fences the dispatch writes of every earlier holder (`SqlStore::lease_epoch`).
    fn claim(
        &self,
        id: RunId,
        owner: &str,
        expected: Option<&Holding>,
        now_unix_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The store's clock, Unix milliseconds: what every lease, heartbeat and claim is judged by
    /// (hosts' clocks may disagree; the database's is one). The default is this host's clock
    /// (SQLite: the store is on this host).
    fn clock_unix_ms(&self) -> impl Future<Output = Result<i64>> + Send {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        std::future::ready(Ok(now))
    }

    /// Gives the lease up.
    fn release(&self, id: RunId, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// Asks the run to stop (`rewind cancel`) and logs the operator action.
    fn request_cancel(
        &self,
        id: RunId,
        event: &NewEvent,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Whether `rewind cancel` asked the run to stop.
    fn cancel_requested(&self, id: RunId) -> impl Future<Output = Result<bool>> + Send;

    /// `rewind retry` (and `resume` of a halted run): failed and blocked instances back to
    /// pending with no failures counted, the run running again (a real run takes its target
    /// locks again: [`StoreError::Held`] if another live run took them meanwhile); logs the
    /// operator action. Returns how many instances were reset. A run that succeeded or was
    /// cancelled is finished: [`StoreError::Refused`], and nothing is written.
    fn reset_failed(&self, id: RunId, event: &NewEvent)
    -> impl Future<Output = Result<u64>> + Send;

    /// Sets a halted run running again with wave `wave` open and its failures kept as they are
    /// (`rewind resume --accept-failures`); logs the operator action. Any other run:
    /// [`StoreError::Refused`], and nothing is written.
    fn accept_wave(
        &self,
        id: RunId,
        wave: u32,
        event: &NewEvent,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The live runs holding any of `targets`.
    fn holders(&self, targets: &[String]) -> impl Future<Output = Result<Vec<Holder>>> + Send;

    /// Records a drill that ended. A drill id is written once: a second record with the same
    /// id is an error.
    fn record_drill(&self, drill: &DrillRecord) -> impl Future<Output = Result<()>> + Send;

    /// The drills recorded, of one name or all, oldest first.
    fn drills(&self, name: Option<&str>) -> impl Future<Output = Result<Vec<DrillRecord>>> + Send;

    /// One drill by id.
    fn drill(&self, id: &str) -> impl Future<Output = Result<Option<DrillRecord>>> + Send;
}

/// A drill that ended, as history keeps it. The store does not read `result`: it is the
/// drill's record as its owner (rewind-drill) encoded it.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillRecord {
    /// The drill's own id (a UUID).
    pub id: String,
    /// The drill file's `name`.
    pub name: String,
    /// The run it created, if it got that far.
    pub run_id: Option<String>,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
    /// When it started, Unix milliseconds (the order of history).
    pub started_unix_ms: i64,
    /// Whether it met every objective and every validation passed.
    pub passed: bool,
    /// Achieved recovery time, seconds (none when not every target was restored).
    pub rto_s: Option<f64>,
    /// Achieved recovery point, seconds (none when it was not measured).
    pub rpo_s: Option<f64>,
    /// The whole result, JSON.
    pub result: String,
}

/// The store a URL names: `sqlite://PATH` (created if missing) or `postgres://...`.
pub async fn open(url: &str) -> Result<SqlStore> {
    SqlStore::open(url).await
}
