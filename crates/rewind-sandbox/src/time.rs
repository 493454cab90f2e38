//! Simulated time: the sandbox has its own clock, stored in its manifest. Instants are whole
//! milliseconds since the Unix epoch, written as RFC 3339 UTC.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use rewind_model::RestorePoint;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant of the sandbox's simulated clock, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(i64);

impl SimTime {
    /// The earliest instant the sandbox can write: 1970-01-01T00:00:00Z.
    pub const MIN: SimTime = SimTime(0);
    /// The latest instant the sandbox can write: 9999-12-31T23:59:59.999Z (RFC 3339 has
    /// four-digit years).
    pub const MAX: SimTime = SimTime(253_402_300_799_999);

    /// The instant `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// The instant of a restore point, rounded down to the millisecond (every write of the
    /// sandbox is stamped in whole milliseconds, so "at or before" is unchanged by the rounding).
    pub fn from_restore_point(rp: RestorePoint) -> Self {
        match rp.system_time().duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => {
                let back =
                    i64::try_from(e.duration().as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
                Self(-back)
            }
        }
    }

    /// The same instant as a [`RestorePoint`].
    pub fn to_restore_point(self) -> RestorePoint {
        let t = if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        };
        RestorePoint::from_system_time(t)
    }

    /// `d` later (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// `d` earlier (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// `ms` milliseconds later.
    pub fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// A compact form usable in file names: `20220405T073800Z` (`.123` milliseconds kept).
    pub fn compact(self) -> String {
        self.to_string().replace(['-', ':'], "")
    }

    /// Parses RFC 3339 UTC (`2022-04-05T07:38:00Z`).
    pub fn parse(s: &str) -> Option<Self> {
        s.parse::<RestorePoint>().ok().map(Self::from_restore_point)
    }
}

impl fmt::Display for SimTime {
    /// RFC 3339; an instant outside [`SimTime::MIN`]..=[`SimTime::MAX`] (which the sandbox
    /// refuses to write) as milliseconds since the epoch rather than a panic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self < Self::MIN || *self > Self::MAX {
            return write!(f, "{}ms since 1970-01-01T00:00:00Z", self.0);
        }
        let t = self.to_restore_point().system_time();
        if self.0.rem_euclid(1000) == 0 {
            fmt::Display::fmt(&humantime::format_rfc3339_seconds(t), f)
        } else {
            fmt::Display::fmt(&humantime::format_rfc3339_millis(t), f)
        }
    }
}

impl Serialize for SimTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SimTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 UTC time")))
    }
}

/// Serde helper: a [`Duration`] as humantime text (`30days`, `7d`, `15m`).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as humantime text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Reads humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let t = SimTime::parse("2022-04-05T07:38:00Z").unwrap();
        assert_eq!(t.unix_ms(), 1_649_144_280_000);
        assert_eq!(t.to_string(), "2022-04-05T07:38:00Z");
        assert_eq!(t.plus_ms(1500).to_string(), "2022-04-05T07:38:01.500Z");
        assert_eq!(t.compact(), "20220405T073800Z");
        assert_eq!(SimTime::parse(&t.plus_ms(1500).to_string()), Some(t.plus_ms(1500)));
        assert!(SimTime::parse("2022-04-05T07:38:00+01:00").is_none());
    }

    #[test]
    fn instants_outside_the_rfc3339_range_display_without_panicking() {
        assert_eq!(SimTime::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(SimTime::MIN.to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(SimTime::from_unix_ms(-5).to_string(), "-5ms since 1970-01-01T00:00:00Z");
        assert!(SimTime::MAX.plus_ms(1).to_string().starts_with("253402300800000ms"));
    }

    #[test]
    fn restore_points_round_down_to_the_millisecond() {
        let rp: RestorePoint = "2022-04-05T07:38:00.0009Z".parse().unwrap();
        assert_eq!(
            SimTime::from_restore_point(rp),
            SimTime::parse("2022-04-05T07:38:00Z").unwrap()
        );
    }
}
