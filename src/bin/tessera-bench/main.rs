//! `tessera-bench`: measures tessera from where its users stand — a separate process, over the network.
//!
//! - `load`: a fixed-duration load run (after a warm-up) of gRPC `ExchangeToken`/`Introspect` or HTTP
//!   `/oauth2/token`/`/oauth2/introspect`, at a given number of connections and requests in flight, with
//!   realistic requests (distinct assertions, a mix of delegation depths, granted and refused). It drives any
//!   RFC 8693 server over HTTP (the peer in `docs/benchmarks.md`) from a file of subject tokens.
//! - `propagation`: replicas on one Redis; the time from `Revoke` returning to every replica answering
//!   inactive.
//! - `ceiling`: what the crypto of one exchange (verify an Ed25519 assertion, sign a token) costs per core,
//!   with pre-parsed keys: the bound the service's throughput is compared with.
//! - `config`: a config file equal to dev mode's (same keys, catalog, policy) with a `[store]` of choice,
//!   since dev mode itself has no mirror mode.
//!
//! Not a test: timings belong here, not in `cargo test` (which only smoke-tests this binary).

mod ceiling;
mod driver;
mod load;
mod propagation;
mod report;
mod requests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The same allocator as the server's: the load generator should spend its share of the machine on requests.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tessera-bench", version, about = "Load generator and benchmarks for tessera (a separate process)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A load run against one server: throughput, latency percentiles, errors.
    Load(Box<load::LoadArgs>),
    /// Revocation propagation across replicas of one broker on one Redis.
    Propagation(propagation::PropagationArgs),
    /// The crypto ceiling: Ed25519 verify + sign per core, with pre-parsed keys.
    Ceiling(ceiling::CeilingArgs),
    /// Prints a config file equal to dev mode's (keys and policy from --dev-dir), with the given store.
    Config {
        /// The dev folder of a `tessera serve` that ran in dev mode (its keys and policy).
        #[arg(long)]
        dev_dir: PathBuf,
        #[arg(long)]
        redis_url: Option<String>,
        /// `strict` or `mirror` (with --redis-url).
        #[arg(long, default_value = "strict")]
        mode: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Config { dev_dir, redis_url, mode } => config(&dev_dir, redis_url.as_deref(), &mode),
        Command::Ceiling(args) => ceiling::run(&args),
        command => runtime().and_then(|rt| {
            rt.block_on(async move {
                match command {
                    Command::Load(args) => load::run(*args).await,
                    Command::Propagation(args) => propagation::run(args).await,
                    Command::Ceiling(_) | Command::Config { .. } => unreachable!("handled above"),
                }
            })
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        // The run happened but had errors: it does not count as a result.
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("tessera-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One thread: the load generator shares the machine with the server and Redis, and a second worker would
/// spend much of its time waking the first (futexes, cross-thread task hand-offs) rather than sending.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// The dev mode configuration as a file: dev mode's keys, policy, issuer, catalog and client, plus a store.
fn config(dev_dir: &std::path::Path, redis_url: Option<&str>, mode: &str) -> Result<bool, String> {
    let dir = std::fs::canonicalize(dev_dir).map_err(|e| format!("{}: {e}", dev_dir.display()))?;
    let jwks_path = dir.join("dev-issuer.jwks.json");
    std::fs::write(&jwks_path, tessera::dev::issuer_jwks(&dir)?).map_err(|e| e.to_string())?;
    let store = match redis_url {
        Some(url) => format!("[store]\nredis_url = \"{url}\"\nmode = \"{mode}\"\n"),
        None => String::new(),
    };
    let d = dir.display();
    println!(
        r#"# Dev mode's configuration as a file (tessera-bench config), with the store under test.
[broker]
issuer = "{broker}"
task_introspect_clients = ["demo"]

[signing]
keys = ["{d}/signing-key.pem"]

[policy]
file = "{d}/policy.cedar"

{store}
[[issuers]]
name = "dev"
issuer = "{dev_issuer}"
jwks_file = "{jwks}"
algorithms = ["EdDSA"]

[[audiences]]
id = "{audience}"
scopes = ["crm:read", "crm:write", "crm:export"]
max_ttl = 300
introspect_clients = ["demo"]

[[clients]]
id = "demo"
loopback_anonymous = true
rpcs = ["exchange", "introspect", "revoke", "suspend"]
"#,
        broker = tessera::dev::BROKER_ISSUER,
        dev_issuer = tessera::dev::DEV_ISSUER,
        jwks = jwks_path.display(),
        audience = tessera::dev::DEMO_AUDIENCE,
    );
    Ok(true)
}
