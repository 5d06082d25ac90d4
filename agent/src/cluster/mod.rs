//! The clustered scraping service: which configs this agent runs.
//!
//! Every agent holds a [`RingView`] (a watch on `collectors/agent`) and a watch on the config
//! prefix. It recomputes what it owns:
//!
//! * on start, once its own ring entry is ACTIVE;
//! * whenever the ring's topology or health changes (a member joins, leaves, changes state or
//!   goes silent) — this replaces the old agent's gRPC `Reshard` calls between peers: a join or
//!   leave is a ring write every agent's watch sees within milliseconds, with no extra RPC and
//!   no peer list to keep (old agents sharing the ring still learn of it through their own
//!   ring watch and their 1 minute refresh);
//! * on every config event (put **and delete**: a DELETE stops the instance at once, where the
//!   old agent waited for the next refresh);
//! * every `reshard_interval`, as a backstop.
//!
//! A config is (re)applied only when its content changed (by hash), never because an event
//! arrived. A config that no longer validates is logged with its name and skipped; the
//! instance it had keeps running.
//!
//! Leaving (SIGTERM): the lifecycler marks this agent LEAVING, so the other agents' lookups
//! pass its configs on and they start them; after a short hand-over pause this agent stops its
//! instances (without staleness markers: the series continue elsewhere), flushes remote_write,
//! and removes itself from the ring.
//!
//! With `scraping_service.sharding: targets` the same loop decides which configs this agent
//! *discovers* (the ring owner of a config's name runs its discovery and publishes its
//! targets); what it *scrapes* is decided by the assignment, run by [`targets`]. Leaving then
//! waits until every target this agent wrote was handed over (make before break).

pub mod assign;
pub mod handoff;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod publish;
pub mod report;
#[cfg(test)]
mod sim;
pub mod store;
pub mod targets;
pub mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::agent::InstanceMode;
use crate::config::load::parse_instance_named;
use crate::config::{GlobalConfig, InstanceConfig};
use crate::instance::manager::InstanceManager;
use crate::kv::configstore::{content_hash, ConfigEvent, ConfigStore};
use crate::kv::KvStore;
use crate::ring::lifecycler::{KvHealth, Lifecycler, LifecyclerSettings};
use crate::ring::lookup::Ring;
use crate::ring::model::Desc;
use crate::ring::view::RingView;
use crate::scrape::assigned::LoopEvent;
use targets::TargetSharding;

/// How long a leaving agent keeps its instances after marking itself LEAVING, so the new
/// owners start scraping before it stops (make before break).
pub const HANDOVER_PAUSE: Duration = Duration::from_millis(1500);

/// Under target sharding, how long a leaving agent waits at most for its targets to be taken
/// over (each handover needs the new agent's first scrape and this agent's remote_write to
/// deliver; its own timeouts, from the scrape interval, end a stuck one sooner).
pub const TARGETS_LEAVE_DEADLINE: Duration = Duration::from_secs(60);

/// What target sharding needs to start (`scraping_service.sharding: targets`).
pub struct TargetShardingSetup {
    /// The assigned targets the instances' scrape managers read (also in
    /// [`crate::instance::Shared::assigned`]), and the receiver of their loops' reports.
    pub registry: Arc<targets::Registry>,
    pub events: mpsc::UnboundedReceiver<LoopEvent>,
    pub metrics: metrics::ShardingMetrics,
    pub instance_mode: InstanceMode,
    pub base_dir: Option<PathBuf>,
}

pub struct Cluster {
    pub store: Arc<ConfigStore>,
    pub lifecycler: Lifecycler,
    pub view: RingView,
    pub manager: Arc<InstanceManager>,
    /// Reloadable settings (`/-/reload`): see [`Cluster::reload`].
    settings: std::sync::RwLock<Reloadable>,
    /// Wakes the run loop for a full reshard after a reload.
    reloaded: tokio::sync::Notify,
    pub heartbeat_timeout: Duration,
    /// "Now" for heartbeat ages in ownership decisions.
    clock: Clock,
    /// Content hash of each config this agent runs.
    applied: std::sync::Mutex<HashMap<String, String>>,
    /// Target sharding: every stored config validated, by name, with its content hash (parsed
    /// again only when it changed; `None` when it does not validate).
    parsed: std::sync::Mutex<HashMap<String, (String, Option<InstanceConfig>)>>,
    /// Configs owned per ring member id, for `/debug/ring`.
    owned_tx: watch::Sender<HashMap<String, usize>>,
    /// Target sharding, when on: configs owned here are only discovered here.
    targets: Option<Arc<TargetSharding>>,
    /// Configs in the store at the last full reshard (`agent_scraping_service_configs`).
    stored_tx: watch::Sender<usize>,
    ready_tx: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
struct Reloadable {
    global: GlobalConfig,
    reshard_interval: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.lifecycler.id())
            .finish_non_exhaustive()
    }
}

/// What joining the ring needs besides the stores, from the validated agent config.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    pub lifecycler: LifecyclerSettings,
    pub global: GlobalConfig,
    pub reshard_interval: Duration,
    pub clock: Clock,
}

impl Cluster {
    /// Joins the ring in `ring_kv` (starts this agent's lifecycler and a view of the ring) and
    /// follows the configs in `configs`. Returns the cluster, to be driven by
    /// [`Cluster::run`], and its `/debug/ring` page.
    pub fn join(
        configs: Arc<ConfigStore>,
        ring_kv: Arc<dyn KvStore>,
        manager: Arc<InstanceManager>,
        s: JoinSettings,
        sharding: Option<TargetShardingSetup>,
    ) -> (Arc<Cluster>, axum::Router) {
        let ring_key = s.lifecycler.ring_key.clone();
        let heartbeat_timeout = s.lifecycler.heartbeat_timeout;
        tracing::info!(id = %s.lifecycler.id, addr = %s.lifecycler.addr, ring = %ring_key, "joining the ring");
        let lifecycler = Lifecycler::start(ring_kv.clone(), s.lifecycler, s.clock);
        let kv_health = lifecycler.subscribe_kv_health();
        let view = RingView::start(
            ring_kv.clone(),
            ring_key.clone(),
            heartbeat_timeout,
            s.clock,
        );
        let targets = sharding.map(|t| {
            let (ring, health, clock) =
                (view.subscribe(), lifecycler.subscribe_kv_health(), s.clock);
            TargetSharding::start(targets::Context {
                kv: configs.kv().clone(),
                layout: store::Layout::for_config_prefix(configs.prefix()),
                configs: configs.clone(),
                manager: manager.clone(),
                registry: t.registry,
                events: t.events,
                ring: view.subscribe(),
                ring_now: Arc::new(move || {
                    ring_with_grace(&ring.borrow(), *health.borrow(), heartbeat_timeout, clock)
                }),
                id: lifecycler.id().to_owned(),
                addr: lifecycler.addr().to_owned(),
                clock,
                metrics: t.metrics,
                instance_mode: t.instance_mode,
                base_dir: t.base_dir,
                load_factor: 1.0,
            })
        });
        let cluster = Cluster::new(
            configs,
            lifecycler,
            view,
            manager,
            s.global,
            s.reshard_interval,
            s.clock,
            targets.clone(),
        );
        let (summary, state): (
            Option<crate::ring::http::TargetsSource>,
            report::StateSource,
        ) = match &targets {
            Some(t) => {
                let (a, b) = (t.clone(), t.clone());
                (
                    Some(crate::ring::http::TargetsSource(Arc::new(move || {
                        report::summary(&a.state())
                    }))),
                    Some(Arc::new(move || b.state())),
                )
            }
            None => (None, None),
        };
        let page = crate::ring::http::router(crate::ring::http::RingPageState {
            store: ring_kv,
            ring_key,
            heartbeat_timeout,
            configs_owned: cluster.owned_counts(),
            clock: s.clock,
            targets: summary,
            kv_health: Some(kv_health),
            last_read: Some(cluster.view.last_read()),
            kv_outage: Some(cluster.lifecycler.subscribe_kv_outage()),
        })
        .merge(report::router(state));
        (cluster, page)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<ConfigStore>,
        lifecycler: Lifecycler,
        view: RingView,
        manager: Arc<InstanceManager>,
        global: GlobalConfig,
        reshard_interval: Duration,
        clock: Clock,
        targets: Option<Arc<TargetSharding>>,
    ) -> Arc<Self> {
        // The lifecycler's heartbeat timeout is the ring's (`lifecycler.ring.heartbeat_timeout`).
        let heartbeat_timeout = lifecycler.settings().heartbeat_timeout;
        Arc::new(Cluster {
            store,
            lifecycler,
            view,
            manager,
            settings: std::sync::RwLock::new(Reloadable {
                global,
                reshard_interval,
            }),
            reloaded: tokio::sync::Notify::new(),
            heartbeat_timeout,
            clock,
            applied: std::sync::Mutex::new(HashMap::new()),
            parsed: std::sync::Mutex::new(HashMap::new()),
            owned_tx: watch::channel(HashMap::new()).0,
            targets,
            stored_tx: watch::channel(0).0,
            ready_tx: watch::channel(false).0,
        })
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settings(&self) -> Reloadable {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn reshard_interval(&self) -> Duration {
        self.settings().reshard_interval
    }

    /// Applies reloaded settings: every owned config is validated again against the new
    /// `global` and re-applied by content (an instance whose resulting config is unchanged is
    /// left alone), and the reshard timer restarts with the new interval. Also the way to
    /// re-place configs after an `instance_mode` switch dropped some.
    pub async fn reload(&self, global: GlobalConfig, reshard_interval: Duration) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Reloadable {
            global,
            reshard_interval,
        };
        self.applied().clear();
        self.parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.reloaded.notify_one();
    }

    /// Configs owned per member id (for the ring page).
    pub fn owned_counts(&self) -> watch::Receiver<HashMap<String, usize>> {
        self.owned_tx.subscribe()
    }

    /// Configs in the store at the last full reshard.
    pub fn stored_configs(&self) -> usize {
        *self.stored_tx.borrow()
    }

    /// `true` once the first full reshard is done and the instances it started tried their
    /// configs.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    fn ring(&self) -> Ring {
        let health = *self.lifecycler.subscribe_kv_health().borrow();
        ring_with_grace(
            &self.view.current(),
            health,
            self.heartbeat_timeout,
            self.clock,
        )
    }

    fn owns(&self, ring: &Ring, name: &str) -> bool {
        match ring.owns(name, self.lifecycler.addr(), self.clock.now()) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(config = name, error = %e, "no owner for config");
                false
            }
        }
    }

    /// Runs until `shutdown`, then leaves the ring.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.view.wait_ready().await;
        let mut ring_rx = self.view.subscribe();
        let mut watch = loop {
            match self.store.watch().await {
                Ok(w) => break Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config store yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // Own nothing until this agent is ACTIVE in the ring (PENDING/JOINING members own no
        // keys), so readiness means "the configs this agent owns are running".
        let mut state = self.lifecycler.subscribe_state();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = state.wait_for(|s| *s == crate::ring::model::InstanceState::Active) => {}
        }
        // The first reshard judges the ring as this agent's view holds it, which follows the
        // store through a watch: the lifecycler hears its ACTIVE write land before or after the
        // watch delivers it. Judged before, this agent owns nothing in it and would be ready
        // before running its configs.
        let id = self.lifecycler.id().to_owned();
        let mut own = self.view.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = own.wait_for(|d| {
                d.ingesters.get(&id).and_then(|m| m.instance_state())
                    == Some(crate::ring::model::InstanceState::Active)
            }) => {}
        }
        self.refresh().await;
        // Ready once the instances it owns started (or failed and are retried).
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.manager.settled() => {}
        }
        let _ = self.ready_tx.send(true);
        let mut next = tokio::time::Instant::now() + self.reshard_interval();
        let mut kv_rx = self.lifecycler.subscribe_kv_health();
        // When the grace after a KV outage ends, members that still have not heartbeated are
        // really gone: reshard then (the ring view does not wake for it, the grace is ours).
        // An agent that registered after failing to reach the store is in that grace already.
        let grace_after =
            |at: tokio::time::Instant| at + self.heartbeat_timeout + Duration::from_millis(100);
        let mut grace_end = match *kv_rx.borrow_and_update() {
            KvHealth::RecoveredAt(at) => Some(grace_after(at)),
            KvHealth::Ok | KvHealth::Failing => None,
        };
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = kv_rx.changed() => {
                    if changed.is_err() { break; }
                    let health = *kv_rx.borrow_and_update();
                    if let KvHealth::RecoveredAt(at) = health {
                        grace_end = Some(grace_after(at));
                        self.refresh().await;
                    }
                }
                _ = async { match grace_end { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    grace_end = None;
                    self.refresh().await;
                }
                changed = ring_rx.changed() => {
                    if changed.is_err() { break; }
                    self.refresh().await;
                }
                ev = async { match watch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    match ev {
                        Some(ev) => self.handle_event(ev).await,
                        None => {
                            tracing::warn!("config watch ended; re-establishing it");
                            watch = self.store.watch().await.ok();
                            self.refresh().await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + self.reshard_interval();
                    if watch.is_none() {
                        // The watch could not be re-established when it ended (the store was
                        // down then): try again, or config events would only arrive here.
                        watch = self.store.watch().await.ok();
                    }
                    self.refresh().await;
                }
                _ = self.reloaded.notified() => {
                    next = tokio::time::Instant::now() + self.reshard_interval();
                    self.refresh().await;
                }
            }
        }
        self.leave().await;
    }

    /// Graceful leave: LEAVING, hand-over pause (target sharding: until every target was
    /// handed over), stop instances, unregister.
    async fn leave(&self) {
        let manager = self.manager.clone();
        let targets = self.targets.clone();
        self.lifecycler
            .leave(|| async move {
                match targets {
                    Some(t) => {
                        t.leave(tokio::time::Instant::now() + TARGETS_LEAVE_DEADLINE)
                            .await
                    }
                    None => tokio::time::sleep(HANDOVER_PAUSE).await,
                }
                manager.stop_all(false).await;
            })
            .await;
        tracing::info!(id = %self.lifecycler.id(), "left the ring");
    }

    /// The full reshard: run what this agent owns, stop the rest.
    pub async fn refresh(&self) {
        let started = std::time::Instant::now();
        let all = match self.store.all().await {
            Ok(a) => a,
            Err(e) => {
                // Keep running what runs: an unreadable store is not a reason to stop scraping.
                tracing::warn!(error = %e, "reshard: cannot list configs; keeping the current instances");
                return;
            }
        };
        let ring = self.ring();
        let now = self.clock.now();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut owned = Vec::new();
        for (name, yaml) in &all {
            if let Ok(owner) = ring.owner(name, now) {
                *counts.entry(owner.id.clone()).or_default() += 1;
                if owner.addr == self.lifecycler.addr() {
                    owned.push((name, yaml));
                }
            }
        }
        let _ = self.owned_tx.send(counts);
        self.stored_tx.send_replace(all.len());
        // Looked up once per config (a scan of `all` each was quadratic: 1 s per event at
        // 10,000 configs under target sharding, where every event is a refresh).
        let stored: std::collections::HashSet<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(t) = &self.targets {
            // Every valid config (scraped wherever its targets are assigned), and the ones
            // this agent discovers.
            let global = self.settings().global;
            let mut valid: Vec<InstanceConfig> = Vec::with_capacity(all.len());
            let mut mine: Vec<InstanceConfig> = Vec::new();
            let owned: std::collections::HashSet<&str> =
                owned.iter().map(|(n, _)| n.as_str()).collect();
            let mut parsed = self
                .parsed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            parsed.retain(|name, _| stored.contains(name.as_str()));
            for (name, yaml) in &all {
                let hash = content_hash(yaml);
                let entry = match parsed.get(name) {
                    Some((h, cfg)) if *h == hash => cfg.clone(),
                    _ => {
                        let cfg = match parse_instance_named(yaml, Some(name), &global) {
                            Ok((_, cfg)) => Some(cfg),
                            Err(e) => {
                                tracing::error!(config = %name, error = %e,
                                    "config in the store does not validate; skipped");
                                None
                            }
                        };
                        parsed.insert(name.clone(), (hash, cfg.clone()));
                        cfg
                    }
                };
                if let Some(cfg) = entry {
                    if owned.contains(name.as_str()) {
                        mine.push(cfg.clone());
                    }
                    valid.push(cfg);
                }
            }
            drop(parsed);
            t.set_configs(valid, mine);
            tracing::debug!(configs = all.len(), took = ?started.elapsed(), "target sharding: configs refreshed");
            return;
        }
        let wanted: std::collections::HashSet<&str> =
            owned.iter().map(|(n, _)| n.as_str()).collect();
        for name in self.manager.names() {
            if !wanted.contains(name.as_str()) {
                let deleted = !stored.contains(name.as_str());
                self.stop(&name, deleted).await;
            }
        }
        for (name, yaml) in owned {
            self.run_config(name, yaml).await;
        }
        tracing::debug!(configs = all.len(), took = ?started.elapsed(), "reshard done");
    }

    async fn handle_event(&self, ev: ConfigEvent) {
        if let Some(t) = &self.targets {
            if let ConfigEvent::Deleted { name } = &ev {
                t.deleted(name);
            }
            return self.refresh().await;
        }
        match ev {
            ConfigEvent::Upserted { name, yaml } => {
                let ring = self.ring();
                if self.owns(&ring, &name) {
                    self.run_config(&name, &yaml).await;
                } else if self.manager.is_running(&name) {
                    self.stop(&name, false).await;
                }
            }
            ConfigEvent::Deleted { name } => {
                if self.manager.is_running(&name) {
                    self.stop(&name, true).await;
                }
            }
        }
    }

    async fn stop(&self, name: &str, deleted: bool) {
        let why = if deleted {
            "config deleted"
        } else {
            "config moved to another agent"
        };
        tracing::info!(config = name, reason = why, "stopping instance");
        self.applied().remove(name);
        // Staleness markers only when the series really end (deleted), not on a move.
        self.manager.delete(name, deleted).await;
    }

    async fn run_config(&self, name: &str, yaml: &str) {
        let hash = content_hash(yaml);
        if self.applied().get(name) == Some(&hash) {
            return;
        }
        let global = self.settings().global;
        match parse_instance_named(yaml, Some(name), &global) {
            Ok((_, cfg)) => {
                tracing::info!(config = name, "running config");
                match self.manager.apply(cfg).await {
                    Ok(()) => {
                        self.applied().insert(name.to_owned(), hash);
                    }
                    // Not marked applied: tried again at the next reshard (the clashing
                    // config may be gone by then).
                    Err(e) => tracing::error!(config = name, error = %e, "config not run"),
                }
            }
            Err(e) => tracing::error!(config = name, error = %e,
                "config in the store does not validate; skipped (an instance it had keeps running)"),
        }
    }
}

/// The ring to decide on: `desc` with [`heartbeat_grace`] applied.
fn ring_with_grace(
    desc: &Desc,
    health: KvHealth,
    heartbeat_timeout: Duration,
    clock: Clock,
) -> Ring {
    let mut desc = desc.clone();
    heartbeat_grace(&mut desc, health, heartbeat_timeout, clock.now());
    Ring::new(desc, heartbeat_timeout)
}

/// Adjusts the heartbeat timestamps of a ring snapshot for ownership decisions after (and
/// during) a KV store outage.
///
/// While this agent's own heartbeats fail, every member's timestamp is stale for the same
/// reason, so none of them is judged by it (every timestamp counts as now): configs stay where
/// they run. Once heartbeats land again (`RecoveredAt(t)`), a member whose timestamp predates
/// `t` is given until `t + heartbeat_timeout` to heartbeat, as if it had heartbeated at `t`:
/// without this, the first ring read after the outage shows every other member (and this one)
/// unhealthy and configs would move around and back within a heartbeat period. A member that
/// died during the outage is noticed `heartbeat_timeout` after the store returned.
///
/// An agent started during the outage gets the same rule: its failed registrations are
/// `Failing`, and the registration that lands is `RecoveredAt` (see [`KvHealth`]). Without it,
/// it would judge the members that ran through the outage by heartbeats as old as the outage
/// and run every config they run a second time until they heartbeat again. An agent whose
/// first registration lands judges the ring at once: a member silent for `heartbeat_timeout`
/// then is dead for it as for every other member, and its configs move without waiting.
pub fn heartbeat_grace(
    desc: &mut Desc,
    health: KvHealth,
    heartbeat_timeout: Duration,
    now: SystemTime,
) {
    if let Some(grace) = health.grace(heartbeat_timeout, now) {
        grace.apply(desc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::model::{InstanceDesc, InstanceState};

    fn desc(timestamps: &[(&str, i64)]) -> Desc {
        let mut d = Desc::default();
        for (id, ts) in timestamps {
            d.ingesters.insert(
                (*id).to_owned(),
                InstanceDesc {
                    addr: format!("{id}:80"),
                    timestamp: *ts,
                    state: InstanceState::Active as i32,
                    tokens: vec![1],
                    zone: String::new(),
                    registered_timestamp: 0,
                    id: (*id).to_owned(),
                },
            );
        }
        d
    }

    fn unix(t: SystemTime) -> i64 {
        crate::clock::unix_secs(t)
    }

    /// The ring view follows the store through a watch that may deliver this agent's own ACTIVE
    /// write after the lifecycler heard it land (etcd: two streams): the first reshard waits
    /// for the view to show it, so the agent is ready only once its configs run (before, it
    /// owned nothing in the lagging view, was ready at once, and started its configs when the
    /// watch caught up, here half a second later).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_only_once_the_view_shows_this_agent_active() {
        use crate::config::agent::InstanceMode;
        use crate::kv::testing::FaultyStore;
        use crate::kv::InMemoryStore;

        let clock = Clock::system();
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let lagging = FaultyStore::new(store.clone());
        lagging.set_watch_delay(Duration::from_millis(500));
        let configs = Arc::new(ConfigStore::new(store.clone()));
        configs
            .put(
                "c1",
                "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['127.0.0.1:9']\n",
            )
            .await
            .expect("put");
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let manager = InstanceManager::new(
            crate::instance::Shared::new(dir.path(), "t", &mut registry, clock),
            Duration::from_millis(200),
            InstanceMode::Distinct,
        );
        let settings = LifecyclerSettings {
            unregister_on_shutdown: true,
            ..LifecyclerSettings::for_test("collectors/agent", "a")
        };
        let view = RingView::start(
            lagging.clone(),
            settings.ring_key.clone(),
            settings.heartbeat_timeout,
            clock,
        );
        let lifecycler = Lifecycler::start(store.clone(), settings, clock);
        let cluster = Cluster::new(
            configs,
            lifecycler,
            view,
            manager.clone(),
            GlobalConfig::default(),
            Duration::from_secs(3600),
            clock,
            None,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cluster.clone().run(shutdown.clone()));
        let mut ready = cluster.ready();
        tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
            .await
            .expect("ready within 10 s")
            .expect("ready channel");
        assert_eq!(
            manager.names(),
            ["c1"],
            "ready, running {:?}",
            manager.names()
        );
        shutdown.cancel();
        task.await.expect("run");
    }

    /// The rule through a real lifecycler: an agent started while the store is down, registered
    /// once it is back, judges a member whose heartbeat is as old as the outage alive (the
    /// member still owns its configs: nothing runs twice); one started with the store up judges
    /// the same member dead at once (its configs move without waiting).
    /// How long a config event takes under target sharding, where every event runs the full
    /// `refresh` (all configs read from the store, each checked against the parsed ones by
    /// content hash), at 1,000 and 10,000 stored configs. A measurement, not a check (timings
    /// are not asserted); run it with
    /// `cargo test -p agentctl-agent --lib cluster::tests::config_event_cost -- --ignored --nocapture`.
    /// Measured (debug build, busy 2-core machine): 1,000 configs ~25 ms, 10,000 ~1.1 s with a
    /// scan of all configs per config (quadratic), ~0.25 s with the set, of which ~0.1 s is
    /// reading (and gunzipping) the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn config_event_cost_under_target_sharding() {
        use crate::config::agent::InstanceMode;
        use crate::kv::InMemoryStore;

        let yaml = |i: usize, port: usize| {
            format!(
                "scrape_configs:\n  - job_name: j{i}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            )
        };
        for n in [1_000usize, 10_000] {
            let clock = Clock::system();
            let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
            let configs = Arc::new(ConfigStore::new(store.clone()));
            for i in 0..n {
                configs
                    .put(&format!("c{i:05}"), &yaml(i, 9))
                    .await
                    .expect("put");
            }
            let dir = tempfile::tempdir().unwrap();
            let mut registry = prometheus_client::registry::Registry::default();
            let manager = InstanceManager::new(
                crate::instance::Shared::new(dir.path(), "t", &mut registry, clock),
                Duration::from_millis(200),
                InstanceMode::Shared,
            );
            let (assigned, events) = targets::Registry::new();
            let (cluster, _page) = Cluster::join(
                configs.clone(),
                store.clone(),
                manager,
                JoinSettings {
                    lifecycler: LifecyclerSettings::for_test("collectors/agent", "a"),
                    global: GlobalConfig::default(),
                    reshard_interval: Duration::from_secs(3600),
                    clock,
                },
                Some(TargetShardingSetup {
                    registry: assigned,
                    events,
                    metrics: metrics::ShardingMetrics::default(),
                    instance_mode: InstanceMode::Shared,
                    base_dir: None,
                }),
            );
            // The first parses every config.
            cluster.refresh().await;
            let mut list = Vec::new();
            let mut event = Vec::new();
            for k in 0..5 {
                let start = std::time::Instant::now();
                let all = configs.all().await.expect("all");
                list.push(start.elapsed());
                assert_eq!(all.len(), n);
                // One config changed: what a config event is.
                configs.put("c00000", &yaml(0, 10 + k)).await.expect("put");
                let start = std::time::Instant::now();
                cluster.refresh().await;
                event.push(start.elapsed());
            }
            eprintln!(
                "{n} configs: a config event's refresh took {event:?}; of which reading the store alone {list:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_agent_registered_after_store_failures_gives_stale_members_the_grace() {
        use crate::kv::testing::FaultyStore;
        use crate::kv::InMemoryStore;
        use crate::ring::store::{modify_ring, read_ring};

        const KEY: &str = "collectors/agent";
        let timeout = Duration::from_secs(4);
        let clock = Clock::system();
        let settings = |id: &str| LifecyclerSettings {
            num_tokens: 64,
            heartbeat_timeout: timeout,
            ..LifecyclerSettings::for_test(KEY, id)
        };
        // Configs the ring gives "old" (heartbeat 60 s ago) once `joiner` joined it.
        let owned_by_old = |ring: &Ring| {
            (0..200)
                .filter(|i| {
                    ring.owner(&format!("cfg-{i}"), clock.now())
                        .is_ok_and(|o| o.id == "old")
                })
                .count()
        };
        for store_down_at_start in [true, false] {
            let faulty = FaultyStore::new(Arc::new(InMemoryStore::new()));
            let store: Arc<dyn KvStore> = faulty.clone();
            let mut old = desc(&[("old", unix(clock.now()) - 60)]).ingesters["old"].clone();
            old.tokens = (0..64).map(|i| i * (u32::MAX / 64)).collect();
            modify_ring(store.as_ref(), KEY, "seed", |d| {
                d.ingesters.insert("old".into(), old.clone());
                true
            })
            .await
            .expect("seed");
            faulty.set_down(store_down_at_start);
            let joiner = Lifecycler::start(store.clone(), settings("joiner"), clock);
            let mut health = joiner.subscribe_kv_health();
            if store_down_at_start {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    health.wait_for(|h| *h == KvHealth::Failing),
                )
                .await
                .expect("registration failed")
                .expect("health");
                faulty.set_down(false);
            }
            let mut state = joiner.subscribe_state();
            tokio::time::timeout(
                Duration::from_secs(5),
                state.wait_for(|s| *s == InstanceState::Active),
            )
            .await
            .expect("ACTIVE")
            .expect("state");
            let desc = read_ring(store.as_ref(), KEY).await.expect("ring");
            let health = *health.borrow();
            let ring = ring_with_grace(&desc, health, timeout, clock);
            if store_down_at_start {
                assert!(matches!(health, KvHealth::RecoveredAt(_)), "{health:?}");
                assert!(owned_by_old(&ring) > 0, "the stale member lost its configs");
            } else {
                assert_eq!(health, KvHealth::Ok);
                assert_eq!(owned_by_old(&ring), 0, "the dead member kept configs");
            }
        }
    }

    #[test]
    fn no_grace_when_heartbeats_always_landed() {
        let now = Clock::system().now();
        let mut d = desc(&[("a", unix(now) - 100)]);
        heartbeat_grace(&mut d, KvHealth::Ok, Duration::from_secs(4), now);
        assert_eq!(d.ingesters["a"].timestamp, unix(now) - 100);
    }

    #[test]
    fn while_failing_every_member_counts_as_fresh() {
        let now = Clock::system().now();
        let mut d = desc(&[("a", unix(now) - 100), ("b", unix(now) - 1)]);
        heartbeat_grace(&mut d, KvHealth::Failing, Duration::from_secs(4), now);
        assert!(d.ingesters.values().all(|m| m.timestamp >= unix(now)));
        let ring = Ring::new(d, Duration::from_secs(4));
        assert!(ring.owner("cfg", now).is_ok(), "a and b are both healthy");
    }

    #[test]
    fn after_recovery_stale_members_get_one_heartbeat_timeout() {
        let now = Clock::system().now();
        let recovered = tokio::time::Instant::now() - Duration::from_secs(1);
        let mut d = desc(&[("stale", unix(now) - 60), ("fresh", unix(now))]);
        heartbeat_grace(
            &mut d,
            KvHealth::RecoveredAt(recovered),
            Duration::from_secs(4),
            now,
        );
        // As if it had heartbeated when the store came back (1 s ago, rounded down).
        let ts = d.ingesters["stale"].timestamp;
        assert!((unix(now) - 2..=unix(now) - 1).contains(&ts), "{ts}");
        assert_eq!(d.ingesters["fresh"].timestamp, unix(now));

        // After the grace, the real timestamps count again.
        let mut d = desc(&[("stale", unix(now) - 60)]);
        let long_ago = tokio::time::Instant::now() - Duration::from_secs(5);
        heartbeat_grace(
            &mut d,
            KvHealth::RecoveredAt(long_ago),
            Duration::from_secs(4),
            now,
        );
        assert_eq!(d.ingesters["stale"].timestamp, unix(now) - 60);
    }
}
