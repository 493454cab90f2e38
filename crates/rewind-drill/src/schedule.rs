//! When drills are due: the schedule planner of `rewind serve --drills DIR`.
//!
//! Sans-I/O: it reads no clock and sleeps nowhere. The caller passes `now` to [`Planner::poll`],
//! runs what it returns, tells [`Planner::finished`] when each run started, and sleeps until
//! [`Planner::next_wake`]. The same code answers a real server and a test in virtual time.
//!
//! The rules:
//! - a drill is due when one of its slots (a time its cron expression matches, in its time zone)
//!   lies after what is already covered: its last recorded start, or, for a drill never run,
//!   the server's start (a drill seen for the first time waits for its first slot);
//! - however many slots were missed (the server was down, or the drill's previous run lasted
//!   longer than its period), it runs ONCE, for the latest of them, and is marked late by how
//!   long after that slot it was handed out ([`Due::late`], beyond [`Planner::with_grace`]);
//! - a drill handed out is not handed out again until [`Planner::finished`]: never two runs of
//!   one drill at once, each drill at most once per slot.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use croner::Cron;
use rewind_model::Schedule;

/// A drill's schedule that cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("drill `{drill}`: `schedule` = {cron:?} is not a cron expression: {reason}")]
    Cron {
        /// The drill.
        drill: String,
        /// The expression.
        cron: String,
        /// What croner said.
        reason: String,
    },
    /// The time zone is not `UTC` or a fixed offset.
    #[error(
        "drill `{drill}`: `timezone` = {timezone:?} is not UTC or a fixed offset such as +02:00"
    )]
    Timezone {
        /// The drill.
        drill: String,
        /// The time zone, as written.
        timezone: String,
    },
    /// Two drills have one name: their history would be mixed up.
    #[error("two drill files name the drill `{0}`; drill names must be unique")]
    Duplicate(String),
}

/// A drill to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The drill's name.
    pub drill: String,
    /// The slot it runs for: the latest time its schedule matched, at or before `now`.
    pub slot: SystemTime,
    /// How long after its slot it was handed out, when more than the grace (the server was down,
    /// or busy with other drills): the drill is late.
    pub late: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    cron: Cron,
    tz: FixedOffset,
    /// Slots at or before this instant are done.
    covered: DateTime<Utc>,
    running: bool,
}

impl Entry {
    /// The latest slot at or before `now`, when it is not covered yet.
    fn due_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz);
        let slot = self.cron.find_previous_occurrence(&local, true).ok()?.with_timezone(&Utc);
        (slot > self.covered).then_some(slot)
    }

    /// The first slot after what is covered (it may be in the past: then the drill is due).
    fn next_slot(&self) -> Option<DateTime<Utc>> {
        let local = self.covered.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// The drills' schedules and what each has covered. See the module's rules.
#[derive(Debug)]
pub struct Planner {
    entries: Vec<Entry>,
    grace: Duration,
}

/// `UTC`, `Z` or `+HH:MM` / `-HH:MM`, as [`rewind_model::Drill`] accepts them.
fn offset(tz: &str) -> Option<FixedOffset> {
    if tz == "UTC" || tz == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

impl Planner {
    /// The default grace: a drill handed out within this of its slot is on time.
    pub const GRACE: Duration = Duration::from_secs(60);

    /// Plans the `drills` (name and schedule). `last_started` holds each drill's last recorded
    /// start (from history); `started` is when the server started: a drill with no history waits
    /// for its first slot at or after it.
    pub fn new<'a>(
        drills: impl IntoIterator<Item = (&'a str, &'a Schedule)>,
        last_started: &BTreeMap<String, SystemTime>,
        started: SystemTime,
    ) -> Result<Self, ScheduleError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (name, schedule) in drills {
            if entries.iter().any(|e| e.name == name) {
                return Err(ScheduleError::Duplicate(name.to_owned()));
            }
            let cron = schedule.cron.parse::<Cron>().map_err(|e| ScheduleError::Cron {
                drill: name.to_owned(),
                cron: schedule.cron.clone(),
                reason: e.to_string(),
            })?;
            let tz = offset(&schedule.timezone).ok_or_else(|| ScheduleError::Timezone {
                drill: name.to_owned(),
                timezone: schedule.timezone.clone(),
            })?;
            let covered = match last_started.get(name) {
                Some(at) => DateTime::<Utc>::from(*at),
                // A slot at the very instant of the start is not covered.
                None => DateTime::<Utc>::from(started) - TimeDelta::nanoseconds(1),
            };
            entries.push(Entry { name: name.to_owned(), cron, tz, covered, running: false });
        }
        Ok(Self { entries, grace: Self::GRACE })
    }

    /// A drill handed out within `grace` of its slot is on time (default [`Self::GRACE`]).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The drills due at `now`, in the order they were given, each at most once: they are
    /// running until [`Self::finished`].
    pub fn poll(&mut self, now: SystemTime) -> Vec<Due> {
        let now_utc = DateTime::<Utc>::from(now);
        let mut due = Vec::new();
        for e in self.entries.iter_mut().filter(|e| !e.running) {
            let Some(slot) = e.due_slot(now_utc) else { continue };
            let behind = (now_utc - slot).to_std().unwrap_or_default();
            e.running = true;
            e.covered = now_utc;
            due.push(Due {
                drill: e.name.clone(),
                slot: slot.into(),
                late: (behind > self.grace).then_some(behind),
            });
        }
        due
    }

    /// One drill due at `now`, the one whose slot is the oldest (so a frequent drill cannot
    /// starve the others), handed out like [`Self::poll`] does. A loop that runs drills one
    /// after the other asks for the next only when the previous has ended, so lateness is
    /// measured at each drill's actual start.
    pub fn next_due(&mut self, now: SystemTime) -> Option<Due> {
        let now_utc = DateTime::<Utc>::from(now);
        let (i, slot) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.running)
            .filter_map(|(i, e)| e.due_slot(now_utc).map(|s| (i, s)))
            .min_by_key(|(i, s)| (*s, *i))?;
        let e = self.entries.get_mut(i)?;
        let behind = (now_utc - slot).to_std().unwrap_or_default();
        e.running = true;
        e.covered = now_utc;
        Some(Due {
            drill: e.name.clone(),
            slot: slot.into(),
            late: (behind > self.grace).then_some(behind),
        })
    }

    /// The drill handed out by [`Self::poll`] or [`Self::next_due`] has ended; it actually started at `started` (it
    /// may have waited for others), which covers every slot up to then.
    pub fn finished(&mut self, drill: &str, started: SystemTime) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.name == drill) {
            e.running = false;
            e.covered = e.covered.max(started.into());
        }
    }

    /// When the next drill is due: the earliest next slot of the drills not running (in the past
    /// when one is due already); none when no drill has a slot ahead.
    pub fn next_wake(&self) -> Option<SystemTime> {
        self.entries
            .iter()
            .filter(|e| !e.running)
            .filter_map(Entry::next_slot)
            .min()
            .map(SystemTime::from)
    }

    /// The names of the drills planned, in order.
    pub fn drills(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-01T00:00:00Z plus `h` hours and `m` minutes.
    fn at(h: u64, m: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_772_323_200 + h * 3600 + m * 60)
    }

    fn sched(cron: &str, tz: &str) -> Schedule {
        Schedule { cron: cron.to_owned(), timezone: tz.to_owned() }
    }

    fn planner(
        s: &[(&str, Schedule)],
        last: &[(&str, SystemTime)],
        started: SystemTime,
    ) -> Planner {
        let last = last.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect();
        Planner::new(s.iter().map(|(n, s)| (*n, s)), &last, started).expect("plannable")
    }

    fn names(d: &[Due]) -> Vec<&str> {
        d.iter().map(|d| d.drill.as_str()).collect()
    }

    #[test]
    fn the_base_instant_is_midnight_utc() {
        assert_eq!(DateTime::<Utc>::from(at(0, 0)).to_rfc3339(), "2026-03-01T00:00:00+00:00");
    }

    #[test]
    fn a_new_drill_waits_for_its_first_slot_then_runs_on_time_once() {
        let mut p = planner(&[("d", sched("0 5 * * *", "UTC"))], &[], at(4, 0));
        assert!(p.poll(at(4, 0)).is_empty());
        assert_eq!(p.next_wake(), Some(at(5, 0)));
        let due = p.poll(at(5, 0));
        assert_eq!(due, vec![Due { drill: "d".into(), slot: at(5, 0), late: None }]);
        // Running: not handed out again, and no wake-up for it.
        assert!(p.poll(at(5, 0)).is_empty());
        assert_eq!(p.next_wake(), None);
        p.finished("d", at(5, 0));
        assert!(p.poll(at(6, 0)).is_empty(), "at most once per slot");
        assert_eq!(p.next_wake(), Some(at(29, 0)));
    }

    #[test]
    fn a_slot_at_the_very_start_counts() {
        let mut p = planner(&[("d", sched("0 5 * * *", "UTC"))], &[], at(5, 0));
        assert_eq!(names(&p.poll(at(5, 0))), ["d"]);
    }

    #[test]
    fn a_missed_schedule_runs_once_on_start_marked_late_by_how_much() {
        // Last ran yesterday at 05:00; the server was down at today's 05:00, started at 07:12.
        let mut p = planner(
            &[("d", sched("0 5 * * *", "UTC"))],
            &[("d", at(5, 0) - Duration::from_secs(86_400))],
            at(7, 12),
        );
        assert_eq!(p.next_wake(), Some(at(5, 0)), "in the past: due now");
        let due = p.poll(at(7, 12));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].slot, at(5, 0));
        assert_eq!(due[0].late, Some(Duration::from_secs(2 * 3600 + 12 * 60)));
        p.finished("d", at(7, 12));
        assert!(p.poll(at(7, 13)).is_empty());
        assert_eq!(p.next_wake(), Some(at(29, 0)));
    }

    #[test]
    fn two_missed_slots_make_one_run_for_the_latest() {
        let mut p = planner(&[("d", sched("0 * * * *", "UTC"))], &[("d", at(1, 0))], at(3, 30));
        let due = p.poll(at(3, 30));
        assert_eq!(due.len(), 1, "02:00 and 03:00 were missed: one run");
        assert_eq!(due[0].slot, at(3, 0));
        assert_eq!(due[0].late, Some(Duration::from_secs(30 * 60)));
        p.finished("d", at(3, 30));
        assert!(p.poll(at(3, 59)).is_empty());
        assert_eq!(p.next_wake(), Some(at(4, 0)));
        assert_eq!(p.poll(at(4, 0))[0].late, None, "the next slot is on time");
    }

    #[test]
    fn within_the_grace_is_on_time() {
        let mut p = planner(&[("d", sched("0 5 * * *", "UTC"))], &[], at(4, 0));
        assert_eq!(p.poll(at(5, 1))[0].late, None);
        let mut p = planner(&[("d", sched("0 5 * * *", "UTC"))], &[], at(4, 0))
            .with_grace(Duration::from_secs(10));
        assert_eq!(p.poll(at(5, 1))[0].late, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_run_longer_than_the_period_is_followed_by_one_late_run() {
        let mut p = planner(&[("d", sched("*/15 * * * *", "UTC"))], &[], at(0, 0));
        assert_eq!(p.poll(at(0, 0)).len(), 1);
        // Runs 40 minutes: 00:15 and 00:30 pass meanwhile, never a second run at once.
        assert!(p.poll(at(0, 15)).is_empty() && p.poll(at(0, 30)).is_empty());
        p.finished("d", at(0, 0));
        let due = p.poll(at(0, 40));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].slot, due[0].late), (at(0, 30), Some(Duration::from_secs(600))));
    }

    #[test]
    fn a_drill_started_after_waiting_covers_the_slots_before_its_start() {
        let mut p = planner(
            &[("a", sched("0 * * * *", "UTC")), ("b", sched("*/30 * * * *", "UTC"))],
            &[],
            at(0, 59),
        );
        assert_eq!(names(&p.poll(at(1, 0))), ["a", "b"]);
        p.finished("a", at(1, 0));
        // b waited 45 minutes for a: its 01:30 slot passed before it started.
        p.finished("b", at(1, 45));
        assert!(p.poll(at(1, 50)).is_empty());
        assert_eq!(p.next_wake(), Some(at(2, 0)));
    }

    #[test]
    fn next_due_hands_out_the_oldest_slot_first() {
        let mut p = planner(
            &[("often", sched("* * * * *", "UTC")), ("daily", sched("0 1 * * *", "UTC"))],
            &[("often", at(1, 0))],
            at(0, 0),
        );
        let first = p.next_due(at(1, 3)).expect("due");
        assert_eq!((first.drill.as_str(), first.slot), ("daily", at(1, 0)));
        assert_eq!(first.late, Some(Duration::from_secs(180)));
        assert_eq!(p.next_due(at(1, 3)).map(|d| d.slot), Some(at(1, 3)));
        assert_eq!(p.next_due(at(1, 3)), None, "both are running");
    }

    #[test]
    fn fixed_offsets_shift_the_slots() {
        // 05:00 at +02:00 is 03:00 UTC; at -09:30 it is 14:30 UTC.
        let mut p = planner(
            &[("east", sched("0 5 * * *", "+02:00")), ("west", sched("0 5 * * *", "-09:30"))],
            &[],
            at(0, 0),
        );
        assert_eq!(p.next_wake(), Some(at(3, 0)));
        assert_eq!(names(&p.poll(at(3, 0))), ["east"]);
        assert_eq!(p.next_wake(), Some(at(14, 30)));
        assert_eq!(names(&p.poll(at(14, 30))), ["west"]);
    }

    #[test]
    fn the_local_day_decides_the_weekday_and_the_date() {
        // 2026-03-01 is a Sunday. Monday 00:30 at +14:00 is Sunday 10:30 UTC.
        let mut p = planner(&[("d", sched("30 0 * * 1", "+14:00"))], &[], at(0, 0));
        assert_eq!(p.next_wake(), Some(at(10, 30)));
        // The last day of February, at -05:00, ends on March 1st at 05:00 UTC.
        let mut q = planner(
            &[("d", sched("0 23 28 2 *", "-05:00"))],
            &[],
            at(0, 0) - Duration::from_secs(3600 * 5),
        );
        assert_eq!(names(&q.poll(at(4, 0))), ["d"]);
        assert!(p.poll(at(10, 29)).is_empty());
    }

    #[test]
    fn a_year_boundary_is_crossed() {
        // 2025-12-31T23:30Z last ran a yearly drill; it is due at 2026-01-01T00:00Z.
        let new_year = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut p = planner(
            &[("d", sched("0 0 1 1 *", "UTC"))],
            &[("d", new_year - Duration::from_secs(365 * 86_400))],
            new_year - Duration::from_secs(1800),
        );
        assert_eq!(p.next_wake(), Some(new_year));
        assert!(p.poll(new_year - Duration::from_secs(1)).is_empty());
        assert_eq!(p.poll(new_year)[0].late, None);
    }

    #[test]
    fn bad_schedules_and_duplicates_are_refused() {
        let last = BTreeMap::new();
        let bad = sched("61 * * * *", "UTC");
        let e = Planner::new([("d", &bad)], &last, at(0, 0)).expect_err("bad cron");
        assert!(e.to_string().contains("\"61 * * * *\""), "{e}");
        let tz = sched("0 5 * * *", "Europe/Paris");
        let e = Planner::new([("d", &tz)], &last, at(0, 0)).expect_err("bad tz");
        assert!(e.to_string().contains("Europe/Paris"), "{e}");
        let ok = sched("0 5 * * *", "UTC");
        let e = Planner::new([("d", &ok), ("d", &ok)], &last, at(0, 0)).expect_err("dup");
        assert!(matches!(e, ScheduleError::Duplicate(ref n) if n == "d"), "{e}");
    }

    #[test]
    fn offsets() {
        assert_eq!(offset("UTC").map(|o| o.local_minus_utc()), Some(0));
        assert_eq!(offset("+02:00").map(|o| o.local_minus_utc()), Some(7200));
        assert_eq!(offset("-09:30").map(|o| o.local_minus_utc()), Some(-34_200));
        for bad in ["", "+2:00", "+15:00", "+02:60", "02:00", "+02:0x"] {
            assert_eq!(offset(bad), None, "{bad}");
        }
    }
}
