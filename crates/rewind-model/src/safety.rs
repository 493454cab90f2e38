//! The pure parts of the safety rails (README "Safety rails"): staged waves, restore-point
//! bounds, and the judgement of what a preflight found. What runs the preflight, reads the clock
//! or holds locks lives elsewhere; here are only the rules.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::targets::Target;
use crate::time::RestorePoint;

/// One wave boundary as written: a number of targets, or a percentage of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WaveSize {
    /// This many targets in all waves up to and including this one.
    Count(u32),
    /// This percentage (0 < p ≤ 100) of the targets, rounded up.
    Percent(f64),
}

/// `--waves 1,10,25%,100%`: cumulative boundaries, each wave runs to completion before the
/// next starts. The last must be `100%` (or the total count), so no target is left out silently.
#[derive(Clone, Debug, PartialEq)]
pub struct Waves(Vec<WaveSize>);

impl FromStr for Waves {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, raw) in s.split(',').enumerate() {
            let part = raw.trim();
            let bad = |why: &str| format!("--waves {s:?}: wave {} ({part:?}) {why}", i + 1);
            if part.is_empty() {
                return Err(bad("is empty"));
            }
            let size = if let Some(p) = part.strip_suffix('%') {
                let v: f64 = p.trim().parse().map_err(|_| bad("is not a percentage"))?;
                if !(v > 0.0 && v <= 100.0) {
                    return Err(bad("must be more than 0% and at most 100%"));
                }
                WaveSize::Percent(v)
            } else {
                let v: u32 = part
                    .parse()
                    .map_err(|_| bad("is not a number of targets or a percentage such as 25%"))?;
                if v == 0 {
                    return Err(bad("must be at least 1 target"));
                }
                WaveSize::Count(v)
            };
            out.push(size);
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match w {
                WaveSize::Count(n) => write!(f, "{n}")?,
                WaveSize::Percent(p) => write!(f, "{p}%")?,
            }
        }
        Ok(())
    }
}

impl Waves {
    /// The cumulative number of targets at the end of each wave, for `total` targets: strictly
    /// increasing, the last equal to `total`. Waves that would be empty (`25%` of 3 targets
    /// after a wave of 1) are dropped. Refused: boundaries that go down, or a last wave short of
    /// every target.
    pub fn boundaries(&self, total: u32) -> Result<Vec<u32>, String> {
        let mut out: Vec<u32> = Vec::new();
        // Counts must not go down, nor percentages (`10,5` is a typo); a percentage below an
        // earlier count (`10,25%` of 8 targets) only makes an empty wave.
        let (mut prev_count, mut prev_pct) = (0u32, 0.0f64);
        for (i, w) in self.0.iter().enumerate() {
            let at = match *w {
                WaveSize::Count(n) if n < prev_count => {
                    return Err(format!(
                        "--waves {self}: wave {} ({n}) is smaller than an earlier wave ({prev_count}); waves are cumulative (1,10,25%,100%)",
                        i + 1
                    ));
                }
                WaveSize::Percent(p) if p < prev_pct => {
                    return Err(format!(
                        "--waves {self}: wave {} ({p}%) is smaller than an earlier wave ({prev_pct}%); waves are cumulative (1,10,25%,100%)",
                        i + 1
                    ));
                }
                WaveSize::Count(n) => {
                    prev_count = n;
                    n
                }
                WaveSize::Percent(p) => {
                    prev_pct = p;
                    // Rounded up, so 1% of 10 targets is one target, not none.
                    let v = (f64::from(total) * p / 100.0 - 1e-9).ceil();
                    if v <= 0.0 { 1 } else { v as u32 }
                }
            };
            let at = at.min(total);
            if out.last().is_none_or(|&l| at > l) {
                out.push(at);
            }
        }
        if out.last().copied() != Some(total) {
            return Err(format!(
                "--waves {self}: the last wave reaches {} of the {total} targets; end with 100% so every target is in a wave",
                out.last().copied().unwrap_or(0)
            ));
        }
        Ok(out)
    }
}

/// Why a restore point is refused, if it is: in the future of `now`, or older than `retention`
/// before `now`.
pub fn restore_point_bounds(
    rp: RestorePoint,
    now: SystemTime,
    retention: Duration,
) -> Result<(), String> {
    let t = rp.system_time();
    if let Ok(ahead) = t.duration_since(now)
        && !ahead.is_zero()
    {
        return Err(format!(
            "restore point {rp} is in the future (now is {}): no backup holds it",
            humantime::format_rfc3339_seconds(now)
        ));
    }
    if let Ok(age) = now.duration_since(t)
        && age > retention
    {
        let days = age.as_secs() / 86_400;
        let age = match days {
            0 => {
                humantime::format_duration(Duration::from_secs(age.as_secs() / 60 * 60)).to_string()
            }
            1 => "1 day".to_owned(),
            n => format!("{n} days"),
        };
        return Err(format!(
            "restore point {rp} is {age} old, beyond the workflow's retention of {} (now is {}): the backups no longer reach it",
            spelled_out(retention),
            humantime::format_rfc3339_seconds(now)
        ));
    }
    Ok(())
}

/// A duration in words: `30 days`, `7 days 12 hours`, `1 hour 30 minutes`, `45 seconds`.
pub fn spelled_out(d: Duration) -> String {
    let s = d.as_secs();
    let units =
        [(s / 86_400, "day"), (s / 3600 % 24, "hour"), (s / 60 % 60, "minute"), (s % 60, "second")];
    let parts: Vec<String> = units
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n} {u}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if parts.is_empty() { "0 seconds".to_owned() } else { parts.join(" ") }
}

/// What a preflight resolver says one target ID is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its actual kind (`site`, `app`, ...).
    pub kind: String,
    /// Its state (`active`, `deleted`, ...), if the resolver reports one.
    pub state: Option<String>,
}

/// How many offending IDs a refusal lists per problem before saying "and N more".
const LISTED: usize = 10;

/// What is wrong with one target, as a preflight found it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    /// The resolver does not know the ID.
    Unknown,
    /// It is of another kind.
    Kind(String),
    /// It is in another state (`None`: it reported none).
    State(Option<String>),
}

impl Problem {
    /// "are apps, not sites" / "is an app, not a site", and the like.
    fn say(&self, n: usize, kind: &str, want: Option<&str>) -> String {
        let one = n == 1;
        match self {
            Self::Unknown if one => "does not exist (unknown to the preflight resolver)".to_owned(),
            Self::Unknown => "do not exist (unknown to the preflight resolver)".to_owned(),
            Self::Kind(k) if one => format!("is {}, not {}", article(k), article(kind)),
            Self::Kind(k) => format!("are {}, not {}", plural(k), plural(kind)),
            Self::State(st) => {
                let is = st
                    .as_deref()
                    .map_or_else(|| "in no reported state".to_owned(), |s| format!("`{s}`"));
                let want = want.unwrap_or_default();
                format!("{} {is}, not `{want}`", if one { "is" } else { "are" })
            }
        }
    }
}

/// Judges what a preflight found: every target must exist, be of `kind`, and (when `state` is
/// given) be in that state. Returns one line per problem, each naming the offending IDs, in the
/// targets' order; empty when all is well.
pub fn judge(
    targets: &[Target],
    found: &BTreeMap<String, Found>,
    kind: &str,
    state: Option<&str>,
) -> Vec<String> {
    // (problem, ids), in the order problems are first met.
    let mut problems: Vec<(Problem, Vec<String>)> = Vec::new();
    for t in targets {
        let id = t.id.to_string();
        let problem = match found.get(&id) {
            None => Problem::Unknown,
            Some(f) if f.kind != kind => Problem::Kind(f.kind.clone()),
            Some(f) if state.is_some() && f.state.as_deref() != state => {
                Problem::State(f.state.clone())
            }
            Some(_) => continue,
        };
        match problems.iter_mut().find(|(p, _)| *p == problem) {
            Some((_, ids)) => ids.push(id),
            None => problems.push((problem, vec![id])),
        }
    }
    problems
        .into_iter()
        .map(|(problem, ids)| {
            let n = ids.len();
            let noun = if n == 1 { "target" } else { "targets" };
            let mut list = ids.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
            if n > LISTED {
                list.push_str(&format!(" and {} more", n - LISTED));
            }
            format!("{n} {noun} {}: {list}", problem.say(n, kind, state))
        })
        .collect()
}

fn plural(kind: &str) -> String {
    if kind.ends_with('s') { format!("{kind}es") } else { format!("{kind}s") }
}

fn article(kind: &str) -> String {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {kind}")
    } else {
        format!("a {kind}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn durations_are_spelled_out() {
        use std::time::Duration;
        let d = |s| super::spelled_out(Duration::from_secs(s));
        assert_eq!(d(30 * 86_400), "30 days");
        assert_eq!(d(7 * 86_400 + 12 * 3600), "7 days 12 hours");
        assert_eq!(d(86_400 + 60), "1 day 1 minute");
        assert_eq!(d(45), "45 seconds");
        assert_eq!(d(0), "0 seconds");
    }

    use super::*;
    use crate::targets::TargetSet;

    #[test]
    fn waves_are_cumulative_and_end_with_every_target() {
        let w: Waves = "1,10,25%,100%".parse().unwrap();
        assert_eq!(w.boundaries(100).unwrap(), vec![1, 10, 25, 100]);
        // 25% of 8 is 2, not more than the wave of 10 (capped at 8): dropped.
        assert_eq!(w.boundaries(8).unwrap(), vec![1, 8]);
        assert_eq!("2,100%".parse::<Waves>().unwrap().boundaries(60).unwrap(), vec![2, 60]);
        assert_eq!("1%,100%".parse::<Waves>().unwrap().boundaries(10).unwrap(), vec![1, 10]);
        assert_eq!("5".parse::<Waves>().unwrap().boundaries(5).unwrap(), vec![5]);
        let short = "1,10".parse::<Waves>().unwrap().boundaries(60).unwrap_err();
        assert!(short.contains("reaches 10 of the 60"), "{short}");
        let down = "10,5,100%".parse::<Waves>().unwrap().boundaries(60).unwrap_err();
        assert!(down.contains("wave 2 (5) is smaller than an earlier wave (10)"), "{down}");
        assert!("50%,20%,100%".parse::<Waves>().unwrap().boundaries(10).is_err());
        for bad in ["", "1,,100%", "0,100%", "x", "120%", "-3", "1.5"] {
            assert!(bad.parse::<Waves>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restore_points_must_be_past_and_within_retention() {
        let rp: RestorePoint = "2022-04-05T07:33:00Z".parse().unwrap();
        let now = humantime::parse_rfc3339("2022-04-06T00:00:00Z").unwrap();
        let day = Duration::from_secs(86_400);
        assert!(restore_point_bounds(rp, now, 30 * day).is_ok());
        let e = restore_point_bounds(rp, now, Duration::from_secs(3600)).unwrap_err();
        assert!(e.contains("16h 27m old, beyond the workflow's retention of 1 hour"), "{e}");
        let before = humantime::parse_rfc3339("2022-04-05T07:00:00Z").unwrap();
        let e = restore_point_bounds(rp, before, 30 * day).unwrap_err();
        assert!(e.contains("is in the future (now is 2022-04-05T07:00:00Z)"), "{e}");
        assert!(restore_point_bounds(rp, rp.system_time(), 30 * day).is_ok());
    }

    #[test]
    fn judgement_names_each_problem_and_its_ids() {
        let text = "id,kind\n\
            00000000-0000-4000-8000-000000000001,site\n\
            00000000-0000-4000-8000-000000000002,site\n\
            00000000-0000-4000-8000-000000000003,site\n\
            00000000-0000-4000-8000-000000000004,site\n\
            00000000-0000-4000-8000-000000000005,site\n";
        let set = TargetSet::parse("t.csv", text, crate::TargetsFormat::Csv).unwrap();
        let id = |n: u32| format!("00000000-0000-4000-8000-00000000000{n}");
        let f = |kind: &str, state: &str| Found { kind: kind.into(), state: Some(state.into()) };
        let mut found = BTreeMap::new();
        found.insert(id(1), f("site", "deleted"));
        found.insert(id(2), f("app", "installed"));
        found.insert(id(3), f("app", "installed"));
        found.insert(id(4), f("site", "active"));
        let lines = judge(set.targets(), &found, "site", Some("deleted"));
        assert_eq!(
            lines,
            vec![
                format!("2 targets are apps, not sites: {}, {}", id(2), id(3)),
                format!("1 target is `active`, not `deleted`: {}", id(4)),
                format!("1 target does not exist (unknown to the preflight resolver): {}", id(5)),
            ]
        );
        found.insert(id(5), f("site", "deleted"));
        found.insert(id(2), f("site", "deleted"));
        found.insert(id(3), f("site", "deleted"));
        found.insert(id(4), f("site", "deleted"));
        assert!(judge(set.targets(), &found, "site", Some("deleted")).is_empty());
        let one =
            judge(&set.targets()[1..2], &BTreeMap::from([(id(2), f("app", "x"))]), "site", None);
        assert_eq!(one, vec![format!("1 target is an app, not a site: {}", id(2))]);
    }
}
