//! `[[clients]]`: who may call the broker, how each authenticates, and which RPCs each may call.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::Problems;
use crate::catalog::Audience;
use crate::client::{Client, ClientSecrets, Rpc, parse_sha256_hex};
use crate::issuer::IssuerSpec;
use crate::token::keys::KeySet;

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
    /// `private_key_jwt`: the `[[issuers]]` entry (by name, `issuer` = this client's id, `used_for` client
    /// assertions) whose keys verify its client assertions.
    pub assertion_issuer: Option<String>,
    /// jwt-spiffe: the SPIFFE IDs whose JWT-SVIDs authenticate this client (each of an issuer's trust domain).
    pub spiffe_ids: Vec<String>,
}

/// The clients; every audience's `introspect_clients` must name configured ones, every `assertion_issuer`
/// and SPIFFE ID an issuer that accepts client assertions; with `broker.client_secrets = "forbidden"`, no
/// client may have a secret.
pub(super) fn build(
    builders: Vec<ClientBuilder>,
    audiences: &[Audience],
    issuers: &[(IssuerSpec, KeySet)],
    secrets: ClientSecrets,
    problems: &mut Problems,
) -> Vec<Client> {
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
        for identity in &c.tls_identities {
            if identity.is_empty() || identity.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                problems.push(format!("{at}: tls_identities: `{}` is not a URI or DNS name", identity.escape_debug()));
            } else if clients.iter().any(|x: &Client| x.tls_identities.contains(identity))
                || c.tls_identities.iter().filter(|i| *i == identity).count() > 1
            {
                problems.push(format!("{at}: tls_identities: `{identity}` is listed more than once"));
            }
        }
        if secret.is_some() && secrets == ClientSecrets::Forbidden {
            problems.push(format!(
                "{at}: has `secret_sha256`, but broker.client_secrets = \"forbidden\": authenticate it with \
                 `assertion_issuer`, `spiffe_ids` or `tls_identities` instead"
            ));
        }
        if let Some(name) = &c.assertion_issuer {
            match issuers.iter().map(|(spec, _)| spec).find(|s| &s.name == name) {
                None => problems.push(format!("{at}: `assertion_issuer` names `{name}`, which is not an issuer")),
                Some(spec) if !spec.used_for.client_assertions() => problems.push(format!(
                    "{at}: `assertion_issuer` `{name}` does not accept client assertions (set its `used_for` to \
                     \"client_assertions\")"
                )),
                Some(spec) if spec.issuer.as_deref() != Some(c.id.as_str()) => problems.push(format!(
                    "{at}: `assertion_issuer` `{name}` must have `issuer` = the client id (`{}`): a private_key_jwt \
                     assertion's `iss` is the client id",
                    c.id
                )),
                Some(_) => {}
            }
        }
        let mut spiffe_ids = BTreeSet::new();
        for id in &c.spiffe_ids {
            let domain = id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/')).map(|(td, _)| td);
            let well_formed = domain.is_some_and(|td| !td.is_empty())
                && id.len() <= crate::issuer::MAX_SUB_BYTES
                && !id.chars().any(|ch| ch.is_control() || ch.is_whitespace());
            if !well_formed {
                problems
                    .push(format!("{at}: `spiffe_ids`: `{id}` is not a SPIFFE ID (`spiffe://<trust domain>/<path>`)"));
                continue;
            }
            let holder = issuers.iter().map(|(spec, _)| spec).find(|s| s.spiffe_trust_domain.as_deref() == domain);
            match holder {
                None => problems.push(format!("{at}: `spiffe_ids`: no issuer holds the trust domain of `{id}`")),
                Some(spec) if !spec.used_for.client_assertions() => problems.push(format!(
                    "{at}: `spiffe_ids`: the issuer of `{id}` (`{}`) does not accept client assertions (set its \
                     `used_for`)",
                    spec.name
                )),
                Some(_) => {}
            }
            if !spiffe_ids.insert(id.clone()) || clients.iter().any(|x: &Client| x.spiffe_ids().contains(id)) {
                problems.push(format!("{at}: `spiffe_ids`: `{id}` names more than one client"));
            }
        }
        if secret.is_none()
            && !c.loopback_anonymous
            && c.assertion_issuer.is_none()
            && spiffe_ids.is_empty()
            && c.tls_identities.is_empty()
        {
            problems.push(format!(
                "{at}: needs a way to authenticate: `secret_sha256`, `assertion_issuer`, `spiffe_ids`, \
                 `tls_identities` (or `loopback_anonymous = true`)"
            ));
        }
        if c.rpcs.is_empty() {
            problems
                .push(format!("{at}: `rpcs` must name at least one of exchange, introspect, revoke, suspend, watch"));
        }
        clients.push(
            Client::new(c.id, secret, c.rpcs.into_iter().collect(), c.loopback_anonymous)
                .with_tls_identities(c.tls_identities)
                .with_assertion_issuer(c.assertion_issuer)
                .with_spiffe_ids(spiffe_ids),
        );
    }
    if clients.iter().filter(|c| c.loopback_anonymous).count() > 1 {
        problems.push("clients: at most one client may be `loopback_anonymous`".into());
    }
    clients
}
