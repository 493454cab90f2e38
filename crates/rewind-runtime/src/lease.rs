//! Who drives a run. A run has one owner at a time, `host:pid:nonce`, taken with the store's
//! compare-and-set. An owner is stale when it ran on this host and its process is gone (a crash
//! or `kill -9`: resume at once), or when its heartbeat is older than the run lease
//! ([`run_lease`]; another host).
//!
//! Heartbeats, leases and their ages are read on the store's clock ([`store_now_ms`]), not this
//! host's: hosts' clocks disagree, the database's is one. [`sync_clock`] measures the offset.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rewind_model::RunId;
use rewind_store::{Holding, RunRecord, Store};

use crate::RuntimeError;

/// How long a heartbeat stays valid for an owner on another host, unless `REWIND_LEASE_MS`
/// says otherwise ([`run_lease`]).
pub const LEASE: Duration = Duration::from_secs(60);

/// The run lease: `REWIND_LEASE_MS` (milliseconds; the attempts' lease too, see
/// [`crate::dispatch_lease`]), else [`LEASE`]. A driver heartbeats every third of it; an owner
/// on another host whose heartbeat is older is taken over.
pub fn run_lease() -> Duration {
    static LEASE_MS: OnceLock<Duration> = OnceLock::new();
    *LEASE_MS.get_or_init(|| {
        std::env::var("REWIND_LEASE_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(LEASE, Duration::from_millis)
    })
}

/// The store's clock minus this host's, milliseconds, as last measured by [`sync_clock`].
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// A wrong local clock, for tests: `REWIND_CLOCK_SKEW_MS` (signed milliseconds) is added to
/// every reading of this host's clock ([`now_unix_ms`]); [`store_now_ms`] must not care.
fn skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("REWIND_CLOCK_SKEW_MS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    })
}

/// The store's clock now, Unix milliseconds: this host's clock corrected by the offset
/// [`sync_clock`] measured (none measured yet: this host's clock). Every heartbeat, lease, claim
/// and rescue reads this.
pub fn store_now_ms() -> i64 {
    now_unix_ms().saturating_add(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// Measures the store's clock against this host's (one query; the offset is taken at the
/// middle of the round trip) for [`store_now_ms`]. Returns the offset, milliseconds.
pub async fn sync_clock<S: Store>(store: &S) -> Result<i64, RuntimeError> {
    let before = now_unix_ms();
    let theirs = store.clock_unix_ms().await?;
    let offset = clock_offset(before, theirs, now_unix_ms());
    CLOCK_OFFSET_MS.store(offset, Ordering::Relaxed);
    Ok(offset)
}

/// The store's clock minus ours, from a reading of theirs between ours `before` and `after`.
fn clock_offset(before: i64, theirs: i64, after: i64) -> i64 {
    theirs.saturating_sub(before + (after - before) / 2)
}

/// Who runs this process, and where: looked up once.
#[derive(Debug)]
pub struct Identity {
    /// The OS user (see [`username`]).
    pub user: String,
    /// This machine's name.
    pub host: String,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// This process's user and host, looked up once, on a blocking thread: the user's name comes
/// from `getpwuid`, which may ask NSS (LDAP, a network service), and the host's from a file.
pub async fn identity() -> &'static Identity {
    if let Some(i) = IDENTITY.get() {
        return i;
    }
    tokio::task::spawn_blocking(identity_now).await.unwrap_or_else(|_| identity_now())
}

/// [`identity`], looked up on this thread if nothing did before.
fn identity_now() -> &'static Identity {
    IDENTITY.get_or_init(|| Identity { user: lookup_user(), host: lookup_host() })
}

/// This machine's name (see [`identity`]; this looks it up on the calling thread the first
/// time).
pub fn hostname() -> String {
    identity_now().host.clone()
}

/// The OS user running this process (see [`identity`]; this looks it up on the calling thread
/// the first time).
pub fn username() -> String {
    identity_now().user.clone()
}

fn lookup_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn lookup_user() -> String {
    // The real user id's account, not `$USER` (unset in many services, and settable by anyone);
    // under sudo, who ran it too.
    let uid = nix::unistd::getuid();
    let name = match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    };
    match std::env::var("SUDO_USER") {
        Ok(by) if !by.is_empty() && by != name => format!("{name} (sudo by {by})"),
        _ => name,
    }
}

/// Milliseconds since the Unix epoch on this host's clock (see [`store_now_ms`] for the
/// store's).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .saturating_add(skew_ms())
}

static OWNER_NAME: OnceLock<String> = OnceLock::new();

/// Names this process in its owner string (`host:pid:NAME.nonce`; `rewind coordinate --name`),
/// before [`me`] is first called. `:` and white space become `-`. False if it was too late.
pub fn set_owner_name(name: &str) -> bool {
    let clean: String =
        name.chars().map(|c| if c == ':' || c.is_whitespace() { '-' } else { c }).collect();
    OWNER_NAME.set(clean).is_ok()
}

/// This process as a run owner: `host:pid:nonce` (`host:pid:NAME.nonce` when named).
pub fn me() -> &'static str {
    static ME: OnceLock<String> = OnceLock::new();
    ME.get_or_init(|| {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let nonce = match OWNER_NAME.get() {
            Some(name) => format!("{name}.{}", &nonce[..8]),
            None => nonce,
        };
        format!("{}:{}:{nonce}", hostname(), std::process::id())
    })
}

/// Whether `owner` can no longer be driving the run, judged at `now_unix_ms` on the store's
/// clock ([`store_now_ms`]): on this host, iff its process is gone; elsewhere, iff its
/// heartbeat is older than the run lease.
pub fn is_stale(owner: &str, heartbeat_unix_ms: Option<i64>, now_unix_ms: i64) -> bool {
    is_stale_after(owner, heartbeat_unix_ms, now_unix_ms, run_lease())
}

/// [`is_stale`] with the lease given.
pub fn is_stale_after(
    owner: &str,
    heartbeat_unix_ms: Option<i64>,
    now_unix_ms: i64,
    lease: Duration,
) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    if let (Some(host), Some(pid)) = (host, pid.and_then(|p| p.parse::<i32>().ok()))
        && host == hostname()
    {
        return !process_alive(pid);
    }
    let age = now_unix_ms.saturating_sub(heartbeat_unix_ms.unwrap_or(0));
    age > i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The right to drive one run, held until released.
#[derive(Debug)]
pub struct Lease {
    /// The run.
    pub run: RunId,
    /// The owner string written to the store.
    pub owner: String,
    /// The owner this lease replaced, if it took over a stale one.
    pub took_over: Option<String>,
}

impl Lease {
    /// Takes the run for this process, if no live process holds it.
    pub async fn acquire<S: Store>(
        store: &S,
        run: RunId,
    ) -> Result<(Self, RunRecord), RuntimeError> {
        // `me()` and `is_stale` read the host name: looked up off the async threads.
        identity().await;
        sync_clock(store).await?;
        let record = store.run(run).await?.ok_or(RuntimeError::NoSuchRun(run))?;
        let owner = me().to_owned();
        let now = store_now_ms();
        // A takeover compares the owner and the heartbeat it judged stale: an owner that
        // heartbeats in between keeps its run.
        let (expected, took_over) = match &record.owner {
            None => (None, None),
            Some(o) if o == &owner => return Ok((Self { run, owner, took_over: None }, record)),
            Some(o) if is_stale(o, record.heartbeat_unix_ms, now) => (
                Some(Holding { owner: o.clone(), heartbeat_unix_ms: record.heartbeat_unix_ms }),
                Some(o.clone()),
            ),
            Some(o) => return Err(busy(run, o, record.heartbeat_unix_ms, now)),
        };
        if !store.claim(run, &owner, expected.as_ref(), now).await? {
            let current =
                store.run(run).await?.and_then(|r| r.owner.map(|o| (o, r.heartbeat_unix_ms)));
            let (o, hb) = current.unwrap_or_else(|| ("another process".to_owned(), None));
            return Err(busy(run, &o, hb, now));
        }
        let record = store.run(run).await?.ok_or(RuntimeError::NoSuchRun(run))?;
        Ok((Self { run, owner, took_over }, record))
    }

    /// Gives the run up.
    pub async fn release<S: Store>(self, store: &S) -> Result<(), RuntimeError> {
        store.release(self.run, &self.owner).await?;
        Ok(())
    }
}

fn busy(run: RunId, owner: &str, heartbeat: Option<i64>, now: i64) -> RuntimeError {
    let age =
        heartbeat.map(|h| Duration::from_millis(u64::try_from(now.saturating_sub(h)).unwrap_or(0)));
    RuntimeError::Busy { run, owner: owner.to_owned(), heartbeat_age: age }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_local_owner_is_stale_at_once() {
        let host = hostname();
        let me = format!("{host}:{}:x", std::process::id());
        assert!(!is_stale(&me, Some(0), i64::MAX), "this process is alive whatever its heartbeat");
        // PID 0 is never a process here; pids near the maximum are almost surely unused.
        assert!(is_stale(&format!("{host}:0:x"), Some(now_unix_ms()), now_unix_ms()));
    }

    /// A host whose clock is an hour off judges a remote owner's heartbeat (written on the
    /// store's clock) right once it measured the offset, and wrong on its own clock.
    #[test]
    fn a_skewed_local_clock_judges_heartbeats_on_the_store_clock() {
        let lease = Duration::from_secs(3);
        let store_now = 1_800_000_000_000_i64;
        for skew in [3_600_000_i64, -3_600_000] {
            // Our clock reads `store_now + skew`; the store's read takes 4 ms.
            let ours = store_now + skew;
            let offset = clock_offset(ours - 2, store_now, ours + 2);
            assert_eq!(offset, -skew);
            let judged_now = ours + offset;
            let live = Some(store_now - 1_000);
            let dead = Some(store_now - 10_000);
            assert!(!is_stale_after("elsewhere:1:x", live, judged_now, lease), "skew {skew}");
            assert!(is_stale_after("elsewhere:1:x", dead, judged_now, lease), "skew {skew}");
            // On the local clock alone, one of the two is judged wrong.
            let wrong = if skew > 0 {
                is_stale_after("elsewhere:1:x", live, ours, lease)
            } else {
                !is_stale_after("elsewhere:1:x", dead, ours, lease)
            };
            assert!(wrong, "skew {skew}: the local clock should misjudge");
        }
    }

    #[test]
    fn a_remote_owner_is_stale_after_the_lease() {
        let now = now_unix_ms();
        assert!(!is_stale_after("elsewhere:1:x", Some(now - 1_000), now, LEASE));
        assert!(is_stale_after("elsewhere:1:x", Some(now - 61_000), now, LEASE));
        assert!(is_stale_after("elsewhere:1:x", None, now, LEASE));
    }
}
