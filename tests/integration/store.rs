//! One test suite, run against every revocation store: the embedded one, Redis, and Redis Cluster.

use std::time::Duration;

use tessera::revocation::{Entry, Store, Target, spent_key};
use tessera::store::memory::MemoryStore;
use tessera::store::redis::{Backend, RedisSettings, RedisStore};

use crate::support::now;
use crate::support::redis::{RedisCluster, RedisServer};

fn entry(target: &Target, revoked_at: u64, expires_at: u64) -> Entry {
    Entry { key: target.key(), revoked_at, expires_at, reason: "test".into() }
}

async fn suite(store: &impl Store) {
    let now = now();
    let (a, b, c) = (
        Target::Jti("a".into()),
        Target::Task("b".into()),
        Target::Subject { iss: "https://i".into(), sub: "s|t".into() },
    );
    let keys = [a.key(), b.key(), c.key()];

    // Nothing is revoked yet.
    assert_eq!(store.lookup(&keys, now).await.unwrap(), vec![None, None, None]);

    // A revocation is found, in the position asked, with its time.
    store.revoke(&[entry(&b, now - 5, now + 600)], now).await.unwrap();
    assert_eq!(store.lookup(&keys, now).await.unwrap(), vec![None, Some(now - 5), None]);

    // Idempotent, and a later revocation of the same target moves its time forward, never back.
    store.revoke(&[entry(&b, now - 5, now + 600)], now).await.unwrap();
    store.revoke(&[entry(&b, now - 1, now + 600)], now).await.unwrap();
    store.revoke(&[entry(&b, now - 9, now + 60)], now).await.unwrap();
    assert_eq!(store.lookup(&[b.key()], now).await.unwrap(), vec![Some(now - 1)]);

    // Several at once.
    store.revoke(&[entry(&a, now, now + 600), entry(&c, now, now + 600)], now).await.unwrap();
    assert_eq!(store.lookup(&keys, now).await.unwrap(), vec![Some(now), Some(now - 1), Some(now)]);

    // An entry whose tokens have all expired is forgotten.
    let gone = Target::Client("gone".into());
    store.revoke(&[entry(&gone, now - 100, now - 1)], now).await.unwrap();
    assert_eq!(store.lookup(&[gone.key()], now).await.unwrap(), vec![None]);

    // An empty lookup is fine.
    assert!(store.lookup(&[], now).await.unwrap().is_empty());

    // A lifted entry (a suspension) is forgotten; the others stay.
    let suspension = Target::Task("suspension|with a bar".into());
    store.revoke(&[entry(&suspension, now, now + 600)], now).await.unwrap();
    store.lift(&[suspension.key()], now).await.unwrap();
    assert_eq!(store.lookup(&[suspension.key(), keys[1].clone()], now).await.unwrap(), vec![None, Some(now - 1)]);

    // A single-use assertion is spent once; the lookup rides along in the same call.
    let spend = vec![(spent_key("https://i", "jti-1"), now + 600)];
    let (found, fresh) = store.lookup_and_spend(&keys, &spend, now).await.unwrap();
    assert_eq!((found.len(), fresh), (3, vec![true]));
    let (found, fresh) = store.lookup_and_spend(&keys, &spend, now).await.unwrap();
    assert_eq!((found, fresh), (vec![Some(now), Some(now - 1), Some(now)], vec![false]));
    let two = vec![(spent_key("https://i", "jti-1"), now + 600), (spent_key("https://i", "jti-2"), now + 600)];
    assert_eq!(store.lookup_and_spend(&[], &two, now).await.unwrap(), (vec![], vec![false, true]));
}

#[tokio::test]
async fn memory_store() {
    suite(&MemoryStore::new()).await;
}

fn settings(backend: Backend) -> RedisSettings {
    RedisSettings { backend, timeout: Duration::from_millis(500), mirror: None }
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&settings(Backend::Standalone(redis.url().into()))).unwrap();
    suite(&store).await;
    // Keys expire with the tokens they concern: the list never grows without bound.
    let key = Target::Task("b".into()).key();
    let expires: u64 = redis.cmd(&["EXPIRETIME", &key]).parse().unwrap();
    assert!(expires > now() && expires <= now() + 600, "EXPIRETIME {expires}");
}

#[tokio::test]
async fn redis_cluster_store() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls().into_iter().map(Into::into).collect();
    let store = RedisStore::connect(&settings(Backend::Cluster(nodes))).unwrap();
    suite(&store).await;
}
