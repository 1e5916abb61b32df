//! RFC 9396 Rich Authorization Requests end to end: a support agent's exchange for one case's record (gRPC and
//! HTTP), the token and Introspect carrying the details, forward-auth letting that token through for that case
//! only and for reads only, a summariser's re-exchange narrowing but never widening, and bad input refused
//! with `invalid_authorization_details` on both faces with nothing issued.

use std::sync::Arc;

use serde_json::{Value, json};
use tessera::grpc::pb;

use crate::support::*;

/// The CRM's detail types: `crm_case` (actions on one case record) and `payment` (an amount limit).
pub const CRM_DETAILS: &str = r#"
[[audiences.authorization_details]]
type = "crm_case"
schema = { type = "object", required = ["actions", "identifier"], additionalProperties = false, properties = { actions = { type = "array", minItems = 1, uniqueItems = true, items = { enum = ["read", "write"] } }, identifier = { type = "string", minLength = 1, maxLength = 64 } } }

[[audiences.authorization_details]]
type = "payment"
schema = { type = "object", required = ["amount", "currency"], additionalProperties = false, properties = { amount = { type = "number", minimum = 0, maximum = 10000 }, currency = { enum = ["EUR", "USD"] } } }
narrowing = { amount = "at_most" }
"#;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/cases/{case}"
audience = "https://crm.example"
scopes = ["crm:read"]
authorization_details = { type = "crm_case", fields = { identifier = "{case}" } }
"#;

pub async fn rar_broker() -> TestBroker {
    TestBroker::builder().crm_toml(CRM_DETAILS).extra_toml(ROUTES).start().await
}

async fn http_face(broker: &TestBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    format!("http://{addr}")
}

fn case(actions: &[&str], id: &str) -> Value {
    json!({"type": "crm_case", "actions": actions, "identifier": id})
}

/// A support agent's request for `details` on the CRM.
fn with_details(subject: &str, details: &Value) -> pb::ExchangeTokenRequest {
    let mut r = request(subject, CRM, "crm:read crm:write");
    r.authorization_details = details.to_string();
    r
}

/// A re-exchange of tessera token `parent` (same task), with `details` (or none).
fn narrowing(parent: &str, details: Option<&Value>) -> pb::ExchangeTokenRequest {
    let mut r = request(parent, CRM, "crm:read");
    r.subject_token_type = ACCESS_TOKEN.into();
    r.task_id.clear();
    r.authorization_details = details.map(Value::to_string).unwrap_or_default();
    r
}

async fn forward(base: &str, token: &str, method: &str, uri: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/forward-auth"))
        .header("x-original-uri", uri)
        .header("x-original-method", method)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_support_agents_token_for_one_case_works_for_that_case_only() {
    let broker = rar_broker().await;
    let base = http_face(&broker).await;
    let details = json!([case(&["read"], "1234")]);
    let issued = broker.client().await.exchange_token(with_details(&k8s_assertion(600), &details)).await.unwrap();
    let issued = issued.into_inner();
    assert_eq!(serde_json::from_str::<Value>(&issued.authorization_details).unwrap(), details, "RFC 9396 §7");
    let claims = decode(&issued.access_token);
    assert_eq!(serde_json::to_value(claims.authorization_details.unwrap()).unwrap(), details, "RFC 9396 §9.1");

    // Introspect shows them.
    let i = broker
        .client()
        .await
        .introspect(pb::IntrospectRequest { token: issued.access_token.clone(), token_type_hint: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(i.active);
    assert_eq!(serde_json::from_str::<Value>(&i.authorization_details).unwrap(), details);
    let body: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("token", &issued.access_token).finish();
    let http: Value = reqwest::Client::new()
        .post(format!("{base}/oauth2/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["authorization_details"], details, "{http}");

    // Forward-auth: this case, read: yes. Another case, or a write: no (403 insufficient_scope).
    let ok = forward(&base, &issued.access_token, "GET", "/cases/1234?x=1").await;
    assert_eq!(ok.status(), 200);
    let header = ok.headers()["x-tessera-authorization-details"].to_str().unwrap().to_string();
    assert_eq!(serde_json::from_str::<Value>(&header).unwrap(), details);
    assert_eq!(forward(&base, &issued.access_token, "GET", "/cases/1234/notes").await.status(), 200);
    for (method, uri) in [("GET", "/cases/5678"), ("POST", "/cases/1234"), ("DELETE", "/cases/1234")] {
        let r = forward(&base, &issued.access_token, method, uri).await;
        assert_eq!(r.status(), 403, "{method} {uri}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    }
    // A path the upstream could resolve to another case falls under no route: 403 too.
    for uri in ["/cases/1234/../5678", "/cases/1234/%2e%2e/5678", "/cases/1234%2F..%2F5678", "/cases/./1234"] {
        assert_eq!(forward(&base, &issued.access_token, "GET", uri).await.status(), 403, "{uri}");
    }
    // A token without details does not pass a route that requires them.
    let plain = broker.client().await.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await;
    let plain = plain.unwrap().into_inner();
    assert!(plain.authorization_details.is_empty());
    assert_eq!(forward(&base, &plain.access_token, "GET", "/cases/1234").await.status(), 403);

    // Discovery: RFC 9396 §10.1 (authorization server) and RFC 9728 (the resource).
    let meta: Value =
        reqwest::get(format!("{base}/.well-known/oauth-authorization-server")).await.unwrap().json().await.unwrap();
    assert_eq!(meta["authorization_details_types_supported"], json!(["crm_case", "payment"]));
    let resource = format!(
        "{base}/oauth2/resource-metadata?resource={}",
        form_urlencoded::byte_serialize(CRM.as_bytes()).collect::<String>()
    );
    let meta: Value = reqwest::get(resource).await.unwrap().json().await.unwrap();
    assert_eq!(meta["authorization_details_types_supported"], json!(["crm_case", "payment"]));

    // Over HTTP, the same request: the JSON response carries the array.
    let assertion = k8s_assertion(600);
    let details_text = details.to_string();
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", assertion.as_str()),
        ("subject_token_type", JWT),
        ("audience", CRM),
        ("scope", "crm:read"),
        ("task_id", "http-task"),
        ("authorization_details", details_text.as_str()),
    ];
    let (status, answer) = post_form(&base, &form).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["authorization_details"], details);
    let token = answer["access_token"].as_str().unwrap();
    assert_eq!(forward(&base, token, "GET", "/cases/1234").await.status(), 200);
    assert_eq!(forward(&base, token, "GET", "/cases/9999").await.status(), 403);
}

async fn post_form(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let r = reqwest::Client::new()
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_summarisers_re_exchange_narrows_and_never_widens() {
    let broker = rar_broker().await;
    let parent_details =
        json!([case(&["read", "write"], "1234"), {"type": "payment", "amount": 50, "currency": "EUR"}]);
    let parent = broker.client().await.exchange_token(with_details(&k8s_assertion(600), &parent_details)).await;
    let parent = parent.unwrap().into_inner().access_token;

    // Omitted: kept as they are.
    let kept = broker.client().await.exchange_token(narrowing(&parent, None)).await.unwrap().into_inner();
    assert_eq!(serde_json::from_str::<Value>(&kept.authorization_details).unwrap(), parent_details);

    // Fewer actions, one entry dropped, a smaller amount: granted.
    for narrower in
        [json!([case(&["read"], "1234")]), json!([{"type": "payment", "amount": 20, "currency": "EUR"}]), json!([])]
    {
        let r = broker.client().await.exchange_token(narrowing(&parent, Some(&narrower))).await;
        let r = r.unwrap_or_else(|e| panic!("{narrower}: {e:?}")).into_inner();
        assert_eq!(serde_json::from_str::<Value>(&r.authorization_details).unwrap(), narrower);
    }
    // A child with no details left can get none back.
    let emptied = broker.client().await.exchange_token(narrowing(&parent, Some(&json!([])))).await;
    let emptied = emptied.unwrap().into_inner().access_token;
    let again = json!([case(&["read"], "1234")]);
    let refused = broker.client().await.exchange_token(narrowing(&emptied, Some(&again))).await;
    assert_refused(refused, tonic::Code::InvalidArgument, "invalid_authorization_details", &emptied);

    // Wider: more actions than held, another case, a bigger amount, another currency, a new type — refused.
    let one = json!([case(&["read"], "1234")]);
    let child = broker.client().await.exchange_token(narrowing(&parent, Some(&one))).await;
    let child = child.unwrap().into_inner().access_token;
    for wider in [
        json!([case(&["read", "write"], "1234")]),
        json!([case(&["read"], "5678")]),
        json!([{"type": "payment", "amount": 20, "currency": "EUR"}]),
    ] {
        let r = broker.client().await.exchange_token(narrowing(&child, Some(&wider))).await;
        assert_refused(r, tonic::Code::InvalidArgument, "invalid_authorization_details", &child);
    }
    for wider in [
        json!([{"type": "payment", "amount": 51, "currency": "EUR"}]),
        json!([{"type": "payment", "amount": 50, "currency": "USD"}]),
        json!([case(&["read"], "1234"), case(&["read"], "1235")]),
    ] {
        let r = broker.client().await.exchange_token(narrowing(&parent, Some(&wider))).await;
        assert_refused(r, tonic::Code::InvalidArgument, "invalid_authorization_details", &parent);
    }
}

#[tokio::test]
async fn bad_authorization_details_are_refused_on_both_faces_and_nothing_is_issued() {
    let broker = rar_broker().await;
    let base = http_face(&broker).await;
    let too_big = json!([{"type": "crm_case", "actions": ["read"], "identifier": "x".repeat(5000)}]).to_string();
    let too_many = Value::Array((0..17).map(|i| case(&["read"], &i.to_string())).collect()).to_string();
    let bad = [
        "not json".to_string(),
        "{\"type\":\"crm_case\"}".to_string(),
        "[1]".to_string(),
        "[{\"actions\":[\"read\"]}]".to_string(),
        json!([{"type": "unknown_type"}]).to_string(),
        json!([case(&["delete"], "1234")]).to_string(),
        json!([{"type": "crm_case", "actions": ["read"]}]).to_string(),
        json!([{"type": "crm_case", "actions": ["read"], "identifier": "1", "more": true}]).to_string(),
        json!([{"type": "payment", "amount": 1e9, "currency": "EUR"}]).to_string(),
        too_big,
        too_many,
    ];
    for text in &bad {
        let assertion = k8s_assertion(600);
        let mut r = request(&assertion, CRM, "crm:read");
        r.authorization_details = text.clone();
        let refused = broker.client().await.exchange_token(r).await;
        assert_refused(refused, tonic::Code::InvalidArgument, "invalid_authorization_details", &assertion);
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", assertion.as_str()),
            ("subject_token_type", JWT),
            ("audience", CRM),
            ("scope", "crm:read"),
            ("task_id", "http-task"),
            ("authorization_details", text.as_str()),
        ];
        let (status, answer) = post_form(&base, &form).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_authorization_details")), "{text}");
        assert!(answer.get("access_token").is_none());
    }
    // An audience that accepts no details, and task tokens, refuse them.
    let assertion = k8s_assertion(600);
    for audience in [OTHER, BROKER] {
        let mut r = request(&assertion, audience, "other:read");
        r.authorization_details = json!([case(&["read"], "1")]).to_string();
        let refused = broker.client().await.exchange_token(r).await;
        assert_refused(refused, tonic::Code::InvalidArgument, "invalid_authorization_details", &assertion);
    }
}

#[tokio::test]
async fn bad_detail_types_and_routes_are_config_errors() {
    for (crm, extra, expected) in [
        ("[[audiences.authorization_details]]\ntype = \"x\"\n", "", "exactly one of `schema` or `schema_file`"),
        (
            "[[audiences.authorization_details]]\ntype = \"x\"\nschema = { pattern = \"a+\" }\n",
            "",
            "`pattern` is not a supported schema keyword",
        ),
        (
            "[[audiences.authorization_details]]\ntype = \"x\"\nschema = {}\nnarrowing = { n = \"bigger\" }\n",
            "",
            "narrowing.n",
        ),
        ("", ROUTES, "is not accepted by"),
        ("[[audiences.authorization_details]]\ntype = \"x\"\nschema_file = \"missing.json\"\n", "", "`schema_file`"),
        (
            CRM_DETAILS,
            "[[routes]]\npath_prefix = \"/c/\"\naudience = \"https://crm.example\"\nscopes = []\n\
             authorization_details = { type = \"crm_case\", fields = { identifier = \"{case}\" } }\n",
            "has no `{case}`",
        ),
    ] {
        let dir = TestBroker::builder().crm_toml(crm).extra_toml(extra).write_config();
        let err = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
            .and_then(|b| b.build(dir.path()))
            .err()
            .unwrap_or_else(|| panic!("accepted: {crm} {extra}"));
        assert!(err.to_string().contains(expected), "{err}");
    }
}

/// A projected service-account token of `support`/`support-agent`.
fn support_agent() -> String {
    let mut c = claims("kubernetes", 600);
    c["sub"] = "system:serviceaccount:support:support-agent".into();
    c["kubernetes.io"]["namespace"] = "support".into();
    c["kubernetes.io"]["serviceaccount"]["name"] = "support-agent".into();
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

#[tokio::test]
async fn policy_lets_the_support_agent_read_its_one_case_and_nothing_else() {
    let policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/rar-case-record.cedar"),
    )
    .unwrap();
    let broker = TestBroker::builder().policy(&policy).crm_toml(CRM_DETAILS).extra_toml(ROUTES).start().await;
    let base = http_face(&broker).await;
    let ask = |details: Option<Value>, task: &str, scope: &str| {
        let mut r = request(&support_agent(), CRM, scope);
        r.task_id = task.into();
        r.authorization_details = details.map(|d| d.to_string()).unwrap_or_default();
        r
    };
    let one = ask(Some(json!([case(&["read"], "1234")])), "1234", "crm:read");
    let token = broker.client().await.exchange_token(one).await.unwrap().into_inner().access_token;
    assert_eq!(forward(&base, &token, "GET", "/cases/1234").await.status(), 200);
    assert_eq!(forward(&base, &token, "GET", "/cases/5678").await.status(), 403);
    for (details, task, scope) in [
        (Some(json!([case(&["read"], "5678")])), "1234", "crm:read"),
        (Some(json!([case(&["read", "write"], "1234")])), "1234", "crm:read"),
        (Some(json!([case(&["read"], "1234"), case(&["read"], "5678")])), "1234", "crm:read"),
        (Some(json!([case(&["read"], "1234")])), "1234", "crm:write"),
        (None, "1234", "crm:read"),
    ] {
        let r = broker.client().await.exchange_token(ask(details.clone(), task, scope)).await;
        assert_refused(r, tonic::Code::PermissionDenied, "invalid_scope", "");
    }
    // The summariser's re-exchange: narrowing is allowed by `case-record-narrowing`, widening refused by the broker.
    let child = broker.client().await.exchange_token(narrowing(&token, None)).await.unwrap().into_inner();
    assert_eq!(serde_json::from_str::<Value>(&child.authorization_details).unwrap(), json!([case(&["read"], "1234")]));
    let wider = json!([case(&["read"], "5678")]);
    let r = broker.client().await.exchange_token(narrowing(&token, Some(&wider))).await;
    assert_refused(r, tonic::Code::InvalidArgument, "invalid_authorization_details", &token);
}

/// `tessera policy check --authorization-details` puts them in `context.authorization_details`, so an operator
/// can see what the example decides before deploying it.
#[test]
fn policy_check_explains_decisions_on_authorization_details() {
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/rar-case-record.cedar");
    let check = |identifier: &str| {
        let details = json!([case(&["read"], identifier)]).to_string();
        let out = crate::support::process::tessera()
            .args(["policy", "check"])
            .arg(&policy)
            .args(["--principal", "kubernetes:system:serviceaccount:support:support-agent"])
            .args(["--attr", "namespace=support", "--attr", "service_account=support-agent"])
            .args(["--audience", CRM, "--scope", "crm:read", "--task-id", "1234"])
            .args(["--authorization-details", &details])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let allowed = check("1234");
    assert!(allowed.contains("permitted by support-agent-reads-its-case-record"), "{allowed}");
    let denied = check("5678");
    assert!(denied.contains("no policy permits it"), "{denied}");
}
