//! OAuth Token Status Lists (draft-ietf-oauth-status-list): every token tessera issues carries
//! `status: {status_list: {idx, uri}}`, and tessera publishes each list as a signed `statuslist+jwt` (one bit a
//! token, ZLIB-compressed, with a `ttl`), so a verifier that checks tokens offline against the JWKS also sees
//! revocations — within the list's `ttl` — without calling Introspect.
//!
//! **Indices.** A token's place is one global number `g`: list `g / LIST_BITS`, bit `g % LIST_BITS` in it.
//! Numbers come from the store in blocks ([`BLOCK`] at a time: Redis `INCRBY`, so replicas never collide),
//! held by each replica's [`StatusLists`] pool and refilled in the background before they run out, so an
//! exchange takes its index without a store round trip. Lists rotate as the numbers grow; a list whose
//! tokens have all expired is forgotten by the store (its keys expire with its longest-lived token).
//!
//! **Which bits a revocation flips.** After it is signed, each token is registered in the background under
//! every revocation key its introspection would check ([`crate::revocation::Probe::token`]: its own and each
//! ancestor's `jti`, its tasks, its subject, actors and lineage parties, its clients). A revocation flips the
//! bit of every token registered under its key, in the revocation's own atomic step; a registration checks
//! its keys once it is written and flips the bit of a token a revocation already ends (judged by
//! [`crate::revocation::applies`], as Introspect judges it). So the bits a list shows are exactly the tokens
//! Introspect calls revoked. See docs/revocation.md.
//!
//! **Bounded registrations.** A key's registrations are kept per [`BUCKET_SECONDS`] of expiry (the bucket
//! `exp / BUCKET_SECONDS`), each bucket forgotten when its last token expires: a client or a subject that
//! gets tokens all day long has only its live tokens registered, never every token it ever got. A
//! revocation flips every bucket a live token can be in, from now to [`crate::token::MAX_LIFETIME`] ahead.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::revocation::{Probe, Store};
use crate::token::AccessClaims;

/// Tokens a list holds: 2^20, 128 KiB of bits before compression (a few hundred bytes while sparse).
pub const LIST_BITS: u64 = 1 << 20;
/// The width of a registration bucket, in seconds of expiry (see the module's doc).
pub const BUCKET_SECONDS: u64 = 300;

/// The bucket of a token that expires at `exp`.
pub fn bucket(exp: u64) -> u64 {
    exp / BUCKET_SECONDS
}

/// The buckets a revocation at `now` flips: every bucket a token still alive can be in.
pub fn live_buckets(now: u64) -> std::ops::RangeInclusive<u64> {
    bucket(now)..=bucket(now.saturating_add(crate::token::MAX_LIFETIME))
}

/// Indices a replica takes from the store at once.
pub const BLOCK: u64 = 1024;
/// The default `ttl` of a status list token: how long a verifier may cache it, so how late it may see a
/// revocation.
pub const DEFAULT_TTL: u64 = 60;
/// The media type of a status list token.
pub const MEDIA_TYPE: &str = "application/statuslist+jwt";
/// Its JWT `typ`.
pub const TYP: &str = "statuslist+jwt";
/// Registrations one background write carries at most.
pub const MAX_REGISTRATIONS: usize = 256;

pub use crate::revocation::StatusRegistration as Registration;
pub use crate::token::{Status, StatusListRef as ListRef};

/// The registration of a token about to be issued with index `g`: under every revocation key its
/// introspection checks, each judged the same way.
pub fn registration(claims: &AccessClaims, g: u64) -> Registration {
    let mut probe = Probe::default();
    probe.token(claims);
    let (keys, issued_at) = probe.into_parts();
    Registration { index: g, exp: claims.exp, keys, issued_at }
}

/// The list and the bit of global index `g`.
pub fn locate(g: u64) -> (u64, u64) {
    (g / LIST_BITS, g % LIST_BITS)
}

/// The URL of list `n` under the broker's issuer.
pub fn list_uri(issuer: &str, n: u64) -> String {
    format!("{}/statuslists/{n}", issuer.trim_end_matches('/'))
}

/// Sets bit `bit` in `bytes` the draft's way (§4.1): bit 0 is the least significant bit of byte 0.
pub fn set_bit(bytes: &mut [u8], bit: u64) {
    if let Some(byte) = usize::try_from(bit / 8).ok().and_then(|i| bytes.get_mut(i)) {
        *byte |= 1 << (bit % 8);
    }
}

/// The claims of list `n`'s status list token (§5.1): `sub` its URL, `iat`, `exp` (twice the `ttl`: a token
/// is fetched again well before), `ttl`, and `status_list` with 1 bit a token, ZLIB-compressed (`lst`).
/// `bits` are the list's bytes as the store holds them (shorter when the end is all valid).
pub fn token_claims(issuer: &str, n: u64, bits: &[u8], now: u64, ttl: u64) -> Result<serde_json::Value> {
    let full = usize::try_from(LIST_BITS / 8).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; full];
    let take = bits.len().min(full);
    bytes[..take].copy_from_slice(&bits[..take]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&bytes).map_err(|_| Error::internal("could not compress a status list"))?;
    let compressed = z.finish().map_err(|_| Error::internal("could not compress a status list"))?;
    Ok(serde_json::json!({
        "sub": list_uri(issuer, n),
        "iat": now,
        "exp": now + 2 * ttl,
        "ttl": ttl,
        "status_list": { "bits": 1, "lst": crate::token::jws::b64(&compressed) },
    }))
}

/// A replica's indices: blocks taken from the store, handed out one per token, and the registrations still
/// to write. Shared by every exchange; the lock is never held across an `.await`.
#[derive(Debug)]
pub struct StatusLists {
    issuer: String,
    /// How long a verifier may cache a list (its `ttl`).
    pub ttl: u64,
    pool: Mutex<VecDeque<(u64, u64)>>,
    /// Woken when the pool runs below half a block: the refill task takes the next one.
    pub low: tokio::sync::Notify,
    registrations: tokio::sync::mpsc::Sender<Registration>,
}

impl StatusLists {
    /// The pool of `issuer`'s lists, and the receiver of the registrations its background writer drains.
    pub fn new(issuer: &str, ttl: u64) -> (StatusLists, tokio::sync::mpsc::Receiver<Registration>) {
        let (registrations, receiver) = tokio::sync::mpsc::channel(64 * 1024);
        let lists = StatusLists {
            issuer: issuer.to_string(),
            ttl,
            pool: Mutex::new(VecDeque::new()),
            low: tokio::sync::Notify::new(),
            registrations,
        };
        (lists, receiver)
    }

    fn held(&self) -> u64 {
        self.pool.lock().map_or(0, |p| p.iter().map(|(a, b)| b - a).sum())
    }

    /// Whether the pool holds less than half a block (the refill task's question).
    pub fn running_low(&self) -> bool {
        self.held() < BLOCK / 2
    }

    /// Adds the block `[start, start + BLOCK)` the store handed out.
    pub fn add_block(&self, start: u64) {
        self.add_range(start, start.saturating_add(BLOCK));
    }

    fn add_range(&self, start: u64, end: u64) {
        if let Ok(mut pool) = self.pool.lock()
            && start < end
        {
            pool.push_back((start, end));
        }
    }

    fn pop(&self) -> Option<u64> {
        let mut pool = self.pool.lock().ok()?;
        let front = pool.front_mut()?;
        let g = front.0;
        front.0 += 1;
        if front.0 >= front.1 {
            pool.pop_front();
        }
        Some(g)
    }

    /// The next index for a token: from the pool (no store round trip); from the store itself only when the
    /// pool ran dry (a burst beyond what the refill task kept up with).
    pub async fn take(&self, store: &dyn Store) -> Result<u64> {
        let g = match self.pop() {
            Some(g) => g,
            None => {
                let start = store.allocate_status(BLOCK).await?;
                self.add_range(start + 1, start.saturating_add(BLOCK));
                start
            }
        };
        if self.running_low() {
            self.low.notify_one();
        }
        Ok(g)
    }

    /// The global index a `status` claim of this broker names.
    pub fn index(&self, status: &Status) -> u64 {
        let n = status.status_list.uri.rsplit('/').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        n * LIST_BITS + status.status_list.idx
    }

    /// The `status` claim of index `g`.
    pub fn status(&self, g: u64) -> Status {
        let (n, idx) = locate(g);
        Status { status_list: ListRef { idx, uri: list_uri(&self.issuer, n) } }
    }

    /// Queues the registration of a token just issued. A full queue waits (backpressure) rather than drop a
    /// registration, which would leave that token's bit unflipped by a revocation of an ancestor.
    pub async fn register(&self, registration: Registration) {
        let _ = self.registrations.send(registration).await;
    }
}

/// The refill task: keeps `lists` at least half a block ahead, taking blocks from `store`. Retries after a
/// failure (an exchange takes a block itself meanwhile, and fails closed if the store is down).
pub async fn refill(lists: std::sync::Arc<StatusLists>, store: std::sync::Arc<dyn Store>) {
    loop {
        while lists.running_low() {
            match store.allocate_status(BLOCK).await {
                Ok(start) => lists.add_block(start),
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        lists.low.notified().await;
    }
}

/// The registration writer: drains the queue in batches to `store`, retrying a batch that failed (its tokens
/// are registered late rather than never).
pub async fn write_registrations(
    mut queue: tokio::sync::mpsc::Receiver<Registration>,
    store: std::sync::Arc<dyn Store>,
) {
    let mut batch = Vec::with_capacity(MAX_REGISTRATIONS);
    while queue.recv_many(&mut batch, MAX_REGISTRATIONS).await > 0 {
        while let Err(e) = store.register_status(&batch).await {
            tracing::warn!(error = %e.0, "status list registrations not written; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_least_significant_first_and_lists_rotate() {
        let mut bytes = [0u8; 2];
        set_bit(&mut bytes, 0);
        set_bit(&mut bytes, 9);
        set_bit(&mut bytes, 99);
        assert_eq!(bytes, [0b0000_0001, 0b0000_0010]);
        assert_eq!(locate(5), (0, 5));
        assert_eq!(locate(LIST_BITS + 3), (1, 3));
        assert_eq!(list_uri("https://t.example/", 2), "https://t.example/statuslists/2");
    }

    #[test]
    fn a_list_token_inflates_back_to_its_bits() {
        use std::io::Read as _;
        let claims = token_claims("https://t", 0, &[0b1000_0000, 0, 1], 100, 60).unwrap();
        assert_eq!((claims["sub"].as_str(), claims["ttl"].as_u64()), (Some("https://t/statuslists/0"), Some(60)));
        let lst = claims["status_list"]["lst"].as_str().unwrap();
        let compressed = crate::token::jws::b64_decode(lst).unwrap();
        let mut bytes = Vec::new();
        flate2::read::ZlibDecoder::new(&compressed[..]).read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, LIST_BITS / 8);
        assert_eq!(&bytes[..3], &[0b1000_0000, 0, 1]);
        assert!(bytes[3..].iter().all(|b| *b == 0));
    }

    #[tokio::test]
    async fn indices_come_from_blocks_without_repeats() {
        let store = crate::store::memory::MemoryStore::new();
        let (lists, _queue) = StatusLists::new("https://t", 60);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..(3 * BLOCK) {
            let g = lists.take(&store).await.unwrap();
            assert!(seen.insert(g), "{g} handed out twice");
            if lists.running_low() {
                lists.add_block(store.allocate_status(BLOCK).await.unwrap());
            }
        }
    }
}
