//! The scrape side's [`Storage`] on an instance's WAL.
//!
//! Each scrape gets a [`WalAppender`] that buffers its new series and samples; `commit` writes
//! them to the WAL as one Series and one Samples record (the WAL's own batching), then bumps a
//! commit counter the remote_write watchers wait on. New series are deduplicated by a 64-bit
//! hash of their labels (what the scrape cache forgets and finds again gets its old ref back);
//! the table keeps 16 bytes per series, not the labels (the WAL and the scrape cache have them).
//! Two different label sets with the same 64-bit hash would share a ref; at a million series
//! the chance is about 3 in 10^8.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::relabel::Labels;
use crate::scrape::appender::{AppendError, Appender, SeriesRef, Storage};
use crate::wal::labels::Labels as WalLabels;
use crate::wal::{Wal, WalError};

struct Inner {
    wal: Wal,
    by_hash: HashMap<u64, SeriesRef>,
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
/// dropped (`agent_wal_write_dropped_samples_total`), per instance.
#[derive(Debug, Clone, Default)]
pub struct WriteFailureCounters {
    pub failures: prometheus_client::metrics::counter::Counter,
    pub dropped_samples: prometheus_client::metrics::counter::Counter,
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
        self.lock().by_hash.retain(|_, r| !gone.contains(r));
    }
}

impl Storage for WalStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(WalAppender {
            storage: self,
            series: Vec::new(),
            samples: Vec::new(),
        })
    }
}

/// One scrape's writes.
pub struct WalAppender<'a> {
    storage: &'a WalStorage,
    series: Vec<(SeriesRef, WalLabels)>,
    samples: Vec<(SeriesRef, i64, f64)>,
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
            inner.wal.commit()
        })();
        if let Err(e) = &result {
            // Disk full or an I/O error: these samples cannot be made durable and are dropped
            // (counted); the segment goes back to the last commit so nothing torn stays on
            // disk, and the next commit (when space returns) appends cleanly.
            let dropped = match inner.wal.abort() {
                Ok(n) => n,
                Err(reset) => {
                    tracing::error!(instance = %self.storage.name, error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                    self.samples.len()
                }
            };
            self.storage.failures.failures.inc();
            self.storage.failures.dropped_samples.inc_by(dropped as u64);
            tracing::error!(instance = %self.storage.name, error = %e, dropped_samples = dropped,
                "WAL write failed; this scrape's samples are dropped, scraping continues");
        } else if let Some(max) = self.samples.iter().map(|s| s.1).max() {
            inner.newest_ms = inner.newest_ms.max(max);
        }
        drop(inner);
        self.series.clear();
        self.samples.clear();
        result.map_err(err)?;
        self.storage.commits.send_modify(|c| *c += 1);
        Ok(())
    }

    fn rollback(&mut self) {
        // Series refs handed out stay valid (the contract): log them without samples.
        self.samples.clear();
        if !self.series.is_empty() {
            let mut inner = self.storage.lock();
            let res = inner
                .wal
                .append_series(&self.series)
                .and_then(|()| inner.wal.commit());
            if let Err(e) = res {
                if let Err(reset) = inner.wal.abort() {
                    tracing::error!(instance = %self.storage.name, error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                }
                self.storage.failures.failures.inc();
                tracing::error!(instance = %self.storage.name, error = %e, "WAL write failed on rollback");
            }
            self.series.clear();
        }
    }
}
