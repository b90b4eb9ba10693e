//! Faults in a cluster of three instances sharing one log (issue #26): the
//! instance that commits for the cluster killed with SIGKILL while groups
//! are in flight, a follower killed the same way, and PostgreSQL restarted
//! under the same load.
//!
//! Each test runs 24 publishers spread over the instances, some with an
//! `Idempotency-Key` header (so keyed and plain groups both commit), and one
//! subscriber per instance from `last_event_id=0`. Whatever fails, the
//! cluster's promise is the same: every `2xx` is in the log exactly once at
//! the id it gave, ids are dense, nothing is stored twice, and every
//! subscriber that lives through the fault sees exactly the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::*;

const INSTANCES: usize = 3;
const PUBLISHERS: usize = 24;
/// Acknowledged publishes before the fault, and again after it.
const ACKS: usize = 300;
/// Pause between one publisher's requests. Keyed publishers (one in four)
/// send less often: a group with a single key takes the keyed path, so
/// this leaves plenty of groups without one.
const PLAIN_PACE: Duration = Duration::from_millis(20);
const KEYED_PACE: Duration = Duration::from_millis(60);

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committer_killed_mid_group_loses_no_acknowledged_event_and_leaves_ids_dense() {
    instance_killed_mid_group(Victim::Committer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_mid_group_loses_no_acknowledged_event_and_leaves_ids_dense() {
    instance_killed_mid_group(Victim::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restarted_mid_run_loses_no_acknowledged_event_and_leaves_ids_dense() {
    // Arrange: a PostgreSQL server of our own, three instances on it.
    let pg = PgCluster::init().await;
    let instances = start_cluster(&pg.url(), &OUTAGE_FLAGS).await;
    let topic = unique_topic("cluster-restart");
    let subscribers = subscribe_on_each(&instances, &topic).await;
    let publishers = Publishers::start(&instances, &topic);

    // Act: stop PostgreSQL under load, until every instance refuses; start
    // it again, until every instance stores again.
    publishers.until_acked(ACKS, "acks before the outage").await;
    pg.stop().await;
    let stopped = Instant::now();
    let at_stop = publishers.acked();
    publishers
        .until_on_each_instance("every instance to refuse a publish", |a| {
            a.sent >= stopped && matches!(a.outcome, Outcome::Refused(503, _))
        })
        .await;
    pg.start().await;
    let restarted = Instant::now();
    publishers
        .until_on_each_instance("every instance to store again", |a| {
            a.sent >= restarted && matches!(a.outcome, Outcome::Stored(_))
        })
        .await;
    let at_restart = publishers.acked();
    publishers
        .until_acked(at_restart + ACKS, "acks after the outage")
        .await;
    let answers = publishers.stop().await;

    // Assert
    summarize("database restarted", &answers, at_stop);
    let unanswered: Vec<&Answer> = answers
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::NoAnswer(_)))
        .collect();
    assert!(
        unanswered.is_empty(),
        "every instance answers through an outage: {unanswered:?}"
    );
    assert_refusals_are_503(&answers);
    assert_ids_dense(&pg.url()).await;
    let log = topic_log(&pg.url(), &topic).await;
    assert_log_holds_each_acknowledged_event_once(&answers, &log);
    assert_subscribers_equal_log(subscribers, &log).await;
}

// ---------------------------------------------------------------------------
// Arrange, act and assert of the two kill tests
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The instance whose `/metrics` says it commits for the cluster.
    Committer,
    /// One of the instances that forward to it.
    Follower,
}

async fn instance_killed_mid_group(victim: Victim) {
    // Arrange
    let db = TestDb::create().await;
    let mut instances = start_cluster(&db.url, &[]).await;
    let committer = committer_of(&instances.iter().collect::<Vec<_>>()).await;
    let killed = match victim {
        Victim::Committer => committer,
        Victim::Follower => (committer + 1) % INSTANCES,
    };
    let topic = unique_topic("cluster-kill");
    let subscribers = subscribe_on_each(&instances, &topic).await;
    let publishers = Publishers::start(&instances, &topic);

    // Act: SIGKILL while groups are in flight; the survivors go on.
    publishers.until_acked(ACKS, "acks before the kill").await;
    publishers.until_in_flight_everywhere().await;
    instances[killed].kill9().await;
    let at_kill = publishers.acked();
    publishers
        .until_acked(at_kill + ACKS, "acks on the survivors after the kill")
        .await;
    let answers = publishers.stop().await;

    // Assert
    summarize(&format!("{victim:?} killed"), &answers, at_kill);
    assert_refusals_are_503(&answers);
    assert_ids_dense(&db.url).await;
    let log = topic_log(&db.url, &topic).await;
    assert_log_holds_each_acknowledged_event_once(&answers, &log);
    let (gone, survivors): (Vec<_>, Vec<_>) =
        subscribers.into_iter().partition(|s| s.instance == killed);
    for subscriber in gone {
        subscriber.reader.abort();
    }
    assert_subscribers_equal_log(survivors, &log).await;
}

/// Three instances on `url`, each ready.
async fn start_cluster(url: &str, extra: &[&str]) -> Vec<HeraldProcess> {
    let starts = (0..INSTANCES).map(|_| HeraldProcess::start(url, extra));
    let instances = futures::future::join_all(starts).await;
    for herald in &instances {
        herald.api.wait_ready().await;
    }
    instances
}

/// The index of the instance that commits for the cluster: the one whose
/// `/metrics` shows `herald_append_committer 1` while every other shows
/// `herald_append_committer 0`. Waits for an election to settle.
async fn committer_of(instances: &[&HeraldProcess]) -> usize {
    until_some("exactly one instance to be the committer", || async {
        let mut gauges = Vec::new();
        for herald in instances {
            gauges.push(committer_gauge(&herald.api.metrics().await));
        }
        let committers: Vec<usize> = gauges
            .iter()
            .enumerate()
            .filter(|(_, gauge)| **gauge == Some(true))
            .map(|(i, _)| i)
            .collect();
        let followers = gauges.iter().filter(|g| **g == Some(false)).count();
        (committers.len() == 1 && followers == gauges.len() - 1).then(|| committers[0])
    })
    .await
}

/// `herald_append_committer`'s value in `/metrics` text, if it is there.
fn committer_gauge(metrics: &str) -> Option<bool> {
    metrics.lines().find_map(|line| match line.trim() {
        "herald_append_committer 1" => Some(true),
        "herald_append_committer 0" => Some(false),
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------

/// One publish attempt. Publisher `p`'s `n`th event has the payload
/// `{"p": p, "n": n}`, unique in the test; a keyed publisher sends the same
/// event again, under the same key, until it is acknowledged.
#[derive(Debug, Clone)]
struct Answer {
    event: (u64, u64),
    instance: usize,
    sent: Instant,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// A `2xx` (`201`, or `200` for a key already stored) and its id.
    Stored(i64),
    /// Any other answer: the status and the problem's `code`.
    Refused(u16, String),
    /// No complete answer: a connection refused or cut, or a timeout.
    NoAnswer(String),
}

/// Publishers running until told to stop, and every answer they got.
struct Publishers {
    answers: Arc<Mutex<Vec<Answer>>>,
    /// Requests sent to each instance and not answered yet.
    in_flight: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publishers {
    /// [`PUBLISHERS`] publishers, publisher `p` starting on instance
    /// `p % 3`; one in four keyed.
    fn start(instances: &[HeraldProcess], topic: &str) -> Self {
        let apis: Vec<Api> = instances.iter().map(|h| h.api.clone()).collect();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new((0..apis.len()).map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..PUBLISHERS)
            .map(|p| {
                let publisher = Publisher {
                    apis: apis.clone(),
                    p,
                    topic: topic.to_owned(),
                    answers: answers.clone(),
                    in_flight: Arc::clone(&in_flight),
                    stop: stop.clone(),
                };
                tokio::spawn(publisher.run())
            })
            .collect();
        Self {
            answers,
            in_flight,
            stop,
            tasks,
        }
    }

    /// `2xx` answers so far.
    fn acked(&self) -> usize {
        let answers = self.answers.lock().unwrap();
        answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Stored(_)))
            .count()
    }

    async fn until_acked(&self, n: usize, what: &str) {
        wait_for(what, || async { self.acked() >= n }).await;
    }

    /// Waits until a request is in flight on every instance at once:
    /// groups are being committed, or forwarded to the committer, now.
    async fn until_in_flight_everywhere(&self) {
        wait_for("publishes in flight on every instance", || async {
            self.in_flight.iter().all(|i| i.load(Ordering::SeqCst) > 0)
        })
        .await;
    }

    /// Waits until every instance has given an answer that satisfies `pred`.
    async fn until_on_each_instance(&self, what: &str, pred: impl Fn(&Answer) -> bool) {
        wait_for(what, || async {
            let answers = self.answers.lock().unwrap();
            (0..INSTANCES).all(|i| answers.iter().any(|a| a.instance == i && pred(a)))
        })
        .await;
    }

    /// Stops every publisher after its request in flight; the answers.
    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Arc::try_unwrap(self.answers)
            .expect("every publisher has ended")
            .into_inner()
            .unwrap()
    }
}

/// Publisher `p`: one request at a time. When an instance does not answer
/// (it was killed) the publisher moves to the next, as behind a load
/// balancer.
struct Publisher {
    apis: Vec<Api>,
    p: usize,
    topic: String,
    answers: Arc<Mutex<Vec<Answer>>>,
    in_flight: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
}

impl Publisher {
    async fn run(self) {
        let keyed = self.p.is_multiple_of(4);
        let mut pace = tokio::time::interval(if keyed { KEYED_PACE } else { PLAIN_PACE });
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut instance = self.p % self.apis.len();
        let mut n = 0;
        while !self.stop.load(Ordering::SeqCst) {
            pace.tick().await;
            let (topic, p) = (&self.topic, self.p);
            let key = keyed.then(|| format!("{topic}/{p}/{n}"));
            let sent = Instant::now();
            self.in_flight[instance].fetch_add(1, Ordering::SeqCst);
            let outcome = publish_once(&self.apis[instance], topic, json!({"p": p, "n": n}), key);
            let outcome = outcome.await;
            self.in_flight[instance].fetch_sub(1, Ordering::SeqCst);
            let stored = matches!(outcome, Outcome::Stored(_));
            let moved = matches!(outcome, Outcome::NoAnswer(_));
            self.answers.lock().unwrap().push(Answer {
                event: (p as u64, n),
                instance,
                sent,
                outcome,
            });
            if moved {
                instance = (instance + 1) % self.apis.len();
            }
            // A key makes sending the same event again safe; without one,
            // an event whose fate is unknown is not sent again.
            if stored || !keyed {
                n += 1;
            }
        }
    }
}

async fn publish_once(api: &Api, topic: &str, data: Value, key: Option<String>) -> Outcome {
    let mut req = api
        .client
        .post(api.url("/v1/events"))
        .json(&json!({"topic": topic, "data": data}))
        .timeout(REQUEST_TIMEOUT);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => return Outcome::NoAnswer(causes(&e)),
    };
    let status = res.status();
    let body: Value = match res.json().await {
        Ok(body) => body,
        Err(e) => return Outcome::NoAnswer(format!("{status}, body cut: {}", causes(&e))),
    };
    if status.is_success() {
        let id = body["id"].as_str().and_then(|id| id.parse().ok());
        Outcome::Stored(id.unwrap_or_else(|| panic!("a 2xx without an id: {body}")))
    } else {
        let code = body["code"].as_str().unwrap_or_default().to_owned();
        Outcome::Refused(status.as_u16(), code)
    }
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// A stream from `last_event_id=0`, read by a task of its own until it has
/// the id sent on `last`.
struct Subscriber {
    instance: usize,
    last: watch::Sender<Option<i64>>,
    /// The events, or how the stream ended before the last one.
    reader: JoinHandle<Result<Vec<(i64, Value)>, String>>,
}

async fn subscribe_on_each(instances: &[HeraldProcess], topic: &str) -> Vec<Subscriber> {
    let mut subscribers = Vec::new();
    for (instance, herald) in instances.iter().enumerate() {
        let query = format!("topic={topic}&last_event_id=0");
        let mut sse = herald.api.open_stream(&query, None).await;
        assert!(sse.next_frame().await.unwrap().retry.is_some());
        let (last, wanted) = watch::channel(None);
        subscribers.push(Subscriber {
            instance,
            last,
            reader: tokio::spawn(read_until_last(sse, wanted, instance)),
        });
    }
    subscribers
}

/// `(id, data)` of every event until the one `last` names; then nothing
/// more may come (no duplicate after it). A stream that ends first (its
/// instance was killed) is an `Err`.
async fn read_until_last(
    mut sse: SseClient,
    last: watch::Receiver<Option<i64>>,
    instance: usize,
) -> Result<Vec<(i64, Value)>, String> {
    let mut events: Vec<(i64, Value)> = Vec::new();
    loop {
        let Some(frame) = sse.next_frame().await else {
            return Err(format!(
                "the stream on instance {instance} ended after {} events",
                events.len()
            ));
        };
        if frame.is_event() {
            events.push((frame.id_num(), frame.json()["data"].clone()));
        }
        // Heartbeats bring the reader here even when no event comes.
        let want = *last.borrow();
        if want.is_some_and(|want| events.last().is_some_and(|(id, _)| *id >= want)) {
            let what = format!("the stream on instance {instance} after the last event");
            assert_only_pings_for(&mut sse, TAIL, &what).await;
            return Ok(events);
        }
    }
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

/// Every answer that is not a `2xx` is one of herald's two `503`s:
/// nothing was stored, or the outcome is unknown.
fn assert_refusals_are_503(answers: &[Answer]) {
    for a in answers {
        if let Outcome::Refused(status, code) = &a.outcome {
            assert!(
                *status == 503 && ["database_unavailable", "outcome_unknown"].contains(&&**code),
                "only a 503 may refuse a publish: {a:?}"
            );
        }
    }
}

/// (a) The whole log holds ids 1, 2, … with no gap, and `log_head` agrees.
/// The database is the test's own: only this test's events are in it.
async fn assert_ids_dense(url: &str) {
    let mut conn = connect_log(url).await;
    let ids: Vec<i64> = sqlx::query_scalar("select id from events order by id")
        .fetch_all(&mut conn)
        .await
        .expect("read the log's ids");
    let head: i64 = sqlx::query_scalar("select last_id from log_head")
        .fetch_one(&mut conn)
        .await
        .expect("read log_head");
    let gaps: Vec<(i64, i64)> = std::iter::once(0)
        .chain(ids.iter().copied())
        .zip(ids.iter().copied())
        .filter(|(before, id)| id - before != 1)
        .take(10)
        .collect();
    assert!(
        gaps.is_empty(),
        "ids are not dense; (before, after) each gap: {gaps:?}"
    );
    assert_eq!(ids.last().copied(), Some(head), "log_head.last_id");
}

/// (b) every `2xx` is in the log exactly once, at the id its answer gave;
/// (c) no event is in the log twice, and every event in it was published
/// by an attempt that did not say "nothing was stored".
fn assert_log_holds_each_acknowledged_event_once(answers: &[Answer], log: &[(i64, Value)]) {
    let mut stored_at: HashMap<(u64, u64), Vec<i64>> = HashMap::new();
    for (id, data) in log {
        stored_at.entry(event_of(data)).or_default().push(*id);
    }
    let mut attempts: HashMap<(u64, u64), Vec<&Outcome>> = HashMap::new();
    for a in answers {
        attempts.entry(a.event).or_default().push(&a.outcome);
    }
    for (event, ids) in &stored_at {
        assert_eq!(ids.len(), 1, "event {event:?} is in the log at ids {ids:?}");
        let tries = attempts
            .get(event)
            .unwrap_or_else(|| panic!("event {event:?} is in the log but was never published"));
        let nothing_stored =
            |o: &&Outcome| matches!(o, Outcome::Refused(_, code) if code == "database_unavailable");
        assert!(
            !tries.iter().all(nothing_stored),
            "event {event:?} is in the log at {ids:?}, but every answer said nothing was stored: {tries:?}"
        );
    }
    for a in answers {
        if let Outcome::Stored(id) = a.outcome {
            assert_eq!(
                stored_at.get(&a.event),
                Some(&vec![id]),
                "acknowledged {a:?}: where the log holds it"
            );
        }
    }
}

/// (d) every subscriber, read until it has the topic's last id, got the
/// log's `(id, data)` exactly: no gap, no duplicate, same order.
async fn assert_subscribers_equal_log(subscribers: Vec<Subscriber>, log: &[(i64, Value)]) {
    let last = log.last().map(|(id, _)| *id).expect("the topic has events");
    for subscriber in &subscribers {
        subscriber.last.send_replace(Some(last));
    }
    for subscriber in subscribers {
        let received = match subscriber.reader.await {
            Ok(received) => received.unwrap_or_else(|ended| panic!("{ended}")),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let instance = subscriber.instance;
        let first_difference =
            (0..received.len().max(log.len())).find(|&i| received.get(i) != log.get(i));
        if let Some(i) = first_difference {
            let around = |events: &[(i64, Value)]| events[i.min(events.len())..].to_vec();
            panic!(
                "instance {instance}'s stream ({} events) differs from the log ({} events) \
                 at position {i}: it got {:?}, the log has {:?}",
                received.len(),
                log.len(),
                around(&received).iter().take(3).collect::<Vec<_>>(),
                around(log).iter().take(3).collect::<Vec<_>>(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// `(id, data)` of `topic` in the log, in id order.
async fn topic_log(url: &str, topic: &str) -> Vec<(i64, Value)> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("select id, data::text from events where topic = $1 order by id")
            .bind(topic)
            .fetch_all(&mut connect_log(url).await)
            .await
            .expect("read the log");
    rows.into_iter()
        .map(|(id, data)| (id, serde_json::from_str(&data).expect("JSON data")))
        .collect()
}

/// `(p, n)` of a payload `{"p": p, "n": n}`.
fn event_of(data: &Value) -> (u64, u64) {
    match (data["p"].as_u64(), data["n"].as_u64()) {
        (Some(p), Some(n)) => (p, n),
        _ => panic!("an event this test did not publish: {data}"),
    }
}

/// An error and its sources: reqwest's own message alone does not say
/// whether the connection was refused or cut.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One line on what happened, for `--nocapture`.
fn summarize(what: &str, answers: &[Answer], at_fault: usize) {
    let count = |f: &dyn Fn(&Outcome) -> bool| answers.iter().filter(|a| f(&a.outcome)).count();
    let acked = count(&|o| matches!(o, Outcome::Stored(_)));
    let unknown = count(&|o| matches!(o, Outcome::Refused(_, c) if c == "outcome_unknown"));
    let unavailable =
        count(&|o| matches!(o, Outcome::Refused(_, c) if c == "database_unavailable"));
    let unanswered: Vec<&str> = answers
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::NoAnswer(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    let refused = unanswered
        .iter()
        .filter(|why| why.contains("Connection refused"))
        .count();
    eprintln!(
        "{what}: {acked} acknowledged ({at_fault} before the fault); 503 outcome_unknown {unknown}, \
         503 database_unavailable {unavailable}; no answer {} (connection refused {refused}, \
         cut or timed out {})",
        unanswered.len(),
        unanswered.len() - refused
    );
}
