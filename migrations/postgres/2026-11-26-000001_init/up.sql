-- nicebill schema, PostgreSQL. Timestamps are TIMESTAMP (without time zone) holding UTC.

-- Written by merchant applications (the columns up to cancel_at_period_end) and kept by
-- nicebill (the rest). See README "The database contract".
CREATE TABLE subscriptions (
    id                   BIGSERIAL PRIMARY KEY,
    external_id          TEXT    NOT NULL UNIQUE,
    bid                  TEXT    NOT NULL,
    amount               BIGINT  NOT NULL,
    goods_name           TEXT    NOT NULL,
    buyer_name           TEXT,
    buyer_email          TEXT,
    buyer_tel            TEXT,
    card_quota           TEXT    NOT NULL DEFAULT '00',
    card_interest        TEXT    NOT NULL DEFAULT '0',
    interval_unit        TEXT    NOT NULL DEFAULT 'month',
    interval_count       INTEGER NOT NULL DEFAULT 1,
    cron                 TEXT,
    timezone             TEXT,
    anchor_at            TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    max_cycles           INTEGER,
    ends_at              TIMESTAMP,
    status               TEXT    NOT NULL DEFAULT 'active',
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT FALSE,
    -- Kept by nicebill.
    next_cycle           INTEGER,
    next_charge_at       TIMESTAMP,
    cycle_attempts       INTEGER NOT NULL DEFAULT 0,
    cycle_declines       INTEGER NOT NULL DEFAULT 0,
    paused_since         TIMESTAMP,
    seen_status          TEXT,
    status_reason        TEXT,
    claimed_by           TEXT,
    claimed_until        TIMESTAMP,
    created_at           TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at           TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE INDEX subscriptions_due ON subscriptions (status, next_charge_at, id);
-- Rows whose status changed since nicebill last looked (new rows, pauses, cancellations).
CREATE INDEX subscriptions_unseen ON subscriptions (id) WHERE seen_status IS DISTINCT FROM status;

-- One row per charge attempt, written (state 'pending') before the request is sent.
CREATE TABLE charges (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id BIGINT  NOT NULL REFERENCES subscriptions (id),
    cycle           INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    moid            TEXT    NOT NULL UNIQUE,
    tid             TEXT    NOT NULL UNIQUE,
    amount          BIGINT  NOT NULL,
    state           TEXT    NOT NULL,
    result_code     TEXT,
    result_msg      TEXT,
    auth_code       TEXT,
    auth_date       TEXT,
    card_no         TEXT,
    error_class     TEXT,
    error           TEXT,
    lookups         INTEGER NOT NULL DEFAULT 0,
    check_after     TIMESTAMP,
    created_at      TIMESTAMP NOT NULL,
    resolved_at     TIMESTAMP,
    UNIQUE (subscription_id, cycle, attempt)
);
-- The last line of defence: at most one approved charge per billing cycle.
CREATE UNIQUE INDEX charges_one_approval_per_cycle ON charges (subscription_id, cycle) WHERE state = 'approved';
-- Small (only attempts in flight): serves "has this subscription an unresolved attempt?".
CREATE INDEX charges_unresolved ON charges (subscription_id, check_after) WHERE state IN ('pending', 'unknown');

-- Billkey removal of a cancelled subscription.
CREATE TABLE billkey_removals (
    subscription_id BIGINT  PRIMARY KEY REFERENCES subscriptions (id),
    bid             TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    moid            TEXT,
    result_code     TEXT,
    result_msg      TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_by      TEXT,
    claimed_until   TIMESTAMP,
    created_at      TIMESTAMP NOT NULL,
    done_at         TIMESTAMP
);
CREATE INDEX billkey_removals_due ON billkey_removals (state, next_attempt_at);

-- Append-only history: what happened to which subscription and why.
CREATE TABLE events (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMP NOT NULL,
    subscription_id BIGINT,
    charge_id       BIGINT,
    kind            TEXT    NOT NULL,
    detail          TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_subscription ON events (subscription_id, id);
