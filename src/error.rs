//! Every refusal as an `application/problem+json` body (RFC 9457) with the
//! status docs/ARCHITECTURE.md assigns. Handlers return `Result<_, ApiError>` and use `?`.
//!
//! Problem `type` is `about:blank` (RFC 9457 §4.2.1), so `title` is the
//! status phrase; the machine-readable reason is the `code` extension member
//! and the human one is `detail`. 5xx bodies say nothing of the cause, which
//! is logged once here instead.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::Invalid;
use crate::log::LogError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// An invalid event of a batch, by position.
    #[error("event {0}: {1}")]
    InvalidEvent(usize, Invalid),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "the body must be JSON, sent with the header Content-Type: application/json \
         (curl: -H 'Content-Type: application/json'); herald does not guess, so that \
         a cross-site form can never publish with a visitor's cookies"
    )]
    UnsupportedMediaType,
    /// The request body did not arrive in time; the connection is closed.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// A request head that is not HTTP/1 (answered by the accept loop).
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    /// A request head with too many headers or too many bytes.
    #[error("the request head is too large: {0}")]
    HeadTooLarge(String),
    /// No token, or one that does not verify: why, never the token itself.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose grants do not cover the request.
    #[error("{0}")]
    Forbidden(String),
    /// A cap or rate limit: why, which one (a metric label), and when to
    /// try again.
    #[error("{detail}")]
    Limited {
        detail: String,
        reason: &'static str,
        retry_after: std::time::Duration,
    },
    /// The instance holds as many connections as it may
    /// (`--max-connections`): a 503 with `Retry-After`, so the client
    /// comes back, to this instance or another.
    #[error(
        "herald holds as many connections as it may ({0}); retry later, or on another instance"
    )]
    TooManyConnections(usize),
    #[error("no route for {0}")]
    NotFound(String),
    /// A stream handle this caller does not hold: unknown, or another
    /// subject's (not told apart, so a handle's existence does not leak).
    #[error("no stream {0:?} of yours is known")]
    UnknownStream(String),
    /// The request conflicts with the state of a stream: `code` says which
    /// (`stream_replaced`, `stream_ended`, `stream_not_connected`).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// Well-formed, but more than herald takes (`too_many_topics`).
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    /// The cause is for the log line, never the client.
    #[error("the event log is unavailable; nothing was stored, retry later")]
    Unavailable(String),
    /// The commit went out and PostgreSQL never answered (README, "Errors").
    #[error(
        "the event log did not confirm in time whether the event was stored; \
         retry with the same Idempotency-Key to store it exactly once"
    )]
    OutcomeUnknown(String),
    /// PostgreSQL refused this request's content although it passed
    /// validation; nothing was stored.
    #[error("PostgreSQL refused this event; nothing was stored")]
    RefusedByLog(String),
    /// A history cursor below the pruning floor: the events after it that
    /// retention removed cannot be returned (the stream's reset frame
    /// `cursor_too_old`, as an HTTP answer).
    #[error(
        "after={after} is older than the oldest event the log still holds ({oldest_id}): \
         the events up to {pruned_through} were removed by retention; refetch your state, \
         then page on from a recent id",
        pruned_through = oldest_id - 1
    )]
    CursorTooOld { after: i64, oldest_id: i64 },
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    problem_type: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'static str,
    /// `cursor_too_old`: the oldest id the log still holds, a string as ids
    /// are in envelopes and reset frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_id: Option<String>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_)
            | Self::InvalidEvent(..)
            | Self::BadRequest(_)
            | Self::MalformedRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) | Self::UnknownStream(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) | Self::OutcomeUnknown(_) | Self::TooManyConnections(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RefusedByLog(_) => StatusCode::BAD_REQUEST,
            Self::CursorTooOld { .. } => StatusCode::GONE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(invalid) | Self::InvalidEvent(_, invalid) => match invalid {
                Invalid::Topic(_) => "invalid_topic",
                Invalid::Filter(_) => "invalid_filter",
                Invalid::Type(_) => "invalid_type",
                Invalid::ReservedType(_) => "reserved_type",
                Invalid::Key => "invalid_key",
                Invalid::Data(_) => "invalid_data",
            },
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout(_) => "body_timeout",
            Self::MalformedRequest(_) => "malformed_request",
            Self::HeadTooLarge(_) => "head_too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Limited { reason, .. } => reason,
            Self::TooManyConnections(_) => "too_many_connections",
            Self::NotFound(_) => "not_found",
            Self::UnknownStream(_) => "unknown_stream",
            Self::Conflict { code, .. } | Self::Unprocessable { code, .. } => code,
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Unavailable(_) => "database_unavailable",
            Self::OutcomeUnknown(_) => "outcome_unknown",
            Self::RefusedByLog(_) => "refused_by_database",
            Self::CursorTooOld { .. } => "cursor_too_old",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Unavailable(cause) => Self::Unavailable(cause),
            LogError::Closed => Self::Unavailable("the event log is shutting down".into()),
            LogError::Unknown(cause) => Self::OutcomeUnknown(cause),
            LogError::Refused(cause) => Self::RefusedByLog(cause),
            LogError::Database(cause) => Self::Internal(cause),
        }
    }
}

impl ApiError {
    /// What went wrong behind a 5xx (or a refusal by PostgreSQL), for the
    /// one log line a handler writes; never sent to the client.
    pub fn cause(&self) -> Option<&str> {
        match self {
            Self::Unavailable(c)
            | Self::OutcomeUnknown(c)
            | Self::RefusedByLog(c)
            | Self::Internal(c) => Some(c),
            _ => None,
        }
    }

    /// Logs this refusal of a request to `route`: one line, at `warn` for
    /// what the database did and `error` for a defect, `info` for a
    /// client's mistake. Never the request's token or body.
    pub fn log(&self, route: &'static str) {
        let (status, code) = (self.status().as_u16(), self.code());
        match (self, self.cause()) {
            (Self::Internal(_), cause) => {
                tracing::error!(route, status, code, cause, "request failed");
            }
            (_, Some(cause)) => tracing::warn!(route, status, code, cause, "request refused"),
            (_, None) => tracing::info!(route, status, code, detail = %self, "request refused"),
        }
    }
}

impl ApiError {
    /// The refusal's headers and problem+json body, for any writer: axum
    /// through [`IntoResponse`], the accept loop and the raw stream writer
    /// straight to a socket.
    pub fn problem(&self) -> (Vec<(HeaderName, HeaderValue)>, String) {
        let status = self.status();
        let body = Problem {
            problem_type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            oldest_id: match self {
                Self::CursorTooOld { oldest_id, .. } => Some(oldest_id.to_string()),
                _ => None,
            },
        };
        let mut headers = vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )];
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.push((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        if let Self::Limited { retry_after, .. } = self {
            // Whole seconds, rounded up: never earlier than the limit allows.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.push((header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.push((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald\""),
            ));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be
            // used for another request.
            headers.push((header::CONNECTION, HeaderValue::from_static("close")));
        }
        (headers, serde_json::to_string(&body).unwrap_or_default())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (headers, body) = self.problem();
        let mut res = (self.status(), body).into_response();
        for (name, value) in headers {
            res.headers_mut().insert(name, value);
        }
        res
    }
}
