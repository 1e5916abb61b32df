//! Interop with a client nobody here wrote: Python `grpcio` stubs generated from `proto/`, and `PyJWT`
//! verifying the issued token against `GetJwks` (tests/interop/exchange_interop.py).

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
