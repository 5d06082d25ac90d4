//! The queue manager: one per remote_write endpoint, shaped like Prometheus's
//! `remote.QueueManager`.
//!
//! Data flow:
//!
//! ```text
//! store_series(ref, labels) ──► series table: ref → the instance's shared labels (external
//!                               labels merged in when a request is encoded), or labels of
//!                               its own when write relabelling changed them, or "dropped"
//! append_samples([(ref,t,v)]) ─► shard[ref % n], in chunks of ≤ max_samples_per_send: one
//!                               channel send per chunk, not per sample; room for `capacity`
//!                               samples per shard (a semaphore counted in samples), the
//!                               caller waits when it is full: the WAL is the buffer
//! append_exemplars([(ref,ex)]) ► the same shard and channel (only with `send_exemplars`)
//! shard task ─────────────────► batch of ≤ max_samples_per_send, sent when full or after
//!                               batch_send_deadline; one request in flight per shard, so a
//!                               series' samples arrive in order; retries until delivered,
//!                               non-recoverably refused, or hard-stopped; in a shard's first
//!                               batches after the start, a batch refused with 400 is sent
//!                               again in halves (see `ResendWindow`)
//! ```
//!
//! Every sample that enters `append_samples` ends in exactly one counter: `samples_total`
//! (delivered), `samples_failed_total` (refused with a non-recoverable status),
//! `samples_dropped_total` (series dropped by the filter, unknown series, or still queued when
//! a flush ran out of time). Retries add to `samples_retried_total`. Exemplars have the same
//! five counters (`exemplars_total`, ...); they share the shards' channels and batches with
//! the samples (`max_samples_per_send` counts both, as in Prometheus), each exemplar in a
//! `TimeSeries` of its own with no samples. Exemplar timestamps come from the target and say
//! nothing about WAL progress, so they never move the sent-timestamp watermark.
//!
//! **Resharding** (a simplification of Prometheus's `calculateDesiredShards`), every
//! `shard_update_interval` (10s):
//! - EWMA (α = 0.2) rates of samples in, samples out, and seconds spent in send calls;
//! - `time_per_sample = send_seconds_rate / samples_out_rate` (the cost of one sample for one
//!   shard, which sends serially);
//! - `pending = max(samples queued, lag × samples_in_rate)`, where `lag` is the highest
//!   timestamp received (appended, or reported by [`QueueManager::observe_wal_timestamp`])
//!   minus the highest sent, in seconds. The lag term matters because the queue is bounded:
//!   when sending is too slow the backlog builds up in the WAL, not in the queue;
//! - `desired = time_per_sample × (samples_in_rate + 0.1 × pending / interval)`: enough shards
//!   to keep up with the input plus drain a tenth of the backlog per interval;
//! - no change while `desired` is within ±30% of the current count (no flapping), otherwise
//!   `ceil(desired)` clamped to `[min_shards, max_shards]`;
//! - no resharding while sends fail (no success for `2 × batch_send_deadline` with samples
//!   pending): more shards would not help a receiver that is down.
//!
//! A reshard takes the shard set exclusively (appenders wait), closes the old shards' queues,
//! waits until they have sent everything (so per-series order holds across the change) and
//! starts the new ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::{ClientError, ClientSettings, RemoteClient, SendError};
use super::metrics::{EndpointMetrics, RemoteWriteMetrics};
use super::proto::{
    Exemplar, MetricMetadata, Sample, SeriesLabels, SeriesRef as ProtoSeries, WriteRequestEncoder,
};
use crate::config::instance::RemoteWriteConfig;
use crate::config::remote_write::QueueConfig;
pub use crate::labels::SeriesRef;
use crate::labels::{DenseRefMap, Labels, LabelsBuilder};

/// The series filter the instance provides (its `write_relabel_configs`): called once per
/// series with its labels (external labels already added); may rewrite them; `false` drops the
/// series and every sample of it.
pub type SeriesFilter = Box<dyn Fn(&mut LabelsBuilder) -> bool + Send + Sync>;

/// The shard a series is sent by, for `n` shards (Prometheus's `ref % n`).
pub fn shard_for(series: SeriesRef, n: usize) -> usize {
    (series.0 % n.max(1) as u64) as usize
}

/// Adds each external label the series lacks; a label the series has keeps its own value.
pub fn add_external_labels(labels: &mut LabelsBuilder, external: &Labels) {
    for (name, value) in external.iter() {
        if labels.get(name).is_none() {
            labels.set(name, value);
        }
    }
}

/// Whether `labels` are as the builder makes them: sorted by name, names unique, no empty
/// value. Then, without write relabelling, they can be sent as they are (plus external labels).
fn canonical(labels: &Labels) -> bool {
    let mut prev: Option<&str> = None;
    labels.iter().all(|(n, v)| {
        let ok = !v.is_empty() && prev.is_none_or(|p| p < n);
        prev = Some(n);
        ok
    })
}

/// How the queue behaves, from the remote_write entry and the instance.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub queue: QueueConfig,
    pub external_labels: BTreeMap<String, String>,
    /// Entries per metadata request (`metadata_config.max_samples_per_send`).
    pub metadata_per_send: usize,
    /// `send_exemplars`: exemplars are queued only when set.
    pub send_exemplars: bool,
    /// How often the shard count is reconsidered (Prometheus: 10s).
    pub shard_update_interval: Duration,
}

impl QueueSettings {
    pub fn new(queue: QueueConfig, external_labels: BTreeMap<String, String>) -> Self {
        QueueSettings {
            queue,
            external_labels,
            metadata_per_send: 500,
            send_exemplars: false,
            shard_update_interval: Duration::from_secs(10),
        }
    }
}

/// Why samples were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "remote_write {remote} ({url}): the queue is stopped; {unsent} samples were not queued"
    )]
    Stopped {
        remote: String,
        url: String,
        unsent: usize,
    },
    #[error("remote_write {remote} ({url}): sending metadata: {reason}")]
    Metadata {
        remote: String,
        url: String,
        reason: String,
    },
}

/// What [`QueueManager::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Everything queued was delivered or refused before the deadline.
    pub complete: bool,
    /// Samples abandoned because the deadline passed or the receiver stopped accepting (also
    /// in `samples_dropped_total`). They are still in the WAL and not in the saved progress.
    pub dropped: u64,
    /// A send failed during [`QueueManager::flush_while_delivering`], which ended the flush.
    pub receiver_failed: bool,
}

/// A queued sample, or an exemplar (then `t` and `v` are unused). Boxed so that a sample
/// pays 8 bytes for the option. The series' labels are looked up in the series table when
/// the batch is encoded (once per sample, under one read lock per batch), not carried here:
/// cloning a label set per sample cost an atomic increment and decrement on a counter that
/// is a cache miss at 100k series. A series stored when its sample was queued is still there
/// at encode time: series are removed only once every sample queued before the removal was
/// asked for has finished (see [`QueueManager::forget_series`]).
struct Pending {
    series: SeriesRef,
    t: i64,
    v: f64,
    exemplar: Option<Box<Exemplar>>,
}

/// What the table holds for a series.
enum SeriesEntry {
    /// The instance's shared labels (the same allocation as its series table and scrape
    /// caches), sent with the endpoint's external labels merged in (where the series lacks the
    /// name) when a request is encoded.
    Shared(Labels),
    /// Labels of its own, sent as they are: write relabelling changed the series (external
    /// labels already included).
    Own(Labels),
    Dropped,
}

/// The series table, ref → entry (dense where the WAL's refs are: see [`DenseRefMap`]).
type SeriesTable = DenseRefMap<SeriesEntry>;

const NO_TIMESTAMP: i64 = i64::MIN;

struct ShardState {
    /// Highest timestamp this shard has finished with (sent or refused).
    highest_done: AtomicI64,
    /// Samples queued or in flight.
    pending: AtomicUsize,
    /// Samples of this shard were abandoned by a hard stop: its progress stays at
    /// `highest_done`, the queue's highest says nothing about them.
    abandoned: AtomicBool,
    /// Entries ever queued to this shard, and ever finished by it (delivered, refused or
    /// dropped), for [`QueueManager::delivered_through`]. Added to once per chunk queued and
    /// once per batch finished, by the entry count.
    queued: AtomicU64,
    done: AtomicU64,
}

/// The running shards. Entries move to a shard in chunks (one channel send per chunk of up to
/// `max_samples_per_send` entries of that shard, in the order they were appended), never one
/// by one.
struct Shards {
    senders: Vec<ShardSender>,
    tasks: Vec<JoinHandle<()>>,
}

/// The way into one shard. The channel itself is unbounded; what bounds it is `room`:
/// `capacity` permits, one per entry. The producer takes a chunk's worth before sending it
/// (waiting while the shard is full) and the shard gives them back as it moves entries into
/// the batch it sends, so a shard holds at most `capacity` entries queued plus its batch,
/// however the entries are chunked.
struct ShardSender {
    chunks: mpsc::UnboundedSender<Vec<Pending>>,
    room: Arc<Semaphore>,
}

struct Shared {
    /// The endpoint's `remote_write` span (`remote_name=…`): its tasks run in it.
    span: tracing::Span,
    client: RemoteClient,
    settings: QueueSettings,
    metrics: EndpointMetrics,
    /// Ends retries and abandons queued samples.
    hard_stop: CancellationToken,
    /// Ends the resharding loop.
    soft_stop: CancellationToken,
    /// Set by [`QueueManager::flush_while_delivering`]: a failed send then hard-stops the queue
    /// instead of retrying, and a retry waiting for its backoff goes at once.
    give_up: CancellationToken,
    /// A send failed after `give_up`.
    receiver_failed: AtomicBool,
    stopped: AtomicBool,
    states: Mutex<Vec<Arc<ShardState>>>,
    /// Highest timestamp finished by any shard, including shards retired by resharding.
    highest_done: AtomicI64,
    /// Highest timestamp delivered (2xx), for `queue_highest_sent_timestamp_seconds`.
    highest_delivered: AtomicI64,
    /// Highest timestamp appended or reported as written to the WAL.
    highest_received: AtomicI64,
    samples_in: AtomicU64,
    samples_out: AtomicU64,
    send_nanos: AtomicU64,
    dropped_on_stop: AtomicU64,
    start: Instant,
    /// Milliseconds after `start` of the last successful send; -1 when none.
    last_success_ms: AtomicI64,
    /// Counts finished batches (delivered or refused), for saving progress at once.
    finished: tokio::sync::watch::Sender<u64>,
    /// The WAL commit counter the watcher has read through (see [`QueueManager::read_through`]).
    read_through: tokio::sync::watch::Sender<u64>,
    /// [`QueueManager::delivered_through`] calls waiting: shards send what they hold at once
    /// instead of at `batch_send_deadline`. Bumped when one starts waiting, to wake the shards.
    barriers: AtomicUsize,
    barrier_gen: tokio::sync::watch::Sender<u64>,
    /// Written by `store_series`, read per `append_samples` call and per batch sent.
    series: RwLock<SeriesTable>,
    /// Series to forget once the samples queued before are finished.
    retiring: Mutex<Vec<Retiring>>,
    /// The endpoint's external labels, sorted.
    external: Labels,
    /// What the first shards' resend windows did (see [`ResendWindow`]).
    resend: ResendStats,
    /// Unix milliseconds when the queue started: only samples at or before it can have been
    /// delivered before this start.
    started_ms: i64,
}

/// Series waiting to be forgotten: every shard must first finish what it had queued.
struct Retiring {
    barrier: Vec<(Arc<ShardState>, u64)>,
    refs: Vec<SeriesRef>,
}

fn lock_retiring(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<Retiring>> {
    // Only whole entries are pushed and removed.
    shared.retiring.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn remote(&self) -> &str {
        self.client.remote_name()
    }

    /// `sample_age_limit`: a sample or exemplar older than this timestamp when it is read from
    /// the WAL, or when a request holding it is encoded (before each try), is dropped, not
    /// sent (Prometheus's rule, from 2.49; `i64::MIN` without a limit).
    fn oldest_to_send(&self) -> i64 {
        let limit = self.settings.queue.sample_age_limit.millis();
        if limit == 0 {
            return i64::MIN;
        }
        crate::clock::Clock::system()
            .unix_millis()
            .saturating_sub(i64::try_from(limit).unwrap_or(i64::MAX))
    }

    fn read_series(&self) -> std::sync::RwLockReadGuard<'_, SeriesTable> {
        // The table is only changed by whole inserts and removals; a panic cannot leave it
        // inconsistent.
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_series(&self) -> std::sync::RwLockWriteGuard<'_, SeriesTable> {
        self.series.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the retiring series whose barrier has passed (every shard finished what it
    /// had queued when they were retired). A shard retired by resharding drained first.
    fn retire(&self) {
        let ready: Vec<Vec<SeriesRef>> = {
            let mut retiring = lock_retiring(self);
            if retiring.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            retiring.retain_mut(|r| {
                let passed = r
                    .barrier
                    .iter()
                    .all(|(s, queued)| s.done.load(Ordering::Acquire) >= *queued);
                if passed {
                    ready.push(std::mem::take(&mut r.refs));
                }
                !passed
            });
            ready
        };
        if ready.is_empty() {
            return;
        }
        let mut table = self.write_series();
        for r in ready.iter().flatten() {
            table.remove(*r);
        }
        table.compact();
    }

    fn lock_states(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ShardState>>> {
        // A panic elsewhere cannot leave this vector half-updated (it is only swapped whole).
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending_total(&self) -> usize {
        self.lock_states()
            .iter()
            .map(|s| s.pending.load(Ordering::Relaxed))
            .sum()
    }

    fn lowest_sent(&self) -> Option<i64> {
        let states = self.lock_states();
        let busy = states
            .iter()
            .filter(|s| s.pending.load(Ordering::Acquire) > 0)
            .map(|s| s.highest_done.load(Ordering::Acquire))
            .min();
        let ts = busy.unwrap_or_else(|| self.highest_done.load(Ordering::Acquire));
        (ts != NO_TIMESTAMP).then_some(ts)
    }

    /// Per shard: one millisecond before its highest finished timestamp while it has samples
    /// pending, before the queue's highest when it has none. See [`SentMarks`].
    fn sent_marks(&self) -> Option<SentMarks> {
        let highest = self.highest_done.load(Ordering::Acquire);
        let shards = self
            .lock_states()
            .iter()
            .map(|s| {
                let done = if s.pending.load(Ordering::Acquire) > 0
                    || s.abandoned.load(Ordering::Acquire)
                {
                    s.highest_done.load(Ordering::Acquire)
                } else {
                    highest
                };
                (done != NO_TIMESTAMP).then(|| done - 1)
            })
            .collect::<Option<Vec<i64>>>()?;
        let lowest = *shards.iter().min()?;
        Some(SentMarks { lowest, shards })
    }
}

/// How far a queue got, per shard, for resuming from the WAL after a crash without sending
/// again what the receiver has: every sample of series `r` at or before
/// `shards[shard_for(r, shards.len())]` is finished (delivered or refused for good).
///
/// Why per shard and why one millisecond back: a shard sends its samples in WAL order, one
/// batch at a time, and the WAL of one scrape job is in timestamp order, so when a shard has
/// finished a batch whose newest sample is at `t`, everything before `t` in it is finished;
/// samples at `t` itself (the rest of that scrape) may still be queued. Resuming after
/// `t - 1` resends at most one already delivered sample per series, its newest, which a
/// receiver stores once. Resuming every series from one mark for all shards instead resends
/// several samples per series of the shards that were ahead; Prometheus refuses samples older
/// than a series' newest with 400 "out of order sample" for the whole batch, and the new
/// samples in that batch are lost. (Several scrape jobs interleave timestamps in the WAL a
/// little; as for [`QueueManager::lowest_sent_timestamp`], this is a watermark.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMarks {
    /// The lowest of `shards`: every sample at or before it is finished.
    pub lowest: i64,
    /// Per shard (index = `ref % len`).
    pub shards: Vec<i64>,
}

impl SentMarks {
    /// The mark for series `r`: its samples at or before it are finished.
    pub fn for_series(&self, r: SeriesRef) -> i64 {
        if self.shards.is_empty() {
            return self.lowest;
        }
        self.shards
            .get(shard_for(r, self.shards.len()))
            .map_or(self.lowest, |&m| m.max(self.lowest))
    }
}

/// Sends one remote_write endpoint's samples. Must be created inside a tokio runtime.
pub struct QueueManager {
    shared: Arc<Shared>,
    filter: Option<SeriesFilter>,
    shards: Arc<tokio::sync::RwLock<Shards>>,
    reshard_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for QueueManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueManager")
            .field("remote_name", &self.shared.remote())
            .field("url", &self.shared.client.url())
            .finish_non_exhaustive()
    }
}

impl QueueManager {
    /// Builds the client for `cfg` and starts the queue with `min_shards` shards.
    pub fn from_config(
        cfg: &RemoteWriteConfig,
        external_labels: &BTreeMap<String, String>,
        agent_id: Option<&str>,
        metrics: &RemoteWriteMetrics,
        filter: Option<SeriesFilter>,
    ) -> Result<QueueManager, ClientError> {
        let client = RemoteClient::new(ClientSettings::from_config(cfg, agent_id)?)?;
        let mut settings = QueueSettings::new(cfg.queue, external_labels.clone());
        settings.metadata_per_send = cfg.metadata.max_samples_per_send;
        settings.send_exemplars = cfg.send_exemplars;
        Ok(QueueManager::new(client, settings, metrics, filter))
    }

    pub fn new(
        client: RemoteClient,
        mut settings: QueueSettings,
        metrics: &RemoteWriteMetrics,
        filter: Option<SeriesFilter>,
    ) -> QueueManager {
        let q = &mut settings.queue;
        q.min_shards = q.min_shards.max(1);
        q.max_shards = q.max_shards.max(q.min_shards);
        // The capacity is a semaphore's permits, taken a chunk at a time (u32).
        q.capacity = q
            .capacity
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        q.max_samples_per_send = q.max_samples_per_send.max(1);
        let m = metrics.for_endpoint(client.remote_name(), client.url());
        m.shards_min.set(q.min_shards as i64);
        m.shards_max.set(q.max_shards as i64);
        let initial = q.min_shards;
        // Inside the current span (the instance's). At ERROR level so that it is enabled
        // whatever `--log.level` is (see agent/src/logging.rs).
        let span = tracing::error_span!("remote_write", remote_name = %client.remote_name());
        let external = Labels::from_pairs(settings.external_labels.iter());
        let shared = Arc::new(Shared {
            span,
            client,
            settings,
            metrics: m,
            hard_stop: CancellationToken::new(),
            soft_stop: CancellationToken::new(),
            give_up: CancellationToken::new(),
            receiver_failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            states: Mutex::new(Vec::new()),
            highest_done: AtomicI64::new(NO_TIMESTAMP),
            highest_delivered: AtomicI64::new(NO_TIMESTAMP),
            highest_received: AtomicI64::new(NO_TIMESTAMP),
            samples_in: AtomicU64::new(0),
            samples_out: AtomicU64::new(0),
            send_nanos: AtomicU64::new(0),
            dropped_on_stop: AtomicU64::new(0),
            start: Instant::now(),
            last_success_ms: AtomicI64::new(-1),
            finished: tokio::sync::watch::channel(0).0,
            read_through: tokio::sync::watch::channel(0).0,
            barriers: AtomicUsize::new(0),
            barrier_gen: tokio::sync::watch::channel(0).0,
            series: RwLock::new(SeriesTable::default()),
            retiring: Mutex::new(Vec::new()),
            external,
            resend: ResendStats {
                open: AtomicUsize::new(initial),
                ..ResendStats::default()
            },
            started_ms: crate::clock::Clock::system().unix_millis(),
        });
        let shards = Arc::new(tokio::sync::RwLock::new(start_shards(
            &shared,
            initial,
            RESEND_WINDOW_BATCHES,
        )));
        let reshard_task = tokio::spawn(
            reshard_loop(shared.clone(), shards.clone()).instrument(shared.span.clone()),
        );
        QueueManager {
            shared,
            filter,
            shards,
            reshard_task: Mutex::new(Some(reshard_task)),
        }
    }

    pub fn remote_name(&self) -> &str {
        self.shared.remote()
    }

    /// The endpoint's `remote_write` span (`remote_name=…`, inside the instance's span): run
    /// the tasks that feed this queue in it, and log about the endpoint in it.
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// Records (or replaces) series, once per series: the labels are kept as they are (shared
    /// with the instance) when they are canonical and there is no write relabelling, since
    /// external labels are merged in when a request is encoded; otherwise external labels are
    /// added where the series lacks the name, the filter runs, labels with empty values are
    /// removed and the result kept as the series' own labels.
    pub fn store_series(&self, series: impl IntoIterator<Item = (SeriesRef, Labels)>) {
        let mut lb = LabelsBuilder::new();
        let processed: Vec<(SeriesRef, SeriesEntry)> = series
            .into_iter()
            .map(|(r, labels)| (r, self.process_series(labels, &mut lb)))
            .collect();
        let mut table = self.shared.write_series();
        for (r, e) in processed {
            table.insert(r, e);
        }
    }

    fn process_series(&self, labels: Labels, lb: &mut LabelsBuilder) -> SeriesEntry {
        let external = &self.shared.external;
        let Some(filter) = &self.filter else {
            if labels.is_empty() && external.is_empty() {
                return SeriesEntry::Dropped;
            }
            if canonical(&labels) {
                return SeriesEntry::Shared(labels);
            }
            lb.clear();
            for (n, v) in labels.iter() {
                lb.set(n, v);
            }
            add_external_labels(lb, external);
            return if lb.is_empty() {
                SeriesEntry::Dropped
            } else {
                SeriesEntry::Own(lb.labels())
            };
        };
        lb.clear();
        for (n, v) in labels.iter() {
            lb.set(n, v);
        }
        add_external_labels(lb, external);
        let merged = lb.labels();
        if !filter(lb) || lb.is_empty() {
            return SeriesEntry::Dropped;
        }
        if lb.equals(&merged) && canonical(&labels) {
            SeriesEntry::Shared(labels)
        } else {
            SeriesEntry::Own(lb.labels())
        }
    }

    /// Forgets series no later WAL record refers to (a checkpoint dropped them, and the
    /// watcher has read past it). The removal waits until every sample queued so far has
    /// finished, so a queued sample always finds its series when its batch is encoded.
    pub fn forget_series(&self, refs: Vec<SeriesRef>) {
        if refs.is_empty() {
            return;
        }
        let barrier: Vec<(Arc<ShardState>, u64)> = self
            .shared
            .lock_states()
            .iter()
            .map(|s| (s.clone(), s.queued.load(Ordering::Acquire)))
            .collect();
        lock_retiring(&self.shared).push(Retiring { barrier, refs });
        self.shared.retire();
    }

    /// Number of series in the table (kept and dropped).
    pub fn series_count(&self) -> usize {
        self.shared.read_series().len()
    }

    /// Queues samples `(series ref, timestamp ms, value)`. Waits while the target shard's
    /// queue is full. Samples of dropped or unknown series are counted as dropped.
    pub async fn append_samples(
        &self,
        samples: &[(SeriesRef, i64, f64)],
    ) -> Result<(), QueueError> {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error(samples.len()));
        }
        let mut resolved = Vec::with_capacity(samples.len());
        let mut unknown = 0u64;
        let mut dropped = 0u64;
        let oldest = shared.oldest_to_send();
        let mut too_old = 0u64;
        {
            let table = shared.read_series();
            for &(r, t, v) in samples {
                if t < oldest {
                    too_old += 1;
                    continue;
                }
                match table.get(r) {
                    Some(SeriesEntry::Shared(_) | SeriesEntry::Own(_)) => resolved.push(Pending {
                        series: r,
                        t,
                        v,
                        exemplar: None,
                    }),
                    Some(SeriesEntry::Dropped) => dropped += 1,
                    None => unknown += 1,
                }
            }
        }
        if unknown > 0 {
            tracing::warn!(
                samples = unknown,
                "dropped samples of series that were never stored"
            );
        }
        shared
            .metrics
            .samples_dropped
            .inc_by(unknown + dropped + too_old);
        if let Some(max) = resolved.iter().map(|p| p.t).max() {
            self.observe_wal_timestamp(max);
        }
        self.enqueue(resolved, false).await
    }

    /// Whether this endpoint sends exemplars (`send_exemplars`); when not, the watcher does
    /// not even decode them.
    pub fn sends_exemplars(&self) -> bool {
        self.shared.settings.send_exemplars
    }

    /// Queues exemplars of series (their labels as read from the WAL). Without
    /// `send_exemplars` they are ignored (not counted: they were never meant for this
    /// endpoint). Exemplars of dropped or unknown series, or older than `sample_age_limit`, are
    /// counted as dropped.
    pub async fn append_exemplars(
        &self,
        exemplars: Vec<(SeriesRef, Exemplar)>,
    ) -> Result<(), QueueError> {
        let shared = &self.shared;
        if !shared.settings.send_exemplars || exemplars.is_empty() {
            return Ok(());
        }
        if shared.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error(exemplars.len()));
        }
        let mut resolved = Vec::with_capacity(exemplars.len());
        let mut dropped = 0u64;
        let oldest = shared.oldest_to_send();
        {
            let table = shared.read_series();
            for (r, e) in exemplars {
                if e.timestamp < oldest {
                    dropped += 1;
                    continue;
                }
                match table.get(r) {
                    Some(SeriesEntry::Shared(_) | SeriesEntry::Own(_)) => resolved.push(Pending {
                        series: r,
                        t: e.timestamp,
                        v: e.value,
                        exemplar: Some(Box::new(e)),
                    }),
                    _ => dropped += 1,
                }
            }
        }
        shared.metrics.exemplars_dropped.inc_by(dropped);
        self.enqueue(resolved, true).await
    }

    /// Hands resolved entries (all exemplars or all samples) to their shards in chunks,
    /// waiting while a shard's queue is full. Each shard gets its entries in the order given,
    /// so a series' samples stay in order (one producer per queue: the WAL watcher).
    async fn enqueue(&self, entries: Vec<Pending>, exemplars: bool) -> Result<(), QueueError> {
        let shared = &self.shared;
        let shards = self.shards.read().await;
        let states: Vec<Arc<ShardState>> = shared.lock_states().clone();
        let n = shards.senders.len();
        let total = entries.len();
        if n == 0 || states.len() != n {
            // Flushed while this call waited for the shard set.
            return Err(self.stopped_error(total));
        }
        if total == 0 {
            return Ok(());
        }
        let pending_gauge = if exemplars {
            &shared.metrics.exemplars_pending
        } else {
            &shared.metrics.samples_pending
        };
        // A chunk fills at most one batch, and never needs more room than a shard has.
        let chunk_max = shared
            .settings
            .queue
            .max_samples_per_send
            .min(shared.settings.queue.capacity);
        let first = (total / n + 1).min(chunk_max);
        let mut open: Vec<Vec<Pending>> = (0..n).map(|_| Vec::new()).collect();
        let mut sent = 0usize;
        // Hands one shard's chunk over; `false` when the shard is gone (hard stop).
        let (senders, states) = (&shards.senders, &states);
        let send = |idx: usize, chunk: Vec<Pending>| async move {
            let len = chunk.len();
            let sender = &senders[idx];
            let state = &states[idx];
            // `len <= capacity`, which `new` keeps within u32 and the semaphore's maximum. The
            // semaphore is closed when the shard stopped.
            let Ok(permits) = sender.room.acquire_many(len as u32).await else {
                return false;
            };
            permits.forget();
            state.pending.fetch_add(len, Ordering::AcqRel);
            state.queued.fetch_add(len as u64, Ordering::AcqRel);
            pending_gauge.inc_by(len as i64);
            if sender.chunks.send(chunk).is_err() {
                // Stopped between the permits and the send: never queued.
                state.pending.fetch_sub(len, Ordering::AcqRel);
                state.done.fetch_add(len as u64, Ordering::AcqRel);
                pending_gauge.dec_by(len as i64);
                return false;
            }
            true
        };
        for p in entries {
            let idx = shard_for(p.series, n);
            let chunk = &mut open[idx];
            if chunk.capacity() == 0 {
                chunk.reserve_exact(first);
            }
            chunk.push(p);
            if chunk.len() >= chunk_max {
                let full = std::mem::take(chunk);
                if !send(idx, full).await {
                    shared.samples_in.fetch_add(sent as u64, Ordering::Relaxed);
                    return Err(self.stopped_error(total - sent));
                }
                sent += chunk_max;
            }
        }
        for (idx, chunk) in open.into_iter().enumerate() {
            let len = chunk.len();
            if len > 0 {
                if !send(idx, chunk).await {
                    shared.samples_in.fetch_add(sent as u64, Ordering::Relaxed);
                    return Err(self.stopped_error(total - sent));
                }
                sent += len;
            }
        }
        shared.samples_in.fetch_add(total as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reports the highest timestamp written to the WAL (the instance's housekeeping calls this
    /// every second, the watcher as it reads), so the shard calculation sees how far behind the
    /// queue is.
    pub fn observe_wal_timestamp(&self, ts_ms: i64) {
        self.shared
            .highest_received
            .fetch_max(ts_ms, Ordering::AcqRel);
        self.shared.metrics.observe_appended(ts_ms);
    }

    fn stopped_error(&self, unsent: usize) -> QueueError {
        QueueError::Stopped {
            remote: self.shared.remote().to_owned(),
            url: self.shared.client.url().to_owned(),
            unsent,
        }
    }

    /// Sends metadata in requests of `metadata_per_send` entries, with the samples' retry
    /// policy. Metadata does not go through the shards: it has no ordering constraint.
    pub async fn send_metadata(&self, metadata: &[MetricMetadata]) -> Result<(), QueueError> {
        let shared = &self.shared;
        let mut enc = WriteRequestEncoder::new();
        for chunk in metadata.chunks(shared.settings.metadata_per_send.max(1)) {
            let body = bytes::Bytes::copy_from_slice(enc.encode([], chunk));
            let len = body.len() as u64;
            let n = chunk.len() as u64;
            let mut tries = MetadataRequest { shared, body, n };
            match send_with_backoff(shared, &mut tries).await {
                Outcome::Delivered => {
                    shared.metrics.metadata.inc_by(n);
                    shared.metrics.metadata_bytes.inc_by(len);
                }
                Outcome::Refused { reason, .. } => {
                    shared.metrics.metadata_failed.inc_by(n);
                    return Err(QueueError::Metadata {
                        remote: shared.remote().to_owned(),
                        url: shared.client.url().to_owned(),
                        reason,
                    });
                }
                // (`Emptied` never: a metadata request is sent again as it is.)
                Outcome::Cancelled | Outcome::Emptied => {
                    return Err(QueueError::Metadata {
                        remote: shared.remote().to_owned(),
                        url: shared.client.url().to_owned(),
                        reason: "the queue was stopped".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The current number of shards.
    pub async fn shard_count(&self) -> usize {
        self.shards.read().await.senders.len()
    }

    /// For WAL truncation: a timestamp (ms) up to which this queue is done. Among shards
    /// with samples queued or in flight, the lowest of their highest finished timestamps;
    /// when nothing is pending, the highest finished timestamp. `None` before any batch
    /// finished. Like Prometheus, this is a watermark, not an exact per-sample guarantee
    /// (series within a shard may be out of timestamp order with one another).
    pub fn lowest_sent_timestamp(&self) -> Option<i64> {
        self.shared.lowest_sent()
    }

    /// How far each shard got; see [`SentMarks`]. `None` until every shard with samples
    /// pending has finished a batch.
    pub fn sent_marks(&self) -> Option<SentMarks> {
        self.shared.sent_marks()
    }

    /// Changes after every finished batch (delivered or refused), to save progress at once.
    pub fn finished_batches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.finished.subscribe()
    }

    /// The watcher has read every WAL commit up to `commit` (the instance's commit counter)
    /// and handed its samples to this queue.
    pub fn read_through(&self, commit: u64) {
        self.shared.read_through.send_if_modified(|c| {
            let newer = commit > *c;
            if newer {
                *c = commit;
            }
            newer
        });
    }

    /// Resolves once every sample of the WAL commits up to `commit` has finished here
    /// (delivered, refused for good, or dropped), or the queue was hard-stopped. Target
    /// sharding's flush barrier: a target's next writer appends only after this agent's last
    /// samples of it reached the receiver. A partial batch goes out at `batch_send_deadline`.
    pub async fn delivered_through(&self, commit: u64) {
        let shared = &self.shared;
        let mut read = shared.read_through.subscribe();
        tokio::select! {
            r = read.wait_for(|c| *c >= commit) => if r.is_err() { return },
            _ = shared.hard_stop.cancelled() => return,
        }
        // Shards send partial batches at once while this waits.
        struct Waiting<'a>(&'a Shared);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.barriers.fetch_sub(1, Ordering::AcqRel);
            }
        }
        shared.barriers.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(shared);
        shared.barrier_gen.send_modify(|g| *g += 1);
        // Everything read so far is in these shards (a reshard drains the shards it replaces).
        let marks: Vec<(Arc<ShardState>, u64)> = shared
            .lock_states()
            .iter()
            .map(|s| (s.clone(), s.queued.load(Ordering::Acquire)))
            .collect();
        let mut finished = shared.finished.subscribe();
        while !marks
            .iter()
            .all(|(s, q)| s.done.load(Ordering::Acquire) >= *q)
        {
            tokio::select! {
                r = finished.changed() => if r.is_err() { return },
                _ = shared.hard_stop.cancelled() => return,
            }
        }
    }

    /// The flush on stop: like [`QueueManager::flush`], but only while the receiver takes
    /// what is sent. The first failed send (refused connection, timeout, 5xx, 429; a retry
    /// waiting for its backoff goes at once) ends it: what is still queued is abandoned, and
    /// as its progress is not saved, it is read from the WAL again at the next start.
    /// Waiting for a receiver that is down would only delay the stop (docs/compat.md,
    /// *Stopping*).
    pub async fn flush_while_delivering(&self, deadline: Instant) -> FlushReport {
        self.shared.give_up.cancel();
        self.flush(deadline).await
    }

    /// Stops accepting samples, sends what is queued, and waits until `deadline` at most
    /// (`remote_flush_deadline`), retrying failed sends meanwhile. Whatever is still queued
    /// then is abandoned and counted as dropped. Idempotent.
    pub async fn flush(&self, deadline: Instant) -> FlushReport {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::Release);
        shared.soft_stop.cancel();
        let reshard = self
            .reshard_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut complete = true;
        let mut tasks = Vec::new();
        let graceful = tokio::time::timeout_at(deadline, async {
            if let Some(t) = reshard {
                let _ = t.await;
            }
            let mut g = self.shards.write().await;
            g.senders.clear(); // closes the queues: each shard sends what it has, then exits
            std::mem::take(&mut g.tasks)
        })
        .await;
        match graceful {
            Ok(t) => tasks = t,
            Err(_) => {
                complete = false;
                shared.hard_stop.cancel();
                let mut g = self.shards.write().await;
                g.senders.clear();
                tasks.append(&mut g.tasks);
            }
        }
        let mut done = 0;
        let joined = tokio::time::timeout_at(deadline, async {
            while done < tasks.len() {
                let _ = (&mut tasks[done]).await;
                done += 1;
            }
        })
        .await;
        if joined.is_err() {
            complete = false;
            shared.hard_stop.cancel();
            for t in &mut tasks[done..] {
                let _ = t.await;
            }
        }
        let receiver_failed = shared.receiver_failed.load(Ordering::Acquire);
        if receiver_failed {
            complete = false;
        } else if !complete {
            shared.span.in_scope(|| {
                tracing::warn!(
                    url = shared.client.url(),
                    dropped = shared.dropped_on_stop.load(Ordering::Relaxed),
                    "remote_write flush deadline passed; queued samples were dropped"
                )
            });
        }
        shared.metrics.shards.set(0);
        FlushReport {
            complete,
            dropped: shared.dropped_on_stop.load(Ordering::Relaxed),
            receiver_failed,
        }
    }
}

impl Drop for QueueManager {
    fn drop(&mut self) {
        // Without a flush, nothing may keep running (or retrying) on its own.
        self.shared.soft_stop.cancel();
        self.shared.hard_stop.cancel();
    }
}

/// Starts `n` shards, each with a resend window of `window` batches (see [`ResendWindow`]):
/// the first shards of a queue have one, shards started by a reshard do not.
fn start_shards(shared: &Arc<Shared>, n: usize, window: usize) -> Shards {
    let mut senders = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    // New shards start from the queue's watermark: everything older was finished by the
    // shards they replace (a reshard drains those first).
    let start = shared.lowest_sent().unwrap_or(NO_TIMESTAMP);
    for _ in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(shared.settings.queue.capacity));
        let state = Arc::new(ShardState {
            highest_done: AtomicI64::new(start),
            pending: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        });
        let window = ResendWindow {
            shared: shared.clone(),
            left: window,
        };
        tasks.push(tokio::spawn(
            run_shard(rx, room.clone(), state.clone(), shared.clone(), window)
                .instrument(shared.span.clone()),
        ));
        senders.push(ShardSender { chunks: tx, room });
        states.push(state);
    }
    *shared.lock_states() = states;
    shared.metrics.shards.set(n as i64);
    Shards { senders, tasks }
}

enum Outcome {
    Delivered,
    /// Non-recoverable refusal: the reason and the HTTP status.
    Refused {
        reason: String,
        status: u16,
    },
    /// Hard stop during the send or its backoff.
    Cancelled,
    /// Nothing left to send: every entry grew older than `sample_age_limit` while the request
    /// was retried (or was already when it was encoded), or its series is gone.
    Emptied,
}

async fn run_shard(
    mut rx: mpsc::UnboundedReceiver<Vec<Pending>>,
    room: Arc<Semaphore>,
    state: Arc<ShardState>,
    shared: Arc<Shared>,
    mut window: ResendWindow,
) {
    let max = shared.settings.queue.max_samples_per_send;
    let deadline = shared.settings.queue.batch_send_deadline.as_std();
    // Room for a whole batch up front, unless `max_samples_per_send` is beyond any real batch
    // (it has no upper bound): then the buffers grow as a batch does.
    let mut batch: Vec<Pending> = Vec::with_capacity(max.min(BATCH_PREALLOCATION));
    let mut samples: Vec<Sample> = Vec::with_capacity(max.min(BATCH_PREALLOCATION));
    let mut enc = WriteRequestEncoder::new();
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    let mut barrier = shared.barrier_gen.subscribe();
    // One wake-up per chunk (up to a batch of entries), not per sample: one poll of the stop
    // token, the barrier, the timer and the channel per chunk.
    loop {
        tokio::select! {
            biased;
            () = shared.hard_stop.cancelled() => break,
            // A flush barrier started waiting: what this shard holds goes now.
            r = barrier.changed(), if !batch.is_empty() => {
                if r.is_ok() {
                    send_batch(&shared, &state, &mut enc, &mut batch, &mut samples, &mut window).await;
                }
            },
            chunk = rx.recv() => {
                let Some(chunk) = chunk else {
                    // Closed (flush or reshard) and empty: send what is left, then exit.
                    if !batch.is_empty() {
                        send_batch(&shared, &state, &mut enc, &mut batch, &mut samples, &mut window).await;
                    }
                    return;
                };
                let mut rest = chunk.into_iter();
                loop {
                    if batch.is_empty() {
                        timer.as_mut().reset(Instant::now() + deadline);
                    }
                    let before = batch.len();
                    batch.extend(rest.by_ref().take(max - before));
                    // Moved into the batch: their room goes back to the producer.
                    room.add_permits(batch.len() - before);
                    if batch.len() < max {
                        break;
                    }
                    send_batch(&shared, &state, &mut enc, &mut batch, &mut samples, &mut window).await;
                    if shared.hard_stop.is_cancelled() {
                        // Counted with the batch below.
                        batch.extend(rest);
                        break;
                    }
                }
                if !batch.is_empty()
                    && shared.barriers.load(Ordering::Acquire) > 0
                    && !shared.hard_stop.is_cancelled()
                {
                    send_batch(&shared, &state, &mut enc, &mut batch, &mut samples, &mut window).await;
                }
            },
            () = &mut timer, if !batch.is_empty() => {
                send_batch(&shared, &state, &mut enc, &mut batch, &mut samples, &mut window).await;
            }
        }
    }
    // Hard stop: account for everything this shard still holds; producers waiting for room
    // are turned away.
    room.close();
    rx.close();
    let (mut left, mut left_ex) = count_kinds(&batch);
    while let Ok(chunk) = rx.try_recv() {
        let (s, e) = count_kinds(&chunk);
        left += s;
        left_ex += e;
    }
    let m = &shared.metrics;
    m.samples_dropped.inc_by(left);
    m.samples_pending.dec_by(left as i64);
    m.exemplars_dropped.inc_by(left_ex);
    m.exemplars_pending.dec_by(left_ex as i64);
    shared.dropped_on_stop.fetch_add(left, Ordering::Relaxed);
    if left + left_ex > 0 {
        state.abandoned.store(true, Ordering::Release);
    }
    state
        .pending
        .fetch_sub((left + left_ex) as usize, Ordering::AcqRel);
    state.done.fetch_add(left + left_ex, Ordering::AcqRel);
}

/// The most samples a shard's batch buffers are made for before the first batch.
const BATCH_PREALLOCATION: usize = 1 << 16;

/// (samples, exemplars) in a batch.
fn count_kinds(batch: &[Pending]) -> (u64, u64) {
    let ex = batch.iter().filter(|p| p.exemplar.is_some()).count() as u64;
    (batch.len() as u64 - ex, ex)
}

/// How many batches of each of a queue's first shards are in its resend window (see
/// [`ResendWindow`]).
const RESEND_WINDOW_BATCHES: usize = 4;

/// A shard's resend window: its first [`RESEND_WINDOW_BATCHES`] batches after the queue
/// started (shards started by a reshard have none). A batch in it that holds a sample from
/// before the start (a timestamp at or before it: what can have been delivered before) and is
/// refused with 400 is sent again in halves ([`resend_in_halves`]); any other 400 drops the
/// batch, as in Prometheus.
///
/// Why: after a crash each shard resumes at the mark the progress file last saved
/// (watcher.rs), so its first batches carry again what it delivered after that save, and
/// Prometheus refuses a whole request holding one sample older than its series' newest
/// (400 "out of order sample"): the samples behind them in the same request, never
/// delivered, would be lost with them. Why the first batches and not "samples below the
/// highest position acknowledged before the crash": recording that would need a write
/// before every send, since the crash falls between the acknowledgement and the save. The
/// save follows every finished batch, so what a shard delivered unrecorded is the batch (or
/// the few) that finished while the last save ran, read again first after the start; four
/// batches cover it with room. Bounded like this, a receiver that refuses everything costs at
/// most `4 × (2 × max_samples_per_send − 1)` requests per shard after a start, not twice the
/// requests forever.
struct ResendWindow {
    shared: Arc<Shared>,
    /// Batches left in the window.
    left: usize,
}

impl ResendWindow {
    fn is_open(&self) -> bool {
        self.left > 0
    }

    /// One batch was sent (or refused, or abandoned). A batch holding only samples from after
    /// the start closes the window at once: the watcher reads the WAL in order, so everything
    /// from before the start was in this shard's earlier batches.
    fn batch_done(&mut self, batch: &[Pending]) {
        if self.left == 0 {
            return;
        }
        let started = self.shared.started_ms;
        let all_new = batch.iter().all(|p| p.exemplar.is_some() || p.t > started);
        self.left = if all_new { 0 } else { self.left - 1 };
        if self.left == 0 {
            self.shared.resend.close(&self.shared);
        }
    }
}

impl Drop for ResendWindow {
    /// A shard that exits (stop, reshard) before its window ran out closes it.
    fn drop(&mut self) {
        if self.left > 0 {
            self.left = 0;
            self.shared.resend.close(&self.shared);
        }
    }
}

/// What the first shards' resend windows did; logged once, when the last window closes.
#[derive(Default)]
struct ResendStats {
    /// Windows still open.
    open: AtomicUsize,
    /// Batches refused with 400 in a window, sent again in halves.
    batches: AtomicU64,
    /// Requests sent for those halves.
    requests: AtomicU64,
    /// Samples of those batches delivered, and refused on their own.
    delivered: AtomicU64,
    refused: AtomicU64,
    /// The last refusal's reason.
    reason: Mutex<String>,
}

impl ResendStats {
    fn record(&self, t: &Tally, requests: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.delivered.fetch_add(t.delivered.0, Ordering::Relaxed);
        self.refused.fetch_add(t.refused.0, Ordering::Relaxed);
        if let Some(r) = &t.reason {
            r.clone_into(&mut self.reason.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    fn close(&self, shared: &Shared) {
        if self.open.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let batches = self.batches.load(Ordering::Relaxed);
        if batches == 0 {
            return;
        }
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        shared.span.in_scope(|| {
            tracing::info!(
                url = shared.client.url(),
                refused_batches = batches,
                requests = self.requests.load(Ordering::Relaxed),
                samples_delivered = self.delivered.load(Ordering::Relaxed),
                samples_refused = self.refused.load(Ordering::Relaxed),
                last_error = %reason,
                "remote_write: resend after the start: batches refused with 400 were sent again \
                 in halves; the samples refused on their own (counted as failed) are those the \
                 receiver already had from before the restart, or invalid ones"
            )
        });
    }
}

/// What became of a batch's entries; pairs are (samples, exemplars).
struct Tally {
    delivered: (u64, u64),
    refused: (u64, u64),
    /// Abandoned by a hard stop.
    cancelled: (u64, u64),
    stopped: bool,
    /// A request was delivered, carrying samples up to `highest_delivered`.
    delivered_any: bool,
    highest_delivered: i64,
    bytes: u64,
    /// The last refusal's reason.
    reason: Option<String>,
    /// Sent again in halves ([`resend_in_halves`]).
    split: bool,
    /// Left out of the requests as older than `sample_age_limit` (see [`Request`]).
    too_old: (u64, u64),
}

impl Tally {
    fn new() -> Tally {
        Tally {
            delivered: (0, 0),
            refused: (0, 0),
            cancelled: (0, 0),
            stopped: false,
            delivered_any: false,
            highest_delivered: NO_TIMESTAMP,
            bytes: 0,
            reason: None,
            split: false,
            too_old: (0, 0),
        }
    }

    /// The tally of one request carrying `kinds` entries up to `highest`.
    fn whole(outcome: Outcome, kinds: (u64, u64), len: u64, highest: i64) -> Tally {
        let mut t = Tally::new();
        t.add(outcome, kinds, len, highest);
        t
    }

    fn add(&mut self, outcome: Outcome, kinds: (u64, u64), len: u64, highest: i64) {
        let add = |a: &mut (u64, u64)| add_pair(a, kinds);
        match outcome {
            Outcome::Delivered => {
                add(&mut self.delivered);
                self.bytes += len;
                self.delivered_any = true;
                self.highest_delivered = self.highest_delivered.max(highest);
            }
            Outcome::Refused { reason, .. } => {
                add(&mut self.refused);
                self.reason = Some(reason);
            }
            Outcome::Cancelled => {
                add(&mut self.cancelled);
                self.stopped = true;
            }
            Outcome::Emptied => {}
        }
    }
}

fn add_pair(a: &mut (u64, u64), b: (u64, u64)) {
    a.0 += b.0;
    a.1 += b.1;
}

/// The highest sample timestamp of `entries` (exemplars' timestamps say nothing about WAL
/// progress).
fn highest_sample(entries: &[Pending]) -> i64 {
    entries
        .iter()
        .filter(|p| p.exemplar.is_none())
        .map(|p| p.t)
        .max()
        .unwrap_or(NO_TIMESTAMP)
}

/// A request of `entries` (with `samples`, their samples in the same order), encoded. Entries
/// whose series is gone are left out (`lost`), and with `sample_age_limit` those older than it
/// when the request is encoded (`too_old`): it is encoded again before each retry once its
/// oldest entry has grown too old, as Prometheus does (from 2.49), so a receiver that was down
/// longer than the limit is not sent what the limit keeps out.
///
/// One read lock of the series table per encoding. Every queued entry's series was kept when
/// it was queued and is not removed before the entry is finished; a series replaced since by
/// one the filter drops (a WAL that reuses a ref for other labels, which Prometheus never
/// writes) loses its queued entries, counted as dropped, as if they had arrived after the
/// replacement.
struct Request<'a> {
    shared: &'a Shared,
    enc: &'a mut WriteRequestEncoder,
    entries: &'a [Pending],
    samples: &'a [Sample],
    /// One copy per encoding into a refcounted buffer: tries reuse it, the encoder keeps its
    /// own.
    body: bytes::Bytes,
    /// In the body: (samples, exemplars).
    kinds: (u64, u64),
    /// Left out, their series gone.
    lost: (u64, u64),
    /// Left out, older than `sample_age_limit` at the last encoding.
    too_old: (u64, u64),
    /// The oldest timestamp in the body (`i64::MAX` when it is empty).
    oldest: i64,
    /// The highest sample timestamp in the body.
    highest: i64,
}

impl<'a> Request<'a> {
    fn new(
        shared: &'a Shared,
        enc: &'a mut WriteRequestEncoder,
        entries: &'a [Pending],
        samples: &'a [Sample],
    ) -> Request<'a> {
        let mut r = Request {
            shared,
            enc,
            entries,
            samples,
            body: bytes::Bytes::new(),
            kinds: (0, 0),
            lost: (0, 0),
            too_old: (0, 0),
            oldest: i64::MAX,
            highest: NO_TIMESTAMP,
        };
        r.encode(shared.oldest_to_send());
        r
    }

    /// Encodes the entries at or after `limit` whose series is known.
    fn encode(&mut self, limit: i64) {
        let (mut kinds, mut lost, mut too_old) = ((0, 0), (0, 0), (0, 0));
        let (mut oldest, mut highest) = (i64::MAX, NO_TIMESTAMP);
        let count = |c: &mut (u64, u64), p: &Pending| match p.exemplar {
            None => c.0 += 1,
            Some(_) => c.1 += 1,
        };
        let (shared, entries, samples) = (self.shared, self.entries, self.samples);
        let table = shared.read_series();
        let views = entries.iter().zip(samples).filter_map(|(p, s)| {
            let labels = match table.get(p.series) {
                Some(SeriesEntry::Shared(l)) => SeriesLabels::Packed {
                    labels: l.as_view(),
                    external: Some(shared.external.as_view()),
                },
                Some(SeriesEntry::Own(l)) => SeriesLabels::Packed {
                    labels: l.as_view(),
                    external: None,
                },
                _ => {
                    count(&mut lost, p);
                    return None;
                }
            };
            // After the series: an entry whose series is gone counts as lost at every encoding.
            if p.t < limit {
                count(&mut too_old, p);
                return None;
            }
            count(&mut kinds, p);
            oldest = oldest.min(p.t);
            Some(match &p.exemplar {
                None => {
                    highest = highest.max(p.t);
                    ProtoSeries {
                        labels,
                        samples: std::slice::from_ref(s),
                        exemplars: &[],
                    }
                }
                Some(e) => ProtoSeries {
                    labels,
                    samples: &[],
                    exemplars: std::slice::from_ref(&**e),
                },
            })
        });
        self.body = bytes::Bytes::copy_from_slice(self.enc.encode(views, &[]));
        drop(table);
        (self.kinds, self.lost, self.too_old) = (kinds, lost, too_old);
        (self.oldest, self.highest) = (oldest, highest);
    }

    fn is_empty(&self) -> bool {
        self.kinds == (0, 0)
    }
}

/// What [`send_with_backoff`] sends, and does between two tries.
trait Tries {
    fn body(&self) -> bytes::Bytes;
    /// Counts what the failed try carried as retried.
    fn retried(&self);
    /// Before the next try: whether anything is left to send.
    fn before_retry(&mut self) -> bool;
}

impl Tries for Request<'_> {
    fn body(&self) -> bytes::Bytes {
        self.body.clone()
    }

    fn retried(&self) {
        let m = &self.shared.metrics;
        m.samples_retried.inc_by(self.kinds.0);
        m.exemplars_retried.inc_by(self.kinds.1);
    }

    /// Encodes the request again when its oldest entry has grown older than
    /// `sample_age_limit` since.
    fn before_retry(&mut self) -> bool {
        let limit = self.shared.oldest_to_send();
        if self.oldest < limit {
            self.encode(limit);
        }
        !self.is_empty()
    }
}

/// A request of metadata: sent again as it is.
struct MetadataRequest<'a> {
    shared: &'a Shared,
    body: bytes::Bytes,
    /// Entries in it.
    n: u64,
}

impl Tries for MetadataRequest<'_> {
    fn body(&self) -> bytes::Bytes {
        self.body.clone()
    }

    fn retried(&self) {
        self.shared.metrics.metadata_retried.inc_by(self.n);
    }

    fn before_retry(&mut self) -> bool {
        true
    }
}

async fn send_batch(
    shared: &Shared,
    state: &ShardState,
    enc: &mut WriteRequestEncoder,
    batch: &mut Vec<Pending>,
    samples: &mut Vec<Sample>,
    window: &mut ResendWindow,
) {
    let total = batch.len();
    let (queued, queued_ex) = count_kinds(batch);
    samples.clear();
    samples.extend(batch.iter().map(|p| Sample {
        value: p.v,
        timestamp: p.t,
    }));
    let highest = highest_sample(batch);
    let m = &shared.metrics;
    let mut req = Request::new(shared, enc, batch, samples);
    let outcome = if req.is_empty() {
        Outcome::Emptied
    } else {
        send_with_backoff(shared, &mut req).await
    };
    let (kinds, len, sent_highest) = (req.kinds, req.body.len() as u64, req.highest);
    let (lost, too_old) = (req.lost, req.too_old);
    let t = match outcome {
        Outcome::Refused {
            reason,
            status: 400,
        } if window.is_open()
            && total > 1
            && batch
                .iter()
                .any(|p| p.exemplar.is_none() && p.t <= shared.started_ms) =>
        {
            resend_in_halves(shared, enc, batch, samples, reason).await
        }
        outcome => {
            let mut t = Tally::whole(outcome, kinds, len, sent_highest);
            t.too_old = too_old;
            t
        }
    };
    window.batch_done(batch);
    m.samples.inc_by(t.delivered.0);
    m.exemplars.inc_by(t.delivered.1);
    m.bytes.inc_by(t.bytes);
    m.samples_failed.inc_by(t.refused.0);
    m.exemplars_failed.inc_by(t.refused.1);
    if t.stopped {
        m.samples_dropped.inc_by(t.cancelled.0);
        m.exemplars_dropped.inc_by(t.cancelled.1);
        shared
            .dropped_on_stop
            .fetch_add(t.cancelled.0, Ordering::Relaxed);
        state.abandoned.store(true, Ordering::Release);
    } else {
        // Delivered, or refused for good: the WAL need not keep it for us.
        finish(shared, state, highest);
    }
    if t.delivered_any {
        let prev = shared
            .highest_delivered
            .fetch_max(t.highest_delivered, Ordering::AcqRel);
        let highest = prev.max(t.highest_delivered);
        // Requests of exemplars only carry no sample timestamp.
        if highest != NO_TIMESTAMP {
            m.highest_sent.set(highest as f64 / 1000.0);
        }
        let ms = shared.start.elapsed().as_millis() as i64;
        shared.last_success_ms.store(ms, Ordering::Release);
    }
    if let (Some(reason), false) = (&t.reason, t.split) {
        tracing::error!(
            url = shared.client.url(),
            samples = t.refused.0,
            exemplars = t.refused.1,
            error = %reason,
            "non-recoverable error sending samples; batch dropped"
        );
    }
    m.samples_dropped.inc_by(lost.0 + t.too_old.0);
    m.exemplars_dropped.inc_by(lost.1 + t.too_old.1);
    m.samples_pending.dec_by(queued as i64);
    m.exemplars_pending.dec_by(queued_ex as i64);
    state.pending.fetch_sub(total, Ordering::AcqRel);
    state.done.fetch_add(total as u64, Ordering::AcqRel);
    shared.retire();
    shared
        .samples_out
        .fetch_add(total as u64, Ordering::Relaxed);
    batch.clear();
    shared.finished.send_modify(|c| *c += 1);
}

/// Sends `batch` again (refused whole with 400 in the resend window, `reason`) in halves, in
/// order, each half refused with 400 split again, down to single entries: a single entry
/// refused is dropped (counted as failed, as a refused batch is). So of a resent batch only
/// what the receiver refuses on its own is dropped: after a crash, the samples it already had
/// (older than their series' newest there); those sent with them arrive. Halves keep each
/// series' samples in order (all of a half before the next).
async fn resend_in_halves(
    shared: &Shared,
    enc: &mut WriteRequestEncoder,
    batch: &[Pending],
    samples: &[Sample],
    reason: String,
) -> Tally {
    let m = &shared.metrics;
    let mut t = Tally::new();
    t.split = true;
    t.reason = Some(reason);
    let mut requests = 0u64;
    // Ranges still to send; the next one on top.
    let mid = batch.len() / 2;
    let mut todo = vec![(mid, batch.len()), (0, mid)];
    while let Some((a, b)) = todo.pop() {
        let mut req = Request::new(shared, enc, &batch[a..b], &samples[a..b]);
        if req.is_empty() || t.stopped {
            add_pair(&mut t.too_old, req.too_old);
            add_pair(&mut t.cancelled, req.kinds);
            continue;
        }
        requests += 1;
        let outcome = send_with_backoff(shared, &mut req).await;
        let (kinds, len, highest) = (req.kinds, req.body.len() as u64, req.highest);
        match outcome {
            // The halves are encoded (and their entries counted) again.
            Outcome::Refused { status: 400, .. } if b - a > 1 => {
                let mid = a + (b - a) / 2;
                todo.push((mid, b));
                todo.push((a, mid));
            }
            outcome => {
                add_pair(&mut t.too_old, req.too_old);
                t.add(outcome, kinds, len, highest);
            }
        }
    }
    m.resend_split_requests.inc_by(requests);
    shared.resend.record(&t, requests);
    tracing::debug!(
        url = shared.client.url(),
        requests,
        samples_delivered = t.delivered.0,
        samples_refused = t.refused.0,
        "remote_write: a batch refused with 400 in the resend window was sent again in halves"
    );
    t
}

fn finish(shared: &Shared, state: &ShardState, highest: i64) {
    state.highest_done.fetch_max(highest, Ordering::AcqRel);
    shared.highest_done.fetch_max(highest, Ordering::AcqRel);
}

/// Sends until delivered, refused, hard-stopped, or emptied (nothing left after
/// [`Tries::before_retry`]). Recoverable errors sleep `Retry-After` when the receiver gave one,
/// else the current backoff; the next backoff is twice the sleep, capped at `max_backoff`
/// (Prometheus's rule).
async fn send_with_backoff(shared: &Shared, tries: &mut (impl Tries + Send)) -> Outcome {
    let q = &shared.settings.queue;
    let max_backoff = q.max_backoff.as_std();
    let mut backoff = q.min_backoff.as_std();
    loop {
        let started = Instant::now();
        let res = tokio::select! {
            r = shared.client.store(tries.body()) => r,
            () = shared.hard_stop.cancelled() => return Outcome::Cancelled,
        };
        let took = started.elapsed();
        shared.metrics.batch_duration.observe(took.as_secs_f64());
        shared
            .send_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        let (reason, retry_after) = match res {
            Ok(()) => return Outcome::Delivered,
            Err(SendError::NonRecoverable { reason, status }) => {
                return Outcome::Refused { reason, status }
            }
            Err(SendError::Recoverable {
                reason,
                retry_after,
            }) => (reason, retry_after),
        };
        if shared.give_up.is_cancelled() {
            // Stopping, and the receiver does not take samples: the WAL keeps them.
            shared.receiver_failed.store(true, Ordering::Release);
            shared.hard_stop.cancel();
            tracing::debug!(url = shared.client.url(), error = %reason,
                "send failed while flushing on stop; flush ends");
            return Outcome::Cancelled;
        }
        tries.retried();
        let sleep = retry_after.unwrap_or(backoff);
        tracing::warn!(
            url = shared.client.url(),
            error = %reason,
            retry_in = ?sleep,
            "failed to send batch, retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            // Stopping: one more try at once, no waiting out the backoff.
            () = shared.give_up.cancelled() => {}
            () = shared.hard_stop.cancelled() => return Outcome::Cancelled,
        }
        // Saturating: `Retry-After` may ask for any number of seconds (a stop ends the wait
        // early and lands here with it).
        backoff = sleep
            .saturating_mul(2)
            .min(max_backoff)
            .max(q.min_backoff.as_std());
        if !tries.before_retry() {
            return Outcome::Emptied;
        }
    }
}

/// The inputs of one shard calculation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardInputs {
    pub samples_in_rate: f64,
    pub samples_out_rate: f64,
    /// Seconds spent in send calls per second.
    pub send_seconds_rate: f64,
    pub pending: f64,
    pub update_interval_secs: f64,
    pub current: usize,
    pub min: usize,
    pub max: usize,
}

/// The shard count the queue should run (see the module docs for the rule).
pub fn desired_shards(i: &ShardInputs) -> usize {
    if i.samples_out_rate <= 0.0 || i.update_interval_secs <= 0.0 {
        return i.current.clamp(i.min, i.max);
    }
    let time_per_sample = i.send_seconds_rate / i.samples_out_rate;
    let catch_up = 0.1 * i.pending / i.update_interval_secs;
    let desired = time_per_sample * (i.samples_in_rate + catch_up);
    let cur = i.current as f64;
    if desired > cur * 0.7 && desired < cur * 1.3 {
        return i.current.clamp(i.min, i.max);
    }
    (desired.ceil() as usize).clamp(i.min, i.max)
}

struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    fn update(&mut self, sample: f64) -> f64 {
        let v = match self.value {
            None => sample,
            Some(prev) => prev + 0.2 * (sample - prev),
        };
        self.value = Some(v);
        v
    }
}

async fn reshard_loop(shared: Arc<Shared>, shards: Arc<tokio::sync::RwLock<Shards>>) {
    let interval = shared.settings.shard_update_interval;
    let secs = interval.as_secs_f64();
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut r_in, mut r_out, mut r_send) = (
        Ewma { value: None },
        Ewma { value: None },
        Ewma { value: None },
    );
    let (mut last_in, mut last_out, mut last_send) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            () = shared.soft_stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_in = shared.samples_in.load(Ordering::Relaxed);
        let now_out = shared.samples_out.load(Ordering::Relaxed);
        let now_send = shared.send_nanos.load(Ordering::Relaxed);
        let inputs = ShardInputs {
            samples_in_rate: r_in.update((now_in - last_in) as f64 / secs),
            samples_out_rate: r_out.update((now_out - last_out) as f64 / secs),
            send_seconds_rate: r_send.update((now_send - last_send) as f64 / 1e9 / secs),
            pending: {
                let queued = shared.pending_total() as f64;
                let recv = shared.highest_received.load(Ordering::Acquire);
                let sent = shared.highest_done.load(Ordering::Acquire);
                let lag_secs = if recv == NO_TIMESTAMP || sent == NO_TIMESTAMP {
                    0.0
                } else {
                    (recv.saturating_sub(sent)).max(0) as f64 / 1000.0
                };
                queued.max(lag_secs * r_in.value.unwrap_or(0.0))
            },
            update_interval_secs: secs,
            current: shards.read().await.senders.len(),
            min: shared.settings.queue.min_shards,
            max: shared.settings.queue.max_shards,
        };
        (last_in, last_out, last_send) = (now_in, now_out, now_send);
        let desired = desired_shards(&inputs);
        shared.metrics.shards_desired.set(desired as f64);
        if desired == inputs.current {
            continue;
        }
        // Prometheus's shouldReshard: not while sends are failing.
        let last_ok = shared.last_success_ms.load(Ordering::Acquire);
        let since_ok = shared.start.elapsed().as_millis() as i64 - last_ok;
        let limit = 2 * shared
            .settings
            .queue
            .batch_send_deadline
            .as_std()
            .as_millis() as i64;
        if inputs.pending > 0.0 && (last_ok < 0 || since_ok > limit) {
            tracing::debug!(desired, "not resharding: sends are failing");
            continue;
        }
        tracing::info!(
            from = inputs.current,
            to = desired,
            "remote_write resharding"
        );
        let mut g = shards.write().await;
        g.senders.clear();
        for t in std::mem::take(&mut g.tasks) {
            let _ = t.await;
        }
        if shared.hard_stop.is_cancelled() {
            return;
        }
        *g = start_shards(&shared, desired, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::proto::Label;

    const fn r(n: u64) -> SeriesRef {
        SeriesRef(n)
    }

    #[test]
    fn shard_assignment_is_stable_and_in_range() {
        for n in 1..8 {
            for x in [0u64, 1, 7, 12345, u64::MAX] {
                let a = shard_for(r(x), n);
                assert!(a < n);
                assert_eq!(a, shard_for(r(x), n));
                assert_eq!(a as u64, x % n as u64);
            }
        }
        assert_eq!(shard_for(r(5), 0), 0);
    }

    #[test]
    fn external_labels_only_fill_missing_names() {
        let mut l = Labels::from_pairs([("__name__", "up"), ("cluster", "own")]).builder();
        let ext = Labels::from_pairs([("cluster", "ext"), ("region", "eu")]);
        add_external_labels(&mut l, &ext);
        assert_eq!(
            l.labels(),
            Labels::from_pairs([("__name__", "up"), ("cluster", "own"), ("region", "eu")])
        );
    }

    use super::super::proto::WriteRequest;
    use crate::config::duration::PromDuration;

    type Received = Arc<Mutex<Vec<WriteRequest>>>;

    /// A receiver that decodes every request and answers 204.
    async fn receiver() -> (url::Url, Received) {
        let got: Received = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                match WriteRequest::decode_snappy(&body) {
                    Ok(req) => {
                        g.lock().unwrap().push(req);
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (
            url::Url::parse(&format!("http://{addr}/write")).unwrap(),
            got,
        )
    }

    fn queue(url: url::Url, send_exemplars: bool, metadata_per_send: usize) -> QueueManager {
        let client = RemoteClient::new(ClientSettings {
            remote_name: "r".into(),
            url,
            timeout: Duration::from_secs(5),
            headers: Default::default(),
            http: Default::default(),
            retry_on_http_429: true,
            agent_id: None,
        })
        .unwrap();
        let mut settings = QueueSettings::new(
            QueueConfig {
                batch_send_deadline: PromDuration::from_millis(20),
                ..QueueConfig::default()
            },
            BTreeMap::new(),
        );
        settings.send_exemplars = send_exemplars;
        settings.metadata_per_send = metadata_per_send;
        let metrics =
            RemoteWriteMetrics::register(&mut prometheus_client::registry::Registry::default());
        QueueManager::new(client, settings, &metrics, None)
    }

    fn exemplar(trace: &str, t: i64) -> Exemplar {
        Exemplar {
            labels: vec![Label::new("trace_id", trace)],
            value: 0.5,
            timestamp: t,
        }
    }

    #[tokio::test]
    async fn exemplars_are_sent_only_with_send_exemplars() {
        for send in [true, false] {
            let (url, got) = receiver().await;
            let q = queue(url, send, 500);
            q.store_series([(r(1), Labels::from_pairs([("__name__", "rpc_bucket")]))]);
            q.append_samples(&[(r(1), 1_000, 1.0)]).await.unwrap();
            q.append_exemplars(vec![
                (r(1), exemplar("abc", 900)),
                (r(7), exemplar("lost", 950)),
            ])
            .await
            .unwrap();
            let report = q.flush(Instant::now() + Duration::from_secs(5)).await;
            assert!(report.complete);
            let series: Vec<_> = got
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.timeseries.clone())
                .collect();
            let with_samples: Vec<_> = series.iter().filter(|t| !t.samples.is_empty()).collect();
            let with_exemplars: Vec<_> =
                series.iter().filter(|t| !t.exemplars.is_empty()).collect();
            assert_eq!(with_samples.len(), 1);
            let m = &q.shared.metrics;
            assert_eq!(m.samples.get(), 1);
            if send {
                assert_eq!(with_exemplars.len(), 1);
                let ts = with_exemplars[0];
                assert!(
                    ts.samples.is_empty(),
                    "an exemplar has a TimeSeries of its own"
                );
                assert_eq!(ts.labels, vec![Label::new("__name__", "rpc_bucket")]);
                assert_eq!(ts.exemplars, vec![exemplar("abc", 900)]);
                assert_eq!((m.exemplars.get(), m.exemplars_dropped.get()), (1, 1));
            } else {
                assert!(with_exemplars.is_empty());
                assert_eq!((m.exemplars.get(), m.exemplars_dropped.get()), (0, 0));
            }
            assert_eq!(m.exemplars_pending.get(), 0);
            assert_eq!(m.samples_pending.get(), 0);
            // Exemplar timestamps do not move the watermark: only the sample's does.
            assert_eq!(q.lowest_sent_timestamp(), Some(1_000));
        }
    }

    /// The flush on stop ends at the first failed send instead of retrying until its deadline,
    /// and the progress it leaves covers only what was delivered: a shard whose samples were
    /// abandoned keeps its own mark, not the queue's highest (which another shard reached).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_while_delivering_stops_at_a_failed_send_and_keeps_unsent_progress() {
        // Series "a" is always accepted; series "b" once, then refused with 503.
        let b_seen = Arc::new(AtomicUsize::new(0));
        let seen = b_seen.clone();
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let req = WriteRequest::decode_snappy(&body).unwrap();
                    let b = req.timeseries.iter().any(|t| t.labels[0].value == "b");
                    if b && seen.fetch_add(1, Ordering::SeqCst) > 0 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = RemoteClient::new(ClientSettings {
            remote_name: "r".into(),
            url: url::Url::parse(&format!("http://{addr}/write")).unwrap(),
            timeout: Duration::from_secs(5),
            headers: Default::default(),
            http: Default::default(),
            retry_on_http_429: true,
            agent_id: None,
        })
        .unwrap();
        let settings = QueueSettings::new(
            QueueConfig {
                batch_send_deadline: PromDuration::from_millis(20),
                min_shards: 2,
                max_shards: 2,
                ..QueueConfig::default()
            },
            BTreeMap::new(),
        );
        let metrics =
            RemoteWriteMetrics::register(&mut prometheus_client::registry::Registry::default());
        let q = QueueManager::new(client, settings, &metrics, None);
        let l = |n: &str| Labels::from_pairs([("__name__", n)]);
        // Shard 0 sends "a" (ref 2), shard 1 sends "b" (ref 1).
        q.store_series([(r(2), l("a")), (r(1), l("b"))]);
        q.append_samples(&[(r(2), 1_000, 1.0), (r(1), 1_000, 1.0)])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.sent_marks().is_none() {
            assert!(Instant::now() < deadline, "first samples never delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        q.append_samples(&[(r(2), 2_000, 2.0), (r(1), 2_000, 2.0)])
            .await
            .unwrap();
        while b_seen.load(Ordering::SeqCst) < 2
            || q.shared.highest_done.load(Ordering::Acquire) < 2_000
        {
            assert!(
                Instant::now() < deadline,
                "the second batches were never sent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let report = q
            .flush_while_delivering(Instant::now() + Duration::from_secs(600))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "waited {:?} for a refusing receiver",
            started.elapsed()
        );
        assert!(report.receiver_failed && !report.complete, "{report:?}");
        assert_eq!(report.dropped, 1, "b's sample at 2000 was not sent");
        // "a" is through 2000; "b" only through 1000: its sample at 2000 is read again from
        // the WAL after a restart.
        assert_eq!(
            q.sent_marks(),
            Some(SentMarks {
                lowest: 999,
                shards: vec![1_999, 999],
            })
        );
    }

    /// A series forgotten while samples of it are queued keeps its labels until they are
    /// sent; then the table shrinks.
    #[tokio::test]
    async fn forgotten_series_wait_for_their_queued_samples() {
        let (url, got) = receiver().await;
        let q = queue(url, false, 500);
        let l = |n: &str| Labels::from_pairs([("__name__", n)]);
        q.store_series([(r(1), l("a")), (r(2), l("b"))]);
        q.append_samples(&[(r(1), 1_000, 1.0), (r(2), 1_000, 2.0)])
            .await
            .unwrap();
        // The batch waits for its 20 ms deadline: both samples are still queued.
        q.forget_series(vec![r(1)]);
        assert_eq!(q.series_count(), 2, "not before its queued sample is sent");
        assert!(
            q.flush(Instant::now() + Duration::from_secs(5))
                .await
                .complete
        );
        let mut names: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|req| req.timeseries.iter())
            .map(|ts| ts.labels[0].value.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(q.shared.metrics.samples_dropped.get(), 0);
        assert_eq!(q.series_count(), 1);
    }

    #[tokio::test]
    async fn delivered_through_waits_for_the_read_commit_and_its_samples() {
        let (url, got) = receiver().await;
        let q = Arc::new(queue(url, false, 500));
        q.store_series((1..=8).map(|n| {
            (
                r(n),
                Labels::from_pairs([("__name__", format!("m{n}").as_str())]),
            )
        }));
        let barrier = {
            let q = q.clone();
            tokio::spawn(async move { q.delivered_through(3).await })
        };
        q.append_samples(&(1..=8).map(|n| (r(n), 1_000, 1.0)).collect::<Vec<_>>())
            .await
            .unwrap();
        q.read_through(2);
        // Commit 3 is not read yet: however long the samples take, the barrier waits.
        tokio::time::timeout(Duration::from_millis(300), async {
            while q.shared.metrics.samples.get() < 8 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .ok();
        assert!(!barrier.is_finished(), "resolved before commit 3 was read");
        q.append_samples(&[(r(1), 2_000, 2.0), (r(5), 2_000, 2.0)])
            .await
            .unwrap();
        q.read_through(3);
        tokio::time::timeout(Duration::from_secs(10), barrier)
            .await
            .expect("barrier resolves")
            .unwrap();
        let delivered: usize = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.timeseries.iter().map(|t| t.samples.len()))
            .sum();
        assert_eq!(
            delivered, 10,
            "every sample queued before commit 3 was read is delivered"
        );
        // An older commit resolves at once.
        tokio::time::timeout(Duration::from_secs(1), q.delivered_through(1))
            .await
            .unwrap();
    }

    fn queue_with(url: url::Url, cfg: QueueConfig) -> QueueManager {
        let client = RemoteClient::new(ClientSettings {
            remote_name: "r".into(),
            url,
            timeout: Duration::from_secs(5),
            headers: Default::default(),
            http: Default::default(),
            retry_on_http_429: true,
            agent_id: None,
        })
        .unwrap();
        let metrics =
            RemoteWriteMetrics::register(&mut prometheus_client::registry::Registry::default());
        QueueManager::new(
            client,
            QueueSettings::new(cfg, BTreeMap::new()),
            &metrics,
            None,
        )
    }

    /// Chunks of one call spread over several shards and batches whose sizes divide nothing:
    /// every sample arrives once, each series' samples in order, in batches of at most
    /// `max_samples_per_send`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_keep_each_series_in_order_across_shards_and_batches() {
        let (url, got) = receiver().await;
        let q = queue_with(
            url,
            QueueConfig {
                min_shards: 4,
                max_shards: 4,
                max_samples_per_send: 7,
                capacity: 10,
                batch_send_deadline: PromDuration::from_millis(20),
                ..QueueConfig::default()
            },
        );
        q.store_series((1..=50).map(|n| {
            (
                r(n),
                Labels::from_pairs([("__name__", format!("m{n}").as_str())]),
            )
        }));
        let all: Vec<(SeriesRef, i64, f64)> = (0..20i64)
            .flat_map(|t| (1..=50).map(move |n| (r(n), t, t as f64)))
            .collect();
        for call in all.chunks(13) {
            q.append_samples(call).await.unwrap();
        }
        assert!(
            q.flush(Instant::now() + Duration::from_secs(20))
                .await
                .complete
        );
        let reqs = got.lock().unwrap().clone();
        let mut per_series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for req in &reqs {
            let n: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
            assert!(n <= 7, "a batch of {n} samples");
            for ts in &req.timeseries {
                let name = ts.labels[0].value.clone();
                per_series
                    .entry(name)
                    .or_default()
                    .extend(ts.samples.iter().map(|s| s.timestamp));
            }
        }
        assert_eq!(per_series.len(), 50);
        for (name, ts) in &per_series {
            assert_eq!(ts, &(0..20).collect::<Vec<i64>>(), "{name}");
        }
        assert_eq!(q.shared.metrics.samples.get(), 1000);
        assert_eq!(q.shared.metrics.samples_pending.get(), 0);
    }

    /// A receiver that behaves like Prometheus's remote-write handler: a request holding a
    /// sample older than its series' newest is refused whole (400) and nothing of it is
    /// stored; a sample at the newest timestamp is taken as a duplicate. `refuse_all`: every
    /// request is refused. Returns the URL, the stored (series, timestamp) pairs and the
    /// number of requests.
    async fn out_of_order_receiver(
        newest: BTreeMap<String, i64>,
        refuse_all: bool,
    ) -> (url::Url, Arc<Mutex<BTreeMap<String, i64>>>, Arc<AtomicU64>) {
        let newest = Arc::new(Mutex::new(newest));
        let requests = Arc::new(AtomicU64::new(0));
        let (n, count) = (newest.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                count.fetch_add(1, Ordering::SeqCst);
                let req = WriteRequest::decode_snappy(&body).unwrap();
                let mut newest = n.lock().unwrap();
                let mut next = newest.clone();
                for ts in &req.timeseries {
                    let name = ts.labels[0].value.clone();
                    for s in &ts.samples {
                        let at = next.entry(name.clone()).or_insert(i64::MIN);
                        if refuse_all || s.timestamp < *at {
                            return axum::http::StatusCode::BAD_REQUEST;
                        }
                        *at = s.timestamp;
                    }
                }
                *newest = next;
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (
            url::Url::parse(&format!("http://{addr}/write")).unwrap(),
            newest,
            requests,
        )
    }

    /// After a crash the shard resends what the receiver already has (up to t = 5) together
    /// with what it never got (6..9), in one batch: refused whole, then sent again in halves
    /// until only the samples older than their series' newest are refused on their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_refused_in_the_resend_window_is_split_until_only_stale_samples_are_refused() {
        let names: Vec<String> = (1..=10).map(|n| format!("m{n}")).collect();
        let had = names.iter().map(|n| (n.clone(), 5)).collect();
        let (url, stored, requests) = out_of_order_receiver(had, false).await;
        let q = queue_with(
            url,
            QueueConfig {
                max_samples_per_send: 100,
                batch_send_deadline: PromDuration::from_millis(20),
                ..QueueConfig::default()
            },
        );
        q.store_series((1..=10).map(|n| {
            (
                r(n),
                Labels::from_pairs([("__name__", format!("m{n}").as_str())]),
            )
        }));
        let resent: Vec<(SeriesRef, i64, f64)> = (3..=9i64)
            .flat_map(|t| (1..=10).map(move |n| (r(n), t, t as f64)))
            .collect();
        q.append_samples(&resent).await.unwrap();
        assert!(
            q.flush(Instant::now() + Duration::from_secs(20))
                .await
                .complete
        );
        let stored = stored.lock().unwrap().clone();
        assert_eq!(stored.len(), 10);
        assert!(stored.values().all(|&t| t == 9), "{stored:?}");
        let m = &q.shared.metrics;
        // t = 3 and 4 of each series: already there, older than its newest (5).
        assert_eq!(m.samples_failed.get(), 20);
        // t = 5 (a duplicate, accepted) to 9.
        assert_eq!(m.samples.get(), 50);
        let split = m.resend_split_requests.get();
        assert_eq!(requests.load(Ordering::SeqCst), 1 + split);
        // Each of the 20 stale samples ends refused on its own.
        assert!((20..=70).contains(&split), "{split} split requests");
    }

    /// Only the first batches after a start are split: a receiver that refuses everything gets
    /// `2 × n − 1` requests for each of those, then one per batch. (Samples from 1970: before
    /// the start.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_after_the_resend_window_are_dropped_whole_on_400() {
        let (url, stored, requests) = out_of_order_receiver(BTreeMap::new(), true).await;
        let q = queue_with(
            url,
            QueueConfig {
                max_samples_per_send: 4,
                batch_send_deadline: PromDuration::from_millis(20),
                ..QueueConfig::default()
            },
        );
        q.store_series([(r(1), Labels::from_pairs([("__name__", "m1")]))]);
        let samples: Vec<(SeriesRef, i64, f64)> = (0..24i64).map(|t| (r(1), t, 1.0)).collect();
        q.append_samples(&samples).await.unwrap();
        assert!(
            q.flush(Instant::now() + Duration::from_secs(20))
                .await
                .complete
        );
        assert!(stored.lock().unwrap().is_empty());
        let m = &q.shared.metrics;
        assert_eq!(m.samples_failed.get(), 24);
        assert_eq!(m.samples.get(), 0);
        // 6 batches of 4: the first 4 split (1 + 2 + 4 requests each), the last 2 not.
        assert_eq!(RESEND_WINDOW_BATCHES, 4);
        assert_eq!(m.resend_split_requests.get(), 4 * 6);
        assert_eq!(requests.load(Ordering::SeqCst), 4 * 7 + 2);
    }

    /// The bound is in samples, whatever the chunking: with room for 3 samples and batches of
    /// 10, a receiver that never accepts holds the producer at the batch being retried plus
    /// less than the room.
    #[tokio::test]
    async fn a_full_shard_holds_the_producer_at_capacity_samples() {
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = url::Url::parse(&format!("http://{addr}/write")).unwrap();
        let q = Arc::new(queue_with(
            url,
            QueueConfig {
                max_shards: 1,
                max_samples_per_send: 10,
                capacity: 3,
                // Only full batches go.
                batch_send_deadline: PromDuration::from_secs(60),
                min_backoff: PromDuration::from_millis(10),
                max_backoff: PromDuration::from_millis(20),
                ..QueueConfig::default()
            },
        ));
        q.store_series([(r(1), Labels::from_pairs([("__name__", "m")]))]);
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                let samples: Vec<(SeriesRef, i64, f64)> =
                    (0..100).map(|t| (r(1), t, 1.0)).collect();
                q.append_samples(&samples).await
            })
        };
        let m = &q.shared.metrics;
        tokio::time::timeout(Duration::from_secs(10), async {
            while m.samples_retried.get() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the first batch is retried");
        // Chunks of 3 (the room). The shard is stuck retrying its batch of 10, which took one
        // sample of the 4th chunk; it holds the other 2, whose room is not given back, so
        // the 5th chunk does not fit: 12 samples, capacity + batch at most.
        let pending = m.samples_pending.get();
        assert_eq!(pending, 12, "samples pending");
        // Another retry round of the stuck batch (10 to 20 ms of backoff): the producer had
        // every chance to go on, and did not.
        tokio::time::timeout(Duration::from_secs(10), async {
            while m.samples_retried.get() < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the batch is retried again");
        assert_eq!(m.samples_pending.get(), pending, "the producer kept going");
        assert!(!producer.is_finished());
        let report = q.flush(Instant::now() + Duration::from_millis(100)).await;
        assert!(!report.complete);
        let err = producer.await.unwrap().unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{} samples were not queued", 100 - pending)),
            "{err}"
        );
        assert_eq!(m.samples_pending.get(), 0);
        assert_eq!(m.samples_dropped.get() as i64, pending);
    }

    #[tokio::test]
    async fn metadata_goes_in_batches_without_samples() {
        let (url, got) = receiver().await;
        let q = queue(url, true, 2);
        let md: Vec<MetricMetadata> = (0..5)
            .map(|i| MetricMetadata {
                r#type: 1,
                metric_family_name: format!("m{i}"),
                help: format!("help {i}"),
                unit: String::new(),
            })
            .collect();
        q.send_metadata(&md).await.unwrap();
        let reqs = got.lock().unwrap().clone();
        let sizes: Vec<usize> = reqs.iter().map(|r| r.metadata.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(reqs.iter().all(|r| r.timeseries.is_empty()));
        let all: Vec<MetricMetadata> = reqs.into_iter().flat_map(|r| r.metadata).collect();
        assert_eq!(all, md);
        let m = &q.shared.metrics;
        assert_eq!(m.metadata.get(), 5);
        assert!(m.metadata_bytes.get() > 0);
        assert_eq!(m.bytes.get(), 0, "bytes_total counts data, not metadata");
    }

    fn inputs(in_rate: f64, out_rate: f64, send: f64, pending: f64, current: usize) -> ShardInputs {
        ShardInputs {
            samples_in_rate: in_rate,
            samples_out_rate: out_rate,
            send_seconds_rate: send,
            pending,
            update_interval_secs: 10.0,
            current,
            min: 1,
            max: 50,
        }
    }

    #[test]
    fn desired_shards_rule() {
        // 1000 samples/s out costing 0.5 s/s of sending: 0.5 ms per sample. 10000/s in needs 5.
        assert_eq!(desired_shards(&inputs(10_000.0, 1_000.0, 0.5, 0.0, 1)), 5);
        // Within ±30% of the current count: unchanged.
        assert_eq!(desired_shards(&inputs(10_000.0, 1_000.0, 0.5, 0.0, 6)), 6);
        // Backlog adds 0.1 × pending / interval to the rate to serve.
        assert_eq!(
            desired_shards(&inputs(0.0, 1_000.0, 0.5, 1_000_000.0, 1)),
            5
        );
        // Idle: shrink to min. No output yet: keep.
        assert_eq!(desired_shards(&inputs(0.0, 1_000.0, 0.001, 0.0, 10)), 1);
        assert_eq!(desired_shards(&inputs(5.0, 0.0, 0.0, 100.0, 3)), 3);
        // Clamped to max.
        assert_eq!(desired_shards(&inputs(1e9, 1.0, 1.0, 0.0, 1)), 50);
    }
}
