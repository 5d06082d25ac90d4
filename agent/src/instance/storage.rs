//! The scrape side's [`Storage`] on an instance's WAL, and the instance's one series table.
//!
//! **The series table** ([`SeriesTable`]) holds every active series of the instance once: its
//! [`Labels`] (shared with the scrape caches and the remote_write tables, see
//! [`crate::labels`]), its ref and the timestamp of its newest sample. It is indexed by labels
//! (a hash table of slot numbers: the hash finds candidates, the labels' bytes are compared,
//! so two label sets with an equal hash are two series) and by ref. Series that received no
//! sample since the truncation point are garbage collected at each WAL truncation, as
//! Prometheus's agent does: they stay in `deleted` (ref -> newest segment that refers to them)
//! until a checkpoint has passed that segment, which is what the checkpoint's keep rule reads.
//!
//! **Writes.** Each scrape gets a [`WalAppender`] that buffers its new series and samples;
//! `commit` writes them to the WAL as one Series and one Samples record (the WAL's own
//! batching), then bumps a commit counter the remote_write watchers wait on. The table and
//! the WAL have separate mutexes, and no lock is held while the other is taken.
//!
//! Exemplars are always written to the WAL (as Prometheus in agent mode does, without a
//! feature flag): whether an endpoint sends them is its `send_exemplars`, decided when the
//! watcher reads them back. As the agent's `AppendExemplar`, labels with empty values are
//! removed, label sets longer than 128 runes (names plus values, Prometheus's
//! `ExemplarMaxLabelSetLength`) are dropped, and an exemplar equal to the last one written for
//! its series (same timestamp, value and labels: a target shows its latest exemplar on every
//! scrape until a new observation replaces it) is not written again.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;
use tokio::sync::watch;

use crate::labels::{
    DenseRefMap, Hasher, Headroom, Labels, LabelsRef, RefMap, SeriesRef, SharedLabels,
};
use crate::scrape::appender::{AppendError, Appender, Storage};
use crate::wal::{
    CheckpointStats, Cut, DroppedSeries, RefExemplar, RefSample, ReplayState, SyncHandle, Wal,
    WalError,
};

/// While WAL writes keep failing (a full disk), at most one log line per interval.
pub const FAILURE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Prometheus's `exemplar.ExemplarMaxLabelSetLength`: runes of names and values together.
pub const EXEMPLAR_MAX_LABEL_SET_LENGTH: usize = 128;

/// One series of the table. A free slot has no labels.
struct Slot {
    labels: Option<Labels>,
    r: SeriesRef,
    /// Timestamp (ms) of the newest sample, or for a series without a sample yet
    /// [`pending`]`(the garbage collection round it was created in)`.
    newest: i64,
}

/// A slot number in `by_ref`, stored plus one so that an entry of the array (`Option<SlotNo>`,
/// empty or not) is 4 bytes instead of 8.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct SlotNo(std::num::NonZeroU32);

impl SlotNo {
    fn new(i: u32) -> Self {
        // Slot numbers index a Vec of 24-byte slots: far below u32::MAX.
        debug_assert!(i < u32::MAX, "slot number {i} out of range");
        SlotNo(std::num::NonZeroU32::MIN.saturating_add(i))
    }

    fn get(self) -> u32 {
        self.0.get() - 1
    }
}

/// `newest` of a series without samples: far below any real timestamp, counting the garbage
/// collection rounds, so that a series created just before a collection (its samples not yet
/// committed) survives it, and one that never got a sample goes at the next.
const PENDING: i64 = i64::MIN;

fn pending(round: u64) -> i64 {
    PENDING + (round.min(1 << 60) as i64)
}

fn is_pending(newest: i64) -> bool {
    newest < PENDING + (1 << 61)
}

/// The hash of the labels of the slot a `by_labels` entry names (for its rehashes).
fn slot_hash(slots: &[Slot], hasher: Hasher) -> impl Fn(&u32) -> u64 + '_ {
    move |&j| {
        slots[j as usize]
            .labels
            .as_ref()
            .map_or(0, |l| hasher.hash(l.as_view()))
    }
}

/// The instance's series (see the module docs).
pub struct SeriesTable {
    hasher: Hasher,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slot numbers by labels; the newest ref of a label set (a WAL may hold older ones).
    by_labels: HashTable<u32>,
    /// `by_labels`'s size under churn (see [`Headroom`]).
    by_labels_room: Headroom,
    /// Slot numbers by ref: looked up once per sample (`touch`), so an array over the refs
    /// (handed out in order: a scrape's samples walk it in order), not a hash table.
    by_ref: DenseRefMap<SlotNo>,
    /// Garbage-collected refs -> the newest segment that refers to them.
    deleted: RefMap<u32>,
    next_ref: u64,
    /// Garbage collections so far.
    gc_round: u64,
}

impl SeriesTable {
    /// An empty table handing out refs from 1.
    pub fn new(hasher: Hasher) -> Self {
        SeriesTable {
            hasher,
            slots: Vec::new(),
            free: Vec::new(),
            by_labels: HashTable::new(),
            by_labels_room: Headroom::default(),
            by_ref: DenseRefMap::default(),
            deleted: RefMap::default(),
            next_ref: 1,
            gc_round: 0,
        }
    }

    /// The table of what [`Wal::open`] replayed: every series keeps its ref; refs continue
    /// after the highest one; a label set logged under several refs (re-created after a
    /// garbage collection) is found under the newest.
    pub fn from_replay(hasher: Hasher, replay: &ReplayState) -> Self {
        let mut t = SeriesTable::new(hasher);
        t.next_ref = replay.next_ref.0.max(1);
        for (r, labels) in &replay.series {
            let newest = replay.newest.get(r).copied().unwrap_or(pending(0));
            // Sorted by ref: a later insert of equal labels takes over the labels index.
            t.insert(*r, labels.clone(), newest);
        }
        t
    }

    pub fn hasher(&self) -> Hasher {
        self.hasher
    }

    /// Active series.
    pub fn len(&self) -> usize {
        self.by_ref.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ref.is_empty()
    }

    fn find(&self, labels: LabelsRef<'_>, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.by_labels
            .find(hash, |&i| {
                slots[i as usize]
                    .labels
                    .as_ref()
                    .is_some_and(|l| *l == labels)
            })
            .copied()
    }

    fn insert(&mut self, r: SeriesRef, labels: Labels, newest: i64) -> u32 {
        let hash = self.hasher.hash(labels.as_view());
        let slot = Slot {
            labels: Some(labels),
            r,
            newest,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(old) = self.by_ref.insert(r, SlotNo::new(i)) {
            // The same ref logged twice (a retried Series record): one slot per ref.
            self.remove_slot(old.get());
        }
        let (slots, hasher) = (&self.slots, self.hasher);
        let labels = slots[i as usize].labels.as_ref().map(Labels::as_view);
        let same =
            |&j: &u32| slots[j as usize].labels.as_ref().map(Labels::as_view) == labels && j != i;
        match self.by_labels.find_entry(hash, same) {
            Ok(mut e) => *e.get_mut() = i,
            Err(_) => {
                self.by_labels
                    .insert_unique(hash, i, slot_hash(slots, hasher));
            }
        }
        i
    }

    /// Frees slot `i` (its ref must already be out of `by_ref`, or about to be replaced).
    fn remove_slot(&mut self, i: u32) {
        let Some(labels) = self.slots[i as usize].labels.take() else {
            return;
        };
        let hash = self.hasher.hash(labels.as_view());
        if let Ok(e) = self.by_labels.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.free.push(i);
    }

    /// The series with exactly `labels`, created (with a new ref) if the table has none.
    /// Returns its ref, the table's shared copy of the labels, and whether it is new.
    pub fn get_or_create(&mut self, labels: Labels) -> (SeriesRef, Labels, bool) {
        let hash = self.hasher.hash(labels.as_view());
        if let Some(i) = self.find(labels.as_view(), hash) {
            let s = &self.slots[i as usize];
            if let Some(l) = &s.labels {
                return (s.r, l.clone(), false);
            }
        }
        let r = SeriesRef(self.next_ref);
        self.next_ref += 1;
        let shared = labels.clone();
        self.insert(r, labels, pending(self.gc_round));
        (r, shared, true)
    }

    /// Records a sample of `r` at `t`, written to segment `segment`.
    #[inline]
    pub fn touch(&mut self, r: SeriesRef, t: i64, segment: u32) {
        match self.by_ref.get(r) {
            Some(&i) => {
                let s = &mut self.slots[i.get() as usize];
                if t > s.newest || is_pending(s.newest) {
                    s.newest = t;
                }
            }
            // Collected while a scrape still held the ref: the checkpoint must keep its Series
            // record as long as segments with its samples exist.
            None => {
                if let Some(seg) = self.deleted.get_mut(&r) {
                    *seg = (*seg).max(segment);
                }
            }
        }
    }

    /// Garbage collection: forgets the series whose newest sample is older than `mint`, and
    /// those without a sample since before the previous collection (`segment` is the one
    /// being written). Returns how many.
    pub fn gc(&mut self, mint: i64, segment: u32) -> usize {
        // The live count peaks here, before the collection: room for the tombstones of the
        // series it removes now and later (see `Headroom`).
        self.by_labels_room
            .before_removals(&mut self.by_labels, slot_hash(&self.slots, self.hasher));
        let mut gone = Vec::new();
        let recent = pending(self.gc_round);
        self.gc_round += 1;
        let slots = &self.slots;
        self.by_ref.retain(|r, &mut i| {
            let i = i.get();
            let newest = slots[i as usize].newest;
            let keep = if is_pending(newest) {
                newest >= recent
            } else {
                newest >= mint
            };
            if !keep {
                gone.push((r, i));
            }
            keep
        });
        for &(r, i) in &gone {
            self.remove_slot(i);
            self.deleted.insert(r, segment);
        }
        self.by_labels_room
            .after_removals(&mut self.by_labels, slot_hash(&self.slots, self.hasher));
        gone.len()
    }

    /// The refs checkpoint `cp` must drop: collected series whose newest segment is at or
    /// before it (no later record refers to them).
    pub fn dropped_at(&self, cp: u32) -> RefMap<()> {
        self.deleted
            .iter()
            .filter(|(_, &seg)| seg <= cp)
            .map(|(r, _)| (*r, ()))
            .collect()
    }

    /// Forgets the collected series checkpoint `cp` dropped.
    pub fn checkpointed(&mut self, cp: u32) {
        self.deleted.retain(|_, seg| *seg > cp);
    }

    /// Heap bytes of the table itself (not the labels, which are shared).
    pub fn heap_bytes(&self) -> usize {
        fn hashbrown(cap: usize, entry: usize) -> usize {
            if cap == 0 {
                return 0;
            }
            let buckets = if cap < 8 {
                (cap + 1).next_power_of_two()
            } else {
                (cap * 8 / 7).next_power_of_two()
            };
            buckets * (entry + 1) + 16
        }
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.free.capacity() * 4
            + hashbrown(self.by_labels.capacity(), 4)
            + self.by_ref.heap_bytes()
            + hashbrown(self.deleted.capacity(), 16)
    }
}

impl SharedLabels for Mutex<SeriesTable> {
    fn shared(&self, r: SeriesRef, labels: LabelsRef<'_>) -> Option<Labels> {
        let t = self.lock().unwrap_or_else(|e| e.into_inner());
        let &i = t.by_ref.get(r)?;
        t.slots[i.get() as usize]
            .labels
            .as_ref()
            .filter(|l| **l == labels)
            .cloned()
    }
}

/// The last exemplar written for a series: timestamp, value bits, labels.
type LastExemplar = (i64, u64, Labels);

/// The WAL and what is written with it.
struct Log {
    wal: Wal,
    /// Per series with exemplars, the last one written (for the duplicate check).
    last_exemplar: RefMap<LastExemplar>,
    failures: FailureLog,
}

/// Rate-limited logging of failed WAL writes: a full disk fails every commit of every target,
/// so the first failure is logged at once, then at most one summary per
/// [`FAILURE_LOG_INTERVAL`] with the count, and one line when writes succeed again.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failed commits since writes last succeeded, and the samples they dropped.
    failures: u64,
    dropped: u64,
    /// Failed commits (and their dropped samples) not in a line yet.
    unlogged: u64,
    unlogged_dropped: u64,
    last_line: Option<tokio::time::Instant>,
}

impl FailureLog {
    fn failed(&mut self, error: &WalError, dropped: usize, kept: usize) {
        let now = tokio::time::Instant::now();
        self.failures += 1;
        self.dropped += dropped as u64;
        match self.last_line {
            Some(at) if now.duration_since(at) < FAILURE_LOG_INTERVAL => {
                self.unlogged += 1;
                self.unlogged_dropped += dropped as u64;
            }
            Some(at) => {
                tracing::error!(error = %error, failures = self.unlogged + 1,
                    dropped_samples = self.unlogged_dropped + dropped as u64,
                    seconds = now.duration_since(at).as_secs(),
                    "WAL writes still failing; the samples of the failed commits are dropped, scraping continues");
                self.unlogged = 0;
                self.unlogged_dropped = 0;
                self.last_line = Some(now);
            }
            None => {
                tracing::error!(error = %error, dropped_samples = dropped, kept_samples = kept,
                    "WAL write failed; this scrape's samples are dropped, scraping continues (further failures are summarised every 30s)");
                self.last_line = Some(now);
            }
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                failures = self.failures,
                dropped_samples = self.dropped,
                "WAL writes succeed again"
            );
            *self = FailureLog::default();
        }
    }
}

/// An instance's WAL as scrape storage.
pub struct WalStorage {
    table: Arc<Mutex<SeriesTable>>,
    log: Mutex<Log>,
    /// The WAL's disk thread, asked for fsyncs without taking `log`.
    sync: SyncHandle,
    /// A truncation is running (they do not overlap; commits go on meanwhile).
    truncating: AtomicBool,
    hasher: Hasher,
    name: String,
    commits: watch::Sender<u64>,
    failures: WriteFailureCounters,
    /// Bumped when garbage collection forgot series (see [`Storage::generation`]).
    generation: AtomicU64,
    /// The newest sample timestamp committed (`i64::MIN`: none yet), for the remote_write
    /// queues' `highest_timestamp_in`.
    newest_ms: AtomicI64,
    /// The last event of the checkpoints' dropped series, for the WAL's readers.
    dropped: Mutex<Arc<DroppedSeries>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of these states is complete before its lock is released; a panic while one
    // is held cannot leave them half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WalStorage {
    /// Wraps an opened WAL and the series [`Wal::open`] replayed from it (a series scraped
    /// again after a restart keeps its ref), with a random-seed [`Hasher`].
    pub fn new(name: &str, wal: Wal, replay: &ReplayState) -> Self {
        WalStorage::with_hasher(name, wal, replay, Hasher::random())
    }

    /// [`WalStorage::new`] with the given hasher (tests inject a colliding one).
    pub fn with_hasher(name: &str, wal: Wal, replay: &ReplayState, hasher: Hasher) -> Self {
        let (commits, _) = watch::channel(0);
        let table = SeriesTable::from_replay(hasher, replay);
        WalStorage {
            table: Arc::new(Mutex::new(table)),
            sync: wal.sync_handle(),
            truncating: AtomicBool::new(false),
            log: Mutex::new(Log {
                wal,
                last_exemplar: RefMap::default(),
                failures: FailureLog::default(),
            }),
            hasher,
            name: name.to_owned(),
            commits,
            failures: WriteFailureCounters::default(),
            generation: AtomicU64::new(0),
            newest_ms: AtomicI64::new(i64::MIN),
            dropped: Mutex::new(Arc::default()),
        }
    }

    /// Counts failed writes in `counters` (the instance's metric families).
    pub fn with_failure_counters(mut self, counters: WriteFailureCounters) -> Self {
        self.failures = counters;
        self
    }

    /// Notified after every commit (the value counts commits).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// The series table, as the source of shared labels for the WAL's readers.
    pub fn shared_labels(&self) -> Arc<dyn SharedLabels> {
        self.table.clone()
    }

    /// fsyncs what was committed, on the WAL's disk thread; blocks until done (not for async
    /// workers: see [`sync_async`](Self::sync_async)). Commits go on meanwhile.
    pub fn sync(&self) -> Result<(), WalError> {
        self.sync.sync_blocking()
    }

    /// [`sync`](Self::sync) for async code.
    pub async fn sync_async(&self) -> Result<(), WalError> {
        self.sync.sync().await
    }

    /// The newest sample timestamp committed since the storage was opened.
    pub fn newest_timestamp(&self) -> Option<i64> {
        let n = self.newest_ms.load(Ordering::Acquire);
        (n != i64::MIN).then_some(n)
    }

    /// Active series.
    pub fn series_count(&self) -> usize {
        lock(&self.table).len()
    }

    /// Active series, and garbage-collected ones a checkpoint has not dropped yet.
    pub fn series_counts(&self) -> (usize, usize) {
        let t = lock(&self.table);
        (t.len(), t.deleted.len())
    }

    /// Heap bytes of the series table (not counting the shared labels).
    pub fn table_heap_bytes(&self) -> usize {
        lock(&self.table).heap_bytes()
    }

    /// Garbage-collects series without samples since `cut.mint`, then truncates the WAL there
    /// (see [`Wal::truncate`]): the checkpoint keeps the Series records of active series and of
    /// collected ones still referred to after it. Blocking disk work (run it off the async
    /// workers); the WAL's lock is held only to cut a new segment, so commits go on while the
    /// checkpoint is written. Returns `None` without doing anything while another truncation
    /// runs.
    pub fn truncate(&self, cut: Cut) -> Result<Option<CheckpointStats>, WalError> {
        if self.truncating.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let res = self.truncate_now(cut);
        self.truncating.store(false, Ordering::Release);
        res
    }

    fn truncate_now(&self, cut: Cut) -> Result<Option<CheckpointStats>, WalError> {
        let job = {
            let mut log = lock(&self.log);
            let segment = log.wal.segment();
            let gone = lock(&self.table).gc(cut.mint, segment);
            if gone > 0 {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            log.wal.start_truncate()?
        };
        let Some(job) = job else {
            return Ok(None);
        };
        // One snapshot of what to drop per truncation, not a lock per Series entry.
        let gone = lock(&self.table).dropped_at(job.index());
        let stats = job.run(cut, move |r| !gone.contains_key(&r))?;
        lock(&self.table).checkpointed(stats.index);
        let dropped: std::collections::HashSet<SeriesRef> =
            stats.dropped_refs.iter().copied().collect();
        lock(&self.log)
            .last_exemplar
            .retain(|r, _| !dropped.contains(r));
        let mut last = lock(&self.dropped);
        *last = last.append(stats.index, stats.dropped_refs.clone());
        drop(last);
        Ok(Some(stats))
    }

    /// Where a reader of the WAL starts following the series checkpoints drop (the last
    /// event so far; see [`DroppedSeries`]). Take it before reading the WAL.
    pub fn dropped_series(&self) -> Arc<DroppedSeries> {
        lock(&self.dropped).clone()
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

    fn hasher(&self) -> Hasher {
        self.hasher
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn retain_live(&self, refs: &mut Vec<SeriesRef>) {
        let t = lock(&self.table);
        refs.retain(|r| t.by_ref.contains(*r));
    }
}

/// One scrape's writes.
pub struct WalAppender<'a> {
    storage: &'a WalStorage,
    series: Vec<(SeriesRef, Labels)>,
    samples: Vec<RefSample>,
    exemplars: Vec<RefExemplar>,
}

/// The exemplar's labels without empty values, or `None` when they are longer than
/// [`EXEMPLAR_MAX_LABEL_SET_LENGTH`] runes.
fn exemplar_labels(labels: &Labels) -> Option<Labels> {
    let mut runes = 0;
    for (n, v) in labels.iter() {
        if !v.is_empty() {
            runes += n.chars().count() + v.chars().count();
        }
    }
    (runes <= EXEMPLAR_MAX_LABEL_SET_LENGTH)
        .then(|| Labels::from_pairs(labels.iter().filter(|(_, v)| !v.is_empty())))
}

impl WalAppender<'_> {
    /// Logs the series created by this appender (their refs are in use whatever happens to
    /// the batch), then its samples and exemplars, and commits.
    fn write(&mut self, log: &mut Log, with_samples: bool) -> Result<(), WalError> {
        if !self.series.is_empty() {
            log.wal
                .append_series(self.series.iter().map(|(r, l)| (*r, l.as_view())))?;
        }
        if with_samples {
            if !self.samples.is_empty() {
                log.wal.append_samples(&self.samples)?;
            }
            if !self.exemplars.is_empty() {
                let last = &mut log.last_exemplar;
                let new: Vec<RefExemplar> = self
                    .exemplars
                    .drain(..)
                    .filter(|e| {
                        let same = last.get(&e.series_ref).is_some_and(|(t, v, l)| {
                            *t == e.t && *v == e.v.to_bits() && *l == e.labels
                        });
                        if !same {
                            last.insert(e.series_ref, (e.t, e.v.to_bits(), e.labels.clone()));
                        }
                        !same
                    })
                    .collect();
                if !new.is_empty() {
                    log.wal.append_exemplars(&new)?;
                }
            }
        }
        log.wal.commit()
    }
}

impl Appender for WalAppender<'_> {
    fn new_series(&mut self, labels: Labels) -> (SeriesRef, Labels) {
        let (r, shared, new) = lock(&self.storage.table).get_or_create(labels);
        if new {
            self.series.push((r, shared.clone()));
        }
        (r, shared)
    }

    fn append(&mut self, r: SeriesRef, t_ms: i64, v: f64) {
        self.samples.push((r, t_ms, v));
    }

    fn append_exemplar(&mut self, r: SeriesRef, labels: &Labels, t_ms: i64, v: f64) {
        let Some(labels) = exemplar_labels(labels) else {
            tracing::debug!(series = %r, "exemplar label set longer than 128 runes; dropped");
            return;
        };
        self.exemplars.push(RefExemplar {
            series_ref: r,
            t: t_ms,
            v,
            labels,
        });
    }

    fn commit(&mut self) -> Result<(), AppendError> {
        let err = |e: WalError| AppendError::Storage {
            storage: self.storage.name.clone(),
            message: e.to_string(),
        };
        let mut log = lock(&self.storage.log);
        let result = self.write(&mut log, true);
        let segment = log.wal.segment();
        if let Err(e) = &result {
            // Disk full or an I/O error: the samples not written whole cannot be made durable
            // and are dropped (counted: what reached the file in whole records stays, a reader
            // may have sent it already); the segment goes back to the end of the last whole
            // record so nothing torn stays on disk, and the next commit (when space returns)
            // appends cleanly.
            let kept = match log.wal.abort() {
                Ok(aborted) => aborted.kept_samples,
                Err(reset) => {
                    tracing::error!(error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                    0
                }
            };
            let dropped = self.samples.len().saturating_sub(kept);
            self.storage.failures.failures.inc();
            self.storage.failures.dropped_samples.inc_by(dropped as u64);
            self.storage.failures.samples_appended.inc_by(kept as u64);
            log.failures.failed(e, dropped, kept);
        } else {
            log.failures.succeeded();
            self.storage
                .failures
                .samples_appended
                .inc_by(self.samples.len() as u64);
            if let Some(max) = self.samples.iter().map(|s| s.1).max() {
                self.storage.newest_ms.fetch_max(max, Ordering::AcqRel);
            }
        }
        drop(log);
        // Also after a failure: samples kept in the WAL count for garbage collection (touching
        // a dropped one only keeps its series a little longer).
        if !self.samples.is_empty() {
            let mut table = lock(&self.storage.table);
            for &(r, t, _) in &self.samples {
                table.touch(r, t, segment);
            }
        }
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
            let mut log = lock(&self.storage.log);
            if let Err(e) = self.write(&mut log, false) {
                if let Err(reset) = log.wal.abort() {
                    tracing::error!(error = %reset,
                        "cannot cut the WAL segment back after a failed write");
                }
                self.storage.failures.failures.inc();
                log.failures.failed(&e, 0, 0);
            } else {
                log.failures.succeeded();
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

    #[test]
    fn a_series_costs_24_bytes_of_slot_and_4_of_ref_index() {
        // What the table's memory per series is made of: a slot (one-word labels, ref,
        // newest) and an entry of the array by ref.
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        assert_eq!(std::mem::size_of::<Option<SlotNo>>(), 4);
        for i in [0, 1, 77, u32::MAX - 2] {
            assert_eq!(SlotNo::new(i).get(), i);
        }
    }

    fn read_all(dir: &std::path::Path) -> (Vec<(SeriesRef, Labels)>, Vec<RefExemplar>) {
        let segs = segment::list_segments(dir).unwrap();
        let mut r = Reader::new(
            segs.into_iter()
                .map(|index| SegmentSource {
                    index,
                    path: segment::segment_path(dir, index),
                })
                .collect(),
        );
        let (mut series, mut exemplars) = (Vec::new(), Vec::new());
        while r.next_record().unwrap() {
            match record::record_type(r.record()) {
                Some(record::EXEMPLARS) => {
                    record::decode_exemplars(r.record(), &mut exemplars).unwrap()
                }
                Some(record::SERIES) => record::decode_series(r.record(), &mut series).unwrap(),
                _ => {}
            }
        }
        (series, exemplars)
    }

    fn open(dir: &std::path::Path, hasher: Hasher) -> WalStorage {
        let (wal, replay) = Wal::open(dir, WalOptions::default()).unwrap();
        WalStorage::with_hasher("i", wal, &replay, hasher)
    }

    #[test]
    fn exemplars_reach_the_wal_once_and_within_the_length_limit() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), Hasher::random());
        let series = Labels::from_pairs([("__name__", "rpc_seconds_bucket"), ("le", "0.1")]);
        let ex = Labels::from_pairs([("trace_id", "abc"), ("span_id", "")]);
        let long = Labels::from_pairs([("trace_id", "x".repeat(120).as_str()), ("abcdefghi", "")]);
        let too_long = Labels::from_pairs([("trace_id", "x".repeat(121).as_str())]);

        let mut app = storage.appender();
        let (r, _) = app.new_series(series);
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
        // Same timestamp and value as the last one, other labels: a different exemplar.
        app.append_exemplar(r, &Labels::from_pairs([("trace_id", "abd")]), 2_600, 0.01);
        app.commit().unwrap();
        // Rolled back: nothing.
        let mut app = storage.appender();
        app.append_exemplar(r, &ex, 3_500, 0.02);
        app.rollback();
        drop(app);
        storage.sync().unwrap();

        let (_, got) = read_all(dir.path());
        type View = (SeriesRef, i64, f64, Vec<(String, String)>);
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
                (r, 2_600, 0.01, l("abd")),
            ]
        );
    }

    /// With a hasher that maps every label set to 0, every series is still its own: distinct
    /// refs, its own Series record, found again by its labels, also after a restart.
    #[test]
    fn colliding_hashes_keep_series_apart_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let collide = Hasher::with_bits(1, 0);
        let sets: Vec<Labels> = (0..50)
            .map(|i| Labels::from_pairs([("__name__", "m"), ("i", i.to_string().as_str())]))
            .collect();
        let storage = open(dir.path(), collide);
        let mut app = storage.appender();
        let refs: Vec<SeriesRef> = sets.iter().map(|l| app.new_series(l.clone()).0).collect();
        for (i, r) in refs.iter().enumerate() {
            app.append(*r, 1000, i as f64);
        }
        app.commit().unwrap();
        drop(app);
        let unique: std::collections::BTreeSet<_> = refs.iter().collect();
        assert_eq!(unique.len(), 50);
        // Found again by labels, with the table's copy.
        let mut app = storage.appender();
        for (l, r) in sets.iter().zip(&refs) {
            let (again, shared) = app.new_series(Labels::from_pairs(l.iter()));
            assert_eq!((again, &shared), (*r, l));
            assert!(
                shared.ptr_eq(l),
                "the table's copy is shared, not a new one"
            );
        }
        app.commit().unwrap();
        drop(app);
        storage.sync().unwrap();
        let (series, _) = read_all(dir.path());
        assert_eq!(
            series,
            refs.iter()
                .copied()
                .zip(sets.iter().cloned())
                .collect::<Vec<_>>()
        );
        drop(storage);

        let storage = open(dir.path(), collide);
        assert_eq!(storage.series_count(), 50);
        let mut app = storage.appender();
        for (l, r) in sets.iter().zip(&refs) {
            assert_eq!(app.new_series(l.clone()).0, *r);
        }
        let (r, _) = app.new_series(Labels::from_pairs([("__name__", "new")]));
        assert_eq!(r, SeriesRef(51));
        assert!(storage
            .shared_labels()
            .shared(refs[3], sets[3].as_view())
            .is_some_and(|l| l == sets[3]));
        assert!(storage
            .shared_labels()
            .shared(refs[3], sets[4].as_view())
            .is_none());
    }

    /// Series churn: every round 1,000 new series, each living for three or four rounds (as a
    /// request-id label scraped every 5 s with a WAL truncated every 5 s). The live count
    /// peaks at 4,000 in the first rounds and never again goes higher, so the labels index
    /// must have its size by then: hashbrown fills the buckets of removed entries with
    /// tombstones, and without room kept for them the index doubled again once they had used
    /// up its spare room (round 40-100 here; 3-5 minutes into the churn soak, tests/churn.rs,
    /// a late step in the agent's resident memory).
    #[test]
    fn a_churning_series_table_has_its_size_once_its_live_count_peaked() {
        const ROUND: i64 = 1_000;
        let mut t = SeriesTable::new(Hasher::random());
        let mut sizes = Vec::new();
        for round in 0..400i64 {
            for i in 0..ROUND {
                let id = round * ROUND + i;
                let labels = Labels::from_pairs([("request_id", id.to_string().as_str())]);
                let (r, _, new) = t.get_or_create(labels);
                assert!(new);
                t.touch(r, round, 0);
            }
            t.gc(round - 2, 0);
            t.checkpointed(0);
            assert_eq!(t.len() as i64, ROUND * (round + 1).min(3));
            sizes.push((round, t.by_labels.allocation_size()));
        }
        let settled = sizes[4].1;
        let changed = sizes[4..].iter().find(|s| s.1 != settled);
        assert_eq!(
            changed, None,
            "the labels index changed size after round 4 ({settled} bytes)"
        );
        // A live count that falls far below its high gives the room back.
        t.gc(i64::MAX, 0);
        t.checkpointed(0);
        assert!(t.by_labels.allocation_size() < settled / 4);
    }

    #[test]
    fn gc_forgets_idle_series_and_the_checkpoint_keeps_what_is_still_referred_to() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replay) = Wal::open(
            dir.path(),
            WalOptions {
                segment_size: 32 * 1024,
                compress: false,
                ..Default::default()
            },
        )
        .unwrap();
        let storage = WalStorage::with_hasher("i", wal, &replay, Hasher::with_bits(0, 2));
        let labels =
            |i: usize| Labels::from_pairs([("__name__", "m"), ("i", i.to_string().as_str())]);
        let mut refs = Vec::new();
        // 10 series; 0..5 stop at t=100, 5..10 continue to t=1000. Big enough records to fill
        // several segments.
        for round in 0..120i64 {
            let mut app = storage.appender();
            for i in 0..10 {
                if round > 0 && i < 5 && round * 25 > 100 {
                    continue;
                }
                let (r, _) = app.new_series(labels(i));
                if round == 0 {
                    refs.push(r);
                }
                for k in 0..40 {
                    app.append(r, round * 25 + k, 1.0);
                }
            }
            app.commit().unwrap();
        }
        assert_eq!(storage.series_count(), 10);
        let segments = crate::wal::segment::list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 4, "{segments:?}");
        let generation = storage.generation();
        let stats = storage
            .truncate(Cut::from(500))
            .unwrap()
            .expect("a checkpoint");
        assert_eq!(storage.series_count(), 5);
        assert!(storage.generation() > generation);
        let mut live = refs.clone();
        storage.retain_live(&mut live);
        assert_eq!(live, refs[5..]);
        // The idle series were collected in the segment being written, after the checkpoint:
        // their Series records stay until a later checkpoint passes that segment.
        assert!(stats.dropped_refs.is_empty(), "{stats:?}");
        // A new series with the labels of a collected one gets a new ref.
        let mut app = storage.appender();
        let (again, _) = app.new_series(labels(0));
        assert_ne!(again, refs[0]);
    }

    /// Faults for the tests below: fsyncs that pause until released, and a disk with `free`
    /// bytes left once armed (then short writes, then ENOSPC), which records the samples a
    /// reader of the WAL finds at the moment of the first failed write (what a remote_write
    /// watcher could have read and sent by then).
    #[derive(Debug, Default)]
    struct Disk {
        pause_fsync: std::sync::atomic::AtomicBool,
        paused: Mutex<Option<std::sync::mpsc::Sender<std::path::PathBuf>>>,
        released: (Mutex<bool>, std::sync::Condvar),
        free: Mutex<Option<usize>>,
        seen_at_failure: Mutex<Option<u64>>,
    }

    impl Disk {
        fn release(&self) {
            *self.released.0.lock().unwrap() = true;
            self.released.1.notify_all();
        }
    }

    impl crate::wal::Faults for Disk {
        fn write(&self, path: &std::path::Path, len: usize) -> std::io::Result<usize> {
            let mut free = self.free.lock().unwrap();
            let Some(left) = free.as_mut() else {
                return Ok(len);
            };
            if *left == 0 {
                let mut seen = self.seen_at_failure.lock().unwrap();
                if seen.is_none() {
                    *seen = Some(samples_readable(path.parent().unwrap()));
                }
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = len.min(*left);
            *left -= n;
            Ok(n)
        }

        fn fsync(&self, path: &std::path::Path) -> std::io::Result<()> {
            if self.pause_fsync.load(Ordering::SeqCst) {
                if let Some(tx) = self.paused.lock().unwrap().take() {
                    let _ = tx.send(path.to_owned());
                }
                let mut released = self.released.0.lock().unwrap();
                while !*released {
                    released = self.released.1.wait(released).unwrap();
                }
            }
            Ok(())
        }
    }

    /// Samples in the complete records of the WAL in `dir` (stops at the first torn one).
    fn samples_readable(dir: &std::path::Path) -> u64 {
        let segs = segment::list_segments(dir).unwrap();
        let mut r = Reader::new(
            segs.into_iter()
                .map(|index| SegmentSource {
                    index,
                    path: segment::segment_path(dir, index),
                })
                .collect(),
        );
        let (mut n, mut samples) = (0, Vec::new());
        while let Ok(true) = r.next_record() {
            if record::record_type(r.record()) == Some(record::SAMPLES) {
                samples.clear();
                if record::decode_samples(r.record(), &mut samples).is_ok() {
                    n += samples.len() as u64;
                }
            }
        }
        n
    }

    fn open_with(dir: &std::path::Path, disk: &Arc<Disk>, pages: usize) -> WalStorage {
        let (wal, replay) = Wal::open(
            dir,
            WalOptions {
                segment_size: pages * crate::wal::PAGE_SIZE,
                compress: false,
                faults: Some(disk.clone()),
                ..WalOptions::default()
            },
        )
        .unwrap();
        WalStorage::with_hasher("i", wal, &replay, Hasher::random())
    }

    /// One scrape of `n` series (`m_0`..) at `t` with an exemplar per series; returns the
    /// commit's result.
    fn scrape(storage: &WalStorage, n: usize, t: i64) -> Result<(), AppendError> {
        let mut app = storage.appender();
        let ex = Labels::from_pairs([("trace_id", "0123456789abcdef")]);
        for i in 0..n {
            let (r, _) = app.new_series(Labels::from_pairs([
                ("__name__", "m"),
                ("i", i.to_string().as_str()),
            ]));
            app.append(r, t, (i as f64) * 1.5 + t as f64);
            app.append_exemplar(r, &ex, t - 1, i as f64);
        }
        app.commit()
    }

    /// A paused fsync (a slow disk) holds up neither commits nor segment rotations: while the
    /// WAL's fsync is stuck, other commits, including ones that fill segments, complete.
    #[test]
    fn a_paused_fsync_stalls_neither_commits_nor_segment_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let storage = Arc::new(open_with(dir.path(), &disk, 4));
        scrape(&storage, 100, 1_000).unwrap();
        let first = storage.log.lock().unwrap().wal.segment();
        let (tx, paused) = std::sync::mpsc::channel();
        *disk.paused.lock().unwrap() = Some(tx);
        disk.pause_fsync.store(true, Ordering::SeqCst);
        let s = storage.clone();
        let syncer = std::thread::spawn(move || s.sync());
        let path = paused
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the fsync started");
        let (done_tx, done) = std::sync::mpsc::channel();
        let s = storage.clone();
        let committer = std::thread::spawn(move || {
            for k in 0..60 {
                scrape(&s, 1_000, 2_000 + k).unwrap();
            }
            let _ = done_tx.send(());
        });
        let finished = done.recv_timeout(std::time::Duration::from_secs(60));
        disk.release();
        committer.join().unwrap();
        syncer.join().unwrap().unwrap();
        assert!(
            finished.is_ok(),
            "commits stalled behind an fsync of {}",
            path.display()
        );
        let last = storage.log.lock().unwrap().wal.segment();
        assert!(
            last >= first + 3,
            "segments {first}..{last}: no rotation tested"
        );
    }

    /// After a write fails (disk full after a given number of bytes), the samples counted as
    /// dropped are exactly those a reader of the WAL could not have read: samples in records
    /// that reached the file whole (a remote_write watcher may have sent them already) stay in
    /// the WAL and are not counted. When space returns, the WAL goes on cleanly.
    #[test]
    fn dropped_samples_after_a_failed_write_are_exactly_those_never_written() {
        let n = 3_000;
        let mut seen_some = false;
        for free in (0..240_000).step_by(2_000) {
            let dir = tempfile::tempdir().unwrap();
            let disk = Arc::new(Disk::default());
            let counters = WriteFailureCounters::default();
            let storage = open_with(dir.path(), &disk, 8).with_failure_counters(counters.clone());
            scrape(&storage, 10, 1_000).unwrap();
            let before = samples_readable(dir.path());
            *disk.free.lock().unwrap() = Some(free);
            let result = scrape(&storage, n, 2_000);
            let seen = disk.seen_at_failure.lock().unwrap().map(|s| s - before);
            let Some(seen) = seen else {
                assert!(result.is_ok(), "free {free}: {result:?}");
                continue;
            };
            assert!(result.is_err(), "free {free}");
            seen_some |= seen > 0;
            assert_eq!(
                counters.dropped_samples.get(),
                n as u64 - seen,
                "free {free}: a reader saw {seen} of the {n} samples before the write failed"
            );
            assert_eq!(
                samples_readable(dir.path()) - before,
                seen,
                "free {free}: what a reader saw stays in the WAL"
            );
            // Space returns: the next scrape is written whole, after the series it needs.
            *disk.free.lock().unwrap() = None;
            scrape(&storage, n, 3_000).unwrap();
            let (series, _) = read_all(dir.path());
            let refs: std::collections::BTreeSet<SeriesRef> =
                series.iter().map(|(r, _)| *r).collect();
            assert_eq!(refs.len(), n, "free {free}: every series is logged");
            assert_eq!(
                samples_readable(dir.path()) - before,
                seen + n as u64,
                "free {free}"
            );
            assert!(
                crate::wal::repair(dir.path()).unwrap().is_none(),
                "free {free}"
            );
        }
        assert!(
            seen_some,
            "no case where a record reached the file before the failure"
        );
    }

    /// A full disk is logged at once, then summarised (with the count) at most once per
    /// interval while it lasts, and once more when writes succeed again; not once per commit.
    #[tokio::test(start_paused = true)]
    async fn disk_full_is_logged_once_then_summarised() {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let lines = || {
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .filter(|l| l.contains("WAL write"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };

        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let storage = open_with(dir.path(), &disk, 8);
        scrape(&storage, 10, 1_000).unwrap();
        *disk.free.lock().unwrap() = Some(0);
        for k in 0..50 {
            assert!(scrape(&storage, 10, 2_000 + k).is_err());
            tokio::time::advance(std::time::Duration::from_millis(100)).await;
        }
        let got = lines();
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].contains(&dir.path().display().to_string()),
            "{got:#?}"
        );
        // Past the interval, the next failure logs a summary with the count.
        tokio::time::advance(FAILURE_LOG_INTERVAL).await;
        assert!(scrape(&storage, 10, 9_000).is_err());
        let got = lines();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[1].contains("failures=50"), "{got:#?}");
        // Space returns: one line says so, with the failures since the summary.
        *disk.free.lock().unwrap() = None;
        scrape(&storage, 10, 10_000).unwrap();
        scrape(&storage, 10, 11_000).unwrap();
        let got = lines();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[2].contains("failures=51"), "{got:#?}");
    }
}
