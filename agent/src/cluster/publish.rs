//! Service discovery in target sharding mode: the ring owner of a config (today's FNV-1 lookup)
//! runs its discovery and `relabel_configs`, without scraping, and publishes the resulting
//! targets to `sharding/targets/<config>` for the assignment leader and the scrapers.
//!
//! * A value is written only when the targets changed, at most once per [`MIN_INTERVAL`] per
//!   config, so a burst of discovery events (a Kubernetes rollout) is one write.
//! * Nothing is written before every job's discovery has reported (its `synced` signal: every
//!   provider's first discovery is complete), or [`SETTLE`] after start: an agent that just
//!   took a config over would otherwise replace its published targets with a half-discovered
//!   list, and the scrapers would stop the rest with staleness markers. A job whose providers
//!   are all `static_configs` has reported at once.
//! * `target_limit` is judged here, where the whole job is seen, and published per job.
//! * Losing a config to another owner stops its discovery and leaves its value (the new owner
//!   overwrites it); a deleted config's value is deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::ShardingMetrics;
use super::store::{self, Expect, Layout, PublishedJob, PublishedTargets, FORMAT_VERSION};
use crate::config::scrape::ScrapeConfig;
use crate::config::InstanceConfig;
use crate::discovery;
use crate::kv::KvStore;
use crate::scrape::identity::count_collisions;
use crate::scrape::manager::build_targets;

/// The shortest time between two writes of one config's targets.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a config's first write waits for every job's discovery to report.
pub const SETTLE: Duration = Duration::from_secs(30);

/// One job's discovery.
struct JobSd {
    cfg: Arc<ScrapeConfig>,
    rx: discovery::Targets,
    /// Whether every provider has reported since it started.
    synced: tokio::sync::watch::Receiver<bool>,
}

/// The published targets of `jobs` (sorted, so equal sets compare equal), and the number of
/// targets sharing an identity.
pub fn published(config: &str, jobs: &[JobTargets<'_>]) -> (PublishedTargets, usize) {
    let mut out = Vec::with_capacity(jobs.len());
    let mut collisions = 0;
    for (cfg, groups) in jobs {
        // Every group is relabelled again here: this runs once per second at most.
        let active = build_targets(cfg, groups, &mut HashMap::new(), None);
        collisions += count_collisions(active.values().map(|t| t.identity(&cfg.job_name)));
        let limit = cfg.limits.target_limit;
        let forced_error = (limit > 0 && active.len() as u64 > limit).then(|| {
            format!(
                "target_limit exceeded (number of targets: {}, limit: {limit})",
                active.len()
            )
        });
        let mut targets: Vec<Vec<String>> = active
            .values()
            .map(|t| {
                t.full_labels
                    .iter()
                    .flat_map(|(n, v)| [n.to_owned(), v.to_owned()])
                    .collect()
            })
            .collect();
        targets.sort();
        out.push(PublishedJob {
            job: cfg.job_name.clone(),
            forced_error,
            targets,
        });
    }
    (
        PublishedTargets {
            v: FORMAT_VERSION,
            config: config.to_owned(),
            jobs: out,
        },
        collisions,
    )
}

/// A job's config and its current discovery snapshot.
pub type JobTargets<'a> = (&'a ScrapeConfig, &'a [Arc<discovery::TargetGroup>]);

struct Running {
    cfg: InstanceConfig,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The configs whose discovery this agent runs.
pub struct Publisher {
    kv: Arc<dyn KvStore>,
    layout: Layout,
    base_dir: Option<PathBuf>,
    metrics: ShardingMetrics,
    running: HashMap<String, Running>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("configs", &self.running.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Publisher {
    pub fn new(
        kv: Arc<dyn KvStore>,
        layout: Layout,
        base_dir: Option<PathBuf>,
        metrics: ShardingMetrics,
    ) -> Self {
        Publisher {
            kv,
            layout,
            base_dir,
            metrics,
            running: HashMap::new(),
        }
    }

    /// The configs discovered here.
    pub fn configs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.keys().cloned().collect();
        v.sort();
        v
    }

    /// Runs discovery for exactly `owned`: starts new ones, restarts changed ones, stops the
    /// others (their values stay: their new owner overwrites them).
    pub async fn set(&mut self, owned: Vec<InstanceConfig>) {
        let wanted: HashMap<String, InstanceConfig> =
            owned.into_iter().map(|c| (c.name.clone(), c)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(n, r)| wanted.get(*n) != Some(&r.cfg))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.stop(&name).await;
        }
        for (name, cfg) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            let cancel = CancellationToken::new();
            let task = tokio::spawn(run_config(
                self.kv.clone(),
                self.layout.clone(),
                cfg.clone(),
                self.base_dir.clone(),
                self.metrics.clone(),
                cancel.clone(),
            ));
            tracing::info!(config = %name, "discovering targets for target sharding");
            self.running.insert(name, Running { cfg, cancel, task });
        }
    }

    async fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            r.cancel.cancel();
            let _ = r.task.await;
            self.metrics.forget_config(name);
        }
    }

    /// The config was deleted: stop its discovery and delete its targets.
    pub async fn deleted(&mut self, name: &str) {
        self.stop(name).await;
        let key = self.layout.targets_key(name);
        if let Err(e) = store::delete(&*self.kv, &self.layout, &key).await {
            // The leader removes targets of deleted configs once a minute as well.
            tracing::warn!(config = name, error = %e, "cannot delete the targets of a deleted config");
        }
    }

    /// Stops every discovery (shutdown), leaving the values.
    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for n in names {
            self.stop(&n).await;
        }
    }
}

async fn run_config(
    kv: Arc<dyn KvStore>,
    layout: Layout,
    cfg: InstanceConfig,
    base_dir: Option<PathBuf>,
    metrics: ShardingMetrics,
    cancel: CancellationToken,
) {
    let name = cfg.name.clone();
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut jobs = Vec::new();
    for sc in &cfg.scrape_configs {
        match discovery::start(sc, base_dir.as_deref(), cancel.child_token()) {
            Ok(d) => {
                let (mut watch, mut synced) = (d.targets.clone(), d.synced.clone());
                let notify = changed.clone();
                let stop = cancel.clone();
                tokio::spawn(async move {
                    let mut synced_open = true;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            r = watch.changed() => if r.is_err() { return },
                            r = synced.changed(), if synced_open => synced_open = r.is_ok(),
                        }
                        notify.notify_one();
                    }
                });
                jobs.push(JobSd {
                    cfg: Arc::new(sc.clone()),
                    rx: d.targets,
                    synced: d.synced,
                });
            }
            Err(e) => {
                tracing::error!(config = %name, error = %e, "scrape job not discovered; its targets are not published");
            }
        }
    }
    let started = tokio::time::Instant::now();
    let mut last: Option<PublishedTargets> = None;
    let mut last_write = started - MIN_INTERVAL;
    loop {
        let settled = jobs.iter().all(|j| *j.synced.borrow()) || started.elapsed() >= SETTLE;
        if settled {
            type Snapshot = (Arc<ScrapeConfig>, Arc<Vec<Arc<discovery::TargetGroup>>>);
            let snapshots: Vec<Snapshot> = jobs
                .iter_mut()
                .map(|j| (j.cfg.clone(), j.rx.borrow_and_update().clone()))
                .collect();
            let cfg_name = name.clone();
            let built = tokio::task::spawn_blocking(move || {
                let refs: Vec<JobTargets<'_>> = snapshots
                    .iter()
                    .map(|(c, g)| (&**c, g.as_slice()))
                    .collect();
                published(&cfg_name, &refs)
            })
            .await;
            let Ok((doc, collisions)) = built else {
                tracing::error!(config = %name, "building the targets failed");
                return;
            };
            metrics.collisions(&name).set(collisions as i64);
            if last.as_ref() != Some(&doc) {
                let wait = (last_write + MIN_INTERVAL)
                    .saturating_duration_since(tokio::time::Instant::now());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match store::write(&*kv, &layout, &layout.targets_key(&name), &doc, Expect::Any)
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(config = %name, targets = doc.len(), collisions, "published targets");
                        last = Some(doc);
                        last_write = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(config = %name, error = %e, "cannot publish targets; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(MIN_INTERVAL) => {}
                        }
                        continue;
                    }
                }
                // Changes during the pause are picked up by the next round at once.
                continue;
            }
        }
        let settle_left = SETTLE.saturating_sub(started.elapsed());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(settle_left), if !settled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::read;
    use crate::kv::InMemoryStore;

    fn config(yaml: &str) -> InstanceConfig {
        let (_, cfg) = crate::config::load::parse_instance_named(
            yaml,
            Some("c"),
            &crate::config::GlobalConfig::default(),
        )
        .expect("valid");
        cfg
    }

    async fn wait_published(
        kv: &dyn KvStore,
        f: impl Fn(&PublishedTargets) -> bool,
    ) -> PublishedTargets {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some((doc, _))) = read::<PublishedTargets>(
                kv,
                &Layout::default(),
                &Layout::default().targets_key("c"),
            )
            .await
            {
                if f(&doc) {
                    return doc;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not published in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn publishes_relabelled_targets_once_per_change_with_limits_and_collisions() {
        let kv: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.json");
        std::fs::write(&file, r#"[{"targets": ["f:1", "f:2"]}]"#).unwrap();
        let yaml = format!(
            "scrape_configs:
  - job_name: static
    target_limit: 2
    static_configs:
      - targets: ['a:1', 'b:1', 'c:1']
      - targets: ['a:1']
        labels: {{env: x}}
    relabel_configs:
      - source_labels: [__address__]
        regex: 'c:1'
        action: drop
  - job_name: files
    file_sd_configs: [{{files: ['{}']}}]
",
            file.display()
        );
        let metrics = ShardingMetrics::default();
        let mut p = Publisher::new(kv.clone(), Layout::default(), None, metrics.clone());
        p.set(vec![config(&yaml)]).await;
        let doc = wait_published(&*kv, |d| d.len() == 5).await;
        assert_eq!(doc.config, "c");
        let st = &doc.jobs[0];
        assert_eq!(st.job, "static");
        assert_eq!(st.targets.len(), 3, "c:1 dropped by relabelling");
        assert_eq!(
            st.forced_error.as_deref(),
            Some("target_limit exceeded (number of targets: 3, limit: 2)")
        );
        assert!(st
            .targets
            .iter()
            .all(|t| !t.iter().any(|s| s.starts_with("__meta_"))));
        assert_eq!(
            metrics.collisions("c").get(),
            2,
            "a:1 twice, with different labels"
        );
        assert_eq!(doc.jobs[1].targets.len(), 2);

        // A file change is published; the keys of unchanged targets stay the same.
        let before: Vec<_> = doc.keys().map(|(_, _, k)| k).collect();
        std::fs::write(&file, r#"[{"targets": ["f:1", "f:2", "f:3"]}]"#).unwrap();
        let doc = wait_published(&*kv, |d| d.len() == 6).await;
        let after: Vec<_> = doc.keys().map(|(_, _, k)| k).collect();
        assert!(before.iter().all(|k| after.contains(k)));

        // Losing the config leaves the value; deleting it removes it.
        p.set(vec![]).await;
        assert!(kv
            .get(&Layout::default().targets_key("c"))
            .await
            .unwrap()
            .is_some());
        p.set(vec![config(&yaml)]).await;
        p.deleted("c").await;
        assert!(kv
            .get(&Layout::default().targets_key("c"))
            .await
            .unwrap()
            .is_none());
        assert!(p.configs().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_discovery_before_the_first_write() {
        let kv: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        // An http_sd server that never answers: its job never reports.
        let yaml = "scrape_configs:
  - job_name: static
    static_configs: [{targets: ['a:1']}]
  - job_name: remote
    http_sd_configs: [{url: 'http://127.0.0.1:1/sd'}]
";
        let mut p = Publisher::new(
            kv.clone(),
            Layout::default(),
            None,
            ShardingMetrics::default(),
        );
        p.set(vec![config(yaml)]).await;
        tokio::time::sleep(SETTLE - Duration::from_secs(1)).await;
        assert!(
            kv.get(&Layout::default().targets_key("c"))
                .await
                .unwrap()
                .is_none(),
            "published before settling"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let doc = wait_published(&*kv, |_| true).await;
        assert_eq!(doc.len(), 1);
        p.stop_all().await;
    }
}
