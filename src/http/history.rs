//! `GET /v1/events?after=ID&topic=…&limit=N`: the log as JSON, for clients
//! that sync over plain HTTP and for snapshot-plus-delta recovery. The events
//! and their envelopes are exactly those the stream sends, oldest first; to
//! page on, pass the last id as the next `after`.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::value::RawValue;

use super::AppState;
use super::stream::{MAX_FILTERS, parse_cursor};
use crate::error::ApiError;
use crate::event::{Filters, TopicFilter};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

pub async fn history(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Box<RawValue>>>, ApiError> {
    let (after, filters, limit) = parse_query(query.as_deref().unwrap_or(""))?;
    let events = state.log.read_after(after, &filters, limit).await?;
    Ok(Json(events.iter().map(|e| e.envelope_raw()).collect()))
}

fn parse_query(query: &str) -> Result<(i64, Filters, i64), ApiError> {
    let mut after = 0;
    let mut filters = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "after" => after = parse_cursor("after", &value)?,
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
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected after, topic or limit"
                )));
            }
        }
    }
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::BadRequest(format!(
            "{} topic filters given; at most {MAX_FILTERS} are accepted",
            filters.len()
        )));
    }
    Ok((after, Filters::new(filters), limit))
}
