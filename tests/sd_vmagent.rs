//! The second oracle: vmagent (Debian's `victoria-metrics`) and agentctl read the same fake
//! Kubernetes API server and fake Consul agent with the same `scrape_configs`, and must discover
//! the same targets, target for target: the same discovered `__address__` and `__meta_*`
//! labels, and the same labels after relabelling (every meta label is kept through a
//! `labelmap`, so each target is told apart by all of them). Every role is compared, then again
//! after each change of a sequence (pod added, pod IP changed, pod deleted, endpoints ready and
//! not ready, service deleted, namespace filter, selectors, a consul instance registered and
//! deregistered).
//!
//! Where vmagent 1.79.5 and Prometheus 2.49 differ, Prometheus's ported tests
//! (tests/kubernetes_sd.rs, tests/consul_sd.rs) are what agentctl follows; those labels are
//! listed in `VMAGENT_DIFFERENCES` with the reason, left out of the comparison on both sides,
//! and each listed difference must actually be seen (the list cannot go stale).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::consul::{instance, FakeConsul};
use crate::support::kube::FakeKube;
use crate::support::vmagent::VmAgent;
use crate::support::Agent;

/// Labels agentctl (as Prometheus 2.49) sets and vmagent 1.79.5 does not, or the other way
/// round: (jobs it is seen in, label, reason). A label ending in `_` stands for every label it
/// starts; a job ending in `*` is only the targets without the label after the `*`. Besides
/// these, vmagent lists discovered labels with empty values, which Prometheus (and agentctl)
/// drop: an empty label is no label, in relabelling as in the targets API; they are left out of
/// vmagent's side.
const VMAGENT_DIFFERENCES: &[(&[&str], &str, &str)] = &[
    (
        &["k8s-pod", "k8s-pod-attach", "k8s-pod-team-a", "k8s-pod-selected"],
        "__meta_kubernetes_pod_container_id",
        "vmagent 1.79.5 has no container ID label; Prometheus sets it (pod_test.go)",
    ),
    (
        &[
            "k8s-pod",
            "k8s-pod-attach",
            "k8s-pod-team-a",
            "k8s-pod-selected",
            "k8s-endpoints",
            "k8s-endpointslice",
        ],
        "__meta_kubernetes_pod_container_image",
        "vmagent 1.79.5 has no container image label; Prometheus sets it on pod, endpoints and \
         endpointslice targets (pod_test.go, endpoints_test.go, endpointslice_test.go)",
    ),
    (
        &["k8s-service"],
        "__meta_kubernetes_service_port_number",
        "vmagent 1.79.5 has no service port number label; Prometheus sets it (service_test.go)",
    ),
    (
        &["k8s-service"],
        "__meta_kubernetes_service_loadbalancer_ip",
        "vmagent 1.79.5 has no load balancer IP label; Prometheus sets it for LoadBalancer \
         services (service_test.go)",
    ),
    (
        &["k8s-endpointslice"],
        "__meta_kubernetes_endpointslice_endpoint_conditions_serving",
        "vmagent 1.79.5 reads only the ready condition; Prometheus also serving and terminating \
         (endpointslice_test.go)",
    ),
    (
        &["k8s-endpointslice"],
        "__meta_kubernetes_endpointslice_endpoint_conditions_terminating",
        "as serving",
    ),
    (
        &["k8s-endpoints", "k8s-endpointslice"],
        "__meta_kubernetes_service_cluster_ip",
        "vmagent puts the service's cluster IP and type on endpoints targets; Prometheus puts only \
         the service's name, labels and annotations there (endpoints_test.go \
         TestEndpointsDiscoveryWithService)",
    ),
    (
        &["k8s-endpoints", "k8s-endpointslice"],
        "__meta_kubernetes_service_type",
        "as the cluster IP",
    ),
    (
        &["k8s-endpoints*__meta_kubernetes_endpoint_port_name"],
        "__meta_kubernetes_endpoints_",
        "the targets of container ports no endpoint port covers: Prometheus adds them to the \
         endpoints' group, so they carry the group's endpoints labels (endpoints_test.go \
         TestEndpointsDiscoveryAdd); vmagent 1.79.5 builds them without",
    ),
    (
        &["k8s-endpointslice*__meta_kubernetes_endpointslice_port"],
        "__meta_kubernetes_endpointslice_",
        "as for endpoints (endpointslice_test.go TestEndpointSliceDiscoveryAdd)",
    ),
];

type LabelMap = BTreeMap<String, String>;

/// One target as compared: job, discovered `__address__`/`__meta_*` labels, final labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    job: String,
    discovered: LabelMap,
    labels: LabelMap,
}

fn as_map(v: &Value) -> LabelMap {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn seen(job: &str, discovered: &Value, labels: &Value) -> Seen {
    Seen {
        job: job.to_owned(),
        discovered: as_map(discovered)
            .into_iter()
            .filter(|(k, _)| k == "__address__" || k.starts_with("__meta_"))
            .collect(),
        labels: as_map(labels),
    }
}

fn agentctl_targets(a: &Agent) -> Vec<Seen> {
    a.data("/agent/api/v1/metrics/targets")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            seen(
                t["target_group"].as_str().unwrap_or_default(),
                &t["discovered_labels"],
                &t["labels"],
            )
        })
        .collect()
}

fn vmagent_targets(v: &VmAgent) -> Vec<Seen> {
    v.active_targets()
        .iter()
        .map(|t| {
            seen(
                t["scrapePool"].as_str().unwrap_or_default(),
                &t["discoveredLabels"],
                &t["labels"],
            )
        })
        .collect()
}

/// Leaves out the listed differences (the meta label and its `labelmap` copy, in the jobs
/// listed), and on vmagent's side labels with empty values; records which were present.
fn normalize(
    mut targets: Vec<Seen>,
    vmagent: bool,
    found: &mut BTreeSet<&'static str>,
) -> Vec<Seen> {
    for t in &mut targets {
        if vmagent {
            t.discovered.retain(|_, v| !v.is_empty());
            t.labels.retain(|_, v| !v.is_empty());
        }
        for (jobs, name, _) in VMAGENT_DIFFERENCES {
            let applies = jobs.iter().any(|j| match j.split_once('*') {
                Some((job, without)) => job == t.job && !t.discovered.contains_key(without),
                None => *j == t.job,
            });
            if !applies {
                continue;
            }
            let hit = |k: &String| match name.strip_suffix('_') {
                Some(_) => k.starts_with(*name),
                None => k == name,
            };
            let mapped = name.trim_start_matches("__meta_");
            let hit_mapped = |k: &String| match mapped.strip_suffix('_') {
                Some(_) => k.starts_with(mapped),
                None => k == mapped,
            };
            let before = t.discovered.len() + t.labels.len();
            t.discovered.retain(|k, _| !hit(k));
            t.labels.retain(|k, _| !hit_mapped(k));
            if t.discovered.len() + t.labels.len() < before {
                found.insert(name);
            }
        }
    }
    targets.sort();
    targets
}

/// Waits until both agree and `done` holds for agentctl's targets; panics with the difference.
fn converge(
    step: &str,
    agent: &Agent,
    vm: &VmAgent,
    found: &mut BTreeSet<&'static str>,
    done: impl Fn(&[Seen]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut f = BTreeSet::new();
        let ours = normalize(agentctl_targets(agent), false, &mut f);
        let theirs = normalize(vmagent_targets(vm), true, &mut f);
        if ours == theirs && done(&ours) {
            found.extend(f);
            return;
        }
        if Instant::now() > deadline {
            let names = |ts: &[Seen]| -> BTreeMap<String, BTreeSet<String>> {
                let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for t in ts {
                    m.entry(t.job.clone())
                        .or_default()
                        .extend(t.discovered.keys().cloned());
                }
                m
            };
            let (na, nb) = (names(&ours), names(&theirs));
            let mut name_diff = String::new();
            for (job, a) in &na {
                let b = nb.get(job).cloned().unwrap_or_default();
                let oa: Vec<&String> = a.difference(&b).collect();
                let ob: Vec<&String> = b.difference(a).collect();
                if !oa.is_empty() || !ob.is_empty() {
                    name_diff.push_str(&format!(
                        "{job}: only agentctl {oa:?}; only vmagent {ob:?}\n"
                    ));
                }
            }
            let a: BTreeSet<&Seen> = ours.iter().collect();
            let b: BTreeSet<&Seen> = theirs.iter().collect();
            let only_ours: Vec<&&Seen> = a.difference(&b).collect();
            let only_theirs: Vec<&&Seen> = b.difference(&a).collect();
            panic!(
                "{step}: agentctl and vmagent differ (or the change never showed; done={})\n\
                 label names on one side only:\n{name_diff}\
                 only agentctl ({}):\n{only_ours:#?}\nonly vmagent ({}):\n{only_theirs:#?}\n\
                 vmagent log:\n{}",
                done(&ours),
                only_ours.len(),
                only_theirs.len(),
                vm.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn addresses(targets: &[Seen], job: &str) -> Vec<String> {
    let mut v: Vec<String> = targets
        .iter()
        .filter(|t| t.job == job)
        .map(|t| t.discovered["__address__"].clone())
        .collect();
    v.sort();
    v
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value, node: &str) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels,
                     "annotations": {"prometheus.io/scrape": "true"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": format!("{name}-rs"), "controller": true}]},
        "spec": {"nodeName": node,
                 "containers": [
                    {"name": "app", "image": "app:1", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
                    {"name": "sidecar", "image": "sidecar:1"}],
                 "initContainers": [{"name": "init", "image": "init:1"}]},
        "status": {"podIP": ip, "hostIP": "127.0.10.1", "phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "app", "containerID": format!("containerd://{name}-app")},
                                         {"name": "sidecar", "containerID": format!("containerd://{name}-sc")}],
                   "initContainerStatuses": [{"name": "init", "containerID": format!("containerd://{name}-init")}]}})
}

fn endpoints(ready: &[(&str, &str)], not_ready: &[(&str, &str)]) -> Value {
    let addr = |(ip, pod): &(&str, &str)| {
        json!({"ip": ip, "nodeName": "node-1",
               "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
    };
    json!({"kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "subsets": [{"addresses": ready.iter().map(addr).collect::<Vec<_>>(),
                     "notReadyAddresses": not_ready.iter().map(addr).collect::<Vec<_>>(),
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]})
}

fn slice(ready: &[(&str, &str, bool)]) -> Value {
    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "web-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": ready.iter().map(|(ip, pod, r)| json!({
            "addresses": [ip], "nodeName": "node-1",
            "conditions": {"ready": r, "serving": r, "terminating": false},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})).collect::<Vec<_>>()})
}

fn world(k: &FakeKube) {
    for (name, ip, labels, kind) in [
        ("node-1", "127.0.10.1", json!({"zone": "a"}), "InternalIP"),
        ("node-2", "127.0.10.2", json!({"zone": "b"}), "ExternalIP"),
    ] {
        k.create(json!({"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha/ttl": "0"}},
            "spec": {"providerID": format!("fake:///{name}")},
            "status": {"addresses": [{"type": kind, "address": ip}, {"type": "Hostname", "address": name}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}));
    }
    k.create(pod(
        "default",
        "web-0",
        "127.0.1.1",
        json!({"app": "web"}),
        "node-1",
    ));
    k.create(pod(
        "default",
        "web-1",
        "127.0.1.2",
        json!({"app": "web"}),
        "node-2",
    ));
    k.create(pod(
        "team-a",
        "api-0",
        "127.0.2.1",
        json!({"app": "api"}),
        "node-1",
    ));
    k.create(pod(
        "team-b",
        "db-0",
        "127.0.3.1",
        json!({"app": "db"}),
        "node-2",
    ));
    k.create(json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}));
    k.create(json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "db", "namespace": "team-b"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com",
                 "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}));
    k.create(json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "lb", "namespace": "team-a"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "loadBalancerIP": "192.0.2.1",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}));
    k.create(endpoints(
        &[("127.0.1.1", "web-0"), ("127.0.1.2", "web-1")],
        &[],
    ));
    k.create(slice(&[
        ("127.0.1.1", "web-0", true),
        ("127.0.1.2", "web-1", true),
    ]));
    k.create(json!({"kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["*.example.com"]}],
                 "rules": [{"host": "web.example.com", "http": {"paths": [{"path": "/"}, {"path": "/api"}]}},
                           {"host": "example.org"}]}}));
}

fn scrape_configs(kube: &str, consul: &str) -> String {
    let job = |name: &str, sd: &str| {
        format!(
            "  - job_name: {name}\n    scrape_interval: 1m\n    {sd}\n    relabel_configs:\n      - action: labelmap\n        regex: __meta_(.+)\n"
        )
    };
    let k8s = |role: &str, extra: &str| {
        format!("kubernetes_sd_configs:\n      - role: {role}\n        api_server: {kube}\n{extra}")
    };
    let mut y = String::from("scrape_configs:\n");
    for role in [
        "node",
        "pod",
        "service",
        "endpoints",
        "endpointslice",
        "ingress",
    ] {
        y.push_str(&job(&format!("k8s-{role}"), &k8s(role, "")));
    }
    y.push_str(&job(
        "k8s-pod-attach",
        &k8s("pod", "        attach_metadata: {node: true}\n"),
    ));
    y.push_str(&job(
        "k8s-pod-team-a",
        &k8s("pod", "        namespaces: {names: [team-a]}\n"),
    ));
    y.push_str(&job(
        "k8s-pod-selected",
        &k8s(
            "pod",
            "        selectors:\n          - role: pod\n            label: app=web\n            field: status.phase=Running\n",
        ),
    ));
    y.push_str(&job(
        "consul",
        &format!("consul_sd_configs:\n      - server: {consul}\n        refresh_interval: 1s\n        tags: [prod]\n"),
    ));
    y
}

#[test]
fn agentctl_and_vmagent_discover_the_same_targets() {
    let kube = FakeKube::start();
    world(&kube);
    let consul = FakeConsul::start();
    consul.register(
        "web",
        instance("web", "web-1", "n1", "127.0.4.1", 80, &["prod"], "passing"),
    );
    consul.register(
        "db",
        instance(
            "db",
            "db-1",
            "n2",
            "127.0.4.2",
            5432,
            &["prod", "db"],
            "warning",
        ),
    );
    consul.register(
        "dev",
        instance("dev", "dev-1", "n3", "127.0.4.3", 80, &["dev"], "passing"),
    );
    let configs = scrape_configs(&kube.url(), &consul.addr);

    // vmagent has no consul `refresh_interval` (it checks every -promscrape.consulSDCheckInterval,
    // 1s here): it skips the field instead of refusing the config.
    let vm = VmAgent::start(&configs, &["-promscrape.config.strictParse=false"]);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let r = agent.put_config(
        "sd",
        &format!("{configs}remote_write:\n  - url: http://127.0.0.1:1/api/v1/write\n"),
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let mut found = BTreeSet::new();

    converge("every role", &agent, &vm, &mut found, |t| {
        addresses(t, "k8s-node").len() == 2
            && addresses(t, "k8s-ingress").len() == 3
            && addresses(t, "consul").len() == 2
    });

    kube.create(pod(
        "default",
        "web-2",
        "127.0.1.3",
        json!({"app": "web"}),
        "node-1",
    ));
    converge("pod added", &agent, &vm, &mut found, |t| {
        addresses(t, "k8s-pod-selected").contains(&"127.0.1.3:8080".to_owned())
    });

    kube.update(pod(
        "default",
        "web-2",
        "127.0.1.9",
        json!({"app": "web"}),
        "node-1",
    ));
    kube.update(endpoints(
        &[
            ("127.0.1.1", "web-0"),
            ("127.0.1.2", "web-1"),
            ("127.0.1.9", "web-2"),
        ],
        &[],
    ));
    converge("pod IP changed", &agent, &vm, &mut found, |t| {
        addresses(t, "k8s-pod").contains(&"127.0.1.9:8080".to_owned())
            && addresses(t, "k8s-endpoints").contains(&"127.0.1.9:8080".to_owned())
    });

    kube.delete(&pod("default", "web-2", "", json!({}), ""));
    kube.update(endpoints(
        &[("127.0.1.1", "web-0"), ("127.0.1.2", "web-1")],
        &[],
    ));
    converge("pod deleted", &agent, &vm, &mut found, |t| {
        !addresses(t, "k8s-pod").contains(&"127.0.1.9:8080".to_owned())
            && !addresses(t, "k8s-endpoints").contains(&"127.0.1.9:8080".to_owned())
    });

    kube.update(endpoints(
        &[("127.0.1.1", "web-0")],
        &[("127.0.1.2", "web-1")],
    ));
    kube.update(slice(&[
        ("127.0.1.1", "web-0", true),
        ("127.0.1.2", "web-1", false),
    ]));
    converge("endpoints not ready", &agent, &vm, &mut found, |t| {
        t.iter().any(|s| {
            s.job == "k8s-endpoints"
                && s.discovered["__address__"] == "127.0.1.2:8080"
                && s.discovered["__meta_kubernetes_endpoint_ready"] == "false"
        })
    });
    kube.update(endpoints(
        &[("127.0.1.1", "web-0"), ("127.0.1.2", "web-1")],
        &[],
    ));
    kube.update(slice(&[
        ("127.0.1.1", "web-0", true),
        ("127.0.1.2", "web-1", true),
    ]));
    converge("endpoints ready again", &agent, &vm, &mut found, |t| {
        t.iter().any(|s| {
            s.job == "k8s-endpointslice"
                && s.discovered["__address__"] == "127.0.1.2:8080"
                && s.discovered
                    .get("__meta_kubernetes_endpointslice_endpoint_conditions_ready")
                    .is_some_and(|v| v == "true")
        })
    });

    kube.delete(&json!({"kind": "Service", "apiVersion": "v1",
                        "metadata": {"name": "web", "namespace": "default"}}));
    converge("service deleted", &agent, &vm, &mut found, |t| {
        !addresses(t, "k8s-service").contains(&"web.default.svc:8080".to_owned())
            && t.iter()
                .filter(|s| s.job == "k8s-endpoints")
                .all(|s| !s.discovered.contains_key("__meta_kubernetes_service_name"))
    });

    kube.create(pod(
        "team-a",
        "api-1",
        "127.0.2.2",
        json!({"app": "api"}),
        "node-2",
    ));
    kube.create(pod(
        "team-b",
        "db-1",
        "127.0.3.2",
        json!({"app": "db"}),
        "node-2",
    ));
    converge("namespace filter", &agent, &vm, &mut found, |t| {
        addresses(t, "k8s-pod-team-a").contains(&"127.0.2.2:8080".to_owned())
            && addresses(t, "k8s-pod").contains(&"127.0.3.2:8080".to_owned())
    });
    assert!(addresses(&agentctl_targets(&agent), "k8s-pod-team-a")
        .iter()
        .all(|a| a.starts_with("127.0.2.")));

    kube.update(pod(
        "team-b",
        "db-1",
        "127.0.3.2",
        json!({"app": "web"}),
        "node-2",
    ));
    converge("selectors", &agent, &vm, &mut found, |t| {
        addresses(t, "k8s-pod-selected").contains(&"127.0.3.2:8080".to_owned())
    });

    consul.register(
        "web",
        instance("web", "web-2", "n4", "127.0.4.4", 80, &["prod"], "critical"),
    );
    consul.deregister("db", "db-1");
    converge("consul changes", &agent, &vm, &mut found, |t| {
        addresses(t, "consul") == ["127.0.4.1:80", "127.0.4.4:80"]
    });

    let listed: BTreeSet<&str> = VMAGENT_DIFFERENCES.iter().map(|(_, n, _)| *n).collect();
    let unseen: Vec<&&str> = listed.difference(&found).collect();
    assert!(
        unseen.is_empty(),
        "listed differences never seen: {unseen:?}"
    );
}
