//! Heap bytes held per active series, by component, after one scrape of `TARGETS` targets of
//! `PER_TARGET` distinct series each (about 120 bytes of series text per series, like the
//! harness's targets):
//!
//! - the scrape cache (a `ScrapeProcessor` scraping into a no-op storage);
//! - the WAL side (`WalStorage` + `Wal`: the ref maps, plus the WAL's buffers, which the
//!   large series count amortises);
//! - the remote-write series table (`QueueManager::store_series` with the series as the WAL
//!   watcher hands them over).
//!
//! Counted with a counting global allocator (deterministic; RSS adds allocator slack and
//! per-sample queues on top). Run: `cargo bench -p agentctl-agent --bench memory`; it also
//! runs in `cargo test --benches`.

use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent::config::load::parse_instance;
use agent::config::GlobalConfig;
use agent::relabel::Labels;
use agent::remote_write::proto::Label;
use agent::remote_write::{
    ClientSettings, QueueManager, QueueSettings, RemoteClient, RemoteWriteMetrics,
};
use agent::scrape::appender::{AppendError, Appender, SeriesRef, Storage};
use agent::scrape::parse::Format;
use agent::scrape::scrape_loop::ScrapeProcessor;
use agent::wal::{Wal, WalOptions};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TARGETS: usize = 20;
const PER_TARGET: usize = 1000;
const SERIES: usize = TARGETS * PER_TARGET;

fn body() -> String {
    let mut out = String::new();
    for f in 0..20 {
        out.push_str(&format!("# TYPE bench_metric_family_{f}_total counter\n"));
        for i in 0..PER_TARGET / 20 {
            out.push_str(&format!(
                "bench_metric_family_{f}_total{{job=\"bench\",region=\"eu-west-{}\",pod=\"app-{:05}\",method=\"{}\",code=\"{}\",series=\"{i:06}\"}} {}\n",
                i % 3,
                i % 1000,
                ["GET", "POST"][i % 2],
                ["200", "404", "500"][i % 3],
                i * 7
            ));
        }
    }
    out
}

#[derive(Default)]
struct NoopAppender {
    next: SeriesRef,
}

impl Appender for NoopAppender {
    fn new_series(&mut self, _labels: &Labels) -> SeriesRef {
        self.next += 1;
        self.next
    }
    fn append(&mut self, _r: SeriesRef, _t_ms: i64, _v: f64) {}
    fn commit(&mut self) -> Result<(), AppendError> {
        Ok(())
    }
    fn rollback(&mut self) {}
}

struct NoopStorage;

impl Storage for NoopStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(NoopAppender::default())
    }
}

fn processor(target: usize) -> ScrapeProcessor {
    let yaml = "scrape_configs:\n  - job_name: bench\n    static_configs: [{targets: ['10.0.0.1:9100']}]\n";
    let (_, cfg) = parse_instance(yaml, &GlobalConfig::default()).expect("valid bench config");
    let cfg = cfg.scrape_configs.into_iter().next().expect("one job");
    ScrapeProcessor::new(
        Arc::new(cfg),
        Labels::from_pairs([
            ("job", "bench".to_owned()),
            (
                "instance",
                format!("10.0.{}.{}:9100", target / 250, target % 250),
            ),
        ]),
    )
}

/// Bytes still held since the region started (stats_alloc already counts a growing realloc
/// in `bytes_allocated` and a shrinking one in `bytes_deallocated`).
fn held(r: &Region<'_, System>) -> isize {
    let s = r.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

fn per_series(bytes: isize) -> f64 {
    bytes as f64 / SERIES as f64
}

fn main() {
    let body = body();
    let text_per_series = body.len() as f64 / PER_TARGET as f64;

    // Scrape cache.
    let scrape_all = |storage: &dyn Storage| -> Vec<ScrapeProcessor> {
        (0..TARGETS)
            .map(|t| {
                let mut p = processor(t);
                let r = p.append_scrape(
                    storage,
                    Ok((body.as_bytes(), Format::PrometheusText)),
                    1,
                    Duration::from_millis(1),
                );
                assert!(r.is_ok(), "bench body must scrape cleanly");
                p
            })
            .collect()
    };
    let region = Region::new(GLOBAL);
    let p = scrape_all(&NoopStorage);
    let cache = held(&region);
    drop(p);

    // WAL side: a second processor writing to a real WAL; its cache is subtracted.
    let dir = tempfile::tempdir().expect("temp dir");
    let region = Region::new(GLOBAL);
    let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).expect("open WAL");
    let storage = agent::instance::storage::WalStorage::new("bench", wal, &replay.series);
    let p = scrape_all(&storage);
    let wal_side = held(&region) - cache;
    storage.with_wal(|w| w.sync()).expect("sync WAL");
    drop(p);
    drop(storage);

    // Remote-write table, fed what the watcher reads from the WAL.
    let (_, replay) = Wal::open(dir.path(), WalOptions::default()).expect("reopen WAL");
    let n = replay.series.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let table = rt.block_on(async {
        agent::httpclient::ensure_crypto_provider();
        let client = RemoteClient::new(ClientSettings {
            remote_name: "bench".into(),
            url: reqwest::Url::parse("http://127.0.0.1:9/api/v1/write").expect("url"),
            timeout: Duration::from_secs(1),
            headers: Default::default(),
            http: Default::default(),
            retry_on_http_429: true,
            agent_id: None,
        })
        .expect("client");
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = RemoteWriteMetrics::register(&mut registry);
        let q = QueueManager::new(
            client,
            QueueSettings::new(Default::default(), BTreeMap::new()),
            &metrics,
            None,
        );
        // The watcher's input is built inside the region and consumed by `store_series`, so
        // what stays held is the table.
        let region = Region::new(GLOBAL);
        let series: Vec<(u64, Vec<Label>)> = replay
            .series
            .iter()
            .map(|(r, l)| (*r, l.iter().map(|(n, v)| Label::new(n, v)).collect()))
            .collect();
        q.store_series(series);
        let held = held(&region);
        assert_eq!(q.series_count(), n);
        held
    });
    let rw = table;

    println!(
        "memory per series ({SERIES} series, {text_per_series:.0} bytes of exposition text each): \
         scrape cache {:.0} B, WAL storage {:.0} B, remote-write table {:.0} B, total {:.0} B",
        per_series(cache),
        per_series(wal_side),
        per_series(rw),
        per_series(cache + wal_side + rw),
    );
}
