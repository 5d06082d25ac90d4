//! [`ShardView`]: every `sharding/` key of the store, decoded and followed through one watch.
//!
//! One watch on the prefix delivers targets, chunks, the assignment and agent keys in revision
//! order, so a reader always holds the targets an assignment it holds refers to (the config
//! owner writes them before the leader can assign them). The watch starts before the listing
//! (an event older than the listing may be applied again after it, and the ones after it follow
//! in order, so the view converges on the store). A value that does not decode is logged and
//! skipped; the previous one stays.
//!
//! The assignment only moves forward: a value with a lower epoch than the one held is ignored
//! (a lagging read), except after the key was deleted (an operator starting over).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::store::{
    self, AgentStatus, AssignmentDoc, Layout, PublishedTargets, StoreError, TargetKey,
};
use crate::kv::{KvStore, WatchEvent};

/// One config's published targets with their keys (job-major, as [`PublishedTargets::keys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigTargets {
    pub doc: PublishedTargets,
    pub keys: Vec<TargetKey>,
}

impl ConfigTargets {
    pub fn new(doc: PublishedTargets) -> Self {
        let keys = doc.keys().map(|(_, _, k)| k).collect();
        ConfigTargets { doc, keys }
    }

    /// `(job index, target index)` of every target, parallel to `keys`.
    pub fn positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.doc
            .jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.targets.len()).map(move |i| (j, i)))
    }
}

/// Everything under `sharding/`.
#[derive(Debug, Clone, Default)]
pub struct ShardState {
    /// By config name.
    pub targets: BTreeMap<String, Arc<ConfigTargets>>,
    pub assignment: Arc<AssignmentDoc>,
    /// By agent ID.
    pub agents: BTreeMap<String, Arc<AgentStatus>>,
}

impl ShardState {
    /// Number of published targets.
    pub fn target_count(&self) -> usize {
        self.targets.values().map(|c| c.keys.len()).sum()
    }
}

/// A followed `sharding/` prefix. Dropping it stops the watch.
#[derive(Debug)]
pub struct ShardView {
    rx: watch::Receiver<Arc<ShardState>>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl ShardView {
    /// Starts following the prefix; KV failures are logged and retried.
    pub fn start(store: Arc<dyn KvStore>, layout: Layout) -> Self {
        let (tx, rx) = watch::channel(Arc::new(ShardState::default()));
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(follow(store, layout, tx, ready_tx));
        ShardView { rx, ready, task }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ShardState>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Arc<ShardState> {
        self.rx.borrow().clone()
    }

    /// Waits for the first complete listing.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl Drop for ShardView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const RETRY_MAX: Duration = Duration::from_secs(1);

/// Reads every `sharding/` key once (for `agentctl ring status --kv` and `ring owner --kv`).
/// Values that do not decode are logged and skipped, as the watch does.
pub async fn load(store: &dyn KvStore, layout: &Layout) -> Result<ShardState, crate::kv::KvError> {
    let mut state = ShardState::default();
    for (key, value) in store.list_values(layout.prefix()).await? {
        apply(
            store,
            layout,
            &mut state,
            WatchEvent::Put { key, value },
            true,
        )
        .await;
    }
    Ok(state)
}

async fn follow(
    store: Arc<dyn KvStore>,
    layout: Layout,
    tx: watch::Sender<Arc<ShardState>>,
    ready: watch::Sender<bool>,
) {
    let mut retry = Duration::from_millis(100);
    loop {
        let mut watch = match store.watch_prefix(layout.prefix()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the sharding keys; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        let listed = match store.list_values(layout.prefix()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sharding keys; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = Duration::from_millis(100);
        let mut state = ShardState::default();
        for (key, value) in listed {
            apply(
                &*store,
                &layout,
                &mut state,
                WatchEvent::Put { key, value },
                true,
            )
            .await;
        }
        tx.send_replace(Arc::new(state.clone()));
        let _ = ready.send(true);
        while let Some(event) = watch.recv().await {
            if apply(&*store, &layout, &mut state, event, false).await {
                tx.send_replace(Arc::new(state.clone()));
            }
        }
        tracing::warn!("the sharding keys' watch ended; re-establishing it");
    }
}

/// Applies one change; `true` when the state changed.
async fn apply(
    kv: &dyn KvStore,
    layout: &Layout,
    state: &mut ShardState,
    event: WatchEvent,
    listing: bool,
) -> bool {
    let key = event.key().to_owned();
    if let Some(config) = key.strip_prefix(&*layout.targets_prefix()) {
        let config = config.to_owned();
        match event {
            WatchEvent::Delete { .. } => state.targets.remove(&config).is_some(),
            WatchEvent::Put { value, .. } => {
                match decode_or_reread::<PublishedTargets>(kv, layout, &key, value).await {
                    Some(doc) => {
                        let ct = tokio::task::spawn_blocking(move || ConfigTargets::new(doc))
                            .await
                            .ok();
                        match ct {
                            Some(ct) => {
                                state.targets.insert(config, Arc::new(ct));
                                true
                            }
                            None => false,
                        }
                    }
                    None => false,
                }
            }
        }
    } else if let Some(id) = key.strip_prefix(&*layout.agents_prefix()) {
        let id = id.to_owned();
        match event {
            WatchEvent::Delete { .. } => state.agents.remove(&id).is_some(),
            WatchEvent::Put { value, .. } => {
                match decode_or_reread::<AgentStatus>(kv, layout, &key, value).await {
                    Some(st) => {
                        state.agents.insert(id, Arc::new(st));
                        true
                    }
                    None => false,
                }
            }
        }
    } else if key == layout.assignment_key() {
        match event {
            WatchEvent::Delete { .. } => {
                tracing::warn!("the target assignment was deleted; starting over from epoch 0");
                state.assignment = Arc::new(AssignmentDoc::empty());
                true
            }
            WatchEvent::Put { value, .. } => {
                let Some(doc) = decode_or_reread::<AssignmentDoc>(kv, layout, &key, value).await
                else {
                    return false;
                };
                if let Err(e) = doc.validate() {
                    tracing::error!(key, error = %e, "ignoring an inconsistent target assignment");
                    return false;
                }
                if doc.epoch < state.assignment.epoch && !listing {
                    tracing::debug!(
                        epoch = doc.epoch,
                        held = state.assignment.epoch,
                        "ignoring an older target assignment"
                    );
                    return false;
                }
                state.assignment = Arc::new(doc);
                true
            }
        }
    } else {
        // Chunks are fetched with the key that refers to them.
        false
    }
}

/// Decodes a value; when its parts were replaced meanwhile, reads the key again (a newer event
/// for it follows anyway). `None` (logged) when it does not decode.
async fn decode_or_reread<T: serde::de::DeserializeOwned + Send + 'static>(
    kv: &dyn KvStore,
    layout: &Layout,
    key: &str,
    mut value: Vec<u8>,
) -> Option<T> {
    for _ in 0..3 {
        match store::decode(kv, layout, key, &value).await {
            Ok(v) => return Some(v),
            Err(StoreError::Changed { .. }) => match kv.get(key).await {
                Ok(Some(v)) => value = v.value,
                // Deleted meanwhile: its delete event follows.
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot read a sharding key again");
                    return None;
                }
            },
            Err(e) => {
                tracing::error!(key, error = %e, "skipping a sharding value that does not decode");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::{write, Expect, PublishedJob};
    use crate::kv::InMemoryStore;

    static L: std::sync::LazyLock<Layout> = std::sync::LazyLock::new(|| Layout::new("p/sharding/"));

    fn published(config: &str, addrs: &[&str]) -> PublishedTargets {
        PublishedTargets {
            v: 1,
            config: config.into(),
            jobs: vec![PublishedJob {
                job: "j".into(),
                forced_error: None,
                targets: addrs
                    .iter()
                    .map(|a| vec!["__address__".into(), (*a).into()])
                    .collect(),
            }],
        }
    }

    fn assignment(epoch: u64) -> AssignmentDoc {
        AssignmentDoc {
            epoch,
            ..AssignmentDoc::empty()
        }
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<ShardState>>,
        what: &str,
        f: impl Fn(&ShardState) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("view open");
    }

    #[tokio::test]
    async fn follows_targets_assignment_and_agents_and_ignores_older_epochs() {
        let kv: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        write(
            &*kv,
            &L,
            &L.targets_key("a"),
            &published("a", &["x:1"]),
            Expect::Any,
        )
        .await
        .unwrap();
        write(&*kv, &L, &L.assignment_key(), &assignment(5), Expect::Any)
            .await
            .unwrap();
        let view = ShardView::start(kv.clone(), L.clone());
        view.wait_ready().await;
        let s = view.current();
        assert_eq!(s.targets["a"].keys.len(), 1);
        assert_eq!(s.assignment.epoch, 5);
        let mut rx = view.subscribe();

        write(
            &*kv,
            &L,
            &L.targets_key("team/b"),
            &published("team/b", &["y:1", "z:1"]),
            Expect::Any,
        )
        .await
        .unwrap();
        wait_for(&mut rx, "team/b", |s| {
            s.targets.get("team/b").is_some_and(|c| c.keys.len() == 2)
        })
        .await;

        // An older epoch is ignored, a newer one taken.
        write(&*kv, &L, &L.assignment_key(), &assignment(3), Expect::Any)
            .await
            .unwrap();
        write(&*kv, &L, &L.assignment_key(), &assignment(6), Expect::Any)
            .await
            .unwrap();
        wait_for(&mut rx, "epoch 6", |s| s.assignment.epoch == 6).await;

        let st = AgentStatus {
            v: 1,
            addr: "a:1".into(),
            epoch: 6,
            ready: vec![],
            releasing: vec![TargetKey(1)],
            released: vec![],
            started: vec![],
            targets: 3,
            active_series: 10,
            updated_ms: 1,
        };
        write(&*kv, &L, &L.agent_key("agent-1"), &st, Expect::Any)
            .await
            .unwrap();
        wait_for(&mut rx, "agent-1", |s| {
            s.agents
                .get("agent-1")
                .is_some_and(|a| a.releasing == vec![TargetKey(1)])
        })
        .await;

        kv.delete(&L.targets_key("a")).await.unwrap();
        wait_for(&mut rx, "a deleted", |s| !s.targets.contains_key("a")).await;
        // Deleting the assignment starts over.
        kv.delete(&L.assignment_key()).await.unwrap();
        wait_for(&mut rx, "reset", |s| s.assignment.epoch == 0).await;
        write(&*kv, &L, &L.assignment_key(), &assignment(1), Expect::Any)
            .await
            .unwrap();
        wait_for(&mut rx, "epoch 1", |s| s.assignment.epoch == 1).await;
    }

    #[tokio::test]
    async fn a_value_that_does_not_decode_keeps_the_previous_one() {
        let kv: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let view = ShardView::start(kv.clone(), L.clone());
        view.wait_ready().await;
        let mut rx = view.subscribe();
        write(
            &*kv,
            &L,
            &L.targets_key("a"),
            &published("a", &["x:1"]),
            Expect::Any,
        )
        .await
        .unwrap();
        wait_for(&mut rx, "a", |s| s.targets.contains_key("a")).await;
        kv.put(&L.targets_key("a"), b"garbage".to_vec())
            .await
            .unwrap();
        write(
            &*kv,
            &L,
            &L.targets_key("b"),
            &published("b", &["x:1"]),
            Expect::Any,
        )
        .await
        .unwrap();
        wait_for(&mut rx, "b", |s| s.targets.contains_key("b")).await;
        assert_eq!(view.current().targets["a"].keys.len(), 1);
    }
}
