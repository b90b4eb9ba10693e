//! The two stream writers answer alike (CORS, refusals, a repeated
//! `Last-Event-ID`), the accept loop answers what hyper would refuse with
//! problem+json, and a client that stops reading is cut whichever way its
//! stream is written.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const ALLOWED: &str = "http://app.example.test:3000";

/// The CORS headers of a stream answer, as (name, value) pairs.
fn cors_headers(res: &reqwest::Response) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = res
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-") || name.as_str() == "vary")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    found.sort();
    found
}

/// For a listed origin, another origin and none, the stream's CORS headers
/// are the same whichever writer answers. Once the socket writer sent no
/// `Vary` and no credentials header for an unlisted origin where the axum
/// writer sent both.
#[tokio::test]
async fn both_writers_send_the_same_cors_headers() {
    let app = spawn_app_with(|c| c.cors_origins = vec![ALLOWED.to_owned()]).await;
    let topic = unique_topic("cors");

    for origin in [Some(ALLOWED), Some("http://evil.example.test"), None] {
        let mut seen = Vec::new();
        for writer in [Writer::Http1, Writer::Http2] {
            let mut req = writer
                .client()
                .get(app.url(&format!("/v1/stream?topic={topic}")));
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            seen.push(cors_headers(&res));
        }
        assert_eq!(seen[0], seen[1], "origin {origin:?}");
        let allow = seen[0]
            .iter()
            .find(|(n, _)| n == "access-control-allow-origin");
        match origin {
            Some(ALLOWED) => assert_eq!(allow.map(|(_, v)| v.as_str()), Some(ALLOWED)),
            _ => assert!(allow.is_none(), "{seen:?}"),
        }
        assert!(
            seen[0].contains(&("vary".into(), "origin".into())),
            "{seen:?}"
        );
    }
    app.stop().await;
}

/// A refused stream request carries its CORS headers on both writers, so a
/// page on a listed origin can read why it was refused.
#[tokio::test]
async fn refused_stream_requests_carry_cors_headers_on_both_writers() {
    let app = spawn_app_with(|c| c.cors_origins = vec![ALLOWED.to_owned()]).await;

    for writer in [Writer::Http1, Writer::Http2] {
        let res = writer
            .client()
            .get(app.url("/v1/stream?topic=a::b"))
            .header("origin", ALLOWED)
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["access-control-allow-origin"], ALLOWED);
        assert_problem(res, 400, "invalid_filter", "a::b").await;
    }
    app.stop().await;
}

/// Two `Last-Event-ID` headers were read as the last by one writer and the
/// first by the other (`abc` and `5`: 200 on one, 400 on the other). Now
/// both refuse the request.
#[tokio::test]
async fn a_repeated_last_event_id_is_refused_by_both_writers() {
    let app = spawn_app().await;

    for writer in [Writer::Http1, Writer::Http2] {
        for (first, second) in [("abc", "5"), ("5", "abc"), ("5", "5")] {
            let res = writer
                .client()
                .get(app.url("/v1/stream"))
                .header("last-event-id", first)
                .header("last-event-id", second)
                .send()
                .await
                .unwrap();
            assert_problem(res, 400, "bad_request", "Last-Event-ID is given 2 times").await;
        }
    }
    app.stop().await;
}

/// What the accept loop answers itself: the head of a request sent over a
/// raw socket, read to the end.
async fn raw_answer(app: &TestApp, request: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Requests hyper would refuse before any router saw them got a bare 400
/// or 431 with no body; the accept loop now answers them with problem+json.
#[tokio::test]
async fn heads_hyper_would_refuse_get_problem_json() {
    let app = spawn_app().await;
    let many_headers = format!(
        "GET /v1/stream HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..120)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let long_head = format!(
        "GET /v1/stream HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: [(&[u8], &str, &str); 5] = [
        (
            b"GET /v1/str\0eam HTTP/1.1\r\nhost: x\r\n\r\n",
            "400 ",
            "malformed_request",
        ),
        (
            b"GET /v1/events HTTP/1.1\r\nho st: x\r\n\r\n",
            "400 ",
            "malformed_request",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "400 ",
            "malformed_request",
        ),
        (many_headers.as_bytes(), "431 ", "head_too_large"),
        (long_head.as_bytes(), "431 ", "head_too_large"),
    ];

    for (request, status, code) in cases {
        let answer = raw_answer(&app, request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{answer}");
    }
    // Still serving.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

/// A stream through hyper (HTTP/2 here) whose client stops reading while
/// events flow is cut once the hub finds it behind. Before, hyper kept it
/// open after the hub had counted it as lagged: its memory and connection
/// stayed.
#[tokio::test]
async fn a_stream_through_hyper_that_stops_reading_is_cut() {
    let app = spawn_app_with(|c| c.subscriber_queue = 16).await;
    let topic = unique_topic("stuck-h2");
    let client = Writer::Http2.client();
    let res = client
        .get(app.url(&format!("/v1/stream?topic={topic}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    sse.next_frame().await.unwrap();

    // Far more than HTTP/2's flow-control windows hold (a few MiB), while
    // the client reads nothing.
    let data = "x".repeat(60 * 1024);
    for _ in 0..20 {
        let batch = (0..10)
            .map(|_| json!({"topic": topic, "data": data}))
            .collect();
        app.publish_batch_ok(batch).await;
    }

    // Reading now, the stream must end before all 200 events.
    let mut events = 0;
    loop {
        match sse.next_frame_within(WAIT).await {
            Ok(Some(frame)) if frame.is_event() => events += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(()) => panic!("the stream was not cut ({events} events read)"),
        }
        assert!(
            events < 200,
            "every event arrived: the stream was never cut"
        );
    }
    assert!(events < 200);
    app.stop().await;
}

/// `--write-timeout` is short here, so that the tests below see it.
const WRITE_TIMEOUT: &str = "500ms";

/// A client that resumes from the start of a long log and reads nothing is
/// cut after `--write-timeout`, though a replay is not in the hub (so no
/// queue of its fills). Before, 50 such clients stayed open, holding about
/// 1.7 MB each. Runs the binary, so its metrics are its own.
#[tokio::test]
async fn a_replaying_stream_that_stops_reading_is_cut() {
    let db = TestDb::create().await;
    let herald = crate::faults::HeraldProcess::start(
        &db.url,
        &["--ring-size", "1", "--write-timeout", WRITE_TIMEOUT],
    )
    .await;
    let topic = unique_topic("stuck-replay");
    let data = "y".repeat(8 * 1024);
    for _ in 0..10 {
        let batch: Vec<_> = (0..100)
            .map(|_| json!({"topic": topic, "data": data}))
            .collect();
        let res = herald
            .api
            .client
            .post(herald.api.url("/v1/events"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    // 8 MiB to replay; the client never reads.
    let mut tcp = tokio::net::TcpStream::connect(herald.api.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request =
        format!("GET /v1/stream?topic={topic}&last_event_id=0 HTTP/1.1\r\nhost: herald\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();

    let active = || async {
        let text = herald.api.metrics().await;
        (
            metric_sum(&text, "herald_streams_opened_total"),
            metric_sum(&text, "herald_streams_active"),
        )
    };
    wait_for("the stream to open", || async { active().await.0 == 1.0 }).await;
    wait_for("the non-reading stream to be cut", || async {
        active().await.1 == 0.0
    })
    .await;
    drop(tcp);
}
