//! The cache of verified tokens: a token or assertion presented again skips its signature check, never the
//! revocation check (strict mode: still its one Redis round trip), and nothing is kept alive by a cache that
//! outlives the keys that verified it — the broker's own, or an upstream issuer's JWKS.

use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::redis::RedisServer;
use crate::support::*;

async fn exchange(broker: &TestBroker, subject: &str, audience: &str, actor: Option<String>) -> String {
    let mut req = request(subject, audience, "crm:read");
    if actor.is_some() {
        req.subject_token_type = ACCESS_TOKEN.into();
        req.task_id.clear();
        req.actor_token = actor.unwrap_or_default();
        req.actor_token_type = JWT.into();
    }
    broker.client().await.exchange_token(req).await.expect("exchange").into_inner().access_token
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    let req = pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() };
    broker.client().await.introspect(req).await.expect("introspection answers").into_inner().active
}

async fn revoke(broker: &TestBroker, target: Target) {
    let req = pb::RevokeRequest { target: Some(target), reason: "test".into() };
    broker.client().await.revoke(req).await.expect("revoke");
}

/// Redis commands since the last reset, without the audit stream's background writes.
fn calls(redis: &RedisServer) -> Vec<(String, u64)> {
    redis.command_calls().into_iter().filter(|(name, _)| name != "xadd" && !name.starts_with("config")).collect()
}

#[tokio::test]
async fn a_revoked_token_is_inactive_even_when_its_verification_is_cached() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let a = TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").start().await;
    let b = TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").start().await;
    let task = exchange(&a, &k8s_assertion(3600), BROKER, None).await;
    let delegated = exchange(&a, &task, CRM, Some(spiffe_assertion(600))).await;
    let direct = exchange(&a, &k8s_assertion(600), CRM, None).await;
    for _ in 0..3 {
        for token in [&delegated, &direct] {
            assert!(active(&a, token).await && active(&b, token).await);
        }
    }

    // A cached token still costs its one Redis round trip.
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    assert!(active(&b, &delegated).await);
    let seen = calls(&redis);
    assert_eq!(seen.iter().find(|(n, _)| n == "mget").map(|(_, c)| *c), Some(1), "{seen:?}");
    assert!(seen.iter().all(|(n, _)| n == "mget" || n == "info"), "{seen:?}");

    revoke(&a, Target::Token(direct.clone())).await;
    assert!(!active(&a, &direct).await && !active(&b, &direct).await, "revoked while cached: inactive");
    // Revoking the task token its chain descends from ends the cached delegated token too.
    assert!(active(&b, &delegated).await);
    revoke(&a, Target::Token(task)).await;
    assert!(!active(&b, &delegated).await, "an ancestor revoked: inactive, cached or not");
}

#[tokio::test]
async fn a_token_whose_signing_key_is_retired_stops_verifying_though_it_was_cached() {
    // Signing keys are fixed per process, so retiring one is a restart with the key gone: here a second
    // broker in the same process (a cache shared beyond one broker's keys would answer active).
    let old = TestBroker::builder().start().await;
    let token = exchange(&old, &k8s_assertion(600), CRM, None).await;
    assert!(active(&old, &token).await && active(&old, &token).await, "verified, then from the cache");
    let retired = TestBroker::builder().start().await;
    assert!(!active(&retired, &token).await, "the key that signed it is not trusted here");
    assert!(active(&old, &token).await, "where it is trusted, it still is active");
}

#[tokio::test]
async fn an_assertion_verified_before_stops_verifying_once_its_key_leaves_the_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("kubernetes.jwks.json");
    std::fs::copy(fixtures().join("kubernetes.jwks.json"), &jwks).unwrap();
    let issuer = format!(
        "[[issuers]]\nname = \"kubernetes\"\nissuer = \"{K8S_ISS}\"\njwks_file = \"{}\"\nalgorithms = [\"RS256\"]\n\
         min_refresh_interval = 1\nattributes = {{ namespace = \"/kubernetes.io/namespace\" }}\n",
        jwks.display()
    );
    let broker = TestBroker::builder().issuers_toml(&issuer).start().await;
    // The same assertion twice: the second exchange is answered from the cache of verified tokens.
    let assertion = k8s_assertion(600);
    for _ in 0..2 {
        let r = broker.client().await.exchange_token(request(&assertion, CRM, "crm:read")).await;
        assert!(r.is_ok(), "{r:?}");
    }
    // The issuer rotates: the file now holds only another key.
    std::fs::write(&jwks, std::fs::read(fixtures().join("github.jwks.json")).unwrap()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = broker.client().await.exchange_token(request(&assertion, CRM, "crm:read")).await;
        if let Err(status) = r {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a cached assertion outlived its key's withdrawal");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
