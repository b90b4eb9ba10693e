//! Running client scripts as child processes, and a second web origin for
//! the pages that talk to herald across origins.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::repo;
use crate::helpers::WAIT;

/// The longest any client script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `node tests/browser/<script>`, after checking its dependencies are there.
pub(super) fn node(script: &str) -> Command {
    let dir = repo().join("tests/browser");
    assert!(
        [
            "playwright-core",
            "eventsource",
            "@microsoft/fetch-event-source",
            "esbuild",
            "typescript",
        ]
        .iter()
        .all(|package| dir.join("node_modules").join(package).is_dir()),
        "the Node clients are not installed: run `npm ci --prefix tests/browser` (.ci/run does)"
    );
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        chromium.exists(),
        "no Chromium at {}: `apt-get install --no-install-recommends chromium` (.ci/run does)",
        chromium.display()
    );
    let mut c = Command::new("node");
    c.arg(script).current_dir(dir);
    c
}

/// `python3 <script>` from the repository root.
pub(super) fn python(script: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(script).current_dir(repo());
    c
}

/// Runs a client to its end; fails with its output unless it exits 0.
/// Returns its standard output.
pub(super) async fn run_ok(command: &mut Command) -> String {
    let what = format!("{:?}", command.as_std());
    let (status, stdout, stderr) = Running::spawn(command).finish(SCRIPT_TIMEOUT).await;
    assert!(
        status.success(),
        "{what} exited with {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    println!("{stdout}");
    stdout
}

/// A child process in a process group of its own (so whatever it starts
/// goes with it), its output collected as it arrives.
pub(super) struct Running {
    child: tokio::process::Child,
    pgid: u32,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    pub(super) fn spawn(command: &mut Command) -> Self {
        command.stdin(Stdio::null());
        Self::start(command)
    }

    /// As [`Self::spawn`], with standard input to write to (a shell that
    /// reads commands as a user types them).
    pub(super) fn spawn_with_stdin(command: &mut Command) -> (Self, tokio::process::ChildStdin) {
        command.stdin(Stdio::piped());
        let mut running = Self::start(command);
        let stdin = running.child.stdin.take().expect("stdin is piped");
        (running, stdin)
    }

    fn start(command: &mut Command) -> Self {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.as_std()));
        let pgid = child.id().expect("a running child has a pid");
        let stdout: Arc<Mutex<Vec<u8>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            pgid,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until standard output satisfies `done`; returns it.
    pub(super) async fn wait_stdout(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.wait(what, |p| done(&p.stdout())).await;
        self.stdout()
    }

    /// Waits until standard error satisfies `done`; returns it.
    pub(super) async fn wait_stderr(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.wait(what, |p| done(&p.stderr())).await;
        self.stderr()
    }

    async fn wait(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                let why = exited.map_or("timed out".to_owned(), |s| format!("exited with {s}"));
                panic!(
                    "waiting for {what}: {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the exit; kills the group and fails after `timeout`.
    /// Returns the status, standard output and standard error.
    pub(super) async fn finish(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => {
                self.kill();
                panic!(
                    "still running after {timeout:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        (status, self.stdout(), self.stderr())
    }

    /// Sends `signal` (`-TERM`, `-KILL`) to the whole process group.
    pub(super) fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }

    pub(super) fn kill(&self) {
        self.signal("-KILL");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn collect(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// A web server on an origin other than herald's: a blank page at `/` for
/// scripts to run in, and `examples/browser.html`.
pub(super) struct OtherOrigin {
    port: u16,
    task: JoinHandle<()>,
}

impl OtherOrigin {
    pub(super) async fn start() -> Self {
        let site = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|| async {
                    Html("<!doctype html><meta charset=\"utf-8\"><title>another origin</title>")
                }),
            )
            .route(
                "/browser.html",
                axum::routing::get(|| async {
                    Html(include_str!("../../../examples/browser.html"))
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, site).await;
        });
        Self { port, task }
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for OtherOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
