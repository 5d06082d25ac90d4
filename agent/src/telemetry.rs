//! The agent's metrics about itself as a whole, for the dashboard and the alerting rules of
//! `packaging/mixin/`: build, configs and instances run here, targets by health, ring members
//! by state, WAL disk use, configs in the store, and the HTTP API's requests by route and code.
//!
//! Gauges that describe a state someone else owns (the instance manager, the ring view, the WAL
//! folders) are read when `/metrics` is scraped ([`AgentMetrics::refresh`]), so they are never
//! stale and the components need no hooks; counters are incremented where things happen. Every
//! label value of a gauge family is written at each refresh, zero included, so alerts and
//! dashboards see `0`, not an absent series.
//!
//! The old agent's names are kept where it had the metric (`agent_build_info`,
//! `agent_metrics_active_configs`, `agent_metrics_active_instances`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::Cluster;
use crate::instance::manager::InstanceManager;
use crate::ring::model::{Desc, InstanceState};

type Labels = Vec<(String, String)>;

/// `agent_api_requests_total`, by route, method and code; see [`count_requests`].
pub type ApiRequests = Family<Labels, Counter>;

/// The ring member states of `agent_ring_members` (dskit's, with `Unhealthy` for a member
/// whose heartbeat is older than `heartbeat_timeout`, whatever its state).
pub const RING_STATES: [&str; 5] = ["ACTIVE", "JOINING", "LEAVING", "PENDING", "Unhealthy"];

/// The target health values of `agent_scrape_targets` (the targets API's `state`).
pub const TARGET_HEALTH: [&str; 3] = ["up", "down", "unknown"];

/// Members of `desc` by [`RING_STATES`] state.
pub fn ring_members(
    desc: &Desc,
    heartbeat_timeout: Duration,
    now: SystemTime,
) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = RING_STATES.iter().map(|s| (*s, 0)).collect();
    for member in desc.ingesters.values() {
        let state = if !member.heartbeat_fresh(heartbeat_timeout, now) {
            "Unhealthy"
        } else {
            match member.instance_state() {
                Some(InstanceState::Active) => "ACTIVE",
                Some(InstanceState::Joining) => "JOINING",
                Some(InstanceState::Leaving) => "LEAVING",
                Some(InstanceState::Pending) => "PENDING",
                // LEFT or a state from a newer writer: not a member that can own anything.
                Some(InstanceState::Left) | None => continue,
            }
        };
        if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
            c.1 += 1;
        }
    }
    counts
}

/// See the module documentation.
#[derive(Clone)]
pub struct AgentMetrics {
    active_configs: Gauge,
    active_instances: Gauge,
    targets: Family<Labels, Gauge>,
    ring_members: Family<Labels, Gauge>,
    wal_disk_bytes: Gauge,
    stored_configs: Gauge,
    api_requests: ApiRequests,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

impl AgentMetrics {
    /// Registers the families (counter names without `_total`: prometheus-client appends it).
    pub fn register(registry: &mut Registry) -> Self {
        let build_info: Family<Labels, Gauge> = Family::default();
        build_info
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        registry.register(
            "agent_build_info",
            "A metric with a constant '1' value labelled by the version of agentctl",
            build_info,
        );
        let m = AgentMetrics {
            active_configs: Gauge::default(),
            active_instances: Gauge::default(),
            targets: Family::default(),
            ring_members: Family::default(),
            wal_disk_bytes: Gauge::default(),
            stored_configs: Gauge::default(),
            api_requests: Family::default(),
        };
        registry.register(
            "agent_metrics_active_configs",
            "Configs this agent runs (in shared mode several may run as one instance)",
            m.active_configs.clone(),
        );
        registry.register(
            "agent_metrics_active_instances",
            "Instances this agent runs (each with its WAL and remote_write queues)",
            m.active_instances.clone(),
        );
        registry.register(
            "agent_scrape_targets",
            "Targets this agent scrapes, by health (up, down, unknown: not scraped yet)",
            m.targets.clone(),
        );
        registry.register(
            "agent_ring_members",
            "Members of the hash ring as this agent sees it, by state; Unhealthy: heartbeat \
             older than heartbeat_timeout, whatever the state",
            m.ring_members.clone(),
        );
        registry.register(
            "agent_wal_disk_bytes",
            "Bytes the instances' WALs (segments and checkpoints) take under wal_directory",
            m.wal_disk_bytes.clone(),
        );
        registry.register(
            "agent_scraping_service_configs",
            "Configs in the KV store at this agent's last full reshard (at most \
             reshard_interval ago; every agent sees all of them)",
            m.stored_configs.clone(),
        );
        registry.register(
            "agent_api_requests",
            "HTTP requests answered, by route (the path template), method and status code",
            m.api_requests.clone(),
        );
        m.set_ring_members([]);
        m
    }

    /// Reads what the gauges describe: the configs, instances and targets `manager` runs, and
    /// the size of the WAL folders under `wal_directory` (read off the async workers).
    pub async fn refresh(&self, manager: &InstanceManager, wal_directory: &Path) {
        self.active_configs.set(manager.names().len() as i64);
        self.active_instances
            .set(manager.instance_names().len() as i64);
        let targets = manager.targets();
        for health in TARGET_HEALTH {
            let n = targets.iter().filter(|t| t.state == health).count();
            self.targets
                .get_or_create(&label("health", health))
                .set(n as i64);
        }
        let dir: PathBuf = wal_directory.to_owned();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || wal_disk_bytes(&dir)).await {
            self.wal_disk_bytes.set(bytes as i64);
        }
    }

    /// Reads the cluster's state: its ring (members by state, heartbeats judged at `now`) and
    /// the configs it found in the store.
    pub fn refresh_cluster(&self, cluster: &Cluster, now: SystemTime) {
        let desc = cluster.view.current();
        self.set_ring_members(ring_members(&desc, cluster.heartbeat_timeout, now));
        self.stored_configs.set(cluster.stored_configs() as i64);
    }

    /// Sets `agent_ring_members` from `(state, count)` pairs; states not given are 0.
    pub fn set_ring_members<'a>(&self, counts: impl IntoIterator<Item = (&'a str, usize)>) {
        let counts: Vec<(&str, usize)> = counts.into_iter().collect();
        for state in RING_STATES {
            let n: usize = counts
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| n)
                .sum();
            self.ring_members
                .get_or_create(&label("state", state))
                .set(n as i64);
        }
    }

    /// The state of [`count_requests`].
    pub fn api_requests(&self) -> ApiRequests {
        self.api_requests.clone()
    }
}

/// An axum middleware counting every answered request in `agent_api_requests_total` (`route`
/// is the matched path template, e.g. `/agent/api/v1/config/{name}`, or `unmatched`). Install
/// it on the router with `axum::middleware::from_fn_with_state(metrics.api_requests(),
/// count_requests)`.
pub async fn count_requests(
    State(requests): State<ApiRequests>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    requests
        .get_or_create(&vec![
            ("route".to_owned(), route),
            ("method".to_owned(), method),
            ("code".to_owned(), resp.status().as_u16().to_string()),
        ])
        .inc();
    resp
}

/// The bytes of the files under every `<wal_directory>/<instance>/wal/` (segments and
/// checkpoints); the embedded KV store and other files are not counted. Unreadable entries
/// count as 0.
fn wal_disk_bytes(wal_directory: &Path) -> u64 {
    fn tree(dir: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => tree(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum()
    }
    let Ok(rd) = std::fs::read_dir(wal_directory) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| tree(&e.path().join("wal")))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_disk_bytes_counts_instance_wals_only() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/wal/checkpoint.00000001")).unwrap();
        std::fs::write(t.path().join("a/wal/00000002"), [0u8; 100]).unwrap();
        std::fs::write(
            t.path().join("a/wal/checkpoint.00000001/00000000"),
            [0u8; 30],
        )
        .unwrap();
        std::fs::create_dir_all(t.path().join("b/wal")).unwrap();
        std::fs::write(t.path().join("b/wal/00000000"), [0u8; 7]).unwrap();
        std::fs::write(t.path().join("kv.redb"), [0u8; 1000]).unwrap();
        std::fs::write(t.path().join("a/other"), [0u8; 1000]).unwrap();
        assert_eq!(wal_disk_bytes(t.path()), 137);
        assert_eq!(wal_disk_bytes(&t.path().join("missing")), 0);
    }

    #[test]
    fn ring_states_not_given_are_zero() {
        let mut r = Registry::default();
        let m = AgentMetrics::register(&mut r);
        m.set_ring_members([("ACTIVE", 2), ("Unhealthy", 1)]);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for want in [
            "agent_ring_members{state=\"ACTIVE\"} 2",
            "agent_ring_members{state=\"LEAVING\"} 0",
            "agent_ring_members{state=\"Unhealthy\"} 1",
            "agent_build_info{version=\"",
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
    }
}
