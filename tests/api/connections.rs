//! Publishes over kept-alive HTTP/1.1 connections, written by hand: the
//! accept loop answers plain publishes itself and hands anything else to
//! hyper (`src/server/publish.rs`). Whichever answers, a connection
//! carries its requests in order, pipelined or not, and ends when the
//! client asks, or idle when herald stops.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// One answer read off a connection.
struct Answer {
    status: u16,
    /// Header names in lowercase, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads answers off one connection, each delimited by its
/// `Content-Length`; bytes of the next answer stay for the next call.
struct Reader {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    async fn connect(app: &TestApp) -> Self {
        Self {
            tcp: TcpStream::connect(app.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Reads more; `false` at the connection's end.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0_u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("herald answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn answer(&mut self) -> Answer {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(self.fill().await, "the connection ended before an answer");
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("a Content-Length")
            .1
            .parse()
            .unwrap();
        while self.buf.len() < end + length {
            assert!(self.fill().await, "the connection ended mid-body");
        }
        let body = self.buf[end..end + length].to_vec();
        self.buf.drain(..end + length);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Waits for herald to close the connection, with nothing more sent.
    async fn closed(&mut self) {
        while self.fill().await {}
        assert!(self.buf.is_empty(), "nothing after the last answer");
    }
}

/// A connection that has sent a publish to a topic of its own with
/// `after` behind it, in one write, and read the publish's 201.
async fn after_a_publish(app: &TestApp, topic: &str, after: &[u8]) -> Reader {
    let mut conn = Reader::connect(app).await;
    let mut all = publish(&unique_topic(topic), 1, "");
    all.extend_from_slice(after);
    conn.send(&all).await;
    assert_eq!(conn.answer().await.status, 201);
    conn
}

fn publish(topic: &str, n: u32, extra: &str) -> Vec<u8> {
    let body = format!(r#"{{"topic":"{topic}","data":{{"n":{n}}}}}"#);
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Three publishes, each sent after the last answer, on one connection:
/// each is stored and answered in turn, with the headers hyper would
/// write, and the connection stays open between them.
#[tokio::test]
async fn publishes_on_one_kept_alive_connection_are_each_answered() {
    let app = spawn_app().await;
    let topic = unique_topic("kept");
    let mut conn = Reader::connect(&app).await;

    let mut ids = Vec::new();
    for n in 0..3 {
        conn.send(&publish(&topic, n, "")).await;
        let answer = conn.answer().await;
        assert_eq!(answer.status, 201);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert!(answer.header("connection").is_none(), "kept alive");
        let date = answer.header("date").expect("a Date");
        assert!(httpdate_like(date), "{date}");
        let body = answer.json();
        assert_eq!(body["data"]["n"], n);
        ids.push(body["id"].as_str().unwrap().parse::<i64>().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(stored_rows(&app.db).await, 3);
    app.stop().await;
}

/// Requests written all at once (pipelined): two publishes, a refused
/// publish, then a request hyper answers. Each gets its answer, in the
/// order sent; the refusal does not end the connection.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = spawn_app().await;
    let topic = unique_topic("pipelined");
    let mut conn = Reader::connect(&app).await;

    let mut all = publish(&topic, 1, "");
    all.extend(publish(&topic, 2, ""));
    all.extend(publish("bad topic", 3, ""));
    all.extend_from_slice(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n");
    conn.send(&all).await;

    let first = conn.answer().await;
    let second = conn.answer().await;
    assert_eq!((first.status, second.status), (201, 201));
    assert_eq!(first.json()["data"]["n"], 1);
    assert_eq!(second.json()["data"]["n"], 2);
    let refused = conn.answer().await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(conn.answer().await.status, 200, "then /healthz");
    assert_eq!(stored_rows(&app.db).await, 2);
    app.stop().await;
}

/// `Connection: close` is honoured: the answer says so and the connection
/// ends after it.
#[tokio::test]
async fn a_publish_asking_to_close_is_answered_then_closed() {
    let app = spawn_app().await;
    let topic = unique_topic("close");
    let mut conn = Reader::connect(&app).await;

    conn.send(&publish(&topic, 1, "connection: close\r\n"))
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.header("connection"), Some("close"));
    conn.closed().await;
    app.stop().await;
}

/// A body sent in a write after its head's is read whole, whichever side
/// reads it: the accept loop takes only a body that has arrived with its
/// head, and hyper reads the rest (and the connection's later requests).
#[tokio::test]
async fn a_body_that_comes_after_its_head_is_stored() {
    let app = spawn_app().await;
    let topic = unique_topic("later");
    let mut conn = Reader::connect(&app).await;

    for n in 0..2 {
        let request = publish(&topic, n, "");
        let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 + 5;
        conn.send(&request[..split]).await;
        conn.send(&request[split..]).await;
        let answer = conn.answer().await;
        assert_eq!(answer.status, 201);
        assert_eq!(answer.json()["data"]["n"], n);
    }
    assert_eq!(stored_rows(&app.db).await, 2);
    app.stop().await;
}

/// A kept-alive connection idle after a publish does not hold up a stop:
/// herald closes it as it stops, not when the connection's idle deadline
/// (10 s) or the stop's own grace (5 s, after which herald stops
/// waiting for connections) comes.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_when_herald_stops() {
    let app = spawn_app().await;
    let mut conn = after_a_publish(&app, "idle", b"").await;

    let stopping = std::time::Instant::now();
    app.stop().await;
    conn.closed().await;
    let took = stopping.elapsed();
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
}

/// A kept-alive connection that sends nothing after its answer is closed
/// at the head deadline, as a connection that never sends a head is.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_head_deadline() {
    let app = spawn_app().await;
    let mut conn = after_a_publish(&app, "idle-deadline", b"").await;

    // `closed` waits up to 20 s for the end; the deadline is 10 s.
    conn.closed().await;
    app.stop().await;
}

/// A head pipelined after a publish is held to the same 16 KiB limit as
/// a connection's first: 431, even when it arrives whole in one read.
#[tokio::test]
async fn a_pipelined_head_over_the_limit_is_refused_with_431() {
    let app = spawn_app().await;
    let topic = unique_topic("pipelined-large");
    let filler = "a".repeat(20 * 1024);
    let large = format!(
        "GET /v1/stream?topic={topic} HTTP/1.1\r\nhost: herald\r\nx-filler: {filler}\r\n\r\n"
    );
    let mut conn = after_a_publish(&app, "pipelined-large", large.as_bytes()).await;

    let refused = conn.answer().await;
    assert_eq!(refused.status, 431);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    conn.closed().await;
    app.stop().await;
}

/// The empty line some clients send after a body is ignored (RFC 9112
/// §2.2): the connection ends quietly when the client closes, with no
/// answer to a request never made.
#[tokio::test]
async fn an_empty_line_after_a_body_is_ignored() {
    let app = spawn_app().await;
    let mut conn = after_a_publish(&app, "crlf", b"\r\n").await;

    conn.tcp.shutdown().await.unwrap();
    conn.closed().await;
    app.stop().await;
}

/// HTTP/2's preface is a connection's first bytes or nothing: after
/// HTTP/1.1 requests it is refused, not served as HTTP/2.
#[tokio::test]
async fn an_http2_preface_after_http1_requests_is_refused() {
    let app = spawn_app().await;
    let mut conn = after_a_publish(&app, "late-h2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;

    assert_eq!(conn.answer().await.status, 400);
    conn.closed().await;
    app.stop().await;
}

/// An HTTP date as RFC 9110 writes it: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate_like(value: &str) -> bool {
    value.len() == 29 && value.ends_with(" GMT") && value.as_bytes()[3] == b','
}
