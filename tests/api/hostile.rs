//! Hostile input, tokens first (issue #10, item 8). Every kind of bad token,
//! in each carrier, sent to publish, to the stream and to history over both
//! writers, gets a clear 4xx problem+json: 401 saying why (and never
//! echoing the token), 403 for a token that verifies but grants nothing,
//! 431 for a head too large to read. With a valid token, event data that
//! is not I-JSON or nests too deep gets a 400, alone or in a batch.
//! Nothing is stored, and subscribers on the side, opened before with a
//! valid token, see their streams go on intact, carrying exactly the one
//! event published afterwards.
//!
//! The positive controls: valid tokens of each algorithm, and one signed
//! with the previous secret during a rotation, are accepted everywhere.
//! The keys are test-only fixtures (`tests/fixtures/keys/`).

mod forge;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use forge::*;

/// What a bad token must get.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// 401 `unauthorized`, the detail mentioning this.
    Unauthorized(&'static str),
    /// 403 `forbidden`: the token verifies but grants nothing.
    Forbidden,
    /// 431 `head_too_large`: the request head is over 16 KiB.
    HeadTooLarge,
    /// 400 `invalid_data`, the detail mentioning this: a valid token,
    /// but event data herald refuses.
    InvalidData(&'static str),
}

use Refusal::{Forbidden, HeadTooLarge, InvalidData, Unauthorized};

struct Case {
    name: String,
    token: String,
    refusal: Refusal,
}

fn case(name: impl Into<String>, token: impl Into<String>, refusal: Refusal) -> Case {
    Case {
        name: name.into(),
        token: token.into(),
        refusal,
    }
}

/// Every bad token a herald verifying with `key` must refuse.
fn cases(key: Key) -> Vec<Case> {
    let valid = key.sign(&claims());
    let everything = claims_with(json!({"herald": {"subscribe": ["*"], "publish": ["*"]}}));
    let signed = |changes: Value| key.sign(&claims_with(changes));
    let mut cases = vec![
        case("alg none", alg_none(&valid), Unauthorized("algorithm")),
        case(
            "signature removed",
            unsigned(&valid),
            Unauthorized("signature"),
        ),
        case(
            "claims swapped under a valid signature",
            tampered(&valid, &key.sign(&everything)),
            Unauthorized("signature"),
        ),
        case(
            "signed with another key",
            key.sign_with_another_key(&claims()),
            Unauthorized("signature"),
        ),
        case(
            "expired beyond the leeway",
            signed(json!({"exp": now() - 600})),
            Unauthorized("expired"),
        ),
        case(
            "nbf beyond the leeway",
            signed(json!({"nbf": now() + 600})),
            Unauthorized("not valid yet"),
        ),
        case(
            "another audience",
            signed(json!({"aud": "another-service"})),
            Unauthorized("audience"),
        ),
        case(
            "other audiences only",
            signed(json!({"aud": ["another-service", "a-third"]})),
            Unauthorized("audience"),
        ),
        case(
            "no aud",
            signed(json!({"aud": null})),
            Unauthorized("no aud"),
        ),
        case(
            "no exp",
            signed(json!({"exp": null})),
            Unauthorized("no exp"),
        ),
        case("no grant claim", signed(json!({"herald": null})), Forbidden),
        case("abc", "abc", Unauthorized("malformed")),
        case("a.b.c", "a.b.c", Unauthorized("malformed")),
        case("base64 junk", "Zm9v.YmFy.YmF6", Unauthorized("malformed")),
        case(
            "junk after a valid header",
            junk_after_header(key.algorithm()),
            Unauthorized("malformed"),
        ),
        case(
            "non-ASCII",
            "t\u{f8}k\u{e9}n.\u{fc}n\u{ef}.\u{2713}",
            Unauthorized("malformed"),
        ),
        case("12 KiB", padded(key, 12 * 1024), Unauthorized("too long")),
        case("100 KB", padded(key, 100_000), HeadTooLarge),
    ];
    for other in [Key::Hs256, Key::Rsa, Key::Ec, Key::Ed] {
        if other != key {
            cases.push(case(
                format!("{:?} token", other.algorithm()),
                other.sign(&claims()),
                Unauthorized("algorithm"),
            ));
        }
    }
    cases
}

#[tokio::test]
async fn forged_tokens_are_refused_by_an_hs256_herald_and_store_nothing() {
    let mut cases = cases(Key::Hs256);
    cases.extend([
        case(
            "HS512 with the right secret",
            Key::Hs256.sign_as(Algorithm::HS512, &claims()),
            Unauthorized("algorithm"),
        ),
        case(
            "expired, signed with the previous secret",
            hs256_with(
                PREVIOUS_SECRET.as_bytes(),
                &claims_with(json!({"exp": now() - 600})),
            ),
            Unauthorized("expired"),
        ),
    ]);
    refused_everywhere(Key::Hs256, cases).await;
}

/// The classic algorithm confusion: the RSA public key is public, so a
/// forger signs HS256 with its PEM bytes as the secret, hoping the server
/// takes the algorithm from the token.
#[tokio::test]
async fn forged_tokens_are_refused_by_an_rs256_herald_including_algorithm_confusion() {
    let mut cases = cases(Key::Rsa);
    cases.extend([
        case(
            "HS256 signed with the RSA public key",
            hs256_with(&Key::Rsa.public_pem(), &claims()),
            Unauthorized("algorithm"),
        ),
        case(
            "PS256 with the right key",
            Key::Rsa.sign_as(Algorithm::PS256, &claims()),
            Unauthorized("algorithm"),
        ),
    ]);
    refused_everywhere(Key::Rsa, cases).await;
}

#[tokio::test]
async fn forged_tokens_are_refused_by_an_es256_herald() {
    let mut cases = cases(Key::Ec);
    cases.push(case(
        "HS256 signed with the EC public key",
        hs256_with(&Key::Ec.public_pem(), &claims()),
        Unauthorized("algorithm"),
    ));
    refused_everywhere(Key::Ec, cases).await;
}

#[tokio::test]
async fn forged_tokens_are_refused_by_an_eddsa_herald() {
    let mut cases = cases(Key::Ed);
    cases.push(case(
        "HS256 signed with the Ed25519 public key",
        hs256_with(&Key::Ed.public_pem(), &claims()),
        Unauthorized("algorithm"),
    ));
    refused_everywhere(Key::Ed, cases).await;
}

#[tokio::test]
async fn valid_hs256_tokens_are_accepted_including_the_previous_secret() {
    let previous = hs256_with(PREVIOUS_SECRET.as_bytes(), &claims());
    accepted_everywhere(
        Key::Hs256,
        vec![
            ("current secret", Key::Hs256.sign(&claims())),
            ("previous secret", previous),
        ],
    )
    .await;
}

#[tokio::test]
async fn valid_rs256_tokens_are_accepted() {
    accepted_everywhere(Key::Rsa, vec![("RS256", Key::Rsa.sign(&claims()))]).await;
}

#[tokio::test]
async fn valid_es256_tokens_are_accepted() {
    accepted_everywhere(Key::Ec, vec![("ES256", Key::Ec.sign(&claims()))]).await;
}

#[tokio::test]
async fn valid_eddsa_tokens_are_accepted() {
    accepted_everywhere(Key::Ed, vec![("EdDSA", Key::Ed.sign(&claims()))]).await;
}

/// Event data herald refuses, whoever sends it: not I-JSON (RFC 7493), or
/// nested deeper than the documented 64 levels (README, "Threats and
/// defences"). Each is JSON that serde_json's `RawValue` accepts and that
/// PostgreSQL's `json` stored before it was refused.
fn bad_data() -> Vec<(&'static str, String, &'static str)> {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    vec![
        ("a lone surrogate", r#""\ud800""#.to_owned(), "surrogate"),
        (
            "a low surrogate first",
            r#"{"x":"\udc00\ud800"}"#.to_owned(),
            "surrogate",
        ),
        (
            "duplicate member names",
            r#"{"a":1,"a":2}"#.to_owned(),
            "repeats a member name",
        ),
        (
            "a duplicate spelled with an escape",
            r#"{"a":1,"\u0061":2}"#.to_owned(),
            "repeats a member name",
        ),
        ("1e400", "1e400".to_owned(), "IEEE 754"),
        ("-1e400 in an array", "[-1e400]".to_owned(), "IEEE 754"),
        ("nesting 65 deep", deep(65), "nests deeper than 64"),
        ("nesting 5,000 deep", deep(5_000), "nests deeper than 64"),
    ]
}

// ----- the endpoints -------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Publish,
    Stream,
    History,
}

impl Endpoint {
    const ALL: [Self; 3] = [Self::Publish, Self::Stream, Self::History];

    /// This endpoint's request about `topic`, `token` in `carrier`.
    fn request(
        self,
        client: &reqwest::Client,
        app: &TestApp,
        topic: &str,
        carrier: Carrier,
        token: &str,
    ) -> reqwest::RequestBuilder {
        match self {
            Self::Publish => carrier
                .request(client, Method::POST, &app.url("/v1/events"), token)
                .json(&json!({"topic": topic, "data": {"hostile": true}})),
            Self::Stream => carrier.request(
                client,
                Method::GET,
                &app.url(&format!("/v1/stream?topic={topic}")),
                token,
            ),
            Self::History => carrier.request(
                client,
                Method::GET,
                &app.url(&format!("/v1/events?topic={topic}")),
                token,
            ),
        }
    }
}

/// The two writers, each with a client of its own. Over HTTP/2 every
/// request of the test, the side stream's included, shares one connection,
/// so a refusal that reset the connection would show on the side stream.
fn clients() -> [(Writer, reqwest::Client); 2] {
    [Writer::Http1, Writer::Http2].map(|w| (w, w.client()))
}

// ----- hostile requests ----------------------------------------------------

/// Sends every case in every carrier to every endpoint over both writers
/// and checks each refusal; then that nothing was stored, and that the
/// side streams carry exactly the marker published afterwards.
async fn refused_everywhere(key: Key, cases: Vec<Case>) {
    let app = spawn_app_with(|c| key.configure(c)).await;
    let topic = unique_topic("hostile");
    let valid = key.sign(&claims());
    let clients = clients();
    let mut sides = Vec::new();
    for (_, client) in &clients {
        let res = Endpoint::Stream
            .request(client, &app, &topic, Carrier::Bearer, &valid)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "the side stream opens");
        let mut side = SseClient::new(res);
        let opening = side.next_frame().await.expect("an opening frame");
        assert_eq!(opening.retry, Some(200));
        sides.push(side);
    }

    for case in &cases {
        for carrier in Carrier::ALL {
            if carrier == Carrier::Query && case.token.len() > MAX_CLIENT_URI {
                // No client writes a target this long: sent by hand.
                for endpoint in Endpoint::ALL {
                    let what = format!("{} in {carrier:?} to {endpoint:?} by hand", case.name);
                    let (status, content_type, head, body) =
                        raw_request(&app, endpoint, &topic, &case.token).await;
                    check_refusal(status, content_type.as_deref(), &head, &body, case, &what);
                }
                continue;
            }
            for (writer, client) in &clients {
                for endpoint in Endpoint::ALL {
                    let what = format!(
                        "{} in {carrier:?} to {endpoint:?} over {writer:?}",
                        case.name
                    );
                    let res = endpoint
                        .request(client, &app, &topic, carrier, &case.token)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
                    assert_refused(res, case, &what).await;
                }
            }
        }
    }
    for (name, data, why) in bad_data() {
        let case = case(name, valid.clone(), InvalidData(why));
        for (writer, client) in &clients {
            for body in [
                format!(r#"{{"topic":"{topic}","data":{data}}}"#),
                format!(r#"[{{"topic":"{topic}","data":1}},{{"topic":"{topic}","data":{data}}}]"#),
            ] {
                let what = format!("{name} over {writer:?} in {}", &body[..1]);
                let res = Carrier::Bearer
                    .request(client, Method::POST, &app.url("/v1/events"), &valid)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:?}"));
                assert_refused(res, &case, &what).await;
            }
        }
    }
    assert_eq!(
        stored_rows(&app.db).await,
        0,
        "rows stored by refused requests"
    );

    let marker = publish_marker(&app, &topic, &valid).await;
    for side in &mut sides {
        assert_only_marker(side, &marker).await;
    }
    assert_eq!(stored_rows(&app.db).await, 1, "the marker alone is stored");
    let history = Endpoint::History
        .request(&clients[0].1, &app, &topic, Carrier::Bearer, &valid)
        .send()
        .await
        .unwrap();
    assert_eq!(
        history.text().await.unwrap(),
        format!("[{}]", marker.envelope)
    );
    app.stop().await;
}

/// Status, problem+json, code, a detail saying why; the token nowhere.
async fn assert_refused(res: reqwest::Response, case: &Case, what: &str) {
    let status = res.status().as_u16();
    let headers = format!("{:?}", res.headers());
    let content_type = res.headers().get("content-type").cloned();
    let body = res.text().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let content_type = content_type.as_ref().and_then(|v| v.to_str().ok());
    check_refusal(status, content_type, &headers, &body, case, what);
}

/// The checks of [`assert_refused`] on an answer's parts.
fn check_refusal(
    status: u16,
    content_type: Option<&str>,
    headers: &str,
    body: &str,
    case: &Case,
    what: &str,
) {
    let (expected, code, mention) = match case.refusal {
        Unauthorized(why) => (401, "unauthorized", why),
        Forbidden => (403, "forbidden", "does not grant"),
        HeadTooLarge => (431, "head_too_large", "request head"),
        InvalidData(why) => (400, "invalid_data", why),
    };
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(
        content_type,
        Some("application/problem+json"),
        "{what}: {body}"
    );
    let problem: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(problem["status"], expected, "{what}: {body}");
    assert_eq!(problem["code"], code, "{what}: {body}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(mention),
        "{what}: {detail:?} should say {mention:?}"
    );
    for secret in secrets_of(&case.token) {
        assert!(!body.contains(secret), "{what}: the body repeats the token");
        assert!(
            !headers.contains(secret),
            "{what}: a header repeats the token"
        );
    }
}

/// The longest URI reqwest sends (the http crate's limit, 64 KiB less
/// one byte), with room for the rest of the URL.
const MAX_CLIENT_URI: usize = 60 * 1024;

/// `endpoint`'s request with `token` as `access_token`, written by hand
/// over HTTP/1.1 for a target no client library will write. Returns the
/// status, the content type, the head and the body of the answer.
async fn raw_request(
    app: &TestApp,
    endpoint: Endpoint,
    topic: &str,
    token: &str,
) -> (u16, Option<String>, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let body = format!(r#"{{"topic":"{topic}","data":{{"hostile":true}}}}"#);
    let request = match endpoint {
        Endpoint::Publish => format!(
            "POST /v1/events?access_token={token} HTTP/1.1\r\nhost: {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            app.addr,
            body.len()
        ),
        Endpoint::Stream => format!(
            "GET /v1/stream?topic={topic}&access_token={token} HTTP/1.1\r\nhost: {}\r\n\r\n",
            app.addr
        ),
        Endpoint::History => format!(
            "GET /v1/events?topic={topic}&access_token={token} HTTP/1.1\r\nhost: {}\r\n\r\n",
            app.addr
        ),
    };
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("the answer");
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    (status, content_type, head.to_owned(), body.to_owned())
}

/// The token and its parts, where long enough to be found only by being
/// repeated.
fn secrets_of(token: &str) -> impl Iterator<Item = &str> {
    std::iter::once(token)
        .chain(token.split('.'))
        .filter(|s| s.len() >= 8)
}

// ----- the side streams ----------------------------------------------------

struct Marker {
    envelope: String,
    /// The frame a stream carries it in, byte for byte.
    frame: String,
}

async fn publish_marker(app: &TestApp, topic: &str, token: &str) -> Marker {
    let res = Endpoint::Publish
        .request(&Writer::Http1.client(), app, topic, Carrier::Bearer, token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "the marker is published");
    let envelope = res.text().await.unwrap();
    let id = id_of(&serde_json::from_str(&envelope).unwrap());
    Marker {
        frame: format!("id: {id}\nevent: message\ndata: {envelope}\n\n"),
        envelope,
    }
}

/// The side stream's bytes are its opening frame, heartbeats and the
/// marker, nothing else; and it goes on (heartbeats, no end).
async fn assert_only_marker(side: &mut SseClient, marker: &Marker) {
    side.next_event().await.expect("the side stream is open");
    let raw = String::from_utf8(side.raw.clone()).expect("UTF-8");
    let end = raw
        .find(&marker.frame)
        .expect("the marker frame, byte for byte")
        + marker.frame.len();
    let without_pings = raw[..end].replace(": ping\n\n", "");
    let (opening, rest) = without_pings.split_once("\n\n").unwrap();
    assert!(
        opening.starts_with("retry: 200\nid: 0\nevent: stream\ndata: {"),
        "the side stream opened otherwise: {opening:?}"
    );
    assert_eq!(rest, marker.frame, "the side stream carried something else");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        match side.next_frame_within(Duration::from_secs(2)).await {
            Ok(Some(frame)) => assert_eq!(frame.comments, ["ping"], "after the marker: {frame:?}"),
            Ok(None) => panic!("the side stream ended"),
            Err(()) => panic!("the side stream went silent: no heartbeat"),
        }
    }
}

// ----- valid tokens --------------------------------------------------------

/// Each token, in each carrier over each writer, opens a stream, publishes
/// one event and reads history; every stream gets every event.
async fn accepted_everywhere(key: Key, tokens: Vec<(&str, String)>) {
    let app = spawn_app_with(|c| key.configure(c)).await;
    let clients = clients();
    for (name, token) in tokens {
        let topic = unique_topic("hostile");
        let mut streams = Vec::new();
        for carrier in Carrier::ALL {
            for (writer, client) in &clients {
                let res = Endpoint::Stream
                    .request(client, &app, &topic, carrier, &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    200,
                    "{name}: stream in {carrier:?} over {writer:?}"
                );
                streams.push(SseClient::new(res));
            }
        }
        let mut envelopes = Vec::new();
        for carrier in Carrier::ALL {
            for (writer, client) in &clients {
                let res = Endpoint::Publish
                    .request(client, &app, &topic, carrier, &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    201,
                    "{name}: publish in {carrier:?} over {writer:?}"
                );
                envelopes.push(res.text().await.unwrap());
            }
        }
        for stream in &mut streams {
            let got: Vec<String> = stream
                .events(envelopes.len())
                .await
                .into_iter()
                .map(|f| f.data.unwrap())
                .collect();
            assert_eq!(got, envelopes, "{name}: a stream's events");
        }
        let list = format!("[{}]", envelopes.join(","));
        for carrier in Carrier::ALL {
            for (writer, client) in &clients {
                let res = Endpoint::History
                    .request(client, &app, &topic, carrier, &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    200,
                    "{name}: history in {carrier:?} over {writer:?}"
                );
                assert_eq!(res.text().await.unwrap(), list, "{name}: history");
            }
        }
    }
    app.stop().await;
}
