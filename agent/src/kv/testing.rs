//! For tests of code that uses a [`KvStore`]: the behaviour every store must have
//! ([`conformance`], run against the in-memory, embedded and etcd stores by the integration
//! tests in `tests/kv.rs`) and [`FaultyStore`], a wrapper that makes a store fail or lose races
//! on demand. Built for this crate's unit tests and, with the `test-util` feature, for the
//! integration tests; never part of the agent binary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BoxFuture, KeyValues, KvError, KvStore, Versioned, Watch};

/// The store operations, to aim a fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    List,
    ListValues,
    Put,
    Delete,
    DeleteIfRevision,
    PutIfRevision,
    WatchPrefix,
}

/// Runs against the wrapped store just before an operation: "another writer got there first".
pub type Hook = Arc<dyn Fn(Arc<dyn KvStore>) -> BoxFuture<'static, ()> + Send + Sync>;

struct Interference {
    op: Op,
    hook: Hook,
    /// `false`: only before the next such operation.
    every_time: bool,
}

#[derive(Default)]
struct Faults {
    /// While set, every operation fails as an unreachable etcd does.
    down: bool,
    interference: Vec<Interference>,
    /// Each event of a watch started from now on is delivered this late.
    watch_delay: Duration,
}

/// A [`KvStore`] that forwards to `inner` unless told to fail: [`FaultyStore::set_down`]
/// makes every operation fail like an unreachable etcd (`KvError::EtcdTimeout`),
/// [`FaultyStore::before`] lets another writer change the store just before an operation (a
/// lost CAS race, a config changed between a read and a conditional delete), and
/// [`FaultyStore::set_watch_delay`] makes watches lag behind the writes (etcd delivers a
/// write's watch event on its own stream, after or before the writer hears back).
pub struct FaultyStore {
    inner: Arc<dyn KvStore>,
    faults: Mutex<Faults>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn KvStore>) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            faults: Mutex::new(Faults::default()),
        })
    }

    /// The wrapped store (writes through it bypass the faults).
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.inner
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Down: every operation fails until set up again.
    pub fn set_down(&self, down: bool) {
        self.faults().down = down;
    }

    /// Watches started from now on deliver each event `delay` after it happened, in order.
    pub fn set_watch_delay(&self, delay: Duration) {
        self.faults().watch_delay = delay;
    }

    /// Runs `hook` on the wrapped store just before the next `op` (or before every one, with
    /// `every_time`), then the operation itself.
    pub fn before<F>(&self, op: Op, every_time: bool, hook: F)
    where
        F: Fn(Arc<dyn KvStore>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        self.faults().interference.push(Interference {
            op,
            hook: Arc::new(hook),
            every_time,
        });
    }

    /// Whether the operation fails, and what to run before it; never holds the lock across
    /// the hook.
    async fn enter(&self, op: Op, key: &str) -> Result<(), KvError> {
        let hooks: Vec<Hook> = {
            let mut f = self.faults();
            if f.down {
                return Err(KvError::EtcdTimeout {
                    endpoints: self.describe(),
                    operation: op_name(op),
                    key: key.to_owned(),
                    timeout: Duration::ZERO,
                });
            }
            let hooks = f
                .interference
                .iter()
                .filter(|i| i.op == op)
                .map(|i| i.hook.clone())
                .collect();
            f.interference.retain(|i| i.op != op || i.every_time);
            hooks
        };
        for h in hooks {
            h(self.inner.clone()).await;
        }
        Ok(())
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Get => "get",
        Op::List => "list",
        Op::ListValues => "list",
        Op::Put => "put",
        Op::Delete => "delete",
        Op::DeleteIfRevision => "delete",
        Op::PutIfRevision => "put",
        Op::WatchPrefix => "watch",
    }
}

impl KvStore for FaultyStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        Box::pin(async move {
            self.enter(Op::Get, key).await?;
            self.inner.get(key).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, KvError>> {
        Box::pin(async move {
            self.enter(Op::List, prefix).await?;
            self.inner.list(prefix).await
        })
    }

    fn list_values<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KeyValues, KvError>> {
        Box::pin(async move {
            self.enter(Op::ListValues, prefix).await?;
            self.inner.list_values(prefix).await
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            self.enter(Op::Put, key).await?;
            self.inner.put(key, value).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            self.enter(Op::Delete, key).await?;
            self.inner.delete(key).await
        })
    }

    fn delete_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: u64,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            self.enter(Op::DeleteIfRevision, key).await?;
            self.inner.delete_if_revision(key, expected).await
        })
    }

    fn put_if_revision<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            self.enter(Op::PutIfRevision, key).await?;
            self.inner.put_if_revision(key, expected, value).await
        })
    }

    fn watch_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Watch, KvError>> {
        Box::pin(async move {
            self.enter(Op::WatchPrefix, prefix).await?;
            let mut inner = self.inner.watch_prefix(prefix).await?;
            let delay = self.faults().watch_delay;
            if delay.is_zero() {
                return Ok(inner);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(super::WATCH_CHANNEL);
            let task = tokio::spawn(async move {
                // Each event stamped on arrival, forwarded `delay` later, in order.
                let (stamped_tx, mut stamped) = tokio::sync::mpsc::unbounded_channel();
                let forward = async move {
                    while let Some((at, ev)) = stamped.recv().await {
                        tokio::time::sleep_until(at + delay).await;
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                };
                let receive = async move {
                    while let Some(ev) = inner.recv().await {
                        if stamped_tx.send((tokio::time::Instant::now(), ev)).is_err() {
                            return;
                        }
                    }
                };
                tokio::join!(forward, receive);
            });
            Ok(Watch::new(rx, task))
        })
    }

    fn cas_retries(&self) -> u32 {
        self.inner.cas_retries()
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
}

/// The behaviour every [`KvStore`] must have. [`run`] takes a fresh, empty store.
pub mod conformance {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::kv::{CasError, CasOutcome, KvStore, Watch, WatchEvent};

    /// How many tasks race `each` increments of one counter through CAS.
    #[derive(Debug, Clone, Copy)]
    pub struct Contention {
        pub tasks: usize,
        pub each: usize,
    }

    /// Every check, in turn, on one fresh and empty `store`.
    pub async fn run(store: Arc<dyn KvStore>, contention: Contention) {
        basic_ops(&store).await;
        conditional_writes(&store).await;
        conditional_deletes(&store).await;
        cas_semantics(&store).await;
        concurrent_cas(&store, contention).await;
        watch_reports_puts_and_deletes(&store).await;
    }

    async fn next(watch: &mut Watch) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("watch event within 10 s")
            .expect("watch open")
    }

    /// get, put, list (sorted, by prefix, `""` for everything), list_values, delete.
    async fn basic_ops(store: &Arc<dyn KvStore>) {
        assert_eq!(store.get("configurations/a").await.expect("get"), None);
        for (k, v) in [
            ("configurations/a", "one"),
            ("configurations/team/b", "two"),
            // Shares the prefix's text but not its `/`: never listed under it.
            ("configurations0", "x"),
            ("collectors/agent", "ring"),
        ] {
            store.put(k, v.as_bytes().to_vec()).await.expect("put");
        }
        let a = store
            .get("configurations/a")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(a.value, b"one");
        assert!(a.revision > 0);
        assert_eq!(
            store.list("configurations/").await.expect("list"),
            vec!["configurations/a", "configurations/team/b"]
        );
        assert_eq!(
            store.list_values("configurations/").await.expect("list"),
            vec![
                ("configurations/a".to_owned(), b"one".to_vec()),
                ("configurations/team/b".to_owned(), b"two".to_vec())
            ]
        );
        assert_eq!(store.list("").await.expect("list").len(), 4);
        assert!(store.delete("configurations/a").await.expect("delete"));
        assert!(!store.delete("configurations/a").await.expect("delete"));
        assert_eq!(store.get("configurations/a").await.expect("get"), None);
        for k in [
            "configurations/team/b",
            "configurations0",
            "collectors/agent",
        ] {
            assert!(store.delete(k).await.expect("delete"), "{k}");
        }
        assert!(store.list("").await.expect("list").is_empty());
    }

    /// put_if_revision compares the revision of the last write; `None` means "must not exist".
    async fn conditional_writes(store: &Arc<dyn KvStore>) {
        store.put("w/b", b"two".to_vec()).await.expect("put");
        let b = store.get("w/b").await.expect("get").expect("present");
        assert!(!store
            .put_if_revision("w/b", None, b"x".to_vec())
            .await
            .expect("cas"));
        assert!(!store
            .put_if_revision("w/b", Some(b.revision - 1), b"x".to_vec())
            .await
            .expect("cas"));
        assert!(!store
            .put_if_revision("w/b", Some(b.revision + 100), b"x".to_vec())
            .await
            .expect("cas"));
        assert!(store
            .put_if_revision("w/b", Some(b.revision), b"three".to_vec())
            .await
            .expect("cas"));
        let b2 = store.get("w/b").await.expect("get").expect("present");
        assert_eq!(b2.value, b"three");
        assert!(b2.revision > b.revision);
        assert!(store
            .put_if_revision("w/new", None, b"n".to_vec())
            .await
            .expect("cas"));
        assert!(!store
            .put_if_revision("w/absent", Some(b2.revision), b"n".to_vec())
            .await
            .expect("cas"));
        assert_eq!(store.get("w/absent").await.expect("get"), None);
    }

    /// delete_if_revision: a stale revision or an absent key loses, the current one wins.
    async fn conditional_deletes(store: &Arc<dyn KvStore>) {
        store.put("d/a", b"1".to_vec()).await.expect("put");
        let now = store.get("d/a").await.expect("get").expect("present");
        assert!(!store
            .delete_if_revision("d/a", now.revision - 1)
            .await
            .expect("delete"));
        assert!(!store
            .delete_if_revision("d/none", now.revision)
            .await
            .expect("delete"));
        assert!(store
            .delete_if_revision("d/a", now.revision)
            .await
            .expect("delete"));
        assert_eq!(store.get("d/a").await.expect("get"), None);
    }

    /// `<dyn KvStore>::cas`: created, updated, unchanged, the callback's error.
    async fn cas_semantics(store: &Arc<dyn KvStore>) {
        let outcome = store
            .cas("c/k", |old| {
                assert_eq!(old, None);
                Ok::<_, String>(Some(b"1".to_vec()))
            })
            .await
            .expect("cas");
        assert_eq!(outcome, CasOutcome::Created);
        let outcome = store
            .cas("c/k", |old| {
                Ok::<_, String>(old.map(|o| [o, b"2"].concat()))
            })
            .await
            .expect("cas");
        assert_eq!(outcome, CasOutcome::Updated);
        assert_eq!(
            store.get("c/k").await.expect("get").expect("present").value,
            b"12"
        );
        let outcome = store
            .cas("c/k", |_| Ok::<_, String>(None))
            .await
            .expect("cas");
        assert_eq!(outcome, CasOutcome::Unchanged);
        let err = store
            .cas("c/k", |_| Err::<Option<Vec<u8>>, _>("refused".to_owned()))
            .await
            .expect_err("callback error");
        assert_eq!(err.to_string(), "refused");
    }

    /// No increment is lost or applied twice when tasks race through CAS, ordinary and deferred
    /// (`cas_deferred`) in turn. A CAS that gave up
    /// (`TooManyConflicts`: every attempt lost the race, which a loaded machine can make
    /// happen for any bound) wrote nothing, so the task tries again: what is checked is the
    /// counter, not how many attempts sufficed.
    async fn concurrent_cas(store: &Arc<dyn KvStore>, c: Contention) {
        let mut handles = Vec::new();
        for _ in 0..c.tasks {
            let store = Arc::clone(store);
            handles.push(tokio::spawn(async move {
                let mut gave_up = 0u32;
                for i in 0..c.each {
                    loop {
                        let increment = |old: Option<&[u8]>| {
                            let n: u64 = match old {
                                None => 0,
                                Some(b) => String::from_utf8_lossy(b)
                                    .parse()
                                    .map_err(|e| format!("counter: {e}"))?,
                            };
                            Ok::<_, String>(Some((n + 1).to_string().into_bytes()))
                        };
                        // Deferred writes (ring heartbeats) and ordinary ones interleave.
                        let done = if i % 2 == 0 {
                            store.cas("c/counter", increment).await
                        } else {
                            store.cas_deferred("c/counter", increment).await
                        };
                        match done {
                            Ok(_) => break,
                            Err(CasError::TooManyConflicts { .. }) => gave_up += 1,
                            Err(e) => panic!("cas: {e}"),
                        }
                    }
                }
                gave_up
            }));
        }
        let mut gave_up = 0;
        for h in handles {
            gave_up += h.await.expect("task");
        }
        let v = store.get("c/counter").await.expect("get").expect("present");
        assert_eq!(
            String::from_utf8_lossy(&v.value),
            (c.tasks * c.each).to_string(),
            "{} tasks x {} increments ({gave_up} CAS calls gave up and were repeated)",
            c.tasks,
            c.each
        );
    }

    /// A watch starts at the current revision and reports every later put and delete under
    /// its prefix, in order; other keys are not reported.
    async fn watch_reports_puts_and_deletes(store: &Arc<dyn KvStore>) {
        store
            .put("configurations/pre", b"p".to_vec())
            .await
            .expect("put");
        let mut watch = store.watch_prefix("configurations/").await.expect("watch");
        store
            .put("collectors/agent", b"ignored".to_vec())
            .await
            .expect("put");
        store
            .put("configurations/a", b"1".to_vec())
            .await
            .expect("put");
        store
            .put("configurations/a", b"2".to_vec())
            .await
            .expect("put");
        store.delete("configurations/a").await.expect("delete");
        store.delete("configurations/pre").await.expect("delete");
        let put = |k: &str, v: &[u8]| WatchEvent::Put {
            key: k.to_owned(),
            value: v.to_vec(),
        };
        let del = |k: &str| WatchEvent::Delete { key: k.to_owned() };
        assert_eq!(next(&mut watch).await, put("configurations/a", b"1"));
        assert_eq!(next(&mut watch).await, put("configurations/a", b"2"));
        assert_eq!(next(&mut watch).await, del("configurations/a"));
        assert_eq!(next(&mut watch).await, del("configurations/pre"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::InMemoryStore;

    #[tokio::test]
    async fn down_fails_every_operation_and_up_forwards_again() {
        let s = FaultyStore::new(Arc::new(InMemoryStore::new()));
        s.put("k", b"v".to_vec()).await.expect("put");
        s.set_down(true);
        let err = s.get("k").await.expect_err("down");
        assert!(err.to_string().contains("faulty in-memory"), "{err}");
        assert!(s.put_if_revision("k", None, vec![]).await.is_err());
        assert!(s.watch_prefix("k").await.is_err());
        s.set_down(false);
        assert_eq!(s.get("k").await.expect("get").expect("v").value, b"v");
    }

    #[tokio::test]
    async fn a_hook_runs_before_the_next_operation_only_unless_every_time() {
        let s = FaultyStore::new(Arc::new(InMemoryStore::new()));
        s.before(Op::Put, false, |inner| {
            Box::pin(async move {
                let n = inner.list("").await.expect("list").len();
                inner
                    .put(&format!("first-{n}"), vec![])
                    .await
                    .expect("hook put");
            })
        });
        s.put("a", vec![]).await.expect("put");
        s.put("b", vec![]).await.expect("put");
        assert_eq!(s.list("").await.expect("list"), ["a", "b", "first-0"]);
        s.before(Op::Delete, true, |inner| {
            Box::pin(async move { inner.put("again", vec![]).await.expect("hook put") })
        });
        s.delete("again").await.expect("delete");
        assert!(
            s.delete("again").await.expect("delete"),
            "recreated each time"
        );
    }
}
