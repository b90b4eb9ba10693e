//! Idempotency keys: the `key` field, the `Idempotency-Key` header, batches,
//! and racing repeats (docs/ARCHITECTURE.md, "Publish").

use serde_json::{Value, json};

use crate::helpers::*;

// ----- idempotency --------------------------------------------------------

#[tokio::test]
async fn repeated_idempotency_key_field_returns_original_with_200() {
    let app = spawn_app().await;
    let topic = unique_topic("idem");
    let event = json!({"topic": topic, "data": {"n": 1}, "key": "order-17"});
    let first = app.publish(&event).await;
    assert_eq!(first.status(), 201);
    let original: Value = first.json().await.unwrap();

    let again = app.publish(&event).await;

    assert_eq!(again.status(), 200);
    let repeated: Value = again.json().await.unwrap();
    assert_eq!(repeated, original);
    assert_eq!(stored_rows(&app.db).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn repeated_idempotency_key_returns_original_even_if_the_body_differs() {
    let app = spawn_app().await;
    let topic = unique_topic("idem");
    let first = app
        .publish(&json!({"topic": topic, "data": {"v": "first"}, "key": "k-1"}))
        .await;
    assert_eq!(first.status(), 201);
    let original: Value = first.json().await.unwrap();

    let again = app
        .publish(&json!({"topic": topic, "type": "other", "data": {"v": "second"}, "key": "k-1"}))
        .await;

    assert_eq!(again.status(), 200);
    let repeated: Value = again.json().await.unwrap();
    assert_eq!(repeated, original);
    assert_eq!(repeated["data"], json!({"v": "first"}));
    assert_eq!(stored_rows(&app.db).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn repeated_idempotency_key_header_returns_original_with_200() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-header");
    let event = json!({"topic": topic, "data": [1, 2, 3]});
    let first = app.publish_with_key(&event, "req-7f3a").await;
    assert_eq!(first.status(), 201);
    let original: Value = first.json().await.unwrap();

    let again = app.publish_with_key(&event, "req-7f3a").await;

    assert_eq!(again.status(), 200);
    let repeated: Value = again.json().await.unwrap();
    assert_eq!(repeated, original);
    assert_eq!(stored_rows(&app.db).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn different_idempotency_keys_store_separate_events() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-distinct");
    let event = json!({"topic": topic, "data": 1});

    let a = app.publish_with_key(&event, "key-a").await;
    let b = app.publish_with_key(&event, "key-b").await;

    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 201);
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    assert_ne!(a["id"], b["id"]);
    assert_eq!(stored_rows(&app.db).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn batch_repeated_with_same_idempotency_header_returns_same_events_with_200() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-batch");
    let batch = json!([
        {"topic": topic, "data": "a"},
        {"topic": topic, "data": "b"},
        {"topic": topic, "data": "c"},
    ]);
    let first = app.publish_with_key(&batch, "batch-42").await;
    assert_eq!(first.status(), 201);
    let original: Vec<Value> = first.json().await.unwrap();

    let again = app.publish_with_key(&batch, "batch-42").await;

    assert_eq!(again.status(), 200);
    let repeated: Vec<Value> = again.json().await.unwrap();
    assert_eq!(repeated, original);
    assert_eq!(stored_rows(&app.db).await, 3);
    app.stop().await;
}

/// A 256-character key is valid (docs/ARCHITECTURE.md; `MAX_KEY_LEN`), so it must be
/// accepted for a batch as it is for a single event.
#[tokio::test]
async fn batch_accepts_idempotency_header_of_maximum_length() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-long");
    let key = "k".repeat(256);
    let single = app.publish_with_key(&json!({"topic": topic}), &key).await;
    assert_eq!(single.status(), 201, "a 256-character key is valid");

    let batch = app
        .publish_with_key(&json!([{"topic": topic}, {"topic": topic}]), &key)
        .await;

    assert_eq!(
        batch.status(),
        201,
        "{}",
        batch.text().await.unwrap_or_default()
    );
    assert_eq!(stored_rows(&app.db).await, 3);
    app.stop().await;
}

/// The header names the whole batch, and a batch's events are stored under
/// keys derived from it; those must not collide with a key another request
/// chose, or the batch would answer with someone else's event.
#[tokio::test]
async fn batch_idempotency_header_does_not_collide_with_another_requests_key() {
    let app = spawn_app().await;
    let single_topic = unique_topic("idem-single");
    let batch_topic = unique_topic("idem-batch");
    let single = app
        .publish_with_key(
            &json!({"topic": single_topic, "data": "single"}),
            "order-9#0",
        )
        .await;
    assert_eq!(single.status(), 201);

    let res = app
        .publish_with_key(
            &json!([{"topic": batch_topic, "data": 0}, {"topic": batch_topic, "data": 1}]),
            "order-9",
        )
        .await;

    assert_eq!(res.status(), 201);
    let batch: Vec<Value> = res.json().await.unwrap();
    assert_eq!(batch[0]["topic"], batch_topic, "{batch:?}");
    assert_eq!(batch[0]["data"], 0, "{batch:?}");
    assert_eq!(stored_rows(&app.db).await, 3);
    app.stop().await;
}

/// Two events of one batch with the same key are not a repeated request:
/// answering `201` for both while storing only the first would drop the
/// second silently. It is a malformed batch.
#[tokio::test]
async fn batch_repeating_a_key_inside_itself_is_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-inside");
    let other = unique_topic("idem-inside-other");

    let res = app
        .publish(&json!([
            {"topic": topic, "data": 1, "key": "dup"},
            {"topic": other, "data": 2, "key": "dup"},
        ]))
        .await;

    assert_problem(res, 400, "bad_request", "event 1").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn key_field_and_idempotency_header_together_are_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-both");

    let single = app
        .publish_with_key(&json!({"topic": topic, "key": "field"}), "header")
        .await;
    let batch = app
        .publish_with_key(
            &json!([{"topic": topic}, {"topic": topic, "key": "field"}]),
            "header",
        )
        .await;

    assert_problem(single, 400, "bad_request", "not both").await;
    assert_problem(batch, 400, "bad_request", "event 1").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_idempotency_keys_are_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-invalid");

    for key in [
        "has space",
        "",
        &"k".repeat(257),
        &"k".repeat(300),
        "caf\u{e9}",
    ] {
        let res = app.publish(&json!({"topic": topic, "key": key})).await;
        assert_problem(res, 400, "invalid_key", "idempotency key").await;
    }
    for key in ["has space", &"k".repeat(300)] {
        let res = app.publish_with_key(&json!({"topic": topic}), key).await;
        assert_problem(res, 400, "invalid_key", "idempotency key").await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_with_same_key_store_one_event() {
    let app = spawn_app().await;
    let topic = unique_topic("idem-race");
    let event = json!({"topic": topic, "data": {"n": 1}, "key": "race-1"});

    let answers = futures::future::join_all((0..20).map(|_| async {
        let res = app.publish(&event).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        (status, body)
    }))
    .await;

    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let repeated = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((created, repeated), (1, 19), "{answers:?}");
    let first = &answers[0].1;
    assert!(answers.iter().all(|(_, b)| b == first), "{answers:?}");
    assert_eq!(stored_rows(&app.db).await, 1);
    app.stop().await;
}
