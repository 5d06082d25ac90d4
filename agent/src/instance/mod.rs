//! A running instance: one config's scraping, WAL and remote_write (docs/compat.md,
//! *Instance config* and *Instance lifecycle*).
//!
//! ```text
//! discovery → scrape loops → WalStorage (WAL) ─commit signal→ watcher → QueueManager → receiver
//!                                   ↑ truncation every wal_truncate_frequency, at
//!                                     lowest sent timestamp − min_wal_time (clamped by max_wal_time)
//! ```
//!
//! The WAL lives in `<wal_directory>/<instance>/wal`; each remote_write keeps its progress in
//! `<wal_directory>/<instance>/remote_write/<name>`.

pub mod cleaner;
pub mod group;
pub mod manager;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::InstanceConfig;
use crate::remote_write::{QueueManager, RemoteWriteMetrics};
use crate::scrape::host_filter::HostFilter;
use crate::scrape::manager::{ScrapeManager, TargetInfo};
use crate::wal::{Wal, WalOptions};
use storage::WalStorage;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {name}: opening the WAL in {dir}: {message}")]
    Wal {
        name: String,
        dir: PathBuf,
        message: String,
    },
    #[error("instance {name}: remote_write {remote}: {message}")]
    RemoteWrite {
        name: String,
        remote: String,
        message: String,
    },
    #[error("instance {name}: {message}")]
    Scrape { name: String, message: String },
}

/// The span an instance's tasks run in: every line they log carries `instance=<name>` (see
/// agent/src/logging.rs). At ERROR level so that it is enabled whatever `--log.level` is.
pub fn span(name: &str) -> tracing::Span {
    tracing::error_span!("instance", instance = %name)
}

/// The folder name of an instance under `wal_directory`: the config name with `/` (allowed in
/// config names, as `team/a`) turned into `--`, so every instance is one folder level deep.
pub fn dir_name(name: &str) -> String {
    name.replace('/', "--")
}

/// `write_relabel_configs` as the queue's per-series filter (run once per series, after the
/// external labels are added, as Prometheus does); `None` when there are none. The rules were
/// compiled when the config was validated: nothing here can fail.
fn write_relabel_filter(
    rw: &crate::config::instance::RemoteWriteConfig,
) -> Option<crate::remote_write::SeriesFilter> {
    if rw.write_relabel_configs.is_empty() {
        return None;
    }
    let rules = rw.write_relabel_configs.clone();
    Some(Box::new(
        move |labels: &mut crate::labels::LabelsBuilder| crate::relabel::process(labels, &rules),
    ))
}

/// One remote_write endpoint of an instance.
struct Remote {
    queue: Arc<QueueManager>,
    watcher: JoinHandle<()>,
    /// Sends the targets' metadata every `metadata_config.send_interval` (when `send`).
    metadata: Option<JoinHandle<()>>,
    stop: CancellationToken,
    progress: PathBuf,
}

/// A running instance.
pub struct Instance {
    cfg: InstanceConfig,
    dir: PathBuf,
    storage: Arc<WalStorage>,
    scrape: Arc<ScrapeManager>,
    remotes: Vec<Remote>,
    housekeeping: JoinHandle<()>,
    stop: CancellationToken,
    metrics: InstanceMetrics,
    label: InstanceLabel,
    /// `write_stale_on_shutdown`, unless targets are assigned by the ring (then a target's
    /// series go on at its next owner and markers would cut them).
    stale_at_any_stop: bool,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.cfg.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

type InstanceLabel = Vec<(String, String)>;

/// `key` is `instance_name` (distinct mode) or `instance_group_name` (shared mode), see
/// [`manager::metric_label`].
fn instance_label(key: &str, name: &str) -> InstanceLabel {
    vec![(key.to_owned(), name.to_owned())]
}

/// Per-instance WAL metrics, labelled like the old agent's instance metrics: `instance_name`
/// in distinct mode, `instance_group_name` in shared mode.
#[derive(Clone)]
pub struct InstanceMetrics {
    /// Samples a truncation removed before remote_write sent them, because the cut was moved
    /// forward to `now - max_wal_time` (see [`crate::wal::clamped_by_max_wal_time`]).
    pub truncate_dropped_samples: Family<InstanceLabel, Counter>,
    /// Truncations that wrote a checkpoint.
    pub truncations: Family<InstanceLabel, Counter>,
    pub truncation_failures: Family<InstanceLabel, Counter>,
    pub write_failures: Family<InstanceLabel, Counter>,
    pub write_dropped_samples: Family<InstanceLabel, Counter>,
    /// Series the WAL tracks as active (the old agent's name, so its dashboards work).
    pub active_series: Family<InstanceLabel, Gauge>,
    /// Series garbage-collected at a truncation that a checkpoint has not passed yet (the
    /// old agent's name).
    pub deleted_series: Family<InstanceLabel, Gauge>,
    /// Series texts in the scrape caches of the instance's targets.
    pub scrape_cache_entries: Family<InstanceLabel, Gauge>,
    /// Series in the remote_write series tables of the instance, summed over its endpoints.
    pub remote_write_series: Family<InstanceLabel, Gauge>,
    /// Samples written to the WAL (the old agent's name).
    pub samples_appended: Family<InstanceLabel, Counter>,
    /// Corrupt or torn WAL tails repaired when the WAL was opened.
    pub corruptions: Family<InstanceLabel, Counter>,
    /// The same per instance, summed by [`InstanceMetrics::active_series_total`] (a metric
    /// family cannot be read back).
    active_by_instance: Arc<std::sync::Mutex<std::collections::HashMap<InstanceLabel, u64>>>,
}

impl std::fmt::Debug for InstanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceMetrics")
    }
}

impl InstanceMetrics {
    /// Registers the families (counter names without `_total`: prometheus-client appends it).
    pub fn register(registry: &mut Registry) -> Self {
        let m = InstanceMetrics {
            truncate_dropped_samples: Family::default(),
            truncations: Family::default(),
            truncation_failures: Family::default(),
            write_failures: Family::default(),
            write_dropped_samples: Family::default(),
            active_series: Family::default(),
            deleted_series: Family::default(),
            scrape_cache_entries: Family::default(),
            remote_write_series: Family::default(),
            samples_appended: Family::default(),
            corruptions: Family::default(),
            active_by_instance: Arc::default(),
        };
        registry.register(
            "agent_wal_truncate_dropped_samples",
            "Samples removed by a WAL truncation before remote_write sent them, because the \
             WAL was older than max_wal_time",
            m.truncate_dropped_samples.clone(),
        );
        registry.register(
            "agent_wal_truncations",
            "WAL truncations that wrote a checkpoint",
            m.truncations.clone(),
        );
        registry.register(
            "agent_wal_truncation_failures",
            "WAL truncations that failed",
            m.truncation_failures.clone(),
        );
        registry.register(
            "agent_wal_write_failures",
            "WAL writes (commits) that failed, e.g. the disk was full; their samples are dropped",
            m.write_failures.clone(),
        );
        registry.register(
            "agent_wal_write_dropped_samples",
            "Samples dropped because their WAL write failed (e.g. the disk was full)",
            m.write_dropped_samples.clone(),
        );
        registry.register(
            "agent_wal_samples_appended",
            "Samples written to the WAL (scraped samples that reached the WAL)",
            m.samples_appended.clone(),
        );
        registry.register(
            "agent_wal_corruptions",
            "Corrupt or torn WAL tails found (and repaired: cut at the last complete record) \
             when the WAL was opened",
            m.corruptions.clone(),
        );
        registry.register(
            "agent_wal_storage_active_series",
            "Current number of active series being tracked by the WAL storage",
            m.active_series.clone(),
        );
        registry.register(
            "agent_wal_storage_deleted_series",
            "Series no longer scraped that stay in memory until a WAL checkpoint drops them",
            m.deleted_series.clone(),
        );
        registry.register(
            "agent_scrape_cache_entries",
            "Series texts in the scrape caches of the instance's targets (as of each target's \
             last scrape; dropped series included)",
            m.scrape_cache_entries.clone(),
        );
        registry.register(
            "agent_remote_write_series",
            "Series in the instance's remote_write series tables, summed over its endpoints \
             (forgotten once the readers passed the checkpoint that dropped them)",
            m.remote_write_series.clone(),
        );
        m
    }

    /// Drops the gauge of a stopped instance (its counters stay, as counters do).
    fn forget(&self, label: &InstanceLabel) {
        self.active_series.remove(label);
        self.deleted_series.remove(label);
        self.scrape_cache_entries.remove(label);
        self.remote_write_series.remove(label);
        self.lock_active().remove(label);
    }

    fn lock_active(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<InstanceLabel, u64>> {
        self.active_by_instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_active_series(&self, label: &InstanceLabel, series: usize) {
        self.active_series.get_or_create(label).set(gauge(series));
        self.lock_active().insert(label.clone(), series as u64);
    }

    /// The sizes of the tables that hold series, so that churn is seen to be forgotten.
    fn set_table_sizes(&self, label: &InstanceLabel, t: TableSizes) {
        self.deleted_series
            .get_or_create(label)
            .set(gauge(t.deleted));
        self.scrape_cache_entries
            .get_or_create(label)
            .set(gauge(t.scrape_cache));
        self.remote_write_series
            .get_or_create(label)
            .set(gauge(t.remote_write));
    }

    /// Active series over every running instance (the ring page's load figure).
    pub fn active_series_total(&self) -> u64 {
        self.lock_active().values().sum()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Series held by an instance's tables besides the active ones.
#[derive(Debug, Clone, Copy)]
struct TableSizes {
    /// Garbage-collected, awaiting a checkpoint.
    deleted: usize,
    scrape_cache: usize,
    /// Summed over the endpoints.
    remote_write: usize,
}

/// What every instance of an agent shares.
#[derive(Clone)]
pub struct Shared {
    pub wal_directory: PathBuf,
    pub agent_id: String,
    pub metrics: RemoteWriteMetrics,
    pub instance_metrics: InstanceMetrics,
    pub cleaner_metrics: cleaner::CleanerMetrics,
    /// Directory relative file paths of configs are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Stamps samples and judges WAL ages.
    pub clock: Clock,
    /// Target sharding: where the scrape jobs get their targets (`None`: their discovery).
    pub assigned: Option<Arc<dyn crate::scrape::assigned::AssignedSource>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("wal_directory", &self.wal_directory)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        wal_directory: &Path,
        agent_id: &str,
        registry: &mut Registry,
        clock: Clock,
    ) -> Self {
        Shared {
            wal_directory: wal_directory.to_path_buf(),
            agent_id: agent_id.to_owned(),
            metrics: RemoteWriteMetrics::register(registry),
            instance_metrics: InstanceMetrics::register(registry),
            cleaner_metrics: cleaner::CleanerMetrics::register(registry),
            base_dir: None,
            clock,
            assigned: None,
        }
    }
}

/// Resolves once everything committed to the WAL before the call was delivered (or refused
/// for good) by every remote_write queue of the instance (see
/// [`QueueManager::delivered_through`]).
fn flush_barrier(
    commits: tokio::sync::watch::Receiver<u64>,
    queues: Vec<Arc<QueueManager>>,
) -> crate::scrape::assigned::Barrier {
    Arc::new(move || {
        let commit = *commits.borrow();
        let queues = queues.clone();
        Box::pin(async move {
            for q in &queues {
                q.delivered_through(commit).await;
            }
        })
    })
}

impl Instance {
    /// Opens (repairing and replaying) the WAL, starts remote_write from it, then scraping.
    /// `label_key` names the instance in its metrics (see [`manager::metric_label`]). Runs, as
    /// the tasks it starts do, in the caller's span: the instance's worker's [`span`].
    pub async fn start(
        cfg: InstanceConfig,
        shared: &Shared,
        label_key: &str,
    ) -> Result<Instance, InstanceError> {
        let name = cfg.name.clone();
        let label = instance_label(label_key, &name);
        let dir = shared.wal_directory.join(dir_name(&name));
        let wal_dir = dir.join("wal");
        let open_dir = wal_dir.clone();
        let opened =
            tokio::task::spawn_blocking(move || Wal::open(&open_dir, WalOptions::default())).await;
        let (wal, replay) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(InstanceError::Wal {
                    name,
                    dir: wal_dir,
                    message: e.to_string(),
                })
            }
            Err(e) => {
                return Err(InstanceError::Wal {
                    name,
                    dir: wal_dir,
                    message: e.to_string(),
                })
            }
        };
        // Created now, so they read 0 (not absent) until something happens.
        let m = &shared.instance_metrics;
        for family in [
            &m.truncate_dropped_samples,
            &m.truncations,
            &m.truncation_failures,
        ] {
            let _ = family.get_or_create(&label);
        }
        let corruptions = m.corruptions.get_or_create(&label).clone();
        if let Some(r) = &replay.repair {
            tracing::warn!(repair = ?r, "WAL repaired on open");
            corruptions.inc();
        }
        let counters = storage::WriteFailureCounters {
            failures: shared
                .instance_metrics
                .write_failures
                .get_or_create(&label)
                .clone(),
            dropped_samples: shared
                .instance_metrics
                .write_dropped_samples
                .get_or_create(&label)
                .clone(),
            samples_appended: shared
                .instance_metrics
                .samples_appended
                .get_or_create(&label)
                .clone(),
        };
        let storage =
            Arc::new(WalStorage::new(&name, wal, &replay).with_failure_counters(counters));
        let stop = CancellationToken::new();

        // Every endpoint's queue first: one that cannot be built (an unreadable CA file) fails
        // the start before any watcher runs, so a failed start (retried by the instance's
        // worker) leaves no watcher of an earlier endpoint running behind it. Built on the
        // blocking pool: the clients read their `tls_config` files.
        let queues = {
            let (rws, external) = (cfg.remote_write.clone(), cfg.external_labels.clone());
            let (agent_id, metrics, instance) = (
                shared.agent_id.clone(),
                shared.metrics.clone(),
                name.clone(),
            );
            // The queues' spans are children of this one (the instance's).
            let span = tracing::Span::current();
            let built = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let mut queues = Vec::with_capacity(rws.len());
                for rw in &rws {
                    let queue = QueueManager::from_config(
                        rw,
                        &external,
                        Some(&agent_id),
                        &metrics,
                        write_relabel_filter(rw),
                    )
                    .map_err(|e| InstanceError::RemoteWrite {
                        name: instance.clone(),
                        remote: rw.name.clone(),
                        message: e.to_string(),
                    })?;
                    queues.push(Arc::new(queue));
                }
                Ok(queues)
            })
            .await;
            built.unwrap_or_else(|e| {
                Err(InstanceError::RemoteWrite {
                    name: name.clone(),
                    remote: "endpoints".to_owned(),
                    message: format!("building the queues failed: {e}"),
                })
            })?
        };
        let mut remotes = Vec::new();
        for (rw, queue) in cfg.remote_write.iter().zip(queues) {
            let rstop = stop.child_token();
            let progress = dir.join("remote_write").join(dir_name(&rw.name));
            let watcher = tokio::spawn(
                crate::remote_write::watcher::run(
                    wal_dir.clone(),
                    queue.clone(),
                    progress.clone(),
                    storage.commits(),
                    Some(crate::remote_write::watcher::FromWriter {
                        shared: storage.shared_labels(),
                        dropped: storage.dropped_series(),
                    }),
                    rstop.clone(),
                )
                .instrument(queue.span().clone()),
            );
            remotes.push(Remote {
                queue,
                watcher,
                metadata: None,
                stop: rstop,
                progress,
            });
        }

        let mut scrape = ScrapeManager::new(name.clone(), storage.clone(), shared.base_dir.clone())
            .with_clock(shared.clock);
        if cfg.write_stale_on_shutdown && shared.assigned.is_some() {
            tracing::warn!("write_stale_on_shutdown is not applied with scraping_service.sharding: targets (a target's series continue at the agent it moves to; staleness markers are written when it is gone from discovery)");
        }
        let cfg_stale_at_any_stop = cfg.write_stale_on_shutdown && shared.assigned.is_none();
        if cfg.host_filter && shared.assigned.is_some() {
            // The cluster's leader assigns targets to agents: no agent decides by its host.
            tracing::warn!("host_filter is not applied with scraping_service.sharding: targets (targets are assigned to agents by the ring, not by host)");
        } else if cfg.host_filter {
            let filter = HostFilter::for_this_host(cfg.host_filter_relabel_configs.clone());
            tracing::info!(host = %filter.host(), "host_filter: scraping only the targets on this host");
            scrape = scrape.with_host_filter(filter);
        }
        if let Some(source) = &shared.assigned {
            let queues: Vec<Arc<QueueManager>> = remotes.iter().map(|r| r.queue.clone()).collect();
            scrape = scrape.with_assigned(source.clone(), flush_barrier(storage.commits(), queues));
        }
        let scrape = Arc::new(scrape);
        if let Err(e) = scrape.apply(&cfg.scrape_configs).await {
            // Jobs that could start run; the others are reported (unsupported SD, bad TLS...).
            tracing::error!(error = %e, "some scrape jobs could not start");
        }
        for (r, rw) in remotes.iter_mut().zip(&cfg.remote_write) {
            let m = rw.metadata;
            if m.send {
                let s = scrape.clone();
                r.metadata = Some(tokio::spawn(
                    crate::remote_write::metadata::run(
                        r.queue.clone(),
                        m.send_interval.as_std(),
                        move || s.metadata(),
                        r.stop.clone(),
                    )
                    .instrument(r.queue.span().clone()),
                ));
            }
        }
        let queues: Vec<Arc<QueueManager>> = remotes.iter().map(|r| r.queue.clone()).collect();
        let housekeeping = tokio::spawn(
            housekeeping(
                cfg.clone(),
                storage.clone(),
                queues,
                scrape.clone(),
                (shared.instance_metrics.clone(), label.clone()),
                shared.clock,
                stop.clone(),
            )
            .in_current_span(),
        );
        tracing::info!(
            jobs = cfg.scrape_configs.len(),
            remote_writes = cfg.remote_write.len(),
            replayed_series = replay.series.len(),
            "instance started"
        );
        Ok(Instance {
            cfg,
            dir,
            storage,
            scrape,
            remotes,
            housekeeping,
            stop,
            metrics: shared.instance_metrics.clone(),
            label,
            stale_at_any_stop: cfg_stale_at_any_stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }

    /// Applies a changed config in place when only scrape configs changed; `false` when the
    /// instance must be restarted (remote_write, WAL or host filter settings changed: the
    /// scrape manager was built with the host filter).
    pub async fn update(&mut self, cfg: InstanceConfig) -> bool {
        let same_rest = cfg.remote_write == self.cfg.remote_write
            && cfg.external_labels == self.cfg.external_labels
            && cfg.wal_truncate_frequency == self.cfg.wal_truncate_frequency
            && cfg.min_wal_time == self.cfg.min_wal_time
            && cfg.max_wal_time == self.cfg.max_wal_time
            && cfg.remote_flush_deadline == self.cfg.remote_flush_deadline
            && cfg.write_stale_on_shutdown == self.cfg.write_stale_on_shutdown
            && cfg.host_filter == self.cfg.host_filter
            && cfg.host_filter_relabel_configs == self.cfg.host_filter_relabel_configs;
        if !same_rest {
            return false;
        }
        if let Err(e) = self.scrape.apply(&cfg.scrape_configs).await {
            tracing::error!(error = %e, "some scrape jobs could not start");
        }
        self.cfg = cfg;
        true
    }

    pub fn targets(&self) -> Vec<TargetInfo> {
        self.scrape.targets()
    }

    /// The scrape side, to read the targets of a running instance from elsewhere.
    pub fn scrape_manager(&self) -> Arc<ScrapeManager> {
        self.scrape.clone()
    }

    /// Stops scraping, fsyncs the WAL, then flushes remote_write while the receiver takes
    /// samples, for up to `remote_flush_deadline`, and saves how far it got: what was not sent
    /// is read from the WAL again at the next start (docs/compat.md, *Stopping*). Staleness
    /// markers are written when `write_stale` (the config was deleted) or when the config
    /// sets `write_stale_on_shutdown`, as the old agent does: then also at a shutdown and
    /// when the config only moved to another agent (not with target sharding, see
    /// `stale_at_any_stop`).
    pub async fn stop(self, write_stale: bool) {
        self.scrape
            .stop(write_stale || self.stale_at_any_stop)
            .await;
        // Everything committed is durable before the instance is gone (the WAL's disk thread
        // does the fsync; this task only waits for it).
        if let Err(e) = self.storage.sync_async().await {
            tracing::error!(error = %e, "WAL fsync on stop failed");
        }
        self.stop.cancel();
        let _ = self.housekeeping.await;
        self.metrics.forget(&self.label);
        let deadline = tokio::time::Instant::now() + self.cfg.remote_flush_deadline.as_std();
        for r in self.remotes {
            r.stop.cancel();
            let _ = r.watcher.await;
            if let Some(m) = r.metadata {
                let _ = m.await;
            }
            let report = r.queue.flush_while_delivering(deadline).await;
            // What the flush delivered is not sent again after a restart.
            let (q, p) = (r.queue.clone(), r.progress.clone());
            let saved = tokio::task::spawn_blocking(move || {
                crate::remote_write::watcher::save_progress(&q, &p, true)
            })
            .await;
            r.queue.span().in_scope(|| {
                if let Ok(Err(e)) = saved {
                    tracing::warn!(file = %r.progress.display(), error = %e,
                        "cannot save remote_write progress");
                }
                if report.receiver_failed {
                    tracing::warn!(unsent_samples = report.dropped,
                        "remote_write receiver not accepting samples; stopped without waiting for it: \
                         the unsent samples stay in the WAL and are sent when this config runs here again");
                } else if !report.complete {
                    tracing::warn!(unsent_samples = report.dropped,
                        "remote_write flush did not finish before remote_flush_deadline; the rest stays in the WAL");
                }
            });
        }
        tracing::info!("instance stopped");
    }
}

/// When the WAL is truncated: every `period` from the instance's start, on that grid
/// whatever each truncation took (a late one does not push the later ones back), so that
/// truncations keep their phase against scrapes of the same interval. Counting the period from
/// the end of the previous truncation, as before, moved it by each truncation's duration: the
/// phase drifted through the scrape interval over minutes, and with it how many scrapes' series
/// the tables held at their peak (40,000 to 70,000 in the churn soak, tests/churn.rs), so
/// the tables reached their size at a random time of the run.
#[derive(Debug)]
struct TruncationSchedule {
    next: tokio::time::Instant,
    period: Duration,
}

impl TruncationSchedule {
    fn new(start: tokio::time::Instant, period: Duration) -> Self {
        TruncationSchedule {
            next: start + period,
            period,
        }
    }

    /// Whether a truncation is due at `now`; if so, the next one is the first grid point after
    /// `now` (the points missed while this one was late are skipped, not made up).
    fn due(&mut self, now: tokio::time::Instant) -> bool {
        if now < self.next {
            return false;
        }
        while self.next <= now {
            self.next += self.period;
        }
        true
    }
}

/// Every second reports the WAL's newest sample to the remote_write queues, the active series
/// and the sizes of the tables that hold series; truncates the WAL every `wal_truncate_frequency`
/// (on a blocking thread; see [`TruncationSchedule`]). The WAL's fsyncs are its disk thread's
/// (`wal::sync`), never this task's.
async fn housekeeping(
    cfg: InstanceConfig,
    storage: Arc<WalStorage>,
    queues: Vec<Arc<QueueManager>>,
    scrape: Arc<ScrapeManager>,
    (metrics, label): (InstanceMetrics, InstanceLabel),
    clock: Clock,
    stop: CancellationToken,
) {
    let start = tokio::time::Instant::now();
    let second = Duration::from_secs(1);
    let mut ticks = tokio::time::interval_at(start + second, second);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut schedule = TruncationSchedule::new(start, cfg.wal_truncate_frequency.as_std());
    let mut previous = None;
    loop {
        let tick = tokio::select! {
            _ = stop.cancelled() => return,
            at = ticks.tick() => at,
        };
        let (series, deleted) = storage.series_counts();
        let sizes = TableSizes {
            deleted,
            scrape_cache: scrape.cache_entries(),
            remote_write: queues.iter().map(|q| q.series_count()).sum(),
        };
        // highest_timestamp_in follows what the WAL holds, as Prometheus's appender sets it: the
        // watchers raise it only as they read, and stop reading while their queue is full.
        if let Some(newest) = storage.newest_timestamp() {
            for q in &queues {
                q.observe_wal_timestamp(newest);
            }
        }
        metrics.set_active_series(&label, series);
        metrics.set_table_sizes(&label, sizes);
        if !schedule.due(tick) {
            continue;
        }
        // An endpoint that has not finished a batch yet counts as having sent nothing (the old
        // agent's watermark starts at 0): the cut is then `now - max_wal_time`, so max_wal_time
        // bounds the WAL even when a receiver has been down since the start.
        let lowest = queues
            .iter()
            .map(|q| q.lowest_sent_timestamp().unwrap_or(0))
            .min();
        let now = clock.unix_millis();
        let Some(mint) = crate::wal::checkpoint::truncation_point(
            lowest,
            now,
            cfg.min_wal_time.as_std(),
            cfg.max_wal_time.as_std(),
            previous,
        ) else {
            continue;
        };
        previous = Some(mint);
        let clamped = crate::wal::clamped_by_max_wal_time(
            lowest,
            now,
            cfg.min_wal_time.as_std(),
            cfg.max_wal_time.as_std(),
        );
        // The watermark lets the checkpoint count what it drops unsent; without a clamp
        // `mint <= lowest`, so that count is zero by construction.
        let cut = crate::wal::Cut {
            mint,
            sent_up_to: lowest,
        };
        let s = storage.clone();
        let result = tokio::task::spawn_blocking(move || s.truncate(cut)).await;
        match result {
            Ok(Ok(stats)) => {
                if let Some(st) = &stats {
                    metrics.truncations.get_or_create(&label).inc();
                    if st.dropped_unsent_samples > 0 {
                        metrics
                            .truncate_dropped_samples
                            .get_or_create(&label)
                            .inc_by(st.dropped_unsent_samples);
                        tracing::warn!(dropped_samples = st.dropped_unsent_samples,
                            lowest_sent = ?lowest, mint, max_wal_time = %cfg.max_wal_time,
                            "WAL truncated at now - max_wal_time: samples remote_write had not sent are lost");
                    }
                }
                // What the tables hold after it: garbage-collected series stay until a
                // checkpoint passes them, remote_write forgets them once it read past it.
                let (active, collected) = storage.series_counts();
                let remote_write_series: usize = queues.iter().map(|q| q.series_count()).sum();
                let (checkpoint, dropped_series, dropped_samples) =
                    stats.as_ref().map_or((None, 0, 0), |st| {
                        (Some(st.index), st.dropped_series, st.dropped_samples)
                    });
                if clamped {
                    tracing::info!(mint, lowest_sent = ?lowest, checkpoint, dropped_series,
                        dropped_samples, active_series = active, deleted_series = collected, remote_write_series,
                        "WAL truncated (cut moved forward to now - max_wal_time: remote_write is behind)");
                } else {
                    tracing::info!(
                        mint,
                        checkpoint,
                        dropped_series,
                        dropped_samples,
                        active_series = active,
                        deleted_series = collected,
                        remote_write_series,
                        "WAL truncated"
                    );
                }
            }
            Ok(Err(e)) => {
                metrics.truncation_failures.get_or_create(&label).inc();
                tracing::error!(error = %e, "WAL truncation failed");
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL truncation task failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncations stay on the grid of their period from the start, whatever each takes: a
    /// 5 s period with 1 s ticks and truncations taking 0.3 s (which delay the next tick, as
    /// the loop awaits them) truncates at 5, 10, 15 ... s, never drifting against scrapes of
    /// the same interval; one that overran a grid point skips it.
    #[test]
    fn truncations_keep_to_the_grid_of_their_period() {
        let start = tokio::time::Instant::now();
        let s = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut schedule = TruncationSchedule::new(start, Duration::from_secs(5));
        let mut due = Vec::new();
        let mut busy_until = start;
        for k in 1..=60u32 {
            // A tick fires at its grid second, or when the task is free again.
            let tick = s(f64::from(k)).max(busy_until);
            if schedule.due(tick) {
                due.push(tick.duration_since(start).as_secs_f64());
                busy_until = tick + Duration::from_millis(300);
            }
        }
        let want: Vec<f64> = (1..=12).map(|k| f64::from(k) * 5.0).collect();
        assert_eq!(due, want);
        // A truncation that took 12 s: the grid points it covered are skipped.
        let mut schedule = TruncationSchedule::new(start, Duration::from_secs(5));
        assert!(schedule.due(s(5.0)));
        assert!(schedule.due(s(17.0)));
        assert!(!schedule.due(s(19.5)));
        assert!(schedule.due(s(20.0)));
    }

    #[test]
    fn write_relabel_configs_filter_and_rewrite_series() {
        let (_, cfg) = crate::config::load::parse_instance(
            "remote_write:\n  - url: http://r/\n    write_relabel_configs:\n      - source_labels: [__name__]\n        regex: 'keep_.*'\n        action: keep\n      - target_label: env\n        replacement: prod\n",
            &crate::config::GlobalConfig::default(),
        )
        .unwrap();
        let filter = write_relabel_filter(&cfg.remote_write[0]).expect("a filter");
        let mut dropped = crate::labels::Labels::from_pairs([("__name__", "other")]).builder();
        assert!(!filter(&mut dropped));
        let mut kept =
            crate::labels::Labels::from_pairs([("__name__", "keep_me"), ("a", "1")]).builder();
        assert!(filter(&mut kept));
        assert_eq!(
            kept.labels(),
            crate::labels::Labels::from_pairs([
                ("__name__", "keep_me"),
                ("a", "1"),
                ("env", "prod")
            ])
        );
        let (_, plain) = crate::config::load::parse_instance(
            "remote_write:\n  - url: http://r/\n",
            &crate::config::GlobalConfig::default(),
        )
        .unwrap();
        assert!(write_relabel_filter(&plain.remote_write[0]).is_none());
    }

    /// A start that fails at its second remote_write endpoint (a CA file that is not there)
    /// leaves nothing of the first running: the instance's worker retries a failed start, and
    /// each attempt used to leave the first endpoint's watcher, saver and shards behind, all
    /// sending the same WAL.
    #[tokio::test]
    async fn a_start_that_fails_at_an_endpoint_leaves_no_tasks_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let shared = Shared::new(dir.path(), "a", &mut registry, Clock::system());
        let missing = dir.path().join("missing-ca.pem");
        let (_, cfg) = crate::config::load::parse_instance(
            &format!(
                "remote_write:\n  - url: http://127.0.0.1:1/a\n  - url: https://127.0.0.1:1/b\n    tls_config:\n      ca_file: {}\n",
                missing.display()
            ),
            &crate::config::GlobalConfig::default(),
        )
        .unwrap();
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        for attempt in 0..3 {
            let err = Instance::start(cfg.clone(), &shared, "instance_name")
                .await
                .err()
                .unwrap_or_else(|| panic!("attempt {attempt} started"));
            assert!(
                matches!(err, InstanceError::RemoteWrite { .. }),
                "attempt {attempt}: {err}"
            );
        }
        // Tasks that stop on their own would be gone well within this; left-behind ones never.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tasks() > before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} tasks left behind by failed starts",
                tasks() - before
            );
            tokio::task::yield_now().await;
        }
    }

    /// An instance started from the config text `yaml` (named `config`), in a new directory.
    async fn started(yaml: &str) -> (tempfile::TempDir, Shared, Instance) {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let shared = Shared::new(dir.path(), "a", &mut registry, Clock::system());
        let (_, cfg) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .unwrap();
        let inst = Instance::start(cfg, &shared, "i").await.unwrap();
        (dir, shared, inst)
    }

    /// Waits for the instance's first WAL commit (a scrape appended).
    async fn first_commit(inst: &Instance) {
        let mut commits = inst.storage.commits();
        tokio::time::timeout(Duration::from_secs(30), commits.wait_for(|n| *n > 0))
            .await
            .expect("a scrape committed within 30 s")
            .expect("the storage is open");
    }

    /// `write_stale_on_shutdown: true` writes a staleness marker for every series at a stop
    /// that does not ask for them (a shutdown, a config that moved), as the old agent does;
    /// without it, such a stop writes none. The setting used to be parsed and ignored.
    #[tokio::test]
    async fn write_stale_on_shutdown_marks_the_series_stale_at_any_stop() {
        let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { "m 1\n" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        for setting in [false, true] {
            let (_dir, shared, inst) = started(&format!(
                "write_stale_on_shutdown: {setting}\nscrape_configs:\n  - job_name: j\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{addr}']\n"
            ))
            .await;
            first_commit(&inst).await;
            inst.stop(false).await;
            let mut values = Vec::new();
            let mut samples = Vec::new();
            crate::wal::replay(
                &shared.wal_directory.join(dir_name("config")).join("wal"),
                |rec| {
                    if crate::wal::record::record_type(rec) == Some(crate::wal::record::SAMPLES) {
                        samples.clear();
                        crate::wal::record::decode_samples(rec, &mut samples)?;
                        values.extend(samples.iter().map(|s| s.2));
                    }
                    Ok(())
                },
            )
            .unwrap();
            let stale = values
                .iter()
                .filter(|v| crate::scrape::appender::is_stale_nan(**v))
                .count();
            assert!(values.contains(&1.0), "setting {setting}: {values:?}");
            // `m` and the five synthetic series of the target.
            assert_eq!(
                stale,
                if setting { 6 } else { 0 },
                "setting {setting}: {values:?}"
            );
        }
        server.abort();
    }

    /// `host_filter: true` leaves out the discovered targets that are not on this host (here:
    /// one named by a host that is not this one); without it both are scraped. The setting
    /// used to be parsed and ignored.
    #[tokio::test]
    async fn host_filter_leaves_out_targets_on_other_hosts() {
        for setting in [false, true] {
            let (_dir, _shared, inst) = started(&format!(
                "host_filter: {setting}\nscrape_configs:\n  - job_name: j\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:1', 'not-this-host.invalid:1']\n"
            ))
            .await;
            // A scrape (here a failed one: `up` 0) was committed, so its target was built; both
            // come from one discovery group, so both are built in the same pass.
            first_commit(&inst).await;
            let mut found: Vec<String> = inst
                .targets()
                .iter()
                .map(|t| t.labels["instance"].clone())
                .collect();
            found.sort();
            let want: &[&str] = if setting {
                &["127.0.0.1:1"]
            } else {
                &["127.0.0.1:1", "not-this-host.invalid:1"]
            };
            assert_eq!(found, want, "host_filter: {setting}");
            inst.stop(true).await;
        }
    }

    /// The scrape manager is built with the host filter: a change to its rules restarts the
    /// instance instead of being taken in place (and ignored).
    #[tokio::test]
    async fn a_changed_host_filter_rule_restarts_the_instance() {
        let text = |regex: &str| {
            format!(
                "host_filter: true\nhost_filter_relabel_configs:\n  - source_labels: [__meta_x]\n    regex: '{regex}'\n    target_label: __host__\nscrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['127.0.0.1:1']\n"
            )
        };
        let (_dir, _shared, mut inst) = started(&text("(.*)")).await;
        let parse = |t: &str| {
            crate::config::load::parse_instance(t, &crate::config::GlobalConfig::default())
                .unwrap()
                .1
        };
        assert!(
            inst.update(parse(&text("(.*)"))).await,
            "unchanged: in place"
        );
        assert!(
            !inst.update(parse(&text("node-(.*)"))).await,
            "rules changed: restart"
        );
        inst.stop(true).await;
    }

    /// The exposed names are the ones the docs and the old agent's dashboards use.
    #[test]
    fn shared_registers_wal_and_cleaner_metrics() {
        let mut registry = Registry::default();
        let shared = Shared::new(
            Path::new("/nonexistent"),
            "a",
            &mut registry,
            Clock::system(),
        );
        let l = instance_label("instance_name", "team/a");
        shared
            .instance_metrics
            .truncate_dropped_samples
            .get_or_create(&l)
            .inc_by(7);
        shared.instance_metrics.truncations.get_or_create(&l).inc();
        shared
            .instance_metrics
            .truncation_failures
            .get_or_create(&l)
            .inc();
        shared
            .instance_metrics
            .active_series
            .get_or_create(&l)
            .set(3);
        shared.instance_metrics.set_table_sizes(
            &l,
            TableSizes {
                deleted: 4,
                scrape_cache: 5,
                remote_write: 6,
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for want in [
            "agent_wal_truncate_dropped_samples_total{instance_name=\"team/a\"} 7",
            "agent_wal_truncations_total{instance_name=\"team/a\"} 1",
            "agent_wal_storage_active_series{instance_name=\"team/a\"} 3",
            "agent_wal_storage_deleted_series{instance_name=\"team/a\"} 4",
            "agent_scrape_cache_entries{instance_name=\"team/a\"} 5",
            "agent_remote_write_series{instance_name=\"team/a\"} 6",
            "agent_wal_truncation_failures_total{instance_name=\"team/a\"} 1",
            "agent_prometheus_cleaner_success_total 0",
            "agent_prometheus_cleaner_errors_total 0",
            "agent_prometheus_cleaner_abandoned_storage 0",
            "agent_prometheus_cleaner_managed_storage 0",
            "# TYPE agent_prometheus_cleaner_cleanup_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        shared.instance_metrics.forget(&l);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for gone in [
            "agent_wal_storage_active_series{",
            "agent_wal_storage_deleted_series{",
            "agent_scrape_cache_entries{",
            "agent_remote_write_series{",
        ] {
            assert!(!text.contains(gone), "{gone} left after forget:\n{text}");
        }
    }

    /// A WAL fsync that hangs (a slow or stuck disk) does not hold up the tokio runtime: with
    /// one instance's housekeeping running on a single-threaded runtime and its WAL's fsync
    /// paused, another instance's commit, made by a task on that same runtime, completes.
    #[test]
    fn a_stuck_wal_fsync_does_not_block_the_runtime() {
        use crate::scrape::appender::Storage;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Condvar, Mutex};

        #[derive(Debug, Default)]
        struct Stuck {
            entered: Mutex<Option<mpsc::Sender<()>>>,
            released: (Mutex<bool>, Condvar),
            armed: AtomicBool,
        }
        impl crate::wal::Faults for Stuck {
            fn fsync(&self, _: &Path) -> std::io::Result<()> {
                if self.armed.load(Ordering::SeqCst) {
                    if let Some(tx) = self.entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    let mut r = self.released.0.lock().unwrap();
                    while !*r {
                        r = self.released.1.wait(r).unwrap();
                    }
                }
                Ok(())
            }
        }
        let commit = |s: &WalStorage, t: i64| {
            let mut app = s.appender();
            let (r, _) = app.new_series(crate::labels::Labels::from_pairs([("__name__", "m")]));
            app.append(r, t, 1.0);
            app.commit()
        };
        let dir = tempfile::tempdir().unwrap();
        let stuck = Arc::new(Stuck::default());
        let open = |name: &str, faults: crate::wal::segment::FaultsHook| {
            let opts = WalOptions {
                faults,
                ..WalOptions::default()
            };
            let (wal, replay) = Wal::open(&dir.path().join(name), opts).unwrap();
            Arc::new(WalStorage::new(name, wal, &replay))
        };
        let a = open("a", Some(stuck.clone()));
        let b = open("b", None);
        commit(&a, 1_000).unwrap();
        let (entered_tx, entered) = mpsc::channel();
        *stuck.entered.lock().unwrap() = Some(entered_tx);
        stuck.armed.store(true, Ordering::SeqCst);

        let mut registry = Registry::default();
        let shared = Shared::new(dir.path(), "x", &mut registry, Clock::system());
        let (_, cfg) = crate::config::load::parse_instance(
            "scrape_configs: []\n",
            &crate::config::GlobalConfig::default(),
        )
        .unwrap();
        let (ping_tx, mut ping) = tokio::sync::mpsc::unbounded_channel::<i64>();
        let (pong_tx, pong) = mpsc::channel();
        let stop = CancellationToken::new();
        let (a2, b2, stop2) = (a.clone(), b.clone(), stop.clone());
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let scrape = Arc::new(ScrapeManager::new("a", a2.clone(), None));
                let hk = tokio::spawn(housekeeping(
                    cfg,
                    a2,
                    Vec::new(),
                    scrape,
                    (
                        shared.instance_metrics.clone(),
                        instance_label("instance_name", "a"),
                    ),
                    Clock::system(),
                    stop2.clone(),
                ));
                while let Some(t) = ping.recv().await {
                    let _ = pong_tx.send(commit(&b2, t).is_ok());
                }
                stop2.cancel();
                let _ = hk.await;
            });
        });
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("instance a's WAL fsync started");
        ping_tx.send(2_000).unwrap();
        let answer = pong.recv_timeout(Duration::from_secs(20));
        *stuck.released.0.lock().unwrap() = true;
        stuck.released.1.notify_all();
        drop(ping_tx);
        runtime.join().unwrap();
        assert_eq!(
            answer,
            Ok(true),
            "instance b's commit on the runtime did not complete while a's fsync was stuck"
        );
    }
}
