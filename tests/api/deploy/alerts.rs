//! The alert rules (`deploy/prometheus/`) and the Grafana dashboard
//! (`deploy/grafana/herald.json`), checked by their own tools and against
//! a live herald: promtool checks the rules and runs their unit tests;
//! every alert says how bad, after how long and where its runbook is; and
//! every metric a rule or a panel reads is one a running herald exports
//! (and every metric it exports has a panel). `prometheus.rs` runs the
//! rules and the panels' queries in a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use serde_norway::Value;

use super::promql::{metric_names, template_metric_names};
use super::*;
use crate::faults::HeraldProcess;
use crate::helpers::*;

pub(super) const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/herald.json";

/// The alerts issue #11 asks for.
const ALERTS: [&str; 7] = [
    "HeraldNoInstanceReady",
    "HeraldListenerDetached",
    "HeraldPublishesFailing",
    "HeraldPublishLatencyHigh",
    "HeraldLaggedSubscribersRising",
    "HeraldRetentionNotRunning",
    "HeraldDatabasePoolExhausted",
];

/// Series Prometheus writes itself for every scrape target.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Runs promtool in `deploy/prometheus/`, as an operator would.
fn promtool(args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo_path("deploy/prometheus"))
        .output()
        .expect("promtool must be installed: apt-get install prometheus (see README)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every alerting rule of `alerts.yml`, by name.
pub(super) fn alert_rules() -> BTreeMap<String, Value> {
    let file = yaml(RULES);
    let mut rules = BTreeMap::new();
    for group in file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            assert!(
                rules.insert(name.to_owned(), rule.clone()).is_none(),
                "{name} twice"
            );
        }
    }
    rules
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation
/// dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
    // Every alert has a unit test.
    let tests = read(RULE_TESTS);
    for name in ALERTS {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no test"
        );
    }
}

/// Each alert waits (`for:`), says how bad (`severity`), what happened
/// (summary, description) and where its runbook is: a section of the
/// README's "Operations", "Alerts".
#[test]
fn every_alert_says_how_bad_how_long_and_what_to_do() {
    let rules = alert_rules();
    assert_eq!(
        rules.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ALERTS.into_iter().collect()
    );
    let sections = anchors(&read("README.md"));
    for (name, rule) in &rules {
        let wait = duration(
            rule["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: for")),
        );
        assert!(wait >= Duration::from_secs(60), "{name} waits {wait:?}");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 10, "{name}: {key} {text:?}");
        }
        let runbook = rule["annotations"]["runbook"].as_str();
        let section = format!("alert-{}", name.to_lowercase());
        assert_eq!(
            runbook,
            Some(format!("README.md#{section}").as_str()),
            "{name}"
        );
        assert!(
            sections.contains(&section),
            "no \"Alert: {name}\" section for {name}'s runbook"
        );
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Json) -> Vec<Json> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel.clone());
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner.iter().cloned());
        }
    }
    all
}

/// Each panel's queries, by panel title, and the template variables'.
pub(super) fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            let name = variable["name"].as_str().unwrap_or_default();
            queries.push((format!("${name}"), query.to_owned()));
        }
    }
    queries
}

/// The panels a Grafana import needs: unique ids, a title, a query or
/// more, the dashboard's own datasource variable, a place on the grid.
#[test]
fn dashboard_panels_are_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "herald");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "{title}: id");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{title}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"],
            json!({"type": "prometheus", "uid": "${datasource}"}),
            "{title}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"], panel["datasource"], "{title}");
        }
    }
}

/// A metric family of the exposition: its name and `# TYPE`.
fn exported_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// The family a series name belongs to, if herald exports it: a counter or
/// gauge by its own name, a histogram by `_bucket`, `_sum` or `_count`
/// (a histogram's own name selects nothing).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Result<String, String> {
    match types.get(name).map(String::as_str) {
        Some("histogram" | "summary") => {
            return Err(format!(
                "{name} is a histogram: select {name}_bucket, _sum or _count"
            ));
        }
        Some(_) => return Ok(name.to_owned()),
        None => {}
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        match types.get(base).map(String::as_str) {
            Some("histogram") => return Ok(base.to_owned()),
            Some("summary") if suffix != "_bucket" => return Ok(base.to_owned()),
            _ => {}
        }
    }
    Err(format!("{name} is not exported"))
}

/// Makes every histogram herald has observe at least once: a live stream
/// takes a batch (publish time, append transactions, delivery lag, which
/// samples one frame in 64), a resume replays it, and both streams end.
async fn exercise(herald: &HeraldProcess) {
    let api = &herald.api;
    let topic = unique_topic("dashboard");
    let mut live = api.open_stream(&format!("topic={topic}"), None).await;
    let batch: Vec<Json> = (0..70)
        .map(|i| json!({"topic": topic, "data": i}))
        .collect();
    let res = api
        .client
        .post(api.url("/v1/events"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(live.events(70).await.len(), 70);
    let mut resumed = api.open_stream(&format!("topic={topic}"), Some(0)).await;
    assert_eq!(resumed.events(70).await.len(), 70);
    drop((live, resumed));
    wait_for("every histogram to have observed", || async {
        let text = herald.api.metrics().await;
        [
            "herald_publish_duration_seconds_count",
            "herald_delivery_lag_seconds_count",
            "herald_replay_events_count",
            "herald_stream_duration_seconds_count",
        ]
        .iter()
        .all(|name| metric_sum(&text, name) >= 1.0)
    })
    .await;
}

/// Every metric a rule or a panel selects is one a running herald exports
/// (a histogram through its series), and every metric herald exports has
/// a panel.
#[tokio::test]
async fn alerts_and_panels_read_only_metrics_herald_exports() {
    let db = TestDb::create().await;
    let herald = HeraldProcess::start(&db.url, &[]).await;
    herald.api.wait_ready().await;
    exercise(&herald).await;
    let text = herald.api.metrics().await;
    let types = exported_types(&text);
    assert!(types.contains_key("herald_build_info"), "{text}");

    let rules = alert_rules()
        .into_iter()
        .map(|(name, rule)| (name, rule["expr"].as_str().unwrap().to_owned()));
    let panels = dashboard_queries().into_iter();
    let used = rules.map(|q| (false, q)).chain(panels.map(|q| (true, q)));
    let mut missing = Vec::new();
    let mut shown = BTreeSet::new();
    for (on_dashboard, (place, expr)) in used {
        let names = if place.starts_with('$') {
            template_metric_names(&expr)
        } else {
            metric_names(&expr)
        };
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            if PROMETHEUS_OWN.contains(&name.as_str()) {
                continue;
            }
            match family_of(&name, &types) {
                Ok(family) if on_dashboard => {
                    shown.insert(family);
                }
                Ok(_) => {}
                Err(why) => missing.push(format!("{place}: {why}")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\n--- /metrics ---\n{text}",
        missing.join("\n")
    );
    let unshown: Vec<&String> = types.keys().filter(|name| !shown.contains(*name)).collect();
    assert!(unshown.is_empty(), "no panel shows {unshown:?}");
}
