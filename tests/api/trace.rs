//! W3C trace context kept with events (issue #25, part 1): a publish's
//! `traceparent` and `tracestate`, as headers or as an event's fields, are
//! stored and appear in the event's envelope everywhere an envelope
//! appears; invalid ones are dropped and counted, never refused; events
//! without trace context are written as before.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::cli::Tail;
use crate::helpers::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

/// `POST /v1/events` with trace headers (and an idempotency key if given).
async fn publish_traced(
    app: &TestApp,
    body: &Value,
    parent: &str,
    state: Option<&str>,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/events"))
        .header("traceparent", parent);
    if let Some(state) = state {
        req = req.header("tracestate", state);
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.json(body).send().await.expect("publish")
}

fn assert_traced(envelope: &Value, parent: &str, state: Option<&str>, what: &str) {
    assert_eq!(envelope["traceparent"], parent, "{what}: {envelope}");
    match state {
        Some(state) => assert_eq!(envelope["tracestate"], state, "{what}: {envelope}"),
        None => assert!(envelope.get("tracestate").is_none(), "{what}: {envelope}"),
    }
}

fn id_of(envelope: &Value) -> i64 {
    envelope["id"].as_str().unwrap().parse().unwrap()
}

async fn trace_context_reaches_every_envelope(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("traced");
    let mut live = app.stream(&format!("topic={topic}"), None).await;
    let opening = live.next_frame().await.unwrap();
    assert!(opening.is_stream_frame());

    // The publish's own answer.
    let res = publish_traced(
        &app,
        &json!({"topic": topic, "data": {"n": 1}}),
        &traceparent(),
        Some(STATE),
        None,
    )
    .await;
    assert_eq!(res.status(), 201);
    let stored: Value = res.json().await.unwrap();
    assert_traced(&stored, &traceparent(), Some(STATE), "publish answer");
    let id = id_of(&stored);

    // Live, byte for byte the stored envelope.
    let frame = live.next_event().await.unwrap();
    assert_eq!(frame.json(), stored, "live frame");

    // Ring replay.
    let mut resumed = app
        .stream(&format!("topic={topic}"), Some(&(id - 1).to_string()))
        .await;
    let replayed = resumed.next_event().await.unwrap();
    assert_eq!(replayed.json(), stored, "ring replay");

    // History.
    let history: Vec<Value> = app
        .get(&format!("/v1/events?after={}&topic={topic}", id - 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "history");
    assert_eq!(history[0], stored, "history");

    // A batch: the headers apply to every event; an event's own fields win.
    let own = format!("00-{}-{}-00", "a".repeat(32), "b".repeat(16));
    let res = publish_traced(
        &app,
        &json!([
            {"topic": topic},
            {"topic": topic, "traceparent": own, "tracestate": "own=1"},
            {"topic": topic, "traceparent": own},
        ]),
        &traceparent(),
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 201);
    let batch: Vec<Value> = res.json().await.unwrap();
    assert_traced(&batch[0], &traceparent(), None, "batch, from the headers");
    assert_traced(&batch[1], &own, Some("own=1"), "batch, its own fields");
    assert_traced(&batch[2], &own, None, "batch, its own traceparent alone");
    for expected in &batch {
        assert_eq!(&live.next_event().await.unwrap().json(), expected);
    }

    // An idempotent repeat answers with the original, trace and all, even
    // when the repeat carries another trace or none.
    let key = unique_topic("key");
    let body = json!({"topic": topic, "data": "once"});
    let first = publish_traced(&app, &body, &traceparent(), Some(STATE), Some(&key)).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app.publish_with_key(&body, &key).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), first, "repeat");

    app.stop().await;
}
over_both_writers!(trace_context_reaches_every_envelope);

#[tokio::test]
async fn trace_context_survives_database_replay_and_herald_tail() {
    let app = spawn_app().await;
    let topic = unique_topic("traced-db");
    let res = publish_traced(
        &app,
        &json!({"topic": topic, "data": 1}),
        &traceparent(),
        Some(STATE),
        None,
    )
    .await;
    let stored: Value = res.json().await.unwrap();
    let id = id_of(&stored);

    // Another instance whose ring holds one event: a resume before the
    // newest event reads the database.
    let mut config = test_config(&app.db.url);
    config.ring_size = 1;
    let other = spawn_on(Arc::clone(&app.db), config).await;
    app.publish_ok(&unique_topic("filler"), json!(null)).await;
    app.publish_ok(&unique_topic("filler"), json!(null)).await;
    let before = other
        .metric("herald_resumes_total{source=\"database\"}")
        .await;
    let mut resumed = other
        .stream(&format!("topic={topic}"), Some(&(id - 1).to_string()))
        .await;
    assert_eq!(resumed.next_event().await.unwrap().json(), stored);
    assert_eq!(
        other
            .metric("herald_resumes_total{source=\"database\"}")
            .await,
        before + 1.0,
        "the resume read the database"
    );

    // `herald tail --json` prints the envelope as it came.
    let after = (id - 1).to_string();
    let mut tail = Tail::connected(&app.base, &["--json", "--last-event-id", &after, &topic]).await;
    let line: Value = serde_json::from_str(&tail.line().await).unwrap();
    assert_eq!(line, stored, "herald tail --json");

    other.stop().await;
    app.stop().await;
}

async fn invalid_trace_context_is_dropped_counted_and_the_event_stored(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("badtrace");
    let dropped = |field: &'static str| {
        let app = &app;
        async move {
            app.metric(&format!(
                "herald_trace_context_dropped_total{{field=\"{field}\"}}"
            ))
            .await
        }
    };
    let (parents, states) = (dropped("traceparent").await, dropped("tracestate").await);

    // An upper-case trace id breaks the rules: both values go.
    let bad = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let res = publish_traced(&app, &json!({"topic": topic}), &bad, Some(STATE), None).await;
    assert_eq!(res.status(), 201);
    let stored: Value = res.json().await.unwrap();
    assert!(stored.get("traceparent").is_none(), "{stored}");
    assert!(stored.get("tracestate").is_none(), "{stored}");
    // The counter is shared by every in-process herald of this test
    // binary (one recorder), and this test runs over both writers at once:
    // at least this test's drops.
    assert!(dropped("traceparent").await >= parents + 1.0);
    assert!(dropped("tracestate").await >= states + 1.0);

    // A valid traceparent with a broken tracestate keeps the traceparent.
    let res = publish_traced(
        &app,
        &json!({"topic": topic}),
        &traceparent(),
        Some("Bad Key=1"),
        None,
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_traced(
        &res.json().await.unwrap(),
        &traceparent(),
        None,
        "bad state",
    );
    assert!(dropped("tracestate").await >= states + 2.0);

    // An event's invalid field falls back to the request's headers.
    let res = publish_traced(
        &app,
        &json!({"topic": topic, "traceparent": "nonsense"}),
        &traceparent(),
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_traced(&res.json().await.unwrap(), &traceparent(), None, "fallback");

    // Every one of them is in the log.
    let history: Vec<Value> = app
        .get(&format!("/v1/events?after=0&topic={topic}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history.len(), 3);
    app.stop().await;
}
over_both_writers!(invalid_trace_context_is_dropped_counted_and_the_event_stored);

#[tokio::test]
async fn events_without_trace_context_are_written_as_before() {
    let app = spawn_app().await;
    let topic = unique_topic("untraced");
    let mut live = app.stream(&format!("topic={topic}"), None).await;
    let opening = live.next_frame().await.unwrap();
    let after = opening.id_num();
    assert_eq!(
        String::from_utf8(live.raw.clone()).unwrap(),
        opening_frame(200, after, &[&topic]),
        "the opening frame"
    );
    let res = app
        .publish(&json!({"topic": topic, "type": "t.x", "data": {"a": 1}}))
        .await;
    let stored: Value = res.json().await.unwrap();
    let id = id_of(&stored);
    let keys: Vec<&str> = stored
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{stored}");
    let frame = live.next_event().await.unwrap();
    let time = stored["time"].as_str().unwrap();
    assert_eq!(
        frame.data.as_deref().unwrap(),
        format!(
            "{{\"id\":\"{id}\",\"topic\":\"{topic}\",\"type\":\"t.x\",\"time\":\"{time}\",\
             \"data\":{{\"a\":1}}}}"
        )
    );
    app.stop().await;
}
