//! Logins in PostgreSQL: `CREATE ROLE … LOGIN PASSWORD … VALID UNTIL <token exp> IN ROLE <granted roles>`,
//! and a sweeper that drops them — `NOLOGIN` first, then `pg_terminate_backend` for each open connection, then
//! `DROP ROLE` (a role that came to own objects stays, without login, and is tried again) — once their token is no longer active (revoked itself, its task, or an
//! ancestor: the same introspection as everywhere) or has expired. The broker logs in as its own role, whose
//! password comes from a [`SecretSource`] on every connection (so a rotated password is used at once).
//!
//! The broker remembers which token each login belongs to in memory. A role it no longer knows — the broker
//! restarted, or another replica made it and stopped — cannot be checked against revocation: its `VALID
//! UNTIL` still ends new logins at the token's expiry, and every sweep drops expired roles with the prefix,
//! whoever made them, closing their connections.
//!
//! The password is sent as its SCRAM-SHA-256 verifier (what `psql`'s `\password` sends), so no statement
//! text — in a debug log or the server's statement log — holds it.
//!
//! Every identifier is quoted ([`super::quote_ident`]), every literal too ([`super::quote_literal`]); role
//! names are a digest of the token's `jti`, and member roles come from the validated config, never from a
//! request.

use std::sync::Arc;
use std::time::Duration;

use super::{Login, LoginSpec, Logins, Plan, VendError, VendFuture, quote_ident, quote_literal};
use crate::broker::Broker;
use crate::secrets::SecretSource;

/// How to reach one database as the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// The broker's own role (needs `CREATEROLE` and membership in `pg_signal_backend`).
    pub user: String,
    /// The `[[secrets]]` entry holding its password.
    pub password_secret: String,
}

/// Logins in one PostgreSQL database.
pub struct PostgresLogins {
    spec: LoginSpec,
    connection: Connection,
    secrets: Arc<dyn SecretSource>,
}

impl std::fmt::Debug for PostgresLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLogins").field("spec", &self.spec).field("connection", &self.connection).finish()
    }
}

/// An error from the database, reduced to its SQLSTATE (never its text, which can quote a statement).
fn reduce(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => format!("database error {}", code.code()),
        None => "database unreachable".to_string(),
    }
}

impl PostgresLogins {
    /// Logins for `spec` in the database at `connection`, the broker's password from `secrets`.
    pub fn new(spec: LoginSpec, connection: Connection, secrets: Arc<dyn SecretSource>) -> PostgresLogins {
        PostgresLogins { spec, connection, secrets }
    }

    /// A connection as the broker.
    async fn connect(&self) -> Result<tokio_postgres::Client, VendError> {
        let password = self
            .secrets
            .get(&self.connection.password_secret)
            .ok_or_else(|| VendError::Unavailable("the database password is unavailable".into()))?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.connection.host)
            .port(self.connection.port)
            .dbname(&self.connection.dbname)
            .user(&self.connection.user)
            .password(password.expose())
            .application_name("tessera")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) =
            config.connect(tokio_postgres::NoTls).await.map_err(|e| VendError::Unavailable(reduce(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Takes `role`'s login away, closes its connections and drops it.
    async fn drop_role(client: &tokio_postgres::Client, role: &str) -> Result<(), String> {
        let quoted = quote_ident(role);
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(|e| reduce(&e))?
            .is_some();
        if exists {
            client.batch_execute(&format!("ALTER ROLE {quoted} NOLOGIN")).await.map_err(|e| reduce(&e))?;
        }
        client
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&role])
            .await
            .map_err(|e| reduce(&e))?;
        if exists {
            client.batch_execute(&format!("DROP ROLE IF EXISTS {quoted}")).await.map_err(|e| reduce(&e))?;
        }
        Ok(())
    }

    /// The logins ledger, in the database itself: which role lives by which token's claims. Every replica's
    /// sweeper reads it, so a revocation ends a login whichever replica vended it, and after a restart. Its
    /// schema is the broker user's alone (the claims are identifiers, but not every database user's business).
    /// Created on first use; a concurrent creation by another replica is not an error.
    async fn ensure_ledger(client: &tokio_postgres::Client) -> Result<(), String> {
        use tokio_postgres::error::SqlState;
        let statements = [
            "CREATE SCHEMA IF NOT EXISTS tessera_vend",
            "REVOKE ALL ON SCHEMA tessera_vend FROM PUBLIC",
            "CREATE TABLE IF NOT EXISTS tessera_vend.logins \
             (role text PRIMARY KEY, claims text NOT NULL, valid_until bigint NOT NULL)",
        ];
        for statement in statements {
            match client.batch_execute(statement).await {
                Ok(()) => {}
                Err(e)
                    if [&SqlState::DUPLICATE_SCHEMA, &SqlState::DUPLICATE_TABLE, &SqlState::UNIQUE_VIOLATION]
                        .iter()
                        .any(|c| e.code() == Some(*c)) => {}
                Err(e) => return Err(reduce(&e)),
            }
        }
        Ok(())
    }

    /// Whether a revocation in the broker's store has ended the token with `claims` (the same lookup
    /// Introspect makes: the token, its ancestors, task, subject, actors and client).
    async fn revoked(broker: &Broker, claims: &str, now: u64) -> Result<bool, String> {
        let claims: crate::token::AccessClaims =
            serde_json::from_str(claims).map_err(|e| format!("a login's claims do not parse: {e}"))?;
        let mut probe = crate::revocation::Probe::default();
        probe.token(&claims);
        let found = broker.store().lookup(probe.keys(), now).await.map_err(|e| e.0)?;
        Ok(probe.revoked(&found))
    }

    /// One sweep as of `now`: drops every login of the ledger whose token a revocation has ended (in the
    /// broker's store) or that has expired, and every expired login with the prefix. Returns the roles
    /// dropped. A login whose check fails (the store unavailable) is checked again next sweep.
    pub async fn sweep(&self, broker: &Broker, now: u64) -> Result<Vec<String>, String> {
        let client = self.connect().await.map_err(|e| format!("{e:?}"))?;
        Self::ensure_ledger(&client).await?;
        let rows = client
            .query(
                "SELECT role, claims, valid_until FROM tessera_vend.logins WHERE starts_with(role, $1)",
                &[&self.spec.role_prefix],
            )
            .await
            .map_err(|e| reduce(&e))?;
        let mut doomed = Vec::new();
        for row in rows {
            let (role, claims, valid_until): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            let gone = u64::try_from(valid_until).unwrap_or(0) <= now
                || match Self::revoked(broker, &claims, now).await {
                    Ok(revoked) => revoked,
                    Err(problem) => {
                        tracing::warn!(role = %role, problem = %problem, "database login not checked; retried next sweep");
                        false
                    }
                };
            if gone {
                doomed.push(role);
            }
        }
        let expired = client
            .query(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) AND rolvaliduntil IS NOT NULL \
                 AND rolvaliduntil <= now()",
                &[&self.spec.role_prefix],
            )
            .await
            .map_err(|e| reduce(&e))?;
        for row in expired {
            let role: String = row.get(0);
            if !doomed.contains(&role) {
                doomed.push(role);
            }
        }
        let mut dropped = Vec::new();
        for role in doomed {
            let forgotten = async {
                Self::drop_role(&client, &role).await?;
                client
                    .execute("DELETE FROM tessera_vend.logins WHERE role = $1", &[&role])
                    .await
                    .map_err(|e| reduce(&e))
            };
            match forgotten.await {
                Ok(_) => {
                    tracing::info!(role = %role, database = %self.spec.audience, "database login dropped");
                    dropped.push(role);
                }
                Err(e) => tracing::warn!(role = %role, problem = %e, "database login not dropped; retried next sweep"),
            }
        }
        Ok(dropped)
    }

    /// Sweeps every `interval` until aborted.
    pub fn spawn_sweeper(self: &Arc<Self>, broker: Arc<Broker>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let logins = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(problem) = logins.sweep(&broker, crate::clock::now()).await {
                    tracing::warn!(database = %logins.spec.audience, problem = %problem, "database sweep failed");
                }
            }
        })
    }
}

impl Logins for PostgresLogins {
    fn spec(&self) -> &LoginSpec {
        &self.spec
    }

    fn create<'a>(&'a self, plan: &'a Plan) -> VendFuture<'a, Login> {
        Box::pin(async move {
            let password = super::new_password()?;
            let client = self.connect().await?;
            Self::ensure_ledger(&client).await.map_err(VendError::Unavailable)?;
            // The expiry as PostgreSQL spells a timestamp, from the number (a parameter, not text).
            let row = client
                .query_one("SELECT to_timestamp($1::float8)::text", &[&(plan.valid_until as f64)])
                .await
                .map_err(|e| VendError::Unavailable(reduce(&e)))?;
            let valid_until: String = row.get(0);
            let member_of: Vec<String> = plan.member_of.iter().map(|r| quote_ident(r)).collect();
            let create = zeroize::Zeroizing::new(format!(
                "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {} IN ROLE {}",
                quote_ident(&plan.role),
                // The SCRAM-SHA-256 verifier, never the password: the statement's text can reach a debug log
                // (the client library logs what it runs) and the server's statement log.
                quote_literal(&zeroize::Zeroizing::new(postgres_protocol::password::scram_sha_256(
                    password.expose().as_bytes()
                ))),
                quote_literal(&valid_until),
                member_of.join(", "),
            ));
            match client.batch_execute(&create).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                    return Err(VendError::AlreadyVended);
                }
                Err(e) => return Err(VendError::Unavailable(reduce(&e))),
            }
            let comment = format!("tessera login: jti={} task={} exp={}", plan.jti, plan.task_id, plan.valid_until);
            let _ = client
                .batch_execute(&format!("COMMENT ON ROLE {} IS {}", quote_ident(&plan.role), quote_literal(&comment)))
                .await;
            // Recorded for every replica's sweeper; a login it cannot record is dropped again at once, so none
            // outlives a revocation unseen.
            let valid_until = i64::try_from(plan.valid_until).unwrap_or(i64::MAX);
            let recorded = client
                .execute(
                    "INSERT INTO tessera_vend.logins (role, claims, valid_until) VALUES ($1, $2, $3)",
                    &[&plan.role, &plan.claims, &valid_until],
                )
                .await;
            if let Err(e) = recorded {
                let _ = Self::drop_role(&client, &plan.role).await;
                return Err(VendError::Unavailable(reduce(&e)));
            }
            Ok(Login {
                username: plan.role.clone(),
                password,
                roles: plan.member_of.clone(),
                valid_until: plan.valid_until,
                host: self.connection.host.clone(),
                port: self.connection.port,
                dbname: self.connection.dbname.clone(),
            })
        })
    }
}
