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

/// `herald` with no client setting inherited from the environment.
fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in [
        "HERALD_URL",
        "HERALD_TAIL_IDLE_TIMEOUT",
        "HERALD_PUBLISH_TIMEOUT",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `herald ARGS` to its end, with `stdin` as standard input (empty,
/// and not a terminal, when `None`).
async fn run(args: &[&str], stdin: Option<&str>) -> Output {
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
async fn publish(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["publish", "--url", &app.base];
    all.extend_from_slice(args);
    run(&all, stdin).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Exit status 0 and exactly one line on stdout: the envelope, returned.
fn stored(out: &Output) -> Value {
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
async fn publish_text(app: &TestApp, topic: &str, data: Value) -> String {
    let res = app.publish(&json!({"topic": topic, "data": data})).await;
    assert_eq!(res.status(), 201, "publish to {topic}");
    res.text().await.unwrap()
}

fn id_in(envelope_text: &str) -> i64 {
    id_of(&serde_json::from_str(envelope_text).unwrap())
}

/// An address where nothing listens (bound, then released).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A running `herald tail`: its stdout as lines, its stderr collected.
struct Tail {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout_reader: JoinHandle<()>,
    stderr: Arc<Mutex<String>>,
}

impl Tail {
    /// `herald tail --url URL ARGS`, without waiting for it to connect.
    fn start(url: &str, args: &[&str]) -> Self {
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
    async fn connected(url: &str, args: &[&str]) -> Self {
        let tail = Self::start(url, args);
        tail.wait_stderr("herald: connected to ").await;
        tail
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    async fn wait_stderr(&self, needle: &str) {
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
    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("tail's stdout ended; stderr:\n{}", self.stderr()),
            Err(_) => panic!("no line on stdout in time; stderr:\n{}", self.stderr()),
        }
    }

    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.line().await);
        }
        out
    }

    /// Sends a signal, as a terminal or a service manager would.
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("tail is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Closes the reading end of tail's stdout, as `| head -n 1` does.
    async fn close_stdout(&mut self) {
        self.stdout_reader.abort();
        // Resolves once the task, and the pipe it reads, are dropped.
        let _ = (&mut self.stdout_reader).await;
    }

    async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tail ends in time")
            .expect("wait for tail")
    }
}

// ----- publish -----

#[tokio::test]
async fn publish_prints_the_stored_envelope_and_keeps_json_data_as_typed() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let out = publish(&app, &[&topic, r#"{"b": 1, "a": [1.50]}"#], None).await;

    let envelope = stored(&out);
    assert_eq!(envelope["topic"], topic.as_str());
    assert_eq!(envelope["type"], "message");
    assert_rfc3339(&envelope);
    // Key order and number spelling as typed; only white space removed.
    assert!(
        stdout(&out).contains(r#""data":{"b":1,"a":[1.50]}"#),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out), "");
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history, [envelope]);
}

#[tokio::test]
async fn publish_sends_text_that_is_not_json_as_a_string() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let text = stored(&publish(&app, &[&topic, "disk full"], None).await);
    let number = stored(&publish(&app, &[&topic, "-42"], None).await);

    assert_eq!(text["data"], "disk full");
    assert_eq!(number["data"], -42);
}

#[tokio::test]
async fn publish_reads_data_from_stdin() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");

    let dash = stored(&publish(&app, &[&topic, "-"], Some("{\n  \"x\": 1\n}\n")).await);
    let implicit = stored(&publish(&app, &[&topic], Some("line 1\nline 2\n")).await);
    let empty = stored(&publish(&app, &[&topic], None).await);

    assert_eq!(dash["data"], json!({"x": 1}));
    assert_eq!(implicit["data"], "line 1\nline 2");
    assert_eq!(empty["data"], Value::Null);
}

#[tokio::test]
async fn publish_sets_the_type_and_a_repeated_key_returns_the_original() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let args = [
        topic.as_str(),
        "--type",
        "deploy.done",
        "--key",
        "deploy-4711",
    ];

    let first = publish(&app, &[&args[..], &["\"v1\""]].concat(), None).await;
    let again = publish(&app, &[&args[..], &["\"v2\""]].concat(), None).await;

    let envelope = stored(&first);
    assert_eq!(envelope["type"], "deploy.done");
    assert_eq!(envelope["data"], "v1");
    assert_eq!(stored(&again), envelope, "the original event");
    assert_eq!(stdout(&again), stdout(&first));
    assert!(
        stderr(&again).contains("already stored"),
        "{}",
        stderr(&again)
    );
    assert_eq!(stored_rows(&app.db).await, 1);
}

#[tokio::test]
async fn publish_refusal_exits_1_with_the_problem_detail_on_stderr() {
    let app = spawn_app().await;

    let bad_topic = publish(&app, &["bad topic", "1"], None).await;
    let reserved = publish(&app, &["ok", "--type", "reset", "1"], None).await;

    assert_eq!(bad_topic.status.code(), Some(1));
    assert_eq!(stdout(&bad_topic), "");
    assert!(
        stderr(&bad_topic).starts_with("herald: topic \"bad topic\" is invalid: "),
        "{}",
        stderr(&bad_topic)
    );
    assert_eq!(stderr(&bad_topic).lines().count(), 1);
    assert_eq!(reserved.status.code(), Some(1));
    assert!(
        stderr(&reserved).starts_with("herald: event type \"reset\" is reserved"),
        "{}",
        stderr(&reserved)
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn publish_to_an_unreachable_server_exits_3_with_one_clear_line() {
    let addr = closed_port().await;

    let out = run(
        &["publish", "--url", &format!("http://{addr}"), "alerts", "x"],
        None,
    )
    .await;

    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "herald: cannot connect to http://{addr}/v1/events: "
        )),
        "{err}"
    );
    assert!(err.contains("HERALD_URL"), "{err}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["publish"][..],
        &["--listen", "127.0.0.1:1", "tail"],
        &["tail", "--url", "ftp://example.com"],
        &["tail", "--no-such-flag"],
    ] {
        let out = run(args, None).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{args:?}");
    }
}

// ----- tail -----

#[tokio::test]
async fn tail_json_prints_exactly_the_envelopes_of_matching_events_in_order() {
    let app = spawn_app().await;
    let prefix = unique_topic("cli");
    let (a, b, other) = (
        format!("{prefix}:a"),
        format!("{prefix}/b"),
        unique_topic("other"),
    );
    let mut tail = Tail::connected(&app.base, &["--json", &format!("{prefix}:*"), &b]).await;

    let mut expected = vec![publish_text(&app, &a, json!({"n": 1})).await];
    publish_text(&app, &other, json!("not for this tail")).await;
    expected.push(publish_text(&app, &b, json!("two")).await);
    expected.push(publish_text(&app, &a, json!([3, 1.50])).await);

    assert_eq!(tail.lines(3).await, expected);
    assert!(!tail.stderr().contains("reconnect"), "{}", tail.stderr());
}

#[tokio::test]
async fn tail_prints_one_plain_line_per_event_when_stdout_is_not_a_terminal() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&app.base, &[&topic]).await;

    let res = app
        .publish(&json!({"topic": topic, "type": "incident.updated", "data": {"status": "open"}}))
        .await;
    let id = id_of(&res.json().await.unwrap());

    let line = tail.line().await;
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(fields[0], format!("#{id}"), "{line:?}");
    let clock = fields[1].as_bytes();
    assert!(
        clock.len() == 8 && clock[2] == b':' && clock[5] == b':',
        "HH:MM:SS in {line:?}"
    );
    assert_eq!(
        fields[2..],
        [topic.as_str(), "incident.updated", r#"{"status":"open"}"#]
    );
    assert!(!line.contains('\x1b'), "no colour off a terminal: {line:?}");
}

#[tokio::test]
async fn tail_resumes_from_the_last_id_after_the_server_restarts() {
    let a = spawn_app().await;
    let (addr, db) = (a.addr, a.db.clone());
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&a.base, &["--json", &topic]).await;
    let first = publish_text(&a, &topic, json!(1)).await;
    assert_eq!(tail.line().await, first);

    a.stop().await;
    tail.wait_stderr(&format!("reconnecting from id {}…", id_in(&first)))
        .await;
    // While nothing listens on that port, another instance stores an event.
    let other = spawn_on(db.clone(), test_config(&db.url)).await;
    let missed = publish_text(&other, &topic, json!(2)).await;
    let mut config = test_config(&db.url);
    config.listen = addr;
    let b = spawn_on(db.clone(), config).await;
    let live = publish_text(&b, &topic, json!(3)).await;

    assert_eq!(tail.lines(2).await, [missed, live]);
    tail.wait_stderr("herald: reconnected").await;
    // Nothing came twice: the next line is the next event.
    let last = publish_text(&b, &topic, json!(4)).await;
    assert_eq!(tail.line().await, last);
}

#[tokio::test]
async fn tail_resumes_from_the_last_id_after_the_connection_is_cut() {
    let app = spawn_app().await;
    let proxy = ChaosProxy::start(app.addr).await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&format!("http://{}", proxy.addr), &["--json", &topic]).await;
    let first = publish_text(&app, &topic, json!(1)).await;
    assert_eq!(tail.line().await, first);

    proxy.cut();
    tail.wait_stderr(&format!("reconnecting from id {}…", id_in(&first)))
        .await;
    let missed = vec![
        publish_text(&app, &topic, json!(2)).await,
        publish_text(&app, &topic, json!(3)).await,
    ];
    proxy.restore();

    assert_eq!(tail.lines(2).await, missed);
    tail.wait_stderr("herald: reconnected").await;
    let last = publish_text(&app, &topic, json!(4)).await;
    assert_eq!(tail.line().await, last);
    let err = tail.stderr();
    assert_eq!(err.matches("connection lost").count(), 1, "{err}");
}

#[tokio::test]
async fn tail_keeps_trying_until_the_server_is_up() {
    let addr = closed_port().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::start(&format!("http://{addr}"), &["--json", &topic]);
    tail.wait_stderr(&format!(
        "herald: cannot connect to http://{addr}/v1/stream"
    ))
    .await;
    tail.wait_stderr("; retrying in 1s, backing off up to 10s")
        .await;

    let app = spawn_app_with(|c| c.listen = addr).await;
    tail.wait_stderr("herald: connected to ").await;
    let event = publish_text(&app, &topic, json!("up")).await;

    assert_eq!(tail.line().await, event);
}

#[tokio::test]
async fn tail_reports_a_reset_on_stderr_and_goes_on() {
    let a = spawn_app().await;
    let addr = a.addr;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&a.base, &["--json", &topic]).await;
    for n in 0..3 {
        publish_text(&a, &topic, json!(n)).await;
    }
    tail.lines(3).await;

    // The server comes back on an empty database: id 3 means nothing there.
    a.stop().await;
    let b = spawn_app_with(|c| c.listen = addr).await;
    tail.wait_stderr("herald: reset: id 3 is newer than any this server has assigned")
        .await;
    let event = publish_text(&b, &topic, json!("after the reset")).await;

    assert_eq!(tail.line().await, event);
    assert!(!tail.stderr().contains("\"reason\""), "{}", tail.stderr());
}

#[tokio::test]
async fn tail_refusal_exits_1_with_the_problem_detail() {
    let app = spawn_app().await;

    let out = run(&["tail", "--url", &app.base, "bad filter"], None).await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).ends_with(
            "herald: topic filter \"bad filter\" is invalid: an exact topic, or a topic prefix ending in '*'\n"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn tail_ends_with_status_0_on_sigint_and_sigterm() {
    let app = spawn_app().await;
    for signal in ["INT", "TERM"] {
        let mut tail = Tail::connected(&app.base, &[]).await;

        tail.signal(signal);

        assert_eq!(tail.exit_status().await.code(), Some(0), "SIG{signal}");
    }
}

#[tokio::test]
async fn tail_ends_with_status_0_when_its_reader_goes_away() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let mut tail = Tail::connected(&app.base, &[&topic]).await;

    tail.close_stdout().await;
    publish_text(&app, &topic, json!(1)).await;

    assert_eq!(
        tail.exit_status().await.code(),
        Some(0),
        "{}",
        tail.stderr()
    );
}
