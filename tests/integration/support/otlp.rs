//! An in-process OpenTelemetry collector: a tonic gRPC server on a free loopback port implementing the OTLP
//! `TraceService` and `MetricsService`, which records every span and metric point it receives. The broker's
//! real OTLP exporter (opentelemetry-otlp over tonic) sends to it, so the tests check what an operator's
//! collector would actually see — span names, parentage, attributes, metric names and values — rather than
//! what the SDK was asked to record.
//!
//! Metrics arrive as the exporter sends them: cumulative values, re-sent on every export. [`Collector::points`]
//! returns every point ever received for a metric, so a counter incremented once appears in each later export
//! too; tests look for the maximum or for any point that matches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// A span as the collector received it.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub name: String,
    /// Lowercase hex, 32 characters.
    pub trace_id: String,
    /// Lowercase hex, 16 characters.
    pub span_id: String,
    /// Lowercase hex; empty for a root span.
    pub parent_span_id: String,
    /// The OTLP `SpanKind` number (1 = INTERNAL, 2 = SERVER, 3 = CLIENT).
    pub kind: i32,
    pub attributes: BTreeMap<String, AttrValue>,
}

/// An attribute value. Arrays, key-value lists and bytes are rendered as text in `Other`.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Other(String),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// One data point of a metric, as the collector received it.
#[derive(Clone, Debug)]
pub struct PointRecord {
    pub attributes: BTreeMap<String, AttrValue>,
    /// Sum/gauge value as f64; for histograms (and summaries), the sum.
    pub value: f64,
    /// Histograms (and summaries): the count; sums/gauges: 0.
    pub count: u64,
}

#[derive(Default)]
struct Received {
    spans: Vec<SpanRecord>,
    /// Metric name → every point received for it, in arrival order.
    points: BTreeMap<String, Vec<PointRecord>>,
    /// Resource attributes of the first export.
    resource: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Received>>);

impl Sink {
    /// The recorded data. A panic elsewhere while holding the lock leaves complete records, so poisoning is
    /// ignored rather than turned into a second, misleading panic.
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct Collector {
    /// `http://127.0.0.1:PORT`, for the exporter's `with_endpoint`.
    pub endpoint: String,
    sink: Sink,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts the collector on a free loopback port (tokio task; stops when dropped).
    pub async fn start() -> Collector {
        Collector::start_with(None).await
    }

    /// Starts the collector serving TLS with this PEM certificate and key, on `https://localhost:PORT`.
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> Collector {
        Collector::start_with(Some(tonic::transport::Identity::from_pem(cert_pem, key_pem))).await
    }

    async fn start_with(identity: Option<tonic::transport::Identity>) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port for OTLP");
        let port = listener.local_addr().expect("OTLP listener address").port();
        let endpoint = match identity {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let sink = Sink::default();
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = identity {
            tessera::install_crypto_provider();
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("collector TLS config");
        }
        let server = builder
            .add_service(TraceServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip))
            .add_service(MetricsServiceServer::new(sink.clone()).accept_compressed(CompressionEncoding::Gzip));
        // The listener is bound already, so an exporter may connect as soon as `start` returns.
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = server.serve_with_incoming(incoming).await {
                eprintln!("OTLP test collector stopped: {e}");
            }
        });
        Collector { endpoint, sink, task }
    }

    /// Every span received so far, flattened, in arrival order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.sink.lock().spans.clone()
    }

    /// Every data point received so far for the metric named `name` (sums, gauges, histograms). Cumulative
    /// metrics are re-sent on every export, so the same series appears once per export received.
    pub fn points(&self, name: &str) -> Vec<PointRecord> {
        self.sink.lock().points.get(name).cloned().unwrap_or_default()
    }

    /// Names of all metrics received so far (sorted, deduplicated).
    pub fn metric_names(&self) -> Vec<String> {
        self.sink.lock().points.keys().cloned().collect()
    }

    /// Resource attributes of the first export received (traces or metrics), as strings; empty before any.
    pub fn resource(&self) -> BTreeMap<String, String> {
        self.sink.lock().resource.clone().unwrap_or_default()
    }

    /// Polls `f` every 50 ms until it returns true or `timeout` passes; returns whether it did.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn(&Collector) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let mut received = self.lock();
        for resource_spans in request.resource_spans {
            note_resource(&mut received, resource_spans.resource.as_ref());
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.spans.push(SpanRecord {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let request = request.into_inner();
        let mut received = self.lock();
        for resource_metrics in request.resource_metrics {
            note_resource(&mut received, resource_metrics.resource.as_ref());
            for m in resource_metrics.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let points: Vec<PointRecord> = match m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.iter().map(number_point).collect(),
                    Some(metric::Data::Gauge(g)) => g.data_points.iter().map(number_point).collect(),
                    Some(metric::Data::Histogram(h)) => h
                        .data_points
                        .iter()
                        .map(|p| PointRecord {
                            attributes: attributes(&p.attributes),
                            value: p.sum.unwrap_or_default(),
                            count: p.count,
                        })
                        .collect(),
                    Some(metric::Data::ExponentialHistogram(h)) => h
                        .data_points
                        .iter()
                        .map(|p| PointRecord {
                            attributes: attributes(&p.attributes),
                            value: p.sum.unwrap_or_default(),
                            count: p.count,
                        })
                        .collect(),
                    Some(metric::Data::Summary(s)) => s
                        .data_points
                        .iter()
                        .map(|p| PointRecord { attributes: attributes(&p.attributes), value: p.sum, count: p.count })
                        .collect(),
                    None => Vec::new(),
                };
                received.points.entry(m.name).or_default().extend(points);
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

fn number_point(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> PointRecord {
    let value = match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    };
    PointRecord { attributes: attributes(&p.attributes), value, count: 0 }
}

fn note_resource(received: &mut Received, resource: Option<&Resource>) {
    if received.resource.is_none() {
        let attrs = resource.map(|r| r.attributes.as_slice()).unwrap_or_default();
        let rendered = attrs.iter().map(|kv| (kv.key.clone(), render(kv.value.as_ref()))).collect();
        received.resource = Some(rendered);
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, AttrValue> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
                Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
                Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
                Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
                _ => AttrValue::Other(render(kv.value.as_ref())),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A value as text: strings as they are, scalars in their usual form, arrays and maps JSON-like.
fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| render(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(l)) => {
            let items: Vec<String> =
                l.values.iter().map(|kv| format!("{}: {}", kv.key, render(kv.value.as_ref()))).collect();
            format!("{{{}}}", items.join(", "))
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The collector against the real exporter pipeline the broker uses: opentelemetry-otlp over tonic, a batch
/// span processor and a periodic metric reader. Multi-threaded runtime: the SDK flushes by blocking a thread
/// on the export, and the tonic channel's tasks need a free worker meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_receives_what_an_otlp_exporter_sends() {
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    let collector = Collector::start().await;
    let resource = Resource::builder().with_service_name("otlp-self-test").build();

    // Traces. The exporter must be built inside the runtime: tonic's lazy channel spawns its worker there.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&collector.endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .expect("span exporter");
    let tracer_provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build();
    let tracer = tracer_provider.tracer("otlp-self-test");
    let parent = tracer
        .span_builder("parent")
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("rpc.method", "ExchangeToken"), KeyValue::new("attempt", 3i64)])
        .start(&tracer);
    let parent_cx = opentelemetry::Context::current_with_span(parent);
    tracer.start_with_context("child", &parent_cx).end();
    parent_cx.span().end();
    let flushed = tokio::task::spawn_blocking({
        let provider = tracer_provider.clone();
        move || provider.force_flush()
    })
    .await
    .expect("flush task");
    assert!(flushed.is_ok(), "span flush: {flushed:?}");

    assert!(collector.wait_until(Duration::from_secs(5), |c| c.spans().len() >= 2).await, "spans never arrived");
    let spans = collector.spans();
    let parent = spans.iter().find(|s| s.name == "parent").expect("parent span");
    let child = spans.iter().find(|s| s.name == "child").expect("child span");
    assert_eq!(parent.kind, 2, "SERVER");
    assert_eq!(parent.trace_id.len(), 32);
    assert_eq!(parent.span_id.len(), 16);
    assert_eq!(parent.parent_span_id, "");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, parent.span_id);
    assert_eq!(parent.attributes.get("rpc.method").and_then(AttrValue::as_str), Some("ExchangeToken"));
    assert_eq!(parent.attributes.get("attempt").and_then(AttrValue::as_i64), Some(3));
    assert_eq!(collector.resource().get("service.name").map(String::as_str), Some("otlp-self-test"));

    // Metrics.
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(&collector.endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .expect("metric exporter");
    let meter_provider = SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build();
    let meter = meter_provider.meter("otlp-self-test");
    let counter = meter.u64_counter("selftest.requests").build();
    counter.add(2, &[KeyValue::new("outcome", "granted")]);
    counter.add(5, &[KeyValue::new("outcome", "granted")]);
    counter.add(1, &[KeyValue::new("outcome", "refused")]);
    let histogram = meter.f64_histogram("selftest.duration").with_unit("s").build();
    histogram.record(0.25, &[]);
    histogram.record(0.5, &[]);
    let flushed = tokio::task::spawn_blocking({
        let provider = meter_provider.clone();
        move || provider.force_flush()
    })
    .await
    .expect("flush task");
    assert!(flushed.is_ok(), "metric flush: {flushed:?}");

    let arrived = collector.wait_until(Duration::from_secs(5), |c| !c.points("selftest.duration").is_empty()).await;
    assert!(arrived, "metrics never arrived: {:?}", collector.metric_names());
    let granted = collector
        .points("selftest.requests")
        .into_iter()
        .filter(|p| p.attributes.get("outcome").and_then(AttrValue::as_str) == Some("granted"))
        .map(|p| p.value)
        .fold(0.0, f64::max);
    assert_eq!(granted, 7.0);
    let duration = collector.points("selftest.duration");
    assert!(duration.iter().any(|p| p.count == 2 && p.value == 0.75), "{duration:?}");
    assert_eq!(collector.metric_names(), ["selftest.duration", "selftest.requests"]);

    // Shutting down blocks on a final export, like flushing.
    let shutdown = tokio::task::spawn_blocking(move || (tracer_provider.shutdown(), meter_provider.shutdown()))
        .await
        .expect("shutdown task");
    assert!(shutdown.0.is_ok() && shutdown.1.is_ok(), "shutdown: {shutdown:?}");
}
