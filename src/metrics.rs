//! The broker's metrics, as OpenTelemetry instruments: exported over OTLP and served as Prometheus text.
//!
//! Labels are bounded by construction: outcomes, OAuth error codes, RPC names, status codes, revocation
//! kinds, store operations and configured issuer names — never a subject, a task or a token id.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// The broker's instruments; cloning shares them (each is a handle).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `tessera.exchanges` {outcome = granted|denied, error = OAuth code or ""}
    pub exchanges: Counter<u64>,
    /// `tessera.exchanges.throttled` {dimension = client|principal|task}: exchanges refused by a rate limit,
    /// by the limit that tripped (they are also `tessera.exchanges` denied with `rate_limited`).
    pub exchanges_throttled: Counter<u64>,
    /// `tessera.introspections` {result = active|inactive|error}
    pub introspections: Counter<u64>,
    /// `tessera.revocations` {kind = jti|task|subject|client, outcome = revoked|denied|error}
    pub revocations: Counter<u64>,
    /// `tessera.rpc.duration` (s) {rpc.method, rpc.grpc.status_code}
    pub rpc_duration: Histogram<f64>,
    /// `tessera.store.duration` (s) {op = lookup|revoke}
    pub store_duration: Histogram<f64>,
    /// `tessera.store.errors` {op}
    pub store_errors: Counter<u64>,
    /// `tessera.jwks.refreshes` {issuer, result = ok|error}
    pub jwks_refreshes: Counter<u64>,
    /// `tessera.revocation.propagation_lag` (ms): publish-to-apply delay seen by a mirror.
    pub mirror_lag: Histogram<u64>,
    /// `tessera.audit.dropped`: audit events not appended to the Redis stream (queue full or write failed).
    pub audit_dropped: Counter<u64>,
    /// `tessera.config.reloads` {outcome = ok|failed}: configuration reloads (SIGHUP or a change on disk); a
    /// failed one left the configuration in force as it was.
    pub config_reloads: Counter<u64>,
    /// `tessera.config.loaded` (s): Unix time the configuration in force was loaded (at start or by the
    /// last successful reload), so a replica left behind shows.
    pub config_loaded: Gauge<u64>,
    /// `tessera.approvals` {step = requested|approved|denied|used}: step-up approvals by step.
    pub approvals: Counter<u64>,
    /// `tessera.approvals.webhook` {outcome = delivered|failed}: approval announcements to the webhook.
    pub approval_webhooks: Counter<u64>,
}

impl Metrics {
    /// Creates every instrument on `meter` (tests pass their own, to read what is recorded).
    pub fn new(meter: &Meter) -> Metrics {
        // Latency buckets from 100 µs to 5 s: the hot paths live in the first few.
        let seconds = vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
        Metrics {
            exchanges: meter.u64_counter("tessera.exchanges").with_description("Token exchanges by outcome").build(),
            exchanges_throttled: meter
                .u64_counter("tessera.exchanges.throttled")
                .with_description("Token exchanges refused by a rate limit, by the limit that tripped")
                .build(),
            introspections: meter
                .u64_counter("tessera.introspections")
                .with_description("Introspections by result")
                .build(),
            revocations: meter
                .u64_counter("tessera.revocations")
                .with_description("Revocations by target kind")
                .build(),
            rpc_duration: meter
                .f64_histogram("tessera.rpc.duration")
                .with_unit("s")
                .with_description("RPC latency")
                .with_boundaries(seconds.clone())
                .build(),
            store_duration: meter
                .f64_histogram("tessera.store.duration")
                .with_unit("s")
                .with_description("Revocation store latency")
                .with_boundaries(seconds)
                .build(),
            store_errors: meter
                .u64_counter("tessera.store.errors")
                .with_description("Revocation store failures")
                .build(),
            jwks_refreshes: meter
                .u64_counter("tessera.jwks.refreshes")
                .with_description("Upstream JWKS reloads")
                .build(),
            mirror_lag: meter
                .u64_histogram("tessera.revocation.propagation_lag")
                .with_unit("ms")
                .with_description("Publish-to-apply delay of revocations seen by this replica's mirror")
                .with_boundaries(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0])
                .build(),
            audit_dropped: meter
                .u64_counter("tessera.audit.dropped")
                .with_description("Audit events not appended to the Redis stream (queue full)")
                .build(),
            config_reloads: meter
                .u64_counter("tessera.config.reloads")
                .with_description("Configuration reloads by outcome; a failed one kept the configuration in force")
                .build(),
            config_loaded: meter
                .u64_gauge("tessera.config.loaded")
                .with_unit("s")
                .with_description("Unix time the configuration in force was loaded (start or last reload)")
                .build(),
            approvals: meter
                .u64_counter("tessera.approvals")
                .with_description("Step-up approvals by step (requested, approved, denied, used)")
                .build(),
            approval_webhooks: meter
                .u64_counter("tessera.approvals.webhook")
                .with_description("Approval announcements to the webhook by outcome (after retries)")
                .build(),
        }
    }

    /// Instruments from the global meter provider (set by [`crate::telemetry::init`]; a no-op until then).
    pub fn global() -> Metrics {
        Metrics::new(&opentelemetry::global::meter("tessera"))
    }

    /// One store operation: its duration, and an error when it failed.
    pub fn store_op(&self, op: &'static str, start: std::time::Instant, failed: bool) {
        let attrs = [KeyValue::new("op", op)];
        self.store_duration.record(start.elapsed().as_secs_f64(), &attrs);
        if failed {
            self.store_errors.add(1, &attrs);
        }
    }

    /// One exchange refused by the rate limit of `dimension` (`client`, `principal` or `task`).
    pub fn throttled(&self, dimension: &'static str) {
        self.exchanges_throttled.add(1, &[KeyValue::new("dimension", dimension)]);
    }

    /// One step of a step-up approval.
    pub fn approval(&self, step: &'static str) {
        self.approvals.add(1, &[KeyValue::new("step", step)]);
    }

    /// One configuration reload: whether it took (then the configuration in force was loaded at `now`, Unix
    /// seconds) or was refused.
    pub fn config_reload(&self, ok: bool, now: u64) {
        self.config_reloads.add(1, &[KeyValue::new("outcome", if ok { "ok" } else { "failed" })]);
        if ok {
            self.config_loaded.record(now, &[]);
        }
    }

    /// One token exchange: granted, or denied with its OAuth error code.
    pub fn exchange(&self, error: Option<&'static str>) {
        let attrs = match error {
            None => [KeyValue::new("outcome", "granted"), KeyValue::new("error", "")],
            Some(code) => [KeyValue::new("outcome", "denied"), KeyValue::new("error", code)],
        };
        self.exchanges.add(1, &attrs);
    }
}
