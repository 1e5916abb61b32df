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
use serde_json::json;

use super::oauth::Peer;
use crate::broker::Broker;
use crate::client::{Credentials, Rpc};
use crate::clock::now;
use crate::error::ErrorCode;
use crate::introspect::Introspection;
use crate::scopes::Scopes;
use crate::secret::Token;

/// The route's audience, set by the gateway.
const AUDIENCE: &str = "x-tessera-audience";
/// The route's required scopes (all of them), set by the gateway.
const SCOPE: &str = "x-tessera-scope";
/// Where gateways put the original request's URI: nginx (`proxy_set_header X-Original-URI $request_uri`),
/// Traefik ForwardAuth (`X-Forwarded-Uri`).
const ORIGINAL_URI: [&str; 2] = ["x-original-uri", "x-forwarded-uri"];
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

/// An RFC 6750 §3 challenge (401 or 403).
fn challenge(
    status: StatusCode,
    broker: &Broker,
    audience: &str,
    error: Option<(&str, &str)>,
    scope: Option<&str>,
) -> Response {
    let mut value = String::from("Bearer realm=\"tessera\"");
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
fn gateway_error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": code, "error_description": description }))).into_response()
}

async fn forward_auth(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    // The route: as the gateway names it, or else configured for the original request's path.
    let (audience, required) = match text(AUDIENCE).filter(|a| !a.is_empty()) {
        Some(audience) => match Scopes::parse_request(text(SCOPE).unwrap_or_default()) {
            Ok(required) => (audience.to_string(), required),
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
            match path.and_then(|p| broker.catalog().route(p)) {
                Some(route) => (route.audience.clone(), route.scopes.clone()),
                None => return gateway_error(StatusCode::FORBIDDEN, "invalid_target", "no route covers this request"),
            }
        }
    };
    let audience = audience.as_str();
    // The gateway itself.
    let gateway = Credentials::from_authorization(text(CLIENT_AUTHORIZATION), peer.ip().is_loopback())
        .and_then(|credentials| broker.clients().authenticate(&credentials, Rpc::Introspect).cloned());
    let gateway = match gateway {
        Ok(client) => client,
        Err(_) => {
            return gateway_error(StatusCode::BAD_GATEWAY, "invalid_client", "the gateway could not be authenticated");
        }
    };
    // The caller's token (RFC 6750 §2.1).
    let token = match text(header::AUTHORIZATION.as_str()) {
        None => return challenge(StatusCode::UNAUTHORIZED, &broker, audience, None, None),
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Token::new(token.trim())
            }
            _ => {
                let error = ("invalid_request", "the Authorization header is not a Bearer token");
                return challenge(StatusCode::UNAUTHORIZED, &broker, audience, Some(error), None);
            }
        },
    };
    let claims = match broker.introspect(&gateway, &token, now()).await {
        Ok(Introspection::Active(claims)) => claims,
        Ok(Introspection::Inactive) => {
            let error = ("invalid_token", "the token is not active");
            return challenge(StatusCode::UNAUTHORIZED, &broker, audience, Some(error), None);
        }
        Err(e) if e.code == ErrorCode::Unavailable => {
            return gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code.as_str(),
                "the revocation store is unavailable",
            );
        }
        Err(e) => {
            return gateway_error(StatusCode::INTERNAL_SERVER_ERROR, e.code.as_str(), "the token could not be checked");
        }
    };
    if claims.aud != audience {
        let error = ("invalid_token", "the token is for another audience");
        return challenge(StatusCode::UNAUTHORIZED, &broker, audience, Some(error), None);
    }
    if !required.iter().all(|s| claims.scope.contains(s)) {
        let error = ("insufficient_scope", "the token lacks a scope this route needs");
        return challenge(StatusCode::FORBIDDEN, &broker, audience, Some(error), Some(required.as_str()));
    }
    // Who is calling, for the upstream. Values come from a verified token; a header value that cannot be sent
    // (it would need a control character) is left out rather than altered.
    let actors = claims.act.as_ref().map(|a| a.chain().map(|a| a.sub.as_str()).collect::<Vec<_>>().join(" > "));
    let mut response = StatusCode::OK.into_response();
    for (name, value) in [
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

async fn resource_metadata(State(broker): State<Arc<Broker>>, uri: Uri) -> Response {
    let resource = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "resource")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match broker.catalog().audience(&resource) {
        Some(audience) => (
            StatusCode::OK,
            axum::Json(json!({
                "resource": audience.resource_url.as_deref().unwrap_or(&audience.id),
                "authorization_servers": [broker.broker_issuer()],
                "scopes_supported": audience.scopes.iter().collect::<Vec<_>>(),
                "bearer_methods_supported": ["header"],
            })),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "invalid_target", "error_description": "the resource is not in the catalog" })),
        )
            .into_response(),
    }
}
