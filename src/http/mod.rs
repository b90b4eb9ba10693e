//! The HTTP surface through axum: the router, the state every handler
//! shares, and the request-level middleware (CORS, tracing without query
//! strings, request counts).
//!
//! - `console`: the live console page at `/`
//! - `publish`: `POST /v1/events`
//! - `stream`: `GET /v1/stream` through hyper (the accept loop in
//!   `server/` writes most streams straight to the socket)
//! - `history`: `GET /v1/events`
//! - `ops`: `/healthz`, `/readyz`, `/metrics`

mod console;
mod history;
mod ops;
mod publish;
#[cfg(test)]
mod query_tests;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::listener::ListenerStatus;
use crate::log::EventLog;
use crate::stream::Streams;
use crate::{cors, telemetry};

pub use publish::PublishLimits;

/// What every handler shares, behind one `Arc`: axum clones the state for
/// every request, and cloning the parts one by one (a dozen reference
/// counts, and a lock for the shutdown token) showed in profiles of the
/// publish path. Reads go through `Deref` to [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub log: EventLog,
    pub streams: Streams,
    pub limits: PublishLimits,
    pub listener: Arc<ListenerStatus>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    let cors = state.streams.cors.clone();
    Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .route("/favicon.svg", get(console::icon))
        .route("/v1/events", get(history::history).post(publish::publish))
        .route(crate::stream::PATH, get(stream::stream))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(cors, cors::layer))
        .layer(middleware::from_fn(count_requests))
        .layer(
            // The span names the route, never the full URI: query strings may
            // carry tokens. It is a debug span (on with
            // `RUST_LOG=info,herald::http=debug`): the logs at the default
            // level that a request writes name their route themselves
            // (`ApiError::log`), and making and formatting a span for every
            // request was about 3 % of herald's CPU under a publish load.
            // Streams written straight to the socket never had one.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str);
                    tracing::debug_span!("http", method = %req.method(), route)
                })
                // Handlers log their own refusals, once; a `/readyz` 503
                // during a planned drain is not an error at all.
                .on_failure(()),
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

/// Counts every request answered, by method, route and status. Stream
/// requests are counted where their answer is decided (`Streams::open`),
/// whichever writer sends it, so not here.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = telemetry::method_label(req.method());
    let res = next.run(req).await;
    if route != crate::stream::PATH || method != "GET" {
        metrics::counter!(
            telemetry::HTTP_REQUESTS,
            "method" => method,
            "route" => route,
            "status" => res.status().as_u16().to_string()
        )
        .increment(1);
    }
    res
}
