//! Series identity: two different label sets are two series everywhere, whatever their hashes.
//!
//! `label_sets_with_equal_fnv_hashes_both_reach_prometheus` runs an agent process on a target
//! exposing two label sets that collide under 64-bit FNV-1a over `name 0xff value 0xff ...`
//! (the label hash agentctl used before): the two values of `A` below make the hash state equal
//! after the first label, and `A` sorts before every other label, so the whole sets collide
//! whatever the target's labels are. Found with a distinguished-point collision search.
//!
//! `injected_colliding_hasher_keeps_every_series_apart_end_to_end` runs the real pipeline in
//! this process (scrape processors, the instance's WAL storage on disk, the WAL watcher, the
//! remote_write queue) into a real Prometheus, with a hasher under which every label set and
//! every series text has the same hash: each series must arrive with exactly its own samples,
//! also after a restart (replay of the WAL, the watcher resuming from its progress file), and
//! `wal inspect` must not count a label set twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::config::load::parse_instance;
use agent::config::GlobalConfig;
use agent::instance::storage::WalStorage;
use agent::labels::{Hasher, Labels};
use agent::remote_write::{QueueManager, RemoteWriteMetrics};
use agent::scrape::parse::Format;
use agent::scrape::scrape_loop::ScrapeProcessor;
use agent::wal::{inspect, Wal, WalOptions};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::support::agent::Agent;
use crate::support::prometheus::Prometheus;

/// Two values of a label `A` with `fnv1a64("A\xff" + value + "\xff")` equal.
const FNV_COLLISION: [&str; 2] = ["fa751f59bf01239a", "952fb63910efcc4d"];

/// The FNV-1a 64 of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn the_fnv_collision_holds() {
    let stream = |v: &str| {
        let mut b = b"A\xff".to_vec();
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(
            b"\xff__name__\xffcollide_metric\xffinstance\xff127.0.0.1:1\xffjob\xffj\xff",
        );
        fnv1a64(&b)
    };
    assert_eq!(stream(FNV_COLLISION[0]), stream(FNV_COLLISION[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_with_equal_fnv_hashes_both_reach_prometheus() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    // The target: the two series, each with a value of its own family (1000 + n, 2000 + n at
    // the n-th scrape), so a sample written under the other's labels shows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = scrapes.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                format!(
                    "# TYPE collide_metric gauge\ncollide_metric{{A=\"{}\"}} {}\ncollide_metric{{A=\"{}\"}} {}\n",
                    FNV_COLLISION[0],
                    1000 + n,
                    FNV_COLLISION[1],
                    2000 + n
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "metrics:\n  wal_directory: {}\n  scraping_service:\n    enabled: true\n",
        dir.path().join("wal").display()
    );
    let agent = tokio::task::block_in_place(|| Agent::builder(dir.path()).config(&config).start());
    let instance = format!(
        "scrape_configs:\n  - job_name: collide\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: ['{target}']\nremote_write:\n  - url: {}\n    \
         queue_config:\n      batch_send_deadline: 1s\n",
        prom.write_url()
    );
    let put = tokio::task::block_in_place(|| agent.put_config("collide", &instance));
    assert!(put.status == 200 || put.status == 201, "{put:?}");

    // Both series, each with only values of its own family, at least 3 scrapes each.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeMap<String, Vec<f64>> = prom
            .query_samples("collide_metric[10m]")
            .await
            .into_iter()
            .map(|(l, vs)| (l["A"].clone(), vs.into_iter().map(|(_, v)| v).collect()))
            .collect();
        let family = |a: &str, base: f64| {
            got.get(a).is_some_and(|vs| {
                vs.len() >= 3 && vs.iter().all(|v| (base..base + 1000.0).contains(v))
            })
        };
        if family(FNV_COLLISION[0], 1000.0) && family(FNV_COLLISION[1], 2000.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both series with their own values within 60 s; Prometheus has {got:?}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const PER_TARGET: u64 = 30;
const SCRAPES: i64 = 6;

fn queue(url: &str) -> Arc<QueueManager> {
    let metrics = RemoteWriteMetrics::register(&mut Registry::default());
    crate::support::remote_write_queue("series", url, 100, &metrics)
}

/// One target's body at scrape `k`: series `i` has the value `k * 1000 + i`. Some texts name
/// their labels out of order, one value is escaped, and `collide_info` relabels nothing.
fn body(target: u64, k: i64) -> String {
    let mut b = String::from("# TYPE collide_metric gauge\n");
    for i in 0..PER_TARGET {
        let v = k * 1000 + i as i64;
        if i % 3 == 0 {
            b.push_str(&format!(
                "collide_metric{{z=\"t{target}\",i=\"{i}\"}} {v}\n"
            ));
        } else if i == 1 {
            b.push_str(&format!(
                "collide_metric{{i=\"{i}\",path=\"a\\\"b\",z=\"t{target}\"}} {v}\n"
            ));
        } else {
            b.push_str(&format!(
                "collide_metric{{i=\"{i}\",z=\"t{target}\"}} {v}\n"
            ));
        }
    }
    b
}

fn processors(hasher: Hasher) -> Vec<ScrapeProcessor> {
    let yaml = "scrape_configs:\n  - job_name: collide\n    static_configs: [{targets: ['a:1']}]\n";
    let (_, cfg) = parse_instance(yaml, &GlobalConfig::default()).unwrap();
    let cfg = Arc::new(cfg.scrape_configs.into_iter().next().unwrap());
    (0..2u64)
        .map(|t| {
            let target = Labels::from_pairs([
                ("job", "collide"),
                ("instance", format!("host{t}:9100").as_str()),
            ]);
            ScrapeProcessor::new(cfg.clone(), target, hasher)
        })
        .collect()
}

fn scrape(storage: &WalStorage, ps: &mut [ScrapeProcessor], base: i64, ks: std::ops::Range<i64>) {
    for k in ks {
        for (t, p) in ps.iter_mut().enumerate() {
            let b = body(t as u64, k);
            p.append_scrape(
                storage,
                Ok((b.as_bytes(), Format::PrometheusText)),
                base + k * 1000,
                Duration::from_millis(1),
            )
            .expect("scrape appended");
        }
    }
}

/// Every series at the receiver, by `(instance, i)`: its `(t, value)` samples.
async fn received(prom: &Prometheus) -> Series {
    prom.query_samples("collide_metric[1h]")
        .await
        .into_iter()
        .map(|(l, vs)| {
            let key = (l["instance"].clone(), l["i"].clone());
            let vs = vs
                .into_iter()
                .map(|(t, v)| ((t * 1000.0).round() as i64, v))
                .collect();
            (key, vs)
        })
        .collect()
}

type Series = BTreeMap<(String, String), Vec<(i64, f64)>>;

/// Waits until the receiver holds exactly `want`; panics with the differences after 60 s.
async fn wait_for(prom: &Prometheus, want: &Series, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = received(prom).await;
        if got == *want {
            return;
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            let wrong: Vec<_> = got
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .take(3)
                .collect();
            panic!(
                "{what}: {} series at the receiver, {} expected; missing {missing:?}; \
                 wrong samples (first 3): {wrong:?}",
                got.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn expected(base: i64, ks: std::ops::Range<i64>) -> Series {
    let mut m = BTreeMap::new();
    for t in 0..2u64 {
        for i in 0..PER_TARGET {
            let v: Vec<(i64, f64)> = ks
                .clone()
                .map(|k| (base + k * 1000, (k * 1000 + i as i64) as f64))
                .collect();
            m.insert((format!("host{t}:9100"), i.to_string()), v);
        }
    }
    m
}

struct Running {
    queue: Arc<QueueManager>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start_watcher(dir: &Path, storage: &WalStorage, prom: &Prometheus) -> Running {
    let queue = queue(&prom.write_url());
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent::remote_write::watcher::run(
        dir.join("wal"),
        queue.clone(),
        dir.join("remote_write").join("series"),
        storage.commits(),
        Some(agent::remote_write::watcher::FromWriter {
            shared: storage.shared_labels(),
            dropped: storage.dropped_series(),
        }),
        stop.clone(),
    ));
    Running { queue, stop, task }
}

async fn stop_watcher(dir: &Path, r: Running) {
    r.stop.cancel();
    r.task.await.unwrap();
    r.queue
        .flush(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    agent::remote_write::watcher::save_progress(
        &r.queue,
        &dir.join("remote_write").join("series"),
        true,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_colliding_hasher_keeps_every_series_apart_end_to_end() {
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    // Every label set and every series text hashes to 0.
    let collide = Hasher::with_bits(0x5eed, 0);
    let base = agent::clock::Clock::system().unix_millis() - 120_000;

    let (wal, replay) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let storage = WalStorage::with_hasher("series", wal, &replay, collide);
    let running = start_watcher(dir.path(), &storage, &prom);
    let mut ps = processors(collide);
    scrape(&storage, &mut ps, base, 0..SCRAPES);
    wait_for(
        &prom,
        &expected(base, 0..SCRAPES),
        "every series with exactly its own samples",
    )
    .await;
    assert_eq!(storage.series_count(), 2 * (PER_TARGET as usize + 5));
    for p in &ps {
        assert_eq!(p.cache().series(), PER_TARGET as usize);
    }

    // Restart: the WAL is replayed into a new table (same hasher), the targets are scraped
    // again, the watcher resumes from its progress file.
    stop_watcher(dir.path(), running).await;
    drop(ps);
    drop(storage);
    let (wal, replay) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let storage = WalStorage::with_hasher("series", wal, &replay, collide);
    assert_eq!(storage.series_count(), 2 * (PER_TARGET as usize + 5));
    let running = start_watcher(dir.path(), &storage, &prom);
    let mut ps = processors(collide);
    scrape(&storage, &mut ps, base, SCRAPES..2 * SCRAPES);
    wait_for(
        &prom,
        &expected(base, 0..2 * SCRAPES),
        "after the restart too, nothing mixed, lost or doubled",
    )
    .await;
    stop_watcher(dir.path(), running).await;
    storage.sync().unwrap();

    // Each label set was logged once (the restart found every series again by its labels).
    let st = inspect::stats(&wal_dir, &inspect::StatsOptions::default()).unwrap();
    assert_eq!(st.hash_collisions, 0);
    assert_eq!(st.total_series, 2 * (PER_TARGET + 5));
    let targets: BTreeSet<String> = st.targets.iter().map(|t| t.instance.clone()).collect();
    assert_eq!(targets.len(), 2);
}
