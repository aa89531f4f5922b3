//! `nicebill run`, `nicebill migrate` and `nicebill schedule preview`.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::CliError;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::daemon;
use crate::schedule::{IntervalUnit, Schedule, parse_timezone};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Charge everything due now, wait for the outcomes, then exit (for tests and timers).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// Preview a stored subscription by id.
    #[arg(long, conflicts_with_all = ["anchor", "interval", "cron"])]
    pub subscription: Option<i64>,
    /// First charge time, local to --timezone: `2026-01-31 09:00` (or RFC 3339).
    #[arg(long, required_unless_present = "subscription")]
    pub anchor: Option<String>,
    /// Interval such as `1month`, `2week`, `10day`, `1year`.
    #[arg(long, conflicts_with = "cron")]
    pub interval: Option<String>,
    /// Cron expression instead of an interval (5 fields, or 6 with seconds first).
    #[arg(long)]
    pub cron: Option<String>,
    /// Time zone of the schedule (default: [scheduler] timezone, else Asia/Seoul).
    #[arg(long)]
    pub timezone: Option<String>,
    #[arg(long)]
    pub max_cycles: Option<i64>,
    /// How many charge times to print.
    #[arg(long, default_value_t = 12)]
    pub count: usize,
}

fn load(config: &Path) -> Result<Config, CliError> {
    let config = Config::load(config)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

pub async fn run(config: &Path, args: RunArgs) -> Result<(), CliError> {
    let config = load(config)?;
    let report = daemon::run(
        config,
        Arc::new(SystemClock),
        args.once,
        crate::shutdown_signal(),
    )
    .await?;
    tracing::info!(?report, "nicebill stopped");
    Ok(())
}

pub async fn migrate(config: &Path) -> Result<(), CliError> {
    let mut config = load(config)?;
    config.database.auto_migrate = true;
    let store = daemon::open_store(&config).await?;
    let pending = store
        .pending_migrations()
        .await
        .map_err(daemon::DaemonError::from)?;
    println!(
        "{}: schema up to date{}",
        store.url(),
        if pending.is_empty() {
            ""
        } else {
            " (migrations still pending!)"
        }
    );
    Ok(())
}

fn parse_interval(text: &str) -> Result<(IntervalUnit, i64), CliError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (count, unit) = text.split_at(split);
    let count: i64 = if count.is_empty() {
        1
    } else {
        count
            .parse()
            .map_err(|_| CliError::Usage(format!("--interval {text:?}: bad count")))?
    };
    let unit = unit.trim().trim_end_matches('s');
    let unit: IntervalUnit = unit.parse().map_err(|_| {
        CliError::Usage(format!(
            "--interval {text:?}: expected e.g. 1month, 2week, 10day, 1year"
        ))
    })?;
    Ok((unit, count))
}

fn parse_anchor(text: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(|| {
            CliError::Usage(format!("--anchor {text:?}: expected `2026-01-31 09:00`"))
        })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| CliError::Usage(format!("--anchor {text:?} does not exist in {tz}")))
}

pub async fn preview(config_path: &Path, args: PreviewArgs) -> Result<(), CliError> {
    let (schedule, label) = match args.subscription {
        Some(id) => {
            let config = load(config_path)?;
            let store = daemon::open_store(&config).await?;
            let row = store
                .subscription(id)
                .await
                .map_err(daemon::DaemonError::from)?
                .ok_or_else(|| CliError::Usage(format!("no subscription with id {id}")))?;
            let valid = crate::billing::plan::validate(&row, &config.policy)
                .map_err(|e| CliError::Usage(format!("subscription {id}: {e}")))?;
            (
                valid.schedule,
                format!("subscription {id} ({})", row.external_id),
            )
        }
        None => {
            let tz = match &args.timezone {
                Some(name) => parse_timezone("--timezone", name)
                    .map_err(|e| CliError::Usage(e.to_string()))?,
                None => match Config::load(config_path) {
                    Ok(c) => c.policy.timezone,
                    Err(_) => chrono_tz::Asia::Seoul,
                },
            };
            let anchor = parse_anchor(args.anchor.as_deref().unwrap_or_default(), tz)?;
            let schedule = match (&args.cron, &args.interval) {
                (Some(cron), _) => Schedule::cron(cron, anchor, tz),
                (None, interval) => {
                    let (unit, count) = parse_interval(interval.as_deref().unwrap_or("1month"))?;
                    Schedule::every(unit, count, anchor, tz)
                }
            }
            .and_then(|s| s.with_end(args.max_cycles, None))
            .map_err(|e| CliError::Usage(e.to_string()))?;
            (schedule, "schedule".to_owned())
        }
    };
    let tz = schedule.timezone();
    println!("{label}, times in {tz}:");
    for (cycle, at) in schedule.preview(args.count) {
        println!(
            "  cycle {cycle:>3}  {}",
            at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %a")
        );
    }
    Ok(())
}
