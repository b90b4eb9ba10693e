//! The request head as the accept loop reads it, before deciding which
//! writer serves the connection.

use std::mem::MaybeUninit;

use crate::request::RequestHead;

/// Most headers in a request: hyper's own limit, so a request refused here
/// for its headers would have been refused by hyper too.
pub const MAX_HEADERS: usize = 100;

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A complete HTTP/1.x request head, borrowed from the bytes read.
pub struct Head<'a> {
    pub method: &'a str,
    /// The request target, query string included.
    pub target: &'a str,
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The minor version: `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    /// Bytes of the head, its closing blank line included: where a body
    /// (or the next request) starts.
    pub len: usize,
}

/// What the bytes read so far are.
pub enum Parsed<'a> {
    Complete(Head<'a>),
    /// Not all of the head yet.
    Partial,
    /// HTTP/2 with prior knowledge: hyper's to serve.
    Http2,
    /// Not HTTP/1 at all, or a malformed head: why.
    Invalid(&'static str),
    TooManyHeaders,
}

impl<'a> Head<'a> {
    pub fn parse(buf: &'a [u8]) -> Parsed<'a> {
        if let Some(h2) = preface(buf) {
            return h2;
        }
        // Uninitialised: the parser writes the headers it finds, and a
        // head on every publish need not clear room for a hundred first.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Ok(httparse::Status::Complete(len)) => {
                let (Some(method), Some(target), Some(version)) =
                    (req.method, req.path, req.version)
                else {
                    return Parsed::Invalid("incomplete request line");
                };
                Parsed::Complete(Head {
                    method,
                    target,
                    headers: req.headers.iter().map(|h| (h.name, h.value)).collect(),
                    version,
                    len,
                })
            }
            Err(httparse::Error::TooManyHeaders) => Parsed::TooManyHeaders,
            Err(e) => Parsed::Invalid(describe(e)),
        }
    }

    /// Whether `buf` is the start of a head and no more: as
    /// `matches!(Head::parse(buf), Parsed::Partial)`, without collecting
    /// the headers (the accept loop asks after every read).
    pub fn is_partial(buf: &[u8]) -> bool {
        if let Some(h2) = preface(buf) {
            return matches!(h2, Parsed::Partial);
        }
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        matches!(
            req.parse_with_uninit_headers(buf, &mut headers),
            Ok(httparse::Status::Partial)
        )
    }

    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Whether the request has a body or asks to switch protocols: then it
    /// is not a stream request this server writes itself.
    pub fn has_body_or_upgrade(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("transfer-encoding")
                || (name.eq_ignore_ascii_case("content-length") && *value != b"0")
        })
    }
}

impl RequestHead for Head<'_> {
    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }
}

/// What the HTTP/2 preface makes of `buf`: all of it (HTTP/2), the start
/// of it (partial), or nothing (`None`: HTTP/1 to parse).
fn preface(buf: &[u8]) -> Option<Parsed<'static>> {
    if buf.starts_with(H2_PREFACE) {
        Some(Parsed::Http2)
    } else if H2_PREFACE.starts_with(buf) {
        Some(Parsed::Partial)
    } else {
        None
    }
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::Version => "not an HTTP/1.x request",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_is_complete_with_its_query_and_headers() {
        let raw = b"GET /v1/stream?topic=a&topic=b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n";
        let Parsed::Complete(head) = Head::parse(raw) else {
            panic!("complete");
        };
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/v1/stream");
        assert_eq!(head.query(), "topic=a&topic=b");
        assert_eq!(head.header_values("last-event-id"), [b"5"]);
        assert!(!head.has_body_or_upgrade());
        assert_eq!((head.version, head.len), (1, raw.len()));
    }

    #[test]
    fn bad_heads_are_named() {
        assert!(matches!(
            Head::parse(b"GET /a\0b HTTP/1.1\r\n\r\n"),
            Parsed::Invalid("invalid method or request target")
        ));
        assert!(matches!(
            Head::parse(b"GET / HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        assert!(matches!(
            Head::parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Parsed::Http2
        ));
        assert!(matches!(Head::parse(b"PRI * HT"), Parsed::Partial));
        for partial in [&b""[..], b"PRI * HT", b"GET / HTTP/1.1\r\nHo"] {
            assert!(Head::is_partial(partial), "{partial:?}");
        }
        for whole in [
            &b"PRI * HTTP/2.0\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /a\0b",
        ] {
            assert!(!Head::is_partial(whole), "{whole:?}");
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            Head::parse(many.as_bytes()),
            Parsed::TooManyHeaders
        ));
    }
}
