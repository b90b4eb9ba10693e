//! `/healthz`, `/readyz`, `/metrics`, start-up and stop.

use std::process::Stdio;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;

    let res = app.get("/healthz").await;

    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok\n");
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_ready_with_database_and_listener() {
    let app = spawn_app().await;

    // The listener attaches in the background right after start.
    wait_for("the listener to attach", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    let body: Value = app.get("/readyz").await.json().await.unwrap();

    assert_eq!(
        body,
        json!({"ready": true, "database": true, "listener": true, "draining": false})
    );
    app.stop().await;
}

#[tokio::test]
async fn readyz_fails_while_database_is_unreachable_and_recovers() {
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    wait_for("ready", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;

    proxy.cut();
    wait_for("not ready", || async {
        app.get("/readyz").await.status() == 503
    })
    .await;
    let res = app.get("/readyz").await;
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], false);
    assert_eq!(body["ready"], false);

    proxy.restore();
    wait_for("ready again", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_streams_publishes_and_deliveries() {
    let app = spawn_app().await;
    let topic = unique_topic("metrics");
    let before = app.metrics().await;
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    wait_for("the stream to be counted", || async {
        app.metric("herald_streams_opened_total").await
            > metric_sum(&before, "herald_streams_opened_total")
    })
    .await;

    app.publish_ok(&topic, json!(1)).await;
    sse.next_event().await.unwrap();

    let after = app.metrics().await;
    for name in [
        "herald_events_published_total",
        "herald_events_delivered_total",
    ] {
        assert!(
            metric_sum(&after, name) > metric_sum(&before, name),
            "{name} did not grow"
        );
    }
    assert!(metric_sum(&after, "herald_streams_active") >= 1.0);
    assert!(after.contains("herald_publish_duration_seconds_bucket{le=\"0.005\"}"));
    assert!(after.contains("# TYPE herald_publish_duration_seconds histogram"));
    app.stop().await;
}

/// Prometheus' own checker: every metric has HELP and TYPE and the text
/// parses. Needs `promtool` (Debian package `prometheus`; `.ci/run`
/// installs it).
#[tokio::test]
async fn metrics_pass_promtool_check() {
    let app = spawn_app().await;
    let topic = unique_topic("promtool");
    let mut sse = app
        .stream(&format!("topic={topic}&last_event_id=0"), None)
        .await;
    app.publish_ok(&topic, json!({"x": 1})).await;
    sse.next_event().await.unwrap();
    let text = app.metrics().await;

    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed: apt-get install prometheus (see README)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();

    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

#[tokio::test]
async fn stop_ends_open_streams_and_returns() {
    let app = spawn_app().await;
    let mut sse = app.stream("", None).await;
    assert!(sse.next_frame().await.unwrap().retry.is_some());

    // `stop` fails the test if the server does not finish in time.
    let stopping = tokio::spawn(app.stop());
    let rest = sse.until_end().await;

    assert!(rest.iter().all(|f| !f.is_event()));
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

#[tokio::test]
async fn start_creates_missing_database_and_applies_migrations() {
    let admin = admin_url();
    let base = admin.rsplit_once('/').unwrap().0;
    let name = format!("herald_test_missing_{}", std::process::id());
    // Dropped (and the database with it) when the test ends.
    let db = Arc::new(TestDb {
        url: format!("{base}/{name}"),
        name,
    });

    let app = spawn_on(db.clone(), test_config(&db.url)).await;
    let id = app.publish_ok(&unique_topic("created"), json!(null)).await;

    assert_eq!(id, 1);
    app.stop().await;
}

#[tokio::test]
async fn binary_without_postgres_exits_nonzero_with_one_clear_line() {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/herald"])
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .expect("herald gives up in time")
    .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("herald: cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(lines[0].contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn binary_refuses_a_bad_duration_flag() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--heartbeat", "soon"])
        .output()
        .await
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat"));
}

/// Every made-up method (any token is a valid one) once added a series to
/// `herald_http_requests_total`; the methods herald does not answer now
/// share one label value, so the series stay few whatever clients send.
#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let app = spawn_app().await;

    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }

    let metrics = app.metrics().await;
    let methods: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("herald_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    let known = [
        "GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "CONNECT", "TRACE", "other",
    ];
    assert!(methods.contains("other"), "{methods:?}");
    assert!(
        methods.iter().all(|m| known.contains(m)),
        "unbounded method labels: {methods:?}"
    );
    app.stop().await;
}

/// `herald_http_requests_total` names the route a request reached (an
/// alert divides by `route="/v1/events"`), the path itself, and
/// `unmatched` for a path no route has. The labels are taken from the
/// path before routing (`http::edge`), so this checks they agree with the
/// router: a method a route does not take is still that route's (405),
/// and a path only one character away is not (404). PATCH is sent by no
/// other test, so the counts, shared by every app in this process, are
/// exact.
#[tokio::test]
async fn requests_are_counted_by_the_route_they_reach() {
    let app = spawn_app().await;
    let series = |route: &str, status: u16| {
        format!(
            "herald_http_requests_total{{method=\"PATCH\",route=\"{route}\",status=\"{status}\"}}"
        )
    };
    let before = app.metrics().await;
    let count = |text: &str, route: &str, status: u16| metric_sum(text, &series(route, status));

    for _ in 0..3 {
        let res = app.client.patch(app.url("/readyz")).send().await.unwrap();
        assert_eq!(res.status(), 405);
    }
    for _ in 0..2 {
        let res = app.client.patch(app.url("/readyz/")).send().await.unwrap();
        assert_eq!(res.status(), 404);
    }
    let res = app
        .client
        .patch(app.url("/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);

    let after = app.metrics().await;
    let grew =
        |route: &str, status: u16| count(&after, route, status) - count(&before, route, status);
    assert_eq!(grew("/readyz", 405), 3.0);
    assert_eq!(grew("unmatched", 404), 2.0);
    assert_eq!(grew("/v1/events", 405), 1.0);
    app.stop().await;
}
