//! A real HTTPS upstream for the proxy's tests: axum over rustls with a certificate from a test CA, which
//! records every request it receives (method, path and query, headers, body) so a test can assert what the
//! upstream saw — the injected credential — and what it never saw.
//!
//! Paths under `/api/v1/` answer 200 with a small JSON body; a few do something an upstream might:
//! `…/echo` answers with the `x-api-key` it received in its body, `…/header` puts it in a response header,
//! `…/redirect` answers 302 to another host, `…/big` answers with 64 KiB, `…/stream` with 64 KiB
//! of chunks and no length, `…/slow` after 10 s.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

pub struct Upstream {
    /// `https://127.0.0.1:port`.
    pub url: String,
    /// The CA bundle its certificate chains to (PEM file).
    pub ca_file: std::path::PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Starts it on a free port.
    pub async fn start() -> Upstream {
        let pki = crate::tls::Pki::new("upstream test CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = crate::tls::write_leaf(dir.path(), "upstream", &pki.server());
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let tls = tessera::net::tls::TlsConfig {
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: tessera::net::tls::ClientAuth::Optional,
            reload_interval: std::time::Duration::from_secs(60),
        };
        tessera::install_crypto_provider();
        let acceptor = tessera::net::tls::Acceptor::new(tls, tessera::net::tls::ALPN_HTTP).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new().fallback(record).with_state(Arc::clone(&seen));
        let listener = tessera::net::tls::Listener::new(listener, acceptor).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Upstream { url, ca_file, seen, _dir: dir }
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match uri.path() {
        "/api/v1/echo" => (StatusCode::OK, format!("{{\"you_sent\":\"{key}\"}}")).into_response(),
        "/api/v1/header" => (StatusCode::OK, [("x-debug-key", key)], "{}").into_response(),
        "/api/v1/redirect" => {
            (StatusCode::FOUND, [("location", "https://elsewhere.example/collect")], "").into_response()
        }
        "/api/v1/slow" => {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            (StatusCode::OK, "late").into_response()
        }
        "/api/v1/big" => (StatusCode::OK, "x".repeat(64 * 1024)).into_response(),
        "/api/v1/stream" => {
            // 64 KiB in 1 KiB chunks, with no Content-Length: only counting tells how long it is.
            let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 1024])));
            axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        }
        _ => (StatusCode::OK, [("content-type", "application/json")], format!("{{\"path\":\"{}\"}}", uri.path()))
            .into_response(),
    }
}
