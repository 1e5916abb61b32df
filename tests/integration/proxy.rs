//! The credential-injecting proxy of a real `tessera serve` process in front of a real HTTPS upstream (a
//! test CA's certificate): the upstream sees the injected key and the agent never does — not in a response
//! body or header, a redirect, an error or the broker's log; a request without a token, with a token for
//! another route, for a path or method the route does not allow, or after its token or task is revoked is
//! refused before it reaches the upstream, and a DPoP-bound token passes only with a proof for the request;
//! a rotated secret file is used from the next request on; every call is an audit event keyed by task and
//! `jti`; request bodies past the limit get 413 and a slow upstream 504.

use std::time::{Duration, Instant};

use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::process::Serving;
use crate::support::upstream::Upstream;
use crate::support::*;

const CRM_KEY: &str = "sk_live_crm_4f9a7c1e2b8d";
const CRM_KEY_ROTATED: &str = "sk_live_crm_rotated_77e1a0";
const OTHER_KEY: &str = "sk_live_other_51c3d2";

fn proxy_toml(upstream: &Upstream) -> String {
    let ca = upstream.ca_file.display();
    let url = &upstream.url;
    format!(
        r#"
[[secrets]]
name = "crm-key"
file = "crm-key"
reload_interval = 1

[[secrets]]
name = "other-key"
file = "other-key"

[proxy]
client = "gateway"
max_response_bytes = 32768
max_request_bytes = 4096
timeout_ms = 2000

[[proxy.routes]]
path_prefix = "/crm"
upstream = "{url}/api"
audience = "{CRM}"
scopes = ["crm:read"]
methods = ["GET", "POST"]
allow_paths = ["/v1"]
upstream_ca_file = "{ca}"
credential = {{ secret = "crm-key", kind = "header", name = "X-Api-Key" }}

[[proxy.routes]]
path_prefix = "/other"
upstream = "{url}/api"
audience = "{OTHER}"
scopes = ["other:read"]
upstream_ca_file = "{ca}"
credential = {{ secret = "other-key", kind = "basic" }}

[[proxy.routes]]
path_prefix = "/query"
upstream = "{url}/api"
audience = "{OTHER}"
scopes = ["other:read"]
upstream_ca_file = "{ca}"
credential = {{ secret = "other-key", kind = "query", name = "api_key" }}
"#
    )
}

/// Waits for the proxy's address in the log.
fn proxy_addr(serving: &Serving) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = serving.logs().lines().find(|l| l.contains("tessera serving proxy")) {
            let (_, rest) = line.split_once("addr").unwrap();
            let start = rest.find(|c: char| c.is_ascii_digit()).unwrap();
            return rest[start..].chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':')).collect();
        }
        assert!(Instant::now() < deadline, "the proxy did not log its address:\n{}", serving.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_injects_a_key_the_agent_never_sees_and_refuses_before_the_upstream() {
    let upstream = Upstream::start().await;
    let dir = TestBroker::builder().extra_toml(&proxy_toml(&upstream)).write_config();
    std::fs::write(dir.path().join("crm-key"), format!("{CRM_KEY}\n")).unwrap();
    std::fs::write(dir.path().join("other-key"), OTHER_KEY).unwrap();
    let config = dir.path().join("tessera.toml");
    let serving = Serving::start(&["--config", config.to_str().unwrap(), "--proxy-addr", "127.0.0.1:0"], |c| {
        // Debug: the HTTP client libraries log at debug too; no key may be in any of it.
        c.env("TESSERA__LOG__LEVEL", "debug");
    });
    let proxy = format!("http://{}", proxy_addr(&serving));
    let mut broker = pb::token_broker_client::TokenBrokerClient::connect(serving.url()).await.unwrap();
    let crm = broker.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner();
    let other = broker.exchange_token(request(&spiffe_assertion(600), OTHER, "other:read")).await.unwrap().into_inner();
    let agent = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut answers = String::new();
    let keep = |answers: &mut String, r: &reqwest::Response, body: &str| {
        answers.push_str(&format!("{:?}\n{body}\n", r.headers()));
    };

    // A GET through the proxy: the upstream gets the key (once: the agent's own X-Api-Key is dropped), the
    // caller's identity, the path after the prefix and the query; never the agent's token.
    let r = agent
        .get(format!("{proxy}/crm/v1/customers?limit=2"))
        .bearer_auth(&crm.access_token)
        .header("x-api-key", "agent-forged-key")
        .header("x-tessera-sub", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    keep(&mut answers, &r, "");
    let body = r.text().await.unwrap();
    assert_eq!(body, r#"{"path":"/api/v1/customers"}"#);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].method.as_str(), seen[0].uri.as_str()), ("GET", "/api/v1/customers?limit=2"));
    assert_eq!(seen[0].header("x-api-key"), [CRM_KEY]);
    assert!(seen[0].header("authorization").is_empty(), "the agent's token never reaches the upstream");
    assert_eq!(seen[0].header("x-tessera-sub"), [ORCHESTRATOR]);
    assert_eq!(seen[0].header("x-tessera-task-id"), ["task-42"]);
    assert_eq!(seen[0].header("x-tessera-jti"), [decode(&crm.access_token).jti.as_str()]);

    // A POST with its body; the other route's basic credential (Stripe style: the key is the user name).
    let r = agent.post(format!("{proxy}/crm/v1/notes")).bearer_auth(&crm.access_token).body("hello").send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(upstream.seen()[1].body, "hello");
    let r = agent.get(format!("{proxy}/other/v1/x")).bearer_auth(&other.access_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let basic = format!("Basic {}", base64_std(&format!("{OTHER_KEY}:")));
    assert_eq!(upstream.seen()[2].header("authorization"), [basic.as_str()]);

    // A query-parameter credential replaces the agent's own value of that parameter.
    let r = agent.get(format!("{proxy}/query/v1/x?page=2&api_key=forged")).bearer_auth(&other.access_token).send();
    assert_eq!(r.await.unwrap().status(), 200);
    assert_eq!(upstream.seen().last().unwrap().uri, format!("/api/v1/x?page=2&api_key={OTHER_KEY}"));

    // An upstream that echoes the key in its body or a header, or redirects elsewhere: the agent never gets it.
    // (The answer is cut off before the echo: here before even its head went out, so the agent sees a
    // connection closed mid-answer.)
    match agent.get(format!("{proxy}/crm/v1/echo")).bearer_auth(&crm.access_token).send().await {
        Err(e) => answers.push_str(&format!("{e:?}")),
        Ok(r) => {
            let echoed = r.text().await.unwrap_or_else(|e| format!("cut off: {e:?}"));
            assert!(!echoed.contains(CRM_KEY), "{echoed}");
            answers.push_str(&echoed);
        }
    }
    let r = agent.get(format!("{proxy}/crm/v1/header")).bearer_auth(&crm.access_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-debug-key").is_none());
    keep(&mut answers, &r, "");
    let r = agent.get(format!("{proxy}/crm/v1/redirect")).bearer_auth(&crm.access_token).send().await.unwrap();
    assert_eq!(r.status(), 302, "a redirect is handed back, never followed");
    let before = upstream.seen().len();
    // A response past max_response_bytes is cut off.
    let r = agent.get(format!("{proxy}/crm/v1/big")).bearer_auth(&crm.access_token).send().await.unwrap();
    assert_eq!(r.status(), 502, "a 64 KiB answer announced over a 32 KiB limit is refused");
    let r = agent.get(format!("{proxy}/crm/v1/stream")).bearer_auth(&crm.access_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "a 64 KiB streamed answer over a 32 KiB limit is cut off");
    assert_eq!(upstream.seen().len(), before + 2);

    // A body over max_request_bytes is refused before the upstream; an upstream slower than timeout_ms is 504.
    let before = upstream.seen().len();
    let r = agent.post(format!("{proxy}/crm/v1/notes")).bearer_auth(&crm.access_token).body(vec![b'z'; 8192]).send();
    assert_eq!(r.await.unwrap().status(), 413);
    assert_eq!(upstream.seen().len(), before);
    let r = agent.get(format!("{proxy}/crm/v1/slow")).bearer_auth(&crm.access_token).send().await.unwrap();
    assert_eq!(r.status(), 504);
    keep(&mut answers, &r, "");
    answers.push_str(&r.text().await.unwrap());

    // Refused before the upstream: no token, a token for another route, a path or method the route does not
    // allow, a path the upstream could read otherwise.
    let before = upstream.seen().len();
    let refusals = [
        (agent.get(format!("{proxy}/crm/v1/customers")), 401),
        (agent.get(format!("{proxy}/crm/v1/customers")).bearer_auth(&other.access_token), 401),
        (agent.get(format!("{proxy}/other/v1/x")).bearer_auth(&crm.access_token), 401),
        (agent.get(format!("{proxy}/crm/admin")).bearer_auth(&crm.access_token), 403),
        (agent.delete(format!("{proxy}/crm/v1/customers")).bearer_auth(&crm.access_token), 405),
        (agent.get(format!("{proxy}/crm/v1/notes%2F..%2F..%2Fadmin")).bearer_auth(&crm.access_token), 400),
        (agent.get(format!("{proxy}/nowhere")).bearer_auth(&crm.access_token), 404),
    ];
    for (request, status) in refusals {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status, "{:?}", r.url());
        keep(&mut answers, &r, "");
        let text = r.text().await.unwrap();
        answers.push_str(&text);
    }
    let r = agent.get(format!("{proxy}/crm/v1/customers")).bearer_auth(&other.access_token).send().await.unwrap();
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("error=\"invalid_token\"") && challenge.contains("resource_metadata="), "{challenge}");
    assert_eq!(upstream.seen().len(), before, "no refused request reached the upstream");

    // The key rotates on disk (a rename, as a Secret volume swaps it): the next requests carry the new one.
    std::fs::write(dir.path().join("crm-key.new"), CRM_KEY_ROTATED).unwrap();
    std::fs::rename(dir.path().join("crm-key.new"), dir.path().join("crm-key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = agent.get(format!("{proxy}/crm/v1/customers")).bearer_auth(&crm.access_token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if upstream.seen().last().unwrap().header("x-api-key") == [CRM_KEY_ROTATED] {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated key was never used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A DPoP-bound token passes only with a fresh proof for this request at the proxy's URL (RFC 9449).
    let key = crate::dpop::DpopKey::ec();
    let mut exchange = tonic::Request::new(request(&k8s_assertion(600), CRM, "crm:read"));
    let grpc_htu = "https://tessera.test/tessera.v1.TokenBroker/ExchangeToken";
    exchange.metadata_mut().append("dpop", key.proof("POST", grpc_htu, None).parse().unwrap());
    let bound = broker.exchange_token(exchange).await.unwrap().into_inner().access_token;
    let url = format!("{proxy}/crm/v1/customers");
    let dpop = |proof: Option<String>| {
        let r = agent.get(&url).header("authorization", format!("DPoP {bound}"));
        match proof {
            Some(p) => r.header("dpop", p),
            None => r,
        }
    };
    let before = upstream.seen().len();
    for (what, proof) in [
        ("no proof", None),
        ("another URL", Some(key.proof("GET", &format!("{proxy}/crm/v1/other"), Some(&bound)))),
        ("another method", Some(key.proof("POST", &url, Some(&bound)))),
        ("another key", Some(crate::dpop::DpopKey::ed().proof("GET", &url, Some(&bound)))),
    ] {
        let r = dpop(proof).send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("DPoP "), "{what}");
    }
    let r = agent.get(&url).bearer_auth(&bound).send().await.unwrap();
    assert_eq!(r.status(), 401, "a DPoP-bound token presented as Bearer");
    assert_eq!(upstream.seen().len(), before);
    let r = dpop(Some(key.proof("GET", &url, Some(&bound)))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(upstream.seen().last().unwrap().header("dpop").is_empty(), "the proof is not forwarded");

    // Revoking the task stops the very next request, before the upstream.
    let revoke = pb::RevokeRequest { target: Some(Target::TaskId("task-42".into())), reason: "done".into() };
    broker.revoke(revoke).await.unwrap();
    let before = upstream.seen().len();
    for (route, token) in [("crm/v1/customers", &crm.access_token), ("other/v1/x", &other.access_token)] {
        let r = agent.get(format!("{proxy}/{route}")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(upstream.seen().len(), before);

    // Every call is an audit event keyed by task and jti; no key in any answer or log line.
    let (_, logs) = serving.terminate();
    let jti = decode(&crm.access_token).jti;
    let audited = logs.lines().filter(|l| l.contains("event=proxy") && l.contains(&jti)).count();
    assert!(audited >= 12, "proxied calls are audited with their jti:\n{logs}");
    assert!(logs.lines().any(|l| l.contains("event=proxy") && l.contains("decision=refused") && l.contains(&jti)));
    assert!(logs.contains("credential_echoed"), "the echo is audited");
    for key in [CRM_KEY, CRM_KEY_ROTATED, OTHER_KEY] {
        assert!(!logs.contains(key), "a key reached the log");
        assert!(!answers.contains(key), "a key reached the agent");
    }
}

fn base64_std(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn proxy_routes_are_validated_with_every_problem_at_once() {
    let toml = r#"
[[secrets]]
name = "missing"
file = "does-not-exist"

[proxy]
client = "orchestrator"

[[proxy.routes]]
path_prefix = "stripe"
upstream = "http://api.example"
audience = "https://nowhere.example"
methods = ["get"]
allow_paths = ["/v1/../admin"]
credential = { secret = "unknown", kind = "header", name = "Host" }

[[proxy.routes]]
path_prefix = "/crm"
upstream = "https://user:pw@api.example"
audience = "https://crm.example"
scopes = ["crm:read"]
credential = { secret = "missing", kind = "query" }
"#;
    let dir = TestBroker::builder().extra_toml(toml).write_config();
    let errors = tessera::config::ConfigBuilder::load(&dir.path().join("tessera.toml"))
        .and_then(|b| b.build(dir.path()))
        .unwrap_err()
        .to_string();
    for expected in [
        "secret `missing`",
        "proxy.client `orchestrator` needs the `introspect` RPC",
        "proxy.routes[0] (stripe): `upstream` must be an https:// URL",
        "proxy.routes[0] (stripe): `methods` must be upper-case",
        "proxy.routes[0] (stripe): `allow_paths`",
        "proxy.routes[0] (stripe): `credential` is kind",
        "proxy.routes[0] (stripe): `audience` `https://nowhere.example` is not in the catalog",
        "proxy.routes[1] (/crm): `upstream` must be an https:// URL",
        "proxy.routes[1] (/crm): `credential` is kind",
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
}
