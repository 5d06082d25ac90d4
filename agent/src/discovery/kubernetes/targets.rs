//! Target groups from Kubernetes objects, one group per object, with Prometheus's
//! `__meta_kubernetes_*` labels, target addresses and group sources (`pod/<ns>/<name>`,
//! `node/<name>`, `svc/<ns>/<name>`, `endpoints/<ns>/<name>`, `endpointslice/<ns>/<name>`,
//! `ingress/<ns>/<name>`). The builders are pure: the caller looks up the objects a group
//! depends on (the endpoints' service and pods, the node of `attach_metadata`).

use super::objects::{
    EndpointAddress, EndpointPort, EndpointSlice, Endpoints, Ingress, Node, ObjectMeta,
    ObjectReference, Pod, Service, SliceEndpoint, SlicePort,
};
use crate::config::sd::KubernetesRole;
use crate::discovery::{LabelSet, TargetGroup};

const META: &str = "__meta_kubernetes_";
const NAMESPACE: &str = "__meta_kubernetes_namespace";
const ADDRESS: &str = "__address__";

/// The group source of the object `key` (`namespace/name`, or `name` for nodes) in `role`.
pub fn source(role: KubernetesRole, key: &str) -> String {
    let prefix = match role {
        KubernetesRole::Node => "node",
        KubernetesRole::Pod => "pod",
        KubernetesRole::Service => "svc",
        KubernetesRole::Endpoints => "endpoints",
        KubernetesRole::EndpointSlice => "endpointslice",
        KubernetesRole::Ingress => "ingress",
    };
    format!("{prefix}/{key}")
}

/// Prometheus's `strutil.SanitizeLabelName`: every character outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Go's `net.JoinHostPort`.
pub fn join_host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn set(ls: &mut LabelSet, name: impl Into<String>, value: impl Into<String>) {
    ls.insert(name.into(), value.into());
}

/// `<role>_name`, `<role>_label_*`, `<role>_labelpresent_*`, `<role>_annotation_*`,
/// `<role>_annotationpresent_*`.
fn add_object_meta_labels(ls: &mut LabelSet, meta: &ObjectMeta, role: &str) {
    set(ls, format!("{META}{role}_name"), &meta.name);
    for (k, v) in &meta.labels {
        let n = sanitize(k);
        set(ls, format!("{META}{role}_label_{n}"), v);
        set(ls, format!("{META}{role}_labelpresent_{n}"), "true");
    }
    for (k, v) in &meta.annotations {
        let n = sanitize(k);
        set(ls, format!("{META}{role}_annotation_{n}"), v);
        set(ls, format!("{META}{role}_annotationpresent_{n}"), "true");
    }
}

/// The node's metadata labels merged into `ls` (nothing when the node is unknown).
fn add_node_labels(ls: &mut LabelSet, node: Option<&Node>) {
    if let Some(node) = node {
        add_object_meta_labels(ls, &node.metadata, "node");
    }
}

// ---- node ----

/// A node's group, or `None` when the node has no address (Prometheus then sends nothing, and
/// the node's previous group, if any, stays).
pub fn node_group(node: &Node) -> Option<TargetGroup> {
    let mut labels = LabelSet::new();
    set(
        &mut labels,
        format!("{META}node_provider_id"),
        &node.spec.provider_id,
    );
    add_object_meta_labels(&mut labels, &node.metadata, "node");
    // The first address of the first type present, in this order of preference.
    let addr = [
        "InternalIP",
        "InternalDNS",
        "ExternalIP",
        "ExternalDNS",
        "LegacyHostIP",
        "Hostname",
    ]
    .iter()
    .find_map(|t| node.status.addresses.iter().find(|a| a.kind == *t))?;
    let mut target = LabelSet::new();
    set(
        &mut target,
        ADDRESS,
        join_host_port(
            &addr.address,
            node.status.daemon_endpoints.kubelet_endpoint.port,
        ),
    );
    set(&mut target, "instance", &node.metadata.name);
    // One label per address type, with the first address of that type.
    for a in &node.status.addresses {
        let name = sanitize(&format!("{META}node_address_{}", a.kind));
        target.entry(name).or_insert_with(|| a.address.clone());
    }
    Some(TargetGroup {
        source: source(KubernetesRole::Node, &node.metadata.name),
        targets: vec![target],
        labels,
    })
}

// ---- pod ----

/// The labels of a pod shared by every target of it (also on endpoints targets).
fn pod_labels(pod: &Pod) -> LabelSet {
    let mut ls = LabelSet::new();
    set(&mut ls, format!("{META}pod_ip"), &pod.status.pod_ip);
    let ready = pod
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .map_or_else(|| "unknown".to_owned(), |c| c.status.to_lowercase());
    set(&mut ls, format!("{META}pod_ready"), ready);
    set(&mut ls, format!("{META}pod_phase"), &pod.status.phase);
    set(&mut ls, format!("{META}pod_node_name"), &pod.spec.node_name);
    set(&mut ls, format!("{META}pod_host_ip"), &pod.status.host_ip);
    set(&mut ls, format!("{META}pod_uid"), &pod.metadata.uid);
    add_object_meta_labels(&mut ls, &pod.metadata, "pod");
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
    {
        if !owner.kind.is_empty() {
            set(&mut ls, format!("{META}pod_controller_kind"), &owner.kind);
        }
        if !owner.name.is_empty() {
            set(&mut ls, format!("{META}pod_controller_name"), &owner.name);
        }
    }
    ls
}

/// A pod's group: one target per container port, one per container without ports (address
/// without port). `node` is the pod's node when `attach_metadata.node` is on. A pod without an
/// IP has an empty group.
pub fn pod_group(pod: &Pod, attach_node: bool, node: Option<&Node>) -> TargetGroup {
    let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
    let mut tg = TargetGroup {
        source: source(KubernetesRole::Pod, &key),
        ..TargetGroup::default()
    };
    if pod.status.pod_ip.is_empty() {
        return tg;
    }
    tg.labels = pod_labels(pod);
    set(&mut tg.labels, NAMESPACE, &pod.metadata.namespace);
    if attach_node {
        add_node_labels(&mut tg.labels, node);
    }
    let containers = pod
        .spec
        .containers
        .iter()
        .map(|c| (c, false))
        .chain(pod.spec.init_containers.iter().map(|c| (c, true)));
    for (c, is_init) in containers {
        let statuses = if is_init {
            &pod.status.init_container_statuses
        } else {
            &pod.status.container_statuses
        };
        let id = statuses
            .iter()
            .find(|s| s.name == c.name)
            .map(|s| s.container_id.as_str())
            .unwrap_or_default();
        let mut base = LabelSet::new();
        set(&mut base, format!("{META}pod_container_name"), &c.name);
        set(&mut base, format!("{META}pod_container_id"), id);
        set(&mut base, format!("{META}pod_container_image"), &c.image);
        set(
            &mut base,
            format!("{META}pod_container_init"),
            is_init.to_string(),
        );
        if c.ports.is_empty() {
            let mut t = base;
            set(&mut t, ADDRESS, &pod.status.pod_ip);
            tg.targets.push(t);
            continue;
        }
        for p in &c.ports {
            let port = p.container_port.to_string();
            let mut t = base.clone();
            set(&mut t, ADDRESS, join_host_port(&pod.status.pod_ip, &port));
            set(&mut t, format!("{META}pod_container_port_number"), port);
            set(&mut t, format!("{META}pod_container_port_name"), &p.name);
            set(
                &mut t,
                format!("{META}pod_container_port_protocol"),
                &p.protocol,
            );
            tg.targets.push(t);
        }
    }
    tg
}

// ---- service ----

fn service_labels(svc: &Service) -> LabelSet {
    let mut ls = LabelSet::new();
    set(&mut ls, NAMESPACE, &svc.metadata.namespace);
    add_object_meta_labels(&mut ls, &svc.metadata, "service");
    ls
}

/// A service's group: one target per port, at `<name>.<namespace>.svc:<port>`.
pub fn service_group(svc: &Service) -> TargetGroup {
    let m = &svc.metadata;
    let mut tg = TargetGroup {
        source: source(
            KubernetesRole::Service,
            &format!("{}/{}", m.namespace, m.name),
        ),
        labels: service_labels(svc),
        targets: Vec::new(),
    };
    for p in &svc.spec.ports {
        let mut t = LabelSet::new();
        set(
            &mut t,
            ADDRESS,
            join_host_port(&format!("{}.{}.svc", m.name, m.namespace), p.port),
        );
        set(&mut t, format!("{META}service_port_name"), &p.name);
        set(
            &mut t,
            format!("{META}service_port_number"),
            p.port.to_string(),
        );
        set(&mut t, format!("{META}service_port_protocol"), &p.protocol);
        set(&mut t, format!("{META}service_type"), &svc.spec.kind);
        if svc.spec.kind == "ExternalName" {
            set(
                &mut t,
                format!("{META}service_external_name"),
                &svc.spec.external_name,
            );
        } else {
            set(
                &mut t,
                format!("{META}service_cluster_ip"),
                &svc.spec.cluster_ip,
            );
        }
        if svc.spec.kind == "LoadBalancer" {
            set(
                &mut t,
                format!("{META}service_loadbalancer_ip"),
                &svc.spec.load_balancer_ip,
            );
        }
        tg.targets.push(t);
    }
    tg
}

// ---- ingress ----

/// Whether a TLS host pattern (`*.example.com` matches one leading label) covers `host`.
fn matches_hostname_pattern(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let h: Vec<&str> = host.split('.').collect();
    if p[0] != "*" || p.len() != h.len() {
        return false;
    }
    p[1..] == h[1..]
}

/// An ingress's group: one target per rule and path, scheme `https` when a TLS host covers the
/// rule's host.
pub fn ingress_group(ing: &Ingress) -> TargetGroup {
    let m = &ing.metadata;
    let mut labels = LabelSet::new();
    set(&mut labels, NAMESPACE, &m.namespace);
    if let Some(class) = &ing.spec.ingress_class_name {
        set(&mut labels, format!("{META}ingress_class_name"), class);
    }
    add_object_meta_labels(&mut labels, m, "ingress");
    let mut tg = TargetGroup {
        source: source(
            KubernetesRole::Ingress,
            &format!("{}/{}", m.namespace, m.name),
        ),
        labels,
        targets: Vec::new(),
    };
    let tls_hosts: Vec<&str> = ing
        .spec
        .tls
        .iter()
        .flat_map(|t| t.hosts.iter().map(String::as_str))
        .collect();
    for rule in &ing.spec.rules {
        let paths: Vec<&str> = match &rule.http {
            None => vec!["/"],
            Some(http) => http
                .paths
                .iter()
                .map(|p| if p.path.is_empty() { "/" } else { &p.path })
                .collect(),
        };
        let scheme = if tls_hosts
            .iter()
            .any(|p| matches_hostname_pattern(p, &rule.host))
        {
            "https"
        } else {
            "http"
        };
        for path in paths {
            let mut t = LabelSet::new();
            set(&mut t, ADDRESS, &rule.host);
            set(&mut t, format!("{META}ingress_scheme"), scheme);
            set(&mut t, format!("{META}ingress_host"), &rule.host);
            set(&mut t, format!("{META}ingress_path"), path);
            tg.targets.push(t);
        }
    }
    tg
}

// ---- endpoints and endpointslice ----

/// The objects an endpoints or endpointslice group depends on, looked up by the caller.
pub trait Lookup {
    /// The pod an address refers to (`targetRef` of kind `Pod`).
    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod>;
    /// The node named `name`; `None` also when `attach_metadata.node` is off.
    fn node(&self, name: &str) -> Option<&Node>;
    /// Whether node metadata is attached at all.
    fn attach_node(&self) -> bool;
}

fn resolve_pod<'a>(lookup: &'a dyn Lookup, r: Option<&ObjectReference>) -> Option<&'a Pod> {
    let r = r?;
    if r.kind != "Pod" {
        return None;
    }
    lookup.pod(&r.namespace, &r.name)
}

/// The targets of a pod's container ports that no endpoint port covered.
fn add_unseen_pod_ports(
    tg: &mut TargetGroup,
    seen: &[(&Pod, Vec<Option<i32>>)],
    labels_of: &dyn Fn(&Pod) -> LabelSet,
) {
    for (pod, ports) in seen {
        if pod.status.pod_ip.is_empty() {
            continue;
        }
        for c in &pod.spec.containers {
            for cp in &c.ports {
                if ports.contains(&Some(cp.container_port)) {
                    continue;
                }
                let port = cp.container_port.to_string();
                let mut t = LabelSet::new();
                set(&mut t, ADDRESS, join_host_port(&pod.status.pod_ip, &port));
                set(&mut t, format!("{META}pod_container_name"), &c.name);
                set(&mut t, format!("{META}pod_container_image"), &c.image);
                set(&mut t, format!("{META}pod_container_port_name"), &cp.name);
                set(&mut t, format!("{META}pod_container_port_number"), port);
                set(
                    &mut t,
                    format!("{META}pod_container_port_protocol"),
                    &cp.protocol,
                );
                t.extend(labels_of(pod));
                tg.targets.push(t);
            }
        }
    }
}

/// Records that `pod` was seen with `port` (pods in first-seen order).
fn note_pod<'a>(seen: &mut Vec<(&'a Pod, Vec<Option<i32>>)>, pod: &'a Pod, port: Option<i32>) {
    match seen.iter_mut().find(|(p, _)| std::ptr::eq(*p, pod)) {
        Some((_, ports)) => ports.push(port),
        None => seen.push((pod, vec![port])),
    }
}

/// An Endpoints object's group: one target per address and port (ready and not ready), with the
/// service's labels on the group and the referenced pod's labels on its targets, plus one target
/// per container port of those pods that no endpoint port covers.
pub fn endpoints_group(
    eps: &Endpoints,
    service: Option<&Service>,
    lookup: &dyn Lookup,
) -> TargetGroup {
    let m = &eps.metadata;
    let mut tg = TargetGroup {
        source: source(
            KubernetesRole::Endpoints,
            &format!("{}/{}", m.namespace, m.name),
        ),
        ..TargetGroup::default()
    };
    set(&mut tg.labels, NAMESPACE, &m.namespace);
    if let Some(svc) = service {
        tg.labels.extend(service_labels(svc));
    }
    add_object_meta_labels(&mut tg.labels, m, "endpoints");
    let mut seen: Vec<(&Pod, Vec<Option<i32>>)> = Vec::new();
    let mut add = |tg: &mut TargetGroup, addr: &EndpointAddress, port: &EndpointPort, ready| {
        let mut t = LabelSet::new();
        set(&mut t, ADDRESS, join_host_port(&addr.ip, port.port));
        set(&mut t, format!("{META}endpoint_port_name"), &port.name);
        set(
            &mut t,
            format!("{META}endpoint_port_protocol"),
            &port.protocol,
        );
        set(&mut t, format!("{META}endpoint_ready"), ready);
        if let Some(r) = &addr.target_ref {
            set(
                &mut t,
                format!("{META}endpoint_address_target_kind"),
                &r.kind,
            );
            set(
                &mut t,
                format!("{META}endpoint_address_target_name"),
                &r.name,
            );
        }
        if let Some(n) = &addr.node_name {
            set(&mut t, format!("{META}endpoint_node_name"), n);
        }
        if !addr.hostname.is_empty() {
            set(&mut t, format!("{META}endpoint_hostname"), &addr.hostname);
        }
        if lookup.attach_node() {
            if let Some(n) = &addr.node_name {
                add_node_labels(&mut t, lookup.node(n));
            } else if let Some(r) = addr.target_ref.as_ref().filter(|r| r.kind == "Node") {
                add_node_labels(&mut t, lookup.node(&r.name));
            }
        }
        let Some(pod) = resolve_pod(lookup, addr.target_ref.as_ref()) else {
            tg.targets.push(t);
            return;
        };
        note_pod(&mut seen, pod, Some(port.port));
        t.extend(pod_labels(pod));
        if let Some((c, cp)) = pod.spec.containers.iter().find_map(|c| {
            c.ports
                .iter()
                .find(|cp| cp.container_port == port.port)
                .map(|cp| (c, cp))
        }) {
            set(&mut t, format!("{META}pod_container_name"), &c.name);
            set(&mut t, format!("{META}pod_container_image"), &c.image);
            set(&mut t, format!("{META}pod_container_port_name"), &cp.name);
            set(
                &mut t,
                format!("{META}pod_container_port_number"),
                port.port.to_string(),
            );
            // The endpoint port's protocol, as Prometheus has it.
            set(
                &mut t,
                format!("{META}pod_container_port_protocol"),
                &port.protocol,
            );
        }
        tg.targets.push(t);
    };
    for ss in &eps.subsets {
        for port in &ss.ports {
            for addr in &ss.addresses {
                add(&mut tg, addr, port, "true");
            }
            for addr in &ss.not_ready_addresses {
                add(&mut tg, addr, port, "false");
            }
        }
    }
    add_unseen_pod_ports(&mut tg, &seen, &pod_labels);
    tg
}

/// The service an EndpointSlice belongs to: the `kubernetes.io/service-name` label.
pub fn slice_service_name(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .get("kubernetes.io/service-name")
        .map(String::as_str)
}

/// An EndpointSlice's group: one target per endpoint address and port, as for Endpoints.
pub fn endpointslice_group(
    slice: &EndpointSlice,
    service: Option<&Service>,
    lookup: &dyn Lookup,
) -> TargetGroup {
    let m = &slice.metadata;
    let mut tg = TargetGroup {
        source: source(
            KubernetesRole::EndpointSlice,
            &format!("{}/{}", m.namespace, m.name),
        ),
        ..TargetGroup::default()
    };
    set(&mut tg.labels, NAMESPACE, &m.namespace);
    set(
        &mut tg.labels,
        format!("{META}endpointslice_address_type"),
        &slice.address_type,
    );
    add_object_meta_labels(&mut tg.labels, m, "endpointslice");
    if let Some(svc) = service {
        tg.labels.extend(service_labels(svc));
    }
    let mut seen: Vec<(&Pod, Vec<Option<i32>>)> = Vec::new();
    let mut add = |tg: &mut TargetGroup, addr: &str, ep: &SliceEndpoint, port: &SlicePort| {
        let mut t = LabelSet::new();
        let a = match port.port {
            Some(p) => join_host_port(addr, p),
            None => addr.to_owned(),
        };
        set(&mut t, ADDRESS, a);
        let opt = |t: &mut LabelSet, name: &str, v: &Option<String>| {
            if let Some(v) = v {
                set(t, format!("{META}endpointslice_{name}"), v);
            }
        };
        opt(&mut t, "port_name", &port.name);
        opt(&mut t, "port_protocol", &port.protocol);
        if let Some(p) = port.port {
            set(&mut t, format!("{META}endpointslice_port"), p.to_string());
        }
        opt(&mut t, "port_app_protocol", &port.app_protocol);
        let c = &ep.conditions;
        for (name, v) in [
            ("ready", c.ready),
            ("serving", c.serving),
            ("terminating", c.terminating),
        ] {
            if let Some(v) = v {
                set(
                    &mut t,
                    format!("{META}endpointslice_endpoint_conditions_{name}"),
                    v.to_string(),
                );
            }
        }
        opt(&mut t, "endpoint_hostname", &ep.hostname);
        if let Some(r) = &ep.target_ref {
            set(
                &mut t,
                format!("{META}endpointslice_address_target_kind"),
                &r.kind,
            );
            set(
                &mut t,
                format!("{META}endpointslice_address_target_name"),
                &r.name,
            );
        }
        for (k, v) in &ep.deprecated_topology {
            let n = sanitize(k);
            set(
                &mut t,
                format!("{META}endpointslice_endpoint_topology_{n}"),
                v,
            );
            set(
                &mut t,
                format!("{META}endpointslice_endpoint_topology_present_{n}"),
                "true",
            );
        }
        if lookup.attach_node() {
            match ep.target_ref.as_ref().filter(|r| r.kind == "Node") {
                Some(r) => add_node_labels(&mut t, lookup.node(&r.name)),
                None => {
                    if let Some(n) = &ep.node_name {
                        add_node_labels(&mut t, lookup.node(n));
                    }
                }
            }
        }
        let Some(pod) = resolve_pod(lookup, ep.target_ref.as_ref()) else {
            tg.targets.push(t);
            return;
        };
        note_pod(&mut seen, pod, port.port);
        t.extend(pod_labels(pod));
        if let Some(p) = port.port {
            if let Some((c, cp)) = pod.spec.containers.iter().find_map(|c| {
                c.ports
                    .iter()
                    .find(|cp| cp.container_port == p)
                    .map(|cp| (c, cp))
            }) {
                set(&mut t, format!("{META}pod_container_name"), &c.name);
                set(&mut t, format!("{META}pod_container_image"), &c.image);
                set(&mut t, format!("{META}pod_container_port_name"), &cp.name);
                set(
                    &mut t,
                    format!("{META}pod_container_port_number"),
                    p.to_string(),
                );
                set(
                    &mut t,
                    format!("{META}pod_container_port_protocol"),
                    &cp.protocol,
                );
            }
        }
        tg.targets.push(t);
    };
    for ep in &slice.endpoints {
        for port in &slice.ports {
            for addr in &ep.addresses {
                add(&mut tg, addr, ep, port);
            }
        }
    }
    add_unseen_pod_ports(&mut tg, &seen, &pod_labels);
    tg
}

/// The node names an Endpoints object is found under when a node changes (Prometheus's node
/// index): ready addresses with a `Pod` target reference count by their `nodeName`, those with
/// a `Node` reference by its name. Addresses without a target reference, or not ready, are not
/// indexed, so a change to their node does not refresh the group until the object changes.
pub fn endpoints_nodes(eps: &Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for ss in &eps.subsets {
        for a in &ss.addresses {
            match a.target_ref.as_ref().map(|r| r.kind.as_str()) {
                Some("Pod") => out.extend(a.node_name.clone()),
                Some("Node") => out.extend(a.target_ref.as_ref().map(|r| r.name.clone())),
                _ => {}
            }
        }
    }
    out
}

/// The `namespace/name` of every pod an Endpoints object refers to (ready or not).
pub fn endpoints_pods(eps: &Endpoints) -> Vec<String> {
    eps.subsets
        .iter()
        .flat_map(|ss| ss.addresses.iter().chain(&ss.not_ready_addresses))
        .filter_map(|a| a.target_ref.as_ref())
        .filter(|r| r.kind == "Pod")
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

/// [`endpoints_pods`] for an EndpointSlice.
pub fn endpointslice_pods(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind == "Pod")
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

/// [`endpoints_nodes`] for an EndpointSlice.
pub fn endpointslice_nodes(slice: &EndpointSlice) -> Vec<String> {
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        match ep.target_ref.as_ref().map(|r| r.kind.as_str()) {
            Some("Pod") => out.extend(ep.node_name.clone()),
            Some("Node") => out.extend(ep.target_ref.as_ref().map(|r| r.name.clone())),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_and_join() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("ü-x"), "__x");
        assert_eq!(join_host_port("fd00::1", 9090), "[fd00::1]:9090");
        assert_eq!(join_host_port("1.2.3.4", "80"), "1.2.3.4:80");
    }

    #[test]
    fn hostname_patterns() {
        assert!(matches_hostname_pattern(
            "*.example.com",
            "test.example.com"
        ));
        assert!(!matches_hostname_pattern("*.example.com", "example.com"));
        assert!(!matches_hostname_pattern(
            "*.example.com",
            "a.b.example.com"
        ));
        assert!(matches_hostname_pattern("example.com", "example.com"));
        assert!(!matches_hostname_pattern("x.example.com", "y.example.com"));
    }
}
