//! Heap bytes held per active series, by component, after one scrape of `TARGETS` targets of
//! `PER_TARGET` distinct series each (about 120 bytes of series text per series, like the
//! harness's targets), with the instance's WAL storage:
//!
//! - the label sets, held once and shared, and the process's table of the label pairs they
//!   use (see `agent::labels`);
//! - the scrape caches (`ScrapeProcessor`s);
//! - the instance's series table (`WalStorage`);
//! - the remote-write series table (`QueueManager::store_series` with the series as the WAL
//!   watcher hands them over: sharing the instance's labels, and, for comparison, with copies
//!   of its own as after a restart before the targets are scraped again).
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
use agent::instance::storage::WalStorage;
use agent::labels::{Hasher, Labels, SeriesRef};
use agent::remote_write::{
    ClientSettings, QueueManager, QueueSettings, RemoteClient, RemoteWriteMetrics,
};
use agent::scrape::appender::Storage;
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

fn processor(target: usize, hasher: Hasher) -> ScrapeProcessor {
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
        hasher,
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
    let scrape_all = |storage: &dyn Storage| -> Vec<ScrapeProcessor> {
        (0..TARGETS)
            .map(|t| {
                let mut p = processor(t, storage.hasher());
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

    // The WAL's fixed buffers (page, records), which the series count amortises.
    let dir = tempfile::tempdir().expect("temp dir");
    let region = Region::new(GLOBAL);
    let (wal, replay) = Wal::open(dir.path(), WalOptions::default()).expect("open WAL");
    let storage = WalStorage::new("bench", wal, &replay);
    let fixed = held(&region);

    // One instance: every target scraped once into its WAL storage. What stays held is the
    // label sets (once), the table of their pairs, the instance's series table and the scrape
    // caches.
    let region = Region::new(GLOBAL);
    let processors = scrape_all(&storage);
    storage.sync().expect("sync WAL");
    let scraped = held(&region);
    let table = storage.table_heap_bytes() as isize;
    let (_, replayed) = Wal::open(dir.path(), WalOptions::default()).expect("reopen WAL");
    // The label sets as allocated: their symbols plus their count and length
    // (labels/symbols.rs, labels/thin.rs), and the process's table of label pairs.
    let labels: isize = replayed
        .series
        .iter()
        .map(|(_, l)| l.heap_size() as isize)
        .sum();
    let (symbols, table_bytes) = agent::labels::symbol_table_stats();
    let pairs = table_bytes as isize;
    let n = replayed.series.len();
    assert_eq!(n, SERIES + 5 * TARGETS, "every series once");
    let cache = scraped - table - labels - pairs;

    // Remote-write table, fed what the watcher reads from the WAL, sharing the instance's
    // labels (as while the process runs) or with copies of its own (after a restart, for the
    // series no target has scraped yet).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared = storage.shared_labels();
    let (rw_shared, rw_own) = rt.block_on(async {
        agent::httpclient::ensure_crypto_provider();
        let queue = || {
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
            QueueManager::new(
                client,
                QueueSettings::new(Default::default(), BTreeMap::new()),
                &metrics,
                None,
            )
        };
        let q = queue();
        let region = Region::new(GLOBAL);
        q.store_series(replayed.series.iter().map(|(r, l)| {
            let l = shared.shared(*r, l.as_view()).expect("the table has it");
            (*r, l)
        }));
        let with_sharing = held(&region);
        assert_eq!(q.series_count(), n);
        let q = queue();
        let copies: Vec<(SeriesRef, Labels)> = replayed
            .series
            .iter()
            .map(|(r, l)| (*r, Labels::from_pairs(l.iter())))
            .collect();
        let region = Region::new(GLOBAL);
        q.store_series(copies);
        let with_copies = held(&region) + labels;
        (with_sharing, with_copies)
    });
    drop(processors);
    drop(storage);

    println!(
        "memory per series ({SERIES} series, {text_per_series:.0} bytes of exposition text each): \
         label sets (once) {:.0} B, label pairs ({symbols} in one table) {:.1} B, scrape cache {:.0} B, instance series table {:.0} B, \
         remote-write table {:.0} B ({:.0} B with its own copies, after a restart), \
         total {:.0} B (WAL buffers {:.1} MiB, not per series)",
        per_series(labels),
        per_series(pairs),
        per_series(cache),
        per_series(table),
        per_series(rw_shared),
        per_series(rw_own),
        per_series(labels + pairs + cache + table + rw_shared),
        fixed as f64 / (1024.0 * 1024.0),
    );
}
