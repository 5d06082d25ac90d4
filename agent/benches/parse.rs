//! Exposition parser throughput and allocation check.
//!
//! The body is a realistic 1,000-series scrape: 300 counter series, 220 gauge series and a
//! histogram family of 40 label sets x (10 buckets + sum + count), five labels per series,
//! HELP and TYPE lines for each family (about 160 KB).
//!
//! Before benchmarking, `main` parses the body under a counting global allocator and fails if
//! steady-state parsing (labels iterated and decoded) allocates at all; it runs in
//! `cargo test --benches` too.
//!
//! Run: `cargo bench -p agentctl-agent --bench parse`.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use agent::scrape::parse::{Entry, Format, Parser};
use criterion::{Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERIES: usize = 1000;

mod common;

/// The shared realistic body (see `agent/benches/common/mod.rs`).
fn body() -> String {
    common::exposition_body(false)
}

/// Parses and touches every sample's value; labels untouched (the series-cache-hit path).
fn parse_values(parser: &mut Parser<'_>) -> (usize, f64) {
    let mut samples = 0;
    let mut sum = 0.0;
    for entry in parser {
        if let Ok(Entry::Sample(s)) = entry {
            samples += 1;
            sum += s.value + s.series.len() as f64;
        }
    }
    (samples, sum)
}

/// Parses and decodes every label (the cache-miss path).
fn parse_with_labels(parser: &mut Parser<'_>) -> (usize, usize) {
    let mut samples = 0;
    let mut bytes = 0;
    for entry in parser {
        if let Ok(Entry::Sample(s)) = entry {
            samples += 1;
            for (name, value) in s.labels.iter() {
                bytes += name.len() + value.len();
            }
        }
    }
    (samples, bytes)
}

fn allocation_check(body: &[u8]) {
    // Warm up: the parser's label-name scratch grows once.
    let mut parser = Parser::new(body, Format::PrometheusText);
    let (samples, _) = parse_with_labels(&mut parser);
    assert_eq!(samples, SERIES);

    let region = Region::new(GLOBAL);
    const ROUNDS: usize = 50;
    for _ in 0..ROUNDS {
        parser = parser.reset(body, Format::PrometheusText);
        black_box(parse_with_labels(&mut parser));
    }
    let reused = region.change();

    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        let mut fresh = Parser::new(body, Format::PrometheusText);
        black_box(parse_with_labels(&mut fresh));
    }
    let fresh = region.change();

    println!(
        "allocations: reused parser {} in {} samples ({} bytes); fresh parser per body {} in {} samples ({:.4} per sample)",
        reused.allocations + reused.reallocations,
        ROUNDS * SERIES,
        reused.bytes_allocated,
        fresh.allocations + fresh.reallocations,
        ROUNDS * SERIES,
        (fresh.allocations + fresh.reallocations) as f64 / (ROUNDS * SERIES) as f64,
    );
    assert_eq!(
        reused.allocations + reused.reallocations,
        0,
        "steady-state parsing allocated"
    );
}

/// A plain timing loop, printed as MB/s and ns/sample, alongside criterion's statistics.
fn quick_numbers(body: &[u8]) {
    const ROUNDS: u32 = 300;
    for (label, with_labels) in [("values only", false), ("labels decoded", true)] {
        let mut parser = Parser::new(body, Format::PrometheusText);
        let start = Instant::now();
        for _ in 0..ROUNDS {
            parser = parser.reset(body, Format::PrometheusText);
            if with_labels {
                black_box(parse_with_labels(&mut parser));
            } else {
                black_box(parse_values(&mut parser));
            }
        }
        let per_body = start.elapsed() / ROUNDS;
        println!(
            "{label}: {} bytes, {SERIES} samples: {:.0} MB/s, {:.0} ns/sample",
            body.len(),
            body.len() as f64 / per_body.as_secs_f64() / 1e6,
            per_body.as_nanos() as f64 / SERIES as f64,
        );
    }
}

fn bench(c: &mut Criterion, body: &[u8]) {
    let mut group = c.benchmark_group("parse_1000_series");
    group.throughput(Throughput::BytesDecimal(body.len() as u64));
    let mut parser = Some(Parser::new(body, Format::PrometheusText));
    group.bench_function("values_only", |b| {
        b.iter(|| {
            let mut p = parser.take().map_or_else(
                || Parser::new(body, Format::PrometheusText),
                |p| p.reset(body, Format::PrometheusText),
            );
            let result = parse_values(&mut p);
            parser = Some(p);
            black_box(result)
        })
    });
    group.bench_function("labels_decoded", |b| {
        b.iter(|| {
            let mut p = parser.take().map_or_else(
                || Parser::new(body, Format::PrometheusText),
                |p| p.reset(body, Format::PrometheusText),
            );
            let result = parse_with_labels(&mut p);
            parser = Some(p);
            black_box(result)
        })
    });
    group.finish();
}

fn main() {
    let body = body();
    let body = body.as_bytes();
    allocation_check(body);
    quick_numbers(body);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, body);
    c.final_summary();
}
