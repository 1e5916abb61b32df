//! RFC 7662 introspection: the online truth about a tessera token, for downstream APIs and gateways.
//!
//! A token is active only if its signature and times verify, the caller may introspect its audience, and no
//! revocation applies to it — its own `jti`, any ancestor's, its task, its subject or any actor, its client —
//! checked in one store lookup whatever the chain depth. An inactive token gets `active: false` and nothing
//! else; why it is inactive goes to the audit trail only. A store that cannot answer is an error
//! (UNAVAILABLE), never `active: true`.

use crate::broker::Broker;
use crate::client::Client;
use crate::error::Result;
use crate::issuer::Origin;
use crate::revocation::Probe;
use crate::secret::Secret;
use crate::token::AccessClaims;

/// The answer to one introspection: the claims of an active token, or nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Introspection {
    Active(Box<AccessClaims>),
    Inactive,
}

impl Broker {
    pub async fn introspect(&self, client: &Client, token: &Secret, now: u64) -> Result<Introspection> {
        let outcome = self.decide_introspection(client, token, now).await;
        self.audit.introspect(&client.id, &outcome);
        let result = match &outcome {
            Ok((Introspection::Active(_), _)) => "active",
            Ok((Introspection::Inactive, _)) => "inactive",
            Err(_) => "error",
        };
        self.metrics.introspections.add(1, &[opentelemetry::KeyValue::new("result", result)]);
        outcome.map(|(answer, _)| answer)
    }

    async fn decide_introspection(
        &self,
        client: &Client,
        token: &Secret,
        now: u64,
    ) -> Result<(Introspection, &'static str)> {
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
        let found = self.lookup(probe.keys(), now).await?;
        if probe.revoked(&found) {
            return Ok((Introspection::Inactive, "revoked"));
        }
        Ok((Introspection::Active(claims), "active"))
    }
}
