//! The Config Management API against a real `agentctl agent run` process on the embedded
//! store: every route and status code of the old agent's API (docs/compat.md), and what we add
//! (ETag/If-Match, hashes, body limit, bearer auth, redaction).

use std::process::Command;
use std::time::Duration;

use crate::support::{bin, Agent, HttpResponse};

const CFG: &str = "scrape_configs:\n  - job_name: job-a\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n  - url: http://127.0.0.1:2/push\nremote_flush_deadline: 1s\n";

fn cfg(job: &str) -> String {
    CFG.replace("job-a", job)
}

fn assert_resp(r: &HttpResponse, status: u16, body: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, body), "{r:?}");
}

fn err_body(msg: &str) -> String {
    format!(
        r#"{{"status":"error","data":{{"error":{}}}}}"#,
        serde_json::Value::from(msg)
    )
}

#[test]
fn config_management_api_is_compatible_route_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), &[]);
    let list = |a: &Agent| a.req("GET", "/agent/api/v1/configs", &[], "");

    // Empty list; JSON envelope, no trailing newline.
    let r = list(&a);
    assert_resp(&r, 200, r#"{"status":"success","data":{"configs":[]}}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));

    // PUT creates (201), PUT again updates (200), POST works the same.
    assert_resp(
        &a.req("PUT", "/agent/api/v1/config/a", &[], &cfg("job-a")),
        201,
        r#"{"status":"success"}"#,
    );
    assert_resp(
        &a.req("PUT", "/agent/api/v1/config/a", &[], &cfg("job-a")),
        200,
        r#"{"status":"success"}"#,
    );
    assert_resp(
        &a.req("POST", "/agent/api/v1/config/b", &[], &cfg("job-b")),
        201,
        r#"{"status":"success"}"#,
    );

    // Encoded slashes: `team%2Fa` is the config `team/a`; a raw slash is no route.
    assert_eq!(
        a.req("PUT", "/agent/api/v1/config/team%2Fa", &[], &cfg("job-t"))
            .status,
        201
    );
    assert_resp(
        &a.req("PUT", "/agent/api/v1/config/team/a", &[], &cfg("job-u")),
        404,
        "404 page not found\n",
    );
    assert_resp(
        &list(&a),
        200,
        r#"{"status":"success","data":{"configs":["a","b","team/a"]}}"#,
    );
    assert_eq!(
        a.req("GET", "/agent/api/v1/configs/team%2Fa", &[], "")
            .status,
        200
    );

    // The name in the URL wins over a name in the body.
    let named = format!("name: something-else\n{}", cfg("job-n"));
    assert_eq!(
        a.req("PUT", "/agent/api/v1/config/n", &[], &named).status,
        201
    );
    let got = a.req("GET", "/agent/api/v1/configs/n", &[], "");
    let value: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    let yaml = value["data"]["value"].as_str().unwrap();
    assert!(yaml.starts_with("name: n\n"), "{yaml}");

    // 404s with the old texts.
    assert_resp(
        &a.req("GET", "/agent/api/v1/configs/nope", &[], ""),
        404,
        &err_body("configuration nope does not exist"),
    );
    assert_resp(
        &a.req("DELETE", "/agent/api/v1/config/nope", &[], ""),
        404,
        &err_body("configuration nope does not exist"),
    );
    assert_eq!(
        a.req("GET", "/agent/api/v1/config/a", &[], "").status,
        405,
        "wrong method"
    );

    // 400s: bad YAML, unknown field, empty body, validation, file reading, uniqueness.
    let r = a.req("PUT", "/agent/api/v1/config/bad", &[], "scrape_configs: [");
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("could not unmarshal config: "),
        "{}",
        r.body
    );
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/bad",
        &[],
        "scrape_configs:\n  - job_name: x\n    scrape_intervl: 1m\n",
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("could not unmarshal config: 3:5: scrape_configs[0]: unknown field \\\"scrape_intervl\\\""), "{}", r.body);
    assert_resp(
        &a.req("PUT", "/agent/api/v1/config/bad", &[], ""),
        400,
        &err_body("could not unmarshal config: EOF"),
    );
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/bad",
        &[],
        "scrape_configs:\n  - job_name: s\n    scrape_interval: 10s\n    scrape_timeout: 20s\n",
    );
    assert_resp(
        &r,
        400,
        &err_body("failed to validate config: failed to apply defaults to \"bad\": scrape timeout greater than scrape interval for scrape config with job name \"s\""),
    );
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/bad",
        &[],
        "scrape_configs:\n  - job_name: f\n    bearer_token_file: /etc/passwd\n",
    );
    assert_resp(
        &r,
        400,
        &err_body("failed to validate config: failed to validate scrape_config at index 0: bearer_token_file must be empty unless dangerous_allow_reading_files is set"),
    );
    // oauth2's client_secret_file reads the agent's disk too.
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/bad",
        &[],
        "remote_write:\n  - url: http://127.0.0.1:1/w\n    oauth2:\n      client_id: a\n      client_secret_file: /etc/passwd\n      token_url: http://127.0.0.1:1/t\n",
    );
    assert_resp(
        &r,
        400,
        &err_body("failed to validate config: failed to validate remote_write at index 0: client_secret_file must be empty unless dangerous_allow_reading_files is set"),
    );
    let r = a.req("PUT", "/agent/api/v1/config/dup", &[], &cfg("job-a"));
    assert_resp(
        &r,
        400,
        &err_body("failed to check uniqueness of config: found multiple scrape configs in config store with job name \"job-a\""),
    );
    let r = a.req("PUT", "/agent/api/v1/config/..", &[], &cfg("job-dots"));
    assert_eq!(r.status, 400, "{r:?}");

    // ETag / If-Match: a stale tag is refused with 412 and nothing is overwritten.
    let got = a.req("GET", "/agent/api/v1/configs/a", &[], "");
    let etag = got.header("etag").unwrap().to_owned();
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/a",
        &[("If-Match", &etag)],
        &cfg("job-a2"),
    );
    assert_eq!(r.status, 200);
    let r = a.req(
        "PUT",
        "/agent/api/v1/config/a",
        &[("If-Match", &etag)],
        &cfg("job-a3"),
    );
    assert_eq!(r.status, 412, "{r:?}");
    let r = a.req(
        "DELETE",
        "/agent/api/v1/config/a",
        &[("If-Match", &etag)],
        "",
    );
    assert_eq!(r.status, 412, "{r:?}");
    let hashes = a.req("GET", "/agent/api/v1/configs?hashes=true", &[], "");
    let v: serde_json::Value = serde_json::from_str(&hashes.body).unwrap();
    let now = v["data"]["hashes"]["a"].as_str().unwrap();
    assert_ne!(format!("\"{now}\""), etag);
    assert_eq!(v["data"]["configs"].as_array().unwrap().len(), 4);

    // Body limit.
    let big = format!("{}# {}\n", cfg("job-big"), "x".repeat(5 << 20));
    assert_eq!(
        a.req("PUT", "/agent/api/v1/config/big", &[], &big).status,
        413
    );

    // DELETE, then it is gone.
    assert_resp(
        &a.req("DELETE", "/agent/api/v1/config/b", &[], ""),
        200,
        r#"{"status":"success"}"#,
    );
    assert_eq!(a.req("GET", "/agent/api/v1/configs/b", &[], "").status, 404);

    // Counters with the old agent's names.
    let m = a.req("GET", "/metrics", &[], "");
    assert!(
        m.body.contains("agent_metrics_ha_configs_created_total 4"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("agent_metrics_ha_configs_updated_total 2"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("agent_metrics_ha_configs_deleted_total 1"),
        "{}",
        m.body
    );
    assert_eq!(a.stop(), Some(0));
}

#[test]
fn secrets_are_never_shown_and_configs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), &[]);
    let secret_cfg = "scrape_configs:\n  - job_name: s\n    basic_auth:\n      username: u\n      password: hunter2-secret\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n  - url: http://127.0.0.1:2/push\n    bearer_token: tok-secret-9\nremote_flush_deadline: 1s\n";
    assert_eq!(
        a.req("PUT", "/agent/api/v1/config/s", &[], secret_cfg)
            .status,
        201
    );
    let got = a.req("GET", "/agent/api/v1/configs/s", &[], "");
    assert_eq!(got.status, 200);
    assert!(
        !got.body.contains("hunter2-secret") && !got.body.contains("tok-secret-9"),
        "{}",
        got.body
    );
    assert!(got.body.contains("<secret>"), "{}", got.body);
    assert_eq!(a.stop(), Some(0));

    // Restart on the same directory: the config is still there, secrets intact in the store
    // (a PUT of the redacted GET would corrupt them, so the store keeps the real value).
    let mut b = Agent::start(dir.path(), &[]);
    let list = b.req("GET", "/agent/api/v1/configs", &[], "");
    assert_eq!(
        list.body,
        r#"{"status":"success","data":{"configs":["s"]}}"#
    );
    let log = b.log();
    assert_eq!(b.stop(), Some(0));
    assert!(
        !log.contains("hunter2-secret") && !log.contains("tok-secret-9"),
        "{log}"
    );
}

/// The embedded store writes ring heartbeats to its file only with the next ordinary write
/// (kv/embedded.rs): a config written through the API survives a SIGKILL between heartbeats
/// exactly as before, and the restarted agent is in the ring again.
#[test]
fn configs_survive_a_sigkill_between_deferred_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "metrics:\n  wal_directory: {}\n  scraping_service:\n    enabled: true\n    kvstore:\n      store: embedded\n    lifecycler:\n      heartbeat_period: 100ms\n",
        dir.path().join("wal").display()
    );
    let mut a = Agent::builder(dir.path()).config(&yaml).start();
    assert_eq!(a.put_config("x", CFG).status, 201);
    let heartbeat = |a: &Agent| {
        let r = a.req("GET", "/debug/ring", &[("Accept", "application/json")], "");
        let ring = serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default();
        ring["shards"][0]["timestamp"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    // Heartbeats after the PUT (deferred: in memory only) until the ring's second-resolution
    // timestamp moved twice.
    let at_put = heartbeat(&a);
    a.wait_until(
        "a heartbeat a second after the PUT",
        Duration::from_secs(30),
        |a| {
            let now = heartbeat(a);
            !now.is_empty() && now != at_put
        },
    );
    let later = heartbeat(&a);
    a.wait_until(
        "a heartbeat two seconds after the PUT",
        Duration::from_secs(30),
        |a| {
            let now = heartbeat(a);
            !now.is_empty() && now != later
        },
    );
    a.kill();
    a.restart();
    let list = a.req("GET", "/agent/api/v1/configs", &[], "");
    assert_eq!(
        list.body,
        r#"{"status":"success","data":{"configs":["x"]}}"#
    );
    let got = a.req("GET", "/agent/api/v1/configs/x", &[], "");
    assert_eq!(got.status, 200);
    assert!(got.body.contains("job-a"), "{}", got.body);
    a.wait_until(
        "the agent ACTIVE in the ring again",
        Duration::from_secs(30),
        |a| {
            let r = a.req("GET", "/debug/ring", &[("Accept", "application/json")], "");
            let ring = serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default();
            ring["shards"][0]["state"] == "ACTIVE"
        },
    );
    assert_eq!(a.stop(), Some(0));
}

#[test]
fn writes_need_the_bearer_token_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let mut a = Agent::start(
        dir.path(),
        &["--api.token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(a.req("PUT", "/agent/api/v1/config/x", &[], CFG).status, 401);
    assert_eq!(
        a.req(
            "PUT",
            "/agent/api/v1/config/x",
            &[("Authorization", "Bearer nope")],
            CFG
        )
        .status,
        403
    );
    assert_eq!(
        a.req(
            "PUT",
            "/agent/api/v1/config/x",
            &[("Authorization", "Bearer s3cret")],
            CFG
        )
        .status,
        201
    );
    assert_eq!(
        a.req("DELETE", "/agent/api/v1/config/x", &[], "").status,
        401
    );
    assert_eq!(
        a.req("GET", "/agent/api/v1/configs", &[], "").status,
        200,
        "reads stay open"
    );
    assert_eq!(a.stop(), Some(0));
}

#[test]
fn a_second_agent_on_the_same_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::start(dir.path(), &[]);
    let out = Command::new(bin())
        .args(["agent", "run", "--server.http.address", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is locked by another process"), "{err}");
    assert_eq!(a.stop(), Some(0));
}
