//! Telemetry: logs (human text or JSON lines), OpenTelemetry traces and metrics exported over OTLP/gRPC,
//! and a Prometheus registry for clusters that scrape.
//!
//! The log level filter sits on the log layer only, so the spans exported to OTLP are not filtered by it
//! (a global `warn` filter would silently drop the INFO spans that should be exported). Log lines are events
//! only, with no span context: an audit line carries every field it needs, as it does on the HTTP face, and a
//! span no layer takes costs nothing when OTLP is off. The OTLP endpoint
//! comes from the config or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; the resource from the config and
//! the standard `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// What [`init`] set up; [`Telemetry::shutdown`] flushes what is still buffered.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: SdkMeterProvider,
    /// Served as Prometheus text at `GET /metrics` on the HTTP port.
    pub registry: Option<prometheus::Registry>,
    /// The log writer's thread: dropping this writes out every line still queued (see [`log_writer`]).
    _log_writer: tracing_appender::non_blocking::WorkerGuard,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp_traces", &self.tracer_provider.is_some())
            .field("prometheus", &self.registry.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Flushes and stops the exporters, at exit: spans and metrics still buffered are sent, not lost; then
    /// the log lines still queued are written.
    pub fn shutdown(self) {
        if let Some(t) = &self.tracer_provider {
            let _ = t.shutdown();
        }
        let _ = self.meter_provider.shutdown();
    }
}

/// Lines queued for the log writer before a logging thread waits for it.
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Log lines (audit events among them) are formatted on the thread that logs them and written by one thread
/// of their own, which takes every line queued, writes them through one buffer and flushes once the queue is
/// empty: a request never waits on a `write(2)` to stderr, and a burst of lines is one write. Not lossy: a
/// full queue makes the logging thread wait rather than drop an audit line. The guard flushes what is queued
/// when it is dropped — at exit, also after an error or a panic that unwinds; only a process killed outright
/// loses the lines of its last moment.
fn log_writer() -> (tracing_appender::non_blocking::NonBlocking, tracing_appender::non_blocking::WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("tessera-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()))
}

/// The OTLP endpoint to export to: the config's, else `OTEL_EXPORTER_OTLP_ENDPOINT`, else none.
pub fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    config.otlp_endpoint.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()))
}

/// The CA certificates (PEM) to trust for the OTLP endpoint: the config's `otlp_ca_file`, else the standard
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`; with neither, the system's roots.
fn otlp_tls(config: &TelemetryConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let file = config.otlp_ca_file.clone().or_else(|| {
        std::env::var_os("OTEL_EXPORTER_OTLP_CERTIFICATE").filter(|v| !v.is_empty()).map(std::path::PathBuf::from)
    });
    let Some(file) = file else { return Ok(None) };
    let pem = std::fs::read(&file).map_err(|e| format!("OTLP CA certificate {}: {e}", file.display()))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .with_native_roots();
    Ok(Some(tls))
}

/// The resource every span and metric carries: service name, version and a per-process instance id.
pub fn resource(config: &TelemetryConfig) -> Resource {
    let mut id = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut id);
    let instance = hex::encode(id);
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ]);
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(config.service_name.clone());
    }
    builder.build()
}

/// Builds the meter provider: a Prometheus reader (when enabled) and a periodic OTLP exporter (when an
/// endpoint is set). Needs a Tokio runtime when exporting over OTLP.
pub fn meter_provider(
    config: &TelemetryConfig,
    resource: Resource,
) -> Result<(SdkMeterProvider, Option<prometheus::Registry>), String> {
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    let registry = if config.prometheus {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| format!("prometheus exporter: {e}"))?;
        builder = builder.with_reader(exporter);
        Some(registry)
    } else {
        None
    };
    if let Some(endpoint) = otlp_endpoint(config) {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5));
        if let Some(tls) = otlp_tls(config)? {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build().map_err(|e| format!("OTLP metric exporter: {e}"))?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
            .with_interval(config.metrics_interval)
            .build();
        builder = builder.with_reader(reader);
    }
    Ok((builder.build(), registry))
}

/// Builds the tracer provider exporting to OTLP, when an endpoint is set.
pub fn tracer_provider(config: &TelemetryConfig, resource: Resource) -> Result<Option<SdkTracerProvider>, String> {
    let Some(endpoint) = otlp_endpoint(config) else { return Ok(None) };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5));
    if let Some(tls) = otlp_tls(config)? {
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter.build().map_err(|e| format!("OTLP span exporter: {e}"))?;
    Ok(Some(SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build()))
}

/// Sets up logging, traces and metrics for the process. Call once, inside the Tokio runtime.
pub fn init(log: &LogConfig, config: &TelemetryConfig) -> Result<Telemetry, String> {
    let resource = resource(config);
    let tracer_provider = tracer_provider(config, resource.clone())?;
    let (meter_provider, registry) = meter_provider(config, resource)?;
    opentelemetry::global::set_meter_provider(meter_provider.clone());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, log_writer) = log_writer();
    let fmt = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(writer).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
    };
    // Spans of the broker itself go to OTLP whatever the log level; other crates' spans do not.
    let otel = tracer_provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer("tessera")).with_filter(EnvFilter::new("tessera=info"))
    });
    // Events only: building and formatting every request's spans for the log layer (their fields kept as text
    // per span) was about 6% of a strict exchange's server samples, and prefixed each gRPC audit line with 170
    // bytes of `rpc{…}` the line already says (docs/benchmarks.md). The hint keeps the level filter's own:
    // without one, `and` would take none, and every `trace!` of every crate would be checked at run time.
    let events = tracing_subscriber::filter::filter_fn(|meta| meta.is_event())
        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::TRACE);
    // A list rather than an `Option`: an absent layer in an `Option` still declares an interest in every span,
    // so the registry would keep building spans nobody takes.
    let mut layers = vec![fmt.with_filter(filter.and(events)).boxed()];
    layers.extend(otel.map(Layer::boxed));
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(p) = &tracer_provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { tracer_provider, meter_provider, registry, _log_writer: log_writer })
}
