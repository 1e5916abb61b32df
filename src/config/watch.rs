//! `[watch]`: the revocation watch stream ([`crate::revocation::watch`]): how often a quiet stream sends a
//! heartbeat, and how many events the revocation log keeps for clients that reconnect.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use crate::revocation::watch::{DEFAULT_HEARTBEAT, DEFAULT_MAX_EVENTS};

/// The longest heartbeat interval accepted: a proxy in between often drops a connection idle for a minute.
pub const MAX_HEARTBEAT_SECONDS: u64 = 55;
/// The most events the log may keep (memory: about 200 bytes each, in the embedded store and in Redis).
pub const MAX_EVENTS: u64 = 10_000_000;

/// `[watch]` as read; see docs/config.md `[watch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchBuilder {
    /// Seconds between heartbeats on a quiet stream (default 15; 1 to 55).
    pub heartbeat_seconds: Option<u64>,
    /// Events the revocation log keeps (default 100,000; 1 to 10,000,000). A client that was away for longer
    /// than that many revocations must resync.
    pub max_events: Option<u64>,
}

/// The validated `[watch]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// How often a quiet stream sends a heartbeat.
    pub heartbeat: Duration,
    /// How many events the revocation log keeps.
    pub max_events: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { heartbeat: DEFAULT_HEARTBEAT, max_events: DEFAULT_MAX_EVENTS }
    }
}

impl WatchBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> WatchConfig {
        let mut config = WatchConfig::default();
        match self.heartbeat_seconds {
            None => {}
            Some(s @ 1..=MAX_HEARTBEAT_SECONDS) => config.heartbeat = Duration::from_secs(s),
            Some(_) => problems.push(format!("watch.heartbeat_seconds: between 1 and {MAX_HEARTBEAT_SECONDS}")),
        }
        match self.max_events {
            None => {}
            Some(n @ 1..=MAX_EVENTS) => config.max_events = n,
            Some(_) => problems.push(format!("watch.max_events: between 1 and {MAX_EVENTS}")),
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let mut problems = Problems::new();
        assert_eq!(WatchBuilder::default().build(&mut problems), WatchConfig::default());
        let set = WatchBuilder { heartbeat_seconds: Some(2), max_events: Some(10) }.build(&mut problems);
        assert_eq!((set.heartbeat, set.max_events), (Duration::from_secs(2), 10));
        assert!(problems.is_empty());
        WatchBuilder { heartbeat_seconds: Some(0), max_events: Some(MAX_EVENTS + 1) }.build(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
