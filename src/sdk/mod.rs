//! The Rust client of tessera, over the gRPC face: what orchestrators, agents and tool servers written in
//! Rust use, and what the CLI's client commands (`exchange`, `introspect`, `revoke`, `suspend`, `resume`)
//! are built on — one client implementation.
//!
//! - [`Broker`]: `ExchangeToken` with a cache per (subject, audience, scopes, task, actor, details) that
//!   exchanges again shortly before expiry; `Introspect`, `Revoke`, `Suspend`, `Resume`, `GetJwks`; caller
//!   authentication by client secret (HTTP Basic), client assertion (`private_key_jwt` or a SPIFFE JWT-SVID,
//!   fresh per call) or mTLS ([`Credentials`], [`Tls`]);
//! - bounded exponential backoff with jitter and a circuit breaker when the broker is unavailable
//!   ([`resilience`]) — never a fallback to another credential;
//! - [`Broker::with_task`]: a task scope whose end revokes the task, so every credential of the task dies with
//!   it; [`Broker::call_with_token`]: a downstream call that re-exchanges and retries once on a 401;
//! - [`verify::Verifier`]: for resource servers, a token checked offline (the broker's JWK Set, audience,
//!   scopes, time) and online (introspection).
//!
//! A face-side module: it speaks the wire types of [`crate::grpc::pb`]; the core does not depend on it.

pub mod resilience;
pub mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::grpc::pb::{self, token_broker_client::TokenBrokerClient};
use crate::secret::{ClientSecret, Token};
use resilience::{Backoff, BreakerState, CircuitBreaker};

/// RFC 8693 token type of a JWT (upstream assertions).
pub const TOKEN_TYPE_JWT: &str = crate::exchange::TOKEN_TYPE_JWT;
/// RFC 8693 token type of an access token (a tessera token exchanged again).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = crate::exchange::TOKEN_TYPE_ACCESS_TOKEN;

/// What went wrong. Never carries a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The broker refused (`invalid_scope`, `invalid_grant`, `rate_limited`, …): asking again the same way
    /// gets the same answer. `error` is the OAuth code (the ErrorInfo reason).
    #[error("{error}: {}", status.message())]
    Refused {
        /// The OAuth error code.
        error: String,
        /// The broker's answer, with its details (ErrorInfo, RetryInfo).
        status: Box<tonic::Status>,
    },
    /// The broker could not answer on any attempt the backoff allowed; `status` is its last answer, if any.
    #[error("the broker is unavailable: {message}")]
    Unavailable {
        /// What the last attempt met.
        message: String,
        /// The broker's last answer, when it answered (UNAVAILABLE: its store is down).
        status: Option<Box<tonic::Status>>,
    },
    /// The circuit breaker is open: no request was sent.
    #[error("the circuit breaker is open: the broker failed repeatedly")]
    CircuitOpen,
    /// A problem on this side: an address, a TLS file, an assertion that cannot be sent.
    #[error("{0}")]
    Client(String),
}

impl SdkError {
    /// The OAuth error code of a refusal.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            SdkError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The approval an `authorization_pending` answer names (docs/approvals.md): poll it with
    /// [`Broker::approval`] and retry the identical exchange once it is approved.
    pub fn approval_pending(&self) -> Option<PendingApproval> {
        use tonic_types::StatusExt as _;
        let SdkError::Refused { error, status } = self else { return None };
        if error != "authorization_pending" {
            return None;
        }
        let info = status.get_details_error_info()?;
        Some(PendingApproval {
            approval_id: info.metadata.get("approval_id")?.clone(),
            approval_uri: info.metadata.get("approval_uri").cloned().unwrap_or_default(),
            interval: Duration::from_secs(info.metadata.get("interval").and_then(|i| i.parse().ok()).unwrap_or(5)),
        })
    }
}

/// A step-up approval an exchange waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingApproval {
    /// What an approver decides (`tessera approve ID`).
    pub approval_id: String,
    /// Where its state is read over HTTP.
    pub approval_uri: String,
    /// How long to wait between polls.
    pub interval: Duration,
}

/// The kind of a client assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionKind {
    /// `private_key_jwt` (RFC 7523 §2.2).
    JwtBearer,
    /// A SPIFFE JWT-SVID.
    JwtSpiffe,
}

/// Produces a fresh client assertion for each call (the broker accepts each one once).
pub type AssertionSource = Arc<dyn Fn() -> Result<Token, String> + Send + Sync>;

/// How this caller authenticates to the broker (mTLS is [`Tls::identity`]).
#[derive(Clone, Default)]
pub enum Credentials {
    /// None: dev mode's loopback client, or a client known by its mTLS certificate.
    #[default]
    None,
    /// `client_secret_basic`: sent as HTTP Basic in the `authorization` metadata (RFC 6749 §2.3.1).
    ClientSecret {
        /// The client's id.
        client_id: String,
        /// Its secret.
        secret: Arc<ClientSecret>,
    },
    /// A client assertion in the `client-assertion-type` / `client-assertion` metadata, with `client-id`
    /// when given.
    Assertion {
        /// `private_key_jwt` or a JWT-SVID.
        kind: AssertionKind,
        /// The client's id, when the assertion alone does not name it.
        client_id: Option<String>,
        /// Makes the assertion for each call.
        source: AssertionSource,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::ClientSecret { client_id, .. } => write!(f, "ClientSecret({client_id})"),
            Credentials::Assertion { kind, client_id, .. } => write!(f, "Assertion({kind:?}, {client_id:?})"),
        }
    }
}

/// TLS to an `https://` broker: the CA to trust (the system's roots without one), a client certificate and
/// key for mTLS, the name the broker's certificate must carry.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// PEM CA certificates to verify the broker with.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and private key (mTLS).
    pub identity: Option<(Vec<u8>, Arc<Token>)>,
    /// The name the broker's certificate must carry.
    pub domain: Option<String>,
}

/// How to reach a broker.
#[derive(Clone, Debug)]
pub struct Config {
    /// The gRPC face (`http://127.0.0.1:50051`, or `https://…` with [`Config::tls`]).
    pub addr: String,
    /// How this caller authenticates.
    pub credentials: Credentials,
    /// TLS for an `https://` address.
    pub tls: Option<Tls>,
    /// Retries of an unavailable broker.
    pub backoff: Backoff,
    /// Consecutive failed calls that open the breaker, and how long it stays open.
    pub breaker: (u32, Duration),
    /// A cached token is exchanged again this long (or a tenth of its life, if less) before it expires.
    pub refresh_margin: Duration,
}

impl Config {
    /// `addr` with no credentials and the default backoff, breaker and refresh margin.
    pub fn new(addr: impl Into<String>) -> Config {
        Config {
            addr: addr.into(),
            credentials: Credentials::None,
            tls: None,
            backoff: Backoff::default(),
            breaker: (5, Duration::from_secs(10)),
            refresh_margin: Duration::from_secs(30),
        }
    }
}

/// An `ExchangeToken` request (RFC 8693 §2.1 names). Build with [`Exchange::new`] and the setters.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// RFC 8693 `audience` (one, in tessera).
    pub audience: Vec<String>,
    /// RFC 8707 `resource`.
    pub resource: Vec<String>,
    /// Space-delimited scopes asked for.
    pub scope: String,
    /// Who the token is for: an upstream assertion or a tessera token.
    pub subject_token: Arc<Token>,
    /// Its RFC 8693 token type.
    pub subject_token_type: String,
    /// Who will act for the subject.
    pub actor_token: Option<Arc<Token>>,
    /// Its RFC 8693 token type.
    pub actor_token_type: String,
    /// The task the token is bound to.
    pub task_id: String,
    /// The session of the task.
    pub session_id: String,
    /// Free text: why the token is asked for (audited).
    pub purpose: String,
    /// Upper bound on the lifetime, in seconds (0: as long as allowed).
    pub expires_in: u32,
    /// RFC 9396 `authorization_details`, a JSON array (empty: none).
    pub authorization_details: String,
}

impl Exchange {
    /// A request for `subject_token` (a JWT assertion) on `audience` with `scope`.
    pub fn new(subject_token: Token, audience: impl Into<String>, scope: impl Into<String>) -> Exchange {
        Exchange {
            audience: vec![audience.into()],
            scope: scope.into(),
            subject_token: Arc::new(subject_token),
            subject_token_type: TOKEN_TYPE_JWT.into(),
            ..Exchange::default()
        }
    }

    /// `actor_token` acts for the subject (RFC 8693 §4.1).
    pub fn actor(mut self, actor_token: Token) -> Exchange {
        self.actor_token = Some(Arc::new(actor_token));
        if self.actor_token_type.is_empty() {
            self.actor_token_type = TOKEN_TYPE_JWT.into();
        }
        self
    }

    /// Bound to `task_id`.
    pub fn task(mut self, task_id: impl Into<String>) -> Exchange {
        self.task_id = task_id.into();
        self
    }

    fn key(&self) -> CacheKey {
        let digest =
            |t: &Token| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.expose().as_bytes()));
        let mut audiences: Vec<String> = self.audience.iter().chain(&self.resource).cloned().collect();
        audiences.sort();
        let mut scopes: Vec<&str> = self.scope.split_whitespace().collect();
        scopes.sort_unstable();
        scopes.dedup();
        CacheKey {
            subject: digest(&self.subject_token),
            audiences,
            scopes: scopes.join(" "),
            task_id: self.task_id.clone(),
            actor: self.actor_token.as_deref().map(digest).unwrap_or_default(),
            details: self.authorization_details.clone(),
            expires_in: self.expires_in,
        }
    }

    fn message(&self) -> pb::ExchangeTokenRequest {
        pb::ExchangeTokenRequest {
            grant_type: crate::exchange::GRANT_TYPE_TOKEN_EXCHANGE.into(),
            resource: self.resource.clone(),
            audience: self.audience.clone(),
            scope: self.scope.clone(),
            requested_token_type: String::new(),
            subject_token: self.subject_token.expose().to_string(),
            subject_token_type: self.subject_token_type.clone(),
            actor_token: self.actor_token.as_deref().map(|t| t.expose().to_string()).unwrap_or_default(),
            actor_token_type: if self.actor_token.is_some() { self.actor_token_type.clone() } else { String::new() },
            task_id: self.task_id.clone(),
            session_id: self.session_id.clone(),
            purpose: self.purpose.clone(),
            requested_expires_in: self.expires_in,
            authorization_details: self.authorization_details.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    subject: String,
    audiences: Vec<String>,
    scopes: String,
    task_id: String,
    actor: String,
    details: String,
    expires_in: u32,
}

/// RFC 8693 §2.2.1, with when it expires by this process's clock.
pub struct TokenResponse {
    /// The token.
    pub access_token: Token,
    /// `urn:ietf:params:oauth:token-type:access_token`.
    pub issued_token_type: String,
    /// `Bearer` or `DPoP`.
    pub token_type: String,
    /// Seconds of life at issue.
    pub expires_in: u32,
    /// The granted scopes.
    pub scope: String,
    /// RFC 9396: the granted details, a JSON array (empty when none).
    pub authorization_details: String,
    /// When it expires, by this process's clock.
    pub expires_at: Instant,
    task_id: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// Life left.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

/// One revocation target (a token or `jti` covers everything derived from it).
#[derive(Debug)]
pub enum RevokeTarget {
    /// A token, and everything derived from it.
    Token(Token),
    /// A token by its `jti`, and everything derived from it.
    Jti(String),
    /// Every token of a task.
    Task(String),
    /// Every token of an upstream principal.
    Subject {
        /// Its issuer (`iss` or name in the config).
        issuer: String,
        /// Its `sub`.
        sub: String,
    },
    /// Every token of a client.
    Client(String),
}

/// What a downstream call answered: done, or a 401 (the token was refused) — see [`Broker::call_with_token`].
pub enum Downstream<T> {
    /// Any answer but a 401.
    Done(T),
    /// A 401: the token was refused.
    Unauthorized(T),
}

struct Inner {
    client: TokenBrokerClient<Channel>,
    credentials: Credentials,
    backoff: Backoff,
    breaker: CircuitBreaker,
    refresh_margin: Duration,
    cache: Mutex<HashMap<CacheKey, Arc<TokenResponse>>>,
}

/// A client of one broker; cheap to clone (the clones share the connection, the cache and the breaker).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("credentials", &self.inner.credentials).finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// UNAVAILABLE, a rate limit, or a connection that broke under the call (tonic reports it as UNKNOWN with the
/// transport error as its source: the broker went away, it did not answer).
fn retryable(status: &tonic::Status) -> bool {
    let broken = status.code() == tonic::Code::Unknown
        && std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>());
    broken || matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
}

impl Broker {
    /// A client for `config`. The connection is made on first use, so a broker that is down now is ridden
    /// out by the backoff of the first call rather than failing here; a bad address or TLS file fails here.
    pub fn new(config: Config) -> Result<Broker, SdkError> {
        let bad = |e: &dyn std::fmt::Display| SdkError::Client(format!("cannot reach {}: {e}", config.addr));
        let mut endpoint = tonic::transport::Endpoint::from_shared(config.addr.clone()).map_err(|e| bad(&e))?;
        if config.addr.starts_with("https://") {
            crate::install_crypto_provider();
            let tls = config.tls.clone().unwrap_or_default();
            let mut tls_config = tonic::transport::ClientTlsConfig::new();
            tls_config = match tls.ca_pem {
                Some(ca) => tls_config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                None => tls_config.with_native_roots(),
            };
            if let Some((cert, key)) = &tls.identity {
                tls_config = tls_config.identity(tonic::transport::Identity::from_pem(cert, key.expose()));
            }
            if let Some(name) = tls.domain {
                tls_config = tls_config.domain_name(name);
            }
            endpoint = endpoint.tls_config(tls_config).map_err(|e| bad(&e))?;
        } else if config.tls.as_ref().is_some_and(|t| t.ca_pem.is_some() || t.identity.is_some()) {
            return Err(SdkError::Client("a CA or a client certificate needs an https:// address".into()));
        }
        let channel = endpoint.connect_lazy();
        Ok(Broker {
            inner: Arc::new(Inner {
                client: TokenBrokerClient::new(channel),
                credentials: config.credentials,
                backoff: config.backoff,
                breaker: CircuitBreaker::new(config.breaker.0, config.breaker.1),
                refresh_margin: config.refresh_margin,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// `message` with this caller's credentials in its metadata.
    fn request<M>(&self, message: M) -> Result<tonic::Request<M>, SdkError> {
        let mut request = tonic::Request::new(message);
        let invalid = |what: &str| SdkError::Client(format!("the {what} is not valid metadata"));
        match &self.inner.credentials {
            Credentials::None => {}
            Credentials::ClientSecret { client_id, secret } => {
                use base64::Engine as _;
                let pair = format!("{}:{}", form_encode(client_id), form_encode(secret.expose()));
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                let value = format!("Basic {basic}").parse().map_err(|_| invalid("client credentials"))?;
                request.metadata_mut().insert("authorization", value);
            }
            Credentials::Assertion { kind, client_id, source } => {
                let assertion = source().map_err(SdkError::Client)?;
                let kind = match kind {
                    AssertionKind::JwtBearer => crate::client::ASSERTION_TYPE_JWT_BEARER,
                    AssertionKind::JwtSpiffe => crate::client::ASSERTION_TYPE_JWT_SPIFFE,
                };
                let metadata = request.metadata_mut();
                metadata.insert(
                    crate::grpc::METADATA_CLIENT_ASSERTION_TYPE,
                    kind.parse().map_err(|_| invalid("client assertion's type"))?,
                );
                let value = assertion.expose().parse().map_err(|_| invalid("client assertion's JWT"))?;
                metadata.insert(crate::grpc::METADATA_CLIENT_ASSERTION, value);
                if let Some(id) = client_id {
                    metadata.insert(crate::grpc::METADATA_CLIENT_ID, id.parse().map_err(|_| invalid("client id"))?);
                }
            }
        }
        Ok(request)
    }

    /// One RPC, with the backoff and the breaker: UNAVAILABLE (and a rate limit, after its hint) is retried;
    /// any other refusal is returned at once.
    async fn call<M, T, F, Fut>(&self, message: M, rpc: F) -> Result<T, SdkError>
    where
        M: Clone,
        F: Fn(TokenBrokerClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        if inner.breaker.state() == BreakerState::Open {
            return Err(SdkError::CircuitOpen);
        }
        let mut last: Option<tonic::Status> = None;
        for attempt in 0..inner.backoff.attempts.max(1) {
            // A fresh request per attempt: a client assertion is good for one call.
            let request = self.request(message.clone())?;
            match rpc(inner.client.clone(), request).await {
                Ok(response) => {
                    inner.breaker.success();
                    return Ok(response.into_inner());
                }
                Err(status) if retryable(&status) => {
                    let hint = status.get_details_retry_info().and_then(|r| r.retry_delay);
                    last = Some(status);
                    if attempt + 1 < inner.backoff.attempts {
                        tokio::time::sleep(inner.backoff.delay(attempt, hint)).await;
                    }
                }
                Err(status) => {
                    inner.breaker.success();
                    return Err(refused(status));
                }
            }
        }
        match last {
            // The broker answered: a rate limit is not an outage.
            Some(status) if status.code() == tonic::Code::ResourceExhausted => Err(refused(status)),
            last => {
                inner.breaker.failure();
                Err(SdkError::Unavailable {
                    message: last.as_ref().map_or_else(|| "no answer".into(), |s| s.message().to_string()),
                    status: last.map(Box::new),
                })
            }
        }
    }

    /// RFC 8693 token exchange, from the cache when a token for the same request has life left beyond the
    /// refresh margin.
    pub async fn exchange(&self, request: &Exchange) -> Result<Arc<TokenResponse>, SdkError> {
        let key = request.key();
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let token = self.exchange_uncached(request).await?;
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::clone(&token));
        Ok(token)
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<TokenResponse>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cache.get(key)?;
        let margin = self.inner.refresh_margin.min(Duration::from_secs(u64::from(hit.expires_in)) / 10);
        (hit.remaining() > margin).then(|| Arc::clone(hit))
    }

    /// RFC 8693 token exchange, always asking the broker (and not caching).
    pub async fn exchange_uncached(&self, request: &Exchange) -> Result<Arc<TokenResponse>, SdkError> {
        let r = self.call(request.message(), |mut c, m| async move { c.exchange_token(m).await }).await?;
        Ok(Arc::new(TokenResponse {
            access_token: Token::new(r.access_token),
            issued_token_type: r.issued_token_type,
            token_type: r.token_type,
            expires_in: u32::try_from(r.expires_in).unwrap_or(0),
            scope: r.scope,
            authorization_details: r.authorization_details,
            expires_at: Instant::now() + Duration::from_secs(r.expires_in),
            task_id: request.task_id.clone(),
        }))
    }

    /// Drops `token` from the cache (a downstream API refused it).
    pub fn invalidate(&self, token: &TokenResponse) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, v| !std::ptr::eq(Arc::as_ptr(v), token));
    }

    fn forget_task(&self, task_id: &str) {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, v| v.task_id != task_id);
    }

    /// RFC 7662 introspection.
    pub async fn introspect(&self, token: &Token) -> Result<pb::IntrospectResponse, SdkError> {
        let message = pb::IntrospectRequest { token: token.expose().to_string(), token_type_hint: String::new() };
        self.call(message, |mut c, m| async move { c.introspect(m).await }).await
    }

    /// Revokes one target; tokens it reaches leave the cache.
    pub async fn revoke(&self, target: RevokeTarget, reason: &str) -> Result<pb::RevokeResponse, SdkError> {
        use pb::revoke_request::Target as T;
        let forget = match &target {
            RevokeTarget::Task(task) => Some(task.clone()),
            _ => None,
        };
        let target = match target {
            RevokeTarget::Token(token) => T::Token(token.expose().to_string()),
            RevokeTarget::Jti(jti) => T::Jti(jti),
            RevokeTarget::Task(task) => T::TaskId(task),
            RevokeTarget::Subject { issuer, sub } => T::Subject(pb::Subject { issuer, sub }),
            RevokeTarget::Client(id) => T::ClientId(id),
        };
        let message = pb::RevokeRequest { target: Some(target), reason: reason.to_string() };
        let answer = self.call(message, |mut c, m| async move { c.revoke(m).await }).await?;
        match forget {
            Some(task) => self.forget_task(&task),
            None => self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).clear(),
        }
        Ok(answer)
    }

    /// The kill switch: suspends a principal or a client.
    pub async fn suspend(&self, message: pb::SuspendRequest) -> Result<pb::SuspendResponse, SdkError> {
        self.call(message, |mut c, m| async move { c.suspend(m).await }).await
    }

    /// Lifts a suspension.
    pub async fn resume(&self, message: pb::ResumeRequest) -> Result<pb::ResumeResponse, SdkError> {
        self.call(message, |mut c, m| async move { c.resume(m).await }).await
    }

    /// A step-up approval's record: for the client whose exchange opened it, or an approver.
    pub async fn approval(&self, approval_id: &str) -> Result<pb::Approval, SdkError> {
        let message = pb::GetApprovalRequest { approval_id: approval_id.to_string() };
        self.call(message, |mut c, m| async move { c.get_approval(m).await }).await
    }

    /// Approves a pending approval (approvers only, never the client that asked).
    pub async fn approve(&self, approval_id: &str, reason: &str) -> Result<pb::Approval, SdkError> {
        let message = pb::DecideApprovalRequest { approval_id: approval_id.to_string(), reason: reason.to_string() };
        self.call(message, |mut c, m| async move { c.approve(m).await }).await
    }

    /// Denies a pending approval (approvers only, never the client that asked).
    pub async fn deny(&self, approval_id: &str, reason: &str) -> Result<pb::Approval, SdkError> {
        let message = pb::DecideApprovalRequest { approval_id: approval_id.to_string(), reason: reason.to_string() };
        self.call(message, |mut c, m| async move { c.deny(m).await }).await
    }

    /// The broker's JWK Set.
    pub async fn jwks(&self) -> Result<pb::GetJwksResponse, SdkError> {
        self.call(pb::GetJwksRequest {}, |mut c, m| async move { c.get_jwks(m).await }).await
    }

    /// A task scope: `f` gets a [`Task`] whose exchanges carry `task_id` (and `purpose`); when `f`'s future
    /// ends, the task is revoked at the broker — every token bound to it, and every token derived from them,
    /// is inactive. `f`'s output is returned once the revocation succeeded; a failed revocation is an error
    /// (the caller must know the task's tokens live on). If `f` panics, or this future is dropped before it
    /// ends (cancelled, timed out), the task is revoked in the background.
    pub async fn with_task<T, Fut>(
        &self,
        task_id: &str,
        purpose: &str,
        f: impl FnOnce(Task) -> Fut,
    ) -> Result<T, SdkError>
    where
        Fut: Future<Output = T>,
    {
        let task = Task { broker: self.clone(), task_id: task_id.to_string(), purpose: purpose.to_string() };
        let mut guard = TaskGuard(Some(task.clone()));
        let output = f(task.clone()).await;
        guard.0 = None;
        task.end("task ended").await?;
        Ok(output)
    }

    /// Calls a downstream API with a token for `request`: `call` gets the token and answers
    /// [`Downstream::Unauthorized`] on a 401; the token is then dropped, exchanged again and the call made
    /// once more — once. No token, no call: a failed exchange is returned, never another credential used.
    pub async fn call_with_token<T, Fut>(
        &self,
        request: &Exchange,
        call: impl Fn(Arc<TokenResponse>) -> Fut,
    ) -> Result<T, SdkError>
    where
        Fut: Future<Output = Downstream<T>>,
    {
        let token = self.exchange(request).await?;
        match call(Arc::clone(&token)).await {
            Downstream::Done(answer) => Ok(answer),
            Downstream::Unauthorized(_) => {
                self.invalidate(&token);
                match call(self.exchange(request).await?).await {
                    Downstream::Done(answer) | Downstream::Unauthorized(answer) => Ok(answer),
                }
            }
        }
    }
}

impl Broker {
    /// An HTTP call to a downstream API with a token for `request` as its bearer — the Rust counterpart of
    /// the Python client's `httpx`/`requests` adapters. `build` makes the request (again, for the retry); a
    /// 401 drops the token, exchanges again and sends once more ([`Broker::call_with_token`]).
    pub async fn send_with_token(
        &self,
        request: &Exchange,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SdkError> {
        let answer = self
            .call_with_token(request, |token| {
                let sent = build().bearer_auth(token.access_token.expose()).send();
                async move {
                    match sent.await {
                        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => Downstream::Unauthorized(Ok(r)),
                        other => Downstream::Done(other),
                    }
                }
            })
            .await?;
        // A failure to reach the API says nothing about the broker; never a token in the message.
        answer.map_err(|e| SdkError::Client(format!("the downstream call failed: {}", e.without_url())))
    }
}

fn refused(status: tonic::Status) -> SdkError {
    let error = status.get_details_error_info().map(|i| i.reason).unwrap_or_else(|| status.code().to_string());
    SdkError::Refused { error, status: Box::new(status) }
}

/// Revokes its task when dropped before [`Broker::with_task`] disarms it: the task's future panicked or was
/// cancelled (a timeout, a dropped handle). The revocation runs on the current runtime, in the background.
struct TaskGuard(Option<Task>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let (Some(task), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                if let Err(error) = task.end("task failed: panicked or cancelled").await {
                    tracing::warn!(task_id = %task.task_id.escape_debug(), %error, "the task could not be revoked");
                }
            });
        }
    }
}

/// One task of [`Broker::with_task`]: its exchanges carry the task.
#[derive(Clone, Debug)]
pub struct Task {
    broker: Broker,
    task_id: String,
    purpose: String,
}

impl Task {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    /// `request`, bound to this task.
    pub fn bind(&self, mut request: Exchange) -> Exchange {
        request.task_id.clone_from(&self.task_id);
        if request.purpose.is_empty() {
            request.purpose.clone_from(&self.purpose);
        }
        request
    }

    /// [`Broker::exchange`] for this task.
    pub async fn exchange(&self, request: Exchange) -> Result<Arc<TokenResponse>, SdkError> {
        self.broker.exchange(&self.bind(request)).await
    }

    /// [`Broker::exchange_uncached`] for this task.
    pub async fn exchange_uncached(&self, request: Exchange) -> Result<Arc<TokenResponse>, SdkError> {
        self.broker.exchange_uncached(&self.bind(request)).await
    }

    async fn end(&self, reason: &str) -> Result<(), SdkError> {
        self.broker.revoke(RevokeTarget::Task(self.task_id.clone()), reason).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_ignores_scope_order_and_names_task_and_actor() {
        let base = Exchange::new(Token::new("subject"), "https://crm.example", "crm:read crm:write").task("t1");
        let reordered = Exchange::new(Token::new("subject"), "https://crm.example", "crm:write  crm:read").task("t1");
        assert_eq!(base.key(), reordered.key());
        assert_ne!(base.key(), base.clone().task("t2").key());
        assert_ne!(base.key(), base.clone().actor(Token::new("actor")).key());
        assert!(!format!("{:?}", base.key()).contains("subject\""), "the key holds digests, not tokens");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let creds =
            Credentials::ClientSecret { client_id: "orch".into(), secret: Arc::new(ClientSecret::new("s3cret")) };
        assert!(!format!("{creds:?}").contains("s3cret"));
    }
}
