//! The remote-write 1.0 wire format: `prometheus.WriteRequest` (Prometheus `prompb/remote.proto`
//! and `prompb/types.proto`), protobuf, then snappy **block** compression.
//!
//! ```text
//! message WriteRequest   { repeated TimeSeries timeseries = 1; /* 2 reserved */
//!                          repeated MetricMetadata metadata = 3; }
//! message TimeSeries     { repeated Label labels = 1;   // sorted by name
//!                          repeated Sample samples = 2;
//!                          repeated Exemplar exemplars = 3; }
//! message Label          { string name = 1; string value = 2; }
//! message Sample         { double value = 1; int64 timestamp = 2; }   // ms since epoch
//! message Exemplar       { repeated Label labels = 1; double value = 2; int64 timestamp = 3; }
//! message MetricMetadata { MetricType type = 1; string metric_family_name = 2;
//!                          string help = 4; string unit = 5; }
//! ```
//!
//! Proto3 rules apply: a scalar equal to its default (`0`, `0.0`, `""`) is not written, and a
//! double is written as its raw 8 little-endian bytes (wire type 1), so staleness-marker NaNs
//! keep their bit pattern.
//!
//! The prost derives below are the reference model (and what a receiver decodes with). The
//! hot path is [`WriteRequestEncoder`], which writes the same bytes straight from borrowed
//! labels and samples into buffers it keeps between requests, so a steady stream of batches
//! allocates nothing once the buffers have grown to the batch size.

use prost::Message;

use crate::labels::{put_label, put_uvarint, uvarint_len, LabelPair, LabelsRef};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// `prometheus.Sample`: `timestamp` is in milliseconds since the epoch.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// `prometheus.MetricMetadata.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    Gaugehistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

/// Why a body could not be decoded (used by receivers and tests).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("snappy block decompression failed: {0}")]
    Snappy(#[from] snap::Error),
    #[error("invalid prometheus.WriteRequest protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

impl WriteRequest {
    /// Decodes a remote-write HTTP body: snappy block format, then protobuf.
    pub fn decode_snappy(body: &[u8]) -> Result<WriteRequest, DecodeError> {
        let raw = snap::raw::Decoder::new().decompress_vec(body)?;
        Ok(WriteRequest::decode(raw.as_slice())?)
    }

    /// Protobuf bytes via prost (the reference for [`WriteRequestEncoder`]).
    pub fn to_protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// Sorts labels by name, as receivers require (Prometheus rejects unsorted label sets).
pub fn sort_labels(labels: &mut [Label]) {
    labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
}

/// One time series of a request, borrowed: its labels must already be sorted by name.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'a> {
    pub labels: SeriesLabels<'a>,
    pub samples: &'a [Sample],
    pub exemplars: &'a [Exemplar],
}

/// A series' labels: structs, or a kept [`Labels`](crate::labels::Labels) set (the form the
/// queue keeps, shared with the instance) with the endpoint's external labels merged in.
#[derive(Debug, Clone, Copy)]
pub enum SeriesLabels<'a> {
    Labels(&'a [Label]),
    /// Sorted `labels`, plus each of the sorted `external` labels whose name they lack.
    Packed {
        labels: LabelsRef<'a>,
        external: Option<LabelsRef<'a>>,
    },
}

impl<'a> From<&'a [Label]> for SeriesLabels<'a> {
    fn from(l: &'a [Label]) -> Self {
        SeriesLabels::Labels(l)
    }
}

impl<'a> From<&'a Vec<Label>> for SeriesLabels<'a> {
    fn from(l: &'a Vec<Label>) -> Self {
        SeriesLabels::Labels(l)
    }
}

impl<'a, const N: usize> From<&'a [Label; N]> for SeriesLabels<'a> {
    fn from(l: &'a [Label; N]) -> Self {
        SeriesLabels::Labels(l)
    }
}

impl<'a> From<&'a crate::labels::Labels> for SeriesLabels<'a> {
    fn from(l: &'a crate::labels::Labels) -> Self {
        SeriesLabels::Packed {
            labels: l.as_view(),
            external: None,
        }
    }
}

/// Writes one `Label` message (field 1 of a `TimeSeries`). A kept set's pair is already in
/// this form (`labels::LabelPair::Encoded`): copied as it is, one fixed-size move cut back to
/// its length when it is at most [`LabelPair::READABLE`] bytes (no `memcpy` call per pair).
#[inline]
fn put_pair(buf: &mut Vec<u8>, pair: LabelPair<'_>) {
    match pair {
        LabelPair::Encoded { field, readable } => {
            match readable.get(..CHUNK).map(<&[u8; CHUNK]>::try_from) {
                Some(Ok(chunk)) if field.len() <= CHUNK => {
                    buf.extend_from_slice(chunk);
                    buf.truncate(buf.len() - (CHUNK - field.len()));
                }
                _ => buf.extend_from_slice(field),
            }
        }
        LabelPair::Strings(n, v) => put_label(buf, n, v),
    }
}

/// Pairs up to this long are copied by [`put_pair`] without a call to `memcpy`.
const CHUNK: usize = LabelPair::READABLE;

/// Writes the pairs of `labels` merged with those of `external` whose name `labels` lacks, in
/// name order (both are sorted by name; byte order is the order of the names as strings).
/// One walk over each, no UTF-8 re-check (the sets were validated when built).
fn put_packed(buf: &mut Vec<u8>, labels: LabelsRef<'_>, external: Option<LabelsRef<'_>>) {
    let mut a = labels.raw_pairs();
    let Some(external) = external.filter(|e| !e.is_empty()) else {
        while let Some(p) = a.next_label() {
            put_pair(buf, p);
        }
        return;
    };
    let mut b = external.raw_pairs();
    let (mut x, mut y) = (a.next_label(), b.next_label());
    loop {
        match (x, y) {
            (Some(p), Some(q)) => match p.name().cmp(q.name()) {
                std::cmp::Ordering::Less => {
                    put_pair(buf, p);
                    x = a.next_label();
                }
                std::cmp::Ordering::Greater => {
                    put_pair(buf, q);
                    y = b.next_label();
                }
                std::cmp::Ordering::Equal => {
                    put_pair(buf, p);
                    x = a.next_label();
                    y = b.next_label();
                }
            },
            (Some(p), None) => {
                put_pair(buf, p);
                while let Some(p) = a.next_label() {
                    put_pair(buf, p);
                }
                return;
            }
            (None, Some(q)) => {
                put_pair(buf, q);
                while let Some(q) = b.next_label() {
                    put_pair(buf, q);
                }
                return;
            }
            (None, None) => return,
        }
    }
}

/// Bytes reserved for a `TimeSeries`' length prefix before its body is written: a varint of 2
/// bytes holds bodies of 128 to 16,383 bytes, the usual size of one series with one sample.
const SERIES_LEN_GUESS: usize = 2;

/// Writes the length of the body that follows the `reserved` bytes at `at` (to the end of
/// `buf`) as a varint there, moving the body when the varint is not `reserved` bytes long.
fn patch_len(buf: &mut Vec<u8>, at: usize, reserved: usize) {
    let body = buf.len() - at - reserved;
    let n = uvarint_len(body as u64);
    if n != reserved {
        let old = buf.len();
        if n < reserved {
            buf.copy_within(at + reserved..old, at + n);
            buf.truncate(old - (reserved - n));
        } else {
            buf.resize(old + (n - reserved), 0);
            buf.copy_within(at + reserved..old, at + n);
        }
    }
    let mut v = body as u64;
    for byte in &mut buf[at..at + n] {
        *byte = (v as u8) | 0x80;
        v >>= 7;
    }
    buf[at + n - 1] &= 0x7f;
}

/// Writes `WriteRequest`s into buffers it keeps and reuses, then snappy-compresses them.
pub struct WriteRequestEncoder {
    proto: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl std::fmt::Debug for WriteRequestEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequestEncoder")
            .field("proto_capacity", &self.proto.capacity())
            .field("compressed_capacity", &self.compressed.capacity())
            .finish()
    }
}

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

const fn key(field: u8, wire: u8) -> u8 {
    // Every field number here is < 16, so the key is one byte.
    (field << 3) | wire
}

/// Length of a length-delimited field (key + length prefix + body) with a body of `len` bytes.
fn len_field(len: usize) -> usize {
    1 + uvarint_len(len as u64) + len
}

fn string_field_len(s: &str) -> usize {
    bytes_field_len(s.as_bytes())
}

#[inline]
fn bytes_field_len(s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field(s.len())
    }
}

fn put_string(buf: &mut Vec<u8>, field: u8, s: &str) {
    put_bytes(buf, field, s.as_bytes());
}

#[inline]
fn put_bytes(buf: &mut Vec<u8>, field: u8, s: &[u8]) {
    if !s.is_empty() {
        buf.push(key(field, LEN));
        put_uvarint(buf, s.len() as u64);
        buf.extend_from_slice(s);
    }
}

// Skipped only when the bits are +0.0: -0.0 is written, so the receiver gets the sign the
// target exposed (prost and gogo compare with `!= 0` and send -0 as +0; a proto3 decoder reads
// an explicitly written default all the same).
fn put_double(buf: &mut Vec<u8>, field: u8, v: f64) {
    if v.to_bits() != 0 {
        buf.push(key(field, FIXED64));
        buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

fn double_len(v: f64) -> usize {
    if v.to_bits() != 0 {
        9
    } else {
        0
    }
}

fn put_int64(buf: &mut Vec<u8>, field: u8, v: i64) {
    if v != 0 {
        buf.push(key(field, VARINT));
        // int64 is a plain (not zigzag) varint: negatives take 10 bytes.
        put_uvarint(buf, v as u64);
    }
}

fn int64_len(v: i64) -> usize {
    if v != 0 {
        1 + uvarint_len(v as u64)
    } else {
        0
    }
}

fn label_body_len(l: &Label) -> usize {
    string_field_len(&l.name) + string_field_len(&l.value)
}

fn labels_len(labels: &[Label]) -> usize {
    labels.iter().map(|l| len_field(label_body_len(l))).sum()
}

/// Writes `labels` as field 1 of their message (`TimeSeries` or `Exemplar`).
fn put_labels(buf: &mut Vec<u8>, labels: &[Label]) {
    for l in labels {
        put_label(buf, l.name.as_bytes(), l.value.as_bytes());
    }
}

fn sample_body_len(s: &Sample) -> usize {
    double_len(s.value) + int64_len(s.timestamp)
}

fn exemplar_body_len(e: &Exemplar) -> usize {
    labels_len(&e.labels) + double_len(e.value) + int64_len(e.timestamp)
}

fn metadata_body_len(m: &MetricMetadata) -> usize {
    int64_len(i64::from(m.r#type))
        + string_field_len(&m.metric_family_name)
        + string_field_len(&m.help)
        + string_field_len(&m.unit)
}

impl Default for WriteRequestEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteRequestEncoder {
    pub fn new() -> Self {
        WriteRequestEncoder {
            proto: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// Encodes one request and compresses it; returns the snappy body to send. The series'
    /// labels must be sorted by name (the queue manager sorts them once, when the series is
    /// stored). The returned slice lives until the next call.
    pub fn encode<'a>(
        &mut self,
        series: impl IntoIterator<Item = SeriesRef<'a>>,
        metadata: &[MetricMetadata],
    ) -> &[u8] {
        self.encode_protobuf(series, metadata);
        self.compress()
    }

    /// Only the protobuf step (no compression); the bytes live until the next call.
    pub fn encode_protobuf<'a>(
        &mut self,
        series: impl IntoIterator<Item = SeriesRef<'a>>,
        metadata: &[MetricMetadata],
    ) -> &[u8] {
        let buf = &mut self.proto;
        buf.clear();
        let mut series = series.into_iter();
        let mut next = series.next();
        while let Some(s) = next {
            // The next series' labels start loading while this one is written (they are
            // usually cold: see `LabelsRef::warm`).
            next = series.next();
            if let Some(SeriesRef {
                labels: SeriesLabels::Packed { labels, .. },
                ..
            }) = &next
            {
                labels.warm();
            }
            // The body is written once, after a guessed length prefix that is corrected
            // when the body's length needs another varint size (no walk to measure first).
            buf.push(key(1, LEN));
            let at = buf.len();
            buf.resize(at + SERIES_LEN_GUESS, 0);
            match s.labels {
                SeriesLabels::Labels(l) => put_labels(buf, l),
                SeriesLabels::Packed { labels, external } => put_packed(buf, labels, external),
            }
            for x in s.samples {
                buf.push(key(2, LEN));
                put_uvarint(buf, sample_body_len(x) as u64);
                put_double(buf, 1, x.value);
                put_int64(buf, 2, x.timestamp);
            }
            for e in s.exemplars {
                buf.push(key(3, LEN));
                put_uvarint(buf, exemplar_body_len(e) as u64);
                put_labels(buf, &e.labels);
                put_double(buf, 2, e.value);
                put_int64(buf, 3, e.timestamp);
            }
            patch_len(buf, at, SERIES_LEN_GUESS);
        }
        for m in metadata {
            buf.push(key(3, LEN));
            put_uvarint(buf, metadata_body_len(m) as u64);
            // An enum is an int32 varint; negative values (never produced) would take 10 bytes.
            put_int64(buf, 1, i64::from(m.r#type));
            put_string(buf, 2, &m.metric_family_name);
            put_string(buf, 4, &m.help);
            put_string(buf, 5, &m.unit);
        }
        &self.proto
    }

    /// Snappy block-compresses what [`encode_protobuf`](Self::encode_protobuf) last wrote.
    fn compress(&mut self) -> &[u8] {
        let need = snap::raw::max_compress_len(self.proto.len());
        // Grow only: a shrink-then-regrow would zero-fill the buffer on every request.
        if self.compressed.len() < need {
            self.compressed.resize(need, 0);
        }
        match self.snappy.compress(&self.proto, &mut self.compressed) {
            Ok(n) => &self.compressed[..n],
            // Unreachable with an output of max_compress_len bytes; the only other failure is
            // an input over 4 GiB, far beyond any batch. Fall back to the safe allocating path.
            Err(_) => {
                self.compressed = snap::raw::Encoder::new()
                    .compress_vec(&self.proto)
                    .unwrap_or_default();
                &self.compressed
            }
        }
    }

    /// The protobuf bytes of the last request (before compression).
    pub fn last_protobuf(&self) -> &[u8] {
        &self.proto
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lbl(n: &str, v: &str) -> Label {
        Label::new(n, v)
    }

    #[test]
    fn bytes_match_the_field_table() {
        // One series {a="b"} with one sample (v=1.0, t=2) and one metadata entry.
        let labels = [lbl("a", "b")];
        let samples = [Sample {
            value: 1.0,
            timestamp: 2,
        }];
        let meta = [MetricMetadata {
            r#type: MetricType::Counter as i32,
            metric_family_name: "m".into(),
            help: "h".into(),
            unit: String::new(),
        }];
        let mut enc = WriteRequestEncoder::new();
        let got = enc
            .encode_protobuf(
                [SeriesRef {
                    labels: (&labels).into(),
                    samples: &samples,
                    exemplars: &[],
                }],
                &meta,
            )
            .to_vec();
        let mut want = vec![
            0x0a, 21, // WriteRequest.timeseries (1, LEN), 21 bytes
            0x0a, 6, // TimeSeries.labels (1, LEN), 6 bytes
            0x0a, 1, b'a', // Label.name (1, LEN) "a"
            0x12, 1, b'b', // Label.value (2, LEN) "b"
            0x12, 11,   // TimeSeries.samples (2, LEN), 11 bytes
            0x09, // Sample.value (1, FIXED64)
        ];
        want.extend_from_slice(&1.0f64.to_le_bytes());
        want.extend_from_slice(&[
            0x10, 2, // Sample.timestamp (2, VARINT) 2
            0x1a, 8, // WriteRequest.metadata (3, LEN), 8 bytes
            0x08, 1, // MetricMetadata.type (1, VARINT) COUNTER
            0x12, 1, b'm', // metric_family_name (2, LEN)
            0x22, 1, b'h', // help (4, LEN); unit empty → absent
        ]);
        assert_eq!(got, want);
        let decoded = WriteRequest::decode(want.as_slice()).unwrap();
        assert_eq!(decoded.timeseries[0].samples[0].timestamp, 2);
        assert_eq!(decoded.metadata[0].metric_family_name, "m");
    }

    #[test]
    fn exemplar_and_negative_timestamp_bytes() {
        let labels = [lbl("n", "v")];
        let ex = [Exemplar {
            labels: vec![lbl("t", "x")],
            value: 0.0,
            timestamp: -1,
        }];
        let mut enc = WriteRequestEncoder::new();
        let got = enc
            .encode_protobuf(
                [SeriesRef {
                    labels: (&labels).into(),
                    samples: &[],
                    exemplars: &ex,
                }],
                &[],
            )
            .to_vec();
        let mut want = vec![
            0x0a, 29, // timeseries, 29 bytes
            0x0a, 6, 0x0a, 1, b'n', 0x12, 1, b'v', // labels {n="v"}
            0x1a, 19, // TimeSeries.exemplars (3, LEN), 19 bytes
            0x0a, 6, 0x0a, 1, b't', 0x12, 1, b'x', // Exemplar.labels {t="x"}
            // value 0.0 → absent
            0x18, // Exemplar.timestamp (3, VARINT)
        ];
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(got, want);
    }

    /// A scraped `-0` reaches the receiver as -0: the value is written although it compares
    /// equal to proto3's default, and decodes with its sign bit.
    #[test]
    fn negative_zero_is_written() {
        let labels = [lbl("n", "v")];
        let samples = [
            Sample {
                value: -0.0,
                timestamp: 1,
            },
            Sample {
                value: 0.0,
                timestamp: 2,
            },
        ];
        let mut enc = WriteRequestEncoder::new();
        let got = enc
            .encode_protobuf(
                [SeriesRef {
                    labels: (&labels).into(),
                    samples: &samples,
                    exemplars: &[],
                }],
                &[],
            )
            .to_vec();
        let mut want = vec![
            0x0a, 25, // timeseries, 25 bytes
            0x0a, 6, 0x0a, 1, b'n', 0x12, 1, b'v', // labels {n="v"}
            0x12, 11,   // TimeSeries.samples (2, LEN), 11 bytes
            0x09, // Sample.value (1, FIXED64)
        ];
        want.extend_from_slice(&(-0.0f64).to_bits().to_le_bytes());
        want.extend_from_slice(&[0x10, 1]); // Sample.timestamp 1
        want.extend_from_slice(&[0x12, 2, 0x10, 2]); // +0.0 absent, timestamp 2
        assert_eq!(got, want);
        let back = WriteRequest::decode(want.as_slice()).unwrap();
        let v = back.timeseries[0].samples[0].value;
        assert!(v == 0.0 && v.is_sign_negative());
    }

    #[test]
    fn compressed_body_is_snappy_block_and_roundtrips() {
        let labels = [lbl("__name__", "up"), lbl("job", "x")];
        let samples = [Sample {
            value: f64::from_bits(0x7ff0_0000_0000_0002), // Prometheus staleness marker
            timestamp: 1_700_000_000_000,
        }];
        let mut enc = WriteRequestEncoder::new();
        let body = enc
            .encode(
                [SeriesRef {
                    labels: (&labels).into(),
                    samples: &samples,
                    exemplars: &[],
                }],
                &[],
            )
            .to_vec();
        // Block format has no stream identifier chunk (0xff 06 00 00 "sNaPpY").
        assert_ne!(body.first(), Some(&0xff));
        let req = WriteRequest::decode_snappy(&body).unwrap();
        assert_eq!(
            req.timeseries[0].samples[0].value.to_bits(),
            0x7ff0_0000_0000_0002
        );
        assert_eq!(req.timeseries[0].labels, labels.to_vec());
    }

    #[test]
    fn decode_errors_name_the_layer() {
        let err = WriteRequest::decode_snappy(b"\xff\xff\xff\xff\xff").unwrap_err();
        assert!(err.to_string().contains("snappy"), "{err}");
        let bad = snap::raw::Encoder::new().compress_vec(&[0x0a, 50]).unwrap();
        let err = WriteRequest::decode_snappy(&bad).unwrap_err();
        assert!(err.to_string().contains("protobuf"), "{err}");
    }

    #[test]
    fn sort_labels_by_name() {
        let mut l = vec![lbl("z", "1"), lbl("__name__", "m"), lbl("a", "2")];
        sort_labels(&mut l);
        let names: Vec<_> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "a", "z"]);
    }

    fn arb_label() -> impl Strategy<Value = Label> {
        ("[a-z_]{0,8}", "\\PC{0,12}").prop_map(|(n, v)| Label::new(n, v))
    }

    /// Any value but -0.0, which prost drops and this encoder writes
    /// (`negative_zero_is_written`).
    fn arb_value() -> impl Strategy<Value = f64> {
        any::<f64>().prop_map(|v| {
            if v.to_bits() == (-0.0f64).to_bits() {
                0.0
            } else {
                v
            }
        })
    }

    fn arb_series() -> impl Strategy<Value = TimeSeries> {
        (
            prop::collection::vec(arb_label(), 0..4),
            prop::collection::vec(
                (arb_value(), any::<i64>())
                    .prop_map(|(value, timestamp)| Sample { value, timestamp }),
                0..4,
            ),
            prop::collection::vec(
                (
                    prop::collection::vec(arb_label(), 0..2),
                    arb_value(),
                    any::<i64>(),
                )
                    .prop_map(|(labels, value, timestamp)| Exemplar {
                        labels,
                        value,
                        timestamp,
                    }),
                0..2,
            ),
        )
            .prop_map(|(labels, samples, exemplars)| TimeSeries {
                labels,
                samples,
                exemplars,
            })
    }

    fn arb_metadata() -> impl Strategy<Value = MetricMetadata> {
        (0i32..8, "[a-z]{0,5}", "\\PC{0,5}", "[a-z]{0,3}").prop_map(|(t, n, h, u)| MetricMetadata {
            r#type: t,
            metric_family_name: n,
            help: h,
            unit: u,
        })
    }

    #[test]
    fn length_prefix_is_patched_to_the_minimal_varint() {
        // Bodies around every varint size boundary, behind a prefix that was guessed too
        // short, right and too long.
        for body in [
            0usize, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152,
        ] {
            for reserved in 1..=3 {
                let mut buf = vec![7u8; 3];
                let at = buf.len();
                buf.resize(at + reserved, 0);
                buf.extend((0..body).map(|i| i as u8));
                patch_len(&mut buf, at, reserved);
                let mut want = vec![7u8; 3];
                put_uvarint(&mut want, body as u64);
                want.extend((0..body).map(|i| i as u8));
                assert!(buf == want, "body {body}, reserved {reserved}");
            }
        }
    }

    proptest! {
        /// Packed labels with external labels merged in encode as the prost model of the
        /// merged set (the series' own value wins), sorted by name; without external labels
        /// too. Pairs on both sides of `LabelPair::READABLE` (64) and of 128 bytes; each set
        /// kept (its pairs copied encoded) and in the wire form (written field by field), in
        /// all four combinations.
        #[test]
        fn packed_labels_with_external_labels_match_prost(
            own in prop::collection::btree_map("[a-e_]{1,3}", "[x-z]{1,140}", 0..6),
            ext in prop::collection::btree_map("[a-e_]{1,3}", "[0-2]{1,3}", 0..4),
            value in arb_value(),
        ) {
            let labels = crate::labels::Labels::from_pairs(own.iter());
            let external = crate::labels::Labels::from_pairs(ext.iter());
            let mut all = ext.clone();
            all.extend(own.clone());
            let want_labels: Vec<Label> = all.iter().map(|(n, v)| Label::new(n, v)).collect();
            let samples = [Sample { value, timestamp: 5 }];
            let want = WriteRequest {
                timeseries: vec![TimeSeries { labels: want_labels, samples: samples.to_vec(), exemplars: vec![] }],
                metadata: vec![],
            }.to_protobuf();
            let (labels_wire, external_wire) = (labels.wire(), external.wire());
            let labels_view = crate::labels::LabelsRef::parse(&labels_wire).expect("valid").0;
            let external_view = crate::labels::LabelsRef::parse(&external_wire).expect("valid").0;
            let mut enc = WriteRequestEncoder::new();
            for (l, e) in [
                (labels.as_view(), external.as_view()),
                (labels_view, external.as_view()),
                (labels.as_view(), external_view),
                (labels_view, external_view),
            ] {
                enc.encode_protobuf([SeriesRef {
                    labels: SeriesLabels::Packed { labels: l, external: Some(e) },
                    samples: &samples,
                    exemplars: &[],
                }], &[]);
                prop_assert_eq!(enc.last_protobuf(), want.as_slice());
            }
        }

        /// The buffer-reusing encoder writes exactly what prost writes for the same request,
        /// including across reuse of one encoder.
        #[test]
        fn encoder_matches_prost(
            reqs in prop::collection::vec(
                (prop::collection::vec(arb_series(), 0..5),
                 prop::collection::vec(arb_metadata(), 0..3)),
                1..3)
        ) {
            let mut enc = WriteRequestEncoder::new();
            for (series, metadata) in reqs {
                let req = WriteRequest { timeseries: series.clone(), metadata: metadata.clone() };
                let want = req.to_protobuf();
                let views = series.iter().map(|s| SeriesRef {
                    labels: (&s.labels).into(), samples: &s.samples, exemplars: &s.exemplars,
                });
                let body = enc.encode(views, &metadata).to_vec();
                prop_assert_eq!(enc.last_protobuf(), want.as_slice());
                let back = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                prop_assert_eq!(back, want.clone());

            }
        }
    }
}
