//! `[[issuers]]`: the upstream identity providers whose assertions are accepted, with their keys loaded (inline
//! and file JWKS) while the config is validated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use std::collections::BTreeMap;

use super::broker::MAX_LEEWAY;
use super::{Context, MAX_ASSERTION_LIFETIME, Problems};
use crate::issuer::{IssuerSpec, JwksSource, UsedFor};
use crate::token::jws::Algorithm;
use crate::token::keys::{JwkSet, KeySet};

/// Clock skew tolerated on an upstream assertion, by default, in seconds.
pub const DEFAULT_ISSUER_LEEWAY: u64 = 30;
/// How long an upstream assertion may live, by default: 24 h.
pub const DEFAULT_MAX_ASSERTION_LIFETIME: u64 = 86_400;
/// The largest assertion accepted, by default, in bytes (and between 512 and 64 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The claim that names the principal, by default.
pub const DEFAULT_SUBJECT_CLAIM: &str = "sub";
/// The least time between two on-demand JWKS reloads, by default, in seconds.
pub const DEFAULT_MIN_REFRESH_INTERVAL: u64 = 30;
/// How often a `jwks_url` is refetched, by default, in seconds (at least 10).
pub const DEFAULT_REFRESH_INTERVAL: u64 = 300;

/// One `[[issuers]]` entry as read; see docs/config.md `[[issuers]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerBuilder {
    /// The issuer's short name, seen by policy as `principal.issuer`; required, unique.
    pub name: String,
    /// The exact `iss` its assertions carry; this or `spiffe_trust_domain` is required.
    pub issuer: Option<String>,
    /// A bare SPIFFE trust domain: routes assertions without `iss` by their `sub`'s trust domain.
    pub spiffe_trust_domain: Option<String>,
    /// An http(s) URL the JWKS is fetched from (at start, then periodically); one of the three JWKS keys.
    pub jwks_url: Option<String>,
    /// A JWKS file, reread on an unknown `kid`; one of the three JWKS keys.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document, fixed for the life of the process; one of the three JWKS keys.
    pub jwks_inline: Option<String>,
    /// The value assertions' `aud` must contain (default `broker.issuer`).
    pub audience: Option<String>,
    /// Accepted `alg` values, among EdDSA, ES256, RS256, PS256 (default all four).
    pub algorithms: Option<Vec<String>>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat` (default 30, at most 60).
    pub leeway: Option<u64>,
    /// The largest assertion accepted, in bytes (default 8192, 512 to 65536).
    pub max_token_bytes: Option<usize>,
    /// The top-level claim naming the principal (default `"sub"`).
    pub subject_claim: Option<String>,
    /// Policy tag name → JSON pointer (RFC 6901) into the assertion's claims (default none).
    pub attributes: BTreeMap<String, String>,
    /// The least seconds between two reloads caused by an unknown `kid` (default 30; 0: no floor).
    pub min_refresh_interval: Option<u64>,
    /// Seconds between periodic fetches of `jwks_url` (default 300, at least 10).
    pub refresh_interval: Option<u64>,
    /// Assertions may be exchanged once (they must carry `jti`).
    pub single_use: bool,
    /// Longest accepted assertion lifetime in seconds (`exp - iat` and `exp - now`; default 24 h).
    pub max_assertion_lifetime: Option<u64>,
    /// Bearer token file sent with `jwks_url` fetches (Kubernetes: the pod's service-account token).
    pub jwks_bearer_token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for `jwks_url` (Kubernetes: the cluster CA).
    pub jwks_ca_file: Option<PathBuf>,
    /// What its assertions are accepted as: `subject_tokens` (default), `client_assertions` or `both`.
    pub used_for: UsedFor,
}

pub(super) fn build(
    builders: Vec<IssuerBuilder>,
    cx: &Context<'_>,
    problems: &mut Problems,
) -> Vec<(IssuerSpec, KeySet)> {
    let mut issuers = Vec::new();
    let mut names = BTreeSet::new();
    for (i, b) in builders.into_iter().enumerate() {
        let at = format!("issuers[{i}] ({})", b.name);
        if b.name.is_empty() || !names.insert(b.name.clone()) {
            problems.push(format!("{at}: `name` is required and must be unique"));
        }
        if let Some(spec) = build_issuer(b, cx, &at, problems) {
            issuers.push(spec);
        }
    }
    let mut ids = BTreeSet::new();
    let mut trust_domains = BTreeSet::new();
    for (spec, _) in &issuers {
        if let Some(td) = &spec.spiffe_trust_domain
            && !trust_domains.insert(td.clone())
        {
            problems.push(format!("issuers ({}): two issuers claim the trust domain `{td}`", spec.name));
        }
        if !ids.insert(spec.id()) {
            problems.push(format!("issuers ({}): two issuers share the identifier `{}`", spec.name, spec.id()));
        }
        if spec.id() == cx.broker_issuer {
            problems.push(format!("issuers ({}): an upstream issuer cannot be the broker itself", spec.name));
        }
    }
    issuers
}

fn build_issuer(b: IssuerBuilder, cx: &Context<'_>, at: &str, problems: &mut Problems) -> Option<(IssuerSpec, KeySet)> {
    let path = |p: &Path| -> PathBuf { cx.path(p) };
    let before = problems.len();
    match (&b.issuer, &b.spiffe_trust_domain) {
        (None, None) => problems.push(format!("{at}: needs `issuer` (its `iss`) or `spiffe_trust_domain`")),
        (Some(iss), _) if iss.is_empty() => problems.push(format!("{at}: `issuer` is empty")),
        (_, Some(td)) if td.is_empty() || td.contains('/') => {
            problems.push(format!("{at}: `spiffe_trust_domain` is a bare domain (`example.org`)"))
        }
        _ => {}
    }
    let algorithms: Vec<Algorithm> = match &b.algorithms {
        None => Algorithm::ALL.to_vec(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                let alg = Algorithm::parse(n);
                if alg.is_none() {
                    problems.push(format!("{at}: algorithm `{n}` is not allowed (ES256, RS256, PS256, EdDSA)"));
                }
                alg
            })
            .collect(),
    };
    if algorithms.is_empty() {
        problems.push(format!("{at}: `algorithms` is empty"));
    }
    let sources = [b.jwks_url.is_some(), b.jwks_file.is_some(), b.jwks_inline.is_some()];
    let jwks = match (&b.jwks_url, &b.jwks_file, &b.jwks_inline) {
        _ if sources.iter().filter(|s| **s).count() != 1 => {
            problems.push(format!("{at}: exactly one of `jwks_url`, `jwks_file`, `jwks_inline` is required"));
            None
        }
        (Some(url), _, _) => {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                problems.push(format!("{at}: `jwks_url` must be http(s)"));
            }
            Some(JwksSource::Url(url.clone()))
        }
        (_, Some(file), _) => Some(JwksSource::File(path(file))),
        (_, _, Some(inline)) => match serde_json::from_str::<JwkSet>(inline) {
            Ok(set) => Some(JwksSource::Inline(set)),
            Err(e) => {
                problems.push(format!("{at}: `jwks_inline` is not a JWKS: {e}"));
                None
            }
        },
        _ => None,
    };
    let keys = match &jwks {
        Some(JwksSource::Inline(set)) => Some(set.clone()),
        Some(JwksSource::File(file)) => match std::fs::read_to_string(file) {
            Ok(text) => serde_json::from_str::<JwkSet>(&text)
                .map_err(|e| problems.push(format!("{at}: {}: not a JWKS: {e}", file.display())))
                .ok(),
            Err(e) => {
                problems.push(format!("{at}: {}: {e}", file.display()));
                None
            }
        },
        _ => None,
    };
    let keys = match keys {
        Some(set) => {
            let (keys, key_problems) = KeySet::from_jwks(&set, &algorithms);
            problems.extend(key_problems.into_iter().map(|p| format!("{at}: {p}")));
            if keys.is_empty() {
                problems.push(format!("{at}: the JWKS holds no key usable with the allowed algorithms"));
            }
            keys
        }
        None => KeySet::default(),
    };
    for (tag, pointer) in &b.attributes {
        if !pointer.starts_with('/') {
            problems.push(format!("{at}: attributes.{tag}: `{pointer}` is not a JSON pointer (`/claim/field`)"));
        }
    }
    if b.audience.is_some() && b.used_for == UsedFor::ClientAssertions {
        problems.push(format!(
            "{at}: `audience` has no effect with `used_for = \"client_assertions\"` (a client assertion's `aud` \
             must name the broker)"
        ));
    }
    if b.audience.as_deref().is_some_and(str::is_empty) {
        problems.push(format!("{at}: `audience` is empty (leave it out to use broker.issuer)"));
    }
    if (b.jwks_bearer_token_file.is_some() || b.jwks_ca_file.is_some()) && b.jwks_url.is_none() {
        problems.push(format!("{at}: `jwks_bearer_token_file` and `jwks_ca_file` go with `jwks_url`"));
    }
    let jwks_ca_pem = b.jwks_ca_file.as_ref().and_then(|file| {
        let file = path(file);
        match std::fs::read(&file) {
            Ok(pem) if reqwest::Certificate::from_pem(&pem).is_ok() && pem.starts_with(b"-----BEGIN") => Some(pem),
            Ok(_) => {
                problems.push(format!("{at}: jwks_ca_file ({}): not a PEM certificate", file.display()));
                None
            }
            Err(e) => {
                problems.push(format!("{at}: jwks_ca_file ({}): {e}", file.display()));
                None
            }
        }
    });
    let max_token_bytes = b.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(512..=64 * 1024).contains(&max_token_bytes) {
        problems.push(format!("{at}: `max_token_bytes` must be between 512 and 65536"));
    }
    let leeway = b.leeway.unwrap_or(DEFAULT_ISSUER_LEEWAY);
    if leeway > MAX_LEEWAY {
        problems.push(format!("{at}: `leeway` over {MAX_LEEWAY} seconds is refused (it absorbs clock skew only)"));
    }
    let max_assertion_lifetime = b.max_assertion_lifetime.unwrap_or(DEFAULT_MAX_ASSERTION_LIFETIME);
    if !(60..=MAX_ASSERTION_LIFETIME).contains(&max_assertion_lifetime) {
        problems
            .push(format!("{at}: `max_assertion_lifetime` must be between 60 and {MAX_ASSERTION_LIFETIME} seconds"));
    }
    if problems.len() > before {
        return None;
    }
    let spec = IssuerSpec {
        name: b.name,
        issuer: b.issuer,
        spiffe_trust_domain: b.spiffe_trust_domain,
        jwks: jwks?,
        audience: b.audience.unwrap_or_else(|| cx.broker_issuer.to_string()),
        algorithms,
        leeway,
        max_token_bytes,
        subject_claim: b.subject_claim.unwrap_or_else(|| DEFAULT_SUBJECT_CLAIM.into()),
        attributes: b.attributes,
        min_refresh_interval: Duration::from_secs(b.min_refresh_interval.unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL)),
        refresh_interval: Duration::from_secs(b.refresh_interval.unwrap_or(DEFAULT_REFRESH_INTERVAL).max(10)),
        single_use: b.single_use,
        max_assertion_lifetime,
        jwks_bearer_token_file: b.jwks_bearer_token_file.map(|f| path(&f)),
        jwks_ca_pem,
        used_for: b.used_for,
    };
    Some((spec, keys))
}
