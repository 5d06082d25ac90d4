//! Crash-test helper for `tests/wal.rs`: `wal_writer <dir> [series] [sync_every]` appends
//! one batch per iteration to the WAL in `<dir>` (`series` series, default 2000, timestamp
//! `i * 15000`, value `i`) and commits it; every `sync_every` batches (default 1) it fsyncs and
//! only then prints `ACK <i>`. The test kills it with SIGKILL at a random moment and checks
//! that every acknowledged batch survives. Unsynced batches between acks make it likely that
//! the kill lands between the `write`s of a multi-page record, leaving a torn tail.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use agent::wal::{Labels, Wal, WalOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: wal_writer <dir> [series] [sync_every]");
        return ExitCode::from(2);
    };
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let sync_every: i64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    // Small segments so the kill can also land during a segment cut.
    let opts = WalOptions {
        segment_size: 8 * agent::wal::PAGE_SIZE,
        compress: true,
    };
    let (mut wal, _) = match Wal::open(&dir, opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("open: {e}");
            return ExitCode::FAILURE;
        }
    };
    let series: Vec<(u64, Labels)> = (0..n)
        .map(|i| {
            let name = format!("m{i}");
            (
                wal.alloc_ref(),
                Labels::from_pairs([("__name__", name.as_str()), ("job", "crash")]),
            )
        })
        .collect();
    let mut batch = Vec::with_capacity(series.len());
    let stdout = std::io::stdout();
    for i in 0i64.. {
        if i == 0 {
            if let Err(e) = wal.append_series(&series) {
                eprintln!("append_series: {e}");
                return ExitCode::FAILURE;
            }
        }
        batch.clear();
        batch.extend(series.iter().map(|(r, _)| (*r, i * 15_000, i as f64)));
        let res = wal.append_samples(&batch).and_then(|()| wal.commit());
        if let Err(e) = res {
            eprintln!("write: {e}");
            return ExitCode::FAILURE;
        }
        if (i + 1) % sync_every != 0 {
            continue;
        }
        if let Err(e) = wal.sync() {
            eprintln!("sync: {e}");
            return ExitCode::FAILURE;
        }
        let mut out = stdout.lock();
        if writeln!(out, "ACK {i}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
