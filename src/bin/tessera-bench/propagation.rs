//! Revocation propagation: replicas of one broker on one Redis. Each round issues a token on the first
//! replica, checks every replica sees it active, revokes it on the first replica, and from the moment
//! `Revoke` returns polls every replica (concurrently, back to back) until each answers inactive. The
//! round's time is the slowest replica's; a replica whose first answer after `Revoke` returned was still
//! "active" is a stale answer (strict mode promises none).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera::grpc::pb;
use tessera::grpc::pb::token_broker_client::TokenBrokerClient;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Latencies, micros, ms};

#[derive(clap::Args)]
pub(crate) struct PropagationArgs {
    /// A replica's gRPC address (`grpc://host:port`); the first one issues and revokes. Repeat per replica.
    #[arg(long = "replica", required = true)]
    replicas: Vec<String>,
    /// The replicas' dev folder (the dev issuer key mints the assertions).
    #[arg(long)]
    dev_dir: PathBuf,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    #[arg(long, default_value = "")]
    label: String,
}

pub(crate) async fn run(args: PropagationArgs) -> Result<bool, String> {
    let mut clients = Vec::new();
    for r in &args.replicas {
        let url = format!("http://{}", r.strip_prefix("grpc://").unwrap_or(r));
        let endpoint = Endpoint::from_shared(url).map_err(|e| e.to_string())?.tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| format!("cannot reach {r}: {e}"))?;
        clients.push(TokenBrokerClient::new(channel));
    }
    let mut times = Vec::with_capacity(args.rounds);
    let mut stale = 0usize;
    for round in 0..args.rounds {
        let now = tessera::clock::now();
        let assertion = tessera::dev::assertion(&args.dev_dir, &format!("bench-revoked-{round}"), None, 600, now)?;
        let request = pb::ExchangeTokenRequest {
            grant_type: tessera::exchange::GRANT_TYPE_TOKEN_EXCHANGE.into(),
            audience: vec![tessera::dev::DEMO_AUDIENCE.into()],
            scope: "crm:read".into(),
            subject_token: assertion,
            subject_token_type: tessera::exchange::TOKEN_TYPE_JWT.into(),
            task_id: format!("bench-propagation-{round}"),
            ..pb::ExchangeTokenRequest::default()
        };
        let token = clients[0]
            .clone()
            .exchange_token(request)
            .await
            .map_err(|s| format!("ExchangeToken: {:?}", s.code()))?
            .into_inner()
            .access_token;
        for c in &clients {
            if !active(c, &token).await? {
                return Err("a fresh token is not active on every replica".into());
            }
        }
        let revoke = pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(token.clone())),
            reason: "tessera-bench propagation".into(),
        };
        clients[0].clone().revoke(revoke).await.map_err(|s| format!("Revoke: {:?}", s.code()))?;
        let revoked = Instant::now();
        let polls = clients.iter().map(|c| until_inactive(c, &token, revoked));
        let answers = futures_util::future::join_all(polls).await;
        let mut slowest = Duration::ZERO;
        for a in answers {
            let (took, first_was_active) = a?;
            slowest = slowest.max(took);
            stale += usize::from(first_was_active);
        }
        times.push(micros(slowest));
    }
    let l = Latencies::new(times);
    let label = if args.label.is_empty() { "propagation".to_string() } else { args.label };
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} |",
        args.replicas.len(),
        l.len(),
        ms(l.quantile(0.5)),
        ms(l.quantile(0.9)),
        ms(l.quantile(0.99)),
        ms(l.max()),
        stale
    );
    eprintln!(
        "{}",
        serde_json::json!({ "label": label, "replicas": args.replicas.len(), "rounds": l.len(),
            "p50_us": l.quantile(0.5), "p90_us": l.quantile(0.9), "p99_us": l.quantile(0.99), "max_us": l.max(),
            "stale_first_answers": stale })
    );
    Ok(true)
}

async fn active(client: &TokenBrokerClient<Channel>, token: &str) -> Result<bool, String> {
    let r = pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() };
    client.clone().introspect(r).await.map(|r| r.into_inner().active).map_err(|s| format!("Introspect: {:?}", s.code()))
}

/// Polls until the replica answers inactive: how long after `since` that answer came, and whether the first
/// answer was still active.
async fn until_inactive(
    client: &TokenBrokerClient<Channel>,
    token: &str,
    since: Instant,
) -> Result<(Duration, bool), String> {
    let mut first = true;
    let mut first_was_active = false;
    loop {
        if !active(client, token).await? {
            return Ok((since.elapsed(), first_was_active));
        }
        if first {
            first_was_active = true;
            first = false;
        }
        if since.elapsed() > Duration::from_secs(10) {
            return Err("a revoked token stayed active for 10 s on a replica".into());
        }
    }
}
