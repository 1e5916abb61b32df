//! The broker: everything the RPCs share, built once from a validated [`Config`].

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::client::Clients;
use crate::config::{Config, Limits};
use crate::issuer::Issuers;
use crate::policy::Policy;
use crate::revocation::Revocations;
use crate::revocation::memory::MemoryStore;
use crate::revocation::redis::RedisStore;
use crate::token::Keyring;

#[derive(Debug)]
pub struct Broker {
    /// The broker's own identifier: `iss` of its tokens, the `aud` upstream assertions carry, and the
    /// audience of task tokens.
    pub(crate) issuer_id: String,
    pub(crate) keyring: Keyring,
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) catalog: Catalog,
    pub(crate) policy: Policy,
    pub(crate) clients: Clients,
    pub(crate) limits: Limits,
    pub(crate) leeway: u64,
    pub(crate) revocations: Revocations,
}

impl Broker {
    /// Builds the broker. With Redis configured, connects lazily (and, in mirror mode, starts following the
    /// revocation channel), so it must run inside a Tokio runtime; a Redis that is down at start makes the
    /// broker fail closed until it is back, rather than fail to start.
    pub async fn new(config: Config) -> Result<Broker, String> {
        let keyring = Keyring::new(config.signing_keys)?;
        let issuers = Issuers::new(config.issuers, &keyring, config.broker_id.clone(), config.leeway);
        let revocations = match &config.store {
            None => Revocations::Memory(MemoryStore::new()),
            Some(settings) => Revocations::Redis(RedisStore::connect(settings)?),
        };
        Ok(Broker {
            catalog: Catalog::new(config.audiences, config.broker_id.clone(), config.task_token_max_ttl),
            issuer_id: config.broker_id,
            keyring,
            issuers: Arc::new(issuers),
            policy: config.policy,
            clients: Clients::new(config.clients),
            limits: config.limits,
            leeway: config.leeway,
            revocations,
        })
    }

    pub fn issuer_id(&self) -> &str {
        &self.issuer_id
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
