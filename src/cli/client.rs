//! The client commands: `exchange`, `introspect` and `revoke` against a running broker over gRPC, with
//! client credentials sent as HTTP Basic (form-urlencoded halves, RFC 6749 §2.3.1), or a client assertion read
//! from a file and sent in the `client-assertion-type` / `client-assertion` metadata. Answers are JSON on
//! stdout; a refusal is an OAuth error document on stderr.

use std::io::Read as _;
use std::process::ExitCode;

use tessera::grpc::pb;

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct RevokeTarget {
    /// A tessera token, or `-` to read it from stdin.
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    jti: Option<String>,
    #[arg(long)]
    task_id: Option<String>,
    /// An upstream principal's `sub` (with --issuer).
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    client_id: Option<String>,
}

/// How a client command reaches and authenticates to the broker.
#[derive(clap::Args)]
pub(super) struct ClientArgs {
    /// The broker's gRPC address.
    #[arg(long, env = "TESSERA_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The client to authenticate as (with --client-secret).
    #[arg(long, env = "TESSERA_CLIENT_ID")]
    as_client: Option<String>,
    #[arg(long, env = "TESSERA_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// A file holding a client assertion (a JWT) to authenticate with instead of a secret: `private_key_jwt`
    /// or a SPIFFE JWT-SVID (--client-assertion-type). Sent as gRPC metadata with --as-client as `client-id`
    /// when given. An assertion is good for one call: write a fresh one for each command.
    #[arg(long, env = "TESSERA_CLIENT_ASSERTION_FILE", conflicts_with = "client_secret")]
    client_assertion_file: Option<std::path::PathBuf>,
    /// The kind of --client-assertion-file: `jwt-bearer` (private_key_jwt) or `jwt-spiffe` (a JWT-SVID).
    #[arg(long, default_value = "jwt-bearer", value_parser = ["jwt-bearer", "jwt-spiffe"])]
    client_assertion_type: String,
    /// PEM CA certificates to verify the broker's TLS certificate with (an `https://` --addr; without it, the
    /// system's roots).
    #[arg(long, env = "TESSERA_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mTLS (with --key-file): the broker knows the client by it.
    #[arg(long, env = "TESSERA_CERT_FILE", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, env = "TESSERA_KEY_FILE", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry, when --addr is an IP address or another name.
    #[arg(long, env = "TESSERA_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

impl ClientArgs {
    async fn connect(&self) -> Result<pb::token_broker_client::TokenBrokerClient<tonic::transport::Channel>, String> {
        let unreachable = |e: &dyn std::fmt::Display| format!("cannot reach {}: {e}", self.addr);
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.addr.clone()).map_err(|e| unreachable(&e))?;
        if self.addr.starts_with("https://") {
            tessera::install_crypto_provider();
            endpoint = endpoint.tls_config(self.tls()?).map_err(|e| unreachable(&e))?;
        } else if self.ca_file.is_some() || self.cert_file.is_some() {
            return Err("--ca-file and --cert-file need an https:// --addr".into());
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        Ok(pb::token_broker_client::TokenBrokerClient::new(channel))
    }

    /// TLS for an `https://` --addr: the CA to trust, the client certificate to present (mTLS).
    fn tls(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, String> {
        let mut request = tonic::Request::new(message);
        if let Some(file) = &self.client_assertion_file {
            // Read from a file, not the command line, so the assertion is not in the process list.
            let assertion = tessera::secret::Token::new(
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?.trim(),
            );
            let kind = match self.client_assertion_type.as_str() {
                "jwt-spiffe" => tessera::client::ASSERTION_TYPE_JWT_SPIFFE,
                _ => tessera::client::ASSERTION_TYPE_JWT_BEARER,
            };
            let metadata = request.metadata_mut();
            let invalid = |what: &str| format!("the client assertion's {what} is not valid metadata");
            metadata.insert(tessera::grpc::METADATA_CLIENT_ASSERTION_TYPE, kind.parse().map_err(|_| invalid("type"))?);
            let value = assertion.expose().parse().map_err(|_| invalid("JWT"))?;
            metadata.insert(tessera::grpc::METADATA_CLIENT_ASSERTION, value);
            if let Some(id) = &self.as_client {
                metadata.insert(tessera::grpc::METADATA_CLIENT_ID, id.parse().map_err(|_| invalid("client id"))?);
            }
            return Ok(request);
        }
        if let (Some(id), Some(secret)) = (&self.as_client, &self.client_secret) {
            use base64::Engine as _;
            // RFC 6749 §2.3.1: each half is form-urlencoded before they are joined.
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_encode(id),
                form_encode(secret)
            ));
            let value = format!("Basic {basic}").parse().map_err(|_| "client credentials are not valid metadata")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(super) fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Prints a refusal as an OAuth error document on stderr, with `retry_after_ms` when the broker said when a
/// retry can succeed (a rate limit's `RetryInfo`), so scripts can back off exactly that long.
fn print_status(status: &tonic::Status) -> Result<ExitCode, String> {
    use tonic_types::StatusExt as _;
    let info = status.get_details_error_info();
    let error = info.as_ref().map(|i| i.reason.clone()).unwrap_or_else(|| status.code().to_string());
    let mut json = serde_json::json!({ "error": error, "error_description": status.message(), "grpc_status": status.code() as i32 });
    // authorization_pending names its approval: what to poll (`tessera approval ID`) and hand an approver.
    for key in ["approval_id", "approval_uri", "interval"] {
        if let Some(value) = info.as_ref().and_then(|i| i.metadata.get(key)) {
            json[key] = value.parse::<u64>().map_or_else(|_| value.clone().into(), Into::into);
        }
    }
    if let Some(wait) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        json["retry_after_ms"] = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).into();
    }
    eprintln!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    Ok(ExitCode::FAILURE)
}

fn print_json(value: &serde_json::Value) -> Result<ExitCode, String> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub(super) struct ExchangeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The subject token, or `-` to read it from stdin.
    #[arg(long)]
    subject_token: String,
    #[arg(long, default_value = tessera::exchange::TOKEN_TYPE_JWT)]
    subject_token_type: String,
    /// The actor's token, or `-` to read it from stdin.
    #[arg(long)]
    actor_token: Option<String>,
    #[arg(long, default_value = tessera::exchange::TOKEN_TYPE_JWT)]
    actor_token_type: String,
    #[arg(long)]
    audience: Vec<String>,
    #[arg(long)]
    resource: Vec<String>,
    #[arg(long, default_value = "")]
    scope: String,
    #[arg(long, default_value = "")]
    task_id: String,
    #[arg(long, default_value = "")]
    session_id: String,
    #[arg(long, default_value = "")]
    purpose: String,
    /// Upper bound on the token's lifetime, in seconds.
    #[arg(long, default_value_t = 0)]
    expires_in: u32,
    /// RFC 9396 `authorization_details`: a JSON array of typed objects (docs/rar.md).
    #[arg(long, default_value = "")]
    authorization_details: String,
}

pub(super) fn read_token(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut token = String::new();
    std::io::stdin().read_to_string(&mut token).map_err(|e| e.to_string())?;
    Ok(token.trim().to_string())
}

pub(super) async fn exchange(args: ExchangeArgs) -> Result<ExitCode, String> {
    let request = pb::ExchangeTokenRequest {
        grant_type: tessera::exchange::GRANT_TYPE_TOKEN_EXCHANGE.into(),
        resource: args.resource,
        audience: args.audience,
        scope: args.scope,
        requested_token_type: String::new(),
        subject_token: read_token(&args.subject_token)?,
        subject_token_type: args.subject_token_type,
        actor_token: args.actor_token.as_deref().map(read_token).transpose()?.unwrap_or_default(),
        actor_token_type: if args.actor_token.is_some() { args.actor_token_type } else { String::new() },
        task_id: args.task_id,
        session_id: args.session_id,
        purpose: args.purpose,
        requested_expires_in: args.expires_in,
        authorization_details: args.authorization_details,
    };
    let request = args.client.request(request)?;
    match args.client.connect().await?.exchange_token(request).await {
        Ok(response) => {
            let r = response.into_inner();
            let mut answer = serde_json::json!({
                "access_token": r.access_token,
                "issued_token_type": r.issued_token_type,
                "token_type": r.token_type,
                "expires_in": r.expires_in,
                "scope": r.scope,
            });
            if let Ok(details) = serde_json::from_str::<serde_json::Value>(&r.authorization_details) {
                answer["authorization_details"] = details;
            }
            print_json(&answer)
        }
        Err(status) => print_status(&status),
    }
}

fn actor_json(a: &pb::Actor) -> serde_json::Value {
    let mut v = serde_json::json!({ "sub": a.sub, "iss": a.iss });
    if let Some(inner) = &a.act {
        v["act"] = actor_json(inner);
    }
    v
}

pub(super) async fn introspect(token: String, client: ClientArgs) -> Result<ExitCode, String> {
    let request =
        client.request(pb::IntrospectRequest { token: read_token(&token)?, token_type_hint: String::new() })?;
    match client.connect().await?.introspect(request).await {
        Ok(response) => {
            let r = response.into_inner();
            if !r.active {
                return print_json(&serde_json::json!({ "active": false }));
            }
            let mut json = serde_json::json!({
                "active": true, "scope": r.scope, "client_id": r.client_id, "token_type": r.token_type,
                "exp": r.exp, "iat": r.iat, "nbf": r.nbf, "sub": r.sub, "aud": r.aud, "iss": r.iss, "jti": r.jti,
                "task_id": r.task_id,
            });
            if let Some(act) = &r.act {
                json["act"] = actor_json(act);
            }
            if !r.session_id.is_empty() {
                json["session_id"] = r.session_id.into();
            }
            if let Ok(details) = serde_json::from_str::<serde_json::Value>(&r.authorization_details) {
                json["authorization_details"] = details;
            }
            // RFC 9449 §6.2 / RFC 8705 §3.2, as the HTTP face answers it.
            if let Some(cnf) = &r.cnf {
                let mut c = serde_json::Map::new();
                for (name, value) in [("jkt", &cnf.jkt), ("x5t#S256", &cnf.x5t_s256)] {
                    if !value.is_empty() {
                        c.insert(name.into(), value.as_str().into());
                    }
                }
                json["cnf"] = c.into();
            }
            print_json(&json)
        }
        Err(status) => print_status(&status),
    }
}

pub(super) async fn revoke(
    target: RevokeTarget,
    issuer: Option<String>,
    reason: String,
    client: ClientArgs,
) -> Result<ExitCode, String> {
    use pb::revoke_request::Target as T;
    let target = match target {
        RevokeTarget { token: Some(token), .. } => T::Token(read_token(&token)?),
        RevokeTarget { jti: Some(jti), .. } => T::Jti(jti),
        RevokeTarget { task_id: Some(task), .. } => T::TaskId(task),
        RevokeTarget { subject: Some(sub), .. } => {
            T::Subject(pb::Subject { issuer: issuer.ok_or("--subject needs --issuer")?, sub })
        }
        RevokeTarget { client_id: Some(id), .. } => T::ClientId(id),
        _ => return Err("name one target: --token, --jti, --task-id, --subject or --client-id".into()),
    };
    let request = client.request(pb::RevokeRequest { target: Some(target), reason })?;
    match client.connect().await?.revoke(request).await {
        Ok(response) => {
            let r = response.into_inner();
            print_json(&serde_json::json!({ "revoked": r.kind, "expires_at": r.expires_at }))
        }
        Err(status) => print_status(&status),
    }
}

/// Who `suspend` and `resume` name: a principal (with its issuer) or a client.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct SuspendTarget {
    /// An upstream principal's `sub` (with --issuer).
    #[arg(long)]
    subject: Option<String>,
    /// A configured client's id.
    #[arg(long)]
    client_id: Option<String>,
}

impl SuspendTarget {
    fn subject_or_client(self, issuer: Option<String>) -> Result<(Option<pb::Subject>, Option<String>), String> {
        match self {
            SuspendTarget { subject: Some(sub), .. } => {
                Ok((Some(pb::Subject { issuer: issuer.ok_or("--subject needs --issuer")?, sub }), None))
            }
            SuspendTarget { client_id: Some(id), .. } => Ok((None, Some(id))),
            _ => Err("name one target: --subject (with --issuer) or --client-id".into()),
        }
    }
}

/// The kill switch: suspends a principal or a client, and revokes what it has.
pub(super) async fn suspend(
    target: SuspendTarget,
    issuer: Option<String>,
    duration_seconds: u64,
    reason: String,
    client: ClientArgs,
) -> Result<ExitCode, String> {
    use pb::suspend_request::Target as T;
    let target = match target.subject_or_client(issuer)? {
        (Some(subject), _) => T::Subject(subject),
        (None, Some(id)) => T::ClientId(id),
        (None, None) => return Err("name one target".into()),
    };
    let request = client.request(pb::SuspendRequest { target: Some(target), duration_seconds, reason })?;
    match client.connect().await?.suspend(request).await {
        Ok(response) => {
            let r = response.into_inner();
            print_json(&serde_json::json!({ "suspended": r.kind, "suspended_until": r.suspended_until }))
        }
        Err(status) => print_status(&status),
    }
}

/// Lifts a suspension.
pub(super) async fn resume(
    target: SuspendTarget,
    issuer: Option<String>,
    reason: String,
    client: ClientArgs,
) -> Result<ExitCode, String> {
    use pb::resume_request::Target as T;
    let target = match target.subject_or_client(issuer)? {
        (Some(subject), _) => T::Subject(subject),
        (None, Some(id)) => T::ClientId(id),
        (None, None) => return Err("name one target".into()),
    };
    let request = client.request(pb::ResumeRequest { target: Some(target), reason })?;
    match client.connect().await?.resume(request).await {
        Ok(response) => print_json(&serde_json::json!({ "resumed": response.into_inner().kind })),
        Err(status) => print_status(&status),
    }
}

/// An approval as JSON (the same fields as the HTTP face's `GET /approvals/{id}`).
fn approval_json(a: pb::Approval) -> serde_json::Value {
    let named = |s: pb::Subject| serde_json::json!({ "iss": s.issuer, "sub": s.sub });
    let mut json = serde_json::json!({
        "approval_id": a.approval_id,
        "status": a.status,
        "client_id": a.client_id,
        "subject": a.subject.map(named),
        "actors": a.actors.into_iter().map(named).collect::<Vec<_>>(),
        "audience": a.audience,
        "scope": a.scope,
        "approval_scope": a.approval_scope,
        "task_id": a.task_id,
        "reasons": a.reasons,
        "policies": a.policies,
        "created_at": a.created_at,
        "expires_at": a.expires_at,
    });
    let details = serde_json::from_str::<serde_json::Value>(&a.authorization_details).ok();
    let optional = [
        ("authorization_details", details),
        ("session_id", (!a.session_id.is_empty()).then(|| a.session_id.into())),
        ("purpose", (!a.purpose.is_empty()).then(|| a.purpose.into())),
        ("decided_by", (!a.decided_by.is_empty()).then(|| a.decided_by.into())),
        ("decided_at", (a.decided_at > 0).then(|| a.decided_at.into())),
        ("decision_reason", (!a.decision_reason.is_empty()).then(|| a.decision_reason.into())),
        ("used_at", (a.used_at > 0).then(|| a.used_at.into())),
        ("jti", (!a.jti.is_empty()).then(|| a.jti.into())),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            json[key] = value;
        }
    }
    json
}

/// `tessera approval ID`: an approval's record and state.
pub(super) async fn approval(id: String, client: ClientArgs) -> Result<ExitCode, String> {
    let request = client.request(pb::GetApprovalRequest { approval_id: id })?;
    match client.connect().await?.get_approval(request).await {
        Ok(response) => print_json(&approval_json(response.into_inner())),
        Err(status) => print_status(&status),
    }
}

/// `tessera approve ID` / `tessera deny ID`: an approver's decision.
pub(super) async fn decide(id: String, approve: bool, reason: String, client: ClientArgs) -> Result<ExitCode, String> {
    let request = client.request(pb::DecideApprovalRequest { approval_id: id, reason })?;
    let mut broker = client.connect().await?;
    let answer = if approve { broker.approve(request).await } else { broker.deny(request).await };
    match answer {
        Ok(response) => print_json(&approval_json(response.into_inner())),
        Err(status) => print_status(&status),
    }
}
