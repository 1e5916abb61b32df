//! tessera: a credential broker for AI agents.
//!
//! An orchestrator hands each agent, tool or sub-agent a credential narrower than its own: fewer scopes, one
//! audience, minutes of life, bound to one task, with the chain of who acts for whom written into it
//! (RFC 8693 token exchange). Downstream APIs verify it offline against the JWKS.
//!
//! # Layout
//!
//! Dependencies point one way: faces → core → ports; the infrastructure behind the ports is wired in one
//! composition root. `scripts/check-layers` (run by CI) checks that core modules reference no face or
//! infrastructure module or crate, and that no modules form an import cycle.
//!
//! **Core** — pure domain logic; operations take `now` and return typed results:
//! - [`exchange`]: the token exchange ([`exchange::Exchange`]) and the issuance invariants, each in one place.
//! - [`introspect`]: RFC 7662 introspection ([`introspect::Introspect`]): signature, time and every
//!   applicable revocation, in one lookup.
//! - [`revocation`]: what can be revoked, the cascade over delegation lineages ([`revocation::Probe`]),
//!   `Revoke` and the kill switch (`Suspend`/`Resume`, in [`revocation::Revoke`]), the
//!   [`revocation::Store`] port, and the revocation watch ([`revocation::watch`]: the ordered log of
//!   revocations a watch stream reads from a cursor).
//! - [`status_list`]: OAuth Token Status Lists: each token's place in a list, the indices a replica holds,
//!   the registrations that let a revocation flip the bits of every token it ends, and the list tokens.
//! - [`ssf`]: OpenID Shared Signals as transmitter: each revocation as a CAEP `session-revoked` SET for each
//!   configured receiver, the transmitter metadata, RFC 8936 polling; [`ssf::push`] (infrastructure) pushes;
//!   and as a receiver ([`ssf::receive`]): SETs from upstream identity providers revoke their principals.
//! - [`issuer`]: trusted upstream issuers and the verification of assertions (and of tessera's own tokens)
//!   into a [`policy::Principal`]; keys come through the [`issuer::KeySource`] port. tessera's own tokens
//!   already verified are kept in a bounded cache per snapshot (`issuer::verified`), so a repeated
//!   introspection skips the signature — never the times, the key's trust or the revocation lookup.
//! - [`token`]: tessera's access tokens (RFC 9068), their claims and lineage, signing keys and the JWK Set
//!   ([`token::jws`], [`token::keys`]).
//! - [`ratelimit`]: the rate limits on `ExchangeToken` per client, principal and task (GCRA), applied by the
//!   store in the exchange's one round trip.
//! - [`dpop`]: DPoP proofs (RFC 9449) — parsed and verified against the request they came with — and the
//!   key thumbprints sender-constrained tokens carry in `cnf`.
//! - [`scopes`]: scope sets (RFC 6749 §3.3), parsed once by one rule wherever they come from.
//! - [`policy`]: the Cedar policy engine, consulted per scope.
//! - [`approval`]: step-up approvals — a grant policy marks `@approval` waits for a human; the
//!   [`approval::Ledger`] port keeps requests and decisions where every replica sees them.
//! - [`access`]: whether a presented token grants what a protected route needs — the one check behind
//!   forward-auth and the credential-injecting proxy.
//! - [`rar`]: RFC 9396 `authorization_details` — their wire form, the catalog's detail types and schemas, and
//!   the one rule by which they narrow.
//! - [`catalog`]: the audiences tokens are issued for, their scopes and maximum lifetimes.
//! - [`client`]: who may call the broker, and how callers authenticate.
//! - [`audit`]: an audit event for every decision, through the [`audit::AuditSink`] port.
//! - [`broker`]: what the operations share, and the one place that hands each its parts; the reloadable parts
//!   (issuers, catalog, policy, clients) are one [`broker::Snapshot`] a request loads once.
//! - [`secrets`]: the [`secrets::SecretSource`] port, where master credentials the broker uses on an agent's
//!   behalf come from (never returned, never logged).
//! - [`vend`]: short-lived database logins bound to a token's life and lineage, and the [`vend::Logins`] port.
//! - [`error`] (each OAuth code knows its gRPC and HTTP status), [`metrics`], [`secret`], [`clock`].
//!
//! **Infrastructure** — behind the ports:
//! - [`store`]: the revocation stores (embedded; Redis strict or mirrored by pub/sub, standalone or Cluster),
//!   each with its revocation log (a ring in memory; a Redis stream).
//! - [`issuer::jwks`]: the JWKS fetcher (files, URLs); [`audit::stream`]: the Redis audit stream;
//!   [`approval::webhook`]: the signed webhook announcing approval requests.
//! - [`secrets::file`]: secrets read from files and re-read by content as they rotate; [`vend::postgres`]:
//!   PostgreSQL login roles and their sweeper.
//! - [`issuer::jwks`]: the JWKS fetcher (files, URLs); [`audit::stream`]: the Redis audit stream.
//! - [`telemetry`]: tracing and OpenTelemetry export (OTLP, Prometheus).
//!
//! **Faces** — thin adapters: [`grpc`] (`tessera.v1.TokenBroker`); [`proxy`]: the credential-injecting
//! proxy on its own listener (tokens checked by [`access`], the upstream's key injected from a
//! [`secrets::SecretSource`]); [`http`]: the plain-OAuth endpoints
//! ([`http::oauth`]: token exchange and jwt-bearer, introspection, revocation, JWKS, RFC 8414 metadata), the
//! gateway's forward-auth and RFC 9728 resource metadata ([`http::gateway`]), the revocation watch as
//! Server-Sent Events ([`http::watch`]), the signed status lists ([`http::status_list`]), metrics and health; [`net`] (how
//! both faces accept connections: `TCP_NODELAY` on each; [`net::tls`]: TLS and mTLS client certificates, with
//! the files re-read as they rotate); the CLI lives in the binary. [`sdk`] is the client side of the gRPC face:
//! the Rust SDK (token cache, backoff and circuit breaker, task scopes, a resource-server verifier), which the
//! CLI's client commands use.
//!
//! **Composition root** — [`serve`]: builds the infrastructure from a validated [`config::Config`], hands
//! it to the core, and serves the gRPC face on a listener the caller binds; [`serve::reload`] swaps in a new
//! snapshot on SIGHUP and when the config on disk changes. [`config`] reads and validates the configuration;
//! [`dev`] is the dev-mode setup.
//!
//! **Other binaries** — `src/bin/tessera-bench/`: the load generator and benchmarks of `docs/benchmarks.md`
//! (a separate process driving the faces over the network; `scripts/bench` runs it).

pub mod access;
pub mod approval;
pub mod audit;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod config;
pub mod dev;
pub mod dpop;
pub mod error;
pub mod exchange;
pub mod grpc;
pub mod http;
pub mod introspect;
pub mod issuer;
pub mod load;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod rar;
pub mod ratelimit;
pub mod revocation;
pub mod scopes;
pub mod sdk;
pub mod secret;
pub mod secrets;
pub mod serve;
pub mod ssf;
pub mod status_list;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod vend;

pub use broker::Broker;
pub use error::{Error, ErrorCode};

/// Cases per property test: `default` (bounded, for CI), or `TESSERA_FUZZ_CASES` for a longer fuzzing run
/// (`TESSERA_FUZZ_CASES=100000 cargo test --lib -- never_panics`).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    proptest::test_runner::Config { cases, ..proptest::test_runner::Config::default() }
}

/// Installs aws-lc-rs as the process's rustls crypto provider, once; a second call is a no-op. Without it a
/// build that links two providers panics at its first TLS handshake.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
