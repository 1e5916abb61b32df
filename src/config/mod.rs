//! Configuration: one TOML file plus `TESSERA__SECTION__KEY` environment overrides, read into a serde
//! builder that refuses unknown keys, then validated into a typed [`Config`] with every problem reported at
//! once. Validation also loads what the config points at (signing keys, JWKS files, the policy), so
//! `tessera config check` proves a config will start.
//!
//! One module a section, each with its builder, its validated form and its defaults, named and documented
//! (every key in docs/config.md): [`server`], [`broker`], [`keys`] (`[signing]`, `[policy]`), [`issuers`],
//! [`audiences`], [`clients`], [`routes`], [`store`], [`tls`], [`rate_limits`], [`telemetry`], [`log`],
//! [`watch`], [`status_list`], [`ssf`].

pub mod approvals;
pub mod audiences;
pub mod broker;
pub mod clients;
pub mod databases;
pub mod issuers;
pub mod keys;
pub mod log;
pub mod proxy;
pub mod rate_limits;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod ssf;
pub mod status_list;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use approvals::{ApprovalsBuilder, ApprovalsConfig};
pub use audiences::AudienceBuilder;
pub use broker::{BrokerBuilder, DEFAULT_BROKER_LEEWAY, DEFAULT_TASK_REVOCATION_RETENTION, MAX_LEEWAY};
pub use clients::ClientBuilder;
pub use databases::DatabaseBuilder;
pub use issuers::{DEFAULT_ISSUER_LEEWAY, DEFAULT_MAX_ASSERTION_LIFETIME, IssuerBuilder};
pub use keys::{PolicyBuilder, SigningBuilder};
pub use log::{LogBuilder, LogConfig, LogFormat};
pub use proxy::{DEFAULT_PROXY_ADDR, ProxyBuilder, ProxyConfig};
pub use rate_limits::RateLimitsBuilder;
pub use routes::RouteBuilder;
pub use secrets::{DEFAULT_SECRET_RELOAD_INTERVAL, SecretBuilder};
pub use server::{DEFAULT_CONFIG_RELOAD_INTERVAL, DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, ServerBuilder, ServerConfig};
pub use ssf::SsfBuilder;
pub use status_list::{StatusListBuilder, StatusListConfig};
pub use store::{Backend, MirrorSettings, RedisSettings, StoreBuilder, StoreMode};
pub use telemetry::{TelemetryBuilder, TelemetryConfig};
pub use tls::{DEFAULT_TLS_RELOAD_INTERVAL, TlsBuilder};
pub use watch::{WatchBuilder, WatchConfig};

use crate::catalog::Audience;
use crate::client::{Client, ClientAuth};
pub use crate::exchange::Limits;
use crate::issuer::IssuerSpec;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::token::keys::{KeySet, SigningKey};

/// The longest `max_assertion_lifetime` (and task revocation retention) accepted: 30 days.
pub const MAX_ASSERTION_LIFETIME: u64 = 30 * 86_400;

/// The config file as read, before validation: every section optional, unknown keys refused so a typo fails
/// loudly. [`ConfigBuilder::build`] turns it into a [`Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigBuilder {
    /// `[server]`: the listeners and the per-request bounds.
    pub server: ServerBuilder,
    /// `[broker]`: the broker's identity and the delegation limits.
    pub broker: BrokerBuilder,
    /// `[signing]`: the keys tessera signs its tokens with.
    pub signing: SigningBuilder,
    /// `[policy]`: the Cedar policy file (default: the built-in policy).
    pub policy: PolicyBuilder,
    /// `[[issuers]]`: the trusted upstream issuers.
    pub issuers: Vec<IssuerBuilder>,
    /// `[[audiences]]`: the catalog of audiences tokens are issued for.
    pub audiences: Vec<AudienceBuilder>,
    /// `[[clients]]`: who may call the broker, and which RPCs.
    pub clients: Vec<ClientBuilder>,
    /// `[[routes]]`: what forward-auth requires of each gateway path.
    pub routes: Vec<RouteBuilder>,
    /// `[store]`: where the revocation list lives (default: in memory).
    pub store: StoreBuilder,
    /// `[tls]`: TLS on both listeners and mTLS client certificates (default: plaintext).
    pub tls: TlsBuilder,
    /// `[rate_limits]`: exchanges per client, principal and task (default: off).
    pub rate_limits: RateLimitsBuilder,
    /// `[approvals]`: step-up approvals' lifetimes and webhook (defaults: no webhook).
    pub approvals: ApprovalsBuilder,
    /// `[telemetry]`: OTLP export and the Prometheus endpoint.
    pub telemetry: TelemetryBuilder,
    /// `[log]`: log format and level.
    pub log: LogBuilder,
    /// `[[secrets]]`: master credentials read from files (the proxy's upstream keys).
    pub secrets: Vec<SecretBuilder>,
    /// `[proxy]`: the credential-injecting proxy (default: off).
    pub proxy: ProxyBuilder,
    /// `[[databases]]`: database audiences whose tokens get short-lived PostgreSQL logins.
    pub databases: Vec<DatabaseBuilder>,
    /// `[watch]`: the revocation watch stream's heartbeat and log size.
    pub watch: WatchBuilder,
    /// `[status_list]`: OAuth Token Status Lists (default: on).
    pub status_list: StatusListBuilder,
    /// `[ssf]`: Shared Signals receivers of every revocation.
    pub ssf: SsfBuilder,
}

/// A validated configuration, with the keys, JWKS and policy it names already loaded.
#[derive(Debug)]
pub struct Config {
    /// The listen addresses and the per-request bounds.
    pub server: ServerConfig,
    /// `broker.issuer`: the `iss` of every issued token and the audience of task tokens.
    pub broker_issuer: String,
    /// Seconds of clock skew tolerated on tessera's own `nbf`/`iat` (at most [`MAX_LEEWAY`]).
    pub leeway: u64,
    /// The delegation depth and exchange chain length no policy can lift.
    pub limits: Limits,
    /// The longest life of a task token, in seconds.
    pub task_token_max_ttl: u64,
    /// The clients that may introspect task tokens (`broker.task_introspect_clients`).
    pub task_introspect_clients: std::collections::BTreeSet<String>,
    /// Seconds a revoked task id stays refused.
    pub task_revocation_retention: u64,
    /// How DPoP proofs are judged: `broker.dpop_max_age`, with `broker.leeway`.
    pub dpop: crate::dpop::Settings,
    /// The signing keys, loaded; the first signs, all verify and are published.
    pub signing_keys: Vec<SigningKey>,
    /// Each upstream issuer with the keys loaded now (inline and file JWKS; empty for `jwks_url`, fetched at
    /// start).
    pub issuers: Vec<(IssuerSpec, KeySet)>,
    /// The catalog.
    pub audiences: Vec<Audience>,
    /// The clients allowed to call the broker.
    pub clients: Vec<Client>,
    /// How clients may authenticate: secrets allowed or not, and what client assertions are held to.
    pub client_auth: ClientAuth,
    /// Forward-auth's routes.
    pub routes: Vec<crate::catalog::Route>,
    /// The Cedar policy, parsed and validated against the schema.
    pub policy: Policy,
    /// `None`: the embedded in-memory store.
    pub store: Option<RedisSettings>,
    /// TLS on both listeners (`None`: plaintext).
    pub tls: Option<crate::net::tls::TlsConfig>,
    /// The rate limits on `ExchangeToken` (each off unless configured).
    pub rate_limits: RateLimits,
    /// Step-up approvals: lifetimes, poll interval, webhook.
    pub approvals: ApprovalsConfig,
    /// Tracing and metrics export.
    pub telemetry: TelemetryConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// The secret files and how often they are re-read.
    pub secrets: (Vec<crate::secrets::file::SecretFile>, std::time::Duration),
    /// The credential-injecting proxy, when it has routes or databases.
    pub proxy: Option<proxy::ProxyConfig>,
    /// The databases whose logins the proxy's listener vends.
    pub databases: Vec<databases::DatabaseConfig>,
    /// The revocation watch stream.
    pub watch: WatchConfig,
    /// Token Status Lists (`None`: off).
    pub status_list: Option<StatusListConfig>,
    /// Shared Signals receivers.
    pub ssf_receivers: Vec<crate::ssf::Receiver>,
    /// Shared Signals transmitters tessera receives from.
    pub ssf_transmitters: Vec<crate::ssf::receive::Transmitter>,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// Problems found so far, one line each.
type Problems = Vec<String>;

/// What every section validates against: where relative paths start, and the broker's own issuer.
struct Context<'a> {
    base_dir: &'a Path,
    broker_issuer: &'a str,
}

impl Context<'_> {
    /// `p`, relative to the config's folder unless absolute.
    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}

/// The sections a running broker keeps as they were at start: the listeners and request bounds, its
/// identity and delegation limits, its signing keys, the store, TLS settings (the TLS files themselves
/// reload on their own), rate limits, telemetry, logging, the secret files (their contents reload on their
/// own) and the proxy. A reload that changes one of them is refused
/// whole (the section must be applied by a restart), so what is in force is always one config that passed
/// validation in full, never a mix of two.
pub const FIXED_SECTIONS: [&str; 15] = [
    "server",
    "broker",
    "signing",
    "store",
    "tls",
    "rate_limits",
    "approvals",
    "telemetry",
    "log",
    "secrets",
    "proxy",
    "databases",
    "watch",
    "status_list",
    "ssf",
];

/// The `[broker]` keys a reload does take: they shape the catalog (task tokens' lifetime, who may introspect
/// them) and the clients (how they may authenticate), which are rebuilt on every reload.
pub const RELOADABLE_BROKER_KEYS: [&str; 4] =
    ["task_token_max_ttl", "task_introspect_clients", "client_secrets", "client_assertion_max_lifetime"];

/// The fixed sections of a config as read (after the environment overrides), to tell whether a reload would
/// change one ([`FIXED_SECTIONS`]). Its `Debug` names the sections only: their values may hold secrets
/// (`store.redis_url`).
#[derive(PartialEq)]
pub struct FixedSections(Vec<(&'static str, Option<figment::value::Value>)>);

impl std::fmt::Debug for FixedSections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

impl FixedSections {
    fn of(figment: &Figment) -> FixedSections {
        FixedSections(
            FIXED_SECTIONS
                .iter()
                .map(|&name| {
                    let mut value = figment.find_value(name).ok();
                    if let (Some(figment::value::Value::Dict(_, keys)), "broker") = (&mut value, name) {
                        keys.retain(|key, _| !RELOADABLE_BROKER_KEYS.contains(&key.as_str()));
                    }
                    (name, value)
                })
                .collect(),
        )
    }

    /// The sections whose values differ between `self` and `other`, in [`FIXED_SECTIONS`] order.
    pub fn changed(&self, other: &FixedSections) -> Vec<&'static str> {
        self.0.iter().zip(&other.0).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0).collect()
    }
}

impl ConfigBuilder {
    /// The file and the environment overrides, merged.
    fn figment(path: &Path) -> Figment {
        Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed("TESSERA__").split("__"))
    }

    /// Reads `path` and the `TESSERA__*` environment overrides (`TESSERA__BROKER__ISSUER=…`).
    pub fn load(path: &Path) -> Result<ConfigBuilder, ConfigErrors> {
        ConfigBuilder::load_with_fixed(path).map(|(builder, _)| builder)
    }

    /// As [`ConfigBuilder::load`], with the fixed sections as read, so a reload can tell what it would change.
    pub fn load_with_fixed(path: &Path) -> Result<(ConfigBuilder, FixedSections), ConfigErrors> {
        let figment = ConfigBuilder::figment(path);
        let builder = figment.extract().map_err(|e| ConfigErrors(e.into_iter().map(|e| e.to_string()).collect()))?;
        Ok((builder, FixedSections::of(&figment)))
    }

    /// Every file this config names whose content validation reads — the policy, the signing keys, the
    /// issuers' JWKS and CA files, the TLS files, the OTLP CA file, the audiences' detail schema files — relative paths resolved against
    /// `base_dir`. A reload watch reads them with the config file to notice a change by content, so a reload
    /// refused because of one of them is tried again once it changes. (Bearer token files are left out: they
    /// are read at every JWKS fetch, not at load.)
    pub fn named_files(&self, base_dir: &Path) -> Vec<PathBuf> {
        let cx = Context { base_dir, broker_issuer: "" };
        let issuers = self.issuers.iter().flat_map(|i| [i.jwks_file.as_deref(), i.jwks_ca_file.as_deref()]);
        let tls = [self.tls.cert_file.as_deref(), self.tls.key_file.as_deref(), self.tls.client_ca_file.as_deref()];
        self.policy
            .file
            .as_deref()
            .into_iter()
            .chain(self.signing.keys.iter().map(PathBuf::as_path))
            .chain(issuers.flatten())
            .chain(tls.into_iter().flatten())
            .chain(self.telemetry.otlp_ca_file.as_deref())
            .chain(self.approvals.webhook_secret_file.as_deref())
            .chain(
                self.audiences
                    .iter()
                    .flat_map(|a| a.authorization_details.iter().filter_map(|d| d.schema_file.as_deref())),
            )
            .map(|p| cx.path(p))
            .collect()
    }

    /// Validates into a [`Config`]; relative paths are resolved against `base_dir` (the config's folder).
    /// Every section is validated, so every problem is reported at once.
    pub fn build(mut self, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut problems = Problems::new();
        let server = self.server.build(&mut problems);
        let broker = self.broker.build(&mut problems);
        let cx = Context { base_dir, broker_issuer: &broker.issuer };
        let signing_keys = self.signing.build(&cx, &mut problems);
        let policy = self.policy.build(&cx, &mut problems);
        let issuers = issuers::build(self.issuers, &cx, &mut problems);
        let audiences = audiences::build(self.audiences, &cx, &mut problems);
        let client_auth = ClientAuth::new(&broker.issuer, broker.client_secrets, broker.client_assertion_max_lifetime);
        let clients = clients::build(self.clients, &audiences, &issuers, client_auth.secrets, &mut problems);
        for id in &broker.task_introspect_clients {
            if !clients.iter().any(|c| &c.id == id) {
                problems.push(format!("broker.task_introspect_clients names `{id}`, which is not a client"));
            }
        }
        let routes = routes::build(self.routes, &audiences, &mut problems);
        let store = self.store.build(&mut problems);
        let tls = self.tls.build(&cx, &mut problems);
        if tls.is_none() && clients.iter().any(|c| !c.tls_identities.is_empty()) {
            problems.push("clients: tls_identities need [tls] with client_ca_file".into());
        }
        let rate_limits = self.rate_limits.build(&mut problems);
        let approvals = self.approvals.build(&cx, &mut problems);
        let log = self.log.build(&mut problems);
        let telemetry = self.telemetry.build(&cx, &mut problems);
        let secrets = secrets::build(self.secrets, &cx, &mut problems);
        let databases = databases::build(self.databases, &audiences, &mut problems);
        let proxy = self.proxy.build(&audiences, !databases.is_empty(), &cx, &mut problems);
        if let Some(p) = &proxy {
            check_proxy(p, &server, &secrets.0, &clients, &audiences, &mut problems);
            for d in &databases {
                if !audiences.iter().any(|a| a.id == d.spec.audience && a.introspect_clients.contains(&p.client)) {
                    problems.push(format!(
                        "databases ({}): proxy.client `{}` may not introspect it (add it to introspect_clients)",
                        d.spec.audience, p.client
                    ));
                }
            }
        }
        for d in &databases {
            if !secrets.0.iter().any(|s| s.name == d.connection.password_secret) {
                problems.push(format!(
                    "databases ({}): password_secret `{}` is not in [[secrets]]",
                    d.spec.audience, d.connection.password_secret
                ));
            }
        }
        let watch = self.watch.build(&mut problems);
        let status_list = self.status_list.build(&mut problems);
        let issuer_names: Vec<&str> = issuers.iter().map(|(spec, _)| spec.name.as_str()).collect();
        let ssf_transmitters = SsfBuilder::build_transmitters(
            std::mem::take(&mut self.ssf.transmitters),
            &issuer_names,
            &broker.issuer,
            &mut problems,
        );
        let ssf_receivers = self.ssf.build(&cx, &mut problems);
        match policy {
            Some(policy) if problems.is_empty() => Ok(Config {
                server,
                broker_issuer: broker.issuer,
                leeway: broker.leeway,
                limits: broker.limits,
                task_token_max_ttl: broker.task_token_max_ttl,
                task_introspect_clients: broker.task_introspect_clients,
                task_revocation_retention: broker.task_revocation_retention,
                dpop: crate::dpop::Settings { max_age: broker.dpop_max_age, leeway: broker.leeway },
                signing_keys,
                issuers,
                audiences,
                clients,
                client_auth,
                routes,
                policy,
                store,
                tls,
                rate_limits,
                approvals,
                telemetry,
                log,
                secrets,
                proxy,
                databases,
                watch,
                status_list,
                ssf_receivers,
                ssf_transmitters,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// What the proxy names elsewhere: its client, its secrets, and a port of its own.
fn check_proxy(
    p: &proxy::ProxyConfig,
    server: &ServerConfig,
    secrets: &[crate::secrets::file::SecretFile],
    clients: &[Client],
    audiences: &[Audience],
    problems: &mut Problems,
) {
    match clients.iter().find(|c| c.id == p.client) {
        None if !p.client.is_empty() => problems.push(format!("proxy.client `{}` is not a client", p.client)),
        None => {}
        Some(client) if !client.may_call(crate::client::Rpc::Introspect) => {
            problems.push(format!("proxy.client `{}` needs the `introspect` RPC", p.client));
        }
        Some(_) => {
            for r in &p.routes {
                let allowed = audiences
                    .iter()
                    .find(|a| a.id == r.route.audience)
                    .is_some_and(|a| a.introspect_clients.contains(&p.client));
                if !allowed {
                    problems.push(format!(
                        "proxy.routes ({}): proxy.client `{}` may not introspect `{}` (add it to the audience's \
                         introspect_clients)",
                        r.route.path_prefix, p.client, r.route.audience
                    ));
                }
            }
        }
    }
    for r in &p.routes {
        if !secrets.iter().any(|s| s.name == r.credential.secret) {
            problems.push(format!(
                "proxy.routes ({}): credential.secret `{}` is not in [[secrets]]",
                r.route.path_prefix, r.credential.secret
            ));
        }
    }
    let port = p.listen.port();
    if port != 0 && (port == server.grpc_addr.port() || port == server.http_addr.port()) {
        problems.push("proxy.listen must not share a port with server.grpc_addr or server.http_addr".into());
    }
}

fn is_https_like(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > 8 && !s.contains(char::is_whitespace)
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

    fn fixed(toml: &str) -> FixedSections {
        FixedSections::of(&Figment::new().merge(Toml::string(toml)))
    }

    #[test]
    fn fixed_sections_tell_a_change_that_needs_a_restart_from_one_a_reload_takes() {
        let base = "[broker]\nissuer = \"https://t.example\"\n[[audiences]]\nid = \"https://a.example\"\n";
        let start = fixed(base);
        let reloadable =
            format!("{base}[[clients]]\nid = \"c\"\n[policy]\nfile = \"other.cedar\"\n[[issuers]]\nname = \"x\"\n")
                .replace("[broker]\n", "[broker]\ntask_token_max_ttl = 60\ntask_introspect_clients = [\"c\"]\n");
        assert_eq!(start.changed(&fixed(&reloadable)), Vec::<&str>::new());
        let restart =
            format!("{base}[server]\nmax_request_bytes = 9000\n[store]\nredis_url = \"redis://:hunter2@r:6379\"\n")
                .replace("[broker]\n", "[broker]\nleeway = 9\n");
        let changed = fixed(&restart);
        assert_eq!(start.changed(&changed), vec!["server", "broker", "store"]);
        assert!(!format!("{changed:?}").contains("hunter2"), "Debug names sections, never values");
    }

    #[test]
    fn named_files_are_every_file_validation_reads_resolved_against_the_config_folder() {
        let toml = r#"
            [signing]
            keys = ["keys/a.pem", "/abs/b.pem"]
            [policy]
            file = "policy.cedar"
            [tls]
            cert_file = "tls/tls.crt"
            key_file = "tls/tls.key"
            [telemetry]
            otlp_ca_file = "otlp-ca.pem"
            [[issuers]]
            name = "k"
            jwks_file = "k.jwks.json"
            jwks_ca_file = "k-ca.pem"
        "#;
        let builder: ConfigBuilder = Figment::new().merge(Toml::string(toml)).extract().unwrap();
        let files: Vec<String> =
            builder.named_files(Path::new("/etc/t")).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/etc/t/policy.cedar",
                "/etc/t/keys/a.pem",
                "/abs/b.pem",
                "/etc/t/k.jwks.json",
                "/etc/t/k-ca.pem",
                "/etc/t/tls/tls.crt",
                "/etc/t/tls/tls.key",
                "/etc/t/otlp-ca.pem"
            ]
        );
    }

    fn problems(toml: &str) -> String {
        let builder: ConfigBuilder = Figment::new().merge(Toml::string(toml)).extract().unwrap();
        builder.build(Path::new(".")).unwrap_err().0.join("\n")
    }

    #[test]
    fn approvals_settings_are_bounded_and_the_webhook_needs_its_key() {
        let all = problems(
            r#"
            [approvals]
            pending_ttl = 0
            denial_ttl = 100000
            webhook_url = "http://approvals.example.com/hook"
            webhook_secret_file = "/nonexistent/webhook.key"
            "#,
        );
        for expected in [
            "approvals.pending_ttl must be between 1 and 86400 seconds",
            "approvals.denial_ttl must be between 1 and 86400 seconds",
            "approvals.webhook_url must be an https:// URL (http:// only on loopback)",
            "approvals.webhook_secret_file /nonexistent/webhook.key",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.key"), "too short").unwrap();
        let toml = "[approvals]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_secret_file = \"short.key\"\n";
        let builder: ConfigBuilder = Figment::new().merge(Toml::string(toml)).extract().unwrap();
        let all = builder.build(dir.path()).unwrap_err().0.join("\n");
        assert!(all.contains("at least 32 bytes") && !all.contains("webhook_url"), "{all}");
        assert!(problems("[approvals]\nwebhook_url = \"https://a.example/h\"\n").contains("go together"));
    }

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"EdDSA","kid":"k"}]}"#;

    #[test]
    fn client_assertions_need_an_issuer_that_accepts_them() {
        let all = problems(&format!(
            r#"
            [broker]
            issuer = "https://tessera.test"
            client_assertion_max_lifetime = 5
            [[issuers]]
            name = "orch-key"
            issuer = "orch"
            jwks_inline = '{JWKS}'
            [[issuers]]
            name = "wrong-iss"
            issuer = "someone-else"
            jwks_inline = '{JWKS}'
            used_for = "client_assertions"
            [[issuers]]
            name = "spiffe"
            spiffe_trust_domain = "td.example"
            jwks_inline = '{JWKS}'
            [[issuers]]
            name = "with-audience"
            issuer = "x"
            jwks_inline = '{JWKS}'
            used_for = "client_assertions"
            audience = "https://tessera.test"
            [[clients]]
            id = "orch"
            assertion_issuer = "orch-key"
            rpcs = ["exchange"]
            [[clients]]
            id = "other"
            assertion_issuer = "wrong-iss"
            rpcs = ["exchange"]
            [[clients]]
            id = "ghost"
            assertion_issuer = "nobody"
            rpcs = ["exchange"]
            [[clients]]
            id = "svid"
            spiffe_ids = ["spiffe://td.example/a", "spiffe://elsewhere.example/b", "not-a-spiffe-id", "spiffe://td.example"]
            rpcs = ["exchange"]
            [[clients]]
            id = "svid2"
            spiffe_ids = ["spiffe://td.example/a"]
            rpcs = ["exchange"]
            [[clients]]
            id = "nothing"
            rpcs = ["exchange"]
            "#
        ));
        for expected in [
            "broker.client_assertion_max_lifetime",
            "clients[0] (orch): `assertion_issuer` `orch-key` does not accept client assertions",
            "clients[1] (other): `assertion_issuer` `wrong-iss` must have `issuer` = the client id",
            "clients[2] (ghost): `assertion_issuer` names `nobody`, which is not an issuer",
            "clients[3] (svid): `spiffe_ids`: the issuer of `spiffe://td.example/a` (`spiffe`) does not accept",
            "clients[3] (svid): `spiffe_ids`: no issuer holds the trust domain of `spiffe://elsewhere.example/b`",
            "clients[3] (svid): `spiffe_ids`: `not-a-spiffe-id` is not a SPIFFE ID",
            "clients[3] (svid): `spiffe_ids`: `spiffe://td.example` is not a SPIFFE ID",
            "clients[4] (svid2): `spiffe_ids`: `spiffe://td.example/a` names more than one client",
            "clients[5] (nothing): needs a way to authenticate",
            "issuers[3] (with-audience): `audience` has no effect",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn forbidden_secrets_refuse_every_client_secret_at_load() {
        let all = problems(
            r#"
            [broker]
            issuer = "https://tessera.test"
            client_secrets = "forbidden"
            [[clients]]
            id = "a"
            secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
            rpcs = ["exchange"]
            [[clients]]
            id = "b"
            secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
            rpcs = ["introspect"]
            "#,
        );
        for at in ["clients[0] (a)", "clients[1] (b)"] {
            assert!(
                all.contains(&format!("{at}: has `secret_sha256`, but broker.client_secrets = \"forbidden\"")),
                "{all}"
            );
        }
        let typo: Result<ConfigBuilder, _> =
            Figment::new().merge(Toml::string("[broker]\nclient_secrets = \"maybe\"")).extract();
        assert!(typo.is_err(), "only allowed or forbidden");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let result: Result<ConfigBuilder, _> =
            Figment::new().merge(Toml::string("[broker]\nissuer_typo = 1")).extract();
        assert!(result.is_err());
    }

    /// A TOML value of a random type: what a typo or a hostile config puts where a key's value goes.
    fn toml_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            ".{0,24}".prop_map(|s| format!("{s:?}")),
            Just("\"https://tessera.example\"".to_string()),
            Just("[\"exchange\", \"introspect\"]".to_string()),
            Just("[]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("18446744073709551615".to_string()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_cases(128))]

        /// Known sections and keys with values of any type: reading and validating answers with a config or
        /// a list of problems, each a non-empty line; it never panics.
        #[test]
        fn config_parsing_never_panics(entries in proptest::collection::vec((0..9usize, 0..8usize, toml_value()), 0..24)) {
            const SECTIONS: [&str; 9] = ["server", "broker", "tls", "store", "log", "telemetry", "[clients]", "[audiences]", "[issuers]"];
            const KEYS: [&str; 8] = ["issuer", "id", "max_ttl", "rpcs", "cert_file", "redis_url", "grpc_addr", "max_delegation_depth"];
            // Each section once and each key once in it, so the TOML itself is well formed and validation runs.
            let mut sections = std::collections::BTreeMap::<usize, std::collections::BTreeMap<usize, &String>>::new();
            for (section, key, value) in &entries {
                sections.entry(*section).or_default().insert(*key, value);
            }
            let mut toml = String::new();
            for (section, keys) in sections {
                toml.push_str(&format!("[{}]\n", SECTIONS[section]));
                for (key, value) in keys {
                    toml.push_str(&format!("{} = {}\n", KEYS[key], value));
                }
            }
            let read: Result<ConfigBuilder, _> = Figment::new().merge(Toml::string(&toml)).extract();
            match read {
                Ok(builder) => {
                    if let Err(errors) = builder.build(Path::new("/nonexistent")) {
                        proptest::prop_assert!(!errors.0.is_empty() && errors.0.iter().all(|e| !e.is_empty()));
                    }
                }
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
