//! The client commands: `exchange`, `introspect`, `revoke`, `suspend` and `resume` against a running broker
//! over gRPC, through the SDK's client ([`tessera::sdk::Broker`]), with client credentials sent as HTTP Basic
//! (form-urlencoded halves, RFC 6749 §2.3.1), or a client assertion read from a file and sent in the
//! `client-assertion-type` / `client-assertion` metadata. Answers are JSON on stdout; a refusal is an OAuth
//! error document on stderr.

use std::io::Read as _;
use std::process::ExitCode;

use tessera::grpc::pb;
use tessera::sdk::{self, Broker, SdkError};

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
    /// The SDK's client for these arguments ([`tessera::sdk`]: the one Rust client). One attempt: a script
    /// decides what to do with a refusal or an outage.
    fn broker(&self) -> Result<Broker, String> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut config = sdk::Config::new(self.addr.clone());
        config.backoff = sdk::resilience::Backoff::once();
        config.credentials = if let Some(file) = &self.client_assertion_file {
            let file = file.clone();
            // Read from a file, not the command line, so the assertion is not in the process list.
            let source: sdk::AssertionSource = std::sync::Arc::new(move || {
                let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                Ok(tessera::secret::Token::new(text.trim()))
            });
            let kind = match self.client_assertion_type.as_str() {
                "jwt-spiffe" => sdk::AssertionKind::JwtSpiffe,
                _ => sdk::AssertionKind::JwtBearer,
            };
            sdk::Credentials::Assertion { kind, client_id: self.as_client.clone(), source }
        } else if let (Some(id), Some(secret)) = (&self.as_client, &self.client_secret) {
            sdk::Credentials::ClientSecret {
                client_id: id.clone(),
                secret: std::sync::Arc::new(tessera::secret::ClientSecret::new(secret.as_str())),
            }
        } else {
            sdk::Credentials::None
        };
        if self.addr.starts_with("https://") {
            let mut tls = sdk::Tls { domain: self.tls_server_name.clone(), ..sdk::Tls::default() };
            if let Some(ca) = &self.ca_file {
                tls.ca_pem = Some(read(ca)?);
            }
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                let key = String::from_utf8(read(key)?).map_err(|_| format!("{}: not PEM", key.display()))?;
                tls.identity = Some((read(cert)?, std::sync::Arc::new(tessera::secret::Token::new(key))));
            }
            config.tls = Some(tls);
        } else if self.ca_file.is_some() || self.cert_file.is_some() {
            return Err("--ca-file and --cert-file need an https:// --addr".into());
        }
        Broker::new(config).map_err(|e| e.to_string())
    }

    /// A refusal or outage as the CLI reports it: the broker's answer as an OAuth error document on stderr
    /// (exit 1), or, when the broker could not be reached at all, a message.
    fn failed(&self, error: SdkError) -> Result<ExitCode, String> {
        use tonic_types::StatusExt as _;
        match error {
            SdkError::Refused { status, .. } => print_status(&status),
            SdkError::Unavailable { status: Some(status), .. } if status.get_details_error_info().is_some() => {
                print_status(&status)
            }
            SdkError::Unavailable { message, .. } => Err(format!("cannot reach {}: {message}", self.addr)),
            other => Err(other.to_string()),
        }
    }
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
    let request = sdk::Exchange {
        audience: args.audience,
        resource: args.resource,
        scope: args.scope,
        subject_token: std::sync::Arc::new(tessera::secret::Token::new(read_token(&args.subject_token)?)),
        subject_token_type: args.subject_token_type,
        actor_token: match args.actor_token.as_deref() {
            Some(token) => Some(std::sync::Arc::new(tessera::secret::Token::new(read_token(token)?))),
            None => None,
        },
        actor_token_type: args.actor_token_type,
        task_id: args.task_id,
        session_id: args.session_id,
        purpose: args.purpose,
        expires_in: args.expires_in,
        authorization_details: args.authorization_details,
    };
    let broker = args.client.broker()?;
    match broker.exchange_uncached(&request).await {
        Ok(r) => {
            let mut answer = serde_json::json!({
                "access_token": r.access_token.expose(),
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
        Err(error) => args.client.failed(error),
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
    let token = tessera::secret::Token::new(read_token(&token)?);
    match client.broker()?.introspect(&token).await {
        Ok(r) => {
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
        Err(error) => client.failed(error),
    }
}

pub(super) async fn revoke(
    target: RevokeTarget,
    issuer: Option<String>,
    reason: String,
    client: ClientArgs,
) -> Result<ExitCode, String> {
    use sdk::RevokeTarget as T;
    let target = match target {
        RevokeTarget { token: Some(token), .. } => T::Token(tessera::secret::Token::new(read_token(&token)?)),
        RevokeTarget { jti: Some(jti), .. } => T::Jti(jti),
        RevokeTarget { task_id: Some(task), .. } => T::Task(task),
        RevokeTarget { subject: Some(sub), .. } => {
            T::Subject { issuer: issuer.ok_or("--subject needs --issuer")?, sub }
        }
        RevokeTarget { client_id: Some(id), .. } => T::Client(id),
        _ => return Err("name one target: --token, --jti, --task-id, --subject or --client-id".into()),
    };
    match client.broker()?.revoke(target, &reason).await {
        Ok(r) => print_json(&serde_json::json!({ "revoked": r.kind, "expires_at": r.expires_at })),
        Err(error) => client.failed(error),
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
    match client.broker()?.suspend(pb::SuspendRequest { target: Some(target), duration_seconds, reason }).await {
        Ok(r) => print_json(&serde_json::json!({ "suspended": r.kind, "suspended_until": r.suspended_until })),
        Err(error) => client.failed(error),
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
    match client.broker()?.resume(pb::ResumeRequest { target: Some(target), reason }).await {
        Ok(r) => print_json(&serde_json::json!({ "resumed": r.kind })),
        Err(error) => client.failed(error),
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
    match client.broker()?.approval(&id).await {
        Ok(approval) => print_json(&approval_json(approval)),
        Err(error) => client.failed(error),
    }
}

/// `tessera approve ID` / `tessera deny ID`: an approver's decision.
pub(super) async fn decide(id: String, approve: bool, reason: String, client: ClientArgs) -> Result<ExitCode, String> {
    let broker = client.broker()?;
    let answer = if approve { broker.approve(&id, &reason).await } else { broker.deny(&id, &reason).await };
    match answer {
        Ok(approval) => print_json(&approval_json(approval)),
        Err(error) => client.failed(error),
    }
}
