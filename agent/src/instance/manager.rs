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
}

/// Retries a failed instance every `restart_backoff` while its config is still wanted.
async fn retry(me: Arc<InstanceManager>, name: String) {
    loop {
        tokio::time::sleep(me.restart_backoff).await;
        let mut inner = me.inner.lock().await;
        let Some(cfg) = inner.failed.remove(&name) else {
            return;
        };
        match Instance::start(cfg.clone(), &me.shared).await {
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
            inst.stop(false).await;
        }
        match Instance::start(cfg.clone(), &self.shared).await {
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
    pub async fn delete(&self, name: &str, write_stale: bool) -> bool {
        let inst = {
            let mut inner = self.inner.lock().await;
            inner.failed.remove(name);
            inner.running.remove(name)
        };
        match inst {
            Some(i) => {
                i.stop(write_stale).await;
                true
            }
            None => false,
        }
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
        let all: Vec<Instance> = {
            let mut inner = self.inner.lock().await;
            inner.failed.clear();
            std::mem::take(&mut inner.running).into_values().collect()
        };
        let stops: Vec<_> = all.into_iter().map(|i| i.stop(write_stale)).collect();
        for s in stops {
            s.await;
        }
    }
}
