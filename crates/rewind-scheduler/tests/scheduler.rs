//! The scheduler alone: no runtime, no clock, no database. Time is whatever the test says.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use rewind_model::{InstanceId, InstanceKey, Plan, TargetSet, TargetsFormat, Workflow};
use rewind_scheduler::{Change, Config, Dispatch, Outcome, Priority, Restored, Scheduler, State};

const T1: &str = "00000000-0000-4000-8000-000000000001";
const T2: &str = "00000000-0000-4000-8000-000000000002";
const T3: &str = "00000000-0000-4000-8000-000000000003";

fn plan(extra: &str, steps: &str) -> Plan {
    let text = format!("name = \"w\"\ntarget_kind = \"site\"\n{extra}\n{steps}");
    let wf = Workflow::parse("w.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let csv = format!("id,kind,shard\n{T1},site,s1\n{T2},site,s1\n{T3},site,s2\n");
    let targets = TargetSet::parse("t.csv", &csv, TargetsFormat::Csv).unwrap();
    Plan::build(wf, targets, "2022-04-05T07:33:00Z".parse().unwrap()).unwrap()
}

fn step(id: &str, scope: &str, needs: &[&str], extra: &str) -> String {
    let needs: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[steps]]\nid = \"{id}\"\nscope = \"{scope}\"\nneeds = [{}]\nestimate = \"1m\"\n{extra}\naction = {{ kind = \"command\", program = \"x\" }}\n",
        needs.join(", ")
    )
}

fn id(p: &Plan, key: &str) -> InstanceId {
    p.find(&key.parse::<InstanceKey>().unwrap()).unwrap_or_else(|| panic!("no {key}"))
}

fn keys(p: &Plan, d: &[Dispatch]) -> Vec<String> {
    d.iter().map(|d| p.key(d.id).to_string()).collect()
}

const S: Duration = Duration::from_secs(1);

#[test]
fn nothing_starts_before_its_dependencies_succeed() {
    let p = plan(
        "",
        &[
            step("pre", "run", &[], ""),
            step("a", "target", &["pre"], ""),
            step("post", "run", &["a"], ""),
        ]
        .concat(),
    );
    let mut s = Scheduler::new(&p, Config::default());
    assert_eq!(keys(&p, &s.poll(Duration::ZERO)), ["pre"]);
    assert!(s.poll(Duration::ZERO).is_empty(), "nothing else is ready");
    s.on_outcome(id(&p, "pre"), Outcome::Succeeded, S);
    let started = s.poll(S);
    assert_eq!(started.len(), 3);
    for d in &started[..2] {
        s.on_outcome(d.id, Outcome::Succeeded, 2 * S);
    }
    assert!(s.poll(2 * S).is_empty(), "post waits for every target");
    s.on_outcome(started[2].id, Outcome::Succeeded, 2 * S);
    assert_eq!(keys(&p, &s.poll(2 * S)), ["post"]);
    s.on_outcome(id(&p, "post"), Outcome::Succeeded, 3 * S);
    assert!(s.is_finished());
    assert_eq!(s.counts().succeeded, 5);
    assert_eq!(s.restored_targets(), 3);
    assert_eq!((0..3).map(|t| s.target_restored_at(t)).collect::<Vec<_>>(), [Some(2 * S); 3]);
}

/// A target counts as restored only when its own instances succeeded; a target with none (a
/// run with no target-scope steps, or all of its steps skipped by `when`) is restored when the
/// whole run is, never at its start (issue 11: "5/5 restored (100.0%)" for a run that failed).
#[test]
fn a_target_without_instances_of_its_own_is_restored_with_the_run() {
    let p = plan(
        "",
        &[step("shard", "group:shard", &[], ""), step("done", "run", &["shard"], "")].concat(),
    );
    let mut s = Scheduler::new(&p, Config::default());
    assert_eq!(s.restored_targets(), 0, "nothing is restored before anything ran");
    let started = s.poll(Duration::ZERO);
    assert_eq!(started.len(), 2);
    s.on_outcome(started[0].id, Outcome::Failed { retryable: false }, S);
    s.on_outcome(started[1].id, Outcome::Succeeded, S);
    assert!(s.is_finished());
    assert_eq!(s.restored_targets(), 0, "the run failed: no target is restored");
    assert!(!s.target_restored(0));

    let mut s = Scheduler::new(&p, Config::default());
    for d in s.poll(Duration::ZERO) {
        s.on_outcome(d.id, Outcome::Succeeded, S);
    }
    assert_eq!(s.restored_targets(), 0, "`done` has not run yet");
    let last = s.poll(S);
    s.on_outcome(last[0].id, Outcome::Succeeded, 2 * S);
    assert_eq!(s.restored_targets(), 3);
    assert_eq!(s.target_restored_at(2), Some(2 * S));

    // All of a target's own steps skipped by `when`: it follows the run too.
    let p = plan(
        "",
        &[step("pre", "run", &[], ""), step("a", "target", &["pre"], "when = { shard = \"s2\" }")]
            .concat(),
    );
    let mut s = Scheduler::new(&p, Config::default());
    let pre = s.poll(Duration::ZERO);
    s.on_outcome(pre[0].id, Outcome::Succeeded, S);
    assert_eq!(s.restored_targets(), 0, "T3's own step has not run; T1 and T2 wait for the run");
    let a = s.poll(S);
    s.on_outcome(a[0].id, Outcome::Succeeded, 2 * S);
    assert_eq!(s.restored_targets(), 3);
}

#[test]
fn longest_remaining_path_first_ties_to_earlier_targets() {
    let steps = [
        step("short", "target", &[], ""),
        "[[steps]]\nid = \"long\"\nscope = \"group:shard\"\nestimate = \"9h\"\naction = { kind = \"command\", program = \"x\" }\n".to_owned(),
    ]
    .concat();
    let p = plan("", &steps);
    let config =
        Config { max_running: Some(1), priority: Priority::CriticalPath, ..Config::default() };
    let mut s = Scheduler::new(&p, config);
    let mut order = Vec::new();
    let mut now = Duration::ZERO;
    while !s.is_finished() {
        for d in s.poll(now) {
            order.push(p.key(d.id).to_string());
            now += S;
            s.on_outcome(d.id, Outcome::Succeeded, now);
        }
    }
    assert_eq!(
        order,
        [
            "long/shard=s1",
            "long/shard=s2",
            &format!("short/{T1}"),
            &format!("short/{T2}"),
            &format!("short/{T3}")
        ]
    );
}

#[test]
fn fifo_takes_instances_in_ready_order() {
    let steps = [
        step("short", "target", &[], ""),
        "[[steps]]\nid = \"long\"\nscope = \"group:shard\"\nestimate = \"9h\"\naction = { kind = \"command\", program = \"x\" }\n".to_owned(),
    ]
    .concat();
    let p = plan("", &steps);
    let mut s = Scheduler::new(
        &p,
        Config { max_running: Some(1), priority: Priority::Fifo, ..Config::default() },
    );
    let first = s.poll(Duration::ZERO);
    assert_eq!(
        keys(&p, &first),
        [format!("short/{T1}")],
        "ready order is plan order for a fresh run"
    );
}

#[test]
fn pools_are_never_exceeded() {
    let p = plan("[resources]\ndb = 2\n", &step("copy", "target", &[], "resource = \"db\""));
    let mut s = Scheduler::new(&p, Config::default());
    let first = s.poll(Duration::ZERO);
    assert_eq!(first.len(), 2);
    assert!(s.poll(Duration::ZERO).is_empty(), "pool full");
    s.on_outcome(first[0].id, Outcome::Succeeded, S);
    assert_eq!(s.poll(S).len(), 1);
}

#[test]
fn max_running_caps_everything() {
    let p = plan("", &step("a", "target", &[], ""));
    let mut s = Scheduler::new(&p, Config { max_running: Some(2), ..Config::default() });
    assert_eq!(s.poll(Duration::ZERO).len(), 2);
    assert_eq!(s.counts().running, 2);
}

#[test]
fn a_failure_blocks_only_its_dependents() {
    let steps = [
        step("a", "target", &[], "retries = 0"),
        step("b", "target", &["a"], ""),
        step("c", "target", &["b"], ""),
        step("release", "group:shard", &["a"], ""),
        step("audit", "run", &["c"], ""),
    ]
    .concat();
    let p = plan("", &steps);
    let mut s = Scheduler::new(&p, Config::default());
    for d in s.poll(Duration::ZERO) {
        let outcome = if p.key(d.id).to_string() == format!("a/{T1}") {
            Outcome::Failed { retryable: true }
        } else {
            Outcome::Succeeded
        };
        s.on_outcome(d.id, outcome, S);
    }
    s.take_changes();
    let mut now = S;
    while !s.is_finished() {
        let ds = s.poll(now);
        assert!(!ds.is_empty(), "not stuck");
        now += S;
        for d in ds {
            s.on_outcome(d.id, Outcome::Succeeded, now);
        }
    }
    let state = |k: &str| s.state(id(&p, k));
    assert_eq!(state(&format!("a/{T1}")), State::Failed);
    for k in [format!("b/{T1}"), format!("c/{T1}"), "release/shard=s1".into(), "audit".into()] {
        assert_eq!(state(&k), State::Blocked, "{k}");
    }
    for k in [format!("c/{T2}"), format!("c/{T3}"), "release/shard=s2".into()] {
        assert_eq!(state(&k), State::Succeeded, "{k}: other targets carry on");
    }
    assert_eq!(s.restored_targets(), 2);
}

#[test]
fn failure_cascade_is_recorded_with_its_cause() {
    let p =
        plan("", &[step("a", "run", &[], "retries = 0"), step("b", "target", &["a"], "")].concat());
    let mut s = Scheduler::new(&p, Config::default());
    let a = s.poll(Duration::ZERO)[0].id;
    s.take_changes();
    s.on_outcome(a, Outcome::Failed { retryable: true }, S);
    let changes = s.take_changes();
    assert_eq!(changes[0], Change::Failed { id: a, at: S });
    assert_eq!(changes.len(), 4);
    assert!(
        changes[1..]
            .iter()
            .all(|c| matches!(c, Change::Blocked { by, at, .. } if *by == a && *at == S))
    );
}

#[test]
fn retries_follow_the_backoff_policy() {
    let p = plan(
        "",
        &step(
            "a",
            "run",
            &[],
            "retries = 3\nbackoff = { initial = \"5s\", max = \"12s\", factor = 2.0, jitter = false }",
        ),
    );
    let a = id(&p, "a");
    let mut s = Scheduler::new(&p, Config::default());
    let mut now = Duration::ZERO;
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        let d = s.poll(now);
        assert_eq!(d, [Dispatch { id: a, attempt }]);
        now += S;
        s.on_outcome(a, Outcome::Failed { retryable: true }, now);
        if let Some(wake) = s.next_wakeup() {
            delays.push(wake - now);
            assert!(s.poll(wake - Duration::from_millis(1)).is_empty(), "not before the delay");
            now = wake;
        }
    }
    assert_eq!(delays, [5 * S, 10 * S, 12 * S], "5s, doubled, capped at max");
    assert_eq!(s.state(a), State::Failed);
    assert_eq!((s.attempts(a), s.failures(a)), (4, 4));
}

#[test]
fn jitter_is_seeded_by_run_and_instance() {
    let p = plan(
        "",
        &step(
            "a",
            "target",
            &[],
            "backoff = { initial = \"10s\", max = \"10m\", factor = 2.0, jitter = true }",
        ),
    );
    let t1 = id(&p, &format!("a/{T1}"));
    let t2 = id(&p, &format!("a/{T2}"));
    let s7 = Scheduler::new(&p, Config { seed: 7, ..Config::default() });
    let s8 = Scheduler::new(&p, Config { seed: 8, ..Config::default() });
    for n in 1..=4 {
        let base = Duration::from_secs(10 * 2u64.pow(n - 1));
        let d = s7.retry_delay(t1, n);
        assert!(d >= base && d < 2 * base, "retry {n}: {d:?} within one extra delay of {base:?}");
        assert_eq!(
            d,
            Scheduler::new(&p, Config { seed: 7, ..Config::default() }).retry_delay(t1, n),
            "reproducible"
        );
    }
    assert_ne!(s7.retry_delay(t1, 1), s8.retry_delay(t1, 1), "the run's seed changes it");
    assert_ne!(s7.retry_delay(t1, 1), s7.retry_delay(t2, 1), "the instance changes it");
}

#[test]
fn a_permanent_failure_is_not_retried() {
    let p = plan("", &step("a", "run", &[], "retries = 5"));
    let mut s = Scheduler::new(&p, Config::default());
    let a = s.poll(Duration::ZERO)[0].id;
    s.on_outcome(a, Outcome::Failed { retryable: false }, S);
    assert_eq!(s.state(a), State::Failed);
    assert_eq!(s.next_wakeup(), None);
}

#[test]
fn cancel_stops_new_work_and_lets_running_attempts_report() {
    let p = plan(
        "[resources]\none = 1\n",
        &[step("a", "target", &[], "resource = \"one\""), step("b", "target", &["a"], "")].concat(),
    );
    let mut s = Scheduler::new(&p, Config::default());
    let running = s.poll(Duration::ZERO);
    assert_eq!(running.len(), 1);
    s.cancel(S);
    assert!(s.poll(S).is_empty());
    assert_eq!(s.counts().cancelled, 5);
    assert!(!s.is_finished(), "one attempt still running");
    s.on_outcome(running[0].id, Outcome::Cancelled, 2 * S);
    assert!(s.is_finished());
    assert_eq!(s.counts().cancelled, 6);
    assert_eq!(s.restored_targets(), 0);
}

#[test]
fn restore_never_reruns_succeeded_and_reruns_what_was_running() {
    let p = plan("", &[step("a", "target", &[], ""), step("b", "target", &["a"], "")].concat());
    let row = |state, attempts| Restored { state, attempts, failures: 0, retry_at: None };
    // a/T1 succeeded, a/T2 was running at the crash, a/T3 failed; b/* pending.
    let rows = [
        row(State::Succeeded, 1),
        row(State::Running, 2),
        row(State::Failed, 3),
        row(State::Pending, 0),
        row(State::Pending, 0),
        row(State::Pending, 0),
    ];
    let mut s = Scheduler::restore(&p, Config::default(), rows, 10 * S);
    let started = s.poll(10 * S);
    assert_eq!(keys(&p, &started), [format!("a/{T2}"), format!("b/{T1}")]);
    assert_eq!(started[0].attempt, 3, "the interrupted attempt keeps its number");
    assert_eq!(s.state(id(&p, &format!("b/{T3}"))), State::Blocked, "cascade recomputed");
    assert_eq!(s.counts().succeeded, 1);
}

#[test]
fn an_adopted_attempt_runs_on_holds_its_pool_slot_and_is_not_started_again() {
    let p = plan("[resources]\ndb = 2\n", &step("copy", "target", &[], "resource = \"db\""));
    let row = |state, attempts| Restored { state, attempts, failures: 0, retry_at: None };
    // copy/T1 was running (attempt 2) when the driver died and still runs on a worker.
    let rows = [row(State::Running, 2), row(State::Pending, 0), row(State::Pending, 0)];
    let mut s = Scheduler::restore(&p, Config::default(), rows, 10 * S);
    let t1 = id(&p, &format!("copy/{T1}"));
    assert!(s.adopt(t1));
    assert!(!s.adopt(t1), "adopted once");
    assert!(s.take_changes().is_empty(), "the store says running already");
    assert_eq!(s.state(t1), State::Running);
    let started = s.poll(10 * S);
    assert_eq!(keys(&p, &started), [format!("copy/{T2}")], "one slot left in the pool of 2");
    s.on_outcome(t1, Outcome::Succeeded, 11 * S);
    assert_eq!(s.attempts(t1), 2, "its outcome is the adopted attempt's");
    assert_eq!(keys(&p, &s.poll(11 * S)), [format!("copy/{T3}")], "never copy/T1 again");
    assert!(!s.adopt(id(&p, &format!("copy/{T3}"))), "a running instance is not adopted");
}

#[test]
fn restore_honours_a_pending_retry_delay() {
    let p = plan(
        "",
        &step("a", "run", &[], "retries = 2\nbackoff = { initial = \"30s\", jitter = false }"),
    );
    let rows =
        [Restored { state: State::Pending, attempts: 1, failures: 1, retry_at: Some(130 * S) }];
    let mut s = Scheduler::restore(&p, Config::default(), rows, 110 * S);
    assert!(s.poll(110 * S).is_empty());
    assert_eq!(s.next_wakeup(), Some(130 * S));
    assert_eq!(s.poll(130 * S).len(), 1);
}

#[test]
fn skipped_instances_count_as_satisfied() {
    let p = plan(
        "",
        &[step("a", "target", &[], "when = { shard = \"s2\" }"), step("b", "target", &["a"], "")]
            .concat(),
    );
    let mut s =
        Scheduler::new(&p, Config { priority: Priority::CriticalPath, ..Config::default() });
    assert_eq!(s.counts().skipped, 2);
    let first = keys(&p, &s.poll(Duration::ZERO));
    assert_eq!(first, [format!("a/{T3}"), format!("b/{T1}"), format!("b/{T2}")]);
}

#[test]
fn interrupted_attempts_do_not_count_as_failures() {
    let p = plan("", &step("a", "run", &[], "retries = 0"));
    let mut s = Scheduler::new(&p, Config::default());
    let a = s.poll(Duration::ZERO)[0].id;
    s.on_outcome(a, Outcome::Interrupted, S);
    assert_eq!((s.state(a), s.failures(a)), (State::Pending, 0));
    assert_eq!(s.poll(S), [Dispatch { id: a, attempt: 2 }]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn arb_plan() -> impl Strategy<Value = Plan> {
        let arb_step = (
            0u8..3,
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            prop::option::of(0u8..2),
            0u32..3,
        );
        prop::collection::vec(arb_step, 1..8).prop_map(|steps| {
            let mut text = String::from("[resources]\np0 = 1\np1 = 2\n");
            let mut body = String::new();
            for (i, (scope, needs, pool, retries)) in steps.iter().enumerate() {
                let scope = ["run", "target", "group:shard"][*scope as usize];
                let mut n: Vec<String> = if i == 0 {
                    vec![]
                } else {
                    needs.iter().map(|x| format!("s{}", x.index(i))).collect()
                };
                n.sort();
                n.dedup();
                let n: Vec<&str> = n.iter().map(String::as_str).collect();
                let mut extra =
                    format!("retries = {retries}\nbackoff = {{ initial = \"1s\", max = \"4s\" }}");
                if let Some(p) = pool {
                    extra.push_str(&format!("\nresource = \"p{p}\""));
                }
                body.push_str(&step(&format!("s{i}"), scope, &n, &extra));
            }
            text.push_str(&body);
            plan("", &text)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// For random plans and random outcomes: no instance starts before its dependencies are
        /// satisfied, pools are never exceeded, and every instance ends in a terminal state.
        #[test]
        fn random_outcomes_respect_dependencies_and_pools(
            p in arb_plan(),
            outcomes in prop::collection::vec(0u8..10, 0..400),
            cancel_at in prop::option::of(0usize..60),
        ) {
            let mut s = Scheduler::new(&p, Config { seed: 3, ..Config::default() });
            let caps: Vec<u32> = p.workflow().resources.iter().map(|r| r.capacity).collect();
            let mut running: Vec<InstanceId> = Vec::new();
            let mut now = Duration::ZERO;
            let mut draws = outcomes.into_iter().cycle();
            for round in 0..10_000 {
                if cancel_at == Some(round) {
                    s.cancel(now);
                }
                for d in s.poll(now) {
                    for dep in p.dependencies(d.id) {
                        prop_assert!(s.state(dep).satisfies(), "{} started before {}", p.key(d.id), p.key(dep));
                    }
                    running.push(d.id);
                }
                let mut used = vec![0u32; caps.len()];
                for r in &running {
                    if let Some(pool) = p.pool_of(*r) { used[pool] += 1; }
                }
                for (u, c) in used.iter().zip(&caps) {
                    prop_assert!(u <= c, "pool exceeded: {u} > {c}");
                }
                if running.is_empty() {
                    match s.next_wakeup() {
                        Some(t) => { now = now.max(t); continue; }
                        None => break,
                    }
                }
                // Finish one running attempt with a random outcome.
                let draw = draws.next().unwrap_or(0);
                let i = draw as usize % running.len();
                let id = running.swap_remove(i);
                now += Duration::from_millis(u64::from(draw) * 100 + 1);
                let outcome = match draw {
                    0..=5 => Outcome::Succeeded,
                    6 | 7 => Outcome::Failed { retryable: true },
                    8 => Outcome::Failed { retryable: false },
                    _ => if s.is_cancelling() { Outcome::Cancelled } else { Outcome::Succeeded },
                };
                s.on_outcome(id, outcome, now);
            }
            prop_assert!(s.is_finished(), "every instance ends: {:?}", s.counts());
            for i in p.ids() {
                prop_assert!(s.state(i).is_terminal());
            }
            prop_assert_eq!(s.counts().total(), p.len());
        }
    }
}

fn fresh(p: &Plan) -> Vec<Restored> {
    (0..p.len())
        .map(|_| Restored { state: State::Pending, attempts: 0, failures: 0, retry_at: None })
        .collect()
}

#[test]
fn staged_waves_hold_later_targets_until_the_wave_before_is_judged() {
    // Waves end after target 1 and after target 3; `pre` depends on no target (no wave), `post`
    // depends on every target (the last wave).
    let p = plan(
        "",
        &[
            step("pre", "run", &[], ""),
            step("a", "target", &["pre"], ""),
            step("b", "target", &["a"], ""),
            step("post", "run", &["b"], ""),
        ]
        .concat(),
    );
    let mut s =
        Scheduler::restore_staged(&p, Config::default(), fresh(&p), Duration::ZERO, &[1, 3], 1);
    assert_eq!(s.waves(), Some((1, 2)));
    assert_eq!(keys(&p, &s.poll(Duration::ZERO)), ["pre"]);
    assert_eq!(s.wave_ended(), None);
    s.on_outcome(id(&p, "pre"), Outcome::Succeeded, S);
    assert_eq!(keys(&p, &s.poll(S)), [format!("a/{T1}")], "only wave 1 starts");
    s.on_outcome(id(&p, &format!("a/{T1}")), Outcome::Succeeded, S);
    assert_eq!(keys(&p, &s.poll(S)), [format!("b/{T1}")]);
    assert_eq!(s.wave_ended(), None, "wave 1 is still running");
    s.on_outcome(id(&p, &format!("b/{T1}")), Outcome::Failed { retryable: false }, 2 * S);
    assert!(s.poll(2 * S).is_empty(), "wave 2 is held until the caller opens it");
    let end = s.wave_ended().unwrap();
    assert_eq!((end.wave, end.waves, end.targets, end.failed), (1, 2, 1, 1));
    assert!((end.failure_rate() - 1.0).abs() < f64::EPSILON);
    assert!(!s.is_finished(), "held instances are pending");
    assert_eq!(s.open_next_wave(), Some(2));
    assert_eq!(keys(&p, &s.poll(2 * S)), [format!("a/{T2}"), format!("a/{T3}")]);
    assert_eq!(s.wave_ended(), None, "the last wave is never judged: the run just ends");
    for t in [T2, T3] {
        s.on_outcome(id(&p, &format!("a/{t}")), Outcome::Succeeded, 3 * S);
    }
    for d in s.poll(3 * S) {
        s.on_outcome(d.id, Outcome::Succeeded, 4 * S);
    }
    // `post` needs b/T1, which failed: blocked; the run is finished.
    assert!(s.poll(4 * S).is_empty());
    assert!(s.is_finished());
    assert_eq!(s.state(id(&p, "post")), State::Blocked);
    assert_eq!(s.open_next_wave(), None);
}

#[test]
fn a_resumed_staged_run_keeps_its_open_wave() {
    let p = plan("", &[step("a", "target", &[], "")].concat());
    // Resumed with wave 2 of 3 open: targets 1 and 2 may start, target 3 waits.
    let mut s =
        Scheduler::restore_staged(&p, Config::default(), fresh(&p), Duration::ZERO, &[1, 2, 3], 2);
    assert_eq!(keys(&p, &s.poll(Duration::ZERO)), [format!("a/{T1}"), format!("a/{T2}")]);
    // One wave, or none: nothing is held.
    let mut s =
        Scheduler::restore_staged(&p, Config::default(), fresh(&p), Duration::ZERO, &[3], 1);
    assert_eq!(s.poll(Duration::ZERO).len(), 3);
    assert_eq!(s.waves(), None);
}
