//! agentctl's client tools and the glue between the command line and the daemon library.
#![forbid(unsafe_code)]

pub mod agent_run;
pub mod args;
pub mod check;
pub mod client;
pub mod compat;
pub mod generate;
pub mod progress;
pub mod ring_status;
pub mod sync;
pub mod wal_inspect;

use std::io::Write as _;
use std::process::ExitCode;

use args::{Command, ConfigCommand, RingCommand, WalCommand};

/// Errors of the client tools; each maps to one documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input was read and found invalid (exit 1). The details were already printed.
    #[error("{0}")]
    Invalid(String),
    /// Wrong usage (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A WAL could not be inspected: not a WAL directory, missing or unreadable; the message
    /// names the path (exit 2). A damaged WAL is still reported (`wal_inspect::run`, exit 1).
    #[error("{0}")]
    Wal(String),
    /// An agent or KV store could not be reached or read (exit 2).
    #[error("{0}")]
    Unavailable(String),
    /// The daemon failed to start or stopped with an error (exit 1).
    #[error(transparent)]
    Daemon(#[from] agent::daemon::Error),
    /// config-sync, config diff and the config CRUD commands; the exit code is the error's own
    /// (see [`sync::SyncError::exit_code`]) unless overridden.
    #[error("{0}")]
    Sync(sync::SyncError, Option<u8>),
    /// An I/O failure, with what was being done (exit 2).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_) | Error::Daemon(_) => 1,
            Error::Usage(_) | Error::Unavailable(_) | Error::Wal(_) | Error::Io { .. } => 2,
            Error::Sync(e, code) => code.unwrap_or_else(|| e.exit_code()),
        }
    }
}

/// Prints an error to standard error and returns its exit code. A broken pipe (the reader of
/// our output went away, as with `| head`) is not an error.
pub fn report(err: &Error) -> ExitCode {
    if let Error::Io { source, .. } = err {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
    }
    let _ = writeln!(std::io::stderr(), "error: {err}");
    ExitCode::from(err.exit_code())
}

/// Runs every subcommand except `agent run`.
pub fn run(command: Command) -> Result<ExitCode, Error> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    match command {
        Command::Agent(_) => Err(Error::Usage(
            "`agent run` is dispatched by the binary".into(),
        )),
        Command::Config(ConfigCommand::Check(a)) => check::run(
            &a.files,
            a.kind,
            a.expand_env,
            check::Style::Modern,
            a.files.len() > 1 && sync::Tty::detect().stderr,
            &mut stdout,
            &mut stderr,
        ),
        Command::LegacyConfigCheck { file, expand_env } => check::run(
            std::slice::from_ref(&file),
            Some(args::ConfigKind::Agent),
            expand_env,
            check::Style::Legacy,
            false,
            &mut stdout,
            &mut stderr,
        ),
        Command::Config(ConfigCommand::Diff(a)) => {
            // `config diff` has its own exit codes: any failure is 2 (1 means "differences").
            sync::run_diff(&a, &mut stdout, &mut stderr, sync::Tty::detect())
                .map_err(|e| Error::Sync(e, Some(2)))
        }
        Command::ConfigSync(a) => {
            sync::run_sync(&a, &mut stdout, &mut stderr, sync::Tty::detect()).map_err(Error::from)
        }
        Command::Config(ConfigCommand::List(a)) => {
            sync::run_list(&a, &mut stdout).map_err(Error::from)
        }
        Command::Config(ConfigCommand::Get(a)) => {
            sync::run_get(&a, &mut stdout).map_err(Error::from)
        }
        Command::Config(ConfigCommand::Put(a)) => {
            sync::run_put(&a, &mut stdout, &mut stderr).map_err(Error::from)
        }
        Command::Config(ConfigCommand::Delete(a)) => {
            sync::run_delete(&a, &mut stdout).map_err(Error::from)
        }
        Command::Ring(RingCommand::Status(a)) => ring_status::status(&a, &mut stdout),
        Command::Ring(RingCommand::Forget(a)) => ring_status::forget(&a, &mut stdout),
        Command::Ring(RingCommand::Owner(a)) => ring_status::owner(&a, &mut stdout, &mut stderr),
        Command::Wal(WalCommand::Inspect(a)) => {
            let progress = a.output == args::OutputFormat::Table && sync::Tty::detect().stderr;
            wal_inspect::run(&a, progress, &mut stdout, &mut stderr)
        }
        Command::LegacyWalStats { dir } => wal_inspect::run_legacy_wal_stats(&dir, &mut stdout),
        Command::LegacyTargetStats { dir, job, instance } => {
            wal_inspect::run_legacy_target_stats(&dir, &job, &instance, &mut stdout)
        }
        Command::LegacySampleStats { dir, selector } => {
            wal_inspect::run_legacy_sample_stats(&dir, &selector, &mut stdout)
        }
        Command::Completions { shell } => {
            generate::completions(shell, &mut stdout).map_err(|e| io("writing completions", e))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            generate::man(&mut stdout).map_err(|e| io("writing the man page", e))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl From<sync::SyncError> for Error {
    fn from(e: sync::SyncError) -> Self {
        Error::Sync(e, None)
    }
}

pub(crate) fn io(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_owned(),
        source,
    }
}
