//! The webhook outbox. Every webhook is a row of `webhook_outbox`, written in the same
//! transaction as the change it tells of (by the functions here, called from recording and
//! from [`super::insert_events`]); the daemon's webhook workers deliver it afterwards
//! (`claim_webhooks`, `record_delivery`). Its `body` is fixed when written, so every try sends
//! and signs the same bytes under the same `event_id`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use diesel::prelude::*;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::merchant;
use super::models::ChargeRow;
use super::schema::{charges, webhook_outbox};
use super::{AnyConnection, Event, StoreError, bid_suffix};
use crate::billing::model::{
    ChargeId, ChargeState, DeliveryState, EventKind, NoticeLeads, SubscriptionId, WebhookKind,
};

/// One webhook to write.
#[derive(Clone, Debug)]
pub struct Item {
    pub kind: WebhookKind,
    pub subscription_id: Option<SubscriptionId>,
    /// A webhook that must exist once carries a key; a second with the same key is dropped.
    pub dedupe_key: Option<String>,
    /// The event's own fields (`subscription_id` and `external_id` are added).
    pub data: Map<String, Value>,
}

/// A new event id: `msg_` and 26 random letters and digits (never a `.`, which the signed
/// text uses as its separator).
pub fn new_event_id() -> String {
    let tail: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(26)
        .map(char::from)
        .collect();
    format!("msg_{tail}")
}

/// RFC 3339 in UTC with milliseconds, as every webhook time is written.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Writes `items`, each with its body fixed now.
pub(super) fn enqueue(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    items: Vec<Item>,
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<i64> = items
        .iter()
        .filter_map(|i| i.subscription_id.map(|s| s.0))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let external = merchant::load_external_ids(c, &ids)?;
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let mut data = Map::new();
        if let Some(id) = item.subscription_id {
            data.insert("subscription_id".into(), json!(id.0));
            data.insert(
                "external_id".into(),
                json!(external.get(&id.0).cloned().unwrap_or_default()),
            );
        }
        data.extend(item.data);
        let body = json!({
            "type": item.kind.as_str(),
            "timestamp": rfc3339(now.and_utc()),
            "data": data,
        })
        .to_string();
        rows.push(super::batch::OutboxInsert {
            event_id: new_event_id(),
            dedupe_key: item.dedupe_key,
            subscription_id: item.subscription_id.map(|s| s.0),
            kind: item.kind.as_str(),
            body,
            created_at: now,
            state: DeliveryState::Pending.as_str(),
        });
    }
    super::batch::insert_outbox(c, rows)?;
    Ok(())
}

/// The fields every charge webhook carries.
fn charge_data(row: &ChargeRow) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("cycle".into(), json!(row.cycle));
    data.insert("attempt".into(), json!(row.attempt));
    data.insert("moid".into(), json!(row.moid));
    data.insert("tid".into(), json!(row.tid));
    data.insert("amount".into(), json!(row.amount));
    data
}

/// NICEPAY's `AuthDate` (`YYMMDDHHMMSS`, Korea time) in UTC, if it reads as one.
fn auth_time(auth_date: Option<&str>) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(auth_date?, "%y%m%d%H%M%S").ok()?;
    chrono_tz::Asia::Seoul
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The webhook of a charge whose outcome was just recorded: `charge.approved`,
/// `charge.declined` (with the time of the next try, if dunning goes on) or `charge.failed`.
/// Other states tell nothing yet.
pub(super) fn charge_item(row: &ChargeRow, next_attempt_at: Option<DateTime<Utc>>) -> Option<Item> {
    let state: ChargeState = row.state.parse().ok()?;
    let mut data = charge_data(row);
    data.insert("result_code".into(), json!(row.result_code));
    data.insert("result_msg".into(), json!(row.result_msg));
    let kind = match state {
        ChargeState::Approved => {
            data.insert("auth_code".into(), json!(row.auth_code));
            let at = auth_time(row.auth_date.as_deref())
                .or(row.resolved_at.map(|t| t.and_utc()))
                .map(rfc3339);
            data.insert("approved_at".into(), json!(at));
            WebhookKind::ChargeApproved
        }
        ChargeState::Declined => {
            data.insert(
                "next_attempt_at".into(),
                json!(next_attempt_at.map(rfc3339)),
            );
            WebhookKind::ChargeDeclined
        }
        ChargeState::CardInvalid | ChargeState::RequestError | ChargeState::UnlistedCode => {
            data.insert("state".into(), json!(row.state));
            WebhookKind::ChargeFailed
        }
        _ => return None,
    };
    Some(Item {
        kind,
        subscription_id: Some(SubscriptionId(row.subscription_id)),
        dedupe_key: Some(format!("{}:{}", kind.as_str(), row.id)),
        data,
    })
}

/// Loads the given charges (after their outcome was written) and queues their webhooks;
/// `next` is the time of a declined cycle's next try.
pub(super) fn for_charges(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    ids: &[(ChargeId, Option<DateTime<Utc>>)],
) -> Result<(), StoreError> {
    let next: HashMap<i64, Option<DateTime<Utc>>> = ids.iter().map(|(i, n)| (i.0, *n)).collect();
    let mut rows = Vec::new();
    let all: Vec<i64> = next.keys().copied().collect();
    for chunk in all.chunks(super::MAX_IDS_PER_STATEMENT) {
        let loaded: Vec<ChargeRow> = charges::table
            .filter(charges::id.eq_any(chunk))
            .select(ChargeRow::as_select())
            .load(c)?;
        rows.extend(loaded.into_iter().map(|r| {
            let n = next.get(&r.id).copied().flatten();
            (r, n)
        }));
    }
    rows.sort_unstable_by_key(|(r, _)| r.id);
    for_charge_rows(c, now, &rows)
}

/// The webhooks of charges whose outcomes were just recorded, from the rows as written (each
/// with the time of the next try, for a decline), in the order given.
pub(super) fn for_charge_rows(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    rows: &[(ChargeRow, Option<DateTime<Utc>>)],
) -> Result<(), StoreError> {
    let items = rows
        .iter()
        .filter_map(|(r, next)| charge_item(r, *next))
        .collect();
    enqueue(c, now, items)
}

/// The webhooks events stand for: a status nicebill set or noticed (`subscription.*`, with
/// the event's text as the reason) and a double charge (`charge.double`, with every TID that
/// charged the cycle).
pub(super) fn for_events(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    evs: &[Event],
) -> Result<(), StoreError> {
    let mut items = Vec::new();
    // A status change can be told by two events of one outcome (the attempt's `card_invalid`
    // and the status's): one webhook each, with the last event's reason.
    let mut seen = std::collections::HashSet::new();
    let last_of_each: Vec<&Event> = evs
        .iter()
        .rev()
        .filter(|e| e.kind.webhook().is_none() || seen.insert((e.subscription_id, e.kind)))
        .collect();
    for e in last_of_each.into_iter().rev() {
        let Some(kind) = e.kind.webhook() else {
            continue;
        };
        let mut data = Map::new();
        if kind == WebhookKind::ChargeDouble {
            let Some(charge) = e.charge_id else { continue };
            let Some(row) = charges::table
                .find(charge.0)
                .select(ChargeRow::as_select())
                .first(c)
                .optional()?
            else {
                continue;
            };
            let tids: Vec<Option<String>> = charges::table
                .filter(charges::subscription_id.eq(row.subscription_id))
                .filter(charges::cycle.eq(row.cycle))
                .filter(
                    charges::state
                        .eq_any([ChargeState::Approved.as_str(), ChargeState::Double.as_str()]),
                )
                .order(charges::id)
                .select(charges::tid)
                .load(c)?;
            data.insert("cycle".into(), json!(row.cycle));
            data.insert("tids".into(), json!(tids));
        } else {
            let status = match e.kind {
                EventKind::PastDue => "past_due",
                EventKind::CardInvalid => "card_invalid",
                EventKind::Ended => "ended",
                EventKind::Cancelled => "cancelled",
                _ => "invalid",
            };
            data.insert("status".into(), json!(status));
            data.insert("reason".into(), json!(e.detail));
        }
        items.push(Item {
            kind,
            subscription_id: e.subscription_id,
            dedupe_key: None,
            data,
        });
    }
    enqueue(c, now, items)
}

/// `charge.upcoming`: cycle `cycle` of subscription `id` comes due at `due`, `lead` seconds
/// ahead (told once per cycle and lead: the dedupe key). `previous` is the last approved
/// amount; the amount counts as changed when there is none (a first paid cycle, or a free
/// period turning paid).
pub(super) fn upcoming_item(
    id: SubscriptionId,
    cycle: i32,
    due: DateTime<Utc>,
    amount: i64,
    previous: Option<i64>,
    lead: i64,
) -> Item {
    let mut data = Map::new();
    data.insert("cycle".into(), json!(cycle));
    data.insert("due_at".into(), json!(rfc3339(due)));
    data.insert("amount".into(), json!(amount));
    data.insert("previous_amount".into(), json!(previous));
    data.insert("amount_changed".into(), json!(previous != Some(amount)));
    data.insert("lead".into(), json!(NoticeLeads::label(lead)));
    Item {
        kind: WebhookKind::ChargeUpcoming,
        subscription_id: Some(id),
        dedupe_key: Some(format!("upcoming:{}:{cycle}:{lead}", id.0)),
        data,
    }
}

/// The last approved amount of each of the given subscriptions that has one.
pub(super) fn last_approved_amounts(
    c: &mut AnyConnection,
    ids: &[i64],
) -> Result<HashMap<i64, i64>, StoreError> {
    #[derive(QueryableByName)]
    struct Last {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        amount: i64,
    }
    let mut out = HashMap::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
        if chunk.is_empty() {
            continue;
        }
        // Ids are integers: they stand in the SQL text safely.
        let list = super::id_list(chunk);
        let sql = format!(
            "SELECT ch.subscription_id AS id, ch.amount AS amount FROM charges ch \
             WHERE ch.subscription_id IN ({list}) AND ch.state = 'approved' \
             AND ch.cycle = (SELECT MAX(c2.cycle) FROM charges c2 \
               WHERE c2.subscription_id = ch.subscription_id AND c2.state = 'approved')"
        );
        let rows: Vec<Last> = match c {
            AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        out.extend(rows.into_iter().map(|r| (r.id, r.amount)));
    }
    Ok(out)
}

/// `billkey.removed` for subscription `id`: only the billkey's last four characters.
pub(super) fn billkey_removed(id: SubscriptionId, bid: &str) -> Item {
    let mut data = Map::new();
    data.insert(
        "bid_suffix".into(),
        json!(bid_suffix(bid).trim_start_matches('…')),
    );
    Item {
        kind: WebhookKind::BillkeyRemoved,
        subscription_id: Some(id),
        dedupe_key: None,
        data,
    }
}

/// One row of `webhook_outbox`.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = webhook_outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub dedupe_key: Option<String>,
    pub subscription_id: Option<i64>,
    pub kind: String,
    pub body: String,
    pub created_at: NaiveDateTime,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<NaiveDateTime>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<NaiveDateTime>,
    pub delivered_at: Option<NaiveDateTime>,
}

/// What one delivery try came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Anything else; tried again at `retry_at`, or `dead` when there is none.
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// Left out by `[webhook] events`.
    Filtered,
}

/// The outbox at a glance, for health and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxFigures {
    /// Events not delivered yet.
    pub backlog: i64,
    /// When the oldest of them was written.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub dead: i64,
}

diesel::alias!(webhook_outbox as earlier: EarlierOutbox);

impl super::Store {
    /// Writes webhooks that no other change carries (a `ping`, an upcoming notice), now.
    pub async fn enqueue_webhooks(
        &self,
        now: DateTime<Utc>,
        items: Vec<Item>,
    ) -> Result<(), StoreError> {
        let now = super::naive(now);
        self.write(move |c| enqueue(c, now, items.clone())).await
    }

    /// Claims up to `limit` events that are due (all undelivered ones with `ignore_waits`),
    /// for `lease`. An event is claimed only when no earlier event of its subscription is
    /// still undelivered, so each subscription's events go out in order, one at a time.
    pub async fn claim_webhooks(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: i64,
        ignore_waits: bool,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let owner = owner.to_owned();
        let now_n = super::naive(now);
        let until = super::naive(super::later(now, lease));
        let pending = DeliveryState::Pending.as_str();
        self.write(move |c| {
            // "Any time": the last second of year 9999, which both backends store and compare
            // as a time (chrono's own maximum is text SQLite would compare wrongly).
            let due_by = if ignore_waits {
                chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
                    .and_then(|d| d.and_hms_opt(23, 59, 59))
                    .unwrap_or(now_n)
            } else {
                now_n
            };
            // Written once, typed per backend (the alias's subquery is inferred per use).
            macro_rules! due {
                () => {
                    webhook_outbox::table
                        .filter(webhook_outbox::state.eq(pending))
                        .filter(webhook_outbox::next_attempt_at.le(due_by))
                        .filter(
                            webhook_outbox::claimed_until
                                .is_null()
                                .or(webhook_outbox::claimed_until.lt(now_n)),
                        )
                        .filter(diesel::dsl::not(diesel::dsl::exists(
                            earlier
                                .filter(
                                    earlier
                                        .field(webhook_outbox::subscription_id)
                                        .eq(webhook_outbox::subscription_id),
                                )
                                .filter(earlier.field(webhook_outbox::state).eq(pending))
                                .filter(earlier.field(webhook_outbox::id).lt(webhook_outbox::id)),
                        )))
                        .order(webhook_outbox::id)
                        .limit(limit)
                        .select(OutboxRow::as_select())
                };
            }
            let due: Vec<OutboxRow> = match c {
                AnyConnection::Postgres(pg) => due!().for_update().skip_locked().load(pg)?,
                AnyConnection::Sqlite(lite) => due!().load(lite)?,
            };
            let mut mine = Vec::with_capacity(due.len());
            for row in due {
                let mut q = diesel::update(webhook_outbox::table.find(row.id))
                    .filter(webhook_outbox::state.eq(pending))
                    .into_boxed();
                q = match row.claimed_until {
                    Some(t) => q.filter(webhook_outbox::claimed_until.eq(t)),
                    None => q.filter(webhook_outbox::claimed_until.is_null()),
                };
                let n = q
                    .set((
                        webhook_outbox::claimed_by.eq(Some(&owner)),
                        webhook_outbox::claimed_until.eq(Some(until)),
                    ))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            Ok(mine)
        })
        .await
    }

    /// Records one delivery try of event `id`, only while `owner` still holds it. Returns
    /// whether it was recorded.
    pub async fn record_delivery(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        id: i64,
        delivery: Delivery,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_owned();
        let now = super::naive(now);
        self.write(move |c| {
            let target = webhook_outbox::table
                .find(id)
                .filter(webhook_outbox::claimed_by.eq(&owner))
                .filter(webhook_outbox::state.eq(DeliveryState::Pending.as_str()));
            let release = (
                webhook_outbox::claimed_by.eq(None::<String>),
                webhook_outbox::claimed_until.eq(None::<NaiveDateTime>),
                webhook_outbox::last_attempt_at.eq(Some(now)),
            );
            let n = match &delivery {
                Delivery::Delivered { status } => diesel::update(target)
                    .set((
                        release,
                        webhook_outbox::state.eq(DeliveryState::Delivered.as_str()),
                        webhook_outbox::attempts.eq(webhook_outbox::attempts + 1),
                        webhook_outbox::last_status.eq(Some(i32::from(*status))),
                        webhook_outbox::last_error.eq(None::<String>),
                        webhook_outbox::delivered_at.eq(Some(now)),
                    ))
                    .execute(c)?,
                Delivery::Failed {
                    status,
                    error,
                    retry_at,
                } => {
                    let state = match retry_at {
                        Some(_) => DeliveryState::Pending,
                        None => DeliveryState::Dead,
                    };
                    let error: String = error.chars().take(500).collect();
                    diesel::update(target)
                        .set((
                            release,
                            webhook_outbox::state.eq(state.as_str()),
                            webhook_outbox::attempts.eq(webhook_outbox::attempts + 1),
                            webhook_outbox::last_status.eq(status.map(i32::from)),
                            webhook_outbox::last_error.eq(Some(error)),
                            webhook_outbox::next_attempt_at
                                .eq(retry_at.map(super::naive).unwrap_or(now)),
                        ))
                        .execute(c)?
                }
                Delivery::Filtered => diesel::update(target)
                    .set((
                        release,
                        webhook_outbox::state.eq(DeliveryState::Filtered.as_str()),
                    ))
                    .execute(c)?,
            };
            Ok(n == 1)
        })
        .await
    }

    /// The outbox, newest first, at most `limit` rows; by state and subscription.
    pub async fn webhooks(
        &self,
        state: Option<DeliveryState>,
        subscription: Option<i64>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.run(move |c| {
            let mut q = webhook_outbox::table.into_boxed();
            if let Some(state) = state {
                q = q.filter(webhook_outbox::state.eq(state.as_str()));
            }
            if let Some(id) = subscription {
                q = q.filter(webhook_outbox::subscription_id.eq(id));
            }
            Ok(q.order(webhook_outbox::id.desc())
                .limit(limit)
                .select(OutboxRow::as_select())
                .load(c)?)
        })
        .await
    }

    /// Puts dead events back (the given ones, or every dead one), due now with a fresh count.
    pub async fn retry_webhooks(
        &self,
        now: DateTime<Utc>,
        ids: Option<Vec<i64>>,
    ) -> Result<usize, StoreError> {
        let now = super::naive(now);
        self.write(move |c| {
            let set = (
                webhook_outbox::state.eq(DeliveryState::Pending.as_str()),
                webhook_outbox::attempts.eq(0),
                webhook_outbox::next_attempt_at.eq(now),
            );
            let dead = webhook_outbox::state.eq(DeliveryState::Dead.as_str());
            Ok(match &ids {
                None => diesel::update(webhook_outbox::table.filter(dead))
                    .set(set)
                    .execute(c)?,
                Some(ids) => {
                    let mut n = 0;
                    for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
                        n += diesel::update(
                            webhook_outbox::table
                                .filter(dead)
                                .filter(webhook_outbox::id.eq_any(chunk)),
                        )
                        .set(set)
                        .execute(c)?;
                    }
                    n
                }
            })
        })
        .await
    }

    /// `charge.unresolved` for every attempt still unsettled `after` its commit (once per
    /// attempt). Returns how many were written.
    pub async fn notice_unresolved(
        &self,
        now: DateTime<Utc>,
        after: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let now_n = super::naive(now);
        let cutoff = super::naive(now - chrono::Duration::from_std(after).unwrap_or_default());
        self.write(move |c| {
            let rows: Vec<ChargeRow> = charges::table
                .filter(charges::state.eq_any(ChargeState::UNRESOLVED))
                .filter(charges::created_at.le(cutoff))
                .select(ChargeRow::as_select())
                .load(c)?;
            let keys: Vec<String> = rows
                .iter()
                .map(|r| format!("{}:{}", WebhookKind::ChargeUnresolved.as_str(), r.id))
                .collect();
            let mut told: std::collections::HashSet<String> = std::collections::HashSet::new();
            for chunk in keys.chunks(super::MAX_IDS_PER_STATEMENT) {
                let found: Vec<Option<String>> = webhook_outbox::table
                    .filter(webhook_outbox::dedupe_key.eq_any(chunk))
                    .select(webhook_outbox::dedupe_key)
                    .load(c)?;
                told.extend(found.into_iter().flatten());
            }
            let items: Vec<Item> = rows
                .iter()
                .zip(keys)
                .filter(|(_, key)| !told.contains(key))
                .map(|(r, key)| {
                    let mut data = charge_data(r);
                    data.insert("since".into(), json!(rfc3339(r.created_at.and_utc())));
                    Item {
                        kind: WebhookKind::ChargeUnresolved,
                        subscription_id: Some(SubscriptionId(r.subscription_id)),
                        dedupe_key: Some(key),
                        data,
                    }
                })
                .collect();
            let n = items.len();
            enqueue(c, now_n, items)?;
            Ok(n)
        })
        .await
    }

    /// Backlog, oldest undelivered event and dead count.
    pub async fn outbox_figures(&self) -> Result<OutboxFigures, StoreError> {
        self.run(|c| {
            let pending = webhook_outbox::state.eq(DeliveryState::Pending.as_str());
            let backlog: i64 = webhook_outbox::table
                .filter(pending)
                .count()
                .get_result(c)?;
            let oldest: Option<NaiveDateTime> = webhook_outbox::table
                .filter(pending)
                .select(diesel::dsl::min(webhook_outbox::created_at))
                .first(c)?;
            let dead: i64 = webhook_outbox::table
                .filter(webhook_outbox::state.eq(DeliveryState::Dead.as_str()))
                .count()
                .get_result(c)?;
            Ok(OutboxFigures {
                backlog,
                oldest_pending_at: oldest.map(|t| t.and_utc()),
                dead,
            })
        })
        .await
    }

    /// Deletes events written before `before` (`[webhook] keep`): delivered, filtered and
    /// dead ones, and undelivered ones too (with no URL nothing delivers them).
    pub async fn prune_webhooks(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let before = super::naive(before);
        self.write(move |c| {
            Ok(
                diesel::delete(webhook_outbox::table.filter(webhook_outbox::created_at.lt(before)))
                    .execute(c)?,
            )
        })
        .await
    }
}
