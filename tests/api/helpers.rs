//! Test harness: a fresh database per test, the app on port 0, a TestApp
//! with one method per endpoint, a raw SSE client that parses frames as the
//! WHATWG spec says, a TCP proxy that can cut PostgreSQL off on purpose, and
//! `wait_for` instead of sleeps.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use herald::{Config, Server};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the test databases are created: the local PostgreSQL unless
/// `HERALD_TEST_DATABASE_URL` points elsewhere (any database on the server;
/// the role must be allowed to CREATE DATABASE).
pub fn admin_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        herald::telemetry::init_tracing(herald::config::LogFormat::Pretty);
    }
}

/// A database of its own for one test; dropped (forcefully) with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "herald_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let mut conn = connect_admin(&admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let base = admin.rsplit_once('/').expect("URL has a path").0;
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The URL of this database reached through another host:port (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = reqwest::Url::parse(&self.url).unwrap();
        url.set_host(Some(&addr.ip().to_string())).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        url.to_string()
    }

    /// A connection straight to this database, for assertions on the log.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .expect("PostgreSQL must be running for the tests (see README)")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Drop runs outside async code: use a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut conn = connect_admin(&admin).await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut conn)
                .await;
            });
        })
        .join();
    }
}

/// The configuration tests start from: short heartbeat, retry and drain so
/// tests that wait for them finish quickly.
pub fn test_config(database_url: &str) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.database_url = database_url.to_owned();
    c.heartbeat = Duration::from_millis(300);
    c.retry = Duration::from_millis(200);
    c.drain = Duration::from_millis(200);
    c.poll_interval = Duration::from_millis(200);
    c.listener_probe = Duration::from_secs(1);
    c.db_timeout = Duration::from_secs(1);
    c
}

/// A running herald and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Dropped last: the app's connections go first.
    pub db: Arc<TestDb>,
}

/// herald on a fresh database with [`test_config`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// herald on a fresh database, with the test configuration adjusted.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db = Arc::new(TestDb::create().await);
    let mut config = test_config(&db.url);
    adjust(&mut config);
    spawn_on(db, config).await
}

/// herald on a given database and configuration (several instances may
/// share one database).
pub async fn spawn_on(db: Arc<TestDb>, config: Config) -> TestApp {
    init_logs();
    let server = Server::build(config).await.expect("herald starts");
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        stop: Some(stop),
        task: Some(task),
        db,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/events` with a JSON body.
    pub async fn publish(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/events"))
            .json(body)
            .send()
            .await
            .expect("publish request")
    }

    /// `POST /v1/events` with an `Idempotency-Key` header.
    pub async fn publish_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/events"))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("publish request")
    }

    /// Publishes one event and returns its id; fails the test unless `201`.
    pub async fn publish_ok(&self, topic: &str, data: Value) -> i64 {
        let res = self
            .publish(&serde_json::json!({"topic": topic, "data": data}))
            .await;
        assert_eq!(res.status(), 201, "publish to {topic}");
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Publishes a batch and returns the ids; fails the test unless `201`.
    pub async fn publish_batch_ok(&self, events: Vec<Value>) -> Vec<i64> {
        let res = self.publish(&Value::Array(events)).await;
        assert_eq!(res.status(), 201, "batch publish");
        let body: Vec<Value> = res.json().await.unwrap();
        body.iter()
            .map(|e| e["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// `POST` with any content type and body.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Opens `GET /v1/stream?{query}` (with `Last-Event-ID` if given) and
    /// fails the test unless it answers `200 text/event-stream`.
    pub async fn stream(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let res = self.stream_response(query, last_event_id).await;
        assert_eq!(res.status(), 200, "stream {query}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        SseClient::new(res)
    }

    pub async fn stream_response(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.get(self.url(&format!("/v1/stream?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.expect("stream request")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The sum of every sample of `name` (all label sets) in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics().await, name)
    }

    /// Stops the server as SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("herald stops in time")
                .expect("server task")
                .expect("server result");
        }
    }

    /// Begins a stop without waiting for it.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not stopped yet")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The sum of every sample of `name` in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One SSE frame as a client sees it (WHATWG HTML §9.2.6), with comments kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl SseFrame {
    /// The parsed `data:` JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data")).expect("data is JSON")
    }

    /// The `id:` as a number.
    pub fn id_num(&self) -> i64 {
        self.id
            .as_deref()
            .expect("frame has id")
            .parse()
            .expect("numeric id")
    }

    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

/// A raw SSE reader over a real HTTP response: it keeps every byte, so
/// tests can assert framing byte for byte and see `: ping` comments, which
/// EventSource-style parsers drop.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    /// Every byte received so far.
    pub raw: Vec<u8>,
    ended: bool,
}

impl SseClient {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// The next frame (blank-line terminated block), or `None` when the
    /// server ended the stream. Fails the test after [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        tokio::time::timeout(WAIT, self.next_frame_inner())
            .await
            .expect("an SSE frame in time")
    }

    /// Like `next_frame` but gives up after `d`, returning `Err(())`.
    pub async fn next_frame_within(&mut self, d: Duration) -> Result<Option<SseFrame>, ()> {
        tokio::time::timeout(d, self.next_frame_inner())
            .await
            .map_err(|_| ())
    }

    async fn next_frame_inner(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                return Some(parse_block(&block[..end.0]));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    /// The next frame that carries data (skipping `retry:` and comments);
    /// `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseFrame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.is_event() {
                return Some(frame);
            }
        }
    }

    /// Exactly `n` event frames; fails the test if the stream ends first.
    pub async fn events(&mut self, n: usize) -> Vec<SseFrame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event().await {
                Some(f) => out.push(f),
                None => panic!("stream ended after {} of {n} events", out.len()),
            }
        }
        out
    }

    /// Reads frames until the server ends the stream; returns them.
    pub async fn until_end(&mut self) -> Vec<SseFrame> {
        let mut out = Vec::new();
        while let Some(f) = self.next_frame().await {
            out.push(f);
        }
        out
    }
}

/// Position of the first blank line: (end of block, end of separator).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some((i, i + sep.len()));
            }
        }
    }
    None
}

fn parse_block(block: &[u8]) -> SseFrame {
    let text = String::from_utf8(block.to_vec()).expect("SSE is UTF-8");
    let mut frame = SseFrame::default();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comments.push(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => {
                frame.data = Some(match frame.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                });
            }
            "retry" => frame.retry = value.parse().ok(),
            _ => {}
        }
    }
    frame
}

/// Waits until `check` returns true, polling every 20 ms; fails the test
/// with `what` after [`WAIT`].
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique topic for one test.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}:t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP proxy in front of PostgreSQL that a test can cut: `cut()` closes
/// every open connection and refuses new ones (as a dead server would),
/// `restore()` lets connections through again.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let cut = cut.clone();
            let conns = conns.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown().await;
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// The local PostgreSQL's address, as the test URL names it.
pub fn postgres_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&admin_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .unwrap()
}

// ----- shared by the publish, idempotency, refusal and outage tests -----

/// `POST /v1/events` with this JSON text as the body, byte for byte
/// (`serde_json::Value` would sort keys and respell `1.50` as `1.5`).
pub async fn post_text(app: &TestApp, body: &str) -> reqwest::Response {
    app.post_raw("/v1/events", Some("application/json"), body.to_owned())
        .await
}

/// Rows in the event log, read straight from PostgreSQL.
pub async fn stored_rows(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(&mut conn)
        .await
        .expect("count events")
}

pub async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(stored_rows(&app.db).await, 0, "rows in the event log");
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history, Vec::<Value>::new(), "history");
}

/// Asserts an RFC 9457 refusal: status, content type, `status`, `code`, and
/// a `detail` that mentions `mentions`. Returns the body.
pub async fn assert_problem(
    res: reqwest::Response,
    status: u16,
    code: &str,
    mentions: &str,
) -> Value {
    assert_eq!(res.status(), status, "status");
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "content type"
    );
    let body: Value = res.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let detail = body["detail"].as_str().expect("detail is a string");
    assert!(
        detail.contains(mentions),
        "detail {detail:?} should mention {mentions:?}"
    );
    body
}

/// The envelope's id, checking that it is a string of a positive integer.
pub fn id_of(envelope: &Value) -> i64 {
    let id: i64 = envelope["id"]
        .as_str()
        .expect("id is a string")
        .parse()
        .expect("id is an integer");
    assert!(id > 0, "id {id} is positive");
    id
}

pub fn assert_rfc3339(envelope: &Value) {
    let time = envelope["time"].as_str().expect("time is a string");
    ::time::OffsetDateTime::parse(time, &::time::format_description::well_known::Rfc3339)
        .expect("time is RFC 3339");
}
