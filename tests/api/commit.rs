//! What a publish answer promises when the database misbehaves: one
//! request's content never fails another's, a `503` that says nothing was
//! stored stored nothing, and the answer comes within `--db-timeout` (1 s
//! in these tests, `FAULT_DB_TIMEOUT`) plus herald's documented margin (0.5 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

/// `--db-timeout` in the tests plus herald's answer margin, plus room for a
/// busy test machine.
const ANSWER_BOUND: Duration = Duration::from_millis(1000 + 500 + 1000);

async fn execute(db: &TestDb, sql: &'static str) {
    let mut conn = db.connect().await;
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
}

async fn count_topic(db: &TestDb, topic: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from events where topic = $1")
        .bind(topic)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Waits until no statement on this test's database is still inserting
/// events: after that, nothing more can commit.
async fn wait_inserts_settled(db: &TestDb) {
    wait_for("in-flight inserts to end", || async {
        let mut conn = db.connect().await;
        let active: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 \
             and state <> 'idle' and query ilike '%insert into events%' \
             and pid <> pg_backend_pid()",
        )
        .bind(&db.name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        active == 0
    })
    .await;
}

/// A trigger makes PostgreSQL refuse rows of topic `poison` (a data
/// exception, as a json value nested too deep for its parser once was),
/// while eight clients publish good events beside two that send poison and
/// two that send data nested 20,000 deep. Each good publish is stored; the
/// bad ones are refused alone. Before, one refused row failed its whole
/// group commit: 153 of 800 good publishes got `500`.
#[tokio::test]
async fn a_request_postgres_refuses_fails_alone_and_its_group_commits() {
    let app = Arc::new(spawn_app().await);
    execute(
        &app.db,
        "create function refuse_poison() returns trigger language plpgsql as $$ \
         begin raise exception 'poison' using errcode = '22023'; end $$",
    )
    .await;
    execute(
        &app.db,
        "create trigger refuse_poison before insert on events for each row \
         when (new.topic = 'poison') execute function refuse_poison()",
    )
    .await;
    let good = unique_topic("good");
    let nested = format!(
        "{{\"topic\":\"x\",\"data\":{}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );

    let mut tasks = Vec::new();
    for worker in 0..12 {
        let (app, good, nested) = (app.clone(), good.clone(), nested.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..40 {
                let res = match worker {
                    0 | 1 => app.publish(&json!({"topic": "poison", "data": n})).await,
                    2 | 3 => post_text(&app, &nested).await,
                    _ => app.publish(&json!({"topic": good, "data": n})).await,
                };
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                statuses.push((worker, status, body["code"].as_str().map(str::to_owned)));
            }
            statuses
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }

    for (worker, status, code) in &answers {
        match worker {
            0 | 1 => assert_eq!(
                (*status, code.as_deref()),
                (400, Some("refused_by_database"))
            ),
            2 | 3 => assert_eq!((*status, code.as_deref()), (400, Some("invalid_data"))),
            _ => assert_eq!(*status, 201, "a good publish: {code:?}"),
        }
    }
    assert_eq!(count_topic(&app.db, &good).await, 8 * 40);
    assert_eq!(count_topic(&app.db, "poison").await, 0);
    assert_eq!(count_topic(&app.db, "x").await, 0);
}

/// A trigger that sleeps 1.5 s on insert outlives `--db-timeout` (1 s).
/// The publish is answered `503` "nothing was stored" in time, and it is
/// true: PostgreSQL itself aborted the statement (`statement_timeout`).
/// Before, the statement went on and committed after the `503`.
#[tokio::test]
async fn a_503_for_a_slow_insert_means_nothing_was_stored() {
    let app = spawn_app_with(|c| c.db_timeout = FAULT_DB_TIMEOUT).await;
    execute(
        &app.db,
        "create function slow() returns trigger language plpgsql as $$ \
         begin perform pg_sleep(1.5); return new; end $$",
    )
    .await;
    execute(
        &app.db,
        "create trigger slow before insert on events for each row \
         when (new.topic = 'slow') execute function slow()",
    )
    .await;

    for keyed in [false, true] {
        let started = Instant::now();
        let res = if keyed {
            app.publish_with_key(&json!({"topic": "slow"}), "slow-1")
                .await
        } else {
            app.publish(&json!({"topic": "slow"})).await
        };
        let took = started.elapsed();
        assert!(took < ANSWER_BOUND, "answered after {took:?}");
        assert!(res.headers().contains_key("retry-after"));
        assert_problem(res, 503, "database_unavailable", "nothing was stored").await;
        wait_inserts_settled(&app.db).await;
        assert_eq!(count_topic(&app.db, "slow").await, 0, "keyed: {keyed}");
    }
    // The instance is fine afterwards.
    app.publish_ok(&unique_topic("after"), json!(1)).await;
    app.stop().await;
}

/// Another holder of the log's lock lets go a few ms before or after the
/// publish's deadline. Whatever the answer, it is true: a `201` was
/// stored once, a `503` saying "nothing was stored" stored nothing, and
/// only an answer that says the outcome is unknown may go either way.
/// Before, 3 of 14 such `503`s had been committed.
#[tokio::test]
async fn lock_released_near_the_deadline_never_gives_a_false_503() {
    use sqlx::Connection;
    let app = spawn_app_with(|c| c.db_timeout = FAULT_DB_TIMEOUT).await;
    let mut holder = app.db.connect().await;

    for offset_ms in [850_u64, 900, 950, 980, 1000, 1020, 1050, 1100] {
        let topic = unique_topic("near-deadline");
        let mut held = holder.begin().await.unwrap();
        sqlx::query("select last_id from log_head for update")
            .execute(&mut *held)
            .await
            .unwrap();
        let body = json!({"topic": topic});
        let publish = app.publish(&body);
        let release = async {
            // The fault's timing, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            held.rollback().await.unwrap();
        };
        let started = Instant::now();
        let (res, ()) = tokio::join!(publish, release);
        let took = started.elapsed();
        assert!(took < ANSWER_BOUND, "answered after {took:?}");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        wait_inserts_settled(&app.db).await;
        let stored = count_topic(&app.db, &topic).await;
        match (status, body["code"].as_str()) {
            (201, _) => assert_eq!(stored, 1, "{offset_ms} ms: 201"),
            (503, Some("database_unavailable")) => {
                assert_eq!(
                    stored, 0,
                    "{offset_ms} ms: a 503 that said nothing was stored"
                );
            }
            (503, Some("outcome_unknown")) => assert!(stored <= 1),
            other => panic!("{offset_ms} ms: unexpected answer {other:?}: {body}"),
        }
    }
    app.stop().await;
}

/// The backend whose last statement was an append: the committer's.
async fn committer_backend(db: &TestDb) -> i32 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = $1 \
         and query like 'with head as%' and pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_one(&mut conn)
    .await
    .expect("one backend ran the appends")
}

/// Waits until backend `pid` waits for a lock (the log's, held by a test).
async fn wait_lock_wait(db: &TestDb, pid: i32) {
    wait_for("the append to wait for the log's lock", || async {
        let mut conn = db.connect().await;
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from pg_stat_activity \
             where pid = $1 and wait_event_type = 'Lock')",
        )
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    })
    .await;
}

/// Holds the log's lock on `holder` while `publish` runs, until `release`
/// after the committer (`pid`) has started waiting for it.
async fn publish_behind_the_lock(
    app: &Arc<TestApp>,
    holder: &mut sqlx::PgConnection,
    pid: i32,
    topics: &[String],
    release: Duration,
) -> Vec<(u16, Duration)> {
    use sqlx::Connection;
    let mut held = holder.begin().await.unwrap();
    sqlx::query("select last_id from log_head for update")
        .execute(&mut *held)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (n, topic) in topics.iter().enumerate() {
        if n == 1 {
            wait_lock_wait(&app.db, pid).await;
        }
        let (app, topic) = (app.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = app.publish(&json!({"topic": topic})).await.status();
            (status.as_u16(), started.elapsed())
        }));
    }
    if topics.len() == 1 {
        wait_lock_wait(&app.db, pid).await;
    }
    // The fault's timing, not a wait for a condition.
    tokio::time::sleep(release).await;
    held.rollback().await.unwrap();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// A group that waited in the queue behind a held lock runs under timeouts
/// shortened to what its requests have left. Afterwards the committer goes
/// on with the same connection (not a new one per such group, as when it
/// closed it), and with its timeouts reset: an append that then waits
/// 1.2 s for the lock, longer than the shortened limit but within
/// `--db-timeout` (2 s here, for room on a busy machine), commits.
#[tokio::test]
async fn a_group_that_waited_leaves_the_committer_its_connection_and_timeouts() {
    let app = Arc::new(spawn_app_with(|c| c.db_timeout = Duration::from_secs(2)).await);
    app.publish_ok(&unique_topic("warm"), json!(0)).await;
    let committer = committer_backend(&app.db).await;
    let mut holder = app.db.connect().await;

    // One append waits for the lock; the next request waits in the queue
    // behind it for 1.4 s, so its group is sent with about 600 ms left.
    let topics = [unique_topic("first"), unique_topic("queued")];
    let answers = publish_behind_the_lock(
        &app,
        &mut holder,
        committer,
        &topics,
        Duration::from_millis(1400),
    )
    .await;
    assert_eq!(answers[0].0, 201);
    assert_eq!(answers[1].0, 201);
    assert!(
        answers[1].1 > Duration::from_secs(1),
        "the second request waited in the queue: {:?}",
        answers[1].1
    );

    let topic = [unique_topic("after")];
    let after = publish_behind_the_lock(
        &app,
        &mut holder,
        committer,
        &topic,
        Duration::from_millis(1200),
    )
    .await;
    assert_eq!(after[0].0, 201, "the connection's own timeouts again");
    assert_eq!(count_topic(&app.db, &topic[0]).await, 1);
    assert_eq!(
        committer_backend(&app.db).await,
        committer,
        "the committer kept its connection"
    );
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

/// PostgreSQL black-holed (the proxy forwards nothing, closes nothing):
/// twenty publishers at once each get their answer within `--db-timeout`
/// (2 s here) plus the margin, not queued behind groups that are
/// themselves timing out (6 s with `--db-timeout 3s` before). Every answer is a 503 that
/// either says nothing was stored or that the outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_answered_in_time_while_the_database_is_black_holed() {
    let proxy = FreezeProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let mut config = test_config(&db.url_via(proxy.addr));
    // Long enough that a request queued behind one timed-out group (what
    // happened before) shows: twice this, where the bound is this plus
    // the 0.5 s margin and some room for a busy machine.
    config.db_timeout = Duration::from_secs(2);
    let bound = Duration::from_millis(2000 + 500 + 800);
    let app = Arc::new(spawn_on(db.clone(), config).await);
    let topic = unique_topic("black-hole");
    app.publish_ok(&topic, json!(0)).await;

    proxy.freeze();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (app, topic) = (app.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            // Arrivals spread over the first group's wait, so later ones
            // would queue behind it.
            tokio::time::sleep(Duration::from_millis(n * 100)).await;
            let mut answers = Vec::new();
            for round in 0..3 {
                let started = Instant::now();
                let res = app
                    .publish(&json!({"topic": topic, "data": [n, round]}))
                    .await;
                let took = started.elapsed();
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                answers.push((took, status, body["code"].as_str().unwrap_or("").to_owned()));
            }
            answers
        }));
    }
    for task in tasks {
        for (took, status, code) in task.await.unwrap() {
            assert!(took < bound, "answered after {took:?} ({status} {code})");
            assert_eq!(status, 503);
            assert!(
                ["database_unavailable", "outcome_unknown"].contains(&code.as_str()),
                "{code}"
            );
        }
    }
    proxy.thaw();
}
