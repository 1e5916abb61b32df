//! The Redis revocation store: shared by every replica, standalone or Cluster.
//!
//! Strict mode asks Redis on every check: one `MGET` per lookup, whatever the token's chain depth (all keys
//! share one hash tag, so in a Cluster they live on one node), and lookups that arrive while one is out share
//! the next (`lookups`); this module. Mirror mode keeps a per-replica
//! copy fed by pub/sub (`mirror`) and asks Redis only while that copy is not trusted. Either way, a Redis
//! that does not answer within the timeout fails the lookup, and the broker fails closed. Connections:
//! `conn`.

mod approvals;
mod conn;
mod lookups;
mod mirror;
mod status;
mod watch;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use conn::Conn;
use mirror::Mirror;

use crate::clock::now_ms;
pub use crate::config::{Backend, MirrorSettings, RedisSettings};
use crate::ratelimit::{Limit, Throttled};
use crate::revocation::{Admission, Entry, Store, StoreError, StoreFuture, revoked_at};
pub use watch::LOG;

/// Revocations are announced here (and heartbeats, so a mirror can measure its own freshness).
pub const CHANNEL: &str = "{tessera}:revocations";
/// A sorted set of live revocation keys scored by expiry, from which a mirror resyncs.
pub const INDEX: &str = "{tessera}:rev-index";

/// Takes or renews a Shared Signals delivery lease (`KEYS[1]`) for holder `ARGV[1]`, for `ARGV[2]` ms.
const LEASE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Forgets an entry (a lifted suspension), unindexes it, and announces it.
const LIFT_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('PUBLISH', ARGV[1], 'l|' .. ARGV[2] .. '|' .. KEYS[1])
return 1
";

/// Records a revocation without ever shortening an existing one, indexes it, and announces it; when it is a
/// revocation of its own (`ARGV[8]`, the target's kind, is set) and in force, appends it to the revocation log
/// (`KEYS[3]`, capped near `ARGV[7]` entries) in the same step, with the values as recorded; and flips the
/// status list bit of every token registered under the key (`ARGV[12]`: `LIST_BITS`; see [`status`]).
const REVOKE_SCRIPT_BODY: &str = r"
local expires_at = tonumber(ARGV[2])
local current = redis.call('EXPIRETIME', KEYS[1])
if current > expires_at then expires_at = current end
local revoked_at = tonumber(ARGV[3])
local old = redis.call('GET', KEYS[1])
if old then
  local old_at = tonumber(string.match(old, '^(%d+)'))
  if old_at and old_at > revoked_at then revoked_at = old_at end
end
redis.call('SET', KEYS[1], revoked_at .. '|' .. ARGV[1], 'EXAT', expires_at)
redis.call('ZADD', KEYS[2], expires_at, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'r|' .. revoked_at .. '|' .. expires_at .. '|' .. ARGV[6] .. '|' .. KEYS[1])
if ARGV[8] ~= '' and expires_at > tonumber(ARGV[4]) then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'kind', ARGV[8], 'value', ARGV[9], 'iss', ARGV[10],
    'cause', ARGV[11], 'revoked_at', revoked_at, 'expires_at', expires_at, 'reason', ARGV[1])
end
local now = tonumber(ARGV[4])
if expires_at > now then
  local function flip_all(set)
    for _, g in ipairs(redis.call('SMEMBERS', set)) do flip(tonumber(g), expires_at) end
  end
  -- Every expiry bucket a live token can be in (status_list::live_buckets); and the set of a version that
  -- did not bucket them.
  local base = '{tessera}:sl:idx:' .. KEYS[1]
  flip_all(base)
  for b = math.floor(now / bucket_seconds), math.floor((now + max_lifetime) / bucket_seconds) do
    flip_all(base .. ':' .. string.format('%d', b))
  end
end
return expires_at
";

fn revoke_script() -> String {
    format!(
        "local bits_per_list = tonumber(ARGV[12])\n{}{}{REVOKE_SCRIPT_BODY}",
        status::buckets_lua(),
        status::FLIP_LUA
    )
}

/// An exchange's one round trip when rate limits are on: the revocation `MGET`, GCRA over each limit (see
/// [`crate::ratelimit`]), and the spend markers, atomically.
///
/// `KEYS`: the revocation keys, then the limit keys, then the spend markers. `ARGV`: their three counts, the
/// broker's `now` (seconds: the spend markers' value), each limit's emission interval and tolerance (µs), and
/// each spend marker's expiry (Unix seconds).
///
/// The clock is Redis' own (`TIME`, µs), not the broker's: every replica's requests meet in one bucket, and
/// with one clock a replica whose clock runs ahead or behind can neither refill a bucket early nor hold it
/// shut. (Scripts replicate their effects, so `TIME` is allowed.)
///
/// Every limit is judged before any is moved on: when one trips, the script returns its 1-based index and
/// how long to wait (µs), and has written nothing, so a throttled request spends no single-use assertion.
/// Each TAT expires when its bucket is full again, so idle buckets take no memory.
const ADMIT_SCRIPT: &str = r"
local nr, nl, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local found = {}
if nr > 0 then found = redis.call('MGET', unpack(KEYS, 1, nr)) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
for i = 1, nl do
  local emission, tolerance = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[nr + i]) or 0) or 0
  if tat < now then tat = now end
  if tat - now > tolerance then
    return {found, {}, i, tat - tolerance - now}
  end
  tats[i] = tat + emission
end
for i = 1, nl do
  local tat = string.format('%.0f', tats[i])
  redis.call('SET', KEYS[nr + i], tat, 'PXAT', string.format('%.0f', math.ceil(tats[i] / 1000)))
end
local fresh = {}
for i = 1, ns do
  local set = redis.call('SET', KEYS[nr + nl + i], ARGV[4], 'NX', 'EXAT', ARGV[4 + 2 * nl + i])
  if set then fresh[i] = 1 else fresh[i] = 0 end
end
return {found, fresh, 0, 0}
";

/// The Redis [`Store`], shared by every replica: strict, or mirrored by pub/sub ([`MirrorSettings`]).
pub struct RedisStore {
    /// The request path's connection: lookups, spends and revocations only.
    conn: Conn,
    /// Everything else: the audit stream, heartbeats, mirror resyncs.
    background: Conn,
    /// Strict lookups on `conn`, coalesced under load.
    lookups: lookups::Lookups,
    timeout: Duration,
    script: redis::Script,
    flip_script: redis::Script,
    lease_script: redis::Script,
    lift_script: redis::Script,
    admit_script: redis::Script,
    mirror: Option<Arc<Mirror>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For the watch streams' readers, each of which opens a connection of its own.
    settings: RedisSettings,
    /// How many events the revocation log keeps (about: `MAXLEN ~`).
    log_max_events: u64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("mirror", &self.mirror.is_some()).finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn err(e: impl fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    /// Connects lazily: the broker starts even when Redis is down, and fails closed until it is back.
    pub fn connect(settings: &RedisSettings) -> Result<RedisStore, String> {
        RedisStore::connect_with_lag_histogram(settings, None)
    }

    /// As [`RedisStore::connect`]; in mirror mode, each message's publish-to-apply delay is recorded in `lag`.
    pub fn connect_with_lag_histogram(
        settings: &RedisSettings,
        lag: Option<opentelemetry::metrics::Histogram<u64>>,
    ) -> Result<RedisStore, String> {
        // Two connections: the request path's carries only lookups, spends and revocations; everything in
        // the background (audit stream, heartbeats, resyncs) has its own, since a multiplexed connection is
        // one ordered pipe and a queued background write would delay a lookup's reply.
        let conn = Conn::open(settings)?;
        let background = Conn::open(settings)?;
        let pubsub_url = match &settings.backend {
            Backend::Standalone(url) => url.clone(),
            Backend::Cluster(nodes) => nodes.first().cloned().ok_or("store.redis_cluster: no nodes")?,
        };
        let mut store = RedisStore {
            lookups: lookups::Lookups::new(conn.clone(), settings.timeout),
            conn,
            background,
            timeout: settings.timeout,
            script: redis::Script::new(&revoke_script()),
            flip_script: redis::Script::new(&status::flip_script()),
            lease_script: redis::Script::new(LEASE_SCRIPT),
            lift_script: redis::Script::new(LIFT_SCRIPT),
            admit_script: redis::Script::new(ADMIT_SCRIPT),
            mirror: None,
            tasks: Vec::new(),
            settings: settings.clone(),
            log_max_events: crate::revocation::watch::DEFAULT_MAX_EVENTS,
        };
        if let Some(m) = settings.mirror {
            let mirror = Arc::new(Mirror::new(m.max_staleness));
            let client = redis::Client::open(pubsub_url.expose()).map_err(|e| e.to_string())?;
            store.tasks.push(tokio::spawn(mirror::follow(
                client,
                store.background.clone(),
                Arc::clone(&mirror),
                settings.timeout,
                lag,
            )));
            store.tasks.push(tokio::spawn(mirror::heartbeat(store.background.clone(), m.heartbeat, settings.timeout)));
            store.mirror = Some(mirror);
        }
        Ok(store)
    }

    /// Keeps about the last `max_events` events in the revocation log (default
    /// [`crate::revocation::watch::DEFAULT_MAX_EVENTS`]).
    pub fn with_log_max_events(mut self, max_events: u64) -> RedisStore {
        self.log_max_events = max_events.max(1);
        self
    }

    /// Mirror mode: whether lookups are currently served from the local copy.
    pub fn mirror_trusted(&self) -> Option<bool> {
        self.mirror.as_ref().map(|m| m.trusted(now_ms()))
    }

    async fn with_timeout<T>(&self, f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(result) => result.map_err(err),
            Err(_) => Err(StoreError(format!("no answer within {:?}", self.timeout))),
        }
    }
}

impl RedisStore {
    async fn revoke_entries(&self, entries: &[Entry], now: u64) -> Result<(), StoreError> {
        let mut handle = self.with_timeout(self.conn.handle()).await?;
        for e in entries {
            let mut inv = self.script.prepare_invoke();
            inv.key(&e.key)
                .key(INDEX)
                .key(LOG)
                .arg(&e.reason)
                .arg(e.expires_at)
                .arg(e.revoked_at)
                .arg(now)
                .arg(CHANNEL)
                .arg(now_ms())
                .arg(self.log_max_events)
                .arg(&e.notice.as_ref().map_or(["", "", "", ""], watch::notice_args)[..])
                .arg(crate::status_list::LIST_BITS);
            self.with_timeout(inv.invoke_async::<u64>(&mut handle)).await?;
        }
        // Apply locally at once, so this replica never lags its own revocations.
        if let Some(mirror) = &self.mirror {
            for e in entries {
                mirror.apply(e.key.clone(), e.revoked_at, e.expires_at, now);
            }
        }
        Ok(())
    }

    /// On the background connection: status list work is never on the request path.
    async fn allocate(&self, count: u64) -> Result<u64, StoreError> {
        let mut handle = self.with_timeout(self.background.handle()).await?;
        let end: u64 =
            self.with_timeout(redis::cmd("INCRBY").arg(status::NEXT).arg(count).query_async(&mut handle)).await?;
        Ok(end.saturating_sub(count))
    }

    async fn register(&self, registrations: &[crate::revocation::StatusRegistration]) -> Result<(), StoreError> {
        if registrations.is_empty() {
            return Ok(());
        }
        let batch = status::batch(registrations);
        let mut handle = self.with_timeout(self.background.handle()).await?;
        let (values,): (Vec<Option<String>>,) = self.with_timeout(batch.pipeline.query_async(&mut handle)).await?;
        if values.len() != batch.keys.len() {
            return Err(StoreError("Redis answered the registration check with the wrong number of values".into()));
        }
        // The tokens a revocation already ends, judged as a lookup judges them.
        let found: Vec<Option<u64>> = values.iter().map(|v| v.as_deref().map(revoked_at)).collect();
        let mut ended = self.flip_script.prepare_invoke();
        ended.key(status::NEXT).arg(crate::status_list::LIST_BITS);
        let mut any = false;
        for token in &batch.tokens {
            if token.keys.iter().any(|(k, iat)| crate::revocation::applies(found.get(*k).copied().flatten(), *iat)) {
                ended.arg(token.index).arg(token.exp);
                any = true;
            }
        }
        if any {
            self.with_timeout(ended.invoke_async::<i64>(&mut handle)).await?;
        }
        Ok(())
    }

    async fn bits(&self, n: u64) -> Result<Vec<u8>, StoreError> {
        let mut handle = self.with_timeout(self.background.handle()).await?;
        let bytes: Option<Vec<u8>> =
            self.with_timeout(redis::cmd("GET").arg(status::bits_key(n)).query_async(&mut handle)).await?;
        Ok(bytes.unwrap_or_default())
    }

    /// Shared Signals delivery state, on the background connection.
    async fn lease(&self, receiver: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut inv = self.lease_script.prepare_invoke();
        inv.key(format!("{{tessera}}:ssf:lease:{receiver}")).arg(holder).arg(ttl_ms.max(1));
        let mut handle = self.with_timeout(self.background.handle()).await?;
        Ok(self.with_timeout(inv.invoke_async::<i64>(&mut handle)).await? == 1)
    }

    async fn delivered(&self, receiver: &str) -> Result<Option<String>, StoreError> {
        let mut handle = self.with_timeout(self.background.handle()).await?;
        let key = format!("{{tessera}}:ssf:cursor:{receiver}");
        self.with_timeout(redis::cmd("GET").arg(key).query_async(&mut handle)).await
    }

    async fn set_delivered(&self, receiver: &str, cursor: &str) -> Result<(), StoreError> {
        let mut handle = self.with_timeout(self.background.handle()).await?;
        let key = format!("{{tessera}}:ssf:cursor:{receiver}");
        self.with_timeout(redis::cmd("SET").arg(key).arg(cursor).query_async::<()>(&mut handle)).await
    }

    async fn lift_entries(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut handle = self.with_timeout(self.conn.handle()).await?;
        for key in keys {
            let mut inv = self.lift_script.prepare_invoke();
            inv.key(key).key(INDEX).arg(CHANNEL).arg(now_ms());
            self.with_timeout(inv.invoke_async::<u64>(&mut handle)).await?;
        }
        if let Some(mirror) = &self.mirror {
            for key in keys {
                mirror.remove(key);
            }
        }
        Ok(())
    }

    async fn lookup_and_spend_strict(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        now: u64,
    ) -> Result<(Vec<Option<u64>>, Vec<bool>), StoreError> {
        if spends.is_empty() {
            return Ok((self.lookup_keys(keys, now).await?, Vec::new()));
        }
        // One pipeline, one round trip: the revocation MGET and a SET NX per spend. (A spend must reach Redis
        // even in mirror mode: being spent is a fact every replica must agree on at once.)
        let mut pipe = redis::pipe();
        if !keys.is_empty() {
            pipe.cmd("MGET").arg(keys);
        }
        for (key, expires_at) in spends {
            pipe.cmd("SET").arg(key).arg(now).arg("NX").arg("EXAT").arg((*expires_at).max(now + 1));
        }
        let mut handle = self.with_timeout(self.conn.handle()).await?;
        let mut replies: Vec<redis::Value> = self.with_timeout(pipe.query_async(&mut handle)).await?;
        let fresh: Vec<bool> =
            replies.split_off(usize::from(!keys.is_empty())).iter().map(|v| !matches!(v, redis::Value::Nil)).collect();
        let found = match replies.pop() {
            Some(values) => redis::from_redis_value::<Vec<Option<String>>>(values)
                .map_err(err)?
                .iter()
                .map(|v| v.as_deref().map(revoked_at))
                .collect(),
            None => Vec::new(),
        };
        Ok((found, fresh))
    }

    /// With rate limits: one `EVALSHA` of [`ADMIT_SCRIPT`], in mirror mode too (a bucket is shared state every
    /// replica must agree on at once). Without: exactly [`RedisStore::lookup_and_spend_strict`].
    async fn admit_strict(
        &self,
        keys: &[String],
        spends: &[(String, u64)],
        limits: &[Limit],
        now: u64,
    ) -> Result<Admission, StoreError> {
        if limits.is_empty() {
            let (found, fresh) = self.lookup_and_spend_strict(keys, spends, now).await?;
            return Ok(Admission { found, fresh, throttled: None });
        }
        let mut inv = self.admit_script.prepare_invoke();
        for key in keys {
            inv.key(key);
        }
        for limit in limits {
            inv.key(&limit.key);
        }
        for (key, _) in spends {
            inv.key(key);
        }
        inv.arg(keys.len()).arg(limits.len()).arg(spends.len()).arg(now);
        for limit in limits {
            inv.arg(limit.rate.emission_us).arg(limit.rate.tolerance_us);
        }
        for (_, expires_at) in spends {
            inv.arg((*expires_at).max(now + 1));
        }
        let mut handle = self.with_timeout(self.conn.handle()).await?;
        let (values, fresh, tripped, retry_after_us): (Vec<Option<String>>, Vec<i64>, i64, i64) =
            self.with_timeout(inv.invoke_async(&mut handle)).await?;
        if values.len() != keys.len() {
            return Err(StoreError(format!("the admission script answered {} of {} keys", values.len(), keys.len())));
        }
        let throttled = match usize::try_from(tripped) {
            Ok(0) => None,
            Ok(i) if i <= limits.len() => {
                Some(Throttled { index: i - 1, retry_after_us: u64::try_from(retry_after_us).unwrap_or(0).max(1) })
            }
            _ => return Err(StoreError(format!("the admission script named limit {tripped}"))),
        };
        if throttled.is_none() && fresh.len() != spends.len() {
            return Err(StoreError("the admission script answered the wrong number of spends".into()));
        }
        let found = values.iter().map(|v| v.as_deref().map(revoked_at)).collect();
        Ok(Admission { found, fresh: fresh.iter().map(|f| *f == 1).collect(), throttled })
    }

    async fn lookup_keys(&self, keys: &[String], now: u64) -> Result<Vec<Option<u64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(mirror) = &self.mirror
            && mirror.trusted(now_ms())
            && let Some(found) = mirror.lookup(keys, now)
        {
            return Ok(found);
        }
        self.lookups.lookup(keys).await
    }
}

impl Store for RedisStore {
    fn revoke<'a>(&'a self, entries: &'a [Entry], now: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.revoke_entries(entries, now))
    }

    fn lookup<'a>(&'a self, keys: &'a [String], now: u64) -> StoreFuture<'a, Vec<Option<u64>>> {
        Box::pin(self.lookup_keys(keys, now))
    }

    fn lookup_and_spend<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        now: u64,
    ) -> StoreFuture<'a, (Vec<Option<u64>>, Vec<bool>)> {
        Box::pin(self.lookup_and_spend_strict(keys, spends, now))
    }

    fn admit<'a>(
        &'a self,
        keys: &'a [String],
        spends: &'a [(String, u64)],
        limits: &'a [Limit],
        now: u64,
        _now_ms: u64,
    ) -> StoreFuture<'a, Admission> {
        Box::pin(self.admit_strict(keys, spends, limits, now))
    }

    fn lift<'a>(&'a self, keys: &'a [String], _now: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.lift_entries(keys))
    }

    fn mirror_trusted(&self) -> Option<bool> {
        RedisStore::mirror_trusted(self)
    }

    fn watch_reader(&self) -> Option<Box<dyn crate::revocation::watch::Reader>> {
        Some(Box::new(watch::StreamReader::new(self.settings.clone())))
    }

    fn allocate_status(&self, count: u64) -> StoreFuture<'_, u64> {
        Box::pin(self.allocate(count))
    }

    fn register_status<'a>(
        &'a self,
        registrations: &'a [crate::revocation::StatusRegistration],
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.register(registrations))
    }

    fn status_bits(&self, n: u64) -> StoreFuture<'_, Vec<u8>> {
        Box::pin(self.bits(n))
    }

    fn ssf_lease<'a>(&'a self, receiver: &'a str, holder: &'a str, ttl_ms: u64) -> StoreFuture<'a, bool> {
        Box::pin(self.lease(receiver, holder, ttl_ms))
    }

    fn ssf_cursor<'a>(&'a self, receiver: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(self.delivered(receiver))
    }

    fn ssf_set_cursor<'a>(&'a self, receiver: &'a str, cursor: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.set_delivered(receiver, cursor))
    }
}
