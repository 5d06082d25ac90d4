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
//!
//! With TLS ([`EtcdServer::start_tls`]) etcd serves `https` with a server certificate and, when
//! given a client CA, requires client certificates (`--client-cert-auth`). A cluster
//! ([`EtcdCluster`]) needs its peer addresses before it starts: each member binds its own
//! loopback address (`127.X.Y.1`, `.2`, `.3` with random X and Y, so concurrent tests do not
//! meet) on etcd's peer port, and its client port on port 0 as above.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// The certificate files of an etcd that serves TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// One etcd member (by default a single-member cluster).
pub struct EtcdServer {
    dir: tempfile::TempDir,
    /// 0 until the first start has bound them.
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// The address it binds (127.0.0.1 unless it is a cluster member).
    ip: String,
    name: String,
    /// `--initial-cluster`; empty for a single member.
    initial_cluster: String,
    tls: Option<EtcdTls>,
}

/// The port of the first log line after `offset` with `prefix` followed by `IP:PORT`.
fn logged_port(log: &str, ip: &str, offset: usize, prefix: &str) -> Option<u16> {
    let tail = log.get(offset..)?;
    let at = tail.find(prefix)? + prefix.len();
    let port: String = tail[at..]
        .strip_prefix(ip)?
        .strip_prefix(':')?
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
        let mut server = EtcdServer::new("127.0.0.1", "default", None);
        server.spawn();
        server
    }

    /// Starts an etcd that serves TLS with `tls`.
    pub fn start_tls(tls: EtcdTls) -> Self {
        let mut server = EtcdServer::new("127.0.0.1", "default", Some(tls));
        server.spawn();
        server
    }

    fn new(ip: &str, name: &str, tls: Option<EtcdTls>) -> Self {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: these tests need a real etcd. Run the README's test command \
             (it installs Debian's etcd-server), or `apt-get install etcd-server`."
        );
        EtcdServer {
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: 0,
            peer_port: 0,
            child: None,
            ip: ip.to_owned(),
            name: name.to_owned(),
            initial_cluster: String::new(),
            tls,
        }
    }

    /// `127.0.0.1:PORT`, the form `--kv etcd://` takes.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts the process; returns the log offset its lines start at.
    fn launch(&mut self) -> usize {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", self.ip, self.client_port);
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let initial_cluster = if self.initial_cluster.is_empty() {
            format!("{}={peer}", self.name)
        } else {
            self.initial_cluster.clone()
        };
        let offset = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        offset
    }

    fn spawn(&mut self) {
        let offset = self.launch();
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
            let serving = if self.tls.is_some() {
                "serving client requests on "
            } else {
                "serving insecure client requests on "
            };
            if self.client_port == 0 || self.peer_port == 0 {
                let log = self.log();
                if let (Some(c), Some(p)) = (
                    logged_port(&log, &self.ip, offset, serving),
                    logged_port(&log, &self.ip, offset, "listening for peers on "),
                ) {
                    (self.client_port, self.peer_port) = (c, p);
                }
            } else if self.healthy(offset) {
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

    fn healthy(&self, offset: usize) -> bool {
        // A TLS etcd (perhaps requiring client certificates) is asked nothing: its log says
        // when it serves. A cluster member is ready once the cluster has a leader.
        if self.tls.is_some() || !self.initial_cluster.is_empty() {
            return self
                .log()
                .get(offset..)
                .is_some_and(|l| l.contains("ready to serve client requests"));
        }
        let Ok(mut conn) = TcpStream::connect((self.ip.as_str(), self.client_port)) else {
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

    /// Starts etcd again on the same data dir and ports, serving TLS from now on (users and
    /// roles set up over plain HTTP before are kept).
    pub fn restart_with_tls(&mut self, tls: EtcdTls) {
        self.kill();
        self.tls = Some(tls);
        self.spawn();
    }

    /// Starts etcd again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// A cluster of etcd members on their own loopback addresses (see the module docs).
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members (TLS for clients with `tls`, whose server certificate must name
    /// every member's address: [`EtcdCluster::ips`]) and waits until each serves.
    pub fn start(n: usize, base: &str, tls: Option<EtcdTls>) -> EtcdCluster {
        let ips = EtcdCluster::ips_for(n, base);
        let peers: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect();
        let mut members: Vec<EtcdServer> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let mut m = EtcdServer::new(ip, &format!("m{i}"), tls.clone());
                m.peer_port = 2380;
                m.initial_cluster = peers.join(",");
                m
            })
            .collect();
        // Members wait for each other: start them all, then wait for each.
        let offsets: Vec<usize> = members.iter_mut().map(EtcdServer::launch).collect();
        for (m, offset) in members.iter_mut().zip(offsets) {
            m.wait_ready(offset);
        }
        EtcdCluster { members }
    }

    /// A random `127.X.Y` prefix for [`EtcdCluster::start`]'s `base`.
    pub fn random_base() -> String {
        use std::hash::{BuildHasher, Hasher};
        // std's per-process random hasher keys: a random number without a dependency.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("127.{}.{}", 1 + r % 254, 1 + (r >> 8) % 254)
    }

    /// The addresses of `n` members with `base` (from [`EtcdCluster::random_base`]).
    pub fn ips_for(n: usize, base: &str) -> Vec<String> {
        (1..=n).map(|i| format!("{base}.{i}")).collect()
    }

    /// The index of the member that leads now: the one whose log says it "became leader" at
    /// the highest term (raft logs that line only on the winner). Waits up to 20 s for one.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let best = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.child.is_some())
                .filter_map(|(i, m)| {
                    let log = m.log();
                    let line = log
                        .lines()
                        .rev()
                        .find(|l| l.contains(" became leader at term "))?;
                    let term: u64 = line.rsplit(' ').next()?.trim().parse().ok()?;
                    Some((term, i))
                })
                .max();
            if let Some((_, i)) = best {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd member became leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every member's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
