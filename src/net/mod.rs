//! Accepting connections, the same way on every face (gRPC and HTTP): [`accept`] is the one place that
//! sets the options an accepted socket gets.
//!
//! `TCP_NODELAY` is set on every accepted socket. Without it, a response written in more than one segment
//! (HTTP/2 writes headers, data and trailers) waits for the client's delayed ACK under Nagle's algorithm:
//! about 40 ms per RPC for a client making one call at a time. Neither tonic's `serve_with_incoming*` nor a
//! plain `tokio::net::TcpListener` handed to `axum::serve` sets it.
//!
//! [`tls`] adds TLS (and mTLS client certificates) on top, for both faces.

pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};

/// Accepts the next connection on `listener`, with `TCP_NODELAY` set. A failure that concerns only the
/// connection being accepted (the peer gave up) is skipped; any other (out of file descriptors) is logged and
/// retried after a pause, so the accept loop never spins.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
                }
                return (stream, peer);
            }
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "accepting connections failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The gRPC face's connections (for tonic's `serve_with_incoming*`): [`accept`] over and over. Dropping the
/// stream closes the listener.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    futures_util::stream::unfold(listener, |listener| async move {
        let (stream, _) = accept(&listener).await;
        Some((Ok(stream), listener))
    })
}

/// The HTTP face's listener (for `axum::serve`): [`accept`] over and over.
#[derive(Debug)]
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        accept(&self.0).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    async fn bound() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn grpc_connections_are_accepted_with_nodelay() {
        let (listener, addr) = bound().await;
        let client = TcpStream::connect(addr).await.unwrap();
        let mut incoming = std::pin::pin!(incoming(listener));
        let accepted = incoming.next().await.unwrap().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "the gRPC face accepted a socket without TCP_NODELAY");
    }

    #[tokio::test]
    async fn http_connections_are_accepted_with_nodelay() {
        let (listener, addr) = bound().await;
        let client = TcpStream::connect(addr).await.unwrap();
        let mut listener = Listener(listener);
        let (accepted, peer) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "the HTTP face accepted a socket without TCP_NODELAY");
    }
}
