//! [`RingView`]: the latest ring, followed through a KV watch (dskit's ring client: one `Get`,
//! then a watch of the ring key; every value replaces the whole `Desc`).
//!
//! Subscribers are woken only when the *topology* changes: a member appears or disappears, or
//! its state, tokens, address, zone or heartbeat health changes. Heartbeat-only writes (every
//! member, every `heartbeat_period`) replace the value silently, so `borrow()` always sees the
//! freshest timestamps without waking anyone. Health is re-checked on a timer as well, because
//! a member that dies produces no write at all: its heartbeat just gets old.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kv::{KvStore, WatchEvent};

use super::model::Desc;
use super::store::{decode_value, read_ring};

/// What a subscriber cares about, per member: (id, state, tokens, addr, zone, heartbeat fresh).
type Topology = Vec<(String, i32, Vec<u32>, String, String, bool)>;

fn topology(desc: &Desc, heartbeat_timeout: Duration, now: SystemTime) -> Topology {
    desc.ingesters
        .iter()
        .map(|(id, i)| {
            (
                id.clone(),
                i.state,
                i.tokens.clone(),
                i.addr.clone(),
                i.zone.clone(),
                i.heartbeat_fresh(heartbeat_timeout, now),
            )
        })
        .collect()
}

/// A followed ring. Dropping it stops the watch.
#[derive(Debug)]
pub struct RingView {
    rx: watch::Receiver<Arc<Desc>>,
    ready: watch::Receiver<bool>,
    read_at: watch::Receiver<Option<SystemTime>>,
    task: JoinHandle<()>,
}

/// The ring a [`RingView`] holds and when it last came from the store, for showing it while
/// the store cannot be read (the ring page during a KV store outage).
#[derive(Clone, Debug)]
pub struct LastRead {
    pub ring: watch::Receiver<Arc<Desc>>,
    /// When the view last received the ring from the store (a read or a watched write, by its
    /// clock); `None` until the first.
    pub read_at: watch::Receiver<Option<SystemTime>>,
}

impl RingView {
    /// Starts following `ring_key`. Until the first successful read the ring is empty (see
    /// [`RingView::wait_ready`]); KV failures are logged and retried, never fatal. `clock`
    /// judges heartbeat ages.
    pub fn start(
        store: Arc<dyn KvStore>,
        ring_key: String,
        heartbeat_timeout: Duration,
        clock: Clock,
    ) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Desc::default()));
        let (ready_tx, ready) = watch::channel(false);
        let (read_at_tx, read_at) = watch::channel(None);
        let task = tokio::spawn(follow(
            store,
            ring_key,
            heartbeat_timeout,
            clock,
            tx,
            ready_tx,
            read_at_tx,
        ));
        RingView {
            rx,
            ready,
            read_at,
            task,
        }
    }

    /// The ring held and when it was read, followed.
    pub fn last_read(&self) -> LastRead {
        LastRead {
            ring: self.rx.clone(),
            read_at: self.read_at.clone(),
        }
    }

    /// The ring, updated on every write; `changed()` fires on topology changes only.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Desc>> {
        self.rx.clone()
    }

    /// The latest ring.
    pub fn current(&self) -> Arc<Desc> {
        self.rx.borrow().clone()
    }

    /// Waits for the first successful read of the ring.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl Drop for RingView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Longest pause between attempts to (re)establish the ring watch: once the store is back, a
/// joining agent sees the ring within about a second.
const RETRY_MAX: Duration = Duration::from_secs(1);

async fn follow(
    store: Arc<dyn KvStore>,
    key: String,
    heartbeat_timeout: Duration,
    clock: Clock,
    tx: watch::Sender<Arc<Desc>>,
    ready: watch::Sender<bool>,
    read_at: watch::Sender<Option<SystemTime>>,
) {
    let mut last: Option<Topology> = None;
    // From the store: noted as read now. The health timer re-publishes what is held.
    let from_store = |read_at: &watch::Sender<Option<SystemTime>>| {
        read_at.send_replace(Some(clock.now()));
    };
    let mut publish = |desc: Desc, tx: &watch::Sender<Arc<Desc>>| {
        let topo = topology(&desc, heartbeat_timeout, clock.now());
        let changed = last.as_ref() != Some(&topo);
        last = Some(topo);
        tx.send_if_modified(|cur| {
            *cur = Arc::new(desc);
            changed
        });
    };
    let check_every =
        (heartbeat_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut retry = Duration::from_millis(100);
    loop {
        // Watch first, then read: a write between the two is then seen by the watch.
        let mut watch = match store.watch_prefix(&key).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(store = %store.describe(), key, error = %e, "cannot watch the ring; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        match read_ring(store.as_ref(), &key).await {
            Ok(desc) => {
                from_store(&read_at);
                publish(desc, &tx);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ring; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        }
        retry = Duration::from_millis(100);
        ready.send_replace(true);
        let mut health = tokio::time::interval(check_every);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = watch.recv() => match event {
                    None => break,
                    Some(WatchEvent::Put { key: k, value }) if k == key => match decode_value(&value) {
                        Ok(desc) => {
                            from_store(&read_at);
                            publish(desc, &tx);
                        }
                        Err(e) => tracing::warn!(
                            store = %store.describe(), key, error = %e,
                            "ignoring an unreadable ring value; keeping the last one"
                        ),
                    },
                    Some(WatchEvent::Delete { key: k }) if k == key => {
                        from_store(&read_at);
                        publish(Desc::default(), &tx);
                    }
                    Some(_) => {}
                },
                _ = health.tick() => {
                    let desc = (**tx.borrow()).clone();
                    publish(desc, &tx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::InMemoryStore;
    use crate::ring::model::{InstanceDesc, InstanceState};
    use crate::ring::store::modify_ring;

    const KEY: &str = "collectors/agent";

    fn now_secs() -> i64 {
        Clock::system().unix_secs()
    }

    async fn set(store: &Arc<dyn KvStore>, state: InstanceState, timestamp: i64) {
        modify_ring(store.as_ref(), KEY, "test", |d| {
            d.ingesters.insert(
                "a".into(),
                InstanceDesc {
                    addr: "a:1".into(),
                    timestamp,
                    state: state as i32,
                    tokens: vec![1, 2, 3],
                    id: "a".into(),
                    ..Default::default()
                },
            );
            true
        })
        .await
        .expect("write");
    }

    async fn changed_within(rx: &mut watch::Receiver<Arc<Desc>>, d: Duration) -> bool {
        tokio::time::timeout(d, rx.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn wakes_on_topology_not_on_heartbeats() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        // A second key under the same prefix must be ignored.
        store
            .put("collectors/agent2", b"x".to_vec())
            .await
            .expect("put");
        let view = RingView::start(
            store.clone(),
            KEY.into(),
            Duration::from_secs(60),
            Clock::system(),
        );
        view.wait_ready().await;
        let mut rx = view.subscribe();
        rx.borrow_and_update();
        let t = now_secs();
        set(&store, InstanceState::Pending, t).await;
        assert!(
            changed_within(&mut rx, Duration::from_secs(2)).await,
            "member added"
        );
        assert_eq!(rx.borrow_and_update().ingesters.len(), 1);
        set(&store, InstanceState::Pending, t + 1).await;
        assert!(
            !changed_within(&mut rx, Duration::from_millis(300)).await,
            "heartbeat only"
        );
        assert_eq!(
            view.current().ingesters["a"].timestamp,
            t + 1,
            "value still replaced"
        );
        store
            .put("collectors/agent2", b"y".to_vec())
            .await
            .expect("put");
        set(&store, InstanceState::Active, t + 1).await;
        assert!(
            changed_within(&mut rx, Duration::from_secs(2)).await,
            "state change"
        );
        store.delete(KEY).await.expect("delete");
        assert!(
            changed_within(&mut rx, Duration::from_secs(2)).await,
            "ring deleted"
        );
        assert!(rx.borrow_and_update().ingesters.is_empty());
    }

    /// Paused time: the heartbeat ages by `advance`, the view's clock following it.
    #[tokio::test(start_paused = true)]
    async fn wakes_when_a_heartbeat_gets_too_old() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let clock = Clock::following_tokio(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30));
        let view = RingView::start(store.clone(), KEY.into(), Duration::from_secs(1), clock);
        view.wait_ready().await;
        let mut rx = view.subscribe();
        set(&store, InstanceState::Active, clock.unix_secs()).await;
        assert!(changed_within(&mut rx, Duration::from_secs(2)).await);
        rx.borrow_and_update();
        // No write at all: the member just stops heartbeating.
        assert!(
            changed_within(&mut rx, Duration::from_secs(4)).await,
            "went unhealthy"
        );
    }
}
