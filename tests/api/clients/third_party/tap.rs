//! A TCP relay between a client and herald that keeps what passed: each
//! connection's request head and the start of herald's answer. It tells a
//! test what no client library reports the same way: that a stream's
//! opening frame has reached the client, how many requests herald
//! answered and with which status, and the `Last-Event-ID` each request
//! carried.
//!
//! While herald is down, the relay accepts and closes at once (herald's
//! port refuses): the client sees a connection that ends before any
//! answer, a network error every client here retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::WAIT;

/// How much of each direction a connection keeps: a request head, and an
/// answer's head with its first frames.
const KEEP: usize = 64 * 1024;

pub(super) struct Tap {
    pub(super) addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    accept: JoinHandle<()>,
}

/// What passed through one connection, in each direction.
#[derive(Debug, Clone, Default)]
pub(super) struct Connection {
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Tap {
    /// Relays `127.0.0.1:<port of its own>` to `upstream`.
    pub(super) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let accept = tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let index = {
                        let mut all = connections.lock().unwrap();
                        all.push(Connection::default());
                        all.len() - 1
                    };
                    tokio::spawn(relay(client, upstream, connections.clone(), index));
                }
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    /// `http://<the relay>/v1/stream?topic=<topic>`.
    pub(super) fn stream_url(&self, topic: &str) -> String {
        format!("http://{}/v1/stream?topic={topic}", self.addr)
    }

    pub(super) fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// Waits until the connections so far satisfy `done`; returns them.
    pub(super) async fn wait(
        &self,
        what: &str,
        done: impl Fn(&[Connection]) -> bool,
    ) -> Vec<Connection> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let connections = self.connections();
            if done(&connections) {
                return connections;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; connections so far:\n{}",
                summary(&connections)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Connection {
    /// The status herald answered with, once its status line has passed.
    pub(super) fn status(&self) -> Option<u16> {
        let line = self.response.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// A request header's value (the first of that name).
    pub(super) fn request_header(&self, name: &str) -> Option<String> {
        let head = String::from_utf8_lossy(&self.request);
        let head = head.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The request line.
    pub(super) fn request_line(&self) -> String {
        let head = String::from_utf8_lossy(&self.request);
        head.lines().next().unwrap_or("").to_owned()
    }

    /// The answer's body as it came (chunk sizes included, if chunked).
    fn body(&self) -> &[u8] {
        let head_end = self.response.windows(4).position(|w| w == b"\r\n\r\n");
        head_end.map_or(&[], |i| &self.response[i + 4..])
    }

    /// Whether a `200` stream's first frame (the opening frame) has been
    /// handed to the client: a blank line has passed in the body.
    pub(super) fn opening_frame_passed(&self) -> bool {
        self.status() == Some(200) && self.body().windows(2).any(|w| w == b"\n\n")
    }

    /// Whether an event (a frame with an envelope) has passed.
    pub(super) fn event_passed(&self) -> bool {
        self.body().windows(13).any(|w| w == b"data: {\"id\":\"")
    }
}

/// One line per connection, for failure messages.
pub(super) fn summary(connections: &[Connection]) -> String {
    connections
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "  #{i}: {} (Last-Event-ID {:?}) -> {}\n",
                c.request_line(),
                c.request_header("last-event-id"),
                c.status().map_or("no answer".to_owned(), |s| s.to_string())
            )
        })
        .collect()
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    index: usize,
) {
    // herald is down: the client's connection ends before any answer.
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, &connections, index, |c| &mut c
            .request),
        pump(server_read, client_write, &connections, index, |c| &mut c
            .response),
    );
}

/// Copies `from` to `to` until either end closes, keeping the first
/// [`KEEP`] bytes; then closes `to`'s sending side, as `from`'s end did.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connections: &Mutex<Vec<Connection>>,
    index: usize,
    side: fn(&mut Connection) -> &mut Vec<u8>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut all = connections.lock().unwrap();
            let kept = side(&mut all[index]);
            let room = KEEP.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
