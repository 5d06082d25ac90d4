//! Starts, updates and stops instances, without ever making one config wait for another.
//!
//! Callers speak in configs (apply, delete by config name); [`Groups`] maps them onto
//! instances according to `instance_mode` (see [`super::group`]): in `distinct` mode each
//! config is its own instance, named by the config; in `shared` mode (the default, as in the
//! old agent) configs that differ only in name and scrape_configs run as one instance named by
//! their group hash. [`InstanceManager::names`] lists config names in both modes, as the old
//! agent's `/agent/api/v1/metrics/instances` did; the WAL folder, the targets' `instance` field
//! and the metric label use the instance name.
//!
//! # Tasks
//!
//! ```text
//! callers ──Command──► manager task ──desired state (watch)──► one worker task per instance
//!    ▲                  owns Groups,                             owns its Instance: opens and
//!    └──── reply ────── the workers, the                        replays the WAL, updates,
//!                       blocked and the                          restarts, retries, stops
//!                       reserved folders ◄──Attempted/Stopped─── (flushing remote_write)
//! ```
//!
//! The manager task only decides: a command changes the membership and sets the desired state
//! of the instances it touches, and the answer goes back at once. Every slow step (replaying a
//! large WAL, stopping scrape loops, flushing remote_write for up to `remote_flush_deadline`)
//! runs in the instance's own worker, which converges on the latest desired state (a newer
//! one replaces an older one not yet acted on). So a WAL replaying for minutes delays its own
//! instance only; no lock is held across any of it. Readers ([`InstanceManager::names`],
//! [`InstanceManager::targets`]) read published snapshots and never wait for the task.
//!
//! Two instances never share a WAL folder: `a/b` and `a--b` both map to `a--b` (see
//! [`dir_name`]), and two writers in one folder corrupt each other. An instance whose folder
//! is in use (by another instance, running or still flushing, or by the WAL cleaner removing
//! it) waits, logged, and starts when the folder is free. A start that fails is retried every
//! `instance_restart_backoff` while the config is wanted; a failure never takes the agent
//! down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::group::{Action, GroupError, Groups};
use super::{dir_name, Instance, Shared};
use crate::config::agent::InstanceMode;
use crate::config::InstanceConfig;
use crate::scrape::manager::{ScrapeManager, TargetInfo};

/// The metric label naming an instance: `instance_group_name` for a shared group,
/// `instance_name` for a distinct config (the old agent's labels).
pub fn metric_label(mode: InstanceMode) -> &'static str {
    match mode {
        InstanceMode::Shared => "instance_group_name",
        InstanceMode::Distinct => "instance_name",
    }
}

/// The handle to the manager task; cheap to share (`Arc`).
#[derive(Debug)]
pub struct InstanceManager {
    shared: Shared,
    commands: mpsc::UnboundedSender<Command>,
    snapshot: watch::Receiver<Snapshot>,
    views: Views,
}

/// What readers see without asking the task.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Member config names, sorted.
    members: Vec<String>,
    /// Instances wanted (running, starting, retried or waiting for their folder), sorted.
    instances: Vec<String>,
    /// Every wanted instance has tried its latest config at least once.
    settled: bool,
}

/// Written by the workers and read by [`InstanceManager::targets`], never across an `.await`.
#[derive(Clone, Default)]
struct Views {
    scrapes: Arc<RwLock<BTreeMap<String, Arc<ScrapeManager>>>>,
    restart_backoff: Arc<Mutex<Duration>>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("restart_backoff", &self.restart_backoff())
            .finish_non_exhaustive()
    }
}

impl Views {
    fn restart_backoff(&self) -> Duration {
        *self
            .restart_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_scrape(&self, name: &str, scrape: Option<Arc<ScrapeManager>>) {
        let mut m = self
            .scrapes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match scrape {
            Some(s) => m.insert(name.to_owned(), s),
            None => m.remove(name),
        };
    }
}

enum Command {
    Apply(InstanceConfig, oneshot::Sender<Result<(), GroupError>>),
    Delete(String, bool, oneshot::Sender<bool>),
    SetMode(InstanceMode, oneshot::Sender<Vec<GroupError>>),
    StopAll(bool, oneshot::Sender<()>),
    /// The WAL cleaner wants to remove the folder: `true` when no instance uses it; starts in
    /// it then wait until [`Command::ReleaseDir`].
    ReserveDir(String, oneshot::Sender<bool>),
    ReleaseDir(String),
    /// From a worker: it acted on its desired state `generation` (started, updated, or failed
    /// and will retry).
    Attempted(String, u64),
    /// From a worker: it stopped for its desired state `generation`.
    Stopped(String, u64),
}

/// What a worker should make true.
#[derive(Debug, Clone)]
enum Want {
    Run {
        cfg: Box<InstanceConfig>,
        label: &'static str,
    },
    Stop {
        write_stale: bool,
    },
}

#[derive(Debug, Clone)]
struct Desired {
    generation: u64,
    want: Want,
}

struct Worker {
    desired: watch::Sender<Desired>,
    generation: u64,
    attempted: u64,
}

impl Worker {
    fn running(&self) -> bool {
        matches!(self.desired.borrow().want, Want::Run { .. })
    }
}

impl InstanceManager {
    /// Starts the manager task on the current runtime.
    pub fn new(shared: Shared, restart_backoff: Duration, mode: InstanceMode) -> Arc<Self> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshot) = watch::channel(Snapshot {
            settled: true,
            ..Snapshot::default()
        });
        let views = Views {
            restart_backoff: Arc::new(Mutex::new(restart_backoff)),
            ..Views::default()
        };
        let task = Task {
            shared: shared.clone(),
            groups: Groups::new(mode),
            workers: BTreeMap::new(),
            blocked: BTreeMap::new(),
            reserved: BTreeSet::new(),
            stop_all_waiters: Vec::new(),
            commands: commands.clone(),
            snapshot: snapshot_tx,
            views: views.clone(),
        };
        tokio::spawn(task.run(rx));
        Arc::new(InstanceManager {
            shared,
            commands,
            snapshot,
            views,
        })
    }

    /// What every instance shares (WAL directory, metrics, clock).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Sends `command` and waits for its answer (`None`: the task is gone, only at exit).
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).ok()?;
        rx.await.ok()
    }

    /// Runs the config `cfg` (adds it to its group, or replaces its previous version): its
    /// instance is started, updated in place, or restarted when it cannot be updated, in the
    /// background; an unchanged instance is left alone. In shared mode a job name already used
    /// by another member of the group is refused and nothing changes.
    pub async fn apply(&self, cfg: InstanceConfig) -> Result<(), GroupError> {
        self.ask(|tx| Command::Apply(cfg, tx))
            .await
            .unwrap_or(Ok(()))
    }

    /// Removes the config `name`: its instance stops when it was the last member, otherwise
    /// the group instance drops its jobs. `write_stale` only when the config was deleted (not
    /// moved). `false` when the config was not running here. Scraping stops at once; the
    /// remote_write flush goes on in the background.
    pub async fn delete(&self, name: &str, write_stale: bool) -> bool {
        self.ask(|tx| Command::Delete(name.to_owned(), write_stale, tx))
            .await
            .unwrap_or(false)
    }

    /// Switches `instance_mode` (config reload): every config is regrouped, instances no longer
    /// wanted stop (no staleness markers: the series continue in the new instances), the new
    /// ones start. Returns the configs that could not be placed (job names clashing within a
    /// new group); they no longer run and are logged.
    pub async fn set_mode(&self, mode: InstanceMode) -> Vec<GroupError> {
        self.ask(|tx| Command::SetMode(mode, tx))
            .await
            .unwrap_or_default()
    }

    /// `instance_restart_backoff` for the next retries (config reload).
    pub fn set_restart_backoff(&self, d: Duration) {
        *self
            .views
            .restart_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = d;
    }

    /// Stops everything (shutdown), every instance's flush concurrently; returns once all
    /// stopped.
    pub async fn stop_all(&self, write_stale: bool) {
        self.ask(|tx| Command::StopAll(write_stale, tx)).await;
    }

    /// Runs `f` unless an instance whose folder is `dir` (a [`dir_name`]) is wanted or still
    /// stopping, holding off every start in that folder until `f` finishes. The WAL cleaner
    /// removes a folder this way, so a config assigned back to this agent at that moment
    /// starts on a fresh WAL rather than on a half-removed one. `None` when one runs.
    pub async fn unless_running<F, Fut, R>(&self, dir: &str, f: F) -> Option<R>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = R>,
    {
        if !self
            .ask(|tx| Command::ReserveDir(dir.to_owned(), tx))
            .await?
        {
            return None;
        }
        let release = ReleaseOnDrop(self.commands.clone(), dir.to_owned());
        let r = f().await;
        drop(release);
        Some(r)
    }

    /// Names of the configs this agent runs (or retries), sorted, in both modes.
    pub fn names(&self) -> Vec<String> {
        self.snapshot.borrow().members.clone()
    }

    /// Whether the config `name` runs (or is retried) here.
    pub fn is_running(&self, name: &str) -> bool {
        self.snapshot
            .borrow()
            .members
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// Names of the instances wanted here (running, starting, retried or waiting for their
    /// folder), sorted: config names in distinct mode, group hashes in shared mode. Their WAL
    /// folders are `dir_name(name)`.
    pub fn instance_names(&self) -> Vec<String> {
        self.snapshot.borrow().instances.clone()
    }

    /// Waits until every wanted instance has tried its latest config once (started, updated,
    /// or failed and being retried): what readiness waits for after the first reshard.
    pub async fn settled(&self) {
        let mut rx = self.snapshot.clone();
        let _ = rx.wait_for(|s| s.settled).await;
    }

    /// The targets of every running instance, sorted as the API lists them.
    pub fn targets(&self) -> Vec<TargetInfo> {
        let scrapes: Vec<Arc<ScrapeManager>> = self
            .views
            .scrapes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut all: Vec<TargetInfo> = scrapes.iter().flat_map(|s| s.targets()).collect();
        crate::scrape::manager::sort_targets(&mut all);
        all
    }

    /// Instances whose start succeeded and that run now (tests).
    #[cfg(test)]
    fn started(&self) -> Vec<String> {
        self.views
            .scrapes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

struct ReleaseOnDrop(mpsc::UnboundedSender<Command>, String);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = self
            .0
            .send(Command::ReleaseDir(std::mem::take(&mut self.1)));
    }
}

/// The manager task's state; see the module docs.
struct Task {
    shared: Shared,
    groups: Groups,
    workers: BTreeMap<String, Worker>,
    /// Instances wanted whose WAL folder is in use; started when it is free.
    blocked: BTreeMap<String, Want>,
    /// Folders the WAL cleaner is removing.
    reserved: BTreeSet<String>,
    stop_all_waiters: Vec<oneshot::Sender<()>>,
    commands: mpsc::UnboundedSender<Command>,
    snapshot: watch::Sender<Snapshot>,
    views: Views,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = rx.recv().await {
            self.handle(command);
            self.publish();
        }
    }

    /// Applies one command. Answers go out after the snapshot is published, so a caller sees
    /// its own change in [`InstanceManager::names`] at once.
    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply(cfg, reply) => {
                let label = metric_label(self.groups.mode());
                let name = cfg.name.clone();
                let result = self.groups.apply(cfg).map(|actions| {
                    if let Some(i) = self.groups.instance_of(&name).filter(|i| *i != name) {
                        tracing::debug!(config = %name, instance = %i, "config runs in a shared instance");
                    }
                    // A config that moved to another group: its series continue there.
                    self.execute(actions, false, label);
                });
                self.publish();
                let _ = reply.send(result);
            }
            Command::Delete(name, write_stale, reply) => {
                let label = metric_label(self.groups.mode());
                let action = self.groups.remove(&name);
                let found = action.is_some();
                self.execute(action.into_iter().collect(), write_stale, label);
                self.publish();
                let _ = reply.send(found);
            }
            Command::SetMode(mode, reply) => {
                if self.groups.mode() == mode {
                    self.publish();
                    let _ = reply.send(Vec::new());
                    return;
                }
                let (actions, rejected) = self.groups.set_mode(mode);
                for e in &rejected {
                    tracing::error!(error = %e, "config dropped while regrouping for the new instance_mode");
                }
                self.execute(actions, false, metric_label(mode));
                self.publish();
                let _ = reply.send(rejected);
            }
            Command::StopAll(write_stale, reply) => {
                self.groups = Groups::new(self.groups.mode());
                self.blocked.clear();
                let names: Vec<String> = self.workers.keys().cloned().collect();
                for name in names {
                    self.want(&name, Want::Stop { write_stale });
                }
                self.stop_all_waiters.push(reply);
                self.notify_stopped_all();
            }
            Command::ReserveDir(dir, reply) => {
                let busy = self.reserved.contains(&dir)
                    || self
                        .workers
                        .keys()
                        .chain(self.blocked.keys())
                        .any(|n| dir_name(n) == dir);
                if !busy {
                    self.reserved.insert(dir);
                }
                self.publish();
                let _ = reply.send(!busy);
            }
            Command::ReleaseDir(dir) => {
                self.reserved.remove(&dir);
                self.unblock(&dir);
            }
            Command::Attempted(name, generation) => {
                if let Some(w) = self.workers.get_mut(&name) {
                    w.attempted = w.attempted.max(generation);
                }
            }
            Command::Stopped(name, generation) => {
                let done = self
                    .workers
                    .get(&name)
                    .is_some_and(|w| w.generation == generation && !w.running());
                if done {
                    // Dropping the sender ends the worker; the folder is free.
                    self.workers.remove(&name);
                    self.unblock(&dir_name(&name));
                    self.notify_stopped_all();
                }
            }
        }
    }

    /// Stops first: they only stop scraping here (the flush goes on in the background).
    fn execute(&mut self, actions: Vec<Action>, write_stale: bool, label: &'static str) {
        let (stops, runs): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Stop(_)));
        for a in stops.into_iter().chain(runs) {
            match a {
                Action::Run(cfg) => {
                    let name = cfg.name.clone();
                    let cfg = Box::new(cfg);
                    self.want(&name, Want::Run { cfg, label });
                }
                Action::Stop(name) => self.want(&name, Want::Stop { write_stale }),
            }
        }
    }

    /// Sets the desired state of the instance `name`, starting its worker when needed.
    fn want(&mut self, name: &str, want: Want) {
        if let Some(w) = self.workers.get_mut(name) {
            w.generation += 1;
            w.desired.send_replace(Desired {
                generation: w.generation,
                want,
            });
            return;
        }
        match want {
            Want::Stop { .. } => {
                self.blocked.remove(name);
            }
            Want::Run { .. } => {
                let dir = dir_name(name);
                let other = self.workers.keys().find(|n| dir_name(n) == dir).cloned();
                if let Some(other) = other {
                    super::span(name).in_scope(|| tracing::error!(other = %other, folder = %dir,
                        "instance waits: its WAL folder is in use by another config (config names map to folders with `/` as `--`); rename one of them"));
                    self.blocked.insert(name.to_owned(), want);
                } else if self.reserved.contains(&dir) {
                    super::span(name).in_scope(|| tracing::info!(folder = %dir, "instance waits for the WAL cleaner to finish with its folder"));
                    self.blocked.insert(name.to_owned(), want);
                } else {
                    self.blocked.remove(name);
                    self.spawn_worker(name, want);
                }
            }
        }
    }

    fn spawn_worker(&mut self, name: &str, want: Want) {
        let (desired, rx) = watch::channel(Desired {
            generation: 1,
            want,
        });
        tokio::spawn(
            work(
                name.to_owned(),
                self.shared.clone(),
                rx,
                self.commands.clone(),
                self.views.clone(),
            )
            .instrument(super::span(name)),
        );
        self.workers.insert(
            name.to_owned(),
            Worker {
                desired,
                generation: 1,
                attempted: 0,
            },
        );
    }

    /// Starts the first instance waiting for the folder `dir`, if it is free now.
    fn unblock(&mut self, dir: &str) {
        if self.reserved.contains(dir) || self.workers.keys().any(|n| dir_name(n) == dir) {
            return;
        }
        let next = self.blocked.keys().find(|n| dir_name(n) == dir).cloned();
        if let Some(name) = next {
            if let Some(want) = self.blocked.remove(&name) {
                super::span(&name).in_scope(|| tracing::info!(folder = %dir, "WAL folder free; starting the instance that waited for it"));
                self.spawn_worker(&name, want);
            }
        }
    }

    fn notify_stopped_all(&mut self) {
        if self.workers.is_empty() && !self.stop_all_waiters.is_empty() {
            self.publish();
            for w in self.stop_all_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn publish(&self) {
        let mut instances: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.running())
            .map(|(n, _)| n.clone())
            .chain(self.blocked.keys().cloned())
            .collect();
        instances.sort();
        instances.dedup();
        let settled = self
            .workers
            .values()
            .all(|w| !w.running() || w.attempted >= w.generation);
        let snapshot = Snapshot {
            members: self.groups.config_names(),
            instances,
            settled,
        };
        self.snapshot.send_replace(snapshot);
    }
}

/// One instance's worker: converges on the latest desired state until the manager drops it.
async fn work(
    name: String,
    shared: Shared,
    mut desired: watch::Receiver<Desired>,
    manager: mpsc::UnboundedSender<Command>,
    views: Views,
) {
    let mut current: Option<Instance> = None;
    let mut failed = false;
    loop {
        let Desired { generation, want } = desired.borrow_and_update().clone();
        let mut retry = false;
        match want {
            Want::Run { cfg, label } => {
                let cfg = *cfg;
                if let Some(inst) = current.as_mut().filter(|i| i.config() != &cfg) {
                    if inst.update(cfg.clone()).await {
                        tracing::info!("instance updated in place");
                    } else {
                        tracing::info!("instance restarting for a changed config");
                        views.set_scrape(&name, None);
                        if let Some(old) = current.take() {
                            old.stop(false).await;
                        }
                    }
                }
                if current.is_none() {
                    match Instance::start(cfg, &shared, label).await {
                        Ok(inst) => {
                            if failed {
                                tracing::info!("instance started after a retry");
                            }
                            failed = false;
                            views.set_scrape(&name, Some(inst.scrape_manager()));
                            current = Some(inst);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, retry_in = ?views.restart_backoff(), "instance failed to start");
                            failed = true;
                            retry = true;
                        }
                    }
                }
                let _ = manager.send(Command::Attempted(name.clone(), generation));
            }
            Want::Stop { write_stale } => {
                failed = false;
                if let Some(inst) = current.take() {
                    views.set_scrape(&name, None);
                    inst.stop(write_stale).await;
                }
                let _ = manager.send(Command::Stopped(name.clone(), generation));
            }
        }
        let next = if retry {
            tokio::select! {
                changed = desired.changed() => changed,
                _ = tokio::time::sleep(views.restart_backoff()) => Ok(()),
            }
        } else {
            desired.changed().await
        };
        if next.is_err() {
            break;
        }
    }
    // The manager is gone (the agent exits) with this instance still running.
    if let Some(inst) = current {
        views.set_scrape(&name, None);
        inst.stop(false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use std::time::Instant;

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

    fn manager(
        dir: &std::path::Path,
        registry: &mut prometheus_client::registry::Registry,
        backoff: Duration,
        mode: InstanceMode,
    ) -> Arc<InstanceManager> {
        let shared = Shared::new(dir, "t", registry, Clock::system());
        InstanceManager::new(shared, backoff, mode)
    }

    /// Polls `f` until it holds (10 s at most).
    async fn wait(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `a/b` and `a--b` map to the same WAL folder: only one runs at a time; the other waits
    /// and starts once the first is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_configs_never_share_a_wal_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let m = manager(
            dir.path(),
            &mut registry,
            Duration::from_millis(200),
            InstanceMode::Distinct,
        );
        m.apply(config("a/b")).await.unwrap();
        m.apply(config("a--b")).await.unwrap();
        wait("a/b started", || m.started() == ["a/b"]).await;
        // Still wanted: it waits for the folder.
        assert!(m.is_running("a--b"));
        assert_eq!(m.instance_names(), ["a--b", "a/b"]);
        assert!(m.delete("a/b", false).await);
        wait("a--b started", || m.started() == ["a--b"]).await;
        m.stop_all(false).await;
        assert!(m.started().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_flushes_in_the_background_and_a_comeback_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let m = manager(
            dir.path(),
            &mut registry,
            Duration::from_secs(1),
            InstanceMode::Distinct,
        );
        m.apply(config("a")).await.unwrap();
        m.apply(config("b")).await.unwrap();
        // A scrape (of a closed port: up 0) in the WAL, so there is something to flush.
        wait("a scraped", || {
            m.targets()
                .iter()
                .any(|t| t.instance == "a" && t.last_scrape != "0001-01-01T00:00:00Z")
        })
        .await;

        let t = Instant::now();
        assert!(m.delete("a", false).await);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "delete waited for the flush: {:?}",
            t.elapsed()
        );
        assert_eq!(m.names(), ["b"]);

        // The same config again starts only after the old instance let go of its WAL.
        m.apply(config("a")).await.unwrap();
        assert!(m.is_running("a"));
        wait("a started again", || m.started() == ["a", "b"]).await;
        let t = Instant::now();
        m.stop_all(false).await;
        // Both stops flush concurrently: about one deadline, not two.
        assert!(
            t.elapsed() < Duration::from_millis(3500),
            "stop_all took {:?}",
            t.elapsed()
        );
        assert!(m.names().is_empty());
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

    /// Targets appear once discovery delivered them.
    async fn wait_jobs(m: &InstanceManager, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(i, j)| (i.to_string(), j.to_string()))
            .collect();
        wait(&format!("targets by instance {want:?}"), || {
            jobs_by_instance(&m.targets()) == want
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_mode_runs_one_instance_per_group_and_updates_it_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let m = manager(
            dir.path(),
            &mut registry,
            Duration::from_secs(1),
            InstanceMode::Shared,
        );
        let registry = Arc::new(registry);
        let a = config_with_job("a", "ja");
        let group = super::super::group::group_hash(&a);
        m.apply(a).await.unwrap();
        m.apply(config_with_job("b", "jb")).await.unwrap();
        assert_eq!(m.names(), ["a", "b"]);
        assert_eq!(m.instance_names(), std::slice::from_ref(&group));
        wait_jobs(&m, &[(&group, "ja"), (&group, "jb")]).await;
        assert!(dir.path().join(&group).join("wal").is_dir());
        // The WAL's housekeeping sets the gauge on its first tick.
        let active = format!("agent_wal_storage_active_series{{instance_group_name=\"{group}\"}}");
        wait("the group's WAL gauge", || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text.contains(&active)
        })
        .await;

        // A job name another member uses is refused; nothing changes.
        assert!(m.apply(config_with_job("c", "ja")).await.is_err());
        assert_eq!(m.names(), ["a", "b"]);

        // Removing a member drops its jobs from the same instance (no restart: same WAL).
        assert!(m.delete("a", true).await);
        assert_eq!(m.instance_names(), std::slice::from_ref(&group));
        wait_jobs(&m, &[(&group, "jb")]).await;
        // The last member stops the instance.
        assert!(m.delete("b", true).await);
        assert!(!m.delete("b", true).await);
        assert!(m.instance_names().is_empty());
        wait_jobs(&m, &[]).await;

        // Switching to distinct regroups: one instance per config, named by it.
        m.apply(config_with_job("a", "ja")).await.unwrap();
        m.apply(config_with_job("b", "jb")).await.unwrap();
        assert!(m.set_mode(InstanceMode::Distinct).await.is_empty());
        assert_eq!(m.instance_names(), ["a", "b"]);
        wait_jobs(&m, &[("a", "ja"), ("b", "jb")]).await;
        m.stop_all(false).await;
    }
}
