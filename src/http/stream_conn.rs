//! `GET /v1/stream` over HTTP/1.x, written straight to the socket (see
//! `server.rs` for why: an idle stream then costs its subscription and
//! little else).
//!
//! Only well-formed requests come here; anything [`accept`] does not take
//! goes to hyper and the axum handler in `stream.rs`, which gives the same
//! answer or the problem+json refusal. The response is the same too:
//! `200 text/event-stream`, `Cache-Control: no-cache`,
//! `X-Accel-Buffering: no`, CORS headers for listed origins. Its body is
//! delimited by the connection's end (`Connection: close`, RFC 9112 §6.3),
//! so frames go out as they are, with no chunk framing, and several frames
//! ready at once go out in one vectored write.

use std::io::IoSlice;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::AppState;
use super::stream::{stream_request, subscribe};
use crate::event::retry_frame;
use crate::subscription::Subscription;
use crate::telemetry;

/// Most chunks sent in one vectored write.
const MAX_BATCH: usize = 64;
/// How long the final flush and close may take on a client that stopped
/// reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream request this module serves.
pub struct StreamConn {
    head: Bytes,
    body: Body,
}

enum Body {
    Stream(Box<Subscription>),
    /// The instance is stopping: `retry:` and the end.
    Retry(Bytes),
}

/// Takes the request if it is `GET /v1/stream` over HTTP/1.x, without a
/// body or an upgrade, and well-formed; `None` hands it to hyper.
pub fn accept(state: &AppState, head: &[u8]) -> Option<StreamConn> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.method != Some("GET") {
        return None;
    }
    let (path, query) = req.path?.split_once('?').unwrap_or((req.path?, ""));
    if path != "/v1/stream" {
        return None;
    }
    let mut last_event_ids = Vec::new();
    let mut origin = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("last-event-id") {
            last_event_ids.push(h.value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(h.value);
        } else if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && h.value != b"0")
        {
            return None;
        }
    }
    let request = stream_request(query, &last_event_ids).ok()?;
    let origin = origin
        .and_then(|o| std::str::from_utf8(o).ok())
        .filter(|o| state.cors_origins.iter().any(|allowed| allowed == o));
    let body = match subscribe(state, request) {
        Some(sub) => Body::Stream(Box::new(sub)),
        None => Body::Retry(retry_frame(state.streams.retry)),
    };
    metrics::counter!(
        telemetry::HTTP_REQUESTS,
        "method" => "GET",
        "route" => "/v1/stream",
        "status" => "200"
    )
    .increment(1);
    Some(StreamConn {
        head: response_head(origin),
        body,
    })
}

fn response_head(cors_origin: Option<&str>) -> Bytes {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\n\
         content-type: text/event-stream\r\n\
         cache-control: no-cache\r\n\
         x-accel-buffering: no\r\n\
         connection: close\r\n",
    );
    if let Some(origin) = cors_origin {
        head.push_str("access-control-allow-origin: ");
        head.push_str(origin);
        head.push_str("\r\naccess-control-allow-credentials: true\r\nvary: origin\r\n");
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// Writes the stream until it ends, the client goes away, or the client
/// stops reading long enough for the hub to drop it.
pub async fn serve(mut tcp: TcpStream, conn: StreamConn) {
    let mut batch = Vec::with_capacity(4);
    batch.push(conn.head);
    let mut sub = match conn.body {
        Body::Retry(retry) => {
            batch.push(retry);
            let _ = write_all(&mut tcp, &mut batch).await;
            close(tcp).await;
            return;
        }
        Body::Stream(sub) => sub,
    };
    sub.set_vectored();
    let lagged = sub.lagged();
    loop {
        // What is ready at once (the head, `retry:`, a replay page) goes
        // out before waiting for more.
        while batch.len() < MAX_BATCH {
            match sub.ready_chunk() {
                Some(chunk) => batch.push(chunk),
                None => break,
            }
        }
        if batch.is_empty() {
            tokio::select! {
                chunk = sub.next_chunk() => match chunk {
                    Some(chunk) => batch.push(chunk),
                    None => break,
                },
                () = client_gone(&tcp) => break,
            }
            continue;
        }
        tokio::select! {
            written = write_all(&mut tcp, &mut batch) => if written.is_err() { break },
            () = lagged.cancelled() => break,
        }
    }
    close(tcp).await;
}

/// Resolves when the client has closed its side (or reset the
/// connection). A client has nothing more to send on a stream; bytes it
/// sends anyway are read and dropped.
async fn client_gone(tcp: &TcpStream) {
    let mut sink = [0_u8; 64];
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match tcp.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Writes every chunk of `batch` (vectored) and empties it.
async fn write_all(tcp: &mut TcpStream, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let n = (batch.len() - first).min(MAX_BATCH);
        for (slice, chunk) in slices.iter_mut().zip(&batch[first..first + n]) {
            *slice = IoSlice::new(chunk);
        }
        let mut written = tcp.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while first < batch.len() && written >= batch[first].len() {
            written -= batch[first].len();
            first += 1;
        }
        if written > 0 {
            // Part of a chunk went out: keep the rest (a cheap slice).
            let rest = batch[first].slice(written..);
            batch[first] = rest;
        }
    }
    batch.clear();
    if batch.capacity() > 8 {
        // A burst grew it; an idle stream should not keep the room.
        *batch = Vec::new();
    }
    Ok(())
}

async fn close(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tcp.shutdown()).await;
}
