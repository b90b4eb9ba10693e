//! A raw SSE reader over a real HTTP response, parsing frames as WHATWG
//! HTML §9.2.6 says and keeping every byte (EventSource-style parsers drop
//! the `: ping` comments).

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::WAIT;

/// One SSE frame as a client sees it (WHATWG HTML §9.2.6), with comments kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl SseFrame {
    /// The parsed `data:` JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data")).expect("data is JSON")
    }

    /// The `id:` as a number.
    pub fn id_num(&self) -> i64 {
        self.id
            .as_deref()
            .expect("frame has id")
            .parse()
            .expect("numeric id")
    }

    /// An event a page would handle: a frame with data, other than the
    /// stream's own `event: stream` frames (its opening, a stopping
    /// server's answer), which a browser fires only at a listener for them.
    pub fn is_event(&self) -> bool {
        self.data.is_some() && !self.is_stream_frame()
    }

    /// One of the stream's own `event: stream` frames.
    pub fn is_stream_frame(&self) -> bool {
        self.event.as_deref() == Some("stream")
    }
}

/// A raw SSE reader over a real HTTP response: it keeps every byte, so
/// tests can assert framing byte for byte and see `: ping` comments, which
/// EventSource-style parsers drop.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    /// Every byte received so far.
    pub raw: Vec<u8>,
    ended: bool,
}

impl SseClient {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// The next frame (blank-line terminated block), or `None` when the
    /// server ended the stream. Fails the test after [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        tokio::time::timeout(WAIT, self.next_frame_inner())
            .await
            .expect("an SSE frame in time")
    }

    /// Like `next_frame` but gives up after `d`, returning `Err(())`.
    pub async fn next_frame_within(&mut self, d: Duration) -> Result<Option<SseFrame>, ()> {
        tokio::time::timeout(d, self.next_frame_inner())
            .await
            .map_err(|_| ())
    }

    async fn next_frame_inner(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                return Some(parse_block(&block[..end.0]));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    /// The next event (skipping the `event: stream` frames and comments);
    /// `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseFrame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.is_event() {
                return Some(frame);
            }
        }
    }

    /// The next frame with data, herald's own (`stream`, `replaced`,
    /// `revoked`…) included, skipping comments; `None` when the stream
    /// ended.
    pub async fn next_data_frame(&mut self) -> Option<SseFrame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.data.is_some() {
                return Some(frame);
            }
        }
    }

    /// Exactly `n` event frames; fails the test if the stream ends first.
    pub async fn events(&mut self, n: usize) -> Vec<SseFrame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event().await {
                Some(f) => out.push(f),
                None => panic!("stream ended after {} of {n} events", out.len()),
            }
        }
        out
    }

    /// Reads frames until the server ends the stream; returns them.
    pub async fn until_end(&mut self) -> Vec<SseFrame> {
        let mut out = Vec::new();
        while let Some(f) = self.next_frame().await {
            out.push(f);
        }
        out
    }
}

/// Position of the first blank line: (end of block, end of separator).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some((i, i + sep.len()));
            }
        }
    }
    None
}

fn parse_block(block: &[u8]) -> SseFrame {
    let text = String::from_utf8(block.to_vec()).expect("SSE is UTF-8");
    let mut frame = SseFrame::default();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comments.push(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => {
                frame.data = Some(match frame.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                });
            }
            "retry" => frame.retry = value.parse().ok(),
            _ => {}
        }
    }
    frame
}

/// The opening frame herald writes, byte for byte: `retry:`, `id:` the
/// position the stream starts after, and `event: stream` with its JSON
/// data (the test config's `retry:` is 200 ms).
pub fn opening_frame(retry_ms: u64, after: i64, topics: &[&str]) -> String {
    let data = serde_json::json!({"after": after.to_string(), "topics": topics});
    format!("retry: {retry_ms}\nid: {after}\nevent: stream\ndata: {data}\n\n")
}
