//! The README's "Try it with curl" lines, run exactly as written.

use serde_json::{Value, json};
use tokio::process::Command;

use super::repo;
use super::run::{Running, run_ok};
use crate::helpers::*;

/// Runs every command of the README's "Try it with curl" section through
/// `sh -c`, unchanged, against herald started as the README's quick start
/// does (all defaults: 127.0.0.1:8080, `retry: 3000`, 15 s heartbeat) on a
/// fresh database, so ids start at 1 as the README shows.
#[tokio::test]
async fn readme_curl_lines_work_exactly_as_written() {
    let _port = PORT_8080.lock().await;
    let section = ReadmeCurl::parse();
    let herald = DefaultHerald::start().await;

    // Subscribe: the stream opens with the frame the README shows.
    let mut subscriber = Running::spawn(&mut sh(&section.subscribe));
    let opening = subscriber
        .wait_stdout("the stream to open", |out| out.ends_with("\n\n"))
        .await;
    assert_eq!(opening, section.stream_opening, "the stream's first frame");

    // Publish: the answer and the subscriber's frame are the README's, but
    // for the commit time.
    let answer = run_ok(&mut sh(&section.publish)).await;
    let stored: Value = serde_json::from_str(&answer).expect("publish answers JSON");
    let time = stored["time"].as_str().expect("a commit time").to_owned();
    assert_rfc3339(&stored);
    let readme_answer: Value = serde_json::from_str(&section.publish_answer).unwrap();
    let readme_time = readme_answer["time"].as_str().unwrap();
    assert_eq!(
        answer.trim_end(),
        section
            .publish_answer
            .trim_end()
            .replace(readme_time, &time),
        "the publish answer"
    );
    let frame = section.subscriber_frame.replace(readme_time, &time);
    let seen = subscriber
        .wait_stdout("the published event on the stream", |out| {
            out.len() >= opening.len() + frame.len()
        })
        .await;
    assert_eq!(
        &seen[opening.len()..],
        frame,
        "the frame the subscriber sees"
    );

    // A batch with an idempotency key; sent twice, it is stored once.
    let batch: Value = serde_json::from_str(&run_ok(&mut sh(&section.batch)).await).unwrap();
    assert_eq!(
        summary(&batch),
        json!([
            ["2", "incident:inc-123", "message", "first"],
            ["3", "incident:inc-124", "message", "second"]
        ])
    );
    let again: Value = serde_json::from_str(&run_ok(&mut sh(&section.batch)).await).unwrap();
    assert_eq!(again, batch, "repeating the batch returns the same events");
    subscriber
        .wait_stdout("the batch on the stream", |out| out.contains("id: 3\n"))
        .await;

    // Resume after id 1 (header, then query parameter), and since 10m.
    for (command, ids) in [
        (&section.resume_header, vec!["2", "3"]),
        (&section.resume_query, vec!["2", "3"]),
        (&section.since, vec!["1", "2", "3"]),
    ] {
        let mut stream = Running::spawn(&mut sh(command));
        let last = format!("id: {}\n", ids.last().unwrap());
        let out = stream
            .wait_stdout(command, |out| out.contains(&last) && out.ends_with("\n\n"))
            .await;
        assert!(out.starts_with("retry: 3000\n"), "{command}:\n{out}");
        assert_eq!(frame_ids(&out), ids, "{command}:\n{out}");
        stream.kill();
    }

    // History: the same three envelopes as JSON.
    let history: Value =
        serde_json::from_str(&run_ok(&mut sh(&section.history)).await).expect("history is JSON");
    let mut expected = vec![stored];
    expected.extend(batch.as_array().unwrap().iter().cloned());
    assert_eq!(history, Value::Array(expected), "history");

    // "when nothing happens for 15 s, a `: ping` comment", and the
    // subscriber saw each event once.
    let out = subscriber
        .wait_stdout("a ping after 15 s of quiet", |out| {
            out.ends_with(": ping\n\n")
        })
        .await;
    assert_eq!(frame_ids(&out), ["1", "2", "3"], "{out}");
    subscriber.kill();
    herald.stop().await;
}

/// The commands and shown outputs of the README's "Try it with curl".
struct ReadmeCurl {
    subscribe: String,
    stream_opening: String,
    publish: String,
    publish_answer: String,
    subscriber_frame: String,
    batch: String,
    resume_header: String,
    resume_query: String,
    since: String,
    history: String,
}

impl ReadmeCurl {
    fn parse() -> Self {
        let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
        let start = readme
            .find("\n## Try it with curl\n")
            .expect("README has a \"Try it with curl\" section");
        let rest = &readme[start + 1..];
        let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
        let (commands, outputs) = commands_and_outputs(section);
        let shape = "README \"Try it with curl\" changed shape: expected commands subscribe, \
                     publish, batch, resume (header), resume (query), since, history and outputs \
                     stream opening, publish answer, subscriber frame; update tests/api/clients/readme.rs";
        let [
            subscribe,
            publish,
            batch,
            resume_header,
            resume_query,
            since,
            history,
        ] = <[String; 7]>::try_from(commands).unwrap_or_else(|c| panic!("{shape}: {c:#?}"));
        let [stream_opening, publish_answer, subscriber_frame] =
            <[String; 3]>::try_from(outputs).unwrap_or_else(|o| panic!("{shape}: {o:#?}"));
        for (command, marker) in [
            (&subscribe, "curl -N"),
            (&publish, "-d '{"),
            (&batch, "Idempotency-Key"),
            (&resume_header, "Last-Event-ID: 1"),
            (&resume_query, "last_event_id=1"),
            (&since, "since="),
            (&history, "/v1/events?after=0"),
        ] {
            assert!(command.contains(marker), "{shape}: {command:?}");
        }
        Self {
            subscribe,
            stream_opening,
            publish,
            publish_answer,
            subscriber_frame,
            batch,
            resume_header,
            resume_query,
            since,
            history,
        }
    }
}

/// The README's examples name 127.0.0.1:8080: the tests that run them take
/// turns.
pub(super) static PORT_8080: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The README section under `heading` (up to the next heading of its level).
pub(super) fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has a {heading:?} section"));
    let rest = &readme[start + 1..];
    let level = heading.split(' ').next().unwrap();
    let end = rest[heading.len()..]
        .find(&format!("\n{level} "))
        .map_or(rest.len(), |i| i + heading.len());
    rest[..end].to_owned()
}

/// The fenced code blocks of Markdown text: (info string, content).
pub(super) fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The shell commands of a README section (its `sh` blocks) and the
/// outputs it shows (its plain and `json` blocks), in order.
fn commands_and_outputs(section: &str) -> (Vec<String>, Vec<String>) {
    let blocks = fenced_blocks(section);
    let commands = blocks
        .iter()
        .filter(|(lang, _)| lang == "sh")
        .flat_map(|(_, text)| shell_commands(text))
        .collect();
    let outputs = blocks
        .into_iter()
        .filter(|(lang, _)| lang.is_empty() || lang == "json")
        .map(|(_, text)| text)
        .collect();
    (commands, outputs)
}

/// The commands of a `sh` block, a backslash-continued line kept whole.
pub(super) fn shell_commands(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        current.push_str(line);
        if line.ends_with('\\') {
            current.push('\n');
        } else {
            if !current.trim().is_empty() {
                commands.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    commands
}

/// The `id:` of every event (a frame with data) in raw SSE text, in order.
pub(super) fn frame_ids(sse: &str) -> Vec<&str> {
    sse.split("\n\n")
        .filter(|frame| frame.lines().any(|l| l.starts_with("data:")))
        .filter(|frame| !frame.lines().any(|l| l == "event: stream"))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("id: ")))
        .collect()
}

/// [id, topic, type, data] of each envelope.
fn summary(events: &Value) -> Value {
    events
        .as_array()
        .expect("an array of events")
        .iter()
        .map(|e| json!([e["id"], e["topic"], e["type"], e["data"]]))
        .collect()
}

fn sh(command: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(command).current_dir(repo());
    c
}

/// herald as the README's quick start runs it: no flags, so every default
/// applies, including 127.0.0.1:8080; only the database is a fresh one.
struct DefaultHerald {
    process: Running,
    _db: TestDb,
}

impl DefaultHerald {
    async fn start() -> Self {
        if let Err(e) = std::net::TcpListener::bind("127.0.0.1:8080") {
            panic!(
                "127.0.0.1:8080 is taken ({e}): the README's curl lines name that address, so \
                 this test runs herald there. Stop whatever listens on it (`ss -ltnp 'sport = \
                 8080'`) and run the test again."
            );
        }
        let db = TestDb::create().await;
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        command
            .env("DATABASE_URL", &db.url)
            // How it logs changes nothing the README shows; JSON lines let
            // the test see when it serves.
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        let mut process = Running::spawn(&mut command);
        let log = process
            .wait_stderr("herald to serve on 127.0.0.1:8080", |err| {
                err.contains("\"herald is serving\"")
            })
            .await;
        assert!(log.contains("\"address\":\"127.0.0.1:8080\""), "{log}");
        Self { process, _db: db }
    }

    async fn stop(self) {
        self.process.signal("-TERM");
        let (status, _, _) = self.process.finish(WAIT).await;
        assert!(status.success(), "herald exited with {status}");
    }
}

/// The README's "Streams" lines, run exactly as written against herald
/// started as the quick start does, after the three events "Try it with
/// curl" publishes (so the ids are the README's).
#[tokio::test]
async fn readme_streams_curl_lines_work_exactly_as_written() {
    let _port = PORT_8080.lock().await;
    let (commands, outputs) = commands_and_outputs(&readme_section("## Streams"));
    let shape = "README \"Streams\" changed shape: expected commands subscribe, switch, \
                 history until, list, end one, revoke and outputs opening, switch answer, \
                 switch frame; update tests/api/clients/readme.rs";
    let [subscribe, switch, until, list, end_one, revoke] =
        <[String; 6]>::try_from(commands).unwrap_or_else(|c| panic!("{shape}: {c:#?}"));
    let [opening, answer, frame] =
        <[String; 3]>::try_from(outputs).unwrap_or_else(|o| panic!("{shape}: {o:#?}"));
    let herald = DefaultHerald::start().await;
    let client = reqwest::Client::new();
    for (topic, data) in [
        ("incident:inc-123", "opened"),
        ("incident:inc-123", "first"),
        ("incident:inc-124", "second"),
    ] {
        let res = client
            .post("http://127.0.0.1:8080/v1/events")
            .json(&json!({"topic": topic, "data": data}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    let mut subscriber = Running::spawn(&mut sh(&subscribe));
    let opened = subscriber
        .wait_stdout("the named stream to open", |out| out.ends_with("\n\n"))
        .await;
    assert_eq!(opened, opening, "the named stream's first frame");
    let answered = run_ok(&mut sh(&switch)).await;
    assert_eq!(
        answered.trim_end(),
        answer.trim_end(),
        "the switch's answer"
    );
    let seen = subscriber
        .wait_stdout("the switch on the stream", |out| {
            out.len() >= opened.len() + frame.len()
        })
        .await;
    assert_eq!(
        &seen[opened.len()..],
        frame.as_str(),
        "the stream's own frame"
    );

    let history: Value = serde_json::from_str(&run_ok(&mut sh(&until)).await).unwrap();
    let ids: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2"], "incident:inc-123 up to the switch");

    let listing = || async {
        let text = run_ok(&mut sh(&list)).await;
        serde_json::from_str::<Value>(&text).unwrap()
    };
    wait_for("the stream to be listed", || async {
        listing().await["streams"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
    })
    .await;
    let listed = listing().await;
    assert_eq!(listed["streams"][0]["handle"], "dashboard-7f3a9c2e1b");
    assert_eq!(listed["streams"][0]["topics"], json!(["incident:inc-123"]));

    let ended: Value = serde_json::from_str(&run_ok(&mut sh(&end_one)).await).unwrap();
    assert_eq!(
        ended,
        json!({"ended": true, "stream": "dashboard-7f3a9c2e1b"})
    );
    let (status, out, _) = subscriber.finish(WAIT).await;
    assert!(status.success(), "curl ends with the stream");
    assert!(
        out.ends_with("event: revoked\ndata: {\"reason\":\"stream_ended\"}\n\n"),
        "{out}"
    );
    let revoked: Value = serde_json::from_str(&run_ok(&mut sh(&revoke)).await).unwrap();
    assert_eq!(revoked["subject"], "alice");
    herald.stop().await;
}
