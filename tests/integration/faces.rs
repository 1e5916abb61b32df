//! The faces under hostile or heavy traffic: audit lines that requests cannot forge, client authentication
//! details (the Basic scheme's case, empty secrets), and health and reflection answering while the broker's
//! RPCs are at their concurrency limit.

use base64::Engine as _;

use crate::support::*;

// --- Client authentication ----------------------------------------------------------------------------

#[tokio::test]
async fn the_basic_scheme_is_case_insensitive_over_grpc() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("orchestrator:{CLIENT_SECRET}"));
    for scheme in ["basic", "BASIC"] {
        let mut r = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
        r.metadata_mut().insert("authorization", format!("{scheme} {credentials}").parse().unwrap());
        let issued = client.exchange_token(r).await.unwrap_or_else(|s| panic!("{scheme}: {s:?}")).into_inner();
        // The caller is the client it named (not the anonymous loopback client).
        assert_eq!(decode(&issued.access_token).client_id, "orchestrator", "{scheme}");
    }
    // A wrong secret under a lowercase scheme is still refused.
    let wrong = base64::engine::general_purpose::STANDARD.encode("orchestrator:wrong");
    let mut r = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    r.metadata_mut().insert("authorization", format!("basic {wrong}").parse().unwrap());
    assert_refused(client.exchange_token(r).await, tonic::Code::Unauthenticated, "invalid_client", "");
}

#[test]
fn a_client_whose_secret_is_empty_is_refused_by_the_config() {
    // SHA-256 of the empty string, in either case.
    for hash in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        let toml = format!("\n[[clients]]\nid = \"empty\"\nsecret_sha256 = \"{hash}\"\nrpcs = [\"exchange\"]\n");
        let dir = TestBroker::builder().extra_toml(&toml).write_config();
        let built =
            tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml")).and_then(|b| b.build(dir.path()));
        let Err(errors) = built else { panic!("a client whose secret is empty is accepted") };
        let all = errors.to_string();
        assert!(all.contains("clients[3] (empty)") && all.contains("empty string"), "{all}");
    }
}
