//! Keys: the broker's signing keys (Ed25519 or P-256, PKCS#8 PEM), verifying keys built from JWKs, and the
//! JWK Set the broker publishes.
//!
//! Every key is parsed once, when it is loaded; signing and verifying never re-parse key material.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::jws::{self, Algorithm, b64, b64_decode};
use zeroize::Zeroizing;

use crate::secret::PrivateKeyPem;

/// A JSON Web Key (RFC 7517) as far as the broker reads or writes one. Unknown members are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Jwk {
    pub(crate) kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub(crate) use_: Option<String>,
}

/// A JWK Set (RFC 7517 §5): the document the broker publishes, and what an upstream issuer's JWKS is read into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub(crate) keys: Vec<Jwk>,
}

impl Jwk {
    /// The RFC 7638 thumbprint: a `kid` that is stable and derived from the key alone.
    pub(crate) fn thumbprint(&self) -> String {
        let members: &[(&str, &Option<String>)] = match self.kty.as_str() {
            "OKP" => &[("crv", &self.crv), ("kty", &None), ("x", &self.x)],
            "EC" => &[("crv", &self.crv), ("kty", &None), ("x", &self.x), ("y", &self.y)],
            _ => &[("e", &self.e), ("kty", &None), ("n", &self.n)],
        };
        let mut canonical = String::from("{");
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            let value = if *name == "kty" { self.kty.as_str() } else { value.as_deref().unwrap_or("") };
            canonical.push_str(&format!("\"{name}\":\"{value}\""));
        }
        canonical.push('}');
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }
}

/// A public key pinned to exactly one algorithm, ready to verify.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: ParsedPublicKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

impl VerifyingKey {
    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), ()> {
        self.key.verify_sig(message, signature).map_err(|_| ())
    }

    /// Builds the verifying keys a JWK stands for, one per algorithm it may verify among `allowed`.
    ///
    /// A JWK with an `alg` is pinned to it. One without (Kubernetes publishes none) is pinned by its key
    /// type: OKP/Ed25519 to EdDSA, EC/P-256 to ES256, and RSA to whichever of RS256/PS256 the issuer allows.
    /// Keys meant for encryption (`use: enc`) are never used to verify.
    pub(crate) fn from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Vec<VerifyingKey>, String> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Ok(Vec::new());
        }
        let natural: Vec<Algorithm> = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => vec![Algorithm::EdDSA],
            ("EC", Some("P-256")) => vec![Algorithm::ES256],
            ("RSA", _) => vec![Algorithm::RS256, Algorithm::PS256],
            (kty, crv) => return Err(format!("unsupported key type {kty}/{}", crv.unwrap_or("-"))),
        };
        let algs: Vec<Algorithm> = match jwk.alg.as_deref() {
            Some(name) => match Algorithm::parse(name) {
                Some(a) if natural.contains(&a) => vec![a],
                _ => {
                    return Err(format!("key algorithm {name} does not fit key type {}", jwk.kty));
                }
            },
            None => natural,
        };
        let bytes = public_key_bytes(jwk)?;
        algs.into_iter()
            .filter(|a| allowed.contains(a))
            .map(|alg| {
                let key = ParsedPublicKey::new(alg.verification(), &bytes)
                    .map_err(|e| format!("invalid {} public key: {e}", jwk.kty))?;
                Ok(VerifyingKey { kid: jwk.kid.clone(), alg, key })
            })
            .collect()
    }
}

/// The raw public key encoding aws-lc-rs verifies with: Ed25519 bytes, an uncompressed EC point, or a DER
/// `RSAPublicKey`.
fn public_key_bytes(jwk: &Jwk) -> Result<Vec<u8>, String> {
    let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
        v.as_deref().and_then(b64_decode).ok_or_else(|| format!("{} key without a valid `{name}`", jwk.kty))
    };
    match jwk.kty.as_str() {
        "OKP" => field("x", &jwk.x),
        "EC" => {
            let (x, y) = (field("x", &jwk.x)?, field("y", &jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            Ok([&[4u8][..], &x, &y].concat())
        }
        _ => {
            let (n, e) = (field("n", &jwk.n)?, field("e", &jwk.e)?);
            let body = [der_uint(&n), der_uint(&e)].concat();
            Ok([der_header(0x30, body.len()), body].concat())
        }
    }
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out
}

fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
    let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
    let mut out = der_header(0x02, trimmed.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
    out
}

/// A set of verifying keys, looked up by `kid` and algorithm.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// Builds a key set from a JWKS document. Keys that cannot be used (an unsupported type, bad material)
    /// are left out and reported, so one odd key in a provider's set does not hide the others.
    pub(crate) fn from_jwks(jwks: &JwkSet, allowed: &[Algorithm]) -> (KeySet, Vec<String>) {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, jwk) in jwks.keys.iter().enumerate() {
            match VerifyingKey::from_jwk(jwk, allowed) {
                Ok(k) => keys.extend(k),
                Err(e) => problems.push(format!("key {i} ({}): {e}", jwk.kid.as_deref().unwrap_or("no kid"))),
            }
        }
        (KeySet { keys }, problems)
    }

    pub(crate) fn from_keys(keys: Vec<VerifyingKey>) -> KeySet {
        KeySet { keys }
    }

    /// The key for this `kid` and algorithm. A token without `kid` is accepted only when exactly one key
    /// fits its algorithm, so the verifier never tries keys in turn.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyingKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid() == Some(kid) && k.alg == alg),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.alg == alg);
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }

    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The broker's signing algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// Ed25519 (RFC 8037): the default of `tessera keygen`.
    EdDSA,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4), for verifiers that lack Ed25519.
    ES256,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// A private signing key, parsed once. Its `Debug` shows only the `kid` and algorithm.
pub struct SigningKey {
    pair: Pair,
    jwk: Jwk,
    alg: Algorithm,
    /// `base64url({"alg":…,"typ":"at+jwt","kid":…})`, computed once so minting only encodes claims.
    encoded_header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid()).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses an unencrypted PKCS#8 key (Ed25519 or P-256) from PEM.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let der = pem_private_key(pem)?;
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(&der) {
            return Ok(SigningKey::new(Pair::Ed25519(pair)));
        }
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &der) {
            return Ok(SigningKey::new(Pair::Es256(pair)));
        }
        Err("not an Ed25519 or P-256 PKCS#8 private key".into())
    }

    /// Generates a new key and returns it with its PKCS#8 PEM encoding (to be written to a key file).
    pub fn generate(alg: SigningAlgorithm) -> Result<(SigningKey, PrivateKeyPem), String> {
        let rng = SystemRandom::new();
        let der = match alg {
            // PKCS#8 v1: the form other tools (openssl, JWK exporters) read most widely.
            SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|e| e.to_string())?,
            SigningAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|e| e.to_string())?
            }
        };
        let pem = pem_encode("PRIVATE KEY", der.as_ref());
        let key = SigningKey::from_pem(pem.expose())?;
        Ok((key, pem))
    }

    fn new(pair: Pair) -> SigningKey {
        let (alg, mut jwk) = match &pair {
            Pair::Ed25519(p) => (
                Algorithm::EdDSA,
                Jwk {
                    kty: "OKP".into(),
                    crv: Some("Ed25519".into()),
                    x: Some(b64(p.public_key().as_ref())),
                    ..Jwk::default()
                },
            ),
            Pair::Es256(p) => {
                let point = p.public_key().as_ref();
                let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
                (
                    Algorithm::ES256,
                    Jwk {
                        kty: "EC".into(),
                        crv: Some("P-256".into()),
                        x: Some(b64(x)),
                        y: Some(b64(y)),
                        ..Jwk::default()
                    },
                )
            }
        };
        let kid = jwk.thumbprint();
        jwk.kid = Some(kid.clone());
        jwk.alg = Some(alg.as_str().into());
        jwk.use_ = Some("sig".into());
        let header = serde_json::json!({ "alg": alg.as_str(), "typ": "at+jwt", "kid": kid });
        let encoded_header = b64(header.to_string().as_bytes());
        SigningKey { pair, jwk, alg, encoded_header }
    }

    /// The key's `kid`: its RFC 7638 thumbprint, so it is stable and derived from the key alone.
    pub fn kid(&self) -> &str {
        self.jwk.kid.as_deref().unwrap_or_default()
    }

    /// The one algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public half, as published in the JWKS.
    pub(crate) fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub(crate) fn encoded_header(&self) -> &str {
        &self.encoded_header
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ()> {
        match &self.pair {
            Pair::Ed25519(p) => Ok(p.sign(message).as_ref().to_vec()),
            Pair::Es256(p) => p.sign(&SystemRandom::new(), message).map(|s| s.as_ref().to_vec()).map_err(|_| ()),
        }
    }

    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, String> {
        VerifyingKey::from_jwk(&self.jwk, &[self.alg])?.pop().ok_or_else(|| "no verifying key".to_string())
    }
}

/// Decodes the first `PRIVATE KEY` (PKCS#8) block of a PEM document.
fn pem_private_key(pem: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject as _;
    match PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(der) => Ok(Zeroizing::new(der.secret_pkcs8_der().to_vec())),
        Err(_) if pem.contains("-----BEGIN EC PRIVATE KEY-----") || pem.contains("-----BEGIN RSA PRIVATE KEY") => {
            Err("key is not PKCS#8: convert it with `openssl pkcs8 -topk8 -nocrypt`".into())
        }
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err("no `BEGIN PRIVATE KEY` block (an unencrypted PKCS#8 PEM key is expected)".into())
        }
        Err(_) => Err("the `PRIVATE KEY` block is not valid PEM".into()),
    }
}

fn pem_encode(label: &str, der: &[u8]) -> PrivateKeyPem {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    PrivateKeyPem::new(pem)
}

impl jws::Verifier for VerifyingKey {
    fn alg(&self) -> Algorithm {
        self.alg
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), jws::JwsError> {
        VerifyingKey::verify(self, message, signature).map_err(|()| jws::JwsError::BadSignature)
    }
}

impl jws::Signer for SigningKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, jws::JwsError> {
        SigningKey::sign(self, message).map_err(|()| jws::JwsError::BadSignature)
    }
}
