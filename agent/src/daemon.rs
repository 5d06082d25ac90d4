//! `agentctl agent run`: load the config, bind the HTTP server, run until SIGINT/SIGTERM.
//!
//! The HTTP server takes an already-bound listener and a shutdown token, so tests bind
//! `127.0.0.1:0` and stop it without signals.
//!
//! `/-/reload` (any method) and SIGHUP re-read `-config.file` and apply it: the new file is
//! validated fully first; an invalid file, or one changing a field that needs a restart (see
//! [`crate::config::reload`]), is refused (400 with the error, naming file:line or the
//! fields) and the running config stays. Every attempt sets `agent_config_last_load_successful`
//! (1/0); successes set `agent_config_last_load_success_timestamp_seconds`, failures count in
//! `agent_config_load_failures_total` (the old agent's names).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use prometheus_client::registry::Registry;

use crate::api::{self, ApiMetrics, ApiState, StoreSlot};
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::agent::KvStoreConfig;
use crate::config::{AgentConfig, ConfigError};
use crate::instance::{self, manager::InstanceManager};
use crate::kv::configstore::ConfigStore;
use crate::kv::{self, KvError, KvStore};
use crate::ring::lifecycler::{Lifecycler, LifecyclerSettings};
use crate::ring::view::RingView;

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

/// What `agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: AgentConfig,
    /// The config file, when one was given (`None`: the embedded default).
    pub config_file: Option<PathBuf>,
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
    /// Reload the config file on SIGHUP (the CLI sets it; in-process tests leave it off).
    pub reload_on_sighup: bool,
}

impl Options {
    /// Options for `config` with every flag at its default.
    pub fn new(config: AgentConfig, http_address: impl Into<String>) -> Self {
        Options {
            config,
            config_file: None,
            http_address: http_address.into(),
            address_file: None,
            enable_read_api: false,
            enable_get_config: true,
            api_write_token: None,
            api_max_body: api::DEFAULT_MAX_BODY,
            expand_env: false,
            reload_on_sighup: false,
        }
    }
}

struct AppState {
    ready: AtomicBool,
    options: Options,
    registry: Registry,
    manager: Arc<InstanceManager>,
    /// `/debug/ring`, once the ring is reachable.
    ring_page: std::sync::OnceLock<Router>,
    /// The cluster's run loop; awaited on shutdown (it leaves the ring).
    cluster_task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The config in effect (reloads replace it; the lock also serialises reloads).
    config: tokio::sync::Mutex<AgentConfig>,
    /// The cluster, once the store is connected (reloads pass settings to it).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    api: Arc<ApiState>,
    /// Stops the running WAL cleaner (restarted when its settings are reloaded).
    cleaner_stop: std::sync::Mutex<CancellationToken>,
    shutdown: CancellationToken,
    load_metrics: LoadMetrics,
}

/// The old agent's config-load metrics.
#[derive(Debug, Clone, Default)]
struct LoadMetrics {
    clock: Clock,
    successful: prometheus_client::metrics::gauge::Gauge,
    success_timestamp: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    failures: prometheus_client::metrics::counter::Counter,
}

impl LoadMetrics {
    fn register(registry: &mut Registry, clock: Clock) -> Self {
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

    fn record(&self, ok: bool) {
        if ok {
            self.successful.set(1);
            let now = self.clock.unix_millis() as f64 / 1000.0;
            self.success_timestamp.set(now);
        } else {
            self.successful.set(0);
            self.failures.inc();
        }
    }
}

fn spawn_cleaner(
    manager: &Arc<InstanceManager>,
    cfg: &AgentConfig,
    shutdown: &CancellationToken,
) -> CancellationToken {
    let stop = shutdown.child_token();
    tokio::spawn(instance::cleaner::run(
        manager.clone(),
        cfg.wal_cleanup_age.as_std(),
        cfg.wal_cleanup_period.as_std(),
        stop.clone(),
    ));
    stop
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = TcpListener::bind(&options.http_address)
        .await
        .map_err(|source| Error::Bind {
            addr: options.http_address.clone(),
            source,
        })?;
    serve(listener, options, shutdown).await
}

/// Serves the agent's HTTP API on an already-bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let source = match &options.config_file {
        Some(p) => p.display().to_string(),
        None => "embedded default".to_owned(),
    };
    let cfg = &options.config;
    let store = if cfg.scraping_service.enabled {
        cfg.scraping_service.kvstore.store()
    } else {
        "none"
    };
    tracing::info!(
        addr = %addr,
        config = %source,
        scraping_service = cfg.scraping_service.enabled,
        kvstore = store,
        wal_directory = %cfg.wal_directory,
        "agent listening"
    );
    if let Some(path) = &options.address_file {
        write_address_file(path, addr).map_err(|source| Error::AddressFile {
            path: path.clone(),
            source,
        })?;
    }
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
    let enabled = cfg.scraping_service.enabled;
    let ss = cfg.scraping_service.clone();
    let lifecycler_settings = LifecyclerSettings::from_config(&ss.lifecycler, addr.port());
    let shared = instance::Shared::new(
        std::path::Path::new(&cfg.wal_directory),
        &lifecycler_settings.id,
        &mut registry,
        clock,
    );
    let manager = InstanceManager::new(
        shared,
        cfg.instance_restart_backoff.as_std(),
        cfg.instance_mode,
    );
    let cleaner_stop = spawn_cleaner(&manager, cfg, &shutdown);
    let api_state = Arc::new(ApiState {
        store: std::sync::RwLock::new(if enabled {
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
    // A local store either opens now or never (locked by another agent, bad path): fail the
    // start-up with its error instead of serving 503 forever. etcd is retried in the background.
    let local_store = if enabled && ss.kvstore.store() != "etcd" {
        Some(open_store(&ss.kvstore, &cfg.wal_directory).await?)
    } else {
        None
    };
    let local_configs = cfg.configs.clone();
    let state = Arc::new(AppState {
        ready: AtomicBool::new(false),
        config: tokio::sync::Mutex::new(cfg.clone()),
        options,
        registry,
        manager: manager.clone(),
        ring_page: std::sync::OnceLock::new(),
        cluster_task: tokio::sync::Mutex::new(None),
        cluster: std::sync::OnceLock::new(),
        api: api_state.clone(),
        cleaner_stop: std::sync::Mutex::new(cleaner_stop),
        shutdown: shutdown.clone(),
        load_metrics,
    });
    if enabled {
        match local_store {
            Some(store) => {
                start_cluster(&state, &api_state, store, lifecycler_settings, &shutdown).await
            }
            None => {
                tokio::spawn(connect_store(
                    state.clone(),
                    api_state.clone(),
                    lifecycler_settings,
                    shutdown.clone(),
                ));
            }
        }
    } else {
        // No scraping service: the local `metrics.configs` run here.
        for c in local_configs {
            let name = c.name.clone();
            if let Err(e) = manager.apply(c).await {
                tracing::error!(config = %name, error = %e, "config not run");
            }
        }
        state.ready.store(true, Ordering::Release);
        crate::notify::ready("running the local configs (no scraping service)");
    }
    if state.options.reload_on_sighup {
        tokio::spawn(reload_on_sighup(state.clone()));
    }

    // On shutdown: leave the ring (hand-over, flush), then stop serving HTTP.
    let server_stop = CancellationToken::new();
    {
        let state = state.clone();
        let server_stop = server_stop.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            crate::notify::stopping();
            let task = state.cluster_task.lock().await.take();
            match task {
                Some(t) => {
                    let _ = t.await;
                }
                None => state.manager.stop_all(false).await,
            }
            server_stop.cancel();
        });
    }
    let app = router(state.clone()).merge(api::router(api_state));
    axum::serve(listener, app)
        .with_graceful_shutdown(server_stop.cancelled_owned())
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Writes `addr` to `path` through a temporary file and a rename, so a reader never sees a
/// partial address.
fn write_address_file(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/-/healthy",
            any(|| async { text(StatusCode::OK, "Agent is Healthy.\n") }),
        )
        .route("/-/ready", any(ready))
        .route("/-/config", any(show_config))
        .route("/-/reload", any(reload_handler))
        .route("/metrics", get(metrics))
        .route("/agent/api/v1/metrics/instances", get(instances))
        .route("/agent/api/v1/instances", get(instances))
        .route("/agent/api/v1/metrics/targets", get(targets))
        .route("/agent/api/v1/targets", get(targets))
        .route("/debug/ring", any(debug_ring))
        .fallback(api::not_found)
        .with_state(state)
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        text(StatusCode::OK, "Agent is Ready.\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Metrics are not ready yet.\n",
        )
    }
}

/// `GET /-/config`: the loaded config file, secrets redacted; only with the read API enabled.
async fn show_config(State(state): State<Arc<AppState>>) -> Response {
    if !state.options.enable_read_api {
        return (StatusCode::NOT_FOUND, "404 - config endpoint is disabled").into_response();
    }
    let body = match &state.options.config_file {
        Some(path) => match std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_yaml::from_str::<crate::config::AgentConfigRaw>(&t).ok())
            .and_then(|raw| serde_yaml::to_string(&raw).ok())
        {
            Some(yaml) => yaml,
            None => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not read the config file\n",
                )
            }
        },
        None => "# embedded default: no config file\n".to_owned(),
    };
    ([(header::CONTENT_TYPE, "text/yaml; charset=utf-8")], body).into_response()
}

/// `GET /metrics`: the agent's own metrics in the Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        return text_owned(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn text_owned(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Opens the configured KV store. The embedded store lives in `wal_directory` (its file is
/// `kv.redb`, which no instance WAL folder can clash with).
pub async fn open_store(
    cfg: &KvStoreConfig,
    wal_directory: &str,
) -> Result<Arc<dyn KvStore>, KvError> {
    let spec = match cfg.store() {
        "etcd" => {
            let e = cfg.etcd.clone().unwrap_or_default();
            let defaults = kv::EtcdConfig::default();
            kv::KvSpec::Etcd(kv::EtcdConfig {
                endpoints: e.endpoints,
                dial_timeout: e.dial_timeout.map_or(defaults.dial_timeout, |d| d.as_std()),
                max_retries: e.max_retries.unwrap_or(defaults.max_retries),
                username: e.username.unwrap_or_default(),
                password: e.password.unwrap_or_default(),
                tls_enabled: e.tls_enabled,
                ..defaults
            })
        }
        "inmemory" => kv::KvSpec::InMemory,
        "consul" => kv::KvSpec::Consul(
            cfg.consul
                .as_ref()
                .and_then(|c| c.host.clone())
                .unwrap_or_default(),
        ),
        "multi" => {
            return Err(KvError::EtcdConfig {
                endpoints: "multi".into(),
                message: "the multi KV store is not supported yet; use etcd or the embedded store"
                    .into(),
            })
        }
        _ => {
            let dir = cfg
                .embedded
                .as_ref()
                .and_then(|e| e.path.clone())
                .unwrap_or_else(|| wal_directory.to_owned());
            kv::KvSpec::Embedded(PathBuf::from(dir))
        }
    };
    kv::connect(&spec).await
}

/// Connects the KV store, retrying with backoff while it is unreachable (the API answers 503
/// meanwhile, naming the error); configuration errors stop the retries.
async fn connect_store(
    state: Arc<AppState>,
    api: Arc<ApiState>,
    settings: LifecyclerSettings,
    shutdown: CancellationToken,
) {
    // kvstore settings cannot change by a reload: the start-up config is the one to use.
    let cfg = &state.options.config;
    let ss = &cfg.scraping_service;
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match open_store(&ss.kvstore, &cfg.wal_directory).await {
            Ok(store) => {
                start_cluster(&state, &api, store, settings, &shutdown).await;
                return;
            }
            Err(e @ (KvError::ConsulUnsupported | KvError::EtcdConfig { .. })) => {
                tracing::error!(error = %e, "cannot use the configured KV store; the config API answers 503 until the agent is restarted with a usable one");
                api.set_store(StoreSlot::Connecting(e.to_string()));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "KV store unreachable; retrying");
                api.set_store(StoreSlot::Connecting(e.to_string()));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Joins the ring and starts resharding on `store` (configs and, unless configured apart, the
/// ring live in the same store).
async fn start_cluster(
    state: &Arc<AppState>,
    api: &Arc<ApiState>,
    store: Arc<dyn KvStore>,
    settings: LifecyclerSettings,
    shutdown: &CancellationToken,
) {
    // The config in effect now: a reload while the store was unreachable counts.
    // Held until the cluster is registered, so a concurrent reload reaches it.
    let config_guard = state.config.lock().await;
    let current = config_guard.clone();
    let cfg = &current;
    let ss = &cfg.scraping_service;
    tracing::info!(store = %store.describe(), prefix = %ss.config_prefix, "config store connected");
    let configs = Arc::new(ConfigStore::with_prefix(
        store.clone(),
        ss.config_prefix.clone(),
    ));
    api.set_store(StoreSlot::Ready(configs.clone()));

    let same = KvStoreConfig {
        prefix: None,
        ..ss.lifecycler.ring_kvstore.clone()
    } == KvStoreConfig {
        prefix: None,
        ..ss.kvstore.clone()
    };
    let ring_store = if same {
        store
    } else {
        match open_store(&ss.lifecycler.ring_kvstore, &cfg.wal_directory).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the ring's KV store; this agent runs no configs");
                return;
            }
        }
    };
    let heartbeat_timeout = ss.lifecycler.heartbeat_timeout.as_std();
    let ring_key = settings.ring_key.clone();
    tracing::info!(id = %settings.id, addr = %settings.addr, ring = %ring_key, "joining the ring");
    let clock = state.manager.shared().clock;
    let lifecycler = Lifecycler::start(ring_store.clone(), settings, clock);
    let view = RingView::start(
        ring_store.clone(),
        ring_key.clone(),
        heartbeat_timeout,
        clock,
    );
    let cluster = Cluster::new(
        configs,
        lifecycler,
        view,
        state.manager.clone(),
        cfg.global.clone(),
        ss.reshard_interval.as_std(),
        clock,
    );
    let _ = state.ring_page.set(crate::ring::http::router(
        crate::ring::http::RingPageState {
            store: ring_store,
            ring_key,
            heartbeat_timeout,
            configs_owned: cluster.owned_counts(),
            clock,
        },
    ));
    let mut ready = cluster.ready();
    {
        let state = state.clone();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                state.ready.store(true, Ordering::Release);
                tracing::info!("initial reshard done; agent ready");
                crate::notify::ready("joined the ring; configs placed");
            }
        });
    }
    let _ = state.cluster.set(cluster.clone());
    drop(config_guard);
    let task = tokio::spawn(cluster.run(shutdown.clone()));
    *state.cluster_task.lock().await = Some(task);
}

/// `GET /agent/api/v1/metrics/instances`: the sorted names of the configs this agent runs.
async fn instances(State(state): State<Arc<AppState>>) -> Response {
    let names = state.manager.names().await;
    api::success(StatusCode::OK, Some(serde_json::json!(names)))
}

/// `GET /agent/api/v1/metrics/targets`: this agent's targets (spec §2.4).
async fn targets(State(state): State<Arc<AppState>>) -> Response {
    let t = state.manager.targets().await;
    let data = crate::scrape::manager::targets_response(t)["data"].take();
    api::success(StatusCode::OK, Some(data))
}

/// `/debug/ring`, served by the ring module once the ring is reachable.
async fn debug_ring(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    use tower::ServiceExt;
    match state.ring_page.get() {
        Some(r) => match r.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(e) => match e {},
        },
        None if !state.options.config.scraping_service.enabled => api::not_found().await,
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ring is not reachable yet\n",
        ),
    }
}

/// `/-/reload` (any method): 200 with an empty body when the config file was applied (or there
/// is none), 400 with the reason otherwise.
async fn reload_handler(State(state): State<Arc<AppState>>) -> Response {
    match reload(&state).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => text_owned(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Reloads on every SIGHUP until shutdown; the outcome is logged by [`reload`].
async fn reload_on_sighup(state: Arc<AppState>) {
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
            _ = state.shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!(signal = "SIGHUP", "reloading the config file");
                // The outcome is logged by `reload`.
                let _ = reload(&state).await;
            }
        }
    }
}

/// Re-reads `-config.file`, validates it, refuses changes that need a restart, and applies
/// the rest live (see [`crate::config::reload`]). Logs what changed or why it was refused.
async fn reload(state: &Arc<AppState>) -> Result<(), ReloadError> {
    // The service manager hears of reloads only once it was told the agent is ready.
    let notify = state.ready.load(Ordering::Acquire);
    if notify {
        crate::notify::reloading();
    }
    let result = reload_file(state).await;
    if notify {
        crate::notify::ready(match &result {
            Ok(()) => "config reloaded",
            Err(_) => "config reload refused; running the previous config",
        });
    }
    result
}

async fn reload_file(state: &Arc<AppState>) -> Result<(), ReloadError> {
    let Some(path) = state.options.config_file.clone() else {
        tracing::info!(
            "reload requested; running the embedded default (no config file), nothing to reload"
        );
        state.load_metrics.record(true);
        return Ok(());
    };
    let mut current = state.config.lock().await;
    let new = match crate::config::load::load_agent_file(&path, state.options.expand_env) {
        Ok(c) => c,
        Err(e) => {
            state.load_metrics.record(false);
            tracing::error!(file = %path.display(), error = %e, "reload refused: invalid configuration; the running configuration is kept");
            return Err(ReloadError::Invalid(e));
        }
    };
    let plan = crate::config::reload::plan(&current, &new);
    if !plan.restart_required.is_empty() {
        state.load_metrics.record(false);
        let e = ReloadError::NeedsRestart {
            file: path.clone(),
            fields: plan.restart_required,
        };
        tracing::error!(error = %e, "reload refused");
        return Err(e);
    }
    if plan.changed.is_empty() {
        tracing::info!(file = %path.display(), "config reloaded; nothing changed");
        *current = new;
        state.load_metrics.record(true);
        return Ok(());
    }
    tracing::info!(file = %path.display(), changed = %plan.changed.join(","), "config reloaded; applying");
    apply_reloaded(state, &current, &new).await;
    *current = new;
    state.load_metrics.record(true);
    Ok(())
}

/// Applies the live fields of `new` (already checked against `old` by the reload plan).
async fn apply_reloaded(state: &Arc<AppState>, old: &AgentConfig, new: &AgentConfig) {
    let manager = &state.manager;
    manager.set_restart_backoff(new.instance_restart_backoff.as_std());
    if (old.wal_cleanup_age, old.wal_cleanup_period)
        != (new.wal_cleanup_age, new.wal_cleanup_period)
    {
        let fresh = spawn_cleaner(manager, new, &state.shutdown);
        let previous = std::mem::replace(
            &mut *state
                .cleaner_stop
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            fresh,
        );
        previous.cancel();
    }
    *state
        .api
        .global
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = new.global.clone();
    state.api.dangerous_allow_reading_files.store(
        new.scraping_service.dangerous_allow_reading_files,
        Ordering::Release,
    );
    let rejected = manager.set_mode(new.instance_mode).await;
    if old.instance_mode != new.instance_mode {
        let mode = match new.instance_mode {
            crate::config::agent::InstanceMode::Shared => "shared",
            crate::config::agent::InstanceMode::Distinct => "distinct",
        };
        tracing::info!(
            instance_mode = mode,
            dropped = rejected.len(),
            "configs regrouped"
        );
    }
    if let Some(cluster) = state.cluster.get() {
        // Re-validates every owned config against the new global and re-applies by content;
        // also places again the configs a mode switch could not regroup.
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
        for name in manager.names().await {
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
