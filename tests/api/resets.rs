//! The `reset` frame (docs/ARCHITECTURE.md, "Subscribe"): a cursor newer than any id
//! the log assigned, or older than what it still holds, gets one reset
//! before live events, and no second one after a reconnect.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::resume::{QUIET, events_through, ids, labeled_metric, open_witness};

/// The frame after the opening one (which carries the client's own
/// cursor), which must be the reset; checks their bytes.
async fn expect_reset(sse: &mut SseClient, topic: &str, cursor: i64, continue_from: i64) -> Value {
    let opening = sse.next_frame().await.unwrap();
    assert!(opening.is_stream_frame(), "{opening:?}");
    let reset = sse.next_frame().await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.id_num(), continue_from);
    let data = reset.data.clone().unwrap();
    let expected = format!(
        "{}id: {continue_from}\nevent: reset\ndata: {data}\n\n",
        opening_frame(200, cursor, &[topic])
    );
    assert_eq!(String::from_utf8(sse.raw.clone()).unwrap(), expected);
    reset.json()
}

async fn cursor_ahead_of_the_log_gets_one_reset_then_live_events(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("ahead");
    let published = app.publish_batch_ok(vec![json!({"topic": topic}); 3]).await;
    let before = labeled_metric(
        &app,
        "herald_stream_resets_total",
        "reason=\"cursor_ahead\"",
    )
    .await;

    let mut sse = app.stream(&format!("topic={topic}"), Some("999999")).await;
    let reset = expect_reset(&mut sse, &topic, 999_999, published[2]).await;
    let live = app.publish_ok(&topic, json!("live")).await;
    let next = sse.next_frame().await.unwrap();

    assert_eq!(reset["reason"], "cursor_ahead");
    assert_eq!(reset["last_event_id"], "999999");
    assert_eq!(reset["oldest_id"], "1");
    assert_eq!(reset["continue_from"], published[2].to_string());
    assert_eq!(next.id_num(), live);
    assert_eq!(next.event.as_deref(), Some("message"));
    let after = labeled_metric(
        &app,
        "herald_stream_resets_total",
        "reason=\"cursor_ahead\"",
    )
    .await;
    assert!(after >= before + 1.0, "resets {before} -> {after}");
    app.stop().await;
}
over_both_writers!(cursor_ahead_of_the_log_gets_one_reset_then_live_events);

/// A log that holds nothing has no oldest id: the reset says `null`, not
/// the `"1"` it once said of a log that never held event 1.
async fn a_reset_on_an_empty_log_says_it_holds_no_oldest_id(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("empty");

    let mut sse = app.stream(&format!("topic={topic}"), Some("999999")).await;
    let reset = expect_reset(&mut sse, &topic, 999_999, 0).await;

    assert_eq!(reset["reason"], "cursor_ahead");
    assert_eq!(reset["oldest_id"], Value::Null);
    assert_eq!(reset["continue_from"], "0");
    let live = app.publish_ok(&topic, json!("first")).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), live);
    app.stop().await;
}
over_both_writers!(a_reset_on_an_empty_log_says_it_holds_no_oldest_id);

async fn reconnecting_with_the_reset_id_gets_no_second_reset(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("ahead");
    let published = app.publish_batch_ok(vec![json!({"topic": topic}); 3]).await;
    let mut first = app.stream(&format!("topic={topic}"), Some("999999")).await;
    expect_reset(&mut first, &topic, 999_999, published[2]).await;
    drop(first);

    let mut again = app
        .stream(&format!("topic={topic}"), Some(&published[2].to_string()))
        .await;
    assert_eq!(again.next_frame().await.unwrap().retry, Some(200));
    let live = app.publish_ok(&topic, json!("live")).await;
    let next = again.next_frame().await.unwrap();

    assert_eq!(next.event.as_deref(), Some("message"));
    assert_eq!(next.id_num(), live);
    app.stop().await;
}
over_both_writers!(reconnecting_with_the_reset_id_gets_no_second_reset);

/// Ten events, of which the log then prunes 1..=5 as retention would.
async fn app_with_pruned_log(writer: Writer) -> (TestApp, String, SseClient) {
    let app = spawn_app_with(|c| {
        c.ring_size = 4;
        c.heartbeat = QUIET;
    })
    .await
    .over(writer);
    let topic = unique_topic("pruned");
    let mut witness = open_witness(&app).await;
    let published = app
        .publish_batch_ok(vec![json!({"topic": topic}); 10])
        .await;
    assert_eq!(published, (1..=10).collect::<Vec<i64>>());
    events_through(&mut witness, 10).await;
    let mut conn = app.db.connect().await;
    sqlx::query("delete from events where id <= 5")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update log_head set pruned_through = 5")
        .execute(&mut conn)
        .await
        .unwrap();
    (app, topic, witness)
}

async fn cursor_older_than_the_log_gets_one_reset_with_oldest_id_then_live_events(writer: Writer) {
    let (app, topic, _witness) = app_with_pruned_log(writer).await;

    let mut sse = app.stream(&format!("topic={topic}"), Some("2")).await;
    let reset = expect_reset(&mut sse, &topic, 2, 10).await;
    let live = app.publish_ok(&topic, json!("live")).await;
    let next = sse.next_frame().await.unwrap();

    assert_eq!(reset["reason"], "cursor_too_old");
    assert_eq!(reset["oldest_id"], "6");
    assert_eq!(reset["last_event_id"], "2");
    assert_eq!(reset["continue_from"], "10");
    assert_eq!(next.id_num(), live);
    assert_eq!(next.event.as_deref(), Some("message"));
    app.stop().await;
}
over_both_writers!(cursor_older_than_the_log_gets_one_reset_with_oldest_id_then_live_events);

async fn cursor_at_the_pruning_floor_replays_the_rest_without_reset(writer: Writer) {
    let (app, topic, _witness) = app_with_pruned_log(writer).await;

    let mut sse = app.stream(&format!("topic={topic}"), Some("5")).await;
    let got = events_through(&mut sse, 10).await;

    assert_eq!(ids(&got), (6..=10).collect::<Vec<i64>>());
    assert!(got.iter().all(|f| f.event.as_deref() == Some("message")));
    app.stop().await;
}
over_both_writers!(cursor_at_the_pruning_floor_replays_the_rest_without_reset);
