//! `GET /v1/events`: the log as JSON, with the same envelopes publish
//! answered and the stream sends (docs/ARCHITECTURE.md, "History").

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::helpers::*;

/// `GET /v1/events?{query}`; fails the test unless `200 application/json`.
/// The envelopes come back as their exact text.
async fn history(app: &TestApp, query: &str) -> Vec<String> {
    let res = app.get(&format!("/v1/events?{query}")).await;
    assert_eq!(res.status(), 200, "history {query}");
    assert_eq!(res.headers()["content-type"], "application/json");
    let list: Vec<Box<RawValue>> = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    list.into_iter().map(|r| r.get().to_owned()).collect()
}

/// The ids `history` answers for `query`.
async fn history_ids(app: &TestApp, query: &str) -> Vec<i64> {
    history(app, query)
        .await
        .iter()
        .map(|text| {
            let env: Value = serde_json::from_str(text).unwrap();
            env["id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// Publishes this JSON text as it is and returns the answer's exact text.
async fn publish_text(app: &TestApp, body: &str) -> String {
    let res = app
        .post_raw("/v1/events", Some("application/json"), body.to_owned())
        .await;
    assert_eq!(res.status(), 201, "publish {body}");
    res.text().await.unwrap()
}

#[tokio::test]
async fn history_returns_the_envelopes_publish_answered_oldest_first() {
    let app = spawn_app().await;
    let topic = unique_topic("hist");
    let single = publish_text(
        &app,
        &format!(r#"{{"topic":"{topic}","type":"a.b","data":{{"b":1,"a":1.50}}}}"#),
    )
    .await;
    let batch = publish_text(
        &app,
        &format!(r#"[{{"topic":"{topic}","data":"x"}},{{"topic":"{topic}"}}]"#),
    )
    .await;
    let batch: Vec<Box<RawValue>> = serde_json::from_str(&batch).unwrap();

    let events = history(&app, "").await;

    let mut published = vec![single];
    published.extend(batch.iter().map(|r| r.get().to_owned()));
    assert_eq!(events, published);
    app.stop().await;
}

#[tokio::test]
async fn history_of_an_empty_log_is_an_empty_array() {
    let app = spawn_app().await;

    let res = app.get("/v1/events").await;

    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "[]");
    app.stop().await;
}

#[tokio::test]
async fn after_excludes_events_up_to_that_id() {
    let app = spawn_app().await;
    let topic = unique_topic("after");
    let ids = app
        .publish_batch_ok((0..5).map(|n| json!({"topic": topic, "data": n})).collect())
        .await;

    let after_second = history_ids(&app, &format!("after={}", ids[1])).await;
    let after_last = history_ids(&app, &format!("after={}", ids[4])).await;
    let after_zero = history_ids(&app, "after=0").await;

    assert_eq!(after_second, ids[2..]);
    assert_eq!(after_last, Vec::<i64>::new());
    assert_eq!(after_zero, ids);
    app.stop().await;
}

#[tokio::test]
async fn after_beyond_the_newest_event_answers_empty() {
    let app = spawn_app().await;
    let id = app.publish_ok(&unique_topic("ahead"), json!(1)).await;

    let ids = history_ids(&app, &format!("after={}", id + 1000)).await;

    assert_eq!(ids, Vec::<i64>::new());
    app.stop().await;
}

#[tokio::test]
async fn topic_filter_matches_exact_topic_only() {
    let app = spawn_app().await;
    let topic = unique_topic("exact");
    let ids = app
        .publish_batch_ok(vec![
            json!({"topic": topic}),
            json!({"topic": format!("{topic}:child")}),
            json!({"topic": format!("{topic}x")}),
            json!({"topic": topic}),
        ])
        .await;

    let got = history_ids(&app, &format!("topic={topic}")).await;

    assert_eq!(got, [ids[0], ids[3]]);
    app.stop().await;
}

#[tokio::test]
async fn topic_prefix_filter_matches_topics_under_the_prefix() {
    let app = spawn_app().await;
    let base = unique_topic("prefix");
    let ids = app
        .publish_batch_ok(vec![
            json!({"topic": format!("{base}:a")}),
            json!({"topic": base}),
            json!({"topic": format!("{base}:b/c")}),
            json!({"topic": format!("{base}s:a")}),
            json!({"topic": "elsewhere"}),
        ])
        .await;

    let got = history_ids(&app, &format!("topic={base}:*")).await;
    let every = history_ids(&app, "topic=*").await;

    assert_eq!(got, [ids[0], ids[2]]);
    assert_eq!(every, ids);
    app.stop().await;
}

/// Topics may contain `_`, which SQL `LIKE` treats as "any character".
#[tokio::test]
async fn topic_filters_treat_underscore_literally() {
    let app = spawn_app().await;
    let base = unique_topic("under");
    let ids = app
        .publish_batch_ok(vec![
            json!({"topic": format!("{base}:a_b")}),
            json!({"topic": format!("{base}:axb")}),
            json!({"topic": format!("{base}:a_b:1")}),
            json!({"topic": format!("{base}:axb:1")}),
        ])
        .await;

    let exact = history_ids(&app, &format!("topic={base}:a_b")).await;
    let prefix = history_ids(&app, &format!("topic={base}:a_b:*")).await;

    assert_eq!(exact, [ids[0]]);
    assert_eq!(prefix, [ids[2]]);
    app.stop().await;
}

#[tokio::test]
async fn several_topic_filters_match_any_of_them() {
    let app = spawn_app().await;
    let a = unique_topic("multi-a");
    let b = unique_topic("multi-b");
    let c = unique_topic("multi-c");
    let ids = app
        .publish_batch_ok(vec![
            json!({"topic": a}),
            json!({"topic": b}),
            json!({"topic": c}),
            json!({"topic": format!("{c}:x")}),
            json!({"topic": a}),
        ])
        .await;

    let got = history_ids(&app, &format!("topic={a}&topic={c}:*")).await;

    assert_eq!(got, [ids[0], ids[3], ids[4]]);
    app.stop().await;
}

/// Exact topics are read through the topic index and prefixes in id
/// order: an event that an exact filter and a prefix both match comes
/// once, the parts merge in id order, and the limit holds over them all.
#[tokio::test]
async fn exact_and_prefix_filters_merge_in_order_without_duplicates() {
    let app = spawn_app().await;
    let team = unique_topic("merge-team");
    let (u1, u2) = (unique_topic("merge-u1"), unique_topic("merge-u2"));
    let ids = app
        .publish_batch_ok(vec![
            json!({"topic": u1}),
            json!({"topic": format!("{team}:a")}),
            json!({"topic": u2}),
            json!({"topic": format!("{team}:b")}),
            json!({"topic": u1}),
            json!({"topic": unique_topic("merge-other")}),
            json!({"topic": format!("{team}:a")}),
        ])
        .await;
    let query = format!("topic={team}:*&topic={team}:a&topic={u1}&topic={u1}");

    let got = history_ids(&app, &query).await;
    assert_eq!(got, [ids[0], ids[1], ids[3], ids[4], ids[6]]);

    let first = history_ids(&app, &format!("{query}&limit=3")).await;
    assert_eq!(first, [ids[0], ids[1], ids[3]]);
    let rest = history_ids(&app, &format!("{query}&after={}", ids[3])).await;
    assert_eq!(rest, [ids[4], ids[6]]);
    app.stop().await;
}

#[tokio::test]
async fn limit_caps_the_number_of_events_oldest_first() {
    let app = spawn_app().await;
    let topic = unique_topic("limit");
    let ids = app
        .publish_batch_ok(
            (0..10)
                .map(|n| json!({"topic": topic, "data": n}))
                .collect(),
        )
        .await;

    let three = history_ids(&app, "limit=3").await;
    let next = history_ids(&app, &format!("after={}&limit=3", three[2])).await;
    let max = history_ids(&app, "limit=1000").await;

    assert_eq!(three, ids[..3]);
    assert_eq!(next, ids[3..6]);
    assert_eq!(max, ids);
    app.stop().await;
}

#[tokio::test]
async fn default_limit_is_100() {
    let app = spawn_app().await;
    let topic = unique_topic("default-limit");
    let ids = app
        .publish_batch_ok(
            (0..150)
                .map(|n| json!({"topic": topic, "data": n}))
                .collect(),
        )
        .await;

    let got = history_ids(&app, "").await;

    assert_eq!(got, ids[..100]);
    app.stop().await;
}

#[tokio::test]
async fn paging_with_after_returns_every_event_once() {
    let app = spawn_app().await;
    let topic = unique_topic("paging");
    let other = unique_topic("paging-other");
    let mut want = Vec::new();
    for round in 0..5 {
        let ids = app
            .publish_batch_ok(vec![
                json!({"topic": topic, "data": round}),
                json!({"topic": other}),
                json!({"topic": topic, "data": round}),
            ])
            .await;
        want.extend([ids[0], ids[2]]);
    }

    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = history_ids(&app, &format!("topic={topic}&after={after}&limit=3")).await;
        let Some(&last) = page.last() else { break };
        got.extend(page);
        after = last;
    }

    assert_eq!(got, want);
    app.stop().await;
}

#[tokio::test]
async fn invalid_after_is_refused_with_400() {
    let app = spawn_app().await;

    for after in ["abc", "-1", "1.5", "", "99999999999999999999", "0x10"] {
        let res = app.get(&format!("/v1/events?after={after}")).await;
        assert_problem(res, 400, "bad_request", "after").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_limit_is_refused_with_400() {
    let app = spawn_app().await;

    for limit in ["0", "1001", "x", "-5", "", "10.0"] {
        let res = app.get(&format!("/v1/events?limit={limit}")).await;
        assert_problem(res, 400, "bad_request", "limit").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_topic_filter_is_refused_with_400() {
    let app = spawn_app().await;

    for filter in ["", "a::b", "a%20b", "a*b", "**", ":*", "a%25", "a_%25"] {
        let res = app.get(&format!("/v1/events?topic={filter}")).await;
        assert_problem(res, 400, "invalid_filter", "topic filter").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn too_many_topic_filters_are_refused_with_400() {
    let app = spawn_app().await;
    let query: Vec<String> = (0..65).map(|n| format!("topic=t{n}")).collect();

    let res = app.get(&format!("/v1/events?{}", query.join("&"))).await;

    assert_problem(res, 400, "bad_request", "at most 64").await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_query_parameter_is_refused_with_400() {
    let app = spawn_app().await;

    for query in ["topics=a", "last_event_id=3", "after=1&Limit=5", "x"] {
        let res = app.get(&format!("/v1/events?{query}")).await;
        assert_problem(res, 400, "bad_request", "unknown query parameter").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn history_envelope_equals_stream_envelope() {
    let app = spawn_app().await;
    let topic = unique_topic("same-envelope");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    publish_text(
        &app,
        &format!(
            r#"[{{"topic":"{topic}","type":"x.y","data":{{"z":"line\nnext","a":[1.0,2e5]}}}},{{"topic":"{topic}"}}]"#
        ),
    )
    .await;

    let live = sse.events(2).await;
    let events = history(&app, &format!("topic={topic}")).await;

    let streamed: Vec<String> = live.iter().map(|f| f.data.clone().unwrap()).collect();
    assert_eq!(events, streamed);
    for frame in &live {
        let env: Value = serde_json::from_str(frame.data.as_deref().unwrap()).unwrap();
        assert_eq!(env["id"].as_str().unwrap(), frame.id.as_deref().unwrap());
        assert_eq!(
            env["type"].as_str().unwrap(),
            frame.event.as_deref().unwrap()
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn history_envelope_equals_replayed_stream_envelope() {
    let app = spawn_app().await;
    let topic = unique_topic("same-replay");
    app.publish_ok(&topic, json!({"k": "v"})).await;
    let events = history(&app, &format!("topic={topic}")).await;

    let mut sse = app
        .stream(&format!("topic={topic}&last_event_id=0"), None)
        .await;
    let replayed = sse.next_event().await.unwrap();

    assert_eq!(events, [replayed.data.unwrap()]);
    app.stop().await;
}

#[tokio::test]
async fn history_answers_503_with_retry_after_while_database_is_unreachable() {
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    let id = app.publish_ok(&unique_topic("hist-outage"), json!(1)).await;

    proxy.cut();
    let res = app.get("/v1/events").await;

    assert!(res.headers().contains_key("retry-after"), "Retry-After");
    assert_problem(res, 503, "database_unavailable", "unavailable").await;
    proxy.restore();
    wait_for("history to answer again", || async {
        app.get("/v1/events").await.status() == 200
    })
    .await;
    assert_eq!(history_ids(&app, "").await, [id]);
    app.stop().await;
}
