//! Figures: what health, metrics, `run --once` and the benchmark read. Nothing here writes
//! billing state (the benchmark's seeding aside).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Timestamp;

use super::models::ChargeRow;
use super::schema::{billing_state, charges, subscriptions};
use super::{AnyConnection, Store, StoreError, naive};
use crate::billing::model::{ChargeState, SubscriptionStatus};

/// What the health file says about the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthFigures {
    /// Active subscriptions due now.
    pub due: u64,
    /// Attempts whose outcome is not known yet.
    pub unresolved: u64,
    /// When the oldest of those was committed.
    pub oldest_unresolved: Option<DateTime<Utc>>,
    /// Cycles found charged twice (`charges doubles`).
    pub doubles: u64,
}

const ACTIVE: &str = "active";

/// `name` if it is a schema name that needs no quoting.
fn schema_name(name: &str) -> Result<&str, StoreError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(StoreError::Task(format!(
            "schema name {name:?}: use lower-case letters, digits and _"
        )))
    }
}

impl Store {
    /// Figures for the health file.
    pub async fn health_figures(&self, now: DateTime<Utc>) -> Result<HealthFigures, StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let due: i64 = billing_state::table
                .filter(billing_state::status.eq(ACTIVE))
                .filter(
                    billing_state::next_charge_at
                        .is_null()
                        .or(billing_state::next_charge_at.le(now)),
                )
                .count()
                .get_result(c)?;
            let unresolved: i64 = charges::table
                .filter(charges::state.eq_any(ChargeState::UNRESOLVED))
                .count()
                .get_result(c)?;
            let oldest: Option<NaiveDateTime> = charges::table
                .filter(charges::state.eq_any(ChargeState::UNRESOLVED))
                .select(diesel::dsl::min(charges::created_at))
                .first(c)?;
            let doubles: i64 = charges::table
                .filter(charges::state.eq(ChargeState::Double.as_str()))
                .count()
                .get_result(c)?;
            Ok(HealthFigures {
                due: due.max(0) as u64,
                unresolved: unresolved.max(0) as u64,
                oldest_unresolved: oldest.map(|t| t.and_utc()),
                doubles: doubles.max(0) as u64,
            })
        })
        .await
    }

    /// When the last claim held on a due, active subscription expires (another instance's, or
    /// a dead one's); `None` when no due subscription is claimed.
    pub async fn due_claims_expire(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let t: Option<NaiveDateTime> = billing_state::table
                .filter(billing_state::status.eq(ACTIVE))
                .filter(
                    billing_state::next_charge_at
                        .is_null()
                        .or(billing_state::next_charge_at.le(now)),
                )
                .filter(billing_state::claimed_until.gt(now))
                .select(diesel::dsl::max(billing_state::claimed_until))
                .first(c)?;
            Ok(t.map(|t| t.and_utc()))
        })
        .await
    }

    /// The earliest time by `until` at which an active subscription is due again for a cycle
    /// that has an attempt found not charged (never sent, or proven never approved).
    pub async fn next_resend(
        &self,
        until: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let until = naive(until);
        self.run(move |c| {
            let t: Option<NaiveDateTime> = billing_state::table
                .filter(billing_state::status.eq(ACTIVE))
                .filter(billing_state::next_charge_at.le(until))
                .filter(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(billing_state::subscription_id))
                        .filter(charges::cycle.nullable().eq(billing_state::next_cycle))
                        .filter(charges::state.eq(ChargeState::NotCharged.as_str())),
                ))
                .select(diesel::dsl::min(billing_state::next_charge_at))
                .first(c)?;
            Ok(t.map(|t| t.and_utc()))
        })
        .await
    }

    /// Every unresolved attempt (for `--once` and health).
    pub async fn unresolved(&self) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(|c| {
            Ok(charges::table
                .filter(charges::state.eq_any(ChargeState::UNRESOLVED))
                .order(charges::id)
                .select(ChargeRow::as_select())
                .load(c)?)
        })
        .await
    }

    /// Charges found approved twice for one cycle, newest first.
    pub async fn doubles(&self) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(|c| {
            Ok(charges::table
                .filter(charges::state.eq(ChargeState::Double.as_str()))
                .order(charges::id.desc())
                .select(ChargeRow::as_select())
                .load(c)?)
        })
        .await
    }

    /// Times the query that finds a batch of due subscriptions (without claiming them).
    pub async fn probe_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<(usize, Duration), StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let started = std::time::Instant::now();
            let ids: Vec<i64> = billing_state::table
                .inner_join(subscriptions::table)
                .filter(billing_state::status.eq(ACTIVE))
                .filter(subscriptions::status.eq(ACTIVE))
                .filter(billing_state::next_charge_at.le(now))
                .filter(
                    billing_state::claimed_until
                        .is_null()
                        .or(billing_state::claimed_until.lt(now)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(billing_state::subscription_id))
                        .filter(charges::state.eq_any(ChargeState::UNRESOLVED)),
                )))
                .order((
                    billing_state::next_charge_at,
                    billing_state::subscription_id,
                ))
                .limit(limit)
                .select(billing_state::subscription_id)
                .load(c)?;
            Ok((ids.len(), started.elapsed()))
        })
        .await
    }

    /// Benchmark setup on PostgreSQL: creates the schema `name` (lower-case letters, digits
    /// and `_` only, so it needs no quoting).
    pub async fn create_schema(&self, name: &str) -> Result<(), StoreError> {
        let sql = format!("CREATE SCHEMA {}", schema_name(name)?);
        self.run(move |c| c.batch_execute(&sql).map_err(Into::into))
            .await
    }

    /// Drops the schema `name` and everything in it.
    pub async fn drop_schema(&self, name: &str) -> Result<(), StoreError> {
        let sql = format!("DROP SCHEMA {} CASCADE", schema_name(name)?);
        self.run(move |c| c.batch_execute(&sql).map_err(Into::into))
            .await
    }

    /// Benchmark setup: `total` active monthly subscriptions on the given billkeys, already
    /// scheduled as the daemon would have them; the first `due` are due at `due_at`, the rest
    /// spread over the following 30 days. Generated inside the database.
    pub async fn seed_bench(
        &self,
        total: i64,
        due: i64,
        bids: &[crate::domain::Bid],
        due_at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let due_at = naive(due_at);
        // BIDs are validated alphanumeric, so they can stand in the SQL text.
        let pick = format!(
            "CASE n % {} {} END",
            bids.len().max(1),
            bids.iter()
                .enumerate()
                .map(|(i, b)| format!("WHEN {i} THEN '{}'", b.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let active = SubscriptionStatus::Active.as_str();
        self.write(move |c| {
            let n = match c {
                AnyConnection::Sqlite(c) => {
                    let sql = format!(
                        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < {total}) \
                         INSERT INTO subscriptions (external_id, bid, amount, goods_name, anchor_at, status, created_at, updated_at) \
                         SELECT 'bench-' || n, {pick}, 1000 + n % 9000, '벤치마크 구독', t, 'active', t, t \
                         FROM (SELECT n, CASE WHEN n < {due} THEN ?1 \
                               ELSE datetime(?1, '+' || (n * 2592 / 1000) || ' seconds') END AS t FROM seq)"
                    );
                    diesel::sql_query(sql).bind::<Timestamp, _>(due_at).execute(c)?
                }
                AnyConnection::Postgres(c) => {
                    let sql = format!(
                        "INSERT INTO subscriptions (external_id, bid, amount, goods_name, anchor_at, status, created_at, updated_at) \
                         SELECT 'bench-' || n, {pick}, 1000 + n % 9000, '벤치마크 구독', t, 'active', t, t \
                         FROM (SELECT n, CASE WHEN n < {due} THEN $1 \
                               ELSE $1 + (n::bigint * 2592 / 1000) * interval '1 second' END AS t \
                               FROM generate_series(0, {total} - 1) AS n) AS g"
                    );
                    diesel::sql_query(sql).bind::<Timestamp, _>(due_at).execute(c)?
                }
            };
            // nicebill's state as passes would leave it: cycle 1 due at the anchor, its
            // upcoming notices told (the smallest lead allowed is a minute: none is left).
            let anchor = match c {
                AnyConnection::Sqlite(_) => "s.anchor_at",
                AnyConnection::Postgres(_) => "(s.anchor_at AT TIME ZONE 'UTC')",
            };
            let sql = format!(
                "INSERT INTO billing_state (subscription_id, status, seen_status, seen_bid, \
                 next_cycle, next_charge_at, updated_at, notice_cycle, notice_due, notice_lead) \
                 SELECT s.id, '{active}', s.status, s.bid, 1, {anchor}, {anchor}, 1, {anchor}, 60 \
                 FROM subscriptions s WHERE s.external_id LIKE 'bench-%'"
            );
            match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).execute(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).execute(c)?,
            };
            diesel::sql_query("DELETE FROM subscription_changes").execute(c)?;
            // Fresh statistics, as a database in service has them.
            c.batch_execute("ANALYZE")?;
            Ok(n)
        })
        .await
    }
}
