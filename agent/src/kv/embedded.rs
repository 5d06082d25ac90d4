//! The embedded store: the default when no KV store is configured. Durable on disk, one process
//! at a time, watches served in-process.
//!
//! # On-disk layout
//!
//! One [redb](https://www.redb.org) database file, `<dir>/kv.redb`, with two tables:
//!
//! | table  | key (`&str`)                         | value                                      |
//! |--------|--------------------------------------|--------------------------------------------|
//! | `kv`   | the full key (`configurations/a`)    | `(u64, &[u8])`: revision of the last write, the value bytes exactly as etcd would hold them |
//! | `meta` | `"revision"`                         | `u64`: the store revision, +1 per applied write |
//!
//! Each write is one redb transaction committed with `Durability::Immediate` (redb's
//! copy-on-write B-tree with a checksummed commit slot; a crash leaves the previous commit), so
//! an acknowledged write survives a crash, and the revision and the value change together.
//!
//! Deferred writes ([`KvStore::put_if_revision_deferred`](super::KvStore::put_if_revision_deferred):
//! the ring's heartbeats) are the exception: they are applied in memory (reads, CAS and
//! watches see them at once, with their revisions) and reach the file with the next ordinary
//! write (in its transaction), when the store closes, or once [`DEFERRED_WRITES_MAX`] of them
//! are waiting. A crash loses only those (the ring entry's newest heartbeat timestamps; the
//! agent registers again when it starts), never an ordinary write such as a config written
//! through the API. An Immediate commit rewrites about four 4 KiB pages (the tables' leaves,
//! the allocator state, the header) and fsyncs them: at one heartbeat every 5 s that was about
//! 3.3 KB/s of disk writes for nothing a restart needs.
//!
//! redb takes an exclusive `flock` on the file; a second process (or a second open in this
//! process) fails with [`KvError::EmbeddedLocked`] instead of corrupting the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::local::{delegate_kv_store, expect_holds, Backend, Expect, LocalStore, WriteOp};
use super::{KvError, Versioned, DEFERRED_WRITES_MAX};

const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// File name of the database inside the store directory.
pub const DB_FILE: &str = "kv.redb";

/// The embedded, durable KV store. Cloning shares the open database.
#[derive(Debug, Clone)]
pub struct EmbeddedStore(Arc<LocalStore<RedbBackend>>);

impl EmbeddedStore {
    /// Opens (creating if needed) the store in directory `dir`.
    pub async fn open(dir: PathBuf) -> Result<Self, KvError> {
        let backend = tokio::task::spawn_blocking(move || RedbBackend::open(&dir))
            .await
            .map_err(|e| KvError::Task {
                store: "embedded KV store".to_owned(),
                message: e.to_string(),
            })??;
        Ok(EmbeddedStore(Arc::new(LocalStore::new(backend))))
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.0.backend_ref().dir
    }
}

delegate_kv_store!(EmbeddedStore);

pub(crate) struct RedbBackend {
    dir: PathBuf,
    db: Database,
    /// Deferred writes not in the file yet.
    deferred: Mutex<Deferred>,
}

/// Deferred puts waiting for the file. Their revisions are above the file's `revision` until
/// they are written (every write takes the next revision, and an ordinary write writes them
/// first), which is how a read tells whether the file it read holds them already.
#[derive(Default)]
struct Deferred {
    entries: BTreeMap<String, Versioned>,
    /// The store revision of the newest of them (0: none).
    revision: u64,
    /// Deferred writes since the file last got them.
    writes: u32,
}

fn lock(m: &Mutex<Deferred>) -> MutexGuard<'_, Deferred> {
    // Only memory is changed under this lock, and never left half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedbBackend {
    fn open(dir: &Path) -> Result<Self, KvError> {
        std::fs::create_dir_all(dir).map_err(|e| KvError::EmbeddedIo {
            path: dir.to_owned(),
            message: format!("cannot create directory: {e}"),
        })?;
        let db = match Database::create(dir.join(DB_FILE)) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(KvError::EmbeddedLocked {
                    path: dir.to_owned(),
                })
            }
            Err(e) => return Err(embedded_err(dir, "open", e)),
        };
        let backend = RedbBackend {
            dir: dir.to_owned(),
            db,
            deferred: Mutex::default(),
        };
        // Create both tables up front so that readers never see "table does not exist".
        let txn = backend
            .db
            .begin_write()
            .map_err(|e| backend.err("open", e))?;
        txn.open_table(KV).map_err(|e| backend.err("open", e))?;
        txn.open_table(META).map_err(|e| backend.err("open", e))?;
        txn.commit().map_err(|e| backend.err("open", e))?;
        Ok(backend)
    }

    fn err(&self, operation: &'static str, e: impl Into<redb::Error>) -> KvError {
        embedded_err(&self.dir, operation, e)
    }

    /// The deferred value of `key` (if any) and the newest deferred revision.
    fn deferred_of(&self, key: &str) -> (Option<Versioned>, u64) {
        let d = lock(&self.deferred);
        (d.entries.get(key).cloned(), d.revision)
    }

    /// Applies a deferred put in memory; writes the deferred puts to the file once
    /// [`DEFERRED_WRITES_MAX`] are waiting. Writes never run concurrently (the store holds its
    /// write lock), so nothing changes the file or the deferred puts between the check and the
    /// update here.
    fn write_deferred(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Option<u64>, KvError> {
        let (pending, pending_revision) = self.deferred_of(key);
        let txn = self.db.begin_read().map_err(|e| self.err("write", e))?;
        let current = match pending {
            Some(v) => Some(v.revision),
            None => {
                let table = txn.open_table(KV).map_err(|e| self.err("write", e))?;
                let found = table.get(key).map_err(|e| self.err("write", e))?;
                found.map(|g| g.value().0)
            }
        };
        if !expect_holds(expect, current) {
            return Ok(None);
        }
        let meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
        let file_revision = meta
            .get(REVISION)
            .map_err(|e| self.err("write", e))?
            .map_or(0, |g| g.value());
        let revision = pending_revision.max(file_revision) + 1;
        let full = {
            let mut d = lock(&self.deferred);
            d.entries.insert(
                key.to_owned(),
                Versioned {
                    value: value.to_vec(),
                    revision,
                },
            );
            d.revision = revision;
            d.writes += 1;
            d.writes >= DEFERRED_WRITES_MAX
        };
        if full {
            // The put is applied either way; a failed write to the file is tried again with
            // the next deferred or ordinary write.
            if let Err(e) = self.write_out(None) {
                tracing::warn!(error = %e, "embedded KV store: cannot write the deferred ring heartbeats; keeping them in memory");
            }
        }
        Ok(Some(revision))
    }

    /// One durable transaction: the deferred puts, then `op` (when given and its precondition
    /// holds). Returns `op`'s revision when it applied. The deferred puts leave memory only
    /// once the commit returned: a read meanwhile still finds them there.
    fn write_out(&self, op: Option<&WriteOp<'_>>) -> Result<Option<u64>, KvError> {
        let (entries, pending_revision) = {
            let d = lock(&self.deferred);
            (d.entries.clone(), d.revision)
        };
        if op.is_none() && entries.is_empty() {
            return Ok(None);
        }
        let txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        let applied = {
            let mut table = txn.open_table(KV).map_err(|e| self.err("write", e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            for (key, v) in &entries {
                table
                    .insert(key.as_str(), (v.revision, v.value.as_slice()))
                    .map_err(|e| self.err("write", e))?;
            }
            let file_revision = meta
                .get(REVISION)
                .map_err(|e| self.err("write", e))?
                .map_or(0, |g| g.value());
            let base = file_revision.max(pending_revision);
            let revision = base + 1;
            let applied = match op {
                None => false,
                Some(WriteOp::Put {
                    key, value, expect, ..
                }) => {
                    let current = table
                        .get(*key)
                        .map_err(|e| self.err("write", e))?
                        .map(|g| g.value().0);
                    if expect_holds(*expect, current) {
                        table
                            .insert(*key, (revision, *value))
                            .map_err(|e| self.err("write", e))?;
                        true
                    } else {
                        false
                    }
                }
                Some(WriteOp::Delete { key, expect }) => {
                    let current = table
                        .get(*key)
                        .map_err(|e| self.err("delete", e))?
                        .map(|g| g.value().0);
                    // Checked and removed in one write transaction: nothing can come between.
                    if current.is_some() && expect_holds(*expect, current) {
                        table
                            .remove(*key)
                            .map_err(|e| self.err("delete", e))?
                            .is_some()
                    } else {
                        false
                    }
                }
            };
            let written = if applied { revision } else { base };
            if written != file_revision {
                meta.insert(REVISION, written)
                    .map_err(|e| self.err("write", e))?;
            }
            applied.then_some(revision)
        };
        if applied.is_some() || !entries.is_empty() {
            txn.commit().map_err(|e| self.err("commit", e))?;
            if !entries.is_empty() {
                // Nothing was deferred meanwhile (writes do not run concurrently).
                *lock(&self.deferred) = Deferred::default();
            }
        } else {
            txn.abort().map_err(|e| self.err("write", e))?;
        }
        Ok(applied)
    }
}

impl Drop for RedbBackend {
    /// A clean close writes the deferred puts (a crash is what may lose them).
    fn drop(&mut self) {
        if let Err(e) = self.write_out(None) {
            tracing::warn!(error = %e, "embedded KV store: cannot write the deferred ring heartbeats at close");
        }
    }
}

fn embedded_err(dir: &Path, operation: &'static str, e: impl Into<redb::Error>) -> KvError {
    KvError::Embedded {
        path: dir.to_owned(),
        operation,
        source: Box::new(e.into()),
    }
}

impl Backend for RedbBackend {
    fn get(&self, key: &str) -> Result<Option<Versioned>, KvError> {
        if let (Some(v), _) = self.deferred_of(key) {
            return Ok(Some(v));
        }
        let txn = self.db.begin_read().map_err(|e| self.err("get", e))?;
        let table = txn.open_table(KV).map_err(|e| self.err("get", e))?;
        let found = table.get(key).map_err(|e| self.err("get", e))?;
        Ok(found.map(|guard| {
            let (revision, value) = guard.value();
            Versioned {
                value: value.to_vec(),
                revision,
            }
        }))
    }

    fn range(
        &self,
        prefix: &str,
        values: bool,
    ) -> Result<(u64, Vec<(String, Versioned)>), KvError> {
        // The deferred puts first: those the file read below holds already (written
        // meanwhile) have revisions at or below the file's and are left out.
        let deferred: Vec<(String, Versioned)> = {
            let d = lock(&self.deferred);
            d.entries
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let txn = self.db.begin_read().map_err(|e| self.err("list", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("list", e))?;
        let file_revision = meta
            .get(REVISION)
            .map_err(|e| self.err("list", e))?
            .map_or(0, |g| g.value());
        let table = txn.open_table(KV).map_err(|e| self.err("list", e))?;
        let mut entries = BTreeMap::new();
        for item in table.range(prefix..).map_err(|e| self.err("list", e))? {
            let (k, v) = item.map_err(|e| self.err("list", e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (rev, value) = v.value();
            entries.insert(
                key.to_owned(),
                Versioned {
                    value: if values { value.to_vec() } else { Vec::new() },
                    revision: rev,
                },
            );
        }
        let mut revision = file_revision;
        for (key, mut v) in deferred {
            if v.revision > file_revision {
                revision = revision.max(v.revision);
                if !values {
                    v.value = Vec::new();
                }
                entries.insert(key, v);
            }
        }
        Ok((revision, entries.into_iter().collect()))
    }

    fn write(&self, op: &WriteOp<'_>) -> Result<Option<u64>, KvError> {
        match *op {
            WriteOp::Put {
                key,
                value,
                expect,
                deferred: true,
            } => self.write_deferred(key, value, expect),
            _ => self.write_out(Some(op)),
        }
    }

    fn describe(&self) -> String {
        format!("embedded KV store at {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{KvStore, WatchEvent};
    use super::*;

    async fn open(dir: &Path) -> Arc<dyn KvStore> {
        Arc::new(EmbeddedStore::open(dir.to_owned()).await.expect("open"))
    }

    #[tokio::test]
    async fn survives_reopen_and_keeps_revisions_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        store
            .put("configurations/a", b"1".to_vec())
            .await
            .expect("put");
        store
            .put("configurations/b", b"2".to_vec())
            .await
            .expect("put");
        store.delete("configurations/b").await.expect("delete");
        let before = store
            .get("configurations/a")
            .await
            .expect("get")
            .expect("present");
        drop(store);

        let store = open(dir.path()).await;
        assert_eq!(
            store.list("").await.expect("list"),
            vec!["configurations/a"]
        );
        assert_eq!(
            store.get("configurations/a").await.expect("get"),
            Some(before.clone())
        );
        store
            .put("configurations/c", b"3".to_vec())
            .await
            .expect("put");
        let c = store
            .get("configurations/c")
            .await
            .expect("get")
            .expect("present");
        // put a, put b, delete b = revision 3; the next write after reopen is 4.
        assert_eq!(c.revision, 4);
        assert!(c.revision > before.revision);
    }

    /// What a crash would leave: a copy of the database file as it is now (redb takes it
    /// back like a file after a crash: the last commit), opened from another directory.
    async fn after_a_crash(store: &EmbeddedStore) -> (tempfile::TempDir, Arc<dyn KvStore>) {
        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(store.dir().join(DB_FILE), copy.path().join(DB_FILE)).expect("copy");
        let opened = open(copy.path()).await;
        (copy, opened)
    }

    async fn value(store: &Arc<dyn KvStore>, key: &str) -> Option<Vec<u8>> {
        store.get(key).await.expect("get").map(|v| v.value)
    }

    /// Deferred writes (ring heartbeats) are read, listed, watched and CASed like any other at
    /// once, but reach the file only with the next ordinary write, at a clean close, or once
    /// DEFERRED_WRITES_MAX wait: a crash loses them and nothing else.
    #[tokio::test]
    async fn deferred_writes_reach_the_file_with_the_next_ordinary_write_or_the_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let embedded = EmbeddedStore::open(dir.path().to_owned())
            .await
            .expect("open");
        let store: Arc<dyn KvStore> = Arc::new(embedded.clone());
        store
            .put("configurations/a", b"cfg a".to_vec())
            .await
            .expect("put");
        let mut watch = store.watch_prefix("collectors/").await.expect("watch");
        for beat in 1..=3u8 {
            store
                .cas_deferred("collectors/agent", |_| Ok::<_, String>(Some(vec![beat])))
                .await
                .expect("cas");
            assert_eq!(
                watch.recv().await,
                Some(WatchEvent::Put {
                    key: "collectors/agent".into(),
                    value: vec![beat]
                })
            );
        }
        let ring = store
            .get("collectors/agent")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(ring.value, [3]);
        // A CAS against a stale revision of a deferred value loses, as any CAS.
        assert!(!store
            .put_if_revision_deferred("collectors/agent", Some(ring.revision - 1), vec![9])
            .await
            .expect("cas"));
        assert_eq!(
            store.list("").await.expect("list"),
            ["collectors/agent", "configurations/a"]
        );

        // A crash now: the config is there, exactly; the heartbeats are not.
        let (_copy, crashed) = after_a_crash(&embedded).await;
        assert_eq!(
            value(&crashed, "configurations/a").await,
            Some(b"cfg a".to_vec())
        );
        assert_eq!(value(&crashed, "collectors/agent").await, None);
        drop(crashed);

        // An ordinary write takes the deferred ones with it, above their revisions.
        store
            .put("configurations/b", b"cfg b".to_vec())
            .await
            .expect("put");
        let b = store
            .get("configurations/b")
            .await
            .expect("get")
            .expect("b");
        assert!(b.revision > ring.revision);
        let (_copy, crashed) = after_a_crash(&embedded).await;
        assert_eq!(value(&crashed, "collectors/agent").await, Some(vec![3]));
        assert_eq!(
            value(&crashed, "configurations/b").await,
            Some(b"cfg b".to_vec())
        );
        assert_eq!(
            crashed.get("collectors/agent").await.expect("get"),
            Some(ring.clone())
        );
        drop(crashed);

        // DEFERRED_WRITES_MAX deferred writes in a row reach the file without an ordinary one.
        for beat in 0..DEFERRED_WRITES_MAX {
            store
                .put_if_revision_deferred(
                    "collectors/agent",
                    store
                        .get("collectors/agent")
                        .await
                        .expect("get")
                        .map(|v| v.revision),
                    beat.to_be_bytes().to_vec(),
                )
                .await
                .expect("deferred");
        }
        let (_copy, crashed) = after_a_crash(&embedded).await;
        assert_eq!(
            value(&crashed, "collectors/agent").await,
            Some((DEFERRED_WRITES_MAX - 1).to_be_bytes().to_vec())
        );
        drop(crashed);

        // A clean close writes what is deferred; revisions go on from there.
        store
            .cas_deferred("collectors/agent", |_| {
                Ok::<_, String>(Some(b"last".to_vec()))
            })
            .await
            .expect("cas");
        let last = store
            .get("collectors/agent")
            .await
            .expect("get")
            .expect("present");
        drop(watch);
        drop(store);
        drop(embedded);
        let store = open(dir.path()).await;
        assert_eq!(
            store.get("collectors/agent").await.expect("get"),
            Some(last.clone())
        );
        store
            .put("configurations/c", b"c".to_vec())
            .await
            .expect("put");
        let c = store
            .get("configurations/c")
            .await
            .expect("get")
            .expect("c");
        assert_eq!(c.revision, last.revision + 1);
    }

    #[tokio::test]
    async fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path()).await;
        let err = EmbeddedStore::open(dir.path().to_owned())
            .await
            .expect_err("locked");
        assert_eq!(
            err.to_string(),
            format!(
                "embedded KV store at {} is locked by another process",
                dir.path().display()
            )
        );
    }

    #[tokio::test]
    async fn unusable_directory_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = EmbeddedStore::open(file.join("kv"))
            .await
            .expect_err("bad dir");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[tokio::test]
    async fn failed_cas_does_not_bump_revision_or_notify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        store.put("k", b"1".to_vec()).await.expect("put");
        let mut watch = store.watch_prefix("").await.expect("watch");
        assert!(!store
            .put_if_revision("k", None, b"x".to_vec())
            .await
            .expect("cas"));
        store.put("k2", b"2".to_vec()).await.expect("put");
        assert_eq!(
            watch.recv().await,
            Some(WatchEvent::Put {
                key: "k2".into(),
                value: b"2".to_vec()
            })
        );
        assert_eq!(
            store
                .get("k2")
                .await
                .expect("get")
                .expect("present")
                .revision,
            2
        );
    }
}
