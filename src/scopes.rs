//! Scopes (RFC 6749 §3.3), parsed once and by one rule wherever they come from — a request's `scope`, an
//! upstream assertion's `scope`/`scp` claim, tessera's own tokens, the catalog — so a catalogued scope is
//! always one a request can name, and no part of the broker reads a scope string its own way.
//!
//! A scope token is 1 to [`MAX_SCOPE_TOKEN_BYTES`] of the RFC's characters (`%x21 / %x23-5B / %x5D-7E`);
//! tokens are separated by spaces (repeated, leading and trailing spaces are tolerated; any other whitespace
//! or control character is malformed). Duplicates are dropped, the order is kept. A request's `scope` is
//! also bounded in bytes and count before anything else looks at it.

use std::fmt;

/// A request's `scope` parameter is at most this many bytes…
pub const MAX_SCOPE_BYTES: usize = 1024;
/// …and names at most this many scopes.
pub const MAX_SCOPES: usize = 32;
/// The longest scope token.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 128;

/// A set of scope tokens in the order first given, kept in its canonical space-delimited form (so it is
/// written into a token or a response without being joined again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(String);

/// Why a scope string or list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A request's `scope` is over [`MAX_SCOPE_BYTES`] or names more than [`MAX_SCOPES`] scopes.
    #[error("scope is too long")]
    TooLong,
    /// A token is empty, longer than [`MAX_SCOPE_TOKEN_BYTES`], or holds a byte RFC 6749 §3.3 does not allow
    /// (whitespace, a control character, `"`, `\`, non-ASCII).
    #[error("scope holds a malformed scope token")]
    Malformed,
}

impl Scopes {
    /// A request's `scope` parameter: bounded in bytes and count, every token well-formed.
    pub fn parse_request(s: &str) -> Result<Scopes, ScopeError> {
        if s.len() > MAX_SCOPE_BYTES {
            return Err(ScopeError::TooLong);
        }
        let scopes = Scopes::parse(s)?;
        if scopes.len() > MAX_SCOPES {
            return Err(ScopeError::TooLong);
        }
        Ok(scopes)
    }

    /// A space-delimited scope string from a claim: every token well-formed (its size is bounded by the
    /// token that carries it).
    pub fn parse(s: &str) -> Result<Scopes, ScopeError> {
        Scopes::from_tokens(s.split(' ').filter(|t| !t.is_empty()))
    }

    /// A list of scope tokens (an `scp` claim, the catalog's config), each by the same rule.
    pub fn from_tokens<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Result<Scopes, ScopeError> {
        let mut scopes = Scopes::default();
        for token in tokens {
            let token = token.as_ref();
            if !is_scope_token(token) {
                return Err(ScopeError::Malformed);
            }
            scopes.push(token);
        }
        Ok(scopes)
    }

    /// Adds a token known to be well-formed, unless it is already there.
    fn push(&mut self, token: &str) {
        if !self.contains(token) {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(token);
        }
    }

    /// The scope tokens, in the order first given.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ').filter(|t| !t.is_empty())
    }

    /// Whether `scope` is one of the tokens (an exact match: scopes have no hierarchy).
    pub fn contains(&self, scope: &str) -> bool {
        self.iter().any(|s| s == scope)
    }

    /// How many scope tokens there are.
    fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there is no scope at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes for which `keep` holds, in order.
    pub fn filter(&self, mut keep: impl FnMut(&str) -> bool) -> Scopes {
        let mut kept = Scopes::default();
        for s in self.iter().filter(|s| keep(s)) {
            kept.push(s);
        }
        kept
    }

    /// The canonical space-delimited form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Scopes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Scopes::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether `s` is one RFC 6749 §3.3 scope token of at most [`MAX_SCOPE_TOKEN_BYTES`].
fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SCOPE_TOKEN_BYTES && s.bytes().all(is_scope_char)
}

/// RFC 6749 §3.3 scope-token characters.
fn is_scope_char(b: u8) -> bool {
    b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_dedupes_and_keeps_order() {
        let s = Scopes::parse_request("crm:read  crm:write crm:read ").unwrap();
        assert_eq!(s.as_str(), "crm:read crm:write");
        assert_eq!(s.len(), 2);
        assert!(s.contains("crm:write") && !s.contains("crm"));
        assert_eq!(Scopes::from_tokens(["b", "a", "b"]).unwrap().as_str(), "b a");
        assert_eq!(s.filter(|t| t != "crm:read").as_str(), "crm:write");
        assert!(Scopes::parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_tokens_and_other_separators_are_refused() {
        for bad in ["crm:\"read\"", "a\\b", "crm:read\nevent=revoke", "a\tb", "ü", "a\u{7f}"] {
            assert_eq!(Scopes::parse(bad), Err(ScopeError::Malformed), "{bad:?}");
        }
        assert_eq!(Scopes::from_tokens([""]), Err(ScopeError::Malformed));
        assert_eq!(Scopes::from_tokens(["a b"]), Err(ScopeError::Malformed));
        assert_eq!(Scopes::parse(&"x".repeat(129)), Err(ScopeError::Malformed));
        assert!(Scopes::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn requests_are_bounded_in_bytes_and_count() {
        assert_eq!(Scopes::parse_request(&"crm:read ".repeat(200)), Err(ScopeError::TooLong));
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(Scopes::parse_request(&many.join(" ")), Err(ScopeError::TooLong));
        assert_eq!(Scopes::parse_request(&many[..32].join(" ")).unwrap().len(), 32);
    }

    #[test]
    fn serde_is_the_space_delimited_string() {
        let s = Scopes::parse("a b").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"a b\"");
        assert_eq!(serde_json::from_str::<Scopes>("\"a b a\"").unwrap(), s);
        assert!(serde_json::from_str::<Scopes>("\"a\\nb\"").is_err());
    }
}
