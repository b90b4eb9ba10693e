//! `GET /v1/stream`, from the request to the stream's end, whichever writer
//! sends it (docs/ARCHITECTURE.md, "Subscribe" and "One description of a stream").
//!
//! [`Streams::open`] decides everything about an answer once: what was
//! asked ([`query`]), the headers, the allowed origin, the subscription,
//! and the request's count in the metrics. Two writers render the
//! [`StreamResponse`] it returns and decide nothing themselves:
//! `server::raw` writes HTTP/1.x streams straight to the socket, and
//! `http::stream` answers through hyper and axum (HTTP/2, and requests the
//! accept loop leaves to hyper).
//!
//! Only malformed requests are refused; every well-formed one gets `200` at
//! once and the [`Subscription`] does the rest, so a database outage never
//! turns into a status that makes a browser's `EventSource` give up.
//!
//! - [`query`]: what a stream asks for (its query string and
//!   `Last-Event-ID`), parsed.
//! - [`subscription`]: replay, hand-over to live, heartbeats, the end.
//! - [`replay`]: where a replay reads what the ring no longer holds.
//! - [`record`]: how a stream ended, for the metrics and the log.
//! - [`drain`]: each stream's slot in a stopping instance's drain window.

mod drain;
mod expiry;
#[cfg(test)]
mod handover_tests;
mod query;
mod record;
mod replay;
mod subscription;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::error::ApiError;
use crate::event::draining_frame;
use crate::hub::Hub;
use crate::log::EventLog;
use crate::telemetry;

use crate::request::RequestHead;
#[cfg(test)]
pub use query::SINCE_FLOOR;
pub use query::{Start, StreamRequest, bounded_filters, parse_cursor, parse_since, stream_request};
pub use record::EndReason;
pub use subscription::{Subscription, Wiring};

/// The route this module answers.
pub const PATH: &str = "/v1/stream";

/// Stream settings shared by every subscriber of an instance.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub drain: Duration,
    pub queue_capacity: usize,
    /// A stream whose client takes no bytes for this long, while there are
    /// bytes to send, is ended (`--write-timeout`).
    pub write_timeout: Duration,
    /// How long before its token expires a stream is warned.
    pub expiry_warning: Duration,
}

/// Everything a stream needs from its instance; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    pub hub: Hub,
    pub log: EventLog,
    pub settings: Arc<StreamSettings>,
    /// Cancelled when the instance begins to stop.
    pub shutdown: CancellationToken,
    /// One token per open stream, so a stopping instance knows when the
    /// last one has ended.
    pub open: TaskTracker,
    /// Who may open a stream, under which caps, from which origin.
    pub access: Access,
}

/// The answer to one stream request, for a writer to render.
pub struct StreamResponse {
    pub status: StatusCode,
    /// Every header but framing (`Content-Length`, `Connection`), which is
    /// the writer's.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: StreamBody,
}

pub enum StreamBody {
    /// The event stream.
    Events(Box<Subscription>),
    /// The instance is stopping: `retry:` (in an `event: stream` frame) and
    /// the end, so the client comes back (to another instance) rather than
    /// failing.
    Retry(Bytes),
    /// The request was refused.
    Problem(ApiError),
}

impl Streams {
    /// The body of a stream that may open: everything is decided before
    /// the first byte is written, so a refusal is a status, never a
    /// stream that ends at once.
    fn subscribe(
        &self,
        head: &impl RequestHead,
        peer: IpAddr,
        lagged: CancellationToken,
    ) -> Result<StreamBody, ApiError> {
        let mut request = stream_request(head.query(), &head.header_values("last-event-id"))?;
        let identity = self.access.auth.identify(head)?;
        // A stream never runs past its token's `exp`: one at or past it
        // (within the verifier's leeway) would end as soon as it opened.
        if identity
            .expires_at
            .is_some_and(|exp| exp <= time::OffsetDateTime::now_utc())
        {
            return Err(ApiError::Unauthorized("the token has expired".into()));
        }
        request.filters = identity.grants.readable(request.filters)?;
        if self.shutdown.is_cancelled() {
            return Ok(StreamBody::Retry(draining_frame(
                self.settings.retry,
                &request.filters,
            )));
        }
        let address = self
            .access
            .limits
            .client_address(peer, &head.header_values("x-forwarded-for"));
        let slot = self
            .access
            .limits
            .open_stream(identity.subject.as_deref(), address)?;
        Ok(StreamBody::Events(Box::new(Subscription::new(
            request,
            Wiring {
                hub: self.hub.clone(),
                log: self.log.clone(),
                settings: self.settings.clone(),
                shutdown: self.shutdown.clone(),
                tracked: self.open.token(),
                lagged,
                expires_at: identity.expires_at,
                slot: Some(slot),
            },
        ))))
    }

    /// Decides the answer to a stream request from `peer`: what was asked,
    /// who asks and may they, under which caps. `lagged` is cancelled if
    /// the subscriber falls behind (see [`Wiring::lagged`]).
    pub fn open(
        &self,
        head: &impl RequestHead,
        peer: IpAddr,
        lagged: CancellationToken,
    ) -> StreamResponse {
        let origin = head.header_values("origin").first().copied();
        let mut headers = self.access.cors.headers(origin);
        let (status, body) = match self.subscribe(head, peer, lagged) {
            Err(refused) => (refused.status(), StreamBody::Problem(refused)),
            Ok(body) => (StatusCode::OK, body),
        };
        if status == StatusCode::OK {
            headers.extend([
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                // nginx and similar proxies must pass each frame on as it
                // comes.
                (
                    HeaderName::from_static("x-accel-buffering"),
                    HeaderValue::from_static("no"),
                ),
            ]);
        }
        telemetry::http_requests("GET", PATH, status).increment(1);
        StreamResponse {
            status,
            headers,
            body,
        }
    }
}
