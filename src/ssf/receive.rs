//! Shared Signals as a receiver: Security Event Tokens pushed (RFC 8935, `POST /ssf/events`) by the upstream
//! identity providers of `[[ssf.transmitters]]`, each verified with its issuer's keys from the issuer registry
//! ([`crate::issuer::Issuers::verify_security_event`]). A CAEP `session-revoked` or RISC `account-disabled`
//! for one of that provider's principals revokes every token of that principal issued up to now — as
//! subject or actor, and everything derived from them — and, where configured, suspends it; the revocation
//! reaches every replica, the watch stream, the status lists and the SSF receivers like any other. Every
//! received SET is audited (`ssf_receive`); one that does not verify changes nothing; a replayed one (same
//! `jti`) is acknowledged and changes nothing more.

use serde_json::{Map, Value};

use super::SESSION_REVOKED;
use crate::audit::{AuditEvent, AuditSink};
use crate::issuer::{Issuers, TokenError};
use crate::revocation::{Revoke, spent_key};

/// RISC 1.0: the account was disabled.
pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";

/// One configured upstream transmitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmitter {
    /// The `[[issuers]]` entry (by name) whose keys verify its SETs and whose principals it speaks for.
    pub issuer: String,
    /// The `aud` its SETs must carry.
    pub audience: String,
    /// Also suspend the principal, for this many seconds (`None`: revoke only).
    pub suspend: Option<u64>,
}

/// Why a SET was refused: the RFC 8935 §2.4 error code and a description safe to return.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// `invalid_request`, `invalid_key`, `invalid_issuer` or `invalid_audience`.
    pub err: &'static str,
    /// What was wrong.
    pub description: String,
}

/// What a received SET came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The principal's tokens were revoked (and it was suspended, if configured).
    Revoked {
        /// The principal's issuer.
        iss: String,
        /// Its `sub`.
        sub: String,
    },
    /// Verified, but no event tessera acts on: acknowledged.
    Ignored,
    /// Verified, and seen before (same issuer and `jti`): acknowledged, nothing done again.
    Replayed,
}

fn refused(err: &'static str, description: impl Into<String>) -> Refused {
    Refused { err, description: description.into() }
}

fn from_token_error(e: &TokenError) -> Refused {
    match e {
        TokenError::UnknownIssuer => refused("invalid_issuer", "the SET is not from a configured transmitter"),
        TokenError::WrongAudience => refused("invalid_audience", "the SET is not for this receiver"),
        TokenError::UnknownKey | TokenError::Jws(_) => refused("invalid_key", format!("the SET {e}")),
        _ => refused("invalid_request", format!("the SET {e}")),
    }
}

/// The principal an event is about: SSF 1.0's top-level `sub_id`, or CAEP's per-event `subject`, in the
/// `iss_sub` format (RFC 9493 §3.2.5), and of the transmitter's own issuer (a provider speaks only for its
/// own principals).
fn principal<'c>(claims: &'c Map<String, Value>, event: &'c Value, iss: &str) -> Result<&'c str, Refused> {
    let subject = claims
        .get("sub_id")
        .or_else(|| event.get("subject"))
        .ok_or_else(|| refused("invalid_request", "the event names no subject (`sub_id`)"))?;
    if subject.get("format").and_then(Value::as_str) != Some("iss_sub") {
        return Err(refused("invalid_request", "the subject is not in the iss_sub format"));
    }
    if subject.get("iss").and_then(Value::as_str) != Some(iss) {
        return Err(refused("invalid_request", "the subject is not one of the transmitter's own principals"));
    }
    subject.get("sub").and_then(Value::as_str).ok_or_else(|| refused("invalid_request", "the subject has no `sub`"))
}

/// Receiving SETs, over the issuers that verify them and the `Revoke` that acts on them.
pub struct Receive<'a> {
    /// The trusted issuers.
    pub issuers: &'a Issuers,
    /// The configured transmitters.
    pub transmitters: &'a [Transmitter],
    /// Records the revocations (and spends each SET's `jti`).
    pub revoke: Revoke<'a>,
    /// Receives one event per SET.
    pub audit: &'a dyn AuditSink,
}

impl Receive<'_> {
    /// Verifies and acts on one pushed SET, and audits it. `Err(Ok(_))`: refused (400, nothing changed);
    /// `Err(Err(_))`: the store failed (503: the transmitter retries).
    pub async fn run(&self, set: &str, now: u64) -> Result<Received, Result<Refused, crate::Error>> {
        let outcome = self.decide(set, now).await;
        let mut e = AuditEvent::new("ssf_receive", "", "");
        match &outcome {
            Ok(Received::Revoked { iss, sub }) => {
                e.decision = "revoked".into();
                e.sub_iss = iss.clone();
                e.sub = sub.clone();
            }
            Ok(Received::Ignored) => e.decision = "ignored".into(),
            Ok(Received::Replayed) => e.decision = "replayed".into(),
            Err(Ok(r)) => {
                e.decision = "denied".into();
                e.reason = r.err.into();
                e.detail = r.description.clone();
            }
            Err(Err(error)) => {
                e.decision = "error".into();
                e.reason = error.code.as_str().into();
            }
        }
        self.audit.record(e);
        outcome
    }

    async fn decide(&self, set: &str, now: u64) -> Result<Received, Result<Refused, crate::Error>> {
        let names: Vec<&str> = self.transmitters.iter().map(|t| t.issuer.as_str()).collect();
        let audiences: Vec<&str> = self.transmitters.iter().map(|t| t.audience.as_str()).collect();
        let (claims, name, spend) = self
            .issuers
            .verify_security_event(set, &names, &audiences, now)
            .await
            .map_err(|e| Ok(from_token_error(&e)))?;
        let transmitter = self
            .transmitters
            .iter()
            .find(|t| t.issuer == name)
            .ok_or_else(|| Ok(refused("invalid_issuer", "the SET is not from a configured transmitter")))?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_string();
        if !audiences_of(&claims).any(|a| a == transmitter.audience) {
            return Err(Ok(refused("invalid_audience", "the SET is not for this receiver")));
        }
        let events = claims
            .get("events")
            .and_then(Value::as_object)
            .ok_or_else(|| Ok(refused("invalid_request", "the SET has no `events` object")))?;
        let acted_on: Vec<(&String, &Value)> =
            events.iter().filter(|(t, _)| t.as_str() == SESSION_REVOKED || t.as_str() == ACCOUNT_DISABLED).collect();
        let mut principals = Vec::new();
        for (_, event) in &acted_on {
            principals.push(principal(&claims, event, &iss).map_err(Ok)?);
        }
        let spends = [(spent_key(&spend.issuer, &spend.jti), spend.until)];
        let (_, fresh) = self.revoke.revocations.lookup_and_spend(&[], &spends, now).await.map_err(Err)?;
        if fresh.first() != Some(&true) {
            return Ok(Received::Replayed);
        }
        let Some(sub) = principals.first() else { return Ok(Received::Ignored) };
        let types: Vec<&str> = acted_on.iter().map(|(t, _)| t.rsplit('/').next().unwrap_or_default()).collect();
        let reason = format!("shared signal from {name}: {}", types.join(", "));
        self.revoke.signal(&iss, sub, transmitter.suspend, &reason, now).await.map_err(Err)?;
        Ok(Received::Revoked { iss, sub: (*sub).to_string() })
    }
}

fn audiences_of(claims: &Map<String, Value>) -> impl Iterator<Item = &str> {
    let aud = claims.get("aud");
    let one = aud.and_then(Value::as_str);
    let many = aud.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
    one.into_iter().chain(many)
}
