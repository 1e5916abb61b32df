//! Status lists in Redis ([`crate::status_list`]): the next global index (`{tessera}:sl:next`, `INCRBY` a block
//! at a time, so replicas never collide), the tokens registered under each revocation key by expiry bucket
//! (`{tessera}:sl:idx:<revocation key>:<bucket>`, a set, expiring when its bucket ends), and each list's
//! flipped bits (`{tessera}:sl:bits:<n>`, a string, bit 0 the least significant of byte 0 as the draft lays it
//! out, expiring with the latest-expiring token it concerns), so the lists stay bounded and rotate.
//!
//! The revocation script flips the bits of the tokens registered under the key it writes ([`FLIP_LUA`]); a
//! registration is plain commands followed by a check of the keys it registered under, and flips the bit of a
//! token a revocation already ends ([`batch`] says why that order is enough). Everything is under one hash
//! tag, one Cluster slot, so one connection's order holds. (The scripts name the keys they derive rather than
//! declare them.)

/// Lua: the registration buckets' width and the longest a token lives (how far ahead a revocation reaches).
pub(super) fn buckets_lua() -> String {
    format!(
        "local bucket_seconds = {}\nlocal max_lifetime = {}\n",
        crate::status_list::BUCKET_SECONDS,
        crate::token::MAX_LIFETIME
    )
}

/// Lua: `flip(g, exp)` sets bit `g % LIST_BITS` of list `g / LIST_BITS` and keeps its key until `exp`
/// (needs `bits_per_list`).
pub(super) const FLIP_LUA: &str = r"
local function flip(g, exp)
  local list = math.floor(g / bits_per_list)
  local off = g % bits_per_list
  local key = '{tessera}:sl:bits:' .. string.format('%d', list)
  redis.call('SETBIT', key, off - off % 8 + 7 - off % 8, 1)
  if redis.call('EXPIRETIME', key) < exp then redis.call('EXPIREAT', key, exp) end
end
";

/// `KEYS[1]`: the counter (for routing); `ARGV[1]`: `LIST_BITS`; then pairs of a token's index and its `exp`:
/// flips each token's bit (the tokens a registration found already revoked).
pub(super) fn flip_script() -> String {
    format!(
        "local bits_per_list = tonumber(ARGV[1])\n{FLIP_LUA}{}",
        r"
for i = 2, #ARGV, 2 do flip(tonumber(ARGV[i]), tonumber(ARGV[i + 1])) end
return 1
"
    )
}

/// One batch of registrations as Redis is sent it, in one pipeline of plain commands: per set (a revocation
/// key's expiry bucket, [`crate::status_list::bucket`]) one `SADD` of every index the batch puts in it and one
/// `EXPIREAT` at the bucket's end (every token in it gives the same, so it is idempotent); then one `MGET` of
/// every distinct revocation key, which Redis runs after them.
///
/// Why that order is enough: a revocation of a key is one script, which flips every index registered under
/// it. If it runs before the `MGET`, the `MGET` finds it and the broker flips the token ([`flip_script`]); if
/// after, the `SADD` ran first, so the revocation flips it. A batch that fails anywhere is sent again whole,
/// so it never counts as registered until its `MGET` answered. Grouping by set means a key the batch's tokens
/// share (their client, task or subject) is written and read once, not once per token.
pub(super) struct Batch<'a> {
    pub(super) pipeline: redis::Pipeline,
    /// The distinct revocation keys, as the `MGET` asks them.
    pub(super) keys: Vec<&'a str>,
    /// The batch's tokens, each with its keys as positions in `keys`.
    pub(super) tokens: Vec<Registered>,
}

/// A token of a [`Batch`].
pub(super) struct Registered {
    pub(super) index: u64,
    pub(super) exp: u64,
    /// Each of its revocation keys, as a position in [`Batch::keys`], with how it is judged (as
    /// [`crate::revocation::Probe`] judges it).
    pub(super) keys: Vec<(usize, Option<u64>)>,
}

pub(super) fn batch(registrations: &[crate::revocation::StatusRegistration]) -> Batch<'_> {
    use std::collections::HashMap;
    use std::fmt::Write as _;

    // Sized for every key distinct, the most a batch can need, so none of these grows while it is built.
    let most = registrations.iter().map(|r| r.keys.len()).sum();
    let mut keys: Vec<&str> = Vec::with_capacity(most);
    let mut key_at: HashMap<&str, usize> = HashMap::with_capacity(most);
    // Each set's members in first-seen order, so the pipeline is the same for the same batch.
    let mut sets: Vec<(String, u64, Vec<u64>)> = Vec::with_capacity(most);
    let mut set_at: HashMap<(usize, u64), usize> = HashMap::with_capacity(most);
    let mut tokens = Vec::with_capacity(registrations.len());
    for r in registrations {
        let bucket = crate::status_list::bucket(r.exp);
        let mut judged = Vec::with_capacity(r.keys.len());
        for (key, issued_at) in r.keys.iter().zip(&r.issued_at) {
            let k = *key_at.entry(key.as_str()).or_insert_with(|| {
                keys.push(key.as_str());
                keys.len() - 1
            });
            judged.push((k, *issued_at));
            let set = *set_at.entry((k, bucket)).or_insert_with(|| {
                let mut name = String::with_capacity(key.len() + 32);
                let _ = write!(name, "{{tessera}}:sl:idx:{key}:{bucket}");
                sets.push((name, (bucket + 1) * crate::status_list::BUCKET_SECONDS, Vec::new()));
                sets.len() - 1
            });
            sets[set].2.push(r.index);
        }
        tokens.push(Registered { index: r.index, exp: r.exp, keys: judged });
    }
    // Each command sized for its arguments up front (a `u64` is at most 20 digits).
    let mut pipeline = redis::Pipeline::with_capacity(2 * sets.len() + 1);
    for (name, until, members) in &sets {
        let mut sadd = redis::Cmd::with_capacity(2 + members.len(), 4 + name.len() + 20 * members.len());
        sadd.arg("SADD").arg(name).arg(members);
        pipeline.add_command(sadd).ignore();
        let mut expire = redis::Cmd::with_capacity(3, 8 + name.len() + 20);
        expire.arg("EXPIREAT").arg(name).arg(until);
        pipeline.add_command(expire).ignore();
    }
    let mut mget = redis::Cmd::with_capacity(1 + keys.len(), 4 + keys.iter().map(|k| k.len()).sum::<usize>());
    mget.arg("MGET").arg(&keys);
    pipeline.add_command(mget);
    Batch { pipeline, keys, tokens }
}

/// The counter of global indices.
pub(super) const NEXT: &str = "{tessera}:sl:next";

/// The key of list `n`'s bits.
pub(super) fn bits_key(n: u64) -> String {
    format!("{{tessera}}:sl:bits:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::StatusRegistration;

    #[test]
    fn a_batch_reads_each_key_once_and_keeps_each_tokens_judgement() {
        let reg = |index: u64, keys: &[&str], issued_at: &[Option<u64>]| StatusRegistration {
            index,
            exp: 1_000,
            keys: keys.iter().map(|k| (*k).to_string()).collect(),
            issued_at: issued_at.to_vec(),
        };
        let regs =
            [reg(7, &["jti:a", "client:c"], &[None, Some(10)]), reg(8, &["jti:b", "client:c"], &[None, Some(20)])];
        let b = batch(&regs);
        assert_eq!(b.keys, ["jti:a", "client:c", "jti:b"]);
        assert_eq!(b.tokens[0].keys, [(0, None), (1, Some(10))]);
        assert_eq!((b.tokens[1].index, &b.tokens[1].keys[..]), (8, &[(2, None), (1, Some(20))][..]));
        // Three sets (the client's shared), an SADD and an EXPIREAT each, then the MGET.
        assert_eq!(b.pipeline.cmd_iter().count(), 7);
    }
}
