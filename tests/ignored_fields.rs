//! agent.yaml fields that agentctl accepts but does not honour are never silent: `config check`
//! and `agent run` warn about each one, naming the field and what to use instead, and a TLS
//! block for the agent's own server stops the agent instead of serving plain HTTP.

use std::time::Duration;

use crate::support::{agentctl, Agent};

/// Fields an old agent's agent.yaml commonly sets that agentctl does not honour.
const AGENT_YAML: &str = "\
server:
  log_level: debug
  http_listen_port: 9999
  grpc_listen_port: 9095
metrics:
  wal_directory: data
  global:
    scrape_interval: 15s
    evaluation_interval: 15s
  scraping_service:
    enabled: true
    reshard_timeout: 10s
    lifecycler:
      heartbeat_period: 1s
      min_ready_duration: 0s
";

const EXPECTED: [&str; 6] = [
    "server.log_level is ignored: use --log.level",
    "server.http_listen_port is ignored: the listen address comes from the command line: use --server.http.address HOST:PORT",
    "server.grpc_listen_port is ignored: agentctl serves no gRPC",
    "metrics.global.evaluation_interval is ignored: agentctl evaluates no rules",
    "metrics.scraping_service.reshard_timeout is ignored: resharding is local to each agent",
    "metrics.scraping_service.lifecycler.min_ready_duration is ignored: an agent is ready once",
];

#[test]
fn config_check_warns_about_every_ignored_field_and_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.yaml"), AGENT_YAML).unwrap();
    let out = agentctl(&["config", "check", "agent.yaml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "agent.yaml: valid agent config\n"
    );
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), EXPECTED.len(), "{stderr}");
    for (line, want) in warnings.iter().zip(EXPECTED) {
        assert!(
            line.starts_with(&format!("agent.yaml: warning: {want}")),
            "{line:?} should start with {want:?}"
        );
    }
}

#[test]
fn agent_run_logs_every_ignored_field_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::builder(dir.path()).config(AGENT_YAML).start();
    // The warnings come before the agent says it is ready.
    agent.wait_log("agent ready", Duration::from_secs(30));
    let log = agent.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=warn") && l.contains("msg=\"config field ignored\""))
        .collect();
    assert_eq!(warned.len(), EXPECTED.len(), "{log}");
    for (line, want) in warned.iter().zip(EXPECTED) {
        let (field, advice) = want.split_once(" is ignored: ").unwrap();
        assert!(line.contains(&format!("field={field} ")), "{line}");
        assert!(line.contains(advice), "{line}");
    }
    assert_eq!(agent.stop(), Some(0), "{}", agent.log());
}

/// A TLS block is honoured (tests/server_tls.rs serves HTTPS with it): `config check` accepts it
/// without a warning, and an agent whose certificate file cannot be read does not start,
/// naming the field and the file, rather than serving plain HTTP.
#[test]
fn a_tls_block_is_honoured_and_an_unreadable_certificate_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.yaml"),
        "server:\n  http_tls_config:\n    cert_file: /etc/agentctl/cert.pem\n    key_file: /etc/agentctl/key.pem\n",
    )
    .unwrap();
    let out = agentctl(
        &[
            "agent",
            "run",
            "--config.file",
            "agent.yaml",
            "--server.http.address",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server.http_tls_config.cert_file /etc/agentctl/cert.pem: cannot read"),
        "{stderr}"
    );
    assert!(!stderr.contains("agent listening"), "{stderr}");

    let out = agentctl(&["config", "check", "agent.yaml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("http_tls_config"), "{stderr}");

    // The old agent's flag, without a certificate to serve: refused, never plain HTTP.
    std::fs::write(
        dir.path().join("plain.yaml"),
        "server:\n  log_level: info\n",
    )
    .unwrap();
    let out = agentctl(
        &[
            "agent",
            "run",
            "--config.file",
            "plain.yaml",
            "--server.http.enable-tls",
            "--server.http.address",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--server.http.enable-tls") && stderr.contains("plain.yaml"),
        "{stderr}"
    );
}

/// Prometheus's `storage.exemplars.max_exemplars` sizes an in-memory exemplar store that
/// neither the old agent nor agentctl has (docs/configuration.md, Differences): the setting is
/// refused where a user might put it, never accepted and ignored.
#[test]
fn max_exemplars_is_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("inst.yml"),
        "scrape_configs: []\nmax_exemplars: 100000\n",
    )
    .unwrap();
    let o = agentctl(&["config", "check", "inst.yml"], d);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inst.yml:2:1") && err.contains("unknown field \"max_exemplars\""),
        "{err}"
    );
    for (name, yaml, at) in [
        (
            "agent.yml",
            "metrics:\n  wal_directory: data\n  storage:\n    exemplars:\n      max_exemplars: 10\n",
            "agent.yml:3:3",
        ),
        (
            "top.yml",
            "metrics:\n  wal_directory: data\nstorage:\n  exemplars:\n    max_exemplars: 10\n",
            "top.yml:3:1",
        ),
    ] {
        std::fs::write(d.join(name), yaml).unwrap();
        let o = agentctl(&["config", "check", "--kind", "agent", name], d);
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(at) && err.contains("unknown field \"storage\""),
            "{name}: {err}"
        );
    }
}
