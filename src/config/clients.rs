//! `[[clients]]`: who may call the broker, how each authenticates, and which RPCs each may call.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::Problems;
use crate::catalog::Audience;
use crate::client::{Client, Rpc, parse_sha256_hex};

/// One `[[clients]]` entry as read; see docs/config.md `[[clients]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientBuilder {
    /// The client id of its HTTP Basic credentials (RFC 6749 §2.3.1); required, unique, without `:`.
    pub id: String,
    /// The SHA-256 of its secret, 64 hex digits; required unless `loopback_anonymous`.
    pub secret_sha256: Option<String>,
    /// The RPCs it may call (`exchange`, `introspect`, `revoke`); at least one.
    pub rpcs: Vec<Rpc>,
    /// Calls from a loopback peer without credentials are this client (default false; at most one client).
    pub loopback_anonymous: bool,
    /// Over mTLS, a client certificate with one of these URI SANs (a SPIFFE ID, `spiffe://…`) or DNS SANs
    /// is this client, without a secret (needs `[tls] client_ca_file`); unique across clients.
    pub tls_identities: Vec<String>,
}

/// The clients; every audience's `introspect_clients` must name configured ones.
pub(super) fn build(builders: Vec<ClientBuilder>, audiences: &[Audience], problems: &mut Problems) -> Vec<Client> {
    let client_ids: BTreeSet<&str> = builders.iter().map(|c| c.id.as_str()).collect();
    for a in audiences {
        for id in &a.introspect_clients {
            if !client_ids.contains(id.as_str()) {
                problems.push(format!("audiences ({}): introspect_clients names `{id}`, which is not a client", a.id));
            }
        }
    }
    let mut clients = Vec::new();
    for (i, c) in builders.into_iter().enumerate() {
        let at = format!("clients[{i}] ({})", c.id);
        if c.id.is_empty() || c.id.contains(':') || clients.iter().any(|x: &Client| x.id == c.id) {
            problems.push(format!("{at}: `id` is required, unique, and has no `:`"));
        }
        let secret = match &c.secret_sha256 {
            None => None,
            Some(hex) => {
                let parsed = parse_sha256_hex(hex);
                match &parsed {
                    None => problems.push(format!("{at}: `secret_sha256` must be 64 hex digits")),
                    Some(sha) if crate::client::is_empty_secret_sha256(sha) => problems.push(format!(
                        "{at}: `secret_sha256` is the SHA-256 of the empty string; a secret is required"
                    )),
                    Some(_) => {}
                }
                parsed
            }
        };
        if secret.is_none() && !c.loopback_anonymous && c.tls_identities.is_empty() {
            problems.push(format!("{at}: needs `secret_sha256`, `tls_identities` (or `loopback_anonymous = true`)"));
        }
        for identity in &c.tls_identities {
            if identity.is_empty() || identity.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                problems.push(format!("{at}: tls_identities: `{}` is not a URI or DNS name", identity.escape_debug()));
            } else if clients.iter().any(|x: &Client| x.tls_identities.contains(identity))
                || c.tls_identities.iter().filter(|i| *i == identity).count() > 1
            {
                problems.push(format!("{at}: tls_identities: `{identity}` is listed more than once"));
            }
        }
        if c.rpcs.is_empty() {
            problems.push(format!("{at}: `rpcs` must name at least one of exchange, introspect, revoke, suspend"));
        }
        clients.push(
            Client::new(c.id, secret, c.rpcs.into_iter().collect(), c.loopback_anonymous)
                .with_tls_identities(c.tls_identities),
        );
    }
    if clients.iter().filter(|c| c.loopback_anonymous).count() > 1 {
        problems.push("clients: at most one client may be `loopback_anonymous`".into());
    }
    clients
}
