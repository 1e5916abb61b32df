//! `[[databases]]`: catalogued database audiences for which the broker creates a short-lived PostgreSQL login
//! per token ([`crate::vend`]): how to reach the database as the broker, and which database roles each scope
//! grants.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use crate::catalog::Audience;
use crate::vend::LoginSpec;
use crate::vend::postgres::Connection;

/// The prefix of login roles, by default.
pub const DEFAULT_ROLE_PREFIX: &str = "tessera_";
/// How often logins are checked against revocation and expiry, by default (milliseconds).
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 1_000;

/// One `[[databases]]` entry as read; see docs/config.md and docs/database.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseBuilder {
    /// The catalogued audience whose tokens get logins.
    pub audience: String,
    /// Host (default `127.0.0.1`).
    pub host: Option<String>,
    /// Port (default 5432).
    pub port: Option<u16>,
    /// Database name (default `postgres`).
    pub dbname: Option<String>,
    /// The broker's own role.
    pub user: String,
    /// The `[[secrets]]` entry holding the broker's password.
    pub password_secret: String,
    /// Prefix of the login roles (default [`DEFAULT_ROLE_PREFIX`]).
    pub role_prefix: Option<String>,
    /// Milliseconds between sweeps (default [`DEFAULT_SWEEP_INTERVAL_MS`]).
    pub sweep_interval_ms: Option<u64>,
    /// Scope → database roles a login holds when its token was granted the scope.
    pub grants: BTreeMap<String, Vec<String>>,
}

/// One validated database.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// The audience, grants and role prefix.
    pub spec: LoginSpec,
    /// How the broker connects.
    pub connection: Connection,
    /// How often logins are swept.
    pub sweep_interval: Duration,
}

pub(super) fn build(
    builders: Vec<DatabaseBuilder>,
    audiences: &[Audience],
    problems: &mut Problems,
) -> Vec<DatabaseConfig> {
    let mut out: Vec<DatabaseConfig> = Vec::new();
    for (i, d) in builders.into_iter().enumerate() {
        let at = format!("databases[{i}] ({})", d.audience);
        match audiences.iter().find(|a| a.id == d.audience) {
            None => problems.push(format!("{at}: `audience` is not in the catalog")),
            Some(audience) => {
                for scope in d.grants.keys().filter(|s| !audience.scopes.contains(s)) {
                    problems.push(format!("{at}: grants: scope `{scope}` is not offered by the audience"));
                }
            }
        }
        if out.iter().any(|o| o.spec.audience == d.audience) {
            problems.push(format!("{at}: duplicate `audience`"));
        }
        if d.grants.is_empty() {
            problems.push(format!("{at}: `grants` must map at least one scope to database roles"));
        }
        for (scope, roles) in &d.grants {
            if roles.is_empty() || roles.iter().any(|r| !crate::vend::is_plain_identifier(r)) {
                problems.push(format!(
                    "{at}: grants.{scope}: roles are lower-case SQL identifiers (letters, digits, `_`), at least one"
                ));
            }
        }
        let role_prefix = d.role_prefix.unwrap_or_else(|| DEFAULT_ROLE_PREFIX.into());
        if !crate::vend::is_plain_identifier(&role_prefix) || role_prefix.len() > 30 {
            problems.push(format!("{at}: `role_prefix` is a lower-case SQL identifier of at most 30 characters"));
        }
        if d.grants.values().flatten().any(|r| r.starts_with(&role_prefix)) {
            problems.push(format!("{at}: a granted role starts with `role_prefix` (the sweeper would drop it)"));
        }
        if d.user.is_empty() || d.password_secret.is_empty() {
            problems.push(format!("{at}: needs `user` and `password_secret` (the broker's own login)"));
        }
        let sweep = d.sweep_interval_ms.unwrap_or(DEFAULT_SWEEP_INTERVAL_MS);
        if sweep == 0 || d.port == Some(0) {
            problems.push(format!("{at}: `sweep_interval_ms` and `port` must be at least 1"));
        }
        out.push(DatabaseConfig {
            spec: LoginSpec { audience: d.audience, grants: d.grants, role_prefix },
            connection: Connection {
                host: d.host.unwrap_or_else(|| "127.0.0.1".into()),
                port: d.port.unwrap_or(5432),
                dbname: d.dbname.unwrap_or_else(|| "postgres".into()),
                user: d.user,
                password_secret: d.password_secret,
            },
            sweep_interval: Duration::from_millis(sweep.max(1)),
        });
    }
    out
}
