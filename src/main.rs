//! `agentctl`: parse arguments, install the TLS provider, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use cli::args::{Cli, LogFormat, LogLevel};

fn main() -> ExitCode {
    // The old agent's flags are Go flags, spelled `-config.file=x`; accept that spelling so
    // existing unit files and scripts keep working.
    let cli = Cli::parse_from(cli::compat::normalize_args(std::env::args_os()));

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

    let result = cli::run(cli.command);
    match result {
        Ok(code) => code,
        Err(err) => cli::report(&err),
    }
}

