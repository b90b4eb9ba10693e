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
//! - [`control`]: its mailbox for topic changes and ends sent from outside.
//!
//! A named stream (`stream=<handle>`) is looked up in the registry before
//! the answer: a handle ended for good is `409`, and a handle seen before
//! takes its own topics, with its topics over time for the resume.

mod control;
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
use crate::event::{Filters, draining_frame};
use crate::hub::Hub;
use crate::log::EventLog;
use crate::registry::{Opening, Registry};
use crate::telemetry;

use crate::request::RequestHead;
pub use control::{CapOf, ChangeFailed, Command, Control, Ending};
#[cfg(test)]
pub use query::SINCE_FLOOR;
pub use query::{
    Start, StreamRequest, bounded_filters, is_handle, parse_cursor, parse_since, stream_request,
};
pub use record::EndReason;
pub use subscription::{NamedWiring, Subscription, Wiring};

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
    /// Every stream's record, named streams' topics, control.
    pub registry: Registry,
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

/// What [`Streams::open`] decided.
pub enum Opened {
    /// The answer, decided at once: every stream but a named one.
    Ready(StreamResponse),
    /// A named stream: its answer once its record is read
    /// ([`NamedOpen::answer`]). Boxed, so that what a connection's task
    /// carries stays small.
    Named(Box<NamedOpen>),
}

/// A named stream's request, waiting for its record.
pub struct NamedOpen {
    streams: Streams,
    asked: Asked,
    lagged: CancellationToken,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A stream request read and its caller identified, before the caps and
/// the registry.
struct Asked {
    request: StreamRequest,
    identity: crate::auth::Identity,
    address: IpAddr,
    user_agent: Option<Box<str>>,
}

impl NamedOpen {
    /// Reads the stream's record, then answers as [`Streams::open`] does.
    pub async fn answer(self: Box<Self>) -> StreamResponse {
        let Self {
            streams,
            mut asked,
            lagged,
            headers,
        } = *self;
        let body = match streams.named(&mut asked).await {
            Ok(named) => streams.admit(asked, named, lagged),
            Err(answer) => answer,
        };
        streams.respond(headers, body)
    }
}

impl Streams {
    /// The request read and its caller identified; a refusal is a status,
    /// never a stream that ends at once.
    fn ask(&self, head: &impl RequestHead, peer: IpAddr) -> Result<Asked, ApiError> {
        let request = stream_request(head.query(), &head.header_values("last-event-id"))?;
        let identity = self.access.auth.identify(head)?;
        // A stream never runs past its token's `exp`: one at or past it
        // (within the verifier's leeway) would end as soon as it opened.
        if identity
            .expires_at
            .is_some_and(|exp| exp <= time::OffsetDateTime::now_utc())
        {
            return Err(ApiError::Unauthorized("the token has expired".into()));
        }
        Ok(Asked {
            request,
            identity,
            address: self
                .access
                .limits
                .client_address(peer, &head.header_values("x-forwarded-for")),
            user_agent: head
                .header_values("user-agent")
                .first()
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| v.chars().take(256).collect::<String>().into()),
        })
    }

    /// A named stream's record: a handle seen before takes its own topics,
    /// not the URL's, and its resume follows its topics over time. `Err`
    /// is the answer when it may not open.
    async fn named(
        &self,
        asked: &mut Asked,
    ) -> Result<Option<NamedWiring>, Result<StreamBody, ApiError>> {
        let Some(handle) = asked.request.handle.clone() else {
            return Ok(None);
        };
        let request = &mut asked.request;
        let cursor = match request.start {
            Start::After(id) => id,
            Start::Now => self.hub.head(),
            Start::Since(_) => 0,
        };
        let known = match self.registry.handle(&handle, cursor).await {
            Ok(known) => known,
            Err(e) => {
                // 200 and `retry:`: an `EventSource` comes back.
                tracing::warn!(error = %e, "cannot read a named stream's record");
                return Err(Ok(StreamBody::Retry(draining_frame(
                    self.settings.retry,
                    &request.filters,
                ))));
            }
        };
        let schedule = match known {
            None => Vec::new(),
            Some(known) => {
                if known.subject != asked.identity.subject {
                    return Err(Err(ApiError::Forbidden(
                        "this stream handle is another subject's; pick a new one".into(),
                    )));
                }
                if let Some(reason) = known.ended {
                    return Err(Err(ended_handle(&reason)));
                }
                request.filters = known.topics;
                known.history
            }
        };
        Ok(Some((handle, asked.identity.subject.clone(), schedule)))
    }

    /// The body of a stream that may open: grants, the drain, its record,
    /// its subscription.
    fn admit(
        &self,
        asked: Asked,
        named: Option<NamedWiring>,
        lagged: CancellationToken,
    ) -> Result<StreamBody, ApiError> {
        let Asked {
            mut request,
            identity,
            address,
            user_agent,
        } = asked;
        request.filters = identity.grants.readable(request.filters)?;
        if self.shutdown.is_cancelled() {
            return Ok(StreamBody::Retry(draining_frame(
                self.settings.retry,
                &request.filters,
            )));
        }
        // The hub matches the union of the topics in force since the
        // cursor; the stream takes from it what each id's topics take.
        let mut filters = request.filters.clone();
        if let Some((_, _, schedule)) = &named
            && schedule.len() > 1
        {
            filters = Filters::union(schedule.iter().map(|(_, f)| f));
            request.filters = filters.clone();
        }
        let enrolment = self.registry.enroll(Opening {
            handle: named.as_ref().map(|(h, _, _)| h.as_str().into()),
            subject: identity.subject.as_deref().map(Into::into),
            client_addr: address,
            user_agent,
            filters,
            start_cursor: match request.start {
                Start::After(id) => id,
                Start::Now | Start::Since(_) => self.hub.head(),
            },
            resumed: matches!(request.start, Start::After(_)),
        });
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
                enrolment: Some(enrolment),
                named,
            },
        ))))
    }

    /// Decides the answer to a stream request from `peer`: what was asked,
    /// who asks and may they, under which caps. `lagged` is cancelled if
    /// the subscriber falls behind (see [`Wiring::lagged`]). At once for
    /// every stream but a named one, whose record is read first.
    pub fn open(&self, head: &impl RequestHead, peer: IpAddr, lagged: CancellationToken) -> Opened {
        let origin = head.header_values("origin").first().copied();
        let headers = self.access.cors.headers(origin);
        let body = match self.ask(head, peer) {
            Ok(asked) if asked.request.handle.is_some() => {
                return Opened::Named(Box::new(NamedOpen {
                    streams: self.clone(),
                    asked,
                    lagged,
                    headers,
                }));
            }
            Ok(asked) => self.admit(asked, None, lagged),
            Err(refused) => Err(refused),
        };
        Opened::Ready(self.respond(headers, body))
    }

    /// The response for `body`: its status, and the headers of a stream.
    fn respond(
        &self,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Result<StreamBody, ApiError>,
    ) -> StreamResponse {
        let (status, body) = match body {
            Err(refused) => {
                // One line per refused request, as for every route
                // (README, "Logs"); whichever writer sends the answer.
                refused.log(PATH);
                (refused.status(), StreamBody::Problem(refused))
            }
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

/// The answer to a reconnect of a named stream that was ended for good:
/// `409`, so an `EventSource` stops rather than fights for a slot.
fn ended_handle(reason: &str) -> ApiError {
    match reason {
        "replaced" => ApiError::Conflict {
            code: "stream_replaced",
            detail: "this stream was replaced by a newer one of the same subject, over the cap \
                     of open streams; open a new stream (with a new handle) if this page \
                     still needs one"
                .into(),
        },
        _ => ApiError::Conflict {
            code: "stream_ended",
            detail: format!("this stream was ended ({reason}); it will not be served again"),
        },
    }
}
