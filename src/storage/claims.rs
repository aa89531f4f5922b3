//! Taking work: claiming due subscriptions, unresolved attempts, late checks and billkey
//! removals. Every claim is a compare-and-set
//! with a lease (and `FOR UPDATE SKIP LOCKED` on PostgreSQL), so that two instances never hold
//! the same work; every time in a lease comes from the engine's clock, which in service is the
//! database's.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};

use super::merchant::{self, RawRow};
use super::models::{BillingStateRow, ChargeRow, RemovalRow};
use super::schema::{billing_state, billkey_removals, charges};
use super::{AnyConnection, Event, Store, StoreError, bid_suffix, insert_events, later, naive};
use crate::billing::model::{
    BillingState, ChargeState, EventKind, MerchantRow, SubscriptionId, SubscriptionStatus,
};
use crate::domain::FieldError;
use crate::schedule::Cycle;

/// A claimed subscription: the merchant's row as it parsed, and nicebill's state.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: SubscriptionId,
    /// The row, or why it cannot be read (the column named).
    pub row: Result<MerchantRow, FieldError>,
    /// The billkey column as text, whatever else is wrong with the row.
    pub bid_text: Option<String>,
    pub state: BillingState,
}

/// The typed state of a stored `billing_state` row. Values nicebill wrote itself; the
/// database's checks keep them in range.
pub(super) fn state_of(row: &BillingStateRow) -> BillingState {
    BillingState {
        status: row.status.parse().unwrap_or(SubscriptionStatus::Invalid),
        status_reason: row.status_reason.clone(),
        next_cycle: row.next_cycle.and_then(Cycle::from_column),
        next_charge_at: row.next_charge_at.map(|t| t.and_utc()),
        cycle_attempts: u32::try_from(row.cycle_attempts).unwrap_or(0),
        cycle_declines: u32::try_from(row.cycle_declines).unwrap_or(0),
        paused_since: row.paused_since.map(|t| t.and_utc()),
    }
}

/// Loads what the planner needs for the given subscriptions.
pub(super) fn load_claimed(c: &mut AnyConnection, ids: &[i64]) -> Result<Vec<Claimed>, StoreError> {
    let raw: HashMap<i64, RawRow> = merchant::load_raw(c, ids)?
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
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (Some(raw), Some(state)) = (raw.get(id), states.get(id)) else {
            continue;
        };
        out.push(Claimed {
            id: SubscriptionId(*id),
            row: merchant::parse(raw),
            bid_text: raw.lossy("bid"),
            state: state_of(state),
        });
    }
    Ok(out)
}

impl Store {
    /// Claims up to `limit` subscriptions that are active (by the merchant and by nicebill),
    /// due (or not yet scheduled) and have no unresolved attempt, for `lease`.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(later(now, lease));
        let limit = limit.clamp(1, super::MAX_IDS_PER_STATEMENT as i64);
        self.write(move |c| {
            #[derive(QueryableByName)]
            struct Id {
                #[diesel(sql_type = BigInt)]
                subscription_id: i64,
            }
            let mut claimed: Vec<i64> = Vec::new();
            for due_clause in ["b.next_charge_at IS NULL", "b.next_charge_at <= {now}"] {
                let remaining = limit - claimed.len() as i64;
                if remaining <= 0 {
                    break;
                }
                let pick = "FROM billing_state b JOIN subscriptions s ON s.id = b.subscription_id \
                            WHERE b.status = 'active' AND {merchant_active} AND {due} \
                            AND (b.claimed_until IS NULL OR b.claimed_until < {now}) \
                            AND NOT EXISTS (SELECT 1 FROM charges ch \
                              WHERE ch.subscription_id = b.subscription_id \
                              AND ch.state IN ('pending', 'unknown')) \
                            ORDER BY b.next_charge_at, b.subscription_id";
                let rows: Vec<Id> = match c {
                    AnyConnection::Postgres(c) => {
                        let sql = format!(
                            "UPDATE billing_state SET claimed_by = $1, claimed_until = $2 \
                             WHERE subscription_id = ANY(ARRAY(SELECT b.subscription_id {} \
                               LIMIT $4 FOR UPDATE OF b SKIP LOCKED)) \
                             RETURNING subscription_id",
                            pick.replace("{due}", &due_clause.replace("{now}", "$3"))
                                .replace("{now}", "$3")
                                .replace("{merchant_active}", "s.status = 'active'")
                        );
                        diesel::sql_query(sql)
                            .bind::<Text, _>(&owner)
                            .bind::<Timestamp, _>(until)
                            .bind::<Timestamp, _>(now_n)
                            .bind::<BigInt, _>(remaining)
                            .load(c)?
                    }
                    AnyConnection::Sqlite(c) => {
                        // SQLite runs one writer at a time, so the sub-select and the update
                        // are one atomic compare-and-set. Numbered parameters: `now` repeats.
                        let sql = format!(
                            "UPDATE billing_state SET claimed_by = ?1, claimed_until = ?2 \
                             WHERE subscription_id IN (SELECT b.subscription_id {} LIMIT ?4) \
                             RETURNING subscription_id",
                            pick.replace("{due}", &due_clause.replace("{now}", "?3"))
                                .replace("{now}", "?3")
                                // The merchant's status as the text its bytes spell, as
                                // `notice` reads it: a BLOB 'active' (a driver binding bytes)
                                // is 'active' there, and must not be left unclaimed here.
                                .replace("{merchant_active}", "CAST(s.status AS TEXT) = 'active'")
                        );
                        diesel::sql_query(sql)
                            .bind::<Text, _>(&owner)
                            .bind::<Timestamp, _>(until)
                            .bind::<Timestamp, _>(now_n)
                            .bind::<BigInt, _>(remaining)
                            .load(c)?
                    }
                };
                claimed.extend(rows.into_iter().map(|r| r.subscription_id));
            }
            claimed.sort_unstable();
            load_claimed(c, &claimed)
        })
        .await
    }

    /// Claims one subscription for `owner` if it is active, unclaimed (or its claim expired) and
    /// has no unresolved attempt.
    pub async fn claim_one(
        &self,
        id: SubscriptionId,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(later(now, lease));
        self.write(move |c| {
            let n = diesel::update(billing_state::table.find(id.0))
                .filter(billing_state::status.eq(SubscriptionStatus::Active.as_str()))
                .filter(
                    billing_state::claimed_until
                        .is_null()
                        .or(billing_state::claimed_until.lt(now_n)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(id.0))
                        .filter(charges::state.eq_any(ChargeState::UNRESOLVED)),
                )))
                .set((
                    billing_state::claimed_by.eq(Some(&owner)),
                    billing_state::claimed_until.eq(Some(until)),
                ))
                .execute(c)?;
            if n == 0 {
                return Ok(None);
            }
            Ok(load_claimed(c, &[id.0])?.pop())
        })
        .await
    }

    /// Unresolved attempts with an id above `after_id` whose lookup is due by `horizon`, in id
    /// order, each leased to the caller by moving its `check_after` to `now + lease` (so two
    /// instances do not look up the same one).
    pub async fn claim_unresolved(
        &self,
        after_id: i64,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ChargeRow>, StoreError> {
        let horizon = naive(horizon);
        let until = naive(later(now, lease));
        self.write(move |c| {
            let due: Vec<ChargeRow> = charges::table
                .filter(charges::state.eq_any(ChargeState::UNRESOLVED))
                .filter(charges::check_after.le(horizon))
                .filter(charges::id.gt(after_id))
                .order(charges::id)
                .limit(limit)
                .select(ChargeRow::as_select())
                .load(c)?;
            let mut mine = Vec::with_capacity(due.len());
            for row in due {
                let n = diesel::update(charges::table.find(row.id))
                    .filter(charges::check_after.eq(row.check_after))
                    .filter(charges::state.eq(&row.state))
                    .set(charges::check_after.eq(Some(until)))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            Ok(mine)
        })
        .await
    }

    /// Attempts concluded `not_charged` on "not found" whose late check is due, each leased
    /// to the caller by moving its `late_check_at` to `now + lease`.
    pub async fn claim_late_checks(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ChargeRow>, StoreError> {
        let now_n = naive(now);
        let until = naive(later(now, lease));
        self.write(move |c| {
            let due: Vec<ChargeRow> = charges::table
                .filter(charges::late_check_at.le(now_n))
                .order(charges::late_check_at)
                .limit(limit)
                .select(ChargeRow::as_select())
                .load(c)?;
            let mut mine = Vec::with_capacity(due.len());
            for row in due {
                let n = diesel::update(charges::table.find(row.id))
                    .filter(charges::late_check_at.eq(row.late_check_at))
                    .set(charges::late_check_at.eq(Some(until)))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            Ok(mine)
        })
        .await
    }

    /// Claims billkey removals that are due, whose billkey no unresolved attempt uses. A
    /// removal whose billkey another subscription that may still be charged uses is held
    /// (recorded once, looked at again after `hold`) and not returned.
    pub async fn claim_removals(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        hold: Duration,
        limit: i64,
    ) -> Result<Vec<RemovalRow>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(later(now, lease));
        let recheck = naive(later(now, hold));
        self.write(move |c| {
            let due: Vec<RemovalRow> = billkey_removals::table
                .filter(billkey_removals::state.eq("pending"))
                .filter(billkey_removals::next_attempt_at.le(now_n))
                .filter(
                    billkey_removals::claimed_until
                        .is_null()
                        .or(billkey_removals::claimed_until.lt(now_n)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::bid.eq(billkey_removals::bid.nullable()))
                        .filter(charges::state.eq_any(ChargeState::UNRESOLVED)),
                )))
                .order(billkey_removals::next_attempt_at)
                .limit(limit)
                .select(RemovalRow::as_select())
                .load(c)?;
            let mut mine = Vec::with_capacity(due.len());
            let mut evs = Vec::new();
            for row in due {
                if let Some(user) = billkey_user(c, &row.bid)? {
                    diesel::update(billkey_removals::table.find(row.id))
                        .set((
                            billkey_removals::held_by.eq(Some(user)),
                            billkey_removals::next_attempt_at.eq(recheck),
                        ))
                        .execute(c)?;
                    if row.held_by != Some(user) {
                        evs.push(Event::sub(
                            SubscriptionId(row.subscription_id),
                            EventKind::BillkeyRemovalHeld,
                            format!(
                                "billkey {} is kept: subscription {user} may still be charged with it",
                                bid_suffix(&row.bid)
                            ),
                        ));
                    }
                    continue;
                }
                let mut q = diesel::update(billkey_removals::table.find(row.id))
                    .filter(billkey_removals::state.eq("pending"))
                    .into_boxed();
                q = match row.claimed_until {
                    Some(t) => q.filter(billkey_removals::claimed_until.eq(t)),
                    None => q.filter(billkey_removals::claimed_until.is_null()),
                };
                let n = q
                    .set((
                        billkey_removals::claimed_by.eq(Some(&owner)),
                        billkey_removals::claimed_until.eq(Some(until)),
                        billkey_removals::held_by.eq(None::<i64>),
                    ))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            insert_events(c, now_n, &evs)?;
            Ok(mine)
        })
        .await
    }
}

/// A subscription that may still be charged with `bid` (any but those cancelled or ended,
/// by the merchant or by nicebill; rows not yet noticed count), if there is one.
fn billkey_user(c: &mut AnyConnection, bid: &str) -> Result<Option<i64>, StoreError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    // The merchant's column is compared as text whatever it holds; white space around a
    // billkey does not make it another card.
    let bid_text = match c {
        AnyConnection::Sqlite(_) => "TRIM(CAST(s.bid AS TEXT))",
        AnyConnection::Postgres(_) => "TRIM(s.bid)",
    };
    let sql = format!(
        "SELECT s.id AS id FROM subscriptions s \
         LEFT JOIN billing_state b ON b.subscription_id = s.id \
         WHERE {bid_text} = {p} \
         AND COALESCE(b.status, 'active') NOT IN ('cancelled', 'ended') \
         AND NOT (s.status = 'cancelled') \
         ORDER BY s.id LIMIT 1",
        p = if matches!(c, AnyConnection::Postgres(_)) {
            "$1"
        } else {
            "?"
        }
    );
    let rows: Vec<Id> = match c {
        AnyConnection::Sqlite(c) => diesel::sql_query(sql).bind::<Text, _>(bid).load(c)?,
        AnyConnection::Postgres(c) => diesel::sql_query(sql).bind::<Text, _>(bid).load(c)?,
    };
    Ok(rows.first().map(|r| r.id))
}

impl Store {
    /// What the planner needs for the given subscriptions, without claiming them (resolving
    /// an attempt of a subscription that may be claimed by then).
    pub async fn claimed_rows(&self, ids: &[SubscriptionId]) -> Result<Vec<Claimed>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.run(move |c| load_claimed(c, &ids)).await
    }
}
