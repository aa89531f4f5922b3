-- Ownership: the merchant's application writes `subscriptions` (its columns only); everything
-- nicebill decides lives in tables the merchant never writes. A stale full-row save of
-- `subscriptions` can then never rewind nicebill's bookkeeping. See README "The database
-- contract".

-- nicebill's state of each subscription. `status` is nicebill's verdict (the merchant's
-- `subscriptions.status` is the merchant's intent: active, paused or cancelled).
CREATE TABLE billing_state (
    subscription_id BIGINT  PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
    status          TEXT    NOT NULL CHECK (status IN ('active', 'paused', 'cancelled',
                                'past_due', 'card_invalid', 'ended', 'invalid')),
    status_reason   TEXT,
    -- The merchant's status and billkey as nicebill last saw them.
    seen_status     TEXT,
    seen_bid        TEXT,
    next_cycle      INTEGER CHECK (next_cycle IS NULL OR next_cycle >= 1),
    next_charge_at  TIMESTAMP,
    cycle_attempts  INTEGER NOT NULL DEFAULT 0 CHECK (cycle_attempts >= 0),
    cycle_declines  INTEGER NOT NULL DEFAULT 0 CHECK (cycle_declines >= 0),
    paused_since    TIMESTAMP,
    claimed_by      TEXT,
    claimed_until   TIMESTAMP,
    updated_at      TIMESTAMP NOT NULL
);
CREATE INDEX billing_state_due ON billing_state (status, next_charge_at, subscription_id);

-- Every write to a merchant row, queued by trigger, so that nicebill notices new rows, status
-- and billkey changes and fixes of invalid rows without scanning the table.
CREATE TABLE subscription_changes (
    seq             BIGSERIAL PRIMARY KEY,
    subscription_id BIGINT  NOT NULL
);
CREATE FUNCTION nicebill_subscription_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_changes (subscription_id) VALUES (NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER subscriptions_changed AFTER INSERT OR UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION nicebill_subscription_changed();

-- Existing bookkeeping moves over. Statuses nicebill set (past_due, card_invalid, ended) were
-- written over the merchant's 'active': the merchant's column gets 'active' back, nicebill keeps
-- its verdict. 'invalid' stays in both (nicebill may have overwritten an unknown status).
INSERT INTO billing_state (subscription_id, status, status_reason, seen_status, seen_bid,
                           next_cycle, next_charge_at, cycle_attempts, cycle_declines,
                           paused_since, claimed_by, claimed_until, updated_at)
SELECT id,
       CASE WHEN status IN ('active', 'paused', 'cancelled', 'past_due', 'card_invalid',
                            'ended', 'invalid') THEN status ELSE 'invalid' END,
       status_reason,
       CASE WHEN status IN ('past_due', 'card_invalid', 'ended') THEN 'active' ELSE status END,
       bid,
       CASE WHEN next_cycle >= 1 THEN next_cycle END,
       next_charge_at,
       GREATEST(cycle_attempts, 0), GREATEST(cycle_declines, 0),
       paused_since, NULL, NULL, now() AT TIME ZONE 'utc'
FROM subscriptions
WHERE seen_status IS NOT NULL;
UPDATE subscriptions SET status = 'active'
WHERE status IN ('past_due', 'card_invalid', 'ended') AND seen_status IS NOT NULL;
-- Rows nicebill had not looked at yet are noticed as new.
INSERT INTO subscription_changes (subscription_id)
SELECT id FROM subscriptions WHERE seen_status IS NULL;
-- The migration's own writes above are not merchant changes.
DELETE FROM subscription_changes
WHERE subscription_id IN (SELECT subscription_id FROM billing_state);

DROP INDEX subscriptions_due;
DROP INDEX subscriptions_unseen;
ALTER TABLE subscriptions
    DROP COLUMN next_cycle, DROP COLUMN next_charge_at, DROP COLUMN cycle_attempts,
    DROP COLUMN cycle_declines, DROP COLUMN paused_since, DROP COLUMN seen_status,
    DROP COLUMN status_reason, DROP COLUMN claimed_by, DROP COLUMN claimed_until;
-- The merchant's times carry their offset: a value written with '+09:00' is converted, not
-- shifted (TIMESTAMP WITHOUT TIME ZONE silently drops the offset). Existing values were UTC.
ALTER TABLE subscriptions
    ALTER COLUMN anchor_at TYPE TIMESTAMPTZ USING anchor_at AT TIME ZONE 'UTC',
    ALTER COLUMN anchor_at SET DEFAULT now(),
    ALTER COLUMN ends_at TYPE TIMESTAMPTZ USING ends_at AT TIME ZONE 'UTC';

-- Charges remember the billkey they used (billkey removal waits for unresolved ones) and,
-- for a "not found" conclusion, when to look once more for a late approval.
ALTER TABLE charges ADD COLUMN bid TEXT;
UPDATE charges SET bid = (SELECT s.bid FROM subscriptions s WHERE s.id = charges.subscription_id);
ALTER TABLE charges ADD COLUMN late_check_at TIMESTAMP;
ALTER TABLE charges ADD COLUMN last_lookup_at TIMESTAMP;

-- Attempts the old schema let through (a second unresolved attempt of a subscription, or one
-- beside an approval of its cycle) cannot be concluded without a lookup: they become
-- not_charged with a late check due now, which finds any approval and records a double charge.
UPDATE charges
SET state = 'not_charged', check_after = NULL, late_check_at = now() AT TIME ZONE 'utc',
    error = COALESCE(error || '; ', '') || 'upgrade: unresolved beside another live attempt; looked up again'
WHERE state IN ('pending', 'unknown')
  AND (EXISTS (SELECT 1 FROM charges a WHERE a.subscription_id = charges.subscription_id
                 AND a.cycle = charges.cycle AND a.state = 'approved')
       OR EXISTS (SELECT 1 FROM charges u WHERE u.subscription_id = charges.subscription_id
                 AND u.state IN ('pending', 'unknown') AND u.id < charges.id));

-- The ledger's rules, enforced by the database whatever any number of instances do:
-- at most one approved-or-unresolved attempt per cycle (so an attempt is refused at commit
-- when its cycle is approved or already has one in flight), and at most one unresolved attempt
-- per subscription.
DROP INDEX charges_one_approval_per_cycle;
CREATE UNIQUE INDEX charges_one_live_attempt_per_cycle ON charges (subscription_id, cycle)
    WHERE state IN ('approved', 'pending', 'unknown');
CREATE UNIQUE INDEX charges_one_unresolved_per_subscription ON charges (subscription_id)
    WHERE state IN ('pending', 'unknown');
CREATE INDEX charges_late_check ON charges (late_check_at) WHERE late_check_at IS NOT NULL;
CREATE INDEX charges_by_bid ON charges (bid) WHERE state IN ('pending', 'unknown');

-- Billkey removals: one per (subscription, billkey), since a subscription can change cards.
CREATE TABLE billkey_removals_v2 (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id BIGINT  NOT NULL REFERENCES subscriptions (id),
    bid             TEXT    NOT NULL,
    reason          TEXT    NOT NULL DEFAULT 'cancelled',
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'done')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    moid            TEXT,
    result_code     TEXT,
    result_msg      TEXT,
    -- Another subscription that may still be charged uses the billkey: the removal waits.
    held_by         BIGINT,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_by      TEXT,
    claimed_until   TIMESTAMP,
    created_at      TIMESTAMP NOT NULL,
    done_at         TIMESTAMP,
    UNIQUE (subscription_id, bid)
);
INSERT INTO billkey_removals_v2 (subscription_id, bid, state, attempts, moid, result_code,
                                 result_msg, next_attempt_at, claimed_by, claimed_until,
                                 created_at, done_at)
SELECT subscription_id, bid, state, attempts, moid, result_code, result_msg, next_attempt_at,
       NULL, NULL, created_at, done_at
FROM billkey_removals;
DROP TABLE billkey_removals;
ALTER TABLE billkey_removals_v2 RENAME TO billkey_removals;
DROP INDEX IF EXISTS billkey_removals_due;
CREATE INDEX billkey_removals_due ON billkey_removals (state, next_attempt_at);
CREATE INDEX subscriptions_bid ON subscriptions (bid);
