//! Metadata sending, as Prometheus's `MetadataWatcher`: every `metadata_config.send_interval`
//! the metadata of every active target (one entry per metric family, duplicates across
//! targets removed) is sent to the endpoint as `WriteRequest.metadata`, in requests of
//! `metadata_config.max_samples_per_send` entries that carry no samples
//! ([`QueueManager::send_metadata`]). Nothing is kept between sends: the scrape loops own the
//! metadata and this task only borrows a snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::proto;
use super::queue::QueueManager;
use crate::scrape::metadata::MetricMetadata;
use crate::scrape::parse::MetricType;

/// `prometheus.MetricMetadata.MetricType` for a family type.
pub fn proto_type(t: MetricType) -> proto::MetricType {
    match t {
        MetricType::Counter => proto::MetricType::Counter,
        MetricType::Gauge => proto::MetricType::Gauge,
        MetricType::Histogram => proto::MetricType::Histogram,
        MetricType::GaugeHistogram => proto::MetricType::Gaugehistogram,
        MetricType::Summary => proto::MetricType::Summary,
        MetricType::Info => proto::MetricType::Info,
        MetricType::StateSet => proto::MetricType::Stateset,
        MetricType::Unknown => proto::MetricType::Unknown,
    }
}

/// The wire form of one entry.
pub fn to_proto(m: &MetricMetadata) -> proto::MetricMetadata {
    proto::MetricMetadata {
        r#type: proto_type(m.kind) as i32,
        metric_family_name: m.family.to_string(),
        help: m.help.to_string(),
        unit: m.unit.to_string(),
    }
}

/// Sends `source()` every `interval` until `stop`. A send that is still retrying when the
/// next one is due delays it (one send at a time, as in Prometheus); `stop` abandons it.
/// Run it in the queue's span ([`QueueManager::span`]).
pub async fn run(
    queue: Arc<QueueManager>,
    interval: Duration,
    source: impl Fn() -> Vec<MetricMetadata> + Send + 'static,
    stop: CancellationToken,
) {
    let interval = interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries: Vec<proto::MetricMetadata> = source().iter().map(to_proto).collect();
        if entries.is_empty() {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            res = queue.send_metadata(&entries) => {
                if let Err(e) = res {
                    tracing::warn!(error = %e, "remote_write: metadata not sent");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_map_to_the_proto_enum_and_strings() {
        let m = MetricMetadata {
            family: Arc::from("http_requests"),
            kind: MetricType::Counter,
            help: Arc::from("Requests."),
            unit: Arc::from(""),
        };
        let p = to_proto(&m);
        assert_eq!(p.r#type, 1);
        assert_eq!(p.metric_family_name, "http_requests");
        assert_eq!(p.help, "Requests.");
        assert_eq!(p.unit, "");
        let numbers: Vec<i32> = [
            MetricType::Unknown,
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::GaugeHistogram,
            MetricType::Summary,
            MetricType::Info,
            MetricType::StateSet,
        ]
        .into_iter()
        .map(|t| proto_type(t) as i32)
        .collect();
        assert_eq!(numbers, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
