//! `kubernetes_sd_configs`: targets from the Kubernetes API, as Prometheus 2.49 (the version the
//! last Grafana Agent release vendored) discovers them: the same roles, `__meta_kubernetes_*`
//! labels, target addresses and group sources (see `targets.rs`).
//!
//! Each object kind a role needs is listed and watched (`watch.rs`); one task per SD config
//! owns every cache and index, so nothing is locked:
//!
//! | role            | watches (per namespace, or cluster-wide)                     |
//! |-----------------|--------------------------------------------------------------|
//! | `node`          | nodes                                                        |
//! | `pod`           | pods (+ nodes with `attach_metadata.node`)                   |
//! | `service`       | services                                                     |
//! | `ingress`       | ingresses (`networking.k8s.io/v1`)                           |
//! | `endpoints`     | endpoints, services, pods (+ nodes)                          |
//! | `endpointslice` | endpointslices (`discovery.k8s.io/v1`), services, pods (+ nodes) |
//!
//! Nothing is reported until every watch has listed once; then every group is sent, and from
//! then on only the groups whose object (or an object they depend on) changed, as one batch per
//! burst of events. A group depends on: its own object; for endpoints/endpointslice the service
//! of the same name (the slice's `kubernetes.io/service-name` label) and, with
//! `attach_metadata.node`, the nodes it is indexed under (`targets::endpoints_nodes`); for pods
//! with `attach_metadata.node`, the pod's node. Beyond Prometheus 2.49, an endpoints or
//! endpointslice group is also built again when a pod it refers to changes: 2.49 waited for the
//! Endpoints object itself to change, so a target could keep a pod's old labels for good when the
//! pod's update arrived after the endpoints' (the two come on separate watches).
//!
//! Only what the groups need is kept: the objects other groups are built from (pods, services
//! and nodes for the endpoint roles and node metadata), and for the primary objects of the
//! endpoint roles and of pods with node metadata. For the other roles an object is dropped as
//! soon as its group is built, and only its key is remembered.

pub mod client;
pub mod objects;
pub mod targets;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::client::{Connection, Environment};
use self::objects::{EndpointSlice, Endpoints, Ingress, Node, Object, Pod, Service};
use self::targets::Lookup;
use self::watch::{Op, Resource};
use super::TargetGroup;
use crate::config::sd::{KubernetesRole, KubernetesSd};

/// The most events applied before the changed groups are built and sent.
const MAX_BATCH: usize = 4096;

/// One `kubernetes_sd_config`, ready to run.
pub struct Discovery {
    sd: KubernetesSd,
    conn: Connection,
}

impl Discovery {
    /// Resolves the API access (reading the in-cluster service account or the kubeconfig file).
    pub fn new(sd: &KubernetesSd, base_dir: Option<&Path>) -> Result<Self, client::Error> {
        let conn = client::connect(sd, base_dir, &Environment::from_process())?;
        Ok(Discovery {
            sd: sd.clone(),
            conn,
        })
    }

    /// A discovery talking to `conn` (tests: a fake API server, a given own namespace).
    pub fn with_connection(sd: &KubernetesSd, conn: Connection) -> Self {
        Discovery {
            sd: sd.clone(),
            conn,
        }
    }

    /// The namespaces watched; `[None]` is every namespace.
    fn namespaces(&self) -> Vec<Option<String>> {
        let mut names: Vec<String> = self.sd.namespaces.clone();
        if self.sd.own_namespace {
            if let Some(own) = &self.conn.own_namespace {
                names.push(own.clone());
            }
        }
        if names.is_empty() && !self.sd.own_namespace {
            return vec![None];
        }
        let mut seen = BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names.into_iter().map(Some).collect()
    }

    /// Runs until `shutdown`, sending each batch of changed groups through `tx` (wrapped by
    /// `wrap`). A group without targets and labels is a deleted object. Once every watch has
    /// listed and the groups that gave were sent, an empty batch says the first discovery is
    /// complete.
    pub async fn run<M, F>(self, tx: mpsc::Sender<M>, wrap: F, shutdown: CancellationToken)
    where
        M: Send + 'static,
        F: Fn(Vec<TargetGroup>) -> M,
    {
        let role = self.sd.role;
        let attach = self.sd.attach_node_metadata
            && matches!(
                role,
                KubernetesRole::Pod | KubernetesRole::Endpoints | KubernetesRole::EndpointSlice
            );
        let (etx, mut erx) = mpsc::channel::<(usize, Change)>(1024);
        let mut scopes: Vec<Option<String>> = Vec::new();
        let stop = shutdown.child_token();
        let spawn = |scopes: &mut Vec<Option<String>>, kind: Kind, ns: Option<String>| {
            let id = scopes.len();
            scopes.push(if kind == Kind::Node { None } else { ns.clone() });
            let (collection, sel_role) = kind.collection();
            let path = match (&ns, kind) {
                (Some(ns), k) if k != Kind::Node => {
                    let (prefix, plural) = collection.rsplit_once('/').unwrap_or(("", collection));
                    format!("{prefix}/namespaces/{ns}/{plural}")
                }
                _ => collection.to_owned(),
            };
            let res = Resource {
                path,
                selector: self.sd.selector(sel_role),
            };
            let conn = self.conn.clone();
            let tx = etx.clone();
            let stop = stop.clone();
            match kind {
                Kind::Pod => tokio::spawn(
                    watch::run(conn, res, tx, move |op| (id, Change::Pod(op)), stop)
                        .in_current_span(),
                ),
                Kind::Node => tokio::spawn(
                    watch::run(conn, res, tx, move |op| (id, Change::Node(op)), stop)
                        .in_current_span(),
                ),
                Kind::Service => tokio::spawn(
                    watch::run(conn, res, tx, move |op| (id, Change::Service(op)), stop)
                        .in_current_span(),
                ),
                Kind::Endpoints => tokio::spawn(
                    watch::run(conn, res, tx, move |op| (id, Change::Endpoints(op)), stop)
                        .in_current_span(),
                ),
                Kind::EndpointSlice => tokio::spawn(
                    watch::run(
                        conn,
                        res,
                        tx,
                        move |op| (id, Change::EndpointSlice(op)),
                        stop,
                    )
                    .in_current_span(),
                ),
                Kind::Ingress => tokio::spawn(
                    watch::run(conn, res, tx, move |op| (id, Change::Ingress(op)), stop)
                        .in_current_span(),
                ),
            };
        };
        let primary = match role {
            KubernetesRole::Node => Kind::Node,
            KubernetesRole::Pod => Kind::Pod,
            KubernetesRole::Service => Kind::Service,
            KubernetesRole::Endpoints => Kind::Endpoints,
            KubernetesRole::EndpointSlice => Kind::EndpointSlice,
            KubernetesRole::Ingress => Kind::Ingress,
        };
        if primary == Kind::Node {
            spawn(&mut scopes, Kind::Node, None);
        } else {
            for ns in self.namespaces() {
                spawn(&mut scopes, primary, ns.clone());
                if matches!(
                    role,
                    KubernetesRole::Endpoints | KubernetesRole::EndpointSlice
                ) {
                    spawn(&mut scopes, Kind::Service, ns.clone());
                    spawn(&mut scopes, Kind::Pod, ns.clone());
                }
            }
            if attach {
                spawn(&mut scopes, Kind::Node, None);
            }
        }
        drop(etx);
        let mut state = State::new(role, attach, scopes);
        let _stop_watchers = stop.drop_guard();
        let mut reported = false;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = erx.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
            };
            state.apply(first.0, first.1);
            let mut n = 1;
            while n < MAX_BATCH {
                match erx.try_recv() {
                    Ok((id, c)) => state.apply(id, c),
                    Err(_) => break,
                }
                n += 1;
            }
            if !state.synced() {
                continue;
            }
            let groups = state.flush();
            if !groups.is_empty() && tx.send(wrap(groups)).await.is_err() {
                return;
            }
            // The first discovery is complete: say so with an empty batch (see discovery/mod.rs).
            if !reported {
                reported = true;
                if tx.send(wrap(Vec::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Node,
    Service,
    Endpoints,
    EndpointSlice,
    Ingress,
}

impl Kind {
    /// The cluster-wide collection path and the selector role of this kind.
    fn collection(self) -> (&'static str, KubernetesRole) {
        match self {
            Kind::Pod => ("/api/v1/pods", KubernetesRole::Pod),
            Kind::Node => ("/api/v1/nodes", KubernetesRole::Node),
            Kind::Service => ("/api/v1/services", KubernetesRole::Service),
            Kind::Endpoints => ("/api/v1/endpoints", KubernetesRole::Endpoints),
            Kind::EndpointSlice => (
                "/apis/discovery.k8s.io/v1/endpointslices",
                KubernetesRole::EndpointSlice,
            ),
            Kind::Ingress => (
                "/apis/networking.k8s.io/v1/ingresses",
                KubernetesRole::Ingress,
            ),
        }
    }
}

/// A change reported by one watcher.
#[derive(Debug)]
enum Change {
    Pod(Op<Pod>),
    Node(Op<Node>),
    Service(Op<Service>),
    Endpoints(Op<Endpoints>),
    EndpointSlice(Op<EndpointSlice>),
    Ingress(Op<Ingress>),
}

/// Objects of one kind by key. `None` is an object whose group was built and which is not kept.
struct Store<T> {
    map: HashMap<String, Option<T>>,
    keep: bool,
}

impl<T: Object> Store<T> {
    fn new(keep: bool) -> Self {
        Store {
            map: HashMap::new(),
            keep,
        }
    }

    fn get(&self, key: &str) -> Option<&T> {
        self.map.get(key).and_then(Option::as_ref)
    }

    /// Applies `op` from the watcher of `scope` (`None`: every namespace); returns the keys
    /// whose object changed, with the object they replace.
    fn apply(&mut self, scope: Option<&str>, op: Op<T>) -> Vec<(String, Option<T>)> {
        let mut changed = Vec::new();
        match op {
            Op::Put(mut o) => {
                o.meta_mut().resource_version.clear();
                let key = o.key();
                // Most updates (status heartbeats, restart counts) touch nothing kept here.
                if matches!(self.map.get(&key), Some(Some(prev)) if *prev == o) {
                    return changed;
                }
                let old = self.map.insert(key.clone(), Some(o)).flatten();
                changed.push((key, old));
            }
            Op::Deleted(o) => {
                let key = o.key();
                if let Some(old) = self.map.remove(&key) {
                    changed.push((key, old));
                }
            }
            Op::Reset(objects) => {
                let mut fresh: HashMap<String, T> = objects
                    .into_iter()
                    .map(|mut o| {
                        o.meta_mut().resource_version.clear();
                        (o.key(), o)
                    })
                    .collect();
                let in_scope = |k: &str| match scope {
                    None => true,
                    Some(ns) => k.strip_prefix(ns).is_some_and(|r| r.starts_with('/')),
                };
                let gone: Vec<String> = self
                    .map
                    .keys()
                    .filter(|k| in_scope(k) && !fresh.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    let old = self.map.remove(&k).flatten();
                    changed.push((k, old));
                }
                for (k, o) in fresh.drain() {
                    match self.map.get(&k) {
                        // Unchanged objects need no new group (only kept objects can tell).
                        Some(Some(prev)) if *prev == o => {}
                        _ => {
                            let old = self.map.insert(k.clone(), Some(o)).flatten();
                            changed.push((k, old));
                        }
                    }
                }
            }
        }
        changed
    }

    /// Drops the object of `key` once its group is built, unless objects are kept.
    fn built(&mut self, key: &str) {
        if !self.keep {
            if let Some(slot) = self.map.get_mut(key) {
                *slot = None;
            }
        }
    }
}

fn index_remove(index: &mut HashMap<String, BTreeSet<String>>, at: &str, key: &str) {
    if let Some(set) = index.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            index.remove(at);
        }
    }
}

fn index_add(index: &mut HashMap<String, BTreeSet<String>>, at: String, key: &str) {
    index.entry(at).or_default().insert(key.to_owned());
}

struct State {
    role: KubernetesRole,
    attach: bool,
    /// Per watcher: its namespace (`None`: all, or cluster-scoped) and whether it listed yet.
    scopes: Vec<Option<String>>,
    listed: Vec<bool>,
    all_listed: bool,
    pods: Store<Pod>,
    nodes: Store<Node>,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
    ingresses: Store<Ingress>,
    /// Node name -> keys of the primary objects built with its metadata.
    by_node: HashMap<String, BTreeSet<String>>,
    /// Pod `namespace/name` -> keys of the endpoints or slices that refer to it.
    by_pod: HashMap<String, BTreeSet<String>>,
    /// `namespace/service` -> keys of the endpoint slices of that service.
    slices_by_service: HashMap<String, BTreeSet<String>>,
    /// Keys of primary objects whose group must be built again.
    dirty: BTreeSet<String>,
}

impl State {
    fn new(role: KubernetesRole, attach: bool, scopes: Vec<Option<String>>) -> Self {
        let endpoint_role = matches!(
            role,
            KubernetesRole::Endpoints | KubernetesRole::EndpointSlice
        );
        State {
            role,
            attach,
            listed: vec![false; scopes.len()],
            scopes,
            all_listed: false,
            // Pods are kept when other groups are built from them, or when a node change
            // rebuilds them.
            pods: Store::new(endpoint_role || (role == KubernetesRole::Pod && attach)),
            nodes: Store::new(role != KubernetesRole::Node),
            services: Store::new(role != KubernetesRole::Service),
            endpoints: Store::new(true),
            slices: Store::new(true),
            ingresses: Store::new(false),
            by_node: HashMap::new(),
            by_pod: HashMap::new(),
            slices_by_service: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    fn synced(&mut self) -> bool {
        if !self.all_listed {
            self.all_listed = self.listed.iter().all(|l| *l);
        }
        self.all_listed
    }

    fn apply(&mut self, id: usize, change: Change) {
        if matches!(
            &change,
            Change::Pod(Op::Reset(_))
                | Change::Node(Op::Reset(_))
                | Change::Service(Op::Reset(_))
                | Change::Endpoints(Op::Reset(_))
                | Change::EndpointSlice(Op::Reset(_))
                | Change::Ingress(Op::Reset(_))
        ) {
            self.listed[id] = true;
        }
        let scope = self.scopes[id].clone();
        let scope = scope.as_deref();
        let role = self.role;
        match change {
            Change::Pod(op) => {
                let changed = self.pods.apply(scope, op);
                if role != KubernetesRole::Pod {
                    for (key, _) in changed {
                        if let Some(keys) = self.by_pod.get(&key) {
                            self.dirty.extend(keys.iter().cloned());
                        }
                    }
                    return;
                }
                for (key, old) in changed {
                    if self.attach {
                        if let Some(old) = old {
                            index_remove(&mut self.by_node, &old.spec.node_name, &key);
                        }
                        if let Some(new) = self.pods.get(&key) {
                            index_add(&mut self.by_node, new.spec.node_name.clone(), &key);
                        }
                    }
                    self.dirty.insert(key);
                }
            }
            Change::Node(op) => {
                let changed = self.nodes.apply(scope, op);
                for (key, _) in changed {
                    if role == KubernetesRole::Node {
                        self.dirty.insert(key);
                    } else if let Some(keys) = self.by_node.get(&key) {
                        self.dirty.extend(keys.iter().cloned());
                    }
                }
            }
            Change::Service(op) => {
                let changed = self.services.apply(scope, op);
                for (key, _) in changed {
                    match role {
                        KubernetesRole::Service => {
                            self.dirty.insert(key);
                        }
                        KubernetesRole::Endpoints if self.endpoints.get(&key).is_some() => {
                            self.dirty.insert(key);
                        }
                        KubernetesRole::EndpointSlice => {
                            if let Some(keys) = self.slices_by_service.get(&key) {
                                self.dirty.extend(keys.iter().cloned());
                            }
                        }
                        _ => {}
                    }
                }
            }
            Change::Endpoints(op) => {
                for (key, old) in self.endpoints.apply(scope, op) {
                    for p in old.iter().flat_map(targets::endpoints_pods) {
                        index_remove(&mut self.by_pod, &p, &key);
                    }
                    for p in self
                        .endpoints
                        .get(&key)
                        .map(targets::endpoints_pods)
                        .unwrap_or_default()
                    {
                        index_add(&mut self.by_pod, p, &key);
                    }
                    if self.attach {
                        for n in old.iter().flat_map(targets::endpoints_nodes) {
                            index_remove(&mut self.by_node, &n, &key);
                        }
                        for n in self
                            .endpoints
                            .get(&key)
                            .map(targets::endpoints_nodes)
                            .unwrap_or_default()
                        {
                            index_add(&mut self.by_node, n, &key);
                        }
                    }
                    self.dirty.insert(key);
                }
            }
            Change::EndpointSlice(op) => {
                for (key, old) in self.slices.apply(scope, op) {
                    for p in old.iter().flat_map(targets::endpointslice_pods) {
                        index_remove(&mut self.by_pod, &p, &key);
                    }
                    for p in self
                        .slices
                        .get(&key)
                        .map(targets::endpointslice_pods)
                        .unwrap_or_default()
                    {
                        index_add(&mut self.by_pod, p, &key);
                    }
                    let ns = key.split('/').next().unwrap_or_default().to_owned();
                    if let Some(svc) = old.as_ref().and_then(targets::slice_service_name) {
                        index_remove(&mut self.slices_by_service, &format!("{ns}/{svc}"), &key);
                    }
                    if let Some(svc) = self.slices.get(&key).and_then(targets::slice_service_name) {
                        index_add(&mut self.slices_by_service, format!("{ns}/{svc}"), &key);
                    }
                    if self.attach {
                        for n in old.iter().flat_map(targets::endpointslice_nodes) {
                            index_remove(&mut self.by_node, &n, &key);
                        }
                        for n in self
                            .slices
                            .get(&key)
                            .map(targets::endpointslice_nodes)
                            .unwrap_or_default()
                        {
                            index_add(&mut self.by_node, n, &key);
                        }
                    }
                    self.dirty.insert(key);
                }
            }
            Change::Ingress(op) => {
                for (key, _) in self.ingresses.apply(scope, op) {
                    self.dirty.insert(key);
                }
            }
        }
    }

    /// Builds the groups of every dirty key: the object's group, or an empty group with its
    /// source when the object is gone.
    fn flush(&mut self) -> Vec<TargetGroup> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::with_capacity(dirty.len());
        for key in dirty {
            let empty = || TargetGroup {
                source: targets::source(self.role, &key),
                ..TargetGroup::default()
            };
            let group = match self.role {
                KubernetesRole::Node => match self.nodes.get(&key) {
                    Some(n) => targets::node_group(n),
                    None => Some(empty()),
                },
                KubernetesRole::Pod => Some(match self.pods.get(&key) {
                    Some(p) => {
                        let node = if self.attach {
                            self.nodes.get(&p.spec.node_name)
                        } else {
                            None
                        };
                        targets::pod_group(p, self.attach, node)
                    }
                    None => empty(),
                }),
                KubernetesRole::Service => Some(match self.services.get(&key) {
                    Some(s) => targets::service_group(s),
                    None => empty(),
                }),
                KubernetesRole::Ingress => Some(match self.ingresses.get(&key) {
                    Some(i) => targets::ingress_group(i),
                    None => empty(),
                }),
                KubernetesRole::Endpoints => Some(match self.endpoints.get(&key) {
                    Some(e) => {
                        let refs = Refs {
                            pods: &self.pods,
                            nodes: &self.nodes,
                            attach: self.attach,
                        };
                        targets::endpoints_group(e, self.services.get(&key), &refs)
                    }
                    None => empty(),
                }),
                KubernetesRole::EndpointSlice => Some(match self.slices.get(&key) {
                    Some(s) => {
                        let refs = Refs {
                            pods: &self.pods,
                            nodes: &self.nodes,
                            attach: self.attach,
                        };
                        let svc = targets::slice_service_name(s).and_then(|name| {
                            self.services
                                .get(&format!("{}/{name}", s.metadata.namespace))
                        });
                        targets::endpointslice_group(s, svc, &refs)
                    }
                    None => empty(),
                }),
            };
            match self.role {
                KubernetesRole::Node => self.nodes.built(&key),
                KubernetesRole::Pod => self.pods.built(&key),
                KubernetesRole::Service => self.services.built(&key),
                KubernetesRole::Ingress => self.ingresses.built(&key),
                _ => {}
            }
            out.extend(group);
        }
        out
    }
}

struct Refs<'a> {
    pods: &'a Store<Pod>,
    nodes: &'a Store<Node>,
    attach: bool,
}

impl Lookup for Refs<'_> {
    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&format!("{namespace}/{name}"))
    }
    fn node(&self, name: &str) -> Option<&Node> {
        if self.attach {
            self.nodes.get(name)
        } else {
            None
        }
    }
    fn attach_node(&self) -> bool {
        self.attach
    }
}
