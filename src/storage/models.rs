//! Rows as diesel reads and writes them.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use super::schema::{billing_state, billkey_removals, charges, events, subscriptions};

/// nicebill's state of one subscription, as stored.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = billing_state)]
pub struct BillingStateRow {
    pub subscription_id: i64,
    pub status: String,
    pub status_reason: Option<String>,
    pub seen_status: Option<String>,
    pub seen_bid: Option<String>,
    pub next_cycle: Option<i32>,
    pub next_charge_at: Option<NaiveDateTime>,
    pub cycle_attempts: i32,
    pub cycle_declines: i32,
    pub paused_since: Option<NaiveDateTime>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
}

/// A subscription as operators and tests see it: the merchant's columns as they read (a
/// value that does not parse is `None`, and `row_error` names the first such column), and
/// nicebill's state. `status` is nicebill's verdict (the merchant's own is `merchant_status`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubscriptionRow {
    pub id: i64,
    pub external_id: String,
    pub bid: String,
    pub amount: Option<i64>,
    pub goods_name: String,
    pub buyer_name: Option<String>,
    pub buyer_email: Option<String>,
    pub buyer_tel: Option<String>,
    pub card_quota: String,
    pub card_interest: String,
    pub interval_unit: String,
    pub interval_count: Option<i64>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub anchor_at: Option<NaiveDateTime>,
    pub max_cycles: Option<i64>,
    pub ends_at: Option<NaiveDateTime>,
    pub merchant_status: String,
    pub cancel_at_period_end: Option<bool>,
    pub row_error: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub next_cycle: Option<i32>,
    pub next_charge_at: Option<NaiveDateTime>,
    pub cycle_attempts: i32,
    pub cycle_declines: i32,
    pub paused_since: Option<NaiveDateTime>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<NaiveDateTime>,
}

/// The merchant's columns of a new subscription.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = subscriptions)]
pub struct NewSubscription {
    pub external_id: String,
    pub bid: String,
    pub amount: i64,
    pub goods_name: String,
    pub buyer_name: Option<String>,
    pub buyer_email: Option<String>,
    pub buyer_tel: Option<String>,
    pub card_quota: String,
    pub card_interest: String,
    pub interval_unit: String,
    pub interval_count: i32,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub anchor_at: NaiveDateTime,
    pub max_cycles: Option<i32>,
    pub ends_at: Option<NaiveDateTime>,
    pub status: String,
    pub cancel_at_period_end: bool,
}

impl NewSubscription {
    /// An active monthly subscription with the columns' defaults (quota 00, no interest-free,
    /// no buyer, no end).
    pub fn monthly(
        external_id: &str,
        bid: &str,
        amount: i64,
        goods_name: &str,
        anchor_at: NaiveDateTime,
    ) -> Self {
        Self {
            external_id: external_id.into(),
            bid: bid.into(),
            amount,
            goods_name: goods_name.into(),
            buyer_name: None,
            buyer_email: None,
            buyer_tel: None,
            card_quota: "00".into(),
            card_interest: "0".into(),
            interval_unit: "month".into(),
            interval_count: 1,
            cron: None,
            timezone: None,
            anchor_at,
            max_cycles: None,
            ends_at: None,
            status: "active".into(),
            cancel_at_period_end: false,
        }
    }
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize, PartialEq)]
#[diesel(table_name = charges)]
pub struct ChargeRow {
    pub id: i64,
    pub subscription_id: i64,
    pub cycle: i32,
    pub attempt: i32,
    pub moid: String,
    /// NICEPAY's transaction id. On the legacy API we make it and store it before sending; on
    /// v1 NICEPAY makes it, and it is written with the outcome (`None` until then).
    pub tid: Option<String>,
    pub amount: i64,
    pub state: String,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub auth_code: Option<String>,
    pub auth_date: Option<String>,
    pub card_no: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub lookups: i32,
    pub check_after: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub resolved_at: Option<NaiveDateTime>,
    pub bid: Option<String>,
    pub late_check_at: Option<NaiveDateTime>,
    pub last_lookup_at: Option<NaiveDateTime>,
    /// The API the attempt went out on (`webapi` or `v1`): it can only be looked up there.
    pub api: String,
}

impl ChargeRow {
    /// The charge as NICEPAY knows it, for messages: `TID …`, or on v1 before NICEPAY told its
    /// tid, `order …` (the orderId).
    pub fn label(&self) -> String {
        match &self.tid {
            Some(tid) => format!("TID {tid}"),
            None => format!("order {}", self.moid),
        }
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = charges)]
pub struct NewCharge {
    pub subscription_id: i64,
    pub cycle: i32,
    pub attempt: i32,
    pub moid: String,
    pub tid: Option<String>,
    pub amount: i64,
    pub bid: Option<String>,
    pub state: String,
    pub check_after: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub api: String,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = billkey_removals)]
pub struct RemovalRow {
    pub id: i64,
    pub subscription_id: i64,
    pub bid: String,
    pub reason: String,
    pub state: String,
    pub attempts: i32,
    pub moid: Option<String>,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub held_by: Option<i64>,
    pub next_attempt_at: NaiveDateTime,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub done_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: i64,
    pub at: NaiveDateTime,
    pub subscription_id: Option<i64>,
    pub charge_id: Option<i64>,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = events)]
pub struct NewEvent {
    pub at: NaiveDateTime,
    pub subscription_id: Option<i64>,
    pub charge_id: Option<i64>,
    pub kind: String,
    pub detail: String,
}
