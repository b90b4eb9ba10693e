//! Structured logs (tracing), the Prometheus metric set, and the
//! OpenTelemetry export of spans ([`otel`], off unless configured).
//!
//! Every metric is named, described and, where it can be, set to zero in
//! `names.rs`, once: `promtool check metrics` refuses a metric without HELP,
//! and a histogram without buckets would render as a summary. The recorder
//! is process-wide (the `metrics` facade has one global recorder), so
//! several apps started by one test binary share it.

mod names;
pub mod otel;

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

pub use names::*;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                (Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS),
                (Matcher::Full(APPEND_GROUP_EVENTS.into()), GROUP_BUCKETS),
                (Matcher::Full(STREAM_SECONDS.into()), LIFETIME_BUCKETS),
                (Matcher::Full(REPLAY_EVENTS.into()), REPLAY_BUCKETS),
            ];
            let mut builder = PrometheusBuilder::new();
            for (matcher, values) in buckets {
                builder = builder
                    .set_buckets_for_metric(matcher, values)
                    .expect("bucket lists are not empty");
            }
            let handle = builder
                .install_recorder()
                .expect("no other metrics recorder is installed");
            names::describe();
            names::zero();
            handle
        })
        .clone()
}

/// Keeps the exporter's histograms from growing unbounded.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// The `method` label of a request: the methods HTTP defines, and `other`
/// for the rest. Any token is a valid method, so taking the label from the
/// request as sent would give a client one new series per request.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, label)| label)
}

/// Handles on the metrics every event or publish request touches,
/// resolved once: the `counter!` family looks its metric up in the
/// recorder on every call, and allocates its labels when it has any
/// (callgrind: about a dozen of the 118 allocations of a publish).
macro_rules! handle {
    ($(#[$doc:meta])* $fn:ident: $ty:ty = $make:expr) => {
        $(#[$doc])*
        pub fn $fn() -> &'static $ty {
            static H: OnceLock<$ty> = OnceLock::new();
            H.get_or_init(|| $make)
        }
    };
}

handle!(events_delivered: Counter = metrics::counter!(EVENTS_DELIVERED));
handle!(streams_lagged: Counter = metrics::counter!(STREAMS_LAGGED));
handle!(streams_active: Gauge = metrics::gauge!(STREAMS_ACTIVE));
handle!(events_published: Counter = metrics::counter!(EVENTS_PUBLISHED));
handle!(publish_seconds: Histogram = metrics::histogram!(PUBLISH_SECONDS));
handle!(append_seconds: Histogram = metrics::histogram!(APPEND_SECONDS));
handle!(append_group_events: Histogram = metrics::histogram!(APPEND_GROUP_EVENTS));
handle!(append_committer: Gauge = metrics::gauge!(APPEND_COMMITTER));
handle!(
    /// `herald_append_forwarded_total{outcome="answered"}`.
    forwards_answered: Counter = metrics::counter!(APPEND_FORWARDED, "outcome" => FORWARD_OUTCOMES[0])
);
handle!(
    /// `herald_append_forwarded_total{outcome="not_sent"}`.
    forwards_not_sent: Counter = metrics::counter!(APPEND_FORWARDED, "outcome" => FORWARD_OUTCOMES[1])
);
handle!(
    /// `herald_append_forwarded_total{outcome="unknown"}`.
    forwards_unknown: Counter = metrics::counter!(APPEND_FORWARDED, "outcome" => FORWARD_OUTCOMES[2])
);
handle!(log_head: Gauge = metrics::gauge!(LOG_HEAD));
handle!(
    /// `herald_listener_events_total{source="notification"}`.
    listener_events_notified: Counter =
        metrics::counter!(LISTENER_EVENTS, "source" => LISTENER_SOURCES[0])
);
handle!(
    /// `herald_listener_events_total{source="log"}`.
    listener_events_read: Counter =
        metrics::counter!(LISTENER_EVENTS, "source" => LISTENER_SOURCES[1])
);

/// `herald_trace_context_dropped_total{field}`.
pub fn trace_context_dropped(field: crate::event::TraceDropped) -> Counter {
    metrics::counter!(TRACE_DROPPED, "field" => field.as_str())
}

/// `herald_http_requests_total{method, route, status}`, for every
/// request answered, whichever writer answered it (the router's edge, or
/// `Streams::open` for a stream). Each series is registered once and its
/// handle kept: `counter!` with labels allocates the labels and looks the
/// series up on every call.
///
/// Looked up on every request: the map hashes with foldhash rather than
/// std's SipHash, whose resistance to chosen keys buys nothing here (every
/// label comes from a fixed set: [`method_label`], the routes, status
/// codes) and which made this lookup about 520 instructions instead of
/// 185 (callgrind).
pub fn http_requests(method: &'static str, route: &'static str, status: StatusCode) -> Counter {
    type Key = (&'static str, &'static str, StatusCode);
    type Series = HashMap<Key, Counter, foldhash::fast::FixedState>;
    static SERIES: OnceLock<RwLock<Series>> = OnceLock::new();
    let series = SERIES.get_or_init(RwLock::default);
    let key = (method, route, status);
    if let Some(c) = series.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return c.clone();
    }
    series
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert_with(|| {
            metrics::counter!(
                HTTP_REQUESTS,
                "method" => method,
                "route" => route,
                "status" => status.as_str().to_owned()
            )
        })
        .clone()
}

/// Starts the tracing subscriber: `RUST_LOG` filters (default `info`),
/// `format` picks human or JSON lines (one object per line). Colour only
/// when standard error is a terminal: a log file or a journal gets plain
/// text. Safe to call twice (tests): the second call changes nothing.
///
/// With `export` on, the OpenTelemetry layer goes beside the log, each
/// with a filter of its own: the layer takes only the spans of
/// [`otel::TARGET`], whatever `RUST_LOG` says, and the log never prints
/// them. With export off the subscriber is the log alone, as it always was.
///
/// # Errors
/// Export configured with an endpoint the exporter refuses.
pub fn init_tracing(format: LogFormat, export: &otel::Export) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::Targets};

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let Some(tracer) = otel::tracer(export)? else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match format {
            LogFormat::Pretty => builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        return Ok(());
    };
    let off = format!("{}=off", otel::TARGET)
        .parse()
        .expect("a target and a level make a directive");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Pretty => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter.add_directive(off))
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_filter(filter.add_directive(off))
            .boxed(),
    };
    // Only what the span itself says: no source location, thread, level,
    // target or busy/idle times, and no context made current on enter
    // (nothing in herald reads it); the span is then built once, when it
    // closes.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(Targets::new().with_target(otel::TARGET, tracing::Level::INFO));
    if tracing_subscriber::registry()
        .with(log)
        .with(spans)
        .try_init()
        .is_ok()
    {
        otel::started();
        tracing::info!(endpoint = %export, "exporting spans over OTLP/HTTP");
    }
    Ok(())
}
