//! DPoP (RFC 9449): proofs of possession of a private key, and the sender constraint they put on a token.
//!
//! A client that holds a key pair sends, with each request, a short-lived JWT (`typ: dpop+jwt`) signed by that
//! key, carrying the public key in its header (`jwk`) and naming the request it is for: the method (`htm`),
//! the URL without query and fragment (`htu`), when it was made (`iat`), a unique id (`jti`) and, when it
//! presents an access token, the token's hash (`ath`). A token issued against such a proof carries the key's
//! RFC 7638 thumbprint as `cnf.jkt`, and is useless without the key: every later use needs a fresh proof
//! signed by it.
//!
//! This module only verifies a proof against what the request was ([`Expected`]), as of a `now` the caller
//! gives; it never looks at a store. Replay is refused by the caller, which spends the proof's
//! [`Proof::replay_key`] in the same store round trip as its revocation lookup, so that a proof is accepted
//! once across every replica.
//!
//! The proof is parsed here rather than by [`crate::token::jws`], because that parser (rightly, for access
//! tokens and assertions) refuses an embedded `jwk`: here the embedded key is the point, and what it proves is
//! only possession of that key, never who the caller is.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::error::{Error, ErrorCode};
use crate::secret::Token;
use crate::token::jws::{Algorithm, b64};
use crate::token::keys::{Jwk, VerifyingKey};

/// The JOSE `typ` of a DPoP proof (RFC 9449 §4.2).
pub const PROOF_TYP: &str = "dpop+jwt";
/// The largest proof accepted, in bytes: an RS256 proof with an 8192-bit key is about 3.5 KiB.
pub const MAX_PROOF_BYTES: usize = 6 * 1024;
/// The longest `jti` accepted, in bytes (RFC 9449 asks for at least 96 bits of randomness; UUIDs are 36).
pub const MAX_JTI_BYTES: usize = 128;
/// The longest `htu` accepted, in bytes.
const MAX_HTU_BYTES: usize = 2048;
/// How old a proof may be, by default (`broker.dpop_max_age`), in seconds.
pub const DEFAULT_MAX_AGE: u64 = 60;
/// The largest `broker.dpop_max_age` accepted, in seconds: a proof is for one request, not a session.
pub const MAX_MAX_AGE: u64 = 600;
/// JWK members that only a private (or symmetric) key has: a proof carrying one is refused (RFC 9449 §4.2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// How proofs are judged: their freshness window.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long after its `iat` a proof is still accepted, in seconds (`broker.dpop_max_age`).
    pub max_age: u64,
    /// Clock skew tolerated on `iat`, both ways, in seconds (`broker.leeway`).
    pub leeway: u64,
}

/// A proof as a face received it, with the request it came with: the method and the URL the proof must name.
#[derive(Debug)]
pub struct Presented {
    /// The `DPoP` header's value (a compact JWS). A [`Token`], so no `Debug` prints it.
    pub proof: Token,
    /// The request's method (`POST` at the token endpoint; the original method behind a gateway).
    pub htm: String,
    /// The request's URL as the client addressed it (query and fragment are ignored).
    pub htu: String,
}

/// What a verified proof establishes.
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url: what `cnf.jkt` holds.
    pub jkt: String,
    /// The proof's `jti`.
    jti: String,
    /// Until when (Unix seconds) the proof could still be accepted, so its replay marker must be kept.
    pub until: u64,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof").field("jkt", &self.jkt).field("until", &self.until).finish_non_exhaustive()
    }
}

impl Proof {
    /// The store key that marks this proof used: per key and `jti`, so one key's `jti`s never collide with
    /// another's, and nobody can spend a proof of a key they do not hold.
    pub fn replay_key(&self) -> String {
        crate::revocation::spent_key(&format!("dpop:{}:", self.jkt), &self.jti)
    }
}

#[cfg(test)]
impl Proof {
    /// A proof by the key of thumbprint `jkt`, for unit tests elsewhere in the crate.
    pub(crate) fn by_key(jkt: &str) -> Proof {
        Proof { jkt: jkt.into(), jti: "test".into(), until: 0 }
    }
}

/// Why a proof was refused. The texts are safe to return: none quotes the proof, the token or the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Larger than [`MAX_PROOF_BYTES`].
    #[error("the DPoP proof is larger than {MAX_PROOF_BYTES} bytes")]
    Oversized,
    /// Not a compact JWS, or its header or claims are not the JSON objects RFC 9449 §4.2 describes.
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ is not dpop+jwt")]
    WrongType,
    /// `alg` is not an asymmetric algorithm the broker verifies, or does not fit the key.
    #[error("the DPoP proof's alg is not allowed (ES256, EdDSA, RS256 or PS256) or does not fit its key")]
    AlgorithmNotAllowed,
    /// The header's `jwk` is missing, not a public key, or unusable.
    #[error("the DPoP proof's jwk is not a usable public key: {0}")]
    BadKey(&'static str),
    /// The signature does not verify with the header's key.
    #[error("the DPoP proof's signature does not verify")]
    BadSignature,
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for another HTTP method")]
    WrongMethod,
    /// `htu` is not the request's URL.
    #[error("the DPoP proof is for another URL")]
    WrongUrl,
    /// `iat` is outside the accepted window.
    #[error("the DPoP proof is not fresh (iat is too old or in the future)")]
    Stale,
    /// `ath` is missing or is not the hash of the presented token.
    #[error("the DPoP proof's ath does not match the access token")]
    WrongTokenHash,
    /// The key is not the one the token is bound to.
    #[error("the DPoP proof is signed by another key than the token is bound to")]
    WrongKey,
}

impl From<DpopError> for Error {
    fn from(e: DpopError) -> Self {
        Error::new(ErrorCode::InvalidDpopProof, e.to_string())
    }
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    jwk: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    /// A NumericDate (RFC 7519 §2): seconds, possibly with a fraction, which is dropped.
    iat: serde_json::Number,
    #[serde(default)]
    ath: Option<String>,
}

/// What the request a proof came with was, to compare the proof against.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The method the proof must name (`htm`), compared exactly (methods are case-sensitive).
    pub htm: &'a str,
    /// The URL the proof must name (`htu`), compared after normalisation ([`normalize_htu`]).
    pub htu: &'a str,
    /// The access token presented with the proof, whose hash `ath` must be; `None` at the token endpoint,
    /// where `ath` is not checked.
    pub access_token: Option<&'a str>,
}

/// Verifies `proof` for the request `expected` describes, as of `now` (Unix seconds): RFC 9449 §4.3's checks,
/// every one. Replay (`jti`) is the caller's to refuse, with [`Proof::replay_key`].
pub fn verify(proof: &str, expected: Expected<'_>, settings: Settings, now: u64) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Oversized);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DpopError::Malformed("not a compact JWS"));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| DpopError::Malformed("not base64url"));
    let header: Header =
        serde_json::from_slice(&decode(h)?).map_err(|_| DpopError::Malformed("the header is not a DPoP header"))?;
    // A media type, compared without case; RFC 7515 §4.1.9 lets the `application/` prefix go.
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    if !matches!(typ.as_deref(), Some(t) if t == PROOF_TYP || t.strip_prefix("application/") == Some(PROOF_TYP)) {
        return Err(DpopError::WrongType);
    }
    if header.crit.is_some() {
        return Err(DpopError::Malformed("crit is not supported"));
    }
    let alg = Algorithm::parse(&header.alg).ok_or(DpopError::AlgorithmNotAllowed)?;
    let (key, jkt) = public_key(&header.jwk, alg)?;
    let signature = decode(s)?;
    if signature.is_empty() {
        return Err(DpopError::BadSignature);
    }
    key.verify(&proof.as_bytes()[..h.len() + 1 + p.len()], &signature).map_err(|()| DpopError::BadSignature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(p)?).map_err(|_| DpopError::Malformed("the claims are not DPoP claims"))?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::Malformed("jti must be 1 to 128 bytes"));
    }
    if claims.htm != expected.htm {
        return Err(DpopError::WrongMethod);
    }
    match (normalize_htu(&claims.htu), normalize_htu(expected.htu)) {
        (Some(claimed), Some(actual)) if claimed == actual => {}
        _ => return Err(DpopError::WrongUrl),
    }
    let iat = match (claims.iat.as_u64(), claims.iat.as_f64()) {
        (Some(iat), _) => iat,
        // A fraction of a second is dropped; what does not fit is refused as stale below.
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => f as u64,
        _ => return Err(DpopError::Stale),
    };
    let earliest = now.saturating_sub(settings.max_age.saturating_add(settings.leeway));
    if iat < earliest || iat > now.saturating_add(settings.leeway) {
        return Err(DpopError::Stale);
    }
    if let Some(token) = expected.access_token {
        let hash = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref());
        if claims.ath.as_deref() != Some(hash.as_str()) {
            return Err(DpopError::WrongTokenHash);
        }
    }
    let until = iat.saturating_add(settings.max_age).saturating_add(settings.leeway).saturating_add(1);
    Ok(Proof { jkt, jti: claims.jti, until })
}

/// The verifying key a proof's `jwk` stands for, pinned to `alg`, and its RFC 7638 thumbprint. Only public
/// keys of the types the broker verifies, with well-formed members, are accepted.
fn public_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
    alg: Algorithm,
) -> Result<(VerifyingKey, String), DpopError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(DpopError::BadKey("it holds private key material"));
    }
    let member = |name: &str| -> Result<Option<String>, DpopError> {
        match jwk.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DpopError::BadKey("a member is not a string")),
        }
    };
    let kty = member("kty")?.ok_or(DpopError::BadKey("kty is missing"))?;
    let parsed = Jwk {
        kty,
        crv: member("crv")?,
        x: member("x")?,
        y: member("y")?,
        n: member("n")?,
        e: member("e")?,
        kid: None,
        alg: member("alg")?,
        use_: member("use")?,
    };
    let required: &[&Option<String>] = match (parsed.kty.as_str(), alg) {
        ("OKP", Algorithm::EdDSA) if parsed.crv.as_deref() == Some("Ed25519") => &[&parsed.x],
        ("EC", Algorithm::ES256) if parsed.crv.as_deref() == Some("P-256") => &[&parsed.x, &parsed.y],
        ("RSA", Algorithm::RS256 | Algorithm::PS256) => &[&parsed.n, &parsed.e],
        _ => return Err(DpopError::AlgorithmNotAllowed),
    };
    // Required members are base64url: so the thumbprint's canonical JSON needs no escaping.
    let base64url = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !required.iter().all(|v| v.as_deref().is_some_and(base64url)) {
        return Err(DpopError::BadKey("a required member is missing or not base64url"));
    }
    let mut keys = VerifyingKey::from_jwk(&parsed, &[alg]).map_err(|_| DpopError::BadKey("it is not a valid key"))?;
    let key = match (keys.pop(), keys.is_empty()) {
        (Some(key), true) => key,
        _ => return Err(DpopError::AlgorithmNotAllowed),
    };
    Ok((key, parsed.thumbprint()))
}

/// An `htu` (or the URL it is compared with) normalised per RFC 9449 §4.3 and RFC 3986 §6.2.2–6.2.3: query and
/// fragment dropped, scheme and host lowercased, the scheme's default port dropped, an empty path made `/`,
/// percent-encodings uppercased. `None` for anything that is not an absolute http(s) URL with a host.
pub fn normalize_htu(url: &str) -> Option<String> {
    if url.len() > MAX_HTU_BYTES || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    if let Some(stripped) = authority.strip_suffix(default_port) {
        authority = stripped.to_string();
    }
    let mut path_out = String::with_capacity(path.len() + 1);
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            path_out.push('%');
            path_out.push_str(&hex.to_ascii_uppercase());
            i += 3;
        } else {
            let ch = path[i..].chars().next()?;
            path_out.push(ch);
            i += ch.len_utf8();
        }
    }
    if path_out.is_empty() {
        path_out.push('/');
    }
    Some(format!("{scheme}://{authority}{path_out}"))
}

/// The URL a gRPC `ExchangeToken` proof names as `htu`: the RPC's path under the broker's issuer.
pub fn grpc_exchange_htu(broker_issuer: &str) -> String {
    format!("{}/tessera.v1.TokenBroker/ExchangeToken", broker_issuer.trim_end_matches('/'))
}

/// The URL a token-endpoint proof names as `htu`: the RFC 8414 `token_endpoint` under the broker's issuer.
pub fn token_endpoint(broker_issuer: &str) -> String {
    format!("{}/oauth2/token", broker_issuer.trim_end_matches('/'))
}

/// The RFC 8705 `x5t#S256` of a client certificate, from its SHA-256 digest.
pub fn certificate_thumbprint(sha256: &[u8; 32]) -> String {
    b64(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::{Value, json};

    const NOW: u64 = 1_800_000_000;
    const HTU: &str = "https://rs.example/api/items";
    const SETTINGS: Settings = Settings { max_age: 60, leeway: 5 };

    enum Key {
        Ed(Ed25519KeyPair),
        Ec(EcdsaKeyPair),
    }

    impl Key {
        fn ed() -> Key {
            let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            Key::Ed(Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap())
        }
        fn ec() -> Key {
            let der =
                EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
            Key::Ec(EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref()).unwrap())
        }
        fn alg(&self) -> &'static str {
            match self {
                Key::Ed(_) => "EdDSA",
                Key::Ec(_) => "ES256",
            }
        }
        fn jwk(&self) -> Value {
            match self {
                Key::Ed(k) => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref()) }),
                Key::Ec(k) => {
                    let p = k.public_key().as_ref();
                    json!({ "kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]) })
                }
            }
        }
        fn sign_raw(&self, header: &Value, claims: &Value) -> String {
            let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
            let signature = match self {
                Key::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
                Key::Ec(k) => k.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec(),
            };
            format!("{input}.{}", b64(&signature))
        }
        fn proof(&self, claims: &Value) -> String {
            self.sign_raw(&json!({ "typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk() }), claims)
        }
    }

    fn claims() -> Value {
        json!({ "jti": "j-1", "htm": "GET", "htu": HTU, "iat": NOW, "ath": ath("tok") })
    }

    fn ath(token: &str) -> String {
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
    }

    fn expected() -> Expected<'static> {
        Expected { htm: "GET", htu: HTU, access_token: Some("tok") }
    }

    fn check(proof: &str) -> Result<Proof, DpopError> {
        verify(proof, expected(), SETTINGS, NOW)
    }

    #[test]
    fn a_good_proof_verifies_with_each_curve_and_yields_the_key_thumbprint() {
        for key in [Key::ed(), Key::ec()] {
            let proof = check(&key.proof(&claims())).unwrap();
            let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
            assert_eq!(proof.jkt, jwk.thumbprint());
            assert_eq!(proof.until, NOW + 60 + 5 + 1);
            assert!(proof.replay_key().starts_with("{tessera}:used:"));
            assert!(!format!("{proof:?}").contains("j-1"), "Debug leaves the jti out");
        }
    }

    #[test]
    fn the_thumbprint_is_rfc7638s() {
        // RFC 7638 §3.1's example key, through the proof's key reader.
        let jwk: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        let (_, jkt) = public_key(&jwk, Algorithm::RS256).unwrap();
        assert_eq!(jkt, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn every_claim_is_checked() {
        let key = Key::ec();
        let with = |name: &str, value: Value| {
            let mut c = claims();
            c[name] = value;
            check(&key.proof(&c))
        };
        assert_eq!(with("htm", "POST".into()), Err(DpopError::WrongMethod));
        assert_eq!(with("htm", "get".into()), Err(DpopError::WrongMethod), "methods are case-sensitive");
        assert_eq!(with("htu", "https://rs.example/api/other".into()), Err(DpopError::WrongUrl));
        assert_eq!(with("htu", "https://evil.example/api/items".into()), Err(DpopError::WrongUrl));
        assert_eq!(with("htu", "http://rs.example/api/items".into()), Err(DpopError::WrongUrl));
        assert_eq!(with("htu", "/api/items".into()), Err(DpopError::WrongUrl));
        assert_eq!(with("iat", (NOW - 66).into()), Err(DpopError::Stale));
        assert_eq!(with("iat", (NOW + 6).into()), Err(DpopError::Stale));
        assert!(with("iat", (NOW - 65).into()).is_ok(), "max_age plus leeway");
        assert!(with("iat", (NOW + 5).into()).is_ok(), "leeway ahead");
        assert!(matches!(with("iat", "now".into()), Err(DpopError::Malformed(_))));
        assert!(with("iat", json!(NOW as f64 + 0.25)).is_ok(), "a NumericDate may have a fraction");
        assert_eq!(with("iat", json!(-1)), Err(DpopError::Stale));
        assert_eq!(with("iat", json!(1e300)), Err(DpopError::Stale));
        assert_eq!(with("ath", ath("another").into()), Err(DpopError::WrongTokenHash));
        assert!(matches!(with("jti", "".into()), Err(DpopError::Malformed(_))));
        assert!(matches!(with("jti", "x".repeat(129).into()), Err(DpopError::Malformed(_))));
        assert!(with("jti", "x".repeat(128).into()).is_ok());
        for name in ["jti", "htm", "htu", "iat"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(name);
            assert!(matches!(check(&key.proof(&c)), Err(DpopError::Malformed(_))), "{name} is required");
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("ath");
        assert_eq!(check(&key.proof(&c)), Err(DpopError::WrongTokenHash), "ath is required with a token");
        // At the token endpoint there is no token to hash.
        let at_token_endpoint = Expected { htm: "GET", htu: HTU, access_token: None };
        assert!(verify(&key.proof(&c), at_token_endpoint, SETTINGS, NOW).is_ok());
    }

    #[test]
    fn the_url_is_compared_without_query_and_fragment_and_normalised() {
        let key = Key::ed();
        for htu in [
            "https://rs.example/api/items?x=1",
            "https://rs.example/api/items#f",
            "HTTPS://RS.Example:443/api/items",
            "https://rs.example:443/api/items?q",
        ] {
            let mut c = claims();
            c["htu"] = htu.into();
            assert!(check(&key.proof(&c)).is_ok(), "{htu}");
        }
        assert_eq!(normalize_htu("https://a.example"), Some("https://a.example/".into()));
        assert_eq!(normalize_htu("http://a.example:80/x%2fy"), Some("http://a.example/x%2Fy".into()));
        assert_eq!(normalize_htu("https://a.example:8443/x"), Some("https://a.example:8443/x".into()));
        for bad in ["ftp://a/x", "https://", "https://user@a/x", "https://a/%zz", "https://a/%2", "https://a/ x"] {
            assert_eq!(normalize_htu(bad), None, "{bad}");
        }
        assert_eq!(normalize_htu("https://a.example/Path"), Some("https://a.example/Path".into()), "paths keep case");
    }

    #[test]
    fn the_header_is_checked() {
        let key = Key::ec();
        let header = |typ: Value, alg: &str, jwk: Value| json!({ "typ": typ, "alg": alg, "jwk": jwk });
        let sign = |h: Value| check(&key.sign_raw(&h, &claims()));
        assert_eq!(sign(header("JWT".into(), "ES256", key.jwk())), Err(DpopError::WrongType));
        assert_eq!(sign(header("at+jwt".into(), "ES256", key.jwk())), Err(DpopError::WrongType));
        assert!(sign(header("application/DPoP+JWT".into(), "ES256", key.jwk())).is_ok(), "a media type");
        assert_eq!(sign(header(Value::Null, "ES256", key.jwk())), Err(DpopError::WrongType));
        for alg in ["none", "HS256", "ES384", "EdDSA", "RS256"] {
            assert_eq!(sign(header("dpop+jwt".into(), alg, key.jwk())), Err(DpopError::AlgorithmNotAllowed), "{alg}");
        }
        let mut private = key.jwk();
        private["d"] = "c2VjcmV0".into();
        assert!(matches!(sign(header("dpop+jwt".into(), "ES256", private)), Err(DpopError::BadKey(_))));
        let symmetric = json!({ "kty": "oct", "k": "c2VjcmV0" });
        assert!(matches!(sign(header("dpop+jwt".into(), "ES256", symmetric)), Err(DpopError::BadKey(_))));
        let mut off_curve = key.jwk();
        off_curve["y"] = off_curve["x"].clone();
        assert!(matches!(sign(header("dpop+jwt".into(), "ES256", off_curve)), Err(DpopError::BadKey(_))));
        let mut escaped = key.jwk();
        escaped["x"] = "a\"b".into();
        assert!(matches!(sign(header("dpop+jwt".into(), "ES256", escaped)), Err(DpopError::BadKey(_))));
        let mut with_crit = header("dpop+jwt".into(), "ES256", key.jwk());
        with_crit["crit"] = json!(["exp"]);
        assert!(matches!(sign(with_crit), Err(DpopError::Malformed(_))));
        let no_jwk = json!({ "typ": "dpop+jwt", "alg": "ES256" });
        assert!(matches!(sign(no_jwk), Err(DpopError::Malformed(_))));
        // Another key's public half in the header: the signature does not verify.
        let other = Key::ec();
        assert_eq!(sign(header("dpop+jwt".into(), "ES256", other.jwk())), Err(DpopError::BadSignature));
    }

    #[test]
    fn a_tampered_or_cut_proof_is_refused() {
        let key = Key::ed();
        let proof = key.proof(&claims());
        let mut parts: Vec<String> = proof.split('.').map(String::from).collect();
        let mut other = claims();
        other["htm"] = "POST".into();
        parts[1] = b64(other.to_string().as_bytes());
        assert_eq!(check(&parts.join(".")), Err(DpopError::BadSignature));
        assert_eq!(check(&format!("{}.{}.", parts[0], parts[1])), Err(DpopError::BadSignature));
        assert!(check(&proof[..proof.len() / 2]).is_err());
        assert_eq!(check(&"a".repeat(MAX_PROOF_BYTES + 1)), Err(DpopError::Oversized));
    }

    #[test]
    fn refusals_become_invalid_dpop_proof() {
        let e: Error = DpopError::WrongUrl.into();
        assert_eq!(e.code, ErrorCode::InvalidDpopProof);
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_cases(256))]

        /// Nothing a caller sends as a proof makes verification panic, and none of it is accepted: arbitrary
        /// text, arbitrary bytes as header and claims, and well-formed JSON with wrong or missing members.
        #[test]
        fn arbitrary_proofs_are_refused_without_panicking(
            text in ".{0,400}",
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            typ in proptest::option::of("[a-z+]{0,10}"),
            alg in "(ES256|EdDSA|RS256|PS256|none|HS256|[A-Z]{0,6})",
            kty in "(EC|OKP|RSA|oct|[A-Z]{0,3})",
            member in "[A-Za-z0-9_-]{0,60}",
            iat in proptest::num::u64::ANY,
        ) {
            proptest::prop_assert!(check(&text).is_err());
            let raw = format!("{}.{}.{}", b64(&header), b64(&payload), b64(b"sig"));
            proptest::prop_assert!(check(&raw).is_err());
            let h = json!({ "typ": typ, "alg": alg, "jwk": { "kty": kty, "crv": "P-256", "x": member, "y": member, "n": member, "e": member } });
            let c = json!({ "jti": member, "htm": "GET", "htu": HTU, "iat": iat, "ath": member });
            let structured = format!("{}.{}.{}", b64(h.to_string().as_bytes()), b64(c.to_string().as_bytes()), b64(member.as_bytes()));
            proptest::prop_assert!(check(&structured).is_err());
        }

        /// A correctly signed proof whose claims are drawn at random is accepted exactly when every claim is
        /// what the request needs: the verifier against an oracle written from RFC 9449 §4.3.
        #[test]
        fn a_signed_proof_is_accepted_only_when_every_claim_fits(
            htm in "(GET|POST|get|DELETE)",
            htu in "(https://rs\\.example/api/items|HTTPS://RS\\.EXAMPLE/api/items|https://rs\\.example:443/api/items\\?q=1|https://rs\\.example/api/Items|http://rs\\.example/api/items|https://rs\\.example/api|[a-z:/.]{0,30})",
            age in -20i64..100,
            right_ath in proptest::bool::ANY,
            jti in "[A-Za-z0-9]{0,3}",
        ) {
            let key = KEY.with(|k| k.jwk());
            let iat = NOW.saturating_add_signed(-age);
            let token = if right_ath { "tok" } else { "other" };
            let claims = json!({ "jti": jti, "htm": htm, "htu": htu, "iat": iat, "ath": ath(token) });
            let proof = KEY.with(|k| k.proof(&claims));
            let accepted = check(&proof);
            let same_url = ["https://rs.example/api/items", "HTTPS://RS.EXAMPLE/api/items", "https://rs.example:443/api/items?q=1"].contains(&htu.as_str());
            let expected = htm == "GET" && same_url && (-5..=65).contains(&age) && right_ath && !jti.is_empty();
            proptest::prop_assert_eq!(accepted.is_ok(), expected, "{:?} for {} {} age {} jwk {}", accepted, htm, htu, age, key);
        }
    }

    thread_local! {
        /// One key for the oracle property (generating a key per case would dominate its run time).
        static KEY: Key = Key::ed();
    }
}
