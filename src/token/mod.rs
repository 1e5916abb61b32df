//! tessera's own tokens: RFC 9068 JWT access tokens, their claims, and the keyring that signs them.
//!
//! A token carries, besides the RFC 9068 claims, everything later checks need without a lookup: the task it
//! is bound to, the actor chain (`act`, RFC 8693 §4.1), the upstream issuer and mapped attributes of its
//! subject, and its ancestry (the `jti`s of the tessera tokens it was derived from), which is what lets a
//! revocation cascade down a delegation tree.

/// The longest any token may live: a day. Config caps every lifetime to it (`broker::MAX_TTL`), and a
/// revocation's reach into the status list registrations ([`crate::status_list::live_buckets`]) relies on it.
pub const MAX_LIFETIME: u64 = 86_400;

pub mod jws;
pub mod keys;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scopes::Scopes;
use keys::{JwkSet, KeySet, SigningKey};

/// One link of the actor chain: who acts, and (nested) who acted before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's `sub`, as its issuer names it.
    pub sub: String,
    /// The actor's issuer; absent means the issuer of the token's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The actor that acted before this one: the chain reads newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// How many actors the chain names (1 for a single `act`).
    pub(crate) fn depth(&self) -> usize {
        1 + self.act.as_ref().map_or(0, |a| a.depth())
    }

    /// Every actor of the chain, the current one first.
    pub(crate) fn chain(&self) -> impl Iterator<Item = &Actor> {
        std::iter::successors(Some(self), |a| a.act.as_deref())
    }

    /// This actor as a party; an actor without `iss` is of `default_iss` (the token's own issuer).
    pub(crate) fn party(&self, default_iss: &str) -> Party {
        Party { iss: self.iss.clone().unwrap_or_else(|| default_iss.to_string()), sub: self.sub.clone() }
    }
}

/// A principal named by its issuer and `sub`: `sub` is unique only within its issuer, so a party is always
/// both. How actors, `may_act` entries and lineage principals are compared and revoked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The issuer's identifier (its `iss`).
    pub iss: String,
    /// The principal's `sub`, unique within `iss`.
    pub sub: String,
}

/// What a token derives from beyond its own `sub`, `act`, task and client: the tasks, principals and clients
/// of every token in its history (an actor token's included), so that revoking any of them ends this token
/// too, and the delegation depth counted over actor tokens' chains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The delegation depth when it exceeds what `act` shows (an actor token brought its own chain).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) depth: usize,
    /// The tasks of the tokens it derives from, besides its own `task_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The subjects and actors of the tokens it derives from, besides its own `sub` and `act` chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parties: Vec<Party>,
    /// The clients the tokens it derives from were issued to, besides its own `client_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Lineage {
    fn is_empty(&self) -> bool {
        self.depth == 0 && self.tasks.is_empty() && self.parties.is_empty() && self.clients.is_empty()
    }

    /// How many revocation keys the lineage adds to a lookup.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len() + self.parties.len() + self.clients.len()
    }
}

/// RFC 7800 `cnf`: the key a sender-constrained token is bound to. A token with `jkt` is useless without a
/// DPoP proof signed by that key (RFC 9449 §6); one with `x5t#S256` without a TLS client certificate of that
/// thumbprint (RFC 8705 §3). Every token derived from a bound token keeps its `cnf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 9449 §6.1: the RFC 7638 SHA-256 thumbprint of the DPoP key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705 §3.1: the SHA-256 thumbprint of the client certificate (DER), base64url.
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Whether it binds to nothing (and is then left out of a token).
    pub fn is_empty(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }
}

/// The claims of a tessera access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The broker's own issuer (RFC 9068 §2.2).
    pub iss: String,
    /// The subject principal's `sub`, as its upstream issuer (`sub_iss`) names it.
    pub sub: String,
    /// Exactly one audience, always a string (invariant 3).
    pub aud: String,
    /// Expiry, Unix seconds: never later than the subject's, the actor's, the audience's maximum or the
    /// lifetime asked for (invariant 2).
    pub exp: u64,
    /// Issue time, Unix seconds; subject and client revocations end the tokens issued up to them.
    pub iat: u64,
    /// Not before, Unix seconds: the issue time.
    pub nbf: u64,
    /// A unique, unguessable token id: what a revocation names, and what derived tokens list in `anc`.
    pub jti: String,
    /// The client that asked for the token (RFC 9068 §2.2, RFC 8693 §4.3).
    pub client_id: String,
    /// The granted scopes (RFC 9068 §2.2.3, RFC 8693 §4.2), space-delimited in the JWT.
    pub scope: Scopes,
    /// RFC 8693 §4.1: who acts for the subject, newest first; absent when the subject acts for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The task the token is bound to; every token derived from it keeps it.
    pub task_id: String,
    /// The session the task belongs to, when the caller named one; derived tokens keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The free-text purpose the caller gave for this exchange; not inherited, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The upstream issuer of the subject principal, so a subject (issuer + `sub`) can be revoked.
    pub sub_iss: String,
    /// The subject's attributes mapped by its issuer's config, so policy sees the same principal at every hop.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sub_attrs: std::collections::BTreeMap<String, String>,
    /// The `jti`s of the tessera tokens this one derives from, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anc: Vec<String>,
    /// RFC 8693 §4.4, carried: who may act for this token's subject, as qualified parties. It travels with
    /// every derived token and only ever narrows; `Some(empty)` means nobody may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<Vec<Party>>,
    /// The rest of the token's history, for cascade revocation and the depth bound.
    #[serde(default, skip_serializing_if = "Lineage::is_empty")]
    pub lin: Lineage,
    /// RFC 7800 confirmation: the key the token is bound to (DPoP `jkt`, mTLS `x5t#S256`); absent for a bearer
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// RFC 9396 §9.1: the granted `authorization_details`; absent when none were granted. Present (even
    /// empty) it is a ceiling every derived token must stay within ([`crate::rar::narrow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<crate::rar::Details>,
    /// draft-ietf-oauth-status-list §6.1: where an offline verifier finds this token's status
    /// ([`crate::status_list`]); absent when status lists are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// The `status` claim (draft-ietf-oauth-status-list §6.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The Token Status List mechanism.
    pub status_list: StatusListRef,
}

/// Where a token's status is: bit `idx` of the status list token at `uri`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListRef {
    /// The bit's index in the list.
    pub idx: u64,
    /// The list's URL: `<issuer>/statuslists/<n>`.
    pub uri: String,
}

impl AccessClaims {
    /// The granted scopes, one at a time.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.iter()
    }

    /// The delegation depth: how many actors the `act` chain names, or more when an actor token brought a
    /// chain of its own.
    pub fn depth(&self) -> usize {
        self.act.as_ref().map_or(0, Actor::depth).max(self.lin.depth)
    }

    /// The DPoP key thumbprint the token is bound to, if any.
    pub fn jkt(&self) -> Option<&str> {
        self.cnf.as_ref().and_then(|c| c.jkt.as_deref())
    }

    /// The RFC 6750/9449 `token_type` a client presents it with: `DPoP` when it is DPoP-bound, else `Bearer`
    /// (an mTLS-bound token is still presented as a bearer token, RFC 8705 §3).
    pub fn token_type(&self) -> &'static str {
        if self.jkt().is_some() { "DPoP" } else { "Bearer" }
    }

    /// The subject principal.
    pub(crate) fn subject(&self) -> Party {
        Party { iss: self.sub_iss.clone(), sub: self.sub.clone() }
    }
}

#[cfg(test)]
impl AccessClaims {
    /// A plain bearer token's claims, for unit tests elsewhere in the crate.
    pub(crate) fn example() -> AccessClaims {
        AccessClaims {
            iss: "https://tessera.test".into(),
            sub: "s".into(),
            aud: "https://crm.example".into(),
            exp: 2_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j".into(),
            client_id: "c".into(),
            scope: Scopes::default(),
            act: None,
            task_id: "t".into(),
            session_id: None,
            purpose: None,
            sub_iss: "https://k8s".into(),
            sub_attrs: Default::default(),
            anc: vec![],
            may_act: None,
            lin: Lineage::default(),
            cnf: None,
            authorization_details: None,
            status: None,
        }
    }
}

/// The broker's signing keys. The first signs; all are published, so tokens signed by a retiring key keep
/// verifying until they expire.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<SigningKey>,
    verifying: KeySet,
    jwks: JwkSet,
    jwks_json: String,
}

impl Keyring {
    pub(crate) fn new(keys: Vec<SigningKey>) -> std::result::Result<Keyring, String> {
        if keys.is_empty() {
            return Err("at least one signing key is needed".into());
        }
        let verifying = KeySet::from_keys(keys.iter().map(SigningKey::verifying_key).collect::<Result<_, _>>()?);
        let jwks = JwkSet { keys: keys.iter().map(|k| k.jwk().clone()).collect() };
        let jwks_json = serde_json::to_string(&jwks).map_err(|e| e.to_string())?;
        Ok(Keyring { keys, verifying, jwks, jwks_json })
    }

    fn active(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// Signs the claims with the active key.
    #[tracing::instrument(name = "sign", skip_all)]
    pub(crate) fn mint(&self, claims: &AccessClaims) -> Result<String> {
        let key = self.active();
        let payload = serde_json::to_vec(claims).map_err(|_| Error::internal("could not encode claims"))?;
        jws::sign(key.encoded_header(), &payload, key).map_err(|_| Error::internal("signing failed"))
    }

    /// Signs a JSON document with the active key under header type `typ` (e.g. RFC 9701's
    /// `token-introspection+jwt`), so no other kind of document can pass for an access token.
    pub(crate) fn sign_document(&self, typ: &str, document: &serde_json::Value) -> Result<String> {
        let key = self.active();
        let header = serde_json::json!({ "alg": key.alg().as_str(), "kid": key.kid(), "typ": typ });
        let header = jws::b64(&serde_json::to_vec(&header).map_err(|_| Error::internal("could not encode a header"))?);
        let payload = serde_json::to_vec(document).map_err(|_| Error::internal("could not encode a document"))?;
        jws::sign(&header, &payload, key).map_err(|_| Error::internal("signing failed"))
    }

    pub(crate) fn verifying_keys(&self) -> &KeySet {
        &self.verifying
    }

    /// The algorithm the active key signs with (JWA name), for the authorization server metadata.
    pub(crate) fn signing_alg(&self) -> &'static str {
        self.active().alg().as_str()
    }

    pub(crate) fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub(crate) fn jwks_json(&self) -> &str {
        &self.jwks_json
    }
}

/// A fresh, unguessable token identifier (128 random bits, base64url).
pub(crate) fn new_jti() -> Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::internal("no randomness"))?;
    Ok(jws::b64(&bytes))
}

#[cfg(test)]
mod tests {
    use super::keys::SigningAlgorithm;
    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://tessera.test".into(),
            sub: "system:serviceaccount:agents:orchestrator".into(),
            aud: "https://crm.example".into(),
            exp: 2_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j1".into(),
            client_id: "demo".into(),
            scope: Scopes::parse("crm:read").unwrap(),
            act: Some(Actor {
                sub: "spiffe://a/b".into(),
                iss: None,
                act: Some(Box::new(Actor { sub: "c".into(), iss: None, act: None })),
            }),
            task_id: "t1".into(),
            session_id: None,
            purpose: None,
            sub_iss: "https://k8s".into(),
            sub_attrs: Default::default(),
            anc: vec![],
            may_act: Some(vec![Party { iss: "https://k8s".into(), sub: "spiffe://a/b".into() }]),
            lin: Lineage {
                depth: 3,
                tasks: vec!["t0".into()],
                parties: vec![Party { iss: "https://k8s".into(), sub: "x".into() }],
                clients: vec!["c0".into()],
            },
            cnf: Some(Confirmation { jkt: Some("k".into()), x5t_s256: Some("c".into()) }),
            authorization_details: None,
            status: None,
        }
    }

    #[test]
    fn minted_tokens_verify_with_every_algorithm_and_carry_typ_and_kid() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let (key, pem) = SigningKey::generate(alg).unwrap();
            let kid = key.kid().to_string();
            // The PEM round-trips to the same key.
            assert_eq!(SigningKey::from_pem(pem.expose()).unwrap().kid(), kid);
            let ring = Keyring::new(vec![key]).unwrap();
            let token = ring.mint(&claims()).unwrap();
            let parsed = jws::parse(&token, 8192).unwrap();
            assert_eq!(parsed.header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(parsed.header.kid.as_deref(), Some(kid.as_str()));
            let key = ring.verifying_keys().find(Some(&kid), parsed.alg).unwrap();
            parsed.verify(key).unwrap();
            let back: AccessClaims = serde_json::from_slice(&parsed.payload).unwrap();
            assert_eq!(back, claims());
            assert_eq!(back.depth(), 3, "the lineage's depth counts when larger than act's");
        }
    }

    #[test]
    fn a_tampered_token_does_not_verify() {
        let (key, _) = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap();
        let ring = Keyring::new(vec![key]).unwrap();
        let token = ring.mint(&claims()).unwrap();
        let mut c = claims();
        c.scope = Scopes::parse("crm:read crm:export").unwrap();
        let forged_payload = jws::b64(&serde_json::to_vec(&c).unwrap());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        let forged = parts.join(".");
        let parsed = jws::parse(&forged, 8192).unwrap();
        let key = ring.verifying_keys().find(parsed.header.kid.as_deref(), parsed.alg).unwrap();
        assert_eq!(parsed.verify(key), Err(jws::JwsError::BadSignature));
    }

    #[test]
    fn every_key_is_published_and_the_first_signs() {
        let (a, _) = SigningKey::generate(SigningAlgorithm::EdDSA).unwrap();
        let (b, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        let (kid_a, kid_b) = (a.kid().to_string(), b.kid().to_string());
        let ring = Keyring::new(vec![a, b]).unwrap();
        let kids: Vec<_> = ring.jwks().keys.iter().filter_map(|k| k.kid.clone()).collect();
        assert_eq!(kids, vec![kid_a.clone(), kid_b]);
        let token = ring.mint(&claims()).unwrap();
        assert_eq!(jws::parse(&token, 8192).unwrap().header.kid, Some(kid_a));
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1.
        let jwk = keys::Jwk {
            kty: "RSA".into(),
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            ..Default::default()
        };
        assert_eq!(jwk.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
