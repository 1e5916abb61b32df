//! The clock: the one place the broker reads the time of day. Domain functions take `now` as an argument,
//! so tests can run them at any time they like.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the one place allowed to
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the one place allowed to
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
