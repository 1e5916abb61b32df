//! The Python SDK (`clients/python`, `tessera_client`): its pytest suite against a real dev-mode `tessera
//! serve` — typed exchange, the token cache, task scopes that revoke on exit, the httpx and requests adapters
//! and their 401 path, the resource-server helpers (offline, online, FastAPI, MCP), backoff and the circuit
//! breaker, and a broker restart mid-task (the suite starts and kills its own `tessera serve` on a fixed
//! port for that). And the package as a user gets it: a fresh venv, `pip install clients/python`, a scenario
//! script run as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::process::Serving;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test venv's interpreter, with the SDK installed (scripts/test installs it), or a loud failure.
pub fn python() -> String {
    let python = std::env::var("TESSERA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TESSERA_TEST_PYTHON is not set: run the suite with `bash scripts/test`, which installs the Python SDK (clients/python) and pytest in a venv")
    });
    let probe = Command::new(&python).args(["-c", "import tessera_client, pytest, fastapi"]).output();
    match probe {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "{python} lacks tessera_client, pytest or fastapi: run `bash scripts/test` (it installs clients/python editable into target/test-venv)"
        ),
    }
}

/// A dev-mode broker in its own folder, and the environment the SDK's suite and the scenarios read.
pub fn dev_broker() -> (tempfile::TempDir, PathBuf, Serving) {
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join(".tessera-dev");
    let server = Serving::start(&["--dev-dir", dev_dir.to_str().unwrap()], |_| {});
    (dir, dev_dir, server)
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_python_sdk_suite_passes_against_a_real_broker() {
    let python = python();
    let (_dir, dev_dir, server) = dev_broker();
    let stdout = run(Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"])
        .arg(repo().join("clients/python/tests"))
        .env("TESSERA_URL", format!("http://{}", server.http))
        .env("TESSERA_DEV_DIR", &dev_dir)
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera")));
    let summary = stdout.lines().rev().find(|l| l.contains(" passed")).unwrap_or_default().to_string();
    assert!(summary.contains(" passed") && !summary.contains("failed") && !summary.contains("skipped"), "{stdout}");
}

/// The package is typed (`py.typed`): its sources pass `mypy --strict`, so a user's type checker can trust
/// its signatures.
#[test]
fn the_python_sdk_type_checks_strictly() {
    let python = python();
    let stdout = run(Command::new(python)
        .args(["-m", "mypy", "--strict", "--no-incremental"])
        .arg(repo().join("clients/python/src/tessera_client")));
    assert!(stdout.contains("Success: no issues found"), "{stdout}");
}

// The Rust client (`tessera::sdk`), the one the CLI's client commands are built on.
mod rust {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tessera::sdk::resilience::{Backoff, BreakerState};
    use tessera::sdk::verify::{Rejected, Verifier};
    use tessera::sdk::{Broker, Config, Downstream, Exchange, RevokeTarget, SdkError};
    use tessera::secret::Token;

    use crate::support::*;

    fn client(addr: impl std::fmt::Display) -> Broker {
        Broker::new(Config::new(format!("http://{addr}"))).unwrap()
    }

    fn crm_read() -> Exchange {
        Exchange::new(Token::new(k8s_assertion(600)), CRM, "crm:read")
    }

    #[tokio::test]
    async fn exchange_caches_per_request_and_a_task_scope_revokes_every_token_of_the_task() {
        let broker = TestBroker::start().await;
        let sdk = client(broker.addr);
        let (first, again) = sdk
            .with_task("task-rust", "summarise case 1234", |task| async move {
                let first = task.exchange(crm_read()).await.unwrap();
                let again = task.exchange(crm_read()).await.unwrap();
                let acted = task.exchange(crm_read().actor(Token::new(spiffe_assertion(600)))).await.unwrap();
                assert!(!Arc::ptr_eq(&first, &acted), "another actor is another cache entry");
                (first, again)
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same request is served from the cache");
        assert_eq!(decode(first.access_token.expose()).task_id, "task-rust");
        // The scope ended: the task was revoked, so its tokens are inactive.
        assert!(!sdk.introspect(&first.access_token).await.unwrap().active);
        let refused = sdk.exchange_uncached(&crm_read().task("task-rust")).await.unwrap_err();
        assert_eq!(refused.oauth_error(), Some("invalid_grant"), "{refused}");
    }

    #[tokio::test]
    async fn a_task_whose_future_panics_or_is_cancelled_is_revoked_too() {
        let broker = TestBroker::start().await;
        let sdk = client(broker.addr);
        let (issued, taken) = tokio::sync::mpsc::unbounded_channel::<Arc<tessera::sdk::TokenResponse>>();
        let mut taken = taken;
        for (task_id, panics) in [("task-panics", true), ("task-cancelled", false)] {
            let (scoped, issued) = (sdk.clone(), issued.clone());
            let run = tokio::spawn(async move {
                scoped
                    .with_task(task_id, "", |task| async move {
                        issued.send(task.exchange(crm_read()).await.unwrap()).unwrap();
                        if panics {
                            panic!("the agent crashed");
                        }
                        std::future::pending::<()>().await;
                    })
                    .await
            });
            let token = taken.recv().await.unwrap();
            if !panics {
                run.abort();
            }
            assert!(run.await.is_err(), "{task_id}: the scope did not end normally");
            // The guard revokes in the background: wait for it (the assertion is the outcome, not its timing).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while sdk.introspect(&token.access_token).await.unwrap().active {
                assert!(std::time::Instant::now() < deadline, "{task_id}: the task was never revoked");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_is_typed_and_not_retried() {
        let broker = TestBroker::start().await;
        let sdk = client(broker.addr);
        let error = sdk.exchange(&Exchange::new(Token::new(k8s_assertion(600)), CRM, "crm:admin").task("t")).await;
        let error = error.unwrap_err();
        assert_eq!(error.oauth_error(), Some("invalid_scope"), "{error}");
        assert_eq!(sdk.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_downstream_401_is_answered_by_one_fresh_exchange() {
        let broker = TestBroker::start().await;
        let sdk = client(broker.addr);
        let operator = client(broker.addr);
        let request = crm_read().task("task-401");
        let revoked = sdk.exchange(&request).await.unwrap();
        operator.revoke(RevokeTarget::Jti(decode(revoked.access_token.expose()).jti), "test").await.unwrap();
        let calls = AtomicUsize::new(0);
        let verifier = Verifier::new(client(broker.addr), BROKER, CRM).await.unwrap();
        // The downstream API: verifies online; a refused token is a 401.
        let answer = sdk
            .call_with_token(&request, |token| {
                calls.fetch_add(1, Ordering::SeqCst);
                let verifier = &verifier;
                async move {
                    match verifier.verify(&token.access_token, &["crm:read"], now()).await {
                        Ok(claims) => Downstream::Done(Ok(claims)),
                        Err(e) => Downstream::Unauthorized(Err(e)),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the refused call and one retry");
        assert_eq!(answer.unwrap().task_id, "task-401");
    }

    #[tokio::test]
    async fn send_with_token_attaches_the_token_and_recovers_from_a_401_once() {
        let broker = TestBroker::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(tessera::http::serve(listener, Arc::clone(&broker.broker), None, std::future::pending()));
        let sdk = client(broker.addr);
        let request = crm_read().task("task-send");
        let stale = sdk.exchange(&request).await.unwrap();
        client(broker.addr).revoke(RevokeTarget::Jti(decode(stale.access_token.expose()).jti), "test").await.unwrap();
        // The downstream check: the broker's own forward-auth, as a gateway in front of the CRM asks it.
        let builds = AtomicUsize::new(0);
        let http = reqwest::Client::new();
        let answer = sdk
            .send_with_token(&request, || {
                builds.fetch_add(1, Ordering::SeqCst);
                http.get(format!("{base}/forward-auth")).header("x-tessera-audience", CRM)
            })
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(builds.load(Ordering::SeqCst), 2, "the 401 with the revoked token, and one retry");
    }

    #[tokio::test]
    async fn the_verifier_checks_audience_scopes_and_revocation() {
        let broker = TestBroker::start().await;
        let sdk = client(broker.addr);
        let token = sdk.exchange(&crm_read().task("task-verify")).await.unwrap();
        let crm = Verifier::new(client(broker.addr), BROKER, CRM).await.unwrap();
        let claims = crm.verify(&token.access_token, &["crm:read"], now()).await.unwrap();
        assert_eq!(claims.aud, CRM);
        let scope = crm.verify_offline(&token.access_token, &["crm:write"], now()).await.unwrap_err();
        assert!(matches!(&scope, Rejected::InsufficientScope(s) if s == "crm:write"), "{scope}");
        assert_eq!(scope.status(), 403);
        let other = Verifier::new(client(broker.addr), BROKER, OTHER).await.unwrap();
        let audience = other.verify_offline(&token.access_token, &[], now()).await.unwrap_err();
        assert_eq!(audience.status(), 401);
        let later = crm.verify_offline(&token.access_token, &[], now() + 3600).await.unwrap_err();
        assert_eq!(later.status(), 401, "expired");
        assert!(crm.verify_offline(&Token::new(k8s_assertion(600)), &[], now()).await.is_err(), "not a tessera token");
        sdk.revoke(RevokeTarget::Token(Token::new(token.access_token.expose())), "test").await.unwrap();
        crm.verify_offline(&token.access_token, &[], now()).await.unwrap();
        let revoked = crm.verify(&token.access_token, &[], now()).await.unwrap_err();
        assert!(matches!(revoked, Rejected::InvalidToken("the token is no longer active")), "{revoked}");
    }

    #[tokio::test]
    async fn an_unreachable_broker_opens_the_circuit_and_nothing_is_called() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut config = Config::new(format!("http://{port}"));
        config.backoff = Backoff { attempts: 3, base: Duration::from_millis(5), cap: Duration::from_millis(20) };
        config.breaker = (2, Duration::from_secs(60));
        let sdk = Broker::new(config).unwrap();
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let error = sdk
                .call_with_token(&crm_read().task("t-down"), |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Downstream::Done(()) }
                })
                .await
                .unwrap_err();
            assert!(matches!(error, SdkError::Unavailable { .. }), "{error}");
        }
        assert_eq!(sdk.breaker_state(), BreakerState::Open);
        let error = sdk.exchange(&crm_read().task("t-down")).await.unwrap_err();
        assert!(matches!(error, SdkError::CircuitOpen), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no token, no downstream call, no other credential");
    }

    /// A dev-mode `tessera serve` on a fixed gRPC port, killed and started again from the same folder (so
    /// the keys are the same) while the client is in the middle of a task.
    #[tokio::test]
    async fn the_client_rides_out_a_broker_restart_mid_task() {
        let dir = tempfile::tempdir().unwrap();
        let dev_dir = dir.path().join(".tessera-dev");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let start = {
            let dev_dir = dev_dir.clone();
            move || {
                process::tessera()
                    .args(["serve", "--dev-dir", dev_dir.to_str().unwrap(), "--http-addr", "127.0.0.1:0"])
                    .args(["--grpc-addr", &format!("127.0.0.1:{port}")])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            }
        };
        let mut serving = start();
        let mut config = Config::new(format!("http://127.0.0.1:{port}"));
        config.backoff = Backoff { attempts: 40, base: Duration::from_millis(50), cap: Duration::from_millis(500) };
        let sdk = Broker::new(config).unwrap();
        let assertion = |dev_dir: &std::path::Path| {
            let out =
                process::tessera().args(["dev", "assertion", "--sub", "agent-1", "--dev-dir"]).arg(dev_dir).output();
            Token::new(String::from_utf8(out.unwrap().stdout).unwrap().trim())
        };
        // Wait for the first start (the backoff covers it too).
        while !dev_dir.join("dev-issuer-key.pem").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let subject = Arc::new(assertion(&dev_dir));
        let request = |subject: &Arc<Token>| Exchange {
            subject_token: Arc::clone(subject),
            ..Exchange::new(Token::new(""), tessera::dev::DEMO_AUDIENCE, "crm:read")
        };
        let restarted = sdk
            .with_task("task-restart", "survive a restart", |task| async move {
                let before = task.exchange(request(&subject)).await.unwrap();
                serving.kill().unwrap();
                serving.wait().unwrap();
                let restart = tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_millis(500));
                    start()
                });
                let after = task.exchange_uncached(request(&subject)).await;
                let serving = restart.await.unwrap();
                (before, after, serving)
            })
            .await
            .unwrap();
        let (before, after, mut serving) = restarted;
        let after = after.unwrap();
        assert_eq!(sdk.breaker_state(), BreakerState::Closed);
        assert_ne!(after.access_token.expose(), before.access_token.expose());
        let claims = decode(after.access_token.expose());
        assert_eq!((claims.aud.as_str(), claims.scope.as_str()), (tessera::dev::DEMO_AUDIENCE, "crm:read"));
        assert!(!sdk.introspect(&after.access_token).await.unwrap().active, "the task scope's end revoked it");
        let _ = serving.kill();
        let _ = serving.wait();
    }
}
