//! The event model: validated topics, types and filters, and the SSE frame
//! each stored event becomes (DESIGN.md, "Events").
//!
//! Parse, don't validate: a [`Topic`], [`EventType`] or [`TopicFilter`] exists
//! only if its text passed the rules, so nothing a publisher sends can reach an
//! SSE `id:`, `event:` or `data:` line with a CR or LF in it
//! (WHATWG HTML, "Server-sent events", §9.2.5 interpreting an event stream).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest topic accepted, in bytes (all accepted characters are ASCII).
pub const MAX_TOPIC_LEN: usize = 256;
/// Longest event type accepted.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Event types the stream itself or browsers give a meaning to.
pub const RESERVED_TYPES: [&str; 3] = ["reset", "error", "open"];

/// Why a topic, type, filter or key was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error(
        "topic {0:?} is invalid: 1-256 characters, segments of [A-Za-z0-9._-] separated by ':' or '/'"
    )]
    Topic(String),
    #[error("topic filter {0:?} is invalid: an exact topic, or a topic prefix ending in '*'")]
    Filter(String),
    #[error("event type {0:?} is invalid: 1-64 characters of [A-Za-z0-9._-]")]
    Type(String),
    #[error("event type {0:?} is reserved (reset, error and open have a meaning in SSE)")]
    ReservedType(String),
    #[error("idempotency key is invalid: 1-256 visible ASCII characters")]
    Key,
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn is_separator(c: u8) -> bool {
    matches!(c, b':' | b'/')
}

/// A topic such as `incident:inc-123` or `tenant/acme/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// # Errors
    /// [`Invalid::Topic`] unless the text is 1-256 characters of non-empty
    /// `[A-Za-z0-9._-]` segments separated by `:` or `/`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TOPIC_LEN
            && s.split([':', '/'])
                .all(|seg| !seg.is_empty() && seg.bytes().all(is_name_char));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Invalid::Topic(s.to_owned()))
        }
    }

    /// A topic read back from the log, which only ever stored valid ones.
    pub(crate) fn from_log(s: String) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SSE `event:` name; `message` unless the publisher names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(Arc<str>);

impl EventType {
    /// # Errors
    /// [`Invalid::Type`] for anything but 1-64 `[A-Za-z0-9._-]`;
    /// [`Invalid::ReservedType`] for `reset`, `error` and `open`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > MAX_TYPE_LEN || !s.bytes().all(is_name_char) {
            return Err(Invalid::Type(s.to_owned()));
        }
        if RESERVED_TYPES.contains(&s) {
            return Err(Invalid::ReservedType(s.to_owned()));
        }
        Ok(Self(s.into()))
    }

    /// A type read back from the log, which only ever stored valid ones.
    pub(crate) fn from_log(s: String) -> Self {
        Self(s.into())
    }

    pub fn message() -> Self {
        Self("message".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A publisher-chosen idempotency key: visible ASCII, so it is safe in logs
/// and headers. A key given in the `Idempotency-Key` header of a batch names
/// the whole batch; each event of it carries the key and its position, so
/// batch keys can never collide with a key some single event chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    key: String,
    index: Option<i32>,
}

impl IdempotencyKey {
    /// # Errors
    /// [`Invalid::Key`] unless 1-256 characters in `!`..=`~`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Invalid::Key);
        }
        Ok(Self {
            key: s.to_owned(),
            index: None,
        })
    }

    /// The key of event `index` of a batch named by this key.
    #[must_use]
    pub fn in_batch(&self, index: usize) -> Self {
        Self {
            key: self.key.clone(),
            index: Some(i32::try_from(index).unwrap_or(i32::MAX)),
        }
    }

    /// A key read back from the log.
    pub(crate) fn from_log(key: String, index: Option<i32>) -> Self {
        Self { key, index }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The position in a batch, for keys that name a batch.
    pub fn index(&self) -> Option<i32> {
        self.index
    }
}

/// One subscription filter: an exact topic, or a prefix ending in `*`
/// (`incident:*` matches `incident:inc-1` and `incident:a/b`; `*` alone
/// matches every topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilter {
    Exact(Topic),
    Prefix(Arc<str>),
}

impl TopicFilter {
    /// # Errors
    /// [`Invalid::Filter`] unless an exact topic, or a prefix of
    /// topic characters followed by one final `*`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || Invalid::Filter(s.to_owned());
        match s.strip_suffix('*') {
            Some(prefix) => {
                let ok = prefix.len() < MAX_TOPIC_LEN
                    && prefix.bytes().all(|c| is_name_char(c) || is_separator(c))
                    && !prefix.starts_with([':', '/'])
                    && !prefix.contains("::")
                    && !prefix.contains("//")
                    && !prefix.contains(":/")
                    && !prefix.contains("/:");
                if ok {
                    Ok(Self::Prefix(prefix.into()))
                } else {
                    Err(bad())
                }
            }
            None => Topic::parse(s).map(Self::Exact).map_err(|_| bad()),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t.as_str() == topic,
            Self::Prefix(p) => topic.starts_with(&**p),
        }
    }

    /// The filter as a SQL `LIKE` pattern (prefix characters never include
    /// `%`, `_` is escaped).
    pub fn like_pattern(&self) -> String {
        match self {
            Self::Exact(t) => t.as_str().replace('_', "\\_"),
            Self::Prefix(p) => format!("{}%", p.replace('_', "\\_")),
        }
    }
}

/// The set of filters one subscriber or history query asked for; empty means
/// every topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(Vec<TopicFilter>);

impl Filters {
    pub fn new(filters: Vec<TopicFilter>) -> Self {
        Self(filters)
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(topic))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|f| matches!(f, TopicFilter::Prefix(p) if p.is_empty()))
    }

    /// `LIKE` patterns for the log query; empty when every topic matches.
    pub fn like_patterns(&self) -> Vec<String> {
        if self.is_all() {
            Vec::new()
        } else {
            self.0.iter().map(TopicFilter::like_pattern).collect()
        }
    }
}

/// Removes the insignificant white space from JSON text that has already
/// been validated, so `data` fits on one SSE `data:` line while keeping the
/// publisher's key order and number spelling. JSON strings cannot hold a raw
/// CR or LF, so the result has none.
pub fn compact_json(valid_json: &str) -> String {
    let mut out = String::with_capacity(valid_json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in valid_json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
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
}

/// The JSON envelope subscribers, publishers and history readers all see.
/// `id` is a string: JavaScript numbers lose precision above 2^53.
#[derive(Serialize)]
struct Envelope<'a> {
    id: String,
    topic: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    data: &'a serde_json::value::RawValue,
}

impl StoredEvent {
    /// The single-line JSON envelope (`{"id":"42","topic":…,"data":…}`).
    pub fn envelope_json(&self) -> String {
        let data: &serde_json::value::RawValue =
            serde_json::from_str(&self.data).unwrap_or_else(|_| {
                // The log only holds JSON that parsed on the way in.
                serde_json::from_str("null").expect("null is JSON")
            });
        serde_json::to_string(&Envelope {
            id: self.id.to_string(),
            topic: self.topic.as_str(),
            event_type: self.event_type.as_str(),
            time: self.time,
            data,
        })
        .expect("envelope serializes")
    }

    /// The envelope as a JSON value, for publish and history responses.
    pub fn envelope_raw(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(self.envelope_json()).expect("envelope is JSON")
    }

    /// RFC 3339 commit time.
    pub fn time_rfc3339(&self) -> String {
        self.time.format(&Rfc3339).unwrap_or_default()
    }

    /// The SSE frame: `id: 42\nevent: t\ndata: {…}\n\n`.
    pub fn to_frame(&self) -> Frame {
        let json = self.envelope_json();
        let mut buf = String::with_capacity(json.len() + self.event_type.as_str().len() + 40);
        buf.push_str("id: ");
        buf.push_str(&self.id.to_string());
        buf.push('\n');
        let event_start = buf.len();
        buf.push_str("event: ");
        buf.push_str(self.event_type.as_str());
        buf.push('\n');
        let event_end = buf.len();
        buf.push_str("data: ");
        buf.push_str(&json);
        buf.push_str("\n\n");
        Frame {
            id: self.id,
            topic: self.topic.clone(),
            bytes: Bytes::from(buf),
            event_line: (event_start, event_end),
        }
    }
}

/// An event encoded once as SSE bytes; the same `Bytes` go to every
/// subscriber (DESIGN.md, "Encode once").
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: i64,
    pub topic: Topic,
    pub bytes: Bytes,
    /// Byte range of the `event:` line within `bytes`.
    pub event_line: (usize, usize),
}

impl Frame {
    /// The frame without its `event:` line, as two slices of the same
    /// shared bytes (no copy): browsers then dispatch it as `message`.
    pub fn without_event_line(&self) -> [Bytes; 2] {
        let (start, end) = self.event_line;
        [self.bytes.slice(..start), self.bytes.slice(end..)]
    }
}

/// The `retry:` line that opens every stream.
pub fn retry_frame(retry: std::time::Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

/// The opening frame of a stream that starts live: `retry:` and the `id:`
/// of the log position it starts from. A frame without data dispatches no
/// event, but it does set a browser's `lastEventId` (WHATWG HTML §9.2.6),
/// so a client that drops before its first event still resumes from where
/// it started instead of missing what came in between.
pub fn opening_frame(retry: std::time::Duration, start: i64) -> Bytes {
    Bytes::from(format!("retry: {}\nid: {start}\n\n", retry.as_millis()))
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
/// and a `data:` line, without which a browser fires no event.
pub fn reset_frame(reason: ResetReason, cursor: i64, oldest_id: i64, continue_from: i64) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "last_event_id": cursor.to_string(),
        "oldest_id": oldest_id.to_string(),
        "continue_from": continue_from.to_string(),
    });
    Bytes::from(format!(
        "id: {continue_from}\nevent: reset\ndata: {data}\n\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_accepts_segments_with_both_separators() {
        for ok in ["a", "incident:inc-123", "tenant/acme/alerts", "a.b_c-d:e/f"] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn topic_refuses_empty_segments_and_foreign_characters() {
        let long = "a".repeat(257);
        for bad in [
            "",
            ":a",
            "a:",
            "a::b",
            "a b",
            "a\nb",
            "é",
            "a*",
            long.as_str(),
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Topic::parse(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn type_refuses_reserved_names_and_newlines() {
        assert!(EventType::parse("incident.updated").is_ok());
        for bad in ["", "a b", "x\r", &"a".repeat(65)] {
            assert_eq!(EventType::parse(bad), Err(Invalid::Type(bad.to_owned())));
        }
        for reserved in RESERVED_TYPES {
            assert!(matches!(
                EventType::parse(reserved),
                Err(Invalid::ReservedType(_))
            ));
        }
    }

    #[test]
    fn filters_match_exact_and_prefix() {
        let f = Filters::new(vec![
            TopicFilter::parse("incident:*").unwrap(),
            TopicFilter::parse("ops").unwrap(),
        ]);
        assert!(f.matches("incident:inc-1"));
        assert!(f.matches("ops"));
        assert!(!f.matches("ops:x"));
        assert!(!f.matches("incidents"));
        assert!(Filters::default().matches("anything"));
        assert!(Filters::new(vec![TopicFilter::parse("*").unwrap()]).is_all());
        for bad in ["", "**", "a*b", ":*", "a::*", "a b*"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn like_pattern_escapes_underscore() {
        assert_eq!(
            TopicFilter::parse("a_b:*").unwrap().like_pattern(),
            "a\\_b:%"
        );
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
    fn frame_is_one_event_with_single_line_data() {
        let ev = StoredEvent {
            id: 42,
            topic: Topic::parse("incident:inc-1").unwrap(),
            event_type: EventType::parse("incident.updated").unwrap(),
            data: compact_json("{\"text\": \"line1\\nline2\"}").into(),
            time: OffsetDateTime::from_unix_timestamp(0).unwrap(),
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
    fn frame_without_event_line_keeps_id_and_data() {
        let ev = StoredEvent {
            id: 7,
            topic: Topic::parse("a").unwrap(),
            event_type: EventType::parse("t.x").unwrap(),
            data: "1".into(),
            time: OffsetDateTime::from_unix_timestamp(0).unwrap(),
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
        let f = reset_frame(ResetReason::CursorAhead, 99, 1, 10);
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.starts_with("id: 10\nevent: reset\ndata: {"), "{s}");
        assert!(s.contains("\"reason\":\"cursor_ahead\""));
        assert!(s.ends_with("}\n\n"));
        assert_eq!(s.matches('\n').count(), 4);
    }
}
