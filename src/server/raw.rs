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
    let StreamConn { response, lagged } = conn;
    let StreamResponse {
        status,
        headers,
        body,
    } = response;
    match body {
        StreamBody::Events(sub) => {
            let head = closing_head(status, &headers);
            write_stream(&mut tcp, head, sub, &lagged, write_timeout).await;
        }
        StreamBody::Retry(retry) => {
            let mut batch = vec![closing_head(status, &headers), retry];
            let _ = write_all(&tcp, &mut batch, write_timeout).await;
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
        // Nearly always the socket takes the whole batch at once: then no
        // timer is armed and no token watched. Only what it does not take
        // waits, watched for a stall and for the hub cutting the stream.
        match write_now(tcp, &mut batch) {
            Ok(()) if batch.is_empty() => continue,
            Ok(()) => {}
            Err(e) => return sub.end(why_ended(&e)),
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
