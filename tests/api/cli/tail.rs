//! `herald tail`: output, resume after drops and restarts, resets, exit codes.

use crate::helpers::*;
use serde_json::json;

use super::*;

#[tokio::test]
async fn tail_json_prints_exactly_the_envelopes_of_matching_events_in_order() {
    let app = spawn_app().await;
    let prefix = unique_topic("cli");
    let (a, b, other) = (
        format!("{prefix}:a"),
        format!("{prefix}/b"),
        unique_topic("other"),
    );
    let mut tail = Tail::connected(&app.base, &["--json", &format!("{prefix}:*"), &b]).await;

    let mut expected = vec![publish_text(&app, &a, json!({"n": 1})).await];
    publish_text(&app, &other, json!("not for this tail")).await;
    expected.push(publish_text(&app, &b, json!("two")).await);
    expected.push(publish_text(&app, &a, json!([3, 1.50])).await);

    assert_eq!(tail.lines(3).await, expected);
    assert!(!tail.stderr().contains("reconnect"), "{}", tail.stderr());
}

#[tokio::test]
async fn tail_prints_one_plain_line_per_event_when_stdout_is_not_a_terminal() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&app.base, &[&topic]).await;

    let res = app
        .publish(&json!({"topic": topic, "type": "incident.updated", "data": {"status": "open"}}))
        .await;
    let id = id_of(&res.json().await.unwrap());

    let line = tail.line().await;
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(fields[0], format!("#{id}"), "{line:?}");
    let clock = fields[1].as_bytes();
    assert!(
        clock.len() == 8 && clock[2] == b':' && clock[5] == b':',
        "HH:MM:SS in {line:?}"
    );
    assert_eq!(
        fields[2..],
        [topic.as_str(), "incident.updated", r#"{"status":"open"}"#]
    );
    assert!(!line.contains('\x1b'), "no colour off a terminal: {line:?}");
}

#[tokio::test]
async fn tail_resumes_from_the_last_id_after_the_server_restarts() {
    let a = spawn_app().await;
    let (addr, db) = (a.addr, a.db.clone());
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&a.base, &["--json", &topic]).await;
    let first = publish_text(&a, &topic, json!(1)).await;
    assert_eq!(tail.line().await, first);

    a.stop().await;
    tail.wait_stderr(&format!("reconnecting from id {}…", id_in(&first)))
        .await;
    // While nothing listens on that port, another instance stores an event.
    let other = spawn_on(db.clone(), test_config(&db.url)).await;
    let missed = publish_text(&other, &topic, json!(2)).await;
    let mut config = test_config(&db.url);
    config.listen = addr;
    let b = spawn_on(db.clone(), config).await;
    let live = publish_text(&b, &topic, json!(3)).await;

    assert_eq!(tail.lines(2).await, [missed, live]);
    tail.wait_stderr("herald: reconnected").await;
    // Nothing came twice: the next line is the next event.
    let last = publish_text(&b, &topic, json!(4)).await;
    assert_eq!(tail.line().await, last);
}

#[tokio::test]
async fn tail_resumes_from_the_last_id_after_the_connection_is_cut() {
    let app = spawn_app().await;
    let proxy = ChaosProxy::start(app.addr).await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&format!("http://{}", proxy.addr), &["--json", &topic]).await;
    let first = publish_text(&app, &topic, json!(1)).await;
    assert_eq!(tail.line().await, first);

    proxy.cut();
    tail.wait_stderr(&format!("reconnecting from id {}…", id_in(&first)))
        .await;
    let missed = vec![
        publish_text(&app, &topic, json!(2)).await,
        publish_text(&app, &topic, json!(3)).await,
    ];
    proxy.restore();

    assert_eq!(tail.lines(2).await, missed);
    tail.wait_stderr("herald: reconnected").await;
    let last = publish_text(&app, &topic, json!(4)).await;
    assert_eq!(tail.line().await, last);
    let err = tail.stderr();
    assert_eq!(err.matches("connection lost").count(), 1, "{err}");
}

#[tokio::test]
async fn tail_keeps_trying_until_the_server_is_up() {
    let addr = closed_port().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::start(&format!("http://{addr}"), &["--json", &topic]);
    tail.wait_stderr(&format!(
        "herald: cannot connect to http://{addr}/v1/stream"
    ))
    .await;
    tail.wait_stderr("; retrying in 1s, backing off up to 10s")
        .await;

    let app = spawn_app_with(|c| c.listen = addr).await;
    tail.wait_stderr("herald: connected to ").await;
    let event = publish_text(&app, &topic, json!("up")).await;

    assert_eq!(tail.line().await, event);
}

#[tokio::test]
async fn tail_reports_a_reset_on_stderr_and_goes_on() {
    let a = spawn_app().await;
    let addr = a.addr;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&a.base, &["--json", &topic]).await;
    for n in 0..3 {
        publish_text(&a, &topic, json!(n)).await;
    }
    tail.lines(3).await;

    // The server comes back on an empty database: id 3 means nothing there.
    a.stop().await;
    let b = spawn_app_with(|c| c.listen = addr).await;
    tail.wait_stderr("herald: reset: id 3 is newer than any this server has assigned")
        .await;
    let event = publish_text(&b, &topic, json!("after the reset")).await;

    assert_eq!(tail.line().await, event);
    assert!(!tail.stderr().contains("\"reason\""), "{}", tail.stderr());
}

#[tokio::test]
async fn tail_refusal_exits_1_with_the_problem_detail() {
    let app = spawn_app().await;

    let out = run(&["tail", "--url", &app.base, "bad filter"], None).await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).ends_with(
            "herald: topic filter \"bad filter\" is invalid: an exact topic, or a topic prefix ending in '*'\n"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn tail_ends_with_status_0_on_sigint_and_sigterm() {
    let app = spawn_app().await;
    for signal in ["INT", "TERM"] {
        let mut tail = Tail::connected(&app.base, &[]).await;

        tail.signal(signal);

        assert_eq!(tail.exit_status().await.code(), Some(0), "SIG{signal}");
    }
}

#[tokio::test]
async fn tail_ends_with_status_0_when_its_reader_goes_away() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&app.base, &[&topic]).await;

    tail.close_stdout().await;
    publish_text(&app, &topic, json!(1)).await;

    assert_eq!(
        tail.exit_status().await.code(),
        Some(0),
        "{}",
        tail.stderr()
    );
}
