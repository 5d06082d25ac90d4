//! Reassembles records from segment files (Prometheus `wlog.Reader` rules).
//!
//! Per fragment: a type byte of 0 means the rest of the page is padding and must be zero
//! (`unexpected non-zero byte in padded page`); otherwise the 7-byte header is read, a length
//! over 32761 or a fragment crossing its page is `invalid record size`, the payload's CRC-32C
//! must match, Full/First may only start a record and Middle/Last only continue one. A record
//! ends with Full or Last; if the first fragment carried the snappy flag, the concatenated
//! payloads are decompressed (snappy block format). EOF right after a record is a clean end of
//! the segment; EOF inside a record is `last record is torn`. Records never span segments, so
//! each segment must end on a record boundary.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use super::segment::{
    decompress_record, FLAG_SNAPPY, FLAG_ZSTD, HEADER_SIZE, PAGE_SIZE, REC_FIRST, REC_FULL,
    REC_LAST, REC_MIDDLE, REC_PAGE_TERM, TYPE_MASK,
};
use super::WalError;

/// What is wrong at a corrupt position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("last record is torn")]
    Torn,
    #[error("unexpected non-zero byte in padded page")]
    NonZeroPadding,
    #[error("invalid record size {0}")]
    InvalidSize(usize),
    #[error("record header crosses a page boundary")]
    HeaderCrossesPage,
    #[error("unexpected checksum {got:x}, expected {want:x}")]
    Checksum { got: u32, want: u32 },
    #[error("invalid fragment type {0}")]
    InvalidType(u8),
    #[error("unexpected fragment type {typ} at fragment index {index} of a record")]
    Sequence { typ: u8, index: usize },
    #[error("zstd-compressed records are not supported")]
    Zstd,
    #[error("snappy decompression failed: {0}")]
    Snappy(String),
    #[error("invalid record: {0}")]
    Record(#[from] super::record::RecordError),
}

/// One segment file to read, with the index used in error messages.
#[derive(Debug, Clone)]
pub struct SegmentSource {
    pub index: u32,
    pub path: PathBuf,
}

/// Reads records from a sequence of segment files.
pub struct Reader {
    segs: Vec<SegmentSource>,
    cur: usize,
    file: Option<BufReader<File>>,
    offset: u64,
    last_good: u64,
    rec_start: u64,
    rec: Vec<u8>,
    out: Vec<u8>,
    decompressed: bool,
}

impl Reader {
    pub fn new(segs: Vec<SegmentSource>) -> Reader {
        Reader {
            segs,
            cur: 0,
            file: None,
            offset: 0,
            last_good: 0,
            rec_start: 0,
            rec: Vec::new(),
            out: Vec::new(),
            decompressed: false,
        }
    }

    /// The segment currently (or last) read.
    pub fn segment(&self) -> Option<&SegmentSource> {
        self.segs
            .get(self.cur.min(self.segs.len().saturating_sub(1)))
    }

    /// Offset of the first byte of the record last returned by [`next_record`](Self::next_record).
    pub fn record_start(&self) -> u64 {
        self.rec_start
    }

    /// Offset just past the last complete record of the current segment (0 if none).
    pub fn last_good_end(&self) -> u64 {
        self.last_good
    }

    fn corrupt(&self, offset: u64, kind: Corruption) -> WalError {
        let s = &self.segs[self.cur];
        WalError::Corrupt {
            path: s.path.clone(),
            segment: s.index,
            offset,
            kind,
        }
    }

    /// Advances to the next record; `false` at the end of the last segment. The record is
    /// then available from [`record`](Self::record) (a shared borrow, so error helpers can be
    /// called while it is in use).
    pub fn next_record(&mut self) -> Result<bool, WalError> {
        self.decompressed = false;
        self.rec.clear();
        let mut index = 0usize;
        let mut flags = 0u8;
        loop {
            let Some(file) = self.file.as_mut() else {
                if self.cur >= self.segs.len() {
                    return Ok(false);
                }
                let p = &self.segs[self.cur].path;
                let f = File::open(p).map_err(|e| WalError::io(p, e))?;
                self.file = Some(BufReader::with_capacity(256 * 1024, f));
                self.offset = 0;
                self.last_good = 0;
                self.rec_start = 0;
                continue;
            };
            let frag_start = self.offset;
            let page_off = (frag_start % PAGE_SIZE as u64) as usize;
            let mut t = [0u8; 1];
            if read_full(file, &mut t).map_err(|e| WalError::io(&self.segs[self.cur].path, e))? == 0
            {
                if index > 0 {
                    return Err(self.corrupt(frag_start, Corruption::Torn));
                }
                self.file = None;
                self.cur += 1;
                if self.cur >= self.segs.len() {
                    return Ok(false);
                }
                continue;
            }
            let typ = t[0] & TYPE_MASK;
            if typ == REC_PAGE_TERM {
                let rest = PAGE_SIZE - page_off - 1;
                let mut buf = [0u8; 4096];
                let mut left = rest;
                let mut read = 0usize;
                while left > 0 {
                    let want = left.min(buf.len());
                    let n = read_full(file, &mut buf[..want])
                        .map_err(|e| WalError::io(&self.segs[self.cur].path, e))?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        let at = frag_start + 1 + read as u64;
                        return Err(self.corrupt(at, Corruption::NonZeroPadding));
                    }
                    read += n;
                    left -= n;
                    if n < want {
                        break; // EOF inside a padded page: the segment being written.
                    }
                }
                self.offset += 1 + read as u64;
                continue;
            }
            if page_off + HEADER_SIZE > PAGE_SIZE {
                return Err(self.corrupt(frag_start, Corruption::HeaderCrossesPage));
            }
            let mut h = [0u8; HEADER_SIZE - 1];
            let n =
                read_full(file, &mut h).map_err(|e| WalError::io(&self.segs[self.cur].path, e))?;
            if n < h.len() {
                return Err(self.corrupt(frag_start, Corruption::Torn));
            }
            let len = u16::from_be_bytes([h[0], h[1]]) as usize;
            let want_crc = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
            if len > PAGE_SIZE - HEADER_SIZE || page_off + HEADER_SIZE + len > PAGE_SIZE {
                return Err(self.corrupt(frag_start, Corruption::InvalidSize(len)));
            }
            let at = self.rec.len();
            self.rec.resize(at + len, 0);
            let n = read_full(file, &mut self.rec[at..])
                .map_err(|e| WalError::io(&self.segs[self.cur].path, e))?;
            if n < len {
                return Err(self.corrupt(frag_start, Corruption::Torn));
            }
            let got = crc32c::crc32c(&self.rec[at..]);
            if got != want_crc {
                return Err(self.corrupt(
                    frag_start,
                    Corruption::Checksum {
                        got,
                        want: want_crc,
                    },
                ));
            }
            if typ > REC_LAST {
                return Err(self.corrupt(frag_start, Corruption::InvalidType(typ)));
            }
            let starts = typ == REC_FULL || typ == REC_FIRST;
            if starts != (index == 0) {
                return Err(self.corrupt(frag_start, Corruption::Sequence { typ, index }));
            }
            if index == 0 {
                flags = t[0];
            }
            self.offset += (HEADER_SIZE + len) as u64;
            index += 1;
            if typ == REC_FULL || typ == REC_LAST {
                break;
            }
            debug_assert!(typ == REC_FIRST || typ == REC_MIDDLE);
        }
        self.rec_start = self.last_good;
        let end = self.offset;
        if flags & FLAG_ZSTD != 0 {
            return Err(self.corrupt(self.rec_start, Corruption::Zstd));
        }
        if flags & FLAG_SNAPPY != 0 {
            decompress_record(&self.rec, &mut self.out)
                .map_err(|e| self.corrupt(self.rec_start, Corruption::Snappy(e)))?;
            self.decompressed = true;
        }
        // Good only once it decompressed: a repair cuts a record that does not at its start.
        self.last_good = end;
        Ok(true)
    }

    /// The record last returned by [`next_record`](Self::next_record), decompressed.
    pub fn record(&self) -> &[u8] {
        if self.decompressed {
            &self.out
        } else {
            &self.rec
        }
    }

    /// An error for a record that reassembled fine but does not decode.
    pub fn record_error(&self, e: super::record::RecordError) -> WalError {
        let (path, segment) = match self.segment() {
            Some(s) => (s.path.clone(), s.index),
            None => (PathBuf::new(), 0),
        };
        WalError::Corrupt {
            path,
            segment,
            offset: self.rec_start,
            kind: e.into(),
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
