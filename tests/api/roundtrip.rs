//! Round trip (issue #10, item 8): every event herald accepts comes back
//! from the stream as the envelope its publisher was answered with, byte
//! for byte, read by an independent SSE parser (eventsource-stream, not
//! the tests' own), its `data` the publisher's JSON compacted onto one
//! line. What herald refuses is a 4xx problem+json, is not stored and never
//! reaches the stream.
//!
//! The events are generated (proptest): JSON values of every kind, strings
//! of any Unicode (newlines, CR, U+2028, quotes, backslashes, NUL,
//! noncharacters), numbers at the ends of their ranges, types and topics
//! that the rules allow or nearly allow, alone or in a batch, sent compact
//! or pretty-printed.

use std::sync::Mutex;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::helpers::*;

/// Cases per writer: enough to cover the shapes, few enough for seconds.
const CASES: u32 = 64;

/// One event as a publisher sends it.
#[derive(Debug, Clone)]
struct Sent {
    /// Appended to the test's topic prefix after `:`.
    topic: String,
    event_type: Option<String>,
    data: Value,
}

/// One publish request: one event alone, or a batch.
#[derive(Debug, Clone)]
struct Request {
    events: Vec<Sent>,
    batch: bool,
    pretty: bool,
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/\n\r\t\u{0}\u{1f}\u{7f}\u{85}\u{2028}\u{2029}\u{feff}\u{fffd}a😀]{0,12}",
        Just("data: x\n\nid: 1\n".to_owned()),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO).prop_map(Value::from),
        prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN),
            Just(f64::MIN_POSITIVE),
            Just(5e-324)
        ]
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        json_number(),
        json_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(json_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        10 => Just(None),
        10 => "[A-Za-z0-9._-]{1,64}".prop_map(Some),
        1 => prop_oneof![
            Just("message"),
            Just("reset"),
            Just("error"),
            Just("open"),
            Just("auth-expiring"),
        ]
        .prop_map(|t| Some(t.to_owned())),
        1 => "[ -~]{0,66}".prop_map(Some),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[A-Za-z0-9._-]{1,12}([:/][A-Za-z0-9._-]{1,12}){0,3}",
        1 => "[ -~]{1,12}",
        1 => "[a-z]{1,8}[:/]",
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::collection::vec(
            (topic(), event_type(), json_value()).prop_map(|(topic, event_type, data)| Sent {
                topic,
                event_type,
                data,
            }),
            1..4,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(events, batch, pretty)| Request {
            batch: batch || events.len() > 1,
            events,
            pretty,
        })
}

impl Request {
    /// The request body, with `prefix:` before every topic.
    fn body(&self, prefix: &str) -> String {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                let mut event = Map::new();
                event.insert("topic".into(), format!("{prefix}:{}", e.topic).into());
                if let Some(t) = &e.event_type {
                    event.insert("type".into(), t.clone().into());
                }
                event.insert("data".into(), e.data.clone());
                Value::Object(event)
            })
            .collect();
        let body = if self.batch {
            Value::Array(events)
        } else {
            events.into_iter().next().expect("one event")
        };
        if self.pretty {
            serde_json::to_string_pretty(&body)
        } else {
            serde_json::to_string(&body)
        }
        .expect("JSON text")
    }
}

/// What the run has seen so far: the newest id stored (the cursor a new
/// stream resumes after) and the rows stored.
#[derive(Default)]
struct Log {
    last_id: i64,
    rows: i64,
}

async fn every_accepted_event_comes_back_from_the_stream_as_its_envelope(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let prefix = unique_topic("roundtrip");
    let log = Mutex::new(Log::default());
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // proptest's runner is synchronous: it runs on a blocking thread, each
    // case driven on the test's runtime, where the app runs.
    let result = tokio::task::block_in_place(|| {
        runner.run(&request(), |request| {
            runtime.block_on(round_trip(&app, &prefix, &log, &request))
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let rows = log.lock().unwrap().rows;
    assert_eq!(stored_rows(&app.db).await, rows, "rows stored");
    assert!(rows > 0, "some events were accepted");
    app.stop().await;
}

mod every_accepted_event_comes_back_from_the_stream_as_its_envelope {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http1() {
        super::every_accepted_event_comes_back_from_the_stream_as_its_envelope(
            crate::helpers::Writer::Http1,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2() {
        super::every_accepted_event_comes_back_from_the_stream_as_its_envelope(
            crate::helpers::Writer::Http2,
        )
        .await;
    }
}

/// One case: a stream opened after the newest stored id, the request, and
/// either the events back from the stream as answered, or a refusal that
/// stored nothing.
async fn round_trip(
    app: &TestApp,
    prefix: &str,
    log: &Mutex<Log>,
    request: &Request,
) -> Result<(), TestCaseError> {
    let last_id = log.lock().unwrap().last_id;
    let res = app
        .stream_response(&format!("topic={prefix}:*"), Some(&last_id.to_string()))
        .await;
    prop_assert_eq!(res.status(), 200);
    // The events a page handles: not the stream's own `event: stream`.
    let mut stream = Box::pin(
        res.bytes_stream()
            .eventsource()
            .filter(|e| futures::future::ready(!matches!(e, Ok(ev) if ev.event == "stream"))),
    );

    let body = request.body(prefix);
    let res = app
        .post_raw("/v1/events", Some("application/json"), body.clone())
        .await;
    let status = res.status();
    let content_type = res.headers().get("content-type").cloned();
    let answer = res.text().await.expect("the answer");
    if status != 201 {
        prop_assert!(status.is_client_error(), "{status} for {body}: {answer}");
        prop_assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = serde_json::from_str(&answer).expect("a problem document");
        prop_assert_eq!(&problem["status"], &json!(status.as_u16()));
        let rows = log.lock().unwrap().rows;
        prop_assert_eq!(stored_rows(&app.db).await, rows, "a refusal stored rows");
        return Ok(());
    }

    // The envelopes as answered, each as its own text.
    let envelopes: Vec<Box<RawValue>> = if request.batch {
        serde_json::from_str(&answer).expect("an array of envelopes")
    } else {
        vec![RawValue::from_string(answer.clone()).expect("an envelope")]
    };
    prop_assert_eq!(envelopes.len(), request.events.len());
    {
        let mut log = log.lock().unwrap();
        let last: Value = serde_json::from_str(envelopes.last().unwrap().get()).unwrap();
        log.last_id = last["id"].as_str().unwrap().parse().unwrap();
        log.rows += i64::try_from(envelopes.len()).unwrap();
    }

    for (envelope, sent) in envelopes.iter().zip(&request.events) {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the event in time")
            .expect("the stream open")
            .expect("well-formed SSE");
        let envelope = envelope.get();
        prop_assert_eq!(&event.data, envelope, "the stream's envelope");
        let parsed: Value = serde_json::from_str(envelope).unwrap();
        prop_assert_eq!(&event.id, parsed["id"].as_str().unwrap());
        let event_type = sent.event_type.as_deref().unwrap_or("message");
        prop_assert_eq!(&event.event, event_type);
        prop_assert_eq!(&parsed["type"], event_type);
        prop_assert_eq!(&parsed["topic"], &json!(format!("{prefix}:{}", sent.topic)));
        let data = serde_json::to_string(&sent.data).unwrap();
        prop_assert!(
            envelope.ends_with(&format!(",\"data\":{data}}}")),
            "the data as sent, compacted: {envelope}"
        );
    }
    Ok(())
}
