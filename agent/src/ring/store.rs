//! Reading and changing the ring in the KV store: the one place that turns the bytes under
//! `<ring_prefix>agent` into a [`Desc`] and writes them back through CAS.
//!
//! Every write is a read-modify-write of the whole value (that is the wire contract with the old
//! agent, which does the same), but callers only ever touch their own entry, or remove entries
//! they re-checked on the fresh value: a CAS conflict re-runs the change on the value just read,
//! so a concurrent writer's entries are never overwritten with a stale copy.

use std::sync::Arc;

use crate::kv::{CasError, CasOutcome, KvError, KvStore};

use super::model::Desc;
use super::{codec, Error};

/// The ring key's last segment (the old agent's `agentKey`).
pub const RING_KEY_NAME: &str = "agent";

/// `<ring_prefix>agent`, e.g. `collectors/agent`. Like dskit's prefix client the prefix is
/// prepended as is (no `/` is added).
pub fn ring_key(ring_prefix: &str) -> String {
    format!("{ring_prefix}{RING_KEY_NAME}")
}

/// Errors reading or writing the ring; each names the store and the key.
#[derive(Debug, thiserror::Error)]
pub enum RingStoreError {
    #[error("{store}: reading ring key {key:?}: {source}")]
    Read {
        store: String,
        key: String,
        #[source]
        source: KvError,
    },
    #[error("{store}: ring key {key:?} holds an unreadable value: {source}")]
    Decode {
        store: String,
        key: String,
        #[source]
        source: Error,
    },
    #[error("{store}: {action} on ring key {key:?} failed: {source}")]
    Cas {
        store: String,
        key: String,
        action: &'static str,
        #[source]
        source: CasError<Error>,
    },
    #[error("{store}: watching ring key {key:?}: {source}")]
    Watch {
        store: String,
        key: String,
        #[source]
        source: KvError,
    },
}

/// Decodes a stored ring value. A zero-length value is an empty ring: the old codec treats it
/// as "deleted", and nothing would be lost by starting over from it.
pub fn decode_value(bytes: &[u8]) -> Result<Desc, Error> {
    if bytes.is_empty() {
        Ok(Desc::default())
    } else {
        codec::decode(bytes)
    }
}

/// The current ring; an absent key is an empty ring.
pub async fn read_ring(store: &(dyn KvStore + 'static), key: &str) -> Result<Desc, RingStoreError> {
    let value = store
        .get(key)
        .await
        .map_err(|source| RingStoreError::Read {
            store: store.describe(),
            key: key.to_owned(),
            source,
        })?;
    match value {
        None => Ok(Desc::default()),
        Some(v) => decode_value(&v.value).map_err(|source| RingStoreError::Decode {
            store: store.describe(),
            key: key.to_owned(),
            source,
        }),
    }
}

/// CAS read-modify-write of the ring. `f` gets the freshly read ring (empty when absent) and
/// returns `true` to write it back; on a conflict it is called again with the new value.
/// `action` names the change in errors ("heartbeat", "forget agent-1").
pub async fn modify_ring<F>(
    store: &(dyn KvStore + 'static),
    key: &str,
    action: &'static str,
    f: F,
) -> Result<CasOutcome, RingStoreError>
where
    F: FnMut(&mut Desc) -> bool,
{
    modify_ring_with(store, key, action, false, f).await
}

/// [`modify_ring`] for a heartbeat: the store may write it to disk later (see
/// `KvStore::put_if_revision_deferred`), since the next heartbeat replaces it and an agent
/// registers again when it starts. Joins, state changes, leaves and forgets use
/// [`modify_ring`].
pub async fn modify_ring_deferred<F>(
    store: &(dyn KvStore + 'static),
    key: &str,
    action: &'static str,
    f: F,
) -> Result<CasOutcome, RingStoreError>
where
    F: FnMut(&mut Desc) -> bool,
{
    modify_ring_with(store, key, action, true, f).await
}

async fn modify_ring_with<F>(
    store: &(dyn KvStore + 'static),
    key: &str,
    action: &'static str,
    deferred: bool,
    mut f: F,
) -> Result<CasOutcome, RingStoreError>
where
    F: FnMut(&mut Desc) -> bool,
{
    let update = |current: Option<&[u8]>| -> Result<Option<Vec<u8>>, Error> {
        let mut desc = match current {
            None => Desc::default(),
            Some(bytes) => decode_value(bytes)?,
        };
        if !f(&mut desc) {
            return Ok(None);
        }
        codec::encode(&desc).map(Some)
    };
    let outcome = if deferred {
        store.cas_deferred(key, update).await
    } else {
        store.cas(key, update).await
    };
    outcome.map_err(|source| RingStoreError::Cas {
        store: store.describe(),
        key: key.to_owned(),
        action,
        source,
    })
}

/// Removes member `id` from the ring (the Forget button, `agentctl ring forget`). `Ok(true)`
/// when it was there, `Ok(false)` when it was already gone (nothing is written then).
pub async fn forget(
    store: &Arc<dyn KvStore>,
    ring_key: &str,
    id: &str,
) -> Result<bool, RingStoreError> {
    let mut removed = false;
    modify_ring(store.as_ref(), ring_key, "forget", |desc| {
        // Reset on every attempt: only the attempt that wrote counts.
        removed = desc.ingesters.remove(id).is_some();
        removed
    })
    .await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::InMemoryStore;
    use crate::ring::model::{InstanceDesc, InstanceState};

    fn member(addr: &str) -> InstanceDesc {
        InstanceDesc {
            addr: addr.to_owned(),
            timestamp: 1,
            state: InstanceState::Active as i32,
            tokens: vec![1, 2],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn forget_removes_only_the_member() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let key = ring_key("collectors/");
        assert_eq!(key, "collectors/agent");
        assert!(!forget(&store, &key, "a").await.expect("forget on empty"));
        assert_eq!(store.get(&key).await.expect("get"), None, "nothing written");
        modify_ring(store.as_ref(), &key, "seed", |d| {
            d.ingesters.insert("a".into(), member("1:1"));
            d.ingesters.insert("b".into(), member("2:2"));
            true
        })
        .await
        .expect("seed");
        assert!(forget(&store, &key, "a").await.expect("forget"));
        let ring = read_ring(store.as_ref(), &key).await.expect("read");
        assert_eq!(ring.ingesters.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(!forget(&store, &key, "a").await.expect("again"));
    }

    #[tokio::test]
    async fn unreadable_value_is_an_error_naming_store_and_key() {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        store
            .put("collectors/agent", b"\xff\xff\xff\xff".to_vec())
            .await
            .expect("put");
        let err = read_ring(store.as_ref(), "collectors/agent")
            .await
            .expect_err("garbage")
            .to_string();
        assert!(err.contains("in-memory KV store"), "{err}");
        assert!(err.contains("\"collectors/agent\""), "{err}");
        let err = forget(&store, "collectors/agent", "x")
            .await
            .expect_err("garbage")
            .to_string();
        assert!(err.contains("forget"), "{err}");
        // A zero-length value is an empty ring.
        store
            .put("collectors/agent", Vec::new())
            .await
            .expect("put");
        assert_eq!(
            read_ring(store.as_ref(), "collectors/agent")
                .await
                .expect("empty"),
            Desc::default()
        );
    }
}
