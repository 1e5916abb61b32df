//! The embedded revocation store: one process, no dependencies. The default when no Redis is configured,
//! and only correct for a single replica (the Helm chart refuses more than one without Redis).

use std::collections::HashMap;
use std::sync::RwLock;

use super::{Entry, Store, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// key → (revoked_at, expires_at)
    entries: RwLock<HashMap<String, (u64, u64)>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    async fn revoke(&self, entries: &[Entry], now: u64) -> Result<(), StoreError> {
        let mut map = self.entries.write().map_err(|_| StoreError("poisoned lock".into()))?;
        // Expired keys are dropped as new ones arrive, so the map stays as small as the live list.
        map.retain(|_, (_, expires_at)| *expires_at > now);
        for e in entries {
            let slot = map.entry(e.key.clone()).or_insert((e.revoked_at, e.expires_at));
            slot.0 = slot.0.max(e.revoked_at);
            slot.1 = slot.1.max(e.expires_at);
        }
        Ok(())
    }

    async fn lookup(&self, keys: &[String], now: u64) -> Result<Vec<Option<u64>>, StoreError> {
        let map = self.entries.read().map_err(|_| StoreError("poisoned lock".into()))?;
        Ok(keys.iter().map(|k| map.get(k).filter(|(_, exp)| *exp > now).map(|(at, _)| *at)).collect())
    }

    async fn lookup_and_claim(
        &self,
        keys: &[String],
        claims: &[(String, u64)],
        now: u64,
    ) -> Result<(Vec<Option<u64>>, Vec<bool>), StoreError> {
        let found = self.lookup(keys, now).await?;
        let mut map = self.entries.write().map_err(|_| StoreError("poisoned lock".into()))?;
        let fresh = claims
            .iter()
            .map(|(key, expires_at)| match map.get(key) {
                Some((_, exp)) if *exp > now => false,
                _ => {
                    map.insert(key.clone(), (now, *expires_at));
                    true
                }
            })
            .collect();
        Ok((found, fresh))
    }
}
