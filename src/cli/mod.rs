//! The `nicebill` command line: argument structs (clap) and the commands behind them.
//!
//! Exit codes: 0 success; 1 the operation failed (NICEPAY said no); 2 usage, configuration or
//! input error (nothing was sent); 3 the outcome is unknown (look the TID up before retrying).

mod admin;
mod bench;
mod daemon_cmds;
mod demo;
mod demo_billing;
mod ops;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ConfigError;
use crate::domain::FieldError;
use crate::gateway::nicepay::Class;

#[derive(Debug, Parser)]
#[command(
    name = "nicebill",
    version,
    about = "Recurring card billing on NICEPAY billkeys"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "NICEBILL_CONFIG",
        default_value = "nicebill.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the NICEPAY simulator (for tests and demos; loopback only). One port serves both
    /// APIs: the legacy web API (`/webapi/…`, test merchant nictest04m) and the REST API v1
    /// (`/v1/…`, NICEPAY's published sandbox keys as shops; `--v1-merchant` adds more), so a
    /// configuration with `api = "v1"` or `api = "webapi"` points at the same URL.
    Sim(crate::sim::SimArgs),
    /// Issue or remove a billkey.
    #[command(subcommand)]
    Billkey(BillkeyCommand),
    /// Charge a stored card once.
    Approve(ops::ApproveArgs),
    /// Cancel (refund) an approved transaction, fully or partly.
    Refund(ops::RefundArgs),
    /// Look up a transaction by TID.
    Status(ops::StatusArgs),
    /// Run the billing daemon: charge subscriptions on their schedules.
    Run(daemon_cmds::RunArgs),
    /// Apply database migrations.
    Migrate,
    /// Charge a subscription's current due cycle now (skipping a dunning wait), exactly once.
    ChargeNow(daemon_cmds::ChargeNowArgs),
    /// Validate configuration, key, database and migrations (and NICEPAY with --gateway).
    CheckConfig(daemon_cmds::CheckConfigArgs),
    /// Read the health file: exit 0 ok, 1 degraded, 2 failing, stale or missing.
    Health(daemon_cmds::HealthArgs),
    /// Show upcoming charge times.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Add, list, show, pause, resume or cancel subscriptions.
    #[command(subcommand)]
    Subscription(admin::SubscriptionCommand),
    /// List charge attempts.
    #[command(subcommand)]
    Charges(admin::ChargesCommand),
    /// List the event log.
    #[command(subcommand)]
    Events(admin::EventsCommand),
    /// Webhook events: list, deliver now, retry dead ones, send a test ping.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Measure charging throughput, CPU and memory against the simulator.
    Bench(bench::BenchArgs),
    /// Walk through billkey issue, approval, status, refund and removal against a built-in
    /// simulator. Needs no configuration.
    Demo(demo::DemoArgs),
}

impl Cli {
    /// The log level this command uses instead of `[log] level`, if any: the demo logs only
    /// warnings and errors unless `--verbose`.
    pub fn log_level_override(&self) -> Option<&'static str> {
        match &self.command {
            Command::Demo(args) if !args.verbose => Some("warn"),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Print the next charge times of a subscription or of a schedule given by flags.
    Preview(daemon_cmds::PreviewArgs),
}

#[derive(Debug, Subcommand)]
pub enum BillkeyCommand {
    /// Issue a billkey from card details read from stdin (`CardNo=…` lines) or a no-echo prompt.
    Issue(ops::IssueArgs),
    /// Remove a billkey at NICEPAY.
    Remove(ops::RemoveArgs),
}

/// Why a command did not succeed; decides the exit code and the one line printed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0} (nothing was sent)")]
    Input(#[from] FieldError),
    #[error("{0}")]
    Usage(String),
    #[error("{line}")]
    Gateway { class: Class, line: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The operation could not be done (exit 1), for a reason that is not the gateway's.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Daemon(#[from] crate::daemon::DaemonError),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Input(_) | CliError::Usage(_) => 2,
            CliError::Gateway { class, .. } => match class {
                Class::Unknown | Class::Duplicate => 3,
                _ => 1,
            },
            CliError::Io(_) | CliError::Failed(_) => 1,
            CliError::Daemon(crate::daemon::DaemonError::Unmigrated { .. }) => 2,
            CliError::Daemon(_) => 1,
        }
    }
}

/// Runs one parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Sim(args) => crate::sim::serve(args, crate::shutdown_signal())
            .await
            .map_err(CliError::from),
        Command::Billkey(BillkeyCommand::Issue(args)) => ops::issue(&cli.config, args).await,
        Command::Billkey(BillkeyCommand::Remove(args)) => ops::remove(&cli.config, args).await,
        Command::Approve(args) => ops::approve(&cli.config, args).await,
        Command::Refund(args) => ops::refund(&cli.config, args).await,
        Command::Status(args) => ops::status(&cli.config, args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Run(args) => daemon_cmds::run(&cli.config, args).await,
        Command::Subscription(cmd) => admin::subscription(&cli.config, cmd).await,
        Command::Charges(cmd) => admin::charges(&cli.config, cmd).await,
        Command::Events(cmd) => admin::events(&cli.config, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&cli.config, cmd).await,
        Command::Migrate => daemon_cmds::migrate(&cli.config).await,
        Command::ChargeNow(args) => daemon_cmds::charge_now(&cli.config, args).await,
        Command::CheckConfig(args) => daemon_cmds::check_config(&cli.config, args).await,
        Command::Health(args) => return daemon_cmds::health(&cli.config, args),
        Command::Schedule(ScheduleCommand::Preview(args)) => {
            daemon_cmds::preview(&cli.config, args).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nicebill: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
