//! `[approvals]`: step-up approvals ([`crate::approval`]) — how long they live, how often clients poll, and
//! the webhook that announces each new request.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Context, Problems};
use crate::approval::Settings;
use crate::secret::SigningSecret;

/// Seconds a request waits for a decision, by default.
pub const DEFAULT_PENDING_TTL: u64 = 900;
/// Seconds an approval stays usable once approved, by default.
pub const DEFAULT_APPROVED_TTL: u64 = 300;
/// Seconds a denial is remembered, by default: the same request is refused meanwhile.
pub const DEFAULT_DENIAL_TTL: u64 = 3600;
/// Seconds between polls a pending answer asks for, by default.
pub const DEFAULT_POLL_INTERVAL: u64 = 5;
/// The longest any of the lifetimes may be (a day): approvals are for one piece of work, not standing grants.
const MAX_TTL: u64 = 86_400;

/// `[approvals]` as read; see docs/config.md `[approvals]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsBuilder {
    /// Default [`DEFAULT_PENDING_TTL`].
    pub pending_ttl: Option<u64>,
    /// Default [`DEFAULT_APPROVED_TTL`].
    pub approved_ttl: Option<u64>,
    /// Default [`DEFAULT_DENIAL_TTL`].
    pub denial_ttl: Option<u64>,
    /// Default [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Option<u64>,
    /// Where new requests are announced (POST, JSON, signed); absent: no announcements.
    pub webhook_url: Option<String>,
    /// The file holding the webhook's HMAC key (at least 32 bytes); required with `webhook_url`.
    pub webhook_secret_file: Option<PathBuf>,
}

/// `[approvals]`, validated.
#[derive(Debug)]
pub struct ApprovalsConfig {
    /// Lifetimes and poll interval.
    pub settings: Settings,
    /// The webhook's URL and key, when configured.
    pub webhook: Option<(String, SigningSecret)>,
}

impl ApprovalsBuilder {
    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> ApprovalsConfig {
        let mut ttl = |name: &str, value: Option<u64>, default: u64| {
            let v = value.unwrap_or(default);
            if v == 0 || v > MAX_TTL {
                problems.push(format!("approvals.{name} must be between 1 and {MAX_TTL} seconds"));
            }
            v.clamp(1, MAX_TTL)
        };
        let settings = Settings {
            pending_ttl: ttl("pending_ttl", self.pending_ttl, DEFAULT_PENDING_TTL),
            approved_ttl: ttl("approved_ttl", self.approved_ttl, DEFAULT_APPROVED_TTL),
            denial_ttl: ttl("denial_ttl", self.denial_ttl, DEFAULT_DENIAL_TTL),
            interval: ttl("poll_interval", self.poll_interval, DEFAULT_POLL_INTERVAL),
        };
        let webhook = match (self.webhook_url, self.webhook_secret_file) {
            (None, None) => None,
            (Some(url), Some(file)) => {
                let loopback_http = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
                    .iter()
                    .any(|p| url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
                if !(url.starts_with("https://") || loopback_http) || url.contains(char::is_whitespace) {
                    problems.push("approvals.webhook_url must be an https:// URL (http:// only on loopback)".into());
                }
                match std::fs::read_to_string(cx.path(&file)) {
                    Ok(text) if text.trim().len() >= 32 => Some((url, SigningSecret::new(text.trim().to_string()))),
                    Ok(_) => {
                        problems.push("approvals.webhook_secret_file must hold a key of at least 32 bytes".into());
                        None
                    }
                    Err(e) => {
                        problems.push(format!("approvals.webhook_secret_file {}: {e}", file.display()));
                        None
                    }
                }
            }
            _ => {
                problems.push("approvals: webhook_url and webhook_secret_file go together".into());
                None
            }
        };
        ApprovalsConfig { settings, webhook }
    }
}
