//! The scrape hot path without HTTP: one 1,000-series body (the parser benchmark's body with a
//! `replica` label making every counter series distinct: counters, gauges and a histogram,
//! five or six labels per series, ~160 KB) through
//! [`ScrapeProcessor::process_body`] into a no-op appender, in steady state (every series
//! cached), plus the cold first scrape for comparison, and under churn: every scrape half
//! new series (`churn_half_new_process_body`: the series cache's inserts, evictions and its
//! indexes' rehashes).
//!
//! Before benchmarking, `main` counts allocations of steady-state scrapes under a counting
//! global allocator and fails if they grow with the number of samples (the target is O(1) per
//! scrape; it is 0 for the body path). It runs in `cargo test --benches` too.
//!
//! Run: `cargo bench -p agentctl-agent --bench scrape`.

use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::config::load::parse_instance;
use agent::config::GlobalConfig;
use agent::labels::{Hasher, Labels};
use agent::scrape::appender::{AppendError, Appender, SeriesRef, Storage};
use agent::scrape::parse::{Entry, Format, Parser};
use agent::scrape::scrape_loop::ScrapeProcessor;
use criterion::{Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERIES: usize = 1000;

mod common;

/// The parser benchmark's body with a `replica` label (see `agent/benches/common/mod.rs`).
fn body() -> String {
    common::exposition_body(true)
}

/// Counts what it is given and keeps nothing.
#[derive(Default)]
struct NoopAppender {
    next: u64,
    sum: f64,
}

impl Appender for NoopAppender {
    fn new_series(&mut self, labels: Labels) -> (SeriesRef, Labels) {
        self.next += 1;
        (SeriesRef(self.next), labels)
    }
    fn append(&mut self, r: SeriesRef, t_ms: i64, v: f64) {
        self.sum += v + (r.0 as i64 + t_ms) as f64;
    }
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

fn processor() -> ScrapeProcessor {
    let yaml = "scrape_configs:\n  - job_name: bench\n    static_configs: [{targets: ['10.0.0.1:9100']}]\n    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: go_gc_.*\n        action: drop\n";
    let (_, cfg) = parse_instance(yaml, &GlobalConfig::default()).expect("valid bench config");
    let cfg = cfg.scrape_configs.into_iter().next().expect("one job");
    ScrapeProcessor::new(
        Arc::new(cfg),
        Labels::from_pairs([("job", "bench"), ("instance", "10.0.0.1:9100")]),
        Hasher::random(),
    )
}

fn scrape(p: &mut ScrapeProcessor, app: &mut NoopAppender, body: &[u8], t: i64) {
    let (stats, res) = p.process_body(app, body, Format::PrometheusText, t);
    assert!(res.is_ok(), "bench body must scrape cleanly");
    assert_eq!(stats.scraped as usize, SERIES);
}

fn allocation_check(body: &[u8]) {
    let mut p = processor();
    let mut app = NoopAppender::default();
    // First scrape fills the cache; the second settles any scratch growth.
    scrape(&mut p, &mut app, body, 1);
    scrape(&mut p, &mut app, body, 2);

    const ROUNDS: usize = 50;
    let region = Region::new(GLOBAL);
    for i in 0..ROUNDS {
        scrape(&mut p, &mut app, body, 3 + i as i64);
    }
    let body_path = region.change();

    // The whole append side: body, staleness, synthetic series, commit. The first call
    // registers the synthetic series.
    let warm = p.append_scrape(
        &NoopStorage,
        Ok((body, Format::PrometheusText)),
        99,
        Duration::from_millis(3),
    );
    assert!(warm.is_ok());
    let region = Region::new(GLOBAL);
    for i in 0..ROUNDS {
        let r = p.append_scrape(
            &NoopStorage,
            Ok((body, Format::PrometheusText)),
            100 + i as i64,
            Duration::from_millis(3),
        );
        assert!(r.is_ok());
    }
    let full = region.change();

    let per = |s: &stats_alloc::Stats| (s.allocations + s.reallocations) as f64 / ROUNDS as f64;
    println!(
        "allocations per steady-state scrape of {SERIES} samples: process_body {:.2} ({} bytes total over {ROUNDS}), append_scrape {:.2}",
        per(&body_path),
        body_path.bytes_allocated,
        per(&full),
    );
    // process_body allocates nothing; append_scrape only the boxed appender.
    assert!(
        per(&body_path) == 0.0 && per(&full) <= 1.0,
        "steady-state scrape allocations must not depend on the sample count"
    );
    assert_eq!(
        p.cache().series(),
        SERIES,
        "every series of the body is distinct"
    );
}

/// Heap held by a processor after its first scrape, per series (the series cache: keys,
/// slots, index tables, and here also the label sets, which a real storage would share with
/// its series table).
fn memory_check(body: &[u8]) {
    let mut app = NoopAppender::default();
    let region = Region::new(GLOBAL);
    let mut p = processor();
    scrape(&mut p, &mut app, body, 1);
    let s = region.change();
    let held = s.bytes_allocated + s.bytes_reallocated.max(0) as usize - s.bytes_deallocated;
    let key_bytes: usize = {
        let mut parser = Parser::new(body, Format::PrometheusText);
        let mut n = 0;
        while let Ok(Some(e)) = parser.next_entry() {
            if let Entry::Sample(s) = e {
                n += s.series.len();
            }
        }
        n
    };
    println!(
        "memory: {:.0} bytes per cached series, its label set included (the series text, not kept, is {:.0} bytes)",
        held as f64 / SERIES as f64,
        key_bytes as f64 / SERIES as f64
    );
    black_box(&p);
}

/// Parsing alone with a reused parser, the floor of the scrape path.
fn parse_only(parser: &mut Parser<'_>) -> f64 {
    let mut sum = 0.0;
    while let Ok(Some(e)) = parser.next_entry() {
        if let Entry::Sample(s) = e {
            sum += s.value + s.series.len() as f64;
        }
    }
    sum
}

fn quick_numbers(body: &[u8]) {
    const ROUNDS: u32 = 300;
    let mut parser = Parser::new(body, Format::PrometheusText);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        parser = parser.reset(body, Format::PrometheusText);
        black_box(parse_only(&mut parser));
    }
    let per_body = start.elapsed() / ROUNDS;
    println!(
        "parse only (baseline): {:.0} ns/sample",
        per_body.as_nanos() as f64 / SERIES as f64
    );
    let mut p = processor();
    let mut app = NoopAppender::default();
    scrape(&mut p, &mut app, body, 1);
    let start = Instant::now();
    for i in 0..ROUNDS {
        scrape(&mut p, &mut app, body, 2 + i64::from(i));
    }
    let per_body = start.elapsed() / ROUNDS;
    println!(
        "steady state: {:.0} ns/sample ({:.1} us per {SERIES}-sample scrape)",
        per_body.as_nanos() as f64 / SERIES as f64,
        per_body.as_secs_f64() * 1e6
    );
    const COLD: u32 = 30;
    let start = Instant::now();
    for _ in 0..COLD {
        let mut p = processor();
        scrape(&mut p, &mut app, body, 1);
    }
    let per_body = start.elapsed() / COLD;
    println!(
        "first scrape (every series a cache miss): {:.0} ns/sample",
        per_body.as_nanos() as f64 / SERIES as f64
    );
    black_box(app.sum);
}

/// Bodies whose every other series carries `churn="k"` (k = the body's number), cycled: each
/// scrape has the stable half of the series the one before had and a new half (the previous
/// body's churning series are evicted, as a target's with a request-id label are).
fn churn_bodies(body: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            let mut out = String::with_capacity(body.len() + SERIES * 12);
            let mut sample = 0;
            for line in body.lines() {
                match line.find('{') {
                    Some(i) if !line.starts_with('#') => {
                        sample += 1;
                        if sample % 2 == 0 {
                            out.push_str(&line[..=i]);
                            out.push_str(&format!("churn=\"{k}\","));
                            out.push_str(&line[i + 1..]);
                        } else {
                            out.push_str(line);
                        }
                    }
                    _ => out.push_str(line),
                }
                out.push('\n');
            }
            out.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion, body: &[u8]) {
    let mut group = c.benchmark_group("scrape_1000_series");
    group.throughput(Throughput::Elements(SERIES as u64));
    let mut p = processor();
    let mut app = NoopAppender::default();
    scrape(&mut p, &mut app, body, 1);
    let mut t = 1;
    group.bench_function("steady_state_process_body", |b| {
        b.iter(|| {
            t += 1;
            scrape(&mut p, &mut app, body, t);
        })
    });
    group.bench_function("steady_state_append_scrape", |b| {
        b.iter(|| {
            t += 1;
            black_box(p.append_scrape(
                &NoopStorage,
                Ok((body, Format::PrometheusText)),
                t,
                Duration::from_millis(3),
            ))
        })
    });
    let churn = churn_bodies(std::str::from_utf8(body).expect("UTF-8 body"), 64);
    let mut p = processor();
    for b in &churn[..2] {
        t += 1;
        scrape(&mut p, &mut app, b, t);
    }
    let mut k = 2;
    group.bench_function("churn_half_new_process_body", |b| {
        b.iter(|| {
            t += 1;
            k = (k + 1) % churn.len();
            scrape(&mut p, &mut app, &churn[k], t);
        })
    });
    group.finish();
    black_box(app.sum);
}

fn main() {
    let body = body();
    let body = body.as_bytes();
    allocation_check(body);
    memory_check(body);
    quick_numbers(body);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, body);
    c.final_summary();
}
