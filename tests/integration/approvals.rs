//! Step-up approvals (docs/approvals.md): a grant that policy allows only with a human's approval is pending,
//! an approver approves or denies it, and the identical exchange retried succeeds once, only for that task,
//! or stays refused. On one broker over gRPC, and across two `tessera serve` replicas on one Redis over HTTP
//! and the CLI, with the signed webhook received by a real HTTP server.

use std::time::Duration;

use base64::Engine as _;
use tessera::grpc::pb;
use tessera::grpc::pb::token_broker_client::TokenBrokerClient;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support::process::{Serving, tessera};
use crate::support::redis::RedisServer;
use crate::support::*;

/// Reads for the orchestrator's service accounts; exports only with a supervisor's approval; narrowing a
/// tessera token needs nothing more.
const POLICY: &str = r#"
@id("narrow-own-tokens")
permit (principal, action == Tessera::Action::"exchange", resource)
when { context.subject_is_tessera_token };

@id("support-read")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
when { principal.issuer == "kubernetes" && context.scope == "crm:read" };

@id("export-needs-approval")
@approval("exports leave the CRM: a supervisor approves each one")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
when { principal.issuer == "kubernetes" && context.scope == "crm:export" };
"#;

const SUPERVISOR: &str = "supervisor";

fn clients(secret_sha256: &str) -> String {
    format!(
        r#"
[[clients]]
id = "orchestrator"
secret_sha256 = "{secret_sha256}"
rpcs = ["exchange"]

[[clients]]
id = "{SUPERVISOR}"
secret_sha256 = "{secret_sha256}"
rpcs = ["approve"]

[[clients]]
id = "self-approver"
secret_sha256 = "{secret_sha256}"
rpcs = ["exchange", "approve"]

[[clients]]
id = "gateway"
secret_sha256 = "{secret_sha256}"
rpcs = ["introspect"]

[[clients]]
id = "local"
loopback_anonymous = true
rpcs = ["exchange", "introspect", "revoke"]
"#
    )
}

fn secret_sha256() -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CLIENT_SECRET.as_bytes()))
}

fn builder() -> TestBrokerBuilder {
    TestBroker::builder().policy(POLICY).clients_toml(&clients(&secret_sha256()))
}

fn basic(id: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{CLIENT_SECRET}")))
}

fn as_client<T>(id: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", basic(id).parse().unwrap());
    request
}

fn export(task: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        task_id: task.into(),
        purpose: "export case 1234 for the customer".into(),
        ..request(&k8s_assertion(300), CRM, "crm:read crm:export")
    }
}

/// The approval id (and its metadata) of an `authorization_pending` refusal.
fn pending(result: Result<tonic::Response<pb::ExchangeTokenResponse>, tonic::Status>) -> (String, tonic::Status) {
    let status = assert_refused(result, Code::FailedPrecondition, "authorization_pending", "");
    let info = status.get_details_error_info().unwrap();
    let id = info.metadata.get("approval_id").expect("approval_id").clone();
    assert_eq!(info.metadata.get("approval_uri").unwrap(), &format!("{BROKER}/approvals/{id}"));
    assert_eq!(info.metadata.get("interval").map(String::as_str), Some("5"));
    assert_eq!(status.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(5)));
    (id, status)
}

async fn get(grpc: &mut TokenBrokerClient<tonic::transport::Channel>, who: &str, id: &str) -> pb::Approval {
    let request = as_client(who, pb::GetApprovalRequest { approval_id: id.into() });
    grpc.get_approval(request).await.expect("GetApproval").into_inner()
}

fn decision(id: &str, reason: &str) -> pb::DecideApprovalRequest {
    pb::DecideApprovalRequest { approval_id: id.into(), reason: reason.into() }
}

#[tokio::test]
async fn an_export_waits_for_a_human_and_the_approved_retry_succeeds_once_and_only_for_that_task() {
    let broker = builder().start().await;
    let mut grpc = broker.client().await;

    // Pending: nothing is issued, and asking again names the same request.
    let (id, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-42"))).await);
    let (again, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-42"))).await);
    assert_eq!(again, id, "the identical exchange waits on the same approval");

    // What the approver sees: who, for what, which task, why.
    let seen = get(&mut grpc, SUPERVISOR, &id).await;
    assert_eq!(seen.status, "pending");
    assert_eq!(seen.client_id, "orchestrator");
    assert_eq!(seen.subject.as_ref().map(|s| s.sub.as_str()), Some(ORCHESTRATOR));
    assert_eq!((seen.audience.as_str(), seen.scope.as_str()), (CRM, "crm:read crm:export"));
    assert_eq!(seen.approval_scope, "crm:export");
    assert_eq!(seen.task_id, "task-42");
    assert_eq!(seen.purpose, "export case 1234 for the customer");
    assert_eq!(seen.reasons, ["exports leave the CRM: a supervisor approves each one"]);
    assert_eq!(seen.policies, ["export-needs-approval"]);
    assert_eq!(get(&mut grpc, "orchestrator", &id).await.status, "pending", "the requester may poll it");

    // Who may not: a client that neither asked nor approves; the requester deciding; an unknown id.
    let denied = grpc.get_approval(as_client("gateway", pb::GetApprovalRequest { approval_id: id.clone() })).await;
    assert_refused(denied, Code::PermissionDenied, "unauthorized_client", "");
    let own = grpc.approve(as_client("orchestrator", decision(&id, ""))).await;
    assert_refused(own, Code::PermissionDenied, "unauthorized_client", "");
    let unknown = grpc.approve(as_client(SUPERVISOR, decision("AAAAAAAAAAAAAAAAAAAAAA", ""))).await;
    assert_refused(unknown, Code::NotFound, "not_found", "");
    let garbage = grpc.approve(as_client(SUPERVISOR, decision("../../etc/passwd", ""))).await;
    assert_refused(garbage, Code::InvalidArgument, "invalid_request", "");
    let control = grpc.approve(as_client(SUPERVISOR, decision(&id, "ok\nevent=forged"))).await;
    assert_refused(control, Code::InvalidArgument, "invalid_request", "");
    assert_eq!(get(&mut grpc, SUPERVISOR, &id).await.status, "pending", "refused calls changed nothing");

    let approved = grpc.approve(as_client(SUPERVISOR, decision(&id, "customer asked, ticket 77"))).await.unwrap();
    let approved = approved.into_inner();
    assert_eq!((approved.status.as_str(), approved.decided_by.as_str()), ("approved", SUPERVISOR));
    assert_eq!(approved.decision_reason, "customer asked, ticket 77");

    // Bound to the task: the same exchange for another task is another request.
    let (other, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-43"))).await);
    assert_ne!(other, id);
    // Bound to the client: another client's identical exchange does not ride on it.
    let (elsewhere, _) = pending(grpc.exchange_token(as_client("self-approver", export("task-42"))).await);
    assert_ne!(elsewhere, id);

    let issued = grpc.exchange_token(as_client("orchestrator", export("task-42"))).await.unwrap().into_inner();
    assert_eq!(issued.scope, "crm:read crm:export");
    let claims = decode(&issued.access_token);
    assert_eq!((claims.task_id.as_str(), claims.client_id.as_str()), ("task-42", "orchestrator"));
    let used = get(&mut grpc, SUPERVISOR, &id).await;
    assert_eq!((used.status.as_str(), used.jti.as_str()), ("used", claims.jti.as_str()));

    // Once: the next identical exchange asks again.
    let (next, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-42"))).await);
    assert_ne!(next, id);
    let reapprove = grpc.approve(as_client(SUPERVISOR, decision(&id, ""))).await;
    assert_refused(reapprove, Code::InvalidArgument, "invalid_request", "");

    // Nobody approves their own escalation, even a client that may approve.
    let refused = grpc.approve(as_client("self-approver", decision(&elsewhere, ""))).await;
    assert_refused(refused, Code::PermissionDenied, "unauthorized_client", "");

    // Narrowing the approved token needs no new approval (and can only narrow).
    let mut narrower = request(&issued.access_token, CRM, "crm:export");
    narrower.subject_token_type = ACCESS_TOKEN.into();
    narrower.task_id = String::new();
    let narrowed = grpc.exchange_token(as_client("orchestrator", narrower)).await.unwrap().into_inner();
    assert_eq!(narrowed.scope, "crm:export");
    // A read alone never waits.
    let read = request(&k8s_assertion(300), CRM, "crm:read");
    assert_eq!(grpc.exchange_token(as_client("orchestrator", read)).await.unwrap().into_inner().scope, "crm:read");
}

#[tokio::test]
async fn a_denied_or_expired_approval_never_grants() {
    let broker = builder().extra_toml("\n[approvals]\npending_ttl = 1\n").start().await;
    let mut grpc = broker.client().await;

    let (id, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-d"))).await);
    let denied = grpc.deny(as_client(SUPERVISOR, decision(&id, "not for this customer"))).await.unwrap();
    assert_eq!(denied.into_inner().status, "denied");
    for _ in 0..2 {
        let retried = grpc.exchange_token(as_client("orchestrator", export("task-d"))).await;
        assert_refused(retried, Code::PermissionDenied, "access_denied", "");
    }
    let late = grpc.approve(as_client(SUPERVISOR, decision(&id, ""))).await;
    assert_refused(late, Code::InvalidArgument, "invalid_request", "");

    // Pending for one second, then gone: it cannot be approved, and the retry is a new request.
    let (stale, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-e"))).await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = grpc.approve(as_client(SUPERVISOR, decision(&stale, ""))).await;
    assert_refused(expired, Code::NotFound, "not_found", "");
    let (fresh, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-e"))).await);
    assert_ne!(fresh, stale, "an expired approval never grants: the retry asks again");
}

#[tokio::test]
async fn revoking_the_task_ends_what_the_approval_granted() {
    let broker = builder().start().await;
    let mut grpc = broker.client().await;
    let (id, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-r"))).await);
    grpc.approve(as_client(SUPERVISOR, decision(&id, ""))).await.unwrap();
    let issued = grpc.exchange_token(as_client("orchestrator", export("task-r"))).await.unwrap().into_inner();
    let introspect = |token: &str| pb::IntrospectRequest { token: token.into(), ..Default::default() };
    assert!(grpc.introspect(introspect(&issued.access_token)).await.unwrap().into_inner().active);

    let (second, _) = pending(grpc.exchange_token(as_client("orchestrator", export("task-r"))).await);
    grpc.approve(as_client(SUPERVISOR, decision(&second, ""))).await.unwrap();
    let revoke = pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::TaskId("task-r".into())),
        reason: "incident".into(),
    };
    grpc.revoke(revoke).await.unwrap();
    assert!(!grpc.introspect(introspect(&issued.access_token)).await.unwrap().into_inner().active);
    // The approval still stands, but nothing is issued for a revoked task.
    let after = grpc.exchange_token(as_client("orchestrator", export("task-r"))).await;
    assert_refused(after, Code::Unauthenticated, "invalid_grant", "");
    assert_eq!(get(&mut grpc, SUPERVISOR, &second).await.status, "approved", "the refused retry spent nothing");
}

/// Records what the webhook receives: (headers, body).
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, Vec<u8>)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks/approvals",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// `t=…,v1=…` checked as a receiver would: HMAC-SHA256 over `t.body`, compared in constant time.
fn signed_by(headers: &axum::http::HeaderMap, body: &[u8], key: &str) -> bool {
    let Some(header) = headers.get("tessera-signature").and_then(|v| v.to_str().ok()) else { return false };
    let (Some(t), Some(v1)) =
        (header.split(',').find_map(|p| p.strip_prefix("t=")), header.split(',').find_map(|p| p.strip_prefix("v1=")))
    else {
        return false;
    };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    let signed = [t.as_bytes(), b".", body].concat();
    hex::decode(v1).is_ok_and(|tag| aws_lc_rs::hmac::verify(&key, &signed, &tag).is_ok())
}

fn token_form(task: &str) -> String {
    form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", &k8s_assertion(300)),
        ("subject_token_type", JWT),
        ("audience", CRM),
        ("scope", "crm:read crm:export"),
        ("task_id", task),
    ])
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
        .collect::<Vec<_>>()
        .join("&")
}

async fn post(url: String, who: &str, body: String) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("authorization", basic(who))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get_http(url: String, who: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new().get(url).header("authorization", basic(who)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn two_replicas_share_approvals_over_http_and_the_cli_and_the_webhook_announces_each_request_signed() {
    let redis = RedisServer::start();
    let (hook, mut announced) = webhook_receiver().await;
    let key = "a webhook key of at least thirty-two bytes, shared with the receiver";
    let config = builder()
        .redis(&redis.url(), "strict")
        .extra_toml(&format!("\n[approvals]\nwebhook_url = \"{hook}\"\nwebhook_secret_file = \"webhook.key\"\n"))
        .write_config();
    std::fs::write(config.path().join("webhook.key"), key).unwrap();
    let path = config.path().join("tessera.toml");
    let serve = || {
        Serving::start(&["--config", path.to_str().unwrap()], |c| {
            c.env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
        })
    };
    let (a, b) = (serve(), serve());

    // Pending on A, in the HTTP error document.
    let (status, body) = post(format!("http://{}/oauth2/token", a.http), "orchestrator", token_form("task-h")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("authorization_pending")), "{body}");
    let id = body["approval_id"].as_str().unwrap().to_string();
    assert_eq!(body["approval_uri"], format!("{BROKER}/approvals/{id}"));
    assert_eq!(body["interval"], 5);

    // B sees the same request.
    let (status, seen) = get_http(format!("http://{}/approvals/{id}", b.http), "orchestrator").await;
    assert_eq!((status, seen["status"].as_str()), (200, Some("pending")), "{seen}");
    assert_eq!(seen["approval_scope"], "crm:export");

    // Announced once, signed with the shared key, naming the request and how to decide it.
    let (headers, raw) = tokio::time::timeout(Duration::from_secs(10), announced.recv()).await.unwrap().unwrap();
    assert!(signed_by(&headers, &raw, key), "the webhook's signature verifies with the shared key");
    assert!(!signed_by(&headers, &raw, "another key of at least thirty-two bytes long"), "and only with it");
    let announcement: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(announcement["type"], "approval.requested");
    assert_eq!(announcement["approval"]["approval_id"], id.as_str());
    assert_eq!(announcement["approval"]["task_id"], "task-h");
    assert_eq!(announcement["decide"]["approve"], format!("tessera approve {id}"));
    assert!(!String::from_utf8_lossy(&raw).contains("eyJ"), "the announcement carries no token");

    // Bad input on the HTTP face: clear errors, nothing changed.
    let (status, e) = get_http(format!("http://{}/approvals/not-an-id", b.http), SUPERVISOR).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_request")));
    let (status, e) = get_http(format!("http://{}/approvals/AAAAAAAAAAAAAAAAAAAAAA", b.http), SUPERVISOR).await;
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")));
    let (status, e) = post(format!("http://{}/approvals/{id}/approve", b.http), "orchestrator", String::new()).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("unauthorized_client")));

    // An approver approves on B with the CLI.
    let output = tessera()
        .args(["approve", &id, "--addr", &b.url(), "--as-client", SUPERVISOR, "--client-secret", CLIENT_SECRET])
        .args(["--reason", "ticket 77"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((printed["status"].as_str(), printed["decided_by"].as_str()), (Some("approved"), Some(SUPERVISOR)));

    // The retried exchange succeeds on A, once; B then asks again.
    let (status, issued) = post(format!("http://{}/oauth2/token", a.http), "orchestrator", token_form("task-h")).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["scope"], "crm:read crm:export");
    let (status, again) = post(format!("http://{}/oauth2/token", b.http), "orchestrator", token_form("task-h")).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("authorization_pending")));
    let next = again["approval_id"].as_str().unwrap().to_string();
    assert_ne!(next, id);

    // Denied over HTTP on A: the retry on B is refused for good.
    let reason = form(&[("reason", "no")]);
    let (status, denied) = post(format!("http://{}/approvals/{next}/deny", a.http), SUPERVISOR, reason).await;
    assert_eq!((status, denied["status"].as_str()), (200, Some("denied")), "{denied}");
    let (status, refused) = post(format!("http://{}/oauth2/token", b.http), "orchestrator", token_form("task-h")).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("access_denied")));

    // Every step is an audit event, on the replica where it happened.
    let (_, logs_a) = a.terminate();
    let (_, logs_b) = b.terminate();
    for (logs, step) in [(&logs_a, "requested"), (&logs_b, "approved"), (&logs_a, "used"), (&logs_a, "denied")] {
        let line = logs.lines().find(|l| l.contains("event=approval") && l.contains(&format!("decision={step}")));
        assert!(line.is_some(), "no `{step}` audit event:\n{logs}");
    }
    assert!(logs_a.contains(&format!("approval_id=\"{id}\"")), "the granted exchange names its approval");
    assert!(!logs_a.contains(key) && !logs_b.contains(key), "the webhook key is never logged");
}

/// Approval by what the RFC 9396 details ask: reading a case record is granted at once, writing it waits for
/// a human, and the approval is bound to exactly those details.
#[tokio::test]
async fn policy_can_ask_approval_for_some_authorization_details_only() {
    let policy = r#"
@id("case-read")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
when {
  principal.issuer == "kubernetes" && context.scope == "crm:read" &&
  context.authorization_details == [{"type": "crm_case", actions: ["read"], identifier: context.task_id}]
};

@id("case-write-needs-approval")
@approval("writing a case record needs the case owner's approval")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
when {
  principal.issuer == "kubernetes" && context.scope == "crm:write" &&
  context.authorization_details == [{"type": "crm_case", actions: ["read", "write"], identifier: context.task_id}]
};
"#;
    let broker = builder().policy(policy).crm_toml(crate::rar::CRM_DETAILS).start().await;
    let mut grpc = broker.client().await;
    let ask = |scope: &str, actions: &[&str]| pb::ExchangeTokenRequest {
        task_id: "1234".into(),
        authorization_details: serde_json::json!([{"type": "crm_case", "actions": actions, "identifier": "1234"}])
            .to_string(),
        ..request(&k8s_assertion(300), CRM, scope)
    };
    let read = grpc.exchange_token(as_client("orchestrator", ask("crm:read", &["read"]))).await.unwrap();
    assert_eq!(read.into_inner().scope, "crm:read", "a read is granted without a human");

    let (id, _) = pending(grpc.exchange_token(as_client("orchestrator", ask("crm:write", &["read", "write"]))).await);
    let seen = get(&mut grpc, SUPERVISOR, &id).await;
    let details: serde_json::Value = serde_json::from_str(&seen.authorization_details).unwrap();
    assert_eq!(details[0]["actions"], serde_json::json!(["read", "write"]), "the approver sees the details");
    assert_eq!(seen.reasons, ["writing a case record needs the case owner's approval"]);
    grpc.approve(as_client(SUPERVISOR, decision(&id, ""))).await.unwrap();

    let issued = grpc.exchange_token(as_client("orchestrator", ask("crm:write", &["read", "write"]))).await.unwrap();
    let claims = decode(&issued.into_inner().access_token);
    let granted = serde_json::to_value(&claims.authorization_details).unwrap();
    assert_eq!(granted[0]["actions"], serde_json::json!(["read", "write"]));
    assert_eq!(granted[0]["identifier"], "1234");
}

/// docs/approvals.md's walkthrough, on the files of examples/approvals/ in a fresh folder, as written there.
#[tokio::test]
async fn the_escalation_example_runs_as_docs_approvals_md_shows() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/approvals");
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let run = |args: &[&str]| {
        let output = tessera().args(args).current_dir(dir.path()).env_remove("TESSERA_DEV_DIR").output().unwrap();
        assert!(output.status.success(), "tessera {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    std::fs::write(dir.path().join("dev-issuer.jwks.json"), run(&["dev", "jwks"])).unwrap();
    run(&["keygen", "--out", "signing.pem"]);
    assert!(run(&["config", "check", "tessera.toml"]).contains("ok"));
    let explained = run(&[
        "policy",
        "check",
        "--config",
        "tessera.toml",
        "--principal",
        "dev:support-agent",
        "--audience",
        CRM,
        "--scope",
        "crm:read crm:export",
        "--task-id",
        "ticket-77",
    ]);
    assert!(explained.contains("=> the exchange would wait for a human's approval"), "{explained}");

    let config = dir.path().join("tessera.toml");
    let server = Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.current_dir(dir.path()).env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
    });
    let exchange = |task: &str| {
        let assertion = run(&["dev", "assertion", "--sub", "support-agent"]);
        form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", assertion.trim()),
            ("subject_token_type", JWT),
            ("audience", CRM),
            ("scope", "crm:read crm:export"),
            ("task_id", task),
        ])
    };
    let token_url = format!("http://{}/oauth2/token", server.http);
    let desk = |body: String| {
        reqwest::Client::new()
            .post(token_url.clone())
            .basic_auth("support-desk", Some("desk-secret-change-me"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let pending: serde_json::Value = desk(exchange("ticket-77")).await.unwrap().json().await.unwrap();
    assert_eq!(pending["error"], "authorization_pending", "{pending}");
    let id = pending["approval_id"].as_str().unwrap();
    let approve = |who: &str, secret: &str| {
        tessera()
            .args(["approve", id, "--addr", &server.url(), "--as-client", who, "--client-secret", secret])
            .output()
            .unwrap()
    };
    assert!(!approve("support-desk", "desk-secret-change-me").status.success(), "the desk cannot approve");
    let approved = approve("supervisor-console", "supervisor-secret-change-me");
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let issued = desk(exchange("ticket-77")).await.unwrap();
    assert_eq!(issued.status(), 200);
    let issued: serde_json::Value = issued.json().await.unwrap();
    assert_eq!(issued["scope"], "crm:read crm:export");
    let again: serde_json::Value = desk(exchange("ticket-77")).await.unwrap().json().await.unwrap();
    assert_eq!(again["error"], "authorization_pending", "approved once, granted once");
}

/// The Rust client (`tessera::sdk`, which the CLI uses): a pending exchange names its approval, an approver's
/// client decides it, and the retried exchange is granted.
#[tokio::test]
async fn the_rust_sdk_surfaces_a_pending_approval_and_an_approver_decides_it() {
    use tessera::sdk::{Broker, Config, Credentials, Exchange};
    let broker = builder().start().await;
    let sdk = |id: &str| {
        let mut config = Config::new(format!("http://{}", broker.addr));
        config.credentials = Credentials::ClientSecret {
            client_id: id.into(),
            secret: std::sync::Arc::new(tessera::secret::ClientSecret::new(CLIENT_SECRET)),
        };
        Broker::new(config).unwrap()
    };
    let (desk, supervisor) = (sdk("orchestrator"), sdk(SUPERVISOR));
    let ask = || Exchange::new(tessera::secret::Token::new(k8s_assertion(300)), CRM, "crm:export").task("task-sdk");
    let error = desk.exchange_uncached(&ask()).await.unwrap_err();
    let pending = error.approval_pending().expect("authorization_pending names its approval");
    assert_eq!(
        (pending.interval, pending.approval_uri.ends_with(&pending.approval_id)),
        (Duration::from_secs(5), true)
    );
    assert_eq!(desk.approval(&pending.approval_id).await.unwrap().status, "pending");
    assert_eq!(desk.approve(&pending.approval_id, "").await.unwrap_err().oauth_error(), Some("unauthorized_client"));
    assert_eq!(supervisor.approve(&pending.approval_id, "ok").await.unwrap().status, "approved");
    assert_eq!(desk.exchange_uncached(&ask()).await.unwrap().scope, "crm:export");
    let again = desk.exchange_uncached(&ask()).await.unwrap_err();
    assert!(again.approval_pending().is_some_and(|p| p.approval_id != pending.approval_id), "spent once");
    assert_eq!(supervisor.deny(&again.approval_pending().unwrap().approval_id, "").await.unwrap().status, "denied");
    assert_eq!(desk.exchange_uncached(&ask()).await.unwrap_err().oauth_error(), Some("access_denied"));
}
