//! The gRPC face: a thin adapter from `tessera.v1.TokenBroker` to the broker's domain functions. An OAuth
//! error becomes a status with the code [`crate::ErrorCode::grpc_code`] names and an `ErrorInfo` detail.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use std::future::Future;

use crate::load::Slots;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::broker::{Broker, Current};
use crate::client::{Caller, Credentials, Presented, Rpc};
use crate::clock::{now, now_ms};
use crate::error::{Error, ErrorCode};
use crate::exchange::{ExchangeRequest, Issued, TOKEN_TYPE_ACCESS_TOKEN};
use crate::introspect::Introspection;
use crate::revocation::{RevokeRequest, SuspendRequest};
use crate::secret::Token;
use crate::token::Actor;

/// Generated protobuf and gRPC code for `tessera.v1`.
pub mod pb {
    tonic::include_proto!("tessera.v1");
    /// The descriptor set served by gRPC reflection.
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");
}

use pb::token_broker_server::TokenBroker;

/// The gRPC service name, as in `rpc.service`.
const SERVICE: &str = "tessera.v1.TokenBroker";

/// The gRPC metadata of a client assertion (RFC 7521 §4.2's form parameters, spelled as metadata keys).
pub const METADATA_CLIENT_ASSERTION_TYPE: &str = "client-assertion-type";
/// The client assertion itself (a JWT): see [`METADATA_CLIENT_ASSERTION_TYPE`].
pub const METADATA_CLIENT_ASSERTION: &str = "client-assertion";
/// An optional client id sent with a client assertion: it must name the assertion's client.
pub const METADATA_CLIENT_ID: &str = "client-id";

/// The error domain of every `google.rpc.ErrorInfo` the broker returns.
const ERROR_DOMAIN: &str = "tessera";

/// OAuth error code → gRPC status, with the code as the `reason` of an `ErrorInfo` detail (the design's
/// API contract). The message is the error's description, which never holds a token or a secret.
///
/// A refusal that knows when a retry can succeed (a rate limit) also carries a `google.rpc.RetryInfo`
/// detail with that delay, which gRPC clients' retry helpers read, and a `retry-after` metadata entry in
/// whole seconds rounded up (as HTTP's `Retry-After`), for clients that do not decode status details.
///
/// `authorization_pending` names its approval in the `ErrorInfo` metadata (`approval_id`, `approval_uri`,
/// `interval`) and asks for that interval between polls in a `RetryInfo`.
fn status(error: Error) -> Status {
    let Error { code, description, retry_after, approval } = error;
    let mut metadata = HashMap::new();
    let retry_after = match approval {
        Some(pending) => {
            metadata.insert("approval_id".to_string(), pending.approval_id);
            metadata.insert("approval_uri".to_string(), pending.approval_uri);
            metadata.insert("interval".to_string(), pending.interval.to_string());
            Some(std::time::Duration::from_secs(pending.interval))
        }
        None => retry_after,
    };
    let mut details = ErrorDetails::with_error_info(code.as_str(), ERROR_DOMAIN, metadata);
    if retry_after.is_some() {
        details.set_retry_info(retry_after);
    }
    let mut status =
        Status::with_error_details(Code::from_i32(code.grpc_code()), format!("{code}: {description}"), details);
    if let Some(wait) = retry_after {
        status.metadata_mut().insert("retry-after", crate::error::retry_after_seconds(wait).into());
    }
    status
}

/// The `TokenBroker` service over a shared broker.
///
/// Its RPCs share a ceiling on how many run at once (`server.max_concurrent_requests`): past it, callers wait
/// for a slot (backpressure) within the request timeout. The ceiling is the broker's alone, so gRPC health
/// checks and reflection on the same server answer however busy it is.
#[derive(Clone, Debug)]
pub(crate) struct TokenBrokerService {
    broker: Arc<Broker>,
    slots: Slots,
}

/// Reads W3C `traceparent`/`tracestate` from gRPC request metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// gRPC codes that make a server span an error (OpenTelemetry RPC semantic conventions).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

impl TokenBrokerService {
    /// The service, running its RPCs in `slots` (shared with the HTTP face).
    pub(crate) fn new(broker: Arc<Broker>, slots: Slots) -> TokenBrokerService {
        TokenBrokerService { broker, slots }
    }

    /// A slot among the broker operations in flight, or RESOURCE_EXHAUSTED when none frees up in time.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.slots.acquire().await.map_err(status)
    }

    /// Runs one RPC inside its server span — named and attributed per the OpenTelemetry RPC conventions,
    /// parented on the caller's `traceparent` — and records its latency.
    async fn rpc<T, R, F>(
        &self,
        method: &'static str,
        full_name: &'static str,
        request: Request<T>,
        handler: impl FnOnce(Request<T>) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<R, Status>>,
    {
        use opentelemetry::propagation::TextMapPropagator as _;
        use tracing::Instrument as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::info_span!(
            "rpc",
            otel.name = full_name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = SERVICE,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&MetadataExtractor(request.metadata()));
        let _ = span.set_parent(parent);
        let start = std::time::Instant::now();
        // The wait for a slot is part of the RPC's latency, as its caller sees it. On the heap: a handler's
        // state machine is kilobytes, and each async layer above (this one, the trait method, tonic's) would
        // otherwise copy it whole as it is built.
        let result = Box::pin(
            async {
                let _slot = self.slot().await?;
                handler(request).await
            }
            .instrument(span.clone()),
        )
        .await;
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
        let attrs = [
            opentelemetry::KeyValue::new("rpc.method", method),
            opentelemetry::KeyValue::new("rpc.grpc.status_code", code as i64),
        ];
        self.broker.metrics().rpc_duration.record(start.elapsed().as_secs_f64(), &attrs);
        result.map(Response::new)
    }

    /// The `dpop` metadata entry of an `ExchangeToken` call: a DPoP proof (RFC 9449) with `htm` `POST` and `htu`
    /// the RPC's URL under the broker's issuer ([`crate::dpop::grpc_exchange_htu`]). At most one.
    fn dpop(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Option<crate::dpop::Presented>, Error> {
        let refused = |why: &str| Error::new(ErrorCode::InvalidDpopProof, why);
        let mut values = metadata.get_all("dpop").iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(None),
            (Some(_), Some(_)) => return Err(refused("more than one dpop metadata entry")),
            (Some(value), None) => value,
        };
        let proof = value.to_str().map_err(|_| refused("the dpop metadata entry is not text"))?;
        Ok(Some(crate::dpop::Presented {
            proof: Token::new(proof.trim()),
            htm: "POST".into(),
            htu: crate::dpop::grpc_exchange_htu(self.broker.broker_issuer()),
        }))
    }

    /// Who is calling: HTTP Basic in the `authorization` metadata, or a client assertion in the
    /// `client-assertion-type` and `client-assertion` metadata (with an optional `client-id`, which must then
    /// name the same client), never both; or the loopback client. The assertion is verified here, before any
    /// work; the operation spends it.
    async fn caller<'b, T>(
        &self,
        broker: &'b Current<'_>,
        request: &Request<T>,
        rpc: Rpc,
    ) -> Result<Caller<'b>, Status> {
        self.caller_over(broker, request, peer_certificate(request).map(Arc::new), &[rpc]).await
    }

    /// Approve or Deny: an approver's decision.
    async fn decide(
        &self,
        request: Request<pb::DecideApprovalRequest>,
        verdict: crate::approval::Verdict,
    ) -> Result<pb::Approval, Status> {
        let broker = self.broker.current();
        let client = self.caller(&broker, &request, Rpc::Approve).await?;
        let pb::DecideApprovalRequest { approval_id, reason } = request.into_inner();
        Ok(broker.decide_approval(client, &approval_id, verdict, &reason, now()).await.map_err(status)?.into())
    }

    /// As [`Self::caller`], with the connection's client certificate already read (an exchange also binds
    /// the token to it: read once).
    async fn caller_over<'b, T>(
        &self,
        broker: &'b Current<'_>,
        request: &Request<T>,
        certificate: Option<Arc<crate::client::PeerCertificate>>,
        rpcs: &[Rpc],
    ) -> Result<Caller<'b>, Status> {
        let metadata = request.metadata();
        // A value that is not visible ASCII cannot be a credential: it fails as a malformed one.
        let text = |name: &str| metadata.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
        let presented = Presented {
            authorization: text("authorization"),
            client_id: text(METADATA_CLIENT_ID),
            client_secret: None,
            client_assertion_type: text(METADATA_CLIENT_ASSERTION_TYPE),
            client_assertion: text(METADATA_CLIENT_ASSERTION),
            peer_is_loopback: request.remote_addr().is_some_and(|a| a.ip().is_loopback()),
        };
        let credentials = Credentials::from_presented(&presented).map_err(status)?;
        let credentials = credentials.over(certificate);
        broker.authenticate_for(&credentials, rpcs, now()).await.map_err(status)
    }
}

impl From<crate::approval::Approval> for pb::Approval {
    fn from(a: crate::approval::Approval) -> Self {
        let state = a.state(now()).to_string();
        let named = |n: crate::approval::Named| pb::Subject { issuer: n.iss, sub: n.sub };
        pb::Approval {
            approval_id: a.approval_id,
            status: state,
            client_id: a.client_id,
            subject: Some(named(a.subject)),
            actors: a.actors.into_iter().map(named).collect(),
            audience: a.audience,
            scope: a.scope,
            approval_scope: a.approval_scope,
            authorization_details: a.authorization_details.map(|d| d.to_string()).unwrap_or_default(),
            task_id: a.task_id,
            session_id: a.session_id.unwrap_or_default(),
            purpose: a.purpose.unwrap_or_default(),
            reasons: a.reasons,
            policies: a.policies,
            created_at: a.created_at,
            expires_at: a.expires_at,
            decided_by: a.decided_by.unwrap_or_default(),
            decided_at: a.decided_at.unwrap_or_default(),
            decision_reason: a.decision_reason.unwrap_or_default(),
            used_at: a.used_at.unwrap_or_default(),
            jti: a.jti.unwrap_or_default(),
        }
    }
}

/// The client certificate the TLS handshake verified, if the connection is mTLS.
fn peer_certificate<T>(request: &Request<T>) -> Option<crate::client::PeerCertificate> {
    crate::net::tls::peer_certificate(request.peer_certs().as_deref().map(Vec::as_slice))
}

/// A watch stream as gRPC sends it: each event, a heartbeat when a read finds none, and the error that ends it.
fn watch_stream(watch: crate::revocation::watch::Watch) -> WatchStream {
    use crate::revocation::watch::Event;
    use pb::watch_revocations_response::Kind;
    let state = (watch, std::collections::VecDeque::<Event>::new(), false);
    Box::pin(futures_util::stream::unfold(state, |(mut watch, mut pending, ended)| async move {
        if ended {
            return None;
        }
        if let Some(event) = pending.pop_front() {
            return Some((
                Ok(pb::WatchRevocationsResponse { kind: Some(Kind::Event(event.into())) }),
                (watch, pending, false),
            ));
        }
        match watch.next().await {
            Ok(events) if events.is_empty() => {
                let heartbeat = pb::WatchHeartbeat { cursor: watch.cursor().to_string(), server_time: now() };
                Some((
                    Ok(pb::WatchRevocationsResponse { kind: Some(Kind::Heartbeat(heartbeat)) }),
                    (watch, pending, false),
                ))
            }
            Ok(events) => {
                pending.extend(events);
                let first = pending.pop_front().map(|e| Kind::Event(e.into()));
                Some((Ok(pb::WatchRevocationsResponse { kind: first }), (watch, pending, false)))
            }
            Err(e) => Some((Err(status(e)), (watch, pending, true))),
        }
    }))
}

type WatchStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send>>;

impl From<crate::revocation::watch::Event> for pb::RevocationEvent {
    fn from(e: crate::revocation::watch::Event) -> Self {
        use crate::revocation::Target;
        let kind = e.target.kind().to_string();
        let (value, issuer) = match e.target {
            Target::Jti(v) | Target::Task(v) | Target::Client(v) => (v, String::new()),
            Target::Subject { iss, sub } => (sub, iss),
        };
        pb::RevocationEvent {
            cursor: e.cursor,
            kind,
            value,
            issuer,
            revoked_at: e.revoked_at,
            expires_at: e.expires_at,
            reason_class: e.cause.as_str().into(),
            reason: e.reason,
        }
    }
}

#[tonic::async_trait]
impl TokenBroker for TokenBrokerService {
    type WatchRevocationsStream = WatchStream;

    /// Authenticated and opened in a slot like any RPC; the stream then runs outside the slots, which bound
    /// work in flight, not idle watchers.
    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        self.rpc("WatchRevocations", "tessera.v1.TokenBroker/WatchRevocations", request, async |request| {
            let broker = self.broker.current();
            let client = self.caller(&broker, &request, Rpc::Watch).await?;
            let watch = broker.watch(client, &request.into_inner().cursor, now()).await.map_err(status)?;
            Ok(watch_stream(watch))
        })
        .await
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        self.rpc("ExchangeToken", "tessera.v1.TokenBroker/ExchangeToken", request, async |request| {
            // One set of issuers, clients, catalog and policy for the whole call, even across a reload.
            let broker = self.broker.current();
            let certificate = peer_certificate(&request).map(Arc::new);
            // RFC 8705 §3: over mTLS, a token for an audience that wants it is bound to this certificate.
            let bound_to = certificate.as_ref().map(|c| c.sha256);
            let client = self.caller_over(&broker, &request, certificate, &[Rpc::Exchange]).await?;
            let proof = self.dpop(request.metadata()).map_err(status)?;
            let mut exchange: ExchangeRequest = request.into_inner().into();
            exchange.dpop = proof;
            exchange.client_certificate_sha256 = bound_to;
            let issued = broker.exchange_ms(client, exchange, now_ms()).await.map_err(status)?;
            Ok(issued.into())
        })
        .await
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        self.rpc("Introspect", "tessera.v1.TokenBroker/Introspect", request, async |request| {
            // One set of issuers, clients, catalog and policy for the whole call, even across a reload.
            let broker = self.broker.current();
            let client = self.caller(&broker, &request, Rpc::Introspect).await?;
            let token = Token::new(request.into_inner().token);
            Ok(broker.introspect(client, &token, now()).await.map_err(status)?.into())
        })
        .await
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        self.rpc("Revoke", "tessera.v1.TokenBroker/Revoke", request, async |request| {
            // One set of issuers, clients, catalog and policy for the whole call, even across a reload.
            let broker = self.broker.current();
            let client = self.caller(&broker, &request, Rpc::Revoke).await?;
            let pb::RevokeRequest { target, reason } = request.into_inner();
            let target = target.ok_or_else(|| status(Error::invalid_request("a revocation target is required")))?;
            let revoked = broker.revoke(client, target.into(), &reason, now()).await.map_err(status)?;
            Ok(pb::RevokeResponse { kind: revoked.target.kind().into(), expires_at: revoked.expires_at })
        })
        .await
    }

    async fn suspend(&self, request: Request<pb::SuspendRequest>) -> Result<Response<pb::SuspendResponse>, Status> {
        self.rpc("Suspend", "tessera.v1.TokenBroker/Suspend", request, async |request| {
            // One set of issuers, clients, catalog and policy for the whole call, even across a reload.
            let broker = self.broker.current();
            let client = self.caller(&broker, &request, Rpc::Suspend).await?;
            let pb::SuspendRequest { target, duration_seconds, reason } = request.into_inner();
            let target = suspension_target(target.map(Into::into))?;
            let suspended = broker.suspend(client, target, duration_seconds, &reason, now()).await.map_err(status)?;
            Ok(pb::SuspendResponse { kind: suspended.target.kind().into(), suspended_until: suspended.until })
        })
        .await
    }

    async fn resume(&self, request: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        self.rpc("Resume", "tessera.v1.TokenBroker/Resume", request, async |request| {
            // One set of issuers, clients, catalog and policy for the whole call, even across a reload.
            let broker = self.broker.current();
            let client = self.caller(&broker, &request, Rpc::Suspend).await?;
            let pb::ResumeRequest { target, reason } = request.into_inner();
            let target = suspension_target(target.map(Into::into))?;
            let resumed = broker.resume(client, target, &reason, now()).await.map_err(status)?;
            Ok(pb::ResumeResponse { kind: resumed.kind().into() })
        })
        .await
    }

    async fn get_approval(&self, request: Request<pb::GetApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        self.rpc("GetApproval", "tessera.v1.TokenBroker/GetApproval", request, async |request| {
            let broker = self.broker.current();
            let certificate = peer_certificate(&request).map(Arc::new);
            let client = self.caller_over(&broker, &request, certificate, &[Rpc::Exchange, Rpc::Approve]).await?;
            let id = request.into_inner().approval_id;
            Ok(broker.approval(client, &id, now()).await.map_err(status)?.into())
        })
        .await
    }

    async fn approve(&self, request: Request<pb::DecideApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        self.rpc("Approve", "tessera.v1.TokenBroker/Approve", request, async |request| {
            self.decide(request, crate::approval::Verdict::Approve).await
        })
        .await
    }

    async fn deny(&self, request: Request<pb::DecideApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        self.rpc("Deny", "tessera.v1.TokenBroker/Deny", request, async |request| {
            self.decide(request, crate::approval::Verdict::Deny).await
        })
        .await
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        let _slot = self.slot().await?;
        let keyring = self.broker.keyring();
        let keys = keyring
            .jwks()
            .keys
            .iter()
            .map(|k| pb::Jwk {
                kty: k.kty.clone(),
                crv: k.crv.clone().unwrap_or_default(),
                x: k.x.clone().unwrap_or_default(),
                y: k.y.clone().unwrap_or_default(),
                kid: k.kid.clone().unwrap_or_default(),
                alg: k.alg.clone().unwrap_or_default(),
                r#use: k.use_.clone().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse { keys, jwks_json: keyring.jwks_json().to_string() }))
    }
}

impl From<pb::ExchangeTokenRequest> for ExchangeRequest {
    fn from(r: pb::ExchangeTokenRequest) -> Self {
        ExchangeRequest {
            grant_type: r.grant_type,
            resource: r.resource,
            audience: r.audience,
            scope: r.scope,
            requested_token_type: r.requested_token_type,
            subject_token: Token::new(r.subject_token),
            subject_token_type: r.subject_token_type,
            actor_token: Token::new(r.actor_token),
            actor_token_type: r.actor_token_type,
            task_id: r.task_id,
            session_id: r.session_id,
            purpose: r.purpose,
            requested_expires_in: r.requested_expires_in,
            authorization_details: r.authorization_details,
            ..ExchangeRequest::default()
        }
    }
}

impl From<pb::revoke_request::Target> for RevokeRequest {
    fn from(t: pb::revoke_request::Target) -> Self {
        use pb::revoke_request::Target as T;
        match t {
            T::Token(token) => RevokeRequest::Token(Token::new(token)),
            T::Jti(jti) => RevokeRequest::Jti(jti),
            T::TaskId(task) => RevokeRequest::Task(task),
            T::Subject(s) => RevokeRequest::Subject { issuer: s.issuer, sub: s.sub },
            T::ClientId(id) => RevokeRequest::Client(id),
        }
    }
}

impl From<&Actor> for pb::Actor {
    fn from(a: &Actor) -> Self {
        pb::Actor {
            sub: a.sub.clone(),
            iss: a.iss.clone().unwrap_or_default(),
            act: a.act.as_deref().map(|a| Box::new(a.into())),
        }
    }
}

impl From<Introspection> for pb::IntrospectResponse {
    fn from(answer: Introspection) -> Self {
        match answer {
            Introspection::Inactive => pb::IntrospectResponse::default(),
            Introspection::Active(c) => pb::IntrospectResponse {
                active: true,
                token_type: c.token_type().into(),
                cnf: c.cnf.as_ref().map(|cnf| pb::Confirmation {
                    jkt: cnf.jkt.clone().unwrap_or_default(),
                    x5t_s256: cnf.x5t_s256.clone().unwrap_or_default(),
                }),
                act: c.act.as_ref().map(Into::into),
                scope: c.scope.to_string(),
                client_id: c.client_id.clone(),
                username: String::new(),
                exp: c.exp,
                iat: c.iat,
                nbf: c.nbf,
                sub: c.sub.clone(),
                aud: c.aud.clone(),
                iss: c.iss.clone(),
                jti: c.jti.clone(),
                task_id: c.task_id.clone(),
                session_id: c.session_id.clone().unwrap_or_default(),
                authorization_details: c.authorization_details.as_ref().map(|d| d.to_json()).unwrap_or_default(),
            },
        }
    }
}

impl From<Issued> for pb::ExchangeTokenResponse {
    fn from(issued: Issued) -> Self {
        pb::ExchangeTokenResponse {
            access_token: issued.access_token.expose().to_string(),
            issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.to_string(),
            token_type: issued.token_type.to_string(),
            expires_in: issued.expires_in,
            scope: issued.scope.to_string(),
            authorization_details: issued
                .claims
                .authorization_details
                .as_ref()
                .map(|d| d.to_json())
                .unwrap_or_default(),
        }
    }
}

// Hand-written so that no `{:?}` of a request or response (tonic's, a test's, a log's) prints a token.
impl fmt::Debug for pb::ExchangeTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeTokenRequest")
            .field("grant_type", &self.grant_type)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token", &"[redacted]")
            .field("actor_token_type", &self.actor_token_type)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for pb::ExchangeTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeTokenResponse")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for pb::IntrospectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectRequest")
            .field("token", &"[redacted]")
            .field("token_type_hint", &self.token_type_hint)
            .finish()
    }
}

impl fmt::Debug for pb::RevokeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest").field("target", &self.target).field("reason", &self.reason).finish()
    }
}

impl fmt::Debug for pb::revoke_request::Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pb::revoke_request::Target as T;
        match self {
            T::Token(_) => f.write_str("Token([redacted])"),
            T::Jti(jti) => f.debug_tuple("Jti").field(jti).finish(),
            T::TaskId(task) => f.debug_tuple("TaskId").field(task).finish(),
            T::Subject(s) => f.debug_tuple("Subject").field(s).finish(),
            T::ClientId(id) => f.debug_tuple("ClientId").field(id).finish(),
        }
    }
}

fn suspension_target(target: Option<SuspendRequest>) -> Result<SuspendRequest, Status> {
    target.ok_or_else(|| status(Error::invalid_request("a suspension target is required")))
}

impl From<pb::suspend_request::Target> for SuspendRequest {
    fn from(t: pb::suspend_request::Target) -> Self {
        match t {
            pb::suspend_request::Target::Subject(s) => SuspendRequest::Subject { issuer: s.issuer, sub: s.sub },
            pb::suspend_request::Target::ClientId(id) => SuspendRequest::Client(id),
        }
    }
}

impl From<pb::resume_request::Target> for SuspendRequest {
    fn from(t: pb::resume_request::Target) -> Self {
        match t {
            pb::resume_request::Target::Subject(s) => SuspendRequest::Subject { issuer: s.issuer, sub: s.sub },
            pb::resume_request::Target::ClientId(id) => SuspendRequest::Client(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_oauth_code_maps_to_the_contracted_status() {
        for (code, expected) in [
            (ErrorCode::InvalidRequest, Code::InvalidArgument),
            (ErrorCode::UnsupportedGrantType, Code::InvalidArgument),
            (ErrorCode::InvalidClient, Code::Unauthenticated),
            (ErrorCode::InvalidGrant, Code::Unauthenticated),
            (ErrorCode::UnauthorizedClient, Code::PermissionDenied),
            (ErrorCode::InvalidScope, Code::PermissionDenied),
            (ErrorCode::InvalidTarget, Code::PermissionDenied),
            (ErrorCode::InvalidDpopProof, Code::Unauthenticated),
            (ErrorCode::RateLimited, Code::ResourceExhausted),
            (ErrorCode::Unavailable, Code::Unavailable),
        ] {
            let s = status(Error::new(code, "why"));
            assert_eq!(s.code(), expected, "{code}");
            let info = s.get_details_error_info().expect("ErrorInfo detail");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (code.as_str(), ERROR_DOMAIN));
        }
    }

    #[test]
    fn a_rate_limit_carries_its_retry_hint() {
        let s = status(Error::rate_limited("slow down", std::time::Duration::from_millis(1_250)));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.get_details_error_info().expect("ErrorInfo").reason, "rate_limited");
        let retry = s.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(std::time::Duration::from_millis(1_250)));
        assert_eq!(s.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"), "rounded up");
        let plain = status(Error::new(ErrorCode::Unavailable, "down"));
        assert!(plain.get_details_retry_info().is_none() && plain.metadata().get("retry-after").is_none());
    }

    #[test]
    fn request_debug_leaves_tokens_out() {
        let r = pb::ExchangeTokenRequest {
            subject_token: "eyJhbGciOi.secret.sig".into(),
            actor_token: "eyJactor.secret.sig".into(),
            ..Default::default()
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let r = pb::ExchangeTokenResponse { access_token: "eyJissued.secret.sig".into(), ..Default::default() };
        assert!(!format!("{r:?}").contains("secret"));
        let r = pb::IntrospectRequest { token: "eyJintro.secret.sig".into(), ..Default::default() };
        assert!(!format!("{r:?}").contains("secret"));
        let r = pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token("eyJrevoke.secret.sig".into())),
            reason: "leaked".into(),
        };
        assert!(!format!("{r:?}").contains("secret"));
    }
}
