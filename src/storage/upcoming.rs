//! `charge.upcoming` notices: each cycle of each subscription is told to the merchant once per
//! `[webhook] upcoming_lead`, that long before it comes due, and never after its first attempt.
//!
//! Per subscription, `billing_state` keeps a notice plan: the cycle and due time it was made
//! for (`notice_cycle`, `notice_due`), the shortest lead already told for that cycle
//! (`notice_lead`) and when the next notice is due (`notice_at`). [`Store::tell_upcoming`]
//! makes plans again for rows whose cycle or due time moved (partial index
//! `billing_state_notice_stale`) and tells the notices that are due (`billing_state_notice_at`),
//! so that a pass reads only rows with something to do. A lead already past when the plan is
//! made (a new subscription, a schedule change) is told at once. Whatever the scan has not told
//! by the time the cycle's first attempt is committed is told in that same transaction
//! ([`tell_at_attempt`]), ahead of the attempt's own webhooks: a notice is never later than
//! its charge. Each notice carries the outbox dedupe key `upcoming:<subscription>:<cycle>:<lead>`,
//! so two instances can never tell one twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp};

use super::{AnyConnection, Store, StoreError, batch, merchant, naive, outbox};
use crate::billing::model::{MerchantRow, NoticeLeads, SubscriptionId, SubscriptionStatus};

/// What the engine would charge a merchant row (its validated amount), or why it would not.
pub type AmountOf = dyn Fn(&MerchantRow) -> Result<i64, String> + Send + Sync;

/// What one round of upcoming notices did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Told {
    /// Notice plans made (again).
    pub planned: usize,
    /// Notices written to the outbox.
    pub told: usize,
}

/// A row with a plan to make or a notice due.
#[derive(QueryableByName, Debug)]
struct Candidate {
    #[diesel(sql_type = BigInt)]
    subscription_id: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Integer>)]
    next_cycle: Option<i32>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    next_charge_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Integer)]
    cycle_attempts: i32,
    #[diesel(sql_type = Nullable<Integer>)]
    notice_cycle: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    notice_lead: Option<i64>,
}

/// Rows per round (one transaction).
const BATCH: i64 = 500;
/// Rounds per pass; the rest waits for the next pass.
const ROUNDS: usize = 64;

impl Store {
    /// Makes notice plans again where a cycle or due time moved, and tells every notice due
    /// by `now` (`charge.upcoming` into the outbox, in the transaction that moves the plan on).
    /// `amount_of` validates the merchant's row as the engine would before a charge: a row
    /// that would not be charged is not announced.
    pub async fn tell_upcoming(
        &self,
        now: DateTime<Utc>,
        leads: &NoticeLeads,
        amount_of: Arc<AmountOf>,
    ) -> Result<Told, StoreError> {
        let mut total = Told::default();
        if leads.is_empty() {
            return Ok(total);
        }
        for _ in 0..ROUNDS {
            let leads = leads.clone();
            let amount_of = Arc::clone(&amount_of);
            let (told, more) = self
                .write(move |c| upcoming_round(c, now, &leads, &*amount_of))
                .await?;
            total.planned += told.planned;
            total.told += told.told;
            if !more {
                break;
            }
        }
        Ok(total)
    }
}

fn upcoming_round(
    c: &mut AnyConnection,
    now: DateTime<Utc>,
    leads: &NoticeLeads,
    amount_of: &AmountOf,
) -> Result<(Told, bool), StoreError> {
    let cols = "subscription_id, status, next_cycle, next_charge_at, cycle_attempts, \
                notice_cycle, notice_lead";
    // The expressions repeat the partial indexes' own, and SQLite is told to use them (its
    // planner would otherwise take `billing_state_due` and read every active row).
    let (stale, from_stale, from_due, now_param, lock) = match c {
        AnyConnection::Sqlite(_) => (
            "notice_cycle IS NOT next_cycle OR notice_due IS NOT next_charge_at",
            "billing_state INDEXED BY billing_state_notice_stale",
            "billing_state INDEXED BY billing_state_notice_at",
            "?",
            "",
        ),
        AnyConnection::Postgres(_) => (
            "notice_cycle IS DISTINCT FROM next_cycle OR notice_due IS DISTINCT FROM next_charge_at",
            "billing_state",
            "billing_state",
            "$1",
            " FOR UPDATE SKIP LOCKED",
        ),
    };
    let stale_sql = format!(
        "SELECT {cols} FROM {from_stale} WHERE ({stale}) ORDER BY subscription_id \
         LIMIT {BATCH}{lock}"
    );
    let due_sql = format!(
        "SELECT {cols} FROM {from_due} \
         WHERE notice_at IS NOT NULL AND status = 'active' AND notice_at <= {now_param} \
         ORDER BY notice_at, subscription_id LIMIT {BATCH}{lock}"
    );
    let now_n = naive(now);
    let (stale_rows, due_rows): (Vec<Candidate>, Vec<Candidate>) = match c {
        AnyConnection::Sqlite(c) => (
            diesel::sql_query(&stale_sql).load(c)?,
            diesel::sql_query(&due_sql)
                .bind::<Timestamp, _>(now_n)
                .load(c)?,
        ),
        AnyConnection::Postgres(c) => (
            diesel::sql_query(&stale_sql).load(c)?,
            diesel::sql_query(&due_sql)
                .bind::<Timestamp, _>(now_n)
                .load(c)?,
        ),
    };
    let more = stale_rows.len() as i64 == BATCH || due_rows.len() as i64 == BATCH;
    let planned = stale_rows.len();
    let mut rows: Vec<Candidate> = stale_rows;
    rows.extend(due_rows);
    rows.sort_by_key(|r| r.subscription_id);
    rows.dedup_by_key(|r| r.subscription_id);

    // What each row would tell now.
    struct Plan {
        id: i64,
        cycle: Option<i32>,
        due: Option<DateTime<Utc>>,
        /// The cycle has an attempt already: nothing more is told of it.
        begun: bool,
        told: Option<i64>,
        tell: Vec<i64>,
    }
    let mut plans: Vec<Plan> = rows
        .iter()
        .map(|r| {
            let told = if r.notice_cycle == r.next_cycle {
                r.notice_lead
            } else {
                None
            };
            let due = r.next_charge_at.map(|t| t.and_utc());
            // Told only while the cycle has not begun: never after its charge.
            let open = r.status == SubscriptionStatus::Active.as_str()
                && r.cycle_attempts == 0
                && r.next_cycle.is_some();
            let tell = match due {
                Some(due) if open => leads
                    .after(told)
                    .filter(|l| due - chrono::Duration::seconds(*l) <= now)
                    .collect(),
                _ => Vec::new(),
            };
            Plan {
                id: r.subscription_id,
                cycle: r.next_cycle,
                due,
                begun: r.cycle_attempts > 0 || r.next_cycle.is_none(),
                told,
                tell,
            }
        })
        .collect();

    // The merchant's rows of those with something to tell: the amount the engine would charge.
    let telling: Vec<i64> = plans
        .iter()
        .filter(|p| !p.tell.is_empty())
        .map(|p| p.id)
        .collect();
    let amounts: HashMap<i64, Result<i64, String>> = merchant::load_raw(c, &telling)?
        .iter()
        .map(|raw| {
            let amount = merchant::parse(raw)
                .map_err(|e| e.to_string())
                .and_then(|row| amount_of(&row));
            (raw.id, amount)
        })
        .collect();
    let previous = outbox::last_approved_amounts(c, &telling)?;
    let mut items = Vec::new();
    let mut updates = Vec::with_capacity(plans.len());
    for p in &mut plans {
        let mut withdrawn = false;
        if !p.tell.is_empty() {
            match amounts.get(&p.id) {
                Some(Ok(amount)) => {
                    for lead in &p.tell {
                        items.push(outbox::upcoming_item(
                            SubscriptionId(p.id),
                            p.cycle.unwrap_or(1),
                            p.due.unwrap_or(now),
                            *amount,
                            previous.get(&p.id).copied(),
                            *lead,
                        ));
                    }
                    p.told = p.tell.iter().min().copied().or(p.told);
                }
                Some(Err(why)) => {
                    // The charge will find the row invalid (and say so); no notice for now.
                    tracing::warn!(
                        subscription = p.id,
                        reason = %why,
                        "upcoming notice not sent: the row would not be charged as it stands"
                    );
                    withdrawn = true;
                }
                None => withdrawn = true,
            }
        }
        let next_at = match (p.due, withdrawn || p.begun) {
            (Some(due), false) => leads
                .after(p.told)
                .next()
                .map(|l| naive(due - chrono::Duration::seconds(l))),
            _ => None,
        };
        updates.push((p.id, p.told, next_at));
    }
    let told = items.len();
    outbox::enqueue(c, naive(now), items)?;
    batch::set_notice_plans(c, &updates)?;
    Ok((Told { planned, told }, more))
}

/// The row of a first attempt about to be committed, for [`tell_at_attempt`].
#[derive(Clone, Debug)]
pub(super) struct AttemptNotice {
    pub id: SubscriptionId,
    pub cycle: i32,
    pub due: DateTime<Utc>,
    pub amount: i64,
    /// The row's notice plan: its cycle and the shortest lead told.
    pub notice_cycle: Option<i32>,
    pub notice_lead: Option<i64>,
}

/// Tells, in the transaction that commits first attempts, every notice of their cycles not
/// told yet (a cycle that came due sooner than its leads, or before a pass told it), and marks
/// the cycles told. Called after the attempts' bookkeeping, so the plans are made for the
/// cycle and due time now stored.
pub(super) fn tell_at_attempt(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    leads: &NoticeLeads,
    rows: &[AttemptNotice],
) -> Result<(), StoreError> {
    let Some(shortest) = leads.shortest() else {
        return Ok(());
    };
    let pending: Vec<(&AttemptNotice, Vec<i64>)> = rows
        .iter()
        .map(|r| {
            let told = if r.notice_cycle == Some(r.cycle) {
                r.notice_lead
            } else {
                None
            };
            (r, leads.after(told).collect::<Vec<_>>())
        })
        .filter(|(_, tell)| !tell.is_empty())
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = pending.iter().map(|(r, _)| r.id.0).collect();
    let previous = outbox::last_approved_amounts(c, &ids)?;
    let mut items = Vec::new();
    let mut updates = Vec::with_capacity(pending.len());
    for (r, tell) in &pending {
        for lead in tell {
            items.push(outbox::upcoming_item(
                r.id,
                r.cycle,
                r.due,
                r.amount,
                previous.get(&r.id.0).copied(),
                *lead,
            ));
        }
        updates.push((r.id.0, Some(shortest), None));
    }
    outbox::enqueue(c, now, items)?;
    batch::set_notice_plans(c, &updates)
}
