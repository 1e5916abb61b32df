//! A minimal HTTP server that serves a JWKS document on loopback, whose content and status tests change
//! at will, and which counts the requests it answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

pub struct JwksServer {
    pub url: String,
    state: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    /// The head (request line and headers) of the last request, lowercased.
    last_request: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let last_request = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn({
            let (state, hits, last) = (Arc::clone(&state), Arc::clone(&hits), Arc::clone(&last_request));
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let (state, hits, last) = (Arc::clone(&state), Arc::clone(&hits), Arc::clone(&last));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        *last.lock().await = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                        let (status, body) = state.lock().await.clone();
                        hits.fetch_add(1, Ordering::SeqCst);
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            }
        });
        JwksServer { url, state, hits, last_request, task }
    }

    pub async fn serve(&self, status: u16, body: String) {
        *self.state.lock().await = (status, body);
    }

    pub async fn last_request(&self) -> String {
        self.last_request.lock().await.clone()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
