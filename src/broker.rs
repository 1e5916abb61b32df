//! The broker: what the operations share — the broker's own identity and keys, the issuers, catalog, policy
//! and clients, and the ports (revocation store, audit sink, metrics) — handed in ready-made by the
//! composition root ([`crate::serve`]). Each RPC is one operation with its own type: [`Exchange`] in
//! [`crate::exchange`], [`Introspect`] in [`crate::introspect`], [`Revoke`] in [`crate::revocation`]; the
//! methods here only give each the parts it needs.
//!
//! The parts a configuration reload replaces — issuers (with their keys), catalog (with its routes), policy
//! and clients — are one [`Snapshot`], swapped whole ([`Broker::replace`]): a request loads it once
//! ([`Broker::current`]) and sees one consistent set from authentication to the audit event, even while a
//! reload lands. Loading is lock-free (no lock is ever held across an `.await`). Everything else — the
//! broker's identity, signing keys, limits, store, audit sink, metrics and load slots — is fixed at start.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::approval::{Announcer, Approval, Approvals, Ledger, Verdict};
use crate::audit::AuditSink;
use crate::catalog::Catalog;
use crate::client::{Caller, Clients, Credentials, Rpc};
use crate::error::{Error, Result};
use crate::exchange::{Exchange, ExchangeRequest, Issued, Limits};
use crate::introspect::{Introspect, Introspection, Presentation};
use crate::issuer::Issuers;
use crate::load::Slots;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::revocation::watch::Watch;
use crate::revocation::{Revocations, Revoke, RevokeRequest, Revoked, Store, SuspendRequest, Suspendable, Suspended};
use crate::secret::Token;
use crate::token::Keyring;

/// The reloadable parts of a broker: what one configuration says about who is trusted, what may be issued
/// and who may call. Built by the composition root from a validated config, at start and at each reload.
pub struct Snapshot {
    /// The trusted upstream issuers (and the broker's own verifying keys).
    pub(crate) issuers: Arc<Issuers>,
    /// The audiences, their routes and who may introspect their tokens.
    pub(crate) catalog: Catalog,
    /// The Cedar policy.
    pub(crate) policy: Policy,
    /// Who may call, and how callers authenticate.
    pub(crate) clients: Clients,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("issuers", &self.issuers).finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The trusted issuers of this set.
    pub fn issuers(&self) -> &Arc<Issuers> {
        &self.issuers
    }

    /// The catalog of this set.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The clients of this set.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }
}

/// Everything a broker is made of, as the composition root builds it.
pub(crate) struct Parts {
    /// The reloadable parts, as the configuration read at start has them.
    pub(crate) snapshot: Snapshot,
    /// Everything else, fixed for the life of the process.
    pub(crate) fixed: Fixed,
}

/// The parts fixed for the life of the process.
pub(crate) struct Fixed {
    /// The broker's own issuer: `iss` of its tokens, the `aud` upstream assertions carry, and the audience of
    /// task tokens.
    pub(crate) broker_issuer: String,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) limits: Limits,
    /// Clock skew tolerated on tessera's own `nbf`/`iat`, in seconds.
    pub(crate) leeway: u64,
    /// Seconds a revoked task id stays refused for new exchanges.
    pub(crate) task_revocation_retention: u64,
    /// How DPoP proofs are judged (their freshness window).
    pub(crate) dpop: crate::dpop::Settings,
    pub(crate) store: Arc<dyn Store>,
    /// The rate limits on `ExchangeToken`, applied in the store's round trip.
    pub(crate) rate_limits: RateLimits,
    /// Step-up approvals: where they are kept (the same store), who hears of new ones, how long they live.
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) announcer: Arc<dyn Announcer>,
    pub(crate) approvals: crate::approval::Settings,
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) metrics: Metrics,
    /// The slots broker operations run in, on every face (load protection).
    pub(crate) slots: Slots,
    /// How often a quiet revocation watch stream sends a heartbeat.
    pub(crate) watch_heartbeat: std::time::Duration,
    /// The status lists issued tokens are placed in (`None`: off).
    pub(crate) status_lists: Option<Arc<crate::status_list::StatusLists>>,
    /// The Shared Signals receivers of every revocation.
    pub(crate) ssf: crate::ssf::Receivers,
    /// The upstream Shared Signals transmitters whose SETs are acted on.
    pub(crate) ssf_transmitters: Vec<crate::ssf::receive::Transmitter>,
}

/// The broker: its parts (built by the composition root, [`crate::serve`]), shared by every operation.
pub struct Broker {
    fixed: Fixed,
    current: ArcSwap<Snapshot>,
    /// Counts replacements, so tasks that follow the snapshot (the JWKS refresh) learn of each one.
    generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("broker_issuer", &self.fixed.broker_issuer).finish_non_exhaustive()
    }
}

/// The broker as one request sees it: the fixed parts and the snapshot in force when the request began.
/// Authenticate and operate through the same `Current`, so the client that authenticated is the client of
/// the set that decides.
pub struct Current<'b> {
    fixed: &'b Fixed,
    snapshot: Arc<Snapshot>,
}

impl std::fmt::Debug for Current<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").field("snapshot", &self.snapshot).finish_non_exhaustive()
    }
}

impl Broker {
    pub(crate) fn new(parts: Parts) -> Broker {
        let Parts { snapshot, fixed } = parts;
        Broker { fixed, current: ArcSwap::from_pointee(snapshot), generation: tokio::sync::watch::Sender::new(0) }
    }

    /// The broker as of now, for one request: load it once and use it for every step of that request.
    pub fn current(&self) -> Current<'_> {
        Current { fixed: &self.fixed, snapshot: self.current.load_full() }
    }

    /// The reloadable parts in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `snapshot` in force for every request that starts from now on (requests under way finish with
    /// the set they loaded); returns the set it replaces.
    pub fn replace(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let old = self.current.swap(Arc::new(snapshot));
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        old
    }

    /// Changes whenever [`Broker::replace`] puts a new snapshot in force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// RFC 8693 token exchange, as of `now` (Unix seconds), with the set in force: [`Current::exchange`].
    /// For a caller already authenticated (its client held apart); a face authenticates and exchanges through
    /// one [`Broker::current`].
    pub async fn exchange<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: ExchangeRequest,
        now: u64,
    ) -> Result<Issued> {
        self.current().exchange(caller, request, now).await
    }

    /// As [`Broker::exchange`], as of `now_ms` (Unix milliseconds): [`Current::exchange_ms`].
    pub async fn exchange_ms<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: ExchangeRequest,
        now_ms: u64,
    ) -> Result<Issued> {
        self.current().exchange_ms(caller, request, now_ms).await
    }

    /// RFC 7662 introspection, as of `now`, with the set in force: [`Current::introspect`].
    pub async fn introspect<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        token: &Token,
        now: u64,
    ) -> Result<Introspection> {
        self.current().introspect(caller, token, now).await
    }

    /// Records a revocation, as of `now`, with the set in force: [`Current::revoke`].
    pub async fn revoke<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: RevokeRequest,
        reason: &str,
        now: u64,
    ) -> Result<Revoked> {
        self.current().revoke(caller, request, reason, now).await
    }

    /// The slots broker operations run in, shared by the gRPC and HTTP faces.
    pub(crate) fn slots(&self) -> &Slots {
        &self.fixed.slots
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.fixed.metrics
    }

    /// The broker's own issuer (for the HTTP face's metadata, whose URLs are under it).
    pub(crate) fn broker_issuer(&self) -> &str {
        &self.fixed.broker_issuer
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.fixed.keyring
    }

    /// The revocation store (to ask a mirror whether it is trusted, in tests and diagnostics).
    pub fn store(&self) -> &dyn Store {
        self.fixed.store.as_ref()
    }
}

impl<'b> Current<'b> {
    /// Where audit events go (for the access checks' own events: proxied calls).
    pub(crate) fn audit(&self) -> &dyn crate::audit::AuditSink {
        self.fixed.audit.as_ref()
    }

    fn revocations(&self) -> Revocations<'b> {
        Revocations { store: self.fixed.store.as_ref(), metrics: &self.fixed.metrics }
    }

    /// Authenticates a caller for `rpc` as of `now` — its secret, its client assertion (verified by the
    /// issuers, before any work) or the loopback client — and checks it may call `rpc`:
    /// [`Clients::identify`]. The caller's assertion is spent by the operation it then calls.
    pub async fn authenticate(&self, credentials: &Credentials, rpc: Rpc, now: u64) -> Result<Caller<'_>> {
        self.snapshot.clients.identify(credentials, rpc, &self.snapshot.issuers, now).await
    }

    /// RFC 8693 token exchange, as of `now` (Unix seconds): [`Exchange::run`].
    pub async fn exchange<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: ExchangeRequest,
        now: u64,
    ) -> Result<Issued> {
        self.exchange_op().run(&caller.into(), request, now).await
    }

    /// RFC 8693 token exchange, as of `now_ms` (Unix milliseconds, the faces' clock: rate limits count in
    /// sub-second time): [`Exchange::run_ms`].
    pub async fn exchange_ms<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: ExchangeRequest,
        now_ms: u64,
    ) -> Result<Issued> {
        // On the heap: an exchange's state machine is about 8 KB, and every async layer above it (the face's
        // handler, its span, tonic's or axum's future) would otherwise copy it whole as it is built.
        Box::pin(self.exchange_op().run_ms(&caller.into(), request, now_ms)).await
    }

    /// What policy would decide for `request` from the client `client_id`, as of `now`, without issuing
    /// anything: [`Exchange::explain`] (`tessera policy check --config … --subject-token …`).
    pub async fn explain(
        &self,
        client_id: &str,
        request: &ExchangeRequest,
        now: u64,
    ) -> Result<crate::exchange::Explained> {
        self.exchange_op().explain(client_id, request, now).await
    }

    fn exchange_op(&self) -> Exchange<'_> {
        let (fixed, snapshot) = (self.fixed, &*self.snapshot);
        Exchange {
            broker_issuer: &fixed.broker_issuer,
            issuers: &snapshot.issuers,
            catalog: &snapshot.catalog,
            policy: &snapshot.policy,
            keyring: &fixed.keyring,
            limits: fixed.limits,
            dpop: fixed.dpop,
            revocations: self.revocations(),
            rate_limits: &fixed.rate_limits,
            approvals: self.approvals_op(),
            audit: fixed.audit.as_ref(),
            metrics: &fixed.metrics,
            status_lists: fixed.status_lists.as_deref(),
        }
    }

    fn approvals_op(&self) -> Approvals<'b> {
        let fixed = self.fixed;
        Approvals {
            broker_issuer: &fixed.broker_issuer,
            ledger: fixed.ledger.as_ref(),
            announcer: fixed.announcer.as_ref(),
            settings: fixed.approvals,
            audit: fixed.audit.as_ref(),
            metrics: &fixed.metrics,
            revocations: self.revocations(),
        }
    }

    /// Authenticates a caller that may call any of `rpcs` (reading an approval: its requester or an
    /// approver): [`Clients::identify_for`].
    pub async fn authenticate_for(&self, credentials: &Credentials, rpcs: &[Rpc], now: u64) -> Result<Caller<'_>> {
        self.snapshot.clients.identify_for(credentials, rpcs, &self.snapshot.issuers, now).await
    }

    /// A step-up approval's record, for its requester or an approver: [`Approvals::get`].
    pub async fn approval<'c>(&self, caller: impl Into<Caller<'c>>, id: &str, now: u64) -> Result<Approval> {
        self.approvals_op().get(&caller.into(), id, now).await
    }

    /// An approver's decision on a pending approval: [`Approvals::decide`].
    pub async fn decide_approval<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        id: &str,
        verdict: Verdict,
        reason: &str,
        now: u64,
    ) -> Result<Approval> {
        self.approvals_op().decide(&caller.into(), id, verdict, reason, now).await
    }

    /// List `n`'s status list token (draft-ietf-oauth-status-list §5.1), signed now; `None` when status lists
    /// are off. A list no token was placed in yet, or whose tokens have all expired, shows every token valid.
    pub async fn status_list_token(&self, n: u64, now: u64) -> Result<Option<(String, u64)>> {
        let Some(lists) = &self.fixed.status_lists else { return Ok(None) };
        let bits = self.fixed.store.status_bits(n).await?;
        let claims = crate::status_list::token_claims(&self.fixed.broker_issuer, n, &bits, now, lists.ttl)?;
        Ok(Some((self.fixed.keyring.sign_document(crate::status_list::TYP, &claims)?, lists.ttl)))
    }

    /// A Security Event Token pushed by an upstream transmitter (RFC 8935): [`crate::ssf::receive::Receive`].
    pub async fn ssf_receive(
        &self,
        set: &str,
        now: u64,
    ) -> std::result::Result<crate::ssf::receive::Received, std::result::Result<crate::ssf::receive::Refused, Error>>
    {
        let receive = crate::ssf::receive::Receive {
            issuers: &self.snapshot.issuers,
            transmitters: &self.fixed.ssf_transmitters,
            revoke: self.revoke_op(),
            audit: self.fixed.audit.as_ref(),
        };
        receive.run(set, now).await
    }

    /// An RFC 8936 poll by receiver `id` (authenticated by its bearer token): acknowledges what it acked
    /// (advancing its delivery cursor), then answers the SETs after it, signed now.
    pub async fn ssf_poll(
        &self,
        id: &str,
        bearer: Option<&str>,
        request: crate::ssf::PollRequest,
        now: u64,
    ) -> Result<serde_json::Value> {
        let receiver = self.fixed.ssf.poller(id, bearer)?;
        let store = self.fixed.store.as_ref();
        let mut reader = store.watch_reader().ok_or_else(|| {
            Error::new(crate::error::ErrorCode::Unavailable, "this revocation store keeps no revocation log")
        })?;
        let mut cursor = match store.ssf_cursor(id).await? {
            Some(cursor) => cursor,
            None => reader.read("", 1, std::time::Duration::ZERO).await?.cursor,
        };
        // An acknowledgement only moves the cursor forward (delivery is in order).
        let position = |c: &str| crate::revocation::watch::parse_cursor(c).unwrap_or_default();
        for acked in request.ack.iter().filter_map(|jti| crate::ssf::cursor_of(id, jti)) {
            if position(&acked) > position(&cursor) {
                cursor = acked;
            }
        }
        store.ssf_set_cursor(id, &cursor).await?;
        let max = request.max_events.unwrap_or(crate::ssf::MAX_POLL).clamp(1, crate::ssf::MAX_POLL);
        let wait = if request.return_immediately { 0 } else { 1 };
        let batch = reader.read(&cursor, max + 1, std::time::Duration::from_secs(wait)).await?;
        let more = batch.events.len() > max;
        let mut sets = serde_json::Map::new();
        for event in batch.events.iter().take(max) {
            let claims = crate::ssf::set_claims(&self.fixed.broker_issuer, receiver, event, now);
            let set = self.fixed.keyring.sign_document(crate::ssf::SET_TYP, &claims)?;
            sets.insert(crate::ssf::set_jti(id, &event.cursor), set.into());
        }
        Ok(serde_json::json!({ "sets": sets, "moreAvailable": more }))
    }

    /// RFC 7662 introspection, as of `now`: [`Introspect::run`].
    pub async fn introspect<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        token: &Token,
        now: u64,
    ) -> Result<Introspection> {
        // On the heap, as an exchange's (`exchange_ms`): it is about 2 KB.
        Box::pin(self.introspect_op().run(&caller.into(), token, now)).await
    }

    /// Introspection of a token as a resource received it (forward-auth), as of `now`, proof of possession
    /// included: [`Introspect::run_presented`].
    pub async fn introspect_presented<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        token: &Token,
        presentation: &Presentation,
        now: u64,
    ) -> Result<Introspection> {
        self.introspect_op().run_presented(&caller.into(), token, presentation, now).await
    }

    fn introspect_op(&self) -> Introspect<'_> {
        Introspect {
            issuers: &self.snapshot.issuers,
            catalog: &self.snapshot.catalog,
            revocations: self.revocations(),
            audit: self.fixed.audit.as_ref(),
            metrics: &self.fixed.metrics,
            dpop: self.fixed.dpop,
        }
    }

    /// Records a revocation, as of `now`: [`Revoke::run`].
    pub async fn revoke<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: RevokeRequest,
        reason: &str,
        now: u64,
    ) -> Result<Revoked> {
        self.revoke_op().run(&caller.into(), request, reason, now).await
    }

    /// The kill switch: suspends a principal or a client and revokes what it has: [`Revoke::suspend`].
    pub async fn suspend<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: SuspendRequest,
        duration: u64,
        reason: &str,
        now: u64,
    ) -> Result<Suspended> {
        self.revoke_op().suspend(&caller.into(), request, duration, reason, now).await
    }

    /// Lifts a suspension: [`Revoke::resume`].
    pub async fn resume<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: SuspendRequest,
        reason: &str,
        now: u64,
    ) -> Result<Suspendable> {
        self.revoke_op().resume(&caller.into(), request, reason, now).await
    }

    /// Opens a revocation watch for a caller with the `watch` role, from `cursor` (`""`: from now on): spends
    /// the caller's client assertion, if any, checks the cursor against the log ([`Watch::open`]: an expired
    /// one is refused here), and audits the watch. The stream itself is
    /// the face's to run ([`Watch::next`]); it owns its reader, so it outlives this request's snapshot.
    pub async fn watch<'c>(&self, caller: impl Into<Caller<'c>>, cursor: &str, now: u64) -> Result<Watch> {
        let caller = caller.into();
        let outcome = async {
            self.revocations().spend_client_assertion(&caller, now).await?;
            crate::revocation::watch::check_cursor(cursor)?;
            let reader = self.fixed.store.watch_reader().ok_or_else(|| {
                Error::new(crate::error::ErrorCode::Unavailable, "this revocation store keeps no revocation log")
            })?;
            Watch::open(reader, cursor, self.fixed.watch_heartbeat).await
        }
        .await;
        let mut event = crate::audit::AuditEvent::new("watch", "", &caller.client.id);
        match &outcome {
            Ok(_) => {
                event.decision = "granted".into();
                event.detail = crate::audit::truncate(cursor, 64);
            }
            Err(e) => {
                event.decision = "denied".into();
                event.reason = e.code.as_str().into();
                event.detail = e.description.clone();
            }
        }
        self.fixed.audit.record(event);
        outcome
    }

    fn revoke_op(&self) -> Revoke<'_> {
        Revoke {
            issuers: &self.snapshot.issuers,
            catalog: &self.snapshot.catalog,
            leeway: self.fixed.leeway,
            task_revocation_retention: self.fixed.task_revocation_retention,
            revocations: self.revocations(),
            audit: self.fixed.audit.as_ref(),
            metrics: &self.fixed.metrics,
        }
    }

    /// The catalog of audiences (for the HTTP face's resource metadata).
    pub fn catalog(&self) -> &Catalog {
        &self.snapshot.catalog
    }

    /// The clients that may call the broker: each RPC authenticates its caller against them first.
    pub fn clients(&self) -> &Clients {
        &self.snapshot.clients
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> &Arc<Issuers> {
        &self.snapshot.issuers
    }
}
