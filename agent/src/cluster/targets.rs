//! Target sharding on one agent (`scraping_service.sharding: targets`): the task that turns the
//! `sharding/` keys into scrape loops.
//!
//! ```text
//! config ring owner ──discovery──► sharding/targets/<config>  (publish.rs)
//! leader (ring owner of __target_assignment__) ──► sharding/assignment   (leader.rs)
//! every agent: ShardView ──► this task ──► Handoffs (handoff.rs) ──► AssignedJob per job
//!                  ▲                           │                        │ (Registry, read by
//!                  └── sharding/agents/<id> ◄──┘ status writer          ▼  the scrape managers)
//!                                                            loops: hold / write / release
//! ```
//!
//! The task owns its state and reacts to: the sharding keys changing (a new epoch, another
//! agent's handoff lists), the ring (who is live), the loops' reports (first successful scrape
//! of a held target, a release delivered), the config store (through [`TargetSharding::set_configs`])
//! and handoff timeouts. Per change it applies the newest epoch, lets [`Handoffs`] decide, and
//! publishes to every scrape job the targets it must hold, write or release. An instance (WAL,
//! remote_write) runs for each config this agent has had targets of, until the config is deleted
//! (started again, it would replay its WAL and resend delivered samples).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handoff::{Action, Handoffs, Peers, Published};
use super::leader::{self, LeaderContext};
use super::liveness;
use super::metrics::ShardingMetrics;
use super::publish::Publisher;
use super::store::{self, AgentStatus, Expect, Layout, TargetKey, FORMAT_VERSION};
use super::view::{ShardState, ShardView};
use crate::clock::Clock;
use crate::config::agent::InstanceMode;
use crate::config::duration::PromDuration;
use crate::config::InstanceConfig;
use crate::instance::group::group_hash;
use crate::instance::manager::InstanceManager;
use crate::kv::configstore::ConfigStore;
use crate::kv::KvStore;
use crate::labels::Labels;
use crate::ring::lookup::Ring;
use crate::ring::model::Desc;
use crate::scrape::assigned::{AssignedJob, AssignedSource, AssignedTarget, LoopEvent, Mode};
use crate::scrape::target::{from_full_labels, Target};

/// Per (instance, job): the sender of its assigned targets.
type Jobs = HashMap<(String, String), watch::Sender<Arc<AssignedJob>>>;

/// The assigned targets of every scrape job of this agent, read by the scrape managers.
#[derive(Debug)]
pub struct Registry {
    jobs: Mutex<Jobs>,
    events: mpsc::UnboundedSender<LoopEvent>,
}

impl Registry {
    /// A registry and the receiver of its loops' reports (for [`TargetSharding::start`]).
    pub fn new() -> (Arc<Registry>, mpsc::UnboundedReceiver<LoopEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Registry {
                jobs: Mutex::new(HashMap::new()),
                events,
            }),
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `job`'s targets; the loops are woken only when it changed.
    fn set(&self, instance: &str, job: &str, value: AssignedJob) {
        let mut jobs = self.lock();
        let tx = jobs
            .entry((instance.to_owned(), job.to_owned()))
            .or_insert_with(|| watch::channel(Arc::new(AssignedJob::default())).0);
        tx.send_if_modified(|cur| {
            if **cur == value {
                return false;
            }
            *cur = Arc::new(value);
            true
        });
    }

    fn published(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }
}

impl AssignedSource for Registry {
    fn subscribe(&self, instance: &str, job: &str) -> watch::Receiver<Arc<AssignedJob>> {
        self.lock()
            .entry((instance.to_owned(), job.to_owned()))
            .or_insert_with(|| watch::channel(Arc::new(AssignedJob::default())).0)
            .subscribe()
    }

    fn event(&self, event: LoopEvent) {
        let _ = self.events.send(event);
    }
}

/// What the runtime needs from the agent around it.
pub struct Context {
    pub kv: Arc<dyn KvStore>,
    pub layout: Layout,
    pub configs: Arc<ConfigStore>,
    pub manager: Arc<InstanceManager>,
    pub registry: Arc<Registry>,
    pub events: mpsc::UnboundedReceiver<LoopEvent>,
    /// The ring (woken on topology and health changes).
    pub ring: watch::Receiver<Arc<Desc>>,
    /// The ring to decide on, with the KV-outage heartbeat grace applied.
    pub ring_now: Arc<dyn Fn() -> Ring + Send + Sync>,
    pub id: String,
    pub addr: String,
    pub clock: Clock,
    pub metrics: ShardingMetrics,
    pub instance_mode: InstanceMode,
    pub base_dir: Option<PathBuf>,
    pub load_factor: f64,
}

enum Command {
    Configs {
        all: Vec<InstanceConfig>,
        owned: Vec<InstanceConfig>,
    },
    Deleted(String),
    /// Resolved once every target was handed over (or at the deadline) and the agent key says so.
    Leave(tokio::time::Instant, oneshot::Sender<()>),
}

/// The handle of the running task.
#[derive(Debug)]
pub struct TargetSharding {
    commands: mpsc::UnboundedSender<Command>,
    view: Arc<ShardView>,
    registry: Arc<Registry>,
    task: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl TargetSharding {
    /// Starts following the sharding keys, the leader and the task.
    pub fn start(cx: Context) -> Arc<Self> {
        let view = Arc::new(ShardView::start(cx.kv.clone(), cx.layout.clone()));
        let stop = CancellationToken::new();
        let (commands, rx) = mpsc::unbounded_channel();
        let registry = cx.registry.clone();
        let ring_now = cx.ring_now.clone();
        let ring_now_timeout = ring_now().heartbeat_timeout();
        tokio::spawn(leader::run(
            LeaderContext {
                kv: cx.kv.clone(),
                layout: cx.layout.clone(),
                configs: cx.configs.clone(),
                id: cx.id.clone(),
                addr: cx.addr.clone(),
                clock: cx.clock,
                load_factor: cx.load_factor,
                ring: Box::new(move || ring_now()),
            },
            cx.ring.clone(),
            view.subscribe(),
            stop.clone(),
        ));
        let (status_tx, status_rx) = watch::channel(None);
        let (written_tx, written_rx) = watch::channel(0u64);
        tokio::spawn(write_status(
            cx.kv.clone(),
            cx.layout.clone(),
            cx.layout.agent_key(&cx.id),
            status_rx,
            written_tx,
            stop.clone(),
        ));
        let runtime = Runtime {
            publisher: Publisher::new(
                cx.kv.clone(),
                cx.layout.clone(),
                cx.base_dir.clone(),
                cx.metrics.clone(),
            ),
            view: view.subscribe(),
            handoffs: Handoffs::new(),
            modes: HashMap::new(),
            configs: BTreeMap::new(),
            instances: HashMap::new(),
            applied: BTreeMap::new(),
            mine: HashSet::new(),
            moves: Moves::default(),
            index: Index::default(),
            owners: Owners::default(),
            built: HashMap::new(),
            status: status_tx,
            written: written_rx,
            leaving: None,
            fence_check: None,
            live_check: None,
            key_refresh: liveness::key_refresh(ring_now_timeout),
            last_status: tokio::time::Instant::now(),
            first_epoch: true,
            reapply: false,
            cx,
        };
        let task = tokio::spawn(runtime.run(rx, stop.clone()));
        Arc::new(TargetSharding {
            commands,
            view,
            registry,
            task: Mutex::new(Some(task)),
            stop,
        })
    }

    /// The configs in the store (`all`, validated) and the ones this agent owns on the config
    /// ring (`owned`: it runs their discovery).
    pub fn set_configs(&self, all: Vec<InstanceConfig>, owned: Vec<InstanceConfig>) {
        let _ = self.commands.send(Command::Configs { all, owned });
    }

    /// A config was deleted from the store.
    pub fn deleted(&self, name: &str) {
        let _ = self.commands.send(Command::Deleted(name.to_owned()));
    }

    /// The latest sharding keys (for the ring page and `ring owner`).
    pub fn state(&self) -> Arc<ShardState> {
        self.view.current()
    }

    /// The assigned source the instances' scrape managers read.
    pub fn source(&self) -> Arc<dyn AssignedSource> {
        self.registry.clone()
    }

    /// Graceful leave, once the ring says LEAVING: waits until every target this agent wrote
    /// has been handed over and its agent key says so (or until `deadline`), then stops.
    pub async fn leave(&self, deadline: tokio::time::Instant) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(deadline, tx)).is_ok() {
            let _ = tokio::time::timeout_at(deadline, rx).await;
        }
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// Where each published target is, for the current `ShardState`.
#[derive(Default)]
struct Index {
    /// The `ConfigTargets` it was built from (by pointer): rebuilt when one changes.
    from: Vec<(String, usize)>,
    by_key: HashMap<TargetKey, TargetRef>,
}

#[derive(Clone)]
struct TargetRef {
    config: String,
    job: usize,
    target: usize,
    interval: Duration,
}

impl Index {
    fn refresh(&mut self, state: &ShardState) {
        let from: Vec<(String, usize)> = state
            .targets
            .iter()
            .map(|(c, t)| (c.clone(), Arc::as_ptr(t) as usize))
            .collect();
        if from == self.from {
            return;
        }
        self.by_key.clear();
        for (config, ct) in &state.targets {
            for ((j, i), key) in ct.positions().zip(&ct.keys) {
                let interval = ct.doc.jobs[j]
                    .labels(i)
                    .find(|(n, _)| *n == "__scrape_interval__")
                    .and_then(|(_, v)| PromDuration::parse(v).ok())
                    .map_or(Duration::from_secs(60), PromDuration::as_std);
                self.by_key.insert(
                    *key,
                    TargetRef {
                        config: config.clone(),
                        job: j,
                        target: i,
                        interval,
                    },
                );
            }
        }
        self.from = from;
    }
}

/// The owner of every key in the current assignment.
#[derive(Default)]
struct Owners {
    epoch: u64,
    from: usize,
    by_key: HashMap<TargetKey, String>,
}

impl Owners {
    fn refresh(&mut self, state: &ShardState) {
        let ptr = Arc::as_ptr(&state.assignment) as usize;
        if ptr == self.from {
            return;
        }
        let a = &state.assignment;
        self.by_key.clear();
        for c in &a.configs {
            for (k, &o) in c.keys.iter().zip(&c.owners) {
                if let Some(id) = a.members.get(o as usize) {
                    self.by_key.insert(*k, id.clone());
                }
            }
        }
        self.epoch = a.epoch;
        self.from = ptr;
    }
}

/// What a target's loop must do, as published in its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Hold,
    Write { after_ms: Option<i64> },
    Release,
}

struct Runtime {
    cx: Context,
    view: watch::Receiver<Arc<ShardState>>,
    publisher: Publisher,
    handoffs: Handoffs,
    modes: HashMap<TargetKey, Want>,
    /// Every valid config in the store, by name.
    configs: BTreeMap<String, InstanceConfig>,
    /// The instance each of `configs` runs in (its group hash is a YAML rendering and an MD5:
    /// computed once per config change, not once per target per step).
    instances: HashMap<String, String>,
    /// Configs run as instances here.
    applied: BTreeMap<String, InstanceConfig>,
    /// Keys this agent owns in the epoch it applied.
    mine: HashSet<TargetKey>,
    /// `agent_targets_moved_total`'s counting.
    moves: Moves,
    index: Index,
    owners: Owners,
    /// Targets built from published labels, with the config they were built for.
    built: HashMap<TargetKey, (Arc<Target>, usize)>,
    /// The newest status, numbered; `written` is the number of the last one in the store.
    status: watch::Sender<Option<(u64, Arc<AgentStatus>)>>,
    written: watch::Receiver<u64>,
    leaving: Option<(tokio::time::Instant, oneshot::Sender<()>)>,
    /// When this agent's own heartbeat, as the ring shows it now, gets old enough to fence it.
    fence_check: Option<tokio::time::Instant>,
    /// When the first live peer would stop being alive unless seen again.
    live_check: Option<tokio::time::Instant>,
    /// How often the agent key is rewritten without a change (it is half of this agent's
    /// liveness, see `agent/src/cluster/liveness.rs`).
    key_refresh: Duration,
    last_status: tokio::time::Instant,
    first_epoch: bool,
    /// A config this agent did not know arrived after it applied the current epoch: the
    /// epoch's targets of that config were left out of `mine` then (see [`Runtime::step`]),
    /// so the epoch is applied again. No new epoch may ever come (an agent restarted in place
    /// finds itself in the assignment before its config store listing reaches this task).
    reapply: bool,
}

impl Runtime {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
    ) {
        let mut ring = self.cx.ring.clone();
        loop {
            let deadline = [
                self.handoffs.next_deadline(),
                self.fence_check,
                self.live_check,
            ]
            .into_iter()
            .flatten()
            .fold(self.last_status + self.key_refresh, |a, b| a.min(b));
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    None => break,
                    Some(Command::Configs { all, owned }) => {
                        let configs: BTreeMap<String, InstanceConfig> =
                            all.into_iter().map(|c| (c.name.clone(), c)).collect();
                        if configs != self.configs {
                            self.reapply |= configs.keys().any(|n| !self.configs.contains_key(n));
                            // Targets are built again for changed scrape configs.
                            self.instances = configs
                                .values()
                                .map(|c| (c.name.clone(), instance_name(c, self.cx.instance_mode)))
                                .collect();
                            self.configs = configs;
                            self.built.clear();
                        }
                        self.publisher.set(owned).await;
                    }
                    Some(Command::Deleted(name)) => {
                        self.configs.remove(&name);
                        self.instances.remove(&name);
                        self.publisher.deleted(&name).await;
                    }
                    Some(Command::Leave(deadline, tx)) => self.leaving = Some((deadline, tx)),
                },
                changed = self.view.changed() => if changed.is_err() { break },
                // Leaving: the final status reaching the store may be what it waits for.
                changed = self.written.changed(), if self.leaving.is_some() => if changed.is_err() { break },
                changed = ring.changed() => if changed.is_err() { break },
                event = self.cx.events.recv() => match event {
                    None => break,
                    Some(event) => {
                        self.loop_event(event);
                        // A burst (every loop of a new epoch reporting its first scrape) is
                        // one step: each step is O(targets), one per event would be quadratic
                        // and keep this runtime's workers (heartbeats, the API) waiting.
                        while let Ok(event) = self.cx.events.try_recv() {
                            self.loop_event(event);
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            self.step().await;
            if let Some((deadline, _)) = &self.leaving {
                let done = self.handoffs.handed_over()
                    && self.handoffs.writing() == 0
                    && *self.written.borrow() >= self.status_seq();
                if done || tokio::time::Instant::now() >= *deadline {
                    if !done {
                        tracing::warn!(
                            writing = self.handoffs.writing(),
                            "leaving before every target was handed over"
                        );
                    }
                    if let Some((_, tx)) = self.leaving.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        self.publisher.stop_all().await;
    }

    fn loop_event(&mut self, event: LoopEvent) {
        match event {
            LoopEvent::Scraped { key } => self.handoffs.scraped(TargetKey(key)),
            LoopEvent::Released { key, last_ms } => {
                let key = TargetKey(key);
                self.modes.remove(&key);
                let now = tokio::time::Instant::now();
                let acts = self.handoffs.flushed(
                    key,
                    last_ms,
                    self.mine.contains(&key),
                    now,
                    self.cx.clock.unix_millis(),
                );
                self.perform(acts);
            }
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Hold(k) => {
                    self.modes.insert(k, Want::Hold);
                }
                Action::Write { key, after_ms } => {
                    self.modes.insert(key, Want::Write { after_ms });
                }
                Action::Release(k) => {
                    self.modes.insert(k, Want::Release);
                }
                Action::Drop(k) => {
                    self.modes.remove(&k);
                }
            }
        }
    }

    /// One round: apply the newest epoch, decide, publish to the loops and the store.
    async fn step(&mut self) {
        let state = self.view.borrow_and_update().clone();
        let now = tokio::time::Instant::now();
        let now_ms = self.cx.clock.unix_millis();
        self.index.refresh(&state);
        self.owners.refresh(&state);

        let new_epoch = state.assignment.epoch > self.handoffs.epoch();
        if self.first_epoch || new_epoch || self.reapply {
            let mine: HashMap<TargetKey, Duration> = self
                .owners
                .by_key
                .iter()
                .filter(|(_, o)| **o == self.cx.id)
                .filter_map(|(k, _)| {
                    let r = self.index.by_key.get(k)?;
                    // A config not known here yet is left out until it arrives (`reapply`).
                    self.configs
                        .contains_key(&r.config)
                        .then_some((*k, r.interval))
                })
                .collect();
            let owners = &self.owners.by_key;
            let acts = self.handoffs.apply_epoch(
                state.assignment.epoch,
                &mine,
                |k| owners.get(&k).cloned(),
                now,
                now_ms,
            );
            let keys: HashSet<TargetKey> = mine.keys().copied().collect();
            let (moved_in, moved_out) = self.moves.applied(
                state.assignment.epoch,
                &self.mine,
                &keys,
                &self.owners.by_key,
            );
            self.cx.metrics.moved("in").inc_by(moved_in);
            self.cx.metrics.moved("out").inc_by(moved_out);
            self.first_epoch = false;
            self.reapply = false;
            self.mine = keys;
            self.cx.metrics.targets_assigned.set(self.mine.len() as i64);
            self.cx
                .metrics
                .assignment_epoch
                .set(state.assignment.epoch as i64);
            self.perform(acts);
        }
        let unassigned = self
            .index
            .by_key
            .keys()
            .filter(|k| !self.owners.by_key.contains_key(k))
            .count();
        self.cx.metrics.targets_unassigned.set(unassigned as i64);

        // Targets no longer published are gone: their loops stop with staleness markers.
        let gone: Vec<TargetKey> = self
            .modes
            .keys()
            .filter(|k| !self.index.by_key.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if self.modes.get(&k) != Some(&Want::Release) {
                self.modes.remove(&k);
                self.handoffs.forget(k);
            }
        }

        let ring = (self.cx.ring_now)();
        let timeout = ring.heartbeat_timeout();
        let wall = self.cx.clock.now();
        let (fenced, fence_in) = fence(
            &ring,
            &self.cx.id,
            state.agents.get(&self.cx.id).map(|s| &**s),
            wall,
        );
        self.fence_check = fence_in.map(|d| now + d);
        let acts = self.handoffs.fence(fenced, now);
        self.perform(acts);
        let live: BTreeSet<&str> = ring
            .instances()
            .iter()
            .filter(|m| liveness::alive(m, state.agents.get(&m.id).map(|s| &**s), timeout, wall))
            .map(|m| m.id.as_str())
            .collect();
        // A peer that dies writes nothing: look again when the first live one would expire.
        self.live_check = liveness::next_expiry(&ring, &state.agents, wall).map(|d| now + d);
        let peers = Peers::new(
            state
                .agents
                .iter()
                .filter(|(id, _)| **id != self.cx.id)
                .map(|(id, st)| (id.as_str(), &**st, live.contains(id.as_str()))),
        );
        let moved_in = self.moves.peers_seen(&peers);
        self.cx.metrics.moved("in").inc_by(moved_in);
        let acts = self.handoffs.evaluate(&peers, now);
        self.perform(acts);
        let handoffs = &self.handoffs;
        self.moves.written(|k| handoffs.is_writer(k));

        self.publish_jobs(&state).await;
        if self.handoffs.take_dirty() || now >= self.last_status + self.key_refresh {
            self.publish_status(now_ms);
            self.last_status = now;
        }
    }

    /// Publishes every job's targets and runs exactly the instances they need.
    async fn publish_jobs(&mut self, state: &ShardState) {
        let mut jobs: BTreeMap<(String, String), AssignedJob> = BTreeMap::new();
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let keys: Vec<(TargetKey, Want)> = self.modes.iter().map(|(k, w)| (*k, *w)).collect();
        for (key, want) in keys {
            let Some(r) = self.index.by_key.get(&key).cloned() else {
                // A released target no longer published: it is only in its job's release list.
                continue;
            };
            let (Some(cfg), Some(ct)) = (self.configs.get(&r.config), state.targets.get(&r.config))
            else {
                continue;
            };
            let job_name = &ct.doc.jobs[r.job].job;
            let Some(sc) = cfg.scrape_configs.iter().find(|s| &s.job_name == job_name) else {
                continue;
            };
            let Some(instance) = self.instances.get(&r.config).cloned() else {
                continue;
            };
            wanted.insert(r.config.clone());
            let entry = jobs
                .entry((instance, job_name.clone()))
                .or_insert_with(|| AssignedJob {
                    forced_error: ct.doc.jobs[r.job].forced_error.clone(),
                    ..AssignedJob::default()
                });
            let mode = match want {
                Want::Release => {
                    entry.release.push(key.0);
                    continue;
                }
                Want::Hold => Mode::Hold,
                Want::Write { after_ms } => Mode::Write { after_ms },
            };
            let ptr = Arc::as_ptr(ct) as usize;
            let target = match self.built.get(&key) {
                Some((t, p)) if *p == ptr => t.clone(),
                _ => {
                    let labels = Labels::from_pairs(ct.doc.jobs[r.job].labels(r.target));
                    match from_full_labels(&labels, sc) {
                        Ok(t) => {
                            let t = Arc::new(t);
                            self.built.insert(key, (t.clone(), ptr));
                            t
                        }
                        Err(e) => {
                            tracing::warn!(config = %r.config, job = %job_name, target_key = %key, error = %e, "assigned target is not valid here");
                            continue;
                        }
                    }
                }
            };
            entry.targets.push(AssignedTarget {
                key: key.0,
                target,
                mode,
            });
        }
        // Instances first, so a job's subscription exists when its targets arrive.
        for name in &wanted {
            let cfg = &self.configs[name];
            if self.applied.get(name) != Some(cfg) {
                match self.cx.manager.apply(cfg.clone()).await {
                    Ok(()) => {
                        self.applied.insert(name.clone(), cfg.clone());
                    }
                    Err(e) => tracing::error!(config = %name, error = %e, "config not run"),
                }
            }
        }
        for (instance, job) in self.cx.registry.published() {
            if !jobs.contains_key(&(instance.clone(), job.clone())) {
                self.cx
                    .registry
                    .set(&instance, &job, AssignedJob::default());
            }
        }
        for ((instance, job), mut value) in jobs {
            value.targets.sort_by_key(|t| t.key);
            value.release.sort_unstable();
            self.cx.registry.set(&instance, &job, value);
        }
        // An instance stays while its config is in the store, even with no target here now:
        // stopped and started again when a target comes back, it would replay its WAL, and
        // remote_write (at least once: per-shard watermarks) would resend samples already
        // delivered, out of order where the series went on at another agent.
        let stale: Vec<String> = self
            .applied
            .keys()
            .filter(|n| !self.configs.contains_key(*n))
            .cloned()
            .collect();
        for name in stale {
            // Deleted: its targets' loops stopped with staleness markers.
            self.cx.manager.delete(&name, false).await;
            self.applied.remove(&name);
        }
    }

    fn publish_status(&mut self, now_ms: i64) {
        let Published {
            ready,
            releasing,
            released,
            started,
        } = self.handoffs.published();
        let active_series = self
            .cx
            .manager
            .shared()
            .instance_metrics
            .active_series_total();
        let st = AgentStatus {
            v: FORMAT_VERSION,
            addr: self.cx.addr.clone(),
            epoch: self.handoffs.epoch(),
            ready,
            releasing,
            released,
            started,
            targets: self.handoffs.writing(),
            active_series,
            updated_ms: now_ms,
        };
        let seq = self.status_seq() + 1;
        self.status.send_replace(Some((seq, Arc::new(st))));
    }

    /// The number of the newest status published (0: none yet).
    fn status_seq(&self) -> u64 {
        self.status.borrow().as_ref().map_or(0, |(seq, _)| *seq)
    }
}

/// The instance a config runs in (the instance manager's grouping).
fn instance_name(cfg: &InstanceConfig, mode: InstanceMode) -> String {
    match mode {
        InstanceMode::Distinct => cfg.name.clone(),
        InstanceMode::Shared => group_hash(cfg),
    }
}

/// The part of `heartbeat_timeout` an agent's own heartbeat may age before it fences itself
/// (stops writing): the others judge it dead at the whole timeout, so it stops a quarter of
/// the timeout (at least a second) before any of them can take a target over without a handoff.
fn fence_age(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout.saturating_sub((heartbeat_timeout / 4).max(Duration::from_secs(1)))
}

/// Whether agent `id` must fence itself by how the others see it alive (its heartbeat in
/// `ring`, the KV-outage grace applied: during an outage nobody is judged by it, and nobody
/// fences; or its own agent key `own` as the store holds it, whichever is newer: see
/// `agent/src/cluster/liveness.rs`), and if not, how long until it must at the latest (when it
/// will look again). Not a member (not yet registered, or forgotten): fenced, no timer (the
/// ring wakes the runtime when it changes).
fn fence(
    ring: &Ring,
    id: &str,
    own: Option<&AgentStatus>,
    now: std::time::SystemTime,
) -> (bool, Option<Duration>) {
    let timeout = ring.heartbeat_timeout();
    if timeout.is_zero() {
        return (false, None);
    }
    let Some(me) = ring.instances().iter().find(|m| m.id == id) else {
        return (true, None);
    };
    let seen_ms = liveness::last_seen_ms(me, own);
    let age = (crate::clock::unix_millis(now) - seen_ms).max(0) as u128 * 1_000_000;
    let limit = fence_age(timeout).as_nanos();
    if age > limit {
        (true, None)
    } else {
        let left = (limit - age).min(u64::MAX as u128) as u64;
        (
            false,
            Some(Duration::from_nanos(left) + Duration::from_millis(1)),
        )
    }
}

/// Writes the newest status, retrying while the store is unreachable; reports the number of
/// the last status written (so a leaving agent stops only once its final handoff entries are in the
/// store, where the next writers read their cutoff).
async fn write_status(
    kv: Arc<dyn KvStore>,
    layout: Layout,
    key: String,
    mut rx: watch::Receiver<Option<(u64, Arc<AgentStatus>)>>,
    written: watch::Sender<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let Some((seq, st)) = rx.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match store::write(&*kv, &layout, &key, &*st, Expect::Any).await {
                Ok(_) => {
                    written.send_replace(seq);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write this agent's sharding key; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if rx.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
    }
}

/// What `agent_targets_moved_total` counts: targets that change agent, in (`in`) or out
/// (`out`) of this one, and not a target first placed (new to the assignment) nor one that
/// left it (no longer discovered). Between two epochs the agent applied, a move is a target
/// that had an owner in the earlier one and changes to or from this agent in the later one.
/// The first epoch an agent applies has no earlier one here: a joining agent may first read
/// the assignment after the leader already gave it its share, so its targets are sorted by
/// what the other agents publish instead: moved in when another agent lists one as
/// `releasing` or `released` (it was written there), first placed (or kept across a restart
/// of this agent) when this agent starts writing it without that. Limits: a first-epoch target
/// taken over from an agent that died publishes no handover and is not counted in; an agent
/// restarted while another still lists a target it had just received as `released` (for
/// 2 x decide_timeout) counts that target in again, as its counter started again at 0.
#[derive(Debug, Default)]
struct Moves {
    /// The last epoch the agent applied and the keys with an owner in it; `None` before the
    /// first.
    applied: Option<(u64, HashSet<TargetKey>)>,
    /// Targets of the first epoch, or of a config that arrived after its epoch was applied,
    /// not sorted yet.
    unsorted: HashSet<TargetKey>,
}

impl Moves {
    /// `epoch` was applied (or applied again, when a config it names arrived late): this
    /// agent had `before` and has `mine`; `owners` is the epoch's assignment. Returns the
    /// targets moved (in, out).
    fn applied(
        &mut self,
        epoch: u64,
        before: &HashSet<TargetKey>,
        mine: &HashSet<TargetKey>,
        owners: &HashMap<TargetKey, String>,
    ) -> (u64, u64) {
        // An assignment that gave nothing to anyone is no earlier epoch to compare with: it is
        // what an agent holds before its first read of the store (so a joining agent that
        // reads its first assignment only after the leader gave it its share goes from it
        // straight to that share), or a cluster with no targets yet.
        if self.applied.as_ref().is_some_and(|(_, a)| a.is_empty()) {
            self.applied = None;
        }
        let Some((last, assigned_before)) = &mut self.applied else {
            self.unsorted = mine.clone();
            self.applied = Some((epoch, owners.keys().copied().collect()));
            return (0, 0);
        };
        if epoch == *last {
            // Applied again for a config that arrived late (a joining agent often reads the
            // assignment before its config listing): its targets had no earlier epoch here
            // either, so they are sorted from the handovers too.
            self.unsorted.retain(|k| mine.contains(k));
            self.unsorted.extend(mine.difference(before).copied());
            return (0, 0);
        }
        let moved_in = mine
            .difference(before)
            .filter(|k| assigned_before.contains(k))
            .count() as u64;
        let moved_out = before
            .difference(mine)
            .filter(|k| owners.contains_key(k))
            .count() as u64;
        *last = epoch;
        *assigned_before = owners.keys().copied().collect();
        // A first-epoch target that moved away again is settled by that move.
        self.unsorted.retain(|k| mine.contains(k));
        (moved_in, moved_out)
    }

    /// The other agents' published lists were read: returns the first-epoch targets they
    /// show handed over to this agent (moved in).
    fn peers_seen(&mut self, peers: &Peers) -> u64 {
        let before = self.unsorted.len();
        self.unsorted.retain(|k| !peers.handing_over(*k));
        (before - self.unsorted.len()) as u64
    }

    /// After the handoff decisions: first-epoch targets this agent writes without anyone
    /// having handed them over were placed here first.
    fn written(&mut self, is_writer: impl Fn(TargetKey) -> bool) {
        self.unsorted.retain(|k| !is_writer(*k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::model::{InstanceDesc, InstanceState};
    use std::time::SystemTime;

    fn ring(heartbeat_s: i64) -> Ring {
        let mut d = Desc::default();
        d.ingesters.insert(
            "me".into(),
            InstanceDesc {
                addr: "me:1".into(),
                timestamp: heartbeat_s,
                state: InstanceState::Active as i32,
                tokens: vec![1],
                zone: String::new(),
                registered_timestamp: 0,
                id: "me".into(),
            },
        );
        Ring::new(d, Duration::from_secs(15))
    }

    fn key(updated_ms: i64) -> AgentStatus {
        AgentStatus {
            v: FORMAT_VERSION,
            epoch: 1,
            updated_ms,
            ..AgentStatus::default()
        }
    }

    /// The fence follows what the others judge by: a heartbeat that keeps losing the ring CAS
    /// does not fence an agent whose key is fresh; both old (over 15 s - 3.75 s) does.
    #[test]
    fn an_agent_fences_itself_only_when_neither_heartbeat_nor_key_is_fresh() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!fence(&ring(999), "me", None, now).0);
        assert!(fence(&ring(985), "me", None, now).0);
        let (fenced, recheck) = fence(&ring(985), "me", Some(&key(998_000)), now);
        assert!(!fenced);
        // Looks again when the key gets 11.25 s old: 9.25 s from now.
        assert_eq!(recheck, Some(Duration::from_millis(9_251)));
        assert!(fence(&ring(985), "me", Some(&key(988_000)), now).0);
        assert_eq!(fence(&ring(999), "other", None, now), (true, None));
    }

    fn keys(ks: &[u64]) -> HashSet<TargetKey> {
        ks.iter().map(|k| TargetKey(*k)).collect()
    }

    fn owners(of: &[(u64, &str)]) -> HashMap<TargetKey, String> {
        of.iter()
            .map(|(k, o)| (TargetKey(*k), (*o).to_owned()))
            .collect()
    }

    fn peer(releasing: &[u64], released: &[u64]) -> AgentStatus {
        AgentStatus {
            releasing: releasing.iter().map(|k| TargetKey(*k)).collect(),
            released: released.iter().map(|k| (TargetKey(*k), Some(1))).collect(),
            ..AgentStatus::default()
        }
    }

    /// The join race of tests/sharding.rs: agent-3 first reads the assignment after the leader
    /// gave it targets 1 and 2 (moved from agent-1) and 3 (first placed). The first epoch has
    /// nothing to compare with, so the handovers the others publish decide: 1 and 2 count as
    /// moved in when agent-1 lists them releasing or released, 3 is written without a handover.
    #[test]
    fn a_joining_agent_counts_moves_of_its_first_epoch_from_the_handovers() {
        let mut m = Moves::default();
        let assigned = owners(&[(1, "a3"), (2, "a3"), (3, "a3"), (4, "a1")]);
        assert_eq!(
            m.applied(7, &keys(&[]), &keys(&[1, 2, 3]), &assigned),
            (0, 0)
        );
        // agent-1 has not applied epoch 7 yet: nothing is known.
        let a1 = peer(&[], &[]);
        assert_eq!(m.peers_seen(&Peers::new([("a1", &a1, true)])), 0);
        // Target 3 has no writer elsewhere: agent-3 writes it at once, a first placement.
        m.written(|k| k == TargetKey(3));
        let a1 = peer(&[1, 2], &[]);
        assert_eq!(m.peers_seen(&Peers::new([("a1", &a1, true)])), 2);
        m.written(|_| false);
        // Released later, and seen again: counted once.
        let a1 = peer(&[], &[1, 2, 3]);
        assert_eq!(m.peers_seen(&Peers::new([("a1", &a1, true)])), 0);
        assert!(m.unsorted.is_empty());
        // The next epoch moves 3 to agent-1 and brings 4: counted by the epochs.
        let next = owners(&[(1, "a3"), (2, "a3"), (3, "a1"), (4, "a3")]);
        assert_eq!(
            m.applied(8, &keys(&[1, 2, 3]), &keys(&[1, 2, 4]), &next),
            (1, 1)
        );
    }

    /// The join as it happens: the agent's first step applies the empty assignment it holds
    /// before its first read of the store (epoch 0); its key goes out, the leader gives it its
    /// share, and the first assignment it reads already has it. Moves are then counted from
    /// the handovers, as for a first epoch.
    #[test]
    fn a_joiner_that_first_applied_the_empty_assignment_counts_its_share() {
        let mut m = Moves::default();
        assert_eq!(
            m.applied(0, &keys(&[]), &keys(&[]), &HashMap::new()),
            (0, 0)
        );
        let assigned = owners(&[(1, "a3"), (2, "a3"), (4, "a1")]);
        assert_eq!(m.applied(7, &keys(&[]), &keys(&[1, 2]), &assigned), (0, 0));
        let a1 = peer(&[1], &[2]);
        assert_eq!(m.peers_seen(&Peers::new([("a1", &a1, true)])), 2);
        // A cluster's very first assignment after an empty one: first placements.
        let mut m = Moves::default();
        m.applied(0, &keys(&[]), &keys(&[]), &HashMap::new());
        let assigned = owners(&[(1, "a1"), (2, "a2")]);
        assert_eq!(m.applied(1, &keys(&[]), &keys(&[1]), &assigned), (0, 0));
        m.written(|_| true);
        assert_eq!(
            m.peers_seen(&Peers::new([("a2", &peer(&[], &[]), true)])),
            0
        );
    }

    /// The join as CI saw it fail: the agent applied an assignment (without itself), then the
    /// one with its share, before its config listing arrived (so nothing of that config was
    /// its own yet), then the config: the epoch applied again brings the share, which is
    /// sorted from the handovers.
    #[test]
    fn a_share_that_arrives_with_a_late_config_counts_from_the_handovers() {
        let mut m = Moves::default();
        let before = owners(&[(1, "a1"), (2, "a2")]);
        assert_eq!(m.applied(6, &keys(&[]), &keys(&[]), &before), (0, 0));
        let share = owners(&[(1, "a3"), (2, "a2")]);
        // The config is not known here yet: no target is this agent's.
        assert_eq!(m.applied(7, &keys(&[]), &keys(&[]), &share), (0, 0));
        assert_eq!(m.applied(7, &keys(&[]), &keys(&[1]), &share), (0, 0));
        let a1 = peer(&[1], &[]);
        assert_eq!(m.peers_seen(&Peers::new([("a1", &a1, true)])), 1);
    }

    /// A target first placed in the first epoch, and one of a config that arrived after that
    /// epoch was applied (it is applied again), are not moves unless handed over; a later
    /// epoch applied again for a late config moves nothing.
    #[test]
    fn first_placements_and_late_configs_are_not_moves() {
        let mut m = Moves::default();
        let assigned = owners(&[(1, "a1"), (2, "a1")]);
        assert_eq!(m.applied(1, &keys(&[]), &keys(&[1]), &assigned), (0, 0));
        assert_eq!(m.applied(1, &keys(&[1]), &keys(&[1, 2]), &assigned), (0, 0));
        assert_eq!(m.unsorted, keys(&[1, 2]));
        m.written(|_| true);
        let a2 = peer(&[], &[1, 2]);
        assert_eq!(m.peers_seen(&Peers::new([("a2", &a2, true)])), 0);
        let next = owners(&[(1, "a1"), (2, "a1"), (3, "a1"), (5, "a1")]);
        assert_eq!(
            m.applied(2, &keys(&[1, 2]), &keys(&[1, 2, 3]), &next),
            (0, 0)
        );
        assert_eq!(
            m.applied(2, &keys(&[1, 2, 3]), &keys(&[1, 2, 3, 5]), &next),
            (0, 0)
        );
    }
}
