//! Faults at the process level (issue #3): an instance killed with SIGKILL
//! while a client streams from it, PostgreSQL down for ten seconds and back,
//! and a SIGTERM that drains streams over the window while clients move to
//! another instance. `cluster` kills one of three instances, or restarts
//! PostgreSQL, under a publishing load (issue #26).
//!
//! Each test runs the real `herald` binary ([`HeraldProcess`]); the outage
//! test runs a PostgreSQL server of its own ([`PgCluster`]) so that the
//! machine's main server is never stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::helpers::*;

mod cluster;
mod processes;

pub(crate) use processes::*;

/// Flags of an instance in a test that stops its database: it answers
/// `503` within a second, and its listener notices the outage soon.
pub(crate) const OUTAGE_FLAGS: [&str; 6] = [
    "--db-timeout",
    "1s",
    "--poll-interval",
    "200ms",
    "--listener-probe",
    "1s",
];

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
    // A is started first, so it commits for the cluster (issue 26) and B
    // sends it B's publishes: a publish in flight at A when A dies gets
    // `503` "outcome unknown" from B. The publisher does what the README
    // asks of a client then: it retries with the same `Idempotency-Key`,
    // which answers the original if the first try was stored.
    let publisher = tokio::spawn({
        let (b, topic) = (b.api.clone(), topic.clone());
        async move {
            let mut ids = Vec::new();
            for i in 0..300 {
                ids.push(
                    publish_until_stored(&b, &topic, &format!("killed-{i}"), json!({"i": i})).await,
                );
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
    let herald = HeraldProcess::start(&pg.url(), &OUTAGE_FLAGS).await;
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
                acked.push((stored_id(res).await, marker));
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
        assert_eq!(first, opening_frame(200, 0, &["*"]).as_bytes());
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
    assert_eq!(
        late.text(),
        "retry: 200\nevent: stream\ndata: {\"draining\":true,\"topics\":[\"*\"]}\n\n"
    );
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
/// Publishes one event with `key` until it is stored: `503` (nothing
/// stored, or outcome unknown) is retried with the same key. Its id.
async fn publish_until_stored(api: &Api, topic: &str, key: &str, data: Value) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let res = api
            .client
            .post(api.url("/v1/events"))
            .header("Idempotency-Key", key)
            .json(&json!({"topic": topic, "data": data}))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .expect("publish request");
        match res.status().as_u16() {
            200 | 201 => return stored_id(res).await,
            503 => assert!(Instant::now() < deadline, "{key}: still 503 after {WAIT:?}"),
            status => panic!("{key}: {status} {}", res.text().await.unwrap_or_default()),
        }
    }
}

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

async fn stored_id(res: reqwest::Response) -> i64 {
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

/// Instances started at the same moment against a database that does not
/// exist yet (a compose file, a Kubernetes rollout) all create-or-find it,
/// migrate once between them, and serve; once two of three exited with
/// `duplicate key value violates unique constraint
/// "pg_database_datname_index"`.
#[tokio::test]
async fn instances_started_together_on_a_missing_database_all_serve() {
    let admin = admin_url();
    let base = admin.rsplit_once('/').unwrap().0;
    let name = format!("herald_test_race_{}", std::process::id());
    // Dropped (and the database with it) when the test ends.
    let db = Arc::new(TestDb {
        url: format!("{base}/{name}"),
        name,
    });

    let mut instances =
        futures::future::join_all((0..4).map(|_| HeraldProcess::start(&db.url, &[]))).await;

    for (i, herald) in instances.iter().enumerate() {
        herald.api.wait_ready().await;
        let topic = unique_topic("race");
        let id = herald.api.publish_ok(&topic, json!(i)).await;
        assert!(id > 0, "instance {i} stores events");
    }
    for herald in &mut instances {
        herald.sigterm();
        assert!(herald.wait_exit(WAIT).await.success(), "{}", herald.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_streams_are_listed_ended_within_a_lease() {
    // Arrange: A and B on one database, with a 1 s lease; a stream on A.
    let db = TestDb::create().await;
    let mut a = HeraldProcess::start(&db.url, &["--lease", "1s"]).await;
    let b = HeraldProcess::start(&db.url, &["--lease", "1s"]).await;
    a.api.wait_ready().await;
    b.api.wait_ready().await;
    let topic = unique_topic("lost");
    let mut sse = a.api.open_stream(&format!("topic={topic}"), None).await;
    assert!(sse.next_frame().await.unwrap().retry.is_some());
    let list = |state: &'static str| {
        let (b, topic) = (b.api.clone(), topic.clone());
        async move {
            let body: Value = b
                .client
                .get(b.url(&format!("/v1/streams?topic={topic}&state={state}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["streams"].as_array().unwrap().clone()
        }
    };
    wait_for("A's stream to be listed open", || async {
        list("open").await.len() == 1
    })
    .await;

    // Act: kill -9 A.
    a.kill9().await;
    let killed = Instant::now();

    // Assert: within a lease (1 s, and the tick that notices), listed ended.
    wait_for("A's stream to be listed ended", || async {
        let ended = list("ended").await;
        ended.len() == 1 && ended[0]["end_reason"] == "instance_lost"
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_millis(1500),
        "listed ended {:?} after the kill",
        killed.elapsed()
    );
    assert!(list("open").await.is_empty());
}
