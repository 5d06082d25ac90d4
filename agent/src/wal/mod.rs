//! Write-ahead log in Prometheus's on-disk format (`tsdb/wlog` + `tsdb/record`), written the
//! way Grafana Agent's `static/metrics/wal` does: per commit one Series record (new series
//! only), one Samples record, one Exemplars record; snappy per record; checkpoints on
//! truncation. Segment and fragment format: [`segment`]; record bodies: [`record`]; reading:
//! [`reader`]; checkpoints and the truncation policy: [`checkpoint`]; `agentctl wal inspect`
//! data: [`inspect`].
//!
//! Memory: the WAL keeps no per-series state. Series (labels, newest timestamp, garbage
//! collection) live in the instance's one series table (`instance::storage`), which decides
//! what a checkpoint keeps; [`Wal::open`] hands the replayed series over once in
//! [`ReplayState`]. Checkpoints re-read label sets from disk rather than keeping them in memory.

pub mod checkpoint;
pub mod inspect;
pub mod live;
pub mod reader;
pub mod record;
pub mod segment;
pub mod sync;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::labels::{Labels, LabelsRef, RefMap, SeriesRef};

pub use checkpoint::{
    clamped_by_max_wal_time, truncation_point, CheckpointStats, Cut, DroppedSeries,
};
pub use reader::{Corruption, Reader, SegmentSource};
pub use record::{RefExemplar, RefSample};
pub use segment::{Faults, Pos, SegmentWriter, DEFAULT_SEGMENT_SIZE, PAGE_SIZE};
pub use sync::SyncHandle;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corruption in segment {segment} ({path}) at offset {offset}: {kind}")]
    Corrupt {
        path: PathBuf,
        segment: u32,
        offset: u64,
        kind: Corruption,
    },
    #[error("segments are not sequential in {dir}: {found:08} follows {after:08}")]
    NotSequential {
        dir: PathBuf,
        after: u32,
        found: u32,
    },
    #[error("checkpoint {0} is not a directory")]
    CheckpointNotDir(PathBuf),
    #[error(
        "unexpected gap to last checkpoint: expected segment {expected}, requested {requested}"
    )]
    CheckpointGap { expected: u32, requested: u32 },
    #[error("segment {0} is missing")]
    MissingSegment(PathBuf),
    #[error("segment size {0} is not a positive multiple of the 32 KiB page size")]
    BadSegmentSize(usize),
    #[error("record of {len} bytes does not fit in a segment (max {max})")]
    RecordTooLarge { len: usize, max: usize },
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> WalError {
        WalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Maximum segment size; a multiple of 32 KiB (tests use small ones).
    pub segment_size: usize,
    /// Snappy-compress records when that makes them smaller (the agent always does).
    pub compress: bool,
    /// How often the disk thread fsyncs the segment being written (when it was written to).
    pub sync_interval: std::time::Duration,
    /// Fault injection (tests): slow or failing writes and fsyncs.
    pub faults: segment::FaultsHook,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            compress: true,
            sync_interval: std::time::Duration::from_secs(1),
            faults: None,
        }
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub segment: u32,
    /// The corrupt position found.
    pub corrupt_offset: u64,
    /// Where the segment was cut (end of the last good record).
    pub truncated_at: u64,
    pub reason: String,
    /// Later segments moved aside, `(from, to)`.
    pub renamed: Vec<(PathBuf, PathBuf)>,
}

/// What [`Wal::open`] found on disk.
#[derive(Debug, Default)]
pub struct ReplayState {
    /// Every series in the checkpoint and segments, by ref (sorted, deduplicated).
    pub series: Vec<(SeriesRef, Labels)>,
    /// The newest sample timestamp of each replayed series that has samples.
    pub newest: RefMap<i64>,
    /// Samples replayed (all, including those of unknown refs).
    pub samples: u64,
    pub exemplars: u64,
    /// Samples whose ref had no Series record before them.
    pub unknown_refs: u64,
    /// The first ref not used in the WAL (one past the highest seen): where a writer continues.
    pub next_ref: SeriesRef,
    pub checkpoint: Option<u32>,
    /// First and last segment replayed.
    pub segments: Option<(u32, u32)>,
    pub repair: Option<RepairReport>,
}

/// Flush pending records early once one reaches this size, so a huge scrape never builds a
/// record larger than a segment.
const MAX_PENDING_RECORD: usize = 4 << 20;

/// The write-ahead log of one instance. Batch-oriented: the scrape side appends a scrape's
/// new series and samples, then calls [`commit`](Wal::commit) once.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    writer: SegmentWriter,
    series_rec: Vec<u8>,
    samples_rec: Vec<u8>,
    exemplars_rec: Vec<u8>,
    max_pending: usize,
    /// Where the last successful commit left the writer.
    mark: segment::WriterMark,
    /// Records logged since `mark`, in order.
    logged: Vec<Logged>,
    /// An [`abort`](Wal::abort) could not zero the failed write's bytes yet.
    needs_reset: bool,
    /// Samples in `samples_rec`.
    pending_samples: usize,
    /// Series records taken back by [`abort`](Wal::abort), logged first by the next commit.
    requeued_series: Vec<Vec<u8>>,
}

/// A record logged since the last commit.
struct Logged {
    end: Pos,
    samples: usize,
    /// A Series record's bytes: logged again if it does not reach the file (its refs are
    /// handed out and in use).
    series: Option<Vec<u8>>,
}

/// What [`Wal::abort`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aborted {
    /// Samples of records that had reached the file whole: they stay in the WAL (a reader
    /// may have read them already).
    pub kept_samples: usize,
    /// Samples of records that had not (or had not been written at all): gone.
    pub dropped_samples: usize,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: repairs a corrupt tail, replays the last
    /// checkpoint and the segments after it, pads the last segment to a page boundary and
    /// starts writing a new segment after it (as Prometheus does on open).
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, ReplayState), WalError> {
        fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let mut state = ReplayState::default();
        let mut all: HashMap<SeriesRef, Labels> = HashMap::new();
        let mut newest: RefMap<i64> = RefMap::default();
        let mut max_ref = 0u64;
        let mut samples: Vec<RefSample> = Vec::new();
        let mut exemplars: Vec<RefExemplar> = Vec::new();
        let rep = replay(dir, |rec| {
            match record::record_type(rec) {
                Some(record::SERIES) => {
                    // Decode the whole record before applying it, so a bad record leaves no
                    // partial state behind.
                    let mut v = Vec::new();
                    record::decode_series(rec, &mut v)?;
                    for (r, l) in v {
                        max_ref = max_ref.max(r.0);
                        all.insert(r, l);
                    }
                }
                Some(record::SAMPLES) => {
                    samples.clear();
                    record::decode_samples(rec, &mut samples)?;
                    state.samples += samples.len() as u64;
                    for &(r, t, _) in &samples {
                        if all.contains_key(&r) {
                            let ts = newest.entry(r).or_insert(t);
                            *ts = (*ts).max(t);
                        } else {
                            state.unknown_refs += 1;
                        }
                    }
                }
                Some(record::EXEMPLARS) => {
                    exemplars.clear();
                    record::decode_exemplars(rec, &mut exemplars)?;
                    state.exemplars += exemplars.len() as u64;
                }
                _ => {}
            }
            Ok(())
        })?;
        state.checkpoint = rep.checkpoint;
        state.segments = rep.segments;
        state.repair = rep.repair;
        let mut series: Vec<(SeriesRef, Labels)> = all.into_iter().collect();
        series.sort_unstable_by_key(|(r, _)| *r);
        state.series = series;
        state.newest = newest;
        state.next_ref = SeriesRef(max_ref.saturating_add(1));

        let segs = segment::list_segments(dir)?;
        // A segment or checkpoint numbered u32::MAX leaves no number to write next (wrapping
        // would overwrite segment 0).
        let exhausted = |n: u32| {
            n.checked_add(1).ok_or_else(|| {
                WalError::io(
                    dir,
                    io::Error::other(format!("segment number {n} is the last possible one")),
                )
            })
        };
        let mut next = 0u32;
        if let Some(&last) = segs.last() {
            segment::pad_to_page(&segment::segment_path(dir, last))?;
            next = exhausted(last)?;
        }
        if let Some(cp) = rep.checkpoint {
            next = next.max(exhausted(cp)?);
        }
        let writer = SegmentWriter::create(dir, next, opts.segment_size, opts.compress)?
            .with_faults(opts.faults.clone())
            .with_sync_thread(opts.sync_interval)?;
        let max_pending = MAX_PENDING_RECORD.min(opts.segment_size / 4);
        let mark = writer.mark();
        let wal = Wal {
            dir: dir.to_owned(),
            opts,
            writer,
            series_rec: Vec::new(),
            samples_rec: Vec::new(),
            exemplars_rec: Vec::new(),
            max_pending,
            mark,
            logged: Vec::new(),
            requeued_series: Vec::new(),
            pending_samples: 0,
            needs_reset: false,
        };
        Ok((wal, state))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written.
    pub fn segment(&self) -> u32 {
        self.writer.segment()
    }

    /// Queues Series entries for new series, written at the next [`commit`](Wal::commit),
    /// before the samples. The caller assigns refs: from 1 (or [`ReplayState::next_ref`]),
    /// growing, never reused.
    pub fn append_series<'l>(
        &mut self,
        series: impl IntoIterator<Item = (SeriesRef, LabelsRef<'l>)>,
    ) -> Result<(), WalError> {
        record::extend_series(&mut self.series_rec, series);
        self.maybe_flush()
    }

    /// Queues samples; one Samples record per commit.
    pub fn append_samples(&mut self, samples: &[RefSample]) -> Result<(), WalError> {
        record::extend_samples(&mut self.samples_rec, samples);
        self.pending_samples += samples.len();
        self.maybe_flush()
    }

    pub fn append_exemplars(&mut self, exemplars: &[RefExemplar]) -> Result<(), WalError> {
        record::extend_exemplars(&mut self.exemplars_rec, exemplars);
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), WalError> {
        if self.series_rec.len() + self.samples_rec.len() + self.exemplars_rec.len()
            > self.max_pending
        {
            self.log_pending()?;
        }
        Ok(())
    }

    /// Logs pending records in the agent's order: Series, Samples, Exemplars.
    fn log_pending(&mut self) -> Result<(), WalError> {
        if self.needs_reset {
            self.writer.reset(&self.mark)?;
            self.needs_reset = false;
        }
        // Series records an aborted commit took back come first, in their order.
        while let Some(rec) = self.requeued_series.first() {
            let end = self.writer.log(rec)?;
            let rec = self.requeued_series.remove(0);
            self.logged.push(Logged {
                end,
                samples: 0,
                series: Some(rec),
            });
        }
        if !self.series_rec.is_empty() {
            let end = self.writer.log(&self.series_rec)?;
            let rec = std::mem::take(&mut self.series_rec);
            self.logged.push(Logged {
                end,
                samples: 0,
                series: Some(rec),
            });
        }
        if !self.samples_rec.is_empty() {
            let end = self.writer.log(&self.samples_rec)?;
            self.samples_rec.clear();
            self.logged.push(Logged {
                end,
                samples: std::mem::take(&mut self.pending_samples),
                series: None,
            });
        }
        if !self.exemplars_rec.is_empty() {
            let end = self.writer.log(&self.exemplars_rec)?;
            self.exemplars_rec.clear();
            self.logged.push(Logged {
                end,
                samples: 0,
                series: None,
            });
        }
        Ok(())
    }

    /// Cleans up after a write failed since the last successful commit (typically ENOSPC).
    /// Records logged since that commit that reached the file whole stay: readers (the
    /// remote_write watchers) may already have read and sent them, and they are as valid as
    /// committed ones. Everything after the last of them is zeroed (page padding to every
    /// reader, so no torn record stays on disk for the reader or the next append, see
    /// [`SegmentWriter::reset`]); the samples and exemplars in it, and those not logged yet,
    /// are dropped (they cannot be made durable), and the Series records in it are queued
    /// again, since their refs are in use: the next commit writes them first. When the zeroing
    /// itself fails, the next commit tries it again before writing.
    pub fn abort(&mut self) -> Result<Aborted, WalError> {
        let written = self.writer.written();
        let whole = self.logged.iter().take_while(|l| l.end <= written).count();
        let mut out = Aborted {
            kept_samples: self.logged[..whole].iter().map(|l| l.samples).sum(),
            dropped_samples: std::mem::take(&mut self.pending_samples),
        };
        if let Some(last) = whole.checked_sub(1).map(|i| self.logged[i].end) {
            self.mark = self.writer.mark_at(last);
        }
        let mut series = Vec::new();
        for l in self.logged.drain(..).skip(whole) {
            out.dropped_samples += l.samples;
            series.extend(l.series);
        }
        series.append(&mut self.requeued_series);
        if !self.series_rec.is_empty() {
            series.push(std::mem::take(&mut self.series_rec));
        }
        self.requeued_series = series;
        self.samples_rec.clear();
        self.exemplars_rec.clear();
        self.needs_reset = true;
        self.writer.reset(&self.mark)?;
        self.needs_reset = false;
        Ok(out)
    }

    /// Writes the pending records to the segment and hands them to the OS (no fsync; see
    /// [`sync`](Wal::sync)). A process crash after `commit` loses nothing; a power loss may
    /// lose what was committed since the last fsync of the disk thread (at most its
    /// `sync_interval` ago; a completed segment as soon as the thread has fsynced it).
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.log_pending()?;
        self.writer.flush()?;
        self.mark = self.writer.mark();
        self.logged.clear();
        Ok(())
    }

    /// Discards pending (uncommitted) samples and exemplars. Like the agent's `Rollback`,
    /// pending Series entries are still logged, because their refs are already handed out.
    pub fn rollback(&mut self) -> Result<(), WalError> {
        self.samples_rec.clear();
        self.exemplars_rec.clear();
        self.commit()
    }

    /// fsyncs everything committed so far (waits for the disk thread).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.writer.sync()
    }

    /// Asks the WAL's disk thread for fsyncs without holding the WAL (see [`sync`]).
    pub fn sync_handle(&self) -> SyncHandle {
        self.writer
            .sync_handle()
            .expect("a WAL's writer has a disk thread")
    }

    /// Truncates the WAL at `cut`: [`start_truncate`](Wal::start_truncate), then
    /// [`Truncation::run`] keeping the Series records that `keep(checkpoint index)` accepts.
    /// Returns `None` when there were too few segments to checkpoint.
    pub fn truncate<K: Fn(SeriesRef) -> bool>(
        &mut self,
        cut: impl Into<Cut>,
        keep: impl FnOnce(u32) -> K,
    ) -> Result<Option<CheckpointStats>, WalError> {
        match self.start_truncate()? {
            None => Ok(None),
            Some(t) => {
                let keep = keep(t.index());
                t.run(cut.into(), keep).map(Some)
            }
        }
    }

    /// The writer's part of a truncation: commits pending records and cuts a new segment.
    /// The checkpoint itself ([`Truncation::run`]) reads and deletes only segments before that
    /// one, so it needs nothing from the writer and runs while commits go on. `None` when
    /// there are too few segments to checkpoint.
    pub fn start_truncate(&mut self) -> Result<Option<Truncation>, WalError> {
        self.commit()?;
        let segs = segment::list_segments(&self.dir)?;
        let (Some(&first), Some(&last)) = (segs.first(), segs.last()) else {
            return Ok(None);
        };
        self.writer.next_segment()?;
        // Nothing is pending after the commit: the new segment's start is the new mark.
        self.mark = self.writer.mark();
        self.logged.clear();
        let Some(cp) = checkpoint::checkpoint_bound(first, last) else {
            return Ok(None);
        };
        Ok(Some(Truncation {
            dir: self.dir.clone(),
            first,
            cp,
            segment_size: self.opts.segment_size,
            compress: self.opts.compress,
        }))
    }
}

/// A checkpoint to write (see [`Wal::start_truncate`]).
#[derive(Debug)]
pub struct Truncation {
    dir: PathBuf,
    first: u32,
    cp: u32,
    segment_size: usize,
    compress: bool,
}

impl Truncation {
    /// The checkpoint's index (its last segment).
    pub fn index(&self) -> u32 {
        self.cp
    }

    /// Checkpoints segments `first..=cp` (see [`checkpoint`]) keeping the Series records
    /// `keep` accepts and the samples at or after `cut`, then deletes those segments and the
    /// older checkpoints.
    pub fn run(
        self,
        cut: Cut,
        keep: impl Fn(SeriesRef) -> bool,
    ) -> Result<CheckpointStats, WalError> {
        let Truncation {
            dir,
            first,
            cp,
            segment_size,
            compress,
        } = self;
        let stats = checkpoint::checkpoint(&dir, first, cp, keep, cut, segment_size, compress)?;
        for s in first..=cp {
            let p = segment::segment_path(&dir, s);
            fs::remove_file(&p).map_err(|e| WalError::io(&p, e))?;
        }
        checkpoint::delete_checkpoints(&dir, cp)?;
        segment::sync_dir(&dir)?;
        tracing::info!(dir = %dir.display(), checkpoint = cp, mint = cut.mint, dropped_series = stats.dropped_series,
            dropped_samples = stats.dropped_samples, "WAL truncated");
        Ok(stats)
    }
}

/// Result of [`replay`].
pub(crate) struct Replayed {
    checkpoint: Option<u32>,
    segments: Option<(u32, u32)>,
    repair: Option<RepairReport>,
}

/// Feeds every record of the last checkpoint and the segments after it to `f`. A corrupt
/// checkpoint is an error; corruption in a segment (fragment level, or a record `f` fails to
/// decode) is repaired: the segment is cut at the end of the last good record and later
/// segments are renamed aside (see [`quarantine`]). Records before the corruption have
/// already been fed, which matches the repaired WAL.
pub(crate) fn replay(
    dir: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), record::RecordError>,
) -> Result<Replayed, WalError> {
    let cp = checkpoint::last_checkpoint(dir)?;
    if let Some((_, cp_dir)) = &cp {
        let mut r = Reader::new(checkpoint::checkpoint_sources(cp_dir)?);
        while r.next_record()? {
            f(r.record()).map_err(|e| r.record_error(e))?;
        }
    }
    let after = cp.as_ref().map(|(i, _)| i.saturating_add(1)).unwrap_or(0);
    let segs: Vec<u32> = segment::list_segments(dir)?
        .into_iter()
        .filter(|&s| s >= after)
        .collect();
    let sources: Vec<SegmentSource> = segs
        .iter()
        .map(|&index| SegmentSource {
            index,
            path: segment::segment_path(dir, index),
        })
        .collect();
    let mut r = Reader::new(sources);
    let mut repair = None;
    loop {
        let res = match r.next_record() {
            Ok(false) => break,
            Ok(true) => f(r.record()).map_err(|e| (r.record_start(), r.record_error(e))),
            Err(e) => Err((r.last_good_end(), e)),
        };
        if let Err((cut_at, err)) = res {
            let WalError::Corrupt {
                segment,
                offset,
                kind,
                ..
            } = &err
            else {
                return Err(err);
            };
            repair = Some(quarantine(
                dir,
                &segs,
                *segment,
                *offset,
                cut_at,
                kind.to_string(),
            )?);
            break;
        }
    }
    Ok(Replayed {
        checkpoint: cp.map(|(i, _)| i),
        segments: segs.first().copied().zip(segs.last().copied()),
        repair,
    })
}

/// Cuts segment `segment` at `cut_at` (zero-padded to its page boundary) and renames every
/// later segment to `<name>.corrupt` (or `.corrupt.N` if taken) so nothing is silently lost.
fn quarantine(
    dir: &Path,
    segs: &[u32],
    segment: u32,
    corrupt_offset: u64,
    cut_at: u64,
    reason: String,
) -> Result<RepairReport, WalError> {
    let path = segment::segment_path(dir, segment);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    let page = PAGE_SIZE as u64;
    f.set_len(cut_at).map_err(|e| WalError::io(&path, e))?;
    f.set_len(cut_at.div_ceil(page) * page)
        .map_err(|e| WalError::io(&path, e))?;
    f.sync_all().map_err(|e| WalError::io(&path, e))?;
    let mut renamed = Vec::new();
    for &s in segs.iter().filter(|&&s| s > segment) {
        let from = segment::segment_path(dir, s);
        let mut to = dir.join(format!("{}.corrupt", segment::segment_name(s)));
        let mut n = 1;
        while to.exists() {
            to = dir.join(format!("{}.corrupt.{n}", segment::segment_name(s)));
            n += 1;
        }
        fs::rename(&from, &to).map_err(|e| WalError::io(&from, e))?;
        renamed.push((from, to));
    }
    segment::sync_dir(dir)?;
    tracing::warn!(dir = %dir.display(), segment, offset = corrupt_offset, truncated_at = cut_at,
        renamed = renamed.len(), reason = %reason, "WAL corruption repaired");
    Ok(RepairReport {
        segment,
        corrupt_offset,
        truncated_at: cut_at,
        reason,
        renamed,
    })
}

/// Checks the WAL in `dir` and repairs it as [`Wal::open`] would, without starting a new
/// segment. Returns what was done, if anything.
pub fn repair(dir: &Path) -> Result<Option<RepairReport>, WalError> {
    let mut samples = Vec::new();
    let mut series = Vec::new();
    let r = replay(dir, |rec| {
        match record::record_type(rec) {
            Some(record::SERIES) => {
                series.clear();
                record::decode_series(rec, &mut series)?;
            }
            Some(record::SAMPLES) => {
                samples.clear();
                record::decode_samples(rec, &mut samples)?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(r.repair)
}

#[cfg(test)]
mod tests;
