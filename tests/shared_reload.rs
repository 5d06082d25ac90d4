//! `instance_mode: shared` and `/-/reload` / SIGHUP with real agent processes: configs that
//! differ only in name and jobs run as one instance whose jobs follow its members; a reload
//! applies live fields, refuses invalid files and restart-only changes, and keeps running.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{bin, free_port, http, http_full, wait_http, ChildGuard};

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

struct Agent {
    addr: String,
    guard: ChildGuard,
    log: PathBuf,
}

impl Agent {
    /// Starts `agent run` in `dir` (the embedded default without `config`) and waits for ready.
    fn start(dir: &Path, config: Option<&Path>) -> Agent {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("agent.log");
        let mut args = vec![
            "agent".to_owned(),
            "run".into(),
            "--server.http.address".into(),
            addr.clone(),
        ];
        if let Some(c) = config {
            args.push("--config.file".into());
            args.push(c.display().to_string());
        }
        let child = Command::new(bin())
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent {
            addr,
            guard: ChildGuard::new("agent", child),
            log,
        };
        wait_http(&agent.addr, "/-/ready", 200, Duration::from_secs(20));
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn req(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(method, &self.addr, path, body.as_bytes()).expect("agent answers")
    }

    fn data(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.req("GET", path, "");
        assert_eq!(code, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"].clone()
    }

    fn instances(&self) -> Vec<String> {
        serde_json::from_value(self.data("/agent/api/v1/metrics/instances")).unwrap()
    }

    /// (instance, job) of every target, sorted.
    fn jobs(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
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

    /// Polls until `f` holds, up to `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {timeout:?}; instances {:?}, targets {:?}\n{}",
                self.instances(),
                self.jobs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics(&self) -> String {
        self.req("GET", "/metrics", "").1
    }
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
    let agent = Agent::start(dir.path(), None);
    for (name, job, t) in [("a", "ja", &ta), ("b", "jb", &tb)] {
        let (code, body) = agent.req(
            "PUT",
            &format!("/agent/api/v1/config/{name}"),
            &instance_yaml(job, &t.addr),
        );
        assert_eq!(code, 201, "{body}");
    }
    agent.wait_for("both jobs in one instance", Duration::from_secs(5), |a| {
        let j = a.jobs();
        j.len() == 2 && j[0].0 == j[1].0
    });
    let jobs = agent.jobs();
    let group = jobs[0].0.clone();
    assert!(is_group_hash(&group), "instance {group:?}");
    assert_eq!(
        jobs,
        [(group.clone(), "ja".into()), (group.clone(), "jb".into())]
    );
    // The old agent's `/metrics/instances` lists config names in both modes.
    assert_eq!(agent.instances(), ["a", "b"]);
    // One instance: one WAL folder, named by the group.
    let folders: Vec<String> = std::fs::read_dir(dir.path().join("data-agent"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("wal").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders, std::slice::from_ref(&group));
    agent.wait_for("both targets scraped", Duration::from_secs(5), |_| {
        ta.hits() >= 2 && tb.hits() >= 2
    });
    agent.wait_for("the group's WAL metric", Duration::from_secs(5), |a| {
        a.metrics().contains(&format!(
            "agent_wal_storage_active_series{{instance_group_name=\"{group}\"}}"
        ))
    });

    let (code, _) = agent.req("DELETE", "/agent/api/v1/config/a", "");
    assert_eq!(code, 200);
    // Scrapes already under way may still land; after 1 s none may start.
    std::thread::sleep(Duration::from_millis(1000));
    let (a_then, b_then) = (ta.hits(), tb.hits());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ta.hits(),
        a_then,
        "the deleted config's target is still scraped"
    );
    assert!(
        tb.hits() >= b_then + 3,
        "the other member stopped being scraped"
    );
    assert_eq!(agent.instances(), ["b"]);
    // Same instance (updated in place, same WAL), now with b's job only.
    assert_eq!(agent.jobs(), [(group.clone(), "jb".into())]);
    assert!(
        !agent.log().contains("instance restarting"),
        "the group instance was restarted:\n{}",
        agent.log()
    );

    // Without a config file a reload has nothing to do.
    assert_eq!(agent.req("POST", "/-/reload", ""), (200, String::new()));
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
    let agent = Agent::start(dir.path(), Some(&cfg));
    assert_eq!(agent.instances(), ["one"]);
    agent.wait_for("one scraped", Duration::from_secs(5), |a| {
        a.jobs() == [("one".to_owned(), "j1".to_owned())]
    });
    assert!(agent
        .metrics()
        .contains("agent_config_last_load_successful 1"));

    // A live change: a second config and shared mode.
    write(
        &cfg,
        &config("shared", &[("one", "j1", &t1), ("two", "j2", &t2)]),
    );
    let t = Instant::now();
    assert_eq!(agent.req("POST", "/-/reload", ""), (200, String::new()));
    assert_eq!(agent.instances(), ["one", "two"]);
    agent.wait_for("both jobs in one group", Duration::from_secs(5), |a| {
        let j = a.jobs();
        j.len() == 2 && j[0].0 == j[1].0 && is_group_hash(&j[0].0)
    });
    agent.wait_for("the new target scraped", Duration::from_secs(5), |_| {
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
    let r = http_full("GET", &agent.addr, "/-/reload", &[], b"").unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let want = format!("{}:3:3: ", cfg.display());
    assert!(
        r.body.starts_with(&want) && r.body.contains("instance_mod"),
        "{}",
        r.body
    );
    assert!(agent
        .metrics()
        .contains("agent_config_last_load_successful 0"));
    assert!(agent
        .metrics()
        .contains("agent_config_load_failures_total 1"));
    assert_eq!(agent.instances(), ["one", "two"]);

    // A field that needs a restart: refused, naming it.
    let moved = config("shared", &[("one", "j1", &t1)]).replace(
        &wal.display().to_string(),
        &dir.path().join("elsewhere").display().to_string(),
    );
    write(&cfg, &moved);
    let (code, body) = agent.req("POST", "/-/reload", "");
    assert_eq!(code, 400);
    assert!(
        body.contains("changing metrics.wal_directory requires a restart"),
        "{body}"
    );
    assert_eq!(agent.instances(), ["one", "two"]);
    t2.hits(); // still scraped below

    // SIGHUP applies a valid change: "two" removed.
    write(&cfg, &config("shared", &[("one", "j1", &t1)]));
    agent.guard.signal("HUP");
    agent.wait_for("two removed by SIGHUP", Duration::from_secs(5), |a| {
        a.instances() == ["one"]
    });
    let n = t2.hits();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(t2.hits() <= n + 1, "the removed config is still scraped");
    assert!(agent.log().contains("signal=SIGHUP"), "{}", agent.log());
    assert!(agent
        .metrics()
        .contains("agent_config_last_load_successful 1"));
    wait_http(&agent.addr, "/-/healthy", 200, Duration::from_secs(1));
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
    let agent = Agent::start(dir.path(), Some(&cfg));
    let (code, body) = agent.req(
        "PUT",
        "/agent/api/v1/config/c",
        &instance_yaml("j", &t1.addr),
    );
    assert_eq!(code, 201, "{body}");
    agent.wait_for("c runs", Duration::from_secs(5), |a| a.jobs().len() == 1);

    write(&cfg, &yaml("env: b", "configurations/"));
    assert_eq!(agent.req("POST", "/-/reload", ""), (200, String::new()));
    // New external labels change what remote_write sends: the instance restarts with them.
    agent.wait_for("instance restarted", Duration::from_secs(5), |a| {
        a.log().contains("instance restarting for a changed config")
    });
    assert!(
        agent.log().contains("changed=metrics.global"),
        "{}",
        agent.log()
    );
    agent.wait_for("c runs again", Duration::from_secs(5), |a| {
        a.jobs().len() == 1
    });

    write(&cfg, &yaml("env: b", "other/"));
    let (code, body) = agent.req("POST", "/-/reload", "");
    assert_eq!(code, 400);
    assert!(
        body.contains("changing metrics.scraping_service.kvstore requires a restart"),
        "{body}"
    );
    assert_eq!(agent.instances(), ["c"]);
    let n = t1.hits();
    std::thread::sleep(Duration::from_millis(800));
    assert!(t1.hits() > n, "c stopped being scraped");
}
