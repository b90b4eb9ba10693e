//! `POST /v1/events`: one JSON event or an array of them (a batch, all or
//! nothing). The answer comes after the commit: `201` with the stored
//! events, or `200` with the originals when every event repeats an
//! idempotency key already stored.
//!
//! Idempotency keys come from the `key` field or the `Idempotency-Key`
//! header. For a batch, the header names the whole batch: event `i` is stored
//! under the key and its position `i`, so repeating the same batch with the
//! same header returns the same events, and no single event's key can ever
//! match one of them. An event may not carry both a `key` and the header
//! (which one wins would be a guess), and one batch may not repeat a key (a
//! `201` listing N events means N events were stored).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AppState, json_response};
use crate::error::ApiError;
use crate::event::{
    EventType, IdempotencyKey, StoredEvent, Topic, TraceContext, check_data, compact_json,
};
use crate::log::NewEvent;
use crate::telemetry;

/// Size limits on what a publisher may send.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    pub max_data_bytes: usize,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// The whole body must arrive within this (`--body-timeout`), as the
    /// request head must within the accept loop's deadline: a body that
    /// trickles in would otherwise hold its connection as long as it likes.
    pub body_timeout: std::time::Duration,
}

/// One event as a publisher sends it. Unknown fields are refused, so a typo
/// such as `tpoic` is an error rather than an event without a topic. Text
/// is borrowed from the body unless it holds an escape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    /// W3C trace context for this event, over the request's headers.
    #[serde(borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tracestate: Option<Cow<'a, str>>,
}

/// `POST /v1/events`. A refusal is logged once, here, and counted in
/// `herald_publish_refused_total` by reason.
pub async fn publish(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let answer = publish_request(state, req).await;
    if let Err(refused) = &answer {
        refused.log("/v1/events");
        let reason = match refused.status().as_u16() {
            401 => "unauthorized",
            403 => "forbidden",
            429 => "limited",
            500.. => "unavailable",
            _ => "invalid",
        };
        metrics::counter!(telemetry::PUBLISH_REFUSED, "reason" => reason).increment(1);
    }
    answer
}

async fn publish_request(state: AppState, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // Who asks comes first: a caller without a valid token learns nothing
    // about what its body would have been refused for.
    let identity = state.access.auth.identify(&parts)?;
    require_json(&parts.headers)?;
    let header_key = idempotency_header(&parts.headers)?;
    let headers = RequestTrace::of(&parts.headers);
    let body = read_body(body, &state.publish_limits).await?;
    let (events, is_batch) =
        parse_events(&body, header_key.as_ref(), &headers, &state.publish_limits)?;
    // Every event of a batch, or none: nothing is stored for a batch with
    // one topic outside the grants.
    identity
        .grants
        .check_publish(events.iter().map(|e| &e.topic))?;
    state
        .access
        .limits
        .publish(identity.subject.as_deref(), events.len())?;

    let send = telemetry::otel::on().then(|| send_span(&events, is_batch, &headers));
    let appended = state.log.append(events).await;
    if let Some(span) = &send {
        match &appended {
            Ok(appended) if !is_batch => telemetry::otel::sent(span, appended[0].event.id),
            Ok(_) => {}
            Err(e) => telemetry::otel::send_failed(span, e.kind()),
        }
    }
    drop(send);
    let appended = appended?;

    let created = appended.iter().filter(|a| a.created).count();
    log_published(&appended, created, identity.subject.as_deref());
    telemetry::events_published().increment(created as u64);
    telemetry::publish_seconds().record(started.elapsed());
    let status = if created > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = if is_batch {
        StoredEvent::envelopes_json(appended.iter().map(|a| &a.event))
    } else {
        appended[0].event.envelope_json()
    };
    Ok(json_response(status, body))
}

/// The `Idempotency-Key` header's name, made once: looked up by `&str`,
/// the name was parsed again on every publish (about 390 instructions).
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| crate::event::Invalid::Key)?;
    Ok(Some(IdempotencyKey::parse(text)?))
}

/// `application/json` or any `application/*+json`, parameters allowed.
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if is_json(value) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Whether a `Content-Type` names JSON, in any case, without copying it
/// (every publish asks).
fn is_json(content_type: &str) -> bool {
    const APPLICATION: &str = "application/";
    const SUFFIX: &str = "+json";
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let n = essence.len();
    essence.eq_ignore_ascii_case("application/json")
        || (n >= APPLICATION.len() + SUFFIX.len()
            && essence.as_bytes()[..APPLICATION.len()].eq_ignore_ascii_case(APPLICATION.as_bytes())
            && essence.as_bytes()[n - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX.as_bytes()))
}

async fn read_body(body: Body, limits: &PublishLimits) -> Result<bytes::Bytes, ApiError> {
    let limit = limits.max_body_bytes;
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        // Either the limit was hit, or the client went away mid-body (then
        // nobody reads this answer).
        Ok(Err(_)) => Err(ApiError::TooLarge(format!(
            "the request body exceeds {limit} bytes"
        ))),
        Err(_) => Err(ApiError::BodyTimeout(limits.body_timeout)),
    }
}

/// Parses and validates the body into events, all or nothing.
fn parse_events(
    body: &[u8],
    header_key: Option<&IdempotencyKey>,
    headers: &RequestTrace,
    limits: &PublishLimits,
) -> Result<(Vec<NewEvent>, bool), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {
            let one: EventIn = serde_json::from_slice(body).map_err(json_error)?;
            let key = header_key.cloned();
            Ok((vec![validate(one, key, headers, limits)?], false))
        }
        Some(b'[') => {
            let many: Vec<EventIn> = serde_json::from_slice(body).map_err(json_error)?;
            if many.is_empty() {
                return Err(ApiError::BadRequest("the batch is empty".into()));
            }
            if many.len() > limits.max_batch {
                return Err(ApiError::TooLarge(format!(
                    "the batch has {} events; at most {} are accepted",
                    many.len(),
                    limits.max_batch
                )));
            }
            let events = many
                .into_iter()
                .enumerate()
                .map(|(i, ev)| {
                    let key = header_key.map(|k| k.in_batch(i));
                    validate(ev, key, headers, limits).map_err(|e| at_index(i, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            refuse_repeated_keys(&events)?;
            Ok((events, true))
        }
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON event object or an array of them".into(),
        )),
    }
}

fn refuse_repeated_keys(events: &[NewEvent]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashMap::new();
    for (i, ev) in events.iter().enumerate() {
        if let Some(key) = &ev.key
            && let Some(first) = seen.insert(key, i)
        {
            return Err(ApiError::BadRequest(format!(
                "event {i}: repeats the idempotency key of event {first}"
            )));
        }
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!("invalid JSON body: {e}"))
}

fn at_index(i: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid(inv) => ApiError::InvalidEvent(i, inv),
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("event {i}: {m}")),
        ApiError::TooLarge(m) => ApiError::TooLarge(format!("event {i}: {m}")),
        other => other,
    }
}

fn validate(
    ev: EventIn<'_>,
    header_key: Option<IdempotencyKey>,
    headers: &RequestTrace,
    limits: &PublishLimits,
) -> Result<NewEvent, ApiError> {
    let topic = Topic::parse(&ev.topic)?;
    let event_type = match ev.event_type.as_deref() {
        Some(t) => EventType::parse(t)?,
        None => EventType::message(),
    };
    let data = match ev.data {
        Some(raw) => {
            check_data(raw.get())?;
            compact_json(raw.get())
        }
        None => "null".to_owned(),
    };
    if data.len() > limits.max_data_bytes {
        return Err(ApiError::TooLarge(format!(
            "data is {} bytes of compact JSON; at most {} are accepted",
            data.len(),
            limits.max_data_bytes
        )));
    }
    let key = match (ev.key, header_key) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give the idempotency key either as the key field or as the Idempotency-Key header, not both".into(),
            ));
        }
        (Some(k), None) => Some(IdempotencyKey::parse(&k)?),
        (None, k) => k,
    };
    let trace = match (ev.traceparent.as_deref(), ev.tracestate.as_deref()) {
        (None, None) => headers.context.clone(),
        // The event's own fields win, as a pair; invalid ones fall back to
        // the request's (the event is still part of that request).
        (parent, state) => checked(parent, state).or_else(|| headers.context.clone()),
    };
    Ok(NewEvent {
        topic,
        event_type,
        data,
        key,
        trace,
    })
}

/// `events published` at debug level (`RUST_LOG=herald::http=debug`): the
/// ids a request stored or found again, and their trace ids, to follow an
/// event from its publisher's trace. At info, a line per publish would
/// cost a busy instance more than the publish.
fn log_published(appended: &[crate::log::Appended], created: usize, subject: Option<&str>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let ids: Vec<i64> = appended.iter().map(|a| a.event.id).collect();
    let mut trace_ids: Vec<&str> = appended
        .iter()
        .filter_map(|a| a.event.trace.as_deref().map(TraceContext::trace_id))
        .collect();
    trace_ids.dedup();
    tracing::debug!(
        ids = ?ids,
        trace_id = trace_ids.join(","),
        subject = subject.unwrap_or(""),
        created,
        "events published"
    );
}

/// The `send` span of a request (`telemetry::otel`): a child of the
/// event's context when it is one event (its own fields, else the
/// headers'), of the headers' for a batch, else of the batch's first
/// event's own; named after the topic all its events share, if they do.
fn send_span(events: &[NewEvent], is_batch: bool, headers: &RequestTrace) -> tracing::Span {
    let first = &events[0];
    let same_topic = events.iter().all(|e| e.topic == first.topic);
    let parent = if is_batch {
        headers.context.as_deref().or(first.trace.as_deref())
    } else {
        first.trace.as_deref()
    };
    telemetry::otel::send_span(&telemetry::otel::Send {
        topic: same_topic.then(|| first.topic.as_str()),
        count: events.len(),
        is_batch,
        parent,
    })
}

/// The request's `traceparent` and `tracestate` headers, checked once for
/// all its events.
pub(super) struct RequestTrace {
    context: Option<Arc<TraceContext>>,
}

impl RequestTrace {
    fn of(headers: &HeaderMap) -> Self {
        // A value that is not text cannot be valid: it is dropped, and counted.
        let value = |name: &HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let (parent, state) = (value(&TRACEPARENT), value(&TRACESTATE));
        Self {
            context: (parent.is_some() || state.is_some())
                .then(|| checked(parent, state))
                .flatten(),
        }
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace context, or `None`; what was invalid is counted and dropped,
/// never refused (README, "Tracing").
fn checked(parent: Option<&str>, state: Option<&str>) -> Option<Arc<TraceContext>> {
    let (context, dropped) = TraceContext::parse(parent, state);
    for field in dropped {
        telemetry::trace_context_dropped(field).increment(1);
        tracing::debug!(field = field.as_str(), "invalid trace context dropped");
    }
    context.map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_told_in_any_case_with_parameters() {
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=utf-8",
            "application/cloudevents+json",
            "APPLICATION/PROBLEM+JSON",
        ] {
            assert!(is_json(yes), "{yes:?}");
        }
        for no in [
            "",
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "application/json+xml",
            "json",
            "+json",
            "application/",
            "; application/json",
        ] {
            assert!(!is_json(no), "{no:?}");
        }
    }
}
