//! The HTTP surface through axum: the router, the state every handler
//! shares, and what every request passes through around it (`edge`: the
//! head limit, CORS, a span without query strings, request counts).
//!
//! - `console`: the live console page at `/`
//! - `publish`: `POST /v1/events`
//! - `stream`: `GET /v1/stream` through hyper (the accept loop in
//!   `server/` writes most streams straight to the socket)
//! - `history`: `GET /v1/events`
//! - `streams`: `PUT /v1/streams/{handle}`, a named stream's topics
//! - `admin`: listing streams, ending them, revoking subjects
//! - `cluster`: `POST /v1/cluster/append`, other instances' groups sent to
//!   the cluster's committer
//! - `ops`: `/healthz`, `/readyz`, `/metrics`
//! - `routes`: the one table of routes the others are named from

mod admin;
mod client;
mod cluster;
mod console;
mod edge;
mod history;
mod ops;
mod publish;
#[cfg(test)]
mod query_tests;
pub mod routes;
mod stream;
mod streams;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Access;
use crate::error::ApiError;
use crate::log::{Cluster, EventLog};
use crate::stream::Streams;
use crate::tail::ListenerStatus;

pub use edge::Edge;
pub use publish::PublishLimits;
use routes::Route;
pub use stream::{ConnectionCut, Peer};

/// What every handler shares, behind one `Arc`: axum clones the state for
/// every request, and cloning the parts one by one (a dozen reference
/// counts, and a lock for the shutdown token) showed in profiles of the
/// publish path. Reads go through `Deref` to [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub log: EventLog,
    pub streams: Streams,
    /// Who may ask, under which caps and rates, from which origin.
    pub access: Access,
    /// How large and how many events a publish may carry.
    pub publish_limits: PublishLimits,
    pub listener: Arc<ListenerStatus>,
    pub metrics: PrometheusHandle,
    /// `--max-topics-per-stream`, for `PUT /v1/streams/{handle}`.
    pub max_topics_per_stream: usize,
    /// Whether this instance commits for the cluster, and with which
    /// secret it takes the others' groups.
    pub cluster: Cluster,
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

/// The router, with what every request passes through around it.
/// `max_head`: the largest request head taken (see [`Edge::new`]).
pub fn service(state: AppState, max_head: usize) -> Edge {
    Edge::new(router(state.clone()), state, max_head)
}

/// The routes, one per [`Route`] (whose template is also the `route`
/// label of the request count, named from the path before routing).
fn router(state: AppState) -> Router {
    Router::new()
        .route(Route::Console.template(), get(console::index))
        .route(Route::ConsoleScript.template(), get(console::script))
        .route(Route::ConsoleStyle.template(), get(console::style))
        .route(Route::Icon.template(), get(console::icon))
        .route(Route::HeraldScript.template(), get(client::script))
        // The edge answers `POST` (publishing) before routing (`edge.rs`).
        // It is named here too, with the same handler, so that the router
        // still describes every method of every route: a 405 lists them
        // in `Allow`.
        .route(
            Route::Events.template(),
            get(history::history).post(publish::publish),
        )
        .route(Route::EventDeliveries.template(), get(admin::deliveries))
        .route(Route::Stream.template(), get(stream::stream))
        .route(Route::Streams.template(), get(admin::list))
        .route(
            Route::StreamHandle.template(),
            axum::routing::put(streams::put).delete(admin::end_one),
        )
        .route(Route::SubjectStreams.template(), delete(admin::revoke))
        .route(
            Route::ClusterAppend.template(),
            axum::routing::post(cluster::append),
        )
        .route(Route::Healthz.template(), get(ops::healthz))
        .route(Route::Readyz.template(), get(ops::readyz))
        .route(Route::Metrics.template(), get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
