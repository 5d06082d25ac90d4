//! The machinery shared by the two in-process stores (embedded and in-memory): a synchronous
//! [`Backend`] holds the data, [`LocalStore`] runs it off the async threads, serialises writes
//! and fans changes out to watches through a broadcast channel.
//!
//! Ordering: a write takes `write_lock`, applies itself (getting the next revision), publishes
//! `(revision, event)` and only then releases the lock, so subscribers see events in revision
//! order. A watch subscribes *before* it snapshots the prefix, then ignores events at or below the
//! snapshot's revision: nothing between the snapshot and the first event is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::{BoxFuture, KeyValues, KvError, KvStore, Versioned, Watch, WatchEvent, WATCH_CHANNEL};

/// How many published changes a slow watch may fall behind before it has to re-list.
const BROADCAST_CAPACITY: usize = 4096;

/// The precondition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Any,
    Absent,
    Revision(u64),
}

/// A write to apply.
#[derive(Debug)]
pub(crate) enum WriteOp<'a> {
    Put {
        key: &'a str,
        value: &'a [u8],
        expect: Expect,
        /// The write may reach the disk later (see `KvStore::put_if_revision_deferred`).
        deferred: bool,
    },
    Delete {
        key: &'a str,
        /// `Any` or `Revision`; a delete of an absent key never applies.
        expect: Expect,
    },
}

/// Synchronous storage under a [`LocalStore`]. Writes are never concurrent (the store holds its
/// write lock); reads may run alongside a write.
pub(crate) trait Backend: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Versioned>, KvError>;
    /// A consistent snapshot: the store revision and every entry under `prefix`, sorted. With
    /// `values == false` the values may be left empty.
    #[allow(clippy::type_complexity)]
    fn range(&self, prefix: &str, values: bool)
        -> Result<(u64, Vec<(String, Versioned)>), KvError>;
    /// Applies `op` if its precondition holds (a delete of an absent key does not apply) and
    /// returns the revision it was written at.
    fn write(&self, op: &WriteOp<'_>) -> Result<Option<u64>, KvError>;
    fn describe(&self) -> String;
}

struct Shared<B> {
    backend: B,
    write_lock: Mutex<()>,
    events: broadcast::Sender<(u64, WatchEvent)>,
}

/// A [`KvStore`] over a synchronous backend.
pub(crate) struct LocalStore<B: Backend> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend> std::fmt::Debug for LocalStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shared.backend.describe())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the data half-written (the backend commits
    // atomically), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Backend> LocalStore<B> {
    pub(crate) fn new(backend: B) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        LocalStore {
            shared: Arc::new(Shared {
                backend,
                write_lock: Mutex::new(()),
                events,
            }),
        }
    }

    pub(crate) fn backend_ref(&self) -> &B {
        &self.shared.backend
    }

    /// Runs `f` on the blocking pool: redb does file I/O and fsyncs.
    async fn blocking<T, F>(&self, f: F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared<B>) -> Result<T, KvError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| KvError::Task {
                store: self.shared.backend.describe(),
                message: e.to_string(),
            })?
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
        deferred: bool,
    ) -> Result<bool, KvError> {
        let key = key.to_owned();
        self.blocking(move |shared| {
            let _guard = lock(&shared.write_lock);
            let (applied, event) = match &value {
                Some(v) => (
                    shared.backend.write(&WriteOp::Put {
                        key: &key,
                        value: v,
                        expect,
                        deferred,
                    })?,
                    WatchEvent::Put {
                        key: key.clone(),
                        value: v.clone(),
                    },
                ),
                None => (
                    shared
                        .backend
                        .write(&WriteOp::Delete { key: &key, expect })?,
                    WatchEvent::Delete { key: key.clone() },
                ),
            };
            if let Some(revision) = applied {
                // No subscribers is fine: the send only fails when nobody watches.
                let _ = shared.events.send((revision, event));
            }
            Ok(applied.is_some())
        })
        .await
    }

    async fn snapshot(
        &self,
        prefix: &str,
        values: bool,
    ) -> Result<(u64, Vec<(String, Versioned)>), KvError> {
        let prefix = prefix.to_owned();
        self.blocking(move |shared| shared.backend.range(&prefix, values))
            .await
    }
}

/// CAS attempts on a local store. All contenders live in this process and a retry costs a
/// local read and write, so conflicts are retried far longer than over the network: on a loaded
/// 2-core machine 8 tasks incrementing one key lost the default 10 rounds in a row.
const LOCAL_CAS_RETRIES: u32 = 100;

impl<B: Backend> KvStore for LocalStore<B> {
    fn cas_retries(&self) -> u32 {
        LOCAL_CAS_RETRIES
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        Box::pin(async move {
            let key = key.to_owned();
            self.blocking(move |shared| shared.backend.get(&key)).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, KvError>> {
        Box::pin(async move {
            let (_, entries) = self.snapshot(prefix, false).await?;
            Ok(entries.into_iter().map(|(k, _)| k).collect())
        })
    }

    fn list_values<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KeyValues, KvError>> {
        Box::pin(async move {
            let (_, entries) = self.snapshot(prefix, true).await?;
            Ok(entries.into_iter().map(|(k, v)| (k, v.value)).collect())
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            self.write(key, Some(value), Expect::Any, false)
                .await
                .map(|_| ())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(self.write(key, None, Expect::Any, false))
    }

    fn delete_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(self.write(key, None, Expect::Revision(expected), false))
    }

    fn put_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        let expect = expected.map_or(Expect::Absent, Expect::Revision);
        Box::pin(self.write(key, Some(value), expect, false))
    }

    fn put_if_revision_deferred<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        let expect = expected.map_or(Expect::Absent, Expect::Revision);
        Box::pin(self.write(key, Some(value), expect, true))
    }

    fn watch_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Watch, KvError>> {
        Box::pin(async move {
            let sub = self.shared.events.subscribe();
            let (revision, entries) = self.snapshot(prefix, false).await?;
            let known = entries.into_iter().map(|(k, _)| k).collect();
            let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
            // The task holds the store weakly: dropping the last handle must close the database
            // (and release its lock) at once, not when the runtime gets round to the task.
            let store = Arc::downgrade(&self.shared);
            let task = tokio::spawn(run_watch(
                store,
                prefix.to_owned(),
                sub,
                revision,
                known,
                tx,
            ));
            Ok(Watch::new(rx, task))
        })
    }

    fn describe(&self) -> String {
        self.shared.backend.describe()
    }
}

async fn run_watch<B: Backend>(
    store: Weak<Shared<B>>,
    prefix: String,
    mut sub: broadcast::Receiver<(u64, WatchEvent)>,
    mut seen: u64,
    mut known: BTreeSet<String>,
    tx: mpsc::Sender<WatchEvent>,
) {
    loop {
        match sub.recv().await {
            Ok((revision, event)) => {
                if revision <= seen || !event.key().starts_with(&prefix) {
                    continue;
                }
                seen = revision;
                match &event {
                    WatchEvent::Put { key, .. } => known.insert(key.clone()),
                    WatchEvent::Delete { key } => known.remove(key),
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(prefix, missed, "KV watch fell behind; re-listing");
                let Some((revision, entries)) = relist(&store, &prefix).await else {
                    return;
                };
                let Some(now) = emit_resync(&tx, &known, entries).await else {
                    return;
                };
                known = now;
                seen = revision;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Re-lists `prefix`, retrying with backoff while the backend fails. `None` = the store is gone.
async fn relist<B: Backend>(
    store: &Weak<Shared<B>>,
    prefix: &str,
) -> Option<(u64, Vec<(String, Versioned)>)> {
    let mut delay = Duration::from_millis(100);
    loop {
        let local = LocalStore {
            shared: store.upgrade()?,
        };
        match local.snapshot(prefix, true).await {
            Ok(snapshot) => return Some(snapshot),
            Err(err) => {
                tracing::warn!(store = %local.describe(), prefix, error = %err, "watch re-list failed; retrying");
                drop(local);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sends a synthetic `Put` for every entry and a `Delete` for every key in `known` that is no
/// longer there; returns the new known set, `None` when the consumer is gone.
pub(crate) async fn emit_resync(
    tx: &mpsc::Sender<WatchEvent>,
    known: &BTreeSet<String>,
    entries: Vec<(String, Versioned)>,
) -> Option<BTreeSet<String>> {
    let now: BTreeSet<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    for gone in known.difference(&now) {
        tx.send(WatchEvent::Delete { key: gone.clone() })
            .await
            .ok()?;
    }
    for (key, v) in entries {
        tx.send(WatchEvent::Put {
            key,
            value: v.value,
        })
        .await
        .ok()?;
    }
    Some(now)
}

/// In-memory backend: a sorted map and a revision counter.
#[derive(Default)]
pub(crate) struct MemBackend {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    revision: u64,
    entries: BTreeMap<String, Versioned>,
}

impl Backend for MemBackend {
    fn get(&self, key: &str) -> Result<Option<Versioned>, KvError> {
        Ok(lock(&self.state).entries.get(key).cloned())
    }

    fn range(
        &self,
        prefix: &str,
        values: bool,
    ) -> Result<(u64, Vec<(String, Versioned)>), KvError> {
        let state = lock(&self.state);
        let entries = state
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| {
                let v = if values {
                    v.clone()
                } else {
                    Versioned {
                        value: Vec::new(),
                        revision: v.revision,
                    }
                };
                (k.clone(), v)
            })
            .collect();
        Ok((state.revision, entries))
    }

    fn write(&self, op: &WriteOp<'_>) -> Result<Option<u64>, KvError> {
        let mut state = lock(&self.state);
        match *op {
            // Nothing here reaches a disk: a deferred write is like any other.
            WriteOp::Put {
                key, value, expect, ..
            } => {
                let current = state.entries.get(key).map(|v| v.revision);
                if !expect_holds(expect, current) {
                    return Ok(None);
                }
                state.revision += 1;
                let revision = state.revision;
                state.entries.insert(
                    key.to_owned(),
                    Versioned {
                        value: value.to_vec(),
                        revision,
                    },
                );
                Ok(Some(revision))
            }
            WriteOp::Delete { key, expect } => {
                let current = state.entries.get(key).map(|v| v.revision);
                if current.is_none() || !expect_holds(expect, current) {
                    return Ok(None);
                }
                state.entries.remove(key);
                state.revision += 1;
                Ok(Some(state.revision))
            }
        }
    }

    fn describe(&self) -> String {
        "in-memory KV store".to_owned()
    }
}

pub(crate) fn expect_holds(expect: Expect, current: Option<u64>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Revision(r) => current == Some(r),
    }
}

/// Implements [`KvStore`] for a newtype around a [`LocalStore`] by delegation.
macro_rules! delegate_kv_store {
    ($ty:ty) => {
        impl $crate::kv::KvStore for $ty {
            fn get<'a>(
                &'a self,
                key: &'a str,
            ) -> $crate::kv::BoxFuture<'a, Result<Option<$crate::kv::Versioned>, $crate::kv::KvError>>
            {
                self.0.get(key)
            }
            fn list<'a>(
                &'a self,
                prefix: &'a str,
            ) -> $crate::kv::BoxFuture<'a, Result<Vec<String>, $crate::kv::KvError>> {
                self.0.list(prefix)
            }
            fn list_values<'a>(
                &'a self,
                prefix: &'a str,
            ) -> $crate::kv::BoxFuture<'a, Result<$crate::kv::KeyValues, $crate::kv::KvError>> {
                self.0.list_values(prefix)
            }
            fn put<'a>(
                &'a self,
                key: &'a str,
                value: Vec<u8>,
            ) -> $crate::kv::BoxFuture<'a, Result<(), $crate::kv::KvError>> {
                self.0.put(key, value)
            }
            fn delete<'a>(
                &'a self,
                key: &'a str,
            ) -> $crate::kv::BoxFuture<'a, Result<bool, $crate::kv::KvError>> {
                self.0.delete(key)
            }
            fn put_if_revision<'a>(
                &'a self,
                key: &'a str,
                expected: Option<u64>,
                value: Vec<u8>,
            ) -> $crate::kv::BoxFuture<'a, Result<bool, $crate::kv::KvError>> {
                self.0.put_if_revision(key, expected, value)
            }
            fn put_if_revision_deferred<'a>(
                &'a self,
                key: &'a str,
                expected: Option<u64>,
                value: Vec<u8>,
            ) -> $crate::kv::BoxFuture<'a, Result<bool, $crate::kv::KvError>> {
                self.0.put_if_revision_deferred(key, expected, value)
            }
            fn delete_if_revision<'a>(
                &'a self,
                key: &'a str,
                expected: u64,
            ) -> $crate::kv::BoxFuture<'a, Result<bool, $crate::kv::KvError>> {
                self.0.delete_if_revision(key, expected)
            }
            fn watch_prefix<'a>(
                &'a self,
                prefix: &'a str,
            ) -> $crate::kv::BoxFuture<'a, Result<$crate::kv::Watch, $crate::kv::KvError>> {
                self.0.watch_prefix(prefix)
            }
            fn cas_retries(&self) -> u32 {
                self.0.cas_retries()
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
    };
}
pub(crate) use delegate_kv_store;

/// A process-local store for unit tests and `store: inmemory`. Cloning shares the data.
#[derive(Debug, Clone)]
pub struct InMemoryStore(Arc<LocalStore<MemBackend>>);

impl InMemoryStore {
    pub fn new() -> Self {
        InMemoryStore(Arc::new(LocalStore::new(MemBackend::default())))
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

delegate_kv_store!(InMemoryStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lagging_watch_resyncs() {
        let store = InMemoryStore::new();
        store.put("p/gone", b"x".to_vec()).await.expect("put");
        let mut watch = store.watch_prefix("p/").await.expect("watch");
        store.delete("p/gone").await.expect("delete");
        // Overflow the broadcast buffer before the watch task forwards anything: it has to
        // re-list, and the result must still show "p/gone" deleted and the last value of "p/k".
        for i in 0..(BROADCAST_CAPACITY + WATCH_CHANNEL + 10) {
            store
                .put("p/k", i.to_string().into_bytes())
                .await
                .expect("put");
        }
        let mut last_k = None;
        let mut gone_deleted = false;
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(500), watch.recv()).await
        {
            match ev {
                WatchEvent::Put { key, value } if key == "p/k" => last_k = Some(value),
                WatchEvent::Delete { key } if key == "p/gone" => gone_deleted = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(gone_deleted);
        assert_eq!(
            last_k,
            Some(
                (BROADCAST_CAPACITY + WATCH_CHANNEL + 9)
                    .to_string()
                    .into_bytes()
            )
        );
    }

    #[tokio::test]
    async fn clones_share_data() {
        let a = InMemoryStore::new();
        let b = a.clone();
        a.put("k", b"v".to_vec()).await.expect("put");
        assert!(b.get("k").await.expect("get").is_some());
    }
}
