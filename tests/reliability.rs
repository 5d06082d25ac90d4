//! Fault tests against real processes: etcd stopped for 60 s under a running
//! cluster, an agent started while etcd is down, the WAL's disk full, a torn WAL tail. (SIGKILL/SIGTERM of an agent are in
//! `cluster.rs`, the receiver outage and the SIGKILL mid-stream in `remote_write_e2e.rs`.)
//!
//! Each test prints its measured figures as `RELIABILITY name=value` lines on stdout (run with
//! `--nocapture` and grep them) for the README's "Reliability" table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent::clock::Clock;

use crate::support::agent::{placement, ClusterMember};
use crate::support::etcd::{EtcdCluster, EtcdServer};
use crate::support::gate::TcpGate;
use crate::support::prometheus::Prometheus;
use crate::support::tls::Pki;
use crate::support::{http_full, Agent};

/// A scrape target on its own thread and runtime, so that a test blocked in a probe never
/// delays a scrape (a delayed scrape would look like a gap in `up`).
pub struct Target {
    pub addr: String,
    served: Arc<AtomicU64>,
}

impl Target {
    /// Serves `/metrics`: `rel_metric{series="0".."n"} <request number>`.
    pub fn start(series: usize) -> Target {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind target");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("target runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut body = String::from("# TYPE rel_metric counter\n");
                            for i in 0..series {
                                body.push_str(&format!("rel_metric{{series=\"{i}\"}} {n}\n"));
                            }
                            body
                        }
                    }),
                );
                let _ = axum::serve(listener, app).await;
            });
        });
        Target { addr, served }
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // reqwest (the Prometheus queries) is built without a default rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// An agent process named `id` with config `yaml`; logs to `dir/<id>.log`. Not waited ready.
fn spawn(dir: &Path, id: &str, yaml: &str) -> Agent {
    Agent::builder(dir).name(id).config(yaml).spawn()
}

/// The status `GET path` answers, 0 when the agent does not answer.
fn status(a: &Agent, path: &str) -> u16 {
    a.try_req("GET", path, &[], b"").map_or(0, |r| r.status)
}

fn placed_once(p: &BTreeMap<String, Vec<String>>, names: &[String]) -> bool {
    p.len() == names.len() && names.iter().all(|n| p.get(n).is_some_and(|v| v.len() == 1))
}

fn cluster_agent_yaml(dir: &Path, etcd: &str, id: &str) -> String {
    cluster_agent_yaml_with(dir, etcd, "", id)
}

/// A member of the cluster, with further fields of its `etcd:` block (`etcd_extra`, unindented).
fn cluster_agent_yaml_with(dir: &Path, etcd: &str, etcd_extra: &str, id: &str) -> String {
    ClusterMember {
        id,
        etcd,
        etcd_extra,
        wal_directory: &dir.join(format!("wal-{id}")),
        heartbeat_timeout: "4s",
        auto_forget_periods: Some(2),
        reshard_interval: "30s",
        metrics_extra: "  global:\n    external_labels:\n      cluster: reliability\n",
    }
    .yaml()
}

/// An instance config scraping `target` every second into `job`, remote_writing every second.
fn instance_yaml(job: &str, target: &str, write_url: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: {job}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: ['{target}']\nremote_write:\n  - url: {write_url}\n    \
         queue_config:\n      batch_send_deadline: 1s\n"
    )
}

/// Per job: the timestamps (seconds) of `up` samples at the receiver in `[from, to]`.
fn up_timestamps(
    prom: &Prometheus,
    job_re: &str,
    from: f64,
    to: f64,
) -> BTreeMap<String, Vec<f64>> {
    let samples = block_on(prom.query_samples(&format!("up{{job=~\"{job_re}\"}}[30m]")));
    samples
        .into_iter()
        .map(|(labels, values)| {
            let job = labels.get("job").cloned().unwrap_or_default();
            let ts = values
                .into_iter()
                .filter(|(t, v)| *t >= from && *t <= to && *v == 1.0)
                .map(|(t, _)| t)
                .collect();
            (job, ts)
        })
        .collect()
}

/// The largest distance between consecutive timestamps, including from `from` to the first and
/// from the last to `to`.
fn max_gap(ts: &[f64], from: f64, to: f64) -> f64 {
    let mut prev = from;
    let mut gap: f64 = 0.0;
    for &t in ts {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap.max(to - prev)
}

/// etcd stopped for 60 s under two agents scraping ten configs into a real
/// Prometheus. Asserts: no gap in `up` at the receiver over the outage (max gap <= 1.5 x the
/// 1 s interval); PUT answers 503 naming the KV store; the running configs stay where they are;
/// a third agent started during the outage takes nothing (not ready) until etcd is back; within
/// 3 s after etcd returns the three agents converge (every config once, the newcomer ACTIVE)
/// and nothing that ran through the outage was stopped except what moved to the newcomer.
#[test]
fn etcd_down_60s_agents_keep_scraping_and_converge_after() {
    let outage = Duration::from_secs(
        std::env::var("RELIABILITY_ETCD_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let prom = Prometheus::start();
    let target = Target::start(5);
    let mut etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a1 = spawn(
        d,
        "agent-1",
        &cluster_agent_yaml(d, &etcd.endpoint(), "agent-1"),
    );
    let a2 = spawn(
        d,
        "agent-2",
        &cluster_agent_yaml(d, &etcd.endpoint(), "agent-2"),
    );
    a1.wait_ready(Duration::from_secs(20));
    a2.wait_ready(Duration::from_secs(20));
    let logs = |agents: &[&Agent]| -> String {
        agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.name(), a.log()))
            .collect()
    };

    // Names spread over the ring (FNV-1 mixes the first bytes best).
    let names: Vec<String> = (0..10).map(|i| format!("{i}-etcd-outage")).collect();
    for (i, n) in names.iter().enumerate() {
        let r = a1.put_config(
            n,
            &instance_yaml(&format!("rel-etcd-{i}"), &target.addr, &prom.write_url()),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let p = placement(&[&a1, &a2]);
        if placed_once(&p, &names) {
            break p;
        }
        assert!(Instant::now() < deadline, "not placed: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // A few scrapes of every config before the outage.
    let served = target.served();
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.served() < served + 4 * names.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "not scraping: {}",
            logs(&[&a1, &a2])
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let down_at = Clock::system().now();
    etcd.kill();
    let t_down = Instant::now();

    // During the outage: writes answer 503 naming the store, reads of what runs still work,
    // nothing moves.
    let r = a2.put_config(
        "during-outage",
        &instance_yaml("rel-etcd-late", &target.addr, &prom.write_url()),
    );
    let put_status = r.status;
    assert_eq!(r.status, 503, "PUT during the etcd outage: {r:?}");
    assert!(
        r.body.contains("etcd") && r.body.contains(&etcd.endpoint()),
        "the 503 names the KV store and its endpoint: {}",
        r.body
    );
    let r = http_full(
        "DELETE",
        a1.addr(),
        &format!("/agent/api/v1/config/{}", names[0]),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 503, "DELETE during the etcd outage: {r:?}");
    assert_eq!(status(&a1, "/-/healthy"), 200);

    // A third agent started during the outage cannot join: it takes no config.
    let a3 = spawn(
        d,
        "agent-3",
        &cluster_agent_yaml(d, &etcd.endpoint(), "agent-3"),
    );
    let mut moved = Vec::new();
    while t_down.elapsed() < outage {
        let p = placement(&[&a1, &a2, &a3]);
        if p != before {
            moved.push(p);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        moved.is_empty(),
        "configs moved or stopped while etcd was down (first {:?} of {} changes): {:?}\n{}",
        moved.first(),
        moved.len(),
        before,
        logs(&[&a1, &a2, &a3])
    );
    assert_eq!(
        status(&a3, "/-/ready"),
        503,
        "an agent that could not join is not ready"
    );
    let up_at = Clock::system().now();
    etcd.restart();
    let t_up = Instant::now();

    // Converge: agent-3 ACTIVE in the ring and ready, every config once over the three agents
    // (agent-3 usually with a share; with random tokens it may own none of the ten).
    // The issue asks for 2 heartbeat periods (2 s); measured under 1 s since the watches
    // retry at most a second apart (they backed off to 5-10 s before, ~3.5 s here). One
    // more second of slack for a loaded machine.
    let converge_deadline = Duration::from_secs(3);
    let converged = loop {
        // agent-3's state first, the placement after it: a placement read before agent-3 got
        // ready would miss what it runs once ready.
        let ring = http_full(
            "GET",
            a1.addr(),
            "/debug/ring",
            &[("Accept", "application/json")],
            b"",
        )
        .map(|r| r.body)
        .unwrap_or_default();
        let ring: serde_json::Value = serde_json::from_str(&ring).unwrap_or_default();
        let a3_active = ring["shards"].as_array().is_some_and(|shards| {
            shards
                .iter()
                .any(|m| m["id"] == "agent-3" && m["state"] == "ACTIVE")
        }) && status(&a3, "/-/ready") == 200;
        let p = placement(&[&a1, &a2, &a3]);
        if a3_active && placed_once(&p, &names) {
            break t_up.elapsed();
        }
        assert!(
            t_up.elapsed() < converge_deadline,
            "not converged {converge_deadline:?} after etcd returned: {p:?}\n{}",
            logs(&[&a1, &a2, &a3])
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Once settled, still once at every look for three heartbeat periods (no stale duplicate).
    let settled = Instant::now();
    let mut p = placement(&[&a1, &a2, &a3]);
    while settled.elapsed() < Duration::from_secs(3) {
        p = placement(&[&a1, &a2, &a3]);
        assert!(placed_once(&p, &names), "after settling: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_3 = p.values().filter(|v| v[0] == "agent-3").count();
    // Nothing that ran through the outage was stopped and started again when etcd returned
    // (a stale ring read must not move configs around and back).
    let stops = instances_stopped(&[&a1, &a2]);
    assert_eq!(
        stops,
        on_3,
        "instances stopped on agent-1/2 after etcd returned vs configs moved to agent-3\n{}",
        logs(&[&a1, &a2, &a3])
    );

    // No gap in `up` at the receiver over the outage: wait until every job's samples up to
    // the end of the outage arrived, then look at the timestamps.
    let from = unix_secs(down_at) - 2.0;
    let to = unix_secs(up_at);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ups = loop {
        let ups = up_timestamps(&prom, "rel-etcd-[0-9]+", from, to + 5.0);
        let done =
            ups.len() == names.len() && ups.values().all(|ts| ts.last().is_some_and(|&t| t >= to));
        if done {
            break up_timestamps(&prom, "rel-etcd-[0-9]+", from, to);
        }
        assert!(
            Instant::now() < deadline,
            "the outage's samples did not reach the receiver: {:?}\n{}",
            ups.iter()
                .map(|(j, t)| (j, t.len(), t.last()))
                .collect::<Vec<_>>(),
            logs(&[&a1, &a2, &a3])
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut worst: f64 = 0.0;
    for (job, ts) in &ups {
        let gap = max_gap(ts, from, to);
        worst = worst.max(gap);
        assert!(
            gap <= 1.5,
            "{job}: {gap:.2} s without an `up` sample during the etcd outage ({} samples)\n{}",
            ts.len(),
            logs(&[&a1, &a2, &a3])
        );
    }
    eprintln!(
        "etcd down {outage:?}: PUT {put_status}; nothing moved; largest `up` gap {worst:.2} s; \
         converged (agent-3 joined with {on_3} configs, every config once) {converged:?} after \
         etcd was back; target served {} scrapes",
        target.served()
    );
    println!(
        "RELIABILITY etcd_down_seconds={} etcd_down_max_up_gap_seconds={worst:.2} \
         etcd_back_converge_seconds={:.2}",
        outage.as_secs(),
        converged.as_secs_f64()
    );
}

/// How many instances the agents have stopped so far (their `stopping instance` log lines).
fn instances_stopped(agents: &[&Agent]) -> usize {
    agents
        .iter()
        .map(|a| a.log().matches("stopping instance").count())
        .sum()
}

/// The names of the configs `log` says the agent started running (`msg="running config"`
/// lines' `config=`), in log order, each once.
fn configs_run(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines().filter(|l| l.contains("running config")) {
        let Some(at) = line.find(" config=") else {
            continue;
        };
        let name: String = line[at + 8..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// An agent started while etcd is down, joining when etcd returns, before the members that ran
/// through the outage heartbeated again: their heartbeats are as old as the outage, but they are
/// alive and still run their configs. The newcomer must give them the same grace the members
/// give each other after an outage (one heartbeat_timeout from its first ring write) instead of
/// judging them dead and running every config a second time.
///
/// Two agents reach etcd through a [`TcpGate`] that stays closed after etcd returns until the
/// newcomer is ready: the late heartbeat a busy machine or a long heartbeat_period gives (up to
/// one heartbeat_period), made as long as the test needs it. Asserts, exactly (from the agents'
/// own logs, not a sampled placement): agent-3 never starts a config that it does not run once
/// everything settled (before the fix it ran all twenty for as long as the gate was closed,
/// ready meanwhile); agent-1/2 stop only what moved to agent-3; agent-3 gets a share.
#[test]
fn agent_started_during_etcd_outage_runs_only_its_share_when_etcd_returns() {
    // Long enough that agent-3 joining and the gate opening fit in the grace with a wide
    // margin on a slow machine; the outage is longer, so agent-1/2's heartbeats are stale.
    let heartbeat_timeout = Duration::from_secs(15);
    let mut etcd = EtcdServer::start();
    let gate = TcpGate::start(&etcd.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let member = |id: &str, etcd: &str| {
        ClusterMember {
            id,
            etcd,
            etcd_extra: "",
            wal_directory: &d.join(format!("wal-{id}")),
            heartbeat_timeout: &format!("{}s", heartbeat_timeout.as_secs()),
            auto_forget_periods: None,
            reshard_interval: "30s",
            metrics_extra: "",
        }
        .yaml()
    };
    let a1 = spawn(d, "agent-1", &member("agent-1", gate.addr()));
    let a2 = spawn(d, "agent-2", &member("agent-2", gate.addr()));
    a1.wait_ready(Duration::from_secs(30));
    a2.wait_ready(Duration::from_secs(30));
    let names: Vec<String> = (0..20).map(|i| format!("{i}-late-joiner")).collect();
    for (i, n) in names.iter().enumerate() {
        let yaml = format!(
            "scrape_configs:\n  - job_name: late-{i}\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:9']\n"
        );
        let r = a1.put_config(n, &yaml);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !placed_once(&placement(&[&a1, &a2]), &names) {
        assert!(
            Instant::now() < deadline,
            "not placed: {:?}",
            placement(&[&a1, &a2])
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    gate.close();
    etcd.kill();
    let t_down = Instant::now();
    let a3 = spawn(d, "agent-3", &member("agent-3", &etcd.endpoint()));
    // agent-3 really started during the outage; agent-1/2 noticed it (they judge nobody now).
    a3.wait_log("cannot register in the ring", Duration::from_secs(30));
    a1.wait_log("ring heartbeat failed", Duration::from_secs(30));
    a2.wait_log("ring heartbeat failed", Duration::from_secs(30));
    // agent-1/2's last heartbeats (before t_down) older than heartbeat_timeout, with 2 s for the
    // ring's whole-second timestamps: the condition is the time itself.
    while t_down.elapsed() < heartbeat_timeout + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd.restart();
    let t_up = Instant::now();
    a3.wait_ready(Duration::from_secs(60));
    let ready_after = t_up.elapsed();
    // What runs while agent-1/2 have not heartbeated yet. They do not see agent-3 either, so
    // agent-3's own share runs twice until they do (as in any join: make before break).
    let held = placement(&[&a1, &a2, &a3]);
    gate.open();
    let t_open = Instant::now();

    // Converged: agent-1/2 heartbeat again, every config runs once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let p = placement(&[&a1, &a2, &a3]);
        let back = [&a1, &a2]
            .iter()
            .all(|a| a.log().contains("ring heartbeats land again"));
        if back && placed_once(&p, &names) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after the gate opened: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let converged = t_open.elapsed();
    let mut on_3: Vec<String> = settled
        .iter()
        .filter(|(_, v)| v[0] == "agent-3")
        .map(|(n, _)| n.clone())
        .collect();
    let mut started_on_3 = configs_run(&a3.log());
    on_3.sort();
    started_on_3.sort();
    let foreign = started_on_3.iter().filter(|n| !on_3.contains(n)).count();
    assert_eq!(
        started_on_3, on_3,
        "agent-3 started {foreign} configs that agent-1/2 run (ready {ready_after:?} after etcd \
         returned; while agent-1/2 had not heartbeated yet: {held:?})"
    );
    assert!(
        !on_3.is_empty(),
        "agent-3 got no config of {}: {settled:?}",
        names.len()
    );
    let stops = instances_stopped(&[&a1, &a2]);
    assert_eq!(
        stops,
        on_3.len(),
        "instances stopped on agent-1/2 vs configs moved to agent-3"
    );
    eprintln!(
        "agent-3 started during a {:?} etcd outage: ready {ready_after:?} after etcd returned, \
         ran {foreign} configs of agent-1/2 while they had not heartbeated yet; took {} of {} \
         configs; every config once {converged:?} after agent-1/2 reached etcd again",
        t_up - t_down,
        on_3.len(),
        names.len()
    );
    println!(
        "RELIABILITY late_joiner_ready_seconds={:.2} late_joiner_foreign_configs={foreign} \
         late_joiner_configs={} late_joiner_converge_seconds={:.2}",
        ready_after.as_secs_f64(),
        on_3.len(),
        converged.as_secs_f64()
    );
}

/// Two agents on a 3-member etcd cluster with TLS and client certificates, knowing all three
/// endpoints. The member they talk to (the first endpoint), which is also the cluster's
/// leader, is SIGKILLed for 20 s, then restarted. Asserts: no config stops or moves (every
/// config once at every look),
/// no gap in `up` at the receiver beyond 1.5 x the 1 s interval, every API write (a PUT a
/// second) succeeds during the outage, both agents stay ACTIVE in the ring.
#[test]
fn etcd_cluster_member_killed_with_tls_nothing_stops_writes_go_on() {
    let outage = Duration::from_secs(
        std::env::var("RELIABILITY_ETCD_MEMBER_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let prom = Prometheus::start();
    let target = Target::start(5);
    let base = EtcdCluster::random_base();
    let ips = EtcdCluster::ips_for(3, &base);
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let pki = Pki::new(&ip_refs);
    let mut cluster = EtcdCluster::start(3, &base, Some(pki.etcd_tls(true)));
    // The leader first: the agents connect to it, and killing it also costs an election.
    let leader = cluster.leader();
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls_fields = format!("dial_timeout: 5s\n{}", pki.fields());
    let a1 = spawn(
        d,
        "agent-1",
        &cluster_agent_yaml_with(d, &endpoints.join(", "), &tls_fields, "agent-1"),
    );
    let a2 = spawn(
        d,
        "agent-2",
        &cluster_agent_yaml_with(d, &endpoints.join(", "), &tls_fields, "agent-2"),
    );
    a1.wait_ready(Duration::from_secs(30));
    a2.wait_ready(Duration::from_secs(30));
    let logs = |agents: &[&Agent]| -> String {
        agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.name(), a.log()))
            .collect()
    };

    let names: Vec<String> = (0..10).map(|i| format!("{i}-etcd-member")).collect();
    for (i, n) in names.iter().enumerate() {
        let r = a1.put_config(
            n,
            &instance_yaml(&format!("rel-member-{i}"), &target.addr, &prom.write_url()),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }
    let only = |p: BTreeMap<String, Vec<String>>| -> BTreeMap<String, Vec<String>> {
        p.into_iter().filter(|(k, _)| names.contains(k)).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let p = only(placement(&[&a1, &a2]));
        if placed_once(&p, &names) {
            break p;
        }
        assert!(Instant::now() < deadline, "not placed: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let served = target.served();
    let deadline = Instant::now() + Duration::from_secs(30);
    while target.served() < served + 4 * names.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "not scraping: {}",
            logs(&[&a1, &a2])
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let down_at = Clock::system().now();
    cluster.members[leader].kill();
    let t_down = Instant::now();
    let mut puts = Vec::new();
    let mut moved = Vec::new();
    let mut next_put = Instant::now();
    while t_down.elapsed() < outage {
        if Instant::now() >= next_put {
            let k = puts.len();
            let agent = if k % 2 == 0 { &a1 } else { &a2 };
            let started = Instant::now();
            let r = agent.put_config(
                "written-during-outage",
                &format!("scrape_configs:\n  - job_name: probe-{k}\n    static_configs: []\n"),
            );
            puts.push((r.status, started.elapsed(), r.body));
            next_put = started + Duration::from_secs(1);
        }
        let p = only(placement(&[&a1, &a2]));
        if p != before {
            moved.push(p);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let up_at = Clock::system().now();
    cluster.members[leader].restart();
    // Writes after the member is back, and a few more looks at the placement.
    let r = a2.put_config(
        "written-during-outage",
        "scrape_configs:\n  - job_name: probe-after\n    static_configs: []\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        let p = only(placement(&[&a1, &a2]));
        if p != before {
            moved.push(p);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let failed: Vec<_> = puts
        .iter()
        .filter(|(s, _, _)| !(200..300).contains(s))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed with a member down: {failed:?}\n{}",
        failed.len(),
        puts.len(),
        logs(&[&a1, &a2])
    );
    assert!(
        moved.is_empty(),
        "configs moved or stopped with one etcd member down (first {:?} of {}): {before:?}\n{}",
        moved.first(),
        moved.len(),
        logs(&[&a1, &a2])
    );
    let r = a1.req("GET", "/debug/ring", &[("Accept", "application/json")], "");
    let ring = serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or_default();
    let active = ring["shards"]
        .as_array()
        .map(|s| s.iter().filter(|m| m["state"] == "ACTIVE").count())
        .unwrap_or(0);
    assert_eq!(active, 2, "both agents ACTIVE: {ring}");

    let from = unix_secs(down_at) - 2.0;
    let to = unix_secs(up_at) + 3.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ups = loop {
        let ups = up_timestamps(&prom, "rel-member-[0-9]+", from, to + 5.0);
        let done =
            ups.len() == names.len() && ups.values().all(|ts| ts.last().is_some_and(|&t| t >= to));
        if done {
            break up_timestamps(&prom, "rel-member-[0-9]+", from, to);
        }
        assert!(
            Instant::now() < deadline,
            "the outage's samples did not reach the receiver: {:?}\n{}",
            ups.iter()
                .map(|(j, t)| (j, t.len(), t.last()))
                .collect::<Vec<_>>(),
            logs(&[&a1, &a2])
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut worst: f64 = 0.0;
    for (job, ts) in &ups {
        let gap = max_gap(ts, from, to);
        worst = worst.max(gap);
        assert!(
            gap <= 1.5,
            "{job}: {gap:.2} s without an `up` sample with an etcd member down\n{}",
            logs(&[&a1, &a2])
        );
    }
    let slowest = puts.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    let first = puts.first().map(|(_, t, _)| *t).unwrap_or_default();
    eprintln!(
        "etcd member down {outage:?} (TLS, 3 members): {} writes ok, first {first:?}, slowest \
         {slowest:?}; nothing moved; largest `up` gap {worst:.2} s",
        puts.len()
    );
    println!(
        "RELIABILITY etcd_member_down_seconds={} etcd_member_writes_ok={} \
         etcd_member_first_write_ms={} etcd_member_slowest_write_ms={} \
         etcd_member_max_up_gap_seconds={worst:.2}",
        outage.as_secs(),
        puts.len(),
        first.as_millis(),
        slowest.as_millis()
    );
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m") at a fresh directory under `parent`, or returns
    /// why it cannot (not root, no CAP_SYS_ADMIN, no mount(8)).
    fn mount(parent: &Path, size: &str) -> Result<Tmpfs, String> {
        let path = parent.join("tmpfs");
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // Less than a chunk may still fit: fill that too, in small writes.
    let small = vec![0u8; 512];
    while f.write_all(&small).is_ok() {
        written += small.len() as u64;
    }
    let _ = f.sync_all();
    written
}

/// The WAL's disk fills up (a tmpfs). The agent logs the failed write with
/// the segment's path, drops and counts that time's samples (they cannot be made durable:
/// `agent_wal_write_dropped_samples_total`), keeps serving the API, does not exit, and when
/// space returns the next scrapes are written and arrive at the receiver; the WAL reads back
/// without corruption (`agentctl wal inspect`, and no repair needed on open).
#[test]
fn disk_full_wal_drops_and_counts_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = match Tmpfs::mount(dir.path(), "6m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED: disk_full_wal_drops_and_counts_then_resumes: {why} (needs root)");
            return;
        }
    };
    let prom = Prometheus::start();
    let target = Target::start(200);
    let wal_dir = fs.path.join("wal");
    let yaml = format!(
        "metrics:\n  wal_directory: {}\n  instance_mode: distinct\n  scraping_service:\n    enabled: true\n",
        wal_dir.display()
    );
    let mut agent = spawn(dir.path(), "diskfull", &yaml);
    agent.wait_ready(Duration::from_secs(20));
    let r = agent.put_config(
        "diskfull",
        &instance_yaml("rel-disk", &target.addr, &prom.write_url()),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while up_timestamps(&prom, "rel-disk", 0.0, f64::MAX)
        .values()
        .all(|t| t.len() < 3)
    {
        assert!(
            Instant::now() < deadline,
            "no samples before the disk filled\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Fill the disk and keep it full for a few scrapes.
    let filler = fs.path.join("filler");
    let filled = fill(&filler);
    let full_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric("agent_wal_write_dropped_samples_total", "") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no WAL write failure counted with the disk full\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Keep it full for a few scrapes: three failed commits.
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric("agent_wal_write_failures_total", "") < 3.0 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 failed WAL writes with the disk full\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped = agent.metric("agent_wal_write_dropped_samples_total", "");
    let failures = agent.metric("agent_wal_write_failures_total", "");
    assert_eq!(
        status(&agent, "/-/healthy"),
        200,
        "healthy while the disk is full"
    );
    let r = agent.get("/agent/api/v1/configs");
    assert_eq!(r.status, 200, "GET configs while the disk is full: {r:?}");
    assert!(agent.is_running(), "the agent process is still there");
    let log = agent.log();
    assert!(
        log.contains("WAL write failed") && log.contains(&wal_dir.display().to_string()),
        "the failed write is logged with its path:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let back = Clock::system().now();
    let back_secs = unix_secs(back);
    let t_back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        let ups = up_timestamps(&prom, "rel-disk", back_secs + 1.0, f64::MAX);
        if ups.values().any(|t| t.len() >= 3) {
            break t_back.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no samples scraped after the disk had space again reached the receiver\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");

    // Stop the agent and read its WAL back.
    assert_eq!(agent.stop(), Some(0));
    let inst_wal = wal_dir.join("diskfull").join("wal");
    let out = crate::support::agentctl(&["wal", "inspect", inst_wal.to_str().unwrap()], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.to_lowercase().contains("corrupt"),
        "wal inspect: {:?}\n{stderr}",
        out.status
    );
    let repaired = agent::wal::repair(&inst_wal).expect("read the WAL");
    assert!(repaired.is_none(), "the WAL needed a repair: {repaired:?}");
    eprintln!(
        "disk full: filler {filled} bytes; {failures} failed WAL writes dropped {dropped} samples \
         over {:?}; API served throughout; samples arrived again {resumed:?} after space returned",
        full_at.elapsed()
    );
    println!(
        "RELIABILITY disk_full_dropped_samples={dropped} disk_full_resume_seconds={:.2} \
         disk_full_corrupt_segments=0",
        resumed.as_secs_f64()
    );
}

/// Records with the offset just past each.
type Records = Vec<(Vec<u8>, u64)>;

/// The records of one segment file with the offset just past each; `Err` carries the records
/// read before the first corruption and the error text.
fn segment_records(path: &Path, index: u32) -> Result<Records, (Records, String)> {
    let mut r = agent::wal::Reader::new(vec![agent::wal::SegmentSource {
        index,
        path: path.to_owned(),
    }]);
    let mut out = Vec::new();
    loop {
        match r.next_record() {
            Ok(true) => out.push((r.record().to_vec(), r.last_good_end())),
            Ok(false) => return Ok(out),
            Err(e) => return Err((out, e.to_string())),
        }
    }
}

/// Segment numbers in a WAL directory (files named by 8 digits).
fn segments(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn copy_flat(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A WAL written by a real scrape, the agent SIGKILLed, then the last segment
/// truncated at random offsets and/or bytes flipped (seeded: `RELIABILITY_SEED`, printed).
/// On each restart the agent starts (no panic), logs the repair with segment and offset when
/// the tail was torn, keeps every complete record before the damage (read back with our
/// reader), and continues appending in a new segment.
#[test]
fn torn_wal_tail_is_repaired_on_restart() {
    let seed = std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| agent::clock::unix_nanos(Clock::system().now()) as u64 | 1);
    println!("RELIABILITY torn_tail_seed={seed}");
    let mut rng = agent::rng::Rng::with_seed(seed);
    let target = Target::start(50);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let yaml = format!(
        "metrics:\n  wal_directory: {}\n  instance_mode: distinct\n  scraping_service:\n    enabled: true\n",
        d.join("data").display()
    );
    let config = format!(
        "scrape_configs:\n  - job_name: torn\n    scrape_interval: 1s\n    \
         static_configs:\n      - targets: ['{}']\n",
        target.addr
    );
    let wal = d.join("data").join("torn").join("wal");

    // A WAL from a real scrape, ended by SIGKILL.
    let mut agent = spawn(d, "torn-0", &yaml);
    agent.wait_ready(Duration::from_secs(20));
    let r = agent.put_config("torn", &config);
    assert_eq!(r.status, 201, "{r:?}");
    // Killed once the last segment holds a few complete records (scrapes committed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&wal).last().is_none_or(|&s| {
        segment_records(&wal.join(format!("{s:08}")), s).map_or(0, |r| r.len()) < 4
    }) {
        assert!(Instant::now() < deadline, "not scraped\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.kill();
    let pristine = d.join("pristine");
    copy_flat(&wal, &pristine);
    let last = *segments(&pristine).last().expect("a segment");
    let last_path = pristine.join(format!("{last:08}"));
    let len = std::fs::metadata(&last_path).unwrap().len();
    let records = segment_records(&last_path, last).expect("the pristine tail reads cleanly");
    assert!(records.len() >= 3, "a few records: {}", records.len());

    let rounds = 6;
    let mut repaired_rounds = 0;
    let mut kept_total = 0;
    for round in 0..rounds {
        copy_flat(&pristine, &wal);
        let seg = wal.join(format!("{last:08}"));
        let mut bytes = std::fs::read(&seg).unwrap();
        // Damage: 0 = truncate, 1 = flip one byte, 2 = both (flip before the cut).
        let kind = rng.below(3);
        let cut = 1 + rng.below(len - 1);
        let mut damage_at = cut;
        if kind != 0 {
            let flip = rng.below(cut);
            bytes[flip as usize] ^= 1 << rng.below(8);
            damage_at = flip;
        }
        if kind != 1 {
            bytes.truncate(cut as usize);
        } else {
            damage_at = damage_at.min(len);
        }
        std::fs::write(&seg, &bytes).unwrap();
        let torn = segment_records(&seg, last).is_err();
        let intact_before: usize = records.iter().filter(|(_, end)| *end <= damage_at).count();

        let id = format!("torn-{}", round + 1);
        let mut agent = spawn(d, &id, &yaml);
        agent.wait_ready(Duration::from_secs(20));
        // It continues appending in a new segment.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let next = segments(&wal).into_iter().filter(|&s| s > last).max();
            let appended = next.is_some_and(|s| {
                segment_records(&wal.join(format!("{s:08}")), s).is_ok_and(|r| r.len() >= 2)
            });
            if appended {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing appended after the restart\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = agent.log();
        assert!(!log.contains("panicked"), "round {round}:\n{log}");
        if torn {
            repaired_rounds += 1;
            assert!(
                log.contains("WAL repaired")
                    && log.contains(&format!("segment={last}"))
                    && log.contains("offset="),
                "round {round}: the repair is logged with segment and offset:\n{log}"
            );
        }
        agent.kill();

        // Every complete record before the damage is still there, in order, and nothing else
        // from the damaged segment.
        let kept = segment_records(&seg, last)
            .unwrap_or_else(|(_, e)| panic!("round {round}: the repaired segment: {e}"));
        assert!(
            kept.len() >= intact_before && kept.len() <= records.len(),
            "round {round} (kind {kind}, cut {cut}, damage at {damage_at}): kept {} records, \
             {intact_before} were complete before the damage, {} in all",
            kept.len(),
            records.len()
        );
        for (i, ((got, _), (want, _))) in kept.iter().zip(&records).enumerate() {
            assert_eq!(got, want, "round {round}: record {i} differs");
        }
        kept_total += kept.len();
        eprintln!(
            "torn tail round {round}: kind {kind}, cut {cut}/{len}, damage at {damage_at}: \
             torn {torn}, kept {}/{} records ({intact_before} complete before the damage)",
            kept.len(),
            records.len()
        );
    }
    println!(
        "RELIABILITY torn_tail_rounds={rounds} torn_tail_repaired_rounds={repaired_rounds} \
         torn_tail_complete_records_lost=0 torn_tail_records_kept={kept_total}"
    );
}
