//! A real Prometheus (Debian's `prometheus` package) as a remote-write receiver on loopback,
//! with a temp TSDB; killed on drop.
//!
//! Ports: Prometheus binds `--web.listen-address=127.0.0.1:0` itself and logs the address it
//! bound (`msg="Listening on" address=127.0.0.1:PORT`), which is read from its log; nothing
//! picks a port and releases it. A restart binds the same address again (the agents under
//! test hold its URL): should another process have taken the port meanwhile, the restart
//! fails with Prometheus's "address already in use" in the message.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{wait_http, ChildGuard};

const BINARY: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    pub addr: String,
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    /// Extra command-line arguments (e.g. `--enable-feature=exemplar-storage`).
    args: Vec<String>,
}

impl Prometheus {
    /// Starts `prometheus --web.enable-remote-write-receiver` and waits for `/-/ready`.
    pub fn start() -> Prometheus {
        Prometheus::start_with_config("global:\n  scrape_interval: 1m\n")
    }

    /// Like [`Prometheus::start`] with `config_yaml` as its `prometheus.yml` (scrape jobs, or
    /// TSDB settings such as `out_of_order_time_window`).
    pub fn start_with_config(config_yaml: &str) -> Prometheus {
        Prometheus::start_with_args(config_yaml, &[])
    }

    /// Like [`Prometheus::start_with_config`] with extra command-line arguments.
    pub fn start_with_args(config_yaml: &str, args: &[&str]) -> Prometheus {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run the test suite with the README's test command, ./scripts/test, \
             which installs Debian's prometheus package"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml).expect("write config");
        let mut p = Prometheus {
            addr: String::new(),
            child: None,
            dir,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        p.spawn();
        p
    }

    /// Starts the process on `self.addr` (port 0 the first time) and `self.dir` (log
    /// appended), waits for `/-/ready`.
    fn spawn(&mut self) {
        let dir = self.dir.path();
        let offset = self.log().len();
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0"
        } else {
            &self.addr
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("prometheus.log"))
            .expect("log file");
        let child = Command::new(BINARY)
            .arg("--web.enable-remote-write-receiver")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut child = ChildGuard::new("prometheus", child);
        self.addr = listening_address(&mut child, &dir.join("prometheus.log"), offset);
        self.child = Some(child);
        wait_http(&self.addr, "/-/ready", 200, Duration::from_secs(60));
    }

    /// Stops the receiver (SIGTERM, so its TSDB closes cleanly; SIGKILL after 30 s). Its data
    /// directory and address stay reserved for [`Prometheus::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal("TERM");
            if child.wait_exit(Duration::from_secs(30)).is_none() {
                child.signal("KILL");
                child.wait_exit(Duration::from_secs(10));
            }
        }
    }

    /// Starts the receiver again on the same address and TSDB (after [`Prometheus::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Prometheus's own log (stderr of every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
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
        let body = self.query(query).await;
        let result = body["data"]["result"].as_array()?;
        let first = result.first()?;
        first["value"][1].as_str().and_then(|v| v.parse().ok())
    }

    /// An instant query's JSON answer (asserts success).
    async fn query(&self, query: &str) -> serde_json::Value {
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
        body
    }

    /// The raw samples of a range-vector query such as `up{job="x"}[10m]`: per series, its
    /// labels and `(timestamp seconds, value)` in time order. Staleness markers are not
    /// returned by Prometheus.
    pub async fn query_samples(
        &self,
        query: &str,
    ) -> Vec<(BTreeMap<String, String>, Vec<(f64, f64)>)> {
        let body = self.query(query).await;
        let Some(result) = body["data"]["result"].as_array() else {
            return Vec::new();
        };
        result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let values = s["values"]
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|p| {
                                let t = p[0].as_f64()?;
                                let v = p[1].as_str()?.parse().ok()?;
                                Some((t, v))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (labels, values)
            })
            .collect()
    }
}

/// The address in the first `msg="Listening on" address=HOST:PORT` line of the log at `log`
/// after `offset`, waiting up to a minute; panics with the log if the process exits first.
fn listening_address(child: &mut ChildGuard, log: &Path, offset: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.get(offset..).and_then(|t| {
            t.lines()
                .filter(|l| l.contains("msg=\"Listening on\""))
                .find_map(|l| l.split_once(" address=").map(|(_, a)| a))
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        });
        if let Some(a) = found.filter(|a| !a.ends_with(":0")) {
            return a;
        }
        if child.wait_exit(Duration::ZERO).is_some() || child.child.is_none() {
            panic!("prometheus exited before it listened; log:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not listen within a minute; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `prometheus --enable-feature=agent` with `config_yaml` written to
/// `<dir>/prometheus.yml`, its WAL under `<dir>/data/wal`, listening on a port of its own
/// choosing (returned; its log is `<dir>/prometheus.log`). Fails (does not skip) without
/// `/usr/bin/prometheus`. Stop it with `signal("TERM")` and `wait_exit` so the last WAL page
/// is flushed.
pub fn start_agent_mode(dir: &Path, config_yaml: &str) -> (ChildGuard, String) {
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
        .arg("--web.listen-address=127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
        .spawn()
        .expect("start prometheus");
    let mut child = ChildGuard::new("prometheus", child);
    let addr = listening_address(&mut child, &dir.join("prometheus.log"), 0);
    (child, addr)
}
