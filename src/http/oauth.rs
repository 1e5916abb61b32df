//! The plain-OAuth endpoints, for clients, gateways and MCP servers that do not speak gRPC — the same
//! operations of the same core as the gRPC face, only spelled as RFC 6749 forms and JSON:
//!
//! - `POST /oauth2/token`: RFC 8693 token exchange, and the RFC 7523 §2.1 jwt-bearer grant (a workload's own
//!   assertion, exchanged as a subject token with no actor); with a `DPoP` header (RFC 9449 §5: `htm` `POST`,
//!   `htu` the `token_endpoint` of the metadata) the token is bound to the proof's key (`token_type: DPoP`);
//! - `POST /oauth2/introspect`: RFC 7662, or with `Accept: application/token-introspection+jwt` the RFC 9701
//!   signed JWT response;
//! - `POST /oauth2/revoke`: RFC 7009 (`token`), plus tessera's targets (`jti`, `task_id`, `subject` with
//!   `issuer`, `client_id`);
//! - `POST /oauth2/suspend` and `/oauth2/resume`: the kill switch for a principal or a client (operators);
//! - `GET /.well-known/jwks.json` (RFC 7517) and `GET /.well-known/oauth-authorization-server` (RFC 8414).
//!
//! Clients authenticate with `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1, unless the config
//! forbids secrets), a client assertion (`client_assertion_type` and `client_assertion`, RFC 7521 §4.2:
//! `private_key_jwt` or a SPIFFE JWT-SVID) or, over mTLS, their certificate — never two methods naming
//! different clients; the loopback client of dev mode needs none. Errors are RFC 6749 §5.2 JSON with the
//! status their code names ([`ErrorCode::http_status`]): 401 with `WWW-Authenticate` for a client that failed
//! to authenticate, 429 with `Retry-After` (when the limit admits again) for an exchange over a rate limit,
//! 503 with `Retry-After` when the revocation store is down.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::broker::{Broker, Current};
use crate::client::{Caller, Credentials, PeerCertificate, Presented, Rpc};
use crate::clock::{now, now_ms};
use crate::dpop;
use crate::error::{Error, ErrorCode};
use crate::exchange::{ExchangeRequest, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use crate::introspect::Introspection;
use crate::revocation::{RevokeRequest, SuspendRequest};
use crate::secret::Token;
use crate::token::Actor;

/// RFC 9701: the `typ` of a signed introspection response, and its media type.
const INTROSPECTION_JWT: &str = "token-introspection+jwt";
const INTROSPECTION_JWT_MEDIA: &str = "application/token-introspection+jwt";
/// RFC 7523 §2.1: a JWT used as an authorization grant.
pub const GRANT_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The largest form accepted (tokens are bounded by the issuers' `max_token_bytes`, at most 64 KiB).
const MAX_FORM_BYTES: usize = 192 * 1024;
/// The most fields a form may carry.
const MAX_FORM_FIELDS: usize = 32;
/// How long a verifier may cache the JWK Set: a rotated key must be published at least this long (plus the
/// longest token lifetime) before it signs.
const JWKS_MAX_AGE_SECONDS: u64 = 300;

/// The OAuth endpoints over `broker`.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/suspend", post(suspend))
        .route("/oauth2/resume", post(resume))
        .route("/approvals/{id}", get(approval))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        // A body past the limit is refused before it is read in full.
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(broker)
}

/// The peer of an HTTP connection, as the face's listener accepted it: its address (to tell the loopback
/// client apart) and, over mTLS, its verified client certificate.
#[derive(Clone, Debug)]
pub struct Peer(pub SocketAddr, pub Option<Arc<PeerCertificate>>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::net::Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::net::Listener>) -> Peer {
        Peer(*stream.remote_addr(), None)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::net::tls::Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::net::tls::Listener>) -> Peer {
        let peer = stream.remote_addr();
        Peer(peer.addr, peer.certificate.clone())
    }
}

/// An `application/x-www-form-urlencoded` body, decoded once (RFC 6749 §3.2, Appendix B). A field with
/// nothing to decode (a JWT, a client id) is borrowed from the body rather than copied.
struct Form<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Form<'a> {
    fn parse(headers: &HeaderMap, body: &'a [u8]) -> Result<Form<'a>, Error> {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !form_type {
            return Err(Error::invalid_request("the body must be application/x-www-form-urlencoded"));
        }
        if std::str::from_utf8(body).is_err() {
            return Err(Error::invalid_request("the form is not UTF-8"));
        }
        // A token exchange has up to ten fields.
        let mut fields = Vec::with_capacity(12);
        for (name, value) in form_urlencoded::parse(body) {
            if fields.len() == MAX_FORM_FIELDS {
                return Err(Error::invalid_request(format!("the form has more than {MAX_FORM_FIELDS} fields")));
            }
            if value.contains('\u{FFFD}') {
                return Err(Error::invalid_request("a form field is not UTF-8 once decoded"));
            }
            fields.push((name, value));
        }
        Ok(Form(fields))
    }

    /// A parameter that may appear at most once (RFC 6749 §3.2); empty counts as absent.
    fn one(&self, name: &str) -> Result<Option<&str>, Error> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_ref());
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(Error::invalid_request(format!("`{name}` is repeated"))),
            (Some(v), None) if !v.is_empty() => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    fn text(&self, name: &str) -> Result<String, Error> {
        Ok(self.one(name)?.unwrap_or_default().to_string())
    }

    /// A parameter that may repeat (`resource`, `audience`: RFC 8693 §2.1).
    fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.to_string()).collect()
    }
}

/// Who is calling: `client_secret_basic`, `client_secret_post`, or a client assertion (`client_assertion_type`
/// and `client_assertion`, with an optional `client_id` that must then name the same client: `private_key_jwt`,
/// RFC 7523 §2.2, or a SPIFFE JWT-SVID), never two at once (RFC 6749 §2.3); or the loopback client. The
/// assertion is verified here, before any work; the operation spends it.
async fn caller<'b>(
    broker: &'b Current<'_>,
    headers: &HeaderMap,
    form: &Form<'_>,
    peer: &Peer,
    rpc: Rpc,
) -> Result<Caller<'b>, Error> {
    caller_for(broker, headers, form, peer, &[rpc]).await
}

/// As [`caller`], for a call any of `rpcs` allows.
async fn caller_for<'b>(
    broker: &'b Current<'_>,
    headers: &HeaderMap,
    form: &Form<'_>,
    Peer(peer, certificate): &Peer,
    rpcs: &[Rpc],
) -> Result<Caller<'b>, Error> {
    let authorization = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| Error::new(ErrorCode::InvalidClient, "malformed client credentials"))?),
    };
    let presented = Presented {
        authorization,
        client_id: form.one("client_id")?,
        client_secret: form.one("client_secret")?,
        client_assertion_type: form.one("client_assertion_type")?,
        client_assertion: form.one("client_assertion")?,
        peer_is_loopback: peer.ip().is_loopback(),
    };
    let credentials = Credentials::from_presented(&presented)?.over(certificate.clone());
    broker.authenticate_for(&credentials, rpcs, now()).await
}

/// The body, or `invalid_request` when it could not be read (larger than the limit, or cut short).
fn read(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    body.map_err(|_| Error::invalid_request(format!("the body could not be read (at most {MAX_FORM_BYTES} bytes)")))
}

/// Runs a request of the HTTP face's broker endpoints in one of the broker's slots (shed with 503 when none
/// frees up in time) and within the request timeout (503 past it).
pub(super) async fn within_limits(
    State(broker): State<Arc<Broker>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _slot = match broker.slots().acquire().await {
        Ok(slot) => slot,
        Err(error) => return error_response(error),
    };
    match tokio::time::timeout(broker.slots().request_timeout(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(Error::new(ErrorCode::Unavailable, "the request did not complete in time")),
    }
}

/// An RFC 6749 §5.2 error response, with the status its code names. A rate limit says in `Retry-After`
/// (RFC 9110 §10.2.3, whole seconds, rounded up) when a retry can be admitted; a shed or unavailable broker
/// says 1.
///
/// `authorization_pending` also names its approval (`approval_id`, `approval_uri`, and the RFC 8628 §3.5
/// `interval` to poll at).
pub(super) fn error_response(error: Error) -> Response {
    let Error { code, description, retry_after, approval } = error;
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "error": code.as_str(), "error_description": description });
    if let (Some(pending), Some(fields)) = (approval, body.as_object_mut()) {
        fields.insert("approval_id".into(), pending.approval_id.into());
        fields.insert("approval_uri".into(), pending.approval_uri.into());
        fields.insert("interval".into(), pending.interval.into());
    }
    let mut response = (status, no_store(), axum::Json(body)).into_response();
    let headers = response.headers_mut();
    match code {
        ErrorCode::InvalidClient => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tessera\""));
        }
        ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Overloaded => {
            let seconds = retry_after.map_or(1, crate::error::retry_after_seconds);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        _ => {}
    }
    response
}

/// Token responses are never cached (RFC 6749 §5.1).
fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

fn answer(result: Result<Value, Error>) -> Response {
    match result {
        Ok(body) => (StatusCode::OK, no_store(), axum::Json(body)).into_response(),
        Err(error) => error_response(error),
    }
}

async fn token(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(async { exchange(&broker, &headers, &read(body)?, &peer).await }.await)
}

/// The `DPoP` header of a request (RFC 9449 §4.1), with the method and URL its proof must name: at most one
/// (RFC 9449 §4.3, check 1); more is `invalid_dpop_proof`.
pub(crate) fn dpop_header(headers: &HeaderMap, htm: &str, htu: String) -> Result<Option<dpop::Presented>, Error> {
    let mut values = headers.get_all("dpop").iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => return Err(Error::new(ErrorCode::InvalidDpopProof, "more than one DPoP header")),
        (Some(value), None) => value,
    };
    let proof = value.to_str().map_err(|_| Error::new(ErrorCode::InvalidDpopProof, "the DPoP header is not text"))?;
    Ok(Some(dpop::Presented { proof: Token::new(proof.trim()), htm: htm.to_string(), htu }))
}

async fn exchange(broker: &Broker, headers: &HeaderMap, body: &[u8], peer: &Peer) -> Result<Value, Error> {
    let form = Form::parse(headers, body)?;
    // One set of issuers, clients, catalog and policy for the whole request, even across a reload.
    let current = broker.current();
    let client = caller(&current, headers, &form, peer, Rpc::Exchange).await?;
    // RFC 9449 §5: the proof names the token endpoint as the broker publishes it (RFC 8414 `token_endpoint`).
    let proof = dpop_header(headers, "POST", dpop::token_endpoint(broker.broker_issuer()))?;
    let mut request = match form.one("grant_type")? {
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => ExchangeRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            resource: form.all("resource"),
            audience: form.all("audience"),
            scope: form.text("scope")?,
            requested_token_type: form.text("requested_token_type")?,
            subject_token: Token::new(form.text("subject_token")?),
            subject_token_type: form.text("subject_token_type")?,
            actor_token: Token::new(form.text("actor_token")?),
            actor_token_type: form.text("actor_token_type")?,
            task_id: form.text("task_id")?,
            session_id: form.text("session_id")?,
            purpose: form.text("purpose")?,
            authorization_details: form.text("authorization_details")?,
            ..ExchangeRequest::default()
        },
        // RFC 7523 §2.1: the workload's own assertion is the subject; there is no actor.
        Some(GRANT_TYPE_JWT_BEARER) => ExchangeRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            resource: form.all("resource"),
            audience: form.all("audience"),
            scope: form.text("scope")?,
            subject_token: Token::new(
                form.one("assertion")?.ok_or_else(|| Error::invalid_request("assertion is required"))?,
            ),
            subject_token_type: TOKEN_TYPE_JWT.into(),
            task_id: form.text("task_id")?,
            session_id: form.text("session_id")?,
            purpose: form.text("purpose")?,
            authorization_details: form.text("authorization_details")?,
            ..ExchangeRequest::default()
        },
        Some(_) => return Err(Error::new(ErrorCode::UnsupportedGrantType, "grant_type is not supported")),
        None => return Err(Error::invalid_request("grant_type is required")),
    };
    request.dpop = proof;
    // RFC 8705 §3: over mTLS, a token for an audience that wants it is bound to this certificate.
    request.client_certificate_sha256 = peer.1.as_ref().map(|c| c.sha256);
    let issued = current.exchange_ms(client, request, now_ms()).await?;
    let mut answer = json!({
        "access_token": issued.access_token.expose(),
        "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "token_type": issued.token_type,
        "expires_in": issued.expires_in,
        "scope": issued.scope.as_str(),
    });
    // RFC 9396 §7: the granted details, as a JSON array (not a string) in the JSON response.
    if let Some(details) = &issued.claims.authorization_details {
        answer["authorization_details"] = json!(details);
    }
    Ok(answer)
}

async fn introspect(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let signed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with(INTROSPECTION_JWT_MEDIA)));
    let mut audience = String::new();
    let result = async {
        let body = read(body)?;
        let form = Form::parse(&headers, &body)?;
        let current = broker.current();
        let client = caller(&current, &headers, &form, &peer, Rpc::Introspect).await?;
        audience.clone_from(&client.client.id);
        form.one("token_type_hint")?;
        let token = Token::new(form.one("token")?.ok_or_else(|| Error::invalid_request("token is required"))?);
        Ok(match current.introspect(client, &token, now()).await? {
            Introspection::Inactive => json!({ "active": false }),
            // RFC 7662 §2.2, plus the delegation chain and the task binding.
            Introspection::Active(c) => {
                let mut answer = json!({
                    "active": true,
                    "scope": c.scope.as_str(),
                    "client_id": c.client_id,
                    "token_type": c.token_type(),
                    "exp": c.exp,
                    "iat": c.iat,
                    "nbf": c.nbf,
                    "sub": c.sub,
                    "aud": c.aud,
                    "iss": c.iss,
                    "jti": c.jti,
                    "task_id": c.task_id,
                });
                if let Some(details) = &c.authorization_details {
                    answer["authorization_details"] = json!(details);
                }
                if let Some(act) = &c.act {
                    answer["act"] = actor_json(act);
                }
                if let Some(session) = &c.session_id {
                    answer["session_id"] = session.as_str().into();
                }
                // RFC 9449 §6.2, RFC 8705 §3.2: the key the token is bound to.
                if let Some(cnf) = &c.cnf {
                    answer["cnf"] = json!({ "jkt": cnf.jkt, "x5t#S256": cnf.x5t_s256 });
                    if let Some(cnf) = answer["cnf"].as_object_mut() {
                        cnf.retain(|_, v| !v.is_null());
                    }
                }
                answer
            }
        })
    }
    .await;
    match result {
        // RFC 9701 §5: the answer as a JWT signed by the broker, for the client that asked.
        Ok(introspection) if signed => {
            let document = json!({
                "iss": broker.broker_issuer(),
                "aud": audience,
                "iat": now(),
                "token_introspection": introspection,
            });
            match broker.keyring().sign_document(INTROSPECTION_JWT, &document) {
                Ok(jwt) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, HeaderValue::from_static(INTROSPECTION_JWT_MEDIA))],
                    no_store(),
                    jwt,
                )
                    .into_response(),
                Err(error) => error_response(error),
            }
        }
        other => answer(other),
    }
}

fn actor_json(a: &Actor) -> Value {
    let mut v = json!({ "sub": a.sub });
    if let Some(iss) = &a.iss {
        v["iss"] = iss.as_str().into();
    }
    if let Some(inner) = &a.act {
        v["act"] = actor_json(inner);
    }
    v
}

async fn revoke(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read(body)?;
        let form = Form::parse(&headers, &body)?;
        let current = broker.current();
        let client = caller(&current, &headers, &form, &peer, Rpc::Revoke).await?;
        form.one("token_type_hint")?;
        let reason = form.text("reason")?;
        let targets = [
            form.one("token")?.map(|t| RevokeRequest::Token(Token::new(t))),
            form.one("jti")?.map(|j| RevokeRequest::Jti(j.to_string())),
            form.one("task_id")?.map(|t| RevokeRequest::Task(t.to_string())),
            match (form.one("subject")?, form.one("issuer")?) {
                (Some(sub), Some(issuer)) => Some(RevokeRequest::Subject { issuer: issuer.into(), sub: sub.into() }),
                (None, None) => None,
                _ => return Err(Error::invalid_request("subject and issuer go together")),
            },
            // `client_id` is the caller's own (client_secret_post): the client to revoke has its own name.
            form.one("target_client_id")?.map(|c| RevokeRequest::Client(c.into())),
        ];
        let mut targets = targets.into_iter().flatten();
        let (Some(target), None) = (targets.next(), targets.next()) else {
            return Err(Error::invalid_request("name exactly one revocation target"));
        };
        let rfc7009 = matches!(target, RevokeRequest::Token(_));
        match current.revoke(client, target, &reason, now()).await {
            Ok(revoked) => Ok(json!({ "revoked": revoked.target.kind(), "expires_at": revoked.expires_at })),
            // RFC 7009 §2.2: a token that is not valid is answered 200 all the same (it is audited as refused).
            Err(e) if rfc7009 && e.code == ErrorCode::InvalidRequest => Ok(json!({})),
            Err(e) => Err(e),
        }
    }
    .await;
    answer(result)
}

/// The principal (`subject` with `issuer`) or client (`target_client_id`: `client_id` is the caller's own in
/// `client_secret_post`) a suspend or resume form names.
fn suspension_target(form: &Form<'_>) -> Result<SuspendRequest, Error> {
    match (form.one("subject")?, form.one("issuer")?, form.one("target_client_id")?) {
        (Some(sub), Some(issuer), None) => Ok(SuspendRequest::Subject { issuer: issuer.into(), sub: sub.into() }),
        (None, None, Some(id)) => Ok(SuspendRequest::Client(id.into())),
        _ => Err(Error::invalid_request("name a subject with its issuer, or a target_client_id")),
    }
}

async fn suspend(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read(body)?;
        let form = Form::parse(&headers, &body)?;
        let current = broker.current();
        let client = caller(&current, &headers, &form, &peer, Rpc::Suspend).await?;
        let duration = match form.one("duration_seconds")? {
            None => 0,
            Some(d) => d.parse().map_err(|_| Error::invalid_request("duration_seconds is a number of seconds"))?,
        };
        let suspended =
            current.suspend(client, suspension_target(&form)?, duration, &form.text("reason")?, now()).await?;
        Ok(json!({ "suspended": suspended.target.kind(), "suspended_until": suspended.until }))
    }
    .await;
    answer(result)
}

async fn resume(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = read(body)?;
        let form = Form::parse(&headers, &body)?;
        let current = broker.current();
        let client = caller(&current, &headers, &form, &peer, Rpc::Suspend).await?;
        let resumed = current.resume(client, suspension_target(&form)?, &form.text("reason")?, now()).await?;
        Ok(json!({ "resumed": resumed.kind() }))
    }
    .await;
    answer(result)
}

/// A step-up approval as JSON: its record, with `status` as of now (`expired` once past `expires_at`).
fn approval_json(approval: crate::approval::Approval) -> Result<Value, Error> {
    let state = approval.state(now());
    let mut body = serde_json::to_value(approval).map_err(|e| Error::internal(format!("approval: {e}")))?;
    if let Some(fields) = body.as_object_mut() {
        fields.insert("status".into(), state.into());
    }
    Ok(body)
}

/// The approval id of the path; one that does not decode is `invalid_request`.
fn approval_id(id: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    id.map(|Path(id)| id).map_err(|_| Error::invalid_request("approval_id is not an approval id"))
}

/// `GET /approvals/{id}`: the requester (its own exchange's approval) or an approver polls it. Credentials
/// as on every endpoint (Basic, mTLS, the loopback client); a GET has no form for client assertions.
async fn approval(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let id = approval_id(id)?;
        let current = broker.current();
        let client = caller_for(&current, &headers, &Form(Vec::new()), &peer, &[Rpc::Exchange, Rpc::Approve]).await?;
        approval_json(current.approval(client, &id, now()).await?)
    }
    .await;
    answer(result)
}

/// `POST /approvals/{id}/approve` and `/deny`: an approver's decision, with an optional `reason` in the
/// form (an empty body is an empty form).
async fn decide(
    broker: Arc<Broker>,
    peer: Peer,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    verdict: crate::approval::Verdict,
) -> Response {
    let result = async {
        let id = approval_id(id)?;
        let body = read(body)?;
        let form = if body.is_empty() { Form(Vec::new()) } else { Form::parse(&headers, &body)? };
        let current = broker.current();
        let client = caller(&current, &headers, &form, &peer, Rpc::Approve).await?;
        approval_json(current.decide_approval(client, &id, verdict, &form.text("reason")?, now()).await?)
    }
    .await;
    answer(result)
}

async fn approve(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    decide(broker, peer, id, headers, body, crate::approval::Verdict::Approve).await
}

async fn deny(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    decide(broker, peer, id, headers, body, crate::approval::Verdict::Deny).await
}

async fn jwks(State(broker): State<Arc<Broker>>) -> Response {
    let cache = format!("public, max-age={JWKS_MAX_AGE_SECONDS}");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json")),
            (header::CACHE_CONTROL, HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("no-cache"))),
        ],
        broker.keyring().jwks_json().to_string(),
    )
        .into_response()
}

/// RFC 8414: exactly what this broker supports, every URL under its issuer.
async fn metadata(State(broker): State<Arc<Broker>>) -> Response {
    let issuer = broker.broker_issuer().trim_end_matches('/');
    let current = broker.current();
    let auth_methods = auth_methods(current.clients());
    let signing_algs = current.issuers().client_assertion_algorithms();
    let mut body = json!({
        "issuer": broker.broker_issuer(),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE, GRANT_TYPE_JWT_BEARER],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_signing_alg_values_supported": [broker.keyring().signing_alg()],
        "scopes_supported": current.catalog().scopes().collect::<Vec<_>>(),
        // RFC 9449 §5.1.
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
    });
    // RFC 9396 §10.1: the detail types an exchange may ask for, when the catalog has any.
    let detail_types = current.catalog().detail_types();
    if !detail_types.is_empty() {
        body["authorization_details_types_supported"] = json!(detail_types);
    }
    // RFC 8414 §2: the signing algorithms go with the JWT-based methods (required with `private_key_jwt`), so
    // they are listed only when one is accepted.
    if auth_methods.iter().any(|m| *m == "private_key_jwt" || *m == AUTH_METHOD_SPIFFE_JWT) && !signing_algs.is_empty()
    {
        for endpoint in ["token", "introspection", "revocation"] {
            body[format!("{endpoint}_endpoint_auth_signing_alg_values_supported")] = json!(signing_algs);
        }
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The RFC 8414 name of SPIFFE JWT-SVID client authentication, as tessera lists it (the SPIFFE client-auth
/// draft's `client_assertion_type` is [`crate::client::ASSERTION_TYPE_JWT_SPIFFE`]; no method name is registered yet).
pub const AUTH_METHOD_SPIFFE_JWT: &str = "spiffe_jwt";

/// The client authentication methods this configuration accepts, as RFC 8414 names them: the secret methods
/// unless `broker.client_secrets` forbids them, `private_key_jwt` when a client has an `assertion_issuer`,
/// [`AUTH_METHOD_SPIFFE_JWT`] when a client has `spiffe_ids`.
fn auth_methods(clients: &crate::client::Clients) -> Vec<&'static str> {
    let mut methods = Vec::new();
    if clients.auth().secrets == crate::client::ClientSecrets::Allowed {
        methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    if clients.iter().any(|c| c.assertion_issuer().is_some()) {
        methods.push("private_key_jwt");
    }
    if clients.iter().any(|c| !c.spiffe_ids().is_empty()) {
        methods.push(AUTH_METHOD_SPIFFE_JWT);
    }
    methods
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn form_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers
    }

    proptest! {
        #![proptest_config(crate::fuzz_cases(256))]

        /// Any body, under any content type: parsing answers (a form or `invalid_request`), never panics.
        #[test]
        fn form_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), content_type in ".{0,60}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            if let Err(e) = Form::parse(&headers, &body) {
                prop_assert_eq!(e.code, ErrorCode::InvalidRequest);
            }
            let _ = Form::parse(&form_headers(), &body);
        }

        /// What a client encodes is what the face reads back, field by field, up to the field limit; past it
        /// the form is refused whole.
        #[test]
        fn forms_round_trip(fields in proptest::collection::vec(("[^\u{FFFD}]{0,16}", "[^\u{FFFD}]{0,64}"), 0..40)) {
            let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish();
            match Form::parse(&form_headers(), body.as_bytes()) {
                Ok(form) => {
                    prop_assert!(fields.len() <= MAX_FORM_FIELDS);
                    let read: Vec<(String, String)> =
                        form.0.into_iter().map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
                    prop_assert_eq!(read, fields);
                }
                Err(e) => {
                    prop_assert!(fields.len() > MAX_FORM_FIELDS, "{:?} refused: {}", fields, e.description);
                }
            }
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused_and_an_empty_one_is_absent() {
        let form = Form::parse(&form_headers(), b"scope=a&scope=b&task_id=").unwrap();
        assert_eq!(form.one("scope").unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(form.one("task_id").unwrap(), None);
        assert_eq!(form.all("scope"), ["a", "b"]);
    }
}
