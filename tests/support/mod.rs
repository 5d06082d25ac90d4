//! Helpers shared by the integration tests: the agent harness ([`agent::Agent`]), real etcd and
//! Prometheus servers, child processes that are killed on drop, and a minimal HTTP/1.1 client
//! (no client library needed for probes).
//!
//! No helper picks a free port by binding and releasing it: every server here (agents, etcd,
//! Prometheus, the tests' own targets) binds port 0 itself and reports what it bound.

#![allow(dead_code)]

pub mod agent;
pub mod consul;
pub mod gate;
pub mod kube;
pub mod prometheus;
pub mod tls;
pub mod vmagent;

pub use agent::Agent;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `agentctl` binary cargo built for these tests, or `$AGENTCTL_TEST_BIN` when set (a
/// target directory shared by several checkouts holds whichever `agentctl` was built last).
pub fn bin() -> PathBuf {
    std::env::var_os("AGENTCTL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_agentctl")))
}

/// The repository root (for fixtures).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// Runs `agentctl ARGS` to completion in `dir`.
pub fn agentctl(args: &[&str], dir: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run agentctl")
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> Self {
        ChildGuard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -{sig} {}",
            self.name
        );
    }

    /// Waits for the process to exit, up to `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    http_full(method, addr, path, &[], body).map(|r| (r.status, r.body))
}

/// An HTTP response read by [`http_full`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request with extra headers.
pub fn http_full(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (413) before reading a large body; a failed write is not an error then.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, raw_body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = dechunk(raw_body, &text);
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(body: &str, whole: &str) -> String {
    if !whole
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `GET path` until it answers `want`, or panics after `timeout`.
pub fn wait_http(addr: &str, path: &str, want: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((code, _)) = http("GET", addr, path, b"") {
            if code == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "GET http://{addr}{path} did not answer {want} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The config names an agent runs (`/agent/api/v1/metrics/instances`), or `None` when its API
/// does not answer.
pub fn running_configs(addr: &str) -> Option<Vec<String>> {
    let r = http_full("GET", addr, "/agent/api/v1/metrics/instances", &[], b"").ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some(
        v["data"]
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
    )
}

/// config name → ids of the agents running it, from `(id, addr)` pairs. An agent whose API
/// does not answer runs nothing.
pub fn placement<'a>(
    agents: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, addr) in agents {
        for n in running_configs(addr).unwrap_or_default() {
            m.entry(n).or_default().push(id.to_owned());
        }
    }
    m
}

pub mod etcd;

/// A remote_write queue to `url` for tests that drive the WAL watcher and queue in process
/// (not through an agent): `max_samples_per_send` per request, batches sent within 100 ms.
pub fn remote_write_queue(
    name: &str,
    url: &str,
    max_samples_per_send: usize,
    metrics: &::agent::remote_write::RemoteWriteMetrics,
) -> std::sync::Arc<::agent::remote_write::QueueManager> {
    use ::agent::remote_write::{ClientSettings, QueueManager, QueueSettings, RemoteClient};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = RemoteClient::new(ClientSettings {
        remote_name: name.into(),
        url: reqwest::Url::parse(url).unwrap(),
        timeout: Duration::from_secs(10),
        headers: Default::default(),
        http: Default::default(),
        retry_on_http_429: true,
        agent_id: None,
    })
    .unwrap();
    let cfg = ::agent::config::remote_write::QueueConfig {
        max_samples_per_send,
        batch_send_deadline: ::agent::config::duration::PromDuration::from_millis(100),
        ..Default::default()
    };
    std::sync::Arc::new(QueueManager::new(
        client,
        QueueSettings::new(cfg, std::collections::BTreeMap::new()),
        metrics,
        None,
    ))
}
