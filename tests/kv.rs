//! The KV layer: the one conformance suite (`agent::kv::testing::conformance`) against every
//! store (in-memory, embedded, a real etcd), and what is particular to each: old-agent value
//! compatibility and watches across an outage on etcd, list paging, durability and locking of
//! the embedded store, job-name uniqueness.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::kv::configstore::{ConfigEvent, ConfigStore, ConfigStoreError, ConfigWatch, PutOutcome};
use agent::kv::testing::conformance::{self, Contention};
use agent::kv::{
    connect, EmbeddedStore, EtcdConfig, EtcdStore, KvSpec, KvStore, Watch, WatchEvent,
};

use crate::support::etcd::EtcdServer;

const YAML: &str =
    "scrape_configs:\n- job_name: old-style\n  static_configs:\n  - targets: [localhost:9090]\n";

fn cfg(jobs: &[&str]) -> String {
    let mut s = String::from("scrape_configs:\n");
    for j in jobs {
        s.push_str(&format!("- job_name: {j}\n  static_configs: []\n"));
    }
    s
}

async fn etcd_store(server: &EtcdServer, backoff: Duration) -> Arc<dyn KvStore> {
    Arc::new(
        EtcdStore::connect(EtcdConfig {
            endpoints: vec![server.endpoint()],
            dial_timeout: Duration::from_secs(2),
            watch_backoff_min: backoff,
            watch_backoff_max: backoff,
            ..EtcdConfig::default()
        })
        .await
        .expect("etcd client"),
    )
}

/// A plain etcd client, as `etcdctl` would use.
async fn raw_client(server: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("raw etcd client")
}

async fn next(watch: &mut Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), watch.recv())
        .await
        .expect("watch event within 20s")
        .expect("watch still open")
}

async fn recv_config(watch: &mut ConfigWatch) -> ConfigEvent {
    tokio::time::timeout(Duration::from_secs(30), watch.recv())
        .await
        .expect("config event within 30s")
        .expect("config watch still open")
}

fn put(key: &str, value: &str) -> WatchEvent {
    WatchEvent::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> WatchEvent {
    WatchEvent::Delete {
        key: key.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_values_are_compatible_with_the_old_agent() {
    let server = EtcdServer::start();
    let mut raw = raw_client(&server).await;

    // Written as the old agent (or `gzip | etcdctl put`) would: gzip at another level than ours.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(YAML.as_bytes()).expect("gzip");
    raw.put("configurations/old-style", gz.finish().expect("gzip"), None)
        .await
        .expect("raw put");

    let spec: KvSpec = format!("etcd://{}", server.endpoint())
        .parse()
        .expect("spec");
    let store = ConfigStore::new(connect(&spec).await.expect("connect"));
    assert_eq!(store.list().await.expect("list"), vec!["old-style"]);
    assert_eq!(
        store.get("old-style").await.expect("get").as_deref(),
        Some(YAML)
    );

    // Written through the store: the raw bytes are plain gzip of the YAML.
    let yaml = cfg(&["new-job"]);
    assert_eq!(
        store.put("team/new", &yaml).await.expect("put"),
        PutOutcome::Created
    );
    let resp = raw
        .get("configurations/team/new", None)
        .await
        .expect("raw get");
    let raw_value = resp.kvs().first().expect("key present").value().to_vec();
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw_value.as_slice())
        .read_to_string(&mut text)
        .expect("gunzip");
    assert_eq!(text, yaml);
}

/// The watcher retries `backoff` after the stream broke; the outage steps must be done by then
/// for the test to exercise the replay (and compaction) path rather than live events.
fn assert_within_window(killed: Instant, backoff: Duration) {
    let elapsed = killed.elapsed();
    assert!(
        elapsed < backoff,
        "etcd restart and writes took {elapsed:?}, longer than the watcher's {backoff:?} \
         reconnect backoff: the test cannot tell a replay from live events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_reports_deletes_and_survives_an_outage() {
    let mut server = EtcdServer::start();
    // A long, fixed backoff leaves a window after a restart in which another client can write
    // before the watcher reconnects, so those changes must come from the replay.
    let backoff = Duration::from_secs(8);
    let store = etcd_store(&server, backoff).await;
    store
        .put("configurations/pre", b"p".to_vec())
        .await
        .expect("put");
    let mut watch = store.watch_prefix("configurations/").await.expect("watch");

    store
        .put("configurations/a", b"1".to_vec())
        .await
        .expect("put");
    store
        .put("collectors/agent", b"ring".to_vec())
        .await
        .expect("put");
    store
        .put("configurations/a", b"2".to_vec())
        .await
        .expect("put");
    store.delete("configurations/a").await.expect("delete");
    assert_eq!(next(&mut watch).await, put("configurations/a", "1"));
    assert_eq!(next(&mut watch).await, put("configurations/a", "2"));
    assert_eq!(next(&mut watch).await, del("configurations/a"));

    // Changes made by another client while the watcher is disconnected are replayed in order.
    server.kill();
    server.restart();
    let other = etcd_store(&server, Duration::from_millis(100)).await;
    other
        .put("configurations/b", b"1".to_vec())
        .await
        .expect("put");
    other.delete("configurations/pre").await.expect("delete");
    other
        .put("configurations/b", b"2".to_vec())
        .await
        .expect("put");
    assert_eq!(next(&mut watch).await, put("configurations/b", "1"));
    assert_eq!(next(&mut watch).await, del("configurations/pre"));
    assert_eq!(next(&mut watch).await, put("configurations/b", "2"));

    // And the watch is live again afterwards.
    store
        .put("configurations/c", b"1".to_vec())
        .await
        .expect("put");
    assert_eq!(next(&mut watch).await, put("configurations/c", "1"));

    // Outage during which the history the watcher needs is compacted away: it re-lists,
    // reporting every key that exists and a delete for each one it knew that is gone.
    server.kill();
    let killed = Instant::now();
    server.restart();
    let mut raw = raw_client(&server).await;
    raw.delete("configurations/b", None).await.expect("delete");
    raw.put("configurations/d", "1", None).await.expect("put");
    let rev = raw
        .put("configurations/d", "2", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    raw.compact(rev, None).await.expect("compact");
    assert_within_window(killed, backoff);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut watch).await);
    }
    let got: BTreeSet<String> = got.into_iter().map(|e| format!("{e:?}")).collect();
    let want: BTreeSet<String> = [
        del("configurations/b"),
        put("configurations/c", "1"),
        put("configurations/d", "2"),
    ]
    .into_iter()
    .map(|e| format!("{e:?}"))
    .collect();
    assert_eq!(got, want);

    store
        .put("configurations/e", b"1".to_vec())
        .await
        .expect("put");
    assert_eq!(next(&mut watch).await, put("configurations/e", "1"));

    // Outage: calls fail fast with the endpoint in the error; the watch neither ends nor
    // reports anything.
    server.kill();
    let started = Instant::now();
    let err = store
        .get("configurations/a")
        .await
        .expect_err("etcd is down");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watch.recv())
            .await
            .is_err(),
        "the watch must stay open and quiet while etcd is down"
    );
}

/// Contenders racing increments through CAS in every store's conformance run.
const CONTENTION: Contention = Contention {
    tasks: 8,
    each: 100,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    conformance::run(Arc::new(agent::kv::InMemoryStore::new()), CONTENTION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path().join("kv"))
        .await
        .expect("open");
    conformance::run(Arc::new(store), CONTENTION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_etcd() {
    let server = EtcdServer::start();
    // Correctness under contention is the point: on a loaded CI machine 8 contenders can lose
    // more than the default 10 rounds in a row, so give each increment room to retry.
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: vec![server.endpoint()],
        dial_timeout: Duration::from_secs(2),
        max_retries: 200,
        ..EtcdConfig::default()
    })
    .await
    .expect("etcd client");
    conformance::run(Arc::new(store), CONTENTION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_is_durable_watchable_and_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec: KvSpec = format!("embedded:{}", dir.path().join("kv").display())
        .parse()
        .expect("spec");
    {
        let store = ConfigStore::new(connect(&spec).await.expect("open"));
        for i in 0..1000 {
            store
                .put(&format!("cfg-{i:04}"), &cfg(&[&format!("job-{i}")]))
                .await
                .expect("put");
        }

        let err = connect(&spec)
            .await
            .expect_err("second open while the first is open");
        assert_eq!(
            err.to_string(),
            format!(
                "embedded KV store at {} is locked by another process",
                dir.path().join("kv").display()
            )
        );
    }

    let store = ConfigStore::new(connect(&spec).await.expect("reopen"));
    let all = store.all().await.expect("all");
    assert_eq!(all.len(), 1000);
    assert_eq!(all[7], ("cfg-0007".to_owned(), cfg(&["job-7"])));

    let mut watch = store.watch().await.expect("watch");
    store.put("fresh", &cfg(&["fresh"])).await.expect("put");
    store.delete("cfg-0000").await.expect("delete");
    assert_eq!(
        recv_config(&mut watch).await,
        ConfigEvent::Upserted {
            name: "fresh".into(),
            yaml: cfg(&["fresh"])
        }
    );
    assert_eq!(
        recv_config(&mut watch).await,
        ConfigEvent::Deleted {
            name: "cfg-0000".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_job_names_are_refused_with_the_old_agents_text() {
    let server = EtcdServer::start();
    let kv = etcd_store(&server, Duration::from_millis(100)).await;
    let store = ConfigStore::new(Arc::clone(&kv));
    store
        .put("a", &cfg(&["node", "shared"]))
        .await
        .expect("put");
    let err = store
        .put("b", &cfg(&["shared"]))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ConfigStoreError::NotUnique { .. }));
    assert_eq!(
        err.to_string(),
        "found multiple scrape configs in config store with job name \"shared\""
    );
    assert_eq!(store.list().await.expect("list"), vec!["a"]);

    // A second agent's store sees the first one's configs too.
    let other = ConfigStore::new(etcd_store(&server, Duration::from_millis(100)).await);
    let err = other
        .put("c", &cfg(&["node"]))
        .await
        .expect_err("duplicate");
    assert!(err.to_string().contains("\"node\""), "{err}");
}

/// The etcd store reads a prefix in pages of 500 keys (agent/src/kv/etcd.rs): a list of more
/// returns every key, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lists_page_through_more_than_one_page() {
    let server = EtcdServer::start();
    let store = etcd_store(&server, Duration::from_millis(100)).await;
    store
        .put("configurations/a", b"2".to_vec())
        .await
        .expect("put");
    store
        .put("configurations0", b"x".to_vec())
        .await
        .expect("put");
    store
        .put("collectors/agent", b"r".to_vec())
        .await
        .expect("put");

    // More keys than one list page (500), written in transactions of 100 puts.
    let mut raw = raw_client(&server).await;
    for batch in 0..12 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                etcd_client::TxnOp::put(format!("configurations/p/{n:05}"), n.to_string(), None)
            })
            .collect();
        raw.txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("txn");
    }
    let keys = store.list("configurations/").await.expect("list");
    assert_eq!(keys.len(), 1201);
    assert_eq!(keys[0], "configurations/a");
    assert_eq!(keys[1200], "configurations/p/01199");
    let values = store.list_values("configurations/p/").await.expect("list");
    assert_eq!(values.len(), 1200);
    assert_eq!(
        values[777],
        ("configurations/p/00777".to_owned(), b"777".to_vec())
    );
    // The empty prefix lists every key.
    assert_eq!(store.list("").await.expect("list").len(), 1203);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_username_and_password_are_used() {
    let server = EtcdServer::start();
    let mut raw = raw_client(&server).await;
    raw.user_add("root", "s3cret", None)
        .await
        .expect("user add");
    raw.user_grant_role("root", "root").await.expect("grant");
    raw.auth_enable().await.expect("auth enable");

    let with = |password: &str| EtcdConfig {
        endpoints: vec![server.endpoint()],
        dial_timeout: Duration::from_secs(2),
        username: "root".into(),
        password: agent::config::secret::Secret::new(password),
        ..EtcdConfig::default()
    };
    let store = EtcdStore::connect(with("s3cret")).await.expect("connect");
    store
        .put("configurations/a", b"1".to_vec())
        .await
        .expect("put");
    assert!(store.get("configurations/a").await.expect("get").is_some());

    let err = EtcdStore::connect(with("wrong"))
        .await
        .expect_err("bad password");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");

    // Without credentials the server refuses, and the error says where.
    let anonymous = etcd_store(&server, Duration::from_millis(100)).await;
    let err = anonymous
        .get("configurations/a")
        .await
        .expect_err("no credentials");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
}
