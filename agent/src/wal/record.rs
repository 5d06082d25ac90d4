//! Record codecs (Prometheus `tsdb/record`), after fragment reassembly and decompression.
//!
//! Primitives: `be64` = 8-byte big-endian; `uvarint` = unsigned LEB128 (Go `binary.Uvarint`,
//! at most 10 bytes); `varint` = zig-zag LEB128 (Go `binary.Varint`); `uvarintStr` =
//! `uvarint len` + bytes. Byte 0 of every record is its type:
//!
//! ```text
//! 1 Series     repeated: be64 ref, uvarint nLabels, nLabels × (uvarintStr name, uvarintStr value)
//! 2 Samples    empty body = no samples; else be64 baseRef, be64 baseTime, then repeated:
//!              varint dRef, varint dTime, be64 float64 bits   (base = the FIRST sample,
//!              so its deltas are 0,0; deltas are signed, ref = baseRef + dRef)
//! 3 Tombstones repeated: be64 ref, varint mint, varint maxt
//! 4 Exemplars  be64 baseRef, be64 baseTime, then repeated: varint dRef, varint dTime,
//!              be64 value bits, uvarint nLabels, pairs of uvarintStr
//! 6 Metadata   repeated: uvarint ref, byte type, uvarint nFields, nFields × (uvarintStr, uvarintStr)
//! ```
//!
//! Other types (5 mmap markers, 7/8 histograms, future ones) are skipped by readers. A decoder
//! fails when bytes remain that do not form a whole entry (`unexpected N bytes left in entry`).
//!
//! Encoders append to a caller-owned `Vec<u8>` so the hot path reuses one buffer per record
//! kind; the `extend_*` functions continue a record already under construction (the Samples
//! and Exemplars bases are read back from the record header), which lets the WAL encode each
//! batch as it arrives without buffering samples twice.

use crate::labels::{Labels, LabelsRef, SeriesRef};

pub const SERIES: u8 = 1;
pub const SAMPLES: u8 = 2;
pub const TOMBSTONES: u8 = 3;
pub const EXEMPLARS: u8 = 4;
pub const MMAP_MARKERS: u8 = 5;
pub const METADATA: u8 = 6;
pub const HISTOGRAM_SAMPLES: u8 = 7;
pub const FLOAT_HISTOGRAM_SAMPLES: u8 = 8;

/// A sample for a series ref: `(ref, timestamp in ms, value)`.
pub type RefSample = (SeriesRef, i64, f64);

#[derive(Debug, Clone, PartialEq)]
pub struct RefExemplar {
    pub series_ref: SeriesRef,
    pub t: i64,
    pub v: f64,
    pub labels: Labels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub series_ref: SeriesRef,
    pub mint: i64,
    pub maxt: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMetadata {
    pub series_ref: SeriesRef,
    /// 0 unknown, 1 counter, 2 gauge, 3 histogram, 4 gaugehistogram, 5 summary, 6 info,
    /// 7 stateset.
    pub metric_type: u8,
    pub unit: String,
    pub help: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("invalid record type {found}, expected {expected}")]
    WrongType { expected: u8, found: u8 },
    #[error("unexpected {0} bytes left in entry")]
    BytesLeft(usize),
    #[error("varint overflows 64 bits at record byte {offset}")]
    VarintOverflow { offset: usize },
    #[error("invalid UTF-8 in label at record byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("over-long varint in a label set at record byte {offset} (not written by Prometheus or agentctl)")]
    OverlongVarint { offset: usize },
}

/// The record's type byte, or `None` for an empty record.
pub fn record_type(rec: &[u8]) -> Option<u8> {
    rec.first().copied()
}

// ---------------------------------------------------------------------------------------------
// Primitives

pub(crate) use crate::labels::put_uvarint;

pub(crate) fn put_varint(buf: &mut Vec<u8>, x: i64) {
    // Go's zig-zag: non-negative n -> 2n, negative n -> -2n-1.
    let ux = ((x as u64) << 1) ^ ((x >> 63) as u64);
    put_uvarint(buf, ux);
}

pub(crate) fn put_uvarint_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Why a primitive read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecFail {
    Short,
    Overflow,
}

/// A cursor over a record body.
#[derive(Clone)]
pub(crate) struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.b.len()
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.b[self.pos.min(self.b.len())..]
    }
    pub(crate) fn byte(&mut self) -> Result<u8, DecFail> {
        let v = *self.b.get(self.pos).ok_or(DecFail::Short)?;
        self.pos += 1;
        Ok(v)
    }
    pub(crate) fn be64(&mut self) -> Result<u64, DecFail> {
        let s = self.b.get(self.pos..self.pos + 8).ok_or(DecFail::Short)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        self.pos += 8;
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn uvarint(&mut self) -> Result<u64, DecFail> {
        let mut x = 0u64;
        let mut shift = 0u32;
        for i in 0..10 {
            let b = *self.b.get(self.pos + i).ok_or(DecFail::Short)?;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(DecFail::Overflow);
                }
                self.pos += i + 1;
                return Ok(x | (u64::from(b) << shift));
            }
            x |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        Err(DecFail::Overflow)
    }
    pub(crate) fn varint(&mut self) -> Result<i64, DecFail> {
        let ux = self.uvarint()?;
        Ok(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }
    pub(crate) fn uvarint_bytes(&mut self) -> Result<&'a [u8], DecFail> {
        let save = self.pos;
        let n = self.uvarint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => {
                self.pos = save;
                Err(DecFail::Short)
            }
        }
    }
    pub(crate) fn uvarint_string(&mut self) -> Result<&'a str, EntryFail> {
        let at = self.pos;
        let b = self.uvarint_bytes()?;
        std::str::from_utf8(b).map_err(|_| EntryFail::Utf8(at))
    }
    pub(crate) fn labels(&mut self) -> Result<LabelsRef<'a>, EntryFail> {
        let at = self.pos;
        let (l, used) = LabelsRef::parse(self.rest()).map_err(|e| match e {
            crate::labels::ParseError::Short => EntryFail::Dec(DecFail::Short),
            crate::labels::ParseError::Utf8(_) => EntryFail::Utf8(at),
            crate::labels::ParseError::NonMinimal(o) => EntryFail::Overlong(at + o),
        })?;
        self.pos += used;
        Ok(l)
    }
}

/// A failure while decoding one entry; mapped to a [`RecordError`] by the entry loop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EntryFail {
    Dec(DecFail),
    Utf8(usize),
    Overlong(usize),
}

impl From<DecFail> for EntryFail {
    fn from(d: DecFail) -> Self {
        EntryFail::Dec(d)
    }
}

impl EntryFail {
    fn into_error(self, d: &Dec<'_>, entry_start: usize) -> RecordError {
        match self {
            // Record offsets count the type byte.
            EntryFail::Dec(DecFail::Short) => RecordError::BytesLeft(d.b.len() - entry_start),
            EntryFail::Dec(DecFail::Overflow) => RecordError::VarintOverflow { offset: d.pos + 1 },
            EntryFail::Utf8(at) => RecordError::InvalidUtf8 { offset: at + 1 },
            EntryFail::Overlong(at) => RecordError::OverlongVarint { offset: at + 1 },
        }
    }
}

fn body(rec: &[u8], expected: u8) -> Result<&[u8], RecordError> {
    match rec.split_first() {
        None => Err(RecordError::Empty),
        Some((&t, body)) if t == expected => Ok(body),
        Some((&t, _)) => Err(RecordError::WrongType { expected, found: t }),
    }
}

/// Runs `entry` until the body is consumed, turning a partial trailing entry into
/// `BytesLeft`.
fn for_each_entry<'a>(
    d: &mut Dec<'a>,
    mut entry: impl FnMut(&mut Dec<'a>) -> Result<(), EntryFail>,
) -> Result<(), RecordError> {
    while !d.is_empty() {
        let start = d.pos();
        entry(d).map_err(|e| e.into_error(d, start))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Series

/// Appends Series entries to `rec`, starting the record (type byte) if `rec` is empty.
pub fn extend_series<'l>(
    rec: &mut Vec<u8>,
    series: impl IntoIterator<Item = (SeriesRef, LabelsRef<'l>)>,
) {
    if rec.is_empty() {
        rec.push(SERIES);
    }
    for (r, l) in series {
        rec.extend_from_slice(&r.0.to_be_bytes());
        l.write_wire(rec);
    }
}

/// Iterates the entries of a Series record without allocating: `(ref, labels)` borrowed from
/// the record.
pub fn series_iter(rec: &[u8]) -> Result<SeriesIter<'_>, RecordError> {
    Ok(SeriesIter {
        d: Dec::new(body(rec, SERIES)?),
        failed: false,
    })
}

pub struct SeriesIter<'a> {
    d: Dec<'a>,
    failed: bool,
}

impl<'a> Iterator for SeriesIter<'a> {
    type Item = Result<(SeriesRef, LabelsRef<'a>), RecordError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.d.is_empty() {
            return None;
        }
        let start = self.d.pos();
        let r = (|| -> Result<(SeriesRef, LabelsRef<'a>), EntryFail> {
            let r = SeriesRef(self.d.be64()?);
            let l = self.d.labels()?;
            Ok((r, l))
        })();
        match r {
            Ok(v) => Some(Ok(v)),
            Err(e) => {
                self.failed = true;
                Some(Err(e.into_error(&self.d, start)))
            }
        }
    }
}

/// Decodes a Series record, appending owned entries to `out`.
pub fn decode_series(rec: &[u8], out: &mut Vec<(SeriesRef, Labels)>) -> Result<(), RecordError> {
    for e in series_iter(rec)? {
        let (r, l) = e?;
        out.push((r, l.to_owned()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Samples

/// Appends samples to a Samples record under construction (starting it if `rec` is empty).
/// The base is the record's first sample.
pub fn extend_samples(rec: &mut Vec<u8>, samples: &[RefSample]) {
    let Some(&(r0, t0, _)) = samples.first() else {
        return;
    };
    let (base_ref, base_t) = start_based(rec, SAMPLES, r0, t0);
    // Worst case per sample: two 10-byte varints + 8 bytes.
    rec.reserve(samples.len() * 12);
    for &(r, t, v) in samples {
        put_varint(rec, r.0.wrapping_sub(base_ref) as i64);
        put_varint(rec, t.wrapping_sub(base_t));
        rec.extend_from_slice(&v.to_bits().to_be_bytes());
    }
}

/// Starts a based record (Samples, Exemplars) if `rec` is empty and returns its base.
fn start_based(rec: &mut Vec<u8>, typ: u8, r0: SeriesRef, t0: i64) -> (u64, i64) {
    if rec.len() < 17 {
        rec.clear();
        rec.push(typ);
        rec.extend_from_slice(&r0.0.to_be_bytes());
        rec.extend_from_slice(&t0.to_be_bytes());
        return (r0.0, t0);
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&rec[1..9]);
    let base_ref = u64::from_be_bytes(a);
    a.copy_from_slice(&rec[9..17]);
    (base_ref, i64::from_be_bytes(a))
}

/// Encodes a complete Samples record into `rec` (cleared first). Prometheus writes nothing for
/// an empty batch; this writes the bare type byte, which decodes as zero samples.
pub fn encode_samples(rec: &mut Vec<u8>, samples: &[RefSample]) {
    rec.clear();
    if samples.is_empty() {
        rec.push(SAMPLES);
    }
    extend_samples(rec, samples);
}

/// Decodes a Samples record, appending to `out`.
pub fn decode_samples(rec: &[u8], out: &mut Vec<RefSample>) -> Result<(), RecordError> {
    let mut d = Dec::new(body(rec, SAMPLES)?);
    if d.is_empty() {
        return Ok(());
    }
    let (base_ref, base_t) = based_header(&mut d)?;
    for_each_entry(&mut d, |d| {
        let dr = d.varint()?;
        let dt = d.varint()?;
        let v = f64::from_bits(d.be64()?);
        out.push((
            SeriesRef(base_ref.wrapping_add(dr as u64)),
            base_t.wrapping_add(dt),
            v,
        ));
        Ok(())
    })
}

fn based_header(d: &mut Dec<'_>) -> Result<(u64, i64), RecordError> {
    let total = d.b.len();
    let base_ref = d.be64().map_err(|_| RecordError::BytesLeft(total))?;
    let base_t = d.be64().map_err(|_| RecordError::BytesLeft(total))? as i64;
    Ok((base_ref, base_t))
}

// ---------------------------------------------------------------------------------------------
// Exemplars

/// Appends exemplars to an Exemplars record under construction (starting it if empty).
pub fn extend_exemplars(rec: &mut Vec<u8>, exemplars: &[RefExemplar]) {
    let Some(e0) = exemplars.first() else { return };
    let (base_ref, base_t) = start_based(rec, EXEMPLARS, e0.series_ref, e0.t);
    for e in exemplars {
        put_varint(rec, e.series_ref.0.wrapping_sub(base_ref) as i64);
        put_varint(rec, e.t.wrapping_sub(base_t));
        rec.extend_from_slice(&e.v.to_bits().to_be_bytes());
        e.labels.as_view().write_wire(rec);
    }
}

pub fn decode_exemplars(rec: &[u8], out: &mut Vec<RefExemplar>) -> Result<(), RecordError> {
    let mut d = Dec::new(body(rec, EXEMPLARS)?);
    if d.is_empty() {
        return Ok(());
    }
    let (base_ref, base_t) = based_header(&mut d)?;
    for_each_entry(&mut d, |d| {
        let dr = d.varint()?;
        let dt = d.varint()?;
        let v = f64::from_bits(d.be64()?);
        let labels = d.labels()?.to_owned();
        out.push(RefExemplar {
            series_ref: SeriesRef(base_ref.wrapping_add(dr as u64)),
            t: base_t.wrapping_add(dt),
            v,
            labels,
        });
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tombstones (only checkpoints pass them on; the agent never writes them)

pub fn encode_tombstones(rec: &mut Vec<u8>, tombstones: &[Tombstone]) {
    rec.clear();
    rec.push(TOMBSTONES);
    for t in tombstones {
        rec.extend_from_slice(&t.series_ref.0.to_be_bytes());
        put_varint(rec, t.mint);
        put_varint(rec, t.maxt);
    }
}

pub fn decode_tombstones(rec: &[u8], out: &mut Vec<Tombstone>) -> Result<(), RecordError> {
    let mut d = Dec::new(body(rec, TOMBSTONES)?);
    for_each_entry(&mut d, |d| {
        let series_ref = SeriesRef(d.be64()?);
        let mint = d.varint()?;
        let maxt = d.varint()?;
        out.push(Tombstone {
            series_ref,
            mint,
            maxt,
        });
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Metadata (the agent never writes it; decoded for checkpoints and inspection)

pub fn encode_metadata(rec: &mut Vec<u8>, metadata: &[RefMetadata]) {
    rec.clear();
    rec.push(METADATA);
    for m in metadata {
        put_uvarint(rec, m.series_ref.0);
        rec.push(m.metric_type);
        put_uvarint(rec, 2);
        put_uvarint_str(rec, "UNIT");
        put_uvarint_str(rec, &m.unit);
        put_uvarint_str(rec, "HELP");
        put_uvarint_str(rec, &m.help);
    }
}

/// Decodes a Metadata record; fields other than `UNIT` and `HELP` are skipped.
pub fn decode_metadata(rec: &[u8], out: &mut Vec<RefMetadata>) -> Result<(), RecordError> {
    let mut d = Dec::new(body(rec, METADATA)?);
    for_each_entry(&mut d, |d| {
        let series_ref = SeriesRef(d.uvarint()?);
        let metric_type = d.byte()?;
        let n = d.uvarint()?;
        let mut m = RefMetadata {
            series_ref,
            metric_type,
            unit: String::new(),
            help: String::new(),
        };
        for _ in 0..n {
            let name = d.uvarint_string()?;
            let value = d.uvarint_string()?;
            match name {
                "UNIT" => m.unit = value.to_owned(),
                "HELP" => m.help = value.to_owned(),
                _ => {}
            }
        }
        out.push(m);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn r(n: u64) -> SeriesRef {
        SeriesRef(n)
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    /// Bytes built by hand from the record table of docs/compat.md (*WAL format*).
    #[test]
    fn series_golden() {
        let lab = l(&[("job", "j"), ("__name__", "up")]);
        let mut rec = Vec::new();
        extend_series(
            &mut rec,
            [(r(1), lab.as_view()), (r(300), Labels::empty().as_view())],
        );
        let mut want = vec![1u8];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.push(2);
        want.extend_from_slice(b"\x08__name__\x02up\x03job\x01j");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x01, 0x2c]);
        want.push(0);
        assert_eq!(rec, want);
        let mut out = Vec::new();
        decode_series(&rec, &mut out).expect("decode");
        assert_eq!(out, vec![(r(1), lab), (r(300), Labels::empty())]);
    }

    #[test]
    fn a_series_record_with_an_over_long_varint_is_refused_naming_the_byte() {
        // Ref 1, then a set whose count (1) is written in two bytes.
        let mut rec = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 1];
        rec.extend_from_slice(b"\x81\x00\x01a\x01b");
        let mut out = Vec::new();
        assert_eq!(
            decode_series(&rec, &mut out).unwrap_err(),
            RecordError::OverlongVarint { offset: 9 }
        );
    }

    #[test]
    fn samples_golden_signed_deltas_first_sample_base() {
        let mut rec = Vec::new();
        encode_samples(
            &mut rec,
            &[(r(10), 1000, 1.0), (r(9), 1015, 2.5), (r(12), 999, -0.0)],
        );
        let mut want = vec![2u8];
        want.extend_from_slice(&10u64.to_be_bytes());
        want.extend_from_slice(&1000i64.to_be_bytes());
        // sample 0: deltas 0, 0
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        // sample 1: dRef -1 -> zigzag 1; dTime 15 -> 30
        want.extend_from_slice(&[1, 30]);
        want.extend_from_slice(&2.5f64.to_bits().to_be_bytes());
        // sample 2: dRef 2 -> 4; dTime -1 -> 1
        want.extend_from_slice(&[4, 1]);
        want.extend_from_slice(&(-0.0f64).to_bits().to_be_bytes());
        assert_eq!(rec, want);
        let mut out = Vec::new();
        decode_samples(&rec, &mut out).expect("decode");
        assert_eq!(out.len(), 3);
        assert_eq!((out[1].0, out[1].1, out[1].2), (r(9), 1015, 2.5));
        assert_eq!((out[2].0, out[2].1), (r(12), 999));
        assert!(out[2].2.is_sign_negative());
    }

    #[test]
    fn extend_continues_with_the_same_base() {
        let mut a = Vec::new();
        extend_samples(&mut a, &[(r(5), 100, 1.0)]);
        extend_samples(&mut a, &[(r(7), 130, 2.0), (r(6), 90, 3.0)]);
        let mut b = Vec::new();
        encode_samples(
            &mut b,
            &[(r(5), 100, 1.0), (r(7), 130, 2.0), (r(6), 90, 3.0)],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn empty_samples_record_and_errors() {
        let mut out = Vec::new();
        decode_samples(&[SAMPLES], &mut out).expect("empty body is fine");
        assert!(out.is_empty());
        assert_eq!(decode_samples(&[], &mut out), Err(RecordError::Empty));
        assert_eq!(
            decode_samples(&[SERIES], &mut out),
            Err(RecordError::WrongType {
                expected: SAMPLES,
                found: SERIES
            })
        );
        let mut rec = Vec::new();
        encode_samples(&mut rec, &[(r(1), 1, 1.0), (r(2), 2, 2.0)]);
        rec.truncate(rec.len() - 3);
        // The second entry is 2 varint bytes + 5 of its 8 value bytes.
        assert_eq!(
            decode_samples(&rec, &mut out),
            Err(RecordError::BytesLeft(7))
        );
        assert_eq!(
            decode_samples(&rec[..10], &mut Vec::new()),
            Err(RecordError::BytesLeft(9))
        );
        let mut bad = vec![SAMPLES];
        bad.extend_from_slice(&[0; 16]);
        bad.extend_from_slice(&[0xff; 11]);
        assert!(matches!(
            decode_samples(&bad, &mut out),
            Err(RecordError::VarintOverflow { .. })
        ));
        assert_eq!(
            "unexpected 7 bytes left in entry",
            RecordError::BytesLeft(7).to_string()
        );
    }

    #[test]
    fn tombstones_golden() {
        // be64 ref 3, varint mint -1 (zigzag 1), varint maxt 64 (zigzag 128 = 0x80 0x01)
        let rec = [3u8, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0x80, 0x01];
        let mut out = Vec::new();
        decode_tombstones(&rec, &mut out).expect("decode");
        assert_eq!(
            out,
            vec![Tombstone {
                series_ref: r(3),
                mint: -1,
                maxt: 64
            }]
        );
        let mut enc = Vec::new();
        encode_tombstones(&mut enc, &out);
        assert_eq!(enc, rec);
    }

    #[test]
    fn exemplars_golden() {
        let ex = RefExemplar {
            series_ref: r(2),
            t: 50,
            v: 1.5,
            labels: l(&[("trace_id", "ab")]),
        };
        let mut rec = Vec::new();
        extend_exemplars(&mut rec, std::slice::from_ref(&ex));
        let mut want = vec![4u8];
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&50i64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        want.extend_from_slice(b"\x01\x08trace_id\x02ab");
        assert_eq!(rec, want);
        let mut out = Vec::new();
        decode_exemplars(&rec, &mut out).expect("decode");
        assert_eq!(out, vec![ex]);
    }

    #[test]
    fn metadata_golden_skips_unknown_fields() {
        // uvarint ref 200 = c8 01, type counter, 3 fields, one unknown.
        let mut rec = vec![6u8, 0xc8, 0x01, 1, 3];
        rec.extend_from_slice(b"\x04UNIT\x05bytes\x03FOO\x01x\x04HELP\x02hi");
        let mut out = Vec::new();
        decode_metadata(&rec, &mut out).expect("decode");
        assert_eq!(
            out,
            vec![RefMetadata {
                series_ref: r(200),
                metric_type: 1,
                unit: "bytes".into(),
                help: "hi".into()
            }]
        );
        let mut enc = Vec::new();
        encode_metadata(&mut enc, &out);
        let mut back = Vec::new();
        decode_metadata(&enc, &mut back).expect("decode");
        assert_eq!(back, out);
    }

    #[test]
    fn varint_matches_go() {
        let mut b = Vec::new();
        for (x, want) in [
            (0i64, &[0u8][..]),
            (-1, &[1]),
            (1, &[2]),
            (-64, &[0x7f]),
            (64, &[0x80, 1]),
        ] {
            b.clear();
            put_varint(&mut b, x);
            assert_eq!(b, want, "{x}");
        }
        b.clear();
        put_varint(&mut b, i64::MIN);
        assert_eq!(Dec::new(&b).varint(), Ok(i64::MIN));
        b.clear();
        put_uvarint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
        assert_eq!(Dec::new(&b).uvarint(), Ok(u64::MAX));
    }

    fn label_strategy() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map("[a-z_]{1,8}", "\\PC{0,12}", 0..6)
            .prop_map(|m| Labels::from_pairs(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
    }

    proptest! {
        #[test]
        fn samples_roundtrip(s in proptest::collection::vec((any::<u64>(), any::<i64>(), any::<f64>()), 0..50)) {
            let mut rec = Vec::new();
            let s: Vec<RefSample> = s.into_iter().map(|(a, t, v)| (r(a), t, v)).collect();
            encode_samples(&mut rec, &s);
            let mut out = Vec::new();
            decode_samples(&rec, &mut out).expect("decode");
            prop_assert_eq!(out.len(), s.len());
            for (a, b) in out.iter().zip(&s) {
                prop_assert_eq!((a.0, a.1, a.2.to_bits()), (b.0, b.1, b.2.to_bits()));
            }
        }

        #[test]
        fn series_roundtrip(s in proptest::collection::vec((any::<u64>(), label_strategy()), 0..20)) {
            let mut rec = Vec::new();
            let s: Vec<(SeriesRef, Labels)> = s.into_iter().map(|(a, l)| (r(a), l)).collect();
            extend_series(&mut rec, s.iter().map(|(a, l)| (*a, l.as_view())));
            let mut out = Vec::new();
            decode_series(&rec, &mut out).expect("decode");
            prop_assert_eq!(out, s);
        }

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_samples(&b, &mut Vec::new());
            let _ = decode_series(&b, &mut Vec::new());
            let _ = decode_exemplars(&b, &mut Vec::new());
            let _ = decode_tombstones(&b, &mut Vec::new());
            let _ = decode_metadata(&b, &mut Vec::new());
        }
    }
}
