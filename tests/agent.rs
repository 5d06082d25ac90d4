//! `agentctl agent run` as a real process.

use std::process::Command;
use std::time::Duration;

use crate::support::{bin, http, Agent};

#[test]
fn embedded_default_starts_serves_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &[]);
    let addr = agent.addr().to_owned();
    // Port 0: the address it bound is logged, and written to the address file.
    agent.wait_log(
        &format!("msg=\"agent listening\" addr={addr}"),
        Duration::from_secs(1),
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent.addr")).unwrap(),
        format!("{addr}\n")
    );
    assert_ne!(addr, "127.0.0.1:0");
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
    assert_eq!(agent.stop(), Some(0));
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
