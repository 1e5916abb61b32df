//! One test suite, run against every revocation store: the embedded one, Redis, and Redis Cluster.

use std::time::Duration;

use tessera::ratelimit::{Dimension, Limit, Rate, RateLimits};
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

    admission(store, &keys, now).await;
}

/// The exchange's one store call with rate limits: the lookup is answered either way, limits are all or
/// nothing, and a throttled call spends nothing. The slow rate (one a minute) keeps the store's own clock,
/// whichever it reads, from refilling anything while the test runs.
async fn admission(store: &impl Store, keys: &[String], now: u64) {
    let now_ms = now * 1000;
    let slow = Rate::new(1, 2);
    let limits = RateLimits { client: slow, principal: slow, task: Rate::new(1, 1) };
    let all = limits.limits("rl-client", ("https://i", "rl-sub"), "rl-task");
    assert_eq!(
        all.iter().map(|l| l.dimension).collect::<Vec<_>>(),
        [Dimension::Client, Dimension::Principal, Dimension::Task]
    );
    let spend = |jti: &str| vec![(spent_key("https://i", jti), now + 600)];

    // Without limits it is the plain lookup and spend.
    let plain = store.admit(keys, &spend("adm-0"), &[], now, now_ms).await.unwrap();
    assert_eq!((plain.found.len(), plain.fresh, plain.throttled), (3, vec![true], None));

    let first = store.admit(keys, &spend("adm-1"), &all, now, now_ms).await.unwrap();
    assert_eq!(first.found, vec![Some(now), Some(now - 1), Some(now)], "the lookup rides along");
    assert_eq!((first.fresh, first.throttled), (vec![true], None));

    // The task's burst of one is spent: refused by the task (the third limit), with the minute's wait, and
    // the assertion is not spent; the lookup is still answered.
    let second = store.admit(keys, &spend("adm-2"), &all, now, now_ms).await.unwrap();
    let throttled = second.throttled.expect("the task limit trips");
    assert_eq!(throttled.index, 2);
    assert!((59_000_000..=60_000_000).contains(&throttled.retry_after_us), "{throttled:?}");
    assert!(second.fresh.is_empty());
    assert_eq!(second.found.len(), 3);

    // The refused call moved neither the client nor the principal: each has one left of its burst of two.
    let other_task = limits.limits("rl-client", ("https://i", "rl-sub"), "rl-task-2");
    let third = store.admit(&[], &spend("adm-2"), &other_task, now, now_ms).await.unwrap();
    assert_eq!((third.fresh, third.throttled), (vec![true], None), "the assertion refused for rate is still fresh");
    let fourth = store.admit(&[], &spend("adm-3"), &other_task[..2], now, now_ms).await.unwrap();
    assert_eq!(fourth.throttled.map(|t| t.index), Some(0), "the client's burst is spent");

    // Another client and principal are unaffected.
    let others = limits.limits("rl-other", ("https://i", "rl-other"), "rl-task-3");
    assert_eq!(store.admit(&[], &[], &others, now, now_ms).await.unwrap().throttled, None);

    // Keys of any length and characters.
    let odd = [Limit {
        dimension: Dimension::Task,
        key: "{tessera}:rl:task:a|b c\u{e9}".into(),
        rate: Rate::new(60, 1).unwrap(),
    }];
    assert_eq!(store.admit(&[], &[], &odd, now, now_ms).await.unwrap().throttled, None);
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
    // A bucket expires when it is full again: one a minute with a burst of two, used twice, is full in two
    // minutes (Redis' own clock: within a few seconds of ours).
    let bucket: i64 = redis.cmd(&["EXPIRETIME", "{tessera}:rl:client:rl-client"]).parse().unwrap();
    let now = i64::try_from(now()).unwrap();
    assert!((now + 100..=now + 125).contains(&bucket), "EXPIRETIME {bucket} at {now}");
}

#[tokio::test]
async fn redis_cluster_store() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls().into_iter().map(Into::into).collect();
    let store = RedisStore::connect(&settings(Backend::Cluster(nodes))).unwrap();
    suite(&store).await;
}
