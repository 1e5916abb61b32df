//! The broker: what the operations share — the broker's own identity and keys, the issuers, catalog, policy
//! and clients, and the ports (revocation store, audit sink, metrics) — handed in ready-made by the
//! composition root ([`crate::serve`]). Each RPC is one operation with its own type: [`Exchange`] in
//! [`crate::exchange`], [`Introspect`] in [`crate::introspect`], [`Revoke`] in [`crate::revocation`]; the
//! methods here only give each the parts it needs.

use std::sync::Arc;

use crate::audit::AuditSink;
use crate::catalog::Catalog;
use crate::client::{Caller, Clients, Credentials, Rpc};
use crate::error::Result;
use crate::exchange::{Exchange, ExchangeRequest, Issued, Limits};
use crate::introspect::{Introspect, Introspection, Presentation};
use crate::issuer::Issuers;
use crate::load::Slots;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::revocation::{Revocations, Revoke, RevokeRequest, Revoked, Store, SuspendRequest, Suspendable, Suspended};
use crate::secret::Token;
use crate::token::Keyring;

/// Everything a broker is made of, as the composition root builds it.
pub(crate) struct Parts {
    /// The broker's own issuer: `iss` of its tokens, the `aud` upstream assertions carry, and the audience of
    /// task tokens.
    pub(crate) broker_issuer: String,
    pub(crate) keyring: Keyring,
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) catalog: Catalog,
    pub(crate) policy: Policy,
    pub(crate) clients: Clients,
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
    pub(crate) audit: Arc<dyn AuditSink>,
    pub(crate) metrics: Metrics,
    /// The slots broker operations run in, on every face (load protection).
    pub(crate) slots: Slots,
}

/// The broker: its parts (built by the composition root, [`crate::serve`]), shared by every operation.
#[derive(Debug)]
pub struct Broker {
    parts: Parts,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").field("broker_issuer", &self.broker_issuer).finish_non_exhaustive()
    }
}

impl Broker {
    pub(crate) fn new(parts: Parts) -> Broker {
        Broker { parts }
    }

    fn revocations(&self) -> Revocations<'_> {
        Revocations { store: self.parts.store.as_ref(), metrics: &self.parts.metrics }
    }

    /// Authenticates a caller for `rpc` as of `now` — its secret, its client assertion (verified by the
    /// issuers, before any work) or the loopback client — and checks it may call `rpc`:
    /// [`Clients::identify`]. The caller's assertion is spent by the operation it then calls.
    pub async fn authenticate(&self, credentials: &Credentials, rpc: Rpc, now: u64) -> Result<Caller<'_>> {
        self.parts.clients.identify(credentials, rpc, &self.parts.issuers, now).await
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
        self.exchange_op().run_ms(&caller.into(), request, now_ms).await
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
        Exchange {
            broker_issuer: &self.parts.broker_issuer,
            issuers: &self.parts.issuers,
            catalog: &self.parts.catalog,
            policy: &self.parts.policy,
            keyring: &self.parts.keyring,
            limits: self.parts.limits,
            dpop: self.parts.dpop,
            revocations: self.revocations(),
            rate_limits: &self.parts.rate_limits,
            audit: self.parts.audit.as_ref(),
            metrics: &self.parts.metrics,
        }
    }

    /// RFC 7662 introspection, as of `now`: [`Introspect::run`].
    pub async fn introspect<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        token: &Token,
        now: u64,
    ) -> Result<Introspection> {
        self.introspect_op().run(&caller.into(), token, now).await
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
            issuers: &self.parts.issuers,
            catalog: &self.parts.catalog,
            revocations: self.revocations(),
            audit: self.parts.audit.as_ref(),
            metrics: &self.parts.metrics,
            dpop: self.parts.dpop,
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

    fn revoke_op(&self) -> Revoke<'_> {
        Revoke {
            issuers: &self.parts.issuers,
            catalog: &self.parts.catalog,
            leeway: self.parts.leeway,
            task_revocation_retention: self.parts.task_revocation_retention,
            revocations: self.revocations(),
            audit: self.parts.audit.as_ref(),
            metrics: &self.parts.metrics,
        }
    }

    /// The slots broker operations run in, shared by the gRPC and HTTP faces.
    pub(crate) fn slots(&self) -> &Slots {
        &self.parts.slots
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// The broker's own issuer (for the HTTP face's metadata, whose URLs are under it).
    pub(crate) fn broker_issuer(&self) -> &str {
        &self.parts.broker_issuer
    }

    /// The catalog of audiences (for the HTTP face's resource metadata).
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.parts.catalog
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.parts.keyring
    }

    /// The clients that may call the broker: each RPC authenticates its caller against them first.
    pub fn clients(&self) -> &Clients {
        &self.parts.clients
    }

    pub(crate) fn issuers(&self) -> &Arc<Issuers> {
        &self.parts.issuers
    }

    /// The revocation store (to ask a mirror whether it is trusted, in tests and diagnostics).
    pub fn store(&self) -> &dyn Store {
        self.parts.store.as_ref()
    }
}
