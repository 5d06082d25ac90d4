//! A borrowing walk over a `prometheus.WriteRequest` (the protobuf inside a remote-write
//! body, after snappy), so the sink can count samples without allocating a `String` per label
//! as a prost decode does: the sink must stay cheap next to the scrapers it measures.
//!
//! The subset of the schema it reads (`agent::remote_write::proto` has the whole of it):
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; ... }   // others skipped
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; ... }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }
//! ```
//!
//! Wire rules used: a field key is a varint `field << 3 | wire_type`; wire type 0 is a varint,
//! 1 is 8 little-endian bytes, 2 is a varint length then that many bytes, 5 is 4 bytes; fields
//! may come in any order and unknown fields are skipped; a missing scalar is its default
//! (`""`, `0`, `0.0`); an `int64` varint is the two's complement value.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    #[error("varint too long at byte {0}")]
    Varint(usize),
    #[error("unsupported wire type {wire_type} at byte {offset}")]
    WireType { wire_type: u64, offset: usize },
    #[error("label {0} is not UTF-8")]
    Utf8(&'static str),
}

/// What the sink needs of one `TimeSeries`.
#[derive(Debug, Clone, Copy)]
pub struct SeriesInfo<'a> {
    /// Hash of the label pairs in wire order (see [`label_hash`]).
    pub key: u64,
    pub name: &'a str,
    pub instance: &'a str,
}

/// Feeds one label pair into a series key; the prost-based reference in the tests uses the
/// same function, so both paths give the same keys.
pub fn label_hash(h: &mut DefaultHasher, name: &[u8], value: &[u8]) {
    h.write(name);
    h.write_u8(0xff);
    h.write(value);
    h.write_u8(0xff);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole message, for error positions.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(WireError::Truncated(self.base + self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError::Varint(self.base + self.pos))
    }

    fn take(&mut self, n: usize) -> Result<(&'a [u8], usize), WireError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated(self.base + start))?;
        self.pos = end;
        Ok((&self.buf[start..end], self.base + start))
    }

    /// The next field: (number, wire type).
    fn key(&mut self) -> Result<(u64, u64), WireError> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }

    fn bytes(&mut self) -> Result<(&'a [u8], usize), WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated(self.base + self.pos))?;
        self.take(n)
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), WireError> {
        match wire_type {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => Err(WireError::WireType {
                wire_type,
                offset: self.base + self.pos,
            }),
        }
    }
}

/// Calls `f` once per `TimeSeries` of the message `buf`, with its labels' key, name and
/// instance and its samples `(value, timestamp)` (collected in `samples`, reused).
pub fn for_each_series<'a>(
    buf: &'a [u8],
    samples: &mut Vec<(f64, i64)>,
    mut f: impl FnMut(SeriesInfo<'a>, &[(f64, i64)]),
) -> Result<(), WireError> {
    let mut req = Reader::new(buf, 0);
    while !req.done() {
        let (field, wt) = req.key()?;
        if field != 1 || wt != 2 {
            req.skip(wt)?;
            continue;
        }
        let (ts, base) = req.bytes()?;
        let mut r = Reader::new(ts, base);
        let mut h = DefaultHasher::new();
        let (mut name, mut instance): (&[u8], &[u8]) = (b"", b"");
        samples.clear();
        while !r.done() {
            let (field, wt) = r.key()?;
            match (field, wt) {
                (1, 2) => {
                    let (label, base) = r.bytes()?;
                    let mut l = Reader::new(label, base);
                    let (mut n, mut v): (&[u8], &[u8]) = (b"", b"");
                    while !l.done() {
                        match l.key()? {
                            (1, 2) => n = l.bytes()?.0,
                            (2, 2) => v = l.bytes()?.0,
                            (_, wt) => l.skip(wt)?,
                        }
                    }
                    label_hash(&mut h, n, v);
                    match n {
                        b"__name__" => name = v,
                        b"instance" => instance = v,
                        _ => {}
                    }
                }
                (2, 2) => {
                    let (sample, base) = r.bytes()?;
                    let mut s = Reader::new(sample, base);
                    let (mut value, mut t) = (0.0, 0i64);
                    while !s.done() {
                        match s.key()? {
                            (1, 1) => {
                                let (b, _) = s.take(8)?;
                                let mut a = [0u8; 8];
                                a.copy_from_slice(b);
                                value = f64::from_le_bytes(a);
                            }
                            // int64: the varint is the two's complement bit pattern.
                            (2, 0) => t = s.varint()? as i64,
                            (_, wt) => s.skip(wt)?,
                        }
                    }
                    samples.push((value, t));
                }
                (_, wt) => r.skip(wt)?,
            }
        }
        let name = std::str::from_utf8(name).map_err(|_| WireError::Utf8("__name__"))?;
        let instance = std::str::from_utf8(instance).map_err(|_| WireError::Utf8("instance"))?;
        f(
            SeriesInfo {
                key: h.finish(),
                name,
                instance,
            },
            samples,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::remote_write::proto::{
        Exemplar, Label, MetricMetadata, Sample, TimeSeries, WriteRequest,
    };
    use proptest::prelude::*;
    use prost::Message;

    /// (key, name, instance, samples) per series, as the walker sees them.
    type Walked = Vec<(u64, String, String, Vec<(u64, i64)>)>;

    fn walk(buf: &[u8]) -> Result<Walked, WireError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for_each_series(buf, &mut scratch, |info, s| {
            out.push((
                info.key,
                info.name.to_owned(),
                info.instance.to_owned(),
                s.iter().map(|(v, t)| (v.to_bits(), *t)).collect(),
            ))
        })?;
        Ok(out)
    }

    /// The same, from prost's decode: the reference.
    fn reference(req: &WriteRequest) -> Walked {
        req.timeseries
            .iter()
            .map(|ts| {
                let mut h = DefaultHasher::new();
                let (mut name, mut instance) = ("", "");
                for l in &ts.labels {
                    label_hash(&mut h, l.name.as_bytes(), l.value.as_bytes());
                    match l.name.as_str() {
                        "__name__" => name = &l.value,
                        "instance" => instance = &l.value,
                        _ => {}
                    }
                }
                (
                    h.finish(),
                    name.to_owned(),
                    instance.to_owned(),
                    ts.samples
                        .iter()
                        .map(|s| (s.value.to_bits(), s.timestamp))
                        .collect(),
                )
            })
            .collect()
    }

    fn label() -> impl Strategy<Value = Label> {
        (
            prop_oneof![
                Just("__name__".to_owned()),
                Just("instance".to_owned()),
                "[a-z]{0,6}"
            ],
            "[a-zé0-9:._]{0,12}",
        )
            .prop_map(|(n, v)| Label::new(n, v))
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            prop_oneof![
                any::<f64>(),
                Just(0.0),
                Just(f64::from_bits(crate::sink::STALE_NAN_BITS))
            ],
            prop_oneof![any::<i64>(), Just(0i64), -5i64..5],
        )
            .prop_map(|(value, timestamp)| Sample { value, timestamp })
    }

    fn series() -> impl Strategy<Value = TimeSeries> {
        (
            prop::collection::vec(label(), 0..6),
            prop::collection::vec(sample(), 0..4),
            prop::collection::vec(sample(), 0..2),
        )
            .prop_map(|(labels, samples, ex)| TimeSeries {
                labels,
                samples,
                // Exemplars are skipped by the walker; they must not disturb it.
                exemplars: ex
                    .into_iter()
                    .map(|s| Exemplar {
                        labels: vec![Label::new("trace_id", "abc")],
                        value: s.value,
                        timestamp: s.timestamp,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn walk_matches_prost(
            ts in prop::collection::vec(series(), 0..8),
            meta in 0usize..3,
        ) {
            let req = WriteRequest {
                timeseries: ts,
                metadata: (0..meta)
                    .map(|i| MetricMetadata {
                        r#type: 1,
                        metric_family_name: format!("m{i}"),
                        help: "h".to_owned(),
                        unit: String::new(),
                    })
                    .collect(),
            };
            let buf = req.encode_to_vec();
            // The reference is what prost decodes (proto3 drops defaults such as -0.0).
            let decoded = WriteRequest::decode(buf.as_slice()).expect("prost decodes its own bytes");
            prop_assert_eq!(walk(&buf), Ok(reference(&decoded)));
        }

        #[test]
        fn never_panics_on_garbage(buf in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = walk(&buf);
        }
    }

    #[test]
    fn truncated_and_bad_wire_types_are_errors() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label::new("__name__", "x")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
                exemplars: vec![],
            }],
            metadata: vec![],
        };
        let buf = req.encode_to_vec();
        for cut in 1..buf.len() {
            assert!(walk(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            walk(&[0x0b]),
            Err(WireError::WireType { wire_type: 3, .. })
        ));
        assert_eq!(walk(&[0x08, 0xff]), Err(WireError::Truncated(2)));
    }
}
