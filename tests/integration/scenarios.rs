//! The five agent scenarios of examples/scenarios, each run as a user runs it (`python
//! examples/scenarios/<name>/run.py`): a `tessera serve` from the scenario's own config, upstream assertions
//! minted with fresh issuer keys, a downstream API checking tokens with the SDK (JWKS + introspection). A
//! scenario asserts its own outcome at each step (what is served, what the API or the broker refuses) and
//! exits non-zero on the first that does not hold. One test also installs the SDK into a fresh venv from the
//! repository path, as a user would, and runs a scenario with it.

use std::process::Command;

use crate::sdk::{python, repo};

fn scenario(python: &str, name: &str) -> String {
    let script = repo().join("examples/scenarios").join(name).join("run.py");
    let output = Command::new(python)
        .arg(&script)
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera"))
        .output()
        .expect("run the scenario");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scenario {name} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, format!("scenario {name}: ok"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    stdout
}

#[test]
fn retrieval_token_dies_when_the_answer_returns_and_its_replay_is_refused() {
    let out = scenario(&python(), "retrieval");
    assert!(out.contains("ok: the document API refuses the replay"), "{out}");
    assert!(out.contains("ok: the finance repository refuses it (another audience)"), "{out}");
}

#[test]
fn support_summariser_reads_one_case_for_one_window_and_export_needs_approval() {
    let out = scenario(&python(), "support");
    for claim in [
        "ok: case 1234 is served",
        "ok: case 5678 is refused: the token names case 1234 only",
        "ok: case 1234 is refused after the window",
        "ok: the export waits for a human's approval",
        "ok: the desk cannot approve its own escalation",
        "ok: the approved export is granted",
        "ok: the approval is spent by the one export it granted",
    ] {
        assert!(out.contains(claim), "{claim}:\n{out}");
    }
}

#[test]
fn ci_verifier_token_cannot_deploy_nor_serve_another_repository() {
    let out = scenario(&python(), "ci");
    for claim in [
        "ok: it verifies the agent-fleet production release",
        "ok: it cannot deploy (insufficient_scope)",
        "ok: it cannot be used for another repository (another audience)",
        "ok: the broker refuses a token for another repository",
    ] {
        assert!(out.contains(claim), "{claim}:\n{out}");
    }
}

#[test]
fn cloud_agent_gets_ephemeral_access_to_one_api_from_its_service_account_token() {
    let out = scenario(&python(), "cloud");
    assert!(out.contains("ok: it is ephemeral"), "{out}");
    assert!(out.contains("ok: no other API"), "{out}");
}

#[test]
fn handoff_executor_is_reauthorised_and_the_act_chain_names_both_agents() {
    let out = scenario(&python(), "handoff");
    assert!(out.contains("ok: the executor is re-authorised: read only, no write inherited"), "{out}");
    assert!(out.contains("ok: the act chain names the executor, acting for the planner"), "{out}");
    assert!(out.contains("ok: the task token, the planner's and the executor's tokens are all inactive"), "{out}");
}

/// What a user does: a new venv, `pip install <repo>/clients/python[scenarios]` (from the package index for
/// its dependencies), then a scenario script.
#[test]
fn a_fresh_venv_installs_the_sdk_from_the_repository_and_runs_a_scenario() {
    let base = python();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let status = Command::new(&base).args(["-m", "venv"]).arg(&venv).status().expect("python -m venv");
    assert!(status.success(), "python -m venv failed");
    let package = format!("{}[scenarios]", repo().join("clients/python").display());
    let install = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", &package])
        .output()
        .expect("pip install");
    assert!(
        install.status.success(),
        "pip install {package} failed (it needs the package index):\n{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let python = venv.join("bin/python").display().to_string();
    // The installed package, not the tree's sources.
    let origin = Command::new(&python).args(["-c", "import tessera_client; print(tessera_client.__file__)"]).output();
    let origin = String::from_utf8_lossy(&origin.expect("import").stdout).into_owned();
    assert!(origin.starts_with(&venv.display().to_string()), "{origin}");
    let out = scenario(&python, "retrieval");
    assert!(out.contains("ok: the token is inactive the moment the task ends"), "{out}");
}
