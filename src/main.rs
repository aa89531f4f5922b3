//! The `nicebill` binary: parse the command line, start logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = nicebill::cli::Cli::parse();
    let mut log = nicebill::config::LogConfig::peek(&cli.config);
    if let Some(level) = cli.log_level_override() {
        log.level = level.into();
    }
    init_logging(&log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nicebill: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(nicebill::cli::run(cli))
}

/// Logs go to stderr (stdout stays clean for command output), as `[log]` says; `RUST_LOG`
/// overrides the level. Under journald (`JOURNAL_STREAM` set) text lines carry no timestamp
/// and no colour, since the journal adds its own.
fn init_logging(log: &nicebill::config::LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match (log.json, journald) {
        (true, _) => builder.json().init(),
        (false, true) => builder.without_time().with_ansi(false).init(),
        (false, false) => builder.init(),
    }
}
