//! The slow suite, `#[ignore]`d so CI's `cargo test` skips it; run by
//! `tests/slow/run` with `--ignored`. Three agents on a real etcd share 1,000 configs that
//! scrape 10,000 targets on loopback (100 listening ports x 100 paths: each config scrapes 10
//! ports on its own `metrics_path`, so every (address, path) pair is scraped by exactly one
//! job) for `SLOW_DURATION` seconds (default 600). Asserted: every config runs on exactly one
//! agent at every check, no `level=error` line in any agent's log, resident memory flat (end
//! within 1.5x + 64 MiB of the value after the first full scrape round; both reported), and
//! the targets are scraped at the configured rate.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::agent::{placement, ClusterMember};
use crate::support::etcd::EtcdServer;
use crate::support::{http_full, Agent};

const PORTS: usize = 100;
const PATHS: usize = 100;
const CONFIGS: usize = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// 100 listeners on one thread answering any `/m/<n>` with five series; counts scrapes.
fn start_targets() -> (Vec<u16>, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let listeners: Vec<std::net::TcpListener> = (0..PORTS)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .collect();
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let counter = served.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/m/{n}",
                axum::routing::get(move |axum::extract::Path(n): axum::extract::Path<u32>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let mut body = String::from("# TYPE load_metric gauge\n");
                        for i in 0..5 {
                            body.push_str(&format!("load_metric{{path=\"{n}\",i=\"{i}\"}} {i}\n"));
                        }
                        body
                    }
                }),
            );
            let mut tasks = Vec::new();
            for l in listeners {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(l, app).await;
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    (ports, served)
}

fn start_agent(dir: &Path, etcd: &str, id: &str) -> Agent {
    let member = ClusterMember {
        id,
        etcd,
        wal_directory: &dir.join(format!("wal-{id}")),
        heartbeat_timeout: "15s",
        auto_forget_periods: None,
        reshard_interval: "60s",
        metrics_extra: "",
        etcd_extra: "",
    };
    Agent::builder(dir)
        .name(id)
        .config(&member.yaml())
        .ready_timeout(Duration::from_secs(60))
        .start()
}

/// Resident set size in MiB, from /proc.
fn rss_mib(a: &Agent) -> f64 {
    a.rss_kib() as f64 / 1024.0
}

fn errors(a: &Agent) -> Vec<String> {
    a.log()
        .lines()
        .filter(|l| l.contains("level=error"))
        .map(str::to_owned)
        .collect()
}

/// Configs not running exactly once.
fn misplaced(p: &BTreeMap<String, Vec<String>>, names: &[String]) -> Vec<(String, Vec<String>)> {
    names
        .iter()
        .filter(|n| p.get(*n).is_none_or(|v| v.len() != 1))
        .map(|n| (n.clone(), p.get(n).cloned().unwrap_or_default()))
        .collect()
}

#[test]
#[ignore = "slow suite: tests/slow/run (SLOW_DURATION seconds of load)"]
fn slow_load_3_agents_1000_configs_10000_targets() {
    let duration = Duration::from_secs(env_u64("SLOW_DURATION", 600));
    let interval = env_u64("SLOW_SCRAPE_INTERVAL", 30);
    let (ports, served) = start_targets();
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let agents: Vec<Agent> = (1..=3)
        .map(|i| start_agent(dir.path(), &etcd.endpoint(), &format!("load-{i}")))
        .collect();
    let refs: Vec<&Agent> = agents.iter().collect();

    let names: Vec<String> = (0..CONFIGS).map(|i| format!("{i:04}-load")).collect();
    let put_start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let group = i / PATHS;
        let targets: Vec<String> = (0..10)
            .map(|k| format!("'127.0.0.1:{}'", ports[group * 10 + k]))
            .collect();
        let yaml = format!(
            "scrape_configs:\n  - job_name: load-{i}\n    scrape_interval: {interval}s\n    \
             scrape_timeout: 10s\n    metrics_path: /m/{}\n    static_configs:\n      - targets: [{}]\n",
            i % PATHS,
            targets.join(", ")
        );
        let r = http_full(
            "PUT",
            agents[i % 3].addr(),
            &format!("/agent/api/v1/config/{name}"),
            &[],
            yaml.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{name}: {r:?}");
    }
    let put_took = put_start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let p = loop {
        let p = placement(&refs);
        if misplaced(&p, &names).is_empty() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "1,000 configs not placed once within 120 s: {:?}",
            &misplaced(&p, &names)[..5.min(misplaced(&p, &names).len())]
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let share: Vec<usize> = agents
        .iter()
        .map(|a| p.values().filter(|v| v[0] == a.name()).count())
        .collect();
    eprintln!("load: 1,000 configs PUT in {put_took:?}, placed {share:?}");

    // One full scrape round (every target scraped once more) before the memory baseline.
    let round = served.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3 * interval + 60);
    while served.load(Ordering::Relaxed) < round + (PORTS * PATHS) as u64 {
        assert!(Instant::now() < deadline, "no full scrape round");
        std::thread::sleep(Duration::from_secs(1));
    }
    let rss_start: Vec<f64> = agents.iter().map(rss_mib).collect();
    let served_start = served.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(10).min(duration.saturating_sub(start.elapsed())));
        let p = placement(&refs);
        let bad = misplaced(&p, &names);
        assert!(
            bad.is_empty(),
            "{} configs not running exactly once after {:?}: {:?}",
            bad.len(),
            start.elapsed(),
            &bad[..5.min(bad.len())]
        );
        checks += 1;
    }
    let elapsed = start.elapsed();
    let rss_end: Vec<f64> = agents.iter().map(rss_mib).collect();
    let scrapes = served.load(Ordering::Relaxed) - served_start;
    let rate = scrapes as f64 / elapsed.as_secs_f64();
    let want_rate = (PORTS * PATHS) as f64 / interval as f64;
    let errors: Vec<String> = agents.iter().flat_map(errors).collect();
    eprintln!(
        "load: {elapsed:?}, {checks} placement checks all exactly-once; RSS MiB start {rss_start:.1?} \
         end {rss_end:.1?}; {scrapes} scrapes = {rate:.1}/s (configured {want_rate:.1}/s); \
         {} error lines",
        errors.len()
    );
    println!(
        "RELIABILITY load_seconds={} load_configs={CONFIGS} load_targets={} load_unowned_checks_failed=0 \
         load_rss_start_mib={:.1} load_rss_end_mib={:.1} load_scrapes_per_second={rate:.1} \
         load_error_lines={}",
        elapsed.as_secs(),
        PORTS * PATHS,
        rss_start.iter().sum::<f64>(),
        rss_end.iter().sum::<f64>(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "error log lines: {:?}",
        &errors[..5.min(errors.len())]
    );
    for (i, (s, e)) in rss_start.iter().zip(&rss_end).enumerate() {
        assert!(
            *e <= s * 1.5 + 64.0,
            "agent load-{}: RSS grew from {s:.1} MiB to {e:.1} MiB",
            i + 1
        );
    }
    assert!(
        rate >= want_rate * 0.8,
        "scrape rate {rate:.1}/s is below 80% of the configured {want_rate:.1}/s"
    );
}
