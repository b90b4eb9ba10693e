//! What an operator sees (issue #11): every metric from the start, at zero
//! where it counts, with bounded labels; streams ended by reason; plain
//! logs off a terminal, one line per refused publish, no error for a
//! planned drain; and who is who in `pg_stat_activity`. Each test runs
//! the binary, so the metrics and logs it reads are that process's own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::faults::HeraldProcess;
use crate::helpers::*;

/// Every sample's labels, by metric name.
fn samples(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        found
            .entry(name.to_owned())
            .or_default()
            .push(labels.trim_end_matches('}').to_owned());
    }
    found
}

/// `herald_retention_enabled` says whether the instance prunes, so that the
/// retention-not-running alert leaves alone a deployment that keeps every
/// event (it fired for one before: nothing there ever completes a round).
#[tokio::test]
async fn retention_enabled_says_whether_the_instance_prunes() {
    for (args, expected) in [
        (&["--retention", "0"][..], 0.0),
        (&["--retention", "0", "--retention-count", "1000"][..], 1.0),
        (&[][..], 1.0),
    ] {
        let db = TestDb::create().await;
        let herald = HeraldProcess::start(&db.url, args).await;
        herald.api.wait_ready().await;
        wait_for("the retention task to say what it does", || async {
            // Set when the task starts, after the instance is ready: wait
            // for the first round's floor, set in the same task after it.
            metric_sum(&herald.api.metrics().await, "herald_retention_oldest_id") > 0.0
        })
        .await;
        // Present from the start (`every_metric_exists_from_the_start…`).
        let text = herald.api.metrics().await;
        assert_eq!(
            metric_sum(&text, "herald_retention_enabled"),
            expected,
            "{args:?}"
        );
    }
}

/// The metrics the README's table lists, at zero before anything happens
/// (counters and the series whose labels are known in advance).
#[tokio::test]
async fn every_metric_exists_from_the_start_with_its_labels_at_zero() {
    let db = TestDb::create().await;
    let herald = HeraldProcess::start(&db.url, &[]).await;
    herald.api.wait_ready().await;

    let text = herald.api.metrics().await;
    let found = samples(&text);
    for name in [
        "herald_streams_active",
        "herald_streams_opened_total",
        "herald_streams_lagged_total",
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_listener_reconnects_total",
        "herald_listener_attached",
        "herald_ring_frames",
        "herald_ring_oldest_id",
        "herald_db_pool_max_connections",
        "herald_db_pool_waiting",
        "herald_ready",
        "herald_retention_oldest_id",
        "herald_retention_last_prune_timestamp_seconds",
        "herald_retention_pruned_events_total",
        "herald_retention_enabled",
        "herald_connections_refused_total",
        "herald_connections_max",
        "herald_append_committer",
    ] {
        assert!(found.contains_key(name), "{name} missing:\n{text}");
    }
    let labels = |name: &str| -> BTreeSet<String> {
        found
            .get(name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    for (name, values) in [
        (
            "herald_streams_ended_total",
            &[
                "client_gone",
                "lagged",
                "stalled",
                "drain",
                "token_expired",
                "replaced",
                "revoked",
                "superseded",
                "error",
            ][..],
        ),
        ("herald_resumes_total", &["ring", "database"]),
        ("herald_listener_events_total", &["notification", "log"]),
        (
            "herald_stream_resets_total",
            &["cursor_too_old", "cursor_ahead"],
        ),
        ("herald_limited_total", &["publish_rate"]),
        (
            "herald_append_forwarded_total",
            &["answered", "not_sent", "unknown"],
        ),
        (
            "herald_publish_refused_total",
            &[
                "invalid",
                "unauthorized",
                "forbidden",
                "limited",
                "unavailable",
            ],
        ),
    ] {
        let expected: BTreeSet<String> = values
            .iter()
            .map(|v| {
                let key = if name.contains("resumes") || name.contains("listener") {
                    "source"
                } else if name.contains("forwarded") {
                    "outcome"
                } else {
                    "reason"
                };
                format!("{key}=\"{v}\"")
            })
            .collect();
        assert_eq!(labels(name), expected, "{name}");
        assert_eq!(metric_sum(&text, name), 0.0, "{name} starts at zero");
    }
    assert_eq!(
        labels("herald_db_pool_connections"),
        ["state=\"idle\"", "state=\"in_use\""]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    );
    assert_eq!(
        metric_sum(&text, "herald_ready"),
        1.0,
        "ready, as /readyz says"
    );
    let build = &found["herald_build_info"][0];
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("commit=\""), "{build}");
}

/// Streams end for a reason the metrics tell apart, and the stream's
/// lifetime, its replay and its delivery lag are measured.
#[tokio::test]
async fn streams_are_counted_by_why_they_ended() {
    let db = TestDb::create().await;
    let secret_file =
        std::env::temp_dir().join(format!("herald-obs-secret-{}", std::process::id()));
    std::fs::write(&secret_file, SECRET).unwrap();
    let herald = HeraldProcess::start(
        &db.url,
        &[
            "--jwt-secret-file",
            secret_file.to_str().unwrap(),
            "--token-expiry-warning",
            "100ms",
            "--jwt-leeway",
            "0s",
        ],
    )
    .await;
    let api = &herald.api;
    let backend = Writer::Http1.client_with_token(&backend_token());
    let res = backend
        .post(api.url("/v1/events"))
        .json(&json!([{"topic": "a"}, {"topic": "a"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let herald = &herald;
    let ended = |reason: &'static str| async move {
        let text = herald.api.metrics().await;
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "herald_streams_ended_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };

    // A client that goes away.
    let res = backend
        .get(api.url("/v1/stream?topic=a&last_event_id=0"))
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(res);
    sse.events(2).await;
    drop(sse);
    wait_for("a client_gone end", || async {
        ended("client_gone").await == 1.0
    })
    .await;

    // A token that expires.
    let short = token("alice", &["*"], &[], Duration::from_secs(2));
    let res = Writer::Http1
        .client_with_token(&short)
        .get(api.url("/v1/stream?topic=a"))
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(res);
    sse.until_end().await;
    wait_for("a token_expired end", || async {
        ended("token_expired").await == 1.0
    })
    .await;

    let text = herald.api.metrics().await;
    assert!(
        metric_sum(&text, "herald_stream_duration_seconds_count") >= 2.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "herald_replay_events_count") >= 1.0,
        "{text}"
    );
    assert_eq!(metric_sum(&text, "herald_streams_active"), 0.0);
    let _ = std::fs::remove_file(&secret_file);
}

/// Off a terminal the default (pretty) log has no colour codes; `json` is
/// one object per line; a refused publish is one line, a `/readyz` 503
/// during a planned drain is no error; and with `debug` each stream's end
/// is one line with its reason, duration and events.
#[tokio::test]
async fn logs_are_plain_off_a_terminal_and_say_each_thing_once() {
    let db = TestDb::create().await;
    let mut pretty = HeraldProcess::start_with_env(
        &db.url,
        &["--log-format", "pretty"],
        &[("RUST_LOG", "info,herald=debug")],
    )
    .await;
    let api = &pretty.api;
    let plain = reqwest::Client::new();
    let refused = plain
        .post(api.url("/v1/events"))
        .header("content-type", "application/json")
        .body(r#"{"topic":"a b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    // A refused stream is one line too, whichever writer answers it.
    let refused_stream = plain
        .get(api.url("/v1/stream?topic=a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused_stream.status(), 400);
    let res = plain
        .get(api.url("/v1/stream?topic=a"))
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(res);
    sse.next_frame().await.unwrap();
    drop(sse);
    wait_for("the stream's end line", || async {
        pretty.logs().contains("stream ended")
    })
    .await;
    // A planned stop, with /readyz asked while draining.
    let held = plain
        .get(api.url("/v1/stream?topic=b"))
        .send()
        .await
        .unwrap();
    pretty.sigterm();
    wait_for("/readyz to fail while draining", || async {
        match plain.get(api.url("/readyz")).send().await {
            Ok(res) => res.status() == 503,
            Err(_) => true,
        }
    })
    .await;
    drop(held);
    assert!(pretty.wait_exit(WAIT).await.success());

    let logs = pretty.logs();
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes off a terminal:\n{logs}"
    );
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "one line per refused request:\n{logs}");
    assert!(refusals[0].contains("invalid_topic"), "{}", refusals[0]);
    assert!(refusals[0].contains("/v1/events"), "{}", refusals[0]);
    assert!(refusals[1].contains("invalid_filter"), "{}", refusals[1]);
    assert!(refusals[1].contains("/v1/stream"), "{}", refusals[1]);
    assert!(
        !logs.contains("ERROR"),
        "no error during a planned drain:\n{logs}"
    );
    let end = logs.lines().find(|l| l.contains("stream ended")).unwrap();
    for field in ["reason=\"client_gone\"", "duration_ms=", "events="] {
        assert!(end.contains(field), "{end}");
    }

    // JSON: every line one object.
    let json_herald = HeraldProcess::start(&db.url, &[]).await;
    let res = plain
        .post(json_herald.api.url("/v1/events"))
        .header("content-type", "application/json")
        .body(r#"{"topic":"a b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    wait_for("the refusal's line", || async {
        json_herald.logs().contains("request refused")
    })
    .await;
    for line in json_herald.logs().lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.is_object(), "{line}");
    }
}

/// herald's connections name themselves in `pg_stat_activity` (the
/// retention pruner's own connection adds ` pruner`).
#[tokio::test]
async fn postgres_sees_herald_by_name() {
    let db = TestDb::create().await;
    let herald = HeraldProcess::start(&db.url, &["--instance-name", "herald-7"]).await;
    herald.api.wait_ready().await;

    let mut conn = db.connect().await;
    let names: Vec<String> = sqlx::query_scalar(
        "select distinct application_name from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(names.iter().any(|n| n == "herald/herald-7"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n == "herald/herald-7" || n == "herald/herald-7 pruner"),
        "{names:?}"
    );
}
