//! OpenTelemetry export (issue #25, part 3): two real `herald` processes on
//! one log export to a real OTLP/HTTP receiver
//! (`tests/python/otlp_receiver.py`, which decodes the protobuf with the
//! official schema). A publish gives one `send` span, a child of the
//! publisher's `traceparent`; each instance gives one `process` span per
//! event, linked to it, with the number of streams written. A batch is one
//! `send` span. With export off, nothing is sent.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::faults::{Api, HeraldProcess};
use crate::helpers::*;

/// The OTLP/HTTP receiver, killed when dropped; every span it decoded, as
/// the JSON object it printed.
struct Receiver {
    _child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    /// Starts the receiver on `port` (0: any free one); `None` if it could
    /// not listen there.
    async fn start(port: u16) -> Option<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otlp_receiver.py");
        let mut child = Command::new("python3")
            .args([script, "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the OTLP receiver (python3 and tests/python/requirements.txt)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the receiver starts in time")
            .expect("read the receiver's output")?;
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        tokio::spawn({
            let (spans, arrived) = (spans.clone(), arrived.clone());
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    spans
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&line).unwrap());
                    arrived.notify_waiters();
                }
            }
        });
        Some(Self {
            _child: child,
            port,
            spans,
            arrived,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until the spans received satisfy `done`; fails after [`WAIT`].
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Registered before looking, so a line that lands in between
            // still wakes us.
            let arrived = self.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("timed out waiting for {what}; the receiver has:\n{spans:#?}");
            }
        }
    }
}

/// herald exporting to `receiver` as service `name`; batches go out every
/// 100 ms rather than every 5 s (the SDK's `OTEL_BSP_SCHEDULE_DELAY`).
async fn exporting(db: &TestDb, receiver: &Receiver, name: &str) -> HeraldProcess {
    let endpoint = receiver.endpoint();
    HeraldProcess::start_with_env(
        &db.url,
        &["--otlp-endpoint", &endpoint],
        &[
            ("RUST_LOG", "info"),
            ("OTEL_SERVICE_NAME", name),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await
}

/// `POST /v1/events` with a `traceparent` header; the answer's body.
async fn publish_traced(api: &Api, body: &Value, traceparent: &str) -> Value {
    let res = api
        .client
        .post(api.url("/v1/events"))
        .header("traceparent", traceparent)
        .json(body)
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 201, "publish {body}");
    res.json().await.unwrap()
}

/// A trace id and a span id of this test's own (lowercase hex, not zero).
fn ids(salt: u64) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos ^ (u128::from(salt) << 96) | 1);
    let span = format!("{:016x}", (nanos as u64).rotate_left(17) ^ salt | 1);
    (trace, span)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn service(span: &Value) -> &str {
    span["resource"]["service.name"]
        .as_str()
        .unwrap_or_default()
}

fn is_send_in(span: &Value, trace: &str) -> bool {
    span["kind"] == "PRODUCER" && span["trace_id"] == trace
}

fn is_process_linked_to(span: &Value, trace: &str) -> bool {
    span["kind"] == "CONSUMER"
        && span["links"]
            .as_array()
            .is_some_and(|links| links.iter().any(|l| l["trace_id"] == trace))
}

/// Opens a stream of `topic` and reads its opening frame, so the
/// instance's hub has it before anything is published.
async fn subscribe(api: &Api, topic: &str) -> SseClient {
    let mut sse = api.open_stream(&format!("topic={topic}"), None).await;
    assert!(sse.next_frame().await.unwrap().is_stream_frame());
    sse
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_and_process_spans_from_two_instances_reach_an_otlp_receiver() {
    // Arrange: A and B on one log, both exporting; a subscriber on each.
    let db = TestDb::create().await;
    let receiver = Receiver::start(0).await.expect("the receiver listens");
    let a = exporting(&db, &receiver, "herald-a").await;
    let b = exporting(&db, &receiver, "herald-b").await;
    a.api.wait_ready().await;
    b.api.wait_ready().await;
    let topic = unique_topic("otel");
    let mut on_a = subscribe(&a.api, &topic).await;
    let mut on_b = subscribe(&b.api, &topic).await;

    // Act: one event with a traceparent, published to A.
    let (trace, parent) = ids(1);
    let event = json!({"topic": topic, "data": {"n": 1}});
    let stored = publish_traced(&a.api, &event, &format!("00-{trace}-{parent}-01")).await;
    let id = stored["id"].as_str().unwrap().to_owned();
    for sse in [&mut on_a, &mut on_b] {
        assert_eq!(sse.next_event().await.unwrap().json()["id"], id);
    }

    // Assert: A's send span, a child of the publisher's span, and one
    // process span from each instance, linked to the publisher's trace.
    let spans = receiver
        .wait_until(
            "a send span and a process span from each instance",
            |spans| {
                let sent = spans.iter().any(|s| is_send_in(s, &trace));
                let processed = |name| {
                    spans
                        .iter()
                        .any(|s| is_process_linked_to(s, &trace) && service(s) == name)
                };
                sent && processed("herald-a") && processed("herald-b")
            },
        )
        .await;
    let sends: Vec<&Value> = spans.iter().filter(|s| is_send_in(s, &trace)).collect();
    assert_eq!(sends.len(), 1, "{sends:#?}");
    let send = sends[0];
    assert_eq!(send["name"], format!("send {topic}"));
    assert_eq!(send["parent_span_id"], parent.as_str());
    assert_eq!(service(send), "herald-a");
    assert_eq!(attr(send, "messaging.system"), "herald");
    assert_eq!(attr(send, "messaging.operation.type"), "send");
    assert_eq!(attr(send, "messaging.destination.name"), topic.as_str());
    assert_eq!(attr(send, "messaging.message.id"), id.as_str());
    let processes: Vec<&Value> = spans
        .iter()
        .filter(|s| is_process_linked_to(s, &trace))
        .collect();
    assert_eq!(processes.len(), 2, "one per instance: {processes:#?}");
    for process in &processes {
        assert_eq!(process["name"], format!("process {topic}"));
        assert_eq!(process["parent_span_id"], "", "a link, not a parent");
        assert_eq!(process["links"][0]["span_id"], parent.as_str());
        assert_eq!(attr(process, "messaging.system"), "herald");
        assert_eq!(attr(process, "messaging.operation.type"), "process");
        assert_eq!(attr(process, "messaging.destination.name"), topic.as_str());
        assert_eq!(attr(process, "messaging.message.id"), id.as_str());
        assert_eq!(attr(process, "herald.streams_written"), 1);
    }
    // Each instance names itself: its registry id, which differs.
    let instance = |s: &Value| {
        s["resource"]["service.instance.id"]
            .as_str()
            .map(str::to_owned)
    };
    let (first, second) = (instance(processes[0]), instance(processes[1]));
    assert!(first.is_some() && second.is_some() && first != second);

    // Act: a batch of 10 with another traceparent.
    let (batch_trace, batch_parent) = ids(2);
    let batch: Vec<Value> = (0..10)
        .map(|n| json!({"topic": topic, "data": {"n": n}}))
        .collect();
    let traceparent = format!("00-{batch_trace}-{batch_parent}-01");
    publish_traced(&a.api, &Value::Array(batch), &traceparent).await;

    // Assert: one send span for the batch; every event fanned out on both.
    let spans = receiver
        .wait_until("the batch's send span and 20 process spans", |spans| {
            let sent = spans.iter().any(|s| is_send_in(s, &batch_trace));
            let processed = spans
                .iter()
                .filter(|s| is_process_linked_to(s, &batch_trace))
                .count();
            sent && processed == 20
        })
        .await;
    let sends: Vec<&Value> = spans
        .iter()
        .filter(|s| is_send_in(s, &batch_trace))
        .collect();
    assert_eq!(sends.len(), 1, "one send span per request: {sends:#?}");
    assert_eq!(sends[0]["name"], format!("send {topic}"));
    assert_eq!(sends[0]["parent_span_id"], batch_parent.as_str());
    assert_eq!(attr(sends[0], "messaging.batch.message_count"), 10);
    assert!(attr(sends[0], "messaging.message.id").is_null());
    // Nothing more came for the first event meanwhile.
    let first_trace = spans
        .iter()
        .filter(|s| is_send_in(s, &trace) || is_process_linked_to(s, &trace))
        .count();
    assert_eq!(first_trace, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_export_off_nothing_reaches_the_receiver() {
    // Arrange: the receiver on OTLP/HTTP's default port if it is free
    // (where a herald that exported by mistake, with the SDK's defaults,
    // would send), else any port. One herald with nothing configured, and
    // one told the receiver's address but also OTEL_SDK_DISABLED=true.
    let receiver = match Receiver::start(4318).await {
        Some(receiver) => receiver,
        None => Receiver::start(0).await.expect("the receiver listens"),
    };
    let db = TestDb::create().await;
    let quick = ("OTEL_BSP_SCHEDULE_DELAY", "100");
    let unset = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
    ];
    let plain = HeraldProcess::start_with_env(
        &db.url,
        &[],
        &[("RUST_LOG", "info"), quick, unset[0], unset[1]],
    )
    .await;
    let endpoint = receiver.endpoint();
    let disabled = HeraldProcess::start_with_env(
        &db.url,
        &[],
        &[
            ("RUST_LOG", "info"),
            quick,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    )
    .await;
    let topic = unique_topic("otel-off");
    let mut streams = Vec::new();
    for herald in [&plain, &disabled] {
        herald.api.wait_ready().await;
        streams.push(subscribe(&herald.api, &topic).await);
    }

    // Act: a traced publish to each, fanned out by both.
    let (trace, parent) = ids(3);
    let traceparent = format!("00-{trace}-{parent}-01");
    for herald in [&plain, &disabled] {
        let event = json!({"topic": topic, "data": null});
        publish_traced(&herald.api, &event, &traceparent).await;
    }
    for sse in &mut streams {
        sse.events(2).await;
    }

    // Assert: nothing arrives. An absence can only be shown by waiting:
    // one second is ten of the batch delay these processes were given, so
    // spans made at the fan-out above would have been sent by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.spans(), Vec::<Value>::new());
}
