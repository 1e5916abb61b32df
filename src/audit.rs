//! Audit events: every decision, granted or denied, with who asked, for whom, for what, and why.
//!
//! Events go to the `tessera::audit` tracing target as structured fields, so they can be routed apart from
//! operational logs. They carry identifiers (`sub`, `jti`, task), never a token.

use crate::error::Result;
use crate::exchange::{ExchangeRequest, Issued};
use crate::introspect::Introspection;
use crate::policy::Principal;
use crate::revocation::Revoked;
use crate::token::Actor;

/// What is known of an exchange as it is decided, so a refusal at any step is audited with what was known.
#[derive(Debug, Default)]
pub struct Trail {
    client_id: String,
    audience: String,
    scope_requested: String,
    task_id: String,
    subject: Option<(String, String)>,
    actors: Vec<String>,
}

impl Trail {
    pub fn new(client_id: &str, req: &ExchangeRequest) -> Trail {
        let audience = req.audience.first().or(req.resource.first()).map(|a| truncate(a, 512)).unwrap_or_default();
        Trail {
            client_id: client_id.to_string(),
            audience,
            scope_requested: truncate(&req.scope, 1024),
            task_id: truncate(&req.task_id, 128),
            ..Trail::default()
        }
    }

    pub fn subject(&mut self, principal: &Principal) {
        self.subject = Some((principal.iss.clone(), principal.sub.clone()));
    }

    pub fn actors(&mut self, act: Option<&Actor>) {
        self.actors = act.map(|a| a.chain().map(|a| a.sub.clone()).collect()).unwrap_or_default();
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub fn exchange(trail: &Trail, outcome: &Result<Issued>) {
    let (sub_iss, sub) = trail.subject.as_ref().map(|(i, s)| (i.as_str(), s.as_str())).unwrap_or_default();
    let actors = trail.actors.join(" > ");
    match outcome {
        Ok(issued) => tracing::info!(
            target: "tessera::audit",
            event = "exchange",
            decision = "granted",
            client_id = %trail.client_id,
            sub_iss,
            sub,
            actors = %actors,
            audience = %issued.claims.aud,
            scope_requested = %trail.scope_requested,
            scope_granted = %issued.claims.scope,
            task_id = %issued.claims.task_id,
            jti = %issued.claims.jti,
            exp = issued.claims.exp,
            depth = issued.claims.depth(),
        ),
        Err(error) => tracing::info!(
            target: "tessera::audit",
            event = "exchange",
            decision = "denied",
            reason = error.code.as_str(),
            detail = %error.description,
            client_id = %trail.client_id,
            sub_iss,
            sub,
            actors = %actors,
            audience = %trail.audience,
            scope_requested = %trail.scope_requested,
            task_id = %trail.task_id,
        ),
    }
}

/// An introspection: which token (by `jti`), whether active, and why not.
pub fn introspect(client_id: &str, outcome: &Result<(Introspection, &'static str)>) {
    match outcome {
        Ok((Introspection::Active(c), _)) => tracing::info!(
            target: "tessera::audit",
            event = "introspect",
            decision = "active",
            client_id,
            jti = %c.jti,
            sub = %c.sub,
            audience = %c.aud,
            task_id = %c.task_id,
        ),
        Ok((Introspection::Inactive, why)) => {
            tracing::info!(target: "tessera::audit", event = "introspect", decision = "inactive", reason = why, client_id)
        }
        Err(error) => tracing::info!(
            target: "tessera::audit",
            event = "introspect",
            decision = "error",
            reason = error.code.as_str(),
            client_id,
        ),
    }
}

/// A revocation: what, by whom, why, until when.
pub fn revoke(client_id: &str, reason: &str, outcome: &Result<Revoked>) {
    match outcome {
        Ok(r) => tracing::info!(
            target: "tessera::audit",
            event = "revoke",
            decision = "revoked",
            client_id,
            kind = r.target.kind(),
            target = ?r.target,
            reason = %truncate(reason, 256),
            expires_at = r.expires_at,
        ),
        Err(error) => tracing::info!(
            target: "tessera::audit",
            event = "revoke",
            decision = "denied",
            reason = error.code.as_str(),
            detail = %error.description,
            client_id,
        ),
    }
}
