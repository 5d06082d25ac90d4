//! remote_write end to end: a real Prometheus as the receiver, and small local receivers that
//! answer what a test needs (429, 400, 503, slow) while recording what arrived.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::config::duration::PromDuration;
use agent::config::http::{BasicAuth, HttpClientConfig};
use agent::config::remote_write::QueueConfig;
use agent::config::secret::Secret;
use agent::labels::{Labels, SeriesRef};
use agent::remote_write::proto::{Label, WriteRequest};
use agent::remote_write::{
    ClientSettings, QueueManager, QueueSettings, RemoteClient, RemoteWriteMetrics, SeriesFilter,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::support::prometheus::Prometheus;

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    request: WriteRequest,
}

/// A scripted answer: status and extra response headers.
type Answer = (u16, Vec<(&'static str, &'static str)>);

/// A scripted receiver: answers the queued responses in order, then `fallback`.
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    fallback: u16,
    delay: Duration,
}

impl Receiver {
    fn new(fallback: u16) -> Receiver {
        Receiver {
            seen: Arc::default(),
            script: Arc::default(),
            fallback,
            delay: Duration::ZERO,
        }
    }

    fn then(self, status: u16, headers: Vec<(&'static str, &'static str)>) -> Receiver {
        self.script.lock().unwrap().push_back((status, headers));
        self
    }

    /// Starts serving on 127.0.0.1:0; returns the write URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(handle))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/api/v1/write")
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Samples in requests that were answered 2xx.
    fn delivered_samples(&self, statuses: &[u16]) -> usize {
        self.requests()
            .iter()
            .zip(statuses)
            .filter(|(_, s)| (200..300).contains(*s))
            .map(|(r, _)| sample_count(&r.request))
            .sum()
    }
}

fn sample_count(r: &WriteRequest) -> usize {
    r.timeseries.iter().map(|t| t.samples.len()).sum()
}

async fn handle(
    axum::extract::State(rx): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !rx.delay.is_zero() {
        tokio::time::sleep(rx.delay).await;
    }
    let request = match WriteRequest::decode_snappy(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    rx.seen.lock().unwrap().push(Seen { headers, request });
    let (status, extra) = rx
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((rx.fallback, vec![]));
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        format!("answer {status}"),
    )
        .into_response();
    for (k, v) in extra {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

fn client(url: &str, http: HttpClientConfig) -> RemoteClient {
    install_crypto();
    RemoteClient::new(ClientSettings {
        remote_name: "test-remote".into(),
        url: reqwest::Url::parse(url).unwrap(),
        timeout: Duration::from_secs(10),
        headers: reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static("x-scope-orgid"),
            reqwest::header::HeaderValue::from_static("tenant-1"),
        )]),
        http: http.settings().expect("valid http client config"),
        retry_on_http_429: true,
        agent_id: Some("agent-under-test".into()),
    })
    .unwrap()
}

fn queue_config(per_send: usize) -> QueueConfig {
    QueueConfig {
        max_samples_per_send: per_send,
        batch_send_deadline: PromDuration::from_millis(100),
        min_backoff: PromDuration::from_millis(30),
        max_backoff: PromDuration::from_millis(200),
        ..QueueConfig::default()
    }
}

/// A queue to `url` with `q` and default client settings, and the registry of its metrics.
fn queue_for(url: &str, q: QueueConfig) -> (Registry, QueueManager) {
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let qm = QueueManager::new(
        client(url, HttpClientConfig::default()),
        QueueSettings::new(q, BTreeMap::new()),
        &metrics,
        None,
    );
    (reg, qm)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

fn proto_labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
}

const fn r(n: u64) -> SeriesRef {
    SeriesRef(n)
}

/// The sum of a metric's values over all its label sets, from the text exposition.
fn metric(reg: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_100_series_x_10_samples_to_prometheus_with_external_labels() {
    let prom = tokio::task::spawn_blocking(Prometheus::start)
        .await
        .unwrap();
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let mut cfg = queue_config(150);
    cfg.min_shards = 3;
    let external = BTreeMap::from([
        ("cluster".to_owned(), "c1".to_owned()),
        ("replica".to_owned(), "r1".to_owned()),
    ]);
    let qm = QueueManager::new(
        client(&prom.write_url(), HttpClientConfig::default()),
        QueueSettings::new(cfg, external),
        &metrics,
        None,
    );
    // Series 0..9 carry their own `cluster`, which the external label must not overwrite.
    qm.store_series((0..100u64).map(|i| {
        let idx = i.to_string();
        let mut l = vec![("__name__", "test_series"), ("idx", idx.as_str())];
        if i < 10 {
            l.push(("cluster", "own"));
        }
        (r(i), labels(&l))
    }));
    let base = agent::clock::Clock::system().unix_millis() - 20_000;
    let mut last = 0;
    for j in 0..10i64 {
        let t = base + j * 1_000;
        last = t;
        let batch: Vec<(SeriesRef, i64, f64)> = (0..100u64).map(|i| (r(i), t, j as f64)).collect();
        qm.append_samples(&batch).await.unwrap();
    }
    let report = qm.flush(Instant::now() + Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.dropped, 0);

    assert_eq!(
        prom.query_scalar(r#"count({__name__=~"test_.*"})"#).await,
        Some(100.0)
    );
    assert_eq!(
        prom.query_scalar(r#"sum(count_over_time({__name__=~"test_.*"}[1h]))"#)
            .await,
        Some(1000.0)
    );
    assert_eq!(
        prom.query_scalar(r#"count({__name__=~"test_.*",cluster="c1",replica="r1"})"#)
            .await,
        Some(90.0)
    );
    assert_eq!(
        prom.query_scalar(r#"count({__name__=~"test_.*",cluster="own",replica="r1"})"#)
            .await,
        Some(10.0)
    );
    assert_eq!(
        prom.query_scalar(r#"max(max_over_time(test_series[1h]))"#)
            .await,
        Some(9.0)
    );

    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_total"),
        1000.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_failed_total"),
        0.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        0.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_pending"),
        0.0
    );
    assert!(metric(&reg, "prometheus_remote_storage_bytes_total") > 0.0);
    assert_eq!(
        metric(
            &reg,
            "prometheus_remote_storage_queue_highest_sent_timestamp_seconds"
        ),
        last as f64 / 1000.0
    );
    assert!(
        metric(
            &reg,
            "prometheus_remote_storage_sent_batch_duration_seconds_count"
        ) >= 7.0
    );
    assert_eq!(qm.lowest_sent_timestamp(), Some(last));
}

#[tokio::test]
async fn http_429_with_retry_after_is_retried_and_delivered_once() {
    let rx = Receiver::new(204).then(429, vec![("Retry-After", "1")]);
    let url = rx.serve().await;
    let (reg, qm) = queue_for(&url, queue_config(100));
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    let start = Instant::now();
    qm.append_samples(&[(r(1), 1000, 1.0), (r(1), 2000, 2.0), (r(1), 3000, 3.0)])
        .await
        .unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(20)).await;
    assert!(report.complete);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one refused, one accepted");
    // The retry waited for Retry-After (1s), not for min_backoff (30ms).
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(rx.delivered_samples(&[429, 204]), 3);
    assert_eq!(reqs[0].request, reqs[1].request, "the same batch is resent");
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 3.0);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_retried_total"),
        3.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_failed_total"),
        0.0
    );
    assert_eq!(qm.lowest_sent_timestamp(), Some(3000));
}

/// A receiver may ask for any wait in `Retry-After`; a stop cuts the wait short and tries once
/// more at once. The shard used to double the asked wait on the way and panic (`Duration`
/// overflow), losing the batch.
#[tokio::test]
async fn a_stop_during_a_retry_after_of_any_length_still_delivers() {
    let rx = Receiver::new(204).then(503, vec![("Retry-After", "10000000000000000000")]);
    let url = rx.serve().await;
    let (reg, qm) = queue_for(&url, queue_config(100));
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    qm.append_samples(&[(r(1), 1000, 1.0), (r(1), 2000, 2.0)])
        .await
        .unwrap();
    // Counted as retried right before the shard starts waiting.
    let waited = Instant::now();
    while metric(&reg, "prometheus_remote_storage_samples_retried_total") < 2.0 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the refused batch was never set to wait"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = qm
        .flush_while_delivering(Instant::now() + Duration::from_secs(20))
        .await;
    assert!(report.complete, "{report:?}");
    assert_eq!(rx.requests().len(), 2, "one refused, one accepted");
    assert_eq!(rx.delivered_samples(&[503, 204]), 2);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 2.0);
    assert_eq!(qm.lowest_sent_timestamp(), Some(2000));
}

/// `max_samples_per_send` has no upper bound (as in Prometheus): a huge one is a batch that
/// fills until `batch_send_deadline`. The shard used to allocate room for a whole batch up
/// front and panicked ("capacity overflow"), or aborted the process on a failed allocation.
#[tokio::test]
async fn a_huge_max_samples_per_send_sends_at_the_deadline() {
    let rx = Receiver::new(204);
    let url = rx.serve().await;
    let (reg, qm) = queue_for(&url, queue_config(usize::MAX / 2));
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    qm.append_samples(&[(r(1), 1000, 1.0), (r(1), 2000, 2.0)])
        .await
        .unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(20)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(rx.delivered_samples(&[204]), 2);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 2.0);
}

/// `sample_age_limit`: samples older than the limit when they are read from the WAL are
/// dropped and counted, the others sent. The setting used to be parsed and ignored.
#[tokio::test]
async fn samples_older_than_sample_age_limit_are_dropped_not_sent() {
    let rx = Receiver::new(204);
    let url = rx.serve().await;
    let mut q = queue_config(100);
    q.sample_age_limit = PromDuration::from_secs(60);
    let (reg, qm) = queue_for(&url, q);
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    let now = agent::clock::Clock::system().unix_millis();
    qm.append_samples(&[
        (r(1), now - 600_000, 1.0),
        (r(1), now - 120_000, 2.0),
        (r(1), now - 1_000, 3.0),
        (r(1), now, 4.0),
    ])
    .await
    .unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(20)).await;
    assert!(report.complete, "{report:?}");
    let sent: Vec<f64> = rx
        .requests()
        .iter()
        .flat_map(|s| s.request.timeseries.iter())
        .flat_map(|t| t.samples.iter().map(|s| s.value))
        .collect();
    assert_eq!(sent, [3.0, 4.0]);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        2.0
    );
}

/// The values of each request the receiver saw, in order.
fn values_per_request(rx: &Receiver) -> Vec<Vec<f64>> {
    rx.requests()
        .iter()
        .map(|s| {
            let series = s.request.timeseries.iter();
            series
                .flat_map(|t| t.samples.iter().map(|s| s.value))
                .collect()
        })
        .collect()
}

/// Flushes samples of one series, `(age in ms, value)`, through a queue with
/// `sample_age_limit: 10s` whose receiver answers the first request 503 with `Retry-After: 3`.
async fn flushed_through_a_3s_retry(samples: &[(i64, f64)]) -> (Receiver, Registry) {
    let rx = Receiver::new(204).then(503, vec![("Retry-After", "3")]);
    let url = rx.serve().await;
    let mut q = queue_config(100);
    q.sample_age_limit = PromDuration::from_secs(10);
    let (reg, qm) = queue_for(&url, q);
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    let now = agent::clock::Clock::system().unix_millis();
    let samples: Vec<_> = samples
        .iter()
        .map(|&(age, v)| (r(1), now - age, v))
        .collect();
    qm.append_samples(&samples).await.unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(30)).await;
    assert!(report.complete, "{report:?}");
    (rx, reg)
}

/// `sample_age_limit` holds at every try, as in Prometheus: a batch retried past the limit is
/// sent again without what grew too old while it waited.
#[tokio::test]
async fn a_retried_batch_leaves_out_what_grew_older_than_sample_age_limit() {
    // 8 s old: within the limit at the first try, 11 s old or more at the retry.
    let (rx, reg) = flushed_through_a_3s_retry(&[(8_000, 1.0), (0, 2.0)]).await;
    assert_eq!(values_per_request(&rx), [vec![1.0, 2.0], vec![2.0]]);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 1.0);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        1.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_retried_total"),
        2.0
    );
}

/// A batch whose every sample grows older than `sample_age_limit` while it is retried is not
/// sent again: it is dropped, and the queue goes on.
#[tokio::test]
async fn a_retried_batch_all_too_old_is_dropped_without_another_request() {
    let (rx, reg) = flushed_through_a_3s_retry(&[(8_000, 1.0)]).await;
    assert_eq!(values_per_request(&rx), [vec![1.0]]);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 0.0);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        1.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_failed_total"),
        0.0
    );
}

#[tokio::test]
async fn http_503_is_retried_with_backoff_until_accepted() {
    let rx = Receiver::new(200)
        .then(503, vec![])
        .then(500, vec![])
        .then(503, vec![]);
    let url = rx.serve().await;
    let (reg, qm) = queue_for(&url, queue_config(100));
    qm.store_series([(r(7), labels(&[("__name__", "m")]))]);
    qm.append_samples(&[(r(7), 5, 1.0)]).await.unwrap();
    assert!(
        qm.flush(Instant::now() + Duration::from_secs(20))
            .await
            .complete
    );
    assert_eq!(rx.requests().len(), 4);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 1.0);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_retried_total"),
        3.0
    );
}

#[tokio::test]
async fn http_400_is_dropped_and_counted_without_retrying() {
    let rx = Receiver::new(400);
    let url = rx.serve().await;
    let (reg, qm) = queue_for(&url, queue_config(100));
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    // Samples from after the queue started: a batch holding older ones (what a crash may have
    // delivered already) is split on 400 in a shard's first batches (remote_write/queue.rs,
    // `ResendWindow`).
    let now = agent::clock::Clock::system().unix_millis();
    qm.append_samples(&[(r(1), now + 1000, 1.0), (r(1), now + 2000, 2.0)])
        .await
        .unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(10)).await;
    assert!(report.complete);
    assert_eq!(rx.requests().len(), 1, "no retry loop on 400");
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_failed_total"),
        2.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_retried_total"),
        0.0
    );
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 0.0);
    // Refused data is finished with: the WAL may be truncated past it.
    assert_eq!(qm.lowest_sent_timestamp(), Some(now + 2000));
}

#[tokio::test]
async fn sends_the_protocol_headers_auth_and_sorted_labels() {
    let rx = Receiver::new(204);
    let url = rx.serve().await;
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let http = HttpClientConfig {
        basic_auth: Some(BasicAuth {
            username: "user".into(),
            password: Some(Secret::new("pass")),
            ..Default::default()
        }),
        ..Default::default()
    };
    let qm = QueueManager::new(
        client(&url, http),
        QueueSettings::new(
            queue_config(100),
            BTreeMap::from([("a_external".to_owned(), "x".to_owned())]),
        ),
        &metrics,
        None,
    );
    qm.store_series([(r(1), labels(&[("zz", "1"), ("__name__", "m"), ("b", "2")]))]);
    qm.append_samples(&[(r(1), 42, 0.5)]).await.unwrap();
    assert!(
        qm.flush(Instant::now() + Duration::from_secs(10))
            .await
            .complete
    );
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let h = &reqs[0].headers;
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(
        h["user-agent"],
        format!("agentctl/{}", env!("CARGO_PKG_VERSION")).as_str()
    );
    assert_eq!(h["x-agent-id"], "agent-under-test");
    assert_eq!(h["x-scope-orgid"], "tenant-1");
    // base64("user:pass")
    assert_eq!(h["authorization"], "Basic dXNlcjpwYXNz");
    let names: Vec<&str> = reqs[0].request.timeseries[0]
        .labels
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, ["__name__", "a_external", "b", "zz"]);
    let s = reqs[0].request.timeseries[0].samples[0];
    assert_eq!((s.timestamp, s.value), (42, 0.5));
}

#[tokio::test]
async fn series_filter_rewrites_or_drops_series_once() {
    let rx = Receiver::new(204);
    let url = rx.serve().await;
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let filter: SeriesFilter = Box::new(move |l: &mut agent::labels::LabelsBuilder| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        l.del("secret");
        l.get("drop") != Some("yes")
    });
    let qm = QueueManager::new(
        client(&url, HttpClientConfig::default()),
        QueueSettings::new(queue_config(100), BTreeMap::new()),
        &metrics,
        Some(filter),
    );
    qm.store_series([
        (r(1), labels(&[("__name__", "keep"), ("secret", "s")])),
        (r(2), labels(&[("__name__", "gone"), ("drop", "yes")])),
    ]);
    for t in 1..=5 {
        qm.append_samples(&[(r(1), t, 1.0), (r(2), t, 1.0), (r(3), t, 1.0)])
            .await
            .unwrap();
    }
    assert!(
        qm.flush(Instant::now() + Duration::from_secs(10))
            .await
            .complete
    );
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "once per series"
    );
    let got: Vec<WriteRequest> = rx.requests().into_iter().map(|s| s.request).collect();
    let series: Vec<_> = got.iter().flat_map(|r| r.timeseries.iter()).collect();
    assert_eq!(series.len(), 5);
    assert!(series
        .iter()
        .all(|s| s.labels == proto_labels(&[("__name__", "keep")])));
    // Dropped series (2) and never-stored series (3): 5 samples each.
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        10.0
    );
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 5.0);
}

#[tokio::test]
async fn producer_waits_when_the_queue_is_full_and_flush_deadline_counts_the_rest() {
    let rx = Receiver::new(503);
    let url = rx.serve().await;
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let mut cfg = queue_config(5);
    cfg.capacity = 5;
    cfg.max_shards = 1;
    let qm = Arc::new(QueueManager::new(
        client(&url, HttpClientConfig::default()),
        QueueSettings::new(cfg, BTreeMap::new()),
        &metrics,
        None,
    ));
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    let producer = {
        let qm = qm.clone();
        tokio::spawn(async move {
            let samples: Vec<(SeriesRef, i64, f64)> = (0..50).map(|t| (r(1), t, 1.0)).collect();
            qm.append_samples(&samples).await
        })
    };
    // 5 in the batch being retried + 5 in the queue (one chunk: `capacity` samples of room);
    // the producer is held on its next chunk.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&reg, "prometheus_remote_storage_samples_pending") < 10.0
        || metric(&reg, "prometheus_remote_storage_samples_retried_total") < 5.0
    {
        assert!(Instant::now() < deadline, "the queue never filled up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !producer.is_finished(),
        "the producer must wait, not buffer without bound"
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_pending"),
        10.0
    );
    assert!(metric(&reg, "prometheus_remote_storage_samples_retried_total") >= 5.0);

    let report = qm.flush(Instant::now() + Duration::from_millis(300)).await;
    assert!(!report.complete);
    let err = producer.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("40 samples were not queued"),
        "{err}"
    );
    // Nothing disappears silently: the 10 accepted samples (5 in the retried batch, 5 queued)
    // are counted as dropped at the deadline; the producer is told about the other 40.
    assert_eq!(report.dropped, 10);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        10.0
    );
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_pending"),
        0.0
    );
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 0.0);
    assert!(qm.append_samples(&[(r(1), 99, 1.0)]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshards_up_for_a_slow_receiver_and_keeps_per_series_order() {
    let mut rx = Receiver::new(204);
    rx.delay = Duration::from_millis(40);
    let url = rx.serve().await;
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let mut cfg = queue_config(20);
    cfg.capacity = 50;
    cfg.max_shards = 8;
    let mut settings = QueueSettings::new(cfg, BTreeMap::new());
    settings.shard_update_interval = Duration::from_millis(300);
    let qm = QueueManager::new(
        client(&url, HttpClientConfig::default()),
        settings,
        &metrics,
        None,
    );
    qm.store_series(
        (0..16u64).map(|i| (r(i), labels(&[("__name__", "m"), ("i", &i.to_string())]))),
    );
    assert_eq!(qm.shard_count().await, 1);
    let started = Instant::now();
    let mut t = 0i64;
    let mut max_shards = 1;
    while started.elapsed() < Duration::from_secs(4) {
        let batch: Vec<(SeriesRef, i64, f64)> =
            (0..16u64).map(|i| (r(i), t * 1000, t as f64)).collect();
        qm.append_samples(&batch).await.unwrap();
        t += 1;
        max_shards = max_shards.max(qm.shard_count().await);
    }
    assert!(
        qm.flush(Instant::now() + Duration::from_secs(30))
            .await
            .complete
    );
    assert!(max_shards > 1, "the queue never resharded");
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_total"),
        (t * 16) as f64
    );
    // Per series, values arrive in append order across all requests and reshards.
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for seen in rx.requests() {
        for ts in &seen.request.timeseries {
            let key = ts.labels[1].value.clone();
            let v = ts.samples[0].value;
            if let Some(prev) = last.insert(key.clone(), v) {
                assert!(v > prev, "series {key}: {v} after {prev}");
            }
        }
    }
    assert_eq!(last.len(), 16);
}

/// A bare HTTPS receiver (the test certificate for `example.test` from `fixtures/tls`):
/// answers every POST with 204 and records the samples of each decodable body.
async fn tls_receiver() -> (String, Arc<Mutex<Vec<usize>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    install_crypto();
    let dir = crate::support::fixture("tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/api/v1/write", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<usize>>> = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // handshake refused by the client: nothing to record
                };
                loop {
                    // One request: head up to CRLFCRLF, then Content-Length bytes.
                    let mut buf = Vec::new();
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if let Ok(req) = WriteRequest::decode_snappy(&buf[head_end..head_end + len]) {
                        record.lock().unwrap().push(sample_count(&req));
                    }
                    let resp = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    if tls.write_all(resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

fn tls_http(tls: agent::config::http::TlsConfig) -> HttpClientConfig {
    HttpClientConfig {
        tls_config: Some(tls),
        ..Default::default()
    }
}

/// Sends two samples and flushes with `deadline` left; whether everything was delivered.
async fn send_one(
    url: &str,
    http: HttpClientConfig,
    reg: &mut Registry,
    deadline: Duration,
) -> bool {
    let metrics = RemoteWriteMetrics::register(reg);
    let qm = QueueManager::new(
        client(url, http),
        QueueSettings::new(queue_config(100), BTreeMap::new()),
        &metrics,
        None,
    );
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    qm.append_samples(&[(r(1), 1, 1.0), (r(1), 2, 2.0)])
        .await
        .unwrap();
    qm.flush(Instant::now() + deadline).await.complete
}

#[tokio::test]
async fn remote_write_over_tls_verifies_against_ca_and_server_name() {
    let (url, got) = tls_receiver().await;
    let ca = std::fs::read_to_string(crate::support::fixture("tls/ca.pem")).unwrap();
    let mut reg = Registry::default();
    let tls = agent::config::http::TlsConfig {
        ca: Some(ca.clone()),
        server_name: Some("example.test".into()),
        ..Default::default()
    };
    assert!(send_one(&url, tls_http(tls), &mut reg, Duration::from_secs(30)).await);
    assert_eq!(*got.lock().unwrap(), vec![2]);
    assert_eq!(metric(&reg, "prometheus_remote_storage_samples_total"), 2.0);

    // Without server_name the certificate (for example.test) does not match 127.0.0.1: the
    // handshake fails, which is a recoverable error, retried until the flush deadline.
    let mut reg = Registry::default();
    let tls = agent::config::http::TlsConfig {
        ca_file: Some(
            crate::support::fixture("tls/ca.pem")
                .to_string_lossy()
                .into_owned(),
        ),
        ..Default::default()
    };
    assert!(!send_one(&url, tls_http(tls), &mut reg, Duration::from_secs(2)).await);
    assert_eq!(got.lock().unwrap().len(), 1, "nothing more arrived");
    assert!(metric(&reg, "prometheus_remote_storage_samples_retried_total") >= 2.0);
    assert_eq!(
        metric(&reg, "prometheus_remote_storage_samples_dropped_total"),
        2.0
    );
}

#[tokio::test]
async fn remote_write_over_tls_with_insecure_skip_verify() {
    let (url, got) = tls_receiver().await;
    let mut reg = Registry::default();
    let tls = agent::config::http::TlsConfig {
        insecure_skip_verify: true,
        ..Default::default()
    };
    assert!(send_one(&url, tls_http(tls), &mut reg, Duration::from_secs(30)).await);
    assert_eq!(*got.lock().unwrap(), vec![2]);
}

#[tokio::test]
async fn bearer_token_file_is_read_per_request() {
    let rx = Receiver::new(204);
    let url = rx.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").unwrap();
    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let http = HttpClientConfig {
        bearer_token_file: Some(token.to_string_lossy().into_owned()),
        ..Default::default()
    };
    let qm = QueueManager::new(
        client(&url, http),
        QueueSettings::new(queue_config(1), BTreeMap::new()),
        &metrics,
        None,
    );
    qm.store_series([(r(1), labels(&[("__name__", "m")]))]);
    qm.append_samples(&[(r(1), 1, 1.0)]).await.unwrap();
    while rx.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&token, "rotated").unwrap();
    qm.append_samples(&[(r(1), 2, 1.0)]).await.unwrap();
    assert!(
        qm.flush(Instant::now() + Duration::from_secs(10))
            .await
            .complete
    );
    let auth: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth, ["Bearer first", "Bearer rotated"]);
}

/// A commit made while the WAL watcher hands a poll's samples to a full queue, followed at once
/// by the stop, is read and queued before the watcher ends, so the flush sends it. That is the
/// order of `Instance::stop` (agent/src/instance/mod.rs): the scrape loops commit their
/// staleness markers, then the watcher is stopped, while it may still be delivering the samples
/// of its last poll (a slow receiver keeps the queue full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_made_just_before_the_stop_is_sent_by_the_flush() {
    use agent::wal::{Wal, WalOptions};
    let mut rx = Receiver::new(204);
    // 200 ms per request, 10 samples per request and 10 of room in the queue: the first
    // poll's 100 samples keep the watcher waiting for room for about two seconds.
    rx.delay = Duration::from_millis(200);
    let url = rx.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (mut wal, _) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let series: Vec<(SeriesRef, Labels)> = (1..=10u64)
        .map(|i| (r(i), labels(&[("__name__", "m"), ("i", &i.to_string())])))
        .collect();
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .unwrap();
    let base = agent::clock::Clock::system().unix_millis() - 60_000;
    let scrape = |wal: &mut Wal, round: i64| {
        let samples: Vec<(SeriesRef, i64, f64)> = series
            .iter()
            .map(|(r, _)| (*r, base + round * 1000, round as f64))
            .collect();
        wal.append_samples(&samples).unwrap();
        wal.commit().unwrap();
    };
    for round in 0..10 {
        scrape(&mut wal, round);
    }

    let mut reg = Registry::default();
    let metrics = RemoteWriteMetrics::register(&mut reg);
    let mut cfg = queue_config(10);
    (cfg.capacity, cfg.min_shards, cfg.max_shards) = (10, 1, 1);
    let qm = Arc::new(QueueManager::new(
        client(&url, HttpClientConfig::default()),
        QueueSettings::new(cfg, BTreeMap::new()),
        &metrics,
        None,
    ));
    let (commit_tx, commit_rx) = tokio::sync::watch::channel(0u64);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(agent::remote_write::watcher::run(
        wal_dir,
        qm.clone(),
        dir.path().join("progress"),
        commit_rx,
        None,
        stop.clone(),
    ));
    // The watcher has read the ten scrapes and waits for room in the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.requests().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the receiver");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!task.is_finished());
    // One more commit, then the stop.
    scrape(&mut wal, 10);
    commit_tx.send_replace(1);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the watcher ends after the stop")
        .unwrap();
    let report = qm.flush(Instant::now() + Duration::from_secs(60)).await;
    assert!(report.complete, "{report:?}");
    let newest: Vec<i64> = rx
        .requests()
        .iter()
        .flat_map(|s| s.request.timeseries.iter())
        .flat_map(|t| t.samples.iter().map(|s| s.timestamp))
        .filter(|&t| t == base + 10_000)
        .collect();
    assert_eq!(
        newest.len(),
        10,
        "the last commit before the stop: {} of its 10 samples sent; {} samples in all",
        newest.len(),
        rx.requests()
            .iter()
            .map(|s| sample_count(&s.request))
            .sum::<usize>()
    );
}
