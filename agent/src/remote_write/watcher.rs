//! Feeds a [`QueueManager`] from an instance's WAL, so remote_write never reads from the scrape
//! path and a receiver that is down only makes the WAL grow.
//!
//! On start the watcher reads the last checkpoint (series and samples), then every segment
//! after it, then tails the live segment (woken by the WAL writer's commit signal, or every
//! [`IDLE_POLL`]). While commits keep coming (one per scrape), polls start at least [`COALESCE`] apart,
//! so the commits of that interval are read by one poll and reach the shards as one hand-over
//! per shard: a wake-up of this task and of each shard per interval rather than per scrape. A
//! commit after a quiet spell is read at once. Reading the checkpoint and the segments, and
//! any poll after one that failed, stopped short of the end (a backlog) or whose delivery
//! waited over [`TAIL_DELIVERY`] for room in the queue, run on the blocking pool. A poll after
//! one that read to the end runs on this task, and reads at most [`TAIL_BUDGET`]: what was
//! committed since, pages this process wrote moments ago and still in the page cache (as the
//! WAL's commit writes into it on the scrape's task; at a segment switch it also opens the next
//! segment). That saves a hand-over to a blocking thread and back (two thread wakes) per
//! interval. Series records go to
//! `store_series` as they are read, samples to `append_samples`, which waits
//! while the queue is full: the back-pressure stops the watcher, not the scraper. Exemplar
//! records go to `append_exemplars` when the endpoint has `send_exemplars` (otherwise they are
//! not decoded); after a restart, exemplars are skipped by the same per-series marks as
//! samples.
//!
//! **Progress survives restarts.** After every batch the queue finishes, the watcher saves the
//! queue's [`SentMarks`] (how far each shard got) to a progress file: written at once (a killed
//! process loses nothing of it), fsynced at most every [`PROGRESS_FSYNC_EVERY`] and on stop.
//! Each fsync after a write costs a 4 KiB page of disk writes (the page, clean after the fsync,
//! is dirtied again by the next save): about 1.2 B per sample at 2,000 samples/s, nothing at
//! scale. A longer period would save that at small scale but widen what a machine crash sends
//! again past the queue's resend window (below), where a refused resend can take new samples
//! with it: the period stays at the WAL's own fsync period. The file is created atomically (write, fsync, rename) and then
//! overwritten in place, one `write` of the whole text at offset 0 (well under a disk sector)
//! and a truncation when it got shorter: a new file and rename per batch cost a fresh 4 KiB
//! page of disk writes each (several per second, more than the WAL's own overhead), while
//! rewriting the same page is written out once per fsync. The saving task keeps the file open
//! and the marks it wrote in memory ([`ProgressFile`]): a save is that one `write`, made on the
//! async worker as the WAL's commit is; opening the file and its fsyncs run on the blocking
//! pool. A process killed between the write
//! and the truncation leaves the old text's tail after the new last line, which the reader
//! ignores (it reads two lines):
//!
//! ```text
//! <lowest>\n                          every sample at or before it is finished
//! <mark 0> <mark 1> ... <mark n-1>\n  per shard (series `r` was in shard `r % n`): its
//!                                     samples at or before the mark are finished
//! ```
//!
//! Timestamps are milliseconds in decimal; a file with only the first line (as written before
//! per-shard marks) resumes every series after `<lowest>`. After a restart each series' samples
//! at or before its mark are skipped and everything after is sent again: at most the newest
//! already delivered sample of a series, which receivers store once, plus what a shard delivered
//! after the last save when the process crashed, or after the last fsync (up to
//! [`PROGRESS_FSYNC_EVERY`] of deliveries) when the machine did. Prometheus refuses a request
//! holding a sample older than its series' newest with 400 "out of order sample" and stores
//! nothing of it, so the queue sends a batch refused with 400 among its first batches after a
//! start again in halves until only those samples are refused (queue.rs, `ResendWindow`). Saving at once and
//! per shard keeps that resend small. Without a progress file (a new endpoint) everything in
//! the WAL is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::proto::{Exemplar, Label};
use super::queue::{QueueManager, SentMarks};
use crate::labels::{SeriesRef, SharedLabels};
use crate::wal::checkpoint;
use crate::wal::live::{self, segment_numbers, LiveReader, Position};
use crate::wal::reader::Reader;
use crate::wal::record;
use crate::wal::DroppedSeries;

/// The shortest time from the start of one poll of the live segment to the start of the next
/// while commits keep coming (see the module docs). It delays a sample by at most this much
/// (Prometheus's watcher reads on a timer of 10-15 ms plus the queue's batching; the queue here
/// sends a partial batch after `batch_send_deadline`, 5 s by default).
pub const COALESCE: Duration = Duration::from_millis(100);

/// How often the progress file is fsynced at most while batches finish (also on stop).
pub const PROGRESS_FSYNC_EVERY: Duration = Duration::from_secs(1);

/// The longest a poll's delivery may wait for room in the queue for the next poll to still
/// read on this task (module doc).
const TAIL_DELIVERY: Duration = Duration::from_secs(1);

/// Bytes of WAL records a poll on the watcher's task reads at most (module doc): at 3 to 4
/// bytes per sample, some 70,000 samples, the commits of 100 ms at 700,000 samples a second.
/// A poll that stops at it is not caught up, and the next one runs on the blocking pool.
const TAIL_BUDGET: usize = 256 << 10;

/// How often the live segment is read without a commit signal.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// What one poll found. Series records are not collected here: they go to the queue's table
/// as each record is read (before any sample of the poll is appended, which is all the order
/// needs), so a poll over a WAL full of new series never holds copies of them all at once.
#[derive(Default)]
struct Batch {
    samples: Vec<(SeriesRef, i64, f64)>,
    exemplars: Vec<(SeriesRef, Exemplar)>,
    errors: Vec<String>,
}

/// What the watcher reads besides series and samples, and where it finds shared labels.
#[derive(Clone)]
struct Wanted {
    exemplars: bool,
    /// The instance's series table: a series read back from the WAL takes the table's copy of
    /// its labels when the table still has that ref with those labels.
    shared: Option<Arc<dyn SharedLabels>>,
}

impl Batch {
    fn absorb(
        &mut self,
        queue: &QueueManager,
        rec: &[u8],
        after: Option<&SentMarks>,
        scratch: &mut Vec<(SeriesRef, i64, f64)>,
        wanted: &Wanted,
    ) {
        match record::record_type(rec) {
            Some(record::SERIES) => {
                // Validate the whole record first, so a bad record stores nothing.
                let entries: Result<Vec<_>, _> = match record::series_iter(rec) {
                    Ok(it) => it.collect(),
                    Err(e) => Err(e),
                };
                match entries {
                    Ok(entries) => queue.store_series(entries.into_iter().map(|(r, l)| {
                        let shared = wanted.shared.as_ref().and_then(|s| s.shared(r, l));
                        (r, shared.unwrap_or_else(|| l.to_owned()))
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
                            .filter(|(r, t, _)| after.is_none_or(|a| *t > a.for_series(*r))),
                    ),
                    Err(e) => self.errors.push(e.to_string()),
                }
            }
            Some(record::EXEMPLARS) if wanted.exemplars => {
                let mut out = Vec::new();
                match record::decode_exemplars(rec, &mut out) {
                    Ok(()) => self.exemplars.extend(
                        out.into_iter()
                            .filter(|e| after.is_none_or(|a| e.t > a.for_series(e.series_ref)))
                            .map(|e| {
                                let labels =
                                    e.labels.iter().map(|(n, v)| Label::new(n, v)).collect();
                                (
                                    e.series_ref,
                                    Exemplar {
                                        labels,
                                        value: e.v,
                                        timestamp: e.t,
                                    },
                                )
                            }),
                    ),
                    Err(e) => self.errors.push(e.to_string()),
                }
            }
            _ => {}
        }
    }
}

/// Reads the saved progress's lowest mark (every sample at or before it is finished), if any.
pub fn read_progress(path: &Path) -> Option<i64> {
    read_marks(path).map(|m| m.lowest)
}

/// Reads the saved progress (format in the module doc); `None` when absent or unreadable.
pub fn read_marks(path: &Path) -> Option<SentMarks> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let lowest = lines.next()?.trim().parse().ok()?;
    // A damaged shard line only costs precision: every series resumes after `lowest`.
    let shards = lines
        .next()
        .and_then(|l| {
            l.split_ascii_whitespace()
                .map(|v| v.parse::<i64>().ok())
                .collect::<Option<Vec<i64>>>()
        })
        .unwrap_or_default();
    Some(SentMarks { lowest, shards })
}

/// Creates the progress file holding `marks`: written to a temp file, fsynced and renamed over
/// `path` (later saves rewrite it in place: [`ProgressFile`]).
fn create_progress(path: &Path, marks: &SentMarks) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(progress_text(marks).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The text of a progress file holding `marks` (module doc).
fn progress_text(marks: &SentMarks) -> String {
    let shards: Vec<String> = marks.shards.iter().map(i64::to_string).collect();
    format!("{}\n{}\n", marks.lowest, shards.join(" "))
}

/// An endpoint's progress file as [`save_on_progress`] keeps it between saves: open, with the
/// marks it holds and its length. Opening it (creating it when missing) and its fsyncs are
/// blocking work, for the blocking pool; once it is open, [`save`](Self::save) is one `pwrite`
/// into the page cache (and a truncation when the text got shorter), the kind of write the
/// WAL's commit does on the async worker too (ARCHITECTURE.md). Per finished batch that is
/// one system call, and no hand-over to a blocking thread and back (two thread wakes each).
struct ProgressFile {
    path: PathBuf,
    /// `None` until opened, and after a failed write (the next save opens it again).
    file: Option<std::fs::File>,
    /// The marks in the file (`None`: it had none that could be read).
    saved: Option<SentMarks>,
    /// The file's length.
    len: u64,
    /// Written since the last fsync.
    unsynced: bool,
}

impl ProgressFile {
    fn new(path: PathBuf) -> Self {
        ProgressFile {
            path,
            file: None,
            saved: None,
            len: 0,
            unsynced: false,
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Opens the file, or creates it holding `now` (write, fsync, rename) when missing, and
    /// saves `now` into it; with `fsync`, then syncs what was written since the last fsync.
    /// Blocking.
    fn save_blocking(&mut self, now: SentMarks, fsync: bool) -> std::io::Result<()> {
        if self.file.is_none() {
            self.saved = read_marks(&self.path);
            let file = match std::fs::OpenOptions::new().write(true).open(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    create_progress(&self.path, &now)?;
                    self.saved = Some(now.clone());
                    std::fs::OpenOptions::new().write(true).open(&self.path)?
                }
                opened => opened?,
            };
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        self.save(now)?;
        if fsync {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs what was written since the last fsync (blocking).
    fn sync(&mut self) -> std::io::Result<()> {
        if let (true, Some(file)) = (self.unsynced, &self.file) {
            file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Writes `now` merged into the file's marks ([`next_marks`]) over the file's text, when
    /// that changes it; the file must be open.
    fn save(&mut self, now: SentMarks) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let Some(file) = &self.file else {
            return Err(std::io::Error::other("the progress file is not open"));
        };
        let Some(next) = next_marks(self.saved.as_ref(), now) else {
            return Ok(());
        };
        let text = progress_text(&next);
        let len = text.len() as u64;
        let written = file.write_all_at(text.as_bytes(), 0).and_then(|()| {
            if self.len > len {
                file.set_len(len)?;
            }
            Ok(())
        });
        if written.is_err() {
            // Opened again, and its marks read again, by the next save.
            self.file = None;
            return written;
        }
        self.len = len;
        self.saved = Some(next);
        self.unsynced = true;
        Ok(())
    }
}

/// What to save given the saved marks `prev` and the queue's `now`; `None` when the file
/// should stay as it is. Marks never go back: with the same shard count they are merged shard
/// by shard (a restarted queue's shards start from nothing); with another count (the queue had
/// resharded before a restart) the old marks stay until `now.lowest` has passed all of them.
fn next_marks(prev: Option<&SentMarks>, now: SentMarks) -> Option<SentMarks> {
    let Some(prev) = prev else {
        return Some(now);
    };
    let merged = if prev.shards.len() == now.shards.len() {
        SentMarks {
            lowest: prev.lowest.max(now.lowest),
            shards: prev
                .shards
                .iter()
                .zip(&now.shards)
                .map(|(a, b)| *a.max(b))
                .collect(),
        }
    } else if now.lowest >= prev.lowest && prev.shards.iter().all(|&m| now.lowest >= m) {
        now
    } else {
        return None;
    };
    (merged != *prev).then_some(merged)
}

/// Saves the queue's progress to `path` when it moved; `fsync` for durability beyond a process
/// crash. Only one task may save to a given file at a time (the temp file is shared).
pub fn save_progress(queue: &QueueManager, path: &Path, fsync: bool) -> std::io::Result<()> {
    match queue.sent_marks() {
        Some(now) => ProgressFile::new(path.to_path_buf()).save_blocking(now, fsync),
        None => Ok(()),
    }
}

/// Saves progress after every finished batch until `shutdown`: in place on this task while the
/// file is open and no fsync is due, else on the blocking pool ([`ProgressFile`]).
async fn save_on_progress(queue: Arc<QueueManager>, path: PathBuf, shutdown: CancellationToken) {
    let mut finished = queue.finished_batches();
    let mut last_fsync = std::time::Instant::now();
    let mut file = ProgressFile::new(path.clone());
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            changed = finished.changed() => changed.is_err(),
        };
        if stop {
            // What was written in place since the last fsync is synced now (the final save
            // after this writes only when the marks moved since).
            if file.unsynced {
                let synced = tokio::task::spawn_blocking(move || file.sync()).await;
                if let Ok(Err(e)) = synced {
                    tracing::warn!(file = %path.display(), error = %e, "remote_write: cannot save progress");
                }
            }
            return;
        }
        let Some(now) = queue.sent_marks() else {
            continue;
        };
        let fsync = last_fsync.elapsed() >= PROGRESS_FSYNC_EVERY;
        let saved = if file.is_open() && !fsync {
            file.save(now)
        } else {
            let mut f = file;
            match tokio::task::spawn_blocking(move || {
                let r = f.save_blocking(now, fsync);
                (f, r)
            })
            .await
            {
                Ok((f, r)) => {
                    file = f;
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, "remote_write: progress task failed");
                    return;
                }
            }
        };
        match saved {
            Ok(()) => {
                if fsync {
                    last_fsync = std::time::Instant::now();
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "remote_write: cannot save progress")
            }
        }
    }
}

/// What the watcher gets from the instance that writes the WAL.
pub struct FromWriter {
    /// Its series table: a series read back from the WAL shares the table's labels instead of
    /// keeping a copy (see [`SharedLabels`]).
    pub shared: Arc<dyn SharedLabels>,
    /// The series its checkpoints drop, from the point the watcher starts: forgotten by the
    /// queue once the watcher has read past each checkpoint (see [`DroppedSeries`]). Take it
    /// before starting the watcher.
    pub dropped: Arc<DroppedSeries>,
}

/// Follows `dropped` as far as the reader, now at `segment`, has passed: the queue forgets
/// the series of each checkpoint before `segment`.
fn forget_dropped(dropped: &mut Arc<DroppedSeries>, segment: u32, queue: &QueueManager) {
    while let Some(next) = dropped.next().cloned() {
        if segment <= next.checkpoint {
            return;
        }
        queue.forget_series(next.refs.clone());
        *dropped = next;
    }
}

/// Runs until `shutdown`; returns when the queue is stopped or the WAL directory is gone. Run
/// it in the queue's span ([`QueueManager::span`]): its log lines name the endpoint from there.
/// Without `from_writer` (a WAL nobody is writing in this process) the watcher keeps its own
/// copies of the labels and forgets nothing.
pub async fn run(
    wal_dir: PathBuf,
    queue: Arc<QueueManager>,
    progress_file: PathBuf,
    mut commits: watch::Receiver<u64>,
    from_writer: Option<FromWriter>,
    shutdown: CancellationToken,
) {
    let (shared, mut dropped) = match from_writer {
        Some(f) => (Some(f.shared), Some(f.dropped)),
        None => (None, None),
    };
    // A file read: off the async workers.
    let path = progress_file.clone();
    let after = tokio::task::spawn_blocking(move || read_marks(&path))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read remote_write progress; resending what the WAL holds");
            None
        });
    let wanted = Wanted {
        exemplars: queue.sends_exemplars(),
        shared,
    };
    tracing::info!(wal = %wal_dir.display(), resume_after_ms = ?after.as_ref().map(|m| m.lowest),
        resume_shards = after.as_ref().map_or(0, |m| m.shards.len()), "remote_write: reading the WAL");
    // Stopped before the last save below, so that two saves never share the temp file.
    let saver_stop = shutdown.child_token();
    let saver = tokio::spawn(
        save_on_progress(queue.clone(), progress_file.clone(), saver_stop.clone())
            .in_current_span(),
    );

    // The checkpoint first (complete files), then the segments after it.
    let dir = wal_dir.clone();
    let after = Arc::new(after);
    let marks = after.clone();
    let q = queue.clone();
    let w = wanted.clone();
    let start = tokio::task::spawn_blocking(move || -> Result<(Batch, Position), String> {
        let after = marks.as_ref().as_ref();
        let mut batch = Batch::default();
        let mut scratch = Vec::new();
        let mut first_segment = 0;
        if let Some((cp, cp_dir)) = checkpoint::last_checkpoint(&dir).map_err(|e| e.to_string())? {
            let mut r =
                Reader::new(checkpoint::checkpoint_sources(&cp_dir).map_err(|e| e.to_string())?);
            while r.next_record().map_err(|e| e.to_string())? {
                batch.absorb(&q, r.record(), after, &mut scratch, &w);
            }
            first_segment = cp.saturating_add(1);
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
            tracing::error!(error = %e, "remote_write: cannot read the WAL checkpoint; starting from the segments");
            (
                Batch::default(),
                Position {
                    segment: 0,
                    offset: 0,
                },
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "remote_write: WAL reader task failed");
            saver_stop.cancel();
            let _ = saver.await;
            return;
        }
    };
    if !deliver(&queue, batch).await {
        saver_stop.cancel();
        let _ = saver.await;
        return;
    }

    let mut reader = Some(LiveReader::new(&wal_dir, start));
    // The last poll read to the end of what was written.
    let mut tailing = false;
    while let Some(mut r) = reader.take() {
        let started = tokio::time::Instant::now();
        // Every commit up to `seen` is in the files this poll reads.
        let seen = *commits.borrow_and_update();
        let after = after.clone();
        let q = queue.clone();
        let w = wanted.clone();
        let poll = move |budget: usize| {
            let after = after.as_ref().as_ref();
            let mut batch = Batch::default();
            let mut scratch = Vec::new();
            let res = r.poll_within(budget, |rec| batch.absorb(&q, rec, after, &mut scratch, &w));
            (r, batch, res)
        };
        let polled = if tailing {
            // What was committed since the last poll, which read to the end: pages this
            // process wrote moments ago, read from the page cache here, at most TAIL_BUDGET
            // (module doc). A panic ends the watcher as one on the blocking pool does.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(TAIL_BUDGET)))
                .map_err(|_| "a panic while reading the WAL tail".to_owned())
        } else {
            tokio::task::spawn_blocking(move || poll(live::POLL_BUDGET))
                .await
                .map_err(|e| e.to_string())
        };
        let (r, batch, res) = match polled {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "remote_write: WAL reader task failed");
                break;
            }
        };
        if let Some(d) = &mut dropped {
            forget_dropped(d, r.position().segment, &queue);
        }
        let caught_up = r.caught_up();
        reader = Some(r);
        if let Err(e) = &res {
            tracing::error!(error = %e, "remote_write: cannot read the WAL tail; retrying");
        }
        let delivering = tokio::time::Instant::now();
        if !deliver(&queue, batch).await {
            break;
        }
        // After a long wait for room in the queue (a receiver that is down or slow) much may
        // have been written meanwhile: the next poll reads it on the blocking pool.
        tailing = res.is_ok() && caught_up && delivering.elapsed() < TAIL_DELIVERY;
        if shutdown.is_cancelled() {
            // A commit after `seen` came while this poll read or delivered (the stop follows
            // the scrape loops' last commit, their staleness markers, at once, and `deliver`
            // can wait long for room in the queue): one more poll reads it, then the loop ends.
            if res.is_ok() && commits.has_changed().unwrap_or(false) {
                continue;
            }
            break;
        }
        if res.is_ok() && !caught_up {
            // Stopped at its budget: more is written already; the next poll at once.
            continue;
        }
        if res.is_ok() {
            // The poll read to the end of what is written: every commit up to `seen` is
            // queued.
            queue.read_through(seen);
        }
        // Wait for a commit after `seen` (one may have come during the poll: then at once).
        // A commit seen together with the stop is still read: when both are ready the commit
        // goes first, and the loop ends after that poll.
        let closed = tokio::select! {
            biased;
            changed = commits.changed() => changed.is_err(),
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(IDLE_POLL) => false,
        };
        if closed {
            // No writer any more (only when the storage is gone): poll on the timer.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
        // Commits keep coming: let those of the next few scrapes join this one. A stop during
        // the wait polls at once (what was committed before it is read, then the loop ends).
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep_until(started + COALESCE) => {}
        }
    }
    // A last save of what was delivered, for the next start (the owner saves again after
    // flushing the queue).
    saver_stop.cancel();
    let _ = saver.await;
    let q = queue.clone();
    let p = progress_file.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || save_progress(&q, &p, true)).await {
        tracing::warn!(file = %progress_file.display(), error = %e, "remote_write: cannot save progress");
    }
}

/// Hands a batch to the queue; `false` when the queue has stopped.
async fn deliver(queue: &QueueManager, batch: Batch) -> bool {
    for e in &batch.errors {
        tracing::error!(error = %e, "remote_write: skipping an undecodable WAL record");
    }
    if let Some(max) = batch.samples.iter().map(|s| s.1).max() {
        queue.observe_wal_timestamp(max);
    }
    for chunk in batch.samples.chunks(10_000) {
        if let Err(e) = queue.append_samples(chunk).await {
            tracing::info!(error = %e, "remote_write: queue stopped");
            return false;
        }
    }
    if !batch.exemplars.is_empty() {
        if let Err(e) = queue.append_exemplars(batch.exemplars).await {
            tracing::info!(error = %e, "remote_write: queue stopped");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(lowest: i64, shards: &[i64]) -> SentMarks {
        SentMarks {
            lowest,
            shards: shards.to_vec(),
        }
    }

    /// A tail left by a process killed between a rewrite in place and its truncation is
    /// ignored.
    #[test]
    fn a_stale_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rw");
        std::fs::write(&path, "3000\n3000 7\n0 3000000\n").unwrap();
        assert_eq!(read_marks(&path), Some(marks(3000, &[3000, 7])));
    }

    /// The saver's open file: created with the first marks where there was none, then each
    /// save rewrites it in place (same inode), merged with what it holds, shorter texts leave
    /// no tail, marks never go back, and a file that was already there is merged with, not
    /// overwritten.
    #[test]
    fn the_kept_progress_file_is_created_then_rewritten_in_place() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote_write").join("rw");
        let mut file = ProgressFile::new(path.clone());
        assert!(!file.is_open());
        assert!(file.save(marks(1, &[1])).is_err(), "not open yet");
        file.save_blocking(marks(1000, &[1000, 3_000_000]), false)
            .unwrap();
        assert!(file.is_open());
        assert_eq!(read_marks(&path), Some(marks(1000, &[1000, 3_000_000])));
        let ino = std::fs::metadata(&path).unwrap().ino();
        file.save(marks(2000, &[2000, 5])).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2000\n2000 3000000\n",
            "merged shard by shard"
        );
        file.save(marks(1500, &[1500, 4_000_000])).unwrap();
        assert_eq!(read_marks(&path), Some(marks(2000, &[2000, 4_000_000])));
        // A restarted queue with other shards: the old marks stay until `lowest` passes them.
        file.save(marks(3000, &[3000])).unwrap();
        assert_eq!(read_marks(&path), Some(marks(2000, &[2000, 4_000_000])));
        file.save(marks(4_000_001, &[4_000_001])).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "4000001\n4000001\n",
            "no stale tail"
        );
        file.save_blocking(marks(4_000_002, &[4_000_002]), true)
            .unwrap();
        assert!(!file.unsynced);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        assert!(!path.with_extension("tmp").exists());

        // A file from an earlier run is read, not overwritten with lower marks.
        let mut again = ProgressFile::new(path.clone());
        again.save_blocking(marks(10, &[10]), false).unwrap();
        assert_eq!(read_marks(&path), Some(marks(4_000_002, &[4_000_002])));
    }

    #[test]
    fn progress_file_round_trips_and_reads_the_one_line_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote_write").join("rw");
        let m = marks(1000, &[1000, 3000, 2000]);
        create_progress(&path, &m).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "1000\n1000 3000 2000\n"
        );
        assert_eq!(read_marks(&path), Some(m));
        assert_eq!(read_progress(&path), Some(1000));

        std::fs::write(&path, "1234").unwrap();
        assert_eq!(read_marks(&path), Some(marks(1234, &[])));
        // A damaged shard line falls back to the lowest mark for every series.
        std::fs::write(&path, "1234\n5 x 7\n").unwrap();
        assert_eq!(read_marks(&path), Some(marks(1234, &[])));
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(read_marks(&path), None);
        assert_eq!(read_marks(&dir.path().join("missing")), None);
    }

    #[test]
    fn each_series_resumes_after_its_shards_mark() {
        let m = marks(1000, &[1000, 3000, 2000]);
        assert_eq!(m.for_series(SeriesRef(0)), 1000);
        assert_eq!(m.for_series(SeriesRef(1)), 3000);
        assert_eq!(m.for_series(SeriesRef(5)), 2000);
        assert_eq!(marks(1000, &[]).for_series(SeriesRef(7)), 1000);
        // A shard mark below the lowest (a hand-edited file) never goes below it.
        assert_eq!(marks(1000, &[500]).for_series(SeriesRef(0)), 1000);
    }

    #[test]
    fn saved_marks_never_go_back() {
        assert_eq!(next_marks(None, marks(5, &[5, 6])), Some(marks(5, &[5, 6])));
        // Same shard count: merged shard by shard (a restarted queue starts low).
        assert_eq!(
            next_marks(Some(&marks(5, &[5, 9])), marks(7, &[8, 7])),
            Some(marks(7, &[8, 9]))
        );
        assert_eq!(
            next_marks(Some(&marks(5, &[5, 9])), marks(4, &[5, 9])),
            None
        );
        // Another shard count: the old marks stay until the new lowest passes all of them.
        assert_eq!(next_marks(Some(&marks(5, &[5, 9])), marks(8, &[8])), None);
        assert_eq!(
            next_marks(Some(&marks(5, &[5, 9])), marks(9, &[9])),
            Some(marks(9, &[9]))
        );
    }
}
