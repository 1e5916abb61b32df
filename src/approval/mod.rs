//! Step-up approvals: grants a human must approve before they are issued.
//!
//! A Cedar `permit` annotated `@approval("why")` allows a scope only with a human's approval: when every
//! policy that allows a requested scope carries the annotation ([`crate::policy::Decision::approval`]), the
//! exchange is not refused but answered `authorization_pending` with an approval id and where to poll it, and
//! an approval request is recorded — who, through whom, for which audience, scopes, details and task, and why
//! — and announced ([`Announcer`], the signed webhook of [`webhook`]). An approver (a client with the
//! `approve` RPC, never the client that asked) approves or denies it; the same exchange retried then succeeds
//! once, or is `access_denied` for as long as the denial is remembered.
//!
//! An approval is bound to exactly what was asked ([`Binding`]): the calling client, the subject principal,
//! the actor chain, the audience, the requested scopes, the granted `authorization_details`, the task, the
//! session and the purpose. A retry that differs in any of them is another request. It expires: pending for
//! `approvals.pending_ttl`, approved for `approvals.approved_ttl` (then it must be asked again), denied for
//! `approvals.denial_ttl`. It is spent by the first exchange it grants. Its token is bound to the task like any
//! other, so revoking the task ends what the approval granted, and a retried exchange for a revoked task is
//! refused before any approval is looked at.
//!
//! The state lives in the store ([`Ledger`]), so every replica sees the same requests and decisions; the
//! rules of each step live here, and the store only compares and swaps whole records. These are not hot
//! paths: an exchange that needs no approval never touches the ledger.

pub mod webhook;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditSink};
use crate::client::{Caller, Rpc};
use crate::error::{Error, ErrorCode, Pending, Result};
use crate::metrics::Metrics;
use crate::revocation::{Revocations, StoreError, StoreFuture};

/// How long approvals live and how often clients should poll: `[approvals]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Seconds a request waits for a decision before it expires.
    pub pending_ttl: u64,
    /// Seconds an approval stays usable once approved.
    pub approved_ttl: u64,
    /// Seconds a denial is remembered: the same request is `access_denied` meanwhile.
    pub denial_ttl: u64,
    /// Seconds between polls a pending answer asks for (RFC 8628 §3.5 `interval`).
    pub interval: u64,
}

/// Where an approval stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for an approver.
    Pending,
    /// Approved, not yet used: the next identical exchange is granted.
    Approved,
    /// Denied: the identical exchange is refused while the denial is remembered.
    Denied,
    /// Approved and spent by the exchange it granted.
    Used,
}

impl Status {
    /// The state's name on the wire (`pending`, `approved`, `denied`, `used`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Used => "used",
        }
    }
}

/// A principal as an approval names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// The issuer identifier.
    pub iss: String,
    /// The subject within it.
    pub sub: String,
}

/// One approval request and its fate, as the store keeps it and every face shows it. It holds identifiers
/// and what was asked, never a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Random, unguessable (128 bits): what approvers decide and requesters poll.
    pub approval_id: String,
    /// Where it stands.
    pub status: Status,
    /// Hex SHA-256 of what it is bound to ([`Binding`]).
    pub binding: String,
    /// The client whose exchange opened it (and the only one it can grant to).
    pub client_id: String,
    /// The subject principal.
    pub subject: Named,
    /// The actor chain of the token it would grant, acting actor first.
    pub actors: Vec<Named>,
    /// The audience of the token it would grant.
    pub audience: String,
    /// Every scope the exchange asked for (space-separated).
    pub scope: String,
    /// The scopes that need the approval (space-separated).
    pub approval_scope: String,
    /// The RFC 9396 details the token would carry (JSON), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// The task the token would be bound to.
    pub task_id: String,
    /// The session, if the exchange named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The exchange's stated purpose, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Why approval is needed: the `@approval` reasons of the deciding policies.
    pub reasons: Vec<String>,
    /// The ids of the policies that asked for it.
    pub policies: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// When it expires as it stands (Unix seconds): pending, approved or denied.
    pub expires_at: u64,
    /// The approver (its client id), once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When it was decided (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    /// The approver's reason, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// When the exchange it granted ran, and that token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
    /// The `jti` of the token it granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Approval {
    /// The state as of `now`: `expired` once past its expiry, else its status.
    pub fn state(&self, now: u64) -> &'static str {
        match self.status {
            Status::Pending | Status::Approved | Status::Denied if self.expires_at <= now => "expired",
            status => status.as_str(),
        }
    }

    fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::internal(format!("approval record: {e}")))
    }

    fn from_json(text: &str) -> Result<Approval> {
        serde_json::from_str(text).map_err(|e| Error::internal(format!("approval record in the store: {e}")))
    }

    fn pending(&self, settings: &Settings, base: &str) -> Pending {
        Pending {
            approval_id: self.approval_id.clone(),
            approval_uri: approval_uri(base, &self.approval_id),
            interval: settings.interval,
        }
    }
}

/// Where an approval's state is read over HTTP: `<broker issuer>/approvals/<id>`.
pub fn approval_uri(broker_issuer: &str, id: &str) -> String {
    format!("{}/approvals/{id}", broker_issuer.trim_end_matches('/'))
}

/// Everything an approval is bound to, in one canonical form: two exchanges are "the same request" exactly
/// when their bindings are equal.
#[derive(Debug, Serialize)]
pub struct Binding<'a> {
    /// The calling client.
    pub client_id: &'a str,
    /// The subject principal.
    pub subject: Named,
    /// The actor chain of the token, acting actor first.
    pub actors: Vec<Named>,
    /// The audience.
    pub audience: &'a str,
    /// The requested scopes, sorted.
    pub scope: Vec<&'a str>,
    /// The granted RFC 9396 details, if any.
    pub authorization_details: Option<serde_json::Value>,
    /// The task.
    pub task_id: &'a str,
    /// The session, if any.
    pub session_id: Option<&'a str>,
    /// The stated purpose, if any.
    pub purpose: Option<&'a str>,
}

impl Binding<'_> {
    /// Hex SHA-256 of the canonical JSON (maps serialize with sorted keys).
    fn digest(&self) -> Result<String> {
        let text = serde_json::to_vec(self).map_err(|e| Error::internal(format!("approval binding: {e}")))?;
        Ok(hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &text)))
    }
}

/// What policy said needs approval, and why.
#[derive(Debug, Default)]
pub struct Needed {
    /// The scopes that need it, in request order.
    pub scopes: Vec<String>,
    /// The `@approval` reasons, deduplicated.
    pub reasons: Vec<String>,
    /// The ids of the policies that asked for it.
    pub policies: Vec<String>,
}

/// The approvals ledger: the port the embedded store and the Redis store implement. Records are opaque JSON
/// text to the store; each call is atomic.
pub trait Ledger: Send + Sync + fmt::Debug {
    /// Records `record` under `id` and `binding` → `id`, both until `expires_at`, unless `binding` is taken:
    /// then changes nothing and answers the id it holds.
    fn open<'a>(
        &'a self,
        binding: &'a str,
        id: &'a str,
        record: &'a str,
        expires_at: u64,
        now: u64,
    ) -> StoreFuture<'a, Option<String>>;
    /// The record under `id`, if it has not expired.
    fn load<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, Option<String>>;
    /// If the record under `id` is exactly `expected`: replaces it with `record` until `expires_at`, and
    /// either keeps `binding` → `id` until then too (`keep_binding`) or drops it; answers whether it swapped.
    #[allow(clippy::too_many_arguments)]
    fn swap<'a>(
        &'a self,
        id: &'a str,
        binding: &'a str,
        expected: &'a str,
        record: &'a str,
        expires_at: u64,
        keep_binding: bool,
        now: u64,
    ) -> StoreFuture<'a, bool>;
    /// Drops `binding` if it still names `id` (its record is gone).
    fn release<'a>(&'a self, binding: &'a str, id: &'a str, now: u64) -> StoreFuture<'a, ()>;
}

/// Announces each new approval request to whoever approves (a webhook); never waits for them.
pub trait Announcer: Send + Sync + fmt::Debug {
    /// Queues the announcement of `approval`; delivery happens off the request path.
    fn announce(&self, approval: &Approval);
}

/// No announcements (no webhook configured): approvers poll or are told another way.
#[derive(Debug, Default)]
pub struct Silent;

impl Announcer for Silent {
    fn announce(&self, _: &Approval) {}
}

/// A store failure: the broker fails closed.
fn unavailable(e: StoreError) -> Error {
    let StoreError(why) = e;
    Error::new(ErrorCode::Unavailable, format!("the approvals store is unavailable: {why}"))
}

/// What an approver decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The grant may be issued, once, to the identical exchange.
    Approve,
    /// It may not: the identical exchange is refused while the denial is remembered.
    Deny,
}

/// Longest approver's reason kept (bytes); longer ones are refused.
const MAX_REASON_BYTES: usize = 256;

/// The approvals operations, over the ledger, the announcer, the audit sink and the metrics.
pub struct Approvals<'a> {
    /// The broker's own issuer: approval URIs are under it.
    pub broker_issuer: &'a str,
    /// Where approvals are kept.
    pub ledger: &'a dyn Ledger,
    /// Who hears of new requests.
    pub announcer: &'a dyn Announcer,
    /// Lifetimes and poll interval.
    pub settings: Settings,
    /// Receives an event per step.
    pub audit: &'a dyn AuditSink,
    /// Counts steps.
    pub metrics: &'a Metrics,
    /// Spends the caller's client assertion, so it is good for one call here as everywhere.
    pub revocations: Revocations<'a>,
}

/// An approval id as the faces receive it: 22 base64url characters (128 bits), nothing else.
fn check_id(id: &str) -> Result<()> {
    let ok = id.len() == 22 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(Error::invalid_request("approval_id is not an approval id")) }
}

impl Approvals<'_> {
    /// The exchange's step: the approval bound to `binding` grants this exchange (it is spent, and its id
    /// returned), or the exchange is answered `authorization_pending` (a request is opened and announced, or
    /// is already waiting) or `access_denied`. `draft` is the record a new request starts from; `jti` is the
    /// token the exchange will issue, recorded in the spent approval.
    pub(crate) async fn require(&self, binding: &Binding<'_>, draft: Draft, jti: &str, now: u64) -> Result<String> {
        let digest = binding.digest()?;
        // Two attempts: a binding whose record just vanished (expired between the two reads) is released and
        // opened afresh; a swap that loses a race re-reads.
        for _ in 0..3 {
            let id = crate::token::new_jti()?;
            let fresh = draft.record(&id, &digest, binding, now, &self.settings);
            let text = fresh.to_json()?;
            let held = self.ledger.open(&digest, &id, &text, fresh.expires_at, now).await.map_err(unavailable)?;
            let Some(held) = held else {
                self.announcer.announce(&fresh);
                self.record(&fresh, "requested", "", now);
                self.metrics.approval("requested");
                return Err(Error::pending(
                    "this grant needs a human's approval: poll approval_uri, then retry the same request",
                    fresh.pending(&self.settings, self.broker_issuer),
                ));
            };
            let Some(current) = self.ledger.load(&held, now).await.map_err(unavailable)? else {
                self.ledger.release(&digest, &held, now).await.map_err(unavailable)?;
                continue;
            };
            let found = Approval::from_json(&current)?;
            match found.state(now) {
                "pending" => {
                    return Err(Error::pending(
                        "this grant is waiting for a human's approval: poll approval_uri, then retry",
                        found.pending(&self.settings, self.broker_issuer),
                    ));
                }
                "denied" => {
                    return Err(Error::new(ErrorCode::AccessDenied, "an approver denied this grant"));
                }
                "approved" => {
                    let mut used = found.clone();
                    used.status = Status::Used;
                    used.used_at = Some(now);
                    used.jti = Some(jti.to_string());
                    let after = used.to_json()?;
                    // Kept a while for polling and audit; the binding is freed so the next identical
                    // exchange asks again.
                    let until = now + self.settings.approved_ttl.max(1);
                    let spent = self
                        .ledger
                        .swap(&used.approval_id, &digest, &current, &after, until, false, now)
                        .await
                        .map_err(unavailable)?;
                    if spent {
                        self.record(&used, "used", "", now);
                        self.metrics.approval("used");
                        return Ok(used.approval_id);
                    }
                }
                // Expired or used but still bound (a moment before the store forgets it): start again.
                _ => self.ledger.release(&digest, &held, now).await.map_err(unavailable)?,
            }
        }
        Err(Error::new(ErrorCode::Unavailable, "the approval changed while it was read: retry"))
    }

    /// An approval's record, for its requester (the client whose exchange opened it) or an approver.
    pub async fn get(&self, caller: &Caller<'_>, id: &str, now: u64) -> Result<Approval> {
        self.revocations.spend_client_assertion(caller, now).await?;
        check_id(id)?;
        let found = self.load(id, now).await?;
        if found.client_id != caller.client.id && !caller.client.may_call(Rpc::Approve) {
            // Indistinguishable from an unknown id: another client's approvals are not its business.
            return Err(Error::new(ErrorCode::NotFound, "no such approval"));
        }
        Ok(found)
    }

    async fn load(&self, id: &str, now: u64) -> Result<Approval> {
        let text = self.ledger.load(id, now).await.map_err(unavailable)?;
        let found = text.as_deref().map(Approval::from_json).transpose()?;
        found.ok_or_else(|| Error::new(ErrorCode::NotFound, "no such approval (or it has expired)"))
    }

    /// An approver's decision on a pending approval. The approver must be a client with the `approve` RPC
    /// (the face checked it) and not the client that asked: nobody approves their own escalation.
    pub async fn decide(
        &self,
        caller: &Caller<'_>,
        id: &str,
        verdict: Verdict,
        reason: &str,
        now: u64,
    ) -> Result<Approval> {
        self.revocations.spend_client_assertion(caller, now).await?;
        check_id(id)?;
        if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
            return Err(Error::invalid_request("reason: at most 256 bytes, no control characters"));
        }
        let approver = caller.client.id.as_str();
        for _ in 0..3 {
            let Some(current) = self.ledger.load(id, now).await.map_err(unavailable)? else {
                return Err(Error::new(ErrorCode::NotFound, "no such approval (or it has expired)"));
            };
            let found = Approval::from_json(&current)?;
            if found.client_id == approver {
                let e = Error::new(ErrorCode::UnauthorizedClient, "a client cannot decide its own approval request");
                self.record(&found, "refused", &e.description, now);
                return Err(e);
            }
            let state = found.state(now);
            if state != "pending" {
                return Err(Error::invalid_request(format!("the approval is {state}, not pending")));
            }
            let mut decided = found.clone();
            let (status, ttl, word) = match verdict {
                Verdict::Approve => (Status::Approved, self.settings.approved_ttl, "approved"),
                Verdict::Deny => (Status::Denied, self.settings.denial_ttl, "denied"),
            };
            decided.status = status;
            decided.decided_by = Some(approver.to_string());
            decided.decided_at = Some(now);
            decided.decision_reason = (!reason.is_empty()).then(|| reason.to_string());
            decided.expires_at = now + ttl.max(1);
            let after = decided.to_json()?;
            let swapped = self
                .ledger
                .swap(id, &decided.binding, &current, &after, decided.expires_at, true, now)
                .await
                .map_err(unavailable)?;
            if swapped {
                self.record(&decided, word, reason, now);
                self.metrics.approval(word);
                return Ok(decided);
            }
        }
        Err(Error::new(ErrorCode::Unavailable, "the approval changed while it was decided: retry"))
    }

    /// One audit event per step: `requested`, `approved`, `denied`, `used`, `refused`.
    fn record(&self, a: &Approval, decision: &str, detail: &str, now: u64) {
        let mut e = AuditEvent::new("approval", decision, a.decided_by.as_deref().unwrap_or(&a.client_id));
        if decision == "requested" || decision == "used" {
            e.client_id = a.client_id.clone();
        }
        e.approval_id = a.approval_id.clone();
        e.detail = crate::audit::truncate(detail, MAX_REASON_BYTES);
        e.sub_iss = a.subject.iss.clone();
        e.sub = a.subject.sub.clone();
        e.actors = a.actors.iter().map(|n| n.sub.as_str()).collect::<Vec<_>>().join(" > ");
        e.audience = a.audience.clone();
        e.scope_requested = a.scope.clone();
        e.scope_granted = a.approval_scope.clone();
        e.details_granted = a.authorization_details.as_ref().map(|d| d.to_string()).unwrap_or_default();
        e.policies = a.policies.join(",");
        e.task_id = a.task_id.clone();
        e.jti = a.jti.clone().unwrap_or_default();
        e.exp = a.expires_at.max(now);
        self.audit.record(e);
    }
}

/// What the exchange knows of a request that needs approval, beyond its binding.
#[derive(Debug)]
pub struct Draft {
    /// What needs approval, and why.
    pub needed: Needed,
    /// The requested scopes as asked (space-separated, in request order).
    pub scope: String,
}

impl Draft {
    fn record(&self, id: &str, digest: &str, b: &Binding<'_>, now: u64, settings: &Settings) -> Approval {
        Approval {
            approval_id: id.to_string(),
            status: Status::Pending,
            binding: digest.to_string(),
            client_id: b.client_id.to_string(),
            subject: b.subject.clone(),
            actors: b.actors.clone(),
            audience: b.audience.to_string(),
            scope: self.scope.clone(),
            approval_scope: self.needed.scopes.join(" "),
            authorization_details: b.authorization_details.clone(),
            task_id: b.task_id.to_string(),
            session_id: b.session_id.map(str::to_string),
            purpose: b.purpose.map(str::to_string),
            reasons: self.needed.reasons.clone(),
            policies: self.needed.policies.clone(),
            created_at: now,
            expires_at: now + settings.pending_ttl.max(1),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            used_at: None,
            jti: None,
        }
    }
}
