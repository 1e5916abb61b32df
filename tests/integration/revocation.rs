//! Revocation and introspection across replicas sharing one real Redis: a revoked credential is dead
//! everywhere as soon as `Revoke` returns, and so is everything derived from it.

use std::time::{Duration, Instant};

use tessera::grpc::pb::{self, revoke_request::Target};
use tonic::Code;

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::*;

async fn exchange(
    broker: &TestBroker,
    subject: &str,
    audience: &str,
    scope: &str,
    actor: Option<String>,
) -> Result<String, tonic::Status> {
    let mut req = request(subject, audience, scope);
    if is_tessera_token(subject) {
        req.subject_token_type = ACCESS_TOKEN.into();
        req.task_id.clear();
    }
    if let Some(actor) = actor {
        req.actor_token = actor;
        req.actor_token_type = JWT.into();
    }
    broker.client().await.exchange_token(req).await.map(|r| r.into_inner().access_token)
}

fn is_tessera_token(token: &str) -> bool {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok());
    let claims: Option<serde_json::Value> = payload.and_then(|p| serde_json::from_slice(&p).ok());
    claims.is_some_and(|c| c["iss"] == BROKER)
}

async fn introspect(broker: &TestBroker, token: &str) -> Result<pb::IntrospectResponse, tonic::Status> {
    let req = pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() };
    broker.client().await.introspect(req).await.map(|r| r.into_inner())
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    introspect(broker, token).await.expect("introspection answers").active
}

async fn revoke(broker: &TestBroker, target: Target) -> pb::RevokeResponse {
    let req = pb::RevokeRequest { target: Some(target), reason: "test".into() };
    broker.client().await.revoke(req).await.expect("revoke").into_inner()
}

/// A delegation chain for task-42: a task token, then three hops down to the CRM, each with one more actor.
async fn chain(broker: &TestBroker) -> Vec<String> {
    let t0 = exchange(broker, &k8s_assertion(3600), BROKER, "crm:read crm:write", None).await.unwrap();
    let c1 = exchange(broker, &t0, CRM, "crm:read crm:write", Some(spiffe_assertion(600))).await.unwrap();
    let c2 = exchange(broker, &c1, CRM, "crm:read", Some(github_assertion(600))).await.unwrap();
    let c3 = exchange(broker, &c2, CRM, "crm:read", Some(spiffe_assertion(600))).await.unwrap();
    assert_eq!(decode(&c3).depth(), 3);
    vec![t0, c1, c2, c3]
}

/// Three replicas of one broker: one signing key, one Redis.
async fn replicas(redis: &RedisServer, mode: &str) -> Vec<TestBroker> {
    let key = shared_signing_key();
    let mut brokers = Vec::new();
    for _ in 0..3 {
        brokers.push(TestBroker::builder().signing_key(&key).redis(&redis.url(), mode).start().await);
    }
    brokers
}

#[tokio::test]
async fn introspection_tells_active_from_inactive_and_never_why() {
    let broker = TestBroker::start().await;
    let token = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", Some(spiffe_assertion(600))).await.unwrap();
    let r = introspect(&broker, &token).await.unwrap();
    let c = decode(&token);
    assert!(r.active);
    assert_eq!(
        (r.scope.as_str(), r.client_id.as_str(), r.sub.as_str(), r.aud.as_str()),
        ("crm:read", "local", ORCHESTRATOR, CRM)
    );
    assert_eq!(
        (r.iss.as_str(), r.jti.as_str(), r.task_id.as_str(), r.token_type.as_str()),
        (BROKER, c.jti.as_str(), "task-42", "Bearer")
    );
    assert_eq!((r.exp, r.iat, r.nbf), (c.exp, c.iat, c.nbf));
    assert_eq!(r.act.unwrap().sub, SPIFFE_AGENT);

    let mut forged = token.clone();
    forged.replace_range(token.len() - 4.., "AAAA");
    let upstream = k8s_assertion(600);
    for (what, t) in [
        ("forged signature", forged.as_str()),
        ("upstream assertion", upstream.as_str()),
        ("garbage", "x.y.z"),
        ("empty", ""),
    ] {
        let r = introspect(&broker, t).await.unwrap();
        assert_eq!(r, pb::IntrospectResponse::default(), "{what}: an inactive answer says nothing else");
    }
    // Expired and not-yet-valid, judged as of a given time.
    let client = broker.local_client();
    let secret = tessera::secret::Secret::new(token.clone());
    use tessera::introspect::Introspection;
    assert_eq!(broker.broker.introspect(&client, &secret, c.exp + 60).await.unwrap(), Introspection::Inactive);
    assert_eq!(broker.broker.introspect(&client, &secret, c.iat - 60).await.unwrap(), Introspection::Inactive);
    assert!(matches!(broker.broker.introspect(&client, &secret, c.iat).await.unwrap(), Introspection::Active(_)));
}

#[tokio::test]
async fn introspection_is_limited_to_the_audiences_a_client_may_see() {
    let broker = TestBroker::builder()
        .extra_toml(
            "\n[[audiences]]\nid = \"https://hr.example\"\nscopes = [\"hr:read\"]\nintrospect_clients = [\"local\"]\n",
        )
        .policy(&format!(
            "{}\npermit (principal, action, resource == Tessera::Audience::\"https://hr.example\");",
            std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
        ))
        .start()
        .await;
    let token = exchange(&broker, &k8s_assertion(600), "https://hr.example", "hr:read", None).await.unwrap();
    assert!(active(&broker, &token).await);
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gateway:{CLIENT_SECRET}"));
    let mut req = tonic::Request::new(pb::IntrospectRequest { token: token.clone(), token_type_hint: String::new() });
    req.metadata_mut().insert("authorization", format!("Basic {basic}").parse().unwrap());
    assert!(!broker.client().await.introspect(req).await.unwrap().into_inner().active);
    // The gateway may not revoke, nor exchange.
    let mut req =
        tonic::Request::new(pb::RevokeRequest { target: Some(Target::Token(token.clone())), reason: String::new() });
    req.metadata_mut().insert("authorization", format!("Basic {basic}").parse().unwrap());
    assert_refused(broker.client().await.revoke(req).await, Code::PermissionDenied, "unauthorized_client", &token);
}

#[tokio::test]
async fn a_revocation_through_one_replica_is_seen_by_all_at_once() {
    let redis = RedisServer::start();
    let brokers = replicas(&redis, "strict").await;
    let (a, b, c) = (&brokers[0], &brokers[1], &brokers[2]);

    // By token, three hops down: the token and its subtree die everywhere; its parent lives.
    let tokens = chain(a).await;
    for broker in &brokers {
        for t in &tokens {
            assert!(active(broker, t).await);
        }
    }
    let r = revoke(b, Target::Token(tokens[1].clone())).await;
    assert_eq!(r.kind, "jti");
    for broker in &brokers {
        assert!(active(broker, &tokens[0]).await, "the parent of a revoked token stays active");
        for t in &tokens[1..] {
            assert!(!active(broker, t).await, "revoked or derived from a revoked token");
        }
    }
    // Descendants cannot be exchanged again, on any replica.
    let refused = exchange(c, &tokens[3], CRM, "crm:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &tokens[3]);
    // An ancestor three hops up, by jti.
    let tokens = chain(a).await;
    revoke(c, Target::Jti(decode(&tokens[0]).jti)).await;
    for broker in &brokers {
        assert!(!active(broker, &tokens[3]).await);
    }
    let refused = exchange(b, &tokens[2], CRM, "crm:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &tokens[2]);
}

#[tokio::test]
async fn revoking_a_task_subject_or_client_reaches_every_replica() {
    let redis = RedisServer::start();
    let brokers = replicas(&redis, "strict").await;
    let (a, b, c) = (&brokers[0], &brokers[1], &brokers[2]);

    // A task: all its tokens, and no new ones for it.
    let tokens = chain(a).await;
    revoke(b, Target::TaskId("task-42".into())).await;
    for broker in &brokers {
        for t in &tokens {
            assert!(!active(broker, t).await);
        }
    }
    let refused = exchange(c, &k8s_assertion(600), CRM, "crm:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", "");

    // A subject (here an actor of the chain): every token it appears in, issued up to now…
    let other_task = |token: &str| {
        let mut r = request(token, CRM, "crm:read");
        r.task_id = "task-43".into();
        r
    };
    let direct =
        a.client().await.exchange_token(other_task(&k8s_assertion(600))).await.unwrap().into_inner().access_token;
    let mut with_actor = other_task(&k8s_assertion(600));
    with_actor.actor_token = spiffe_assertion(600);
    with_actor.actor_token_type = JWT.into();
    let delegated = a.client().await.exchange_token(with_actor).await.unwrap().into_inner().access_token;
    revoke(c, Target::Subject(pb::Subject { issuer: "spiffe".into(), sub: SPIFFE_AGENT.into() })).await;
    for broker in &brokers {
        assert!(!active(broker, &delegated).await, "the actor's tokens are revoked");
        assert!(active(broker, &direct).await, "tokens without that actor are not");
    }
    // …but not the principal's future: an assertion issued after the revocation works again.
    let mut fresh = claims("spiffe", 600);
    fresh["iat"] = (now() + 2).into();
    let fresh = Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &fresh);
    let mut req = other_task(&k8s_assertion(600));
    req.actor_token = fresh;
    req.actor_token_type = JWT.into();
    assert!(b.client().await.exchange_token(req).await.is_ok());
    // An old assertion of that principal is refused.
    let mut req = other_task(&k8s_assertion(600));
    let mut old = claims("spiffe", 600);
    old["iat"] = (now() - 10).into();
    req.actor_token = Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &old);
    req.actor_token_type = JWT.into();
    assert_refused(b.client().await.exchange_token(req).await, Code::Unauthenticated, "invalid_grant", "");

    // A client: every token issued to it up to now.
    revoke(a, Target::ClientId("local".into())).await;
    for broker in &brokers {
        assert!(!active(broker, &direct).await);
    }
}

#[tokio::test]
async fn bad_revocations_are_refused_and_change_nothing() {
    let broker = TestBroker::start().await;
    let token = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    let mut client = broker.client().await;
    let cases = [
        (None, "no target"),
        (Some(Target::Token("not.a.token".into())), "not a token"),
        (Some(Target::Token(k8s_assertion(600))), "not a tessera token"),
        (Some(Target::Jti(String::new())), "empty jti"),
        (Some(Target::TaskId("t".repeat(600))), "oversized task"),
        (
            Some(Target::Subject(pb::Subject { issuer: "https://unknown.example".into(), sub: "x".into() })),
            "unknown issuer",
        ),
        (Some(Target::ClientId("bad\nid".into())), "control characters"),
    ];
    for (target, what) in cases {
        let req = pb::RevokeRequest { target, reason: "test".into() };
        let status = client.revoke(req).await.expect_err(what);
        assert_eq!(
            (status.code(), oauth_error(&status).as_str()),
            (Code::InvalidArgument, "invalid_request"),
            "{what}"
        );
    }
    let oversized_reason = pb::RevokeRequest { target: Some(Target::Jti("x".into())), reason: "r".repeat(1000) };
    assert_eq!(oauth_error(&client.revoke(oversized_reason).await.unwrap_err()), "invalid_request");
    assert!(active(&broker, &token).await, "nothing was revoked");
}

#[tokio::test]
async fn introspecting_a_depth_four_token_costs_one_redis_round_trip() {
    let redis = RedisServer::start();
    // Status lists off: their registrations are background writes (own connection, own script) that the
    // server-wide command counts below would mix into the request path's (see status_list.rs).
    let broker = TestBroker::builder()
        .redis(&redis.url(), "strict")
        .extra_toml("\n[status_list]\nenabled = false\n")
        .start()
        .await;
    let mut tokens = chain(&broker).await;
    let c4 = exchange(&broker, &tokens[3], CRM, "crm:read", Some(github_assertion(600))).await.unwrap();
    assert_eq!(decode(&c4).depth(), 4);
    tokens.push(c4.clone());

    redis.cmd(&["CONFIG", "RESETSTAT"]);
    assert!(active(&broker, &c4).await);
    // (The audit event is appended to the audit stream by a background writer, off the request path.)
    let calls: Vec<_> = redis.command_calls().into_iter().filter(|(name, _)| name != "xadd").collect();
    let others: Vec<_> =
        calls.iter().filter(|(name, _)| !(name == "mget" || name.starts_with("config") || name == "info")).collect();
    assert_eq!(calls.iter().find(|(n, _)| n == "mget").map(|(_, c)| *c), Some(1), "{calls:?}");
    assert!(others.is_empty(), "introspection sent more than one command: {calls:?}");

    // An exchange checks subject, actor and task in one round trip too.
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    exchange(&broker, &tokens[3], CRM, "crm:read", None).await.unwrap();
    let calls: Vec<_> = redis.command_calls().into_iter().filter(|(name, _)| name != "xadd").collect();
    assert_eq!(calls.iter().find(|(n, _)| n == "mget").map(|(_, c)| *c), Some(1), "{calls:?}");
    assert!(calls.iter().all(|(n, _)| n == "mget" || n.starts_with("config") || n == "info"), "{calls:?}");
}

/// Retries `f` until it returns true or `within` passes.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn without_redis_the_broker_fails_closed_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let broker = TestBroker::builder().redis(&redis.url(), "strict").start().await;
    let token = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    let revoked = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    revoke(&broker, Target::Token(revoked.clone())).await;

    redis.kill();
    let status = introspect(&broker, &token).await.expect_err("never active without the store");
    assert_eq!((status.code(), oauth_error(&status).as_str()), (Code::Unavailable, "temporarily_unavailable"));
    let status =
        exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.expect_err("no token without the store");
    assert_eq!(status.code(), Code::Unavailable);
    let req = pb::RevokeRequest { target: Some(Target::Jti("x".into())), reason: String::new() };
    assert_eq!(broker.client().await.revoke(req).await.unwrap_err().code(), Code::Unavailable);

    // Back, with its data: service resumes without restarting tessera, and the revocation still holds.
    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), async || introspect(&broker, &token).await.is_ok_and(|r| r.active)).await
    );
    assert!(!active(&broker, &revoked).await);
    assert!(exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.is_ok());
}

#[tokio::test]
async fn mirror_mode_sees_revocations_through_pub_sub_and_falls_back_when_deaf() {
    let mut redis = RedisServer::start();
    let brokers = replicas(&redis, "mirror").await;
    let (a, b) = (&brokers[0], &brokers[1]);
    let tokens = chain(a).await;
    for broker in &brokers {
        let store = broker.broker.store();
        assert!(
            eventually(Duration::from_secs(5), async || store.mirror_trusted() == Some(true)).await,
            "mirror synced"
        );
    }
    revoke(b, Target::Token(tokens[2].clone())).await;
    // The revoking replica applies it at once; the others within the mirror's (measured) lag.
    assert!(!active(b, &tokens[3]).await);
    for broker in &brokers {
        assert!(eventually(Duration::from_secs(2), async || !active(broker, &tokens[3]).await).await);
        assert!(active(broker, &tokens[1]).await);
    }
    // Redis gone: the mirror stops trusting itself after max staleness, and the broker fails closed.
    redis.kill();
    assert!(
        eventually(Duration::from_secs(5), async || introspect(a, &tokens[0])
            .await
            .is_err_and(|s| s.code() == Code::Unavailable))
        .await,
        "a deaf mirror must not answer"
    );
    // Back: it resyncs (revocations survive the restart) and serves again.
    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), async || introspect(a, &tokens[0]).await.is_ok_and(|r| r.active)).await
    );
    assert!(!active(a, &tokens[3]).await);
}

#[tokio::test]
async fn a_single_use_assertion_is_spent_once_across_replicas() {
    let redis = RedisServer::start();
    let single_use =
        default_issuers_toml().replacen("algorithms = [\"RS256\"]", "algorithms = [\"RS256\"]\nsingle_use = true", 1);
    let key = shared_signing_key();
    let a =
        TestBroker::builder().signing_key(&key).issuers_toml(&single_use).redis(&redis.url(), "mirror").start().await;
    let b =
        TestBroker::builder().signing_key(&key).issuers_toml(&single_use).redis(&redis.url(), "strict").start().await;
    let assertion = k8s_assertion(600);
    assert!(exchange(&a, &assertion, CRM, "crm:read", None).await.is_ok());
    for broker in [&a, &b] {
        let replay = exchange(broker, &assertion, CRM, "crm:read", None).await;
        let status =
            assert_refused(replay.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &assertion);
        assert!(status.message().contains("already been used"), "{}", status.message());
    }
    // A single-use issuer's assertion must name itself.
    let mut no_jti = claims("kubernetes", 600);
    no_jti.as_object_mut().unwrap().remove("jti");
    let no_jti = Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &no_jti);
    let refused = exchange(&b, &no_jti, CRM, "crm:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &no_jti);
    // Issuers that are not single-use are unaffected.
    assert!(exchange(&a, &spiffe_assertion(600), OTHER, "other:read", None).await.is_ok());
    assert!(exchange(&a, &spiffe_assertion(600), OTHER, "other:read", None).await.is_ok());
}

#[tokio::test]
async fn a_redis_cluster_of_three_masters_works_the_same() {
    let cluster = RedisCluster::start();
    let key = shared_signing_key();
    let a = TestBroker::builder().signing_key(&key).redis_cluster(&cluster.urls(), "strict").start().await;
    let b = TestBroker::builder().signing_key(&key).redis_cluster(&cluster.urls(), "strict").start().await;
    let m = TestBroker::builder().signing_key(&key).redis_cluster(&cluster.urls(), "mirror").start().await;
    let tokens = chain(&a).await;
    assert!(active(&b, &tokens[3]).await);
    revoke(&b, Target::Token(tokens[1].clone())).await;
    for broker in [&a, &b] {
        assert!(active(broker, &tokens[0]).await);
        assert!(!active(broker, &tokens[3]).await);
    }
    // A mirror on the cluster hears it through pub/sub.
    assert!(eventually(Duration::from_secs(3), async || !active(&m, &tokens[3]).await).await);
    assert!(active(&m, &tokens[0]).await);
    revoke(&a, Target::TaskId("task-42".into())).await;
    assert!(!active(&b, &tokens[0]).await);
    assert!(eventually(Duration::from_secs(3), async || !active(&m, &tokens[0]).await).await);
}

/// The domain functions at a chosen `now`, for a compressed clock.
mod at {
    use tessera::error::ErrorCode;
    use tessera::grpc::pb;
    use tessera::revocation::RevokeRequest;

    use crate::support::*;

    pub async fn exchange(
        broker: &tessera::Broker,
        r: pb::ExchangeTokenRequest,
        now: u64,
    ) -> Result<String, ErrorCode> {
        let issued = broker.exchange(&local_client(broker), r.into(), now).await.map_err(|e| e.code)?;
        Ok(issued.access_token.expose().to_string())
    }

    pub async fn revoke(broker: &tessera::Broker, target: RevokeRequest, now: u64) -> u64 {
        broker.revoke(&local_client(broker), target, "test", now).await.expect("revoke").expires_at
    }
}

#[tokio::test]
async fn assertions_longer_lived_than_their_issuer_allows_are_refused() {
    let issuers = default_issuers_toml().replacen(
        "algorithms = [\"RS256\"]",
        "algorithms = [\"RS256\"]\nmax_assertion_lifetime = 7200",
        1,
    );
    let broker = TestBroker::builder().issuers_toml(&issuers).start().await;
    assert!(exchange(&broker, &k8s_assertion(7200), CRM, "crm:read", None).await.is_ok());
    let too_long = k8s_assertion(7201);
    let refused = exchange(&broker, &too_long, CRM, "crm:read", None).await;
    let status = assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &too_long);
    assert!(status.message().contains("longer than its issuer allows"), "{}", status.message());
    // Without `iat`, `exp - now` is what counts; the default bound is 24 h.
    let mut no_iat = claims("github", 86_400 + 60);
    no_iat.as_object_mut().unwrap().remove("iat");
    let no_iat = Signer::rs256("github.key.pem").token(&kid("github.jwks.json"), &no_iat);
    let refused = exchange(&broker, &no_iat, OTHER, "other:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &no_iat);
}

#[tokio::test]
async fn a_subject_revocation_lasts_as_long_as_the_subjects_assertions() {
    let issuers = default_issuers_toml().replacen(
        "algorithms = [\"RS256\"]",
        "algorithms = [\"RS256\"]\nmax_assertion_lifetime = 7200",
        1,
    );
    let (broker, _, _dir) = TestBroker::builder().issuers_toml(&issuers).build().await;
    let now = now();
    let assertion = k8s_assertion(7200);
    let subject = tessera::revocation::RevokeRequest::Subject { issuer: "kubernetes".into(), sub: ORCHESTRATOR.into() };
    let expires_at = at::revoke(&broker, subject, now).await;
    assert!(expires_at >= now + 7200, "the subject revocation ends at {expires_at}, before the assertion does");
    // Long after every tessera token has expired (the catalog's longest lifetime is 1800 s), the revoked
    // subject's assertion is still refused.
    for later in [now + 1_900, now + 7_100] {
        let refused = at::exchange(&broker, request(&assertion, CRM, "crm:read"), later).await;
        assert_eq!(refused, Err(tessera::ErrorCode::InvalidGrant), "accepted again at now + {}", later - now);
    }
}

#[tokio::test]
async fn a_revoked_task_id_is_not_issued_again_within_the_retention() {
    let (broker, _, _dir) = TestBroker::builder().build().await;
    let now = now();
    let task = tessera::revocation::RevokeRequest::Task("task-42".into());
    let expires_at = at::revoke(&broker, task, now).await;
    assert!(expires_at >= now + 86_400, "a task revocation is kept 24 h by default, not until {expires_at}");
    let assertion = k8s_assertion(7200);
    for later in [now + 10, now + 1_900, now + 7_000] {
        let refused = at::exchange(&broker, request(&assertion, CRM, "crm:read"), later).await;
        assert_eq!(refused, Err(tessera::ErrorCode::InvalidGrant), "task-42 issued again at now + {}", later - now);
    }
    let mut other = request(&assertion, CRM, "crm:read");
    other.task_id = "task-43".into();
    assert!(at::exchange(&broker, other, now + 10).await.is_ok());

    let (broker, _, _dir) = TestBroker::builder().broker_toml("task_revocation_retention = 200000").build().await;
    let expires_at = at::revoke(&broker, tessera::revocation::RevokeRequest::Task("t".into()), now).await;
    assert!(expires_at >= now + 200_000);
}

#[tokio::test]
async fn a_tessera_token_is_inactive_from_its_exp_on() {
    let (broker, _, _dir) = TestBroker::builder().broker_toml("leeway = 30").build().await;
    let now = now();
    let token = at::exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), now).await.unwrap();
    let exp = decode(&token).exp;
    let client = local_client(&broker);
    let introspect = async |at: u64| {
        let answer = broker.introspect(&client, &tessera::secret::Secret::new(token.clone()), at).await.unwrap();
        matches!(answer, tessera::introspect::Introspection::Active(_))
    };
    assert!(introspect(exp - 1).await);
    assert!(!introspect(exp).await, "RFC 7662: an expired token is inactive, whatever the leeway");
    assert!(!introspect(exp + 10).await);
    let again = at::exchange(&broker, request(&token, CRM, "crm:read"), exp).await;
    assert_eq!(again, Err(tessera::ErrorCode::InvalidGrant));
}

#[test]
fn leeways_are_bounded_in_config() {
    for (builder, expected) in [
        (TestBroker::builder().broker_toml("leeway = 61"), "broker.leeway"),
        (
            TestBroker::builder().issuers_toml(&default_issuers_toml().replacen(
                "algorithms = [\"RS256\"]",
                "algorithms = [\"RS256\"]\nleeway = 61",
                1,
            )),
            "`leeway` over 60",
        ),
        (
            TestBroker::builder().issuers_toml(&default_issuers_toml().replacen(
                "algorithms = [\"RS256\"]",
                "algorithms = [\"RS256\"]\nmax_assertion_lifetime = 10",
                1,
            )),
            "max_assertion_lifetime",
        ),
        (TestBroker::builder().broker_toml("task_revocation_retention = 0"), "task_revocation_retention"),
    ] {
        let dir = builder.write_config();
        let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
            .and_then(|b| b.build(dir.path()))
            .expect_err("the config must be refused");
        assert!(errors.to_string().contains(expected), "{errors}");
    }
}

#[tokio::test]
async fn a_present_revocation_key_revokes_whatever_its_value() {
    let redis = RedisServer::start();
    let signing_key = shared_signing_key();
    let strict = TestBroker::builder().signing_key(&signing_key).redis(&redis.url(), "strict").start().await;
    let token = exchange(&strict, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    let key = |token: &str| format!("{{tessera}}:rev:jti:{}", decode(token).jti);
    redis.cmd(&["SET", &key(&token), "not a revocation time"]);
    assert!(!active(&strict, &token).await, "strict lookups");
    assert!(exchange(&strict, &token, CRM, "crm:read", None).await.is_err());

    // A mirror resyncs the same value at start, and must read it the same way.
    let resynced = exchange(&strict, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    let heard = exchange(&strict, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
    redis.cmd(&["SET", &key(&resynced), "garbage", "EX", "600"]);
    redis.cmd(&["ZADD", "{tessera}:rev-index", &(now() + 600).to_string(), &key(&resynced)]);
    let mirror = TestBroker::builder().signing_key(&signing_key).redis(&redis.url(), "mirror").start().await;
    let trusted = || mirror.broker.store().mirror_trusted() == Some(true);
    assert!(eventually(Duration::from_secs(10), async || trusted()).await, "the mirror did not sync");
    assert!(!active(&mirror, &resynced).await, "a resynced value that does not parse counts as revoked");
    assert!(active(&mirror, &heard).await);
    // And an announcement whose times do not parse still revokes.
    let message = format!("r|soon|later|{}|{}", now() * 1000, key(&heard));
    redis.cmd(&["PUBLISH", "{tessera}:revocations", &message]);
    assert!(
        eventually(Duration::from_secs(5), async || trusted() && !active(&mirror, &heard).await).await,
        "a malformed announcement was ignored"
    );
}

#[tokio::test]
async fn an_absurd_exp_on_a_single_use_assertion_is_invalid_grant_not_a_store_failure() {
    let redis = RedisServer::start();
    let single_use =
        default_issuers_toml().replacen("algorithms = [\"RS256\"]", "algorithms = [\"RS256\"]\nsingle_use = true", 1);
    let broker = TestBroker::builder().issuers_toml(&single_use).redis(&redis.url(), "strict").start().await;
    for exp in [serde_json::json!(1e300), serde_json::json!(9_223_372_036_854_775_808u64), serde_json::json!(u64::MAX)]
    {
        let mut c = claims("kubernetes", 600);
        c["exp"] = exp;
        let assertion = Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c);
        let refused = exchange(&broker, &assertion, CRM, "crm:read", None).await;
        assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", &assertion);
    }
    // The store was never at fault: a sane assertion still goes through.
    assert!(exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.is_ok());
}

#[tokio::test]
async fn a_key_withdrawn_from_a_jwks_file_stops_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("kubernetes.jwks.json");
    std::fs::copy(fixtures().join("kubernetes.jwks.json"), &jwks).unwrap();
    let issuer = format!(
        r#"
[[issuers]]
name = "kubernetes"
issuer = "{K8S_ISS}"
jwks_file = "{}"
algorithms = ["RS256"]
min_refresh_interval = 1
attributes = {{ namespace = "/kubernetes.io/namespace" }}
"#,
        jwks.display()
    );
    let broker = TestBroker::builder().issuers_toml(&issuer).start().await;
    assert!(exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.is_ok());
    // The issuer rotates: the file now holds only another key. No token names an unknown kid.
    std::fs::write(&jwks, std::fs::read(fixtures().join("github.jwks.json")).unwrap()).unwrap();
    let withdrawn = eventually(Duration::from_secs(10), async || {
        exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.is_err()
    })
    .await;
    assert!(withdrawn, "a key withdrawn from the jwks_file still verifies");
    let refused = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await;
    assert_refused(refused.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", "");
}

#[tokio::test]
async fn the_request_paths_redis_connection_carries_no_background_writes() {
    use std::io::BufRead as _;
    let redis = RedisServer::start();
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli (bash scripts/test installs redis-tools)");
    let stdout = monitor.stdout.take().unwrap();
    let lines = std::thread::spawn(move || std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect());
    let broker = TestBroker::builder().redis(&redis.url(), "strict").start().await;
    for _ in 0..5 {
        let token = exchange(&broker, &k8s_assertion(600), CRM, "crm:read", None).await.unwrap();
        assert!(active(&broker, &token).await);
    }
    let appended = eventually(Duration::from_secs(10), async || {
        redis.cmd(&["XLEN", "{tessera}:audit"]).parse::<u64>().is_ok_and(|n| n >= 10)
    })
    .await;
    assert!(appended, "audit events did not reach the stream");
    let _ = monitor.kill();
    let _ = monitor.wait();
    let lines: Vec<String> = lines.join().unwrap();
    // `<time> [<db> <client address>] "COMMAND" …`
    let by_command = |command: &str| -> std::collections::BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l.contains(&format!("] \"{command}\"")))
            .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
            .collect()
    };
    let (lookups, writes) = (by_command("MGET"), by_command("XADD"));
    assert!(!lookups.is_empty() && !writes.is_empty(), "{lookups:?} {writes:?}");
    assert!(lookups.is_disjoint(&writes), "lookups {lookups:?} share a connection with audit writes {writes:?}");
}
