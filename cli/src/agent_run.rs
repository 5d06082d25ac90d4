//! `agentctl agent run`: turn flags into daemon options, wait for signals.

use std::process::ExitCode;

use agent::config::{load, AgentConfig};
use agent::daemon::{self, Options, DEFAULT_HTTP_ADDRESS};
use tokio_util::sync::CancellationToken;

use crate::args::AgentRunArgs;
use crate::Error;

pub async fn run(args: AgentRunArgs) -> Result<ExitCode, Error> {
    let (config, config_shown) = match &args.config_file {
        Some(path) => {
            load::load_agent_file_with(path, args.expand_env, args.wal_directory.as_deref())
                .map(|(c, shown)| (c, Some(shown)))
                .map_err(|e| Error::Invalid(format!("invalid configuration: {e}")))?
        }
        None => {
            let mut c = AgentConfig::embedded_default();
            if let Some(dir) = &args.wal_directory {
                c.wal_directory = dir.clone();
            }
            (c, None)
        }
    };
    if args.http_enable_tls && config.http_tls.is_none() {
        return Err(Error::Invalid(format!(
            "--server.http.enable-tls: {} has no server.http_tls_config with cert_file and \
             key_file; the agent will not serve plain HTTP in its place",
            args.config_file.as_ref().map_or_else(
                || "the embedded default".to_owned(),
                |p| p.display().to_string()
            )
        )));
    }
    let api_write_token = match &args.api_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                crate::io(&format!("reading --api.token-file {}", path.display()), e)
            })?;
            let token = token.trim().to_owned();
            if token.is_empty() {
                return Err(Error::Invalid(format!(
                    "--api.token-file {} is empty",
                    path.display()
                )));
            }
            Some(token)
        }
        None => None,
    };
    // The old agent's flags that mean nothing here: accepted, and said so.
    if let Some(grpc) = &args.grpc_address {
        tracing::warn!(
            flag = "-server.grpc.address",
            value = %grpc,
            "the old agent's flag has no effect: agentctl serves no gRPC (agents reshard through the KV store)"
        );
    }
    if args.disable_reporting {
        tracing::info!(
            flag = "-disable-reporting",
            "the old agent's flag has no effect: agentctl sends no usage reports"
        );
    }
    for feature in args.enable_features.iter().filter(|f| !f.is_empty()) {
        tracing::warn!(
            flag = "-enable-features",
            feature = %feature,
            "the old agent's experimental feature does not exist in agentctl: no effect"
        );
    }
    let address = args
        .http_address
        .unwrap_or_else(|| DEFAULT_HTTP_ADDRESS.to_owned());
    let mut options = Options::new(config, address);
    options.config_file = args.config_file;
    options.config_shown = config_shown;
    options.address_file = args.http_address_file;
    options.enable_read_api = args.enable_read_api;
    options.enable_get_config = !args.disable_get_config;
    options.api_write_token = api_write_token;
    options.api_max_body = args.api_max_body_bytes;
    options.expand_env = args.expand_env;
    options.wal_directory_flag = args.wal_directory;
    options.reload_on_sighup = true;
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    daemon::run(options, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    shutdown.cancel();
    // The graceful shutdown can take minutes (leaving the ring through an unreachable KV store,
    // flushing remote_write for up to remote_flush_deadline per instance). A second signal means
    // the operator will not wait: exit at once, as a crash would. The WAL keeps what was not
    // sent (sent after the next start) and the other agents forget the ring entry left behind.
    let (name, code) = tokio::select! {
        _ = term.recv() => ("SIGTERM", 128 + 15),
        _ = int.recv() => ("SIGINT", 128 + 2),
    };
    tracing::warn!(
        signal = name,
        exit_code = code,
        "second signal: exiting now, before the graceful shutdown finished; unsent samples stay \
         in the WAL and are sent after the next start"
    );
    std::process::exit(code);
}
