//! The event model: topics, types, keys and filters (`names`), and what a
//! stored event becomes on the wire: its JSON envelope and its SSE frame.
//!
//! Parse, don't validate: a [`Topic`], [`EventType`] or [`TopicFilter`] exists
//! only if its text passed the rules, so nothing a publisher sends can reach an
//! SSE `id:`, `event:` or `data:` line with a CR or LF in it
//! (WHATWG HTML, "Server-sent events", §9.2.5 interpreting an event stream).

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod data;
mod names;
mod trace;

pub use data::check_data;
pub use names::*;
pub use trace::{Dropped as TraceDropped, TraceContext};

/// Removes the insignificant white space from JSON text that has already
/// been validated, so `data` fits on one SSE `data:` line while keeping the
/// publisher's key order and number spelling. JSON strings cannot hold a raw
/// CR or LF, so the result has none.
pub fn compact_json(valid_json: &str) -> String {
    let bytes = valid_json.as_bytes();
    // What JSON encoders write (JSON.stringify, serde_json) is compact
    // already: a copy.
    if !bytes.iter().any(|&b| is_json_space(b)) {
        return valid_json.to_owned();
    }
    // By bytes: every byte of a multi-byte UTF-8 character is above 0x7F,
    // so none is taken for a quote, a backslash or white space, and each
    // passes through unchanged.
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_json_space(b) {
            continue;
        }
        out.push(b);
    }
    // Only ASCII white space outside strings was left out.
    String::from_utf8(out).expect("valid JSON minus ASCII white space is UTF-8")
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// An event as stored in the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub topic: Topic,
    pub event_type: EventType,
    /// Compact JSON text (see [`compact_json`]).
    pub data: Arc<str>,
    pub time: OffsetDateTime,
    /// The publisher's W3C trace context, when it sent a valid one.
    pub trace: Option<Arc<TraceContext>>,
}

impl StoredEvent {
    /// The single-line JSON envelope subscribers, publishers and history
    /// readers all see: `{"id":"42","topic":…,"type":…,"time":…,"data":…}`,
    /// with `"traceparent"` (and `"tracestate"`) after `time` only when the
    /// publisher sent them, so an event without trace context is written
    /// as it always was. `id` is a string: JavaScript numbers lose
    /// precision above 2^53.
    ///
    /// Written directly rather than through serde: `data` is compact JSON
    /// that was validated on the way in, and topics and types are made of
    /// characters JSON never escapes, so nothing here needs parsing or
    /// escaping again (this runs once per event on the delivery path).
    pub fn envelope_json(&self) -> String {
        let mut json = String::with_capacity(self.envelope_room());
        self.push_envelope(&mut json);
        json
    }

    /// Room for the envelope: its fields, and the rest (names, quotes, the
    /// id and the time) in at most 100 bytes.
    fn envelope_room(&self) -> usize {
        self.data.len()
            + self.topic.as_str().len()
            + self.event_type.as_str().len()
            + self.trace.as_ref().map_or(0, |t| t.json_room())
            + 100
    }

    fn push_envelope(&self, json: &mut String) {
        json.push_str("{\"id\":\"");
        json.push_str(itoa::Buffer::new().format(self.id));
        json.push_str("\",\"topic\":\"");
        json.push_str(self.topic.as_str());
        json.push_str("\",\"type\":\"");
        json.push_str(self.event_type.as_str());
        json.push_str("\",\"time\":\"");
        push_rfc3339(json, self.time);
        json.push('"');
        if let Some(trace) = &self.trace {
            trace.push_json_fields(json);
        }
        json.push_str(",\"data\":");
        json.push_str(&self.data);
        json.push('}');
    }

    /// The envelopes of `events` as one JSON array.
    pub fn envelopes_json<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) -> String {
        let mut json = String::from("[");
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&event.envelope_json());
        }
        json.push(']');
        json
    }

    /// The SSE frame: `id: 42\nevent: t\ndata: {…}\n\n`.
    pub fn to_frame(&self) -> Frame {
        // The envelope is written in place, not made and then copied.
        let mut buf =
            String::with_capacity(self.envelope_room() + self.event_type.as_str().len() + 40);
        buf.push_str("id: ");
        buf.push_str(itoa::Buffer::new().format(self.id));
        buf.push('\n');
        let event_start = buf.len();
        buf.push_str("event: ");
        buf.push_str(self.event_type.as_str());
        buf.push('\n');
        let event_end = buf.len();
        buf.push_str("data: ");
        self.push_envelope(&mut buf);
        buf.push_str("\n\n");
        Frame {
            id: self.id,
            committed: self.time,
            topic: self.topic.clone(),
            bytes: Bytes::from(buf),
            event_line: (event_start, event_end),
            trace: self.trace.clone(),
        }
    }
}

/// Appends `time` in RFC 3339. The events of one append share their
/// commit time, and an event's time is written for its publisher and
/// again for its frame: the last time written is kept, per thread, and
/// written again without formatting.
fn push_rfc3339(out: &mut String, time: OffsetDateTime) {
    thread_local! {
        static LAST: RefCell<Option<(OffsetDateTime, String)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        match last {
            // `==` compares instants; the text also shows the offset.
            Some((at, text)) if *at == time && at.offset() == time.offset() => {
                out.push_str(text);
            }
            _ => {
                let text = time.format(&Rfc3339).unwrap_or_default();
                out.push_str(&text);
                *last = Some((time, text));
            }
        }
    });
}

/// An event encoded once as SSE bytes; the same `Bytes` go to every
/// subscriber (docs/ARCHITECTURE.md, "Encode once").
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: i64,
    /// When the event was committed (for the delivery-lag metric).
    pub committed: OffsetDateTime,
    pub topic: Topic,
    pub bytes: Bytes,
    /// Byte range of the `event:` line within `bytes`.
    pub event_line: (usize, usize),
    /// The event's trace context, for the fan-out's log line and span.
    pub trace: Option<Arc<TraceContext>>,
}

impl Frame {
    /// The frame without its `event:` line, as two slices of the same
    /// shared bytes (no copy): browsers then dispatch it as `message`.
    pub fn without_event_line(&self) -> [Bytes; 2] {
        let (start, end) = self.event_line;
        [self.bytes.slice(..start), self.bytes.slice(end..)]
    }
}

/// The frame that opens a stream (docs/ARCHITECTURE.md, "Subscribe"): `retry:`, the
/// `id:` that events follow (`after`), and `event: stream` with a JSON
/// `data:` line saying what the stream is:
///
/// ```text
/// retry: 3000
/// id: 42
/// event: stream
/// data: {"after":"42","topics":["incident:*"]}
/// ```
///
/// The `data:` line is what makes every parser keep the `id:` and the
/// `retry:`: the WHATWG algorithm (HTML §9.2.6) keeps them from any frame,
/// but many libraries drop a frame without data, and its id with it, and
/// then resume a client that dropped before its first event from nothing.
/// A browser fires `stream` only at a listener for it, so a page that
/// listens to `message` and its own types sees no change. On a resume
/// `after` is the client's own cursor, so the `id:` never moves it.
pub fn opening_frame(
    retry: std::time::Duration,
    after: i64,
    filters: &Filters,
    handle: Option<&str>,
) -> Bytes {
    let mut data = serde_json::json!({
        "after": after.to_string(),
        "topics": topic_list(filters),
    });
    if let Some(handle) = handle {
        data["stream"] = handle.into();
    }
    Bytes::from(format!(
        "retry: {}\nid: {after}\nevent: stream\ndata: {data}\n\n",
        retry.as_millis()
    ))
}

/// What a stopping instance answers a new stream: `retry:` and the end, so
/// the client comes back (to another instance) after the hint. No `id:`:
/// the client's cursor stays where it was.
pub fn draining_frame(retry: std::time::Duration, filters: &Filters) -> Bytes {
    let data = serde_json::json!({ "draining": true, "topics": topic_list(filters) });
    Bytes::from(format!(
        "retry: {}\nevent: stream\ndata: {data}\n\n",
        retry.as_millis()
    ))
}

/// A named stream's topics changed: events after `effective_at` follow
/// `filters`. The frame's `id:` is `effective_at`, which is never below an
/// id the stream has written, so a client's cursor only moves on.
pub fn topics_changed_frame(handle: &str, effective_at: i64, filters: &Filters) -> Bytes {
    let data = serde_json::json!({
        "stream": handle,
        "topics": topic_list(filters),
        "effective_at": effective_at.to_string(),
    });
    Bytes::from(format!(
        "id: {effective_at}\nevent: stream\ndata: {data}\n\n"
    ))
}

/// The last frame of a stream ended from outside: `event: replaced` (the
/// subject or address opened a stream over its cap) or `event: revoked`
/// (an admin ended it, or revoked its subject). No `id:`: the cursor stays.
pub fn ended_frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A stream's filters as the `topics` of its `stream` frames; no filter
/// at all reads every topic, `*`.
pub fn topic_list(filters: &Filters) -> Vec<std::borrow::Cow<'_, str>> {
    if filters.iter().next().is_none() {
        return vec!["*".into()];
    }
    filters.iter().map(TopicFilter::text).collect()
}

/// The heartbeat comment sent on idle streams.
pub const PING_FRAME: &[u8] = b": ping\n\n";

/// Why a stream tells its client to refetch state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// The cursor is older than the oldest event the log still holds.
    CursorTooOld,
    /// The cursor is newer than any id the log ever assigned.
    CursorAhead,
}

/// The `event: reset` frame. It carries `id:` of the point the stream goes on
/// from, so a browser that reconnects afterwards does not get the reset again,
/// and a `data:` line, without which a browser fires no event. `oldest_id`
/// is the oldest event the log holds, `null` when it holds none (an empty
/// log, or one whose every event was pruned).
pub fn reset_frame(
    reason: ResetReason,
    cursor: i64,
    oldest_id: Option<i64>,
    continue_from: i64,
) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "last_event_id": cursor.to_string(),
        "oldest_id": oldest_id.map(|id| id.to_string()),
        "continue_from": continue_from.to_string(),
    });
    Bytes::from(format!(
        "id: {continue_from}\nevent: reset\ndata: {data}\n\n"
    ))
}

/// The in-band warning that a stream's token expires at `expires_at` and
/// the stream will end then: a page refreshes its cookie on it, and the
/// browser's reconnect carries the new one. No `id:` line, so it leaves the
/// client's `Last-Event-ID` where it was.
pub fn auth_expiring_frame(expires_at: OffsetDateTime) -> Bytes {
    let data = serde_json::json!({
        "expires_at": expires_at.format(&Rfc3339).unwrap_or_default(),
        "reason": "token_expiring",
    });
    Bytes::from(format!("event: auth-expiring\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_formatted_whatever_was_written_before() {
        let a = OffsetDateTime::from_unix_timestamp_nanos(1_764_576_000_123_456_000).unwrap();
        let b = OffsetDateTime::from_unix_timestamp(1_764_576_001).unwrap();
        // The same instant at another offset reads differently.
        let a_east = a.to_offset(time::macros::offset!(+2));
        for t in [a, a, b, a, a_east, a_east, a] {
            let mut out = String::new();
            push_rfc3339(&mut out, t);
            assert_eq!(out, t.format(&Rfc3339).unwrap());
        }
    }

    #[test]
    fn compact_json_keeps_strings_and_order() {
        let raw = "{ \"b\" : 1,\n \"a\": \"x y\\\" \\n z\" , \"n\": 1.50 }";
        assert_eq!(
            compact_json(raw),
            "{\"b\":1,\"a\":\"x y\\\" \\n z\",\"n\":1.50}"
        );
    }

    #[test]
    fn compact_json_keeps_text_that_is_compact_and_characters_beyond_ascii() {
        let compact = "{\"a\":[1,\"é 😀\"],\"b\":null}";
        assert_eq!(compact_json(compact), compact);
        assert_eq!(
            compact_json("{ \"é\" :\t\"😀 \\\\\" , \"b\": [ 1 ,2 ] }"),
            "{\"é\":\"😀 \\\\\",\"b\":[1,2]}"
        );
    }

    #[test]
    fn frame_is_one_event_with_single_line_data() {
        let ev = StoredEvent {
            id: 42,
            topic: Topic::parse("incident:inc-1").unwrap(),
            event_type: EventType::parse("incident.updated").unwrap(),
            data: compact_json("{\"text\": \"line1\\nline2\"}").into(),
            time: OffsetDateTime::from_unix_timestamp(0).unwrap(),
            trace: None,
        };
        let frame = ev.to_frame();
        assert_eq!(
            std::str::from_utf8(&frame.bytes).unwrap(),
            "id: 42\nevent: incident.updated\ndata: {\"id\":\"42\",\"topic\":\"incident:inc-1\",\
             \"type\":\"incident.updated\",\"time\":\"1970-01-01T00:00:00Z\",\
             \"data\":{\"text\":\"line1\\nline2\"}}\n\n"
        );
    }

    #[test]
    fn the_envelope_carries_trace_context_only_when_present() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, _) = TraceContext::parse(Some(parent), Some("k=v"));
        let ev = StoredEvent {
            id: 1,
            topic: Topic::parse("a").unwrap(),
            event_type: EventType::message(),
            data: "null".into(),
            time: OffsetDateTime::from_unix_timestamp(0).unwrap(),
            trace: trace.map(Arc::new),
        };
        assert_eq!(
            ev.envelope_json(),
            format!(
                "{{\"id\":\"1\",\"topic\":\"a\",\"type\":\"message\",\
                 \"time\":\"1970-01-01T00:00:00Z\",\"traceparent\":\"{parent}\",\
                 \"tracestate\":\"k=v\",\"data\":null}}"
            )
        );
    }

    #[test]
    fn frame_without_event_line_keeps_id_and_data() {
        let ev = StoredEvent {
            id: 7,
            topic: Topic::parse("a").unwrap(),
            event_type: EventType::parse("t.x").unwrap(),
            data: "1".into(),
            time: OffsetDateTime::from_unix_timestamp(0).unwrap(),
            trace: None,
        };
        let [head, tail] = ev.to_frame().without_event_line();
        let joined = [head, tail].concat();
        let text = std::str::from_utf8(&joined).unwrap();
        assert!(text.starts_with("id: 7\ndata: {\"id\":\"7\""), "{text}");
        assert!(!text.contains("event:"));
        assert!(text.ends_with("}\n\n"));
    }

    #[test]
    fn reset_frame_has_id_event_and_data() {
        let f = reset_frame(ResetReason::CursorAhead, 99, Some(1), 10);
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.starts_with("id: 10\nevent: reset\ndata: {"), "{s}");
        assert!(s.contains("\"reason\":\"cursor_ahead\""));
        assert!(s.ends_with("}\n\n"));
        assert_eq!(s.matches('\n').count(), 4);
    }

    #[test]
    fn reset_frame_on_a_log_that_holds_nothing_has_no_oldest_id() {
        let f = reset_frame(ResetReason::CursorAhead, 99, None, 0);
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.contains("\"oldest_id\":null"), "{s}");
    }

    #[test]
    fn opening_frame_carries_retry_id_and_data() {
        let filters = Filters::new(vec![
            TopicFilter::parse("incident:*").unwrap(),
            TopicFilter::parse("ops").unwrap(),
        ]);
        let f = opening_frame(std::time::Duration::from_millis(1700), 42, &filters, None);
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "retry: 1700\nid: 42\nevent: stream\n\
             data: {\"after\":\"42\",\"topics\":[\"incident:*\",\"ops\"]}\n\n"
        );
        let all = opening_frame(
            std::time::Duration::from_secs(3),
            0,
            &Filters::default(),
            None,
        );
        assert!(all.ends_with(b"\"topics\":[\"*\"]}\n\n"));
    }

    #[test]
    fn draining_frame_carries_retry_and_data_without_an_id() {
        let f = draining_frame(std::time::Duration::from_secs(3), &Filters::default());
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "retry: 3000\nevent: stream\ndata: {\"draining\":true,\"topics\":[\"*\"]}\n\n"
        );
    }
}
