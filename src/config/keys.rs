//! `[signing]` and `[policy]`: the broker's signing keys and its Cedar policy, loaded (and validated) here so
//! that `tessera config check` proves a config will start.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Context, Problems};
use crate::policy::{DEFAULT_POLICY, Policy};
use crate::token::keys::SigningKey;

/// `[signing]` as read; see docs/config.md `[signing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningBuilder {
    /// PKCS#8 PEM private keys (Ed25519 or P-256), at least one: the first signs, all are published.
    pub keys: Vec<PathBuf>,
}

/// `[policy]` as read; see docs/config.md `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyBuilder {
    /// The Cedar policy file; absent: the built-in default policy.
    pub file: Option<PathBuf>,
}

impl SigningBuilder {
    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> Vec<SigningKey> {
        if self.keys.is_empty() {
            problems.push("signing.keys: at least one PKCS#8 PEM key file is required (`tessera keygen`)".into());
        }
        let mut keys = Vec::new();
        for (i, file) in self.keys.iter().enumerate() {
            let file = cx.path(file);
            match std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|pem| SigningKey::from_pem(&pem)) {
                Ok(key) => keys.push(key),
                Err(e) => problems.push(format!("signing.keys[{i}] ({}): {e}", file.display())),
            }
        }
        keys
    }
}

impl PolicyBuilder {
    /// The policy file's, or the default policy; `None` when it does not load or validate.
    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> Option<Policy> {
        let source = match &self.file {
            None => Some(DEFAULT_POLICY.to_string()),
            Some(file) => std::fs::read_to_string(cx.path(file))
                .map_err(|e| problems.push(format!("policy.file ({}): {e}", cx.path(file).display())))
                .ok(),
        };
        source.and_then(|src| {
            // Policy's own messages name the policy (`policy \`id\`: …`); this says which setting it came from.
            let from = self.file.as_ref().map_or("policy (the built-in default)".to_string(), |f| {
                format!("policy.file ({})", cx.path(f).display())
            });
            Policy::new(&src).map_err(|errors| problems.extend(errors.into_iter().map(|e| format!("{from}: {e}")))).ok()
        })
    }
}
