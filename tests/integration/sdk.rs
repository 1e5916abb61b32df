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
