//! The SSE clients people use, against a real herald (issue #22): Node's
//! `eventsource` (the package the README recommends) and
//! `@microsoft/fetch-event-source`, Python's sseclient-py over requests and
//! httpx-sse, and Rust's reqwest-eventsource. Each runs the README's
//! snippet for it, as written (`readme_snippets_are_the_code_the_tests_run`),
//! through three claims:
//!
//! - a drop before its first event loses nothing: the client has seen only
//!   the opening frame when herald dies; 20 events are published while it
//!   is down, and the client tries twice in vain; herald comes back; the
//!   client gets exactly those 20, once each, in order;
//! - a restart with events in the gap: the same after some events;
//! - a `401` and a `403` stop it: herald answers one request, and the
//!   client then stops by itself (its process exits) instead of retrying.
//!
//! The herald a client follows is the binary, killed and started again on
//! the same port ([`process`]); events are published through a second
//! instance on the same database, so they are certainly in the gap. The
//! client reaches herald through a [`tap`] that shows what passed: when
//! the opening frame has reached it, what each request carried, what
//! herald answered.

mod process;
mod readme;
mod rust_client;
mod tap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::run::{Running, node, python};
use crate::helpers::*;
use process::{HeraldProcess, unused_port};
use tap::{Connection, Tap, summary};

/// The type of the events the tests publish: the `eventsource` snippet
/// listens for types by name, as a browser does.
const TYPE: &str = "incident.updated";

#[derive(Debug, Clone, Copy)]
enum Client {
    NodeEventSource,
    FetchEventSource,
    SseclientPy,
    HttpxSse,
    ReqwestEventSource,
}

impl Client {
    /// Starts the client's README snippet on the stream at `url`, as
    /// `token`.
    fn follow(self, url: &str, token: &str) -> Subscriber {
        let script = |mut command: tokio::process::Command| {
            Subscriber::Process(Box::new(Running::spawn(command.args([url, token]))))
        };
        match self {
            Self::NodeEventSource => {
                let mut command = node("readme_eventsource.mjs");
                command.args([url, token, TYPE]);
                Subscriber::Process(Box::new(Running::spawn(&mut command)))
            }
            Self::FetchEventSource => script(node("readme_fetch_event_source.mjs")),
            Self::SseclientPy => script(python("tests/python/readme_sseclient.py")),
            Self::HttpxSse => script(python("tests/python/readme_httpx_sse.py")),
            Self::ReqwestEventSource => {
                let (task, out) = rust_client::spawn(url.to_owned(), token.to_owned());
                Subscriber::Task {
                    task: Aborting(task),
                    out,
                }
            }
        }
    }
}

/// A client running its snippet: a script, or a task of this process.
/// Either writes `EVENT <type> <envelope>` per event it handled and
/// `REFUSED <status>` when it gave up.
enum Subscriber {
    Process(Box<Running>),
    Task {
        task: Aborting,
        out: Arc<Mutex<String>>,
    },
}

/// A task that ends with the test.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscriber {
    /// Waits until the client's output satisfies `done`; returns it.
    async fn wait(&mut self, what: &str, done: impl Fn(&Output) -> bool) -> Output {
        match self {
            Self::Process(process) => Output(
                process
                    .wait_stdout(what, |out| done(&Output(out.to_owned())))
                    .await,
            ),
            Self::Task { task, out } => {
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    let now = Output(out.lock().unwrap().clone());
                    if done(&now) {
                        return now;
                    }
                    let returned = task.0.is_finished();
                    assert!(
                        !returned && tokio::time::Instant::now() < deadline,
                        "waiting for {what}: {}\n{}",
                        if returned { "it returned" } else { "timed out" },
                        now.0
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Waits for the client to end by itself (a process that exits, so no
    /// reconnect of the library's is pending); returns its output.
    async fn ended(self) -> Output {
        match self {
            Self::Process(process) => {
                let (status, out, err) = (*process).finish(WAIT).await;
                assert!(
                    status.success(),
                    "the client failed: {status}\n{out}\n{err}"
                );
                Output(out)
            }
            Self::Task { task, out } => {
                wait_for("the client to return", || {
                    let returned = task.0.is_finished();
                    async move { returned }
                })
                .await;
                Output(out.lock().unwrap().clone())
            }
        }
    }
}

/// What a client printed.
struct Output(String);

impl Output {
    /// (type, envelope) of each event it handled, in order.
    fn events(&self) -> Vec<(String, Value)> {
        self.0
            .lines()
            .filter_map(|line| line.strip_prefix("EVENT "))
            .map(|rest| {
                let (kind, envelope) = rest.split_once(' ').expect("EVENT <type> <envelope>");
                let envelope = serde_json::from_str(envelope).expect("an envelope");
                (kind.to_owned(), envelope)
            })
            .collect()
    }

    /// (type, id) of each event it handled.
    fn ids(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .map(|(kind, envelope)| (kind, envelope["id"].as_str().unwrap().to_owned()))
            .collect()
    }

    fn has(&self, id: &str) -> bool {
        self.ids().iter().any(|(_, i)| i == id)
    }

    /// The status it gave up on, as it printed it.
    fn refused(&self) -> Option<&str> {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix("REFUSED "))
            .map(str::trim)
    }
}

/// (type, id) of events as published.
fn expected(ids: &[String]) -> Vec<(String, String)> {
    ids.iter().map(|id| (TYPE.to_owned(), id.clone())).collect()
}

/// A second herald on the same database, in this process, that publishes
/// with a backend's token: what it stores is in the gap of the first.
async fn publisher(db: &Arc<TestDb>) -> TestApp {
    let mut config = test_config(&db.url);
    config.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
    spawn_on(db.clone(), config)
        .await
        .with_bearer(&backend_token())
}

/// Publishes `n` events of [`TYPE`] to `topic`; returns their ids.
async fn publish(app: &TestApp, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let res = app
            .publish(&json!({"topic": topic, "type": TYPE, "data": {"n": i}}))
            .await;
        assert_eq!(res.status(), 201, "publish");
        let stored: Value = res.json().await.unwrap();
        ids.push(stored["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// A reader's token for `topic`, valid for an hour.
fn reader(topic: &str) -> String {
    token("reader", &[topic], &[], Duration::from_secs(3600))
}

/// The streams herald answered `200` whose opening frame reached the
/// client.
fn opened(connections: &[Connection]) -> Vec<&Connection> {
    connections
        .iter()
        .filter(|c| c.opening_frame_passed())
        .collect()
}

/// Waits until the client has tried twice in vain while herald is down
/// (connections from the `since`th on, left without an answer): it keeps
/// trying, rather than giving up after a failed reconnect.
async fn tried_in_vain(tap: &Tap, since: usize) {
    tap.wait("two reconnect attempts while herald is down", |c| {
        c[since..].iter().filter(|c| c.status().is_none()).count() >= 2
    })
    .await;
}

/// How herald goes away between two of a client's connections.
#[derive(Clone, Copy)]
enum Down {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a deploy.
    Stop,
}

/// What happened while herald was away and once it was back.
struct Back {
    /// The ids published while herald was down.
    gap: Vec<String>,
    /// The id published once the client was back.
    live: Vec<String>,
    /// Every connection the tap saw.
    connections: Vec<Connection>,
    /// herald, back on its port; stops when dropped.
    _herald: HeraldProcess,
}

/// herald goes down; `n` events are published while it is, and the
/// client tries twice in vain; herald comes back on the same port; once
/// the client's stream is open again, one more event is published.
async fn down_and_back(
    herald: HeraldProcess,
    down: Down,
    db: &TestDb,
    tap: &Tap,
    publisher: &TestApp,
    topic: &str,
    n: usize,
) -> Back {
    let since = tap.connections().len();
    let port = match down {
        Down::Kill => herald.kill().await,
        Down::Stop => herald.stop().await,
    };
    let gap = publish(publisher, topic, n).await;
    tried_in_vain(tap, since).await;
    let herald = HeraldProcess::start(&db.url, port).await;
    let connections = tap
        .wait("the client back on herald", |c| opened(c).len() >= 2)
        .await;
    let live = publish(publisher, topic, 1).await;
    Back {
        gap,
        live,
        connections,
        _herald: herald,
    }
}

async fn drop_before_the_first_event(client: Client) {
    let db = Arc::new(TestDb::create().await);
    let herald = HeraldProcess::start(&db.url, unused_port()).await;
    let tap = Tap::start(herald.addr).await;
    let publisher = publisher(&db).await;
    let topic = unique_topic("drop");
    let mut subscriber = client.follow(&tap.stream_url(&topic), &reader(&topic));

    // A fresh stream opens; its opening frame reaches the client, no event.
    let first = tap
        .wait("the stream's opening frame", |c| !opened(c).is_empty())
        .await;
    assert_eq!(
        first[0].request_header("last-event-id"),
        None,
        "a fresh stream"
    );
    assert!(!first[0].event_passed());

    // herald dies; 20 events are published while it is down, and the
    // client keeps trying; herald comes back on the same port.
    let back = down_and_back(herald, Down::Kill, &db, &tap, &publisher, &topic, 20).await;
    let (gap, live, connections) = (back.gap, back.live, back.connections);

    let out = subscriber
        .wait("the event published after the reconnect", |out| {
            out.has(&live[0])
        })
        .await;
    let received = out.ids();
    assert_eq!(
        received,
        expected(&[gap, live].concat()),
        "{client:?} received {} of the 20 events published while herald was down, then the live one; \
         connections:\n{}",
        received.len().saturating_sub(1),
        summary(&connections)
    );
}

async fn restart_with_events_in_the_gap(client: Client) {
    let db = Arc::new(TestDb::create().await);
    let herald = HeraldProcess::start(&db.url, unused_port()).await;
    let tap = Tap::start(herald.addr).await;
    let publisher = publisher(&db).await;
    let topic = unique_topic("restart");
    let mut subscriber = client.follow(&tap.stream_url(&topic), &reader(&topic));
    tap.wait("the stream's opening frame", |c| !opened(c).is_empty())
        .await;
    let before = publish(&publisher, &topic, 3).await;
    subscriber
        .wait("the first events", |out| out.has(&before[2]))
        .await;

    // herald stops as in a deploy; events are published meanwhile, and
    // the client keeps trying; herald comes back on the same port.
    let back = down_and_back(herald, Down::Stop, &db, &tap, &publisher, &topic, 5).await;
    let (gap, live, connections) = (back.gap, back.live, back.connections);

    let out = subscriber
        .wait("the event published after the reconnect", |out| {
            out.has(&live[0])
        })
        .await;
    assert_eq!(
        out.ids(),
        expected(&[before, gap, live].concat()),
        "{client:?}: every event once, in order; connections:\n{}",
        summary(&connections)
    );
}

async fn refusals(client: Client) {
    let app = spawn_app_with_tokens(|_| {}).await;
    let topic = unique_topic("refused");
    let expired = sign(&json!({
        "sub": "reader",
        "exp": time::OffsetDateTime::now_utc().unix_timestamp() - 3600,
        "herald": {"subscribe": [topic], "publish": []},
    }));
    for (token, status) in [(expired, 401), (reader("other:topic"), 403)] {
        let tap = Tap::start(app.addr).await;
        let mut subscriber = client.follow(&tap.stream_url(&topic), &token);

        subscriber
            .wait(&format!("{client:?} to give up on {status}"), |out| {
                out.refused().is_some()
            })
            .await;
        let out = subscriber.ended().await;

        assert_eq!(out.refused(), Some(&*status.to_string()), "{}", out.0);
        let connections = tap.connections();
        assert_eq!(
            connections
                .iter()
                .map(Connection::status)
                .collect::<Vec<_>>(),
            [Some(status)],
            "{client:?}: one request, answered {status}, and no other; connections:\n{}",
            summary(&connections)
        );
    }
    app.stop().await;
}

/// The three claims as tests, in a module per client.
macro_rules! claims {
    ($($name:ident: $client:expr),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn gets_the_20_events_published_after_a_drop_before_its_first_event() {
                drop_before_the_first_event($client).await;
            }

            #[tokio::test]
            async fn gets_every_event_once_in_order_across_a_restart() {
                restart_with_events_in_the_gap($client).await;
            }

            #[tokio::test]
            async fn stops_on_401_and_on_403() {
                refusals($client).await;
            }
        }
    )*};
}

claims! {
    node_eventsource: Client::NodeEventSource,
    fetch_event_source: Client::FetchEventSource,
    sseclient_py: Client::SseclientPy,
    httpx_sse: Client::HttpxSse,
    reqwest_eventsource: Client::ReqwestEventSource,
}
