//! The plain HTTP face, on its own listener next to gRPC: the OAuth endpoints ([`oauth`]), forward-auth and
//! resource metadata for gateways ([`gateway`]), the revocation watch as Server-Sent Events ([`watch`]), the
//! signed Token Status Lists ([`status_list`]), Shared Signals metadata and polling ([`ssf`]),
//! `GET /metrics` (Prometheus text) and `GET /healthz`.

use std::future::Future;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

pub mod gateway;
pub mod oauth;
pub mod ssf;
pub mod status_list;
pub mod watch;

/// Serves the HTTP face in plaintext on `listener` until `shutdown` completes. Connections are accepted by
/// [`crate::net`], which sets `TCP_NODELAY` on each.
pub async fn serve(
    listener: TcpListener,
    broker: std::sync::Arc<crate::broker::Broker>,
    registry: Option<prometheus::Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, broker, registry, None, shutdown).await
}

/// As [`serve`]; with `tls`, connections are TLS (HTTP/2 or HTTP/1.1 by ALPN), and a client certificate the
/// CA bundle accepts identifies its client.
pub async fn serve_with_tls(
    listener: TcpListener,
    broker: std::sync::Arc<crate::broker::Broker>,
    registry: Option<prometheus::Registry>,
    tls: Option<crate::net::tls::TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls
        .map(|tls| crate::net::tls::Acceptor::new(tls, crate::net::tls::ALPN_HTTP))
        .transpose()
        .map_err(std::io::Error::other)?;
    // Broker operations run in the shared slots, within the request timeout; health and metrics never wait.
    let limit = axum::middleware::from_fn_with_state(std::sync::Arc::clone(&broker), oauth::within_limits);
    let mut router = Router::new()
        .merge(oauth::router(std::sync::Arc::clone(&broker)))
        .merge(gateway::router(std::sync::Arc::clone(&broker)))
        .merge(watch::router(std::sync::Arc::clone(&broker)))
        .merge(status_list::router(std::sync::Arc::clone(&broker)))
        .merge(ssf::router(broker))
        .layer(limit)
        .route("/healthz", get(|| async { "ok\n" }));
    if let Some(registry) = registry {
        router = router.route("/metrics", get(move || metrics(registry.clone())));
    }
    tracing::info!(addr = %listener.local_addr()?, tls = acceptor.is_some(), "tessera serving HTTP");
    // The peer's address tells the loopback client apart (dev mode); its certificate, an mTLS client.
    let service = router.into_make_service_with_connect_info::<oauth::Peer>();
    match acceptor {
        None => axum::serve(crate::net::Listener(listener), service).with_graceful_shutdown(shutdown).await,
        Some(acceptor) => {
            let reload = acceptor.spawn_reload();
            let listener = crate::net::tls::Listener::new(listener, acceptor)?;
            let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
            reload.abort();
            served
        }
    }
}

async fn metrics(registry: prometheus::Registry) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
