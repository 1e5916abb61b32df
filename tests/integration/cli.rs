//! The `tessera` binary as a user runs it: the dev-mode walkthrough of the README, `config check`,
//! `keygen`, `policy check`; and its logs never hold a token.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::{Serving, tessera};
use crate::support::*;

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tessera did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_with_stdin(cmd: &mut Command, stdin: &str) -> std::process::Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn dev_mode_walkthrough_and_no_token_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join(".tessera-dev");
    let server = Serving::start(&["--dev-dir", dev_dir.to_str().unwrap()], |c| {
        c.env("RUST_LOG", "debug");
    });

    let assertion = tessera()
        .args(["dev", "assertion", "--sub", "agent-orchestrator", "--dev-dir"])
        .arg(&dev_dir)
        .output()
        .unwrap();
    assert!(assertion.status.success(), "{}", String::from_utf8_lossy(&assertion.stderr));
    let assertion = String::from_utf8(assertion.stdout).unwrap().trim().to_string();
    assert_eq!(assertion.split('.').count(), 3);

    let url = server.url();
    let exchange = |scope: &str| {
        run_with_stdin(
            tessera()
                .args(["exchange", "--addr", &url, "--subject-token", "-", "--audience", "https://crm.example"])
                .args(["--scope", scope, "--task-id", "walkthrough-1"]),
            &assertion,
        )
    };
    let granted = exchange("crm:read crm:write");
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let response: serde_json::Value = serde_json::from_slice(&granted.stdout).unwrap();
    assert_eq!(response["scope"], "crm:read crm:write");
    assert_eq!(response["token_type"], "Bearer");
    let access_token = response["access_token"].as_str().unwrap().to_string();
    let claims = decode(&access_token);
    assert_eq!(
        (claims.sub.as_str(), claims.aud.as_str(), claims.task_id.as_str()),
        ("agent-orchestrator", "https://crm.example", "walkthrough-1")
    );

    let refused = exchange("crm:export");
    assert!(!refused.status.success());
    let error: serde_json::Value = serde_json::from_slice(&refused.stderr).unwrap();
    assert_eq!(error["error"], "invalid_scope");

    // A client secret that does not authenticate is refused, and appears nowhere.
    let secret = "s3cret-that-must-not-leak-0123456789";
    let bad_client = run_with_stdin(
        tessera().args(["exchange", "--addr", &url, "--subject-token", "-", "--audience", "https://crm.example"]).args(
            ["--scope", "crm:read", "--task-id", "walkthrough-1", "--as-client", "demo", "--client-secret", secret],
        ),
        &assertion,
    );
    assert!(!bad_client.status.success());
    let error: serde_json::Value = serde_json::from_slice(&bad_client.stderr).unwrap();
    assert_eq!(error["error"], "invalid_client");
    assert!(!String::from_utf8_lossy(&bad_client.stderr).contains(secret));

    // The whole flow: introspect, revoke, introspect again.
    let introspect = || {
        let out = run_with_stdin(tessera().args(["introspect", "-", "--addr", &url]), &access_token);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(introspect()["active"], true);
    let revoked = run_with_stdin(tessera().args(["revoke", "--token", "-", "--addr", &url]), &access_token);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert_eq!(introspect(), serde_json::json!({ "active": false }));

    // SIGTERM (how Kubernetes stops a pod) ends the server cleanly.
    let (status, logs) = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(logs.contains("DEV MODE") && logs.contains("NOT for production"), "the dev warning is missing");
    for decision in ["granted", "denied", "active", "revoked", "inactive"] {
        assert!(logs.contains(&format!("decision={decision} ")), "audit event {decision} is missing:\n{logs}");
    }
    for (what, token) in [("assertion", &assertion), ("access token", &access_token)] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(token.as_str()) && !logs.contains(signature), "the {what} appears in the logs");
    }
    assert!(!logs.contains(secret), "the client secret appears in the logs");
    let key = std::fs::read_to_string(dev_dir.join("signing-key.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!logs.contains(&key_body[..24]), "the signing key appears in the logs");
}

#[test]
fn config_check_accepts_a_good_config_and_lists_every_problem_of_a_bad_one() {
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let ok = tessera().args(["config", "check"]).arg(&config).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 issuers, 2 audiences, 3 clients, 1 signing keys"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[broker]
issuer = "tessera"
[signing]
keys = ["missing.pem"]
[[issuers]]
name = "k8s"
issuer = "https://k8s"
jwks_url = "ftp://k8s/keys"
algorithms = ["HS256"]
jwks_ca_file = "no-such-ca.pem"
[[audiences]]
id = "https://crm.example"
scopes = []
[telemetry]
otlp_ca_file = "no-such-otlp-ca.pem"
"#,
    )
    .unwrap();
    let out = tessera().args(["config", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "broker.issuer",
        "missing.pem",
        "`jwks_url` must be http(s)",
        "HS256",
        "`scopes`",
        "no-such-ca.pem",
        "no-such-otlp-ca.pem",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[broker]\nissuer = \"https://x.example\"\nisuer = 1\n").unwrap();
    let out = tessera().args(["config", "check"]).arg(&typo).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("isuer"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn environment_overrides_the_config_file() {
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let out =
        tessera().args(["config", "check"]).arg(&config).env("TESSERA__BROKER__ISSUER", "not-a-url").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.issuer"));
}

#[test]
fn keygen_writes_a_usable_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["eddsa", "es256"] {
        let path = dir.path().join(format!("{alg}.pem"));
        let out = tessera().args(["keygen", "--alg", alg, "--out"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = tessera::token::keys::SigningKey::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(printed["kid"], key.kid());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0, "key readable by others");
        }
        let again = tessera().args(["keygen", "--alg", alg, "--out"]).arg(&path).output().unwrap();
        assert!(!again.status.success(), "keygen overwrote a key");
    }
}

#[test]
fn policy_check_validates_against_the_schema() {
    let ok = tessera().args(["policy", "check"]).arg(fixtures().join("policy.cedar")).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action, resource) when { context.no_such_field };").unwrap();
    let out = tessera().args(["policy", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_field"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Kills a process on drop, so a failing test leaves nothing running.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn three_processes_on_one_redis_are_replicas_of_one_broker() {
    let redis = crate::support::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join(".tessera-dev");
    let mut urls = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let server = Serving::start(&["--redis-url", &redis.url(), "--dev-dir", dev_dir.to_str().unwrap()], |_| {});
        urls.push(server.url());
        servers.push(server);
    }
    let assertion =
        tessera().args(["dev", "assertion", "--sub", "orchestrator", "--dev-dir"]).arg(&dev_dir).output().unwrap();
    let assertion = String::from_utf8(assertion.stdout).unwrap();
    let out = run_with_stdin(
        tessera()
            .args(["exchange", "--addr", &urls[0], "--subject-token", "-", "--audience", "https://crm.example"])
            .args(["--scope", "crm:read", "--task-id", "replicas-1"]),
        &assertion,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["access_token"].as_str().unwrap().to_string();

    let introspect = |url: &str| {
        let out = run_with_stdin(tessera().args(["introspect", "-", "--addr", url]), &token);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for url in &urls {
        let r = introspect(url);
        assert_eq!((r["active"].as_bool(), r["task_id"].as_str()), (Some(true), Some("replicas-1")));
    }
    let out =
        run_with_stdin(tessera().args(["revoke", "--token", "-", "--reason", "leaked", "--addr", &urls[1]]), &token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["revoked"], "jti");
    for url in &urls {
        assert_eq!(introspect(url), serde_json::json!({ "active": false }));
    }
    let out = tessera().args(["revoke", "--task-id", "replicas-1", "--addr", &urls[2]]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = run_with_stdin(
        tessera()
            .args(["exchange", "--addr", &urls[2], "--subject-token", "-", "--audience", "https://crm.example"])
            .args(["--scope", "crm:read", "--task-id", "replicas-1"]),
        &assertion,
    );
    assert!(!refused.status.success());
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&refused.stderr).unwrap()["error"], "invalid_grant");
}

#[test]
fn json_logs_are_one_object_per_line_with_audit_fields() {
    let dir = TestBroker::builder().write_config();
    let config = dir.path().join("tessera.toml");
    let server = Serving::start(&["--config", config.to_str().unwrap()], |c| {
        c.env("TESSERA__LOG__FORMAT", "json").env("TESSERA__LOG__LEVEL", "info").env_remove("RUST_LOG");
    });
    let assertion = k8s_assertion(600);
    let out = run_with_stdin(
        tessera().args(["exchange", "--addr", &server.url(), "--subject-token", "-", "--audience", CRM]).args([
            "--scope",
            "crm:read",
            "--task-id",
            "json-1",
        ]),
        &assertion,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, stderr) = server.terminate();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let audit = lines.iter().find(|l| l["target"] == "tessera::audit").expect("an audit line");
    assert_eq!((audit["event"].as_str(), audit["decision"].as_str()), (Some("exchange"), Some("granted")));
    assert_eq!((audit["task_id"].as_str(), audit["sub"].as_str()), (Some("json-1"), Some(ORCHESTRATOR)));
    // What does not apply to a plain granted exchange is left out, not written empty; and a line is its event
    // alone, as on the HTTP face: no span context (spans go to OTLP).
    for absent in ["reason", "approval_id", "details_requested", "span", "spans"] {
        assert!(audit.get(absent).is_none(), "{absent} in {audit}");
    }
    assert!(!stderr.contains(&assertion));
}

/// Mints a dev assertion for `sub` and exchanges it through the broker at `url` for a `crm:read` token bound
/// to `task`; returns the access token.
fn dev_exchange(url: &str, dev_dir: &std::path::Path, sub: &str, task: &str) -> String {
    let assertion = tessera().args(["dev", "assertion", "--sub", sub, "--dev-dir"]).arg(dev_dir).output().unwrap();
    assert!(assertion.status.success(), "{}", String::from_utf8_lossy(&assertion.stderr));
    let out = run_with_stdin(
        tessera()
            .args(["exchange", "--addr", url, "--subject-token", "-", "--audience", "https://crm.example"])
            .args(["--scope", "crm:read", "--task-id", task]),
        &String::from_utf8(assertion.stdout).unwrap(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    response["access_token"].as_str().unwrap().to_string()
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "openssl {args:?} failed (is openssl installed? `bash scripts/test` installs it)"
    );
}

/// A test CA (`ca.pem`) and a server certificate for localhost (`server.pem`, `server.key`) in `d`. tessera is
/// made to trust the CA through SSL_CERT_FILE, which rustls-native-certs reads instead of the system store.
fn test_pki(d: &std::path::Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tessera test CA"],
        ]
        .concat(),
    );
    openssl(
        d,
        &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn revocations_reach_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_pki(d);
    let redis_port = crate::support::redis::free_port();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem"])
        .args(["--tls-auth-clients", "no"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (`bash scripts/test` installs it)");
    let _redis = Serve(redis);
    wait_for_port(redis_port);

    let dev_dir = d.join(".tessera-dev");
    let redis_url = format!("rediss://localhost:{redis_port}");
    let server = Serving::start(&["--redis-url", &redis_url, "--dev-dir", dev_dir.to_str().unwrap()], |c| {
        c.env("SSL_CERT_FILE", d.join("ca.pem"));
    });
    let url = server.url();
    let token = dev_exchange(&url, &d.join(".tessera-dev"), "agent-tls", "tls-1");
    let revoked = run_with_stdin(tessera().args(["revoke", "--token", "-", "--addr", &url]), &token);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let introspected = run_with_stdin(tessera().args(["introspect", "-", "--addr", &url]), &token);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&introspected.stdout).unwrap(),
        serde_json::json!({ "active": false })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    test_pki(&d);
    let collector = crate::support::otlp::Collector::start_tls(
        &std::fs::read(d.join("server.pem")).unwrap(),
        &std::fs::read(d.join("server.key")).unwrap(),
    )
    .await;
    let dev_dir = d.join(".tessera-dev");
    let server = Serving::start(&["--dev-dir", dev_dir.to_str().unwrap()], |c| {
        c.env("OTEL_EXPORTER_OTLP_CERTIFICATE", d.join("ca.pem"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    });
    let url = server.url();
    dev_exchange(&url, &d.join(".tessera-dev"), "agent-otlp", "otlp-1");
    let arrived = collector
        .wait_until(Duration::from_secs(15), |c| {
            c.spans().iter().any(|s| s.name == "tessera.v1.TokenBroker/ExchangeToken")
        })
        .await;
    assert!(arrived, "no span reached the TLS collector: {:?}", collector.spans());
}
