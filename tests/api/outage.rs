//! Publishing while PostgreSQL is unreachable or hangs: 503 with
//! Retry-After, never a 2xx for an event that is not stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::helpers::*;

// ----- database unavailable --------------------------------------------

/// Rows of `topic` as (id, data), read straight from PostgreSQL.
async fn stored_events(db: &TestDb, topic: &str) -> Vec<(i64, String)> {
    let mut conn = db.connect().await;
    sqlx::query_as("select id, data::text from events where topic = $1 order by id")
        .bind(topic)
        .fetch_all(&mut conn)
        .await
        .expect("read events")
}

#[tokio::test]
async fn publish_answers_503_with_retry_after_while_database_is_unreachable() {
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    let topic = unique_topic("outage");
    app.publish_ok(&topic, json!({"n": 0})).await;

    proxy.cut();
    let res = app
        .publish(&json!({"topic": topic, "data": {"n": 1}}))
        .await;

    assert!(res.headers().contains_key("retry-after"), "Retry-After");
    let body = assert_problem(res, 503, "database_unavailable", "nothing was stored").await;
    assert!(
        !body.to_string().contains("sqlx"),
        "5xx reveals nothing: {body}"
    );
    let batch = app
        .publish(&json!([{"topic": topic, "data": {"n": 2}}, {"topic": topic, "data": {"n": 3}}]))
        .await;
    assert_problem(batch, 503, "database_unavailable", "unavailable").await;
    assert_eq!(
        stored_events(&db, &topic).await,
        vec![(1, r#"{"n":0}"#.to_owned())]
    );

    proxy.restore();
    let statuses = Mutex::new(Vec::new());
    wait_for("publish to succeed again", || async {
        let status = app
            .publish(&json!({"topic": topic, "data": {"n": 4}}))
            .await
            .status();
        statuses.lock().unwrap().push(status.as_u16());
        status == 201
    })
    .await;
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().all(|s| [201, 503].contains(s)),
        "{statuses:?}"
    );
    let stored = stored_events(&db, &topic).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].1, r#"{"n":4}"#);
    app.stop().await;
}

/// What one publish during the outage test was answered.
#[derive(Debug, Clone)]
struct Outcome {
    worker: u64,
    n: u64,
    status: u16,
    id: Option<i64>,
}

/// Publishes `{"w": worker, "n": …}` one after another until `stop`.
async fn publish_until(
    app: &TestApp,
    topic: &str,
    worker: u64,
    stop: &AtomicBool,
    log: &Mutex<Vec<Outcome>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let res = app
            .publish(&json!({"topic": topic, "data": {"w": worker, "n": n}}))
            .await;
        let status = res.status().as_u16();
        let id = if res.status().is_success() {
            let body: Value = res.json().await.unwrap();
            Some(id_of(&body))
        } else {
            None
        };
        log.lock().unwrap().push(Outcome {
            worker,
            n,
            status,
            id,
        });
        n += 1;
    }
}

fn answered(log: &Mutex<Vec<Outcome>>, status: u16) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|o| o.status == status)
        .count()
}

#[tokio::test]
async fn no_publish_is_acknowledged_unless_stored_across_an_outage() {
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    let topic = unique_topic("outage-load");
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Vec::<Outcome>::new());
    let control = async {
        wait_for("publishes before the outage", || async {
            answered(&log, 201) >= 20
        })
        .await;
        proxy.cut();
        wait_for("refusals during the outage", || async {
            answered(&log, 503) >= 4
        })
        .await;
        let created_before_restore = answered(&log, 201);
        proxy.restore();
        wait_for("publishes after the outage", || async {
            answered(&log, 201) >= created_before_restore + 20
        })
        .await;
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(
        control,
        publish_until(&app, &topic, 1, &stop, &log),
        publish_until(&app, &topic, 2, &stop, &log),
        publish_until(&app, &topic, 3, &stop, &log),
        publish_until(&app, &topic, 4, &stop, &log),
    );

    let outcomes = log.into_inner().unwrap();
    let odd: Vec<_> = outcomes
        .iter()
        .filter(|o| ![201, 503].contains(&o.status))
        .collect();
    assert!(odd.is_empty(), "only 201 or 503 expected: {odd:?}");
    let stored: Vec<(i64, Value)> = stored_events(&db, &topic)
        .await
        .into_iter()
        .map(|(id, data)| (id, serde_json::from_str(&data).unwrap()))
        .collect();
    for o in outcomes.iter().filter(|o| o.status == 201) {
        let data = json!({"w": o.worker, "n": o.n});
        let id = o.id.unwrap();
        assert!(
            stored.contains(&(id, data.clone())),
            "acknowledged id {id} ({data}) is not in the log"
        );
    }
    // Each stored row was answered at most once with 201 (ids are unique).
    let mut acked: Vec<i64> = outcomes.iter().filter_map(|o| o.id).collect();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(
        acked.len(),
        outcomes.iter().filter(|o| o.id.is_some()).count()
    );
    app.stop().await;
}

/// The envelope publish answered and the one history shows are the same
/// text, compared without re-serializing.
#[tokio::test]
async fn publish_answer_is_byte_identical_to_stored_envelope() {
    let app = spawn_app().await;
    let topic = unique_topic("identical");
    let body = format!(
        r#"{{"topic":"{topic}","type":"t.1","data":{{"z":[true,null,-0.0e-0],"a":"\u00e9\"\\"}}}}"#
    );

    let res = post_text(&app, &body).await;

    assert_eq!(res.status(), 201);
    let published = res.text().await.unwrap();
    let history = app.get("/v1/events").await.text().await.unwrap();
    let history: Vec<Box<RawValue>> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].get(), published);
    assert!(
        published.contains(r#""data":{"z":[true,null,-0.0e-0],"a":"\u00e9\"\\"}"#),
        "{published}"
    );
    app.stop().await;
}

// ----- database that stops answering ------------------------------------

/// docs/ARCHITECTURE.md: a database that cannot answer is a 503, and the pool wait is
/// bounded by `db_timeout` (1 s here). A database that stops answering
/// without closing the connection must not hold a publish forever.
#[tokio::test]
async fn publish_answers_503_in_bounded_time_when_database_stops_answering() {
    let proxy = FreezeProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    let topic = unique_topic("frozen");
    app.publish_ok(&topic, json!({"n": 0})).await;

    proxy.freeze();
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.publish(&json!({"topic": topic, "data": {"n": 1}})),
    )
    .await;

    let res = res.unwrap_or_else(|_| {
        panic!(
            "no answer {:?} after the database stopped answering",
            started.elapsed()
        )
    });
    assert!(res.headers().contains_key("retry-after"), "Retry-After");
    assert_problem(res, 503, "database_unavailable", "unavailable").await;
    proxy.thaw();
    app.stop().await;
}

/// Every append locks the `log_head` row. If another holder of that lock
/// stops answering (an instance partitioned mid-append: PostgreSQL keeps its
/// transaction open until TCP keepalive notices, hours by default), publish
/// must still answer in bounded time, with 503, rather than hang.
#[tokio::test]
async fn publish_answers_503_in_bounded_time_while_the_append_lock_is_stuck() {
    use sqlx::Connection;
    let app = spawn_app_with(|c| c.db_timeout = FAULT_DB_TIMEOUT).await;
    let topic = unique_topic("stuck-lock");
    app.publish_ok(&topic, json!({"n": 0})).await;
    let mut holder = app.db.connect().await;
    let mut stuck = holder.begin().await.unwrap();
    sqlx::query("select last_id from log_head for update")
        .execute(&mut *stuck)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.publish(&json!({"topic": topic, "data": {"n": 1}})),
    )
    .await;

    let res = res.unwrap_or_else(|_| {
        panic!(
            "no answer {:?} after the append lock got stuck",
            started.elapsed()
        )
    });
    assert!(res.headers().contains_key("retry-after"), "Retry-After");
    assert_problem(res, 503, "database_unavailable", "unavailable").await;
    stuck.rollback().await.unwrap();
    // The 503 said "nothing was stored": a publish after the lock is free
    // goes through the same committer, after anything still queued.
    app.publish_ok(&topic, json!({"n": 2})).await;
    let data: Vec<String> = stored_events(&app.db, &topic)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, [r#"{"n":0}"#, r#"{"n":2}"#]);
    app.stop().await;
}
