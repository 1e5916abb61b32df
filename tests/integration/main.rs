//! The integration suite: one binary, real servers on free ports.

mod bad_input;
mod cli;
mod delegation;
mod docs;
mod exchange;
mod faces;
mod interop;
mod jwks;
mod properties;
mod revocation;
mod store;
mod support;
mod telemetry;
