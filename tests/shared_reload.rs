//! `instance_mode: shared` and `/-/reload` / SIGHUP with real agent processes: configs that
//! differ only in name and jobs run as one instance whose jobs follow its members; a reload
//! applies live fields, refuses invalid files and restart-only changes, and keeps running.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::Agent;

/// A scrape target on 127.0.0.1 counting the requests it served.
struct Target {
    addr: String,
    hits: Arc<AtomicUsize>,
}

impl Target {
    fn start() -> Target {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = "test_up 1\n";
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Target { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// `(status, body)` of one request to the agent.
fn call(a: &Agent, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = a.req(method, path, &[], body);
    (r.status, r.body)
}

fn instances(a: &Agent) -> Vec<String> {
    a.running_configs().expect("the agent answers")
}

/// (instance, job) of every target, sorted.
fn target_jobs(a: &Agent) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = a
        .data("/agent/api/v1/metrics/targets")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["instance"].as_str().unwrap().to_owned(),
                t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn metrics(a: &Agent) -> String {
    a.get("/metrics").body
}

/// Waits until `target` served `n` more scrapes.
fn wait_hits(a: &Agent, target: &Target, n: usize) {
    let from = target.hits();
    a.wait_until(
        &format!("{n} more scrapes"),
        Duration::from_secs(10),
        |_| target.hits() >= from + n,
    );
}

fn instance_yaml(job: &str, target: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: {job}\n    scrape_interval: 250ms\n    static_configs:\n      - targets: ['{target}']\nremote_write:\n  - url: http://127.0.0.1:9/push\nremote_flush_deadline: 1s\n"
    )
}

fn is_group_hash(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The embedded default runs `shared` mode: two configs with the same remote_write run as one
/// instance (one WAL folder named by the group hash); a DELETE drops that config's job from the
/// instance within a second while the other member keeps being scraped.
#[test]
fn shared_mode_groups_configs_and_a_delete_drops_only_that_job() {
    let dir = tempfile::tempdir().unwrap();
    let (ta, tb) = (Target::start(), Target::start());
    let agent = Agent::start(dir.path(), &[]);
    for (name, job, t) in [("a", "ja", &ta), ("b", "jb", &tb)] {
        let (code, body) = call(
            &agent,
            "PUT",
            &format!("/agent/api/v1/config/{name}"),
            &instance_yaml(job, &t.addr),
        );
        assert_eq!(code, 201, "{body}");
    }
    agent.wait_until("both jobs in one instance", Duration::from_secs(30), |a| {
        let j = target_jobs(a);
        j.len() == 2 && j[0].0 == j[1].0
    });
    let jobs = target_jobs(&agent);
    let group = jobs[0].0.clone();
    assert!(is_group_hash(&group), "instance {group:?}");
    assert_eq!(
        jobs,
        [(group.clone(), "ja".into()), (group.clone(), "jb".into())]
    );
    // The old agent's `/metrics/instances` lists config names in both modes.
    assert_eq!(instances(&agent), ["a", "b"]);
    // One instance: one WAL folder, named by the group.
    let folders: Vec<String> = std::fs::read_dir(dir.path().join("data-agent"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("wal").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders, std::slice::from_ref(&group));
    agent.wait_until("both targets scraped", Duration::from_secs(30), |_| {
        ta.hits() >= 2 && tb.hits() >= 2
    });
    agent.wait_until("the group's WAL metric", Duration::from_secs(30), |a| {
        metrics(a).contains(&format!(
            "agent_wal_storage_active_series{{instance_group_name=\"{group}\"}}"
        ))
    });

    let (code, _) = call(&agent, "DELETE", "/agent/api/v1/config/a", "");
    assert_eq!(code, 200);
    agent.wait_until("a's job gone", Duration::from_secs(1), |a| {
        target_jobs(a).len() == 1
    });
    // A scrape of a already under way may still land while b is scraped twice more; after
    // that, b keeps being scraped and a never again.
    wait_hits(&agent, &tb, 2);
    let a_then = ta.hits();
    wait_hits(&agent, &tb, 3);
    assert_eq!(
        ta.hits(),
        a_then,
        "the deleted config's target is still scraped"
    );
    assert_eq!(instances(&agent), ["b"]);
    // Same instance (updated in place, same WAL), now with b's job only.
    assert_eq!(target_jobs(&agent), [(group.clone(), "jb".into())]);
    assert!(
        !agent.log().contains("instance restarting"),
        "the group instance was restarted:\n{}",
        agent.log()
    );

    // Without a config file a reload has nothing to do.
    assert_eq!(call(&agent, "POST", "/-/reload", ""), (200, String::new()));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Non-scraping-service agent: the file's `configs` and `instance_mode` are applied by a
/// reload; an invalid file and a restart-only change are refused with 400 and the agent keeps
/// running its config; SIGHUP applies a valid change.
#[test]
fn reload_applies_live_fields_and_refuses_bad_or_restart_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2) = (Target::start(), Target::start());
    let cfg = dir.path().join("agent.yaml");
    let wal = dir.path().join("wal");
    let config = |mode: &str, configs: &[(&str, &str, &Target)]| {
        let mut y = format!(
            "metrics:\n  wal_directory: {}\n  instance_mode: {mode}\n  configs:\n",
            wal.display()
        );
        for (name, job, t) in configs {
            y.push_str(&format!(
                "    - name: {name}\n      scrape_configs:\n        - job_name: {job}\n          scrape_interval: 250ms\n          static_configs:\n            - targets: ['{}']\n      remote_write:\n        - url: http://127.0.0.1:9/push\n      remote_flush_deadline: 1s\n",
                t.addr
            ));
        }
        y
    };
    write(&cfg, &config("distinct", &[("one", "j1", &t1)]));
    let agent = Agent::builder(dir.path()).config_file(&cfg).start();
    assert_eq!(instances(&agent), ["one"]);
    agent.wait_until("one scraped", Duration::from_secs(30), |a| {
        target_jobs(a) == [("one".to_owned(), "j1".to_owned())]
    });
    assert!(metrics(&agent).contains("agent_config_last_load_successful 1"));

    // A live change: a second config and shared mode.
    write(
        &cfg,
        &config("shared", &[("one", "j1", &t1), ("two", "j2", &t2)]),
    );
    let t = Instant::now();
    assert_eq!(call(&agent, "POST", "/-/reload", ""), (200, String::new()));
    assert_eq!(instances(&agent), ["one", "two"]);
    agent.wait_until("both jobs in one group", Duration::from_secs(30), |a| {
        let j = target_jobs(a);
        j.len() == 2 && j[0].0 == j[1].0 && is_group_hash(&j[0].0)
    });
    agent.wait_until("the new target scraped", Duration::from_secs(30), |_| {
        t2.hits() >= 2
    });
    println!("reload to a scraped new config: {:?}", t.elapsed());
    let log = agent.log();
    assert!(
        log.contains("config reloaded; applying")
            && log.contains("metrics.instance_mode")
            && log.contains("metrics.configs"),
        "{log}"
    );

    // An invalid file: 400 naming file:line, the agent keeps its config.
    write(
        &cfg,
        "metrics:\n  wal_directory: /x\n  instance_mod: shared\n",
    );
    let r = agent.get("/-/reload");
    assert_eq!(r.status, 400, "{}", r.body);
    let want = format!("{}:3:3: ", cfg.display());
    assert!(
        r.body.starts_with(&want) && r.body.contains("instance_mod"),
        "{}",
        r.body
    );
    assert!(metrics(&agent).contains("agent_config_last_load_successful 0"));
    assert!(metrics(&agent).contains("agent_config_load_failures_total 1"));
    assert_eq!(instances(&agent), ["one", "two"]);

    // A field that needs a restart: refused, naming it.
    let moved = config("shared", &[("one", "j1", &t1)]).replace(
        &wal.display().to_string(),
        &dir.path().join("elsewhere").display().to_string(),
    );
    write(&cfg, &moved);
    let (code, body) = call(&agent, "POST", "/-/reload", "");
    assert_eq!(code, 400);
    assert!(
        body.contains("changing metrics.wal_directory requires a restart"),
        "{body}"
    );
    assert_eq!(instances(&agent), ["one", "two"]);
    t2.hits(); // still scraped below

    // SIGHUP applies a valid change: "two" removed.
    write(&cfg, &config("shared", &[("one", "j1", &t1)]));
    agent.signal("HUP");
    agent.wait_until("two removed by SIGHUP", Duration::from_secs(30), |a| {
        instances(a) == ["one"]
    });
    // A scrape of two under way may still land while one is scraped twice more; after that,
    // one keeps being scraped and two never again.
    wait_hits(&agent, &t1, 2);
    let n = t2.hits();
    wait_hits(&agent, &t1, 3);
    assert_eq!(t2.hits(), n, "the removed config is still scraped");
    assert!(agent.log().contains("signal=SIGHUP"), "{}", agent.log());
    assert!(metrics(&agent).contains("agent_config_last_load_successful 1"));
    assert_eq!(agent.get("/-/healthy").status, 200);
}

/// Scraping service on the embedded store: a changed `global` is applied to the running
/// instances; a changed kvstore is refused (no ring rejoin, unlike the old agent).
#[test]
fn reload_in_scraping_service_mode_applies_global_and_refuses_kvstore_changes() {
    let dir = tempfile::tempdir().unwrap();
    let t1 = Target::start();
    let cfg = dir.path().join("agent.yaml");
    let yaml = |labels: &str, prefix: &str| {
        format!(
            "metrics:\n  wal_directory: {}\n  global:\n    external_labels:\n      {labels}\n  scraping_service:\n    enabled: true\n    kvstore:\n      prefix: {prefix}\n",
            dir.path().join("wal").display()
        )
    };
    write(&cfg, &yaml("env: a", "configurations/"));
    let agent = Agent::builder(dir.path()).config_file(&cfg).start();
    let (code, body) = call(
        &agent,
        "PUT",
        "/agent/api/v1/config/c",
        &instance_yaml("j", &t1.addr),
    );
    assert_eq!(code, 201, "{body}");
    agent.wait_until("c runs", Duration::from_secs(30), |a| {
        target_jobs(a).len() == 1
    });

    write(&cfg, &yaml("env: b", "configurations/"));
    assert_eq!(call(&agent, "POST", "/-/reload", ""), (200, String::new()));
    // New external labels change what remote_write sends: the instance restarts with them.
    agent.wait_until("instance restarted", Duration::from_secs(30), |a| {
        a.log().contains("instance restarting for a changed config")
    });
    assert!(
        agent.log().contains("changed=metrics.global"),
        "{}",
        agent.log()
    );
    agent.wait_until("c runs again", Duration::from_secs(30), |a| {
        target_jobs(a).len() == 1
    });

    write(&cfg, &yaml("env: b", "other/"));
    let (code, body) = call(&agent, "POST", "/-/reload", "");
    assert_eq!(code, 400);
    assert!(
        body.contains("changing metrics.scraping_service.kvstore requires a restart"),
        "{body}"
    );
    assert_eq!(instances(&agent), ["c"]);
    wait_hits(&agent, &t1, 2);
}
