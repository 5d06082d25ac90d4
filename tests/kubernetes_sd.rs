//! Kubernetes discovery against the fake API server (tests/support/kube.rs):
//!
//! - the cases of Prometheus v2.49.0's `discovery/kubernetes/*_test.go`, ported to
//!   `fixtures/discovery/kubernetes/*.yaml`: each case's objects, changes and expected target
//!   groups, which discovery must reproduce exactly (sources, labels, target order);
//! - the watch protocol: bookmarks, 410 Gone (as an event and as a status), resuming a cut
//!   watch without listing again, retrying with a backoff, a bearer token;
//! - `discovery::start`'s `synced` signal once every watch has listed.
//!
//! The scale figures (10,000 pods in one watch) are measured by agent/benches/kubernetes_sd.rs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::config::http::HttpClientConfig;
use agent::config::sd::{KubernetesApi, KubernetesRole, KubernetesSd, KubernetesSdConfig};
use agent::config::url::ConfigUrl;
use agent::discovery::kubernetes::client::Connection;
use agent::discovery::kubernetes::Discovery;
use agent::discovery::{LabelSet, TargetGroup};
use agent::httpclient::{HttpClient, Options};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::kube::FakeKube;

/// The groups discovery sent, last one per source.
type Seen = Arc<Mutex<BTreeMap<String, TargetGroup>>>;

fn yaml_to_json(v: serde_yaml::Value) -> Value {
    serde_json::to_value(v).expect("fixture YAML is JSON-compatible")
}

fn load(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(crate::support::fixture(&format!(
        "discovery/kubernetes/{file}"
    )))
    .unwrap();
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // A merge of a mapping that has a merge itself takes one pass per level.
    for _ in 0..4 {
        v.apply_merge().unwrap();
    }
    yaml_to_json(v)["cases"].as_array().expect("cases").clone()
}

fn labelset(v: &Value) -> LabelSet {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .unwrap_or_else(|| panic!("label {k}: {v} is not a string"))
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn expected_groups(v: &Value) -> BTreeMap<String, TargetGroup> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(source, g)| {
                    let targets = g["targets"]
                        .as_array()
                        .map(|ts| ts.iter().map(labelset).collect())
                        .unwrap_or_default();
                    (
                        source.clone(),
                        TargetGroup {
                            source: source.clone(),
                            targets,
                            labels: labelset(&g["labels"]),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn show(groups: &BTreeMap<String, TargetGroup>) -> String {
    let v: BTreeMap<&String, Value> = groups
        .iter()
        .map(|(s, g)| (s, json!({"targets": g.targets, "labels": g.labels})))
        .collect();
    serde_json::to_string_pretty(&v).unwrap()
}

/// A validated SD config from a fixture's `config`, pointed at `server`.
fn sd_config(config: &Value, server: &FakeKube) -> KubernetesSd {
    let raw: KubernetesSdConfig = serde_json::from_value(config.clone()).expect("config");
    let mut sd = raw.resolve().expect("valid config");
    sd.api = KubernetesApi::Server {
        url: ConfigUrl::parse(&server.url()).unwrap(),
        http_client: Box::default(),
    };
    sd
}

fn connection(server: &FakeKube, own_namespace: Option<&str>, token: Option<&str>) -> Connection {
    agent::httpclient::ensure_crypto_provider();
    let cfg = HttpClientConfig {
        bearer_token: token.map(agent::config::secret::Secret::new),
        ..HttpClientConfig::default()
    };
    Connection {
        base: server.url(),
        shown_base: server.url(),
        client: HttpClient::new(&cfg.settings().unwrap(), &Options::default()).unwrap(),
        own_namespace: own_namespace.map(str::to_owned),
    }
}

/// Runs discovery for `sd`, collecting what it sends into the returned map.
fn spawn(sd: &KubernetesSd, conn: Connection, stop: &CancellationToken) -> Seen {
    let seen: Seen = Arc::default();
    let (tx, mut rx) = mpsc::channel::<Vec<TargetGroup>>(64);
    tokio::spawn(Discovery::with_connection(sd, conn).run(tx, |g| g, stop.clone()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(groups) = rx.recv().await {
            let mut m = s.lock().unwrap();
            for g in groups {
                m.insert(g.source.clone(), g);
            }
        }
    });
    seen
}

/// How many list+watch pairs discovery makes for `sd` with `namespaces` watched.
fn watchers(sd: &KubernetesSd, namespaces: usize) -> usize {
    let per_ns = match sd.role {
        KubernetesRole::Node => return 1,
        KubernetesRole::Endpoints | KubernetesRole::EndpointSlice => 3,
        _ => 1,
    };
    per_ns * namespaces + usize::from(sd.attach_node_metadata)
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every watch has been established (so every list was delivered).
async fn wait_watching(server: &FakeKube, n: usize) {
    wait_until("every watch established", Duration::from_secs(10), || {
        server
            .paths()
            .iter()
            .filter(|p| server.watches(p) > 0)
            .count()
            >= n
    })
    .await;
}

/// Makes sure discovery has applied every change made so far: every watch is cut after a
/// bookmark, until each resumes from the current version (so every event before it was handed
/// to discovery), then an object of the primary kind is added and its group awaited (discovery
/// applies changes in order, so everything before it was applied). Returns the sentinel's
/// source, to be left out of comparisons.
async fn barrier(server: &FakeKube, sd: &KubernetesSd, namespace: &str, seen: &Seen) -> String {
    let paths: Vec<String> = server
        .paths()
        .into_iter()
        .filter(|p| server.watches(p) > 0)
        .collect();
    resume_at(server, &paths, server.resource_version()).await;
    let (object, source) = sentinel(sd.role, namespace);
    server.create(object);
    wait_until("the sentinel group", Duration::from_secs(10), || {
        seen.lock().unwrap().contains_key(&source)
    })
    .await;
    source
}

/// Sends bookmarks and cuts the watches of `paths` until each one resumes from `version` or
/// later: every event up to `version` was then handed to discovery.
async fn resume_at(server: &FakeKube, paths: &[String], version: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before: Vec<usize> = paths.iter().map(|p| server.watches(p)).collect();
        server.bookmark();
        // Give the bookmark a chance to be read before the cut; a miss only costs a round.
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.cut_watches();
        wait_until(
            "watches resumed after a cut",
            Duration::from_secs(10),
            || {
                paths
                    .iter()
                    .zip(&before)
                    .all(|(p, b)| server.watches(p) > *b)
            },
        )
        .await;
        let caught_up = paths.iter().all(|p| {
            server
                .watch_versions(p)
                .last()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= version)
        });
        if caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "watches never resumed from {version}"
        );
    }
}

/// An object of `role`'s kind that has a non-empty group.
fn sentinel(role: KubernetesRole, ns: &str) -> (Value, String) {
    let name = "zz-barrier";
    let meta = json!({"name": name, "namespace": ns});
    let (object, source) = match role {
        KubernetesRole::Node => (
            json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": name},
                   "status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}],
                              "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}),
            format!("node/{name}"),
        ),
        KubernetesRole::Pod => (
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta,
                   "spec": {"containers": [{"name": "c"}]}, "status": {"podIP": "10.9.9.9"}}),
            format!("pod/{ns}/{name}"),
        ),
        KubernetesRole::Service => (
            json!({"kind": "Service", "apiVersion": "v1", "metadata": meta,
                   "spec": {"ports": [{"port": 1}]}}),
            format!("svc/{ns}/{name}"),
        ),
        KubernetesRole::Ingress => (
            json!({"kind": "Ingress", "apiVersion": "networking.k8s.io/v1", "metadata": meta,
                   "spec": {"rules": [{"host": "barrier"}]}}),
            format!("ingress/{ns}/{name}"),
        ),
        KubernetesRole::Endpoints => (
            json!({"kind": "Endpoints", "apiVersion": "v1", "metadata": meta,
                   "subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"port": 1}]}]}),
            format!("endpoints/{ns}/{name}"),
        ),
        KubernetesRole::EndpointSlice => (
            json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": meta,
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.9.9.9"]}],
                   "ports": [{"port": 1}]}),
            format!("endpointslice/{ns}/{name}"),
        ),
    };
    (object, source)
}

fn apply(server: &FakeKube, action: &Value) {
    let (op, object) = action
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("an action is {create|update|delete: object}");
    match op.as_str() {
        "create" => {
            server.create(object.clone());
        }
        "update" => {
            server.update(object.clone());
        }
        "delete" => {
            server.delete(object);
        }
        other => panic!("unknown action {other}"),
    }
}

async fn run_case(case: &Value) {
    let name = case["name"].as_str().unwrap();
    let server = FakeKube::start();
    for o in case["before_run"].as_array().into_iter().flatten() {
        server.create(o.clone());
    }
    let sd = sd_config(&case["config"], &server);
    let own = case["own_namespace"].as_str();
    let stop = CancellationToken::new();
    let seen = spawn(&sd, connection(&server, own, None), &stop);
    let mut namespaces: Vec<String> = sd.namespaces.clone();
    if sd.own_namespace {
        namespaces.extend(own.map(str::to_owned));
    }
    wait_watching(&server, watchers(&sd, namespaces.len().max(1))).await;
    for action in case["after_start"].as_array().into_iter().flatten() {
        apply(&server, action);
    }
    let ns = namespaces.first().map_or("default", String::as_str);
    let sentinel = barrier(&server, &sd, ns, &seen).await;
    let mut got = seen.lock().unwrap().clone();
    got.remove(&sentinel);
    let want = expected_groups(&case["expected"]);
    stop.cancel();
    assert!(
        got == want,
        "{name}: discovered groups differ from Prometheus's\n--- want\n{}\n--- got\n{}",
        show(&want),
        show(&got)
    );
    // Nothing listed twice: the barrier's cuts were resumed from the last version.
    for p in server.paths() {
        assert_eq!(server.lists(&p), 1, "{name}: {p} listed again");
    }
}

async fn run_file(file: &str) {
    let cases = load(file);
    assert!(!cases.is_empty());
    for case in &cases {
        run_case(case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_pod_cases() {
    run_file("pod.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_node_cases() {
    run_file("node.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_service_cases() {
    run_file("service.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_ingress_cases() {
    run_file("ingress.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoints_cases() {
    run_file("endpoints.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpointslice_cases() {
    run_file("endpointslice.yaml").await;
}

/// Prometheus v2.49.0's `config/testdata/kubernetes_*.yml` (copied to
/// `fixtures/discovery/kubernetes/config/`): the good ones load, the bad ones are refused with
/// the text Prometheus's `config_test.go` expects.
#[test]
fn prometheus_config_cases() {
    use agent::config::load::parse_instance;
    use agent::config::GlobalConfig;
    let bad = [
        ("kubernetes_http_config_without_api_server.bad.yml", "to use custom HTTP client configuration please provide the 'api_server' URL explicitly"),
        ("kubernetes_kubeconfig_with_own_namespace.bad.yml", "cannot use 'kubeconfig_file' and 'namespaces.own_namespace' simultaneously"),
        ("kubernetes_api_server_with_own_namespace.bad.yml", "cannot use 'api_server' and 'namespaces.own_namespace' simultaneously"),
        ("kubernetes_kubeconfig_with_apiserver.bad.yml", "cannot use 'kubeconfig_file' and 'api_server' simultaneously"),
        ("kubernetes_kubeconfig_with_http_config.bad.yml", "cannot use a custom HTTP client configuration together with 'kubeconfig_file'"),
        ("kubernetes_bearertoken.bad.yml", "at most one of bearer_token & bearer_token_file must be configured"),
        ("kubernetes_role.bad.yml", "unknown Kubernetes SD role \"vacation\""),
        ("kubernetes_selectors_endpoints.bad.yml", "endpoints role supports only pod, service, endpoints selectors"),
        ("kubernetes_selectors_ingress.bad.yml", "ingress role supports only ingress selectors"),
        ("kubernetes_selectors_node.bad.yml", "node role supports only node selectors"),
        ("kubernetes_selectors_pod.bad.yml", "pod role supports only pod selectors"),
        ("kubernetes_selectors_service.bad.yml", "service role supports only service selectors"),
        // Prometheus: "field foo not found in type kubernetes.plain"; every unknown field here
        // is named by serde, with the fields it expected.
        ("kubernetes_namespace_discovery.bad.yml", "namespaces: unknown field \"foo\""),
        ("kubernetes_selectors_duplicated_role.bad.yml", "duplicated selector role: pod"),
        ("kubernetes_selectors_incorrect_selector.bad.yml", "invalid selector: 'metadata.status-Running'; can't understand 'metadata.status-Running'"),
        ("kubernetes_bearertoken_basicauth.bad.yml", "at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be configured"),
        ("kubernetes_authorization_basicauth.bad.yml", "at most one of basic_auth, oauth2 & authorization must be configured"),
    ];
    let dir = crate::support::fixture("discovery/kubernetes/config");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let r = parse_instance(&text, &GlobalConfig::default());
        if f.ends_with(".good.yml") {
            let (_, cfg) = r.unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!cfg.scrape_configs[0].kubernetes_sd_configs.is_empty());
        } else {
            let want = bad
                .iter()
                .find(|(name, _)| name == f)
                .unwrap_or_else(|| panic!("{f}: no expected error"))
                .1;
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{f}: accepted"))
                .to_string();
            assert!(e.contains(want), "{f}: {e}\nwant: {want}");
        }
        checked += 1;
    }
    assert_eq!(checked, 24, "{files:?}");
}

/// `agentctl config check` refuses a bad block with the file, line and Prometheus's text, and
/// no longer warns that kubernetes and consul SD are not run.
#[test]
fn config_check_refuses_with_prometheus_texts_and_runs_kubernetes_and_consul() {
    let dir = tempfile::tempdir().unwrap();
    let bad = crate::support::fixture(
        "discovery/kubernetes/config/kubernetes_selectors_duplicated_role.bad.yml",
    );
    let out = crate::support::agentctl(&["config", "check", bad.to_str().unwrap()], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("duplicated selector role: pod"), "{err}");
    assert!(
        err.contains("kubernetes_selectors_duplicated_role.bad.yml"),
        "{err}"
    );
    let good = dir.path().join("sd.yml");
    std::fs::write(
        &good,
        "scrape_configs:\n  - job_name: k\n    kubernetes_sd_configs:\n      - role: pod\n  - job_name: c\n    consul_sd_configs:\n      - server: consul:8500\n        services: [web]\n",
    )
    .unwrap();
    let out = crate::support::agentctl(&["config", "check", good.to_str().unwrap()], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "m", "containerPort": 8080, "protocol": "TCP"}]}]},
           "status": {"podIP": ip, "phase": "Running"}})
}

fn pod_sd(server: &FakeKube, extra: &str) -> KubernetesSd {
    let cfg: serde_yaml::Value = serde_yaml::from_str(&format!("role: pod\n{extra}")).unwrap();
    sd_config(&yaml_to_json(cfg), server)
}

/// The addresses of the non-empty groups.
fn addresses(seen: &Seen) -> Vec<String> {
    let mut v: Vec<String> = seen
        .lock()
        .unwrap()
        .values()
        .flat_map(|g| g.targets.iter().map(|t| t["__address__"].clone()))
        .collect();
    v.sort();
    v
}

async fn wait_addresses(seen: &Seen, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let have = addresses(seen);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "want {want:?}, have {have:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A watch resumed after a cut starts from the last bookmark, not from a list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_bookmarks_without_listing_again() {
    let server = FakeKube::start();
    server.create(pod("default", "a", "10.0.0.1", json!({})));
    let sd = pod_sd(&server, "");
    let stop = CancellationToken::new();
    let seen = spawn(&sd, connection(&server, None, None), &stop);
    wait_addresses(&seen, &["10.0.0.1:8080"]).await;
    // Changes elsewhere move the version on; the pod watch sees them only through a bookmark.
    for i in 0..5 {
        server.create(json!({"kind": "Service", "apiVersion": "v1",
                             "metadata": {"name": format!("s{i}"), "namespace": "default"}}));
    }
    // Resuming from the current version is only possible through a bookmark: the last pod
    // event is older.
    resume_at(
        &server,
        &["/api/v1/pods".to_owned()],
        server.resource_version(),
    )
    .await;
    server.create(pod("default", "b", "10.0.0.2", json!({})));
    wait_addresses(&seen, &["10.0.0.1:8080", "10.0.0.2:8080"]).await;
    assert_eq!(server.lists("/api/v1/pods"), 1);
    stop.cancel();
}

/// Changes missed while watches failed, and older than the server keeps, are found by listing
/// again after 410 Gone (as a watch event, then as an HTTP status); failed watches are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_lists_again_and_finds_what_changed_meanwhile() {
    for as_status in [false, true] {
        let server = FakeKube::start();
        server.gone_as_status(as_status);
        let a = pod("default", "a", "10.0.0.1", json!({}));
        let b = pod("default", "b", "10.0.0.2", json!({}));
        server.create(a.clone());
        server.create(b.clone());
        let sd = pod_sd(&server, "");
        let stop = CancellationToken::new();
        let seen = spawn(&sd, connection(&server, None, None), &stop);
        wait_addresses(&seen, &["10.0.0.1:8080", "10.0.0.2:8080"]).await;
        server.reject_watches(true);
        server.cut_watches();
        server.delete(&b);
        server.update(pod("default", "a", "10.0.0.9", json!({})));
        server.create(pod("default", "c", "10.0.0.3", json!({})));
        server.compact();
        server.reject_watches(false);
        wait_addresses(&seen, &["10.0.0.3:8080", "10.0.0.9:8080"]).await;
        assert_eq!(server.lists("/api/v1/pods"), 2, "as_status={as_status}");
        // The deleted pod's group was sent empty.
        assert!(seen.lock().unwrap()["pod/default/b"].targets.is_empty());
        stop.cancel();
    }
}

/// Label and field selectors are sent with the list and the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_are_sent_to_the_server() {
    let server = FakeKube::start();
    server.create(pod("default", "a", "10.0.0.1", json!({"app": "web"})));
    server.create(pod("default", "b", "10.0.0.2", json!({"app": "db"})));
    server.create(pod("other", "c", "10.0.0.3", json!({"app": "web"})));
    let sd = pod_sd(
        &server,
        "selectors:\n  - role: pod\n    label: app in (web, api)\n    field: metadata.namespace!=other\n",
    );
    let stop = CancellationToken::new();
    let seen = spawn(&sd, connection(&server, None, None), &stop);
    wait_addresses(&seen, &["10.0.0.1:8080"]).await;
    server.create(pod("default", "d", "10.0.0.4", json!({"app": "api"})));
    server.create(pod("default", "e", "10.0.0.5", json!({"app": "db"})));
    wait_addresses(&seen, &["10.0.0.1:8080", "10.0.0.4:8080"]).await;
    stop.cancel();
}

/// The bearer token file is read for every request: after a 401 the request is retried with
/// a backoff, and a rotated token is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_file_is_read_again_after_401() {
    let server = FakeKube::start();
    server.require_token("s3cret");
    server.create(pod("default", "a", "10.0.0.1", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "old-token\n").unwrap();
    agent::httpclient::ensure_crypto_provider();
    let cfg = HttpClientConfig {
        bearer_token_file: Some(token.display().to_string()),
        ..HttpClientConfig::default()
    };
    let conn = Connection {
        base: server.url(),
        shown_base: server.url(),
        client: HttpClient::new(&cfg.settings().unwrap(), &Options::default()).unwrap(),
        own_namespace: None,
    };
    let sd = pod_sd(&server, "");
    let stop = CancellationToken::new();
    let seen = spawn(&sd, conn, &stop);
    wait_until("a refused list", Duration::from_secs(10), || {
        server.lists("/api/v1/pods") == 0 && server.refused() >= 2
    })
    .await;
    assert!(addresses(&seen).is_empty());
    std::fs::write(&token, "s3cret\n").unwrap();
    wait_addresses(&seen, &["10.0.0.1:8080"]).await;
    stop.cancel();
}

/// `discovery::start`'s `synced`: false while a watch has not listed (here every list is
/// refused until the token file holds the right token), then true with every group already in
/// the targets it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_once_every_watch_has_listed() {
    let server = FakeKube::start();
    server.require_token("s3cret");
    server.create(pod("a", "p1", "10.0.0.1", json!({})));
    server.create(pod("b", "p2", "10.0.0.2", json!({})));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "old-token\n").unwrap();
    // Three watches: pods in a, pods in b, nodes.
    let yaml = format!(
        "scrape_configs:\n  - job_name: k\n    kubernetes_sd_configs:\n      - role: pod\n        api_server: {}\n        bearer_token_file: {}\n        namespaces: {{names: [a, b]}}\n        attach_metadata: {{node: true}}\n",
        server.url(),
        token.display()
    );
    let (_, cfg) =
        agent::config::load::parse_instance(&yaml, &agent::config::GlobalConfig::default())
            .unwrap();
    let stop = CancellationToken::new();
    let mut d = agent::discovery::start(&cfg.scrape_configs[0], None, stop.clone()).unwrap();
    wait_until("every list refused once", Duration::from_secs(10), || {
        server.refused() >= 3
    })
    .await;
    assert!(!*d.synced.borrow());
    assert!(d.targets.borrow().is_empty());
    std::fs::write(&token, "s3cret\n").unwrap();
    tokio::time::timeout(Duration::from_secs(30), d.synced.wait_for(|s| *s))
        .await
        .expect("synced within 30 s")
        .unwrap();
    let sources: Vec<String> = d
        .targets
        .borrow()
        .iter()
        .map(|g| g.source.clone())
        .collect();
    assert_eq!(sources, ["pod/a/p1", "pod/b/p2"]);
    stop.cancel();
}

/// `host_filter` with a `role: pod` discovery: the API server is asked for this node's pods
/// only (`spec.nodeName=<host>` added to the config's own field selector), so an agent per node
/// does not list and watch the whole cluster's pods; only this node's pods become targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_filter_asks_the_api_server_for_this_nodes_pods_only() {
    use agent::scrape::appender::MemoryStorage;
    use agent::scrape::host_filter::HostFilter;
    use agent::scrape::manager::ScrapeManager;
    let server = FakeKube::start();
    // Loopback addresses: a scrape, if one starts, stays on this machine.
    for (name, ip, node) in [("a", "127.0.0.11", "node-a"), ("b", "127.0.0.12", "node-b")] {
        let mut p = pod("default", name, ip, json!({}));
        p["spec"]["nodeName"] = json!(node);
        server.create(p);
    }
    let yaml = format!(
        "scrape_configs:\n  - job_name: k\n    scrape_interval: 1h\n    kubernetes_sd_configs:\n      - role: pod\n        api_server: {}\n        selectors: [{{role: pod, field: 'status.phase=Running'}}]\n",
        server.url()
    );
    let (_, cfg) =
        agent::config::load::parse_instance(&yaml, &agent::config::GlobalConfig::default())
            .unwrap();
    let m = ScrapeManager::new("inst", Arc::new(MemoryStorage::new()), None)
        .with_host_filter(HostFilter::new("node-a", Vec::new()));
    m.apply(&cfg.scrape_configs).await.unwrap();
    wait_until("a target", Duration::from_secs(15), || {
        !m.targets().is_empty()
    })
    .await;
    let endpoints: Vec<String> = m.targets().into_iter().map(|t| t.endpoint).collect();
    assert_eq!(endpoints, ["http://127.0.0.11:8080/metrics"]);
    let fields = server.list_field_selectors("/api/v1/pods");
    assert!(!fields.is_empty(), "no list of pods");
    assert!(
        fields
            .iter()
            .all(|f| f == "status.phase=Running,spec.nodeName=node-a"),
        "{fields:?}"
    );
    m.stop(false).await;
}

/// `kubeconfig_file`: the current context's server and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_file_reaches_the_server() {
    let server = FakeKube::start();
    server.require_token("from-kubeconfig");
    server.create(pod("default", "a", "10.0.0.1", json!({})));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "from-kubeconfig\n").unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: me\n  user:\n    tokenFile: token\ncontexts:\n- name: here\n  context:\n    cluster: fake\n    user: me\ncurrent-context: here\n",
            server.url()
        ),
    )
    .unwrap();
    let raw: KubernetesSdConfig =
        serde_yaml::from_str("role: pod\nkubeconfig_file: kubeconfig\n").unwrap();
    let sd = raw.resolve().unwrap();
    let d = Discovery::new(&sd, Some(dir.path())).unwrap();
    let seen: Seen = Arc::default();
    let (tx, mut rx) = mpsc::channel::<Vec<TargetGroup>>(8);
    let stop = CancellationToken::new();
    tokio::spawn(d.run(tx, |g| g, stop.clone()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(gs) = rx.recv().await {
            for g in gs {
                s.lock().unwrap().insert(g.source.clone(), g);
            }
        }
    });
    wait_addresses(&seen, &["10.0.0.1:8080"]).await;
    stop.cancel();
}

/// Beyond Prometheus 2.49: a change to a pod reaches the endpoints targets that refer to it,
/// even when the Endpoints object does not change (2.49 waited for the Endpoints object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_changes_reach_endpoints_targets() {
    let server = FakeKube::start();
    server.create(pod("default", "a", "10.0.0.1", json!({"v": "1"})));
    server.create(json!({"kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "svc", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default"}}],
                     "ports": [{"name": "m", "port": 8080, "protocol": "TCP"}]}]}));
    let cfg: serde_yaml::Value = serde_yaml::from_str("role: endpoints").unwrap();
    let sd = sd_config(&yaml_to_json(cfg), &server);
    let stop = CancellationToken::new();
    let seen = spawn(&sd, connection(&server, None, None), &stop);
    let label = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .get("endpoints/default/svc")
            .and_then(|g| g.targets.first().cloned())
            .and_then(|t| t.get("__meta_kubernetes_pod_label_v").cloned())
    };
    wait_until("initial group", Duration::from_secs(10), || {
        label(&seen).as_deref() == Some("1")
    })
    .await;
    server.update(pod("default", "a", "10.0.0.1", json!({"v": "2"})));
    wait_until("the pod's new label", Duration::from_secs(10), || {
        label(&seen).as_deref() == Some("2")
    })
    .await;
    stop.cancel();
}

/// In-cluster config: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, verified with
/// the service account's CA, its token as bearer token, and its namespace as `own_namespace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_service_account_over_tls() {
    use agent::discovery::kubernetes::client::{connect, Environment};
    let ca = crate::support::tls::Ca::new("kubernetes CA");
    let leaf = ca.server(&["127.0.0.1"]);
    let server = FakeKube::start_tls(crate::support::tls::server_config(&leaf, None));
    server.require_token("sa-token");
    server.create(pod("monitoring", "a", "10.0.0.1", json!({})));
    server.create(pod("other", "b", "10.0.0.2", json!({})));
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), "sa-token").unwrap();
    std::fs::write(sa.path().join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(sa.path().join("namespace"), "monitoring").unwrap();
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let env = Environment {
        service_host: Some(host.to_owned()),
        service_port: Some(port.to_owned()),
        service_account_dir: sa.path().to_path_buf(),
    };
    let raw: KubernetesSdConfig =
        serde_yaml::from_str("role: pod\nnamespaces: {own_namespace: true}\n").unwrap();
    let sd = raw.resolve().unwrap();
    agent::httpclient::ensure_crypto_provider();
    let conn = connect(&sd, None, &env).unwrap();
    assert_eq!(conn.own_namespace.as_deref(), Some("monitoring"));
    let stop = CancellationToken::new();
    let seen = spawn(&sd, conn, &stop);
    wait_addresses(&seen, &["10.0.0.1:8080"]).await;
    assert_eq!(server.paths(), ["/api/v1/namespaces/monitoring/pods"]);
    // Another CA: the server is not trusted and nothing is discovered.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("token"), "sa-token").unwrap();
    std::fs::write(
        other.path().join("ca.crt"),
        crate::support::tls::Ca::new("other").pem(),
    )
    .unwrap();
    let env = Environment {
        service_account_dir: other.path().to_path_buf(),
        ..env
    };
    let raw: KubernetesSdConfig = serde_yaml::from_str("role: pod\n").unwrap();
    let conn = connect(&raw.resolve().unwrap(), None, &env).unwrap();
    let url = format!("{}/api/v1/pods", conn.base);
    let e = conn.client.send(conn.client.get(&url)).await.unwrap_err();
    let chain = agent::httpclient::error_chain(&e);
    assert!(chain.contains("certificate"), "{chain}");
    stop.cancel();
}
