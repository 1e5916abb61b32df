//! Client authentication without shared secrets, on both faces: `private_key_jwt` (RFC 7523 §2.2) and SPIFFE
//! JWT-SVIDs as client assertions, verified by the issuer registry with keys served by real JWKS servers, each
//! good for one request on any replica; client secrets forbidden by the config; and each client limited to its
//! RPCs and, for Introspect, to the audiences it is registered for.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use serde_json::{Value, json};
use tessera::grpc::pb;
use tonic::Code;

use crate::support::jwks_server::JwksServer;
use crate::support::redis::RedisServer;
use crate::support::*;

const ORCH: &str = "agent-orchestrator";
const OPERATOR: &str = "operator";
const SUMMARISER: &str = "summariser";
const PRIVATE: &str = "https://private.example";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// A client's own P-256 key: the signer, its PKCS#8 PEM (for Python) and its public JWK Set.
pub struct ClientKey {
    pub signer: Signer,
    pub pem: String,
    pub jwks: String,
    pub kid: String,
}

impl ClientKey {
    pub fn generate(kid: &str) -> ClientKey {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        ClientKey { signer: Signer::Es256(pair), pem, jwks: json!({ "keys": [jwk] }).to_string(), kid: kid.into() }
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.signer.token(&self.kid, claims)
    }
}

/// A fresh `jti`.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// The claims of a `private_key_jwt` assertion of `client` for `aud`, valid for a minute.
fn pkjwt_claims(client: &str, aud: &str) -> Value {
    let now = now();
    json!({ "iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + 60, "jti": jti() })
}

fn token_endpoint() -> String {
    format!("{BROKER}/oauth2/token")
}

/// A JWT-SVID of `spiffe_id`, signed with the trust domain's key (the fixture's), for the broker.
fn svid(spiffe_id: &str) -> String {
    let now = now();
    let claims = json!({ "sub": spiffe_id, "aud": [BROKER], "iat": now, "exp": now + 60, "jti": jti() });
    Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &claims)
}

/// A broker whose clients authenticate with assertions, its keys served over HTTP, both faces up.
pub struct Setup {
    pub broker: TestBroker,
    pub base: String,
    pub orchestrator: ClientKey,
    pub operator: ClientKey,
    _servers: Vec<JwksServer>,
}

/// A broker as [`setup`] builds it, with `broker_toml` in `[broker]`, the secret clients or not, a Redis
/// store, and the client keys of another setup (a replica of it) or fresh ones.
pub async fn setup_with(broker_toml: &str, secrets: bool, redis: Option<&str>, keys: Option<&Setup>) -> Setup {
    let (builder, orchestrator, operator, servers) = configure(broker_toml, secrets, redis, keys).await;
    let broker = builder.start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    Setup { broker, base, orchestrator, operator, _servers: servers }
}

/// The configuration of a [`setup_with`] broker, its client keys and the JWKS servers that publish them.
async fn configure(
    broker_toml: &str,
    secrets: bool,
    redis: Option<&str>,
    keys: Option<&Setup>,
) -> (TestBrokerBuilder, ClientKey, ClientKey, Vec<JwksServer>) {
    let (orchestrator, operator) = match keys {
        Some(other) => (clone_key(&other.orchestrator), clone_key(&other.operator)),
        None => (ClientKey::generate("orch-1"), ClientKey::generate("op-1")),
    };
    let orch_jwks = JwksServer::start(orchestrator.jwks.clone()).await;
    let op_jwks = JwksServer::start(operator.jwks.clone()).await;
    let bundle = JwksServer::start(std::fs::read_to_string(fixtures().join("spiffe.jwks.json")).unwrap()).await;
    let k8s = fixtures().join("kubernetes.jwks.json");
    let issuers = format!(
        r#"
[[issuers]]
name = "kubernetes"
issuer = "{K8S_ISS}"
jwks_file = "{k8s}"
algorithms = ["RS256"]
attributes = {{ namespace = "/kubernetes.io/namespace" }}

[[issuers]]
name = "spiffe"
spiffe_trust_domain = "agents.example.org"
jwks_url = "{bundle}"
algorithms = ["ES256"]
used_for = "both"

[[issuers]]
name = "orchestrator-key"
issuer = "{ORCH}"
jwks_url = "{orch}"
algorithms = ["ES256"]
used_for = "client_assertions"

[[issuers]]
name = "operator-key"
issuer = "{OPERATOR}"
jwks_url = "{op}"
algorithms = ["ES256"]
used_for = "client_assertions"

[[audiences]]
id = "{PRIVATE}"
scopes = ["other:read"]
introspect_clients = ["gateway"]
"#,
        k8s = k8s.display(),
        bundle = bundle.url,
        orch = orch_jwks.url,
        op = op_jwks.url,
    );
    let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CLIENT_SECRET.as_bytes()));
    let secret_clients = format!(
        r#"
[[clients]]
id = "orchestrator"
secret_sha256 = "{sha}"
rpcs = ["exchange"]

[[clients]]
id = "gateway"
secret_sha256 = "{sha}"
rpcs = ["introspect"]
"#
    );
    let gateway_without_secret = r#"
[[clients]]
id = "gateway"
spiffe_ids = ["spiffe://agents.example.org/ns/edge/sa/gateway"]
rpcs = ["introspect"]
"#;
    let clients = format!(
        r#"
[[clients]]
id = "{ORCH}"
assertion_issuer = "orchestrator-key"
rpcs = ["exchange", "introspect"]

[[clients]]
id = "{OPERATOR}"
assertion_issuer = "operator-key"
rpcs = ["revoke", "suspend"]

[[clients]]
id = "{SUMMARISER}"
spiffe_ids = ["{SPIFFE_AGENT}"]
rpcs = ["exchange"]
{more}
"#,
        more = if secrets { secret_clients.as_str() } else { gateway_without_secret },
    );
    let mut builder = TestBroker::builder()
        .broker_toml(broker_toml)
        .issuers_toml(&issuers)
        .clients_toml(&clients)
        .introspectors(&["gateway", ORCH]);
    if let Some(url) = redis {
        builder = builder.redis(url, "strict");
    }
    (builder, orchestrator, operator, vec![orch_jwks, op_jwks, bundle])
}

async fn setup() -> Setup {
    setup_with("", true, None, None).await
}

/// gRPC request metadata for a client assertion.
fn with_assertion<T>(message: T, kind: &str, assertion: &str, client_id: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let md = request.metadata_mut();
    md.insert("client-assertion-type", kind.parse().unwrap());
    md.insert("client-assertion", assertion.parse().unwrap());
    if let Some(id) = client_id {
        md.insert("client-id", id.parse().unwrap());
    }
    request
}

/// POSTs a form to the HTTP face; the status and the JSON body.
async fn post(url: &str, form: &[(&str, &str)], authorization: Option<&str>) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut request =
        reqwest::Client::new().post(url).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn exchange_form<'a>(subject: &'a str, kind: &'a str, assertion: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", JWT),
        ("audience", CRM),
        ("scope", "crm:read"),
        ("task_id", "assert-task"),
        ("client_assertion_type", kind),
        ("client_assertion", assertion),
    ]
}

/// Exchanges a Kubernetes assertion over gRPC, authenticated by `assertion`.
async fn grpc_exchange(
    s: &Setup,
    kind: &str,
    assertion: &str,
    client_id: Option<&str>,
) -> Result<pb::ExchangeTokenResponse, tonic::Status> {
    let request = with_assertion(request(&k8s_assertion(600), CRM, "crm:read"), kind, assertion, client_id);
    s.broker.client().await.exchange_token(request).await.map(tonic::Response::into_inner)
}

/// Exchanges a Kubernetes assertion over HTTP, authenticated by `assertion` (and `extra` fields).
async fn http_exchange(s: &Setup, kind: &str, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let subject = k8s_assertion(600);
    let mut form = exchange_form(&subject, kind, assertion);
    form.extend_from_slice(extra);
    post(&format!("{}/oauth2/token", s.base), &form, None).await
}

/// Asserts a gRPC refusal with `code`/`reason` that issued nothing, and whose message does not echo the assertion.
fn assert_grpc_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, reason: &str, what: &str) {
    match result {
        Ok(r) => panic!("{what}: expected {reason}, got {r:?}"),
        Err(status) => {
            assert_eq!((status.code(), oauth_error(&status).as_str()), (code, reason), "{what}: {}", status.message());
        }
    }
}

/// Asserts an HTTP refusal with `status`/`error`, no token in the body.
fn assert_http_refused(answer: &(u16, Value), status: u16, error: &str, what: &str) {
    assert_eq!((answer.0, answer.1["error"].as_str()), (status, Some(error)), "{what}: {}", answer.1);
    assert!(answer.1.get("access_token").is_none(), "{what}: a token was issued");
}

#[tokio::test]
async fn private_key_jwt_authenticates_on_both_faces_with_either_audience() {
    let s = setup().await;
    for aud in [BROKER.to_string(), token_endpoint()] {
        let issued = grpc_exchange(&s, JWT_BEARER, &s.orchestrator.sign(&pkjwt_claims(ORCH, &aud)), None).await;
        assert_eq!(decode(&issued.expect("gRPC, aud {aud}").access_token).client_id, ORCH);
        let (status, body) = http_exchange(&s, JWT_BEARER, &s.orchestrator.sign(&pkjwt_claims(ORCH, &aud)), &[]).await;
        assert_eq!(status, 200, "HTTP, aud {aud}: {body}");
        assert_eq!(decode(body["access_token"].as_str().unwrap()).client_id, ORCH);
    }
    // An array `aud`, and a matching client_id alongside, are fine too.
    let mut claims = pkjwt_claims(ORCH, BROKER);
    claims["aud"] = json!(["https://someone.else", token_endpoint()]);
    let (status, body) = http_exchange(&s, JWT_BEARER, &s.orchestrator.sign(&claims), &[("client_id", ORCH)]).await;
    assert_eq!(status, 200, "{body}");
    let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    assert!(grpc_exchange(&s, JWT_BEARER, &assertion, Some(ORCH)).await.is_ok());
}

#[tokio::test]
async fn a_jwt_svid_authenticates_its_spiffe_client_on_both_faces() {
    let s = setup().await;
    let issued = grpc_exchange(&s, JWT_SPIFFE, &svid(SPIFFE_AGENT), None).await.expect("gRPC");
    assert_eq!(decode(&issued.access_token).client_id, SUMMARISER);
    let (status, body) = http_exchange(&s, JWT_SPIFFE, &svid(SPIFFE_AGENT), &[("client_id", SUMMARISER)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(body["access_token"].as_str().unwrap()).client_id, SUMMARISER);
}

/// A compact JWS with `header` and `claims` and an arbitrary signature (for algorithms tessera never accepts).
fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

#[tokio::test]
async fn bad_client_assertions_are_invalid_client_on_both_faces_and_issue_nothing() {
    let s = setup().await;
    let attacker = ClientKey::generate("orch-1");
    let now = now();
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = pkjwt_claims(ORCH, BROKER);
        edit(&mut c);
        c
    };
    let signed = |edit: &dyn Fn(&mut Value)| s.orchestrator.sign(&claims(edit));
    let mut cases: Vec<(&str, &str, String)> = vec![
        ("wrong aud", JWT_BEARER, signed(&|c| c["aud"] = json!("https://elsewhere.example/oauth2/token"))),
        ("the bare token path as aud", JWT_BEARER, signed(&|c| c["aud"] = json!("/oauth2/token"))),
        ("no aud", JWT_BEARER, signed(&|c| _ = c.as_object_mut().unwrap().remove("aud"))),
        (
            "expired",
            JWT_BEARER,
            signed(&|c| {
                c["iat"] = json!(now - 600);
                c["exp"] = json!(now - 120)
            }),
        ),
        ("no exp", JWT_BEARER, signed(&|c| _ = c.as_object_mut().unwrap().remove("exp"))),
        ("lives too long", JWT_BEARER, signed(&|c| c["exp"] = json!(now + 3600))),
        ("not yet valid", JWT_BEARER, signed(&|c| c["nbf"] = json!(now + 600))),
        ("no jti", JWT_BEARER, signed(&|c| _ = c.as_object_mut().unwrap().remove("jti"))),
        ("empty jti", JWT_BEARER, signed(&|c| c["jti"] = json!(""))),
        ("iss differs from sub", JWT_BEARER, signed(&|c| c["sub"] = json!(OPERATOR))),
        ("sub differs from iss", JWT_BEARER, signed(&|c| c["iss"] = json!(OPERATOR))),
        (
            "unknown client",
            JWT_BEARER,
            signed(&|c| {
                c["iss"] = json!("nobody");
                c["sub"] = json!("nobody")
            }),
        ),
        (
            "a secret client",
            JWT_BEARER,
            signed(&|c| {
                c["iss"] = json!("orchestrator");
                c["sub"] = json!("orchestrator")
            }),
        ),
        ("signed by another key with the same kid", JWT_BEARER, attacker.sign(&claims(&|_| {}))),
        ("signed with another client's key", JWT_BEARER, s.operator.sign(&claims(&|_| {}))),
        ("alg none", JWT_BEARER, unsigned(&json!({"alg": "none", "kid": "orch-1"}), &claims(&|_| {}), b"")),
        (
            "HS256",
            JWT_BEARER,
            unsigned(&json!({"alg": "HS256", "kid": "orch-1"}), &claims(&|_| {}), b"0123456789abcdef0123456789abcdef"),
        ),
        ("not a JWT", JWT_BEARER, "not-a-jwt".into()),
        ("unknown SPIFFE ID", JWT_SPIFFE, svid("spiffe://agents.example.org/ns/agents/sa/intruder")),
        ("a JWT-SVID as private_key_jwt", JWT_BEARER, svid(SPIFFE_AGENT)),
        ("a private_key_jwt as a JWT-SVID", JWT_SPIFFE, signed(&|_| {})),
        (
            "an assertion type tessera does not know",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            signed(&|_| {}),
        ),
    ];
    // A JWT-SVID signed by someone other than the trust domain.
    let mut forged = json!({ "sub": SPIFFE_AGENT, "aud": [BROKER], "exp": now + 60, "jti": jti() });
    cases.push((
        "a JWT-SVID not signed by the trust domain",
        JWT_SPIFFE,
        ClientKey::generate(&kid("spiffe.jwks.json")).sign(&forged),
    ));
    forged["aud"] = json!(["https://other.example"]);
    cases.push((
        "a JWT-SVID for another audience",
        JWT_SPIFFE,
        Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &forged),
    ));
    for (what, kind, assertion) in &cases {
        let result = grpc_exchange(&s, kind, assertion, None).await;
        assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", what);
        let answer = http_exchange(&s, kind, assertion, &[]).await;
        assert_http_refused(&answer, 401, "invalid_client", what);
        let description = answer.1["error_description"].as_str().unwrap_or_default();
        let signature = assertion.rsplit('.').next().unwrap_or_default();
        assert!(signature.len() < 8 || !description.contains(signature), "{what}: the error echoes the assertion");
    }
    // A client_id that names another client than the assertion does.
    let result = grpc_exchange(&s, JWT_BEARER, &signed(&|_| {}), Some(OPERATOR)).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "client-id mismatch");
    let answer = http_exchange(&s, JWT_BEARER, &signed(&|_| {}), &[("client_id", OPERATOR)]).await;
    assert_http_refused(&answer, 401, "invalid_client", "client_id mismatch");
    let answer = http_exchange(&s, JWT_SPIFFE, &svid(SPIFFE_AGENT), &[("client_id", ORCH)]).await;
    assert_http_refused(&answer, 401, "invalid_client", "client_id mismatch (SPIFFE)");
}

#[tokio::test]
async fn two_methods_at_once_or_half_an_assertion_are_invalid_request() {
    let s = setup().await;
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("orchestrator:{CLIENT_SECRET}")));
    let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    // gRPC: Basic and an assertion.
    let mut both = with_assertion(request(&k8s_assertion(600), CRM, "crm:read"), JWT_BEARER, &assertion, None);
    both.metadata_mut().insert("authorization", basic.parse().unwrap());
    let result = s.broker.client().await.exchange_token(both).await;
    assert_grpc_refused(result, Code::InvalidArgument, "invalid_request", "Basic + assertion (gRPC)");
    // gRPC: a type without the assertion.
    let mut half = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    half.metadata_mut().insert("client-assertion-type", JWT_BEARER.parse().unwrap());
    let result = s.broker.client().await.exchange_token(half).await;
    assert_grpc_refused(result, Code::InvalidArgument, "invalid_request", "half an assertion (gRPC)");
    // HTTP: Basic and an assertion; a posted secret and an assertion; half an assertion.
    let subject = k8s_assertion(600);
    let url = format!("{}/oauth2/token", s.base);
    let form = exchange_form(&subject, JWT_BEARER, &assertion);
    assert_http_refused(&post(&url, &form, Some(&basic)).await, 400, "invalid_request", "Basic + assertion");
    let mut posted = form.clone();
    posted.extend([("client_id", "orchestrator"), ("client_secret", CLIENT_SECRET)]);
    assert_http_refused(&post(&url, &posted, None).await, 400, "invalid_request", "post + assertion");
    let half: Vec<_> = form.iter().filter(|(k, _)| *k != "client_assertion").copied().collect();
    assert_http_refused(&post(&url, &half, None).await, 400, "invalid_request", "type without assertion");
    let half: Vec<_> = form.iter().filter(|(k, _)| *k != "client_assertion_type").copied().collect();
    assert_http_refused(&post(&url, &half, None).await, 400, "invalid_request", "assertion without type");
    // None of those spent the assertion: nothing verified it.
    assert!(grpc_exchange(&s, JWT_BEARER, &assertion, None).await.is_ok());
}

#[tokio::test]
async fn a_client_assertion_is_good_for_one_request_whatever_its_outcome() {
    let s = setup().await;
    // Replayed on the same face, and on the other face.
    let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    assert!(grpc_exchange(&s, JWT_BEARER, &assertion, None).await.is_ok());
    let result = grpc_exchange(&s, JWT_BEARER, &assertion, None).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "replay (gRPC)");
    assert_http_refused(&http_exchange(&s, JWT_BEARER, &assertion, &[]).await, 401, "invalid_client", "replay (HTTP)");
    let svid = svid(SPIFFE_AGENT);
    let (status, body) = http_exchange(&s, JWT_SPIFFE, &svid, &[]).await;
    assert_eq!(status, 200, "{body}");
    let result = grpc_exchange(&s, JWT_SPIFFE, &svid, None).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "SVID replay (gRPC)");
    // Spent by a refused request too: one refused after the store round trip (a scope the audience does not
    // offer), and one refused before it (an audience not in the catalog), which spends it in a round trip of
    // its own.
    for (field, value, error) in
        [("scope", "crm:nope", "invalid_scope"), ("audience", "https://nowhere.example", "invalid_target")]
    {
        let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
        let subject = k8s_assertion(600);
        let mut form = exchange_form(&subject, JWT_BEARER, &assertion);
        form.retain(|(k, _)| *k != field);
        form.push((field, value));
        let answer = post(&format!("{}/oauth2/token", s.base), &form, None).await;
        assert_http_refused(&answer, 400, error, field);
        let replay = http_exchange(&s, JWT_BEARER, &assertion, &[]).await;
        assert_http_refused(&replay, 401, "invalid_client", &format!("replayed after {error}"));
    }
}

#[tokio::test]
async fn a_client_assertion_spent_on_one_replica_is_refused_by_another() {
    let redis = RedisServer::start();
    // Status lists off: their registrations are background writes (own connection, own script) that the
    // server-wide command counts below would mix into the request path's (see status_list.rs).
    let no_status_list = "[status_list]\nenabled = false\n";
    let a = setup_with(no_status_list, true, Some(&redis.url()), None).await;
    let b = setup_with(no_status_list, true, Some(&redis.url()), Some(&a)).await;
    let assertion = a.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    assert!(grpc_exchange(&a, JWT_BEARER, &assertion, None).await.is_ok());
    let result = grpc_exchange(&b, JWT_BEARER, &assertion, None).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "replayed on another replica");
    let svid = svid(SPIFFE_AGENT);
    let (status, body) = http_exchange(&b, JWT_SPIFFE, &svid, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_http_refused(&http_exchange(&a, JWT_SPIFFE, &svid, &[]).await, 401, "invalid_client", "SVID, other replica");
    // A fresh assertion works on the other replica: the refusal was the replay, not the replica.
    assert!(grpc_exchange(&b, JWT_BEARER, &b.orchestrator.sign(&pkjwt_claims(ORCH, BROKER)), None).await.is_ok());

    // The spend joins the exchange's one lookup: one pipeline of the revocation MGET and the spend's SET NX,
    // nothing else on the request path (the audit stream's XADD has its own connection).
    let fresh = a.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    assert!(grpc_exchange(&a, JWT_BEARER, &fresh, None).await.is_ok());
    let mut calls: Vec<(String, u64)> = redis
        .command_calls()
        .into_iter()
        .filter(|(name, _)| !(name == "xadd" || name.starts_with("config") || name == "info"))
        .collect();
    calls.sort();
    assert_eq!(calls, [("mget".to_string(), 1), ("set".to_string(), 1)]);
}

fn regenerate(key: &ClientKey) -> EcdsaKeyPair {
    let der: String = key.pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(der).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap()
}

fn clone_key(key: &ClientKey) -> ClientKey {
    ClientKey {
        signer: Signer::Es256(regenerate(key)),
        pem: key.pem.clone(),
        jwks: key.jwks.clone(),
        kid: key.kid.clone(),
    }
}

#[tokio::test]
async fn introspection_by_assertion_is_single_use_and_only_for_registered_audiences() {
    let s = setup().await;
    let mut grpc = s.broker.client().await;
    let crm = grpc_exchange(&s, JWT_BEARER, &s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER)), None).await.unwrap();
    let private = grpc
        .exchange_token(with_assertion(
            request(&svid(SPIFFE_AGENT), PRIVATE, "other:read"),
            JWT_SPIFFE,
            &svid(SPIFFE_AGENT),
            None,
        ))
        .await
        .expect("a token for the private audience")
        .into_inner();
    for (token, active) in [(&crm.access_token, true), (&private.access_token, false)] {
        let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
        let message = pb::IntrospectRequest { token: token.clone(), ..Default::default() };
        let answer = grpc.introspect(with_assertion(message.clone(), JWT_BEARER, &assertion, None)).await.unwrap();
        assert_eq!(answer.into_inner().active, active, "gRPC");
        let result = grpc.introspect(with_assertion(message, JWT_BEARER, &assertion, None)).await;
        assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "introspection replay (gRPC)");
        let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
        let form = [("token", token.as_str()), ("client_assertion_type", JWT_BEARER), ("client_assertion", &assertion)];
        let url = format!("{}/oauth2/introspect", s.base);
        let (status, body) = post(&url, &form, None).await;
        assert_eq!((status, body["active"].as_bool()), (200, Some(active)), "HTTP: {body}");
        assert_http_refused(&post(&url, &form, None).await, 401, "invalid_client", "introspection replay (HTTP)");
    }
    // An invalid token spends the assertion too (the answer needs no lookup, the spend a round trip).
    let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    let form =
        [("token", "not-a-token"), ("client_assertion_type", JWT_BEARER), ("client_assertion", assertion.as_str())];
    let url = format!("{}/oauth2/introspect", s.base);
    assert_eq!(post(&url, &form, None).await.1["active"], json!(false));
    assert_http_refused(&post(&url, &form, None).await, 401, "invalid_client", "replay after an inactive answer");
    // The summariser may exchange only.
    let message = pb::IntrospectRequest { token: crm.access_token.clone(), ..Default::default() };
    let result = grpc.introspect(with_assertion(message, JWT_SPIFFE, &svid(SPIFFE_AGENT), None)).await;
    assert_grpc_refused(result, Code::PermissionDenied, "unauthorized_client", "introspect without the RPC");
}

#[tokio::test]
async fn revoke_and_suspend_are_for_operators_and_a_replayed_assertion_changes_nothing() {
    let s = setup().await;
    let mut grpc = s.broker.client().await;
    let op = || s.operator.sign(&pkjwt_claims(OPERATOR, BROKER));
    let revoke = |task: &str| pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::TaskId(task.into())),
        reason: "test".into(),
    };
    // Not for the orchestrator, on either face.
    let orch = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    let result = grpc.revoke(with_assertion(revoke("t-0"), JWT_BEARER, &orch, None)).await;
    assert_grpc_refused(result, Code::PermissionDenied, "unauthorized_client", "revoke by a non-operator");
    let orch = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    let form = [("task_id", "t-0"), ("client_assertion_type", JWT_BEARER), ("client_assertion", orch.as_str())];
    let answer = post(&format!("{}/oauth2/revoke", s.base), &form, None).await;
    assert_http_refused(&answer, 400, "unauthorized_client", "HTTP revoke by a non-operator");
    let suspend = pb::SuspendRequest {
        target: Some(pb::suspend_request::Target::ClientId(SUMMARISER.into())),
        duration_seconds: 60,
        reason: "test".into(),
    };
    let result = grpc.suspend(with_assertion(suspend.clone(), JWT_SPIFFE, &svid(SPIFFE_AGENT), None)).await;
    assert_grpc_refused(result, Code::PermissionDenied, "unauthorized_client", "suspend by a non-operator");
    for path in ["suspend", "resume"] {
        let orch = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
        let form = [
            ("target_client_id", SUMMARISER),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", orch.as_str()),
        ];
        let answer = post(&format!("{}/oauth2/{path}", s.base), &form, None).await;
        assert_http_refused(&answer, 400, "unauthorized_client", &format!("HTTP {path} by a non-operator"));
    }

    // The operator revokes task t-1; the same assertion replayed for t-2 changes nothing.
    let assertion = op();
    grpc.revoke(with_assertion(revoke("t-1"), JWT_BEARER, &assertion, None)).await.expect("the operator revokes");
    let result = grpc.revoke(with_assertion(revoke("t-2"), JWT_BEARER, &assertion, None)).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "revoke replay (gRPC)");
    let form = [("task_id", "t-2"), ("client_assertion_type", JWT_BEARER), ("client_assertion", assertion.as_str())];
    let answer = post(&format!("{}/oauth2/revoke", s.base), &form, None).await;
    assert_http_refused(&answer, 401, "invalid_client", "revoke replay (HTTP)");
    let exchange_for = async |task: &str| {
        let mut r = request(&k8s_assertion(600), CRM, "crm:read");
        r.task_id = task.into();
        let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
        s.broker.client().await.exchange_token(with_assertion(r, JWT_BEARER, &assertion, None)).await
    };
    assert_grpc_refused(exchange_for("t-1").await, Code::Unauthenticated, "invalid_grant", "t-1 is revoked");
    assert!(exchange_for("t-2").await.is_ok(), "the replay revoked nothing");

    // The operator suspends the summariser; a replayed assertion cannot resume it.
    let assertion = op();
    grpc.suspend(with_assertion(suspend, JWT_BEARER, &assertion, None)).await.expect("the operator suspends");
    let resume = pb::ResumeRequest {
        target: Some(pb::resume_request::Target::ClientId(SUMMARISER.into())),
        reason: "test".into(),
    };
    let result = grpc.resume(with_assertion(resume.clone(), JWT_BEARER, &assertion, None)).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_client", "resume replay");
    let form = [
        ("target_client_id", SUMMARISER),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    let answer = post(&format!("{}/oauth2/resume", s.base), &form, None).await;
    assert_http_refused(&answer, 401, "invalid_client", "resume replay (HTTP)");
    let result = grpc_exchange(&s, JWT_SPIFFE, &svid(SPIFFE_AGENT), None).await;
    assert_grpc_refused(result, Code::PermissionDenied, "unauthorized_client", "still suspended");
    let fresh = op();
    let form =
        [("target_client_id", SUMMARISER), ("client_assertion_type", JWT_BEARER), ("client_assertion", fresh.as_str())];
    let (status, body) = post(&format!("{}/oauth2/resume", s.base), &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(grpc_exchange(&s, JWT_SPIFFE, &svid(SPIFFE_AGENT), None).await.is_ok(), "resumed");
}

#[tokio::test]
async fn a_client_key_issuer_vouches_for_no_subject() {
    let s = setup().await;
    // The orchestrator signs a "subject token" for anyone it likes with its client key: refused as untrusted.
    let now = now();
    let forged = s.orchestrator.sign(&json!({
        "iss": ORCH, "sub": "system:serviceaccount:agents:admin", "aud": BROKER, "exp": now + 60, "iat": now,
        "jti": jti(), "kubernetes.io": { "namespace": "agents" },
    }));
    let assertion = s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    let r = with_assertion(request(&forged, CRM, "crm:read"), JWT_BEARER, &assertion, None);
    let result = s.broker.client().await.exchange_token(r).await;
    assert_grpc_refused(result, Code::Unauthenticated, "invalid_grant", "a client-key JWT as subject token");
}

#[tokio::test]
async fn forbidden_secrets_are_refused_on_both_faces_and_left_out_of_the_metadata() {
    let s = setup_with("client_secrets = \"forbidden\"", false, None, None).await;
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{ORCH}:{CLIENT_SECRET}")));
    let mut r = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    r.metadata_mut().insert("authorization", basic.parse().unwrap());
    assert_grpc_refused(
        s.broker.client().await.exchange_token(r).await,
        Code::Unauthenticated,
        "invalid_client",
        "Basic",
    );
    let subject = k8s_assertion(600);
    let mut form = exchange_form(&subject, "", "");
    form.retain(|(k, _)| !k.starts_with("client_assertion"));
    let url = format!("{}/oauth2/token", s.base);
    assert_http_refused(&post(&url, &form, Some(&basic)).await, 401, "invalid_client", "client_secret_basic");
    let mut posted = form.clone();
    posted.extend([("client_id", ORCH), ("client_secret", CLIENT_SECRET)]);
    assert_http_refused(&post(&url, &posted, None).await, 401, "invalid_client", "client_secret_post");
    // Assertions still work.
    assert!(grpc_exchange(&s, JWT_BEARER, &s.orchestrator.sign(&pkjwt_claims(ORCH, BROKER)), None).await.is_ok());
    let metadata: Value =
        reqwest::get(format!("{}/.well-known/oauth-authorization-server", s.base)).await.unwrap().json().await.unwrap();
    for endpoint in ["token", "introspection", "revocation"] {
        assert_eq!(
            metadata[format!("{endpoint}_endpoint_auth_methods_supported")],
            json!(["private_key_jwt", "spiffe_jwt"])
        );
        assert_eq!(metadata[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")], json!(["ES256"]));
    }

    // And a config that gives a client a secret is refused at load, naming it.
    let dir = TestBroker::builder().broker_toml("client_secrets = \"forbidden\"").write_config();
    let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
        .and_then(|b| b.build(dir.path()))
        .expect_err("secrets are forbidden")
        .to_string();
    assert!(errors.contains("clients[0] (orchestrator): has `secret_sha256`, but broker.client_secrets"), "{errors}");
}

#[tokio::test]
async fn the_metadata_lists_every_method_the_config_accepts() {
    let s = setup().await;
    let metadata: Value =
        reqwest::get(format!("{}/.well-known/oauth-authorization-server", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "private_key_jwt", "spiffe_jwt"])
    );
    assert_eq!(metadata["token_endpoint_auth_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(metadata["token_endpoint"], json!(token_endpoint()), "the aud a client assertion may name");
}

#[tokio::test]
async fn authlib_private_key_jwt_interoperates_with_the_http_face() {
    let python = std::env::var("TESSERA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "TESSERA_TEST_PYTHON is not set: run the suite with `bash scripts/test`, which installs authlib in a venv"
        )
    });
    // authlib signs assertions valid for an hour (its `expires_in` default): more than the 300 s default bound.
    let s = setup_with("client_assertion_max_lifetime = 3600", true, None, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, subject) = (dir.path().join("client.key.pem"), dir.path().join("subject.jwt"));
    std::fs::write(&key, &s.orchestrator.pem).unwrap();
    std::fs::write(&subject, k8s_assertion(600)).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/client_assertion_interop.py");
    let args: Vec<String> = vec![
        script.display().to_string(),
        "--base".into(),
        s.base.clone(),
        "--issuer".into(),
        BROKER.into(),
        "--client-id".into(),
        ORCH.into(),
        "--key-file".into(),
        key.display().to_string(),
        "--kid".into(),
        s.orchestrator.kid.clone(),
        "--assertion-file".into(),
        subject.display().to_string(),
        "--audience".into(),
        CRM.into(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .unwrap()
        .expect("run the authlib client assertion interop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "authlib client assertion interop failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "client assertion interop: 9 passed, 0 failed", "every check ran: {stdout}");
}

/// Cases for the HTTP property below: bounded for CI, more with `TESSERA_FUZZ_CASES`.
fn http_cases() -> u32 {
    std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

/// A client assertion with arbitrary claims and header, signed by a key no issuer publishes (or not signed).
fn arbitrary_assertion() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let name = prop_oneof![
        Just(json!(ORCH)),
        Just(json!(OPERATOR)),
        Just(json!(SPIFFE_AGENT)),
        Just(json!(null)),
        Just(json!(7)),
        ".{0,40}".prop_map(|s| json!(s)),
    ];
    let aud = prop_oneof![
        Just(json!(BROKER)),
        Just(json!(token_endpoint())),
        Just(json!([BROKER, 3])),
        ".{0,30}".prop_map(|s| json!(s))
    ];
    let time = prop_oneof![
        Just(json!(now() + 60)),
        Just(json!(-1)),
        Just(json!("soon")),
        (0..u64::MAX).prop_map(|t| json!(t))
    ];
    let alg = prop_oneof![Just("ES256"), Just("none"), Just("HS256"), Just("RS256"), Just("EdDSA"), Just("")];
    (name.clone(), name, aud, time, proptest::option::of(".{0,20}"), alg, ".{0,12}", proptest::bool::ANY, ".{0,120}")
        .prop_map(|(iss, sub, aud, exp, jti, alg, kid, sign, garbage)| {
            if garbage.len() % 5 == 0 {
                return garbage;
            }
            let mut claims = json!({ "iss": iss, "sub": sub, "aud": aud, "exp": exp, "iat": now() });
            if let Some(jti) = jti {
                claims["jti"] = json!(jti);
            }
            let header = json!({ "alg": alg, "kid": kid, "typ": "JWT" });
            if sign && alg == "ES256" {
                ClientKey::generate(&kid).signer.token_with_header(header, &claims)
            } else {
                unsigned(&header, &claims, b"not a signature")
            }
        })
}

/// Whatever a token request carries as a client assertion — its type, the JWT (any claims, any header, signed
/// by a key no issuer publishes, or garbage) and a `client_id` — the HTTP face answers `invalid_request` or
/// `invalid_client` and issues nothing; it never panics or answers 5xx.
#[test]
fn arbitrary_client_assertions_never_authenticate() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = runtime.block_on(setup());
    let kind = prop_oneof![Just(JWT_BEARER.to_string()), Just(JWT_SPIFFE.to_string()), Just(String::new()), ".{0,40}"];
    let client_id = proptest::option::of(prop_oneof![Just(ORCH.to_string()), Just(SUMMARISER.to_string()), ".{0,20}"]);
    let config = proptest::test_runner::Config { cases: http_cases(), failure_persistence: None, ..Default::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let url = format!("{}/oauth2/token", s.base);
    runner
        .run(&(kind, arbitrary_assertion(), client_id), |(kind, assertion, client_id)| {
            let subject = k8s_assertion(600);
            let mut form = exchange_form(&subject, &kind, &assertion);
            if let Some(id) = &client_id {
                form.push(("client_id", id));
            }
            let (status, body) = runtime.block_on(post(&url, &form, None));
            prop_assert!(status == 400 || status == 401, "status {status}: {body}");
            prop_assert!(matches!(body["error"].as_str(), Some("invalid_request" | "invalid_client")), "{body}");
            prop_assert!(body.get("access_token").is_none());
            Ok(())
        })
        .unwrap();
}

/// Through both faces of a real `tessera serve`, with debug logs: no client assertion — accepted, replayed,
/// refused — reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_assertion_reaches_the_logs() {
    use crate::support::process::Serving;
    let (builder, orchestrator, _operator, _servers) = configure("", true, None, None).await;
    let dir = builder.write_config();
    let config = dir.path().join("tessera.toml");
    let server = tokio::task::spawn_blocking(move || {
        Serving::start(&["--config", config.to_str().unwrap()], |c| {
            c.env("RUST_LOG", "debug").env_remove("TESSERA__LOG__LEVEL");
        })
    })
    .await
    .unwrap();
    let token_url = format!("http://{}/oauth2/token", server.http);
    let accepted = orchestrator.sign(&pkjwt_claims(ORCH, BROKER));
    let refused = orchestrator.sign(&pkjwt_claims(ORCH, "https://elsewhere.example"));
    let svid = svid(SPIFFE_AGENT);
    let subject = k8s_assertion(600);
    let (status, body) = post(&token_url, &exchange_form(&subject, JWT_BEARER, &accepted), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(post(&token_url, &exchange_form(&subject, JWT_BEARER, &accepted), None).await.0, 401, "replay");
    assert_eq!(post(&token_url, &exchange_form(&subject, JWT_BEARER, &refused), None).await.0, 401);
    let mut grpc = tessera::grpc::pb::token_broker_client::TokenBrokerClient::connect(server.url()).await.unwrap();
    let r = with_assertion(request(&subject, CRM, "crm:read"), JWT_SPIFFE, &svid, None);
    grpc.exchange_token(r).await.expect("the SVID authenticates");
    let r = with_assertion(request(&subject, CRM, "crm:read"), JWT_SPIFFE, &svid, None);
    assert!(grpc.exchange_token(r).await.is_err(), "replay");

    let (_, logs) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(logs.contains("event=exchange"), "the debug log is not empty: {logs}");
    for (what, assertion) in [("the accepted assertion", &accepted), ("the refused one", &refused), ("the SVID", &svid)]
    {
        let signature = assertion.rsplit('.').next().unwrap();
        assert!(!logs.contains(assertion.as_str()) && !logs.contains(signature), "{what} appears in the logs");
    }
}

/// The client commands authenticate with a client assertion read from a file, on gRPC; the same file used
/// twice is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_authenticates_with_a_client_assertion_file() {
    use crate::support::process::tessera;
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (operator, orchestrator) = (dir.path().join("operator.jwt"), dir.path().join("orchestrator.jwt"));
    std::fs::write(&operator, s.operator.sign(&pkjwt_claims(OPERATOR, BROKER))).unwrap();
    std::fs::write(&orchestrator, s.orchestrator.sign(&pkjwt_claims(ORCH, &token_endpoint()))).unwrap();
    let addr = format!("http://{}", s.broker.addr);
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let output = tessera().args(&args).env_remove("TESSERA_CLIENT_SECRET").output().expect("run tessera");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    let revoke = |file: &std::path::Path, task: &str| {
        let args = ["revoke", "--addr", &addr, "--task-id", task, "--client-assertion-file", file.to_str().unwrap()];
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let (ok, stdout, stderr) = run(revoke(&operator, "cli-task")).await.unwrap();
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["revoked"], json!("task"), "{stdout}");
    let (ok, _, stderr) = run(revoke(&operator, "cli-task-2")).await.unwrap();
    assert!(!ok && stderr.contains("invalid_client"), "a replay: {stderr}");
    let subject = k8s_assertion(600);
    let exchange: Vec<String> = [
        "exchange",
        "--addr",
        &addr,
        "--as-client",
        ORCH,
        "--client-assertion-file",
        orchestrator.to_str().unwrap(),
        "--subject-token",
        &subject,
        "--audience",
        CRM,
        "--scope",
        "crm:read",
        "--task-id",
        "cli-exchange",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (ok, stdout, stderr) = run(exchange).await.unwrap();
    assert!(ok, "{stdout}{stderr}");
    let token = serde_json::from_str::<Value>(&stdout).unwrap()["access_token"].as_str().unwrap().to_string();
    assert_eq!(decode(&token).client_id, ORCH);
}

/// The Python SDK's `SpiffeJwt` against a real broker's HTTP face: a JWT-SVID per request, naming its client
/// (`private_key_jwt` is scenario 4's, examples/scenarios/cloud).
#[tokio::test]
async fn the_python_sdk_authenticates_with_a_jwt_svid() {
    let python = crate::sdk::python();
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let svids: Vec<String> = (0..2).map(|_| svid(SPIFFE_AGENT)).collect();
    std::fs::write(dir.path().join("svids"), svids.join("\n")).unwrap();
    std::fs::write(dir.path().join("subject"), k8s_assertion(600)).unwrap();
    let script = r#"
import json, sys
from tessera_client import Broker, SpiffeJwt
folder, base, client_id = sys.argv[1:4]
svids = open(f"{folder}/svids").read().split()
broker = Broker(base, SpiffeJwt(lambda audience: svids.pop(0), client_id=client_id),
                subject_token=open(f"{folder}/subject").read().strip())
token = broker.exchange("https://crm.example", "crm:read", task_id="sdk-svid")
again = broker.exchange("https://crm.example", "crm:read", task_id="sdk-svid", cache=False)
print(json.dumps({"first": token.access_token, "second": again.access_token, "left": len(svids)}))
"#;
    let (folder, base) = (dir.path().to_path_buf(), s.base.clone());
    // Off the test's runtime thread, which serves the broker the script calls.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).args(["-c", script]).arg(folder).args([&base, SUMMARISER]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(decode(out["first"].as_str().unwrap()).client_id, SUMMARISER);
    assert_eq!(decode(out["second"].as_str().unwrap()).client_id, SUMMARISER);
    assert_eq!(out["left"], 0, "one SVID per request");
}
