//! The embedded revocation store: one process, no dependencies. The default when no Redis is configured,
//! and only correct for a single replica (the Helm chart refuses more than one without Redis).
//! Its operations never wait; they are futures only to fit the [`Store`] port.
//!
//! Its [`RevocationList`] is also what a Redis mirror keeps in each replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::revocation_log::RevocationLog;
use crate::ratelimit::{Decision, Limit, Throttled, gcra};
use crate::revocation::watch::{DEFAULT_MAX_EVENTS, Reader};
use crate::revocation::{Admission, Entry, Store, StoreError, StoreFuture};

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

    /// `(revoked_at, expires_at)` of `key` as held (whether or not still in force).
    pub(crate) fn get(&self, key: &str) -> Option<(u64, u64)> {
        self.entries.get(key).copied()
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

/// The rate-limit buckets of one process: key → TAT (µs). A key whose TAT has passed is a full bucket, the
/// same as no key, so it may be forgotten: a sweep drops them all whenever the map has doubled since the
/// last one, which keeps it as small as the buckets in use at amortised O(1) per request.
#[derive(Debug, Default)]
struct Buckets {
    tats: HashMap<String, u64>,
    sweep_above: usize,
}

/// Buckets held before the first sweep.
const MIN_SWEEP: usize = 1024;

impl Buckets {
    /// GCRA over every limit at `now_us`, all or nothing: the first that trips is answered and no bucket
    /// moves on; otherwise every bucket moves on.
    fn admit(&mut self, limits: &[Limit], now_us: u64) -> Option<Throttled> {
        // First every limit is judged, changing nothing; then, all admitted, each moves on (the same GCRA
        // step on the same TAT, so the same answer).
        for (index, limit) in limits.iter().enumerate() {
            if let Decision::Throttle { retry_after_us } = gcra(self.tats.get(&limit.key).copied(), limit.rate, now_us)
            {
                return Some(Throttled { index, retry_after_us });
            }
        }
        for limit in limits {
            let slot = self.tats.get_mut(&limit.key);
            let stored = slot.as_deref().copied();
            let Decision::Admit { tat_us } = gcra(stored, limit.rate, now_us) else { continue };
            match slot {
                Some(tat) => *tat = tat_us,
                None => {
                    self.tats.insert(limit.key.clone(), tat_us);
                }
            }
        }
        if self.tats.len() > self.sweep_above.max(MIN_SWEEP) {
            self.tats.retain(|_, tat| *tat > now_us);
            self.sweep_above = self.tats.len() * 2;
        }
        None
    }
}

/// Drops the buckets before `live` (every token in them has expired).
fn forget_ended(buckets: &mut BTreeMap<u64, Vec<u64>>, live: u64) {
    if buckets.first_key_value().is_some_and(|(b, _)| *b < live) {
        *buckets = buckets.split_off(&live);
    }
}

/// The status lists of one process ([`crate::status_list`]): the next index, the tokens registered under each
/// revocation key, and the flipped bits of each list, each forgotten once every token it concerns expired.
#[derive(Debug, Default)]
struct StatusState {
    next: u64,
    /// Revocation key → expiry bucket ([`crate::status_list::bucket`]) → the indices registered under it.
    registered: HashMap<String, BTreeMap<u64, Vec<u64>>>,
    /// List → (its bytes, the latest `exp` of a token whose bit is set).
    lists: HashMap<u64, (Vec<u8>, u64)>,
    sweep_above: usize,
}

impl StatusState {
    fn flip(&mut self, g: u64, exp: u64) {
        let (n, bit) = crate::status_list::locate(g);
        let size = usize::try_from(crate::status_list::LIST_BITS / 8).unwrap_or(usize::MAX);
        let (bytes, until) = self.lists.entry(n).or_insert_with(|| (vec![0; size], 0));
        crate::status_list::set_bit(bytes, bit);
        *until = (*until).max(exp);
    }

    /// Flips every token registered under `key` in a bucket a live token can be in (a revocation of it was
    /// just recorded at `now`, lasting to `exp`).
    fn revoked(&mut self, key: &str, exp: u64, now: u64) {
        let Some(buckets) = self.registered.get(key) else { return };
        let live = crate::status_list::live_buckets(now);
        let indices: Vec<u64> = buckets.range(live).flat_map(|(_, indices)| indices).copied().collect();
        for g in indices {
            self.flip(g, exp);
        }
    }

    /// Registers index `g` of a token expiring at `exp` under `key`, forgetting the key's buckets that ended.
    fn register(&mut self, key: &str, g: u64, exp: u64, now: u64) {
        let buckets = self.registered.entry(key.to_string()).or_default();
        forget_ended(buckets, crate::status_list::bucket(now));
        buckets.entry(crate::status_list::bucket(exp)).or_default().push(g);
    }

    /// Forgets what concerns only expired tokens, whenever the maps have doubled since the last sweep.
    fn sweep(&mut self, now: u64) {
        if self.registered.len() + self.lists.len() > self.sweep_above.max(1024) {
            let live = crate::status_list::bucket(now);
            self.registered.retain(|_, buckets| {
                forget_ended(buckets, live);
                !buckets.is_empty()
            });
            self.lists.retain(|_, (_, exp)| *exp > now);
            self.sweep_above = (self.registered.len() + self.lists.len()) * 2;
        }
    }
}

/// The embedded [`Store`]: one [`RevocationList`] behind a lock, for a single replica, its revocation log and
/// its status lists.
#[derive(Debug)]
pub struct MemoryStore {
    list: RwLock<RevocationList>,
    buckets: Mutex<Buckets>,
    /// The approvals ledger: record and binding keys → (value, expires_at).
    approvals: Mutex<HashMap<String, (String, u64)>>,
    log: Arc<RevocationLog>,
    /// Locked only while the list's write lock is held, so revocations and registrations are one order.
    status: Mutex<StatusState>,
    /// Shared Signals: each receiver's delivery cursor (one process: it always holds every lease).
    ssf_cursors: Mutex<HashMap<String, String>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_log(usize::try_from(DEFAULT_MAX_EVENTS).unwrap_or(usize::MAX))
    }
}

impl MemoryStore {
    /// An empty store whose revocation log keeps the default number of events.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store whose revocation log keeps the last `max_events` events.
    pub fn with_log(max_events: usize) -> MemoryStore {
        MemoryStore {
            list: RwLock::default(),
            buckets: Mutex::default(),
            log: RevocationLog::new(max_events, crate::clock::now_ms()),
            status: Mutex::default(),
            approvals: Mutex::default(),
            ssf_cursors: Mutex::default(),
        }
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
        let mut status = self.status.lock().map_err(poisoned)?;
        for e in entries {
            if e.expires_at > now {
                status.revoked(&e.key, e.expires_at, now);
            }
            list.apply(e.key.clone(), e.revoked_at, e.expires_at, now);
            // Logged under the list's lock, with the values as applied (never moved back), and only when in
            // force: the log holds exactly the revocations the list does, in the order they were applied.
            if let (Some(notice), Some((revoked_at, expires_at))) = (&e.notice, list.get(&e.key))
                && expires_at > now
            {
                self.log.append(notice, revoked_at, expires_at, &e.reason);
            }
        }
        Ok(())
    }

    /// Under the list's write lock, as a revocation: a token registered after a revocation that ends it has its
    /// bit flipped here; one registered before, by the revocation.
    fn register_now(&self, registrations: &[crate::revocation::StatusRegistration]) -> Result<(), StoreError> {
        let now = crate::clock::now();
        let list = self.list.write().map_err(poisoned)?;
        let mut status = self.status.lock().map_err(poisoned)?;
        for r in registrations {
            for key in &r.keys {
                status.register(key, r.index, r.exp, now);
            }
            let found = list.lookup(&r.keys, now);
            if found.iter().zip(&r.issued_at).any(|(found, iat)| crate::revocation::applies(*found, *iat)) {
                status.flip(r.index, r.exp);
            }
        }
        status.sweep(now);
        Ok(())
    }

    fn allocate_now(&self, count: u64) -> Result<u64, StoreError> {
        let mut status = self.status.lock().map_err(poisoned)?;
        let start = status.next;
        status.next = start.saturating_add(count);
        Ok(start)
    }

    fn bits_now(&self, n: u64) -> Result<Vec<u8>, StoreError> {
        let now = crate::clock::now();
        let status = self.status.lock().map_err(poisoned)?;
        Ok(status.lists.get(&n).filter(|(_, exp)| *exp > now).map(|(bytes, _)| bytes.clone()).unwrap_or_default())
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

    /// Under the list's write lock (and then the buckets'), so a lookup, its limits and its spends are one
    /// step, as in Redis' script: a throttled request spends nothing.
    fn admit_now(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        limits: &[Limit],
        now: u64,
        now_ms: u64,
    ) -> Result<Admission, StoreError> {
        if limits.is_empty() {
            let (found, fresh) = self.lookup_and_spend_now(keys, spends, now)?;
            return Ok(Admission { found, fresh, throttled: None });
        }
        let mut list = self.list.write().map_err(poisoned)?;
        let found = list.lookup(keys, now);
        let throttled = self.buckets.lock().map_err(poisoned)?.admit(limits, now_ms.saturating_mul(1000));
        let fresh = match throttled {
            Some(_) => Vec::new(),
            None => spends.iter().map(|(key, expires_at)| list.spend(key, now, *expires_at)).collect(),
        };
        Ok(Admission { found, fresh, throttled })
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

    fn watch_reader(&self) -> Option<Box<dyn Reader>> {
        Some(self.log.reader())
    }

    fn allocate_status(&self, count: u64) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(self.allocate_now(count)))
    }

    fn register_status<'a>(
        &'a self,
        registrations: &'a [crate::revocation::StatusRegistration],
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.register_now(registrations)))
    }

    fn status_bits(&self, n: u64) -> StoreFuture<'_, Vec<u8>> {
        Box::pin(std::future::ready(self.bits_now(n)))
    }

    fn ssf_lease<'a>(&'a self, _receiver: &'a str, _holder: &'a str, _ttl_ms: u64) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn ssf_cursor<'a>(&'a self, receiver: &'a str) -> StoreFuture<'a, Option<String>> {
        let cursor = self.ssf_cursors.lock().map_err(poisoned).map(|c| c.get(receiver).cloned());
        Box::pin(std::future::ready(cursor))
    }

    fn ssf_set_cursor<'a>(&'a self, receiver: &'a str, cursor: &'a str) -> StoreFuture<'a, ()> {
        let set = self.ssf_cursors.lock().map_err(poisoned).map(|mut c| {
            c.insert(receiver.to_string(), cursor.to_string());
        });
        Box::pin(std::future::ready(set))
    }

    fn lookup_and_spend<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        now: u64,
    ) -> StoreFuture<'a, (Vec<Option<u64>>, Vec<bool>)> {
        Box::pin(std::future::ready(self.lookup_and_spend_now(keys, spends, now)))
    }

    fn admit<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        limits: &'a [Limit],
        now: u64,
        now_ms: u64,
    ) -> StoreFuture<'a, Admission> {
        Box::pin(std::future::ready(self.admit_now(keys, spends, limits, now, now_ms)))
    }
}

/// The approvals ledger in memory: each call holds the one lock for its whole compare-and-set, and every
/// write forgets what has expired (approvals are few: a scan is cheap, and the map stays as small as the live
/// set).
impl crate::approval::Ledger for MemoryStore {
    fn open<'a>(
        &'a self,
        binding: &'a str,
        id: &'a str,
        record: &'a str,
        expires_at: u64,
        now: u64,
    ) -> StoreFuture<'a, Option<String>> {
        let result = self.approvals.lock().map_err(poisoned).map(|mut map| {
            map.retain(|_, (_, exp)| *exp > now);
            let (b, r) = (approval_binding_key(binding), approval_record_key(id));
            if let Some((held, _)) = map.get(&b) {
                return Some(held.clone());
            }
            map.insert(b, (id.to_string(), expires_at));
            map.insert(r, (record.to_string(), expires_at));
            None
        });
        Box::pin(std::future::ready(result))
    }

    fn load<'a>(&'a self, id: &'a str, now: u64) -> StoreFuture<'a, Option<String>> {
        let result = self
            .approvals
            .lock()
            .map_err(poisoned)
            .map(|map| map.get(&approval_record_key(id)).filter(|(_, exp)| *exp > now).map(|(v, _)| v.clone()));
        Box::pin(std::future::ready(result))
    }

    fn swap<'a>(
        &'a self,
        id: &'a str,
        binding: &'a str,
        expected: &'a str,
        record: &'a str,
        expires_at: u64,
        keep_binding: bool,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        let result = self.approvals.lock().map_err(poisoned).map(|mut map| {
            map.retain(|_, (_, exp)| *exp > now);
            let r = approval_record_key(id);
            if map.get(&r).map(|(v, _)| v.as_str()) != Some(expected) {
                return false;
            }
            map.insert(r, (record.to_string(), expires_at));
            let b = approval_binding_key(binding);
            if map.get(&b).is_some_and(|(held, _)| held == id) {
                if keep_binding {
                    map.insert(b, (id.to_string(), expires_at));
                } else {
                    map.remove(&b);
                }
            }
            true
        });
        Box::pin(std::future::ready(result))
    }

    fn release<'a>(&'a self, binding: &'a str, id: &'a str, _now: u64) -> StoreFuture<'a, ()> {
        let result = self.approvals.lock().map_err(poisoned).map(|mut map| {
            let b = approval_binding_key(binding);
            if map.get(&b).is_some_and(|(held, _)| held == id) {
                map.remove(&b);
            }
        });
        Box::pin(std::future::ready(result))
    }
}

/// The store key of an approval's binding (its digest → its id).
pub(crate) fn approval_binding_key(digest: &str) -> String {
    format!("{{tessera}}:appr:b:{digest}")
}

/// The store key of an approval's record.
pub(crate) fn approval_record_key(id: &str) -> String {
    format!("{{tessera}}:appr:r:{id}")
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

    fn limit(dimension: crate::ratelimit::Dimension, key: &str, per_minute: u64, burst: u64) -> Limit {
        Limit { dimension, key: key.into(), rate: crate::ratelimit::Rate::new(per_minute, burst).unwrap() }
    }

    #[test]
    fn a_throttled_admission_spends_nothing_and_moves_no_other_limit() {
        use crate::ratelimit::Dimension::{Client, Task};
        let store = MemoryStore::new();
        let (now, now_ms) = (1_800_000_000, 1_800_000_000_000);
        let client = limit(Client, "rl:client", 60, 3);
        let task = limit(Task, "rl:task", 60, 1);
        let spend = |jti: &str| vec![(format!("used:{jti}"), now + 60)];
        let admit = |limits: &[Limit], spends: &[(String, u64)], ms: u64| {
            futures_executor(store.admit(&["rev".to_string()], spends, limits, now, ms)).unwrap()
        };
        let both = [client.clone(), task.clone()];
        let first = admit(&both, &spend("a"), now_ms);
        assert_eq!((first.found, first.fresh, first.throttled), (vec![None], vec![true], None));
        // The task's burst of one is used up: refused by the task (index 1), and the assertion is not spent.
        let second = admit(&both, &spend("b"), now_ms);
        assert_eq!(second.throttled, Some(Throttled { index: 1, retry_after_us: 1_000_000 }));
        assert!(second.fresh.is_empty());
        // Nor did the refused request move the client's bucket: two more fit in its burst of three.
        assert_eq!(admit(std::slice::from_ref(&client), &[], now_ms).throttled, None);
        assert_eq!(admit(std::slice::from_ref(&client), &[], now_ms).throttled, None);
        assert!(admit(std::slice::from_ref(&client), &[], now_ms).throttled.is_some());
        // A second later the task admits again, and the assertion refused for rate is still fresh.
        let later = admit(std::slice::from_ref(&task), &spend("b"), now_ms + 1000);
        assert_eq!((later.fresh, later.throttled), (vec![true], None));
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let store = MemoryStore::new();
        let start_ms = 1_800_000_000_000u64;
        let mut most = 0;
        // One new principal a millisecond, each bucket full again a second later: the map stays bounded.
        for i in 0..20_000u64 {
            let l = [limit(crate::ratelimit::Dimension::Principal, &format!("rl:sub:{i}"), 60, 1)];
            let now_ms = start_ms + i;
            futures_executor(store.admit(&[], &[], &l, now_ms / 1000, now_ms)).unwrap();
            most = most.max(store.buckets.lock().unwrap().tats.len());
        }
        assert!(most <= 2 * 1000 + MIN_SWEEP, "the buckets grew to {most}");
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
