//! Short-lived database logins bound to a token: for a catalogued database audience, a login role created for
//! one token — valid until the token's expiry, a member of only the database roles its granted scopes map to —
//! and dropped (its connections terminated) when the token, its task or anything in its lineage is revoked,
//! or once it has expired.
//!
//! The agent asks with its token (a vend call, [`crate::proxy`]), never on the exchange path: creating a
//! role costs a database round trip that plain exchanges for other audiences must not pay.
//!
//! This module is the rule (which roles, which name, how identifiers and literals are quoted) and the
//! [`Logins`] port; [`postgres`] creates and drops the roles in PostgreSQL and sweeps them.

pub mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use crate::secret::Credential;
use crate::token::AccessClaims;

/// A catalogued database audience: which database roles each scope grants, and how its logins are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginSpec {
    /// The audience tokens for it are issued for.
    pub audience: String,
    /// Scope → the database roles it grants.
    pub grants: BTreeMap<String, Vec<String>>,
    /// The prefix of every login role tessera creates (and the only roles it ever drops).
    pub role_prefix: String,
}

/// The login to create for one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The login role's name: the prefix and a digest of the token's `jti` (nothing a request chose).
    pub role: String,
    /// The database roles it is a member of, from the token's granted scopes.
    pub member_of: Vec<String>,
    /// Unix seconds: the token's expiry, the role's `VALID UNTIL`.
    pub valid_until: u64,
    /// The token's `jti` and task, for the role's comment.
    pub jti: String,
    /// The token's task.
    pub task_id: String,
    /// The token's claims (JSON): what decides, on any replica and after a restart, whether a revocation has
    /// ended it ([`crate::revocation::Probe`]). Identifiers only, never the token.
    pub claims: String,
}

/// A login as handed to the agent once.
#[derive(Debug)]
pub struct Login {
    /// The role name.
    pub username: String,
    /// Its random password.
    pub password: Credential,
    /// The database roles it holds.
    pub roles: Vec<String>,
    /// Unix seconds it is valid until.
    pub valid_until: u64,
    /// Where to connect: host, port, database.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The database.
    pub dbname: String,
}

/// Why no login was created.
#[derive(Debug, PartialEq, Eq)]
pub enum VendError {
    /// None of the token's scopes grants a database role.
    NoGrant,
    /// A login was already created for this token.
    AlreadyVended,
    /// The database could not be reached or refused the broker (said without detail to the caller).
    Unavailable(String),
}

/// What [`Logins`] returns.
pub type VendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VendError>> + Send + 'a>>;

/// Where logins are created: a database.
pub trait Logins: Send + Sync + std::fmt::Debug {
    /// The database's spec.
    fn spec(&self) -> &LoginSpec;
    /// Creates the login of `plan`, with a fresh random password, and records it with its token's claims
    /// where every replica's sweeper finds it.
    fn create<'a>(&'a self, plan: &'a Plan) -> VendFuture<'a, Login>;
}

/// The login for `claims` (a token already checked for `spec`'s audience): the roles of its granted scopes.
pub fn plan(spec: &LoginSpec, claims: &AccessClaims) -> Result<Plan, VendError> {
    let member_of: BTreeSet<&String> = claims.scope.iter().filter_map(|s| spec.grants.get(s)).flatten().collect();
    if member_of.is_empty() {
        return Err(VendError::NoGrant);
    }
    Ok(Plan {
        role: role_name(&spec.role_prefix, &claims.jti),
        member_of: member_of.into_iter().cloned().collect(),
        valid_until: claims.exp,
        jti: claims.jti.clone(),
        task_id: claims.task_id.clone(),
        claims: serde_json::to_string(claims).map_err(|e| VendError::Unavailable(format!("claims: {e}")))?,
    })
}

/// `prefix` and the first 96 bits of SHA-256(`jti`) in hex: one name per token, lower case, safe anywhere.
pub fn role_name(prefix: &str, jti: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jti.as_bytes());
    format!("{prefix}{}", hex::encode(&digest.as_ref()[..12]))
}

/// Whether `name` is a plain lower-case SQL identifier (what configured role names and prefixes must be).
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// `name` as a quoted SQL identifier (`"` doubled), whatever it holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a SQL string literal (`'` doubled; `E''` never used, so backslashes are plain).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A random password: 32 bytes, base64url.
pub fn new_password() -> Result<Credential, VendError> {
    use base64::Engine as _;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| VendError::Unavailable("no randomness".into()))?;
    Ok(Credential::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_so_nothing_escapes() {
        assert_eq!(quote_ident("support_read"), "\"support_read\"");
        assert_eq!(quote_ident("a\"; DROP ROLE x; --"), "\"a\"\"; DROP ROLE x; --\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("'); DROP TABLE t; --\\"), "'''); DROP TABLE t; --\\'");
    }

    #[test]
    fn role_names_come_from_the_jti_digest_only() {
        let name = role_name("tessera_", "x\"; DROP ROLE postgres; --");
        assert!(name.starts_with("tessera_") && name.len() == 8 + 24 && is_plain_identifier(&name), "{name}");
        assert_ne!(role_name("tessera_", "a"), role_name("tessera_", "b"));
        assert!(is_plain_identifier("support_read") && !is_plain_identifier("Support") && !is_plain_identifier("1a"));
        assert!(!is_plain_identifier("a-b") && !is_plain_identifier(""));
    }
}
