//! Clients: who may call the broker, how they prove it, and which RPCs each may call.
//!
//! A client authenticates with a secret (HTTP Basic in the `authorization` metadata, RFC 6749 §2.3.1) whose
//! SHA-256 is all the config holds, compared in constant time. A client marked `loopback_anonymous` is the
//! one a caller on the loopback interface becomes when it presents no credentials (dev mode's demo client).
//! Over mTLS, a client is also known by its certificate: a URI SAN (a SPIFFE ID) or DNS SAN of the leaf the
//! CA bundle accepted, mapped to the client by its `tls_identities`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use base64::Engine as _;

use crate::error::{Error, ErrorCode, Result};
use crate::secret::{ClientSecret, constant_time_eq};

/// The RPCs a client may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// `ExchangeToken`: RFC 8693 token exchange.
    Exchange,
    /// `Introspect`: RFC 7662 introspection.
    Introspect,
    /// `Revoke`: revoking tokens, tasks, subjects or clients.
    Revoke,
    /// `Suspend` and `Resume`: the kill switch (operators).
    Suspend,
}

/// One configured client: its id, the hash of its secret, and what it may call.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// The client id of its Basic credentials, recorded in issued tokens (`client_id`) and audit events.
    pub id: String,
    secret_sha256: Option<[u8; 32]>,
    rpcs: BTreeSet<Rpc>,
    /// A loopback caller without credentials becomes this client (dev mode; at most one client).
    pub loopback_anonymous: bool,
    /// The certificate identities (URI or DNS SANs) that are this client over mTLS.
    pub tls_identities: Vec<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("has_secret", &self.secret_sha256.is_some())
            .field("rpcs", &self.rpcs)
            .field("loopback_anonymous", &self.loopback_anonymous)
            .field("tls_identities", &self.tls_identities)
            .finish()
    }
}

impl Client {
    /// A client; `secret_sha256` is the SHA-256 of its secret (`None`: it cannot authenticate with one).
    pub fn new(id: String, secret_sha256: Option<[u8; 32]>, rpcs: BTreeSet<Rpc>, loopback_anonymous: bool) -> Self {
        Client { id, secret_sha256, rpcs, loopback_anonymous, tls_identities: Vec::new() }
    }

    /// The client, also known by these certificate identities over mTLS.
    pub fn with_tls_identities(mut self, identities: Vec<String>) -> Self {
        self.tls_identities = identities;
        self
    }
}

/// The leaf of a client certificate chain the TLS handshake verified against the CA bundle: what the faces
/// hand the core of it (the core never parses certificates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Its URI SANs (SPIFFE IDs), then its DNS SANs.
    pub identities: Vec<String>,
    /// SHA-256 of its DER: the `x5t#S256` a certificate-bound token is bound to (RFC 8705 §3.1).
    pub sha256: [u8; 32],
}

/// What a caller presented, taken from request metadata by an adapter.
#[derive(Debug, Default)]
pub struct Credentials {
    /// The client id and secret of an `authorization: Basic` value, both form-decoded; `None`: none sent.
    pub basic: Option<(String, ClientSecret)>,
    /// The peer connected from a loopback address: without credentials it may be the `loopback_anonymous`
    /// client.
    pub peer_is_loopback: bool,
    /// The client certificate the connection presented (mTLS), verified by the TLS handshake.
    pub certificate: Option<std::sync::Arc<PeerCertificate>>,
}

impl Credentials {
    /// Parses an `authorization: Basic …` value; the scheme name is case-insensitive (RFC 7235 §2.1). A
    /// malformed header is an authentication failure.
    pub fn from_authorization(value: Option<&str>, peer_is_loopback: bool) -> Result<Credentials> {
        let bad = || Error::new(ErrorCode::InvalidClient, "malformed client credentials");
        let basic = match value {
            None => None,
            Some(v) => {
                let (scheme, encoded) = v.split_once(' ').ok_or_else(bad)?;
                if !scheme.eq_ignore_ascii_case("basic") {
                    return Err(bad());
                }
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
                let decoded = ClientSecret::new(String::from_utf8(decoded).map_err(|_| bad())?);
                let (id, secret) = decoded.expose().split_once(':').ok_or_else(bad)?;
                // RFC 6749 §2.3.1: both halves are form-urlencoded before they are joined.
                Some((form_decode(id).ok_or_else(bad)?, ClientSecret::new(form_decode(secret).ok_or_else(bad)?)))
            }
        };
        Ok(Credentials { basic, peer_is_loopback, certificate: None })
    }

    /// The same credentials, presented over a connection with this verified client certificate.
    pub fn over(mut self, certificate: Option<std::sync::Arc<PeerCertificate>>) -> Credentials {
        self.certificate = certificate;
        self
    }
}

/// The configured clients, by id: authenticates callers and checks which RPCs each may call.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    by_id: HashMap<String, Client>,
    /// Certificate identity → client id (identities are unique across clients once the config is validated).
    by_tls_identity: HashMap<String, String>,
}

impl Clients {
    /// The clients, keyed by id (ids are unique once the config is validated).
    pub fn new(clients: Vec<Client>) -> Clients {
        let by_tls_identity =
            clients.iter().flat_map(|c| c.tls_identities.iter().map(|i| (i.clone(), c.id.clone()))).collect();
        Clients { by_id: clients.into_iter().map(|c| (c.id.clone(), c)).collect(), by_tls_identity }
    }

    /// The client a verified certificate is, through its identities: `Ok(None)` when none is mapped, an
    /// error when they name two different clients.
    fn by_certificate(&self, certificate: &PeerCertificate) -> Result<Option<&Client>> {
        let mut ids = certificate.identities.iter().filter_map(|i| self.by_tls_identity.get(i));
        let Some(first) = ids.next() else { return Ok(None) };
        if ids.any(|other| other != first) {
            return Err(Error::new(ErrorCode::InvalidClient, "the client certificate names two clients"));
        }
        Ok(self.by_id.get(first))
    }

    /// Identifies the caller and checks it may call `rpc`.
    pub fn authenticate(&self, credentials: &Credentials, rpc: Rpc) -> Result<&Client> {
        let failed = || Error::new(ErrorCode::InvalidClient, "client authentication failed");
        let certified = credentials.certificate.as_deref().map(|c| self.by_certificate(c)).transpose()?.flatten();
        let client = match &credentials.basic {
            // A certificate mapped to one client and credentials naming another: refused, whichever is right.
            Some((id, _)) if certified.is_some_and(|c| &c.id != id) => return Err(failed()),
            None if certified.is_some() => certified.ok_or_else(failed)?,
            Some((id, secret)) => {
                // An empty secret never authenticates, whatever hash a client was given.
                if secret.expose().is_empty() {
                    return Err(failed());
                }
                let client = self.by_id.get(id).ok_or_else(failed)?;
                let expected = client.secret_sha256.ok_or_else(failed)?;
                let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.expose().as_bytes());
                if !constant_time_eq(presented.as_ref(), &expected) {
                    return Err(failed());
                }
                client
            }
            None if credentials.peer_is_loopback => self
                .by_id
                .values()
                .find(|c| c.loopback_anonymous)
                .ok_or_else(|| Error::new(ErrorCode::InvalidClient, "client authentication required"))?,
            None => {
                return Err(Error::new(ErrorCode::InvalidClient, "client authentication required"));
            }
        };
        if !client.rpcs.contains(&rpc) {
            return Err(Error::new(ErrorCode::UnauthorizedClient, "client may not call this RPC"));
        }
        Ok(client)
    }
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Option<String> {
    // Strict: every `%` starts an escape of two hex digits (percent-decoding alone would pass `%zz` through).
    let b = s.as_bytes();
    let escapes_ok = b.iter().enumerate().filter(|(_, c)| **c == b'%').all(|(i, _)| {
        b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    });
    if !escapes_ok {
        return None;
    }
    let spaced = zeroize::Zeroizing::new(s.replace('+', " "));
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

/// Whether `sha256` is the SHA-256 of the empty string: a client configured with it would have no secret.
pub fn is_empty_secret_sha256(sha256: &[u8; 32]) -> bool {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"").as_ref() == sha256
}

/// Hex SHA-256 of a secret, as written in the config's `secret_sha256`.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> [u8; 32] {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref().try_into().unwrap()
    }

    fn clients() -> Clients {
        Clients::new(vec![
            Client::new("orch".into(), Some(sha("s3cret")), [Rpc::Exchange].into(), false),
            Client::new("demo".into(), None, [Rpc::Exchange].into(), true),
            Client::new("gateway".into(), Some(sha("gw")), [Rpc::Introspect].into(), false),
        ])
    }

    fn basic(id: &str, secret: &str, loopback: bool) -> Credentials {
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        Credentials::from_authorization(Some(&v), loopback).unwrap()
    }

    #[test]
    fn secrets_authenticate_and_wrong_ones_do_not() {
        let c = clients();
        assert_eq!(c.authenticate(&basic("orch", "s3cret", false), Rpc::Exchange).unwrap().id, "orch");
        let err = c.authenticate(&basic("orch", "wrong", false), Rpc::Exchange).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient);
        assert!(!err.description.contains("wrong"));
        assert_eq!(
            c.authenticate(&basic("nobody", "x", false), Rpc::Exchange).unwrap_err().code,
            ErrorCode::InvalidClient
        );
        // A client without a secret cannot be named with one.
        assert_eq!(
            c.authenticate(&basic("demo", "", false), Rpc::Exchange).unwrap_err().code,
            ErrorCode::InvalidClient
        );
    }

    #[test]
    fn anonymous_callers_are_the_loopback_client_only_on_loopback() {
        let c = clients();
        let anon = |loopback| Credentials { basic: None, peer_is_loopback: loopback, certificate: None };
        assert_eq!(c.authenticate(&anon(true), Rpc::Exchange).unwrap().id, "demo");
        assert_eq!(c.authenticate(&anon(false), Rpc::Exchange).unwrap_err().code, ErrorCode::InvalidClient);
    }

    #[test]
    fn rpcs_are_per_client() {
        let err = clients().authenticate(&basic("gateway", "gw", false), Rpc::Exchange).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnauthorizedClient);
    }

    #[test]
    fn the_basic_scheme_is_case_insensitive() {
        let c = clients();
        let token = base64::engine::general_purpose::STANDARD.encode("orch:s3cret");
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let creds = Credentials::from_authorization(Some(&format!("{scheme} {token}")), false).unwrap();
            assert_eq!(c.authenticate(&creds, Rpc::Exchange).unwrap().id, "orch", "{scheme}");
        }
    }

    #[test]
    fn an_empty_secret_never_authenticates() {
        // Even a client whose hash is that of the empty string (the config refuses one; see config/clients.rs).
        let c = Clients::new(vec![Client::new("empty".into(), Some(sha("")), [Rpc::Exchange].into(), false)]);
        assert!(is_empty_secret_sha256(&sha("")) && !is_empty_secret_sha256(&sha("s3cret")));
        let err = c.authenticate(&basic("empty", "", false), Rpc::Exchange).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient);
        // Nor on loopback, where anonymous callers may be a client.
        assert_eq!(
            c.authenticate(&basic("empty", "", true), Rpc::Exchange).unwrap_err().code,
            ErrorCode::InvalidClient
        );
    }

    #[test]
    fn malformed_authorization_is_invalid_client() {
        for v in ["Bearer x", "Basic !!!", "Basic Zm9v", "Basicx Zm9vOmJhcg==", "Zm9vOmJhcg=="] {
            assert_eq!(Credentials::from_authorization(Some(v), false).unwrap_err().code, ErrorCode::InvalidClient);
        }
    }

    #[test]
    fn credentials_are_form_urlencoded() {
        let c = clients();
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("orch:s3cr%65t"));
        let creds = Credentials::from_authorization(Some(&v), false).unwrap();
        assert_eq!(c.authenticate(&creds, Rpc::Exchange).unwrap().id, "orch");
        assert_eq!(form_decode("a+b%3Ac"), Some("a b:c".into()));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
    }

    #[test]
    fn sha256_hex_parses_only_64_hex_digits() {
        assert!(parse_sha256_hex(&"ab".repeat(32)).is_some());
        assert!(parse_sha256_hex("abc").is_none());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_none());
    }
}
