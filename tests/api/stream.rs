//! `GET /v1/stream` (DESIGN.md, "Subscribe"): headers, the opening `retry:`,
//! heartbeats, framing byte for byte, topic filters, refusals, a standard
//! SSE parser, ordering under concurrent publishers, and a slow consumer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::helpers::*;

/// A heartbeat long enough that no `: ping` falls between the frames a
/// byte-for-byte assertion expects.
const QUIET: Duration = Duration::from_secs(60);

#[tokio::test]
async fn stream_starts_with_retry_then_delivers_published_event() {
    let app = spawn_app().await;
    let topic = unique_topic("smoke");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let first = sse.next_frame().await.unwrap();
    assert_eq!(first.retry, Some(200));

    let id = app.publish_ok(&topic, json!({"n": 1})).await;
    let ev = sse.next_event().await.unwrap();

    assert_eq!(ev.id_num(), id);
    assert_eq!(ev.json()["data"], json!({"n": 1}));
    app.stop().await;
}

#[tokio::test]
async fn stream_answers_event_stream_headers_and_opens_with_exact_retry_bytes() {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await;
    let topic = unique_topic("headers");

    let res = app.stream_response(&format!("topic={topic}"), None).await;

    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut sse = SseClient::new(res);
    let first = sse.next_frame().await.unwrap();
    assert_eq!(first.retry, Some(200));
    assert_eq!(sse.raw, b"retry: 200\nid: 0\n\n");
    app.stop().await;
}

#[tokio::test]
async fn idle_stream_gets_ping_comments_at_the_heartbeat_interval() {
    let heartbeat = Duration::from_millis(100);
    let app = spawn_app_with(|c| c.heartbeat = heartbeat).await;
    let topic = unique_topic("heartbeat");
    let opened = Instant::now();
    let mut sse = app.stream(&format!("topic={topic}"), None).await;

    let frames = [
        sse.next_frame().await.unwrap(),
        sse.next_frame().await.unwrap(),
        sse.next_frame().await.unwrap(),
    ];

    assert_eq!(frames[0].retry, Some(200));
    for ping in &frames[1..] {
        assert_eq!(ping.comments, vec!["ping".to_owned()]);
        assert!(!ping.is_event());
    }
    assert_eq!(sse.raw, b"retry: 200\nid: 0\n\n: ping\n\n: ping\n\n");
    // Two intervals at least: pings are paced, not sent in a burst.
    assert!(opened.elapsed() >= heartbeat * 2, "{:?}", opened.elapsed());
    app.stop().await;
}

#[tokio::test]
async fn published_event_is_one_frame_byte_for_byte_with_the_publish_envelope() {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await;
    let topic = unique_topic("framing");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    sse.next_frame().await.unwrap();

    // Newlines, a CR, a line separator and a would-be SSE field inside the
    // data: none of them may break the frame.
    let res = app
        .publish(&json!({
            "topic": topic,
            "type": "incident.updated",
            "data": {"b": 1, "a": "line1\nline2\r\ndata: x\u{2028}é", "n": [1.50, null]},
        }))
        .await;
    assert_eq!(res.status(), 201);
    let envelope = res.text().await.unwrap();
    let published: Value = serde_json::from_str(&envelope).unwrap();
    let id = published["id"].as_str().unwrap().to_owned();
    let ev = sse.next_event().await.unwrap();

    let expected =
        format!("retry: 200\nid: 0\n\nid: {id}\nevent: incident.updated\ndata: {envelope}\n\n");
    assert_eq!(String::from_utf8(sse.raw.clone()).unwrap(), expected);
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert_eq!(ev.event.as_deref(), Some("incident.updated"));
    let data = ev.json();
    assert_eq!(data, published);
    assert_eq!(
        data.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["data", "id", "time", "topic", "type"]
    );
    assert_eq!(data["topic"], topic.as_str());
    assert_eq!(data["type"], "incident.updated");
    app.stop().await;
}

#[tokio::test]
async fn event_without_type_is_framed_as_message() {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await;
    let topic = unique_topic("framing");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    sse.next_frame().await.unwrap();

    let res = app.publish(&json!({"topic": topic, "data": "x"})).await;
    assert_eq!(res.status(), 201);
    let envelope = res.text().await.unwrap();
    let id = serde_json::from_str::<Value>(&envelope).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sse.next_event().await.unwrap();

    let expected = format!("retry: 200\nid: 0\n\nid: {id}\nevent: message\ndata: {envelope}\n\n");
    assert_eq!(String::from_utf8(sse.raw.clone()).unwrap(), expected);
    app.stop().await;
}

/// One event per topic, published as one batch after the stream opened,
/// then a marker on `marker_topic`; returns the ids the stream delivered up
/// to the marker (included) and, per published topic, its id.
async fn deliver_through_filter(
    app: &TestApp,
    query: &str,
    topics: &[String],
    marker_topic: &str,
) -> (Vec<i64>, Vec<(String, i64)>, i64) {
    let mut sse = app.stream(query, None).await;
    assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));

    let batch = topics
        .iter()
        .map(|t| json!({"topic": t, "data": {"topic": t}}))
        .collect();
    let ids = app.publish_batch_ok(batch).await;
    let marker = app.publish_ok(marker_topic, json!("marker")).await;

    let mut got = Vec::new();
    loop {
        let ev = sse.next_event().await.expect("stream open until marker");
        let id = ev.id_num();
        let env = ev.json();
        assert_eq!(env["id"], id.to_string());
        got.push((id, env["topic"].as_str().unwrap().to_owned()));
        if id >= marker {
            break;
        }
    }
    let published: Vec<(String, i64)> = topics.iter().cloned().zip(ids).collect();
    // The topic in each delivered envelope is the one that id was published to.
    for (id, topic) in &got {
        if *id != marker {
            assert!(published.contains(&(topic.clone(), *id)), "{id} {topic}");
        }
    }
    (
        got.into_iter().map(|(id, _)| id).collect(),
        published,
        marker,
    )
}

fn ids_of(published: &[(String, i64)], wanted: &[&String]) -> Vec<i64> {
    published
        .iter()
        .filter(|(t, _)| wanted.contains(&t))
        .map(|(_, id)| *id)
        .collect()
}

#[tokio::test]
async fn exact_topic_filter_delivers_only_that_topic() {
    let app = spawn_app().await;
    let base = unique_topic("exact");
    let (mine, longer, deeper, other) = (
        base.clone(),
        format!("{base}x"),
        format!("{base}:sub"),
        unique_topic("exact"),
    );
    let topics = [
        mine.clone(),
        longer,
        deeper,
        other,
        mine.clone(),
        mine.clone(),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, &format!("topic={mine}"), &topics, &mine).await;

    let mut expected = ids_of(&published, &[&mine]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}

#[tokio::test]
async fn prefix_filter_matches_deeper_topics_but_not_longer_names() {
    let app = spawn_app().await;
    let incident = format!("{}.incident", unique_topic("prefix"));
    let (a, ab, ac, incidents, bare) = (
        format!("{incident}:a"),
        format!("{incident}:a/b"),
        format!("{incident}:c.d-e_f"),
        format!("{incident}s"),
        incident.clone(),
    );
    let topics = [
        a.clone(),
        incidents.clone(),
        ab.clone(),
        bare.clone(),
        ac.clone(),
        format!("{incidents}:a"),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, &format!("topic={incident}:*"), &topics, &a).await;

    let mut expected = ids_of(&published, &[&a, &ab, &ac]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}

#[tokio::test]
async fn several_topic_filters_deliver_the_union_in_id_order() {
    let app = spawn_app().await;
    let (x, y, z) = (
        unique_topic("several"),
        unique_topic("several"),
        unique_topic("several"),
    );
    let deep = format!("{z}:deep/er");
    let noise = unique_topic("several");
    let topics = [
        x.clone(),
        noise.clone(),
        y.clone(),
        deep.clone(),
        x.clone(),
        noise,
        y.clone(),
        z.clone(),
    ];
    let query = format!("topic={x}&topic={y}&topic={z}:*");

    let (got, published, marker) = deliver_through_filter(&app, &query, &topics, &y).await;

    let mut expected = ids_of(&published, &[&x, &y, &deep]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}

#[tokio::test]
async fn no_topic_filter_delivers_every_topic() {
    let app = spawn_app().await;
    let topics = [
        unique_topic("all"),
        unique_topic("other"),
        format!("{}/deep/er", unique_topic("all")),
    ];

    let (got, published, marker) = deliver_through_filter(&app, "", &topics, &topics[0]).await;

    let mut expected: Vec<i64> = published.iter().map(|(_, id)| *id).collect();
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}

#[tokio::test]
async fn star_filter_delivers_every_topic() {
    let app = spawn_app().await;
    let topics = [
        unique_topic("star"),
        unique_topic("other"),
        format!("{}/deep/er", unique_topic("star")),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, "topic=*", &topics, &topics[1]).await;

    let mut expected: Vec<i64> = published.iter().map(|(_, id)| *id).collect();
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}

async fn assert_problem(res: reqwest::Response, status: u16, code: &str, what: &str) {
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{what}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn invalid_topic_filter_is_refused_with_problem_json() {
    let app = spawn_app().await;

    for query in [
        "topic=",
        "topic=a*b",
        "topic=**",
        "topic=a%20b",
        "topic=:a",
        "topic=a::*",
        "topic=a%0Ab",
        "topic=ok&topic=bad*x",
    ] {
        let res = app.stream_response(query, None).await;

        assert_problem(res, 400, "invalid_filter", query).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_query_parameter_is_refused_with_problem_json() {
    let app = spawn_app().await;

    for query in ["topics=a", "foo=1", "topic=a&lastEventId=3"] {
        let res = app.stream_response(query, None).await;

        assert_problem(res, 400, "bad_request", query).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn more_topic_filters_than_allowed_are_refused() {
    let app = spawn_app().await;
    let query = (0..65)
        .map(|i| format!("topic=t{i}"))
        .collect::<Vec<_>>()
        .join("&");

    let res = app.stream_response(&query, None).await;

    assert_problem(res, 400, "bad_request", "65 filters").await;
    app.stop().await;
}

#[tokio::test]
async fn standard_sse_parser_reads_ids_types_and_envelopes() {
    let app = spawn_app().await;
    let topic = unique_topic("parser");
    let res = app.stream_response(&format!("topic={topic}"), None).await;
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream().eventsource();

    let mut sent = Vec::new();
    for (ty, data) in [
        ("incident.opened", json!({"sev": 1})),
        ("note", json!("multi\nline\r\ntext")),
        ("incident.closed", json!([1, {"x": null}])),
    ] {
        let res = app
            .publish(&json!({"topic": topic, "type": ty, "data": data}))
            .await;
        assert_eq!(res.status(), 201);
        sent.push((ty, res.json::<Value>().await.unwrap()));
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("well-formed SSE");
        got.push(ev);
    }

    for (ev, (ty, envelope)) in got.iter().zip(&sent) {
        assert_eq!(ev.id, envelope["id"].as_str().unwrap());
        assert_eq!(ev.event, *ty);
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), *envelope);
        assert!(!ev.data.contains('\n'));
    }
    app.stop().await;
}

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

/// Ids of the complete event frames in SSE text (frames with data; the
/// opening frame's `id:` marks a position, not an event).
fn frame_ids(sse: &[u8]) -> Vec<i64> {
    let text = String::from_utf8_lossy(sse);
    let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
    complete
        .split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
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

#[tokio::test]
async fn message_events_stream_sends_frames_without_event_line() {
    let app = spawn_app().await;
    let topic = unique_topic("untyped");
    let mut sse = app
        .stream(&format!("topic={topic}&message_events=true"), None)
        .await;
    sse.next_frame().await.unwrap(); // retry:

    let res = app
        .publish(&json!({"topic": topic, "type": "incident.updated", "data": 1}))
        .await;
    let envelope = res.text().await.unwrap();
    let frame = sse.next_event().await.unwrap();

    assert_eq!(frame.event, None);
    assert_eq!(frame.data.as_deref(), Some(envelope.as_str()));
    let id = frame.id_num();
    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(
        raw.ends_with(&format!("id: {id}\ndata: {envelope}\n\n")),
        "{raw:?}"
    );
    app.stop().await;
}
