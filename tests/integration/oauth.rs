//! The plain-OAuth face over HTTP, as an OAuth client sees it: forms in, RFC 6749 / 8693 / 7662 / 7009 JSON
//! out, errors with their RFC 6749 §5.2 code and status, and the same core (same invariants, same revocation)
//! as gRPC.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::redis::RedisServer;
use crate::support::*;

/// Form fields, owned.
type Form = Vec<(String, String)>;

/// Serves the broker's HTTP face on `127.0.0.1:0`; returns its base URL.
async fn http_face(broker: &TestBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    format!("http://{addr}")
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
}

/// POSTs `form` (pairs, repeats allowed) to `url`; returns the status, the headers and the JSON body.
async fn post(
    url: &str,
    form: &[(&str, &str)],
    authorization: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut request =
        reqwest::Client::new().post(url).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn exchange_form<'a>(subject: &'a str, audience: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", JWT),
        ("audience", audience),
        ("scope", scope),
        ("task_id", "http-task"),
    ]
}

#[tokio::test]
async fn token_exchange_and_jwt_bearer_over_http() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let token_url = format!("{base}/oauth2/token");
    let assertion = k8s_assertion(600);

    let (status, headers, body) = post(&token_url, &exchange_form(&assertion, CRM, "crm:read crm:export"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!((body["token_type"].as_str(), body["issued_token_type"].as_str()), (Some("Bearer"), Some(ACCESS_TOKEN)));
    assert_eq!(body["scope"], "crm:read", "policy declines crm:export; the response says what was granted");
    let c = decode(body["access_token"].as_str().unwrap());
    assert_eq!((c.aud.as_str(), c.task_id.as_str(), c.sub.as_str()), (CRM, "http-task", ORCHESTRATOR));
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0 && s <= 300));

    // RFC 7523 §2.1: the workload's own assertion as the grant, exchanged as a subject with no actor.
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", assertion.as_str()),
        ("scope", "crm:read"),
        ("resource", CRM),
        ("task_id", "bearer-task"),
    ];
    let (status, _, body) = post(&token_url, &form, None).await;
    assert_eq!(status, 200, "{body}");
    let c = decode(body["access_token"].as_str().unwrap());
    assert_eq!((c.aud.as_str(), c.task_id.as_str(), c.act.is_none()), (CRM, "bearer-task", true));

    // An actor token is named in `act`, as over gRPC.
    let spiffe = spiffe_assertion(600);
    let mut form = exchange_form(&assertion, CRM, "crm:read");
    form.extend([("actor_token", spiffe.as_str()), ("actor_token_type", JWT)]);
    let (status, _, body) = post(&token_url, &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(body["access_token"].as_str().unwrap()).act.unwrap().sub, SPIFFE_AGENT);
}

#[tokio::test]
async fn clients_authenticate_with_basic_or_post_never_both() {
    let broker = TestBroker::start().await;
    let token_url = format!("{}/oauth2/token", http_face(&broker).await);
    let assertion = k8s_assertion(600);
    let form = exchange_form(&assertion, CRM, "crm:read");

    let (status, _, body) = post(&token_url, &form, Some(&basic("orchestrator", CLIENT_SECRET))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(body["access_token"].as_str().unwrap()).client_id, "orchestrator");

    let mut posted = form.clone();
    posted.extend([("client_id", "orchestrator"), ("client_secret", CLIENT_SECRET)]);
    let (status, _, body) = post(&token_url, &posted, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode(body["access_token"].as_str().unwrap()).client_id, "orchestrator");

    let (status, _, body) = post(&token_url, &posted, Some(&basic("orchestrator", CLIENT_SECRET))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "two methods");

    for authorization in [basic("orchestrator", "wrong"), basic("nobody", "x"), "Bearer x".to_string()] {
        let (status, headers, body) = post(&token_url, &form, Some(&authorization)).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{authorization}");
        assert_eq!(headers["www-authenticate"], "Basic realm=\"tessera\"");
        assert!(!body.to_string().contains("wrong"));
    }
    // A client allowed only to introspect may not exchange.
    let (status, _, body) = post(&token_url, &form, Some(&basic("gateway", CLIENT_SECRET))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")));
}

#[tokio::test]
async fn bad_requests_get_their_oauth_error_and_nothing_is_issued() {
    let broker = TestBroker::start().await;
    let token_url = format!("{}/oauth2/token", http_face(&broker).await);
    let assertion = k8s_assertion(600);
    let ok = exchange_form(&assertion, CRM, "crm:read");
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f: Form = ok.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (k, v) in extra {
            f.retain(|(name, _)| name != k);
            f.push((k.to_string(), v.to_string()));
        }
        f
    };
    let cases: Vec<(&str, Form, &str)> = vec![
        ("unknown grant", with(&[("grant_type", "password")]), "unsupported_grant_type"),
        (
            "no grant",
            ok.iter().filter(|(k, _)| *k != "grant_type").map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            "invalid_request",
        ),
        (
            "no subject token",
            ok.iter().filter(|(k, _)| *k != "subject_token").map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            "invalid_request",
        ),
        ("forged subject token", with(&[("subject_token", "eyJhbGciOiJub25lIn0.e30.")]), "invalid_grant"),
        ("scope not offered", with(&[("scope", "other:read")]), "invalid_scope"),
        ("malformed scope", with(&[("scope", "crm:read\nevent=revoke")]), "invalid_scope"),
        ("audience not catalogued", with(&[("audience", "https://unknown.example")]), "invalid_target"),
        (
            "no task",
            ok.iter().filter(|(k, _)| *k != "task_id").map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            "invalid_request",
        ),
    ];
    for (what, form, error) in cases {
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, headers, body) = post(&token_url, &pairs, None).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{what}: {body}");
        assert!(body["access_token"].is_null() && body["error_description"].is_string(), "{what}: {body}");
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        assert!(!body.to_string().contains(&assertion), "{what}: the error echoes the assertion");
    }
    // Two audiences (repeats are allowed by the form, then judged by the single-target rule).
    let mut two = ok.clone();
    two.push(("audience", OTHER));
    let (status, _, body) = post(&token_url, &two, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")));
    // A parameter that must appear once, repeated.
    let mut repeated = ok.clone();
    repeated.push(("scope", "crm:write"));
    let (status, _, body) = post(&token_url, &repeated, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");

    // Not a form, too many fields, too large, not UTF-8.
    let raw = |content_type: &'static str, body: Vec<u8>| {
        let url = token_url.clone();
        async move {
            let r =
                reqwest::Client::new().post(url).header("content-type", content_type).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = raw("application/json", br#"{"grant_type":"x"}"#.to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let many: String = (0..40).map(|i| format!("f{i}=v&")).collect();
    let (status, body) = raw("application/x-www-form-urlencoded", many.into_bytes()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, body) = raw("application/x-www-form-urlencoded", vec![b'a'; 300 * 1024]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "an oversized body");
    let (status, body) = raw("application/x-www-form-urlencoded", b"grant_type=\xff\xfe".to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, body) = raw("application/x-www-form-urlencoded", b"grant_type=%ff".to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    // Headers past the server's limit are refused by the HTTP layer itself (431), and the face keeps serving.
    let huge = "x".repeat(512 * 1024);
    let r = reqwest::Client::new().post(&token_url).header("x-padding", huge).body("").send().await;
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.status() == 431), "{r:?}");
    let (status, _, _) = post(&token_url, &ok, None).await;
    assert_eq!(status, 200, "the face still serves");
}

#[tokio::test]
async fn introspection_and_revocation_over_http() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let (_, _, issued) = post(
        &format!("{base}/oauth2/token"),
        &[
            exchange_form(&k8s_assertion(600), CRM, "crm:read"),
            vec![("actor_token", spiffe_assertion(600).as_str()), ("actor_token_type", JWT)],
        ]
        .concat(),
        None,
    )
    .await;
    let token = issued["access_token"].as_str().unwrap().to_string();
    let introspect = async |token: &str, auth: Option<&str>| {
        post(&format!("{base}/oauth2/introspect"), &[("token", token)], auth).await
    };

    let (status, headers, body) = introspect(&token, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        (body["active"].as_bool(), body["aud"].as_str(), body["task_id"].as_str()),
        (Some(true), Some(CRM), Some("http-task"))
    );
    assert_eq!(body["act"], json!({ "sub": SPIFFE_AGENT, "iss": "spiffe://agents.example.org" }));
    assert_eq!((body["scope"].as_str(), body["token_type"].as_str()), (Some("crm:read"), Some("Bearer")));
    // The gateway client may introspect (it has the RPC); the orchestrator client may not.
    let (status, _, body) = introspect(&token, Some(&basic("gateway", CLIENT_SECRET))).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)));
    let (status, _, body) = introspect(&token, Some(&basic("orchestrator", CLIENT_SECRET))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")));
    // Something that is not a tessera token is simply inactive.
    let (_, _, body) = introspect("not-a-token", None).await;
    assert_eq!(body, json!({ "active": false }));
    let (status, _, body) = post(&format!("{base}/oauth2/introspect"), &[], None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    // RFC 7009: revoke the token; an invalid token is answered 200 all the same.
    let revoke_url = format!("{base}/oauth2/revoke");
    let (status, _, body) = post(&revoke_url, &[("token", &token), ("token_type_hint", "access_token")], None).await;
    assert_eq!((status, body["revoked"].as_str()), (200, Some("jti")), "{body}");
    let (_, _, body) = introspect(&token, None).await;
    assert_eq!(body, json!({ "active": false }));
    let (status, _, body) = post(&revoke_url, &[("token", "garbage")], None).await;
    assert_eq!((status, body), (200, json!({})));
    // tessera's own targets; exactly one at a time.
    let (status, _, body) = post(&revoke_url, &[("task_id", "http-task"), ("reason", "done")], None).await;
    assert_eq!((status, body["revoked"].as_str()), (200, Some("task")));
    let (status, _, body) = post(&revoke_url, &[("subject", ORCHESTRATOR), ("issuer", "kubernetes")], None).await;
    assert_eq!((status, body["revoked"].as_str()), (200, Some("subject")));
    let (status, _, body) = post(&revoke_url, &[("target_client_id", "orchestrator")], None).await;
    assert_eq!((status, body["revoked"].as_str()), (200, Some("client")));
    let (status, _, body) = post(&revoke_url, &[("jti", "a"), ("task_id", "b")], None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, _, body) = post(&revoke_url, &[("subject", ORCHESTRATOR)], None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, _, body) = post(&revoke_url, &[], None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn jwks_and_authorization_server_metadata() {
    let broker = TestBroker::start().await;
    let base = http_face(&broker).await;
    let response = reqwest::get(format!("{base}/.well-known/jwks.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/jwk-set+json");
    assert!(response.headers()["cache-control"].to_str().unwrap().contains("max-age="));
    let jwks: Value = response.json().await.unwrap();
    let grpc = broker.client().await.get_jwks(tessera::grpc::pb::GetJwksRequest::default()).await.unwrap().into_inner();
    assert_eq!(jwks, serde_json::from_str::<Value>(&grpc.jwks_json).unwrap(), "one key set on both faces");

    let metadata: Value =
        reqwest::get(format!("{base}/.well-known/oauth-authorization-server")).await.unwrap().json().await.unwrap();
    assert_eq!(metadata["issuer"], BROKER);
    for (key, path) in [
        ("token_endpoint", "/oauth2/token"),
        ("introspection_endpoint", "/oauth2/introspect"),
        ("revocation_endpoint", "/oauth2/revoke"),
        ("jwks_uri", "/.well-known/jwks.json"),
    ] {
        assert_eq!(metadata[key], format!("{BROKER}{path}"), "{key}");
    }
    assert_eq!(
        metadata["grant_types_supported"],
        json!([TOKEN_EXCHANGE, "urn:ietf:params:oauth:grant-type:jwt-bearer"])
    );
    assert_eq!(metadata["token_endpoint_auth_methods_supported"], json!(["client_secret_basic", "client_secret_post"]));
    assert_eq!(metadata["introspection_signing_alg_values_supported"], json!(["EdDSA"]), "RFC 9701 answers");
    assert_eq!(metadata["scopes_supported"], json!(["crm:export", "crm:read", "crm:write", "other:read"]));
    assert!(metadata.get("authorization_endpoint").is_none(), "only what tessera does");
}

#[tokio::test]
async fn a_store_outage_is_503_with_retry_after() {
    let mut redis = RedisServer::start();
    let broker = TestBroker::builder().redis(&redis.url(), "strict").start().await;
    let token_url = format!("{}/oauth2/token", http_face(&broker).await);
    let assertion = k8s_assertion(600);
    let form = exchange_form(&assertion, CRM, "crm:read");
    assert_eq!(post(&token_url, &form, None).await.0, 200);
    redis.kill();
    let (status, headers, body) = post(&token_url, &form, None).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert_eq!(headers["retry-after"], "1");
}

/// The form an HTTP client sends for the same request a gRPC client would (empty fields left out).
fn form_of(r: &tessera::grpc::pb::ExchangeTokenRequest) -> Form {
    let mut f: Form = Vec::new();
    let mut one = |name: &str, value: &str| {
        if !value.is_empty() {
            f.push((name.to_string(), value.to_string()));
        }
    };
    one("grant_type", &r.grant_type);
    one("scope", &r.scope);
    one("requested_token_type", &r.requested_token_type);
    one("subject_token", &r.subject_token);
    one("subject_token_type", &r.subject_token_type);
    one("actor_token", &r.actor_token);
    one("actor_token_type", &r.actor_token_type);
    one("task_id", &r.task_id);
    one("session_id", &r.session_id);
    one("purpose", &r.purpose);
    f.extend(r.resource.iter().map(|v| ("resource".to_string(), v.clone())));
    f.extend(r.audience.iter().map(|v| ("audience".to_string(), v.clone())));
    f
}

#[tokio::test]
async fn the_grpc_bad_input_matrix_gets_the_same_oauth_errors_over_http() {
    let broker = TestBroker::start().await;
    let token_url = format!("{}/oauth2/token", http_face(&broker).await);
    let valid = k8s_assertion(600);
    let mut cases = 0;
    for (what, edit, _, reason) in crate::bad_input::bad_request_cases() {
        let mut r = request(&valid, CRM, "crm:read");
        edit(&mut r);
        let form = form_of(&r);
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, _, body) = post(&token_url, &pairs, None).await;
        // A missing parameter is `invalid_request` in RFC 6749; gRPC sees an empty grant_type as an unknown one.
        let expected = if what == "no grant_type" { "invalid_request" } else { reason };
        assert_eq!((status, body["error"].as_str()), (400, Some(expected)), "{what}: {body}");
        assert!(body["access_token"].is_null() && !body.to_string().contains(&valid), "{what}: {body}");
        cases += 1;
    }
    for (what, token) in crate::bad_input::bad_subject_tokens() {
        let (status, _, body) = post(&token_url, &exchange_form(&token, CRM, "crm:read"), None).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{what}: {body}");
        assert!(body["access_token"].is_null(), "{what}");
        if token.len() > 16 {
            assert!(!body.to_string().contains(&token), "{what}: the error echoes the token");
        }
        cases += 1;
    }
    assert!(cases >= 50, "the whole matrix ran ({cases} cases)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs_through_the_http_face() {
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
    let token_url = format!("http://{}/oauth2/token", server.http);
    let assertion = k8s_assertion(600);
    let wrong_secret = "not-the-secret-but-still-a-secret-0123";
    let mut form = exchange_form(&assertion, CRM, "crm:read");
    form.extend([("client_id", "orchestrator"), ("client_secret", CLIENT_SECRET)]);
    let (status, _, body) = post(&token_url, &form, None).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let mut wrong = exchange_form(&assertion, CRM, "crm:read");
    wrong.extend([("client_id", "orchestrator"), ("client_secret", wrong_secret)]);
    assert_eq!(post(&token_url, &wrong, None).await.0, 401);
    let introspect = format!("http://{}/oauth2/introspect", server.http);
    assert_eq!(post(&introspect, &[("token", token.as_str())], Some(&basic("gateway", CLIENT_SECRET))).await.0, 200);

    let (_, logs) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(logs.contains("event=exchange"), "the debug log is not empty: {logs}");
    for (what, secret) in [
        ("the client secret", CLIENT_SECRET),
        ("a wrong client secret", wrong_secret),
        ("the assertion", assertion.as_str()),
        ("the access token", token.as_str()),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the logs");
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() > 20 && secret.contains('.')) {
            assert!(!logs.contains(signature), "{what}'s signature appears in the logs");
        }
    }
}
