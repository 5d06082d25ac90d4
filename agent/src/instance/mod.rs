//! A running instance: one config's scraping, WAL and remote_write (spec §6.3, §7.4).
//!
//! ```text
//! discovery → scrape loops → WalStorage (WAL) ─commit signal→ watcher → QueueManager → receiver
//!                                   ↑ truncation every wal_truncate_frequency, at
//!                                     lowest sent timestamp − min_wal_time (clamped by max_wal_time)
//! ```
//!
//! The WAL lives in `<wal_directory>/<instance>/wal`; each remote_write keeps its progress in
//! `<wal_directory>/<instance>/remote_write/<name>`.

pub mod manager;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::InstanceConfig;
use crate::remote_write::{QueueManager, RemoteWriteMetrics};
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

/// The folder name of an instance under `wal_directory`: the config name with `/` (allowed in
/// config names, as `team/a`) turned into `--`, so every instance is one folder level deep.
pub fn dir_name(name: &str) -> String {
    name.replace('/', "--")
}

/// One remote_write endpoint of an instance.
struct Remote {
    queue: Arc<QueueManager>,
    watcher: JoinHandle<()>,
    stop: CancellationToken,
    progress: PathBuf,
}

/// A running instance.
pub struct Instance {
    cfg: InstanceConfig,
    dir: PathBuf,
    storage: Arc<WalStorage>,
    scrape: ScrapeManager,
    remotes: Vec<Remote>,
    housekeeping: JoinHandle<()>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.cfg.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What every instance of an agent shares.
#[derive(Clone)]
pub struct Shared {
    pub wal_directory: PathBuf,
    pub agent_id: String,
    pub metrics: RemoteWriteMetrics,
    /// Directory relative file paths of configs are resolved against.
    pub base_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("wal_directory", &self.wal_directory)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(wal_directory: &Path, agent_id: &str, registry: &mut Registry) -> Self {
        Shared {
            wal_directory: wal_directory.to_path_buf(),
            agent_id: agent_id.to_owned(),
            metrics: RemoteWriteMetrics::register(registry),
            base_dir: None,
        }
    }
}

impl Instance {
    /// Opens (repairing and replaying) the WAL, starts remote_write from it, then scraping.
    pub async fn start(cfg: InstanceConfig, shared: &Shared) -> Result<Instance, InstanceError> {
        let name = cfg.name.clone();
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
        if let Some(r) = &replay.repair {
            tracing::warn!(instance = %name, repair = ?r, "WAL repaired on open");
        }
        let storage = Arc::new(WalStorage::new(&name, wal, &replay.series));
        let stop = CancellationToken::new();

        let mut remotes = Vec::new();
        for rw in &cfg.remote_write {
            let queue = QueueManager::from_config(
                rw,
                &cfg.external_labels,
                Some(&shared.agent_id),
                &shared.metrics,
                None,
            )
            .map_err(|e| InstanceError::RemoteWrite {
                name: name.clone(),
                remote: rw.name.clone(),
                message: e.to_string(),
            })?;
            let queue = Arc::new(queue);
            let rstop = stop.child_token();
            let progress = dir.join("remote_write").join(dir_name(&rw.name));
            let watcher = tokio::spawn(crate::remote_write::watcher::run(
                wal_dir.clone(),
                queue.clone(),
                progress.clone(),
                storage.commits(),
                rstop.clone(),
            ));
            remotes.push(Remote {
                queue,
                watcher,
                stop: rstop,
                progress,
            });
        }

        let scrape = ScrapeManager::new(name.clone(), storage.clone(), shared.base_dir.clone());
        if let Err(e) = scrape.apply(&cfg.scrape_configs).await {
            // Jobs that could start run; the others are reported (unsupported SD, bad TLS...).
            tracing::error!(instance = %name, error = %e, "some scrape jobs could not start");
        }
        let queues: Vec<Arc<QueueManager>> = remotes.iter().map(|r| r.queue.clone()).collect();
        let housekeeping = tokio::spawn(housekeeping(
            cfg.clone(),
            storage.clone(),
            queues,
            stop.clone(),
        ));
        tracing::info!(instance = %name, jobs = cfg.scrape_configs.len(), remote_writes = cfg.remote_write.len(),
            replayed_series = replay.series.len(), "instance started");
        Ok(Instance {
            cfg,
            dir,
            storage,
            scrape,
            remotes,
            housekeeping,
            stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }

    /// Applies a changed config in place when only scrape configs changed; `false` when the
    /// instance must be restarted (remote_write or WAL settings changed).
    pub async fn update(&mut self, cfg: InstanceConfig) -> bool {
        let same_rest = cfg.remote_write == self.cfg.remote_write
            && cfg.external_labels == self.cfg.external_labels
            && cfg.wal_truncate_frequency == self.cfg.wal_truncate_frequency
            && cfg.min_wal_time == self.cfg.min_wal_time
            && cfg.max_wal_time == self.cfg.max_wal_time
            && cfg.remote_flush_deadline == self.cfg.remote_flush_deadline
            && cfg.write_stale_on_shutdown == self.cfg.write_stale_on_shutdown
            && cfg.host_filter == self.cfg.host_filter;
        if !same_rest {
            return false;
        }
        if let Err(e) = self.scrape.apply(&cfg.scrape_configs).await {
            tracing::error!(instance = %cfg.name, error = %e, "some scrape jobs could not start");
        }
        self.cfg = cfg;
        true
    }

    pub fn targets(&self) -> Vec<TargetInfo> {
        self.scrape.targets()
    }

    /// Stops scraping (staleness markers only when `write_stale`, i.e. not when the config
    /// moved to another agent that continues the series), then flushes remote_write for up to
    /// `remote_flush_deadline`.
    pub async fn stop(self, write_stale: bool) {
        let name = self.cfg.name.clone();
        self.scrape.stop(write_stale).await;
        let _ = self.storage.with_wal(|w| w.sync());
        self.stop.cancel();
        let _ = self.housekeeping.await;
        let deadline = tokio::time::Instant::now() + self.cfg.remote_flush_deadline.as_std();
        for r in self.remotes {
            r.stop.cancel();
            let _ = r.watcher.await;
            let report = r.queue.flush(deadline).await;
            // What the flush delivered is not sent again after a restart.
            let (q, p) = (r.queue.clone(), r.progress.clone());
            let saved = tokio::task::spawn_blocking(move || {
                crate::remote_write::watcher::save_progress(&q, &p, true)
            })
            .await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(instance = %name, remote_name = %r.queue.remote_name(), file = %r.progress.display(), error = %e,
                    "cannot save remote_write progress");
            }
            if !report.complete {
                tracing::warn!(instance = %name, remote_name = %r.queue.remote_name(), dropped = report.dropped,
                    "remote_write flush did not finish before remote_flush_deadline; the rest stays in the WAL");
            }
        }
        tracing::info!(instance = %name, "instance stopped");
    }
}

/// fsyncs the WAL every second and truncates it every `wal_truncate_frequency`.
async fn housekeeping(
    cfg: InstanceConfig,
    storage: Arc<WalStorage>,
    queues: Vec<Arc<QueueManager>>,
    stop: CancellationToken,
) {
    let mut last_truncate = tokio::time::Instant::now();
    let mut previous = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = storage.with_wal(|w| w.sync()) {
            tracing::error!(instance = %cfg.name, error = %e, "WAL fsync failed");
        }
        if last_truncate.elapsed() < cfg.wal_truncate_frequency.as_std() {
            continue;
        }
        last_truncate = tokio::time::Instant::now();
        let lowest = if queues.is_empty() {
            None
        } else {
            // Every endpoint must have sent it; one that never sent anything holds the WAL.
            let sent: Option<Vec<i64>> = queues.iter().map(|q| q.lowest_sent_timestamp()).collect();
            match sent {
                Some(v) => v.into_iter().min(),
                None => {
                    tracing::debug!(instance = %cfg.name, "WAL truncation waits for every remote_write to send");
                    continue;
                }
            }
        };
        let now = crate::logging::now_millis();
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
        let s = storage.clone();
        let result = tokio::task::spawn_blocking(move || {
            s.with_wal(|w| {
                let gone = w.gc(mint);
                (gone, w.gc_and_truncate(mint))
            })
        })
        .await;
        match result {
            Ok((gone, Ok(stats))) => {
                storage.forget(&gone);
                tracing::info!(instance = %cfg.name, mint, stats = ?stats, "WAL truncated");
            }
            Ok((gone, Err(e))) => {
                storage.forget(&gone);
                tracing::error!(instance = %cfg.name, error = %e, "WAL truncation failed");
            }
            Err(e) => {
                tracing::error!(instance = %cfg.name, error = %e, "WAL truncation task failed")
            }
        }
    }
}
