//! Starts, updates and stops instances by config name. An instance that fails to start is
//! retried after `instance_restart_backoff` while its config is still wanted; a failure never
//! takes the agent down.
//!
//! Each config runs as its own instance (the old agent's `instance_mode: distinct`). The
//! default `shared` mode of the old agent merged configs with equal remote_write settings into
//! one instance; here `shared` is accepted and runs configs the same way as `distinct` (one
//! WAL per config), which is what its maintainers recommended for large stores
//! (grafana/agent#849, #398).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{dir_name, Instance, Shared};
use crate::config::InstanceConfig;
use crate::scrape::manager::TargetInfo;

#[derive(Debug)]
pub struct InstanceManager {
    shared: Shared,
    restart_backoff: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: BTreeMap<String, Instance>,
    /// Configs wanted but not running (start failed); retried.
    failed: BTreeMap<String, InstanceConfig>,
    /// Instances being stopped in the background (flushing remote_write for up to
    /// `remote_flush_deadline`). A config that comes back waits for its old stop to finish,
    /// since both would use the same WAL folder.
    stopping: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

/// Starts `cfg` unless another config's instance (running or still stopping) has the same WAL
/// folder: `a/b` and `a--b` both map to `a--b` (see [`dir_name`]), and two WAL writers in one
/// folder would corrupt each other. The second one fails to start (and is retried, so it runs
/// once the first is gone).
async fn start_unshared(
    inner: &Inner,
    cfg: InstanceConfig,
    shared: &Shared,
) -> Result<Instance, super::InstanceError> {
    let dir = dir_name(&cfg.name);
    let other = inner
        .running
        .keys()
        .chain(
            inner
                .stopping
                .iter()
                .filter(|(_, h)| !h.is_finished())
                .map(|(n, _)| n),
        )
        .find(|n| **n != cfg.name && dir_name(n) == dir);
    if let Some(other) = other {
        return Err(super::InstanceError::Wal {
            name: cfg.name.clone(),
            dir: shared.wal_directory.join(&dir).join("wal"),
            message: format!(
                "the WAL folder is in use by config {other:?} (config names map to folders with `/` as `--`); rename one of them"
            ),
        });
    }
    Instance::start(cfg, shared).await
}

/// Retries a failed instance every `restart_backoff` while its config is still wanted.
async fn retry(me: Arc<InstanceManager>, name: String) {
    loop {
        tokio::time::sleep(me.restart_backoff).await;
        let mut inner = me.inner.lock().await;
        let Some(cfg) = inner.failed.remove(&name) else {
            return;
        };
        match start_unshared(&inner, cfg.clone(), &me.shared).await {
            Ok(inst) => {
                tracing::info!(instance = %name, "instance started after a retry");
                inner.running.insert(name, inst);
                return;
            }
            Err(e) => {
                tracing::error!(instance = %name, error = %e, retry_in = ?me.restart_backoff, "instance failed to start");
                inner.failed.insert(name.clone(), cfg);
            }
        }
    }
}

impl InstanceManager {
    pub fn new(shared: Shared, restart_backoff: Duration) -> Arc<Self> {
        Arc::new(InstanceManager {
            shared,
            restart_backoff,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// What every instance shares (WAL directory, metrics).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Runs `f` unless a config whose folder is `dir` (a [`dir_name`]) runs or is retried,
    /// holding off every start, update and retry until `f` finishes. The WAL cleaner removes
    /// a folder this way, so a config assigned back to this agent at that moment starts on a
    /// fresh WAL rather than on a half-removed one. `None` when it runs.
    pub async fn unless_running<F, Fut, R>(&self, dir: &str, f: F) -> Option<R>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = R>,
    {
        let inner = self.inner.lock().await;
        let busy = inner
            .running
            .keys()
            .chain(inner.failed.keys())
            .chain(inner.stopping.keys())
            .any(|n| dir_name(n) == dir);
        if busy {
            return None;
        }
        let r = f().await;
        drop(inner);
        Some(r)
    }

    /// Runs `cfg`: starts it, updates it in place, or restarts it when it cannot be updated.
    /// An unchanged config is left alone.
    pub async fn apply(self: &Arc<Self>, cfg: InstanceConfig) {
        let name = cfg.name.clone();
        // A stop of this name still flushing: let it finish first (same WAL folder).
        let pending = self.inner.lock().await.stopping.remove(&name);
        if let Some(h) = pending {
            let _ = h.await;
        }
        let mut inner = self.inner.lock().await;
        inner.failed.remove(&name);
        if let Some(mut inst) = inner.running.remove(&name) {
            if inst.config() == &cfg {
                inner.running.insert(name, inst);
                return;
            }
            if inst.update(cfg.clone()).await {
                tracing::info!(instance = %name, "instance updated in place");
                inner.running.insert(name, inst);
                return;
            }
            tracing::info!(instance = %name, "instance restarting for a changed config");
            // Stop without holding the manager: other configs keep being applied meanwhile.
            drop(inner);
            inst.stop(false).await;
            inner = self.inner.lock().await;
        }
        match start_unshared(&inner, cfg.clone(), &self.shared).await {
            Ok(inst) => {
                inner.running.insert(name, inst);
            }
            Err(e) => {
                tracing::error!(instance = %name, error = %e, retry_in = ?self.restart_backoff, "instance failed to start");
                inner.failed.insert(name.clone(), cfg);
                tokio::spawn(retry(Arc::clone(self), name));
            }
        }
    }

    /// Stops `name` if it runs. `write_stale` only when the config was deleted (not moved).
    /// Scraping stops at once; the remote_write flush (up to `remote_flush_deadline`) goes on
    /// in the background, so one unreachable receiver does not hold up a reshard.
    pub async fn delete(&self, name: &str, write_stale: bool) -> bool {
        let mut inner = self.inner.lock().await;
        inner.failed.remove(name);
        let Some(inst) = inner.running.remove(name) else {
            return false;
        };
        let previous = inner.stopping.remove(name);
        let handle = tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            inst.stop(write_stale).await;
        });
        inner.stopping.insert(name.to_owned(), handle);
        inner.stopping.retain(|_, h| !h.is_finished());
        true
    }

    /// Names of the configs this agent runs (or retries), sorted.
    pub async fn names(&self) -> Vec<String> {
        let inner = self.inner.lock().await;
        let mut v: Vec<String> = inner
            .running
            .keys()
            .chain(inner.failed.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub async fn is_running(&self, name: &str) -> bool {
        let inner = self.inner.lock().await;
        inner.running.contains_key(name) || inner.failed.contains_key(name)
    }

    pub async fn targets(&self) -> Vec<TargetInfo> {
        let inner = self.inner.lock().await;
        let mut all: Vec<TargetInfo> = inner.running.values().flat_map(|i| i.targets()).collect();
        crate::scrape::manager::sort_targets(&mut all);
        all
    }

    /// Stops everything (shutdown).
    pub async fn stop_all(&self, write_stale: bool) {
        let (all, pending): (Vec<Instance>, Vec<tokio::task::JoinHandle<()>>) = {
            let mut inner = self.inner.lock().await;
            inner.failed.clear();
            (
                std::mem::take(&mut inner.running).into_values().collect(),
                std::mem::take(&mut inner.stopping).into_values().collect(),
            )
        };
        // Concurrently: each stop may wait up to its remote_flush_deadline.
        let stops: Vec<_> = all
            .into_iter()
            .map(|i| tokio::spawn(i.stop(write_stale)))
            .collect();
        for h in stops.into_iter().chain(pending) {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> InstanceConfig {
        // A receiver that refuses connections: the flush on stop runs into its deadline.
        let yaml = "scrape_configs:\n  - job_name: j\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:9']\nremote_write:\n  - url: http://127.0.0.1:9/push\nremote_flush_deadline: 2s\n";
        crate::config::load::parse_instance_named(
            yaml,
            Some(name),
            &crate::config::GlobalConfig::default(),
        )
        .unwrap()
        .1
    }

    /// `a/b` and `a--b` map to the same WAL folder: only one runs at a time, the other is
    /// retried and starts once the first is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_configs_never_share_a_wal_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let shared = Shared::new(dir.path(), "t", &mut registry);
        let m = InstanceManager::new(shared, Duration::from_millis(200));
        m.apply(config("a/b")).await;
        m.apply(config("a--b")).await;
        let running = |m: &Arc<InstanceManager>| {
            let m = Arc::clone(m);
            async move {
                m.inner
                    .lock()
                    .await
                    .running
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(running(&m).await, ["a/b"]);
        // Still wanted: it is retried.
        assert!(m.is_running("a--b").await);
        assert!(m.delete("a/b", false).await);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running(&m).await != ["a--b"] {
            assert!(std::time::Instant::now() < deadline, "a--b never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        m.stop_all(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_flushes_in_the_background_and_a_comeback_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let shared = Shared::new(dir.path(), "t", &mut registry);
        let m = InstanceManager::new(shared, Duration::from_secs(1));
        m.apply(config("a")).await;
        m.apply(config("b")).await;
        // Let a scrape (of a closed port: up 0) reach the WAL so there is something to flush.
        tokio::time::sleep(Duration::from_millis(600)).await;

        let t = std::time::Instant::now();
        assert!(m.delete("a", false).await);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "delete waited for the flush: {:?}",
            t.elapsed()
        );
        assert_eq!(m.names().await, ["b"]);

        // The same config again starts only after the old instance let go of its WAL.
        m.apply(config("a")).await;
        assert!(m.is_running("a").await);
        let t = std::time::Instant::now();
        m.stop_all(false).await;
        // Both stops flush concurrently: about one deadline, not two.
        assert!(
            t.elapsed() < Duration::from_millis(3500),
            "stop_all took {:?}",
            t.elapsed()
        );
        assert!(m.names().await.is_empty());
    }
}
