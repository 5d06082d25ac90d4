//! Synthetic scrape targets: one process serving N targets, one loopback port each (so every
//! scraper gives each target its own `instance` label without relabelling).
//!
//! Every target exposes `series` series in the Prometheus text format 0.0.4, each with exactly
//! five labels: counters (`http_requests_total`, `http_response_size_bytes_total`), gauges
//! (`app_inflight_requests`, `app_queue_depth_bytes`), a histogram
//! (`http_request_duration_seconds`, 12 buckets + `_sum` + `_count` per label set; `le` is
//! one of the five labels) and one gauge `bench_scrape_sequence`, whose value is this target's
//! scrape number (1, 2, 3, ...). Every value changes at every scrape (counters grow by at
//! least 1, the histogram gets at least one observation in its first bucket, so every
//! cumulative bucket grows).
//!
//! The sequence gauge is how delivery is checked exactly: the target counts the requests it
//! served, the sink learns from this gauge which scrape a timestamp belongs to, so "expected"
//! is (scrapes served in the window) x (series per target), with no guessing at clock edges.
//!
//! Cost: the text before each value (`name{labels} `) is built once; a scrape copies those
//! prefixes and formats one float per series, so the generator costs a few microseconds per
//! 100 series and is not what gets measured. Bodies are served uncompressed whatever the
//! scraper's `Accept-Encoding` says (identical for all three scrapers, and no gzip cost on
//! either side).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent::rng::Rng;
use agent::scrape::parse::format_value;
use axum::http::header;
use axum::response::IntoResponse;

/// The metric name whose value is the scrape number.
pub const SEQUENCE_METRIC: &str = "bench_scrape_sequence";

/// Histogram upper bounds (the +Inf bucket is added).
const BUCKETS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];
const BUCKET_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Series per histogram label set: 12 buckets, `_sum`, `_count`.
const HIST_SERIES: usize = BUCKETS.len() + 3;

const SERVICES: [&str; 8] = [
    "checkout", "cart", "catalog", "payments", "search", "users", "shipping", "auth",
];
const HANDLERS: [&str; 12] = [
    "/api/v1/items",
    "/api/v1/items/{id}",
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/users/{id}",
    "/api/v1/login",
    "/api/v1/search",
    "/api/v1/cart",
    "/healthz",
    "/metrics",
    "/api/v2/recommendations",
    "/api/v2/inventory",
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 6] = ["200", "201", "204", "400", "404", "500"];

/// The smallest `series` a target supports (one histogram, two counters, two gauges, the
/// sequence gauge).
pub const MIN_SERIES: usize = HIST_SERIES + 5;

/// How one line's value is computed.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Counter(usize),
    Gauge(usize),
    /// Histogram `h`, cumulative bucket `b` (`b == BUCKETS.len()` is +Inf).
    Bucket(usize, usize),
    Sum(usize),
    Count(usize),
    Sequence,
}

/// The fixed part of a target's exposition: for each line, the text before the value
/// (including any `# HELP`/`# TYPE` lines that precede it) and how to compute the value.
#[derive(Debug)]
pub struct Layout {
    text: Vec<u8>,
    lines: Vec<(usize, usize, Slot)>,
    counters: usize,
    gauges: usize,
    histograms: usize,
}

fn labels(out: &mut Vec<u8>, i: usize, fourth: (&str, &str)) {
    // Mixed radix over the label lists; the pod takes the remaining quotient, so every index
    // gives a distinct label set.
    let service = SERVICES[i % SERVICES.len()];
    let handler = HANDLERS[(i / SERVICES.len()) % HANDLERS.len()];
    let method = METHODS[(i / (SERVICES.len() * HANDLERS.len())) % METHODS.len()];
    let pod = i / (SERVICES.len() * HANDLERS.len() * METHODS.len());
    let (k4, v4) = fourth;
    out.extend_from_slice(
        format!(
            "{{service=\"{service}\",handler=\"{handler}\",method=\"{method}\",{k4}=\"{v4}\",pod=\"{service}-7d9f8c6b5-{pod:05x}\"}} "
        )
        .as_bytes(),
    );
}

impl Layout {
    /// Builds the layout of a target with exactly `series` series (at least [`MIN_SERIES`]).
    pub fn new(series: usize) -> Layout {
        let series = series.max(MIN_SERIES);
        // Roughly 30% histogram series, 40% counters, the rest gauges; one sequence gauge.
        let histograms = ((series * 3 / 10) / HIST_SERIES).max(1);
        let rest = series - 1 - histograms * HIST_SERIES;
        let counters = (rest * 4 / 7).max(2);
        let gauges = rest - counters;
        let mut text = Vec::with_capacity(series * 140);
        let mut lines = Vec::with_capacity(series);
        let mut push = |text: &mut Vec<u8>, start: usize, slot: Slot| {
            lines.push((start, text.len(), slot));
        };

        let families = [
            (
                "http_requests_total",
                "counter",
                "Requests served, by handler, method and status code.",
            ),
            (
                "http_response_size_bytes_total",
                "counter",
                "Bytes written in response bodies.",
            ),
        ];
        for (f, (name, kind, help)) in families.iter().enumerate() {
            let mut start = text.len();
            text.extend_from_slice(
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes(),
            );
            for c in (f..counters).step_by(families.len()) {
                text.extend_from_slice(name.as_bytes());
                labels(&mut text, c, ("code", CODES[c % CODES.len()]));
                push(&mut text, start, Slot::Counter(c));
                start = text.len();
            }
        }
        let families = [
            (
                "app_inflight_requests",
                "gauge",
                "Requests being served right now.",
            ),
            (
                "app_queue_depth_bytes",
                "gauge",
                "Bytes waiting in the outgoing queue.",
            ),
        ];
        for (f, (name, kind, help)) in families.iter().enumerate() {
            let mut start = text.len();
            text.extend_from_slice(
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes(),
            );
            for g in (f..gauges).step_by(families.len()) {
                text.extend_from_slice(name.as_bytes());
                labels(&mut text, g, ("zone", ["a", "b", "c"][g % 3]));
                push(&mut text, start, Slot::Gauge(g));
                start = text.len();
            }
        }
        let name = "http_request_duration_seconds";
        let mut start = text.len();
        text.extend_from_slice(
            format!("# HELP {name} Request latency.\n# TYPE {name} histogram\n").as_bytes(),
        );
        for h in 0..histograms {
            for (b, le) in BUCKETS.iter().chain(["+Inf"].iter()).enumerate() {
                text.extend_from_slice(format!("{name}_bucket").as_bytes());
                labels(&mut text, h, ("le", le));
                push(&mut text, start, Slot::Bucket(h, b));
                start = text.len();
            }
            for (suffix, slot) in [("_sum", Slot::Sum(h)), ("_count", Slot::Count(h))] {
                text.extend_from_slice(format!("{name}{suffix}").as_bytes());
                labels(&mut text, h, ("code", "200"));
                push(&mut text, start, slot);
                start = text.len();
            }
        }
        text.extend_from_slice(
            format!("# HELP {SEQUENCE_METRIC} Scrapes served by this target.\n# TYPE {SEQUENCE_METRIC} gauge\n{SEQUENCE_METRIC}").as_bytes(),
        );
        labels(&mut text, 0, ("code", "-"));
        push(&mut text, start, Slot::Sequence);
        Layout {
            text,
            lines,
            counters,
            gauges,
            histograms,
        }
    }

    /// Series per scrape.
    pub fn series(&self) -> usize {
        self.lines.len()
    }
}

/// One target's changing values.
#[derive(Debug)]
pub struct TargetState {
    rng: Rng,
    seq: u64,
    counters: Vec<f64>,
    gauges: Vec<f64>,
    /// Non-cumulative bucket counts per histogram (+Inf last).
    buckets: Vec<[u64; BUCKETS.len() + 1]>,
    sums: Vec<f64>,
}

impl TargetState {
    pub fn new(layout: &Layout, seed: u64) -> TargetState {
        TargetState {
            rng: Rng::with_seed(seed),
            seq: 0,
            counters: vec![0.0; layout.counters],
            gauges: vec![0.0; layout.gauges],
            buckets: vec![[0; BUCKETS.len() + 1]; layout.histograms],
            sums: vec![0.0; layout.histograms],
        }
    }

    /// Advances every value by one scrape and writes the body into `out` (cleared first).
    /// Returns the scrape number written into the sequence gauge.
    pub fn scrape(&mut self, layout: &Layout, out: &mut Vec<u8>) -> u64 {
        self.seq += 1;
        for (i, c) in self.counters.iter_mut().enumerate() {
            // Request counters grow by a few, byte counters by a few kilobytes.
            let step = if i % 2 == 0 {
                1 + self.rng.below(20)
            } else {
                512 + self.rng.below(65_536)
            };
            *c += step as f64;
        }
        for g in self.gauges.iter_mut() {
            let prev = *g;
            loop {
                let v = self.rng.below(10_000) as f64 / 4.0;
                if v != prev {
                    *g = v;
                    break;
                }
            }
        }
        for (h, buckets) in self.buckets.iter_mut().enumerate() {
            let n = 1 + self.rng.below(8);
            for k in 0..n {
                // The first observation is always fast so every cumulative bucket moves.
                let v = if k == 0 {
                    0.001
                } else {
                    (self.rng.below(12_000) as f64 / 1_000.0).powi(2) / 10.0
                };
                let b = BUCKET_BOUNDS
                    .iter()
                    .position(|&ub| v <= ub)
                    .unwrap_or(BUCKETS.len());
                buckets[b] += 1;
                self.sums[h] += v;
            }
        }
        out.clear();
        out.reserve(layout.text.len() + layout.lines.len() * 24);
        for &(start, end, slot) in &layout.lines {
            out.extend_from_slice(&layout.text[start..end]);
            let v = match slot {
                Slot::Counter(i) => self.counters[i],
                Slot::Gauge(i) => self.gauges[i],
                Slot::Bucket(h, b) => self.buckets[h][..=b].iter().sum::<u64>() as f64,
                Slot::Sum(h) => self.sums[h],
                Slot::Count(h) => self.buckets[h].iter().sum::<u64>() as f64,
                Slot::Sequence => self.seq as f64,
            };
            format_value(out, v);
            out.push(b'\n');
        }
        self.seq
    }
}

/// One served target.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    state: Mutex<(TargetState, Vec<u8>)>,
    served: AtomicU64,
}

impl Target {
    /// Scrapes served so far (equals the last sequence number served).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// All targets of one process.
#[derive(Debug)]
pub struct Targets {
    pub layout: Arc<Layout>,
    pub targets: Vec<Arc<Target>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Targets {
    /// Stops accepting scrapes (the listeners close with their tasks).
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("binding target {index} on {host}:0: {source}")]
    Bind {
        index: usize,
        host: String,
        source: std::io::Error,
    },
}

impl Targets {
    /// Binds `count` listeners on `host` (port 0 each) and serves them on the current tokio
    /// runtime until the `Targets` is dropped.
    pub async fn start(host: &str, count: usize, series: usize) -> Result<Targets, TargetsError> {
        let layout = Arc::new(Layout::new(series));
        let mut targets = Vec::with_capacity(count);
        let mut servers = Vec::with_capacity(count);
        for index in 0..count {
            let listener = tokio::net::TcpListener::bind((host, 0))
                .await
                .map_err(|source| TargetsError::Bind {
                    index,
                    host: host.to_owned(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| TargetsError::Bind {
                index,
                host: host.to_owned(),
                source,
            })?;
            let target = Arc::new(Target {
                addr,
                state: Mutex::new((TargetState::new(&layout, index as u64 + 1), Vec::new())),
                served: AtomicU64::new(0),
            });
            let (t, l) = (target.clone(), layout.clone());
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let (t, l) = (t.clone(), l.clone());
                    async move { serve(&t, &l) }
                }),
            );
            servers.push(tokio::spawn(async move {
                // Serving ends when `Targets` is dropped (the task is aborted).
                let _ = axum::serve(listener, app).await;
            }));
            targets.push(target);
        }
        Ok(Targets {
            layout,
            targets,
            servers,
        })
    }

    /// Scrapes served per target, in target order.
    pub fn served(&self) -> Vec<u64> {
        self.targets.iter().map(|t| t.served()).collect()
    }
}

fn serve(t: &Target, layout: &Layout) -> axum::response::Response {
    let body = {
        // A poisoned lock only means an earlier scrape panicked; the values are still usable.
        let mut guard = t.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, buf) = &mut *guard;
        let seq = state.scrape(layout, buf);
        t.served.store(seq, Ordering::SeqCst);
        bytes::Bytes::copy_from_slice(buf)
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::scrape::parse::{parse_all, Entry, Format, MetricType};
    use std::collections::{HashMap, HashSet};

    /// (series text, labels, value, family type) of each sample line.
    type Parsed = (String, Vec<(String, String)>, f64, MetricType);

    fn samples(body: &[u8]) -> Vec<Parsed> {
        parse_all(body, Format::PrometheusText)
            .expect("valid exposition")
            .into_iter()
            .filter_map(|e| match e {
                Entry::Sample(s) => Some((
                    String::from_utf8_lossy(s.series).into_owned(),
                    s.labels
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.into_owned()))
                        .collect(),
                    s.value,
                    s.kind(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exposition_is_valid_with_exact_series_count_and_five_labels() {
        for n in [MIN_SERIES, 100, 1_000, 5_000] {
            let layout = Layout::new(n);
            assert_eq!(layout.series(), n);
            let mut st = TargetState::new(&layout, 7);
            let mut body = Vec::new();
            st.scrape(&layout, &mut body);
            let s = samples(&body);
            assert_eq!(s.len(), n, "series {n}");
            let distinct: HashSet<_> = s.iter().map(|x| x.0.clone()).collect();
            assert_eq!(distinct.len(), n, "series are distinct");
            for (series, labels, _, kind) in &s {
                assert_eq!(labels.len(), 5, "{series}");
                assert_ne!(*kind, MetricType::Unknown, "{series} has a TYPE");
                assert!(!series.starts_with("up") && !series.starts_with("scrape_"));
            }
        }
    }

    #[test]
    fn every_value_changes_and_sequence_counts_scrapes() {
        let layout = Layout::new(1_000);
        let mut st = TargetState::new(&layout, 3);
        let mut body = Vec::new();
        assert_eq!(st.scrape(&layout, &mut body), 1);
        let a = samples(&body);
        assert_eq!(st.scrape(&layout, &mut body), 2);
        let b = samples(&body);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.0, y.0);
            assert_ne!(x.2, y.2, "{} did not change", x.0);
            if x.3 == MetricType::Counter || x.3 == MetricType::Histogram {
                assert!(y.2 > x.2, "{} must grow", x.0);
            }
        }
        let seq = b
            .iter()
            .find(|x| x.0.starts_with(SEQUENCE_METRIC))
            .map(|x| x.2);
        assert_eq!(seq, Some(2.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let layout = Layout::new(1_000);
        let mut st = TargetState::new(&layout, 11);
        let mut body = Vec::new();
        for _ in 0..5 {
            st.scrape(&layout, &mut body);
        }
        // Per label set (without `le`): bucket values in order, and the count.
        let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<String, f64> = HashMap::new();
        for (series, labels, v, _) in samples(&body) {
            let key = |skip: &str| {
                labels
                    .iter()
                    .filter(|(k, _)| k != skip && k != "code")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if series.starts_with("http_request_duration_seconds_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone());
                let le = match le.as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(x) => x.parse().expect("numeric le"),
                    None => panic!("bucket without le: {series}"),
                };
                buckets.entry(key("le")).or_default().push((le, v));
            } else if series.starts_with("http_request_duration_seconds_count") {
                counts.insert(key("le"), v);
            }
        }
        assert!(!buckets.is_empty());
        for (k, b) in &buckets {
            assert_eq!(b.len(), BUCKETS.len() + 1, "{k}");
            for w in b.windows(2) {
                assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{k}: {w:?}");
            }
            assert_eq!(
                Some(&b[b.len() - 1].1),
                counts.get(k),
                "{k}: +Inf equals _count"
            );
        }
    }

    #[tokio::test]
    async fn served_over_http_with_distinct_ports_and_counts() {
        let t = Targets::start("127.0.0.1", 2, 50).await.expect("bind");
        assert_ne!(t.targets[0].addr, t.targets[1].addr);
        let addr = t.targets[1].addr.to_string();
        let body = tokio::task::spawn_blocking(move || {
            crate::http::request(
                "GET",
                &addr,
                "/metrics",
                b"",
                std::time::Duration::from_secs(5),
            )
        })
        .await
        .expect("join")
        .expect("scrape");
        assert_eq!(body.0, 200);
        assert_eq!(samples(body.1.as_bytes()).len(), 50);
        assert_eq!(t.served(), vec![0, 1]);
    }
}
