//! WAL append benchmark: `cargo bench -p agentctl-agent --bench wal`.
//!
//! Scrapes of 1,000 series every 15 s, one `append_samples` + `commit` per scrape, no fsync
//! (the fsync cost belongs to the disk, not the encoder). Three value mixes:
//! - `harsh`: half integer counters incrementing by 0..50, half gauges jittering around a level
//!   with two decimals (full-entropy mantissas, the worst case for snappy);
//! - `node`: a node_exporter-like mix: 40% integer counters, 20% float counters (CPU seconds,
//!   two decimals), 25% jittering gauges, 15% constant gauges (sizes, 0/1 flags, info = 1);
//! - `node-zeros`: `node` with 30% of the series being counters that stay 0 (error and drop
//!   counters, which dominate real node_exporter scrapes).
//!
//! Prints samples/s, CPU time per million samples and bytes on disk per sample (the WAL keeps
//! no per-series memory; the instance's series table is in the memory benchmark). A plain `harness = false` main keeps the dev-dependencies small.
//!
//! Then a table of bytes per sample against the record layout (same on-disk format, only how
//! many scrapes one Samples record holds and in which order): snappy compresses each record on
//! its own, so it only finds repeats inside one record. `k` scrapes per record, in scrape order
//! (what committing every `k` scrapes would write) or series-major (each series' `k` samples
//! next to each other, still a valid record). This measures what bigger records would buy; the
//! WAL itself keeps one record per scrape commit, because a commit is what remote_write reads.

use std::time::Instant;

use agent::labels::{Labels, SeriesRef};
use agent::wal::{RefSample, Wal, WalOptions};

/// Thread CPU time in ns from `/proc/thread-self/schedstat` (first field), if available.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// How scrapes are grouped into Samples records.
#[derive(Clone, Copy)]
struct Layout {
    scrapes_per_record: usize,
    series_major: bool,
}

const ONE_PER_SCRAPE: Layout = Layout {
    scrapes_per_record: 1,
    series_major: false,
};

/// Runs one configuration; returns bytes on disk per sample (Samples records only) and prints
/// the full line when `print`.
fn run(
    series_n: usize,
    scrapes: usize,
    compress: bool,
    mix: &str,
    layout: Layout,
    print: bool,
) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            compress,
            ..WalOptions::default()
        },
    )
    .expect("open");
    let mut rng = agent::rng::Rng::with_seed(0x1234_5678_9abc_def1);
    let series: Vec<(SeriesRef, Labels)> = (0..series_n)
        .map(|i| {
            let name = format!(
                "node_metric_{}_{}",
                i % 50,
                if i % 2 == 0 { "total" } else { "bytes" }
            );
            let inst = format!("10.0.{}.{}:9100", i / 250, i % 250);
            let cpu = format!("{}", i % 8);
            let l = Labels::from_pairs([
                ("__name__", name.as_str()),
                ("instance", inst.as_str()),
                ("job", "node"),
                ("cpu", cpu.as_str()),
            ]);
            (SeriesRef(i as u64 + 1), l)
        })
        .collect();
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("series");
    wal.commit().expect("commit");
    let after_series = dir_bytes(dir.path());

    let mut values: Vec<f64> = (0..series_n)
        .map(|i| match i % 4 {
            0 => (rng.next_u64() % 1_000_000) as f64,
            1 => 50.0,
            2 => (rng.next_u64() % 2) as f64,
            _ => (rng.next_u64() % 100_000_000_000) as f64,
        })
        .collect();
    let mut batch: Vec<RefSample> = Vec::with_capacity(series_n);
    let mut pending: Vec<RefSample> = Vec::new();
    let t0 = 1_700_000_000_000i64;
    let start = Instant::now();
    let cpu0 = cpu_ns();
    for s in 0..scrapes {
        batch.clear();
        let ts = t0 + s as i64 * 15_000;
        for (i, (r, _)) in series.iter().enumerate() {
            let kind = match mix {
                "harsh" => (i % 2) * 12,
                "node-zeros" if i % 10 < 3 => 100,
                _ => i % 20,
            };
            let v = match kind {
                100 => 0.0,
                // Integer counter.
                0..=7 => {
                    values[i] += (rng.next_u64() % 50) as f64;
                    values[i]
                }
                // Float counter, two decimals.
                8..=11 => {
                    values[i] = ((values[i] + (rng.next_u64() % 1500) as f64 / 100.0) * 100.0)
                        .round()
                        / 100.0;
                    values[i]
                }
                // Constant gauge.
                17..=19 => values[i],
                // Gauge: level + jitter, two decimals.
                _ => ((values[i] * 100.0 + (rng.next_u64() % 200) as f64 - 100.0).round()) / 100.0,
            };
            batch.push((*r, ts, v));
        }
        if layout.scrapes_per_record == 1 {
            wal.append_samples(&batch).expect("append");
            wal.commit().expect("commit");
            continue;
        }
        pending.extend_from_slice(&batch);
        if (s + 1) % layout.scrapes_per_record == 0 || s + 1 == scrapes {
            if layout.series_major {
                // Stable: each series keeps its samples in time order.
                pending.sort_by_key(|&(r, _, _)| r);
            }
            wal.append_samples(&pending).expect("append");
            wal.commit().expect("commit");
            pending.clear();
        }
    }
    let wall = start.elapsed();
    let cpu = cpu_ns().zip(cpu0).map(|(a, b)| a - b);
    wal.sync().expect("sync");
    let total = dir_bytes(dir.path());
    let samples = (series_n * scrapes) as f64;
    let per_sample = (total - after_series) as f64 / samples;
    if print {
        println!(
            "mix={mix} compress={compress} series={series_n} scrapes={scrapes}: {:.1} M samples/s wall, CPU {} ms per million samples, {:.2} bytes/sample on disk (samples records only; series records {} bytes total)",
            samples / wall.as_secs_f64() / 1e6,
            cpu.map(|c| format!("{:.1}", c as f64 / 1e6 / (samples / 1e6))).unwrap_or_else(|| "n/a".into()),
            per_sample,
            after_series,
        );
    }
    per_sample
}

/// Bytes per sample by record layout (see the module doc), as a Markdown table.
fn layout_table(series_n: usize, scrapes: usize) {
    let ks = [1usize, 2, 4, 8, 16, 40];
    let mut header = String::from("| mix | order |");
    for k in ks {
        header.push_str(&format!(" {k} scrape(s)/record |"));
    }
    println!("\nbytes/sample on disk, {series_n} series, {scrapes} scrapes, snappy per record");
    println!("{header}");
    println!("|---|---|{}", "---|".repeat(ks.len()));
    for mix in ["node", "node-zeros", "harsh"] {
        for series_major in [false, true] {
            let mut row = format!(
                "| {mix} | {} |",
                if series_major {
                    "series-major"
                } else {
                    "scrape"
                }
            );
            for k in ks {
                let b = run(
                    series_n,
                    scrapes,
                    true,
                    mix,
                    Layout {
                        scrapes_per_record: k,
                        series_major,
                    },
                    false,
                );
                row.push_str(&format!(" {b:.2} |"));
            }
            println!("{row}");
        }
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scrapes = if quick { 20 } else { 2_000 };
    for mix in ["node", "node-zeros", "harsh"] {
        run(1_000, scrapes, true, mix, ONE_PER_SCRAPE, true);
        run(1_000, scrapes, false, mix, ONE_PER_SCRAPE, true);
    }
    if !quick {
        run(100_000, 40, true, "node", ONE_PER_SCRAPE, true);
    }
    layout_table(1_000, if quick { 40 } else { 2_000 });
}
