//! Groups sent to the cluster's committer (`cluster.rs`), and taken there.
//!
//! A follower's committer sends each group it forms, as one `POST` of
//! [`APPEND_PATH`](super::cluster::APPEND_PATH) with the committer's
//! secret, without waiting for the group before it: up to
//! [`FORWARDS_IN_FLIGHT`] are on their way at once, so a request reaches
//! the committer's queue while the committer's current statement is still
//! running, as a request to the committer itself would. The committer
//! queues each request of a group as a request of its own (its deadline
//! the time its sender had left), so one request's refusal fails no other,
//! and answers them all together, in order.
//!
//! What a forward's failure means:
//! - nothing reached the committer's queue (no connection; a `4xx`, which
//!   the route answers only before it queues anything: it is not the
//!   committer any more, or the group was not one; or a full instance's
//!   `503 too_many_connections`): the group is committed where it is
//!   ([`Forwarded::NotSent`]);
//! - the group was sent and no answer came, or another `5xx`: the
//!   committer may have committed it, or not ([`Forwarded::Unknown`]);
//!   each request is answered "outcome unknown", as when PostgreSQL does
//!   not answer a commit.
//!
//! The body is JSON; each event's `data` goes through as it is (compact
//! JSON, as herald stores it), never re-encoded.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::ANSWER_MARGIN;
use super::cluster::Peer;
use super::group::AppendJob;
use crate::event::{EventType, IdempotencyKey, StoredEvent, Topic, TraceContext};
use crate::log::{Appended, EventLog, LogError, NewEvent};

/// Forwards of one instance on their way to the committer at once.
pub(super) const FORWARDS_IN_FLIGHT: usize = 4;
/// Most bytes of event data one forward carries (a group stops growing
/// there; a request alone may carry more, up to `--max-body-bytes`).
pub(super) const MAX_FORWARD_BYTES: usize = 4 << 20;
/// The body the committer takes: a full forward and room for its framing.
pub const MAX_FORWARD_BODY: usize = 4 * MAX_FORWARD_BYTES;
/// Time a forwarded request's deadline keeps back for the answer's way back:
/// the committer answers by its deadline plus [`ANSWER_MARGIN`], which is
/// then this much before the sender's own.
const RETURN_TRIP: Duration = Duration::from_millis(125);

/// Longest wait for a connection to the committer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// How a forward ended.
pub(super) enum Forwarded {
    /// Each request's answer, in order.
    Answered(Vec<Result<Vec<Appended>, LogError>>),
    /// Nothing reached the committer: commit the group here.
    NotSent(String),
    /// Sent, and no answer came.
    Unknown(String),
}

/// The client that sends groups to the committer: kept-alive connections,
/// no proxy from the environment (the instances reach each other
/// directly), herald's TLS configuration for an `https` advertised URL.
pub(super) struct Forwarder {
    client: Option<reqwest::Client>,
}

impl Forwarder {
    pub(super) fn new() -> Self {
        let client = crate::cli::tls::client_config(None)
            .map_err(|e| e.to_string())
            .and_then(|tls| {
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .no_proxy()
                    .tcp_nodelay(true)
                    // A committer that does not answer a connection at all
                    // (a host gone from the network) is given up soon, and
                    // the group committed here: nothing was sent.
                    .connect_timeout(CONNECT_TIMEOUT)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| e.to_string())
            });
        match client {
            Ok(client) => Self {
                client: Some(client),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the client to the cluster's committer; this instance commits its own appends");
                Self { client: None }
            }
        }
    }

    /// Sends `group` to `peer` and waits for its answer, at most until the
    /// group's first deadline plus [`ANSWER_MARGIN`].
    pub(super) async fn forward(&self, peer: &Peer, group: &[AppendJob]) -> Forwarded {
        let Some(client) = &self.client else {
            return Forwarded::NotSent("no client".into());
        };
        let now = Instant::now();
        let Some(first_deadline) = group.iter().map(|j| j.deadline).min() else {
            return Forwarded::Answered(Vec::new());
        };
        let body = encode(group, now);
        let limit = (first_deadline + ANSWER_MARGIN).saturating_duration_since(now);
        let sent = client
            .post(&peer.append_url)
            .header(reqwest::header::AUTHORIZATION, &peer.authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(limit)
            .body(body)
            .send()
            .await;
        let res = match sent {
            Ok(res) => res,
            Err(e) if e.is_connect() => return Forwarded::NotSent(e.to_string()),
            Err(e) => return Forwarded::Unknown(format!("the cluster's committer: {e}")),
        };
        let status = res.status();
        if status != reqwest::StatusCode::OK {
            let body = res.text().await.unwrap_or_default();
            return if refused_before_queueing(status, &body) {
                Forwarded::NotSent(format!("the committer answered {status}"))
            } else {
                Forwarded::Unknown(format!("the committer answered {status}"))
            };
        }
        let answer: Answer = match res.json().await {
            Ok(answer) => answer,
            Err(e) => {
                return Forwarded::Unknown(format!("no readable answer from the committer: {e}"));
            }
        };
        if answer.results.len() != group.len() {
            return Forwarded::Unknown(format!(
                "the committer answered {} requests of {}",
                answer.results.len(),
                group.len()
            ));
        }
        Forwarded::Answered(
            group
                .iter()
                .zip(answer.results)
                .map(|(job, outcome)| decode(&job.events, outcome))
                .collect(),
        )
    }
}

/// Whether an answer other than `200` says nothing of the group was
/// queued: a `4xx` (the route refuses only before it queues), or a full
/// instance's `503`, given before it reads a request.
fn refused_before_queueing(status: reqwest::StatusCode, body: &str) -> bool {
    status.is_client_error()
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && body.contains("\"code\":\"too_many_connections\""))
}

/// The committer's side: queues each request of `batch` as a request of
/// its own and answers them all, in order. Requests whose events are not
/// valid (no instance sends such) are refused one by one.
pub async fn take(log: &EventLog, batch: Batch) -> Answer {
    let now = Instant::now();
    let appends = batch.requests.into_iter().map(|request| async move {
        let events = match request
            .events
            .into_iter()
            .map(Event::into_new)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(events) => events,
            Err(e) => return Outcome::failed(&LogError::Refused(e)),
        };
        let deadline = now + Duration::from_millis(request.left_ms);
        match log.append_until(events, deadline).await {
            Ok(appended) => Outcome::Stored(appended.iter().map(Stored::of).collect()),
            Err(e) => Outcome::failed(&e),
        }
    });
    Answer {
        results: futures_util::future::join_all(appends).await,
    }
}

/// A forward: the group's requests, each with the time it has left.
#[derive(Serialize, Deserialize)]
pub struct Batch {
    requests: Vec<Request>,
}

#[derive(Serialize, Deserialize)]
struct Request {
    /// Milliseconds this request may wait for the log, counted from the
    /// committer's receipt of the batch.
    left_ms: u64,
    events: Vec<Event>,
}

/// An event as a forward carries it: a [`NewEvent`], or the original of an
/// idempotent repeat in an answer.
#[derive(Serialize, Deserialize)]
struct Event {
    topic: String,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl Event {
    fn of_stored(ev: &StoredEvent) -> Self {
        Self {
            topic: ev.topic.as_str().to_owned(),
            event_type: ev.event_type.as_str().to_owned(),
            data: RawValue::from_string(ev.data.to_string())
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            key: None,
            key_index: None,
            traceparent: ev.trace.as_deref().map(|t| t.traceparent().to_owned()),
            tracestate: ev
                .trace
                .as_deref()
                .and_then(|t| t.tracestate().map(str::to_owned)),
        }
    }

    fn into_new(self) -> Result<NewEvent, String> {
        let topic = Topic::parse(&self.topic).map_err(|e| e.to_string())?;
        let event_type = EventType::parse(&self.event_type).map_err(|e| e.to_string())?;
        let key = match self.key {
            Some(k) => {
                let key = IdempotencyKey::parse(&k).map_err(|e| e.to_string())?;
                Some(match self.key_index {
                    Some(i) => key.in_batch(usize::try_from(i).map_err(|e| e.to_string())?),
                    None => key,
                })
            }
            None => None,
        };
        Ok(NewEvent {
            topic,
            event_type,
            data: self.data.get().to_owned(),
            key,
            trace: self
                .traceparent
                .map(|p| Arc::new(TraceContext::from_log(p, self.tracestate))),
        })
    }

    fn into_stored(self, id: i64, time: OffsetDateTime) -> StoredEvent {
        StoredEvent {
            id,
            topic: Topic::from_log(self.topic),
            event_type: EventType::from_log(self.event_type),
            data: self.data.get().into(),
            time,
            trace: self
                .traceparent
                .map(|p| Arc::new(TraceContext::from_log(p, self.tracestate))),
        }
    }
}

/// The committer's answer: one outcome per request, in order.
#[derive(Serialize, Deserialize)]
pub struct Answer {
    results: Vec<Outcome>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// Each event's id and commit time; for an idempotent repeat, the
    /// original event as well.
    Stored(Vec<Stored>),
    /// Nothing of the request was stored, or (`outcome_unknown`) it is not
    /// known: [`LogError::kind`] and its message.
    Failed { kind: String, message: String },
}

impl Outcome {
    fn failed(e: &LogError) -> Self {
        let message = match e {
            LogError::Unavailable(m)
            | LogError::Database(m)
            | LogError::Refused(m)
            | LogError::Unknown(m) => m.clone(),
            LogError::Closed => "the cluster's committer is shutting down".into(),
        };
        Self::Failed {
            kind: e.kind().to_owned(),
            message,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: i64,
    /// Commit time, microseconds since the epoch (PostgreSQL's precision).
    time_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    original: Option<Event>,
}

impl Stored {
    fn of(a: &Appended) -> Self {
        Self {
            id: a.event.id,
            time_us: i64::try_from(a.event.time.unix_timestamp_nanos() / 1000).unwrap_or(0),
            original: (!a.created).then(|| Event::of_stored(&a.event)),
        }
    }
}

/// The body of a forward ([`Batch`]), written directly: each event's
/// `data` is already compact JSON and goes in as it is, and topics, types
/// and keys go through `serde_json`'s string escaping. (Building a
/// [`Batch`] to serialise would copy and re-validate every event's data.)
fn encode(group: &[AppendJob], now: Instant) -> Vec<u8> {
    let size: usize = group
        .iter()
        .flat_map(|j| j.events.iter())
        .map(|e| e.data.len() + e.topic.as_str().len() + e.event_type.as_str().len() + 64)
        .sum();
    let mut out = Vec::with_capacity(size + 32);
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"{\"requests\":[");
    for (i, job) in group.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let left = job
            .deadline
            .saturating_duration_since(now)
            .saturating_sub(RETURN_TRIP)
            .as_millis();
        out.extend_from_slice(b"{\"left_ms\":");
        out.extend_from_slice(
            number
                .format(u64::try_from(left).unwrap_or(u64::MAX))
                .as_bytes(),
        );
        out.extend_from_slice(b",\"events\":[");
        for (k, ev) in job.events.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"topic\":");
            string(&mut out, ev.topic.as_str());
            out.extend_from_slice(b",\"type\":");
            string(&mut out, ev.event_type.as_str());
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(ev.data.as_bytes());
            if let Some(key) = &ev.key {
                out.extend_from_slice(b",\"key\":");
                string(&mut out, key.as_str());
                if let Some(index) = key.index() {
                    out.extend_from_slice(b",\"key_index\":");
                    out.extend_from_slice(number.format(index).as_bytes());
                }
            }
            if let Some(trace) = ev.trace.as_deref() {
                out.extend_from_slice(b",\"traceparent\":");
                string(&mut out, trace.traceparent());
                if let Some(state) = trace.tracestate() {
                    out.extend_from_slice(b",\"tracestate\":");
                    string(&mut out, state);
                }
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    out
}

/// `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One request's answer, its events rebuilt from what the sender has and
/// the ids and time the committer gave them.
fn decode(events: &[NewEvent], outcome: Outcome) -> Result<Vec<Appended>, LogError> {
    match outcome {
        Outcome::Failed { kind, message } => Err(match kind.as_str() {
            "unavailable" => LogError::Unavailable(message),
            "database" => LogError::Database(message),
            "refused" => LogError::Refused(message),
            // "outcome_unknown", "closed" (the committer stopped with the
            // request taken), or a kind this version does not know.
            _ => LogError::Unknown(message),
        }),
        Outcome::Stored(stored) if stored.len() == events.len() => Ok(events
            .iter()
            .zip(stored)
            .map(|(ev, s)| {
                let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.time_us) * 1000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                match s.original {
                    Some(original) => Appended {
                        event: original.into_stored(s.id, time),
                        created: false,
                    },
                    None => Appended {
                        event: super::sql::stored(ev, s.id, time),
                        created: true,
                    },
                }
            })
            .collect()),
        Outcome::Stored(stored) => Err(LogError::Unknown(format!(
            "the committer answered {} events of {}",
            stored.len(),
            events.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(data: &str, key: Option<IdempotencyKey>) -> NewEvent {
        NewEvent {
            topic: Topic::parse("t:1").unwrap(),
            event_type: EventType::parse("message").unwrap(),
            data: data.into(),
            key,
            trace: Some(Arc::new(TraceContext::from_log(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                Some("a=1".into()),
            ))),
        }
    }

    fn job(events: Vec<NewEvent>, left: Duration) -> AppendJob {
        AppendJob {
            events,
            reply: tokio::sync::oneshot::channel().0,
            deadline: Instant::now() + left,
            claim: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_group_goes_through_a_forward_byte_for_byte() {
        let key = IdempotencyKey::parse(r#"k"1\"#).unwrap().in_batch(3);
        let keyed = new_event(
            r#"{"b":1.50,"a":[true,null,"\u00e9\n"]}"#,
            Some(key.clone()),
        );
        let mut plain = new_event("[]", None);
        plain.trace = None;
        let group = [
            job(vec![keyed.clone(), plain.clone()], Duration::from_secs(3)),
            job(vec![plain.clone()], Duration::from_millis(50)),
        ];
        let batch: Batch = serde_json::from_slice(&encode(&group, Instant::now())).unwrap();
        let [first, second] = &batch.requests[..] else {
            panic!("two requests");
        };
        assert!((2800..=2875).contains(&first.left_ms), "{}", first.left_ms);
        assert_eq!(second.left_ms, 0, "less than the way back: nothing left");
        let events: Vec<NewEvent> = batch
            .requests
            .into_iter()
            .flat_map(|r| r.events)
            .map(|e| e.into_new().unwrap())
            .collect();
        for (back, sent) in events.iter().zip([&keyed, &plain, &plain]) {
            assert_eq!(back.data, sent.data);
            assert_eq!(back.topic, sent.topic);
            assert_eq!(back.event_type, sent.event_type);
            assert_eq!(back.key, sent.key);
            assert_eq!(back.trace, sent.trace);
        }
        assert_eq!(events[0].key, Some(key));
    }

    #[test]
    fn an_answer_gives_ids_times_and_originals_back() {
        let events = [new_event("1", None), new_event("2", None)];
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_765_000_000_123_456_000).unwrap();
        let original = StoredEvent {
            id: 7,
            topic: Topic::parse("t:0").unwrap(),
            event_type: EventType::parse("old").unwrap(),
            data: "\"first\"".into(),
            time,
            trace: None,
        };
        let stored = vec![
            Stored::of(&Appended {
                event: super::super::sql::stored(&events[0], 41, time),
                created: true,
            }),
            Stored::of(&Appended {
                event: original.clone(),
                created: false,
            }),
        ];
        let text = serde_json::to_string(&Outcome::Stored(stored)).unwrap();
        let appended = decode(&events, serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(appended[0].event.id, 41);
        assert_eq!(appended[0].event.time, time);
        assert!(appended[0].created);
        assert_eq!(appended[1].event.envelope_json(), original.envelope_json());
        assert!(!appended[1].created);
    }

    #[test]
    fn only_a_refusal_before_queueing_sends_the_group_back() {
        use reqwest::StatusCode;
        for status in [401, 403, 400, 413, 404] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(refused_before_queueing(status, ""), "{status}");
        }
        let full = r#"{"status":503,"code":"too_many_connections"}"#;
        assert!(refused_before_queueing(
            StatusCode::SERVICE_UNAVAILABLE,
            full
        ));
        let other = r#"{"status":503,"code":"database_unavailable"}"#;
        assert!(!refused_before_queueing(
            StatusCode::SERVICE_UNAVAILABLE,
            other
        ));
        assert!(!refused_before_queueing(
            StatusCode::INTERNAL_SERVER_ERROR,
            ""
        ));
        assert!(!refused_before_queueing(StatusCode::BAD_GATEWAY, ""));
    }

    #[test]
    fn a_failure_keeps_its_meaning() {
        let events = [new_event("1", None)];
        for (e, stored_maybe) in [
            (LogError::Unavailable("x".into()), false),
            (LogError::Refused("x".into()), false),
            (LogError::Database("x".into()), false),
            (LogError::Unknown("x".into()), true),
            (LogError::Closed, true),
        ] {
            let text = serde_json::to_string(&Outcome::failed(&e)).unwrap();
            let back = decode(&events, serde_json::from_str(&text).unwrap()).unwrap_err();
            assert_eq!(
                matches!(back, LogError::Unknown(_)),
                stored_maybe,
                "{e:?} came back as {back:?}"
            );
        }
    }
}
