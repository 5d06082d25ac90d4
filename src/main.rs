//! `agentctl`: parse arguments, install the TLS provider, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use cli::args::{AgentCommand, Cli, Command, LogFormat, LogLevel};

// The global allocator: the system's unless a feature picks another (one at most); compared
// on the full benchmark by `bench/run --allocators` (BENCHMARKS.md).
#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("the `mimalloc` and `jemalloc` features each pick the global allocator: enable one");
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// glibc's malloc thresholds fixed at start, and the agent's free pages given back every few
// seconds, in the default build on glibc (src/glibc_malloc.rs says why); not with another
// allocator, where `tune` does nothing.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
))]
mod glibc_malloc;
#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
)))]
mod glibc_malloc {
    /// The allocator is not glibc's: nothing to set.
    pub fn tune(_agent: bool) -> Option<String> {
        None
    }
}

fn main() -> ExitCode {
    // The old agent's flags are Go flags, spelled `-config.file=x`; accept that spelling so
    // existing unit files and scripts keep working.
    let cli = Cli::parse_from(cli::compat::normalize_args(std::env::args_os()));

    // Before the async runtime or anything else starts a thread.
    let malloc = glibc_malloc::tune(matches!(cli.command, Command::Agent(AgentCommand::Run(_))));

    // rustls with the `ring` provider only; a second install (tests) is not an error.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let level = match cli.global.log_level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let format = match cli.global.log_format {
        LogFormat::Logfmt => agent::logging::Format::Logfmt,
        LogFormat::Json => agent::logging::Format::Json,
    };
    agent::logging::init(level, format);

    let result = match cli.command {
        Command::Agent(AgentCommand::Run(args)) => {
            if let Some(settings) = malloc {
                tracing::info!(%settings, "glibc malloc");
            }
            run_agent(args)
        }
        other => cli::run(other),
    };
    match result {
        Ok(code) => code,
        Err(err) => cli::report(&err),
    }
}

fn run_agent(args: cli::args::AgentRunArgs) -> Result<ExitCode, cli::Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agentctl")
        .build()
        .map_err(|e| cli::Error::Io {
            context: "starting the async runtime".into(),
            source: e,
        })?;
    runtime.block_on(cli::agent_run::run(args))
}
