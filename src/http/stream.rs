//! `GET /v1/stream`: the `text/event-stream` of matching events
//! (DESIGN.md, "Subscribe"). Only malformed requests are refused here; every
//! well-formed one gets `200` at once and the [`Subscription`] does the rest,
//! so a database outage never turns into a status that makes a browser's
//! `EventSource` give up.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use super::AppState;
use crate::error::ApiError;
use crate::event::{Filters, TopicFilter, retry_frame};
use crate::subscription::{Start, StreamRequest, Subscription};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Most topic filters on one stream.
pub const MAX_FILTERS: usize = 64;

/// The parsed query string of a stream request.
#[derive(Debug, Default)]
pub(super) struct StreamQuery {
    pub filters: Filters,
    pub last_event_id: Option<i64>,
    pub since: Option<OffsetDateTime>,
    pub message_events: bool,
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let last_event_ids: Vec<&[u8]> = headers
        .get_all("last-event-id")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let request = stream_request(query.as_deref().unwrap_or(""), &last_event_ids)?;
    let body = match subscribe(&state, request) {
        Some(sub) => Body::from_stream(sub.into_body_stream()),
        None => Body::from(retry_frame(state.streams.retry)),
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and similar proxies must pass each frame on as it comes.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// What a stream request asks for, from its query string and the values of
/// its `Last-Event-ID` header (every one of them, as the request carried
/// them: a repeated header is refused, not read one way here and another
/// there).
///
/// # Errors
/// [`ApiError`] (400) for anything malformed.
pub(crate) fn stream_request(
    query: &str,
    last_event_ids: &[&[u8]],
) -> Result<StreamRequest, ApiError> {
    let last_event_id = match last_event_ids {
        [] => None,
        [one] => Some(*one),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "Last-Event-ID is given {} times; send it once",
                last_event_ids.len()
            )));
        }
    };
    let q = parse_query(query)?;
    // The header is what `EventSource` sends on reconnect; it wins over a
    // `last_event_id` left in the URL from the first connection.
    // `since=` likewise only applies to the first connection.
    let start = match (
        last_event_id_header(last_event_id)?,
        q.last_event_id,
        q.since,
    ) {
        (Some(id), _, _) | (None, Some(id), _) => Start::After(id),
        (None, None, Some(time)) => Start::Since(time),
        (None, None, None) => Start::Now,
    };
    Ok(StreamRequest {
        filters: q.filters,
        start,
        message_events: q.message_events,
    })
}

/// The subscription for a request, or `None` when this instance is stopping:
/// then the answer is a `retry:` line and an end, so the client reconnects
/// (to another instance) rather than failing.
pub(crate) fn subscribe(state: &AppState, request: StreamRequest) -> Option<Subscription> {
    if state.shutdown.is_cancelled() {
        return None;
    }
    Some(Subscription::new(
        state.hub.clone(),
        state.log.clone(),
        request,
        state.streams.clone(),
        state.shutdown.clone(),
        state.streams_open.token(),
    ))
}

/// Parses an event id cursor: a non-negative integer (`0` means from the
/// beginning of the log).
pub(super) fn parse_cursor(what: &str, text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{what} must be an event id (a non-negative integer), got {text:?}"
            ))
        })
}

fn last_event_id_header(value: Option<&[u8]>) -> Result<Option<i64>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| ApiError::BadRequest("Last-Event-ID must be an event id".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_cursor("Last-Event-ID", text).map(Some)
}

/// Parses a start time: a duration back from now (`10m`, `1h30m`) or an
/// RFC 3339 time (`2026-11-23T08:00:00Z`), no earlier than [`SINCE_FLOOR`].
/// A duration too long to subtract from now (`12100y`) is refused like any
/// other out-of-range time, never computed (the subtraction would overflow).
pub(super) fn parse_since(text: &str) -> Result<OffsetDateTime, ApiError> {
    let text = text.trim();
    let time = match humantime::parse_duration(text) {
        Ok(ago) => time::Duration::try_from(ago)
            .ok()
            .and_then(|ago| OffsetDateTime::now_utc().checked_sub(ago)),
        Err(_) => Some(OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
            ApiError::BadRequest(format!(
                "since must be a duration such as 10m or an RFC 3339 time such as \
                 2026-11-23T08:00:00Z, got {text:?}"
            ))
        })?),
    };
    time.filter(|t| *t >= SINCE_FLOOR).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "since {text:?} reaches back before 1970-01-01T00:00:00Z; no event is older"
        ))
    })
}

/// The earliest `since=` accepted: the Unix epoch. No event is older, and
/// PostgreSQL's timestamps do not reach as far back as every time the
/// parser can produce.
pub const SINCE_FLOOR: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

/// The filters of one request, at most [`MAX_FILTERS`] of them.
pub(super) fn bounded_filters(filters: Vec<TopicFilter>) -> Result<Filters, ApiError> {
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::BadRequest(format!(
            "{} topic filters given; at most {MAX_FILTERS} are accepted",
            filters.len()
        )));
    }
    Ok(Filters::new(filters))
}

fn parse_query(query: &str) -> Result<StreamQuery, ApiError> {
    let mut filters = Vec::new();
    let mut last_event_id = None;
    let mut since = None;
    let mut message_events = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "topic" => filters.push(TopicFilter::parse(&value)?),
            "since" => since = Some(parse_since(&value)?),
            "message_events" => {
                message_events = match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "message_events must be true or false, got {value:?}"
                        )));
                    }
                };
            }
            // Empty means no cursor, as for an empty `Last-Event-ID` header.
            "last_event_id" if value.trim().is_empty() => last_event_id = None,
            "last_event_id" => last_event_id = Some(parse_cursor("last_event_id", &value)?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected topic, last_event_id, since \
                     or message_events"
                )));
            }
        }
    }
    let filters = bounded_filters(filters)?;
    if last_event_id.is_some() && since.is_some() {
        return Err(ApiError::BadRequest(
            "give last_event_id or since, not both".into(),
        ));
    }
    Ok(StreamQuery {
        filters,
        last_event_id,
        since,
        message_events,
    })
}
