//! `POST /v1/events` over HTTP/1.1, read from the socket and answered on
//! it, for the publishes that arrive plain and whole; hyper serves the
//! rest, as before.
//!
//! Publishing is the one request herald answers thousands of times a
//! second, and hyper's HTTP/1 machinery cost a publish more than herald's
//! handler did: about 14,700 of its 71,000 instructions (callgrind,
//! `BENCHMARKS.md`, "Publishes answered on the socket"), for a head the
//! accept loop has already parsed. Here the head becomes the same
//! `Request` hyper would have made, the same [`Edge`] answers it (tokens,
//! grants, limits, CORS, the request count: nothing is decided twice),
//! and the answer is written with `Content-Length`, as hyper writes it.
//!
//! What this path takes is narrow on purpose, so that everything unusual
//! keeps hyper's handling of it:
//! - HTTP/1.1, `POST /v1/events`, one `Content-Length` of plain digits, at
//!   most `--max-body-bytes` and 64 KiB, and no `Transfer-Encoding`,
//!   `Expect` or `Upgrade`;
//! - the whole body already read, or readable at once without waiting.
//!   A body that trickles in goes to hyper, whose reading of it has the
//!   body timeout (`--body-timeout`).
//!
//! A connection handed to hyper stays with hyper. One kept alive here
//! reads its next request head as the first: within
//! [`HEADER_READ_TIMEOUT`](super::HEADER_READ_TIMEOUT) (hyper's
//! `header_read_timeout` closed an idle kept-alive connection after the
//! same time), and not once the server stops accepting, when an idle
//! connection is closed and an answer in flight says `Connection: close`,
//! as hyper's graceful shutdown does.

use std::cell::RefCell;
use std::io;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::head::Head;
use super::raw;
use crate::http::Edge;
use crate::http::routes::Route;

/// The largest body this path reads, before knowing who sends it; a
/// publish is usually far smaller.
const MAX_BODY: usize = 64 * 1024;

/// A publish this path answers, decided from its head.
pub(super) struct Plain {
    /// What hyper would have handed the edge, without the body.
    request: Request<()>,
    /// Bytes of the head: where the body starts.
    head_len: usize,
    body_len: usize,
    /// The client asked for the connection to close after the answer.
    close: bool,
}

/// What is left of the connection after an answer.
pub(super) enum Served {
    /// The next request's head is in the buffer.
    Next,
    /// Closed, or for closing: the client's wish, an error, a stop.
    Closed,
    /// The body has not all arrived: hyper reads it, from the buffer on.
    ToHyper,
}

/// Takes `head` if it is a publish this path answers (see the module's
/// comment); `None` leaves it to hyper.
pub(super) fn accept(head: &Head<'_>, max_body: usize) -> Option<Plain> {
    if head.method != "POST" || Route::of(head.path()) != Some(Route::Events) || head.version != 1 {
        return None;
    }
    let mut length = None;
    let mut close = false;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for &(name, value) in &head.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        if name == CONTENT_LENGTH {
            if length.is_some() {
                return None;
            }
            length = Some(content_length(value)?);
        } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return None;
        } else if name == CONNECTION {
            close |= has_close(value);
        }
        headers.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    // A large body is hyper's: it reads one only when the handler asks,
    // after the token is checked, and this path reads the body first.
    let body_len = length.filter(|n| *n <= max_body.min(MAX_BODY))?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::try_from(head.target).ok()?;
    *request.headers_mut() = headers;
    Some(Plain {
        request,
        head_len: head.len,
        body_len,
        close,
    })
}

/// Answers `plain`, whose head starts `buf`, and takes what of the
/// connection's bytes it read: the next request's stay in `buf`.
pub(super) async fn serve(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    plain: Plain,
    edge: &Edge,
    write_timeout: std::time::Duration,
    stop_accepting: &CancellationToken,
) -> Served {
    let whole = plain.head_len + plain.body_len;
    while buf.len() < whole {
        // No further than the body: the next request's bytes are read
        // with its head, within its limit.
        let missing = whole - buf.len();
        buf.reserve(missing);
        match tcp.try_read_buf(&mut (&mut *buf).limit(missing)) {
            // Gone mid-body: nobody would read an answer.
            Ok(0) => return Served::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Served::ToHyper,
            Err(_) => return Served::Closed,
        }
    }
    let body = buf.split_to(whole).freeze().slice(plain.head_len..);
    let (parts, ()) = plain.request.into_parts();
    let res = edge
        .answer(Request::from_parts(parts, Body::from(body)))
        .await;
    // Once the server stops accepting, an answer is the connection's
    // last, as hyper's graceful shutdown ends its kept-alive ones.
    let close = plain.close
        || stop_accepting.is_cancelled()
        || res
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_close(v.as_bytes()));
    match write_response(tcp, res, close, write_timeout).await {
        Ok(()) if !close => Served::Next,
        _ => Served::Closed,
    }
}

/// Writes `res` as hyper would: its headers, `Content-Length`, `Date`, and
/// `Connection: close` when the connection ends after it.
async fn write_response(
    tcp: &TcpStream,
    res: Response,
    close: bool,
    write_timeout: std::time::Duration,
) -> io::Result<()> {
    let (parts, body) = res.into_parts();
    // The edge's answers here are whole (JSON), so this does not wait.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(io::Error::other)?;
    let mut length = itoa::Buffer::new();
    let date = http_date();
    let framing: [(&HeaderName, &[u8]); 3] = [
        (&CONTENT_LENGTH, length.format(body.len()).as_bytes()),
        (&DATE, date.as_bytes()),
        (&CONNECTION, b"close"),
    ];
    let own = parts
        .headers
        .iter()
        .filter(|(name, _)| !framing.iter().any(|(framed, _)| name == framed));
    let last = if close { &framing[..] } else { &framing[..2] };
    let head = raw::response_head(parts.status, own, last);
    raw::write_all(tcp, &mut vec![head, body], write_timeout).await
}

/// A `Content-Length` as hyper takes it: digits only, no sign, no list.
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a `Connection` header lists `close`.
fn has_close(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// The current time as an HTTP date, formatted once a second per thread
/// (hyper caches its `Date` the same way).
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, date)| {
        if *at != second {
            *at = second;
            *date = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        date.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::head::Parsed;

    fn plain(raw: &[u8], max_body: usize) -> Option<Plain> {
        let Parsed::Complete(head) = Head::parse(raw) else {
            panic!("a complete head");
        };
        accept(&head, max_body)
    }

    #[test]
    fn a_plain_publish_is_taken_with_its_headers_and_lengths() {
        let raw = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive, Close\r\n\r\n";
        let taken = plain(raw, 100).expect("taken");
        assert_eq!((taken.head_len, taken.body_len), (raw.len(), 12));
        assert!(taken.close);
        assert_eq!(taken.request.method(), Method::POST);
        assert_eq!(taken.request.uri(), "/v1/events");
        assert_eq!(taken.request.headers()["content-type"], "application/json");
        assert_eq!(taken.request.headers()["content-length"], "12");
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        let left = [
            // Not a publish, or not HTTP/1.1.
            "GET /v1/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/stream HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/events HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            // No length, a length hyper refuses, two lengths, too long.
            "POST /v1/events HTTP/1.1\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            // Framing or a protocol hyper handles.
            "POST /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST /v1/events HTTP/1.1\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
        ];
        for raw in left {
            assert!(plain(raw.as_bytes(), 100).is_none(), "{raw:?}");
        }
        let at_limit = "POST /v1/events HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        assert!(plain(at_limit.as_bytes(), 100).is_some_and(|p| !p.close));
        // Within `--max-body-bytes` but larger than this path reads.
        let large = format!(
            "POST /v1/events HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(plain(large.as_bytes(), 1 << 20).is_none());
    }

    #[test]
    fn the_date_is_an_http_date() {
        let seen = http_date().to_str().unwrap().to_owned();
        assert!(httpdate::parse_http_date(&seen).is_ok(), "{seen}");
        assert_eq!(seen.len(), 29);
    }
}
