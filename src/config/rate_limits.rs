//! `[rate_limits]`: how many `ExchangeToken` calls a client, a principal and a task may make, shared by every
//! replica (see [`crate::ratelimit`]).
//!
//! Every limit is off by default: no one rate fits every deployment (an orchestrator fanning out to a
//! hundred sub-agents and a CI job differ by orders of magnitude), and a limit that appears with an upgrade
//! would start refusing traffic that worked the day before. Operators turn on the ones they want, each with
//! its own rate and burst.

use serde::Deserialize;

use super::Problems;
use crate::ratelimit::{Rate, RateLimits};

/// How many seconds of the steady rate a bucket holds when no burst is given: a burst of `per_minute / 6`
/// (at least 1), so a caller idle for ten seconds may catch up at once.
pub const DEFAULT_BURST_SECONDS: u64 = 10;
/// The highest rate accepted, a minute: 100,000 a second (an emission interval of 10 µs).
pub const MAX_PER_MINUTE: u64 = 6_000_000;
/// The largest burst accepted.
pub const MAX_BURST: u64 = 1_000_000;

/// `[rate_limits]` as read; see docs/config.md `[rate_limits]`. Each limit is off while its `*_per_minute`
/// is absent or 0.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsBuilder {
    /// Exchanges a minute per calling client, at the steady rate (default: off; 1 to 6,000,000).
    pub client_per_minute: Option<u64>,
    /// Exchanges a client may make at once after being idle (default `client_per_minute / 6`, at least 1).
    pub client_burst: Option<u64>,
    /// Exchanges a minute per subject principal (issuer + `sub`) (default: off).
    pub principal_per_minute: Option<u64>,
    /// The principal's burst (default `principal_per_minute / 6`, at least 1).
    pub principal_burst: Option<u64>,
    /// Exchanges a minute per task id (default: off).
    pub task_per_minute: Option<u64>,
    /// The task's burst (default `task_per_minute / 6`, at least 1).
    pub task_burst: Option<u64>,
}

impl RateLimitsBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> RateLimits {
        RateLimits {
            client: limit("client", self.client_per_minute, self.client_burst, problems),
            principal: limit("principal", self.principal_per_minute, self.principal_burst, problems),
            task: limit("task", self.task_per_minute, self.task_burst, problems),
        }
    }
}

/// The burst a rate gets when none is given.
pub fn default_burst(per_minute: u64) -> u64 {
    per_minute.saturating_mul(DEFAULT_BURST_SECONDS).div_ceil(60).max(1)
}

fn limit(name: &str, per_minute: Option<u64>, burst: Option<u64>, problems: &mut Problems) -> Option<Rate> {
    let per_minute = per_minute.unwrap_or(0);
    if per_minute == 0 {
        if burst.is_some() {
            problems.push(format!("rate_limits.{name}_burst: set only with {name}_per_minute"));
        }
        return None;
    }
    if per_minute > MAX_PER_MINUTE {
        problems.push(format!("rate_limits.{name}_per_minute: at most {MAX_PER_MINUTE} (0 or absent: off)"));
        return None;
    }
    let burst = burst.unwrap_or_else(|| default_burst(per_minute));
    if burst == 0 || burst > MAX_BURST {
        problems.push(format!("rate_limits.{name}_burst: must be between 1 and {MAX_BURST}"));
        return None;
    }
    Rate::new(per_minute, burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_off_by_default_and_every_problem_is_named() {
        let mut problems = Problems::new();
        assert!(RateLimitsBuilder::default().build(&mut problems).is_off());
        assert!(problems.is_empty());
        let b = RateLimitsBuilder {
            client_per_minute: Some(600),
            principal_per_minute: Some(MAX_PER_MINUTE + 1),
            task_burst: Some(3),
            ..RateLimitsBuilder::default()
        };
        let limits = b.build(&mut problems);
        assert_eq!(limits.client, Rate::new(600, 100), "the default burst is ten seconds' worth");
        assert_eq!((limits.principal, limits.task), (None, None));
        let all = problems.join("\n");
        assert!(all.contains("rate_limits.principal_per_minute"), "{all}");
        assert!(all.contains("rate_limits.task_burst: set only with task_per_minute"), "{all}");
        let mut problems = Problems::new();
        let zero = RateLimitsBuilder { task_per_minute: Some(60), task_burst: Some(0), ..Default::default() };
        assert!(zero.build(&mut problems).is_off());
        assert!(problems.join("\n").contains("rate_limits.task_burst: must be between 1"));
        assert_eq!((default_burst(1), default_burst(5), default_burst(60)), (1, 1, 10));
    }
}
