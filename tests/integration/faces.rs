//! The faces under hostile or heavy traffic: audit lines that requests cannot forge, client authentication
//! details (the Basic scheme's case, empty secrets), and health and reflection answering while the broker's
//! RPCs are at their concurrency limit.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tessera::grpc::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use crate::support::process::Serving;
use crate::support::*;

// --- Audit lines cannot be forged ---------------------------------------------------------------------

/// A complete, well-formed audit line of the text format, announcing a revocation that never happened.
fn forged(marker: &str) -> String {
    format!("2026-01-01T00:00:00.000000Z  INFO tessera::audit: event=revoke decision=revoked jti=\"{marker}\"")
}

/// `line` with every double-quoted value (and its backslash escapes) taken out: what a reader of the text
/// format takes for field names and bare words.
fn unquoted(line: &str) -> String {
    let (mut out, mut quoted, mut escaped) = (String::new(), false, false);
    for c in line.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, false, _) => {}
            (false, _, '"') => quoted = true,
            (false, _, c) => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn request_text_cannot_forge_an_audit_line() {
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let server = Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__FORMAT", "text").env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
    });
    let mut client = pb::token_broker_client::TokenBrokerClient::connect(server.url()).await.expect("connect");

    let assertion = k8s_assertion(600);
    let mut scope = request(&assertion, CRM, &format!("crm:read\n{}", forged("forged-scope")));
    scope.task_id = "forge-scope".into();
    let audience = request(&assertion, &format!("{CRM}\n{}", forged("forged-audience")), "crm:read");
    let mut task = request(&assertion, CRM, "crm:read");
    task.task_id = format!("t\n{}", forged("forged-task"));
    // An upstream assertion whose `sub` carries the forged line (signed by a trusted issuer).
    let mut sub_claims = claims("kubernetes", 600);
    sub_claims["sub"] = format!("{ORCHESTRATOR}\n{}", forged("forged-sub")).into();
    let forged_sub = Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &sub_claims);
    let sub = request(&forged_sub, CRM, "crm:read");
    for r in [scope, audience, task, sub] {
        // Granted or refused, each is audited; the outcome is not what this test is about.
        let _ = client.exchange_token(r).await;
    }

    // The server drains open connections on SIGTERM: close ours first.
    drop(client);
    // Waited for off the runtime, which must keep running to close the connection.
    let (_, logs) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();

    let audit_lines: Vec<&str> = logs.lines().filter(|l| l.contains("tessera::audit")).collect();
    // A `sub` with a control character is refused before it is looked at: it never reaches the log.
    assert!(!logs.contains("forged-sub"), "a refused subject reached the log:\n{logs}");
    for marker in ["forged-scope", "forged-audience", "forged-task"] {
        // The text reached the log (so the checks below are not vacuous)…
        assert!(logs.contains(marker), "no audit line carries {marker}:\n{logs}");
        // …but only inside a quoted, escaped value: `\n`, not a line break.
        assert!(
            audit_lines.iter().any(|l| l.contains(marker) && l.contains("\\n2026-01-01T00:00:00")),
            "{marker} is not escaped:\n{logs}"
        );
    }
    for line in logs.lines() {
        assert!(!line.starts_with("2026-01-01T00:00:00"), "a request wrote a line of its own: {line}\n{logs}");
        assert!(!unquoted(line).contains("event=revoke"), "a forged revocation reads as real: {line}\n{logs}");
    }
    // Four real exchange events, each on one line, with the broker's own words unquoted.
    let exchanges = audit_lines.iter().filter(|l| unquoted(l).contains("event=exchange decision=")).count();
    assert_eq!(exchanges, 4, "{logs}");
}

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

// --- Health and reflection are outside the broker's concurrency limit ---------------------------------

/// A JWKS endpoint that answers its first request (the broker's warm-up) and holds every later connection
/// open, unanswered, until [`StallingJwks::release`].
struct StallingJwks {
    url: String,
    stalled: tokio::sync::watch::Receiver<usize>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingJwks {
    async fn start(jwks: String) -> StallingJwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let (stalled_tx, stalled) = tokio::sync::watch::channel(0usize);
        let (release, released) = tokio::sync::watch::channel(false);
        let stalled_tx = Arc::new(stalled_tx);
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                if first {
                    first = false;
                    let _ = socket.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                        jwks.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    continue;
                }
                let (stalled_tx, mut released) = (Arc::clone(&stalled_tx), released.clone());
                tokio::spawn(async move {
                    let _ = socket.read(&mut buf).await;
                    stalled_tx.send_modify(|n| *n += 1);
                    // Never answers; closes the connection once released.
                    let _ = released.wait_for(|r| *r).await;
                });
            }
        });
        StallingJwks { url, stalled, release, task }
    }

    /// Waits until a request is being held.
    async fn wait_stalled(&mut self) {
        let held = tokio::time::timeout(Duration::from_secs(20), self.stalled.wait_for(|n| *n >= 1)).await;
        assert!(matches!(held, Ok(Ok(_))), "the broker never fetched the JWKS for the unknown kid");
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for StallingJwks {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

async fn health_check(channel: Channel) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest { service: "tessera.v1.TokenBroker".into() };
    Ok(health.check(request).await?.into_inner().status)
}

async fn list_services(channel: Channel) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1 as r1;
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([ask])).await?.into_inner();
    match answers.message().await?.and_then(|m| m.message_response) {
        Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(tonic::Status::internal(format!("not a service list: {other:?}"))),
    }
}

#[tokio::test]
async fn health_and_reflection_answer_while_the_broker_is_at_its_limit() {
    let kubernetes_jwks = std::fs::read_to_string(fixtures().join("kubernetes.jwks.json")).unwrap();
    let mut jwks = StallingJwks::start(kubernetes_jwks).await;
    let issuer = format!(
        "\n[[issuers]]\nname = \"kubernetes\"\nissuer = \"{K8S_ISS}\"\njwks_url = \"{}\"\nalgorithms = [\"RS256\"]\nmin_refresh_interval = 0\n",
        jwks.url
    );
    let broker = TestBroker::builder()
        .issuers_toml(&issuer)
        .extra_toml("\n[server]\nmax_concurrent_requests = 1\nrequest_timeout_ms = 60000\nmax_queue_wait_ms = 60000\n")
        .start()
        .await;
    let connect =
        || async { Channel::from_shared(format!("http://{}", broker.addr)).unwrap().connect().await.unwrap() };

    // One broker RPC takes the only slot: its subject token names a key the broker must fetch, and the
    // issuer's JWKS endpoint does not answer.
    let unknown_kid = Signer::rs256("kubernetes.key.pem").token("rotated-away", &claims("kubernetes", 600));
    let mut held_client = pb::token_broker_client::TokenBrokerClient::new(connect().await);
    let mut held = tokio::spawn({
        let r = request(&unknown_kid, CRM, "crm:read");
        async move { held_client.exchange_token(r).await }
    });
    jwks.wait_stalled().await;

    // Health and reflection answer while it is in flight.
    let probes = connect().await;
    tokio::select! {
        biased;
        done = &mut held => panic!("the held RPC ended before health answered: {done:?}"),
        status = health_check(probes.clone()) => {
            assert_eq!(status.unwrap(), tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        }
    }
    tokio::select! {
        biased;
        done = &mut held => panic!("the held RPC ended before reflection answered: {done:?}"),
        names = list_services(probes.clone()) => {
            assert!(names.unwrap().contains(&"tessera.v1.TokenBroker".to_string()));
        }
    }

    // Another broker RPC waits for the slot: it has not finished while the first is still in flight…
    let mut second_client = pb::token_broker_client::TokenBrokerClient::new(connect().await);
    let second = tokio::spawn(async move { second_client.get_jwks(pb::GetJwksRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(health_check(probes).await.is_ok());
    assert!(!held.is_finished(), "the held RPC ended early; the check below would prove nothing");
    assert!(!second.is_finished(), "a second broker RPC ran past max_concurrent_requests = 1");

    // …and runs once the first ends (refused: the key it names cannot be fetched).
    jwks.release();
    let refused = held.await.unwrap();
    assert_refused(refused, tonic::Code::Unauthenticated, "invalid_grant", &unknown_kid);
    let keys = second.await.unwrap().expect("the waiting RPC runs once the slot is free").into_inner();
    assert!(!keys.keys.is_empty());
}

#[tokio::test]
async fn past_the_limit_broker_calls_are_shed_fast_on_both_faces() {
    let kubernetes_jwks = std::fs::read_to_string(fixtures().join("kubernetes.jwks.json")).unwrap();
    let mut jwks = StallingJwks::start(kubernetes_jwks).await;
    let issuer = format!(
        "\n[[issuers]]\nname = \"kubernetes\"\nissuer = \"{K8S_ISS}\"\njwks_url = \"{}\"\nalgorithms = [\"RS256\"]\nmin_refresh_interval = 0\n",
        jwks.url
    );
    let broker = TestBroker::builder()
        .issuers_toml(&issuer)
        .extra_toml("\n[server]\nmax_concurrent_requests = 1\nrequest_timeout_ms = 60000\nmax_queue_wait_ms = 50\n")
        .start()
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
    let connect =
        || async { Channel::from_shared(format!("http://{}", broker.addr)).unwrap().connect().await.unwrap() };

    // One broker call holds the only slot (its subject names a key whose JWKS endpoint never answers).
    let unknown_kid = Signer::rs256("kubernetes.key.pem").token("rotated-away", &claims("kubernetes", 600));
    let mut held_client = pb::token_broker_client::TokenBrokerClient::new(connect().await);
    let held = tokio::spawn({
        let r = request(&unknown_kid, CRM, "crm:read");
        async move { held_client.exchange_token(r).await }
    });
    jwks.wait_stalled().await;

    // Another gRPC call is refused while the first is still in flight, not queued behind it.
    let mut second = pb::token_broker_client::TokenBrokerClient::new(connect().await);
    let shed = second.get_jwks(pb::GetJwksRequest::default()).await.expect_err("shed");
    assert_eq!((shed.code(), oauth_error(&shed).as_str()), (tonic::Code::ResourceExhausted, "temporarily_unavailable"));
    // So is an HTTP call to the broker, with 503 and Retry-After; health still answers.
    let r = reqwest::Client::new()
        .post(format!("{http}/oauth2/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=x")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["retry-after"].to_str().unwrap()), (503, "1"));
    assert_eq!(reqwest::get(format!("{http}/healthz")).await.unwrap().status(), 200);
    assert!(!held.is_finished(), "the held call ended early; the refusals above would prove nothing");
    assert!(health_check(connect().await).await.is_ok());

    // Once the slot is free, calls run again.
    jwks.release();
    let _ = held.await.unwrap();
    assert!(second.get_jwks(pb::GetJwksRequest::default()).await.is_ok());
}
