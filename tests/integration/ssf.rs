//! The Shared Signals transmitter with a receiver nobody here wrote (tests/interop/ssf_receiver.py: PyJWT
//! verifying each SET against tessera's JWK Set): every revocation is pushed (RFC 8935) as a signed CAEP
//! `session-revoked` SET, retried until the receiver takes it, delivered once by one of two replicas; a poll
//! receiver (RFC 8936) gets the same SETs until it acknowledges them; the metadata is served.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera::grpc::pb::{self, revoke_request::Target};

use tessera::grpc::pb::token_broker_client::TokenBrokerClient;

use crate::support::process::Serving;
use crate::support::redis::RedisServer;
use crate::support::*;

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const PATIENCE: Duration = Duration::from_secs(30);

fn python() -> String {
    std::env::var("TESSERA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TESSERA_TEST_PYTHON is not set: run the suite with `bash scripts/test`, which installs PyJWT in a venv")
    })
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ssf_receiver.py")
}

struct TestReceiver {
    child: Child,
    lines: Option<mpsc::Receiver<Value>>,
    port: u16,
}

impl TestReceiver {
    fn start(jwks: &std::path::Path, audience: &str, fail_first: u32) -> TestReceiver {
        let mut child = Command::new(python())
            .arg(script())
            .args(["serve", "--issuer", BROKER, "--audience", audience, "--fail-first", &fail_first.to_string()])
            .arg("--jwks-file")
            .arg(jwks)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python SSF receiver");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(PATIENCE).expect("the receiver started");
        let port = u16::try_from(first["listening"].as_u64().expect("its port")).unwrap();
        TestReceiver { child, lines: Some(lines), port }
    }

    async fn next(&mut self) -> Value {
        let lines = self.lines.take().unwrap();
        let (line, lines) = tokio::task::spawn_blocking(move || (lines.recv_timeout(PATIENCE), lines)).await.unwrap();
        self.lines = Some(lines);
        line.unwrap_or_else(|_| panic!("the receiver heard nothing for {PATIENCE:?}"))
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn revoke(broker: &TestBroker, target: Target, reason: &str) {
    let req = pb::RevokeRequest { target: Some(target), reason: reason.into() };
    broker.client().await.revoke(req).await.expect("revoke");
}

async fn write_jwks(broker: &TestBroker, path: &std::path::Path) {
    let jwks = broker.client().await.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner().jwks_json;
    std::fs::write(path, jwks).unwrap();
}

/// `(format, the identifying member)` of a SET's subject, and its event's tessera kind.
fn subject_of(set: &Value) -> (String, String, String) {
    let sub_id = &set["sub_id"];
    let id = ["jti", "sub", "id"].iter().find_map(|k| sub_id[k].as_str()).unwrap_or_default();
    let kind = set["events"][SESSION_REVOKED]["tessera"]["kind"].as_str().unwrap_or_default();
    (sub_id["format"].as_str().unwrap_or_default().into(), id.into(), kind.into())
}

#[tokio::test]
async fn a_pushed_set_reaches_the_receiver_once_verified_and_retried_from_either_replica() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let auth = dir.path().join("siem.authorization");
    std::fs::write(&auth, "Bearer siem-secret\n").unwrap();
    // The receiver refuses its first two pushes (503): the transmitter must retry them.
    let mut receiver = TestReceiver::start(&jwks, "https://siem.example", 2);
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let receivers = format!(
        "\n[[ssf.receivers]]\nid = \"siem\"\naudience = \"https://siem.example\"\npush_url = \"http://127.0.0.1:{}/events\"\npush_authorization_file = \"{}\"\n",
        receiver.port,
        auth.display()
    );
    let replica = || TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").extra_toml(&receivers);
    let (a, b) = (replica().start().await, replica().start().await);
    write_jwks(&a, &jwks).await;
    // Delivery starts from the log's end when the transmitter first sees the receiver: wait for that.
    let deadline = Instant::now() + PATIENCE;
    while redis.cmd(&["EXISTS", "{tessera}:ssf:cursor:siem"]) != "1" {
        assert!(Instant::now() < deadline, "the transmitter never started delivering");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let revoked_at = Instant::now();
    revoke(&a, Target::Jti("ssf-jti-1".into()), "leaked").await;
    revoke(&b, Target::TaskId("ssf-task".into()), "").await;
    revoke(&a, Target::Subject(pb::Subject { issuer: "kubernetes".into(), sub: ORCHESTRATOR.into() }), "").await;
    assert_eq!(receiver.next().await, json!({ "refused": 1 }));
    assert_eq!(receiver.next().await, json!({ "refused": 2 }));
    let mut sets = Vec::new();
    while sets.len() < 3 {
        let line = receiver.next().await;
        assert!(line.get("invalid").is_none(), "a SET did not verify: {line}");
        assert_eq!(line["authorization"], "Bearer siem-secret");
        sets.push(line["set"].clone());
    }
    eprintln!("ssf: 3 revocations → 3 verified SETs (after 2 refused pushes) in {:?}", revoked_at.elapsed());
    assert_eq!(
        sets.iter().map(subject_of).collect::<Vec<_>>(),
        [
            ("jwt_id".into(), "ssf-jti-1".into(), "jti".into()),
            ("opaque".into(), "ssf-task".into(), "task".into()),
            ("iss_sub".into(), ORCHESTRATOR.into(), "subject".into()),
        ]
    );
    assert_eq!(sets[0]["sub_id"]["iss"], BROKER);
    assert_eq!(sets[0]["events"][SESSION_REVOKED]["reason_admin"]["en"], "leaked");
    assert_eq!(sets[2]["sub_id"]["iss"], K8S_ISS);
    let jtis: std::collections::BTreeSet<_> = sets.iter().map(|s| s["jti"].as_str().unwrap().to_string()).collect();
    assert_eq!(jtis.len(), 3);
    assert!(jtis.iter().all(|j| j.starts_with("siem.")), "{jtis:?}");

    // Once each: the next push is the next revocation, not a repeat from the other replica.
    let pushed_at = Instant::now();
    revoke(&b, Target::ClientId("orchestrator".into()), "").await;
    let line = receiver.next().await;
    // A measurement for the record, not an assertion: revocation acknowledged → SET verified by the receiver.
    eprintln!("ssf: one revocation → its SET received and verified in {:?}", pushed_at.elapsed());
    assert_eq!(subject_of(&line["set"]), ("opaque".into(), "orchestrator".into(), "client".into()));
}

#[tokio::test]
async fn a_poll_receiver_gets_sets_until_it_acknowledges_them() {
    let token_sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"poll-secret"));
    let receivers = format!("\n[[ssf.receivers]]\nid = \"auditor\"\npoll_token_sha256 = \"{token_sha256}\"\n");
    let broker = TestBroker::builder().extra_toml(&receivers).start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let http = reqwest::Client::new();

    let metadata: Value =
        http.get(format!("{base}/.well-known/ssf-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["issuer"], BROKER);
    assert_eq!(metadata["jwks_uri"], format!("{BROKER}/.well-known/jwks.json"));
    assert_eq!(metadata["delivery_methods_supported"], json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]));

    let poll = |body: Value, token: &'static str| {
        let request = http.post(format!("{base}/ssf/poll/auditor")).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, refused) = poll(json!({ "returnImmediately": true }), "wrong").await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("invalid_client")));
    // The first poll fixes where delivery starts.
    let (status, first) = poll(json!({ "returnImmediately": true }), "poll-secret").await;
    assert_eq!((status, first["sets"].as_object().map(|s| s.len())), (200, Some(0)));

    revoke(&broker, Target::Jti("poll-1".into()), "").await;
    revoke(&broker, Target::TaskId("poll-2".into()), "").await;
    let (_, answer) = poll(json!({ "returnImmediately": true }), "poll-secret").await;
    let sets = answer["sets"].as_object().unwrap().clone();
    assert_eq!((sets.len(), answer["moreAvailable"].as_bool()), (2, Some(false)));
    // Not acknowledged: the same SETs again.
    let (_, again) = poll(json!({ "returnImmediately": true }), "poll-secret").await;
    assert_eq!(again["sets"].as_object().unwrap().keys().collect::<Vec<_>>(), sets.keys().collect::<Vec<_>>());

    // Each verifies with tessera's JWKS, by PyJWT.
    let dir = tempfile::tempdir().unwrap();
    let (jwks, file) = (dir.path().join("jwks.json"), dir.path().join("sets.json"));
    write_jwks(&broker, &jwks).await;
    std::fs::write(&file, serde_json::to_string(&sets.values().collect::<Vec<_>>()).unwrap()).unwrap();
    let output = Command::new(python())
        .arg(script())
        .args(["verify", "--issuer", BROKER, "--audience", "auditor"])
        .arg("--jwks-file")
        .arg(&jwks)
        .arg("--sets-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let verified: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["set"].clone())
        .collect();
    assert_eq!(
        verified.iter().map(subject_of).collect::<Vec<_>>(),
        [("jwt_id".into(), "poll-1".into(), "jti".into()), ("opaque".into(), "poll-2".into(), "task".into())]
    );

    // Acknowledging the second acknowledges both: nothing is left.
    let last = verified[1]["jti"].as_str().unwrap().to_string();
    let (_, after) = poll(json!({ "ack": [last], "returnImmediately": true }), "poll-secret").await;
    assert_eq!(after["sets"].as_object().map(|s| s.len()), Some(0));
}

async fn active(server: &Serving, token: String) -> bool {
    let req = pb::IntrospectRequest { token, token_type_hint: String::new() };
    let mut client = TokenBrokerClient::connect(server.url()).await.unwrap();
    client.introspect(req).await.unwrap().into_inner().active
}

/// A SET from the test IdP (the Kubernetes issuer's key), or from `signer` with `header`.
fn set_from(signer: &Signer, header: Value, claims: &Value) -> String {
    signer.token_with_header(header, claims)
}

fn idp_set(events: &Value, sub_id: &Value, aud: &str, jti: &str) -> Value {
    json!({ "iss": K8S_ISS, "aud": aud, "iat": now(), "jti": jti, "sub_id": sub_id, "events": events })
}

#[tokio::test]
async fn a_set_from_an_upstream_idp_revokes_its_subject_on_every_replica_and_a_forged_one_changes_nothing() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let transmitter = "\n[[ssf.transmitters]]\nissuer = \"kubernetes\"\nsuspend = true\nsuspend_seconds = 600\n";
    // Two `tessera serve` processes: replicas of one broker (one config, one signing key, one Redis).
    let dir =
        TestBroker::builder().signing_key(&key).redis(&redis.url(), "strict").extra_toml(transmitter).write_config();
    let config = dir.path().join("tessera.toml");
    let serve = || {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Serving::start(&["--config", config.to_str().unwrap()], |c| {
                c.env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
            })
        })
    };
    let (a, b) = (serve().await.unwrap(), serve().await.unwrap());
    let events_url = format!("http://{}/ssf/events", b.http);
    let client = |server: &Serving| TokenBrokerClient::connect(server.url());
    let http = reqwest::Client::new();
    let push = |set: String| {
        let request = http.post(&events_url).header("content-type", "application/secevent+jwt").body(set);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let orchestrator =
        client(&a).await.unwrap().exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap();
    let orchestrator = orchestrator.into_inner().access_token;
    let bystander =
        client(&a).await.unwrap().exchange_token(request(&spiffe_assertion(600), CRM, "crm:read")).await.unwrap();
    let bystander = bystander.into_inner().access_token;

    let idp = Signer::rs256("kubernetes.key.pem");
    let kid = kid("kubernetes.jwks.json");
    let header = json!({ "typ": "secevent+jwt", "kid": kid });
    let revoked = json!({ SESSION_REVOKED: { "event_timestamp": now() } });
    let disabled = json!({ "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {} });
    let orchestrator_id = json!({ "format": "iss_sub", "iss": K8S_ISS, "sub": ORCHESTRATOR });

    // Forged or wrong: each refused with its RFC 8935 error, and nothing changes.
    let forgeries = [
        // Signed by another key (GitHub's) under the IdP's kid.
        (
            set_from(
                &Signer::rs256("github.key.pem"),
                header.clone(),
                &idp_set(&revoked, &orchestrator_id, BROKER, "f1"),
            ),
            "invalid_key",
        ),
        // For another receiver.
        (
            set_from(&idp, header.clone(), &idp_set(&revoked, &orchestrator_id, "https://elsewhere.example", "f2")),
            "invalid_audience",
        ),
        // Not typed as a SET (an ID token or access token must never pass for one).
        (set_from(&idp, json!({ "kid": kid }), &idp_set(&revoked, &orchestrator_id, BROKER, "f3")), "invalid_request"),
        // About a principal of another issuer: the IdP speaks only for its own.
        (
            set_from(
                &idp,
                header.clone(),
                &idp_set(
                    &revoked,
                    &json!({ "format": "iss_sub", "iss": "spiffe://agents.example.org", "sub": SPIFFE_AGENT }),
                    BROKER,
                    "f4",
                ),
            ),
            "invalid_request",
        ),
        // From an issuer that is not a configured transmitter (GitHub is an issuer, not a transmitter).
        (
            set_from(
                &Signer::rs256("github.key.pem"),
                json!({ "typ": "secevent+jwt", "kid": crate::support::kid("github.jwks.json") }),
                &json!({ "iss": GITHUB_ISS, "aud": BROKER, "iat": now(), "jti": "f5", "sub_id": orchestrator_id, "events": revoked }),
            ),
            "invalid_issuer",
        ),
    ];
    for (set, err) in forgeries {
        let (status, body) = push(set).await;
        assert_eq!((status, body["err"].as_str()), (400, Some(err)), "{body}");
    }
    for broker in [&a, &b] {
        assert!(active(broker, orchestrator.clone()).await, "a refused SET revoked nothing");
    }

    // The IdP disables the account: its tokens die on every replica, and it is suspended.
    let genuine = set_from(&idp, header.clone(), &idp_set(&disabled, &orchestrator_id, BROKER, "disable-1"));
    assert_eq!(push(genuine.clone()).await.0, 202);
    for broker in [&a, &b] {
        assert!(!active(broker, orchestrator.clone()).await, "the signalled subject's token is revoked");
        assert!(active(broker, bystander.clone()).await, "another principal's token is untouched");
        let refused = client(broker).await.unwrap().exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await;
        assert_eq!(oauth_error(&refused.unwrap_err()), "invalid_grant", "the subject is suspended");
    }
    // The same SET again: acknowledged, nothing more.
    assert_eq!(push(genuine).await.0, 202);

    // Every SET received is audited, refused or not.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let audit = redis.cmd(&["XRANGE", "{tessera}:audit", "-", "+"]);
        let received = audit.matches("ssf_receive").count();
        if received >= 7 {
            assert!(
                audit.contains("revoked") && audit.contains("replayed") && audit.contains("invalid_key"),
                "{audit}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{received} ssf_receive audit events:\n{audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
