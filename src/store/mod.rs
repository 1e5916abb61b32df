//! The revocation stores behind the [`crate::revocation::Store`] port: the embedded one for a single process,
//! and Redis (standalone or Cluster, strict or mirrored) shared by every replica.

pub mod memory;
pub mod redis;
pub(crate) mod revocation_log;
