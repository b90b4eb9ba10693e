//! What every SSE parser needs from the wire (issue #22), read off raw
//! connections so nothing between herald and the test smooths it over:
//! - every frame that sets `id:` or `retry:` also carries `data:`, since
//!   many parsers drop a frame without data, and its id and retry with it;
//! - HTTP/1.1 streams are chunked (HTTP/1.0 ones end with the connection),
//!   so an HTTP stack that fills fixed-size read blocks still hands each
//!   event on as it comes.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;

/// Heartbeats far apart: nothing but the frames under test goes out.
const QUIET: Duration = Duration::from_secs(600);

/// How a raw stream request is sent and written.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// HTTP/1.1, written by herald's socket writer.
    Http11,
    /// HTTP/1.0, written by herald's socket writer.
    Http10,
    /// HTTP/1.1 with a one-byte body, which the accept loop leaves to hyper.
    Http11ThroughHyper,
}

impl Way {
    fn request(self, path_and_query: &str, last_event_id: Option<&str>) -> Vec<u8> {
        let version = match self {
            Self::Http10 => "1.0",
            Self::Http11 | Self::Http11ThroughHyper => "1.1",
        };
        let mut req = format!("GET {path_and_query} HTTP/{version}\r\nHost: herald.test\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        match self {
            Self::Http11ThroughHyper => req.push_str("Content-Length: 1\r\n\r\nx"),
            Self::Http10 | Self::Http11 => req.push_str("\r\n"),
        }
        req.into_bytes()
    }
}

/// Where a chunked body's decoder is.
enum Chunks {
    /// Reading a chunk's size line.
    Size,
    /// This many bytes of the chunk's data are still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The last chunk came: the body is whole.
    Done,
}

/// A stream read off a raw HTTP/1.x connection, its body decoded as its
/// head says: chunked, or up to the connection's end.
struct RawStream {
    tcp: TcpStream,
    /// The response head, as sent.
    head: String,
    /// Bytes after the head not yet decoded.
    wire: Vec<u8>,
    chunked: bool,
    chunks: Chunks,
    /// The decoded body so far.
    body: Vec<u8>,
    /// The connection ended.
    closed: bool,
}

impl RawStream {
    async fn open(app: &TestApp, way: Way, query: &str, last_event_id: Option<&str>) -> Self {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(&way.request(&format!("/v1/stream?{query}"), last_event_id))
            .await
            .unwrap();
        let mut wire = Vec::new();
        let end = loop {
            if let Some(at) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0_u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("a response head in time")
                .unwrap();
            assert!(n > 0, "the connection ended before a response head");
            wire.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(wire[..end].to_vec()).unwrap();
        wire.drain(..end);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let chunked = head
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n");
        let mut stream = Self {
            tcp,
            head,
            wire,
            chunked,
            chunks: Chunks::Size,
            body: Vec::new(),
            closed: false,
        };
        stream.decode();
        stream
    }

    /// Decodes what has arrived, as far as it goes.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.wire);
            return;
        }
        loop {
            match self.chunks {
                Chunks::Size => {
                    let Some(at) = self.wire.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = std::str::from_utf8(&self.wire[..at]).unwrap();
                    let size = usize::from_str_radix(line, 16)
                        .unwrap_or_else(|_| panic!("a chunk size line, not {line:?}"));
                    self.wire.drain(..at + 2);
                    self.chunks = if size == 0 {
                        Chunks::Done
                    } else {
                        Chunks::Data(size)
                    };
                }
                Chunks::Data(left) => {
                    let n = left.min(self.wire.len());
                    if n == 0 {
                        return;
                    }
                    self.body.extend(self.wire.drain(..n));
                    self.chunks = if n == left {
                        Chunks::DataEnd
                    } else {
                        Chunks::Data(left - n)
                    };
                }
                Chunks::DataEnd => {
                    if self.wire.len() < 2 {
                        return;
                    }
                    assert_eq!(&self.wire[..2], b"\r\n", "a chunk ends with CRLF");
                    self.wire.drain(..2);
                    self.chunks = Chunks::Size;
                }
                Chunks::Done => {
                    // RFC 9112 §7.1: no trailer, then the final CRLF.
                    if self.wire.len() >= 2 {
                        assert_eq!(&self.wire[..2], b"\r\n", "the chunked body ends");
                        self.wire.drain(..2);
                    }
                    return;
                }
            }
        }
    }

    /// Reads until the decoded body holds `n` whole frames (or the
    /// connection ends); returns the frames so far.
    async fn frames(&mut self, n: usize) -> Vec<String> {
        loop {
            let frames = whole_frames(&self.body);
            if frames.len() >= n || self.closed {
                return frames;
            }
            let mut chunk = [0_u8; 4096];
            let read = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("more of the stream in time")
                .unwrap_or(0);
            if read == 0 {
                self.closed = true;
            }
            self.wire.extend_from_slice(&chunk[..read]);
            self.decode();
        }
    }
}

/// The whole frames (ended by a blank line) of an SSE body, without their
/// blank line.
fn whole_frames(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    let mut frames: Vec<String> = text.split("\n\n").map(str::to_owned).collect();
    frames.pop(); // what follows the last blank line is not whole yet
    frames
}

/// Fails unless every frame that sets `id:` or `retry:` has a `data:` line.
fn assert_id_and_retry_ride_with_data(frames: &[String], what: &str) {
    for frame in frames {
        let lines: Vec<&str> = frame.lines().collect();
        let sets = lines
            .iter()
            .any(|l| l.starts_with("id:") || l.starts_with("retry:"));
        let data = lines.iter().any(|l| l.starts_with("data:"));
        assert!(
            !sets || data,
            "{what}: a frame sets id or retry without data: {frame:?}"
        );
    }
}

/// Every frame herald writes that sets `id:` or `retry:` carries `data:`:
/// a fresh stream's opening, a resume's opening and its replay, a reset,
/// a `since=` start and live events, over HTTP/1.1 and HTTP/1.0 from the
/// socket writer and HTTP/1.1 and HTTP/2 through hyper.
#[tokio::test]
async fn every_frame_that_sets_id_or_retry_carries_data_on_every_writer() {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await;
    let topic = unique_topic("wire");
    let stored = app.publish_batch_ok(vec![json!({"topic": topic}); 3]).await;
    let t = format!("topic={topic}");
    // (query, Last-Event-ID, frames to read: the opening and what follows)
    let starts: [(String, Option<&str>, usize); 4] = [
        (t.clone(), None, 1),
        (t.clone(), Some("1"), 3),
        (t.clone(), Some("999999"), 2),
        (format!("{t}&since=1h"), None, 4),
    ];

    for way in [Way::Http11, Way::Http10, Way::Http11ThroughHyper] {
        for (query, cursor, n) in &starts {
            let mut raw = RawStream::open(&app, way, query, *cursor).await;
            let frames = raw.frames(*n).await;
            assert_eq!(frames.len(), *n, "{way:?} {query} {cursor:?}: {frames:?}");
            assert!(frames[0].contains("\nevent: stream\n"), "{frames:?}");
            assert_id_and_retry_ride_with_data(&frames, &format!("{way:?} {query} {cursor:?}"));
        }
    }
    let h2 = Writer::Http2.client();
    for (query, cursor, n) in &starts {
        let mut req = h2.get(app.url(&format!("/v1/stream?{query}")));
        if let Some(cursor) = cursor {
            req = req.header("last-event-id", *cursor);
        }
        let mut sse = SseClient::new(req.send().await.unwrap());
        for _ in 0..*n {
            sse.next_frame().await.unwrap();
        }
        let frames = whole_frames(&sse.raw);
        assert_id_and_retry_ride_with_data(&frames, &format!("HTTP/2 {query} {cursor:?}"));
    }

    // Live events, on a stream of each kind.
    let mut live = Vec::new();
    for way in [Way::Http11, Way::Http10, Way::Http11ThroughHyper] {
        let mut raw = RawStream::open(&app, way, &t, None).await;
        raw.frames(1).await;
        live.push(raw);
    }
    let next = app.publish_ok(&topic, json!("live")).await;
    for raw in &mut live {
        let frames = raw.frames(2).await;
        assert!(
            frames[1].starts_with(&format!("id: {next}\n")),
            "{frames:?}"
        );
        assert_id_and_retry_ride_with_data(&frames, "live");
    }
    assert_eq!(stored.len(), 3);
    app.stop().await;
}

/// HTTP/1.1 streams are chunked on both HTTP/1.1 writers, and the body a
/// stream ends ends with the last chunk; HTTP/1.0 has no chunks and ends
/// with the connection.
#[tokio::test]
async fn http11_streams_are_chunked_and_http10_streams_end_with_the_connection() {
    let mut app = spawn_app_with(|c| {
        c.heartbeat = QUIET;
        c.drain = Duration::from_millis(200);
    })
    .await;
    let topic = unique_topic("chunks");
    let mut streams = Vec::new();
    for way in [Way::Http11, Way::Http11ThroughHyper, Way::Http10] {
        let mut raw = RawStream::open(&app, way, &format!("topic={topic}"), None).await;
        raw.frames(1).await;
        streams.push((way, raw));
    }

    let stopping = app.begin_stop();
    for (way, raw) in &mut streams {
        let head = raw.head.to_ascii_lowercase();
        match way {
            Way::Http10 => assert!(!head.contains("transfer-encoding"), "{head}"),
            Way::Http11 | Way::Http11ThroughHyper => {
                assert!(
                    head.contains("\r\ntransfer-encoding: chunked\r\n"),
                    "{head}"
                );
            }
        }
        // The drain ends every stream; read to the connection's end.
        raw.frames(usize::MAX).await;
        assert!(raw.closed, "{way:?}");
        if raw.chunked {
            assert!(
                matches!(raw.chunks, Chunks::Done),
                "{way:?}: the body ended with its last chunk"
            );
        }
    }
    stopping.await.unwrap().unwrap();
}

/// A parser that drops frames without data, as several popular ones do
/// (the id and retry of such a frame with it), still resumes exactly
/// after a drop that comes before its first event: the opening frame
/// carries data. Before, it had none, and such a client came back with
/// no `Last-Event-ID` and missed everything published in between.
async fn a_parser_that_drops_data_less_frames_resumes_after_an_early_drop(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("early-drop");
    let proxy = ChaosProxy::start(app.addr).await;
    let client = writer.client();
    let url = format!("http://{}/v1/stream?topic={topic}", proxy.addr);

    let mut last_id: Option<String> = None;
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    let opening = sse.next_frame().await.unwrap();
    keep_id_as_a_lossy_parser_would(&opening, &mut last_id);
    proxy.cut();
    assert_eq!(sse.next_frame().await, None, "the drop ends the stream");
    let missed = app
        .publish_batch_ok(vec![json!({"topic": topic}); 20])
        .await;
    proxy.restore();

    let mut req = client.get(&url);
    if let Some(id) = &last_id {
        req = req.header("last-event-id", id);
    }
    let mut again = SseClient::new(req.send().await.unwrap());
    let live = app.publish_ok(&topic, json!("after")).await;
    let mut got = Vec::new();
    while got.last() != Some(&live) {
        let frame = again.next_frame().await.expect("the stream goes on");
        if frame.data.is_some() && !frame.is_stream_frame() {
            got.push(frame.id_num());
        }
    }

    let mut expected = missed;
    expected.push(live);
    assert_eq!(got, expected, "each missed event once, in order, then live");
    app.stop().await;
}
over_both_writers!(a_parser_that_drops_data_less_frames_resumes_after_an_early_drop);

/// The lossy rule: a frame without data is dropped whole, its `id:` too.
fn keep_id_as_a_lossy_parser_would(frame: &SseFrame, last_id: &mut Option<String>) {
    if frame.data.is_some()
        && let Some(id) = &frame.id
    {
        *last_id = Some(id.clone());
    }
}

/// A reader that takes the body in fixed 128-byte blocks, as urllib3 does
/// under Python's `requests`: a chunk it hands on whole (reading it in
/// blocks of at most 128 bytes), a body delimited by the connection's end
/// only a full block at a time.
struct BlockReader {
    tcp: TcpStream,
    chunked: bool,
}

impl BlockReader {
    async fn open(app: &TestApp, query: &str) -> Self {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(&Way::Http11.request(&format!("/v1/stream?{query}"), None))
            .await
            .unwrap();
        // The head, a byte at a time, so no body byte is taken with it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        Self {
            tcp,
            chunked: head.contains("\r\ntransfer-encoding: chunked\r\n"),
        }
    }

    /// The next piece of the body the reader hands on.
    async fn next(&mut self) -> Vec<u8> {
        if !self.chunked {
            let mut block = [0_u8; 128];
            self.tcp.read_exact(&mut block).await.unwrap();
            return block.to_vec();
        }
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.push(self.tcp.read_u8().await.unwrap());
        }
        let size = usize::from_str_radix(std::str::from_utf8(&line[..line.len() - 2]).unwrap(), 16)
            .unwrap();
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            let mut block = vec![0_u8; (size - data.len()).min(128)];
            self.tcp.read_exact(&mut block).await.unwrap();
            data.extend_from_slice(&block);
        }
        let mut crlf = [0_u8; 2];
        self.tcp.read_exact(&mut crlf).await.unwrap();
        data
    }
}

/// Each event reaches a reader of fixed 128-byte blocks within 100 ms of
/// its commit. Before, over a body delimited by the connection's end, an
/// event waited for the bytes of the next one (or a heartbeat) to fill
/// the block it ended in.
#[tokio::test]
async fn a_reader_of_128_byte_blocks_gets_each_event_within_100_ms_of_its_commit() {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await;
    let topic = unique_topic("blocks");
    let mut reader = BlockReader::open(&app, &format!("topic={topic}")).await;
    let mut body = Vec::new();
    while whole_frames(&body).is_empty() {
        body.extend(tokio::time::timeout(WAIT, reader.next()).await.unwrap());
    }

    for n in 0..5 {
        let id = app.publish_ok(&topic, json!(n)).await;
        let committed = Instant::now();
        let want = format!("id: {id}\n");
        let within = tokio::time::timeout(Duration::from_millis(100), async {
            while !whole_frames(&body).iter().any(|f| f.starts_with(&want)) {
                body.extend(reader.next().await);
            }
        })
        .await;
        assert!(
            within.is_ok(),
            "event {id} not whole {:?} after its commit",
            committed.elapsed()
        );
    }
    app.stop().await;
}
