//! The approvals webhook: each new approval request is POSTed as JSON to `approvals.webhook_url`, signed
//! with HMAC-SHA256 under `approvals.webhook_secret_file`, off the request path (a bounded queue and one
//! delivery task, with retries).
//!
//! The signature follows the common `t=…,v1=…` scheme: header `Tessera-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">`. A receiver recomputes it over the raw body, compares in constant time, and
//! rejects a `t` too far from its clock (replays). The body names the approval and how to decide it; it
//! carries identifiers and what was asked, never a token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Announcer, Approval, approval_uri};
use crate::metrics::Metrics;
use crate::secret::SigningSecret;

/// Announcements waiting for delivery; past this they are dropped (and counted as failed).
const QUEUE: usize = 1024;
/// Delivery attempts per announcement, with 1 s, 2 s, 4 s … between them.
const ATTEMPTS: u32 = 5;

/// Where and how announcements go.
#[derive(Debug)]
pub struct Settings {
    /// The receiver's URL (`https://…`, or `http://` on loopback).
    pub url: String,
    /// The HMAC key.
    pub secret: SigningSecret,
    /// The broker's issuer, under which the approval URIs are.
    pub broker_issuer: String,
}

/// The webhook announcer: queues announcements for its delivery task.
#[derive(Debug)]
pub struct Webhook {
    queue: mpsc::Sender<Approval>,
    metrics: Metrics,
}

impl Announcer for Webhook {
    fn announce(&self, approval: &Approval) {
        if self.queue.try_send(approval.clone()).is_err() {
            tracing::warn!(approval_id = approval.approval_id.as_str(), "approval webhook queue full: dropped");
            self.metrics.approval_webhooks.add(1, &[opentelemetry::KeyValue::new("outcome", "failed")]);
        }
    }
}

/// `Tessera-Signature` for `body` at `t`: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &SigningSecret, t: u64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The JSON body announcing `approval`.
pub fn body(approval: &Approval, broker_issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "approval.requested",
        "approval": approval,
        "approval_uri": approval_uri(broker_issuer, &approval.approval_id),
        "decide": {
            "approve": format!("tessera approve {}", approval.approval_id),
            "deny": format!("tessera deny {}", approval.approval_id),
        },
    })
}

/// Starts the delivery task; the announcer queues for it. Ends when the announcer is dropped.
pub fn spawn(settings: Settings, metrics: Metrics) -> Result<(Arc<Webhook>, tokio::task::JoinHandle<()>), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        // A receiver that redirects is misconfigured; the signed body is not sent on to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("approvals webhook client: {e}"))?;
    let (queue, mut rx) = mpsc::channel::<Approval>(QUEUE);
    let webhook = Arc::new(Webhook { queue, metrics: metrics.clone() });
    let task = tokio::spawn(async move {
        while let Some(approval) = rx.recv().await {
            let outcome = deliver(&http, &settings, &approval).await;
            let word = if outcome { "delivered" } else { "failed" };
            metrics.approval_webhooks.add(1, &[opentelemetry::KeyValue::new("outcome", word)]);
        }
    });
    Ok((webhook, task))
}

/// Delivers one announcement, retrying with backoff; whether a 2xx answered it.
async fn deliver(http: &reqwest::Client, settings: &Settings, approval: &Approval) -> bool {
    let Ok(body) = serde_json::to_vec(&body(approval, &settings.broker_issuer)) else { return false };
    let id = approval.approval_id.as_str();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let t = crate::clock::now();
        let sent = http
            .post(&settings.url)
            .header("content-type", "application/json")
            .header("tessera-event", "approval.requested")
            .header("tessera-signature", signature(&settings.secret, t, &body))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::warn!(approval_id = id, status = r.status().as_u16(), attempt, "approval webhook refused")
            }
            Err(e) => tracing::warn!(approval_id = id, error = %e.without_url(), attempt, "approval webhook failed"),
        }
    }
    false
}
