//! The agent's own server over HTTPS (`server.http_tls_config`), with client certificates
//! required and verified, used by the client tools with `--ca-file`, `--cert-file`,
//! `--key-file` and `--insecure-skip-verify`; certificates and the client CA rotated on disk
//! are used for new connections without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::agent::Agent;
use crate::support::agentctl;
use crate::support::tls::{write_atomic, Ca};

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

fn run(dir: &Path, args: &[&str]) -> Run {
    let o = agentctl(args, dir);
    Run {
        code: o.status.code(),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `args` until it exits 0 (the agent getting ready, a rotation being picked up);
/// returns how long that took.
fn until_ok(dir: &Path, args: &[&str], timeout: Duration, agent: &Agent) -> Duration {
    let start = Instant::now();
    loop {
        let r = run(dir, args);
        if r.code == Some(0) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "agentctl {args:?} kept failing: {}{}\nagent log:\n{}",
            r.out,
            r.err,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client certificate the agent refused. With TLS 1.3 the server checks the client's
/// certificate after the client has finished its side of the handshake, so the client learns
/// of the refusal from the alert the server sends then: read with its request's answer
/// (`alert` in the error), or, when the alert and the close arrive before the HTTP client has
/// sent the request, as a connection closed before the request ("connection was not ready",
/// seen on a loaded machine). Either way the agent logged why (`reason`).
fn refused(r: &Run, alert: &str, reason: &str, agent: &Agent) {
    assert_ne!(r.code, Some(0), "{}", r.out);
    // Either way the client tool says what to check (cli/src/client.rs).
    assert!(r.err.contains("client certificate"), "{}", r.err);
    if r.err.contains(alert) {
        return;
    }
    assert!(
        r.err.contains("connection was not ready") || r.err.contains("connection closed"),
        "neither the alert {alert} nor a closed connection: {}",
        r.err
    );
    agent.wait_log(reason, Duration::from_secs(10));
}

#[test]
fn https_with_client_certificates_rotated_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("agent-ca");
    let server_ca = ca.write(d, "server-ca.pem");
    let client_ca = ca.write(d, "client-ca.pem");
    let (server_crt, server_key) = ca.server(&["127.0.0.1"]).write(d, "server");
    let (client_crt, client_key) = ca.client("operator").write(d, "operator");
    let other = Ca::new("other-ca");
    let (stranger_crt, stranger_key) = other.client("stranger").write(d, "stranger");
    let yaml = format!(
        "server:
  http_tls_config:
    cert_file: {}
    key_file: {}
    client_auth_type: RequireAndVerifyClientCert
    client_ca_file: {}
    min_version: TLS12
metrics:
  wal_directory: {}
  scraping_service:
    enabled: true
",
        s(&server_crt),
        s(&server_key),
        s(&client_ca),
        s(&d.join("wal"))
    );
    let mut agent = Agent::builder(d).name("tls").config(&yaml).spawn();
    let url = format!("https://{}", agent.addr());
    let with = |ca: &Path, crt: &Path, key: &Path| -> Vec<String> {
        [
            "--addr",
            &url,
            "--ca-file",
            s(ca),
            "--cert-file",
            s(crt),
            "--key-file",
            s(key),
        ]
        .map(String::from)
        .to_vec()
    };
    let cmd = |head: &[&str], tail: &[String]| -> Vec<String> {
        head.iter()
            .map(|a| a.to_string())
            .chain(tail.iter().cloned())
            .collect()
    };
    let go = |v: Vec<String>| -> Run {
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        run(d, &v)
    };
    let good = with(&server_ca, &client_crt, &client_key);
    let list = cmd(&["config", "list"], &good);
    let list_refs: Vec<&str> = list.iter().map(String::as_str).collect();
    until_ok(d, &list_refs, Duration::from_secs(60), &agent);
    assert!(
        agent.log().contains("scheme=https"),
        "the start log says HTTPS: {}",
        agent.log()
    );

    // Writes and reads through HTTPS with the client certificate.
    std::fs::write(d.join("one.yml"), "scrape_configs: []\n").unwrap();
    let r = go(cmd(&["config", "put", "one", s(&d.join("one.yml"))], &good));
    assert_eq!(r.code, Some(0), "{}{}", r.out, r.err);
    let r = go(cmd(&["config", "list"], &good));
    assert!(r.out.contains("one"), "{}{}", r.out, r.err);
    let sync_dir = d.join("configs");
    std::fs::create_dir(&sync_dir).unwrap();
    std::fs::write(sync_dir.join("one.yml"), "scrape_configs: []\n").unwrap();
    std::fs::write(sync_dir.join("two.yml"), "scrape_configs: []\n").unwrap();
    let r = go(cmd(&["config-sync", s(&sync_dir)], &good));
    assert_eq!(r.code, Some(0), "{}{}", r.out, r.err);
    let r = go(cmd(&["config", "diff", s(&sync_dir)], &good));
    assert_eq!(r.code, Some(0), "in sync: {}{}", r.out, r.err);
    let r = go(cmd(&["ring", "status"], &good));
    assert_eq!(r.code, Some(0), "{}{}", r.out, r.err);
    // --insecure-skip-verify replaces --ca-file (the client certificate is still needed).
    let r = go(cmd(
        &["config", "list", "--insecure-skip-verify"],
        &[
            "--addr".into(),
            url.clone(),
            "--cert-file".into(),
            s(&client_crt).into(),
            "--key-file".into(),
            s(&client_key).into(),
        ],
    ));
    assert_eq!(r.code, Some(0), "{}{}", r.out, r.err);

    // Refused: no client certificate, one from another CA, a server CA the client does not
    // know, plain HTTP on the HTTPS port.
    let no_cert = go(cmd(
        &["config", "list", "--ca-file", s(&server_ca), "--addr"],
        std::slice::from_ref(&url),
    ));
    refused(
        &no_cert,
        "CertificateRequired",
        "peer sent no certificates",
        &agent,
    );
    let stranger = go(cmd(
        &["config", "list"],
        &with(&server_ca, &stranger_crt, &stranger_key),
    ));
    refused(&stranger, "UnknownCA", "UnknownIssuer", &agent);
    let other_ca = other.write(d, "other-ca.pem");
    let unknown_server = go(cmd(
        &["config", "list"],
        &with(&other_ca, &client_crt, &client_key),
    ));
    assert_ne!(unknown_server.code, Some(0), "{}", unknown_server.out);
    assert!(
        unknown_server.err.contains("UnknownIssuer"),
        "{}",
        unknown_server.err
    );
    let plain = go(cmd(
        &["config", "list", "--addr"],
        &[format!("http://{}", agent.addr())],
    ));
    assert_ne!(plain.code, Some(0), "{}", plain.out);
    assert!(
        plain
            .err
            .contains("Client sent an HTTP request to an HTTPS server"),
        "{}",
        plain.err
    );
    eprintln!(
        "refusals:\n no client cert: {}\n other CA's client cert: {}\n unknown server CA: {}",
        no_cert.err.trim(),
        stranger.err.trim(),
        unknown_server.err.trim()
    );
    agent.wait_log("TLS handshake failed", Duration::from_secs(10));

    // The server certificate rotated on disk to one from a new CA: new connections get it.
    let ca2 = Ca::new("agent-ca-2");
    let server_ca2 = ca2.write(d, "server-ca-2.pem");
    let leaf = ca2.server(&["127.0.0.1"]);
    // The key first, then the certificate: for a moment the pair does not match, and the
    // agent keeps the old one meanwhile.
    write_atomic(&server_key, leaf.key_pem.as_bytes());
    write_atomic(&server_crt, leaf.cert_pem.as_bytes());
    let rotated = with(&server_ca2, &client_crt, &client_key);
    let list2 = cmd(&["config", "list"], &rotated);
    let list2_refs: Vec<&str> = list2.iter().map(String::as_str).collect();
    let took = until_ok(d, &list2_refs, Duration::from_secs(30), &agent);
    let r = go(cmd(&["config", "list"], &good));
    assert_ne!(r.code, Some(0), "the old certificate is gone: {}", r.out);
    agent.wait_log("certificate files changed", Duration::from_secs(10));

    // The client CA rotated: the stranger's CA is now the one trusted.
    other.write(d, "client-ca.pem");
    let stranger2 = cmd(
        &["config", "list"],
        &with(&server_ca2, &stranger_crt, &stranger_key),
    );
    let stranger2_refs: Vec<&str> = stranger2.iter().map(String::as_str).collect();
    let took_ca = until_ok(d, &stranger2_refs, Duration::from_secs(30), &agent);
    let r = go(cmd(&["config", "list"], &rotated));
    assert_ne!(r.code, Some(0), "the old client CA is gone: {}", r.out);
    eprintln!("server certificate rotation used after {took:?}; client CA after {took_ca:?}");
    assert!(agent.is_running(), "{}", agent.log());
}
