//! The terminal client, `herald publish` and `herald tail`: the real binary
//! run against a test app, judged by what a shell script sees (stdout,
//! stderr, exit status), through a server restart, a cut connection and a
//! reset.

use std::net::SocketAddr;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::helpers::*;

mod admin;
mod publish;
mod start;
mod tail;
mod tls;
mod token;

/// `herald` with no client setting inherited from the environment.
pub(crate) fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in [
        "HERALD_URL",
        "HERALD_TAIL_IDLE_TIMEOUT",
        "HERALD_PUBLISH_TIMEOUT",
        "HERALD_CA_CERT",
        "HERALD_TOKEN",
        "HERALD_JWT_SECRET",
        "HERALD_JWT_SECRET_FILE",
        "HERALD_JWT_AUDIENCE",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `herald ARGS` to its end, with `stdin` as standard input (empty,
/// and not a terminal, when `None`).
pub(crate) async fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = herald()
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herald");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("herald ends in time")
        .expect("herald runs")
}

/// `herald publish --url APP ARGS`.
pub(crate) async fn publish(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["publish", "--url", &app.base];
    all.extend_from_slice(args);
    run(&all, stdin).await
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Exit status 0 and exactly one line on stdout: the envelope, returned.
pub(crate) fn stored(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    let text = stdout(out);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "one line: {text:?}"
    );
    serde_json::from_str(&text).expect("stdout is the JSON envelope")
}

/// Publishes over HTTP (not through the client) and returns the stored
/// envelope's text, which is what `tail --json` must print for it.
pub(crate) async fn publish_text(app: &TestApp, topic: &str, data: Value) -> String {
    let res = app.publish(&json!({"topic": topic, "data": data})).await;
    assert_eq!(res.status(), 201, "publish to {topic}");
    res.text().await.unwrap()
}

pub(crate) fn id_in(envelope_text: &str) -> i64 {
    id_of(&serde_json::from_str(envelope_text).unwrap())
}

/// An address where nothing listens (bound, then released).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A running `herald tail`: its stdout as lines, its stderr collected.
pub(crate) struct Tail {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout_reader: JoinHandle<()>,
    stderr: Arc<Mutex<String>>,
}

impl Tail {
    /// `herald tail --url URL ARGS`, without waiting for it to connect.
    pub(crate) fn start(url: &str, args: &[&str]) -> Self {
        let mut child = herald()
            .args(["tail", "--url", url])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herald tail");
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout is piped");
        let stdout_reader = tokio::spawn(async move {
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr is piped");
        tokio::spawn({
            let stderr = stderr.clone();
            async move {
                let mut err = BufReader::new(err).lines();
                while let Ok(Some(line)) = err.next_line().await {
                    let mut text = stderr.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Self {
            child,
            lines,
            stdout_reader,
            stderr,
        }
    }

    /// `herald tail` once it has its stream: events published from now on
    /// reach it.
    pub(crate) async fn connected(url: &str, args: &[&str]) -> Self {
        let tail = Self::start(url, args);
        tail.wait_stderr("herald: connected to ").await;
        tail
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub(crate) async fn wait_stderr(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} on stderr; it has:\n{}",
                self.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The next line on stdout.
    pub(crate) async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("tail's stdout ended; stderr:\n{}", self.stderr()),
            Err(_) => panic!("no line on stdout in time; stderr:\n{}", self.stderr()),
        }
    }

    pub(crate) async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.line().await);
        }
        out
    }

    /// Sends a signal, as a terminal or a service manager would.
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.id().expect("tail is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Closes the reading end of tail's stdout, as `| head -n 1` does.
    pub(crate) async fn close_stdout(&mut self) {
        self.stdout_reader.abort();
        // Resolves once the task, and the pipe it reads, are dropped.
        let _ = (&mut self.stdout_reader).await;
    }

    pub(crate) async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tail ends in time")
            .expect("wait for tail")
    }
}
