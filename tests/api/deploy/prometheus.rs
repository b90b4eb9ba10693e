//! A real Prometheus (Debian's `prometheus`) scrapes a real herald every
//! second and evaluates the shipped alert rules: they stay quiet while
//! herald is well, `HeraldListenerDetached` and `HeraldNoInstanceReady`
//! fire when its PostgreSQL goes away, and both clear when it comes back.
//! Every dashboard query runs in the same Prometheus, which proves it
//! parses and evaluates.
//!
//! The rules are `alerts.yml` as shipped, with one change: every `for:`
//! is 1 s, so that the test waits seconds instead of minutes. The `for:`
//! durations themselves are shown by `promtool test rules`
//! (`alerts_test.yml`), on a simulated clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value as Json;
use serde_norway::Value;

use super::alerts::{RULES, dashboard_queries};
use super::*;
use crate::faults::HeraldProcess;
use crate::helpers::*;

/// Prometheus on a free loopback port with a data directory of its own;
/// killed, and its directory removed, when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second and
    /// evaluating `rules` every second, and waits until it is ready.
    async fn start(target: &str, rules: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-prometheus-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("alerts.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [alerts.yml]\n\
                 scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A port that was free a moment ago; another process may take it
        // first, so a start that fails to bind is tried again.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
            let child = Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus must be installed: apt-get install prometheus (see README)");
            let mut prometheus = Self {
                child,
                dir: dir.clone(),
                base: format!("http://127.0.0.1:{port}"),
                client: reqwest::Client::new(),
            };
            if prometheus.wait_ready().await {
                return prometheus;
            }
            let log = prometheus.log();
            assert!(log.contains("address already in use"), "{log}");
        }
        panic!("no free port for Prometheus");
    }

    /// Whether `/-/ready` answers 200; false if the process exits first.
    async fn wait_ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let ready = self.client.get(format!("{}/-/ready", self.base)).send();
            if ready.await.is_ok_and(|res| res.status() == 200) {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not get ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The `data` of a `/api/v1/...` answer; fails unless it is a success.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Json {
        let url = format!("{}/api/v1/{path}", self.base);
        let url = reqwest::Url::parse_with_params(&url, query).unwrap();
        let res = self.client.get(url).send().await.unwrap();
        let body: Json = res.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The state (`pending`, `firing`) of each active alert, by name.
    async fn alerts(&self) -> BTreeMap<String, String> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap().to_owned();
                (name, a["state"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// The value of a query that gives one sample, if it gives one.
    async fn value(&self, query: &str) -> Option<f64> {
        let data = self.api("query", &[("query", query)]).await;
        let sample = data["result"].as_array()?.first()?;
        sample["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `alerts.yml` with every `for:` at 1 s (see the module comment).
fn rules_that_fire_at_once() -> String {
    let mut file = yaml(RULES);
    for group in file["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule["for"] = Value::from("1s");
        }
    }
    serde_norway::to_string(&file).unwrap()
}

/// A dashboard query as Grafana would send it, variables filled in
/// (`label_values(selector, label)` is Grafana's: its selector is queried).
fn as_grafana_sends(expr: &str) -> String {
    let expr = match expr
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
    {
        Some((selector, _label)) => selector,
        None => expr,
    };
    expr.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

const WATCHED: [&str; 2] = ["HeraldListenerDetached", "HeraldNoInstanceReady"];

#[tokio::test]
async fn prometheus_fires_alerts_when_herald_loses_its_database() {
    let db = TestDb::create().await;
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let herald = HeraldProcess::start(&db.url_via(proxy.addr), &[]).await;
    herald.api.wait_ready().await;
    let target = herald.api.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target, &rules_that_fire_at_once()).await;

    // Well: scraped, ready, and neither alert pending or firing (before the
    // first scrape no instance is ready, so it may fire for a moment).
    wait_for("Prometheus to see herald ready and quiet", || async {
        let ready = format!("herald_ready{{instance=\"{target}\"}}");
        prometheus.value(&ready).await == Some(1.0) && prometheus.alerts().await.is_empty()
    })
    .await;
    for (panel, expr) in dashboard_queries() {
        let query = as_grafana_sends(&expr);
        let data = prometheus.api("query", &[("query", &query)]).await;
        assert!(data["result"].is_array(), "{panel}: {query}: {data}");
    }

    // PostgreSQL goes away: the listener detaches and /readyz fails, and
    // herald still answers its scrapes, saying it is not ready.
    proxy.cut();
    wait_for("both alerts to fire", || async {
        let alerts = prometheus.alerts().await;
        let ready = format!("herald_ready{{instance=\"{target}\"}}");
        prometheus.value(&ready).await == Some(0.0)
            && WATCHED
                .iter()
                .all(|name| alerts.get(*name).is_some_and(|s| s == "firing"))
    })
    .await;
    let detached = prometheus.api("alerts", &[]).await;
    let detached = detached["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == WATCHED[0])
        .cloned()
        .unwrap();
    assert_eq!(detached["labels"]["instance"], target.as_str());
    assert_eq!(detached["labels"]["severity"], "warning");
    assert_eq!(
        detached["annotations"]["runbook"],
        "README.md#alert-heraldlistenerdetached"
    );

    // It comes back: herald reattaches by itself and both alerts clear.
    proxy.restore();
    wait_for("both alerts to clear", || async {
        let alerts = prometheus.alerts().await;
        WATCHED.iter().all(|name| !alerts.contains_key(*name))
    })
    .await;
    drop(herald);
}
