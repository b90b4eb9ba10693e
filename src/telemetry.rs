//! Structured logs (tracing) and the Prometheus metric set.
//!
//! Every metric is named and described here, once: `promtool check metrics`
//! refuses a metric without HELP, and a histogram without buckets would render
//! as a summary. The recorder is process-wide (the `metrics` facade has one
//! global recorder), so several apps started by one test binary share it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

pub const STREAMS_ACTIVE: &str = "herald_streams_active";
pub const STREAMS_OPENED: &str = "herald_streams_opened_total";
pub const STREAMS_LAGGED: &str = "herald_streams_lagged_total";
pub const EVENTS_PUBLISHED: &str = "herald_events_published_total";
pub const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
pub const PUBLISH_SECONDS: &str = "herald_publish_duration_seconds";
pub const APPEND_SECONDS: &str = "herald_append_transaction_seconds";
pub const APPEND_GROUP_EVENTS: &str = "herald_append_group_events";
pub const RESUMES: &str = "herald_resumes_total";
pub const RESETS: &str = "herald_stream_resets_total";
pub const LISTENER_RECONNECTS: &str = "herald_listener_reconnects_total";
pub const LISTENER_ATTACHED: &str = "herald_listener_attached";
pub const LOG_HEAD: &str = "herald_log_head_id";
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
pub const LIMITED: &str = "herald_limited_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 4096.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(APPEND_GROUP_EVENTS.into()),
                        GROUP_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(STREAMS_ACTIVE, "SSE streams open on this instance.");
    describe_counter!(STREAMS_OPENED, "SSE streams opened since start.");
    describe_counter!(
        STREAMS_LAGGED,
        "Streams ended because their subscriber fell behind (its queue filled)."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events committed to the log by this instance."
    );
    describe_counter!(
        EVENTS_DELIVERED,
        "Event frames written to subscriber streams (one per subscriber per event)."
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Publish request time from a valid body to the commit, in seconds."
    );
    describe_histogram!(
        APPEND_SECONDS,
        Unit::Seconds,
        "Duration of one group-commit append transaction, in seconds."
    );
    describe_histogram!(
        APPEND_GROUP_EVENTS,
        "Events carried by one group-commit append transaction."
    );
    describe_counter!(
        RESUMES,
        "Streams resumed from a cursor, by where the missed events came from (ring or database)."
    );
    describe_counter!(RESETS, "Reset frames sent, by reason.");
    describe_counter!(
        LISTENER_RECONNECTS,
        "Times the LISTEN connection to PostgreSQL was re-established."
    );
    describe_gauge!(
        LISTENER_ATTACHED,
        "1 while the LISTEN connection to PostgreSQL is up, else 0."
    );
    describe_gauge!(
        LOG_HEAD,
        "Newest event id this instance has read from the log."
    );
    describe_counter!(
        LIMITED,
        "Requests refused with 429 by a cap or rate limit, by reason."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status."
    );
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

/// Handles on the hottest counters, resolved once instead of per event.
pub fn events_delivered() -> &'static Counter {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| metrics::counter!(EVENTS_DELIVERED))
}

pub fn streams_lagged() -> &'static Counter {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| metrics::counter!(STREAMS_LAGGED))
}

pub fn streams_active() -> &'static Gauge {
    static G: OnceLock<Gauge> = OnceLock::new();
    G.get_or_init(|| metrics::gauge!(STREAMS_ACTIVE))
}

/// Starts the tracing subscriber: `RUST_LOG` filters (default `info`),
/// `format` picks human or JSON lines. Safe to call twice (tests).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
