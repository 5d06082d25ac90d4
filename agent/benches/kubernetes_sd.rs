//! Kubernetes discovery of `PODS` pods in one watch (role `pod`, every namespace), measured
//! end to end in this process against a minimal API server on loopback:
//!
//! - heap held by discovery alone (its caches and the target groups), then by discovery plus
//!   the scrape manager (targets relabelled, one scrape loop per target), counted with a counting
//!   global allocator after the first list is in;
//! - CPU time and wall time of that first list (the server's pages are serialized beforehand, so
//!   its share is a copy);
//! - the latency from a watch event leaving the server to the scrape loops changing (a pod
//!   added: one loop more; deleted: one loop less), over `CHANGES` events one after the other,
//!   and the CPU time per event.
//!
//! The pods look like real ones (labels, annotations, owner references, `managedFields`, two
//! containers with env, resources and probes: about 4.5 KB of JSON each), so that parsing and
//! skipping what discovery does not keep costs what it costs in a cluster. The scrape interval
//! is an hour, so no scrape runs during the measurement.
//!
//! Run: `cargo bench -p agentctl-agent --bench kubernetes_sd` (10,000 pods, 200 events);
//! `cargo test --benches` runs it with 300 pods and 20 events.

use std::alloc::System;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::config::load::parse_instance;
use agent::config::GlobalConfig;
use agent::labels::Labels;
use agent::scrape::appender::{AppendError, Appender, SeriesRef, Storage};
use agent::scrape::manager::ScrapeManager;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::json;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PAGE: usize = 500;

fn pod(i: usize, rv: u64) -> serde_json::Value {
    let name = format!("app-{:05}-7d9f8b6c5-{:05x}", i / 10, i);
    let ns = format!("team-{}", i % 20);
    let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("6f1c2a8e-0b7d-4c35-9e8f-{i:012}"),
            "resourceVersion": rv.to_string(), "creationTimestamp": "2026-12-01T10:00:00Z",
            "generateName": format!("app-{:05}-7d9f8b6c5-", i / 10),
            "labels": {"app.kubernetes.io/name": format!("app-{:05}", i / 10),
                       "app.kubernetes.io/instance": "prod", "app.kubernetes.io/version": "1.4.2",
                       "pod-template-hash": "7d9f8b6c5", "team": format!("team-{}", i % 20)},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                            "kubectl.kubernetes.io/restartedAt": "2026-12-01T09:59:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("app-{:05}-7d9f8b6c5", i / 10),
                                 "uid": "0c8a5f3e-2d1b-4f6a-8c9d-123456789abc",
                                 "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {},
                    "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"0c8a5f3e\"}": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {},
                    "f:ports": {}, "f:resources": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-12-01T10:00:05Z",
                 "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                    "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 200), "serviceAccountName": "app", "restartPolicy": "Always",
            "containers": [
                {"name": "app", "image": "registry.example.com/app:1.4.2",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                           {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME",
                          "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                    "periodSeconds": 10, "timeoutSeconds": 1},
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                {"name": "proxy", "image": "registry.example.com/proxy:2.0.1",
                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": format!("192.168.{}.{}", (i % 200) / 250, i % 200), "podIP": ip,
            "podIPs": [{"ip": ip}], "startTime": "2026-12-01T10:00:01Z", "qosClass": "Burstable",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-01T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:09Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-12-01T10:00:09Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
            "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "started": true,
                 "image": "registry.example.com/app:1.4.2", "imageID": "registry.example.com/app@sha256:0123456789abcdef",
                 "containerID": format!("containerd://{i:064x}"),
                 "state": {"running": {"startedAt": "2026-12-01T10:00:05Z"}}},
                {"name": "proxy", "ready": true, "restartCount": 0, "started": true,
                 "image": "registry.example.com/proxy:2.0.1", "imageID": "registry.example.com/proxy@sha256:fedcba9876543210",
                 "containerID": format!("containerd://{:064x}", i + 1_000_000),
                 "state": {"running": {"startedAt": "2026-12-01T10:00:05Z"}}}]
        }
    })
}

/// The minimal API server: pre-serialized list pages, and the events pushed to the open watch
/// stamped with the time they are handed to it.
#[derive(Clone)]
struct Api {
    pages: Arc<Vec<Bytes>>,
    watch: Arc<Mutex<Option<mpsc::Sender<Bytes>>>>,
}

async fn pods(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "1") {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        *api.watch.lock().unwrap() = Some(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    assert_eq!(q.get("limit").map(String::as_str), Some("500"));
    let page: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(api.pages[page].clone()))
        .unwrap()
}

fn list_pages(n: usize, rv: u64) -> (Vec<Bytes>, usize) {
    let mut pages = Vec::new();
    let mut json_bytes = 0;
    let count = n.div_ceil(PAGE).max(1);
    for p in 0..count {
        let items: Vec<serde_json::Value> = (p * PAGE..((p + 1) * PAGE).min(n))
            .map(|i| pod(i, rv))
            .collect();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if p + 1 < count {
            meta["continue"] = json!((p + 1).to_string());
        }
        let body = serde_json::to_vec(
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}),
        )
        .unwrap();
        json_bytes += body.len();
        pages.push(Bytes::from(body));
    }
    (pages, json_bytes)
}

#[derive(Default)]
struct NoopAppender {
    next: SeriesRef,
}

impl Appender for NoopAppender {
    fn new_series(&mut self, labels: Labels) -> (SeriesRef, Labels) {
        self.next.0 += 1;
        (self.next, labels)
    }
    fn append(&mut self, _r: SeriesRef, _t_ms: i64, _v: f64) {}
    fn commit(&mut self) -> Result<(), AppendError> {
        Ok(())
    }
    fn rollback(&mut self) {}
}

struct NoopStorage;

impl Storage for NoopStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(NoopAppender::default())
    }
}

/// Process CPU time (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn held(r: &Region<'_, System>) -> f64 {
    let s = r.change();
    s.bytes_allocated as f64 - s.bytes_deallocated as f64
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 120 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, changes) = if full { (10_000, 200) } else { (300, 20) };
    let rv = 1_000u64;
    let (pages, json_bytes) = list_pages(n, rv);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let api = Api {
            pages: Arc::new(pages),
            watch: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/api/v1/pods", axum::routing::get(pods))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let yaml = format!(
            "scrape_configs:\n  - job_name: pods\n    scrape_interval: 1h\n    scrape_timeout: 10s\n    kubernetes_sd_configs:\n      - role: pod\n        api_server: http://{addr}\n    relabel_configs:\n      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]\n        regex: 'true'\n        action: keep\n      - source_labels: [__meta_kubernetes_pod_container_port_name]\n        regex: metrics\n        action: keep\n      - action: labelmap\n        regex: __meta_kubernetes_pod_label_(.+)\n      - source_labels: [__meta_kubernetes_namespace]\n        target_label: namespace\n      - source_labels: [__meta_kubernetes_pod_name]\n        target_label: pod\n"
        );
        let (_, cfg) = parse_instance(&yaml, &GlobalConfig::default()).expect("bench config");
        let job = cfg.scrape_configs.into_iter().next().unwrap();

        // 1. Discovery alone.
        let region = Region::new(GLOBAL);
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let stop = CancellationToken::new();
        let rx = agent::discovery::start(&job, None, stop.clone())
            .expect("discovery")
            .targets;
        wait_for("discovery of every pod", || rx.borrow().len() == n).await;
        let (sync_wall, sync_cpu) = (t0.elapsed(), cpu_time() - cpu0);
        let discovery_heap = held(&region);
        stop.cancel();
        drop(rx);
        *api.watch.lock().unwrap() = None;

        // 2. Discovery and the scrape manager: one loop per pod (its `metrics` port).
        let region = Region::new(GLOBAL);
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let manager = ScrapeManager::new("bench", Arc::new(NoopStorage), None);
        manager.apply(std::slice::from_ref(&job)).await.expect("start the job");
        wait_for("a scrape loop per pod", || manager.active_targets() == n).await;
        let (full_wall, full_cpu) = (t0.elapsed(), cpu_time() - cpu0);
        let full_heap = held(&region);
        wait_for("the watch", || api.watch.lock().unwrap().is_some()).await;
        let watch = api.watch.lock().unwrap().clone().unwrap();

        // 3. One pod added, then deleted, one event at a time.
        let mut latencies = Vec::with_capacity(changes);
        let cpu0 = cpu_time();
        for k in 0..changes {
            let i = n + k / 2;
            let added = k % 2 == 0;
            let ev = json!({"type": if added { "ADDED" } else { "DELETED" },
                            "object": pod(i, rv + 1 + k as u64)});
            let mut line = serde_json::to_vec(&ev).unwrap();
            line.push(b'\n');
            let want = if added { n + 1 } else { n };
            let t = Instant::now();
            watch.send(Bytes::from(line)).await.expect("watch open");
            wait_for("the change at the scrape loops", || manager.active_targets() == want).await;
            latencies.push(t.elapsed());
        }
        // Includes the polling below (a check per millisecond of tokio's timer).
        let single_cpu = (cpu_time() - cpu0) / changes as u32;
        // 4. CPU per event: a burst of single-pod events, sent back to back.
        let base = n + changes;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        for k in 0..changes {
            let ev = json!({"type": "ADDED", "object": pod(base + k, rv + 10_000 + k as u64)});
            let mut line = serde_json::to_vec(&ev).unwrap();
            line.push(b'\n');
            watch.send(Bytes::from(line)).await.expect("watch open");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while manager.active_targets() != n + changes {
            assert!(Instant::now() < deadline, "burst not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (burst_wall, per_change_cpu) = (t0.elapsed(), (cpu_time() - cpu0) / changes as u32);
        manager.stop(false).await;
        latencies.sort();
        let (p50, p99, max) = (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            *latencies.last().unwrap(),
        );
        println!("kubernetes_sd: {n} pods in one watch (role pod), {changes} single-pod events");
        println!(
            "  API JSON listed           {} ({} B per pod)",
            mib(json_bytes as f64),
            json_bytes / n
        );
        println!(
            "  discovery heap            {} ({:.0} B per pod)",
            mib(discovery_heap),
            discovery_heap / n as f64
        );
        println!(
            "  discovery + scrape heap   {} ({:.0} B per pod)",
            mib(full_heap),
            full_heap / n as f64
        );
        println!("  first list, discovery     {sync_wall:.2?} wall, {sync_cpu:.2?} CPU");
        println!("  first list, to the loops  {full_wall:.2?} wall, {full_cpu:.2?} CPU");
        println!("  event -> scrape loops     p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}");
        println!("  one event at a time       {single_cpu:.2?} CPU per event (with the bench's polling)");
        println!(
            "  burst of {changes} events        applied in {burst_wall:.2?}, {per_change_cpu:.2?} CPU per event"
        );
        assert!(
            p99 < Duration::from_secs(1),
            "a change must reach the scrape loops within 1 s (p99 {p99:?})"
        );
    });
}
