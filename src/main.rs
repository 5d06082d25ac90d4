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

/// glibc's malloc (the default allocator) under series churn: measured with
/// `tests/churn.rs` (10,000 new series per scrape, the WAL truncated every 5 s), the live
/// heap stays flat (jemalloc's `allocated`, heaptrack) while glibc keeps freed memory, and the
/// resident memory rose in steps for minutes (0.3-1.6 MiB/min after the warm-up). Two causes,
/// two settings:
/// - glibc raises its mmap threshold to the size of the largest mapped block freed (up to
///   32 MiB), after which the large short-lived buffers (WAL records, decompressed segments,
///   request bodies, checkpoints) come from the arenas, between label sets that live for
///   minutes, and leave holes reused only in part. Fixed at 128 KiB (its initial value), such
///   blocks are mapped and unmapped on their own: RSS ~15 MiB lower in that test.
/// - Freed small blocks leave whole free pages inside the arenas, which glibc returns only
///   from the top of each heap. `malloc_trim` every 30 s returns them (a walk of the free
///   lists, milliseconds; pages reused later are faulted in again).
///
/// The trim runs for `agent run` only. The threshold is left alone when the user sets it
/// (`MALLOC_MMAP_THRESHOLD_` or a `GLIBC_TUNABLES` malloc setting); neither applies with
/// another global allocator.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
))]
#[allow(unsafe_code)]
fn tune_glibc_malloc(daemon: bool) {
    let user_set = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.mmap_threshold"));
    if !user_set {
        // SAFETY: mallopt changes one malloc parameter and takes no pointer; main calls this
        // before this process starts any thread.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    }
    if !daemon {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(30));
            // SAFETY: malloc_trim takes no pointer and locks each arena it walks.
            let _ = unsafe { libc::malloc_trim(0) };
        });
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
)))]
fn tune_glibc_malloc(_daemon: bool) {}

fn main() -> ExitCode {
    // The old agent's flags are Go flags, spelled `-config.file=x`; accept that spelling so
    // existing unit files and scripts keep working.
    let cli = Cli::parse_from(cli::compat::normalize_args(std::env::args_os()));
    // The trim thread only for the agent; the client tools exit soon.
    tune_glibc_malloc(matches!(cli.command, Command::Agent(AgentCommand::Run(_))));

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
        Command::Agent(AgentCommand::Run(args)) => run_agent(args),
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
