//! The ring on a real etcd: lifecyclers join, one leaves gracefully, one is killed and is
//! detected and auto-forgotten; `agentctl ring status|forget` against the same etcd and
//! against a served `/debug/ring`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::clock::Clock;
use agent::kv::{EtcdConfig, EtcdStore, KvStore};
use agent::ring::http::{router, RingPageState};
use agent::ring::{
    modify_ring, read_ring, save_tokens_file, InstanceDesc, InstanceState, Lifecycler,
    LifecyclerSettings, RingView,
};

use crate::support::bin;
use crate::support::etcd::EtcdServer;

pub const KEY: &str = "collectors/agent";

pub async fn etcd_store(server: &EtcdServer) -> Arc<dyn KvStore> {
    Arc::new(
        EtcdStore::connect(EtcdConfig {
            endpoints: vec![server.endpoint()],
            dial_timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        })
        .await
        .expect("etcd client"),
    )
}

pub fn settings(id: &str, period: Duration, timeout: Duration) -> LifecyclerSettings {
    LifecyclerSettings {
        ring_key: KEY.into(),
        id: id.into(),
        addr: format!("127.0.0.1:{}", 9000 + id.len()),
        zone: String::new(),
        num_tokens: 32,
        heartbeat_period: period,
        heartbeat_timeout: timeout,
        observe_period: Duration::ZERO,
        join_after: Duration::ZERO,
        final_sleep: Duration::ZERO,
        tokens_file_path: None,
        unregister_on_shutdown: true,
        auto_forget_unhealthy_periods: 2,
    }
}

pub fn unix_now() -> i64 {
    Clock::system().unix_secs()
}

/// Polls the ring until `pred` holds; returns the time it took. Panics after `limit`.
async fn wait_ring(
    store: &Arc<dyn KvStore>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&agent::ring::Desc) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let ring = read_ring(store.as_ref(), KEY).await.expect("read ring");
        if pred(&ring) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}; ring: {ring:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(ring: &agent::ring::Desc, id: &str) -> Option<InstanceState> {
    ring.ingesters
        .get(id)
        .and_then(InstanceDesc::instance_state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecyclers_join_leave_and_a_dead_member_is_forgotten() {
    let server = EtcdServer::start();
    let observer = etcd_store(&server).await;
    let period = Duration::from_millis(500);
    let timeout = Duration::from_secs(2);

    let view = RingView::start(observer.clone(), KEY.into(), timeout, Clock::system());
    view.wait_ready().await;
    let mut changes = view.subscribe();

    // Three agents, each with its own etcd client, as separate processes would have.
    let started = Instant::now();
    let mut members = Vec::new();
    for id in ["agent-a", "agent-bb", "agent-ccc"] {
        let store = etcd_store(&server).await;
        members.push(Lifecycler::start(
            store,
            settings(id, period, timeout),
            Clock::system(),
        ));
    }
    let join_time = wait_ring(&observer, 2 * period, "all three ACTIVE", |r| {
        r.ingesters.len() == 3
            && r.ingesters
                .values()
                .all(|i| i.instance_state() == Some(InstanceState::Active) && i.tokens.len() == 32)
    })
    .await;
    println!(
        "ring: 3 lifecyclers ACTIVE {join_time:?} after start (limit {:?})",
        2 * period
    );
    assert!(started.elapsed() <= 2 * period);
    // The ring as stored, which the condition above was checked on: the view may not have
    // received the last join yet (a stale view showed 64 tokens of two members here).
    let ring = read_ring(observer.as_ref(), KEY).await.expect("ring");
    let mut all: Vec<u32> = ring.all_tokens();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 96, "no token is held twice: {ring:?}");

    // Graceful leave: LEAVING during the hook, then removed.
    let ccc = members.pop().expect("ccc");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let obs = observer.clone();
    ccc.leave(|| async move {
        let ring = read_ring(obs.as_ref(), KEY).await.expect("ring");
        let _ = tx.send(state_of(&ring, "agent-ccc"));
    })
    .await;
    assert_eq!(rx.await.expect("hook ran"), Some(InstanceState::Leaving));
    let ring = read_ring(observer.as_ref(), KEY).await.expect("ring");
    assert!(
        !ring.ingesters.contains_key("agent-ccc"),
        "unregistered: {ring:?}"
    );
    assert_eq!(ring.ingesters.len(), 2);

    // Kill agent-bb: its task stops, nothing is unregistered.
    changes.borrow_and_update();
    let bb = members.pop().expect("bb");
    let killed = Instant::now();
    drop(bb);
    // The view wakes its subscribers when the heartbeat gets too old: the cluster's failover
    // signal.
    let detected = loop {
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the ring view reports the dead member within 10s")
            .expect("view alive");
        let ring = changes.borrow_and_update().clone();
        match ring.ingesters.get("agent-bb") {
            Some(i) if !i.heartbeat_fresh(timeout, Clock::system().now()) => {
                break killed.elapsed()
            }
            None => panic!("forgotten before being seen unhealthy"),
            _ => {}
        }
    };
    println!(
        "ring: killed member seen UNHEALTHY after {detected:?} (heartbeat_timeout {timeout:?}, \
         target <= timeout + 2 x period = {:?})",
        timeout + 2 * period
    );
    // Timestamps have one-second resolution, so the age can read up to 1 s too old or young,
    // and the last heartbeat was sent up to one period before the kill.
    assert!(
        detected >= timeout - Duration::from_secs(1) - period,
        "{detected:?}"
    );
    assert!(
        detected <= timeout + 2 * period + Duration::from_secs(1),
        "{detected:?}"
    );

    let forgotten = wait_ring(&observer, Duration::from_secs(15), "auto-forget", |r| {
        !r.ingesters.contains_key("agent-bb")
    })
    .await
        + detected;
    println!(
        "ring: killed member auto-forgotten after {forgotten:?} (2 x heartbeat_timeout = {:?})",
        2 * timeout
    );
    assert!(
        forgotten >= 2 * timeout - Duration::from_secs(1),
        "{forgotten:?}"
    );
    assert!(
        forgotten <= 2 * timeout + period + Duration::from_secs(2),
        "{forgotten:?}"
    );
    let ring = read_ring(observer.as_ref(), KEY).await.expect("ring");
    assert_eq!(ring.ingesters.keys().collect::<Vec<_>>(), vec!["agent-a"]);
    assert_eq!(state_of(&ring, "agent-a"), Some(InstanceState::Active));
    drop(members);
}

/// Replaces what changes from run to run (times, ages) so the output can be snapshotted.
fn normalize(text: &str) -> String {
    let rfc3339 = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").expect("regex");
    // Any age (`12s ago`, `5m0s ago`): two readings of one ring a moment apart may differ by a
    // second, and a loaded machine can take that moment.
    let age = regex::Regex::new(r"\b(?:\d+h)?(?:\d+m)?\d+s ago").expect("regex");
    let port = regex::Regex::new(r"127\.0\.0\.1:\d+").expect("regex");
    let t = rfc3339.replace_all(text, "<TIME>");
    let t = age.replace_all(&t, "<AGE>");
    port.replace_all(&t, "127.0.0.1:<PORT>").into_owned()
}

fn agentctl(args: &[String]) -> Output {
    std::process::Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agentctl")
}

async fn agentctl_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || agentctl(&args))
        .await
        .expect("agentctl thread")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two lifecyclers with fixed tokens (from tokens files), so ownership is reproducible.
async fn fixed_members(server: &EtcdServer, dir: &Path) -> Vec<Lifecycler> {
    let mut out = Vec::new();
    for (i, id) in ["agent-1", "agent-2"].into_iter().enumerate() {
        let path = dir.join(format!("{id}.tokens"));
        let tokens: Vec<u32> = (0..4u32)
            .map(|k| k * (1 << 30) + (i as u32) * (1 << 28))
            .collect();
        save_tokens_file(&path, &tokens).expect("tokens file");
        let mut s = settings(id, Duration::from_millis(500), Duration::from_secs(60));
        s.num_tokens = 4;
        s.tokens_file_path = Some(path);
        s.addr = format!("10.0.0.{}:12345", i + 1);
        s.zone = format!("zone-{}", i + 1);
        out.push(Lifecycler::start(
            etcd_store(server).await,
            s,
            Clock::system(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_status_and_forget_against_etcd() {
    let server = EtcdServer::start();
    let store = etcd_store(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _members = fixed_members(&server, dir.path()).await;
    wait_ring(&store, Duration::from_secs(30), "both ACTIVE", |r| {
        r.ingesters.len() == 2
            && r.ingesters
                .values()
                .all(|i| i.instance_state() == Some(InstanceState::Active))
    })
    .await;
    let kv = format!("etcd://{}", server.endpoint());

    let out = agentctl_async(&["ring", "status", "--kv", &kv]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!("ring_status_table_etcd", normalize(&text(&out.stdout)));

    let out = agentctl_async(&["ring", "status", "--kv", &kv, "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(2));
    insta::assert_snapshot!("ring_status_json_etcd", normalize(&text(&out.stdout)));

    let out = agentctl_async(&["ring", "status", "--kv", &kv, "--tokens"]).await;
    assert!(
        text(&out.stdout).contains("tokens of agent-1 (4):\n0 1073741824 2147483648 3221225472"),
        "{}",
        text(&out.stdout)
    );

    // A dead member (last heartbeat 5 minutes ago): exit 1, shown unhealthy.
    modify_ring(store.as_ref(), KEY, "seed", |d| {
        d.ingesters.insert(
            "agent-dead".into(),
            InstanceDesc {
                addr: "10.0.0.9:12345".into(),
                timestamp: unix_now() - 300,
                state: InstanceState::Active as i32,
                tokens: vec![5 << 28],
                id: "agent-dead".into(),
                ..Default::default()
            },
        );
        true
    })
    .await
    .expect("seed");
    let out = agentctl_async(&["ring", "status", "--kv", &kv]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("agent-dead") && l.ends_with("unhealthy")),
        "{table}"
    );
    // Read from the store, the CLI cannot know the agents' grace after a KV store outage: it
    // says so under the table.
    let note = table
        .lines()
        .find(|l| l.starts_with("note: "))
        .unwrap_or_else(|| panic!("no note under the table: {table}"));
    assert!(
        note.contains("after a KV store outage") && note.contains("--addr"),
        "{note}"
    );
    let table_without_note: String = table
        .lines()
        .filter(|l| !l.starts_with("note: "))
        .map(|l| format!("{l}\n"))
        .collect();
    // With a longer timeout it is healthy again.
    let out = agentctl_async(&[
        "ring",
        "status",
        "--kv",
        &kv,
        "--ring.heartbeat-timeout",
        "10m",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // The same ring through an agent's /debug/ring: same table, same exit code.
    let (_tx, configs_owned) = tokio::sync::watch::channel(HashMap::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let page = RingPageState {
        store: store.clone(),
        ring_key: KEY.into(),
        heartbeat_timeout: Duration::from_secs(60),
        configs_owned,
        clock: Clock::system(),
        targets: None,
        kv_health: None,
        last_read: None,
        kv_outage: None,
    };
    tokio::spawn(async move { axum::serve(listener, router(page)).await });
    let out = agentctl_async(&["ring", "status", "--addr", &addr]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        normalize(&text(&out.stdout)),
        normalize(&table_without_note)
    );

    // An agent whose ring writes landed again just now, after an outage: it gives the stale
    // member the grace (it keeps its configs), and `ring status --addr` shows that judgement,
    // labelled, and exits 0 as the agent sees nothing to worry about.
    let (_health_tx, kv_health) = tokio::sync::watch::channel(
        agent::ring::lifecycler::KvHealth::RecoveredAt(tokio::time::Instant::now()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let graced_addr = format!("http://{}", listener.local_addr().expect("addr"));
    let page = RingPageState {
        store: store.clone(),
        ring_key: KEY.into(),
        heartbeat_timeout: Duration::from_secs(60),
        configs_owned: tokio::sync::watch::channel(HashMap::new()).1,
        clock: Clock::system(),
        targets: None,
        kv_health: Some(kv_health),
        last_read: None,
        kv_outage: None,
    };
    tokio::spawn(async move { axum::serve(listener, router(page)).await });
    let out = agentctl_async(&["ring", "status", "--addr", &graced_addr]).await;
    let graced = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{graced}{}", text(&out.stderr));
    assert!(
        graced
            .lines()
            .any(|l| l.starts_with("agent-dead") && l.ends_with("healthy (grace)")),
        "{graced}"
    );
    assert!(graced.contains("heartbeats again at"), "{graced}");
    assert!(!graced.contains("note: "), "{graced}");

    // Forget through the agent (the Forget button's POST), then through the KV store.
    let out = agentctl_async(&["ring", "forget", "agent-dead", "--addr", &addr]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
    assert!(!ring.ingesters.contains_key("agent-dead"));
    let out = agentctl_async(&["ring", "status", "--kv", &kv]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = agentctl_async(&["ring", "forget", "agent-nope", "--kv", &kv]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("agent-nope is not in the ring"),
        "{}",
        text(&out.stdout)
    );

    // Unreachable sources: exit 2, and the error names them.
    // Port 1 (tcpmux) on loopback: nothing listens there, connections are refused.
    let dead_port = 1;
    let dead_kv = format!("etcd://127.0.0.1:{dead_port}");
    let out = agentctl_async(&["ring", "status", "--kv", &dead_kv]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{dead_port}")),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let dead_addr = format!("http://127.0.0.1:{dead_port}");
    let out = agentctl_async(&["ring", "status", "--addr", &dead_addr]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{dead_addr}/debug/ring")),
        "{}",
        text(&out.stderr)
    );
    let out = agentctl_async(&["ring", "status", "--kv", "redis://x"]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// etcd down for longer than `auto_forget_unhealthy_periods × heartbeat_timeout`: when it
/// returns every heartbeat in the ring is old, yet no member forgets another (the guard), and
/// heartbeats resume on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_freezes_the_ring_and_forgets_nobody() {
    let mut server = EtcdServer::start();
    let period = Duration::from_millis(500);
    let timeout = Duration::from_secs(2);
    let mut members = Vec::new();
    for id in ["agent-a", "agent-bb"] {
        members.push(Lifecycler::start(
            etcd_store(&server).await,
            settings(id, period, timeout),
            Clock::system(),
        ));
    }
    let observer = etcd_store(&server).await;
    wait_ring(&observer, Duration::from_secs(30), "both ACTIVE", |r| {
        r.ingesters.len() == 2
            && r.ingesters
                .values()
                .all(|i| i.instance_state() == Some(InstanceState::Active))
    })
    .await;
    // Let the auto-forget guard (a heartbeat timeout of working KV access) open.
    tokio::time::sleep(timeout + period).await;

    server.kill();
    tokio::time::sleep(2 * timeout + Duration::from_secs(1)).await;
    server.restart();
    let back = Instant::now();

    // Both heartbeat again...
    let resumed = wait_ring(
        &observer,
        Duration::from_secs(20),
        "fresh heartbeats",
        |r| {
            r.ingesters.len() == 2
                && r.ingesters
                    .values()
                    .all(|i| i.heartbeat_fresh(Duration::from_secs(1), Clock::system().now()))
        },
    )
    .await;
    println!("ring: heartbeats fresh again {resumed:?} after etcd came back");
    // Target: converge within 2 heartbeat periods of the store's return; the slack covers the
    // etcd clients' reconnect backoff on a loaded machine.
    assert!(
        resumed <= 2 * period + Duration::from_secs(4),
        "{resumed:?}"
    );
    // ...and for a further forget window nobody disappears.
    let until = Instant::now() + timeout + 2 * period;
    while Instant::now() < until {
        let ring = read_ring(observer.as_ref(), KEY).await.expect("ring");
        assert_eq!(
            ring.ingesters.len(),
            2,
            "a member was forgotten after the outage: {ring:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back.elapsed() < Duration::from_secs(30));
    drop(members);
}
