//! What the harness publishes, and how a subscriber recognises it cheaply.
//!
//! Every event's data is a JSON object whose `bench` field is a marker
//! string: `B1:<publisher>:<seq>:<sent unix nanos>` for a measured event,
//! `W1:<n>` for a sync event (published until every subscriber has seen one,
//! so that measured events start only once all streams are live), `F1:<n>`
//! for a filler (published to fill a server's ring and log before anyone
//! subscribes; never counted). herald
//! keeps `data` byte for byte inside its envelope and nchan sends the body as
//! it came, so one substring search finds the marker for either server; no
//! JSON parse per delivery.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;

static FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"bench\":\""));

/// A recognised payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A measured event.
    Event {
        publisher: u32,
        seq: u64,
        sent_nanos: u64,
    },
    /// A sync event.
    Sync(u64),
}

/// Now, in nanoseconds since the Unix epoch (the clock publishers stamp
/// events with and subscribers compare against: same machine, same clock).
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The data of a measured event, padded with a `pad` string field to about
/// `size` bytes (no padding when `size` is smaller than the marker).
pub fn event(publisher: u32, seq: u64, sent_nanos: u64, size: usize) -> String {
    let mut s = format!("{{\"bench\":\"B1:{publisher}:{seq}:{sent_nanos}\"");
    let overhead = s.len() + r#","pad":""}"#.len();
    if size > overhead {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', size - overhead));
        s.push('"');
    }
    s.push('}');
    s
}

/// The data of sync event `n`.
pub fn sync(n: u64) -> String {
    format!("{{\"bench\":\"W1:{n}\"}}")
}

/// The data of filler event `n`: recognised as no marker at all.
pub fn filler(n: u64, size: usize) -> String {
    let mut s = format!("{{\"bench\":\"F1:{n}\"");
    let overhead = s.len() + r#","pad":""}"#.len();
    if size > overhead {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', size - overhead));
        s.push('"');
    }
    s.push('}');
    s
}

/// Finds the marker in a frame's `data:` line.
pub fn parse(data: &[u8]) -> Option<Marker> {
    let at = FIELD.find(data)? + FIELD.needle().len();
    let rest = data.get(at..)?;
    let (kind, mut rest) = (rest.get(..3)?, &rest[3..]);
    match kind {
        b"B1:" => {
            let publisher = number(&mut rest, b':')?;
            let seq = number(&mut rest, b':')?;
            let sent_nanos = number(&mut rest, b'"')?;
            Some(Marker::Event {
                publisher: u32::try_from(publisher).ok()?,
                seq,
                sent_nanos,
            })
        }
        b"W1:" => Some(Marker::Sync(number(&mut rest, b'"')?)),
        _ => None,
    }
}

/// Reads decimal digits up to `end`, and skips `end`.
fn number(s: &mut &[u8], end: u8) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &b) in s.iter().enumerate() {
        if b == end && i > 0 {
            *s = &s[i + 1..];
            return Some(v);
        }
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_inside_a_herald_envelope() {
        let data = event(3, 17, 1_700_000_000_123_456_789, 0);
        let envelope = format!(
            r#"{{"id":"9","topic":"bench:x","type":"bench","time":"2026-11-23T12:00:00Z","data":{data}}}"#
        );
        assert_eq!(
            parse(envelope.as_bytes()),
            Some(Marker::Event {
                publisher: 3,
                seq: 17,
                sent_nanos: 1_700_000_000_123_456_789
            })
        );
    }

    #[test]
    fn padding_reaches_the_requested_size() {
        let data = event(0, 0, 1, 200);
        assert_eq!(data.len(), 200);
        assert!(serde_json::from_str::<serde_json::Value>(&data).is_ok());
        assert!(matches!(parse(data.as_bytes()), Some(Marker::Event { .. })));
    }

    #[test]
    fn sync_and_foreign_data() {
        assert_eq!(parse(sync(5).as_bytes()), Some(Marker::Sync(5)));
        assert_eq!(parse(filler(5, 0).as_bytes()), None);
        assert_eq!(filler(5, 100).len(), 100);
        assert_eq!(parse(br#"{"status":"ok"}"#), None);
        assert_eq!(parse(br#"{"bench":"B1:x:1:2"}"#), None);
    }
}
