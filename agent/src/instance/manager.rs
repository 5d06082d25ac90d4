//! Starts, updates and stops instances. An instance that fails to start is retried after
//! `instance_restart_backoff` while it is still wanted; a failure never takes the agent down.
//!
//! Callers speak in configs (apply, delete by config name); [`Groups`] maps them onto
//! instances according to `instance_mode` (see [`super::group`]): in `distinct` mode each
//! config is its own instance, named by the config; in `shared` mode (the default, as in the
//! old agent) configs that differ only in name and scrape_configs run as one instance named by
//! their group hash. A member added, changed or removed updates its group instance's scrape
//! jobs in place (same WAL, same remote_write queues); the last member removed stops it.
//! [`InstanceManager::names`] lists config names in both modes, as the old agent's
//! `/agent/api/v1/metrics/instances` did (`ListConfigs`); the WAL folder, the targets'
//! `instance` field and the metric label use the instance name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::group::{Action, GroupError, Groups};
use super::{dir_name, Instance, Shared};
use crate::config::agent::InstanceMode;
use crate::config::InstanceConfig;
use crate::scrape::manager::TargetInfo;

/// The metric label naming an instance: `instance_group_name` for a shared group,
/// `instance_name` for a distinct config (the old agent's labels).
pub fn metric_label(mode: InstanceMode) -> &'static str {
    match mode {
        InstanceMode::Shared => "instance_group_name",
        InstanceMode::Distinct => "instance_name",
    }
}

#[derive(Debug)]
pub struct InstanceManager {
    shared: Shared,
    restart_backoff: std::sync::Mutex<Duration>,
    /// Config membership. Held for a whole membership change (including the instance starts
    /// and updates it causes), so changes to one group apply in the order they were made.
    groups: Mutex<Groups>,
    /// The member config names, updated with every membership change, so that listing them
    /// (API, reshard) never waits behind an instance start or a restart's flush.
    members: std::sync::RwLock<std::collections::BTreeSet<String>>,
    inner: Mutex<Inner>,
}

/// Instances by instance name.
#[derive(Debug, Default)]
struct Inner {
    running: BTreeMap<String, Instance>,
    /// Instances wanted but not running (start failed); retried. With the metric label.
    failed: BTreeMap<String, (InstanceConfig, &'static str)>,
    /// Instances being stopped in the background (flushing remote_write for up to
    /// `remote_flush_deadline`). A config that comes back waits for its old stop to finish,
    /// since both would use the same WAL folder.
    stopping: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

/// Starts `cfg` unless another config's instance (running or still stopping) has the same WAL
/// folder: `a/b` and `a--b` both map to `a--b` (see [`dir_name`]), and two WAL writers in one
/// folder would corrupt each other. The second one fails to start (and is retried, so it runs
/// once the first is gone).
async fn start_checked(
    inner: &Inner,
    cfg: InstanceConfig,
    shared: &Shared,
    label: &'static str,
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
    Instance::start(cfg, shared, label).await
}

/// Retries a failed instance every `restart_backoff` while its config is still wanted.
async fn retry(me: Arc<InstanceManager>, name: String) {
    loop {
        let backoff = me.restart_backoff();
        tokio::time::sleep(backoff).await;
        let mut inner = me.inner.lock().await;
        let Some((cfg, label)) = inner.failed.remove(&name) else {
            return;
        };
        match start_checked(&inner, cfg.clone(), &me.shared, label).await {
            Ok(inst) => {
                tracing::info!(instance = %name, "instance started after a retry");
                inner.running.insert(name, inst);
                return;
            }
            Err(e) => {
                tracing::error!(instance = %name, error = %e, retry_in = ?backoff, "instance failed to start");
                inner.failed.insert(name.clone(), (cfg, label));
            }
        }
    }
}

impl InstanceManager {
    pub fn new(shared: Shared, restart_backoff: Duration, mode: InstanceMode) -> Arc<Self> {
        Arc::new(InstanceManager {
            shared,
            restart_backoff: std::sync::Mutex::new(restart_backoff),
            groups: Mutex::new(Groups::new(mode)),
            members: std::sync::RwLock::new(Default::default()),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn publish_members(&self, groups: &Groups) {
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            groups.config_names().into_iter().collect();
    }

    fn restart_backoff(&self) -> Duration {
        *self
            .restart_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `instance_restart_backoff` for the next retries (config reload).
    pub fn set_restart_backoff(&self, d: Duration) {
        *self
            .restart_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = d;
    }

    pub async fn mode(&self) -> InstanceMode {
        self.groups.lock().await.mode()
    }

    /// Switches `instance_mode` (config reload): every config is regrouped, instances no longer
    /// wanted stop (no staleness markers: the series continue in the new instances), the new
    /// ones start. Returns the configs that could not be placed (job names clashing within a
    /// new group); they no longer run and are logged.
    pub async fn set_mode(self: &Arc<Self>, mode: InstanceMode) -> Vec<GroupError> {
        let mut groups = self.groups.lock().await;
        if groups.mode() == mode {
            return Vec::new();
        }
        let (actions, rejected) = groups.set_mode(mode);
        for e in &rejected {
            tracing::error!(error = %e, "config dropped while regrouping for the new instance_mode");
        }
        // Stops first: they only stop scraping here (the flush goes on in the background).
        let (stops, runs): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Stop(_)));
        for a in stops.into_iter().chain(runs) {
            self.execute(a, false, metric_label(mode)).await;
        }
        self.publish_members(&groups);
        rejected
    }

    async fn execute(self: &Arc<Self>, action: Action, write_stale: bool, label: &'static str) {
        match action {
            Action::Run(cfg) => self.run_instance(cfg, label).await,
            Action::Stop(name) => {
                self.stop_instance(&name, write_stale).await;
            }
        }
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

    /// Runs the config `cfg` (adds it to its group, or replaces its previous version). The
    /// instance it belongs to is started, updated in place, or restarted when it cannot be
    /// updated; an unchanged instance is left alone. In shared mode a job name already used by
    /// another member of the group is refused and nothing changes.
    pub async fn apply(self: &Arc<Self>, cfg: InstanceConfig) -> Result<(), GroupError> {
        let mut groups = self.groups.lock().await;
        let label = metric_label(groups.mode());
        let name = cfg.name.clone();
        let actions = groups.apply(cfg)?;
        if let Some(i) = groups.instance_of(&name).filter(|i| *i != name) {
            tracing::debug!(config = %name, instance = %i, "config runs in a shared instance");
        }
        for a in actions {
            // A config that moved to another group: its series continue there.
            self.execute(a, false, label).await;
        }
        // Listed once its instance runs (or is retried), as before grouping.
        self.publish_members(&groups);
        drop(groups);
        Ok(())
    }

    /// Starts, updates or restarts the instance `cfg.name`.
    async fn run_instance(self: &Arc<Self>, cfg: InstanceConfig, label: &'static str) {
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
        match start_checked(&inner, cfg.clone(), &self.shared, label).await {
            Ok(inst) => {
                inner.running.insert(name, inst);
            }
            Err(e) => {
                tracing::error!(instance = %name, error = %e, retry_in = ?self.restart_backoff(), "instance failed to start");
                inner.failed.insert(name.clone(), (cfg, label));
                tokio::spawn(retry(Arc::clone(self), name));
            }
        }
    }

    /// Removes the config `name`: its instance stops when it was the last member, otherwise
    /// the group instance drops its jobs. `write_stale` only when the config was deleted (not
    /// moved). `false` when the config was not running here.
    pub async fn delete(self: &Arc<Self>, name: &str, write_stale: bool) -> bool {
        let mut groups = self.groups.lock().await;
        let label = metric_label(groups.mode());
        let Some(action) = groups.remove(name) else {
            return false;
        };
        self.publish_members(&groups);
        self.execute(action, write_stale, label).await;
        drop(groups);
        true
    }

    /// Stops the instance `name` if it runs. Scraping stops at once; the remote_write flush
    /// (up to `remote_flush_deadline`) goes on in the background, so one unreachable receiver
    /// does not hold up a reshard.
    async fn stop_instance(&self, name: &str, write_stale: bool) -> bool {
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

    /// Names of the configs this agent runs (or retries), sorted, in both modes.
    pub async fn names(&self) -> Vec<String> {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Names of the instances this agent runs (or retries), sorted: config names in distinct
    /// mode, group hashes in shared mode. Their WAL folders are `dir_name(name)`.
    pub async fn instance_names(&self) -> Vec<String> {
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

    /// Whether the config `name` runs (or is retried) here.
    pub async fn is_running(&self, name: &str) -> bool {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    pub async fn targets(&self) -> Vec<TargetInfo> {
        let inner = self.inner.lock().await;
        let mut all: Vec<TargetInfo> = inner.running.values().flat_map(|i| i.targets()).collect();
        crate::scrape::manager::sort_targets(&mut all);
        all
    }

    /// Stops everything (shutdown).
    pub async fn stop_all(&self, write_stale: bool) {
        let mut groups = self.groups.lock().await;
        let mode = groups.mode();
        *groups = Groups::new(mode);
        self.publish_members(&groups);
        drop(groups);
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
    use crate::clock::Clock;

    fn config(name: &str) -> InstanceConfig {
        config_with_job(name, "j")
    }

    fn config_with_job(name: &str, job: &str) -> InstanceConfig {
        // A receiver that refuses connections: the flush on stop runs into its deadline.
        let yaml = &format!("scrape_configs:\n  - job_name: {job}\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:9']\nremote_write:\n  - url: http://127.0.0.1:9/push\nremote_flush_deadline: 2s\n");
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
        let shared = Shared::new(dir.path(), "t", &mut registry, Clock::system());
        let m = InstanceManager::new(shared, Duration::from_millis(200), InstanceMode::Distinct);
        m.apply(config("a/b")).await.unwrap();
        m.apply(config("a--b")).await.unwrap();
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
        let shared = Shared::new(dir.path(), "t", &mut registry, Clock::system());
        let m = InstanceManager::new(shared, Duration::from_secs(1), InstanceMode::Distinct);
        m.apply(config("a")).await.unwrap();
        m.apply(config("b")).await.unwrap();
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
        m.apply(config("a")).await.unwrap();
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

    fn jobs_by_instance(targets: &[TargetInfo]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = targets
            .iter()
            .map(|t| (t.instance.clone(), t.target_group.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Targets appear once discovery delivered them: poll for up to 3 s.
    async fn wait_jobs(m: &InstanceManager, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(i, j)| (i.to_string(), j.to_string()))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let got = jobs_by_instance(&m.targets().await);
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "targets by instance: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_mode_runs_one_instance_per_group_and_updates_it_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let shared = Shared::new(dir.path(), "t", &mut registry, Clock::system());
        let m = InstanceManager::new(shared, Duration::from_secs(1), InstanceMode::Shared);
        let a = config_with_job("a", "ja");
        let group = super::super::group::group_hash(&a);
        m.apply(a).await.unwrap();
        m.apply(config_with_job("b", "jb")).await.unwrap();
        assert_eq!(m.names().await, ["a", "b"]);
        assert_eq!(m.instance_names().await, std::slice::from_ref(&group));
        assert!(dir.path().join(&group).join("wal").is_dir());
        wait_jobs(&m, &[(&group, "ja"), (&group, "jb")]).await;
        let active = format!("agent_wal_storage_active_series{{instance_group_name=\"{group}\"}}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(&active), "no {active} in\n{text}");

        // A job name another member uses is refused; nothing changes.
        assert!(m.apply(config_with_job("c", "ja")).await.is_err());
        assert_eq!(m.names().await, ["a", "b"]);

        // Removing a member drops its jobs from the same instance (no restart: same WAL).
        assert!(m.delete("a", true).await);
        assert_eq!(m.instance_names().await, std::slice::from_ref(&group));
        wait_jobs(&m, &[(&group, "jb")]).await;
        // The last member stops the instance.
        assert!(m.delete("b", true).await);
        assert!(!m.delete("b", true).await);
        assert!(m.instance_names().await.is_empty());
        wait_jobs(&m, &[]).await;

        // Switching to distinct regroups: one instance per config, named by it.
        m.apply(config_with_job("a", "ja")).await.unwrap();
        m.apply(config_with_job("b", "jb")).await.unwrap();
        assert!(m.set_mode(InstanceMode::Distinct).await.is_empty());
        assert_eq!(m.instance_names().await, ["a", "b"]);
        wait_jobs(&m, &[("a", "ja"), ("b", "jb")]).await;
        m.stop_all(false).await;
    }
}
