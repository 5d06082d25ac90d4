//! The Grafana dashboard and the Prometheus alerting rules of `packaging/mixin/`: the rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`), every dashboard
//! query parses (checked by promtool as a recording rule), and every metric and label they use
//! is exposed by a running agent's `/metrics` with a config running, so renaming a metric or a
//! label breaks this test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::support::{root, Agent};

/// The PromQL expressions of the alerting rules and of the dashboard's panels, with the
/// dashboard's variables given values.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("packaging/mixin/agentctl-alerts.yaml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/mixin/agentctl-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "5m")
                    .replace("$job", "agentctl"),
            ));
        }
    }
    out
}

fn promtool_check_rules(file: &Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool (scripts/deps: prometheus)");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_and_every_dashboard_query_pass_promtool() {
    promtool_check_rules(&root().join("packaging/mixin/agentctl-alerts.yaml"));
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in expressions().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = tmp.path().join("dashboard-queries.yaml");
    std::fs::write(&file, rules).unwrap();
    promtool_check_rules(&file);
}

/// The rules' unit tests (`agentctl-alerts.test.yaml`): histories of the agents' metrics and
/// the alerts that must and must not fire, e.g. a receiver gone for good fires
/// AgentctlRemoteWriteStalled.
#[test]
fn the_alerts_fire_on_the_histories_of_their_unit_tests() {
    let out = Command::new("promtool")
        .args(["test", "rules", "agentctl-alerts.test.yaml"])
        .current_dir(root().join("packaging/mixin"))
        .output()
        .expect("promtool (scripts/deps: prometheus)");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The remote_write lag the dashboard and AgentctlRemoteWriteBehind read keeps growing while
/// the receiver is down: `prometheus_remote_storage_highest_timestamp_in_seconds` follows what
/// the WAL holds, also once the queue is full and the WAL is no longer read for sending (it
/// used to stop there, capping the lag at about capacity / sample rate).
#[test]
fn the_remote_write_lag_grows_while_the_receiver_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    // Port 1 refuses connections: every send fails and is retried, nothing is delivered.
    let cfg = format!(
        "scrape_configs:\n  - job_name: self\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\nremote_write:\n  - url: http://127.0.0.1:1/api/v1/write\n    queue_config: {{capacity: 100, min_shards: 1, max_shards: 1, max_samples_per_send: 50}}\nremote_flush_deadline: 1s\n",
        agent.addr()
    );
    assert!(matches!(agent.put_config("self", &cfg).status, 200 | 201));
    let highest_in =
        |a: &Agent| a.metric("prometheus_remote_storage_highest_timestamp_in_seconds", "");
    agent.wait_until("the queue full", Duration::from_secs(60), |a| {
        a.metric("prometheus_remote_storage_samples_pending", "") >= 100.0
    });
    let when_full = highest_in(&agent);
    assert!(when_full > 0.0);
    // Scrapes go on every second: the newest sample in rises with them.
    agent.wait_until(
        "highest_timestamp_in 5 s past the moment the queue filled",
        Duration::from_secs(30),
        |a| highest_in(a) >= when_full + 5.0,
    );
    assert_eq!(
        agent.metric(
            "prometheus_remote_storage_queue_highest_sent_timestamp_seconds",
            ""
        ),
        0.0,
        "nothing was delivered"
    );
}

/// Metric name -> label names, from the samples of an exposition.
fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(c) = sample.captures(line) {
            let labels = m.entry(c[1].to_owned()).or_default();
            if let Some(l) = c.get(3) {
                labels.extend(label.captures_iter(l.as_str()).map(|c| c[1].to_owned()));
            }
        }
    }
    m
}

/// The metric names an expression uses, and the label names of its matchers per metric.
/// agentctl's metrics all start with `agent_` or `prometheus_remote_storage_`; `up` is written
/// by the Prometheus that scrapes the agents, and `job` and `instance` are its target labels.
fn used(expr: &str) -> Vec<(String, Vec<String>)> {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let bare = strings.replace_all(expr, "\"\"");
    let selector =
        Regex::new(r"\b(agent_[a-z0-9_]+|prometheus_remote_storage_[a-z0-9_]+|up)\b(\{[^}]*\})?")
            .unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)"#).unwrap();
    selector
        .captures_iter(&bare)
        .map(|c| {
            let labels = c.get(2).map_or(Vec::new(), |m| {
                matcher
                    .captures_iter(m.as_str())
                    .map(|l| l[1].to_owned())
                    .filter(|l| l != "job" && l != "instance")
                    .collect()
            });
            (c[1].to_owned(), labels)
        })
        .collect()
}

#[test]
fn every_metric_and_label_of_the_dashboard_and_rules_is_exposed_by_a_running_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    // A second agent in target-sharding mode: the sharding metrics exist only there.
    let targets_mode = Agent::builder(tmp.path())
        .name("targets")
        .config(&format!(
            "metrics:\n  wal_directory: {}\n  scraping_service:\n    enabled: true\n    sharding: targets\n    kvstore:\n      store: embedded\n",
            tmp.path().join("targets-wal").display()
        ))
        .start();
    // A config scraping the agent itself, with a remote_write endpoint that refuses
    // connections: per-instance WAL metrics and per-queue remote_write metrics exist.
    let cfg = format!(
        "scrape_configs:\n  - job_name: self\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\nremote_write:\n  - url: http://127.0.0.1:1/api/v1/write\n",
        agent.addr()
    );
    assert!(matches!(agent.put_config("self", &cfg).status, 200 | 201));
    // A refused config: the API's error codes are counted too.
    assert_eq!(agent.put_config("bad", "scrape_configs: [").status, 400);
    let exprs = expressions();
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());
    // What each expression needs that the agent does not expose (yet: the first scrapes,
    // remote_write attempts and WAL housekeeping take a few seconds).
    let missing = |metrics: &BTreeMap<String, BTreeSet<String>>| -> Vec<String> {
        let mut missing = Vec::new();
        for (what, expr) in &exprs {
            let names = used(expr);
            assert!(!names.is_empty(), "{what}: no agentctl metric in {expr}");
            for (name, labels) in names.into_iter().filter(|(n, _)| n != "up") {
                match metrics.get(&name) {
                    None => missing.push(format!("{what}: {name} is not exposed")),
                    Some(have) => missing.extend(
                        labels
                            .into_iter()
                            .filter(|l| !have.contains(l))
                            .map(|l| format!("{what}: {name} has no label {l:?} ({have:?})")),
                    ),
                }
            }
        }
        missing
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut metrics = exposed(&agent.get("/metrics").body);
        for (name, labels) in exposed(&targets_mode.get("/metrics").body) {
            metrics.entry(name).or_default().extend(labels);
        }
        let gaps = missing(&metrics);
        if gaps.is_empty() {
            let used: BTreeSet<String> = exprs
                .iter()
                .flat_map(|(_, e)| used(e))
                .map(|(n, _)| n)
                .collect();
            eprintln!("{} metrics checked: {used:?}", used.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard and rules use what the agent does not expose:\n{}",
            gaps.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_metric_name_extraction_sees_selectors_labels_and_not_strings() {
    assert_eq!(
        used(
            r#"sum by (state) (agent_ring_members{job="agentctl", state="Unhealthy"}) > up{job="agent_x"}"#
        ),
        [
            ("agent_ring_members".to_owned(), vec!["state".to_owned()]),
            ("up".to_owned(), vec![]),
        ]
    );
    assert_eq!(
        used("rate(prometheus_remote_storage_samples_total[5m])"),
        [("prometheus_remote_storage_samples_total".to_owned(), vec![])]
    );
}
