//! `agentctl agent run` as a real process.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{bin, free_port, http, wait_http, ChildGuard};

#[test]
fn embedded_default_starts_serves_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin())
        .args(["agent", "run", "--server.http.address", &addr])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = ChildGuard::new("agent", child);
    wait_http(&addr, "/-/ready", 200, Duration::from_secs(10));
    assert_eq!(
        http("GET", &addr, "/-/healthy", b"").unwrap(),
        (200, "Agent is Healthy.\n".into())
    );
    assert_eq!(
        http("GET", &addr, "/-/ready", b"").unwrap(),
        (200, "Agent is Ready.\n".into())
    );
    assert_eq!(http("GET", &addr, "/nope", b"").unwrap().0, 404);
    // The config endpoint is off unless -config.enable-read-api, with the old agent's text.
    assert_eq!(
        http("GET", &addr, "/-/config", b"").unwrap(),
        (404, "404 - config endpoint is disabled".into())
    );
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn port_in_use_is_a_clear_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["agent", "run", "--server.http.address", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
