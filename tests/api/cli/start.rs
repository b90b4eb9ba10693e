//! Where `herald tail` starts: `--last-event-id` and `--since` (issue #8).

use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::*;

/// Moves the commit time of every event up to `id` two hours back, straight
/// in the log.
async fn back_date(app: &TestApp, id: i64) {
    let mut conn = app.db.connect().await;
    sqlx::query("update events set time = time - interval '2 hours' where id <= $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn tail_last_event_id_prints_exactly_the_events_after_it_then_live_ones() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut published = Vec::new();
    for n in 1..=4 {
        published.push(publish_text(&app, &topic, json!(n)).await);
    }
    publish_text(&app, &unique_topic("other"), json!("not for this tail")).await;
    assert_eq!(id_in(&published[1]), 2);

    let mut tail = Tail::connected(&app.base, &["--json", "--last-event-id", "2", &topic]).await;
    let live = publish_text(&app, &topic, json!("live")).await;

    assert_eq!(
        tail.lines(3).await,
        [published[2].clone(), published[3].clone(), live]
    );
    assert!(
        tail.stderr().contains(", starting after id 2\n"),
        "{}",
        tail.stderr()
    );
    // Nothing came twice: the next line is the next event.
    let next = publish_text(&app, &topic, json!("next")).await;
    assert_eq!(tail.line().await, next);
}

#[tokio::test]
async fn tail_since_prints_the_events_committed_since_then_then_live_ones() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut published = Vec::new();
    for n in 1..=4 {
        published.push(publish_text(&app, &topic, json!(n)).await);
    }
    back_date(&app, id_in(&published[1])).await;
    let hour_ago = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&Rfc3339)
        .unwrap();

    let mut by_duration = Tail::connected(&app.base, &["--json", "--since", "1h", &topic]).await;
    let mut by_time = Tail::connected(&app.base, &["--json", "--since", &hour_ago, &topic]).await;
    let live = publish_text(&app, &topic, json!("live")).await;

    let expected = [published[2].clone(), published[3].clone(), live];
    assert_eq!(by_duration.lines(3).await, expected);
    assert_eq!(by_time.lines(3).await, expected);
}

#[tokio::test]
async fn tail_since_still_applies_when_it_reconnects_before_its_first_event() {
    let app = spawn_app().await;
    let proxy = ChaosProxy::start(app.addr).await;
    let topic = unique_topic("cli");
    let url = format!("http://{}", proxy.addr);
    let mut tail = Tail::connected(&url, &["--json", "--since", "1h", &topic]).await;

    // No event yet, so no id to resume from: the reconnect must ask for the
    // same hour again, or it would start at its own now.
    proxy.cut();
    tail.wait_stderr("connection lost").await;
    let missed = publish_text(&app, &topic, json!("while cut")).await;
    proxy.restore();

    assert_eq!(tail.line().await, missed);
    tail.wait_stderr("herald: reconnected").await;
}

#[tokio::test]
async fn tail_start_options_are_checked_before_connecting() {
    let url = format!("http://{}", closed_port().await);
    let cases: [(&[&str], &str); 5] = [
        (
            &["--since", "10m", "--last-event-id", "2"],
            "cannot be used with",
        ),
        (&["--since", "yesterday"], "RFC 3339"),
        (&["--since", "100000y"], "too far back"),
        (&["--last-event-id", "x"], "invalid digit"),
        (&["--last-event-id=-1"], "not in 0.."),
    ];
    for (args, says) in cases {
        let out = run(&[&["tail", "--url", &url][..], args].concat(), None).await;

        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
}

#[tokio::test]
async fn tail_prints_the_servers_refusal_of_a_since_before_the_log_can_start() {
    let app = spawn_app().await;

    // Well-formed, so the client sends it; only the server knows its floor.
    let out = run(
        &[
            "tail",
            "--url",
            &app.base,
            "--since",
            "1900-01-01T00:00:00Z",
        ],
        None,
    )
    .await;

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("herald: since "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(stdout(&out), "");
}
