//! A small incremental parser of `text/event-stream` for `herald tail`, as
//! WHATWG HTML §9.2.6 "Interpreting an event stream" says: lines end in CRLF,
//! LF or CR (also when a CRLF is split across two reads); `:` starts a
//! comment; `data:` lines join with LF; a blank line dispatches; `id:` sets
//! the last event id, which survives frames without data; `retry:` takes
//! digits only.
//!
//! It knows nothing of herald: the envelope inside `data:` is the caller's.

/// Something the stream said that a client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(SseEvent),
    /// A frame without data changed the last event id (the spec dispatches
    /// nothing, but a reconnect must send the new id).
    Id(String),
    /// `retry:` in milliseconds: the reconnection delay the server asks for.
    Retry(u64),
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id at dispatch (empty when the stream never set one).
    pub id: String,
    /// The `event:` name; `message` when the frame had none.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
}

/// Parser state for one connection.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The current line, not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF belongs to that line end.
    after_cr: bool,
    /// A leading byte-order mark is skipped once.
    started: bool,
    data: String,
    event: String,
    /// The spec's "last event ID buffer": set by `id:`, kept across frames.
    id_buffer: String,
    /// The id last handed out, so [`Item::Id`] is only said on a change.
    reported_id: String,
}

impl SseParser {
    /// A parser whose last event id starts at `last_id` (from an earlier
    /// connection), so an event without `id:` still carries it.
    pub fn with_last_id(last_id: &str) -> Self {
        Self {
            id_buffer: last_id.to_owned(),
            reported_id: last_id.to_owned(),
            ..Self::default()
        }
    }

    /// Feeds the next bytes of the body; what they complete goes to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        if !self.started && !chunk.is_empty() {
            self.started = true;
            chunk = chunk.strip_prefix("\u{feff}".as_bytes()).unwrap_or(chunk);
        }
        for &b in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Item>) {
        let line = std::mem::take(&mut self.line);
        // Line ends are ASCII and never inside a UTF-8 sequence, so decoding
        // line by line is exact.
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return; // A comment, such as herald's `: ping`.
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            if self.id_buffer != self.reported_id {
                self.reported_id.clone_from(&self.id_buffer);
                out.push(Item::Id(self.id_buffer.clone()));
            }
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // The LF after the last `data:` line.
        self.reported_id.clone_from(&self.id_buffer);
        out.push(Item::Event(SseEvent {
            id: self.id_buffer.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Item> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out);
        }
        out
    }

    fn parse(text: &str) -> Vec<Item> {
        parse_chunks(&[text.as_bytes()])
    }

    fn event(id: &str, event: &str, data: &str) -> Item {
        Item::Event(SseEvent {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn herald_frames_parse_to_retry_and_events() {
        let text = "retry: 3000\n\nid: 41\nevent: incident.updated\ndata: {\"id\":\"41\"}\n\nid: 42\ndata: {}\n\n";
        assert_eq!(
            parse(text),
            [
                Item::Retry(3000),
                event("41", "incident.updated", "{\"id\":\"41\"}"),
                event("42", "message", "{}"),
            ]
        );
    }

    #[test]
    fn comments_are_ignored() {
        assert_eq!(
            parse(": ping\n\n:\n\ndata: x\n: in between\n\n"),
            [event("", "message", "x")]
        );
    }

    #[test]
    fn data_lines_join_with_lf_and_an_empty_data_line_dispatches() {
        assert_eq!(
            parse("data: a\ndata:b\ndata\n\n"),
            [event("", "message", "a\nb\n")]
        );
        assert_eq!(parse("data:\n\n"), [event("", "message", "")]);
    }

    #[test]
    fn crlf_cr_and_lf_all_end_lines_even_when_split_across_chunks() {
        let expected = [event("7", "t", "x")];
        assert_eq!(parse("id: 7\r\nevent: t\r\ndata: x\r\n\r\n"), expected);
        assert_eq!(parse("id: 7\revent: t\rdata: x\r\r"), expected);
        assert_eq!(
            parse_chunks(&[b"id: 7\r", b"\nevent: t\r\ndata: x\r", b"\n\r", b"\n"]),
            expected
        );
        // Byte by byte.
        let bytes = b"id: 7\r\nevent: t\r\ndata: x\r\n\r\n";
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_chunks(&chunks), expected);
    }

    #[test]
    fn an_unfinished_frame_is_not_dispatched() {
        assert_eq!(parse("id: 9\ndata: half"), []);
    }

    #[test]
    fn the_last_id_survives_frames_without_id_and_moves_without_data() {
        assert_eq!(
            parse("id: 5\ndata: a\n\ndata: b\n\nid: 6\n\n"),
            [
                event("5", "message", "a"),
                event("5", "message", "b"),
                Item::Id("6".into()),
            ]
        );
        let mut parser = SseParser::with_last_id("40");
        let mut out = Vec::new();
        parser.push(b"retry: 10\n\ndata: x\n\n", &mut out);
        assert_eq!(out, [Item::Retry(10), event("40", "message", "x")]);
    }

    #[test]
    fn the_event_type_does_not_leak_into_the_next_frame() {
        assert_eq!(
            parse("event: reset\ndata: r\n\ndata: m\n\n"),
            [event("", "reset", "r"), event("", "message", "m"),]
        );
    }

    #[test]
    fn bad_retry_and_ids_with_nul_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse("retry: 1s\nretry:\nid: a\0b\nfoo: bar\ndata: x\n\n"),
            [event("", "message", "x")]
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_and_utf8_kept() {
        assert_eq!(
            parse("\u{feff}data: é ✓\n\n"),
            [event("", "message", "é ✓")]
        );
    }
}
