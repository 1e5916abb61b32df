//! One test suite, run against every revocation store: the embedded one, Redis, and Redis Cluster.

use std::time::Duration;

use tessera::ratelimit::{Dimension, Limit, Rate, RateLimits};
use tessera::revocation::watch::{Cause, Event, Notice, WatchError};
use tessera::revocation::{Entry, StatusRegistration, Store, Target, spent_key};
use tessera::status_list::{BUCKET_SECONDS, LIST_BITS, bucket};
use tessera::store::memory::MemoryStore;
use tessera::store::redis::{Backend, RedisSettings, RedisStore};

use crate::support::now;
use crate::support::redis::{RedisCluster, RedisServer};

fn entry(target: &Target, revoked_at: u64, expires_at: u64) -> Entry {
    Entry { key: target.key(), revoked_at, expires_at, reason: "test".into(), notice: None }
}

/// A revocation that is announced on the revocation log, as `Revoke` records it.
fn announced(target: &Target, revoked_at: u64, expires_at: u64, reason: &str) -> Entry {
    let notice = Some(Notice { target: target.clone(), cause: Cause::Revoke });
    Entry { key: target.key(), revoked_at, expires_at, reason: reason.into(), notice }
}

fn targets(events: &[Event]) -> Vec<Target> {
    events.iter().map(|e| e.target.clone()).collect()
}

/// The revocation log, on a store that keeps about 10 events: every announced revocation in order, each
/// once from any cursor handed out, a waiting reader woken by the next one, and a cursor whose successors
/// were trimmed refused rather than skipped.
async fn watch_suite(store: &impl Store) {
    let now = now();
    let zero = Duration::ZERO;
    let mut reader = store.watch_reader().expect("the store keeps a revocation log");
    let start = reader.read("", 100, zero).await.unwrap();
    assert!(start.events.is_empty(), "an empty cursor starts at the end: {start:?}");

    let (a, b, c) = (
        Target::Jti("w-a".into()),
        Target::Subject { iss: "https://i".into(), sub: "w|b".into() },
        Target::Client("w-c".into()),
    );
    store.revoke(&[announced(&a, now, now + 600, "leaked")], now).await.unwrap();
    // A suspension's marker announces nothing, and neither does a revocation already over.
    store.revoke(&[entry(&Target::Task("silent".into()), now, now + 600)], now).await.unwrap();
    store.revoke(&[announced(&Target::Task("over".into()), now - 10, now - 1, "old")], now).await.unwrap();
    store
        .revoke(&[announced(&b, now - 3, now + 600, "disabled"), announced(&c, now, now + 900, "")], now)
        .await
        .unwrap();

    let all = reader.read(&start.cursor, 100, zero).await.unwrap();
    assert_eq!(targets(&all.events), [a.clone(), b.clone(), c.clone()]);
    assert_eq!(
        (all.events[1].revoked_at, all.events[1].expires_at, all.events[1].reason.as_str(), all.events[1].cause),
        (now - 3, now + 600, "disabled", Cause::Revoke)
    );
    assert_eq!(all.cursor, all.events[2].cursor);

    // Resuming after any event gives exactly the ones after it; `max` bounds a read.
    let one = reader.read(&start.cursor, 1, zero).await.unwrap();
    assert_eq!((targets(&one.events), one.cursor.clone()), (vec![a.clone()], all.events[0].cursor.clone()));
    let rest = reader.read(&one.cursor, 100, zero).await.unwrap();
    assert_eq!(targets(&rest.events), [b.clone(), c.clone()]);
    let none = reader.read(&all.cursor, 100, zero).await.unwrap();
    assert_eq!((none.events.len(), none.cursor.as_str()), (0, all.cursor.as_str()));

    // A revocation of a target already revoked is announced again, with the time as recorded (never back).
    store.revoke(&[announced(&b, now - 9, now + 60, "again")], now).await.unwrap();
    let again = reader.read(&all.cursor, 100, zero).await.unwrap();
    assert_eq!(targets(&again.events), [b]);
    assert_eq!((again.events[0].revoked_at, again.events[0].expires_at), (now - 3, now + 600));

    // A reader waiting at the end wakes for the next revocation (a second reader: each has its own).
    let mut waiting = store.watch_reader().unwrap();
    let from = again.cursor.clone();
    let read = tokio::spawn(async move {
        let mut cursor = from;
        loop {
            let batch = waiting.read(&cursor, 100, Duration::from_secs(30)).await.unwrap();
            cursor = batch.cursor;
            if !batch.events.is_empty() {
                return batch.events;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = Target::Task("w-late".into());
    store.revoke(&[announced(&late, now, now + 600, "")], now).await.unwrap();
    assert_eq!(targets(&read.await.unwrap()), [late]);

    // Hundreds more: the log keeps only about the last ten, and the start's cursor (whose successors are
    // gone) is refused, never answered with a gap; a recent cursor still reads on exactly.
    for i in 0..300 {
        store.revoke(&[announced(&Target::Jti(format!("w-{i}")), now, now + 600, "")], now).await.unwrap();
    }
    assert!(matches!(reader.read(&start.cursor, 100, zero).await, Err(WatchError::CursorExpired)));
    let recent = reader.read("", 100, zero).await.unwrap();
    store.revoke(&[announced(&Target::Jti("w-last".into()), now, now + 600, "")], now).await.unwrap();
    let last = reader.read(&recent.cursor, 100, zero).await.unwrap();
    assert_eq!(targets(&last.events), [Target::Jti("w-last".into())]);
    // A cursor the log never handed out (ahead of it) is refused too.
    assert!(matches!(reader.read("99999999999999-0", 100, zero).await, Err(WatchError::CursorExpired)));
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

/// The keys of the `i`th of many lookups: one to six tasks of fifty, in an order of its own.
fn many_keys(i: usize) -> Vec<String> {
    (0..1 + i % 6).map(|j| Target::Task(format!("many-{}", (i * 7 + j * 11) % 50)).key()).collect()
}

/// Two hundred lookups at once, as a loaded replica makes them: each is answered for its own keys, in its
/// own order, whatever ran beside it (every third task is revoked).
async fn concurrent_suite(store: &impl Store) {
    let now = now();
    let revoked: Vec<Entry> =
        (0..50).step_by(3).map(|i| entry(&Target::Task(format!("many-{i}")), now - 1, now + 600)).collect();
    store.revoke(&revoked, now).await.unwrap();
    let lookups: Vec<Vec<String>> = (0..200).map(many_keys).collect();
    let answers = futures_util::future::join_all(lookups.iter().map(|keys| store.lookup(keys, now))).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let expected: Vec<Option<u64>> =
            (0..1 + i % 6).map(|j| ((i * 7 + j * 11) % 50 % 3 == 0).then_some(now - 1)).collect();
        assert_eq!(answer.unwrap(), expected, "lookup {i}");
    }
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

/// Whether bit `g` of its list is set, as the store holds the list.
async fn flipped(store: &impl Store, g: u64) -> bool {
    let bytes = store.status_bits(g / LIST_BITS).await.unwrap();
    let bit = g % LIST_BITS;
    bytes.get(usize::try_from(bit / 8).unwrap()).is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// Status lists: blocks of indices never overlap; a revocation flips the tokens registered under its key, a
/// registration after a revocation that ends it flips at once, and a subject or client revocation spares
/// tokens issued after it.
async fn status_suite(store: &impl Store) {
    let now = now();
    let (a, b) = (store.allocate_status(1024).await.unwrap(), store.allocate_status(1024).await.unwrap());
    assert!(a + 1024 <= b || b + 1024 <= a, "blocks {a} and {b} overlap");
    let (parent, child, other) = (Target::Jti("sl-p".into()), Target::Jti("sl-c".into()), Target::Jti("sl-o".into()));
    let subject = Target::Subject { iss: "https://i".into(), sub: "sl-s".into() };
    let reg = |g: u64, keys: &[(&Target, Option<u64>)]| StatusRegistration {
        index: g,
        exp: now + 600,
        keys: keys.iter().map(|(t, _)| t.key()).collect(),
        issued_at: keys.iter().map(|(_, iat)| *iat).collect(),
    };
    // A parent, its child (registered under both jtis), an unrelated token, one in the next list.
    let (g_parent, g_child, g_other, g_far) = (a, a + 1, a + 2, a + LIST_BITS + 5);
    store
        .register_status(&[
            reg(g_parent, &[(&parent, None), (&subject, Some(now))]),
            reg(g_child, &[(&child, None), (&parent, None)]),
            reg(g_other, &[(&other, None)]),
            reg(g_far, &[(&child, None), (&parent, None)]),
        ])
        .await
        .unwrap();
    for g in [g_parent, g_child, g_other, g_far] {
        assert!(!flipped(store, g).await, "{g} is valid before any revocation");
    }
    store.revoke(&[entry(&parent, now, now + 600)], now).await.unwrap();
    assert!(flipped(store, g_parent).await && flipped(store, g_child).await && flipped(store, g_far).await);
    assert!(!flipped(store, g_other).await, "an unrelated token stays valid");
    // Registered after its revocation: flipped by the registration itself.
    let late = a + 3;
    store.register_status(&[reg(late, &[(&other, None), (&parent, None)])]).await.unwrap();
    assert!(flipped(store, late).await);
    // A subject revoked before a token was issued does not end it.
    store.revoke(&[entry(&subject, now - 5, now + 600)], now).await.unwrap();
    let after = a + 4;
    store.register_status(&[reg(after, &[(&subject, Some(now))])]).await.unwrap();
    assert!(!flipped(store, after).await, "issued after the subject's revocation");
    // One batch, one shared key, judged per token: the one issued before the revocation ends, the other not.
    let (before, since) = (a + 5, a + 6);
    store
        .register_status(&[reg(before, &[(&subject, Some(now - 10))]), reg(since, &[(&subject, Some(now))])])
        .await
        .unwrap();
    assert!(flipped(store, before).await, "issued before the subject's revocation");
    assert!(!flipped(store, since).await, "issued after it, in the same batch");
    // Both are under the subject's key now: a later revocation of the subject ends them both.
    store.revoke(&[entry(&subject, now + 1, now + 600)], now + 1).await.unwrap();
    assert!(flipped(store, since).await && flipped(store, after).await);
    // A key's tokens in different expiry buckets — one expiring soon, one hours later — are all flipped.
    let task = Target::Task("sl-buckets".into());
    let (soon, later) = (a + 7, a + 8);
    let in_bucket =
        |g: u64, exp: u64| StatusRegistration { index: g, exp, keys: vec![task.key()], issued_at: vec![None] };
    let hours = now + 5 * 3600;
    assert_ne!(bucket(now + 60), bucket(hours));
    store.register_status(&[in_bucket(soon, now + 60), in_bucket(later, hours)]).await.unwrap();
    store.revoke(&[entry(&task, now, hours)], now).await.unwrap();
    assert!(flipped(store, soon).await && flipped(store, later).await, "both buckets are flipped");
    // A list nothing was flipped in reads as all valid.
    assert!(store.status_bits(a / LIST_BITS + 7).await.unwrap().iter().all(|b| *b == 0));
}

#[tokio::test]
async fn memory_store() {
    suite(&MemoryStore::new()).await;
    concurrent_suite(&MemoryStore::new()).await;
    watch_suite(&MemoryStore::with_log(10)).await;
    status_suite(&MemoryStore::new()).await;
}

fn settings(backend: Backend) -> RedisSettings {
    RedisSettings { backend, timeout: Duration::from_millis(500), mirror: None }
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    let store =
        RedisStore::connect(&settings(Backend::Standalone(redis.url().into()))).unwrap().with_log_max_events(10);
    suite(&store).await;
    watch_suite(&store).await;
    status_suite(&store).await;
    // Lookups that arrive while one is out go to Redis together: 200 at once took a few MGETs, not 200.
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    concurrent_suite(&store).await;
    let stats = redis.cmd(&["INFO", "commandstats"]);
    let mgets: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MGET in {stats}"));
    assert!(mgets <= 10, "200 concurrent lookups took {mgets} MGETs");
    stalled_redis(&store, &redis).await;
    // The log is capped near its size (`MAXLEN ~` trims whole nodes of a hundred entries).
    let len: u64 = redis.cmd(&["XLEN", tessera::store::redis::LOG]).parse().unwrap();
    assert!(len < 200, "XLEN {len}");
    // Keys expire with the tokens they concern: the list never grows without bound.
    let key = Target::Task("b".into()).key();
    let expires: u64 = redis.cmd(&["EXPIRETIME", &key]).parse().unwrap();
    assert!(expires > now() && expires <= now() + 600, "EXPIRETIME {expires}");
    // Status list registrations are kept per expiry bucket, each set until its bucket ends (never longer,
    // however busy the key): here the subject's, registered with `exp = now + 600`.
    let subject = Target::Subject { iss: "https://i".into(), sub: "sl-s".into() }.key();
    let legacy = format!("{{tessera}}:sl:idx:{subject}");
    // The suite registered them a few seconds ago: in the bucket of `now + 600` then.
    let sets: Vec<(u64, String)> =
        (bucket(now() + 570)..=bucket(now() + 600)).map(|b| (b, format!("{legacy}:{b}"))).collect();
    let found: Vec<&(u64, String)> = sets.iter().filter(|(_, set)| redis.cmd(&["EXISTS", set]) == "1").collect();
    assert!(!found.is_empty(), "the subject's registrations are in {sets:?}");
    for (b, set) in found {
        let until: u64 = redis.cmd(&["EXPIRETIME", set]).parse().unwrap();
        assert_eq!(until, (b + 1) * BUCKET_SECONDS, "{set}");
    }
    assert_eq!(redis.cmd(&["EXISTS", &legacy]).trim(), "0", "nothing is registered without a bucket");
    // A set written by a version that did not bucket registrations is still flipped by a revocation.
    let g = store.allocate_status(1).await.unwrap();
    let old_client = Target::Client("sl-legacy".into());
    redis.cmd(&["SADD", &format!("{{tessera}}:sl:idx:{}", old_client.key()), &g.to_string()]);
    store.revoke(&[entry(&old_client, now(), now() + 600)], now()).await.unwrap();
    assert!(flipped(&store, g).await);
    // A bucket expires when it is full again: one a minute with a burst of two, used twice, is full in two
    // minutes (Redis' own clock: within a few seconds of ours).
    let bucket: i64 = redis.cmd(&["EXPIRETIME", "{tessera}:rl:client:rl-client"]).parse().unwrap();
    let now = i64::try_from(now()).unwrap();
    assert!((now + 100..=now + 125).contains(&bucket), "EXPIRETIME {bucket} at {now}");
}

/// While Redis does not answer: lookups given up on (their requests gone) stall nobody, the lookup after
/// them is answered once Redis is back, and lookups waiting longer than the timeout fail, closed.
async fn stalled_redis(store: &RedisStore, redis: &RedisServer) {
    let now = now();
    let keys = many_keys(3);
    let expected = store.lookup(&keys, now).await.unwrap();
    redis.cmd(&["CLIENT", "PAUSE", "300", "ALL"]);
    let gone = Duration::from_millis(50);
    let (a, b) = tokio::join!(
        tokio::time::timeout(gone, store.lookup(&keys, now)),
        tokio::time::timeout(gone, store.lookup(&keys, now))
    );
    assert!(a.is_err() && b.is_err(), "Redis is paused: neither lookup can have been answered");
    assert_eq!(store.lookup(&keys, now).await.unwrap(), expected);
    // Paused past the 500 ms timeout: every lookup waiting fails, whether it was sent or queued behind one.
    redis.cmd(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let (a, b, c) = tokio::join!(store.lookup(&keys, now), store.lookup(&keys, now), store.lookup(&keys, now));
    assert!(a.is_err() && b.is_err() && c.is_err(), "{a:?} {b:?} {c:?}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(store.lookup(&keys, now).await.unwrap(), expected);
}

#[tokio::test]
async fn redis_cluster_store() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls().into_iter().map(Into::into).collect();
    let store = RedisStore::connect(&settings(Backend::Cluster(nodes))).unwrap().with_log_max_events(10);
    suite(&store).await;
    concurrent_suite(&store).await;
    watch_suite(&store).await;
    status_suite(&store).await;
}
