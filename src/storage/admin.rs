//! Queries behind the operator commands (`nicebill subscription|charges|events`) and the
//! tests: merchant-side writes (a new row, a status change), the read model of a subscription
//! (its merchant columns as they read, and nicebill's state), and newest-first listings.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};

use super::merchant::{self, RawRow};
use super::models::{
    BillingStateRow, ChargeRow, EventRow, NewSubscription, RemovalRow, SubscriptionRow,
};
use super::schema::{billing_state, billkey_removals, charges, events, subscriptions};
use super::{AnyConnection, Store, StoreError};
use crate::billing::model::SubscriptionId;

/// The read model of one subscription from its raw row and nicebill's state.
fn view(raw: &RawRow, state: Option<&BillingStateRow>) -> SubscriptionRow {
    let parsed = merchant::parse(raw);
    let row_error = parsed.as_ref().err().map(|e| e.to_string());
    let lossy = |col: &str| raw.lossy(col);
    let text = |col: &str| lossy(col).unwrap_or_default();
    let int = |col: &str| lossy(col).and_then(|v| v.parse::<i64>().ok());
    let ts = |col: &str| {
        lossy(col)
            .and_then(|v| merchant::parse_timestamp(&v).ok())
            .map(|t| t.naive_utc())
    };
    let merchant_status = text("status");
    SubscriptionRow {
        id: raw.id,
        external_id: text("external_id"),
        bid: text("bid"),
        amount: int("amount"),
        goods_name: text("goods_name"),
        buyer_name: lossy("buyer_name"),
        buyer_email: lossy("buyer_email"),
        buyer_tel: lossy("buyer_tel"),
        card_quota: text("card_quota"),
        card_interest: text("card_interest"),
        interval_unit: text("interval_unit"),
        interval_count: int("interval_count"),
        cron: lossy("cron"),
        timezone: lossy("timezone"),
        anchor_at: ts("anchor_at"),
        max_cycles: int("max_cycles"),
        ends_at: ts("ends_at"),
        cancel_at_period_end: match lossy("cancel_at_period_end").as_deref() {
            Some("1") | Some("true") => Some(true),
            Some("0") | Some("false") => Some(false),
            _ => None,
        },
        row_error,
        status: effective_status(&merchant_status, state.map(|s| s.status.as_str())),
        merchant_status,
        status_reason: state.and_then(|s| s.status_reason.clone()),
        next_cycle: state.and_then(|s| s.next_cycle),
        next_charge_at: state.and_then(|s| s.next_charge_at),
        cycle_attempts: state.map_or(0, |s| s.cycle_attempts),
        cycle_declines: state.map_or(0, |s| s.cycle_declines),
        paused_since: state.and_then(|s| s.paused_since),
        claimed_by: state.and_then(|s| s.claimed_by.clone()),
        claimed_until: state.and_then(|s| s.claimed_until),
    }
}

/// The status an operator should see: a pause or cancellation the merchant wrote wins at
/// once (nicebill applies it on its next pass); otherwise nicebill's verdict, or, for a row
/// nicebill has not looked at yet, the merchant's own.
fn effective_status(merchant: &str, nicebill: Option<&str>) -> String {
    match (merchant, nicebill) {
        ("paused" | "cancelled", _) | (_, None) => merchant.to_owned(),
        (_, Some(s)) => s.to_owned(),
    }
}

/// The read model of the given subscriptions, in the order of `ids`.
fn views(c: &mut AnyConnection, ids: &[i64]) -> Result<Vec<SubscriptionRow>, StoreError> {
    let raws: HashMap<i64, RawRow> = merchant::load_raw(c, ids)?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut states: HashMap<i64, BillingStateRow> = HashMap::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
        let rows: Vec<BillingStateRow> = billing_state::table
            .filter(billing_state::subscription_id.eq_any(chunk))
            .select(BillingStateRow::as_select())
            .load(c)?;
        states.extend(rows.into_iter().map(|r| (r.subscription_id, r)));
    }
    Ok(ids
        .iter()
        .filter_map(|id| raws.get(id).map(|raw| view(raw, states.get(id))))
        .collect())
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl Store {
    /// Inserts a merchant row as a merchant application would; returns its id.
    pub async fn insert_subscription(&self, new: NewSubscription) -> Result<i64, StoreError> {
        self.write(move |c| {
            Ok(diesel::insert_into(subscriptions::table)
                .values(&new)
                .returning(subscriptions::id)
                .get_result(c)?)
        })
        .await
    }

    /// One subscription as operators see it.
    pub async fn subscription(&self, id: i64) -> Result<Option<SubscriptionRow>, StoreError> {
        self.run(move |c| Ok(views(c, &[id])?.pop())).await
    }

    /// Every subscription, in id order.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        self.run(|c| {
            let ids: Vec<i64> = subscriptions::table
                .order(subscriptions::id)
                .select(subscriptions::id)
                .load(c)?;
            views(c, &ids)
        })
        .await
    }

    /// nicebill's state of one subscription, typed.
    pub async fn billing_state(
        &self,
        id: SubscriptionId,
    ) -> Result<Option<crate::billing::model::BillingState>, StoreError> {
        self.run(move |c| {
            let row: Option<BillingStateRow> = billing_state::table
                .find(id.0)
                .select(BillingStateRow::as_select())
                .first(c)
                .optional()?;
            Ok(row.as_ref().map(super::claims::state_of))
        })
        .await
    }

    /// Sets a subscription's status as a merchant application would (that column only).
    pub async fn set_status(&self, id: i64, status: &str) -> Result<usize, StoreError> {
        let status = status.to_owned();
        self.write(move |c| {
            Ok(diesel::update(subscriptions::table.find(id))
                .set(subscriptions::status.eq(&status))
                .execute(c)?)
        })
        .await
    }

    pub async fn charges(&self, subscription: Option<i64>) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(move |c| {
            let mut q = charges::table
                .order(charges::id)
                .select(ChargeRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(charges::subscription_id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    pub async fn events(&self, subscription: Option<i64>) -> Result<Vec<EventRow>, StoreError> {
        self.run(move |c| {
            let mut q = events::table
                .order(events::id)
                .select(EventRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(events::subscription_id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    pub async fn removals(&self) -> Result<Vec<RemovalRow>, StoreError> {
        self.run(|c| {
            Ok(billkey_removals::table
                .order(billkey_removals::id)
                .select(RemovalRow::as_select())
                .load(c)?)
        })
        .await
    }

    /// Inserts a merchant row and reads it back. `Ok(Err(id))` when `external_id` is already
    /// taken, by subscription `id`; nothing is inserted then.
    pub async fn add_subscription(
        &self,
        new: NewSubscription,
    ) -> Result<Result<SubscriptionRow, i64>, StoreError> {
        let external_id = new.external_id.clone();
        let inserted = self
            .write(move |c| {
                let id: i64 = diesel::insert_into(subscriptions::table)
                    .values(&new)
                    .returning(subscriptions::id)
                    .get_result(c)?;
                views(c, &[id])?
                    .pop()
                    .ok_or(StoreError::Query(DieselError::NotFound))
            })
            .await;
        match inserted {
            Ok(row) => Ok(Ok(row)),
            Err(StoreError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                info,
            ))) if info.message().contains("external_id")
                || info
                    .constraint_name()
                    .is_some_and(|n| n.contains("external_id")) =>
            {
                let existing = self.subscription_by_external_id(&external_id).await?;
                match existing {
                    Some(row) => Ok(Err(row.id)),
                    // Taken a moment ago and gone again: report the conflict as it was.
                    None => Err(StoreError::Query(DieselError::DatabaseError(
                        DatabaseErrorKind::UniqueViolation,
                        info,
                    ))),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn subscription_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let external_id = external_id.to_owned();
        self.run(move |c| {
            let ids: Vec<i64> = subscriptions::table
                .filter(subscriptions::external_id.eq(&external_id))
                .select(subscriptions::id)
                .load(c)?;
            Ok(views(c, &ids)?.pop())
        })
        .await
    }

    /// Rows that `key` names: the one whose `external_id` is `key`, and, when `key` is a
    /// number, the one with that id. In id order; two rows when the key is ambiguous.
    pub async fn subscriptions_named(&self, key: &str) -> Result<Vec<SubscriptionRow>, StoreError> {
        let key = key.trim().to_owned();
        let id = key.parse::<i64>().ok();
        self.run(move |c| {
            let mut q = subscriptions::table
                .filter(subscriptions::external_id.eq(key.clone()))
                .select(subscriptions::id)
                .order(subscriptions::id)
                .into_boxed();
            if let Some(id) = id {
                q = q.or_filter(subscriptions::id.eq(id));
            }
            let ids: Vec<i64> = q.load(c)?;
            views(c, &ids)
        })
        .await
    }

    /// Up to `limit` subscriptions, newest first, optionally only those in `status`
    /// (nicebill's status; the merchant's for rows nicebill has not looked at yet).
    pub async fn list_subscriptions(
        &self,
        status: Option<String>,
        limit: i64,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        self.run(move |c| {
            let pg = matches!(c, AnyConnection::Postgres(_));
            let status_of = if pg {
                "COALESCE(b.status, s.status)"
            } else {
                "COALESCE(b.status, CAST(s.status AS TEXT))"
            };
            let (filter, limit_p) = match (&status, pg) {
                (Some(_), true) => (format!("WHERE {status_of} = $1"), "$2"),
                (Some(_), false) => (format!("WHERE {status_of} = ?"), "?"),
                (None, true) => (String::new(), "$1"),
                (None, false) => (String::new(), "?"),
            };
            let sql = format!(
                "SELECT s.id AS id FROM subscriptions s \
                 LEFT JOIN billing_state b ON b.subscription_id = s.id \
                 {filter} ORDER BY s.id DESC LIMIT {limit_p}"
            );
            let ids: Vec<Id> = match (&mut *c, status) {
                (AnyConnection::Sqlite(c), Some(st)) => diesel::sql_query(sql)
                    .bind::<Text, _>(st)
                    .bind::<BigInt, _>(limit)
                    .load(c)?,
                (AnyConnection::Postgres(c), Some(st)) => diesel::sql_query(sql)
                    .bind::<Text, _>(st)
                    .bind::<BigInt, _>(limit)
                    .load(c)?,
                (AnyConnection::Sqlite(c), None) => {
                    diesel::sql_query(sql).bind::<BigInt, _>(limit).load(c)?
                }
                (AnyConnection::Postgres(c), None) => {
                    diesel::sql_query(sql).bind::<BigInt, _>(limit).load(c)?
                }
            };
            let ids: Vec<i64> = ids.into_iter().map(|r| r.id).collect();
            views(c, &ids)
        })
        .await
    }

    /// Sets `status` as a merchant application would (that column only), but only while it is
    /// still `from`: an operator's decision made on what they saw never overwrites a change
    /// made meanwhile. Returns whether the row was updated.
    pub async fn change_status(&self, id: i64, from: &str, to: &str) -> Result<bool, StoreError> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.write(move |c| {
            let n = diesel::update(subscriptions::table.find(id))
                .filter(subscriptions::status.eq(&from))
                .set(subscriptions::status.eq(&to))
                .execute(c)?;
            Ok(n == 1)
        })
        .await
    }

    /// nicebill's own resumption of a subscription it stopped (past_due, card_invalid,
    /// invalid, ended) while the merchant's status stayed active: due now, a fresh start for
    /// dunning. Only while nicebill's status is still `from`. Returns whether it was applied.
    pub async fn reactivate(
        &self,
        id: SubscriptionId,
        from: &str,
        why: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let (from, why) = (from.to_owned(), why.to_owned());
        let now = now.naive_utc();
        self.write(move |c| {
            let n = diesel::update(billing_state::table.find(id.0))
                .filter(billing_state::status.eq(&from))
                .set((
                    billing_state::status.eq("active"),
                    billing_state::status_reason.eq(None::<String>),
                    billing_state::next_charge_at.eq(Some(now)),
                    billing_state::cycle_declines.eq(0),
                    billing_state::updated_at.eq(now),
                ))
                .execute(c)?;
            if n == 1 {
                super::insert_events(
                    c,
                    now,
                    &[super::Event::sub(
                        id,
                        crate::billing::model::EventKind::Reactivated,
                        format!("{why} (nicebill had {from})"),
                    )],
                )?;
            }
            Ok(n == 1)
        })
        .await
    }

    /// Up to `limit` charge attempts, newest first, optionally of one subscription and in one
    /// state.
    pub async fn recent_charges(
        &self,
        subscription: Option<i64>,
        state: Option<String>,
        limit: i64,
    ) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(move |c| {
            let mut q = charges::table
                .order(charges::id.desc())
                .limit(limit)
                .select(ChargeRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(charges::subscription_id.eq(id));
            }
            if let Some(state) = state {
                q = q.filter(charges::state.eq(state));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    /// Up to `limit` events, newest first, optionally of one subscription.
    pub async fn recent_events(
        &self,
        subscription: Option<i64>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.run(move |c| {
            let mut q = events::table
                .order(events::id.desc())
                .limit(limit)
                .select(EventRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(events::subscription_id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    /// The billkey removals queued for a subscription (a cancellation, a change of card).
    pub async fn removal(&self, subscription: i64) -> Result<Vec<RemovalRow>, StoreError> {
        self.run(move |c| {
            Ok(billkey_removals::table
                .filter(billkey_removals::subscription_id.eq(subscription))
                .order(billkey_removals::id)
                .select(RemovalRow::as_select())
                .load(c)?)
        })
        .await
    }
}
