//! RFC 8935 push delivery: one task per push receiver on every replica; the one holding the receiver's lease
//! in the store reads the revocation log from the receiver's delivery cursor, POSTs each SET
//! (`application/secevent+jwt`), and advances the cursor once the receiver accepted it (202, or 200).
//! A refusal the receiver gives for the SET itself (400, RFC 8935 §2.3) is logged and skipped; anything else
//! (a connection failure, 5xx, 429, 401/403) is retried with backoff, in order, so the receiver never sees a
//! later SET before an earlier one. Infrastructure: the HTTP client lives here.

use std::sync::Arc;
use std::time::Duration;

use super::{Receiver, set_claims};
use crate::clock::now;
use crate::revocation::Store;
use crate::revocation::watch::WatchError;
use crate::token::Keyring;

/// How long a delivery lease lasts without renewal: a replica that dies hands over within this.
const LEASE_MS: u64 = 10_000;
/// How long a read of the log waits for the next revocation.
const WAIT: Duration = Duration::from_secs(2);
/// The longest pause between retries of one SET.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one POST came to.
enum Pushed {
    Accepted,
    /// The receiver refused this SET (RFC 8935 §2.3, 400): retrying it cannot help.
    Refused(String),
    /// Worth retrying.
    Failed(String),
}

async fn post(client: &reqwest::Client, receiver: &Receiver, set: String) -> Pushed {
    let super::Delivery::Push { url, authorization } = &receiver.delivery else {
        return Pushed::Refused("not a push receiver".into());
    };
    let mut request = client
        .post(url)
        .header("content-type", "application/secevent+jwt")
        .header("accept", "application/json")
        .body(set);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization.expose());
    }
    match request.send().await {
        Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 200 => Pushed::Accepted,
        Ok(r) if r.status().as_u16() == 400 => {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            Pushed::Refused(crate::audit::truncate(body["err"].as_str().unwrap_or("invalid_request"), 64))
        }
        Ok(r) => Pushed::Failed(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Pushed::Failed(if e.is_timeout() { "timed out".into() } else { "could not connect".into() }),
    }
}

/// Delivers to `receiver` for as long as the process runs.
pub async fn deliver(
    receiver: Receiver,
    issuer: String,
    keyring: Arc<Keyring>,
    store: Arc<dyn Store>,
    client: reqwest::Client,
) {
    let holder = crate::token::new_jti().unwrap_or_else(|_| format!("{}", crate::clock::now_ms()));
    let Some(mut reader) = store.watch_reader() else { return };
    let id = receiver.id.as_str();
    loop {
        if !matches!(store.ssf_lease(id, &holder, LEASE_MS).await, Ok(true)) {
            tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)).await;
            continue;
        }
        // Where to deliver from: the receiver's cursor, or — the first time — the log's current end.
        let cursor = match store.ssf_cursor(id).await {
            Ok(Some(cursor)) => cursor,
            Ok(None) => match reader.read("", 1, Duration::ZERO).await {
                Ok(end) if store.ssf_set_cursor(id, &end.cursor).await.is_ok() => end.cursor,
                _ => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let batch = match reader.read(&cursor, 32, WAIT).await {
            Ok(batch) => batch,
            Err(WatchError::CursorExpired) => {
                tracing::warn!(receiver = id, "SSF receiver fell behind the revocation log; delivering from now");
                if let Ok(end) = reader.read("", 1, Duration::ZERO).await {
                    let _ = store.ssf_set_cursor(id, &end.cursor).await;
                }
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        'events: for event in batch.events {
            let claims = set_claims(&issuer, &receiver, &event, now());
            let Ok(set) = keyring.sign_document(super::SET_TYP, &claims) else { break };
            let mut backoff = Duration::from_millis(100);
            loop {
                match post(&client, &receiver, set.clone()).await {
                    Pushed::Accepted => break,
                    Pushed::Refused(err) => {
                        tracing::warn!(receiver = id, err = err.as_str(), "SSF receiver refused a SET; skipping it");
                        break;
                    }
                    Pushed::Failed(why) => {
                        tracing::warn!(receiver = id, error = %why, "SSF push failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        if !matches!(store.ssf_lease(id, &holder, LEASE_MS).await, Ok(true)) {
                            break 'events;
                        }
                    }
                }
            }
            if store.ssf_set_cursor(id, &event.cursor).await.is_err() {
                break;
            }
        }
    }
}
