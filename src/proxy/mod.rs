//! The credential-injecting proxy, on its own listener: an agent sends its request here with its tessera
//! token instead of the upstream's credential, which it never holds.
//!
//! For each request: the longest matching `[[proxy.routes]]` prefix picks the route (none: 404); a path a
//! server could read otherwise than written (dot segments, encoded dots, slashes, backslashes) is refused
//! (400). The token is then checked
//! exactly as forward-auth checks it ([`crate::access::check`]: active — one store round trip, so a revoked
//! token, task or ancestor stops the very next request — for the route's audience, with its scopes and RFC
//! 9396 details, with a fresh DPoP proof for this request when the token is DPoP-bound), and refused with the
//! same RFC 6750 / RFC 9449 challenges; then a method (405) or an upstream path (403) the route does not
//! allow is refused (so only a caller with a token for the route learns its allow-lists). Only then is the
//! request forwarded: the agent's `Authorization`,
//! `DPoP`, hop-by-hop and `X-Tessera-*` headers are dropped, the route's credential is injected (bearer,
//! basic, a header or a query parameter), and it goes to the upstream over TLS (rustls, the route's CA
//! bundle besides the system roots) with the body limited (413), the whole call within `timeout_ms` (504),
//! and redirects never followed (a 3xx goes back to the agent as it is). The answer is streamed back, cut off
//! past `max_response_bytes`.
//!
//! The credential never reaches the agent: response headers holding it are dropped, a response body that
//! echoes it is cut off before the echo, and no error or log line carries it (upstream errors are reduced to
//! "unreachable" or "timeout": a client library's error can print the URL, which may hold a query-parameter
//! credential). Every call is an audit event (`event = "proxy"`) keyed by the token's task and `jti`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::net::TcpListener;

use crate::access::{self, Call, Need, Outcome};
use crate::broker::Broker;
use crate::config::proxy::{Inject, ProxyConfig, ProxyRoute, ambiguous_path};
use crate::http::gateway::{Scheme, challenge, gateway_error, refusal};
use crate::introspect::Presentation;
use crate::secret::{Credential, Token};
use crate::secrets::SecretSource;
use crate::vend::{Logins, VendError};

/// Where an agent gets a short-lived database login for its token ([`crate::vend`]).
pub const VEND_PATH: &str = "/_tessera/database-credentials";

/// Request headers never forwarded: hop-by-hop (RFC 9110 §7.6.1), the host, the length (re-computed), the
/// agent's token and proof, and proxy credentials.
const DROPPED: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "dpop",
];

/// The proxy: its validated config, an HTTPS client per route (each with its CA bundle) and the secrets.
pub struct Proxy {
    config: ProxyConfig,
    clients: Vec<reqwest::Client>,
    secrets: Arc<dyn SecretSource>,
    logins: Vec<Arc<dyn Logins>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("routes", &self.config.routes.len()).finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy for `config`, taking credentials from `secrets`.
    pub fn new(config: ProxyConfig, secrets: Arc<dyn SecretSource>) -> Result<Proxy, String> {
        crate::install_crypto_provider();
        let clients = config
            .routes
            .iter()
            .map(|route| {
                let mut builder = reqwest::Client::builder()
                    .https_only(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                if let Some(pem) = &route.upstream_ca_pem {
                    for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|_| "a CA bundle is unreadable")? {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                builder.build().map_err(|_| format!("proxy route {}: no HTTPS client", route.route.path_prefix))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Proxy { config, clients, secrets, logins: Vec::new() })
    }

    /// The databases whose logins `POST /_tessera/database-credentials` vends.
    pub fn with_logins(mut self, logins: Vec<Arc<dyn Logins>>) -> Proxy {
        self.logins = logins;
        self
    }

    /// The route `path` falls under (longest prefix first), with its parameters and the upstream path.
    fn route(&self, path: &str) -> Option<(usize, std::collections::BTreeMap<String, String>, String)> {
        self.config.routes.iter().enumerate().find_map(|(i, r)| {
            let params = r.route.matches(path)?;
            upstream_path(&r.route.path_prefix, path).map(|rest| (i, params, rest))
        })
    }
}

/// What follows `prefix` in `path`, segment-wise (`/stripe` covers `/stripe` and `/stripe/…`, never
/// `/stripex`), from `/`.
fn upstream_path(prefix: &str, path: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    let wanted: Vec<&str> = prefix.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    if given.len() < wanted.len() {
        return None;
    }
    for (want, got) in wanted.iter().zip(&given) {
        if !want.starts_with('{') && want != got {
            return None;
        }
    }
    Some(format!("/{}", given[wanted.len()..].join("/")))
}

/// Whether `path` lies under one of `allowed`, segment-wise.
fn allowed_path(allowed: &[String], path: &str) -> bool {
    allowed.iter().any(|p| {
        let p = p.trim_end_matches('/');
        p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Serves the proxy in plaintext on `listener` until `shutdown` completes. (Agents reach it on loopback or
/// inside their pod; the upstream leg is always TLS.)
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route(VEND_PATH, axum::routing::post(vend)).fallback(handle).with_state((broker, proxy));
    tracing::info!(addr = %listener.local_addr()?, "tessera serving proxy");
    axum::serve(crate::net::Listener(listener), router).with_graceful_shutdown(shutdown).await
}

fn refused(status: StatusCode, code: &str, description: &str) -> Response {
    gateway_error(status, code, description)
}

async fn handle(State((broker, proxy)): State<(Arc<Broker>, Arc<Proxy>)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let current = broker.current();
    let path = parts.uri.path().to_string();
    let method = parts.method.as_str().to_string();
    let checker = proxy.config.client.as_str();
    let unrouted = |reason: &str, route: &str, audience: &str| {
        let call = Call { route, audience, method: &method, path: &path };
        access::record_call(&current, checker, None, call, Outcome::Refused(reason));
    };
    let Some((index, params, rest)) = proxy.route(&path) else {
        unrouted("no_route", "-", "");
        return refused(StatusCode::NOT_FOUND, "invalid_target", "no proxy route covers this path");
    };
    let route = &proxy.config.routes[index];
    let prefix = route.route.path_prefix.as_str();
    let audience = route.route.audience.as_str();
    if ambiguous_path(&path) {
        unrouted("ambiguous_path", prefix, audience);
        return refused(StatusCode::BAD_REQUEST, "invalid_request", "the path has dot segments or encoded separators");
    }
    // The token, checked as forward-auth checks it.
    let wants_dpop = current
        .catalog()
        .audience(audience)
        .is_some_and(|a| a.sender_constraint == crate::catalog::SenderConstraint::Dpop);
    let bare = if wants_dpop { Scheme::Dpop } else { Scheme::Bearer };
    let (scheme, token, presentation) = match presented(&broker, &proxy, &parts, audience, bare) {
        Ok(p) => p,
        Err(refused) => {
            let (response, reason) = *refused;
            unrouted(reason, prefix, audience);
            return response;
        }
    };
    let Some(client) = current.clients().iter().find(|c| c.id == checker).cloned() else {
        unrouted("no_proxy_client", prefix, audience);
        return refused(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the proxy's client is not configured");
    };
    let details = route.route.details.as_ref().map(|d| (d, &params));
    let need = Need { audience, scopes: &route.route.scopes, details, method: Some(&method) };
    let claims = match access::check(&current, &client, &token, &presentation, need, crate::clock::now()).await {
        Ok(claims) => claims,
        Err(denied) => {
            unrouted(denied.reason(), prefix, audience);
            return refusal(&broker, audience, scheme, &route.route.scopes, &denied);
        }
    };
    drop(token);
    let call = Call { route: prefix, audience, method: &method, path: &path };
    let record = |outcome: Outcome<'_>| access::record_call(&current, checker, Some(&claims), call, outcome);

    if !route.methods.contains(&method) {
        record(Outcome::Refused("method_not_allowed"));
        let mut response =
            refused(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "this method is not allowed on the route");
        let allow = route.methods.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, v);
        }
        return response;
    }
    if !allowed_path(&route.allow_paths, &rest) {
        record(Outcome::Refused("path_not_allowed"));
        return refused(StatusCode::FORBIDDEN, "invalid_target", "this path is not allowed on the route");
    }

    let Some(secret) = proxy.secrets.get(&route.credential.secret) else {
        record(Outcome::Failed("no_credential"));
        return refused(StatusCode::BAD_GATEWAY, "server_error", "the upstream credential is unavailable");
    };
    let body = match axum::body::to_bytes(body, proxy.config.max_request_bytes).await {
        Ok(body) => body,
        Err(_) => {
            record(Outcome::Refused("request_too_large"));
            return refused(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "the request body is too large");
        }
    };
    let Some(upstream) = upstream_request(&proxy.clients[index], route, &parts, &rest, &claims, &secret, body) else {
        record(Outcome::Failed("bad_request"));
        return refused(StatusCode::BAD_REQUEST, "invalid_request", "the request cannot be forwarded");
    };
    let answer = match proxy.clients[index].execute(upstream).await {
        Ok(answer) => answer,
        Err(e) => {
            // Never the error itself: it can print the URL, and with it a query-parameter credential.
            let (status, reason) = if e.is_timeout() {
                (StatusCode::GATEWAY_TIMEOUT, "timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "unreachable")
            };
            record(Outcome::Failed(reason));
            return refused(status, "upstream_error", &format!("the upstream call failed: {reason}"));
        }
    };
    if answer.content_length().is_some_and(|n| n > proxy.config.max_response_bytes) {
        record(Outcome::Failed("response_too_large"));
        return refused(StatusCode::BAD_GATEWAY, "upstream_error", "the upstream's answer is too large");
    }
    let status = answer.status();
    record(Outcome::Forwarded(status.as_u16()));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    let forms = secret_forms(&secret);
    for (name, value) in answer.headers() {
        let hop = DROPPED[..9].contains(&name.as_str()) || name == header::CONTENT_LENGTH;
        if hop || forms.iter().any(|f| contains(value.as_bytes(), f)) {
            continue;
        }
        response.headers_mut().append(name.clone(), value.clone());
    }
    let stream = Streamed {
        answer,
        forms,
        carry: Vec::new(),
        seen: 0,
        max: proxy.config.max_response_bytes,
        done: false,
        broker: Arc::clone(&broker),
        checker: checker.to_string(),
        claims,
        route: prefix.to_string(),
        audience: audience.to_string(),
        method: method.clone(),
        path: path.clone(),
    };
    *response.body_mut() = Body::from_stream(futures_util::stream::unfold(stream, Streamed::next));
    response
}

/// The forwarded request: the upstream URL (the route's base, the path after its prefix, the query), the
/// agent's headers less the dropped ones, the caller's identity for the upstream, and the credential.
fn upstream_request(
    client: &reqwest::Client,
    route: &ProxyRoute,
    parts: &axum::http::request::Parts,
    rest: &str,
    claims: &crate::token::AccessClaims,
    secret: &Credential,
    body: Bytes,
) -> Option<reqwest::Request> {
    let mut url = format!("{}{rest}", route.upstream);
    let query = parts.uri.query().unwrap_or_default();
    match &route.credential.inject {
        Inject::Query(name) => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != name) {
                q.append_pair(&k, &v);
            }
            q.append_pair(name, secret.expose());
            url.push('?');
            url.push_str(&q.finish());
        }
        _ if !query.is_empty() => {
            url.push('?');
            url.push_str(query);
        }
        _ => {}
    }
    let url = zeroize::Zeroizing::new(url);
    let mut headers = HeaderMap::new();
    // Headers the agent's `Connection` names are hop-by-hop too.
    let named: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let injected = route.credential.inject.header();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if DROPPED.contains(&n) || named.iter().any(|x| x == n) || Some(n) == injected || n.starts_with("x-tessera-") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    for (name, value) in [
        ("x-tessera-sub", claims.sub.as_str()),
        ("x-tessera-task-id", claims.task_id.as_str()),
        ("x-tessera-jti", claims.jti.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let credential = match &route.credential.inject {
        Inject::Bearer => Some(("authorization", zeroize::Zeroizing::new(format!("Bearer {}", secret.expose())))),
        Inject::Basic { username } => {
            let pair = match username {
                Some(user) => zeroize::Zeroizing::new(format!("{user}:{}", secret.expose())),
                None => zeroize::Zeroizing::new(format!("{}:", secret.expose())),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
            Some(("authorization", zeroize::Zeroizing::new(format!("Basic {encoded}"))))
        }
        Inject::Header(name) => Some((name.as_str(), zeroize::Zeroizing::new(secret.expose().to_string()))),
        Inject::Query(_) => None,
    };
    if let Some((name, value)) = credential {
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        headers.insert(HeaderName::from_bytes(name.as_bytes()).ok()?, value);
    }
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).ok()?;
    client.request(method, url.as_str()).headers(headers).body(body).build().ok()
}

/// The forms the credential could take in an answer: as is, and URL-encoded (as a query parameter echoed in
/// a `Location`).
fn secret_forms(secret: &Credential) -> Vec<zeroize::Zeroizing<Vec<u8>>> {
    let raw = secret.expose().as_bytes().to_vec();
    let encoded: String = form_urlencoded::byte_serialize(&raw).collect();
    let mut forms = vec![zeroize::Zeroizing::new(raw)];
    if encoded.as_bytes() != forms[0].as_slice() {
        forms.push(zeroize::Zeroizing::new(encoded.into_bytes()));
    }
    forms
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// An upstream answer on its way back: counted against the limit and scanned for the credential across chunk
/// boundaries (the last `len - 1` bytes are held back until the next chunk shows they start no echo).
struct Streamed {
    answer: reqwest::Response,
    forms: Vec<zeroize::Zeroizing<Vec<u8>>>,
    carry: Vec<u8>,
    seen: u64,
    max: u64,
    done: bool,
    broker: Arc<Broker>,
    checker: String,
    claims: std::sync::Arc<crate::token::AccessClaims>,
    route: String,
    audience: String,
    method: String,
    path: String,
}

impl Streamed {
    /// Ends the stream with an error (the connection is cut, so the agent sees a truncated answer, never the
    /// rest) and records why.
    fn cut(mut self, reason: &'static str) -> Option<(Result<Bytes, std::io::Error>, Streamed)> {
        self.done = true;
        self.carry.clear();
        let call = Call { route: &self.route, audience: &self.audience, method: &self.method, path: &self.path };
        access::record_call(&self.broker.current(), &self.checker, Some(&self.claims), call, Outcome::Failed(reason));
        Some((Err(std::io::Error::other(reason)), self))
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Streamed)> {
        if self.done {
            return None;
        }
        let hold = self.forms.iter().map(|f| f.len()).max().unwrap_or(1).saturating_sub(1);
        loop {
            match self.answer.chunk().await {
                Ok(Some(chunk)) => {
                    self.seen = self.seen.saturating_add(chunk.len() as u64);
                    if self.seen > self.max {
                        return self.cut("response_too_large");
                    }
                    self.carry.extend_from_slice(&chunk);
                    if self.forms.iter().any(|f| contains(&self.carry, f)) {
                        return self.cut("credential_echoed");
                    }
                    if self.carry.len() > hold {
                        let out: Vec<u8> = self.carry.drain(..self.carry.len() - hold).collect();
                        return Some((Ok(Bytes::from(out)), self));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    let rest = std::mem::take(&mut self.carry);
                    return (!rest.is_empty()).then(|| (Ok(Bytes::from(rest)), self));
                }
                Err(e) => return self.cut(if e.is_timeout() { "timeout" } else { "upstream_failed" }),
            }
        }
    }
}

/// A challenge to answer, and the reason to audit.
type Refused = (Response, &'static str);

/// The token of a request (RFC 6750 §2.1, RFC 9449 §7.1) and how it was presented, with a DPoP proof checked
/// against this request's method and the proxy's URL; or the challenge to answer.
fn presented(
    broker: &Broker,
    proxy: &Proxy,
    parts: &axum::http::request::Parts,
    audience: &str,
    bare: Scheme,
) -> Result<(Scheme, Token, Presentation), Box<Refused>> {
    let value = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let (scheme, token) = match value.and_then(|v| v.split_once(' ')) {
        None if value.is_none() => {
            return Err(Box::new((
                challenge(StatusCode::UNAUTHORIZED, broker, audience, bare, None, None),
                "no_token",
            )));
        }
        Some((s, t)) if s.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            (Scheme::Bearer, Token::new(t.trim()))
        }
        Some((s, t)) if s.eq_ignore_ascii_case("dpop") && !t.trim().is_empty() => (Scheme::Dpop, Token::new(t.trim())),
        _ => {
            let error = ("invalid_request", "the Authorization header is not a Bearer or DPoP token");
            let response = challenge(StatusCode::UNAUTHORIZED, broker, audience, bare, Some(error), None);
            return Err(Box::new((response, "invalid_request")));
        }
    };
    let mut presentation = Presentation { dpop_scheme: scheme == Scheme::Dpop, ..Presentation::default() };
    if scheme == Scheme::Dpop {
        let base = match &proxy.config.public_url {
            Some(url) => url.clone(),
            None => {
                let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
                format!("http://{host}")
            }
        };
        let url = format!("{base}{}", parts.uri.path());
        match crate::http::oauth::dpop_header(&parts.headers, parts.method.as_str(), url) {
            Ok(proof) => presentation.proof = proof,
            Err(e) => {
                let error = ("invalid_dpop_proof", e.description.as_str());
                let response = challenge(StatusCode::UNAUTHORIZED, broker, audience, Scheme::Dpop, Some(error), None);
                return Err(Box::new((response, "invalid_dpop_proof")));
            }
        }
    }
    Ok((scheme, token, presentation))
}

/// `POST /_tessera/database-credentials?resource=<database audience>` with the agent's token for that
/// audience: a login created for the token, its password shown once (`Cache-Control: no-store`).
async fn vend(State((broker, proxy)): State<(Arc<Broker>, Arc<Proxy>)>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let current = broker.current();
    let checker = proxy.config.client.as_str();
    let resource = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "resource")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let call = Call { route: VEND_PATH, audience: &resource, method: "POST", path: &path };
    let Some(logins) = proxy.logins.iter().find(|l| l.spec().audience == resource) else {
        access::record_call(&current, checker, None, call, Outcome::Refused("no_database"));
        return refused(StatusCode::NOT_FOUND, "invalid_target", "`resource` names no catalogued database");
    };
    let (scheme, token, presentation) = match presented(&broker, &proxy, &parts, &resource, Scheme::Bearer) {
        Ok(p) => p,
        Err(refused) => {
            let (response, reason) = *refused;
            access::record_call(&current, checker, None, call, Outcome::Refused(reason));
            return response;
        }
    };
    let Some(client) = current.clients().iter().find(|c| c.id == checker).cloned() else {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the proxy's client is not configured");
    };
    let none = crate::scopes::Scopes::default();
    let need = Need { audience: &resource, scopes: &none, details: None, method: Some("POST") };
    let claims = match access::check(&current, &client, &token, &presentation, need, crate::clock::now()).await {
        Ok(claims) => claims,
        Err(denied) => {
            access::record_call(&current, checker, None, call, Outcome::Refused(denied.reason()));
            return refusal(&broker, &resource, scheme, &none, &denied);
        }
    };
    let record = |outcome| access::record_call(&current, checker, Some(&claims), call, outcome);
    let plan = match crate::vend::plan(logins.spec(), &claims) {
        Ok(plan) => plan,
        Err(_) => {
            record(Outcome::Refused("no_grant"));
            let error = ("insufficient_scope", "none of the token's scopes grants a database role");
            return challenge(StatusCode::FORBIDDEN, &broker, &resource, scheme, Some(error), None);
        }
    };
    match logins.create(&plan).await {
        Ok(login) => {
            record(Outcome::Forwarded(200));
            let body = serde_json::json!({
                "username": login.username,
                "password": login.password.expose(),
                "host": login.host,
                "port": login.port,
                "dbname": login.dbname,
                "roles": login.roles,
                "expires_at": login.valid_until,
                "task_id": claims.task_id,
            });
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(VendError::AlreadyVended) => {
            record(Outcome::Refused("already_vended"));
            refused(StatusCode::CONFLICT, "invalid_request", "a login was already created for this token")
        }
        Err(VendError::NoGrant) => {
            record(Outcome::Refused("no_grant"));
            refused(StatusCode::FORBIDDEN, "insufficient_scope", "none of the token's scopes grants a database role")
        }
        Err(VendError::Unavailable(problem)) => {
            tracing::warn!(database = %resource, problem = %problem, "no database login created");
            record(Outcome::Failed("database_unavailable"));
            refused(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the database is unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_path_follows_the_prefix_segment_wise() {
        assert_eq!(upstream_path("/stripe", "/stripe/v1/charges").as_deref(), Some("/v1/charges"));
        assert_eq!(upstream_path("/stripe/", "/stripe/v1").as_deref(), Some("/v1"));
        assert_eq!(upstream_path("/stripe", "/stripe").as_deref(), Some("/"));
        assert_eq!(upstream_path("/stripe", "/stripex/v1"), None);
        assert_eq!(upstream_path("/cases/{case}", "/cases/42/notes").as_deref(), Some("/notes"));
        assert_eq!(upstream_path("/", "/anything").as_deref(), Some("/anything"));
    }

    #[test]
    fn allowed_paths_are_segment_prefixes() {
        let allowed = vec!["/v1/charges".to_string(), "/v1/customers/".to_string()];
        assert!(allowed_path(&allowed, "/v1/charges"));
        assert!(allowed_path(&allowed, "/v1/charges/ch_1"));
        assert!(allowed_path(&allowed, "/v1/customers/cus_1"));
        assert!(!allowed_path(&allowed, "/v1/chargesx"));
        assert!(!allowed_path(&allowed, "/v1/refunds"));
        assert!(allowed_path(&["/".to_string()], "/v1/anything"));
    }

    #[test]
    fn an_echo_is_found_across_forms() {
        let forms = secret_forms(&Credential::new("sk test+1"));
        assert_eq!(forms.len(), 2);
        assert!(contains(b"Location: /x?key=sk+test%2B1", &forms[1]));
        assert!(contains(b"{\"key\":\"sk test+1\"}", &forms[0]));
    }
}
