//! How far a source's backups reach: the newest instant a recovery can be pinned to exactly,
//! read from the backups themselves (nothing is started, nothing is written into them).
//!
//! A time target is only proven when the log holds a commit after it: PostgreSQL stops *before*
//! the first commit after the target and says so, and MariaDB's binlogs must hold an event
//! stamped after the target's second, a second with no commit of its own (binlog times are whole
//! seconds). So the newest reachable instant is not a source's newest commit but just before it:
//! what a DR drill's restore point `latest` needs, and what its RPO is honestly measured from.
//!
//! - PostgreSQL, `archive`: the base backup's end (STOP TIME of its `.backup` history file, whole
//!   seconds) and the newest COMMIT record in the WAL archive (`pg_waldump`, newest segment
//!   first, down to the backup's first segment).
//! - PostgreSQL, `pgbackrest`: the oldest backup's end (`pgbackrest info`) and the newest COMMIT
//!   in the repository's archive (`pgbackrest repo-ls`, then each segment, newest first, fetched by
//!   `pgbackrest archive-get` into a private temporary directory and read by `pg_waldump`).
//! - MariaDB, `binlog`: the binlog headers the pre-check reads ([`crate::mariadb`]): the seconds
//!   with commits after the backup's position, the newest stamped event, the backup's end.
//!
//! [`Reach::newest_at_or_before`] answers with the rule [`crate::recover`]'s pre-check and its
//! judgement of the engine's evidence apply; [`newest_common`] finds the newest instant every
//! one of several sources reaches (a restore point for servers restored together).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proc::{RunAs, Tool};
use crate::{Engine, Error, Source, mariadb, pg, time};

/// Tools that read a little (`pg_waldump` of one segment, `pgbackrest info`, `archive-get`).
const SHORT: Duration = Duration::from_secs(300);

/// What a source's backups reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The source's engine.
    pub engine: Engine,
    /// The earliest instant a recovery can be pinned to (a base backup's end), when known.
    pub from: Option<SystemTime>,
    /// The newest commit the archive holds (MariaDB: whole seconds), if any.
    pub newest_commit: Option<SystemTime>,
    /// What was read, in the tools' words.
    pub evidence: Vec<String>,
    rule: Rule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// Any instant from `from` on that is before the newest commit.
    Wal,
    /// Whole seconds from `first` on, before the newest stamped event's second, in which nothing
    /// committed after the backup's position.
    Binlog { first: i64, busy: BTreeSet<i64>, last_event: Option<i64> },
}

/// `t` rounded down to the millisecond (instants before 1970 are not reached).
fn floor_ms(t: SystemTime) -> SystemTime {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn second_start(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0))
}

impl Reach {
    /// The newest instant (whole milliseconds) a recovery can be pinned to exactly.
    pub fn newest(&self) -> Option<SystemTime> {
        self.newest_at_or_before(None)
    }

    /// The newest instant (whole milliseconds) at or before `bound` (`None`: any) a recovery
    /// can be pinned to exactly: `None` when there is none.
    pub fn newest_at_or_before(&self, bound: Option<SystemTime>) -> Option<SystemTime> {
        match &self.rule {
            Rule::Wal => {
                let latest = floor_ms(self.newest_commit?.checked_sub(Duration::from_millis(1))?);
                let t = bound.map_or(latest, |b| floor_ms(b).min(latest));
                (self.from.is_none_or(|f| t >= f)).then_some(t)
            }
            Rule::Binlog { first, busy, last_event } => {
                let bound_s = bound.map(time::unix_floor);
                let mut s = (*last_event)? - 1;
                if let Some(b) = bound_s {
                    s = s.min(b);
                }
                while busy.contains(&s) {
                    s -= 1;
                }
                if s < *first {
                    return None;
                }
                Some(match bound {
                    Some(b) if bound_s == Some(s) => floor_ms(b),
                    _ => second_start(s) + Duration::from_millis(999),
                })
            }
        }
    }
}

/// The newest instant at or before `bound` that every one of `reaches` can be pinned to
/// exactly, if there is one.
pub fn newest_common(reaches: &[&Reach], bound: Option<SystemTime>) -> Option<SystemTime> {
    let mut bound = bound;
    loop {
        let mut t = None::<SystemTime>;
        for r in reaches {
            let n = r.newest_at_or_before(bound.or(t))?;
            t = Some(t.map_or(n, |t| t.min(n)));
        }
        let t = t?;
        if bound == Some(t) {
            return Some(t);
        }
        bound = Some(t);
    }
}

/// Reads how far `source` reaches. Its tools run as `run_as` (`None`: the engine's user when
/// running as root, else the current user), as a recovery's would.
pub async fn reach(source: &Source, run_as: Option<&str>) -> Result<Reach, Error> {
    let user = RunAs::resolve(run_as, source.engine().default_user())?;
    match source {
        Source::Archive { base_backup, wal_archive } => {
            archive(base_backup, wal_archive, &user).await
        }
        Source::Pgbackrest { stanza, config } => pgbackrest(stanza, config, &user).await,
        Source::Binlog { base_backup, binlogs } => {
            let (backup, binlogs) = (base_backup.clone(), binlogs.clone());
            tokio::task::spawn_blocking(move || binlog(&backup, &binlogs))
                .await
                .map_err(|e| Error::Transient(format!("mariadb: reading the binlogs: {e}")))?
        }
    }
}

/// A WAL segment file name: 24 hexadecimal digits.
fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The newest COMMIT record's time in `pg_waldump`'s output (`TZ=UTC`):
/// `rmgr: Transaction len ..., desc: COMMIT 2022-04-05 07:33:00.123456 UTC; ...`.
pub(crate) fn newest_commit_in(waldump: &str) -> Option<SystemTime> {
    waldump
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("desc: COMMIT ")?.1;
            time::parse_pg(rest.split(';').next()?)
        })
        .max()
}

/// `pg_waldump` of one segment: its newest commit, if it holds one.
async fn waldump(bin: &Path, user: &RunAs, segment: &Path) -> Result<Option<SystemTime>, Error> {
    let out = Tool::new(bin.join("pg_waldump"))
        .user(user)
        .envs(&[("TZ".into(), "UTC".into())])
        .arg("--rmgr=Transaction")
        .arg(segment)
        .arg(segment)
        .output(SHORT)
        .await?;
    // A segment switched early ends in zeros: pg_waldump reads to there and says so.
    if !out.status.success() && !out.stderr.contains("error in WAL record") {
        return Err(Error::Permanent(format!(
            "`pg_waldump {}` failed ({}): {}",
            segment.display(),
            out.status,
            crate::proc::tail(&out.stderr, 500)
        )));
    }
    Ok(newest_commit_in(&out.stdout))
}

/// The segment a backup label's `START WAL LOCATION: 0/13000028 (file 000000010000000000000013)`
/// names.
fn start_segment(label: &str) -> Option<String> {
    let v = pg::label_field(label, "START WAL LOCATION")?;
    let f = v.split_once("(file ")?.1.trim_end_matches(')').trim();
    is_segment(f).then(|| f.to_string())
}

async fn archive(base: &Path, wal: &Path, user: &RunAs) -> Result<Reach, Error> {
    pg::require_dir(base, "base backup")?;
    pg::require_dir(wal, "WAL archive")?;
    let (_, label) = pg::read_base(base).await?;
    let start_lsn = pg::label_field(&label, "START WAL LOCATION")
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .ok_or_else(|| {
            Error::Permanent(format!(
                "{}: no START WAL LOCATION in its backup_label",
                base.display()
            ))
        })?;
    let mut evidence = Vec::new();
    let from = match pg::backup_history(wal, &label, &start_lsn)? {
        Some((file, Some(stop))) => {
            evidence.push(format!("base backup {} ended by STOP TIME in {file}", base.display()));
            Some(stop + Duration::from_secs(1))
        }
        _ => {
            // Its end unknown, its start bounds it.
            evidence.push(format!(
                "base backup {}: no readable STOP TIME for START WAL LOCATION {start_lsn} in {}; its START TIME bounds it",
                base.display(),
                wal.display()
            ));
            pg::label_field(&label, "START TIME").and_then(|s| pg::parse_label_time(&s))
        }
    };
    let first = start_segment(&label);
    let mut segments: Vec<String> = std::fs::read_dir(wal)
        .map_err(|e| Error::Permanent(format!("cannot read {}: {e}", wal.display())))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_segment(n) && first.as_deref().is_none_or(|f| n.as_str() >= f))
        .collect();
    segments.sort_unstable_by(|a, b| b.cmp(a));
    let version = std::fs::read_to_string(base.join("PG_VERSION")).ok();
    let bin = pg::bindir(version.as_deref());
    let mut newest_commit = None;
    for seg in &segments {
        if let Some(t) = waldump(&bin, user, &wal.join(seg)).await? {
            evidence.push(format!(
                "newest commit in the WAL archive {}: {} in {seg}",
                wal.display(),
                time::rfc3339(t)
            ));
            newest_commit = Some(t);
            break;
        }
    }
    if newest_commit.is_none() {
        evidence.push(format!(
            "no commit in the WAL archive {} from the base backup on ({} segment(s) read)",
            wal.display(),
            segments.len()
        ));
    }
    Ok(Reach { engine: Engine::Postgres, from, newest_commit, evidence, rule: Rule::Wal })
}

async fn pgbackrest(stanza: &str, config: &Path, user: &RunAs) -> Result<Reach, Error> {
    if !config.is_file() {
        return Err(Error::Permanent(format!(
            "the pgBackRest configuration {} does not exist",
            config.display()
        )));
    }
    let tool = || {
        Tool::new("pgbackrest")
            .user(user)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--stanza={stanza}"))
    };
    let out = tool().args(["--output=json", "info"]).run_judged(SHORT, Error::Permanent).await?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|e| Error::Permanent(format!("pgbackrest info printed what is not JSON ({e})")))?;
    let st = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"].as_str() == Some(stanza)))
        .ok_or_else(|| {
            Error::Permanent(format!(
                "pgbackrest info ({}) lists no stanza `{stanza}`",
                config.display()
            ))
        })?;
    let backups = st["backup"].as_array().cloned().unwrap_or_default();
    let stamp = |b: &serde_json::Value, k: &str| {
        b["timestamp"][k].as_u64().and_then(|s| u32::try_from(s).ok()).map(time::from_unix)
    };
    // Whole seconds: a backup stamped to stop in second S ended before S + 1.
    let oldest =
        backups.iter().filter(|b| stamp(b, "stop").is_some()).min_by_key(|b| stamp(b, "stop"));
    let mut evidence = Vec::new();
    let (from, first) = match oldest {
        Some(b) => {
            evidence.push(format!(
                "pgBackRest stanza `{stanza}`: oldest backup {} stopped at {}",
                b["label"].as_str().unwrap_or("?"),
                stamp(b, "stop").map(time::rfc3339).unwrap_or_default()
            ));
            (
                stamp(b, "stop").map(|s| s + Duration::from_secs(1)),
                b["archive"]["start"].as_str().filter(|s| is_segment(s)).map(str::to_string),
            )
        }
        None => {
            return Err(Error::Permanent(format!(
                "pgBackRest stanza `{stanza}` ({}) has no backup: nothing can be recovered",
                config.display()
            )));
        }
    };
    let archive_id = st["archive"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["id"].as_str())
        .ok_or_else(|| {
            Error::Permanent(format!("pgBackRest stanza `{stanza}` has no WAL archive"))
        })?
        .to_string();
    let version = st["db"].as_array().and_then(|d| d.last()).and_then(|d| d["version"].as_str());
    let bin = pg::bindir(version);
    let listed = tool()
        .args(["repo-ls", "--recurse"])
        .arg(format!("archive/{stanza}/{archive_id}"))
        .run_judged(SHORT, Error::Permanent)
        .await?;
    let mut segments: Vec<String> = listed
        .stdout
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|n| n.get(..24).filter(|s| is_segment(s) && n[24..].starts_with('-')))
        .filter(|n| first.as_deref().is_none_or(|f| *n >= f))
        .map(str::to_string)
        .collect();
    segments.sort_unstable_by(|a, b| b.cmp(a));
    segments.dedup();
    let tmp = private_dir(user)?;
    let mut newest_commit = None;
    for seg in &segments {
        let to = tmp.path().join(seg);
        tool().arg("archive-get").arg(seg).arg(&to).run_judged(SHORT, Error::Permanent).await?;
        let found = waldump(&bin, user, &to).await?;
        let _ = std::fs::remove_file(&to);
        if let Some(t) = found {
            evidence.push(format!(
                "newest commit in pgBackRest stanza `{stanza}`'s archive: {} in {seg}",
                time::rfc3339(t)
            ));
            newest_commit = Some(t);
            break;
        }
    }
    if newest_commit.is_none() {
        evidence.push(format!(
            "no commit in pgBackRest stanza `{stanza}`'s archive from its oldest backup on ({} segment(s) read)",
            segments.len()
        ));
    }
    Ok(Reach { engine: Engine::Postgres, from, newest_commit, evidence, rule: Rule::Wal })
}

/// A temporary directory the tools' user writes into (removed when dropped).
fn private_dir(user: &RunAs) -> Result<tempfile::TempDir, Error> {
    let d = tempfile::Builder::new()
        .prefix("rewind-reach-")
        .tempdir()
        .map_err(|e| Error::io("cannot create a temporary directory", e))?;
    user.own(d.path())?;
    Ok(d)
}

fn binlog(backup: &Path, binlogs: &Path) -> Result<Reach, Error> {
    let loaded = mariadb::load(backup, binlogs)?;
    let r = mariadb::reach(&loaded);
    let mut evidence = vec![format!(
        "mariadb-backup {} at {}:{}",
        backup.display(),
        loaded.start.0,
        loaded.start.1
    )];
    if let Some(t) = r.newest_commit {
        evidence.push(format!("newest commit in {}: {}", binlogs.display(), time::rfc3339(t)));
    }
    if let Some(s) = r.last_event {
        evidence.push(format!("newest stamped event: {}", time::rfc3339(second_start(s))));
    }
    Ok(Reach {
        engine: Engine::Mariadb,
        from: Some(second_start(r.first)),
        newest_commit: r.newest_commit,
        evidence,
        rule: Rule::Binlog { first: r.first, busy: r.busy, last_event: r.last_event },
    })
}

/// What the binlogs after a backup allow, in whole seconds ([`mariadb::reach`]).
#[derive(Debug)]
pub(crate) struct BinlogReach {
    /// The first second an instant may be in (after the backup's end and its last commit).
    pub first: i64,
    /// The seconds with commits after the backup's position.
    pub busy: BTreeSet<i64>,
    /// The newest stamped event's second.
    pub last_event: Option<i64>,
    /// The newest commit.
    pub newest_commit: Option<SystemTime>,
}

impl BinlogReach {
    #[cfg(test)]
    pub(crate) fn into_reach(self) -> Reach {
        Reach {
            engine: Engine::Mariadb,
            from: Some(second_start(self.first)),
            newest_commit: self.newest_commit,
            evidence: Vec::new(),
            rule: Rule::Binlog { first: self.first, busy: self.busy, last_event: self.last_event },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn wal(from: Option<u64>, newest: Option<u64>) -> Reach {
        Reach {
            engine: Engine::Postgres,
            from: from.map(at),
            newest_commit: newest.map(|ms| at(ms) + Duration::from_micros(456)),
            evidence: Vec::new(),
            rule: Rule::Wal,
        }
    }

    fn binlog(first: i64, busy: &[i64], last_event: Option<i64>) -> Reach {
        Reach {
            engine: Engine::Mariadb,
            from: Some(second_start(first)),
            newest_commit: None,
            evidence: Vec::new(),
            rule: Rule::Binlog { first, busy: busy.iter().copied().collect(), last_event },
        }
    }

    #[test]
    fn wal_reaches_to_just_before_its_newest_commit() {
        let r = wal(Some(10_000), Some(20_123));
        assert_eq!(r.newest(), Some(at(20_122)), "strictly before the commit at 20.123456");
        assert_eq!(
            r.newest_at_or_before(Some(at(15_000) + Duration::from_micros(7))),
            Some(at(15_000))
        );
        assert_eq!(r.newest_at_or_before(Some(at(9_999))), None, "before the backup's end");
        assert_eq!(wal(Some(10_000), Some(9_000)).newest(), None, "no commit after the backup");
        assert_eq!(wal(Some(10_000), None).newest(), None);
    }

    #[test]
    fn binlog_reaches_a_quiet_second_before_its_newest_event() {
        // Events up to second 30; commits in 27 and 28 and 30.
        let r = binlog(20, &[27, 28, 30], Some(30));
        assert_eq!(r.newest(), Some(at(29_999)));
        assert_eq!(r.newest_at_or_before(Some(at(28_500))), Some(at(26_999)));
        assert_eq!(r.newest_at_or_before(Some(at(26_250))), Some(at(26_250)));
        assert_eq!(r.newest_at_or_before(Some(at(19_999))), None);
        assert_eq!(binlog(20, &[], None).newest(), None, "no stamped event");
        assert_eq!(binlog(20, &[19, 20], Some(21)).newest(), None);
    }

    #[test]
    fn the_common_instant_suits_every_source() {
        // The WAL source's newest commit is in second 29, which has a binlog commit: the common
        // instant is the end of the last quiet binlog second before it.
        let w = wal(Some(10_000), Some(29_400));
        let b = binlog(20, &[27, 29], Some(31));
        let t = newest_common(&[&w, &b], None).expect("a common instant");
        assert_eq!(t, at(28_999));
        assert_eq!(w.newest_at_or_before(Some(t)), Some(t));
        assert_eq!(b.newest_at_or_before(Some(t)), Some(t));
        // Bounded by the caller's clock.
        assert_eq!(newest_common(&[&w, &b], Some(at(26_500))), Some(at(26_500)));
        // None when one source reaches nothing.
        assert_eq!(newest_common(&[&w, &binlog(20, &[], None)], None), None);
        assert_eq!(newest_common(&[&w, &wal(Some(30_000), Some(40_000))], None), None);
    }

    #[test]
    fn waldump_commit_lines() {
        let out = "rmgr: Transaction len (rec/tot):     34/    34, tx:        745, lsn: 0/012C6380, prev 0/012C6320, desc: COMMIT 2026-12-05 18:30:23.209416 UTC\n\
                   rmgr: Transaction len (rec/tot):     66/    66, tx:        746, lsn: 0/012C6400, prev 0/012C6380, desc: COMMIT 2026-12-05 18:30:24.000001 UTC; inval msgs: catcache 7\n\
                   rmgr: Transaction len (rec/tot):     34/    34, tx:        747, lsn: 0/012C6500, prev 0/012C6400, desc: ABORT 2026-12-05 18:30:25.000000 UTC\n";
        let t = newest_commit_in(out).expect("a commit");
        assert_eq!(time::rfc3339(t), "2026-12-05T18:30:24.000001Z");
        assert_eq!(newest_commit_in("first record is after 0/1000028\n"), None);
        assert_eq!(
            start_segment("START WAL LOCATION: 0/1300028 (file 000000010000000000000013)\n")
                .as_deref(),
            Some("000000010000000000000013")
        );
    }
}
