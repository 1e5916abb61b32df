//! Rate limits on ExchangeToken, per client, principal and task: shared by replicas through Redis (one
//! script in the exchange's one round trip), in-process with the embedded store; refused with
//! `rate_limited` and a retry hint on both faces, audited and counted; a throttled request issues nothing and
//! spends no single-use assertion.
//!
//! No test here measures time. Redis counts at its own clock, so the Redis tests use rates so slow (one a
//! minute) that no bucket refills while they run; the embedded store's tests drive its clock through
//! `exchange_ms`.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use tessera::config::TelemetryConfig;
use tessera::grpc::pb;
use tessera::metrics::Metrics;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support::otlp::{AttrValue, Collector};
use crate::support::redis::RedisServer;
use crate::support::*;

fn limits_toml(toml: &str) -> String {
    format!("\n[rate_limits]\n{toml}\n")
}

/// A Kubernetes assertion for the orchestrator with its own `jti` (the fixture's is fixed).
fn k8s_with_jti(jti: &str) -> String {
    let mut c = claims("kubernetes", 600);
    c["jti"] = jti.into();
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &c)
}

/// The default issuers, the Kubernetes one single-use.
fn single_use_issuers() -> String {
    default_issuers_toml().replacen("algorithms = [\"RS256\"]", "algorithms = [\"RS256\"]\nsingle_use = true", 1)
}

async fn exchange(broker: &TestBroker, r: pb::ExchangeTokenRequest) -> Result<String, tonic::Status> {
    broker.client().await.exchange_token(r).await.map(|r| r.into_inner().access_token)
}

/// Asserts a `rate_limited` refusal by the `dimension` limit, with its retry hint (at most `max_wait`);
/// returns the hinted wait.
fn assert_throttled(result: Result<String, tonic::Status>, dimension: &str, max_wait: Duration) -> Duration {
    let status = match result {
        Ok(_) => panic!("expected a {dimension} rate limit, got a token"),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert_eq!(oauth_error(&status), "rate_limited");
    assert!(status.message().contains(&format!("the {dimension} rate limit")), "{}", status.message());
    let wait = status.get_details_retry_info().and_then(|r| r.retry_delay).expect("a RetryInfo detail");
    assert!(wait > Duration::ZERO && wait <= max_wait, "retry in {wait:?}");
    let seconds: u64 = status.metadata().get("retry-after").expect("retry-after").to_str().unwrap().parse().unwrap();
    assert_eq!(seconds, wait.as_millis().div_ceil(1000) as u64, "whole seconds, rounded up");
    wait
}

/// Polls `f` until it holds or five seconds pass.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_flood_from_one_agent_is_throttled_across_two_replicas_and_another_agent_is_unaffected() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    // One a minute, bursts of five: nothing refills while the test runs.
    let limits = limits_toml("principal_per_minute = 1\nprincipal_burst = 5");
    let strict =
        TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").extra_toml(&limits).start().await;
    let mirror =
        TestBroker::builder().signing_key(&key).redis(&redis.url(), "mirror").extra_toml(&limits).start().await;

    // The orchestrator floods both replicas, alternating, with fresh assertions.
    let mut admitted = [0, 0];
    let mut refused = [0, 0];
    for i in 0..20 {
        let replica = i % 2;
        let broker = [&strict, &mirror][replica];
        match exchange(broker, request(&k8s_assertion(600), CRM, "crm:read")).await {
            Ok(_) => admitted[replica] += 1,
            Err(status) => {
                assert_throttled(Err(status), "principal", Duration::from_secs(60));
                refused[replica] += 1;
            }
        }
    }
    assert_eq!(admitted[0] + admitted[1], 5, "the burst, across both replicas together: {admitted:?}");
    assert!(admitted.iter().all(|n| *n > 0) && refused.iter().all(|n| *n > 0), "{admitted:?} {refused:?}");

    // Another agent (the SPIFFE summariser), through the same client, on both replicas: unaffected.
    for broker in [&strict, &mirror, &strict, &mirror] {
        exchange(broker, request(&spiffe_assertion(600), CRM, "crm:read")).await.expect("another agent");
    }
    // Re-exchanging one of its tokens counts against the principal it derives from: still throttled.
    let token = exchange(&strict, request(&spiffe_assertion(600), CRM, "crm:read"))
        .await
        .expect("its fifth, the last of its burst");
    let mut again = request(&token, CRM, "crm:read");
    again.task_id.clear();
    assert_throttled(exchange(&mirror, again).await, "principal", Duration::from_secs(60));

    // The refusals are audited, with the limit that tripped.
    let audited = eventually(|| {
        let stream = redis.cmd(&["XRANGE", "{tessera}:audit", "-", "+"]);
        stream.contains("rate_limited") && stream.contains("the principal rate limit is exceeded")
    })
    .await;
    assert!(audited, "no audit event names the principal rate limit");
    // The buckets are namespaced, one per principal, and expire once full again.
    let orchestrator = format!("{{tessera}}:rl:sub:{}:{K8S_ISS}{ORCHESTRATOR}", K8S_ISS.len());
    let ttl: i64 = redis.cmd(&["PTTL", &orchestrator]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 5 * 60_000, "PTTL {ttl}");
}

#[tokio::test]
async fn a_task_limit_counts_every_principal_in_the_task_and_spares_other_tasks() {
    let redis = RedisServer::start();
    let broker = TestBroker::builder()
        .redis(&redis.url(), "strict")
        .extra_toml(&limits_toml("task_per_minute = 1\ntask_burst = 2"))
        .start()
        .await;
    // Two different agents in one task: two exchanges, then the task is throttled for either.
    exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read")).await.expect("first in the task");
    exchange(&broker, request(&spiffe_assertion(600), CRM, "crm:read")).await.expect("second in the task");
    assert_throttled(
        exchange(&broker, request(&github_assertion(600), CRM, "crm:read")).await,
        "task",
        Duration::from_secs(60),
    );
    assert_throttled(
        exchange(&broker, request(&k8s_assertion(600), CRM, "crm:read")).await,
        "task",
        Duration::from_secs(60),
    );
    // Another task of the same agents is unaffected.
    let mut other = request(&k8s_assertion(600), CRM, "crm:read");
    other.task_id = "task-43".into();
    exchange(&broker, other).await.expect("another task");
}

/// The embedded store, its clock driven through `exchange_ms`: the burst, the exact retry hint, recovery,
/// per client with another client unaffected, and the metric by dimension.
#[tokio::test]
async fn the_embedded_store_limits_in_process_at_the_callers_clock() {
    let collector = Collector::start().await;
    let config = TelemetryConfig {
        otlp_endpoint: Some(collector.endpoint.clone()),
        prometheus: false,
        ..TelemetryConfig::default()
    };
    let (provider, _) = tessera::telemetry::meter_provider(&config, tessera::telemetry::resource(&config)).unwrap();
    let (broker, _, _dir) = TestBroker::builder()
        .metrics(Metrics::new(&provider.meter("tessera")))
        .extra_toml(&limits_toml("client_per_minute = 60\nclient_burst = 2"))
        .build()
        .await;
    let local = local_client(&broker);
    let orchestrator = broker
        .current()
        .clients()
        .authenticate(
            &tessera::client::Credentials {
                basic: Some(("orchestrator".into(), tessera::secret::ClientSecret::new(CLIENT_SECRET))),
                peer_is_loopback: false,
                ..Default::default()
            },
            tessera::client::Rpc::Exchange,
        )
        .expect("the orchestrator client")
        .clone();
    let t0 = now() * 1000;
    let at = async |client: &tessera::client::Client, ms: u64| {
        broker.exchange_ms(client, request(&k8s_assertion(600), CRM, "crm:read").into(), ms).await
    };
    assert!(at(&local, t0).await.is_ok());
    assert!(at(&local, t0 + 100).await.is_ok());
    let refused = at(&local, t0 + 250).await.unwrap_err();
    assert_eq!(refused.code, tessera::ErrorCode::RateLimited);
    // One a second: the next one fits a second after the first refill was due (t0 + 2000 ms, less the
    // 1000 ms of tolerance), 750 ms from now.
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(750)));
    assert!(at(&local, t0 + 999).await.is_err(), "not before the hint");
    assert!(at(&local, t0 + 1000).await.is_ok(), "admitted once the hint has passed");
    // Another client is unaffected by the first one's flood.
    assert!(at(&orchestrator, t0 + 1000).await.is_ok());
    // After a long pause the whole burst is back, not more.
    let later = t0 + 60_000;
    assert!(at(&local, later).await.is_ok() && at(&local, later).await.is_ok());
    assert!(at(&local, later).await.is_err());

    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
    let throttled: f64 = collector
        .points("tessera.exchanges.throttled")
        .iter()
        .filter(|p| p.attributes.get("dimension").and_then(AttrValue::as_str) == Some("client"))
        .map(|p| p.value)
        .sum();
    assert_eq!(throttled, 3.0, "{:?}", collector.points("tessera.exchanges.throttled"));
    let denied = collector
        .points("tessera.exchanges")
        .iter()
        .any(|p| p.value >= 3.0 && p.attributes.get("error").and_then(AttrValue::as_str) == Some("rate_limited"));
    assert!(denied, "{:?}", collector.points("tessera.exchanges"));
    let p = provider.clone();
    let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
}

/// Serves the broker's HTTP face on `127.0.0.1:0`; returns its base URL.
async fn http_face(broker: &TestBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    format!("http://{addr}")
}

#[tokio::test]
async fn over_http_a_rate_limit_is_429_with_retry_after_and_an_oauth_error() {
    let broker =
        TestBroker::builder().extra_toml(&limits_toml("principal_per_minute = 1\nprincipal_burst = 1")).start().await;
    let token_url = format!("{}/oauth2/token", http_face(&broker).await);
    let post = async |form: &[(&str, &str)]| {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let response = reqwest::Client::new()
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, headers, response.json::<serde_json::Value>().await.unwrap())
    };
    let exchange_form = |assertion| {
        [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", assertion),
            ("subject_token_type", JWT),
            ("audience", CRM),
            ("scope", "crm:read"),
            ("task_id", "http-task"),
        ]
    };
    let first = k8s_assertion(600);
    assert_eq!(post(&exchange_form(&first)).await.0, 200);
    let assertion = k8s_assertion(600);
    let (status, headers, body) = post(&exchange_form(&assertion)).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("the principal rate limit is exceeded"), "{description}");
    assert!(!description.contains(&assertion) && body.get("access_token").is_none());
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(headers["cache-control"], "no-store");
    // The jwt-bearer grant goes through the same limit.
    let bearer = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", assertion.as_str()),
        ("audience", CRM),
        ("scope", "crm:read"),
        ("task_id", "http-task"),
    ];
    let (status, headers, body) = post(&bearer).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_throttled_exchange_issues_nothing_and_does_not_burn_a_single_use_assertion() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let limits = limits_toml("principal_per_minute = 1\nprincipal_burst = 1");
    let build = |mode: &str| {
        TestBroker::builder()
            .signing_key(&key)
            .issuers_toml(&single_use_issuers())
            .redis(&redis.url(), mode)
            .extra_toml(&limits)
    };
    let (a, b) = (build("strict").start().await, build("mirror").start().await);
    exchange(&a, request(&k8s_with_jti("rl-1"), CRM, "crm:read")).await.expect("within the burst");
    let second = k8s_with_jti("rl-2");
    assert_throttled(exchange(&b, request(&second, CRM, "crm:read")).await, "principal", Duration::from_secs(60));
    let spent = format!("{{tessera}}:used:{}:{K8S_ISS}rl-2", K8S_ISS.len());
    assert_eq!(redis.cmd(&["EXISTS", &spent]), "0", "the throttled assertion was spent");

    // Once the bucket refills (here: forgotten, as Redis does when it is full again), the same assertion works
    // — exactly once.
    let bucket = format!("{{tessera}}:rl:sub:{}:{K8S_ISS}{ORCHESTRATOR}", K8S_ISS.len());
    assert_eq!(redis.cmd(&["DEL", &bucket]), "1");
    exchange(&a, request(&second, CRM, "crm:read")).await.expect("the throttled assertion, retried");
    assert_eq!(redis.cmd(&["EXISTS", &spent]), "1");
    assert_eq!(redis.cmd(&["DEL", &bucket]), "1");
    let replay = exchange(&b, request(&second, CRM, "crm:read")).await.unwrap_err();
    assert_eq!(oauth_error(&replay), "invalid_grant", "{}", replay.message());

    // A suspended agent over its limit is refused as suspended, not as throttled.
    let suspend = pb::SuspendRequest {
        target: Some(pb::suspend_request::Target::Subject(pb::Subject {
            issuer: "kubernetes".into(),
            sub: ORCHESTRATOR.into(),
        })),
        duration_seconds: 600,
        reason: "runaway".into(),
    };
    a.client().await.suspend(suspend).await.expect("suspend");
    let refused = exchange(&a, request(&k8s_with_jti("rl-3"), CRM, "crm:read")).await.unwrap_err();
    assert_eq!((refused.code(), oauth_error(&refused).as_str()), (Code::Unauthenticated, "invalid_grant"));
    assert!(refused.message().contains("suspended"), "{}", refused.message());
}

#[tokio::test]
async fn with_limits_on_an_exchange_is_still_one_redis_round_trip() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let limits = limits_toml("client_per_minute = 6000\nprincipal_per_minute = 6000\ntask_per_minute = 6000");
    for mode in ["strict", "mirror"] {
        // Status lists off: their registrations are background writes (own connection, own script) that the
        // server-wide command counts below would mix into the request path's (see status_list.rs).
        let broker = TestBroker::builder()
            .signing_key(&key)
            .redis(&redis.url(), mode)
            .extra_toml(&limits)
            .extra_toml("\n[status_list]\nenabled = false\n")
            .start()
            .await;
        // A re-exchange with an actor: the longest probe (ancestors, lineage, suspensions) and all three limits.
        let parent = exchange(&broker, request(&k8s_assertion(600), BROKER, "crm:read")).await.expect("task token");
        let mut child = request(&parent, CRM, "crm:read");
        child.task_id.clear();
        child.actor_token = spiffe_assertion(600);
        child.actor_token_type = JWT.into();
        // A mirror resyncs (ZRANGE, MGET) when it subscribes: let it finish first.
        if mode == "mirror" {
            assert!(eventually(|| broker.broker.store().mirror_trusted() == Some(true)).await, "the mirror syncs");
        }
        redis.cmd(&["CONFIG", "RESETSTAT"]);
        exchange(&broker, child).await.expect("delegated");
        // (The audit event is appended to the audit stream by a background writer, off the request path; the
        // mirror's heartbeats are background too.)
        // Redis counts the commands a script runs too: exactly the script's own (one MGET, the clock, a GET
        // and a SET per limit), so nothing was sent besides the one EVALSHA.
        let mut calls: Vec<_> = redis
            .command_calls()
            .into_iter()
            .filter(|(name, _)| !["xadd", "publish", "info"].contains(&name.as_str()) && !name.starts_with("config"))
            .collect();
        calls.sort();
        let expected = [("evalsha", 1), ("get", 3), ("mget", 1), ("set", 3), ("time", 1)];
        let expected: Vec<_> = expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        assert_eq!(calls, expected, "{mode}: one script, nothing else");
        broker.stop().await;
    }
}

/// `tessera exchange` for `assertion` through the broker at `url`: the JSON it printed, and whether it
/// succeeded.
fn cli_exchange(url: &str, assertion: &str) -> (bool, serde_json::Value) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = crate::support::process::tessera()
        .args(["exchange", "--addr", url, "--subject-token", "-", "--audience", CRM, "--scope", "crm:read"])
        .args(["--task-id", "cli-flood"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(assertion.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = if out.status.success() { &out.stdout } else { &out.stderr };
    let json = serde_json::from_slice(printed)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(printed)));
    (out.status.success(), json)
}

/// The acceptance check with real processes: two `tessera serve` replicas of one broker (one config folder,
/// one Redis), the limits set through `TESSERA__RATE_LIMITS__*` overrides, flooded through the CLI.
#[test]
fn two_serve_processes_on_one_redis_share_the_limit() {
    use crate::support::process::Serving;
    let redis = RedisServer::start();
    let dir = TestBroker::builder().redis(&redis.url(), "strict").write_config();
    let config = dir.path().join("tessera.toml");
    let serve = || {
        Serving::start(&["--config", config.to_str().unwrap()], |c| {
            c.env("TESSERA__LOG__LEVEL", "info")
                .env("TESSERA__RATE_LIMITS__PRINCIPAL_PER_MINUTE", "1")
                .env("TESSERA__RATE_LIMITS__PRINCIPAL_BURST", "3")
                .env_remove("RUST_LOG");
        })
    };
    let replicas = [serve(), serve()];
    let mut granted = 0;
    for i in 0..8 {
        let (ok, json) = cli_exchange(&replicas[i % 2].url(), &k8s_assertion(600));
        if ok {
            assert!(json["access_token"].is_string(), "{json}");
            granted += 1;
        } else {
            assert_eq!(
                (json["error"].as_str(), json["grpc_status"].as_i64()),
                (Some("rate_limited"), Some(8)),
                "{json}"
            );
            let wait = json["retry_after_ms"].as_u64().expect("the CLI shows the retry hint");
            assert!((1..=60_000).contains(&wait), "{json}");
        }
    }
    assert_eq!(granted, 3, "the burst, across both processes");
    // Another agent is unaffected, on either process.
    for replica in &replicas {
        let (ok, json) = cli_exchange(&replica.url(), &spiffe_assertion(600));
        assert!(ok, "{json}");
    }
}
