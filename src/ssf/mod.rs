//! OpenID Shared Signals (SSF 1.0, CAEP 1.0): tessera as a transmitter (here) and as a receiver of upstream
//! identity providers' signals ([`receive`]). Every revocation (the revocation
//! log, [`crate::revocation::watch`]) becomes a Security Event Token (RFC 8417, `typ: secevent+jwt`) signed
//! with tessera's signing key — so a receiver verifies it with tessera's JWKS — for each configured receiver:
//! pushed to it (RFC 8935, [`push`], with retries) or kept for it to poll (RFC 8936, `Current::ssf_poll`).
//! The transmitter's metadata ([`metadata`]) is served at `/.well-known/ssf-configuration`.
//!
//! Each receiver has a delivery cursor in the store, so every replica delivers from the same place: for push,
//! one replica at a time holds the receiver's lease and delivers in order, advancing the cursor once a SET is
//! accepted (a receiver may see a SET again after a failover, never out of order: its `jti` is stable, so it
//! drops repeats); for poll, an acknowledgement advances it.
//!
//! Mapping (docs/revocation.md): every revocation is a CAEP `session-revoked` event whose subject is the
//! revoked target as an RFC 9493 / SSF subject identifier — a `jti`: `{"format": "jwt_id", "iss", "jti"}`; a
//! subject: `{"format": "iss_sub", "iss", "sub"}`; a task or a client: `{"format": "opaque", "id"}` — with
//! tessera's own reading of it in the event's `tessera` member (`kind`, `value`, `expires_at`, `reason_class`).

pub mod push;
pub mod receive;

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::error::{Error, ErrorCode, Result};
use crate::revocation::Target;
use crate::revocation::watch::Event;

/// CAEP 1.0 §3.1: a session (here: a token, or everything a target holds) was revoked.
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// The JWT `typ` of a SET (RFC 8417 §2.3).
pub const SET_TYP: &str = "secevent+jwt";
/// RFC 8935 push delivery.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery.
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";
/// The most SETs one poll answers.
pub const MAX_POLL: usize = 100;

/// How a receiver gets its SETs.
#[derive(Clone)]
pub enum Delivery {
    /// RFC 8935: POSTed to `url`, with `authorization` as the `Authorization` header if set.
    Push {
        /// The receiver's endpoint.
        url: String,
        /// The `Authorization` header value to send (a secret).
        authorization: Option<std::sync::Arc<crate::secret::Token>>,
    },
    /// RFC 8936: polled at `/ssf/poll/<id>` with `Authorization: Bearer <token>`, whose SHA-256 this is.
    Poll {
        /// SHA-256 of the receiver's bearer token.
        token_sha256: [u8; 32],
    },
}

/// One configured receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Its name: in the store keys, the poll URL and each SET's `jti`.
    pub id: String,
    /// The `aud` of its SETs.
    pub audience: String,
    /// How it gets them.
    pub delivery: Delivery,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.delivery {
            Delivery::Push { url, .. } => format!("push to {url}"),
            Delivery::Poll { .. } => "poll".into(),
        };
        f.debug_struct("Receiver")
            .field("id", &self.id)
            .field("audience", &self.audience)
            .field("delivery", &how)
            .finish()
    }
}

/// The SET `jti` of `event` for `receiver`: stable, so a receiver drops a SET it saw before.
pub fn set_jti(receiver: &str, cursor: &str) -> String {
    format!("{receiver}.{cursor}")
}

/// The event cursor a SET `jti` of `receiver` names.
pub fn cursor_of(receiver: &str, jti: &str) -> Option<String> {
    let cursor = jti.strip_prefix(receiver)?.strip_prefix('.')?;
    crate::revocation::watch::parse_cursor(cursor).map(|_| cursor.to_string())
}

/// The RFC 9493 / SSF subject identifier of a revoked target.
pub fn subject_id(issuer: &str, target: &Target) -> Value {
    match target {
        Target::Jti(jti) => json!({ "format": "jwt_id", "iss": issuer, "jti": jti }),
        Target::Subject { iss, sub } => json!({ "format": "iss_sub", "iss": iss, "sub": sub }),
        Target::Task(id) | Target::Client(id) => json!({ "format": "opaque", "id": id }),
    }
}

/// The claims of the SET announcing `event` to `receiver` (RFC 8417 §2.2, SSF 1.0 §4).
pub fn set_claims(issuer: &str, receiver: &Receiver, event: &Event, now: u64) -> Value {
    let (value, principal_iss) = match &event.target {
        Target::Jti(v) | Target::Task(v) | Target::Client(v) => (v.as_str(), None),
        Target::Subject { iss, sub } => (sub.as_str(), Some(iss.as_str())),
    };
    let mut tessera = json!({
        "kind": event.target.kind(),
        "value": value,
        "expires_at": event.expires_at,
        "reason_class": event.cause.as_str(),
    });
    if let Some(iss) = principal_iss {
        tessera["issuer"] = iss.into();
    }
    let mut revoked = json!({ "event_timestamp": event.revoked_at, "initiating_entity": "admin", "tessera": tessera });
    if !event.reason.is_empty() {
        revoked["reason_admin"] = json!({ "en": event.reason });
    }
    json!({
        "iss": issuer,
        "aud": receiver.audience,
        "iat": now,
        "jti": set_jti(&receiver.id, &event.cursor),
        "txn": event.cursor,
        "sub_id": subject_id(issuer, &event.target),
        "events": { SESSION_REVOKED: revoked },
    })
}

/// The transmitter configuration metadata (SSF 1.0 §7.1), served at `/.well-known/ssf-configuration`.
pub fn metadata(issuer: &str) -> Value {
    let issuer = issuer.trim_end_matches('/');
    json!({
        "spec_version": "1_0",
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
        "authorization_schemes": [{ "spec_urn": "urn:ietf:rfc:6750" }],
        "default_subjects": "ALL",
    })
}

/// The configured receivers, by id.
#[derive(Debug, Default)]
pub struct Receivers {
    by_id: HashMap<String, Receiver>,
}

/// What a poll (RFC 8936 §2.4) asks.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PollRequest {
    /// SETs received: their `jti`s. Acknowledging one acknowledges every earlier one (delivery is in order).
    pub ack: Vec<String>,
    /// How many SETs at most (default and ceiling [`MAX_POLL`]).
    pub max_events: Option<usize>,
    /// Answer at once even when there is nothing (else wait a moment for the next SET).
    pub return_immediately: bool,
    /// Negative acknowledgements (RFC 8936 §2.4.3): accepted and recorded nowhere — the SETs stay acknowledged.
    pub set_errs: Option<Value>,
}

impl Receivers {
    /// The receivers, keyed by their ids (checked unique by the config).
    pub fn new(receivers: Vec<Receiver>) -> Receivers {
        Receivers { by_id: receivers.into_iter().map(|r| (r.id.clone(), r)).collect() }
    }

    /// Every receiver delivered to by push.
    pub fn pushed(&self) -> impl Iterator<Item = &Receiver> {
        self.by_id.values().filter(|r| matches!(r.delivery, Delivery::Push { .. }))
    }

    /// The poll receiver `id`, if `bearer` is its token (compared by SHA-256, in constant time).
    pub fn poller(&self, id: &str, bearer: Option<&str>) -> Result<&Receiver> {
        let refused = || Error::new(ErrorCode::InvalidClient, "the receiver could not be authenticated");
        let receiver = self.by_id.get(id).ok_or_else(refused)?;
        let Delivery::Poll { token_sha256 } = &receiver.delivery else { return Err(refused()) };
        let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bearer.ok_or_else(refused)?.as_bytes());
        if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_ref(), token_sha256).is_err() {
            return Err(refused());
        }
        Ok(receiver)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
