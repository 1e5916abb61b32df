//! `[store]`: where revocations live — the embedded store, or Redis (standalone or Cluster, strict or
//! mirrored).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use crate::secret::SecretUrl;

/// How long one store operation may take, by default, before the broker fails closed.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 500;
/// The longest `timeout_ms` accepted.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a mirror may hear nothing before it stops trusting itself, by default.
pub const DEFAULT_MIRROR_MAX_STALENESS_MS: u64 = 2_000;
/// How often each mirror publishes a heartbeat, by default.
pub const DEFAULT_MIRROR_HEARTBEAT_MS: u64 = 500;

/// `[store]` as read; see docs/config.md `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreBuilder {
    /// `redis://[user:password@]host:port[/db]`; absent (and no cluster): the embedded in-memory store.
    pub redis_url: Option<SecretUrl>,
    /// Redis Cluster seed nodes, instead of `redis_url`.
    pub redis_cluster: Vec<SecretUrl>,
    /// How checks reach Redis: `"strict"` (default) or `"mirror"` (needs Redis).
    pub mode: Option<StoreMode>,
    /// The longest wait for Redis on each call, in milliseconds (default 500, 1 to 10000).
    pub timeout_ms: Option<u64>,
    /// Mirror mode: how long a mirror may hear nothing before it stops answering from its copy, in
    /// milliseconds (default 2000, at least twice `mirror_heartbeat_ms`).
    pub mirror_max_staleness_ms: Option<u64>,
    /// Mirror mode: how often each replica publishes a heartbeat, in milliseconds (default 500).
    pub mirror_heartbeat_ms: Option<u64>,
}

/// How revocation checks reach Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    /// Every check asks Redis.
    #[default]
    Strict,
    /// Checks read a local copy kept current by pub/sub, with bounded, measured staleness.
    Mirror,
}

/// Where Redis is.
#[derive(Clone)]
pub enum Backend {
    /// One Redis server (`store.redis_url`).
    Standalone(SecretUrl),
    /// Redis Cluster seed nodes (`store.redis_cluster`); the others are discovered. In mirror mode the first
    /// one carries the subscription.
    Cluster(Vec<SecretUrl>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password.
        match self {
            Backend::Standalone(_) => f.write_str("Standalone([redacted])"),
            Backend::Cluster(nodes) => write!(f, "Cluster({} nodes, [redacted])", nodes.len()),
        }
    }
}

/// Mirror mode's bounds on how stale a replica's copy of the revocation list may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorSettings {
    /// Hearing nothing for this long, the copy is no longer trusted and checks go to Redis.
    pub max_staleness: Duration,
    /// How often this replica publishes a heartbeat; at most half of `max_staleness`.
    pub heartbeat: Duration,
}

/// The validated `[store]` section when Redis is configured.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Where Redis is.
    pub backend: Backend,
    /// Upper bound on one store operation; past it the broker answers UNAVAILABLE.
    pub timeout: Duration,
    /// `Some`: mirror mode; `None`: strict, every check asks Redis.
    pub mirror: Option<MirrorSettings>,
}

impl StoreBuilder {
    /// The Redis settings, or `None` for the embedded store.
    pub(super) fn build(self, problems: &mut Problems) -> Option<RedisSettings> {
        build_store(self, problems)
    }
}

fn build_store(b: StoreBuilder, problems: &mut Problems) -> Option<RedisSettings> {
    let redis_scheme = |url: &SecretUrl| url.expose().starts_with("redis://") || url.expose().starts_with("rediss://");
    let backend = match (b.redis_url, b.redis_cluster.is_empty()) {
        (None, true) => {
            if b.mode == Some(StoreMode::Mirror) {
                problems.push("store.mode = \"mirror\" needs Redis (store.redis_url or store.redis_cluster)".into());
            }
            return None;
        }
        (Some(_), false) => {
            problems.push("store: set either `redis_url` or `redis_cluster`, not both".into());
            return None;
        }
        (Some(url), true) => {
            if !redis_scheme(&url) {
                problems.push("store.redis_url: must be a redis:// URL".into());
            }
            Backend::Standalone(url)
        }
        (None, false) => {
            if !b.redis_cluster.iter().all(redis_scheme) {
                problems.push("store.redis_cluster: every node must be a redis:// URL".into());
            }
            Backend::Cluster(b.redis_cluster)
        }
    };
    let timeout = Duration::from_millis(b.timeout_ms.unwrap_or(DEFAULT_STORE_TIMEOUT_MS));
    if timeout.is_zero() || timeout > MAX_STORE_TIMEOUT {
        problems.push("store.timeout_ms: must be between 1 and 10000".into());
    }
    let mirror = (b.mode.unwrap_or_default() == StoreMode::Mirror).then(|| MirrorSettings {
        max_staleness: Duration::from_millis(b.mirror_max_staleness_ms.unwrap_or(DEFAULT_MIRROR_MAX_STALENESS_MS)),
        heartbeat: Duration::from_millis(b.mirror_heartbeat_ms.unwrap_or(DEFAULT_MIRROR_HEARTBEAT_MS)),
    });
    if let Some(m) = mirror
        && (m.heartbeat.is_zero() || m.max_staleness < m.heartbeat * 2)
    {
        problems.push("store: mirror_max_staleness_ms must be at least twice mirror_heartbeat_ms (> 0)".into());
    }
    Some(RedisSettings { backend, timeout, mirror })
}
