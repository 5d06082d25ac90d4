//! Cost of turning one batch (Prometheus's default `max_samples_per_send`, 2000 samples, one
//! series each, realistic label sets) into a remote-write body: protobuf encoding alone, and
//! encoding plus snappy block compression. Reported per sample via `Throughput::Elements`.

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

criterion_group!(benches, bench);
criterion_main!(benches);
