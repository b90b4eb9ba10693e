//! Who may read and who may publish (issue #10): tokens from each carrier
//! on every endpoint and both stream writers, grants that refuse rather
//! than narrow, streams that end with their token, caps and rates, the
//! anonymous default that only serves loopback, and tokens that never
//! reach a log line.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const HOUR: Duration = Duration::from_secs(3600);

fn alice() -> String {
    token("alice", &["user:{sub}:*"], &["user:{sub}:outbox"], HOUR)
}

/// A stream request with `token` in the given carrier.
async fn stream_with(
    app: &TestApp,
    writer: Writer,
    carrier: &str,
    token: &str,
    query: &str,
) -> reqwest::Response {
    let client = writer.client();
    let mut url = app.url(&format!("/v1/stream?{query}"));
    let mut req = client.get(&url);
    match carrier {
        "bearer" => req = req.bearer_auth(token),
        "cookie" => req = req.header("cookie", format!("theme=dark; herald_token={token}")),
        "query" => {
            url.push_str(&format!("&access_token={token}"));
            req = client.get(&url);
        }
        _ => unreachable!(),
    }
    req.send().await.unwrap()
}

async fn carriers_reach_the_stream(writer: Writer) {
    let app = spawn_app_with_tokens(|_| {}).await;
    let backend = app.client.clone();
    let publisher = Writer::Http1.client_with_token(&backend_token());

    for carrier in ["bearer", "cookie", "query"] {
        let res = stream_with(&app, writer, carrier, &alice(), "topic=user:alice:inbox").await;
        assert_eq!(res.status(), 200, "{carrier}");
        let mut sse = SseClient::new(res);
        sse.next_frame().await.unwrap();
        let published = publisher
            .post(app.url("/v1/events"))
            .json(&json!({"topic": "user:alice:inbox", "data": carrier}))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 201);
        let ev = sse.next_event().await.unwrap();
        assert_eq!(ev.json()["data"], carrier, "{carrier}");
    }
    drop(backend);
    app.stop().await;
}
over_both_writers!(carriers_reach_the_stream);

async fn a_stream_without_a_token_or_with_a_bad_one_is_401(writer: Writer) {
    let app = spawn_app_with_tokens(|_| {}).await;
    let client = writer.client();

    let none = client.get(app.url("/v1/stream")).send().await.unwrap();
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"herald\""
    );
    assert_problem(none, 401, "unauthorized", "a token is required").await;

    let expired_at = json!({"sub": "alice", "exp": 1_000_000, "herald": {"subscribe": ["*"]}});
    for (bad, why) in [
        (sign(&expired_at), "expired"),
        ("not-a-token".to_owned(), "malformed"),
    ] {
        let res = stream_with(&app, writer, "bearer", &bad, "").await;
        let body = assert_problem(res, 401, "unauthorized", why).await;
        assert!(
            !body.to_string().contains(&bad),
            "the detail carries the token"
        );
    }
    app.stop().await;
}
over_both_writers!(a_stream_without_a_token_or_with_a_bad_one_is_401);

async fn a_stream_outside_the_grants_is_403_before_any_byte(writer: Writer) {
    let app = spawn_app_with_tokens(|_| {}).await;

    for query in [
        "topic=user:bob:inbox",
        "topic=user:*",
        "topic=*",
        "topic=user:alice:inbox&topic=news",
    ] {
        let res = stream_with(&app, writer, "bearer", &alice(), query).await;
        assert_problem(res, 403, "forbidden", "does not grant subscribing").await;
    }
    app.stop().await;
}
over_both_writers!(a_stream_outside_the_grants_is_403_before_any_byte);

/// `{sub}` is a literal: a subject that is not one topic segment (`*`,
/// `a*`, `alice:*`, empty) reads nothing of alice's topics through a
/// `user:{sub}` or `{sub}` grant, by stream or history, asked for by name
/// or by no filter at all. Found from outside: the subject `*` read every
/// user's topics, and `a*` read `user:alice:…`.
async fn a_subject_that_is_not_one_segment_reads_nothing_through_sub(writer: Writer) {
    let app = spawn_app_with_tokens(|_| {}).await;
    let history = reqwest::Client::new();
    for subject in ["*", "a*", "alice:*", ""] {
        for grant in ["user:{sub}", "{sub}"] {
            let t = token(subject, &[grant], &[], Duration::from_secs(600));
            for query in ["topic=user:alice:inbox", "topic=user:*", ""] {
                let res = stream_with(&app, writer, "bearer", &t, query).await;
                let what = format!("subject {subject:?}, grant {grant:?}, stream {query:?}");
                assert!(
                    matches!(res.status().as_u16(), 401 | 403),
                    "{what}: {}",
                    res.status()
                );
                let res = history
                    .get(app.url(&format!("/v1/events?{query}")))
                    .bearer_auth(&t)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    matches!(res.status().as_u16(), 401 | 403),
                    "{what} (history): {}",
                    res.status()
                );
            }
        }
    }
    app.stop().await;
}
over_both_writers!(a_subject_that_is_not_one_segment_reads_nothing_through_sub);

/// No filter means "everything I may read": alice's own topics, not
/// bob's, and not a silently narrowed `*`.
async fn a_stream_without_filters_reads_everything_granted(writer: Writer) {
    let app = spawn_app_with_tokens(|_| {}).await;
    let publisher = Writer::Http1.client_with_token(&backend_token());
    let res = stream_with(&app, writer, "bearer", &alice(), "").await;
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    sse.next_frame().await.unwrap();

    for topic in [
        "user:bob:inbox",
        "user:alice:inbox",
        "news",
        "user:alice:x:y",
    ] {
        let res = publisher
            .post(app.url("/v1/events"))
            .json(&json!({"topic": topic}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    let first = sse.next_event().await.unwrap();
    let second = sse.next_event().await.unwrap();
    assert_eq!(first.json()["topic"], "user:alice:inbox");
    assert_eq!(second.json()["topic"], "user:alice:x:y");
    app.stop().await;
}
over_both_writers!(a_stream_without_filters_reads_everything_granted);

#[tokio::test]
async fn history_honours_grants_and_carriers() {
    let app = spawn_app_with_tokens(|_| {}).await;
    let backend = Writer::Http1.client_with_token(&backend_token());
    for topic in ["user:alice:inbox", "user:bob:inbox"] {
        let res = backend
            .post(app.url("/v1/events"))
            .json(&json!({"topic": topic}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let plain = reqwest::Client::new();

    let mine: Vec<Value> = plain
        .get(app.url(&format!("/v1/events?access_token={}", alice())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["topic"], "user:alice:inbox");

    let theirs = plain
        .get(app.url("/v1/events?topic=user:bob:inbox"))
        .header("cookie", format!("herald_token={}", alice()))
        .send()
        .await
        .unwrap();
    assert_problem(theirs, 403, "forbidden", "user:bob:inbox").await;
    let nobody = plain.get(app.url("/v1/events")).send().await.unwrap();
    assert_problem(nobody, 401, "unauthorized", "token is required").await;
    app.stop().await;
}

#[tokio::test]
async fn publishing_outside_the_grants_is_403_and_stores_nothing() {
    let app = spawn_app_with_tokens(|_| {}).await.with_bearer(&alice());

    let outside = app.publish(&json!({"topic": "user:bob:inbox"})).await;
    assert_problem(outside, 403, "forbidden", "user:bob:inbox").await;
    let batch = app
        .publish(&json!([{"topic": "user:alice:outbox"}, {"topic": "news"}]))
        .await;
    assert_problem(batch, 403, "forbidden", "\"news\"").await;
    let reader_only = token("carol", &["*"], &[], HOUR);
    let res = Writer::Http1
        .client_with_token(&reader_only)
        .post(app.url("/v1/events"))
        .json(&json!({"topic": "a"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden", "publishing").await;
    assert_eq!(stored_rows(&app.db).await, 0);

    let own = app.publish(&json!({"topic": "user:alice:outbox"})).await;
    assert_eq!(own.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn a_publish_without_a_token_is_401_and_stores_nothing() {
    let app = spawn_app_with_tokens(|_| {}).await;

    let res = app.publish(&json!({"topic": "a"})).await;

    assert_problem(res, 401, "unauthorized", "token is required").await;
    assert_eq!(stored_rows(&app.db).await, 0);
    app.stop().await;
}

/// The previous secret is accepted during a rotation; any other is not.
#[tokio::test]
async fn the_previous_secret_verifies_during_rotation() {
    let app = spawn_app_with(|c| {
        c.auth.secret.jwt_secret = Some("the-new-secret".parse().unwrap());
        c.auth.jwt_previous_secret = Some(SECRET.parse().unwrap());
    })
    .await;

    let old = Writer::Http1.client_with_token(&backend_token());
    let res = old
        .post(app.url("/v1/events"))
        .json(&json!({"topic": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "a token signed with the previous secret");

    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "x", "exp": 4_000_000_000_u64, "herald": {"publish": ["*"]}}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret").unwrap(),
    )
    .unwrap();
    let res = Writer::Http1
        .client_with_token(&other)
        .post(app.url("/v1/events"))
        .json(&json!({"topic": "a"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized", "signature").await;
    app.stop().await;
}

/// A stream ends at its token's `exp`, after one `auth-expiring` event
/// (no `id:`, so `Last-Event-ID` stays); the reconnect with a fresh token
/// and the last id misses nothing, and one with the expired token is 401.
async fn a_stream_ends_with_its_token_and_resumes_with_a_new_one(writer: Writer) {
    let app = spawn_app_with_tokens(|c| {
        c.auth.token_expiry_warning = Duration::from_millis(1000);
        c.auth.jwt_leeway = Duration::ZERO;
    })
    .await;
    let publisher = Writer::Http1.client_with_token(&backend_token());
    let publish = |n: i64| {
        let publisher = publisher.clone();
        let url = app.url("/v1/events");
        async move {
            let res = publisher
                .post(url)
                .json(&json!({"topic": "user:alice:inbox", "data": n}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let body: Value = res.json().await.unwrap();
            id_of(&body)
        }
    };
    let short = token("alice", &["user:{sub}:*"], &[], Duration::from_secs(3));
    let res = stream_with(&app, writer, "bearer", &short, "topic=user:alice:inbox").await;
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    sse.next_frame().await.unwrap();
    let first = publish(1).await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), first);

    let warning = sse.next_event().await.unwrap();
    assert_eq!(warning.event.as_deref(), Some("auth-expiring"));
    assert_eq!(warning.id, None, "{warning:?}");
    assert_eq!(warning.json()["reason"], "token_expiring");
    let missed = publish(2).await;
    // The stream ends at the expiry (the frames up to it are what it sent).
    loop {
        match sse.next_frame().await {
            Some(frame) if frame.is_event() => assert_eq!(frame.id_num(), missed),
            Some(_) => {}
            None => break,
        }
    }

    let again = stream_with(&app, writer, "bearer", &short, "topic=user:alice:inbox").await;
    assert_problem(again, 401, "unauthorized", "expired").await;
    let fresh = token("alice", &["user:{sub}:*"], &[], HOUR);
    let resumed = stream_with(
        &app,
        writer,
        "bearer",
        &fresh,
        &format!("topic=user:alice:inbox&last_event_id={first}"),
    )
    .await;
    let mut sse = SseClient::new(resumed);
    let next = sse.next_event().await.unwrap();
    assert_eq!(next.id_num(), missed);
    app.stop().await;
}
over_both_writers!(a_stream_ends_with_its_token_and_resumes_with_a_new_one);

#[tokio::test]
async fn a_stream_over_the_subject_cap_replaces_the_oldest_not_the_newest() {
    let app = spawn_app_with_tokens(|c| c.limits.max_streams_per_subject = 2).await;
    let alice = alice();
    let open = |n: usize| {
        let (app, alice) = (&app, alice.clone());
        async move {
            let res = stream_with(
                app,
                Writer::Http1,
                "bearer",
                &alice,
                &format!("topic=user:alice:{n}"),
            )
            .await;
            assert_eq!(res.status(), 200, "every stream opens");
            let mut sse = SseClient::new(res);
            sse.next_frame().await.unwrap();
            sse
        }
    };

    let mut first = open(1).await;
    let _second = open(2).await;
    let bob = token("bob", &["user:{sub}:*"], &[], HOUR);
    let other = stream_with(&app, Writer::Http1, "bearer", &bob, "topic=user:bob:1").await;
    assert_eq!(other.status(), 200, "another subject is not affected");
    let _third = open(3).await;
    let frame = first.next_data_frame().await.unwrap();
    assert_eq!(frame.event.as_deref(), Some("replaced"));
    assert_eq!(
        frame.json(),
        json!({"reason": "max_streams_per_subject", "cap": 2})
    );
    assert!(first.next_frame().await.is_none(), "the oldest ends");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_over_the_address_cap_replaces_the_oldest() {
    let app = spawn_app_with(|c| c.limits.max_streams_per_ip = 1).await;

    let mut first = app.stream("topic=a", None).await;
    first.next_frame().await.unwrap();
    let mut second = app.stream("topic=b", None).await;
    second.next_frame().await.unwrap();
    let frame = first.next_data_frame().await.unwrap();
    assert_eq!(frame.event.as_deref(), Some("replaced"));
    assert_eq!(
        frame.json(),
        json!({"reason": "max_streams_per_ip", "cap": 1})
    );
    assert!(first.next_frame().await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn publishing_faster_than_the_subject_rate_is_429_with_retry_after() {
    let app = spawn_app_with_tokens(|c| c.limits.publish_rate_per_subject = 5)
        .await
        .with_bearer(&backend_token());

    let batch: Vec<Value> = (0..5).map(|n| json!({"topic": "a", "data": n})).collect();
    assert_eq!(app.publish(&Value::Array(batch)).await.status(), 201);
    let over = app.publish(&json!({"topic": "a"})).await;
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_problem(over, 429, "publish_rate", "faster than allowed").await;
    let too_big: Vec<Value> = (0..6).map(|n| json!({"topic": "a", "data": n})).collect();
    let res = app.publish(&Value::Array(too_big)).await;
    assert_problem(res, 429, "publish_rate", "burst of 5").await;
    assert_eq!(stored_rows(&app.db).await, 5);
    app.stop().await;
}

/// Without tokens herald serves only loopback, unless told otherwise on
/// purpose; the refusal is one line naming the flag.
#[tokio::test]
async fn anonymous_on_a_non_loopback_address_refuses_to_start() {
    let db = TestDb::create().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "0.0.0.0:0", "--database-url", &db.url])
        .env_remove("HERALD_ALLOW_ANONYMOUS")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_JWT_SECRET_FILE")
        .output()
        .await
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");

    let mut on_purpose = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--allow-anonymous",
            "--database-url",
            &db.url,
        ])
        .args(["--log-format", "json"])
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_JWT_SECRET_FILE")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = on_purpose.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let serving = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("herald is serving") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(serving, Ok(true), "--allow-anonymous serves on 0.0.0.0");
    on_purpose.kill().await.unwrap();
}

/// A secret given both ways (its variable left over in the shell, say) is
/// one clear refusal that names both variables, for the server and for
/// `herald token`, before anything is served or signed.
#[tokio::test]
async fn a_secret_and_its_file_both_set_is_one_refusal_naming_both_variables() {
    let db = TestDb::create().await;
    let secret_file = std::env::temp_dir().join(format!("herald-test-both-{}", std::process::id()));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    for args in [
        vec!["--listen", "127.0.0.1:0", "--database-url", &db.url],
        vec!["token", "--subject", "alice"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_JWT_SECRET_FILE", &secret_file)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();

        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        for name in [
            "HERALD_JWT_SECRET ",
            "HERALD_JWT_SECRET_FILE",
            "--jwt-secret ",
        ] {
            assert!(stderr.contains(name), "{args:?} names {name}: {stderr}");
        }
        assert!(out.stdout.is_empty(), "{args:?} printed nothing");
    }
    std::fs::remove_file(&secret_file).unwrap();
}

/// A token in a URL (the last-resort carrier) reaches no log line, even
/// at trace level, on any endpoint, accepted or refused.
#[tokio::test]
async fn a_token_in_the_url_never_reaches_the_logs() {
    let db = TestDb::create().await;
    let secret_file =
        std::env::temp_dir().join(format!("herald-test-secret-{}", std::process::id()));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut herald = crate::faults::HeraldProcess::start_with_env(
        &db.url,
        &["--jwt-secret-file", secret_file.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let plain = reqwest::Client::new();
    let good = backend_token();
    let bad = format!("{good}x");
    for token in [&good, &bad] {
        for path in [
            "/v1/stream?topic=a&last_event_id=0",
            "/v1/stream?topic=a::b",
            "/v1/events?limit=1",
            "/v1/events?limit=0",
        ] {
            let url = herald.api.url(&format!("{path}&access_token={token}"));
            let res = plain.get(&url).send().await.unwrap();
            drop(res);
        }
        let res = plain
            .post(herald.api.url(&format!("/v1/events?access_token={token}")))
            .json(&json!({"topic": "a"}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error() || res.status() == 201);
    }
    herald.sigterm();
    herald.wait_exit(WAIT).await;
    let _ = std::fs::remove_file(&secret_file);

    let logs = herald.logs();
    assert!(logs.lines().count() > 10, "trace logging is on: {logs}");
    // The signature part alone is distinctive enough.
    let signature = good.rsplit('.').next().unwrap();
    assert!(
        !logs.contains(signature),
        "a token reached the logs:\n{logs}"
    );
    assert!(
        !logs.contains("access_token="),
        "a query string reached the logs"
    );
}
