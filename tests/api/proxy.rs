//! `deploy/nginx/nginx.conf`, run by a real nginx in front of two herald
//! instances: the config passes `nginx -t`, streams pass through unbuffered
//! with their heartbeats, a resume through the proxy works, a stream meant
//! for a stopped instance is answered by the other one, and no query string
//! (where a token may travel) reaches nginx's logs.
//! Needs `nginx` (Debian package `nginx-light`; `.ci/run` installs it).

use std::process::Stdio;

use serde_json::json;

use crate::helpers::*;

struct Nginx {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
    base: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too (SIGKILL would orphan
        // them); SIGKILL only if it is still there after that.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The deploy config with its upstreams pointed at `backends`, its listener
/// at a free loopback port and its logs in `dir`.
fn render_config(backends: &[&TestApp], port: u16, dir: &std::path::Path) -> String {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/nginx.conf"
    ))
    .unwrap();
    assert!(conf.contains("server herald-1:8080") && conf.contains("listen 80;"));
    conf.replace("herald-1:8080", &backends[0].addr.to_string())
        .replace("herald-2:8080", &backends[1].addr.to_string())
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "access_log /dev/stdout",
            &format!("access_log {}", dir.join("access.log").display()),
        )
        .replace(
            "error_log /dev/stderr",
            &format!("error_log {}", dir.join("error.log").display()),
        )
        .replace("worker_processes auto;", "worker_processes 1;")
}

fn nginx_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        dir.join("nginx.conf").display().to_string(),
        "-g".into(),
        format!(
            "daemon off; pid {}; error_log stderr warn;",
            dir.join("nginx.pid").display()
        ),
    ]
}

async fn start_nginx(backends: &[&TestApp]) -> Nginx {
    let dir = std::env::temp_dir().join(format!(
        "herald-nginx-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    std::fs::write(dir.join("nginx.conf"), render_config(backends, port, &dir)).unwrap();

    let check = tokio::process::Command::new("nginx")
        .arg("-t")
        .args(nginx_args(&dir))
        .output()
        .await
        .expect("nginx must be installed: apt-get install nginx-light (see README)");
    assert!(
        check.status.success(),
        "nginx -t failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let child = tokio::process::Command::new("nginx")
        .args(nginx_args(&dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let nginx = Nginx {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    wait_for("nginx to answer", || async {
        client
            .get(format!("{}/healthz", nginx.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    nginx
}

#[tokio::test]
async fn deploy_nginx_config_streams_unbuffered_across_two_instances() {
    let a = spawn_app().await;
    let b = spawn_on(a.db.clone(), test_config(&a.db.url)).await;
    let nginx = start_nginx(&[&a, &b]).await;
    let client = reqwest::Client::new();
    let topic = unique_topic("proxy");

    // Arrange: a stream through nginx.
    let res = client
        .get(format!("{}/v1/stream?topic={topic}", nginx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut sse = SseClient::new(res);
    assert!(sse.next_frame().await.unwrap().retry.is_some());

    // Act: publish through nginx (either instance), one event at a time;
    // each must arrive before the next is sent, so nothing sits in a buffer.
    let mut ids = Vec::new();
    for i in 0..10 {
        let res = client
            .post(format!("{}/v1/events", nginx.base))
            .json(&json!({"topic": topic, "data": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let id: i64 = res.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sse.next_event().await.unwrap().id_num(), id);
        ids.push(id);
    }
    // Heartbeats pass through too (test heartbeat: 300 ms).
    let ping = sse.next_frame().await.unwrap();
    assert_eq!(ping.comments, vec!["ping".to_owned()]);

    // A resume through the proxy gets exactly the rest.
    let res = client
        .get(format!("{}/v1/stream?topic={topic}", nginx.base))
        .header("last-event-id", ids[4].to_string())
        .send()
        .await
        .unwrap();
    let mut resumed = SseClient::new(res);
    let got: Vec<i64> = resumed.events(5).await.iter().map(|f| f.id_num()).collect();
    assert_eq!(got, ids[5..]);

    drop(nginx);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn deploy_nginx_config_sends_streams_past_a_stopped_instance() {
    // Arrange: nginx in front of A and B; B stops, so its port is closed.
    let a = spawn_app().await;
    let b = spawn_on(a.db.clone(), test_config(&a.db.url)).await;
    let nginx = start_nginx(&[&a, &b]).await;
    b.stop().await;
    let client = reqwest::Client::new();
    // Nothing of the query string may reach nginx's logs: a browser's
    // EventSource, which cannot set headers, carries its token there
    // (`access_token=`). The topic stands in for it here.
    let topic = unique_topic("proxy-query-marker");

    // Act: 20 new streams, as 20 browsers would open them.
    let mut answers = Vec::new();
    for _ in 0..20 {
        let res = client
            .get(format!("{}/v1/stream?topic={topic}", nginx.base))
            .send()
            .await
            .unwrap();
        let content_type = res.headers().get("content-type").cloned();
        answers.push((res.status().as_u16(), content_type));
    }

    // Assert: every one was answered as a stream (anything else makes an
    // EventSource give up for good), none with a 502 from the dead upstream.
    let others: Vec<_> = answers
        .iter()
        .filter(|(status, ct)| {
            !(*status == 200 && ct.as_ref().is_some_and(|ct| ct == "text/event-stream"))
        })
        .collect();
    assert!(
        others.is_empty(),
        "{} of 20 stream requests were not answered 200 text/event-stream: {others:?}",
        others.len()
    );
    // And the logs have each request (written when its stream is over: at
    // the next heartbeat after the client left), without its query string.
    let access_log = nginx.dir.join("access.log");
    wait_for("nginx to log the 20 streams", || async {
        std::fs::read_to_string(&access_log)
            .is_ok_and(|log| log.matches("\"GET /v1/stream").count() == 20)
    })
    .await;
    for log in ["access.log", "error.log"] {
        let text = std::fs::read_to_string(nginx.dir.join(log)).unwrap_or_default();
        assert!(
            !text.contains(&topic) && !text.contains("topic="),
            "{log} carries the query string:\n{text}"
        );
    }

    drop(nginx);
    a.stop().await;
}
