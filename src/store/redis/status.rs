//! Status lists in Redis ([`crate::status_list`]): the next global index (`{tessera}:sl:next`, `INCRBY` a block
//! at a time, so replicas never collide), the tokens registered under each revocation key by expiry bucket
//! (`{tessera}:sl:idx:<revocation key>:<bucket>`, a set, expiring when its bucket ends), and each list's
//! flipped bits (`{tessera}:sl:bits:<n>`, a string, bit 0 the least significant of byte 0 as the draft lays it
//! out, expiring with the latest-expiring token it concerns), so the lists stay bounded and rotate.
//!
//! The revocation script flips the bits of the tokens registered under the key it writes
//! ([`FLIP_LUA`]); the registration script registers and flips the bit of a token a revocation already ends.
//! Both are atomic and under one hash tag, so whichever runs first, the other sees it. (They name the keys
//! they derive — all under `{tessera}`, one Cluster slot — rather than declare them.)

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

/// `KEYS[1]`: the counter (for routing); `ARGV[1]`: `LIST_BITS`; then per token: its index, its `exp`, how many
/// keys, and each key with its judgement (`-1`: whenever present; else the token's `iat`).
///
/// A token goes into each key's set of its expiry bucket ([`crate::status_list::bucket`]), which expires when
/// the bucket ends: every token in it gives the same expiry, so setting it is idempotent.
pub(super) fn register_script() -> String {
    format!(
        "local bits_per_list = tonumber(ARGV[1])\n{}{FLIP_LUA}{}",
        buckets_lua(),
        r"
local i = 2
while i <= #ARGV do
  local index, exp, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local revoked = false
  local bucket = math.floor(exp / bucket_seconds)
  local suffix, until_ = ':' .. string.format('%d', bucket), (bucket + 1) * bucket_seconds
  for j = 1, n do
    local key, judged = ARGV[i], tonumber(ARGV[i + 1])
    i = i + 2
    local set = '{tessera}:sl:idx:' .. key .. suffix
    redis.call('SADD', set, index)
    redis.call('EXPIREAT', set, until_)
    local v = redis.call('GET', key)
    if v then
      local at = tonumber(string.match(v, '^(%d+)'))
      if judged < 0 or at == nil or judged <= at then revoked = true end
    end
  end
  if revoked then flip(tonumber(index), exp) end
end
return 1
"
    )
}

/// The counter of global indices.
pub(super) const NEXT: &str = "{tessera}:sl:next";

/// The key of list `n`'s bits.
pub(super) fn bits_key(n: u64) -> String {
    format!("{{tessera}}:sl:bits:{n}")
}
