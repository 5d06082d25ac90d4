//! `host_filter`: an instance keeps only the discovered targets that run on this host, as the
//! old agent's host filter does (for agents run one per node, a DaemonSet).
//!
//! The host is `$HOSTNAME`, or else the kernel's host name. For each target of a discovery
//! group, its labels (the target's over the group's) are relabelled with
//! `host_filter_relabel_configs`, for the filter only (the target itself is relabelled as
//! usual afterwards). The target is kept when `__address__`, or any of [`NODE_LABELS`] that is
//! not empty, names this host, `localhost` or `127.0.0.1` (a `host:port` value is compared by
//! its host). As in the old agent, a target whose filter relabelling dropped it, or that has no
//! `__address__`, is kept (the scrape side then reports or drops it).
//!
//! A `kubernetes_sd_configs` entry with `role: pod` asks the API server for this node's pods
//! only ([`HostFilter::narrowed`]: the field selector `spec.nodeName=<host>`), so that agents
//! run one per node do not each list and watch every pod of the cluster. The old agent replaced
//! the entry's selectors with that one; agentctl adds it to them (docs/compat.md).

use super::target::{group_and_target, split_host_port};
use crate::config::kubernetes_selector::escape_field_value;
use crate::config::relabel::RelabelConfig;
use crate::config::scrape::ScrapeConfig;
use crate::config::sd::KubernetesRole;
use crate::labels::Labels;
use crate::relabel;

/// The labels that name a target's node, checked after `__address__`.
pub const NODE_LABELS: [&str; 7] = [
    "__meta_consul_node",
    "__meta_dockerswarm_node_id",
    "__meta_dockerswarm_node_hostname",
    "__meta_dockerswarm_node_address",
    "__meta_kubernetes_pod_node_name",
    "__meta_kubernetes_node_name",
    "__host__",
];

/// The filter of one instance (see the module docs).
#[derive(Debug, Clone)]
pub struct HostFilter {
    host: String,
    rules: Vec<RelabelConfig>,
}

impl HostFilter {
    pub fn new(host: impl Into<String>, rules: Vec<RelabelConfig>) -> Self {
        HostFilter {
            host: host.into(),
            rules,
        }
    }

    /// The filter for this host: `$HOSTNAME`, or else the kernel's host name.
    pub fn for_this_host(rules: Vec<RelabelConfig>) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(crate::host::kernel_hostname)
            .unwrap_or_default();
        HostFilter::new(host, rules)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the target with labels `target` in a group with labels `group` runs here.
    pub fn keeps(&self, group: &Labels, target: &Labels) -> bool {
        let mut lb = group_and_target(group, target);
        if !relabel::process(&mut lb, &self.rules) {
            return true;
        }
        let Some(address) = lb.get("__address__").filter(|a| !a.is_empty()) else {
            return true;
        };
        self.names_this_host(address)
            || NODE_LABELS.iter().any(|n| {
                lb.get(n)
                    .is_some_and(|v| !v.is_empty() && self.names_this_host(v))
            })
    }

    /// `cfg` with its `role: pod` Kubernetes discoveries asking for the pods on this host only:
    /// `spec.nodeName=<host>` added to their pod field selector (see the module docs). `None`
    /// when there is none, or the host is unknown.
    pub fn narrowed(&self, cfg: &ScrapeConfig) -> Option<ScrapeConfig> {
        let pods = |sd: &crate::config::sd::KubernetesSd| sd.role == KubernetesRole::Pod;
        if self.host.is_empty() || !cfg.kubernetes_sd_configs.iter().any(pods) {
            return None;
        }
        let node = format!("spec.nodeName={}", escape_field_value(&self.host));
        let mut out = cfg.clone();
        for sd in out.kubernetes_sd_configs.iter_mut().filter(|sd| pods(sd)) {
            let selector = sd.selectors.entry(KubernetesRole::Pod).or_default();
            selector.field = if selector.field.is_empty() {
                node.clone()
            } else {
                format!("{},{node}", selector.field)
            };
        }
        Some(out)
    }

    fn names_this_host(&self, value: &str) -> bool {
        let host = split_host_port(value).map_or(value, |(h, _)| h);
        host == "localhost" || host == "127.0.0.1" || host == self.host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_discovery_is_narrowed_to_this_node_and_keeps_its_own_selectors() {
        let jobs = |yaml: &str| {
            let text =
                format!("scrape_configs:\n  - job_name: k\n    kubernetes_sd_configs:\n{yaml}");
            let (_, cfg) =
                crate::config::load::parse_instance(&text, &crate::config::GlobalConfig::default())
                    .unwrap();
            cfg.scrape_configs.into_iter().next().unwrap()
        };
        let cfg = jobs(concat!(
            "      - role: pod\n",
            "        api_server: http://127.0.0.1:1\n",
            "        selectors: [{role: pod, field: 'status.phase=Running', label: 'a=b'}]\n",
            "      - role: pod\n",
            "        api_server: http://127.0.0.1:1\n",
            "      - role: node\n",
            "        api_server: http://127.0.0.1:1\n",
        ));
        let narrowed = HostFilter::new("node-a", Vec::new())
            .narrowed(&cfg)
            .unwrap();
        let pod = |i: usize| narrowed.kubernetes_sd_configs[i].selector(KubernetesRole::Pod);
        assert_eq!(pod(0).field, "status.phase=Running,spec.nodeName=node-a");
        assert_eq!(pod(0).label, "a=b");
        assert_eq!(pod(1).field, "spec.nodeName=node-a");
        assert_eq!(
            narrowed.kubernetes_sd_configs[2], cfg.kubernetes_sd_configs[2],
            "a node discovery is left alone"
        );
        let odd = HostFilter::new(r"a,b=c\d", Vec::new())
            .narrowed(&cfg)
            .unwrap();
        assert_eq!(
            odd.kubernetes_sd_configs[1]
                .selector(KubernetesRole::Pod)
                .field,
            r"spec.nodeName=a\,b\=c\\d"
        );
        // What the config's validation reads back as one valid term.
        assert_eq!(
            crate::config::kubernetes_selector::check_field_selector(
                &odd.kubernetes_sd_configs[1]
                    .selector(KubernetesRole::Pod)
                    .field
            ),
            Ok(())
        );
        assert!(HostFilter::new("", Vec::new()).narrowed(&cfg).is_none());
        let nodes_only = jobs("      - role: node\n        api_server: http://127.0.0.1:1\n");
        assert!(HostFilter::new("node-a", Vec::new())
            .narrowed(&nodes_only)
            .is_none());
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn keeps_what_names_this_host_localhost_or_has_no_address() {
        let f = HostFilter::new("node-a", Vec::new());
        let none = l(&[]);
        let keeps = |t: &[(&str, &str)]| f.keeps(&none, &l(t));
        assert!(keeps(&[("__address__", "node-a:9100")]));
        assert!(keeps(&[("__address__", "node-a")]));
        assert!(keeps(&[("__address__", "localhost:9100")]));
        assert!(keeps(&[("__address__", "127.0.0.1:9100")]));
        assert!(keeps(&[]), "no address: kept, the scrape side reports it");
        assert!(!keeps(&[("__address__", "node-b:9100")]));
        assert!(!keeps(&[("__address__", "node-a.example:9100")]));
        assert!(keeps(&[
            ("__address__", "10.0.0.7:8080"),
            ("__meta_kubernetes_pod_node_name", "node-a")
        ]));
        assert!(!keeps(&[
            ("__address__", "10.0.0.7:8080"),
            ("__meta_kubernetes_pod_node_name", "node-b")
        ]));
        assert!(keeps(&[
            ("__address__", "10.0.0.7:8080"),
            ("__meta_consul_node", "node-a:8500")
        ]));
        // The target's labels win over the group's.
        let group = l(&[("__meta_kubernetes_node_name", "node-a")]);
        assert!(f.keeps(&group, &l(&[("__address__", "10.0.0.7:80")])));
        assert!(!f.keeps(
            &group,
            &l(&[
                ("__address__", "10.0.0.7:80"),
                ("__meta_kubernetes_node_name", "node-b")
            ])
        ));
    }

    #[test]
    fn the_filter_relabelling_decides_and_a_drop_keeps_the_target() {
        let rules = |yaml: &str| {
            let raw: Vec<crate::config::relabel::RelabelConfigRaw> =
                serde_yaml::from_str(yaml).unwrap();
            crate::config::relabel::validate_all(&raw, "host_filter_relabel_configs").unwrap()
        };
        let f = HostFilter::new(
            "node-a",
            rules("- source_labels: [__meta_machine]\n  target_label: __host__\n"),
        );
        let none = l(&[]);
        assert!(f.keeps(
            &none,
            &l(&[("__address__", "10.0.0.7:80"), ("__meta_machine", "node-a")])
        ));
        assert!(!f.keeps(
            &none,
            &l(&[("__address__", "10.0.0.7:80"), ("__meta_machine", "node-b")])
        ));
        let drop = HostFilter::new(
            "node-a",
            rules("- action: drop\n  regex: .*\n  source_labels: [__address__]\n"),
        );
        assert!(drop.keeps(&none, &l(&[("__address__", "node-b:80")])));
    }
}
