//! The WAL watcher feeding remote_write into a real Prometheus: everything in the WAL arrives,
//! and after a restart only what was not yet sent is sent again (count per series exact).

use std::sync::Arc;
use std::time::Duration;

use agent::labels::{Labels, SeriesRef};
use agent::remote_write::{QueueManager, RemoteWriteMetrics};
use agent::wal::{Wal, WalOptions};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::support::prometheus::Prometheus;

fn queue(url: &str, metrics: &RemoteWriteMetrics) -> Arc<QueueManager> {
    crate::support::remote_write_queue("wal-test", url, 500, metrics)
}

/// Appends `rounds` scrapes of 50 series (new series on the first call only).
fn append(wal: &mut Wal, refs: &mut Vec<SeriesRef>, base: i64, rounds: std::ops::Range<i64>) {
    if refs.is_empty() {
        let series: Vec<(SeriesRef, Labels)> = (0..50)
            .map(|i| {
                (
                    SeriesRef(i + 1),
                    Labels::from_pairs([("__name__", "wal_test_metric"), ("idx", &i.to_string())]),
                )
            })
            .collect();
        refs.extend(series.iter().map(|(r, _)| *r));
        wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
            .unwrap();
    }
    for j in rounds {
        let samples: Vec<(SeriesRef, i64, f64)> = refs
            .iter()
            .map(|r| (*r, base + j * 1000, j as f64))
            .collect();
        wal.append_samples(&samples).unwrap();
        wal.commit().unwrap();
    }
}

async fn wait_count(prom: &Prometheus, query: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = prom.query_scalar(query).await;
        if got == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{query}: want {want}, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real Prometheus receiver and an empty WAL in a temp dir (returned beside it, so a test can
/// close it), with the watcher's progress file path and the base timestamp of `append`'s samples.
struct Setup {
    prom: Prometheus,
    _dir: tempfile::TempDir,
    wal_dir: std::path::PathBuf,
    progress: std::path::PathBuf,
    base: i64,
}

async fn setup() -> (Setup, Wal) {
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let progress = dir.path().join("remote_write").join("wal-test");
    let (wal, _) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let base = agent::clock::Clock::system().unix_millis() - 60_000;
    let s = Setup {
        prom,
        _dir: dir,
        wal_dir,
        progress,
        base,
    };
    (s, wal)
}

/// A watcher running on the WAL of a [`Setup`] into a new queue to its receiver.
struct Watcher {
    _reg: Registry,
    q: Arc<QueueManager>,
    commit_tx: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(s: &Setup) -> Watcher {
        let mut reg = Registry::default();
        let metrics = RemoteWriteMetrics::register(&mut reg);
        let q = queue(&s.prom.write_url(), &metrics);
        let (commit_tx, commit_rx) = tokio::sync::watch::channel(0u64);
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent::remote_write::watcher::run(
            s.wal_dir.clone(),
            q.clone(),
            s.progress.clone(),
            commit_rx,
            None,
            stop.clone(),
        ));
        Watcher {
            _reg: reg,
            q,
            commit_tx,
            stop,
            task,
        }
    }

    /// Stops the watcher; then, as `Instance::stop` does, flushes its queue and saves the
    /// progress once more.
    async fn stop_and_flush(self, s: &Setup) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.q
            .flush(tokio::time::Instant::now() + Duration::from_secs(10))
            .await;
        agent::remote_write::watcher::save_progress(&self.q, &s.progress, true).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_watcher_delivers_everything_and_resumes_after_restart() {
    let (s, mut wal) = setup().await;
    let (prom, base, mut refs) = (&s.prom, s.base, Vec::new());
    append(&mut wal, &mut refs, base, 0..10);

    let w = Watcher::start(&s);
    wait_count(
        prom,
        "count_over_time(wal_test_metric{idx=\"7\"}[10m])",
        10.0,
    )
    .await;
    // Live tailing: samples committed while the watcher runs arrive too.
    append(&mut wal, &mut refs, base, 10..20);
    w.commit_tx.send_replace(1);
    wait_count(prom, "sum(count_over_time(wal_test_metric[10m]))", 1000.0).await;

    // Stop (as a restart would), write more while nothing sends, start again.
    w.stop_and_flush(&s).await;
    let saved = agent::remote_write::watcher::read_progress(&s.progress);
    // A mark is 1 ms before the newest finished sample (the rest of its scrape may have been
    // queued still), so resuming sends at most that newest sample again.
    assert!(
        saved.is_some_and(|t| t >= base + 19_000 - 1),
        "progress saved: {saved:?}"
    );
    append(&mut wal, &mut refs, base, 20..30);
    drop(wal);

    let w = Watcher::start(&s);
    wait_count(prom, "sum(count_over_time(wal_test_metric[10m]))", 1500.0).await;
    // Exactly 30 samples per series: nothing lost, nothing stored twice.
    wait_count(prom, "max(count_over_time(wal_test_metric[10m]))", 30.0).await;
    wait_count(prom, "min(count_over_time(wal_test_metric[10m]))", 30.0).await;
    w.stop.cancel();
    w.task.await.unwrap();
}

/// What was committed before the watcher is stopped is queued for the flush on stop (an
/// instance stops its watchers right after the scrape loops' last commits, e.g. their staleness
/// markers), whether the stop finds the watcher waiting for a commit, waiting out its
/// coalescing interval, or reading. Each case restarts the watcher on the same WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_made_before_the_watcher_stops_are_flushed() {
    let (s, mut wal) = setup().await;
    let (prom, base, mut refs) = (&s.prom, s.base, Vec::new());
    let total = "sum(count_over_time(wal_test_metric[10m]))";
    let mut round = 0i64;
    for case in 0..9 {
        let w = Watcher::start(&s);
        // One scrape read and delivered first: the watcher is at the live tail.
        append(&mut wal, &mut refs, base, round..round + 1);
        round += 1;
        w.commit_tx.send_replace(1);
        wait_count(prom, total, (round * 50) as f64).await;
        // The last scrapes, then the stop: at once, after a yield, or a little later (inside
        // the watcher's coalescing interval). The outcome must not depend on which.
        append(&mut wal, &mut refs, base, round..round + 1);
        round += 1;
        w.commit_tx.send_replace(2);
        match case % 3 {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_millis(30)).await,
        }
        append(&mut wal, &mut refs, base, round..round + 1);
        round += 1;
        w.commit_tx.send_replace(3);
        w.stop_and_flush(&s).await;
        // A timeout here: this case's last commits before the stop were not flushed.
        eprintln!("case {case}: every commit before the stop at the receiver");
        wait_count(prom, total, (round * 50) as f64).await;
    }
    // Nothing stored twice across the restarts.
    wait_count(
        prom,
        "max(count_over_time(wal_test_metric[10m]))",
        round as f64,
    )
    .await;
    wait_count(
        prom,
        "min(count_over_time(wal_test_metric[10m]))",
        round as f64,
    )
    .await;
}
