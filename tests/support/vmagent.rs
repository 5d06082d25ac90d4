//! A real vmagent (Debian's `victoria-metrics` package) on loopback, with a temp directory;
//! killed on drop. It binds port 0; the port is read from the listening socket the process
//! holds (`/proc/<pid>/fd` and `/proc/net/tcp`), since vmagent logs only the address asked for.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ChildGuard;

const BINARY: &str = "/usr/bin/vmagent";

pub struct VmAgent {
    pub addr: String,
    child: ChildGuard,
    dir: tempfile::TempDir,
}

/// The TCP port a process listens on (IPv4 loopback), if it has one yet.
fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let link = std::fs::read_link(fd.path()).ok()?;
        let link = link.to_string_lossy();
        if let Some(n) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            inodes.push(n.to_owned());
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address rem_address st ... inode (field 9)
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = f[1].rsplit(':').next()?;
            return u16::from_str_radix(port, 16).ok();
        }
    }
    None
}

impl VmAgent {
    /// Starts vmagent with `config_yaml` as `-promscrape.config`, kubernetes and consul SD checked
    /// every second, remote write to a closed port (samples stay queued), and `extra` flags;
    /// waits until `/api/v1/targets` answers.
    pub fn start(config_yaml: &str, extra: &[&str]) -> VmAgent {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run the test suite with the README's test command, ./scripts/test, \
             which installs Debian's victoria-metrics package"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml).expect("write config");
        let log = std::fs::File::create(dir.path().join("vmagent.log")).expect("log");
        let child = Command::new(BINARY)
            .arg(format!("-promscrape.config={}", config.display()))
            .arg("-httpListenAddr=127.0.0.1:0")
            .arg("-remoteWrite.url=http://127.0.0.1:1/api/v1/write")
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.path().join("data").display()
            ))
            .arg("-promscrape.kubernetesSDCheckInterval=1s")
            .arg("-promscrape.consulSDCheckInterval=1s")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start vmagent");
        let mut child = ChildGuard::new("vmagent", child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(p) = listening_port(child.pid()) {
                break p;
            }
            let exited = child
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "vmagent did not listen (exited: {exited}):\n{}",
                std::fs::read_to_string(dir.path().join("vmagent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let v = VmAgent {
            addr: format!("127.0.0.1:{port}"),
            child,
            dir,
        };
        super::wait_http(&v.addr, "/api/v1/targets", 200, Duration::from_secs(30));
        v
    }

    /// `GET /api/v1/targets`: `data.activeTargets`.
    pub fn active_targets(&self) -> Vec<serde_json::Value> {
        let (code, body) = super::http("GET", &self.addr, "/api/v1/targets", b"")
            .unwrap_or_else(|e| panic!("vmagent targets: {e}"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmagent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
