//! Scrape to WAL to remote_write end to end: real `agentctl agent run` processes scrape a local target into
//! their WAL and remote_write to a real Prometheus (or to small receivers in the test), through
//! a receiver outage, a SIGKILL of the agent, 429s and 400s.
//!
//! The target serves 100 counters `e2e_metric{idx="0".."99"}` whose value is the number of the
//! scrape (1, 2, 3... counted by the target), so the samples of a series at the receiver tell
//! exactly which scrapes arrived: values `1..=n` without gaps means nothing was lost, and the
//! receiver keeps one sample per timestamp. The target's request count is the number of scrapes
//! it served; the one in flight when scraping stops (a DELETE or a SIGKILL) may be served but
//! never committed, hence the "at most 1 missing" allowances. A scrape that failed (`up` 0, e.g.
//! a timeout on a loaded machine) has no samples; every scrape with `up` 1 must have all 100.
//!
//! Besides the cases, a SIGKILL with the receiver up and shards flushing out of phase:
//! it found that resent samples made Prometheus refuse whole batches (see that test).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::remote_write::proto::WriteRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::support::prometheus::Prometheus;
use crate::support::Agent;

const SERIES: u64 = 100;
const JOB: &str = "e2e";
/// A batch every second, so that several requests reach the scripted receivers.
const FAST_BATCHES: &str = "    queue_config:\n      batch_send_deadline: 1s\n";
/// Four shards sending every second: after the restart each series resumes from its shard's
/// saved mark.
const SHARDED: &str = "    queue_config:\n      min_shards: 4\n      batch_send_deadline: 1s\n";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The scrape target: 100 counters whose value is the scrape's number.
struct Target {
    addr: String,
    served: Arc<AtomicU64>,
}

impl Target {
    async fn start() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut body = String::from("# TYPE e2e_metric counter\n");
                    for i in 0..SERIES {
                        body.push_str(&format!("e2e_metric{{idx=\"{i}\"}} {n}\n"));
                    }
                    body
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Target { addr, served }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// An agent in `dir` (the embedded default without `config_file`), ready. The harness blocks:
/// these tests run on a multi-thread runtime, so the in-process target and receivers keep
/// serving meanwhile.
fn start_agent(dir: &std::path::Path, config_file: Option<&std::path::Path>) -> Agent {
    let b = Agent::builder(dir);
    let b = match config_file {
        Some(f) => b.config_file(f),
        None => b,
    };
    tokio::task::block_in_place(|| b.start())
}

/// PUTs the instance config `name` and waits until the agent runs it.
async fn put_config(agent: &Agent, name: &str, yaml: &str) {
    let r = tokio::task::block_in_place(|| agent.put_config(name, yaml));
    assert!(r.status == 201 || r.status == 200, "PUT {name}: {r:?}");
    wait_instance(agent, name, true).await;
}

/// DELETEs the config and waits until its instance stopped (flushed remote_write). The config
/// leaves the agent's list at once; the instance's worker then stops scraping and flushes
/// remote_write, and logs `instance stopped` after the flush. Each test here runs one config at
/// a time, so the first such line after the DELETE is its instance's (in shared mode the line
/// names the group, not the config).
async fn delete_config(agent: &Agent, name: &str) {
    let offset = agent.log().len();
    let r = tokio::task::block_in_place(|| agent.delete_config(name));
    assert_eq!(r.status, 200, "DELETE {name}: {r:?}");
    wait_instance(agent, name, false).await;
    tokio::task::block_in_place(|| {
        agent.wait_log_after(offset, "msg=\"instance stopped\"", Duration::from_secs(120))
    });
}

async fn wait_instance(agent: &Agent, name: &str, running: bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let configs = tokio::task::block_in_place(|| agent.running_configs());
        if configs.is_some_and(|c| c.iter().any(|n| n == name) == running) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance {name} running={running} not reached within 90 s:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of the agent's metric `name` over the label sets containing `label_part`.
fn metric(agent: &Agent, name: &str, label_part: &str) -> f64 {
    tokio::task::block_in_place(|| agent.metric(name, label_part))
}

/// SIGTERM; the agent must exit 0.
fn stop(mut agent: Agent) {
    let code = tokio::task::block_in_place(|| agent.stop());
    assert_eq!(code, Some(0), "agent exit:\n{}", agent.log());
}

/// Waits until the target served `n` more scrapes (one a second): the tests measure phases in
/// scrapes, not in seconds of wall time, so a slow machine still gets every phase in full.
async fn scrapes(target: &Target, n: u64) {
    let from = target.served();
    let within = Duration::from_secs(3 * n + 30);
    let deadline = Instant::now() + within;
    while target.served() < from + n {
        assert!(
            Instant::now() < deadline,
            "{n} scrapes not served within {within:?} ({} so far)",
            target.served() - from
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent.yaml: scraping service on the embedded store in `dir/wal`, `cluster: e2e`.
/// `instance_mode: distinct`: the tests look at remote_write names (`rw0`) and WAL folders by
/// config name, which shared mode replaces by group names.
fn agent_yaml(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "metrics:\n  wal_directory: {}\n  instance_mode: distinct\n  global:\n    external_labels:\n      cluster: e2e\n  \
             scraping_service:\n    enabled: true\n",
            dir.join("wal").display()
        ),
    )
    .unwrap();
    path
}

/// An instance config scraping `target` every second, remote_writing to `urls` (named rw0..).
fn instance_yaml(target: &str, urls: &[&str], queue: &str) -> String {
    let mut y = format!(
        "scrape_configs:\n  - job_name: {JOB}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: ['{target}']\nremote_write:\n"
    );
    for (i, u) in urls.iter().enumerate() {
        y.push_str(&format!("  - name: rw{i}\n    url: {u}\n{queue}"));
    }
    y
}

/// Per `idx`, the values of `e2e_metric` at the receiver, in time order; asserts every series
/// carries `cluster="e2e"`, `job` and `instance`.
async fn received(prom: &Prometheus, target: &str) -> BTreeMap<u64, Vec<u64>> {
    let mut out = BTreeMap::new();
    for (labels, values) in prom
        .query_samples(&format!("e2e_metric{{job=\"{JOB}\"}}[30m]"))
        .await
    {
        assert_eq!(
            labels.get("cluster").map(String::as_str),
            Some("e2e"),
            "{labels:?}"
        );
        assert_eq!(
            labels.get("instance").map(String::as_str),
            Some(target),
            "{labels:?}"
        );
        let idx: u64 = labels["idx"].parse().unwrap();
        out.insert(idx, values.iter().map(|(_, v)| *v as u64).collect());
    }
    out
}

/// `up` at the receiver, which the agent commits with each scrape's samples: how many scrapes
/// succeeded (1) and failed (0, e.g. a scrape timeout on a loaded machine).
#[derive(Debug, Clone, Copy)]
struct Up {
    ok: usize,
    failed: usize,
}

async fn up(prom: &Prometheus) -> Up {
    let up = prom
        .query_samples(&format!("up{{job=\"{JOB}\",cluster=\"e2e\"}}[30m]"))
        .await;
    assert_eq!(up.len(), 1, "up series with cluster=\"e2e\": {up:?}");
    let ok = up[0].1.iter().filter(|(_, v)| *v == 1.0).count();
    Up {
        ok,
        failed: up[0].1.len() - ok,
    }
}

/// Checks every one of the 100 series holds exactly the scrapes `1..=last`, each once, except
/// those in `may_miss` (in flight when scraping stopped) and the scrapes that failed (`up` 0,
/// no samples); and holds one sample per successful scrape (`up` 1). Returns (samples the
/// target served, samples arrived).
fn check_series(
    got: &BTreeMap<u64, Vec<u64>>,
    last: u64,
    may_miss: &BTreeSet<u64>,
    up: Up,
) -> Result<(u64, u64), String> {
    if got.len() as u64 != SERIES {
        return Err(format!("series at the receiver: {:?}", got.keys()));
    }
    let mut arrived = 0;
    let mut errors = Vec::new();
    for (idx, values) in got {
        let set: BTreeSet<u64> = values.iter().copied().collect();
        if set.len() != values.len() || !values.windows(2).all(|w| w[0] < w[1]) {
            errors.push(format!(
                "idx {idx}: stored twice or out of order: {values:?}"
            ));
        }
        let missing: Vec<u64> = (1..=last).filter(|n| !set.contains(n)).collect();
        let unexplained = missing.iter().filter(|n| !may_miss.contains(n)).count();
        if unexplained > up.failed || values.len() != up.ok {
            errors.push(format!(
                "idx {idx}: {} samples for {up:?}; scrapes missing at the receiver: {missing:?} \
                 (in flight when scraping stopped: {may_miss:?})",
                values.len()
            ));
        }
        if !set.iter().all(|&n| n <= last) {
            errors.push(format!(
                "idx {idx}: values beyond scrape {last}: {values:?}"
            ));
        }
        arrived += values.len() as u64;
    }
    if errors.is_empty() {
        Ok((last * SERIES, arrived))
    } else {
        Err(format!(
            "{} series wrong, e.g.:\n{}",
            errors.len(),
            errors[..errors.len().min(5)].join("\n")
        ))
    }
}

/// The agent logs in `dir` and the receiver's log, for a failure message.
fn logs(dir: &std::path::Path, prom: &Prometheus) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("agent") && name.ends_with(".log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.push_str(&format!("--- {name}\n{text}"));
            }
        }
    }
    out.push_str(&format!("--- prometheus\n{}", prom.log()));
    out
}

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The lowest, over the 100 series, of the newest scrape number at the receiver.
async fn newest_everywhere(prom: &Prometheus) -> Option<u64> {
    let n = prom
        .query_scalar(&format!(
            "count(max_over_time(e2e_metric{{job=\"{JOB}\"}}[30m]))"
        ))
        .await?;
    if n as u64 != SERIES {
        return None;
    }
    prom.query_scalar(&format!(
        "min(max_over_time(e2e_metric{{job=\"{JOB}\"}}[30m]))"
    ))
    .await
    .map(|v| v as u64)
}

/// Waits until the scrapes stopped arriving: the receiver's sample total is the same on two
/// polls one second apart.
async fn wait_settled(prom: &Prometheus) {
    let query = format!("sum(count_over_time(e2e_metric{{job=\"{JOB}\"}}[30m]))");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut prev = prom.query_scalar(&query).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = prom.query_scalar(&query).await;
        if now == prev {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver's sample count keeps changing"
        );
        prev = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_scrape_to_prometheus_and_receiver_down_60s() {
    install_crypto();
    let mut prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_yaml(dir.path());
    let agent = start_agent(dir.path(), Some(&cfg));
    put_config(
        &agent,
        "e2e-main",
        &instance_yaml(&target.addr, &[&prom.write_url()], ""),
    )
    .await;

    // 1. Ten scrapes with the receiver up.
    scrapes(&target, 10).await;
    let s1 = target.served();
    let t = Instant::now();
    wait_for(
        "phase 1 scrapes at the receiver",
        Duration::from_secs(30),
        || async { newest_everywhere(&prom).await.filter(|&n| n >= s1) },
    )
    .await;
    let lag = t.elapsed();
    let got = received(&prom, &target.addr).await;
    // Only the prefix up to s1 is checked: newer scrapes may be on the way.
    let prefix: BTreeMap<u64, Vec<u64>> = got
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().filter(|&n| n <= s1).collect()))
        .collect();
    // `up` has newer scrapes too: every series must hold as many as idx 0, and gaps need a
    // failed scrape (`up` 0) to explain them.
    let up1 = Up {
        ok: prefix.get(&0).map_or(0, Vec::len),
        failed: up(&prom).await.failed,
    };
    let (expected, arrived) = check_series(&prefix, s1, &BTreeSet::new(), up1)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path(), &prom)));
    eprintln!(
        "e2e phase 1 (receiver up): {s1} scrapes, samples expected {expected} arrived {arrived}, \
         all of them at the receiver {lag:?} after the count was taken"
    );

    // 2. The receiver is down for 60 s while the agent keeps scraping.
    tokio::task::block_in_place(|| prom.stop());
    let down_at = target.served();
    // 60 scrapes (one a second) in CI; the slow suite (tests/slow/run) sets 300: the receiver
    // down for five minutes.
    let outage_secs: u64 = std::env::var("RECEIVER_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    scrapes(&target, outage_secs).await;
    let s2 = target.served();
    tokio::task::block_in_place(|| prom.restart());
    let back = Instant::now();
    wait_for(
        "the outage's scrapes at the receiver",
        Duration::from_secs(120),
        || async { newest_everywhere(&prom).await.filter(|&n| n >= s2) },
    )
    .await;
    let drain = back.elapsed();

    // A few more scrapes live, then stop scraping and compare with what the target served.
    scrapes(&target, 3).await;
    delete_config(&agent, "e2e-main").await;
    let total = target.served();
    wait_settled(&prom).await;
    let got = received(&prom, &target.addr).await;
    // The scrape in flight at the DELETE may have been served and never committed.
    let may_miss = BTreeSet::from([total]);
    let up = up(&prom).await;
    let (expected, arrived) = check_series(&got, total, &may_miss, up)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path(), &prom)));
    let pending = metric(
        &agent,
        "prometheus_remote_storage_samples_failed_total",
        "rw0",
    );
    assert_eq!(pending, 0.0, "samples failed for good");
    eprintln!(
        "e2e receiver down 60 s: {} scrapes during the outage ({down_at}..{s2}); \
         drained {drain:?} after the receiver was ready; total {total} scrapes served, \
         samples served {expected} arrived {arrived}, {up:?}",
        s2 - down_at
    );
    // Lost = served by the target but not at the receiver, beyond the scrape in flight at the
    // DELETE and failed scrapes (check_series allows only those); duplicates fail check_series.
    println!(
        "RELIABILITY receiver_down_{outage_secs}s_samples_lost={} \
         receiver_down_{outage_secs}s_drain_seconds={:.1}",
        expected
            .saturating_sub(arrived)
            .saturating_sub(SERIES * (up.failed as u64 + 1)),
        drain.as_secs_f64()
    );
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigkill_while_receiver_down_resends_the_wal() {
    install_crypto();
    let mut prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_yaml(dir.path());
    let mut agent = start_agent(dir.path(), Some(&cfg));
    put_config(
        &agent,
        "e2e-kill",
        &instance_yaml(&target.addr, &[&prom.write_url()], SHARDED),
    )
    .await;
    wait_for(
        "first scrapes at the receiver",
        Duration::from_secs(30),
        || async { newest_everywhere(&prom).await.filter(|&n| n >= 3) },
    )
    .await;

    tokio::task::block_in_place(|| prom.stop());
    let down_at = target.served();
    scrapes(&target, 8).await;
    agent.kill();
    let killed_at = target.served();

    tokio::task::block_in_place(|| prom.restart());
    let back = Instant::now();
    // The same directory: the embedded store still has the config, the WAL has the scrapes.
    let agent = start_agent(dir.path(), Some(&cfg));
    wait_instance(&agent, "e2e-kill", true).await;
    wait_for(
        "the WAL's scrapes at the receiver",
        Duration::from_secs(90),
        || async { newest_everywhere(&prom).await.filter(|&n| n > killed_at) },
    )
    .await;
    let drain = back.elapsed();
    scrapes(&target, 2).await;
    delete_config(&agent, "e2e-kill").await;
    let total = target.served();
    wait_settled(&prom).await;
    let got = received(&prom, &target.addr).await;
    // In flight at the SIGKILL (served, never committed) and at the DELETE.
    let may_miss = BTreeSet::from([killed_at, total]);
    let up = up(&prom).await;
    let (expected, arrived) = check_series(&got, total, &may_miss, up)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path(), &prom)));
    eprintln!(
        "e2e SIGKILL while the receiver was down: {} scrapes only in the WAL at the kill \
         ({down_at}..{killed_at}); all at the receiver {drain:?} after it was back; total {total} \
         scrapes served, samples served {expected} arrived {arrived}, {up:?}",
        killed_at - down_at
    );
    // Samples read again after the restart that the receiver already had: Prometheus rejects
    // all but the newest of a series as out of order (a 400 for the whole batch).
    let rejected = prom.log().matches("Out of order sample").count();
    eprintln!("e2e SIGKILL: Prometheus logged {rejected} out-of-order rejections");
    println!(
        "RELIABILITY sigkill_restart_wal_samples_lost={} sigkill_restart_resend_seconds={:.1}",
        expected
            .saturating_sub(arrived)
            .saturating_sub(SERIES * (up.failed as u64 + 2)),
        drain.as_secs_f64()
    );
    stop(agent);
}

/// SIGTERM while the receiver refuses connections (stopped): the agent does not wait out
/// `remote_flush_deadline` (5 m here, longer than the harness's minute for a stop) retrying a
/// receiver that is down; it stops at once, and after a restart with the receiver back every
/// scrape arrives, the unsent ones read again from the WAL (docs/compat.md, *Stopping*).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigterm_while_receiver_down_stops_at_once_and_loses_nothing() {
    install_crypto();
    let mut prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_yaml(dir.path());
    let mut agent = start_agent(dir.path(), Some(&cfg));
    let yaml = format!(
        "{}remote_flush_deadline: 5m\n",
        instance_yaml(&target.addr, &[&prom.write_url()], SHARDED)
    );
    put_config(&agent, "e2e-term", &yaml).await;
    wait_for(
        "first scrapes at the receiver",
        Duration::from_secs(30),
        || async { newest_everywhere(&prom).await.filter(|&n| n >= 3) },
    )
    .await;

    tokio::task::block_in_place(|| prom.stop());
    let down_at = target.served();
    scrapes(&target, 5).await;
    // The queue holds samples it cannot send: the shards are retrying.
    wait_for("failed sends", Duration::from_secs(60), || async {
        (metric(
            &agent,
            "prometheus_remote_storage_samples_retried_total",
            "rw0",
        ) > 0.0)
            .then_some(())
    })
    .await;
    let asked = Instant::now();
    // The harness fails the test when the agent still runs a minute after SIGTERM.
    let code = tokio::task::block_in_place(|| agent.stop());
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "agent exit:\n{}", agent.log());
    let stopped_at = target.served();
    let log = agent.log();
    assert!(
        log.contains("remote_write receiver not accepting samples"),
        "the stop does not say why it did not flush:\n{log}"
    );

    tokio::task::block_in_place(|| prom.restart());
    let back = Instant::now();
    tokio::task::block_in_place(|| agent.restart());
    wait_instance(&agent, "e2e-term", true).await;
    wait_for(
        "the WAL's scrapes at the receiver",
        Duration::from_secs(90),
        || async { newest_everywhere(&prom).await.filter(|&n| n > stopped_at) },
    )
    .await;
    let drain = back.elapsed();
    scrapes(&target, 2).await;
    delete_config(&agent, "e2e-term").await;
    let total = target.served();
    wait_settled(&prom).await;
    let got = received(&prom, &target.addr).await;
    // Served but maybe never committed: the scrape in flight at the SIGTERM and at the DELETE.
    let may_miss = BTreeSet::from([stopped_at, total]);
    let up = up(&prom).await;
    let (expected, arrived) = check_series(&got, total, &may_miss, up)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path(), &prom)));
    eprintln!(
        "e2e SIGTERM while the receiver was down: stopped in {took:?} (remote_flush_deadline \
         5m); scrapes {down_at}..{stopped_at} unsent at the stop, all at the receiver {drain:?} \
         after the restart; total {total} scrapes, samples served {expected} arrived {arrived}, \
         {up:?}"
    );
    println!(
        "RELIABILITY sigterm_receiver_down_stop_seconds={:.1} sigterm_receiver_down_samples_lost={}",
        took.as_secs_f64(),
        expected
            .saturating_sub(arrived)
            .saturating_sub(SERIES * (up.failed as u64 + 2)),
    );
    stop(agent);
}

/// A receiver answering a script of statuses (then `then`), recording each request.
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<(u16, Instant, WriteRequest)>>>,
    first: Option<(u16, &'static str)>,
    then: u16,
}

impl Receiver {
    async fn serve(first: Option<(u16, &'static str)>, then: u16) -> (Receiver, String) {
        let rx = Receiver {
            seen: Arc::default(),
            first,
            then,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(receive))
            .with_state(rx.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (rx, format!("http://{addr}/api/v1/write"))
    }

    fn requests(&self) -> Vec<(u16, Instant, WriteRequest)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn receive(
    axum::extract::State(rx): axum::extract::State<Receiver>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(req) = WriteRequest::decode_snappy(&body) else {
        return (StatusCode::BAD_REQUEST, "undecodable").into_response();
    };
    let mut seen = rx.seen.lock().unwrap();
    let (status, retry_after) = match rx.first {
        Some((s, ra)) if seen.is_empty() => (s, Some(ra)),
        _ => (rx.then, None),
    };
    seen.push((status, Instant::now(), req));
    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    resp
}

/// Per (series labels, timestamp): how many times the sample was in requests answered `status`.
fn sample_counts(
    reqs: &[(u16, Instant, WriteRequest)],
    status: u16,
) -> BTreeMap<(String, i64), usize> {
    let mut m = BTreeMap::new();
    for (_, _, r) in reqs.iter().filter(|(s, _, _)| *s == status) {
        for ts in &r.timeseries {
            let key: Vec<String> = ts
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect();
            for s in &ts.samples {
                // Staleness markers from the DELETE are not scrapes.
                if s.value.is_nan() {
                    continue;
                }
                *m.entry((key.join(","), s.timestamp)).or_insert(0) += 1;
            }
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_429_then_200_and_400_through_the_agent() {
    install_crypto();
    let (r429, url429) = Receiver::serve(Some((429, "1")), 204).await;
    let (r400, url400) = Receiver::serve(None, 400).await;
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The embedded default: no config file, everything under the temp dir.
    let agent = start_agent(dir.path(), None);
    put_config(
        &agent,
        "e2e-codes",
        &instance_yaml(&target.addr, &[&url429, &url400], FAST_BATCHES),
    )
    .await;
    scrapes(&target, 5).await;
    delete_config(&agent, "e2e-codes").await;
    let served = target.served();

    // 429 then 204: the first batch is retried after Retry-After and every scrape arrives once.
    let reqs = wait_for("a 204 after the 429", Duration::from_secs(30), || async {
        let r = r429.requests();
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(reqs[0].0, 429);
    let retry_gap = reqs[1].1 - reqs[0].1;
    let first: BTreeMap<(String, i64), usize> = sample_counts(&reqs[..1], 429);
    let ok = sample_counts(&reqs, 204);
    assert!(
        ok.values().all(|&c| c == 1),
        "samples accepted more than once: {:?}",
        ok.iter()
            .filter(|(_, &c)| c > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        first.keys().all(|k| ok.contains_key(k)),
        "the 429'd batch did not arrive later"
    );
    let metric_samples = ok.keys().filter(|(k, _)| k.contains("e2e_metric")).count() as u64;
    let per_series = metric_samples / SERIES;
    assert_eq!(
        metric_samples % SERIES,
        0,
        "every scrape has all 100 series"
    );
    assert!(
        per_series + 1 >= served && per_series <= served,
        "scrapes at the 429 receiver: {per_series}, served {served}"
    );
    assert!(
        retry_gap >= Duration::from_millis(900),
        "Retry-After: 1 not honoured: retried after {retry_gap:?}"
    );
    eprintln!(
        "e2e 429 then 204: {served} scrapes served, samples expected {} arrived {metric_samples} \
         (each once), first retry after {retry_gap:?}, {} requests",
        served * SERIES,
        reqs.len()
    );

    // 400: dropped and counted, never retried.
    let reqs = r400.requests();
    let sent = sample_counts(&reqs, 400);
    assert!(
        reqs.len() >= 2,
        "the 400 receiver saw {} requests; several batches expected",
        reqs.len()
    );
    assert!(
        sent.values().all(|&c| c == 1),
        "a sample sent twice after a 400: {:?}",
        sent.iter()
            .filter(|(_, &c)| c > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    // The agent keeps scraping, so batches may be answered between reading the receiver's
    // log and the counter: compare the two until they agree on the same moment.
    let count_400 = |reqs: &[(
        u16,
        std::time::Instant,
        agent::remote_write::proto::WriteRequest,
    )]|
     -> usize {
        reqs.iter()
            .map(|(_, _, r)| r.timeseries.iter().map(|t| t.samples.len()).sum::<usize>())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (failed, all_400) = loop {
        let before = count_400(&r400.requests());
        // By URL: on the embedded default (instance_mode shared) the remote_write is renamed
        // after its group.
        let failed = metric(
            &agent,
            "prometheus_remote_storage_samples_failed_total",
            &format!("url=\"{url400}\""),
        );
        let after = count_400(&r400.requests());
        if before == after && failed as usize == after {
            break (failed, after);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "failed counter {failed} never matched the samples answered 400 ({before}..{after})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(failed > 0.0, "samples_failed_total for {url400}: {failed}");
    assert!(all_400 > 0);
    assert!(
        reqs.len() as u64 <= 2 * served,
        "{} requests to the 400 receiver for {served} scrapes: a retry loop",
        reqs.len()
    );
    eprintln!(
        "e2e 400: {} requests carrying {all_400} samples, each sent once; \
         prometheus_remote_storage_samples_failed_total = {failed}",
        reqs.len()
    );
    stop(agent);
}

/// Shards that flush at different times (a batch goes when 100 samples are queued; the 100
/// series spread over 4 shards, ~4 scrapes per batch), then a SIGKILL with the receiver up.
/// With progress saved once a second as one mark for all shards, the agent resent whole
/// batches after the restart, Prometheus refused them (400 "out of order sample") and the
/// never-delivered samples of the last scrapes before the kill were dropped with them.
///
/// What is guaranteed (ARCHITECTURE.md, "Remote_write is at least once"): nothing is lost,
/// and what is sent again is at most a series' newest sample plus, per shard, what it
/// delivered after the progress file was last saved. The save follows every delivered batch
/// within milliseconds, but a SIGKILL can land in between (this test kills right after a
/// scrape, when the shards send): then that shard's batch is sent again, Prometheus refuses
/// the request, and the agent sends it again in halves until only the samples Prometheus
/// already has are refused (`e2e_sigkill_after_an_unacknowledged_partial_batch_loses_nothing`
/// makes that case certain). Here a batch is at most 100 samples of a shard, so at most 400
/// samples may be refused, and no sample may be missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigkill_with_shards_out_of_phase_loses_nothing() {
    install_crypto();
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_yaml(dir.path());
    let mut agent = start_agent(dir.path(), Some(&cfg));
    let queue = "    queue_config:\n      min_shards: 4\n      max_samples_per_send: 100\n      \
                 batch_send_deadline: 30s\n";
    put_config(
        &agent,
        "e2e-phase",
        &instance_yaml(&target.addr, &[&prom.write_url()], queue),
    )
    .await;
    scrapes(&target, 12).await;
    let progress = dir.path().join("wal/e2e-phase/remote_write/rw0");
    let marks = std::fs::read_to_string(&progress).unwrap_or_default();
    agent.kill();
    let killed_at = target.served();
    let agent = start_agent(dir.path(), Some(&cfg));
    wait_instance(&agent, "e2e-phase", true).await;
    scrapes(&target, 8).await;
    delete_config(&agent, "e2e-phase").await;
    let total = target.served();
    wait_settled(&prom).await;
    let got = received(&prom, &target.addr).await;
    let up = up(&prom).await;
    let rejected = prom.log().matches("Out of order sample").count();
    let may_miss = BTreeSet::from([killed_at, total]);
    let (expected, arrived) = check_series(&got, total, &may_miss, up)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path(), &prom)));
    let failed = metric(
        &agent,
        "prometheus_remote_storage_samples_failed_total",
        "rw0",
    );
    assert!(
        failed <= 400.0,
        "{failed} samples refused: more than the one batch per shard that can be delivered \
         between the last progress save and the kill\n{}",
        logs(dir.path(), &prom)
    );
    eprintln!(
        "e2e SIGKILL with shards out of phase: killed after scrape {killed_at} (progress file \
         {marks:?}); total {total} scrapes served, samples served {expected} arrived {arrived}, \
         {up:?}, samples refused {failed}, out-of-order requests {rejected}"
    );
    stop(agent);
}

/// A proxy in front of Prometheus that forwards every remote_write request and returns
/// Prometheus's answer, except the `hold`-th request carrying samples: forwarded (Prometheus
/// stores it) and then never answered, so the agent has its batch delivered but not
/// acknowledged, and cannot have saved progress past it, until it is killed. That is the
/// crash between "the receiver has it" and "the progress file says so", made certain.
#[derive(Clone)]
struct HoldingProxy {
    upstream: String,
    client: reqwest::Client,
    hold: usize,
    /// Every forwarded request carrying samples: Prometheus's status, and the request.
    forwarded: Arc<Mutex<Vec<(u16, WriteRequest)>>>,
    /// The held request, once forwarded and stored.
    held: Arc<Mutex<Option<WriteRequest>>>,
}

impl HoldingProxy {
    async fn serve(upstream: String, hold: usize) -> (HoldingProxy, String) {
        let proxy = HoldingProxy {
            upstream,
            client: reqwest::Client::new(),
            hold,
            forwarded: Arc::default(),
            held: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(hold_or_forward))
            .with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (proxy, format!("http://{addr}/api/v1/write"))
    }

    fn held(&self) -> Option<WriteRequest> {
        self.held.lock().unwrap().clone()
    }
}

async fn hold_or_forward(
    axum::extract::State(proxy): axum::extract::State<HoldingProxy>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req = WriteRequest::decode_snappy(&body).ok();
    let mut upstream = proxy.client.post(&proxy.upstream).body(body.to_vec());
    for (name, value) in &headers {
        if name.as_str().starts_with("content-") || name.as_str().starts_with("x-") {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let hold = match req {
        Some(r) if r.timeseries.iter().any(|t| !t.samples.is_empty()) => {
            let mut fwd = proxy.forwarded.lock().unwrap();
            fwd.push((status, r.clone()));
            let nth = fwd.iter().filter(|(s, _)| *s < 300).count();
            let hold = status < 300 && nth == proxy.hold && proxy.held().is_none();
            if hold {
                *proxy.held.lock().unwrap() = Some(r);
            }
            hold
        }
        _ => false,
    };
    if hold {
        // Stored at the receiver; the agent never hears so.
        std::future::pending::<()>().await;
    }
    (StatusCode::from_u16(status).unwrap(), text).into_response()
}

/// The samples of one request: (series labels, timestamp), NaN staleness markers left out.
fn samples_of(r: &WriteRequest) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for ts in &r.timeseries {
        let key: Vec<String> = ts
            .labels
            .iter()
            .map(|l| format!("{}={}", l.name, l.value))
            .collect();
        for s in &ts.samples {
            if !s.value.is_nan() {
                out.push((key.join(","), s.timestamp));
            }
        }
    }
    out
}

/// A SIGKILL right after a partial batch (sent at `batch_send_deadline`) reached Prometheus and
/// before the agent heard back (so before the progress file could record it), with more scrapes
/// committed behind it. After the restart the shard resends from its saved mark: the batch
/// Prometheus already has, then the scrapes it never got. Prometheus refuses a request holding
/// a sample older than its series' newest (400 "out of order sample") and rolls the whole
/// request back: sent as one request, the scrapes committed behind the held batch were lost
/// with it (every run of this test on main before the fix). Now a request refused with 400 in
/// the resend window after a start is split until only the samples the receiver already has
/// are refused: nothing may be missing, and exactly the resent samples older than their
/// series' newest at the receiver may be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigkill_after_an_unacknowledged_partial_batch_loses_nothing() {
    install_crypto();
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let target = Target::start().await;
    // The third batch is held: two acknowledged before it, so progress is on disk.
    let (proxy, url) = HoldingProxy::serve(prom.write_url(), 3).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_yaml(dir.path());
    let mut agent = start_agent(dir.path(), Some(&cfg));
    // One shard; batches of ~3 scrapes (315 samples) sent at the deadline, far below
    // max_samples_per_send: partial batches. remote_timeout outlasts the hold, so the held
    // batch is never retried before the kill.
    let queue = "    remote_timeout: 5m\n    queue_config:\n      min_shards: 1\n      \
                 max_shards: 1\n      max_samples_per_send: 2000\n      \
                 batch_send_deadline: 3s\n";
    put_config(
        &agent,
        "e2e-held",
        &instance_yaml(&target.addr, &[&url], queue),
    )
    .await;
    let held = wait_for(
        "the third batch forwarded and held",
        Duration::from_secs(60),
        || async { proxy.held() },
    )
    .await;
    // More scrapes committed behind the held batch, queued in the blocked shard.
    scrapes(&target, 4).await;
    let progress = dir.path().join("wal/e2e-held/remote_write/rw0");
    let marks = std::fs::read_to_string(&progress).unwrap_or_default();
    agent.kill();
    let killed_at = target.served();

    // What Prometheus has from before the kill, per series: the timestamps it stored.
    let before: Vec<(u16, WriteRequest)> = proxy.forwarded.lock().unwrap().clone();
    let mut stored: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut acknowledged_highest = i64::MIN;
    for (status, r) in &before {
        if *status >= 300 {
            continue;
        }
        let held_one = r == &held;
        for (series, t) in samples_of(r) {
            stored.entry(series).or_default().insert(t);
            if !held_one {
                acknowledged_highest = acknowledged_highest.max(t);
            }
        }
    }
    // The shard resumes after its mark (one millisecond before the highest acknowledged
    // timestamp): what it sends again that Prometheus holds, older than the series' newest
    // there, is refused however it is sent.
    let resent_stale: usize = stored
        .values()
        .map(|ts| {
            let newest = *ts.iter().next_back().unwrap();
            ts.iter()
                .filter(|&&t| t >= acknowledged_highest && t < newest)
                .count()
        })
        .sum();
    let held_scrapes = samples_of(&held)
        .iter()
        .map(|(_, t)| *t)
        .collect::<BTreeSet<_>>()
        .len();

    let agent = start_agent(dir.path(), Some(&cfg));
    wait_instance(&agent, "e2e-held", true).await;
    // Logged once the shard sent a batch of new scrapes only, not at the stop.
    let resend_line = tokio::task::block_in_place(|| {
        agent.wait_log("resend after the start", Duration::from_secs(60))
    });
    scrapes(&target, 6).await;
    delete_config(&agent, "e2e-held").await;
    let total = target.served();
    wait_settled(&prom).await;
    let got = received(&prom, &target.addr).await;
    let up = up(&prom).await;
    let rejected = prom.log().matches("Out of order sample").count();
    let may_miss = BTreeSet::from([killed_at, total]);
    let (expected, arrived) = check_series(&got, total, &may_miss, up).unwrap_or_else(|e| {
        panic!(
            "{e}\n(the held batch had {held_scrapes} scrapes; progress file at the kill \
             {marks:?})\n{}",
            logs(dir.path(), &prom)
        )
    });
    let failed = metric(
        &agent,
        "prometheus_remote_storage_samples_failed_total",
        "rw0",
    );
    let split = metric(
        &agent,
        "agent_remote_write_resend_split_requests_total",
        "rw0",
    );
    let after: Vec<(u16, WriteRequest)> = proxy.forwarded.lock().unwrap()[before.len()..].to_vec();
    let refused_requests = after.iter().filter(|(s, _)| *s == 400).count();
    assert!(
        resent_stale > 0 && held_scrapes >= 2,
        "the held batch should hold several scrapes, resent below their series' newest: \
         {held_scrapes} scrapes, {resent_stale} stale"
    );
    assert_eq!(
        failed as usize,
        resent_stale,
        "refused samples: only those Prometheus already had, older than its newest\n{}",
        logs(dir.path(), &prom)
    );
    assert!(split > 0.0, "no request was split");
    let log = agent.log();
    assert_eq!(
        log.matches("resend after the start").count(),
        1,
        "the restart's resend is logged once:\n{log}"
    );
    eprintln!(
        "e2e SIGKILL after an unacknowledged partial batch: held batch of {held_scrapes} \
         scrapes, killed after scrape {killed_at} (progress file {marks:?}); total {total} \
         scrapes served, samples served {expected} arrived {arrived}, {up:?}; after the \
         restart {} requests, {refused_requests} refused (400), {split} split requests, \
         {failed} samples refused (all already at the receiver), Prometheus logged \
         {rejected} out-of-order samples; logged: {resend_line}",
        after.len()
    );
    println!(
        "RELIABILITY sigkill_unacked_partial_batch_samples_lost={} \
         sigkill_unacked_partial_batch_split_requests={split}",
        expected
            .saturating_sub(arrived)
            .saturating_sub(SERIES * (up.failed as u64 + 2)),
    );
    stop(agent);
}

/// Exemplars, metadata and oauth2, end to end (they reuse this module's agent helpers).
mod extras;
