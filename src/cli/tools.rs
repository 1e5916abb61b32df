//! The tools: `keygen`, `config check`, `policy check`, `dev assertion` and `audit`.

use std::path::Path;
use std::process::ExitCode;

use tessera::dev;
use tessera::token::keys::{SigningAlgorithm, SigningKey};

use super::Alg;
use super::serve::{Overrides, load_config};

/// Writes a new signing key to `out` (never overwriting a file, mode 0600) and prints its `kid`.
pub(super) fn keygen(alg: Alg, out: &Path) -> Result<ExitCode, String> {
    let alg = match alg {
        Alg::Eddsa => SigningAlgorithm::EdDSA,
        Alg::Es256 => SigningAlgorithm::ES256,
    };
    let (key, pem) = SigningKey::generate(alg)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::io::Write::write_all(&mut file, pem.expose().as_bytes()).map_err(|e| e.to_string())?;
    println!("{}", serde_json::json!({ "kid": key.kid(), "alg": key.alg().as_str(), "file": out }));
    Ok(ExitCode::SUCCESS)
}

/// Validates a config file as `serve` would, listing every problem.
pub(super) fn config_check(file: &Path) -> Result<ExitCode, String> {
    match load_config(file, Overrides::default()) {
        Ok(config) => {
            println!(
                "{}: ok ({} issuers, {} audiences, {} clients, {} signing keys)",
                file.display(),
                config.issuers.len(),
                config.audiences.len(),
                config.clients.len(),
                config.signing_keys.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Validates a Cedar policy file against tessera's schema.
pub(super) fn policy_check(file: &Path) -> Result<ExitCode, String> {
    let source = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match tessera::policy::Policy::new(&source) {
        Ok(_) => {
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => Err(format!("{}:\n  - {}", file.display(), problems.join("\n  - "))),
    }
}

/// Prints an assertion signed by the dev issuer.
pub(super) fn dev_assertion(dev_dir: &Path, sub: &str, scope: Option<&str>, ttl: u64) -> Result<ExitCode, String> {
    let token = dev::assertion(dev_dir, sub, scope, ttl.clamp(1, 86_400), tessera::clock::now())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Prints the audit events that match `filter`, oldest first, one JSON object per line.
pub(super) async fn audit(redis_url: &str, filter: tessera::audit::Filter) -> Result<ExitCode, String> {
    for e in tessera::audit::stream::read(redis_url, &filter).await? {
        println!("{}", serde_json::to_string(&e).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}
