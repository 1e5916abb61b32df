//! Clients: who may call the broker, how they prove it, and which RPCs each may call.
//!
//! A client authenticates with one of:
//! - a secret (HTTP Basic in the `authorization` metadata or header, RFC 6749 §2.3.1, or `client_secret_post`
//!   on HTTP) whose SHA-256 is all the config holds, compared in constant time — unless the config forbids
//!   secrets ([`ClientSecrets::Forbidden`]);
//! - a client assertion (RFC 7521 §4.2): `private_key_jwt` (RFC 7523 §2.2, a JWT whose `iss` and `sub` are
//!   the client id, signed with the client's own key) or a SPIFFE JWT-SVID (the SPIFFE client-auth profile,
//!   `…:client-assertion-type:jwt-spiffe`, whose `sub` is a SPIFFE ID mapped to the client). Both are verified
//!   by the issuer registry ([`crate::issuer`]: its JWKS, algorithms and leeway), never by a verifier of their
//!   own, and both are single use: [`Caller::assertion`] is the spend marker the operation records in its
//!   store round trip, so a replay on any replica is refused;
//! - nothing, from the loopback interface, as the client marked `loopback_anonymous` (dev mode's demo client).
//!
//! - its certificate over mTLS: a URI SAN (a SPIFFE ID) or DNS SAN of the leaf the CA bundle accepted,
//!   mapped to the client by its `tls_identities`; other credentials sent with it must name the same client.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use base64::Engine as _;

use crate::error::{Error, ErrorCode, Result};
use crate::issuer::{AssertionRules, Issuers, SingleUse};
use crate::secret::{ClientSecret, Token, constant_time_eq};

/// RFC 7523 §2.2: a JWT the client signed with its own key (`private_key_jwt`).
pub const ASSERTION_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The SPIFFE client-auth profile: a JWT-SVID as the client assertion.
pub const ASSERTION_TYPE_JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

/// Whether client secrets may authenticate callers (`broker.client_secrets`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSecrets {
    /// Secrets (Basic, `client_secret_post`) authenticate clients that have one (the default).
    #[default]
    Allowed,
    /// No secret authenticates anyone: a production setting, so only assertions (and later mTLS) identify
    /// callers. A config that gives a client a secret is refused at load.
    Forbidden,
}

/// The kinds of client assertion (RFC 7521 §4.2 `client_assertion_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionType {
    /// [`ASSERTION_TYPE_JWT_BEARER`]: `private_key_jwt`.
    JwtBearer,
    /// [`ASSERTION_TYPE_JWT_SPIFFE`]: a JWT-SVID.
    JwtSpiffe,
}

impl AssertionType {
    /// The type a `client_assertion_type` value names; `None` for any other value.
    pub fn parse(value: &str) -> Option<AssertionType> {
        match value {
            ASSERTION_TYPE_JWT_BEARER => Some(AssertionType::JwtBearer),
            ASSERTION_TYPE_JWT_SPIFFE => Some(AssertionType::JwtSpiffe),
            _ => None,
        }
    }
}

/// A client assertion as presented. The assertion is a bearer credential until it is spent: it is a
/// [`Token`], redacted under `Debug`, and never logged.
#[derive(Debug)]
pub struct ClientAssertion {
    /// Its `client_assertion_type`.
    pub kind: AssertionType,
    /// The JWT.
    pub assertion: Token,
    /// A `client_id` sent with it (optional, RFC 7521 §4.2): it must then name the client the assertion does.
    pub client_id: Option<String>,
}

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
    /// `Approve` and `Deny`: deciding step-up approvals ([`crate::approval`]), and reading any of them
    /// (`GetApproval`; a client that may exchange reads the approvals its own exchanges opened).
    Approve,
    /// `WatchRevocations` (and `GET /revocations/watch`): the stream of every revocation, for gateways and
    /// verifiers that cache or verify offline.
    Watch,
}

/// One configured client: its id, how it may authenticate, and what it may call.
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
    /// `private_key_jwt`: the `[[issuers]]` entry (by name) whose keys verify its assertions.
    assertion_issuer: Option<String>,
    /// The SPIFFE IDs whose JWT-SVIDs authenticate it (jwt-spiffe).
    spiffe_ids: BTreeSet<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("has_secret", &self.secret_sha256.is_some())
            .field("rpcs", &self.rpcs)
            .field("loopback_anonymous", &self.loopback_anonymous)
            .field("tls_identities", &self.tls_identities)
            .field("assertion_issuer", &self.assertion_issuer)
            .field("spiffe_ids", &self.spiffe_ids)
            .finish()
    }
}

impl Client {
    /// A client; `secret_sha256` is the SHA-256 of its secret (`None`: it cannot authenticate with one).
    pub fn new(id: String, secret_sha256: Option<[u8; 32]>, rpcs: BTreeSet<Rpc>, loopback_anonymous: bool) -> Self {
        Client {
            id,
            secret_sha256,
            rpcs,
            loopback_anonymous,
            tls_identities: Vec::new(),
            assertion_issuer: None,
            spiffe_ids: BTreeSet::new(),
        }
    }

    /// Whether the client may call `rpc`.
    pub fn may_call(&self, rpc: Rpc) -> bool {
        self.rpcs.contains(&rpc)
    }

    /// The client, also known by these certificate identities over mTLS.
    pub fn with_tls_identities(mut self, identities: Vec<String>) -> Self {
        self.tls_identities = identities;
        self
    }

    /// The client, also authenticated by `private_key_jwt` assertions that the issuer named `issuer` verifies.
    pub fn with_assertion_issuer(mut self, issuer: Option<String>) -> Self {
        self.assertion_issuer = issuer;
        self
    }

    /// The client, also authenticated by JWT-SVIDs of these SPIFFE IDs.
    pub fn with_spiffe_ids(mut self, ids: BTreeSet<String>) -> Self {
        self.spiffe_ids = ids;
        self
    }

    /// The `[[issuers]]` entry that verifies its `private_key_jwt` assertions, if it uses them.
    pub fn assertion_issuer(&self) -> Option<&str> {
        self.assertion_issuer.as_deref()
    }

    /// The SPIFFE IDs that authenticate it.
    pub fn spiffe_ids(&self) -> &BTreeSet<String> {
        &self.spiffe_ids
    }

    /// Whether it has a secret.
    pub fn has_secret(&self) -> bool {
        self.secret_sha256.is_some()
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

/// An authenticated caller: its client, and the spend marker of the client assertion it authenticated with.
///
/// A client assertion is single use, and being spent is a fact every replica must agree on: the operation
/// records [`Caller::assertion`] in the store round trip it makes anyway (or in one of its own where it makes
/// none), and refuses a replay with `invalid_client` before it issues or changes anything.
#[derive(Clone, Debug)]
pub struct Caller<'a> {
    /// The client.
    pub client: &'a Client,
    /// The assertion to spend, when the caller authenticated with one.
    pub assertion: Option<SingleUse>,
}

/// An in-process caller that authenticated without a single-use assertion (a secret, or loopback).
impl<'a> From<&'a Client> for Caller<'a> {
    fn from(client: &'a Client) -> Self {
        Caller { client, assertion: None }
    }
}

/// What a request carried that can authenticate its caller, as a face reads it: the `authorization` header
/// (metadata), and the form parameters (gRPC: metadata entries) of RFC 6749 §2.3.1 and RFC 7521 §4.2. Empty
/// values count as absent.
#[derive(Default)]
pub struct Presented<'a> {
    /// The `authorization` header or metadata value.
    pub authorization: Option<&'a str>,
    /// `client_id`.
    pub client_id: Option<&'a str>,
    /// `client_secret` (`client_secret_post`; HTTP only).
    pub client_secret: Option<&'a str>,
    /// `client_assertion_type`.
    pub client_assertion_type: Option<&'a str>,
    /// `client_assertion`.
    pub client_assertion: Option<&'a str>,
    /// The peer connected from a loopback address.
    pub peer_is_loopback: bool,
}

/// What a caller presented, taken from request metadata by an adapter.
#[derive(Debug, Default)]
pub struct Credentials {
    /// The client id and secret of an `authorization: Basic` value, both form-decoded; `None`: none sent.
    pub basic: Option<(String, ClientSecret)>,
    /// A client assertion (`private_key_jwt` or a JWT-SVID); `None`: none sent.
    pub assertion: Option<ClientAssertion>,
    /// The peer connected from a loopback address: without credentials it may be the `loopback_anonymous`
    /// client.
    pub peer_is_loopback: bool,
    /// The client certificate the connection presented (mTLS), verified by the TLS handshake.
    pub certificate: Option<std::sync::Arc<PeerCertificate>>,
}

impl Credentials {
    /// The credentials of one request, from what it presented: at most one method (RFC 6749 §2.3: a client
    /// must not use more than one), so Basic with a posted secret, a posted `client_id` or an assertion is
    /// `invalid_request`, as is half an assertion (a type without the JWT, or the JWT without its type). An
    /// assertion type tessera does not know is `invalid_client`; a `client_id` alone authenticates nothing
    /// (`invalid_client`).
    pub fn from_presented(p: &Presented<'_>) -> Result<Credentials> {
        let some = |v: Option<&str>| v.filter(|v| !v.is_empty()).is_some();
        let assertion = some(p.client_assertion_type) || some(p.client_assertion);
        let methods = [some(p.authorization), some(p.client_secret), assertion];
        if methods.iter().filter(|m| **m).count() > 1 || (some(p.authorization) && some(p.client_id)) {
            return Err(Error::invalid_request("use one client authentication method, not two"));
        }
        let nonempty = |v: Option<&'_ str>| v.filter(|v| !v.is_empty()).map(str::to_string);
        if some(p.authorization) {
            return Credentials::from_authorization(p.authorization, p.peer_is_loopback);
        }
        let mut credentials = Credentials { peer_is_loopback: p.peer_is_loopback, ..Credentials::default() };
        match (nonempty(p.client_id), nonempty(p.client_secret)) {
            (Some(id), Some(secret)) => credentials.basic = Some((id, ClientSecret::new(secret))),
            (None, Some(_)) => return Err(Error::invalid_request("client_secret without client_id")),
            (client_id, None) if assertion => {
                let (Some(kind), Some(jwt)) =
                    (p.client_assertion_type.filter(|v| !v.is_empty()), nonempty(p.client_assertion))
                else {
                    return Err(Error::invalid_request("client_assertion_type and client_assertion go together"));
                };
                let kind = AssertionType::parse(kind)
                    .ok_or_else(|| Error::new(ErrorCode::InvalidClient, "client_assertion_type is not supported"))?;
                credentials.assertion = Some(ClientAssertion { kind, assertion: Token::new(jwt), client_id });
            }
            (Some(_), None) => return Err(Error::new(ErrorCode::InvalidClient, "client authentication failed")),
            (None, None) => {}
        }
        Ok(credentials)
    }

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
        Ok(Credentials { basic, assertion: None, peer_is_loopback, certificate: None })
    }

    /// The same credentials, presented over a connection with this verified client certificate.
    pub fn over(mut self, certificate: Option<std::sync::Arc<PeerCertificate>>) -> Credentials {
        self.certificate = certificate;
        self
    }
}

/// How callers may authenticate, broker-wide: whether secrets are accepted, and what client assertions are
/// held to.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// `broker.client_secrets`.
    pub secrets: ClientSecrets,
    /// The `aud` values a client assertion may name, one of which it must: the broker's issuer and its token
    /// endpoint URL (RFC 7523 §3 lets either identify the authorization server).
    pub assertion_audiences: Vec<String>,
    /// `broker.client_assertion_max_lifetime`: the most seconds a client assertion's `exp` may be ahead.
    pub assertion_max_lifetime: u64,
}

/// Why an assertion that names no client of its kind fails: one text for every such case.
const NO_CLIENT: &str = "the client_assertion names no client that authenticates this way";

/// The longest a client assertion may live, by default: 5 minutes (they are minted per request).
pub const DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME: u64 = 300;

impl Default for ClientAuth {
    fn default() -> Self {
        ClientAuth {
            secrets: ClientSecrets::Allowed,
            assertion_audiences: Vec::new(),
            assertion_max_lifetime: DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME,
        }
    }
}

impl ClientAuth {
    /// The settings for the broker `issuer`: assertions may name it or its token endpoint.
    pub fn new(issuer: &str, secrets: ClientSecrets, assertion_max_lifetime: u64) -> ClientAuth {
        let token_endpoint = format!("{}/oauth2/token", issuer.trim_end_matches('/'));
        ClientAuth { secrets, assertion_audiences: vec![issuer.to_string(), token_endpoint], assertion_max_lifetime }
    }
}

/// The configured clients, by id: authenticates callers and checks which RPCs each may call.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    by_id: HashMap<String, Client>,
    /// Certificate identity → client id (identities are unique across clients once the config is validated).
    by_tls_identity: HashMap<String, String>,
    /// SPIFFE ID → client id (each SPIFFE ID names at most one client once the config is validated).
    by_spiffe_id: HashMap<String, String>,
    auth: ClientAuth,
}

impl Clients {
    /// The clients, keyed by id (ids are unique once the config is validated), with the default
    /// [`ClientAuth`] (secrets allowed; no assertion audience, so no assertion authenticates).
    pub fn new(clients: Vec<Client>) -> Clients {
        let by_tls_identity =
            clients.iter().flat_map(|c| c.tls_identities.iter().map(|i| (i.clone(), c.id.clone()))).collect();
        let by_spiffe_id =
            clients.iter().flat_map(|c| c.spiffe_ids.iter().map(|s| (s.clone(), c.id.clone()))).collect();
        Clients {
            by_id: clients.into_iter().map(|c| (c.id.clone(), c)).collect(),
            by_tls_identity,
            by_spiffe_id,
            auth: ClientAuth::default(),
        }
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

    /// The clients, authenticated under `auth`.
    pub fn with_auth(mut self, auth: ClientAuth) -> Clients {
        self.auth = auth;
        self
    }

    /// How callers may authenticate.
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// Every configured client.
    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.by_id.values()
    }

    /// Identifies the caller — by its secret, its client assertion (verified by `issuers` as of `now`) or as
    /// the loopback client — and checks it may call `rpc`. Nothing is looked up in the store here: the
    /// returned [`Caller`] carries the assertion's spend marker for the operation's own round trip.
    pub async fn identify<'a>(
        &'a self,
        credentials: &Credentials,
        rpc: Rpc,
        issuers: &Issuers,
        now: u64,
    ) -> Result<Caller<'a>> {
        self.identify_for(credentials, &[rpc], issuers, now).await
    }

    /// As [`Clients::identify`], for a call any of `rpcs` allows (reading an approval: its requester or an
    /// approver).
    pub async fn identify_for<'a>(
        &'a self,
        credentials: &Credentials,
        rpcs: &[Rpc],
        issuers: &Issuers,
        now: u64,
    ) -> Result<Caller<'a>> {
        let Some(presented) = &credentials.assertion else {
            return self.authenticate_for(credentials, rpcs).map(Caller::from);
        };
        let failed = |why: &str| Error::new(ErrorCode::InvalidClient, format!("client authentication failed: {why}"));
        let token = presented.assertion.expose();
        // Which client it claims to be, read before verification only to pick the keys that must verify it.
        let (iss, sub) = issuers.peek_client_assertion(token).map_err(|e| failed(&format!("client_assertion {e}")))?;
        let (client, issuer) = match presented.kind {
            AssertionType::JwtBearer => {
                let id = iss.as_deref().ok_or_else(|| failed("the client_assertion has no `iss`"))?;
                if sub.as_deref() != Some(id) {
                    return Err(failed("a private_key_jwt assertion's `iss` and `sub` must both be the client id"));
                }
                let client = self.by_id.get(id).ok_or_else(|| failed(NO_CLIENT))?;
                let issuer = client.assertion_issuer.as_deref().ok_or_else(|| failed(NO_CLIENT))?;
                (client, issuer)
            }
            AssertionType::JwtSpiffe => {
                let spiffe_id = sub.as_deref().ok_or_else(|| failed("the JWT-SVID has no `sub`"))?;
                let client = self
                    .by_spiffe_id
                    .get(spiffe_id)
                    .and_then(|id| self.by_id.get(id))
                    .ok_or_else(|| failed(NO_CLIENT))?;
                let issuer = issuers.spiffe_issuer(spiffe_id).ok_or_else(|| failed(NO_CLIENT))?;
                (client, issuer)
            }
        };
        // Over mTLS, a certificate mapped to another client contradicts the assertion: refused either way.
        if let Some(certificate) = credentials.certificate.as_deref()
            && self.by_certificate(certificate)?.is_some_and(|certified| certified.id != client.id)
        {
            return Err(failed("the client certificate names another client"));
        }
        if presented.client_id.as_deref().is_some_and(|given| given != client.id) {
            return Err(failed("client_id does not name the client of the client_assertion"));
        }
        let rules = AssertionRules {
            audiences: &self.auth.assertion_audiences,
            max_lifetime: self.auth.assertion_max_lifetime,
        };
        let verified = issuers
            .verify_client_assertion(token, issuer, &rules, now)
            .await
            .map_err(|e| failed(&format!("client_assertion {e}")))?;
        // Checked again on the verified claims, which are the ones that count.
        let names_client = match presented.kind {
            AssertionType::JwtBearer => {
                verified.iss.as_deref() == Some(client.id.as_str()) && verified.sub == client.id
            }
            AssertionType::JwtSpiffe => client.spiffe_ids.contains(&verified.sub),
        };
        if !names_client {
            return Err(failed("the client_assertion does not name this client"));
        }
        if !rpcs.iter().any(|rpc| client.rpcs.contains(rpc)) {
            return Err(Error::new(ErrorCode::UnauthorizedClient, "client may not call this RPC"));
        }
        Ok(Caller { client, assertion: Some(verified.spend) })
    }

    /// Identifies a caller that presented a secret or nothing (loopback), and checks it may call `rpc`. A
    /// client assertion needs [`Clients::identify`], which can verify it.
    pub fn authenticate(&self, credentials: &Credentials, rpc: Rpc) -> Result<&Client> {
        self.authenticate_for(credentials, &[rpc])
    }

    /// As [`Clients::authenticate`], for a call any of `rpcs` allows.
    fn authenticate_for(&self, credentials: &Credentials, rpcs: &[Rpc]) -> Result<&Client> {
        let failed = || Error::new(ErrorCode::InvalidClient, "client authentication failed");
        if credentials.assertion.is_some() {
            return Err(failed());
        }
        let certified = credentials.certificate.as_deref().map(|c| self.by_certificate(c)).transpose()?.flatten();
        let client = match &credentials.basic {
            Some(_) if self.auth.secrets == ClientSecrets::Forbidden => {
                return Err(Error::new(ErrorCode::InvalidClient, "client secrets are not accepted by this broker"));
            }
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
        if !rpcs.iter().any(|rpc| client.rpcs.contains(rpc)) {
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
        let anon = |loopback| Credentials { peer_is_loopback: loopback, ..Credentials::default() };
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

    fn presented<'a>(pairs: &[(&str, &'a str)]) -> Presented<'a> {
        let mut p = Presented::default();
        for (name, value) in pairs {
            match *name {
                "authorization" => p.authorization = Some(value),
                "client_id" => p.client_id = Some(value),
                "client_secret" => p.client_secret = Some(value),
                "client_assertion_type" => p.client_assertion_type = Some(value),
                "client_assertion" => p.client_assertion = Some(value),
                other => panic!("{other}"),
            }
        }
        p
    }

    #[test]
    fn a_client_assertion_is_parsed_with_its_type_and_optional_client_id() {
        let creds = Credentials::from_presented(&presented(&[
            ("client_assertion_type", ASSERTION_TYPE_JWT_BEARER),
            ("client_assertion", "eyJh.eyJi.c2ln"),
        ]))
        .unwrap();
        let a = creds.assertion.as_ref().unwrap();
        assert_eq!(
            (a.kind, a.assertion.expose(), a.client_id.as_deref()),
            (AssertionType::JwtBearer, "eyJh.eyJi.c2ln", None)
        );
        assert!(creds.basic.is_none());
        let creds = Credentials::from_presented(&presented(&[
            ("client_assertion_type", ASSERTION_TYPE_JWT_SPIFFE),
            ("client_assertion", "eyJh.eyJi.c2ln"),
            ("client_id", "summariser"),
        ]))
        .unwrap();
        let a = creds.assertion.unwrap();
        assert_eq!((a.kind, a.client_id.as_deref()), (AssertionType::JwtSpiffe, Some("summariser")));
        assert!(!format!("{a:?}").contains("c2ln"), "the assertion never shows under Debug");
    }

    #[test]
    fn two_methods_or_half_an_assertion_are_invalid_requests() {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("orch:s3cret"));
        let jwt = ("client_assertion", "eyJh.eyJi.c2ln");
        let kind = ("client_assertion_type", ASSERTION_TYPE_JWT_BEARER);
        for pairs in [
            vec![("authorization", basic.as_str()), kind, jwt],
            vec![("authorization", basic.as_str()), jwt],
            vec![("client_id", "orch"), ("client_secret", "s3cret"), kind, jwt],
            vec![("client_secret", "s3cret"), kind],
            vec![("authorization", basic.as_str()), ("client_id", "orch")],
            vec![kind],
            vec![jwt],
            vec![jwt, ("client_id", "orch")],
        ] {
            let err = Credentials::from_presented(&presented(&pairs)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{pairs:?}");
            assert!(!err.description.contains("c2ln") && !err.description.contains("s3cret"));
        }
    }

    #[test]
    fn an_unknown_assertion_type_or_a_bare_client_id_is_invalid_client() {
        for pairs in [
            vec![
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
                ("client_assertion", "x"),
            ],
            vec![("client_assertion_type", "jwt-bearer"), ("client_assertion", "x")],
            vec![("client_id", "orch")],
        ] {
            let err = Credentials::from_presented(&presented(&pairs)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidClient, "{pairs:?}");
        }
        // Empty values count as absent.
        let creds = Credentials::from_presented(&presented(&[("client_assertion_type", ""), ("client_assertion", "")]));
        assert!(creds.unwrap().assertion.is_none());
    }

    #[test]
    fn forbidden_secrets_authenticate_nobody() {
        let auth = ClientAuth::new("https://tessera.test", ClientSecrets::Forbidden, 300);
        assert_eq!(auth.assertion_audiences, ["https://tessera.test", "https://tessera.test/oauth2/token"]);
        let c = clients().with_auth(auth);
        let err = c.authenticate(&basic("orch", "s3cret", false), Rpc::Exchange).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient);
        // The loopback client, which has no secret, is unaffected.
        let anon = Credentials { peer_is_loopback: true, ..Credentials::default() };
        assert_eq!(c.authenticate(&anon, Rpc::Exchange).unwrap().id, "demo");
    }

    #[test]
    fn an_assertion_never_authenticates_without_verification() {
        let creds = Credentials {
            assertion: Some(ClientAssertion {
                kind: AssertionType::JwtBearer,
                assertion: Token::new("eyJh.eyJi.c2ln"),
                client_id: Some("orch".into()),
            }),
            ..Credentials::default()
        };
        assert_eq!(clients().authenticate(&creds, Rpc::Exchange).unwrap_err().code, ErrorCode::InvalidClient);
    }

    /// Cases per property: bounded for CI, more with `TESSERA_FUZZ_CASES`.
    fn cases() -> u32 {
        std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    }

    fn field() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        use proptest::prelude::*;
        proptest::option::of(prop_oneof![
            Just(ASSERTION_TYPE_JWT_BEARER.to_string()),
            Just(ASSERTION_TYPE_JWT_SPIFFE.to_string()),
            Just(String::new()),
            ".{0,80}",
            "[A-Za-z0-9+/=:% ]{0,40}".prop_map(|s| format!("Basic {s}")),
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(), ..Default::default() })]

        /// Whatever a request carries in its five credential fields, parsing never panics, refuses with
        /// `invalid_request` or `invalid_client` only, never echoes a secret or an assertion, and yields at
        /// most one method.
        #[test]
        fn credential_parsing_never_panics(
            authorization in field(),
            client_id in field(),
            client_secret in field(),
            kind in field(),
            assertion in field(),
            loopback in proptest::bool::ANY,
        ) {
            let p = Presented {
                authorization: authorization.as_deref(),
                client_id: client_id.as_deref(),
                client_secret: client_secret.as_deref(),
                client_assertion_type: kind.as_deref(),
                client_assertion: assertion.as_deref(),
                peer_is_loopback: loopback,
            };
            // Values that are shown by design (a client id, an assertion type) are not secrets, whatever they hold.
            let public = [&client_id, &kind];
            let secrets: Vec<&String> = [&client_secret, &assertion]
                .into_iter()
                .flatten()
                .filter(|v| v.len() >= 8 && !public.iter().any(|p| p.as_deref().is_some_and(|p| p.contains(v.as_str()))))
                .collect();
            match Credentials::from_presented(&p) {
                Ok(c) => {
                    proptest::prop_assert!(!(c.basic.is_some() && c.assertion.is_some()), "two methods");
                    proptest::prop_assert_eq!(c.peer_is_loopback, loopback);
                    let shown = format!("{c:?}");
                    for secret in &secrets {
                        proptest::prop_assert!(!shown.contains(secret.as_str()), "Debug shows a credential");
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(matches!(e.code, ErrorCode::InvalidRequest | ErrorCode::InvalidClient), "{:?}", e.code);
                    for secret in &secrets {
                        proptest::prop_assert!(!e.description.contains(secret.as_str()), "the error echoes a credential");
                    }
                }
            }
        }
    }

    #[test]
    fn sha256_hex_parses_only_64_hex_digits() {
        assert!(parse_sha256_hex(&"ab".repeat(32)).is_some());
        assert!(parse_sha256_hex("abc").is_none());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_none());
    }
}
