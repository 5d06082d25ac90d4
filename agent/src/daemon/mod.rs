//! `agentctl agent run`, in two steps:
//!
//! 1. [`Agent::build`]: from the validated config to the components, doing every step that can
//!    fail the start-up (the metrics registry, the instance manager, the API's state, opening
//!    a local KV store, which another agent may hold). An error here stops the agent with its
//!    message and exit code 1.
//! 2. [`Agent::run`]: serves the HTTP API on an already-bound listener and runs the
//!    [`supervisor`] (the task that owns the running config: the cluster, reloads, shutdown)
//!    until `shutdown` is cancelled. etcd being unreachable is not an error here: the agent
//!    retries in the background and the config API answers 503 meanwhile.
//!
//! [`run`] does both after binding `--server.http.address`, as `agentctl agent run` does;
//! tests bind `127.0.0.1:0` and call the same function. The agent is ready (`/-/ready` 200)
//! once [`Agent::readiness`] turns true; [`announce_ready`] is where that is announced.

pub mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::status::{ReadApi, Reloader, StatusState};
use crate::api::{self, ApiMetrics, ApiState, StoreSlot};
use crate::clock::Clock;
use crate::cluster::{Cluster, TargetShardingSetup};
use crate::config::agent::Sharding;
use crate::config::{AgentConfig, ConfigError};
use crate::instance::{self, manager::InstanceManager};
use crate::kv::{self, KvError, KvStore};
use crate::ring::lifecycler::LifecyclerSettings;
use crate::telemetry::AgentMetrics;
use supervisor::{LoadMetrics, Supervisor};

/// The old agent's default listen address.
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:12345";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the config store: {0}")]
    Kv(#[from] KvError),
    #[error("cannot serve HTTPS: {0}")]
    ServerTls(#[from] api::tls::ServerTlsError),
    #[error("cannot write the bound address to {}: {source}", .path.display())]
    AddressFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What `agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: AgentConfig,
    /// The config file, when one was given (`None`: the embedded default).
    pub config_file: Option<PathBuf>,
    /// `config` as `GET /-/config` shows it (`config::load::load_agent_file_shown`); reloads
    /// replace it. `None` with a `config_file`: the route says it cannot show the file.
    pub config_shown: Option<String>,
    pub http_address: String,
    /// Where to write the address the server bound (`--server.http.address-file`).
    pub address_file: Option<PathBuf>,
    /// `-config.enable-read-api`: serve `GET /-/config`.
    pub enable_read_api: bool,
    /// Serve `GET /agent/api/v1/configs/{name}` (secrets redacted). On by default.
    pub enable_get_config: bool,
    /// Bearer token required for config writes.
    pub api_write_token: Option<String>,
    pub api_max_body: usize,
    /// `-config.expand-env`: also used when the file is re-read on a reload.
    pub expand_env: bool,
    /// `-metrics.wal-directory`: the WAL directory when the file sets none, also on a reload
    /// (`config::load::load_agent_file_with`).
    pub wal_directory_flag: Option<String>,
    /// Reload the config file on SIGHUP (the CLI sets it; in-process tests leave it off).
    pub reload_on_sighup: bool,
}

impl Options {
    /// Options for `config` with every flag at its default.
    pub fn new(config: AgentConfig, http_address: impl Into<String>) -> Self {
        Options {
            config,
            config_file: None,
            config_shown: None,
            http_address: http_address.into(),
            address_file: None,
            enable_read_api: false,
            enable_get_config: true,
            api_write_token: None,
            api_max_body: api::DEFAULT_MAX_BODY,
            expand_env: false,
            wal_directory_flag: None,
            reload_on_sighup: false,
        }
    }
}

/// Binds `--server.http.address`, builds the agent and runs it until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = TcpListener::bind(&options.http_address)
        .await
        .map_err(|source| Error::Bind {
            addr: options.http_address.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: options.http_address.clone(),
        source,
    })?;
    Agent::build(options, addr)
        .await?
        .run(listener, shutdown)
        .await
}

/// A built agent: every component exists and every start-up check passed.
pub struct Agent {
    options: Options,
    addr: SocketAddr,
    clock: Clock,
    registry: Arc<Registry>,
    manager: Arc<InstanceManager>,
    api: Arc<ApiState>,
    load_metrics: LoadMetrics,
    /// Agent-wide metrics, read at each `/metrics` scrape (see [`crate::telemetry`]).
    agent_metrics: AgentMetrics,
    /// The cluster, once joined (its ring and stored configs are read for `/metrics`).
    cluster: Arc<OnceLock<Arc<Cluster>>>,
    lifecycler: LifecyclerSettings,
    /// The embedded or in-memory config store, opened here (etcd is connected by `run`).
    local_store: Option<Arc<dyn KvStore>>,
    /// `server.http_tls_config`'s certificates, when the server serves HTTPS.
    server_tls: Option<Arc<api::tls::ServerTls>>,
    /// `scraping_service.sharding: targets`: what the cluster needs to run it.
    sharding: Option<TargetShardingSetup>,
    ready: watch::Sender<bool>,
}

impl Agent {
    /// Builds the agent for `options`, serving on `addr` (already bound: the ring advertises
    /// its port).
    pub async fn build(options: Options, addr: SocketAddr) -> Result<Agent, Error> {
        let cfg = &options.config;
        let ss = &cfg.scraping_service;
        // Unusable certificate files stop the start, naming the file.
        let server_tls = match &cfg.http_tls {
            Some(settings) => Some(api::tls::ServerTls::load(settings).await?),
            None => None,
        };
        tracing::info!(
            addr = %addr,
            scheme = if server_tls.is_some() { "https" } else { "http" },
            config = %options.config_file.as_ref().map_or_else(|| "embedded default".to_owned(), |p| p.display().to_string()),
            scraping_service = ss.enabled,
            kvstore = if ss.enabled { ss.kvstore.name() } else { "none" },
            wal_directory = %cfg.wal_directory,
            "agent listening"
        );
        for block in &cfg.ignored_blocks {
            tracing::warn!(
                block,
                "config block ignored: agentctl runs the metrics subsystem only"
            );
        }
        for f in &cfg.ignored_fields {
            tracing::warn!(field = %f.field, advice = f.advice, "config field ignored");
        }
        let clock = Clock::system();
        let mut registry = Registry::default();
        let api_metrics = ApiMetrics::register(&mut registry);
        let load_metrics = LoadMetrics::register(&mut registry, clock);
        load_metrics.record(true);
        let agent_metrics = AgentMetrics::register(&mut registry);
        let lifecycler = LifecyclerSettings::from_config(&ss.lifecycler, addr.port());
        let mut shared = instance::Shared::new(
            std::path::Path::new(&cfg.wal_directory),
            &lifecycler.id,
            &mut registry,
            clock,
        );
        let sharding = (ss.enabled && ss.sharding == Sharding::Targets).then(|| {
            let (assigned, events) = crate::cluster::targets::Registry::new();
            shared.assigned = Some(assigned.clone());
            TargetShardingSetup {
                registry: assigned,
                events,
                metrics: crate::cluster::metrics::ShardingMetrics::register(&mut registry),
                instance_mode: cfg.instance_mode,
                base_dir: shared.base_dir.clone(),
            }
        });
        let manager = InstanceManager::new(
            shared,
            cfg.instance_restart_backoff.as_std(),
            cfg.instance_mode,
        );
        let api = Arc::new(ApiState {
            store: std::sync::RwLock::new(if ss.enabled {
                StoreSlot::Connecting("starting".into())
            } else {
                StoreSlot::Disabled
            }),
            global: std::sync::RwLock::new(cfg.global.clone()),
            dangerous_allow_reading_files: std::sync::atomic::AtomicBool::new(
                ss.dangerous_allow_reading_files,
            ),
            enable_get: options.enable_get_config,
            write_token: options.api_write_token.clone(),
            max_body: options.api_max_body,
            metrics: api_metrics,
        });
        // A local store either opens now or never (locked by another agent, bad path): fail
        // the start-up with its error instead of serving 503 forever.
        let local_store = match &ss.kvstore {
            _ if !ss.enabled => None,
            crate::config::agent::KvBackend::Etcd(_) => None,
            local => Some(kv::open(local, std::path::Path::new(&cfg.wal_directory)).await?),
        };
        Ok(Agent {
            addr,
            clock,
            registry: Arc::new(registry),
            manager,
            api,
            load_metrics,
            agent_metrics,
            cluster: Arc::new(OnceLock::new()),
            lifecycler,
            local_store,
            server_tls,
            sharding,
            ready: watch::channel(false).0,
            options,
        })
    }

    /// `true` once the agent is ready: the configs it owns run (`/-/ready` answers 200).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Serves the API on `listener` and runs the agent until `shutdown` is cancelled; then
    /// leaves the ring (handing its configs over and flushing remote_write) and stops serving.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let addr = self.addr;
        if let Some(path) = &self.options.address_file {
            write_address_file(path, addr).map_err(|source| Error::AddressFile {
                path: path.clone(),
                source,
            })?;
        }
        let (reloader, reloads) = Reloader::channel();
        let ring_page = Arc::new(OnceLock::new());
        // What `/-/config` shows: the config in effect, replaced by each successful reload.
        let (shown_tx, shown) = watch::channel(self.options.config_shown.clone());
        let read_api = self
            .options
            .enable_read_api
            .then(|| match &self.options.config_file {
                Some(_) => ReadApi::Loaded(shown),
                None => ReadApi::EmbeddedDefault,
            });
        let status = Arc::new(StatusState {
            ready: self.ready.subscribe(),
            registry: self.registry.clone(),
            manager: self.manager.clone(),
            ring_page: ring_page.clone(),
            scraping_service: self.options.config.scraping_service.enabled,
            read_api,
            reloader: reloader.clone(),
            agent_metrics: self.agent_metrics.clone(),
            wal_directory: self.options.config.wal_directory.clone().into(),
            cluster: self.cluster.clone(),
        });
        let app =
            api::router(self.api.clone(), status).layer(axum::middleware::from_fn_with_state(
                self.agent_metrics.api_requests(),
                crate::telemetry::count_requests,
            ));
        if self.options.reload_on_sighup {
            tokio::spawn(supervisor::reload_on_sighup(reloader, shutdown.clone()));
        }
        let why = if self.options.config.scraping_service.enabled {
            "joined the ring; configs placed"
        } else {
            "running the local configs (no scraping service)"
        };
        tokio::spawn(announce_ready(self.ready.subscribe(), why));
        let server_tls = self.server_tls.clone();
        let supervisor = Supervisor::new(self, ring_page, shown_tx);
        let server_stop = CancellationToken::new();
        let task = {
            let server_stop = server_stop.clone();
            tokio::spawn(async move {
                supervisor.run(reloads, shutdown).await;
                server_stop.cancel();
            })
        };
        api::serve(listener, server_tls, app, server_stop)
            .await
            .map_err(|source| Error::Serve { addr, source })?;
        let _ = task.await;
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// Announces that the agent is ready, once: the log line operators and scripts wait for, and
/// READY=1 to the service manager (`why` is its status text).
async fn announce_ready(mut ready: watch::Receiver<bool>, why: &'static str) {
    if ready.wait_for(|r| *r).await.is_ok() {
        tracing::info!("initial reshard done; agent ready");
        crate::notify::ready(why);
    }
}

/// Writes `addr` to `path` through a temporary file and a rename, so a reader never sees a
/// partial address.
fn write_address_file(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}
