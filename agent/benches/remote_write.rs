//! Cost of turning one batch (Prometheus's default `max_samples_per_send`, 2000 samples, one
//! series each, realistic label sets) into a remote-write body: protobuf encoding alone, and
//! encoding plus snappy block compression. Reported per sample via `Throughput::Elements`.
//!
//! `remote_write_queue`: the whole queue for 100,000 samples of 10,000 series, as the WAL
//! watcher feeds it (`append_samples` in calls of 10,000), through 1 and through 4 shards to a
//! receiver on loopback that answers 204 without decoding: enqueueing, batching, encoding,
//! snappy and HTTP, until the last sample is acknowledged. Reported in process CPU time (all
//! threads), per sample.

use std::hint::black_box;

use agent::labels::Labels;
use agent::remote_write::proto::{
    Exemplar, Label, Sample, SeriesLabels, SeriesRef, WriteRequestEncoder,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH: usize = 2_000;

fn series() -> Vec<(Vec<Label>, Sample)> {
    (0..BATCH)
        .map(|i| {
            let labels = vec![
                Label::new("__name__", format!("http_requests_total_{}", i % 40)),
                Label::new("cluster", "prod-eu-1"),
                Label::new("code", ["200", "404", "500"][i % 3]),
                Label::new("instance", format!("10.0.{}.{}:9100", i % 7, i % 250)),
                Label::new("job", "node"),
                Label::new("method", ["GET", "POST"][i % 2]),
                Label::new("path", format!("/api/v1/items/{}", i % 50)),
            ];
            let sample = Sample {
                value: i as f64 * 1.5,
                timestamp: 1_700_000_000_000 + (i as i64 % 15) * 1_000,
            };
            (labels, sample)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = series();
    let mut g = c.benchmark_group("remote_write_batch_2000");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut enc = WriteRequestEncoder::new();
    g.bench_function("encode_protobuf", |b| {
        b.iter(|| {
            let views = data.iter().map(|(l, s)| SeriesRef {
                labels: l.into(),
                samples: std::slice::from_ref(s),
                exemplars: &[],
            });
            black_box(enc.encode_protobuf(views, &[]).len())
        })
    });
    g.bench_function("encode_and_snappy", |b| {
        b.iter(|| {
            let views = data.iter().map(|(l, s)| SeriesRef {
                labels: l.into(),
                samples: std::slice::from_ref(s),
                exemplars: &[],
            });
            black_box(enc.encode(views, &[]).len())
        })
    });
    // As the queue keeps labels (the instance's packed label sets, shared) and sends them:
    // with the endpoint's external labels merged in at encode time.
    let packed: Vec<Labels> = data
        .iter()
        .map(|(l, _)| {
            Labels::from_pairs(
                l.iter()
                    .filter(|l| l.name != "cluster")
                    .map(|l| (l.name.as_str(), l.value.as_str())),
            )
        })
        .collect();
    let external = Labels::from_pairs([("cluster", "prod-eu-1")]);
    g.bench_function("encode_and_snappy_packed_labels_plus_external", |b| {
        b.iter(|| {
            let views = data.iter().zip(&packed).map(|((_, s), l)| SeriesRef {
                labels: SeriesLabels::Packed {
                    labels: l.as_view(),
                    external: Some(external.as_view()),
                },
                samples: std::slice::from_ref(s),
                exemplars: &[],
            });
            black_box(enc.encode(views, &[]).len())
        })
    });
    g.finish();

    // As the queue sends them: one TimeSeries per sample, plus one per exemplar (here one for
    // every tenth sample, with a trace id), counted together as the batch's entries.
    let exemplars: Vec<(usize, Exemplar)> = (0..BATCH)
        .step_by(10)
        .map(|i| {
            (
                i,
                Exemplar {
                    labels: vec![Label::new("trace_id", format!("{:032x}", i * 7919))],
                    value: 0.042,
                    timestamp: 1_700_000_000_000 + i as i64,
                },
            )
        })
        .collect();
    let entries = BATCH + exemplars.len();
    let mut g = c.benchmark_group("remote_write_batch_2000_plus_200_exemplars");
    g.throughput(Throughput::Elements(entries as u64));
    g.bench_function("encode_and_snappy", |b| {
        b.iter(|| {
            let samples = data.iter().map(|(l, s)| SeriesRef {
                labels: l.into(),
                samples: std::slice::from_ref(s),
                exemplars: &[],
            });
            let ex = exemplars.iter().map(|(i, e)| SeriesRef {
                labels: (&data[*i].0).into(),
                samples: &[],
                exemplars: std::slice::from_ref(e),
            });
            black_box(enc.encode(samples.chain(ex), &[]).len())
        })
    });
    g.finish();

    let views = data.iter().map(|(l, s)| SeriesRef {
        labels: l.into(),
        samples: std::slice::from_ref(s),
        exemplars: &[],
    });
    let raw = enc.encode_protobuf(views, &[]).len();
    let views = data.iter().map(|(l, s)| SeriesRef {
        labels: l.into(),
        samples: std::slice::from_ref(s),
        exemplars: &[],
    });
    let compressed = enc.encode(views, &[]).len();
    println!(
        "batch of {BATCH}: {raw} bytes protobuf ({:.1} B/sample), {compressed} bytes snappy ({:.1} B/sample)",
        raw as f64 / BATCH as f64,
        compressed as f64 / BATCH as f64
    );
}

/// User plus system CPU time of this process so far (`/proc/self/stat`, clock ticks of 10 ms).
fn process_cpu() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    std::time::Duration::from_millis(ticks * 10)
}

fn queue(c: &mut Criterion) {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use agent::config::duration::PromDuration;
    use agent::config::remote_write::QueueConfig;
    use agent::labels::SeriesRef as Ref;
    use agent::remote_write::{
        ClientSettings, QueueManager, QueueSettings, RemoteClient, RemoteWriteMetrics,
    };

    const SERIES: u64 = 10_000;
    const SAMPLES: u64 = 100_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = rt.block_on(async {
        agent::httpclient::ensure_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(|_body: axum::body::Bytes| async {
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        reqwest::Url::parse(&format!("http://{addr}/write")).expect("url")
    });
    let mut g = c.benchmark_group("remote_write_queue");
    g.throughput(Throughput::Elements(SAMPLES));
    g.sample_size(10);
    for shards in [1usize, 4] {
        let q = rt.block_on(async {
            let client = RemoteClient::new(ClientSettings {
                remote_name: "bench".into(),
                url: url.clone(),
                timeout: Duration::from_secs(10),
                headers: Default::default(),
                http: Default::default(),
                retry_on_http_429: true,
                agent_id: None,
            })
            .expect("client");
            let cfg = QueueConfig {
                max_samples_per_send: 2_000,
                capacity: 10_000,
                min_shards: shards,
                max_shards: shards,
                batch_send_deadline: PromDuration::from_millis(5),
                ..QueueConfig::default()
            };
            let metrics = RemoteWriteMetrics::register(&mut Default::default());
            let q = QueueManager::new(
                client,
                QueueSettings::new(cfg, BTreeMap::new()),
                &metrics,
                None,
            );
            q.store_series((0..SERIES).map(|i| {
                let name = format!("m{}", i % 40);
                let idx = i.to_string();
                (
                    Ref(i + 1),
                    Labels::from_pairs([("__name__", name.as_str()), ("idx", idx.as_str())]),
                )
            }));
            q
        });
        let mut t = 1_700_000_000_000i64;
        let name = format!("append_and_deliver_100k_samples_{shards}_shards");
        g.bench_function(name, |b| {
            // Process CPU time (all threads: producer, shards, HTTP client and the receiver),
            // not wall time: on a shared machine the CPU a sample costs is what can be compared.
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = process_cpu();
                    for _ in 0..iters {
                        for _ in 0..SAMPLES / SERIES {
                            t += 1;
                            let batch: Vec<(Ref, i64, f64)> =
                                (0..SERIES).map(|i| (Ref(i + 1), t, i as f64)).collect();
                            q.append_samples(&batch).await.expect("queued");
                        }
                    }
                    while q.lowest_sent_timestamp() != Some(t) {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    process_cpu().saturating_sub(start)
                })
            })
        });
        rt.block_on(q.flush(tokio::time::Instant::now() + Duration::from_secs(10)));
    }
    g.finish();
}

criterion_group!(benches, bench, queue);
criterion_main!(benches);
