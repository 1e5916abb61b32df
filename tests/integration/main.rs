//! The integration suite: one binary, real servers on free ports.

// Support modules are shared across the suite's modules; `pub` there is for them, not for another crate.
#![allow(unreachable_pub)]

mod approvals;
mod attacks;
mod bad_input;
mod bench;
mod cli;
mod client_auth;
mod database;
mod delegation;
mod docs;
mod dpop;
mod exchange;
mod faces;
mod gateway;
mod interop;
mod introspection_cache;
mod jwks;
mod oauth;
mod policies;
mod properties;
mod proxy;
mod rar;
mod rate_limits;
mod reload;
mod revocation;
mod scenarios;
mod sdk;
mod ssf;
mod status_list;
mod store;
mod support;
mod suspension;
mod telemetry;
mod tls;
mod watch;
