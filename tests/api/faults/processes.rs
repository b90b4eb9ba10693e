//! The real processes these tests start and stop: herald itself, a
//! PostgreSQL cluster of the test's own, and clients that behave like
//! `EventSource`.

use crate::helpers::*;
use bytes::Bytes;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;

/// What the EventSource-like client has done so far.
#[derive(Default)]
pub(crate) struct ClientProgress {
    pub(crate) events: AtomicUsize,
    /// Streams opened, per target.
    pub(crate) connects: Mutex<Vec<usize>>,
}

/// Behaves as `EventSource` does (WHATWG HTML §9.2): when the stream ends or
/// the connection fails it waits the last `retry:` and reconnects with
/// `Last-Event-ID`. It stays on one instance as long as that instance
/// answers, and moves to the next when a request to it fails (the process
/// is gone), as a load balancer would. Returns the event ids once
/// it has the id `last` says (set when the publisher is done).
pub(crate) async fn follow_like_eventsource(
    targets: Vec<Api>,
    query: String,
    last: watch::Receiver<Option<i64>>,
    progress: Arc<ClientProgress>,
) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(45);
    *progress.connects.lock().unwrap() = vec![0; targets.len()];
    // EventSource's default until the server sends `retry:`.
    let mut retry = Duration::from_secs(3);
    let mut target = 0;
    let mut ids: Vec<i64> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the client did not finish in time"
        );
        let res = match targets[target]
            .try_stream(&query, ids.last().copied())
            .await
        {
            Ok(res) => res,
            // Refused, or cut before an answer while the process exits.
            Err(_) if target + 1 < targets.len() => {
                target += 1;
                tokio::time::sleep(retry).await;
                continue;
            }
            Err(e) => panic!("stream request to instance {target} failed: {e}"),
        };
        // Any other answer would make EventSource give up for good.
        assert_eq!(res.status(), 200, "stream answer from instance {target}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        progress.connects.lock().unwrap()[target] += 1;
        let mut sse = SseClient::new(res);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match sse.next_frame_within(left).await {
                Err(()) => panic!("the client did not finish in time"),
                Ok(None) => break,
                Ok(Some(frame)) => frame,
            };
            if let Some(ms) = frame.retry {
                retry = Duration::from_millis(ms);
            }
            if frame.is_event() {
                assert_ne!(frame.event.as_deref(), Some("reset"), "{frame:?}");
                ids.push(frame.id_num());
                progress.events.fetch_add(1, Ordering::SeqCst);
            }
            // Heartbeats bring the client here even when no event comes.
            let want = *last.borrow();
            if want.is_some_and(|want| ids.last().is_some_and(|got| *got >= want)) {
                // Exactly once: no event may follow the last one.
                assert_only_pings_for(&mut sse, TAIL, "the client after the last event").await;
                return ids;
            }
        }
        // The reconnection delay the server asked for.
        tokio::time::sleep(retry).await;
    }
}

// ---------------------------------------------------------------------------
// A stream read to its end
// ---------------------------------------------------------------------------

/// A stream read as raw bytes, to tell a clean end (the chunked body's last
/// chunk) from a cut connection.
pub(crate) struct RawStream {
    pub(crate) res: reqwest::Response,
    pub(crate) raw: Vec<u8>,
}

pub(crate) struct Ended {
    pub(crate) raw: Vec<u8>,
    /// The body ended as HTTP says, not with an error.
    pub(crate) clean: bool,
    pub(crate) at: Instant,
}

impl Ended {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

impl RawStream {
    pub(crate) fn new(res: reqwest::Response) -> Self {
        Self {
            res,
            raw: Vec::new(),
        }
    }

    pub(crate) async fn chunk(&mut self, deadline: Instant) -> reqwest::Result<Option<Bytes>> {
        tokio::time::timeout_at(deadline, self.res.chunk())
            .await
            .expect("the stream did not end in time")
    }

    /// The first blank-line-terminated frame (taken out of `raw`).
    pub(crate) async fn read_frame(&mut self, deadline: Instant) -> Vec<u8> {
        loop {
            if let Some(end) = self.raw.windows(2).position(|w| w == b"\n\n") {
                return self.raw.drain(..end + 2).collect();
            }
            match self.chunk(deadline).await {
                Ok(Some(chunk)) => self.raw.extend_from_slice(&chunk),
                other => panic!("the stream ended before its first frame: {other:?}"),
            }
        }
    }

    /// Reads until the body ends; notes how and when.
    pub(crate) async fn until_end(mut self, deadline: Instant) -> Ended {
        loop {
            match self.chunk(deadline).await {
                Ok(Some(chunk)) => self.raw.extend_from_slice(&chunk),
                end => {
                    return Ended {
                        raw: self.raw,
                        clean: end.is_ok(),
                        at: Instant::now(),
                    };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// herald as a process
// ---------------------------------------------------------------------------

/// A client for one herald instance; cheap to clone.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
}

impl Api {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn publish(&self, topic: &str, data: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/events"))
            .json(&json!({"topic": topic, "data": data}))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .expect("publish request")
    }

    /// Publishes one event and returns its id; fails unless `201`.
    pub(crate) async fn publish_ok(&self, topic: &str, data: Value) -> i64 {
        let res = self.publish(topic, data).await;
        assert_eq!(res.status(), 201, "publish to {topic}");
        stored_id(res).await
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let res = self.client.get(self.url("/metrics")).send();
        res.await.expect("metrics request").text().await.unwrap()
    }

    /// `/readyz` status and body; `None` if the instance does not answer.
    pub(crate) async fn readyz(&self) -> Option<(u16, Value)> {
        let res = self
            .client
            .get(self.url("/readyz"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        Some((status, res.json().await.ok()?))
    }

    pub(crate) async fn wait_ready(&self) {
        wait_for("herald to be ready", || async {
            self.readyz().await.is_some_and(|(status, _)| status == 200)
        })
        .await;
    }

    /// `GET /v1/stream?{query}`, with `Last-Event-ID` if given.
    pub(crate) async fn try_stream(
        &self,
        query: &str,
        last_event_id: Option<i64>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self.client.get(self.url(&format!("/v1/stream?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        tokio::time::timeout(REQUEST_TIMEOUT, req.send())
            .await
            .expect("the stream's head in time")
    }

    pub(crate) async fn stream_request(
        &self,
        query: &str,
        last_event_id: Option<i64>,
    ) -> reqwest::Response {
        self.try_stream(query, last_event_id)
            .await
            .expect("stream request")
    }

    /// A stream that must answer `200 text/event-stream`.
    pub(crate) async fn open_stream(&self, query: &str, last_event_id: Option<i64>) -> SseClient {
        let res = self.stream_request(query, last_event_id).await;
        assert_eq!(res.status(), 200, "stream {query}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        SseClient::new(res)
    }
}

/// The `herald` binary on port 0, killed when dropped.
pub(crate) struct HeraldProcess {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) api: Api,
    /// Every stderr line so far, for failure messages.
    pub(crate) logs: Arc<Mutex<Vec<String>>>,
}

impl HeraldProcess {
    /// Starts herald with the test flags plus `extra`, and waits for its
    /// "herald is serving" line to learn the address.
    pub(crate) async fn start(database_url: &str, extra: &[&str]) -> Self {
        Self::start_with_env(database_url, extra, &[("RUST_LOG", "info")]).await
    }

    /// As [`Self::start`], with environment variables of its own (set after
    /// the environment's `HERALD_*` ones are removed).
    pub(crate) async fn start_with_env(
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_herald")),
            database_url,
            extra,
            env,
        )
        .await
    }

    /// As [`Self::start`], under limits of `soft` and `hard` open files
    /// (util-linux's `prlimit`, which then runs herald in its place).
    pub(crate) async fn start_with_file_limits(
        database_url: &str,
        extra: &[&str],
        soft: u64,
        hard: u64,
    ) -> Self {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_herald"));
        Self::spawn(command, database_url, extra, &[("RUST_LOG", "info")]).await
    }

    async fn spawn(
        mut command: Command,
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        command
            .args(["--listen", "127.0.0.1:0"])
            // JSON lines unless the test asks for another format.
            .args(if extra.contains(&"--log-format") {
                &[][..]
            } else {
                &["--log-format", "json"][..]
            })
            .args(["--database-url", database_url])
            .args(["--heartbeat", "300ms", "--retry", "200ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Only the flags above configure it, whatever the environment says.
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") || name == "DATABASE_URL" {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start the herald binary");
        let pid = child.id().expect("a running child has a pid");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let address = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = serving_address(&line);
                logs.lock().unwrap().push(line);
                if address.is_some() {
                    return address;
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(address) = address else {
            panic!(
                "herald did not start serving; its log:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        // Keep reading, so a full pipe never blocks herald's logging.
        tokio::spawn({
            let logs = logs.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        // A test on a PostgreSQL server of its own makes no `TestDb`, which
        // would otherwise have installed the TLS provider reqwest needs.
        init_crypto();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            child,
            pid,
            api: Api {
                base: format!("http://{address}"),
                client,
            },
            logs,
        }
    }

    /// SIGKILL: the process dies at once, its sockets close.
    pub(crate) async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL herald");
        self.wait_exit(WAIT).await;
    }

    /// SIGTERM: the process begins its drain.
    pub(crate) fn sigterm(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.pid);
    }

    /// Waits for the process to exit; fails after `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for herald"),
            Err(_) => panic!(
                "herald did not exit within {timeout:?}; its log:\n{}",
                self.logs()
            ),
        }
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// The `address` of the JSON line "herald is serving".
/// The `address` of the line "herald is serving", in JSON or pretty form.
pub(crate) fn serving_address(line: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        if v["message"] != "herald is serving" {
            return None;
        }
        return v["address"].as_str().map(str::to_owned);
    }
    if !line.contains("herald is serving") {
        return None;
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------
// A PostgreSQL server of the test's own
// ---------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster (initdb into a temp dir, its own port) that
/// a test may stop and start; removed when dropped.
pub(crate) struct PgCluster {
    /// Holds `data/`, the socket and the server log; owned by `postgres`.
    pub(crate) dir: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) port: u16,
}

impl PgCluster {
    /// A new cluster, running.
    pub(crate) async fn init() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-faults-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        // From here on, Drop removes the directory whatever fails.
        let cluster = Self {
            dir,
            bin: postgres_bin_dir(),
            port: free_port(),
        };
        let chown = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&cluster.dir)
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown the cluster directory to postgres");
        let data = cluster.data_dir();
        cluster
            .run_as_postgres(
                "initdb",
                &[
                    "-D",
                    &data,
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        cluster.start().await;
        cluster
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/herald", self.port)
    }

    pub(crate) fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        // `-l`: the server's output goes to a file, not to a pipe we hold.
        let log = self.dir.join("server.log").display().to_string();
        let data = self.data_dir();
        let args = [
            "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30", "start",
        ];
        self.run_as_postgres("pg_ctl", &args).await;
    }

    /// Stops the server (fast: sessions are ended) and waits until it is down.
    pub(crate) async fn stop(&self) {
        let data = self.data_dir();
        let args = ["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"];
        self.run_as_postgres("pg_ctl", &args).await;
    }

    pub(crate) async fn run_as_postgres(&self, tool: &str, args: &[&str]) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(tool))
                .args(args)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish in time"))
        .unwrap_or_else(|e| panic!("run {tool} as postgres: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/lib/postgresql/<newest version>/bin`.
pub(crate) fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL version under /usr/lib/postgresql");
    root.join(newest.to_string()).join("bin")
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
