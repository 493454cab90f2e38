//! Serializes a [`Duration`](std::time::Duration) as humantime text (`"2m"`), the way workflows
//! write it.

use std::time::Duration;

use serde::Serializer;

/// Serializes `d` as `"1h 30m"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}
