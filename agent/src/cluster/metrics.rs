//! The metrics of target sharding (registered only in `scraping_service.sharding: targets`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct ShardingMetrics {
    /// Targets assigned to this agent in the epoch it applied.
    pub targets_assigned: Gauge,
    /// Targets that moved to (`direction="in"`) or away from (`"out"`) this agent.
    pub targets_moved: Family<Labels, Counter>,
    /// Published targets the assignment this agent holds gives to nobody.
    pub targets_unassigned: Gauge,
    /// The assignment epoch this agent applied.
    pub assignment_epoch: Gauge,
    /// Per config this agent discovers: targets sharing their identity with another target.
    pub identity_collisions: Family<Labels, Gauge>,
}

impl std::fmt::Debug for ShardingMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardingMetrics")
    }
}

impl ShardingMetrics {
    /// Registers the families (counter names without `_total`: prometheus-client appends it).
    pub fn register(registry: &mut Registry) -> Self {
        let m = ShardingMetrics::default();
        registry.register(
            "agent_targets_assigned",
            "Targets assigned to this agent in the assignment epoch it applied",
            m.targets_assigned.clone(),
        );
        registry.register(
            "agent_targets_moved",
            "Targets that moved to (direction=\"in\") or away from (\"out\") this agent from or to another agent (a target first placed or no longer discovered is not a move)",
            m.targets_moved.clone(),
        );
        registry.register(
            "agent_targets_unassigned",
            "Published targets that the assignment this agent holds gives to no agent",
            m.targets_unassigned.clone(),
        );
        registry.register(
            "agent_assignment_epoch",
            "The target assignment epoch this agent applied",
            m.assignment_epoch.clone(),
        );
        registry.register(
            "agent_target_identity_collisions",
            "Targets of a config discovered here whose identity (job and scrape URL) another \
             target of the config shares; all of them are scraped",
            m.identity_collisions.clone(),
        );
        // Both directions exist from the start at 0, so `rate()` and a dashboard see a series
        // before the first move.
        for direction in ["in", "out"] {
            m.moved(direction);
        }
        m
    }

    pub fn moved(&self, direction: &'static str) -> Counter {
        self.targets_moved
            .get_or_create(&vec![("direction".to_owned(), direction.to_owned())])
            .clone()
    }

    pub fn collisions(&self, config: &str) -> Gauge {
        self.identity_collisions
            .get_or_create(&vec![("config".to_owned(), config.to_owned())])
            .clone()
    }

    pub fn forget_config(&self, config: &str) {
        self.identity_collisions
            .remove(&vec![("config".to_owned(), config.to_owned())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_four_metrics_and_the_collision_gauge() {
        let mut r = Registry::default();
        let m = ShardingMetrics::register(&mut r);
        m.targets_assigned.set(7);
        m.moved("in").inc_by(3);
        m.targets_unassigned.set(1);
        m.assignment_epoch.set(12);
        m.collisions("team/a").set(2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for line in [
            "agent_targets_assigned 7",
            "agent_targets_moved_total{direction=\"in\"} 3",
            "agent_targets_unassigned 1",
            "agent_assignment_epoch 12",
            "agent_target_identity_collisions{config=\"team/a\"} 2",
            "agent_targets_moved_total{direction=\"out\"} 0",
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
        m.forget_config("team/a");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(!out.contains("team/a"));
    }
}
