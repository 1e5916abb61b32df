//! How requests reach the server under test: tonic over gRPC (one HTTP/2 connection per channel), or
//! reqwest over HTTP (HTTP/1.1, or HTTP/2 with prior knowledge), each over its own set of connections.

use std::time::Duration;

use tessera::grpc::pb;
use tessera::grpc::pb::token_broker_client::TokenBrokerClient;
use tonic::transport::{Channel, Endpoint};

/// What the server answered, when it answered as the protocol allows.
pub(crate) enum Answer {
    /// An exchange was granted (the issued token), or an introspection said `active: true`.
    Granted(String),
    /// An exchange was refused with an OAuth error a client is expected to handle (`invalid_scope`,
    /// `access_denied`), or an introspection said `active: false`.
    Refused,
}

/// A transport failure or an answer nobody should get (an unexpected status or code, a malformed body).
pub(crate) type Failure = String;

/// One request, in both of its wire forms (built once, before the run).
pub(crate) struct Wire {
    pub(crate) grpc: Grpc,
    /// The `application/x-www-form-urlencoded` body.
    pub(crate) form: String,
}

pub(crate) enum Grpc {
    Exchange(Box<pb::ExchangeTokenRequest>),
    Introspect(pb::IntrospectRequest),
}

pub(crate) enum Driver {
    Grpc(Vec<TokenBrokerClient<Channel>>),
    Http(Http),
}

pub(crate) struct Http {
    clients: Vec<reqwest::Client>,
    token_url: String,
    introspect_url: String,
    revoke_url: String,
    /// `Authorization: Basic …`, when the server wants client credentials.
    authorization: Option<String>,
}

/// Where the HTTP endpoints are, relative to the target.
pub(crate) struct HttpPaths {
    pub(crate) token: String,
    pub(crate) introspect: String,
    pub(crate) revoke: String,
}

impl Driver {
    /// `connections` connections to `target` (`grpc://host:port` or `http://host:port`).
    pub(crate) async fn connect(
        target: &str,
        connections: usize,
        http2: bool,
        paths: &HttpPaths,
        basic: Option<&str>,
    ) -> Result<Driver, String> {
        let connections = connections.max(1);
        if let Some(rest) = target.strip_prefix("grpc://") {
            let endpoint = Endpoint::from_shared(format!("http://{rest}"))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5));
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                // Each `connect` is its own HTTP/2 connection.
                let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {target}: {e}"))?;
                clients.push(TokenBrokerClient::new(channel));
            }
            return Ok(Driver::Grpc(clients));
        }
        if !target.starts_with("http://") {
            return Err(format!("{target}: the target is grpc://host:port or http://host:port"));
        }
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let builder = reqwest::Client::builder()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(1024);
            let builder = if http2 { builder.http2_prior_knowledge() } else { builder.http1_only() };
            clients.push(builder.build().map_err(|e| e.to_string())?);
        }
        let base = target.trim_end_matches('/');
        let authorization = basic.map(|b| {
            use base64::Engine as _;
            let (id, secret) = b.split_once(':').unwrap_or((b, ""));
            let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(id), encode(secret));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        Ok(Driver::Http(Http {
            clients,
            token_url: format!("{base}{}", paths.token),
            introspect_url: format!("{base}{}", paths.introspect),
            revoke_url: format!("{base}{}", paths.revoke),
            authorization,
        }))
    }

    pub(crate) fn connections(&self) -> usize {
        match self {
            Driver::Grpc(c) => c.len(),
            Driver::Http(h) => h.clients.len(),
        }
    }

    /// Sends one request on connection `conn` (modulo the number of connections).
    pub(crate) async fn send(&self, conn: usize, wire: &Wire) -> Result<Answer, Failure> {
        match self {
            Driver::Grpc(clients) => {
                let mut client = clients[conn % clients.len()].clone();
                match &wire.grpc {
                    Grpc::Exchange(r) => match client.exchange_token(pb::ExchangeTokenRequest::clone(r)).await {
                        Ok(r) => Ok(Answer::Granted(r.into_inner().access_token)),
                        Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(Answer::Refused),
                        Err(s) => Err(format!("ExchangeToken: {:?} {}", s.code(), sanitize(s.message()))),
                    },
                    Grpc::Introspect(r) => match client.introspect(r.clone()).await {
                        Ok(r) if r.get_ref().active => Ok(Answer::Granted(String::new())),
                        Ok(_) => Ok(Answer::Refused),
                        Err(s) => Err(format!("Introspect: {:?} {}", s.code(), sanitize(s.message()))),
                    },
                }
            }
            Driver::Http(http) => {
                let introspect = matches!(wire.grpc, Grpc::Introspect(_));
                let url = if introspect { &http.introspect_url } else { &http.token_url };
                let (status, body) = http.post(conn, url, wire.form.clone()).await?;
                if introspect {
                    return match (status, serde_json::from_slice::<Active>(&body)) {
                        (200, Ok(a)) if a.active => Ok(Answer::Granted(String::new())),
                        (200, Ok(_)) => Ok(Answer::Refused),
                        _ => Err(format!("introspection: HTTP {status} {}", oauth_error(&body))),
                    };
                }
                match status {
                    200 => serde_json::from_slice::<Issued>(&body)
                        .map(|i| Answer::Granted(i.access_token))
                        .map_err(|_| "token: HTTP 200 without an access_token".to_string()),
                    400 | 403 if matches!(oauth_error(&body).as_str(), "invalid_scope" | "access_denied") => {
                        Ok(Answer::Refused)
                    }
                    _ => Err(format!("token: HTTP {status} {}", oauth_error(&body))),
                }
            }
        }
    }

    /// Revokes `token` (RFC 7009 over HTTP, `Revoke` over gRPC).
    pub(crate) async fn revoke(&self, conn: usize, token: &str) -> Result<(), Failure> {
        match self {
            Driver::Grpc(clients) => {
                let mut client = clients[conn % clients.len()].clone();
                let request = pb::RevokeRequest {
                    target: Some(pb::revoke_request::Target::Token(token.to_string())),
                    reason: "tessera-bench".into(),
                };
                client.revoke(request).await.map(drop).map_err(|s| format!("Revoke: {:?}", s.code()))
            }
            Driver::Http(http) => {
                let form = format!("token={}", encode(token));
                match http.post(conn, &http.revoke_url, form).await? {
                    (200, _) => Ok(()),
                    (status, body) => Err(format!("revoke: HTTP {status} {}", oauth_error(&body))),
                }
            }
        }
    }
}

impl Http {
    async fn post(&self, conn: usize, url: &str, form: String) -> Result<(u16, Vec<u8>), Failure> {
        let client = &self.clients[conn % self.clients.len()];
        let mut request =
            client.post(url).header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form);
        if let Some(a) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a);
        }
        let response = request.send().await.map_err(|e| format!("HTTP: {}", without_url(&e)))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| format!("HTTP body: {}", without_url(&e)))?;
        Ok((status, body.to_vec()))
    }
}

#[derive(serde::Deserialize)]
struct Active {
    active: bool,
}

#[derive(serde::Deserialize)]
struct Issued {
    access_token: String,
}

#[derive(serde::Deserialize)]
struct OAuthError {
    error: String,
}

/// The OAuth `error` of a response body, or `-`: never the body itself (it could hold a token).
fn oauth_error(body: &[u8]) -> String {
    serde_json::from_slice::<OAuthError>(body).map(|e| sanitize(&e.error)).unwrap_or_else(|_| "-".into())
}

/// What kind of failure, without the URL or anything else of the request.
fn without_url(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() {
        "body failed"
    } else {
        "failed"
    }
}

/// A short, printable version of a server's message.
fn sanitize(s: &str) -> String {
    s.chars().take(120).map(|c| if c.is_control() { '?' } else { c }).collect()
}

pub(crate) fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
