//! The scrape side's [`Storage`] on an instance's WAL.
//!
//! Each scrape gets a [`WalAppender`] that buffers its new series and samples; `commit` writes
//! them to the WAL as one Series and one Samples record (the WAL's own batching), then bumps a
//! commit counter the remote_write watchers wait on. New series are deduplicated by a 64-bit
//! hash of their labels (what the scrape cache forgets and finds again gets its old ref back);
//! the table keeps 16 bytes per series, not the labels (the WAL and the scrape cache have them).
//!
//! Exemplars are always written to the WAL (as Prometheus in agent mode does, without a
//! feature flag): whether an endpoint sends them is its `send_exemplars`, decided when the
//! watcher reads them back. As the agent's `AppendExemplar`, labels with empty values are
//! removed, label sets longer than 128 runes (names plus values, Prometheus's
//! `ExemplarMaxLabelSetLength`) are dropped, and an exemplar equal to the last one written for
//! its series (same timestamp, value and labels: a target shows its latest exemplar on every
//! scrape until a new observation replaces it) is not written again. That costs 24 bytes per
//! series that has exemplars.
//! Two different label sets with the same 64-bit hash would share a ref; at a million series
//! the chance is about 3 in 10^8.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::relabel::Labels;
use crate::scrape::appender::{AppendError, Appender, SeriesRef, Storage};
use crate::wal::labels::Labels as WalLabels;
use crate::wal::{RefExemplar, Wal, WalError};

/// Prometheus's `exemplar.ExemplarMaxLabelSetLength`: runes of names and values together.
pub const EXEMPLAR_MAX_LABEL_SET_LENGTH: usize = 128;

/// The last exemplar written for a series: timestamp, value bits, label hash.
type LastExemplar = (i64, u64, u64);

struct Inner {
    wal: Wal,
    by_hash: HashMap<u64, SeriesRef>,
    /// Per series with exemplars, the last one written (for the duplicate check).
    last_exemplar: HashMap<SeriesRef, LastExemplar>,
    /// The newest sample timestamp written, for WAL truncation without remote_write.
    newest_ms: i64,
}

/// An instance's WAL as scrape storage.
pub struct WalStorage {
    inner: Mutex<Inner>,
    name: String,
    commits: watch::Sender<u64>,
    failures: WriteFailureCounters,
}

/// Counters of failed WAL writes (`agent_wal_write_failures_total`) and of the samples they
/// dropped (`agent_wal_write_dropped_samples_total`), per instance; and of the samples written
/// (`agent_wal_samples_appended_total`).
#[derive(Debug, Clone, Default)]
pub struct WriteFailureCounters {
    pub failures: prometheus_client::metrics::counter::Counter,
    pub dropped_samples: prometheus_client::metrics::counter::Counter,
    pub samples_appended: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for WalStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStorage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WalStorage {
    /// Wraps an opened WAL; `replayed` are the series [`Wal::open`] found in it, so a series
    /// scraped again after a restart keeps its ref.
    pub fn new(name: &str, wal: Wal, replayed: &[(SeriesRef, WalLabels)]) -> Self {
        let (commits, _) = watch::channel(0);
        let by_hash = replayed
            .iter()
            .map(|(r, l)| (Labels::from_pairs(l.iter()).hash(), *r))
            .collect();
        WalStorage {
            inner: Mutex::new(Inner {
                wal,
                by_hash,
                last_exemplar: HashMap::new(),
                newest_ms: i64::MIN,
            }),
            name: name.to_owned(),
            commits,
            failures: WriteFailureCounters::default(),
        }
    }

    /// Counts failed writes in `counters` (the instance's metric families).
    pub fn with_failure_counters(mut self, counters: WriteFailureCounters) -> Self {
        self.failures = counters;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified after every commit (the value counts commits).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Runs `f` on the WAL under the storage lock (truncation, sync).
    pub fn with_wal<T>(&self, f: impl FnOnce(&mut Wal) -> T) -> T {
        f(&mut self.lock().wal)
    }

    pub fn newest_timestamp(&self) -> Option<i64> {
        let n = self.lock().newest_ms;
        (n != i64::MIN).then_some(n)
    }

    pub fn series_count(&self) -> usize {
        self.lock().by_hash.len()
    }

    /// Forgets series the WAL garbage-collected, so a later scrape re-creates them.
    pub fn forget(&self, refs: &[SeriesRef]) {
        if refs.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<SeriesRef> = refs.iter().copied().collect();
        let mut inner = self.lock();
        inner.by_hash.retain(|_, r| !gone.contains(r));
        inner.last_exemplar.retain(|r, _| !gone.contains(r));
    }
}

impl Storage for WalStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(WalAppender {
            storage: self,
            series: Vec::new(),
            samples: Vec::new(),
            exemplars: Vec::new(),
        })
    }
}

/// One scrape's writes.
pub struct WalAppender<'a> {
    storage: &'a WalStorage,
    series: Vec<(SeriesRef, WalLabels)>,
    samples: Vec<(SeriesRef, i64, f64)>,
    exemplars: Vec<(RefExemplar, u64)>,
}

/// The exemplar's labels without empty values, or `None` when they are longer than
/// [`EXEMPLAR_MAX_LABEL_SET_LENGTH`] runes.
fn exemplar_labels(labels: &Labels) -> Option<WalLabels> {
    let mut runes = 0;
    for (n, v) in labels.iter() {
        if !v.is_empty() {
            runes += n.chars().count() + v.chars().count();
        }
    }
    (runes <= EXEMPLAR_MAX_LABEL_SET_LENGTH)
        .then(|| WalLabels::from_pairs(labels.iter().filter(|(_, v)| !v.is_empty())))
}

impl Appender for WalAppender<'_> {
    fn new_series(&mut self, labels: &Labels) -> SeriesRef {
        let hash = labels.hash();
        let mut inner = self.storage.lock();
        if let Some(&r) = inner.by_hash.get(&hash) {
            return r;
        }
        let r = inner.wal.alloc_ref();
        inner.by_hash.insert(hash, r);
        drop(inner);
        self.series.push((r, WalLabels::from_pairs(labels.iter())));
        r
    }

    fn append(&mut self, r: SeriesRef, t_ms: i64, v: f64) {
        self.samples.push((r, t_ms, v));
    }

    fn append_exemplar(&mut self, r: SeriesRef, labels: &Labels, t_ms: i64, v: f64) {
        let Some(wal_labels) = exemplar_labels(labels) else {
            tracing::debug!(
                series = r,
                "exemplar label set longer than 128 runes; dropped"
            );
            return;
        };
        self.exemplars.push((
            RefExemplar {
                series_ref: r,
                t: t_ms,
                v,
                labels: wal_labels,
            },
            labels.hash(),
        ));
    }

    fn commit(&mut self) -> Result<(), AppendError> {
        let err = |e: WalError| AppendError::Storage {
            storage: self.storage.name.clone(),
            message: e.to_string(),
        };
        let mut inner = self.storage.lock();
        let result = (|| {
            if !self.series.is_empty() {
                inner.wal.append_series(&self.series)?;
            }
            if !self.samples.is_empty() {
                inner.wal.append_samples(&self.samples)?;
            }
            if !self.exemplars.is_empty() {
                let g = &mut *inner;
                let last = &mut g.last_exemplar;
                let new: Vec<RefExemplar> = self
                    .exemplars
                    .drain(..)
                    .filter_map(|(e, hash)| {
                        let key = (e.t, e.v.to_bits(), hash);
                        (last.insert(e.series_ref, key) != Some(key)).then_some(e)
                    })
                    .collect();
                if !new.is_empty() {
                    g.wal.append_exemplars(&new)?;
                }
            }
            inner.wal.commit()
        })();
        if let Err(e) = &result {
            // Disk full or an I/O error: these samples cannot be made durable and are dropped
            // (counted); the segment goes back to the last commit so nothing torn stays on
            // disk, and the next commit (when space returns) appends cleanly.
            let dropped = match inner.wal.abort() {
                Ok(n) => n,
                Err(reset) => {
                    tracing::error!(error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                    self.samples.len()
                }
            };
            self.storage.failures.failures.inc();
            self.storage.failures.dropped_samples.inc_by(dropped as u64);
            tracing::error!(error = %e, dropped_samples = dropped,
                "WAL write failed; this scrape's samples are dropped, scraping continues");
        } else {
            self.storage
                .failures
                .samples_appended
                .inc_by(self.samples.len() as u64);
            if let Some(max) = self.samples.iter().map(|s| s.1).max() {
                inner.newest_ms = inner.newest_ms.max(max);
            }
        }
        drop(inner);
        self.series.clear();
        self.samples.clear();
        self.exemplars.clear();
        result.map_err(err)?;
        self.storage.commits.send_modify(|c| *c += 1);
        Ok(())
    }

    fn rollback(&mut self) {
        // Series refs handed out stay valid (the contract): log them without samples.
        self.samples.clear();
        self.exemplars.clear();
        if !self.series.is_empty() {
            let mut inner = self.storage.lock();
            let res = inner
                .wal
                .append_series(&self.series)
                .and_then(|()| inner.wal.commit());
            if let Err(e) = res {
                if let Err(reset) = inner.wal.abort() {
                    tracing::error!(error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                }
                self.storage.failures.failures.inc();
                tracing::error!(error = %e, "WAL write failed on rollback");
            }
            self.series.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::reader::{Reader, SegmentSource};
    use crate::wal::{record, segment, WalOptions};

    fn read_exemplars(dir: &std::path::Path) -> Vec<RefExemplar> {
        let segs = segment::list_segments(dir).unwrap();
        let mut r = Reader::new(
            segs.into_iter()
                .map(|index| SegmentSource {
                    index,
                    path: segment::segment_path(dir, index),
                })
                .collect(),
        );
        let mut out = Vec::new();
        while r.next_record().unwrap() {
            if record::record_type(r.record()) == Some(record::EXEMPLARS) {
                record::decode_exemplars(r.record(), &mut out).unwrap();
            }
        }
        out
    }

    #[test]
    fn exemplars_reach_the_wal_once_and_within_the_length_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let storage = WalStorage::new("i", wal, &[]);
        let series = Labels::from_pairs([("__name__", "rpc_seconds_bucket"), ("le", "0.1")]);
        let ex = Labels::from_pairs([("trace_id", "abc"), ("span_id", "")]);
        let long = Labels::from_pairs([("trace_id", "x".repeat(120).as_str()), ("abcdefghi", "")]);
        let too_long = Labels::from_pairs([("trace_id", "x".repeat(121).as_str())]);

        let mut app = storage.appender();
        let r = app.new_series(&series);
        app.append(r, 1_000, 3.0);
        app.append_exemplar(r, &ex, 990, 0.07);
        app.append_exemplar(r, &too_long, 995, 0.08);
        app.commit().unwrap();
        // The next scrape shows the same exemplar (not written again), then a new one, and an
        // exemplar of exactly 128 runes once the empty label is removed.
        let mut app = storage.appender();
        app.append(r, 2_000, 4.0);
        app.append_exemplar(r, &ex, 990, 0.07);
        app.commit().unwrap();
        let mut app = storage.appender();
        app.append(r, 3_000, 5.0);
        app.append_exemplar(r, &ex, 2_500, 0.09);
        app.append_exemplar(r, &long, 2_600, 0.01);
        app.commit().unwrap();
        // Rolled back: nothing.
        let mut app = storage.appender();
        app.append_exemplar(r, &ex, 3_500, 0.02);
        app.rollback();
        drop(app);
        storage.with_wal(|w| w.sync()).unwrap();

        let got = read_exemplars(dir.path());
        type View = (u64, i64, f64, Vec<(String, String)>);
        let view: Vec<View> = got
            .iter()
            .map(|e| {
                let l = e
                    .labels
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                (e.series_ref, e.t, e.v, l)
            })
            .collect();
        let l = |v: &str| vec![("trace_id".to_owned(), v.to_owned())];
        assert_eq!(
            view,
            vec![
                (r, 990, 0.07, l("abc")),
                (r, 2_500, 0.09, l("abc")),
                (r, 2_600, 0.01, l(&"x".repeat(120))),
            ]
        );
    }
}
