//! The one agent harness: an `agentctl agent run` process for a test.
//!
//! ```ignore
//! let a = Agent::builder(dir.path()).name("a1").config(yaml).start(); // waits for /-/ready
//! a.put_config("x", CFG);
//! a.wait_log("instance started", Duration::from_secs(10));
//! assert_eq!(a.stop(), Some(0)); // SIGTERM, waits for the exit
//! a.restart(); // same directory, config and flags; a new port
//! ```
//!
//! The agent binds `127.0.0.1:0` and writes the address it bound to
//! `--server.http.address-file`, which the harness reads: no test picks a port and releases it
//! before the agent binds it. Standard error goes to `<dir>/<name>.log` (appended across
//! restarts); [`Agent::wait_log`] waits for a line there. The process is killed when the
//! value is dropped.
//!
//! Every method blocks the calling thread. From an async test use a multi-thread runtime and
//! call the waiting methods through [`tokio::task::block_in_place`] (or `spawn_blocking`), so
//! in-process servers of the test keep running meanwhile.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{bin, http_full, ChildGuard, HttpResponse};

/// How long `start` waits for `/-/ready` unless told otherwise.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for an agent process; see [`Agent::builder`].
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    dir: PathBuf,
    name: String,
    args: Vec<OsString>,
    config: Option<PathBuf>,
    ready_timeout: Duration,
    binary: Option<PathBuf>,
    /// Variables set (`Some`) or removed (`None`) from the inherited environment, in order.
    env: Vec<(OsString, Option<OsString>)>,
}

impl AgentBuilder {
    /// Names the agent: its log is `<dir>/<name>.log`, its config `<dir>/<name>.yml`. Default
    /// `agent`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// An extra command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Writes `yaml` to `<dir>/<name>.yml` and runs with `--config.file` on it (without one the
    /// agent runs its embedded default, with its data in `<dir>/data-agent/`).
    pub fn config(mut self, yaml: &str) -> Self {
        let path = self.dir.join(format!("{}.yml", self.name));
        std::fs::write(&path, yaml).expect("write the agent config");
        self.config = Some(path);
        self
    }

    /// Runs with `--config.file path`.
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config = Some(path.to_owned());
        self
    }

    /// Runs this `agentctl` binary instead of the one built for the tests (a packaged copy).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// An environment variable of the tests' process that the agent does not inherit.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Starts the process and waits until it listens (it answers `/-/healthy`), not until it
    /// is ready: for tests of an agent that cannot get ready (its KV store is down).
    pub fn spawn(self) -> Agent {
        let mut agent = Agent {
            opts: self,
            addr: String::new(),
            child: None,
        };
        agent.launch();
        agent
    }

    /// Starts the process and waits for `/-/ready`.
    pub fn start(self) -> Agent {
        let timeout = self.ready_timeout;
        let agent = self.spawn();
        agent.wait_ready(timeout);
        agent
    }
}

/// A running (or stopped) `agentctl agent run` process.
#[derive(Debug)]
pub struct Agent {
    opts: AgentBuilder,
    addr: String,
    child: Option<ChildGuard>,
}

/// How many lines of an agent's log a failing test prints (see the `Drop` impl).
const LOG_TAIL_ON_PANIC: usize = 80;

impl Drop for Agent {
    /// When the test is failing (panicking), prints the end of this agent's log to standard
    /// error: a test that timed out waiting for an agent says what the agent was doing,
    /// also on a CI machine whose temporary directories are gone afterwards.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_ON_PANIC);
        eprintln!(
            "---- the last {} of {} log lines of agent {} ({}) ----",
            lines.len() - from,
            lines.len(),
            self.opts.name,
            self.log_path().display()
        );
        for l in &lines[from..] {
            let end = (0..=l.len().min(600))
                .rev()
                .find(|&i| l.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!("{}: {}", self.opts.name, &l[..end]);
        }
    }
}

impl Agent {
    /// An agent working in `dir` (its current directory).
    pub fn builder(dir: &Path) -> AgentBuilder {
        AgentBuilder {
            dir: dir.to_owned(),
            name: "agent".to_owned(),
            args: Vec::new(),
            config: None,
            ready_timeout: READY_TIMEOUT,
            binary: None,
            env: Vec::new(),
        }
    }

    /// The embedded default in `dir` with `args`, ready.
    pub fn start(dir: &Path, args: &[&str]) -> Agent {
        Agent::builder(dir).args(args).start()
    }

    fn address_file(&self) -> PathBuf {
        self.opts.dir.join(format!("{}.addr", self.opts.name))
    }

    pub fn log_path(&self) -> PathBuf {
        self.opts.dir.join(format!("{}.log", self.opts.name))
    }

    /// Starts the process and waits for the address it bound.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.opts.name);
        let addr_file = self.address_file();
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log file");
        let mut cmd = Command::new(self.opts.binary.clone().unwrap_or_else(bin));
        for (key, value) in &self.opts.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.args(["agent", "run", "--server.http.address", "127.0.0.1:0"])
            .arg("--server.http.address-file")
            .arg(&addr_file);
        if let Some(c) = &self.opts.config {
            cmd.arg("--config.file").arg(c);
        }
        let child = cmd
            .args(&self.opts.args)
            .current_dir(&self.opts.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agentctl agent run");
        self.child = Some(ChildGuard::new(&self.opts.name, child));
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    self.addr = a.trim().to_owned();
                    return;
                }
            }
            if !self.is_running() {
                panic!(
                    "{} exited before it listened; log:\n{}",
                    self.opts.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen within {:?}; log:\n{}",
                self.opts.name,
                self.opts.ready_timeout,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// `127.0.0.1:PORT`, as bound by the current run.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| {
            c.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        })
    }

    /// Everything the agent logged so far (every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for a log line containing `needle` (in any run); returns the first such line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_after(0, needle, timeout)
    }

    /// Like [`Agent::wait_log`], looking only after the first `offset` bytes of the log (take
    /// `agent.log().len()` before the action whose line you wait for).
    pub fn wait_log_after(&self, offset: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log
                .get(offset..)
                .and_then(|tail| tail.lines().find(|l| l.contains(needle)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no log line with {needle:?} within {timeout:?}; log:\n{log}",
                self.opts.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/-/ready` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_until(&format!("{} ready", self.opts.name), timeout, |a| {
            a.try_req("GET", "/-/ready", &[], b"")
                .is_ok_and(|r| r.status == 200)
        });
    }

    /// Polls `f` every 50 ms until it holds; panics with the log after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; log of {}:\n{}",
                self.opts.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP request to the agent.
    pub fn try_req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        http_full(method, &self.addr, path, headers, body)
    }

    /// One HTTP request to the agent; panics when it does not answer.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpResponse {
        self.try_req(method, path, headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.opts.name))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.req("GET", path, &[], "")
    }

    /// The `data` member of a 200 JSON answer to `GET path`.
    pub fn data(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        let mut v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        v["data"].take()
    }

    /// `PUT /agent/api/v1/config/{name}`.
    pub fn put_config(&self, name: &str, yaml: &str) -> HttpResponse {
        self.req("PUT", &format!("/agent/api/v1/config/{name}"), &[], yaml)
    }

    /// `DELETE /agent/api/v1/config/{name}`.
    pub fn delete_config(&self, name: &str) -> HttpResponse {
        self.req("DELETE", &format!("/agent/api/v1/config/{name}"), &[], "")
    }

    /// The config names this agent runs (`/agent/api/v1/metrics/instances`); `None` when it
    /// does not answer.
    pub fn running_configs(&self) -> Option<Vec<String>> {
        super::running_configs(&self.addr)
    }

    /// The sum of the agent's own metric `name` over its label sets whose text contains
    /// `label_part` (`""` for all): `name 3` and `name{a="b"} 3` both count.
    pub fn metric(&self, name: &str, label_part: &str) -> f64 {
        let body = self
            .try_req("GET", "/metrics", &[], b"")
            .map(|r| r.body)
            .unwrap_or_default();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (labels, value) = l.strip_prefix(name)?.rsplit_once(' ')?;
                // `name_total` is another metric; `""` is in every label text.
                let ours = labels.is_empty() || labels.starts_with('{');
                (ours && labels.contains(label_part))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.opts.name))
            .signal(sig);
    }

    /// Waits up to `timeout` for the process to exit; its exit code (`None`: killed by a
    /// signal, or still running at the timeout).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let code = child.wait_exit(timeout);
        if child.child.is_none() {
            self.child = None;
        }
        code
    }

    /// SIGTERM, then waits up to a minute for the exit; the exit code. A graceful stop leaves
    /// the ring and flushes remote_write for up to `remote_flush_deadline`.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        let code = self.wait_exit(Duration::from_secs(60));
        assert!(
            self.child.is_none(),
            "{} still runs a minute after SIGTERM; log:\n{}",
            self.opts.name,
            self.log()
        );
        code
    }

    /// SIGKILL (a crash) and waits for the process to be gone.
    pub fn kill(&mut self) {
        // Dropping the guard kills and reaps the process.
        self.child = None;
    }

    /// Starts the process again (after `stop` or `kill`) on the same directory, config and
    /// flags, on a new port; waits for `/-/ready`.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_ready(self.opts.ready_timeout);
    }
}

/// config name → names of the agents running it. An agent whose API does not answer runs
/// nothing.
pub fn placement(agents: &[&Agent]) -> std::collections::BTreeMap<String, Vec<String>> {
    super::placement(agents.iter().map(|a| (a.name(), a.addr())))
}

/// An agent.yaml for one member of a scraping-service cluster on a real etcd: lifecycler ID
/// `id` at 127.0.0.1, heartbeats every second, its WAL in `wal_directory`.
#[derive(Debug, Clone)]
pub struct ClusterMember<'a> {
    pub id: &'a str,
    /// `host:port` of etcd; several endpoints separated by `, `.
    pub etcd: &'a str,
    /// Further fields of the `etcd:` block, one `key: value` per line, unindented (the TLS
    /// fields of `Pki::fields`, `dial_timeout: 5s`, credentials): `yaml` indents them.
    pub etcd_extra: &'a str,
    pub wal_directory: &'a Path,
    /// `lifecycler.ring.heartbeat_timeout`, e.g. `4s`.
    pub heartbeat_timeout: &'a str,
    /// `lifecycler.auto_forget_unhealthy_periods`; `None` leaves the default.
    pub auto_forget_periods: Option<u32>,
    pub reshard_interval: &'a str,
    /// Further lines of the `metrics:` block, indented by two spaces (`  global: ...`).
    pub metrics_extra: &'a str,
}

impl ClusterMember<'_> {
    pub fn yaml(&self) -> String {
        let forget = self
            .auto_forget_periods
            .map(|n| format!("      auto_forget_unhealthy_periods: {n}\n"))
            .unwrap_or_default();
        let etcd_extra: String = self
            .etcd_extra
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect();
        format!(
            "metrics:
  wal_directory: {wal}
{extra}  scraping_service:
    enabled: true
    reshard_interval: {reshard}
    kvstore:
      store: etcd
      etcd:
        endpoints: [{etcd}]
{etcd_extra}    lifecycler:
      id: {id}
      address: 127.0.0.1
      heartbeat_period: 1s
{forget}      ring:
        heartbeat_timeout: {timeout}
",
            wal = self.wal_directory.display(),
            extra = self.metrics_extra,
            reshard = self.reshard_interval,
            etcd = self.etcd,
            id = self.id,
            timeout = self.heartbeat_timeout,
        )
    }
}
