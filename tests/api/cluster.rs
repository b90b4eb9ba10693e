//! Several instances on one database (issue #3): fan-out across instances in
//! the log's order, a listener whose connection is killed, and a reconnect
//! storm served from the ring.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::json;

use crate::faults::HeraldProcess;
use crate::helpers::*;

/// The ids of `topic` in the log, in id order.
async fn log_ids(db: &TestDb, topic: &str) -> Vec<i64> {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select id from events where topic = $1 order by id")
        .bind(topic)
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn spawn_cluster(n: usize) -> Vec<TestApp> {
    let first = spawn_app().await;
    let db = first.db.clone();
    let mut apps = vec![first];
    for _ in 1..n {
        apps.push(spawn_on(db.clone(), test_config(&db.url)).await);
    }
    apps
}

/// Reads events until one with id `last` arrives; returns all ids.
async fn read_until(sse: &mut SseClient, last: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let id = sse.next_event().await.expect("stream open").id_num();
        ids.push(id);
        if id >= last {
            return ids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_from_every_instance_reach_every_subscriber_in_log_order() {
    let apps = spawn_cluster(3).await;
    let topic = unique_topic("cluster");
    let mut subscribers = Vec::new();
    for app in &apps {
        for _ in 0..2 {
            subscribers.push(app.stream(&format!("topic={topic}"), None).await);
        }
    }
    for sse in &mut subscribers {
        sse.next_frame().await.unwrap(); // retry:
    }

    // 3 publishers per instance, 100 single-event requests each.
    let topic_ref = &topic;
    let publishers = apps.iter().flat_map(|app| {
        (0..3).map(move |p| {
            let topic = topic_ref.clone();
            async move {
                for i in 0..100 {
                    app.publish_ok(&topic, json!({"p": p, "i": i})).await;
                }
            }
        })
    });
    join_all(publishers).await;
    let expected = log_ids(&apps[0].db, &topic).await;
    assert_eq!(expected.len(), 900);
    let last = *expected.last().unwrap();

    let received = join_all(subscribers.iter_mut().map(|s| read_until(s, last))).await;

    for ids in received {
        assert_eq!(ids, expected);
    }
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn listener_reattaches_after_its_connection_is_terminated() {
    let app = spawn_app().await;
    let topic = unique_topic("reattach");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let first = app.publish_ok(&topic, json!(1)).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), first);
    let reconnects = app.metric("herald_listener_reconnects_total").await;

    // Kill the LISTEN connection, then publish while it may be detached.
    let mut conn = app.db.connect().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and query ilike 'listen%herald_events%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "exactly one LISTEN connection on the log"
    );
    let mut ids = vec![first];
    for i in 0..20 {
        ids.push(app.publish_ok(&topic, json!(i)).await);
    }

    let got: Vec<i64> = sse.events(20).await.iter().map(|f| f.id_num()).collect();
    assert_eq!(got, ids[1..]);
    wait_for("the reconnect to be counted", || async {
        app.metric("herald_listener_reconnects_total").await > reconnects
    })
    .await;
    wait_for("the listener to be attached again", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    // Live again through notifications, not only the poll timer.
    let later = app.publish_ok(&topic, json!("later")).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), later);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_storm_of_2000_clients_is_served_from_the_ring() {
    const CLIENTS: usize = 2000;
    let app = spawn_app().await;
    let topic = unique_topic("storm");
    let ids = app
        .publish_batch_ok(
            (0..100)
                .map(|i| json!({"topic": topic, "data": i}))
                .collect(),
        )
        .await;
    let last = *ids.last().unwrap();
    let before = app.metrics().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // Every client resumes from a recent id and must get exactly the rest.
    let app = Arc::new(app);
    let ids = &ids;
    let clients = (0..CLIENTS).map(|c| {
        let (app, client, topic) = (app.clone(), client.clone(), topic.clone());
        let cursor = ids[c % ids.len()];
        async move {
            let res = client
                .get(app.url(&format!("/v1/stream?topic={topic}")))
                .header("last-event-id", cursor.to_string())
                .send()
                .await
                .expect("stream request");
            assert_eq!(res.status(), 200);
            let mut sse = SseClient::new(res);
            let got = if cursor == last {
                Vec::new()
            } else {
                read_until(&mut sse, last).await
            };
            let want: Vec<i64> = ids.iter().copied().filter(|id| *id > cursor).collect();
            assert_eq!(got, want, "client resuming from {cursor}");
        }
    });
    let started = std::time::Instant::now();
    join_all(clients).await;
    let took = started.elapsed();

    let after = app.metrics().await;
    let ring = metric_sum(&after, "herald_resumes_total{source=\"ring\"}")
        - metric_sum(&before, "herald_resumes_total{source=\"ring\"}");
    let database = metric_sum(&after, "herald_resumes_total{source=\"database\"}")
        - metric_sum(&before, "herald_resumes_total{source=\"database\"}");
    println!("{CLIENTS} resumes in {took:?}: ring {ring}, database {database}");
    assert!(ring >= CLIENTS as f64, "ring resumes: {ring}");
    // Other tests in this process may resume from the database meanwhile.
    assert!(
        database < (CLIENTS / 20) as f64,
        "database resumes: {database}"
    );
    Arc::into_inner(app).unwrap().stop().await;
}

/// `herald_listener_events_total{source}` of one process.
async fn taken_from(herald: &HeraldProcess, source: &str) -> f64 {
    let series = format!("herald_listener_events_total{{source=\"{source}\"}} ");
    herald
        .api
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

/// Ticks and probes out of the way: only notifications wake the listener.
const NOTIFICATIONS_ONLY: [&str; 4] = ["--poll-interval", "1h", "--listener-probe", "1h"];

/// What each instance's listener has taken so far, from notifications and
/// from the log, once every one has handed on an event published through
/// `via`: by then each listener is past the read of the log it makes as it
/// attaches (its first timer tick), which could otherwise take a test's
/// first event before that event's notification arrives.
async fn settled(via: &HeraldProcess, all: &[&HeraldProcess]) -> Vec<(f64, f64)> {
    via.api.publish_ok(&unique_topic("settle"), json!(0)).await;
    let mut taken = Vec::new();
    for herald in all {
        let total =
            || async { taken_from(herald, "notification").await + taken_from(herald, "log").await };
        wait_for("the listener to hand on the settling event", || async {
            total().await >= 1.0
        })
        .await;
        // Nothing else is published, and the timer is an hour away.
        taken.push((
            taken_from(herald, "notification").await,
            taken_from(herald, "log").await,
        ));
    }
    taken
}

/// An append's notification carries the events it committed
/// (`log/notice.rs`): a listener at the head takes them from it without
/// reading the log, and they are the bytes the log holds. What comes as a
/// hint (a keyed publish, an event too large to be carried) is read from
/// the log. Each event reaches the stream once, in order.
#[tokio::test]
async fn the_listener_takes_events_from_their_notification_and_hints_from_the_log() {
    let db = TestDb::create().await;
    let herald = HeraldProcess::start(&db.url, &NOTIFICATIONS_ONLY).await;
    herald.api.wait_ready().await;
    let (notified, read) = settled(&herald, &[&herald]).await[0];
    let topic = unique_topic("notified");
    let mut sse = herald
        .api
        .open_stream(&format!("topic={topic}"), None)
        .await;

    let mut answers = Vec::new();
    for data in [
        json!({"s": "é\"\\ ✓\n,:", "n": [1, 2.5e3, null]}),
        json!("plain"),
        json!(null),
    ] {
        let res = herald.api.publish(&topic, data).await;
        assert_eq!(res.status(), 201);
        answers.push(res.text().await.unwrap());
    }
    let keyed = herald
        .api
        .client
        .post(herald.api.url("/v1/events"))
        .header("Idempotency-Key", format!("{topic}-k"))
        .json(&json!({"topic": topic, "data": "keyed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 201);
    answers.push(keyed.text().await.unwrap());
    let large = herald.api.publish(&topic, json!("x".repeat(9000))).await;
    assert_eq!(large.status(), 201);
    answers.push(large.text().await.unwrap());

    let got: Vec<String> = sse
        .events(5)
        .await
        .into_iter()
        .map(|f| f.data.unwrap())
        .collect();
    assert_eq!(got, answers, "the stream carries what the log stored");
    let history = herald
        .api
        .client
        .get(herald.api.url(&format!("/v1/events?topic={topic}")));
    let history: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(&history.send().await.unwrap().text().await.unwrap()).unwrap();
    let history: Vec<&str> = history.iter().map(|r| r.get()).collect();
    assert_eq!(history, answers);
    assert_eq!(taken_from(&herald, "notification").await - notified, 3.0);
    assert_eq!(taken_from(&herald, "log").await - read, 2.0);
}

/// Every instance takes every instance's commits from the notifications,
/// in the log's order, whichever instance published them.
#[tokio::test]
async fn instances_take_each_others_commits_from_the_notifications() {
    let db = TestDb::create().await;
    let a = HeraldProcess::start(&db.url, &NOTIFICATIONS_ONLY).await;
    let b = HeraldProcess::start(&db.url, &NOTIFICATIONS_ONLY).await;
    a.api.wait_ready().await;
    b.api.wait_ready().await;
    let before = settled(&a, &[&a, &b]).await;
    let topic = unique_topic("notified-cluster");
    let query = format!("topic={topic}");
    let mut on_a = a.api.open_stream(&query, None).await;
    let mut on_b = b.api.open_stream(&query, None).await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let via = if i % 2 == 0 { &a } else { &b };
        ids.push(via.api.publish_ok(&topic, json!(i)).await);
    }

    let instances = [("a", &mut on_a, &a), ("b", &mut on_b, &b)];
    for ((name, sse, herald), (notified, read)) in instances.into_iter().zip(before) {
        let got: Vec<i64> = sse.events(20).await.iter().map(|f| f.id_num()).collect();
        assert_eq!(got, ids, "instance {name}");
        assert_eq!(
            taken_from(herald, "notification").await - notified,
            20.0,
            "instance {name}"
        );
        assert_eq!(
            taken_from(herald, "log").await - read,
            0.0,
            "instance {name}"
        );
    }
}
