//! Test harness: a fresh database per test, the app on port 0, a TestApp
//! with one method per endpoint, a raw SSE client that parses frames as the
//! WHATWG spec says, a TCP proxy that can cut PostgreSQL off on purpose, and
//! `wait_for` instead of sleeps.

#![allow(dead_code)]

mod chaos;
mod problems;
mod sse;
mod tokens;

pub use chaos::*;
pub use problems::*;
pub use sse::*;
pub use tokens::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald::{Config, Instance};
use serde_json::Value;
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
        let export = herald::telemetry::otel::Export::Off;
        let _ = herald::telemetry::init_tracing(herald::config::LogFormat::Pretty, &export);
    }
}

/// Installs ring as the process's TLS crypto provider. reqwest is built
/// with TLS but no provider of its own (`rustls-no-provider`, see
/// Cargo.toml), so a client built without a TLS config (as the tests build
/// theirs) panics unless one is installed first. Every test starts with a
/// database or an app, and both call this.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A database of its own for one test; dropped (forcefully) with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        init_crypto();
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

/// `--db-timeout` of most tests: far above any stall of a loaded machine.
/// At 1 s, CI runs of the whole suite (tests, browsers and PostgreSQL
/// sharing two cores) now and then answered a publish `503` in tests about
/// something else: true answers, since the request had waited out its
/// deadline, but not what those tests are about.
pub const TEST_DB_TIMEOUT: Duration = Duration::from_secs(10);

/// `--db-timeout` of the tests about the database failing (cut, frozen,
/// slow, locked): short, so that a test waiting for a `503` waits a second.
pub const FAULT_DB_TIMEOUT: Duration = Duration::from_secs(1);

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
    c.db_timeout = TEST_DB_TIMEOUT;
    c
}

/// [`test_config`] for a test about the database failing
/// ([`FAULT_DB_TIMEOUT`]).
pub fn fault_config(database_url: &str) -> Config {
    let mut c = test_config(database_url);
    c.db_timeout = FAULT_DB_TIMEOUT;
    c
}

/// Which of herald's two stream writers a test's requests reach: HTTP/1.1
/// streams are written straight to the socket, HTTP/2 ones (with prior
/// knowledge, as a proxy speaking h2c would) through hyper and axum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Http1,
    Http2,
}

impl Writer {
    pub fn client(self) -> reqwest::Client {
        let builder = reqwest::Client::builder().pool_max_idle_per_host(0);
        match self {
            Self::Http1 => builder.http1_only(),
            Self::Http2 => builder.http2_prior_knowledge(),
        }
        .build()
        .unwrap()
    }
}

/// Runs the async test function `NAME(writer: Writer)` twice, as
/// `NAME::http1` and `NAME::http2` (a function and a module may share a
/// name), so that both stream writers answer it.
macro_rules! over_both_writers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn http1() {
                super::$name($crate::helpers::Writer::Http1).await;
            }

            #[tokio::test]
            async fn http2() {
                super::$name($crate::helpers::Writer::Http2).await;
            }
        }
    )*};
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
    init_crypto();
    let server = Instance::build(config).await.expect("herald starts");
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
    /// This app with a client that reaches the given stream writer.
    #[must_use]
    pub fn over(mut self, writer: Writer) -> Self {
        self.client = writer.client();
        self
    }

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
