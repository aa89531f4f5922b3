//! Noticing the merchant's writes. Every write to `subscriptions` is queued by trigger in
//! `subscription_changes`; a pass takes the queue in batches (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, so instances share it) and works out what each write means: a new row, a pause,
//! a resumption, a cancellation, a new billkey, an unknown status, or an invalid row written
//! again. Nothing here charges.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::merchant::{self, RawRow};
use super::models::BillingStateRow;
use super::schema::{billing_state, subscription_changes};
use super::{
    AnyConnection, Event, Noticed, Store, StoreError, bid_suffix, insert_events, naive,
    queue_removal,
};
use crate::billing::model::{EventKind, MerchantStatus, SubscriptionId, SubscriptionStatus};

impl Store {
    /// Looks at every merchant row written since nicebill last looked (queued by trigger):
    /// new rows, pauses, resumptions, cancellations, new billkeys, unknown statuses, and rows
    /// nicebill had found invalid and the merchant has since changed.
    pub async fn notice(&self, now: DateTime<Utc>) -> Result<Noticed, StoreError> {
        let mut total = Noticed::default();
        // Bounded per pass; the rest waits for the next one.
        for _ in 0..64 {
            let (noticed, more) = self.notice_batch(now).await?;
            total.new += noticed.new;
            total.paused += noticed.paused;
            total.resumed += noticed.resumed;
            total.cancelled += noticed.cancelled;
            total.billkeys_changed += noticed.billkeys_changed;
            total.invalid.extend(noticed.invalid);
            if !more {
                break;
            }
        }
        Ok(total)
    }

    async fn notice_batch(&self, now: DateTime<Utc>) -> Result<(Noticed, bool), StoreError> {
        const BATCH: i64 = 500;
        let now = naive(now);
        self.write(move |c| {
            #[derive(QueryableByName)]
            struct Change {
                #[diesel(sql_type = BigInt)]
                seq: i64,
                #[diesel(sql_type = BigInt)]
                subscription_id: i64,
            }
            let sql = match c {
                AnyConnection::Sqlite(_) => format!(
                    "SELECT seq, subscription_id FROM subscription_changes ORDER BY seq LIMIT {BATCH}"
                ),
                AnyConnection::Postgres(_) => format!(
                    "SELECT seq, subscription_id FROM subscription_changes ORDER BY seq \
                     LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
                ),
            };
            let changes: Vec<Change> = match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
            };
            let more = changes.len() as i64 == BATCH;
            let mut ids: Vec<i64> = changes.iter().map(|ch| ch.subscription_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut noticed = Noticed::default();
            let mut evs = Vec::new();
            let raws = merchant::load_raw(c, &ids)?;
            let states: HashMap<i64, BillingStateRow> = {
                let q = billing_state::table.filter(billing_state::subscription_id.eq_any(&ids));
                let rows: Vec<BillingStateRow> = match c {
                    AnyConnection::Postgres(pg) => q
                        .select(BillingStateRow::as_select())
                        .for_update()
                        .load(pg)?,
                    AnyConnection::Sqlite(lite) => {
                        q.select(BillingStateRow::as_select()).load(lite)?
                    }
                };
                rows.into_iter().map(|r| (r.subscription_id, r)).collect()
            };
            for raw in &raws {
                notice_one(c, raw, states.get(&raw.id), now, &mut noticed, &mut evs)?;
            }
            insert_events(c, now, &evs)?;
            let seqs: Vec<i64> = changes.iter().map(|ch| ch.seq).collect();
            for chunk in seqs.chunks(super::MAX_IDS_PER_STATEMENT) {
                diesel::delete(
                    subscription_changes::table.filter(subscription_changes::seq.eq_any(chunk)),
                )
                .execute(c)?;
            }
            Ok((noticed, more))
        })
        .await
    }
}

/// What one merchant write means for nicebill.
fn notice_one(
    c: &mut AnyConnection,
    raw: &RawRow,
    state: Option<&BillingStateRow>,
    now: NaiveDateTime,
    noticed: &mut Noticed,
    evs: &mut Vec<Event>,
) -> Result<(), StoreError> {
    let id = SubscriptionId(raw.id);
    let status_text = raw.lossy("status");
    let bid_text = raw.lossy("bid");
    let merchant_status: Result<MerchantStatus, String> = match &status_text {
        Some(text) => crate::billing::plan::merchant_status(text).map_err(|e| e.to_string()),
        None => Err("status: is NULL; a value is required".to_owned()),
    };
    let Some(state) = state else {
        // A new row.
        let (status, reason) = match &merchant_status {
            Ok(s) => (SubscriptionStatus::from(*s), None),
            Err(reason) => (SubscriptionStatus::Invalid, Some(reason.clone())),
        };
        diesel::insert_into(billing_state::table)
            .values((
                billing_state::subscription_id.eq(id.0),
                billing_state::status.eq(status.as_str()),
                billing_state::status_reason.eq(&reason),
                billing_state::seen_status.eq(&status_text),
                billing_state::seen_bid.eq(&bid_text),
                billing_state::paused_since
                    .eq((status == SubscriptionStatus::Paused).then_some(now)),
                billing_state::updated_at.eq(now),
            ))
            .execute(c)?;
        match status {
            SubscriptionStatus::Invalid => {
                let reason = reason.unwrap_or_default();
                evs.push(Event::sub(id, EventKind::Invalid, reason.clone()));
                noticed.invalid.push((id, reason));
            }
            SubscriptionStatus::Cancelled => {
                noticed.cancelled += 1;
                if let Some(bid) = &bid_text {
                    queue_removal(c, id, bid, "cancelled", now)?;
                }
            }
            _ => noticed.new += 1,
        }
        return Ok(());
    };
    let current: SubscriptionStatus = state.status.parse().unwrap_or(SubscriptionStatus::Invalid);
    let status_changed = state.seen_status != status_text;
    let bid_changed = state.seen_bid != bid_text;
    let update = diesel::update(billing_state::table.find(id.0));
    let reactivate = |c: &mut AnyConnection| -> Result<usize, StoreError> {
        // Due now, so the planner reschedules it at once; a fresh start for dunning.
        Ok(diesel::update(billing_state::table.find(id.0))
            .set((
                billing_state::status.eq(SubscriptionStatus::Active.as_str()),
                billing_state::status_reason.eq(None::<String>),
                billing_state::next_charge_at.eq(Some(now)),
                billing_state::cycle_declines.eq(0),
                billing_state::updated_at.eq(now),
            ))
            .execute(c)?)
    };
    if status_changed {
        match &merchant_status {
            Ok(MerchantStatus::Active) => {
                if current == SubscriptionStatus::Paused {
                    noticed.resumed += 1;
                    evs.push(Event::sub(id, EventKind::Resumed, "status set to active"));
                } else {
                    evs.push(Event::sub(
                        id,
                        EventKind::Reactivated,
                        format!("status set to active (nicebill had {current})"),
                    ));
                }
                reactivate(c)?;
            }
            Ok(MerchantStatus::Paused) => {
                noticed.paused += 1;
                evs.push(Event::sub(id, EventKind::Paused, "status set to paused"));
                // paused_since is kept from a pause already noticed: the resume skips every
                // cycle due since the first.
                diesel::update(billing_state::table.find(id.0))
                    .set((
                        billing_state::status.eq(SubscriptionStatus::Paused.as_str()),
                        billing_state::paused_since.eq(state.paused_since.or(Some(now))),
                        billing_state::updated_at.eq(now),
                    ))
                    .execute(c)?;
            }
            Ok(MerchantStatus::Cancelled) => {
                noticed.cancelled += 1;
                evs.push(Event::sub(
                    id,
                    EventKind::Cancelled,
                    "status set to cancelled",
                ));
                diesel::update(billing_state::table.find(id.0))
                    .set((
                        billing_state::status.eq(SubscriptionStatus::Cancelled.as_str()),
                        billing_state::updated_at.eq(now),
                    ))
                    .execute(c)?;
                if let Some(bid) = &bid_text {
                    queue_removal(c, id, bid, "cancelled", now)?;
                }
            }
            Err(reason) => {
                evs.push(Event::sub(id, EventKind::Invalid, reason.clone()));
                noticed.invalid.push((id, reason.clone()));
                diesel::update(billing_state::table.find(id.0))
                    .set((
                        billing_state::status.eq(SubscriptionStatus::Invalid.as_str()),
                        billing_state::status_reason.eq(Some(reason)),
                        billing_state::updated_at.eq(now),
                    ))
                    .execute(c)?;
            }
        }
    }
    if bid_changed {
        noticed.billkeys_changed += 1;
        let old = state.seen_bid.clone().unwrap_or_default();
        evs.push(Event::sub(
            id,
            EventKind::BillkeyChanged,
            format!(
                "billkey {} -> {}",
                bid_suffix(&old),
                bid_suffix(bid_text.as_deref().unwrap_or(""))
            ),
        ));
        // The old card's billkey goes, once nothing that may still be charged uses it.
        queue_removal(c, id, &old, "billkey_changed", now)?;
        // A new card is the merchant's answer to a card nicebill could not charge.
        if !status_changed
            && matches!(merchant_status, Ok(MerchantStatus::Active))
            && matches!(
                current,
                SubscriptionStatus::CardInvalid | SubscriptionStatus::PastDue
            )
        {
            evs.push(Event::sub(
                id,
                EventKind::Reactivated,
                format!("new billkey (nicebill had {current})"),
            ));
            reactivate(c)?;
        }
    }
    // An invalid row the merchant has written again is checked again at its next claim.
    if !status_changed
        && current == SubscriptionStatus::Invalid
        && matches!(merchant_status, Ok(MerchantStatus::Active))
    {
        evs.push(Event::sub(
            id,
            EventKind::Revalidated,
            "the row was written again; checked again before its next charge",
        ));
        reactivate(c)?;
    }
    update
        .set((
            billing_state::seen_status.eq(&status_text),
            billing_state::seen_bid.eq(&bid_text),
        ))
        .execute(c)?;
    Ok(())
}
