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
//! redb takes an exclusive `flock` on the file; a second process (or a second open in this
//! process) fails with [`KvError::EmbeddedLocked`] instead of corrupting the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::local::{delegate_kv_store, expect_holds, Backend, LocalStore, WriteOp};
use super::{KvError, Versioned};

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
        let txn = self.db.begin_read().map_err(|e| self.err("list", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("list", e))?;
        let revision = meta
            .get(REVISION)
            .map_err(|e| self.err("list", e))?
            .map_or(0, |g| g.value());
        let table = txn.open_table(KV).map_err(|e| self.err("list", e))?;
        let mut entries = Vec::new();
        for item in table.range(prefix..).map_err(|e| self.err("list", e))? {
            let (k, v) = item.map_err(|e| self.err("list", e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (rev, value) = v.value();
            entries.push((
                key.to_owned(),
                Versioned {
                    value: if values { value.to_vec() } else { Vec::new() },
                    revision: rev,
                },
            ));
        }
        Ok((revision, entries))
    }

    fn write(&self, op: &WriteOp<'_>) -> Result<Option<u64>, KvError> {
        let txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        let applied = {
            let mut table = txn.open_table(KV).map_err(|e| self.err("write", e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            let revision = meta
                .get(REVISION)
                .map_err(|e| self.err("write", e))?
                .map_or(0, |g| g.value())
                + 1;
            let applied = match *op {
                WriteOp::Put { key, value, expect } => {
                    let current = table
                        .get(key)
                        .map_err(|e| self.err("write", e))?
                        .map(|g| g.value().0);
                    if expect_holds(expect, current) {
                        table
                            .insert(key, (revision, value))
                            .map_err(|e| self.err("write", e))?;
                        true
                    } else {
                        false
                    }
                }
                WriteOp::Delete { key, expect } => {
                    let current = table
                        .get(key)
                        .map_err(|e| self.err("delete", e))?
                        .map(|g| g.value().0);
                    // Checked and removed in one write transaction: nothing can come between.
                    if current.is_some() && expect_holds(expect, current) {
                        table
                            .remove(key)
                            .map_err(|e| self.err("delete", e))?
                            .is_some()
                    } else {
                        false
                    }
                }
            };
            if applied {
                meta.insert(REVISION, revision)
                    .map_err(|e| self.err("write", e))?;
            }
            applied.then_some(revision)
        };
        if applied.is_some() {
            txn.commit().map_err(|e| self.err("commit", e))?;
        } else {
            txn.abort().map_err(|e| self.err("write", e))?;
        }
        Ok(applied)
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
