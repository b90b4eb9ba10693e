//! Operations endpoints: `/healthz` (the process answers), `/readyz` (the
//! database answers, the listener is attached, the instance is not
//! draining) and `/metrics` (Prometheus text format, with `herald_ready`
//! saying what `/readyz` would answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::telemetry;

/// Longest `/readyz` waits for PostgreSQL before calling it unreachable.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` checks, decided in one place for `/readyz` and for the
/// `herald_ready` gauge that `/metrics` reports.
struct Readiness {
    database: bool,
    listener: bool,
    draining: bool,
}

impl Readiness {
    async fn of(state: &AppState) -> Self {
        let draining = state.streams.shutdown.is_cancelled();
        let listener = state.listener.is_attached();
        let database = state.log.ping(READY_DB_TIMEOUT).await;
        let readiness = Self {
            database,
            listener,
            draining,
        };
        metrics::gauge!(telemetry::READY).set(if readiness.ready() { 1.0 } else { 0.0 });
        readiness
    }

    fn ready(&self) -> bool {
        self.database && self.listener && !self.draining
    }
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = Readiness::of(&state).await;
    let ready = readiness.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "database": readiness.database,
        "listener": readiness.listener,
        "draining": readiness.draining,
    });
    let mut res = (status, Json(body)).into_response();
    if !ready {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    res
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    // Gauges of what is only worth reading when someone asks. Readiness is
    // asked here too (one `select 1`, at most READY_DB_TIMEOUT), so that
    // Prometheus sees what a load balancer would without probing /readyz.
    Readiness::of(&state).await;
    let (frames, oldest) = state.streams.hub.ring_stats();
    metrics::gauge!(telemetry::RING_FRAMES).set(frames as f64);
    metrics::gauge!(telemetry::RING_OLDEST).set(oldest as f64);
    let pool = state.log.pool();
    let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
    metrics::gauge!(telemetry::DB_CONNECTIONS, "state" => "in_use").set(size - idle);
    metrics::gauge!(telemetry::DB_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(telemetry::DB_POOL_MAX).set(f64::from(pool.options().get_max_connections()));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
