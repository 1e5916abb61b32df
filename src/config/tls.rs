//! `[tls]`: TLS on both listeners, and mTLS client certificates.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Context, Problems};
use crate::net::tls::{ClientAuth, TlsConfig};

/// How often the certificate, key and CA bundle are re-read, by default (seconds).
pub const DEFAULT_TLS_RELOAD_INTERVAL: u64 = 10;

/// `[tls]` as read; see docs/config.md `[tls]`. Absent (or without `cert_file`): both faces serve plaintext.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsBuilder {
    /// PEM certificate chain, leaf first; with `key_file`, turns TLS on for both listeners.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle client certificates are verified against (mTLS); absent: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// `optional` (default) or `required`: whether every connection must present a client certificate.
    pub client_auth: Option<ClientAuth>,
    /// Seconds between re-reads of the files (default [`DEFAULT_TLS_RELOAD_INTERVAL`]).
    pub reload_interval: Option<u64>,
}

impl TlsBuilder {
    /// `None`: plaintext. The files are loaded now, so `tessera config check` proves they make a working
    /// TLS config.
    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> Option<TlsConfig> {
        let (cert_file, key_file) = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => (cx.path(&cert), cx.path(&key)),
            (None, None) => {
                if self.client_ca_file.is_some() || self.client_auth.is_some() {
                    problems.push("tls: client_ca_file and client_auth need cert_file and key_file".into());
                }
                return None;
            }
            _ => {
                problems.push("tls: cert_file and key_file go together".into());
                return None;
            }
        };
        if self.client_auth == Some(ClientAuth::Required) && self.client_ca_file.is_none() {
            problems.push("tls: client_auth = \"required\" needs client_ca_file".into());
        }
        let reload = self.reload_interval.unwrap_or(DEFAULT_TLS_RELOAD_INTERVAL);
        if reload == 0 {
            problems.push("tls: reload_interval must be at least 1 second".into());
        }
        let config = TlsConfig {
            cert_file,
            key_file,
            client_ca_file: self.client_ca_file.map(|p| cx.path(&p)),
            client_auth: self.client_auth.unwrap_or(ClientAuth::Optional),
            reload_interval: Duration::from_secs(reload.max(1)),
        };
        if let Err(problem) = crate::net::tls::check(&config) {
            problems.push(format!("tls: {problem}"));
        }
        Some(config)
    }
}
