//! What every request answered by the router passes through, before its
//! route and after it, as one service around the whole router: the
//! request-head limit, the CORS decision, a `debug` span, and the request
//! count.
//!
//! One hand-written service rather than a stack of layers, because the
//! stack cost about as much as the route behind it. axum applies a
//! `Router::layer` to every route, so each request cloned the boxed route
//! once per layer and boxed a future per layer: the four layers (three
//! `from_fn` and tower-http's `TraceLayer`) took 14,600 of the 92,800
//! instructions herald spent on one published event, and most of its 118
//! allocations (callgrind, 3,000 publishes; `BENCHMARKS.md`, "One service
//! around the router"). Around the whole router this is one reference
//! count and one boxed future per request. The price is that the route is
//! not known before routing: [`Route::of`] names it from the path, as
//! axum's `MatchedPath` would (`routes.rs`).
//!
//! One route is answered here without the router: `POST /v1/events`, the
//! way in of every event. Routing cost a publish about 4,000 of its 74,300
//! instructions (callgrind, `BENCHMARKS.md`, "The publish route without
//! the router"): matching the path, inserting the matched path and its
//! parameters as extensions (a map allocated per request), cloning the
//! route's boxed service and boxing its future, for a route the edge has
//! already named. The router still names every route and method, this
//! one with the same handler, so a method `/v1/events` does not take is
//! refused with both in `Allow` (405) as before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, header};
use axum::response::{IntoResponse, Response};
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::routes::Route;
use super::{AppState, publish};
use crate::error::ApiError;
use crate::telemetry;

/// The router with what every request passes through. Cheap to clone (one
/// reference count), as hyper's glue clones it for every request.
#[derive(Clone)]
pub struct Edge(Arc<Inner>);

struct Inner {
    router: Router,
    /// What the publish handler is given (the router's own state), and
    /// the CORS decision (`state.access.cors`).
    state: AppState,
    /// Largest request head taken (431 beyond).
    max_head: usize,
}

impl Edge {
    /// `max_head`: the largest request head taken, as HTTP/1.1 would write
    /// it (431 beyond). The accept loop refuses the first head of an
    /// HTTP/1 connection itself; this catches an HTTP/2 request, or a later
    /// request on a kept-alive HTTP/1 connection.
    pub fn new(router: Router, state: AppState, max_head: usize) -> Self {
        Self(Arc::new(Inner {
            router,
            state,
            max_head,
        }))
    }

    /// The answer to `req`, as hyper's calls get it (the accept loop's
    /// own publish path, `server/publish.rs`, calls this).
    pub async fn answer(&self, req: Request<Body>) -> Response {
        self.0.answer(req).await
    }

    /// The largest publish body taken (`--max-body-bytes`).
    pub fn max_body_bytes(&self) -> usize {
        self.0.state.publish_limits.max_body_bytes
    }
}

impl<B> Service<Request<B>> for Edge
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { Ok(inner.answer(req.map(Body::new)).await) })
    }
}

impl Inner {
    async fn answer(&self, req: Request<Body>) -> Response {
        if head_size(&req) > self.max_head {
            let max = self.max_head;
            return ApiError::HeadTooLarge(format!("a request head over {max} bytes"))
                .into_response();
        }
        let route = Route::of(req.uri().path());
        let label = Route::label_of(route);
        let method = telemetry::method_label(req.method());
        // The span names the route, never the full URI: query strings may
        // carry tokens. It is a debug span (on with
        // `RUST_LOG=info,herald::http=debug`): the logs at the default
        // level that a request writes name their route themselves
        // (`ApiError::log`), and making and formatting a span for every
        // request was about 3 % of herald's CPU under a publish load.
        // It covers a request until its answer's head: a body streamed
        // after that (a stream over HTTP/2) is outside it, and streams
        // written straight to the socket never had one.
        let span = tracing::debug_span!("http", method, route = label);
        let res = self.route(req, route).instrument(span).await;
        // Stream requests are counted where their answer is decided
        // (`Streams::open`), whichever writer sends it.
        if route != Some(Route::Stream) || method != "GET" {
            telemetry::http_requests(method, label, res.status()).increment(1);
        }
        res
    }

    /// A preflight's answer, or the router's with the CORS headers added.
    /// The stream route's answers carry theirs already (from the stream's
    /// description), so they are left as they are.
    async fn route(&self, req: Request<Body>, route: Option<Route>) -> Response {
        let cors = &self.state.access.cors;
        if !cors.is_enabled() {
            return self.call_route(req, route).await;
        }
        let origin: Option<HeaderValue> = req.headers().get(header::ORIGIN).cloned();
        let origin = origin.as_ref().map(HeaderValue::as_bytes);
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return cors.preflight(origin);
        }
        let mut res = self.call_route(req, route).await;
        // herald.js answers every origin itself (`client.rs`).
        if route != Some(Route::Stream) && route != Some(Route::HeraldScript) {
            let h = res.headers_mut();
            for (name, value) in cors.headers(origin) {
                h.append(name, value);
            }
        }
        res
    }

    /// The publish handler for a publish; the router for the rest.
    async fn call_route(&self, req: Request<Body>, route: Option<Route>) -> Response {
        if route == Some(Route::Events) && req.method() == Method::POST {
            return publish::publish(State(self.state.clone()), req)
                .await
                .into_response();
        }
        match self.router.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}

/// The size of `req`'s head as HTTP/1.1 would write it.
fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    // "GET /target HTTP/1.1\r\n", the headers ("name: value\r\n"), "\r\n".
    let line = req.method().as_str().len() + 1 + target + 11;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_what_http1_would_write() {
        let req = Request::get("/v1/events?topic=a")
            .header("host", "x")
            .body(())
            .unwrap();
        // "GET /v1/events?topic=a HTTP/1.1\r\n" + "host: x\r\n" + "\r\n"
        assert_eq!(head_size(&req), 33 + 9 + 2);
    }
}
