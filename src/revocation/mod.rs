//! Revocation: what can be revoked, how a revocation reaches every token derived from it, and the stores
//! that hold the revocation list.
//!
//! A revocation is a key in the store whose value records when it happened. A token is checked against every
//! key that could apply to it — its own `jti`, each ancestor's `jti` (so revoking a token ends its whole
//! delegation subtree, including children minted later from a descendant already in flight), its task, its
//! subject and every actor (issuer + `sub`), and its client — in one lookup, one round trip. `jti` and task
//! revocations end every token they name; subject and client revocations end the tokens issued up to the
//! moment of revocation, so a principal re-admitted upstream can work again.
//!
//! Every key expires when the longest-lived token it can affect expires, so the list stays bounded.

pub mod watch;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::audit::{AuditEvent, AuditSink};
use crate::catalog::Catalog;
use crate::client::Caller;
use crate::error::{Error, ErrorCode, Result};
use crate::issuer::{Issuers, Origin, SingleUse};
use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::ratelimit::{Limit, Throttled};
use crate::secret::Token;
use crate::token::AccessClaims;

/// Every revocation key starts with this; the hash tag keeps them in one Redis Cluster slot, so one lookup
/// is one round trip to one node.
const KEY_PREFIX: &str = "{tessera}:rev:";

/// What an operator revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One token and every token derived from it.
    Jti(String),
    /// Every token bound to the task.
    Task(String),
    /// Every token issued up to now whose subject or any actor is this upstream principal.
    Subject {
        /// The principal's issuer, by its `iss`.
        iss: String,
        /// The principal's `sub`.
        sub: String,
    },
    /// Every token issued up to now to this client.
    Client(String),
}

impl Target {
    /// The store key of this revocation; every key shares one Redis Cluster hash tag.
    pub fn key(&self) -> String {
        match self {
            Target::Jti(jti) => jti_key(jti),
            Target::Task(task) => task_key(task),
            Target::Subject { iss, sub } => subject_key(iss, sub),
            Target::Client(id) => client_key(id),
        }
    }

    /// A bounded label for metrics and audit.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Jti(_) => "jti",
            Target::Task(_) => "task",
            Target::Subject { .. } => "subject",
            Target::Client(_) => "client",
        }
    }
}

/// One revocation to record.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The revoked target's [`Target::key`].
    pub key: String,
    /// When it was revoked, Unix seconds: subject and client revocations end the tokens issued up to then.
    pub revoked_at: u64,
    /// When the key may be forgotten: no token it can affect lives longer.
    pub expires_at: u64,
    /// Why, as the operator put it (at most 256 bytes); kept for the record, never interpreted.
    pub reason: String,
    /// What the revocation log announces to watchers ([`watch`]), written in the same atomic step; `None`
    /// for an entry that is not a revocation of its own (a suspension's marker).
    pub notice: Option<watch::Notice>,
}

impl Entry {
    /// The stored value: `<revoked_at>|<reason>`.
    #[cfg(test)]
    fn value(&self) -> String {
        format!("{}|{}", self.revoked_at, self.reason)
    }
}

/// Reads `revoked_at` back from a stored value. A present key is a revocation whatever its value: one that
/// does not parse counts as revoked at the end of time, so it applies to every token (fail closed).
pub(crate) fn revoked_at(value: &str) -> u64 {
    value.split_once('|').map_or(value, |(at, _)| at).parse().unwrap_or(u64::MAX)
}

/// The store could not be reached or answered badly: callers fail closed.
#[derive(Debug, thiserror::Error)]
#[error("revocation store unavailable: {0}")]
pub struct StoreError(pub String);

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e.0, "revocation store unavailable; failing closed");
        Error::new(ErrorCode::Unavailable, "the revocation store is unavailable; try again")
    }
}

/// What a store operation returns: boxed, so the core holds any store behind `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The revocation list: the port the embedded store and the Redis store implement (both pass the same test
/// suite, `tests/integration/store.rs`).
pub trait Store: Send + Sync + fmt::Debug {
    /// Records the entries; returns once the store has acknowledged them.
    fn revoke<'a>(&'a self, entries: &'a [Entry], now: u64) -> StoreFuture<'a, ()>;
    /// `revoked_at` for each key that is revoked (and not yet expired), in one round trip.
    fn lookup<'a>(&'a self, keys: &'a [String], now: u64) -> StoreFuture<'a, Vec<Option<u64>>>;
    /// As [`Store::lookup`], and in the same round trip records each `(key, expires_at)` spend marker,
    /// answering whether it was new: how a single-use assertion is spent exactly once across every replica.
    fn lookup_and_spend<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        now: u64,
    ) -> StoreFuture<'a, (Vec<Option<u64>>, Vec<bool>)>;
    /// An exchange's one store call: [`Store::lookup_and_spend`] and, in the same round trip and atomically,
    /// the GCRA rate limits ([`crate::ratelimit`]) at the store's clock (`now_ms` for the embedded store;
    /// Redis reads its own). When a limit trips, nothing else changes: no limit moves on and no spend marker
    /// is set (`fresh` is empty), so a throttled request never burns a single-use assertion. The lookup is
    /// answered either way, so a revoked or suspended request is still refused as such. With no limits it is
    /// exactly [`Store::lookup_and_spend`].
    fn admit<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        limits: &'a [Limit],
        now: u64,
        now_ms: u64,
    ) -> StoreFuture<'a, Admission>;
    /// Forgets the entries (a lifted suspension); returns once the store has acknowledged it.
    fn lift<'a>(&'a self, keys: &'a [String], now: u64) -> StoreFuture<'a, ()>;
    /// Mirror mode: whether lookups are served from the replica's own copy right now (`None`: no mirror).
    fn mirror_trusted(&self) -> Option<bool> {
        None
    }
    /// A reader of the revocation log ([`watch`]) of its own, for one watch stream; `None` when the store
    /// keeps no log.
    fn watch_reader(&self) -> Option<Box<dyn watch::Reader>> {
        None
    }
    /// Status lists: the first of `count` fresh global indices, never handed out before (by any replica).
    fn allocate_status(&self, _count: u64) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no status lists".into()))))
    }
    /// Status lists: registers tokens under their revocation keys, so a later revocation flips their bits; a
    /// token a revocation already ends has its bit flipped now, in the same atomic step.
    fn register_status<'a>(&'a self, _registrations: &'a [StatusRegistration]) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no status lists".into()))))
    }
    /// Status lists: the bytes of list `n` (bit 0 the least significant of byte 0; a missing tail is all valid).
    fn status_bits(&self, _n: u64) -> StoreFuture<'_, Vec<u8>> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no status lists".into()))))
    }
    /// Shared Signals: takes or renews the lease on delivering to `receiver` for `ttl_ms`, for `holder` (one
    /// replica at a time delivers to a push receiver); whether `holder` holds it now.
    fn ssf_lease<'a>(&'a self, _receiver: &'a str, _holder: &'a str, _ttl_ms: u64) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no delivery state".into()))))
    }
    /// Shared Signals: the revocation log cursor `receiver` has been delivered up to, if any.
    fn ssf_cursor<'a>(&'a self, _receiver: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no delivery state".into()))))
    }
    /// Shared Signals: records that `receiver` has been delivered up to `cursor`.
    fn ssf_set_cursor<'a>(&'a self, _receiver: &'a str, _cursor: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Err(StoreError("this store keeps no delivery state".into()))))
    }
}

/// One token to register in the status lists ([`crate::status_list`]): its global index, when it expires,
/// and the revocation keys that can end it, each judged as [`Probe`] judges it (`None`: whenever present;
/// `Some(iat)`: when revoked at or after `iat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRegistration {
    /// Its global index: list `index / LIST_BITS`, bit `index % LIST_BITS`.
    pub index: u64,
    /// When it expires (Unix seconds): its registrations may be forgotten then.
    pub exp: u64,
    /// The revocation keys that apply to it.
    pub keys: Vec<String>,
    /// How each key is judged.
    pub issued_at: Vec<Option<u64>>,
}

/// What [`Store::admit`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// `revoked_at` of each key looked up, as [`Store::lookup`] answers.
    pub found: Vec<Option<u64>>,
    /// For each spend marker, whether it was new; empty when throttled (nothing was spent).
    pub fresh: Vec<bool>,
    /// The first limit that tripped, if any.
    pub throttled: Option<Throttled>,
}

/// What can be suspended (the kill switch): a principal or a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspendable {
    /// An upstream principal: refused as subject and as actor.
    Subject {
        /// The principal's issuer identifier.
        iss: String,
        /// The principal's `sub`.
        sub: String,
    },
    /// A client: refused as the caller of an exchange.
    Client(String),
}

impl Suspendable {
    /// The store key that marks it suspended.
    pub fn key(&self) -> String {
        match self {
            Suspendable::Subject { iss, sub } => suspended_subject_key(iss, sub),
            Suspendable::Client(id) => format!("{{tessera}}:susp:client:{id}"),
        }
    }

    /// A bounded label for metrics, audit and answers.
    pub fn kind(&self) -> &'static str {
        match self {
            Suspendable::Subject { .. } => "subject",
            Suspendable::Client(_) => "client",
        }
    }

    /// The revocation that ends every token it already has.
    fn revocation(&self) -> Target {
        match self {
            Suspendable::Subject { iss, sub } => Target::Subject { iss: iss.clone(), sub: sub.clone() },
            Suspendable::Client(id) => Target::Client(id.clone()),
        }
    }
}

fn suspended_subject_key(iss: &str, sub: &str) -> String {
    format!("{{tessera}}:susp:sub:{}:{iss}{sub}", iss.len())
}

/// How long a suspension lasts when the request names no duration: a day.
pub const DEFAULT_SUSPENSION: u64 = 86_400;
/// The longest suspension: 30 days (then suspend again, or revoke the client from the config).
pub const MAX_SUSPENSION: u64 = 30 * 86_400;

/// What `Suspend` and `Resume` were asked about, as received.
#[derive(Debug)]
pub enum SuspendRequest {
    /// An upstream principal, by its issuer (as for `Revoke`) and `sub`.
    Subject {
        /// The configured issuer, by its `iss`, its SPIFFE ID prefix or its name in the config.
        issuer: String,
        /// The principal's `sub`.
        sub: String,
    },
    /// A client id.
    Client(String),
}

/// A recorded suspension.
#[derive(Debug)]
pub struct Suspended {
    /// What is suspended.
    pub target: Suspendable,
    /// When it ends unless resumed first (Unix seconds).
    pub until: u64,
}

/// The spend marker of a single-use assertion of `issuer`: present once it has been exchanged.
pub fn spent_key(issuer: &str, jti: &str) -> String {
    format!("{{tessera}}:used:{}:{issuer}{jti}", issuer.len())
}

/// The spend marker of a client assertion: a namespace of its own, so a JWT-SVID can authenticate a client
/// once and, in the same request, be that workload's subject token (whose issuer may be `single_use` too).
pub fn spent_client_assertion_key(once: &SingleUse) -> String {
    format!("{{tessera}}:used-client:{}:{}{}", once.issuer.len(), once.issuer, once.jti)
}

/// The error of a replayed client assertion: the caller did not authenticate.
pub fn replayed_client_assertion() -> Error {
    Error::new(ErrorCode::InvalidClient, "client authentication failed: the client_assertion has already been used")
}

/// Whether a key's revocation found at `revoked_at` applies to what is judged by `issued_at` (see [`Probe`]):
/// `None` whenever present; `Some(iat)` when it was revoked at or after `iat`. Every store judges status list
/// registrations with it too, so the bits a list shows are what Introspect calls revoked.
pub(crate) fn applies(revoked_at: Option<u64>, issued_at: Option<u64>) -> bool {
    match (revoked_at, issued_at) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(at), Some(iat)) => iat <= at,
    }
}

/// The revocation keys that could apply to one or more tokens, and how each is judged: `None` applies
/// whenever present; `Some(iat)` applies when the revocation happened at or after `iat`.
#[derive(Debug, Default)]
pub struct Probe {
    keys: Vec<String>,
    issued_at: Vec<Option<u64>>,
}

// The keys of each kind of target, written from borrowed parts (a probe builds many per request, so each is
// one allocation of the right size, without `format!`'s machinery).
fn key(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        key.push_str(part);
    }
    key
}

fn jti_key(jti: &str) -> String {
    key(&[KEY_PREFIX, "jti:", jti])
}

fn task_key(task: &str) -> String {
    key(&[KEY_PREFIX, "task:", task])
}

/// The issuer's length keeps `iss`/`sub` pairs from colliding whatever characters they hold.
fn subject_key(iss: &str, sub: &str) -> String {
    use std::fmt::Write as _;
    // Room for the prefix, the length's digits (at most 20) and the separators.
    let mut key = String::with_capacity(KEY_PREFIX.len() + 26 + iss.len() + sub.len());
    key.push_str(KEY_PREFIX);
    key.push_str("sub:");
    let _ = write!(key, "{}", iss.len());
    key.push(':');
    key.push_str(iss);
    key.push_str(sub);
    key
}

fn client_key(id: &str) -> String {
    key(&[KEY_PREFIX, "client:", id])
}

impl Probe {
    fn push(&mut self, key: String, issued_at: Option<u64>) {
        self.keys.push(key);
        self.issued_at.push(issued_at);
    }

    fn party(&mut self, iss: &str, sub: &str, issued_at: u64) {
        self.push(subject_key(iss, sub), Some(issued_at));
    }

    /// Everything that can revoke a tessera token: its `jti` and every ancestor's, its task and every task in
    /// its lineage, its subject, every actor and every principal in its lineage, its client and every client
    /// in its lineage. Principals and clients apply to tokens issued up to their revocation; a token is
    /// issued after everything it derives from, so its own `iat` judges them all.
    pub fn token(&mut self, c: &AccessClaims) {
        let actors = c.act.iter().flat_map(|a| a.chain()).count();
        let count = 4 + c.anc.len() + c.lin.tasks.len() + actors + c.lin.parties.len() + c.lin.clients.len();
        self.keys.reserve(count);
        self.issued_at.reserve(count);
        self.push(jti_key(&c.jti), None);
        for ancestor in &c.anc {
            self.push(jti_key(ancestor), None);
        }
        self.push(task_key(&c.task_id), None);
        for task in &c.lin.tasks {
            self.push(task_key(task), None);
        }
        self.party(&c.sub_iss, &c.sub, c.iat);
        for actor in c.act.iter().flat_map(|a| a.chain()) {
            self.party(actor.iss.as_deref().unwrap_or(&c.sub_iss), &actor.sub, c.iat);
        }
        for party in &c.lin.parties {
            self.party(&party.iss, &party.sub, c.iat);
        }
        self.push(client_key(&c.client_id), Some(c.iat));
        for client in &c.lin.clients {
            self.push(client_key(client), Some(c.iat));
        }
    }

    /// What can revoke an upstream assertion: its principal and every actor its own `act` names, for
    /// assertions issued before the revocation (one without `iat` counts as issued at the epoch: any
    /// revocation applies).
    pub fn upstream(&mut self, principal: &Principal, act: Option<&crate::token::Actor>, iat: Option<u64>) {
        let iat = iat.unwrap_or(0);
        self.party(&principal.iss, &principal.sub, iat);
        for actor in act.iter().flat_map(|a| a.chain()) {
            self.party(actor.iss.as_deref().unwrap_or(&principal.iss), &actor.sub, iat);
        }
    }

    /// A task revocation, applying whenever present: for a request whose task is not already covered by a
    /// tessera subject token's [`Probe::token`].
    pub fn task(&mut self, task_id: &str) {
        self.push(task_key(task_id), None);
    }

    /// Adds the keys that mark these principals (`(iss, sub)`) and this calling client suspended, after every
    /// revocation key already added: they go to the store in the same lookup. Returns where they start in it.
    pub fn suspensions(&mut self, parties: &[(&str, &str)], client_id: &str) -> usize {
        let start = self.keys.len();
        for (iss, sub) in parties {
            self.push(suspended_subject_key(iss, sub), None);
        }
        self.push(Suspendable::Client(client_id.to_string()).key(), None);
        start
    }

    /// The keys and how each is judged, taken apart (a status list registration keeps both).
    pub fn into_parts(self) -> (Vec<String>, Vec<Option<u64>>) {
        (self.keys, self.issued_at)
    }

    /// The keys to look up, in the order [`Probe::revoked`] expects the answers in.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Whether any of the found revocations applies.
    pub fn revoked(&self, found: &[Option<u64>]) -> bool {
        found.iter().zip(&self.issued_at).any(|(found, issued_at)| applies(*found, *issued_at))
    }
}

/// What `Revoke` was asked to revoke, as received.
#[derive(Debug)]
pub enum RevokeRequest {
    /// A tessera token, expired or not: revokes its `jti`, and so every token derived from it.
    Token(Token),
    /// A token by its `jti` alone (as the audit trail names it): it and every token derived from it.
    Jti(String),
    /// A task id: every token bound to it, and no new exchange for it while the revocation is kept.
    Task(String),
    /// An upstream principal: every token issued up to now whose subject, or any actor, it is.
    Subject {
        /// The configured issuer, by its `iss`, its SPIFFE ID prefix or its name in the config.
        issuer: String,
        /// The principal's `sub`.
        sub: String,
    },
    /// A client id: every token issued to it up to now.
    Client(String),
}

/// A recorded revocation.
#[derive(Debug)]
pub struct Revoked {
    pub(crate) target: Target,
    /// When the revocation entry expires, Unix seconds: no token it affects lives longer.
    pub expires_at: u64,
    /// The task of a revoked token, for the audit trail.
    pub(crate) task_id: Option<String>,
}

const MAX_REASON_BYTES: usize = 256;
const MAX_NAME_BYTES: usize = crate::issuer::MAX_SUB_BYTES;

/// The store as the operations use it: every call timed and counted, and a failure failing closed.
#[derive(Clone, Copy)]
pub struct Revocations<'a> {
    /// The revocation list.
    pub store: &'a dyn Store,
    /// Records each store call's latency and failures.
    pub metrics: &'a Metrics,
}

impl Revocations<'_> {
    /// One revocation lookup.
    #[tracing::instrument(name = "store.lookup", skip_all, fields(keys = keys.len()))]
    pub async fn lookup(&self, keys: &[String], now: u64) -> Result<Vec<Option<u64>>> {
        let start = std::time::Instant::now();
        let result = self.store.lookup(keys, now).await;
        self.metrics.store_op("lookup", start, result.is_err());
        Ok(result?)
    }

    /// A lookup that also spends single-use assertions, in the same round trip.
    #[tracing::instrument(name = "store.lookup", skip_all, fields(keys = keys.len(), spends = spends.len()))]
    pub async fn lookup_and_spend(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        now: u64,
    ) -> Result<(Vec<Option<u64>>, Vec<bool>)> {
        let start = std::time::Instant::now();
        let result = self.store.lookup_and_spend(keys, spends, now).await;
        self.metrics.store_op("lookup", start, result.is_err());
        Ok(result?)
    }

    /// An exchange's one store call: the lookup, the spends and the rate limits in one round trip.
    #[tracing::instrument(name = "store.lookup", skip_all, fields(keys = keys.len(), spends = spends.len(), limits = limits.len()))]
    pub async fn admit(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        limits: &[Limit],
        now: u64,
        now_ms: u64,
    ) -> Result<Admission> {
        let start = std::time::Instant::now();
        let result = self.store.admit(keys, spends, limits, now, now_ms).await;
        self.metrics.store_op("lookup", start, result.is_err());
        Ok(result?)
    }

    /// Spends the caller's client assertion, when it has one, in a round trip of its own: for an operation
    /// that makes no lookup it could join (revocations, suspensions), or one refused before its lookup (so
    /// an assertion is spent by every request it authenticated, whatever the outcome). A replay is
    /// `invalid_client`.
    pub async fn spend_client_assertion(&self, caller: &Caller<'_>, now: u64) -> Result<()> {
        let Some(once) = &caller.assertion else { return Ok(()) };
        let spend = [(spent_client_assertion_key(once), once.until)];
        let (_, fresh) = self.lookup_and_spend(&[], &spend, now).await?;
        if fresh.first() != Some(&true) {
            return Err(replayed_client_assertion());
        }
        Ok(())
    }

    /// Records revocations.
    #[tracing::instrument(name = "store.revoke", skip_all)]
    pub async fn revoke(&self, entries: &[Entry], now: u64) -> Result<()> {
        let start = std::time::Instant::now();
        let result = self.store.revoke(entries, now).await;
        self.metrics.store_op("revoke", start, result.is_err());
        Ok(result?)
    }
}

/// `Revoke`, over what it reads: the issuers (to verify a token, name a subject's issuer and know how long its
/// assertions live), the catalog (how long tokens live), the store, the audit sink and the metrics.
pub struct Revoke<'a> {
    /// The trusted issuers: they verify a token to revoke, resolve a subject's issuer and say how long its
    /// assertions can live.
    pub issuers: &'a Issuers,
    /// How long tokens can live, so each revocation is kept as long as anything it ends.
    pub catalog: &'a Catalog,
    /// Clock skew tolerated on tessera's own tokens, in seconds.
    pub leeway: u64,
    /// Seconds a revoked task id stays refused for new exchanges (kept at least as long as its tokens live).
    pub task_revocation_retention: u64,
    /// Where the revocation is recorded.
    pub revocations: Revocations<'a>,
    /// Receives one event per revocation, recorded or refused.
    pub audit: &'a dyn AuditSink,
    /// Counts revocations by kind and outcome.
    pub metrics: &'a Metrics,
}

impl Revoke<'_> {
    /// The longest any token can live: every revocation key outlives the tokens it can affect.
    fn max_token_lifetime(&self) -> u64 {
        self.catalog.max_ttl() + self.leeway
    }

    /// How long a revocation of `target` must be kept: as long as anything it can end may still be presented.
    /// A subject's own assertions can outlive every tessera token; a revoked task id stays refused for the
    /// configured retention, so it is not re-issued.
    fn retention(&self, target: &Target) -> u64 {
        let tokens = self.max_token_lifetime();
        match target {
            Target::Jti(_) | Target::Client(_) => tokens,
            Target::Task(_) => tokens.max(self.task_revocation_retention),
            Target::Subject { iss, .. } => tokens.max(self.issuers.assertion_retention(iss)),
        }
    }

    /// Records a revocation; returns once the store acknowledged it. Idempotent.
    ///
    /// A caller's client assertion is spent first, in a round trip of its own (the write is the only other one,
    /// and a write cannot be undone for a replay), so a replayed assertion changes nothing.
    pub async fn run(&self, caller: &Caller<'_>, request: RevokeRequest, reason: &str, now: u64) -> Result<Revoked> {
        let outcome = match self.revocations.spend_client_assertion(caller, now).await {
            Ok(()) => self.decide(request, reason, now).await,
            Err(e) => Err(e),
        };
        self.audit.record(audit_event(&caller.client.id, reason, &outcome));
        let (kind, result) = match &outcome {
            Ok(r) => (r.target.kind(), "revoked"),
            Err(e) if e.code == ErrorCode::Unavailable => ("", "error"),
            Err(_) => ("", "denied"),
        };
        let attrs = [opentelemetry::KeyValue::new("kind", kind), opentelemetry::KeyValue::new("outcome", result)];
        self.metrics.revocations.add(1, &attrs);
        outcome
    }

    fn until(&self, target: Target, now: u64) -> (Target, u64) {
        let until = now.saturating_add(self.retention(&target));
        (target, until)
    }

    async fn decide(&self, request: RevokeRequest, reason: &str, now: u64) -> Result<Revoked> {
        check_reason(reason)?;
        let mut task_id = None;
        let (target, expires_at) = match request {
            RevokeRequest::Token(token) => {
                // Revoking an expired token is harmless and allowed; a token tessera did not sign is refused.
                let verified = self
                    .issuers
                    .verify_own_ignoring_time(token.expose())
                    .map_err(|e| Error::invalid_request(format!("token {e}")))?;
                match verified.origin {
                    Origin::Broker(c) => {
                        task_id = Some(c.task_id.clone());
                        (Target::Jti(c.jti.clone()), c.exp.max(now) + self.leeway)
                    }
                    Origin::Upstream => return Err(Error::invalid_request("token is not one of tessera's")),
                }
            }
            RevokeRequest::Jti(jti) if name_ok(&jti) => self.until(Target::Jti(jti), now),
            RevokeRequest::Task(task) if name_ok(&task) => self.until(Target::Task(task), now),
            RevokeRequest::Subject { issuer, sub } if name_ok(&sub) => {
                self.until(Target::Subject { iss: self.issuer_id(&issuer)?, sub }, now)
            }
            RevokeRequest::Client(id) if name_ok(&id) => self.until(Target::Client(id), now),
            _ => return Err(Error::invalid_request("the revocation target is empty or malformed")),
        };
        let entry = Entry {
            key: target.key(),
            revoked_at: now,
            expires_at,
            reason: reason.to_string(),
            notice: Some(watch::Notice { target: target.clone(), cause: watch::Cause::Revoke }),
        };
        self.revocations.revoke(std::slice::from_ref(&entry), now).await?;
        Ok(Revoked { target, expires_at, task_id })
    }

    /// The identifier of the configured issuer a request names (by `iss`, SPIFFE prefix or name).
    fn issuer_id(&self, issuer: &str) -> Result<String> {
        self.issuers
            .upstream_id(issuer)
            .ok_or_else(|| Error::invalid_request("subject issuer is not a configured issuer"))
    }

    /// What a suspend or resume request names, checked as `Revoke` checks its targets.
    fn suspendable(&self, request: SuspendRequest, reason: &str) -> Result<Suspendable> {
        check_reason(reason)?;
        match request {
            SuspendRequest::Subject { issuer, sub } if name_ok(&sub) => {
                Ok(Suspendable::Subject { iss: self.issuer_id(&issuer)?, sub })
            }
            SuspendRequest::Client(id) if name_ok(&id) => Ok(Suspendable::Client(id)),
            _ => Err(Error::invalid_request("the suspension target is empty or malformed")),
        }
    }

    /// The kill switch: marks `request`'s principal or client suspended for `duration` seconds (0: a day) and, in
    /// the same store call, revokes every token it has up to now (and so everything derived from them).
    /// A caller's client assertion is spent first (see [`Revoke::run`]).
    pub async fn suspend(
        &self,
        caller: &Caller<'_>,
        request: SuspendRequest,
        duration: u64,
        reason: &str,
        now: u64,
    ) -> Result<Suspended> {
        let outcome = async {
            self.revocations.spend_client_assertion(caller, now).await?;
            let target = self.suspendable(request, reason)?;
            let duration = if duration == 0 { DEFAULT_SUSPENSION } else { duration };
            if duration > MAX_SUSPENSION {
                return Err(Error::invalid_request(format!("a suspension lasts at most {MAX_SUSPENSION} seconds")));
            }
            let until = now.saturating_add(duration);
            let revocation = target.revocation();
            let revoked_until = now.saturating_add(self.retention(&revocation));
            let entries = [
                Entry {
                    key: target.key(),
                    revoked_at: now,
                    expires_at: until,
                    reason: reason.to_string(),
                    notice: None,
                },
                Entry {
                    key: revocation.key(),
                    revoked_at: now,
                    expires_at: revoked_until,
                    reason: reason.to_string(),
                    notice: Some(watch::Notice { target: revocation.clone(), cause: watch::Cause::Suspend }),
                },
            ];
            self.revocations.revoke(&entries, now).await?;
            Ok(Suspended { target, until })
        }
        .await;
        self.audit.record(suspension_event(
            "suspend",
            &caller.client.id,
            reason,
            outcome.as_ref().map(|s| (&s.target, s.until)),
        ));
        outcome
    }

    /// Lifts a suspension (if any): new exchanges work again; what it revoked stays revoked. A caller's
    /// client assertion is spent first (see [`Revoke::run`]).
    pub async fn resume(
        &self,
        caller: &Caller<'_>,
        request: SuspendRequest,
        reason: &str,
        now: u64,
    ) -> Result<Suspendable> {
        let outcome = async {
            self.revocations.spend_client_assertion(caller, now).await?;
            let target = self.suspendable(request, reason)?;
            let start = std::time::Instant::now();
            let lifted = self.revocations.store.lift(std::slice::from_ref(&target.key()), now).await;
            self.metrics.store_op("revoke", start, lifted.is_err());
            lifted?;
            Ok(target)
        }
        .await;
        self.audit.record(suspension_event("resume", &caller.client.id, reason, outcome.as_ref().map(|t| (t, 0))));
        outcome
    }
}

impl Revoke<'_> {
    /// What a Shared Signal from an upstream identity provider asks ([`crate::ssf::receive`]): revokes every
    /// token of the principal `(iss, sub)` up to now and, with `suspend`, suspends it for that many seconds — in
    /// one store call, announced with cause [`watch::Cause::Signal`]. The caller audits.
    pub async fn signal(&self, iss: &str, sub: &str, suspend: Option<u64>, reason: &str, now: u64) -> Result<()> {
        if !name_ok(sub) {
            return Err(Error::invalid_request("the subject's `sub` is empty or malformed"));
        }
        let reason = crate::audit::truncate(reason, MAX_REASON_BYTES);
        let revocation = Target::Subject { iss: iss.to_string(), sub: sub.to_string() };
        let mut entries = vec![Entry {
            key: revocation.key(),
            revoked_at: now,
            expires_at: now.saturating_add(self.retention(&revocation)),
            reason: reason.clone(),
            notice: Some(watch::Notice { target: revocation, cause: watch::Cause::Signal }),
        }];
        if let Some(seconds) = suspend {
            let marker = Suspendable::Subject { iss: iss.to_string(), sub: sub.to_string() };
            let until = now.saturating_add(seconds.clamp(1, MAX_SUSPENSION));
            entries.push(Entry { key: marker.key(), revoked_at: now, expires_at: until, reason, notice: None });
        }
        self.revocations.revoke(&entries, now).await
    }
}

/// A reason is short text: it goes into the store and the audit trail.
fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!("reason must be at most {MAX_REASON_BYTES} bytes of text")));
    }
    Ok(())
}

/// Whether `s` can name a revocation or suspension target.
fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_BYTES && !s.chars().any(char::is_control)
}

/// The audit event of a suspension or its lifting.
fn suspension_event(
    event: &str,
    client_id: &str,
    reason: &str,
    outcome: Result<(&Suspendable, u64), &Error>,
) -> AuditEvent {
    let mut e = AuditEvent::new(event, "", client_id);
    e.detail = crate::audit::truncate(reason, 256);
    match outcome {
        Ok((target, until)) => {
            e.decision = if event == "suspend" { "suspended" } else { "resumed" }.into();
            e.reason = target.kind().into();
            match target {
                Suspendable::Subject { iss, sub } => {
                    e.sub_iss = iss.clone();
                    e.sub = sub.clone();
                }
                Suspendable::Client(id) => e.audience = format!("client:{id}"),
            }
            e.exp = until;
        }
        Err(error) => {
            e.decision = "denied".into();
            e.reason = error.code.as_str().into();
            e.detail = error.description.clone();
        }
    }
    e
}

fn audit_event(client_id: &str, reason: &str, outcome: &Result<Revoked>) -> AuditEvent {
    let mut e = AuditEvent::new("revoke", "", client_id);
    e.detail = crate::audit::truncate(reason, 256);
    match outcome {
        Ok(r) => {
            e.decision = "revoked".into();
            e.reason = r.target.kind().into();
            match &r.target {
                Target::Jti(jti) => e.jti = jti.clone(),
                Target::Task(task) => e.task_id = task.clone(),
                Target::Subject { iss, sub } => {
                    e.sub_iss = iss.clone();
                    e.sub = sub.clone();
                }
                Target::Client(id) => e.audience = format!("client:{id}"),
            }
            if let Some(task) = &r.task_id {
                e.task_id = task.clone();
            }
            e.exp = r.expires_at;
        }
        Err(error) => {
            e.decision = "denied".into();
            e.reason = error.code.as_str().into();
            e.detail = error.description.clone();
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keys_do_not_collide() {
        let a = Target::Subject { iss: "https://a".into(), sub: "b:c".into() }.key();
        let b = Target::Subject { iss: "https://ab".into(), sub: ":c".into() }.key();
        assert_ne!(a, b);
        // The keys already in a store: their form never changes.
        assert_eq!(a, "{tessera}:rev:sub:9:https://ab:c");
        assert_eq!(b, "{tessera}:rev:sub:10:https://ab:c");
        assert_eq!(Target::Client("c".into()).key(), "{tessera}:rev:client:c");
        assert_eq!(Target::Task("t".into()).key(), "{tessera}:rev:task:t");
        assert_eq!(Target::Jti("j".into()).key(), "{tessera}:rev:jti:j");
    }

    #[test]
    fn probe_judges_by_kind() {
        let mut p = Probe::default();
        p.task("t");
        p.upstream(
            &Principal {
                issuer: "k".into(),
                iss: "https://k".into(),
                sub: "s".into(),
                attributes: Default::default(),
                spiffe: None,
            },
            None,
            Some(100),
        );
        assert!(!p.revoked(&[None, None]));
        assert!(p.revoked(&[Some(1), None]), "a task revocation applies whenever");
        assert!(p.revoked(&[None, Some(100)]), "revoked at the second the assertion was issued");
        assert!(!p.revoked(&[None, Some(99)]), "a subject revocation does not reach later assertions");
    }

    #[test]
    fn values_round_trip() {
        let e =
            Entry { key: "k".into(), revoked_at: 42, expires_at: 50, reason: "leaked|in a log".into(), notice: None };
        assert_eq!(revoked_at(&e.value()), 42);
        assert_eq!(revoked_at("17"), 17);
        assert_eq!(revoked_at("x|y"), u64::MAX, "a value that does not parse revokes everything");
        assert_eq!(revoked_at(""), u64::MAX);
    }
}
