//! Debian's Prometheus 2.42 in agent mode, started by the tests that compare with it.

use std::path::Path;
use std::process::{Command, Stdio};

use super::ChildGuard;

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
