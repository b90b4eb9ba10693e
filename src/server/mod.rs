//! The accept loop: every connection's request head is read here first
//! (with a deadline, so a client that never finishes its headers cannot
//! hold a connection), then the connection goes one of four ways:
//!
//! - `GET /v1/stream` over HTTP/1.x goes to [`raw`], which writes the answer
//!   straight to the socket. An open stream is most of what a busy instance
//!   holds, and this path keeps it to the subscription itself: hyper would
//!   keep a read buffer and a write buffer (16 KiB and 8 KiB here) per
//!   connection for the stream's whole life.
//! - `POST /v1/events` over HTTP/1.1, plain and whole, goes to
//!   [`publish`], which answers it through the same `http::Edge` and
//!   writes the answer itself, then reads the connection's next head here
//!   again: hyper's HTTP/1 machinery cost a publish more than its handler.
//! - A head that is not HTTP at all, or that hyper would refuse (a NUL in
//!   the target, too many headers, too long), is answered here, with the
//!   same problem+json as every other refusal, and the connection closed.
//! - Everything else, including HTTP/2, goes to hyper and the axum router
//!   (through `http::Edge`), with the bytes already read put back in
//!   front; a head there over the same limit gets the same 431 from the
//!   edge. A connection whose stream falls behind is cut
//!   (`http::ConnectionCut`), and so is one whose client takes no bytes for
//!   `--write-timeout` ([`Prefixed`]).

mod capacity;
mod head;
mod publish;
mod raw;

pub use capacity::{max_connections, raise_file_limit};

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::http::routes::Route;
use crate::http::{ConnectionCut, Edge, Peer};
use crate::stream::Streams;
use capacity::{Capacity, OVER_CAP_HEAD_TIMEOUT};
use head::{Head, Parsed};
use publish::Served;

/// The most room a kept-alive connection's buffer keeps between requests.
const KEEP_CAPACITY: usize = 32 * 1024;

/// Longest a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (431 beyond), here and by `http::Edge`.
pub const MAX_HEAD: usize = 16 * 1024;
/// The HTTP/2 header list h2 lets through to herald, far above
/// [`MAX_HEAD`] so that herald refuses a large head itself, with the same
/// problem+json 431 as over HTTP/1 (`http::Edge`). At hyper's
/// default, 16 KiB, h2 answered a larger head with a bare 431 (no body),
/// and one over four times that (a 100 KB token) with a GOAWAY that ended
/// the connection and every stream on it (a proxy multiplexes many users'
/// streams on one). h2 still ends a connection whose head exceeds about
/// 160 KiB here (ten CONTINUATION frames), its flood protection.
const H2_MAX_HEADER_LIST: u32 = 128 * 1024;

/// Accepts connections until `stop_accepting`, then waits for the requests
/// in flight on hyper's connections. Stream connections end through the
/// shutdown token and are waited for by the caller. At most
/// `max_connections` are served in full (`capacity.rs`).
pub async fn serve(
    listener: TcpListener,
    streams: Streams,
    edge: Edge,
    stop_accepting: CancellationToken,
    max_connections: usize,
) {
    let graceful = GracefulShutdown::new();
    let capacity = Capacity::new(max_connections);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_accepting.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (streams, edge, watcher) = (streams.clone(), edge.clone(), graceful.watcher());
        let stop = stop_accepting.clone();
        let slot = capacity.take();
        tokio::spawn(handle(tcp, peer.ip(), slot, streams, edge, watcher, stop));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection. `slot` is its place under `--max-connections`,
/// held for its life, or the cap when there was none: then only health
/// checks and scrapes are served, one per connection, and the rest is
/// refused (`capacity.rs`).
async fn handle(
    mut tcp: TcpStream,
    peer: IpAddr,
    slot: Result<OwnedSemaphorePermit, usize>,
    streams: Streams,
    edge: Edge,
    watcher: Watcher,
    stop_accepting: CancellationToken,
) {
    let write_timeout = streams.settings.write_timeout;
    let over_cap = slot.as_ref().err().copied();
    let head_timeout = if over_cap.is_some() {
        OVER_CAP_HEAD_TIMEOUT
    } else {
        HEADER_READ_TIMEOUT
    };
    let mut buf = BytesMut::with_capacity(1024);
    if !matches!(
        tokio::time::timeout(head_timeout, read_head(&mut tcp, &mut buf)).await,
        Ok(true)
    ) {
        // Timed out or closed before a request: nothing to answer.
        return;
    }
    let conn = Conn {
        peer,
        streams: &streams,
        edge: &edge,
        over_cap,
    };
    // Boxed: deciding may await a named stream's record, and every
    // connection's task, an idle stream's included, would otherwise be as
    // large as that (a task is as large as its largest state).
    let mut way = Box::pin(conn.decide(&buf)).await;
    if let Way::Publish(plain) = way {
        // Boxed: the answer's future is large, and every connection's
        // task would otherwise be as large, an idle stream's included.
        // `watcher` is held meanwhile, so that a stop waits for an answer
        // in flight here as it does for hyper's.
        let publishes = conn.publish_while(&mut tcp, &mut buf, plain, &stop_accepting);
        way = Box::pin(publishes).await;
    }
    match way {
        Way::Stream(stream) => {
            drop(buf);
            raw::serve(tcp, stream, write_timeout).await;
        }
        Way::Refuse(refusal) => {
            raw::write_problem(&mut tcp, &refusal, Vec::new(), write_timeout).await;
            raw::close(tcp).await;
        }
        Way::Hyper(protocol) => {
            let io = Prefixed::new(buf.freeze(), tcp, write_timeout);
            // Beyond the cap, the one health check or scrape is answered
            // and the connection ends: it holds no slot.
            let keep_alive = over_cap.is_none();
            // Boxed, as the publish loop is: a task is as large as its
            // largest state, and hyper's connection (both protocols' state
            // in one future) made every connection's task, an idle
            // stream's included, 3 KiB larger (7.8 KiB an idle stream
            // against 4.8, found by bisecting to e04a932).
            Box::pin(serve_hyper(io, protocol, peer, edge, watcher, keep_alive)).await;
        }
        Way::Publish(_) | Way::Closed => raw::close(tcp).await,
    }
}

/// Where a request head sends its connection.
enum Way {
    /// `GET /v1/stream` over HTTP/1.x, written straight to the socket.
    Stream(raw::StreamConn),
    /// A plain publish, answered here (`publish.rs`).
    Publish(publish::Plain),
    /// Refused here, and the connection closed.
    Refuse(ApiError),
    /// Hyper's, from the buffer on, for the rest of the connection.
    Hyper(Protocol),
    /// Ended.
    Closed,
}

/// What deciding a connection's requests needs of it.
#[derive(Clone, Copy)]
struct Conn<'a> {
    peer: IpAddr,
    streams: &'a Streams,
    edge: &'a Edge,
    /// The cap, when this connection holds no slot under it.
    over_cap: Option<usize>,
}

impl Conn<'_> {
    /// The way of the request head at the start of `buf`.
    async fn decide(self, buf: &[u8]) -> Way {
        match Head::parse(buf) {
            // A head read with others (pipelined) can be whole past the limit
            // `read_head` stops at.
            Parsed::Complete(head) if head.len > MAX_HEAD => Way::Refuse(ApiError::HeadTooLarge(
                format!("a request head over {MAX_HEAD} bytes"),
            )),
            Parsed::Complete(head) => {
                if let Some(max) = self.over_cap
                    && !Route::of(head.path()).is_some_and(Route::is_ops)
                {
                    capacity::count_refusal();
                    return Way::Refuse(ApiError::TooManyConnections(max));
                }
                if let Some(stream) = raw::accept(self.streams, &head, self.peer).await {
                    Way::Stream(stream)
                } else if let Some(plain) = publish::accept(&head, self.edge.max_body_bytes()) {
                    Way::Publish(plain)
                } else {
                    Way::Hyper(Protocol::Http1)
                }
            }
            // An HTTP/2 connection beyond the cap is closed unanswered: its
            // requests could not be told apart before hyper has it.
            Parsed::Http2 if self.over_cap.is_some() => {
                capacity::count_refusal();
                Way::Closed
            }
            Parsed::Http2 => Way::Hyper(Protocol::Http2),
            Parsed::Invalid(why) => Way::Refuse(ApiError::MalformedRequest(why)),
            Parsed::TooManyHeaders => Way::Refuse(ApiError::HeadTooLarge(format!(
                "more than {} headers",
                head::MAX_HEADERS
            ))),
            // `read_head` stops at MAX_HEAD.
            Parsed::Partial => Way::Refuse(ApiError::HeadTooLarge(format!(
                "a request head over {MAX_HEAD} bytes"
            ))),
        }
    }

    /// Answers `first` and the publishes after it on the connection; returns
    /// the way of the first request that is not one (or `Closed`).
    async fn publish_while(
        self,
        tcp: &mut TcpStream,
        buf: &mut BytesMut,
        first: publish::Plain,
        stop_accepting: &CancellationToken,
    ) -> Way {
        let write_timeout = self.streams.settings.write_timeout;
        // What a kept-alive connection waits on between requests, made once:
        // a timer moved on for each request costs little, one made for each
        // did not.
        let idle = tokio::time::sleep(HEADER_READ_TIMEOUT);
        tokio::pin!(idle);
        let stopped = stop_accepting.cancelled();
        tokio::pin!(stopped);
        let mut plain = first;
        loop {
            match publish::serve(tcp, buf, plain, self.edge, write_timeout, stop_accepting).await {
                Served::ToHyper => return Way::Hyper(Protocol::Http1),
                Served::Closed => return Way::Closed,
                Served::Next => {}
            }
            if buf.capacity() > KEEP_CAPACITY {
                // A body grew it; a connection that waits for its next request
                // does not keep the room.
                *buf = BytesMut::from(&buf[..]);
            }
            // The next request, as hyper waits for one on a kept-alive
            // connection: within the head deadline, and closed idle once the
            // server stops accepting.
            idle.as_mut()
                .reset(tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
            let next = tokio::select! {
                biased;
                read = read_head(tcp, buf) => read,
                () = &mut idle => false,
                () = &mut stopped => false,
            };
            if !next {
                return Way::Closed;
            }
            plain = match self.decide(buf).await {
                Way::Publish(plain) => plain,
                // Only a connection's first bytes may be HTTP/2's preface.
                Way::Hyper(Protocol::Http2) => {
                    return Way::Refuse(ApiError::MalformedRequest(
                        "the HTTP/2 preface after HTTP/1.1 requests",
                    ));
                }
                other => return other,
            };
        }
    }
}

/// What a connection handed to hyper speaks, as its first bytes said.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the connection preface).
    Http2,
}

/// Reads into `buf` until it holds a whole request head (or `MAX_HEAD`
/// bytes, or what is not HTTP/1, such as the HTTP/2 preface); what `buf`
/// already holds (a pipelined request) counts. `false` when the client
/// closed having sent nothing more.
async fn read_head(tcp: &mut TcpStream, buf: &mut BytesMut) -> bool {
    loop {
        // Empty lines before a request line are ignored (RFC 9112 §2.2):
        // some clients send a CRLF after a body.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.advance(blank);
        // The blank line that ends a head is looked for first: a head
        // that has it is whole (or not HTTP/1, which `decide` tells), and
        // is parsed once, there. Only a read that ends before it is
        // parsed here, to refuse at once what can never become a head.
        let whole = memchr::memmem::find(buf, b"\r\n\r\n").is_some();
        let wants_more =
            buf.is_empty() || (!whole && Head::is_partial(buf) && buf.len() < MAX_HEAD);
        if !wants_more {
            return true;
        }
        match tcp.read_buf(buf).await {
            // What came before the end is answered (a partial head is
            // refused).
            Ok(0) => return !buf.is_empty(),
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

async fn serve_hyper(
    io: Prefixed,
    protocol: Protocol,
    peer: IpAddr,
    edge: Edge,
    watcher: Watcher,
    keep_alive: bool,
) {
    let cut = CancellationToken::new();
    // The edge and its router as one service per connection (an Arc
    // clone). A stream request is told how to end its connection and
    // where it comes from (`http/stream.rs`); no other handler asks, so
    // no other request carries them (extensions are a map allocated per
    // request).
    let service = TowerToHyperService::new(edge.map_request({
        let cut = cut.clone();
        move |mut req: Request<Incoming>| {
            if Route::of(req.uri().path()) == Some(Route::Stream) {
                req.extensions_mut().insert(ConnectionCut(cut.clone()));
                req.extensions_mut().insert(Peer(peer));
            }
            req
        }
    }));
    // The head already said which protocol this is, so hyper is given
    // the one it needs rather than one that reads the first bytes again
    // to find out. Neither serves upgrades: no route answers `101`.
    let io = TokioIo::new(io);
    let served = match protocol {
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(keep_alive)
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            watch(watcher.watch(conn), &cut).await
        }
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(H2_MAX_HEADER_LIST)
                .serve_connection(io, service);
            watch(watcher.watch(conn), &cut).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves a connection until it ends or is cut.
async fn watch(
    conn: impl Future<Output = hyper::Result<()>>,
    cut: &CancellationToken,
) -> hyper::Result<()> {
    tokio::select! {
        served = conn => served,
        () = cut.cancelled() => {
            tracing::debug!("connection cut: its stream fell behind");
            Ok(())
        }
    }
}

/// A socket with bytes already read from it put back in front, that gives
/// up on a client that takes no bytes for `write_timeout`: hyper waits for
/// a socket to take its writes however long that is, and a stream's bytes
/// would wait with it.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
    write_timeout: Duration,
    /// Armed while a write waits for the client; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Prefixed {
    fn new(prefix: Bytes, inner: TcpStream, write_timeout: Duration) -> Self {
        Self {
            prefix,
            inner,
            write_timeout,
            stalled: None,
        }
    }

    /// `poll` was a write's outcome: arms the stall timer while it waits
    /// (its waker then polls the write again when the time is up), and
    /// fails it once the time is up.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                // Let go of the buffer it was cut from (a kept-alive
                // connection's may have held a body) rather than keep it
                // for the connection's life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
