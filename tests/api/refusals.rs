//! Every refusal of a publish is problem+json with the right status, and
//! stores nothing (docs/ARCHITECTURE.md, "Errors").

use serde_json::{Value, json};

use crate::helpers::*;

// ----- refusals ------------------------------------------------------------

#[tokio::test]
async fn invalid_topics_are_refused_with_400() {
    let app = spawn_app().await;
    let long = "a".repeat(257);

    for topic in ["", "a::b", "a b", ":a", "a/", "x*", "caf\u{e9}", &long] {
        let res = app.publish(&json!({"topic": topic, "data": 1})).await;
        assert_problem(res, 400, "invalid_topic", "topic").await;
    }
    let no_topic = app.publish(&json!({"data": 1})).await;
    assert_problem(no_topic, 400, "bad_request", "topic").await;

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn topic_of_256_characters_with_both_separators_is_accepted() {
    let app = spawn_app().await;
    let topic = format!("tenant/acme:{}", "a".repeat(256 - 12));
    assert_eq!(topic.len(), 256);

    let id = app.publish_ok(&topic, json!(null)).await;

    assert!(id > 0);
    app.stop().await;
}

#[tokio::test]
async fn invalid_types_are_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("bad-type");
    let long = "t".repeat(65);

    for ty in ["", "a b", "a\nb", "a:b", "caf\u{e9}", &long] {
        let res = app.publish(&json!({"topic": topic, "type": ty})).await;
        assert_problem(res, 400, "invalid_type", "event type").await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn reserved_types_are_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("reserved");

    for ty in ["reset", "error", "open"] {
        let res = app.publish(&json!({"topic": topic, "type": ty})).await;
        assert_problem(res, 400, "reserved_type", ty).await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_field_is_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("typo");

    let res = app.publish(&json!({"tpoic": topic, "data": 1})).await;

    assert_problem(res, 400, "bad_request", "tpoic").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_refused_with_400() {
    let app = spawn_app().await;
    let topic = unique_topic("malformed");

    for body in [
        format!(r#"{{"topic":"{topic}""#),
        format!(r#"{{"topic":"{topic}",}}"#),
        format!(r#"{{"topic":"{topic}"}} trailing"#),
        format!(r#"[{{"topic":"{topic}"}}"#),
        format!(r#"{{"topic":"{topic}","topic":"{topic}"}}"#),
        format!(r#"{{"topic":"{topic}","data":'x'}}"#),
    ] {
        let res = post_text(&app, &body).await;
        assert_problem(res, 400, "bad_request", "JSON").await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn body_neither_object_nor_array_is_refused_with_400() {
    let app = spawn_app().await;

    for body in ["42", "\"topic\"", "null", "true", "", "   "] {
        let res = post_text(&app, body).await;
        assert_problem(res, 400, "bad_request", "object or an array").await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn empty_batch_is_refused_with_400() {
    let app = spawn_app().await;

    let res = post_text(&app, " [ ] ").await;

    assert_problem(res, 400, "bad_request", "empty").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn data_larger_than_max_data_bytes_is_refused_with_413() {
    let app = spawn_app_with(|c| c.max_data_bytes = 64).await;
    let topic = unique_topic("big-data");
    // Compact JSON of `"xxx…"` is the characters plus two quotes.
    let too_big = "x".repeat(63);

    let single = app.publish(&json!({"topic": topic, "data": too_big})).await;
    let batch = app
        .publish(&json!([{"topic": topic}, {"topic": topic, "data": too_big}]))
        .await;

    assert_problem(single, 413, "too_large", "64").await;
    assert_problem(batch, 413, "too_large", "event 1").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn data_of_exactly_max_data_bytes_is_accepted() {
    let app = spawn_app_with(|c| c.max_data_bytes = 64).await;
    let topic = unique_topic("edge-data");
    let fits = "x".repeat(62);
    // White space outside strings does not count.
    let body = format!("{{\"topic\":\"{topic}\",\"data\":  \"{fits}\"   }}");

    let res = post_text(&app, &body).await;

    assert_eq!(res.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn batch_larger_than_max_batch_is_refused_with_413() {
    let app = spawn_app_with(|c| c.max_batch = 3).await;
    let topic = unique_topic("big-batch");
    let events = |n: usize| Value::Array(vec![json!({"topic": topic}); n]);

    let refused = app.publish(&events(4)).await;
    assert_problem(refused, 413, "too_large", "at most 3").await;
    assert_nothing_stored(&app).await;

    let accepted = app.publish(&events(3)).await;
    assert_eq!(accepted.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn body_larger_than_max_body_bytes_is_refused_with_413() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let topic = unique_topic("big-body");
    let body = json!({"topic": topic, "data": "x".repeat(2000)}).to_string();

    let res = post_text(&app, &body).await;

    assert_problem(res, 413, "too_large", "1024").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_refused_with_415() {
    let app = spawn_app().await;
    let body = json!({"topic": unique_topic("ctype")}).to_string();

    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("text/json"),
    ] {
        let res = app.post_raw("/v1/events", ct, body.clone()).await;
        assert_problem(
            res,
            415,
            "unsupported_media_type",
            "-H 'Content-Type: application/json'",
        )
        .await;
    }

    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn json_content_types_with_parameters_or_suffix_are_accepted() {
    let app = spawn_app().await;
    let topic = unique_topic("ctype-ok");
    let body = json!({"topic": topic}).to_string();

    for ct in [
        "application/cloudevents+json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let res = app.post_raw("/v1/events", Some(ct), body.clone()).await;
        assert_eq!(res.status(), 201, "{ct}");
    }

    assert_eq!(stored_rows(&app.db).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn unknown_route_answers_404_problem() {
    let app = spawn_app().await;

    let get = app.get("/v1/nothing-here").await;
    let post = app
        .post_raw("/v1/event", Some("application/json"), r#"{"topic":"a"}"#)
        .await;

    assert_problem(get, 404, "not_found", "/v1/nothing-here").await;
    assert_problem(post, 404, "not_found", "/v1/event").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_method_answers_405_problem() {
    let app = spawn_app().await;

    let delete = app
        .client
        .delete(app.url("/v1/events"))
        .send()
        .await
        .unwrap();
    let put = app
        .client
        .put(app.url("/v1/events"))
        .json(&json!({"topic": "a"}))
        .send()
        .await
        .unwrap();

    assert_problem(delete, 405, "method_not_allowed", "DELETE").await;
    assert_problem(put, 405, "method_not_allowed", "PUT").await;
    assert_nothing_stored(&app).await;
    app.stop().await;
}

/// RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field
/// in a 405 response containing a list of the target resource's currently
/// supported methods."
#[tokio::test]
async fn wrong_method_answer_lists_allowed_methods() {
    let app = spawn_app().await;

    let res = app
        .client
        .delete(app.url("/v1/events"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 405);
    let allow = res
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow:?}"
    );
    app.stop().await;
}

/// `data` must be I-JSON (RFC 7493) nested at most 64 deep, so that every
/// common client reads back what was stored; each of these was stored once.
#[tokio::test]
async fn data_that_is_not_i_json_or_nests_too_deep_is_refused_with_400() {
    let app = spawn_app().await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases = [
        ("\"\\ud800\"".to_owned(), "surrogate"),
        ("{\"a\":1,\"a\":2}".to_owned(), "repeats a member name"),
        ("1e400".to_owned(), "IEEE 754"),
        ("\"\\uffff\"".to_owned(), "noncharacter"),
        (deep(65), "nests deeper than 64"),
        (deep(5_000), "nests deeper than 64"),
        (deep(20_000), "nests deeper than 64"),
    ];

    for (data, why) in &cases {
        let one = format!("{{\"topic\":\"x\",\"data\":{data}}}");
        assert_problem(post_text(&app, &one).await, 400, "invalid_data", why).await;
        let batch = format!("[{{\"topic\":\"x\"}},{{\"topic\":\"x\",\"data\":{data}}}]");
        let body = assert_problem(post_text(&app, &batch).await, 400, "invalid_data", why).await;
        assert!(
            body["detail"].as_str().unwrap().starts_with("event 1:"),
            "{body}"
        );
    }

    assert_nothing_stored(&app).await;
    // The deepest accepted nesting is stored and read back as sent.
    let ok = format!("{{\"topic\":\"x\",\"data\":{}}}", deep(64));
    assert_eq!(post_text(&app, &ok).await.status(), 201);
    app.stop().await;
}

/// A publish body that trickles in is cut at `--body-timeout` with a 408
/// problem and the connection closed; nothing is stored. Before, 200 such
/// connections stayed open past 34 s and one was stored after 45 s.
#[tokio::test]
async fn body_that_trickles_in_is_refused_with_408_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.body_timeout = std::time::Duration::from_millis(500)).await;
    let body = br#"{"topic":"slow-body","data":"0123456789012345678901234567890123456789"}"#;

    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    // One byte every 100 ms: the whole body would take 7 s.
    let trickle = async move {
        for b in body.iter() {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let mut answer = Vec::new();
    let read_all = tokio::time::timeout(WAIT, read.read_to_end(&mut answer));
    tokio::select! {
        read = read_all => { read.expect("answered and closed in time").unwrap(); }
        () = trickle => panic!("the whole body went in without an answer"),
    }

    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert_nothing_stored(&app).await;
    app.stop().await;
}

/// Over HTTP/2 a head over 16 KiB is refused by herald as over HTTP/1, a
/// 431 problem+json, and the connection's stream goes on. Before, h2
/// answered a head over 16 KiB with a bare 431 (no body), and one over
/// 64 KiB (a 100 KB token) with a GOAWAY that ended the connection and
/// every stream on it.
#[tokio::test]
async fn a_large_head_over_http2_is_refused_with_431_and_spares_the_connection() {
    let app = spawn_app().await.over(Writer::Http2);
    let topic = unique_topic("h2-head");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    sse.next_frame().await.unwrap();

    for size in [17 * 1024, 100_000] {
        let res = app
            .client
            .get(app.url("/v1/events"))
            .header("x-pad", "a".repeat(size))
            .send()
            .await
            .unwrap_or_else(|e| panic!("a {size}-byte header: {e:?}"));
        assert_problem(res, 431, "head_too_large", "request head").await;
    }

    // The stream on the same connection carries what comes next.
    let id = app.publish_ok(&topic, json!("after")).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), id);
    app.stop().await;
}
