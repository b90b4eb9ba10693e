//! Named streams: live topic changes (`PUT /v1/streams/{handle}`), a
//! reconnect that follows the topics in force at each id, the caps across
//! instances that replace the oldest stream, the admin API and revocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    SECRET, SseClient, SseFrame, TestApp, TestDb, Writer, assert_problem, backend_token, sign,
    spawn_app, spawn_app_with, spawn_app_with_tokens, spawn_on, test_config, token, unique_topic,
    wait_for,
};

const HOUR: Duration = Duration::from_secs(3600);

/// A handle of this test run, unique.
fn new_handle() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "handle-{}-{:06}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn open_named(
    app: &TestApp,
    client: &reqwest::Client,
    handle: &str,
    query: &str,
    token: Option<&str>,
    last_event_id: Option<i64>,
) -> reqwest::Response {
    let mut req = client.get(app.url(&format!("/v1/stream?stream={handle}&{query}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    req.send().await.expect("stream request")
}

/// A named stream that must open: its reader, past the opening frame.
async fn open_named_ok(
    app: &TestApp,
    client: &reqwest::Client,
    handle: &str,
    query: &str,
    token: Option<&str>,
) -> SseClient {
    let res = open_named(app, client, handle, query, token, None).await;
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    next_data_frame(&mut sse).await;
    sse
}

async fn put_topics(
    app: &TestApp,
    handle: &str,
    topics: &[&str],
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .put(app.url(&format!("/v1/streams/{handle}")))
        .json(&json!({ "topics": topics }));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("put request")
}

/// The next frame with data (pings skipped); the stream must go on.
async fn next_data_frame(sse: &mut SseClient) -> SseFrame {
    sse.next_data_frame().await.expect("the stream goes on")
}

/// Which of the `(effective_at, filters)` is in force at `id`.
fn in_force(schedule: &[(i64, Vec<String>)], id: i64) -> &Vec<String> {
    &schedule
        .iter()
        .rev()
        .find(|(at, _)| *at < id)
        .unwrap_or(&schedule[0])
        .1
}

fn matches(filters: &[String], topic: &str) -> bool {
    filters.iter().any(|f| match f.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => f == topic,
    })
}

/// Every event of the log after `after` whose topic starts with `prefix`.
async fn log_after(app: &TestApp, prefix: &str, after: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page: Vec<Value> = app
            .get(&format!(
                "/v1/events?after={cursor}&topic={prefix}*&limit=1000"
            ))
            .await
            .json()
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        for e in &page {
            let id: i64 = e["id"].as_str().unwrap().parse().unwrap();
            out.push((id, e["topic"].as_str().unwrap().to_owned()));
            cursor = id;
        }
    }
}

async fn a_named_stream_changed_ten_times_gets_exactly_the_events_in_force(writer: Writer) {
    let app = spawn_app().await;
    let client = writer.client();
    let prefix = format!("{}:", unique_topic("steer"));
    let topic = |n: usize| format!("{prefix}t{n}");
    let handle = new_handle();
    let first = topic(0);
    let res = open_named(
        &app,
        &client,
        &handle,
        &format!("topic={first}"),
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    let opening = next_data_frame(&mut sse).await;
    assert_eq!(opening.json()["stream"], handle.as_str());
    let start = opening.id_num();
    let mut schedule = vec![(start, vec![first.clone()])];

    // 200 events a second over 10 topics while the topics change.
    let publishing = tokio_util::sync::CancellationToken::new();
    let published = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn({
        let (base, prefix, stop) = (app.base.clone(), prefix.clone(), publishing.clone());
        let published = published.clone();
        async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut n = 0usize;
            while !stop.is_cancelled() {
                tick.tick().await;
                let res = client
                    .post(format!("{base}/v1/events"))
                    .json(&json!({"topic": format!("{prefix}t{}", n % 10), "data": n}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                n += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut answers = Vec::new();
    for i in 1..=10usize {
        // At least 20 events (two per topic) under each set of topics,
        // however fast this machine publishes.
        wait_for("20 more events to be published", || async {
            published.load(Ordering::Relaxed) >= 20 * i as u64
        })
        .await;
        let topics: Vec<String> = if i == 5 {
            vec![format!("{prefix}*")]
        } else {
            vec![topic(i % 10), topic((i + 3) % 10)]
        };
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let res = put_topics(&app, &handle, &refs, None).await;
        assert_eq!(res.status(), 200, "change {i}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["stream"], handle.as_str());
        assert_eq!(body["topics"], json!(topics));
        let at: i64 = body["effective_at"].as_str().unwrap().parse().unwrap();
        answers.push(at);
        schedule.push((at, topics));
    }
    publishing.cancel();
    publisher.await.unwrap();
    // A last event on a topic in force, so the reader knows it has all.
    let last_topics = schedule.last().unwrap().1.clone();
    let sentinel = app.publish_ok(&last_topics[0], json!("last")).await;

    let mut events = Vec::new();
    let mut changes = Vec::new();
    let mut last_id = start;
    loop {
        let frame = next_data_frame(&mut sse).await;
        let id = frame.id_num();
        assert!(id >= last_id, "ids never go back: {id} after {last_id}");
        last_id = id;
        if frame.is_stream_frame() {
            let data = frame.json();
            assert_eq!(data["effective_at"].as_str().unwrap(), id.to_string());
            changes.push(id);
            continue;
        }
        let topic = frame.json()["topic"].as_str().unwrap().to_owned();
        events.push((id, topic));
        if id == sentinel {
            break;
        }
    }
    assert_eq!(
        changes, answers,
        "each answer's effective_at is the stream's frame"
    );
    let expected: Vec<(i64, String)> = log_after(&app, &prefix, start)
        .await
        .into_iter()
        .filter(|(id, topic)| *id <= sentinel && matches(in_force(&schedule, *id), topic))
        .collect();
    assert!(published.load(Ordering::Relaxed) >= 200);
    assert_eq!(
        events, expected,
        "exactly the events of the topics in force"
    );
    // The metrics are the test process's, shared with other tests.
    assert!(app.metric("herald_stream_topic_changes_total").await >= 10.0);
    app.stop().await;
}
over_both_writers!(a_named_stream_changed_ten_times_gets_exactly_the_events_in_force);

async fn a_reconnect_after_a_change_on_another_instance_follows_the_topics_at_each_id(
    writer: Writer,
) {
    let db = Arc::new(TestDb::create().await);
    let a = spawn_on(db.clone(), test_config(&db.url)).await;
    let b = spawn_on(db.clone(), test_config(&db.url)).await;
    let client = writer.client();
    let prefix = format!("{}:", unique_topic("moved"));
    let (one, two) = (format!("{prefix}one"), format!("{prefix}two"));
    let handle = new_handle();
    let mut sse =
        SseClient::new(open_named(&a, &client, &handle, &format!("topic={one}"), None, None).await);
    next_data_frame(&mut sse).await;
    let before = a.publish_ok(&one, json!(1)).await;
    assert_eq!(next_data_frame(&mut sse).await.id_num(), before);
    let old_two = a.publish_ok(&two, json!(2)).await;

    // The change is sent to B, which does not hold the stream: A applies it.
    let res = put_topics(&b, &handle, &[&two], None).await;
    assert_eq!(res.status(), 200);
    let at: i64 = res.json::<Value>().await.unwrap()["effective_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= old_two, "the change applies after what A had seen");
    let change = next_data_frame(&mut sse).await;
    assert!(change.is_stream_frame());
    assert_eq!(change.id_num(), at);
    let new_one = a.publish_ok(&one, json!(3)).await;
    let new_two = a.publish_ok(&two, json!(4)).await;
    assert_eq!(next_data_frame(&mut sse).await.id_num(), new_two);
    drop(sse);

    // The client drops and comes back on B from before the change.
    let res = open_named(
        &b,
        &client,
        &handle,
        &format!("topic={one}"),
        None,
        Some(before),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut resumed = SseClient::new(res);
    let opening = next_data_frame(&mut resumed).await;
    assert_eq!(
        opening.json()["topics"],
        json!([two]),
        "a reconnect takes the stream's topics, not the URL's"
    );
    let last = b.publish_ok(&two, json!(5)).await;
    let mut got = Vec::new();
    loop {
        let frame = next_data_frame(&mut resumed).await;
        got.push(frame.id_num());
        if frame.id_num() == last {
            break;
        }
    }
    // `old_two` is at or before the change (topic one then); `new_one`
    // after it (topic two then).
    assert_eq!(
        got,
        vec![new_two, last],
        "{old_two} and {new_one} are not in force"
    );
    a.stop().await;
    b.stop().await;
}
over_both_writers!(a_reconnect_after_a_change_on_another_instance_follows_the_topics_at_each_id);

async fn put_outside_the_grants_on_another_subject_or_with_too_many_topics_changes_nothing(
    writer: Writer,
) {
    let app = spawn_app_with_tokens(|c| c.max_topics_per_stream = 3).await;
    let alice = token("alice", &["user:{sub}:*", "news"], &[], HOUR);
    let bob = token("bob", &["user:{sub}:*"], &[], HOUR);
    let handle = new_handle();
    let client = writer.client();
    let mut sse = open_named_ok(
        &app,
        &client,
        &handle,
        "topic=user:alice:inbox",
        Some(&alice),
    )
    .await;

    let outside = put_topics(&app, &handle, &["user:bob:inbox"], Some(&alice)).await;
    assert_problem(outside, 403, "forbidden", "user:bob:inbox").await;
    let others = put_topics(&app, &handle, &["user:bob:inbox"], Some(&bob)).await;
    assert_problem(others, 404, "unknown_stream", &handle).await;
    let unknown = put_topics(&app, &new_handle(), &["news"], Some(&alice)).await;
    assert_problem(unknown, 404, "unknown_stream", "handle-").await;
    let many = put_topics(
        &app,
        &handle,
        &["news", "user:alice:a", "user:alice:b", "user:alice:c"],
        Some(&alice),
    )
    .await;
    assert_problem(many, 422, "too_many_topics", "at most 3").await;
    let malformed = app
        .client
        .put(app.url(&format!("/v1/streams/{handle}")))
        .bearer_auth(&alice)
        .json(&json!({"topic": ["news"]}))
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "bad_request", "topics").await;

    // The stream still has its topic, and only it.
    let publisher = app.with_bearer(&backend_token());
    publisher.publish_ok("news", json!("not in force")).await;
    let mine = publisher
        .publish_ok("user:alice:inbox", json!("mine"))
        .await;
    let next = next_data_frame(&mut sse).await;
    assert_eq!(next.id_num(), mine, "no change was applied");
    publisher.stop().await;
}
over_both_writers!(
    put_outside_the_grants_on_another_subject_or_with_too_many_topics_changes_nothing
);

/// An admin token for the tests' secret.
fn admin_token() -> String {
    sign(&json!({
        "sub": "ops",
        "exp": (time::OffsetDateTime::now_utc() + HOUR).unix_timestamp(),
        "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
        "herald": {"admin": true},
    }))
}

/// A token of alice's issued `ago` before now (`None`: no `iat`).
fn alice_issued(ago: Option<Duration>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut claims = json!({
        "sub": "alice",
        "exp": (now + HOUR).unix_timestamp(),
        "herald": {"subscribe": ["user:{sub}:*"]},
    });
    if let Some(ago) = ago {
        claims["iat"] = json!((now - ago).unix_timestamp());
    }
    sign(&claims)
}

async fn cluster(n: usize, adjust: impl Fn(&mut herald::Config)) -> Vec<TestApp> {
    let db = Arc::new(TestDb::create().await);
    let mut apps = Vec::new();
    for _ in 0..n {
        let mut config = test_config(&db.url);
        config.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
        adjust(&mut config);
        apps.push(spawn_on(db.clone(), config).await);
    }
    apps
}

async fn listed(app: &TestApp, query: &str) -> Vec<Value> {
    let res = app
        .client
        .get(app.url(&format!("/v1/streams?{query}")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["streams"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_cap_of_three_across_three_instances_replaces_the_two_oldest() {
    let apps = cluster(3, |c| c.limits.max_streams_per_subject = 3).await;
    let alice = alice_issued(Some(Duration::from_secs(1)));
    let client = Writer::Http1.client();
    let mut streams = Vec::new();
    for i in 0..5 {
        let handle = new_handle();
        let app = &apps[i % 3];
        let sse = open_named_ok(
            app,
            &client,
            &handle,
            "topic=user:alice:inbox",
            Some(&alice),
        )
        .await;
        // Opened one after the other, as the registry orders them.
        wait_for("the stream to be recorded", || async {
            listed(&apps[0], &format!("handle={handle}&state=all"))
                .await
                .len()
                == 1
        })
        .await;
        streams.push((handle, sse));
    }
    for (i, (handle, sse)) in streams.iter_mut().enumerate().take(2) {
        let frame = tokio::time::timeout(Duration::from_secs(2), next_data_frame(sse))
            .await
            .expect("replaced within a second or so");
        assert_eq!(frame.event.as_deref(), Some("replaced"), "stream {i}");
        assert_eq!(
            frame.json(),
            json!({"reason": "max_streams_per_subject", "cap": 3})
        );
        assert!(sse.next_frame().await.is_none(), "then the stream ends");
        let again = open_named(
            &apps[(i + 1) % 3],
            &client,
            handle,
            "topic=user:alice:inbox",
            Some(&alice),
            Some(0),
        )
        .await;
        assert_problem(again, 409, "stream_replaced", "replaced").await;
    }
    let open = listed(&apps[1], "subject=alice").await;
    let mut open: Vec<&str> = open.iter().map(|s| s["handle"].as_str().unwrap()).collect();
    open.sort_unstable();
    let mut newest: Vec<&str> = streams[2..].iter().map(|(h, _)| h.as_str()).collect();
    newest.sort_unstable();
    assert_eq!(open, newest, "the three newest stay open");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn revoking_a_subject_ends_its_streams_everywhere_and_refuses_older_tokens() {
    let apps = cluster(3, |_| {}).await;
    let old = alice_issued(Some(Duration::from_secs(5)));
    let client = Writer::Http1.client();
    let mut streams = Vec::new();
    for app in &apps {
        let res = client
            .get(app.url("/v1/stream?topic=user:alice:inbox"))
            .bearer_auth(&old)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let mut sse = SseClient::new(res);
        next_data_frame(&mut sse).await;
        streams.push(sse);
    }
    let not_admin = apps[0]
        .client
        .delete(apps[0].url("/v1/subjects/alice/streams"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_problem(not_admin, 403, "forbidden", "admin").await;

    let res = apps[0]
        .client
        .delete(apps[0].url("/v1/subjects/alice/streams"))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["subject"], "alice");
    for (i, sse) in streams.iter_mut().enumerate() {
        let frame = tokio::time::timeout(Duration::from_secs(1), next_data_frame(sse))
            .await
            .unwrap_or_else(|_| panic!("instance {i} ended the stream within a second"));
        assert_eq!(frame.event.as_deref(), Some("revoked"));
        assert_eq!(frame.json()["reason"], "subject_revoked");
        assert!(sse.next_frame().await.is_none());
    }
    for (i, app) in apps.iter().enumerate() {
        for refused in [old.clone(), alice_issued(None)] {
            let res = client
                .get(app.url("/v1/stream?topic=user:alice:inbox"))
                .bearer_auth(&refused)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "instance {i}");
        }
        let fresh = alice_issued(Some(Duration::ZERO));
        let res = client
            .get(app.url("/v1/stream?topic=user:alice:inbox"))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "a token issued after the call works on {i}"
        );
    }
    assert!(apps[2].metric("herald_revocations_active").await >= 1.0);
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn an_admin_lists_streams_and_ends_one_whose_reconnect_is_then_409() {
    let app = spawn_app_with(|_| {}).await;
    let client = Writer::Http1.client();
    let handle = new_handle();
    let topic = unique_topic("listed");
    let res = open_named(
        &app,
        &client,
        &handle,
        &format!("topic={topic}"),
        None,
        None,
    )
    .await;
    let mut sse = SseClient::new(res);
    next_data_frame(&mut sse).await;
    let unnamed = app.stream(&format!("topic={topic}"), None).await;

    // Anonymous loopback mode: no token needed.
    wait_for("both streams to be listed", || async {
        listed(&app, &format!("topic={topic}")).await.len() == 2
    })
    .await;
    let found = listed(&app, &format!("topic={topic}")).await;
    let named = found
        .iter()
        .find(|s| s["handle"] == handle.as_str())
        .unwrap();
    assert_eq!(named["topics"], json!([topic]));
    assert_eq!(named["client_addr"], "127.0.0.1");
    assert!(named["ended_at"].is_null());

    let res = app
        .client
        .delete(app.url(&format!("/v1/streams/{handle}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let frame = next_data_frame(&mut sse).await;
    assert_eq!(frame.event.as_deref(), Some("revoked"));
    assert_eq!(frame.json()["reason"], "stream_ended");
    assert!(sse.next_frame().await.is_none());
    let again = open_named(
        &app,
        &client,
        &handle,
        &format!("topic={topic}"),
        None,
        Some(0),
    )
    .await;
    assert_problem(again, 409, "stream_ended", "ended").await;
    let unknown = app
        .client
        .delete(app.url(&format!("/v1/streams/{}", new_handle())))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, "unknown_stream", "handle-").await;
    wait_for("the end to be recorded", || async {
        let ended = listed(&app, &format!("handle={handle}&state=ended")).await;
        ended.len() == 1 && ended[0]["end_reason"] == "ended"
    })
    .await;
    drop(unnamed);
    app.stop().await;
}

#[tokio::test]
async fn history_until_stops_at_an_id_inclusive() {
    let app = spawn_app().await;
    let topic = unique_topic("until");
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(app.publish_ok(&topic, json!(n)).await);
    }
    let page: Vec<Value> = app
        .get(&format!(
            "/v1/events?topic={topic}&after=0&until={}",
            ids[2]
        ))
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<String> = page
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = ids[..3].iter().map(i64::to_string).collect();
    assert_eq!(got, want);
    let bad = app.get("/v1/events?until=x").await;
    assert_problem(bad, 400, "bad_request", "until").await;
    app.stop().await;
}
