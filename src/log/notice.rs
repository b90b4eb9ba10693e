//! What an append's notification says.
//!
//! Every append notifies [`NOTIFY_CHANNEL`](super::NOTIFY_CHANNEL) in the
//! statement that commits it, and PostgreSQL delivers notifications in the
//! order their transactions committed, which here is id order (appends are
//! serialized on `log_head`, see `append/`). So a notification that
//! carries the events it announces, read by a listener whose cursor is
//! just before them, gives it the next events of the log, as committed:
//! it delivers them without reading them back, a query per commit on
//! every instance less. A listener whose cursor is anywhere else (it
//! missed a notification while reconnecting, or a hint came between)
//! reads the log after its cursor as before; the notification is never
//! the only way to an event.
//!
//! Two forms:
//! - `<last id>`: a hint that events up to this id are committed. Appends
//!   with idempotency keys send it, and appends whose events would not fit
//!   in a notification ([`MAX_BODY`]).
//! - `<after> <commit time, µs since the epoch> <count>` then, for each
//!   event, `\n<topic bytes>,<type bytes>,<data bytes>:` and the topic, type
//!   and data themselves: the events `after + 1 ..= after + count`, in id
//!   order. Lengths are in bytes, so no content needs escaping. The first
//!   two fields are the append's own (its ids and commit time are taken
//!   in the statement); the rest is [`body`], written before it is sent.
//!   An event with trace context has two more lengths,
//!   `,<traceparent bytes>,<tracestate bytes>`, and the two values after
//!   its data. An instance that predates them cannot read those lengths and
//!   reads the log instead, as for any notification it does not take.

use time::OffsetDateTime;

use std::sync::Arc;

use super::NewEvent;
use crate::event::{EventType, StoredEvent, Topic, TraceContext};

/// Longest body sent: PostgreSQL refuses a payload of 8,000 bytes or
/// more, and the statement puts up to 42 bytes (two ids and two spaces)
/// before the body.
pub const MAX_BODY: usize = 7900;
/// Room for the count at the head of the body (a decimal `usize`).
const COUNT_ROOM: usize = 20;
/// Room for an event's `\n<topic>,<type>,<data>:` lengths: the newline,
/// three decimal lengths (each under `MAX_BODY`, so at most 4 digits, with
/// room to spare), two commas and the colon.
const LENGTHS_ROOM: usize = 24;

/// The part of an append's notification after its first id and commit
/// time, or `None` when the events do not fit (the notification is then a
/// hint).
pub fn body<'a>(events: impl Iterator<Item = &'a NewEvent> + Clone) -> Option<String> {
    let (count, size) = events.clone().fold((0, COUNT_ROOM), |(n, size), e| {
        let fields = e.topic.as_str().len() + e.event_type.as_str().len() + e.data.len();
        let trace = e.trace.as_deref().map_or(0, |t| {
            t.traceparent().len() + t.tracestate().map_or(0, str::len) + LENGTHS_ROOM
        });
        (n + 1, size + fields + trace + LENGTHS_ROOM)
    });
    if size > MAX_BODY {
        return None;
    }
    let mut out = String::with_capacity(size);
    // `itoa` rather than `write!`: `core::fmt` cost about 1,000
    // instructions an event here (callgrind, one event an append).
    let mut number = itoa::Buffer::new();
    out.push_str(number.format(count));
    for e in events {
        let (topic, ty) = (e.topic.as_str(), e.event_type.as_str());
        out.push('\n');
        out.push_str(number.format(topic.len()));
        out.push(',');
        out.push_str(number.format(ty.len()));
        out.push(',');
        out.push_str(number.format(e.data.len()));
        let trace = e.trace.as_deref();
        let (parent, state) = trace.map_or(("", ""), |t| {
            (t.traceparent(), t.tracestate().unwrap_or_default())
        });
        if trace.is_some() {
            out.push(',');
            out.push_str(number.format(parent.len()));
            out.push(',');
            out.push_str(number.format(state.len()));
        }
        out.push(':');
        out.push_str(topic);
        out.push_str(ty);
        out.push_str(&e.data);
        out.push_str(parent);
        out.push_str(state);
    }
    Some(out)
}

/// A notification, as a listener reads it.
#[derive(Debug)]
pub enum Notice {
    /// Events up to `last` are committed: read the log to get them.
    Hint { last: i64 },
    /// The events after `after`, as committed.
    Events {
        after: i64,
        events: Vec<StoredEvent>,
    },
    /// Not an append's (a listener's own probe) or not understood: read the
    /// log.
    Other,
}

impl Notice {
    pub fn parse(payload: &str) -> Self {
        Self::parse_events(payload)
            .or_else(|| payload.parse().ok().map(|last| Self::Hint { last }))
            .unwrap_or(Self::Other)
    }

    fn parse_events(payload: &str) -> Option<Self> {
        let (head, mut rest) = payload.split_once('\n').unwrap_or((payload, ""));
        let mut fields = head.split(' ');
        let after: i64 = fields.next()?.parse().ok()?;
        let micros: i128 = fields.next()?.parse().ok()?;
        let count: usize = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        let time = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        let mut events = Vec::with_capacity(count.min(MAX_BODY));
        for id in (after + 1..).take(count) {
            let (lengths, after_colon) = rest.split_once(':')?;
            let mut lengths = lengths.splitn(5, ',').map(|n| n.parse::<usize>().ok());
            let (t, y, d) = (lengths.next()??, lengths.next()??, lengths.next()??);
            let (p, s) = match (lengths.next(), lengths.next()) {
                (None, None) => (0, 0),
                (Some(p), Some(s)) => (p?, s?),
                _ => return None,
            };
            let topic = after_colon.get(..t)?;
            let ty = after_colon.get(t..t + y)?;
            let data = after_colon.get(t + y..t + y + d)?;
            let parent = after_colon.get(t + y + d..t + y + d + p)?;
            let state = after_colon.get(t + y + d + p..t + y + d + p + s)?;
            rest = after_colon.get(t + y + d + p + s..)?;
            rest = rest.strip_prefix('\n').unwrap_or(rest);
            // Written by an append from a checked context, or absent.
            let trace = (p > 0).then(|| {
                let state = (s > 0).then(|| state.to_owned());
                Arc::new(TraceContext::from_log(parent.to_owned(), state))
            });
            events.push(StoredEvent {
                id,
                topic: Topic::from_log(topic.to_owned()),
                event_type: EventType::from_log(ty.to_owned()),
                data: data.into(),
                time,
                trace,
            });
        }
        (events.len() == count && rest.is_empty()).then_some(Self::Events { after, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(topic: &str, ty: &str, data: &str) -> NewEvent {
        NewEvent {
            topic: Topic::from_log(topic.to_owned()),
            event_type: EventType::from_log(ty.to_owned()),
            data: data.to_owned(),
            key: None,
            trace: None,
        }
    }

    /// What the append statement sends: its first id and commit time, then
    /// the body.
    fn payload(after: i64, micros: i64, body: &str) -> String {
        format!("{after} {micros} {body}")
    }

    #[test]
    fn events_come_back_as_committed() {
        let events = [
            new("user:42", "message", r#"{"a":1}"#),
            // Separators and multi-byte text inside the fields.
            new("t/ü:1,2", "kind:x", r#"{"s":"a,b:c\nd ✓","n":[1,2]}"#),
            new("x", "message", "null"),
        ];
        let body = body(events.iter()).expect("fits");
        let time = 1_764_576_000_123_456_i64;
        let Notice::Events { after, events: got } = Notice::parse(&payload(41, time, &body)) else {
            panic!("not parsed: {body}");
        };
        assert_eq!(after, 41);
        let ids: Vec<i64> = got.iter().map(|e| e.id).collect();
        assert_eq!(ids, [42, 43, 44]);
        for (sent, got) in events.iter().zip(&got) {
            assert_eq!(got.topic.as_str(), sent.topic.as_str());
            assert_eq!(got.event_type.as_str(), sent.event_type.as_str());
            assert_eq!(&*got.data, sent.data);
            assert_eq!(
                got.time.unix_timestamp_nanos(),
                i128::from(time) * 1000,
                "to the microsecond, as PostgreSQL stores it"
            );
        }
    }

    #[test]
    fn trace_context_comes_back_with_its_event() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut traced = new("t", "message", "1");
        traced.trace = TraceContext::parse(Some(parent), Some("k=v:w,x=y"))
            .0
            .map(Arc::new);
        let mut parent_only = new("u", "message", "2");
        parent_only.trace = TraceContext::parse(Some(parent), None).0.map(Arc::new);
        let events = [traced, new("plain", "message", "3"), parent_only];
        let body = body(events.iter()).expect("fits");
        let Notice::Events { events: got, .. } = Notice::parse(&payload(0, 0, &body)) else {
            panic!("not parsed: {body}");
        };
        let traces: Vec<_> = got.iter().map(|e| e.trace.as_deref().cloned()).collect();
        let sent: Vec<_> = events.iter().map(|e| e.trace.as_deref().cloned()).collect();
        assert_eq!(traces, sent);
        assert_eq!(&*got[1].data, "3");
    }

    #[test]
    fn events_that_do_not_fit_make_a_hint() {
        let big = format!(r#""{}""#, "x".repeat(MAX_BODY));
        assert_eq!(body([new("t", "message", &big)].iter()), None);
        let many: Vec<NewEvent> = (0..400)
            .map(|i| new(&format!("user:{i}"), "message", "{}"))
            .collect();
        assert_eq!(body(many.iter()), None, "the sum counts, not each");
        assert!(body(many[..100].iter()).is_some());
    }

    #[test]
    fn hints_probes_and_damage_are_told_apart() {
        assert!(matches!(Notice::parse("17"), Notice::Hint { last: 17 }));
        assert!(matches!(Notice::parse("probe:1234"), Notice::Other));
        let body = body([new("a", "message", "1"), new("b", "message", "2")].iter()).unwrap();
        let whole = payload(5, 0, &body);
        assert!(matches!(Notice::parse(&whole), Notice::Events { .. }));
        for cut in 1..whole.len() {
            if let Some(part) = whole.get(..cut) {
                // A prefix that happens to be a number is a hint; nothing
                // shorter than the whole is ever taken for its events.
                assert!(
                    !matches!(Notice::parse(part), Notice::Events { .. }),
                    "{part:?}"
                );
            }
        }
        assert!(matches!(Notice::parse(&format!("{whole}x")), Notice::Other));
    }
}
