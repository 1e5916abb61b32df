//! Configuration: one TOML file plus `TESSERA__SECTION__KEY` environment overrides, read into a serde
//! builder that refuses unknown keys, then validated into a typed [`Config`] with every problem reported at
//! once. Validation also loads what the config points at (signing keys, JWKS files, the policy), so
//! `tessera config check` proves a config will start.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::catalog::Audience;
use crate::client::{Client, Rpc, parse_sha256_hex};
use crate::issuer::{IssuerSpec, JwksSource};
use crate::policy::{DEFAULT_POLICY, Policy};
use crate::scopes::Scopes;
use crate::secret::SecretUrl;
use crate::token::jws::Algorithm;
use crate::token::keys::{JwkSet, KeySet, SigningKey};

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// Clock skew tolerated, in seconds (`broker.leeway`, `issuers[].leeway`): for clocks, not for lifetimes.
pub const DEFAULT_BROKER_LEEWAY: u64 = 5;
pub const DEFAULT_ISSUER_LEEWAY: u64 = 30;
pub const MAX_LEEWAY: u64 = 60;
/// How long an upstream assertion may live, by default (`issuers[].max_assertion_lifetime`): 24 h.
pub const DEFAULT_MAX_ASSERTION_LIFETIME: u64 = 86_400;
/// The longest `max_assertion_lifetime` accepted: 30 days.
pub const MAX_ASSERTION_LIFETIME: u64 = 30 * 86_400;
/// How long a revoked task id stays refused, by default (`broker.task_revocation_retention`): 24 h.
pub const DEFAULT_TASK_REVOCATION_RETENTION: u64 = 86_400;
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigBuilder {
    pub server: ServerBuilder,
    pub broker: BrokerBuilder,
    pub signing: SigningBuilder,
    pub policy: PolicyBuilder,
    pub issuers: Vec<IssuerBuilder>,
    pub audiences: Vec<AudienceBuilder>,
    pub clients: Vec<ClientBuilder>,
    pub store: StoreBuilder,
    pub telemetry: TelemetryBuilder,
    pub log: LogBuilder,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryBuilder {
    /// OTLP/gRPC endpoint (`http://collector:4317`); else `OTEL_EXPORTER_OTLP_ENDPOINT`; else no export.
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub metrics_interval_ms: Option<u64>,
    /// Serve Prometheus text at `GET /metrics` on the HTTP port (default true).
    pub prometheus: Option<bool>,
    /// CA certificates (PEM) trusted for an `https://` OTLP endpoint; else `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub otlp_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
    pub otlp_ca_file: Option<PathBuf>,
    pub service_name: String,
    pub metrics_interval: Duration,
    pub prometheus: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: "tessera".into(),
            metrics_interval: Duration::from_secs(10),
            prometheus: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreBuilder {
    /// `redis://[user:password@]host:port[/db]`; absent (and no cluster): the embedded in-memory store.
    pub redis_url: Option<SecretUrl>,
    /// Redis Cluster seed nodes, instead of `redis_url`.
    pub redis_cluster: Vec<SecretUrl>,
    pub mode: Option<StoreMode>,
    pub timeout_ms: Option<u64>,
    pub mirror_max_staleness_ms: Option<u64>,
    pub mirror_heartbeat_ms: Option<u64>,
}

/// How revocation checks reach Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    /// Every check asks Redis.
    #[default]
    Strict,
    /// Checks read a local copy kept current by pub/sub, with bounded, measured staleness.
    Mirror,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerBuilder {
    pub grpc_addr: Option<String>,
    /// Plain HTTP: `/metrics` and `/healthz` (and, later, the OAuth endpoints).
    pub http_addr: Option<String>,
    pub max_request_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub max_concurrent_requests: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerBuilder {
    pub issuer: Option<String>,
    pub leeway: Option<u64>,
    pub max_delegation_depth: Option<usize>,
    pub max_chain_length: Option<usize>,
    pub task_token_max_ttl: Option<u64>,
    /// Seconds a revoked task id stays refused for new exchanges (default 24 h).
    pub task_revocation_retention: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningBuilder {
    pub keys: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyBuilder {
    pub file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerBuilder {
    pub name: String,
    pub issuer: Option<String>,
    pub spiffe_trust_domain: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_inline: Option<String>,
    pub audience: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<u64>,
    pub max_token_bytes: Option<usize>,
    pub subject_claim: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub min_refresh_interval: Option<u64>,
    pub refresh_interval: Option<u64>,
    /// Assertions may be exchanged once (they must carry `jti`).
    pub single_use: bool,
    /// Longest accepted assertion lifetime in seconds (`exp - iat` and `exp - now`; default 24 h).
    pub max_assertion_lifetime: Option<u64>,
    /// Bearer token file sent with `jwks_url` fetches (Kubernetes: the pod's service-account token).
    pub jwks_bearer_token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for `jwks_url` (Kubernetes: the cluster CA).
    pub jwks_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceBuilder {
    pub id: String,
    pub scopes: Vec<String>,
    pub max_ttl: Option<u64>,
    /// Clients that may introspect this audience's tokens; empty: every client allowed to introspect.
    pub introspect_clients: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientBuilder {
    pub id: String,
    pub secret_sha256: Option<String>,
    pub rpcs: Vec<Rpc>,
    pub loopback_anonymous: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogBuilder {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub use crate::exchange::Limits;

/// Where Redis is.
#[derive(Clone)]
pub enum Backend {
    Standalone(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password.
        match self {
            Backend::Standalone(_) => f.write_str("Standalone([redacted])"),
            Backend::Cluster(nodes) => write!(f, "Cluster({} nodes, [redacted])", nodes.len()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorSettings {
    pub max_staleness: Duration,
    pub heartbeat: Duration,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub backend: Backend,
    /// Upper bound on one store operation; past it the broker answers UNAVAILABLE.
    pub timeout: Duration,
    pub mirror: Option<MirrorSettings>,
}

#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
}

#[derive(Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// A validated configuration, with the keys, JWKS and policy it names already loaded.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub broker_issuer: String,
    pub leeway: u64,
    pub limits: Limits,
    pub task_token_max_ttl: u64,
    /// Seconds a revoked task id stays refused.
    pub task_revocation_retention: u64,
    pub signing_keys: Vec<SigningKey>,
    pub issuers: Vec<(IssuerSpec, KeySet)>,
    pub audiences: Vec<Audience>,
    pub clients: Vec<Client>,
    pub policy: Policy,
    /// `None`: the embedded in-memory store.
    pub store: Option<RedisSettings>,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl ConfigBuilder {
    /// Reads `path` and the `TESSERA__*` environment overrides (`TESSERA__BROKER__ISSUER=…`).
    pub fn load(path: &Path) -> Result<ConfigBuilder, ConfigErrors> {
        Figment::new()
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed("TESSERA__").split("__"))
            .extract()
            .map_err(|e| ConfigErrors(e.into_iter().map(|e| e.to_string()).collect()))
    }

    /// Validates into a [`Config`]; relative paths are resolved against `base_dir` (the config's folder).
    pub fn build(self, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let path = |p: &Path| {
            if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) }
        };

        let grpc_addr = self.server.grpc_addr.as_deref().unwrap_or(DEFAULT_GRPC_ADDR);
        let grpc_addr = grpc_addr.parse().unwrap_or_else(|_| {
            problems.push(format!("server.grpc_addr: `{grpc_addr}` is not an address (host:port)"));
            SocketAddr::from(([127, 0, 0, 1], 50051))
        });

        let broker_issuer = self.broker.issuer.clone().unwrap_or_default();
        if !is_https_like(&broker_issuer) {
            problems.push("broker.issuer: required, an http(s) URL identifying this broker".into());
        }
        let max_delegation_depth = self.broker.max_delegation_depth.unwrap_or(4);
        if !(1..=16).contains(&max_delegation_depth) {
            problems.push("broker.max_delegation_depth: must be between 1 and 16".into());
        }
        let max_chain_length = self.broker.max_chain_length.unwrap_or(8);
        if !(1..=32).contains(&max_chain_length) {
            problems.push("broker.max_chain_length: must be between 1 and 32".into());
        }
        let task_token_max_ttl = self.broker.task_token_max_ttl.unwrap_or(3600);
        if task_token_max_ttl == 0 || task_token_max_ttl > 86_400 {
            problems.push("broker.task_token_max_ttl: must be between 1 and 86400 seconds".into());
        }
        let leeway = self.broker.leeway.unwrap_or(DEFAULT_BROKER_LEEWAY);
        if leeway > MAX_LEEWAY {
            problems.push(format!("broker.leeway: at most {MAX_LEEWAY} seconds (it absorbs clock skew only)"));
        }
        let task_revocation_retention =
            self.broker.task_revocation_retention.unwrap_or(DEFAULT_TASK_REVOCATION_RETENTION);
        if task_revocation_retention == 0 || task_revocation_retention > MAX_ASSERTION_LIFETIME {
            problems.push(format!(
                "broker.task_revocation_retention: must be between 1 and {MAX_ASSERTION_LIFETIME} seconds"
            ));
        }

        let mut signing_keys = Vec::new();
        if self.signing.keys.is_empty() {
            problems.push("signing.keys: at least one PKCS#8 PEM key file is required (`tessera keygen`)".into());
        }
        for (i, file) in self.signing.keys.iter().enumerate() {
            let file = path(file);
            match std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|pem| SigningKey::from_pem(&pem)) {
                Ok(key) => signing_keys.push(key),
                Err(e) => problems.push(format!("signing.keys[{i}] ({}): {e}", file.display())),
            }
        }

        let policy_source = match &self.policy.file {
            None => Some(DEFAULT_POLICY.to_string()),
            Some(file) => std::fs::read_to_string(path(file))
                .map_err(|e| problems.push(format!("policy.file ({}): {e}", path(file).display())))
                .ok(),
        };
        let policy = policy_source.and_then(|src| {
            Policy::new(&src).map_err(|errors| problems.extend(errors.into_iter().map(|e| format!("policy: {e}")))).ok()
        });

        let mut issuers = Vec::new();
        let mut names = BTreeSet::new();
        for (i, b) in self.issuers.into_iter().enumerate() {
            let at = format!("issuers[{i}] ({})", b.name);
            if b.name.is_empty() || !names.insert(b.name.clone()) {
                problems.push(format!("{at}: `name` is required and must be unique"));
            }
            if let Some(spec) = build_issuer(b, &broker_issuer, &at, &path, &mut problems) {
                issuers.push(spec);
            }
        }
        let mut ids = BTreeSet::new();
        let mut trust_domains = BTreeSet::new();
        for (spec, _) in &issuers {
            if let Some(td) = &spec.spiffe_trust_domain
                && !trust_domains.insert(td.clone())
            {
                problems.push(format!("issuers ({}): two issuers claim the trust domain `{td}`", spec.name));
            }
            if !ids.insert(spec.id()) {
                problems.push(format!("issuers ({}): two issuers share the identifier `{}`", spec.name, spec.id()));
            }
            if spec.id() == broker_issuer {
                problems.push(format!("issuers ({}): an upstream issuer cannot be the broker itself", spec.name));
            }
        }

        let mut audiences = Vec::new();
        for (i, a) in self.audiences.into_iter().enumerate() {
            let at = format!("audiences[{i}] ({})", a.id);
            if !a.id.contains("://") || a.id.contains('#') || a.id.len() > 512 {
                problems.push(format!("{at}: `id` must be an absolute URI without a fragment"));
            }
            if a.id == broker_issuer {
                problems.push(format!("{at}: the broker itself is not a catalogued audience"));
            }
            // The one scope rule (RFC 6749 §3.3 characters): a catalogued scope is one a request can name.
            let scopes = Scopes::from_tokens(&a.scopes).unwrap_or_default();
            if scopes.is_empty() {
                problems.push(format!("{at}: `scopes` must be a non-empty list of scope tokens (RFC 6749 §3.3)"));
            }
            let max_ttl = a.max_ttl.unwrap_or(300);
            if max_ttl == 0 || max_ttl > 86_400 {
                problems.push(format!("{at}: `max_ttl` must be between 1 and 86400 seconds"));
            }
            if audiences.iter().any(|x: &Audience| x.id == a.id) {
                problems.push(format!("{at}: duplicate audience"));
            }
            audiences.push(Audience {
                id: a.id,
                scopes,
                max_ttl,
                introspect_clients: a.introspect_clients.into_iter().collect(),
            });
        }

        let client_ids: BTreeSet<&str> = self.clients.iter().map(|c| c.id.as_str()).collect();
        for a in &audiences {
            for id in &a.introspect_clients {
                if !client_ids.contains(id.as_str()) {
                    problems
                        .push(format!("audiences ({}): introspect_clients names `{id}`, which is not a client", a.id));
                }
            }
        }
        let mut clients = Vec::new();
        for (i, c) in self.clients.into_iter().enumerate() {
            let at = format!("clients[{i}] ({})", c.id);
            if c.id.is_empty() || c.id.contains(':') || clients.iter().any(|x: &Client| x.id == c.id) {
                problems.push(format!("{at}: `id` is required, unique, and has no `:`"));
            }
            let secret = match &c.secret_sha256 {
                None => None,
                Some(hex) => {
                    let parsed = parse_sha256_hex(hex);
                    match &parsed {
                        None => problems.push(format!("{at}: `secret_sha256` must be 64 hex digits")),
                        Some(sha) if crate::client::is_empty_secret_sha256(sha) => problems.push(format!(
                            "{at}: `secret_sha256` is the SHA-256 of the empty string; a secret is required"
                        )),
                        Some(_) => {}
                    }
                    parsed
                }
            };
            if secret.is_none() && !c.loopback_anonymous {
                problems.push(format!("{at}: needs `secret_sha256` (or `loopback_anonymous = true`)"));
            }
            if c.rpcs.is_empty() {
                problems.push(format!("{at}: `rpcs` must name at least one of exchange, introspect, revoke"));
            }
            clients.push(Client::new(c.id, secret, c.rpcs.into_iter().collect(), c.loopback_anonymous));
        }
        if clients.iter().filter(|c| c.loopback_anonymous).count() > 1 {
            problems.push("clients: at most one client may be `loopback_anonymous`".into());
        }

        let store = build_store(self.store, &mut problems);

        let level = self.log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            problems.push(format!("log.level: `{level}` is not a level or filter directive"));
        }

        let http_addr = self.server.http_addr.as_deref().unwrap_or(DEFAULT_HTTP_ADDR);
        let http_addr = http_addr.parse().unwrap_or_else(|_| {
            problems.push(format!("server.http_addr: `{http_addr}` is not an address (host:port)"));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        if ports_clash(grpc_addr, http_addr) {
            problems.push("server: http_addr and grpc_addr must not share a port (0 picks a free one for each)".into());
        }
        let otlp_ca_file = self.telemetry.otlp_ca_file.map(|f| path(&f));
        if let Some(file) = &otlp_ca_file
            && !std::fs::read(file).is_ok_and(|pem| pem.starts_with(b"-----BEGIN"))
        {
            problems.push(format!("telemetry.otlp_ca_file ({}): not a readable PEM file", file.display()));
        }
        let telemetry = TelemetryConfig {
            otlp_endpoint: self.telemetry.otlp_endpoint,
            otlp_ca_file,
            service_name: self.telemetry.service_name.unwrap_or_else(|| "tessera".into()),
            metrics_interval: Duration::from_millis(self.telemetry.metrics_interval_ms.unwrap_or(10_000)),
            prometheus: self.telemetry.prometheus.unwrap_or(true),
        };
        if telemetry.otlp_endpoint.as_deref().is_some_and(|e| !is_https_like(e)) {
            problems.push("telemetry.otlp_endpoint: must be an http(s) URL".into());
        }
        if telemetry.metrics_interval < Duration::from_millis(100) {
            problems.push("telemetry.metrics_interval_ms: at least 100".into());
        }
        let server = ServerConfig {
            grpc_addr,
            http_addr,
            max_request_bytes: self.server.max_request_bytes.unwrap_or(64 * 1024),
            request_timeout: Duration::from_millis(self.server.request_timeout_ms.unwrap_or(5_000)),
            max_concurrent_requests: self.server.max_concurrent_requests.unwrap_or(1024),
        };
        if server.max_request_bytes < 4096 || server.max_concurrent_requests == 0 || server.request_timeout.is_zero() {
            problems.push(
                "server: max_request_bytes ≥ 4096, max_concurrent_requests ≥ 1 and request_timeout_ms ≥ 1".into(),
            );
        }

        match policy {
            Some(policy) if problems.is_empty() => Ok(Config {
                server,
                broker_issuer,
                leeway,
                limits: Limits { max_delegation_depth, max_chain_length },
                task_token_max_ttl,
                task_revocation_retention,
                signing_keys,
                issuers,
                audiences,
                clients,
                policy,
                store,
                telemetry,
                log: LogConfig { format: self.log.format.unwrap_or_default(), level },
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

fn build_store(b: StoreBuilder, problems: &mut Vec<String>) -> Option<RedisSettings> {
    let redis_scheme = |url: &SecretUrl| url.expose().starts_with("redis://") || url.expose().starts_with("rediss://");
    let backend = match (b.redis_url, b.redis_cluster.is_empty()) {
        (None, true) => {
            if b.mode == Some(StoreMode::Mirror) {
                problems.push("store.mode = \"mirror\" needs Redis (store.redis_url or store.redis_cluster)".into());
            }
            return None;
        }
        (Some(_), false) => {
            problems.push("store: set either `redis_url` or `redis_cluster`, not both".into());
            return None;
        }
        (Some(url), true) => {
            if !redis_scheme(&url) {
                problems.push("store.redis_url: must be a redis:// URL".into());
            }
            Backend::Standalone(url)
        }
        (None, false) => {
            if !b.redis_cluster.iter().all(redis_scheme) {
                problems.push("store.redis_cluster: every node must be a redis:// URL".into());
            }
            Backend::Cluster(b.redis_cluster)
        }
    };
    let timeout = Duration::from_millis(b.timeout_ms.unwrap_or(500));
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        problems.push("store.timeout_ms: must be between 1 and 10000".into());
    }
    let mirror = (b.mode.unwrap_or_default() == StoreMode::Mirror).then(|| MirrorSettings {
        max_staleness: Duration::from_millis(b.mirror_max_staleness_ms.unwrap_or(2_000)),
        heartbeat: Duration::from_millis(b.mirror_heartbeat_ms.unwrap_or(500)),
    });
    if let Some(m) = mirror
        && (m.heartbeat.is_zero() || m.max_staleness < m.heartbeat * 2)
    {
        problems.push("store: mirror_max_staleness_ms must be at least twice mirror_heartbeat_ms (> 0)".into());
    }
    Some(RedisSettings { backend, timeout, mirror })
}

/// Whether two listen addresses would bind the same port: the same non-zero port on the same IP, or on an
/// unspecified address (`0.0.0.0`, `::`) that covers the other. Port 0 lets the system pick a free one each.
fn ports_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn is_https_like(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > 8 && !s.contains(char::is_whitespace)
}

fn build_issuer(
    b: IssuerBuilder,
    broker_issuer: &str,
    at: &str,
    path: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Vec<String>,
) -> Option<(IssuerSpec, KeySet)> {
    let before = problems.len();
    match (&b.issuer, &b.spiffe_trust_domain) {
        (None, None) => problems.push(format!("{at}: needs `issuer` (its `iss`) or `spiffe_trust_domain`")),
        (Some(iss), _) if iss.is_empty() => problems.push(format!("{at}: `issuer` is empty")),
        (_, Some(td)) if td.is_empty() || td.contains('/') => {
            problems.push(format!("{at}: `spiffe_trust_domain` is a bare domain (`example.org`)"))
        }
        _ => {}
    }
    let algorithms: Vec<Algorithm> = match &b.algorithms {
        None => Algorithm::ALL.to_vec(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                let alg = Algorithm::parse(n);
                if alg.is_none() {
                    problems.push(format!("{at}: algorithm `{n}` is not allowed (ES256, RS256, PS256, EdDSA)"));
                }
                alg
            })
            .collect(),
    };
    if algorithms.is_empty() {
        problems.push(format!("{at}: `algorithms` is empty"));
    }
    let sources = [b.jwks_url.is_some(), b.jwks_file.is_some(), b.jwks_inline.is_some()];
    let jwks = match (&b.jwks_url, &b.jwks_file, &b.jwks_inline) {
        _ if sources.iter().filter(|s| **s).count() != 1 => {
            problems.push(format!("{at}: exactly one of `jwks_url`, `jwks_file`, `jwks_inline` is required"));
            None
        }
        (Some(url), _, _) => {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                problems.push(format!("{at}: `jwks_url` must be http(s)"));
            }
            Some(JwksSource::Url(url.clone()))
        }
        (_, Some(file), _) => Some(JwksSource::File(path(file))),
        (_, _, Some(inline)) => match serde_json::from_str::<JwkSet>(inline) {
            Ok(set) => Some(JwksSource::Inline(set)),
            Err(e) => {
                problems.push(format!("{at}: `jwks_inline` is not a JWKS: {e}"));
                None
            }
        },
        _ => None,
    };
    let keys = match &jwks {
        Some(JwksSource::Inline(set)) => Some(set.clone()),
        Some(JwksSource::File(file)) => match std::fs::read_to_string(file) {
            Ok(text) => serde_json::from_str::<JwkSet>(&text)
                .map_err(|e| problems.push(format!("{at}: {}: not a JWKS: {e}", file.display())))
                .ok(),
            Err(e) => {
                problems.push(format!("{at}: {}: {e}", file.display()));
                None
            }
        },
        _ => None,
    };
    let keys = match keys {
        Some(set) => {
            let (keys, key_problems) = KeySet::from_jwks(&set, &algorithms);
            problems.extend(key_problems.into_iter().map(|p| format!("{at}: {p}")));
            if keys.is_empty() {
                problems.push(format!("{at}: the JWKS holds no key usable with the allowed algorithms"));
            }
            keys
        }
        None => KeySet::default(),
    };
    for (tag, pointer) in &b.attributes {
        if !pointer.starts_with('/') {
            problems.push(format!("{at}: attributes.{tag}: `{pointer}` is not a JSON pointer (`/claim/field`)"));
        }
    }
    if b.audience.as_deref().is_some_and(str::is_empty) {
        problems.push(format!("{at}: `audience` is empty (leave it out to use broker.issuer)"));
    }
    if (b.jwks_bearer_token_file.is_some() || b.jwks_ca_file.is_some()) && b.jwks_url.is_none() {
        problems.push(format!("{at}: `jwks_bearer_token_file` and `jwks_ca_file` go with `jwks_url`"));
    }
    let jwks_ca_pem = b.jwks_ca_file.as_ref().and_then(|file| {
        let file = path(file);
        match std::fs::read(&file) {
            Ok(pem) if reqwest::Certificate::from_pem(&pem).is_ok() && pem.starts_with(b"-----BEGIN") => Some(pem),
            Ok(_) => {
                problems.push(format!("{at}: jwks_ca_file ({}): not a PEM certificate", file.display()));
                None
            }
            Err(e) => {
                problems.push(format!("{at}: jwks_ca_file ({}): {e}", file.display()));
                None
            }
        }
    });
    let max_token_bytes = b.max_token_bytes.unwrap_or(8 * 1024);
    if !(512..=64 * 1024).contains(&max_token_bytes) {
        problems.push(format!("{at}: `max_token_bytes` must be between 512 and 65536"));
    }
    let leeway = b.leeway.unwrap_or(DEFAULT_ISSUER_LEEWAY);
    if leeway > MAX_LEEWAY {
        problems.push(format!("{at}: `leeway` over {MAX_LEEWAY} seconds is refused (it absorbs clock skew only)"));
    }
    let max_assertion_lifetime = b.max_assertion_lifetime.unwrap_or(DEFAULT_MAX_ASSERTION_LIFETIME);
    if !(60..=MAX_ASSERTION_LIFETIME).contains(&max_assertion_lifetime) {
        problems
            .push(format!("{at}: `max_assertion_lifetime` must be between 60 and {MAX_ASSERTION_LIFETIME} seconds"));
    }
    if problems.len() > before {
        return None;
    }
    let spec = IssuerSpec {
        name: b.name,
        issuer: b.issuer,
        spiffe_trust_domain: b.spiffe_trust_domain,
        jwks: jwks?,
        audience: b.audience.unwrap_or_else(|| broker_issuer.to_string()),
        algorithms,
        leeway,
        max_token_bytes,
        subject_claim: b.subject_claim.unwrap_or_else(|| "sub".into()),
        attributes: b.attributes,
        min_refresh_interval: Duration::from_secs(b.min_refresh_interval.unwrap_or(30)),
        refresh_interval: Duration::from_secs(b.refresh_interval.unwrap_or(300).max(10)),
        single_use: b.single_use,
        max_assertion_lifetime,
        jwks_bearer_token_file: b.jwks_bearer_token_file.map(|f| path(&f)),
        jwks_ca_pem,
    };
    Some((spec, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let toml = r#"
            [broker]
            issuer = "not a url"
            max_delegation_depth = 0
            [[issuers]]
            name = "k8s"
            algorithms = ["none", "HS256"]
            [[audiences]]
            id = "crm"
            scopes = []
            [[clients]]
            id = "x"
            rpcs = []
        "#;
        let builder: ConfigBuilder = Figment::new().merge(Toml::string(toml)).extract().unwrap();
        let errors = builder.build(Path::new(".")).unwrap_err().0;
        let all = errors.join("\n");
        for expected in [
            "broker.issuer",
            "max_delegation_depth",
            "signing.keys",
            "needs `issuer`",
            "algorithm `none`",
            "algorithm `HS256`",
            "exactly one of `jwks_url`",
            "absolute URI",
            "`scopes`",
            "secret_sha256",
            "`rpcs`",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn listen_addresses_clash_only_on_one_real_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(ports_clash(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(ports_clash(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(ports_clash(a("127.0.0.1:8080"), a("[::]:8080")));
        assert!(!ports_clash(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!ports_clash(a("127.0.0.1:0"), a("127.0.0.1:0")), "port 0: each gets a free port");
        assert!(!ports_clash(a("127.0.0.1:8080"), a("127.0.0.1:50051")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let result: Result<ConfigBuilder, _> =
            Figment::new().merge(Toml::string("[broker]\nissuer_typo = 1")).extract();
        assert!(result.is_err());
    }
}
