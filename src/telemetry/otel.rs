//! OpenTelemetry export of herald's own spans (README, "Tracing"), over
//! OTLP/HTTP with protobuf bodies, following the OpenTelemetry messaging
//! semantic conventions:
//!
//! - `send {topic}` (PRODUCER) around the commit of a publish request: one
//!   per request, a batch's included, as a child of the publisher's
//!   `traceparent`;
//! - `process {topic}` (CONSUMER) once per event per instance, at fan-out,
//!   linked to the event's stored trace context, with the number of
//!   streams it was queued for. Never a span per stream.
//!
//! Off unless `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Off, nothing here runs
//! past [`on`], one relaxed atomic load: no span, no allocation, and no
//! layer in the subscriber. On, the spans are `tracing` spans of target
//! [`TARGET`] that the tracing-opentelemetry layer (installed by
//! [`super::init_tracing`]) alone sees; the log does not print them.
//!
//! What the SDK reads by itself, and so is honoured without code here:
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default
//! `parentbased_always_on`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, `_HEADERS`, `_COMPRESSION`. What
//! herald adds: the service name defaults to `herald` rather than the SDK's
//! `unknown_service` (`OTEL_SERVICE_NAME`, then a `service.name` in
//! `OTEL_RESOURCE_ATTRIBUTES`, still win), `service.instance.id` is the
//! instance id of the stream registry, `OTEL_SDK_DISABLED=true` and
//! `OTEL_TRACES_EXPORTER=none` turn export off, and the HTTP client is
//! herald's own (rustls on ring with Mozilla's roots), which honours
//! `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, Key, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::{Frame, TraceContext};

/// The target of every exported span: the OpenTelemetry layer takes these
/// and nothing else, and the log leaves them out.
pub const TARGET: &str = "herald::otel";

/// The span attribute with the number of streams an event was queued for.
pub const STREAMS_WRITTEN: &str = "herald.streams_written";

/// Set once the layer is installed: the one thing the publish and fan-out
/// paths check.
static ON: AtomicBool = AtomicBool::new(false);

/// The provider, kept to flush and shut down at the stop.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The instance id put in the resource, for the registry to take as its
/// own (see [`claim_instance_id`]).
static INSTANCE_ID: Mutex<Option<String>> = Mutex::new(None);

/// Whether spans are exported. The publish and fan-out paths ask this
/// before building anything.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Where spans go, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    Off,
    /// To this OTLP/HTTP traces URL, or, when `None`, where the standard
    /// variables say (the SDK reads them).
    On(Option<String>),
}

impl Export {
    /// From `--otlp-endpoint` (a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is: `/v1/traces` is appended) and the standard variables. The flag
    /// wins over the variables: it is the more deliberate of the two.
    pub fn resolve(flag: Option<&str>) -> Self {
        Self::resolve_with(flag, |name| std::env::var(name).ok())
    }

    fn resolve_with(flag: Option<&str>, var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        let is = |name: &str, value: &str| {
            var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
            return Self::Off;
        }
        if let Some(base) = flag.map(str::trim).filter(|s| !s.is_empty()) {
            return Self::On(Some(format!("{}/v1/traces", base.trim_end_matches('/'))));
        }
        if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            return Self::On(None);
        }
        Self::Off
    }
}

/// For the log: the URL without any `user:password@`, or where it comes
/// from.
impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::On(None) => f.write_str("from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT"),
            Self::On(Some(url)) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                let authority_end = rest.find('/').unwrap_or(rest.len());
                let rest = match rest[..authority_end].rfind('@') {
                    Some(at) => &rest[at + 1..],
                    None => rest,
                };
                write!(f, "{scheme}://{rest}")
            }
        }
    }
}

/// Builds the exporter and the tracer provider for `export`; `None` when
/// export is off. Call [`started`] once the layer made of the tracer is
/// installed.
///
/// # Errors
/// An endpoint the exporter refuses, or an HTTP client that cannot be
/// built.
pub(super) fn tracer(export: &Export) -> anyhow::Result<Option<SdkTracer>> {
    let Export::On(endpoint) = export else {
        return Ok(None);
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http_client()?);
    if let Some(url) = endpoint {
        exporter = exporter.with_endpoint(url.clone());
    }
    let exporter = exporter
        .build()
        .context("cannot configure the OTLP exporter")?;
    let instance = crate::registry::new_instance_id();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(&instance))
        .build();
    let tracer = provider.tracer("herald");
    *INSTANCE_ID.lock().unwrap_or_else(|e| e.into_inner()) = Some(instance);
    let _ = PROVIDER.set(provider);
    Ok(Some(tracer))
}

/// The layer is in place: spans are built from now on.
pub(super) fn started() {
    ON.store(true, Ordering::Relaxed);
}

/// The instance id the exported resource names (`service.instance.id`),
/// once, for the stream registry to take as its own so that both name
/// the instance alike. `None` when export is off, and for any later
/// instance of the same process (tests), which makes its own.
pub(crate) fn claim_instance_id() -> Option<String> {
    INSTANCE_ID.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Exports what is still queued and stops the exporter: at the process's
/// stop, so that the last spans are not lost. Blocking (the batch
/// processor's thread answers), so off the runtime's threads.
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    ON.store(false, Ordering::Relaxed);
    let done = tokio::task::spawn_blocking(|| provider.shutdown()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "the OpenTelemetry exporter did not stop cleanly");
    }
}

/// `service.name` (`OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`'s,
/// else `herald`), `service.instance.id`, `service.version`, the SDK's own
/// attributes, and `OTEL_RESOURCE_ATTRIBUTES`, which wins over the rest.
fn resource(instance: &str) -> Resource {
    let from_env = EnvResourceDetector::new().detect();
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Value::from)
        .or_else(|| from_env.get(&Key::new("service.name")))
        .unwrap_or_else(|| "herald".into());
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.instance.id", instance.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ])
        .with_service_name(name)
        .build()
}

/// The exporter's HTTP client: blocking (the batch processor calls it from
/// its own thread), with herald's TLS configuration, since reqwest here
/// has no crypto provider of its own (Cargo.toml). Built on a thread of its
/// own: a blocking client may not be made on the async runtime.
fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    let tls = crate::cli::tls::client_config(None).map_err(anyhow::Error::msg)?;
    let timeout = export_timeout(|name| std::env::var(name).ok());
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
    .context("cannot build the OTLP HTTP client")
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`,
/// in milliseconds; 10 s by default (the OTLP exporter specification).
fn export_timeout(var: impl Fn(&str) -> Option<String>) -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|name| var(name)?.trim().parse::<u64>().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The span context a stored `traceparent` names, remote (it was made by
/// the publisher), with its `tracestate` when the SDK accepts it.
fn span_context(trace: &TraceContext) -> SpanContext {
    let parent = trace.traceparent();
    // Checked on the way in (`event/trace.rs`): lowercase hex in place.
    let trace_id = TraceId::from_hex(&parent[3..35]).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(&parent[36..52]).unwrap_or(SpanId::INVALID);
    let flags = u8::from_str_radix(&parent[53..55], 16).unwrap_or(0);
    let state = trace
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    )
}

/// What a publish request sends, for its `send` span.
pub struct Send<'a> {
    /// The topic of every event, or `None` when a batch mixes topics.
    pub topic: Option<&'a str>,
    /// Events in the request.
    pub count: usize,
    pub is_batch: bool,
    /// The publisher's context: the request's headers, else (a batch)
    /// the first event's own.
    pub parent: Option<&'a TraceContext>,
}

/// The `send` span of one publish request, to hold around the commit.
///
/// Named `send {topic}`; a batch whose events go to several topics is
/// named `send` and has no `messaging.destination.name`, as the
/// conventions ask of an operation on several destinations (its events'
/// `process` spans each name theirs).
pub fn send_span(send: &Send<'_>) -> Span {
    let name = match send.topic {
        Some(topic) => format!("send {topic}"),
        None => "send".to_owned(),
    };
    let count = send.is_batch.then_some(send.count as i64);
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "send",
        otel.name = name.as_str(),
        otel.kind = "producer",
        "messaging.system" = "herald",
        "messaging.operation.type" = "send",
        "messaging.operation.name" = "send",
        "messaging.destination.name" = send.topic,
        "messaging.batch.message_count" = count,
        "messaging.message.id" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    if let Some(parent) = send.parent {
        let cx = Context::new().with_remote_span_context(span_context(parent));
        let _ = span.set_parent(cx);
    }
    span
}

/// The stored id of a request's one event (not for a batch: the
/// conventions give `messaging.message.id` to single messages).
pub fn sent(span: &Span, id: i64) {
    span.record("messaging.message.id", id.to_string());
}

/// The commit failed: the span's status is an error of `kind`.
pub fn send_failed(span: &Span, kind: &'static str) {
    span.record("otel.status_code", "error");
    span.record("error.type", kind);
}

/// The `process` span of one event's fan-out on this instance, linked to
/// the context the event was created in. An event published without trace
/// context still gets one, without a link: its fan-out is worth seeing, and
/// the sampler (`OTEL_TRACES_SAMPLER`) is where to cut the volume of such
/// root spans.
pub fn process_span(frame: &Frame) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "process",
        otel.name = format!("process {}", frame.topic.as_str()).as_str(),
        otel.kind = "consumer",
        "messaging.system" = "herald",
        "messaging.operation.type" = "process",
        "messaging.operation.name" = "process",
        "messaging.destination.name" = frame.topic.as_str(),
        "messaging.message.id" = frame.id.to_string().as_str(),
        "herald.streams_written" = tracing::field::Empty,
    );
    if let Some(trace) = &frame.trace {
        span.add_link(span_context(trace));
    }
    span
}

/// The number of streams the event of a `process` span was queued for.
pub fn processed(span: &Span, streams: usize) {
    span.record(STREAMS_WRITTEN, streams as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            set.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_set() {
        assert_eq!(Export::resolve_with(None, vars(&[])), Export::Off);
        assert_eq!(
            Export::resolve_with(Some(" "), vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])),
            Export::Off
        );
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let set = [(var, "http://collector:4318")];
            assert_eq!(Export::resolve_with(None, vars(&set)), Export::On(None));
        }
    }

    #[test]
    fn the_flag_is_a_base_url_and_wins_over_the_variables() {
        let set = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/x")];
        assert_eq!(
            Export::resolve_with(Some("http://127.0.0.1:4318/"), vars(&set)),
            Export::On(Some("http://127.0.0.1:4318/v1/traces".into()))
        );
    }

    #[test]
    fn the_logged_endpoint_leaves_credentials_out() {
        let url = Export::resolve_with(Some("https://u:p@c.example:4318/otlp"), vars(&[]));
        assert_eq!(url.to_string(), "https://c.example:4318/otlp/v1/traces");
    }

    #[test]
    fn the_standard_switches_turn_export_off() {
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let set = [off, ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            assert_eq!(
                Export::resolve_with(Some("http://c:4318"), vars(&set)),
                Export::Off
            );
        }
    }

    #[test]
    fn the_timeout_is_read_in_milliseconds() {
        assert_eq!(export_timeout(vars(&[])), Duration::from_secs(10));
        let set = [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "x"),
        ];
        assert_eq!(export_timeout(vars(&set)), Duration::from_millis(2500));
    }

    #[test]
    fn a_stored_traceparent_becomes_a_remote_span_context() {
        let (trace, _) = TraceContext::parse(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("congo=t61rcWkgMzE"),
        );
        let cx = span_context(&trace.unwrap());
        assert!(cx.is_valid() && cx.is_remote() && cx.is_sampled());
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
        let (unsampled, _) = TraceContext::parse(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None,
        );
        assert!(!span_context(&unsampled.unwrap()).is_sampled());
    }
}
