//! The scrape manager and loops against real HTTP targets on 127.0.0.1, appending into the
//! in-memory storage.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::config::load::parse_instance;
use agent::config::scrape::ScrapeConfig;
use agent::config::GlobalConfig;
use agent::labels::Labels;
use agent::scrape::appender::{is_stale_nan, MemoryStorage};
use agent::scrape::manager::{ScrapeManager, TargetInfo};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// What a target returns for its n-th request (0-based).
type Reply = Arc<dyn Fn(usize) -> Response + Send + Sync>;

/// A target on 127.0.0.1:0 serving `/metrics` with `reply`, recording request headers.
struct TestTarget {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<HeaderMap>>>,
    stop: CancellationToken,
}

impl TestTarget {
    async fn start(reply: Reply) -> Self {
        let requests: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let seen = seen.clone();
                let reply = reply.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.push(headers);
                        s.len() - 1
                    };
                    reply(n)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        TestTarget {
            addr,
            requests,
            stop,
        }
    }

    fn hits(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn text(body: &'static str) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

fn jobs(yaml: &str) -> Vec<ScrapeConfig> {
    let (_, cfg) = parse_instance(yaml, &GlobalConfig::default()).expect("valid config");
    cfg.scrape_configs
}

fn job(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let targets: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "  - job_name: {name}\n    scrape_interval: 200ms\n    scrape_timeout: 150ms\n    static_configs: [{{targets: [{}]}}]\n{extra}",
        targets.join(", ")
    )
}

fn manager(storage: &MemoryStorage) -> ScrapeManager {
    ScrapeManager::new("inst", Arc::new(storage.clone()), None)
}

fn series(job: &str, addr: SocketAddr, name: &str, extra: &[(&str, &str)]) -> Labels {
    let a = addr.to_string();
    let mut pairs = vec![("__name__", name), ("job", job), ("instance", a.as_str())];
    pairs.extend_from_slice(extra);
    Labels::from_pairs(pairs)
}

/// Values of a series, staleness markers as `None`.
fn values(s: &MemoryStorage, l: &Labels) -> Vec<Option<f64>> {
    s.samples_of(l)
        .into_iter()
        .map(|(_, v)| (!is_stale_nan(v)).then_some(v))
        .collect()
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn target(ts: &[TargetInfo], addr: SocketAddr) -> &TargetInfo {
    let a = addr.to_string();
    ts.iter()
        .find(|t| t.labels.get("instance") == Some(&a))
        .unwrap_or_else(|| panic!("no target {a} in {ts:?}"))
}

#[tokio::test]
async fn changing_exposition_staleness_headers_and_one_up_per_scrape() {
    let t = TestTarget::start(Arc::new(|n| {
        if n == 0 {
            text("a 1\nb 1\n")
        } else {
            text("a 2\n")
        }
    }))
    .await;
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    m.apply(&jobs(&format!(
        "scrape_configs:\n{}",
        job("j", &[t.addr], "")
    )))
    .await
    .unwrap();
    wait_until("3 scrapes", Duration::from_secs(30), || t.hits() >= 3).await;
    let info = m.targets();
    assert_eq!(info.len(), 1);
    let ti = &info[0];
    assert_eq!(
        (ti.instance.as_str(), ti.target_group.as_str()),
        ("inst", "j")
    );
    assert_eq!(ti.endpoint, format!("http://{}/metrics", t.addr));
    assert_eq!(ti.state, "up");
    assert_eq!(ti.scrape_error, "");
    assert!(ti.last_scrape.ends_with('Z') && !ti.last_scrape.starts_with("0001"));
    m.stop(true).await;

    let up = values(&storage, &series("j", t.addr, "up", &[]));
    let scrapes = storage.commits() as usize - 1; // the last commit is the end-of-run markers
    assert_eq!(
        up.len(),
        scrapes + 1,
        "one up per scrape plus its marker: {up:?}"
    );
    assert!(up[..scrapes].iter().all(|v| *v == Some(1.0)));
    assert_eq!(up[scrapes], None);
    let ups = storage.samples_of(&series("j", t.addr, "up", &[]));
    assert!(
        ups.windows(2).all(|w| w[0].0 < w[1].0),
        "increasing timestamps"
    );

    assert_eq!(
        values(&storage, &series("j", t.addr, "b", &[])),
        vec![Some(1.0), None],
        "b vanished in the second scrape: one marker"
    );
    let a = values(&storage, &series("j", t.addr, "a", &[]));
    assert_eq!(a.first(), Some(&Some(1.0)));
    assert_eq!(a.last(), Some(&None));
    assert!(a[1..a.len() - 1].iter().all(|v| *v == Some(2.0)));

    let h = t.requests.lock().unwrap()[0].clone();
    assert_eq!(
        h["accept"],
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    );
    assert_eq!(h["x-prometheus-scrape-timeout-seconds"], "0.15");
    assert!(h["accept-encoding"].to_str().unwrap().contains("gzip"));
}

#[tokio::test]
async fn gzip_openmetrics_and_disabled_compression() {
    let t = TestTarget::start(Arc::new(|_| {
        let body = "# TYPE c counter\nc_total{k=\"v\"} 7 1700000000.5\n# EOF\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        (
            [
                (
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                ("content-encoding", "gzip"),
            ],
            bytes,
        )
            .into_response()
    }))
    .await;
    let plain = TestTarget::start(Arc::new(|_| text("p 1\n"))).await;
    // gzip although the scrape asked for `identity` (a proxy or an exporter that always
    // compresses): decoded by its Content-Encoding, as Prometheus decodes it whatever
    // enable_compression says.
    let unasked = TestTarget::start(Arc::new(|_| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"unasked_total 3\n").unwrap();
        (
            [
                ("content-type", "text/plain; version=0.0.4"),
                ("content-encoding", "gzip"),
            ],
            gz.finish().unwrap(),
        )
            .into_response()
    }))
    .await;
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    m.apply(&jobs(&format!(
        "scrape_configs:\n{}{}{}",
        job("gz", &[t.addr], ""),
        job(
            "plain",
            &[plain.addr],
            "    enable_compression: false\n    scrape_protocols: [PrometheusText0.0.4, PrometheusProto, OpenMetricsText1.0.0]\n"
        ),
        job("unasked", &[unasked.addr], "    enable_compression: false\n")
    )))
    .await
    .unwrap();
    wait_until("scrapes", Duration::from_secs(30), || {
        t.hits() >= 2 && plain.hits() >= 2 && unasked.hits() >= 2
    })
    .await;
    let unasked_target = target(&m.targets(), unasked.addr).clone();
    m.stop(false).await;
    let c = storage.samples_of(&series("gz", t.addr, "c_total", &[("k", "v")]));
    assert!(!c.is_empty());
    assert!(
        c.iter().all(|&(ts, v)| ts == 1_700_000_000_500 && v == 7.0),
        "honored OpenMetrics timestamp: {c:?}"
    );
    assert!(values(&storage, &series("gz", t.addr, "up", &[]))
        .iter()
        .all(|v| *v == Some(1.0)));
    let h = plain.requests.lock().unwrap()[0].clone();
    assert_eq!(h["accept-encoding"], "identity");
    // scrape_protocols, weighted as Prometheus 2.49 does; the protobuf format is not asked for.
    assert_eq!(
        h["accept"],
        "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.3,*/*;q=0.2"
    );
    assert!(!values(&storage, &series("plain", plain.addr, "p", &[])).is_empty());
    assert_eq!(
        unasked.requests.lock().unwrap()[0]["accept-encoding"],
        "identity"
    );
    assert_eq!(
        (unasked_target.state, unasked_target.scrape_error.as_str()),
        ("up", ""),
        "{unasked_target:?}"
    );
    let u = values(
        &storage,
        &series("unasked", unasked.addr, "unasked_total", &[]),
    );
    assert!(!u.is_empty() && u.iter().all(|v| *v == Some(3.0)), "{u:?}");
}

#[tokio::test]
async fn slow_target_times_out_and_large_body_is_refused() {
    // Answers after 600 ms; the scrape timeout is 150 ms.
    let slow_addr = {
        let app = axum::Router::new().route(
            "/metrics",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                text("late 1\n")
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    };
    let big = TestTarget::start(Arc::new(|_| {
        let mut s = String::new();
        for i in 0..500 {
            s.push_str(&format!("big_series_{i} {i}\n"));
        }
        ([("content-type", "text/plain")], s).into_response()
    }))
    .await;
    // The limit counts decoded bytes: ~60 bytes of gzip that decode to 3,000.
    let bomb = TestTarget::start(Arc::new(|_| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all("big_series_z 1\n".repeat(200).as_bytes())
            .unwrap();
        let bytes = gz.finish().unwrap();
        assert!(bytes.len() < 1024, "{}", bytes.len());
        (
            [("content-type", "text/plain"), ("content-encoding", "gzip")],
            bytes,
        )
            .into_response()
    }))
    .await;
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    m.apply(&jobs(&format!(
        "scrape_configs:\n{}{}{}",
        job("slow", &[slow_addr], ""),
        job("big", &[big.addr], "    body_size_limit: 1KB\n"),
        job("bomb", &[bomb.addr], "    body_size_limit: 1KB\n")
    )))
    .await
    .unwrap();
    wait_until("all three scraped", Duration::from_secs(30), || {
        let ts = m.targets();
        ts.len() == 3 && ts.iter().all(|t| t.state != "unknown")
    })
    .await;
    let ts = m.targets();
    let s = target(&ts, slow_addr);
    assert_eq!(s.state, "down");
    assert!(
        s.scrape_error.contains("context deadline exceeded"),
        "{}",
        s.scrape_error
    );
    let b = target(&ts, big.addr);
    assert_eq!(b.state, "down");
    assert_eq!(
        b.scrape_error,
        "body size limit exceeded (body_size_limit: 1024 bytes)"
    );
    let z = target(&ts, bomb.addr);
    assert_eq!(z.state, "down");
    assert_eq!(
        z.scrape_error,
        "body size limit exceeded (body_size_limit: 1024 bytes)"
    );
    m.stop(true).await;
    assert!(storage.samples_named("late").is_empty());
    assert!(storage
        .samples()
        .iter()
        .all(|(l, _, _)| !l.get("__name__").unwrap_or("").starts_with("big_series")));
    let up = values(&storage, &series("big", big.addr, "up", &[]));
    assert!(up.len() >= 2);
    assert!(up[..up.len() - 1].iter().all(|v| *v == Some(0.0)));
}

#[tokio::test]
async fn server_error_and_target_limit() {
    let err = TestTarget::start(Arc::new(|_| {
        (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
    }))
    .await;
    let a = TestTarget::start(Arc::new(|_| text("x 1\n"))).await;
    let b = TestTarget::start(Arc::new(|_| text("x 1\n"))).await;
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    m.apply(&jobs(&format!(
        "scrape_configs:\n{}{}",
        job("e", &[err.addr], ""),
        job("lim", &[a.addr, b.addr], "    target_limit: 1\n")
    )))
    .await
    .unwrap();
    wait_until("all scraped", Duration::from_secs(30), || {
        let ts = m.targets();
        ts.len() == 3 && ts.iter().all(|t| t.state != "unknown")
    })
    .await;
    let ts = m.targets();
    assert_eq!(
        target(&ts, err.addr).scrape_error,
        "server returned HTTP status 500 Internal Server Error"
    );
    for addr in [a.addr, b.addr] {
        assert_eq!(
            target(&ts, addr).scrape_error,
            "target_limit exceeded (number of targets: 2, limit: 1)"
        );
    }
    assert_eq!(
        a.hits() + b.hits(),
        0,
        "targets over the limit are not contacted"
    );
    // Sorted by job then instance.
    let groups: Vec<&str> = ts.iter().map(|t| t.target_group.as_str()).collect();
    assert_eq!(groups, ["e", "lim", "lim"]);
    m.stop(false).await;
}

#[tokio::test]
async fn file_sd_adds_and_removes_targets_while_running() {
    let a = TestTarget::start(Arc::new(|_| text("m{s=\"a\"} 1\n"))).await;
    let b = TestTarget::start(Arc::new(|_| text("m{s=\"b\"} 1\n"))).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.json");
    let write = |addrs: &[SocketAddr]| {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        let tmp = dir.path().join("t.tmp");
        std::fs::write(&tmp, format!("[{{\"targets\":[{}]}}]", list.join(","))).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
    };
    write(&[a.addr]);
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    let yaml = format!(
        "scrape_configs:\n  - job_name: f\n    scrape_interval: 200ms\n    scrape_timeout: 150ms\n    file_sd_configs:\n      - files: ['{}/*.json']\n        refresh_interval: 1s\n",
        dir.path().display()
    );
    let cfgs = jobs(&yaml);
    m.apply(&cfgs).await.unwrap();
    wait_until("a scraped", Duration::from_secs(30), || a.hits() >= 2).await;

    write(&[a.addr, b.addr]);
    wait_until("b scraped", Duration::from_secs(30), || b.hits() >= 2).await;
    assert_eq!(m.targets().len(), 2);

    // Re-applying the same config keeps the loops (no markers, scraping goes on).
    let before = storage.samples().len();
    m.apply(&cfgs).await.unwrap();
    assert_eq!(m.targets().len(), 2);

    write(&[b.addr]);
    wait_until("a removed", Duration::from_secs(30), || {
        m.targets().len() == 1
    })
    .await;
    let a_up = series("f", a.addr, "up", &[]);
    wait_until("a's markers", Duration::from_secs(30), || {
        values(&storage, &a_up).last() == Some(&None)
    })
    .await;
    let a_m = values(&storage, &series("f", a.addr, "m", &[("s", "a")]));
    assert_eq!(a_m.last(), Some(&None), "a's series marked stale");
    assert_eq!(
        a_m.iter().filter(|v| v.is_none()).count(),
        1,
        "exactly one marker: {a_m:?}"
    );
    // b is scraped twice more (400 ms at its interval) and a never again.
    let (hits, b_hits) = (a.hits(), b.hits());
    wait_until("b scraped twice more", Duration::from_secs(30), || {
        b.hits() >= b_hits + 2
    })
    .await;
    assert_eq!(a.hits(), hits, "a's loop stopped");
    assert!(storage.samples().len() > before);

    // The instance moves away: no markers for b.
    m.stop(false).await;
    let b_m = values(&storage, &series("f", b.addr, "m", &[("s", "b")]));
    assert!(b_m.iter().all(|v| v.is_some()), "{b_m:?}");
}

#[tokio::test]
async fn changed_job_config_restarts_only_that_job() {
    let a = TestTarget::start(Arc::new(|_| text("x 1\n"))).await;
    let b = TestTarget::start(Arc::new(|_| text("y 1\n"))).await;
    let storage = MemoryStorage::new();
    let m = manager(&storage);
    let v1 = format!(
        "scrape_configs:\n{}{}",
        job("a", &[a.addr], ""),
        job("b", &[b.addr], "")
    );
    m.apply(&jobs(&v1)).await.unwrap();
    wait_until("scraped", Duration::from_secs(30), || {
        a.hits() >= 2 && b.hits() >= 2
    })
    .await;
    let v2 = format!(
        "scrape_configs:\n{}{}",
        job("a", &[a.addr], ""),
        job("b", &[b.addr], "    honor_labels: true\n")
    );
    m.apply(&jobs(&v2)).await.unwrap();
    // b's loop was restarted (end-of-run markers), a's kept running untouched.
    assert!(values(&storage, &series("b", b.addr, "y", &[])).contains(&None));
    assert!(values(&storage, &series("a", a.addr, "x", &[]))
        .iter()
        .all(|v| v.is_some()));
    m.stop(true).await;
}

/// The first scrape waits for the target's slot (Prometheus's offset from the target's hash)
/// instead of happening at once, and a loop started again (as when a config moves to another
/// agent) waits for the next slot too; the recorded timestamps are on the target's phase.
///
/// Only what a loaded machine cannot disturb is asserted on the real clock: no first scrape
/// before its slot, timestamps that only grow, and the phase of the timestamps (the earliest
/// relative to its slot, exact when a timer fired on time). How late a scrape may come is the
/// machine's; the exact schedule (every timestamp its slot, a late wake-up delaying only its
/// own scrape) is asserted on tokio's paused clock in the scrape loop's unit tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_keep_the_target_phase_across_restarts() {
    let clock = agent::clock::Clock::system();
    let arrivals: Arc<Mutex<Vec<std::time::SystemTime>>> = Arc::default();
    let rec = arrivals.clone();
    let t = TestTarget::start(Arc::new(move |_| {
        rec.lock().unwrap().push(clock.now());
        text("x 1\n")
    }))
    .await;
    let cfgs = jobs(&format!(
        "scrape_configs:\n  - job_name: phase\n    scrape_interval: 2s\n    scrape_timeout: 1s\n    static_configs: [{{targets: ['{}']}}]\n",
        t.addr
    ));
    let addr = t.addr.to_string();
    let target = agent::scrape::target::populate_labels(
        &Labels::empty(),
        &Labels::from_pairs([("__address__", addr.as_str())]),
        &cfgs[0],
        false,
    )
    .unwrap()
    .unwrap();
    let iv = Duration::from_secs(2).as_nanos() as i128;
    let phase = i128::from(target.scrape_hash()) % iv;
    let ms = 1_000_000i128;
    // How long after the target's slot a time is, in ns (a time just before a slot reads as
    // almost an interval late).
    let since_slot = |ns: i128| (ns - phase).rem_euclid(iv);
    let early = 50 * ms;
    let storage = MemoryStorage::new();
    for want in [3, 2] {
        let before = arrivals.lock().unwrap().len();
        let started = agent::clock::unix_nanos(clock.now());
        let m = manager(&storage);
        m.apply(&cfgs).await.unwrap();
        wait_until("scrapes", Duration::from_secs(15), || {
            arrivals.lock().unwrap().len() >= before + want
        })
        .await;
        m.stop(false).await;
        // Not at once: the first scrape waits for the next slot.
        let first = agent::clock::unix_nanos(arrivals.lock().unwrap()[before]);
        let to_slot = (iv - since_slot(started)) % iv;
        assert!(
            first - started + early >= to_slot,
            "first scrape after {} ms, the target's slot was {} ms away",
            (first - started) / ms,
            to_slot / ms
        );
    }
    let stamps: Vec<i64> = storage
        .samples_of(&series("phase", t.addr, "up", &[]))
        .iter()
        .map(|(t, _)| *t)
        .collect();
    // (The last scrape of each run may be cut short by the stop, its samples not committed.)
    assert!(stamps.len() >= 3, "{stamps:?}");
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps only grow: {stamps:?}"
    );
    // A timestamp is in whole ms: one within 1 ms before a slot is that slot, exactly.
    let late = |t: i64| {
        let d = since_slot(i128::from(t) * ms);
        if d > iv - ms {
            d - iv
        } else {
            d
        }
    };
    let earliest = stamps.iter().map(|t| late(*t)).min().unwrap();
    assert!(
        earliest < iv / 4,
        "no timestamp on the target's phase: the earliest is {} ms after its slot ({stamps:?})",
        earliest / ms
    );
}
