//! RFC 8693 token exchange: the one place where the invariants of issuance are enforced.
//!
//! Each invariant has one home here, in [`Exchange`]:
//! 1. scopes: `Exchange::grant_scopes` — requested ⊆ catalog(audience) ∩ subject's scopes, then ∩ policy;
//! 2. lifetime: `expiry` — `exp` ≤ min(subject `exp`, actor `exp`, now + audience max TTL, now + requested);
//! 3. audience: `Exchange::destination` — exactly one, catalogued, and no hopping away from a downstream token;
//! 4. delegation: `Exchange::delegate` — `act` names the actor token's holder over the subject's chain,
//!    `may_act` travels and narrows, the lineage is carried, depth and ancestry are bounded;
//! 5. revocation: `Exchange::check_revocations` — nothing is derived from anything revoked, in one lookup
//!    (which also applies the rate limits, [`crate::ratelimit`], in the same store round trip);
//! 6. the subject (and actor) token is verified by [`crate::issuer`] before anything else is looked at.
//!
//! 7. details: `Exchange::grant_details` — RFC 9396 `authorization_details` are of a type the audience accepts,
//!    satisfy its schema, and only keep, drop or narrow the subject token's ([`crate::rar::narrow`]).
//!
//! 8. approvals: a grant policy allows only with a human's approval (`@approval`) is issued only when an
//!    approval bound to exactly this request exists, and spends it ([`crate::approval`]).
//!
//! Claims are built in one place, `Exchange::decide`.
//!
//! Sender constraint (RFC 9449 DPoP, RFC 8705 mTLS): `confirmation` decides the issued token's `cnf` — a
//! bound subject or actor token passes its binding on, and only to a request that proves the same key; a
//! request with a DPoP proof binds the token to the proof's key; the audience's `sender_constraint` is then
//! checked on the result. The proof itself is verified by [`crate::dpop`] once the subject and actor tokens
//! are, and its replay marker is spent in the same single store lookup as every revocation.

use crate::approval::{Approvals, Binding, Draft, Named, Needed};
use crate::audit::{AuditEvent, AuditSink, truncate};
use crate::catalog::{Catalog, Destination, Grant, SenderConstraint};
use crate::client::Caller;
use crate::dpop::{self, DpopError, Proof};
use crate::error::{Error, ErrorCode, Result};
use crate::issuer::{Issuers, Origin, Verified};
use crate::metrics::Metrics;
use crate::policy::{Decision, Policy, Principal, Question};
use crate::rar::{self, Details};
use crate::ratelimit::{RateLimits, ceil_ms};
use crate::revocation::{Probe, Revocations, replayed_client_assertion, spent_client_assertion_key};
use crate::scopes::Scopes;
use crate::secret::Token;
use crate::token::{AccessClaims, Actor, Confirmation, Keyring, Lineage, Party, new_jti};

/// The `grant_type` of a token exchange (RFC 8693 §2.1): the only grant the broker accepts.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3 token type of an OAuth access token: the `issued_token_type` of every token the broker issues.
pub(crate) const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3 token type of a JWT: how a caller labels a workload assertion (a Kubernetes service account
/// token, a JWT-SVID) or a tessera token it presents as `subject_token` or `actor_token`.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Input bounds: anything larger is refused before any work is done on it (scopes: [`crate::scopes`]).
const MAX_ID_BYTES: usize = 128;
const MAX_PURPOSE_BYTES: usize = 256;
const MAX_TARGET_BYTES: usize = 512;
const MAX_TARGETS: usize = 4;
/// Revocation keys a token's lineage may add to each lookup (tasks, principals and clients it derives from).
const MAX_LINEAGE: usize = 64;

/// An exchange request, in RFC 8693 terms. Tokens are [`Token`]s so no `Debug` of a request leaks them.
#[derive(Debug, Default)]
pub struct ExchangeRequest {
    /// Must be [`GRANT_TYPE_TOKEN_EXCHANGE`]; anything else is `unsupported_grant_type`.
    pub grant_type: String,
    /// RFC 8707 resource indicators: absolute URIs without a fragment. Together with `audience` they must name
    /// exactly one distinct, catalogued target.
    pub resource: Vec<String>,
    /// RFC 8693 §2.1 logical names of the target service. With `resource`: at most 4 values in all, each at
    /// most 512 bytes, all naming the same target.
    pub audience: Vec<String>,
    /// RFC 6749 §3.3 space-delimited scopes asked for; required. Each must be offered for the audience and
    /// held by the subject token; policy may grant fewer.
    pub scope: String,
    /// Empty, `…:token-type:access_token` or [`TOKEN_TYPE_JWT`]: the broker always issues an RFC 9068 JWT
    /// access token.
    pub requested_token_type: String,
    /// RFC 8693 §2.1: the assertion of the party on whose behalf the token is requested — an upstream
    /// workload assertion, or a tessera token to narrow further. Required.
    pub subject_token: Token,
    /// The RFC 8693 §3 type of `subject_token`: `…:token-type:jwt`, `…:access_token` or `…:id_token`.
    pub subject_token_type: String,
    /// RFC 8693 §2.1: the assertion of the party that will act; its holder becomes the issued token's `act`
    /// (RFC 8693 §4.1). Empty: no actor, the subject's own chain is kept.
    pub actor_token: Token,
    /// The RFC 8693 §3 type of `actor_token`: required with it, empty without it.
    pub actor_token_type: String,
    /// The task the issued token is bound to: at most 128 visible ASCII characters. Required unless the
    /// subject token is a tessera token, whose task is inherited and may not be changed.
    pub task_id: String,
    /// Optional session, with the same bounds as `task_id`; one carried by a tessera subject token is
    /// inherited and may not be changed.
    pub session_id: String,
    /// Free text written into the issued token's `purpose` claim: at most 256 bytes, no control characters.
    pub purpose: String,
    /// Upper bound on the issued token's lifetime, in seconds; 0 asks for as long as allowed.
    pub requested_expires_in: u32,
    /// The DPoP proof (RFC 9449 §5) the request came with, and the method and URL it must name: the issued
    /// token is bound to its key (`cnf.jkt`). Required when the subject or actor token is DPoP-bound (signed by
    /// that same key) or the audience requires DPoP.
    pub dpop: Option<dpop::Presented>,
    /// SHA-256 of the TLS client certificate (DER) the caller presented over mutual TLS, if any: what an RFC
    /// 8705 binding (`cnf["x5t#S256"]`) is made from and checked against. `None` on a connection without a
    /// client certificate.
    pub client_certificate_sha256: Option<[u8; 32]>,
    /// RFC 9396 `authorization_details`, as the JSON array text the wire carries (§7); empty: none given, and
    /// a tessera subject token's details are kept. At most 4 KiB and 16 entries ([`crate::rar`]).
    pub authorization_details: String,
}

/// A granted exchange.
#[derive(Debug)]
pub struct Issued {
    /// The signed RFC 9068 JWT access token (a compact JWS).
    pub access_token: Token,
    /// RFC 6749 §5.1 / RFC 9449 §5: `DPoP` for a DPoP-bound token, else `Bearer`.
    pub token_type: &'static str,
    pub(crate) expires_in: u64,
    pub(crate) scope: Scopes,
    /// The claims signed into `access_token`, so the caller need not decode it.
    pub claims: AccessClaims,
}

/// What policy decided for an exchange request, scope by scope ([`Exchange::explain`]).
#[derive(Debug)]
pub struct Explained {
    /// The subject as policy saw it.
    pub principal: Principal,
    /// The actor of the exchange, when an actor token was given.
    pub actor: Option<Principal>,
    /// The audience (the broker's own id for a task token).
    pub audience: String,
    /// The audience's grant mode: with `strict`, any denied scope refuses the whole exchange.
    pub grant: Grant,
    /// The delegation depth of the token that would be issued.
    pub depth: usize,
    /// The subject token is one of tessera's own.
    pub subject_is_tessera_token: bool,
    /// The audience is the broker itself.
    pub task_token: bool,
    /// The task the token would be bound to.
    pub task_id: String,
    /// `context.requested_ttl`: seconds the token would live.
    pub requested_ttl: u64,
    /// Each requested scope's decision, with the policies that made it.
    pub decisions: Vec<Decision>,
}

/// What a question to policy is built from.
struct Asked<'q> {
    subject: &'q Verified,
    actor: Option<&'q Verified>,
    target: Destination<'q>,
    delegation: &'q Delegation,
    task_id: &'q str,
    session_id: Option<&'q str>,
    purpose: &'q str,
    client_id: &'q str,
    requested_ttl: u64,
    now: u64,
    authorization_details: Option<&'q Details>,
}

/// Bounds on delegation that no policy can lift.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub(crate) max_delegation_depth: usize,
    pub(crate) max_chain_length: usize,
}

/// The token exchange, over exactly what it reads: the issuers that verify subject and actor tokens, the
/// catalog, the policy, the keyring that signs, the revocation store, the audit sink and the metrics.
pub struct Exchange<'a> {
    /// The broker's own issuer: the `iss` of the tokens it mints and the audience of task tokens.
    pub broker_issuer: &'a str,
    /// The trusted issuers, which verify the subject and actor tokens, upstream or tessera's own (invariant 6).
    pub issuers: &'a Issuers,
    /// The audiences tokens are issued for, their scopes and maximum lifetimes (invariants 1–3).
    pub catalog: &'a Catalog,
    /// Decides each requested scope (invariant 1).
    pub policy: &'a Policy,
    /// Signs the issued token with its active key.
    pub keyring: &'a Keyring,
    /// Delegation depth and chain length bounds (invariant 4).
    pub limits: Limits,
    /// How DPoP proofs are judged (their freshness window).
    pub dpop: dpop::Settings,
    /// Checked for every revocation that applies, spending single-use assertions and the DPoP proof and
    /// applying the rate limits in the same lookup (invariant 5).
    pub revocations: Revocations<'a>,
    /// The rate limits per client, principal and task (all off unless configured).
    pub rate_limits: &'a RateLimits,
    /// Step-up approvals: consulted only when policy says a grant needs one.
    pub approvals: Approvals<'a>,
    /// Receives one event per exchange, granted or refused.
    pub audit: &'a dyn AuditSink,
    /// Counts exchanges by outcome.
    pub metrics: &'a Metrics,
    /// The status lists every issued token gets a place in (`None`: off).
    pub status_lists: Option<&'a crate::status_list::StatusLists>,
}

impl Exchange<'_> {
    /// Exchanges the request's subject (and actor) token for a narrower token, as of `now` (Unix seconds).
    /// Every outcome, granted or refused, is an audit event.
    ///
    /// The caller's client assertion, when it authenticated with one, is spent in the exchange's one store
    /// round trip, next to the revocation check and the subject's own spend; an exchange refused before that
    /// round trip spends it in one of its own, so an assertion is good for one request whatever its outcome,
    /// and a replay is `invalid_client` with nothing issued.
    pub async fn run(&self, caller: &Caller<'_>, request: ExchangeRequest, now: u64) -> Result<Issued> {
        self.run_ms(caller, request, now.saturating_mul(1000)).await
    }

    /// As [`Exchange::run`], as of `now_ms` (Unix milliseconds): the rate limits of the embedded store
    /// count in sub-second time (tokens' times are whole seconds, `now_ms / 1000`).
    pub async fn run_ms(&self, caller: &Caller<'_>, request: ExchangeRequest, now_ms: u64) -> Result<Issued> {
        let mut trail = Trail::new(&caller.client.id, &request);
        let mut spent = false;
        let mut outcome = self.decide(caller, &request, now_ms, &mut trail, &mut spent).await;
        if !spent
            && outcome.is_err()
            && let Err(e) = self.revocations.spend_client_assertion(caller, now_ms / 1000).await
        {
            outcome = Err(e);
        }
        self.audit.record(trail.finish(&outcome));
        self.metrics.exchange(outcome.as_ref().err().map(|e| e.code.as_str()));
        outcome
    }

    async fn decide(
        &self,
        caller: &Caller<'_>,
        req: &ExchangeRequest,
        now_ms: u64,
        trail: &mut Trail,
        spent: &mut bool,
    ) -> Result<Issued> {
        let now = now_ms / 1000;
        let client = caller.client;
        let requested = check_shape(req)?;
        let details = requested_details(req)?;
        let target_id = single_target(req)?;
        let subject = self
            .issuers
            .verify(req.subject_token.expose(), now)
            .await
            .map_err(|e| Error::invalid_grant(format!("subject_token {e}")))?;
        trail.subject(&subject.principal);
        let actor = match req.actor_token.is_empty() {
            true => None,
            false => Some(
                self.issuers
                    .verify(req.actor_token.expose(), now)
                    .await
                    .map_err(|e| Error::invalid_grant(format!("actor_token {e}")))?,
            ),
        };
        let proof = match &req.dpop {
            None => None,
            Some(p) => {
                let expected = dpop::Expected { htm: &p.htm, htu: &p.htu, access_token: None };
                Some(dpop::verify(p.proof.expose(), expected, self.dpop, now)?)
            }
        };
        let parent = broker_claims(&subject);
        if let Some(a) = actor.as_deref().and_then(broker_claims)
            && a.aud != self.broker_issuer
        {
            return Err(Error::invalid_grant(
                "an actor_token issued by tessera must be a task token for tessera itself",
            ));
        }
        let target = self.destination(target_id, parent)?;
        let authorization_details = grant_details(details, target, parent)?;
        let cnf = confirmation(
            [("subject_token", parent), ("actor_token", actor.as_deref().and_then(broker_claims))],
            proof.as_ref(),
            req.client_certificate_sha256.as_ref(),
            target,
        )?;
        let (task_id, session_id) = task_binding(req, parent)?;
        trail.task(&task_id);
        let delegation = self.delegate(&subject, actor.as_deref(), &task_id, &client.id)?;
        trail.actors(delegation.act.as_ref());
        *spent = true;
        self.check_revocations(&subject, actor.as_deref(), proof.as_ref(), &task_id, caller, now_ms).await?;
        let exp = expiry(now, &subject, actor.as_deref(), target, req.requested_expires_in)?;
        let question = self.question(&Asked {
            subject: &subject,
            actor: actor.as_deref(),
            target,
            delegation: &delegation,
            task_id: &task_id,
            session_id: session_id.as_deref(),
            purpose: &req.purpose,
            client_id: &client.id,
            requested_ttl: exp - now,
            now,
            authorization_details: authorization_details.as_ref(),
        });
        let (scope, needed) = self.grant_scopes(&requested, target, &subject, &question, trail)?;
        let jti = new_jti()?;
        if !needed.scopes.is_empty() {
            let mut sorted: Vec<&str> = requested.iter().collect();
            sorted.sort_unstable();
            let named = |p: Party| Named { iss: p.iss, sub: p.sub };
            let binding = Binding {
                client_id: &client.id,
                subject: named(party(&subject.principal)),
                actors: delegation
                    .act
                    .iter()
                    .flat_map(|a| a.chain())
                    .map(|a| named(a.party(&subject.principal.iss)))
                    .collect(),
                audience: target.id(),
                scope: sorted,
                authorization_details: authorization_details
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|e| Error::internal(format!("authorization_details: {e}")))?,
                task_id: &task_id,
                session_id: session_id.as_deref(),
                purpose: (!req.purpose.is_empty()).then_some(req.purpose.as_str()),
            };
            let id =
                self.approvals.require(&binding, Draft { needed, scope: requested.to_string() }, &jti, now).await?;
            trail.approval(&id);
        }
        let claims = AccessClaims {
            iss: self.broker_issuer.to_string(),
            sub: subject.principal.sub.clone(),
            aud: target.id().to_string(),
            exp,
            iat: now,
            nbf: now,
            jti,
            client_id: client.id.clone(),
            scope,
            act: delegation.act,
            task_id,
            session_id,
            purpose: (!req.purpose.is_empty()).then(|| req.purpose.clone()),
            sub_iss: subject.principal.iss.clone(),
            sub_attrs: subject.principal.attributes.clone(),
            anc: delegation.anc,
            may_act: delegation.may_act,
            lin: delegation.lin,
            cnf,
            authorization_details,
            status: None,
        };
        let claims = self.with_status(claims).await?;
        let access_token = Token::new(self.keyring.mint(&claims)?);
        if access_token.expose().len() > crate::issuer::MAX_OWN_TOKEN_BYTES {
            if claims.authorization_details.as_ref().is_some_and(|d| !d.is_empty()) {
                return Err(Error::new(
                    ErrorCode::InvalidAuthorizationDetails,
                    "the token with these authorization_details would be too large: ask for fewer or smaller ones",
                ));
            }
            return Err(Error::invalid_grant("the delegation history is too large for one more token"));
        }
        self.register_status(&claims).await;
        Ok(Issued {
            access_token,
            token_type: claims.token_type(),
            expires_in: exp - now,
            scope: claims.scope.clone(),
            claims,
        })
    }

    /// Gives the token its place in a status list: an index from the replica's pool (no store round trip).
    async fn with_status(&self, mut claims: AccessClaims) -> Result<AccessClaims> {
        if let Some(lists) = self.status_lists {
            let g = lists.take(self.revocations.store).await?;
            claims.status = Some(lists.status(g));
        }
        Ok(claims)
    }

    /// Queues the issued token's status list registration for the background writer.
    async fn register_status(&self, claims: &AccessClaims) {
        if let (Some(lists), Some(status)) = (self.status_lists, &claims.status) {
            lists.register(crate::status_list::registration(claims, lists.index(status))).await;
        }
    }

    /// What policy would decide for `req`, as the calling client `client_id`, as of `now` — for `tessera policy
    /// check`. The subject and actor tokens are verified and every invariant up to policy is applied exactly
    /// as by [`Exchange::run`] (a request the exchange would refuse before policy is refused here with the
    /// same error), but nothing is looked up in the store, nothing is signed, spent or audited, and the
    /// audience's `grant` mode is not applied: each scope's decision is returned.
    pub async fn explain(&self, client_id: &str, req: &ExchangeRequest, now: u64) -> Result<Explained> {
        let requested = check_shape(req)?;
        let target_id = single_target(req)?;
        let subject = self
            .issuers
            .verify(req.subject_token.expose(), now)
            .await
            .map_err(|e| Error::invalid_grant(format!("subject_token {e}")))?;
        let actor = match req.actor_token.is_empty() {
            true => None,
            false => Some(
                self.issuers
                    .verify(req.actor_token.expose(), now)
                    .await
                    .map_err(|e| Error::invalid_grant(format!("actor_token {e}")))?,
            ),
        };
        let parent = broker_claims(&subject);
        let target = self.destination(target_id, parent)?;
        let authorization_details = grant_details(requested_details(req)?, target, parent)?;
        let (task_id, session_id) = task_binding(req, parent)?;
        let delegation = self.delegate(&subject, actor.as_deref(), &task_id, client_id)?;
        let exp = expiry(now, &subject, actor.as_deref(), target, req.requested_expires_in)?;
        self.offered_and_held(&requested, target, &subject)?;
        let question = self.question(&Asked {
            subject: &subject,
            actor: actor.as_deref(),
            target,
            delegation: &delegation,
            task_id: &task_id,
            session_id: session_id.as_deref(),
            purpose: &req.purpose,
            client_id,
            requested_ttl: exp - now,
            now,
            authorization_details: authorization_details.as_ref(),
        });
        let decisions = self.policy.decide(&question, &requested)?;
        Ok(Explained {
            principal: subject.principal.clone(),
            actor: question.actor.cloned(),
            audience: target.id().to_string(),
            grant: target.grant(),
            depth: question.depth,
            subject_is_tessera_token: question.subject_is_tessera_token,
            task_token: question.task_token,
            task_id: task_id.clone(),
            requested_ttl: question.requested_ttl,
            decisions,
        })
    }

    /// The one place a [`Question`] is built from an exchange: the exchange and its explanation ask policy
    /// the same question.
    fn question<'q>(&'q self, a: &Asked<'q>) -> Question<'q> {
        let actor = a.actor.map(|v| &v.holder);
        // The actor chain as policy sees it: each link with its issuer, the acting actor with its tags.
        let chain: Vec<Principal> = a
            .delegation
            .act
            .as_ref()
            .map(|act| {
                act.chain()
                    .enumerate()
                    .map(|(i, link)| match actor {
                        Some(acting) if i == 0 => acting.clone(),
                        _ => self.issuers.principal_of(&link.party(&a.subject.principal.iss)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Question {
            principal: &a.subject.principal,
            actor,
            audience: self.catalog.target(a.target),
            task_id: a.task_id,
            purpose: (!a.purpose.is_empty()).then_some(a.purpose),
            session_id: a.session_id,
            client_id: a.client_id,
            depth: a.delegation.depth,
            chain,
            subject_is_tessera_token: broker_claims(a.subject).is_some(),
            task_token: matches!(a.target, Destination::Broker { .. }),
            requested_ttl: a.requested_ttl,
            now: a.now,
            authorization_details: a.authorization_details,
        }
    }

    /// Invariants 5–6: nothing is derived from a revoked token (or one of its ancestors, its task, its
    /// subject, an actor, its client), nor for a revoked task. One store lookup for all of it, which also
    /// spends single-use assertions — the subject's and actor's, the DPoP proof, and the caller's client
    /// assertion (so none is accepted twice by any replica) — and applies the rate limits.
    ///
    /// The refusals come in this order: a replayed client assertion (the caller is not authenticated), a
    /// suspension, a revocation, a rate limit, a spent assertion or proof. A revoked or suspended request is
    /// refused as such even when it is also over a limit (it still counts against the limits: they count
    /// attempts that reach the store, not grants). A throttled request changes nothing else: the store moved
    /// no limit and set no spend marker (not even the client assertion's), so the caller may retry.
    async fn check_revocations(
        &self,
        subject: &Verified,
        actor: Option<&Verified>,
        proof: Option<&Proof>,
        task_id: &str,
        caller: &Caller<'_>,
        now_ms: u64,
    ) -> Result<()> {
        let now = now_ms / 1000;
        let client_id = caller.client.id.as_str();
        let mut probe = Probe::default();
        for token in std::iter::once(subject).chain(actor) {
            match &token.origin {
                Origin::Broker(claims) => probe.token(claims),
                Origin::Upstream => probe.upstream(&token.principal, token.act.as_ref(), token.iat),
            }
        }
        if !matches!(subject.origin, Origin::Broker(_)) {
            probe.task(task_id);
        }
        let mut spends: Vec<(String, u64)> = std::iter::once(subject)
            .chain(actor)
            .filter_map(|t| t.spend.as_ref())
            .map(|once| (crate::revocation::spent_key(&once.issuer, &once.jti), once.until))
            .collect();
        let assertions = spends.len();
        // Then the DPoP proof's marker, then the caller's client assertion's.
        let proof_at = proof.map(|p| {
            spends.push((p.replay_key(), p.until));
            spends.len() - 1
        });
        let client_at = caller.assertion.as_ref().map(|once| {
            spends.push((spent_client_assertion_key(once), once.until));
            spends.len() - 1
        });
        // The kill switch, in the same lookup: the subject, the actor (who holds the actor token) and the
        // calling client must not be suspended.
        let parties: Vec<(&str, &str)> = std::iter::once(&subject.principal)
            .chain(actor.map(|a| &a.holder))
            .map(|p| (p.iss.as_str(), p.sub.as_str()))
            .collect();
        let suspensions = probe.suspensions(&parties, client_id);
        // Per principal: the subject's upstream principal, also when the subject is a tessera token.
        let principal = (subject.principal.iss.as_str(), subject.principal.sub.as_str());
        let limits = self.rate_limits.limits(client_id, principal, task_id);
        let admission = self.revocations.admit(probe.keys(), &spends, &limits, now, now_ms).await?;
        // A replayed client assertion first: the caller is not authenticated, whatever else is wrong.
        if admission.throttled.is_none() && client_at.is_some_and(|i| admission.fresh.get(i) != Some(&true)) {
            return Err(replayed_client_assertion());
        }
        let (found, suspended) = admission.found.split_at(suspensions.min(admission.found.len()));
        if let Some(i) = suspended.iter().position(Option::is_some) {
            return Err(if i == parties.len() {
                Error::new(ErrorCode::UnauthorizedClient, "this client is suspended")
            } else {
                Error::invalid_grant("a principal in this request is suspended")
            });
        }
        if probe.revoked(found) {
            return Err(Error::invalid_grant("a token in this request, or its task, has been revoked"));
        }
        if let Some(throttled) = admission.throttled {
            let dimension = limits.get(throttled.index).map_or("unknown", |l| l.dimension.as_str());
            self.metrics.throttled(dimension);
            let wait_ms = ceil_ms(throttled.retry_after_us);
            return Err(Error::rate_limited(
                format!("the {dimension} rate limit is exceeded; retry in {wait_ms} ms"),
                std::time::Duration::from_millis(wait_ms),
            ));
        }
        let fresh = &admission.fresh;
        if fresh.iter().take(assertions).any(|new| !new) {
            return Err(Error::invalid_grant("a single-use assertion in this request has already been used"));
        }
        if proof_at.is_some_and(|i| fresh.get(i) != Some(&true)) {
            return Err(Error::new(ErrorCode::InvalidDpopProof, "the DPoP proof has already been used (its jti)"));
        }
        Ok(())
    }

    /// Invariant 3: exactly one catalogued audience; a token for a downstream API stays with that API.
    fn destination<'c>(&'c self, id: &str, parent: Option<&AccessClaims>) -> Result<Destination<'c>> {
        let target =
            self.catalog.destination(id).ok_or_else(|| Error::invalid_target("audience is not in the catalog"))?;
        if let Some(parent) = parent
            && parent.aud != self.broker_issuer
            && parent.aud != target.id()
        {
            return Err(Error::invalid_target("a token for one audience cannot be exchanged for another"));
        }
        Ok(target)
    }

    /// Invariant 4: the issued `act` names the party that holds the actor token, nested over the subject's
    /// own chain (upstream or tessera); `may_act` is honoured and travels on, only narrowing; everything the
    /// subject and actor tokens derive from joins the new token's lineage, so revoking any of it ends the new
    /// token; depth and chain length, counted over the actor token's history too, stay within their limits.
    fn delegate(
        &self,
        subject: &Verified,
        actor: Option<&Verified>,
        task_id: &str,
        client_id: &str,
    ) -> Result<Delegation> {
        let prior = subject.act.clone();
        let act = match actor {
            None => prior,
            Some(actor) => {
                let holder = party(&actor.holder);
                if holder == party(&subject.principal) {
                    return Err(Error::invalid_request("the actor_token's holder is the subject itself"));
                }
                if let Some(may_act) = &subject.may_act
                    && !may_act.contains(&holder)
                {
                    return Err(Error::invalid_grant("the subject token's may_act does not allow this actor"));
                }
                Some(Actor { sub: holder.sub, iss: Some(holder.iss), act: prior.map(Box::new) })
            }
        };
        let act_depth = act.as_ref().map_or(0, Actor::depth);
        let depth = act_depth.max(chain_depth(subject) + actor.map_or(0, |a| chain_depth(a).max(1)));
        if depth > self.limits.max_delegation_depth {
            return Err(Error::invalid_grant("delegation depth limit reached"));
        }

        let sub_iss = &subject.principal.iss;
        let own_parties: Vec<Party> = std::iter::once(party(&subject.principal))
            .chain(act.iter().flat_map(|a| a.chain()).map(|a| a.party(sub_iss)))
            .collect();
        let mut anc: Vec<String> = Vec::new();
        let mut lin = Lineage::default();
        let mut parties: Vec<Party> = Vec::new();
        for token in std::iter::once(subject).chain(actor) {
            match broker_claims(token) {
                Some(c) => {
                    anc.extend(c.anc.iter().cloned());
                    anc.push(c.jti.clone());
                    lin.tasks.push(c.task_id.clone());
                    lin.tasks.extend(c.lin.tasks.iter().cloned());
                    lin.clients.push(c.client_id.clone());
                    lin.clients.extend(c.lin.clients.iter().cloned());
                    parties.push(c.subject());
                    parties.extend(c.act.iter().flat_map(|a| a.chain()).map(|a| a.party(&c.sub_iss)));
                    parties.extend(c.lin.parties.iter().cloned());
                }
                None => {
                    parties.push(party(&token.principal));
                    parties.extend(token.act.iter().flat_map(|a| a.chain()).map(|a| a.party(&token.principal.iss)));
                }
            }
        }
        dedupe(&mut anc, |_| false);
        dedupe(&mut lin.tasks, |t| t == task_id);
        dedupe(&mut lin.clients, |c| c == client_id);
        dedupe(&mut parties, |p| own_parties.contains(p));
        lin.parties = parties;
        lin.depth = if depth > act_depth { depth } else { 0 };
        if anc.len() > self.limits.max_chain_length {
            return Err(Error::invalid_grant("exchange chain length limit reached"));
        }
        if lin.len() > MAX_LINEAGE {
            return Err(Error::invalid_grant("the delegation history is too large for one more token"));
        }
        let may_act = narrow_may_act(subject.may_act.as_deref(), actor.and_then(|a| a.may_act.as_deref()));
        Ok(Delegation { act, anc, may_act, lin, depth })
    }

    /// Invariant 1, before policy: every requested scope is offered by the audience and held by the subject
    /// token (when it carries scopes). Asking for more is refused outright.
    fn offered_and_held(&self, requested: &Scopes, target: Destination<'_>, subject: &Verified) -> Result<()> {
        for scope in requested.iter() {
            if !self.catalog.has_scope(target, scope) {
                return Err(Error::invalid_scope(format!("scope `{scope}` is not offered for this audience")));
            }
            if let Some(held) = &subject.scopes
                && !held.contains(scope)
            {
                return Err(Error::invalid_scope(format!("scope `{scope}` is not held by the subject token")));
            }
        }
        Ok(())
    }

    /// Invariant 1: every requested scope is offered by the audience and held by the subject token (when it
    /// carries scopes); policy then decides each one. Asking for more than that is refused outright. A scope
    /// that policy declines is left out of the grant, and the response's `scope` says what was granted —
    /// unless the audience's grant is strict, when any declined scope refuses the whole exchange. The
    /// decisions, with the policies that made them, go into the audit event either way.
    fn grant_scopes(
        &self,
        requested: &Scopes,
        target: Destination<'_>,
        subject: &Verified,
        q: &Question<'_>,
        trail: &mut Trail,
    ) -> Result<(Scopes, Needed)> {
        if requested.is_empty() {
            return Err(Error::invalid_scope("scope is required"));
        }
        self.offered_and_held(requested, target, subject)?;
        let decisions = self.policy.decide(q, requested)?;
        trail.policies(&decisions);
        let mut needed = Needed::default();
        for d in decisions.iter().filter(|d| d.allowed && !d.approval.is_empty()) {
            needed.scopes.push(d.scope.clone());
            needed
                .reasons
                .extend(d.approval.iter().filter(|r| !needed.reasons.contains(r)).cloned().collect::<Vec<_>>());
            needed
                .policies
                .extend(d.policies.iter().filter(|p| !needed.policies.contains(p)).cloned().collect::<Vec<_>>());
        }
        let granted = crate::policy::allowed_scopes(requested, &decisions);
        if granted.is_empty() {
            return Err(Error::invalid_scope("policy grants none of the requested scopes"));
        }
        if target.grant() == Grant::Strict
            && let Some(denied) = decisions.iter().find(|d| !d.allowed)
        {
            return Err(Error::invalid_scope(format!(
                "policy declines scope `{}`, and this audience grants all requested scopes or none",
                denied.scope
            )));
        }
        Ok((granted, needed))
    }
}

/// The issued token's `cnf`: a bound subject or actor token passes its binding on, and only to a request that
/// proves the same key (its DPoP key signed the proof; its certificate is the caller's); otherwise the token is
/// bound to the proof's key, and to the caller's certificate when the audience asks for mTLS. The audience's
/// requirement is then checked on the result: `dpop` without a proof is `invalid_dpop_proof`, `mtls` or `any`
/// unmet is `invalid_request`.
fn confirmation(
    bound: [(&str, Option<&AccessClaims>); 2],
    proof: Option<&Proof>,
    certificate_sha256: Option<&[u8; 32]>,
    target: Destination<'_>,
) -> Result<Option<Confirmation>> {
    let certificate = certificate_sha256.map(dpop::certificate_thumbprint);
    let mut cnf = Confirmation { jkt: proof.map(|p| p.jkt.clone()), x5t_s256: None };
    for (name, claims) in bound {
        let Some(held) = claims.and_then(|c| c.cnf.as_ref()) else { continue };
        if let Some(jkt) = &held.jkt {
            match proof {
                None => {
                    return Err(Error::new(
                        ErrorCode::InvalidDpopProof,
                        format!("the {name} is DPoP-bound: the request needs a DPoP proof signed by its key"),
                    ));
                }
                Some(p) if p.jkt != *jkt => return Err(DpopError::WrongKey.into()),
                Some(_) => {}
            }
        }
        if let Some(x5t) = &held.x5t_s256 {
            if certificate.as_deref() != Some(x5t.as_str()) {
                return Err(Error::invalid_grant(format!(
                    "the {name} is bound to a client certificate this request does not present"
                )));
            }
            cnf.x5t_s256 = Some(x5t.clone());
        }
    }
    let constraint = target.sender_constraint();
    let wants_certificate = match constraint {
        SenderConstraint::Mtls => true,
        SenderConstraint::Any => cnf.jkt.is_none(),
        SenderConstraint::None | SenderConstraint::Dpop => false,
    };
    if wants_certificate && cnf.x5t_s256.is_none() {
        cnf.x5t_s256 = certificate;
    }
    match constraint {
        SenderConstraint::Dpop if cnf.jkt.is_none() => Err(Error::new(
            ErrorCode::InvalidDpopProof,
            "this audience requires DPoP-bound tokens: send a DPoP proof with the request",
        )),
        SenderConstraint::Mtls if cnf.x5t_s256.is_none() => Err(Error::invalid_request(
            "this audience requires certificate-bound tokens (RFC 8705): call over mutual TLS",
        )),
        SenderConstraint::Any if cnf.is_empty() => Err(Error::invalid_request(
            "this audience requires sender-constrained tokens: send a DPoP proof or call over mutual TLS",
        )),
        _ => Ok((!cnf.is_empty()).then_some(cnf)),
    }
}

/// Invariant 2: a child never outlives its parent, its actor's assertion, its audience's maximum or the
/// lifetime the caller asked for.
fn expiry(
    now: u64,
    subject: &Verified,
    actor: Option<&Verified>,
    target: Destination<'_>,
    requested: u32,
) -> Result<u64> {
    let mut exp = subject.exp.min(now.saturating_add(target.max_ttl()));
    if let Some(actor) = actor {
        exp = exp.min(actor.exp);
    }
    if requested > 0 {
        exp = exp.min(now.saturating_add(u64::from(requested)));
    }
    if exp <= now {
        return Err(Error::invalid_grant("the subject token expires too soon to derive a token from it"));
    }
    Ok(exp)
}

/// The request's `authorization_details`, parsed (`None`: the parameter was not given).
fn requested_details(req: &ExchangeRequest) -> Result<Option<Details>> {
    match req.authorization_details.is_empty() {
        true => Ok(None),
        false => Details::parse(&req.authorization_details).map(Some),
    }
}

/// Invariant 1 for RFC 9396 details, in one place: what the issued token's `authorization_details` are.
///
/// Omitted, a tessera subject token's details are kept as they are (they never disappear by omission, as the
/// task binding does not); given, every entry must be of a type the audience accepts, satisfy its schema, and
/// narrow the subject token's details when it has any ([`rar::narrow`]). Task tokens carry none.
fn grant_details(
    requested: Option<Details>,
    target: Destination<'_>,
    parent: Option<&AccessClaims>,
) -> Result<Option<Details>> {
    let inherited = parent.and_then(|p| p.authorization_details.as_ref());
    let granted = match requested {
        None => return Ok(inherited.cloned()),
        Some(d) => d,
    };
    if matches!(target, Destination::Broker { .. }) && !granted.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidAuthorizationDetails,
            "task tokens carry no authorization_details: ask for them for a catalogued audience",
        ));
    }
    rar::validate(&granted, target.detail_types())?;
    rar::narrow(inherited, &granted, target.detail_types())?;
    Ok(Some(granted))
}

/// What is known of an exchange as it is decided, so a refusal at any step is audited with what was known:
/// the audit event, filled in step by step.
struct Trail(AuditEvent);

impl Trail {
    fn new(client_id: &str, req: &ExchangeRequest) -> Trail {
        let mut e = AuditEvent::new("exchange", "", client_id);
        e.audience = req.audience.first().or(req.resource.first()).map(|a| truncate(a, 512)).unwrap_or_default();
        e.scope_requested = truncate(&req.scope, 1024);
        e.details_requested = truncate(&req.authorization_details, rar::MAX_DETAILS_BYTES);
        e.task_id = truncate(&req.task_id, 128);
        Trail(e)
    }

    fn subject(&mut self, principal: &Principal) {
        self.0.sub_iss = principal.iss.clone();
        self.0.sub = principal.sub.clone();
    }

    fn actors(&mut self, act: Option<&Actor>) {
        self.0.actors =
            act.map(|a| a.chain().map(|a| a.sub.as_str()).collect::<Vec<_>>().join(" > ")).unwrap_or_default();
    }

    /// Policy's decision on each scope, with the policies that made it.
    fn policies(&mut self, decisions: &[Decision]) {
        self.0.policies = decisions.iter().map(Decision::summary).collect::<Vec<_>>().join(" ");
    }

    /// The task, once known from the subject token.
    fn task(&mut self, task_id: &str) {
        self.0.task_id = task_id.to_string();
    }

    fn finish(self, outcome: &Result<Issued>) -> AuditEvent {
        let mut e = self.0;
        match outcome {
            Ok(issued) => {
                e.decision = "granted".into();
                e.audience = issued.claims.aud.clone();
                e.scope_granted = issued.claims.scope.to_string();
                e.details_granted =
                    issued.claims.authorization_details.as_ref().map(Details::to_json).unwrap_or_default();
                e.task_id = issued.claims.task_id.clone();
                e.jti = issued.claims.jti.clone();
                e.exp = issued.claims.exp;
            }
            Err(error) => {
                e.decision = if error.approval().is_some() { "pending" } else { "denied" }.into();
                e.reason = error.code.as_str().into();
                e.detail = error.description.clone();
                if let Some(pending) = error.approval() {
                    e.approval_id = pending.approval_id.clone();
                }
            }
        }
        e
    }

    /// The approval that granted the exchange.
    fn approval(&mut self, id: &str) {
        self.0.approval_id = id.to_string();
    }
}

/// What an exchange writes into the issued token about who acts for whom and what it derives from.
struct Delegation {
    act: Option<Actor>,
    anc: Vec<String>,
    may_act: Option<Vec<Party>>,
    lin: Lineage,
    /// The delegation depth, counted over actor tokens' chains too.
    depth: usize,
}

fn broker_claims(token: &Verified) -> Option<&AccessClaims> {
    match &token.origin {
        Origin::Broker(claims) => Some(claims),
        Origin::Upstream => None,
    }
}

fn party(p: &crate::policy::Principal) -> Party {
    Party { iss: p.iss.clone(), sub: p.sub.clone() }
}

/// A token's own delegation depth: its actor chain, or its recorded depth when it counts more.
fn chain_depth(token: &Verified) -> usize {
    match broker_claims(token) {
        Some(c) => c.depth(),
        None => token.act.as_ref().map_or(0, Actor::depth),
    }
}

/// Keeps the first of each item, in order, and drops those `drop` names.
fn dedupe<T: PartialEq + Clone>(items: &mut Vec<T>, drop: impl Fn(&T) -> bool) {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        if !drop(&item) && !kept.contains(&item) {
            kept.push(item);
        }
    }
    *items = kept;
}

/// The `may_act` of a derived token: the subject's restriction, narrowed by the actor token's own (whoever
/// acts later acts through that actor too). Never wider than either.
fn narrow_may_act(subject: Option<&[Party]>, actor: Option<&[Party]>) -> Option<Vec<Party>> {
    match (subject, actor) {
        (None, None) => None,
        (Some(only), None) | (None, Some(only)) => Some(only.to_vec()),
        (Some(a), Some(b)) => Some(a.iter().filter(|p| b.contains(p)).cloned().collect()),
    }
}

/// The task binding: inherited from a tessera subject token (and never changed), required otherwise.
fn task_binding(req: &ExchangeRequest, parent: Option<&AccessClaims>) -> Result<(String, Option<String>)> {
    let given_session = (!req.session_id.is_empty()).then(|| req.session_id.clone());
    match parent {
        Some(p) => {
            if !req.task_id.is_empty() && req.task_id != p.task_id {
                return Err(Error::invalid_request("task_id differs from the subject token's task"));
            }
            if given_session.is_some() && p.session_id.is_some() && given_session != p.session_id {
                return Err(Error::invalid_request("session_id differs from the subject token's session"));
            }
            Ok((p.task_id.clone(), p.session_id.clone().or(given_session)))
        }
        None if req.task_id.is_empty() => Err(Error::invalid_request("task_id is required")),
        None => Ok((req.task_id.clone(), given_session)),
    }
}

fn single_target(req: &ExchangeRequest) -> Result<&str> {
    let mut target: Option<&str> = None;
    for (value, is_resource) in req.resource.iter().map(|r| (r, true)).chain(req.audience.iter().map(|a| (a, false))) {
        if is_resource && (!value.contains("://") || value.contains('#')) {
            return Err(Error::invalid_target("resource must be an absolute URI without a fragment"));
        }
        match target {
            Some(t) if t != value => {
                return Err(Error::invalid_target("exactly one audience per token"));
            }
            _ => target = Some(value),
        }
    }
    target.ok_or_else(|| Error::invalid_request("audience or resource is required"))
}

/// Refuses a malformed request before any token is looked at; returns the requested scopes, parsed.
fn check_shape(req: &ExchangeRequest) -> Result<Scopes> {
    if req.grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
        return Err(Error::new(ErrorCode::UnsupportedGrantType, "grant_type must be token-exchange"));
    }
    if !matches!(req.requested_token_type.as_str(), "" | TOKEN_TYPE_ACCESS_TOKEN | TOKEN_TYPE_JWT) {
        return Err(Error::invalid_request("requested_token_type is not supported"));
    }
    let token_type_ok = |t: &str| matches!(t, TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS_TOKEN | TOKEN_TYPE_ID_TOKEN);
    if req.subject_token.is_empty() {
        return Err(Error::invalid_request("subject_token is required"));
    }
    if !token_type_ok(&req.subject_token_type) {
        return Err(Error::invalid_request("subject_token_type is missing or not supported"));
    }
    match (req.actor_token.is_empty(), req.actor_token_type.is_empty()) {
        (true, false) => {
            return Err(Error::invalid_request("actor_token_type given without actor_token"));
        }
        (false, _) if !token_type_ok(&req.actor_token_type) => {
            return Err(Error::invalid_request("actor_token_type is missing or not supported"));
        }
        _ => {}
    }
    let scopes = Scopes::parse_request(&req.scope).map_err(|e| Error::invalid_scope(e.to_string()))?;
    for (name, value) in [("task_id", &req.task_id), ("session_id", &req.session_id)] {
        if value.len() > MAX_ID_BYTES || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_request(format!(
                "{name} must be at most {MAX_ID_BYTES} visible ASCII characters"
            )));
        }
    }
    if req.purpose.len() > MAX_PURPOSE_BYTES || req.purpose.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!("purpose must be at most {MAX_PURPOSE_BYTES} bytes of text")));
    }
    if req.resource.iter().chain(&req.audience).any(|t| t.chars().any(|c| c.is_control() || c.is_whitespace())) {
        return Err(Error::invalid_request("audience and resource hold no spaces or control characters"));
    }
    if req.resource.len() + req.audience.len() > MAX_TARGETS
        || req.resource.iter().chain(&req.audience).any(|t| t.len() > MAX_TARGET_BYTES || t.is_empty())
    {
        return Err(Error::invalid_target("too many or too long audiences"));
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_act_only_narrows() {
        let p = |sub: &str| Party { iss: "https://k".into(), sub: sub.into() };
        assert_eq!(narrow_may_act(None, None), None);
        assert_eq!(narrow_may_act(Some(&[p("a")]), None), Some(vec![p("a")]));
        assert_eq!(narrow_may_act(None, Some(&[p("b")])), Some(vec![p("b")]));
        assert_eq!(narrow_may_act(Some(&[p("a"), p("b")]), Some(&[p("b"), p("c")])), Some(vec![p("b")]));
        assert_eq!(narrow_may_act(Some(&[p("a")]), Some(&[p("c")])), Some(vec![]), "nobody may act");
    }

    #[test]
    fn dedupe_keeps_order_and_drops_what_is_named() {
        let mut v = vec![1, 2, 1, 3, 2, 4];
        dedupe(&mut v, |x| *x == 3);
        assert_eq!(v, vec![1, 2, 4]);
    }

    fn audience(sender_constraint: SenderConstraint) -> crate::catalog::Audience {
        crate::catalog::Audience {
            id: "https://crm.example".into(),
            scopes: Scopes::default(),
            max_ttl: 300,
            introspect_clients: Default::default(),
            resource_url: None,
            sender_constraint,
            labels: Default::default(),
            grant: Default::default(),
            detail_types: vec![],
        }
    }

    fn bound(jkt: Option<&str>, x5t: Option<&str>) -> AccessClaims {
        let mut c = AccessClaims::example();
        c.cnf = Some(Confirmation { jkt: jkt.map(Into::into), x5t_s256: x5t.map(Into::into) });
        c
    }

    #[test]
    fn a_binding_is_made_from_the_proof_and_kept_only_with_the_same_key() {
        let none = audience(SenderConstraint::None);
        let to = Destination::Downstream(&none);
        let (k1, k2) = (Proof::by_key("k1"), Proof::by_key("k2"));
        let cnf = |jkt: Option<&str>, x5t: Option<&str>| {
            Some(Confirmation { jkt: jkt.map(Into::into), x5t_s256: x5t.map(Into::into) })
        };
        let code = |r: Result<Option<Confirmation>>| r.unwrap_err().code;
        assert_eq!(confirmation([("s", None), ("a", None)], None, None, to).unwrap(), None, "a bearer token");
        assert_eq!(confirmation([("s", None), ("a", None)], Some(&k1), None, to).unwrap(), cnf(Some("k1"), None));
        // A DPoP-bound subject or actor: the same key, or nothing.
        let parent = bound(Some("k1"), None);
        for slots in [[("s", Some(&parent)), ("a", None)], [("s", None), ("a", Some(&parent))]] {
            assert_eq!(code(confirmation(slots, None, None, to)), ErrorCode::InvalidDpopProof);
            assert_eq!(code(confirmation(slots, Some(&k2), None, to)), ErrorCode::InvalidDpopProof);
            assert_eq!(confirmation(slots, Some(&k1), None, to).unwrap(), cnf(Some("k1"), None));
        }
        // A certificate-bound subject: the same certificate, or nothing; the binding travels whatever the audience.
        let cert = [7u8; 32];
        let x5t = dpop::certificate_thumbprint(&cert);
        let parent = bound(None, Some(&x5t));
        let slots = [("s", Some(&parent)), ("a", None)];
        assert_eq!(code(confirmation(slots, None, None, to)), ErrorCode::InvalidGrant);
        assert_eq!(code(confirmation(slots, None, Some(&[8u8; 32]), to)), ErrorCode::InvalidGrant);
        assert_eq!(confirmation(slots, None, Some(&cert), to).unwrap(), cnf(None, Some(&x5t)));
        assert_eq!(confirmation(slots, Some(&k1), Some(&cert), to).unwrap(), cnf(Some("k1"), Some(&x5t)));
        // A certificate alone binds nothing for an audience that does not ask for it.
        assert_eq!(confirmation([("s", None), ("a", None)], None, Some(&cert), to).unwrap(), None);
    }

    #[test]
    fn an_audience_gets_the_binding_it_requires() {
        let cert = [7u8; 32];
        let x5t = dpop::certificate_thumbprint(&cert);
        let k1 = Proof::by_key("k1");
        let free: [(&str, Option<&AccessClaims>); 2] = [("s", None), ("a", None)];
        let run = |c: SenderConstraint, proof: Option<&Proof>, cert: Option<&[u8; 32]>| {
            let a = audience(c);
            confirmation(free, proof, cert, Destination::Downstream(&a))
                .map(|c| c.map(|c| (c.jkt.is_some(), c.x5t_s256)))
                .map_err(|e| e.code)
        };
        use SenderConstraint::{Any, Dpop, Mtls};
        assert_eq!(run(Dpop, None, None), Err(ErrorCode::InvalidDpopProof));
        assert_eq!(run(Dpop, None, Some(&cert)), Err(ErrorCode::InvalidDpopProof));
        assert_eq!(run(Dpop, Some(&k1), None), Ok(Some((true, None))));
        assert_eq!(run(Mtls, None, None), Err(ErrorCode::InvalidRequest));
        assert_eq!(run(Mtls, Some(&k1), None), Err(ErrorCode::InvalidRequest));
        assert_eq!(run(Mtls, None, Some(&cert)), Ok(Some((false, Some(x5t.clone())))));
        assert_eq!(run(Mtls, Some(&k1), Some(&cert)), Ok(Some((true, Some(x5t.clone())))));
        assert_eq!(run(Any, None, None), Err(ErrorCode::InvalidRequest));
        assert_eq!(run(Any, Some(&k1), Some(&cert)), Ok(Some((true, None))), "DPoP suffices");
        assert_eq!(run(Any, None, Some(&cert)), Ok(Some((false, Some(x5t)))));
    }

    #[test]
    fn one_target_from_resource_and_audience() {
        let mut r = ExchangeRequest { audience: vec!["https://a".into()], ..Default::default() };
        assert_eq!(single_target(&r).unwrap(), "https://a");
        r.resource = vec!["https://a".into()];
        assert_eq!(single_target(&r).unwrap(), "https://a");
        r.resource = vec!["https://b".into()];
        assert_eq!(single_target(&r).unwrap_err().code, ErrorCode::InvalidTarget);
        r.resource = vec!["not-a-uri".into()];
        assert_eq!(single_target(&r).unwrap_err().code, ErrorCode::InvalidTarget);
        let r = ExchangeRequest::default();
        assert_eq!(single_target(&r).unwrap_err().code, ErrorCode::InvalidRequest);
    }
}
