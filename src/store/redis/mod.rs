//! The Redis revocation store: shared by every replica, standalone or Cluster.
//!
//! Strict mode asks Redis on every check: one `MGET` per lookup, whatever the token's chain depth (all keys
//! share one hash tag, so in a Cluster they live on one node). Mirror mode keeps a per-replica copy of the
//! list fed by pub/sub: every revocation is published as it is written; each replica subscribes, resyncs
//! the whole list whenever it (re)subscribes, and publishes a heartbeat, so it knows how fresh its copy is.
//! A mirror that has heard nothing for longer than `max_staleness` is not trusted: lookups go to Redis
//! until it has resynced. Either way, a Redis that does not answer within the timeout fails the lookup,
//! and the broker fails closed.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::clock::now_ms;
pub use crate::config::{Backend, MirrorSettings, RedisSettings};
use crate::revocation::{Entry, Store, StoreError, StoreFuture, revoked_at};
use crate::store::memory::RevocationList;

/// Revocations are announced here (and heartbeats, so a mirror can measure its own freshness).
pub const CHANNEL: &str = "{tessera}:revocations";
/// A sorted set of live revocation keys scored by expiry, from which a mirror resyncs.
pub const INDEX: &str = "{tessera}:rev-index";

/// Records a revocation without ever shortening an existing one, indexes it, and announces it.
const REVOKE_SCRIPT: &str = r"
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
return expires_at
";

/// A lazily connecting connection to the configured Redis, standalone or Cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    /// Connected on first use, so the broker starts while the cluster is still forming.
    Cluster(Arc<(tokio::sync::OnceCell<ClusterConnection>, ClusterClient)>),
}

/// The connection to use for one operation: a cheap clone, so no lock is held across the request.
pub(crate) enum Handle {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One `match` for both kinds of connection; every command, pipeline and script then runs on a `Handle`.
impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Handle::Standalone(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Handle::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Standalone(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// A lazily connecting connection to the configured Redis.
    pub(crate) fn open(settings: &RedisSettings) -> Result<Conn, String> {
        match &settings.backend {
            Backend::Standalone(url) => {
                let client = redis::Client::open(url.expose()).map_err(|e| format!("store.redis_url: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.timeout))
                    .set_response_timeout(Some(settings.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
                Ok(Conn::Standalone(manager))
            }
            Backend::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(|n| n.expose().to_string()))
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| format!("store.redis_cluster: {e}"))?;
                Ok(Conn::Cluster(Arc::new((tokio::sync::OnceCell::new(), client))))
            }
        }
    }

    pub(crate) async fn handle(&self) -> redis::RedisResult<Handle> {
        match self {
            Conn::Standalone(c) => Ok(Handle::Standalone(c.clone())),
            Conn::Cluster(cluster) => {
                let (cell, client) = &**cluster;
                let c = cell.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Handle::Cluster(c.clone()))
            }
        }
    }
}

/// A replica's copy of the revocation list, and how fresh it is.
#[derive(Debug, Default)]
struct Mirror {
    list: RwLock<RevocationList>,
    /// Subscribed and resynced since the last (re)connection.
    synced: AtomicBool,
    /// When the mirror last heard anything (a revocation or a heartbeat), in Unix milliseconds.
    last_heard_ms: AtomicU64,
    max_staleness_ms: u64,
}

impl Mirror {
    /// Applies one revocation, forgetting what expired by `now` (so the copy stays bounded between resyncs).
    fn apply(&self, key: String, revoked_at: u64, expires_at: u64, now: u64) {
        if let Ok(mut list) = self.list.write() {
            list.apply(key, revoked_at, expires_at, now);
        }
    }

    fn trusted(&self, now_ms: u64) -> bool {
        self.synced.load(Ordering::Acquire)
            && now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Acquire)) <= self.max_staleness_ms
    }

    fn lookup(&self, keys: &[String], now: u64) -> Option<Vec<Option<u64>>> {
        Some(self.list.read().ok()?.lookup(keys, now))
    }
}

pub struct RedisStore {
    /// The request path's connection: lookups, spends and revocations only.
    conn: Conn,
    /// Everything else: the audit stream, heartbeats, mirror resyncs.
    background: Conn,
    timeout: Duration,
    script: redis::Script,
    mirror: Option<Arc<Mirror>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
            conn,
            background,
            timeout: settings.timeout,
            script: redis::Script::new(REVOKE_SCRIPT),
            mirror: None,
            tasks: Vec::new(),
        };
        if let Some(m) = settings.mirror {
            let mirror = Arc::new(Mirror { max_staleness_ms: m.max_staleness.as_millis() as u64, ..Mirror::default() });
            let client = redis::Client::open(pubsub_url.expose()).map_err(|e| e.to_string())?;
            store.tasks.push(tokio::spawn(follow(
                client,
                store.background.clone(),
                Arc::clone(&mirror),
                settings.timeout,
                lag,
            )));
            store.tasks.push(tokio::spawn(heartbeat(store.background.clone(), m.heartbeat, settings.timeout)));
            store.mirror = Some(mirror);
        }
        Ok(store)
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
                .arg(&e.reason)
                .arg(e.expires_at)
                .arg(e.revoked_at)
                .arg(now)
                .arg(CHANNEL)
                .arg(now_ms());
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
        let mut handle = self.with_timeout(self.conn.handle()).await?;
        let values: Vec<Option<String>> =
            self.with_timeout(redis::cmd("MGET").arg(keys).query_async(&mut handle)).await?;
        Ok(values.iter().map(|v| v.as_deref().map(revoked_at)).collect())
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

    fn mirror_trusted(&self) -> Option<bool> {
        RedisStore::mirror_trusted(self)
    }
}

/// Publishes a heartbeat so every mirror can tell a quiet channel from a dead subscription.
async fn heartbeat(conn: Conn, every: Duration, timeout: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let publish = async {
            let mut handle = conn.handle().await?;
            redis::cmd("PUBLISH").arg(CHANNEL).arg(format!("h|{}", now_ms())).query_async::<i64>(&mut handle).await
        };
        let _ = tokio::time::timeout(timeout, publish).await;
    }
}

/// Keeps a mirror current: subscribe, resync, apply messages; on any failure, mark it untrusted and start
/// over after a short pause.
async fn follow(
    client: redis::Client,
    conn: Conn,
    mirror: Arc<Mirror>,
    timeout: Duration,
    lag: Option<opentelemetry::metrics::Histogram<u64>>,
) {
    // Retries back off to 5 s; the warning is logged once per outage, not once per retry.
    let mut pause = Duration::from_millis(100);
    let mut warned = false;
    loop {
        mirror.synced.store(false, Ordering::Release);
        let heard_before = mirror.last_heard_ms.load(Ordering::Acquire);
        if let Err(error) = follow_once(&client, &conn, &mirror, timeout, lag.as_ref()).await
            && !warned
        {
            tracing::warn!(%error, "revocation mirror lost its subscription; lookups go to Redis until it resyncs");
            warned = true;
        }
        mirror.synced.store(false, Ordering::Release);
        if mirror.last_heard_ms.load(Ordering::Acquire) != heard_before {
            // It had synced and heard something: a fresh outage.
            pause = Duration::from_millis(100);
            warned = false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(
    client: &redis::Client,
    conn: &Conn,
    mirror: &Mirror,
    timeout: Duration,
    lag: Option<&opentelemetry::metrics::Histogram<u64>>,
) -> Result<(), StoreError> {
    let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub()).await.map_err(err)?.map_err(err)?;
    tokio::time::timeout(timeout, pubsub.subscribe(CHANNEL)).await.map_err(err)?.map_err(err)?;
    // Subscribed first, then resynced: nothing revoked in between is missed (applying twice is harmless).
    resync(conn, mirror, timeout).await?;
    mirror.last_heard_ms.store(now_ms(), Ordering::Release);
    mirror.synced.store(true, Ordering::Release);
    tracing::info!("revocation mirror synced");
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let received = now_ms();
        let Ok(payload) = msg.get_payload::<String>() else { continue };
        let mut parts = payload.splitn(5, '|');
        let published = match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("r"), Some(at), Some(exp), Some(ms), Some(key)) => {
                // A revocation announced with values that do not parse still revokes (fail closed); the next
                // resync replaces it with what Redis holds.
                let at = at.parse().unwrap_or(u64::MAX);
                let exp = exp.parse().unwrap_or(u64::MAX);
                mirror.apply(key.to_string(), at, exp, received / 1000);
                ms.parse::<u64>().ok()
            }
            (Some("h"), Some(ms), ..) => ms.parse::<u64>().ok(),
            _ => None,
        };
        if let Some(published) = published {
            let delay = received.saturating_sub(published);
            if let Some(lag) = lag {
                lag.record(delay, &[]);
            }
        }
        mirror.last_heard_ms.store(received, Ordering::Release);
    }
    Err(StoreError("subscription closed".into()))
}

async fn resync(conn: &Conn, mirror: &Mirror, timeout: Duration) -> Result<(), StoreError> {
    let work = async {
        let mut handle = conn.handle().await?;
        let now = now_ms() / 1000;
        // The index scores each live key by its expiry: keys and expiries in one call, values in MGETs.
        let live: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(INDEX)
            .arg(now)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("WITHSCORES")
            .query_async(&mut handle)
            .await?;
        let mut fresh = RevocationList::default();
        for chunk in live.chunks(1000) {
            let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut handle).await?;
            for ((key, expires_at), value) in chunk.iter().zip(values) {
                if let Some(value) = value.as_deref() {
                    fresh.apply(key.clone(), revoked_at(value), *expires_at as u64, now);
                }
            }
        }
        redis::RedisResult::Ok(fresh)
    };
    let fresh = tokio::time::timeout(timeout * 4, work).await.map_err(err)?.map_err(err)?;
    if let Ok(mut list) = mirror.list.write() {
        *list = fresh;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_forgets_expired_revocations_between_resyncs() {
        // A compressed clock: a week of one revocation per second, each affecting tokens for five minutes.
        let mirror = Mirror { max_staleness_ms: 1_000, ..Mirror::default() };
        let start = 1_800_000_000;
        let mut most = 0;
        for second in 0..(7 * 86_400u64) {
            let now = start + second;
            mirror.apply(format!("{{tessera}}:rev:jti:{second}"), now, now + 300, now);
            most = most.max(mirror.list.read().map_or(0, |l| l.len()));
        }
        assert!(most <= 301, "the mirror grew to {most} entries");
        assert_eq!(
            mirror.lookup(&[format!("{{tessera}}:rev:jti:{}", 7 * 86_400 - 1)], start + 7 * 86_400),
            Some(vec![Some(start + 7 * 86_400 - 1)])
        );
    }
}
