//! `[proxy]` and `[[proxy.routes]]`: the credential-injecting proxy — where it listens, whose introspection
//! rights it checks tokens with, its limits, and per route the upstream, what the token must grant (as a
//! forward-auth route), the methods and paths allowed, and how the upstream's credential is injected.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::routes::{RequirementBuilder, RouteBuilder};
use super::{Context, Problems};
use crate::catalog::{Audience, Route};

/// Where the proxy listens by default.
pub const DEFAULT_PROXY_ADDR: &str = "127.0.0.1:8081";
/// The largest request body forwarded, by default (1 MiB).
pub const DEFAULT_PROXY_MAX_REQUEST_BYTES: usize = 1 << 20;
/// The largest response body streamed back, by default (16 MiB); a longer one is cut off.
pub const DEFAULT_PROXY_MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// How long one proxied call may take, from connecting to the upstream to the last byte of its answer (ms).
pub const DEFAULT_PROXY_TIMEOUT_MS: u64 = 30_000;
/// Paths on the proxy's listener that are tessera's own (the database login vend call), never a route's.
pub const RESERVED_PREFIX: &str = "/_tessera";
/// The methods a route allows when it names none.
pub const DEFAULT_PROXY_METHODS: [&str; 2] = ["GET", "HEAD"];

/// `[proxy]` as read; see docs/config.md and docs/proxy.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyBuilder {
    /// Listen address (default [`DEFAULT_PROXY_ADDR`]; `--proxy-addr` / `TESSERA_PROXY_ADDR` override it).
    pub listen: Option<String>,
    /// The client whose introspection rights the proxy checks tokens with (it must have the `introspect` RPC
    /// and be allowed to introspect each route's audience).
    pub client: Option<String>,
    /// The proxy's URL as agents reach it (scheme, host, port), the `htu` a DPoP proof names (default:
    /// `http://` and the request's `Host`).
    pub public_url: Option<String>,
    /// The largest request body forwarded (default [`DEFAULT_PROXY_MAX_REQUEST_BYTES`]).
    pub max_request_bytes: Option<usize>,
    /// The largest response body streamed back (default [`DEFAULT_PROXY_MAX_RESPONSE_BYTES`]).
    pub max_response_bytes: Option<u64>,
    /// Milliseconds one call may take, end to end (default [`DEFAULT_PROXY_TIMEOUT_MS`]).
    pub timeout_ms: Option<u64>,
    /// The routes; the proxy runs when there is at least one.
    pub routes: Vec<ProxyRouteBuilder>,
}

/// One `[[proxy.routes]]` entry as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyRouteBuilder {
    /// The path prefix on the proxy (segments; `{name}` parameters as in `[[routes]]`); what follows it is
    /// the path on the upstream.
    pub path_prefix: String,
    /// The upstream's base URL: `https://host[:port][/base]`.
    pub upstream: String,
    /// The catalogued audience the token must be for.
    pub audience: String,
    /// Scopes the token must all hold.
    pub scopes: Vec<String>,
    /// What the token's RFC 9396 `authorization_details` must hold, as for `[[routes]]`.
    pub authorization_details: Option<RequirementBuilder>,
    /// Methods allowed (default [`DEFAULT_PROXY_METHODS`]).
    pub methods: Option<Vec<String>>,
    /// Upstream path prefixes allowed, segment-wise (default: everything, `["/"]`).
    pub allow_paths: Option<Vec<String>>,
    /// PEM CA bundle the upstream's certificate is verified against, besides the system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// How the upstream's credential is injected.
    pub credential: CredentialBuilder,
}

/// A route's `credential` as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialBuilder {
    /// The `[[secrets]]` entry holding it.
    pub secret: String,
    /// `bearer` (default), `basic`, `header` or `query`.
    pub kind: Option<String>,
    /// The header (`header`) or query parameter (`query`) it goes in.
    pub name: Option<String>,
    /// `basic`: the user name, the secret being the password; without it the secret is the user name and the
    /// password is empty (how Stripe takes its keys).
    pub username: Option<String>,
}

/// The validated proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The client it introspects as.
    pub client: String,
    /// The URL DPoP proofs name (without a trailing `/`), if configured.
    pub public_url: Option<String>,
    /// Request body limit, bytes.
    pub max_request_bytes: usize,
    /// Response body limit, bytes.
    pub max_response_bytes: u64,
    /// End-to-end limit of one call.
    pub timeout: Duration,
    /// The routes, longest `path_prefix` first.
    pub routes: Vec<ProxyRoute>,
}

/// One validated route.
#[derive(Clone, Debug)]
pub struct ProxyRoute {
    /// What the token must grant, exactly as a forward-auth route.
    pub route: Route,
    /// The upstream's base URL, without a trailing `/`.
    pub upstream: String,
    /// The methods allowed, upper case.
    pub methods: BTreeSet<String>,
    /// Upstream path prefixes allowed, segment-wise.
    pub allow_paths: Vec<String>,
    /// A CA bundle (PEM) for the upstream, loaded.
    pub upstream_ca_pem: Option<Vec<u8>>,
    /// The credential and how it goes in.
    pub credential: Injection,
}

/// A route's credential: which secret, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The `[[secrets]]` name.
    pub secret: String,
    /// Where it goes.
    pub inject: Inject,
}

/// Where an upstream credential goes in the forwarded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inject {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name (the secret is the password); `None`: the secret is the user name.
        username: Option<String>,
    },
    /// `<name>: <secret>` (lower case name).
    Header(String),
    /// `?<name>=<secret>` appended to the query.
    Query(String),
}

impl Inject {
    /// The request header this injection sets, which an agent's own value of is dropped.
    pub fn header(&self) -> Option<&str> {
        match self {
            Inject::Bearer | Inject::Basic { .. } => Some("authorization"),
            Inject::Header(name) => Some(name),
            Inject::Query(_) => None,
        }
    }
}

/// Headers an agent cannot have injected for it or forwarded: the hop-by-hop ones and the host.
const RESERVED_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "dpop",
];

/// Whether `path` is one a server may read otherwise than written: a dot segment, or an encoded dot, slash
/// or backslash.
pub fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.split('/').any(|s| s == "." || s == "..") || ["%2e", "%2f", "%5c", "\\"].iter().any(|e| lower.contains(e))
}

impl ProxyBuilder {
    /// `None`: no routes, no proxy.
    /// `None`: no routes and no databases (whose logins the proxy's listener vends), no proxy.
    pub(super) fn build(
        self,
        audiences: &[Audience],
        databases: bool,
        cx: &Context<'_>,
        problems: &mut Problems,
    ) -> Option<ProxyConfig> {
        if self.routes.is_empty() && !databases {
            if self.listen.is_some() || self.client.is_some() {
                problems.push("proxy: needs at least one [[proxy.routes]] or [[databases]] entry".into());
            }
            return None;
        }
        let text = self.listen.as_deref().unwrap_or(DEFAULT_PROXY_ADDR);
        let listen = text.parse().unwrap_or_else(|_| {
            problems.push(format!("proxy.listen: `{text}` is not an address (host:port)"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let client = self.client.unwrap_or_default();
        if client.is_empty() {
            problems.push("proxy: needs `client`, the client whose introspection rights it uses".into());
        }
        let public_url = self.public_url.map(|u| u.trim_end_matches('/').to_string());
        if let Some(url) = &public_url
            && (!super::is_https_like(url) || url.contains(['?', '#']))
        {
            problems.push(format!("proxy.public_url: `{url}` is not an http(s) URL without query"));
        }
        let max_request_bytes = self.max_request_bytes.unwrap_or(DEFAULT_PROXY_MAX_REQUEST_BYTES);
        let max_response_bytes = self.max_response_bytes.unwrap_or(DEFAULT_PROXY_MAX_RESPONSE_BYTES);
        let timeout = self.timeout_ms.unwrap_or(DEFAULT_PROXY_TIMEOUT_MS);
        if max_request_bytes == 0 || max_response_bytes == 0 || timeout == 0 {
            problems.push("proxy: max_request_bytes, max_response_bytes and timeout_ms must be at least 1".into());
        }
        let mut routes: Vec<ProxyRoute> = Vec::new();
        for (i, r) in self.routes.into_iter().enumerate() {
            let at = format!("proxy.routes[{i}] ({})", r.path_prefix);
            if r.path_prefix.starts_with(RESERVED_PREFIX) {
                problems.push(format!("{at}: `path_prefix` under `{RESERVED_PREFIX}` is tessera's own"));
            }
            if routes.iter().any(|x| x.route.path_prefix == r.path_prefix) {
                problems.push(format!("{at}: duplicate `path_prefix`"));
            }
            if let Some(route) = build_route(r, &at, audiences, cx, problems) {
                routes.push(route);
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.route.path_prefix.len()));
        Some(ProxyConfig {
            listen,
            client,
            public_url,
            max_request_bytes,
            max_response_bytes,
            timeout: Duration::from_millis(timeout.max(1)),
            routes,
        })
    }
}

fn build_route(
    r: ProxyRouteBuilder,
    at: &str,
    audiences: &[Audience],
    cx: &Context<'_>,
    problems: &mut Problems,
) -> Option<ProxyRoute> {
    let upstream = r.upstream.trim_end_matches('/').to_string();
    match reqwest::Url::parse(&r.upstream) {
        Ok(url)
            if url.scheme() == "https"
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none()
                && url.query().is_none()
                && url.fragment().is_none() => {}
        _ => problems.push(format!("{at}: `upstream` must be an https:// URL without user, query or fragment")),
    }
    let methods: BTreeSet<String> = match r.methods {
        None => DEFAULT_PROXY_METHODS.iter().map(|m| m.to_string()).collect(),
        Some(methods) => methods.into_iter().collect(),
    };
    if methods.is_empty() || methods.iter().any(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase())) {
        problems.push(format!("{at}: `methods` must be upper-case HTTP methods (GET, POST, …)"));
    }
    let allow_paths = r.allow_paths.unwrap_or_else(|| vec!["/".into()]);
    if allow_paths.is_empty()
        || allow_paths.iter().any(|p| !p.starts_with('/') || ambiguous_path(p) || p.contains(char::is_whitespace))
    {
        problems.push(format!("{at}: `allow_paths` must be paths from `/`, without dot segments or spaces"));
    }
    let upstream_ca_pem = r.upstream_ca_file.map(|p| cx.path(&p)).and_then(|p| match std::fs::read(&p) {
        Ok(pem) if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) => Some(pem),
        Ok(_) => {
            problems.push(format!("{at}: `upstream_ca_file` {} holds no PEM certificate", p.display()));
            None
        }
        Err(e) => {
            problems.push(format!("{at}: `upstream_ca_file` {}: {e}", p.display()));
            None
        }
    });
    let c = r.credential;
    if c.secret.is_empty() {
        problems.push(format!("{at}: `credential.secret` must name a [[secrets]] entry"));
    }
    let name = c.name.map(|n| n.to_ascii_lowercase());
    let inject = match (c.kind.as_deref().unwrap_or("bearer"), name) {
        ("bearer", None) if c.username.is_none() => Inject::Bearer,
        ("basic", None) => Inject::Basic { username: c.username },
        ("header", Some(name))
            if c.username.is_none()
                && reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && !RESERVED_HEADERS.contains(&name.as_str()) =>
        {
            Inject::Header(name)
        }
        ("query", Some(name))
            if c.username.is_none()
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Inject::Query(name)
        }
        _ => {
            problems.push(format!(
                "{at}: `credential` is kind `bearer`, `basic` (optional `username`), `header` or `query` (each with \
                 `name`: a header that is not hop-by-hop, or a query parameter)"
            ));
            Inject::Bearer
        }
    };
    let route = super::routes::build_route(
        RouteBuilder {
            path_prefix: r.path_prefix,
            audience: r.audience,
            scopes: r.scopes,
            authorization_details: r.authorization_details,
        },
        at,
        audiences,
        problems,
    )?;
    Some(ProxyRoute {
        route,
        upstream,
        methods,
        allow_paths,
        upstream_ca_pem,
        credential: Injection { secret: c.secret, inject },
    })
}
