//! Fuzz targets for everything that reads bytes from outside: the exposition parser, the WAL
//! reader and record decoders, the ring decoder, the config YAML parsers and the KV config codec.
//!
//! Stable Rust has no `cargo fuzz`, so each target is a proptest-driven loop: inputs are drawn
//! from a strategy (mostly mutations of valid corpus inputs, so they get past the first bytes
//! into deep code; also random bytes and "token soup" built from the format's syntax), the
//! target runs under `catch_unwind`, and the loop stops after a number of cases or a time
//! budget:
//!
//! * `cargo test -p agentctl-agent --lib fuzz::` runs each target for [`FAST_CASES`] cases
//!   (seconds), as part of the normal unit tests;
//! * `AGENTCTL_FUZZ_SECS=300` runs each target for that many seconds instead (`scripts/fuzz`);
//!   `AGENTCTL_FUZZ_CASES=N` fixes the number of cases; `AGENTCTL_FUZZ_SEED=<u64>` replays a
//!   run (the seed is printed).
//!
//! Property of every target: no panic, and each case finishes in bounded time (a case slower
//! than [`MAX_CASE`] counts as a hang). Targets with a loop over their input also bound the
//! number of steps by the input's length (no infinite loop, no output larger than the input
//! allows). A failing input is written to `$TMPDIR/agentctl-fuzz/<target>/`; once fixed it
//! belongs in `fixtures/fuzz/<target>/`, which [`replay_fixtures`] replays on every test run.
//!
//! Each run prints one line per target:
//! `FUZZ target=<name> cases=<n> secs=<s> cases_per_sec=<r> panics=0`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Cases per target in the normal unit-test run.
pub const FAST_CASES: u64 = 1000;

/// A case slower than this is reported as a hang. Generous: the machine is shared, inputs are
/// at most a few hundred KiB, and the slowest target (a WAL segment on disk) takes milliseconds.
pub const MAX_CASE: Duration = Duration::from_secs(10);

/// One fuzz target: its name (also its fixtures folder) and the code under test.
type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("exposition", check_exposition),
    ("wal_segment", check_wal_segment),
    ("wal_record", check_wal_record),
    ("ring", check_ring),
    ("config_instance", check_config_instance),
    ("config_agent", check_config_agent),
    ("kv_codec", check_kv_codec),
];

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `name` on inputs from `strategy` until the budget is spent; panics (failing the test)
/// on the first input that panics or hangs, after saving it.
fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>) {
    let check = target(name);
    let secs = env_u64("AGENTCTL_FUZZ_SECS");
    let max_cases = env_u64("AGENTCTL_FUZZ_CASES").unwrap_or(if secs.is_some() {
        u64::MAX
    } else {
        FAST_CASES
    });
    let budget = secs.map(Duration::from_secs);
    let seed = env_u64("AGENTCTL_FUZZ_SEED")
        .unwrap_or_else(|| crate::clock::unix_nanos(crate::clock::Clock::system().now()) as u64);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    seed_bytes[8..16].copy_from_slice(&fnv(name.as_bytes()).to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = Instant::now();
    let mut cases = 0u64;
    let mut slowest = Duration::ZERO;
    while cases < max_cases && budget.is_none_or(|b| started.elapsed() < b) {
        let input = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree.current(),
            Err(e) => panic!("fuzz target {name}: strategy failed: {e}"),
        };
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let took = t0.elapsed();
        slowest = slowest.max(took);
        cases += 1;
        if let Err(panic) = outcome {
            let saved = save_crash(name, &input);
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "fuzz target {name} panicked after {cases} cases (seed {seed}): {msg}; input ({} bytes) saved to {}",
                input.len(),
                saved.display()
            );
        }
        if took > MAX_CASE {
            let saved = save_crash(name, &input);
            panic!(
                "fuzz target {name}: a case took {took:?} (seed {seed}); input ({} bytes) saved to {}",
                input.len(),
                saved.display()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "FUZZ target={name} cases={cases} secs={secs:.1} cases_per_sec={:.0} slowest_case_ms={} seed={seed} panics=0",
        cases as f64 / secs.max(1e-9),
        slowest.as_millis()
    );
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn save_crash(name: &str, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("agentctl-fuzz").join(name);
    let path = dir.join(format!("crash-{:016x}", fnv(input)));
    // Best effort: the panic message names the path either way.
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    path
}

// ---------------------------------------------------------------------------------------------
// Input generation

/// One edit of a corpus input.
#[derive(Debug, Clone)]
enum Op {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    InsertToken(Index, Index),
    Delete(Index, usize),
    Truncate(Index),
    /// Copies a range of the input to another place (repeats structure: nesting, fragments).
    Duplicate(Index, usize, Index),
    /// Replaces the tail with the tail of another corpus input.
    Splice(Index, Index, Index),
    /// Sets a byte to a boundary value (0, 0x7f, 0x80, 0xff), the usual off-by-one triggers.
    Boundary(Index, Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Op::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Op::SetByte(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Op::Insert(i, v)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Op::InsertToken(i, t)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Op::Delete(i, n)),
        1 => any::<Index>().prop_map(Op::Truncate),
        1 => (any::<Index>(), 1usize..256, any::<Index>()).prop_map(|(a, n, b)| Op::Duplicate(a, n, b)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(s, a, b)| Op::Splice(s, a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Op::Boundary(i, v)),
    ]
}

fn pos(i: &Index, len: usize) -> usize {
    // `Index::index` needs a non-empty range; `len + 1` also allows "at the end".
    i.index(len + 1)
}

fn apply(mut data: Vec<u8>, ops: &[Op], corpus: &[Vec<u8>], tokens: &[&[u8]]) -> Vec<u8> {
    for op in ops {
        let len = data.len();
        match op {
            Op::FlipBit(i, b) if len > 0 => data[i.index(len)] ^= 1 << b,
            Op::SetByte(i, v) if len > 0 => data[i.index(len)] = *v,
            Op::Boundary(i, v) if len > 0 => data[i.index(len)] = [0, 0x7f, 0x80, 0xff][v.index(4)],
            Op::Insert(i, v) => {
                let at = pos(i, len);
                data.splice(at..at, v.iter().copied());
            }
            Op::InsertToken(i, t) if !tokens.is_empty() => {
                let at = pos(i, len);
                data.splice(at..at, tokens[t.index(tokens.len())].iter().copied());
            }
            Op::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                data.drain(at..(at + n).min(len));
            }
            Op::Truncate(i) => data.truncate(pos(i, len)),
            Op::Duplicate(a, n, b) if len > 0 => {
                let from = a.index(len);
                let piece = data[from..(from + n).min(len)].to_vec();
                let at = pos(b, len);
                data.splice(at..at, piece);
            }
            Op::Splice(s, a, b) if !corpus.is_empty() => {
                let other = &corpus[s.index(corpus.len())];
                data.truncate(pos(a, len));
                data.extend_from_slice(&other[pos(b, other.len())..]);
            }
            _ => {}
        }
    }
    data
}

/// Inputs for a target: 70 % mutated corpus inputs (1-8 edits), 15 % token soup, 15 % random
/// bytes.
fn inputs(
    corpus: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    assert!(!corpus.is_empty(), "empty corpus");
    let corpus = Arc::new(corpus);
    let c = Arc::clone(&corpus);
    let mutated = (0..corpus.len(), proptest::collection::vec(op(), 1..8))
        .prop_map(move |(seed, ops)| apply(c[seed].clone(), &ops, &c, tokens));
    let soup = proptest::collection::vec(
        prop_oneof![
            3 => (0..tokens.len().max(1)).prop_map(move |i| tokens.get(i).map(|t| t.to_vec()).unwrap_or_default()),
            1 => proptest::collection::vec(any::<u8>(), 1..4),
        ],
        0..96,
    )
    .prop_map(|parts| parts.concat());
    let random = proptest::collection::vec(any::<u8>(), 0..1024);
    prop_oneof![14 => mutated, 3 => soup, 3 => random]
}

fn read_dir_files(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file() && keep(p))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Exposition parser

const EXPOSITION_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"=",
    b"\"",
    b"\\",
    b"\\\"",
    b"\\n",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b",",
    b"#",
    b"# TYPE ",
    b"# HELP ",
    b"# UNIT ",
    b"# EOF\n",
    b"# EOF",
    b" # {",
    b"counter",
    b"gauge",
    b"histogram",
    b"summary",
    b"untyped",
    b"unknown",
    b"info",
    b"stateset",
    b"gaugehistogram",
    b"NaN",
    b"+Inf",
    b"-Inf",
    b"Inf",
    b"1e308",
    b"1e309",
    b"-0",
    b"0x1p3",
    b"1_000",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"1.5e-300",
    b"_bucket",
    b"_count",
    b"_sum",
    b"_total",
    b"_created",
    b"le=\"+Inf\"",
    b"quantile=\"0.5\"",
    b"__name__",
    b"a:b",
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x82\xac",
    b"\0",
];

fn exposition_corpus() -> Vec<Vec<u8>> {
    read_dir_files(&root().join("fixtures/exposition"), |p| {
        matches!(p.extension().and_then(|e| e.to_str()), Some("prom" | "om"))
    })
}

/// Parses with both formats, entry by entry. Each call to `next_entry` consumes at least one
/// line or ends the body, so more entries than lines (plus one) would be a loop.
fn check_exposition(input: &[u8]) {
    use crate::scrape::parse::{Format, Parser};
    let bound = input.iter().filter(|b| **b == b'\n').count() + 2;
    for format in [Format::PrometheusText, Format::OpenMetrics] {
        let mut p = Parser::new(input, format);
        let mut steps = 0usize;
        while let Ok(Some(_)) = p.next_entry() {
            steps += 1;
            assert!(
                steps <= bound,
                "{format:?}: more than {bound} entries from {} lines: the parser loops",
                bound - 2
            );
        }
    }
}

#[test]
fn exposition() {
    run("exposition", inputs(exposition_corpus(), EXPOSITION_TOKENS));
}

// ---------------------------------------------------------------------------------------------
// WAL: whole segments through the reader (and repair), and single records through the decoders

const WAL_TOKENS: &[&[u8]] = &[
    // Fragment headers: type (full/first/middle/last, snappy flag), length, CRC.
    b"\x01\x00\x10",
    b"\x02\x00\x10",
    b"\x03\x00\x10",
    b"\x04\x00\x10",
    b"\x09\x00\x10",
    b"\x01\x7f\xf9",
    b"\x01\xff\xff",
    b"\x00\x00\x00\x00\x00\x00\x00",
    b"\x05",
    // Record types and varints.
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x06",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x10",
    b"\x7f",
];

fn wal_options(compress: bool) -> crate::wal::WalOptions {
    crate::wal::WalOptions {
        segment_size: 4 * crate::wal::PAGE_SIZE,
        compress,
        ..Default::default()
    }
}

/// Segments written by our WAL writer: series, samples, exemplars and several commits, with
/// and without snappy, so both fragment kinds and every record type are in the corpus.
fn wal_segments() -> Vec<Vec<u8>> {
    use crate::labels::{Labels, SeriesRef};
    use crate::wal::{RefExemplar, Wal};
    let mut out = Vec::new();
    for (compress, n) in [(false, 3u64), (true, 3), (false, 40), (true, 200)] {
        let Ok(dir) = tempfile::tempdir() else {
            continue;
        };
        let Ok((mut wal, _)) = Wal::open(dir.path(), wal_options(compress)) else {
            continue;
        };
        let series: Vec<(SeriesRef, Labels)> = (0..n)
            .map(|i| {
                let name = format!("metric_{}_total", i % 7);
                let inst = format!("10.0.0.{i}:9100");
                (
                    SeriesRef(i + 1),
                    Labels::from_pairs([
                        ("__name__", name.as_str()),
                        ("instance", inst.as_str()),
                        ("job", "node"),
                    ]),
                )
            })
            .collect();
        let _ = wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())));
        for s in 0..3i64 {
            let batch: Vec<_> = series
                .iter()
                .map(|(r, _)| {
                    (
                        *r,
                        1_700_000_000_000 + s * 15_000,
                        (r.0 as f64) * 1.5 + s as f64,
                    )
                })
                .collect();
            let _ = wal.append_samples(&batch);
            let ex = RefExemplar {
                series_ref: series[0].0,
                t: 1_700_000_000_000 + s,
                v: 0.25,
                labels: Labels::from_pairs([("trace_id", "abc123")]),
            };
            let _ = wal.append_exemplars(&[ex]);
            let _ = wal.commit();
        }
        drop(wal);
        for index in crate::wal::segment::list_segments(dir.path()).unwrap_or_default() {
            if let Ok(bytes) = std::fs::read(crate::wal::segment::segment_path(dir.path(), index)) {
                if !bytes.is_empty() {
                    out.push(bytes);
                }
            }
        }
    }
    out
}

/// Every record of the given segments, as the decoders see them.
fn wal_records() -> Vec<Vec<u8>> {
    use crate::wal::{Reader, SegmentSource};
    let Ok(dir) = tempfile::tempdir() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, seg) in wal_segments().into_iter().enumerate() {
        let path = dir.path().join(format!("seg{i}"));
        if std::fs::write(&path, &seg).is_err() {
            continue;
        }
        let mut r = Reader::new(vec![SegmentSource { index: 0, path }]);
        while let Ok(true) = r.next_record() {
            out.push(r.record().to_vec());
        }
    }
    out
}

thread_local! {
    /// One directory per test thread for the segment under test (a file per case would only
    /// add directory churn).
    static WAL_DIR: tempfile::TempDir = tempfile::tempdir().expect("temp dir for the WAL fuzz target");
}

/// Writes `input` as segment 0 of an otherwise empty WAL directory, reads every record and
/// decodes it, then runs the repair the agent runs at start.
fn check_wal_segment(input: &[u8]) {
    use crate::wal::{Reader, SegmentSource};
    WAL_DIR.with(|dir| {
        let dir = dir.path();
        let path = crate::wal::segment::segment_path(dir, 0);
        std::fs::write(&path, input).expect("write segment");
        let mut r = Reader::new(vec![SegmentSource {
            index: 0,
            path: path.clone(),
        }]);
        // A record needs at least a 7-byte fragment header.
        let bound = input.len() / 7 + 2;
        let mut records = 0usize;
        while let Ok(true) = r.next_record() {
            records += 1;
            assert!(
                records <= bound,
                "more than {bound} records: the reader loops"
            );
            decode_record(r.record());
        }
        let _ = crate::wal::repair(dir);
        let _ = std::fs::remove_file(&path);
    });
}

fn decode_record(rec: &[u8]) {
    use crate::wal::record;
    let mut series = Vec::new();
    let _ = record::decode_series(rec, &mut series);
    if let Ok(iter) = record::series_iter(rec) {
        for (n, s) in iter.enumerate() {
            assert!(n <= rec.len(), "series_iter yields more series than bytes");
            if s.is_err() {
                break;
            }
        }
    }
    let _ = record::decode_samples(rec, &mut Vec::new());
    let _ = record::decode_exemplars(rec, &mut Vec::new());
    let _ = record::decode_tombstones(rec, &mut Vec::new());
    let _ = record::decode_metadata(rec, &mut Vec::new());
}

fn check_wal_record(input: &[u8]) {
    decode_record(input);
}

#[test]
fn wal_segment() {
    run("wal_segment", inputs(wal_segments(), WAL_TOKENS));
}

#[test]
fn wal_record() {
    run("wal_record", inputs(wal_records(), WAL_TOKENS));
}

// ---------------------------------------------------------------------------------------------
// Ring decoder (snappy block + protobuf Desc)

const RING_TOKENS: &[&[u8]] = &[
    // Protobuf keys of Desc/InstanceDesc (field << 3 | wire type) and long varints.
    b"\x0a",
    b"\x12",
    b"\x10",
    b"\x18",
    b"\x20",
    b"\x2a",
    b"\x32",
    b"\x38",
    b"\x40",
    b"\xff\xff\xff\xff\x0f",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\x00",
];

fn ring_corpus() -> Vec<Vec<u8>> {
    let mut out = read_dir_files(&root().join("fixtures/ring"), |p| {
        p.extension().is_some_and(|e| e == "bin")
    });
    // The protobuf inside as well: `check_ring` compresses every input too, so mutations of
    // these reach the protobuf decoder instead of stopping at snappy.
    let inner: Vec<Vec<u8>> = out
        .iter()
        .filter_map(|b| snap::raw::Decoder::new().decompress_vec(b).ok())
        .collect();
    out.extend(inner);
    out
}

fn check_ring(input: &[u8]) {
    let _ = crate::ring::codec::decode(input);
    if let Ok(compressed) = snap::raw::Encoder::new().compress_vec(input) {
        if let Ok(desc) = crate::ring::codec::decode(&compressed) {
            // What decodes must encode again.
            crate::ring::codec::encode(&desc).expect("re-encode a decoded ring");
        }
    }
}

#[test]
fn ring() {
    run("ring", inputs(ring_corpus(), RING_TOKENS));
}

// ---------------------------------------------------------------------------------------------
// Config YAML (instance and agent configs) and the KV config codec

const YAML_TOKENS: &[&[u8]] = &[
    b":",
    b": ",
    b"- ",
    b"\n",
    b"\n  ",
    b"  ",
    b"\t",
    b"&a ",
    b"*a",
    b"&b [*a, *a]",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"!!str ",
    b"!!binary ",
    b"!!map",
    b"<<: *a",
    b"'",
    b"\"",
    b"\\",
    b"? ",
    b"|",
    b">-",
    b"---\n",
    b"...\n",
    b"#",
    b"~",
    b"null",
    b"true",
    b"0x10",
    b"1e400",
    b"-0",
    b"1y",
    b"0s",
    b"5m",
    b"1.5s",
    b"-1s",
    b"9223372036854775807",
    b"job_name: ",
    b"scrape_configs:\n",
    b"remote_write:\n",
    b"static_configs:\n",
    b"targets: ",
    b"relabel_configs:\n",
    b"regex: ",
    b"(",
    b")",
    b"*",
    b"\\d",
    b"action: hashmod",
    b"action: labelmap",
    b"modulus: 0",
    b"url: ",
    b"http://",
    b"[::1]:",
    b"%",
    b"${X}",
    b"bearer_token_file: ",
    b"file_sd_configs:\n",
    b"tls_config:\n",
    b"basic_auth:\n",
    b"scraping_service:\n",
    b"kvstore:\n",
    b"store: etcd\n",
    b"\xff",
    b"\xe2\x80\xa8",
    b"\0",
];

fn config_corpus(kind: crate::config::load::Kind) -> Vec<Vec<u8>> {
    let valid = read_dir_files(&root().join("fixtures/config/valid"), |_| true);
    let invalid = read_dir_files(&root().join("fixtures/config/invalid"), |_| true);
    let mut out: Vec<Vec<u8>> = valid
        .iter()
        .chain(&invalid)
        .filter(|b| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|t| crate::config::load::detect_kind(t).ok())
                == Some(kind)
        })
        .cloned()
        .collect();
    if out.is_empty() {
        out = valid;
    }
    out
}

fn check_config_instance(input: &[u8]) {
    use crate::config::load::{detect_kind, parse_instance};
    use crate::config::GlobalConfig;
    let text = String::from_utf8_lossy(input);
    let _ = detect_kind(&text);
    if let Ok((raw, _)) = parse_instance(&text, &GlobalConfig::default()) {
        let _ = raw.file_reading_violation(&GlobalConfig::default());
        let _ = raw.to_yaml(false);
        let _ = raw.to_yaml(true);
    }
    let _ = crate::kv::configstore::job_names(&text);
}

fn check_config_agent(input: &[u8]) {
    use crate::config::load::{expand_env_vars, parse_agent};
    let text = String::from_utf8_lossy(input);
    let _ = parse_agent(&text);
    let _ = expand_env_vars(&text, |k| (k == "X").then(|| "1".to_owned()));
}

fn check_kv_codec(input: &[u8]) {
    if let Ok(Some(yaml)) = crate::kv::codec::decode_config("configurations/fuzz", input) {
        let _ = crate::kv::configstore::job_names(&yaml);
    }
}

#[test]
fn config_instance() {
    run(
        "config_instance",
        inputs(
            config_corpus(crate::config::load::Kind::Instance),
            YAML_TOKENS,
        ),
    );
}

#[test]
fn config_agent() {
    run(
        "config_agent",
        inputs(config_corpus(crate::config::load::Kind::Agent), YAML_TOKENS),
    );
}

#[test]
fn kv_codec() {
    let corpus: Vec<Vec<u8>> = read_dir_files(&root().join("fixtures/config/valid"), |_| true)
        .iter()
        .map(|b| crate::kv::codec::encode_config(&String::from_utf8_lossy(b)))
        .collect();
    run(
        "kv_codec",
        inputs(corpus, &[b"\x1f\x8b\x08\x00", b"\x00", b"\xff"]),
    );
}

/// Every input under `fixtures/fuzz/<target>/` (crashes found and fixed) still passes.
#[test]
fn replay_fixtures() {
    let base = root().join("fixtures/fuzz");
    let mut replayed = 0;
    for (name, check) in TARGETS {
        for input in read_dir_files(&base.join(name), |p| {
            p.extension().is_none_or(|e| e != "md")
        }) {
            let t = Instant::now();
            check(&input);
            assert!(
                t.elapsed() < MAX_CASE,
                "{name}: a fixture took {:?}",
                t.elapsed()
            );
            replayed += 1;
        }
    }
    println!("FUZZ replayed_fixtures={replayed}");
}
