//! Terminal formatting helpers.

use std::time::Duration;

/// A duration for people: `3d 4h 12m`, `2h 5m`, `4m 30s`, `12.5s` (at most three units, zero
/// units left out).
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        let f = d.as_secs_f64();
        return if f == f.trunc() { format!("{f:.0}s") } else { format!("{f:.1}s") };
    }
    let units =
        [(secs / 86_400, "d"), (secs / 3600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    let parts: Vec<String> = units[first..(first + 3).min(4)]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    parts.join(" ")
}

/// `human` of a number of seconds.
pub fn human_s(secs: f64) -> String {
    human(Duration::from_secs_f64(secs.max(0.0)))
}

/// `12,345`
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 target`, `2 targets`, `1,234 targets`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{} {noun}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// `the target`, `both targets`, `all 3 targets`: every one of `n`.
pub fn every(n: usize, noun: &str) -> String {
    match n {
        1 => format!("the {noun}"),
        2 => format!("both {noun}s"),
        n => format!("all {} {noun}s", thousands(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_and_counts() {
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600 + 12 * 60)), "3d 4h 12m");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 5 * 60)), "2h 5m");
        assert_eq!(human(Duration::from_secs(30 * 60)), "30m");
        assert_eq!(human(Duration::from_secs(86_400 + 7)), "1d");
        assert_eq!(human(Duration::from_secs(270)), "4m 30s");
        assert_eq!(human(Duration::from_millis(12_500)), "12.5s");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(thousands(26_490), "26,490");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(count(1, "target"), "1 target");
        assert_eq!(count(1200, "target"), "1,200 targets");
        assert_eq!(
            (every(1, "target"), every(2, "target")),
            ("the target".into(), "both targets".into())
        );
        assert_eq!(every(883, "target"), "all 883 targets");
    }
}
