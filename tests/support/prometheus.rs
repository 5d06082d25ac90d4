//! A real Prometheus (Debian's `prometheus` package) as a remote-write receiver on loopback,
//! with a temp TSDB; killed on drop.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_http, ChildGuard};

const BINARY: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    pub addr: String,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus --web.enable-remote-write-receiver` and waits for `/-/ready`.
    pub fn start() -> Prometheus {
        Self::start_with_config("global:\n  scrape_interval: 1m\n")
    }

    /// Starts a normal Prometheus server (also a remote-write receiver) with `config_yaml` as
    /// its `prometheus.yml` and its own TSDB in a temp dir; waits for `/-/ready`. Fails (does
    /// not skip) without `/usr/bin/prometheus`.
    pub fn start_with_config(config_yaml: &str) -> Prometheus {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run the test suite with the README's test command, ./scripts/test, \
             which installs Debian's prometheus package"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml).expect("write config");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(BINARY)
            .arg("--web.enable-remote-write-receiver")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let guard = ChildGuard::new("prometheus", child);
        wait_http(&addr, "/-/ready", 200, Duration::from_secs(60));
        Prometheus {
            addr,
            _child: guard,
            _dir: dir,
        }
    }

    /// What Prometheus logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `/api/v1/<endpoint>` with `params`; returns the `data` member, panicking on an
    /// error status.
    pub async fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> serde_json::Value {
        // reqwest is built without a default rustls provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        let url = reqwest::Url::parse_with_params(
            &format!("http://{}/api/v1/{endpoint}", self.addr),
            params,
        )
        .expect("api url");
        let resp = client.get(url).send().await.expect("query prometheus");
        let status = resp.status();
        let mut body: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        assert!(
            status.is_success(),
            "{endpoint} {params:?}: {status} {body}"
        );
        body["data"].take()
    }

    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// An instant query; returns the single result's value, or `None` for an empty result.
    pub async fn query_scalar(&self, query: &str) -> Option<f64> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        let url = reqwest::Url::parse_with_params(
            &format!("http://{}/api/v1/query", self.addr),
            &[("query", query)],
        )
        .expect("query url");
        let resp = client.get(url).send().await.expect("query prometheus");
        let status = resp.status();
        let body: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        assert!(status.is_success(), "query {query}: {status} {body}");
        let result = body["data"]["result"].as_array()?;
        let first = result.first()?;
        first["value"][1].as_str().and_then(|v| v.parse().ok())
    }
}

/// Starts `prometheus --enable-feature=agent` with `config_yaml` written to
/// `<dir>/prometheus.yml`, its WAL under `<dir>/data/wal`, listening on `127.0.0.1:<port>`.
/// Fails (does not skip) without `/usr/bin/prometheus`. Stop it with `signal("TERM")` and
/// `wait_exit` so the last WAL page is flushed.
pub fn start_agent_mode(dir: &Path, config_yaml: &str, port: u16) -> ChildGuard {
    let prom = Path::new("/usr/bin/prometheus");
    assert!(
        prom.exists(),
        "/usr/bin/prometheus is required (Debian package `prometheus`)"
    );
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config_yaml).expect("write prometheus.yml");
    let child = Command::new(prom)
        .arg("--enable-feature=agent")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.agent.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    ChildGuard::new("prometheus", child)
}
