//! The supervisor: the one task that owns the running agent config. It starts what the config
//! asks for (the cluster once the KV store is reachable, or the file's own `configs` without
//! the scraping service, and the WAL cleaner), applies reloads one at a time, and on shutdown
//! leaves the ring (or stops the instances). Reload requests arrive over a channel
//! ([`crate::api::status::Reloader`]) from `/-/reload` and SIGHUP; nothing else writes the
//! config, so no lock guards it.
//!
//! A reload re-reads `-config.file` and validates it fully first; an invalid file, or one
//! changing a field that needs a restart (see `agent/src/config/reload.rs`), is refused (the
//! error names file:line or the fields) and the running config stays. Every attempt sets
//! `agent_config_last_load_successful` (1/0); successes set
//! `agent_config_last_load_success_timestamp_seconds`, failures count in
//! `agent_config_load_failures_total` (the old agent's names).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Agent, Options};
use crate::api::status::ReloadRequest;
use crate::api::{ApiState, StoreSlot};
use crate::clock::Clock;
use crate::cluster::{Cluster, JoinSettings, TargetShardingSetup};
use crate::config::agent::InstanceMode;
use crate::config::{AgentConfig, ConfigError};
use crate::instance::manager::InstanceManager;
use crate::kv::configstore::ConfigStore;
use crate::kv::{self, KvStore};
use crate::ring::lifecycler::LifecyclerSettings;

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate; the message names file:line where known.
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("{}: changing {} requires a restart; the running configuration is kept", .file.display(), .fields.join(", "))]
    NeedsRestart {
        file: PathBuf,
        fields: Vec<&'static str>,
    },
}

/// The old agent's config-load metrics.
#[derive(Debug, Clone, Default)]
pub struct LoadMetrics {
    clock: Clock,
    successful: Gauge,
    success_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    failures: Counter,
}

impl LoadMetrics {
    pub fn register(registry: &mut Registry, clock: Clock) -> Self {
        let m = LoadMetrics {
            clock,
            ..LoadMetrics::default()
        };
        registry.register(
            "agent_config_last_load_successful",
            "Whether the last config load (start or reload) succeeded (1) or not (0)",
            m.successful.clone(),
        );
        registry.register(
            "agent_config_last_load_success_timestamp_seconds",
            "Timestamp of the last successful configuration load",
            m.success_timestamp.clone(),
        );
        registry.register(
            "agent_config_load_failures",
            "Configuration load failures",
            m.failures.clone(),
        );
        m
    }

    pub fn record(&self, ok: bool) {
        if ok {
            self.successful.set(1);
            self.success_timestamp
                .set(self.clock.unix_millis() as f64 / 1000.0);
        } else {
            self.successful.set(0);
            self.failures.inc();
        }
    }
}

pub struct Supervisor {
    options: Options,
    /// The config in effect (reloads replace it).
    config: AgentConfig,
    clock: Clock,
    manager: Arc<InstanceManager>,
    api: Arc<ApiState>,
    load_metrics: LoadMetrics,
    lifecycler: LifecyclerSettings,
    local_store: Option<Arc<dyn KvStore>>,
    /// The HTTPS server's certificates (a reload may change the settings).
    server_tls: Option<Arc<crate::api::tls::ServerTls>>,
    /// Target sharding's parts, handed to the cluster when it starts.
    sharding: Option<TargetShardingSetup>,
    ready: watch::Sender<bool>,
    ring_page: Arc<OnceLock<axum::Router>>,
    /// The config in effect as `GET /-/config` shows it.
    shown: watch::Sender<Option<String>>,
    /// The cluster for `/metrics`, once joined.
    cluster_cell: Arc<OnceLock<Arc<Cluster>>>,
    /// Once the KV store is reachable.
    cluster: Option<(Arc<Cluster>, JoinHandle<()>)>,
    /// Stops the running WAL cleaner (restarted when its settings are reloaded).
    cleaner_stop: CancellationToken,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub(super) fn new(
        agent: Agent,
        ring_page: Arc<OnceLock<axum::Router>>,
        shown: watch::Sender<Option<String>>,
    ) -> Supervisor {
        Supervisor {
            config: agent.options.config.clone(),
            options: agent.options,
            clock: agent.clock,
            manager: agent.manager,
            api: agent.api,
            load_metrics: agent.load_metrics,
            lifecycler: agent.lifecycler,
            local_store: agent.local_store,
            server_tls: agent.server_tls,
            sharding: agent.sharding,
            ready: agent.ready,
            ring_page,
            shown,
            cluster_cell: agent.cluster,
            cluster: None,
            cleaner_stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Runs until `shutdown`, then leaves the ring (or stops every instance).
    pub async fn run(
        mut self,
        mut reloads: mpsc::Receiver<ReloadRequest>,
        shutdown: CancellationToken,
    ) {
        self.shutdown = shutdown.clone();
        self.cleaner_stop = self.spawn_cleaner(&self.config);
        let (connected_tx, mut connected) = mpsc::channel(1);
        let ss = &self.config.scraping_service;
        if ss.enabled {
            match self.local_store.take() {
                Some(store) => self.start_cluster(store, &shutdown).await,
                None => {
                    let (backend, api, stop) =
                        (ss.kvstore.clone(), self.api.clone(), shutdown.clone());
                    let wal = PathBuf::from(&self.config.wal_directory);
                    tokio::spawn(async move {
                        if let Some(store) = connect(&backend, &wal, &api, &stop).await {
                            let _ = connected_tx.send(store).await;
                        }
                    });
                }
            }
        } else {
            // No scraping service: the file's `configs` run here.
            for c in self.config.configs.clone() {
                let name = c.name.clone();
                if let Err(e) = self.manager.apply(c).await {
                    tracing::error!(config = %name, error = %e, "config not run");
                }
            }
            let (manager, ready) = (self.manager.clone(), self.ready.clone());
            tokio::spawn(async move {
                manager.settled().await;
                ready.send_replace(true);
            });
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(req) = reloads.recv() => {
                    let outcome = self.reload_notifying().await.map_err(|e| e.to_string());
                    let _ = req.reply.send(outcome);
                }
                Some(store) = connected.recv() => self.start_cluster(store, &shutdown).await,
            }
        }
        crate::notify::stopping();
        drop(reloads);
        match self.cluster.take() {
            // Its run loop ends on `shutdown`: hand-over, flush, leave the ring.
            Some((_, task)) => {
                let _ = task.await;
            }
            None => self.manager.stop_all(false).await,
        }
    }

    /// Starts the WAL cleaner with `cfg`'s settings; the token stops it.
    fn spawn_cleaner(&self, cfg: &AgentConfig) -> CancellationToken {
        let stop = self.shutdown.child_token();
        tokio::spawn(crate::instance::cleaner::run(
            self.manager.clone(),
            cfg.wal_cleanup_age.as_std(),
            cfg.wal_cleanup_period.as_std(),
            stop.clone(),
        ));
        stop
    }

    /// Joins the ring and starts resharding on `store` (configs and, unless configured apart,
    /// the ring live in the same store), with the config in effect now.
    async fn start_cluster(&mut self, store: Arc<dyn KvStore>, shutdown: &CancellationToken) {
        let ss = &self.config.scraping_service;
        tracing::info!(store = %store.describe(), prefix = %ss.config_prefix, "config store connected");
        let configs = Arc::new(ConfigStore::with_prefix(
            store.clone(),
            ss.config_prefix.clone(),
        ));
        self.api.set_store(StoreSlot::Ready(configs.clone()));
        let ring_store = if ss.lifecycler.ring_kvstore == ss.kvstore {
            store
        } else {
            match kv::open(
                &ss.lifecycler.ring_kvstore,
                std::path::Path::new(&self.config.wal_directory),
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the ring's KV store; this agent runs no configs");
                    return;
                }
            }
        };
        let (cluster, page) = Cluster::join(
            configs,
            ring_store,
            self.manager.clone(),
            JoinSettings {
                lifecycler: self.lifecycler.clone(),
                global: self.config.global.clone(),
                reshard_interval: ss.reshard_interval.as_std(),
                clock: self.clock,
            },
            self.sharding.take(),
        );
        let _ = self.ring_page.set(page);
        let _ = self.cluster_cell.set(cluster.clone());
        let mut cluster_ready = cluster.ready();
        let ready = self.ready.clone();
        tokio::spawn(async move {
            if cluster_ready.wait_for(|r| *r).await.is_ok() {
                ready.send_replace(true);
            }
        });
        let task = tokio::spawn(cluster.clone().run(shutdown.clone()));
        self.cluster = Some((cluster, task));
    }

    /// [`Supervisor::reload`], told to the service manager (RELOADING=1, then READY=1) once it
    /// was told the agent is ready.
    async fn reload_notifying(&mut self) -> Result<(), ReloadError> {
        let notify = *self.ready.borrow();
        if notify {
            crate::notify::reloading();
        }
        let result = self.reload().await;
        if notify {
            crate::notify::ready(match &result {
                Ok(()) => "config reloaded",
                Err(_) => "config reload refused; running the previous config",
            });
        }
        result
    }

    /// Re-reads `-config.file`, validates it, refuses changes that need a restart, and applies
    /// the rest live. Logs what changed or why it was refused.
    async fn reload(&mut self) -> Result<(), ReloadError> {
        let Some(path) = self.options.config_file.clone() else {
            tracing::info!(
                "reload requested; running the embedded default (no config file), nothing to reload"
            );
            self.load_metrics.record(true);
            return Ok(());
        };
        let expand_env = self.options.expand_env;
        let wal_directory_flag = self.options.wal_directory_flag.clone();
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                crate::config::load::load_agent_file_with(
                    &path,
                    expand_env,
                    wal_directory_flag.as_deref(),
                )
            })
            .await
        };
        let (new, shown) = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.load_metrics.record(false);
                tracing::error!(file = %path.display(), error = %e, "reload refused: invalid configuration; the running configuration is kept");
                return Err(ReloadError::Invalid(e));
            }
            Err(join) => {
                self.load_metrics.record(false);
                let e = ConfigError::new(format!("reading the file failed: {join}")).in_file(&path);
                tracing::error!(error = %e, "reload refused");
                return Err(ReloadError::Invalid(e));
            }
        };
        let plan = crate::config::reload::plan(&self.config, &new);
        if !plan.restart_required.is_empty() {
            self.load_metrics.record(false);
            let e = ReloadError::NeedsRestart {
                file: path,
                fields: plan.restart_required,
            };
            tracing::error!(error = %e, "reload refused");
            return Err(e);
        }
        if let (Some(tls), Some(settings)) = (&self.server_tls, &new.http_tls) {
            if self.config.http_tls.as_ref() != Some(settings) {
                if let Err(e) = tls.replace(settings).await {
                    self.load_metrics.record(false);
                    let e = ReloadError::Invalid(ConfigError::new(e.to_string()).in_file(&path));
                    tracing::error!(error = %e, "reload refused; the running configuration is kept");
                    return Err(e);
                }
            }
        }
        if plan.changed.is_empty() {
            tracing::info!(file = %path.display(), "config reloaded; nothing changed");
        } else {
            tracing::info!(file = %path.display(), changed = %plan.changed.join(","), "config reloaded; applying");
            self.apply(&new).await;
        }
        self.config = new;
        self.shown.send_replace(Some(shown));
        self.load_metrics.record(true);
        Ok(())
    }

    /// Applies the live fields of `new` (already checked against the running config by the
    /// reload plan).
    async fn apply(&mut self, new: &AgentConfig) {
        if (self.config.wal_cleanup_age, self.config.wal_cleanup_period)
            != (new.wal_cleanup_age, new.wal_cleanup_period)
        {
            let fresh = self.spawn_cleaner(new);
            std::mem::replace(&mut self.cleaner_stop, fresh).cancel();
        }
        let old = &self.config;
        let manager = &self.manager;
        manager.set_restart_backoff(new.instance_restart_backoff.as_std());
        *self
            .api
            .global
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new.global.clone();
        self.api.dangerous_allow_reading_files.store(
            new.scraping_service.dangerous_allow_reading_files,
            std::sync::atomic::Ordering::Release,
        );
        let rejected = manager.set_mode(new.instance_mode).await;
        if old.instance_mode != new.instance_mode {
            let mode = match new.instance_mode {
                InstanceMode::Shared => "shared",
                InstanceMode::Distinct => "distinct",
            };
            tracing::info!(
                instance_mode = mode,
                dropped = rejected.len(),
                "configs regrouped"
            );
        }
        if let Some((cluster, _)) = &self.cluster {
            // Re-validates every owned config against the new global and re-applies by
            // content; also places again the configs a mode switch could not regroup.
            cluster
                .reload(
                    new.global.clone(),
                    new.scraping_service.reshard_interval.as_std(),
                )
                .await;
        } else if !new.scraping_service.enabled {
            // Without the scraping service the file's `configs` are the whole truth.
            let wanted: std::collections::HashSet<&str> =
                new.configs.iter().map(|c| c.name.as_str()).collect();
            for name in manager.names() {
                if !wanted.contains(name.as_str()) {
                    tracing::info!(config = %name, "config removed from the file; stopping");
                    manager.delete(&name, true).await;
                }
            }
            for c in &new.configs {
                let name = c.name.clone();
                if let Err(e) = manager.apply(c.clone()).await {
                    tracing::error!(config = %name, error = %e, "config not run");
                }
            }
        }
    }
}

/// Opens the (etcd) config store, retrying while it is unreachable; the config API answers 503
/// meanwhile, naming the error.
async fn connect(
    backend: &crate::config::agent::KvBackend,
    wal_directory: &std::path::Path,
    api: &ApiState,
    shutdown: &CancellationToken,
) -> Option<Arc<dyn KvStore>> {
    kv::open_retrying(backend, wal_directory, shutdown, |e, retry_in| {
        match retry_in {
            Some(d) => tracing::warn!(error = %e, retry_in = ?d, "KV store unreachable; retrying"),
            None => tracing::error!(error = %e, "cannot use the configured KV store; the config API answers 503 until the agent is restarted with a usable one"),
        }
        api.set_store(StoreSlot::Connecting(e.to_string()));
    })
    .await
}

/// Asks for a reload on every SIGHUP until shutdown; the supervisor logs the outcome.
pub(super) async fn reload_on_sighup(
    reloader: crate::api::status::Reloader,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; use /-/reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!(signal = "SIGHUP", "reloading the config file");
                let _ = reloader.reload().await;
            }
        }
    }
}
