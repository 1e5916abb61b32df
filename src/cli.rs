//! The command line: `serve`, the clients (`exchange`), and the tools (`keygen`, `config check`,
//! `policy check`, `dev assertion`). Client commands print JSON on stdout; errors go to stderr.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tessera::config::{Config, ConfigBuilder, LogFormat};
use tessera::grpc::pb;
use tessera::token::keys::{SigningAlgorithm, SigningKey};
use tessera::{dev, serve, telemetry};

#[derive(Parser)]
#[command(name = "tessera", version, about = "A credential broker for AI agents (RFC 8693 token exchange)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without --config: dev mode (generated keys in ./.tessera-dev, demo catalog and policy).
    Serve {
        #[arg(long, env = "TESSERA_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC listen address [default: 127.0.0.1:50051, or the config's server.grpc_addr].
        #[arg(long, env = "TESSERA_GRPC_ADDR")]
        grpc_addr: Option<String>,
        /// HTTP listen address (`/metrics`, `/healthz`) [default: 127.0.0.1:8080, or server.http_addr].
        #[arg(long, env = "TESSERA_HTTP_ADDR")]
        http_addr: Option<String>,
        /// Redis for the revocation list (`redis://host:port`), overriding the config's store.redis_url.
        #[arg(long, env = "TESSERA_REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        /// Folder for dev mode's generated keys.
        #[arg(long, env = "TESSERA_DEV_DIR", default_value = dev::DEV_DIR)]
        dev_dir: PathBuf,
    },
    /// Introspect a tessera token (RFC 7662); prints the response as JSON. TOKEN `-` reads stdin.
    Introspect {
        token: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke one target: a token (and everything derived from it), a jti, a task, a subject or a client.
    Revoke {
        #[command(flatten)]
        target: RevokeTarget,
        /// The issuer of --subject (its `iss` or its name in the config).
        #[arg(long, requires = "subject")]
        issuer: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Exchange a subject token (and optionally an actor token) for a narrower token; prints the RFC 8693
    /// response as JSON.
    Exchange(Box<ExchangeArgs>),
    /// Print the audit trail from the Redis stream (oldest first, JSON lines): which agent got which
    /// credential for a task, when, and what happened to it.
    Audit {
        #[arg(long, env = "TESSERA_REDIS_URL", hide_env_values = true)]
        redis_url: String,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        jti: Option<String>,
    },
    /// Write a new signing key (PKCS#8 PEM) and print its `kid`.
    Keygen {
        #[arg(long, value_enum, default_value_t = Alg::Eddsa)]
        alg: Alg,
        /// Where to write the key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Dev mode helpers.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (and the keys, JWKS and policy it names); lists every problem.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a Cedar policy file against tessera's schema.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print an assertion signed by the dev issuer (dev mode only).
    Assertion {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        #[arg(long, env = "TESSERA_DEV_DIR", default_value = dev::DEV_DIR)]
        dev_dir: PathBuf,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct RevokeTarget {
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
struct ClientArgs {
    /// The broker's gRPC address.
    #[arg(long, env = "TESSERA_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The client to authenticate as (with --client-secret).
    #[arg(long, env = "TESSERA_CLIENT_ID")]
    as_client: Option<String>,
    #[arg(long, env = "TESSERA_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
}

impl ClientArgs {
    async fn connect(&self) -> Result<pb::token_broker_client::TokenBrokerClient<tonic::transport::Channel>, String> {
        pb::token_broker_client::TokenBrokerClient::connect(self.addr.clone())
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.addr))
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, String> {
        let mut request = tonic::Request::new(message);
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
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Prints a refusal as an OAuth error document on stderr.
fn print_status(status: &tonic::Status) -> Result<ExitCode, String> {
    use tonic_types::StatusExt as _;
    let error = status.get_details_error_info().map(|i| i.reason).unwrap_or_else(|| status.code().to_string());
    let json = serde_json::json!({ "error": error, "error_description": status.message(), "grpc_status": status.code() as i32 });
    eprintln!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    Ok(ExitCode::FAILURE)
}

fn print_json(value: &serde_json::Value) -> Result<ExitCode, String> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    Eddsa,
    Es256,
}

#[derive(clap::Args)]
struct ExchangeArgs {
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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tessera: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve { config, grpc_addr, http_addr, redis_url, dev_dir } => {
            serve(config, Overrides { grpc_addr, http_addr, redis_url }, &dev_dir)
        }
        Command::Exchange(args) => runtime()?.block_on(exchange(*args)),
        Command::Introspect { token, client } => runtime()?.block_on(introspect(token, client)),
        Command::Audit { redis_url, task, sub, jti } => {
            let filter = tessera::audit::Filter { task_id: task, sub, jti };
            let events = runtime()?.block_on(tessera::audit::stream::read(&redis_url, &filter))?;
            for e in events {
                println!("{}", serde_json::to_string(&e).map_err(|e| e.to_string())?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { target, issuer, reason, client } => {
            runtime()?.block_on(revoke(target, issuer, reason, client))
        }
        Command::Keygen { alg, out } => {
            let alg = match alg {
                Alg::Eddsa => SigningAlgorithm::EdDSA,
                Alg::Es256 => SigningAlgorithm::ES256,
            };
            let (key, pem) = SigningKey::generate(alg)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            std::io::Write::write_all(&mut file, pem.expose().as_bytes()).map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({ "kid": key.kid(), "alg": key.alg().as_str(), "file": out }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { file } } => match load_config(&file, Overrides::default()) {
            Ok(config) => {
                println!(
                    "{}: ok ({} issuers, {} audiences, {} clients, {} signing keys)",
                    file.display(),
                    config.issuers.len(),
                    config.audiences.len(),
                    config.clients.len(),
                    config.signing_keys.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(format!("{}: {e}", file.display())),
        },
        Command::Policy { command: PolicyCommand::Check { file } } => {
            let source = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            match tessera::policy::Policy::new(&source) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => Err(format!("{}:\n  - {}", file.display(), problems.join("\n  - "))),
            }
        }
        Command::Dev { command: DevCommand::Assertion { sub, scope, ttl, dev_dir } } => {
            let token = dev::assertion(&dev_dir, &sub, scope.as_deref(), ttl.clamp(1, 86_400), tessera::clock::now())?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Command-line flags that override the config file.
#[derive(Default)]
struct Overrides {
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    redis_url: Option<String>,
}

impl Overrides {
    fn apply(self, builder: &mut ConfigBuilder) {
        if self.grpc_addr.is_some() {
            builder.server.grpc_addr = self.grpc_addr;
        }
        if self.http_addr.is_some() {
            builder.server.http_addr = self.http_addr;
        }
        if let Some(url) = self.redis_url {
            builder.store.redis_url = Some(url.into());
        }
    }
}

fn load_config(file: &Path, overrides: Overrides) -> Result<Config, String> {
    let mut builder = ConfigBuilder::load(file).map_err(|e| e.to_string())?;
    overrides.apply(&mut builder);
    let base = file.parent().unwrap_or(Path::new("."));
    builder.build(base).map_err(|e| e.to_string())
}

fn serve(config: Option<PathBuf>, overrides: Overrides, dev_dir: &Path) -> Result<ExitCode, String> {
    let (config, dev_mode) = match &config {
        Some(file) => (load_config(file, overrides)?, false),
        None => {
            let Overrides { grpc_addr, http_addr, redis_url } = overrides;
            (dev::config(dev_dir, grpc_addr, http_addr, redis_url).map_err(|e| e.to_string())?, true)
        }
    };
    let settings = config.server;
    runtime()?.block_on(async move {
        let telemetry = telemetry::init(&config.log, &config.telemetry)?;
        if dev_mode {
            tracing::warn!("{}", dev::WARNING);
            if config.log.format == LogFormat::Text {
                eprintln!("\n  !!! {} !!!\n", dev::WARNING);
            }
        }
        let broker = Arc::new(serve::broker(config, tessera::metrics::Metrics::global()).await?);
        let (grpc, http) = (bind(settings.grpc_addr).await?, bind(settings.http_addr).await?);
        // One signal stops both faces: gRPC drains in-flight RPCs, HTTP finishes its requests.
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let http_stopped = async move {
            let _ = stopped.changed().await;
        };
        let http = tokio::spawn(tessera::http::serve(http, telemetry.registry.clone(), http_stopped));
        let grpc_stopped = async move {
            serve::shutdown_signal().await;
            let _ = stop.send(true);
        };
        let served = serve::run(grpc, broker, settings, grpc_stopped).await.map_err(|e| e.to_string());
        let _ = http.await;
        telemetry.shutdown();
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{addr}: {e}"))
}

fn read_token(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut token = String::new();
    std::io::stdin().read_to_string(&mut token).map_err(|e| e.to_string())?;
    Ok(token.trim().to_string())
}

async fn exchange(args: ExchangeArgs) -> Result<ExitCode, String> {
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
    };
    let request = args.client.request(request)?;
    match args.client.connect().await?.exchange_token(request).await {
        Ok(response) => {
            let r = response.into_inner();
            print_json(&serde_json::json!({
                "access_token": r.access_token,
                "issued_token_type": r.issued_token_type,
                "token_type": r.token_type,
                "expires_in": r.expires_in,
                "scope": r.scope,
            }))
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

async fn introspect(token: String, client: ClientArgs) -> Result<ExitCode, String> {
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
            print_json(&json)
        }
        Err(status) => print_status(&status),
    }
}

async fn revoke(
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

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_form_encoded() {
        assert_eq!(super::form_encode("a+b %:c"), "a%2Bb+%25%3Ac");
    }

    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
