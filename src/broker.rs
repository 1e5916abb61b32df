//! The broker: everything the RPCs share, built once from a validated [`Config`].

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::client::Clients;
use crate::config::{Config, Limits};
use crate::issuer::Issuers;
use crate::policy::Policy;
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
}

impl Broker {
    pub fn new(config: Config) -> Result<Broker, String> {
        let keyring = Keyring::new(config.signing_keys)?;
        let issuers = Issuers::new(config.issuers, &keyring, config.broker_id.clone(), config.leeway);
        Ok(Broker {
            catalog: Catalog::new(config.audiences, config.broker_id.clone(), config.task_token_max_ttl),
            issuer_id: config.broker_id,
            keyring,
            issuers: Arc::new(issuers),
            policy: config.policy,
            clients: Clients::new(config.clients),
            limits: config.limits,
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
}

/// Seconds since the Unix epoch: the one place the broker reads the clock; domain functions take `now`.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
