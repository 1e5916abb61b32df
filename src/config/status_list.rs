//! `[status_list]`: OAuth Token Status Lists ([`crate::status_list`]): whether issued tokens carry a
//! `status` claim and tessera publishes the lists, and how long a verifier may cache one.

use serde::Deserialize;

use super::Problems;
use crate::status_list::DEFAULT_TTL;

/// The longest `ttl` accepted: a day (a revocation may reach a verifier that late).
pub const MAX_TTL_SECONDS: u64 = 86_400;

/// `[status_list]` as read; see docs/config.md `[status_list]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusListBuilder {
    /// Whether every issued token carries `status.status_list` and the lists are served (default true).
    pub enabled: Option<bool>,
    /// The lists' `ttl` and `Cache-Control: max-age`, in seconds (default 60; 1 to 86,400).
    pub ttl_seconds: Option<u64>,
}

/// The validated `[status_list]`: `None` when off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusListConfig {
    /// How long a verifier may cache a list.
    pub ttl: u64,
}

impl StatusListBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> Option<StatusListConfig> {
        let ttl = match self.ttl_seconds {
            None => DEFAULT_TTL,
            Some(s @ 1..=MAX_TTL_SECONDS) => s,
            Some(_) => {
                problems.push(format!("status_list.ttl_seconds: between 1 and {MAX_TTL_SECONDS}"));
                DEFAULT_TTL
            }
        };
        self.enabled.unwrap_or(true).then_some(StatusListConfig { ttl })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_by_default_with_a_bounded_ttl() {
        let mut problems = Problems::new();
        assert_eq!(StatusListBuilder::default().build(&mut problems), Some(StatusListConfig { ttl: DEFAULT_TTL }));
        assert_eq!(StatusListBuilder { enabled: Some(false), ttl_seconds: None }.build(&mut problems), None);
        StatusListBuilder { enabled: None, ttl_seconds: Some(0) }.build(&mut problems);
        assert_eq!(problems.len(), 1);
    }
}
