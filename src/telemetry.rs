//! Logging and traces. Logs: pretty lines for people in dev, JSON for log pipelines in
//! production; every line of a request carries its span, and with it the request id. Traces:
//! OpenTelemetry over OTLP/HTTP, off unless `traces.enabled`; the spans of shop's own code (the
//! request, each actor message, the saga's steps, the provider calls, the email send) are
//! exported, with the W3C trace context carried across actors, the outbox and the broker.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings, TraceSettings};

/// Whether spans are exported: checked before any work is done for a trace, so that with traces
/// off nothing is captured, injected or extracted. One flag for the whole process, the actors'.
pub fn exporting() -> bool {
    shop_actors::instrument::traced()
}

/// Flushes the spans still buffered when dropped (at the end of `shop serve`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            // The process is ending: stderr is all that is left to tell.
            eprintln!("shop: the last spans could not be exported: {error}");
        }
    }
}

/// Installs the global subscriber; later calls (tests) are no-ops and export nothing.
pub fn init(log: &LogSettings, traces: &TraceSettings) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt::layer().with_span_events(FmtSpan::NONE);
    let fmt = match log.format {
        LogFormat::Pretty => fmt.compact().boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
    .with_filter(filter);
    if !traces.enabled {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(Telemetry { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!(
            "{}/v1/traces",
            traces.endpoint.trim_end_matches('/')
        ))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A caller's sampling decision (its traceparent's flag) stands; a new trace is kept
        // with the configured probability.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            traces.sampling_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .build(),
        )
        .build();
    // Only shop's own spans: the libraries' (ractor's actor loops, sqlx, lapin, hyper) would
    // bury a checkout under hundreds of spans that say nothing about it.
    let ours = Targets::new()
        .with_target("shop", tracing::Level::INFO)
        .with_target("shop_actors", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shop"))
        .with_filter(ours);
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        shop_actors::instrument::trace_messages(true);
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The W3C `traceparent` of the current span, to carry it where a span cannot go (an outbox
/// row, a broker message, an outgoing request). None when traces are off or not sampled.
pub fn traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes the trace context in `carrier` (a request's headers, a broker message's) the parent
/// of `span`. A missing or malformed `traceparent` leaves `span` the root of a new trace.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    if !exporting() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    // An error here means the span is not exported (it was disabled), so it has no parent to set.
    let _ = span.set_parent(parent);
}

/// A stored `traceparent` (an outbox row's) as a carrier.
pub struct Traceparent<'a>(pub Option<&'a str>);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|_| vec!["traceparent"]).unwrap_or_default()
    }
}
