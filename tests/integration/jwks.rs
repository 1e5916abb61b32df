//! JWKS from a URL: fetched at start, reloaded on an unknown `kid` no more often than the floor allows,
//! and kept when a reload fails.

use serde_json::json;

use crate::support::jwks_server::JwksServer;
use crate::support::*;

fn jwks(files: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(fixtures().join(f)).unwrap()).unwrap();
            v["keys"].as_array().unwrap().clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn url_issuer(url: &str, min_refresh: u64) -> String {
    format!(
        r#"
[[issuers]]
name = "kubernetes"
issuer = "{K8S_ISS}"
jwks_url = "{url}"
algorithms = ["RS256"]
min_refresh_interval = {min_refresh}
attributes = {{ namespace = "/kubernetes.io/namespace" }}
"#
    )
}

/// A Kubernetes-shaped assertion signed by the GitHub fixture key: the "new" key after an upstream rotation.
fn rotated_assertion() -> String {
    Signer::rs256("github.key.pem").token(&kid("github.jwks.json"), &claims("kubernetes", 600))
}

#[tokio::test]
async fn keys_are_fetched_and_rotations_picked_up_on_unknown_kid() {
    let server = JwksServer::start(jwks(&["kubernetes.jwks.json"])).await;
    let broker = TestBroker::builder().issuers_toml(&url_issuer(&server.url, 0)).start().await;
    let mut client = broker.client().await;
    assert!(client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
    let after_start = server.hits();
    assert!(after_start >= 1);

    // The issuer rotates: the new key is published; a token signed with it triggers one reload.
    server.serve(200, jwks(&["github.jwks.json", "kubernetes.jwks.json"])).await;
    let rotated = rotated_assertion();
    assert!(client.exchange_token(request(&rotated, CRM, "crm:read")).await.is_ok());
    assert_eq!(server.hits(), after_start + 1);
    // Known keys cost no fetch.
    assert!(client.exchange_token(request(&rotated, CRM, "crm:read")).await.is_ok());
    assert_eq!(server.hits(), after_start + 1);
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_broker_hammer_the_issuer() {
    let server = JwksServer::start(jwks(&["kubernetes.jwks.json"])).await;
    let broker = TestBroker::builder().issuers_toml(&url_issuer(&server.url, 3600)).start().await;
    let mut client = broker.client().await;
    let start = server.hits();
    let signer = Signer::rs256("kubernetes.key.pem");
    for i in 0..10 {
        let token = signer.token(&format!("unknown-{i}"), &claims("kubernetes", 600));
        let refused = client.exchange_token(request(&token, CRM, "crm:read")).await;
        assert_refused(refused, tonic::Code::Unauthenticated, "invalid_grant", &token);
    }
    assert!(server.hits() - start <= 1, "{} fetches for 10 unknown kids", server.hits() - start);
}

#[tokio::test]
async fn a_failed_reload_keeps_the_keys_already_held() {
    let server = JwksServer::start(jwks(&["kubernetes.jwks.json"])).await;
    let broker = TestBroker::builder().issuers_toml(&url_issuer(&server.url, 0)).start().await;
    let mut client = broker.client().await;
    server.serve(500, "oops".into()).await;
    // An unknown kid forces a reload, which fails…
    let unknown = Signer::rs256("kubernetes.key.pem").token("unknown", &claims("kubernetes", 600));
    assert!(client.exchange_token(request(&unknown, CRM, "crm:read")).await.is_err());
    // …and the keys held before still verify.
    assert!(client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
    // A garbage document is a failed reload too.
    server.serve(200, "{\"keys\": \"no\"}".into()).await;
    assert!(client.exchange_token(request(&unknown, CRM, "crm:read")).await.is_err());
    assert!(client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
}

#[tokio::test]
async fn a_bearer_token_file_authenticates_jwks_fetches_and_is_reread() {
    // The Kubernetes API server's /openid/v1/jwks wants the pod's (rotating) service-account token.
    let server = JwksServer::start(jwks(&["kubernetes.jwks.json"])).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sa-token-1\n").unwrap();
    let issuer = url_issuer(&server.url, 0) + &format!("jwks_bearer_token_file = \"{}\"\n", token_file.display());
    let broker = TestBroker::builder().issuers_toml(&issuer).start().await;
    assert!(server.last_request().await.contains("authorization: bearer sa-token-1\r\n"));
    std::fs::write(&token_file, "sa-token-2").unwrap();
    let unknown = Signer::rs256("kubernetes.key.pem").token("rotated", &claims("kubernetes", 600));
    let _ = broker.client().await.exchange_token(request(&unknown, CRM, "crm:read")).await;
    assert!(server.last_request().await.contains("authorization: bearer sa-token-2\r\n"));
}

#[tokio::test]
async fn an_issuer_unreachable_at_start_is_fetched_on_first_use() {
    let server = JwksServer::start(String::new()).await;
    server.serve(503, String::new()).await;
    let broker = TestBroker::builder().issuers_toml(&url_issuer(&server.url, 0)).start().await;
    let mut client = broker.client().await;
    server.serve(200, jwks(&["kubernetes.jwks.json"])).await;
    assert!(client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.is_ok());
}
