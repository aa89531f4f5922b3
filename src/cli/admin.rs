//! Operator commands over the rows merchant applications write: subscriptions, charges, events.
//!
//! `subscription add|pause|resume|cancel` write exactly what a merchant application would (the
//! merchant's columns of a new row; `status` alone) after the checks the daemon makes; the
//! daemon does the rest on its next pass. Listings are tables for people and, with `--json`,
//! the rows as stored (times in UTC) for scripts.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use comfy_table::{CellAlignment, Table};
use serde::Serialize;

use super::CliError;
use super::daemon_cmds::{parse_anchor, parse_interval};
use crate::billing::model::{MerchantRow, SubscriptionId};
use crate::billing::plan::{self, Decision, Policy};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::domain::{FieldError, Krw};
use crate::schedule::parse_timezone;
use crate::storage::models::{ChargeRow, EventRow, NewSubscription, RemovalRow, SubscriptionRow};
use crate::storage::{Store, StoreError};

/// Every status a subscription can have (for `--status`).
const STATUSES: [&str; 7] = [
    "active",
    "paused",
    "cancelled",
    "past_due",
    "card_invalid",
    "ended",
    "invalid",
];

/// Every state a charge attempt can have (for `--state`).
const CHARGE_STATES: [&str; 10] = [
    "pending",
    "approved",
    "declined",
    "card_invalid",
    "request_error",
    "unlisted_code",
    "not_charged",
    "unknown",
    "cancelled",
    "double",
];

#[derive(Debug, clap::Subcommand)]
pub enum SubscriptionCommand {
    /// Add a subscription exactly as a merchant application would insert it, after the checks
    /// the daemon makes. Prints the new id.
    Add(Box<AddArgs>),
    /// List subscriptions, newest first.
    List(ListArgs),
    /// Show one subscription with its last charges and events.
    Show(ShowArgs),
    /// Pause an active subscription: nothing is charged while it is paused, and cycles that
    /// come due meanwhile are skipped when it resumes.
    Pause(ChangeArgs),
    /// Set a subscription active again: a paused one, or one nicebill stopped (past_due,
    /// card_invalid, invalid, or ended when its schedule has a cycle left). Dunning starts
    /// afresh and the next due cycle is charged.
    Resume(ChangeArgs),
    /// Cancel a subscription: nothing more is charged and nicebill removes its billkey at
    /// NICEPAY. This cannot be undone.
    Cancel(ChangeArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ChargesCommand {
    /// List charge attempts, newest first.
    List(ChargesListArgs),
    /// List double charges, newest first: cycles a late status lookup found approved twice
    /// (TID of the late approval and of the cycle's approval). Nothing is refunded
    /// automatically: refund one of each pair with `nicebill refund`. Exit 0 either way.
    Doubles(DoublesArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// List the event log, newest first.
    List(EventsListArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The merchant's reference for this subscription; must be unique.
    #[arg(long, value_name = "TEXT")]
    pub external_id: String,
    /// The billkey to charge (from `nicebill billkey issue`, or NICEPAY).
    #[arg(long, value_name = "BILLKEY")]
    pub bid: String,
    /// Amount charged per cycle, in whole KRW (digits only).
    #[arg(long, value_name = "KRW", allow_negative_numbers = true)]
    pub amount: String,
    /// Product name sent with each charge: at most 40 EUC-KR bytes (a Hangul syllable counts
    /// 2), no characters EUC-KR cannot represent.
    #[arg(long, value_name = "TEXT")]
    pub goods_name: String,
    /// Charge every N days, weeks, months or years: `1month` (the default), `2week`, `10day`,
    /// `1year`.
    #[arg(long, conflicts_with = "cron")]
    pub interval: Option<String>,
    /// A cron expression instead of an interval (5 fields, or 6 with seconds first), in the
    /// schedule's time zone; cycle 1 is its first time at or after --anchor.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// IANA time zone of the schedule, e.g. Asia/Seoul (default: none stored, so
    /// `[scheduler] timezone` applies).
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// First charge time, local to the schedule's time zone: `2027-01-31 09:00` (or RFC 3339).
    /// Default: now, i.e. charged on the daemon's next pass.
    #[arg(long, value_name = "TIME")]
    pub anchor: Option<String>,
    /// Stop after this many cycles.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_cycles: Option<i32>,
    /// No cycle due after this time is charged; local like --anchor.
    #[arg(long, value_name = "TIME")]
    pub ends_at: Option<String>,
    /// Buyer name sent with each charge.
    #[arg(long, value_name = "TEXT")]
    pub buyer_name: Option<String>,
    /// Buyer e-mail address sent with each charge.
    #[arg(long, value_name = "EMAIL")]
    pub buyer_email: Option<String>,
    /// Buyer telephone number sent with each charge.
    #[arg(long, value_name = "TEL")]
    pub buyer_tel: Option<String>,
    /// Installment months: 00 (lump sum), 02, 03, …
    #[arg(long, value_name = "MM", default_value = "00")]
    pub quota: String,
    /// Installments interest-free, the interest paid by the merchant (card_interest = 1).
    #[arg(long)]
    pub interest_free: bool,
    /// Cancel when the next cycle comes due instead of charging it.
    #[arg(long)]
    pub cancel_at_period_end: bool,
    /// Print the inserted row as JSON instead of its id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only subscriptions with this status.
    #[arg(long, value_name = "STATUS", value_parser = STATUSES)]
    pub status: Option<String>,
    /// At most this many rows.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = limit_parser())]
    pub limit: i64,
    /// Print the rows as stored, as a JSON array (times in UTC).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The subscription: its id, or its external_id.
    #[arg(value_name = "ID_OR_EXTERNAL_ID")]
    pub subscription: String,
    /// How many of its latest charges and events to show.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = limit_parser())]
    pub limit: i64,
    /// Print the row, its charges, events and billkey removal as JSON (times in UTC).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The subscription: its id, or its external_id.
    #[arg(value_name = "ID_OR_EXTERNAL_ID")]
    pub subscription: String,
    /// Print the change as JSON: id, external_id, previous_status, status.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ChargesListArgs {
    /// Only attempts of this subscription (its id, or its external_id).
    #[arg(long, value_name = "ID_OR_EXTERNAL_ID")]
    pub subscription: Option<String>,
    /// Only attempts in this state.
    #[arg(long, value_name = "STATE", value_parser = CHARGE_STATES)]
    pub state: Option<String>,
    /// At most this many rows.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = limit_parser())]
    pub limit: i64,
    /// Print the rows as stored, as a JSON array (times in UTC).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DoublesArgs {
    /// Print the double charges as a JSON array (times in UTC).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EventsListArgs {
    /// Only events of this subscription (its id, or its external_id).
    #[arg(long, value_name = "ID_OR_EXTERNAL_ID")]
    pub subscription: Option<String>,
    /// At most this many rows.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = limit_parser())]
    pub limit: i64,
    /// Print the rows as stored, as a JSON array (times in UTC).
    #[arg(long)]
    pub json: bool,
}

fn limit_parser() -> clap::builder::RangedI64ValueParser<i64> {
    clap::value_parser!(i64).range(1..=10_000)
}

pub async fn subscription(config: &Path, cmd: SubscriptionCommand) -> Result<(), CliError> {
    match cmd {
        SubscriptionCommand::Add(args) => add(config, *args).await,
        SubscriptionCommand::List(args) => list(config, args).await,
        SubscriptionCommand::Show(args) => show(config, args).await,
        SubscriptionCommand::Pause(args) => change(config, Change::Pause, args).await,
        SubscriptionCommand::Resume(args) => change(config, Change::Resume, args).await,
        SubscriptionCommand::Cancel(args) => change(config, Change::Cancel, args).await,
    }
}

pub async fn charges(config: &Path, cmd: ChargesCommand) -> Result<(), CliError> {
    match cmd {
        ChargesCommand::List(args) => list_charges(config, args).await,
        ChargesCommand::Doubles(args) => list_doubles(config, args).await,
    }
}

pub async fn events(config: &Path, cmd: EventsCommand) -> Result<(), CliError> {
    match cmd {
        EventsCommand::List(args) => list_events(config, args).await,
    }
}

// ---- plumbing ----

pub(super) fn load(config: &Path) -> Result<Config, CliError> {
    let config = Config::load(config)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

pub(super) async fn open(config: &Config) -> Result<Store, CliError> {
    Ok(daemon::open_store(config).await?)
}

/// A database failure: the operation failed (exit 1).
pub(super) fn db(e: StoreError) -> CliError {
    CliError::Daemon(DaemonError::Store(e))
}

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    emit(serde_json::to_string_pretty(value).map_err(std::io::Error::other)?)
}

/// Writes `text` and a newline to stdout; a reader that went away (`| head`) is no failure.
pub(super) fn emit(text: impl std::fmt::Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub(super) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

pub(super) fn align_right(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A stored UTC time as local wall time in `tz`.
pub(super) fn local(t: NaiveDateTime, tz: Tz, format: &str) -> String {
    t.and_utc().with_timezone(&tz).format(format).to_string()
}

pub(super) fn local_opt(t: Option<NaiveDateTime>, tz: Tz, format: &str) -> String {
    t.map_or_else(|| "-".to_owned(), |t| local(t, tz, format))
}

const MINUTES: &str = "%Y-%m-%d %H:%M";
pub(super) const SECONDS: &str = "%Y-%m-%d %H:%M:%S";
const WITH_ZONE: &str = "%Y-%m-%d %H:%M:%S %Z";

pub(super) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// 1234567 → "1,234,567".
fn krw(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if amount < 0 {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// "1 month", "2 weeks", or the cron expression; with the row's own time zone, if any.
fn schedule_label(row: &SubscriptionRow) -> String {
    let rule = match row.cron.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(cron) => cron.to_owned(),
        None => {
            let unit = row.interval_unit.trim();
            match row.interval_count {
                Some(1) => format!("1 {unit}"),
                Some(n) => format!("{n} {unit}s"),
                None => format!("? {unit}s"),
            }
        }
    };
    match row
        .timezone
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(tz) => format!("{rule} ({tz})"),
        None => rule,
    }
}

/// The subscription `key` names: by external_id, or by id when it is a number; an unknown or
/// ambiguous key is refused.
pub(super) async fn resolve(store: &Store, key: &str) -> Result<SubscriptionRow, CliError> {
    let mut rows = store.subscriptions_named(key).await.map_err(db)?;
    match rows.len() {
        0 => Err(CliError::Usage(format!(
            "no subscription has the id or external_id {key:?}"
        ))),
        1 => Ok(rows.remove(0)),
        _ => {
            let key = key.trim();
            let by_id = rows.iter().find(|r| r.id.to_string() == key);
            let by_ext = rows.iter().find(|r| r.external_id == key);
            let (by_id, by_ext) = match (by_id, by_ext) {
                (Some(a), Some(b)) => (a, b),
                _ => (&rows[0], &rows[1]),
            };
            Err(CliError::Usage(format!(
                "{key:?} is ambiguous: it is the id of subscription {} (external_id {:?}) and the external_id of subscription {}; name the one you mean by its other key",
                by_id.id, by_id.external_id, by_ext.id
            )))
        }
    }
}

// ---- subscription add ----

async fn add(config_path: &Path, args: AddArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let now = SystemClock.now().trunc_subsecs(0);
    let new = new_subscription(&args, &config.policy, now).map_err(not_inserted)?;
    plan::validate(&row_of(&new), &config.policy).map_err(|e| not_inserted(CliError::Input(e)))?;
    let store = open(&config).await?;
    let row = match store.add_subscription(new).await.map_err(db)? {
        Ok(row) => row,
        Err(existing) => {
            return Err(CliError::Usage(format!(
                "external_id: {:?} is already taken by subscription {existing} (nothing was inserted)",
                args.external_id
            )));
        }
    };
    if args.json {
        print_json(&row)
    } else {
        emit(row.id)
    }
}

/// Bad input to `add`, said so: exit 2.
fn not_inserted(e: CliError) -> CliError {
    match e {
        CliError::Input(e) => CliError::Usage(format!("{e} (nothing was inserted)")),
        CliError::Usage(m) => CliError::Usage(format!("{m} (nothing was inserted)")),
        other => other,
    }
}

/// The merchant's columns from the flags; values the daemon would refuse are left to
/// `plan::validate`, so that the CLI refuses exactly what the daemon would.
fn new_subscription(
    args: &AddArgs,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<NewSubscription, CliError> {
    if args.external_id.trim().is_empty() {
        return Err(FieldError::new("external_id", "is empty").into());
    }
    let amount = Krw::parse_digits("amount", &args.amount)?.value();
    let timezone = args
        .timezone
        .as_deref()
        .map(|name| {
            parse_timezone("timezone", name)
                .map(|tz| (name.trim().to_owned(), tz))
                .map_err(|e| FieldError::new(e.field, e.problem))
        })
        .transpose()?;
    let tz = timezone.as_ref().map_or(policy.timezone, |(_, tz)| *tz);
    let anchor = match &args.anchor {
        Some(text) => parse_anchor(text, tz)?,
        None => now,
    };
    let ends_at = args
        .ends_at
        .as_deref()
        .map(|text| {
            parse_anchor(text, tz).map_err(|e| match e {
                CliError::Usage(m) => CliError::Usage(m.replacen("--anchor", "--ends-at", 1)),
                other => other,
            })
        })
        .transpose()?;
    let (interval_unit, interval_count) = match (&args.cron, &args.interval) {
        (Some(_), _) => ("month".to_owned(), 1),
        (None, interval) => {
            let (unit, count) = parse_interval(interval.as_deref().unwrap_or("1month"))?;
            let count = i32::try_from(count).map_err(|_| {
                FieldError::new(
                    "interval_count",
                    format!("{count} is not between 1 and 1000"),
                )
            })?;
            (unit.as_str().to_owned(), count)
        }
    };
    Ok(NewSubscription {
        external_id: args.external_id.clone(),
        bid: args.bid.clone(),
        amount,
        goods_name: args.goods_name.clone(),
        buyer_name: args.buyer_name.clone(),
        buyer_email: args.buyer_email.clone(),
        buyer_tel: args.buyer_tel.clone(),
        card_quota: args.quota.clone(),
        card_interest: if args.interest_free { "1" } else { "0" }.to_owned(),
        interval_unit,
        interval_count,
        cron: args.cron.clone(),
        timezone: timezone.map(|(name, _)| name),
        anchor_at: anchor.naive_utc(),
        max_cycles: args.max_cycles,
        ends_at: ends_at.map(|t| t.naive_utc()),
        status: "active".to_owned(),
        cancel_at_period_end: args.cancel_at_period_end,
    })
}

/// The row as nicebill will read it once inserted.
fn row_of(new: &NewSubscription) -> MerchantRow {
    MerchantRow {
        id: SubscriptionId(0),
        external_id: new.external_id.clone(),
        bid: new.bid.clone(),
        amount: new.amount,
        goods_name: new.goods_name.clone(),
        buyer_name: new.buyer_name.clone(),
        buyer_email: new.buyer_email.clone(),
        buyer_tel: new.buyer_tel.clone(),
        card_quota: new.card_quota.clone(),
        card_interest: new.card_interest.clone(),
        interval_unit: new.interval_unit.clone(),
        interval_count: i64::from(new.interval_count),
        cron: new.cron.clone(),
        timezone: new.timezone.clone(),
        anchor_at: new.anchor_at.and_utc(),
        max_cycles: new.max_cycles.map(i64::from),
        ends_at: new.ends_at.map(|t| t.and_utc()),
        status: new.status.clone(),
        cancel_at_period_end: new.cancel_at_period_end,
    }
}

// ---- subscription list / show ----

async fn list(config_path: &Path, args: ListArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let rows = store
        .list_subscriptions(args.status, args.limit)
        .await
        .map_err(db)?;
    if args.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        return emit("no subscriptions");
    }
    let tz = config.policy.timezone;
    let next_charge = format!("next charge ({tz})");
    let mut t = table(&[
        "id",
        "external_id",
        "status",
        "amount",
        "goods_name",
        "schedule",
        "next cycle",
        &next_charge,
        "status_reason",
    ]);
    for r in &rows {
        t.add_row(vec![
            r.id.to_string(),
            r.external_id.clone(),
            r.status.clone(),
            r.amount.map_or_else(|| "?".to_owned(), krw),
            r.goods_name.clone(),
            schedule_label(r),
            or_dash(r.next_cycle),
            local_opt(r.next_charge_at, tz, MINUTES),
            or_dash(r.status_reason.clone()),
        ]);
    }
    align_right(&mut t, &[0, 3, 6]);
    emit(t)
}

#[derive(Serialize)]
struct Shown<'a> {
    subscription: &'a SubscriptionRow,
    charges: &'a [ChargeRow],
    events: &'a [EventRow],
    billkey_removals: &'a [RemovalRow],
}

async fn show(config_path: &Path, args: ShowArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let row = resolve(&store, &args.subscription).await?;
    let charges = store
        .recent_charges(Some(row.id), None, args.limit)
        .await
        .map_err(db)?;
    let events = store
        .recent_events(Some(row.id), args.limit)
        .await
        .map_err(db)?;
    let removal = store.removal(row.id).await.map_err(db)?;
    if args.json {
        return print_json(&Shown {
            subscription: &row,
            charges: &charges,
            events: &events,
            billkey_removals: &removal,
        });
    }
    let tz = config.policy.timezone;
    let when = |t: NaiveDateTime| local(t, tz, WITH_ZONE);
    let when_opt = |t: Option<NaiveDateTime>| t.map_or_else(|| "-".to_owned(), when);
    let text = |v: &Option<String>| or_dash(v.clone());
    let fields: Vec<(&str, String)> = vec![
        ("id", row.id.to_string()),
        ("external_id", row.external_id.clone()),
        ("status", row.status.clone()),
        ("status_reason", text(&row.status_reason)),
        ("bid", row.bid.clone()),
        (
            "amount",
            row.amount
                .map_or_else(|| "?".to_owned(), |a| format!("{} KRW", krw(a))),
        ),
        ("goods_name", row.goods_name.clone()),
        ("buyer_name", text(&row.buyer_name)),
        ("buyer_email", text(&row.buyer_email)),
        ("buyer_tel", text(&row.buyer_tel)),
        ("card_quota", row.card_quota.clone()),
        ("card_interest", row.card_interest.clone()),
        ("schedule", schedule_label(&row)),
        ("anchor_at", when_opt(row.anchor_at)),
        ("max_cycles", or_dash(row.max_cycles)),
        ("ends_at", when_opt(row.ends_at)),
        ("cancel_at_period_end", or_dash(row.cancel_at_period_end)),
        ("next_cycle", or_dash(row.next_cycle)),
        ("next_charge_at", when_opt(row.next_charge_at)),
        ("cycle_attempts", row.cycle_attempts.to_string()),
        ("cycle_declines", row.cycle_declines.to_string()),
        ("paused_since", when_opt(row.paused_since)),
        ("merchant_status", row.merchant_status.clone()),
        ("row_error", text(&row.row_error)),
        ("claimed_by", text(&row.claimed_by)),
        ("claimed_until", when_opt(row.claimed_until)),
    ];
    let mut t = table(&["column", "value"]);
    for (k, v) in fields {
        t.add_row(vec![k.to_owned(), v]);
    }
    let mut text = t.to_string();
    for r in &removal {
        text.push_str(&format!(
            "\nbillkey {} removal ({}): {}{} after {} attempt(s){}{}",
            crate::storage::bid_suffix(&r.bid),
            r.reason,
            r.state,
            r.held_by
                .map(|h| format!(", held: subscription {h} still uses it"))
                .unwrap_or_default(),
            r.attempts,
            match (&r.result_code, &r.result_msg) {
                (Some(c), Some(m)) => format!(", last answer {c} {m}"),
                (Some(c), None) => format!(", last answer {c}"),
                _ => String::new(),
            },
            match (&r.done_at, r.state.as_str()) {
                (Some(t), _) => format!(", done {}", when(*t)),
                (None, "pending") => format!(", next attempt {}", when(r.next_attempt_at)),
                _ => String::new(),
            }
        ));
    }
    if charges.is_empty() {
        text.push_str("\n\nno charges");
    } else {
        text.push_str(&format!(
            "\n\nlast {} charge(s):\n{}",
            charges.len(),
            charges_table(&charges, tz)
        ));
    }
    if events.is_empty() {
        text.push_str("\n\nno events");
    } else {
        text.push_str(&format!(
            "\n\nlast {} event(s):\n{}",
            events.len(),
            events_table(&events, tz)
        ));
    }
    emit(text)
}

// ---- subscription pause / resume / cancel ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Pause,
    Resume,
    Cancel,
}

impl Change {
    fn status(self) -> &'static str {
        match self {
            Change::Pause => "paused",
            Change::Resume => "active",
            Change::Cancel => "cancelled",
        }
    }

    /// Why this change makes no sense from `status`, or `None` when it does.
    fn refusal(self, status: &str) -> Option<String> {
        let why = match (self, status) {
            (Change::Pause, "active") => return None,
            (Change::Pause, "paused") => "is already paused".to_owned(),
            (Change::Pause, "cancelled") => "is cancelled; there is nothing to pause".to_owned(),
            (Change::Pause, "ended") => {
                "has ended (no cycle left); there is nothing to pause".to_owned()
            }
            (Change::Pause, s @ ("past_due" | "card_invalid" | "invalid")) => format!(
                "is {s} and not being charged; there is nothing to pause (resume or cancel it instead)"
            ),
            (Change::Pause, s) => format!("has status {s:?}; only an active subscription can be paused"),
            (Change::Resume, "active") => "is already active".to_owned(),
            (Change::Resume, "cancelled") => "is cancelled and its billkey is removed (or being removed) at NICEPAY; it cannot be resumed: add a new subscription with a new billkey".to_owned(),
            (Change::Resume, _) => return None,
            (Change::Cancel, "cancelled") => "is already cancelled".to_owned(),
            (Change::Cancel, _) => return None,
        };
        Some(why)
    }
}

#[derive(Serialize)]
struct Changed<'a> {
    id: i64,
    external_id: &'a str,
    previous_status: &'a str,
    status: &'a str,
}

async fn change(config_path: &Path, change: Change, args: ChangeArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let row = resolve(&store, &args.subscription).await?;
    let name = format!("subscription {} ({:?})", row.id, row.external_id);
    if let Some(why) = change.refusal(&row.status) {
        return Err(CliError::Usage(format!(
            "{name} {why}; nothing was changed"
        )));
    }
    if change == Change::Resume {
        let now = SystemClock.now();
        let claimed = store
            .claimed_rows(&[SubscriptionId(row.id)])
            .await
            .map_err(db)?
            .pop();
        if let Some(claimed) = claimed {
            check_resumable(&claimed, now, &config.policy)
                .map_err(|why| CliError::Usage(format!("{name} {why}; nothing was changed")))?;
        }
    }
    let to = change.status();
    // The merchant's column carries the request; a subscription nicebill stopped while the
    // merchant's status stayed active (past_due, card_invalid, invalid, ended) is resumed in
    // nicebill's own state, as the daemon does when it notices a new card.
    let applied = if change == Change::Resume && row.merchant_status == "active" {
        store
            .reactivate(
                SubscriptionId(row.id),
                &row.status,
                "by `nicebill subscription resume`",
                SystemClock.now(),
            )
            .await
            .map_err(db)?
    } else {
        store
            .change_status(row.id, &row.merchant_status, to)
            .await
            .map_err(db)?
    };
    if !applied {
        let now_status = store
            .subscription(row.id)
            .await
            .map_err(db)?
            .map_or_else(|| "deleted".to_owned(), |r| r.status);
        return Err(CliError::Failed(format!(
            "{name} changed meanwhile (from {} to {now_status}); nothing was changed: look again and retry",
            row.status
        )));
    }
    if args.json {
        print_json(&Changed {
            id: row.id,
            external_id: &row.external_id,
            previous_status: &row.status,
            status: to,
        })?;
    } else {
        emit(format!(
            "{name}: {} -> {to} (nicebill applies it on its next pass)",
            row.status
        ))?;
    }
    if change == Change::Resume && row.status == "card_invalid" {
        eprintln!(
            "nicebill: note: {name} was stopped by a permanent card failure; unless its bid now holds a new billkey, the next charge fails the same way"
        );
    }
    Ok(())
}

/// What the daemon would do with the row once set active again (the notice pass makes it due
/// at once): refuse when it would mark it invalid or ended straight away.
fn check_resumable(
    claimed: &crate::storage::Claimed,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<(), String> {
    let mut resumed = claimed.state.clone();
    resumed.status = crate::billing::model::SubscriptionStatus::Active;
    resumed.status_reason = None;
    resumed.cycle_declines = 0;
    resumed.next_charge_at = Some(now);
    let valid = claimed
        .row
        .clone()
        .and_then(|row| plan::validate(&row, policy))
        .map_err(|e| format!("cannot be charged as written ({e}); fix the row first"))?;
    match plan::decide(&valid, &resumed, now, policy) {
        Decision::Invalid { reason } => Err(format!(
            "cannot be charged as written ({reason}); fix the row first"
        )),
        Decision::Ended { .. } => {
            Err("has no cycle left (max_cycles or ends_at); there is nothing to resume".to_owned())
        }
        _ => Ok(()),
    }
}

// ---- charges / events ----

async fn subscription_filter(store: &Store, key: Option<&str>) -> Result<Option<i64>, CliError> {
    match key {
        Some(key) => Ok(Some(resolve(store, key).await?.id)),
        None => Ok(None),
    }
}

async fn list_charges(config_path: &Path, args: ChargesListArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let subscription = subscription_filter(&store, args.subscription.as_deref()).await?;
    let rows = store
        .recent_charges(subscription, args.state, args.limit)
        .await
        .map_err(db)?;
    if args.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        emit("no charges")
    } else {
        emit(charges_table(&rows, config.policy.timezone))
    }
}

fn charges_table(rows: &[ChargeRow], tz: Tz) -> Table {
    let created = format!("created ({tz})");
    let mut t = table(&[
        "id",
        "subscription",
        "cycle",
        "attempt",
        "moid",
        "tid",
        "amount",
        "state",
        "result",
        "auth code",
        &created,
    ]);
    for r in rows {
        let result = match (&r.result_code, &r.result_msg, &r.error) {
            (Some(code), Some(msg), _) => format!("{code} {msg}"),
            (Some(code), None, _) => code.clone(),
            (None, _, Some(error)) => error.clone(),
            (None, _, None) => "-".to_owned(),
        };
        t.add_row(vec![
            r.id.to_string(),
            r.subscription_id.to_string(),
            r.cycle.to_string(),
            r.attempt.to_string(),
            r.moid.clone(),
            r.tid.clone().unwrap_or_else(|| "-".into()),
            krw(r.amount),
            r.state.clone(),
            result,
            or_dash(r.auth_code.clone()),
            local(r.created_at, tz, SECONDS),
        ]);
    }
    align_right(&mut t, &[0, 1, 2, 3, 6]);
    t
}

/// One double charge: the attempt a late lookup found approved, and the cycle's approval.
#[derive(Debug, Serialize)]
struct DoubleCharge {
    subscription_id: i64,
    external_id: Option<String>,
    cycle: i32,
    amount: i64,
    /// The attempt found approved late (state `double`).
    charge_id: i64,
    tid: Option<String>,
    moid: String,
    /// The cycle's recorded approval.
    approved_charge_id: Option<i64>,
    approved_tid: Option<String>,
    approved_moid: Option<String>,
    /// When the late lookup found it.
    found_at: Option<NaiveDateTime>,
}

async fn list_doubles(config_path: &Path, args: DoublesArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let mut doubles = Vec::new();
    for d in store.doubles().await.map_err(db)? {
        let approved = store
            .charges(Some(d.subscription_id))
            .await
            .map_err(db)?
            .into_iter()
            .find(|c| c.cycle == d.cycle && c.state == "approved" && c.id != d.id);
        let external_id = store
            .subscription(d.subscription_id)
            .await
            .map_err(db)?
            .map(|s| s.external_id);
        doubles.push(DoubleCharge {
            subscription_id: d.subscription_id,
            external_id,
            cycle: d.cycle,
            amount: d.amount,
            charge_id: d.id,
            tid: d.tid,
            moid: d.moid,
            approved_charge_id: approved.as_ref().map(|a| a.id),
            approved_tid: approved.as_ref().and_then(|a| a.tid.clone()),
            approved_moid: approved.map(|a| a.moid),
            found_at: d.resolved_at.or(d.last_lookup_at),
        });
    }
    if args.json {
        return print_json(&doubles);
    }
    if doubles.is_empty() {
        return emit("no double charges");
    }
    let tz = config.policy.timezone;
    let found = format!("found ({tz})");
    let mut t = table(&[
        "subscription",
        "external id",
        "cycle",
        "TID (found late)",
        "TID (approved)",
        "amount",
        &found,
    ]);
    for d in &doubles {
        t.add_row(vec![
            d.subscription_id.to_string(),
            or_dash(d.external_id.clone()),
            d.cycle.to_string(),
            d.tid.clone().unwrap_or_else(|| "-".into()),
            or_dash(d.approved_tid.clone()),
            krw(d.amount),
            local_opt(d.found_at, tz, SECONDS),
        ]);
    }
    align_right(&mut t, &[0, 2, 5]);
    emit(format!(
        "{t}\n{} cycle(s) charged twice. Nothing was refunded: refund one TID of each with \
         `nicebill refund TID --amount KRW --reason TEXT`.",
        doubles.len()
    ))
}

async fn list_events(config_path: &Path, args: EventsListArgs) -> Result<(), CliError> {
    let config = load(config_path)?;
    let store = open(&config).await?;
    let subscription = subscription_filter(&store, args.subscription.as_deref()).await?;
    let rows = store
        .recent_events(subscription, args.limit)
        .await
        .map_err(db)?;
    if args.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        emit("no events")
    } else {
        emit(events_table(&rows, config.policy.timezone))
    }
}

fn events_table(rows: &[EventRow], tz: Tz) -> Table {
    let at = format!("at ({tz})");
    let mut t = table(&["id", &at, "subscription", "kind", "detail"]);
    for r in rows {
        t.add_row(vec![
            r.id.to_string(),
            local(r.at, tz, SECONDS),
            or_dash(r.subscription_id),
            r.kind.clone(),
            r.detail.clone(),
        ]);
    }
    align_right(&mut t, &[0, 2]);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_get_thousands_separators() {
        assert_eq!(krw(0), "0");
        assert_eq!(krw(999), "999");
        assert_eq!(krw(9900), "9,900");
        assert_eq!(krw(1_234_567), "1,234,567");
        assert_eq!(krw(-1000), "-1,000");
    }

    #[test]
    fn transitions() {
        for s in STATUSES {
            assert_eq!(
                Change::Pause.refusal(s).is_none(),
                s == "active",
                "pause {s}"
            );
            assert_eq!(
                Change::Resume.refusal(s).is_none(),
                !matches!(s, "active" | "cancelled"),
                "resume {s}"
            );
            assert_eq!(
                Change::Cancel.refusal(s).is_none(),
                s != "cancelled",
                "cancel {s}"
            );
        }
    }
}
