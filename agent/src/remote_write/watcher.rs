//! Feeds a [`QueueManager`] from an instance's WAL, so remote_write never reads from the scrape
//! path and a receiver that is down only makes the WAL grow.
//!
//! On start the watcher reads the last checkpoint (series and samples), then every segment
//! after it, then tails the live segment (woken by the WAL writer's commit signal, or every
//! 250 ms). Series records go to `store_series`, samples to `append_samples`, which waits
//! while the queue is full: the back-pressure stops the watcher, not the scraper.
//!
//! **Progress survives restarts.** Every second the watcher writes the queue's
//! `lowest_sent_timestamp` (every sample at or before it has been delivered or dropped for
//! good) to a progress file, atomically (write, fsync, rename). After a restart, samples at or
//! before that mark are skipped and everything after it is sent again. A sample sent just before
//! a crash may be sent twice; receivers store a repeated identical sample once, so counts stay
//! right. Without a progress file (a new endpoint) everything in the WAL is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::proto::Label;
use super::queue::QueueManager;
use crate::wal::checkpoint;
use crate::wal::live::{segment_numbers, LiveReader, Position};
use crate::wal::reader::Reader;
use crate::wal::record;

/// What one poll found.
#[derive(Default)]
struct Batch {
    series: Vec<(u64, Vec<Label>)>,
    samples: Vec<(u64, i64, f64)>,
    errors: Vec<String>,
}

impl Batch {
    fn absorb(&mut self, rec: &[u8], after: Option<i64>, scratch: &mut Vec<(u64, i64, f64)>) {
        match record::record_type(rec) {
            Some(record::SERIES) => {
                let mut out = Vec::new();
                match record::decode_series(rec, &mut out) {
                    Ok(()) => self.series.extend(out.into_iter().map(|(r, l)| {
                        (
                            r,
                            l.iter()
                                .map(|(n, v)| Label {
                                    name: n.to_owned(),
                                    value: v.to_owned(),
                                })
                                .collect(),
                        )
                    })),
                    Err(e) => self.errors.push(e.to_string()),
                }
            }
            Some(record::SAMPLES) => {
                scratch.clear();
                match record::decode_samples(rec, scratch) {
                    Ok(()) => self.samples.extend(
                        scratch
                            .iter()
                            .filter(|(_, t, _)| after.is_none_or(|a| *t > a)),
                    ),
                    Err(e) => self.errors.push(e.to_string()),
                }
            }
            _ => {}
        }
    }
}

/// Reads the saved progress (the lowest timestamp known sent), if any.
pub fn read_progress(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_progress(path: &Path, ts: i64) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(ts.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs until `shutdown`; returns when the queue is stopped or the WAL directory is gone.
pub async fn run(
    wal_dir: PathBuf,
    queue: Arc<QueueManager>,
    progress_file: PathBuf,
    mut commits: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let after = read_progress(&progress_file);
    let name = queue.remote_name().to_owned();
    tracing::info!(remote_name = %name, wal = %wal_dir.display(), resume_after_ms = ?after, "remote_write: reading the WAL");

    // The checkpoint first (complete files), then the segments after it.
    let dir = wal_dir.clone();
    let start = tokio::task::spawn_blocking(move || -> Result<(Batch, Position), String> {
        let mut batch = Batch::default();
        let mut scratch = Vec::new();
        let mut first_segment = 0;
        if let Some((cp, cp_dir)) = checkpoint::last_checkpoint(&dir).map_err(|e| e.to_string())? {
            let mut r =
                Reader::new(checkpoint::checkpoint_sources(&cp_dir).map_err(|e| e.to_string())?);
            while r.next_record().map_err(|e| e.to_string())? {
                batch.absorb(r.record(), after, &mut scratch);
            }
            first_segment = cp + 1;
        }
        let numbers = segment_numbers(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let segment = numbers
            .into_iter()
            .find(|&s| s >= first_segment)
            .unwrap_or(first_segment);
        Ok((batch, Position { segment, offset: 0 }))
    })
    .await;
    let (batch, start) = match start {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!(remote_name = %name, error = %e, "remote_write: cannot read the WAL checkpoint; starting from the segments");
            (
                Batch::default(),
                Position {
                    segment: 0,
                    offset: 0,
                },
            )
        }
        Err(e) => {
            tracing::error!(remote_name = %name, error = %e, "remote_write: WAL reader task failed");
            return;
        }
    };
    if !deliver(&queue, batch, &name).await {
        return;
    }

    let mut reader = Some(LiveReader::new(&wal_dir, start));
    let mut last_progress = std::time::Instant::now();
    let mut saved = after;
    loop {
        let Some(mut r) = reader.take() else { return };
        let polled = tokio::task::spawn_blocking(move || {
            let mut batch = Batch::default();
            let mut scratch = Vec::new();
            let res = r.poll(|rec| batch.absorb(rec, after, &mut scratch));
            (r, batch, res)
        })
        .await;
        let (r, batch, res) = match polled {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(remote_name = %name, error = %e, "remote_write: WAL reader task failed");
                return;
            }
        };
        reader = Some(r);
        if let Err(e) = &res {
            tracing::error!(remote_name = %name, error = %e, "remote_write: cannot read the WAL tail; retrying");
        }
        let idle = matches!(res, Ok(0));
        if !deliver(&queue, batch, &name).await {
            return;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = std::time::Instant::now();
            if let Some(ts) = queue.lowest_sent_timestamp() {
                if saved.is_none_or(|s| ts > s) {
                    match write_progress(&progress_file, ts) {
                        Ok(()) => saved = Some(ts),
                        Err(e) => {
                            tracing::warn!(remote_name = %name, file = %progress_file.display(), error = %e, "remote_write: cannot save progress")
                        }
                    }
                }
            }
        }
        if idle {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = commits.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        } else if shutdown.is_cancelled() {
            break;
        }
    }
    // A last save of what was delivered, for the next start.
    if let Some(ts) = queue.lowest_sent_timestamp() {
        if saved.is_none_or(|s| ts > s) {
            let _ = write_progress(&progress_file, ts);
        }
    }
}

/// Hands a batch to the queue; `false` when the queue has stopped.
async fn deliver(queue: &QueueManager, batch: Batch, name: &str) -> bool {
    for e in &batch.errors {
        tracing::error!(remote_name = %name, error = %e, "remote_write: skipping an undecodable WAL record");
    }
    if !batch.series.is_empty() {
        queue.store_series(batch.series);
    }
    if let Some(max) = batch.samples.iter().map(|s| s.1).max() {
        queue.observe_wal_timestamp(max);
    }
    for chunk in batch.samples.chunks(10_000) {
        if let Err(e) = queue.append_samples(chunk).await {
            tracing::info!(remote_name = %name, error = %e, "remote_write: queue stopped");
            return false;
        }
    }
    true
}
