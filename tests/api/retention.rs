//! Retention (README, "Retention"; issue 11): old events are pruned in
//! batches by one instance at a time, the floor moves with every batch, and
//! nobody reading across a prune passes over a gap in silence: a stream
//! gets `event: reset`, history a `410`. The test holds the pruners'
//! advisory lock itself ([`herald::PRUNE_LOCK`]) to decide when a prune may
//! run, and waits for conditions in the database, never for a fixed time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use crate::helpers::*;

const OLDEST: &str = "herald_retention_oldest_id";
const LAST_PRUNE: &str = "herald_retention_last_prune_timestamp_seconds";
const PRUNED: &str = "herald_retention_pruned_events_total";

/// A few connections to the test's database, for assertions and waits.
async fn pool(db: &TestDb) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .expect("connect to the test database")
}

/// `(last_id, pruned_through)` of the log.
async fn head(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("select last_id, pruned_through from log_head")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the log's floor is at least `through`.
async fn wait_pruned_through(pool: &PgPool, through: i64) {
    wait_for(&format!("pruned_through >= {through}"), || async {
        head(pool).await.1 >= through
    })
    .await;
}

/// Waits until every event up to `through` is older than `age` by
/// PostgreSQL's clock (the one that stamped them, and the one the pruner
/// reads).
async fn wait_older_than(pool: &PgPool, through: i64, age: Duration) {
    wait_for("the events to age", || async {
        sqlx::query_scalar::<_, bool>(
            "select coalesce(max(time) < clock_timestamp() - make_interval(secs => $2), true) \
             from events where id <= $1",
        )
        .bind(through)
        .bind(age.as_secs_f64())
        .fetch_one(pool)
        .await
        .unwrap()
    })
    .await;
}

/// A session that holds the pruners' lock until `release`: no instance
/// prunes meanwhile.
struct PruneLock(PgConnection);

impl PruneLock {
    async fn take(db: &TestDb) -> Self {
        let mut conn = db.connect().await;
        sqlx::query("select pg_advisory_lock($1)")
            .bind(herald::PRUNE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        let released: bool = sqlx::query_scalar("select pg_advisory_unlock($1)")
            .bind(herald::PRUNE_LOCK)
            .fetch_one(&mut self.0)
            .await
            .unwrap();
        assert!(released);
    }
}

/// Publishes `n` events to `topic` in batches of 1000 with `data` of about
/// `data_bytes`; returns the last id.
async fn publish_backlog(app: &TestApp, topic: &str, n: usize, data_bytes: usize) -> i64 {
    let filler = "x".repeat(data_bytes);
    let mut last = 0;
    for start in (0..n).step_by(1000) {
        let batch = (start..n.min(start + 1000))
            .map(|i| json!({"topic": topic, "data": {"i": i, "pad": filler}}))
            .collect();
        last = *app.publish_batch_ok(batch).await.last().unwrap();
    }
    last
}

/// Opens a stream resuming after `last_event_id` and returns its first
/// frame after `retry:`.
async fn first_frame(app: &TestApp, topic: &str, last_event_id: i64) -> SseFrame {
    let mut sse = app
        .stream(&format!("topic={topic}"), Some(&last_event_id.to_string()))
        .await;
    assert!(sse.next_frame().await.unwrap().retry.is_some());
    sse.next_event().await.expect("a frame after retry:")
}

#[tokio::test]
async fn two_second_retention_prunes_a_handful_of_events_within_a_minute() {
    let app = spawn_app_with(|c| c.retention = Duration::from_secs(2)).await;
    let before = app.metric(PRUNED).await;
    let topic = unique_topic("retained");
    let keyed = app
        .publish_with_key(&json!({"topic": topic, "data": "keyed"}), "k-retention")
        .await;
    assert_eq!(keyed.status(), 201);
    let ids = app.publish_batch_ok(vec![json!({"topic": topic}); 2]).await;
    assert_eq!(ids, [2, 3]);

    // The pruner runs every second with a 2 s retention: a few seconds.
    let db = pool(&app.db).await;
    wait_pruned_through(&db, 3).await;

    assert_eq!(rows(&db).await, 0);
    assert_eq!(head(&db).await, (3, 3));
    let metrics = app.metrics().await;
    for name in [OLDEST, LAST_PRUNE, PRUNED] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} described"
        );
    }
    // Other tests' instances share the process's metrics: lower bounds.
    assert!(metric_sum(&metrics, PRUNED) >= before + 3.0);
    assert!(metric_sum(&metrics, LAST_PRUNE) > 0.0);
    // The keyed event is gone from the log, but its key is honoured for the
    // key window (24 h by default): a repeat gets the original, stores nothing.
    let kept: i64 = sqlx::query_scalar("select count(*) from idempotency_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    let again = app
        .publish_with_key(&json!({"topic": topic, "data": "again"}), "k-retention")
        .await;
    let status = again.status();
    let body: Value = again.json().await.unwrap();
    // The body says why, if it is a refusal.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "1");
    assert_eq!(body["data"], "keyed");
    // Ids never go back, even with every event pruned.
    assert_eq!(app.publish_ok(&topic, json!("next")).await, 4);
    app.stop().await;
}

#[tokio::test]
async fn a_key_is_forgotten_after_its_window_once_its_event_is_pruned() {
    // Retention 2 s, key window 1 s: when its event is pruned, the key is
    // already past its window, so it is not kept aside.
    let app = spawn_app_with(|c| {
        c.retention = Duration::from_secs(2);
        c.idempotency_window = Duration::from_secs(1);
    })
    .await;
    let topic = unique_topic("window");
    let first = app
        .publish_with_key(&json!({"topic": topic}), "k-window")
        .await;
    assert_eq!(first.status(), 201);
    let db = pool(&app.db).await;
    wait_pruned_through(&db, 1).await;

    let again = app
        .publish_with_key(&json!({"topic": topic}), "k-window")
        .await;
    assert_eq!(again.status(), 201, "a new event under the forgotten key");
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["id"], "2");
    app.stop().await;
}

#[tokio::test]
async fn kept_keys_expire_after_their_window() {
    // A count cap prunes within a round (1 s), while the key is well inside
    // its window of 5 s; the copy goes once the window has passed.
    let app = spawn_app_with(|c| {
        c.retention = Duration::from_secs(2);
        c.retention_count = 1;
        c.idempotency_window = Duration::from_secs(5);
    })
    .await;
    let topic = unique_topic("expiry");
    let keyed = app
        .publish_with_key(&json!({"topic": topic}), "k-expiry")
        .await;
    assert_eq!(keyed.status(), 201);
    app.publish_ok(&topic, json!("pushes the keyed one out"))
        .await;
    let db = pool(&app.db).await;
    wait_pruned_through(&db, 1).await;
    let kept = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from idempotency_keys")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // Pruned by the count cap within a second or so, so kept aside...
    assert_eq!(kept().await, 1);
    let again = app
        .publish_with_key(&json!({"topic": topic}), "k-expiry")
        .await;
    assert_eq!(again.status(), 200);

    // ...until its window has passed.
    wait_for("the kept key to expire", || async { kept().await == 0 }).await;
    let after = app
        .publish_with_key(&json!({"topic": topic}), "k-expiry")
        .await;
    assert_eq!(after.status(), 201);
    app.stop().await;
}

async fn a_cursor_below_the_prune_gets_a_reset_frame(writer: Writer) {
    let app = spawn_app_with(|c| c.retention = Duration::from_secs(2))
        .await
        .over(writer);
    let topic = unique_topic("pruned");
    app.publish_batch_ok(vec![json!({"topic": topic}); 5]).await;
    wait_pruned_through(&pool(&app.db).await, 5).await;
    let live = app.publish_ok(&topic, json!("after the prune")).await;

    // The ring still holds 1..=5 in memory until the retention task has
    // raised its floor, just after the batch: until then a resume from 2
    // is served from memory, which is whole, only not yet reset.
    let reset = std::sync::Mutex::new(None);
    wait_for("a reset for a cursor below the floor", || async {
        let frame = first_frame(&app, &topic, 2).await;
        let is_reset = frame.event.as_deref() == Some("reset");
        if is_reset {
            *reset.lock().unwrap() = Some(frame);
        }
        is_reset
    })
    .await;

    let reset = reset.into_inner().unwrap().unwrap();
    let data = reset.json();
    assert_eq!(data["reason"], "cursor_too_old");
    assert_eq!(data["last_event_id"], "2");
    let oldest: i64 = data["oldest_id"].as_str().unwrap().parse().unwrap();
    assert!(oldest >= 6, "{data}");
    let continue_from: i64 = data["continue_from"].as_str().unwrap().parse().unwrap();
    assert!(continue_from >= live, "{data}");
    assert_eq!(reset.id_num(), continue_from);
    app.stop().await;
}
over_both_writers!(a_cursor_below_the_prune_gets_a_reset_frame);

#[tokio::test]
async fn history_below_the_prune_is_410_and_since_starts_at_the_oldest_event_held() {
    let app = spawn_app_with(|c| c.retention = Duration::from_secs(2)).await;
    let topic = unique_topic("history");
    app.publish_batch_ok(vec![json!({"topic": topic}); 5]).await;
    let db = pool(&app.db).await;
    wait_pruned_through(&db, 5).await;

    let gone = app.get(&format!("/v1/events?after=2&topic={topic}")).await;
    let problem = assert_problem(gone, 410, "cursor_too_old", "after=2").await;
    let oldest: i64 = problem["oldest_id"].as_str().unwrap().parse().unwrap();
    assert!(oldest >= 6, "{problem}");

    // No cursor, or a time older than what is kept: what is left, no error.
    for query in [format!("topic={topic}"), format!("since=1h&topic={topic}")] {
        let res = app.get(&format!("/v1/events?{query}")).await;
        assert_eq!(res.status(), 200, "{query}");
        let events: Vec<Value> = res.json().await.unwrap();
        assert!(events.iter().all(|e| id_of(e) >= oldest), "{query}");
    }
    // A cursor at the floor is fine.
    let (_, floor) = head(&db).await;
    let res = app
        .get(&format!("/v1/events?after={floor}&topic={topic}"))
        .await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}

/// Publishes single events from `n` tasks until `stop`; returns the
/// statuses that were not 201 (and counts the 201s in `ok`).
fn publish_meanwhile(
    app: &TestApp,
    topic: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..n)
        .map(|_| {
            let (client, url, topic) =
                (app.client.clone(), app.url("/v1/events"), topic.to_owned());
            let (stop, ok) = (stop.clone(), ok.clone());
            tokio::spawn(async move {
                let mut refused = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let res = client
                        .post(&url)
                        .json(&json!({"topic": topic, "data": "meanwhile"}))
                        .send()
                        .await
                        .expect("publish request");
                    if res.status() == 201 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.push(res.status().as_u16());
                    }
                }
                refused
            })
        })
        .collect()
}

#[tokio::test]
async fn a_replay_overtaken_by_a_prune_is_reset_never_skipped_and_publishes_go_on() {
    // Ring of 1000: the replay reads the log, a page at a time, each page
    // only once the client has taken the one before.
    let app = spawn_app_with(|c| {
        c.retention = Duration::from_secs(2);
        c.ring_size = 1000;
    })
    .await;
    let lock = PruneLock::take(&app.db).await;
    let db = pool(&app.db).await;
    let topic = unique_topic("backlog");
    // About 40 MB of frames: far more than the socket buffers and a page,
    // so the server must read the log again after the prune.
    let backlog = publish_backlog(&app, &topic, 100_000, 300).await;

    // A client that reads slowly: 2000 events, then nothing until the
    // prune is over.
    let mut sse = app.stream(&format!("topic={topic}"), Some("0")).await;
    let first = sse.events(2000).await;
    assert_eq!(
        first.iter().map(SseFrame::id_num).collect::<Vec<_>>(),
        (1..=2000).collect::<Vec<i64>>()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publishers = publish_meanwhile(&app, &unique_topic("meanwhile"), 4, &stop, &published);

    wait_older_than(&db, backlog, Duration::from_secs(2)).await;
    lock.release().await;
    wait_pruned_through(&db, backlog).await;

    // The slow client reads on: events in order with no gap, then a reset.
    let mut expected = 2001;
    let reset = loop {
        let frame = sse.next_event().await.expect("stream open");
        if frame.event.as_deref() == Some("reset") {
            break frame.json();
        }
        assert_eq!(frame.id_num(), expected, "no gap before the reset");
        expected += 1;
    };
    stop.store(true, Ordering::Relaxed);
    let mut refused = Vec::new();
    for p in publishers {
        refused.extend(p.await.unwrap());
    }

    let read = expected - 1;
    assert!(read < backlog, "the prune overtook the replay");
    assert_eq!(reset["reason"], "cursor_too_old");
    assert_eq!(reset["last_event_id"], read.to_string());
    let oldest: i64 = reset["oldest_id"].as_str().unwrap().parse().unwrap();
    assert!(oldest > read + 1, "{reset}");
    assert!(
        refused.is_empty(),
        "publishes refused during the prune: {refused:?}"
    );
    assert!(published.load(Ordering::Relaxed) > 0);
    app.stop().await;
}

/// The pruner sessions of the instances on `db` whose last statement was
/// an attempt at the lock made after `since` (PostgreSQL's clock).
async fn lock_attempts_since(pool: &PgPool, db: &str, since: f64) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = $1 and application_name = 'herald pruner' \
           and query like '%pg_try_advisory_lock%' \
           and extract(epoch from state_change) > $2",
    )
    .bind(db)
    .bind(since)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn two_instances_prune_one_at_a_time() {
    let db = Arc::new(TestDb::create().await);
    let config = |db: &TestDb| {
        let mut c = test_config(&db.url);
        c.retention = Duration::from_secs(2);
        c
    };
    let one = spawn_on(db.clone(), config(&db)).await;
    let two = spawn_on(db.clone(), config(&db)).await;
    let lock = PruneLock::take(&db).await;
    let topic = unique_topic("two");
    for app in [&one, &two] {
        publish_backlog(app, &topic, 10_000, 0).await;
    }
    let conn = pool(&db).await;
    wait_older_than(&conn, 20_000, Duration::from_secs(2)).await;

    // Both instances try the lock (each round), find it taken, and prune
    // nothing, though every event is past the retention.
    let aged: f64 = sqlx::query_scalar("select extract(epoch from clock_timestamp())::float8")
        .fetch_one(&conn)
        .await
        .unwrap();
    wait_for("both instances to try the lock", || async {
        lock_attempts_since(&conn, &db.name, aged).await == 2
    })
    .await;
    assert_eq!(head(&conn).await, (20_000, 0));
    assert_eq!(rows(&conn).await, 20_000);

    // Released: one of them prunes everything, in several batches, while
    // the other skips; neither fails a publish.
    lock.release().await;
    wait_pruned_through(&conn, 20_000).await;
    assert_eq!(rows(&conn).await, 0);
    for app in [&one, &two] {
        let id = app.publish_ok(&topic, json!("after")).await;
        assert!(id > 20_000);
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn zero_retention_keeps_everything() {
    let app = spawn_app_with(|c| {
        c.retention = Duration::ZERO;
        c.retention_count = 0;
    })
    .await;
    let topic = unique_topic("kept");
    app.publish_batch_ok(vec![json!({"topic": topic}); 10])
        .await;
    let conn = pool(&app.db).await;
    wait_older_than(&conn, 10, Duration::from_secs(3)).await;

    assert_eq!(rows(&conn).await, 10);
    assert_eq!(head(&conn).await, (10, 0));
    // Nothing to prune, so no pruner at all: no session to take the lock.
    let pruners: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = $1 and application_name = 'herald pruner'",
    )
    .bind(&app.db.name)
    .fetch_one(&conn)
    .await
    .unwrap();
    assert_eq!(pruners, 0);
    let res = app.get(&format!("/v1/events?after=0&topic={topic}")).await;
    let events: Vec<Value> = res.json().await.unwrap();
    assert_eq!(events.len(), 10);
    app.stop().await;
}

#[tokio::test]
async fn the_count_cap_keeps_the_newest_events() {
    // An age the test never reaches (the rounds are every 3 s) and a cap.
    let app = spawn_app_with(|c| {
        c.retention = Duration::from_secs(30);
        c.retention_count = 5;
    })
    .await;
    let topic = unique_topic("capped");
    app.publish_batch_ok(vec![json!({"topic": topic}); 20])
        .await;

    let conn = pool(&app.db).await;
    wait_pruned_through(&conn, 15).await;

    assert_eq!(head(&conn).await, (20, 15));
    let kept: Vec<i64> = sqlx::query_scalar("select id from events order by id")
        .fetch_all(&conn)
        .await
        .unwrap();
    assert_eq!(kept, (16..=20).collect::<Vec<i64>>());
    app.stop().await;
}
