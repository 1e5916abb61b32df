//! RFC 7662 introspection: the online truth about a tessera token, for downstream APIs and gateways.
//!
//! A token is active only if its signature and times verify, the caller may introspect its audience, and no
//! revocation applies to it — its own `jti`, any ancestor's, its task, its subject or any actor, its client —
//! checked in one store lookup whatever the chain depth. An inactive token gets `active: false` and nothing
//! else; why it is inactive goes to the audit trail only. A store that cannot answer is an error
//! (UNAVAILABLE), never `active: true`.

use crate::audit::{AuditEvent, AuditSink};
use crate::catalog::Catalog;
use crate::client::Caller;
use crate::error::Result;
use crate::issuer::{Issuers, Origin};
use crate::metrics::Metrics;
use crate::revocation::{Probe, Revocations, replayed_client_assertion, spent_client_assertion_key};
use crate::secret::Token;
use crate::token::AccessClaims;

/// The answer to one introspection: the claims of an active token, or nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Introspection {
    /// `active: true`, with the token's claims (RFC 7662 §2.2).
    Active(Box<AccessClaims>),
    /// `active: false` and nothing else, whatever the reason, so a caller learns nothing about an invalid token.
    Inactive,
}

/// Introspection, over what it reads: the issuers that verify the token, the catalog (who may introspect
/// which audience), the revocation store, the audit sink and the metrics.
pub struct Introspect<'a> {
    /// Verifies the token (only tessera's own can be active).
    pub issuers: &'a Issuers,
    /// Says which clients may introspect which audience.
    pub catalog: &'a Catalog,
    /// The revocation store, looked up once per introspection.
    pub revocations: Revocations<'a>,
    /// Receives one event per answer.
    pub audit: &'a dyn AuditSink,
    /// Counts introspections by result.
    pub metrics: &'a Metrics,
}

impl Introspect<'_> {
    /// Whether `token` is active as of `now`, for `caller`. Every answer is an audit event.
    ///
    /// A caller's client assertion is spent in the revocation lookup's round trip; when the answer is known
    /// without a lookup (the token does not verify, or is not the caller's to introspect), in a round trip of
    /// its own. A replay is `invalid_client`, whatever the token.
    pub async fn run(&self, caller: &Caller<'_>, token: &Token, now: u64) -> Result<Introspection> {
        let mut spent = false;
        let mut outcome = self.decide(caller, token, now, &mut spent).await;
        // (A store that is down cannot spend it either: the answer is UNAVAILABLE already.)
        if !spent
            && !matches!(&outcome, Err(e) if e.code == crate::error::ErrorCode::Unavailable)
            && let Err(e) = self.revocations.spend_client_assertion(caller, now).await
        {
            outcome = Err(e);
        }
        self.audit.record(audit_event(&caller.client.id, &outcome));
        let result = match &outcome {
            Ok((Introspection::Active(_), _)) => "active",
            Ok((Introspection::Inactive, _)) => "inactive",
            Err(_) => "error",
        };
        self.metrics.introspections.add(1, &[opentelemetry::KeyValue::new("result", result)]);
        outcome.map(|(answer, _)| answer)
    }

    async fn decide(
        &self,
        caller: &Caller<'_>,
        token: &Token,
        now: u64,
        spent: &mut bool,
    ) -> Result<(Introspection, &'static str)> {
        let client = caller.client;
        let claims = match self.issuers.verify(token.expose(), now).await {
            Ok(v) => match v.origin {
                Origin::Broker(claims) => claims,
                Origin::Upstream => return Ok((Introspection::Inactive, "not a tessera token")),
            },
            Err(_) => return Ok((Introspection::Inactive, "does not verify")),
        };
        if !self.catalog.may_introspect(&claims.aud, &client.id) {
            return Ok((Introspection::Inactive, "client may not introspect this audience"));
        }
        let mut probe = Probe::default();
        probe.token(&claims);
        let spends: Vec<(String, u64)> =
            caller.assertion.iter().map(|once| (spent_client_assertion_key(once), once.until)).collect();
        let (found, fresh) = self.revocations.lookup_and_spend(probe.keys(), &spends, now).await?;
        *spent = true;
        if fresh.contains(&false) {
            return Err(replayed_client_assertion());
        }
        if probe.revoked(&found) {
            return Ok((Introspection::Inactive, "revoked"));
        }
        Ok((Introspection::Active(claims), "active"))
    }
}

fn audit_event(client_id: &str, outcome: &Result<(Introspection, &'static str)>) -> AuditEvent {
    let mut e = AuditEvent::new("introspect", "", client_id);
    match outcome {
        Ok((Introspection::Active(c), _)) => {
            e.decision = "active".into();
            e.sub_iss = c.sub_iss.clone();
            e.sub = c.sub.clone();
            e.actors = c
                .act
                .as_ref()
                .map(|a| a.chain().map(|a| a.sub.as_str()).collect::<Vec<_>>().join(" > "))
                .unwrap_or_default();
            e.audience = c.aud.clone();
            e.scope_granted = c.scope.to_string();
            e.task_id = c.task_id.clone();
            e.jti = c.jti.clone();
            e.exp = c.exp;
        }
        Ok((Introspection::Inactive, why)) => {
            e.decision = "inactive".into();
            e.reason = (*why).into();
        }
        Err(error) => {
            e.decision = "error".into();
            e.reason = error.code.as_str().into();
        }
    }
    e
}
