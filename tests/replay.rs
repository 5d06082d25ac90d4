//! A large WAL replaying does not hold up any other config: while one instance opens and
//! replays a WAL of `REPLAY_WAL_MIB` MiB (default 256; the slow suite, tests/slow/run, uses
//! 1024), another config PUT through the API is scraped within a second, and a third config is
//! deleted (its instance stopped) without waiting either. The figure is the PUT -> first
//! scrape latency, measured with the replay still running.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::labels::{Labels, SeriesRef};
use agent::wal::{Wal, WalOptions};

use crate::support::Agent;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Writes a WAL of at least `mib` MiB into `dir`: 10,000 series, then batches of one sample
/// per series with values that do not compress away.
fn write_wal(dir: &Path, mib: u64) {
    let (mut wal, _) = Wal::open(dir, WalOptions::default()).expect("open the WAL");
    let series: Vec<(SeriesRef, Labels)> = (0..10_000u64)
        .map(|i| {
            let name = format!("replay_metric_{}", i % 100);
            let instance = format!("host-{}:9100", i / 100);
            (
                SeriesRef(i + 1),
                Labels::from_pairs([
                    ("__name__", name.as_str()),
                    ("instance", instance.as_str()),
                    ("job", "replay"),
                ]),
            )
        })
        .collect();
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("series");
    wal.commit().expect("commit");
    let want = mib << 20;
    let mut batch = Vec::with_capacity(series.len());
    for round in 0i64.. {
        batch.clear();
        batch.extend(series.iter().map(|&(SeriesRef(r), _)| {
            let v = ((r as i64 * 7919 + round * 104_729) % 1_000_003) as f64 / 7.0;
            (
                SeriesRef(r),
                1_600_000_000_000 + round * 15_000 + (r as i64 % 1000),
                v,
            )
        }));
        wal.append_samples(&batch).expect("samples");
        wal.commit().expect("commit");
        if round % 50 == 49 && dir_bytes(dir) >= want {
            break;
        }
    }
    wal.sync().expect("sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_wal_replaying_does_not_delay_another_configs_start_or_stop() {
    let mib = env_u64("REPLAY_WAL_MIB", 64);
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let big_wal = wal_dir.join("big").join("wal");
    let t = Instant::now();
    {
        let big_wal = big_wal.clone();
        tokio::task::spawn_blocking(move || write_wal(&big_wal, mib))
            .await
            .unwrap();
    }
    let written = dir_bytes(&big_wal);
    eprintln!(
        "wrote a {:.0} MiB WAL in {:?}",
        written as f64 / f64::from(1 << 20),
        t.elapsed()
    );

    // The target of the small config: when was it first scraped?
    let first_hit: Arc<Mutex<Option<Instant>>> = Arc::default();
    let hit = first_hit.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            hit.lock().unwrap().get_or_insert_with(Instant::now);
            async { "# TYPE small gauge\nsmall 1\n" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let yaml = format!(
        "metrics:\n  wal_directory: {}\n  instance_mode: distinct\n  scraping_service:\n    enabled: true\n",
        wal_dir.display()
    );
    let agent = tokio::task::block_in_place(|| Agent::builder(dir.path()).config(&yaml).start());
    let put = |name: &str, body: &str| {
        let r = tokio::task::block_in_place(|| agent.put_config(name, body));
        assert_eq!(r.status, 201, "PUT {name}: {r:?}");
    };
    // `msg="instance started" instance=big ...`
    let logged = |offset: usize, msg: &str, name: &str| {
        agent.log()[offset..].lines().any(|l| {
            l.contains(&format!("msg=\"{msg}\""))
                && l.split(' ').any(|f| f == format!("instance={name}"))
        })
    };
    // A config to stop during the replay.
    put(
        "doomed",
        "scrape_configs:\n  - job_name: doomed\n    static_configs:\n      - targets: ['127.0.0.1:1']\n",
    );
    tokio::task::block_in_place(|| {
        agent.wait_until("doomed started", Duration::from_secs(30), |_| {
            logged(0, "instance started", "doomed")
        });
    });

    // The big WAL's instance starts replaying; meanwhile a new config runs and an old one
    // stops.
    let log_before = agent.log().len();
    put(
        "big",
        "scrape_configs:\n  - job_name: big\n    static_configs:\n      - targets: ['127.0.0.1:1']\n",
    );
    // A short interval: the first scrape waits for the target's slot within it (as in
    // Prometheus), which is not what is measured here.
    let put_small = Instant::now();
    put(
        "small",
        &format!(
            "scrape_configs:\n  - job_name: small\n    scrape_interval: 200ms\n    scrape_timeout: 100ms\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    );
    let deleted = Instant::now();
    let r = tokio::task::block_in_place(|| agent.delete_config("doomed"));
    assert_eq!(r.status, 200, "{r:?}");
    tokio::task::block_in_place(|| {
        agent.wait_until("doomed stopped", Duration::from_secs(600), |_| {
            logged(log_before, "instance stopped", "doomed")
        });
    });
    let stop_took = deleted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(t) = *first_hit.lock().unwrap() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "small never scraped:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let latency = first.saturating_duration_since(put_small);
    // The replay must still have been running, or this measured nothing.
    let big_started_before = logged(log_before, "instance started", "big");
    tokio::task::block_in_place(|| {
        agent.wait_until("big started", Duration::from_secs(600), |_| {
            logged(log_before, "instance started", "big")
        });
    });
    let replay = put_small.elapsed();
    eprintln!(
        "{:.0} MiB WAL: replay {replay:?} (after the PUT); meanwhile PUT -> first scrape of another config {latency:?}, a DELETE stopped its instance in {stop_took:?}",
        written as f64 / f64::from(1 << 20)
    );
    println!(
        "RELIABILITY replay_wal_mib={:.0} replay_seconds={:.1} replay_put_to_first_scrape_seconds={:.3} replay_delete_to_stopped_seconds={:.3}",
        written as f64 / f64::from(1 << 20),
        replay.as_secs_f64(),
        latency.as_secs_f64(),
        stop_took.as_secs_f64()
    );
    assert!(
        !big_started_before,
        "the big WAL replayed before the small config was scraped: nothing was measured (raise REPLAY_WAL_MIB)"
    );
    assert!(
        latency < Duration::from_secs(1),
        "PUT -> first scrape took {latency:?} while another instance replayed its WAL"
    );
    assert!(
        stop_took < Duration::from_secs(5),
        "a DELETE took {stop_took:?} to stop its instance while another instance replayed its WAL"
    );
}
