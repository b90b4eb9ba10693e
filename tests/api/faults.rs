//! Faults at the process level (issue #3): an instance killed with SIGKILL
//! while a client streams from it, PostgreSQL down for ten seconds and back,
//! and a SIGTERM that drains streams over the window while clients move to
//! another instance.
//!
//! Each test runs the real `herald` binary ([`HeraldProcess`]); the outage
//! test runs a PostgreSQL server of its own ([`PgCluster`]) so that the
//! machine's main server is never stopped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::helpers::*;

/// Bound on any single non-stream request (publish, `/readyz`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stream is watched after its last expected event, to show that
/// nothing (no duplicate) follows it: a few heartbeats.
const TAIL: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_instance_subscriber_resumes_on_survivor_exactly_once() {
    // Arrange: A and B on one log; a subscriber on A; 300 events through B.
    let db = TestDb::create().await;
    let mut a = HeraldProcess::start(&db.url, &[]).await;
    let b = HeraldProcess::start(&db.url, &[]).await;
    a.api.wait_ready().await;
    b.api.wait_ready().await;
    let topic = unique_topic("killed");
    // `last_event_id=0`: the subscriber misses nothing published before its
    // stream attached, so "every event of the topic" is well defined.
    let query = format!("topic={topic}&last_event_id=0");
    let mut sse = a.api.open_stream(&query, None).await;
    assert!(sse.next_frame().await.unwrap().retry.is_some());
    let publisher = tokio::spawn({
        let (b, topic) = (b.api.clone(), topic.clone());
        async move {
            let mut ids = Vec::new();
            for i in 0..300 {
                ids.push(b.publish_ok(&topic, json!({"i": i})).await);
            }
            ids
        }
    });

    // Act: kill A after 50 events; resume on B from the last id seen.
    let mut received = Vec::new();
    while received.len() < 50 {
        let frame = sse.next_event().await.expect("A streams until killed");
        received.push(frame.id_num());
    }
    a.kill9().await;
    // Complete frames that were already on the wire still count (the
    // stream may end cleanly or with an error: both end it).
    while let Some(frame) = sse.next_event().await {
        received.push(frame.id_num());
    }
    let last_seen = *received.last().unwrap();
    let mut sse = b.api.open_stream(&query, Some(last_seen)).await;
    let published = publisher.await.expect("publisher");
    let last = *published.last().unwrap();
    while *received.last().unwrap() < last {
        let frame = sse.next_event().await.expect("B streams");
        received.push(frame.id_num());
    }
    // Exactly once: no event may follow the last one.
    assert_only_pings_for(&mut sse, TAIL, "B after the last event").await;

    // Assert
    let log = log_ids(&db.url, &topic).await;
    assert_eq!(log, published, "the log holds every acknowledged event");
    assert_eq!(
        received, log,
        "every event once, in log order (killed after id {last_seen})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_gives_503_keeps_streams_and_recovers_by_itself() {
    const OUTAGE: Duration = Duration::from_secs(10);
    // Arrange: PostgreSQL of our own; a stream that has seen three events.
    let pg = PgCluster::init().await;
    let herald = HeraldProcess::start(
        &pg.url(),
        &[
            "--db-timeout",
            "1s",
            "--poll-interval",
            "200ms",
            "--listener-probe",
            "1s",
        ],
    )
    .await;
    let api = herald.api.clone();
    api.wait_ready().await;
    let topic = unique_topic("outage");
    let mut markers = Markers::default();
    let mut old = api
        .open_stream(&format!("topic={topic}&last_event_id=0"), None)
        .await;
    assert!(old.next_frame().await.unwrap().retry.is_some());
    let mut acked: Vec<(i64, String)> = Vec::new();
    for _ in 0..3 {
        let marker = markers.next();
        acked.push((
            api.publish_ok(&topic, json!({"marker": marker})).await,
            marker,
        ));
    }
    let before: Vec<i64> = old.events(3).await.iter().map(SseFrame::id_num).collect();
    assert_eq!(before, ids_of(&acked));
    let last_before = before[2];

    // Act + Assert, during the outage.
    pg.stop().await;
    let down_since = Instant::now();
    let mut rejected = vec![assert_publish_refused(&api, &topic, &mut markers).await];
    let res = api.stream_request(&format!("topic={topic}"), None).await;
    assert_eq!(res.status(), 200, "a new stream is never refused");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut new = SseClient::new(res);
    assert_eq!(new.next_frame().await.unwrap().retry, Some(200));
    let (old_raw, new_raw) = (old.raw.len(), new.raw.len());
    while down_since.elapsed() < OUTAGE {
        rejected.push(assert_publish_refused(&api, &topic, &mut markers).await);
        let (status, body) = api.readyz().await.expect("/readyz answers");
        assert_eq!(status, 503, "/readyz while PostgreSQL is down: {body}");
        assert_eq!(body["database"], false);
        // Holds the outage for a while, checking both streams meanwhile.
        assert_only_pings_for(&mut old, Duration::from_millis(500), "the old stream").await;
        assert_only_pings_for(&mut new, Duration::from_millis(500), "the new stream").await;
    }
    let old_pings = count(&old.raw[old_raw..], b": ping\n\n");
    let new_pings = count(&new.raw[new_raw..], b": ping\n\n");
    assert!(
        old_pings >= 10,
        "old stream pings during the outage: {old_pings}"
    );
    assert!(
        new_pings >= 10,
        "new stream pings during the outage: {new_pings}"
    );

    // Act: PostgreSQL comes back; herald is not restarted.
    pg.start().await;
    wait_for("/readyz to answer 200 again", || async {
        api.readyz().await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let marker = markers.next();
        let res = api.publish(&topic, json!({"marker": marker})).await;
        match res.status().as_u16() {
            201 => {
                acked.push((id_of(res).await, marker));
                break;
            }
            503 => rejected.push(marker),
            other => panic!("publish after the outage answered {other}"),
        }
        assert!(Instant::now() < deadline, "no publish succeeded in time");
        // Retry pacing, as a publisher honouring Retry-After would (shorter).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let marker = markers.next();
        acked.push((
            api.publish_ok(&topic, json!({"marker": marker})).await,
            marker,
        ));
    }

    // Assert: both streams got the new events; the log holds exactly the
    // acknowledged ones.
    let after: Vec<i64> = ids_of(&acked)
        .into_iter()
        .filter(|id| *id > last_before)
        .collect();
    let old_after: Vec<i64> = old
        .events(after.len())
        .await
        .iter()
        .map(SseFrame::id_num)
        .collect();
    let new_after: Vec<i64> = new
        .events(after.len())
        .await
        .iter()
        .map(SseFrame::id_num)
        .collect();
    assert_only_pings_for(&mut old, TAIL, "the old stream after the last event").await;
    assert_only_pings_for(&mut new, TAIL, "the new stream after the last event").await;
    assert_eq!(old_after, after, "the old stream after the outage");
    assert_eq!(new_after, after, "the stream opened during the outage");
    let log = log_events(&pg.url(), &topic).await;
    let stored: Vec<&str> = log.iter().map(|(_, m)| m.as_str()).collect();
    for marker in &rejected {
        assert!(
            !stored.contains(&marker.as_str()),
            "{marker} was answered 503 but is in the log"
        );
    }
    assert_eq!(log, acked, "the log is exactly the acknowledged events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_streams_over_the_window_then_exits() {
    const DRAIN: Duration = Duration::from_secs(2);
    // Arrange: 30 open streams, each past its `retry:` line.
    let db = TestDb::create().await;
    let mut herald = HeraldProcess::start(&db.url, &["--drain", "2s"]).await;
    let api = herald.api.clone();
    api.wait_ready().await;
    let overall = Instant::now() + Duration::from_secs(40);
    let mut readers = Vec::new();
    for _ in 0..30 {
        let res = api.stream_request("", None).await;
        assert_eq!(res.status(), 200);
        let mut stream = RawStream::new(res);
        let first = stream.read_frame(overall).await;
        assert_eq!(first, b"retry: 200\nid: 0\n\n");
        readers.push(tokio::spawn(stream.until_end(overall)));
    }

    // Act
    let signalled = Instant::now();
    herald.sigterm();

    // Assert: not ready, new streams told to come back, old ones spread out.
    let readyz = until_some("/readyz to fail while draining", || async {
        api.readyz()
            .await
            .filter(|(status, _)| *status == 503)
            .map(|(_, body)| body)
    })
    .await;
    assert_eq!(readyz["draining"], true, "{readyz}");
    assert_eq!(readyz["ready"], false, "{readyz}");
    let late = api.stream_request("", None).await;
    let asked_within = signalled.elapsed();
    assert!(
        asked_within < DRAIN,
        "the late stream came {asked_within:?} after SIGTERM"
    );
    assert_eq!(
        late.status(),
        200,
        "a stream during the window is not refused"
    );
    assert_eq!(late.headers()["content-type"], "text/event-stream");
    let late = RawStream::new(late).until_end(overall).await;
    assert_eq!(late.raw, b"retry: 200\n\n", "{:?}", late.text());
    assert!(late.clean, "the late stream ended cleanly");

    let mut ends = Vec::new();
    for reader in readers {
        let ended = reader.await.expect("stream reader");
        assert!(ended.clean, "a drained stream ended with an error");
        assert!(
            !ended.text().contains("data:"),
            "no event was published: {:?}",
            ended.text()
        );
        ends.push(ended.at - signalled);
    }
    ends.sort();
    let (first, last) = (ends[0], ends[ends.len() - 1]);
    assert!(
        last - first >= Duration::from_secs(1),
        "streams ended between {first:?} and {last:?} after SIGTERM: not spread"
    );
    assert!(
        last <= DRAIN + Duration::from_secs(5),
        "the last stream ended {last:?} after SIGTERM"
    );
    let status = herald
        .wait_exit((DRAIN + Duration::from_secs(10)).saturating_sub(signalled.elapsed()))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; logs:\n{}",
        herald.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnecting_client_moves_to_another_instance_during_drain_without_loss() {
    // Arrange: A (drain 1s) and B on one log; an EventSource-like client
    // that starts on A; a publisher that publishes through B until told.
    let db = TestDb::create().await;
    let mut a = HeraldProcess::start(&db.url, &["--drain", "1s"]).await;
    let b = HeraldProcess::start(&db.url, &[]).await;
    a.api.wait_ready().await;
    b.api.wait_ready().await;
    let topic = unique_topic("moving");
    let progress = Arc::new(ClientProgress::default());
    let (last_tx, last_rx) = watch::channel(None);
    let client = tokio::spawn(follow_like_eventsource(
        vec![a.api.clone(), b.api.clone()],
        format!("topic={topic}&last_event_id=0"),
        last_rx,
        progress.clone(),
    ));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (b, topic, stop) = (b.api.clone(), topic.clone(), stop_publishing.clone());
        async move {
            // A steady stream of events (pacing, not synchronisation), so
            // events keep coming throughout A's drain.
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) && ids.len() < 20_000 {
                pace.tick().await;
                ids.push(b.publish_ok(&topic, json!({"n": ids.len()})).await);
            }
            ids
        }
    });

    // Act: SIGTERM A mid-way; keep publishing until the client is on B.
    wait_for("the client to receive 50 events from A", || async {
        progress.events.load(Ordering::SeqCst) >= 50
    })
    .await;
    // Other clients keep A's drain window open after the client's own
    // stream has ended, so its reconnects may land on A while it drains.
    let mut others = Vec::new();
    for _ in 0..8 {
        others.push(a.api.open_stream("topic=elsewhere", None).await);
    }
    a.sigterm();
    let status = a.wait_exit(Duration::from_secs(1 + 10)).await;
    assert_eq!(status.code(), Some(0), "A's exit; logs:\n{}", a.logs());
    let at_exit = progress.events.load(Ordering::SeqCst);
    wait_for("the client to receive 50 more events from B", || async {
        progress.events.load(Ordering::SeqCst) >= at_exit + 50
    })
    .await;
    stop_publishing.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    last_tx.send_replace(Some(*published.last().unwrap()));
    let received = client.await.expect("client");

    // Assert
    let log = log_ids(&db.url, &topic).await;
    assert_eq!(log, published, "the log holds every acknowledged event");
    assert_eq!(received, log, "every event once, in log order");
    for mut other in others {
        assert!(other.until_end().await.iter().all(|f| !f.is_event()));
    }
    let connects = progress.connects.lock().unwrap().clone();
    assert!(
        connects[0] >= 1 && connects[1] >= 1,
        "connections per instance: {connects:?}"
    );
}

// ---------------------------------------------------------------------------
// Assertions and small helpers
// ---------------------------------------------------------------------------

/// Publishes an event that must be refused with `503`, `Retry-After` and a
/// problem+json body; returns its marker.
async fn assert_publish_refused(api: &Api, topic: &str, markers: &mut Markers) -> String {
    let marker = markers.next();
    let res = api.publish(topic, json!({"marker": marker})).await;
    assert_eq!(res.status(), 503, "publish while PostgreSQL is down");
    assert!(res.headers().contains_key("retry-after"), "Retry-After");
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "problem details (RFC 9457)"
    );
    let body: Value = res.json().await.expect("problem+json body");
    assert_eq!(body["status"], 503, "{body}");
    assert_eq!(body["code"], "database_unavailable", "{body}");
    marker
}

/// Reads `stream` for `hold`: at least one frame must come, and every frame
/// must be a `: ping` heartbeat (no event, no end).
async fn assert_only_pings_for(stream: &mut SseClient, hold: Duration, what: &str) {
    let until = Instant::now() + hold;
    let mut frames = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match stream.next_frame_within(left).await {
            Err(()) => break,
            Ok(None) => panic!("{what} ended during the outage"),
            Ok(Some(frame)) => {
                assert!(!frame.is_event(), "{what} got an event: {frame:?}");
                assert_eq!(frame.comments, ["ping"], "{what}: {frame:?}");
                frames += 1;
            }
        }
    }
    assert!(frames > 0, "{what} got no heartbeat in {hold:?}");
}

/// Distinct `data.marker` values, so the log can be searched for events
/// that were refused.
#[derive(Default)]
struct Markers(u32);

impl Markers {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("m{}", self.0)
    }
}

fn ids_of(events: &[(i64, String)]) -> Vec<i64> {
    events.iter().map(|(id, _)| *id).collect()
}

async fn id_of(res: reqwest::Response) -> i64 {
    let body: Value = res.json().await.expect("a stored event");
    body["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("numeric id")
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Polls `check` every 20 ms until it returns `Some`; fails after [`WAIT`].
async fn until_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect_log(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the log")
}

/// The ids of `topic` in the log, in id order.
async fn log_ids(url: &str, topic: &str) -> Vec<i64> {
    sqlx::query_scalar("select id from events where topic = $1 order by id")
        .bind(topic)
        .fetch_all(&mut connect_log(url).await)
        .await
        .expect("read the log")
}

/// `(id, data.marker)` of `topic` in the log, in id order.
async fn log_events(url: &str, topic: &str) -> Vec<(i64, String)> {
    sqlx::query_as("select id, data->>'marker' from events where topic = $1 order by id")
        .bind(topic)
        .fetch_all(&mut connect_log(url).await)
        .await
        .expect("read the log")
}

// ---------------------------------------------------------------------------
// An EventSource in miniature
// ---------------------------------------------------------------------------

/// What the EventSource-like client has done so far.
#[derive(Default)]
struct ClientProgress {
    events: AtomicUsize,
    /// Streams opened, per target.
    connects: Mutex<Vec<usize>>,
}

/// Behaves as `EventSource` does (WHATWG HTML §9.2): when the stream ends or
/// the connection fails it waits the last `retry:` and reconnects with
/// `Last-Event-ID`. It stays on one instance as long as that instance
/// answers, and moves to the next when a request to it fails (the process
/// is gone), as a load balancer would. Returns the event ids once
/// it has the id `last` says (set when the publisher is done).
async fn follow_like_eventsource(
    targets: Vec<Api>,
    query: String,
    last: watch::Receiver<Option<i64>>,
    progress: Arc<ClientProgress>,
) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(45);
    *progress.connects.lock().unwrap() = vec![0; targets.len()];
    // EventSource's default until the server sends `retry:`.
    let mut retry = Duration::from_secs(3);
    let mut target = 0;
    let mut ids: Vec<i64> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the client did not finish in time"
        );
        let res = match targets[target]
            .try_stream(&query, ids.last().copied())
            .await
        {
            Ok(res) => res,
            // Refused, or cut before an answer while the process exits.
            Err(_) if target + 1 < targets.len() => {
                target += 1;
                tokio::time::sleep(retry).await;
                continue;
            }
            Err(e) => panic!("stream request to instance {target} failed: {e}"),
        };
        // Any other answer would make EventSource give up for good.
        assert_eq!(res.status(), 200, "stream answer from instance {target}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        progress.connects.lock().unwrap()[target] += 1;
        let mut sse = SseClient::new(res);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match sse.next_frame_within(left).await {
                Err(()) => panic!("the client did not finish in time"),
                Ok(None) => break,
                Ok(Some(frame)) => frame,
            };
            if let Some(ms) = frame.retry {
                retry = Duration::from_millis(ms);
            }
            if frame.is_event() {
                assert_ne!(frame.event.as_deref(), Some("reset"), "{frame:?}");
                ids.push(frame.id_num());
                progress.events.fetch_add(1, Ordering::SeqCst);
            }
            // Heartbeats bring the client here even when no event comes.
            let want = *last.borrow();
            if want.is_some_and(|want| ids.last().is_some_and(|got| *got >= want)) {
                // Exactly once: no event may follow the last one.
                assert_only_pings_for(&mut sse, TAIL, "the client after the last event").await;
                return ids;
            }
        }
        // The reconnection delay the server asked for.
        tokio::time::sleep(retry).await;
    }
}

// ---------------------------------------------------------------------------
// A stream read to its end
// ---------------------------------------------------------------------------

/// A stream read as raw bytes, to tell a clean end (the chunked body's last
/// chunk) from a cut connection.
struct RawStream {
    res: reqwest::Response,
    raw: Vec<u8>,
}

struct Ended {
    raw: Vec<u8>,
    /// The body ended as HTTP says, not with an error.
    clean: bool,
    at: Instant,
}

impl Ended {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

impl RawStream {
    fn new(res: reqwest::Response) -> Self {
        Self {
            res,
            raw: Vec::new(),
        }
    }

    async fn chunk(&mut self, deadline: Instant) -> reqwest::Result<Option<Bytes>> {
        tokio::time::timeout_at(deadline, self.res.chunk())
            .await
            .expect("the stream did not end in time")
    }

    /// The first blank-line-terminated frame (taken out of `raw`).
    async fn read_frame(&mut self, deadline: Instant) -> Vec<u8> {
        loop {
            if let Some(end) = self.raw.windows(2).position(|w| w == b"\n\n") {
                return self.raw.drain(..end + 2).collect();
            }
            match self.chunk(deadline).await {
                Ok(Some(chunk)) => self.raw.extend_from_slice(&chunk),
                other => panic!("the stream ended before its first frame: {other:?}"),
            }
        }
    }

    /// Reads until the body ends; notes how and when.
    async fn until_end(mut self, deadline: Instant) -> Ended {
        loop {
            match self.chunk(deadline).await {
                Ok(Some(chunk)) => self.raw.extend_from_slice(&chunk),
                end => {
                    return Ended {
                        raw: self.raw,
                        clean: end.is_ok(),
                        at: Instant::now(),
                    };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// herald as a process
// ---------------------------------------------------------------------------

/// A client for one herald instance; cheap to clone.
#[derive(Clone)]
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn publish(&self, topic: &str, data: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/events"))
            .json(&json!({"topic": topic, "data": data}))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .expect("publish request")
    }

    /// Publishes one event and returns its id; fails unless `201`.
    async fn publish_ok(&self, topic: &str, data: Value) -> i64 {
        let res = self.publish(topic, data).await;
        assert_eq!(res.status(), 201, "publish to {topic}");
        id_of(res).await
    }

    /// `/readyz` status and body; `None` if the instance does not answer.
    async fn readyz(&self) -> Option<(u16, Value)> {
        let res = self
            .client
            .get(self.url("/readyz"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        Some((status, res.json().await.ok()?))
    }

    async fn wait_ready(&self) {
        wait_for("herald to be ready", || async {
            self.readyz().await.is_some_and(|(status, _)| status == 200)
        })
        .await;
    }

    /// `GET /v1/stream?{query}`, with `Last-Event-ID` if given.
    async fn try_stream(
        &self,
        query: &str,
        last_event_id: Option<i64>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self.client.get(self.url(&format!("/v1/stream?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        tokio::time::timeout(REQUEST_TIMEOUT, req.send())
            .await
            .expect("the stream's head in time")
    }

    async fn stream_request(&self, query: &str, last_event_id: Option<i64>) -> reqwest::Response {
        self.try_stream(query, last_event_id)
            .await
            .expect("stream request")
    }

    /// A stream that must answer `200 text/event-stream`.
    async fn open_stream(&self, query: &str, last_event_id: Option<i64>) -> SseClient {
        let res = self.stream_request(query, last_event_id).await;
        assert_eq!(res.status(), 200, "stream {query}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        SseClient::new(res)
    }
}

/// The `herald` binary on port 0, killed when dropped.
struct HeraldProcess {
    child: Child,
    pid: u32,
    api: Api,
    /// Every stderr line so far, for failure messages.
    logs: Arc<Mutex<Vec<String>>>,
}

impl HeraldProcess {
    /// Starts herald with the test flags plus `extra`, and waits for its
    /// "herald is serving" line to learn the address.
    async fn start(database_url: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--database-url", database_url])
            .args(["--heartbeat", "300ms", "--retry", "200ms"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Only the flags above configure it, whatever the environment says.
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") || name == "DATABASE_URL" {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("start the herald binary");
        let pid = child.id().expect("a running child has a pid");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let address = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = serving_address(&line);
                logs.lock().unwrap().push(line);
                if address.is_some() {
                    return address;
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(address) = address else {
            panic!(
                "herald did not start serving; its log:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        // Keep reading, so a full pipe never blocks herald's logging.
        tokio::spawn({
            let logs = logs.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            child,
            pid,
            api: Api {
                base: format!("http://{address}"),
                client,
            },
            logs,
        }
    }

    /// SIGKILL: the process dies at once, its sockets close.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL herald");
        self.wait_exit(WAIT).await;
    }

    /// SIGTERM: the process begins its drain.
    fn sigterm(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.pid);
    }

    /// Waits for the process to exit; fails after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for herald"),
            Err(_) => panic!(
                "herald did not exit within {timeout:?}; its log:\n{}",
                self.logs()
            ),
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// The `address` of the JSON line "herald is serving".
fn serving_address(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "herald is serving" {
        return None;
    }
    v["address"].as_str().map(str::to_owned)
}

// ---------------------------------------------------------------------------
// A PostgreSQL server of the test's own
// ---------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster (initdb into a temp dir, its own port) that
/// a test may stop and start; removed when dropped.
struct PgCluster {
    /// Holds `data/`, the socket and the server log; owned by `postgres`.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    /// A new cluster, running.
    async fn init() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-faults-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        // From here on, Drop removes the directory whatever fails.
        let cluster = Self {
            dir,
            bin: postgres_bin_dir(),
            port: free_port(),
        };
        let chown = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&cluster.dir)
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown the cluster directory to postgres");
        let data = cluster.data_dir();
        cluster
            .run_as_postgres(
                "initdb",
                &[
                    "-D",
                    &data,
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        cluster.start().await;
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/herald", self.port)
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts the server and waits until it accepts connections.
    async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        // `-l`: the server's output goes to a file, not to a pipe we hold.
        let log = self.dir.join("server.log").display().to_string();
        let data = self.data_dir();
        let args = [
            "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30", "start",
        ];
        self.run_as_postgres("pg_ctl", &args).await;
    }

    /// Stops the server (fast: sessions are ended) and waits until it is down.
    async fn stop(&self) {
        let data = self.data_dir();
        let args = ["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"];
        self.run_as_postgres("pg_ctl", &args).await;
    }

    async fn run_as_postgres(&self, tool: &str, args: &[&str]) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(tool))
                .args(args)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish in time"))
        .unwrap_or_else(|e| panic!("run {tool} as postgres: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/lib/postgresql/<newest version>/bin`.
fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL version under /usr/lib/postgresql");
    root.join(newest.to_string()).join("bin")
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
