//! Segment files and the page/fragment writer (Prometheus `tsdb/wlog`).
//!
//! A WAL directory holds segment files named `%08d` (`00000000`, `00000001`, …), contiguous,
//! each at most [`DEFAULT_SEGMENT_SIZE`] (128 MiB) and made of 32 KiB pages. A record is cut
//! into fragments that each fit in the rest of the current page, every fragment with a 7-byte
//! header:
//!
//! ```text
//! byte 0     : bits 0-2 fragment type (0 page terminator, 1 full, 2 first, 3 middle, 4 last)
//!              bit 3 (0x08) snappy-compressed record, bit 4 (0x10) zstd-compressed record
//! bytes 1..2 : big-endian u16 payload length (≤ 32768 - 7)
//! bytes 3..6 : big-endian u32 CRC-32C (Castagnoli) of the payload as stored
//! payload
//! ```
//!
//! The writer starts a new page when fewer than 7 bytes remain in the current one (so a 0
//! length fragment can occur when exactly 7 remain, as in Prometheus); the unused tail of a page
//! is zero, which a reader sees as a type-0 terminator. A record is compressed as a whole with
//! snappy *block* format before fragmenting, and only when that is smaller. A record never
//! spans segments: when it does not fit in what is left of the segment, the segment is cut.
//! A completed segment is zero-padded to a page boundary; the segment being written may end
//! mid-page because partial pages are written out at every [`SegmentWriter::flush`].
//!
//! Durability policy: [`SegmentWriter::flush`] hands the bytes to the OS (a `write`), which
//! survives a process crash but not a power loss; [`SegmentWriter::sync`] additionally fsyncs
//! the segment. A segment is fsynced when it is cut, and the directory is fsynced when a
//! segment is created, so only the tail written since the last fsync can be lost on power
//! failure. A live WAL's writer hands every fsync to its disk thread ([`super::sync`]): the
//! cut segment is fsynced there right after the cut, the segment being written every
//! `sync_interval` (1 s) and on request; a checkpoint's writer fsyncs itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::WalError;

pub const PAGE_SIZE: usize = 32 * 1024;
pub const HEADER_SIZE: usize = 7;
pub const DEFAULT_SEGMENT_SIZE: usize = 128 * 1024 * 1024;

pub const REC_PAGE_TERM: u8 = 0;
pub const REC_FULL: u8 = 1;
pub const REC_FIRST: u8 = 2;
pub const REC_MIDDLE: u8 = 3;
pub const REC_LAST: u8 = 4;
pub const TYPE_MASK: u8 = 0x07;
pub const FLAG_SNAPPY: u8 = 0x08;
pub const FLAG_ZSTD: u8 = 0x10;

/// Decompresses a record's snappy block into `out` (reusing its memory). The length its header
/// claims is checked first against the most a block of this size can hold (a 3-byte copy
/// writes at most 64 bytes), so a corrupt header cannot make a reader allocate up to 4 GiB.
pub(crate) fn decompress_record(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let len = snap::raw::decompress_len(input).map_err(|e| e.to_string())?;
    if len / 22 > input.len() {
        return Err(format!(
            "the header claims {len} bytes, more than {} compressed bytes can hold",
            input.len()
        ));
    }
    out.clear();
    out.resize(len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(input, out)
        .map_err(|e| e.to_string())?;
    out.truncate(n);
    Ok(())
}

/// `%08d`.
pub fn segment_name(index: u32) -> String {
    format!("{index:08}")
}

pub fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(segment_name(index))
}

/// Numeric segment files in `dir`, sorted. Like Prometheus, every name that parses as a
/// decimal integer counts; other names (`*.corrupt`, `checkpoint.*`) are ignored. Errors if
/// the indices are not contiguous.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>, WalError> {
    let rd = fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| WalError::io(dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(i) = name.parse::<u32>() {
            v.push(i);
        }
    }
    v.sort_unstable();
    for w in v.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(WalError::NotSequential {
                dir: dir.to_owned(),
                after: w[0],
                found: w[1],
            });
        }
    }
    Ok(v)
}

/// fsyncs a directory so that created, renamed or deleted entries are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// Fault injection for tests: called before the WAL's writes and fsyncs reach the disk. The
/// agent runs without one (`None` in [`WalOptions`](super::WalOptions)).
pub trait Faults: Send + Sync + std::fmt::Debug {
    /// Before `write(2)` of `len` bytes to `path`: how many of them reach the file (fewer makes
    /// a short write), or the error the write fails with (e.g. ENOSPC).
    fn write(&self, path: &Path, len: usize) -> io::Result<usize> {
        let _ = path;
        Ok(len)
    }

    /// Before an fsync of `path` (a segment or the WAL directory); may block (a slow disk) or
    /// fail.
    fn fsync(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
}

/// Optional [`Faults`].
pub type FaultsHook = Option<Arc<dyn Faults>>;

/// `write(2)` of all of `buf` to `file`, through `faults`; adds what reached the file to
/// `written` as it goes, so a failed write still says how far it got.
pub(crate) fn write_through(
    faults: &FaultsHook,
    file: &mut File,
    path: &Path,
    buf: &[u8],
    written: &mut usize,
) -> Result<(), WalError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let allowed = match faults {
            Some(f) => f
                .write(path, rest.len())
                .map_err(|e| WalError::io(path, e))?,
            None => rest.len(),
        };
        // A plain `write`, not `write_all`: a short write's progress is what `written` records
        // (what readers may already see when a later write fails); the loop writes the rest.
        #[allow(clippy::disallowed_methods)]
        let n = match file.write(&rest[..allowed.min(rest.len())]) {
            Ok(0) => {
                return Err(WalError::io(
                    path,
                    io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WalError::io(path, e)),
        };
        *written += n;
        rest = &rest[n..];
    }
    Ok(())
}

/// fsyncs `file` (at `path`) through `faults`.
pub(crate) fn fsync_file(faults: &FaultsHook, file: &File, path: &Path) -> Result<(), WalError> {
    if let Some(f) = faults {
        f.fsync(path).map_err(|e| WalError::io(path, e))?;
    }
    file.sync_data().map_err(|e| WalError::io(path, e))
}

/// Appends records to a directory of segments. See the module doc for format and durability.
pub struct SegmentWriter {
    dir: PathBuf,
    segment_size: usize,
    compress: bool,
    index: u32,
    file: File,
    /// Pages already complete in the current segment.
    done_pages: usize,
    page: Box<[u8]>,
    /// Bytes used in `page`.
    alloc: usize,
    /// Bytes of `page` already written to the file.
    flushed: usize,
    snappy: snap::raw::Encoder,
    cbuf: Vec<u8>,
    /// Bytes written into the current segment, including unflushed ones.
    bytes_in_segment: u64,
    faults: FaultsHook,
    /// The WAL's disk thread, which does this writer's fsyncs (`None`: the writer fsyncs
    /// itself, e.g. a checkpoint's).
    syncer: Option<super::sync::Syncer>,
}

/// A position in the WAL: segment index and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u32,
    pub offset: u64,
}

impl SegmentWriter {
    /// Creates a new, empty segment `index` in `dir` (truncating any file of that name) and
    /// writes to it.
    pub fn create(
        dir: &Path,
        index: u32,
        segment_size: usize,
        compress: bool,
    ) -> Result<Self, WalError> {
        if segment_size < PAGE_SIZE || segment_size % PAGE_SIZE != 0 {
            return Err(WalError::BadSegmentSize(segment_size));
        }
        let file = create_segment(dir, index)?;
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            segment_size,
            compress,
            index,
            file,
            done_pages: 0,
            page: vec![0u8; PAGE_SIZE].into_boxed_slice(),
            alloc: 0,
            flushed: 0,
            snappy: snap::raw::Encoder::new(),
            cbuf: Vec::new(),
            bytes_in_segment: 0,
            faults: None,
            syncer: None,
        })
    }

    /// Hands this writer's fsyncs to a disk thread of its own (see [`super::sync`]): segment
    /// rotation no longer waits for an fsync, and [`sync`](Self::sync) asks the thread.
    pub(crate) fn with_sync_thread(
        mut self,
        interval: std::time::Duration,
    ) -> Result<Self, WalError> {
        let path = segment_path(&self.dir, self.index);
        self.syncer = Some(super::sync::Syncer::spawn(
            &self.dir,
            &self.file,
            path,
            interval,
            self.faults.clone(),
        )?);
        Ok(self)
    }

    /// Asks this writer's disk thread for fsyncs without holding the writer.
    pub fn sync_handle(&self) -> Option<super::sync::SyncHandle> {
        self.syncer.as_ref().map(|s| s.handle())
    }

    /// Injects faults (tests).
    pub fn with_faults(mut self, faults: FaultsHook) -> Self {
        self.faults = faults;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the segment being written.
    pub fn segment(&self) -> u32 {
        self.index
    }

    fn pages_per_segment(&self) -> usize {
        self.segment_size / PAGE_SIZE
    }

    /// Appends one record (the bytes as the record codecs produce them). The record is in the
    /// page buffer afterwards; call [`flush`](Self::flush) to write it out. Returns where the
    /// record ends.
    pub fn log(&mut self, rec: &[u8]) -> Result<Pos, WalError> {
        let mut cbuf = std::mem::take(&mut self.cbuf);
        let res = self.log_inner(rec, &mut cbuf);
        self.cbuf = cbuf;
        res.map(|()| self.end())
    }

    /// Where the last record logged ends.
    fn end(&self) -> Pos {
        Pos {
            segment: self.index,
            offset: (self.done_pages * PAGE_SIZE + self.alloc) as u64,
        }
    }

    /// How far the bytes of the current segment have reached the file (what readers can see).
    pub fn written(&self) -> Pos {
        Pos {
            segment: self.index,
            offset: (self.done_pages * PAGE_SIZE + self.flushed) as u64,
        }
    }

    fn log_inner(&mut self, rec: &[u8], cbuf: &mut Vec<u8>) -> Result<(), WalError> {
        let mut payload = rec;
        let mut flag = 0u8;
        if self.compress && !rec.is_empty() {
            cbuf.resize(snap::raw::max_compress_len(rec.len()), 0);
            // Only fails on inputs over 4 GiB, which the segment limit rules out anyway; the
            // uncompressed form is always a valid fallback.
            if let Ok(n) = self.snappy.compress(rec, cbuf) {
                if n < rec.len() {
                    payload = &cbuf[..n];
                    flag = FLAG_SNAPPY;
                }
            }
        }
        // Space left in this segment, counting a header per page. When the previous record
        // ended exactly at the end of the segment's last page, no page is left at all.
        let pages = self.pages_per_segment();
        let left = if self.done_pages >= pages {
            None
        } else {
            let left_in_page = (PAGE_SIZE - self.alloc).saturating_sub(HEADER_SIZE);
            Some(left_in_page + (PAGE_SIZE - HEADER_SIZE) * (pages - self.done_pages - 1))
        };
        if left.is_none_or(|left| payload.len() > left) {
            let max = (PAGE_SIZE - HEADER_SIZE) * self.pages_per_segment();
            if payload.len() > max {
                return Err(WalError::RecordTooLarge {
                    len: payload.len(),
                    max,
                });
            }
            self.next_segment()?;
        }
        let mut i = 0;
        while i == 0 || !payload.is_empty() {
            // A page with no room for a header is padded when the next fragment comes, not
            // right after a record: a record is complete without it, so a failed write of the
            // padding never tears the record before it.
            if PAGE_SIZE - self.alloc < HEADER_SIZE {
                self.flush_page(true)?;
            }
            let room = PAGE_SIZE - self.alloc - HEADER_SIZE;
            let n = payload.len().min(room);
            let (part, rest) = payload.split_at(n);
            let typ = match (i == 0, rest.is_empty()) {
                (true, true) => REC_FULL,
                (true, false) => REC_FIRST,
                (false, true) => REC_LAST,
                (false, false) => REC_MIDDLE,
            };
            let crc = crc32c::crc32c(part);
            let h = &mut self.page[self.alloc..self.alloc + HEADER_SIZE];
            h[0] = typ | flag;
            h[1..3].copy_from_slice(&(n as u16).to_be_bytes());
            h[3..7].copy_from_slice(&crc.to_be_bytes());
            self.alloc += HEADER_SIZE;
            self.page[self.alloc..self.alloc + n].copy_from_slice(part);
            self.alloc += n;
            self.bytes_in_segment += (HEADER_SIZE + n) as u64;
            payload = rest;
            i += 1;
        }
        Ok(())
    }

    /// Writes the unwritten part of the current page; with `clear`, pads the page with zeros
    /// to its end and starts a new one.
    fn flush_page(&mut self, clear: bool) -> Result<(), WalError> {
        let end = if clear { PAGE_SIZE } else { self.alloc };
        if end > self.flushed {
            let path = segment_path(&self.dir, self.index);
            let mut flushed = self.flushed;
            let res = write_through(
                &self.faults,
                &mut self.file,
                &path,
                &self.page[self.flushed..end],
                &mut flushed,
            );
            if flushed > self.flushed {
                if let Some(s) = &self.syncer {
                    s.wrote();
                }
            }
            self.flushed = flushed;
            res?;
        }
        if clear {
            self.bytes_in_segment += (PAGE_SIZE - self.alloc) as u64;
            self.page.fill(0);
            self.alloc = 0;
            self.flushed = 0;
            self.done_pages += 1;
        }
        Ok(())
    }

    /// Writes everything logged so far to the OS (no fsync).
    pub fn flush(&mut self) -> Result<(), WalError> {
        self.flush_page(false)
    }

    /// Flushes and fsyncs the current segment (and, with a disk thread, the completed segments
    /// handed to it before), waiting for the fsync.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.flush()?;
        if let Some(s) = &self.syncer {
            return s.handle().sync_blocking();
        }
        let path = segment_path(&self.dir, self.index);
        fsync_file(&self.faults, &self.file, &path)
    }

    /// Completes the current segment (zero-padded to a page boundary, fsynced) and starts the
    /// next one. Returns the new segment's index. With a disk thread, the completed segment
    /// and the directory entry of the new one are fsynced there, without waiting.
    pub fn next_segment(&mut self) -> Result<u32, WalError> {
        if self.alloc > 0 {
            self.flush_page(true)?;
        }
        let next = self.index + 1;
        match &self.syncer {
            None => {
                self.sync()?;
                self.file = create_segment(&self.dir, next)?;
            }
            Some(s) => {
                let new_path = segment_path(&self.dir, next);
                let new = open_segment(&new_path)?;
                let old = std::mem::replace(&mut self.file, new);
                s.rotate(
                    old,
                    segment_path(&self.dir, self.index),
                    &self.file,
                    new_path,
                )?;
            }
        }
        self.index = next;
        self.done_pages = 0;
        self.bytes_in_segment = 0;
        Ok(next)
    }

    /// A mark at `end`, the end of a record that has reached the file whole (at or before
    /// [`written`](Self::written)).
    pub fn mark_at(&self, end: Pos) -> WriterMark {
        let offset = end.offset as usize;
        WriterMark {
            index: end.segment,
            done_pages: offset / PAGE_SIZE,
            alloc: offset % PAGE_SIZE,
            flushed: offset % PAGE_SIZE,
            bytes_in_segment: end.offset,
            unflushed: Vec::new(),
        }
    }

    /// The writer's position, to go back to with [`reset`](Self::reset) when a later write
    /// fails.
    pub fn mark(&self) -> WriterMark {
        WriterMark {
            index: self.index,
            done_pages: self.done_pages,
            alloc: self.alloc,
            flushed: self.flushed,
            bytes_in_segment: self.bytes_in_segment,
            unflushed: self.page[self.flushed..self.alloc].to_vec(),
        }
    }

    /// Undoes the writes since `mark` after a write failed (ENOSPC, EIO). What reached the
    /// files since the mark (a short write's torn bytes, or whole records a reader may
    /// already have consumed) is overwritten with zeros, which every reader takes for page
    /// padding; writing goes on at the next page boundary after it, in the current segment
    /// (segments started since the mark stay, zeroed: a live reader may already be in one, and
    /// an all-zero segment reads as empty). Nothing is cut, so a reader's position is never
    /// past the end or inside a record written later. Marks are taken right after a flush
    /// (nothing buffered); a mark with buffered bytes keeps them buffered when nothing reached
    /// the file since. Returns the bytes zeroed.
    pub fn reset(&mut self, mark: &WriterMark) -> Result<u64, WalError> {
        use std::io::{Seek, SeekFrom};
        let mark_pos = (mark.done_pages * PAGE_SIZE + mark.flushed) as u64;
        let mut zeroed = 0u64;
        for index in mark.index..=self.index {
            let path = segment_path(&self.dir, index);
            let from = if index == mark.index { mark_pos } else { 0 };
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io(&path, e))?;
            let len = f.metadata().map_err(|e| WalError::io(&path, e))?.len();
            if len > from {
                let zeros = vec![0u8; (len - from).min(PAGE_SIZE as u64) as usize];
                f.seek(SeekFrom::Start(from))
                    .map_err(|e| WalError::io(&path, e))?;
                let mut left = len - from;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])
                        .map_err(|e| WalError::io(&path, e))?;
                    left -= n as u64;
                }
                zeroed += len - from;
            }
        }
        let path = segment_path(&self.dir, self.index);
        let len = self
            .file
            .metadata()
            .map_err(|e| WalError::io(&path, e))?
            .len();
        if self.index == mark.index && len <= mark_pos {
            // Nothing reached the file since the mark: back to it, buffer included.
            self.done_pages = mark.done_pages;
            self.alloc = mark.alloc;
            self.flushed = mark.flushed;
            self.bytes_in_segment = mark.bytes_in_segment;
            self.page.fill(0);
            self.page[mark.flushed..mark.alloc].copy_from_slice(&mark.unflushed);
            self.file
                .seek(SeekFrom::Start(mark_pos))
                .map_err(|e| WalError::io(&path, e))?;
            return Ok(zeroed);
        }
        let pages = len.div_ceil(PAGE_SIZE as u64) as usize;
        self.done_pages = pages;
        self.alloc = 0;
        self.flushed = 0;
        self.bytes_in_segment = (pages * PAGE_SIZE) as u64;
        self.page.fill(0);
        self.file
            .seek(SeekFrom::Start((pages * PAGE_SIZE) as u64))
            .map_err(|e| WalError::io(&path, e))?;
        Ok(zeroed)
    }

    /// Bytes written (or buffered) into the current segment.
    pub fn segment_bytes(&self) -> u64 {
        self.bytes_in_segment
    }

    /// Pads and fsyncs the current segment; used when a checkpoint is finished.
    pub fn close(mut self) -> Result<(), WalError> {
        if self.alloc > 0 {
            self.flush_page(true)?;
        }
        self.sync()
    }
}

/// A [`SegmentWriter`] position (see [`SegmentWriter::mark`]).
#[derive(Debug, Clone)]
pub struct WriterMark {
    index: u32,
    done_pages: usize,
    alloc: usize,
    flushed: usize,
    bytes_in_segment: u64,
    /// The buffered, not yet written part of the current page.
    unflushed: Vec<u8>,
}

fn open_segment(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))
}

fn create_segment(dir: &Path, index: u32) -> Result<File, WalError> {
    let f = open_segment(&segment_path(dir, index))?;
    sync_dir(dir)?;
    Ok(f)
}

/// Zero-pads an existing segment to a page boundary (Prometheus does this when it reopens a
/// segment whose last page is partial), so the next segment starts on a clean page.
pub fn pad_to_page(path: &Path) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    let len = f.metadata().map_err(|e| WalError::io(path, e))?.len();
    let rem = len % PAGE_SIZE as u64;
    if rem != 0 {
        f.set_len(len + (PAGE_SIZE as u64 - rem))
            .map_err(|e| WalError::io(path, e))?;
        f.sync_all().map_err(|e| WalError::io(path, e))?;
    }
    Ok(())
}
