//! `nicebill webhooks`: what the outbox holds, delivering it now, putting dead events back, and
//! a signed test ping.

use std::path::Path;

use clap::{Args, Subcommand};

use super::CliError;
use super::admin::{
    SECONDS, align_right, db, emit, load, local, local_opt, open, or_dash, print_json, table,
};
use crate::billing::model::DeliveryState;
use crate::clock::{Clock, SystemClock};
use crate::storage::outbox::Delivery;
use crate::webhook::Deliverer;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Show events with their delivery attempts and last HTTP status, newest first.
    List(ListArgs),
    /// Deliver every undelivered event now, ignoring the waits between tries; exit 1 if any
    /// failed.
    Deliver,
    /// Put dead events back (the given ids, or all with --dead).
    Retry(RetryArgs),
    /// Send a signed `ping` to `[webhook] url`.
    Test,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, delivered, dead or filtered.
    #[arg(long)]
    state: Option<String>,
    #[arg(long)]
    subscription: Option<i64>,
    #[arg(long, default_value_t = 50)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Outbox ids (the `id` column of `webhooks list`).
    ids: Vec<i64>,
    /// Every dead event.
    #[arg(long, conflicts_with = "ids")]
    dead: bool,
}

pub async fn run(config_path: &Path, cmd: WebhooksCommand) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let clock = std::sync::Arc::new(SystemClock);
    let deliverer = || -> Result<Deliverer, CliError> {
        Deliverer::new(
            store.clone(),
            &config.webhook,
            clock.clone(),
            format!("cli-{}", std::process::id()),
        )
        .map_err(|e| CliError::Failed(e.to_string()))?
        .ok_or_else(|| CliError::Usage("no [webhook] url is configured".into()))
    };
    match cmd {
        WebhooksCommand::List(args) => {
            let state = match args.state.as_deref() {
                None => None,
                Some(s) => Some(s.parse::<DeliveryState>().map_err(|_| {
                    CliError::Usage(format!(
                        "--state {s:?}: expected pending, delivered, dead or filtered"
                    ))
                })?),
            };
            let rows = store
                .webhooks(state, args.subscription, args.limit.clamp(1, 10_000))
                .await
                .map_err(db)?;
            if args.json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                return emit("no webhook events");
            }
            let tz = config.policy.timezone;
            let mut t = table(&[
                "id",
                "event id",
                "type",
                "subscription",
                "state",
                "attempts",
                "last status",
                &format!("written ({tz})"),
                "next try / delivered",
                "last error",
            ]);
            for r in &rows {
                let when = match r.state.as_str() {
                    "delivered" => local_opt(r.delivered_at, tz, SECONDS),
                    "pending" => local(r.next_attempt_at, tz, SECONDS),
                    _ => "-".into(),
                };
                t.add_row(vec![
                    r.id.to_string(),
                    r.event_id.clone(),
                    r.kind.clone(),
                    or_dash(r.subscription_id),
                    r.state.clone(),
                    r.attempts.to_string(),
                    or_dash(r.last_status),
                    local(r.created_at, tz, SECONDS),
                    when,
                    r.last_error.clone().unwrap_or_default(),
                ]);
            }
            align_right(&mut t, &[0, 3, 5, 6]);
            emit(t)
        }
        WebhooksCommand::Deliver => {
            let report = deliverer()?.drain(true).await.map_err(db)?;
            emit(format!(
                "delivered {}, failed {} (tried again later), dead {}, filtered {}",
                report.delivered, report.failed, report.dead, report.filtered
            ))?;
            if report.failed + report.dead > 0 {
                return Err(CliError::Failed(format!(
                    "{} webhook event(s) could not be delivered",
                    report.failed + report.dead
                )));
            }
            Ok(())
        }
        WebhooksCommand::Retry(args) => {
            if args.ids.is_empty() && !args.dead {
                return Err(CliError::Usage("name event ids, or --dead".into()));
            }
            let ids = (!args.dead).then_some(args.ids);
            let n = store.retry_webhooks(clock.now(), ids).await.map_err(db)?;
            emit(format!("{n} dead event(s) put back"))
        }
        WebhooksCommand::Test => match deliverer()?.ping().await {
            Delivery::Delivered { status } => emit(format!("ping delivered: HTTP {status}")),
            Delivery::Failed { error, .. } => Err(CliError::Failed(format!("ping: {error}"))),
            Delivery::Filtered => Err(CliError::Failed("ping not sent".into())),
        },
    }
}
