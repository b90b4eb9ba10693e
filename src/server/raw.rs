//! `GET /v1/stream` over HTTP/1.x, written straight to the socket (see
//! `server/mod.rs` for why: an idle stream then costs its subscription and
//! little else). What to answer is decided by [`Streams::open`]; this only
//! renders it.
//!
//! The body of a `200` is delimited by the connection's end
//! (`Connection: close`, RFC 9112 §6.3), so frames go out as they are, with
//! no chunk framing, and several frames ready at once go out in one
//! vectored write. A stream ends when its subscription does, when the
//! client goes away, when the hub drops it for falling behind, or when the
//! client has taken no bytes for `--write-timeout` while there were some
//! to send (a replay is not in the hub, so only this notices a client that
//! stopped reading it).

use std::io::IoSlice;
use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::head::Head;
use crate::error::ApiError;
use crate::stream::{self, EndReason, StreamBody, StreamResponse, Streams, Subscription};

/// Most chunks sent in one vectored write.
const MAX_BATCH: usize = 64;
/// How long the final flush and close may take on a client that stopped
/// reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream request this writer serves, decided.
pub struct StreamConn {
    response: StreamResponse,
    lagged: CancellationToken,
}

/// Takes the request if it is `GET /v1/stream` over HTTP/1.x without a
/// body or an upgrade; `None` hands it to hyper.
pub fn accept(streams: &Streams, head: &Head<'_>, peer: IpAddr) -> Option<StreamConn> {
    if head.method != "GET" || head.path() != stream::PATH || head.has_body_or_upgrade() {
        return None;
    }
    let lagged = CancellationToken::new();
    Some(StreamConn {
        response: streams.open(head, peer, lagged.clone()),
        lagged,
    })
}

/// A response head: status line, headers, and `Connection: close`.
pub(super) fn response_head(status: StatusCode, headers: &[(HeaderName, HeaderValue)]) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value.to_str().unwrap_or(""));
        head.push_str("\r\n");
    }
    head.push_str("connection: close\r\n\r\n");
    Bytes::from(head)
}

/// A refusal written straight to the socket (problem+json), then the end.
pub(super) async fn write_problem(
    tcp: &mut TcpStream,
    problem: &ApiError,
    mut headers: Vec<(HeaderName, HeaderValue)>,
    write_timeout: Duration,
) {
    let (problem_headers, body) = problem.problem();
    headers.extend(
        problem_headers
            .into_iter()
            .filter(|(name, _)| name != header::CONNECTION),
    );
    headers.push((header::CONTENT_LENGTH, HeaderValue::from(body.len())));
    let mut batch = vec![response_head(problem.status(), &headers), Bytes::from(body)];
    let _ = write_all(tcp, &mut batch, write_timeout).await;
}

/// Writes the answer until it ends.
pub async fn serve(mut tcp: TcpStream, conn: StreamConn, write_timeout: Duration) {
    let StreamConn { response, lagged } = conn;
    let StreamResponse {
        status,
        headers,
        body,
    } = response;
    match body {
        StreamBody::Events(sub) => {
            let head = response_head(status, &headers);
            write_stream(&mut tcp, head, sub, &lagged, write_timeout).await;
        }
        StreamBody::Retry(retry) => {
            let mut batch = vec![response_head(status, &headers), retry];
            let _ = write_all(&mut tcp, &mut batch, write_timeout).await;
        }
        StreamBody::Problem(problem) => {
            write_problem(&mut tcp, &problem, headers, write_timeout).await;
        }
    }
    close(tcp).await;
}

async fn write_stream(
    tcp: &mut TcpStream,
    head: Bytes,
    mut sub: Box<Subscription>,
    lagged: &CancellationToken,
    write_timeout: Duration,
) {
    let mut batch = Vec::with_capacity(4);
    batch.push(head);
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
                    None => return,
                },
                () = client_gone(tcp) => return sub.end(EndReason::ClientGone),
            }
            continue;
        }
        tokio::select! {
            written = write_all(tcp, &mut batch, write_timeout) => if let Err(e) = written {
                return sub.end(why_ended(&e));
            },
            () = lagged.cancelled() => return sub.end(EndReason::Lagged),
        }
    }
}

/// What a failed write says about the stream's end.
fn why_ended(e: &std::io::Error) -> EndReason {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::TimedOut => EndReason::Stalled,
        ErrorKind::BrokenPipe
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::WriteZero => EndReason::ClientGone,
        _ => EndReason::Error,
    }
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

/// Writes every chunk of `batch` (vectored) and empties it. A client that
/// takes no byte for `write_timeout` is given up on (`TimedOut`); one that
/// reads slowly but reads is not.
async fn write_all(
    tcp: &mut TcpStream,
    batch: &mut Vec<Bytes>,
    write_timeout: Duration,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let n = (batch.len() - first).min(MAX_BATCH);
        for (slice, chunk) in slices.iter_mut().zip(&batch[first..first + n]) {
            *slice = IoSlice::new(chunk);
        }
        let mut written = tokio::time::timeout(write_timeout, tcp.write_vectored(&slices[..n]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
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
