//! Consul discovery against the fake Consul agent (tests/support/consul.rs): the cases of
//! Prometheus v2.49.0's `discovery/consul/consul_test.go` (`fixtures/discovery/consul/`), and
//! blocking queries following a changing catalog.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::config::http::Auth;
use agent::config::sd::ConsulSdConfig;
use agent::config::secret::SecretSource;
use agent::discovery::consul::{should_watch, Discovery};
use agent::discovery::{LabelSet, TargetGroup};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::consul::{instance, FakeConsul};

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(crate::support::fixture("discovery/consul/consul_test.yaml"))
            .unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(v).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Runs discovery for `config` (YAML mapping, `server` added), recording every message.
fn spawn(
    config: &Value,
    server: &str,
    stop: &CancellationToken,
) -> Arc<Mutex<Vec<Vec<TargetGroup>>>> {
    agent::httpclient::ensure_crypto_provider();
    let mut config = config.clone();
    config["server"] = json!(server);
    let raw: ConsulSdConfig = serde_json::from_value(config).expect("config");
    let sd = raw.resolve().expect("valid");
    let d = Discovery::new(&sd, None).expect("client");
    let (tx, mut rx) = mpsc::channel::<Vec<TargetGroup>>(64);
    tokio::spawn(d.run(tx, |g| g, stop.clone()));
    let seen: Arc<Mutex<Vec<Vec<TargetGroup>>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            s.lock().unwrap().push(m);
        }
    });
    seen
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn prometheus_should_watch_cases() {
    let f = fixture();
    let cases = f["should_watch"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    for c in cases {
        let got = should_watch(
            &strings(&c["services"]),
            &strings(&c["tags"]),
            c["name"].as_str().unwrap(),
            &strings(&c["service_tags"]),
        );
        assert_eq!(got, c["watch"].as_bool().unwrap(), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stub_server_cases() {
    let f = fixture();
    let stubs: BTreeMap<String, (u16, String)> = f["urls"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(u, b)| (u.clone(), (200, b.as_str().unwrap().to_owned())))
        .collect();
    let test_target: LabelSet = f["test_target"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    for run in f["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let server = FakeConsul::stub(stubs.clone());
        let stop = CancellationToken::new();
        let seen = spawn(&run["config"], &server.addr, &stop);
        if run["first_empty"].as_bool() == Some(true) {
            wait_until(name, Duration::from_secs(10), || {
                !seen.lock().unwrap().is_empty()
            })
            .await;
            let first = seen.lock().unwrap()[0].clone();
            assert_eq!(first.len(), 1, "{name}");
            assert!(first[0].targets.is_empty(), "{name}: {first:?}");
        } else {
            let want: BTreeMap<String, u64> = run["groups"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(s, n)| (s.clone(), n.as_u64().unwrap()))
                .collect();
            wait_until(name, Duration::from_secs(10), || {
                seen.lock().unwrap().len() >= want.len()
            })
            .await;
            let msgs = seen.lock().unwrap().clone();
            let mut got = BTreeMap::new();
            // An empty batch reports the first discovery complete (see discovery/mod.rs).
            for m in msgs.iter().filter(|m| !m.is_empty()) {
                // checkOneTarget: one group per message, labelled with the datacenter and its
                // service, which is its source.
                assert_eq!(m.len(), 1, "{name}: {m:?}");
                let g = &m[0];
                assert_eq!(g.labels["__meta_consul_dc"], "test-dc", "{name}");
                assert_eq!(g.labels["__meta_consul_service"], g.source, "{name}");
                got.insert(g.source.clone(), g.targets.len() as u64);
                if g.source == "test" {
                    assert_eq!(g.targets, vec![test_target.clone()], "{name}");
                }
            }
            assert_eq!(got, want, "{name}");
        }
        // Every request was one the Go client makes, byte for byte; the token went as a header.
        assert_eq!(server.unexpected(), Vec::<String>::new(), "{name}");
        assert!(!server.requests().is_empty());
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_datacenter_error_cases() {
    let f = fixture();
    for c in f["datacenter_errors"].as_array().unwrap() {
        let stubs = BTreeMap::from([(
            "/v1/agent/self".to_owned(),
            (
                c["status"].as_u64().unwrap() as u16,
                c["body"].as_str().unwrap().to_owned(),
            ),
        )]);
        let server = FakeConsul::stub(stubs);
        let raw: ConsulSdConfig =
            serde_yaml::from_str(&format!("server: {}\ntoken: fake-token\n", server.addr)).unwrap();
        let d = Discovery::new(&raw.resolve().unwrap(), None).unwrap();
        let e = d.agent_datacenter().await.unwrap_err();
        assert_eq!(e, c["error"].as_str().unwrap());
    }
}

#[test]
fn prometheus_unmarshal_cases() {
    let f = fixture();
    for c in f["unmarshal"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let raw: ConsulSdConfig = serde_yaml::from_str(c["config"].as_str().unwrap()).unwrap();
        match c["error"].as_str() {
            Some(want) => assert_eq!(raw.resolve().unwrap_err(), want, "{name}"),
            None => {
                let sd = raw.resolve().unwrap_or_else(|e| panic!("{name}: {e}"));
                let want = strings(&c["basic_auth"]);
                let inline = |s: &Option<SecretSource>| match s {
                    Some(SecretSource::Inline(v)) => v.expose().to_owned(),
                    other => panic!("{name}: {other:?}"),
                };
                match &sd.http_client.auth {
                    Auth::Basic { username, password } => {
                        assert_eq!(inline(username), want[0]);
                        assert_eq!(inline(password), want[1]);
                    }
                    other => panic!("{name}: {other:?}"),
                }
                // The defaults of DefaultSDConfig.
                assert_eq!(sd.tag_separator, ",");
                assert_eq!(sd.scheme, "http");
                assert!(sd.allow_stale);
                assert_eq!(sd.refresh_interval.to_string(), "30s");
            }
        }
    }
}

fn last_groups(seen: &Arc<Mutex<Vec<Vec<TargetGroup>>>>) -> BTreeMap<String, TargetGroup> {
    let mut m = BTreeMap::new();
    for msg in seen.lock().unwrap().iter() {
        for g in msg {
            m.insert(g.source.clone(), g.clone());
        }
    }
    m
}

fn addresses(seen: &Arc<Mutex<Vec<Vec<TargetGroup>>>>) -> Vec<String> {
    let mut v: Vec<String> = last_groups(seen)
        .values()
        .flat_map(|g| g.targets.iter().map(|t| t["__address__"].clone()))
        .collect();
    v.sort();
    v
}

async fn wait_addresses(seen: &Arc<Mutex<Vec<Vec<TargetGroup>>>>, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let have = addresses(seen);
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "want {want:?}, have {have:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking queries follow the catalog: services and instances come and go, health changes,
/// a token is sent, each request carries the last `X-Consul-Index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_follow_the_catalog() {
    let server = FakeConsul::start();
    server.require_token("tok");
    server.register(
        "web",
        instance("web", "web-1", "n1", "10.0.0.1", 80, &["prod"], "passing"),
    );
    server.register(
        "db",
        instance("db", "db-1", "n2", "10.0.0.2", 5432, &["prod"], "passing"),
    );
    let stop = CancellationToken::new();
    let config = json!({"token": "tok", "refresh_interval": "100ms", "tags": ["prod"]});
    let seen = spawn(&config, &server.addr, &stop);
    wait_addresses(&seen, &["10.0.0.1:80", "10.0.0.2:5432"]).await;
    assert_eq!(last_groups(&seen)["web"].labels["__meta_consul_dc"], "dc1");
    server.register(
        "web",
        instance("web", "web-2", "n3", "10.0.0.3", 80, &["prod"], "critical"),
    );
    wait_addresses(&seen, &["10.0.0.1:80", "10.0.0.2:5432", "10.0.0.3:80"]).await;
    let web = last_groups(&seen)["web"].clone();
    let health: BTreeMap<&str, &str> = web
        .targets
        .iter()
        .map(|t| {
            (
                t["__address__"].as_str(),
                t["__meta_consul_health"].as_str(),
            )
        })
        .collect();
    assert_eq!(health["10.0.0.3:80"], "critical");
    // A service without the tag is not watched; a removed service's group is emptied.
    server.register(
        "cache",
        instance("cache", "c-1", "n4", "10.0.0.4", 6379, &["dev"], "passing"),
    );
    server.deregister("db", "db-1");
    wait_addresses(&seen, &["10.0.0.1:80", "10.0.0.3:80"]).await;
    assert!(last_groups(&seen)["db"].targets.is_empty());
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/v1/health/service/web?index=")),
        "{reqs:?}"
    );
    stop.cancel();
}

/// `discovery::start`'s `synced` comes once the catalog and every service it lists have
/// answered, after their groups: every service is in the targets it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_once_every_service_answered() {
    let server = FakeConsul::start();
    for i in 0..5 {
        server.register(
            &format!("s{i}"),
            instance(
                &format!("s{i}"),
                "a",
                "n1",
                "10.0.0.1",
                80 + i,
                &[],
                "passing",
            ),
        );
    }
    let yaml = format!(
        "scrape_configs:\n  - job_name: c\n    consul_sd_configs:\n      - server: {}\n",
        server.addr
    );
    let (_, cfg) =
        agent::config::load::parse_instance(&yaml, &agent::config::GlobalConfig::default())
            .unwrap();
    let stop = CancellationToken::new();
    let mut d = agent::discovery::start(&cfg.scrape_configs[0], None, stop.clone()).unwrap();
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
    assert_eq!(sources, ["s0", "s1", "s2", "s3", "s4"]);
    stop.cancel();
}

/// The options no Prometheus case covers: `datacenter`, `namespace` and `partition` go with
/// every request as `dc`, `ns` and `partition` (the agent is not asked for its datacenter);
/// `tag_separator` joins `__meta_consul_tags`; the instance's namespace and partition become
/// labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_options_reach_the_requests_and_labels() {
    let server = FakeConsul::start();
    let mut web = instance(
        "web",
        "web-1",
        "n1",
        "10.0.0.1",
        80,
        &["prod", "eu"],
        "passing",
    );
    web["Service"]["Namespace"] = json!("team");
    web["Service"]["Partition"] = json!("part");
    server.register("web", web);
    let stop = CancellationToken::new();
    let config = json!({"datacenter": "dc9", "namespace": "team", "partition": "part",
                        "tag_separator": ";", "refresh_interval": "100ms", "tags": ["prod"]});
    let seen = spawn(&config, &server.addr, &stop);
    wait_addresses(&seen, &["10.0.0.1:80"]).await;
    let web = last_groups(&seen)["web"].clone();
    assert_eq!(web.labels["__meta_consul_dc"], "dc9");
    let t = &web.targets[0];
    assert_eq!(t["__meta_consul_tags"], ";prod;eu;");
    assert_eq!(t["__meta_consul_namespace"], "team");
    assert_eq!(t["__meta_consul_partition"], "part");
    let reqs = server.requests();
    for path in ["/v1/catalog/services?", "/v1/health/service/web?"] {
        let r = reqs
            .iter()
            .find(|r| r.starts_with(path))
            .unwrap_or_else(|| panic!("no {path} request: {reqs:?}"));
        let url = reqwest::Url::parse(&format!("http://consul{r}")).unwrap();
        let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q.get("dc").map(String::as_str), Some("dc9"), "{r}");
        assert_eq!(q.get("ns").map(String::as_str), Some("team"), "{r}");
        assert_eq!(q.get("partition").map(String::as_str), Some("part"), "{r}");
    }
    assert!(
        !reqs.iter().any(|r| r.starts_with("/v1/agent/self")),
        "{reqs:?}"
    );
    stop.cancel();
}
