//! For resource servers written in Rust: a tessera token checked offline — signature against the broker's
//! JWK Set (from `GetJwks`, fetched again on an unknown `kid`), `typ` `at+jwt` (RFC 9068), issuer, this
//! API's audience, `exp`/`nbf`, the scopes a route needs — and, where a revocation must be seen at once,
//! online with `Introspect`.

use std::sync::RwLock;

use super::{Broker, SdkError};
use crate::secret::Token;
use crate::token::AccessClaims;
use crate::token::jws::{self, Algorithm};
use crate::token::keys::{JwkSet, KeySet};

/// The largest token accepted (tessera's own tokens stay well under it).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused, as RFC 6750 §3.1 names it: 401 `invalid_token` or 403 `insufficient_scope`.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// Missing, malformed, badly signed, expired, revoked, for another audience or issuer.
    #[error("invalid_token: {0}")]
    InvalidToken(&'static str),
    /// A scope the route needs is missing (the missing ones).
    #[error("insufficient_scope: {0}")]
    InsufficientScope(String),
    /// The broker could not be asked (JWKS or introspection): fail closed.
    #[error("the token could not be checked: {0}")]
    Unavailable(SdkError),
}

impl Rejected {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Rejected::InvalidToken(_) => 401,
            Rejected::InsufficientScope(_) => 403,
            Rejected::Unavailable(_) => 503,
        }
    }
}

/// Verifies tessera tokens for one audience.
pub struct Verifier {
    broker: Broker,
    issuer: String,
    audience: String,
    leeway: u64,
    keys: RwLock<KeySet>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

impl Verifier {
    /// A verifier for `audience`, tokens from the broker whose issuer is `issuer` (its `broker.issuer`),
    /// reached through `broker` (whose client must be allowed to introspect this audience's tokens).
    pub async fn new(broker: Broker, issuer: &str, audience: &str) -> Result<Verifier, SdkError> {
        let verifier = Verifier {
            broker,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway: 5,
            keys: RwLock::new(KeySet::from_keys(Vec::new())),
        };
        verifier.refresh().await?;
        Ok(verifier)
    }

    async fn refresh(&self) -> Result<(), SdkError> {
        let answer = self.broker.jwks().await?;
        let jwks: JwkSet = serde_json::from_str(&answer.jwks_json)
            .map_err(|e| SdkError::Client(format!("the broker's JWK Set is not valid: {e}")))?;
        let (keys, _) = KeySet::from_jwks(&jwks, &[Algorithm::EdDSA, Algorithm::ES256]);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    fn check(&self, token: &Token, scopes: &[&str], now: u64) -> Result<Result<AccessClaims, Rejected>, ()> {
        let Ok(parsed) = jws::parse(token.expose(), MAX_TOKEN_BYTES) else {
            return Ok(Err(Rejected::InvalidToken("the token is not a JWS")));
        };
        let typ = parsed.header.typ.as_deref().unwrap_or_default().to_ascii_lowercase();
        if typ != "at+jwt" && typ != "application/at+jwt" {
            return Ok(Err(Rejected::InvalidToken("not an access token (typ at+jwt)")));
        }
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let Some(key) = keys.find(parsed.header.kid.as_deref(), parsed.alg) else {
                return Err(()); // an unknown key: the caller refreshes the set once
            };
            if parsed.verify(key).is_err() {
                return Ok(Err(Rejected::InvalidToken("the signature does not verify")));
            }
        }
        let Ok(claims) = serde_json::from_slice::<AccessClaims>(&parsed.payload) else {
            return Ok(Err(Rejected::InvalidToken("the claims are not a tessera token's")));
        };
        if claims.iss != self.issuer {
            return Ok(Err(Rejected::InvalidToken("the token is from another issuer")));
        }
        if claims.aud != self.audience {
            return Ok(Err(Rejected::InvalidToken("the token is for another audience")));
        }
        if claims.exp + self.leeway <= now || claims.nbf > now + self.leeway {
            return Ok(Err(Rejected::InvalidToken("the token is expired or not yet valid")));
        }
        let missing: Vec<&str> = scopes.iter().copied().filter(|s| !claims.scope.contains(s)).collect();
        if !missing.is_empty() {
            return Ok(Err(Rejected::InsufficientScope(missing.join(" "))));
        }
        Ok(Ok(claims))
    }

    /// Signature, `typ`, issuer, audience, time and `scopes`, with no call to the broker but to fetch its
    /// JWK Set again for an unknown `kid`. A revoked token passes until it expires: see [`Verifier::verify`].
    pub async fn verify_offline(&self, token: &Token, scopes: &[&str], now: u64) -> Result<AccessClaims, Rejected> {
        match self.check(token, scopes, now) {
            Ok(result) => result,
            Err(()) => {
                self.refresh().await.map_err(Rejected::Unavailable)?;
                self.check(token, scopes, now).unwrap_or(Err(Rejected::InvalidToken("no key of the broker signed it")))
            }
        }
    }

    /// [`Verifier::verify_offline`], then introspection: a revoked token — or one of a revoked task,
    /// subject or client, or derived from a revoked token — is refused at once.
    pub async fn verify(&self, token: &Token, scopes: &[&str], now: u64) -> Result<AccessClaims, Rejected> {
        let claims = self.verify_offline(token, scopes, now).await?;
        let answer = self.broker.introspect(token).await.map_err(Rejected::Unavailable)?;
        if !answer.active {
            return Err(Rejected::InvalidToken("the token is no longer active"));
        }
        Ok(claims)
    }
}
