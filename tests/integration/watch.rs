//! The revocation watch stream, with watchers nobody here wrote (tests/interop/watch_client.py: grpcio stubs
//! from proto/, and httpx reading Server-Sent Events): every revocation arrives once and in order, a watcher
//! killed mid-stream resumes from its last cursor — on another replica, with Redis — and gets every event it
//! missed exactly once; a cursor the log no longer covers is refused; only the `watch` role may watch.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::redis::RedisServer;
use crate::support::*;

/// How long a test waits for a watcher's next line before failing (a hang guard, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(30);

fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with `bash scripts/test`, which installs grpcio and httpx in a venv and generates the stubs")
    })
}

/// The Python watcher, running: its JSON lines as they come.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Watcher {
    fn start(args: &[String]) -> Watcher {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/watch_client.py");
        let mut child = Command::new(env_or_fail("TESSERA_TEST_PYTHON"))
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python watcher");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    fn grpc(addr: &str, cursor: &str) -> Watcher {
        let args = ["--grpc", addr, "--stubs", &env_or_fail("TESSERA_TEST_PY_STUBS"), "--cursor", cursor];
        Watcher::start(&args.map(String::from))
    }

    fn sse(url: &str, cursor: &str, authorization: &str) -> Watcher {
        Watcher::start(&["--sse", url, "--cursor", cursor, "--authorization", authorization].map(String::from))
    }

    /// The next line, off the runtime.
    async fn next(&mut self) -> Value {
        let lines = std::mem::replace(&mut self.lines, mpsc::channel().1);
        let (line, lines) = tokio::task::spawn_blocking(move || (lines.recv_timeout(PATIENCE), lines)).await.unwrap();
        self.lines = lines;
        line.unwrap_or_else(|_| panic!("the watcher printed nothing for {PATIENCE:?}"))
    }

    /// The next `n` events, skipping heartbeats; an error line fails the test.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < n {
            let line = self.next().await;
            assert!(line.get("error").is_none(), "the watch failed: {line}");
            if let Some(event) = line.get("event") {
                events.push(event.clone());
            }
        }
        events
    }

    /// Waits for a heartbeat (so the stream is open), and returns its cursor.
    async fn heartbeat(&mut self) -> String {
        loop {
            let line = self.next().await;
            assert!(line.get("error").is_none(), "the watch failed: {line}");
            if let Some(h) = line.get("heartbeat") {
                return h["cursor"].as_str().unwrap().to_string();
            }
        }
    }

    /// The error line the watcher ends with.
    async fn error(&mut self) -> Value {
        loop {
            let line = self.next().await;
            if let Some(e) = line.get("error") {
                return e.clone();
            }
        }
    }

    /// SIGKILL, mid-stream: no goodbye to the server.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subject() -> pb::Subject {
    pb::Subject { issuer: "kubernetes".into(), sub: ORCHESTRATOR.into() }
}

async fn revoke(broker: &TestBroker, target: Target, reason: &str) {
    let req = pb::RevokeRequest { target: Some(target), reason: reason.into() };
    broker.client().await.revoke(req).await.expect("revoke");
}

async fn suspend(broker: &TestBroker, sub: &str) {
    let target = pb::suspend_request::Target::Subject(pb::Subject { issuer: "kubernetes".into(), sub: sub.into() });
    let req = pb::SuspendRequest { target: Some(target), duration_seconds: 60, reason: "kill switch".into() };
    broker.client().await.suspend(req).await.expect("suspend");
}

/// `(kind, value, reason_class)` of each event.
fn named(events: &[Value]) -> Vec<(String, String, String)> {
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    events.iter().map(|e| (text(e, "kind"), text(e, "value"), text(e, "reason_class"))).collect()
}

fn triple(kind: &str, value: &str, class: &str) -> (String, String, String) {
    (kind.into(), value.into(), class.into())
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
}

#[tokio::test]
async fn a_grpc_watcher_killed_mid_stream_resumes_on_another_replica_with_every_event_once() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let replica = || {
        TestBroker::builder()
            .signing_key(&key)
            .redis(&redis.url(), "strict")
            .extra_toml("\n[watch]\nheartbeat_seconds = 1\n")
    };
    let (a, b) = (replica().start().await, replica().start().await);

    // Watching B from now on; revocations go through A.
    let mut first = Watcher::grpc(&b.addr.to_string(), "");
    first.heartbeat().await;
    let token = b.client().await.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap();
    let jti = decode(&token.into_inner().access_token).jti;
    revoke(&a, Target::Jti(jti.clone()), "leaked in a log").await;
    revoke(&a, Target::TaskId("task-w1".into()), "").await;
    let before = first.events(2).await;
    assert_eq!(named(&before), [triple("jti", &jti, "revoke"), triple("task", "task-w1", "revoke")]);
    assert_eq!((before[0]["reason"].as_str(), before[0]["issuer"].as_str()), (Some("leaked in a log"), Some("")));
    let cursor = before[1]["cursor"].as_str().unwrap().to_string();
    first.kill();

    // While nobody watches: a subject, a client, and a suspension (whose revocation is announced).
    revoke(&a, Target::Subject(subject()), "").await;
    revoke(&a, Target::ClientId("orchestrator".into()), "").await;
    suspend(&a, "system:serviceaccount:agents:rogue").await;

    // Resumed on A from the last cursor seen: exactly what was missed, then what comes next (through B).
    let mut second = Watcher::grpc(&a.addr.to_string(), &cursor);
    let missed = second.events(3).await;
    assert_eq!(
        named(&missed),
        [
            triple("subject", ORCHESTRATOR, "revoke"),
            triple("client", "orchestrator", "revoke"),
            triple("subject", "system:serviceaccount:agents:rogue", "suspend"),
        ]
    );
    assert_eq!(missed[0]["issuer"], K8S_ISS);
    let revoked_at = std::time::Instant::now();
    revoke(&b, Target::TaskId("task-w2".into()), "").await;
    let next = second.events(1).await;
    // A measurement for the record, not an assertion: revoked through B → the event at a watcher of A.
    eprintln!("watch: revocation → event at the other replica's watcher in {:?}", revoked_at.elapsed());
    assert_eq!(named(&next), [triple("task", "task-w2", "revoke")]);
    // Nothing more, not even a repeat: the next message is a heartbeat standing at the last event.
    assert_eq!(second.heartbeat().await, next[0]["cursor"].as_str().unwrap());
    let cursors: Vec<&str> = before.iter().chain(&missed).chain(&next).map(|e| e["cursor"].as_str().unwrap()).collect();
    let unique: std::collections::BTreeSet<_> = cursors.iter().collect();
    assert_eq!(unique.len(), 6, "{cursors:?}");

    // A cursor the log never had is OUT_OF_RANGE, cursor_expired; a malformed one INVALID_ARGUMENT.
    let mut stale = Watcher::grpc(&a.addr.to_string(), "1-0");
    assert_eq!(stale.error().await["code"], "OUT_OF_RANGE");
    let mut client = a.client().await;
    let refused = client.watch_revocations(pb::WatchRevocationsRequest { cursor: "not-a-cursor".into() }).await;
    assert_eq!(refused.as_ref().map(|_| ()).unwrap_err().code(), tonic::Code::InvalidArgument);
    let refused = client.watch_revocations(pb::WatchRevocationsRequest { cursor: "1-0".into() }).await;
    assert_eq!(oauth_error(&refused.map(|_| ()).unwrap_err()), "cursor_expired");

    // A client without the watch role may not watch.
    let mut request = tonic::Request::new(pb::WatchRevocationsRequest::default());
    request.metadata_mut().insert("authorization", basic("gateway", CLIENT_SECRET).parse().unwrap());
    let refused = client.watch_revocations(request).await.map(|_| ()).unwrap_err();
    assert_eq!(
        (refused.code(), oauth_error(&refused).as_str()),
        (tonic::Code::PermissionDenied, "unauthorized_client")
    );
}

#[tokio::test]
async fn an_sse_watcher_resumes_with_last_event_id_on_the_embedded_store() {
    let broker = TestBroker::builder().extra_toml("\n[watch]\nheartbeat_seconds = 1\n").start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/revocations/watch", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));

    let mut first = Watcher::sse(&url, "", "");
    first.heartbeat().await;
    revoke(&broker, Target::Jti("sse-1".into()), "one").await;
    revoke(&broker, Target::Jti("sse-2".into()), "two").await;
    let seen = first.events(1).await;
    assert_eq!(named(&seen), [triple("jti", "sse-1", "revoke")]);
    first.kill();
    revoke(&broker, Target::Jti("sse-3".into()), "three").await;

    // Last-Event-ID, as EventSource resumes: sse-2 and sse-3, once each.
    let mut second = Watcher::sse(&url, seen[0]["cursor"].as_str().unwrap(), "");
    let rest = second.events(2).await;
    assert_eq!(named(&rest), [triple("jti", "sse-2", "revoke"), triple("jti", "sse-3", "revoke")]);
    assert_eq!(second.heartbeat().await, rest[1]["cursor"].as_str().unwrap());

    // A cursor from another log (this process's epoch is another) is 410 cursor_expired.
    let mut stale = Watcher::sse(&url, "1-1", "");
    assert_eq!(stale.error().await, serde_json::json!({ "code": 410, "status": "cursor_expired" }));
    // Without the watch role: refused (the gateway may only introspect); with a wrong secret: 401.
    let mut gateway = Watcher::sse(&url, "", &basic("gateway", CLIENT_SECRET));
    assert_eq!(gateway.error().await, serde_json::json!({ "code": 400, "status": "unauthorized_client" }));
    let mut wrong = Watcher::sse(&url, "", &basic("gateway", "wrong"));
    assert_eq!(wrong.error().await, serde_json::json!({ "code": 401, "status": "invalid_client" }));
}

#[tokio::test]
async fn a_watch_stream_outlives_the_request_timeout() {
    // Heartbeats for longer than the request timeout: a stream is not a request that ran too long.
    let toml = "\n[server]\nrequest_timeout_ms = 1000\n\n[watch]\nheartbeat_seconds = 1\n";
    let broker = TestBroker::builder().extra_toml(toml).start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/revocations/watch", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let (mut grpc, mut sse) = (Watcher::grpc(&broker.addr.to_string(), ""), Watcher::sse(&url, "", ""));
    for _ in 0..4 {
        grpc.heartbeat().await;
        sse.heartbeat().await;
    }
    revoke(&broker, Target::Jti("late".into()), "").await;
    assert_eq!(named(&grpc.events(1).await), [triple("jti", "late", "revoke")]);
    assert_eq!(named(&sse.events(1).await), [triple("jti", "late", "revoke")]);
}
