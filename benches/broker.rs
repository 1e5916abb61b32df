//! `cargo bench --bench broker`: prints the numbers in docs/benchmarks.md.
//!
//! Starts its own `redis-server` on a free loopback port and measures, on this machine:
//! exchange and introspection latency in process (memory store, Redis strict, Redis mirror), introspection
//! throughput over gRPC with concurrent clients, and revocation propagation between two replicas (the time
//! from `Revoke` returning on one replica until the other answers `active: false`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::Broker;
use tessera::client::{Client, Credentials, Rpc};
use tessera::config::MirrorSettings;
use tessera::exchange::{ExchangeRequest, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};
use tessera::grpc::pb;
use tessera::introspect::Introspection;
use tessera::revocation::RevokeRequest;
use tessera::secret::Token;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Memory,
    Strict,
    Mirror,
}

async fn broker(dir: &std::path::Path, redis: Option<u16>, store: Store) -> Arc<Broker> {
    let url = redis.filter(|_| store != Store::Memory).map(|p| format!("redis://127.0.0.1:{p}"));
    let mut config = tessera::dev::config(dir, None, None, url).expect("dev config");
    if store == Store::Mirror
        && let Some(s) = config.store.as_mut()
    {
        s.mirror =
            Some(MirrorSettings { max_staleness: Duration::from_secs(2), heartbeat: Duration::from_millis(500) });
    }
    Arc::new(tessera::serve::broker(config, tessera::metrics::Metrics::global()).await.expect("broker"))
}

fn client(broker: &Broker) -> Client {
    let c = Credentials { peer_is_loopback: true, ..Credentials::default() };
    broker.current().clients().authenticate(&c, Rpc::Exchange).expect("demo client").clone()
}

fn request(assertion: &str) -> ExchangeRequest {
    ExchangeRequest {
        grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
        audience: vec![tessera::dev::DEMO_AUDIENCE.into()],
        scope: "crm:read".into(),
        subject_token: Token::new(assertion),
        subject_token_type: TOKEN_TYPE_JWT.into(),
        task_id: "bench".into(),
        ..Default::default()
    }
}

struct Stats(Vec<Duration>);

impl Stats {
    fn line(mut self, what: &str) -> String {
        self.0.sort();
        let n = self.0.len();
        let at = |q: f64| self.0[((n as f64 * q) as usize).min(n - 1)];
        let mean = self.0.iter().sum::<Duration>() / n as u32;
        format!(
            "| {what} | {n} | {:.1} | {:.1} | {:.1} | {:.1} |",
            us(mean),
            us(at(0.5)),
            us(at(0.99)),
            us(self.0[n - 1])
        )
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

async fn mint(broker: &Broker, client: &Client, dir: &std::path::Path) -> Token {
    let assertion = tessera::dev::assertion(dir, "bench-orchestrator", None, 600, tessera::clock::now()).unwrap();
    broker.exchange(client, request(&assertion), tessera::clock::now()).await.expect("exchange").access_token
}

/// Introspections per second over gRPC: `concurrency` clients, each on its own connection, `seconds` long.
async fn grpc_throughput(broker: Arc<Broker>, token: &str, concurrency: usize, seconds: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = tessera::config::ServerConfig {
        grpc_addr: addr,
        http_addr: addr,
        max_request_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(5),
        max_concurrent_requests: 4096,
        max_queue_wait: Duration::from_millis(250),
        config_reload_interval: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera::serve::run(listener, broker, settings, async {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let token = token.to_string();
        let url = format!("http://{addr}");
        tasks.push(tokio::spawn(async move {
            let mut c = pb::token_broker_client::TokenBrokerClient::connect(url).await.unwrap();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r =
                    c.introspect(pb::IntrospectRequest { token: token.clone(), token_type_hint: String::new() }).await;
                assert!(r.unwrap().into_inner().active);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let _ = tx.send(());
    let _ = server.await;
    total as f64 / seconds as f64
}

async fn propagation(a: &Broker, b: &Broker, dir: &std::path::Path, rounds: usize) -> Stats {
    let (ca, cb) = (client(a), client(b));
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let token = mint(a, &ca, dir).await;
        let now = tessera::clock::now();
        a.revoke(&ca, RevokeRequest::Token(Token::new(token.expose())), "bench", now).await.expect("revoke");
        let returned = Instant::now();
        loop {
            if b.introspect(&cb, &token, now).await.expect("introspect") == Introspection::Inactive {
                break;
            }
            tokio::task::yield_now().await;
        }
        samples.push(returned.elapsed());
    }
    Stats(samples)
}

async fn run() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let memory = broker(d, None, Store::Memory).await;
    let strict = broker(d, Some(redis.1), Store::Strict).await;
    let strict_b = broker(d, Some(redis.1), Store::Strict).await;
    let mirror = broker(d, Some(redis.1), Store::Mirror).await;
    let mirror_b = broker(d, Some(redis.1), Store::Mirror).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // mirrors subscribe and sync

    println!("## In process, one task at a time (µs)\n");
    println!("| operation | n | mean | p50 | p99 | max |\n|---|---|---|---|---|---|");
    for (name, b) in [("memory", &memory), ("redis strict", &strict), ("redis mirror", &mirror)] {
        let c = client(b);
        let assertion = tessera::dev::assertion(d, "bench-orchestrator", None, 600, tessera::clock::now()).unwrap();
        let mut ex = Vec::new();
        for _ in 0..2000 {
            let (r, t) = timed(b.exchange(&c, request(&assertion), tessera::clock::now())).await;
            r.expect("exchange");
            ex.push(t);
        }
        println!("{}", Stats(ex).line(&format!("ExchangeToken ({name})")));
        let token = mint(b, &c, d).await;
        let mut intro = Vec::new();
        for _ in 0..5000 {
            let (r, t) = timed(b.introspect(&c, &token, tessera::clock::now())).await;
            assert!(matches!(r.expect("introspect"), Introspection::Active(_)));
            intro.push(t);
        }
        println!("{}", Stats(intro).line(&format!("Introspect ({name})")));
    }

    println!(
        "\n## Revocation propagation between two replicas (µs from Revoke returning until the other replica answers inactive)\n"
    );
    println!("| mode | n | mean | p50 | p99 | max |\n|---|---|---|---|---|---|");
    println!("{}", propagation(&strict, &strict_b, d, 300).await.line("strict"));
    println!("{}", propagation(&mirror, &mirror_b, d, 300).await.line("mirror (pub/sub)"));

    println!("\n## Introspection throughput over gRPC (loopback, 64 concurrent clients, 5 s)\n");
    println!("| store | introspections/s |\n|---|---|");
    for (name, b) in [("memory", &memory), ("redis strict", &strict), ("redis mirror", &mirror)] {
        let token = mint(b, &client(b), d).await;
        let rate = grpc_throughput(Arc::clone(b), token.expose(), 64, 5).await;
        println!("| {name} | {rate:.0} |");
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}
