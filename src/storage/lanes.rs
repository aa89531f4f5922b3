//! TID lanes (`migrations/*/2026-12-08-000001_tid_lanes`): each instance leases a few of the
//! 20 lanes of 500 TID suffixes, so that instances sharing a MID mint from disjoint parts of a
//! second's 10,000 suffixes. A lane is a hint, never a guarantee: the unique index on
//! `charges.tid` still refuses a TID used twice, and an instance that gets no lane mints from
//! the whole space as before.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamp};

use super::{AnyConnection, Store, StoreError, later, naive};

/// Lanes in the table (its CHECK says the same).
pub const TID_LANES: u32 = 20;

impl Store {
    /// Leases up to `wanted` TID lanes for `owner` until `now + lease`: the lanes it holds
    /// already first (renewed), then free or expired ones, lowest first. Returns the lanes held,
    /// in order; none when every lane is leased by others.
    pub async fn lease_tid_lanes(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        wanted: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(later(now, lease));
        let wanted = i64::from(wanted.clamp(1, TID_LANES));
        self.write(move |c| {
            #[derive(QueryableByName)]
            struct Lane {
                #[diesel(sql_type = Integer)]
                lane: i32,
            }
            let p = match c {
                AnyConnection::Postgres(_) => "$",
                AnyConnection::Sqlite(_) => "?",
            };
            let pick = format!(
                "SELECT lane FROM tid_lanes \
                 WHERE owner = {p}1 OR owner IS NULL OR leased_until IS NULL \
                   OR leased_until < {p}3 \
                 ORDER BY CASE WHEN owner = {p}1 THEN 0 ELSE 1 END, lane LIMIT {p}4"
            );
            // The pick and the update are one statement. On PostgreSQL the pick locks, skipping
            // lanes another instance is taking right now, and is evaluated once (ANY(ARRAY(…)));
            // SQLite runs one writer at a time (IMMEDIATE), so there it is atomic as it stands.
            let chosen = match c {
                AnyConnection::Postgres(_) => {
                    format!("= ANY(ARRAY({pick} FOR UPDATE SKIP LOCKED))")
                }
                AnyConnection::Sqlite(_) => format!("IN ({pick})"),
            };
            let sql = format!(
                "UPDATE tid_lanes SET owner = {p}1, leased_until = {p}2 \
                 WHERE lane {chosen} RETURNING lane"
            );
            let mut lanes: Vec<Lane> = diesel::sql_query(sql)
                .bind::<Text, _>(&owner)
                .bind::<Timestamp, _>(until)
                .bind::<Timestamp, _>(now_n)
                .bind::<BigInt, _>(wanted)
                .load(c)?;
            // Lanes held beyond `wanted` (a smaller want than last time) are let go.
            let kept: Vec<i64> = lanes.iter().map(|l| i64::from(l.lane)).collect();
            let kept = if kept.is_empty() {
                "-1".to_owned()
            } else {
                super::id_list(&kept)
            };
            diesel::sql_query(format!(
                "UPDATE tid_lanes SET owner = NULL, leased_until = NULL \
                 WHERE owner = {p}1 AND lane NOT IN ({kept})"
            ))
            .bind::<Text, _>(&owner)
            .execute(c)?;
            lanes.sort_by_key(|l| l.lane);
            Ok(lanes
                .into_iter()
                .filter_map(|l| u32::try_from(l.lane).ok())
                .collect())
        })
        .await
    }
}
