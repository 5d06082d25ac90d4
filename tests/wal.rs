//! WAL integration tests: crash safety with a SIGKILLed writer process, and reading a WAL
//! written by a real Prometheus 2.42 in agent mode.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::wal::{inspect, record, segment, Reader, SegmentSource, Wal, WalOptions};

/// Set in the environment of the writer process (see [`wal_writer_process`]):
/// `<dir> <series> <sync_every>`.
const WRITER_ENV: &str = "AGENTCTL_TEST_WAL_WRITER";

/// The writer of `sigkilled_writer_loses_nothing_it_acknowledged`, run as a child process:
/// this test binary started again on this one test, with [`WRITER_ENV`] set. It appends one
/// batch per iteration to the WAL in `<dir>` (`series` series, timestamp `i * 15000`, value
/// `i`) and commits it; every `sync_every` batches it fsyncs and only then prints `ACK <i>`.
/// Unsynced batches between acks make it likely that the kill lands between the `write`s of a
/// multi-page record, leaving a torn tail. Without the variable (run by itself) there is no
/// WAL to write and it returns at once.
#[test]
#[ignore = "the child process of wal::sigkilled_writer_loses_nothing_it_acknowledged"]
fn wal_writer_process() {
    use std::io::Write as _;
    let Ok(spec) = std::env::var(WRITER_ENV) else {
        return;
    };
    let mut args = spec.split(' ');
    let dir = PathBuf::from(args.next().expect("dir"));
    let n: u64 = args.next().and_then(|s| s.parse().ok()).expect("series");
    let sync_every: i64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("sync_every");
    // Small segments so the kill can also land during a segment cut.
    let opts = WalOptions {
        segment_size: 8 * agent::wal::PAGE_SIZE,
        compress: true,
        ..Default::default()
    };
    let (mut wal, replay) = Wal::open(&dir, opts).expect("open");
    let series: Vec<(agent::labels::SeriesRef, agent::labels::Labels)> = (0..n)
        .map(|i| {
            let name = format!("m{i}");
            (
                agent::labels::SeriesRef(replay.next_ref.0 + i),
                agent::labels::Labels::from_pairs([("__name__", name.as_str()), ("job", "crash")]),
            )
        })
        .collect();
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("append_series");
    let mut batch = Vec::with_capacity(series.len());
    let stdout = std::io::stdout();
    for i in 0i64.. {
        batch.clear();
        batch.extend(series.iter().map(|(r, _)| (*r, i * 15_000, i as f64)));
        wal.append_samples(&batch)
            .and_then(|()| wal.commit())
            .expect("write");
        if (i + 1) % sync_every != 0 {
            continue;
        }
        wal.sync().expect("sync");
        let mut out = stdout.lock();
        writeln!(out, "ACK {i}")
            .and_then(|()| out.flush())
            .expect("stdout");
    }
}

/// Every sample timestamp per ref in a WAL directory, after opening (and so repairing) it.
fn timestamps_by_ref(dir: &Path) -> HashMap<u64, Vec<i64>> {
    let segs = segment::list_segments(dir).expect("segments");
    let mut r = Reader::new(
        segs.into_iter()
            .map(|index| SegmentSource {
                index,
                path: segment::segment_path(dir, index),
            })
            .collect(),
    );
    let mut out: HashMap<u64, Vec<i64>> = HashMap::new();
    let mut samples = Vec::new();
    while r.next_record().expect("clean read after repair") {
        if record::record_type(r.record()) == Some(record::SAMPLES) {
            samples.clear();
            record::decode_samples(r.record(), &mut samples).expect("samples");
            for &(sref, t, _) in &samples {
                out.entry(sref.0).or_default().push(t);
            }
        }
    }
    out
}

#[test]
fn sigkilled_writer_loses_nothing_it_acknowledged() {
    // The writer is this test binary again, running only `wal_writer_process`: nothing is
    // built while the test runs.
    let this = std::env::current_exe().expect("this test binary");
    // (series, batches per fsync+ack): per-batch acks, then big multi-page records with
    // unacknowledged batches in between so the kill can tear a record.
    let rounds = [
        (2000u64, 1u32),
        (20_000, 4),
        (20_000, 3),
        (5_000, 2),
        (20_000, 4),
        (20_000, 4),
    ];
    let mut repaired = 0;
    for (round, &(n_series, sync_every)) in rounds.iter().enumerate() {
        let round = round as u64;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(&this)
            .args([
                "--exact",
                "wal::wal_writer_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                WRITER_ENV,
                format!("{} {n_series} {sync_every}", dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<i64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.strip_prefix("ACK ").and_then(|s| s.parse().ok()) {
                    if tx.send(i).is_err() {
                        break;
                    }
                }
            }
        });
        // Kill after a varying number of acknowledgements, so the kill lands at different
        // points of the write cycle.
        let want = 5 + round * 7;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = -1i64;
        while last < want as i64 && Instant::now() < deadline {
            if let Ok(i) = rx.recv_timeout(Duration::from_millis(100)) {
                last = i;
            }
        }
        assert!(last >= 0, "the writer acknowledged nothing");
        // A varying delay moves the kill through the child's encode/write/fsync cycle.
        std::thread::sleep(Duration::from_micros(round * 2_300 % 11_000));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        reader.join().expect("reader thread");
        // Lines printed before the kill are still in the pipe.
        while let Ok(i) = rx.try_recv() {
            last = last.max(i);
        }

        let (_, state) = Wal::open(
            dir.path(),
            WalOptions {
                segment_size: 8 * 32768,
                compress: true,
                ..Default::default()
            },
        )
        .expect("reopen");
        eprintln!(
            "round {round}: killed after ACK {last}; repair on reopen: {:?}",
            state.repair
        );
        repaired += usize::from(state.repair.is_some());
        assert_eq!(state.series.len() as u64, n_series, "round {round}");
        assert_eq!(state.unknown_refs, 0);
        let ts = timestamps_by_ref(dir.path());
        assert_eq!(ts.len() as u64, n_series);
        for (sref, mut v) in ts {
            v.sort_unstable();
            v.dedup();
            let acked: Vec<i64> = (0..=last).map(|i| i * 15_000).collect();
            assert!(
                v.len() >= acked.len() && v[..acked.len()] == acked[..],
                "round {round}: series {sref} lost acknowledged samples up to index {last}"
            );
        }
    }
    eprintln!("{repaired} of {} rounds needed a repair", rounds.len());
}

/// Serves a fixed exposition body over HTTP/1.1 until dropped.
struct MetricsServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl MetricsServer {
    fn start() -> MetricsServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let served = Arc::new(AtomicU64::new(0));
        let served2 = served.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                n += 1;
                let body = format!(
                    "# TYPE golden_requests_total counter\n\
                     golden_requests_total{{code=\"200\"}} {n}\n\
                     golden_requests_total{{code=\"500\"}} 1\n\
                     # TYPE golden_temperature gauge\n\
                     golden_temperature 21.5\n"
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
                served2.store(n, Ordering::SeqCst);
            }
        });
        MetricsServer { port, stop, served }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads a WAL produced by Prometheus itself. Fails (does not skip) without the binary.
#[test]
fn reads_wal_written_by_prometheus_agent_mode() {
    let server = MetricsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut prom, _) = crate::support::prometheus::start_agent_mode(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 500ms\nscrape_configs:\n  - job_name: golden\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
    );
    let data = dir.path().join("data");
    // Wait for five scrapes (Prometheus's start-up time varies a lot on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(90);
    while server.served.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.served.load(Ordering::SeqCst) >= 5,
        "Prometheus did not scrape the target"
    );
    // SIGTERM for a clean shutdown that flushes the WAL's last page.
    prom.signal("TERM");
    assert!(
        prom.wait_exit(Duration::from_secs(20)).is_some(),
        "Prometheus did not stop"
    );

    // The data dir is accepted (its `wal/` subdirectory is used).
    let opts = inspect::StatsOptions {
        selector: Some(inspect::Selector::parse(r#"{__name__=~"golden_.*"}"#).expect("selector")),
        per_series: true,
    };
    let st = inspect::stats(&data, &opts).expect("stats of a Prometheus WAL");
    assert_eq!(st.dir, data.join("wal"));
    let instance = format!("127.0.0.1:{}", server.port);
    let t = st
        .targets
        .iter()
        .find(|t| t.job == "golden" && t.instance == instance)
        .unwrap_or_else(|| panic!("no golden target in {:?}", st.targets));
    // 3 scraped series + Prometheus's 5 synthetic ones (up, scrape_duration_seconds, …).
    assert_eq!(t.series, 8, "{st:?}");
    assert!(t.samples >= 8 * 3, "at least three scrapes: {st:?}");
    assert_eq!(st.invalid_refs, 0);
    assert_eq!(st.hash_collisions, 0);
    let names: Vec<(&str, u64)> = st
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.series))
        .collect();
    assert_eq!(
        names,
        vec![("golden_requests_total", 2), ("golden_temperature", 1)]
    );
    let series = st.series.expect("per-series stats");
    assert_eq!(series.len(), 3);
    assert!(series
        .iter()
        .all(|s| s.samples >= 3 && s.oldest_sample_ms <= s.newest_sample_ms));
    let (Some(old), Some(new)) = (st.oldest_sample_ms, st.newest_sample_ms) else {
        panic!("no samples")
    };
    assert!(
        new - old >= 2000 && new - old < 60_000,
        "time range {old}..{new}"
    );

    // Our own reader/replay accepts it too: Wal::open on Prometheus's WAL.
    let (_, replay) =
        Wal::open(&data.join("wal"), WalOptions::default()).expect("open Prometheus WAL");
    assert!(replay.repair.is_none());
    assert_eq!(replay.series.len(), 8);
}
