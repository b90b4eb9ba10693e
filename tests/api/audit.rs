//! The delivery audit (issue #25, part 4): `GET /v1/events/{id}/deliveries`
//! answers whether a subject got an event, and if not why, for each case
//! across two instances on one database; `herald explain` prints the same
//! answer, word for word.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{run, stdout};
use crate::helpers::*;

const HOUR: Duration = Duration::from_secs(3600);

fn admin_token() -> String {
    sign(&json!({
        "sub": "ops",
        "exp": (time::OffsetDateTime::now_utc() + HOUR).unix_timestamp(),
        "herald": {"admin": true},
    }))
}

/// Two instances with tokens on one database, adjusted alike.
async fn pair(adjust: impl Fn(&mut herald::Config)) -> (TestApp, TestApp) {
    let db = Arc::new(TestDb::create().await);
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = test_config(&db.url);
        config.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
        adjust(&mut config);
        apps.push(spawn_on(db.clone(), config).await);
    }
    let b = apps.pop().unwrap();
    (apps.pop().unwrap(), b)
}

/// A stream of `subject` on `app` reading `topic`, from `last_event_id`.
async fn open(app: &TestApp, subject: &str, query: &str, last_event_id: Option<&str>) -> SseClient {
    let token = token(subject, &["*"], &[], HOUR);
    let mut req = app
        .client
        .get(app.url(&format!("/v1/stream?{query}")))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    let opening = sse.next_frame().await.unwrap();
    assert!(opening.is_stream_frame());
    sse
}

async fn publish(app: &TestApp, topic: &str) -> i64 {
    let res = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(backend_token())
        .json(&json!({"topic": topic, "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until the registry holds `n` streams of `subject` in `state`.
async fn recorded(app: &TestApp, subject: &str, state: &str, n: usize) {
    wait_for(
        &format!("{n} {state} streams of {subject} recorded"),
        || async {
            let res = app
                .client
                .get(app.url(&format!("/v1/streams?subject={subject}&state={state}")))
                .bearer_auth(admin_token())
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            body["streams"].as_array().unwrap().len() == n
        },
    )
    .await;
}

/// The audit of `id` for `subject`, and what `herald explain` printed.
async fn explain(app: &TestApp, id: i64, subject: &str) -> (Value, String) {
    let res = app
        .client
        .get(app.url(&format!("/v1/events/{id}/deliveries?subject={subject}")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let audit: Value = res.json().await.unwrap();
    let admin = admin_token();
    let out = run(
        &[
            "explain",
            "--url",
            &app.base,
            "--token",
            &admin,
            &id.to_string(),
            "--subject",
            subject,
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let printed = stdout(&out);
    let first = printed.lines().next().unwrap_or_default();
    assert_eq!(first, audit["answer"].as_str().unwrap(), "{printed}");
    for stream in audit["streams"].as_array().unwrap() {
        let sentence = stream["sentence"].as_str().unwrap();
        assert!(printed.contains(sentence), "{printed}\nlacks {sentence}");
    }
    (audit, printed)
}

fn verdicts(audit: &Value) -> Vec<(&str, &str)> {
    audit["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap(),
                s["verdict"].as_str().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_event_written_live_to_a_stream_that_ended_since() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-live");
    let mut sse = open(&a, "s-live", &format!("topic={topic}"), None).await;
    let id = publish(&b, &topic).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), id);
    drop(sse);
    recorded(&a, "s-live", "ended", 1).await;

    let (audit, printed) = explain(&b, id, "s-live").await;
    assert_eq!(audit["delivered"], true, "{printed}");
    assert_eq!(audit["reason"], "written");
    assert_eq!(audit["streams"][0]["how"], "live");
    assert!(printed.starts_with(&format!("s-live got event #{id} ({topic}, committed ")));
    assert!(
        printed.contains(&format!("herald wrote event #{id} to stream ")),
        "{printed}"
    );
    assert!(printed.contains(" live."), "{printed}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_event_replayed_on_resume_on_the_other_instance() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-resume");
    let mut first = open(&a, "s-resume", &format!("topic={topic}"), None).await;
    let cursor = publish(&b, &topic).await;
    assert_eq!(first.next_event().await.unwrap().id_num(), cursor);
    drop(first);
    recorded(&a, "s-resume", "ended", 1).await;
    let id = publish(&a, &topic).await;
    let mut again = open(
        &b,
        "s-resume",
        &format!("topic={topic}"),
        Some(&cursor.to_string()),
    )
    .await;
    assert_eq!(again.next_event().await.unwrap().id_num(), id);
    drop(again);
    recorded(&b, "s-resume", "ended", 2).await;

    let (audit, printed) = explain(&a, id, "s-resume").await;
    assert_eq!(audit["reason"], "written", "{printed}");
    let written: Vec<&Value> = audit["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "written")
        .collect();
    assert_eq!(written.len(), 1, "{printed}");
    assert_eq!(written[0]["how"], "resume");
    assert!(
        printed.contains("on resume (it reconnected at "),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("from #{cursor}, and herald replayed it)")),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn no_stream_was_open_and_none_resumed_past_it() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-none");
    let id = publish(&a, &topic).await;

    let (audit, printed) = explain(&b, id, "s-none").await;
    assert_eq!(audit["delivered"], false);
    assert_eq!(audit["reason"], "no_stream");
    let printed = printed.trim_end();
    assert!(
        printed.starts_with(&format!(
            "s-none did not get event #{id} ({topic}, committed "
        )),
        "{printed}"
    );
    assert!(
        printed.ends_with(
            "): no stream of theirs was open when it was committed, and none has resumed \
             from before it yet."
        ),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_stream_ended_before_it_and_the_next_started_after_without_resuming() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-gap");
    let sse = open(&a, "s-gap", &format!("topic={topic}"), None).await;
    drop(sse);
    recorded(&a, "s-gap", "ended", 1).await;
    // Another subject's live stream on B shows when B has the event: a
    // stream opened there before that would start before it, and get it.
    let mut watcher = open(&b, "s-watch", &format!("topic={topic}"), None).await;
    let id = publish(&a, &topic).await;
    assert_eq!(watcher.next_event().await.unwrap().id_num(), id);
    let _next = open(&b, "s-gap", &format!("topic={topic}"), None).await;
    recorded(&b, "s-gap", "open", 1).await;

    let (audit, printed) = explain(&b, id, "s-gap").await;
    assert_eq!(audit["delivered"], false, "{printed}");
    assert_eq!(audit["reason"], "ended_before");
    let v = verdicts(&audit);
    assert_eq!(
        v.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        ["not_written", "started_after"]
    );
    assert!(
        printed.contains("the client closed the connection (or it broke)."),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("The next one, stream {}, opened at ", v[1].0)),
        "{printed}"
    );
    assert!(
        printed.contains("without resuming (no Last-Event-ID), so it started after it."),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_topics_in_force_did_not_match() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-topic");
    let other = format!("{topic}-other");
    // A named stream that follows the topic, then switches away from it.
    // 16 to 64 of [A-Za-z0-9_-].
    let handle = format!("audit-handle-{}", unique_topic("h").replace(':', "-"));
    let mut sse = open(
        &a,
        "s-topic",
        &format!("stream={handle}&topic={topic}"),
        None,
    )
    .await;
    recorded(&a, "s-topic", "open", 1).await;
    let res = b
        .client
        .put(b.url(&format!("/v1/streams/{handle}")))
        .bearer_auth(token("s-topic", &["*"], &[], HOUR))
        .json(&json!({"topics": [other]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let switched = sse.next_data_frame().await.unwrap();
    assert!(switched.is_stream_frame());
    let id = publish(&b, &topic).await;

    let (audit, printed) = explain(&a, id, "s-topic").await;
    assert_eq!(audit["delivered"], false, "{printed}");
    assert_eq!(audit["reason"], "did_not_match");
    assert_eq!(audit["streams"][0]["topics"], json!([other]));
    assert!(
        printed.contains(&format!(
            "followed {other} at event #{id}, which does not match {topic}."
        )),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_open_stream_is_answered_from_its_record() {
    let (a, b) = pair(|_| {}).await;
    let topic = unique_topic("audit-open");
    let mut sse = open(&b, "s-open", &format!("topic={topic}"), None).await;
    recorded(&a, "s-open", "open", 1).await;
    let id = publish(&a, &topic).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), id);

    let (audit, printed) = explain(&a, id, "s-open").await;
    assert_eq!(audit["delivered"], true);
    assert_eq!(audit["reason"], "presumed_written");
    assert!(printed.contains("is open and live since "), "{printed}");
    assert!(
        printed.contains("herald writes every matching event to a live stream unless it ends."),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_event_was_pruned_before_the_stream_resumed() {
    // A ring of one event, and one more event after the one asked about:
    // the resume reads the log (a ring may hold an event its instance has
    // not yet seen pruned, and would serve it whole).
    let (a, b) = pair(|c| {
        c.retention = Duration::from_secs(1);
        c.ring_size = 1;
    })
    .await;
    let topic = unique_topic("audit-pruned");
    let mut first = open(&a, "s-pruned", &format!("topic={topic}"), None).await;
    let cursor = publish(&a, &topic).await;
    assert_eq!(first.next_event().await.unwrap().id_num(), cursor);
    drop(first);
    recorded(&a, "s-pruned", "ended", 1).await;
    let id = publish(&b, &topic).await;
    publish(&b, &unique_topic("filler")).await;
    // The pruner runs every second with a 1 s retention.
    wait_for("the event to be pruned", || async {
        let res = a
            .client
            .get(a.url(&format!("/v1/events?after={}&topic={topic}", id - 1)))
            .bearer_auth(backend_token())
            .send()
            .await
            .unwrap();
        res.status() == 410
    })
    .await;
    let mut again = open(
        &b,
        "s-pruned",
        &format!("topic={topic}"),
        Some(&cursor.to_string()),
    )
    .await;
    let reset = again.next_data_frame().await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    drop(again);
    recorded(&b, "s-pruned", "ended", 2).await;

    let (audit, printed) = explain(&a, id, "s-pruned").await;
    assert_eq!(audit["event"]["pruned"], true);
    assert_eq!(audit["delivered"], false, "{printed}");
    assert_eq!(audit["reason"], "pruned");
    assert!(
        printed.contains(&format!("resumed from #{cursor} at ")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "but herald had pruned event #{id} by then: it sent a reset"
        )),
        "{printed}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_audit_refuses_an_unknown_event_a_missing_subject_and_non_admins() {
    let (a, b) = pair(|_| {}).await;
    let get = |path: String, token: String| {
        let app = &a;
        async move {
            app.client
                .get(app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let res = get("/v1/events/99/deliveries?subject=x".into(), admin_token()).await;
    assert_eq!(res.status(), 404);
    let res = get("/v1/events/1/deliveries".into(), admin_token()).await;
    assert_eq!(res.status(), 400);
    let res = get(
        "/v1/events/1/deliveries?subject=x&what=1".into(),
        admin_token(),
    )
    .await;
    assert_eq!(res.status(), 400);
    let res = get("/v1/events/x/deliveries?subject=x".into(), admin_token()).await;
    assert_eq!(res.status(), 400);
    let res = get(
        "/v1/events/1/deliveries?subject=x".into(),
        token("x", &["*"], &[], HOUR),
    )
    .await;
    assert_eq!(res.status(), 403);
    a.stop().await;
    b.stop().await;
}
