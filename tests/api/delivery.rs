//! Delivery under load (issue #2): every subscriber gets the log's order
//! while publishers race, and a subscriber that stops reading is cut and
//! resumes without loss.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::helpers::*;

/// Reads events until one with `last` arrives; fails on a stream end.
async fn read_through(sse: &mut SseClient, last: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let ev = sse.next_event().await.expect("stream open");
        let id = ev.id_num();
        ids.push(id);
        if id >= last {
            return ids;
        }
    }
}

async fn log_ids(app: &TestApp) -> Vec<i64> {
    let mut conn = app.db.connect().await;
    sqlx::query_scalar("select id from events order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_publishers_reach_every_subscriber_in_log_order() {
    const PUBLISHERS: usize = 8;
    const PER_PUBLISHER: usize = 500;
    const SUBSCRIBERS: usize = 3;
    let app = spawn_app().await;
    let topic = unique_topic("order");
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sse = app.stream(&format!("topic={topic}"), None).await;
        assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));
        readers.push(tokio::spawn(async move {
            let mut frames = Vec::new();
            while frames.len() < PUBLISHERS * PER_PUBLISHER {
                frames.push(sse.next_event().await.expect("stream open"));
            }
            frames
        }));
    }

    // A pooled client: thousands of requests without a connection each.
    let client = reqwest::Client::new();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (client, url, topic) = (client.clone(), app.url("/v1/events"), topic.clone());
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let res = client
                        .post(&url)
                        .json(&json!({"topic": topic, "data": {"p": p, "i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 201);
                }
            })
        })
        .collect();
    let all = async {
        for p in publishers {
            p.await.unwrap();
        }
        let mut received = Vec::new();
        for r in readers {
            received.push(r.await.unwrap());
        }
        received
    };
    let received = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("publish and deliver 4000 events in time");

    let log = log_ids(&app).await;
    assert_eq!(log.len(), PUBLISHERS * PER_PUBLISHER);
    assert_eq!(log, (1..=log.len() as i64).collect::<Vec<_>>());
    for frames in &received {
        let ids: Vec<i64> = frames.iter().map(SseFrame::id_num).collect();
        assert_eq!(ids, log);
        // Each publisher's requests were sequential: its events keep its order.
        let mut next = [0_u64; PUBLISHERS];
        for f in frames {
            let data = &f.json()["data"];
            let p = data["p"].as_u64().unwrap() as usize;
            assert_eq!(data["i"].as_u64().unwrap(), next[p]);
            next[p] += 1;
        }
    }
    app.stop().await;
}

/// A subscriber that reads its response head and then nothing: its socket
/// buffers fill, then its queue.
struct StalledClient {
    socket: tokio::net::TcpStream,
    /// Bytes read past the head so far.
    body: Vec<u8>,
    chunked: bool,
}

impl StalledClient {
    async fn open(app: &TestApp, query: &str) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut socket = socket.connect(app.addr).await.unwrap();
        let request = format!(
            "GET /v1/stream?{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Connection: close\r\n\r\n",
            app.addr
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        // The head, then the `retry:` frame: the subscriber is attached.
        let head_end = loop {
            read_some(&mut socket, &mut buf).await;
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let rest = &buf[end + 4..];
                if find(rest, b"\n\n").is_some() && find(rest, b"retry: 200\n").is_some() {
                    break end;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        Self {
            socket,
            body: buf[head_end + 4..].to_vec(),
            chunked: head.contains("transfer-encoding: chunked"),
        }
    }

    /// Reads until the server closes; the SSE bytes of the whole body.
    async fn read_to_end(mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.socket.read_to_end(&mut self.body))
            .await
            .expect("the server ends the stream")
            .unwrap();
        if self.chunked {
            assert!(
                self.body.ends_with(b"\r\n0\r\n\r\n"),
                "the body ends with the last chunk, not a reset"
            );
            decode_chunked(&self.body)
        } else {
            self.body
        }
    }
}

async fn read_some(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0_u8; 4096];
    let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
        .await
        .expect("bytes in time")
        .unwrap();
    assert!(n > 0, "connection closed early");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), leniently: stops at
/// the last chunk or at a truncated one.
fn decode_chunked(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(body, b"\r\n") {
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size_text = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).expect("chunk size");
        let start = line_end + 2;
        if size == 0 || body.len() < start + size {
            break;
        }
        out.extend_from_slice(&body[start..start + size]);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
    out
}

/// Ids of the complete event frames in SSE text (frames with data, but
/// not the opening `event: stream` frame, whose `id:` marks a position).
fn frame_ids(sse: &[u8]) -> Vec<i64> {
    let text = String::from_utf8_lossy(sse);
    let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
    complete
        .split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .filter(|block| !block.lines().any(|l| l == "event: stream"))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|id| id.parse().expect("numeric id"))
        })
        .collect()
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_resumes_without_loss() {
    let app = spawn_app_with(|c| c.subscriber_queue = 16).await;
    let topic = unique_topic("slow");
    let stalled = StalledClient::open(&app, &format!("topic={topic}")).await;
    let lagged_before = app.metric("herald_streams_lagged_total").await;
    let published = Mutex::new(Vec::new());
    let big = "x".repeat(60_000);

    let (app_ref, topic_ref, big_ref, published_ref) = (&app, &topic, &big, &published);
    wait_for(
        "the stalled subscriber to be counted as lagged",
        || async move {
            let batch = (0..8)
                .map(
                    |i| json!({"topic": topic_ref, "type": "big", "data": format!("{i}{big_ref}")}),
                )
                .collect();
            let ids = app_ref.publish_batch_ok(batch).await;
            published_ref.lock().unwrap().extend(ids);
            app_ref.metric("herald_streams_lagged_total").await > lagged_before
        },
    )
    .await;
    // Published after the stream was dropped: only a resume can bring them.
    let after_lag = (0..8)
        .map(|i| json!({"topic": topic, "type": "after", "data": i}))
        .collect();
    let mut published = published.into_inner().unwrap();
    published.extend(app.publish_batch_ok(after_lag).await);
    let first = frame_ids(&stalled.read_to_end().await);
    let last_seen = *first.last().expect("some events before the lag");
    let mut resumed = app
        .stream(&format!("topic={topic}"), Some(&last_seen.to_string()))
        .await;
    let second = read_through(&mut resumed, *published.last().unwrap()).await;

    assert!(
        first.len() < published.len(),
        "a lagging stream cannot have had everything"
    );
    let union: Vec<i64> = first.iter().chain(&second).copied().collect();
    assert_eq!(union, published);
    app.stop().await;
}
