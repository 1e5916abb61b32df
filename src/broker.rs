//! The broker: everything the RPCs share, built once from a validated [`Config`].

use std::sync::Arc;

use crate::audit::Audit;
use crate::catalog::Catalog;
use crate::client::Clients;
use crate::config::{Config, Limits};
use crate::issuer::Issuers;
use crate::issuer::jwks::JwksFetcher;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::revocation::Revocations;
use crate::revocation::Store as _;
use crate::revocation::memory::MemoryStore;
use crate::revocation::redis::RedisStore;
use crate::token::Keyring;

#[derive(Debug)]
pub struct Broker {
    /// The broker's own identifier: `iss` of its tokens, the `aud` upstream assertions carry, and the
    /// audience of task tokens.
    pub(crate) broker_issuer: String,
    pub(crate) keyring: Keyring,
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) catalog: Catalog,
    pub(crate) policy: Policy,
    pub(crate) clients: Clients,
    pub(crate) limits: Limits,
    pub(crate) leeway: u64,
    /// Seconds a revoked task id stays refused for new exchanges.
    pub(crate) task_revocation_retention: u64,
    pub(crate) revocations: Revocations,
    pub(crate) metrics: Metrics,
    pub(crate) audit: Audit,
}

impl Broker {
    /// Builds the broker. With Redis configured, connects lazily (and, in mirror mode, starts following the
    /// revocation channel), so it must run inside a Tokio runtime; a Redis that is down at start makes the
    /// broker fail closed until it is back, rather than fail to start.
    pub async fn new(config: Config) -> Result<Broker, String> {
        Broker::with_metrics(config, Metrics::global()).await
    }

    /// As [`Broker::new`], recording into the given instruments.
    pub async fn with_metrics(config: Config, metrics: Metrics) -> Result<Broker, String> {
        // Redis over TLS (rediss://) and JWKS over https use rustls: one crypto provider, set before any use.
        crate::install_crypto_provider();
        let keyring = Keyring::new(config.signing_keys)?;
        let fetcher = Arc::new(JwksFetcher::new(config.issuers.iter().map(|(spec, _)| spec)));
        let issuers = Issuers::new(
            config.issuers,
            &keyring,
            config.broker_issuer.clone(),
            config.leeway,
            metrics.clone(),
            fetcher,
        );
        let (revocations, audit) = match &config.store {
            None => (Revocations::Memory(MemoryStore::new()), Audit::log_only()),
            Some(settings) => {
                let store = RedisStore::connect_with_lag_histogram(settings, Some(metrics.mirror_lag.clone()))?;
                let (audit, events) = Audit::with_stream(metrics.clone());
                store.spawn_audit_writer(events, metrics.audit_dropped.clone());
                (Revocations::Redis(store), audit)
            }
        };
        Ok(Broker {
            catalog: Catalog::new(config.audiences, config.broker_issuer.clone(), config.task_token_max_ttl),
            broker_issuer: config.broker_issuer,
            keyring,
            issuers: Arc::new(issuers),
            policy: config.policy,
            clients: Clients::new(config.clients),
            limits: config.limits,
            leeway: config.leeway,
            task_revocation_retention: config.task_revocation_retention,
            revocations,
            metrics,
            audit,
        })
    }

    /// One revocation lookup, timed and counted; a failure fails closed.
    #[tracing::instrument(name = "store.lookup", skip_all, fields(keys = keys.len()))]
    pub(crate) async fn lookup(&self, keys: &[String], now: u64) -> crate::error::Result<Vec<Option<u64>>> {
        let start = std::time::Instant::now();
        let result = self.revocations.lookup(keys, now).await;
        self.record_store("lookup", start, result.is_err());
        Ok(result?)
    }

    /// A lookup that also spends single-use assertions, in the same round trip.
    #[tracing::instrument(name = "store.lookup", skip_all, fields(keys = keys.len(), spends = spends.len()))]
    pub(crate) async fn lookup_and_spend(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        now: u64,
    ) -> crate::error::Result<(Vec<Option<u64>>, Vec<bool>)> {
        let start = std::time::Instant::now();
        let result = self.revocations.lookup_and_spend(keys, spends, now).await;
        self.record_store("lookup", start, result.is_err());
        Ok(result?)
    }

    /// Records revocations, timed and counted.
    #[tracing::instrument(name = "store.revoke", skip_all)]
    pub(crate) async fn store_revocations(
        &self,
        entries: &[crate::revocation::Entry],
        now: u64,
    ) -> crate::error::Result<()> {
        let start = std::time::Instant::now();
        let result = self.revocations.revoke(entries, now).await;
        self.record_store("revoke", start, result.is_err());
        Ok(result?)
    }

    fn record_store(&self, op: &'static str, start: std::time::Instant, failed: bool) {
        let attrs = [opentelemetry::KeyValue::new("op", op)];
        self.metrics.store_duration.record(start.elapsed().as_secs_f64(), &attrs);
        if failed {
            self.metrics.store_errors.add(1, &attrs);
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn broker_issuer(&self) -> &str {
        &self.broker_issuer
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    pub fn issuers(&self) -> &Arc<Issuers> {
        &self.issuers
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

/// Seconds since the Unix epoch: the one place the broker reads the clock; domain functions take `now`.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
