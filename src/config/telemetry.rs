//! `[telemetry]`: OpenTelemetry export (OTLP) and the Prometheus endpoint.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Context, Problems, is_https_like};

/// The `service.name` spans and metrics carry, by default.
pub const DEFAULT_SERVICE_NAME: &str = "tessera";
/// How often metrics are exported over OTLP, by default.
pub const DEFAULT_METRICS_INTERVAL_MS: u64 = 10_000;
/// The shortest export interval accepted.
const MIN_METRICS_INTERVAL_MS: u64 = 100;

/// `[telemetry]` as read; see docs/config.md `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryBuilder {
    /// OTLP/gRPC endpoint (`http://collector:4317`); else `OTEL_EXPORTER_OTLP_ENDPOINT`; else no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute (default `"tessera"`); `OTEL_SERVICE_NAME` replaces it.
    pub service_name: Option<String>,
    /// How often metrics are pushed over OTLP, in milliseconds (default 10000, at least 100).
    pub metrics_interval_ms: Option<u64>,
    /// Serve Prometheus text at `GET /metrics` on the HTTP port (default true).
    pub prometheus: Option<bool>,
    /// CA certificates (PEM) trusted for an `https://` OTLP endpoint; else `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub otlp_ca_file: Option<PathBuf>,
}

/// The validated `[telemetry]` section; the `OTEL_*` environment fallbacks are applied when telemetry starts.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector; `None`: `OTEL_EXPORTER_OTLP_ENDPOINT`, else no export.
    pub otlp_endpoint: Option<String>,
    /// Extra CA certificates (PEM) for an `https://` endpoint, path resolved; `None`:
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, else the system's roots.
    pub otlp_ca_file: Option<PathBuf>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How often metrics are pushed over OTLP.
    pub metrics_interval: Duration,
    /// Whether `GET /metrics` serves Prometheus text (else 404).
    pub prometheus: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: DEFAULT_SERVICE_NAME.into(),
            metrics_interval: Duration::from_millis(DEFAULT_METRICS_INTERVAL_MS),
            prometheus: true,
        }
    }
}

impl TelemetryBuilder {
    pub(super) fn build(self, cx: &Context<'_>, problems: &mut Problems) -> TelemetryConfig {
        let otlp_ca_file = self.otlp_ca_file.map(|f| cx.path(&f));
        if let Some(file) = &otlp_ca_file
            && !std::fs::read(file).is_ok_and(|pem| pem.starts_with(b"-----BEGIN"))
        {
            problems.push(format!("telemetry.otlp_ca_file ({}): not a readable PEM file", file.display()));
        }
        let telemetry = TelemetryConfig {
            otlp_endpoint: self.otlp_endpoint,
            otlp_ca_file,
            service_name: self.service_name.unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            metrics_interval: Duration::from_millis(self.metrics_interval_ms.unwrap_or(DEFAULT_METRICS_INTERVAL_MS)),
            prometheus: self.prometheus.unwrap_or(true),
        };
        if telemetry.otlp_endpoint.as_deref().is_some_and(|e| !is_https_like(e)) {
            problems.push("telemetry.otlp_endpoint: must be an http(s) URL".into());
        }
        if telemetry.metrics_interval < Duration::from_millis(MIN_METRICS_INTERVAL_MS) {
            problems.push(format!("telemetry.metrics_interval_ms: at least {MIN_METRICS_INTERVAL_MS}"));
        }
        telemetry
    }
}
