//! Diesel's view of the tables in `migrations/{sqlite,postgres}`. One schema serves both
//! backends: nicebill's timestamps are `TIMESTAMP` holding UTC on both. The merchant's
//! `anchor_at`/`ends_at` are `TIMESTAMPTZ` on PostgreSQL; nicebill writes them (tests, the
//! operator CLI) as UTC timestamps in UTC sessions, and reads every merchant column as raw
//! text (`storage::merchant`), never through these types.

diesel::table! {
    subscriptions (id) {
        id -> BigInt,
        external_id -> Text,
        bid -> Text,
        amount -> BigInt,
        goods_name -> Text,
        buyer_name -> Nullable<Text>,
        buyer_email -> Nullable<Text>,
        buyer_tel -> Nullable<Text>,
        card_quota -> Text,
        card_interest -> Text,
        interval_unit -> Text,
        interval_count -> Integer,
        cron -> Nullable<Text>,
        timezone -> Nullable<Text>,
        anchor_at -> Timestamp,
        max_cycles -> Nullable<Integer>,
        ends_at -> Nullable<Timestamp>,
        status -> Text,
        cancel_at_period_end -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    billing_state (subscription_id) {
        subscription_id -> BigInt,
        status -> Text,
        status_reason -> Nullable<Text>,
        seen_status -> Nullable<Text>,
        seen_bid -> Nullable<Text>,
        next_cycle -> Nullable<Integer>,
        next_charge_at -> Nullable<Timestamp>,
        cycle_attempts -> Integer,
        cycle_declines -> Integer,
        paused_since -> Nullable<Timestamp>,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        notice_cycle -> Nullable<Integer>,
        notice_due -> Nullable<Timestamp>,
        notice_lead -> Nullable<BigInt>,
        notice_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    subscription_changes (seq) {
        seq -> BigInt,
        subscription_id -> BigInt,
    }
}

diesel::table! {
    charges (id) {
        id -> BigInt,
        subscription_id -> BigInt,
        cycle -> Integer,
        attempt -> Integer,
        moid -> Text,
        tid -> Nullable<Text>,
        amount -> BigInt,
        state -> Text,
        result_code -> Nullable<Text>,
        result_msg -> Nullable<Text>,
        auth_code -> Nullable<Text>,
        auth_date -> Nullable<Text>,
        card_no -> Nullable<Text>,
        error_class -> Nullable<Text>,
        error -> Nullable<Text>,
        lookups -> Integer,
        check_after -> Nullable<Timestamp>,
        created_at -> Timestamp,
        resolved_at -> Nullable<Timestamp>,
        bid -> Nullable<Text>,
        late_check_at -> Nullable<Timestamp>,
        last_lookup_at -> Nullable<Timestamp>,
        api -> Text,
    }
}

diesel::table! {
    billkey_removals (id) {
        id -> BigInt,
        subscription_id -> BigInt,
        bid -> Text,
        reason -> Text,
        state -> Text,
        attempts -> Integer,
        moid -> Nullable<Text>,
        result_code -> Nullable<Text>,
        result_msg -> Nullable<Text>,
        held_by -> Nullable<BigInt>,
        next_attempt_at -> Timestamp,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        done_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    events (id) {
        id -> BigInt,
        at -> Timestamp,
        subscription_id -> Nullable<BigInt>,
        charge_id -> Nullable<BigInt>,
        kind -> Text,
        detail -> Text,
    }
}

diesel::table! {
    webhook_outbox (id) {
        id -> BigInt,
        event_id -> Text,
        dedupe_key -> Nullable<Text>,
        subscription_id -> Nullable<BigInt>,
        kind -> Text,
        body -> Text,
        created_at -> Timestamp,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamp>,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        last_attempt_at -> Nullable<Timestamp>,
        delivered_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(charges -> subscriptions (subscription_id));
diesel::joinable!(billing_state -> subscriptions (subscription_id));
diesel::allow_tables_to_appear_in_same_query!(
    subscriptions,
    billing_state,
    subscription_changes,
    charges,
    billkey_removals,
    events,
    webhook_outbox
);
