//! Token Status Lists read by an implementation nobody here wrote (`@sd-jwt/jwt-status-list` with `jose`,
//! tests/interop/node/status_list.mjs): every issued token names its place in a list; the lists tessera
//! serves are signed `statuslist+jwt`s that verify with the JWKS; a token is valid in them before its
//! revocation and invalid after — with its descendants, and a revoked task's tokens — across two replicas on
//! one Redis, whose indices never collide.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tessera::grpc::pb::{self, revoke_request::Target};

use crate::support::redis::RedisServer;
use crate::support::*;

/// A replica with its HTTP face served: `(broker, base URL)`.
async fn replica(key: &str, redis: &RedisServer) -> (TestBroker, String) {
    let broker = TestBroker::builder().signing_key(key).redis(&redis.url(), "strict").start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    (broker, base)
}

async fn exchange(broker: &TestBroker, subject: &str, audience: &str, actor: Option<String>, task: &str) -> String {
    let mut req = request(subject, audience, "crm:read");
    if decode_any(subject)["iss"] == BROKER {
        req.subject_token_type = ACCESS_TOKEN.into();
        req.task_id.clear();
    } else {
        req.task_id = task.into();
    }
    if let Some(actor) = actor {
        req.actor_token = actor;
        req.actor_token_type = JWT.into();
    }
    broker.client().await.exchange_token(req).await.expect("exchange").into_inner().access_token
}

fn decode_any(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The statuses node reads for `tokens` (0 valid, 1 invalid), through the replica at `base`.
async fn statuses(base: &str, tokens: &[String]) -> Vec<u64> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node");
    assert!(
        root.join("node_modules/@sd-jwt/jwt-status-list").is_dir(),
        "node's `@sd-jwt/jwt-status-list` is not installed: run the suite with `bash scripts/test` (npm ci in {})",
        root.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.json");
    std::fs::write(&file, serde_json::to_string(tokens).unwrap()).unwrap();
    let args = vec!["status_list.mjs".to_string(), base.to_string(), BROKER.into(), file.display().to_string()];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").args(args).current_dir(root).output())
            .await
            .unwrap()
            .expect("node (`bash scripts/test` installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the status list reader failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("not a JSON array: {stdout}"))
}

/// Reads until the lists show `expected` (registrations are written in the background, so a token revoked
/// a moment after it was issued may take that moment to show), failing after half a minute.
async fn shows(base: &str, tokens: &[String], expected: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = statuses(base, tokens).await;
        if seen == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the status lists show {seen:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn revoke(broker: &TestBroker, target: Target) {
    let req = pb::RevokeRequest { target: Some(target), reason: "status list test".into() };
    broker.client().await.revoke(req).await.expect("revoke");
}

#[tokio::test]
async fn an_independent_status_list_reader_sees_what_introspect_sees_across_replicas() {
    let redis = RedisServer::start();
    let key = shared_signing_key();
    let ((a, base_a), (b, base_b)) = (replica(&key, &redis).await, replica(&key, &redis).await);

    // A delegation chain issued through A (a task token, then two hops), a task's tokens issued through B,
    // and a bystander.
    let t0 = exchange(&a, &k8s_assertion(3600), BROKER, None, "task-sl").await;
    let c1 = exchange(&a, &t0, CRM, Some(spiffe_assertion(600)), "").await;
    let c2 = exchange(&a, &c1, CRM, Some(github_assertion(600)), "").await;
    let k1 = exchange(&b, &k8s_assertion(600), CRM, None, "task-doomed").await;
    let k2 = exchange(&b, &k8s_assertion(600), CRM, None, "task-doomed").await;
    let bystander = exchange(&b, &k8s_assertion(600), CRM, None, "task-bystander").await;
    let tokens = vec![t0.clone(), c1.clone(), c2, k1, k2, bystander];

    // Every token has a place, and no two share one, whichever replica issued it.
    let places: BTreeSet<(String, u64)> = tokens
        .iter()
        .map(|t| {
            let status = &decode_any(t)["status"]["status_list"];
            (status["uri"].as_str().unwrap().to_string(), status["idx"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(places.len(), tokens.len(), "{places:?}");
    assert!(places.iter().all(|(uri, _)| uri.starts_with(&format!("{BROKER}/statuslists/"))), "{places:?}");

    shows(&base_a, &tokens, &[0, 0, 0, 0, 0, 0]).await;
    // c1 revoked through B: it and its descendant are invalid on every replica's lists; its parent is not.
    revoke(&b, Target::Jti(decode(&c1).jti)).await;
    shows(&base_a, &tokens, &[0, 1, 1, 0, 0, 0]).await;
    shows(&base_b, &tokens, &[0, 1, 1, 0, 0, 0]).await;
    // A revoked task: each of its tokens.
    revoke(&a, Target::TaskId("task-doomed".into())).await;
    shows(&base_b, &tokens, &[0, 1, 1, 1, 1, 0]).await;

    // Introspect agrees, token for token.
    for (token, revoked) in tokens.iter().zip([0, 1, 1, 1, 1, 0]) {
        let req = pb::IntrospectRequest { token: token.clone(), token_type_hint: String::new() };
        let active = a.client().await.introspect(req).await.unwrap().into_inner().active;
        assert_eq!(active, revoked == 0);
    }
}

#[tokio::test]
async fn status_lists_are_served_as_the_draft_says_and_can_be_turned_off() {
    let broker = TestBroker::builder().extra_toml("\n[status_list]\nttl_seconds = 30\n").start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let token = exchange(&broker, &k8s_assertion(600), CRM, None, "task-embedded").await;
    shows(&base, std::slice::from_ref(&token), &[0]).await;
    revoke(&broker, Target::Token(token.clone())).await;
    shows(&base, std::slice::from_ref(&token), &[1]).await;
    let http = reqwest::Client::new();
    let response = http.get(format!("{base}/statuslists/0")).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=30");
    // Not a list number: 404, never another name for list 0.
    for path in ["/statuslists/00", "/statuslists/+0", "/statuslists/x", "/statuslists/-1"] {
        assert_eq!(http.get(format!("{base}{path}")).send().await.unwrap().status(), 404, "{path}");
    }

    let off = TestBroker::builder().extra_toml("\n[status_list]\nenabled = false\n").start().await;
    let token = exchange(&off, &k8s_assertion(600), CRM, None, "task-off").await;
    assert!(decode_any(&token).get("status").is_none(), "no status claim when status lists are off");
}

#[tokio::test]
async fn status_list_work_stays_off_the_request_paths_redis_connection() {
    use std::io::BufRead as _;
    let redis = RedisServer::start();
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli (bash scripts/test installs redis-tools)");
    let mut stdout = std::io::BufReader::new(monitor.stdout.take().unwrap());
    // MONITOR answers OK once it is watching: only then start the broker, whose first block is taken at once.
    let mut ok = String::new();
    stdout.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim(), "OK");
    let lines = std::thread::spawn(move || stdout.lines().map_while(Result::ok).collect());
    let broker = TestBroker::builder().redis(&redis.url(), "strict").start().await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(exchange(&broker, &k8s_assertion(600), CRM, None, &format!("task-mon-{i}")).await);
    }
    let mut buckets = Vec::new();
    for token in &tokens {
        let req = pb::IntrospectRequest { token: token.clone(), token_type_hint: String::new() };
        let answer = broker.client().await.introspect(req).await.unwrap().into_inner();
        assert!(answer.active);
        buckets.push(tessera::status_list::bucket(answer.exp));
    }
    // Every token registered: each is under its task's key, in its expiry bucket.
    let set = |i: usize| format!("{{tessera}}:sl:idx:{{tessera}}:rev:task:task-mon-{i}:{}", buckets[i]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..5).any(|i| redis.cmd(&["SCARD", &set(i)]) != "1") {
        assert!(Instant::now() < deadline, "the registrations were not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let lines: Vec<String> = lines.join().unwrap();
    // `<time> [<db> <client address>] "COMMAND" …`
    let by_command = |command: &str, containing: &str| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l.contains(&format!("] \"{command}\"")) && l.contains(containing))
            .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
            .collect()
    };
    // An exchange's lookup asks for suspensions too, which a registration's check of its keys never does.
    let lookups = by_command("MGET", "{tessera}:susp:");
    let (allocations, registrations) = (by_command("INCRBY", ""), by_command("SADD", ":sl:idx:"));
    assert!(!lookups.is_empty() && !allocations.is_empty() && !registrations.is_empty(), "{lines:#?}");
    assert!(lookups.is_disjoint(&allocations), "index blocks taken on the request path's connection");
    assert!(lookups.is_disjoint(&registrations), "registrations written on the request path's connection");
}
