//! A small incremental `text/event-stream` parser (WHATWG HTML, "Server-sent
//! events", §9.2.6): bytes go in as they arrive, complete frames (blocks
//! ended by a blank line) come out as slices of the buffer, with no copy and
//! no allocation per frame. Lines may end in LF or CRLF (a lone CR, which the
//! spec also allows, is used by neither herald nor nchan).

use memchr::memchr;

/// One frame, borrowing the parser's buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The last `id:` value of the frame.
    pub id: Option<&'a [u8]>,
    /// The last `event:` value.
    pub event: Option<&'a [u8]>,
    /// The first `data:` line; the harness's payloads are single lines, and
    /// herald guarantees one `data:` line per event.
    pub data: Option<&'a [u8]>,
    /// Further `data:` lines beyond the first.
    pub extra_data_lines: u32,
    /// Whether a `retry:` line was present.
    pub retry: bool,
    /// Whether a comment line (`: ping`) was present.
    pub comment: bool,
}

impl Frame<'_> {
    fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.event.is_none()
            && self.data.is_none()
            && !self.retry
            && !self.comment
    }
}

/// Buffers a stream's body and hands out its complete frames.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// Where decoded body bytes are appended.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Calls `on_frame` for every complete frame in the buffer, then keeps
    /// only the unfinished tail. Returns the number of frames.
    pub fn frames(&mut self, mut on_frame: impl FnMut(&Frame<'_>)) -> usize {
        let mut count = 0;
        let consumed = {
            let buf = &self.buf[..];
            let mut frame = Frame::default();
            let mut pos = 0;
            let mut frame_end = 0;
            while let Some(nl) = memchr(b'\n', &buf[pos..]) {
                let end = pos + nl;
                let line = strip_cr(&buf[pos..end]);
                pos = end + 1;
                if line.is_empty() {
                    if !frame.is_empty() {
                        on_frame(&frame);
                        count += 1;
                    }
                    frame = Frame::default();
                    frame_end = pos;
                } else {
                    field(&mut frame, line);
                }
            }
            frame_end
        };
        self.buf.drain(..consumed);
        count
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn field<'a>(frame: &mut Frame<'a>, line: &'a [u8]) {
    if line[0] == b':' {
        frame.comment = true;
        return;
    }
    let (name, value) = match memchr(b':', line) {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    match name {
        b"id" => frame.id = Some(value),
        b"event" => frame.event = Some(value),
        b"data" if frame.data.is_none() => frame.data = Some(value),
        b"data" => frame.extra_data_lines += 1,
        b"retry" => frame.retry = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, event, data, comment) of each frame.
    type Owned = (Option<String>, Option<String>, Option<String>, bool);

    fn collect(p: &mut Parser) -> Vec<Owned> {
        let mut out = Vec::new();
        p.frames(|f| {
            let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
            out.push((s(f.id), s(f.event), s(f.data), f.comment));
        });
        out
    }

    #[test]
    fn parses_herald_frames_retry_and_pings() {
        let mut p = Parser::default();
        p.buffer().extend_from_slice(
            b"retry: 3000\n\nid: 42\nevent: bench\ndata: {\"id\":\"42\"}\n\n: ping\n\n",
        );
        let frames = collect(&mut p);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[1],
            (
                Some("42".into()),
                Some("bench".into()),
                Some("{\"id\":\"42\"}".into()),
                false
            )
        );
        assert!(frames[2].3, "ping is a comment");
        assert!(p.buf.is_empty());
    }

    #[test]
    fn keeps_a_partial_frame_until_its_blank_line() {
        let mut p = Parser::default();
        p.buffer()
            .extend_from_slice(b"id: 1\r\ndata: a\r\n\r\nid: 2\nda");
        assert_eq!(collect(&mut p).len(), 1);
        p.buffer().extend_from_slice(b"ta: b\n");
        assert_eq!(collect(&mut p).len(), 0);
        p.buffer().extend_from_slice(b"\n");
        let frames = collect(&mut p);
        assert_eq!(frames[0].0.as_deref(), Some("2"));
        assert_eq!(frames[0].2.as_deref(), Some("b"));
    }

    #[test]
    fn nchan_style_colon_ids_and_value_without_space() {
        let mut p = Parser::default();
        p.buffer()
            .extend_from_slice(b"id: 1700000000:3\ndata:{\"x\":1}\ndata: more\n\n");
        let mut got = None;
        p.frames(|f| {
            got = Some((
                f.id.unwrap().to_vec(),
                f.data.unwrap().to_vec(),
                f.extra_data_lines,
            ))
        });
        assert_eq!(
            got,
            Some((b"1700000000:3".to_vec(), b"{\"x\":1}".to_vec(), 1))
        );
    }
}
