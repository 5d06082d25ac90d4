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

/// Builds `agent/examples/wal_writer.rs` into the target dir this test binary lives in.
fn wal_writer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/<profile>/deps/integration-…
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_owned();
    let target_dir = profile_dir.parent().expect("target dir").to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "agentctl-agent",
        "--example",
        "wal_writer",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --example wal_writer");
    assert!(status.success(), "building the wal_writer example failed");
    profile_dir.join("examples").join("wal_writer")
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
                out.entry(sref).or_default().push(t);
            }
        }
    }
    out
}

#[test]
fn sigkilled_writer_loses_nothing_it_acknowledged() {
    let bin = wal_writer_binary();
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
        let mut child = Command::new(&bin)
            .arg(dir.path())
            .arg(n_series.to_string())
            .arg(sync_every.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wal_writer");
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Reads a WAL produced by Prometheus itself. Fails (does not skip) without the binary.
#[test]
fn reads_wal_written_by_prometheus_agent_mode() {
    let prom = Path::new("/usr/bin/prometheus");
    assert!(
        prom.exists(),
        "/usr/bin/prometheus is required (Debian package `prometheus`)"
    );
    let server = MetricsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 500ms\nscrape_configs:\n  - job_name: golden\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let mut child = Command::new(prom)
        .arg("--enable-feature=agent")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.agent.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
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
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait();

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
