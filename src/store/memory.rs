//! The embedded revocation store: one process, no dependencies. The default when no Redis is configured,
//! and only correct for a single replica (the Helm chart refuses more than one without Redis).
//! Its operations never wait; they are futures only to fit the [`Store`] port.
//!
//! Its [`RevocationList`] is also what a Redis mirror keeps in each replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use crate::revocation::{Entry, Store, StoreError, StoreFuture};

/// A revocation list in memory: key → (revoked_at, expires_at), with an index by expiry so every write
/// forgets what has expired in time proportional to what expired, and the list stays as small as the live
/// one however long the process runs.
#[derive(Debug, Default)]
pub struct RevocationList {
    entries: HashMap<String, (u64, u64)>,
    /// Keys by the expiry they were given. A key whose expiry was extended is also under its old expiry;
    /// it is kept when that one comes due, and forgotten at its new one.
    expiries: BTreeMap<u64, Vec<String>>,
}

impl RevocationList {
    /// Records a revocation; neither its time nor its expiry ever moves back. Forgets what expired by `now`.
    pub fn apply(&mut self, key: String, revoked_at: u64, expires_at: u64, now: u64) {
        self.prune(now);
        if expires_at <= now {
            return;
        }
        let slot = self.entries.entry(key.clone()).or_insert((revoked_at, 0));
        slot.0 = slot.0.max(revoked_at);
        if expires_at > slot.1 {
            slot.1 = expires_at;
            self.expiries.entry(expires_at).or_default().push(key);
        }
    }

    /// Forgets `key` (a lifted suspension).
    pub(crate) fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// `revoked_at` of each key still in force at `now`.
    pub fn lookup(&self, keys: &[String], now: u64) -> Vec<Option<u64>> {
        keys.iter().map(|k| self.entries.get(k).filter(|(_, exp)| *exp > now).map(|(at, _)| *at)).collect()
    }

    /// Records the spend marker `key` unless it is already in force; returns whether it was new.
    pub fn spend(&mut self, key: &str, now: u64, expires_at: u64) -> bool {
        self.prune(now);
        match self.entries.get(key) {
            Some((_, exp)) if *exp > now => false,
            _ => {
                self.apply(key.to_string(), now, expires_at.max(now + 1), now);
                true
            }
        }
    }

    /// Forgets entries whose tokens have all expired by `now`.
    fn prune(&mut self, now: u64) {
        while let Some(due) = self.expiries.first_entry() {
            if *due.key() > now {
                break;
            }
            for key in due.remove() {
                if self.entries.get(&key).is_some_and(|(_, exp)| *exp <= now) {
                    self.entries.remove(&key);
                }
            }
        }
    }

    /// Entries held, for tests that check the list stays bounded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held, for tests.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Index entries, for tests that check the list stays bounded.
    #[cfg(test)]
    fn index_len(&self) -> usize {
        self.expiries.values().map(Vec::len).sum()
    }
}

/// The embedded [`Store`]: one [`RevocationList`] behind a lock, for a single replica.
#[derive(Debug, Default)]
pub struct MemoryStore {
    list: RwLock<RevocationList>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Entries held, for tests that check the store stays bounded.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.read().map_or(0, |l| l.len())
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError("poisoned lock".into())
}

impl MemoryStore {
    fn revoke_now(&self, entries: &[Entry], now: u64) -> Result<(), StoreError> {
        let mut list = self.list.write().map_err(poisoned)?;
        for e in entries {
            list.apply(e.key.clone(), e.revoked_at, e.expires_at, now);
        }
        Ok(())
    }

    fn lift_now(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut list = self.list.write().map_err(poisoned)?;
        for key in keys {
            list.remove(key);
        }
        Ok(())
    }

    fn lookup_now(&self, keys: &[String], now: u64) -> Result<Vec<Option<u64>>, StoreError> {
        Ok(self.list.read().map_err(poisoned)?.lookup(keys, now))
    }

    fn lookup_and_spend_now(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        now: u64,
    ) -> Result<(Vec<Option<u64>>, Vec<bool>), StoreError> {
        let mut list = self.list.write().map_err(poisoned)?;
        let found = list.lookup(keys, now);
        let fresh = spends.iter().map(|(key, expires_at)| list.spend(key, now, *expires_at)).collect();
        Ok((found, fresh))
    }
}

/// Every operation completes at once; the lock is released before the future is returned.
impl Store for MemoryStore {
    fn revoke<'a>(&'a self, entries: &'a [Entry], now: u64) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.revoke_now(entries, now)))
    }

    fn lookup<'a>(&'a self, keys: &'a [String], now: u64) -> StoreFuture<'a, Vec<Option<u64>>> {
        Box::pin(std::future::ready(self.lookup_now(keys, now)))
    }

    fn lift<'a>(&'a self, keys: &'a [String], _now: u64) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.lift_now(keys)))
    }

    fn lookup_and_spend<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        now: u64,
    ) -> StoreFuture<'a, (Vec<Option<u64>>, Vec<bool>)> {
        Box::pin(std::future::ready(self.lookup_and_spend_now(keys, spends, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_single_use_keys_are_forgotten_as_time_passes() {
        // A compressed clock: a week of one single-use assertion spent per second, each remembered 60 s.
        let store = MemoryStore::new();
        let start = 1_800_000_000;
        let mut most = 0;
        for second in 0..(7 * 86_400u64) {
            let now = start + second;
            let spend = [(format!("used:{second}"), now + 60)];
            let (_, fresh) = futures_executor(store.lookup_and_spend(&[], &spend, now)).unwrap();
            assert_eq!(fresh, vec![true]);
            most = most.max(store.len());
        }
        assert!(most <= 61, "the embedded store grew to {most} entries");
        let list = store.list.read().unwrap();
        assert!(list.index_len() <= 61, "the expiry index grew to {}", list.index_len());
    }

    #[test]
    fn a_revocation_extended_later_is_kept_until_its_new_expiry() {
        let mut list = RevocationList::default();
        list.apply("k".into(), 10, 100, 10);
        list.apply("k".into(), 20, 500, 20);
        list.apply("other".into(), 20, 150, 20);
        list.prune(200);
        assert_eq!(list.lookup(&["k".into(), "other".into()], 200), vec![Some(20), None]);
        assert_eq!(list.len(), 1);
        list.prune(500);
        assert!(list.is_empty() && list.index_len() == 0);
    }

    /// Runs a store future that never waits (the embedded store's never do).
    fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the embedded store never waits"),
        }
    }
}
