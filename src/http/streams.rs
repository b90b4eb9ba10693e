//! `PUT /v1/streams/{handle}`: replace a named stream's topics while it is
//! live, without a reconnect (docs/ARCHITECTURE.md, "Streams you can name
//! and steer").
//!
//! The caller must be the stream's subject (anonymous herald: whoever knows
//! the handle) and hold subscribe grants for every topic (`403` outside
//! them); an unknown handle, or another subject's, is `404`; more than
//! `--max-topics-per-stream` is `422`. The instance that holds the stream
//! applies the change at its hub's head and records it: the answer and the
//! stream's own `event: stream` frame carry that log id, `effective_at`.
//! Events after it follow the new topics; a topic just added is fetched up
//! to it with `GET /v1/events?topic=…&until=<effective_at>`. An empty list
//! means every topic the caller may read, as a stream without `topic=`.

use axum::body::to_bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::publish::require_json;
use super::routes::Route;
use super::{AppState, json_response};
use crate::error::ApiError;
use crate::event::{Filters, TopicFilter, topic_list};
use crate::registry::ChangeError;
use crate::stream::is_handle;

const TEMPLATE: &str = Route::StreamHandle.template();
/// Largest body taken: 64 filters of 256 characters, with room.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsBody {
    topics: Vec<String>,
}

pub async fn put(
    State(state): State<AppState>,
    Path(handle): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = change(state, handle, req).await;
    if let Err(refused) = &answer {
        refused.log(TEMPLATE);
    }
    answer
}

async fn change(state: AppState, handle: String, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let identity = state.access.auth.identify(&parts)?;
    if !is_handle(&handle) {
        return Err(ApiError::UnknownStream(handle));
    }
    require_json(&parts.headers)?;
    let body = to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(format!("the body is larger than {MAX_BODY} bytes")))?;
    let asked: TopicsBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("the body must be {{\"topics\": [filters…]}}: {e}"))
    })?;
    let max = state.max_topics_per_stream;
    if asked.topics.len() > max {
        return Err(ApiError::Unprocessable {
            code: "too_many_topics",
            detail: format!(
                "{} topics given; a stream holds at most {max} (--max-topics-per-stream)",
                asked.topics.len()
            ),
        });
    }
    let filters: Vec<TopicFilter> = asked
        .topics
        .iter()
        .map(|t| TopicFilter::parse(t))
        .collect::<Result<_, _>>()?;
    let filters = identity.grants.readable(Filters::new(filters))?;
    let effective_at = state
        .streams
        .registry
        .change_topics(&handle, identity.subject.as_deref(), filters.clone())
        .await
        .map_err(|e| refused(&handle, e))?;
    let body = serde_json::json!({
        "stream": handle,
        "topics": topic_list(&filters),
        "effective_at": effective_at.to_string(),
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

fn refused(handle: &str, e: ChangeError) -> ApiError {
    match e {
        ChangeError::Unknown => ApiError::UnknownStream(handle.to_owned()),
        ChangeError::Ended(reason) => ApiError::Conflict {
            code: if reason == "replaced" {
                "stream_replaced"
            } else {
                "stream_ended"
            },
            detail: format!("this stream was ended ({reason}); its topics cannot change"),
        },
        ChangeError::NotConnected => ApiError::Conflict {
            code: "stream_not_connected",
            detail: "no instance holds this stream now (it is reconnecting, or gone); \
                     send the change again once it is connected"
                .into(),
        },
        ChangeError::Unavailable(cause) => ApiError::Unavailable(cause),
    }
}
