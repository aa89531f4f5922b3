//! Queries behind the operator commands (`nicebill subscription|charges|events`): merchant-side
//! writes (a new row, a status change) and newest-first listings. Nothing here touches
//! nicebill's own columns.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::models::{ChargeRow, EventRow, NewSubscription, RemovalRow, SubscriptionRow};
use super::schema::{billkey_removals, charges, events, subscriptions};
use super::{Store, StoreError};

impl Store {
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
                Ok(subscriptions::table
                    .find(id)
                    .select(SubscriptionRow::as_select())
                    .first(c)?)
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
            Ok(subscriptions::table
                .filter(subscriptions::external_id.eq(&external_id))
                .select(SubscriptionRow::as_select())
                .first(c)
                .optional()?)
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
                .select(SubscriptionRow::as_select())
                .order(subscriptions::id)
                .into_boxed();
            if let Some(id) = id {
                q = q.or_filter(subscriptions::id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    /// Up to `limit` subscriptions, newest first, optionally only those in `status`.
    pub async fn list_subscriptions(
        &self,
        status: Option<String>,
        limit: i64,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        self.run(move |c| {
            let mut q = subscriptions::table
                .order(subscriptions::id.desc())
                .limit(limit)
                .select(SubscriptionRow::as_select())
                .into_boxed();
            if let Some(status) = status {
                q = q.filter(subscriptions::status.eq(status));
            }
            Ok(q.load(c)?)
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

    /// The billkey removal queued for a cancelled subscription, if any.
    pub async fn removal(&self, subscription: i64) -> Result<Option<RemovalRow>, StoreError> {
        self.run(move |c| {
            Ok(billkey_removals::table
                .find(subscription)
                .select(RemovalRow::as_select())
                .first(c)
                .optional()?)
        })
        .await
    }
}
