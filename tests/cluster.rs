//! The clustered scraping service: real agent processes on a real etcd. Each config runs on
//! exactly one agent; configs move when an agent is killed, stops or joins; a DELETE stops
//! the instance at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::agent::{placement, AgentBuilder, ClusterMember};
use crate::support::etcd::EtcdServer;
use crate::support::{http_full, Agent};

/// An agent of the cluster on `etcd`: its config is `<dir>/<id>.yml`, its WAL `<dir>/<id>/`.
fn agent(dir: &std::path::Path, etcd: &str, id: &str) -> AgentBuilder {
    let wal = dir.join(id);
    let member = ClusterMember {
        id,
        etcd,
        wal_directory: &wal,
        heartbeat_timeout: "4s",
        auto_forget_periods: Some(2),
        reshard_interval: "30s",
        metrics_extra: "",
        etcd_extra: "",
    };
    Agent::builder(dir).name(id).config(&member.yaml())
}

fn start_agent(dir: &std::path::Path, etcd: &str, id: &str) -> Agent {
    agent(dir, etcd, id).start()
}

fn instances(a: &Agent) -> Vec<String> {
    a.running_configs().expect("the agent's API answers")
}

/// Waits until every one of `names` runs on exactly one of `agents`; returns how long it took.
fn wait_placed(
    agents: &[&Agent],
    names: &[String],
    within: Duration,
) -> (Duration, BTreeMap<String, Vec<String>>) {
    let start = Instant::now();
    loop {
        let p = placement(agents);
        let ok =
            p.len() == names.len() && names.iter().all(|n| p.get(n).is_some_and(|v| v.len() == 1));
        if ok {
            return (start.elapsed(), p);
        }
        assert!(
            start.elapsed() < within,
            "configs not placed exactly once within {within:?}: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// job → agents scraping it, from each agent's `/metrics/targets`; also checks that each agent
/// runs its configs as one shared instance (the default `instance_mode: shared`: these configs
/// differ only in name and jobs).
fn job_placement(agents: &[&Agent]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in agents {
        let r = a.get("/agent/api/v1/metrics/targets");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let targets = v["data"].as_array().unwrap();
        let groups: std::collections::BTreeSet<&str> = targets
            .iter()
            .map(|t| t["instance"].as_str().unwrap())
            .collect();
        assert!(groups.len() <= 1, "{}: instances {groups:?}", a.name());
        for t in targets {
            let job = t["labels"]["job"].as_str().unwrap().to_owned();
            m.entry(job).or_default().push(a.name().to_owned());
        }
    }
    m
}

fn config(i: usize) -> String {
    format!(
        "scrape_configs:\n  - job_name: job-{i}\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:9']\n"
    )
}

#[test]
fn configs_run_once_and_move_on_kill_stop_join_and_delete() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a1 = start_agent(dir.path(), &etcd.endpoint(), "agent-1");
    let a2 = start_agent(dir.path(), &etcd.endpoint(), "agent-2");
    let mut a3 = start_agent(dir.path(), &etcd.endpoint(), "agent-3");

    // 30 configs PUT through one agent.
    // Names that differ in their first bytes: FNV-1 (the old agent's key hash) mixes early
    // bytes well and only XORs in the last one, so `cfg-00`..`cfg-29` would sit close together
    // on the ring and land on one or two agents.
    let names: Vec<String> = (0..30).map(|i| format!("{i:02}-cfg")).collect();
    let t0 = Instant::now();
    for (i, n) in names.iter().enumerate() {
        let r = a1.put_config(n, &config(i));
        assert_eq!(r.status, 201, "{r:?}");
    }
    let (took, p) = wait_placed(
        &[&a1, &a2, &a3],
        &names,
        Duration::from_secs(30) + t0.elapsed(),
    );
    eprintln!("30 configs placed exactly once {took:?} after the last PUT");
    // The jobs are scraped where the configs are placed, each by one agent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = job_placement(&[&a1, &a2, &a3]);
        let agreed = jobs.len() == 30
            && p.iter().all(|(name, owners)| {
                // `07-cfg` holds `job-7`.
                let i: usize = name.trim_end_matches("-cfg").parse().unwrap();
                jobs.get(&format!("job-{i}")) == Some(owners)
            });
        if agreed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets disagree with placement: jobs {jobs:?}, configs {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_3: Vec<String> = p
        .iter()
        .filter(|(_, v)| v[0] == "agent-3")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!on_3.is_empty(), "agent-3 owns some configs: {p:?}");

    // kill -9 agent-3: its configs run elsewhere within heartbeat_timeout + 2 x heartbeat_period.
    let killed = Instant::now();
    a3.kill();
    let (_, p) = wait_placed(&[&a1, &a2], &names, Duration::from_secs(6));
    let failover = killed.elapsed();
    eprintln!("failover after kill -9: {failover:?} (limit 4s + 2 x 1s = 6s)");
    println!(
        "RELIABILITY sigkill_failover_seconds={:.2}",
        failover.as_secs_f64()
    );
    assert!(p.values().all(|v| v[0] != "agent-3"));
    // Settled: exactly once at every look for two heartbeat periods (no late duplicate from a
    // stale view).
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(2) {
        let p = placement(&[&a1, &a2]);
        assert!(
            names.iter().all(|n| p.get(n).is_some_and(|v| v.len() == 1)),
            "not exactly once after failover: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Its ring entry is auto-forgotten (2 x heartbeat_timeout).
    let start = Instant::now();
    loop {
        let r = a1.req("GET", "/debug/ring", &[("Accept", "application/json")], "");
        if !r.body.contains("agent-3") {
            eprintln!(
                "agent-3 auto-forgotten {:?} after the kill",
                killed.elapsed()
            );
            println!(
                "RELIABILITY sigkill_auto_forget_seconds={:.2}",
                killed.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agent-3 still in the ring: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A 4th agent joins and takes a share; nothing runs twice once settled.
    let a4 = start_agent(dir.path(), &etcd.endpoint(), "agent-4");
    let joined = Instant::now();
    let p = loop {
        let (_, p) = wait_placed(&[&a1, &a2, &a4], &names, Duration::from_secs(30));
        if p.values().any(|v| v[0] == "agent-4") {
            break p;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "agent-4 took no configs within 30 s: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "agent-4 took {} configs {:?} after it was ready",
        p.values().filter(|v| v[0] == "agent-4").count(),
        joined.elapsed()
    );

    // DELETE stops the owning agent's instance within a second.
    let victim = names[7].clone();
    let owner = p[&victim][0].clone();
    let owner_agent = [&a1, &a2, &a4]
        .into_iter()
        .find(|a| a.name() == owner)
        .unwrap();
    let deleted = Instant::now();
    let r = http_full(
        "DELETE",
        a2.addr(),
        &format!("/agent/api/v1/config/{victim}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let victim = &victim;
    loop {
        if !instances(owner_agent).contains(victim) {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "{victim} still runs on {owner}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("DELETE stopped the instance after {:?}", deleted.elapsed());
    let names: Vec<String> = names.iter().filter(|n| *n != victim).cloned().collect();

    // SIGTERM agent-4: its configs move to the others (make before break: no config is
    // unowned for more than one scrape interval, 1 s), it exits 0 and leaves the ring.
    let mut a4 = a4;
    let termed = Instant::now();
    a4.signal("TERM");
    let mut unowned_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut max_unowned = Duration::ZERO;
    loop {
        // agent-4 answers until it exits; afterwards only the other two count.
        let mut p = placement(&[&a1, &a2]);
        if let Ok(r) = http_full(
            "GET",
            a4.addr(),
            "/agent/api/v1/metrics/instances",
            &[],
            b"",
        ) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) {
                for n in v["data"].as_array().into_iter().flatten() {
                    if let Some(n) = n.as_str() {
                        p.entry(n.to_owned()).or_default().push("agent-4".into());
                    }
                }
            }
        }
        let now = Instant::now();
        for n in &names {
            if p.get(n).is_some_and(|v| !v.is_empty()) {
                if let Some(since) = unowned_since.remove(n) {
                    max_unowned = max_unowned.max(now - since);
                }
            } else {
                let since = *unowned_since.entry(n.clone()).or_insert(now);
                max_unowned = max_unowned.max(now - since);
            }
        }
        let a4_gone = !a4.is_running();
        let settled = a4_gone
            && names
                .iter()
                .all(|n| p.get(n).is_some_and(|v| v.len() == 1 && v[0] != "agent-4"));
        if settled {
            break;
        }
        assert!(
            termed.elapsed() < Duration::from_secs(30),
            "not settled 30 s after SIGTERM: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "configs moved {:?} after SIGTERM; longest a config ran nowhere: {max_unowned:?}",
        termed.elapsed()
    );
    println!(
        "RELIABILITY sigterm_max_unowned_seconds={:.2}",
        max_unowned.as_secs_f64()
    );
    assert!(
        max_unowned <= Duration::from_secs(1),
        "a config ran nowhere for {max_unowned:?} (> one scrape interval) after SIGTERM"
    );
    assert_eq!(a4.wait_exit(Duration::from_secs(30)), Some(0));
    let r = a1.req("GET", "/debug/ring", &[("Accept", "application/json")], "");
    assert!(!r.body.contains("agent-4"), "{}", r.body);
}

/// PUT of a new config → the first scrape reaches the target quickly (p99 over 100 PUTs). The
/// scrape loop waits for the target's slot within the interval (as Prometheus does, which
/// spreads load), so with a 1 s interval the first scrape comes within a second of the loop's
/// start; half a second more is allowed for the PUT to reach the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_scrape_follows_a_put_within_its_interval() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let first_hit: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let hits = first_hit.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |q: axum::extract::Query<HashMap<String, String>>| {
            if let Some(c) = q.get("cfg") {
                hits.lock()
                    .unwrap()
                    .entry(c.clone())
                    .or_insert_with(Instant::now);
            }
            async { "# TYPE x gauge\nx 1\n" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().unwrap();
    // The harness blocks; the target above runs on the other worker meanwhile.
    let agent = tokio::task::block_in_place(|| Agent::start(dir.path(), &[]));

    let mut put_done = HashMap::new();
    for i in 0..100 {
        let body = format!(
            "scrape_configs:\n  - job_name: first-{i}\n    scrape_interval: 1s\n    params:\n      cfg: ['{i}']\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let r = tokio::task::block_in_place(|| agent.put_config(&format!("first-{i}"), &body));
        assert_eq!(r.status, 201, "{r:?}");
        put_done.insert(i.to_string(), Instant::now());
    }
    // Every config scraped at least once (latencies are judged below).
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_hit.lock().unwrap().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "not every config was scraped within 30 s; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = first_hit.lock().unwrap().clone();
    let mut lat: Vec<Duration> = put_done
        .iter()
        .map(|(k, t)| {
            hits.get(k)
                .unwrap_or_else(|| panic!("config {k} was never scraped"))
                .saturating_duration_since(*t)
        })
        .collect();
    lat.sort();
    let p50 = lat[49];
    let p99 = lat[98];
    eprintln!(
        "PUT -> first scrape over 100 PUTs: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lat[99]
    );
    assert!(p99 <= Duration::from_millis(1500), "p99 {p99:?}");
}

/// etcd down when the agent starts: it keeps retrying (logging the endpoint), the API answers
/// 503 naming the reason, and once etcd is up the agent joins and serves configs.
#[test]
fn an_agent_started_before_etcd_waits_for_it_and_answers_503_meanwhile() {
    let mut etcd = EtcdServer::start();
    etcd.kill();
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path(), &etcd.endpoint(), "early").spawn();
    // Until the first attempt to connect fails the API says "starting"; then it names etcd.
    a.wait_until("503 naming etcd", Duration::from_secs(20), |a| {
        let r = a.get("/agent/api/v1/configs");
        r.status == 503 && r.body.contains(&format!("etcd at {}", etcd.endpoint()))
    });
    assert_eq!(a.get("/-/ready").status, 503);
    let r = a.put_config("x", &config(1));
    assert_eq!(r.status, 503, "{r:?}");
    a.wait_log(&etcd.endpoint(), Duration::from_secs(30));

    etcd.restart();
    a.wait_ready(Duration::from_secs(40));
    let r = a.put_config("x", &config(1));
    assert_eq!(r.status, 201, "{r:?}");
    wait_placed(&[&a], &["x".to_owned()], Duration::from_secs(30));
}
