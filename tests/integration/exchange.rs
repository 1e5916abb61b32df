//! Token exchange over gRPC, with realistic assertions: what a caller relies on.

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use serde_json::json;
use tessera::grpc::pb;
use tonic::Code;

use crate::support::*;

/// Verifies a tessera token against the JWKS served by `GetJwks`, with aws-lc-rs directly (not the broker's
/// own verifier), and returns its header and claims.
async fn verify_with_jwks(broker: &TestBroker, token: &str) -> (serde_json::Value, tessera::token::AccessClaims) {
    let jwks = broker.client().await.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    let key = jwks.keys.iter().find(|k| k.kid == header["kid"].as_str().unwrap()).expect("kid in JWKS");
    assert_eq!((key.kty.as_str(), key.crv.as_str(), key.alg.as_str()), ("OKP", "Ed25519", "EdDSA"));
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&key.x).unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap();
    UnparsedPublicKey::new(&ED25519, x).verify(signing_input.as_bytes(), &sig).expect("signature verifies");
    (header, decode(token))
}

#[tokio::test]
async fn kubernetes_assertion_becomes_a_narrow_task_bound_token() {
    let broker = TestBroker::start().await;
    let assertion = k8s_assertion(600);
    let parent_exp = claims("kubernetes", 600)["exp"].as_u64().unwrap();
    let before = now();
    let r = broker.client().await.exchange_token(request(&assertion, CRM, "crm:read")).await.unwrap().into_inner();
    assert_eq!(r.token_type, "Bearer");
    assert_eq!(r.issued_token_type, ACCESS_TOKEN);
    assert_eq!(r.scope, "crm:read");
    assert!(r.expires_in > 0 && r.expires_in <= 300, "audience max TTL is 300 s: {}", r.expires_in);
    let (header, c) = verify_with_jwks(&broker, &r.access_token).await;
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!((c.iss.as_str(), c.sub.as_str(), c.aud.as_str()), (BROKER, ORCHESTRATOR, CRM));
    assert_eq!((c.scope.as_str(), c.task_id.as_str(), c.client_id.as_str()), ("crm:read", "task-42", "local"));
    assert_eq!(c.sub_iss, K8S_ISS);
    assert_eq!(c.sub_attrs.get("namespace").map(String::as_str), Some("agents"));
    assert!(c.act.is_none() && c.anc.is_empty());
    assert!(c.exp <= parent_exp.min(before + 301) && c.iat >= before && c.nbf == c.iat);
    assert!(!c.jti.is_empty());
}

#[tokio::test]
async fn an_actor_token_is_named_in_act() {
    let broker = TestBroker::start().await;
    let mut req = request(&k8s_assertion(600), CRM, "crm:read");
    req.actor_token = spiffe_assertion(600);
    req.actor_token_type = JWT.into();
    req.session_id = "s-1".into();
    req.purpose = "summarise the Q3 pipeline".into();
    let r = broker.client().await.exchange_token(req).await.unwrap().into_inner();
    let c = decode(&r.access_token);
    let act = c.act.expect("act");
    assert_eq!(act.sub, SPIFFE_AGENT);
    assert_eq!(act.iss.as_deref(), Some("spiffe://agents.example.org"));
    assert!(act.act.is_none());
    assert_eq!(c.session_id.as_deref(), Some("s-1"));
    assert_eq!(c.purpose.as_deref(), Some("summarise the Q3 pipeline"));
}

#[tokio::test]
async fn spiffe_and_github_assertions_are_accepted_and_mapped() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    // A JWT-SVID without `iss`, routed by its trust domain.
    let r = client.exchange_token(request(&spiffe_assertion(600), OTHER, "other:read")).await.unwrap().into_inner();
    let c = decode(&r.access_token);
    assert_eq!((c.sub.as_str(), c.sub_iss.as_str()), (SPIFFE_AGENT, "spiffe://agents.example.org"));
    assert!(r.expires_in <= 120);

    // A GitHub Actions token: policy reads the repository and ref it maps.
    let r = client.exchange_token(request(&github_assertion(600), OTHER, "other:read")).await.unwrap().into_inner();
    let c = decode(&r.access_token);
    assert_eq!(c.sub, "repo:octo-org/agent-fleet:ref:refs/heads/main");
    assert_eq!(c.sub_attrs.get("repository").map(String::as_str), Some("octo-org/agent-fleet"));

    // The same workflow on another branch gets nothing.
    let mut claims = claims("github", 600);
    claims["ref"] = "refs/heads/feature".into();
    claims["sub"] = "repo:octo-org/agent-fleet:ref:refs/heads/feature".into();
    let token = Signer::rs256("github.key.pem").token(&kid("github.jwks.json"), &claims);
    let refused = client.exchange_token(request(&token, OTHER, "other:read")).await;
    assert_refused(refused, Code::PermissionDenied, "invalid_scope", &token);
}

#[tokio::test]
async fn task_tokens_delegate_down_a_chain_that_only_narrows() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    // The orchestrator takes a task token: tessera itself as audience, scopes across two APIs.
    let task = client
        .exchange_token(request(&k8s_assertion(3600), BROKER, "crm:read crm:write other:read"))
        .await
        .unwrap()
        .into_inner();
    let task_claims = decode(&task.access_token);
    assert_eq!(task_claims.aud, BROKER);
    assert!(task.expires_in <= 1800);

    // It delegates crm:read on the CRM to the summariser agent.
    let mut req = request(&task.access_token, CRM, "crm:read");
    req.subject_token_type = ACCESS_TOKEN.into();
    req.task_id = String::new(); // inherited
    req.actor_token = spiffe_assertion(600);
    req.actor_token_type = JWT.into();
    let child = client.exchange_token(req).await.unwrap().into_inner();
    let c = decode(&child.access_token);
    assert_eq!((c.aud.as_str(), c.scope.as_str(), c.task_id.as_str()), (CRM, "crm:read", "task-42"));
    assert_eq!(c.anc, vec![task_claims.jti.clone()]);
    assert_eq!(c.act.as_ref().unwrap().sub, SPIFFE_AGENT);
    assert!(c.exp <= task_claims.exp);

    // The agent hands it on to a tool (one more actor, shorter life).
    let mut req = request(&child.access_token, CRM, "crm:read");
    req.subject_token_type = ACCESS_TOKEN.into();
    req.actor_token = github_assertion(600);
    req.actor_token_type = JWT.into();
    req.requested_expires_in = 30;
    let grandchild = client.exchange_token(req).await.unwrap().into_inner();
    let g = decode(&grandchild.access_token);
    let act = g.act.as_ref().unwrap();
    assert_eq!(act.sub, "repo:octo-org/agent-fleet:ref:refs/heads/main");
    assert_eq!(act.act.as_ref().unwrap().sub, SPIFFE_AGENT, "the earlier actor stays nested");
    assert_eq!(g.depth(), 2);
    assert_eq!(g.anc, vec![task_claims.jti.clone(), c.jti.clone()]);
    assert!(g.exp <= c.exp && grandchild.expires_in <= 30);

    // A CRM token cannot hop to another audience, nor widen, nor change task.
    let hop = request(&child.access_token, OTHER, "other:read");
    assert_refused(client.exchange_token(hop).await, Code::PermissionDenied, "invalid_target", &child.access_token);
    let mut widen = request(&child.access_token, CRM, "crm:read crm:write");
    widen.task_id = String::new();
    assert_refused(client.exchange_token(widen).await, Code::PermissionDenied, "invalid_scope", &child.access_token);
    let mut retask = request(&child.access_token, CRM, "crm:read");
    retask.task_id = "another-task".into();
    assert_refused(client.exchange_token(retask).await, Code::InvalidArgument, "invalid_request", &child.access_token);
}

#[tokio::test]
async fn policy_decides_per_scope_and_the_response_says_what_was_granted() {
    let broker = TestBroker::start().await;
    let r = broker
        .client()
        .await
        .exchange_token(request(&k8s_assertion(600), CRM, "crm:read crm:export crm:write"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.scope, "crm:read crm:write");
    assert_eq!(decode(&r.access_token).scope, "crm:read crm:write");
}

#[tokio::test]
async fn clients_authenticate_with_their_secret() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let basic = |secret: &str| {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("orchestrator:{secret}"));
        format!("Basic {v}").parse::<tonic::metadata::MetadataValue<_>>().unwrap()
    };
    let mut req = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    req.metadata_mut().insert("authorization", basic(CLIENT_SECRET));
    let r = client.exchange_token(req).await.unwrap().into_inner();
    assert_eq!(decode(&r.access_token).client_id, "orchestrator");

    let mut req = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    req.metadata_mut().insert("authorization", basic("wrong-secret"));
    let status = assert_refused(client.exchange_token(req).await, Code::Unauthenticated, "invalid_client", "");
    assert!(!status.message().contains("wrong-secret"));
}

#[tokio::test]
async fn may_act_names_who_may_act() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let signer = Signer::rs256("kubernetes.key.pem");
    let with_may_act = |may_act: serde_json::Value| {
        let mut c = claims("kubernetes", 600);
        c["may_act"] = may_act;
        let mut req = request(&signer.token(&kid("kubernetes.jwks.json"), &c), CRM, "crm:read");
        req.actor_token = spiffe_assertion(600);
        req.actor_token_type = JWT.into();
        req
    };
    let allowed = with_may_act(json!({ "sub": SPIFFE_AGENT, "iss": "spiffe://agents.example.org" }));
    assert!(client.exchange_token(allowed).await.is_ok());
    let refused = with_may_act(json!({ "sub": "spiffe://agents.example.org/ns/agents/sa/someone-else" }));
    let token = refused.subject_token.clone();
    assert_refused(client.exchange_token(refused).await, Code::Unauthenticated, "invalid_grant", &token);
}

#[tokio::test]
async fn signing_keys_rotate_without_breaking_verification() {
    // A broker signing with the old key issues a token…
    let old = TestBroker::start().await;
    let token = old
        .client()
        .await
        .exchange_token(request(&k8s_assertion(600), CRM, "crm:read"))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let old_kid = tessera::token::jws::parse(&token, 8192).unwrap().header.kid.unwrap();

    // …and after rotation (new key first, old key still listed) that token is still accepted and the old
    // key still published, while new tokens are signed by the new key.
    let (_, new_pem) =
        tessera::token::keys::SigningKey::generate(tessera::token::keys::SigningAlgorithm::ES256).unwrap();
    std::fs::write(old.dir.path().join("new.pem"), new_pem.expose()).unwrap();
    let config_path = old.dir.path().join("tessera.toml");
    let rotated = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(r#"keys = ["signing.pem"]"#, r#"keys = ["new.pem", "signing.pem"]"#);
    std::fs::write(&config_path, rotated).unwrap();
    let config = tessera::config::ConfigBuilder::load(&config_path).unwrap().build(old.dir.path()).unwrap();
    let settings = config.server;
    let broker =
        std::sync::Arc::new(tessera::serve::broker(config, tessera::metrics::Metrics::global()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::serve::run(listener, broker, settings, std::future::pending()));
    let mut client = pb::token_broker_client::TokenBrokerClient::connect(format!("http://{addr}")).await.unwrap();
    let jwks = client.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    let kids: Vec<_> = jwks.keys.iter().map(|k| k.kid.clone()).collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old_kid));
    let jwks_json: serde_json::Value = serde_json::from_str(&jwks.jwks_json).unwrap();
    assert_eq!(jwks_json["keys"].as_array().unwrap().len(), 2);

    let mut req = request(&token, CRM, "crm:read");
    req.subject_token_type = ACCESS_TOKEN.into();
    let narrowed = client.exchange_token(req).await.unwrap().into_inner().access_token;
    let header = tessera::token::jws::parse(&narrowed, 8192).unwrap().header;
    assert_eq!(header.alg, "ES256");
    assert_ne!(header.kid.unwrap(), old_kid);
}

#[tokio::test]
async fn health_reports_serving() {
    let broker = TestBroker::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", broker.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "tessera.v1.TokenBroker".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let broker = TestBroker::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", broker.addr)).unwrap().connect().await.unwrap();

    use tonic_reflection::pb::v1 as r1;
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tessera.v1.TokenBroker".to_string()) && names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // grpcio's reflection client (Python) speaks v1alpha only.
    use tonic_reflection::pb::v1alpha as ra;
    let mut client = ra::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    assert!(list.service.iter().any(|s| s.name == "tessera.v1.TokenBroker"));
}
