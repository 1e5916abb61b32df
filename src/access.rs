//! Whether a presented token grants what a protected route needs — the one check behind forward-auth
//! ([`crate::http::gateway`]) and the credential-injecting proxy ([`crate::proxy`]), so a token that passes
//! one passes the other and a revocation stops both at once.
//!
//! The token must be active as Introspect sees it (signature, time, every applicable revocation, and proof of
//! possession when it is sender-constrained — one store round trip), for the route's audience, with every
//! scope the route needs and, when the route has an RFC 9396 requirement, details that satisfy it for this
//! request's path parameters and method.

use std::collections::BTreeMap;

use crate::broker::Current;
use crate::client::Client;
use crate::error::{Error, ErrorCode};
use crate::introspect::{Introspection, Presentation};
use crate::rar::Requirement;
use crate::scopes::Scopes;
use crate::secret::Token;
use crate::token::AccessClaims;

/// What a route needs of a token.
#[derive(Clone, Copy, Debug)]
pub struct Need<'a> {
    /// The audience the token must be for.
    pub audience: &'a str,
    /// Scopes it must all hold.
    pub scopes: &'a Scopes,
    /// The route's details requirement, with the request path's parameters.
    pub details: Option<(&'a Requirement, &'a BTreeMap<String, String>)>,
    /// The request's method (what a details requirement maps to an action).
    pub method: Option<&'a str>,
}

/// Why a token does not grant the route.
#[derive(Debug)]
pub enum Denied {
    /// Not active (revoked, expired, unknown, badly signed): nothing more is said.
    Inactive,
    /// The token could not be verified (RFC 6750 `invalid_token`), with why.
    InvalidToken(String),
    /// The DPoP proof failed (RFC 9449 `invalid_dpop_proof`), with why.
    InvalidDpopProof(String),
    /// Active, but for another audience.
    OtherAudience,
    /// Lacks a scope the route needs.
    InsufficientScope,
    /// Its `authorization_details` do not cover this request.
    InsufficientDetails,
    /// Not the caller's fault: the store is unavailable, or the checking client may not introspect.
    Failed(Error),
}

impl Denied {
    /// A short reason, for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Inactive => "inactive",
            Denied::InvalidToken(_) => "invalid_token",
            Denied::InvalidDpopProof(_) => "invalid_dpop_proof",
            Denied::OtherAudience => "other_audience",
            Denied::InsufficientScope => "insufficient_scope",
            Denied::InsufficientDetails => "insufficient_details",
            Denied::Failed(e) => e.code.as_str(),
        }
    }
}

/// Checks `token`, as presented, against `need`, as `checker` (the gateway's or the proxy's client, which
/// must be allowed to introspect the audience), as of `now`.
pub async fn check(
    current: &Current<'_>,
    checker: &Client,
    token: &Token,
    presentation: &Presentation,
    need: Need<'_>,
    now: u64,
) -> Result<std::sync::Arc<AccessClaims>, Denied> {
    let claims = match current.introspect_presented(checker, token, presentation, now).await {
        Ok(Introspection::Active(claims)) => claims,
        Ok(Introspection::Inactive) => return Err(Denied::Inactive),
        Err(e) if e.code == ErrorCode::InvalidDpopProof => return Err(Denied::InvalidDpopProof(e.description)),
        Err(e) if e.code == ErrorCode::InvalidGrant => return Err(Denied::InvalidToken(e.description)),
        Err(e) => return Err(Denied::Failed(e)),
    };
    if claims.aud != need.audience {
        return Err(Denied::OtherAudience);
    }
    if !need.scopes.iter().all(|s| claims.scope.contains(s)) {
        return Err(Denied::InsufficientScope);
    }
    if let Some((requirement, params)) = need.details
        && !requirement.satisfied_by(claims.authorization_details.as_ref(), params, need.method)
    {
        return Err(Denied::InsufficientDetails);
    }
    Ok(claims)
}

/// One call made through the credential-injecting proxy, as its audit event records it (the actual API calls
/// made with a token): which route, method and path, and how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The proxy route's `path_prefix`.
    pub route: &'a str,
    /// The audience the route needs.
    pub audience: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// The request's path on the proxy (recorded escaped, as every request-borne audit field).
    pub path: &'a str,
}

/// How a proxied call ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// Forwarded; the upstream answered with this status.
    Forwarded(u16),
    /// Refused before reaching the upstream, with the reason ([`Denied::reason`] or the proxy's own).
    Refused(&'a str),
    /// Forwarded, but the upstream could not be reached or its answer was cut off, with why.
    Failed(&'a str),
}

/// Records `call` by `checker` (the proxy's client), keyed by the token's task and `jti` when it was known.
pub fn record_call(
    current: &Current<'_>,
    checker: &str,
    claims: Option<&AccessClaims>,
    call: Call<'_>,
    outcome: Outcome<'_>,
) {
    let (decision, reason, status) = match outcome {
        Outcome::Forwarded(status) => ("forwarded", "", status.to_string()),
        Outcome::Refused(reason) => ("refused", reason, "-".into()),
        Outcome::Failed(reason) => ("failed", reason, "-".into()),
    };
    let mut e = crate::audit::AuditEvent::new("proxy", decision, checker);
    e.reason = reason.into();
    e.detail = format!("{} {} {} -> {status}", call.route, call.method, call.path);
    e.audience = call.audience.into();
    if let Some(c) = claims {
        e.about(c);
    }
    current.audit().record(e);
}
