//! `GET /v1/stream` (docs/ARCHITECTURE.md, "Subscribe"): headers, the opening `retry:`,
//! heartbeats, framing byte for byte, topic filters, refusals, a standard
//! SSE parser. Delivery under load is in `delivery.rs`.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

/// A heartbeat long enough that no `: ping` falls between the frames a
/// byte-for-byte assertion expects.
const QUIET: Duration = Duration::from_secs(60);

async fn stream_starts_with_retry_then_delivers_published_event(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("smoke");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let first = sse.next_frame().await.unwrap();
    assert_eq!(first.retry, Some(200));

    let id = app.publish_ok(&topic, json!({"n": 1})).await;
    let ev = sse.next_event().await.unwrap();

    assert_eq!(ev.id_num(), id);
    assert_eq!(ev.json()["data"], json!({"n": 1}));
    app.stop().await;
}
over_both_writers!(stream_starts_with_retry_then_delivers_published_event);

async fn stream_answers_event_stream_headers_and_opens_with_exact_opening_bytes(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("headers");

    let res = app.stream_response(&format!("topic={topic}"), None).await;

    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut sse = SseClient::new(res);
    let first = sse.next_frame().await.unwrap();
    assert_eq!(first.retry, Some(200));
    assert_eq!(
        String::from_utf8(sse.raw.clone()).unwrap(),
        opening_frame(200, 0, &[&topic])
    );
    app.stop().await;
}
over_both_writers!(stream_answers_event_stream_headers_and_opens_with_exact_opening_bytes);

async fn idle_stream_gets_ping_comments_at_the_heartbeat_interval(writer: Writer) {
    let heartbeat = Duration::from_millis(100);
    let app = spawn_app_with(|c| c.heartbeat = heartbeat)
        .await
        .over(writer);
    let topic = unique_topic("heartbeat");
    let opened = Instant::now();
    let mut sse = app.stream(&format!("topic={topic}"), None).await;

    let frames = [
        sse.next_frame().await.unwrap(),
        sse.next_frame().await.unwrap(),
        sse.next_frame().await.unwrap(),
    ];

    assert_eq!(frames[0].retry, Some(200));
    for ping in &frames[1..] {
        assert_eq!(ping.comments, vec!["ping".to_owned()]);
        assert!(!ping.is_event());
    }
    assert_eq!(
        String::from_utf8(sse.raw.clone()).unwrap(),
        format!("{}: ping\n\n: ping\n\n", opening_frame(200, 0, &[&topic]))
    );
    // Two intervals at least: pings are paced, not sent in a burst.
    assert!(opened.elapsed() >= heartbeat * 2, "{:?}", opened.elapsed());
    app.stop().await;
}
over_both_writers!(idle_stream_gets_ping_comments_at_the_heartbeat_interval);

async fn published_event_is_one_frame_byte_for_byte_with_the_publish_envelope(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("framing");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    sse.next_frame().await.unwrap();

    // Newlines, a CR, a line separator and a would-be SSE field inside the
    // data: none of them may break the frame.
    let res = app
        .publish(&json!({
            "topic": topic,
            "type": "incident.updated",
            "data": {"b": 1, "a": "line1\nline2\r\ndata: x\u{2028}é", "n": [1.50, null]},
        }))
        .await;
    assert_eq!(res.status(), 201);
    let envelope = res.text().await.unwrap();
    let published: Value = serde_json::from_str(&envelope).unwrap();
    let id = published["id"].as_str().unwrap().to_owned();
    let ev = sse.next_event().await.unwrap();

    let expected = format!(
        "{}id: {id}\nevent: incident.updated\ndata: {envelope}\n\n",
        opening_frame(200, 0, &[&topic])
    );
    assert_eq!(String::from_utf8(sse.raw.clone()).unwrap(), expected);
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert_eq!(ev.event.as_deref(), Some("incident.updated"));
    let data = ev.json();
    assert_eq!(data, published);
    assert_eq!(
        data.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["data", "id", "time", "topic", "type"]
    );
    assert_eq!(data["topic"], topic.as_str());
    assert_eq!(data["type"], "incident.updated");
    app.stop().await;
}
over_both_writers!(published_event_is_one_frame_byte_for_byte_with_the_publish_envelope);

async fn event_without_type_is_framed_as_message(writer: Writer) {
    let app = spawn_app_with(|c| c.heartbeat = QUIET).await.over(writer);
    let topic = unique_topic("framing");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    sse.next_frame().await.unwrap();

    let res = app.publish(&json!({"topic": topic, "data": "x"})).await;
    assert_eq!(res.status(), 201);
    let envelope = res.text().await.unwrap();
    let id = serde_json::from_str::<Value>(&envelope).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sse.next_event().await.unwrap();

    let expected = format!(
        "{}id: {id}\nevent: message\ndata: {envelope}\n\n",
        opening_frame(200, 0, &[&topic])
    );
    assert_eq!(String::from_utf8(sse.raw.clone()).unwrap(), expected);
    app.stop().await;
}
over_both_writers!(event_without_type_is_framed_as_message);

/// One event per topic, published as one batch after the stream opened,
/// then a marker on `marker_topic`; returns the ids the stream delivered up
/// to the marker (included) and, per published topic, its id.
async fn deliver_through_filter(
    app: &TestApp,
    query: &str,
    topics: &[String],
    marker_topic: &str,
) -> (Vec<i64>, Vec<(String, i64)>, i64) {
    let mut sse = app.stream(query, None).await;
    assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));

    let batch = topics
        .iter()
        .map(|t| json!({"topic": t, "data": {"topic": t}}))
        .collect();
    let ids = app.publish_batch_ok(batch).await;
    let marker = app.publish_ok(marker_topic, json!("marker")).await;

    let mut got = Vec::new();
    loop {
        let ev = sse.next_event().await.expect("stream open until marker");
        let id = ev.id_num();
        let env = ev.json();
        assert_eq!(env["id"], id.to_string());
        got.push((id, env["topic"].as_str().unwrap().to_owned()));
        if id >= marker {
            break;
        }
    }
    let published: Vec<(String, i64)> = topics.iter().cloned().zip(ids).collect();
    // The topic in each delivered envelope is the one that id was published to.
    for (id, topic) in &got {
        if *id != marker {
            assert!(published.contains(&(topic.clone(), *id)), "{id} {topic}");
        }
    }
    (
        got.into_iter().map(|(id, _)| id).collect(),
        published,
        marker,
    )
}

fn ids_of(published: &[(String, i64)], wanted: &[&String]) -> Vec<i64> {
    published
        .iter()
        .filter(|(t, _)| wanted.contains(&t))
        .map(|(_, id)| *id)
        .collect()
}

async fn exact_topic_filter_delivers_only_that_topic(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let base = unique_topic("exact");
    let (mine, longer, deeper, other) = (
        base.clone(),
        format!("{base}x"),
        format!("{base}:sub"),
        unique_topic("exact"),
    );
    let topics = [
        mine.clone(),
        longer,
        deeper,
        other,
        mine.clone(),
        mine.clone(),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, &format!("topic={mine}"), &topics, &mine).await;

    let mut expected = ids_of(&published, &[&mine]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(exact_topic_filter_delivers_only_that_topic);

async fn prefix_filter_matches_deeper_topics_but_not_longer_names(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let incident = format!("{}.incident", unique_topic("prefix"));
    let (a, ab, ac, incidents, bare) = (
        format!("{incident}:a"),
        format!("{incident}:a/b"),
        format!("{incident}:c.d-e_f"),
        format!("{incident}s"),
        incident.clone(),
    );
    let topics = [
        a.clone(),
        incidents.clone(),
        ab.clone(),
        bare.clone(),
        ac.clone(),
        format!("{incidents}:a"),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, &format!("topic={incident}:*"), &topics, &a).await;

    let mut expected = ids_of(&published, &[&a, &ab, &ac]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(prefix_filter_matches_deeper_topics_but_not_longer_names);

async fn several_topic_filters_deliver_the_union_in_id_order(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let (x, y, z) = (
        unique_topic("several"),
        unique_topic("several"),
        unique_topic("several"),
    );
    let deep = format!("{z}:deep/er");
    let noise = unique_topic("several");
    let topics = [
        x.clone(),
        noise.clone(),
        y.clone(),
        deep.clone(),
        x.clone(),
        noise,
        y.clone(),
        z.clone(),
    ];
    let query = format!("topic={x}&topic={y}&topic={z}:*");

    let (got, published, marker) = deliver_through_filter(&app, &query, &topics, &y).await;

    let mut expected = ids_of(&published, &[&x, &y, &deep]);
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(several_topic_filters_deliver_the_union_in_id_order);

async fn no_topic_filter_delivers_every_topic(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topics = [
        unique_topic("all"),
        unique_topic("other"),
        format!("{}/deep/er", unique_topic("all")),
    ];

    let (got, published, marker) = deliver_through_filter(&app, "", &topics, &topics[0]).await;

    let mut expected: Vec<i64> = published.iter().map(|(_, id)| *id).collect();
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(no_topic_filter_delivers_every_topic);

async fn star_filter_delivers_every_topic(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topics = [
        unique_topic("star"),
        unique_topic("other"),
        format!("{}/deep/er", unique_topic("star")),
    ];

    let (got, published, marker) =
        deliver_through_filter(&app, "topic=*", &topics, &topics[1]).await;

    let mut expected: Vec<i64> = published.iter().map(|(_, id)| *id).collect();
    expected.push(marker);
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(star_filter_delivers_every_topic);

async fn assert_problem(res: reqwest::Response, status: u16, code: &str, what: &str) {
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{what}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
}

async fn invalid_topic_filter_is_refused_with_problem_json(writer: Writer) {
    let app = spawn_app().await.over(writer);

    for query in [
        "topic=",
        "topic=a*b",
        "topic=**",
        "topic=a%20b",
        "topic=:a",
        "topic=a::*",
        "topic=a%0Ab",
        "topic=ok&topic=bad*x",
    ] {
        let res = app.stream_response(query, None).await;

        assert_problem(res, 400, "invalid_filter", query).await;
    }
    app.stop().await;
}
over_both_writers!(invalid_topic_filter_is_refused_with_problem_json);

async fn unknown_query_parameter_is_refused_with_problem_json(writer: Writer) {
    let app = spawn_app().await.over(writer);

    for query in ["topics=a", "foo=1", "topic=a&lastEventId=3"] {
        let res = app.stream_response(query, None).await;

        assert_problem(res, 400, "bad_request", query).await;
    }
    app.stop().await;
}
over_both_writers!(unknown_query_parameter_is_refused_with_problem_json);

async fn more_topic_filters_than_allowed_are_refused(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let query = (0..65)
        .map(|i| format!("topic=t{i}"))
        .collect::<Vec<_>>()
        .join("&");

    let res = app.stream_response(&query, None).await;

    assert_problem(res, 400, "bad_request", "65 filters").await;
    app.stop().await;
}
over_both_writers!(more_topic_filters_than_allowed_are_refused);

async fn standard_sse_parser_reads_ids_types_and_envelopes(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("parser");
    let res = app.stream_response(&format!("topic={topic}"), None).await;
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream().eventsource();
    // It names the stream's own opening frame, which the parser sees as one
    // more event: a page's catch-all handler skips it.
    let opening = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the opening frame in time")
        .expect("stream open")
        .expect("well-formed SSE");
    assert_eq!(
        (opening.event.as_str(), opening.id.as_str()),
        ("stream", "0")
    );
    assert_eq!(opening.retry, Some(Duration::from_millis(200)));

    let mut sent = Vec::new();
    for (ty, data) in [
        ("incident.opened", json!({"sev": 1})),
        ("note", json!("multi\nline\r\ntext")),
        ("incident.closed", json!([1, {"x": null}])),
    ] {
        let res = app
            .publish(&json!({"topic": topic, "type": ty, "data": data}))
            .await;
        assert_eq!(res.status(), 201);
        sent.push((ty, res.json::<Value>().await.unwrap()));
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("well-formed SSE");
        got.push(ev);
    }

    for (ev, (ty, envelope)) in got.iter().zip(&sent) {
        assert_eq!(ev.id, envelope["id"].as_str().unwrap());
        assert_eq!(ev.event, *ty);
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), *envelope);
        assert!(!ev.data.contains('\n'));
    }
    app.stop().await;
}
over_both_writers!(standard_sse_parser_reads_ids_types_and_envelopes);

async fn message_events_stream_sends_frames_without_event_line(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("untyped");
    let mut sse = app
        .stream(&format!("topic={topic}&message_events=true"), None)
        .await;
    sse.next_frame().await.unwrap(); // retry:

    let res = app
        .publish(&json!({"topic": topic, "type": "incident.updated", "data": 1}))
        .await;
    let envelope = res.text().await.unwrap();
    let frame = sse.next_event().await.unwrap();

    assert_eq!(frame.event, None);
    assert_eq!(frame.data.as_deref(), Some(envelope.as_str()));
    let id = frame.id_num();
    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(
        raw.ends_with(&format!("id: {id}\ndata: {envelope}\n\n")),
        "{raw:?}"
    );
    app.stop().await;
}
over_both_writers!(message_events_stream_sends_frames_without_event_line);
