//! The remote-write receiver: decodes every request (snappy block, then a borrowing walk over
//! the `prometheus.WriteRequest` protobuf, [`crate::wire`]) and counts what arrived, so
//! delivery is checked rather than assumed.
//!
//! Accounting, per sample:
//! - a staleness marker (NaN with Prometheus's stale bits) is counted apart and otherwise
//!   ignored: scrapers write them when they stop, they are not scraped data;
//! - `up` and `scrape_*` series are the scraper's own ("auto") series: counted apart; the
//!   `scrape_duration_seconds` values are kept for the scrape-duration percentiles;
//! - every other sample is a target sample. Per series the sink keeps the newest timestamp:
//!   an equal timestamp is a duplicate (counted, not delivered twice), an older one is out of
//!   order (counted and delivered, as it cannot tell a resend from a late first send);
//! - target samples are grouped by `(instance, timestamp)`, i.e. by scrape; the
//!   `bench_scrape_sequence` sample of a group says which scrape number of that target it is.
//!   [`Sink::delivered`] then sums the groups whose scrape number lies in a window of scrape
//!   numbers recorded on the targets' side.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

use crate::targets::SEQUENCE_METRIC;
use crate::wire::{self, SeriesInfo};

/// Prometheus's staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// One scrape's samples as seen by the sink.
#[derive(Clone, Copy, Debug, Default)]
struct Group {
    samples: u64,
    seq: Option<u64>,
}

#[derive(Debug, Default)]
struct State_ {
    /// Hash of the sorted label set -> newest timestamp.
    series: HashMap<u64, i64>,
    instances: HashMap<String, u32>,
    groups: HashMap<(u32, i64), Group>,
    /// `(timestamp, seconds)` of every `scrape_duration_seconds` sample.
    durations: Vec<(i64, f64)>,
    counts: Counts,
}

impl State_ {
    fn count(&mut self, info: SeriesInfo<'_>, samples: &[(f64, i64)]) {
        let name = info.name;
        let auto = name == "up" || name.starts_with("scrape_");
        for &(value, t) in samples {
            if value.to_bits() == STALE_NAN_BITS {
                self.counts.stale_markers += 1;
                continue;
            }
            if auto {
                self.counts.auto_samples += 1;
                if name == "scrape_duration_seconds" {
                    self.durations.push((t, value));
                }
                continue;
            }
            match self.series.get_mut(&info.key) {
                Some(last) if t == *last => {
                    self.counts.duplicates += 1;
                    continue;
                }
                Some(last) if t < *last => self.counts.out_of_order += 1,
                Some(last) => *last = t,
                None => {
                    self.series.insert(info.key, t);
                    self.counts.series += 1;
                }
            }
            self.counts.target_samples += 1;
            let next = self.instances.len() as u32;
            let inst = match self.instances.get(info.instance) {
                Some(&i) => i,
                None => {
                    self.instances.insert(info.instance.to_owned(), next);
                    next
                }
            };
            let g = self.groups.entry((inst, t)).or_default();
            g.samples += 1;
            if name == SEQUENCE_METRIC && value >= 0.0 && value.fract() == 0.0 {
                g.seq = Some(value as u64);
            }
        }
    }
}

/// Why a remote-write body was refused.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("snappy block decompression failed: {0}")]
    Snappy(snap::Error),
    #[error("invalid prometheus.WriteRequest protobuf: {0}")]
    Wire(#[from] wire::WireError),
}

/// Totals since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub bytes: u64,
    pub decode_errors: u64,
    pub target_samples: u64,
    pub auto_samples: u64,
    pub stale_markers: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Distinct target series seen.
    pub series: u64,
}

/// What arrived for the scrapes of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Target samples whose scrape number is in the window.
    pub samples: u64,
    /// Scrapes (groups) of the window that arrived at all.
    pub scrapes: u64,
}

/// The receiver's state; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Sink {
    state: Mutex<State_>,
}

impl Sink {
    pub fn new() -> Sink {
        Sink::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        // A poisoned lock means a panic mid-count; the counts are still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything (between scraper runs).
    pub fn reset(&self) {
        *self.lock() = State_::default();
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Decodes one HTTP body (snappy block, then a walk over the protobuf; see
    /// [`crate::wire`]) and counts it. A body that does not decode counts as a decode error
    /// and nothing of it is counted.
    pub fn ingest_body(&self, body: &[u8]) -> Result<(), SinkError> {
        let decoded = snap::raw::Decoder::new()
            .decompress_vec(body)
            .map_err(SinkError::Snappy)
            .and_then(|raw| {
                // Validate the whole message first so a bad body is not half counted.
                let mut scratch = Vec::new();
                wire::for_each_series(&raw, &mut scratch, |_, _| {})?;
                Ok(raw)
            });
        let mut st = self.lock();
        st.counts.requests += 1;
        let raw = match decoded {
            Ok(raw) => raw,
            Err(e) => {
                st.counts.decode_errors += 1;
                return Err(e);
            }
        };
        st.counts.bytes += body.len() as u64;
        let st = &mut *st;
        let mut scratch = Vec::new();
        wire::for_each_series(&raw, &mut scratch, |info, samples| st.count(info, samples))?;
        Ok(())
    }

    /// Target samples of the scrapes numbered `(from, to]` of each instance (`instance` ->
    /// `(from, to)`, numbers as the targets count them).
    pub fn delivered(&self, window: &HashMap<String, (u64, u64)>) -> Delivery {
        let st = self.lock();
        let mut by_index = vec![None; st.instances.len()];
        for (inst, range) in window {
            if let Some(&i) = st.instances.get(inst) {
                by_index[i as usize] = Some(*range);
            }
        }
        let mut d = Delivery::default();
        for ((i, _), g) in &st.groups {
            let Some(Some((from, to))) = by_index.get(*i as usize) else {
                continue;
            };
            if g.seq.is_some_and(|s| s > *from && s <= *to) {
                d.samples += g.samples;
                d.scrapes += 1;
            }
        }
        d
    }

    /// Quantile `q` (0..=1) of the `scrape_duration_seconds` values with timestamps in
    /// `[from_ms, to_ms)`; `None` without any.
    pub fn scrape_duration_quantile(&self, from_ms: i64, to_ms: i64, q: f64) -> Option<f64> {
        let st = self.lock();
        let mut v: Vec<f64> = st
            .durations
            .iter()
            .filter(|(t, _)| *t >= from_ms && *t < to_ms)
            .map(|&(_, d)| d)
            .collect();
        quantile(&mut v, q)
    }
}

/// Nearest-rank quantile; sorts `v`.
pub fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The axum handler for `POST /api/v1/write`: 204 when decoded, 400 (not retried by
/// scrapers) when the body is not a remote-write message.
pub async fn write_handler(
    State(sink): State<std::sync::Arc<Sink>>,
    body: Bytes,
) -> (StatusCode, String) {
    match sink.ingest_body(&body) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The sink's router: `POST /api/v1/write`, `GET /stats` (counts as JSON), `POST /reset`.
pub fn router(sink: std::sync::Arc<Sink>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/write", post(write_handler))
        .route(
            "/stats",
            get(|State(s): State<std::sync::Arc<Sink>>| async move { axum::Json(s.counts()) }),
        )
        .route(
            "/reset",
            post(|State(s): State<std::sync::Arc<Sink>>| async move {
                s.reset();
                StatusCode::NO_CONTENT
            }),
        )
        // Remote-write bodies are snappy-compressed batches; large ones are legitimate.
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::remote_write::proto::{Label, Sample, TimeSeries, WriteRequest};
    use prost::Message;

    fn series(name: &str, instance: &str, extra: &str, samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![
                Label::new("__name__", name),
                Label::new("instance", instance),
                Label::new("job", "bench"),
                Label::new("pod", extra),
            ],
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            exemplars: vec![],
        }
    }

    fn body(ts: Vec<TimeSeries>) -> Vec<u8> {
        let raw = WriteRequest {
            timeseries: ts,
            metadata: vec![],
        }
        .encode_to_vec();
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .expect("snappy")
    }

    #[test]
    fn decodes_and_counts_samples_duplicates_auto_and_stale() {
        let sink = Sink::new();
        let stale = f64::from_bits(STALE_NAN_BITS);
        sink.ingest_body(&body(vec![
            series(
                "http_requests_total",
                "t1",
                "a",
                &[(1000, 1.0), (2000, 2.0)],
            ),
            series("http_requests_total", "t1", "b", &[(1000, 5.0)]),
            series(SEQUENCE_METRIC, "t1", "a", &[(1000, 1.0), (2000, 2.0)]),
            series("up", "t1", "", &[(1000, 1.0)]),
            series("scrape_duration_seconds", "t1", "", &[(1000, 0.25)]),
        ]))
        .expect("decode");
        // A resend of one sample, an older one, and a staleness marker.
        sink.ingest_body(&body(vec![
            series(
                "http_requests_total",
                "t1",
                "a",
                &[(2000, 2.0), (1500, 1.5)],
            ),
            series("http_requests_total", "t1", "b", &[(3000, stale)]),
        ]))
        .expect("decode");
        let c = sink.counts();
        assert_eq!(
            c,
            Counts {
                requests: 2,
                bytes: c.bytes,
                decode_errors: 0,
                target_samples: 6,
                auto_samples: 2,
                stale_markers: 1,
                duplicates: 1,
                out_of_order: 1,
                series: 3,
            }
        );
        assert!(c.bytes > 0);
        // Scrape 1 of t1 is the group at 1000 ms: two counters and the sequence sample.
        let w = HashMap::from([("t1".to_owned(), (0, 1))]);
        assert_eq!(
            sink.delivered(&w),
            Delivery {
                samples: 3,
                scrapes: 1
            }
        );
        let w = HashMap::from([("t1".to_owned(), (0, 2)), ("t9".to_owned(), (0, 5))]);
        assert_eq!(sink.delivered(&w).samples, 5);
        assert_eq!(sink.scrape_duration_quantile(0, 5000, 0.99), Some(0.25));
        assert_eq!(sink.scrape_duration_quantile(2000, 5000, 0.99), None);
        sink.reset();
        assert_eq!(sink.counts(), Counts::default());
    }

    #[test]
    fn rejects_bodies_that_are_not_snappy_protobuf() {
        let sink = Sink::new();
        assert!(matches!(
            sink.ingest_body(b"not snappy at all"),
            Err(SinkError::Snappy(_))
        ));
        let junk = snap::raw::Encoder::new()
            .compress_vec(&[0xff, 0xff, 0xff])
            .expect("snappy");
        assert!(matches!(sink.ingest_body(&junk), Err(SinkError::Wire(_))));
        assert_eq!(sink.counts().decode_errors, 2);
    }

    #[tokio::test]
    async fn http_write_endpoint_counts_and_answers_204() {
        let sink = std::sync::Arc::new(Sink::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let app = router(sink.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let b = body(vec![series("g", "t", "x", &[(1, 1.0), (2, 2.0)])]);
        let (status, _) = tokio::task::spawn_blocking(move || {
            crate::http::request(
                "POST",
                &addr,
                "/api/v1/write",
                &b,
                std::time::Duration::from_secs(5),
            )
        })
        .await
        .expect("join")
        .expect("post");
        assert_eq!(status, 204);
        assert_eq!(sink.counts().target_samples, 2);
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut v, 1.0), Some(100.0));
        assert_eq!(quantile(&mut [3.0], 0.5), Some(3.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
