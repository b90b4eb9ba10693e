//! `POST /v1/events`: single events and batches, and SSE framing safety of
//! what publishers send (docs/ARCHITECTURE.md, "Publish").

use serde_json::{Value, json};

use crate::helpers::*;

// ----- single events and batches -----------------------------------------

#[tokio::test]
async fn single_event_is_stored_and_answered_201_with_envelope() {
    let app = spawn_app().await;
    let topic = unique_topic("incident");

    let res = app
        .publish(&json!({"topic": topic, "type": "incident.updated", "data": {"state": "open"}}))
        .await;

    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(|k| &**k).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "id", "time", "topic", "type"]);
    id_of(&body);
    assert_eq!(body["topic"], topic);
    assert_eq!(body["type"], "incident.updated");
    assert_eq!(body["data"], json!({"state": "open"}));
    assert_rfc3339(&body);
    assert_eq!(stored_rows(&app.db).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn type_defaults_to_message() {
    let app = spawn_app().await;
    let topic = unique_topic("default-type");

    let res = app.publish(&json!({"topic": topic, "data": 1})).await;

    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "message");
    app.stop().await;
}

#[tokio::test]
async fn data_keeps_key_order_and_number_spelling_without_whitespace() {
    let app = spawn_app().await;
    let topic = unique_topic("spelling");
    let body =
        format!(r#"{{"topic":"{topic}","data": {{ "b" : 1,  "a" : 1.50, "n": [1e3, 0.10] }} }}"#);

    let res = post_text(&app, &body).await;

    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert!(
        text.contains(r#""data":{"b":1,"a":1.50,"n":[1e3,0.10]}"#),
        "{text}"
    );
    let history = app.get("/v1/events").await.text().await.unwrap();
    assert!(
        history.contains(r#""data":{"b":1,"a":1.50,"n":[1e3,0.10]}"#),
        "{history}"
    );
    app.stop().await;
}

#[tokio::test]
async fn omitted_data_is_stored_as_null() {
    let app = spawn_app().await;
    let topic = unique_topic("no-data");

    let res = app.publish(&json!({"topic": topic})).await;

    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert!(text.ends_with(r#""data":null}"#), "{text}");
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["data"], Value::Null);
    assert!(history[0].as_object().unwrap().contains_key("data"));
    app.stop().await;
}

#[tokio::test]
async fn batch_is_stored_and_answered_201_with_consecutive_ids_in_order() {
    let app = spawn_app().await;
    let topic = unique_topic("batch");
    let events: Vec<Value> = (0..5)
        .map(|n| json!({"topic": topic, "type": "tick", "data": {"n": n}}))
        .collect();

    let res = app.publish(&Value::Array(events)).await;

    assert_eq!(res.status(), 201);
    let body: Vec<Value> = res.json().await.unwrap();
    assert_eq!(body.len(), 5);
    let ids: Vec<i64> = body.iter().map(id_of).collect();
    for (n, (env, id)) in body.iter().zip(&ids).enumerate() {
        assert_eq!(env["data"], json!({"n": n}), "event {n} in order");
        assert_eq!(env["topic"], topic);
        assert_eq!(env["type"], "tick");
        assert_rfc3339(env);
        assert_eq!(*id, ids[0] + n as i64, "ids are consecutive: {ids:?}");
    }
    assert_eq!(stored_rows(&app.db).await, 5);
    app.stop().await;
}

#[tokio::test]
async fn later_publishes_get_larger_ids() {
    let app = spawn_app().await;
    let topic = unique_topic("increasing");

    let first = app.publish_ok(&topic, json!(1)).await;
    let batch = app
        .publish_batch_ok(vec![json!({"topic": topic}), json!({"topic": topic})])
        .await;
    let last = app.publish_ok(&topic, json!(2)).await;

    assert!(first < batch[0] && batch[0] < batch[1] && batch[1] < last);
    app.stop().await;
}

#[tokio::test]
async fn batch_with_one_invalid_event_is_refused_naming_its_index_and_stores_nothing() {
    let app = spawn_app().await;
    let topic = unique_topic("all-or-nothing");
    let events = json!([
        {"topic": topic, "data": 0},
        {"topic": topic, "data": 1},
        {"topic": "not a topic", "data": 2},
        {"topic": topic, "data": 3},
    ]);

    let res = app.publish(&events).await;

    let body = assert_problem(res, 400, "invalid_topic", "event 2").await;
    assert!(
        body["detail"].as_str().unwrap().contains("not a topic"),
        "{body}"
    );
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn batch_with_reserved_type_late_in_the_batch_stores_nothing() {
    let app = spawn_app().await;
    let topic = unique_topic("all-or-nothing");
    let mut events: Vec<Value> = (0..9).map(|n| json!({"topic": topic, "data": n})).collect();
    events.push(json!({"topic": topic, "type": "reset"}));

    let res = app.publish(&Value::Array(events)).await;

    assert_problem(res, 400, "reserved_type", "event 9").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

// ----- framing -----------------------------------------------------------

#[tokio::test]
async fn newlines_in_data_are_delivered_on_a_single_data_line() {
    let app = spawn_app().await;
    let topic = unique_topic("framing");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let text = "a\nb\r\nc\rd\n\ndata: injected\n\n";

    let res = app
        .publish(&json!({"topic": topic, "data": {"text": text}}))
        .await;
    assert_eq!(res.status(), 201);
    let published = res.text().await.unwrap();
    let ev = sse.next_event().await.unwrap();

    assert_eq!(ev.json()["data"]["text"], text);
    let frame = format!("id: {}\nevent: message\ndata: {published}\n\n", ev.id_num());
    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(raw.contains(&frame), "frame {frame:?} not in {raw:?}");
    assert!(!raw.contains('\r'), "a raw CR reached the stream: {raw:?}");
    assert!(!published.contains(['\n', '\r']), "{published:?}");
    // And it is stored as sent.
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history[0]["data"]["text"], text);
    app.stop().await;
}

#[tokio::test]
async fn pretty_printed_data_is_delivered_on_a_single_data_line() {
    let app = spawn_app().await;
    let topic = unique_topic("framing-pretty");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let body = format!(
        "{{\r\n  \"topic\": \"{topic}\",\r\n  \"data\": {{\n    \"list\": [\n      1,\n      2\n    ],\n\t\"s\": \"x y\"\n  }}\n}}\n"
    );

    let res = post_text(&app, &body).await;
    assert_eq!(res.status(), 201);
    let ev = sse.next_event().await.unwrap();

    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    let data_line = raw
        .lines()
        .find(|l| l.starts_with("data: {\"id\":") && l.contains(&topic))
        .expect("a data line for the event");
    assert!(
        data_line.ends_with(r#""data":{"list":[1,2],"s":"x y"}}"#),
        "{data_line}"
    );
    assert_eq!(ev.json()["data"], json!({"list": [1, 2], "s": "x y"}));
    assert!(!raw.contains('\r'), "{raw:?}");
    app.stop().await;
}
