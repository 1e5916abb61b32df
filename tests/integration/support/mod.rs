//! Test support: fixtures, an upstream issuer that signs realistic assertions, and [`TestBroker`], which
//! starts a real broker (config file → validated config → gRPC server) on a free port.

#![allow(dead_code)]

pub mod jwks_server;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera::Broker;
use tessera::client::{Client, Credentials, Rpc};
use tessera::config::ConfigBuilder;
use tessera::grpc::pb::{self, token_broker_client::TokenBrokerClient};
use tessera::token::AccessClaims;
use tonic::transport::Channel;

pub const BROKER: &str = "https://tessera.test";
pub const CRM: &str = "https://crm.example";
pub const OTHER: &str = "https://other.example";
pub const K8S_ISS: &str = "https://kubernetes.default.svc.cluster.local";
pub const GITHUB_ISS: &str = "https://token.actions.githubusercontent.com";
pub const ORCHESTRATOR: &str = "system:serviceaccount:agents:orchestrator";
pub const SPIFFE_AGENT: &str = "spiffe://agents.example.org/ns/agents/sa/summariser";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const CLIENT_SECRET: &str = "orchestrator-secret-0123456789abcdef";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn now() -> u64 {
    tessera::clock::now()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An upstream issuer's signing key, loaded from the fixtures.
pub enum Signer {
    Rs256(RsaKeyPair),
    Ps256(RsaKeyPair),
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

fn pem_der(name: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(fixtures().join(name)).expect("fixture key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM base64")
}

impl Signer {
    pub fn rs256(name: &str) -> Signer {
        Signer::Rs256(RsaKeyPair::from_pkcs8(&pem_der(name)).expect("RSA key"))
    }
    pub fn ps256(name: &str) -> Signer {
        Signer::Ps256(RsaKeyPair::from_pkcs8(&pem_der(name)).expect("RSA key"))
    }
    pub fn es256(name: &str) -> Signer {
        Signer::Es256(EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &pem_der(name)).expect("EC key"))
    }
    pub fn eddsa(name: &str) -> Signer {
        Signer::EdDsa(Ed25519KeyPair::from_pkcs8(&pem_der(name)).expect("Ed25519 key"))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Rs256(_) => "RS256",
            Signer::Ps256(_) => "PS256",
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rs256(k) | Signer::Ps256(k) => {
                let pad: &'static dyn sig::RsaEncoding =
                    if matches!(self, Signer::Rs256(_)) { &sig::RSA_PKCS1_SHA256 } else { &sig::RSA_PSS_SHA256 };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, message, &mut out).expect("RSA sign");
                out
            }
            Signer::Es256(k) => k.sign(&rng, message).expect("EC sign").as_ref().to_vec(),
            Signer::EdDsa(k) => k.sign(message).as_ref().to_vec(),
        }
    }

    /// A compact JWS over `claims` with the given header (alg is filled in).
    pub fn token_with_header(&self, mut header: Value, claims: &Value) -> String {
        header["alg"] = self.alg().into();
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature))
    }

    pub fn token(&self, kid: &str, claims: &Value) -> String {
        self.token_with_header(json!({ "typ": "JWT", "kid": kid }), claims)
    }
}

/// The `kid` of the first key in a fixture JWKS.
pub fn kid(jwks: &str) -> String {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(jwks)).unwrap()).unwrap();
    v["keys"][0]["kid"].as_str().unwrap().to_string()
}

/// A fixture claim set (`claims/<name>.json`) with fresh times: issued now, valid for `ttl` seconds.
pub fn claims(name: &str, ttl: u64) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("claims/{name}.json"))).unwrap();
    let mut c: Value = serde_json::from_str(&text).unwrap();
    let now = now();
    c["iat"] = now.into();
    c["exp"] = (now + ttl).into();
    match name {
        "kubernetes" => {
            c["nbf"] = now.into();
            c["kubernetes.io"]["warnafter"] = (now + ttl / 2).into();
            c["aud"] = json!([BROKER]);
        }
        "spiffe" => c["aud"] = json!([BROKER]),
        _ => {
            c["nbf"] = now.into();
            c["aud"] = BROKER.into();
        }
    }
    c
}

/// A Kubernetes projected service-account token for the orchestrator, valid for `ttl` seconds.
pub fn k8s_assertion(ttl: u64) -> String {
    Signer::rs256("kubernetes.key.pem").token(&kid("kubernetes.jwks.json"), &claims("kubernetes", ttl))
}

/// A SPIFFE JWT-SVID for the summariser agent.
pub fn spiffe_assertion(ttl: u64) -> String {
    Signer::es256("spiffe.key.pem").token(&kid("spiffe.jwks.json"), &claims("spiffe", ttl))
}

/// A GitHub Actions OIDC token for the agent fleet's main branch (GitHub's header carries `x5t` too).
pub fn github_assertion(ttl: u64) -> String {
    let header = json!({ "typ": "JWT", "kid": kid("github.jwks.json"), "x5t": "deEQaEGlnZVRyuXbOhW3h7skcA3" });
    Signer::rs256("github.key.pem").token_with_header(header, &claims("github", ttl))
}

/// The claims of a tessera token, read without verification (tests verify separately where it matters).
pub fn decode(token: &str) -> AccessClaims {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("claims")
}

/// A request for `scope` on `audience` with the given subject token, for task `task-42`.
pub fn request(subject_token: &str, audience: &str, scope: &str) -> pb::ExchangeTokenRequest {
    pb::ExchangeTokenRequest {
        grant_type: TOKEN_EXCHANGE.into(),
        audience: vec![audience.into()],
        scope: scope.into(),
        subject_token: subject_token.into(),
        subject_token_type: JWT.into(),
        task_id: "task-42".into(),
        ..Default::default()
    }
}

/// Builds and starts a broker on `127.0.0.1:0`.
pub struct TestBrokerBuilder {
    metrics: Option<tessera::metrics::Metrics>,
    signing_key: Option<String>,
    broker_toml: String,
    extra_toml: String,
    /// More keys and tables of the CRM audience (`[[audiences.authorization_details]]`).
    crm_toml: String,
    policy: String,
    issuers_toml: Option<String>,
    /// Whether the `local` client is the loopback caller without credentials (true unless turned off).
    loopback_client: bool,
    /// The clients registered to introspect the CRM's, the other API's and task tokens.
    introspectors: Vec<String>,
    clients_toml: Option<String>,
}

pub struct TestBroker {
    pub addr: std::net::SocketAddr,
    pub broker: Arc<Broker>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestBroker {
    pub fn builder() -> TestBrokerBuilder {
        TestBrokerBuilder {
            metrics: None,
            signing_key: None,
            broker_toml: String::new(),
            extra_toml: String::new(),
            crm_toml: String::new(),
            policy: std::fs::read_to_string(fixtures().join("policy.cedar")).unwrap(),
            issuers_toml: None,
            loopback_client: true,
            introspectors: vec!["gateway".into(), "local".into()],
            clients_toml: None,
        }
    }

    pub async fn start() -> TestBroker {
        TestBroker::builder().start().await
    }

    pub async fn client(&self) -> TokenBrokerClient<Channel> {
        TokenBrokerClient::connect(format!("http://{}", self.addr)).await.expect("connect")
    }

    /// The anonymous loopback client, for calling the broker's domain functions directly.
    pub fn local_client(&self) -> Client {
        local_client(&self.broker)
    }

    /// Stops the server and waits until in-flight RPCs have drained.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A new Ed25519 signing key, as PKCS#8 PEM.
pub fn shared_signing_key() -> String {
    let (_, pem) = tessera::token::keys::SigningKey::generate(tessera::token::keys::SigningAlgorithm::EdDSA).unwrap();
    pem.expose().to_string()
}

/// The anonymous loopback client of `broker`.
pub fn local_client(broker: &Broker) -> Client {
    let credentials = Credentials { peer_is_loopback: true, ..Credentials::default() };
    broker.current().clients().authenticate(&credentials, Rpc::Exchange).expect("loopback client").clone()
}

/// The default clients: `orchestrator` (exchange) and `gateway` (introspect) with the test secret, and the
/// loopback client `local` (every RPC).
pub fn default_clients_toml(secret_sha256: &str) -> String {
    format!(
        r#"
[[clients]]
id = "orchestrator"
secret_sha256 = "{secret_sha256}"
rpcs = ["exchange"]

[[clients]]
id = "local"
loopback_anonymous = true
rpcs = ["exchange", "introspect", "revoke", "suspend", "watch"]

[[clients]]
id = "gateway"
secret_sha256 = "{secret_sha256}"
rpcs = ["introspect"]
"#
    )
}

pub fn default_issuers_toml() -> String {
    let f = fixtures();
    format!(
        r#"
[[issuers]]
name = "kubernetes"
issuer = "{K8S_ISS}"
jwks_file = "{k8s}"
algorithms = ["RS256"]
attributes = {{ namespace = "/kubernetes.io/namespace", service_account = "/kubernetes.io/serviceaccount/name" }}

[[issuers]]
name = "spiffe"
spiffe_trust_domain = "agents.example.org"
jwks_file = "{spiffe}"
algorithms = ["ES256"]

[[issuers]]
name = "github"
issuer = "{GITHUB_ISS}"
jwks_file = "{github}"
algorithms = ["RS256"]
attributes = {{ repository = "/repository", ref = "/ref", environment = "/environment" }}
"#,
        k8s = f.join("kubernetes.jwks.json").display(),
        spiffe = f.join("spiffe.jwks.json").display(),
        github = f.join("github.jwks.json").display(),
    )
}

impl TestBrokerBuilder {
    /// Extra keys for the `[broker]` table.
    pub fn broker_toml(mut self, toml: &str) -> Self {
        self.broker_toml.push_str(toml);
        self.broker_toml.push('\n');
        self
    }

    /// Records metrics into these instruments (the global meter's otherwise).
    pub fn metrics(mut self, metrics: tessera::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The clients registered to introspect the CRM's, the other API's and task tokens (default: `gateway`
    /// and `local`); a test with its own clients names its own.
    pub fn introspectors(mut self, ids: &[&str]) -> Self {
        self.introspectors = ids.iter().map(|id| id.to_string()).collect();
        self
    }

    /// No loopback client: a caller without credentials is refused even on loopback (the `local` client then
    /// needs the shared secret).
    pub fn without_loopback_client(mut self) -> Self {
        self.loopback_client = false;
        self
    }

    /// Signs with this PKCS#8 PEM key (replicas of one broker share it) instead of a fresh one.
    pub fn signing_key(mut self, pem: &str) -> Self {
        self.signing_key = Some(pem.to_string());
        self
    }

    /// Use Redis at `url` for revocations, in `mode` (`strict` or `mirror`).
    pub fn redis(self, url: &str, mode: &str) -> Self {
        self.extra_toml(&format!(
            "\n[store]\nredis_url = \"{url}\"\nmode = \"{mode}\"\ntimeout_ms = 300\nmirror_max_staleness_ms = 1000\nmirror_heartbeat_ms = 200\n"
        ))
    }

    /// Use a Redis Cluster for revocations, in `mode` (`strict` or `mirror`).
    pub fn redis_cluster(self, urls: &[String], mode: &str) -> Self {
        let nodes: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        self.extra_toml(&format!(
            "\n[store]\nredis_cluster = [{}]\nmode = \"{mode}\"\ntimeout_ms = 500\nmirror_max_staleness_ms = 1000\nmirror_heartbeat_ms = 200\n",
            nodes.join(", ")
        ))
    }

    /// Extra TOML appended to the config (more `[[issuers]]`, `[[audiences]]`, …).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// Appends to the CRM audience's table (after its own keys).
    pub fn crm_toml(mut self, toml: &str) -> Self {
        self.crm_toml.push_str(toml);
        self
    }

    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = policy.to_string();
        self
    }

    /// Replaces the default issuers (Kubernetes, SPIFFE, GitHub from the fixtures).
    pub fn issuers_toml(mut self, toml: &str) -> Self {
        self.issuers_toml = Some(toml.to_string());
        self
    }

    /// Replaces the default clients (orchestrator and gateway with the test secret, the loopback `local`).
    pub fn clients_toml(mut self, toml: &str) -> Self {
        self.clients_toml = Some(toml.to_string());
        self
    }

    /// Writes the config file (with a fresh signing key) into a new folder, without starting anything.
    pub fn write_config(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let pem = self.signing_key.clone().unwrap_or_else(shared_signing_key);
        std::fs::write(dir.path().join("signing.pem"), pem).unwrap();
        std::fs::write(dir.path().join("policy.cedar"), &self.policy).unwrap();
        let secret_sha256 =
            hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CLIENT_SECRET.as_bytes()));
        let introspect = format!("introspect_clients = {:?}", self.introspectors);
        let task_introspect = format!("task_introspect_clients = {:?}", self.introspectors);
        let config = format!(
            r#"
[broker]
issuer = "{BROKER}"
task_token_max_ttl = 1800
{task_introspect}
{broker}
[signing]
keys = ["signing.pem"]

[policy]
file = "policy.cedar"

[log]
level = "warn"

[[audiences]]
id = "{CRM}"
scopes = ["crm:read", "crm:write", "crm:export"]
max_ttl = 300
{introspect}
{crm}

[[audiences]]
id = "{OTHER}"
scopes = ["other:read"]
max_ttl = 120
{introspect}

{clients}
{issuers}
{extra}
"#,
            broker = self.broker_toml,
            issuers = self.issuers_toml.clone().unwrap_or_else(default_issuers_toml),
            clients = self.clients_toml.clone().unwrap_or_else(|| {
                let clients = default_clients_toml(&secret_sha256);
                if self.loopback_client {
                    clients
                } else {
                    clients.replace("loopback_anonymous = true", &format!("secret_sha256 = \"{secret_sha256}\""))
                }
            }),
            extra = self.extra_toml,
            crm = self.crm_toml,
            introspect = introspect,
            task_introspect = task_introspect,
        );
        std::fs::write(dir.path().join("tessera.toml"), config).unwrap();
        dir
    }

    /// The broker alone, without a server, for calling domain functions directly.
    pub async fn build(&self) -> (Arc<Broker>, tessera::config::ServerConfig, tempfile::TempDir) {
        let dir = self.write_config();
        let config = ConfigBuilder::load(&dir.path().join("tessera.toml"))
            .and_then(|b| b.build(dir.path()))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let settings = config.server;
        let metrics = self.metrics.clone().unwrap_or_else(tessera::metrics::Metrics::global);
        (Arc::new(tessera::serve::broker(config, metrics).await.unwrap()), settings, dir)
    }

    pub async fn start(self) -> TestBroker {
        let (broker, settings, dir) = self.build().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let broker = Arc::clone(&broker);
            async move {
                tessera::serve::run(listener, broker, settings, async {
                    let _ = rx.await;
                })
                .await
                .expect("server");
            }
        });
        // Ready once health says SERVING (after the JWKS warm-up), so tests see a settled broker.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let serving = async {
                let channel = Channel::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                health.check(request).await.ok()
            };
            if serving.await.is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "test broker did not become ready");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        TestBroker { addr, broker, dir, shutdown: Some(tx), server: Some(server) }
    }
}

/// The OAuth error code (`ErrorInfo.reason`) of a failed RPC.
pub fn oauth_error(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let info = status.get_details_error_info().expect("every refusal carries an ErrorInfo");
    assert_eq!(info.domain, "tessera");
    info.reason
}

/// Asserts that an RPC failed with `code` and the OAuth error `reason`, and that the message does not
/// echo `token` (the token that was sent) or its signature.
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
    reason: &str,
    token: &str,
) -> tonic::Status {
    let status = match result {
        Ok(r) => panic!("expected {reason}, got a response: {r:?}"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "status for {reason}: {}", status.message());
    assert_eq!(oauth_error(&status), reason, "{}", status.message());
    if token.len() > 16 {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!status.message().contains(token), "message echoes the token");
        assert!(signature.len() < 8 || !status.message().contains(signature), "message echoes the signature");
    }
    status
}
