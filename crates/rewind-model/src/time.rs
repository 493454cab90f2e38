//! The restore point: the one UTC instant every store of a run is restored to.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC, read and written as RFC 3339 (`2022-04-05T07:33:00Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RestorePoint(SystemTime);

/// A restore point that is not RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("restore point {value:?} is not an RFC 3339 UTC time such as 2022-04-05T07:33:00Z{detail}")]
pub struct RestorePointError {
    /// The offending text.
    pub value: String,
    detail: String,
}

impl RestorePoint {
    /// Wraps an instant.
    pub const fn from_system_time(t: SystemTime) -> Self {
        Self(t)
    }

    /// The instant.
    pub const fn system_time(self) -> SystemTime {
        self.0
    }

    /// Seconds since the Unix epoch (negative before 1970).
    pub fn unix_seconds(self) -> f64 {
        match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// The restore point `d` later.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        self.0.checked_add(d).map(Self)
    }
}

impl FromStr for RestorePoint {
    type Err = RestorePointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err =
            |detail: &str| RestorePointError { value: s.to_owned(), detail: detail.to_owned() };
        let t = s.trim();
        if !(t.ends_with('Z') || t.ends_with('z')) {
            return Err(err(" (it must end in Z: give the time in UTC)"));
        }
        humantime::parse_rfc3339(t).map(Self).map_err(|e| err(&format!(" ({e})")))
    }
}

impl fmt::Display for RestorePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) == 0;
        if whole {
            fmt::Display::fmt(&humantime::format_rfc3339_seconds(self.0), f)
        } else {
            fmt::Display::fmt(&humantime::format_rfc3339_nanos(self.0), f)
        }
    }
}

impl Serialize for RestorePoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestorePoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_rfc3339_utc() {
        let rp: RestorePoint = "2022-04-05T07:33:00Z".parse().unwrap();
        assert_eq!(rp.to_string(), "2022-04-05T07:33:00Z");
        let frac: RestorePoint = "2022-04-05T07:33:00.25Z".parse().unwrap();
        assert_eq!(frac.to_string(), "2022-04-05T07:33:00.250000000Z");
        assert_eq!(rp.unix_seconds(), 1_649_143_980.0);
    }

    #[test]
    fn refuses_local_times_and_garbage() {
        for bad in
            ["2022-04-05T07:33:00+02:00", "2022-04-05 07:33", "yesterday", "2022-13-05T07:33:00Z"]
        {
            let e = bad.parse::<RestorePoint>().unwrap_err();
            assert!(e.to_string().contains("RFC 3339 UTC"), "{e}");
        }
    }
}
