//! `agentctl agent run`: load the config, bind the HTTP server, run until SIGINT/SIGTERM.
//!
//! The HTTP server takes an already-bound listener and a shutdown token, so tests bind
//! `127.0.0.1:0` and stop it without signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError};

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
    pub http_address: String,
    pub enable_read_api: bool,
}

struct AppState {
    ready: AtomicBool,
    options: Options,
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
    for block in &cfg.ignored_blocks {
        tracing::warn!(
            block,
            "config block ignored: agentctl runs the metrics subsystem only"
        );
    }
    let state = Arc::new(AppState {
        ready: AtomicBool::new(false),
        options,
    });
    let app = router(state.clone());
    state.ready.store(true, Ordering::Release);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    tracing::info!("agent stopped");
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/-/healthy",
            any(|| async { text(StatusCode::OK, "Agent is Healthy.\n") }),
        )
        .route("/-/ready", any(ready))
        .route("/-/config", any(show_config))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found\n") })
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
