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
    /// How many charge times to print (1 to 10000).
    #[arg(long, default_value_t = 12, value_parser = count_parser())]
    pub count: usize,
}

/// Previews are for reading: at most 10,000 lines (a bad count is a usage error, exit 2).
fn count_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=10_000)
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
        daemon::TimeSource::Database,
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

pub(super) fn parse_interval(text: &str) -> Result<(IntervalUnit, i64), CliError> {
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

pub(super) fn parse_anchor(text: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, CliError> {
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
            let claimed = store
                .claimed_rows(&[crate::billing::model::SubscriptionId(id)])
                .await
                .map_err(daemon::DaemonError::from)?
                .pop()
                .ok_or_else(|| CliError::Usage(format!("no subscription with id {id}")))?;
            let valid = claimed
                .row
                .and_then(|row| crate::billing::plan::validate(&row, &config.policy))
                .map_err(|e| CliError::Usage(format!("subscription {id}: {e}")))?;
            let label = format!("subscription {id} ({})", valid.external_id);
            (valid.schedule, label)
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

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The health file (default: [health] file of the configuration).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Seconds after which the file counts as stale (default: what the daemon wrote in it).
    #[arg(long)]
    pub max_age: Option<u64>,
}

/// `nicebill health`: exit 0 ok, 1 degraded, 2 failing, stale or missing; one line.
pub fn health(config: &Path, args: HealthArgs) -> std::process::ExitCode {
    let file = match args.file {
        Some(f) => f,
        None => match Config::load(config).map(|c| c.health.file) {
            Ok(Some(f)) => f,
            Ok(None) => {
                println!("FAILING: no --file given and [health] file is not configured");
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                println!("FAILING: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let (code, line) = {
        use crate::clock::Clock;
        crate::health::check(&file, args.max_age, crate::clock::SystemClock.now())
    };
    println!("{line}");
    std::process::ExitCode::from(code)
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Also call NICEPAY (a status lookup of a TID that does not exist) to check the network
    /// path, TLS and the merchant key.
    #[arg(long)]
    pub gateway: bool,
}

/// `nicebill check-config`: configuration, key, database connection, migrations, and with
/// `--gateway` NICEPAY itself. Prints one line per check; fails on any problem.
pub async fn check_config(config_path: &Path, args: CheckConfigArgs) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    println!(
        "ok   configuration {} (NICEPAY {} API, {})",
        config.file.display(),
        config.nicepay.api(),
        config.nicepay.merchant()
    );
    for w in &config.warnings {
        println!("warn {w}");
    }
    let mut problems = 0;
    let url = config.database.url.clone();
    let max = 1;
    let store = tokio::task::spawn_blocking(move || crate::storage::Store::open(url, max))
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    match store {
        Ok(store) => {
            println!("ok   database {}", store.url());
            match store.pending_migrations().await {
                Ok(p) if p.is_empty() => println!("ok   migrations up to date"),
                Ok(p) if config.database.auto_migrate => {
                    println!(
                        "ok   {} migration(s) pending; `run` applies them (auto_migrate)",
                        p.len()
                    )
                }
                Ok(p) => {
                    problems += 1;
                    println!(
                        "FAIL {} migration(s) pending ({}); run `nicebill migrate`",
                        p.len(),
                        p.join(", ")
                    );
                }
                Err(e) => {
                    problems += 1;
                    println!("FAIL {e}");
                }
            }
        }
        Err(e) => {
            problems += 1;
            println!("FAIL {e}");
        }
    }
    if args.gateway {
        let gateway = config
            .nicepay
            .gateway(Arc::new(SystemClock))
            .map_err(CliError::Usage)?;
        // An authenticated lookup of a transaction that does not exist.
        let looked = match gateway.new_tid(crate::gateway::TidFor::First) {
            Some(probe) => gateway.status(&probe).await,
            None => {
                let probe = crate::domain::Moid::new("nicebill-check-config")?;
                gateway
                    .status_by_order(&probe, crate::clock::Clock::now(&SystemClock))
                    .await
            }
        };
        match looked {
            Ok(reply) if reply.class == crate::gateway::nicepay::Class::Approved => println!(
                "ok   NICEPAY {} answered a status lookup ({} {})",
                config.nicepay.base_url(),
                reply.result_code,
                reply.result_msg
            ),
            Ok(reply) => {
                problems += 1;
                println!(
                    "FAIL NICEPAY answered {} {} [{}]: {}",
                    reply.result_code,
                    reply.result_msg,
                    reply.class,
                    reply.class.advice()
                );
            }
            Err(e) => {
                problems += 1;
                println!("FAIL NICEPAY: {e}");
            }
        }
    }
    if problems > 0 {
        return Err(CliError::Usage(format!("{problems} problem(s) found")));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ChargeNowArgs {
    /// Subscription id or external id.
    pub subscription: String,
}

/// `nicebill charge-now`: the current due cycle, now, exactly once.
pub async fn charge_now(config_path: &Path, args: ChargeNowArgs) -> Result<(), CliError> {
    use crate::billing::engine::ChargeNow;
    use crate::billing::plan::Settled;
    let config = load(config_path)?;
    let (engine, _) = daemon::engine(&config, daemon::TimeSource::Database).await?;
    let store = engine.store().clone();
    let fail = |e: crate::storage::StoreError| CliError::Daemon(e.into());
    // The merchant's latest writes first: a row no pass has seen yet is taken in here.
    engine
        .notice(engine.now())
        .await
        .map_err(daemon::DaemonError::from)?;
    let row = super::admin::resolve(&store, &args.subscription).await?;
    let id = row.id;
    if row.status != "active" {
        return Err(CliError::Usage(format!(
            "subscription {id} ({}) is {}; only active subscriptions are charged",
            row.external_id, row.status
        )));
    }
    let settings = engine.settings();
    let Some(claimed) = store
        .claim_one(
            crate::billing::model::SubscriptionId(id),
            &settings.owner,
            engine.now(),
            settings.lease,
        )
        .await
        .map_err(fail)?
    else {
        return Err(CliError::Gateway {
            class: crate::gateway::nicepay::Class::Unknown,
            line: format!(
                "subscription {id} is being charged right now or has an attempt whose outcome is not known yet; see `nicebill charges list --subscription {id}`"
            ),
        });
    };
    match engine
        .charge_now(claimed)
        .await
        .map_err(daemon::DaemonError::from)?
    {
        ChargeNow::Nothing(_) => {
            let row = store.subscription(id).await.map_err(fail)?;
            let tz = config.policy.timezone;
            match row {
                Some(r) if r.status == "active" => println!(
                    "nothing due now for subscription {id}: cycle {} is due {}",
                    r.next_cycle.unwrap_or(1),
                    r.next_charge_at
                        .map(|t| t
                            .and_utc()
                            .with_timezone(&tz)
                            .format("%Y-%m-%d %H:%M:%S %Z")
                            .to_string())
                        .unwrap_or_else(|| "-".into())
                ),
                Some(r) => println!(
                    "nothing charged: subscription {id} is now {} ({})",
                    r.status,
                    r.status_reason.unwrap_or_default()
                ),
                None => println!("nothing charged"),
            }
            Ok(())
        }
        ChargeNow::Attempted {
            cycle,
            tid,
            moid,
            state,
            settled,
            result_code,
            result_msg,
        } => {
            let line = format!(
                "subscription {id} cycle {cycle}: {state} Moid={moid} TID={} ResultCode={} ResultMsg={:?}",
                tid.as_ref().map_or("-", |t| t.as_str()),
                result_code.as_deref().unwrap_or("-"),
                result_msg.as_deref().unwrap_or("")
            );
            match settled {
                Some(Settled::Approved) => {
                    println!("{line}");
                    Ok(())
                }
                Some(_) => Err(CliError::Gateway {
                    class: crate::gateway::nicepay::Class::Declined,
                    line,
                }),
                None => Err(CliError::Gateway {
                    class: crate::gateway::nicepay::Class::Unknown,
                    line: format!(
                        "{line}; the outcome is unknown: the daemon looks it up before anything else"
                    ),
                }),
            }
        }
    }
}
