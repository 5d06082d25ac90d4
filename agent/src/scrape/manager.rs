//! The scrape manager of one instance: a pool of scrape loops per job, kept in step with
//! service discovery and with config reloads.
//!
//! Per job (scrape config) a sync task watches the job's discovery output. On every change it
//! populates the targets ([`populate_labels`]; the ones relabelling drops are not kept: no API
//! lists them) and diffs the new set against the running loops by target identity, the target's full
//! labels (reserved `__` labels included, so scheme, address, path and params are part of it;
//! compared whole, not by a hash). Unchanged targets keep their loop and cache; new
//! ones get a loop; vanished ones are stopped with staleness markers. Identical targets within
//! a job are scraped once.
//!
//! `target_limit` is Prometheus's: when a job has more targets than the limit, every one of its
//! loops keeps running but fails each scrape with `target_limit exceeded (number of targets:
//! N, limit: L)`, without contacting the target, until the count drops again.
//!
//! [`ScrapeManager::apply`] hot-reloads: jobs whose validated config is unchanged keep running
//! untouched; removed jobs stop (staleness markers written); changed jobs are stopped
//! (markers written) and started again with the new config.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::appender::Storage;
use super::assigned::{AssignedJob, AssignedSource, Barrier, LoopEvent, Mode};
use super::host_filter::HostFilter;
use super::metadata::{self, MetricMetadata};
use super::scrape_loop::{Health, LoopHandle, ScrapeLoop};
use super::target::{populate_labels, Target};
use crate::clock::Clock;
use crate::config::scrape::ScrapeConfig;
use crate::discovery::{self, TargetGroup};
use crate::httpclient::{self, HttpClient};
use crate::labels::Labels;

/// The user agent of scrape requests.
pub const USER_AGENT: &str = concat!("agentctl/", env!("CARGO_PKG_VERSION"));

/// A job that could not be started.
#[derive(Debug, Error)]
pub enum JobError {
    #[error("{0}")]
    Discovery(#[from] discovery::Error),
    #[error("job {job:?}: {source}")]
    Client {
        job: String,
        #[source]
        source: httpclient::Error,
    },
    /// The blocking task building the job failed (a panic).
    #[error("job {job:?}: starting it failed: {message}")]
    Start { job: String, message: String },
}

/// The jobs [`ScrapeManager::apply`] could not start; the others run.
#[derive(Debug, Error)]
#[error("{} scrape job(s) failed to start: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ApplyError(pub Vec<JobError>);

/// One entry of `/agent/api/v1/metrics/targets` (docs/compat.md, *Agent API*).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetInfo {
    pub instance: String,
    pub target_group: String,
    pub endpoint: String,
    pub state: &'static str,
    pub labels: BTreeMap<String, String>,
    pub discovered_labels: BTreeMap<String, String>,
    /// RFC 3339 with nanoseconds as Go's `time.RFC3339Nano` writes it; the zero time
    /// `0001-01-01T00:00:00Z` before the first scrape.
    pub last_scrape: String,
    pub scrape_duration_ms: i64,
    pub scrape_error: String,
}

fn to_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Go's `time.Time.Format(time.RFC3339Nano)` in UTC (fraction with trailing zeros removed); Go's
/// zero time for a target never scraped.
pub fn rfc3339_nano(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => crate::clock::rfc3339(
            crate::clock::unix_nanos(t),
            crate::clock::Fraction::NanosTrimmed,
        ),
        None => "0001-01-01T00:00:00Z".to_owned(),
    }
}

/// Sorts targets as the API lists them: by instance, target group, `job` label, `instance`
/// label (then endpoint, to be deterministic). Use it when merging several managers.
pub fn sort_targets(targets: &mut [TargetInfo]) {
    targets.sort_by_cached_key(|t| {
        (
            t.instance.clone(),
            t.target_group.clone(),
            t.labels.get("job").cloned().unwrap_or_default(),
            t.labels.get("instance").cloned().unwrap_or_default(),
            t.endpoint.clone(),
        )
    });
}

/// The body of `GET /agent/api/v1/metrics/targets`: `{"status":"success","data":[TargetInfo…]}`
/// with the targets sorted by [`sort_targets`].
pub fn targets_response(mut targets: Vec<TargetInfo>) -> serde_json::Value {
    sort_targets(&mut targets);
    serde_json::json!({ "status": "success", "data": targets })
}

struct RunningTarget {
    target: Arc<Target>,
    handle: LoopHandle,
}

/// A loop's key in its pool: a discovered target's full labels (compared whole), or the key
/// of an assigned target.
#[derive(Clone, PartialEq, Eq, Hash)]
enum LoopKey {
    Target(Labels),
    Assigned(u64),
}

#[derive(Default)]
struct Pool {
    loops: HashMap<LoopKey, RunningTarget>,
}

struct Job {
    cfg: Arc<ScrapeConfig>,
    /// The `scrape_job` span (`job=<job_name>`) its tasks and target loops run in.
    span: tracing::Span,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    pool: Arc<Mutex<Pool>>,
}

fn lock_pool(p: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Job {
    async fn stop(self, write_stale: bool) {
        let span = self.span.clone();
        async move {
            self.cancel.cancel();
            if let Err(e) = self.task.await {
                tracing::error!(error = %e, "scrape job sync task failed");
            }
            let loops: Vec<RunningTarget> = lock_pool(&self.pool)
                .loops
                .drain()
                .map(|(_, t)| t)
                .collect();
            stop_all(loops, write_stale).await;
        }
        .instrument(span)
        .await
    }
}

async fn stop_all(loops: Vec<RunningTarget>, write_stale: bool) {
    let stops: Vec<_> = loops
        .into_iter()
        .map(|t| tokio::spawn(t.handle.stop(write_stale)))
        .collect();
    for s in stops {
        let _ = s.await;
    }
}

/// The scrape side of one instance.
pub struct ScrapeManager {
    starter: JobStarter,
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Serializes `apply` and `stop`.
    apply_lock: tokio::sync::Mutex<()>,
}

/// What every job of an instance is started with. A job is built on the blocking pool: its
/// HTTP clients read `tls_config` files, and Kubernetes and Consul discovery read their token,
/// CA and namespace files.
#[derive(Clone)]
struct JobStarter {
    instance: String,
    storage: Arc<dyn Storage>,
    base_dir: Option<PathBuf>,
    /// Stamps the samples of every scrape loop.
    clock: Clock,
    /// Target sharding: jobs take their targets from here instead of discovery.
    assigned: Option<(Arc<dyn AssignedSource>, Barrier)>,
    /// `host_filter`: discovered targets not on this host are left out.
    host_filter: Option<Arc<HostFilter>>,
}

impl ScrapeManager {
    /// `instance` names the instance in the targets API; `base_dir` resolves relative file
    /// paths of the configs (file_sd, credentials).
    pub fn new(
        instance: impl Into<String>,
        storage: Arc<dyn Storage>,
        base_dir: Option<PathBuf>,
    ) -> Self {
        ScrapeManager {
            starter: JobStarter {
                instance: instance.into(),
                storage,
                base_dir,
                clock: Clock::system(),
                assigned: None,
                host_filter: None,
            },
            jobs: Mutex::new(BTreeMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Discovered targets that `filter` does not keep are left out, before relabelling (see
    /// [`crate::scrape::host_filter`]).
    pub fn with_host_filter(mut self, filter: HostFilter) -> Self {
        self.starter.host_filter = Some(Arc::new(filter));
        self
    }

    /// Jobs take their targets from `source` (target sharding: see
    /// [`crate::scrape::assigned`]) instead of running discovery; `barrier` resolves once what
    /// the instance appended so far has been delivered by its remote_write queues.
    pub fn with_assigned(mut self, source: Arc<dyn AssignedSource>, barrier: Barrier) -> Self {
        self.starter.assigned = Some((source, barrier));
        self
    }

    /// The clock the scrape loops stamp samples with (the system clock unless given).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.starter.clock = clock;
        self
    }

    fn jobs(&self) -> MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the running jobs match `configs` (see the module docs). Jobs that fail to start
    /// are reported in the error; every other job runs.
    pub async fn apply(&self, configs: &[ScrapeConfig]) -> Result<(), ApplyError> {
        let _guard = self.apply_lock.lock().await;
        let wanted: BTreeMap<&str, &ScrapeConfig> =
            configs.iter().map(|c| (c.job_name.as_str(), c)).collect();
        let to_stop: Vec<Job> = {
            let mut jobs = self.jobs();
            let names: Vec<String> = jobs
                .iter()
                .filter(|(name, job)| wanted.get(name.as_str()).is_none_or(|c| **c != *job.cfg))
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|n| jobs.remove(n)).collect()
        };
        for job in to_stop {
            job.span.in_scope(|| tracing::info!("stopping scrape job"));
            job.stop(true).await;
        }
        let mut errors = Vec::new();
        for (name, cfg) in wanted {
            if self.jobs().contains_key(name) {
                continue;
            }
            let (starter, job_cfg) = (self.starter.clone(), cfg.clone());
            // The job's span is a child of this one (the instance's).
            let span = tracing::Span::current();
            let started =
                tokio::task::spawn_blocking(move || span.in_scope(|| starter.start(job_cfg)))
                    .await
                    .unwrap_or_else(|e| {
                        Err(JobError::Start {
                            job: name.to_owned(),
                            message: e.to_string(),
                        })
                    });
            match started {
                Ok(job) => {
                    self.jobs().insert(name.to_owned(), job);
                }
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "scrape job not started");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApplyError(errors))
        }
    }

    /// Stops every job. `write_stale: false` when the instance moved to another agent, which
    /// continues the series.
    pub async fn stop(&self, write_stale: bool) {
        let _guard = self.apply_lock.lock().await;
        let jobs: Vec<Job> = std::mem::take(&mut *self.jobs()).into_values().collect();
        for job in jobs {
            job.stop(write_stale).await;
        }
    }

    /// The active targets, sorted as the API wants them: by job, then `job` label, then
    /// `instance` label (the instance is the same for all).
    pub fn targets(&self) -> Vec<TargetInfo> {
        let jobs = self.jobs();
        let mut out = Vec::new();
        for (name, job) in jobs.iter() {
            let pool = lock_pool(&job.pool);
            for t in pool.loops.values() {
                let st = t.handle.status();
                out.push(TargetInfo {
                    instance: self.starter.instance.clone(),
                    target_group: name.clone(),
                    endpoint: t.target.url.clone(),
                    state: st.health.as_str(),
                    labels: to_map(&t.target.labels),
                    discovered_labels: to_map(&t.target.discovered_labels),
                    last_scrape: rfc3339_nano(st.last_scrape),
                    scrape_duration_ms: st.last_duration.as_millis() as i64,
                    scrape_error: if st.health == Health::Unknown {
                        String::new()
                    } else {
                        st.last_error.unwrap_or_default()
                    },
                });
            }
        }
        sort_targets(&mut out);
        out
    }

    /// How many targets are scraped (one loop each), without building their descriptions.
    pub fn active_targets(&self) -> usize {
        self.jobs()
            .values()
            .map(|j| lock_pool(&j.pool).loops.len())
            .sum()
    }

    /// Series texts in the series caches of every target (dropped ones included), as of each
    /// target's last scrape.
    pub fn cache_entries(&self) -> usize {
        self.jobs()
            .values()
            .map(|j| {
                lock_pool(&j.pool)
                    .loops
                    .values()
                    .map(|t| t.handle.cache_entries())
                    .sum::<usize>()
            })
            .sum()
    }

    /// The metric metadata of every active target, without duplicates (several targets
    /// exposing the same family with the same type, help and unit give one entry), as
    /// Prometheus's metadata watcher collects it for remote_write.
    pub fn metadata(&self) -> Vec<MetricMetadata> {
        let mut all = Vec::new();
        for job in self.jobs().values() {
            for t in lock_pool(&job.pool).loops.values() {
                metadata::lock(t.handle.metadata()).snapshot_into(&mut all);
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        all.retain(|m| seen.insert(m.clone()));
        all
    }
}

impl JobStarter {
    /// Starts one job: its HTTP client, then its targets from discovery or the assignment.
    /// Blocking (see [`JobStarter`]); its tasks are spawned on the runtime.
    fn start(&self, cfg: ScrapeConfig) -> Result<Job, JobError> {
        let cfg = Arc::new(cfg);
        let client = HttpClient::new(
            &cfg.http_client,
            &httpclient::Options {
                timeout: None,
                base_dir: self.base_dir.clone(),
                gzip: cfg.enable_compression,
                user_agent: Some(USER_AGENT.to_owned()),
                scrape: true,
                ..Default::default()
            },
        )
        .map_err(|source| JobError::Client {
            job: cfg.job_name.clone(),
            source,
        })?;
        let cancel = CancellationToken::new();
        // At ERROR level so that it is enabled whatever `--log.level` is (see logging.rs).
        let span = tracing::error_span!("scrape_job", job = %cfg.job_name);
        let pool = Arc::new(Mutex::new(Pool::default()));
        if let Some((source, barrier)) = &self.assigned {
            let rx = source.subscribe(&self.instance, &cfg.job_name);
            let task = tokio::spawn(
                sync_assigned(
                    Assigned {
                        cfg: cfg.clone(),
                        pool: pool.clone(),
                        client,
                        storage: self.storage.clone(),
                        clock: self.clock,
                        source: source.clone(),
                        barrier: barrier.clone(),
                    },
                    rx,
                    cancel.clone(),
                )
                .instrument(span.clone()),
            );
            span.in_scope(|| tracing::info!("started scrape job on assigned targets"));
            return Ok(Job {
                cfg,
                span,
                cancel,
                task,
                pool,
            });
        }
        // `host_filter`: pod discovery asks for this node's pods only. The job keeps the
        // config as written (`apply` compares it).
        let narrowed = self.host_filter.as_ref().and_then(|f| f.narrowed(&cfg));
        if let (Some(f), Some(_)) = (&self.host_filter, &narrowed) {
            span.in_scope(|| {
                tracing::info!(
                    node = %f.host(),
                    "host_filter: Kubernetes pod discovery asks for this node's pods only (field selector spec.nodeName)"
                )
            });
        }
        // Discovery's tasks are spawned in it too.
        let rx = span
            .in_scope(|| {
                let sd_cfg = narrowed.as_ref().unwrap_or(&cfg);
                discovery::start(sd_cfg, self.base_dir.as_deref(), cancel.clone())
            })?
            .targets;
        let task = tokio::spawn(
            sync_job(
                Discovered {
                    cfg: cfg.clone(),
                    pool: pool.clone(),
                    client,
                    storage: self.storage.clone(),
                    clock: self.clock,
                    host_filter: self.host_filter.clone(),
                },
                rx,
                cancel.clone(),
            )
            .instrument(span.clone()),
        );
        span.in_scope(|| tracing::info!("started scrape job"));
        Ok(Job {
            cfg,
            span,
            cancel,
            task,
            pool,
        })
    }
}

/// The targets built from one discovery group, with their identity.
pub(crate) struct BuiltGroup {
    /// Held so that the address the cache is keyed by cannot be reused by another group.
    group: Arc<TargetGroup>,
    active: Vec<(Labels, Arc<Target>)>,
}

fn build_group(
    cfg: &ScrapeConfig,
    group: &Arc<TargetGroup>,
    host_filter: Option<&HostFilter>,
) -> BuiltGroup {
    let mut active = Vec::new();
    let group_labels = Labels::from_pairs(group.labels.iter());
    for t in &group.targets {
        let tl = Labels::from_pairs(t.iter());
        // Not on this host: left out as if not discovered (not a dropped target).
        if host_filter.is_some_and(|f| !f.keeps(&group_labels, &tl)) {
            continue;
        }
        match populate_labels(&group_labels, &tl, cfg, false) {
            Ok(Some(target)) => active.push((target.full_labels.clone(), Arc::new(target))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(source = %group.source, error = %e, "creating target failed");
            }
        }
    }
    BuiltGroup {
        group: group.clone(),
        active,
    }
}

/// The targets of a discovery snapshot, relabelling only groups not seen before: `cache` holds
/// the groups of the previous snapshot by address, and discovery hands unchanged groups over
/// as the same `Arc`, so one changed pod among 10,000 costs one group's relabelling. The host
/// filter is the same for the cache's whole life (a changed one restarts the instance).
pub(crate) fn build_targets(
    cfg: &ScrapeConfig,
    groups: &[Arc<TargetGroup>],
    cache: &mut HashMap<usize, BuiltGroup>,
    host_filter: Option<&HostFilter>,
) -> HashMap<Labels, Arc<Target>> {
    let mut next = HashMap::with_capacity(groups.len());
    for g in groups {
        let key = Arc::as_ptr(g) as usize;
        let built = match cache.remove(&key) {
            Some(b) if Arc::ptr_eq(&b.group, g) => b,
            _ => build_group(cfg, g, host_filter),
        };
        next.insert(key, built);
    }
    *cache = next;
    let mut active = HashMap::new();
    // In snapshot order: of identical targets the last one's discovered labels are kept.
    for g in groups {
        if let Some(b) = cache.get(&(Arc::as_ptr(g) as usize)) {
            for (h, t) in &b.active {
                active.insert(h.clone(), t.clone());
            }
        }
    }
    active
}

/// What the sync task of a job on discovered targets works with.
struct Discovered {
    cfg: Arc<ScrapeConfig>,
    pool: Arc<Mutex<Pool>>,
    client: HttpClient,
    storage: Arc<dyn Storage>,
    clock: Clock,
    host_filter: Option<Arc<HostFilter>>,
}

async fn sync_job(job: Discovered, mut rx: discovery::Targets, cancel: CancellationToken) {
    let Discovered {
        cfg,
        pool,
        client,
        storage,
        clock,
        host_filter,
    } = job;
    let mut cache = HashMap::new();
    loop {
        let groups = rx.borrow_and_update().clone();
        let mut desired = build_targets(&cfg, &groups, &mut cache, host_filter.as_deref());
        let limit = cfg.limits.target_limit;
        let forced = (limit > 0 && desired.len() as u64 > limit).then(|| {
            format!(
                "target_limit exceeded (number of targets: {}, limit: {limit})",
                desired.len()
            )
        });
        let removed: Vec<RunningTarget> = {
            let mut p = lock_pool(&pool);
            let gone: Vec<LoopKey> = p
                .loops
                .keys()
                .filter(|h| !matches!(h, LoopKey::Target(l) if desired.contains_key(l)))
                .cloned()
                .collect();
            let removed = gone.iter().filter_map(|h| p.loops.remove(h)).collect();
            for (h, running) in p.loops.iter_mut() {
                let LoopKey::Target(h) = h else { continue };
                // Same identity; discovered labels may still differ (e.g. `__meta_*`).
                if let Some(t) = desired.remove(h) {
                    if !Arc::ptr_eq(&running.target, &t) && *running.target != *t {
                        running.target = t;
                    }
                }
            }
            for (h, target) in desired.drain() {
                let handle = ScrapeLoop::new(
                    cfg.clone(),
                    target.clone(),
                    client.clone(),
                    storage.clone(),
                    clock,
                )
                .spawn();
                p.loops
                    .insert(LoopKey::Target(h), RunningTarget { target, handle });
            }
            for t in p.loops.values() {
                t.handle.set_forced_error(forced.clone());
            }
            removed
        };
        if !removed.is_empty() {
            tracing::debug!(
                count = removed.len(),
                "stopping scrape loops of vanished targets"
            );
            stop_all(removed, true).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() {
                // Discovery ended (only on shutdown); keep the loops until the job stops.
                cancel.cancelled().await;
                return;
            },
        }
    }
}

/// What the sync task of a job on assigned targets works with.
struct Assigned {
    cfg: Arc<ScrapeConfig>,
    pool: Arc<Mutex<Pool>>,
    client: HttpClient,
    storage: Arc<dyn Storage>,
    clock: Clock,
    source: Arc<dyn AssignedSource>,
    barrier: Barrier,
}

/// Keeps a job's loops in step with its assigned targets (see [`crate::scrape::assigned`]):
/// new keys get a loop (holding or writing), keys gone from the job stop with staleness
/// markers, released keys stop without them and are reported once their samples are delivered.
async fn sync_assigned(
    a: Assigned,
    mut rx: tokio::sync::watch::Receiver<Arc<AssignedJob>>,
    cancel: CancellationToken,
) {
    let mut modes: HashMap<u64, tokio::sync::watch::Sender<Mode>> = HashMap::new();
    let mut releasing: std::collections::HashSet<u64> = std::collections::HashSet::new();
    loop {
        let job = rx.borrow_and_update().clone();
        let release: std::collections::HashSet<u64> = job.release.iter().copied().collect();
        let (gone, released) = {
            let mut p = lock_pool(&a.pool);
            let mut gone = Vec::new();
            let mut released = Vec::new();
            let keys: Vec<u64> = p
                .loops
                .keys()
                .filter_map(|k| match k {
                    LoopKey::Assigned(k) => Some(*k),
                    LoopKey::Target(_) => None,
                })
                .collect();
            for k in keys {
                let wanted = job.targets.iter().any(|t| t.key == k);
                if release.contains(&k) || !wanted {
                    if let Some(t) = p.loops.remove(&LoopKey::Assigned(k)) {
                        if release.contains(&k) {
                            released.push((k, t));
                        } else {
                            gone.push(t);
                        }
                    }
                    modes.remove(&k);
                }
            }
            for t in &job.targets {
                if release.contains(&t.key) {
                    continue;
                }
                if p.loops.contains_key(&LoopKey::Assigned(t.key)) {
                    if let Some(tx) = modes.get(&t.key) {
                        tx.send_if_modified(|m| {
                            let changed = *m != t.mode;
                            *m = t.mode;
                            changed
                        });
                        if matches!(t.mode, Mode::Write { .. }) {
                            // Writing is for good: the loop no longer follows the mode.
                            modes.remove(&t.key);
                        }
                    }
                    continue;
                }
                let mut lp = ScrapeLoop::new(
                    a.cfg.clone(),
                    t.target.clone(),
                    a.client.clone(),
                    a.storage.clone(),
                    a.clock,
                );
                if t.mode == Mode::Hold {
                    let (tx, mode) = tokio::sync::watch::channel(t.mode);
                    lp = lp.with_handover(t.key, mode, a.source.clone());
                    modes.insert(t.key, tx);
                }
                p.loops.insert(
                    LoopKey::Assigned(t.key),
                    RunningTarget {
                        target: t.target.clone(),
                        handle: lp.spawn(),
                    },
                );
            }
            for t in p.loops.values() {
                t.handle.set_forced_error(job.forced_error.clone());
            }
            (gone, released)
        };
        for (key, t) in released {
            releasing.insert(key);
            let source = a.source.clone();
            let barrier = a.barrier.clone();
            tokio::spawn(async move {
                let status = t.handle.stop_and_status(false).await;
                barrier().await;
                source.event(LoopEvent::Released {
                    key,
                    last_ms: status.last_appended_ms,
                });
            });
        }
        // A key released before this job ever ran it appended nothing here.
        for &key in &release {
            if releasing.insert(key) {
                a.source.event(LoopEvent::Released { key, last_ms: None });
            }
        }
        releasing.retain(|k| release.contains(k));
        if !gone.is_empty() {
            tracing::debug!(job = %a.cfg.job_name, count = gone.len(), "stopping scrape loops of targets no longer assigned or discovered");
            stop_all(gone, true).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() {
                cancel.cancelled().await;
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_nano_trims_like_go() {
        let at = |s: u64, n: u32| Some(SystemTime::UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(rfc3339_nano(None), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nano(at(1_700_000_000, 120_000_000)),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            rfc3339_nano(at(1_700_000_000, 1)),
            "2023-11-14T22:13:20.000000001Z"
        );
    }

    #[test]
    fn targets_response_has_the_api_shape() {
        let t = |inst: &str| TargetInfo {
            instance: "i".into(),
            target_group: "j".into(),
            endpoint: format!("http://{inst}/metrics"),
            state: "unknown",
            labels: [
                ("job".to_owned(), "j".to_owned()),
                ("instance".to_owned(), inst.to_owned()),
            ]
            .into(),
            discovered_labels: [("__address__".to_owned(), inst.to_owned())].into(),
            last_scrape: rfc3339_nano(None),
            scrape_duration_ms: 0,
            scrape_error: String::new(),
        };
        let v = targets_response(vec![t("b:1"), t("a:1")]);
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"][0]["labels"]["instance"], "a:1");
        assert_eq!(
            v["data"][1],
            serde_json::json!({
                "instance": "i", "target_group": "j", "endpoint": "http://b:1/metrics",
                "state": "unknown", "labels": {"instance": "b:1", "job": "j"},
                "discovered_labels": {"__address__": "b:1"},
                "last_scrape": "0001-01-01T00:00:00Z", "scrape_duration_ms": 0, "scrape_error": ""
            })
        );
    }

    #[tokio::test]
    async fn a_job_that_cannot_start_does_not_stop_the_others() {
        let yaml = "scrape_configs:\n  - job_name: ok\n    static_configs: [{targets: ['127.0.0.1:9']}]\n  - job_name: ec2\n    ec2_sd_configs: [{region: 'eu-west-1'}]\n";
        let (_, cfg) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .expect("valid");
        let storage = crate::scrape::appender::MemoryStorage::new();
        let m = ScrapeManager::new("i", Arc::new(storage), None);
        let err = m.apply(&cfg.scrape_configs).await.unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.to_string().contains("\"ec2\""), "{err}");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while m.targets().is_empty() {
            assert!(std::time::Instant::now() < deadline, "job ok never synced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ts = m.targets();
        assert_eq!(ts[0].target_group, "ok");
        assert_eq!(ts[0].state, "unknown");
        m.stop(false).await;
        assert!(m.targets().is_empty());
    }

    #[test]
    fn targets_are_identified_by_full_labels_and_dropped_ones_left_out() {
        let yaml = "scrape_configs:\n  - job_name: j\n    static_configs: [{targets: ['a:1', 'a:1', 'b:2', 'c:3']}]\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: 'c:3'\n        action: drop\n";
        let (_, cfg) =
            crate::config::load::parse_instance(yaml, &crate::config::GlobalConfig::default())
                .expect("valid");
        let cfg = &cfg.scrape_configs[0];
        let groups = vec![Arc::new(TargetGroup {
            source: "0".into(),
            targets: ["a:1", "a:1", "b:2", "c:3"]
                .iter()
                .map(|a| [("__address__".to_owned(), (*a).to_owned())].into())
                .collect(),
            labels: Default::default(),
        })];
        let mut cache = HashMap::new();
        let active = build_targets(cfg, &groups, &mut cache, None);
        assert_eq!(active.len(), 2, "duplicates collapse, c:3 is dropped");
        assert!(active.values().all(|t| t.url != "http://c:3/metrics"));
        for (h, t) in &active {
            assert_eq!(*h, t.full_labels);
        }
        // The same group again is not relabelled: its targets are the very same.
        let again = build_targets(cfg, &groups, &mut cache, None);
        for (h, t) in &again {
            assert!(Arc::ptr_eq(t, &active[h]));
        }
        // A new group (even an equal one) is built anew, and the old one leaves the cache.
        let other = vec![Arc::new((*groups[0]).clone())];
        let fresh = build_targets(cfg, &other, &mut cache, None);
        assert_eq!(fresh.len(), 2);
        for (h, t) in &fresh {
            assert!(!Arc::ptr_eq(t, &active[h]));
        }
        assert_eq!(cache.len(), 1);
    }
}
