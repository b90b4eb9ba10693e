//! Time cursors: `since=10m` or `since=<RFC 3339>` on the stream and the
//! history, for people who do not know an id (issue #5).

use serde_json::{Value, json};

use crate::helpers::*;

/// Publishes `n` events to `topic` and back-dates the first `old` of them by
/// two hours, straight in the log.
async fn publish_with_old(app: &TestApp, topic: &str, n: usize, old: usize) -> Vec<i64> {
    let ids = app
        .publish_batch_ok((0..n).map(|i| json!({"topic": topic, "data": i})).collect())
        .await;
    let mut conn = app.db.connect().await;
    sqlx::query("update events set time = time - interval '2 hours' where id <= $1")
        .bind(ids[old - 1])
        .execute(&mut conn)
        .await
        .unwrap();
    ids
}

async fn stream_since_duration_replays_only_recent_events_then_goes_live(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("since");
    let ids = publish_with_old(&app, &topic, 10, 4).await;

    let mut sse = app.stream(&format!("topic={topic}&since=1h"), None).await;
    let replayed: Vec<i64> = sse.events(6).await.iter().map(|f| f.id_num()).collect();
    let live = app.publish_ok(&topic, json!("live")).await;

    assert_eq!(replayed, ids[4..]);
    assert_eq!(sse.next_event().await.unwrap().id_num(), live);
    app.stop().await;
}
over_both_writers!(stream_since_duration_replays_only_recent_events_then_goes_live);

async fn stream_since_rfc3339_time_replays_events_from_then(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("since");
    let ids = publish_with_old(&app, &topic, 5, 2).await;
    let one_hour_ago = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();

    let query = format!("topic={topic}&since={}", one_hour_ago.replace('+', "%2B"));
    let mut sse = app.stream(&query, None).await;
    let replayed: Vec<i64> = sse.events(3).await.iter().map(|f| f.id_num()).collect();

    assert_eq!(replayed, ids[2..]);
    app.stop().await;
}
over_both_writers!(stream_since_rfc3339_time_replays_events_from_then);

async fn last_event_id_header_wins_over_since_on_reconnect(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("since");
    let ids = publish_with_old(&app, &topic, 6, 1).await;

    let mut sse = app
        .stream(
            &format!("topic={topic}&since=1h"),
            Some(&ids[3].to_string()),
        )
        .await;
    let replayed: Vec<i64> = sse.events(2).await.iter().map(|f| f.id_num()).collect();

    assert_eq!(replayed, ids[4..]);
    app.stop().await;
}
over_both_writers!(last_event_id_header_wins_over_since_on_reconnect);

async fn since_later_than_every_event_starts_live(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("since");
    publish_with_old(&app, &topic, 3, 3).await;

    let mut sse = app.stream(&format!("topic={topic}&since=1m"), None).await;
    let live = app.publish_ok(&topic, json!("live")).await;

    assert_eq!(sse.next_event().await.unwrap().id_num(), live);
    app.stop().await;
}
over_both_writers!(since_later_than_every_event_starts_live);

#[tokio::test]
async fn history_since_returns_only_recent_events() {
    let app = spawn_app().await;
    let topic = unique_topic("since");
    let ids = publish_with_old(&app, &topic, 8, 5).await;

    let body: Vec<Value> = app
        .get(&format!("/v1/events?topic={topic}&since=30m"))
        .await
        .json()
        .await
        .unwrap();

    let got: Vec<i64> = body
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids[5..]);
    app.stop().await;
}

#[tokio::test]
async fn invalid_or_conflicting_since_is_refused_with_problem_json() {
    let app = spawn_app().await;

    for path in [
        "/v1/stream?since=yesterday",
        "/v1/stream?since=10m&last_event_id=3",
        "/v1/events?since=2026-13-01T00:00:00Z",
        "/v1/events?since=10m&after=3",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("since"),
            "{path}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn since_is_answered_through_the_time_index() {
    let app = spawn_app().await;
    let mut conn = app.db.connect().await;

    // With sequential scans priced out, the plan shows the index is usable.
    sqlx::query("set enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select id - 1 from events where time >= now() order by time, id limit 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();

    assert!(plan.join("\n").contains("events_time"), "{plan:?}");
    app.stop().await;
}

/// `since` too far back (a duration that cannot be subtracted from now, a
/// time before the epoch) is a 400 problem on both endpoints, never a
/// dropped connection: `12100y` once panicked on an overflowing subtraction.
#[tokio::test]
async fn out_of_range_since_is_refused_not_a_panic() {
    let app = spawn_app().await;

    for since in [
        "12100y",
        "100000000000000000000s",
        "1969-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "18446744073709551615s",
    ] {
        for endpoint in ["/v1/stream", "/v1/events"] {
            let path = format!("{endpoint}?since={since}");
            let res = app.get(&path).await;
            let body = assert_problem(res, 400, "bad_request", "since").await;
            assert!(body["detail"].is_string(), "{path}: {body}");
        }
    }
    // The server is still there, and a sane since still works.
    let res = app.get("/v1/events?since=50y").await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}
