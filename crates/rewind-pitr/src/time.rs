//! Instants as the engines write and read them.
//!
//! PostgreSQL's `recovery_target_time` does not take RFC 3339's `2022-04-05T07:33:00Z` (the
//! server refuses to start); it takes `2022-04-05 07:33:00+00`. Its log writes times as
//! `2022-04-05 07:33:00.123456+00` (with `log_timezone = 'UTC'`, which rewind sets). MariaDB's
//! binlog stamps whole seconds since the epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// `t` as PostgreSQL takes it in `recovery_target_time`: `2022-04-05 07:33:00.250000+00`
/// (microseconds, UTC).
pub fn pg_target(t: SystemTime) -> String {
    let d: DateTime<Utc> = t.into();
    d.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// RFC 3339 UTC (`2022-04-05T07:33:00.25Z`; whole seconds as `…:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d: DateTime<Utc> = t.into();
    d.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A time as PostgreSQL prints it with a UTC time zone: `2022-04-05 07:33:00.123456+00`
/// (fraction optional; `+00`, `+00:00` or `UTC` as the zone).
pub fn parse_pg(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let body = s
        .strip_suffix("+00:00")
        .or_else(|| s.strip_suffix("+00"))
        .or_else(|| s.strip_suffix(" UTC"))?;
    let n = NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(n.and_utc().into())
}

/// Whole seconds since the epoch (binlog event times).
pub fn from_unix(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// Seconds since the epoch, rounded down (negative instants are before every binlog).
pub fn unix_floor(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 { -s - 1 } else { -s }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_round_trip() {
        let t = UNIX_EPOCH + Duration::from_micros(1_649_143_980_250_000);
        assert_eq!(pg_target(t), "2022-04-05 07:33:00.250000+00");
        assert_eq!(parse_pg("2022-04-05 07:33:00.25+00"), Some(t));
        assert_eq!(parse_pg("2022-04-05 07:33:00.250000+00:00"), Some(t));
        assert_eq!(rfc3339(t), "2022-04-05T07:33:00.250Z");
        assert_eq!(parse_pg("2022-04-05T07:33:00Z"), None);
    }

    #[test]
    fn floors() {
        assert_eq!(unix_floor(UNIX_EPOCH + Duration::from_millis(1500)), 1);
        assert_eq!(unix_floor(UNIX_EPOCH - Duration::from_millis(500)), -1);
    }
}
