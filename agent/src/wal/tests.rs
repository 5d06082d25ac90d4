//! Tests of the WAL as a whole: write/read, repair, checkpoints, replay, and an independent
//! decoder written from the format description (docs/compat.md, *WAL format*) only.

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn small() -> WalOptions {
    WalOptions {
        segment_size: 2 * PAGE_SIZE,
        compress: true,
        ..Default::default()
    }
}

fn read_all(dir: &Path) -> (Vec<(SeriesRef, Labels)>, Vec<RefSample>) {
    let mut series = Vec::new();
    let mut samples = Vec::new();
    let segs = segment::list_segments(dir).expect("list");
    let mut r = Reader::new(
        segs.into_iter()
            .map(|index| SegmentSource {
                index,
                path: segment::segment_path(dir, index),
            })
            .collect(),
    );
    while r.next_record().expect("read") {
        match record::record_type(r.record()) {
            Some(record::SERIES) => record::decode_series(r.record(), &mut series).expect("series"),
            Some(record::SAMPLES) => {
                record::decode_samples(r.record(), &mut samples).expect("samples")
            }
            _ => {}
        }
    }
    (series, samples)
}

fn log_series(wal: &mut Wal, series: &[(SeriesRef, Labels)]) -> Result<(), WalError> {
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
}

fn series_labels(i: u64) -> Labels {
    let inst = format!("10.0.{}.{}:9100", i % 7, i % 255);
    let name = format!("metric_{}_total", i % 13);
    Labels::from_pairs([
        ("__name__", name.as_str()),
        ("job", "node"),
        ("instance", inst.as_str()),
    ])
}

/// A value with a full mantissa, so test data does not compress away.
fn noise(r: u64, s: i64) -> f64 {
    let x = (r ^ (s as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 11) as f64 / 3.0
}

/// Writes `scrapes` scrapes of `n` series; returns what was written.
fn write_scrapes(
    wal: &mut Wal,
    n: u64,
    scrapes: i64,
) -> (Vec<(SeriesRef, Labels)>, Vec<RefSample>) {
    let series: Vec<(SeriesRef, Labels)> = (0..n)
        .map(|i| (SeriesRef(i + 1), series_labels(i)))
        .collect();
    log_series(wal, &series).expect("series");
    let mut all = Vec::new();
    for s in 0..scrapes {
        let batch: Vec<RefSample> = series
            .iter()
            .map(|(r, _)| (*r, 1_700_000_000_000 + s * 15_000, noise(r.0, s)))
            .collect();
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
        all.extend(batch);
    }
    (series, all)
}

#[test]
fn write_read_across_pages_and_segments() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut wal, st) = Wal::open(d.path(), small()).expect("open");
    assert_eq!(st.next_ref, SeriesRef(1));
    let (series, samples) = write_scrapes(&mut wal, 500, 40);
    wal.sync().expect("sync");
    let segs = segment::list_segments(d.path()).expect("list");
    assert!(
        segs.len() > 2,
        "small segments must have been cut: {segs:?}"
    );
    for s in &segs[..segs.len() - 1] {
        let len = fs::metadata(segment::segment_path(d.path(), *s))
            .expect("meta")
            .len();
        assert_eq!(
            len % PAGE_SIZE as u64,
            0,
            "completed segment {s} padded to a page"
        );
        assert!(len <= small().segment_size as u64);
    }
    let (s2, x2) = read_all(d.path());
    assert_eq!(s2, series);
    assert_eq!(x2.len(), samples.len());
    assert!(x2
        .iter()
        .zip(&samples)
        .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2.to_bits() == b.2.to_bits()));
}

#[test]
fn record_larger_than_a_segment_is_an_error_not_a_panic() {
    let d = tempfile::tempdir().expect("tmp");
    let mut w = SegmentWriter::create(d.path(), 0, PAGE_SIZE, false).expect("create");
    let big = vec![7u8; PAGE_SIZE];
    assert!(matches!(w.log(&big), Err(WalError::RecordTooLarge { .. })));
    assert!(matches!(
        SegmentWriter::create(d.path(), 1, 1000, false),
        Err(WalError::BadSegmentSize(1000))
    ));
}

#[test]
fn record_ending_exactly_at_segment_end_cuts_cleanly() {
    let d = tempfile::tempdir().expect("tmp");
    let mut w = SegmentWriter::create(d.path(), 0, PAGE_SIZE, false).expect("create");
    // Fills the only page of segment 0 exactly.
    let a = vec![1u8; PAGE_SIZE - 7];
    w.log(&a).expect("log a");
    let b = vec![2u8; 100];
    w.log(&b).expect("log b");
    w.flush().expect("flush");
    assert_eq!(w.segment(), 1);
    assert_eq!(
        fs::metadata(segment::segment_path(d.path(), 0))
            .expect("meta")
            .len(),
        PAGE_SIZE as u64
    );
    let mut r = Reader::new(
        (0..2)
            .map(|index| SegmentSource {
                index,
                path: segment::segment_path(d.path(), index),
            })
            .collect(),
    );
    assert!(r.next_record().expect("a"));
    assert_eq!(r.record(), &a[..]);
    assert!(r.next_record().expect("b"));
    assert_eq!(r.record(), &b[..]);
    assert!(!r.next_record().expect("end"));
}

#[test]
fn page_with_exactly_seven_bytes_left_gets_an_empty_first_fragment() {
    let d = tempfile::tempdir().expect("tmp");
    let mut w = SegmentWriter::create(d.path(), 0, 4 * PAGE_SIZE, false).expect("create");
    // 7 (header) + 32754 = 32761 used, 7 bytes left: not "fewer than 7", so the next record
    // starts with a zero-length First fragment, as Prometheus's writer does.
    w.log(&vec![1u8; PAGE_SIZE - 14]).expect("log");
    w.log(&[9u8; 10]).expect("log");
    w.flush().expect("flush");
    let bytes = fs::read(segment::segment_path(d.path(), 0)).expect("read");
    assert_eq!(bytes[PAGE_SIZE - 7], segment::REC_FIRST);
    assert_eq!(&bytes[PAGE_SIZE - 6..PAGE_SIZE - 4], &[0, 0]);
    assert_eq!(bytes[PAGE_SIZE], segment::REC_LAST);
    let mut r = Reader::new(vec![SegmentSource {
        index: 0,
        path: segment::segment_path(d.path(), 0),
    }]);
    assert!(r.next_record().expect("first"));
    assert!(r.next_record().expect("second"));
    assert_eq!(r.record(), &[9u8; 10]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_series_and_samples_roundtrip(
        batches in proptest::collection::vec(
            (proptest::collection::vec(("[a-z]{1,6}", "[ -~]{0,40}"), 1..5),
             proptest::collection::vec((0u64..64, any::<i64>(), any::<f64>()), 0..300)),
            1..12),
        compress in any::<bool>(),
    ) {
        let d = tempfile::tempdir().expect("tmp");
        let opts = WalOptions { segment_size: 2 * PAGE_SIZE, compress, ..Default::default() };
        let (mut wal, _) = Wal::open(d.path(), opts).expect("open");
        let mut want_series = Vec::new();
        let mut want_samples = Vec::new();
        for (labels, samples) in &batches {
            let l = Labels::from_pairs(labels.iter().map(|(a, b)| (a.as_str(), b.as_str())));
            let r = SeriesRef(want_series.len() as u64 + 1);
            log_series(&mut wal, &[(r, l.clone())]).expect("series");
            want_series.push((r, l));
            let samples: Vec<RefSample> = samples.iter().map(|&(r, t, v)| (SeriesRef(r), t, v)).collect();
            wal.append_samples(&samples).expect("samples");
            wal.commit().expect("commit");
            want_samples.extend(samples.iter().copied());
        }
        let (s, x) = read_all(d.path());
        prop_assert_eq!(s, want_series);
        prop_assert_eq!(x.len(), want_samples.len());
        for (a, b) in x.iter().zip(&want_samples) {
            prop_assert_eq!((a.0, a.1, a.2.to_bits()), (b.0, b.1, b.2.to_bits()));
        }
    }

    #[test]
    fn torn_tail_keeps_every_complete_commit(cut_frac in 0.0f64..1.0, compress in any::<bool>()) {
        let d = tempfile::tempdir().expect("tmp");
        let opts = WalOptions { segment_size: 64 * PAGE_SIZE, compress, ..Default::default() };
        let (mut wal, _) = Wal::open(d.path(), opts.clone()).expect("open");
        let seg = segment::segment_path(d.path(), wal.segment());
        let r = SeriesRef(1);
        log_series(&mut wal, &[(r, series_labels(1))]).expect("series");
        let mut ends = Vec::new();
        for i in 0..60i64 {
            // Varying sizes so records straddle pages.
            let batch: Vec<RefSample> = (0..(i * 37 % 400 + 1)).map(|k| (r, i, k as f64 * 1.37)).collect();
            wal.append_samples(&batch).expect("samples");
            wal.commit().expect("commit");
            ends.push((fs::metadata(&seg).expect("meta").len(), batch.len() as u64));
        }
        drop(wal);
        let total = ends.last().map(|e| e.0).unwrap_or(0);
        let cut = ((total as f64) * cut_frac) as u64;
        fs::OpenOptions::new().write(true).open(&seg).expect("open").set_len(cut).expect("cut");
        let want: u64 = ends.iter().filter(|(end, _)| *end <= cut).map(|(_, n)| n).sum();
        let (_, st) = Wal::open(d.path(), opts).expect("reopen");
        prop_assert_eq!(st.samples, want);
        // A second open finds nothing left to repair and the same data.
        let (_, st2) = Wal::open(d.path(), WalOptions { segment_size: 64 * PAGE_SIZE, compress, ..Default::default() }).expect("reopen");
        prop_assert!(st2.repair.is_none());
        prop_assert_eq!(st2.samples, want);
    }
}

#[test]
fn corrupt_middle_segment_is_cut_and_later_segments_renamed() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut wal, _) = Wal::open(d.path(), small()).expect("open");
    write_scrapes(&mut wal, 300, 80);
    drop(wal);
    let segs = segment::list_segments(d.path()).expect("list");
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = segs[1];
    let p = segment::segment_path(d.path(), victim);
    let mut bytes = fs::read(&p).expect("read");
    let at = PAGE_SIZE + 100;
    bytes[at] ^= 0x55;
    fs::write(&p, &bytes).expect("write");

    let report = repair(d.path())
        .expect("repair")
        .expect("something repaired");
    assert_eq!(report.segment, victim);
    assert!(report.truncated_at <= report.corrupt_offset);
    assert!(report.corrupt_offset <= at as u64 + 1);
    assert_eq!(report.renamed.len(), segs.len() - 2);
    for s in &segs[2..] {
        assert!(!segment::segment_path(d.path(), *s).exists());
        assert!(d
            .path()
            .join(format!("{}.corrupt", segment::segment_name(*s)))
            .exists());
    }
    assert_eq!(
        segment::list_segments(d.path()).expect("list"),
        vec![segs[0], victim]
    );
    // What is left reads cleanly, and opening continues after it.
    read_all(d.path());
    let (wal, st) = Wal::open(d.path(), small()).expect("open");
    assert!(st.repair.is_none());
    assert_eq!(wal.segment(), victim + 1);
}

#[test]
fn checkpoint_keeps_live_series_and_drops_old_samples() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut wal, _) = Wal::open(d.path(), small()).expect("open");
    let series: Vec<(SeriesRef, Labels)> = (0..200)
        .map(|i| (SeriesRef(i + 1), series_labels(i)))
        .collect();
    log_series(&mut wal, &series).expect("series");
    // Series with odd refs stop receiving samples at t=50.
    for t in 0..300i64 {
        let batch: Vec<RefSample> = series
            .iter()
            .filter(|(r, _)| r.0 % 2 == 0 || t < 50)
            .map(|(r, _)| (*r, t, noise(r.0, t)))
            .collect();
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
    }
    let before = segment::list_segments(d.path()).expect("list");
    assert!(before.len() >= 6, "{before:?}");
    let stats = wal
        .truncate(60, |_| |r: SeriesRef| r.0 % 2 == 0)
        .expect("truncate")
        .expect("checkpointed");
    let cp = stats.index;
    assert_eq!(
        Some(cp),
        checkpoint::checkpoint_bound(before[0], *before.last().expect("last"))
    );
    assert!(d.path().join(checkpoint::checkpoint_name(cp)).is_dir());
    let after = segment::list_segments(d.path()).expect("list");
    assert_eq!(after[0], cp + 1, "segments <= checkpoint deleted");
    assert!(stats.dropped_samples > 0);

    // The checkpoint alone: only even (live) series, and no sample older than mint.
    let cp_dir = d.path().join(checkpoint::checkpoint_name(cp));
    let (cs, cx) = read_all(&cp_dir);
    assert!(!cs.is_empty());
    assert_eq!(cs.len(), 100);
    assert!(cs.iter().all(|(r, _)| r.0 % 2 == 0), "only kept series");
    assert!(cx.iter().all(|s| s.1 >= 60));

    // A second truncation replaces the first checkpoint.
    drop(wal);
    let (mut wal, st) = Wal::open(d.path(), small()).expect("reopen");
    assert_eq!(st.checkpoint, Some(cp));
    assert_eq!(st.series.len(), 100);
    for t in 300..400i64 {
        let batch: Vec<RefSample> = series
            .iter()
            .filter(|(r, _)| r.0 % 2 == 0)
            .map(|(r, _)| (*r, t, 1.0))
            .collect();
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
    }
    let s2 = wal
        .truncate(350, |_| |_| true)
        .expect("truncate")
        .expect("checkpointed");
    assert!(s2.index > cp);
    assert!(!d.path().join(checkpoint::checkpoint_name(cp)).exists());
    let i = inspect::stats(d.path(), &inspect::StatsOptions::default()).expect("stats");
    assert_eq!(i.checkpoint_segment, Some(s2.index));
    assert_eq!(i.invalid_refs, 0);
    assert_eq!(i.total_series, 100);
    assert_eq!(i.newest_sample_ms, Some(399));
    let (_, cx2) = read_all(&d.path().join(checkpoint::checkpoint_name(s2.index)));
    assert!(cx2.iter().all(|s| s.1 >= 350));
}

#[test]
fn replay_after_reopen_continues_refs() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut wal, _) = Wal::open(d.path(), small()).expect("open");
    let (series, samples) = write_scrapes(&mut wal, 50, 3);
    drop(wal);
    let (_, st) = Wal::open(d.path(), small()).expect("reopen");
    assert_eq!(st.series, series);
    assert_eq!(st.samples, samples.len() as u64);
    assert_eq!(st.unknown_refs, 0);
    assert_eq!(st.next_ref, SeriesRef(51));
    assert_eq!(st.newest.len(), 50);
}

/// A snappy header that claims far more than its block can hold is corruption, found before
/// anything is allocated for it (a reader used to allocate the claimed 4 GiB first).
#[test]
fn a_snappy_header_claiming_4_gib_is_corruption_without_the_allocation() {
    let d = tempfile::tempdir().expect("tmp");
    let mut w = SegmentWriter::create(d.path(), 0, 4 * PAGE_SIZE, true).expect("create");
    let mut rec = Vec::new();
    let one = SeriesRef(1);
    record::extend_series(&mut rec, [(one, series_labels(1).as_view())]);
    w.log(&rec).expect("log");
    let good_end = w.segment_bytes();
    w.close().expect("close");
    // One full fragment, snappy flag set: a length header of u32::MAX, then a 1-byte literal.
    let payload = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, b'x'];
    let mut frag = vec![segment::REC_FULL | segment::FLAG_SNAPPY];
    frag.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frag.extend_from_slice(&independent::crc32c(&payload).to_be_bytes());
    frag.extend_from_slice(&payload);
    let path = segment::segment_path(d.path(), 0);
    let mut bytes = fs::read(&path).expect("read");
    bytes.truncate(good_end as usize);
    bytes.extend_from_slice(&frag);
    fs::write(&path, bytes).expect("write");

    let (_, st) = Wal::open(d.path(), small()).expect("open");
    let rep = st.repair.expect("repaired");
    assert_eq!(rep.truncated_at, good_end);
    assert!(
        rep.reason
            .contains("the header claims 4294967295 bytes, more than 7 compressed bytes can hold"),
        "{}",
        rep.reason
    );
    assert_eq!(st.series.len(), 1);
}

/// A segment numbered u32::MAX leaves no number for the next one: opening is an error, not an
/// overflow (debug) or a wrap to segment 0 that would overwrite it (release).
#[test]
fn a_segment_numbered_u32_max_is_an_error_on_open() {
    let d = tempfile::tempdir().expect("tmp");
    fs::write(d.path().join("00000000"), b"").expect("segment 0");
    fs::write(d.path().join("4294967295"), b"").expect("last segment");
    // Not sequential: refused before anything is written.
    assert!(Wal::open(d.path(), small()).is_err());
    fs::remove_file(d.path().join("00000000")).expect("rm");
    let e = Wal::open(d.path(), small()).err().expect("an error");
    assert!(
        e.to_string()
            .contains("segment number 4294967295 is the last possible one"),
        "{e}"
    );
    assert!(!d.path().join("00000000").exists(), "segment 0 was written");
}

// ---------------------------------------------------------------------------------------------
// An independent reader, written from the format description alone (no code shared with the
// implementation): bitwise CRC-32C, fragment walk, a minimal snappy block decoder, and the
// Series/Samples layouts.

mod independent {
    pub fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn uvarint(b: &[u8], i: &mut usize) -> u64 {
        let mut x = 0u64;
        let mut s = 0;
        loop {
            let c = b[*i];
            *i += 1;
            x |= u64::from(c & 0x7f) << s;
            if c < 0x80 {
                return x;
            }
            s += 7;
        }
    }

    fn varint(b: &[u8], i: &mut usize) -> i64 {
        let u = uvarint(b, i);
        let x = (u >> 1) as i64;
        if u & 1 != 0 {
            !x
        } else {
            x
        }
    }

    fn be64(b: &[u8], i: &mut usize) -> u64 {
        let v = u64::from_be_bytes(b[*i..*i + 8].try_into().expect("8"));
        *i += 8;
        v
    }

    fn snappy(src: &[u8]) -> Vec<u8> {
        let mut i = 0;
        let n = uvarint(src, &mut i) as usize;
        let mut out = Vec::with_capacity(n);
        while i < src.len() {
            let tag = src[i];
            i += 1;
            match tag & 3 {
                0 => {
                    let mut len = (tag >> 2) as usize;
                    if len >= 60 {
                        let extra = len - 59;
                        len = 0;
                        for k in 0..extra {
                            len |= (src[i + k] as usize) << (8 * k);
                        }
                        i += extra;
                    }
                    len += 1;
                    out.extend_from_slice(&src[i..i + len]);
                    i += len;
                }
                t => {
                    let (len, off) = match t {
                        1 => {
                            let l = 4 + ((tag >> 2) & 7) as usize;
                            let o = (((tag >> 5) as usize) << 8) | src[i] as usize;
                            i += 1;
                            (l, o)
                        }
                        2 => {
                            let o = u16::from_le_bytes([src[i], src[i + 1]]) as usize;
                            i += 2;
                            (1 + (tag >> 2) as usize, o)
                        }
                        _ => {
                            let o = u32::from_le_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]])
                                as usize;
                            i += 4;
                            (1 + (tag >> 2) as usize, o)
                        }
                    };
                    let start = out.len() - off;
                    for k in 0..len {
                        out.push(out[start + k]);
                    }
                }
            }
        }
        assert_eq!(out.len(), n);
        out
    }

    /// All records in one segment file.
    pub fn records(seg: &[u8]) -> Vec<Vec<u8>> {
        let mut recs = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut compressed = false;
        let mut i = 0;
        while i < seg.len() {
            let typ = seg[i] & 7;
            if typ == 0 {
                let next_page = (i / 32768 + 1) * 32768;
                assert!(seg[i..next_page.min(seg.len())].iter().all(|&b| b == 0));
                i = next_page;
                continue;
            }
            if typ == 1 || typ == 2 {
                compressed = seg[i] & 8 != 0;
                assert!(cur.is_empty());
            }
            let len = u16::from_be_bytes([seg[i + 1], seg[i + 2]]) as usize;
            let crc = u32::from_be_bytes(seg[i + 3..i + 7].try_into().expect("4"));
            let payload = &seg[i + 7..i + 7 + len];
            assert_eq!(crc32c(payload), crc);
            assert_eq!(
                i / 32768,
                (i + 7 + len - 1) / 32768,
                "fragment within one page"
            );
            cur.extend_from_slice(payload);
            i += 7 + len;
            if typ == 1 || typ == 4 {
                let rec = std::mem::take(&mut cur);
                recs.push(if compressed { snappy(&rec) } else { rec });
            }
        }
        assert!(cur.is_empty(), "segment ends mid-record");
        recs
    }

    pub fn series(rec: &[u8]) -> Vec<(u64, Vec<(String, String)>)> {
        let mut out = Vec::new();
        let mut i = 1;
        while i < rec.len() {
            let r = be64(rec, &mut i);
            let n = uvarint(rec, &mut i);
            let mut ls = Vec::new();
            for _ in 0..n {
                let mut s = [String::new(), String::new()];
                for x in &mut s {
                    let l = uvarint(rec, &mut i) as usize;
                    *x = String::from_utf8(rec[i..i + l].to_vec()).expect("utf8");
                    i += l;
                }
                let [a, b] = s;
                ls.push((a, b));
            }
            out.push((r, ls));
        }
        out
    }

    pub fn samples(rec: &[u8]) -> Vec<(u64, i64, f64)> {
        let mut out = Vec::new();
        if rec.len() == 1 {
            return out;
        }
        let mut i = 1;
        let base_ref = be64(rec, &mut i);
        let base_t = be64(rec, &mut i) as i64;
        while i < rec.len() {
            let dr = varint(rec, &mut i);
            let dt = varint(rec, &mut i);
            let v = f64::from_bits(be64(rec, &mut i));
            out.push((base_ref.wrapping_add(dr as u64), base_t + dt, v));
        }
        out
    }
}

#[test]
fn independent_reader_reads_our_segments() {
    assert_eq!(
        independent::crc32c(b"123456789"),
        0xE306_9283,
        "CRC-32C check value"
    );
    assert_eq!(
        independent::crc32c(b"hello world"),
        crc32c::crc32c(b"hello world")
    );
    for compress in [false, true] {
        let d = tempfile::tempdir().expect("tmp");
        let (mut wal, _) = Wal::open(
            d.path(),
            WalOptions {
                segment_size: 8 * PAGE_SIZE,
                compress,
                ..Default::default()
            },
        )
        .expect("open");
        let (series, samples) = write_scrapes(&mut wal, 400, 20);
        drop(wal);
        let mut got_series = Vec::new();
        let mut got_samples = Vec::new();
        let mut saw_compressed = false;
        for s in segment::list_segments(d.path()).expect("list") {
            let bytes = fs::read(segment::segment_path(d.path(), s)).expect("read");
            saw_compressed |= bytes.chunks(PAGE_SIZE).any(|p| p[0] & 8 != 0);
            for rec in independent::records(&bytes) {
                match rec[0] {
                    1 => got_series.extend(independent::series(&rec)),
                    2 => got_samples.extend(independent::samples(&rec)),
                    t => panic!("unexpected record type {t}"),
                }
            }
        }
        assert_eq!(saw_compressed, compress);
        let want: Vec<(u64, Vec<(String, String)>)> = series
            .iter()
            .map(|(r, l)| {
                (
                    r.0,
                    l.iter()
                        .map(|(a, b)| (a.to_owned(), b.to_owned()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(got_series, want);
        assert_eq!(got_samples.len(), samples.len());
        assert!(got_samples
            .iter()
            .zip(&samples)
            .all(|(a, b)| a.0 == b.0 .0 && a.1 == b.1 && a.2 == b.2));
    }
}

#[test]
fn undecodable_record_is_cut_at_its_start() {
    let d = tempfile::tempdir().expect("tmp");
    let mut w = SegmentWriter::create(d.path(), 0, 4 * PAGE_SIZE, true).expect("create");
    let mut rec = Vec::new();
    let l = series_labels(1);
    let one = SeriesRef(1);
    record::extend_series(&mut rec, [(one, l.as_view())]);
    w.log(&rec).expect("log");
    record::encode_samples(&mut rec, &[(one, 10, 1.0), (one, 20, 2.0)]);
    w.log(&rec).expect("log");
    let good_end = w.segment_bytes();
    // Valid fragments, but the Samples body ends inside its header.
    w.log(&[record::SAMPLES, 0, 0, 0]).expect("log");
    record::encode_samples(&mut rec, &[(one, 30, 3.0)]);
    w.log(&rec).expect("log");
    w.close().expect("close");

    let (_, st) = Wal::open(d.path(), small()).expect("open");
    let rep = st.repair.expect("repaired");
    assert_eq!(rep.segment, 0);
    assert_eq!(rep.truncated_at, good_end);
    assert!(rep.reason.contains("bytes left in entry"), "{}", rep.reason);
    assert_eq!(st.samples, 2);
    assert_eq!(st.series, vec![(one, l)]);
}

#[test]
fn corrupt_checkpoint_is_an_error_with_its_position() {
    let d = tempfile::tempdir().expect("tmp");
    let cp = d.path().join(checkpoint::checkpoint_name(3));
    fs::create_dir_all(&cp).expect("mkdir");
    let mut w = SegmentWriter::create(&cp, 0, PAGE_SIZE, false).expect("create");
    w.log(&[record::SAMPLES]).expect("log");
    w.close().expect("close");
    let p = segment::segment_path(&cp, 0);
    let mut bytes = fs::read(&p).expect("read");
    bytes[7] ^= 1; // payload byte: checksum mismatch
    fs::write(&p, bytes).expect("write");
    let err = Wal::open(d.path(), small()).err().expect("error");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            WalError::Corrupt {
                segment: 0,
                offset: 0,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("checkpoint.00000003") && msg.contains("unexpected checksum"),
        "{msg}"
    );
}

/// A truncation with a remote_write watermark counts, among the samples it drops, exactly
/// those newer than the watermark (checked against an independent count of the checkpointed
/// segments).
#[test]
fn truncation_counts_dropped_unsent_samples() {
    let d = tempfile::tempdir().expect("tmp");
    let (mut wal, _) = Wal::open(d.path(), small()).expect("open");
    let series: Vec<(SeriesRef, Labels)> = (0..100)
        .map(|i| (SeriesRef(i + 1), series_labels(i)))
        .collect();
    log_series(&mut wal, &series).expect("series");
    for t in 0..300i64 {
        let batch: Vec<RefSample> = series.iter().map(|(r, _)| (*r, t, noise(r.0, t))).collect();
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
    }
    let before = segment::list_segments(d.path()).expect("list");
    let cp = checkpoint::checkpoint_bound(before[0], *before.last().expect("last"))
        .expect("enough segments");
    // What the checkpointed segments hold: samples with 40 < t < 250 are dropped unsent.
    let mut expect_dropped = 0u64;
    let mut expect_unsent = 0u64;
    let mut r = Reader::new(
        before
            .iter()
            .filter(|&&s| s <= cp)
            .map(|&index| SegmentSource {
                index,
                path: segment::segment_path(d.path(), index),
            })
            .collect(),
    );
    let mut samples = Vec::new();
    while r.next_record().expect("read") {
        if record::record_type(r.record()) == Some(record::SAMPLES) {
            samples.clear();
            record::decode_samples(r.record(), &mut samples).expect("samples");
            expect_dropped += samples.iter().filter(|s| s.1 < 250).count() as u64;
            expect_unsent += samples.iter().filter(|s| s.1 > 40 && s.1 < 250).count() as u64;
        }
    }
    assert!(expect_unsent > 0);
    let stats = wal
        .truncate(
            Cut {
                mint: 250,
                sent_up_to: Some(40),
            },
            |_| |_| true,
        )
        .expect("truncate")
        .expect("checkpointed");
    assert_eq!(stats.index, cp);
    assert_eq!(stats.dropped_samples, expect_dropped);
    assert_eq!(stats.dropped_unsent_samples, expect_unsent);

    // Without a watermark nothing counts as unsent.
    for t in 300..600i64 {
        let batch: Vec<RefSample> = series.iter().map(|(r, _)| (*r, t, noise(r.0, t))).collect();
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
    }
    let s2 = wal
        .truncate(500, |_| |_| true)
        .expect("truncate")
        .expect("checkpointed");
    assert!(s2.dropped_samples > 0);
    assert_eq!(s2.dropped_unsent_samples, 0);
}

/// A failed commit (ENOSPC after a short write) is cleaned up by `abort`: records that reached
/// the file whole stay, the torn bytes and everything after the last whole record are zeroed
/// (padding), the other pending samples are dropped (counted), Series records not written
/// whole are written by the next commit, and the WAL reads back cleanly.
#[test]
fn abort_after_a_failed_write_cuts_back_and_keeps_series() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(d.path(), small()).expect("open");
    let (mut series, mut samples) = write_scrapes(&mut wal, 5, 2);
    let seg_at_mark = wal.segment();

    // A big uncommitted write that spills into the segment files (and past the segment
    // size), then torn bytes as a short write before ENOSPC would leave them.
    let fresh: Vec<(SeriesRef, Labels)> = (100..150)
        .map(|i| (SeriesRef(i + 1), series_labels(i)))
        .collect();
    log_series(&mut wal, &fresh).expect("series");
    let big: Vec<RefSample> = (0..12_000)
        .map(|i| {
            (
                fresh[i % 50].0,
                1_800_000_000_000 + i as i64,
                noise(i as u64, 7),
            )
        })
        .collect();
    for chunk in big.chunks(1000) {
        wal.append_samples(chunk).expect("samples");
    }
    assert!(
        wal.segment() > seg_at_mark,
        "the test spills into a new segment"
    );
    let torn = segment::segment_path(d.path(), wal.segment());
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&torn)
        .expect("open");
    std::io::Write::write_all(&mut f, &[0xAB; 777]).expect("torn bytes");
    drop(f);

    let aborted = wal.abort().expect("abort");
    // Records that reached the file whole before the failure stay (a reader may have read
    // them); the rest of the batch is dropped.
    assert_eq!(aborted.kept_samples + aborted.dropped_samples, big.len());
    assert!(aborted.dropped_samples > 0, "{aborted:?}");
    samples.extend_from_slice(&big[..aborted.kept_samples]);

    // Space is back: the next commit writes the requeued Series first.
    let after: Vec<RefSample> = fresh
        .iter()
        .map(|(r, _)| (*r, 1_900_000_000_000, 1.0))
        .collect();
    wal.append_samples(&after).expect("samples");
    wal.commit().expect("commit");
    series.extend(fresh);
    samples.extend(after);
    let (got_series, got_samples) = read_all(d.path());
    assert_eq!(got_series, series);
    assert_eq!(got_samples, samples);
}
