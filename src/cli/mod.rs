//! The command line: clap's definitions and the dispatch. `serve` runs the broker ([`serve`]); the client
//! commands (`exchange`, `introspect`, `revoke`) call a running broker over gRPC and print JSON on stdout
//! ([`client`]); the tools (`keygen`, `config check`, `policy check`, `dev assertion`, `audit`) work on files
//! and stores ([`tools`]). Errors go to stderr.

mod client;
mod serve;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use client::{ClientArgs, ExchangeArgs, RevokeTarget, SuspendTarget};
use tessera::dev;

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
        /// The credential-injecting proxy's listen address [default: 127.0.0.1:8081, or proxy.listen]; the
        /// proxy runs when the config has [[proxy.routes]].
        #[arg(long, env = "TESSERA_PROXY_ADDR")]
        proxy_addr: Option<String>,
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
    /// The kill switch: suspend a principal or a client (every new exchange by it is refused) and revoke every
    /// token it has; prints JSON.
    Suspend {
        #[command(flatten)]
        target: SuspendTarget,
        /// The issuer of --subject (its `iss` or its name in the config).
        #[arg(long, requires = "subject")]
        issuer: Option<String>,
        /// How long the suspension lasts, in seconds [default: a day; at most 30 days].
        #[arg(long = "for", default_value_t = 0)]
        duration: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a suspension (what it revoked stays revoked); prints JSON.
    Resume {
        #[command(flatten)]
        target: SuspendTarget,
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
    /// Show a step-up approval (what was asked, why, where it stands); prints JSON. For its requester or an
    /// approver.
    Approval {
        /// The approval id an `authorization_pending` answer named (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a pending step-up approval (approvers only): the identical exchange retried then succeeds once.
    Approve {
        /// The approval id an `authorization_pending` answer named (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Recorded in the approval and the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a pending step-up approval (approvers only): the identical exchange stays refused.
    Deny {
        /// The approval id an `authorization_pending` answer named (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Recorded in the approval and the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
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
    /// Validate a Cedar policy file against tessera's schema; with --subject-token or --principal, print the
    /// decision on each scope and the policies that made it.
    Check(Box<tools::PolicyCheckArgs>),
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
    /// Print the dev issuer's public JWK Set (generating its key if needed), for a config file's
    /// `[[issuers]] jwks_file` that should trust `tessera dev assertion`: issuer `https://dev-issuer.tessera.localhost`,
    /// audience `https://tessera.localhost`.
    Jwks {
        #[arg(long, env = "TESSERA_DEV_DIR", default_value = dev::DEV_DIR)]
        dev_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Alg {
    Eddsa,
    Es256,
}

pub(crate) fn main() -> ExitCode {
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
        Command::Serve { config, grpc_addr, http_addr, proxy_addr, redis_url, dev_dir } => {
            serve::serve(config.as_deref(), serve::Overrides { grpc_addr, http_addr, proxy_addr, redis_url }, &dev_dir)
        }
        Command::Exchange(args) => runtime()?.block_on(client::exchange(*args)),
        Command::Introspect { token, client } => runtime()?.block_on(client::introspect(token, client)),
        Command::Revoke { target, issuer, reason, client } => {
            runtime()?.block_on(client::revoke(target, issuer, reason, client))
        }
        Command::Suspend { target, issuer, duration, reason, client } => {
            runtime()?.block_on(client::suspend(target, issuer, duration, reason, client))
        }
        Command::Resume { target, issuer, reason, client } => {
            runtime()?.block_on(client::resume(target, issuer, reason, client))
        }
        Command::Approval { id, client } => runtime()?.block_on(client::approval(id, client)),
        Command::Approve { id, reason, client } => runtime()?.block_on(client::decide(id, true, reason, client)),
        Command::Deny { id, reason, client } => runtime()?.block_on(client::decide(id, false, reason, client)),
        Command::Audit { redis_url, task, sub, jti } => {
            runtime()?.block_on(tools::audit(&redis_url, tessera::audit::Filter { task_id: task, sub, jti }))
        }
        Command::Keygen { alg, out } => tools::keygen(alg, &out),
        Command::Config { command: ConfigCommand::Check { file } } => tools::config_check(&file),
        Command::Policy { command: PolicyCommand::Check(args) } => tools::policy_check(&args),
        Command::Dev { command: DevCommand::Assertion { sub, scope, ttl, dev_dir } } => {
            tools::dev_assertion(&dev_dir, &sub, scope.as_deref(), ttl)
        }
        Command::Dev { command: DevCommand::Jwks { dev_dir } } => {
            println!("{}", dev::issuer_jwks(&dev_dir)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_form_encoded() {
        assert_eq!(tessera::sdk::form_encode("a+b %:c"), "a%2Bb+%25%3Ac");
    }

    #[test]
    fn an_approval_id_may_start_with_a_hyphen() {
        use clap::Parser as _;
        for command in ["approval", "approve", "deny"] {
            let parsed = super::Cli::try_parse_from(["tessera", command, "-oTBlr8N0kW1o2K3aQ4wZg"]);
            assert!(parsed.is_ok(), "{command}: {:?}", parsed.err());
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
