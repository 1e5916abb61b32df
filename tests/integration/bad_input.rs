//! Every bad input gets the contracted status and OAuth error code, never echoes the token, and issues
//! nothing.

use aws_lc_rs::hmac;
use serde_json::json;
use tessera::grpc::pb;
use tonic::Code;

use crate::support::*;

fn k8s_with(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = claims("kubernetes", 600);
    f(&mut c);
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

fn unsigned(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

/// Subject tokens that must be refused with `invalid_grant`, each with what is wrong with it.
pub(crate) fn bad_subject_tokens() -> Vec<(&'static str, String)> {
    let k8s_kid = kid("kubernetes.jwks.json");
    let valid = k8s_assertion(600);
    // The issuer's public key, which anyone has: the classic RS256 → HS256 key-confusion attack uses it
    // as the HMAC secret.
    let public_pem = std::fs::read_to_string(fixtures().join("kubernetes.pub.pem")).unwrap();
    let hs256 = {
        let header = json!({ "alg": "HS256", "typ": "JWT", "kid": k8s_kid });
        let input =
            format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims("kubernetes", 600).to_string().as_bytes()));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, public_pem.as_bytes()), input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let k8s = Signer::rs256("kubernetes.key.pem");
    let header_with = |extra: serde_json::Value| {
        let mut h = json!({ "typ": "JWT", "kid": k8s_kid });
        h.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        k8s.token_with_header(h, &claims("kubernetes", 600))
    };
    vec![
        ("malformed", "not.a.jwt".to_string()),
        ("garbage", "%%%%".to_string()),
        ("truncated", valid[..valid.len() / 2].to_string()),
        ("two parts", valid.rsplit_once('.').unwrap().0.to_string()),
        ("oversized", format!("{}.{}.{}", b64(b"{\"alg\":\"RS256\"}"), "A".repeat(20 * 1024), "AAAA")),
        ("alg none", unsigned(&json!({ "alg": "none", "kid": k8s_kid }), &claims("kubernetes", 600), b"")),
        ("HMAC with the public key", hs256),
        ("unknown kid", k8s.token("no-such-kid", &claims("kubernetes", 600))),
        ("signed by another key", Signer::rs256("github.key.pem").token(&k8s_kid, &claims("kubernetes", 600))),
        (
            "EdDSA not allowed for this issuer",
            Signer::eddsa("attacker.key.pem").token(&k8s_kid, &claims("kubernetes", 600)),
        ),
        (
            "PS256 not allowed for this issuer",
            Signer::ps256("kubernetes.key.pem").token(&k8s_kid, &claims("kubernetes", 600)),
        ),
        ("jku header", header_with(json!({ "jku": "https://attacker.example/jwks.json" }))),
        ("x5u header", header_with(json!({ "x5u": "https://attacker.example/cert.pem" }))),
        ("embedded jwk header", header_with(json!({ "jwk": { "kty": "OKP", "crv": "Ed25519", "x": "AAAA" } }))),
        ("crit header", header_with(json!({ "crit": ["exp"], "exp": 1 }))),
        ("unknown issuer", k8s_with(|c| c["iss"] = "https://attacker.example".into())),
        (
            "no issuer, not SPIFFE",
            k8s_with(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        (
            "expired",
            k8s_with(|c| {
                c["exp"] = (now() - 3600).into();
                c["iat"] = (now() - 4000).into();
                c["nbf"] = (now() - 4000).into();
            }),
        ),
        ("not yet valid", k8s_with(|c| c["nbf"] = (now() + 3600).into())),
        ("issued in the future", k8s_with(|c| c["iat"] = (now() + 3600).into())),
        (
            "no exp",
            k8s_with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("wrong audience", k8s_with(|c| c["aud"] = json!(["https://someone-else.example"]))),
        (
            "no audience",
            k8s_with(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "missing sub",
            k8s_with(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        ("empty sub", k8s_with(|c| c["sub"] = "".into())),
        (
            "claims not JSON",
            format!(
                "{}.{}.{}",
                b64(json!({"alg":"RS256","kid":k8s_kid}).to_string().as_bytes()),
                b64(b"not json"),
                b64(b"sig")
            ),
        ),
    ]
}

#[tokio::test]
async fn bad_subject_tokens_are_invalid_grant() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    for (what, token) in bad_subject_tokens() {
        let result = client.exchange_token(request(&token, CRM, "crm:read")).await;
        let status = match result {
            Ok(_) => panic!("{what}: a token was issued"),
            Err(s) => s,
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {}", status.message());
        assert_eq!(oauth_error(&status), "invalid_grant", "{what}");
        assert!(status.message().starts_with("invalid_grant: subject_token "), "{what}: {}", status.message());
        assert!(!status.message().contains(&token), "{what}: the message echoes the token");
    }
}

#[tokio::test]
async fn bad_actor_tokens_are_invalid_grant() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    for (what, token) in bad_subject_tokens() {
        let mut req = request(&k8s_assertion(600), CRM, "crm:read");
        req.actor_token = token.clone();
        req.actor_token_type = JWT.into();
        let status = assert_refused(client.exchange_token(req).await, Code::Unauthenticated, "invalid_grant", &token);
        assert!(status.message().contains("actor_token"), "{what}: {}", status.message());
    }
}

#[tokio::test]
async fn bad_requests_get_their_oauth_error() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let valid = k8s_assertion(600);
    for (what, edit, code, reason) in bad_request_cases() {
        let mut req = request(&valid, CRM, "crm:read");
        edit(&mut req);
        let result = client.exchange_token(req).await;
        let status = match result {
            Ok(_) => panic!("{what}: a token was issued"),
            Err(s) => s,
        };
        assert_eq!((status.code(), oauth_error(&status).as_str()), (code, reason), "{what}: {}", status.message());
        assert!(!status.message().contains(&valid), "{what}: the message echoes the token");
    }
}

/// An edit that spoils a valid exchange request.
pub(crate) type Edit = Box<dyn Fn(&mut pb::ExchangeTokenRequest)>;

/// Bad exchange requests, each with the gRPC status and OAuth error it gets (the HTTP face runs them too).
pub(crate) fn bad_request_cases() -> Vec<(&'static str, Edit, Code, &'static str)> {
    vec![
        (
            "wrong grant_type",
            Box::new(|r| r.grant_type = "client_credentials".into()),
            Code::InvalidArgument,
            "unsupported_grant_type",
        ),
        ("no grant_type", Box::new(|r| r.grant_type.clear()), Code::InvalidArgument, "unsupported_grant_type"),
        (
            "unknown subject_token_type",
            Box::new(|r| r.subject_token_type = "urn:example:unknown".into()),
            Code::InvalidArgument,
            "invalid_request",
        ),
        (
            "missing subject_token_type",
            Box::new(|r| r.subject_token_type.clear()),
            Code::InvalidArgument,
            "invalid_request",
        ),
        ("missing subject_token", Box::new(|r| r.subject_token.clear()), Code::InvalidArgument, "invalid_request"),
        (
            "unknown requested_token_type",
            Box::new(|r| r.requested_token_type = "urn:ietf:params:oauth:token-type:saml2".into()),
            Code::InvalidArgument,
            "invalid_request",
        ),
        (
            "actor_token without type",
            Box::new(|r| {
                r.actor_token = spiffe_assertion(600);
            }),
            Code::InvalidArgument,
            "invalid_request",
        ),
        (
            "actor type without token",
            Box::new(|r| r.actor_token_type = JWT.into()),
            Code::InvalidArgument,
            "invalid_request",
        ),
        ("missing task_id", Box::new(|r| r.task_id.clear()), Code::InvalidArgument, "invalid_request"),
        ("oversized task_id", Box::new(|r| r.task_id = "t".repeat(200)), Code::InvalidArgument, "invalid_request"),
        ("task_id with spaces", Box::new(|r| r.task_id = "task 42".into()), Code::InvalidArgument, "invalid_request"),
        (
            "oversized session_id",
            Box::new(|r| r.session_id = "s".repeat(200)),
            Code::InvalidArgument,
            "invalid_request",
        ),
        ("oversized purpose", Box::new(|r| r.purpose = "p".repeat(2000)), Code::InvalidArgument, "invalid_request"),
        (
            "purpose with control characters",
            Box::new(|r| r.purpose = "line\nbreak".into()),
            Code::InvalidArgument,
            "invalid_request",
        ),
        ("no audience", Box::new(|r| r.audience.clear()), Code::InvalidArgument, "invalid_request"),
        (
            "audience not in catalog",
            Box::new(|r| r.audience = vec!["https://not-in-catalog.example".into()]),
            Code::PermissionDenied,
            "invalid_target",
        ),
        (
            "two audiences",
            Box::new(|r| r.audience = vec![CRM.into(), OTHER.into()]),
            Code::PermissionDenied,
            "invalid_target",
        ),
        (
            "audience and another resource",
            Box::new(|r| r.resource = vec![OTHER.into()]),
            Code::PermissionDenied,
            "invalid_target",
        ),
        (
            "resource not a URI",
            Box::new(|r| {
                r.audience.clear();
                r.resource = vec!["crm".into()];
            }),
            Code::PermissionDenied,
            "invalid_target",
        ),
        (
            "resource with fragment",
            Box::new(|r| {
                r.audience.clear();
                r.resource = vec![format!("{CRM}#x")];
            }),
            Code::PermissionDenied,
            "invalid_target",
        ),
        (
            "oversized audience",
            Box::new(|r| r.audience = vec![format!("https://{}", "a".repeat(600))]),
            Code::PermissionDenied,
            "invalid_target",
        ),
        ("no scope", Box::new(|r| r.scope.clear()), Code::PermissionDenied, "invalid_scope"),
        (
            "scope not offered by the audience",
            Box::new(|r| r.scope = "other:read".into()),
            Code::PermissionDenied,
            "invalid_scope",
        ),
        ("unknown scope", Box::new(|r| r.scope = "admin".into()), Code::PermissionDenied, "invalid_scope"),
        (
            "scope refused by policy",
            Box::new(|r| r.scope = "crm:export".into()),
            Code::PermissionDenied,
            "invalid_scope",
        ),
        ("oversized scope", Box::new(|r| r.scope = "crm:read ".repeat(200)), Code::PermissionDenied, "invalid_scope"),
        (
            "malformed scope token",
            Box::new(|r| r.scope = "crm:\"read\"".into()),
            Code::PermissionDenied,
            "invalid_scope",
        ),
    ]
}

#[tokio::test]
async fn a_scope_the_subject_does_not_hold_is_refused() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    // An upstream assertion that carries scopes bounds the grant.
    let scoped = k8s_with(|c| c["scope"] = "crm:read".into());
    assert!(client.exchange_token(request(&scoped, CRM, "crm:read")).await.is_ok());
    let escalate = client.exchange_token(request(&scoped, CRM, "crm:read crm:write")).await;
    let status = assert_refused(escalate, Code::PermissionDenied, "invalid_scope", &scoped);
    assert!(status.message().contains("not held"), "{}", status.message());
    // So does a tessera token.
    let token =
        client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner().access_token;
    let mut req = request(&token, CRM, "crm:write");
    req.subject_token_type = ACCESS_TOKEN.into();
    assert_refused(client.exchange_token(req).await, Code::PermissionDenied, "invalid_scope", &token);
}

#[tokio::test]
async fn delegation_depth_is_bounded() {
    let broker = TestBroker::builder().broker_toml("max_delegation_depth = 2").start().await;
    let mut client = broker.client().await;
    let mut token = k8s_assertion(600);
    let mut token_type = JWT;
    for depth in 1..=3 {
        let mut req = request(&token, CRM, "crm:read");
        req.subject_token_type = token_type.into();
        req.actor_token = spiffe_assertion(600);
        req.actor_token_type = JWT.into();
        let result = client.exchange_token(req).await;
        if depth <= 2 {
            token = result.unwrap().into_inner().access_token;
            token_type = ACCESS_TOKEN;
            assert_eq!(decode(&token).depth(), depth);
        } else {
            let status = assert_refused(result, Code::Unauthenticated, "invalid_grant", &token);
            assert!(status.message().contains("depth"), "{}", status.message());
        }
    }
}

#[tokio::test]
async fn exchange_chains_are_bounded() {
    let broker = TestBroker::builder().broker_toml("max_chain_length = 2").start().await;
    let mut client = broker.client().await;
    let mut token =
        client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner().access_token;
    for hop in 1..=3 {
        let mut req = request(&token, CRM, "crm:read");
        req.subject_token_type = ACCESS_TOKEN.into();
        let result = client.exchange_token(req).await;
        if hop <= 2 {
            token = result.unwrap().into_inner().access_token;
        } else {
            assert_refused(result, Code::Unauthenticated, "invalid_grant", &token);
        }
    }
}

#[tokio::test]
async fn a_forged_tessera_token_is_refused() {
    let broker = TestBroker::start().await;
    let mut client = broker.client().await;
    let token = client
        .exchange_token(request(&k8s_assertion(600), BROKER, "crm:read"))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    // Widen the scope in the payload, keep the signature.
    let mut c = serde_json::to_value(decode(&token)).unwrap();
    c["scope"] = "crm:read crm:write crm:export".into();
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2]);
    let mut req = request(&forged, CRM, "crm:write");
    req.subject_token_type = ACCESS_TOKEN.into();
    assert_refused(client.exchange_token(req).await, Code::Unauthenticated, "invalid_grant", &forged);
    // A token shaped like tessera's but signed by someone else, claiming tessera as issuer.
    let mut own = serde_json::to_value(decode(&token)).unwrap();
    own["jti"] = "forged".into();
    let header = json!({ "typ": "at+jwt", "kid": parts[0] });
    let fake = Signer::eddsa("attacker.key.pem").token_with_header(header, &own);
    let mut req = request(&fake, CRM, "crm:read");
    req.subject_token_type = ACCESS_TOKEN.into();
    assert_refused(client.exchange_token(req).await, Code::Unauthenticated, "invalid_grant", &fake);
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_decoding() {
    let broker = TestBroker::start().await;
    let mut req = request(&k8s_assertion(600), CRM, "crm:read");
    req.purpose = "p".repeat(128 * 1024);
    let status = broker.client().await.exchange_token(req).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
}
