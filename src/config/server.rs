//! `[server]`: where the faces listen and the bounds on every request.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// The gRPC face's default address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// The HTTP face's default address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// The largest request message accepted, by default: tokens are bounded by issuer config.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Every RPC ends within this, by default.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Broker RPCs in flight at once, by default; past it, callers wait for a slot.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// How long a call may wait for a slot, by default, before it is shed (RESOURCE_EXHAUSTED / 503).
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 250;
/// Seconds between two reads of the config file and the files it names, by default, to reload them when
/// their content changed (0 turns the watch off; SIGHUP still reloads).
pub const DEFAULT_CONFIG_RELOAD_INTERVAL: u64 = 5;
/// The smallest `max_request_bytes` accepted.
const MIN_REQUEST_BYTES: usize = 4096;

/// `[server]` as read; see docs/config.md `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerBuilder {
    /// The gRPC listen address, an IP and a port (default [`DEFAULT_GRPC_ADDR`]).
    pub grpc_addr: Option<String>,
    /// Plain HTTP: `/metrics` and `/healthz` (and, later, the OAuth endpoints).
    pub http_addr: Option<String>,
    /// The largest encoded request accepted, in bytes (default 64 KiB, at least 4096).
    pub max_request_bytes: Option<usize>,
    /// Every RPC ends after this many milliseconds (default 5000).
    pub request_timeout_ms: Option<u64>,
    /// Broker RPCs in flight at once across all connections (default 1024); past it, callers wait.
    pub max_concurrent_requests: Option<usize>,
    /// Milliseconds a broker call may wait for a slot before it is shed (default 250).
    pub max_queue_wait_ms: Option<u64>,
    /// Seconds between checks of the config file and the files it names for a change, which is then
    /// reloaded (default [`DEFAULT_CONFIG_RELOAD_INTERVAL`]; 0: only SIGHUP reloads).
    pub config_reload_interval: Option<u64>,
}

/// The validated `[server]` section: what the faces bind and the bounds on every request.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Where the gRPC face listens; port 0 picks a free one.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP face (`/metrics`, `/healthz`) listens; never the gRPC port.
    pub http_addr: SocketAddr,
    /// The largest encoded request message, in bytes; larger ones are refused before decoding.
    pub max_request_bytes: usize,
    /// The longest any RPC may run, whatever the peer or an upstream JWKS endpoint does.
    pub request_timeout: Duration,
    /// The most broker RPCs in flight at once; past it, new ones wait for a slot.
    pub max_concurrent_requests: usize,
    /// How long a broker call may wait for a slot before it is shed.
    pub max_queue_wait: Duration,
    /// How often the config file and the files it names are checked for a change (`None`: never; SIGHUP
    /// still reloads).
    pub config_reload_interval: Option<Duration>,
}

impl ServerBuilder {
    pub(super) fn build(self, problems: &mut Problems) -> ServerConfig {
        let address = |key: &str, given: Option<&str>, default: &str, problems: &mut Problems| {
            let text = given.unwrap_or(default);
            text.parse().unwrap_or_else(|_| {
                problems.push(format!("server.{key}: `{text}` is not an address (host:port)"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let grpc_addr = address("grpc_addr", self.grpc_addr.as_deref(), DEFAULT_GRPC_ADDR, problems);
        let http_addr = address("http_addr", self.http_addr.as_deref(), DEFAULT_HTTP_ADDR, problems);
        if ports_clash(grpc_addr, http_addr) {
            problems.push("server: http_addr and grpc_addr must not share a port (0 picks a free one for each)".into());
        }
        let server = ServerConfig {
            grpc_addr,
            http_addr,
            max_request_bytes: self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            request_timeout: Duration::from_millis(self.request_timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
            max_queue_wait: Duration::from_millis(self.max_queue_wait_ms.unwrap_or(DEFAULT_MAX_QUEUE_WAIT_MS)),
            config_reload_interval: match self.config_reload_interval.unwrap_or(DEFAULT_CONFIG_RELOAD_INTERVAL) {
                0 => None,
                seconds => Some(Duration::from_secs(seconds)),
            },
        };
        if server.max_request_bytes < MIN_REQUEST_BYTES
            || server.max_concurrent_requests == 0
            || server.request_timeout.is_zero()
        {
            problems.push(
                "server: max_request_bytes ≥ 4096, max_concurrent_requests ≥ 1 and request_timeout_ms ≥ 1".into(),
            );
        }
        server
    }
}

/// Whether two listen addresses would bind the same port: the same non-zero port on the same IP, or on an
/// unspecified address (`0.0.0.0`, `::`) that covers the other. Port 0 lets the system pick a free one each.
fn ports_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_clash_only_on_one_real_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(ports_clash(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(ports_clash(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(ports_clash(a("127.0.0.1:8080"), a("[::]:8080")));
        assert!(!ports_clash(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!ports_clash(a("127.0.0.1:0"), a("127.0.0.1:0")), "port 0: each gets a free port");
        assert!(!ports_clash(a("127.0.0.1:8080"), a("127.0.0.1:50051")));
    }
}
