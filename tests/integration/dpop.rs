//! Sender-constrained tokens (DPoP, RFC 9449) on both faces: an exchange carrying a proof yields a token bound
//! to the proof's key (`cnf.jkt`, `token_type: DPoP`), introspection shows the binding, a re-exchange keeps it
//! and needs the same key, an audience can require it, and forward-auth accepts a bound token only with a
//! fresh proof, never seen before by any replica, for that very request (method, URL, token hash) signed by
//! that key. A DPoP-bound token is useless without its key.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tessera::grpc::pb;
use tonic::Code;

use crate::support::redis::RedisServer;
use crate::support::*;

/// The URL a gRPC ExchangeToken proof names (documented in the proto and docs).
const GRPC_HTU: &str = "https://tessera.test/tessera.v1.TokenBroker/ExchangeToken";
/// The token endpoint under the broker's issuer (RFC 8414 `token_endpoint`).
const TOKEN_HTU: &str = "https://tessera.test/oauth2/token";
/// The original request behind the gateway, as forward-auth's tests present it.
const API_HOST: &str = "api.example";
const API_URI: &str = "/crm/contacts?page=2";
const API_HTU: &str = "https://api.example/crm/contacts";
const DPOP_ONLY: &str = "https://dpop.example";
const MTLS_ONLY: &str = "https://mtls.example";
const ANY_BINDING: &str = "https://bound.example";

/// A client's DPoP key pair.
pub enum DpopKey {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

fn sha256_b64(text: &str) -> String {
    b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref())
}

impl DpopKey {
    pub fn ec() -> DpopKey {
        let der = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        DpopKey::Ec(EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref()).unwrap())
    }

    pub fn ed() -> DpopKey {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        DpopKey::Ed(Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap())
    }

    fn jwk(&self) -> Value {
        match self {
            DpopKey::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({ "kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]) })
            }
            DpopKey::Ed(k) => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref()) }),
        }
    }

    /// RFC 7638, written out here independently of the broker's code: the required members, sorted, no spaces.
    fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = match self {
            DpopKey::Ec(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                j["x"].as_str().unwrap(),
                j["y"].as_str().unwrap()
            ),
            DpopKey::Ed(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, j["x"].as_str().unwrap()),
        };
        sha256_b64(&canonical)
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = match self {
            DpopKey::Ec(k) => k.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec(),
            DpopKey::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// A proof for `htm` `htu`, made now, with a fresh `jti`; `ath` for the token it goes with.
    pub fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.proof_with(
            json!({ "htm": htm, "htu": htu, "iat": now(), "jti": fresh_jti(), "ath": token.map(sha256_b64) }),
        )
    }

    fn proof_with(&self, mut claims: Value) -> String {
        if let Some(c) = claims.as_object_mut() {
            c.retain(|_, v| !v.is_null());
        }
        let alg = match self {
            DpopKey::Ec(_) => "ES256",
            DpopKey::Ed(_) => "EdDSA",
        };
        self.sign(&json!({ "typ": "dpop+jwt", "alg": alg, "jwk": self.jwk() }), &claims)
    }
}

fn fresh_jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    b64(&bytes)
}

async fn http_face(broker: &TestBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    format!("http://{addr}")
}

/// A broker whose catalog also has audiences that require a DPoP binding, an mTLS binding, or either.
async fn broker_with_constrained_audiences() -> TestBroker {
    let policy = std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap()
        + r#"
@id("constrained")
permit (principal, action == Tessera::Action::"exchange", resource)
when { context.scope == "bound:read" };
"#;
    TestBroker::builder()
        .policy(&policy)
        .extra_toml(&format!(
            r#"
[[audiences]]
id = "{DPOP_ONLY}"
scopes = ["bound:read"]
sender_constraint = "dpop"

[[audiences]]
id = "{MTLS_ONLY}"
scopes = ["bound:read"]
sender_constraint = "mtls"

[[audiences]]
id = "{ANY_BINDING}"
scopes = ["bound:read"]
sender_constraint = "any"
"#
        ))
        .start()
        .await
}

/// A CRM token (`crm:read`) bound to `key`, exchanged over gRPC.
pub async fn bound_token(broker: &TestBroker, key: &DpopKey) -> String {
    let proof = key.proof("POST", GRPC_HTU, None);
    grpc_exchange(broker, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await.unwrap().access_token
}

/// ExchangeToken over gRPC with the given `dpop` metadata entries.
async fn grpc_exchange(
    broker: &TestBroker,
    r: pb::ExchangeTokenRequest,
    proofs: &[&str],
) -> Result<pb::ExchangeTokenResponse, tonic::Status> {
    let mut request = tonic::Request::new(r);
    for proof in proofs {
        request.metadata_mut().append("dpop", proof.parse().unwrap());
    }
    broker.client().await.exchange_token(request).await.map(tonic::Response::into_inner)
}

fn re_exchange(subject: &str, audience: &str, scope: &str) -> pb::ExchangeTokenRequest {
    let mut r = request(subject, audience, scope);
    r.subject_token_type = ACCESS_TOKEN.into();
    r.task_id.clear();
    r
}

/// POSTs a token-exchange form to the HTTP face with the given `DPoP` headers.
async fn http_exchange(base: &str, form: &[(&str, &str)], proofs: &[&str]) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut r = reqwest::Client::new()
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for proof in proofs {
        r = r.header("dpop", *proof);
    }
    let response = r.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn http_form<'a>(subject: &'a str, audience: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", JWT),
        ("audience", audience),
        ("scope", scope),
        ("task_id", "dpop-task"),
    ]
}

/// Asserts an HTTP token-endpoint refusal: 400, `error`, and no token in the body.
fn assert_http_refused(status: u16, body: &Value, error: &str, what: &str) {
    assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{what}: {body}");
    assert!(body.get("access_token").is_none(), "{what}: nothing is issued");
}

#[tokio::test]
async fn a_grpc_exchange_with_a_proof_yields_a_dpop_bound_token_and_introspection_shows_cnf() {
    let broker = TestBroker::start().await;
    for key in [DpopKey::ec(), DpopKey::ed()] {
        let proof = key.proof("POST", GRPC_HTU, None);
        let issued = grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await.unwrap();
        assert_eq!((issued.token_type.as_str(), issued.issued_token_type.as_str()), ("DPoP", ACCESS_TOKEN));
        let claims = decode(&issued.access_token);
        assert_eq!(claims.jkt(), Some(key.jkt().as_str()), "cnf.jkt is the proof key's RFC 7638 thumbprint");
        let r = broker
            .client()
            .await
            .introspect(pb::IntrospectRequest { token: issued.access_token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.active);
        assert_eq!(r.token_type, "DPoP");
        assert_eq!(r.cnf, Some(pb::Confirmation { jkt: key.jkt(), x5t_s256: String::new() }));
    }
    // Without a proof: a bearer token, as before, with no cnf.
    let issued = grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[]).await.unwrap();
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(decode(&issued.access_token).cnf, None);
    let r = broker
        .client()
        .await
        .introspect(pb::IntrospectRequest { token: issued.access_token, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.token_type.as_str(), r.cnf), ("Bearer", None));
}

#[tokio::test]
async fn an_http_exchange_with_a_proof_yields_a_dpop_bound_token_and_introspection_shows_cnf() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let key = DpopKey::ec();
    let assertion = k8s_assertion(600);
    let (status, body) =
        http_exchange(&base, &http_form(&assertion, CRM, "crm:read"), &[&key.proof("POST", TOKEN_HTU, None)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["issued_token_type"].as_str()), (Some("DPoP"), Some(ACCESS_TOKEN)));
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(decode(&token).jkt(), Some(key.jkt().as_str()));

    let introspect = |accept: Option<&'static str>| {
        let mut r = reqwest::Client::new()
            .post(format!("{base}/oauth2/introspect"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.send()
    };
    let r: Value = introspect(None).await.unwrap().json().await.unwrap();
    assert_eq!(r["active"], true);
    assert_eq!(r["token_type"], "DPoP");
    assert_eq!(r["cnf"], json!({ "jkt": key.jkt() }));
    // RFC 9701: the signed answer carries it too.
    let jwt = introspect(Some("application/token-introspection+jwt")).await.unwrap().text().await.unwrap();
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["token_introspection"]["cnf"], json!({ "jkt": key.jkt() }));
    // RFC 8414 / RFC 9449 §5.1: the metadata says which proofs are accepted.
    let m: Value =
        reqwest::get(format!("{base}/.well-known/oauth-authorization-server")).await.unwrap().json().await.unwrap();
    assert_eq!(m["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA", "RS256", "PS256"]));
}

#[tokio::test]
async fn bad_proofs_at_the_token_endpoint_are_refused_and_nothing_is_issued() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let key = DpopKey::ec();
    let stale = || json!({ "htm": "POST", "htu": TOKEN_HTU, "iat": now() - 120, "jti": fresh_jti() });
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("another URL (the gRPC one)", vec![key.proof("POST", GRPC_HTU, None)]),
        ("another host", vec![key.proof("POST", "https://evil.example/oauth2/token", None)]),
        ("another method", vec![key.proof("GET", TOKEN_HTU, None)]),
        ("a stale iat", vec![key.proof_with(stale())]),
        (
            "an iat in the future",
            vec![key.proof_with(json!({ "htm": "POST", "htu": TOKEN_HTU, "iat": now() + 120, "jti": fresh_jti() }))],
        ),
        ("no jti", vec![key.proof_with(json!({ "htm": "POST", "htu": TOKEN_HTU, "iat": now() }))]),
        ("not a JWT", vec!["not-a-proof".into()]),
        ("two DPoP headers", vec![key.proof("POST", TOKEN_HTU, None), key.proof("POST", TOKEN_HTU, None)]),
    ];
    for (what, proofs) in &cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let (status, body) = http_exchange(&base, &http_form(&k8s_assertion(600), CRM, "crm:read"), &proofs).await;
        assert_http_refused(status, &body, "invalid_dpop_proof", what);
    }
    // The same over gRPC: UNAUTHENTICATED with invalid_dpop_proof.
    let grpc_cases: Vec<(&str, Vec<String>)> = vec![
        ("the HTTP token endpoint's URL", vec![key.proof("POST", TOKEN_HTU, None)]),
        ("another method", vec![key.proof("PUT", GRPC_HTU, None)]),
        (
            "a stale iat",
            vec![key.proof_with(json!({ "htm": "POST", "htu": GRPC_HTU, "iat": now() - 120, "jti": fresh_jti() }))],
        ),
        ("two dpop entries", vec![key.proof("POST", GRPC_HTU, None), key.proof("POST", GRPC_HTU, None)]),
    ];
    for (what, proofs) in &grpc_cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &proofs).await;
        let status =
            assert_refused(r.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", proofs[0]);
        assert!(!status.message().contains(proofs[0]), "{what}: the proof is not echoed");
    }

    // A proof is good for one request: the replay is refused, on either face.
    let proof = key.proof("POST", TOKEN_HTU, None);
    let (status, body) = http_exchange(&base, &http_form(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_exchange(&base, &http_form(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await;
    assert_http_refused(status, &body, "invalid_dpop_proof", "a replayed proof");
    assert!(body["error_description"].as_str().unwrap().contains("already been used"), "{body}");
    let proof = key.proof("POST", GRPC_HTU, None);
    assert!(grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await.is_ok());
    let replay = grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await;
    assert_refused(replay.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", &proof);
}

#[tokio::test]
async fn a_re_exchange_keeps_the_binding_and_needs_the_same_key() {
    let broker = TestBroker::start().await;
    let key = DpopKey::ec();
    let other = DpopKey::ed();
    // A task token bound to the key, then narrowed to the CRM.
    let task = grpc_exchange(
        &broker,
        request(&k8s_assertion(600), BROKER, "crm:read crm:write"),
        &[&key.proof("POST", GRPC_HTU, None)],
    )
    .await
    .unwrap()
    .access_token;
    assert_eq!(decode(&task).jkt(), Some(key.jkt().as_str()));

    // Without a proof, or with another key's: refused, nothing issued.
    let r = grpc_exchange(&broker, re_exchange(&task, CRM, "crm:read"), &[]).await;
    let status = assert_refused(r.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", &task);
    assert!(status.message().contains("DPoP-bound"), "{}", status.message());
    let r = grpc_exchange(&broker, re_exchange(&task, CRM, "crm:read"), &[&other.proof("POST", GRPC_HTU, None)]).await;
    let status = assert_refused(r.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", &task);
    assert!(status.message().contains("another key"), "{}", status.message());

    // With the key's own proof: the child is bound to the same key.
    let child = grpc_exchange(&broker, re_exchange(&task, CRM, "crm:read"), &[&key.proof("POST", GRPC_HTU, None)])
        .await
        .unwrap();
    assert_eq!(child.token_type, "DPoP");
    assert_eq!(decode(&child.access_token).jkt(), Some(key.jkt().as_str()));
    assert_eq!(decode(&child.access_token).anc, vec![decode(&task).jti], "it is the task token's child");

    // A bound token as the actor needs its key too.
    let mut with_actor = request(&k8s_assertion(600), CRM, "crm:read");
    with_actor.subject_token = spiffe_assertion(600);
    with_actor.actor_token = task.clone();
    with_actor.actor_token_type = ACCESS_TOKEN.into();
    let r = grpc_exchange(&broker, with_actor, &[]).await;
    assert_refused(r.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", &task);
}

#[tokio::test]
async fn an_audience_can_require_a_sender_constrained_token() {
    let broker = broker_with_constrained_audiences().await;
    let base = http_face(&broker).await;
    let key = DpopKey::ec();
    // dpop: without a proof, refused with invalid_dpop_proof; with one, a bound token.
    let r = grpc_exchange(&broker, request(&k8s_assertion(600), DPOP_ONLY, "bound:read"), &[]).await;
    assert_refused(r.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", "");
    let (status, body) = http_exchange(&base, &http_form(&k8s_assertion(600), DPOP_ONLY, "bound:read"), &[]).await;
    assert_http_refused(status, &body, "invalid_dpop_proof", "dpop audience without a proof");
    let issued = grpc_exchange(
        &broker,
        request(&k8s_assertion(600), DPOP_ONLY, "bound:read"),
        &[&key.proof("POST", GRPC_HTU, None)],
    )
    .await
    .unwrap();
    assert_eq!((issued.token_type.as_str(), decode(&issued.access_token).jkt()), ("DPoP", Some(key.jkt().as_str())));
    // any: a DPoP proof satisfies it; nothing at all does not.
    let r = grpc_exchange(&broker, request(&k8s_assertion(600), ANY_BINDING, "bound:read"), &[]).await;
    assert_refused(r.map(tonic::Response::new), Code::InvalidArgument, "invalid_request", "");
    assert!(
        grpc_exchange(
            &broker,
            request(&k8s_assertion(600), ANY_BINDING, "bound:read"),
            &[&key.proof("POST", GRPC_HTU, None)]
        )
        .await
        .is_ok()
    );
    // mtls: a DPoP proof does not satisfy it, and these faces see no client certificate.
    for proofs in [vec![], vec![key.proof("POST", GRPC_HTU, None)]] {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = grpc_exchange(&broker, request(&k8s_assertion(600), MTLS_ONLY, "bound:read"), &proofs).await;
        let status = assert_refused(r.map(tonic::Response::new), Code::InvalidArgument, "invalid_request", "");
        assert!(status.message().contains("mutual TLS"), "{}", status.message());
    }
    // The resource metadata says DPoP is required.
    let m: Value = reqwest::get(format!(
        "{base}/oauth2/resource-metadata?resource={}",
        form_urlencoded::byte_serialize(DPOP_ONLY.as_bytes()).collect::<String>()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(m["dpop_bound_access_tokens_required"], true);
}

/// A forward-auth check for the CRM as nginx makes it, with the original request `GET https://api.example/…`.
async fn gateway_check(base: &str, authorization: &str, proofs: &[&str]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-tessera-audience", CRM)
        .header("x-tessera-scope", "crm:read")
        .header("x-original-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", API_HOST)
        .header("x-original-uri", API_URI)
        .header("authorization", authorization);
    for proof in proofs {
        r = r.header("dpop", *proof);
    }
    r.send().await.unwrap()
}

fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

async fn assert_dpop_refused(r: reqwest::Response, what: &str) {
    let challenge = www_authenticate(&r);
    assert_eq!(r.status(), 401, "{what}");
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("error=\"invalid_dpop_proof\""),
        "{what}: {challenge}"
    );
    assert!(r.headers().get("x-tessera-sub").is_none(), "{what}: no identity reaches the upstream");
}

#[tokio::test]
async fn forward_auth_accepts_a_dpop_bound_token_only_with_a_proof_for_that_request() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let key = DpopKey::ec();
    let token =
        grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[&key.proof("POST", GRPC_HTU, None)])
            .await
            .unwrap()
            .access_token;
    let dpop = format!("DPoP {token}");

    // The right key, method, URL (the query is not part of htu) and token hash: 200 with the identity headers.
    let ok = gateway_check(&base, &dpop, &[&key.proof("GET", API_HTU, Some(&token))]).await;
    assert_eq!(ok.status(), 200, "{}", www_authenticate(&ok));
    assert_eq!(ok.headers()["x-tessera-sub"], ORCHESTRATOR);

    let other = DpopKey::ed();
    let claims = |htm: &str, htu: &str, iat: u64, ath: Option<String>| json!({ "htm": htm, "htu": htu, "iat": iat, "jti": fresh_jti(), "ath": ath });
    let ath = Some(sha256_b64(&token));
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("another URL", dpop.clone(), vec![key.proof("GET", "https://api.example/crm/export", Some(&token))]),
        ("another host", dpop.clone(), vec![key.proof("GET", "https://evil.example/crm/contacts", Some(&token))]),
        ("another method", dpop.clone(), vec![key.proof("DELETE", API_HTU, Some(&token))]),
        ("another key", dpop.clone(), vec![other.proof("GET", API_HTU, Some(&token))]),
        ("no ath", dpop.clone(), vec![key.proof("GET", API_HTU, None)]),
        ("the ath of another token", dpop.clone(), vec![key.proof("GET", API_HTU, Some("another-token"))]),
        ("a stale iat", dpop.clone(), vec![key.proof_with(claims("GET", API_HTU, now() - 120, ath.clone()))]),
        ("an iat in the future", dpop.clone(), vec![key.proof_with(claims("GET", API_HTU, now() + 120, ath.clone()))]),
        ("no proof", dpop.clone(), vec![]),
        (
            "two proofs",
            dpop.clone(),
            vec![key.proof("GET", API_HTU, Some(&token)), key.proof("GET", API_HTU, Some(&token))],
        ),
        ("a Bearer presentation", format!("Bearer {token}"), vec![key.proof("GET", API_HTU, Some(&token))]),
        ("a Bearer presentation without a proof", format!("Bearer {token}"), vec![]),
    ];
    for (what, authorization, proofs) in &cases {
        let proofs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        assert_dpop_refused(gateway_check(&base, authorization, &proofs).await, what).await;
    }

    // A replayed proof: the first use passes, the second is refused.
    let proof = key.proof("GET", API_HTU, Some(&token));
    assert_eq!(gateway_check(&base, &dpop, &[&proof]).await.status(), 200);
    assert_dpop_refused(gateway_check(&base, &dpop, &[&proof]).await, "a replayed proof").await;

    // A bearer token under the DPoP scheme is refused too; as Bearer it still works.
    let bearer = grpc_exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read"), &[]).await.unwrap().access_token;
    let r = gateway_check(&base, &format!("DPoP {bearer}"), &[&key.proof("GET", API_HTU, Some(&bearer))]).await;
    assert_dpop_refused(r, "an unbound token under the DPoP scheme").await;
    assert_eq!(gateway_check(&base, &format!("Bearer {bearer}"), &[]).await.status(), 200);

    // A gateway that does not forward the original request cannot have a proof checked: its error, never a pass.
    let r = reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-tessera-audience", CRM)
        .header("authorization", &dpop)
        .header("dpop", key.proof("GET", API_HTU, Some(&token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    // A bearer token with a stray DPoP header needs nothing more from the gateway.
    let r = reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-tessera-audience", CRM)
        .bearer_auth(&bearer)
        .header("dpop", key.proof("GET", API_HTU, Some(&bearer)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_dpop_proof_is_accepted_once_across_replicas() {
    let redis = RedisServer::start();
    let signing = shared_signing_key();
    let a = TestBroker::builder().signing_key(&signing).redis(&redis.url(), "mirror").start().await;
    let b = TestBroker::builder().signing_key(&signing).redis(&redis.url(), "strict").start().await;
    let (base_a, base_b) = (http_face(&a).await, http_face(&b).await);
    let key = DpopKey::ec();

    // At the token endpoint.
    let proof = key.proof("POST", GRPC_HTU, None);
    let token = grpc_exchange(&a, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await.unwrap().access_token;
    let replay = grpc_exchange(&b, request(&k8s_assertion(600), CRM, "crm:read"), &[&proof]).await;
    assert_refused(replay.map(tonic::Response::new), Code::Unauthenticated, "invalid_dpop_proof", &proof);

    // At forward-auth: one replica accepts it, the other refuses the replay (a mirror replica included).
    let dpop = format!("DPoP {token}");
    for (first, second) in [(&base_a, &base_b), (&base_b, &base_a)] {
        let proof = key.proof("GET", API_HTU, Some(&token));
        assert_eq!(gateway_check(first, &dpop, &[&proof]).await.status(), 200);
        assert_dpop_refused(gateway_check(second, &dpop, &[&proof]).await, "a proof replayed at another replica").await;
    }
}

#[tokio::test]
async fn sender_constraint_and_dpop_max_age_are_validated() {
    for (toml, problem) in [
        (
            format!("[[audiences]]\nid = \"{DPOP_ONLY}\"\nscopes = [\"a\"]\nsender_constraint = \"maybe\"\n"),
            "sender_constraint",
        ),
        (String::new(), "dpop_max_age"),
    ] {
        let mut builder = TestBroker::builder().extra_toml(&toml);
        if problem == "dpop_max_age" {
            builder = builder.broker_toml("dpop_max_age = 0");
        }
        let dir = builder.write_config();
        let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
            .and_then(|b| b.build(dir.path()))
            .expect_err("the config is refused");
        assert!(errors.to_string().contains(problem), "{errors}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_bound_tokens_cnf() {
    use std::io::Write as _;
    let broker = TestBroker::start().await;
    let key = DpopKey::ec();
    let token = bound_token(&broker, &key).await;
    let addr = format!("http://{}", broker.addr);
    let output = tokio::task::spawn_blocking(move || {
        let mut child = crate::support::process::tessera()
            .args(["introspect", "-", "--addr", &addr])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let shown: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!((shown["token_type"].as_str(), &shown["cnf"]), (Some("DPoP"), &json!({ "jkt": key.jkt() })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proof_or_bound_token_reaches_the_logs() {
    use crate::support::process::Serving;
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let server = tokio::task::spawn_blocking(move || {
        Serving::start(&["--config", config.to_str().unwrap()], |c| {
            c.env("RUST_LOG", "debug").env_remove("TESSERA__LOG__LEVEL");
        })
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.http);
    let key = DpopKey::ec();
    let good = key.proof("POST", TOKEN_HTU, None);
    let (status, body) = http_exchange(&base, &http_form(&k8s_assertion(600), CRM, "crm:read"), &[&good]).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    // Refused: a replay, and a proof for another URL.
    let bad = key.proof("POST", GRPC_HTU, None);
    for proof in [&good, &bad] {
        let (status, _) = http_exchange(&base, &http_form(&k8s_assertion(600), CRM, "crm:read"), &[proof]).await;
        assert_eq!(status, 400);
    }
    let at_gateway = key.proof("GET", API_HTU, Some(&token));
    assert_eq!(gateway_check(&base, &format!("DPoP {token}"), &[&at_gateway]).await.status(), 200);
    assert_eq!(gateway_check(&base, &format!("DPoP {token}"), &[&at_gateway]).await.status(), 401);

    let (_, logs) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(logs.contains("event=exchange"), "the debug log is not empty: {logs}");
    for (what, secret) in
        [("a proof", &good), ("a refused proof", &bad), ("a gateway proof", &at_gateway), ("the bound token", &token)]
    {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(secret.as_str()) && !logs.contains(signature), "{what} appears in the logs");
    }
}
