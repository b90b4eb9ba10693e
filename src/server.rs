//! The accept loop: every connection's request head is read here first
//! (with a deadline, so a client that never finishes its headers cannot
//! hold a connection), then the connection goes one of two ways:
//!
//! - `GET /v1/stream` over HTTP/1.x with a well-formed query goes to
//!   [`crate::http::stream_conn`], which writes the event stream straight to
//!   the socket. An open stream is most of what a busy instance holds, and
//!   this path keeps it to the subscription itself: hyper would keep a read
//!   buffer and a write buffer (16 KiB and 8 KiB here) per connection for
//!   the stream's whole life.
//! - Everything else, including malformed stream requests (which get their
//!   problem+json answer there) and HTTP/2, goes to hyper and the axum
//!   router, with the bytes already read put back in front.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, stream_conn};

/// Longest a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read before handing over (hyper then answers 431).
const MAX_HEAD: usize = 16 * 1024;

/// Accepts connections until `stop_accepting`, then waits for the requests
/// in flight on hyper's connections. Stream connections end through the
/// shutdown token and are waited for by the caller.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    router: Router,
    stop_accepting: CancellationToken,
) {
    // Turn every route into its service once, not per connection (what
    // `axum::serve` would do, at a few KiB each).
    let router = router.with_state(());
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, _peer) = tokio::select! {
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
        let (state, router, watcher) = (state.clone(), router.clone(), graceful.watcher());
        tokio::spawn(handle(tcp, state, router, watcher));
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn handle(mut tcp: TcpStream, state: AppState, router: Router, watcher: Watcher) {
    let Ok(Some(head)) = tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut tcp)).await
    else {
        // Timed out or closed before a request: nothing to answer.
        return;
    };
    if let Some(stream) = stream_conn::accept(&state, &head) {
        drop(head);
        stream_conn::serve(tcp, stream).await;
        return;
    }
    serve_hyper(Prefixed::new(head.freeze(), tcp), router, watcher).await;
}

/// Reads until the end of the request head (or `MAX_HEAD` bytes, or what
/// does not look like HTTP/1, such as the HTTP/2 preface). `None` when the
/// client closed first.
async fn read_head(tcp: &mut TcpStream) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if tcp.read_buf(&mut buf).await.ok()? == 0 {
            return (!buf.is_empty()).then_some(buf);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            // Complete, invalid, too many headers or too long: decided by
            // the caller, or answered by hyper.
            _ => return Some(buf),
        }
    }
}

async fn serve_hyper(io: Prefixed, router: Router, watcher: Watcher) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let service = TowerToHyperService::new(router);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A socket with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl Prefixed {
    fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
