//! `GET /v1/stream` over HTTP/1.x, written straight to the socket (see
//! `server/mod.rs` for why: an idle stream then costs its subscription and
//! little else). What to answer is decided by [`Streams::open`]; this only
//! renders it.
//!
//! Over HTTP/1.1 the body of a `200` is chunked (RFC 9112 §7.1), as hyper
//! writes it: the frames ready at once go out as one chunk, in one
//! vectored write, its size line and CRLF around the frames' shared bytes
//! (no copy). A client's HTTP stack then hands each chunk on as it comes;
//! with a body delimited only by the connection's end, some (urllib3
//! under Python's `requests`) wait for a full read buffer and hold events
//! back for seconds. HTTP/1.0 has no chunks: its body is delimited by the
//! connection's end (RFC 9112 §6.3). Either way the connection ends with
//! the stream (`Connection: close`).
//!
//! A stream ends when its subscription does, when the client goes away,
//! when the hub drops it for falling behind, or when the client has taken
//! no bytes for `--write-timeout` while there were some to send (a replay
//! is not in the hub, so only this notices a client that stopped reading
//! it).

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
use crate::http::routes::Route;
use crate::stream::{EndReason, Opened, StreamBody, StreamResponse, Streams, Subscription};

/// Most chunks sent in one vectored write.
const MAX_BATCH: usize = 64;
/// How long the final flush and close may take on a client that stopped
/// reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream request this writer serves, decided.
pub struct StreamConn {
    response: StreamResponse,
    lagged: CancellationToken,
    /// How the body is delimited.
    framing: Framing,
}

/// How a stream's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP/1.1: chunks, and the last chunk at the end.
    Chunked,
    /// HTTP/1.0: the connection's end.
    Close,
}

/// The CRLF after a chunk's data.
const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk, with no trailer: the end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Takes the request if it is `GET /v1/stream` over HTTP/1.x without a
/// body or an upgrade; `None` hands it to hyper.
pub async fn accept(streams: &Streams, head: &Head<'_>, peer: IpAddr) -> Option<StreamConn> {
    if head.method != "GET"
        || Route::of(head.path()) != Some(Route::Stream)
        || head.has_body_or_upgrade()
    {
        return None;
    }
    let lagged = CancellationToken::new();
    let response = match streams.open(head, peer, lagged.clone()) {
        Opened::Ready(response) => response,
        Opened::Named(named) => named.answer().await,
    };
    Some(StreamConn {
        response,
        lagged,
        framing: if head.version >= 1 {
            Framing::Chunked
        } else {
            Framing::Close
        },
    })
}

/// A response head: the status line, `headers`, then `last`, the headers
/// this server writes itself (its framing: `Connection: close` here,
/// `Content-Length` and `Date` for a publish's answer), each after the
/// answer's own.
pub(super) fn response_head<'a>(
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    last: &[(&HeaderName, &[u8])],
) -> Bytes {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let own = headers.into_iter().map(|(n, v)| (n, v.as_bytes()));
    for (name, value) in own.chain(last.iter().copied()) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Bytes::from(head)
}

/// A head of this writer's, which always ends the connection after the
/// answer.
fn closing_head(status: StatusCode, headers: &[(HeaderName, HeaderValue)]) -> Bytes {
    let close: &[u8] = b"close";
    response_head(
        status,
        headers.iter().map(|(n, v)| (n, v)),
        &[(&header::CONNECTION, close)],
    )
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
    let mut batch = vec![closing_head(problem.status(), &headers), Bytes::from(body)];
    let _ = write_all(tcp, &mut batch, write_timeout).await;
}

/// Writes the answer until it ends.
pub async fn serve(mut tcp: TcpStream, conn: StreamConn, write_timeout: Duration) {
    let StreamConn {
        response,
        lagged,
        framing,
    } = conn;
    let StreamResponse {
        status,
        mut headers,
        body,
    } = response;
    match body {
        StreamBody::Events(mut sub) => {
            if framing == Framing::Chunked {
                headers.push((
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                ));
            }
            let head = closing_head(status, &headers);
            let out = Out {
                tcp: &tcp,
                lagged: &lagged,
                write_timeout,
                framing,
            };
            if write_stream(&out, head, &mut sub).await {
                // The stream ended and the client is still there: a
                // chunked body says so with its last chunk.
                finish_body(&out).await;
            }
        }
        StreamBody::Retry(retry) => {
            // One frame known in full: its length delimits it.
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(retry.len())));
            let mut batch = vec![closing_head(status, &headers), retry];
            let _ = write_all(&tcp, &mut batch, write_timeout).await;
        }
        StreamBody::Problem(problem) => {
            write_problem(&mut tcp, &problem, headers, write_timeout).await;
        }
    }
    close(tcp).await;
}

/// Where a stream's bytes go, and how.
struct Out<'a> {
    tcp: &'a TcpStream,
    /// Cancelled by the hub when the subscriber falls behind.
    lagged: &'a CancellationToken,
    write_timeout: Duration,
    framing: Framing,
}

/// Writes the head and then the stream's frames until it ends; `true`
/// when the body may end cleanly (the subscription ended it, or the chunk
/// in flight when it fell behind went out), `false` when the client went
/// away or stalled.
async fn write_stream(out: &Out<'_>, head: Bytes, sub: &mut Subscription) -> bool {
    let mut batch = Vec::with_capacity(4);
    batch.push(head);
    // The head is not part of the body: the first chunk starts after it.
    let mut body_from = 1;
    loop {
        // What is ready at once (the opening frame, a replay page) goes
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
                    None => return true,
                },
                () = client_gone(out.tcp) => {
                    sub.end(EndReason::ClientGone);
                    return false;
                }
            }
            continue;
        }
        if out.framing == Framing::Chunked {
            frame_chunk(&mut batch, body_from);
        }
        body_from = 0;
        // Nearly always the socket takes the whole batch at once: then no
        // timer is armed and no token watched. Only what it does not take
        // waits, watched for a stall and for the hub cutting the stream.
        match write_now(out.tcp, &mut batch) {
            Ok(()) if batch.is_empty() => continue,
            Ok(()) => {}
            Err(e) => {
                sub.end(why_ended(&e));
                return false;
            }
        }
        tokio::select! {
            written = write_all(out.tcp, &mut batch, out.write_timeout) => if let Err(e) = written {
                sub.end(why_ended(&e));
                return false;
            },
            () = out.lagged.cancelled() => {
                sub.end(EndReason::Lagged);
                return finish_chunk(out, &mut batch).await;
            }
        }
    }
}

/// Writes the rest of a chunk in flight, within `--write-timeout` in all,
/// so that a chunked body cut short (its subscriber fell behind) still
/// ends at a frame's end with its last chunk: an HTTP client reads that as
/// an end, where a chunk cut in half is a protocol error. `true` if it
/// went out.
async fn finish_chunk(out: &Out<'_>, batch: &mut Vec<Bytes>) -> bool {
    if out.framing != Framing::Chunked {
        return false;
    }
    let rest = write_all(out.tcp, batch, out.write_timeout);
    matches!(
        tokio::time::timeout(out.write_timeout, rest).await,
        Ok(Ok(()))
    )
}

/// Makes the frames of `batch` from `from` on one chunk: its size line
/// before them, CRLF after. Nothing to frame, nothing added (a chunk of
/// size 0 would end the body).
fn frame_chunk(batch: &mut Vec<Bytes>, from: usize) {
    let size: usize = batch[from..].iter().map(Bytes::len).sum();
    if size == 0 {
        return;
    }
    batch.insert(from, chunk_size_line(size));
    batch.push(Bytes::from_static(CHUNK_END));
}

/// `size` in hex and CRLF: a chunk's first line (no chunk extensions).
fn chunk_size_line(size: usize) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    let mut line = Vec::with_capacity(digits + CHUNK_END.len());
    for shift in (0..digits).rev() {
        line.push(HEX[(size >> (shift * 4)) & 0xf]);
    }
    line.extend_from_slice(CHUNK_END);
    Bytes::from(line)
}

/// The end of a body that its stream ended (not its client): the last
/// chunk of a chunked body; nothing for one the connection's end delimits.
async fn finish_body(out: &Out<'_>) {
    if out.framing == Framing::Chunked {
        let mut last = vec![Bytes::from_static(LAST_CHUNK)];
        let _ = write_all(out.tcp, &mut last, out.write_timeout).await;
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

/// Writes what the socket takes without waiting, and drops it from
/// `batch`; what is left (if anything) waits for [`write_all`].
fn write_now(tcp: &TcpStream, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let n = fill(&mut slices, &batch[first..]);
        match tcp.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => first = advance(batch, first, written),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    batch.drain(..first);
    if batch.is_empty() && batch.capacity() > 8 {
        // A burst grew it; an idle stream should not keep the room.
        *batch = Vec::new();
    }
    Ok(())
}

/// Writes every chunk of `batch` (vectored) and empties it. A client that
/// takes no byte for `write_timeout` is given up on (`TimedOut`); one that
/// reads slowly but reads is not.
pub(super) async fn write_all(
    tcp: &TcpStream,
    batch: &mut Vec<Bytes>,
    write_timeout: Duration,
) -> std::io::Result<()> {
    loop {
        write_now(tcp, batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(write_timeout, tcp.writable())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    }
}

/// Points `slices` at the first chunks (as many as fit); returns how many.
fn fill<'a>(slices: &mut [IoSlice<'a>; MAX_BATCH], chunks: &'a [Bytes]) -> usize {
    let n = chunks.len().min(MAX_BATCH);
    for (slice, chunk) in slices.iter_mut().zip(&chunks[..n]) {
        *slice = IoSlice::new(chunk);
    }
    n
}

/// Moves past `written` bytes from chunk `first` on; returns the first
/// chunk not wholly written.
fn advance(batch: &mut [Bytes], mut first: usize, mut written: usize) -> usize {
    while first < batch.len() && written >= batch[first].len() {
        written -= batch[first].len();
        first += 1;
    }
    if written > 0 {
        // Part of a chunk went out: keep the rest (a cheap slice).
        let rest = batch[first].slice(written..);
        batch[first] = rest;
    }
    first
}

/// Ends a connection written here, giving a client that stopped reading
/// [`CLOSE_TIMEOUT`] to take the last bytes.
pub(super) async fn close(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tcp.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    fn chunks(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
            .collect()
    }

    #[test]
    fn chunk_size_lines_are_hex_without_leading_zeros() {
        for (size, line) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (0x1234_5678_9abc, "123456789abc\r\n"),
        ] {
            assert_eq!(chunk_size_line(size), line.as_bytes(), "{size}");
        }
    }

    #[test]
    fn a_chunk_frames_what_follows_the_head_and_nothing_empty() {
        let mut batch = vec![
            Bytes::from_static(b"HEAD"),
            Bytes::from_static(b"id: 1\n\n"),
            Bytes::from_static(b": ping\n\n"),
        ];
        frame_chunk(&mut batch, 1);
        assert_eq!(batch.concat(), b"HEADf\r\nid: 1\n\n: ping\n\n\r\n");

        let mut head_only = vec![Bytes::from_static(b"HEAD")];
        frame_chunk(&mut head_only, 1);
        assert_eq!(head_only.concat(), b"HEAD");
    }

    #[tokio::test]
    async fn what_the_socket_takes_at_once_leaves_the_batch() {
        let (server, mut client) = pair().await;
        let mut batch = chunks(3, 10);
        write_now(&server, &mut batch).unwrap();
        assert!(batch.is_empty());
        let mut got = [0_u8; 30];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], [[b'a'; 10], [b'b'; 10], [b'c'; 10]].concat());
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_waits_and_nothing_is_lost_or_repeated() {
        let (server, mut client) = pair().await;
        // Far more than the socket buffers hold while nobody reads.
        let sent = chunks(MAX_BATCH * 2, 256 * 1024);
        let whole: Vec<u8> = sent.iter().flat_map(|c| c.iter().copied()).collect();
        let mut batch = sent.clone();
        write_now(&server, &mut batch).unwrap();
        let left: usize = batch.iter().map(Bytes::len).sum();
        assert!(
            left > 0 && left < whole.len(),
            "a part went out, a part waits"
        );

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all(&server, &mut batch, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(batch.is_empty());
        drop(server);
        assert!(reader.await.unwrap() == whole, "the bytes, in order, once");
    }
}
