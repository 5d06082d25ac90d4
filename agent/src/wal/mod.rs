//! Write-ahead log in Prometheus's on-disk format (`tsdb/wlog` + `tsdb/record`), written the
//! way Grafana Agent's `static/metrics/wal` does: per commit one Series record (new series
//! only), one Samples record, one Exemplars record; snappy per record; checkpoints on
//! truncation. Segment and fragment format: [`segment`]; record bodies: [`record`]; reading:
//! [`reader`]; checkpoints and the truncation policy: [`checkpoint`]; `agentctl wal inspect`
//! data: [`inspect`].
//!
//! Memory: the WAL keeps, per active series, only `ref -> last appended timestamp` (16 bytes
//! in a hash table, about 20–37 bytes with table overhead). Label sets are owned by the scrape
//! side, which needs them anyway for its `labels -> ref` cache; [`Wal::open`] hands them over
//! once in [`ReplayState`]. Checkpoints re-read label sets from disk rather than keeping them
//! in memory.

pub mod checkpoint;
pub mod inspect;
pub mod labels;
pub mod live;
pub mod reader;
pub mod record;
pub mod segment;

use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};

pub use checkpoint::{clamped_by_max_wal_time, truncation_point, CheckpointStats, Cut};
pub use labels::{Labels, LabelsRef};
pub use reader::{Corruption, Reader, SegmentSource};
pub use record::{RefExemplar, RefSample};
pub use segment::{SegmentWriter, DEFAULT_SEGMENT_SIZE, PAGE_SIZE};

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
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            compress: true,
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
    pub series: Vec<(u64, Labels)>,
    /// Samples replayed (all, including those of unknown refs).
    pub samples: u64,
    pub exemplars: u64,
    /// Samples whose ref had no Series record before them.
    pub unknown_refs: u64,
    /// The ref the WAL will hand out next (one past the highest seen).
    pub next_ref: u64,
    pub checkpoint: Option<u32>,
    /// First and last segment replayed.
    pub segments: Option<(u32, u32)>,
    pub repair: Option<RepairReport>,
}

/// Hash for series refs: a multiply keeps sequential refs spread over hashbrown's buckets
/// (low bits) and control bytes (high bits) at a fraction of SipHash's cost.
#[derive(Default)]
struct RefHasher(u64);

impl Hasher for RefHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type RefMap<V> = HashMap<u64, V, BuildHasherDefault<RefHasher>>;

/// Flush pending records early once one reaches this size, so a huge scrape never builds a
/// record larger than a segment.
const MAX_PENDING_RECORD: usize = 4 << 20;

/// The write-ahead log of one instance. Batch-oriented: the scrape side appends a scrape's
/// new series and samples, then calls [`commit`](Wal::commit) once.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    writer: SegmentWriter,
    /// Active series: ref -> timestamp of the last appended sample (`i64::MIN` if none yet).
    series: RefMap<i64>,
    /// Series removed by [`gc`](Wal::gc): ref -> segment current at removal. A checkpoint keeps
    /// their Series record while samples of them may still be in later segments.
    deleted: RefMap<u32>,
    next_ref: u64,
    series_rec: Vec<u8>,
    samples_rec: Vec<u8>,
    exemplars_rec: Vec<u8>,
    max_pending: usize,
    /// Where the last successful commit left the writer.
    mark: segment::WriterMark,
    /// Series records logged since `mark`: a failed commit puts them back to be logged again
    /// (their refs are handed out and in use).
    series_since_mark: Vec<Vec<u8>>,
    /// An [`abort`](Wal::abort) could not zero the failed write's bytes yet.
    needs_reset: bool,
    /// Samples appended since `mark` (what an abort drops).
    samples_since_mark: usize,
    /// Series records taken back by [`abort`](Wal::abort), logged first by the next commit.
    requeued_series: Vec<Vec<u8>>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: repairs a corrupt tail, replays the last
    /// checkpoint and the segments after it, pads the last segment to a page boundary and
    /// starts writing a new segment after it (as Prometheus does on open).
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, ReplayState), WalError> {
        fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let mut state = ReplayState::default();
        let mut all: HashMap<u64, Labels> = HashMap::new();
        let mut last_ts: RefMap<i64> = RefMap::default();
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
                        max_ref = max_ref.max(r);
                        last_ts.entry(r).or_insert(i64::MIN);
                        all.insert(r, l);
                    }
                }
                Some(record::SAMPLES) => {
                    samples.clear();
                    record::decode_samples(rec, &mut samples)?;
                    state.samples += samples.len() as u64;
                    for &(r, t, _) in &samples {
                        match last_ts.get_mut(&r) {
                            Some(ts) => *ts = (*ts).max(t),
                            None => state.unknown_refs += 1,
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
        let mut series: Vec<(u64, Labels)> = all.into_iter().collect();
        series.sort_unstable_by_key(|(r, _)| *r);
        state.series = series;
        state.next_ref = max_ref + 1;

        let segs = segment::list_segments(dir)?;
        let mut next = 0u32;
        if let Some(&last) = segs.last() {
            segment::pad_to_page(&segment::segment_path(dir, last))?;
            next = last + 1;
        }
        if let Some(cp) = rep.checkpoint {
            next = next.max(cp + 1);
        }
        let writer = SegmentWriter::create(dir, next, opts.segment_size, opts.compress)?;
        let max_pending = MAX_PENDING_RECORD.min(opts.segment_size / 4);
        let mark = writer.mark();
        let wal = Wal {
            dir: dir.to_owned(),
            opts,
            writer,
            series: last_ts,
            deleted: RefMap::default(),
            next_ref: state.next_ref,
            series_rec: Vec::new(),
            samples_rec: Vec::new(),
            exemplars_rec: Vec::new(),
            max_pending,
            mark,
            series_since_mark: Vec::new(),
            requeued_series: Vec::new(),
            samples_since_mark: 0,
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

    /// Allocates a new series ref. Refs start at 1, only grow, and continue after a restart.
    pub fn alloc_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    /// Queues Series entries for new series (refs from [`alloc_ref`](Wal::alloc_ref)).
    /// Written at the next [`commit`](Wal::commit), before the samples.
    pub fn append_series(&mut self, series: &[(u64, Labels)]) -> Result<(), WalError> {
        record::extend_series(
            &mut self.series_rec,
            series.iter().map(|(r, l)| (*r, l.as_ref())),
        );
        for (r, _) in series {
            self.series.entry(*r).or_insert(i64::MIN);
            self.deleted.remove(r);
            if *r >= self.next_ref {
                self.next_ref = *r + 1;
            }
        }
        self.maybe_flush()
    }

    /// Queues samples; one Samples record per commit.
    pub fn append_samples(&mut self, samples: &[RefSample]) -> Result<(), WalError> {
        record::extend_samples(&mut self.samples_rec, samples);
        self.samples_since_mark += samples.len();
        for &(r, t, _) in samples {
            if let Some(ts) = self.series.get_mut(&r) {
                if t > *ts {
                    *ts = t;
                }
            }
        }
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
        while !self.requeued_series.is_empty() {
            let rec = self.requeued_series.remove(0);
            self.series_since_mark.push(rec);
            if let Some(rec) = self.series_since_mark.last() {
                self.writer.log(rec)?;
            }
        }
        if !self.series_rec.is_empty() {
            self.series_since_mark.push(self.series_rec.clone());
        }
        for buf in [
            &mut self.series_rec,
            &mut self.samples_rec,
            &mut self.exemplars_rec,
        ] {
            if !buf.is_empty() {
                self.writer.log(buf)?;
                buf.clear();
            }
        }
        Ok(())
    }

    /// Undoes everything written since the last successful commit after a write failed
    /// (typically ENOSPC): what reached the segment since is zeroed (page padding to every
    /// reader, so no torn record stays on disk for the reader or the next append, see
    /// [`SegmentWriter::reset`]), pending samples and exemplars are dropped (they cannot be
    /// made durable; their number is returned) and the Series records since that commit are
    /// queued again, since their refs are in use: the next commit writes them first. When the
    /// zeroing itself fails, the next commit tries it again before writing.
    pub fn abort(&mut self) -> Result<usize, WalError> {
        let dropped = std::mem::take(&mut self.samples_since_mark);
        self.samples_rec.clear();
        self.exemplars_rec.clear();
        let mut series = std::mem::take(&mut self.series_since_mark);
        if !self.series_rec.is_empty() {
            series.push(std::mem::take(&mut self.series_rec));
        }
        self.requeued_series = series;
        self.needs_reset = true;
        self.writer.reset(&self.mark)?;
        self.needs_reset = false;
        Ok(dropped)
    }

    /// Writes the pending records to the segment and hands them to the OS (no fsync; see
    /// [`sync`](Wal::sync)). A process crash after `commit` loses nothing; a power loss may
    /// lose what was committed since the last `sync`.
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.log_pending()?;
        self.writer.flush()?;
        self.mark = self.writer.mark();
        self.series_since_mark.clear();
        self.samples_since_mark = 0;
        Ok(())
    }

    /// Discards pending (uncommitted) samples and exemplars. Like the agent's `Rollback`,
    /// pending Series entries are still logged, because their refs are already handed out.
    pub fn rollback(&mut self) -> Result<(), WalError> {
        self.samples_rec.clear();
        self.exemplars_rec.clear();
        self.commit()
    }

    /// fsyncs everything committed so far.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.writer.sync()
    }

    /// Number of active series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Heap bytes of the per-series tables (hashbrown: one control byte plus the entry per
    /// bucket, buckets = capacity rounded up to a power of two ÷ 7/8).
    pub fn series_heap_bytes(&self) -> usize {
        fn table<V>(m: &RefMap<V>) -> usize {
            let cap = m.capacity();
            if cap == 0 {
                return 0;
            }
            let buckets = if cap < 8 {
                (cap + 1).next_power_of_two()
            } else {
                (cap * 8 / 7).next_power_of_two()
            };
            buckets * (std::mem::size_of::<(u64, V)>() + 1) + 16
        }
        table(&self.series) + table(&self.deleted)
    }

    /// Removes series whose last sample is older than `mint` from the active set (they can be
    /// re-created later with a new ref). Returns the removed refs.
    pub fn gc(&mut self, mint: i64) -> Vec<u64> {
        let seg = self.writer.segment();
        let mut removed = Vec::new();
        self.series.retain(|r, ts| {
            let keep = *ts >= mint;
            if !keep {
                removed.push(*r);
            }
            keep
        });
        for r in &removed {
            self.deleted.insert(*r, seg);
        }
        removed
    }

    /// Truncates the WAL at `mint` with the caller's `keep(ref)` (see [`checkpoint`]): commits
    /// pending records, cuts a new segment, checkpoints the lower two thirds of the older
    /// segments, deletes the segments and older checkpoints it covers. Returns `None` when
    /// there were too few segments to checkpoint.
    pub fn truncate(
        &mut self,
        mint: i64,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Option<CheckpointStats>, WalError> {
        self.truncate_with(mint.into(), |r, _| keep(r))
    }

    /// [`gc`](Wal::gc) then truncate, keeping series that are active, or were removed while a
    /// segment after the checkpoint was current (their samples are still in the WAL). This is
    /// the agent's own policy.
    pub fn gc_and_truncate(&mut self, mint: i64) -> Result<Option<CheckpointStats>, WalError> {
        self.gc_and_truncate_at(mint.into())
    }

    /// [`gc_and_truncate`](Wal::gc_and_truncate) at `cut.mint`, also counting the dropped
    /// samples newer than `cut.sent_up_to` ([`CheckpointStats::dropped_unsent_samples`]).
    pub fn gc_and_truncate_at(&mut self, cut: Cut) -> Result<Option<CheckpointStats>, WalError> {
        let mint = cut.mint;
        self.gc(mint);
        let res = {
            let series = std::mem::take(&mut self.series);
            let deleted = std::mem::take(&mut self.deleted);
            let r = self.truncate_with(cut, |r, cp| {
                series.contains_key(&r) || deleted.get(&r).is_some_and(|&seg| seg > cp)
            });
            self.series = series;
            self.deleted = deleted;
            r
        };
        if let Ok(Some(stats)) = &res {
            let cp = stats.index;
            self.deleted.retain(|_, seg| *seg > cp);
        }
        res
    }

    fn truncate_with(
        &mut self,
        cut: Cut,
        keep: impl Fn(u64, u32) -> bool,
    ) -> Result<Option<CheckpointStats>, WalError> {
        self.commit()?;
        let segs = segment::list_segments(&self.dir)?;
        let (Some(&first), Some(&last)) = (segs.first(), segs.last()) else {
            return Ok(None);
        };
        self.writer.next_segment()?;
        // Nothing is pending after the commit: the new segment's start is the new mark.
        self.mark = self.writer.mark();
        self.series_since_mark.clear();
        self.samples_since_mark = 0;
        let Some(cp) = checkpoint::checkpoint_bound(first, last) else {
            return Ok(None);
        };
        let stats = checkpoint::checkpoint(
            &self.dir,
            first,
            cp,
            |r| keep(r, cp),
            cut,
            self.opts.segment_size,
            self.opts.compress,
        )?;
        for s in segs.iter().copied().filter(|&s| s <= cp) {
            let p = segment::segment_path(&self.dir, s);
            fs::remove_file(&p).map_err(|e| WalError::io(&p, e))?;
        }
        checkpoint::delete_checkpoints(&self.dir, cp)?;
        segment::sync_dir(&self.dir)?;
        tracing::info!(dir = %self.dir.display(), checkpoint = cp, mint = cut.mint, dropped_series = stats.dropped_series,
            dropped_samples = stats.dropped_samples, "WAL truncated");
        Ok(Some(stats))
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
    let after = cp.as_ref().map(|(i, _)| i + 1).unwrap_or(0);
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
