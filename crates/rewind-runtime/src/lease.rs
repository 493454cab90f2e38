//! Who drives a run. A run has one owner at a time, `host:pid:nonce`, taken with the store's
//! compare-and-set. An owner is stale when it ran on this host and its process is gone (a crash
//! or `kill -9`: resume at once), or when its heartbeat is older than [`LEASE`] (another host).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rewind_model::RunId;
use rewind_store::{Holding, RunRecord, Store};

use crate::RuntimeError;

/// How long a heartbeat stays valid for an owner on another host.
pub const LEASE: Duration = Duration::from_secs(60);

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

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// This process as a run owner: `host:pid:nonce`.
pub fn me() -> &'static str {
    static ME: OnceLock<String> = OnceLock::new();
    ME.get_or_init(|| {
        format!("{}:{}:{}", hostname(), std::process::id(), uuid::Uuid::new_v4().simple())
    })
}

/// Whether `owner` can no longer be driving the run.
pub fn is_stale(owner: &str, heartbeat_unix_ms: Option<i64>, now_unix_ms: i64) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    if let (Some(host), Some(pid)) = (host, pid.and_then(|p| p.parse::<i32>().ok()))
        && host == hostname()
    {
        return !process_alive(pid);
    }
    let age = now_unix_ms.saturating_sub(heartbeat_unix_ms.unwrap_or(0));
    age > i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
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
        let record = store.run(run).await?.ok_or(RuntimeError::NoSuchRun(run))?;
        let owner = me().to_owned();
        let now = now_unix_ms();
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

    #[test]
    fn a_remote_owner_is_stale_after_the_lease() {
        let now = now_unix_ms();
        assert!(!is_stale("elsewhere:1:x", Some(now - 1_000), now));
        assert!(is_stale("elsewhere:1:x", Some(now - 61_000), now));
        assert!(is_stale("elsewhere:1:x", None, now));
    }
}
