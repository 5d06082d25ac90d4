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
//!
//! The read buffer follows what the polls need: it starts at [`MIN_CHUNK`], doubles while reads
//! fill it (a backlog: up to the budget; one record larger than that: until it fits), and is
//! given back once the reader has tailed for [`SIZING_WINDOW`] to 2 x that many + 1 caught-up
//! polls that each needed at most a quarter of it (then it is sized to twice their largest
//! read). So an instance that resent a large WAL after a restart does not keep an 8 MiB buffer
//! for its life, while a caught-up reader whose tails stay about the same size keeps its
//! buffer from poll to poll: it grows only when a read fills it and shrinks only 4x below
//! need. The buffers of the record being assembled and decompressed follow the same rule.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::segment::{
    decompress_record, segment_path, FLAG_SNAPPY, FLAG_ZSTD, HEADER_SIZE, PAGE_SIZE, REC_FIRST,
    REC_FULL, REC_LAST, REC_MIDDLE, REC_PAGE_TERM, TYPE_MASK,
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
    /// Bytes one read asks for: from [`MIN_CHUNK`], doubled while reads fill it, up to
    /// `max_chunk` (beyond it only for a record that does not fit).
    chunk: usize,
    max_chunk: usize,
    /// What the polls of this sizing window and of the one before needed (see the module docs).
    needs: Needs,
    needs_before: Needs,
    window_polls: u32,
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

/// The read size a reader starts with and never shrinks below: a few seconds of commits of an
/// instance with tens of thousands of series.
pub const MIN_CHUNK: usize = 64 << 10;

/// Caught-up polls per sizing window (see the module docs): a buffer is given back at the
/// latest 2 x this many + 1 caught-up polls after the last poll that needed it, a few seconds
/// at the watcher's poll cadence (at least every 250 ms).
pub const SIZING_WINDOW: u32 = 32;

/// The largest read, assembled record and decompressed record of a window's polls.
#[derive(Debug, Default, Clone, Copy)]
struct Needs {
    read: usize,
    record: usize,
    decoded: usize,
}

impl Needs {
    fn max(self, o: Needs) -> Needs {
        Needs {
            read: self.read.max(o.read),
            record: self.record.max(o.record),
            decoded: self.decoded.max(o.decoded),
        }
    }
}

/// Gives `v`'s memory back when it holds more than 4x `need` and more than [`MIN_CHUNK`];
/// `true` when it did. The next use allocates what it needs (at most about 2x `need`, or
/// [`MIN_CHUNK`], when the need stays the same, so this does not fire again).
fn give_back(v: &mut Vec<u8>, need: usize) -> bool {
    if v.capacity() > (4 * need).max(MIN_CHUNK) {
        *v = Vec::new();
        true
    } else {
        false
    }
}

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
            chunk: MIN_CHUNK,
            max_chunk: POLL_BUDGET,
            needs: Needs::default(),
            needs_before: Needs::default(),
            window_polls: 0,
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
        self.chunk = self.chunk.min(self.max_chunk);
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
    pub fn poll(&mut self, f: impl FnMut(&[u8])) -> Result<usize, LiveError> {
        let result = self.poll_inner(f);
        if self.caught_up {
            self.settle();
        }
        result
    }

    /// [`poll`](Self::poll) with a budget of at most `budget` bytes of records for this poll
    /// only (it still reads at least one chunk).
    pub fn poll_within(&mut self, budget: usize, f: impl FnMut(&[u8])) -> Result<usize, LiveError> {
        let full = self.budget;
        self.budget = budget.clamp(1, full);
        let result = self.poll(f);
        self.budget = full;
        result
    }

    /// After a caught-up poll: counts it in the sizing window and gives back the buffers the
    /// last two windows needed at most a quarter of.
    fn settle(&mut self) {
        let need = self.needs.max(self.needs_before);
        if give_back(&mut self.buf, need.read) {
            self.chunk = (2 * need.read)
                .next_power_of_two()
                .max(MIN_CHUNK)
                .min(self.max_chunk);
        }
        give_back(&mut self.record, need.record);
        give_back(&mut self.decoded, need.decoded);
        self.window_polls += 1;
        if self.window_polls >= SIZING_WINDOW {
            self.needs_before = std::mem::take(&mut self.needs);
            self.window_polls = 0;
        }
    }

    fn poll_inner(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, LiveError> {
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
            let want = self.chunk;
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
            if self.buf.capacity() < want {
                // A fresh allocation: nothing in the old one is needed (no copy).
                self.buf = Vec::with_capacity(want);
            }
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
            self.needs.read = self.needs.read.max(got);
            let (consumed, n) = self.parse(path, f)?;
            count += n;
            if consumed == 0 {
                if got == want {
                    // One record larger than the chunk: read more at once.
                    self.chunk *= 2;
                    continue;
                }
                return Ok((count, false));
            }
            if got == want && self.chunk < self.max_chunk {
                // More is written than one read takes: read in larger steps.
                self.chunk = (self.chunk * 2).min(self.max_chunk);
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
                self.needs.record = self.needs.record.max(self.record.len());
                let rec: &[u8] = if compressed {
                    match decompress_record(&self.record, &mut self.decoded) {
                        Ok(()) => {
                            self.needs.decoded = self.needs.decoded.max(self.decoded.len());
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
    /// `poll_within` lowers the budget of one poll only: it stops early (not caught up) and the
    /// next `poll` reads the rest with the reader's own budget.
    #[test]
    fn poll_within_lowers_the_budget_of_one_poll() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::wal::SegmentWriter::create(dir.path(), 0, 64 << 20, false).unwrap();
        let record = vec![7u8; 1000];
        for _ in 0..400 {
            w.log(&record).unwrap();
        }
        w.flush().unwrap();
        let mut r = LiveReader::new(dir.path(), START);
        let first = r.poll_within(4 << 10, |_| {}).unwrap();
        assert!(!r.caught_up(), "stopped at the lower budget");
        assert!((1..400).contains(&first), "{first} records");
        let rest = r.poll(|_| {}).unwrap();
        assert!(r.caught_up(), "the reader's own budget again");
        assert_eq!(first + rest, 400);
    }

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

    /// Bytes the reader's buffers hold between polls.
    fn retained(r: &LiveReader) -> usize {
        r.buf.capacity() + r.record.capacity() + r.decoded.capacity()
    }

    const START: Position = Position {
        segment: 0,
        offset: 0,
    };

    /// After a backlog larger than a poll's budget (a restart with a WAL to resend), the reader
    /// gives its large read buffer back within two sizing windows of tailing small commits,
    /// instead of keeping it for its life (8 MiB per instance before).
    #[test]
    fn the_read_buffer_is_given_back_once_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::wal::SegmentWriter::create(dir.path(), 0, 64 << 20, false).unwrap();
        let big = vec![7u8; 30 << 10];
        for _ in 0..400 {
            w.log(&big).unwrap();
        }
        w.flush().unwrap();
        let mut r = LiveReader::new(dir.path(), START);
        let (mut records, mut peak) = (0, 0);
        loop {
            records += r.poll(|_| {}).unwrap();
            peak = peak.max(retained(&r));
            if r.caught_up() {
                break;
            }
        }
        assert_eq!(records, 400);
        assert!(
            peak >= 4 << 20,
            "the backlog was read in large chunks: {peak}"
        );
        for _ in 0..=2 * SIZING_WINDOW {
            w.log(b"a small commit").unwrap();
            w.flush().unwrap();
            assert_eq!(r.poll(|_| {}).unwrap(), 1);
        }
        let kept = retained(&r);
        assert!(
            kept <= 2 * MIN_CHUNK,
            "kept {kept} bytes after catching up (peak {peak})"
        );
        // And it still reads a backlog in large steps when one comes again.
        for _ in 0..100 {
            w.log(&big).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(r.poll(|_| {}).unwrap(), 100);
        assert!(r.chunk > MIN_CHUNK);
    }

    /// A record larger than the budget is read whole (the chunk doubles until it fits), then
    /// neither the chunk nor the buffers that held it stay that large.
    #[test]
    fn an_oversized_record_is_not_kept_after_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        // Compressed, so the buffer of the decompressed record is exercised too.
        let mut w = crate::wal::SegmentWriter::create(dir.path(), 0, 64 << 20, true).unwrap();
        let budget = 16 << 10;
        let mut r = LiveReader::new(dir.path(), START).with_budget(budget);
        let huge: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        w.log(&huge).unwrap();
        w.flush().unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            r.poll(|rec| got.push(rec.to_vec())).unwrap();
        }
        assert_eq!(got, [huge]);
        assert!(r.chunk > budget, "read in one piece: chunk {}", r.chunk);
        let peak = retained(&r);
        for _ in 0..=2 * SIZING_WINDOW {
            w.log(b"a small commit").unwrap();
            w.flush().unwrap();
            assert_eq!(r.poll(|_| {}).unwrap(), 1);
        }
        assert!(r.chunk <= budget, "chunk {} after the record", r.chunk);
        let kept = retained(&r);
        assert!(
            kept <= 2 * MIN_CHUNK,
            "kept {kept} bytes after the record (peak {peak})"
        );
    }

    /// The steady state: a caught-up reader tailing commits of varying size (some polls find
    /// nothing) keeps its buffers from poll to poll once they fit the largest of them; no
    /// allocation per poll.
    #[test]
    fn tailing_commits_of_varying_size_keeps_the_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::wal::SegmentWriter::create(dir.path(), 0, 128 << 20, true).unwrap();
        let mut r = LiveReader::new(dir.path(), START);
        let sizes = [150 << 10, 0, 40 << 10, 120 << 10, 0, 20 << 10, 3 << 10];
        let mut commit = |i: usize| {
            let n = sizes[i % sizes.len()];
            if n > 0 {
                let rec: Vec<u8> = (0..n as u32)
                    .map(|x| (x.wrapping_mul(2654435761) >> 24) as u8)
                    .collect();
                w.log(&rec).unwrap();
                w.flush().unwrap();
            }
            n > 0
        };
        let buffers = |r: &LiveReader| {
            [
                (r.buf.as_ptr() as usize, r.buf.capacity()),
                (r.record.as_ptr() as usize, r.record.capacity()),
                (r.decoded.as_ptr() as usize, r.decoded.capacity()),
            ]
        };
        for i in 0..sizes.len() * 2 {
            let wrote = commit(i);
            assert_eq!(r.poll(|_| {}).unwrap(), usize::from(wrote));
        }
        let settled = buffers(&r);
        for i in 0..4 * SIZING_WINDOW as usize {
            let wrote = commit(i);
            assert_eq!(r.poll(|_| {}).unwrap(), usize::from(wrote));
            assert!(r.caught_up());
            assert_eq!(buffers(&r), settled, "poll {i}: a buffer was reallocated");
        }
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
