//! remote_write self-metrics, with Prometheus's names and labels (`remote_name`, `url`) so the
//! dashboards written for Prometheus and the old agent work unchanged.
//!
//! One [`RemoteWriteMetrics`] per instance, registered in the registry the instance is given
//! (the daemon hands each instance a sub-registry labelled with its name, as the old agent
//! did); each [`QueueManager`](super::QueueManager) takes its labelled children from it.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Prometheus's `sent_batch_duration_seconds` buckets: the default buckets plus 25s..300s,
/// because a batch can take up to `remote_timeout` (30s by default) per attempt.
const BATCH_DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0,
];

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_DURATION_BUCKETS)
}

/// The metric families; cheap to clone (they share their storage).
#[derive(Clone)]
pub struct RemoteWriteMetrics {
    samples: Family<Labels, Counter>,
    samples_failed: Family<Labels, Counter>,
    samples_retried: Family<Labels, Counter>,
    samples_dropped: Family<Labels, Counter>,
    samples_pending: Family<Labels, Gauge>,
    metadata: Family<Labels, Counter>,
    metadata_failed: Family<Labels, Counter>,
    metadata_retried: Family<Labels, Counter>,
    metadata_bytes: Family<Labels, Counter>,
    exemplars: Family<Labels, Counter>,
    exemplars_failed: Family<Labels, Counter>,
    exemplars_retried: Family<Labels, Counter>,
    exemplars_dropped: Family<Labels, Counter>,
    exemplars_pending: Family<Labels, Gauge>,
    bytes: Family<Labels, Counter>,
    highest_sent: Family<Labels, FloatGauge>,
    shards: Family<Labels, Gauge>,
    shards_desired: Family<Labels, FloatGauge>,
    shards_min: Family<Labels, Gauge>,
    shards_max: Family<Labels, Gauge>,
    batch_duration: Family<Labels, Histogram, fn() -> Histogram>,
    resend_split_requests: Family<Labels, Counter>,
    highest_timestamp: FloatGauge,
}

impl std::fmt::Debug for RemoteWriteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteWriteMetrics")
    }
}

impl RemoteWriteMetrics {
    /// Registers the families in `registry`. Counter names are given without `_total`:
    /// prometheus-client appends it.
    pub fn register(registry: &mut Registry) -> Self {
        let m = RemoteWriteMetrics {
            samples: Family::default(),
            samples_failed: Family::default(),
            samples_retried: Family::default(),
            samples_dropped: Family::default(),
            samples_pending: Family::default(),
            metadata: Family::default(),
            metadata_failed: Family::default(),
            metadata_retried: Family::default(),
            metadata_bytes: Family::default(),
            exemplars: Family::default(),
            exemplars_failed: Family::default(),
            exemplars_retried: Family::default(),
            exemplars_dropped: Family::default(),
            exemplars_pending: Family::default(),
            bytes: Family::default(),
            highest_sent: Family::default(),
            shards: Family::default(),
            shards_desired: Family::default(),
            shards_min: Family::default(),
            shards_max: Family::default(),
            batch_duration: Family::new_with_constructor(batch_histogram),
            resend_split_requests: Family::default(),
            highest_timestamp: FloatGauge::default(),
        };
        let p = "prometheus_remote_storage_";
        registry.register(
            format!("{p}samples"),
            "Total number of samples sent to remote storage.",
            m.samples.clone(),
        );
        registry.register(format!("{p}samples_failed"), "Total number of samples which failed on send to remote storage, non-recoverable errors.", m.samples_failed.clone());
        registry.register(format!("{p}samples_retried"), "Total number of samples which failed on send to remote storage but were retried because the send error was recoverable.", m.samples_retried.clone());
        registry.register(format!("{p}samples_dropped"), "Total number of samples which were dropped after being read from the WAL before being sent via remote write, either via relabelling, due to being unknown series, because they were older than sample_age_limit, or because the queue was stopped before they could be sent.", m.samples_dropped.clone());
        registry.register(
            format!("{p}samples_pending"),
            "The number of samples pending in the queues shards to be sent to the remote storage.",
            m.samples_pending.clone(),
        );
        registry.register(
            format!("{p}metadata"),
            "Total number of metadata entries sent to remote storage.",
            m.metadata.clone(),
        );
        registry.register(format!("{p}metadata_failed"), "Total number of metadata entries which failed on send to remote storage, non-recoverable errors.", m.metadata_failed.clone());
        registry.register(format!("{p}metadata_retried"), "Total number of metadata entries which failed on send to remote storage but were retried because the send error was recoverable.", m.metadata_retried.clone());
        registry.register(
            format!("{p}metadata_bytes"),
            "The total number of bytes of metadata sent by the queue after compression.",
            m.metadata_bytes.clone(),
        );
        registry.register(
            format!("{p}exemplars"),
            "Total number of exemplars sent to remote storage.",
            m.exemplars.clone(),
        );
        registry.register(format!("{p}exemplars_failed"), "Total number of exemplars which failed on send to remote storage, non-recoverable errors.", m.exemplars_failed.clone());
        registry.register(format!("{p}exemplars_retried"), "Total number of exemplars which failed on send to remote storage but were retried because the send error was recoverable.", m.exemplars_retried.clone());
        registry.register(format!("{p}exemplars_dropped"), "Total number of exemplars which were dropped after being read from the WAL before being sent via remote write, either via relabelling, due to being unknown series, or because the queue was stopped before they could be sent.", m.exemplars_dropped.clone());
        registry.register(
            format!("{p}exemplars_pending"),
            "The number of exemplars pending in the queues shards to be sent to the remote storage.",
            m.exemplars_pending.clone(),
        );
        registry.register(
            format!("{p}bytes"),
            "The total number of bytes of data (not metadata) sent by the queue after compression.",
            m.bytes.clone(),
        );
        registry.register(format!("{p}queue_highest_sent_timestamp_seconds"), "Timestamp from a WAL sample, the highest timestamp successfully sent by this queue, in seconds since epoch.", m.highest_sent.clone());
        registry.register(
            format!("{p}shards"),
            "The number of shards used for parallel sending to the remote storage.",
            m.shards.clone(),
        );
        registry.register(format!("{p}shards_desired"), "The number of shards that the queues shard calculation wants to run based on the rate of samples in vs. samples out.", m.shards_desired.clone());
        registry.register(
            format!("{p}shards_min"),
            "The minimum number of shards that the queue is allowed to run.",
            m.shards_min.clone(),
        );
        registry.register(
            format!("{p}shards_max"),
            "The maximum number of shards that the queue is allowed to run.",
            m.shards_max.clone(),
        );
        registry.register(
            format!("{p}sent_batch_duration_seconds"),
            "Duration of send calls to the remote storage.",
            m.batch_duration.clone(),
        );
        registry.register(
            "agent_remote_write_resend_split_requests",
            "Requests sent again in halves after the receiver refused a request with 400 in the \
             first batches after a start (what a crash may have delivered without the progress \
             file knowing): each refused half is split again, down to single samples, which are \
             dropped and counted in prometheus_remote_storage_samples_failed_total.",
            m.resend_split_requests.clone(),
        );
        registry.register(format!("{p}highest_timestamp_in_seconds"), "Highest timestamp that has come into the remote storage via the Appender interface, in seconds since epoch.", m.highest_timestamp.clone());
        m
    }

    /// The children labelled for one endpoint.
    pub(crate) fn for_endpoint(&self, remote_name: &str, url: &str) -> EndpointMetrics {
        let l: Labels = vec![
            ("remote_name".to_owned(), remote_name.to_owned()),
            ("url".to_owned(), url.to_owned()),
        ];
        EndpointMetrics {
            samples: self.samples.get_or_create(&l).clone(),
            samples_failed: self.samples_failed.get_or_create(&l).clone(),
            samples_retried: self.samples_retried.get_or_create(&l).clone(),
            samples_dropped: self.samples_dropped.get_or_create(&l).clone(),
            samples_pending: self.samples_pending.get_or_create(&l).clone(),
            metadata: self.metadata.get_or_create(&l).clone(),
            metadata_failed: self.metadata_failed.get_or_create(&l).clone(),
            metadata_retried: self.metadata_retried.get_or_create(&l).clone(),
            metadata_bytes: self.metadata_bytes.get_or_create(&l).clone(),
            exemplars: self.exemplars.get_or_create(&l).clone(),
            exemplars_failed: self.exemplars_failed.get_or_create(&l).clone(),
            exemplars_retried: self.exemplars_retried.get_or_create(&l).clone(),
            exemplars_dropped: self.exemplars_dropped.get_or_create(&l).clone(),
            exemplars_pending: self.exemplars_pending.get_or_create(&l).clone(),
            bytes: self.bytes.get_or_create(&l).clone(),
            highest_sent: self.highest_sent.get_or_create(&l).clone(),
            shards: self.shards.get_or_create(&l).clone(),
            shards_desired: self.shards_desired.get_or_create(&l).clone(),
            shards_min: self.shards_min.get_or_create(&l).clone(),
            shards_max: self.shards_max.get_or_create(&l).clone(),
            batch_duration: self.batch_duration.get_or_create(&l).clone(),
            resend_split_requests: self.resend_split_requests.get_or_create(&l).clone(),
            highest_timestamp: self.highest_timestamp.clone(),
        }
    }
}

/// One endpoint's metric handles.
#[derive(Clone, Debug)]
pub(crate) struct EndpointMetrics {
    pub samples: Counter,
    pub samples_failed: Counter,
    pub samples_retried: Counter,
    pub samples_dropped: Counter,
    pub samples_pending: Gauge,
    pub metadata: Counter,
    pub metadata_failed: Counter,
    pub metadata_retried: Counter,
    pub metadata_bytes: Counter,
    pub exemplars: Counter,
    pub exemplars_failed: Counter,
    pub exemplars_retried: Counter,
    pub exemplars_dropped: Counter,
    pub exemplars_pending: Gauge,
    pub bytes: Counter,
    pub highest_sent: FloatGauge,
    pub shards: Gauge,
    pub shards_desired: FloatGauge,
    pub shards_min: Gauge,
    pub shards_max: Gauge,
    pub batch_duration: Histogram,
    pub resend_split_requests: Counter,
    pub highest_timestamp: FloatGauge,
}

impl EndpointMetrics {
    /// Raises the per-instance highest-appended-timestamp gauge (never lowers it: several
    /// queues of one instance share it).
    pub fn observe_appended(&self, ts_ms: i64) {
        let secs = ts_ms as f64 / 1000.0;
        if secs > self.highest_timestamp.get() {
            self.highest_timestamp.set(secs);
        }
    }
}
