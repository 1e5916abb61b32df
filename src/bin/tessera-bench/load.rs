//! A load run: `in_flight` loops share `connections` connections and send the prepared requests back to
//! back for the warm-up and then the measured duration; only requests that start and end inside the
//! measured window count. A run with any error says so and exits 2: it is not a result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{Answer, Driver, HttpPaths};
use crate::report::{Latencies, micros, ms};
use crate::requests::{self, Expect, Mix, Request, Subjects};

#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// `grpc://host:port` (tessera's gRPC face) or `http://host:port` (tessera's HTTP face, or a peer).
    #[arg(long)]
    target: String,
    /// `exchange` or `introspect`.
    #[arg(long, value_parser = ["exchange", "introspect"])]
    op: String,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once (loops sending back to back).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up before the measurement (same load, not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Dev folder of the server under test: assertions are minted with its dev issuer key.
    #[arg(long, conflicts_with = "subject_tokens")]
    dev_dir: Option<PathBuf>,
    /// Subject tokens, one a line (a peer's upstream tokens), instead of --dev-dir.
    #[arg(long)]
    subject_tokens: Option<PathBuf>,
    /// Tokens to introspect, one a line (all expected active), instead of issuing them first.
    #[arg(long)]
    introspect_tokens: Option<PathBuf>,
    /// Distinct requests (and subjects) in the mix.
    #[arg(long, default_value_t = 2000)]
    distinct: usize,
    /// Percent of refused requests: exchanges for --refused-scope, introspections of revoked tokens.
    #[arg(long, default_value_t = 10)]
    refused_percent: usize,
    /// Percent of depth-2 exchanges: a task token re-exchanged with an actor token (--dev-dir only).
    #[arg(long, default_value_t = 30)]
    delegated_percent: usize,
    #[arg(long, default_value = tessera::dev::DEMO_AUDIENCE)]
    audience: String,
    #[arg(long, default_value = "crm:read")]
    scope: String,
    #[arg(long, default_value = "crm:export")]
    refused_scope: String,
    /// Client credentials for HTTP Basic, `id:secret` (a peer's; tessera's dev client needs none on loopback).
    #[arg(long)]
    basic: Option<String>,
    #[arg(long, default_value = "/oauth2/token")]
    token_path: String,
    #[arg(long, default_value = "/oauth2/introspect")]
    introspect_path: String,
    #[arg(long, default_value = "/oauth2/revoke")]
    revoke_path: String,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1 (HTTP targets).
    #[arg(long)]
    http2: bool,
    /// Names the run in the table row.
    #[arg(long, default_value = "")]
    label: String,
    /// The server's process id: its CPU (with its child processes', as a multi-process peer's workers) over
    /// the measured window, per counted request, goes in the row. A host's speed moves throughput far more than
    /// the CPU a request costs, so this is what shows a change of a few percent.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Redis' process id: its CPU per counted request, as for --server-pid.
    #[arg(long)]
    redis_pid: Option<u32>,
}

/// What one loop saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    granted: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

pub(crate) async fn run(args: LoadArgs) -> Result<bool, String> {
    let paths = HttpPaths {
        token: args.token_path.clone(),
        introspect: args.introspect_path.clone(),
        revoke: args.revoke_path.clone(),
    };
    let driver = Driver::connect(&args.target, args.connections, args.http2, &paths, args.basic.as_deref()).await?;
    let subjects = match (&args.dev_dir, &args.subject_tokens) {
        (Some(dir), _) => Subjects::Dev(dir),
        (None, Some(file)) => Subjects::File(lines(file)?),
        (None, None) if args.introspect_tokens.is_some() => Subjects::File(Vec::new()),
        (None, None) => return Err("--dev-dir or --subject-tokens is needed".into()),
    };
    let distinct = match &subjects {
        Subjects::File(tokens) if !tokens.is_empty() => args.distinct.min(tokens.len()),
        _ => args.distinct,
    };
    let mix = Mix {
        distinct: distinct.max(1),
        refused_percent: args.refused_percent.min(100),
        delegated_percent: args.delegated_percent.min(100),
        audience: args.audience.clone(),
        scope: args.scope.clone(),
        refused_scope: args.refused_scope.clone(),
    };
    let mut plan = match args.op.as_str() {
        "exchange" => requests::exchanges(&driver, &subjects, &mix).await?,
        _ => {
            let tokens = args.introspect_tokens.as_ref().map(|f| lines(f)).transpose()?;
            requests::introspections(&driver, &subjects, &mix, tokens).await?
        }
    };
    requests::shuffle(&mut plan);
    let plan = Arc::new(plan);
    let driver = Arc::new(driver);
    let in_flight = args.in_flight.max(1);
    let start = Instant::now() + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = start + Duration::from_secs_f64(args.duration.max(0.1));
    // The server's, Redis' and this load generator's own: the three share the machine's cores.
    let pids = [args.server_pid, args.redis_pid, Some(std::process::id())];
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let before = pids.map(|p| p.and_then(cpu_ticks));
        tokio::time::sleep_until(end.into()).await;
        let after = pids.map(|p| p.and_then(cpu_ticks));
        [0, 1, 2].map(|i| Some(after[i]?.saturating_sub(before[i]?)))
    });
    let loops: Vec<_> = (0..in_flight)
        .map(|i| {
            let (driver, plan) = (Arc::clone(&driver), Arc::clone(&plan));
            tokio::spawn(async move { drive(&driver, &plan, i, in_flight, start, end).await })
        })
        .collect();
    let mut total = Tally::default();
    for l in loops {
        let t = l.await.map_err(|e| e.to_string())?;
        total.latencies.extend_from_slice(&t.latencies);
        total.granted += t.granted;
        total.refused += t.refused;
        total.errors += t.errors;
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
    }
    let seconds = args.duration.max(0.1);
    let latencies = Latencies::new(total.latencies);
    // Clock ticks (USER_HZ: 100 a second on Linux) per counted request, in µs.
    let per_request = |ticks: Option<u64>| {
        let requests = latencies.len().max(1) as f64;
        ticks.map(|t| (t as f64 * 10_000.0 / requests).round())
    };
    let [server_cpu, redis_cpu, bench_cpu] = cpu.await.map_err(|e| e.to_string())?.map(per_request);
    let cell = |us: Option<f64>| us.map_or("–".to_string(), |us| format!("{us:.0}"));
    let rate = latencies.len() as f64 / seconds;
    let depth2 = plan.iter().filter(|r| r.depth == 2).count();
    let label = if args.label.is_empty() { format!("{} {}", args.op, args.target) } else { args.label.clone() };
    let result = if total.errors == 0 { "ok" } else { "ERRORS: not a result" };
    // The markdown row docs/benchmarks.md quotes, then a JSON line for scripts.
    println!(
        "| {label} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        driver.connections(),
        in_flight,
        rate,
        ms(latencies.quantile(0.50)),
        ms(latencies.quantile(0.90)),
        ms(latencies.quantile(0.99)),
        ms(latencies.max()),
        total.granted,
        total.refused,
        if total.errors == 0 { "0".to_string() } else { format!("**{}**", total.errors) },
        cell(server_cpu),
        cell(redis_cpu),
        cell(bench_cpu),
    );
    let json = serde_json::json!({
        "label": label, "op": args.op, "target": args.target, "connections": driver.connections(),
        "in_flight": in_flight, "seconds": seconds, "requests": latencies.len(), "per_second": rate.round(),
        "p50_us": latencies.quantile(0.50), "p90_us": latencies.quantile(0.90), "p99_us": latencies.quantile(0.99),
        "max_us": latencies.max(), "mean_us": latencies.mean().round(), "granted": total.granted,
        "refused": total.refused, "errors": total.errors, "distinct": plan.len(), "depth2": depth2, "result": result,
        "server_cpu_us": server_cpu, "redis_cpu_us": redis_cpu,
        "load_generator_cpu_us": bench_cpu,
    });
    eprintln!("{json}");
    if let Some(e) = &total.first_error {
        eprintln!("tessera-bench: {} errors; the first: {e}", total.errors);
    }
    Ok(total.errors == 0 && latencies.len() > 0)
}

/// One loop: request `i`, `i + stride`, … of the plan, back to back, until `end`.
async fn drive(driver: &Driver, plan: &[Request], i: usize, stride: usize, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally { latencies: Vec::with_capacity(1 << 14), ..Tally::default() };
    let mut next = i;
    loop {
        let request = &plan[next % plan.len()];
        next += stride;
        let began = Instant::now();
        if began >= end {
            return tally;
        }
        let answer = driver.send(i, &request.wire).await;
        let done = Instant::now();
        if began < start || done > end {
            continue;
        }
        match (answer, request.expect) {
            (Ok(Answer::Granted(_)), Expect::Granted) => tally.granted += 1,
            (Ok(Answer::Refused), Expect::Refused) => tally.refused += 1,
            (Ok(got), expected) => {
                tally.errors += 1;
                let got = if matches!(got, Answer::Granted(_)) { "granted/active" } else { "refused/inactive" };
                tally.first_error.get_or_insert_with(|| format!("expected {expected:?}, got {got}"));
            }
            (Err(e), _) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(e);
            }
        }
        tally.latencies.push(micros(done - began));
    }
}

/// The CPU time (user and system, in clock ticks) of process `root` and every process descended from it, as
/// `/proc` has it now; `None` if `root` is gone.
fn cpu_ticks(root: u32) -> Option<u64> {
    // Per process: (pid, parent, ticks). The fields after the command (which may hold spaces, so is cut at
    // its last `)`): state, ppid, … utime and stime are the 12th and 13th.
    let stat = |pid: u32| -> Option<(u32, u32, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((pid, fields.get(1)?.parse().ok()?, ticks))
    };
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect();
    let mut tree = vec![root];
    let mut total = all.iter().find(|(pid, ..)| *pid == root)?.2;
    let mut i = 0;
    while let Some(&parent) = tree.get(i) {
        for (pid, _, ticks) in all.iter().filter(|(_, ppid, _)| *ppid == parent) {
            tree.push(*pid);
            total += ticks;
        }
        i += 1;
    }
    Some(total)
}

/// The non-empty lines of a file.
pub(crate) fn lines(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}
