//! The embedded revocation store: one process, no dependencies. The default when no Redis is configured,
//! and only correct for a single replica (the Helm chart refuses more than one without Redis).
//!
//! Its [`RevocationList`] is also what a Redis mirror keeps in each replica.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{Entry, Store, StoreError};

/// A revocation list in memory: key → (revoked_at, expires_at).
#[derive(Debug, Default)]
pub struct RevocationList(HashMap<String, (u64, u64)>);

impl RevocationList {
    /// Records a revocation; neither its time nor its expiry ever moves back.
    pub fn apply(&mut self, key: String, revoked_at: u64, expires_at: u64) {
        let slot = self.0.entry(key).or_insert((revoked_at, expires_at));
        slot.0 = slot.0.max(revoked_at);
        slot.1 = slot.1.max(expires_at);
    }

    /// `revoked_at` of each key still in force at `now`.
    pub fn lookup(&self, keys: &[String], now: u64) -> Vec<Option<u64>> {
        keys.iter().map(|k| self.0.get(k).filter(|(_, exp)| *exp > now).map(|(at, _)| *at)).collect()
    }

    /// Records `key` unless it is already in force; returns whether it was new.
    pub fn claim(&mut self, key: &str, now: u64, expires_at: u64) -> bool {
        match self.0.get(key) {
            Some((_, exp)) if *exp > now => false,
            _ => {
                self.0.insert(key.to_string(), (now, expires_at));
                true
            }
        }
    }

    /// Forgets entries whose tokens have all expired.
    pub fn prune(&mut self, now: u64) {
        self.0.retain(|_, (_, expires_at)| *expires_at > now);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    list: RwLock<RevocationList>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn len(&self) -> usize {
        self.list.read().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError("poisoned lock".into())
}

impl Store for MemoryStore {
    async fn revoke(&self, entries: &[Entry], now: u64) -> Result<(), StoreError> {
        let mut list = self.list.write().map_err(poisoned)?;
        // Expired keys are dropped as new ones arrive, so the list stays as small as the live one.
        list.prune(now);
        for e in entries {
            list.apply(e.key.clone(), e.revoked_at, e.expires_at);
        }
        Ok(())
    }

    async fn lookup(&self, keys: &[String], now: u64) -> Result<Vec<Option<u64>>, StoreError> {
        Ok(self.list.read().map_err(poisoned)?.lookup(keys, now))
    }

    async fn lookup_and_claim(
        &self,
        keys: &[String],
        claims: &[(String, u64)],
        now: u64,
    ) -> Result<(Vec<Option<u64>>, Vec<bool>), StoreError> {
        let mut list = self.list.write().map_err(poisoned)?;
        let found = list.lookup(keys, now);
        let fresh = claims.iter().map(|(key, expires_at)| list.claim(key, now, *expires_at)).collect();
        Ok((found, fresh))
    }
}
