//! Tailing a WAL while it is being written (Prometheus's `LiveReader`), for remote_write.
//!
//! The reader keeps `(segment, offset)` of the next unread record. Each [`LiveReader::poll`]
//! reads what the segment holds past that offset and returns the complete records in it; a
//! record whose fragments are not all written yet is left for the next poll (the offset stays
//! at its first fragment). Fragment rules are those of [`super::reader`]: a type byte of 0, or
//! fewer than 7 bytes left in a 32 KiB page, means the rest of the page is padding; each
//! fragment's CRC-32C is checked; Full/First start a record, Middle/Last continue it; the
//! snappy flag of the first fragment says whether the record is compressed.
//!
//! The writer finishes a segment before it creates the next one, so once segment `n + 1`
//! exists, `n` is complete: the reader drains `n` once more and moves on. A segment that
//! vanished (truncated away) makes the reader skip to the first segment that exists.
//!
//! A poll reads at most [`POLL_BUDGET`] bytes of records: what its caller collects per poll
//! (remote_write's watcher: samples and exemplars until it hands them to the queue) stays
//! bounded however far behind the reader is (a receiver that was down for hours, a restart
//! with a backlog). [`LiveReader::caught_up`] says whether the last poll reached the end of
//! what is written.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::segment::{
    segment_path, FLAG_SNAPPY, FLAG_ZSTD, HEADER_SIZE, PAGE_SIZE, REC_FIRST, REC_FULL, REC_LAST,
    REC_MIDDLE, REC_PAGE_TERM, TYPE_MASK,
};

/// Why the tail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("reading WAL segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// The position of the next record to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u32,
    pub offset: u64,
}

/// Tails the segments of one WAL directory.
#[derive(Debug)]
pub struct LiveReader {
    dir: PathBuf,
    pos: Position,
    buf: Vec<u8>,
    record: Vec<u8>,
    decoded: Vec<u8>,
    max_chunk: usize,
    /// Bytes of records one poll reads at most (it stops at the end of the chunk that
    /// reaches it; a chunk is at most `max_chunk`), and those read by the current poll.
    budget: usize,
    used: usize,
    caught_up: bool,
    /// The segment being read, kept open between polls with its file position: tailing the
    /// live segment costs one read of the new bytes (and one that finds the end), not an open,
    /// stat, seek and close per poll. A segment removed by a truncation while open is read to
    /// its end like any complete segment.
    open: Option<OpenSegment>,
}

#[derive(Debug)]
struct OpenSegment {
    segment: u32,
    file: File,
    /// Where the file's read position is.
    at: u64,
}

/// Bytes of WAL records one [`LiveReader::poll`] reads at most (one chunk; more only for a
/// record larger than that): about a million samples.
pub const POLL_BUDGET: usize = 8 << 20;

/// Numbers of the segment files in `dir`, sorted.
pub fn segment_numbers(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl LiveReader {
    /// Starts at `start` (usually the first segment, offset 0).
    pub fn new(dir: &Path, start: Position) -> Self {
        LiveReader {
            dir: dir.to_path_buf(),
            pos: start,
            buf: Vec::new(),
            record: Vec::new(),
            decoded: Vec::new(),
            max_chunk: 8 << 20,
            budget: POLL_BUDGET,
            used: 0,
            caught_up: false,
            open: None,
        }
    }

    /// The same reader with another per-poll budget (tests).
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes.max(1);
        self.max_chunk = self.max_chunk.min(self.budget);
        self
    }

    /// Whether the last poll read everything written (rather than stopping at its budget).
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    /// Reads the complete records available now, up to the budget, and hands each to `f`.
    /// Returns the number of records read; 0 means "caught up, wait for the writer". See
    /// [`LiveReader::caught_up`] for whether more is there already.
    pub fn poll(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, LiveError> {
        let mut total = 0;
        self.used = 0;
        self.caught_up = false;
        loop {
            let path = segment_path(&self.dir, self.pos.segment);
            let (n, full) = match self.read_segment(&path, &mut f) {
                Ok(n) => n,
                Err(LiveError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    // Truncated away (or not created yet): go to the first segment at or after ours.
                    let numbers = segment_numbers(&self.dir).map_err(|source| LiveError::Io {
                        path: self.dir.clone(),
                        source,
                    })?;
                    match numbers.into_iter().find(|&s| s > self.pos.segment) {
                        Some(next) => {
                            self.pos = Position {
                                segment: next,
                                offset: 0,
                            };
                            continue;
                        }
                        None => {
                            self.caught_up = true;
                            return Ok(total);
                        }
                    }
                }
                Err(e) => return Err(e),
            };
            total += n;
            if full {
                return Ok(total);
            }
            // Caught up in this segment: move on only once the next one exists (then this one
            // is complete; read it once more for what was written since).
            if segment_path(&self.dir, self.pos.segment + 1).exists() {
                let (n, full) = self.read_segment(&path, &mut f)?;
                total += n;
                if full {
                    return Ok(total);
                }
                self.pos = Position {
                    segment: self.pos.segment + 1,
                    offset: 0,
                };
                continue;
            }
            self.caught_up = true;
            return Ok(total);
        }
    }

    /// Reads complete records of one segment from the current offset; returns how many, and
    /// whether it stopped because the poll's budget is used up (else: at the end of what is
    /// written).
    fn read_segment(
        &mut self,
        path: &Path,
        f: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, bool), LiveError> {
        let io = |source| LiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        if self
            .open
            .as_ref()
            .is_none_or(|o| o.segment != self.pos.segment)
        {
            self.open = None;
            let file = File::open(path).map_err(io)?;
            self.open = Some(OpenSegment {
                segment: self.pos.segment,
                file,
                at: 0,
            });
        }
        let mut count = 0;
        loop {
            let want = self.max_chunk;
            let Some(open) = self.open.as_mut() else {
                return Ok((count, false));
            };
            if open.at != self.pos.offset {
                open.file
                    .seek(SeekFrom::Start(self.pos.offset))
                    .map_err(io)?;
                open.at = self.pos.offset;
            }
            self.buf.clear();
            self.buf.reserve(want);
            let read = (&mut open.file)
                .take(want as u64)
                .read_to_end(&mut self.buf);
            // On an error the position is unknown: seek next time.
            open.at = u64::MAX;
            let got = read.map_err(io)?;
            open.at = self.pos.offset + got as u64;
            if got == 0 {
                return Ok((count, false));
            }
            let (consumed, n) = self.parse(path, f)?;
            count += n;
            if consumed == 0 {
                if got == want {
                    // One record larger than the chunk: read more next time.
                    self.max_chunk *= 2;
                    continue;
                }
                return Ok((count, false));
            }
            self.pos.offset += consumed as u64;
            self.used += consumed;
            if self.used >= self.budget {
                return Ok((count, true));
            }
            if got < want {
                // Read to the end of what is written; an incomplete record is left for later.
                return Ok((count, false));
            }
        }
    }

    /// Parses `self.buf` (which starts at `self.pos.offset`); returns the bytes consumed (up to
    /// the end of the last complete record, or of trailing padding) and the records read.
    fn parse(
        &mut self,
        path: &Path,
        f: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, usize), LiveError> {
        let base = self.pos.offset as usize;
        let buf = std::mem::take(&mut self.buf);
        let corrupt = |at: usize, reason: String| LiveError::Corrupt {
            path: path.to_path_buf(),
            offset: (base + at) as u64,
            reason,
        };
        let mut p = 0usize;
        let mut consumed = 0usize;
        let mut records = 0usize;
        let mut in_record = false;
        let mut compressed = false;
        self.record.clear();
        let result = loop {
            let abs = base + p;
            let page_end = (abs / PAGE_SIZE + 1) * PAGE_SIZE;
            if page_end - abs < HEADER_SIZE {
                let skip = page_end - abs;
                if p + skip > buf.len() {
                    break Ok(());
                }
                p += skip;
                if !in_record {
                    consumed = p;
                }
                continue;
            }
            let Some(&typ_byte) = buf.get(p) else {
                break Ok(());
            };
            let typ = typ_byte & TYPE_MASK;
            if typ == REC_PAGE_TERM {
                // Padding to the end of the page; only fully written padding is consumed.
                let skip = page_end - abs;
                if p + skip > buf.len() {
                    break Ok(());
                }
                p += skip;
                if !in_record {
                    consumed = p;
                }
                continue;
            }
            if p + HEADER_SIZE > buf.len() {
                break Ok(());
            }
            let len = u16::from_be_bytes([buf[p + 1], buf[p + 2]]) as usize;
            let crc = u32::from_be_bytes([buf[p + 3], buf[p + 4], buf[p + 5], buf[p + 6]]);
            if abs + HEADER_SIZE + len > page_end {
                break Err(corrupt(p, format!("invalid record size {len}")));
            }
            if p + HEADER_SIZE + len > buf.len() {
                break Ok(());
            }
            let payload = &buf[p + HEADER_SIZE..p + HEADER_SIZE + len];
            let got = crc32c::crc32c(payload);
            if got != crc {
                break Err(corrupt(
                    p,
                    format!("unexpected checksum {got:x}, expected {crc:x}"),
                ));
            }
            match (typ, in_record) {
                (REC_FULL, false) | (REC_FIRST, false) => {
                    compressed = typ_byte & FLAG_SNAPPY != 0;
                    if typ_byte & FLAG_ZSTD != 0 {
                        break Err(corrupt(
                            p,
                            "zstd-compressed records are not supported".into(),
                        ));
                    }
                    self.record.clear();
                    self.record.extend_from_slice(payload);
                    in_record = typ == REC_FIRST;
                }
                (REC_MIDDLE, true) | (REC_LAST, true) => {
                    self.record.extend_from_slice(payload);
                    in_record = typ == REC_MIDDLE;
                }
                _ => break Err(corrupt(p, format!("unexpected fragment type {typ}"))),
            }
            p += HEADER_SIZE + len;
            if !in_record {
                let rec: &[u8] = if compressed {
                    match snap::raw::Decoder::new().decompress_vec(&self.record) {
                        Ok(d) => {
                            self.decoded = d;
                            &self.decoded
                        }
                        Err(e) => {
                            break Err(corrupt(p, format!("snappy decompression failed: {e}")))
                        }
                    }
                } else {
                    &self.record
                };
                f(rec);
                records += 1;
                consumed = p;
            }
        };
        self.buf = buf;
        result.map(|()| (consumed, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{Labels, SeriesRef};
    use crate::wal::record;
    use crate::wal::{Wal, WalOptions};

    fn labels(i: u64) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())])
    }

    /// A writer that undoes a failed write (see `SegmentWriter::reset`) after the reader read
    /// part of it: the reader reads on over the zeroed bytes as padding and gets what is
    /// written next.
    #[test]
    fn follows_a_segment_cut_back_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::wal::SegmentWriter::create(dir.path(), 0, 4 * 32 * 1024, false).unwrap();
        let mut reader = LiveReader::new(
            dir.path(),
            Position {
                segment: 0,
                offset: 0,
            },
        );
        let mut seen: Vec<Vec<u8>> = Vec::new();
        // (The reader may see records of a write that is undone afterwards: remote_write
        // then sends samples that are counted as dropped, never the reverse.)
        w.log(b"first").unwrap();
        w.flush().unwrap();
        let mark = w.mark();
        w.log(b"read, then cut away").unwrap();
        w.flush().unwrap();
        reader.poll(|r| seen.push(r.to_vec())).unwrap();
        w.reset(&mark).unwrap();
        w.log(b"after the cut").unwrap();
        w.flush().unwrap();
        reader.poll(|r| seen.push(r.to_vec())).unwrap();
        assert_eq!(
            seen,
            [&b"first"[..], b"read, then cut away", b"after the cut"]
        );
    }

    #[test]
    fn tails_records_as_they_are_committed_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_size: 64 * 1024,
            ..Default::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
        let first = segment_numbers(dir.path()).unwrap()[0];
        let mut reader = LiveReader::new(
            dir.path(),
            Position {
                segment: first,
                offset: 0,
            },
        );
        let mut seen_series = 0usize;
        let mut seen_samples = 0usize;
        let count = |r: &[u8], s: &mut usize, x: &mut usize| match record::record_type(r) {
            Some(record::SERIES) => {
                let mut out = Vec::new();
                record::decode_series(r, &mut out).unwrap();
                *s += out.len();
            }
            Some(record::SAMPLES) => {
                let mut out = Vec::new();
                record::decode_samples(r, &mut out).unwrap();
                *x += out.len();
            }
            _ => {}
        };
        assert_eq!(
            reader
                .poll(|r| count(r, &mut seen_series, &mut seen_samples))
                .unwrap(),
            0
        );
        let mut next_ref = 0;
        for round in 0..40i64 {
            let mut series = Vec::new();
            for _ in 0..200 {
                next_ref += 1;
                series.push((SeriesRef(next_ref), labels(next_ref)));
            }
            wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
                .unwrap();
            let samples: Vec<_> = series
                .iter()
                .map(|(r, _)| (*r, round * 1000, round as f64))
                .collect();
            wal.append_samples(&samples).unwrap();
            wal.commit().unwrap();
            reader
                .poll(|r| count(r, &mut seen_series, &mut seen_samples))
                .unwrap();
            assert_eq!(seen_series, (round as usize + 1) * 200);
            assert_eq!(seen_samples, (round as usize + 1) * 200);
        }
        assert!(
            reader.position().segment > first,
            "crossed into later segments"
        );
        assert_eq!(next_ref, 8000);
    }

    /// However far behind the reader is, one poll reads about its budget, not everything
    /// written: what a caller collects per poll stays bounded; the polls that follow read the
    /// rest, each record once and in order.
    #[test]
    fn a_poll_reads_at_most_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_size: 256 * 1024,
            ..Default::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
        let first = segment_numbers(dir.path()).unwrap()[0];
        let mut next_ref = 0;
        for round in 0..200i64 {
            let mut series = Vec::new();
            for _ in 0..50 {
                next_ref += 1;
                series.push((SeriesRef(next_ref), labels(next_ref)));
            }
            wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
                .unwrap();
            let samples: Vec<_> = series
                .iter()
                .map(|(r, _)| (*r, round * 1000, round as f64))
                .collect();
            wal.append_samples(&samples).unwrap();
            wal.commit().unwrap();
        }
        let written: u64 = segment_numbers(dir.path())
            .unwrap()
            .iter()
            .map(|&s| {
                std::fs::metadata(segment_path(dir.path(), s))
                    .unwrap()
                    .len()
            })
            .sum();
        let budget = 16 * 1024;
        let mut reader = LiveReader::new(
            dir.path(),
            Position {
                segment: first,
                offset: 0,
            },
        )
        .with_budget(budget);
        let mut refs = Vec::new();
        let mut polls = 0;
        loop {
            let before = reader.position();
            let mut bytes = 0;
            let n = reader
                .poll(|r| {
                    bytes += r.len();
                    if record::record_type(r) == Some(record::SERIES) {
                        let mut out = Vec::new();
                        record::decode_series(r, &mut out).unwrap();
                        refs.extend(out.into_iter().map(|(r, _)| r.0));
                    }
                })
                .unwrap();
            polls += 1;
            // Records are compressed on disk at most as much as they are decoded here; one
            // chunk past the budget at most.
            assert!(
                bytes <= 8 * budget,
                "poll {polls} from {before:?} handed {bytes} bytes for a budget of {budget}"
            );
            if reader.caught_up() {
                assert!(n == 0 || polls > 1);
                break;
            }
            assert!(n > 0, "a poll that stopped at its budget read something");
        }
        assert!(
            polls as u64 >= written / (2 * budget as u64),
            "{polls} polls for {written} bytes"
        );
        assert_eq!(refs, (1..=next_ref).collect::<Vec<u64>>());
        assert_eq!(reader.poll(|_| {}).unwrap(), 0);
        assert!(reader.caught_up());
    }

    #[test]
    fn a_torn_tail_is_waited_for_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let l = labels(1);
        wal.append_series([(SeriesRef(1), l.as_view())]).unwrap();
        wal.commit().unwrap();
        let seg = segment_numbers(dir.path()).unwrap()[0];
        let path = segment_path(dir.path(), seg);
        let full = std::fs::read(&path).unwrap();
        // Simulate a writer caught mid-record: only part of the record is on disk.
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let mut reader = LiveReader::new(
            dir.path(),
            Position {
                segment: seg,
                offset: 0,
            },
        );
        assert_eq!(reader.poll(|_| {}).unwrap(), 0);
        std::fs::write(&path, &full).unwrap();
        assert_eq!(reader.poll(|_| {}).unwrap(), 1);
    }
}
