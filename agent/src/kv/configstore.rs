//! The config store: named instance configs (YAML) in any [`KvStore`] under a prefix
//! (default `configurations/`), encoded with [`codec`](super::codec), as the old agent's
//! `configstore.Remote` does.
//!
//! - Key: `<prefix><name>`; names may contain `/` (`team/a` → `configurations/team/a`).
//! - `put` is a CAS: "created" means the key did not exist.
//! - `put` refuses a config that declares a scrape `job_name` another config (different name)
//!   already declares, with the old agent's text. The old agent re-read every config on each PUT
//!   (docs/compat.md, *Config Management API*); here an index `job_name → config names` answers in O(jobs of this config). The
//!   index is built once from the store, updated by this store's own writes immediately, and by
//!   a watch on the prefix for writes from other agents.
//! - Values that do not decode are logged with their key and skipped everywhere (list, all,
//!   watch, index); they never stop a watcher.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::codec::{decode_config, encode_config};
use super::{CasError, CasOutcome, KvError, KvStore, Watch, WatchEvent};

/// The prefix the old agent uses for instance configs.
pub const DEFAULT_PREFIX: &str = "configurations/";

/// Errors from the config store.
#[derive(Debug, thiserror::Error)]
pub enum ConfigStoreError {
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The old agent's `NotExistError` text.
    #[error("configuration {name} does not exist")]
    NotExist { name: String },
    /// The old agent's `NotUniqueError` text.
    #[error("found multiple scrape configs in config store with job name {job:?}")]
    NotUnique { job: String, existing: String },
    #[error("config name must not be empty")]
    EmptyName,
    /// `If-Match` did not hold: the config changed (or appeared, or went away) meanwhile.
    #[error("configuration {name} was changed concurrently (its current hash is {})", current.as_deref().unwrap_or("none: it does not exist"))]
    PreconditionFailed {
        name: String,
        current: Option<String>,
    },
    #[error("failed to put config {name:?}: {source}")]
    Cas {
        name: String,
        #[source]
        source: CasError<std::convert::Infallible>,
    },
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

/// A change to a config, from [`ConfigStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigEvent {
    Upserted { name: String, yaml: String },
    Deleted { name: String },
}

/// `job_name → names of the configs declaring it`, and the reverse.
#[derive(Debug, Default)]
struct JobIndex {
    by_job: HashMap<String, BTreeSet<String>>,
    by_config: HashMap<String, Vec<String>>,
}

impl JobIndex {
    fn set(&mut self, name: &str, jobs: Vec<String>) {
        self.remove(name);
        for job in &jobs {
            self.by_job
                .entry(job.clone())
                .or_default()
                .insert(name.to_owned());
        }
        if !jobs.is_empty() {
            self.by_config.insert(name.to_owned(), jobs);
        }
    }

    fn remove(&mut self, name: &str) {
        let Some(jobs) = self.by_config.remove(name) else {
            return;
        };
        for job in jobs {
            if let Some(names) = self.by_job.get_mut(&job) {
                names.remove(name);
                if names.is_empty() {
                    self.by_job.remove(&job);
                }
            }
        }
    }

    /// The first job of `jobs` that a config other than `name` declares, with that config.
    fn conflict(&self, name: &str, jobs: &[String]) -> Option<(String, String)> {
        jobs.iter().find_map(|job| {
            self.by_job
                .get(job)?
                .iter()
                .find(|other| other.as_str() != name)
                .map(|other| (job.clone(), other.clone()))
        })
    }
}

#[derive(Debug)]
struct IndexState {
    index: Arc<std::sync::Mutex<JobIndex>>,
    /// Keeps the index current with other agents' writes; aborted with the store.
    follower: JoinHandle<()>,
}

impl Drop for IndexState {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Named configs over a [`KvStore`].
#[derive(Debug)]
pub struct ConfigStore {
    kv: Arc<dyn KvStore>,
    prefix: String,
    /// Built on the first `put`; the tokio mutex also serialises puts of this store, so the
    /// check-then-write of two local puts cannot interleave.
    index: tokio::sync::OnceCell<IndexState>,
    /// Names with a put in flight: their index entries are reservations, not lag.
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The hash of a stored config's YAML that the API serves as its `ETag` and in
/// `GET /agent/api/v1/configs?hashes=true`: hex MD5 of the YAML text (a change detector, not a
/// security measure).
pub fn content_hash(yaml: &str) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(yaml.as_bytes()))
}

/// A failed `If-Match`, carried through the CAS callback.
#[derive(Debug)]
struct Precondition {
    have: Option<String>,
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("precondition failed")
    }
}

/// `scrape_configs[*].job_name` of a config, read loosely so that the check does not depend on
/// the config types (a config that does not parse declares no jobs here; validation rejects it
/// elsewhere).
pub fn job_names(yaml: &str) -> Vec<String> {
    // Configs come from other writers too (etcdctl, old agents): no YAML bomb is expanded here.
    if crate::config::load::check_yaml_limits(yaml).is_err() {
        return Vec::new();
    }
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(yaml) else {
        return Vec::new();
    };
    let Some(scrape) = doc.get("scrape_configs").and_then(|v| v.as_sequence()) else {
        return Vec::new();
    };
    let mut jobs: Vec<String> = scrape
        .iter()
        .filter_map(|sc| {
            sc.get("job_name")
                .and_then(|j| j.as_str())
                .map(str::to_owned)
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

fn lock_index(m: &std::sync::Mutex<JobIndex>) -> std::sync::MutexGuard<'_, JobIndex> {
    // The index is only ever replaced entry by entry; a poisoned lock still holds usable data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConfigStore {
    /// A store under [`DEFAULT_PREFIX`].
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self::with_prefix(kv, DEFAULT_PREFIX)
    }

    pub fn with_prefix(kv: Arc<dyn KvStore>, prefix: impl Into<String>) -> Self {
        ConfigStore {
            kv,
            prefix: prefix.into(),
            index: tokio::sync::OnceCell::new(),
            pending: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// Decodes `value` of `key`, logging and dropping what does not decode.
    fn decode_logged(&self, key: &str, value: &[u8]) -> Option<String> {
        match decode_config(key, value) {
            Ok(yaml) => yaml,
            Err(err) => {
                tracing::warn!(store = %self.kv.describe(), key, error = %err, "skipping config that does not decode");
                None
            }
        }
    }

    /// Names of all stored configs, sorted. Deleted (zero-length) and undecodable values are
    /// left out.
    pub async fn list(&self) -> Result<Vec<String>, ConfigStoreError> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// The YAML of config `name`, `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<String>, ConfigStoreError> {
        let key = self.key(name);
        let Some(v) = self.kv.get(&key).await? else {
            return Ok(None);
        };
        Ok(self.decode_logged(&key, &v.value))
    }

    /// Every config with its YAML, sorted by name, in one list request.
    pub async fn all(&self) -> Result<Vec<(String, String)>, ConfigStoreError> {
        let entries = self.kv.list_values(&self.prefix).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| {
                let yaml = self.decode_logged(&key, &value)?;
                Some((self.name(&key)?.to_owned(), yaml))
            })
            .collect())
    }

    /// Stores `yaml` under `name` (CAS), refusing a scrape `job_name` another config declares.
    pub async fn put(&self, name: &str, yaml: &str) -> Result<PutOutcome, ConfigStoreError> {
        self.put_if(name, yaml, None).await
    }

    /// [`put`](Self::put) with a precondition: with `Some(hash)`, the write happens only if
    /// the stored config's [`content_hash`] is `hash` (`"*"`: the config must exist; `""`: it
    /// must not), checked inside the CAS so a concurrent change is never overwritten.
    ///
    /// Puts of different names run concurrently: the job names are reserved in the index under
    /// a short lock, the write happens without it, and a failed write gives the reservation back.
    pub async fn put_if(
        &self,
        name: &str,
        yaml: &str,
        if_match: Option<&str>,
    ) -> Result<PutOutcome, ConfigStoreError> {
        if name.is_empty() {
            return Err(ConfigStoreError::EmptyName);
        }
        let jobs = job_names(yaml);
        let index = self.index().await?;
        // The index follows the store through a watch, which may lag behind this store's own
        // writes (an older event re-applied after a newer local write). So a conflict is
        // confirmed against the store before a put is refused: the other config is read back
        // and the index corrected. This costs a read only when there is a conflict.
        let mut confirmed = 0;
        let previous = loop {
            let conflict = {
                let mut idx = lock_index(&index);
                match idx.conflict(name, &jobs) {
                    None => {
                        let previous = idx.by_config.get(name).cloned();
                        idx.set(name, jobs.clone());
                        self.pending
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(name.to_owned());
                        break previous;
                    }
                    Some(c) => c,
                }
            };
            let (job, existing) = conflict;
            let in_flight = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&existing);
            if confirmed >= 3 || in_flight {
                return Err(ConfigStoreError::NotUnique { job, existing });
            }
            confirmed += 1;
            let fresh = self.get(&existing).await?;
            let mut idx = lock_index(&index);
            match fresh {
                Some(y) => {
                    let theirs = job_names(&y);
                    if theirs.contains(&job) {
                        return Err(ConfigStoreError::NotUnique { job, existing });
                    }
                    idx.set(&existing, theirs);
                }
                None => idx.remove(&existing),
            }
        };
        let value = encode_config(yaml);
        let key = self.key(name);
        let result = self
            .kv
            .cas(&key, |current| {
                if let Some(want) = if_match {
                    let have = match current {
                        Some(v) => decode_config(&key, v)
                            .ok()
                            .flatten()
                            .map(|y| content_hash(&y)),
                        None => None,
                    };
                    let ok = match (want, &have) {
                        ("*", h) => h.is_some(),
                        ("", h) => h.is_none(),
                        (w, Some(h)) => w == h,
                        (_, None) => false,
                    };
                    if !ok {
                        return Err(Precondition { have });
                    }
                }
                Ok(Some(value.clone()))
            })
            .await;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        match result {
            Ok(outcome) => Ok(match outcome {
                CasOutcome::Created => PutOutcome::Created,
                CasOutcome::Updated | CasOutcome::Unchanged => PutOutcome::Updated,
            }),
            Err(e) => {
                let mut idx = lock_index(&index);
                match previous {
                    Some(jobs) => idx.set(name, jobs),
                    None => idx.remove(name),
                }
                drop(idx);
                Err(match e {
                    CasError::Callback(Precondition { have }) => {
                        ConfigStoreError::PreconditionFailed {
                            name: name.to_owned(),
                            current: have,
                        }
                    }
                    CasError::Kv(e) => ConfigStoreError::Kv(e),
                    CasError::TooManyConflicts { key, attempts } => ConfigStoreError::Cas {
                        name: name.to_owned(),
                        source: CasError::TooManyConflicts { key, attempts },
                    },
                })
            }
        }
    }

    /// The job index, built from the store on first use.
    async fn index(&self) -> Result<Arc<std::sync::Mutex<JobIndex>>, ConfigStoreError> {
        let state = self.index.get_or_try_init(|| self.build_index()).await?;
        Ok(Arc::clone(&state.index))
    }

    /// Deletes config `name`; [`ConfigStoreError::NotExist`] when there is none. With
    /// `if_match`, only when the stored config's [`content_hash`] is that hash: the hash is
    /// checked on a read, and the delete is conditional on the revision of that read (an etcd
    /// transaction, a single write transaction in the embedded store), so a change in between is
    /// seen, never deleted unseen.
    pub async fn delete_if(
        &self,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<(), ConfigStoreError> {
        let key = self.key(name);
        match if_match.filter(|w| *w != "*") {
            None => {
                if !self.kv.delete(&key).await? {
                    return Err(ConfigStoreError::NotExist {
                        name: name.to_owned(),
                    });
                }
            }
            Some(want) => self.delete_matching(name, &key, want).await?,
        }
        if let Some(state) = self.index.get() {
            lock_index(&state.index).remove(name);
        }
        Ok(())
    }

    /// The conditional part of [`delete_if`](Self::delete_if). A conflict (written between the
    /// read and the delete) is read again: the new value may still have the wanted hash (a put
    /// of the same YAML), and otherwise the precondition fails with the new hash.
    async fn delete_matching(
        &self,
        name: &str,
        key: &str,
        want: &str,
    ) -> Result<(), ConfigStoreError> {
        let attempts = self.kv.cas_retries().max(1);
        for _ in 0..attempts {
            let current = self.kv.get(key).await?;
            let have = current.as_ref().and_then(|v| {
                decode_config(key, &v.value)
                    .ok()
                    .flatten()
                    .map(|y| content_hash(&y))
            });
            match current {
                Some(current) if have.as_deref() == Some(want) => {
                    if self.kv.delete_if_revision(key, current.revision).await? {
                        return Ok(());
                    }
                }
                _ => {
                    return Err(ConfigStoreError::PreconditionFailed {
                        name: name.to_owned(),
                        current: have,
                    })
                }
            }
            tracing::debug!(key, store = %self.kv.describe(), "conditional delete conflict, retrying");
        }
        Err(ConfigStoreError::Cas {
            name: name.to_owned(),
            source: CasError::TooManyConflicts {
                key: key.to_owned(),
                attempts,
            },
        })
    }

    /// Deletes config `name`; [`ConfigStoreError::NotExist`] when there is none.
    pub async fn delete(&self, name: &str) -> Result<(), ConfigStoreError> {
        self.delete_if(name, None).await
    }

    /// Changes to configs from now on, deletes included. Undecodable values are logged and
    /// skipped; a zero-length value is reported as a delete.
    pub async fn watch(&self) -> Result<ConfigWatch, ConfigStoreError> {
        let watch = self.kv.watch_prefix(&self.prefix).await?;
        Ok(ConfigWatch {
            watch,
            prefix: self.prefix.clone(),
            store: self.kv.describe(),
        })
    }

    /// Builds the job index from the store and starts following the prefix. The watch starts
    /// before the listing: an event older than the listing may be re-applied after it, but the
    /// events after it follow in order, so the index converges on the store's state.
    async fn build_index(&self) -> Result<IndexState, ConfigStoreError> {
        let watch = self.watch().await?;
        let mut index = JobIndex::default();
        for (name, yaml) in self.all().await? {
            index.set(&name, job_names(&yaml));
        }
        let index = Arc::new(std::sync::Mutex::new(index));
        let follower = tokio::spawn(follow_index(watch, Arc::clone(&index)));
        Ok(IndexState { index, follower })
    }
}

async fn follow_index(mut watch: ConfigWatch, index: Arc<std::sync::Mutex<JobIndex>>) {
    while let Some(event) = watch.recv().await {
        let mut index = lock_index(&index);
        match event {
            ConfigEvent::Upserted { name, yaml } => index.set(&name, job_names(&yaml)),
            ConfigEvent::Deleted { name } => index.remove(&name),
        }
    }
}

/// A running config watch; dropping it stops it.
#[derive(Debug)]
pub struct ConfigWatch {
    watch: Watch,
    prefix: String,
    store: String,
}

impl ConfigWatch {
    /// The next change; `None` when the store has gone away.
    pub async fn recv(&mut self) -> Option<ConfigEvent> {
        loop {
            let event = self.watch.recv().await?;
            let Some(name) = event.key().strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let name = name.to_owned();
            match event {
                WatchEvent::Delete { .. } => return Some(ConfigEvent::Deleted { name }),
                WatchEvent::Put { key, value } => match decode_config(&key, &value) {
                    Ok(Some(yaml)) => return Some(ConfigEvent::Upserted { name, yaml }),
                    Ok(None) => return Some(ConfigEvent::Deleted { name }),
                    Err(err) => {
                        tracing::warn!(store = %self.store, key, error = %err, "skipping config change that does not decode");
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::{FaultyStore, Op};
    use crate::kv::InMemoryStore;
    use std::time::Duration;

    async fn next(w: &mut ConfigWatch) -> ConfigEvent {
        tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .expect("event in time")
            .expect("open")
    }

    fn store() -> ConfigStore {
        ConfigStore::new(Arc::new(InMemoryStore::new()))
    }

    fn cfg(jobs: &[&str]) -> String {
        let mut s = String::from("scrape_configs:\n");
        for j in jobs {
            s.push_str(&format!("- job_name: {j}\n  static_configs: []\n"));
        }
        s
    }

    proptest::proptest! {
        /// After any sequence of upserts and deletes, the index answers exactly as a scan of
        /// all configs (the old agent's O(all) check) would.
        #[test]
        fn index_matches_a_full_scan(
            ops in proptest::collection::vec(
                (0usize..5, proptest::option::of(proptest::collection::vec(0usize..6, 0..4))),
                0..40,
            ),
            probe_name in 0usize..5,
            probe_jobs in proptest::collection::vec(0usize..6, 0..4),
        ) {
            let mut index = JobIndex::default();
            let mut model: HashMap<String, Vec<String>> = HashMap::new();
            let job = |j: &usize| format!("job{j}");
            for (name, jobs) in ops {
                let name = format!("cfg{name}");
                match jobs {
                    Some(jobs) => {
                        let mut jobs: Vec<String> = jobs.iter().map(job).collect();
                        jobs.sort();
                        jobs.dedup();
                        index.set(&name, jobs.clone());
                        model.insert(name, jobs);
                    }
                    None => {
                        index.remove(&name);
                        model.remove(&name);
                    }
                }
            }
            let name = format!("cfg{probe_name}");
            let jobs: Vec<String> = probe_jobs.iter().map(job).collect();
            let scan_conflicts = jobs.iter().any(|j| {
                model.iter().any(|(other, theirs)| other != &name && theirs.contains(j))
            });
            proptest::prop_assert_eq!(index.conflict(&name, &jobs).is_some(), scan_conflicts);
            // No empty sets linger for removed jobs.
            proptest::prop_assert!(index.by_job.values().all(|names| !names.is_empty()));
        }
    }

    #[test]
    fn extracts_job_names_loosely() {
        assert_eq!(job_names(&cfg(&["b", "a", "b"])), vec!["a", "b"]);
        assert!(job_names("remote_write: []").is_empty());
        assert!(job_names(": not yaml [").is_empty());
        assert!(job_names("scrape_configs:\n- static_configs: []\n- job_name: 7\n").is_empty());
    }

    #[tokio::test]
    async fn if_match_guards_puts_and_deletes() {
        let s = store();
        let v1 = cfg(&["x"]);
        // "" = must not exist yet.
        assert_eq!(
            s.put_if("a", &v1, Some("")).await.unwrap(),
            PutOutcome::Created
        );
        let err = s.put_if("a", &v1, Some("")).await.unwrap_err();
        assert!(
            matches!(err, ConfigStoreError::PreconditionFailed { .. }),
            "{err}"
        );
        let h1 = content_hash(&v1);
        let v2 = cfg(&["x", "y"]);
        assert_eq!(
            s.put_if("a", &v2, Some(&h1)).await.unwrap(),
            PutOutcome::Updated
        );
        // The old hash is stale now: refused, and nothing overwritten.
        let err = s.put_if("a", &cfg(&["q"]), Some(&h1)).await.unwrap_err();
        assert!(
            matches!(err, ConfigStoreError::PreconditionFailed { current: Some(ref c), .. } if *c == content_hash(&v2))
        );
        assert_eq!(s.get("a").await.unwrap(), Some(v2.clone()));
        // A refused put gives its job reservation back: another config may take job "q".
        assert_eq!(s.put("b", &cfg(&["q"])).await.unwrap(), PutOutcome::Created);
        assert!(s.delete_if("a", Some(&h1)).await.is_err());
        s.delete_if("a", Some(&content_hash(&v2))).await.unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_change_between_the_read_and_the_delete_fails_the_precondition() {
        let theirs = cfg(&["theirs"]);
        // Another writer changes the config between the read and every conditional delete.
        let kv = FaultyStore::new(Arc::new(InMemoryStore::new()));
        let value = encode_config(&theirs);
        kv.before(Op::DeleteIfRevision, true, move |inner| {
            let value = value.clone();
            Box::pin(async move {
                inner
                    .put("configurations/a", value)
                    .await
                    .expect("their write");
            })
        });
        let s = ConfigStore::new(kv);
        let mine = cfg(&["mine"]);
        s.put("a", &mine).await.unwrap();
        let err = s
            .delete_if("a", Some(&content_hash(&mine)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConfigStoreError::PreconditionFailed { current: Some(ref c), .. } if *c == content_hash(&theirs)),
            "{err}"
        );
        // Their write survives: not deleted unseen.
        assert_eq!(s.get("a").await.unwrap(), Some(theirs));
    }

    /// DELETE with If-Match against a PUT with the same If-Match, racing on the embedded store:
    /// exactly one wins each round, and the outcome is the winner's (never "both succeeded and
    /// the update was deleted").
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_delete_if_match_and_put_if_match_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let kv = crate::kv::EmbeddedStore::open(dir.path().to_owned())
            .await
            .unwrap();
        let s = Arc::new(ConfigStore::new(Arc::new(kv)));
        let (mut puts, mut deletes) = (0, 0);
        for round in 0..60 {
            let v1 = cfg(&[&format!("v1-{round}")]);
            let v2 = cfg(&[&format!("v2-{round}")]);
            s.put("a", &v1).await.unwrap();
            let h1 = content_hash(&v1);
            let (sp, sd) = (Arc::clone(&s), Arc::clone(&s));
            let (hp, hd) = (h1.clone(), h1.clone());
            let v2c = v2.clone();
            let put = tokio::spawn(async move { sp.put_if("a", &v2c, Some(&hp)).await });
            let del = tokio::spawn(async move { sd.delete_if("a", Some(&hd)).await });
            let (put, del) = (put.await.unwrap(), del.await.unwrap());
            let now = s.get("a").await.unwrap();
            match (&put, &del) {
                (Ok(_), Err(ConfigStoreError::PreconditionFailed { .. })) => {
                    assert_eq!(now.as_deref(), Some(v2.as_str()), "round {round}");
                    puts += 1;
                }
                (Err(ConfigStoreError::PreconditionFailed { .. }), Ok(())) => {
                    assert_eq!(now, None, "round {round}");
                    deletes += 1;
                }
                _ => panic!("round {round}: put {put:?}, delete {del:?}, now {now:?}"),
            }
            if now.is_some() {
                s.delete("a").await.unwrap();
            }
        }
        assert_eq!(puts + deletes, 60);
    }

    #[tokio::test]
    async fn concurrent_puts_of_different_names_all_land() {
        let s = Arc::new(store());
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let s = Arc::clone(&s);
                tokio::spawn(
                    async move { s.put(&format!("c{i}"), &cfg(&[&format!("job{i}")])).await },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), PutOutcome::Created);
        }
        assert_eq!(s.list().await.unwrap().len(), 50);
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let s = store();
        assert_eq!(
            s.put("a", &cfg(&["x"])).await.expect("put"),
            PutOutcome::Created
        );
        assert_eq!(
            s.put("a", &cfg(&["x", "y"])).await.expect("put"),
            PutOutcome::Updated
        );
        assert_eq!(
            s.put("team/b", &cfg(&["z"])).await.expect("put"),
            PutOutcome::Created
        );
        assert_eq!(s.list().await.expect("list"), vec!["a", "team/b"]);
        assert_eq!(s.get("a").await.expect("get"), Some(cfg(&["x", "y"])));
        assert_eq!(s.get("nope").await.expect("get"), None);
        assert!(s
            .kv()
            .get("configurations/team/b")
            .await
            .expect("get")
            .is_some());
        s.delete("a").await.expect("delete");
        let err = s.delete("a").await.expect_err("gone");
        assert_eq!(err.to_string(), "configuration a does not exist");
        assert_eq!(
            s.all().await.expect("all"),
            vec![("team/b".to_owned(), cfg(&["z"]))]
        );
    }

    #[tokio::test]
    async fn job_names_must_be_unique_across_configs() {
        let s = store();
        s.put("a", &cfg(&["shared"])).await.expect("put");
        let err = s
            .put("b", &cfg(&["other", "shared"]))
            .await
            .expect_err("dup");
        assert_eq!(
            err.to_string(),
            "found multiple scrape configs in config store with job name \"shared\""
        );
        // The same config may keep its own job names.
        s.put("a", &cfg(&["shared", "more"]))
            .await
            .expect("update own");
        // Once a deletes it (by update or delete), b may take it.
        s.put("a", &cfg(&["more"])).await.expect("put");
        s.put("b", &cfg(&["shared"])).await.expect("now free");
        s.delete("b").await.expect("delete");
        s.put("c", &cfg(&["shared"])).await.expect("free again");
    }

    #[tokio::test]
    async fn index_sees_other_writers_and_preexisting_configs() {
        let kv: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        kv.put("configurations/old", encode_config(&cfg(&["old-job"])))
            .await
            .expect("put");
        let mine = ConfigStore::new(Arc::clone(&kv));
        let theirs = ConfigStore::new(Arc::clone(&kv));
        let err = mine.put("new", &cfg(&["old-job"])).await.expect_err("dup");
        assert!(matches!(err, ConfigStoreError::NotUnique { .. }), "{err}");

        // Another agent adds a job after our index exists: the follower must pick it up.
        theirs
            .put("remote", &cfg(&["remote-job"]))
            .await
            .expect("put");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match mine.put("mine", &cfg(&["remote-job"])).await {
                Err(ConfigStoreError::NotUnique { job, existing }) => {
                    assert_eq!((job.as_str(), existing.as_str()), ("remote-job", "remote"));
                    break;
                }
                Ok(_) => {
                    // The follower had not caught up yet; undo and retry.
                    mine.delete("mine").await.expect("delete");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "index never saw the remote put"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(other) => panic!("{other}"),
            }
        }
        // ...and their delete frees it.
        theirs.delete("remote").await.expect("delete");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while mine.put("mine", &cfg(&["remote-job"])).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "index never saw the remote delete"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn watch_reports_upserts_deletes_and_skips_corrupt_values() {
        let s = store();
        let mut watch = s.watch().await.expect("watch");
        s.put("team/a", "a: 1\n").await.expect("put");
        s.kv()
            .put("configurations/broken", b"not gzip".to_vec())
            .await
            .expect("put");
        s.kv()
            .put("configurations/emptied", Vec::new())
            .await
            .expect("put");
        s.delete("team/a").await.expect("delete");
        assert_eq!(
            next(&mut watch).await,
            ConfigEvent::Upserted {
                name: "team/a".into(),
                yaml: "a: 1\n".into()
            }
        );
        assert_eq!(
            next(&mut watch).await,
            ConfigEvent::Deleted {
                name: "emptied".into()
            }
        );
        assert_eq!(
            next(&mut watch).await,
            ConfigEvent::Deleted {
                name: "team/a".into()
            }
        );
        // Corrupt and zero-length values are not listed either.
        assert!(s.list().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn custom_prefix_and_empty_name() {
        let s = ConfigStore::with_prefix(Arc::new(InMemoryStore::new()), "cfg/");
        s.put("x", "a: 1\n").await.expect("put");
        assert!(s.kv().get("cfg/x").await.expect("get").is_some());
        assert!(matches!(
            s.put("", "a: 1\n").await,
            Err(ConfigStoreError::EmptyName)
        ));
    }
}
