//! `[ssf]`: Shared Signals (SSF 1.0 / CAEP 1.0) receivers tessera transmits its revocations to
//! ([`crate::ssf`]), each by push (RFC 8935) or poll (RFC 8936).

use std::path::PathBuf;

use serde::Deserialize;

use super::{Context, Problems};
use crate::ssf::receive::Transmitter;
use crate::ssf::{Delivery, Receiver};

/// `[ssf]` as read; see docs/config.md `[ssf]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsfBuilder {
    /// `[[ssf.receivers]]`: who gets a SET for every revocation.
    pub receivers: Vec<SsfReceiverBuilder>,
    /// `[[ssf.transmitters]]`: upstream identity providers whose SETs tessera acts on.
    pub transmitters: Vec<SsfTransmitterBuilder>,
}

/// One `[[ssf.transmitters]]` as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsfTransmitterBuilder {
    /// The `[[issuers]]` entry (by `name`) whose keys verify its SETs and whose principals it speaks for.
    pub issuer: String,
    /// The `aud` its SETs must carry (default: the broker's issuer).
    pub audience: Option<String>,
    /// Also suspend a principal it signals (default false: revoke only).
    pub suspend: Option<bool>,
    /// How long such a suspension lasts, in seconds (default a day; at most 30 days).
    pub suspend_seconds: Option<u64>,
}

/// One `[[ssf.receivers]]` as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsfReceiverBuilder {
    /// Its name: letters, digits, `-` and `_` (it appears in SET `jti`s and the poll URL).
    pub id: String,
    /// The `aud` of its SETs (default: the id).
    pub audience: Option<String>,
    /// Push (RFC 8935): the URL SETs are POSTed to.
    pub push_url: Option<String>,
    /// Push: a file holding the `Authorization` header value to send (e.g. `Bearer …`), re-read at start.
    pub push_authorization_file: Option<PathBuf>,
    /// Poll (RFC 8936): the SHA-256 (hex) of the bearer token it polls `/ssf/poll/<id>` with.
    pub poll_token_sha256: Option<String>,
}

impl SsfBuilder {
    /// The transmitters, each naming one of `issuers` (the configured `[[issuers]]` names).
    pub(super) fn build_transmitters(
        transmitters: Vec<SsfTransmitterBuilder>,
        issuers: &[&str],
        broker_issuer: &str,
        problems: &mut Problems,
    ) -> Vec<Transmitter> {
        let mut out: Vec<Transmitter> = Vec::new();
        for (i, t) in transmitters.into_iter().enumerate() {
            let at = format!("ssf.transmitters[{i}]");
            if !issuers.contains(&t.issuer.as_str()) {
                problems.push(format!("{at}.issuer: `{}` is not the name of an [[issuers]] entry", t.issuer));
                continue;
            }
            if out.iter().any(|o| o.issuer == t.issuer) {
                problems.push(format!("{at}.issuer: `{}` names more than one transmitter", t.issuer));
                continue;
            }
            let seconds = t.suspend_seconds.unwrap_or(crate::revocation::DEFAULT_SUSPENSION);
            if seconds == 0 || seconds > crate::revocation::MAX_SUSPENSION {
                problems.push(format!("{at}.suspend_seconds: 1 to {}", crate::revocation::MAX_SUSPENSION));
            }
            if t.suspend_seconds.is_some() && t.suspend != Some(true) {
                problems.push(format!("{at}.suspend_seconds: only with suspend = true"));
            }
            let suspend = (t.suspend == Some(true)).then_some(seconds);
            let audience = t.audience.unwrap_or_else(|| broker_issuer.to_string());
            out.push(Transmitter { issuer: t.issuer, audience, suspend });
        }
        out
    }

    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> Vec<Receiver> {
        let mut receivers: Vec<Receiver> = Vec::new();
        for (i, r) in self.receivers.into_iter().enumerate() {
            let at = format!("ssf.receivers[{i}]");
            let id_ok = !r.id.is_empty()
                && r.id.len() <= 64
                && r.id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if !id_ok {
                problems.push(format!("{at}.id: 1 to 64 letters, digits, `-` or `_`"));
                continue;
            }
            if receivers.iter().any(|other| other.id == r.id) {
                problems.push(format!("{at}.id: `{}` names more than one receiver", r.id));
                continue;
            }
            let delivery = match (r.push_url, r.poll_token_sha256) {
                (Some(url), None) if super::is_https_like(&url) => {
                    let authorization = match &r.push_authorization_file {
                        None => None,
                        Some(path) => match std::fs::read_to_string(cx.path(path)) {
                            Ok(value) if !value.trim().is_empty() && !value.trim().contains(['\r', '\n']) => {
                                Some(std::sync::Arc::new(crate::secret::Token::new(value.trim())))
                            }
                            Ok(_) => {
                                problems.push(format!("{at}.push_authorization_file: one non-empty line"));
                                None
                            }
                            Err(e) => {
                                problems.push(format!("{at}.push_authorization_file: {e}"));
                                None
                            }
                        },
                    };
                    Delivery::Push { url, authorization }
                }
                (Some(_), None) => {
                    problems.push(format!("{at}.push_url: an http(s) URL"));
                    continue;
                }
                (None, Some(sha)) => {
                    let mut token_sha256 = [0u8; 32];
                    if hex::decode_to_slice(&sha, &mut token_sha256).is_err() {
                        problems.push(format!("{at}.poll_token_sha256: 64 hex digits"));
                        continue;
                    }
                    if r.push_authorization_file.is_some() {
                        problems.push(format!("{at}.push_authorization_file: only with push_url"));
                    }
                    Delivery::Poll { token_sha256 }
                }
                _ => {
                    problems.push(format!("{at}: exactly one of push_url and poll_token_sha256"));
                    continue;
                }
            };
            let audience = r.audience.unwrap_or_else(|| r.id.clone());
            receivers.push(Receiver { id: r.id, audience, delivery });
        }
        receivers
    }
}
