//! Just enough HTTP/1.1 for a load client: requests are written by hand,
//! response heads parsed with `httparse`, bodies decoded (chunked, by
//! length, or until close) straight into the caller's buffer. A subscriber
//! is then one socket and two buffers, with no framework per connection.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
    pub content_type: Option<String>,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while
/// incomplete, else the head and its length in bytes.
///
/// # Errors
/// A malformed head.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf).context("malformed HTTP response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = res.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut close = res.version == Some(0);
    let mut content_type = None;
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if framing != Framing::Chunked {
                framing = Framing::Length(value.parse().context("bad Content-Length")?);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        }
    }
    // A status without a body.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((
        Head {
            status,
            framing,
            close,
            content_type,
        },
        len,
    )))
}

/// Decodes a body as its framing says.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    chunk: Chunk,
    remaining: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8 },
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            chunk: Chunk::Size {
                value: 0,
                digits: 0,
            },
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        match self.framing {
            Framing::Chunked => self.chunk == Chunk::Done,
            Framing::Length(_) => self.remaining == 0,
            Framing::UntilClose => false,
        }
    }

    /// Appends the body bytes found in `input` to `out`; returns how many
    /// input bytes belonged to the body (the rest, if any, follow it).
    ///
    /// # Errors
    /// Malformed chunked encoding.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        match self.framing {
            Framing::UntilClose => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Framing::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..n]);
                self.remaining -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.decode_chunked(input, out),
        }
    }

    fn decode_chunked(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let mut i = 0;
        while i < input.len() && self.chunk != Chunk::Done {
            if self.chunk == Chunk::Data {
                let n =
                    (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[i..i + n]);
                self.remaining -= n as u64;
                i += n;
                if self.remaining == 0 {
                    self.chunk = Chunk::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.chunk = match (self.chunk, b) {
                (Chunk::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        bail!("chunk size too large");
                    }
                    let d = u64::from(hex(b));
                    Chunk::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits, .. }, b';' | b' ' | b'\t') if digits > 0 => {
                    self.remaining = self.size();
                    Chunk::Extension
                }
                (Chunk::Size { value, digits }, b'\r') if digits > 0 => {
                    self.remaining = value;
                    Chunk::SizeLf
                }
                (Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Extension, _) => Chunk::Extension,
                (Chunk::SizeLf, b'\n') if self.remaining == 0 => Chunk::TrailerStart,
                (Chunk::SizeLf, b'\n') => Chunk::Data,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                (Chunk::TrailerStart, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::TrailerLf, b'\n') => Chunk::Done,
                (state, b) => bail!("malformed chunked body: byte {b:#04x} in state {state:?}"),
            };
        }
        Ok(i)
    }

    fn size(&self) -> u64 {
        match self.chunk {
            Chunk::Size { value, .. } => value,
            _ => 0,
        }
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// A `GET` request with extra header lines (each `Name: value`).
pub fn get(path: &str, host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A `POST` request with a body.
pub fn post(path: &str, host: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads until a complete response head is in `buf`; returns it and its
/// length (body bytes may follow it in `buf`).
///
/// # Errors
/// The connection closed or failed first, or the head is malformed.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<(Head, usize)> {
    loop {
        if let Some(found) = parse_head(buf)? {
            return Ok(found);
        }
        if buf.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed before a response head");
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

/// A keep-alive connection for request/response exchanges (publishing).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// # Errors
    /// The connection cannot be made.
    pub async fn open(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<Self> {
        Ok(Self {
            stream: net::connect(target, source).await?,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole response.
    ///
    /// # Errors
    /// I/O errors, a malformed response, or a connection that closed early.
    pub async fn roundtrip(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let (head, len) = read_head(&mut self.stream, &mut self.buf).await?;
        let mut decoder = BodyDecoder::new(head.framing);
        let mut body = Vec::new();
        let mut start = len;
        loop {
            decoder.decode(&self.buf[start..], &mut body)?;
            if decoder.is_done() {
                break;
            }
            self.buf.clear();
            self.buf.reserve(4096);
            start = 0;
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                if head.framing == Framing::UntilClose {
                    break;
                }
                return Err(anyhow!("connection closed in the middle of a response"));
            }
        }
        Ok(Response {
            status: head.status,
            body,
            close: head.close || head.framing == Framing::UntilClose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chunked_event_stream_head() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nb\r\n";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(head.content_type.as_deref(), Some("text/event-stream"));
        assert_eq!(&raw[len..], b"b\r\n");
        assert!(parse_head(&raw[..20]).unwrap().is_none());
    }

    #[test]
    fn decodes_chunks_split_anywhere() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = BodyDecoder::new(Framing::Chunked);
            let mut out = Vec::new();
            let a = d.decode(&body[..split], &mut out).unwrap();
            assert_eq!(a, split);
            d.decode(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.is_done());
        }
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let mut d = BodyDecoder::new(Framing::Length(3));
        let mut out = Vec::new();
        assert_eq!(d.decode(b"abcdef", &mut out).unwrap(), 3);
        assert_eq!(out, b"abc");
        assert!(d.is_done());
    }

    #[test]
    fn rejects_garbage_in_chunked_body() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.decode(b"zz\r\n", &mut Vec::new()).is_err());
    }
}
