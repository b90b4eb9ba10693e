//! What `herald tail` writes: one line per event on stdout, readable (with
//! colour only for a person) or the JSON envelope as received, and the
//! stderr line for a `reset` frame. Nothing from an event can reach the
//! terminal as a control sequence.

use std::io::{self, IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::sse::SseEvent;

/// The stderr line for an `event: reset` frame (README, "Reset").
pub(super) fn reset_notice(data: &str) -> String {
    #[derive(Deserialize)]
    struct Reset {
        reason: Option<String>,
        last_event_id: Option<String>,
        oldest_id: Option<String>,
        continue_from: Option<String>,
    }
    let Ok(reset) = serde_json::from_str::<Reset>(data) else {
        return format!("reset: {}", escape_controls(data));
    };
    let cursor = reset.last_event_id.unwrap_or_default();
    let from = reset.continue_from.unwrap_or_default();
    match reset.reason.as_deref() {
        Some("cursor_too_old") => format!(
            "reset: events after id {cursor} are no longer all in the log (the oldest is {}); some were missed, going on from id {from}",
            reset.oldest_id.unwrap_or_default()
        ),
        Some("cursor_ahead") => format!(
            "reset: id {cursor} is newer than any this server has assigned (another database?); going on from id {from}"
        ),
        _ => format!("reset: {}", escape_controls(data)),
    }
}

/// Writes events to stdout, one line each.
pub(super) struct Printer {
    json: bool,
    colour: Option<Colours>,
}

/// Styles of the readable line (only used on a terminal).
struct Colours {
    meta: Style,
    topic: Style,
    event_type: Style,
}

/// The envelope every herald event carries in `data:` (README, "The
/// envelope").
#[derive(Deserialize)]
struct Envelope<'a> {
    id: &'a str,
    topic: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Printer {
    /// Colour only for a person: stdout is a terminal and `NO_COLOR`
    /// (no-color.org) is unset or empty.
    pub(super) fn new(json: bool) -> Self {
        let wanted =
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            json,
            colour: wanted.then(|| Colours {
                meta: Style::new().dimmed(),
                topic: AnsiColor::Cyan.on_default(),
                event_type: AnsiColor::Yellow.on_default().bold(),
            }),
        }
    }

    pub(super) fn print(&self, event: &SseEvent) -> io::Result<()> {
        let line = if self.json {
            event.data.clone()
        } else {
            self.readable(event)
        };
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    }

    /// `#42 12:00:01 incident:inc-1 incident.updated {"status":"open"}`.
    fn readable(&self, event: &SseEvent) -> String {
        let Ok(envelope) = serde_json::from_str::<Envelope>(&event.data) else {
            // Not a herald envelope: show what there is.
            return format!(
                "#{} {} {}",
                event.id,
                event.event,
                escape_controls(&event.data)
            );
        };
        let meta = format!("#{} {}", envelope.id, clock_time(envelope.time));
        let data = escape_controls(envelope.data.get());
        match &self.colour {
            Some(c) => format!(
                "{}{meta}{:#} {}{}{:#} {}{}{:#} {data}",
                c.meta,
                c.meta,
                c.topic,
                envelope.topic,
                c.topic,
                c.event_type,
                envelope.event_type,
                c.event_type
            ),
            None => format!("{meta} {} {} {data}", envelope.topic, envelope.event_type),
        }
    }
}

/// `HH:MM:SS` of an RFC 3339 time in the local time zone (UTC when it
/// cannot be known); the text as it is if it does not parse.
fn clock_time(rfc3339: &str) -> String {
    let Ok(time) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return escape_controls(rfc3339);
    };
    let offset = UtcOffset::local_offset_at(time).unwrap_or(UtcOffset::UTC);
    let local = time.to_offset(offset);
    format!(
        "{:02}:{:02}:{:02}",
        local.hour(),
        local.minute(),
        local.second()
    )
}

/// Control characters (C0, DEL, C1) as `\uXXXX`, so event data can never
/// move the cursor or change the terminal's state. In JSON text they can only
/// occur inside strings, where this is the same value.
fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            id: "42".into(),
            event: "incident.updated".into(),
            data: data.into(),
        }
    }

    const ENVELOPE: &str = r#"{"id":"42","topic":"incident:inc-1","type":"incident.updated","time":"2026-11-23T12:00:01.5Z","data":{"status":"open"}}"#;

    #[test]
    fn readable_line_without_colour() {
        let printer = Printer {
            json: false,
            colour: None,
        };
        let line = printer.readable(&event(ENVELOPE));
        let (meta, rest) = line.split_at(line.find(" incident:").unwrap());
        assert!(meta.starts_with("#42 "), "{line}");
        assert_eq!(meta.len(), "#42 12:00:01".len(), "{line}");
        assert_eq!(
            rest,
            r#" incident:inc-1 incident.updated {"status":"open"}"#
        );
    }

    #[test]
    fn readable_line_with_colour_styles_meta_topic_and_type() {
        let printer = Printer {
            json: false,
            colour: Some(Colours {
                meta: Style::new().dimmed(),
                topic: AnsiColor::Cyan.on_default(),
                event_type: AnsiColor::Yellow.on_default().bold(),
            }),
        };
        let line = printer.readable(&event(ENVELOPE));
        assert!(line.starts_with("\x1b[2m#42 "), "{line:?}");
        assert!(line.contains("\x1b[36mincident:inc-1\x1b[0m"), "{line:?}");
        assert!(line.ends_with(r#" {"status":"open"}"#), "{line:?}");
    }

    #[test]
    fn data_cannot_carry_terminal_controls() {
        let printer = Printer {
            json: false,
            colour: None,
        };
        let sneaky = ENVELOPE.replace(r#""open""#, "\"\u{9b}2J\u{7f}\"");
        let line = printer.readable(&event(&sneaky));
        assert!(line.ends_with(r#"{"status":"\u009b2J\u007f"}"#), "{line:?}");
        let other = printer.readable(&event("not\u{1b}[31m json"));
        assert_eq!(other, "#42 incident.updated not\\u001b[31m json");
    }

    #[test]
    fn reset_notice_says_what_was_missed() {
        let data = r#"{"continue_from":"57","last_event_id":"3","oldest_id":"10","reason":"cursor_too_old"}"#;
        assert_eq!(
            reset_notice(data),
            "reset: events after id 3 are no longer all in the log (the oldest is 10); some were missed, going on from id 57"
        );
    }
}
