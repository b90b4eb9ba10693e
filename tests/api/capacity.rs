//! More clients than the process can hold (`--max-connections`): found
//! from outside, under `ulimit -n 256`, 400 stream clients left herald
//! holding 243 streams, the other 157 waiting in the accept backlog with
//! no answer, and `/healthz` unanswered until they left. Now every client
//! gets an answer, health checks and scrapes are served beyond the cap,
//! and everything recovers when the clients leave.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::faults::HeraldProcess;
use crate::helpers::*;

/// The file limit herald runs under, soft and hard (it cannot raise it).
const FILE_LIMIT: u64 = 256;
/// Stream clients: more than the limit.
const CLIENTS: usize = 400;
/// How long each client may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A raw HTTP/1.1 request on a new connection; the connection and its
/// answer's head (status, and the rest of what was read).
async fn request(addr: &str, path: &str) -> Result<(TcpStream, u16, String), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: herald.test\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0_u8; 1024];
        match tcp.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {text:?}"))?;
    Ok((tcp, status, text))
}

/// Seconds of CPU the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn beyond_the_file_limit_every_client_is_answered_and_health_checks_are_served() {
    let db = TestDb::create().await;
    let herald = HeraldProcess::start_with_file_limits(&db.url, &[], FILE_LIMIT, FILE_LIMIT).await;
    herald.api.wait_ready().await;
    let addr = herald.api.base.trim_start_matches("http://").to_owned();
    let topic = unique_topic("capacity");
    let path = format!("/v1/stream?topic={topic}");

    // 400 clients at once, each timed from its connect to its answer.
    let answers = join_all((0..CLIENTS).map(|_| {
        let (addr, path) = (addr.clone(), path.clone());
        async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(ANSWER_WITHIN, request(&addr, &path)).await;
            (answer, started.elapsed())
        }
    }))
    .await;

    let mut open = Vec::new();
    let mut refused = 0;
    for (i, (answer, took)) in answers.into_iter().enumerate() {
        let (tcp, status, head) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("client {i}: {e} after {took:?}"),
            Err(_) => panic!("client {i} had no answer within {ANSWER_WITHIN:?}"),
        };
        match status {
            200 => open.push(tcp),
            503 => {
                refused += 1;
                let head = head.to_ascii_lowercase();
                assert!(head.contains("retry-after: "), "{head}");
                assert!(head.contains("application/problem+json"), "{head}");
            }
            other => panic!("client {i} got {other}: {head}"),
        }
    }
    println!(
        "{CLIENTS} clients under a file limit of {FILE_LIMIT}: {} streams held, {refused} refused",
        open.len()
    );
    assert!(
        refused > 0,
        "all {CLIENTS} held under a limit of {FILE_LIMIT}"
    );
    assert!(
        open.len() >= 100,
        "only {} streams held under a limit of {FILE_LIMIT}",
        open.len()
    );

    // Full, and still a live instance to its orchestrator and its scraper.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (_, status, _) = tokio::time::timeout(ANSWER_WITHIN, request(&addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path} unanswered while full"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(status, 200, "{path} while full");
    }
    let metrics = herald.api.metrics().await;
    assert!(
        metric_sum(&metrics, "herald_connections_refused_total") >= refused as f64,
        "{metrics}"
    );
    // Idle while full: no loop spins on a refused accept.
    let before = cpu_seconds(herald.pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(herald.pid) - before;
    println!("CPU while full: {used:.2} s in {:?}", window.elapsed());
    assert!(
        used < 0.25 * window.elapsed().as_secs_f64(),
        "herald used {used:.2} s of CPU in {:?} while full and idle",
        window.elapsed()
    );

    // The clients leave: new streams are served again.
    drop(open);
    wait_for("a new stream to be served once the clients left", || {
        let (addr, path) = (addr.clone(), path.clone());
        async move { matches!(request(&addr, &path).await, Ok((_, 200, _))) }
    })
    .await;
    let id = herald
        .api
        .publish_ok(&topic, serde_json::json!("after"))
        .await;
    let mut sse = herald
        .api
        .open_stream(&format!("topic={topic}"), Some(0))
        .await;
    assert_eq!(sse.next_event().await.unwrap().id_num(), id);
}

/// herald raises its soft limit on open files to the hard one at start,
/// and derives its cap from it.
#[tokio::test]
async fn the_soft_file_limit_is_raised_to_the_hard_one_at_start() {
    let db = TestDb::create().await;
    let mut herald = HeraldProcess::start_with_file_limits(&db.url, &[], 256, 4096).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", herald.pid)).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    herald.kill9().await;
}
