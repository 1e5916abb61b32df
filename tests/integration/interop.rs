//! Interop with clients nobody here wrote: Python `grpcio` stubs generated from `proto/`, and `PyJWT`
//! verifying the issued token against `GetJwks` (tests/interop/exchange_interop.py); and `authlib`, an OAuth
//! client library, against the HTTP face (tests/interop/oauth_interop.py); and node `jose` verifying a token
//! against the `jwks_uri` of the RFC 8414 metadata (tests/interop/node/verify.mjs), and making DPoP proofs the
//! broker binds tokens to and forward-auth checks (tests/interop/node/dpop.mjs); and an MCP server built with
//! the official MCP Python SDK, validating tokens through tessera's introspection (tests/interop/mcp_interop.py).
//! authlib's `private_key_jwt` client assertions (tests/interop/client_assertion_interop.py) run from
//! `client_auth.rs`, next to the client keys and JWKS servers they need.

use crate::support::*;

fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with `bash scripts/test`, which installs the Python interop client (grpcio, grpcio-tools, PyJWT) in a venv and generates its stubs")
    })
}

#[tokio::test]
async fn python_grpcio_and_pyjwt_interoperate() {
    let python = env_or_fail("TESSERA_TEST_PYTHON");
    let stubs = env_or_fail("TESSERA_TEST_PY_STUBS");
    let broker = TestBroker::start().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/exchange_interop.py");
    let args = vec![
        script.display().to_string(),
        "--addr".into(),
        broker.addr.to_string(),
        "--stubs".into(),
        stubs,
        "--fixtures".into(),
        fixtures().display().to_string(),
        "--broker-issuer".into(),
        BROKER.into(),
        "--target".into(),
        CRM.into(),
        "--task-id".into(),
        "task-interop".into(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .unwrap()
        .expect("run the Python interop client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop client failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("interop: ") && last.ends_with(" passed, 0 failed"), "{stdout}");
}

#[tokio::test]
async fn authlib_speaks_oauth_with_the_http_face() {
    let python = env_or_fail("TESSERA_TEST_PYTHON");
    let broker = TestBroker::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let dir = tempfile::tempdir().unwrap();
    let (assertion, actor) = (dir.path().join("assertion.jwt"), dir.path().join("actor.jwt"));
    std::fs::write(&assertion, k8s_assertion(600)).unwrap();
    std::fs::write(&actor, spiffe_assertion(600)).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/oauth_interop.py");
    let args: Vec<String> = vec![
        script.display().to_string(),
        "--base".into(),
        base,
        "--issuer".into(),
        BROKER.into(),
        "--assertion-file".into(),
        assertion.display().to_string(),
        "--actor-file".into(),
        actor.display().to_string(),
        "--client-secret".into(),
        CLIENT_SECRET.into(),
        "--audience".into(),
        CRM.into(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .unwrap()
        .expect("run the authlib interop client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "authlib interop failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("oauth interop: ") && last.ends_with(" passed, 0 failed"), "{stdout}");
}

#[tokio::test]
async fn node_jose_verifies_tokens_against_the_published_jwks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node");
    assert!(
        root.join("node_modules/jose").is_dir(),
        "node's `jose` is not installed: run the suite with `bash scripts/test`, which runs `npm ci` in {}",
        root.display()
    );
    let broker = TestBroker::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let token =
        broker.client().await.exchange_token(request(&k8s_assertion(600), CRM, "crm:read")).await.unwrap().into_inner();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token.jwt");
    std::fs::write(&file, token.access_token).unwrap();
    let args: Vec<String> = vec!["verify.mjs".into(), base, BROKER.into(), CRM.into(), file.display().to_string()];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").args(args).current_dir(root).output())
            .await
            .unwrap()
            .expect("node (`bash scripts/test` installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node jose interop failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("node jose interop: ") && last.ends_with(" passed, 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_validates_tokens_through_tessera() {
    let python = env_or_fail("TESSERA_TEST_PYTHON");
    // The MCP server's URL is its audience: the catalog names it before the server runs.
    let port = crate::support::redis::free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let audience = format!(
        "\n[[audiences]]\nid = \"{resource}\"\nscopes = [\"other:read\"]\nintrospect_clients = [\"gateway\"]\n"
    );
    let broker = TestBroker::builder().extra_toml(&audience).start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tessera = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let mut client = broker.client().await;
    // SPIFFE workloads may read (the test policy); one token for the MCP server, one for the CRM.
    let token = client.exchange_token(request(&spiffe_assertion(600), &resource, "other:read")).await.unwrap();
    let other = client.exchange_token(request(&spiffe_assertion(600), CRM, "crm:read")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (token_file, other_file) = (dir.path().join("token.jwt"), dir.path().join("other.jwt"));
    std::fs::write(&token_file, token.into_inner().access_token).unwrap();
    std::fs::write(&other_file, other.into_inner().access_token).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/mcp_interop.py");
    let args: Vec<String> = vec![
        script.display().to_string(),
        "--tessera".into(),
        tessera,
        "--issuer".into(),
        BROKER.into(),
        "--port".into(),
        port.to_string(),
        "--scope".into(),
        "other:read".into(),
        "--gateway-secret".into(),
        CLIENT_SECRET.into(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--other-token-file".into(),
        other_file.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output())
        .await
        .unwrap()
        .expect("run the MCP interop server and client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "MCP interop failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last == "mcp interop: 7 passed, 0 failed", "every check ran: {stdout}");
}

#[tokio::test]
async fn node_jose_dpop_proofs_bind_tokens_and_pass_forward_auth() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node");
    assert!(
        root.join("node_modules/jose").is_dir(),
        "node's `jose` is not installed: run the suite with `bash scripts/test`, which runs `npm ci` in {}",
        root.display()
    );
    let broker = TestBroker::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera::http::serve(listener, std::sync::Arc::clone(&broker.broker), None, std::future::pending()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assertion.jwt");
    std::fs::write(&file, k8s_assertion(600)).unwrap();
    let args: Vec<String> = vec!["dpop.mjs".into(), base, BROKER.into(), CRM.into(), file.display().to_string()];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").args(args).current_dir(root).output())
            .await
            .unwrap()
            .expect("node (`bash scripts/test` installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node jose DPoP interop failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "node jose dpop interop: 21 passed, 0 failed", "every check ran: {stdout}");
}
