//! Tokens already verified: a bounded cache, keyed by SHA-256 of the whole token, so a token presented
//! again — one of tessera's own at every introspection of a task's calls, an upstream assertion (a Kubernetes
//! service-account token, a CI job's OIDC token) at each exchange it is used for — skips the signature check,
//! what dominates verification's cost.
//!
//! Only what does not change for a given token string is cached: that its signature verifies and what its
//! claims say. What can change is checked on every hit: the token's times against `now`, with the leeways a
//! full verification would use, and that the keys that verified it are still trusted — for tessera's own
//! tokens, the key is still in the keyring; for an upstream assertion, the issuer still holds the very key
//! set it was verified with (any JWKS refresh ends the entries of that issuer). Revocation, replay (single-use
//! assertions) and policy are not the cache's business: every exchange and introspection still does its one
//! store lookup and its decisions. The cache lives in the [`super::Issuers`] of one snapshot, so a reload
//! (new issuers, keys or trust) starts from an empty one. A failed verification is never cached.

use std::collections::HashMap;
use std::sync::Mutex;

/// Verified tokens kept at most, by default: at ~2 KiB an entry, about 16 MiB.
pub(crate) const DEFAULT_VERIFIED_TOKENS: usize = 8192;
/// Independent locks, so concurrent introspections rarely wait on each other (none is held across an
/// `.await`).
const SHARDS: usize = 16;

/// SHA-256 of a token: the cache key (the token itself is never kept).
pub(crate) type Digest = [u8; 32];

/// The digest of `token`.
pub(crate) fn digest(token: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What verified a token (`K`: the key evidence the hit checks is still trusted), and when it is valid.
pub(crate) struct Checked<K> {
    pub(crate) by: K,
    /// The token's `exp`, and the leeway past it (0 for tessera's own: an expired token is inactive).
    pub(crate) exp: u64,
    pub(crate) exp_leeway: u64,
    /// The latest of its `nbf` and `iat`, which may be ahead of `now` by at most `skew`.
    pub(crate) not_before: u64,
    pub(crate) skew: u64,
}

struct Entry<T, K> {
    value: T,
    checked: Checked<K>,
}

/// The cache: at most `capacity` verified values, spread over [`SHARDS`] locks.
pub(crate) struct VerifiedTokens<T, K> {
    shards: Vec<Mutex<HashMap<Digest, Entry<T, K>>>>,
    per_shard: usize,
}

impl<T: Clone, K> VerifiedTokens<T, K> {
    /// A cache of at most about `capacity` tokens; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> VerifiedTokens<T, K> {
        let per_shard = capacity.div_ceil(SHARDS);
        VerifiedTokens { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), per_shard }
    }

    fn shard(&self, d: &Digest) -> &Mutex<HashMap<Digest, Entry<T, K>>> {
        &self.shards[usize::from(d[0]) % SHARDS]
    }

    /// The value cached for `d`, if its times hold at `now` and `still_trusted` says what verified it is
    /// still trusted. An entry that fails is dropped.
    pub(crate) fn get(&self, d: &Digest, now: u64, still_trusted: impl Fn(&K) -> bool) -> Option<T> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(d).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = shard.get(d)?;
        let c = &entry.checked;
        let valid = now < c.exp.saturating_add(c.exp_leeway) && c.not_before <= now.saturating_add(c.skew);
        if !valid || !still_trusted(&c.by) {
            shard.remove(d);
            return None;
        }
        Some(entry.value.clone())
    }

    /// Keeps `value` for `d`. A full shard first drops what has expired, and if that is not enough, starts
    /// over empty (a cache miss costs one signature check, nothing else).
    pub(crate) fn insert(&self, d: Digest, value: T, checked: Checked<K>, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&d).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| now < e.checked.exp.saturating_add(e.checked.exp_leeway));
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(d, Entry { value, checked });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(kid: &'static str, exp: u64, not_before: u64) -> Checked<&'static str> {
        Checked { by: kid, exp, exp_leeway: 0, not_before, skew: 5 }
    }

    #[test]
    fn a_hit_needs_the_same_token_valid_times_and_a_key_still_trusted() {
        let cache = VerifiedTokens::new(64);
        let d = digest("token-a");
        cache.insert(d, "claims", checked("key-1", 100, 10), 20);
        let trusted = |kid: &&str| *kid == "key-1";
        assert_eq!(cache.get(&d, 50, trusted), Some("claims"));
        assert_eq!(cache.get(&digest("token-b"), 50, trusted), None, "another token is another key");
        assert_eq!(cache.get(&d, 100, trusted), None, "expired at exp, exactly");
        assert_eq!(cache.get(&d, 50, trusted), None, "and the expired entry is gone");
        cache.insert(d, "claims", checked("key-1", 100, 30), 20);
        assert_eq!(cache.get(&d, 20, trusted), None, "nbf/iat ahead of now by more than the leeway");
        cache.insert(d, "claims", checked("key-1", 100, 24), 20);
        assert_eq!(cache.get(&d, 20, trusted), Some("claims"), "within the leeway");
        cache.insert(d, "claims", Checked { exp_leeway: 10, ..checked("key-1", 100, 0) }, 20);
        assert_eq!(cache.get(&d, 105, trusted), Some("claims"), "an upstream issuer's leeway past exp");
        assert_eq!(cache.get(&d, 110, trusted), None);
    }

    #[test]
    fn a_retired_key_ends_its_cached_tokens() {
        let cache = VerifiedTokens::new(64);
        let d = digest("signed-by-old");
        cache.insert(d, 1, checked("old", 1000, 0), 10);
        assert_eq!(cache.get(&d, 10, |kid| *kid == "old" || *kid == "new"), Some(1));
        assert_eq!(cache.get(&d, 10, |kid| *kid == "new"), None, "old retired: no hit");
        assert_eq!(cache.get(&d, 10, |_| true), None, "and the entry was dropped");
    }

    #[test]
    fn it_stays_bounded_and_off_means_off() {
        let cache = VerifiedTokens::new(32);
        for i in 0..1000 {
            cache.insert(digest(&format!("t{i}")), i, checked("k", 1000, 0), 10);
        }
        assert!(cache.len() <= 32, "{} entries", cache.len());
        let off = VerifiedTokens::new(0);
        off.insert(digest("t"), 1, checked("k", 1000, 0), 10);
        assert_eq!(off.get(&digest("t"), 10, |_| true), None);
    }
}
