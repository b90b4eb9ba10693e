//! `herald publish`: data from an argument or stdin, type and key, exit codes.

use crate::helpers::*;
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn publish_prints_the_stored_envelope_and_keeps_json_data_as_typed() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let out = publish(&app, &[&topic, r#"{"b": 1, "a": [1.50]}"#], None).await;

    let envelope = stored(&out);
    assert_eq!(envelope["topic"], topic.as_str());
    assert_eq!(envelope["type"], "message");
    assert_rfc3339(&envelope);
    // Key order and number spelling as typed; only white space removed.
    assert!(
        stdout(&out).contains(r#""data":{"b":1,"a":[1.50]}"#),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out), "");
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history, [envelope]);
}

#[tokio::test]
async fn publish_sends_text_that_is_not_json_as_a_string() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let text = stored(&publish(&app, &[&topic, "disk full"], None).await);
    let number = stored(&publish(&app, &[&topic, "-42"], None).await);

    assert_eq!(text["data"], "disk full");
    assert_eq!(number["data"], -42);
}

#[tokio::test]
async fn publish_reads_data_from_stdin() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let dash = stored(&publish(&app, &[&topic, "-"], Some("{\n  \"x\": 1\n}\n")).await);
    let implicit = stored(&publish(&app, &[&topic], Some("line 1\nline 2\n")).await);
    let empty = stored(&publish(&app, &[&topic], None).await);

    assert_eq!(dash["data"], json!({"x": 1}));
    assert_eq!(implicit["data"], "line 1\nline 2");
    assert_eq!(empty["data"], Value::Null);
}

#[tokio::test]
async fn publish_sets_the_type_and_a_repeated_key_returns_the_original() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let args = [
        topic.as_str(),
        "--type",
        "deploy.done",
        "--key",
        "deploy-4711",
    ];

    let first = publish(&app, &[&args[..], &["\"v1\""]].concat(), None).await;
    let again = publish(&app, &[&args[..], &["\"v2\""]].concat(), None).await;

    let envelope = stored(&first);
    assert_eq!(envelope["type"], "deploy.done");
    assert_eq!(envelope["data"], "v1");
    assert_eq!(stored(&again), envelope, "the original event");
    assert_eq!(stdout(&again), stdout(&first));
    assert!(
        stderr(&again).contains("already stored"),
        "{}",
        stderr(&again)
    );
    assert_eq!(stored_rows(&app.db).await, 1);
}

#[tokio::test]
async fn publish_refusal_exits_1_with_the_problem_detail_on_stderr() {
    let app = spawn_app().await;

    let bad_topic = publish(&app, &["bad topic", "1"], None).await;
    let reserved = publish(&app, &["ok", "--type", "reset", "1"], None).await;

    assert_eq!(bad_topic.status.code(), Some(1));
    assert_eq!(stdout(&bad_topic), "");
    assert!(
        stderr(&bad_topic).starts_with("herald: topic \"bad topic\" is invalid: "),
        "{}",
        stderr(&bad_topic)
    );
    assert_eq!(stderr(&bad_topic).lines().count(), 1);
    assert_eq!(reserved.status.code(), Some(1));
    assert!(
        stderr(&reserved).starts_with("herald: event type \"reset\" is reserved"),
        "{}",
        stderr(&reserved)
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn publish_to_an_unreachable_server_exits_3_with_one_clear_line() {
    let addr = closed_port().await;

    let out = run(
        &["publish", "--url", &format!("http://{addr}"), "alerts", "x"],
        None,
    )
    .await;

    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "herald: cannot connect to http://{addr}/v1/events: "
        )),
        "{err}"
    );
    assert!(err.contains("HERALD_URL"), "{err}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["publish"][..],
        &["--listen", "127.0.0.1:1", "tail"],
        &["tail", "--url", "ftp://example.com"],
        &["tail", "--no-such-flag"],
    ] {
        let out = run(args, None).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{args:?}");
    }
}
