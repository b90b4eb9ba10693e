//! Real clients against a real herald (issue #5): Debian's Chromium driven by
//! playwright-core, the Node `eventsource` package, Python's httpx-sse, the
//! README's curl lines exactly as written (`readme`), the files in
//! `examples/`, and the third-party SSE clients of the README's "Clients",
//! each running its README snippet (`third_party`); and herald.js, the
//! browser client, as a package and as herald serves it (`herald_js`).
//!
//! Each test arranges herald (in process, or the binary when it must come
//! back on the same port), runs a script from `tests/browser/` (Node) or
//! `tests/python/` as a child process ([`run`]), and fails with the
//! script's output unless it exits 0. Needs what `.ci/run` installs:
//! `chromium`, `npm ci` in `tests/browser`, and `pip install -r
//! tests/python/requirements.txt`. Screenshots of the console land in
//! `tests/artifacts/`.

mod console_tokens;
mod herald_js;
mod herald_js_browser;
mod readme;
mod readme_herald_js;
mod readme_tokens;
mod run;
mod third_party;
mod tokens;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::*;
use readme::frame_ids;
use run::{OtherOrigin, Running, node, python, run_ok};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Chromium and the console
// ---------------------------------------------------------------------------

#[tokio::test]
async fn console_page_shows_published_events_live() {
    let app = spawn_app().await;

    run_ok(node("console.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn console_page_switches_topics_ten_times_on_one_stream() {
    let app = spawn_app().await;

    run_ok(node("console_switch.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn console_page_starts_from_the_window_then_goes_live_showing_each_event_once() {
    let app = spawn_app().await;

    run_ok(node("console_since.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn console_page_reconnects_after_restart_and_shows_missed_events_once() {
    let db = TestDb::create().await;

    // The script runs herald itself: it stops it and starts it again on the
    // same port, publishing meanwhile through a second instance.
    run_ok(
        node("console_restart.mjs")
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("DATABASE_URL", &db.url),
    )
    .await;
}

#[tokio::test]
async fn console_page_shows_why_herald_refused_a_subscription() {
    let app = spawn_app().await;

    run_ok(node("console_refused.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn console_page_clears_could_not_reach_once_herald_is_back() {
    let db = TestDb::create().await;

    // The script runs herald itself: it stops it and starts it again on the
    // same port.
    run_ok(
        node("console_outage.mjs")
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("DATABASE_URL", &db.url),
    )
    .await;
}

#[tokio::test]
async fn console_tabs_of_one_browser_share_one_stream_and_each_shows_its_events() {
    let db = TestDb::create().await;

    // The script runs herald itself: `herald_streams_active` counts every
    // stream of a process, and this binary runs other tests' streams.
    run_ok(
        node("console_tabs.mjs")
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("DATABASE_URL", &db.url),
    )
    .await;
}

#[tokio::test]
async fn page_on_listed_origin_subscribes_and_publishes_with_credentials() {
    let site = OtherOrigin::start().await;
    // The same page server under another name is another origin, not listed.
    let allowed = format!("http://127.0.0.1:{}", site.port());
    let unlisted = format!("http://localhost:{}", site.port());
    let app = spawn_app_with(|c| c.cors_origins = vec![allowed.clone()]).await;

    run_ok(
        node("cors.mjs")
            .env("HERALD_URL", &app.base)
            .env("ALLOWED_PAGE", format!("{allowed}/"))
            .env("OTHER_PAGE", format!("{unlisted}/")),
    )
    .await;

    app.stop().await;
}

#[tokio::test]
async fn browser_eventsource_handles_reset_then_receives_live_events() {
    let app = spawn_app().await;

    run_ok(node("reset.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn console_page_shows_reset_when_server_returns_with_another_log() {
    let (first, second) = (TestDb::create().await, TestDb::create().await);

    run_ok(
        node("console_reset.mjs")
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("DATABASE_URL", &first.url)
            .env("OTHER_DATABASE_URL", &second.url),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Other clients
// ---------------------------------------------------------------------------

#[tokio::test]
async fn node_eventsource_package_resumes_with_last_event_id_exactly_once() {
    let app = spawn_app().await;

    run_ok(node("eventsource_node.mjs").env("HERALD_URL", &app.base)).await;

    app.stop().await;
}

#[tokio::test]
async fn python_httpx_sse_resumes_with_last_event_id_exactly_once() {
    let app = spawn_app().await;

    run_ok(python("tests/python/httpx_sse_client.py").arg(&app.base)).await;

    app.stop().await;
}

// ---------------------------------------------------------------------------
// examples/
// ---------------------------------------------------------------------------

#[tokio::test]
async fn example_browser_page_receives_events_from_another_origin() {
    let site = OtherOrigin::start().await;
    let origin = format!("http://127.0.0.1:{}", site.port());
    let app = spawn_app_with(|c| c.cors_origins = vec![origin.clone()]).await;

    run_ok(
        node("example_page.mjs")
            .env("HERALD_URL", &app.base)
            .env("PAGE_URL", format!("{origin}/browser.html")),
    )
    .await;

    app.stop().await;
}

#[tokio::test]
async fn example_browser_page_opened_as_a_file_says_how_to_serve_it() {
    let app = spawn_app().await;

    run_ok(
        node("example_file.mjs")
            .env("HERALD_URL", &app.base)
            .env("PAGE_FILE", repo().join("examples/browser.html")),
    )
    .await;

    app.stop().await;
}

#[tokio::test]
async fn example_curl_session_runs_start_to_finish() {
    let app = spawn_app().await;

    let out = run_ok(
        Command::new("sh")
            .arg("examples/curl.sh")
            .current_dir(repo())
            .env("HERALD_URL", &app.base),
    )
    .await;

    let section = |title: &str| -> Vec<&str> {
        let start = out.find(&format!("== {title}")).expect(title);
        out[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("== "))
            .collect()
    };
    let keyed = section("publish with an idempotency key");
    assert_eq!(keyed.len(), 2, "{out}");
    assert_eq!(
        keyed[0], keyed[1],
        "the repeated publish returns the first event"
    );
    let history: Value = serde_json::from_str(section("history as JSON")[0]).unwrap();
    let types: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["deploy.started", "deploy.finished", "deploy.verified"],
        "{out}"
    );
    let resumed = section("resume after");
    assert_eq!(
        frame_ids(&resumed.join("\n")),
        [history[2]["id"].as_str().unwrap()]
    );
    app.stop().await;
}

#[tokio::test]
async fn example_publisher_retries_503_under_its_key_and_stores_once() {
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let db = Arc::new(TestDb::create().await);
    let app = spawn_on(db.clone(), fault_config(&db.url_via(proxy.addr))).await;
    let topic = unique_topic("publisher");
    let publisher = |url: &str| {
        let mut c = python("examples/publisher.py");
        c.args([&topic, "order.paid", r#"{"order":42,"amount":"12.50"}"#])
            .args(["--key", &format!("{topic}/order-42/paid"), "--url", url]);
        c
    };

    // PostgreSQL goes away: herald answers 503 with Retry-After.
    proxy.cut();
    let mut first = Running::spawn(&mut publisher(&app.base));
    first
        .wait_stderr("the publisher to meet a 503", |err| {
            err.contains("attempt 1: 503 database_unavailable; retrying in 2s")
        })
        .await;
    proxy.restore();
    let (status, stored, log) = first.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "publisher failed: {log}");
    assert!(log.ends_with("stored\n"), "{log}");
    let stored: Value = serde_json::from_str(&stored).expect("the envelope");
    assert_eq!(stored["data"], json!({"order": 42, "amount": "12.50"}));

    // Run again (a publisher that restarted, say): the key dedupes.
    let (status, again, log) = Running::spawn(&mut publisher(&app.base)).finish(WAIT).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("already stored"), "{log}");
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), stored);
    assert_eq!(stored_rows(&db).await, 1, "one event in the log");
    app.stop().await;
}
