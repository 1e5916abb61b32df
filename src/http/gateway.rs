//! What gateways and protected resources ask of tessera over HTTP:
//!
//! - **Forward-auth** (`/forward-auth`, any method): the subrequest of nginx `auth_request`, Traefik
//!   ForwardAuth or Envoy's HTTP ext_authz. The gateway forwards the caller's `Authorization: Bearer …` and
//!   names the route's audience (`X-Tessera-Audience`) and required scopes (`X-Tessera-Scope`, space
//!   separated) — or forwards the original URI (`X-Original-URI`, `X-Forwarded-Uri`) and the configured
//!   `[[routes]]` decide (the longest matching path prefix; no route: 403). 200 when the token is active — the same check as Introspect, one store round trip — for that
//!   audience with every one of those scopes, with the token's subject, actors, task, scopes and `jti` in
//!   `X-Tessera-*` response headers for the upstream; 401 with an RFC 6750 `WWW-Authenticate` challenge that
//!   carries `resource_metadata` (RFC 9728, what MCP clients follow) when there is no active token for the
//!   audience; 403 `insufficient_scope` naming every scope the route needs. The gateway authenticates as an
//!   introspecting client with `X-Tessera-Client-Authorization: Basic …` (or is the loopback client: a
//!   gateway's static configuration cannot mint a single-use client assertion per request, so with
//!   `broker.client_secrets = "forbidden"` only the loopback client, or later mTLS, is left to it); anything
//!   that is not the caller's fault (the gateway's credentials or configuration, a store outage) is a 5xx,
//!   which gateways treat as an error: closed.
//!
//!   **DPoP** (RFC 9449 §7): a DPoP-bound token (`cnf.jkt`) must come as `Authorization: DPoP <token>` with
//!   exactly one `DPoP` proof header, signed by the token's key, whose `htm` is the original request's method
//!   (`X-Original-Method`, or `X-Forwarded-Method` as Traefik sends it), whose `htu` is the original URL
//!   (`X-Forwarded-Proto` `://` `X-Forwarded-Host` followed by `X-Original-URI` or `X-Forwarded-Uri`; query and
//!   fragment are ignored), whose `ath` is the token's hash, fresh (`broker.dpop_max_age`), and never seen before
//!   by any replica (its replay marker is spent in the same store round trip as the revocation lookup). A
//!   failure is 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"`; a DPoP-bound token presented as
//!   `Bearer` fails too. These headers are believed because the gateway that sends them authenticated: it must
//!   set each one itself from the request it received, never pass on a caller's own; a DPoP presentation
//!   without them is the gateway's fault (500), never a pass.
//!
//!   **RFC 9396 details**: a route with `authorization_details` also needs the token to carry an entry of that
//!   type whose fields equal the route's (a `{name}` value is the path parameter of `path_prefix`, e.g.
//!   `/cases/{case}`) and whose `actions` hold the route's actions plus the original method's
//!   ([`crate::rar::method_action`], unless `map_methods = false`); otherwise 403 `insufficient_scope`, as for
//!   a missing scope. The granted details go upstream in `X-Tessera-Authorization-Details` (JSON).
//! - **Protected resource metadata** (`GET /oauth2/resource-metadata?resource=…`, RFC 9728 §3.2) for each
//!   catalogued audience: `resource`, `authorization_servers` (tessera), `scopes_supported` from the catalog,
//!   `bearer_methods_supported` — for the resource (or its gateway) to serve at its own
//!   `/.well-known/oauth-protected-resource`, or for clients to fetch from the challenge's URL.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use serde_json::json;

use super::oauth::Peer;
use crate::access::{self, Denied, Need};
use crate::broker::Broker;
use crate::catalog::SenderConstraint;
use crate::client::{Credentials, Rpc};
use crate::clock::now;
use crate::error::ErrorCode;
use crate::introspect::Presentation;
use crate::scopes::Scopes;
use crate::secret::Token;

/// The route's audience, set by the gateway.
const AUDIENCE: &str = "x-tessera-audience";
/// The route's required scopes (all of them), set by the gateway.
const SCOPE: &str = "x-tessera-scope";
/// Where gateways put the original request's URI: nginx (`proxy_set_header X-Original-URI $request_uri`),
/// Traefik ForwardAuth (`X-Forwarded-Uri`).
const ORIGINAL_URI: [&str; 2] = ["x-original-uri", "x-forwarded-uri"];
/// Where gateways put the original request's method, for a DPoP proof's `htm`: nginx
/// (`proxy_set_header X-Original-Method $request_method`), Traefik ForwardAuth (`X-Forwarded-Method`).
const ORIGINAL_METHOD: [&str; 2] = ["x-original-method", "x-forwarded-method"];
/// The original request's scheme and host, for a DPoP proof's `htu`.
const ORIGINAL_PROTO: &str = "x-forwarded-proto";
const ORIGINAL_HOST: &str = "x-forwarded-host";
/// The caller's client certificate as the gateway's TLS saw it (RFC 9440: `Client-Cert: :<base64 DER>:`), for
/// certificate-bound tokens (RFC 8705): the gateway terminates the caller's mTLS and vouches for the
/// certificate it verified. It is the PEM body of the leaf on one line, between colons.
const CLIENT_CERT: &str = "client-cert";
/// The DPoP algorithms a challenge offers (RFC 9449 §7.1 `algs`).
const DPOP_ALGS: &str = "ES256 EdDSA RS256 PS256";
/// The gateway's own client credentials (`Authorization` carries the caller's token).
const CLIENT_AUTHORIZATION: &str = "x-tessera-client-authorization";

pub(super) fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/forward-auth", any(forward_auth))
        .route("/oauth2/resource-metadata", get(resource_metadata))
        .with_state(broker)
}

/// Where clients find a resource's metadata: under the broker's issuer (its public URL).
fn metadata_url(broker: &Broker, resource: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    format!("{}/oauth2/resource-metadata?resource={encoded}", broker.broker_issuer().trim_end_matches('/'))
}

/// How the caller presented its token, which names the scheme of the challenge it gets back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Bearer,
    Dpop,
}

/// An RFC 6750 §3 challenge (401 or 403), or its RFC 9449 §7.1 DPoP counterpart.
pub(crate) fn challenge(
    status: StatusCode,
    broker: &Broker,
    audience: &str,
    scheme: Scheme,
    error: Option<(&str, &str)>,
    scope: Option<&str>,
) -> Response {
    let mut value = match scheme {
        Scheme::Bearer => String::from("Bearer realm=\"tessera\""),
        Scheme::Dpop => format!("DPoP realm=\"tessera\", algs=\"{DPOP_ALGS}\""),
    };
    if let Some((code, description)) = error {
        value.push_str(&format!(", error=\"{code}\", error_description=\"{description}\""));
    }
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{scope}\""));
    }
    value.push_str(&format!(", resource_metadata=\"{}\"", metadata_url(broker, audience)));
    let mut response = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// A failure that is not the caller's: gateways treat anything but 2xx, 401 and 403 as an error.
pub(crate) fn gateway_error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": code, "error_description": description }))).into_response()
}

/// The answer to a token that does not grant the route: 401/403 challenges for the caller's faults, 5xx
/// for the rest (gateways treat those as errors: closed).
pub(crate) fn refusal(broker: &Broker, audience: &str, scheme: Scheme, required: &Scopes, denied: &Denied) -> Response {
    let (status, error, scope) = match denied {
        Denied::Inactive => (StatusCode::UNAUTHORIZED, ("invalid_token", "the token is not active"), None),
        Denied::InvalidToken(why) => (StatusCode::UNAUTHORIZED, ("invalid_token", why.as_str()), None),
        Denied::InvalidDpopProof(why) => {
            let error = ("invalid_dpop_proof", why.as_str());
            return challenge(StatusCode::UNAUTHORIZED, broker, audience, Scheme::Dpop, Some(error), None);
        }
        Denied::OtherAudience => {
            (StatusCode::UNAUTHORIZED, ("invalid_token", "the token is for another audience"), None)
        }
        Denied::InsufficientScope => (
            StatusCode::FORBIDDEN,
            ("insufficient_scope", "the token lacks a scope this route needs"),
            Some(required.as_str()),
        ),
        Denied::InsufficientDetails => (
            StatusCode::FORBIDDEN,
            ("insufficient_scope", "the token's authorization_details do not cover this request"),
            (!required.is_empty()).then(|| required.as_str()),
        ),
        Denied::Failed(e) if e.code == ErrorCode::Unavailable => {
            return gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code.as_str(),
                "the revocation store is unavailable",
            );
        }
        Denied::Failed(e) => {
            return gateway_error(StatusCode::INTERNAL_SERVER_ERROR, e.code.as_str(), "the token could not be checked");
        }
    };
    challenge(status, broker, audience, scheme, Some(error), scope)
}

async fn forward_auth(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(Peer(peer, certificate)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    // One set of routes, clients, catalog and issuers for the whole request, even across a reload.
    let current = broker.current();
    // The route: as the gateway names it, or else configured for the original request's path.
    let (audience, required, details) = match text(AUDIENCE).filter(|a| !a.is_empty()) {
        Some(audience) => match Scopes::parse_request(text(SCOPE).unwrap_or_default()) {
            Ok(required) => (audience.to_string(), required, None),
            Err(_) => {
                return gateway_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid_request",
                    "the gateway's scopes are malformed",
                );
            }
        },
        None => {
            let path = ORIGINAL_URI.iter().find_map(|h| text(h)).map(|uri| uri.split('?').next().unwrap_or_default());
            match path.and_then(|p| current.catalog().route(p)) {
                Some((route, params)) => {
                    (route.audience.clone(), route.scopes.clone(), route.details.clone().map(|d| (d, params)))
                }
                None => return gateway_error(StatusCode::FORBIDDEN, "invalid_target", "no route covers this request"),
            }
        }
    };
    let audience = audience.as_str();
    // The gateway itself.
    let gateway =
        Credentials::from_authorization(text(CLIENT_AUTHORIZATION), peer.ip().is_loopback()).and_then(|credentials| {
            current.clients().authenticate(&credentials.over(certificate), Rpc::Introspect).cloned()
        });
    let gateway = match gateway {
        Ok(client) => client,
        Err(_) => {
            return gateway_error(StatusCode::BAD_GATEWAY, "invalid_client", "the gateway could not be authenticated");
        }
    };
    // An audience that takes only DPoP-bound tokens says so in a bare challenge.
    let wants_dpop =
        current.catalog().audience(audience).is_some_and(|a| a.sender_constraint == SenderConstraint::Dpop);
    let bare = if wants_dpop { Scheme::Dpop } else { Scheme::Bearer };
    // The caller's token (RFC 6750 §2.1, RFC 9449 §7.1).
    let (scheme, token) = match text(header::AUTHORIZATION.as_str()) {
        None => return challenge(StatusCode::UNAUTHORIZED, &broker, audience, bare, None, None),
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                (Scheme::Bearer, Token::new(token.trim()))
            }
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("dpop") && !token.trim().is_empty() => {
                (Scheme::Dpop, Token::new(token.trim()))
            }
            _ => {
                let error = ("invalid_request", "the Authorization header is not a Bearer or DPoP token");
                return challenge(StatusCode::UNAUTHORIZED, &broker, audience, bare, Some(error), None);
            }
        },
    };
    let presentation = match presentation(&headers, scheme) {
        Ok(p) => p,
        Err(Unreadable::Gateway) => {
            return gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_request",
                "for DPoP the gateway must forward X-Original-Method (or X-Forwarded-Method), X-Forwarded-Proto, \
                 X-Forwarded-Host and X-Original-URI (or X-Forwarded-Uri)",
            );
        }
        Err(Unreadable::ClientCert) => {
            return gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "invalid_request",
                "the gateway's Client-Cert header is not `:base64 DER:` (RFC 9440)",
            );
        }
        Err(Unreadable::Proof(why)) => {
            let error = ("invalid_dpop_proof", why.as_str());
            return challenge(StatusCode::UNAUTHORIZED, &broker, audience, Scheme::Dpop, Some(error), None);
        }
    };
    let method = ORIGINAL_METHOD.iter().find_map(|h| text(h));
    let need = Need {
        audience,
        scopes: &required,
        details: details.as_ref().map(|(requirement, params)| (requirement, params)),
        method,
    };
    let claims = match access::check(&current, &gateway, &token, &presentation, need, now()).await {
        Ok(claims) => claims,
        Err(denied) => return refusal(&broker, audience, scheme, &required, &denied),
    };
    // Who is calling, for the upstream. Values come from a verified token; a header value that cannot be sent
    // (it would need a control character) is left out rather than altered.
    let actors = claims.act.as_ref().map(|a| a.chain().map(|a| a.sub.as_str()).collect::<Vec<_>>().join(" > "));
    let details = claims.authorization_details.as_ref().map(|d| d.to_json());
    let mut response = StatusCode::OK.into_response();
    for (name, value) in [
        ("x-tessera-authorization-details", details.as_deref()),
        ("x-tessera-sub", Some(claims.sub.as_str())),
        ("x-tessera-sub-iss", Some(claims.sub_iss.as_str())),
        ("x-tessera-actors", actors.as_deref()),
        ("x-tessera-task-id", Some(claims.task_id.as_str())),
        ("x-tessera-scope", Some(claims.scope.as_str())),
        ("x-tessera-jti", Some(claims.jti.as_str())),
        ("x-tessera-client-id", Some(claims.client_id.as_str())),
    ] {
        if let (Some(value), Ok(name)) = (value, HeaderName::from_bytes(name.as_bytes()))
            && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
        {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Why a presentation could not even be put to the broker.
enum Unreadable {
    /// The gateway did not forward the original request's method and URL: its misconfiguration.
    Gateway,
    /// The gateway's `Client-Cert` is not an RFC 9440 byte sequence: its misconfiguration too.
    ClientCert,
    /// The `DPoP` header is repeated or not text (the caller's fault): `invalid_dpop_proof`, with why.
    Proof(String),
}

/// How the caller presented its token: the scheme, and the `DPoP` proof with the original request's method and
/// URL as the (authenticated) gateway forwards them.
fn presentation(headers: &HeaderMap, scheme: Scheme) -> Result<Presentation, Unreadable> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let mut presentation = Presentation { dpop_scheme: scheme == Scheme::Dpop, ..Presentation::default() };
    // RFC 9440 §2: a structured-field byte sequence, `:` base64 DER `:`. Only an authenticated gateway's word
    // is taken (the route is only reached after the gateway authenticated).
    if let Some(value) = text(CLIENT_CERT) {
        let der = value
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .filter(|der| !der.is_empty())
            .ok_or(Unreadable::ClientCert)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        presentation.client_certificate_sha256 = Some(sha256);
    }
    // Only the DPoP scheme takes a proof: a Bearer token with a stray `DPoP` header is judged as a bearer token
    // (and refused when it is DPoP-bound), so it needs nothing more from the gateway.
    if scheme != Scheme::Dpop || headers.get("dpop").is_none() {
        return Ok(presentation);
    }
    let method = ORIGINAL_METHOD.iter().find_map(|h| text(h));
    let url = match (text(ORIGINAL_PROTO), text(ORIGINAL_HOST), ORIGINAL_URI.iter().find_map(|h| text(h))) {
        (Some(proto), Some(host), Some(uri)) if uri.starts_with('/') => Some(format!("{proto}://{host}{uri}")),
        _ => None,
    };
    let (Some(method), Some(url)) = (method, url) else {
        return Err(Unreadable::Gateway);
    };
    presentation.proof =
        super::oauth::dpop_header(headers, method, url).map_err(|e| Unreadable::Proof(e.description))?;
    Ok(presentation)
}

async fn resource_metadata(State(broker): State<Arc<Broker>>, uri: Uri) -> Response {
    let resource = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "resource")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match broker.current().catalog().audience(&resource) {
        Some(audience) => {
            let mut body = json!({
                "resource": audience.resource_url.as_deref().unwrap_or(&audience.id),
                "authorization_servers": [broker.broker_issuer()],
                "scopes_supported": audience.scopes.iter().collect::<Vec<_>>(),
                "bearer_methods_supported": ["header"],
                // RFC 9728 §2 / RFC 9449 §5.1: proofs the gateway's forward-auth verifies.
                "dpop_signing_alg_values_supported": DPOP_ALGS.split(' ').collect::<Vec<_>>(),
                "dpop_bound_access_tokens_required": audience.sender_constraint == SenderConstraint::Dpop,
            });
            // RFC 9728 §2: the RFC 9396 detail types this resource accepts, when it accepts any.
            if !audience.detail_types.is_empty() {
                body["authorization_details_types_supported"] =
                    json!(audience.detail_types.iter().map(|t| t.name.as_str()).collect::<Vec<_>>());
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "invalid_target", "error_description": "the resource is not in the catalog" })),
        )
            .into_response(),
    }
}
