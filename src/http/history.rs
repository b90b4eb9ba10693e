//! `GET /v1/events?after=ID&topic=…&limit=N` (or `since=10m` instead of
//! `after`): the log as JSON, for clients
//! that sync over plain HTTP and for snapshot-plus-delta recovery. The events
//! and their envelopes are exactly those the stream sends, oldest first; to
//! page on, pass the last id as the next `after`. An `after` below the
//! retention floor is answered `410 cursor_too_old`, the counterpart of the
//! stream's reset frame. `until=ID` (inclusive) stops at an id: a client
//! that added a topic to a named stream fetches that topic's state up to
//! the change's `effective_at`, and the stream brings the rest.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{AppState, json_response};
use crate::error::ApiError;
use crate::event::{Filters, StoredEvent, TopicFilter};
use crate::stream::{bounded_filters, parse_cursor, parse_since};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// `GET /v1/events`; a refusal is logged once, here.
pub async fn history(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let answer = history_request(state, req).await;
    if let Err(refused) = &answer {
        refused.log("/v1/events");
    }
    answer
}

async fn history_request(state: AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let (after, filters, limit, until) = parse_query(parts.uri.query().unwrap_or(""))?;
    let identity = state.access.auth.identify(&parts)?;
    let filters = identity.grants.readable(filters)?;
    let mut read = match after {
        After::Id(id) => {
            let read = state.log.read_after(id, &filters, limit).await?;
            // Events after `id` may have been pruned: say so rather than
            // answer as if there were none (README, "Retention").
            if read.passed_over(id) {
                return Err(ApiError::CursorTooOld {
                    after: id,
                    oldest_id: read.head.pruned_through + 1,
                });
            }
            read
        }
        // No cursor, or a time: whatever the log holds from there, which
        // starts at its oldest event when the rest was pruned.
        After::Start => state.log.read_after(0, &filters, limit).await?,
        After::Since(time) => {
            let cursor = state.log.cursor_at(time).await?;
            state.log.read_after(cursor, &filters, limit).await?
        }
    };
    if let Some(until) = until {
        // Reads are in id order: what passes `until` is a tail.
        read.events.retain(|e| e.id <= until);
    }
    Ok(json_response(
        StatusCode::OK,
        StoredEvent::envelopes_json(&read.events),
    ))
}

pub(super) enum After {
    Id(i64),
    /// Neither `after` nor `since`: from the oldest event held.
    Start,
    Since(time::OffsetDateTime),
}

pub(super) fn parse_query(query: &str) -> Result<(After, Filters, i64, Option<i64>), ApiError> {
    let mut after = None;
    let mut until = None;
    let mut since = None;
    let mut filters = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "after" => after = Some(parse_cursor("after", &value)?),
            "since" => since = Some(parse_since(&value)?),
            "until" => until = Some(parse_cursor("until", &value)?),
            "topic" => filters.push(TopicFilter::parse(&value)?),
            "limit" => {
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be a whole number from 1 to {MAX_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            crate::auth::QUERY_PARAMETER => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected after, since, until, topic, \
                     limit or access_token"
                )));
            }
        }
    }
    let filters = bounded_filters(filters)?;
    let after = match (after, since) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give after or since, not both".into()));
        }
        (Some(id), None) => After::Id(id),
        (None, Some(time)) => After::Since(time),
        (None, None) => After::Start,
    };
    Ok((after, filters, limit, until))
}
