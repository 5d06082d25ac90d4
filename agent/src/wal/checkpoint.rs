//! Checkpoints and the truncation policy (Prometheus `wlog/checkpoint.go`, agent
//! `instance.truncateLoop`).
//!
//! A checkpoint `checkpoint.NNNNNNNN` is itself a WAL directory (segments from `00000000`)
//! holding what is still needed from the previous checkpoint and segments `from..=NNNNNNNN`:
//! Series entries whose ref the caller keeps, and Samples, Exemplars and Tombstones at or
//! after `mint` (Tombstones also need a kept ref); Metadata of kept series is carried over,
//! other record types are dropped. It is written to `checkpoint.NNNNNNNN.tmp`, fsynced, then
//! renamed, so a crash leaves either the old state or a `.tmp` that readers ignore (the name
//! does not parse as a number) and the next checkpoint removes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{Reader, SegmentSource};
use super::record::{self, RefExemplar, RefMetadata, RefSample, Tombstone};
use super::segment::{self, list_segments, sync_dir, SegmentWriter};
use super::WalError;
use crate::labels::SeriesRef;

pub const CHECKPOINT_PREFIX: &str = "checkpoint.";

/// `checkpoint.%08d`.
pub fn checkpoint_name(index: u32) -> String {
    format!("{CHECKPOINT_PREFIX}{index:08}")
}

/// All `checkpoint.N` directories in `dir`, sorted by N. A non-directory with such a name is
/// an error (as in Prometheus); `checkpoint.N.tmp` is ignored.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u32, PathBuf)>, WalError> {
    let mut v = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let ent = ent.map_err(|e| WalError::io(dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_prefix(CHECKPOINT_PREFIX) else {
            continue;
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(idx) = num.parse::<u32>() else {
            continue;
        };
        let path = ent.path();
        if !path.is_dir() {
            return Err(WalError::CheckpointNotDir(path));
        }
        v.push((idx, path));
    }
    v.sort_unstable_by_key(|(i, _)| *i);
    Ok(v)
}

/// The highest-numbered checkpoint, if any.
pub fn last_checkpoint(dir: &Path) -> Result<Option<(u32, PathBuf)>, WalError> {
    Ok(list_checkpoints(dir)?.pop())
}

/// Deletes checkpoints with index `< max_index` and stale `.tmp` directories below it.
pub fn delete_checkpoints(dir: &Path, max_index: u32) -> Result<(), WalError> {
    for (i, p) in list_checkpoints(dir)? {
        if i < max_index {
            fs::remove_dir_all(&p).map_err(|e| WalError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Segment sources of a checkpoint directory (its own `00000000`…).
pub fn checkpoint_sources(cp_dir: &Path) -> Result<Vec<SegmentSource>, WalError> {
    Ok(list_segments(cp_dir)?
        .into_iter()
        .map(|index| SegmentSource {
            index,
            path: segment::segment_path(cp_dir, index),
        })
        .collect())
}

/// What a checkpoint kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub index: u32,
    pub dropped_series: u64,
    pub dropped_samples: u64,
    pub dropped_exemplars: u64,
    pub dropped_tombstones: u64,
    pub total_series: u64,
    pub total_samples: u64,
    /// Of `dropped_samples`, those newer than [`Cut::sent_up_to`]: samples remote_write had
    /// not sent by its watermark when the truncation removed them. An upper bound of what is
    /// lost: some may already sit in a queue. Zero without a watermark.
    pub dropped_unsent_samples: u64,
    /// The refs whose Series records the checkpoint did not keep: series that readers of the
    /// WAL (remote_write) can forget once they have read past the checkpoint, since no later
    /// record refers to them.
    pub dropped_refs: Vec<SeriesRef>,
}

/// The series each checkpoint dropped, for the WAL's readers: a chain of events that the
/// writer extends and each reader follows at its own pace. A reader that has read past segment
/// [`checkpoint`](DroppedSeries::checkpoint) will meet no record of [`refs`](DroppedSeries::refs)
/// again and can forget them (Prometheus's readers do the same by re-reading each checkpoint).
/// Each event holds the next one, so an event every reader has moved past is freed.
#[derive(Debug, Default)]
pub struct DroppedSeries {
    pub checkpoint: u32,
    pub refs: Vec<SeriesRef>,
    next: std::sync::OnceLock<std::sync::Arc<DroppedSeries>>,
}

impl DroppedSeries {
    /// The event after this one, once the writer has appended it.
    pub fn next(&self) -> Option<&std::sync::Arc<DroppedSeries>> {
        self.next.get()
    }

    /// Appends the event of checkpoint `checkpoint` after `self` (the current last event) and
    /// returns it, the new last event.
    pub fn append(&self, checkpoint: u32, refs: Vec<SeriesRef>) -> std::sync::Arc<DroppedSeries> {
        let next = std::sync::Arc::new(DroppedSeries {
            checkpoint,
            refs,
            next: std::sync::OnceLock::new(),
        });
        // Only the writer appends, always at the last event, which has no next yet.
        let _ = self.next.set(next.clone());
        next
    }
}

/// Where a truncation cuts: samples (and exemplars, tombstones) before `mint` are dropped.
/// `sent_up_to` is remote_write's watermark (the lowest `lowest_sent_timestamp` of the
/// endpoints), used only to count the dropped samples that were not sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub mint: i64,
    pub sent_up_to: Option<i64>,
}

impl From<i64> for Cut {
    fn from(mint: i64) -> Cut {
        Cut {
            mint,
            sent_up_to: None,
        }
    }
}

/// Writes `checkpoint.<to>` from the previous checkpoint (if any) and segments `from..=to`
/// of `dir`. `from` must not leave a gap after the previous checkpoint.
pub fn checkpoint(
    dir: &Path,
    from: u32,
    to: u32,
    keep: impl Fn(SeriesRef) -> bool,
    cut: Cut,
    segment_size: usize,
    compress: bool,
) -> Result<CheckpointStats, WalError> {
    let mint = cut.mint;
    let unsent_after = cut.sent_up_to.unwrap_or(i64::MAX);
    let mut sources = Vec::new();
    let mut from = from;
    if let Some((idx, cp_dir)) = last_checkpoint(dir)? {
        if from > idx + 1 {
            return Err(WalError::CheckpointGap {
                expected: idx + 1,
                requested: from,
            });
        }
        // Segments at or below the last checkpoint are already in it.
        from = idx + 1;
        sources.extend(checkpoint_sources(&cp_dir)?);
    }
    for index in from..=to {
        let path = segment::segment_path(dir, index);
        if !path.exists() {
            return Err(WalError::MissingSegment(path));
        }
        sources.push(SegmentSource { index, path });
    }

    let final_dir = dir.join(checkpoint_name(to));
    let tmp_dir = dir.join(format!("{}.tmp", checkpoint_name(to)));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| WalError::io(&tmp_dir, e))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(|e| WalError::io(&tmp_dir, e))?;
    let mut w = SegmentWriter::create(&tmp_dir, 0, segment_size, compress)?;

    let mut stats = CheckpointStats {
        index: to,
        ..Default::default()
    };
    let mut reader = Reader::new(sources);
    let mut out = Vec::new();
    let mut samples: Vec<RefSample> = Vec::new();
    let mut exemplars: Vec<RefExemplar> = Vec::new();
    let mut tombstones: Vec<Tombstone> = Vec::new();
    let mut metadata: Vec<RefMetadata> = Vec::new();
    let mut latest_meta: std::collections::HashMap<SeriesRef, RefMetadata> = Default::default();
    while reader.next_record()? {
        let rec = reader.record();
        out.clear();
        match record::record_type(rec) {
            Some(record::SERIES) => {
                let mut kept = Vec::new();
                for e in record::series_iter(rec).map_err(|e| reader.record_error(e))? {
                    let (r, l) = e.map_err(|e| reader.record_error(e))?;
                    stats.total_series += 1;
                    if keep(r) {
                        kept.push((r, l));
                    } else {
                        stats.dropped_series += 1;
                        stats.dropped_refs.push(r);
                    }
                }
                if !kept.is_empty() {
                    record::extend_series(&mut out, kept);
                }
            }
            Some(record::SAMPLES) => {
                samples.clear();
                record::decode_samples(rec, &mut samples).map_err(|e| reader.record_error(e))?;
                stats.total_samples += samples.len() as u64;
                let before = samples.len();
                let mut unsent = 0u64;
                samples.retain(|s| {
                    let keep = s.1 >= mint;
                    if !keep && s.1 > unsent_after {
                        unsent += 1;
                    }
                    keep
                });
                stats.dropped_samples += (before - samples.len()) as u64;
                stats.dropped_unsent_samples += unsent;
                record::extend_samples(&mut out, &samples);
            }
            Some(record::EXEMPLARS) => {
                exemplars.clear();
                record::decode_exemplars(rec, &mut exemplars)
                    .map_err(|e| reader.record_error(e))?;
                let before = exemplars.len();
                exemplars.retain(|e| e.t >= mint);
                stats.dropped_exemplars += (before - exemplars.len()) as u64;
                record::extend_exemplars(&mut out, &exemplars);
            }
            Some(record::TOMBSTONES) => {
                tombstones.clear();
                record::decode_tombstones(rec, &mut tombstones)
                    .map_err(|e| reader.record_error(e))?;
                let before = tombstones.len();
                tombstones.retain(|t| t.maxt >= mint && keep(t.series_ref));
                stats.dropped_tombstones += (before - tombstones.len()) as u64;
                if !tombstones.is_empty() {
                    record::encode_tombstones(&mut out, &tombstones);
                }
            }
            Some(record::METADATA) => {
                metadata.clear();
                record::decode_metadata(rec, &mut metadata).map_err(|e| reader.record_error(e))?;
                for m in metadata.drain(..) {
                    if keep(m.series_ref) {
                        latest_meta.insert(m.series_ref, m);
                    }
                }
            }
            // Unknown or unsupported record types are dropped, as Prometheus does.
            _ => {}
        }
        if !out.is_empty() {
            w.log(&out)?;
        }
    }
    if !latest_meta.is_empty() {
        let mut v: Vec<RefMetadata> = latest_meta.into_values().collect();
        v.sort_by_key(|m| m.series_ref);
        record::encode_metadata(&mut out, &v);
        w.log(&out)?;
    }
    w.close()?;
    sync_dir(&tmp_dir)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(|e| WalError::io(&final_dir, e))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| WalError::io(&final_dir, e))?;
    sync_dir(dir)?;
    Ok(stats)
}

/// The checkpoint upper bound for segments `first..=last` (where `last` is the segment that
/// was current before the cut): `first + (last-1-first)*2/3`, or `None` when that leaves
/// nothing worth checkpointing (`last-1 < 0` or the bound is not above `first`).
pub fn checkpoint_bound(first: u32, last: u32) -> Option<u32> {
    let (first, last) = (i64::from(first), i64::from(last) - 1);
    if last < 0 {
        return None;
    }
    let cp = first + (last - first) * 2 / 3;
    if cp <= first {
        return None;
    }
    u32::try_from(cp).ok()
}

/// The timestamp to truncate the WAL at (the agent's `truncateLoop`):
/// `lowest_sent - min_wal_time` (or `now - min_wal_time` when there is no remote_write,
/// `lowest_sent_ms == None`), clamped to ≥ 0, then moved forward to `now - max_wal_time` if it
/// is older. Returns `None` when the result equals `previous` (the agent skips truncation when
/// the remote_write timestamp has not moved).
pub fn truncation_point(
    lowest_sent_ms: Option<i64>,
    now_ms: i64,
    min_wal_time: Duration,
    max_wal_time: Duration,
    previous: Option<i64>,
) -> Option<i64> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let base = lowest_sent_ms.unwrap_or(now_ms);
    let mut ts = base.saturating_sub(ms(min_wal_time)).max(0);
    let floor = now_ms.saturating_sub(ms(max_wal_time));
    if ts < floor {
        ts = floor;
    }
    if previous == Some(ts) {
        return None;
    }
    Some(ts)
}

/// Whether [`truncation_point`] moves the cut forward to `now - max_wal_time` past the
/// remote_write watermark: `lowest_sent - min_wal_time < now - max_wal_time` (after the same
/// clamp to ≥ 0). Then samples after `lowest_sent` may be truncated before they are sent:
/// lost by design (the WAL must not grow without bound while a receiver is down), and counted
/// with [`CheckpointStats::dropped_unsent_samples`]. Never without remote_write.
pub fn clamped_by_max_wal_time(
    lowest_sent_ms: Option<i64>,
    now_ms: i64,
    min_wal_time: Duration,
    max_wal_time: Duration,
) -> bool {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let Some(lowest) = lowest_sent_ms else {
        return false;
    };
    lowest.saturating_sub(ms(min_wal_time)).max(0) < now_ms.saturating_sub(ms(max_wal_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(5 * 60);
    const MAX: Duration = Duration::from_secs(4 * 3600);

    #[test]
    fn truncation_point_policy() {
        let now = 10 * 3600 * 1000;
        // lowest sent - min_wal_time
        assert_eq!(
            truncation_point(Some(now - 60_000), now, MIN, MAX, None),
            Some(now - 60_000 - 300_000)
        );
        // no remote_write: now - min_wal_time
        assert_eq!(
            truncation_point(None, now, MIN, MAX, None),
            Some(now - 300_000)
        );
        // remote_write stuck long ago: clamped forward to now - max_wal_time
        assert_eq!(
            truncation_point(Some(1000), now, MIN, MAX, None),
            Some(now - 4 * 3600 * 1000)
        );
        // clamp to >= 0 (then the max_wal_time floor is negative, so 0 stays)
        assert_eq!(truncation_point(Some(1000), 2000, MIN, MAX, None), Some(0));
        // unchanged -> skip
        assert_eq!(
            truncation_point(None, now, MIN, MAX, Some(now - 300_000)),
            None
        );
        assert_eq!(
            truncation_point(None, now, MIN, MAX, Some(now - 300_001)),
            Some(now - 300_000)
        );
    }

    #[test]
    fn clamp_decision_matches_truncation_point() {
        let now = 10 * 3600 * 1000;
        let max_ms = 4 * 3600 * 1000;
        // Up to date: lowest - min is well after now - max.
        assert!(!clamped_by_max_wal_time(Some(now - 60_000), now, MIN, MAX));
        // No remote_write: never clamped, nothing unsent.
        assert!(!clamped_by_max_wal_time(None, now, MIN, MAX));
        // Stuck for longer than max_wal_time - min_wal_time: clamped.
        let stuck = now - max_ms;
        assert!(clamped_by_max_wal_time(Some(stuck), now, MIN, MAX));
        // The boundary: lowest - min == now - max is not clamped.
        let edge = now - max_ms + 300_000;
        assert!(!clamped_by_max_wal_time(Some(edge), now, MIN, MAX));
        assert!(clamped_by_max_wal_time(Some(edge - 1), now, MIN, MAX));
        // The decision agrees with the point: clamped iff the point is now - max and not
        // lowest - min.
        for lowest in [0, stuck, edge - 1, edge, edge + 1, now - 60_000, now] {
            let point = truncation_point(Some(lowest), now, MIN, MAX, None).expect("point");
            let unclamped = (lowest - 300_000).max(0);
            assert_eq!(
                clamped_by_max_wal_time(Some(lowest), now, MIN, MAX),
                point != unclamped,
                "lowest {lowest}"
            );
        }
    }

    #[test]
    fn checkpoint_bound_matches_prometheus() {
        assert_eq!(checkpoint_bound(0, 0), None); // no completed segment
        assert_eq!(checkpoint_bound(0, 1), None);
        assert_eq!(checkpoint_bound(0, 2), None); // (1-0)*2/3 = 0
        assert_eq!(checkpoint_bound(0, 3), Some(1));
        assert_eq!(checkpoint_bound(0, 10), Some(6));
        assert_eq!(checkpoint_bound(5, 9), Some(7));
    }
}
