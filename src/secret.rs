//! Secrets — tokens, client secrets, URLs that carry a password, private keys — as one newtype typed by its
//! kind, so a client secret cannot be passed where a token is expected.
//!
//! A [`Secret`] prints `[redacted]` under `Debug`, has no `Display` (so `format!("Bearer {s}")` does not
//! compile), no `==` (compare with [`constant_time_eq`]), is cloned only where its kind allows (URLs, which
//! the configuration hands to several connections), and its memory is wiped on drop.

use std::fmt;
use std::marker::PhantomData;

use zeroize::Zeroize;

/// A secret string of kind `K`.
pub struct Secret<K> {
    value: String,
    kind: PhantomData<K>,
}

/// Bearer tokens and assertions: subject, actor and access tokens, the token being introspected or revoked.
#[derive(Debug)]
pub enum TokenKind {}
/// A client's secret, as presented.
#[derive(Debug)]
pub enum ClientSecretKind {}
/// A URL that may carry a password (Redis).
#[derive(Debug)]
pub enum UrlKind {}
/// A private key, PEM-encoded.
#[derive(Debug)]
pub enum PrivateKeyKind {}
/// A shared key that signs outgoing messages (the approvals webhook's HMAC key).
#[derive(Debug)]
pub enum SigningSecretKind {}
/// A master credential for an upstream (an API key, a password), from a secret source.
#[derive(Debug)]
pub enum CredentialKind {}

/// A bearer token or assertion.
pub type Token = Secret<TokenKind>;
/// A client secret, as presented in Basic credentials.
pub type ClientSecret = Secret<ClientSecretKind>;
/// A URL that may carry a password: `store.redis_url`, `store.redis_cluster` entries.
pub type SecretUrl = Secret<UrlKind>;
/// A PEM-encoded private key, as `tessera keygen` writes it.
pub type PrivateKeyPem = Secret<PrivateKeyKind>;
/// The HMAC key of the approvals webhook (`approvals.webhook_secret_file`).
pub type SigningSecret = Secret<SigningSecretKind>;
/// A master credential the broker uses on an agent's behalf and never hands out ([`crate::secrets`]).
pub type Credential = Secret<CredentialKind>;

impl<K> Secret<K> {
    /// Wraps `value`; from here on it is redacted under `Debug` and wiped on drop.
    pub fn new(value: impl Into<String>) -> Self {
        Secret { value: value.into(), kind: PhantomData }
    }

    /// The secret itself: call only where it is used (signing input, a comparison), never to log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether the secret is the empty string (an absent optional token, or a secret that must be refused).
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl<K> Default for Secret<K> {
    fn default() -> Self {
        Secret::new(String::new())
    }
}

impl<K> Drop for Secret<K> {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl<K> From<String> for Secret<K> {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl<K> fmt::Debug for Secret<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// URLs are configuration, handed to more than one connection.
impl Clone for SecretUrl {
    fn clone(&self) -> Self {
        Secret::new(self.value.clone())
    }
}

impl<'de, K> serde::Deserialize<'de> for Secret<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Compares two byte strings in time that depends only on their lengths, so a caller probing a secret learns
/// nothing from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Token::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(ClientSecret::new("x"))), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
