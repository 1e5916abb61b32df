//! Telemetry as an operator sees it: spans and metrics arriving at an OTLP collector (a real exporter talking
//! to an in-process collector), the Prometheus endpoint read by a real Prometheus text parser, and the audit
//! trail read back with `tessera audit`.

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use tessera::config::TelemetryConfig;
use tessera::grpc::pb;
use tessera::metrics::Metrics;

use crate::support::otlp::{AttrValue, Collector};
use crate::support::process::Serving;
use crate::support::redis::RedisServer;
use crate::support::*;

fn otlp_config(collector: &Collector) -> TelemetryConfig {
    TelemetryConfig { otlp_endpoint: Some(collector.endpoint.clone()), prometheus: false, ..TelemetryConfig::default() }
}

fn with_traceparent<T>(message: T, trace_id: &str, span_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{span_id}-01").parse().unwrap());
    request
}

// Against a `tessera serve` process exporting to the collector, as in production: a subscriber set for one
// test inside the shared test binary would race the others for tracing's global callsite cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_join_the_callers_trace_with_child_spans() {
    let collector = Collector::start().await;
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let endpoint = collector.endpoint.clone();
    let server = tokio::task::spawn_blocking(move || {
        Serving::start(&["--config", config.to_str().unwrap()], |c| {
            c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env("TESSERA__LOG__LEVEL", "info")
                .env_remove("RUST_LOG");
        })
    })
    .await
    .unwrap();
    let mut client = pb::token_broker_client::TokenBrokerClient::connect(server.url()).await.unwrap();
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut req = request(&k8s_assertion(600), CRM, "crm:read");
    req.actor_token = spiffe_assertion(600);
    req.actor_token_type = JWT.into();
    client.exchange_token(with_traceparent(req, trace_id, caller_span)).await.unwrap();
    let denied_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let denied = request(&k8s_assertion(600), CRM, "crm:export");
    client.exchange_token(with_traceparent(denied, denied_trace, caller_span)).await.unwrap_err();

    let exported = collector
        .wait_until(Duration::from_secs(15), |c| {
            let spans = c.spans();
            [trace_id, denied_trace]
                .iter()
                .all(|t| spans.iter().any(|s| s.trace_id == *t && s.name == "tessera.v1.TokenBroker/ExchangeToken"))
                && spans.iter().any(|s| s.trace_id == trace_id && s.name == "sign")
        })
        .await;
    assert!(exported, "the RPC spans did not reach the collector: {:#?}", collector.spans());
    let spans = collector.spans();
    let rpc = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "tessera.v1.TokenBroker/ExchangeToken")
        .unwrap_or_else(|| panic!("no RPC span in the caller's trace: {spans:#?}"));
    assert_eq!(rpc.parent_span_id, caller_span, "parented on the caller's traceparent");
    assert_eq!(rpc.kind, 2, "a SERVER span");
    let attr = |k: &str| rpc.attributes.get(k).cloned();
    assert_eq!(attr("rpc.system"), Some(AttrValue::Str("grpc".into())));
    assert_eq!(attr("rpc.service"), Some(AttrValue::Str("tessera.v1.TokenBroker".into())));
    assert_eq!(attr("rpc.method"), Some(AttrValue::Str("ExchangeToken".into())));
    assert_eq!(attr("rpc.grpc.status_code").and_then(|v| v.as_i64()), Some(0));

    // Verification (subject and actor), revocation store, policy and signing are child spans of the RPC.
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.parent_span_id == rpc.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for expected in ["verify_token", "store.lookup", "policy", "sign"] {
        assert!(children.contains(&expected), "missing child span {expected}: {children:?}");
    }
    assert_eq!(children.iter().filter(|n| **n == "verify_token").count(), 2);

    let denied_rpc = spans
        .iter()
        .find(|s| s.trace_id == denied_trace && s.name == "tessera.v1.TokenBroker/ExchangeToken")
        .expect("the denied RPC's span");
    assert_eq!(denied_rpc.attributes.get("rpc.grpc.status_code").and_then(AttrValue::as_i64), Some(7));

    // No span attribute holds a token.
    for s in &spans {
        for v in s.attributes.values() {
            assert!(!format!("{v:?}").contains("eyJ"), "span {} carries something token-like: {v:?}", s.name);
        }
    }
    let resource = collector.resource();
    assert_eq!(resource.get("service.name").map(String::as_str), Some("tessera"));
    assert_eq!(resource.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert!(resource.get("service.instance.id").is_some_and(|id| id.len() == 16));
    drop(server);
}

#[tokio::test]
async fn metrics_reach_the_collector_with_bounded_labels() {
    let collector = Collector::start().await;
    let config = otlp_config(&collector);
    let (provider, _) = tessera::telemetry::meter_provider(&config, tessera::telemetry::resource(&config)).unwrap();
    let broker = TestBroker::builder().metrics(Metrics::new(&provider.meter("tessera"))).start().await;
    let mut client = broker.client().await;
    let token =
        client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner().access_token;
    client.exchange_token(request(&k8s_assertion(600), CRM, "crm:export")).await.unwrap_err();
    client.exchange_token(request("not.a.jwt", CRM, "crm:read")).await.unwrap_err();
    client.introspect(pb::IntrospectRequest { token: token.clone(), token_type_hint: String::new() }).await.unwrap();
    let revoke = pb::RevokeRequest { target: Some(pb::revoke_request::Target::Token(token)), reason: String::new() };
    client.revoke(revoke).await.unwrap();

    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
    let has = |name: &str, attrs: &[(&str, &str)]| {
        collector.points(name).iter().any(|p| {
            p.value > 0.0 && attrs.iter().all(|(k, v)| p.attributes.get(*k).and_then(AttrValue::as_str) == Some(*v))
        })
    };
    assert!(
        has("tessera.exchanges", &[("outcome", "granted"), ("error", "")]),
        "{:?}",
        collector.points("tessera.exchanges")
    );
    assert!(has("tessera.exchanges", &[("outcome", "denied"), ("error", "invalid_scope")]));
    assert!(has("tessera.exchanges", &[("outcome", "denied"), ("error", "invalid_grant")]));
    assert!(has("tessera.introspections", &[("result", "active")]));
    assert!(has("tessera.revocations", &[("kind", "jti"), ("outcome", "revoked")]));
    assert!(has("tessera.store.duration", &[("op", "lookup")]));
    let rpc = collector.points("tessera.rpc.duration");
    for method in ["ExchangeToken", "Introspect", "Revoke"] {
        assert!(
            rpc.iter()
                .any(|p| p.count > 0 && p.attributes.get("rpc.method").and_then(AttrValue::as_str) == Some(method)),
            "{method}"
        );
    }
    // Label cardinality stays bounded: no subject, task, token or jti in any label.
    for name in collector.metric_names() {
        for point in collector.points(&name) {
            for key in point.attributes.keys() {
                assert!(
                    ["outcome", "error", "result", "kind", "op", "rpc.method", "rpc.grpc.status_code", "issuer"]
                        .contains(&key.as_str()),
                    "{name} has label {key}"
                );
            }
        }
    }
    let p = provider.clone();
    let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
}

#[tokio::test]
async fn the_prometheus_endpoint_parses_with_a_real_parser() {
    let python = std::env::var("TESSERA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TESSERA_TEST_PYTHON is not set: run the suite with `bash scripts/test` (it installs prometheus-client)")
    });
    let config = TelemetryConfig { prometheus: true, ..TelemetryConfig::default() };
    let (provider, registry) =
        tessera::telemetry::meter_provider(&config, tessera::telemetry::resource(&config)).unwrap();
    let broker = TestBroker::builder().metrics(Metrics::new(&provider.meter("tessera"))).start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(
        listener,
        std::sync::Arc::clone(&broker.broker),
        registry,
        std::future::pending(),
    ));
    let mut client = broker.client().await;
    client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap();
    client.exchange_token(request(&k8s_assertion(600), CRM, "crm:export")).await.unwrap_err();

    let body = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics:\n{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str, labels: serde_json::Value| {
        samples[name].as_array().is_some_and(|all| {
            all.iter()
                .any(|s| labels.as_object().unwrap().iter().all(|(k, v)| s[0][k] == *v) && s[1].as_f64() > Some(0.0))
        })
    };
    assert!(find("tessera_exchanges_total", serde_json::json!({"outcome": "granted"})), "{body}");
    assert!(
        find("tessera_exchanges_total", serde_json::json!({"outcome": "denied", "error": "invalid_scope"})),
        "{body}"
    );
    assert!(find("tessera_rpc_duration_seconds_count", serde_json::json!({"rpc_method": "ExchangeToken"})), "{body}");
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert!(health.status().is_success());
}

#[tokio::test]
async fn tessera_audit_tells_a_tasks_story_in_order() {
    let redis = RedisServer::start();
    let broker = TestBroker::builder().redis(&redis.url(), "strict").start().await;
    let mut client = broker.client().await;
    let mut req = request(&k8s_assertion(600), BROKER, "crm:read");
    req.task_id = "story-1".into();
    let task = client.exchange_token(req).await.unwrap().into_inner().access_token;
    let mut req = request(&task, CRM, "crm:read");
    req.subject_token_type = ACCESS_TOKEN.into();
    req.task_id.clear();
    req.actor_token = spiffe_assertion(600);
    req.actor_token_type = JWT.into();
    let child = client.exchange_token(req).await.unwrap().into_inner().access_token;
    client.introspect(pb::IntrospectRequest { token: child.clone(), token_type_hint: String::new() }).await.unwrap();
    let revoke =
        pb::RevokeRequest { target: Some(pb::revoke_request::Target::Token(child.clone())), reason: "done".into() };
    client.revoke(revoke).await.unwrap();
    let mut again = request(&child, CRM, "crm:read");
    again.subject_token_type = ACCESS_TOKEN.into();
    again.task_id.clear();
    client.exchange_token(again).await.unwrap_err();
    // Another task's events stay out of this story.
    client.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap();

    let read = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["audit", "--redis-url", &redis.url(), "--task", "story-1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut events = read();
    while events.len() < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = read();
    }
    let story: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["decision"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("exchange", "granted"),
        ("exchange", "granted"),
        ("introspect", "active"),
        ("revoke", "revoked"),
        ("exchange", "denied"),
    ];
    assert_eq!(story, expected.map(|(a, b)| (a.to_string(), b.to_string())), "{events:#?}");
    let child_claims = decode(&child);
    assert_eq!(events[1]["jti"], child_claims.jti.as_str());
    assert_eq!(events[1]["actors"], SPIFFE_AGENT);
    assert_eq!(events[1]["sub"], ORCHESTRATOR);
    assert_eq!(events[3]["jti"], child_claims.jti.as_str());
    assert_eq!(events[4]["reason"], "invalid_grant");
    assert!(events.windows(2).all(|w| w[0]["ts"].as_u64() <= w[1]["ts"].as_u64()));
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(&child) && !all.contains(&task), "the audit trail holds a token");
}
