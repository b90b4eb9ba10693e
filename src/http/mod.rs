//! The HTTP surface: the router, the state every handler shares, and the
//! request-level middleware (tracing without query strings, request counts).
//!
//! - `console`: the live console page at `/`
//! - `publish`: `POST /v1/events`
//! - `stream`: `GET /v1/stream`
//! - `history`: `GET /v1/events`
//! - `ops`: `/healthz`, `/readyz`, `/metrics`

mod console;
mod history;
mod ops;
mod publish;
#[cfg(test)]
mod query_tests;
mod stream;
pub mod stream_conn;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::hub::Hub;
use crate::listener::ListenerStatus;
use crate::log::EventLog;
use crate::subscription::StreamSettings;
use crate::telemetry;

pub use publish::PublishLimits;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub hub: Hub,
    pub streams: Arc<StreamSettings>,
    pub limits: PublishLimits,
    pub listener: Arc<ListenerStatus>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the instance begins to stop.
    pub shutdown: CancellationToken,
    /// Set when the instance begins to stop; `/readyz` fails from then on.
    pub draining: Arc<AtomicBool>,
    /// One token per open stream, so a stopping instance knows when the
    /// last one has ended.
    pub streams_open: TaskTracker,
    /// Origins allowed by CORS (`--cors-origins`).
    pub cors_origins: Arc<[String]>,
}

/// CORS for the listed origins, with credentials (cookies), so a page on
/// another origin can use `EventSource(url, {withCredentials: true})` and
/// `fetch`. `None` when no origin is listed: same-origin only.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("idempotency-key"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

pub fn router(state: AppState, cors: Option<CorsLayer>) -> Router {
    let router = routes(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .route("/favicon.svg", get(console::icon))
        .route("/v1/events", get(history::history).post(publish::publish))
        .route("/v1/stream", get(stream::stream))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_requests))
        .layer(
            // The span names the route, never the full URI: query strings may
            // carry tokens.
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                tracing::info_span!("http", method = %req.method(), route)
            }),
        )
        .with_state(state)
}

/// A JSON body that is already text (event envelopes are written once, not
/// re-serialised per response).
fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(req.uri().path().to_owned())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = telemetry::method_label(req.method());
    let res = next.run(req).await;
    metrics::counter!(
        telemetry::HTTP_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => res.status().as_u16().to_string()
    )
    .increment(1);
    res
}
