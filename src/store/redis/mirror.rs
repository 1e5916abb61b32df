//! Mirror mode: a replica's own copy of the revocation list, kept current by pub/sub. Every revocation is
//! published as it is written; each replica subscribes, resyncs the whole list whenever it (re)subscribes,
//! and publishes a heartbeat, so it knows how fresh its copy is. A mirror that has heard nothing for longer
//! than `max_staleness` is not trusted, and lookups go to Redis until it has resynced.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;

use super::conn::Conn;
use super::{CHANNEL, INDEX, err};
use crate::clock::now_ms;
use crate::revocation::{StoreError, revoked_at};
use crate::store::memory::RevocationList;

/// A replica's copy of the revocation list, and how fresh it is.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    list: RwLock<RevocationList>,
    /// Subscribed and resynced since the last (re)connection.
    synced: AtomicBool,
    /// When the mirror last heard anything (a revocation or a heartbeat), in Unix milliseconds.
    last_heard_ms: AtomicU64,
    max_staleness_ms: u64,
}

impl Mirror {
    pub(super) fn new(max_staleness: Duration) -> Mirror {
        Mirror { max_staleness_ms: u64::try_from(max_staleness.as_millis()).unwrap_or(u64::MAX), ..Mirror::default() }
    }

    /// Applies one revocation, forgetting what expired by `now` (so the copy stays bounded between resyncs).
    pub(super) fn apply(&self, key: String, revoked_at: u64, expires_at: u64, now: u64) {
        if let Ok(mut list) = self.list.write() {
            list.apply(key, revoked_at, expires_at, now);
        }
    }

    /// Forgets a lifted entry.
    pub(super) fn remove(&self, key: &str) {
        if let Ok(mut list) = self.list.write() {
            list.remove(key);
        }
    }

    pub(super) fn trusted(&self, now_ms: u64) -> bool {
        self.synced.load(Ordering::Acquire)
            && now_ms.saturating_sub(self.last_heard_ms.load(Ordering::Acquire)) <= self.max_staleness_ms
    }

    pub(super) fn lookup(&self, keys: &[String], now: u64) -> Option<Vec<Option<u64>>> {
        Some(self.list.read().ok()?.lookup(keys, now))
    }
}

/// Publishes a heartbeat so every mirror can tell a quiet channel from a dead subscription.
pub(super) async fn heartbeat(conn: Conn, every: Duration, timeout: Duration) {
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
pub(super) async fn follow(
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
        // A lifted entry: `l|<published ms>|<key>` (the key may hold `|`).
        if let Some((ms, key)) = payload.strip_prefix("l|").and_then(|rest| rest.split_once('|')) {
            mirror.remove(key);
            if let Ok(published) = ms.parse::<u64>() {
                let delay = received.saturating_sub(published);
                if let Some(lag) = lag {
                    lag.record(delay, &[]);
                }
            }
            mirror.last_heard_ms.store(received, Ordering::Release);
            continue;
        }
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
