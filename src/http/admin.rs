//! The admin API (the grant `"herald": {"admin": true}`, or anyone in
//! anonymous mode): who is connected, across instances, and ending their
//! streams (docs/ARCHITECTURE.md, "Streams you can name and steer").
//!
//! - `GET /v1/streams?subject=S&topic=T&handle=H&state=open|ended|all&limit=N`
//!   lists streams from the registry, newest first (open ones by default).
//! - `DELETE /v1/streams/{handle}` ends one stream (by handle, or by the id
//!   the list gives an unnamed one) on whichever instance holds it, with
//!   `event: revoked`; a named one's reconnect is then `409 stream_ended`.
//! - `DELETE /v1/subjects/{sub}/streams` ends every stream of the subject
//!   everywhere (`event: revoked`) and refuses its tokens issued before the
//!   call for `--revocation-window`.
//!
//! - `GET /v1/events/{id}/deliveries?subject=S`: whether S got the event,
//!   and if not, why, from the log and the registry (`registry/audit.rs`).
//!
//! The registry is written in batches, so a stream opened a moment ago may
//! not be listed yet; ends travel through PostgreSQL and land within a
//! second.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::routes::Route;
use super::{AppState, json_response};
use crate::error::ApiError;
use crate::registry::{AuditError, ListQuery, StreamState};
use crate::stream::parse_cursor;

const LIST: &str = Route::Streams.template();
const ONE: &str = Route::StreamHandle.template();
const SUBJECT: &str = Route::SubjectStreams.template();
const DELIVERIES: &str = Route::EventDeliveries.template();

/// The request's head, if the caller holds the admin grant.
fn admin(state: &AppState, req: Request) -> Result<axum::http::request::Parts, ApiError> {
    let (parts, _) = req.into_parts();
    state.access.auth.identify(&parts)?.grants.check_admin()?;
    Ok(parts)
}

/// `answer`, with a refusal logged once under `route`.
fn logged(route: &'static str, answer: Result<Response, ApiError>) -> Result<Response, ApiError> {
    if let Err(refused) = &answer {
        refused.log(route);
    }
    answer
}

pub async fn list(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let answer = async {
        let parts = admin(&state, req)?;
        let query = parse_list(parts.uri.query().unwrap_or(""))?;
        let streams = state.streams.registry.list(&query).await?;
        let body = serde_json::json!({ "streams": streams });
        Ok(json_response(StatusCode::OK, body.to_string()))
    }
    .await;
    logged(LIST, answer)
}

pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        let parts = admin(&state, req)?;
        let id = parse_cursor("id", &id)?;
        let subject = subject_of(parts.uri.query().unwrap_or(""))?;
        let audit = state
            .streams
            .registry
            .audit(id, &subject)
            .await
            .map_err(|e| match e {
                AuditError::Unknown => {
                    ApiError::NotFound(format!("no event #{id}: the log never assigned that id"))
                }
                AuditError::Log(e) => e.into(),
            })?;
        Ok(json_response(
            StatusCode::OK,
            serde_json::to_string(&audit).unwrap_or_default(),
        ))
    }
    .await;
    logged(DELIVERIES, answer)
}

/// The one `subject=` an audit needs.
fn subject_of(query: &str) -> Result<String, ApiError> {
    let mut subject = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "subject" if !value.is_empty() => subject = Some(value.into_owned()),
            "subject" => {}
            "access_token" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected subject"
                )));
            }
        }
    }
    subject.ok_or_else(|| {
        ApiError::BadRequest("give subject=: whose delivery of the event to explain".into())
    })
}

pub async fn end_one(
    State(state): State<AppState>,
    Path(target): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        admin(&state, req)?;
        if !state.streams.registry.end_stream(&target).await? {
            return Err(ApiError::UnknownStream(target));
        }
        let body = serde_json::json!({ "stream": target, "ended": true });
        Ok(json_response(StatusCode::OK, body.to_string()))
    }
    .await;
    logged(ONE, answer)
}

pub async fn revoke(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        admin(&state, req)?;
        let revocation = state.streams.registry.revoke(&subject).await?;
        let format = time::format_description::well_known::Rfc3339;
        let body = serde_json::json!({
            "subject": subject,
            "revoked_at": revocation.revoked_at.format(&format).unwrap_or_default(),
            "tokens_refused_until": revocation.expires_at.format(&format).unwrap_or_default(),
        });
        Ok(json_response(StatusCode::OK, body.to_string()))
    }
    .await;
    logged(SUBJECT, answer)
}

fn parse_list(query: &str) -> Result<ListQuery, ApiError> {
    let mut list = ListQuery {
        subject: None,
        topic: None,
        handle: None,
        state: StreamState::Open,
        limit: 100,
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "subject" => list.subject = Some(value.into_owned()),
            "topic" => list.topic = Some(value.into_owned()),
            "handle" => list.handle = Some(value.into_owned()),
            "state" => {
                list.state = match &*value {
                    "open" => StreamState::Open,
                    "ended" => StreamState::Ended,
                    "all" => StreamState::All,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "state must be open, ended or all, got {other:?}"
                        )));
                    }
                };
            }
            "limit" => {
                let n = parse_cursor("limit", &value)?;
                if !(1..=crate::registry::MAX_LISTED).contains(&n) {
                    return Err(ApiError::BadRequest(format!(
                        "limit must be from 1 to {}, got {n}",
                        crate::registry::MAX_LISTED
                    )));
                }
                list.limit = n;
            }
            crate::auth::QUERY_PARAMETER => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected subject, topic, handle, state, \
                     limit or access_token"
                )));
            }
        }
    }
    Ok(list)
}
