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
        Duration::from_secs(30),
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

/// A line about an instance, about one of its scrape targets and about one of its remote_write
/// endpoints names them (`instance=`, `job=`/`target_url=`, `remote_name=`) in both log
/// formats, though no log call repeats those fields: they come from the spans the instance's
/// tasks run in.
#[test]
fn log_lines_name_their_instance_target_and_endpoint() {
    const CONFIG: &str = "scrape_configs:\n  - job_name: down\n    scrape_interval: 1s\n    scrape_timeout: 500ms\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n  - url: http://127.0.0.1:1/api/v1/write\n    queue_config:\n      min_backoff: 100ms\n      max_backoff: 100ms\nremote_flush_deadline: 1s\n";
    let t = Duration::from_secs(30);
    for format in ["logfmt", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = Agent::start(
            dir.path(),
            &["--log.level", "debug", "--log.format", format],
        );
        assert_eq!(agent.put_config("spans", CONFIG).status, 201);
        // (message, the fields the line must carry; `None`: any value)
        type Fields<'a> = &'a [(&'a str, Option<&'a str>)];
        let expected: [(&str, Fields); 3] = [
            ("instance started", &[("instance", None)]),
            (
                "scrape failed",
                &[
                    ("instance", None),
                    ("job", Some("down")),
                    ("target_url", Some("http://127.0.0.1:1/metrics")),
                ],
            ),
            (
                "failed to send batch, retrying",
                // In a shared instance, the endpoint is renamed after the instance and the URL.
                &[("instance", None), ("remote_name", None)],
            ),
        ];
        let mut instances = Vec::new();
        for (message, fields) in expected {
            let line: std::collections::BTreeMap<String, String> = if format == "logfmt" {
                let line = agent.wait_log(&format!("msg=\"{message}\""), t);
                line.split(' ')
                    .filter_map(|f| f.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            } else {
                let line = agent.wait_log(&format!("\"message\":\"{message}\""), t);
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                v.as_object()
                    .expect("an object")
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            };
            for (k, want) in fields {
                let got = line.get(*k);
                assert!(got.is_some(), "{format}: no {k} in {message:?}: {line:?}");
                if let Some(want) = want {
                    assert_eq!(got.unwrap(), want, "{format}: {k} in {message:?}");
                }
            }
            instances.push(line["instance"].clone());
        }
        // The instance the config runs in (a shared one: its name is a hash of the config).
        assert!(
            instances
                .iter()
                .all(|i| *i == instances[0] && !i.is_empty()),
            "{format}: {instances:?}"
        );
        assert_eq!(agent.stop(), Some(0));
    }
}

/// `GET /-/config` (with `-config.enable-read-api`) shows the config in effect: as it was
/// loaded (a UTF-16 file decoded, `${VAR}` expanded with `-config.expand-env`), secrets as
/// `<secret>`; an edit of the file shows only once a reload has applied it.
#[test]
fn read_api_shows_the_config_in_effect() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal-from-env");
    let yaml = |interval: &str| {
        format!(
            "metrics:\n  wal_directory: ${{AGENT_WAL}}\n  global:\n    scrape_interval: {interval}\n    remote_write:\n      - url: http://127.0.0.1:1/push\n        basic_auth:\n          username: u\n          password: sec-read-api-3\n"
        )
    };
    let file = dir.path().join("agent.yml");
    // UTF-16LE with a byte-order mark.
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(yaml("7s").encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    std::fs::write(&file, utf16).unwrap();
    let mut agent = Agent::builder(dir.path())
        .config_file(&file)
        .env("AGENT_WAL", &wal)
        .args(["--config.enable-read-api", "--config.expand-env"])
        .start();
    let shown = |a: &Agent| {
        let r = a.get("/-/config");
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    };
    let first = shown(&agent);
    assert!(
        first.contains(&format!("wal_directory: {}", wal.display())),
        "{first}"
    );
    assert!(first.contains("7s"), "{first}");
    assert!(
        first.contains("<secret>") && !first.contains("sec-read-api-3"),
        "{first}"
    );

    // Edited, not reloaded: still the config in effect.
    std::fs::write(&file, yaml("9s")).unwrap();
    assert_eq!(shown(&agent), first);
    let r = agent.req("POST", "/-/reload", &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    let reloaded = shown(&agent);
    assert!(
        reloaded.contains("9s") && !reloaded.contains("7s"),
        "{reloaded}"
    );
    assert!(!reloaded.contains("sec-read-api-3"), "{reloaded}");
    assert_eq!(agent.stop(), Some(0));
}

/// A graceful shutdown that takes long (here the lifecycler's final_sleep; in production an
/// unreachable KV store or receiver) ends at once on a second signal, with 128 + the signal.
#[test]
fn a_second_sigterm_exits_at_once_during_a_long_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "metrics:\n  wal_directory: {}\n  scraping_service:\n    enabled: true\n    kvstore:\n      store: embedded\n    lifecycler:\n      final_sleep: 10m\n",
        dir.path().join("wal").display()
    );
    let mut agent = Agent::builder(dir.path()).config(&config).start();
    let before = agent.log().len();
    agent.signal("TERM");
    agent.wait_log_after(before, "ring state LEAVING", Duration::from_secs(30));
    // Still shutting down gracefully (final_sleep is 10 minutes).
    assert!(agent.is_running(), "{}", agent.log());
    agent.signal("TERM");
    let code = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(143), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("second signal: exiting now") && log.contains("signal=SIGTERM"),
        "{log}"
    );
}

/// glibc's malloc thresholds are fixed when the agent starts and a thread gives the free pages
/// inside its arenas back every 5 s, less often on a large heap (src/glibc_malloc.rs: without
/// them glibc's free memory crept up for minutes under series churn, docs/churn-soak.md); each
/// threshold unless the operator set it in the environment, the trim not when the operator set
/// the trim threshold. The log says which. The default build on glibc only.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
))]
#[test]
fn glibc_malloc_thresholds_and_trim_are_set_at_start_unless_the_environment_sets_them() {
    // The tests' own environment must not decide the outcome.
    let builder = |dir: &std::path::Path| {
        [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES",
        ]
        .into_iter()
        .fold(Agent::builder(dir), |b, key| b.env_remove(key))
    };
    // The names of the agent's threads.
    let threads = |agent: &Agent| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut agent = builder(dir.path()).start();
    agent.wait_log(
        "msg=\"glibc malloc\" settings=\"M_MMAP_THRESHOLD=1048576 M_TRIM_THRESHOLD=262144 \
         malloc_trim=every 5s or 1000x its duration\"",
        Duration::from_secs(30),
    );
    assert!(
        threads(&agent).iter().any(|t| t == "malloc-trim"),
        "{:?}",
        threads(&agent)
    );
    assert_eq!(agent.stop(), Some(0));

    // Set by the variable or by a tunable: glibc's own reading of it stays.
    let dir = tempfile::tempdir().unwrap();
    let mut agent = builder(dir.path())
        .env("MALLOC_TRIM_THRESHOLD_", "131072")
        .start();
    agent.wait_log(
        "settings=\"M_MMAP_THRESHOLD=1048576 M_TRIM_THRESHOLD=(from MALLOC_TRIM_THRESHOLD_) \
         malloc_trim=off (trim threshold from the environment)\"",
        Duration::from_secs(30),
    );
    assert!(
        !threads(&agent).iter().any(|t| t == "malloc-trim"),
        "{:?}",
        threads(&agent)
    );
    assert_eq!(agent.stop(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let mut agent = builder(dir.path())
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=4:glibc.malloc.mmap_threshold=65536",
        )
        .start();
    agent.wait_log(
        "settings=\"M_MMAP_THRESHOLD=(from GLIBC_TUNABLES) M_TRIM_THRESHOLD=262144 \
         malloc_trim=every 5s or 1000x its duration\"",
        Duration::from_secs(30),
    );
    assert_eq!(agent.stop(), Some(0));
}

/// The old agent's command line still starts agentctl: the packaged `CUSTOM_ARGS`
/// (`-server.grpc.address=...`), `-disable-reporting` and `-enable-features=...`, written with
/// Go's single dash. Each flag that has no effect here says so in the log.
#[test]
fn the_old_agents_command_line_starts_and_says_which_flags_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        dir.path(),
        &[
            "-server.grpc.address=127.0.0.1:9091",
            "-disable-reporting",
            "-enable-features=integrations-next,extra-scrape-metrics",
        ],
    );
    let within = Duration::from_secs(30);
    let grpc = agent.wait_log("flag=-server.grpc.address", within);
    assert!(
        grpc.contains("level=warn") && grpc.contains("agentctl serves no gRPC"),
        "{grpc}"
    );
    let reporting = agent.wait_log("flag=-disable-reporting", within);
    assert!(reporting.contains("sends no usage reports"), "{reporting}");
    for feature in ["integrations-next", "extra-scrape-metrics"] {
        let line = agent.wait_log(&format!("feature={feature}"), within);
        assert!(
            line.contains("level=warn") && line.contains("does not exist in agentctl"),
            "{line}"
        );
    }
    assert_eq!(http("GET", agent.addr(), "/-/healthy", b"").unwrap().0, 200);
}

/// `-metrics.wal-directory` (the old agent's flag, in its Docker image's command line) puts
/// the WAL and the embedded store where it says when the config sets no wal_directory.
#[test]
fn the_wal_directory_flag_places_the_wal_and_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("elsewhere");
    let flag = format!("-metrics.wal-directory={}", wal.display());
    let agent = Agent::start(dir.path(), &[&flag]);
    let line = agent.wait_log("msg=\"agent listening\"", Duration::from_secs(30));
    assert!(
        line.contains(&format!("wal_directory={}", wal.display())),
        "{line}"
    );
    assert!(
        wal.join("kv.redb").exists(),
        "the embedded store is in the flag's directory"
    );
    assert!(!dir.path().join("data-agent").exists());
}
