//! The `nicebill` binary: parse the command line, start logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = nicebill::cli::Cli::parse();
    // Logs go to stderr so that command output on stdout stays clean for scripts.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
