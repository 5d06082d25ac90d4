//! remote_write: everything from "here are series and samples" to "they arrived at the
//! receiver", per endpoint, as Prometheus's remote storage does it.
//!
//! - [`proto`]: the `prometheus.WriteRequest` wire format and a buffer-reusing encoder.
//! - [`client`]: the HTTP POST (headers, auth, TLS, proxy, timeout) and the classification of
//!   failures (what is retried, what is dropped).
//! - [`queue`]: the [`QueueManager`]: series table, shards, batching, retries with backoff,
//!   resharding, flush on stop, the sent-timestamp watermark for WAL truncation.
//! - [`metrics`]: the `prometheus_remote_storage_*` self-metrics.
//!
//! The WAL watcher (tailing segments) plugs in by calling
//! [`QueueManager::store_series`] for series records and
//! [`QueueManager::append_samples`] for sample records; the instance truncates the WAL below
//! [`QueueManager::lowest_sent_timestamp`]. Series are never removed from a queue's table
//! (its memory is bounded by the series the WAL ever held while the queue ran).

pub mod client;
pub mod metadata;
pub mod metrics;
pub mod proto;
pub mod queue;
pub mod watcher;

pub use client::{ClientError, ClientSettings, RemoteClient, SendError};
pub use metrics::RemoteWriteMetrics;
pub use queue::{
    FlushReport, QueueError, QueueManager, QueueSettings, SentMarks, SeriesFilter, SeriesRef,
};
