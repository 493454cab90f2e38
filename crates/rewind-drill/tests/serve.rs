//! The serve loop in tokio's paused time: a missed schedule runs once, late; the next slot runs on
//! time; a drill never overlaps itself; stopping ends a sleep at once and lets a running drill
//! finish.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rewind_drill::serve::{Clock, Stopped, serve};
use rewind_drill::{Due, Planner};
use rewind_model::Schedule;
use tokio::sync::watch;

/// 2026-03-01T00:00:00Z.
const BASE: u64 = 1_772_323_200;

fn at(h: u64, m: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(BASE + h * 3600 + m * 60)
}

/// Wall time that starts at `start` and advances with tokio's (paused, auto-advancing) clock.
struct VirtualClock {
    start: SystemTime,
    t0: tokio::time::Instant,
}

impl VirtualClock {
    fn new(start: SystemTime) -> Self {
        Self { start, t0: tokio::time::Instant::now() }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> SystemTime {
        self.start + self.t0.elapsed()
    }
    fn sleep_until(&self, until: SystemTime) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(until.duration_since(self.now()).unwrap_or_default())
    }
}

#[derive(Debug, PartialEq)]
struct Ran {
    drill: String,
    slot: SystemTime,
    late: Option<Duration>,
    started: SystemTime,
}

fn sched(cron: &str) -> Schedule {
    Schedule { cron: cron.to_owned(), timezone: "UTC".to_owned() }
}

/// Drives `serve` with fake drills that take `takes` each, until `runs` drills have ended, and
/// returns what ran. Fails if a drill ever overlaps itself.
async fn drive(
    planner: &mut Planner,
    clock: &VirtualClock,
    takes: &BTreeMap<&str, Duration>,
    runs: usize,
) -> (Vec<Ran>, Stopped) {
    let (tx, rx) = watch::channel(false);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let running: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let stopped = serve(
        planner,
        clock,
        |due: Due| {
            let (ran, running, tx) = (ran.clone(), running.clone(), tx.clone());
            let takes = takes.get(due.drill.as_str()).copied().unwrap_or_default();
            let started = clock.now();
            async move {
                {
                    let mut r = running.lock().expect("lock");
                    let n = r.entry(due.drill.clone()).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "{} overlaps itself", due.drill);
                }
                tokio::time::sleep(takes).await;
                running.lock().expect("lock").entry(due.drill.clone()).and_modify(|n| *n -= 1);
                let mut ran = ran.lock().expect("lock");
                ran.push(Ran { drill: due.drill, slot: due.slot, late: due.late, started });
                if ran.len() == runs {
                    let _ = tx.send(true);
                }
                started
            }
        },
        rx,
    )
    .await;
    let ran = std::mem::take(&mut *ran.lock().expect("lock"));
    (ran, stopped)
}

#[tokio::test(start_paused = true)]
async fn a_missed_schedule_runs_once_late_then_the_next_slot_on_time() {
    // Hourly; last ran at 01:00; the server was down from then until 03:20 (02:00 and 03:00
    // missed).
    let last = BTreeMap::from([("hourly".to_owned(), at(1, 0))]);
    let hourly = sched("0 * * * *");
    let mut planner = Planner::new([("hourly", &hourly)], &last, at(3, 20)).expect("plannable");
    let clock = VirtualClock::new(at(3, 20));
    let takes = BTreeMap::from([("hourly", Duration::from_secs(600))]);
    let (ran, stopped) = drive(&mut planner, &clock, &takes, 3).await;
    assert_eq!(stopped, Stopped::Asked);
    let late = Some(Duration::from_secs(20 * 60));
    assert_eq!(
        ran,
        vec![
            Ran { drill: "hourly".into(), slot: at(3, 0), late, started: at(3, 20) },
            Ran { drill: "hourly".into(), slot: at(4, 0), late: None, started: at(4, 0) },
            Ran { drill: "hourly".into(), slot: at(5, 0), late: None, started: at(5, 0) },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_drill_longer_than_its_period_never_overlaps_itself() {
    // Every 15 minutes, taking 40: each run is followed by one late run for the latest slot
    // missed meanwhile. Beside it, a daily drill due at 01:00 waits for it and runs late.
    let quarter = sched("*/15 * * * *");
    let daily = sched("0 1 * * *");
    let mut planner =
        Planner::new([("quarter", &quarter), ("daily", &daily)], &BTreeMap::new(), at(0, 50))
            .expect("plannable");
    let clock = VirtualClock::new(at(0, 50));
    let takes = BTreeMap::from([
        ("quarter", Duration::from_secs(40 * 60)),
        ("daily", Duration::from_secs(10 * 60)),
    ]);
    let (ran, _) = drive(&mut planner, &clock, &takes, 4).await;
    let seen: Vec<(&str, SystemTime, SystemTime, Option<u64>)> = ran
        .iter()
        .map(|r| (r.drill.as_str(), r.slot, r.started, r.late.map(|l| l.as_secs() / 60)))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("quarter", at(1, 0), at(1, 0), None),
            // Due at 01:00 beside quarter, started when it ended: late.
            ("daily", at(1, 0), at(1, 40), Some(40)),
            // 01:15, 01:30 and 01:45 passed while quarter and daily ran: one run, for 01:45,
            // late.
            ("quarter", at(1, 45), at(1, 50), Some(5)),
            ("quarter", at(2, 30), at(2, 30), None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_a_sleep_at_once() {
    let daily = sched("0 5 * * *");
    let mut planner =
        Planner::new([("daily", &daily)], &BTreeMap::new(), at(0, 0)).expect("plannable");
    let clock = VirtualClock::new(at(0, 0));
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(90)).await;
        let _ = tx.send(true);
    });
    let stopped = serve(&mut planner, &clock, |_| async { at(9, 9) }, rx).await;
    assert_eq!(stopped, Stopped::Asked);
    assert_eq!(clock.now(), at(0, 0) + Duration::from_secs(90), "no drill ran, no sleep finished");
}

#[tokio::test(start_paused = true)]
async fn stopping_during_a_drill_lets_it_finish_and_starts_no_other() {
    let a = sched("0 1 * * *");
    let b = sched("0 1 * * *");
    let mut planner =
        Planner::new([("a", &a), ("b", &b)], &BTreeMap::new(), at(0, 0)).expect("plannable");
    let clock = VirtualClock::new(at(0, 0));
    let (tx, rx) = watch::channel(false);
    let ended = Arc::new(Mutex::new(Vec::new()));
    let stopped = serve(
        &mut planner,
        &clock,
        |due: Due| {
            let (tx, ended) = (tx.clone(), ended.clone());
            let started = clock.now();
            async move {
                let _ = tx.send(true); // SIGTERM arrives while `a` runs
                tokio::time::sleep(Duration::from_secs(300)).await; // its cleanup, say
                ended.lock().expect("lock").push(due.drill);
                started
            }
        },
        rx,
    )
    .await;
    assert_eq!(stopped, Stopped::Asked);
    assert_eq!(*ended.lock().expect("lock"), ["a"], "a finished; b never started");
    assert_eq!(clock.now(), at(1, 5));
}

#[tokio::test(start_paused = true)]
async fn nothing_ahead_ends_the_loop() {
    let mut planner = Planner::new(std::iter::empty(), &BTreeMap::new(), at(0, 0)).expect("empty");
    let (_tx, rx) = watch::channel(false);
    let clock = VirtualClock::new(at(0, 0));
    assert_eq!(
        serve(&mut planner, &clock, |_| async { at(0, 0) }, rx).await,
        Stopped::NothingAhead
    );
}
