//! Scoring a drill and the record history keeps.

use std::time::Duration;

use rewind_model::Objectives;
use serde::{Deserialize, Serialize};

/// One target of the drill, as it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    /// The target's id.
    pub id: String,
    /// `as-new`: the id it was restored as (removed by the cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_id: Option<String>,
    /// Restored and validated (every instance of the target succeeded).
    pub restored: bool,
    /// Seconds from the drill's start to the target restored, when it was.
    pub restored_s: Option<f64>,
    /// Why not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One objective, scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveResult {
    /// `rto` or `rpo`.
    pub name: String,
    /// The objective, seconds.
    pub objective_s: f64,
    /// What was achieved, seconds (none: not achieved at all).
    pub achieved_s: Option<f64>,
    /// Met.
    pub passed: bool,
    /// `achieved 12.3s against 60s: met with 47.7s to spare`, or why it was missed and by how
    /// much.
    pub message: String,
}

/// A cleanup command, as it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CleanupStep {
    /// The command, filled.
    pub command: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its output's last line, or its error.
    pub said: String,
}

/// A drill started by a schedule (`rewind serve --drills DIR`), not by hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    /// The slot it ran for, RFC 3339 UTC.
    pub due_at: String,
    /// It started later than its slot allows (the server was down, or busy with other drills).
    pub late: bool,
    /// By how much, seconds, when late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_s: Option<f64>,
}

/// What was measured of a drill, for [`score`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// From the drill's start to every sampled target restored and validated; none when not
    /// every target was.
    pub rto: Option<Duration>,
    /// The newest recoverable instant's age at the start; none when not probed.
    pub rpo: Option<Duration>,
    /// Every failure that is not an objective's (a validation that failed, a cleanup that did
    /// not finish, a run that did not succeed).
    pub failures: Vec<String>,
}

/// A drill's whole record: printed by `drill run --json` (the last line), kept in history, and
/// the source of `drill report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillResult {
    /// The drill's name.
    pub drill: String,
    /// This drill's own id.
    pub drill_id: String,
    /// The run it created (status, report, log), if it got that far.
    pub run_id: Option<String>,
    /// `isolated` or `as-new`.
    pub mode: String,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
    /// The restore point, RFC 3339 UTC.
    pub restore_point: Option<String>,
    /// The sampling seed (random strategy).
    pub seed: Option<u64>,
    /// Every objective met, every target restored and validated, cleanup done.
    pub passed: bool,
    /// Achieved RTO, seconds.
    pub rto_s: Option<f64>,
    /// The RTO objective, seconds.
    pub rto_objective_s: f64,
    /// Achieved RPO, seconds.
    pub rpo_s: Option<f64>,
    /// The RPO objective, seconds.
    pub rpo_objective_s: Option<f64>,
    /// The sampled targets.
    pub targets: Vec<TargetResult>,
    /// The objectives, scored.
    pub objectives: Vec<ObjectiveResult>,
    /// The cleanup commands.
    pub cleanup: Vec<CleanupStep>,
    /// Every reason the drill failed, objectives' included.
    pub failures: Vec<String>,
    /// The drill's wall time, seconds (selection to cleanup).
    pub wall_s: f64,
    /// When a schedule started it: its slot, and whether (and by how much) it was late. Absent
    /// for a drill run by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<Scheduled>,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

fn objective(
    name: &str,
    what: &str,
    objective: Duration,
    achieved: Option<Duration>,
    unmet: &str,
) -> ObjectiveResult {
    let (passed, message) = match achieved {
        None => (false, format!("{name} not achieved: {unmet} (objective {})", secs(objective))),
        Some(a) if a <= objective => (
            true,
            format!(
                "{name} {} {what}, objective {}: met with {} to spare",
                secs(a),
                secs(objective),
                secs(objective - a)
            ),
        ),
        Some(a) => (
            false,
            format!(
                "{name} {} {what}, objective {}: missed by {}",
                secs(a),
                secs(objective),
                secs(a - objective)
            ),
        ),
    };
    ObjectiveResult {
        name: name.to_owned(),
        objective_s: objective.as_secs_f64(),
        achieved_s: achieved.map(|a| a.as_secs_f64()),
        passed,
        message,
    }
}

/// Scores what was measured against the objectives: the objectives (each with by how much it
/// passed or missed), every failure (the objectives' first), and whether the drill passed.
pub fn score(objectives: &Objectives, m: &Measured) -> (Vec<ObjectiveResult>, Vec<String>, bool) {
    let mut scored = vec![objective(
        "rto",
        "from the drill's start to every target restored and validated",
        objectives.rto,
        m.rto,
        "not every sampled target was restored and validated",
    )];
    if let Some(rpo) = objectives.rpo {
        scored.push(objective(
            "rpo",
            "old, the newest recoverable point at the start",
            rpo,
            m.rpo,
            "the newest recoverable point was not measured",
        ));
    }
    let mut failures: Vec<String> =
        scored.iter().filter(|o| !o.passed).map(|o| o.message.clone()).collect();
    failures.extend(m.failures.iter().cloned());
    let passed = failures.is_empty();
    (scored, failures, passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(rto: u64, rpo: Option<u64>) -> Objectives {
        Objectives { rto: Duration::from_secs(rto), rpo: rpo.map(Duration::from_secs) }
    }

    #[test]
    fn met_objectives_pass_with_what_is_spare() {
        let m = Measured {
            rto: Some(Duration::from_secs(12)),
            rpo: Some(Duration::from_secs(30)),
            failures: vec![],
        };
        let (o, f, passed) = score(&obj(60, Some(900)), &m);
        assert!(passed && f.is_empty());
        assert!(o[0].message.contains("met with 48.0s to spare"), "{}", o[0].message);
        assert_eq!(o[1].achieved_s, Some(30.0));
    }

    #[test]
    fn a_missed_objective_says_by_how_much() {
        let m = Measured {
            rto: Some(Duration::from_millis(2500)),
            rpo: Some(Duration::from_secs(1200)),
            failures: vec![],
        };
        let (_, f, passed) = score(&obj(1, Some(900)), &m);
        assert!(!passed);
        assert!(f[0].contains("rto 2.5s") && f[0].contains("missed by 1.5s"), "{f:?}");
        assert!(f[1].contains("missed by 5m"), "{f:?}");
    }

    #[test]
    fn targets_not_restored_miss_the_rto_and_other_failures_count() {
        let m = Measured { rto: None, rpo: None, failures: vec!["step `x` failed".into()] };
        let (_, f, passed) = score(&obj(60, None), &m);
        assert!(!passed);
        assert!(f[0].contains("not every sampled target"), "{f:?}");
        assert_eq!(f[1], "step `x` failed");
    }
}
