//! What a stream request asks for, read once from its query string and its
//! headers, whichever writer will answer it. The history endpoint shares the
//! pieces (cursors, `since=`, filters).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::event::{Filters, TopicFilter};

/// Most topic filters on one stream or history request.
pub const MAX_FILTERS: usize = 64;

/// The earliest `since=` accepted: the Unix epoch. No event is older, and
/// PostgreSQL's timestamps do not reach as far back as every time the
/// parser can produce.
pub const SINCE_FLOOR: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Live, from now.
    Now,
    /// After this event id (`Last-Event-ID`, `last_event_id=`).
    After(i64),
    /// At the first event committed at or after this time (`since=`).
    Since(OffsetDateTime),
}

/// What one subscriber asked for.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    pub filters: Filters,
    pub start: Start,
    /// Send events without their `event:` line, so a browser dispatches
    /// every one as `message` (the type stays in the envelope).
    pub message_events: bool,
    /// `stream=<handle>`: the stream is named, and steerable.
    pub handle: Option<String>,
}

/// Whether `text` is a stream handle: 16 to 64 of `[A-Za-z0-9_-]`, long
/// enough that a client's random one (`crypto.randomUUID()`) is nobody
/// else's.
pub fn is_handle(text: &str) -> bool {
    (16..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a stream request asks for, from its query string and the values of
/// its `Last-Event-ID` header (every one of them, as the request carried
/// them: a repeated header is refused, not read one way here and another
/// there).
///
/// # Errors
/// [`ApiError`] (400) for anything malformed.
pub fn stream_request(query: &str, last_event_ids: &[&[u8]]) -> Result<StreamRequest, ApiError> {
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
        handle: q.handle,
    })
}

/// Parses an event id cursor: a non-negative integer (`0` means from the
/// beginning of the log).
///
/// # Errors
/// [`ApiError`] (400) naming `what`.
pub fn parse_cursor(what: &str, text: &str) -> Result<i64, ApiError> {
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
///
/// # Errors
/// [`ApiError`] (400) saying which forms are accepted.
pub fn parse_since(text: &str) -> Result<OffsetDateTime, ApiError> {
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

/// The filters of one request, at most [`MAX_FILTERS`] of them.
///
/// # Errors
/// [`ApiError`] (400) when there are more.
pub fn bounded_filters(filters: Vec<TopicFilter>) -> Result<Filters, ApiError> {
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::BadRequest(format!(
            "{} topic filters given; at most {MAX_FILTERS} are accepted",
            filters.len()
        )));
    }
    Ok(Filters::new(filters))
}

/// The parsed query string of a stream request.
#[derive(Debug, Default)]
struct StreamQuery {
    filters: Filters,
    last_event_id: Option<i64>,
    since: Option<OffsetDateTime>,
    message_events: bool,
    handle: Option<String>,
}

fn parse_query(query: &str) -> Result<StreamQuery, ApiError> {
    let mut filters = Vec::new();
    let mut last_event_id = None;
    let mut since = None;
    let mut message_events = false;
    let mut handle = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "topic" => filters.push(TopicFilter::parse(&value)?),
            "stream" if is_handle(&value) => handle = Some(value.into_owned()),
            "stream" => {
                return Err(ApiError::BadRequest(format!(
                    "stream must be a handle of 16 to 64 characters from [A-Za-z0-9_-] \
                     (a random UUID will do), got {value:?}"
                )));
            }
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
            // Read by `auth`, whichever endpoint it comes to.
            crate::auth::QUERY_PARAMETER => {}
            // Empty means no cursor, as for an empty `Last-Event-ID` header.
            "last_event_id" if value.trim().is_empty() => last_event_id = None,
            "last_event_id" => last_event_id = Some(parse_cursor("last_event_id", &value)?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected topic, stream, last_event_id, \
                     since, message_events or access_token"
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
        handle,
    })
}
