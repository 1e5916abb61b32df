//! Secret sources: where the master credentials the broker uses on an agent's behalf come from — an upstream
//! API's key for the credential-injecting proxy, the broker's own database login — so that an agent can use
//! them without ever holding them.
//!
//! [`SecretSource`] is the port: a name in, the value in force out, read lock-free on every use so a rotated
//! credential takes effect with the next request. [`file`] is the implementation behind it for files, the way
//! Kubernetes Secret volumes, Vault Agent, the Secrets Store CSI driver and External Secrets deliver them;
//! other stores (a Vault client, a cloud secret manager) implement the same trait.
//!
//! A value is a [`Credential`]: redacted under `Debug`, no `Display`, wiped when the last holder drops it.
//! Nothing here logs a value or returns one through any API.

pub mod file;

use std::sync::Arc;

use crate::secret::Credential;

/// Where named master credentials come from.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The value of `name` in force now; `None` when no such secret is configured, or it has never been read
    /// successfully (a later failed re-read keeps the last good value).
    fn get(&self, name: &str) -> Option<Arc<Credential>>;
}

/// Why a secret's content is refused: empty, or holding a control character (it could not travel in a
/// header or a connection string unaltered, and a half-written file often looks like that).
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.chars().any(char::is_control) {
        return Err("it holds a control character");
    }
    Ok(())
}

/// A secret file's content as a credential: the trailing line break (or any trailing whitespace) that
/// `kubectl create secret --from-file` and editors leave is not part of it.
pub fn normalise(content: &str) -> &str {
    content.trim_end_matches([' ', '\t', '\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_line_break_is_dropped_and_control_characters_refused() {
        assert_eq!(normalise("sk_test_123\n"), "sk_test_123");
        assert_eq!(normalise("sk_test_123\r\n \n"), "sk_test_123");
        assert!(check_value("sk_test_123").is_ok());
        assert!(check_value("").is_err());
        assert!(check_value("a\nb").is_err());
        assert!(check_value("a\u{0}b").is_err());
    }
}
