//! Recording: attempts committed before they are sent, decisions that charge nothing,
//! outcomes, late findings and billkey removals. Each is one transaction whose conditions make
//! it safe to run twice or from two instances; the ledger's rules themselves are the
//! database's (`charges_one_live_attempt_per_cycle`, `charges_one_unresolved_per_subscription`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

use super::models::{ChargeRow, NewCharge};
use super::schema::{billing_state, billkey_removals, charges};
use super::upcoming::{self, AttemptNotice};
use super::{
    AnyConnection, Bookkeeping, Event, Outcome, Reschedule, StartAttempt, Store, StoreError,
    insert_events, naive, queue_removal,
};
use super::{batch, merchant, outbox};
use crate::billing::model::{
    ChargeId, ChargeState, EventKind, NoticeLeads, SubscriptionId, SubscriptionStatus,
};
use crate::schedule::Cycle;

/// An attempt the database accepted: its index in the request, charge id and TID.
pub type Started = (usize, ChargeId, Option<String>);

/// What a late lookup of a `not_charged` attempt found.
#[derive(Clone, Debug)]
pub enum LateFinding {
    /// Still no approval: the attempt stays `not_charged` for good.
    NotFound,
    /// Approved, then cancelled: nothing to do but say so.
    Cancelled,
    /// Approved at NICEPAY after all.
    Approved {
        /// The approval's ResultCode, recorded with it.
        result_code: String,
        auth_code: Option<String>,
        auth_date: Option<String>,
        /// NICEPAY's tid (v1: the charge may not have one stored yet).
        tid: Option<String>,
    },
    /// The lookup failed, or may not conclude yet: look again at `at`.
    Again { at: DateTime<Utc>, why: String },
}

/// What recording a late approval did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LateRecorded {
    /// Nothing changed (not found, cancelled, or postponed).
    Noted,
    /// The cycle had no approval: this attempt is its approval now.
    Approved,
    /// The cycle was approved by another attempt too: a double charge.
    Double { other_tid: String },
    /// Another instance recorded it first.
    Lost,
}

/// How many TIDs an attempt is offered before it is left for the next pass.
const TID_TRIES: usize = 8;

/// Why [`Store::start_attempts`] asks for a TID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewTid {
    /// An attempt's first TID.
    First,
    /// The TID offered before was already stored (another instance minted it): a TID from
    /// elsewhere in the suffix space, not the next in sequence, which is likely taken too.
    AfterCollision,
}

impl Store {
    /// Commits attempts before they are sent, each only while this owner still holds its
    /// subscription, it is still active and the merchant's row still names the attempt's
    /// billkey (one planned before a change of card is dropped and planned again). The database refuses an attempt whose cycle is
    /// approved or has an attempt in flight, and a second unresolved attempt of one
    /// subscription; a refused attempt is never sent (its claim is released, and bookkeeping
    /// that had fallen behind an approval moves on). A TID that collides with one already
    /// stored is replaced by `new_tid(NewTid::AfterCollision)`, a few times; an attempt whose
    /// TIDs all collide is not committed, its claim is released and a warning names it.
    /// `new_tid` gives `None` where NICEPAY makes the tid (v1): such an attempt is committed
    /// with its order id alone. `api` names the API the attempts go out on.
    pub async fn start_attempts(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        attempts: Vec<StartAttempt>,
        leads: &NoticeLeads,
        api: &'static str,
        new_tid: impl Fn(NewTid) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Vec<Started>, StoreError> {
        let owner = owner.to_owned();
        let leads = leads.clone();
        let now = naive(now);
        let (started, collided) = self
            .write(move |c| {
                // Which subscriptions this owner still holds, active (and, on PostgreSQL, locked
                // until commit).
                let ids: Vec<i64> = attempts.iter().map(|a| a.subscription_id.0).collect();
                let mut held: HashSet<i64> = HashSet::new();
                // Each held row's notice plan: its cycle and the shortest lead told.
                let mut plans: HashMap<i64, (Option<i32>, Option<i64>)> = HashMap::new();
                for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
                    let q = || {
                        billing_state::table
                            .filter(billing_state::subscription_id.eq_any(chunk))
                            .filter(billing_state::claimed_by.eq(&owner))
                            .filter(billing_state::status.eq(SubscriptionStatus::Active.as_str()))
                            .select((
                                billing_state::subscription_id,
                                billing_state::notice_cycle,
                                billing_state::notice_lead,
                            ))
                    };
                    let rows: Vec<(i64, Option<i32>, Option<i64>)> = match &mut *c {
                        AnyConnection::Postgres(pg) => q().for_update().load(pg)?,
                        AnyConnection::Sqlite(lite) => q().load(lite)?,
                    };
                    for (id, cycle, lead) in rows {
                        held.insert(id);
                        plans.insert(id, (cycle, lead));
                    }
                }
                // An attempt goes out with the billkey the merchant's row names now: a new card
                // saved since the attempt was planned may already have had the old billkey removed
                // (the change is noticed under the lock taken above, so it is either seen here or
                // noticed only after this commit, when this attempt holds the old billkey). Such
                // an attempt is dropped and its claim released; the next pass plans it again.
                let bids = merchant::load_bids(c, &held.iter().copied().collect::<Vec<_>>())?;
                let mut stale = Vec::new();
                for a in &attempts {
                    let id = a.subscription_id.0;
                    if held.contains(&id)
                        && bids.get(&id).and_then(|b| b.as_deref()) != Some(a.bid.as_bytes())
                    {
                        tracing::info!(
                            subscription = id,
                            moid = %a.moid,
                            "attempt not committed: the merchant changed the billkey since it was \
                             planned; planned again next pass"
                        );
                        held.remove(&id);
                        stale.push(a.subscription_id);
                    }
                }
                for id in stale {
                    release(c, id)?;
                }
                let mut pending: Vec<(usize, NewCharge)> = attempts
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| held.contains(&a.subscription_id.0))
                    .map(|(i, a)| {
                        (
                            i,
                            NewCharge {
                                subscription_id: a.subscription_id.0,
                                cycle: a.cycle.column(),
                                attempt: a.attempt as i32,
                                moid: a.moid.clone(),
                                tid: new_tid(NewTid::First),
                                amount: a.amount,
                                bid: Some(a.bid.clone()),
                                state: ChargeState::Pending.as_str().into(),
                                check_after: Some(naive(a.check_after)),
                                created_at: now,
                                api: api.to_owned(),
                            },
                        )
                    })
                    .collect();
                let mut started = Vec::with_capacity(pending.len());
                let mut refused = Vec::new();
                let mut evs = Vec::new();
                // A TID that another instance took is replaced and the row tried again.
                for _ in 0..TID_TRIES {
                    if pending.is_empty() {
                        break;
                    }
                    let rows: Vec<NewCharge> = pending.iter().map(|(_, n)| n.clone()).collect();
                    let inserted = batch::insert_charges(c, &rows)?;
                    let mut again = Vec::new();
                    for (i, mut new) in pending {
                        if let Some(id) = inserted.get(&new.moid) {
                            evs.extend(attempts[i].events.iter().cloned());
                            started.push((i, ChargeId(*id), new.tid));
                            continue;
                        }
                        let tid_taken: i64 = match &new.tid {
                            Some(tid) => charges::table
                                .filter(charges::tid.eq(tid))
                                .count()
                                .get_result(c)?,
                            None => 0,
                        };
                        if tid_taken == 0 {
                            refused.push(i);
                            continue;
                        }
                        new.tid = new_tid(NewTid::AfterCollision);
                        again.push((i, new));
                    }
                    pending = again;
                }
                // TIDs still taken after the retries: nothing was committed for these rows, so
                // their claims are released (not left to the lease) and the next pass plans them
                // again with new TIDs.
                let mut collided = Vec::with_capacity(pending.len());
                for (i, _) in &pending {
                    let id = attempts[*i].subscription_id;
                    release(c, id)?;
                    collided.push(id.0);
                }
                let rows: Vec<_> = started
                    .iter()
                    .map(|(i, _, _)| {
                        let a = &attempts[*i];
                        (
                            a.subscription_id.0,
                            a.cycle.column(),
                            naive(a.due_at),
                            a.attempt as i32,
                        )
                    })
                    .collect();
                batch::start_bookkeeping(c, &owner, now, &rows)?;
                // A cycle's first attempt tells whatever upcoming notice of it is still untold.
                let firsts: Vec<AttemptNotice> = started
                    .iter()
                    .map(|(i, _, _)| &attempts[*i])
                    .filter(|a| a.attempt == 1)
                    .map(|a| {
                        let (notice_cycle, notice_lead) =
                            plans.get(&a.subscription_id.0).copied().unwrap_or_default();
                        AttemptNotice {
                            id: a.subscription_id,
                            cycle: a.cycle.column(),
                            due: a.due_at,
                            amount: a.amount,
                            notice_cycle,
                            notice_lead,
                        }
                    })
                    .collect();
                upcoming::tell_at_attempt(c, now, &leads, &firsts)?;
                for i in refused {
                    let a = &attempts[i];
                    refuse(c, a, now)?;
                }
                insert_events(c, now, &evs)?;
                Ok((started, collided))
            })
            .await?;
        if !collided.is_empty() {
            tracing::warn!(
                count = collided.len(),
                subscriptions = ?collided,
                "attempts not committed: every TID offered was already taken (another \
                 instance minting the same suffixes?); claims released, planned again next pass"
            );
        }
        Ok(started)
    }

    /// Applies decisions that charge nothing (invalid rows, ends, waits), releasing the claim.
    pub async fn reschedule(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        items: Vec<Reschedule>,
    ) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        let now = naive(now);
        self.write(move |c| {
            let mut done = 0;
            let mut evs = Vec::new();
            for item in &items {
                let n = apply_bookkeeping(c, item.subscription_id, &item.bookkeeping, &owner, now)?;
                if n == 0 {
                    continue;
                }
                if let Some(pause) = item.consumed_pause {
                    // Only the pause this decision saw; one noticed meanwhile stays.
                    diesel::update(billing_state::table.find(item.subscription_id.0))
                        .filter(billing_state::paused_since.eq(naive(pause)))
                        .filter(billing_state::status.eq(SubscriptionStatus::Active.as_str()))
                        .set(billing_state::paused_since.eq(None::<NaiveDateTime>))
                        .execute(c)?;
                }
                if let Some(bid) = &item.remove_billkey {
                    queue_removal(c, item.subscription_id, bid, "cancelled", now)?;
                }
                evs.extend(item.events.iter().cloned());
                done += 1;
            }
            insert_events(c, now, &evs)?;
            Ok(done)
        })
        .await
    }

    /// Records outcomes in one transaction. An outcome counts only while its charge is still
    /// unresolved (`pending`/`unknown`); the subscription moves on only with a settled charge,
    /// and only while it is still on that charge's cycle. A pause or cancellation noticed
    /// meanwhile is never touched. A subscription moved on to a new cycle gets that cycle's
    /// upcoming-notice plan in the same statement (`leads`; see `storage::upcoming`). Returns
    /// how many outcomes were applied.
    pub async fn record_outcomes(
        &self,
        now: DateTime<Utc>,
        outcomes: Vec<Outcome>,
        leads: &NoticeLeads,
    ) -> Result<usize, StoreError> {
        let now = naive(now);
        let longest = leads.secs().first().copied();
        let mut outcomes = outcomes;
        for o in &mut outcomes {
            if let Some(e) = &mut o.result.error {
                bound_error(e);
            }
        }
        self.write(move |c| {
            let mut applied = HashMap::new();
            for chunk in batch::shaped(&outcomes) {
                let updates: Vec<batch::ChargeUpdate<'_>> = chunk
                    .iter()
                    .map(|o| batch::ChargeUpdate {
                        id: o.charge_id.0,
                        result: &o.result,
                        resolved_at: (!o.result.state.is_unresolved()).then_some(now),
                        last_lookup_at: (o.result.lookups > 0).then_some(now),
                    })
                    .collect();
                applied.extend(
                    batch::update_charges(c, &updates)?
                        .into_iter()
                        .map(|row| (row.id, row)),
                );
            }
            let mine: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| applied.contains_key(&o.charge_id.0))
                .collect();
            let advancing: Vec<(i64, i32, &Bookkeeping)> = mine
                .iter()
                .filter_map(|o| {
                    o.bookkeeping
                        .as_ref()
                        .map(|b| (o.subscription_id.0, o.cycle.column(), b))
                })
                .collect();
            let mut advanced = HashSet::new();
            for chunk in batch::shaped(&advancing) {
                advanced.extend(batch::advance_subscriptions(c, now, chunk, longest)?);
            }
            let mut evs = Vec::new();
            for o in &mine {
                match &o.bookkeeping {
                    Some(b) => {
                        if let Some((status, reason)) = &b.status
                            && advanced.contains(&o.subscription_id.0)
                        {
                            set_status_if_active(c, o.subscription_id, *status, reason, now)?;
                        }
                    }
                    None => {
                        release(c, o.subscription_id)?;
                    }
                }
                if let Some(bid) = &o.remove_billkey {
                    queue_removal(c, o.subscription_id, bid, "cancelled", now)?;
                }
                evs.extend(o.events.iter().cloned().map(|mut e| {
                    e.charge_id = Some(o.charge_id);
                    e
                }));
            }
            // The charges' webhooks, then those of the events (a status change after the
            // charge that caused it), all in this transaction.
            let mut told: Vec<_> = mine
                .iter()
                .filter_map(|o| {
                    let next = o.bookkeeping.as_ref().and_then(|b| b.next_charge_at);
                    applied.remove(&o.charge_id.0).map(|row| (row, next))
                })
                .collect();
            told.sort_unstable_by_key(|(row, _)| row.id);
            outbox::for_charge_rows(c, now, &told)?;
            insert_events(c, now, &evs)?;
            Ok(mine.len())
        })
        .await
    }

    /// Records a late lookup of a `not_charged` attempt. An approval found late becomes the
    /// cycle's approval when the cycle has none (the subscription moves on if it is still on
    /// that cycle); when another attempt of the cycle was approved, it is a double charge,
    /// recorded as state `double` with a `double_charge` event naming both TIDs. Never refunds.
    pub async fn record_late_check(
        &self,
        now: DateTime<Utc>,
        charge: ChargeRow,
        finding: LateFinding,
    ) -> Result<LateRecorded, StoreError> {
        let now = naive(now);
        self.write(move |c| {
            let id = charge.id;
            let sub = SubscriptionId(charge.subscription_id);
            // Still ours: not_charged with the lease we set.
            let still = charges::table
                .find(id)
                .filter(charges::state.eq(ChargeState::NotCharged.as_str()))
                .filter(charges::late_check_at.is_not_null())
                .count()
                .get_result::<i64>(c)?
                == 1;
            if !still {
                return Ok(LateRecorded::Lost);
            }
            let note = |c: &mut AnyConnection, text: String, again: Option<NaiveDateTime>| {
                diesel::update(charges::table.find(id))
                    .set((
                        charges::late_check_at.eq(again),
                        charges::last_lookup_at.eq(Some(now)),
                        charges::lookups.eq(charges::lookups + 1),
                        charges::result_msg.eq(Some(text)),
                    ))
                    .execute(c)
            };
            match finding.clone() {
                LateFinding::NotFound => {
                    note(
                        c,
                        "no approved transaction with this TID (looked up again later)".into(),
                        None,
                    )?;
                    Ok(LateRecorded::Noted)
                }
                LateFinding::Again { at, why } => {
                    note(c, why, Some(naive(at)))?;
                    Ok(LateRecorded::Noted)
                }
                LateFinding::Cancelled => {
                    diesel::update(charges::table.find(id))
                        .set((
                            charges::state.eq(ChargeState::Cancelled.as_str()),
                            charges::late_check_at.eq(None::<NaiveDateTime>),
                            charges::last_lookup_at.eq(Some(now)),
                            charges::lookups.eq(charges::lookups + 1),
                            charges::result_msg
                                .eq(Some("approved, then cancelled (late status lookup)")),
                        ))
                        .execute(c)?;
                    insert_events(
                        c,
                        now,
                        &[Event {
                            charge_id: Some(ChargeId(id)),
                            ..Event::sub(
                                sub,
                                EventKind::ChargeCancelled,
                                format!(
                                    "cycle {} {}: found approved and cancelled by a late lookup; not approved now",
                                    charge.cycle, charge.label()
                                ),
                            )
                        }],
                    )?;
                    Ok(LateRecorded::Noted)
                }
                LateFinding::Approved {
                    result_code,
                    auth_code,
                    auth_date,
                    tid,
                } => {
                    if charge.tid.is_none() && tid.is_some() {
                        diesel::update(charges::table.find(id))
                            .filter(charges::tid.is_null())
                            .set(charges::tid.eq(&tid))
                            .execute(c)?;
                    }
                    let charge = ChargeRow {
                        tid: charge.tid.clone().or(tid.clone()),
                        ..charge.clone()
                    };
                    let others: Vec<ChargeRow> = charges::table
                        .filter(charges::subscription_id.eq(charge.subscription_id))
                        .filter(charges::cycle.eq(charge.cycle))
                        .filter(charges::id.ne(id))
                        .filter(
                            charges::state
                                .eq_any([ChargeState::Approved.as_str(), "pending", "unknown"]),
                        )
                        .select(ChargeRow::as_select())
                        .load(c)?;
                    let base = (
                        charges::late_check_at.eq(None::<NaiveDateTime>),
                        charges::last_lookup_at.eq(Some(now)),
                        charges::lookups.eq(charges::lookups + 1),
                        charges::auth_code.eq(auth_code),
                        charges::auth_date.eq(auth_date),
                        charges::resolved_at.eq(Some(now)),
                    );
                    if let Some(approved) = others
                        .iter()
                        .find(|o| o.state == ChargeState::Approved.as_str())
                    {
                        diesel::update(charges::table.find(id))
                            .set((
                                base,
                                charges::state.eq(ChargeState::Double.as_str()),
                                charges::result_msg.eq(Some(format!(
                                    "approved at NICEPAY (late status lookup) although {} was approved for this cycle: double charge",
                                    approved.label()
                                ))),
                            ))
                            .execute(c)?;
                        insert_events(
                            c,
                            now,
                            &[Event {
                                charge_id: Some(ChargeId(id)),
                                ..Event::sub(
                                    sub,
                                    EventKind::DoubleCharge,
                                    format!(
                                        "cycle {} charged twice: {} and {} ({} KRW each); refund one with `nicebill refund`",
                                        charge.cycle, approved.label(), charge.label(), charge.amount
                                    ),
                                )
                            }],
                        )?;
                        return Ok(LateRecorded::Double {
                            other_tid: approved.tid.clone().unwrap_or_else(|| approved.label()),
                        });
                    }
                    if !others.is_empty() {
                        // Another attempt of the cycle is in flight: its outcome comes first.
                        note(
                            c,
                            "approved at NICEPAY (late lookup); waiting for the cycle's attempt in flight".into(),
                            Some(now + chrono::Duration::minutes(1)),
                        )?;
                        return Ok(LateRecorded::Noted);
                    }
                    diesel::update(charges::table.find(id))
                        .set((
                            base,
                            charges::state.eq(ChargeState::Approved.as_str()),
                            charges::result_code.eq(Some(result_code)),
                            charges::result_msg
                                .eq(Some("approved (found by a late status lookup)")),
                        ))
                        .execute(c)?;
                    // The subscription moves on only if it is still on that cycle; if dunning
                    // had given up on the cycle (past_due), it is paid after all.
                    let next = Cycle::from_column(charge.cycle)
                        .unwrap_or(Cycle::FIRST)
                        .saturating_next();
                    let moved = diesel::update(billing_state::table.find(charge.subscription_id))
                        .filter(billing_state::next_cycle.eq(charge.cycle))
                        .set((
                            billing_state::next_cycle.eq(Some(next.column())),
                            billing_state::next_charge_at.eq(None::<NaiveDateTime>),
                            billing_state::cycle_attempts.eq(0),
                            billing_state::cycle_declines.eq(0),
                            billing_state::updated_at.eq(now),
                        ))
                        .execute(c)?;
                    if moved == 1 {
                        diesel::update(billing_state::table.find(charge.subscription_id))
                            .filter(
                                billing_state::status.eq(SubscriptionStatus::PastDue.as_str()),
                            )
                            .set((
                                billing_state::status.eq(SubscriptionStatus::Active.as_str()),
                                billing_state::status_reason.eq(None::<String>),
                            ))
                            .execute(c)?;
                    }
                    insert_events(
                        c,
                        now,
                        &[Event {
                            charge_id: Some(ChargeId(id)),
                            ..Event::sub(
                                sub,
                                EventKind::ApprovedLate,
                                format!(
                                    "cycle {} {}: concluded not charged, but a late lookup found it approved; recorded as the cycle's charge",
                                    charge.cycle, charge.label()
                                ),
                            )
                        }],
                    )?;
                    outbox::for_charges(c, now, &[(ChargeId(id), None)])?;
                    Ok(LateRecorded::Approved)
                }
            }
        })
        .await
    }

    /// Gives up claims this owner holds, without changing anything else.
    pub async fn release_claims(
        &self,
        owner: &str,
        ids: &[SubscriptionId],
    ) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        self.write(move |c| {
            let mut n = 0;
            for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
                n += diesel::update(billing_state::table)
                    .filter(billing_state::subscription_id.eq_any(chunk))
                    .filter(billing_state::claimed_by.eq(&owner))
                    .set((
                        billing_state::claimed_by.eq(None::<String>),
                        billing_state::claimed_until.eq(None::<NaiveDateTime>),
                    ))
                    .execute(c)?;
            }
            Ok(n)
        })
        .await
    }

    /// Records one removal attempt: done, or pending again at `retry_at`.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_removal(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        removal_id: i64,
        moid: String,
        done: bool,
        result_code: Option<String>,
        result_msg: Option<String>,
        retry_at: DateTime<Utc>,
        event: Event,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_owned();
        let now = naive(now);
        self.write(move |c| {
            let n = diesel::update(billkey_removals::table.find(removal_id))
                .filter(billkey_removals::claimed_by.eq(&owner))
                .filter(billkey_removals::state.eq("pending"))
                .set((
                    billkey_removals::state.eq(if done { "done" } else { "pending" }),
                    billkey_removals::attempts.eq(billkey_removals::attempts + 1),
                    billkey_removals::moid.eq(Some(&moid)),
                    billkey_removals::result_code.eq(&result_code),
                    billkey_removals::result_msg.eq(&result_msg),
                    billkey_removals::next_attempt_at.eq(naive(retry_at)),
                    billkey_removals::claimed_by.eq(None::<String>),
                    billkey_removals::claimed_until.eq(None::<NaiveDateTime>),
                    billkey_removals::done_at.eq(done.then_some(now)),
                ))
                .execute(c)?;
            if n == 1 {
                insert_events(c, now, std::slice::from_ref(&event))?;
                if done {
                    let (id, bid): (i64, String) = billkey_removals::table
                        .find(removal_id)
                        .select((billkey_removals::subscription_id, billkey_removals::bid))
                        .first(c)?;
                    let item = outbox::billkey_removed(SubscriptionId(id), &bid);
                    outbox::enqueue(c, now, vec![item])?;
                }
            }
            Ok(n == 1)
        })
        .await
    }
}

/// An attempt the database refused: never sent. Its claim is released; if its cycle is
/// approved already (bookkeeping behind the ledger), the subscription moves past it. Behind
/// means any earlier cycle or none at all (a row the first schema's stale save wound back, or
/// one the catch-up moved past several approved cycles): left there, it would be claimed and
/// refused again at once, and the pass would never end.
fn refuse(c: &mut AnyConnection, a: &StartAttempt, now: NaiveDateTime) -> Result<(), StoreError> {
    let approved: i64 = charges::table
        .filter(charges::subscription_id.eq(a.subscription_id.0))
        .filter(charges::cycle.eq(a.cycle.column()))
        .filter(charges::state.eq(ChargeState::Approved.as_str()))
        .count()
        .get_result(c)?;
    tracing::warn!(
        subscription = a.subscription_id.0,
        cycle = a.cycle.0,
        moid = %a.moid,
        cycle_approved = approved > 0,
        "attempt refused by the database (its cycle is approved or has an attempt in flight); not sent"
    );
    if approved > 0 {
        diesel::update(billing_state::table.find(a.subscription_id.0))
            .filter(
                billing_state::next_cycle
                    .is_null()
                    .or(billing_state::next_cycle.le(a.cycle.column())),
            )
            .set((
                billing_state::next_cycle.eq(Some(a.cycle.saturating_next().column())),
                billing_state::next_charge_at.eq(None::<NaiveDateTime>),
                billing_state::cycle_attempts.eq(0),
                billing_state::cycle_declines.eq(0),
                billing_state::updated_at.eq(now),
            ))
            .execute(c)?;
    }
    release(c, a.subscription_id)?;
    Ok(())
}

fn release(c: &mut AnyConnection, id: SubscriptionId) -> Result<usize, StoreError> {
    Ok(diesel::update(billing_state::table.find(id.0))
        .set((
            billing_state::claimed_by.eq(None::<String>),
            billing_state::claimed_until.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?)
}

/// Writes nicebill's bookkeeping of one subscription and releases its claim, only while
/// `owner` holds the claim. A status change never overwrites a pause or cancellation noticed
/// meanwhile; `paused_since` is never touched here.
fn apply_bookkeeping(
    c: &mut AnyConnection,
    id: SubscriptionId,
    b: &Bookkeeping,
    owner: &str,
    now: NaiveDateTime,
) -> Result<usize, StoreError> {
    let n = diesel::update(billing_state::table.find(id.0))
        .filter(billing_state::claimed_by.eq(owner.to_owned()))
        .set((
            billing_state::next_cycle.eq(Some(b.next_cycle.column())),
            billing_state::next_charge_at.eq(b.next_charge_at.map(naive)),
            billing_state::cycle_attempts.eq(b.cycle_attempts as i32),
            billing_state::cycle_declines.eq(b.cycle_declines as i32),
            billing_state::updated_at.eq(now),
            billing_state::claimed_by.eq(None::<String>),
            billing_state::claimed_until.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    if n == 0 {
        return Ok(0);
    }
    if let Some((status, reason)) = &b.status {
        set_status_if_active(c, id, *status, reason, now)?;
    }
    Ok(n)
}

/// nicebill's status change, made only while the subscription is active (a pause or
/// cancellation noticed meanwhile wins).
fn set_status_if_active(
    c: &mut AnyConnection,
    id: SubscriptionId,
    status: SubscriptionStatus,
    reason: &str,
    now: NaiveDateTime,
) -> Result<usize, StoreError> {
    Ok(diesel::update(billing_state::table.find(id.0))
        .filter(billing_state::status.eq(SubscriptionStatus::Active.as_str()))
        .set((
            billing_state::status.eq(status.as_str()),
            billing_state::status_reason.eq(Some(reason)),
            billing_state::updated_at.eq(now),
        ))
        .execute(c)?)
}

/// The longest `charges.error` kept, in characters. The column holds the attempt's first error
/// only (later lookups count in `lookups`/`last_lookup_at` and note in `result_msg`), so it
/// cannot grow with lookups; this bounds an overlong first error too.
pub const ERROR_MAX_CHARS: usize = 500;

/// Cuts `text` to [`ERROR_MAX_CHARS`] characters (on a character boundary), ending in `…`
/// when cut.
pub fn bound_error(text: &mut String) {
    if let Some((cut, _)) = text.char_indices().nth(ERROR_MAX_CHARS - 1) {
        if text[cut..].chars().count() > 1 {
            text.truncate(cut);
            text.push('…');
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        let mut short = "é".repeat(ERROR_MAX_CHARS);
        bound_error(&mut short);
        assert_eq!(
            short,
            "é".repeat(ERROR_MAX_CHARS),
            "exactly the bound is kept"
        );
        let mut long = "가".repeat(ERROR_MAX_CHARS * 3);
        bound_error(&mut long);
        assert_eq!(long.chars().count(), ERROR_MAX_CHARS);
        assert_eq!(long, format!("{}…", "가".repeat(ERROR_MAX_CHARS - 1)));
    }
}
