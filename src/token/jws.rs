//! Compact JWS (RFC 7515) parsing, verification and signing, on aws-lc-rs alone.
//!
//! Written here rather than borrowed because the broker must control every step an attacker can reach: the
//! size checks happen before any decoding, the header is parsed strictly (a `jku`, `x5u`, `jwk`, `x5c` or
//! `crit` header is refused, never followed), the algorithm is one of four asymmetric ones (no `none`, no
//! HMAC), and it must equal the algorithm pinned to the key that verifies it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The signature algorithms the broker understands. Anything else — `none`, `HS256`, `RS512` — is refused
/// before a key is even looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3), 2048- to 8192-bit keys; verification only.
    RS256,
    /// RSASSA-PSS with SHA-256 (RFC 7518 §3.5), 2048- to 8192-bit keys; verification only.
    PS256,
}

impl Algorithm {
    pub(crate) const ALL: [Algorithm; 4] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256, Algorithm::PS256];

    /// The JOSE `alg` name (RFC 7518 §3.1).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub(crate) fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature as sig;
        match self {
            Algorithm::EdDSA => &sig::ED25519,
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a compact JWS was refused. The texts are safe to return to a caller: none quotes the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Longer than the limit (in bytes) the caller set; refused before anything is decoded.
    #[error("is larger than {0} bytes")]
    Oversized(usize),
    /// Not three base64url parts, or an empty header or payload.
    #[error("is not a compact JWS (three base64url parts)")]
    Malformed,
    /// The header is not a JSON object with a string `alg`.
    #[error("has a malformed header")]
    MalformedHeader,
    /// `alg` is not one of [`Algorithm`], or not the algorithm the verifying key is pinned to.
    #[error("uses algorithm that is not allowed")]
    AlgorithmNotAllowed,
    /// A header that would choose the verifying key (`jku`, `x5u`, `jwk`, `x5c`) or demand extensions
    /// (`crit`), named.
    #[error("has a `{0}` header, which is never followed")]
    ForbiddenHeader(&'static str),
    /// The payload is not the claims set the verifier expects.
    #[error("has an unparseable claims set")]
    MalformedClaims,
    /// The signature is empty or does not verify (or signing failed).
    #[error("has a signature that does not verify")]
    BadSignature,
}

/// The JOSE header fields the broker reads. Fields that would point the verifier at a key of the token's
/// own choosing are captured only to refuse them.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// The `alg` as sent (RFC 7515 §4.1.1), before it is matched against [`Algorithm`].
    pub alg: String,
    /// The key id (RFC 7515 §4.1.4) that picks the verifying key.
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub(crate) typ: Option<String>,
    #[serde(default)]
    jku: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    x5u: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    jwk: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    x5c: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A compact JWS split and decoded, not yet verified.
pub struct Unverified<'a> {
    /// The decoded JOSE header.
    pub header: Header,
    pub(crate) alg: Algorithm,
    signing_input: &'a str,
    signature: Vec<u8>,
    pub(crate) payload: Vec<u8>,
}

impl fmt::Debug for Unverified<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unverified").field("alg", &self.alg).field("kid", &self.header.kid).finish_non_exhaustive()
    }
}

/// Splits and decodes a compact JWS. Size is checked first, so an oversized input costs nothing to refuse.
pub fn parse(token: &str, max_bytes: usize) -> Result<Unverified<'_>, JwsError> {
    if token.len() > max_bytes {
        return Err(JwsError::Oversized(max_bytes));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwsError::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(JwsError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwsError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| JwsError::MalformedHeader)?;
    for (present, name) in [
        (header.jku.is_some(), "jku"),
        (header.x5u.is_some(), "x5u"),
        (header.jwk.is_some(), "jwk"),
        (header.x5c.is_some(), "x5c"),
        (header.crit.is_some(), "crit"),
    ] {
        if present {
            return Err(JwsError::ForbiddenHeader(name));
        }
    }
    let alg = Algorithm::parse(&header.alg).ok_or(JwsError::AlgorithmNotAllowed)?;
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwsError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwsError::Malformed)?;
    if signature.is_empty() {
        return Err(JwsError::BadSignature);
    }
    Ok(Unverified { header, alg, signing_input: &token[..h.len() + 1 + p.len()], signature, payload })
}

/// A public key pinned to one algorithm ([`super::keys::VerifyingKey`]).
pub(crate) trait Verifier {
    fn alg(&self) -> Algorithm;
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JwsError>;
}

/// A private key that signs with its one algorithm ([`super::keys::SigningKey`]).
pub(crate) trait Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JwsError>;
}

impl Unverified<'_> {
    /// Verifies the signature with `key`, which must be pinned to the header's algorithm.
    pub(crate) fn verify(&self, key: &impl Verifier) -> Result<(), JwsError> {
        if key.alg() != self.alg {
            return Err(JwsError::AlgorithmNotAllowed);
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)
    }
}

/// `base64url(header) "." base64url(payload) "." base64url(signature)`, with the header encoded once per key.
pub(crate) fn sign(encoded_header: &str, payload: &[u8], key: &impl Signer) -> Result<String, JwsError> {
    let payload_len = base64::encoded_len(payload.len(), false).ok_or(JwsError::Malformed)?;
    let mut out = String::with_capacity(encoded_header.len() + payload_len + 90);
    out.push_str(encoded_header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let signature = key.sign(out.as_bytes())?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    Ok(out)
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> String {
        b64(json.as_bytes())
    }

    #[test]
    fn refuses_oversized_before_decoding() {
        let token = "a".repeat(100);
        assert_eq!(parse(&token, 99).unwrap_err(), JwsError::Oversized(99));
    }

    #[test]
    fn refuses_wrong_part_counts_and_bad_base64() {
        for token in ["", "a", "a.b", "a.b.c.d", ".b.c", "a..c", "!!.b.c"] {
            assert!(parse(token, 1000).is_err(), "{token}");
        }
    }

    #[test]
    fn refuses_none_and_hmac() {
        for alg in ["none", "HS256", "RS512", "ES384"] {
            let token = format!("{}.{}.{}", header(&format!(r#"{{"alg":"{alg}"}}"#)), b64(b"{}"), b64(b"sig"));
            assert_eq!(parse(&token, 1000).unwrap_err(), JwsError::AlgorithmNotAllowed, "{alg}");
        }
    }

    #[test]
    fn refuses_key_pointing_headers() {
        for field in ["jku", "x5u", "jwk", "x5c", "crit"] {
            let h = header(&format!(r#"{{"alg":"ES256","{field}":"https://evil.example/keys"}}"#));
            let token = format!("{h}.{}.{}", b64(b"{}"), b64(b"sig"));
            assert!(matches!(parse(&token, 1000), Err(JwsError::ForbiddenHeader(_))), "{field}");
        }
    }

    /// A JOSE header as an attacker shapes it: a known or odd `alg`, any `kid`, and maybe a header that
    /// fetches or embeds keys.
    fn hostile_header() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let alg = prop_oneof![
            Just("none".to_string()),
            Just("HS256".to_string()),
            Just("RS256".to_string()),
            Just("ES256".to_string()),
            Just("EdDSA".to_string()),
            Just("PS256".to_string()),
            ".{0,12}",
        ];
        let extra = prop_oneof![
            Just(None),
            Just(Some("jku")),
            Just(Some("x5u")),
            Just(Some("x5c")),
            Just(Some("jwk")),
            Just(Some("crit")),
            Just(Some("b64")),
            Just(Some("zip")),
        ];
        (alg, proptest::option::of(".{0,40}"), extra, proptest::option::of("[a-z+]{0,10}")).prop_map(
            |(alg, kid, extra, typ)| {
                let mut h = serde_json::json!({ "alg": alg });
                if let Some(kid) = kid {
                    h["kid"] = kid.into();
                }
                if let Some(typ) = typ {
                    h["typ"] = typ.into();
                }
                if let Some(name) = extra {
                    h[name] = serde_json::json!(["https://evil.example/keys"]);
                }
                h
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_cases(256))]

        /// Structured hostile tokens: parsing never panics, and what it accepts has an allowed algorithm,
        /// no key-fetching or embedded-key header, and exactly the bytes it was given as its signature.
        #[test]
        fn hostile_headers_never_panic_and_never_pass_a_forbidden_header(header in hostile_header(), payload in ".{0,200}", signature in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let token = format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(payload.as_bytes()), b64(&signature));
            if let Ok(parsed) = parse(&token, 4096) {
                let forbidden = ["jku", "x5u", "x5c", "jwk", "crit"];
                proptest::prop_assert!(forbidden.iter().all(|f| header.get(*f).is_none()), "{header}");
                proptest::prop_assert!(["RS256", "ES256", "EdDSA", "PS256"].contains(&header["alg"].as_str().unwrap_or_default()), "{header}");
                proptest::prop_assert_eq!(&parsed.signature, &signature);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_cases(256))]

        /// Nothing an attacker sends makes parsing panic: arbitrary text, and arbitrary headers and payloads
        /// wrapped in valid base64url.
        #[test]
        fn parsing_never_panics(text in ".{0,300}", header in proptest::collection::vec(proptest::num::u8::ANY, 0..200), payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&text, 1000);
            let _ = parse(&format!("{}.{}.{}", b64(&header), b64(&payload), b64(b"sig")), 1000);
            let json_header = format!(r#"{{"alg":"ES256","kid":{}}}"#, serde_json::Value::String(String::from_utf8_lossy(&header).into_owned()));
            let _ = parse(&format!("{}.{}.{}", b64(json_header.as_bytes()), b64(&payload), b64(b"sig")), 1000);
        }
    }

    #[test]
    fn refuses_empty_signature() {
        let token = format!("{}.{}.", header(r#"{"alg":"EdDSA"}"#), b64(b"{}"));
        assert_eq!(parse(&token, 1000).unwrap_err(), JwsError::BadSignature);
    }
}
