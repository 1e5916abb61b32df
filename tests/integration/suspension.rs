//! The kill switch: one call suspends a principal or a client. Every new exchange by it (as subject or as actor,
//! or by the client) is refused on every replica until it is resumed or the suspension expires, and every token
//! it already has — and everything derived from them — is inactive at once. Operators only.

use std::time::Duration;

use tessera::grpc::pb;
use tonic::Code;

use crate::support::redis::RedisServer;
use crate::support::*;

/// Polls `f` until it holds or `within` passes.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subject(issuer: &str, sub: &str) -> pb::Subject {
    pb::Subject { issuer: issuer.into(), sub: sub.into() }
}

async fn suspend(broker: &TestBroker, target: pb::suspend_request::Target, seconds: u64) -> pb::SuspendResponse {
    let r = pb::SuspendRequest { target: Some(target), duration_seconds: seconds, reason: "rogue agent".into() };
    broker.client().await.suspend(r).await.expect("suspend").into_inner()
}

async fn resume(broker: &TestBroker, target: pb::resume_request::Target) {
    let r = pb::ResumeRequest { target: Some(target), reason: "cleared".into() };
    broker.client().await.resume(r).await.expect("resume");
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    let r = pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() };
    broker.client().await.introspect(r).await.expect("introspect").into_inner().active
}

async fn exchange(broker: &TestBroker, r: pb::ExchangeTokenRequest) -> Result<String, tonic::Status> {
    broker.client().await.exchange_token(r).await.map(|r| r.into_inner().access_token)
}

fn with_actor(mut r: pb::ExchangeTokenRequest, actor: String) -> pb::ExchangeTokenRequest {
    r.actor_token = actor;
    r.actor_token_type = JWT.into();
    r
}

#[tokio::test]
async fn a_suspended_agent_gets_nothing_and_its_tokens_die_on_every_replica() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let strict = TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").start().await;
    let mirror = TestBroker::builder().signing_key(&key).redis(&redis.url(), "mirror").start().await;

    // The summariser (SPIFFE) holds a token of its own, and acts in one the orchestrator delegated.
    let own = exchange(&strict, request(&spiffe_assertion(600), CRM, "crm:read")).await.unwrap();
    let acting = exchange(&strict, with_actor(request(&k8s_assertion(600), CRM, "crm:read"), spiffe_assertion(600)))
        .await
        .unwrap();
    let bystander = exchange(&strict, request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap();

    let answer = suspend(&strict, pb::suspend_request::Target::Subject(subject("spiffe", SPIFFE_AGENT)), 600).await;
    assert_eq!(answer.kind, "subject");
    assert!(answer.suspended_until >= now() + 599);

    // Its tokens die at once, on both replicas; somebody else's do not.
    for broker in [&strict, &mirror] {
        let dead = async || !active(broker, &own).await && !active(broker, &acting).await;
        assert!(eventually(Duration::from_secs(5), dead).await, "its tokens are still active");
        assert!(active(broker, &bystander).await);
    }
    // Nothing new for it on either replica: not as subject, not as actor, not from a fresh assertion.
    for broker in [&strict, &mirror] {
        let as_subject = exchange(broker, request(&spiffe_assertion(600), CRM, "crm:read")).await;
        let status = assert_refused(as_subject.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", "");
        assert!(status.message().contains("suspended"), "{}", status.message());
        let as_actor =
            exchange(broker, with_actor(request(&k8s_assertion(600), CRM, "crm:read"), spiffe_assertion(600))).await;
        assert_refused(as_actor.map(tonic::Response::new), Code::Unauthenticated, "invalid_grant", "");
        // Another principal still works.
        assert!(exchange(broker, request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
    }

    // Resumed: a new assertion works again (on every replica); what the suspension ended stays ended.
    resume(&strict, pb::resume_request::Target::Subject(subject("spiffe", SPIFFE_AGENT))).await;
    // (A fresh assertion works once it is issued after the second of the suspension's subject revocation.)
    for broker in [&strict, &mirror] {
        let again = async || exchange(broker, request(&spiffe_assertion(600), CRM, "crm:read")).await.is_ok();
        assert!(eventually(Duration::from_secs(5), again).await, "resume did not reach a replica");
        assert!(!active(broker, &own).await);
    }
}

#[tokio::test]
async fn a_suspended_client_may_not_exchange_and_its_tokens_die() {
    let broker = TestBroker::start().await;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("orchestrator:{CLIENT_SECRET}"))
    );
    let as_orchestrator = |r: pb::ExchangeTokenRequest| {
        let mut r = tonic::Request::new(r);
        r.metadata_mut().insert("authorization", basic.parse().unwrap());
        r
    };
    let mut client = broker.client().await;
    let token = client
        .exchange_token(as_orchestrator(request(&k8s_assertion(600), CRM, "crm:read")))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let child = exchange(&broker, {
        let mut r = request(&token, CRM, "crm:read");
        r.subject_token_type = ACCESS_TOKEN.into();
        r.task_id.clear();
        r
    })
    .await
    .unwrap();
    let answer = suspend(&broker, pb::suspend_request::Target::ClientId("orchestrator".into()), 0).await;
    assert_eq!(answer.kind, "client");
    assert!(answer.suspended_until >= now() + 86_399, "the default is a day");
    assert!(!active(&broker, &token).await && !active(&broker, &child).await, "its tokens and what derives from them");
    let refused = client.exchange_token(as_orchestrator(request(&k8s_assertion(600), CRM, "crm:read"))).await;
    let status = assert_refused(refused, Code::PermissionDenied, "unauthorized_client", "");
    assert!(status.message().contains("suspended"), "{}", status.message());
    // Other clients are unaffected.
    assert!(exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
}

#[tokio::test]
async fn only_operators_suspend_and_bad_requests_change_nothing() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    // The gateway client may introspect, not suspend.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("gateway:{CLIENT_SECRET}"))
    );
    let mut r = tonic::Request::new(pb::SuspendRequest {
        target: Some(pb::suspend_request::Target::Subject(subject("spiffe", SPIFFE_AGENT))),
        duration_seconds: 60,
        reason: String::new(),
    });
    r.metadata_mut().insert("authorization", basic.parse().unwrap());
    assert_refused(client.suspend(r).await, Code::PermissionDenied, "unauthorized_client", "");
    for (what, request) in [
        ("no target", pb::SuspendRequest::default()),
        (
            "unknown issuer",
            pb::SuspendRequest {
                target: Some(pb::suspend_request::Target::Subject(subject("nowhere", "x"))),
                ..Default::default()
            },
        ),
        (
            "too long",
            pb::SuspendRequest {
                target: Some(pb::suspend_request::Target::ClientId("orchestrator".into())),
                duration_seconds: 31 * 86_400,
                ..Default::default()
            },
        ),
        (
            "control characters",
            pb::SuspendRequest {
                target: Some(pb::suspend_request::Target::Subject(subject("spiffe", "a\nb"))),
                ..Default::default()
            },
        ),
    ] {
        let status = client.suspend(request).await.expect_err(what);
        assert_eq!(
            (status.code(), oauth_error(&status).as_str()),
            (Code::InvalidArgument, "invalid_request"),
            "{what}"
        );
    }
    // Nothing was suspended.
    assert!(exchange(&broker, request(&spiffe_assertion(600), CRM, "crm:read")).await.is_ok());
}

#[tokio::test]
async fn the_kill_switch_over_http_and_the_cli() {
    let broker = TestBroker::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let post = async |path: &str, form: &[(&str, &str)]| {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) =
        post("/oauth2/suspend", &[("subject", SPIFFE_AGENT), ("issuer", "spiffe"), ("duration_seconds", "60")]).await;
    assert_eq!((status, body["suspended"].as_str()), (200, Some("subject")), "{body}");
    assert!(exchange(&broker, request(&spiffe_assertion(600), CRM, "crm:read")).await.is_err());
    let (status, body) = post("/oauth2/resume", &[("subject", SPIFFE_AGENT), ("issuer", "spiffe")]).await;
    assert_eq!((status, body["resumed"].as_str()), (200, Some("subject")), "{body}");
    let (status, body) = post("/oauth2/suspend", &[("subject", SPIFFE_AGENT)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    // The CLI, against the gRPC face.
    let url = format!("http://{}", broker.addr);
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().unwrap();
            (out.status.success(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default())
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).chain(["--addr".to_string(), url.clone()]).collect();
    let (ok, body) =
        cli(args(&["suspend", "--client-id", "orchestrator", "--for", "120", "--reason", "drill"])).await.unwrap();
    assert!(ok && body["suspended"] == "client", "{body}");
    let (ok, body) = cli(args(&["resume", "--client-id", "orchestrator"])).await.unwrap();
    assert!(ok && body["resumed"] == "client", "{body}");
}
