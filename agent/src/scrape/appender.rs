//! The interface between the scrape loops and storage (the WAL, later), and an in-memory
//! implementation for tests.
//!
//! A scrape writes through one [`Appender`] obtained from a [`Storage`]: new series are
//! registered once with [`Appender::new_series`], which hands back a [`SeriesRef`] and the
//! storage's shared copy of the labels; the scrape loop caches both and uses the ref for every
//! later sample of that series; the batch ends with exactly one of [`Appender::commit`] or
//! [`Appender::rollback`].
//!
//! Contract for implementations:
//! * A ref returned by `new_series` stays valid after the batch ends, whether it was committed
//!   or rolled back (Prometheus's head behaves the same: series creation is not transactional).
//!   The scrape loop keeps refs in its cache across scrapes and forgets them when a series has
//!   not been seen in a successful scrape.
//! * Calling `new_series` again with labels the storage already knows returns the existing
//!   ref and the storage's copy of the labels (equal labels, not equal hashes).
//! * A storage may forget series that received no sample for a while (garbage collection);
//!   it then bumps [`Storage::generation`], and a cache of refs drops the refs
//!   [`Storage::retain_live`] no longer keeps, so their series are registered again.
//! * Samples and exemplars become visible only on `commit`.

use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

pub use crate::labels::SeriesRef;
use crate::labels::{Hasher, Labels};

/// The bit pattern of Prometheus's staleness marker (`value.StaleNaN`). It is a NaN that no
/// parser produces (a NaN in a body is stored as `0x7ff8000000000001`), so readers can tell
/// "this series disappeared" from "this series is NaN".
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is a staleness marker (compared by bits; NaN never equals itself).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Why a batch could not be committed.
#[derive(Debug, Error)]
pub enum AppendError {
    /// The storage failed to persist the batch (e.g. a WAL write error).
    #[error("storage {storage}: {message}")]
    Storage { storage: String, message: String },
}

/// One batch of writes (one scrape). See the module docs for the contract.
pub trait Appender: Send {
    /// Registers a series and returns its ref and the storage's copy of its labels (share
    /// it instead of keeping `labels`). Called once per series the scrape loop has not cached
    /// yet.
    fn new_series(&mut self, labels: Labels) -> (SeriesRef, Labels);

    /// Adds a sample to series `r` (a ref this storage returned).
    fn append(&mut self, r: SeriesRef, t_ms: i64, v: f64);

    /// Adds an exemplar to series `r`. Storages without exemplar support ignore it.
    fn append_exemplar(&mut self, r: SeriesRef, labels: &Labels, t_ms: i64, v: f64) {
        let _ = (r, labels, t_ms, v);
    }

    /// Makes the batch durable and visible.
    fn commit(&mut self) -> Result<(), AppendError>;

    /// Discards the batch's samples and exemplars.
    fn rollback(&mut self);
}

/// Hands out one appender per scrape. Shared by all scrape loops of an instance.
pub trait Storage: Send + Sync {
    fn appender(&self) -> Box<dyn Appender + '_>;

    /// The hasher of the storage's label tables, for the scrape caches' own tables.
    fn hasher(&self) -> Hasher {
        Hasher::random()
    }

    /// Changes whenever the storage forgot series (see the module docs).
    fn generation(&self) -> u64 {
        0
    }

    /// Keeps in `refs` only the refs the storage still has.
    fn retain_live(&self, refs: &mut Vec<SeriesRef>) {
        let _ = refs;
    }
}

/// A committed sample as recorded by [`MemoryStorage`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordedSample {
    pub series: SeriesRef,
    pub t_ms: i64,
    pub v: f64,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Index = ref.
    series: Vec<Labels>,
    by_labels: std::collections::HashMap<Labels, SeriesRef>,
    samples: Vec<RecordedSample>,
    exemplars: Vec<(SeriesRef, Labels, i64, f64)>,
    commits: u64,
    rollbacks: u64,
    new_series_calls: u64,
}

/// A [`Storage`] that keeps everything in memory, for tests: series are deduplicated by labels
/// (as a real storage would), committed samples are kept in commit order.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        MemoryStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // A test that panicked while holding the lock already failed; keep reading.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The labels of series `r`.
    pub fn labels(&self, r: SeriesRef) -> Option<Labels> {
        let i = usize::try_from(r.0).ok()?;
        self.lock().series.get(i).cloned()
    }

    /// Every series registered so far, by ref.
    pub fn series(&self) -> Vec<Labels> {
        self.lock().series.clone()
    }

    /// All committed samples with their series labels, in commit order.
    pub fn samples(&self) -> Vec<(Labels, i64, f64)> {
        let g = self.lock();
        g.samples
            .iter()
            .map(|s| (g.series[s.series.0 as usize].clone(), s.t_ms, s.v))
            .collect()
    }

    /// Committed samples of the series with exactly these labels.
    pub fn samples_of(&self, labels: &Labels) -> Vec<(i64, f64)> {
        let g = self.lock();
        let Some(&r) = g.by_labels.get(labels) else {
            return Vec::new();
        };
        g.samples
            .iter()
            .filter(|s| s.series == r)
            .map(|s| (s.t_ms, s.v))
            .collect()
    }

    /// Committed samples of every series named `name`, with their labels.
    pub fn samples_named(&self, name: &str) -> Vec<(Labels, i64, f64)> {
        self.samples()
            .into_iter()
            .filter(|(l, _, _)| l.get("__name__") == Some(name))
            .collect()
    }

    /// Committed exemplars: series ref, exemplar labels, timestamp, value.
    pub fn exemplars(&self) -> Vec<(SeriesRef, Labels, i64, f64)> {
        self.lock().exemplars.clone()
    }

    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    pub fn rollbacks(&self) -> u64 {
        self.lock().rollbacks
    }

    /// How often [`Appender::new_series`] was called (including for known labels).
    pub fn new_series_calls(&self) -> u64 {
        self.lock().new_series_calls
    }
}

struct MemoryAppender<'s> {
    storage: &'s MemoryStorage,
    samples: Vec<RecordedSample>,
    exemplars: Vec<(SeriesRef, Labels, i64, f64)>,
}

impl Storage for MemoryStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(MemoryAppender {
            storage: self,
            samples: Vec::new(),
            exemplars: Vec::new(),
        })
    }
}

impl Appender for MemoryAppender<'_> {
    fn new_series(&mut self, labels: Labels) -> (SeriesRef, Labels) {
        let mut g = self.storage.lock();
        g.new_series_calls += 1;
        if let Some(&r) = g.by_labels.get(&labels) {
            return (r, g.series[r.0 as usize].clone());
        }
        let r = SeriesRef(g.series.len() as u64);
        g.series.push(labels.clone());
        g.by_labels.insert(labels.clone(), r);
        (r, labels)
    }

    fn append(&mut self, r: SeriesRef, t_ms: i64, v: f64) {
        self.samples.push(RecordedSample { series: r, t_ms, v });
    }

    fn append_exemplar(&mut self, r: SeriesRef, labels: &Labels, t_ms: i64, v: f64) {
        self.exemplars.push((r, labels.clone(), t_ms, v));
    }

    fn commit(&mut self) -> Result<(), AppendError> {
        let mut g = self.storage.lock();
        g.samples.append(&mut self.samples);
        g.exemplars.append(&mut self.exemplars);
        g.commits += 1;
        Ok(())
    }

    fn rollback(&mut self) {
        self.samples.clear();
        self.exemplars.clear();
        self.storage.lock().rollbacks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_marker_is_distinct_from_parsed_nan() {
        assert!(is_stale_nan(stale_nan()));
        assert!(stale_nan().is_nan());
        assert!(!is_stale_nan(f64::from_bits(
            crate::scrape::parse::NORMAL_NAN_BITS
        )));
        assert!(!is_stale_nan(f64::NAN));
    }

    #[test]
    fn memory_storage_commits_and_rolls_back() {
        let s = MemoryStorage::new();
        let l = Labels::from_pairs([("__name__", "a"), ("x", "1")]);
        let mut app = s.appender();
        let (r, _) = app.new_series(l.clone());
        app.append(r, 1, 1.0);
        app.rollback();
        drop(app);
        assert!(s.samples().is_empty());
        let mut app = s.appender();
        assert_eq!(app.new_series(l.clone()).0, r, "same labels, same ref");
        app.append(r, 2, 2.0);
        app.commit().unwrap();
        drop(app);
        assert_eq!(s.samples_of(&l), vec![(2, 2.0)]);
        assert_eq!((s.commits(), s.rollbacks()), (1, 1));
        assert_eq!(s.labels(r), Some(l));
    }
}
