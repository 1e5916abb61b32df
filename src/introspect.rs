//! RFC 7662 introspection: the online truth about a tessera token, for downstream APIs and gateways.
//!
//! A token is active only if its signature and times verify, the caller may introspect its audience, and no
//! revocation applies to it — its own `jti`, any ancestor's, its task, its subject or any actor, its client —
//! checked in one store lookup whatever the chain depth. An inactive token gets `active: false` and nothing
//! else; why it is inactive goes to the audit trail only. A store that cannot answer is an error
//! (UNAVAILABLE), never `active: true`.
//!
//! A resource (forward-auth) also says how the token was presented ([`Presentation`]): a DPoP-bound token
//! (`cnf.jkt`) counts only as `Authorization: DPoP` with a proof for that very request, signed by the key it is
//! bound to, never seen before — its replay marker is spent in the same store round trip as the revocation
//! lookup, so no replica accepts it twice.

use crate::audit::{AuditEvent, AuditSink};
use crate::catalog::Catalog;
use crate::client::Caller;
use crate::dpop::{self, DpopError, Proof};
use crate::error::{Error, ErrorCode, Result};
use crate::issuer::{Issuers, Origin};
use crate::metrics::Metrics;
use crate::revocation::{Probe, Revocations, replayed_client_assertion, spent_client_assertion_key};
use crate::secret::Token;
use crate::token::AccessClaims;

/// The answer to one introspection: the claims of an active token, or nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Introspection {
    /// `active: true`, with the token's claims (RFC 7662 §2.2).
    Active(std::sync::Arc<AccessClaims>),
    /// `active: false` and nothing else, whatever the reason, so a caller learns nothing about an invalid token.
    Inactive,
}

/// How a caller presented a token to a resource: the `Authorization` scheme, its DPoP proof and its TLS
/// client certificate.
#[derive(Debug, Default)]
pub struct Presentation {
    /// Whether the token came as `Authorization: DPoP …` (RFC 9449 §7.1) rather than `Bearer`.
    pub dpop_scheme: bool,
    /// The `DPoP` header's proof, with the original request's method and URL.
    pub proof: Option<dpop::Presented>,
    /// SHA-256 of the caller's TLS client certificate (DER), when the gateway vouches for one: what an RFC 8705
    /// certificate-bound token is checked against.
    pub client_certificate_sha256: Option<[u8; 32]>,
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
    /// How DPoP proofs are judged (their freshness window).
    pub dpop: dpop::Settings,
}

impl Introspect<'_> {
    /// Whether `token` is active as of `now`, for `caller`. Every answer is an audit event.
    ///
    /// A caller's client assertion is spent in the revocation lookup's round trip; when the answer is known
    /// without a lookup (the token does not verify, or is not the caller's to introspect), in a round trip of
    /// its own. A replay is `invalid_client`, whatever the token.
    pub async fn run(&self, caller: &Caller<'_>, token: &Token, now: u64) -> Result<Introspection> {
        self.answer(caller, token, None, now).await
    }

    /// Whether `token`, presented to a resource as `presentation` says, is active as of `now`, for `caller`
    /// (the resource's gateway): as [`Introspect::run`], and a sender-constrained token must be presented with
    /// proof of its key. A presentation that does not prove it is `invalid_dpop_proof` (DPoP) or
    /// `invalid_grant` (a certificate-bound token without its certificate).
    pub async fn run_presented(
        &self,
        caller: &Caller<'_>,
        token: &Token,
        presentation: &Presentation,
        now: u64,
    ) -> Result<Introspection> {
        self.answer(caller, token, Some(presentation), now).await
    }

    async fn answer(
        &self,
        caller: &Caller<'_>,
        token: &Token,
        presentation: Option<&Presentation>,
        now: u64,
    ) -> Result<Introspection> {
        let mut spent = false;
        let mut outcome = self.decide(caller, token, presentation, now, &mut spent).await;
        // (A store that is down cannot spend it either: the answer is UNAVAILABLE already.)
        if !spent
            && !matches!(&outcome, Err(e) if e.code == ErrorCode::Unavailable)
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
        presentation: Option<&Presentation>,
        now: u64,
        spent: &mut bool,
    ) -> Result<(Introspection, &'static str)> {
        let client = caller.client;
        let claims = match self.issuers.verify(token.expose(), now).await {
            Ok(v) => match &v.origin {
                Origin::Broker(claims) => std::sync::Arc::clone(claims),
                Origin::Upstream => return Ok((Introspection::Inactive, "not a tessera token")),
            },
            Err(_) => return Ok((Introspection::Inactive, "does not verify")),
        };
        if !self.catalog.may_introspect(&claims.aud, &client.id) {
            return Ok((Introspection::Inactive, "client may not introspect this audience"));
        }
        let proof = match presentation {
            Some(p) => check_sender(&claims, token, p, self.dpop, now)?,
            None => None,
        };
        let mut probe = Probe::default();
        probe.token(&claims);
        // The DPoP proof's marker, then the caller's client assertion's; with neither, a plain lookup (which a
        // mirror answers from its own copy).
        let mut spends: Vec<(String, u64)> = proof.iter().map(|p| (p.replay_key(), p.until)).collect();
        let client_at = caller.assertion.as_ref().map(|once| {
            spends.push((spent_client_assertion_key(once), once.until));
            spends.len() - 1
        });
        let (found, fresh) = if spends.is_empty() {
            (self.revocations.lookup(probe.keys(), now).await?, Vec::new())
        } else {
            self.revocations.lookup_and_spend(probe.keys(), &spends, now).await?
        };
        *spent = true;
        if client_at.is_some_and(|i| fresh.get(i) != Some(&true)) {
            return Err(replayed_client_assertion());
        }
        if probe.revoked(&found) {
            return Ok((Introspection::Inactive, "revoked"));
        }
        if proof.is_some() && fresh.first() != Some(&true) {
            return Err(Error::new(ErrorCode::InvalidDpopProof, "the DPoP proof has already been used (its jti)"));
        }
        Ok((Introspection::Active(claims), "active"))
    }
}

/// RFC 9449 §7 and RFC 8705 §3: a bound token is presented with proof of its key. Returns the verified DPoP
/// proof, whose replay marker the lookup then spends.
fn check_sender(
    claims: &AccessClaims,
    token: &Token,
    presentation: &Presentation,
    settings: dpop::Settings,
    now: u64,
) -> Result<Option<Proof>> {
    let refused = |why: &str| Error::new(ErrorCode::InvalidDpopProof, why);
    if let Some(x5t) = claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_deref())
        && presentation.client_certificate_sha256.as_ref().map(dpop::certificate_thumbprint).as_deref() != Some(x5t)
    {
        return Err(Error::invalid_grant("the token is bound to a client certificate the request does not present"));
    }
    match (claims.jkt(), presentation.dpop_scheme, &presentation.proof) {
        (None, false, _) => Ok(None),
        (None, true, _) => Err(refused("the token is not DPoP-bound: present it as a Bearer token")),
        (Some(_), false, _) => {
            Err(refused("the token is DPoP-bound: present it as Authorization: DPoP, with a DPoP proof"))
        }
        (Some(_), true, None) => Err(refused("a DPoP proof is required with a DPoP-bound token")),
        (Some(jkt), true, Some(p)) => {
            let expected = dpop::Expected { htm: &p.htm, htu: &p.htu, access_token: Some(token.expose()) };
            let proof = dpop::verify(p.proof.expose(), expected, settings, now)?;
            if proof.jkt != jkt {
                return Err(DpopError::WrongKey.into());
            }
            Ok(Some(proof))
        }
    }
}

fn audit_event(client_id: &str, outcome: &Result<(Introspection, &'static str)>) -> AuditEvent {
    let mut e = AuditEvent::new("introspect", "", client_id);
    match outcome {
        Ok((Introspection::Active(c), _)) => {
            e.decision = "active".into();
            e.about(c);
            e.audience = c.aud.clone();
            e.details_granted = c.authorization_details.as_ref().map(crate::rar::Details::to_json).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Confirmation;

    const SETTINGS: dpop::Settings = dpop::Settings { max_age: 60, leeway: 5 };

    fn presented(dpop_scheme: bool, proof: Option<&str>, cert: Option<[u8; 32]>) -> Presentation {
        Presentation {
            dpop_scheme,
            proof: proof.map(|p| dpop::Presented {
                proof: Token::new(p),
                htm: "GET".into(),
                htu: "https://a/x".into(),
            }),
            client_certificate_sha256: cert,
        }
    }

    fn code(r: Result<Option<Proof>>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn a_bound_token_is_presented_with_proof_of_its_key() {
        let token = Token::new("t");
        let bearer = AccessClaims::example();
        assert_eq!(check_sender(&bearer, &token, &presented(false, None, None), SETTINGS, 0).unwrap(), None);
        assert_eq!(
            check_sender(&bearer, &token, &presented(false, Some("ignored"), None), SETTINGS, 0).unwrap(),
            None,
            "a stray proof with a bearer token is not looked at"
        );
        assert_eq!(
            code(check_sender(&bearer, &token, &presented(true, None, None), SETTINGS, 0)),
            ErrorCode::InvalidDpopProof
        );
        let mut dpop_bound = AccessClaims::example();
        dpop_bound.cnf = Some(Confirmation { jkt: Some("k".into()), x5t_s256: None });
        for p in [
            presented(false, None, None),
            presented(false, Some("p"), None),
            presented(true, None, None),
            presented(true, Some("not-a-proof"), None),
        ] {
            assert_eq!(code(check_sender(&dpop_bound, &token, &p, SETTINGS, 0)), ErrorCode::InvalidDpopProof);
        }
        // RFC 8705: a certificate-bound token needs the certificate it is bound to.
        let cert = [3u8; 32];
        let mut mtls_bound = AccessClaims::example();
        mtls_bound.cnf = Some(Confirmation { jkt: None, x5t_s256: Some(dpop::certificate_thumbprint(&cert)) });
        assert_eq!(
            code(check_sender(&mtls_bound, &token, &presented(false, None, None), SETTINGS, 0)),
            ErrorCode::InvalidGrant
        );
        assert_eq!(
            code(check_sender(&mtls_bound, &token, &presented(false, None, Some([4u8; 32])), SETTINGS, 0)),
            ErrorCode::InvalidGrant
        );
        assert_eq!(check_sender(&mtls_bound, &token, &presented(false, None, Some(cert)), SETTINGS, 0).unwrap(), None);
    }
}
