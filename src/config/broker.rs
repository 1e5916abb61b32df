//! `[broker]`: the broker's own identity and the bounds on delegation no policy can lift.

use serde::Deserialize;

use super::{MAX_ASSERTION_LIFETIME, Problems, is_https_like};
use crate::client::{ClientSecrets, DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME};
use crate::exchange::Limits;

/// Clock skew tolerated on tessera's own `nbf`/`iat`, by default, in seconds.
pub const DEFAULT_BROKER_LEEWAY: u64 = 5;
/// The most any leeway may be: it absorbs clock skew, not lifetimes.
pub const MAX_LEEWAY: u64 = 60;
/// Actors an `act` chain may name, by default (and at most `MAX_DELEGATION_DEPTH`).
pub const DEFAULT_MAX_DELEGATION_DEPTH: usize = 4;
/// The largest `max_delegation_depth` accepted.
const MAX_DELEGATION_DEPTH: usize = 16;
/// Tessera tokens a token may descend from, by default (and at most `MAX_CHAIN_LENGTH`).
pub const DEFAULT_MAX_CHAIN_LENGTH: usize = 8;
/// The largest `max_chain_length` accepted.
const MAX_CHAIN_LENGTH: usize = 32;
/// The longest life of a task token, by default, in seconds (and at most a day).
pub const DEFAULT_TASK_TOKEN_MAX_TTL: u64 = 3600;
/// How long a revoked task id stays refused, by default: 24 h.
pub const DEFAULT_TASK_REVOCATION_RETENTION: u64 = 86_400;
/// The longest any token may live: a day.
pub const MAX_TTL: u64 = crate::token::MAX_LIFETIME;

/// `[broker]` as read; see docs/config.md `[broker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerBuilder {
    /// The broker's identifier, an http(s) URL: `iss` of every token it issues; required.
    pub issuer: Option<String>,
    /// Seconds of clock skew tolerated on tessera's own `nbf`/`iat` (default 5, at most 60).
    pub leeway: Option<u64>,
    /// The most actors an issued token's `act` chain may name (default 4, 1 to 16).
    pub max_delegation_depth: Option<usize>,
    /// The most tessera tokens an issued token may descend from (default 8, 1 to 32).
    pub max_chain_length: Option<usize>,
    /// The longest life of a task token, in seconds (default 3600, at most 86400).
    pub task_token_max_ttl: Option<u64>,
    /// Seconds a revoked task id stays refused for new exchanges (default 24 h).
    pub task_revocation_retention: Option<u64>,
    /// Seconds after its `iat` a DPoP proof is still accepted (default 60, 1 to 600), plus `leeway`.
    pub dpop_max_age: Option<u64>,
    /// Whether client secrets authenticate callers: `allowed` (default) or `forbidden`.
    pub client_secrets: ClientSecrets,
    /// The most seconds a client assertion's `exp` may be ahead of now (default 300, 10 to 3600).
    pub client_assertion_max_lifetime: Option<u64>,
    /// The clients whose `Introspect` of a task token can answer active (default: none).
    pub task_introspect_clients: Vec<String>,
}

/// The bounds of `client_assertion_max_lifetime`: assertions are minted per request.
const CLIENT_ASSERTION_LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 10..=3600;

/// The validated `[broker]` section.
#[derive(Debug)]
pub(super) struct BrokerSection {
    pub(super) issuer: String,
    pub(super) leeway: u64,
    pub(super) limits: Limits,
    pub(super) task_token_max_ttl: u64,
    pub(super) task_revocation_retention: u64,
    pub(super) dpop_max_age: u64,
    pub(super) client_secrets: ClientSecrets,
    pub(super) client_assertion_max_lifetime: u64,
    pub(super) task_introspect_clients: std::collections::BTreeSet<String>,
}

impl BrokerBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> BrokerSection {
        let issuer = self.issuer.unwrap_or_default();
        if !is_https_like(&issuer) {
            problems.push("broker.issuer: required, an http(s) URL identifying this broker".into());
        }
        let max_delegation_depth = self.max_delegation_depth.unwrap_or(DEFAULT_MAX_DELEGATION_DEPTH);
        if !(1..=MAX_DELEGATION_DEPTH).contains(&max_delegation_depth) {
            problems.push(format!("broker.max_delegation_depth: must be between 1 and {MAX_DELEGATION_DEPTH}"));
        }
        let max_chain_length = self.max_chain_length.unwrap_or(DEFAULT_MAX_CHAIN_LENGTH);
        if !(1..=MAX_CHAIN_LENGTH).contains(&max_chain_length) {
            problems.push(format!("broker.max_chain_length: must be between 1 and {MAX_CHAIN_LENGTH}"));
        }
        let task_token_max_ttl = self.task_token_max_ttl.unwrap_or(DEFAULT_TASK_TOKEN_MAX_TTL);
        if task_token_max_ttl == 0 || task_token_max_ttl > MAX_TTL {
            problems.push(format!("broker.task_token_max_ttl: must be between 1 and {MAX_TTL} seconds"));
        }
        let leeway = self.leeway.unwrap_or(DEFAULT_BROKER_LEEWAY);
        if leeway > MAX_LEEWAY {
            problems.push(format!("broker.leeway: at most {MAX_LEEWAY} seconds (it absorbs clock skew only)"));
        }
        let task_revocation_retention = self.task_revocation_retention.unwrap_or(DEFAULT_TASK_REVOCATION_RETENTION);
        if task_revocation_retention == 0 || task_revocation_retention > MAX_ASSERTION_LIFETIME {
            problems.push(format!(
                "broker.task_revocation_retention: must be between 1 and {MAX_ASSERTION_LIFETIME} seconds"
            ));
        }
        let dpop_max_age = self.dpop_max_age.unwrap_or(crate::dpop::DEFAULT_MAX_AGE);
        if !(1..=crate::dpop::MAX_MAX_AGE).contains(&dpop_max_age) {
            problems.push(format!("broker.dpop_max_age: must be between 1 and {} seconds", crate::dpop::MAX_MAX_AGE));
        }
        let client_assertion_max_lifetime =
            self.client_assertion_max_lifetime.unwrap_or(DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME);
        if !CLIENT_ASSERTION_LIFETIME_RANGE.contains(&client_assertion_max_lifetime) {
            problems.push(format!(
                "broker.client_assertion_max_lifetime: must be between {} and {} seconds",
                CLIENT_ASSERTION_LIFETIME_RANGE.start(),
                CLIENT_ASSERTION_LIFETIME_RANGE.end()
            ));
        }
        BrokerSection {
            task_introspect_clients: self.task_introspect_clients.into_iter().collect(),
            client_secrets: self.client_secrets,
            client_assertion_max_lifetime,
            issuer,
            dpop_max_age,
            leeway,
            limits: Limits { max_delegation_depth, max_chain_length },
            task_token_max_ttl,
            task_revocation_retention,
        }
    }
}
