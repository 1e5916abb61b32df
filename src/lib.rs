//! tessera: a credential broker for AI agents.
//!
//! An orchestrator hands each agent, tool or sub-agent a credential narrower than its own: fewer scopes, one
//! audience, minutes of life, bound to one task, with the chain of who acts for whom written into it
//! (RFC 8693 token exchange). Downstream APIs verify it offline against the JWKS.
//!
//! # Layout
//!
//! - [`exchange`]: the token exchange and the issuance invariants, each enforced in one place.
//! - [`introspect`]: RFC 7662 introspection: signature, time and every applicable revocation, one lookup.
//! - [`revocation`]: revocation targets, the cascade over delegation trees, and the stores (in-memory, Redis
//!   strict or mirrored by pub/sub).
//! - [`issuer`]: trusted upstream issuers, their JWKS, and verification of assertions (and of tessera's own
//!   tokens) into a [`policy::Principal`].
//! - [`token`]: tessera's access tokens (RFC 9068), their claims, signing keys and the JWK Set
//!   ([`token::jws`], [`token::keys`]).
//! - [`policy`]: the Cedar policy engine, consulted per scope.
//! - [`scopes`]: scope sets (RFC 6749 §3.3), parsed once by one rule wherever they come from.
//! - [`catalog`]: the audiences tokens are issued for, their scopes and maximum lifetimes.
//! - [`client`]: who may call the broker, and how callers authenticate.
//! - [`audit`]: an audit event for every decision.
//! - [`metrics`], [`telemetry`]: OpenTelemetry instruments, traces and logs; OTLP export and Prometheus.
//! - [`broker`]: the state the RPCs share, built from a validated [`config::Config`].
//! - [`grpc`]: the `tessera.v1.TokenBroker` adapter and the OAuth-error → gRPC-status mapping.
//! - [`server`]: the gRPC server (health, reflection, limits) over a listener the caller binds.
//! - [`http`]: the plain HTTP face: Prometheus metrics and health.
//! - [`net`]: how both faces accept connections (`TCP_NODELAY` on each).
//! - [`config`], [`dev`], [`telemetry`], [`secret`], [`error`]: configuration, the dev setup, logging,
//!   redacted secrets and the error type.

pub mod audit;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod config;
pub mod dev;
pub mod error;
pub mod exchange;
pub mod grpc;
pub mod http;
pub mod introspect;
pub mod issuer;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod revocation;
pub mod scopes;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod token;

pub use broker::Broker;
pub use error::{Error, ErrorCode};

/// Installs aws-lc-rs as the process's rustls crypto provider, once; a second call is a no-op. Without it a
/// build that links two providers panics at its first TLS handshake.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
