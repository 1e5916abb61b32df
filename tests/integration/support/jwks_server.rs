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
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (state, hits) = (Arc::clone(&state), Arc::clone(&hits));
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let (state, hits) = (Arc::clone(&state), Arc::clone(&hits));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let _ = socket.read(&mut buf).await;
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
        JwksServer { url, state, hits, task }
    }

    pub async fn serve(&self, status: u16, body: String) {
        *self.state.lock().await = (status, body);
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
