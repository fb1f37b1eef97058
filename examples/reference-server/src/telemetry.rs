//! Telemetry of the reference server: logs, Prometheus metrics and OpenTelemetry traces (`[telemetry]`).
//!
//! - Logs: text or JSON lines on stderr; the level comes from `RUST_LOG` (default `info`).
//! - Metrics: the `metrics` facade's Prometheus recorder, installed before the hub is built (the hub registers
//!   its handles when it is built), rendered at `GET /metrics` on the HTTP listener. Histogram buckets come from
//!   `herald::core::metrics::buckets`. A task runs the recorder's upkeep every few seconds.
//! - Traces: when an OTLP endpoint is configured (`telemetry.otlp_endpoint`, or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans go to it over OTLP/HTTP
//!   (protobuf) through a batch processor running on its own thread with a blocking HTTP client (rustls for
//!   `https://` collectors, trusting the system's roots plus `telemetry.otlp_ca_file`). A command's W3C
//!   `traceparent` (command field or upgrade header) becomes the remote parent of its `command` span by
//!   [`linker`].
//!
//! See `docs/operations.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use figment::value::magic::RelativePathBuf;
use herald::core::trace_context::{ParentLinker, TraceParent};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::Error;

/// How often the Prometheus recorder's upkeep runs (drains histogram samples into buckets).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one OTLP export request may take.
const OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// The standard OpenTelemetry variables that name an OTLP endpoint.
const OTLP_ENV: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[telemetry]`: logs, metrics and traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TelemetrySection {
    /// Log format: "text" or "json" (`--log-format` overrides it).
    pub(crate) log_format: LogFormat,
    /// Serve Prometheus metrics on the HTTP listener.
    pub(crate) metrics: bool,
    /// The metrics path.
    pub(crate) metrics_path: String,
    /// The OTLP/HTTP base URL (`https://collector:4318`, or `http://` to a local agent); spans are posted to
    /// `<endpoint>/v1/traces`. When unset, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL) apply; with neither, no spans are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) otlp_endpoint: Option<String>,
    /// PEM file of further CA certificates trusted for an `https://` collector (a private CA), in addition to the
    /// system's roots. Relative to the configuration file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) otlp_ca_file: Option<RelativePathBuf>,
    /// The `service.name` resource attribute of exported spans.
    pub(crate) service_name: String,
    /// The fraction of new traces exported, 0.0 to 1.0. A trace continued from a client's `traceparent` follows
    /// the client's sampled flag.
    pub(crate) sampling_ratio: f64,
    /// Which spans are exported, in `RUST_LOG` syntax (Herald's spans are at debug level).
    pub(crate) trace_filter: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            metrics: true,
            metrics_path: "/metrics".to_owned(),
            otlp_endpoint: None,
            otlp_ca_file: None,
            service_name: "herald-server".to_owned(),
            sampling_ratio: 1.0,
            trace_filter: "info,herald_core=debug,herald_websocket=debug,herald_server=debug".to_owned(),
        }
    }
}

impl TelemetrySection {
    /// Checks what serde cannot. `reserved` are paths served by other routes.
    pub(crate) fn validate(&self, reserved: &[&str]) -> Result<(), Error> {
        let invalid = |m: String| -> Result<(), Error> { Err(format!("invalid configuration: telemetry.{m}").into()) };
        if !self.metrics_path.starts_with('/') {
            return invalid(format!("metrics_path {:?} must start with '/'", self.metrics_path));
        }
        if self.metrics && reserved.contains(&self.metrics_path.as_str()) {
            return invalid(format!("metrics_path {:?} is already used by another route", self.metrics_path));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return invalid(format!("sampling_ratio {} must be between 0.0 and 1.0", self.sampling_ratio));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme_ok = endpoint.starts_with("https://") || endpoint.starts_with("http://");
            if !scheme_ok || endpoint.parse::<axum::http::Uri>().is_err() {
                return invalid(format!("otlp_endpoint {endpoint:?} must be an https:// or http:// URL"));
            }
        }
        if self.service_name.is_empty() {
            return invalid("service_name must not be empty".to_owned());
        }
        if let Err(e) = EnvFilter::try_new(&self.trace_filter) {
            return invalid(format!("trace_filter {:?}: {e}", self.trace_filter));
        }
        Ok(())
    }

    /// The OTLP traces endpoint to configure explicitly, and whether export is on at all.
    fn otlp(&self) -> (Option<String>, bool) {
        match &self.otlp_endpoint {
            Some(base) => (Some(format!("{}/v1/traces", base.trim_end_matches('/'))), true),
            None => (None, OTLP_ENV.iter().any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))),
        }
    }
}

/// The installed telemetry: the metrics handle and the tracer provider to flush at exit.
#[derive(Debug)]
pub(crate) struct Telemetry {
    prometheus: Option<PrometheusHandle>,
    metrics_path: String,
    tracer_provider: Option<SdkTracerProvider>,
}

/// A boxed layer over the registry.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

impl Telemetry {
    /// Installs logging, the metrics recorder and (when configured) the OTLP exporter. Call once, before the
    /// hub is built and outside the async runtime. `log_format` (from the command line) overrides the section's.
    pub(crate) fn init(section: &TelemetrySection, log_format: Option<LogFormat>) -> Result<Self, Error> {
        let mut layers: Vec<BoxedLayer> = Vec::new();
        let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        layers.push(match log_format.unwrap_or(section.log_format) {
            LogFormat::Text => fmt.with_filter(log_filter).boxed(),
            LogFormat::Json => fmt.json().with_filter(log_filter).boxed(),
        });

        let (endpoint, export) = section.otlp();
        let tracer_provider = if export {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let mut exporter =
                opentelemetry_otlp::SpanExporter::builder().with_http().with_http_client(otlp_client(section)?);
            if let Some(endpoint) = &endpoint {
                exporter = exporter.with_endpoint(endpoint);
            }
            let exporter = exporter.build().map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
            let resource =
                opentelemetry_sdk::Resource::builder().with_service_name(section.service_name.clone()).build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(section.sampling_ratio))))
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("herald-server");
            let filter = EnvFilter::try_new(&section.trace_filter)
                .map_err(|e| format!("invalid telemetry.trace_filter {:?}: {e}", section.trace_filter))?;
            layers.push(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter).boxed());
            Some(provider)
        } else {
            None
        };
        tracing_subscriber::registry().with(layers).try_init().map_err(|e| format!("cannot install logging: {e}"))?;

        let prometheus = if section.metrics {
            let mut builder = PrometheusBuilder::new();
            for (name, kind) in herald::core::metrics::ALL {
                if *kind == herald::core::metrics::MetricKind::Histogram {
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full((*name).to_owned()), herald::core::metrics::buckets(name))
                        .map_err(|e| format!("metrics buckets: {e}"))?;
                }
            }
            let handle = builder.install_recorder().map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            herald::core::metrics::describe();
            Some(handle)
        } else {
            None
        };
        if let Some(endpoint) = &endpoint {
            tracing::info!(%endpoint, sampling_ratio = section.sampling_ratio, "exporting traces over OTLP/HTTP");
        } else if export {
            tracing::info!(
                sampling_ratio = section.sampling_ratio,
                "exporting traces to the OTEL_EXPORTER_OTLP_* endpoint"
            );
        }
        Ok(Self { prometheus, metrics_path: section.metrics_path.clone(), tracer_provider })
    }

    /// The metrics route (none when metrics are off).
    pub(crate) fn routes(&self) -> Router {
        match &self.prometheus {
            Some(handle) => Router::new().route(&self.metrics_path, get(render)).with_state(handle.clone()),
            None => Router::new(),
        }
    }

    /// The metrics path, when metrics are served.
    pub(crate) fn metrics_path(&self) -> Option<&str> {
        self.prometheus.as_ref().map(|_| self.metrics_path.as_str())
    }

    /// Starts the recorder's periodic upkeep on the current runtime (it ends with the runtime).
    pub(crate) fn spawn_upkeep(&self) {
        if let Some(handle) = self.prometheus.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            });
        }
    }

    /// Exports the spans still buffered and stops the exporter. Call after the runtime has finished serving.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("herald-server: warning: exporting the last spans failed: {e}");
        }
    }
}

/// The exporter's HTTP client: blocking (the batch processor has a thread of its own), TLS by rustls with the
/// system's roots plus the certificates of `telemetry.otlp_ca_file`.
fn otlp_client(section: &TelemetrySection) -> Result<reqwest::blocking::Client, Error> {
    let mut builder = reqwest::blocking::Client::builder().timeout(OTLP_TIMEOUT);
    if let Some(file) = &section.otlp_ca_file {
        let path = file.relative();
        let shown = path.display();
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read telemetry.otlp_ca_file {shown}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("telemetry.otlp_ca_file {shown} is not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err(format!("telemetry.otlp_ca_file {shown} holds no certificate").into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("cannot build the OTLP HTTP client: {e}").into())
}

/// `GET /metrics`: the Prometheus text format.
async fn render(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
}

/// Makes a `command` span the child of the remote span its [`TraceParent`] names (through the OpenTelemetry
/// layer; without it, or when the span is filtered out, nothing happens).
pub(crate) fn linker() -> ParentLinker {
    Arc::new(|span: &tracing::Span, tp: &TraceParent| {
        let carrier = HashMap::from([("traceparent".to_owned(), tp.as_str().to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        // Errors: no OpenTelemetry layer (export off) or the span is disabled; both mean nothing to link.
        let _ = span.set_parent(parent);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TelemetrySection::default().validate(&["/healthz", "/ws"]).expect("valid");
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        let check = |s: TelemetrySection| s.validate(&["/healthz", "/ws"]).expect_err("refused").to_string();
        let base = TelemetrySection::default;
        assert!(check(TelemetrySection { sampling_ratio: 1.5, ..base() }).contains("sampling_ratio"));
        assert!(check(TelemetrySection { metrics_path: "metrics".into(), ..base() }).contains("must start with"));
        assert!(check(TelemetrySection { metrics_path: "/healthz".into(), ..base() }).contains("already used"));
        let https = TelemetrySection { otlp_endpoint: Some("https://otel.example:4318".into()), ..base() };
        https.validate(&["/healthz"]).expect("https collectors are supported");
        let bad = TelemetrySection { otlp_endpoint: Some("localhost:4318".into()), ..base() };
        assert!(check(bad).contains("https:// or http:// URL"));
        let bad = TelemetrySection { otlp_endpoint: Some("grpc://otel.example:4317".into()), ..base() };
        assert!(check(bad).contains("https:// or http:// URL"));
        assert!(check(TelemetrySection { trace_filter: "=[".into(), ..base() }).contains("trace_filter"));
    }

    #[test]
    fn the_endpoint_is_a_base_url() {
        let s =
            TelemetrySection { otlp_endpoint: Some("http://127.0.0.1:4318/".into()), ..TelemetrySection::default() };
        assert_eq!(s.otlp(), (Some("http://127.0.0.1:4318/v1/traces".into()), true));
    }
}
