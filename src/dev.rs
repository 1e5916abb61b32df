//! Dev mode: what `tessera serve` runs with no config file, so a newcomer can try the whole loop in a minute.
//!
//! A signing key and a dev upstream issuer key are generated once into a local folder (`./.tessera-dev/`),
//! so `tessera dev assertion` in another terminal signs with the same issuer key, and several `serve`
//! processes started from one folder are replicas of one broker. The demo catalog has one audience,
//! `https://crm.example`; the demo policy grants any dev principal `crm:read` and `crm:write`, never
//! `crm:export`; the demo client needs no credentials on loopback. Not for production.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{AudienceBuilder, ClientBuilder, Config, ConfigBuilder, ConfigErrors, IssuerBuilder};
use crate::policy::DEFAULT_POLICY;
use crate::token::jws;
use crate::token::keys::{JwkSet, SigningAlgorithm, SigningKey};

/// The folder dev mode keeps its keys and policy in, by default (`--dev-dir`), relative to the working
/// directory.
pub const DEV_DIR: &str = ".tessera-dev";
/// The dev broker's `broker.issuer`.
pub const BROKER_ISSUER: &str = "https://tessera.localhost";
/// The `iss` of the dev upstream issuer, whose key signs `tessera dev assertion`.
pub const DEV_ISSUER: &str = "https://dev-issuer.tessera.localhost";
/// The demo catalog's one audience.
pub const DEMO_AUDIENCE: &str = "https://crm.example";

const SIGNING_KEY_FILE: &str = "signing-key.pem";
const ISSUER_KEY_FILE: &str = "dev-issuer-key.pem";
const POLICY_FILE: &str = "policy.cedar";

/// Appended to the default policy: dev principals get `crm:read` and `crm:write`, directly or as a task token,
/// never `crm:export`.
const DEMO_POLICY: &str = r#"
// Dev mode demo: any principal of the dev issuer may get crm:read and crm:write, never crm:export.
@id("dev-demo-grant")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://crm.example")
when { principal.issuer == "dev" && (context.scope == "crm:read" || context.scope == "crm:write") };

// Task tokens for dev principals, with the same scopes.
@id("dev-demo-task-token")
permit (principal, action == Tessera::Action::"exchange", resource == Tessera::Audience::"https://tessera.localhost")
when { principal.issuer == "dev" && (context.scope == "crm:read" || context.scope == "crm:write") };

@id("dev-demo-never-export")
forbid (principal, action, resource) when { context.scope == "crm:export" };
"#;

/// Printed and logged at every dev mode start.
pub const WARNING: &str = "\
tessera is running in DEV MODE: generated keys in ./.tessera-dev/, a demo catalog and policy, the \
in-memory revocation store unless --redis-url is given, and a client that needs no credentials on loopback. This is NOT for production: start it with \
--config FILE.";

/// Reads a key from `dir/name`, generating it first if it does not exist. Generation writes a temporary
/// file and links it into place, so processes starting together agree on one key.
fn key(dir: &Path, name: &str) -> Result<(SigningKey, PathBuf), String> {
    let path = dir.join(name);
    if !path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (_, pem) = SigningKey::generate(SigningAlgorithm::EdDSA)?;
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let mut file = private_file(&tmp)?;
        file.write_all(pem.expose().as_bytes()).map_err(|e| e.to_string())?;
        drop(file);
        // Losing the race to another process is fine: its key is used.
        let _ = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
    }
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((SigningKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?, path))
}

fn private_file(path: &Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The dev mode configuration, with its keys generated on first use in `dir`.
pub fn config(
    dir: &Path,
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    redis_url: Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |e: String| ConfigErrors(vec![format!("dev mode: {e}")]);
    let (_, signing_path) = key(dir, SIGNING_KEY_FILE).map_err(fail)?;
    let (issuer_key, _) = key(dir, ISSUER_KEY_FILE).map_err(fail)?;
    let jwks =
        serde_json::to_string(&JwkSet { keys: vec![issuer_key.jwk().clone()] }).map_err(|e| fail(e.to_string()))?;
    let policy_path = dir.join(POLICY_FILE);
    std::fs::write(&policy_path, format!("{DEFAULT_POLICY}\n{DEMO_POLICY}")).map_err(|e| fail(e.to_string()))?;
    let mut builder = ConfigBuilder::default();
    builder.server.grpc_addr = grpc_addr;
    builder.server.http_addr = http_addr;
    builder.store.redis_url = redis_url.map(Into::into);
    builder.broker.issuer = Some(BROKER_ISSUER.into());
    builder.signing.keys = vec![signing_path];
    builder.policy.file = Some(policy_path);
    builder.issuers = vec![IssuerBuilder {
        name: "dev".into(),
        issuer: Some(DEV_ISSUER.into()),
        jwks_inline: Some(jwks),
        algorithms: Some(vec!["EdDSA".into()]),
        ..IssuerBuilder::default()
    }];
    builder.audiences = vec![AudienceBuilder {
        id: DEMO_AUDIENCE.into(),
        scopes: vec!["crm:read".into(), "crm:write".into(), "crm:export".into()],
        max_ttl: Some(300),
        introspect_clients: vec!["demo".into()],
        ..AudienceBuilder::default()
    }];
    builder.broker.task_introspect_clients = vec!["demo".into()];
    builder.clients = vec![ClientBuilder {
        id: "demo".into(),
        rpcs: vec![
            crate::client::Rpc::Exchange,
            crate::client::Rpc::Introspect,
            crate::client::Rpc::Revoke,
            crate::client::Rpc::Suspend,
            crate::client::Rpc::Watch,
        ],
        loopback_anonymous: true,
        ..ClientBuilder::default()
    }];
    // The paths above are already relative to the working directory.
    builder.build(Path::new(""))
}

/// The dev issuer's public JWK Set (`tessera dev jwks`), generating its key first if it does not exist: so a
/// config file's `[[issuers]]` entry can trust what `tessera dev assertion` signs (docs/approvals.md,
/// `tessera-bench config`).
pub fn issuer_jwks(dir: &Path) -> Result<String, String> {
    let (key, _) = key(dir, ISSUER_KEY_FILE)?;
    serde_json::to_string_pretty(&JwkSet { keys: vec![key.jwk().clone()] }).map_err(|e| e.to_string())
}

/// Mints an assertion from the dev issuer (`tessera dev assertion`), as of `now`.
pub fn assertion(dir: &Path, sub: &str, scope: Option<&str>, ttl: u64, now: u64) -> Result<String, String> {
    let path = dir.join(ISSUER_KEY_FILE);
    if !path.exists() {
        return Err(format!(
            "{} does not exist: start `tessera serve` (dev mode) in this folder first",
            path.display()
        ));
    }
    let (key, _) = key(dir, ISSUER_KEY_FILE)?;
    let mut claims = serde_json::json!({
        "iss": DEV_ISSUER,
        "sub": sub,
        "aud": BROKER_ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": crate::token::new_jti().map_err(|e| e.to_string())?,
    });
    if let Some(scope) = scope {
        claims["scope"] = scope.into();
    }
    let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": key.kid() });
    let payload = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
    jws::sign(&jws::b64(header.to_string().as_bytes()), &payload, &key).map_err(|e| e.to_string())
}
