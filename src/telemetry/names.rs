//! Every metric herald exports: its name, its HELP text, its buckets, and,
//! for counters and label values known in advance, a zero from the start
//! (a counter that appears only at its first increment cannot be told
//! apart from a scrape that failed, and `rate()` misses its first step).
//! Every label has a bounded set of values.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const STREAMS_ACTIVE: &str = "herald_streams_active";
pub const STREAMS_OPENED: &str = "herald_streams_opened_total";
pub const STREAMS_LAGGED: &str = "herald_streams_lagged_total";
pub const STREAMS_ENDED: &str = "herald_streams_ended_total";
pub const STREAM_SECONDS: &str = "herald_stream_duration_seconds";
pub const EVENTS_PUBLISHED: &str = "herald_events_published_total";
pub const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
pub const DELIVERY_LAG: &str = "herald_delivery_lag_seconds";
pub const PUBLISH_SECONDS: &str = "herald_publish_duration_seconds";
pub const PUBLISH_REFUSED: &str = "herald_publish_refused_total";
pub const APPEND_SECONDS: &str = "herald_append_transaction_seconds";
pub const APPEND_GROUP_EVENTS: &str = "herald_append_group_events";
pub const APPEND_COMMITTER: &str = "herald_append_committer";
pub const APPEND_FORWARDED: &str = "herald_append_forwarded_total";
/// `outcome` of `herald_append_forwarded_total`.
pub const FORWARD_OUTCOMES: [&str; 3] = ["answered", "not_sent", "unknown"];
pub const RESUMES: &str = "herald_resumes_total";
pub const REPLAY_EVENTS: &str = "herald_replay_events";
pub const RESETS: &str = "herald_stream_resets_total";
pub const LISTENER_RECONNECTS: &str = "herald_listener_reconnects_total";
pub const LISTENER_ATTACHED: &str = "herald_listener_attached";
pub const LISTENER_EVENTS: &str = "herald_listener_events_total";
pub const LOG_HEAD: &str = "herald_log_head_id";
pub const RING_FRAMES: &str = "herald_ring_frames";
pub const RING_OLDEST: &str = "herald_ring_oldest_id";
pub const DB_CONNECTIONS: &str = "herald_db_pool_connections";
pub const CONNECTIONS_REFUSED: &str = "herald_connections_refused_total";
pub const CONNECTIONS_MAX: &str = "herald_connections_max";
pub const STREAM_TOPIC_CHANGES: &str = "herald_stream_topic_changes_total";
pub const REGISTRY_LAG: &str = "herald_registry_write_lag_seconds";
pub const REVOCATIONS_ACTIVE: &str = "herald_revocations_active";
pub const DB_POOL_MAX: &str = "herald_db_pool_max_connections";
pub const DB_WAITING: &str = "herald_db_pool_waiting";
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
pub const LIMITED: &str = "herald_limited_total";
pub const BUILD_INFO: &str = "herald_build_info";
pub const READY: &str = "herald_ready";
pub const RETENTION_OLDEST_ID: &str = "herald_retention_oldest_id";
pub const RETENTION_LAST_PRUNE: &str = "herald_retention_last_prune_timestamp_seconds";
pub const RETENTION_ENABLED: &str = "herald_retention_enabled";
pub const RETENTION_PRUNED: &str = "herald_retention_pruned_events_total";
pub const TRACE_DROPPED: &str = "herald_trace_context_dropped_total";

/// Which trace context field a publish sent invalid: the values of
/// `herald_trace_context_dropped_total{field}`.
pub const TRACE_FIELDS: [&str; 2] = ["traceparent", "tracestate"];

/// Why a stream ended: the values of `herald_streams_ended_total{reason}`.
pub const END_REASONS: [&str; 9] = [
    "client_gone",
    "lagged",
    "stalled",
    "drain",
    "token_expired",
    "replaced",
    "revoked",
    "superseded",
    "error",
];
/// Where a resume's missed events came from.
pub const RESUME_SOURCES: [&str; 2] = ["ring", "database"];
/// Where the listener took events from (`log/notice.rs`).
pub const LISTENER_SOURCES: [&str; 2] = ["notification", "log"];
pub const RESET_REASONS: [&str; 2] = ["cursor_too_old", "cursor_ahead"];
pub const LIMIT_REASONS: [&str; 1] = ["publish_rate"];
/// Why a publish was refused: the status class it got.
pub const PUBLISH_REFUSALS: [&str; 5] = [
    "invalid",
    "unauthorized",
    "forbidden",
    "limited",
    "unavailable",
];

pub(super) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
pub(super) const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 4096.0,
];
/// Stream lifetimes: a second to a day.
pub(super) const LIFETIME_BUCKETS: &[f64] =
    &[1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0];
/// Events replayed by one resume.
pub(super) const REPLAY_BUCKETS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

pub(super) fn describe() {
    describe_gauge!(STREAMS_ACTIVE, "SSE streams open on this instance.");
    describe_counter!(STREAMS_OPENED, "SSE streams opened since start.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Requests answered 503 because the instance held --max-connections already (health checks and scrapes are still served)."
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        "Client connections this instance holds at most (--max-connections, or derived from the file limit)."
    );
    describe_counter!(
        STREAMS_LAGGED,
        "Streams ended because their subscriber fell behind (its queue filled)."
    );
    describe_counter!(
        STREAMS_ENDED,
        "Streams ended, by reason: client_gone, lagged (fell behind), stalled (took no bytes \
         for --write-timeout), drain (the instance stopped), token_expired, replaced (its \
         subject or address opened a stream over its cap), revoked (an admin ended it or \
         revoked its subject), superseded (the named stream reconnected), error."
    );
    describe_histogram!(
        STREAM_SECONDS,
        Unit::Seconds,
        "How long streams lived, from the request to their end, in seconds."
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
        DELIVERY_LAG,
        Unit::Seconds,
        "From an event's commit to its frame being written to a live stream, in seconds \
         (one frame in 64 is sampled)."
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Publish request time from a valid body to the commit, in seconds."
    );
    describe_counter!(
        PUBLISH_REFUSED,
        "Publish requests refused, by reason: invalid (4xx input), unauthorized, forbidden, \
         limited (429), unavailable (503)."
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
    describe_gauge!(
        APPEND_COMMITTER,
        "1 while this instance commits the appends of every instance on its database (it holds \
         the committer lock), 0 while it sends its publish requests to the instance that does."
    );
    describe_counter!(
        APPEND_FORWARDED,
        "Publish requests this instance sent to the cluster's committer, by outcome: answered \
         (stored or refused there), not_sent (it could not be reached; committed here instead), \
         unknown (sent and not answered: 503, outcome unknown)."
    );
    describe_counter!(
        RESUMES,
        "Streams resumed from a cursor, by where the missed events came from (ring or database)."
    );
    describe_histogram!(
        REPLAY_EVENTS,
        "Events replayed by one resume before it went live, by source (ring or database)."
    );
    describe_counter!(RESETS, "Reset frames sent, by reason.");
    describe_counter!(
        LISTENER_RECONNECTS,
        "Times the LISTEN connection to PostgreSQL was re-established."
    );
    describe_counter!(
        LISTENER_EVENTS,
        "Events the listener handed to this instance's streams, by where it took them from: \
         the commit's notification, or a read of the log."
    );
    describe_counter!(
        STREAM_TOPIC_CHANGES,
        "Topic changes applied to named streams of this instance (PUT /v1/streams/{handle})."
    );
    describe_gauge!(
        REGISTRY_LAG,
        Unit::Seconds,
        "Age of the oldest stream record in the registry writer's last batch when it was \
         written (or, while writes fail, now): how far the registry is behind."
    );
    describe_gauge!(
        REVOCATIONS_ACTIVE,
        "Subjects revoked whose revocation window has not passed, as this instance holds them."
    );
    describe_gauge!(
        LISTENER_ATTACHED,
        "1 while the LISTEN connection to PostgreSQL is up, else 0."
    );
    describe_gauge!(
        LOG_HEAD,
        "Newest event id this instance has read from the log."
    );
    describe_gauge!(RING_FRAMES, "Frames held in the ring of recent events.");
    describe_gauge!(
        RING_OLDEST,
        "Oldest event id the ring holds (resumes after the one before it are served from \
         memory)."
    );
    describe_gauge!(
        DB_CONNECTIONS,
        "PostgreSQL pool connections, by state (in_use, idle)."
    );
    describe_gauge!(DB_POOL_MAX, "Most connections the PostgreSQL pool opens.");
    describe_gauge!(
        DB_WAITING,
        "Requests waiting for a PostgreSQL pool connection right now."
    );
    describe_counter!(
        LIMITED,
        "Requests refused with 429 by a cap or rate limit, by reason."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status."
    );
    describe_gauge!(
        READY,
        "1 when /readyz would answer 200 (database answers, listener attached, not draining), \
         else 0; set at each scrape and each /readyz."
    );
    describe_gauge!(
        RETENTION_OLDEST_ID,
        "Oldest event id the log may still hold: everything below was pruned by retention."
    );
    describe_gauge!(
        RETENTION_LAST_PRUNE,
        Unit::Seconds,
        "Unix time of the last prune pass this instance completed, whether or not anything \
         was due; 0 before the first (and on an instance that keeps everything, or while \
         another instance holds the prune lock)."
    );
    describe_counter!(
        RETENTION_PRUNED,
        "Events this instance deleted from the log for retention."
    );
    describe_counter!(
        TRACE_DROPPED,
        "W3C trace context values publishers sent that broke the rules (Trace Context level 1) \
         and were dropped, by field (traceparent, tracestate); the events were stored."
    );
    describe_gauge!(
        RETENTION_ENABLED,
        "1 when this instance prunes the log (--retention or --retention-count set), \
         0 when it keeps every event."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and the git commit herald was built from, as labels."
    );
}

/// Every counter and labelled series known in advance, at zero.
pub(super) fn zero() {
    for name in [
        STREAMS_OPENED,
        STREAMS_LAGGED,
        EVENTS_PUBLISHED,
        EVENTS_DELIVERED,
        LISTENER_RECONNECTS,
        RETENTION_PRUNED,
        CONNECTIONS_REFUSED,
        STREAM_TOPIC_CHANGES,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in END_REASONS {
        metrics::counter!(STREAMS_ENDED, "reason" => reason).absolute(0);
    }
    for source in RESUME_SOURCES {
        metrics::counter!(RESUMES, "source" => source).absolute(0);
    }
    for source in LISTENER_SOURCES {
        metrics::counter!(LISTENER_EVENTS, "source" => source).absolute(0);
    }
    for reason in RESET_REASONS {
        metrics::counter!(RESETS, "reason" => reason).absolute(0);
    }
    for reason in LIMIT_REASONS {
        metrics::counter!(LIMITED, "reason" => reason).absolute(0);
    }
    for reason in PUBLISH_REFUSALS {
        metrics::counter!(PUBLISH_REFUSED, "reason" => reason).absolute(0);
    }
    for outcome in FORWARD_OUTCOMES {
        metrics::counter!(APPEND_FORWARDED, "outcome" => outcome).absolute(0);
    }
    for field in TRACE_FIELDS {
        metrics::counter!(TRACE_DROPPED, "field" => field).absolute(0);
    }
    metrics::gauge!(STREAMS_ACTIVE).set(0.0);
    metrics::gauge!(LISTENER_ATTACHED).set(0.0);
    metrics::gauge!(APPEND_COMMITTER).set(0.0);
    metrics::gauge!(DB_WAITING).set(0.0);
    metrics::gauge!(READY).set(0.0);
    // Retention gauges exist from the start, so the "retention not running"
    // alert has a series to watch (0: no pass yet). Whether this instance
    // prunes at all is set when its retention task starts.
    metrics::gauge!(RETENTION_OLDEST_ID).set(0.0);
    metrics::gauge!(RETENTION_LAST_PRUNE).set(0.0);
    metrics::gauge!(RETENTION_ENABLED).set(0.0);
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("HERALD_COMMIT")
    )
    .set(1.0);
}
