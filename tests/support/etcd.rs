//! A real etcd (Debian's `etcd-server`, 3.4) on loopback for the tests: temp data dir, killed
//! on drop, restartable on the same data dir and ports.
//!
//! Ports: etcd binds `127.0.0.1:0` itself for its client and peer listeners and logs what it
//! bound (`serving insecure client requests on 127.0.0.1:PORT`, `listening for peers on
//! 127.0.0.1:PORT`), which is read from its log; nothing picks a port and releases it. A
//! restart binds the same ports again (clients hold the endpoint): should another process
//! have taken one meanwhile, the restart fails with etcd's "address already in use" in the
//! message. (Only the gRPC API, which every test uses, works on port 0: etcd's HTTP/JSON
//! gateway dials the advertised `:0` URL and answers errors.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// One single-member etcd cluster.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    /// 0 until the first start has bound them.
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The port of the first log line after `offset` with `prefix` followed by `127.0.0.1:PORT`.
fn logged_port(log: &str, offset: usize, prefix: &str) -> Option<u16> {
    let tail = log.get(offset..)?;
    let at = tail.find(prefix)? + prefix.len();
    let port: String = tail[at..]
        .strip_prefix("127.0.0.1:")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    port.parse().ok().filter(|p| *p != 0)
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Fails the test (never skips) when etcd is not
    /// installed.
    pub fn start() -> Self {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: these tests need a real etcd. Run the README's test command \
             (it installs Debian's etcd-server), or `apt-get install etcd-server`."
        );
        let mut server = EtcdServer {
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        server.spawn();
        server
    }

    /// `127.0.0.1:PORT`, the form `--kv etcd://` takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let offset = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let child = Command::new(ETCD_BIN)
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        self.wait_ready(offset);
    }

    /// Reads the bound ports from the log (first start), then polls `/health` on the client
    /// port (etcd serves HTTP and gRPC on it).
    fn wait_ready(&mut self, offset: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("etcd exited early ({status}); log:\n{}", self.log());
                }
            }
            if self.client_port == 0 || self.peer_port == 0 {
                let log = self.log();
                if let (Some(c), Some(p)) = (
                    logged_port(&log, offset, "serving insecure client requests on "),
                    logged_port(&log, offset, "listening for peers on "),
                ) {
                    (self.client_port, self.peer_port) = (c, p);
                }
            } else if self.healthy() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within 20s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        if conn
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = conn.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the process (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
